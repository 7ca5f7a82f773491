//! Model-based test of the spool: random operation sequences checked against an in-memory
//! model (a queue of unconfirmed records), plus a few lifecycle tests.
//!
//! Segments are tiny (4 KiB) next to payloads of up to 8 KiB, so nearly every batch rotates,
//! some records are larger than a segment, and confirmed segments are deleted all the time.
//! `PROPTEST_CASES` overrides the number of cases (e.g. for a longer soak).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use hookbridge::metrics::Metrics;
use hookbridge::spool::{Error, Reader, Spool, SpoolConfig, StoredRecord};
use proptest::prelude::*;

/// Quota of the retention variant: tight enough that retained segments are evicted all the time
/// and appends are refused when unconfirmed records fill it.
const RETAIN_MAX_BYTES: u64 = 96 << 10;

fn config(dir: &Path, retain: bool) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        segment_bytes: 4096,
        max_bytes: if retain { RETAIN_MAX_BYTES } else { 1 << 30 },
        max_append_bytes: 16 << 10,
        max_batch_bytes: 64 << 10,
        preallocate_bytes: 1000,
        confirm_interval: Duration::from_millis(5),
        min_free_bytes: 0,
        retain_confirmed: if retain {
            Duration::from_secs(3600)
        } else {
            Duration::ZERO
        },
    }
}

fn payload(len: usize, fill: u8) -> Bytes {
    (0..len)
        .map(|i| fill.wrapping_add((i % 251) as u8))
        .collect::<Vec<u8>>()
        .into()
}

#[derive(Debug, Clone)]
enum Op {
    /// One append of `len` bytes.
    Append { len: usize, fill: u8 },
    /// Concurrent appends, group-committed together (possibly across rotations).
    Burst(Vec<(usize, u8)>),
    /// `next_batch(n)`.
    Read(usize),
    /// Confirm up to the `n`-th record read but not yet confirmed.
    Confirm(usize),
    /// Close and open again; the reader restarts from the confirmed position.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0usize..8192, any::<u8>()).prop_map(|(len, fill)| Op::Append { len, fill }),
        1 => prop::collection::vec((0usize..3000, any::<u8>()), 2..8).prop_map(Op::Burst),
        4 => (1usize..8).prop_map(Op::Read),
        3 => (1usize..8).prop_map(Op::Confirm),
        1 => Just(Op::Reopen),
    ]
}

/// What the spool must contain.
#[derive(Default)]
struct Model {
    /// Every record above the confirmed position, in seq order.
    unconfirmed: VecDeque<(u64, Bytes)>,
    /// How many of `unconfirmed` the current reader has returned.
    read: usize,
    confirmed: u64,
    /// Highest seq ever handed out.
    max_seq: u64,
}

impl Model {
    fn appended(&mut self, seq: u64, payload: Bytes) {
        assert!(
            seq > self.max_seq,
            "seq {seq} not above every earlier seq ({})",
            self.max_seq
        );
        self.max_seq = seq;
        self.unconfirmed.push_back((seq, payload));
    }
}

struct Harness {
    dir: tempfile::TempDir,
    spool: Spool,
    reader: Reader,
    metrics: Arc<Metrics>,
    model: Model,
    /// Confirmed segments are retained (for an hour) under a tight quota: they must be evicted
    /// before any append is refused, and no unconfirmed record may go with them.
    retain: bool,
}

