//! The spool: hookbridge's fsync'd, local write-ahead log.
//!
//! Ingress appends each verified delivery and answers 2xx only when [`Spool::append`] returns a
//! sequence number; the forwarder reads records with a [`Reader`], publishes them, and calls
//! [`Spool::confirm`] as the broker confirms them. The promise to users rests on this module:
//! **nothing acknowledged is ever lost, even on kill -9 or power loss.**
//!
//! # What a successful `append` promises
//!
//! `append` resolves with `Ok(seq)` only after an `fdatasync` covering the record's frame has
//! returned success, and, if the record is the first in a new segment file, after that file's
//! header and its directory entry were fsync'd as well. From then on the record survives a crash
//! of the process or the machine, is returned by a reader after any restart until it is
//! confirmed, and `seq` is never given to another record. Cancelling an `append` future after
//! it was queued does not cancel the write; the record may still be stored and forwarded.
//!
//! # On disk
//!
//! ```text
//! <dir>/LOCK                          flock'd while a process has the spool open
//! <dir>/confirmed                     the persisted confirmed position
//! <dir>/confirmed.tmp                 transient: the next `confirmed`, before its rename
//! <dir>/00000000000000000001.seg      segment files, named by base seq (20 digits)
//! <dir>/00000000000000004711.seg
//! <dir>/00000000000000004711.seg.tmp  transient: a segment being created, before its rename
//! <dir>/damaged/                      files recovery refused to use; the spool never deletes them
//! <dir>/dead-letter/                  owned by `crate::deadletter`; the spool leaves it alone
//! ```
//!
//! All integers are little-endian. The layouts below are persistent format: **do not reorder or
//! change them without bumping the format version** (`format.rs` holds the authoritative
//! definitions and the table of versions).
//!
//! ## Versions
//!
//! New segments are written with segment format version 2 (`FORMAT_VERSION`); versions 1 and 2
//! are read (`OLDEST_READABLE_VERSION` ..= `FORMAT_VERSION`), anything else refuses the spool
//! at open ([`Error::Incompatible`], naming the file). Version 2 has the frames of version 1;
//! it marks segments that may hold payloads a release writing version 1 cannot decode
//! (delivery records V4, with endpoint and trace context). So:
//!
//! * **Upgrade**: a spool of version-1 segments is read and forwarded as it is. The writer never
//!   appends to a segment older than `FORMAT_VERSION` (recovery step 7): the first append after
//!   the upgrade starts a new segment of version 2, and the old segments are deleted once
//!   confirmed, like any other.
//! * **Downgrade**: a release that writes version 1 refuses to open a spool holding any
//!   version-2 segment (`…seg: spool format version 2 is not supported by this build`) and
//!   changes nothing. Forward the backlog with the newer release first (or let it drain).
//!
//! The confirmed file has its own version (`CONFIRMED_VERSION`), still 1: its layout did not
//! change.
//!
//! ## Segment file
//!
//! A 24-byte header — magic `b"HBSPOOL\0"` (8), format version u32 (4, 1 or 2), reserved
//! u32 = 0 (4), base seq u64 (8) — followed by frames back to back. The base seq is also the file name, and
//! recovery rejects a header that disagrees with its name. The newest segment may end in zeros
//! after its last frame (see "Preallocation"); every other segment ends at its last frame.
//!
//! Invariant: the i-th frame of a segment carries seq `base + i`, and every record in a segment
//! is below the next segment's base. The writer keeps this by starting a new segment whenever the
//! next seq would not continue the active one (possible only after a recovery that skipped
//! numbers). Recovery and readers use it to resynchronise after corruption and to decide which
//! segments are fully confirmed.
//!
//! ## Record frame
//!
//! `len: u32 | crc32c: u32 | seq: u64 | appended_at_ms: u64 | payload[len]` — a 24-byte header
//! and the payload. The CRC-32C (Castagnoli) covers seq, appended_at_ms and the payload. A frame
//! with `len > MAX_RECORD_BYTES` (64 MiB + 8 KiB, a constant of the format) is corrupt; the
//! writer never produces one.
//!
//! That bound belongs to the format, not to the configuration. [`SpoolConfig::max_append_bytes`]
//! limits what `append` accepts from now on (and is capped at `MAX_RECORD_BYTES`); recovery,
//! readers and the operator tools never consult it. So lowering the append limit while a backlog
//! exists leaves every stored record readable: invariant 3 (nothing acknowledged is deleted
//! before the broker confirmed it) does not depend on today's configuration.
//!
//! ## Confirmed file
//!
//! `magic b"HBCONFRM" (8) | format version u32 = 1 (4) | seq u64 (8) | crc32c u32 (4)`, the CRC over
//! the first 20 bytes. It holds a position P such that every record with seq <= P was confirmed
//! by the broker. It is replaced crash-safely: write `confirmed.tmp`, fsync it, rename it over
//! `confirmed`, fsync the directory. A crash leaves either the old or the new position, both
//! valid because the position only grows and replaying confirmed records is merely a duplicate.
//!
//! # Ordering rules (why a crash at any instant is safe)
//!
//! 1. A frame's bytes are fdatasync'd before its append is answered.
//! 2. A new segment's header is fsync'd, then the file is renamed into place and the directory
//!    fsync'd, before any frame is written to it.
//! 3. Frames for the old segment are fsync'd, and its preallocated zeros cut off with the new
//!    length fsync'd, before the next segment is created, so only the newest segment can end in
//!    a torn write or in zeros.
//! 4. `confirmed.tmp` is fsync'd before it is renamed, and the directory is fsync'd before any
//!    segment the new position covers is deleted.
//! 5. A torn tail (zeros included) is truncated, and the truncation fsync'd, before new frames
//!    follow it.
//! 6. A segment is deleted — when its retention runs out, or evicted early for room — only if
//!    every record in it is at or below the *persisted* confirmed position (invariant 3), and only
//!    by the writer thread. Eviction happens only right before a batch is written that would
//!    otherwise exceed `max_bytes` or eat into `min_free_bytes`, oldest segment first and no more
//!    than that batch needs; so retained bytes can be counted as free when an append is admitted.
//!
//! # Sequence numbers
//!
//! They start at 1, strictly increase, and are never reused during the spool's life, even after
//! every segment was deleted: on open the next seq is one more than the largest of the last seq
//! on disk, the confirmed position (which outlives deleted segments), and the highest seq that
//! any file recovery could not read (or bytes it cut off) might have held. Numbers may therefore
//! skip after a crash or corruption; they never repeat.
//!
//! # Appending: group commit
//!
//! A dedicated writer thread owns the active segment. It writes every batch of queued appends
//! with one positional write and one `fdatasync`, then answers all of them, so the fsync rate
//! stays bounded however many requests are concurrent. A batch that straddles a rotation costs
//! one fsync per segment, and only the newest segment can ever end in a torn write. How the
//! batch is formed and when a segment rotates: `writer.rs`.
//!
//! ## Preallocation
//!
//! The writer writes zeros ahead of the newest segment's last frame
//! (`SpoolConfig::preallocate_bytes`, never past `segment_bytes`), so that group commits
//! overwrite existing blocks and their `fdatasync` writes only the data (why: `writer.rs`).
//!
//! The zeros are not records and change nothing a reader sees: readers stop at the commit point,
//! and the scanner's resync crosses zeros as it crosses any bytes that are not a frame (a frame's
//! seq is never 0). What they change is the end of the newest segment:
//!
//! * a clean `close`, and every rotation, cut the file back to its last frame and fsync the new
//!   length first (rule 3), so sealed segments never hold zeros and a restart after a clean
//!   close continues the same segment with the next seq;
//! * after a crash, recovery cuts them like a torn tail (rule 5), reporting them as
//!   `RecoveryReport::unused_tail_bytes` rather than `torn_tail_bytes`, and skips every seq
//!   they could have held, as it does for any cut bytes (an acknowledged frame zeroed in place
//!   would look the same). A power cut can leave frames of an unacknowledged commit in the
//!   zeros, whole or torn, even after a page that never reached the disk: the resync rules
//!   handle that shape already (frames after a hole are replayed; the client got no 2xx).
//!
//! The zeros count in `disk` (and `max_bytes`) as file bytes, and as free room when an append is
//! admitted or a batch needs eviction, since the next frames go into them; they are only ever
//! taken from quota and disk space nothing else may claim (what queued appends reserved, the
//! `min_free_bytes` margin), so preallocation never refuses an append nor evicts a retained
//! segment. None of this is a format change: the frames are the same, and a build without
//! preallocation reads the zeros of a crashed spool as a torn tail and cuts them too.
//!
//! # Fail closed
//!
//! Any error writing or fsyncing a segment, or creating one, poisons the spool
//! ([`Health::Failed`]): the batch's waiters get [`Error::Failed`], every later append fails at
//! once, and the writer does no further I/O (not even persisting the confirmed position on
//! `close`). An fsync is never retried: after a failed fsync the kernel may have dropped or
//! cleaned the dirty pages, so a retry can "succeed" with the data lost. ENOSPC on a segment
//! write is treated the same way (`spool.min_free_bytes` exists so that it rarely comes to
//! that). Restarting the process runs recovery, which trusts only what it reads back: frames of
//! the failed batch that did reach the disk are replayed (their appends got an error, so the
//! client resends: a duplicate, never a loss).
//!
//! The process does not exit at once: ingress answers 503 (the sender retries later),
//! `/readyz` is 503 so a load balancer and the operator see it, and committed records stay
//! readable, so the forwarder keeps draining them to the broker. Recovery needs a restart, so
//! once that drain is done (or after a minute) `app` stops the process with a non-zero exit and
//! the supervisor (systemd `Restart=`) starts it again; exiting at once instead would abandon
//! the drain. A failure persisting the confirmed position or deleting segments is *not* fatal (see
//! below): it only means more replay after a crash.
//!
//! # Confirming and deleting
//!
//! [`Spool::confirm`] only raises an in-memory atomic. The writer persists it (as above) at most
//! once per `confirm_interval` while it moves, and on `close`. A segment is *fully confirmed*
//! when all its records are <= the *persisted* position (the next segment's base is <=
//! persisted + 1; for the newest, its last record is <= persisted). A segment holding an
//! unconfirmed record is never deleted (rule 6).
//!
//! ## Retention
//!
//! A broker's confirmation is not always a disk write (JetStream acknowledges from the page
//! cache and syncs every two minutes by default; Kafka's `acks=all` means the replicas' page
//! caches), so the spool keeps fully confirmed segments for [`SpoolConfig::retain_confirmed`]
//! and the operator can put their records back (`hookbridge spool replay`).
//!
//! * **The clock** of a segment starts when the writer first sees it fully confirmed, right
//!   after persisting the position (`SegmentMeta::confirmed_at_ms`): the broker's unsynced window
//!   starts at its acknowledgement, not at our append, and a record appended during a long
//!   outage is as exposed when it is finally confirmed as a fresh one — an append-time clock
//!   would delete it at once. The time lives in memory only: the `confirmed` file has none, and
//!   adding one would be a format change for a figure that only has to err on the long side.
//!   Recovery therefore knows just that the confirmation came after the segment's last
//!   `appended_at_ms` and before the open; it takes the open (the longer retention), so a
//!   restart starts a new window for what is retained. Eviction bounds the cost. Ages are
//!   measured on the spool's monotonic clock ([`Clock::mono_ms`]), never the wall clock: a
//!   forward step of the system time (NTP after a suspend, an operator's `date -s`) must not
//!   expire a window early. Wall time is never used for retention, so it never counts for more
//!   than it says.
//! * **Expiry.** At each persist, and about once a second (on that clock) while retention is
//!   on, the writer deletes, oldest first, the fully confirmed segments whose clock is at least
//!   `retain_confirmed` old (with `0s`: every fully confirmed one, at once), then fsyncs the
//!   directory. Granularity is the segment: a record is kept until the *last* record of its
//!   segment has been confirmed for `retain_confirmed`. The newest segment never expires —
//!   appends continue it.
//! * **Eviction.** Retained bytes (`Quota::retained`: the *sealed* fully confirmed segments,
//!   kept by the writer under the quota lock together with `disk`) count as free when an
//!   append is admitted, both for `max_bytes` and for `min_free_bytes`: retention never causes
//!   [`Error::Full`] or [`Health::Full`]. The writer keeps that promise before it writes a
//!   batch: while the batch would not fit the quota or would eat into the free-space margin, it
//!   deletes the oldest sealed fully confirmed segment, counting `spool_evicted_segments` /
//!   `spool_evicted_records`. Only fully confirmed segments are candidates, so an unconfirmed
//!   record is never evicted. The newest segment is not counted, even when fully confirmed:
//!   the next append may continue it, after which it could not be evicted, and appends
//!   admitted on its room would overrun the quota. Instead, as without retention, when it is
//!   fully confirmed and the quota could not take a maximum-size record even with every sealed
//!   retained segment gone, the deletion pass (at each persist, rotation, and once a second)
//!   deletes it with every older segment (the `confirmed` file keeps the seq high-water mark)
//!   and the next append starts a new one. Its confirmed records would be on disk without
//!   retention too, so that refusal is not retention's doing.
//!
//! [`Stats`] reports the confirmed records still on disk (`retained_records`, whatever segment
//! they are in), the bytes eviction could free at once (`retained_bytes`, sealed segments) and
//! the append age of the oldest one.
//!
//! # Recovery (inside `open`)
//!
//! `recovery.rs` takes these steps in order. What each file and frame is (valid, empty, damaged,
//! torn tail, preallocated zeros, corrupt) is judged in `layout.rs` and `scan.rs`, which
//! `spool inspect` and `spool verify` use too, so the tools report exactly what recovery would do.
//!
//! 1. Create `dir` if missing (fsyncing the parent of each directory created); take the flock
//!    on `dir/LOCK`, or fail with [`Error::Locked`].
//! 2. Read every header first. If the confirmed file or any segment names a format version this
//!    build does not know (a downgrade), fail with [`Error::Incompatible`] before anything on
//!    disk is changed. A missing `confirmed` means 0; a corrupt one (size, magic or CRC) is moved
//!    into `damaged/` and 0 is used: replaying everything is safe (at-least-once), trusting a
//!    damaged position is not.
//! 3. Delete our stray temporary files (`confirmed.tmp`, `*.seg.tmp`): never renamed into place,
//!    so never referenced, and a segment tmp holds only a header. Other unknown files are left
//!    alone (logged).
//! 4. List `*.seg` in base order. A zero-length segment is removed (segments appear by rename
//!    after their header is fsync'd, so it never held a record of ours). A short or bad header,
//!    or one disagreeing with the file name, moves the file into `damaged/` (never deleted); it is
//!    listed in [`RecoveryReport::segments_moved_aside`] and its records are not replayed.
//! 5. Without retention (`retain_confirmed` = 0), delete segments fully covered by the confirmed
//!    position (left by a crash before deletion). With retention they are kept and scanned like
//!    the rest; before `open` returns, the writer counts them as retained (so appends may evict
//!    them at once) and starts their clock at the open time (see "Retention").
//! 6. Scan every frame of the remaining segments:
//!    * A bad frame (incomplete, `len` above `MAX_RECORD_BYTES`, CRC mismatch, or a seq that does
//!      not continue the segment) followed by valid data is corruption: logged as an error with
//!      segment and offset, counted in `spool_corrupt_records` and the report, skipped. The scan
//!      resyncs by trying every following byte offset for a frame whose `len` is sane, whose seq
//!      lies in the narrow window the skipped bytes allow, and whose CRC verifies (`scan.rs`).
//!    * A bad frame at the end of the *newest* segment with no valid frame after it is a torn
//!      tail (an interrupted, never-acknowledged group commit): the file is truncated there and
//!      fsync'd, and the report says how many bytes were cut.
//!    * The same at the end of an older segment cannot be a torn write (older segments are
//!      fsync'd before the next exists), so it is reported as corruption, not truncated.
//! 7. New records continue the newest segment if it scanned clean, keeps seqs consecutive and
//!    is of the version this build writes (`FORMAT_VERSION`), else they start a new segment. A
//!    segment of an older version is thus never appended to (see "Versions").
//!
//! # Reading
//!
//! A [`Reader`] starts at the first record above the confirmed position and never reads
//! beyond the commit point the writer publishes after each fsync, so it cannot observe a
//! partially written batch; it skips corrupt records with the same resync rules as recovery.
//! How it finds its place and why its reads are inline: `reader.rs`.
//!
//! # Quota and health
//!
//! `append` fails with [`Error::Full`], before queueing, when bytes of segment files − retained
//! bytes + bytes reserved by queued appends + this record's reservation would exceed
//! `max_bytes`. A reservation is the frame plus one segment header (the record may open a new
//! segment), and the writer evicts retained segments before writing (rule 6), so the segment
//! files never exceed `max_bytes`. [`Spool::health`] reports [`Health::Full`] whenever a
//! maximum-size record could not be accepted right now (free room < `max_append_bytes` + frame
//! header + segment header), which includes every state in which the last append was refused
//! for quota; it clears as soon as deletion frees room.
//!
//! `min_free_bytes` (0: off) guards the filesystem as a whole, which the spool shares with the
//! dead-letter store and usually with other programs: `append` also fails with [`Error::Full`]
//! (counted as `spool_rejected{reason="disk_low"}`, where the quota counts as `full`) when the
//! estimated free space plus retained bytes (eviction frees them), less queued reservations and
//! this record's, would drop below it, and [`Health::Full`] is reported while a maximum-size record
//! would be refused for that reason. The free space is an estimate the writer thread keeps from
//! statvfs samples (`writer.rs`): no syscall on the append path.
//!
//! # The filesystem seam and the fault model
//!
//! Every file operation goes through the [`SpoolFs`] trait (`fs.rs`): primitive operations
//! (open, positional read/write, `sync_data`/`sync_all`, set_len, create, rename, unlink,
//! directory fsync, listing, flock, statvfs). The crash-safe sequences — publish by tmp file +
//! fsync + rename + directory fsync, directory creation, moving a file aside — are written once
//! over the trait, so a test filesystem runs exactly the production sequence. [`RealFs`] is the
//! real one; [`Spool::open`] uses it, [`Spool::open_with_fs`] takes another one (tests and
//! fault injection only). The cost is one virtual call per syscall.
//!
//! The test filesystems and the fault model they assume: `fs.rs`.

