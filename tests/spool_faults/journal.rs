//! The de-duplication journal under the power-cut model: whatever survives a cut, reopening
//! works and remembers no id that was not committed — such an id would be answered 2xx
//! `duplicate` for a delivery that was never stored (invariant 1).
//!
//! `POWERCUT_JOURNAL_CASES` sets the number of cases (default 300) of the first test; the second
//! cuts at every operation of the journal thread's own compaction.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hookbridge::clock::ManualClock;
use hookbridge::dedup::{Claim, Dedup};

use crate::memfs::MemFs;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn commit_all(
    d: &Arc<Dedup>,
    ids: impl Iterator<Item = String>,
    now: u64,
    committed: &mut HashSet<String>,
) {
    for id in ids {
        if let Claim::New(guard) = d.claim(&id, now) {
            guard.commit(now);
            committed.insert(id);
        }
    }
}

/// Every id the test claims: committed ones, and ones whose claim is released (their append
/// "failed"), which must never be remembered.
fn ids(seed: u64, phase: u64) -> impl Iterator<Item = String> {
    (0..80).map(move |i| format!("msg_{seed}_{phase}_{i}"))
}

fn released(seed: u64, phase: u64) -> impl Iterator<Item = String> {
    (0..20).map(move |i| format!("failed_{seed}_{phase}_{i}"))
}

#[test]
fn after_a_power_cut_the_journal_remembers_only_committed_ids() {
    let cases: u64 = std::env::var("POWERCUT_JOURNAL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    // The journal thread judges expiry by the wall clock.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let dir = PathBuf::from("/power");
    let mut remembered_total = 0;
    for seed in 0..cases {
        let fs = MemFs::new(Path::new("/power"), seed);
        // Somewhere in: the first open's writing of an empty journal, the appends, the second
        // open's sync of the journal (which makes the first batch durable) or the appends after
        // it. (The journal thread's own compaction is the next test's.)
        fs.arm_cut(seed % 97);
        let mut committed = HashSet::new();
        // A small bound, so that compaction drops ids too.
        let max = 60;
        for phase in 0..2 {
            let Ok(d) = Dedup::open(
                Arc::new(fs.clone()),
                &dir,
                DAY,
                max,
                ManualClock::new(now).clock(),
            ) else {
                break;
            };
            let d = Arc::new(d);
            commit_all(&d, ids(seed, phase), now + phase, &mut committed);
            for id in released(seed, phase) {
                drop(d.claim(&id, now + phase));
            }
            d.close();
        }
        fs.cut_now();
        let (cut, survivor) = fs.survivor().expect("power was cut");
        let d = Dedup::open(
            Arc::new(survivor),
            &dir,
            DAY,
            1000,
            ManualClock::new(now + 2).clock(),
        )
        .unwrap_or_else(|e| panic!("seed {seed}, cut at {cut:?}: reopen failed: {e}"));
        // The ids are remembered as fingerprints, so the check asks about every id the test
        // ever claimed.
        let claimed = (0..2).flat_map(|phase| ids(seed, phase).chain(released(seed, phase)));
        for id in claimed {
            assert!(
                !d.contains(&id) || committed.contains(&id),
                "seed {seed}, cut at {cut:?}: remembers {id:?}, which was never committed"
            );
        }
        remembered_total += d.len();
        d.close();
    }
    // The cuts fall after durable compactions often enough that ids do survive.
    assert!(
        remembered_total > 0,
        "no id survived any cut: the test tests nothing"
    );
}

/// Records the journal takes before its thread compacts it, for a journal opened empty (twice
/// the live ids, none, plus the slack in `dedup.rs`).
const COMPACT_AFTER: usize = 10_000;
const HEADER_LEN: u64 = 32;
const RECORD_LEN: u64 = 24;

/// The journal thread's compaction — the rewrite of the whole journal, keeping the newest
/// `max_entries` live ids, once it has grown past twice the live ids plus a slack — with the
/// power cut at each of its operations in turn, and after it. Whatever survives remembers no id
/// that was not committed; once the compaction returned, its result is durable.
#[test]
fn a_power_cut_during_the_journal_threads_compaction_keeps_only_committed_ids() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let dir = PathBuf::from("/power");
    let max = 60;
    let (mut in_compaction, mut after_compaction) = (0, 0);
    for k in 0..14u64 {
        let fs = MemFs::new(Path::new("/power"), k);
        let d = Arc::new(
            Dedup::open(
                Arc::new(fs.clone()),
                &dir,
                DAY,
                max,
                ManualClock::new(now).clock(),
            )
            .unwrap(),
        );
        let mut committed = HashSet::new();
        let fill = (0..COMPACT_AFTER).map(|i| format!("fill_{k}_{i}"));
        commit_all(&d, fill, now, &mut committed);
        let full = HEADER_LEN + COMPACT_AFTER as u64 * RECORD_LEN;
        wait_until(
            || d.journal_bytes() == full,
            "the journal thread writes the fill",
        );

        // The next write tips the journal over: the thread appends, then compacts.
        fs.arm_cut(k);
        commit_all(&d, ids(k, 9), now, &mut committed);
        for id in released(k, 9) {
            drop(d.claim(&id, now));
        }
        wait_until(
            || fs.survivor().is_some() || d.journal_bytes() < full,
            "the journal thread compacts or hits the cut",
        );
        // Shrunk: the compaction returned, so its file and directory entry were synced.
        let compacted = d.journal_bytes() < full;
        d.close();
        fs.cut_now();
        let (cut, survivor) = fs.survivor().unwrap();
        if cut.path.ends_with("dedup.journal.tmp") || cut.op == "rename" {
            in_compaction += 1;
        }
        let d = Dedup::open(
            Arc::new(survivor),
            &dir,
            DAY,
            100_000,
            ManualClock::new(now + 1).clock(),
        )
        .unwrap_or_else(|e| panic!("cut {k} at {cut:?}: reopen failed: {e}"));
        let fill = (0..COMPACT_AFTER).map(|i| format!("fill_{k}_{i}"));
        for id in fill.chain(ids(k, 9)).chain(released(k, 9)) {
            assert!(
                !d.contains(&id) || committed.contains(&id),
                "cut {k} at {cut:?}: remembers {id:?}, which was never committed"
            );
        }
        if compacted {
            after_compaction += 1;
            assert!(
                d.len() >= max,
                "cut {k} at {cut:?} after the compaction returned: only {} ids survived",
                d.len()
            );
        }
        d.close();
    }
    assert!(
        in_compaction > 0 && after_compaction > 0,
        "cuts inside the compaction: {in_compaction}, after it: {after_compaction}"
    );
}

fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
