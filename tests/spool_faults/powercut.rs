//! Power-cut property tests: random workloads on [`MemFs`], power cut at a random mutating
//! operation (or at every one, for a fixed workload), then recovery on what survived.
//!
//! Checked after every cut: recovery succeeds; every append that returned `Ok` is replayed
//! byte-identical unless it is at or below the persisted confirmed position (those were
//! delivered and may be gone); the persisted position is never beyond what was confirmed;
//! every replayed record is one that some append wrote (never garbage), seqs are strictly
//! increasing and no payload comes back under two seqs; and a new append after recovery gets
//! a seq above everything seen before the cut and after it.
//!
//! `PROPTEST_CASES` raises the number of random cases (default 200), `POWERCUT_SWEEP_CASES`
//! the number of fixed workloads cut at every operation (default 8).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use hookbridge::metrics::Metrics;
use hookbridge::spool::{Error, Spool, SpoolConfig, StoredRecord};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

use crate::memfs::MemFs;

const ROOT: &str = "/power";

/// Mostly tiny segments, so rotation is frequent; every third seed larger ones, so a batch
/// spans several 4 KiB pages and a lost page can sit between frames that survived. Half the
/// seeds keep confirmed segments (`retain_confirmed`) under a quota of eight segments, so the
/// writer evicts them to make room and the cuts land in eviction's deletes and directory fsyncs
/// too.
fn config(seed: u64) -> SpoolConfig {
    let segment_bytes = [4096, 4096, 32768][(seed % 3) as usize];
    let retain = retains(seed);
    SpoolConfig {
        // A subdirectory, so opening creates it (and fsyncs its parent) under the model too.
        dir: PathBuf::from(ROOT).join("spool"),
        segment_bytes,
        max_bytes: if retain { 8 * segment_bytes } else { 1 << 30 },
        max_append_bytes: 8 << 10,
        max_batch_bytes: 32 << 10,
        // Off, a fraction of a segment, or the rest of it at every extension.
        preallocate_bytes: [0, 3000, 1 << 20][(seed / 3 % 3) as usize],
        confirm_interval: Duration::from_millis(1),
        min_free_bytes: 0,
        retain_confirmed: if retain {
            Duration::from_secs(3600)
        } else {
            Duration::ZERO
        },
    }
}

fn retains(seed: u64) -> bool {
    (seed / 3) % 2 == 1
}

#[derive(Debug, Clone)]
enum WOp {
    Append(usize),
    /// Concurrent appends: group commits, often straddling a rotation.
    Burst(Vec<usize>),
    /// `next_batch(n)` (only when something committed is unread, so it never waits).
    Read(usize),
    /// Confirm up to the n-th record read and not yet confirmed.
    Confirm(usize),
    /// Give the writer a couple of confirm intervals to persist and delete.
    Settle,
}

fn wop() -> impl Strategy<Value = WOp> {
    prop_oneof![
        5 => (0usize..6000).prop_map(WOp::Append),
        2 => prop::collection::vec(0usize..2500, 2..8).prop_map(WOp::Burst),
        3 => (1usize..8).prop_map(WOp::Read),
        3 => (1usize..8).prop_map(WOp::Confirm),
        1 => Just(WOp::Settle),
    ]
}

/// A rough count of the mutating filesystem operations `ops` cause, to spread cut points over
/// the whole workload (a cut drawn past the end happens with the spool idle).
fn estimate_mutations(ops: &[WOp]) -> u64 {
    let append = |len: usize| 2 + 5 * (len as u64 + 24) / 4096;
    6 + ops
        .iter()
        .map(|op| match op {
            WOp::Append(len) => append(*len),
            WOp::Burst(lens) => lens.iter().map(|l| append(*l)).sum(),
            WOp::Read(_) => 0,
            WOp::Confirm(_) | WOp::Settle => 4,
        })
        .sum::<u64>()
}

/// Payload number `tag`, `len` bytes (at least 12): the tag, the length, then bytes derived
/// from both, so a replayed record can be checked to be exactly something an append wrote.
fn payload(tag: u64, len: usize) -> Bytes {
    let len = len.max(12);
    let mut v = tag.to_le_bytes().to_vec();
    v.extend_from_slice(&(len as u32).to_le_bytes());
    v.extend((12..len).map(|i| (tag as usize).wrapping_mul(131).wrapping_add(i * 7) as u8));
    v.into()
}

/// The tag of a payload `payload` could have produced, if any.
fn tag_of(p: &[u8]) -> Option<u64> {
    let tag = u64::from_le_bytes(p.get(..8)?.try_into().ok()?);
    let len = u32::from_le_bytes(p.get(8..12)?.try_into().ok()?) as usize;
    (len == p.len() && payload(tag, len) == p).then_some(tag)
}

