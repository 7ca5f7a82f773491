//! State shared by the handle, the writer thread and readers.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::watch;

use super::format::{FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::fs::SpoolFs;
use super::SpoolConfig;
use crate::clock::Clock;
use crate::metrics::Metrics;

/// Locks ignoring poisoning: a panic elsewhere has already poisoned the spool itself (see the
/// writer's panic guard), and what these mutexes protect stays readable for stats and readers.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How far the durable, readable part of the spool reaches. Published by the writer after every
/// group commit; readers never read past it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CommitPoint {
    /// Highest seq whose frame is fsync'd (0 if none).
    pub seq: u64,
    /// Base seq of the segment holding that frame (0 if there is no segment).
    pub segment: u64,
    /// Byte offset just past the last committed frame in `segment`.
    pub end: u64,
    /// The writer has stopped: nothing will be committed any more.
    pub closed: bool,
}

/// Disk quota bookkeeping. One mutex, so that an append's check-and-reserve and the writer's
/// move of a batch from `queued` to `disk` are each atomic (no transient double or under count).
#[derive(Debug, Default)]
pub(crate) struct Quota {
    /// Bytes of all segment files in the table, the newest one's preallocated zeros included.
    pub disk: u64,
    /// Reservations of appends accepted but not yet written.
    pub queued: u64,
    /// Estimated bytes free on the filesystem holding the spool: the last statvfs sample minus
    /// what the writer wrote since (`u64::MAX` when `min_free_bytes` is 0 or sampling failed).
    pub fs_free: u64,
    /// Bytes of the sealed segment files that hold only records covered by the persisted
    /// confirmed position: kept for `retain_confirmed`, but evicted by the writer when an append
    /// needs the room, so an append counts them as free (rule 6 of the module docs). Maintained
    /// by the writer together with `disk`, under this same lock.
    pub retained: u64,
    /// Zero bytes preallocated after the newest segment's last frame (`spool.preallocate_bytes`):
    /// counted in `disk`, but the next records are written into them (or a rotation cuts them
    /// off), so an append counts them as free as well. Maintained by the writer.
    pub preallocated: u64,
}

impl Quota {
    /// Bytes that the writer cannot reuse without deleting a file: `disk` less what eviction
    /// frees (`retained`) and the zeros the next frames overwrite (`preallocated`).
    pub(crate) fn used(&self) -> u64 {
        self.disk
            .saturating_sub(self.retained)
            .saturating_sub(self.preallocated)
    }

    /// Releases reserved bytes. Saturating so that an accounting bug degrades to a slightly
    /// lenient quota rather than a wrapped counter that refuses every append forever.
    pub(crate) fn release(&mut self, reserved: u64) {
        debug_assert!(
            reserved <= self.queued,
            "releasing {reserved} of {} queued",
            self.queued
        );
        self.queued = self.queued.saturating_sub(reserved);
    }

    /// Accounts for deleted segment bytes (saturating, as above).
    pub(crate) fn freed(&mut self, bytes: u64) {
        debug_assert!(
            bytes <= self.disk,
            "freeing {bytes} of {} on disk",
            self.disk
        );
        self.disk = self.disk.saturating_sub(bytes);
    }

    /// Accounts for bytes the writer added to segment files.
    pub(crate) fn wrote(&mut self, bytes: u64) {
        self.disk += bytes;
        self.fs_free = self.fs_free.saturating_sub(bytes);
    }
}

/// A sparse index entry: the frame of `seq` starts at `offset` and was appended at `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub seq: u64,
    pub offset: u64,
    pub at_ms: u64,
}

/// At most one checkpoint per this many milliseconds per segment, enough for the 1-second
/// accuracy of `oldest_unconfirmed_age` at a memory cost that does not grow with throughput.
const CHECKPOINT_EVERY_MS: u64 = 1000;

/// What the spool knows about one segment file.
#[derive(Debug, Clone)]
pub(crate) struct SegmentMeta {
    pub base: u64,
    pub path: PathBuf,
    /// File length: header plus complete frames.
    pub len: u64,
    /// Seq of the last valid frame, `None` while the segment holds none.
    pub last_seq: Option<u64>,
    /// Sparse (seq, offset, time) index, ascending.
    pub checkpoints: Vec<Checkpoint>,
    /// Start offsets of corrupt regions recovery already reported, so a reader skipping them
    /// again does not count them twice.
    pub known_corrupt: Vec<u64>,
    /// When the writer first saw every record of this segment covered by the persisted
    /// confirmed position, on the spool's monotonic clock ([`Clock::mono_ms`]): the retention
    /// clock. In memory
    /// only; recovery leaves it `None`, so the writer stamps a segment found fully confirmed at
    /// open with the open time (see "Retention" in the module docs).
    pub confirmed_at_ms: Option<u64>,
}

