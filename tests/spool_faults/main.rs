//! The spool under filesystem faults, through the `SpoolFs` seam.
//!
//! * `faulty.rs`: a wrapper over the real filesystem that fails the Nth write, fsync, create,
//!   rename or directory fsync (EIO, ENOSPC) and can report low free space. The tests below
//!   check that the spool fails closed on segment I/O errors, keeps going on confirmed-position
//!   errors, and honours `min_free_bytes`; after a "restart" on the real filesystem every
//!   acknowledged record is there.
//! * `memfs.rs` + `powercut.rs`: an in-memory filesystem that models what survives a power cut,
//!   and property tests cutting power at random (and at every) operation of random workloads.
//! * `deadletter.rs`: the dead-letter store on the same seam: injected errors in each step of a
//!   `put`, and a power cut at every operation of a small workload.

mod deadletter;
mod faulty;
mod ingress;
mod journal;
mod memfs;
mod powercut;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use hookbridge::metrics::Metrics;
use hookbridge::spool::{Error, Health, Reader, RealFs, Spool, SpoolConfig, StoredRecord};

use faulty::{FaultFs, Op, EIO, ENOSPC};

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        segment_bytes: 1 << 20,
        max_bytes: 1 << 30,
        max_append_bytes: 16 << 10,
        max_batch_bytes: 1 << 20,
        preallocate_bytes: 1 << 20,
        confirm_interval: Duration::from_millis(5),
        min_free_bytes: 0,
        retain_confirmed: Duration::ZERO,
    }
}

/// Payload `i`: distinct for every `i`, `len` bytes.
fn payload(i: u64, len: usize) -> Bytes {
    let mut v = i.to_le_bytes().to_vec();
    v.extend((0..len.saturating_sub(8)).map(|k| (i as usize * 31 + k) as u8));
    v.into()
}

fn open(cfg: &SpoolConfig, fs: &FaultFs) -> (Spool, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let (spool, _) =
        Spool::open_with_fs(cfg.clone(), metrics.clone(), Arc::new(fs.clone())).expect("open");
    (spool, metrics)
}