// This file runs past 700 lines because its first 275 are the spool's design document, kept
// whole above the code it governs.

mod format;
pub use format::MAX_RECORD_BYTES;
pub(crate) mod fs;
pub mod inspect;
pub use fs::{DelegatingFs, DirEntry, DirLock, FsFile, RealFs, SpoolFs, DEAD_LETTER_DIR};
// The crash-safe sequences, for the other durable files beside the spool (the dead-letter
// store), so the fault and power-cut models reach them too.
pub(crate) use fs::{ensure_dir, list_dir, publish_file, read_small, remove_file};
mod layout;
mod reader;
mod recovery;
mod scan;
mod state;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

pub use reader::Reader;

use crate::clock::Clock;
use crate::metrics::Metrics;
use format::{frame_len, SEGMENT_HEADER_LEN};
use state::{lock, Shared};
use writer::{Request, Writer};

/// Name of the confirmed-position file in the spool directory.
const CONFIRMED_FILE: &str = "confirmed";
/// Name the next confirmed-position file is written under before its rename.
const CONFIRMED_TMP_FILE: &str = "confirmed.tmp";

/// Spool settings, already validated by `config`.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Directory holding segments, the confirmed-position file and the lock. Created if missing.
    pub dir: PathBuf,
    /// A segment is sealed and a new one started once it would grow past this many bytes.
    pub segment_bytes: u64,
    /// Quota over all segment files: an append that would exceed it fails with `Error::Full`.
    pub max_bytes: u64,
    /// Largest payload `append` accepts from now on (the frame header comes on top); larger ones
    /// get `Error::TooLarge`. Also the "maximum-size record" that `Health::Full` and the quota keep
    /// room for. It bounds appends only: records already on disk are judged by the format's
    /// [`MAX_RECORD_BYTES`], so lowering this never makes a stored record unreadable. Values
    /// above `MAX_RECORD_BYTES` are lowered to it when the spool opens.
    pub max_append_bytes: u32,
    /// Upper bound on the bytes written by one group commit.
    pub max_batch_bytes: usize,
    /// Zeros written ahead of the newest segment's last frame, so that group commits overwrite
    /// existing blocks and their `fdatasync` has no file size or allocation to write (see
    /// "Preallocation"). Taken only from free quota; counted in `Stats::bytes`. 0 disables.
    pub preallocate_bytes: u64,
    /// How often the confirmed position is persisted (and fully confirmed segments deleted) while it moves.
    pub confirm_interval: Duration,
    /// Appends fail with `Error::Full` while the filesystem holding `dir` has less free space
    /// than this (sampled, see the module docs). 0 disables the check.
    pub min_free_bytes: u64,
    /// How long a segment whose records are all confirmed is kept, counted from when the writer
    /// first saw it fully covered by the persisted confirmed position (see "Retention"). Such
    /// segments are evicted earlier, oldest first, when an append needs the room. Zero deletes
    /// them as soon as the position covering them is persisted.
    pub retain_confirmed: Duration,
}

