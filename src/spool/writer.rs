//! The group-commit writer thread: the only code that writes segments, creates them, persists
//! the confirmed position and deletes segments.
//!
//! # Group commit
//!
//! A dedicated writer thread (blocking file I/O, no async runtime) owns the active segment.
//! `append` checks the quota, reserves space and queues the payload with a oneshot for the reply
//! (which hands the payload back, so the task that allocated it frees it). The writer blocks for
//! the first request, drains whatever else is queued (up to `max_batch_bytes`), assigns consecutive
//! seqs, encodes all frames into one buffer, and issues one positional write and one `fdatasync`;
//! then it publishes the new commit point and replies to every waiter. Requests arriving during
//! that fsync form the next batch, so the fsync rate stays bounded however many requests are
//! concurrent.
//!
//! Rotation: when a frame would push the active segment past `segment_bytes` and the segment
//! already holds records, the frames encoded so far are written and fsync'd to the old segment,
//! then a new segment is created (header written to `NAME.seg.tmp`, fsync'd, renamed to `NAME.seg`,
//! directory fsync'd) and the batch continues there. So a batch that straddles a rotation costs one
//! fsync per segment, and only the newest segment can ever end in a torn write. A record larger
//! than `segment_bytes` gets a segment of its own.
//!
//! # Preallocation
//!
//! A group commit whose frames grow the file makes its `fdatasync` write more than the data: the
//! new file size in the inode, and the blocks the filesystem just allocated (on ext4 without a
//! journal that is two more synchronous device writes; with one, a journal commit). So when a run
//! of frames reaches past the end of the file, the writer also writes
//! `SpoolConfig::preallocate_bytes` of zeros after it (never past `segment_bytes`), covered by the
//! same `fdatasync`; the commits after it overwrite blocks that exist, with the size unchanged, and
//! their `fdatasync` writes only the data. `benches/fsync_prealloc.py` measures the difference on a
//! given disk. Zeros, not `fallocate`: writing into an unwritten extent still changes metadata at
//! every commit.
//!
//! The spool's module docs ("Preallocation") say what the zeros mean to readers, recovery and the
//! quota.
//!
//! # The free-space estimate
//!
//! `spool.min_free_bytes` is judged against an estimate of the free space, which is cheap: the
//! writer thread samples statvfs (`f_bavail * f_frsize`) at open, at most once a second
//! (`FREE_SPACE_SAMPLE_EVERY`) between batches, and right after deleting or evicting segments;
//! between samples it subtracts every byte it writes, so the spool cannot eat into the margin by
//! itself, and space used or freed by other processes is seen within about a second. No syscall on
//! the append path. A failing statvfs is logged and counted (`spool_errors{op="statvfs"}`) and
//! disables the guard until a sample succeeds; it does not refuse appends, since ENOSPC still fails
//! the spool closed.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::format::{
    encode_confirmed, encode_frame, encode_segment_header, frame_len, segment_file_name,
    SEGMENT_HEADER_LEN,
};
use super::fs::{self, DirLock, SpoolFile};
use super::state::{lock, SegmentMeta, Shared};
use super::{Error, CONFIRMED_FILE, CONFIRMED_TMP_FILE};

mod retention;

/// One append waiting for its group commit.
pub(crate) struct Request {
    pub payload: Bytes,
    /// Quota bytes reserved by `append` (released when the batch is written or fails).
    pub reserved: u64,
    pub reply: oneshot::Sender<Reply>,
    /// Run on this thread once the record's fsync returned, before `reply` is sent; dropped
    /// unrun if the record is not stored (see [`super::Spool::append_then`]).
    pub on_durable: Option<super::OnDurable>,
}

/// The outcome of an append, and its payload back: the payload is freed by the task that
/// allocated it, not by this thread. (glibc's malloc frees a block into the arena that
/// allocated it, under that arena's lock: frees from the writer would contend with the runtime's
/// workers.)
pub(crate) type Reply = (Result<u64, Error>, Bytes);

/// The segment new frames are appended to.
#[derive(Debug)]
pub(crate) struct ActiveSegment {
    pub base: u64,
    pub file: SpoolFile,
    /// Bytes in the file that are written and fsync'd: the end of the last frame.
    pub len: u64,
    /// File length: `len` plus the zeros preallocated after it (`spool.preallocate_bytes`),
    /// which the next frames overwrite. Cut back to `len` when the segment is sealed or the
    /// spool closes.
    pub alloc: u64,
    /// Seq the next frame in this segment must carry to keep its seqs consecutive.
    pub next_seq: u64,
}