impl Harness {
    fn new(retain: bool) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let (spool, report) = Spool::open(config(dir.path(), retain), metrics.clone()).unwrap();
        assert_eq!(
            (report.segments, report.records, report.confirmed),
            (0, 0, 0)
        );
        let reader = spool.reader();
        Harness {
            dir,
            spool,
            reader,
            metrics,
            model: Model::default(),
            retain,
        }
    }

    /// Appends; with retention, a refusal is retried once after the confirmed position the
    /// model has reached is persisted: confirmed records become evictable only then (like
    /// deletable without retention), up to `confirm_interval` after `confirm`.
    async fn append_or_refuse(&mut self, p: Bytes, pending: u64) -> Result<u64, Error> {
        match self.spool.append(p.clone()).await {
            Err(Error::Full) if self.retain && !self.refusal_justified(pending) => {
                let file = self.dir.path().join("confirmed");
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                loop {
                    let persisted = std::fs::read(&file)
                        .ok()
                        .filter(|b| b.len() >= 20)
                        .map_or(0, |b| u64::from_le_bytes(b[12..20].try_into().unwrap()));
                    if persisted >= self.model.confirmed {
                        break;
                    }
                    assert!(tokio::time::Instant::now() < deadline, "never persisted");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                // The writer recounts retained bytes right after the rename; give it a moment
                // (a loaded machine may deschedule it), then the refusal stands.
                for _ in 0..50 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    match self.spool.append(p.clone()).await {
                        Err(Error::Full) => {}
                        r => return r,
                    }
                }
                Err(Error::Full)
            }
            r => r,
        }
    }

    /// An append refused for quota with retention on: only fair if the unconfirmed records
    /// alone (frames, a segment header each at most), one partly confirmed segment (up to a
    /// segment or one record larger than that) and what this op appends (`pending`) would not
    /// fit. A refusal while evictable retained bytes could make room fails here.
    fn check_refusal(&self, e: &Error, pending: u64) {
        assert!(self.retain, "append refused without retention: {e}");
        assert!(matches!(e, Error::Full), "{e}");
        assert!(
            self.refusal_justified(pending),
            "refused with only {} unconfirmed bytes (+{pending} pending): {:?}",
            self.unconfirmed_bytes(),
            self.spool.stats()
        );
    }

    fn unconfirmed_bytes(&self) -> u64 {
        self.model
            .unconfirmed
            .iter()
            .map(|(_, p)| 48 + p.len() as u64)
            .sum()
    }

    fn refusal_justified(&self, pending: u64) -> bool {
        let partly_confirmed = 24 + (16 << 10) + 24;
        self.unconfirmed_bytes() + partly_confirmed + pending > RETAIN_MAX_BYTES
    }

    async fn apply(&mut self, op: &Op) {
        match op {
            Op::Append { len, fill } => {
                let p = payload(*len, *fill);
                match self.append_or_refuse(p.clone(), 48 + *len as u64).await {
                    Ok(seq) => self.model.appended(seq, p),
                    Err(e) => self.check_refusal(&e, 48 + *len as u64),
                }
            }
            Op::Burst(items) => {
                let payloads: Vec<Bytes> = items
                    .iter()
                    .map(|(len, fill)| payload(*len, *fill))
                    .collect();
                let seqs = join_all(payloads.iter().map(|p| self.spool.append(p.clone()))).await;
                let pending: u64 = payloads.iter().map(|p| 48 + p.len() as u64).sum();
                let mut done = Vec::new();
                for (r, p) in seqs.into_iter().zip(payloads) {
                    let r = match r {
                        Err(Error::Full) => self.append_or_refuse(p.clone(), pending).await,
                        r => r,
                    };
                    match r {
                        Ok(seq) => done.push((seq, p)),
                        Err(e) => self.check_refusal(&e, pending),
                    }
                }
                done.sort_by_key(|(seq, _)| *seq);
                for (seq, p) in done {
                    self.model.appended(seq, p);
                }
            }
            Op::Read(n) => {
                let available = self.model.unconfirmed.len() - self.model.read;
                if available == 0 {
                    let r =
                        tokio::time::timeout(Duration::from_millis(2), self.reader.next_batch(*n))
                            .await;
                    assert!(r.is_err(), "read returned {r:?} with nothing unread");
                    return;
                }
                let got = read(&mut self.reader, *n).await;
                let want: Vec<(u64, Bytes)> = self
                    .model
                    .unconfirmed
                    .iter()
                    .skip(self.model.read)
                    .take(*n)
                    .cloned()
                    .collect();
                let got: Vec<(u64, Bytes)> = got.into_iter().map(|r| (r.seq, r.payload)).collect();
                assert_eq!(seqs(&got), seqs(&want));
                assert!(got == want, "payloads differ");
                self.model.read += got.len();
            }
            Op::Confirm(n) => {
                let n = (*n).min(self.model.read);
                if n == 0 {
                    return;
                }
                let seq = self.model.unconfirmed[n - 1].0;
                self.spool.confirm(seq);
                self.model.unconfirmed.drain(..n);
                self.model.read -= n;
                self.model.confirmed = seq;
            }
            Op::Reopen => self.reopen().await,
        }
    }

    async fn reopen(&mut self) {
        self.spool.close().await.expect("close");
        let (spool, report) =
            Spool::open(config(self.dir.path(), self.retain), self.metrics.clone())
                .expect("reopen");
        assert_eq!(
            report.confirmed, self.model.confirmed,
            "close persists the confirmed position"
        );
        assert_eq!(report.records, self.model.unconfirmed.len() as u64);
        assert_eq!(
            (report.torn_tail_bytes, report.corrupt_records_skipped),
            (0, 0)
        );
        self.spool = spool;
        self.reader = self.spool.reader();
        self.model.read = 0;
        self.check_disk();
    }

    /// After a close (which persists and deletes): no fully confirmed segment is left but the
    /// newest, and the byte count matches the files.
    fn check_disk(&self) {
        let mut segs: Vec<(u64, u64)> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap())
            .filter_map(|e| {
                let name = e.file_name().into_string().unwrap();
                let base = name.strip_suffix(".seg")?.parse().ok()?;
                Some((base, e.metadata().unwrap().len()))
            })
            .collect();
        segs.sort();
        let stats = self.spool.stats();
        assert_eq!(stats.segments, segs.len());
        assert_eq!(stats.bytes, segs.iter().map(|s| s.1).sum::<u64>());
        if self.retain {
            // Fully confirmed segments stay (retained), within the quota.
            assert!(stats.bytes <= RETAIN_MAX_BYTES, "{stats:?}");
            return;
        }
        for pair in segs.windows(2) {
            assert!(
                pair[1].0 > self.model.confirmed + 1,
                "segment {} is fully confirmed (next base {}, confirmed {}) but was not deleted",
                pair[0].0,
                pair[1].0,
                self.model.confirmed
            );
        }
    }

    fn check_stats(&self) {
        let stats = self.spool.stats();
        assert_eq!(
            stats.records,
            self.model.unconfirmed.len() as u64,
            "{stats:?}"
        );
        assert_eq!(stats.confirmed, self.model.confirmed);
        assert_eq!(stats.next_seq, self.model.max_seq + 1);
        assert_eq!(
            stats.oldest_unconfirmed_age.is_some(),
            !self.model.unconfirmed.is_empty()
        );
        if self.retain {
            assert!(stats.bytes <= RETAIN_MAX_BYTES, "over quota: {stats:?}");
            assert!(stats.retained_bytes <= stats.bytes, "{stats:?}");
        }
    }

    /// Reads and confirms everything, checks the timer-driven persist deletes every segment but
    /// the newest, then that a restart replays nothing and still never reuses a seq.
    async fn finish(mut self) {
        let left = self.model.unconfirmed.len() - self.model.read;
        self.apply(&Op::Read(left.max(1))).await;
        self.apply(&Op::Confirm(usize::MAX)).await;
        self.check_stats();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.retain && self.spool.stats().segments > 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "confirmed segments never deleted: {:?}",
                self.spool.stats()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.reopen().await;
        assert_eq!(self.spool.stats().records, 0);
        let seq = self
            .spool
            .append(Bytes::from_static(b"last"))
            .await
            .unwrap();
        assert_eq!(
            seq,
            self.model.max_seq + 1,
            "seq reused or skipped after a clean restart"
        );
        self.spool.close().await.unwrap();
    }
}

