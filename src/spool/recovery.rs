//! Recovery: what `Spool::open` does before the writer starts. See the module docs of
//! [`crate::spool`] for the rules; this file implements them in order.

use std::path::Path;

use super::format::{
    decode_confirmed, decode_segment_header, parse_segment_file_name, ConfirmedError, HeaderError,
    FRAME_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use super::fs::{self, DirLock, SpoolFile, SpoolFs};
use super::scan::{self, SegmentCursor, Step};
use super::state::{CommitPoint, SegmentMeta, SegmentTable};
use super::writer::ActiveSegment;
use super::{Error, RecoveryReport, SpoolConfig, CONFIRMED_FILE, CONFIRMED_TMP_FILE};
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

/// How a `*.seg` file looked before recovery touched anything.
enum Candidate {
    Valid,
    Empty,
    /// Short or bad header, or one that disagrees with the file name.
    Damaged(String),
}

pub(crate) fn recover(
    cfg: &SpoolConfig,
    metrics: &Metrics,
    sfs: &dyn SpoolFs,
) -> Result<Recovered, Error> {
    let dir = cfg.dir.as_path();
    fs::ensure_dir(sfs, dir)?;
    let lock = sfs.lock_dir(dir)?.ok_or(Error::Locked)?;
    let mut report = RecoveryReport::default();

    // Phase 1, read-only: classify everything, so that an incompatible file (a newer format
    // after a downgrade) stops `open` before anything on disk was changed.
    let confirmed_path = dir.join(CONFIRMED_FILE);
    // `None`: the file exists but is corrupt.
    let stored_confirmed = match fs::read_small(sfs, &confirmed_path)? {
        None => Some(0),
        Some(b) => match decode_confirmed(&b) {
            Ok(seq) => Some(seq),
            Err(ConfirmedError::UnsupportedVersion(version)) => {
                return Err(Error::Incompatible {
                    path: confirmed_path,
                    version,
                })
            }
            Err(ConfirmedError::Corrupt) => None,
        },
    };
    let mut stray_tmp = Vec::new();
    let mut candidates = Vec::new();
    for e in fs::list_dir(sfs, dir)? {
        if e.name == "LOCK"
            || e.name == CONFIRMED_FILE
            || e.name == fs::DAMAGED_DIR
            || e.name == fs::DEAD_LETTER_DIR
            || e.name.starts_with("dedup.journal")
        {
            continue;
        }
        if e.is_file
            && (e.name == CONFIRMED_TMP_FILE
                || e.name
                    .strip_suffix(".tmp")
                    .and_then(parse_segment_file_name)
                    .is_some())
        {
            stray_tmp.push(e.path);
            continue;
        }
        match parse_segment_file_name(&e.name) {
            Some(base) if e.is_file => {
                let class = classify(sfs, &e.path, base, e.len)?;
                candidates.push((base, e.path, e.len, class));
            }
            _ => {
                tracing::warn!(file = %e.path.display(), "ignoring unexpected entry in spool directory")
            }
        }
    }
    candidates.sort_by_key(|c| c.0);

    // Phase 2: act.
    let confirmed = match stored_confirmed {
        Some(seq) => seq,
        None => {
            // Replaying everything is safe (delivery is at-least-once); trusting a damaged
            // position could skip records that were never delivered.
            let to = fs::move_aside(sfs, dir, &confirmed_path)?;
            tracing::error!(file = %to.display(), "confirmed-position file is corrupt; moved aside, replaying every record on disk");
            0
        }
    };
    report.confirmed = confirmed;
    for path in stray_tmp {
        // Leftovers of an interrupted `publish_file`: never renamed, so never referenced, and a
        // segment .tmp holds only a header (records are written after the rename).
        tracing::info!(file = %path.display(), "removing leftover temporary file");
        fs::remove_file(sfs, &path)?;
    }

    // Sequence numbers a file we cannot read may have used: `next_seq` must go beyond them so a
    // number is never handed out twice (downstream may deduplicate on it).
    let mut seq_floor = 0u64;
    let newest_base = candidates.last().map(|c| c.0);
    let mut valid = Vec::new();
    for (base, path, len, class) in candidates {
        match class {
            Candidate::Valid => valid.push((base, path, len)),
            Candidate::Empty => {
                // Segments are published by rename after their header is fsync'd, so an empty
                // .seg file never held records of ours: nothing to keep. Its name still says
                // seqs from `base` on may have been assigned, so they are not handed out again.
                tracing::warn!(file = %path.display(), "removing zero-length segment file");
                fs::remove_file(sfs, &path)?;
                seq_floor = seq_floor.max(base.saturating_sub(1));
            }
            Candidate::Damaged(why) => {
                let to = fs::move_aside(sfs, dir, &path)?;
                tracing::error!(file = %path.display(), moved_to = %to.display(), reason = %why, "unreadable segment moved aside; its records are not replayed");
                report.segments_moved_aside.push(to);
                // Every frame is at least FRAME_HEADER_LEN bytes and seqs in a segment are
                // consecutive from its base, so this bounds the seqs the file could hold.
                seq_floor = seq_floor.max(base.saturating_add(len / FRAME_HEADER_LEN));
            }
        }
    }

    // Segments whose records are all confirmed were due for deletion before the restart when
    // nothing is retained. A segment's records are all below the next segment's base; the
    // newest is always kept. With `retain_confirmed` they are kept: when they were confirmed
    // is not on disk, so the writer starts their retention clock at open (module docs,
    // "Retention"); they remain the first to go when space is needed.
    let mut deleted = 0;
    while cfg.retain_confirmed.is_zero()
        && valid.len() > 1
        && valid[1].0 <= confirmed.saturating_add(1)
    {
        let (_, path, _) = valid.remove(0);
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

    // Scan what is left.
    let mut table = SegmentTable::default();
    let mut disk_bytes = 0;
    let mut last_seq_on_disk = 0;
    let mut active = None;
    for i in 0..valid.len() {
        let (base, ref path, len) = valid[i];
        let next_base = valid.get(i + 1).map(|v| v.0);
        let is_newest = Some(base) == newest_base;
        let target = ScanTarget {
            path,
            base,
            len,
            is_newest,
            next_base,
        };
        let scanned = scan_segment(metrics, sfs, target, confirmed, &mut report)?;
        let ScannedSegment {
            meta,
            file,
            clean,
            cut_seqs,
        } = scanned;
        seq_floor = seq_floor.max(cut_seqs);
        last_seq_on_disk = last_seq_on_disk.max(meta.last_seq.unwrap_or(0));
        disk_bytes += meta.len;
        if is_newest && clean {
            let next = meta.last_seq.map_or(base, |s| s + 1);
            active = Some(ActiveSegment {
                base,
                file,
                len: meta.len,
                alloc: meta.len,
                next_seq: next,
            });
        }
        table.segs.push_back(meta);
    }

    let last_base = table
        .segs
        .back()
        .map(|s| s.base.saturating_sub(1))
        .unwrap_or(0);
    // If this skips numbers, the writer sees that the newest segment cannot be continued with
    // consecutive seqs and starts a new one.
    let next_seq = last_seq_on_disk
        .max(confirmed)
        .max(seq_floor)
        .max(last_base)
        + 1;
    let commit = match table.segs.back() {
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
    };
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

/// Reads a segment's header. A header naming an unknown format version is an error: see
/// [`Error::Incompatible`].
fn classify(sfs: &dyn SpoolFs, path: &Path, base: u64, len: u64) -> Result<Candidate, Error> {
    if len == 0 {
        return Ok(Candidate::Empty);
    }
    let file = sfs.open_read(path)?;
    let mut header = vec![0u8; len.min(SEGMENT_HEADER_LEN) as usize];
    file.read_exact_at(&mut header, 0)?;
    Ok(match decode_segment_header(&header) {
        Ok(0) => Candidate::Damaged("base seq 0 (seqs start at 1)".to_owned()),
        Ok(b) if b == base => Candidate::Valid,
        Ok(b) => Candidate::Damaged(format!("header base seq {b} does not match the file name")),
        Err(HeaderError::UnsupportedVersion(version)) => {
            return Err(Error::Incompatible {
                path: path.to_path_buf(),
                version,
            })
        }
        Err(e) => Candidate::Damaged(e.to_string()),
    })
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
    /// No segment file (valid or not) has a higher base.
    is_newest: bool,
    /// Base of the next valid segment: bounds the seqs this one can hold.
    next_base: Option<u64>,
}

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
        is_newest,
        next_base,
    } = target;
    let file = if is_newest {
        sfs.open_write(path)?
    } else {
        sfs.open_read(path)?
    };
    let mut meta = SegmentMeta::new(base, path.to_path_buf());
    meta.len = len;
    let mut cursor = SegmentCursor::new(
        file,
        SEGMENT_HEADER_LEN,
        base.saturating_sub(1),
        RECOVERY_CHUNK,
    );
    let mut clean = true;
    let mut cut_seqs = 0;
    loop {
        match cursor.next(len)? {
            Step::End => break,
            Step::Record(f) => {
                meta.note_frame(f.seq, f.offset, f.appended_at_ms);
                if f.seq > confirmed {
                    report.records += 1;
                }
            }
            Step::Corrupt {
                offset,
                last_good,
                resumed: None,
            } if is_newest => {
                // Torn tail: the end of the newest segment is the only place an interrupted,
                // never-acknowledged group commit can leave a partial frame, or zeros the
                // writer preallocated and had not used yet (older segments were cut to their
                // last frame and fsync'd before the next one was created). Cut it off so new
                // frames follow the last good one. The cut bytes could also be an acknowledged
                // record damaged in place (even zeroed), so every seq they could hold is
                // skipped (`cut_seqs`), never reused.
                let (torn, zeros) = scan::split_tail(cursor.file(), offset, len)?;
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
            Step::Corrupt {
                offset,
                last_good,
                resumed,
            } => {
                let lost = Step::lost_records(last_good, resumed, next_base);
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