/// Closes (whatever that returns) and reads everything the reader has left.
async fn close_and_drain(spool: &Spool, mut reader: Reader) -> Vec<StoredRecord> {
    let _ = spool.close().await;
    let mut out = Vec::new();
    loop {
        match reader.next_batch(1000).await {
            Ok(batch) => out.extend(batch),
            Err(Error::Closed) => return out,
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Reopens `dir` on the real filesystem, as after a restart, and checks that every
/// acknowledged `(seq, payload)` is there, byte-identical, and that anything else replayed is
/// one of the `attempted` payloads (a failed append may still have reached the disk: a
/// duplicate for the client, never a loss). Then checks a new append gets a fresh seq.
async fn restart_and_check(cfg: &SpoolConfig, acked: &[(u64, Bytes)], attempted: &[Bytes]) {
    let (spool, _) = Spool::open(cfg.clone(), Arc::new(Metrics::new())).expect("reopen");
    let reader = spool.reader();
    let records = close_and_drain(&spool, reader).await;
    for (seq, p) in acked {
        let r = records
            .iter()
            .find(|r| r.seq == *seq)
            .unwrap_or_else(|| panic!("acknowledged seq {seq} lost"));
        assert_eq!(&r.payload, p, "seq {seq} changed");
    }
    for r in &records {
        assert!(
            acked.iter().any(|(s, p)| *s == r.seq && *p == r.payload)
                || attempted.contains(&r.payload),
            "seq {} holds a payload nobody appended",
            r.seq
        );
    }
    let (spool, _) = Spool::open(cfg.clone(), Arc::new(Metrics::new())).expect("reopen");
    let seq = spool.append(payload(9999, 50)).await.expect("append");
    let max_seen = records.iter().map(|r| r.seq).max().unwrap_or(0);
    assert!(seq > max_seen, "seq {seq} reused (saw {max_seen})");
    spool.close().await.expect("close");
}

fn errors(m: &Metrics, op: &str) -> u64 {
    m.spool_errors.with_label_values(&[op]).get()
}

fn rejected(m: &Metrics, reason: &str) -> u64 {
    m.spool_rejected.with_label_values(&[reason]).get()
}

/// Operations that write, sync, create, rename or delete.
fn mutations(fs: &FaultFs) -> usize {
    fs.ops().len()
}

#[tokio::test]
async fn failed_segment_write_or_fsync_fails_the_batch_and_poisons_the_spool() {
    for (op, errno, label) in [
        (Op::Write, EIO, "write"),
        (Op::Write, ENOSPC, "write"),
        (Op::SyncData, EIO, "fsync"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let fs = FaultFs::new(Arc::new(RealFs));
        let (spool, metrics) = open(&cfg, &fs);
        let reader = spool.reader();
        let mut acked = Vec::new();
        for i in 0..5 {
            let p = payload(i, 300);
            acked.push((spool.append(p.clone()).await.expect("append"), p));
        }

        fs.fail(op, ".seg", 1, errno);
        let burst: Vec<Bytes> = (100..120).map(|i| payload(i, 300)).collect();
        let results = join_all(burst.iter().map(|p| spool.append(p.clone()))).await;
        assert!(fs.all_fired(), "{op:?}: the fault was not hit");
        for r in &results {
            assert!(
                matches!(r, Err(Error::Failed(_))),
                "{op:?}/{errno}: an append in or after the failed batch returned {r:?}"
            );
        }
        assert_eq!(spool.health(), Health::Failed);
        assert_eq!(errors(&metrics, label), 1, "{op:?}");
        assert_eq!(rejected(&metrics, "failed"), 20);

        // Later appends fail at once, and the writer does no further I/O: a retried fsync
        // could "succeed" over pages the kernel already dropped.
        let before = mutations(&fs);
        assert!(matches!(
            spool.append(payload(200, 10)).await,
            Err(Error::Failed(_))
        ));
        spool.confirm(3);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(mutations(&fs), before, "{op:?}: I/O after the spool failed");

        // Committed records stay readable (the forwarder drains them while 503s go out).
        let read = close_and_drain(&spool, reader).await;
        let read: Vec<(u64, Bytes)> = read.into_iter().map(|r| (r.seq, r.payload)).collect();
        assert_eq!(read, acked, "{op:?}");
        assert!(matches!(spool.close().await, Err(Error::Failed(_))));
        assert_eq!(
            mutations(&fs),
            before,
            "{op:?}: close persisted after failure"
        );
        drop(spool);

        restart_and_check(&cfg, &acked, &burst).await;
    }
}

#[tokio::test]
async fn failure_while_rotating_segments_fails_closed() {
    // Each step of creating a segment: tmp file, its fsync, the rename, the directory fsync.
    for (op, on) in [
        (Op::Create, ".seg.tmp"),
        (Op::SyncAll, ".seg.tmp"),
        (Op::Rename, ".seg"),
        (Op::SyncDir, ""),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            segment_bytes: 4096,
            ..config(dir.path())
        };
        let fs = FaultFs::new(Arc::new(RealFs));
        let (spool, metrics) = open(&cfg, &fs);
        let mut acked = Vec::new();
        let mut attempted = Vec::new();
        // The first append creates the first segment; arm the fault after it so it hits a
        // rotation from a segment holding records. No confirms: no other directory fsync.
        let p = payload(0, 1000);
        acked.push((spool.append(p.clone()).await.expect("append"), p));
        fs.fail(op, on, 1, EIO);
        let mut failed_at = None;
        for i in 1..20 {
            let p = payload(i, 1000);
            attempted.push(p.clone());
            match spool.append(p.clone()).await {
                Ok(seq) => {
                    assert!(failed_at.is_none(), "{op:?}: Ok after the spool failed");
                    acked.push((seq, p));
                }
                Err(Error::Failed(_)) => {
                    failed_at.get_or_insert(i);
                }
                Err(e) => panic!("{op:?}: {e}"),
            }
        }
        assert!(fs.all_fired(), "{op:?}: no rotation hit the fault");
        // A 24-byte header and three 1024-byte frames fill a 4 KiB segment: the 4th record
        // (i = 3) needs a new one.
        assert_eq!(failed_at, Some(3), "{op:?}");
        assert_eq!(spool.health(), Health::Failed);
        assert_eq!(errors(&metrics, "rotate"), 1, "{op:?}");
        let reader = spool.reader();
        let read = close_and_drain(&spool, reader).await;
        assert_eq!(
            read.len(),
            acked.len(),
            "{op:?}: committed records readable"
        );
        drop(spool);
        restart_and_check(&cfg, &acked, &attempted).await;
    }
}

#[tokio::test]
async fn failure_persisting_the_confirmed_position_does_not_poison_appends() {
    for (op, on) in [
        (Op::Create, "confirmed.tmp"),
        (Op::SyncAll, "confirmed.tmp"),
        (Op::Rename, "confirmed"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            segment_bytes: 4096,
            ..config(dir.path())
        };
        let fs = FaultFs::new(Arc::new(RealFs));
        let (spool, metrics) = open(&cfg, &fs);
        let mut acked = Vec::new();
        for i in 0..10 {
            let p = payload(i, 1000);
            acked.push((spool.append(p.clone()).await.expect("append"), p));
        }
        fs.fail(op, on, 1, EIO);
        spool.confirm(acked[4].0);
        // The writer persists within a confirm interval; wait for it to hit the fault, then
        // for the retry, which deletes the segments the position covers.
        wait_until(|| fs.all_fired()).await;
        // Three records per segment: 4 segments, of which the first is fully confirmed.
        wait_until(|| spool.stats().segments == 3).await;
        assert_eq!(errors(&metrics, "confirm"), 1, "{op:?}");
        assert_eq!(spool.health(), Health::Ok, "{op:?}");
        for i in 10..15 {
            let p = payload(i, 1000);
            acked.push((spool.append(p.clone()).await.expect("append"), p));
        }
        spool.close().await.expect("close");
        drop(spool);

        let (spool, report) = Spool::open(cfg.clone(), Arc::new(Metrics::new())).unwrap();
        assert_eq!(report.confirmed, acked[4].0, "{op:?}: the retry persisted");
        let records = close_and_drain(&spool, spool.reader()).await;
        let records: Vec<(u64, Bytes)> = records.into_iter().map(|r| (r.seq, r.payload)).collect();
        assert_eq!(records, acked[5..], "{op:?}");
    }
}

/// Polls `cond` (the writer works on its own thread); gives up after 10 s.
async fn wait_until(mut cond: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not reached within 10 s");
}

#[tokio::test]
async fn low_free_space_refuses_appends_with_full() {
    const MIN_FREE: u64 = 64 << 20;
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        min_free_bytes: MIN_FREE,
        retain_confirmed: Duration::ZERO,
        // Counted byte for byte below; preallocated zeros would be room of their own
        // (`preallocation_takes_only_room_nothing_else_may_claim`).
        preallocate_bytes: 0,
        ..config(dir.path())
    };
    let fs = FaultFs::new(Arc::new(RealFs));
    fs.set_free(10 << 20);
    let (spool, metrics) = open(&cfg, &fs);
    assert_eq!(spool.health(), Health::Full, "sampled at open");
    assert!(matches!(
        spool.append(payload(1, 100)).await,
        Err(Error::Full)
    ));
    assert_eq!(rejected(&metrics, "disk_low"), 1);
    assert_eq!(rejected(&metrics, "full"), 0);

    // Space comes back: noticed at the next sample (about a second).
    fs.set_free(1 << 30);
    wait_until(|| spool.health() == Health::Ok).await;
    spool.append(payload(2, 100)).await.expect("append");

    // Just above the margin: the spool counts its own writes between samples, so it stops
    // before eating into the margin, whenever the samples happen.
    let room = 5000;
    fs.set_free(MIN_FREE + room);
    wait_until(|| spool.health() == Health::Full).await;
    let mut written = 0;
    let mut refused = false;
    for i in 0..100 {
        match spool.append(payload(100 + i, 100)).await {
            Ok(_) => written += 124, // frame header + payload
            Err(Error::Full) => {
                refused = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused, "never refused");
    assert!(written > 0, "refused at once with {room} bytes of room");
    assert!(written <= room, "wrote {written} into a {room}-byte room");
    assert!(rejected(&metrics, "disk_low") >= 2);
    assert_ne!(spool.health(), Health::Failed);
    spool.close().await.expect("close");
}

/// Preallocated zeros come only from room that nothing else may claim: neither the quota an
/// append could use nor the `min_free_bytes` margin. So a spool that preallocates accepts
/// exactly the appends one that does not would, and its files never exceed `max_bytes`.
#[tokio::test]
async fn preallocation_takes_only_room_nothing_else_may_claim() {
    const MIN_FREE: u64 = 64 << 20;
    // The quota: the same appends are accepted with and without preallocation.
    let mut accepted = Vec::new();
    for preallocate_bytes in [0, 1 << 20] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            segment_bytes: 16 << 10,
            max_bytes: 40_000,
            preallocate_bytes,
            ..config(dir.path())
        };
        let fs = FaultFs::new(Arc::new(RealFs));
        let (spool, _) = open(&cfg, &fs);
        let (mut n, mut preallocated) = (0, 0);
        loop {
            match spool.append(payload(n, 900)).await {
                Ok(_) => n += 1,
                Err(Error::Full) => break,
                Err(e) => panic!("{e}"),
            }
            let on_disk: u64 = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum();
            assert!(on_disk <= cfg.max_bytes, "{on_disk} bytes on disk");
            assert_eq!(spool.stats().bytes, on_disk, "LOCK is empty");
            preallocated = preallocated.max(spool.stats().preallocated_bytes);
        }
        spool.close().await.unwrap();
        assert_eq!(preallocated > 0, preallocate_bytes > 0);
        accepted.push(n);
    }
    assert_eq!(
        accepted[0], accepted[1],
        "appends accepted without / with preallocation"
    );

    // The free-space margin: 3,000 bytes above it, so at most that is preallocated.
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        min_free_bytes: MIN_FREE,
        ..config(dir.path())
    };
    let fs = FaultFs::new(Arc::new(RealFs));
    fs.set_free(MIN_FREE + 3000);
    let (spool, _) = open(&cfg, &fs);
    spool.append(payload(1, 100)).await.unwrap();
    let stats = spool.stats();
    assert!(
        stats.preallocated_bytes > 0 && stats.preallocated_bytes < 3000,
        "{stats:?}"
    );
    spool.close().await.unwrap();
}

/// Retained confirmed segments count as free space for `min_free_bytes` too: a disk below the
/// margin evicts them instead of answering 503, and only when none are left is it refused.
#[tokio::test]
async fn low_free_space_evicts_retained_segments_before_refusing() {
    const MIN_FREE: u64 = 64 << 20;
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        min_free_bytes: MIN_FREE,
        segment_bytes: 4096,
        retain_confirmed: Duration::from_secs(3600),
        // The record below must need new room; preallocated zeros would hold it.
        preallocate_bytes: 0,
        ..config(dir.path())
    };
    let fs = FaultFs::new(Arc::new(RealFs));
    fs.set_free(1 << 30);
    let (spool, metrics) = open(&cfg, &fs);
    let mut last = 0;
    for i in 0..30 {
        last = spool.append(payload(i, 1000)).await.expect("append");
    }
    spool.confirm(last);
    wait_until(|| spool.stats().retained_bytes > 20_000).await;

    // The disk fills up from elsewhere: not even this record fits above the margin.
    let samples = fs.free_calls();
    fs.set_free(MIN_FREE + 500);
    // A sample that started after `set_free` was taken in: the second from now (the first may
    // have read the old value before it, or still be on its way into the spool's state).
    wait_until(|| fs.free_calls() >= samples + 2).await;
    assert_eq!(spool.health(), Health::Ok, "retained bytes count as free");
    spool
        .append(payload(100, 1000))
        .await
        .expect("evicts instead of 503");
    assert!(metrics.spool_evicted_segments.get() > 0);
    assert_eq!(rejected(&metrics, "disk_low"), 0);

    // The fake disk never shows the freed space, so each append evicts more until nothing
    // retained is left; only then is it refused.
    let mut refused = false;
    for i in 0..40 {
        match spool.append(payload(200 + i, 1000)).await {
            Ok(_) => {}
            Err(Error::Full) => {
                refused = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused, "never refused");
    // The writer's estimate also subtracts what it wrote since the last sample, so the last
    // retained segment may not have been enough; everything before it was evicted first.
    assert!(
        spool.stats().retained_bytes <= 4096,
        "refused while retained segments could have made room: {:?}",
        spool.stats()
    );
    assert!(metrics.spool_evicted_segments.get() >= 6);
    assert_eq!(spool.stats().records, spool.stats().next_seq - last - 1);
    spool.close().await.expect("close");
}

#[tokio::test]
async fn min_free_bytes_zero_never_asks_the_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new(Arc::new(RealFs));
    fs.set_free(0);
    let (spool, _) = open(&config(dir.path()), &fs);
    assert_eq!(spool.health(), Health::Ok);
    spool.append(payload(1, 100)).await.expect("append");
    spool.close().await.expect("close");
    assert_eq!(fs.free_calls(), 0, "statvfs with min_free_bytes = 0");
}

#[tokio::test]
async fn failure_deleting_a_confirmed_segment_is_retried_and_not_fatal() {
    for (op, on) in [(Op::Remove, ".seg"), (Op::SyncDir, "")] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            segment_bytes: 4096,
            ..config(dir.path())
        };
        let fs = FaultFs::new(Arc::new(RealFs));
        let (spool, metrics) = open(&cfg, &fs);
        let mut acked = Vec::new();
        for i in 0..12 {
            let p = payload(i, 1000);
            acked.push((spool.append(p.clone()).await.expect("append"), p));
        }
        // Three records per segment: 4 segments. Persisting seq 4 makes the first deletable.
        // The fault is armed after the persist's own directory fsync: the 2nd sync_dir from now
        // is the one after the unlink.
        fs.fail(op, on, if op == Op::SyncDir { 2 } else { 1 }, EIO);
        spool.confirm(acked[3].0);
        wait_until(|| fs.all_fired()).await;
        wait_until(|| errors(&metrics, "confirm") == 1).await;
        assert_eq!(spool.health(), Health::Ok, "{op:?}");
        // The next persisted move retries (a failed unlink) or simply goes on.
        spool.confirm(acked[6].0);
        wait_until(|| spool.stats().segments == 2).await;
        for i in 12..15 {
            let p = payload(i, 1000);
            acked.push((spool.append(p.clone()).await.expect("append"), p));
        }
        spool.close().await.expect("close");
        drop(spool);
        let (spool, report) = Spool::open(cfg.clone(), Arc::new(Metrics::new())).unwrap();
        assert_eq!(report.confirmed, acked[6].0, "{op:?}");
        let records = close_and_drain(&spool, spool.reader()).await;
        let records: Vec<(u64, Bytes)> = records.into_iter().map(|r| (r.seq, r.payload)).collect();
        assert_eq!(records, acked[7..], "{op:?}");
    }
}