/// `next_batch` that fails the test instead of hanging it when an expected record never comes.
async fn read(reader: &mut Reader, n: usize) -> Vec<StoredRecord> {
    tokio::time::timeout(Duration::from_secs(10), reader.next_batch(n))
        .await
        .expect("next_batch did not return a record the model says is committed")
        .expect("read")
}

fn seqs(records: &[(u64, Bytes)]) -> Vec<u64> {
    records.iter().map(|r| r.0).collect()
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn spool_behaves_like_a_queue(ops in prop::collection::vec(op(), 1..60)) {
        run_model(false, &ops);
    }
}

/// The same with confirmed segments retained under a tight quota: eviction never takes an
/// unconfirmed record (every read and every reopen still returns exactly the model's), never
/// lets the files exceed the quota, and an append is refused only when unconfirmed records fill
/// it. A runner rather than `proptest!`, so that after the last case it can check that eviction
/// happened at all (else this would test nothing retention-specific and still pass).
#[test]
fn spool_with_retention_behaves_like_a_queue() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        source_file: Some(file!()),
        ..ProptestConfig::default()
    });
    let evicted = std::cell::Cell::new(0u64);
    let result = runner.run(&prop::collection::vec(op(), 1..120), |ops| {
        evicted.set(evicted.get() + run_model(true, &ops));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "retention model: {} segment(s) evicted over {} cases",
        evicted.get(),
        cases()
    );
    if cases() >= 32 {
        assert!(
            evicted.get() > 0,
            "no case evicted a retained segment: retention is not under test"
        );
    }
}

/// Runs `ops` against the spool and the model; returns the segments evicted.
fn run_model(retain: bool, ops: &[Op]) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut h = Harness::new(retain);
        for op in ops {
            h.apply(op).await;
            h.check_stats();
        }
        let evicted = h.metrics.spool_evicted_segments.get();
        h.finish().await;
        evicted
    })
}