/// What the runs saw, for the report.
#[derive(Default)]
pub struct Tally {
    cases: AtomicU64,
    /// Cut points by "operation on file kind".
    cuts: Mutex<BTreeMap<String, u64>>,
    /// Second cut points, during or just after the first recovery.
    recovery_cuts: Mutex<BTreeMap<String, u64>>,
    acked: AtomicU64,
    replayed: AtomicU64,
    /// Recoveries that cut a torn tail / preallocated zeros / skipped corrupt records / moved a
    /// file aside.
    torn: AtomicU64,
    unused: AtomicU64,
    corrupt: AtomicU64,
    moved_aside: AtomicU64,
    /// Cases whose spool evicted a retained segment before the cut.
    evicting: AtomicU64,
}

impl Tally {
    fn note_cut(&self, what: String) {
        self.cases.fetch_add(1, Ordering::Relaxed);
        *self
            .cuts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(what)
            .or_default() += 1;
    }

    fn print(&self, name: &str) {
        let cuts = self.cuts.lock().unwrap_or_else(|e| e.into_inner());
        eprintln!(
            "{name}: {} cut points run; {} acknowledged appends checked, {} records replayed; \
             recoveries with a torn tail cut: {}, with preallocated zeros cut: {}, with corrupt \
             records skipped: {}, moving a file aside: {}; evicting retained segments: {}",
            self.cases.load(Ordering::Relaxed),
            self.acked.load(Ordering::Relaxed),
            self.replayed.load(Ordering::Relaxed),
            self.torn.load(Ordering::Relaxed),
            self.unused.load(Ordering::Relaxed),
            self.corrupt.load(Ordering::Relaxed),
            self.moved_aside.load(Ordering::Relaxed),
            self.evicting.load(Ordering::Relaxed),
        );
        for (what, n) in cuts.iter() {
            eprintln!("  {n:5} cut at {what}");
        }
        let recovery_cuts = self.recovery_cuts.lock().unwrap_or_else(|e| e.into_inner());
        for (what, n) in recovery_cuts.iter() {
            eprintln!("  {n:5} then a second cut, in or after recovery, at {what}");
        }
    }
}

/// Which spool file an operation touched, for the tally.
fn file_kind(path: &Path) -> &'static str {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.ends_with(".seg.tmp") {
        "segment.tmp (rotation)"
    } else if name.ends_with(".seg") {
        "segment"
    } else if name == "confirmed.tmp" {
        "confirmed.tmp"
    } else if name == "confirmed" {
        "confirmed (rename)"
    } else if name.is_empty() {
        "-"
    } else {
        "directory"
    }
}

/// One workload with the power cut at mutating operation `cut_at` (counted from creating the
/// filesystem, so it can fall inside the first `Spool::open`), then recovery and the checks.
fn run_case(ops: &[WOp], cut_at: u64, recovery_cut: Option<u64>, seed: u64, tally: &Tally) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(case(ops, cut_at, recovery_cut, seed, tally));
}

