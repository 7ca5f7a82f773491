//! Recovery: what `Spool::open` does before the writer starts. See the module docs of
//! [`crate::spool`] for the rules; this file implements them in order.

use std::path::{Path, PathBuf};

use super::format::{FORMAT_VERSION, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::fs::{self, DirLock, SpoolFile, SpoolFs};
use super::layout::{
    entry_kind, judge_segment_header, read_confirmed, ConfirmedState, EntryKind, SegmentHeader,
};
use super::scan::{Found, Place, SegmentCursor};
use super::state::{CommitPoint, SegmentMeta, SegmentTable};
use super::writer::ActiveSegment;
use super::{Error, RecoveryReport, SpoolConfig, CONFIRMED_FILE};
use crate::metrics::Metrics;

/// Read size while scanning segments at open.
const RECOVERY_CHUNK: usize = 1 << 20;

/// The state recovery hands to the writer and the handle.
pub(crate) struct Recovered {
    pub lock: DirLock,
    pub confirmed: u64,
    pub next_seq: u64,
    pub table: SegmentTable,
    pub disk_bytes: u64,
    /// The newest segment, open for appending, if new records may continue it.
    pub active: Option<ActiveSegment>,
    pub commit: CommitPoint,
    pub report: RecoveryReport,
}

/// What phase 1 found, before anything on disk was changed.
struct Listing {
    /// The confirmed file's position; `None` when it exists but is corrupt.
    confirmed: Option<u64>,
    /// Leftovers of interrupted crash-safe replaces.
    stray_tmp: Vec<PathBuf>,
    /// `*.seg` files in base order: (base, path, length, header).
    segments: Vec<(u64, PathBuf, u64, SegmentHeader)>,
}

/// The segments left to scan once the unusable ones are out of the way.
struct Usable {
    /// (base, path, length), in base order.
    segments: Vec<(u64, PathBuf, u64)>,
    /// Highest seq a file that was removed or moved aside could have held.
    seq_floor: u64,
}

/// What the scan of the usable segments found.
#[derive(Default)]
struct Scanned {
    table: SegmentTable,
    disk_bytes: u64,
    last_seq_on_disk: u64,
    active: Option<ActiveSegment>,
    /// Highest seq the bytes cut off as torn tails could have held.
    seq_floor: u64,
}

/// Implements "Recovery (inside `open`)" of the module docs, step by step.
pub(crate) fn recover(
    cfg: &SpoolConfig,
    metrics: &Metrics,
    sfs: &dyn SpoolFs,
) -> Result<Recovered, Error> {
    let dir = cfg.dir.as_path();
    fs::ensure_dir(sfs, dir)?;
    let lock = sfs.lock_dir(dir)?.ok_or(Error::Locked)?;
    let mut report = RecoveryReport::default();

    // Phase 1, read-only: so that an incompatible file (a newer format after a downgrade) stops
    // `open` before anything on disk was changed.
    let listing = list(sfs, dir)?;
    // Phase 2: act.
    let newest_base = listing.segments.last().map(|c| c.0);
    let newest_writable = newest_writable(&listing.segments);
    let confirmed = use_confirmed(sfs, dir, listing.confirmed)?;
    report.confirmed = confirmed;
    remove_stray_tmp(sfs, listing.stray_tmp)?;
    let mut usable = set_aside_unusable(sfs, dir, listing.segments, &mut report)?;
    if cfg.retain_confirmed.is_zero() {
        delete_confirmed_segments(sfs, dir, &mut usable.segments, confirmed)?;
    }
    let scanned = scan_segments(
        metrics,
        sfs,
        &usable.segments,
        Newest {
            base: newest_base,
            writable: newest_writable,
        },
        confirmed,
        &mut report,
    )?;
    let Scanned {
        table,
        disk_bytes,
        last_seq_on_disk,
        active,
        seq_floor: cut_floor,
    } = scanned;

    let last_base = table
        .segs
        .back()
        .map(|s| s.base.saturating_sub(1))
        .unwrap_or(0);
    // If this skips numbers, the writer sees that the newest segment cannot be continued with
    // consecutive seqs and starts a new one.
    let next_seq = last_seq_on_disk
        .max(confirmed)
        .max(usable.seq_floor)
        .max(cut_floor)
        .max(last_base)
        + 1;
    let commit = commit_point(&table, last_seq_on_disk);
    report.segments = table.segs.len();
    tracing::info!(
        dir = %dir.display(),
        segments = report.segments,
        records = report.records,
        confirmed,
        next_seq,
        torn_tail_bytes = report.torn_tail_bytes,
        corrupt_records_skipped = report.corrupt_records_skipped,
        moved_aside = report.segments_moved_aside.len(),
        "spool recovered"
    );
    Ok(Recovered {
        lock,
        confirmed,
        next_seq,
        table,
        disk_bytes,
        active,
        commit,
        report,
    })
}

/// Whether new records may go to the newest segment file: only if it is of the version this
/// build writes. A segment of an older version is read, never appended to, so a record only this
/// build can decode (delivery V4) never lands in a file an older release would read; the first
/// append starts a new segment instead (`scan_segments` hands the writer no active segment).
fn newest_writable(segments: &[(u64, PathBuf, u64, SegmentHeader)]) -> bool {
    match segments.last() {
        Some((_, _, _, SegmentHeader::Valid { version })) if *version == FORMAT_VERSION => true,
        Some((_, path, _, SegmentHeader::Valid { version })) => {
            tracing::info!(segment = %path.display(), version, "newest segment has an older format version: it is read but not appended to; new records go to a new segment");
            false
        }
        _ => false,
    }
}

/// Where the writer's commit point starts: the end of the newest segment.
fn commit_point(table: &SegmentTable, last_seq_on_disk: u64) -> CommitPoint {
    match table.segs.back() {
        Some(s) => CommitPoint {
            seq: last_seq_on_disk,
            segment: s.base,
            end: s.len,
            closed: false,
        },
        None => CommitPoint {
            seq: last_seq_on_disk,
            ..CommitPoint::default()
        },
    }
}

/// Step 2 and the listing of steps 3 and 4, read-only: the confirmed file, the stray temporary
/// files and every segment's header. A file in an unknown format version is an error
/// ([`Error::Incompatible`]).
fn list(sfs: &dyn SpoolFs, dir: &Path) -> Result<Listing, Error> {
    let confirmed_path = dir.join(CONFIRMED_FILE);
    let confirmed = match read_confirmed(sfs, &confirmed_path)? {
        ConfirmedState::Missing => Some(0),
        ConfirmedState::Valid(seq) => Some(seq),
        ConfirmedState::Unsupported(version) => {
            return Err(Error::Incompatible {
                path: confirmed_path,
                version,
            })
        }
        ConfirmedState::Corrupt => None,
    };
    let mut stray_tmp = Vec::new();
    let mut segments = Vec::new();
    for e in fs::list_dir(sfs, dir)? {
        match entry_kind(&e.name, e.is_file) {
            EntryKind::Known => {}
            EntryKind::Temp => stray_tmp.push(e.path),
            EntryKind::Segment(base) => {
                let header = judge_segment_header(base, e.len, |h| {
                    sfs.open_read(&e.path)?.read_exact_at(h, 0)
                })?;
                if let SegmentHeader::Unsupported(version) = header {
                    return Err(Error::Incompatible {
                        path: e.path,
                        version,
                    });
                }
                segments.push((base, e.path, e.len, header));
            }
            EntryKind::Unexpected => {
                tracing::warn!(file = %e.path.display(), "ignoring unexpected entry in spool directory")
            }
        }
    }
    segments.sort_by_key(|c| c.0);
    Ok(Listing {
        confirmed,
        stray_tmp,
        segments,
    })
}

/// Step 2: the position to use; a corrupt file is moved aside and 0 used.
fn use_confirmed(sfs: &dyn SpoolFs, dir: &Path, stored: Option<u64>) -> Result<u64, Error> {
    match stored {
        Some(seq) => Ok(seq),
        None => {
            // Replaying everything is safe (delivery is at-least-once); trusting a damaged
            // position could skip records that were never delivered.
            let to = fs::move_aside(sfs, dir, &dir.join(CONFIRMED_FILE))?;
            tracing::error!(file = %to.display(), "confirmed-position file is corrupt; moved aside, replaying every record on disk");
            Ok(0)
        }
    }
}

/// Step 3.
fn remove_stray_tmp(sfs: &dyn SpoolFs, stray_tmp: Vec<PathBuf>) -> Result<(), Error> {
    for path in stray_tmp {
        // Leftovers of an interrupted `publish_file`: never renamed, so never referenced, and a
        // segment .tmp holds only a header (records are written after the rename).
        tracing::info!(file = %path.display(), "removing leftover temporary file");
        fs::remove_file(sfs, &path)?;
    }
    Ok(())
}

/// Step 4: removes empty segments, moves damaged ones aside, and keeps the rest.
fn set_aside_unusable(
    sfs: &dyn SpoolFs,
    dir: &Path,
    segments: Vec<(u64, PathBuf, u64, SegmentHeader)>,
    report: &mut RecoveryReport,
) -> Result<Usable, Error> {
    // Sequence numbers a file we cannot read may have used: `next_seq` must go beyond them so a
    // number is never handed out twice (downstream may deduplicate on it).
    let mut seq_floor = 0u64;
    let mut usable = Vec::new();
    for (base, path, len, header) in segments {
        match header {
            SegmentHeader::Valid { .. } => usable.push((base, path, len)),
            SegmentHeader::Empty => {
                // Segments are published by rename after their header is fsync'd, so an empty
                // .seg file never held records of ours: nothing to keep. Its name still says
                // seqs from `base` on may have been assigned, so they are not handed out again.
                tracing::warn!(file = %path.display(), "removing zero-length segment file");
                fs::remove_file(sfs, &path)?;
                seq_floor = seq_floor.max(base.saturating_sub(1));
            }
            SegmentHeader::Damaged(why) => {
                let to = fs::move_aside(sfs, dir, &path)?;
                tracing::error!(file = %path.display(), moved_to = %to.display(), reason = %why, "unreadable segment moved aside; its records are not replayed");
                report.segments_moved_aside.push(to);
                // Every frame is at least FRAME_HEADER_LEN bytes and seqs in a segment are
                // consecutive from its base, so this bounds the seqs the file could hold.
                seq_floor = seq_floor.max(base.saturating_add(len / FRAME_HEADER_LEN));
            }
            SegmentHeader::Unsupported(_) => unreachable!("refused while listing"),
        }
    }
    Ok(Usable {
        segments: usable,
        seq_floor,
    })
}

/// Step 5, without retention: segments whose records are all confirmed were due for deletion
/// before the restart. A segment's records are all below the next segment's base; the newest
/// is always kept. (With `retain_confirmed` they are kept: when they were confirmed is not on
/// disk, so the writer starts their retention clock at open, module docs "Retention"; they
/// remain the first to go when space is needed.)
fn delete_confirmed_segments(
    sfs: &dyn SpoolFs,
    dir: &Path,
    segments: &mut Vec<(u64, PathBuf, u64)>,
    confirmed: u64,
) -> Result<(), Error> {
    let mut deleted = 0;
    while segments.len() > 1 && segments[1].0 <= confirmed.saturating_add(1) {
        let (_, path, _) = segments.remove(0);
        fs::remove_file(sfs, &path)?;
        deleted += 1;
    }
    if deleted > 0 {
        sfs.sync_dir(dir)?;
        tracing::info!(
            segments = deleted,
            confirmed,
            "deleted fully confirmed segments"
        );
    }
    Ok(())
}

/// The newest segment file (valid or not): its base, and whether its version may be appended to
/// ([`newest_writable`]).
struct Newest {
    base: Option<u64>,
    writable: bool,
}

/// Steps 6 and 7: scans every usable segment, and opens the newest for appending if it scanned
/// clean and is of the version this build writes.
fn scan_segments(
    metrics: &Metrics,
    sfs: &dyn SpoolFs,
    segments: &[(u64, PathBuf, u64)],
    newest: Newest,
    confirmed: u64,
    report: &mut RecoveryReport,
) -> Result<Scanned, Error> {
    let mut s = Scanned::default();
    for (i, (base, path, len)) in segments.iter().enumerate() {
        let base = *base;
        let is_newest = Some(base) == newest.base;
        let target = ScanTarget {
            path,
            base,
            len: *len,
            place: Place {
                is_newest,
                next_base: segments.get(i + 1).map(|v| v.0),
            },
        };
        let ScannedSegment {
            meta,
            file,
            clean,
            cut_seqs,
        } = scan_segment(metrics, sfs, target, confirmed, report)?;
        s.seq_floor = s.seq_floor.max(cut_seqs);
        s.last_seq_on_disk = s.last_seq_on_disk.max(meta.last_seq.unwrap_or(0));
        s.disk_bytes += meta.len;
        if is_newest && clean && newest.writable {
            let next = meta.last_seq.map_or(base, |s| s + 1);
            s.active = Some(ActiveSegment {
                base,
                file,
                len: meta.len,
                alloc: meta.len,
                next_seq: next,
            });
        }
        s.table.segs.push_back(meta);
    }
    Ok(s)
}

struct ScannedSegment {
    meta: SegmentMeta,
    /// Open for writing if the segment is the newest, else read-only.
    file: SpoolFile,
    /// No corruption found (a torn tail that was cut off does not count).
    clean: bool,
    /// Highest seq the bytes cut off as a torn tail could have held (0 if none were cut).
    cut_seqs: u64,
}

/// A segment file to scan and where it stands among the others.
struct ScanTarget<'a> {
    path: &'a Path,
    base: u64,
    len: u64,
    /// `is_newest`: no segment file (valid or not) has a higher base; `next_base`: the base of
    /// the next valid segment.
    place: Place,
}

