//! Recovery from damaged spool directories, locking, and the append limits.
//!
//! These tests edit spool files by hand, so they spell out the on-disk layout (see the
//! `spool` module docs): a 24-byte segment header, then frames of a 24-byte header
//! (`len: u32 | crc32c: u32 | seq: u64 | appended_at_ms: u64`) and the payload. If the format
//! changes, these constants must change with a format version bump.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::spool_files::{segment_files, segment_version};
use hookbridge::metrics::Metrics;
use hookbridge::spool::{Error, Health, Reader, RecoveryReport, Spool, SpoolConfig, StoredRecord};

const SEGMENT_HEADER: u64 = 24;
const FRAME_HEADER: u64 = 24;

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        segment_bytes: 1 << 20,
        max_bytes: 1 << 30,
        max_append_bytes: 64 << 10,
        max_batch_bytes: 1 << 20,
        preallocate_bytes: 1 << 20,
        confirm_interval: Duration::from_millis(5),
        min_free_bytes: 0,
        retain_confirmed: Duration::ZERO,
    }
}

fn payload(i: u64, len: usize) -> Bytes {
    (0..len)
        .map(|j| (i as usize * 31 + j) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn open(cfg: &SpoolConfig) -> (Spool, RecoveryReport, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let (spool, report) = Spool::open(cfg.clone(), metrics.clone()).expect("open");
    (spool, report, metrics)
}

/// Appends `n` records of `len` bytes (payload i for the i-th), returns their seqs.
async fn append_n(spool: &Spool, n: u64, len: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in 1..=n {
        seqs.push(spool.append(payload(i, len)).await.expect("append"));
    }
    seqs
}

/// Closes the spool, then reads everything the reader has left.
async fn close_and_drain(spool: &Spool, mut reader: Reader) -> Vec<StoredRecord> {
    spool.close().await.expect("close");
    let mut out = Vec::new();
    loop {
        match reader.next_batch(1000).await {
            Ok(batch) => out.extend(batch),
            Err(Error::Closed) => return out,
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Offset of the `k`-th frame (0-based) in a segment of equal-sized records.
fn frame_offset(k: u64, len: usize) -> u64 {
    SEGMENT_HEADER + k * (FRAME_HEADER + len as u64)
}

fn flip(path: &Path, offset: u64, mask: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= mask;
    std::fs::write(path, bytes).unwrap();
}

fn seqs(records: &[StoredRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

#[tokio::test]
async fn torn_tail_is_truncated_and_appends_continue_above_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (spool, _, _) = open(&cfg);
    assert_eq!(append_n(&spool, 5, 100).await, vec![1, 2, 3, 4, 5]);
    spool.close().await.unwrap();

    let seg = &segment_files(dir.path())[0];
    let full = std::fs::metadata(seg).unwrap().len();
    let cut_at = frame_offset(4, 100) + 50; // in the middle of record 5's payload
    std::fs::OpenOptions::new()
        .write(true)
        .open(seg)
        .unwrap()
        .set_len(cut_at)
        .unwrap();

    let (spool, report, metrics) = open(&cfg);
    assert_eq!(report.torn_tail_bytes, cut_at - frame_offset(4, 100));
    assert_eq!(report.records, 4);
    assert_eq!(report.corrupt_records_skipped, 0);
    assert_eq!(
        metrics.spool_corrupt_records.get(),
        0,
        "a torn tail is not corruption"
    );
    assert_eq!(
        std::fs::metadata(seg).unwrap().len(),
        frame_offset(4, 100),
        "truncated at the torn frame"
    );
    assert!(full > frame_offset(4, 100));

    let mut reader = spool.reader();
    let got = reader.next_batch(100).await.unwrap();
    assert_eq!(seqs(&got), vec![1, 2, 3, 4]);
    for r in &got {
        assert_eq!(r.payload, payload(r.seq, 100));
    }
    let new_seq = spool
        .append(Bytes::from_static(b"after the crash"))
        .await
        .unwrap();
    assert!(
        new_seq > 4,
        "seq {new_seq} must be above every surviving record"
    );
    let rest = close_and_drain(&spool, reader).await;
    assert_eq!(seqs(&rest), vec![new_seq]);

    // And it all survives another restart.
    let (spool, report, _) = open(&cfg);
    assert_eq!(report.torn_tail_bytes, 0);
    let all = close_and_drain(&spool, spool.reader()).await;
    assert_eq!(seqs(&all), vec![1, 2, 3, 4, new_seq]);
    assert_eq!(all[4].payload, Bytes::from_static(b"after the crash"));
}

#[tokio::test]
async fn flipped_payload_bit_skips_only_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (spool, _, _) = open(&cfg);
    append_n(&spool, 5, 100).await;
    spool.close().await.unwrap();

    let seg = &segment_files(dir.path())[0];
    flip(seg, frame_offset(2, 100) + FRAME_HEADER + 37, 0x08); // record 3's payload

    let (spool, report, metrics) = open(&cfg);
    assert_eq!(report.corrupt_records_skipped, 1);
    assert_eq!(report.torn_tail_bytes, 0);
    assert_eq!(metrics.spool_corrupt_records.get(), 1);
    let got = close_and_drain(&spool, spool.reader()).await;
    assert_eq!(seqs(&got), vec![1, 2, 4, 5]);
    for r in &got {
        assert_eq!(r.payload, payload(r.seq, 100));
    }
    assert_eq!(
        metrics.spool_corrupt_records.get(),
        1,
        "the reader does not count it a second time"
    );
}

#[tokio::test]
async fn flipped_length_bit_resyncs_to_the_following_records() {
    // Low bit: the length still looks plausible, the CRC covers the wrong bytes. High bit: the
    // length is absurd (> the format's MAX_RECORD_BYTES). Both must resync onto record 4.
    for (byte, mask) in [(0u64, 0x01u8), (1, 0x01), (3, 0x80)] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let (spool, _, _) = open(&cfg);
        append_n(&spool, 5, 100).await;
        spool.close().await.unwrap();

        flip(
            &segment_files(dir.path())[0],
            frame_offset(2, 100) + byte,
            mask,
        );

        let (spool, report, metrics) = open(&cfg);
        assert_eq!(
            report.corrupt_records_skipped, 1,
            "byte {byte} mask {mask:#x}"
        );
        assert_eq!(metrics.spool_corrupt_records.get(), 1);
        let got = close_and_drain(&spool, spool.reader()).await;
        assert_eq!(seqs(&got), vec![1, 2, 4, 5], "byte {byte} mask {mask:#x}");
    }
}

#[tokio::test]
async fn corruption_at_the_end_of_an_older_segment_is_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    // 24 + 2 * 224 = 472 bytes: two 200-byte records per segment.
    let cfg = SpoolConfig {
        segment_bytes: 500,
        ..config(dir.path())
    };
    let (spool, _, _) = open(&cfg);
    append_n(&spool, 6, 200).await;
    spool.close().await.unwrap();
    let segs = segment_files(dir.path());
    assert_eq!(segs.len(), 3);

    // Cut the middle segment inside its last record (seq 4).
    let cut_at = frame_offset(1, 200) + 100;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segs[1])
        .unwrap()
        .set_len(cut_at)
        .unwrap();

    let (spool, report, metrics) = open(&cfg);
    assert_eq!(report.torn_tail_bytes, 0);
    assert_eq!(report.corrupt_records_skipped, 1);
    assert_eq!(metrics.spool_corrupt_records.get(), 1);
    assert_eq!(
        std::fs::metadata(&segs[1]).unwrap().len(),
        cut_at,
        "evidence is not truncated away"
    );
    let got = close_and_drain(&spool, spool.reader()).await;
    assert_eq!(seqs(&got), vec![1, 2, 3, 5, 6]);
}

#[tokio::test]
async fn zero_length_segment_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (spool, _, _) = open(&cfg);
    append_n(&spool, 3, 10).await;
    spool.close().await.unwrap();
    let empty = dir.path().join("00000000000000000100.seg");
    std::fs::write(&empty, b"").unwrap();

    let (spool, report, _) = open(&cfg);
    assert!(!empty.exists());
    assert!(report.segments_moved_aside.is_empty());
    assert_eq!(report.segments, 1);
    let mut reader = spool.reader();
    assert_eq!(seqs(&reader.next_batch(10).await.unwrap()), vec![1, 2, 3]);
    // Its name claims seqs from 100 on may have been handed out: never hand them out again.
    let seq = spool.append(Bytes::from_static(b"x")).await.unwrap();
    assert!(seq >= 100, "seq {seq}");
    assert_eq!(seqs(&close_and_drain(&spool, reader).await), vec![seq]);
}

#[tokio::test]
async fn garbage_header_moves_the_segment_aside_and_the_rest_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        segment_bytes: 500,
        ..config(dir.path())
    };
    let (spool, _, _) = open(&cfg);
    append_n(&spool, 6, 200).await;
    spool.close().await.unwrap();
    let segs = segment_files(dir.path());
    assert_eq!(segs.len(), 3);
    let original = std::fs::read(&segs[1]).unwrap();
    let mut garbage = original.clone();
    garbage[..8].copy_from_slice(b"GARBAGE!");
    std::fs::write(&segs[1], &garbage).unwrap();

    let (spool, report, _) = open(&cfg);
    let moved = dir.path().join("damaged").join("00000000000000000003.seg");
    assert_eq!(report.segments_moved_aside, vec![moved.clone()]);
    assert_eq!(
        std::fs::read(&moved).unwrap(),
        garbage,
        "moved, never deleted or altered"
    );
    assert!(!segs[1].exists());
    assert_eq!(report.segments, 2);
    let mut reader = spool.reader();
    let got = reader.next_batch(100).await.unwrap();
    assert_eq!(seqs(&got), vec![1, 2, 5, 6]);
    let seq = spool.append(Bytes::from_static(b"x")).await.unwrap();
    assert!(seq > 6, "seq {seq}");
    assert_eq!(seqs(&close_and_drain(&spool, reader).await), vec![seq]);

    // A short header is treated the same way.
    std::fs::write(dir.path().join("00000000000000009999.seg"), b"HBSPOOL").unwrap();
    let (spool, report, _) = open(&cfg);
    assert_eq!(report.segments_moved_aside.len(), 1);
    assert!(dir
        .path()
        .join("damaged")
        .join("00000000000000009999.seg")
        .exists());
    spool.close().await.unwrap();
}