/// One record as read back from the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Sequence number, strictly increasing across the spool's life (never reused).
    pub seq: u64,
    /// Wall-clock time of the append, milliseconds since the Unix epoch.
    pub appended_at_ms: u64,
    /// The opaque payload exactly as appended.
    pub payload: Bytes,
}

/// What `open` found and did, for logging.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Segment files in use after recovery.
    pub segments: usize,
    /// Valid records above the confirmed position: what a reader will replay.
    pub records: u64,
    /// The confirmed position read from disk (0 if missing or corrupt).
    pub confirmed: u64,
    /// Bytes cut off the end of the newest segment as a torn write: from the first bad frame
    /// to the last non-zero byte.
    pub torn_tail_bytes: u64,
    /// Zero bytes cut off after that: space the writer had preallocated and not used yet (a
    /// crash left it; a clean close cuts it itself).
    pub unused_tail_bytes: u64,
    /// Records lost to corruption and skipped (judged from the seqs around each damaged region).
    pub corrupt_records_skipped: u64,
    /// Where files that could not be used were moved (inside `dir/damaged/`).
    pub segments_moved_aside: Vec<PathBuf>,
}

/// Point-in-time view of the spool.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Records appended but not yet confirmed.
    pub records: u64,
    /// Bytes in segment files on disk.
    pub bytes: u64,
    /// Zeros preallocated after the newest segment's last frame: included in `bytes`, and what
    /// the next records are written into.
    pub preallocated_bytes: u64,
    pub segments: usize,
    /// Highest sequence number such that every record at or below it is confirmed.
    pub confirmed: u64,
    /// Sequence number the next append will get.
    pub next_seq: u64,
    /// Age of the oldest unconfirmed record, if any.
    pub oldest_unconfirmed_age: Option<Duration>,
    /// Confirmed records still on disk (kept for `retain_confirmed`, or sharing a segment with
    /// unconfirmed ones).
    pub retained_records: u64,
    /// Bytes of segment files holding only confirmed records: included in `bytes`, and what
    /// eviction can free at once.
    pub retained_bytes: u64,
    /// Age since append of the oldest confirmed record still on disk, if any.
    pub oldest_retained_age: Option<Duration>,
}