/// Scans one segment (step 6): counts its records, cuts a torn tail off the newest, and counts
/// and logs corruption.
fn scan_segment(
    metrics: &Metrics,
    sfs: &dyn SpoolFs,
    target: ScanTarget<'_>,
    confirmed: u64,
    report: &mut RecoveryReport,
) -> Result<ScannedSegment, Error> {
    let ScanTarget {
        path,
        base,
        len,
        place,
    } = target;
    // The newest is opened for writing: a torn tail is cut off, and appends may continue it.
    let file = match place.is_newest {
        true => sfs.open_write(path)?,
        false => sfs.open_read(path)?,
    };
    let mut meta = SegmentMeta::new(base, path.to_path_buf());
    meta.len = len;
    let first = base.saturating_sub(1);
    let mut cursor = SegmentCursor::new(file, SEGMENT_HEADER_LEN, first, RECOVERY_CHUNK);
    let mut clean = true;
    let mut cut_seqs = 0;
    while let Some(found) = cursor.next_found(len, place)? {
        match found {
            Found::Record(f) => {
                meta.note_frame(f.seq, f.offset, f.appended_at_ms);
                if f.seq > confirmed {
                    report.records += 1;
                }
            }
            Found::Tail {
                offset,
                last_good,
                torn,
                zeros,
            } => {
                // Cut it off so new frames follow the last good one. The cut bytes could also be
                // an acknowledged record damaged in place (even zeroed), so every seq they could
                // hold is skipped (`cut_seqs`), never reused.
                fs::truncate(cursor.file().as_ref(), offset)?;
                report.torn_tail_bytes += torn;
                report.unused_tail_bytes += zeros;
                meta.len = offset;
                cut_seqs = last_good + (len - offset) / FRAME_HEADER_LEN;
                if torn > 0 {
                    tracing::warn!(segment = %path.display(), offset, bytes = torn, zeros, "truncated torn tail of the newest segment");
                } else {
                    tracing::info!(segment = %path.display(), offset, zeros, "cut the unused preallocated end of the newest segment (the last run did not close the spool)");
                }
            }
            Found::Corrupt {
                offset,
                last_good,
                resumed,
                lost,
            } => {
                metrics.spool_corrupt_records.inc_by(lost);
                report.corrupt_records_skipped += lost;
                meta.known_corrupt.push(offset);
                clean = false;
                tracing::error!(
                    segment = %path.display(),
                    offset,
                    last_good_seq = last_good,
                    resumed_at = resumed.map(|f| f.offset),
                    lost,
                    "corrupt record(s) in spool segment; skipping them"
                );
            }
        }
    }
    Ok(ScannedSegment {
        meta,
        file: cursor.into_file(),
        clean,
        cut_seqs,
    })
}