#[tokio::test]
async fn corrupt_confirmed_file_is_moved_aside_and_everything_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (spool, _, _) = open(&cfg);
    append_n(&spool, 5, 50).await;
    spool.confirm(3);
    spool.close().await.unwrap();

    let (spool, report, _) = open(&cfg);
    assert_eq!(report.confirmed, 3);
    assert_eq!(
        seqs(&close_and_drain(&spool, spool.reader()).await),
        vec![4, 5]
    );

    flip(&dir.path().join("confirmed"), 14, 0x01);
    let (spool, report, _) = open(&cfg);
    assert_eq!(report.confirmed, 0);
    assert!(dir.path().join("damaged").join("confirmed").exists());
    assert!(!dir.path().join("confirmed").exists());
    assert_eq!(report.records, 5);
    let got = close_and_drain(&spool, spool.reader()).await;
    assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn second_open_of_the_same_directory_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (spool, _, _) = open(&cfg);
    match Spool::open(cfg.clone(), Arc::new(Metrics::new())) {
        Err(Error::Locked) => {}
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("expected Locked, got a second spool"),
    }
    spool.close().await.unwrap();
    let (spool, _, _) = open(&cfg);
    spool.close().await.unwrap();
}

#[tokio::test]
async fn unknown_format_version_refuses_to_open_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (spool, _, _) = open(&cfg);
    append_n(&spool, 2, 10).await;
    spool.close().await.unwrap();
    let seg = segment_files(dir.path())[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    // Versions 1 and 2 are read; 3 is a newer release's.
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    std::fs::write(&seg, &bytes).unwrap();

    match Spool::open(cfg.clone(), Arc::new(Metrics::new())) {
        Err(Error::Incompatible { path, version: 3 }) => assert_eq!(path, seg),
        Err(e) => panic!("expected Incompatible, got {e}"),
        Ok(_) => panic!("expected Incompatible"),
    }
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
    assert!(!dir.path().join("damaged").exists());
}