/// Whether the spool accepts appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// A maximum-size record would be refused for quota or for `min_free_bytes` right now.
    Full,
    /// Poisoned by a write or fsync error: every append fails until the process restarts.
    Failed,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The quota (`max_bytes`) has no room for this record, or the filesystem holding the spool
    /// is below `min_free_bytes`; retry after the forwarder catches up (or space is freed).
    #[error("spool is full")]
    Full,
    /// The payload exceeds `max_append_bytes`.
    #[error("record too large")]
    TooLarge,
    /// The spool is poisoned (a write or fsync failed); the message says what failed.
    #[error("spool failed: {0}")]
    Failed(String),
    /// Another process (or `Spool`) holds the directory lock.
    #[error("spool is locked by another process")]
    Locked,
    /// `close` was called.
    #[error("spool is closed")]
    Closed,
    /// An I/O error during `open`, or while reading.
    #[error("spool i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A file in the spool has a format version this build cannot read (e.g. after a
    /// downgrade); `open` refuses rather than guess, and has changed nothing on disk.
    #[error("{}: spool format version {version} is not supported by this build (a newer hookbridge wrote it; nothing was changed)", path.display())]
    Incompatible { path: PathBuf, version: u32 },
}

/// What [`Spool::append_then`] runs once a record is durable, with its seq.
pub type OnDurable = Box<dyn FnOnce(u64) + Send>;