impl SegmentMeta {
    pub(crate) fn new(base: u64, path: PathBuf) -> SegmentMeta {
        SegmentMeta {
            base,
            path,
            len: SEGMENT_HEADER_LEN,
            last_seq: None,
            checkpoints: Vec::new(),
            known_corrupt: Vec::new(),
            confirmed_at_ms: None,
        }
    }

    /// Records a frame (in seq order); adds a checkpoint if the last one is a second old, or the
    /// clock went backwards.
    pub(crate) fn note_frame(&mut self, seq: u64, offset: u64, at_ms: u64) {
        self.last_seq = Some(seq);
        let due = match self.checkpoints.last() {
            None => true,
            Some(cp) => at_ms >= cp.at_ms.saturating_add(CHECKPOINT_EVERY_MS) || at_ms < cp.at_ms,
        };
        if due {
            self.checkpoints.push(Checkpoint { seq, offset, at_ms });
        }
    }

    /// Where to start scanning to find `seq`: the last checkpoint at or before it (as the cursor's
    /// `(offset, last_good)`), or the first frame of the segment.
    pub(crate) fn scan_start_for(&self, seq: u64) -> (u64, u64) {
        let i = self.checkpoints.partition_point(|cp| cp.seq <= seq);
        match i.checked_sub(1).map(|i| self.checkpoints[i]) {
            Some(cp) => (cp.offset, cp.seq - 1),
            None => (SEGMENT_HEADER_LEN, self.base.saturating_sub(1)),
        }
    }

    /// Append time of the first record with seq >= `seq`, rounded down to a checkpoint.
    fn time_of(&self, seq: u64) -> Option<u64> {
        let i = self.checkpoints.partition_point(|cp| cp.seq <= seq);
        self.checkpoints.get(i.saturating_sub(1)).map(|cp| cp.at_ms)
    }
}

/// Segments on disk, ascending by base seq. The last one is the newest (the writer's active
/// segment once it has written to it).
#[derive(Debug, Default)]
pub(crate) struct SegmentTable {
    pub segs: VecDeque<SegmentMeta>,
}

impl SegmentTable {
    /// The segment that would hold `seq`: the last one whose base is <= seq, else the first.
    pub(crate) fn index_for_seq(&self, seq: u64) -> Option<usize> {
        if self.segs.is_empty() {
            return None;
        }
        Some(
            self.segs
                .partition_point(|s| s.base <= seq)
                .saturating_sub(1),
        )
    }

    /// The first segment with a base above `base`.
    pub(crate) fn index_after(&self, base: u64) -> Option<usize> {
        let i = self.segs.partition_point(|s| s.base <= base);
        (i < self.segs.len()).then_some(i)
    }

    /// Whether every record of the segment at `i` is at or below `position`: for all but the
    /// newest, its successor's base is <= position + 1 (a segment's records lie below the next
    /// base); for the newest, its last record is <= position (an empty one is not).
    pub(crate) fn fully_confirmed(&self, i: usize, position: u64) -> bool {
        match self.segs.get(i + 1) {
            Some(next) => next.base <= position.saturating_add(1),
            None => self.segs[i].last_seq.is_some_and(|last| last <= position),
        }
    }

    /// The fully confirmed prefix under the persisted position `persisted`: stamps each of its
    /// segments not stamped yet with `now_ms` (the retention clock starts), clears the stamp of
    /// the first segment past it (the newest segment can gain an unconfirmed record after it was
    /// stamped), and returns how many segments the prefix holds and the bytes of those that are
    /// sealed: what eviction may take to make room (`Quota::retained`). The newest segment is
    /// left out even when fully confirmed: the next append may continue it, after which it is no
    /// longer evictable, so counting it would let appends be admitted on room that then is not
    /// there. It goes by the writer's quota-pressure rule instead (module docs, "Retention").
    pub(crate) fn stamp_retained(&mut self, persisted: u64, now_ms: u64) -> (usize, u64) {
        let mut n = 0;
        let mut bytes = 0;
        while n < self.segs.len() && self.fully_confirmed(n, persisted) {
            let sealed = n + 1 < self.segs.len();
            let seg = &mut self.segs[n];
            seg.confirmed_at_ms.get_or_insert(now_ms);
            if sealed {
                bytes += seg.len;
            }
            n += 1;
        }
        if let Some(seg) = self.segs.get_mut(n) {
            seg.confirmed_at_ms = None;
        }
        (n, bytes)
    }