/// Rewrites a segment's header to format version 1, as releases up to efe9fd6 wrote it (the
/// header and frames are otherwise identical).
fn make_version_1(seg: &Path) {
    let mut bytes = std::fs::read(seg).unwrap();
    assert_eq!(segment_version(seg), 2, "new segments are version 2");
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(seg, bytes).unwrap();
}

#[tokio::test]
async fn a_version_1_segment_is_read_and_never_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (spool, _, _) = open(&cfg);
    append_n(&spool, 5, 100).await;
    spool.close().await.unwrap();
    let old = segment_files(dir.path())[0].clone();
    make_version_1(&old);
    let old_bytes = std::fs::read(&old).unwrap();

    let (spool, report, _) = open(&cfg);
    assert_eq!(report.records, 5);
    let reader = spool.reader();
    // The first append after the upgrade rolls to a new segment of version 2, although the
    // version-1 segment has room and its seqs continue.
    assert_eq!(spool.append(payload(6, 100)).await.unwrap(), 6);
    append_n(&spool, 2, 100).await;
    let segs = segment_files(dir.path());
    assert_eq!(segs.len(), 2, "{segs:?}");
    assert_eq!(segs[0], old);
    assert_eq!(
        std::fs::read(&old).unwrap(),
        old_bytes,
        "v1 segment changed"
    );
    assert_eq!(segment_version(&segs[1]), 2);
    assert!(segs[1].ends_with("00000000000000000006.seg"), "{segs:?}");
    let records = close_and_drain(&spool, reader).await;
    assert_eq!(seqs(&records), (1..=8).collect::<Vec<_>>());
    for (r, i) in records.iter().zip(1..=5) {
        assert_eq!(r.payload, payload(i, 100));
    }

    // Reopened, the version-2 segment is the newest and is continued.
    let (spool, _, _) = open(&cfg);
    assert_eq!(spool.append(payload(9, 100)).await.unwrap(), 9);
    assert_eq!(segment_files(dir.path()).len(), 2);
    assert_eq!(std::fs::read(&old).unwrap(), old_bytes);
    spool.close().await.unwrap();
}