/// Confirm-persist period when the configured one is zero (a zero `recv_timeout` would spin).
const MIN_CONFIRM_INTERVAL: Duration = Duration::from_millis(1);

/// How often, on the spool's monotonic clock, the writer looks for retained segments whose
/// retention ran out (when `retain_confirmed` is set): they expire with time alone.
const EXPIRY_CHECK_EVERY_MS: u64 = 1000;

/// How often the writer asks the filesystem for its free space (when `min_free_bytes` is set).
/// Between samples the spool subtracts its own writes from the last sample, so it cannot eat
/// into the margin by itself; what other processes write is noticed within this period.
const FREE_SPACE_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The free space on the filesystem holding the spool, or `u64::MAX` if `min_free_bytes` is 0
/// or statvfs failed. A failed sample is logged and counted (`spool_errors{op="statvfs"}`) but
/// does not refuse appends: the guard is a margin in front of ENOSPC, and ENOSPC itself still
/// fails the spool closed.
pub(crate) fn sample_free_space(
    cfg: &super::SpoolConfig,
    metrics: &crate::metrics::Metrics,
    sfs: &dyn fs::SpoolFs,
) -> u64 {
    if cfg.min_free_bytes == 0 {
        return u64::MAX;
    }
    match sfs.free_bytes(&cfg.dir) {
        Ok(free) => free,
        Err(e) => {
            metrics.spool_errors.with_label_values(&["statvfs"]).inc();
            tracing::error!(error = %e, dir = %cfg.dir.display(), "statvfs on the spool directory failed; min_free_bytes not enforced until it works");
            u64::MAX
        }
    }
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    rx: Receiver<Request>,
    dir: PathBuf,
    active: Option<ActiveSegment>,
    next_seq: u64,
    /// Confirmed position last made durable in the `confirmed` file.
    persisted: u64,
    last_persist: Instant,
    /// When free space was last sampled (`Shared::quota.fs_free`).
    last_free_sample: Instant,
    /// When expiry was last looked for, on the spool's monotonic clock.
    last_expiry_check: u64,
    /// Segments may be deletable without the confirmed position having moved: a rotation just
    /// sealed a fully confirmed segment, or the writer just started.
    deletions_due: bool,
    /// Reused encode buffer.
    buf: Vec<u8>,
    /// The directory lock lives as long as the writer, so it is released when `close` returns
    /// even if readers still hold the shared state.
    _lock: DirLock,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        rx: Receiver<Request>,
        lock: DirLock,
        active: Option<ActiveSegment>,
        next_seq: u64,
        persisted: u64,
    ) -> Writer {
        let dir = shared.cfg.dir.clone();
        let last_expiry_check = shared.clock.mono_ms();
        let mut writer = Writer {
            shared,
            rx,
            dir,
            active,
            next_seq,
            persisted,
            last_persist: Instant::now(),
            last_free_sample: Instant::now(),
            last_expiry_check,
            deletions_due: true,
            buf: Vec::new(),
            _lock: lock,
        };
        // Before `open` returns, so no append is judged without them: segments recovery found
        // fully confirmed count as retained, and their retention clock starts now.
        writer.refresh_retained();
        writer
    }

    /// The thread body. Returns once every sender is gone (close, or the last handle dropped)
    /// and the queue is drained; the result is what `close` reports.
    pub(crate) fn run(mut self) -> Result<(), Error> {
        let _guard = PanicGuard(self.shared.clone());
        let interval = self.shared.cfg.confirm_interval.max(MIN_CONFIRM_INTERVAL);
        let max_batch = self.shared.cfg.max_batch_bytes as u64;
        // A request drained from the queue that did not fit the previous batch.
        let mut carry: Option<Request> = None;
        loop {
            let first = match carry.take() {
                Some(r) => r,
                None => match self.rx.recv_timeout(interval) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => {
                        self.maintain(interval);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            // Group commit: everything that queued up while the previous fsync ran goes into
            // this one write and one fsync, up to max_batch_bytes (the first request always goes,
            // however large).
            let mut bytes = frame_len(first.payload.len());
            let mut batch = vec![first];
            while bytes < max_batch {
                match self.rx.try_recv() {
                    Ok(r) if bytes + frame_len(r.payload.len()) > max_batch => {
                        carry = Some(r);
                        break;
                    }
                    Ok(r) => {
                        bytes += frame_len(r.payload.len());
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch);
            self.maintain(interval);
        }
        self.shutdown()
    }

    /// Writes one batch and answers its waiters.
    fn commit(&mut self, batch: Vec<Request>) {
        let reserved: u64 = batch.iter().map(|r| r.reserved).sum();
        let result = match self.shared.poison_reason() {
            Some(reason) => Err(reason.to_owned()),
            None => {
                self.make_room(reserved);
                self.write_batch(&batch)
            }
        };
        lock(&self.shared.quota).release(reserved);
        match result {
            Ok(first_seq) => {
                let a = self
                    .active
                    .as_ref()
                    .expect("a written batch has an active segment");
                let last_seq = first_seq + batch.len() as u64 - 1;
                self.shared.commit.send_modify(|c| {
                    c.seq = last_seq;
                    c.segment = a.base;
                    c.end = a.len;
                });
                self.shared
                    .metrics
                    .spool_batch_records
                    .observe(batch.len() as f64);
                for (i, req) in batch.into_iter().enumerate() {
                    let seq = first_seq + i as u64;
                    if let Some(on_durable) = req.on_durable {
                        on_durable(seq);
                    }
                    // A dropped receiver (the append future was cancelled) is fine: the record is
                    // durable and will be forwarded anyway.
                    let _ = req.reply.send((Ok(seq), req.payload));
                }
            }
            Err(reason) => {
                for req in batch {
                    // Released before the answer, so a retry never finds the id still pending.
                    drop(req.on_durable);
                    let _ = req
                        .reply
                        .send((Err(Error::Failed(reason.clone())), req.payload));
                }
            }
        }
    }

    /// Encodes, writes and fsyncs `batch`, rotating segments as needed. Returns the first seq.
    /// Any error poisons the spool and is returned as the poison reason. Its waiters are told
    /// the append failed, yet some of its frames may reach the disk anyway; after a restart
    /// those are replayed (the client got an error and may resend: a duplicate, never a loss)
    /// and any cut off as a torn tail have their seqs skipped, so no seq is reused.
    fn write_batch(&mut self, batch: &[Request]) -> Result<u64, String> {
        let at_ms = self.shared.clock.wall_ms();
        let first_seq = self.next_seq;
        let end_seq = first_seq + batch.len() as u64;
        let mut run = std::mem::take(&mut self.buf);
        run.clear();
        // Frames encoded in `run` carry seqs run_first..seq and go to the active segment.
        let mut run_first = first_seq;
        let mut result = Ok(());
        for (seq, req) in (first_seq..).zip(batch) {
            let flen = frame_len(req.payload.len());
            if self.must_rotate(seq, seq - run_first, run.len() as u64, flen) {
                // The frames already encoded for the current segment are written and fsync'd
                // before the next segment exists: only the newest segment can ever end in a torn
                // write, which is what lets recovery tell a torn tail from corruption.
                result = self
                    .write_run(&run, run_first, seq - run_first, at_ms)
                    .and_then(|()| self.rotate(seq));
                if result.is_err() {
                    break;
                }
                run.clear();
                run_first = seq;
            }
            encode_frame(&mut run, seq, at_ms, &req.payload);
        }
        if result.is_ok() {
            result = self.write_run(&run, run_first, end_seq - run_first, at_ms);
        }
        run.clear();
        self.buf = run;
        result?;
        self.next_seq = end_seq;
        self.shared.next_seq.store(end_seq, Ordering::Release);
        Ok(first_seq)
    }

    /// Whether the frame for `seq` (`flen` bytes, following `pending_frames` frames of
    /// `pending_bytes` encoded for the active segment but not yet written) needs a new segment.
    fn must_rotate(&self, seq: u64, pending_frames: u64, pending_bytes: u64, flen: u64) -> bool {
        // No active segment: none yet, the newest scanned unclean, or it is of an older format
        // version, which is never appended to (recovery hands it over only if it is of
        // `format::FORMAT_VERSION`).
        let Some(a) = &self.active else { return true };
        // Seqs within a segment must stay consecutive from its base (resync relies on it); they
        // would not after a recovery that had to skip numbers.
        if a.next_seq + pending_frames != seq {
            return true;
        }
        let holds_records = a.len > SEGMENT_HEADER_LEN || pending_frames > 0;
        // A record larger than a whole segment still gets written: into a fresh segment of its own.
        holds_records && a.len + pending_bytes + flen > self.shared.cfg.segment_bytes
    }

    /// Writes and fdatasyncs `frames` frames (`run`, seqs from `first_seq`) at the end of the
    /// active segment.
    fn write_run(
        &mut self,
        run: &[u8],
        first_seq: u64,
        frames: u64,
        at_ms: u64,
    ) -> Result<(), String> {
        if run.is_empty() {
            return Ok(());
        }
        let a = self.active.as_mut().expect("rotate precedes the first run");
        let end = a.len + run.len() as u64;
        // Extend only once frames reach past the zeros, so that most commits overwrite blocks
        // that exist already: their fdatasync then has no size or allocation to write.
        let zeros = if end > a.alloc {
            preallocation(&self.shared, end)
        } else {
            0
        };
        let written = a.file.write_all_at(run, a.len).and_then(|()| {
            if zeros > 0 {
                fs::write_zeros(a.file.as_ref(), end, zeros)
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            let reason = format!("write to segment {} failed: {e}", a.base);
            self.shared.poison("write", reason.clone());
            return Err(reason);
        }
        let started = Instant::now();
        if let Err(e) = a.file.sync_data() {
            // Never retried: after a failed fsync the kernel may have dropped the dirty pages or
            // marked them clean, so a second fsync can succeed without the data being on disk.
            // The only honest answer is to stop and let recovery rescan what really is there.
            let reason = format!("fsync of segment {} failed: {e}", a.base);
            self.shared.poison("fsync", reason.clone());
            return Err(reason);
        }
        self.shared
            .metrics
            .spool_fsync
            .observe(started.elapsed().as_secs_f64());
        let offset = a.len;
        let grown = (end + zeros).saturating_sub(a.alloc);
        a.len = end;
        a.alloc = a.alloc.max(end + zeros);
        a.next_seq = first_seq + frames;
        let preallocated = a.alloc - a.len;
        let mut table = lock(&self.shared.segments);
        let meta = table
            .segs
            .back_mut()
            .expect("the active segment is in the table");
        debug_assert_eq!(meta.base, a.base, "the active segment is the newest");
        meta.len = a.len;
        // One checkpoint candidate per run (its first frame) keeps the index sparse.
        meta.note_frame(first_seq, offset, at_ms);
        meta.last_seq = Some(first_seq + frames - 1);
        // Holds an unconfirmed record now: its retention clock, if it had one, is void. (The
        // newest segment never counts in `Quota::retained`, so that needs no change.)
        meta.confirmed_at_ms = None;
        drop(table);
        let mut quota = lock(&self.shared.quota);
        quota.wrote(grown);
        quota.preallocated = preallocated;
        Ok(())
    }

    /// Cuts the active segment's preallocated zeros and makes its length durable, so that a
    /// sealed segment ends at its last frame (rule 3: only the newest segment may end in
    /// anything else). Any error poisons the spool and is returned as the reason.
    fn trim_active(&mut self, op: &'static str) -> Result<(), String> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        if a.alloc == a.len {
            return Ok(());
        }
        if let Err(e) = fs::truncate(a.file.as_ref(), a.len) {
            let reason = format!(
                "cutting the preallocated end of segment {} failed: {e}",
                a.base
            );
            self.shared.poison(op, reason.clone());
            return Err(reason);
        }
        let cut = a.alloc - a.len;
        a.alloc = a.len;
        let mut quota = lock(&self.shared.quota);
        quota.freed(cut);
        quota.fs_free = quota.fs_free.saturating_add(cut);
        quota.preallocated = 0;
        Ok(())
    }

    /// Starts a new segment whose first record will be `base`. The header is fsync'd and the
    /// file published by rename plus a directory fsync before any record goes in: a record in
    /// a file whose directory entry is not durable could vanish with it on power loss.
    fn rotate(&mut self, base: u64) -> Result<(), String> {
        self.trim_active("rotate")?;
        let name = segment_file_name(base);
        let file = match fs::publish_file(
            self.shared.fs.as_ref(),
            &self.dir,
            &format!("{name}.tmp"),
            &name,
            &encode_segment_header(base),
        ) {
            Ok(f) => f,
            Err(e) => {
                let reason = format!("creating segment {name} failed: {e}");
                self.shared.poison("rotate", reason.clone());
                return Err(reason);
            }
        };
        if let Some(old) = &self.active {
            tracing::debug!(sealed = old.base, new = base, "rotated spool segment");
            self.deletions_due = true;
        }
        self.active = Some(ActiveSegment {
            base,
            file,
            len: SEGMENT_HEADER_LEN,
            alloc: SEGMENT_HEADER_LEN,
            next_seq: base,
        });
        let mut table = lock(&self.shared.segments);
        table
            .segs
            .push_back(SegmentMeta::new(base, self.dir.join(&name)));
        let (_, retained) = table.stamp_retained(self.persisted, self.shared.clock.mono_ms());
        let mut quota = lock(&self.shared.quota);
        quota.wrote(SEGMENT_HEADER_LEN);
        quota.retained = retained;
        Ok(())
    }

    /// Periodic work between batches: persist the confirmed position once per interval while it
    /// moves, and delete what it (or a rotation) made deletable.
    fn maintain(&mut self, interval: Duration) {
        if self.shared.poison_reason().is_some() {
            return;
        }
        if self.last_free_sample.elapsed() >= FREE_SPACE_SAMPLE_EVERY {
            self.resample_free_space();
        }
        let now = self.shared.clock.mono_ms();
        if !self.shared.cfg.retain_confirmed.is_zero()
            && now.saturating_sub(self.last_expiry_check) >= EXPIRY_CHECK_EVERY_MS
        {
            self.last_expiry_check = now;
            self.deletions_due = true;
        }
        let confirmed = self.shared.confirmed();
        if confirmed > self.persisted && self.last_persist.elapsed() >= interval {
            self.last_persist = Instant::now();
            if let Err(e) = self.persist(confirmed) {
                // Not fatal, unlike a segment fsync: the confirmed file is rewritten from scratch
                // each time (fresh tmp file, fresh fsync, then rename), so a retry does not lean
                // on pages a failed fsync may have lost; until one succeeds the old position
                // stays on disk, which only means replaying more after a crash (at-least-once).
                self.shared
                    .metrics
                    .spool_errors
                    .with_label_values(&["confirm"])
                    .inc();
                tracing::error!(error = %e, confirmed, "persisting the confirmed position failed; will retry");
            }
        } else if self.deletions_due {
            self.delete_confirmed_segments();
        }
    }

    /// Makes `confirmed` durable, then deletes the segments it fully covers.
    fn persist(&mut self, confirmed: u64) -> io::Result<()> {
        fs::publish_file(
            self.shared.fs.as_ref(),
            &self.dir,
            CONFIRMED_TMP_FILE,
            CONFIRMED_FILE,
            &encode_confirmed(confirmed),
        )?;
        self.persisted = confirmed;
        self.refresh_retained();
        self.delete_confirmed_segments();
        Ok(())
    }

    fn resample_free_space(&mut self) {
        self.last_free_sample = Instant::now();
        let free = sample_free_space(
            &self.shared.cfg,
            &self.shared.metrics,
            self.shared.fs.as_ref(),
        );
        lock(&self.shared.quota).fs_free = free;
    }

    /// After the last request: persist the final confirmed position, mark the spool closed.
    fn shutdown(mut self) -> Result<(), Error> {
        // A clean close leaves the newest segment ending at its last frame, so the next open
        // continues it without skipping seqs (a crash leaves the zeros: recovery cuts them).
        // A failure poisons the spool, so `close` reports it and the confirmed position is not
        // written after it.
        if self.shared.poison_reason().is_none() {
            let _ = self.trim_active("write");
        }
        let result = match self.shared.poison_reason() {
            Some(reason) => Err(Error::Failed(reason.to_owned())),
            None => {
                let confirmed = self.shared.confirmed();
                if confirmed > self.persisted {
                    self.persist(confirmed).map_err(|e| {
                        self.shared.metrics.spool_errors.with_label_values(&["confirm"]).inc();
                        tracing::error!(error = %e, confirmed, "persisting the final confirmed position failed");
                        Error::Io(e)
                    })
                } else {
                    Ok(())
                }
            }
        };
        self.shared.commit.send_modify(|c| c.closed = true);
        result
    }
}

/// How many zeros to write after a run that ends at `end`: `spool.preallocate_bytes`, but never
/// past `segment_bytes` and only from room nothing else may claim (what admitted appends
/// reserved, and `min_free_bytes`, are left alone), so preallocation never makes an append fail
/// or evicts a retained segment.
fn preallocation(shared: &Shared, end: u64) -> u64 {
    let cfg = &shared.cfg;
    let want = cfg
        .preallocate_bytes
        .min(cfg.segment_bytes.saturating_sub(end));
    if want == 0 {
        return 0;
    }
    let q = lock(&shared.quota);
    let quota_room = cfg.max_bytes.saturating_sub(q.disk + q.queued);
    let fs_room = match cfg.min_free_bytes {
        0 => u64::MAX,
        min_free => q.fs_free.saturating_sub(min_free + q.queued),
    };
    want.min(quota_room).min(fs_room)
}

/// Poisons the spool and wakes readers if the writer thread panics, so nothing waits forever
/// on a thread that is gone.
struct PanicGuard(Arc<Shared>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .poison("write", "spool writer thread panicked".to_owned());
            self.0.commit.send_modify(|c| c.closed = true);
        }
    }
}