    /// How many leading segments' retention has run out at `now_ms`: fully confirmed (as
    /// stamped by [`Self::stamp_retained`]) at least `retain_ms` ago, never the newest segment
    /// (appends continue it; it goes only by eviction).
    pub(crate) fn expired(&self, retain_ms: u64, now_ms: u64) -> usize {
        self.segs
            .iter()
            .take(self.segs.len().saturating_sub(1))
            .take_while(|s| {
                s.confirmed_at_ms
                    .is_some_and(|at| now_ms.saturating_sub(at) >= retain_ms)
            })
            .count()
    }

    /// Confirmed records still on disk (counting seq numbers, like [`Self::unconfirmed`]) and
    /// the append time of the oldest one.
    pub(crate) fn retained(&self, confirmed: u64) -> (u64, Option<u64>) {
        let mut records = 0;
        for (i, seg) in self.segs.iter().enumerate() {
            if seg.base > confirmed {
                break;
            }
            let last = match (self.segs.get(i + 1), seg.last_seq) {
                (Some(next), _) => next.base - 1,
                (None, Some(last)) => last,
                (None, None) => continue,
            };
            records += last.min(confirmed) + 1 - seg.base;
        }
        let oldest = self
            .segs
            .front()
            .filter(|s| s.base <= confirmed)
            .and_then(|s| s.checkpoints.first())
            .map(|cp| cp.at_ms);
        (records, oldest)
    }

    /// Unconfirmed records (counting seq numbers, so records lost to corruption count until they
    /// are confirmed past) and the append time of the oldest one. Walks back only over segments
    /// holding unconfirmed records.
    pub(crate) fn unconfirmed(&self, confirmed: u64) -> (u64, Option<u64>) {
        let mut records = 0;
        let mut oldest = None;
        for seg in self.segs.iter().rev() {
            let Some(last) = seg.last_seq else { continue };
            if last <= confirmed {
                break;
            }
            let first = confirmed.max(seg.base.saturating_sub(1)) + 1;
            records += last + 1 - first;
            oldest = seg.time_of(first).or(oldest);
        }
        (records, oldest)
    }
}

/// Everything the writer, the handle and readers share.
pub(crate) struct Shared {
    pub cfg: SpoolConfig,
    /// The filesystem: [`super::RealFs`] in production.
    pub fs: Arc<dyn SpoolFs>,
    pub metrics: Arc<Metrics>,
    /// Append times (wall) and retention ages (monotonic): [`Clock::system`] in production.
    pub clock: Clock,
    pub segments: Mutex<SegmentTable>,
    pub quota: Mutex<Quota>,
    /// Latest position passed to `confirm` (in memory; the writer persists it).
    pub confirmed: AtomicU64,
    /// Seq the writer will give the next record.
    pub next_seq: AtomicU64,
    pub commit: watch::Sender<CommitPoint>,
    /// Set once, on the first write/fsync failure: the reason every later append fails with.
    poison: OnceLock<String>,
}

impl Shared {
    #[allow(clippy::too_many_arguments)] // one call site, every value comes from recovery
    pub(crate) fn new(
        cfg: SpoolConfig,
        fs: Arc<dyn SpoolFs>,
        metrics: Arc<Metrics>,
        clock: Clock,
        table: SegmentTable,
        disk: u64,
        confirmed: u64,
        next_seq: u64,
        commit: CommitPoint,
        fs_free: u64,
    ) -> Shared {
        Shared {
            cfg,
            fs,
            metrics,
            clock,
            segments: Mutex::new(table),
            quota: Mutex::new(Quota {
                disk,
                queued: 0,
                fs_free,
                retained: 0,
                preallocated: 0,
            }),
            confirmed: AtomicU64::new(confirmed),
            next_seq: AtomicU64::new(next_seq),
            commit: watch::channel(commit).0,
            poison: OnceLock::new(),
        }
    }