#[tokio::test]
async fn a_crashed_version_1_segment_has_its_zeros_cut_and_is_not_appended_to() {
    let (crashed, cfg, acked) = crashed_spool(10, 300).await;
    let old = segment_files(crashed.path())[0].clone();
    make_version_1(&old);
    let (spool, report, _) = open(&cfg);
    assert_eq!((report.records, report.torn_tail_bytes), (10, 0));
    let data_end = frame_offset(10, 300);
    assert_eq!(std::fs::metadata(&old).unwrap().len(), data_end);
    let cut = std::fs::read(&old).unwrap();
    let next = spool.append(payload(11, 300)).await.unwrap();
    let segs = segment_files(crashed.path());
    assert_eq!(segs.len(), 2);
    assert_eq!(std::fs::read(&old).unwrap(), cut, "v1 segment appended to");
    assert_eq!(segment_version(&segs[1]), 2);
    let records = close_and_drain(&spool, spool.reader()).await;
    let mut want = acked;
    want.push(next);
    assert_eq!(seqs(&records), want);
}

#[tokio::test]
async fn quota_refuses_then_recovers_after_confirm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        segment_bytes: 4096,
        max_bytes: 16 << 10,
        max_append_bytes: 1000,
        ..config(dir.path())
    };
    let (spool, _, metrics) = open(&cfg);
    let mut accepted = 0;
    loop {
        match spool.append(payload(accepted, 1000)).await {
            Ok(_) => accepted += 1,
            Err(Error::Full) => break,
            Err(e) => panic!("append: {e}"),
        }
        assert!(accepted < 100, "quota never enforced");
    }
    assert!(accepted >= 10, "only {accepted} records fit in 16 KiB");
    assert_eq!(spool.health(), Health::Full);
    assert_eq!(metrics.spool_rejected.with_label_values(&["full"]).get(), 1);
    let stats = spool.stats();
    assert!(
        stats.bytes <= cfg.max_bytes,
        "{} bytes on disk",
        stats.bytes
    );
    assert_eq!(stats.records, accepted);

    let mut reader = spool.reader();
    let got = reader.next_batch(1000).await.unwrap();
    assert_eq!(got.len() as u64, accepted);
    spool.confirm(got.last().unwrap().seq);

    // The writer persists the position within a few confirm intervals and deletes segments
    // (retention is off here). Health turns Ok as soon as the persisted position makes those
    // segments evictable, a moment before the writer deletes them: wait for both.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while spool.health() != Health::Ok || spool.stats().segments >= stats.segments {
        assert!(
            tokio::time::Instant::now() < deadline,
            "space never freed: {:?}",
            spool.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = stats.bytes;
    let after = spool.stats();
    assert!(
        after.bytes < before && after.segments < stats.segments,
        "{after:?}"
    );
    assert_eq!(after.records, 0);
    let seq = spool
        .append(payload(99, 1000))
        .await
        .expect("append after space was freed");
    assert!(seq > accepted);
    spool.close().await.unwrap();
}