/// `append_then`'s callback: what the ingress commits a de-duplication claim with (invariant
/// 1). It must run only after the record's fsync returned, even when the append future was
/// dropped while waiting, and must be dropped unrun for a record that is not stored.
#[tokio::test]
async fn append_then_runs_its_callback_only_after_the_fsync_even_if_the_append_was_dropped() {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Counts runs and drops of the callback it is moved into.
    struct Probe {
        ran: Arc<AtomicU64>,
        dropped: Arc<AtomicU64>,
    }
    impl Drop for Probe {
        fn drop(&mut self) {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
    let ran = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let probe = || {
        let p = Probe {
            ran: ran.clone(),
            dropped: dropped.clone(),
        };
        Box::new(move |seq: u64| {
            p.ran.store(seq, Ordering::SeqCst);
        }) as hookbridge::spool::OnDurable
    };

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let fs = FaultFs::new(Arc::new(RealFs));
    let (spool, _) = open(&cfg, &fs);

    // Stored: runs once, with the seq the append returns.
    let seq = spool.append_then(payload(1, 100), probe()).await.unwrap();
    assert_eq!(
        (ran.load(Ordering::SeqCst), dropped.load(Ordering::SeqCst)),
        (seq, 1)
    );

    // The append is dropped while its fsync is held: nothing runs until the fsync returns,
    // then the callback runs anyway.
    fs.hold(Op::SyncData, ".seg");
    let pending = tokio::spawn({
        let spool = spool.clone();
        let p = probe();
        async move { spool.append_then(payload(2, 100), p).await }
    });
    wait_until(|| fs.is_holding()).await;
    pending.abort();
    assert!(pending.await.unwrap_err().is_cancelled());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        ran.load(Ordering::SeqCst),
        seq,
        "ran before the fsync returned"
    );
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    fs.release(None);
    wait_until(|| dropped.load(Ordering::SeqCst) == 2).await;
    assert_eq!(ran.load(Ordering::SeqCst), seq + 1);

    // Refused (too large): dropped unrun.
    let too_large = payload(3, cfg.max_append_bytes as usize + 1);
    assert!(matches!(
        spool.append_then(too_large, probe()).await,
        Err(Error::TooLarge)
    ));
    assert_eq!(dropped.load(Ordering::SeqCst), 3);
    assert_eq!(ran.load(Ordering::SeqCst), seq + 1);

    // A failed fsync: dropped unrun.
    fs.fail(Op::SyncData, ".seg", 1, EIO);
    assert!(matches!(
        spool.append_then(payload(4, 100), probe()).await,
        Err(Error::Failed(_))
    ));
    assert_eq!(dropped.load(Ordering::SeqCst), 4);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        seq + 1,
        "ran for a failed record"
    );
    let _ = spool.close().await;
}