/// With `recovery_cut`, the power is cut a second time, at that mutating operation of the
/// first recovery (truncating a torn tail, deleting confirmed segments...) or the idle spool
/// after it, and the checks run on what survived both cuts.
async fn case(ops: &[WOp], cut_at: u64, recovery_cut: Option<u64>, seed: u64, tally: &Tally) {
    let cfg = config(seed);
    let fs = MemFs::new(Path::new(ROOT), seed);
    fs.arm_cut(cut_at);
    // seq -> payload of every append that returned Ok.
    let mut acked: BTreeMap<u64, Bytes> = BTreeMap::new();
    let mut next_tag = 0u64;
    // Highest value passed to confirm (after the spool's clamp to committed records).
    let mut confirmed = 0u64;
    let mut crashed_in_open = false;
    let metrics = Arc::new(Metrics::new());
    match Spool::open_with_fs(cfg.clone(), metrics.clone(), Arc::new(fs.clone())) {
        Err(e) => {
            assert!(
                fs.survivor().is_some(),
                "open failed without a power cut: {e}"
            );
            crashed_in_open = true;
        }
        Ok((spool, _)) => {
            let mut reader = spool.reader();
            // Read and not yet confirmed.
            let mut unconfirmed: Vec<u64> = Vec::new();
            let mut read_up_to = 0u64;
            for op in ops {
                if fs.survivor().is_some() {
                    break;
                }
                match op {
                    WOp::Append(len) => {
                        next_tag += 1;
                        let p = payload(next_tag, *len);
                        if let Ok(seq) = spool.append(p.clone()).await {
                            assert!(acked.insert(seq, p).is_none(), "seq {seq} handed out twice");
                        }
                    }
                    WOp::Burst(lens) => {
                        let ps: Vec<Bytes> = lens
                            .iter()
                            .map(|l| {
                                next_tag += 1;
                                payload(next_tag, *l)
                            })
                            .collect();
                        let results = join_all(ps.iter().map(|p| spool.append(p.clone()))).await;
                        for (r, p) in results.into_iter().zip(ps) {
                            if let Ok(seq) = r {
                                assert!(
                                    acked.insert(seq, p).is_none(),
                                    "seq {seq} handed out twice"
                                );
                            }
                        }
                    }
                    WOp::Read(n) => {
                        if acked.range(read_up_to + 1..).next().is_none() {
                            continue;
                        }
                        let batch =
                            tokio::time::timeout(Duration::from_secs(10), reader.next_batch(*n))
                                .await
                                .expect("a reader with committed records unread must not wait");
                        let Ok(batch) = batch else { break };
                        for r in batch {
                            assert_eq!(
                                acked.get(&r.seq),
                                Some(&r.payload),
                                "read seq {} differs from what its append was acknowledged with",
                                r.seq
                            );
                            read_up_to = r.seq;
                            unconfirmed.push(r.seq);
                        }
                    }
                    WOp::Confirm(n) => {
                        let k = (*n).min(unconfirmed.len());
                        if k > 0 {
                            let seq = unconfirmed[k - 1];
                            unconfirmed.drain(..k);
                            spool.confirm(seq);
                            confirmed = confirmed.max(seq);
                        }
                    }
                    WOp::Settle => tokio::time::sleep(Duration::from_millis(3)).await,
                }
            }
            fs.cut_now();
            if metrics.spool_evicted_segments.get() > 0 {
                tally.evicting.fetch_add(1, Ordering::Relaxed);
            }
            // The spool on the dead filesystem: every further operation fails, so close
            // reports an error or succeeds having done nothing durable. Either is fine.
            let _ = spool.close().await;
        }
    }
    let (cut, survivor) = fs.survivor().expect("cut");
    let what = if crashed_in_open {
        format!("{} on {} during Spool::open", cut.op, file_kind(&cut.path))
    } else {
        format!("{} on {}", cut.op, file_kind(&cut.path))
    };
    tally.note_cut(what);
    tally.acked.fetch_add(acked.len() as u64, Ordering::Relaxed);

    let survivor = match recovery_cut {
        None => survivor,
        Some(k) => {
            survivor.arm_cut(k);
            let opened = Spool::open_with_fs(
                cfg.clone(),
                Arc::new(Metrics::new()),
                Arc::new(survivor.clone()),
            );
            match opened {
                Ok((spool, _)) => {
                    // Let the writer's first maintenance (deleting confirmed segments) run.
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    let _ = spool.close().await;
                }
                Err(e) => assert!(
                    survivor.survivor().is_some(),
                    "recovery failed without a power cut: {e}"
                ),
            }
            survivor.cut_now();
            let (cut2, survivor2) = survivor.survivor().expect("cut");
            *tally
                .recovery_cuts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(format!("{} on {}", cut2.op, file_kind(&cut2.path)))
                .or_default() += 1;
            survivor2
        }
    };

    // Recovery on what survived.
    let (spool, report) = Spool::open_with_fs(
        cfg.clone(),
        Arc::new(Metrics::new()),
        Arc::new(survivor.clone()),
    )
    .unwrap_or_else(|e| panic!("recovery failed after a cut at {cut:?}: {e}"));
    let persisted = report.confirmed;
    for (hit, counter) in [
        (report.torn_tail_bytes > 0, &tally.torn),
        (report.unused_tail_bytes > 0, &tally.unused),
        (report.corrupt_records_skipped > 0, &tally.corrupt),
        (!report.segments_moved_aside.is_empty(), &tally.moved_aside),
    ] {
        if hit {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
    assert!(
        persisted <= confirmed,
        "persisted position {persisted} beyond anything confirmed ({confirmed})"
    );
    let mut reader = spool.reader();
    spool.close().await.expect("close after recovery");
    let mut records: Vec<StoredRecord> = Vec::new();
    loop {
        match reader.next_batch(1000).await {
            Ok(b) => records.extend(b),
            Err(Error::Closed) => break,
            Err(e) => panic!("read after recovery: {e}"),
        }
    }
    tally
        .replayed
        .fetch_add(records.len() as u64, Ordering::Relaxed);
    let mut by_seq: HashMap<u64, &Bytes> = HashMap::new();
    let mut tags: HashMap<u64, u64> = HashMap::new();
    let mut last = persisted;
    for r in &records {
        assert!(r.seq > last, "seq {} replayed after {last}", r.seq);
        last = r.seq;
        let tag = tag_of(&r.payload)
            .unwrap_or_else(|| panic!("seq {} replays bytes no append wrote", r.seq));
        assert!(
            tag >= 1 && tag <= next_tag,
            "seq {}: unknown tag {tag}",
            r.seq
        );
        if let Some(other) = tags.insert(tag, r.seq) {
            panic!("payload {tag} replayed twice, as seq {other} and {}", r.seq);
        }
        by_seq.insert(r.seq, &r.payload);
    }
    for (seq, p) in &acked {
        match by_seq.get(seq) {
            Some(got) => assert_eq!(*got, p, "acknowledged seq {seq} changed"),
            None => assert!(
                *seq <= persisted,
                "acknowledged seq {seq} lost (persisted confirmed position {persisted}, cut at {cut:?})"
            ),
        }
    }

    // Seqs are never reused: a new append goes above everything seen before and after the cut.
    // (With the retention seeds' small quota the unconfirmed records may fill it: the quota is
    // configuration, not on disk, so this open gets room.)
    let cfg = SpoolConfig {
        max_bytes: 1 << 30,
        ..cfg
    };
    let (spool, _) = Spool::open_with_fs(cfg, Arc::new(Metrics::new()), Arc::new(survivor))
        .expect("second open");
    let seq = spool.append(payload(u64::MAX, 20)).await.expect("append");
    let max_seen = acked
        .keys()
        .chain(by_seq.keys())
        .copied()
        .chain([persisted])
        .max()
        .unwrap_or(0);
    assert!(seq > max_seen, "seq {seq} not above {max_seen}");
    spool.close().await.expect("close");
}

fn env_cases(var: &str, default: u32) -> u32 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn power_cut_at_a_random_operation_loses_nothing_acknowledged() {
    let tally = Tally::default();
    let mut runner = TestRunner::new(Config {
        cases: env_cases("PROPTEST_CASES", 200),
        // Each case is a whole run of the spool; shrinking a failure is still worth it.
        max_shrink_iters: 200,
        // Not a proptest! macro: no source file to persist failing seeds next to.
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        prop::collection::vec(wop(), 1..40),
        0.0f64..1.0,
        prop::option::weighted(0.3, 0u64..4),
        any::<u64>(),
    );
    let result = runner.run(&strategy, |(ops, frac, recovery_cut, seed)| {
        let cut_at = (estimate_mutations(&ops) as f64 * frac) as u64;
        run_case(&ops, cut_at, recovery_cut, seed, &tally);
        Ok(())
    });
    tally.print("random cuts");
    if let Err(e) = result {
        panic!("{e}");
    }
    if env_cases("PROPTEST_CASES", 200) >= 100 {
        assert!(
            tally.evicting.load(Ordering::Relaxed) > 0,
            "no case evicted a retained segment: retention is not under test"
        );
    }
}

#[test]
fn power_cut_at_every_operation_of_fixed_workloads() {
    let tally = Tally::default();
    let mut runner = TestRunner::deterministic();
    let workloads = env_cases("POWERCUT_SWEEP_CASES", 8);
    for w in 0..workloads {
        let ops = prop::collection::vec(wop(), 20..30)
            .new_tree(&mut runner)
            .expect("workload")
            .current();
        // Cut at 0, 1, 2, ... until a run finishes without meeting the cut.
        let mut cut_at = 0;
        loop {
            let before = tally.cases.load(Ordering::Relaxed);
            let idle_before = idle(&tally);
            // Every third run also cuts power again during the recovery that follows.
            let recovery_cut = (cut_at % 3 == 2).then_some(cut_at / 3 % 4);
            // Varies the torn-write choices per cut point but keeps the segment size
            // (`config`: seed % 3) the same for the whole workload.
            // Retention too (`retains`: (seed / 3) % 2) stays the same per workload.
            let seed = ((u64::from(w) * 1_000_003 + cut_at) * 2 + u64::from(w / 3 % 2)) * 3
                + u64::from(w % 3);
            run_case(&ops, cut_at, recovery_cut, seed, &tally);
            assert_eq!(tally.cases.load(Ordering::Relaxed), before + 1);
            if idle(&tally) > idle_before || cut_at > 5000 {
                break;
            }
            cut_at += 1;
        }
    }
    tally.print("every cut point");
    if workloads >= 6 {
        assert!(
            tally.evicting.load(Ordering::Relaxed) > 0,
            "no cut point came after an eviction: retention is not under test"
        );
    }
}

fn idle(t: &Tally) -> u64 {
    t.cuts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(k, _)| k.starts_with("idle"))
        .map(|(_, n)| *n)
        .sum()
}