#[tokio::test]
async fn quota_below_one_segment_retires_the_confirmed_newest_segment_and_seqs_continue() {
    let dir = tempfile::tempdir().unwrap();
    // Everything fits in one segment, so the quota can only be freed by deleting the newest
    // (active) segment once it is fully confirmed.
    let cfg = SpoolConfig {
        segment_bytes: 1 << 20,
        max_bytes: 8 << 10,
        max_append_bytes: 1000,
        ..config(dir.path())
    };
    let (spool, _, _) = open(&cfg);
    let mut last = 0;
    while let Ok(seq) = spool.append(payload(last, 1000)).await {
        last = seq;
    }
    assert_eq!(spool.health(), Health::Full);
    assert_eq!(spool.stats().segments, 1);
    spool.confirm(last);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while spool.health() != Health::Ok {
        assert!(
            tokio::time::Instant::now() < deadline,
            "space never freed: {:?}",
            spool.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!((spool.stats().segments, spool.stats().bytes), (0, 0));
    spool.close().await.unwrap();
    assert!(segment_files(dir.path()).is_empty());

    // With no segment left, only the confirmed file remembers how far the seqs went.
    let (spool, report, _) = open(&cfg);
    assert_eq!((report.segments, report.confirmed), (0, last));
    assert_eq!(spool.stats().next_seq, last + 1);
    assert_eq!(spool.append(payload(0, 10)).await.unwrap(), last + 1);
    let got = close_and_drain(&spool, spool.reader()).await;
    assert_eq!(seqs(&got), vec![last + 1]);
}

#[tokio::test]
async fn too_large_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        max_append_bytes: 1000,
        ..config(dir.path())
    };
    let (spool, _, metrics) = open(&cfg);
    assert!(matches!(
        spool.append(payload(1, 1001)).await,
        Err(Error::TooLarge)
    ));
    assert_eq!(
        metrics
            .spool_rejected
            .with_label_values(&["too_large"])
            .get(),
        1
    );
    assert_eq!(
        spool.append(payload(1, 1000)).await.unwrap(),
        1,
        "a refused record uses no seq"
    );
    assert_eq!(
        spool.append(Bytes::new()).await.unwrap(),
        2,
        "empty payloads are records too"
    );
    let got = close_and_drain(&spool, spool.reader()).await;
    assert_eq!(
        got.iter().map(|r| r.payload.len()).collect::<Vec<_>>(),
        vec![1000, 0]
    );
}