/// Many concurrent appends on a multi-threaded runtime: all succeed with distinct seqs, are
/// read back in order, and share fsyncs.
#[test]
fn concurrent_appends_are_group_committed() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let cfg = SpoolConfig {
            segment_bytes: 64 << 10,
            ..config(dir.path(), false)
        };
        let (spool, _) = Spool::open(cfg, metrics.clone()).unwrap();
        let n = 2000u64;
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let spool = spool.clone();
                tokio::spawn(async move {
                    (
                        spool
                            .append(Bytes::from(format!("record {i}")))
                            .await
                            .unwrap(),
                        i,
                    )
                })
            })
            .collect();
        let mut by_seq = Vec::new();
        for t in tasks {
            by_seq.push(t.await.unwrap());
        }
        by_seq.sort();
        let seqs: Vec<u64> = by_seq.iter().map(|x| x.0).collect();
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>());

        let mut reader = spool.reader();
        let mut got = Vec::new();
        while (got.len() as u64) < n {
            got.extend(read(&mut reader, 333).await);
        }
        for (r, (seq, i)) in got.iter().zip(&by_seq) {
            assert_eq!(
                (r.seq, &r.payload[..]),
                (*seq, format!("record {i}").as_bytes())
            );
        }
        let batches = metrics.spool_batch_records.get_sample_count();
        assert_eq!(metrics.spool_batch_records.get_sample_sum() as u64, n);
        assert!(metrics.spool_fsync.get_sample_count() >= batches);
        eprintln!(
            "{n} appends in {batches} group commits; mean fsync {:.3} ms",
            metrics.spool_fsync.get_sample_sum() * 1000.0
                / metrics.spool_fsync.get_sample_count() as f64
        );
        assert!(batches < n, "no two appends shared an fsync");
        spool.close().await.unwrap();
    });
}

#[tokio::test]
async fn reader_waits_for_new_records_and_sees_close() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(dir.path(), false), Arc::new(Metrics::new())).unwrap();
    let mut reader = spool.reader();
    let pending = tokio::spawn(async move {
        let first = reader.next_batch(10).await;
        (reader, first)
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !pending.is_finished(),
        "next_batch returned with nothing committed"
    );
    spool.append(Bytes::from_static(b"hello")).await.unwrap();
    let (mut reader, first) = pending.await.unwrap();
    assert_eq!(first.unwrap()[0].payload, Bytes::from_static(b"hello"));

    spool
        .append(Bytes::from_static(b"before close"))
        .await
        .unwrap();
    spool.close().await.unwrap();
    assert!(matches!(
        spool.append(Bytes::from_static(b"late")).await,
        Err(Error::Closed)
    ));
    assert_eq!(
        reader.next_batch(10).await.unwrap()[0].payload,
        Bytes::from_static(b"before close")
    );
    assert!(matches!(reader.next_batch(10).await, Err(Error::Closed)));
    // Closing twice is fine.
    spool.close().await.unwrap();
}

#[tokio::test]
async fn dropping_every_handle_without_close_releases_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(dir.path(), false), Arc::new(Metrics::new())).unwrap();
    let seq = spool.append(Bytes::from_static(b"kept")).await.unwrap();
    spool.confirm(seq);
    let reader = spool.reader();
    drop(spool);
    // The writer thread notices the dropped sender, persists and releases the lock, even though
    // a reader still holds the shared state.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (spool, report) = loop {
        match Spool::open(config(dir.path(), false), Arc::new(Metrics::new())) {
            Ok(opened) => break opened,
            Err(Error::Locked) => assert!(
                tokio::time::Instant::now() < deadline,
                "lock never released"
            ),
            Err(e) => panic!("reopen: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    drop(reader);
    assert_eq!((report.confirmed, report.records), (seq, 0));
    spool.close().await.unwrap();
}

#[tokio::test]
async fn reader_survives_deletion_of_the_segments_it_is_reading() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(dir.path(), false), Arc::new(Metrics::new())).unwrap();
    let mut seqs = Vec::new();
    for i in 0..20 {
        seqs.push(spool.append(payload(1500, i)).await.unwrap());
    }
    let mut reader = spool.reader();
    let first = reader.next_batch(3).await.unwrap();
    assert_eq!(first.len(), 3);
    // Confirm (wrongly) beyond what the reader has seen: the segments under and ahead of it go.
    spool.confirm(seqs[12]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while spool.stats().segments > 5 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut rest = Vec::new();
    while rest.last().map(|r: &StoredRecord| r.seq) != Some(seqs[19]) {
        rest.extend(read(&mut reader, 100).await);
    }
    let got: Vec<u64> = rest.iter().map(|r| r.seq).collect();
    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    assert!(
        got.ends_with(&seqs[13..]),
        "every unconfirmed record is still delivered: {got:?}"
    );
    spool.close().await.unwrap();
}