    /// Largest frame an append may produce (under today's append limit), plus a segment header:
    /// what one append reserves.
    pub(crate) fn max_reservation(&self) -> u64 {
        SEGMENT_HEADER_LEN + FRAME_HEADER_LEN + u64::from(self.cfg.max_append_bytes)
    }

    /// Why an append reserving `reserved` bytes must be refused now, as its `spool_rejected`
    /// reason: `full` for the quota, `disk_low` for `min_free_bytes`. The caller holds `quota`.
    pub(crate) fn refusal(&self, quota: &Quota, reserved: u64) -> Option<&'static str> {
        // Retained bytes count as free: the writer evicts them before it writes (rule 6), so
        // retention never causes a refusal. So do preallocated zeros, which the next frames
        // overwrite: preallocation never causes one either.
        let wanted = quota.used() + quota.queued + reserved;
        if wanted > self.cfg.max_bytes {
            return Some("full");
        }
        let min_free = self.cfg.min_free_bytes;
        let free = quota
            .fs_free
            .saturating_add(quota.retained)
            .saturating_add(quota.preallocated);
        if min_free > 0 && free.saturating_sub(quota.queued + reserved) < min_free {
            return Some("disk_low");
        }
        None
    }

    pub(crate) fn poison_reason(&self) -> Option<&str> {
        self.poison.get().map(String::as_str)
    }

    /// Fails the spool closed. `op` is the `spool_errors` label.
    pub(crate) fn poison(&self, op: &'static str, reason: String) {
        self.metrics.spool_errors.with_label_values(&[op]).inc();
        tracing::error!(op, error = %reason, "spool failed; refusing all further appends");
        let _ = self.poison.set(reason);
    }

    pub(crate) fn confirmed(&self) -> u64 {
        self.confirmed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment holding seqs `base..base + n`, one frame per 100 ms, frames 50 bytes apart.
    fn seg(base: u64, n: u64, t0: u64) -> SegmentMeta {
        let mut s = SegmentMeta::new(base, PathBuf::from(format!("{base}")));
        for i in 0..n {
            s.note_frame(base + i, SEGMENT_HEADER_LEN + 50 * i, t0 + 100 * i);
        }
        s
    }

    #[test]
    fn checkpoints_are_sparse_and_find_scan_starts() {
        let s = seg(10, 30, 5_000); // 3 s of appends
        assert_eq!(s.last_seq, Some(39));
        let cps: Vec<u64> = s.checkpoints.iter().map(|c| c.seq).collect();
        assert_eq!(cps, vec![10, 20, 30], "one per second");
        assert_eq!(s.scan_start_for(10), (SEGMENT_HEADER_LEN, 9));
        assert_eq!(s.scan_start_for(25), (SEGMENT_HEADER_LEN + 500, 19));
        assert_eq!(
            s.scan_start_for(5),
            (SEGMENT_HEADER_LEN, 9),
            "before the first: header"
        );
    }

    #[test]
    fn unconfirmed_counts_and_ages_from_the_confirmed_position() {
        let table = SegmentTable {
            segs: [seg(1, 30, 0), seg(31, 30, 10_000)].into_iter().collect(),
        };
        assert_eq!(table.unconfirmed(0), (60, Some(0)));
        assert_eq!(
            table.unconfirmed(14),
            (46, Some(1_000)),
            "seq 15 was appended at 1.4 s"
        );
        assert_eq!(table.unconfirmed(30), (30, Some(10_000)));
        assert_eq!(table.unconfirmed(59), (1, Some(12_000)));
        assert_eq!(table.unconfirmed(60), (0, None));
        assert_eq!(table.index_for_seq(30), Some(0));
        assert_eq!(table.index_for_seq(31), Some(1));
        assert_eq!(table.index_after(1), Some(1));
        assert_eq!(table.index_after(31), None);
    }

    fn table(segs: Vec<SegmentMeta>) -> SegmentTable {
        SegmentTable {
            segs: segs.into_iter().collect(),
        }
    }

    #[test]
    fn retention_clock_starts_when_a_segment_is_fully_confirmed() {
        // Seqs 1..=30, 31..=60, 61..=70 (the newest).
        let mut t = table(vec![seg(1, 30, 0), seg(31, 30, 3_000), seg(61, 10, 6_000)]);
        let len = t.segs[0].len;
        assert_eq!(t.stamp_retained(0, 100_000), (0, 0), "nothing confirmed");
        assert_eq!(t.stamp_retained(29, 100_000), (0, 0), "seq 30 is not");
        assert_eq!(t.stamp_retained(30, 100_000), (1, len));
        assert_eq!(t.segs[0].confirmed_at_ms, Some(100_000));
        assert_eq!(
            t.stamp_retained(60, 200_000).0,
            2,
            "a later position keeps the first stamp"
        );
        assert_eq!(t.segs[0].confirmed_at_ms, Some(100_000));
        assert_eq!(t.segs[1].confirmed_at_ms, Some(200_000));
        // The newest counts once its last record is confirmed, and stops counting (its stamp
        // cleared) when an append gives it an unconfirmed record.
        let sealed = t.segs[0].len + t.segs[1].len;
        assert_eq!(
            t.stamp_retained(70, 300_000),
            (3, sealed),
            "the newest is stamped but not counted as evictable"
        );
        assert_eq!(t.segs[2].confirmed_at_ms, Some(300_000));
        t.segs[2].note_frame(71, 9_999, 400_000);
        assert_eq!(t.stamp_retained(70, 400_000).0, 2);
        assert_eq!(t.segs[2].confirmed_at_ms, None);
    }

    #[test]
    fn only_sealed_segments_expire_and_in_order() {
        let mut t = table(vec![seg(1, 30, 0), seg(31, 30, 3_000), seg(61, 10, 6_000)]);
        t.stamp_retained(30, 10_000);
        t.stamp_retained(70, 20_000);
        let five_min = 300_000;
        assert_eq!(t.expired(five_min, 20_000), 0, "inside the window");
        assert_eq!(t.expired(five_min, 10_000 + five_min), 1);
        assert_eq!(
            t.expired(five_min, 20_000 + five_min),
            2,
            "never the newest"
        );
        assert_eq!(t.expired(0, 20_000), 2, "0s: at once");
        // An unconfirmed segment stops the run even if a later one is stamped.
        t.segs[0].confirmed_at_ms = None;
        assert_eq!(t.expired(0, u64::MAX), 0);
    }

    #[test]
    fn retained_counts_confirmed_records_on_disk() {
        let t = table(vec![seg(1, 30, 0), seg(31, 30, 3_000), seg(61, 10, 6_000)]);
        assert_eq!(t.retained(0), (0, None));
        assert_eq!(t.retained(14), (14, Some(0)), "part of the first segment");
        assert_eq!(t.retained(65), (65, Some(0)));
        assert_eq!(t.retained(70), (70, Some(0)));
        let t = table(vec![seg(31, 30, 3_000)]);
        assert_eq!(t.retained(40), (10, Some(3_000)));
    }

    #[test]
    fn retained_bytes_never_cause_a_refusal() {
        let cfg = SpoolConfig {
            dir: PathBuf::from("/nonexistent"),
            segment_bytes: 4096,
            max_bytes: 10_000,
            max_append_bytes: 1_000,
            max_batch_bytes: 1 << 20,
            preallocate_bytes: 1 << 20,
            confirm_interval: std::time::Duration::from_millis(1),
            min_free_bytes: 2_000_000,
            retain_confirmed: std::time::Duration::from_secs(300),
        };
        let shared = Shared::new(
            cfg,
            Arc::new(super::super::RealFs),
            Arc::new(Metrics::new()),
            Clock::system(),
            SegmentTable::default(),
            0,
            0,
            1,
            CommitPoint::default(),
            0,
        );
        let max = shared.max_reservation();
        let mut q = Quota {
            disk: 9_500,
            queued: 0,
            fs_free: 1_000_000,
            retained: 0,
            preallocated: 0,
        };
        assert_eq!(shared.refusal(&q, max), Some("full"));
        q.retained = 9_000;
        assert_eq!(
            shared.refusal(&q, max),
            Some("disk_low"),
            "quota room, but the disk margin is short"
        );
        q.fs_free = 2_000_000 - 9_000 + max;
        assert_eq!(shared.refusal(&q, max), None, "evicting frees both");
        q.retained = 8_000;
        assert_eq!(
            shared.refusal(&q, max),
            Some("disk_low"),
            "unconfirmed bytes are never counted as free"
        );
        q.preallocated = 1_000;
        assert_eq!(
            shared.refusal(&q, max),
            None,
            "preallocated zeros are room the next frames go into"
        );
    }
}