#[tokio::test]
async fn lowering_the_append_limit_keeps_larger_acknowledged_records() {
    // Issue 14: records written under a larger limit stay valid frames after the operator lowers
    // it. The format, not today's configuration, decides what is corrupt on disk (invariant 3).
    const BIG: usize = 200 << 10;
    const SMALL: usize = 100;
    // Large records end an older segment, sit between small ones, and (in the second layout)
    // end the newest segment, where a misjudged frame would be truncated as a torn tail.
    for sizes in [
        vec![SMALL, BIG, SMALL, BIG, BIG, SMALL, BIG, SMALL],
        vec![BIG, SMALL, BIG, BIG, SMALL, BIG],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let before = SpoolConfig {
            segment_bytes: 512 << 10,
            max_append_bytes: 1 << 20,
            ..config(dir.path())
        };
        let (spool, _, _) = open(&before);
        let mut want = Vec::new();
        for (i, &len) in sizes.iter().enumerate() {
            let p = payload(i as u64, len);
            let seq = spool.append(p.clone()).await.expect("append");
            want.push((seq, p));
        }
        spool.close().await.unwrap();
        let segs = segment_files(dir.path());
        assert!(segs.len() >= 2, "{segs:?}");
        let lens: Vec<u64> = segs
            .iter()
            .map(|s| std::fs::metadata(s).unwrap().len())
            .collect();

        let after = SpoolConfig {
            segment_bytes: 512 << 10,
            max_append_bytes: 64 << 10,
            ..config(dir.path())
        };
        let (spool, report, metrics) = open(&after);
        assert_eq!(report.corrupt_records_skipped, 0, "{sizes:?}");
        assert_eq!(report.torn_tail_bytes, 0, "{sizes:?}");
        assert!(report.segments_moved_aside.is_empty());
        assert_eq!(report.records, sizes.len() as u64);
        let still: Vec<u64> = segs
            .iter()
            .map(|s| std::fs::metadata(s).unwrap().len())
            .collect();
        assert_eq!(still, lens, "nothing cut off any segment");

        // The lower limit applies to what is appended from now on.
        assert!(matches!(
            spool.append(payload(99, (64 << 10) + 1)).await,
            Err(Error::TooLarge)
        ));
        let next = spool.append(payload(100, SMALL)).await.unwrap();
        want.push((next, payload(100, SMALL)));

        let got = close_and_drain(&spool, spool.reader()).await;
        assert_eq!(metrics.spool_corrupt_records.get(), 0, "{sizes:?}");
        let got: Vec<(u64, Bytes)> = got.into_iter().map(|r| (r.seq, r.payload)).collect();
        assert_eq!(got.len(), want.len(), "{sizes:?}");
        assert!(got == want, "every record read back byte-exact ({sizes:?})");
    }
}

/// Appends `n` records of `len` bytes to a spool preallocating 64 KiB, then copies its files as
/// they are while it is open: what `kill -9` leaves. Returns the copy's directory, its config
/// and the seqs acknowledged.
async fn crashed_spool(n: u64, len: usize) -> (tempfile::TempDir, SpoolConfig, Vec<u64>) {
    let live = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        preallocate_bytes: 64 << 10,
        ..config(live.path())
    };
    let (spool, _, _) = open(&cfg);
    let acked = append_n(&spool, n, len).await;
    for e in std::fs::read_dir(live.path()).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if name.ends_with(".seg") || name == "confirmed" {
            std::fs::copy(e.path(), crashed.path().join(name)).unwrap();
        }
    }
    spool.close().await.unwrap();
    let cfg = SpoolConfig {
        dir: crashed.path().to_owned(),
        ..cfg
    };
    (crashed, cfg, acked)
}

