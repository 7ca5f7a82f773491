//! The de-duplication journal under the power-cut model: whatever survives a cut, reopening
//! works and remembers no id that was not committed — such an id would be answered 2xx
//! `duplicate` for a delivery that was never stored (invariant 1).
//!
//! `POWERCUT_JOURNAL_CASES` sets the number of cases (default 300).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
        // Somewhere in: the first open's compaction, the appends, the second open's compaction
        // (which makes the first batch durable) or the appends after it.
        fs.arm_cut(seed % 97);
        let mut committed = HashSet::new();
        // A small bound, so that compaction drops ids too.
        let max = 60;
        for phase in 0..2 {
            let Ok(d) = Dedup::open(Arc::new(fs.clone()), &dir, DAY, max, now) else {
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
        let d = Dedup::open(Arc::new(survivor), &dir, DAY, 1000, now + 2)
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