/// Cloneable handle to the spool.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

/// The handle's state. The writer thread holds only `Shared` and the receiving end of the
/// queue, so dropping the last `Spool` drops the sender and lets the writer finish and exit.
struct Inner {
    shared: Arc<Shared>,
    /// `None` once `close` was called.
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<Result<(), Error>>>>,
}

impl Spool {
    /// Blocking: takes the directory lock, recovers, starts the group-commit writer thread.
    pub fn open(cfg: SpoolConfig, metrics: Arc<Metrics>) -> Result<(Spool, RecoveryReport), Error> {
        Spool::open_with_fs(cfg, metrics, Arc::new(RealFs))
    }

    /// [`Spool::open`] on a given filesystem. For tests and fault injection (a filesystem that
    /// fails the Nth fsync, or simulates a power cut); production uses [`Spool::open`].
    pub fn open_with_fs(
        cfg: SpoolConfig,
        metrics: Arc<Metrics>,
        fs: Arc<dyn SpoolFs>,
    ) -> Result<(Spool, RecoveryReport), Error> {
        Spool::open_with_clock(cfg, metrics, fs, Clock::system())
    }

    /// [`Spool::open_with_fs`] reading time from `clock` (append times, retention ages): a
    /// [`crate::clock::ManualClock`] lets a test expire retained segments without waiting.
    pub fn open_with_clock(
        mut cfg: SpoolConfig,
        metrics: Arc<Metrics>,
        fs: Arc<dyn SpoolFs>,
        clock: Clock,
    ) -> Result<(Spool, RecoveryReport), Error> {
        // Invariant 3: never write a frame that a reader would judge corrupt.
        cfg.max_append_bytes = cfg.max_append_bytes.min(MAX_RECORD_BYTES);
        let rec = recovery::recover(&cfg, &metrics, fs.as_ref())?;
        let fs_free = writer::sample_free_space(&cfg, &metrics, fs.as_ref());
        let shared = Arc::new(Shared::new(
            cfg,
            fs,
            metrics,
            clock,
            rec.table,
            rec.disk_bytes,
            rec.confirmed,
            rec.next_seq,
            rec.commit,
            fs_free,
        ));
        let (tx, rx) = mpsc::channel();
        let writer = Writer::new(
            shared.clone(),
            rx,
            rec.lock,
            rec.active,
            rec.next_seq,
            rec.confirmed,
        );
        let handle = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run())?;
        let inner = Inner {
            shared,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
        };
        Ok((
            Spool {
                inner: Arc::new(inner),
            },
            rec.report,
        ))
    }

    /// Resolves with the record's seq only after an fsync covering it has returned.
    pub async fn append(&self, payload: Bytes) -> Result<u64, Error> {
        self.append_inner(payload, None).await
    }

    /// [`append`](Self::append), and `on_durable` runs with the record's seq on the writer
    /// thread once the fsync covering it has returned, before the append resolves. It runs
    /// whether or not this future is still waiting: an append dropped after it was queued still
    /// finishes, and `on_durable` is how its outcome is recorded. If the record is not stored
    /// (refused, failed write, spool closed) `on_durable` is dropped without running. Keep it
    /// short: it delays the rest of its group commit's answers.
    pub async fn append_then(&self, payload: Bytes, on_durable: OnDurable) -> Result<u64, Error> {
        self.append_inner(payload, Some(on_durable)).await
    }

    async fn append_inner(
        &self,
        payload: Bytes,
        on_durable: Option<OnDurable>,
    ) -> Result<u64, Error> {
        match self.enqueue(payload, on_durable).await {
            Ok(seq) => Ok(seq),
            Err((e, None)) => Err(e),
            Err((e, Some(reason))) => {
                self.inner
                    .shared
                    .metrics
                    .spool_rejected
                    .with_label_values(&[reason])
                    .inc();
                Err(e)
            }
        }
    }

    /// An error comes with its `spool_rejected` reason label, if it counts as a rejection.
    async fn enqueue(
        &self,
        payload: Bytes,
        on_durable: Option<OnDurable>,
    ) -> Result<u64, (Error, Option<&'static str>)> {
        let failed = |reason: String| (Error::Failed(reason), Some("failed"));
        let shared = &self.inner.shared;
        if payload.len() > shared.cfg.max_append_bytes as usize {
            return Err((Error::TooLarge, Some("too_large")));
        }
        if let Some(reason) = shared.poison_reason() {
            return Err(failed(reason.to_owned()));
        }
        // Worst case the record opens a new segment, so reserve a header with it: the segment
        // files then never exceed the quota.
        let reserved = frame_len(payload.len()) + SEGMENT_HEADER_LEN;
        let (reply, response) = oneshot::channel();
        {
            let tx = lock(&self.inner.tx);
            let Some(tx) = tx.as_ref() else {
                return Err((Error::Closed, None));
            };
            {
                let mut quota = lock(&shared.quota);
                if let Some(reason) = shared.refusal(&quota, reserved) {
                    return Err((Error::Full, Some(reason)));
                }
                quota.queued += reserved;
            }
            if tx
                .send(Request {
                    payload,
                    reserved,
                    reply,
                    on_durable,
                })
                .is_err()
            {
                lock(&shared.quota).release(reserved);
                return Err(failed("spool writer thread is gone".to_owned()));
            }
        }
        // The payload comes back to be freed here (see `writer::Reply`).
        match response.await {
            Ok((Ok(seq), _payload)) => Ok(seq),
            Ok((Err(e @ Error::Failed(_)), _)) => Err((e, Some("failed"))),
            Ok((Err(e), _)) => Err((e, None)),
            Err(_) => Err(failed("spool writer thread is gone".to_owned())),
        }
    }

    /// A reader positioned at the first unconfirmed record.
    pub fn reader(&self) -> Reader {
        Reader::new(self.inner.shared.clone())
    }

    /// Every record with seq <= `seq` is confirmed by the broker. Monotonic; persisted lazily.
    ///
    /// Smaller values than before are ignored. A value beyond the last committed record is a
    /// caller bug and is clamped to it: records appended later must never count as confirmed.
    pub fn confirm(&self, seq: u64) {
        let shared = &self.inner.shared;
        let committed = shared.commit.borrow().seq;
        if seq > committed {
            tracing::warn!(
                seq,
                committed,
                "confirm beyond the last committed record; clamped"
            );
        }
        shared
            .confirmed
            .fetch_max(seq.min(committed), Ordering::AcqRel);
    }

    /// Cheap (two short lock acquisitions, a walk over the segments holding unconfirmed
    /// records); `oldest_unconfirmed_age` is accurate to about one second.
    pub fn stats(&self) -> Stats {
        let shared = &self.inner.shared;
        let confirmed = shared.confirmed();
        let (records, oldest_ms, retained_records, oldest_retained_ms, segments) = {
            let table = lock(&shared.segments);
            let (records, oldest) = table.unconfirmed(confirmed);
            let (retained, oldest_retained) = table.retained(confirmed);
            (records, oldest, retained, oldest_retained, table.segs.len())
        };
        let (bytes, retained_bytes, preallocated_bytes) = {
            let q = lock(&shared.quota);
            (q.disk, q.retained, q.preallocated)
        };
        let now = shared.clock.wall_ms();
        Stats {
            retained_records,
            retained_bytes,
            oldest_retained_age: oldest_retained_ms
                .map(|at| Duration::from_millis(now.saturating_sub(at))),
            records,
            bytes,
            preallocated_bytes,
            segments,
            confirmed,
            next_seq: shared.next_seq.load(Ordering::Acquire),
            oldest_unconfirmed_age: oldest_ms
                .map(|at| Duration::from_millis(now.saturating_sub(at))),
        }
    }

    /// `Failed` once poisoned; `Full` while a maximum-size record would be refused for quota or
    /// for `min_free_bytes` (see the module docs); else `Ok`.
    pub fn health(&self) -> Health {
        let shared = &self.inner.shared;
        if shared.poison_reason().is_some() {
            return Health::Failed;
        }
        let quota = lock(&shared.quota);
        match shared.refusal(&quota, shared.max_reservation()) {
            Some(_) => Health::Full,
            None => Health::Ok,
        }
    }

    /// Stops the writer after pending appends, persists the confirmed position.
    ///
    /// New appends fail with [`Error::Closed`] at once; appends already queued are written and
    /// answered. Returns once the writer thread has exited and released the directory lock (the
    /// directory can then be opened again). Readers keep returning what was committed, then
    /// [`Error::Closed`]. Calling it again waits for the first call to finish.
    pub async fn close(&self) -> Result<(), Error> {
        // Dropping the only sender: the writer drains the queue, then sees the disconnect.
        drop(lock(&self.inner.tx).take());
        let handle = lock(&self.inner.writer).take();
        match handle {
            Some(handle) => match tokio::task::spawn_blocking(move || handle.join()).await {
                Ok(Ok(result)) => result,
                Ok(Err(_panic)) => Err(Error::Failed("spool writer thread panicked".to_owned())),
                Err(e) => Err(Error::Failed(format!(
                    "waiting for the spool writer failed: {e}"
                ))),
            },
            None => {
                let mut commit = self.inner.shared.commit.subscribe();
                let _ = commit.wait_for(|c| c.closed).await;
                match self.inner.shared.poison_reason() {
                    Some(reason) => Err(Error::Failed(reason.to_owned())),
                    None => Ok(()),
                }
            }
        }
    }
}