#[tokio::test]
async fn the_newest_segment_is_preallocated_and_a_clean_close_cuts_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        segment_bytes: 64 << 10,
        preallocate_bytes: 16 << 10,
        ..config(dir.path())
    };
    let (spool, _, _) = open(&cfg);
    append_n(&spool, 5, 100).await;
    let data_end = frame_offset(5, 100);
    let seg = &segment_files(dir.path())[0];
    // The first commit wrote its frames and 16 KiB of zeros after them; the next four went
    // into those zeros without growing the file.
    let len = std::fs::metadata(seg).unwrap().len();
    assert_eq!(len, frame_offset(1, 100) + (16 << 10));
    let stats = spool.stats();
    assert_eq!(stats.bytes, len, "the zeros count as spool bytes");
    assert_eq!(stats.preallocated_bytes, len - data_end);
    let bytes = std::fs::read(seg).unwrap();
    assert!(bytes[data_end as usize..].iter().all(|&b| b == 0));

    // Enough to pass the zeros: the file grows by another 16 KiB ahead, never past
    // segment_bytes, and a rotation cuts the sealed segment back to its last frame.
    append_n(&spool, 200, 1000).await;
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 3, "{segs:?}");
    for sealed in &segs[..segs.len() - 1] {
        let b = std::fs::read(sealed).unwrap();
        assert!(b.len() as u64 <= cfg.segment_bytes, "{}", b.len());
        assert_ne!(b[b.len() - 1], 0, "sealed segment ends in zeros");
    }
    let newest = segs.last().unwrap();
    assert!(std::fs::metadata(newest).unwrap().len() <= cfg.segment_bytes);

    let reader = spool.reader();
    let records = close_and_drain(&spool, reader).await;
    assert_eq!(seqs(&records), (1..=205).collect::<Vec<_>>());
    let b = std::fs::read(newest).unwrap();
    assert_ne!(b[b.len() - 1], 0, "close cuts the zeros");

    // Nothing to cut, nothing skipped: the next append continues the same segment.
    let (spool, report, _) = open(&cfg);
    assert_eq!(
        (report.torn_tail_bytes, report.unused_tail_bytes),
        (0, 0),
        "{report:?}"
    );
    assert_eq!(spool.append(payload(0, 10)).await.unwrap(), 206);
    assert_eq!(segment_files(dir.path()).len(), segs.len());
    spool.close().await.unwrap();
}

#[tokio::test]
async fn after_a_crash_the_preallocated_zeros_are_cut_and_their_seqs_skipped() {
    let (crashed, cfg, acked) = crashed_spool(10, 300).await;
    let (spool, report, metrics) = open(&cfg);
    let data_end = frame_offset(10, 300);
    let zeros = frame_offset(1, 300) + (64 << 10) - data_end;
    assert_eq!(report.records, 10);
    assert_eq!(report.torn_tail_bytes, 0, "zeros are not a torn write");
    assert_eq!(report.unused_tail_bytes, zeros);
    assert_eq!(report.corrupt_records_skipped, 0);
    assert_eq!(metrics.spool_corrupt_records.get(), 0);
    let seg = &segment_files(crashed.path())[0];
    assert_eq!(
        std::fs::metadata(seg).unwrap().len(),
        data_end,
        "cut to the last frame"
    );

    // The zeros could have been acknowledged records damaged in place, so the seqs they could
    // have held are never handed out; the next record opens a new segment.
    let next = spool.append(payload(11, 300)).await.unwrap();
    assert!(
        next > 10 + zeros / FRAME_HEADER,
        "seq {next} may reuse a cut one"
    );
    assert_eq!(segment_files(crashed.path()).len(), 2);
    let records = close_and_drain(&spool, spool.reader()).await;
    let mut want = acked;
    want.push(next);
    assert_eq!(seqs(&records), want);
    for (r, i) in records.iter().zip(1..=10) {
        assert_eq!(r.payload, payload(i, 300));
    }
}

#[tokio::test]
async fn a_torn_write_into_preallocated_zeros_is_told_apart_from_the_zeros() {
    let (crashed, cfg, _) = crashed_spool(4, 300).await;
    // Half of a fifth frame reached the disk before the power went.
    let seg = &segment_files(crashed.path())[0];
    let mut frame = vec![0u8; 100];
    frame[..4].copy_from_slice(&300u32.to_le_bytes());
    frame[8..16].copy_from_slice(&5u64.to_le_bytes());
    frame[20..].fill(0xAB);
    let mut b = std::fs::read(seg).unwrap();
    let at = frame_offset(4, 300) as usize;
    b[at..at + 100].copy_from_slice(&frame);
    std::fs::write(seg, &b).unwrap();

    let (spool, report, _) = open(&cfg);
    assert_eq!(report.records, 4);
    assert_eq!(report.torn_tail_bytes, 100);
    assert_eq!(report.unused_tail_bytes, b.len() as u64 - at as u64 - 100);
    assert_eq!(report.corrupt_records_skipped, 0);
    let records = close_and_drain(&spool, spool.reader()).await;
    assert_eq!(seqs(&records), vec![1, 2, 3, 4]);
}
