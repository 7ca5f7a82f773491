//! A read-only look at a spool directory, for the operator tools (`hookbridge spool stats`,
//! `verify`, `inspect`).
//!
//! It must be safe to run next to a live bridge, so it **never takes the lock and never creates,
//! truncates, moves or deletes anything**: it lists the directory, reads headers, and scans
//! frames with the same [`SegmentCursor`] recovery and readers use, so all three agree on what a
//! valid frame is. What recovery would *change* (cut a torn tail, move a bad segment aside) is
//! reported here as a [`Finding`] instead.
//!
//! A live bridge keeps writing while we scan, so the view is a snapshot of each file as it was
//! when we opened it: a segment deleted after we listed it is skipped (it held only confirmed
//! records), and the newest segment may end in a half-written group commit. That is the same
//! shape as a torn tail after a crash, and is reported as [`FindingKind::TornTail`], never as
//! damage; whether a bridge holds the lock ([`LockState`]) only changes how it is described.

use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::format::{FrameHeader, FRAME_HEADER_LEN, MAX_RECORD_BYTES, SEGMENT_HEADER_LEN};
use super::fs::{self, RealFs, SpoolFile, SpoolFs, DAMAGED_DIR};
pub use super::layout::ConfirmedState;
use super::layout::{entry_kind, judge_segment_header, read_confirmed, EntryKind, SegmentHeader};
use super::scan::{Found, Place, SegmentCursor};
use super::CONFIRMED_FILE;

/// Read size while scanning.
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spool directory does not exist (nothing was created).
    #[error("{}: no such spool directory", .0.display())]
    NoSuchDir(PathBuf),
    /// Listing or reading a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Whether some process holds the spool's `LOCK` (i.e. a bridge or a tool has it open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    Held,
    Free,
    /// `/proc/locks` could not be read (not Linux, or no procfs).
    Unknown,
}

impl LockState {
    pub fn as_str(self) -> &'static str {
        match self {
            LockState::Held => "held",
            LockState::Free => "free",
            LockState::Unknown => "unknown",
        }
    }
}

/// One record as found on disk.
#[derive(Debug)]
pub struct RecordView<'a> {
    pub seq: u64,
    pub appended_at_ms: u64,
    /// At or below the confirmed position (still on disk because its segment is not deleted yet).
    pub confirmed: bool,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FindingKind {
    /// The segment header is short, has a bad magic, a base seq of 0, or disagrees with the file
    /// name. Damage: recovery moves the file into `damaged/` and replays none of its records.
    BadHeader(String),
    /// Bytes that are not a valid frame, followed by valid data (or at the end of a segment that
    /// is not the newest). Damage: recovery skips the records they held.
    Corrupt {
        /// Why the first bad frame was rejected.
        what: String,
        /// Seq of the last valid frame before the damage.
        last_good_seq: u64,
        /// Offset and seq of the first valid frame after it, if any.
        resumed: Option<(u64, u64)>,
        /// Records lost, judged from the seqs around the region (at least 1).
        lost: u64,
    },
    /// An incomplete frame at the end of the newest segment with nothing valid after it: a group
    /// commit in progress (bridge running) or interrupted by a crash (never acknowledged).
    /// Not damage; recovery truncates it on the next start.
    TornTail { bytes: u64 },
    /// Zeros after the newest segment's last frame (and after any torn tail): space the writer
    /// preallocated (`spool.preallocate_bytes`) for the next records. Not damage; a clean close
    /// cuts it, and so does recovery after a crash.
    Preallocated { bytes: u64 },
    /// The `confirmed` file is unreadable. Damage: recovery moves it aside and replays every
    /// record on disk (duplicates, no loss).
    ConfirmedCorrupt,
    /// A file in a format version this build cannot read: `run` would refuse to start.
    Unsupported(u32),
    /// A zero-length segment file (never held records; recovery removes it).
    EmptySegment,
    /// A temporary file (`confirmed.tmp`, `*.seg.tmp`): transient while a bridge runs, a
    /// leftover after a crash (recovery removes it).
    TempFile,
    /// The segment was deleted between listing and reading it: it held only confirmed records.
    Vanished,
}

/// Something `verify` reports about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// File name inside the spool directory.
    pub file: String,
    /// Byte offset in the file, when the finding is about a place in it.
    pub offset: Option<u64>,
    pub kind: FindingKind,
}

impl Finding {
    /// Damage is what loses or could lose records; everything else is a note.
    pub fn is_damage(&self) -> bool {
        matches!(
            self.kind,
            FindingKind::BadHeader(_) | FindingKind::Corrupt { .. } | FindingKind::ConfirmedCorrupt
        )
    }

    /// One line for an operator.
    pub fn describe(&self, lock: LockState) -> String {
        let at = match self.offset {
            Some(o) => format!("{} offset {o}", self.file),
            None => self.file.clone(),
        };
        match &self.kind {
            FindingKind::BadHeader(why) => format!(
                "DAMAGE {at}: bad segment header ({why}); the next start moves it into damaged/ and does not replay it"
            ),
            FindingKind::Corrupt {
                what,
                last_good_seq,
                resumed,
                lost,
            } => {
                let after = match resumed {
                    Some((off, seq)) => format!("resumes at offset {off} with seq {seq}"),
                    None => "nothing valid follows in this segment".to_owned(),
                };
                format!(
                    "DAMAGE {at}: corrupt record after seq {last_good_seq} ({what}); {after}; about {lost} record(s) lost"
                )
            }
            FindingKind::TornTail { bytes } => match lock {
                LockState::Held => format!(
                    "note   {at}: in-progress tail ({bytes} bytes): a running bridge is writing here"
                ),
                LockState::Free => format!(
                    "note   {at}: torn tail ({bytes} bytes) left by an interrupted write, never acknowledged; the next start truncates it"
                ),
                LockState::Unknown => format!(
                    "note   {at}: incomplete tail ({bytes} bytes): a write in progress, or torn by a crash (the next start truncates it)"
                ),
            },
            FindingKind::Preallocated { bytes } => match lock {
                LockState::Held => format!(
                    "note   {at}: {bytes} zero bytes preallocated for the next records"
                ),
                _ => format!(
                    "note   {at}: {bytes} zero bytes preallocated and not used (the bridge did not close the spool); the next start cuts them"
                ),
            },
            FindingKind::ConfirmedCorrupt => format!(
                "DAMAGE {at}: confirmed-position file is unreadable; the next start moves it aside and replays every record on disk"
            ),
            FindingKind::Unsupported(v) => format!(
                "ERROR  {at}: format version {v} is not supported by this build (a newer hookbridge wrote it)"
            ),
            FindingKind::EmptySegment => {
                format!("note   {at}: empty segment file; the next start removes it")
            }
            FindingKind::TempFile => format!(
                "note   {at}: temporary file (transient while a bridge runs; a crash leftover otherwise, removed on the next start)"
            ),
            FindingKind::Vanished => {
                format!("note   {at}: deleted while scanning (held only confirmed records)")
            }
        }
    }
}

/// What a scan of the directory found.
#[derive(Debug, Clone)]
pub struct Survey {
    pub dir: PathBuf,
    pub lock: LockState,
    pub confirmed: ConfirmedState,
    /// Segment files with a valid header.
    pub segments: usize,
    /// Bytes in those segment files.
    pub bytes: u64,
    /// Valid records found, confirmed ones included.
    pub records_on_disk: u64,
    /// Valid records above the confirmed position.
    pub unconfirmed: u64,
    /// Seq and append time (ms since the epoch) of the oldest unconfirmed record.
    pub oldest_unconfirmed: Option<(u64, u64)>,
    /// Highest valid seq on disk (0 if none).
    pub last_seq: u64,
    /// What the next append would get, judged from disk (a start after damage may skip more).
    pub next_seq: u64,
    /// Files in `damaged/`: moved aside by earlier recoveries, kept for a human.
    pub damaged_files: usize,
    pub findings: Vec<Finding>,
    /// False when the visitor stopped the scan early: counts then cover only what was scanned.
    pub complete: bool,
}

impl Survey {
    pub fn damage(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.is_damage())
    }

    /// A file this build cannot read was found, so the scan could not check everything.
    pub fn unsupported(&self) -> bool {
        self.findings
            .iter()
            .any(|f| matches!(f.kind, FindingKind::Unsupported(_)))
    }

    /// Bytes of the incomplete tail of the newest segment, if it has one.
    pub fn torn_tail_bytes(&self) -> u64 {
        self.bytes_of(|k| match k {
            FindingKind::TornTail { bytes } => Some(*bytes),
            _ => None,
        })
    }

    /// Zero bytes preallocated after the newest segment's last frame.
    pub fn preallocated_bytes(&self) -> u64 {
        self.bytes_of(|k| match k {
            FindingKind::Preallocated { bytes } => Some(*bytes),
            _ => None,
        })
    }

    /// Sum of the bytes `pick` finds in the findings.
    fn bytes_of(&self, pick: fn(&FindingKind) -> Option<u64>) -> u64 {
        self.findings.iter().filter_map(|f| pick(&f.kind)).sum()
    }
}

/// Scans `dir` read-only, calling `visit` for every valid record in seq order; `visit` returning
/// `Break` stops the scan (the survey is then marked incomplete). Frames are judged by the
/// format alone, as recovery judges them: no configuration is needed, or consulted.
pub fn survey(
    dir: &Path,
    visit: &mut dyn FnMut(&RecordView<'_>) -> ControlFlow<()>,
) -> Result<Survey, Error> {
    if !dir.is_dir() {
        return Err(Error::NoSuchDir(dir.to_owned()));
    }
    let mut s = Survey {
        dir: dir.to_owned(),
        lock: lock_state(dir),
        confirmed: ConfirmedState::Missing,
        segments: 0,
        bytes: 0,
        records_on_disk: 0,
        unconfirmed: 0,
        oldest_unconfirmed: None,
        last_seq: 0,
        next_seq: 1,
        damaged_files: 0,
        findings: Vec::new(),
        complete: true,
    };
    s.survey_confirmed()?;
    let candidates = s.survey_entries()?;
    let newest = candidates.last().map(|c| c.0);
    let mut last_base = 0;
    for (i, (base, name, path)) in candidates.iter().enumerate() {
        let place = Place {
            is_newest: Some(*base) == newest,
            next_base: candidates.get(i + 1).map(|c| c.0),
        };
        let Some((file, len)) = s.survey_header(*base, name, path)? else {
            continue;
        };
        last_base = *base;
        let cursor = SegmentCursor::new(file, SEGMENT_HEADER_LEN, base - 1, CHUNK);
        if s.survey_frames(cursor, len, name, path, place, visit)?
            .is_break()
        {
            s.complete = false;
            s.next_seq = s.last_seq.max(s.confirmed.position()) + 1;
            return Ok(s);
        }
    }
    s.next_seq = s
        .last_seq
        .max(s.confirmed.position())
        .max(last_base.saturating_sub(1))
        + 1;
    Ok(s)
}

impl Survey {
    fn note(&mut self, file: &str, offset: Option<u64>, kind: FindingKind) {
        self.findings.push(Finding {
            file: file.to_owned(),
            offset,
            kind,
        });
    }

    /// The `confirmed` file, judged as recovery judges it.
    fn survey_confirmed(&mut self) -> Result<(), Error> {
        let path = self.dir.join(CONFIRMED_FILE);
        self.confirmed = read_confirmed(&RealFs, &path).map_err(io_err(&path))?;
        let kind = match self.confirmed {
            ConfirmedState::Corrupt => Some(FindingKind::ConfirmedCorrupt),
            ConfirmedState::Unsupported(v) => Some(FindingKind::Unsupported(v)),
            _ => None,
        };
        if let Some(kind) = kind {
            self.note(CONFIRMED_FILE, None, kind);
        }
        Ok(())
    }

    /// Lists the directory: counts `damaged/`, notes temporary files, and returns the segment
    /// files as (base, name, path) in base order.
    fn survey_entries(&mut self) -> Result<Vec<(u64, String, PathBuf)>, Error> {
        let mut candidates = Vec::new();
        for e in fs::list_dir(&RealFs, &self.dir).map_err(io_err(&self.dir))? {
            if e.name == DAMAGED_DIR && !e.is_file {
                self.damaged_files = fs::list_dir(&RealFs, &e.path).map(|l| l.len()).unwrap_or(0);
                continue;
            }
            if !e.is_file {
                continue;
            }
            match entry_kind(&e.name, e.is_file) {
                EntryKind::Known | EntryKind::Unexpected => {}
                EntryKind::Temp => self.note(&e.name, None, FindingKind::TempFile),
                EntryKind::Segment(base) => candidates.push((base, e.name, e.path)),
            }
        }
        candidates.sort_by_key(|c| c.0);
        Ok(candidates)
    }

    /// Opens a segment and judges its header as recovery does; `None` (with a finding) when
    /// there is nothing to scan.
    fn survey_header(
        &mut self,
        base: u64,
        name: &str,
        path: &Path,
    ) -> Result<Option<(SpoolFile, u64)>, Error> {
        let file = match RealFs.open_read(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.note(name, None, FindingKind::Vanished);
                return Ok(None);
            }
            Err(e) => return Err(io_err(path)(e)),
        };
        let len = file.len().map_err(io_err(path))?;
        let header =
            judge_segment_header(base, len, |h| file.read_exact_at(h, 0)).map_err(io_err(path))?;
        let (kind, offset) = match header {
            SegmentHeader::Valid { .. } => {
                self.segments += 1;
                self.bytes += len;
                return Ok(Some((file, len)));
            }
            SegmentHeader::Empty => (FindingKind::EmptySegment, None),
            SegmentHeader::Damaged(why) => (FindingKind::BadHeader(why), Some(0)),
            SegmentHeader::Unsupported(v) => (FindingKind::Unsupported(v), Some(0)),
        };
        self.note(name, offset, kind);
        Ok(None)
    }

    /// Scans a segment's frames (`len` bytes) from `cursor`, counting records, showing them to `visit` and noting what is
    /// not a record. `Break` when `visit` stopped the scan.
    fn survey_frames(
        &mut self,
        mut cursor: SegmentCursor,
        len: u64,
        name: &str,
        path: &Path,
        place: Place,
        visit: &mut dyn FnMut(&RecordView<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Error> {
        let confirmed = self.confirmed.position();
        while let Some(found) = cursor.next_found(len, place).map_err(io_err(path))? {
            match found {
                Found::Record(f) => {
                    self.records_on_disk += 1;
                    self.last_seq = self.last_seq.max(f.seq);
                    let is_confirmed = f.seq <= confirmed;
                    if !is_confirmed {
                        self.unconfirmed += 1;
                        self.oldest_unconfirmed
                            .get_or_insert((f.seq, f.appended_at_ms));
                    }
                    let view = RecordView {
                        seq: f.seq,
                        appended_at_ms: f.appended_at_ms,
                        confirmed: is_confirmed,
                        payload: cursor.payload(&f),
                    };
                    if visit(&view).is_break() {
                        return Ok(ControlFlow::Break(()));
                    }
                }
                Found::Tail {
                    offset,
                    torn,
                    zeros,
                    ..
                } => {
                    if torn > 0 {
                        self.note(name, Some(offset), FindingKind::TornTail { bytes: torn });
                    }
                    if zeros > 0 {
                        let kind = FindingKind::Preallocated { bytes: zeros };
                        self.note(name, Some(offset + torn), kind);
                    }
                }
                Found::Corrupt {
                    offset,
                    last_good,
                    resumed,
                    lost,
                } => {
                    let what =
                        diagnose(cursor.file(), offset, len, last_good).map_err(io_err(path))?;
                    let kind = FindingKind::Corrupt {
                        what,
                        last_good_seq: last_good,
                        resumed: resumed.map(|f| (f.offset, f.seq)),
                        lost,
                    };
                    self.note(name, Some(offset), kind);
                }
            }
        }
        Ok(ControlFlow::Continue(()))
    }
}

/// Says why the bytes at `offset` are not the frame carrying `last_good + 1`.
fn diagnose(file: &SpoolFile, offset: u64, limit: u64, last_good: u64) -> io::Result<String> {
    if offset + FRAME_HEADER_LEN > limit {
        return Ok(format!(
            "incomplete frame header: {} bytes before the end of the segment",
            limit - offset
        ));
    }
    let mut hb = [0u8; FRAME_HEADER_LEN as usize];
    file.read_exact_at(&mut hb, offset)?;
    let h = FrameHeader::decode(&hb);
    if h.len > MAX_RECORD_BYTES {
        return Ok(format!(
            "length field {} exceeds the format's largest record ({MAX_RECORD_BYTES})",
            h.len
        ));
    }
    if offset + h.frame_len() > limit {
        return Ok(format!(
            "length field {} runs past the end of the segment",
            h.len
        ));
    }
    if h.seq != last_good + 1 {
        return Ok(format!(
            "seq {} where {} was expected",
            h.seq,
            last_good + 1
        ));
    }
    let mut frame = vec![0u8; h.frame_len() as usize];
    file.read_exact_at(&mut frame, offset)?;
    Ok(if h.crc_matches(&frame) {
        "frame rejected".to_owned()
    } else {
        format!("CRC mismatch in the frame of seq {}", h.seq)
    })
}

/// Whether any process holds the flock on `dir/LOCK`, judged from `/proc/locks` so that we never
/// take the lock ourselves: even a momentary try-lock could make a bridge that is starting right
/// then fail with "locked".
pub fn lock_state(dir: &Path) -> LockState {
    let meta = match std::fs::metadata(dir.join("LOCK")) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return LockState::Free,
        Err(_) => return LockState::Unknown,
    };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return LockState::Unknown;
    };
    // `/proc/locks` prints the device as hex major:minor; decode st_dev the way glibc does.
    let dev = meta.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let want = (major, minor, meta.ino());
    let held = locks.lines().any(|line| {
        // `N: FLOCK  ADVISORY  WRITE pid MAJ:MIN:INODE start end`; waiters have `->` after N:
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&"FLOCK") {
            return false;
        }
        let Some(id) = f.get(5) else { return false };
        let mut parts = id.split(':');
        let parsed = (|| {
            Some((
                u64::from_str_radix(parts.next()?, 16).ok()?,
                u64::from_str_radix(parts.next()?, 16).ok()?,
                parts.next()?.parse::<u64>().ok()?,
            ))
        })();
        parsed == Some(want)
    });
    if held {
        LockState::Held
    } else {
        LockState::Free
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::format::{encode_confirmed, encode_frame, encode_segment_header};

    fn write_segment(dir: &Path, base: u64, n: u64) -> (PathBuf, Vec<u64>) {
        let mut bytes = encode_segment_header(base).to_vec();
        let mut offsets = Vec::new();
        for i in 0..n {
            offsets.push(bytes.len() as u64);
            encode_frame(&mut bytes, base + i, 1000 + i, format!("rec{i}").as_bytes());
        }
        let path = dir.join(crate::spool::format::segment_file_name(base));
        std::fs::write(&path, &bytes).unwrap();
        (path, offsets)
    }

    fn listing(dir: &Path) -> Vec<(String, u64)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn counts_records_and_reports_without_changing_anything() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 5);
        let (path, offsets) = write_segment(dir.path(), 6, 5);
        std::fs::write(dir.path().join(CONFIRMED_FILE), encode_confirmed(3)).unwrap();
        // Flip a payload byte of seq 8 and tear the tail of seq 10.
        let mut b = std::fs::read(&path).unwrap();
        b[offsets[2] as usize + 25] ^= 1;
        b.truncate(b.len() - 2);
        std::fs::write(&path, &b).unwrap();
        std::fs::write(dir.path().join("confirmed.tmp"), b"x").unwrap();
        let before = listing(dir.path());

        let mut seen = Vec::new();
        let s = survey(dir.path(), &mut |r| {
            seen.push((r.seq, r.confirmed));
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(listing(dir.path()), before, "nothing on disk changed");
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6, 7, 9]
        );
        assert!(seen[2].1 && !seen[3].1);
        assert_eq!((s.segments, s.records_on_disk, s.unconfirmed), (2, 8, 5));
        assert_eq!(s.oldest_unconfirmed, Some((4, 1003)));
        assert_eq!(s.confirmed, ConfirmedState::Valid(3));
        assert_eq!(s.lock, LockState::Free);
        let damage: Vec<_> = s.damage().collect();
        assert_eq!(damage.len(), 1, "{:?}", s.findings);
        assert_eq!(damage[0].offset, Some(offsets[2]));
        assert!(
            matches!(&damage[0].kind, FindingKind::Corrupt { what, lost: 1, .. } if what.contains("CRC"))
        );
        assert_eq!(s.torn_tail_bytes(), b.len() as u64 - offsets[4]);
        assert!(s.findings.iter().any(|f| f.kind == FindingKind::TempFile));
        assert_eq!(s.next_seq, 10);
    }

    fn set_version(path: &Path, version: u32) {
        let mut b = std::fs::read(path).unwrap();
        b[8..12].copy_from_slice(&version.to_le_bytes());
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn version_1_segments_are_read_and_version_3_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (old, _) = write_segment(dir.path(), 1, 3);
        set_version(&old, 1);
        let (new, _) = write_segment(dir.path(), 4, 2);
        let s = survey(dir.path(), &mut |_| ControlFlow::Continue(())).unwrap();
        assert_eq!((s.segments, s.records_on_disk), (2, 5));
        assert_eq!(s.damage().count(), 0, "{:?}", s.findings);

        set_version(&new, 3);
        let s = survey(dir.path(), &mut |_| ControlFlow::Continue(())).unwrap();
        assert_eq!((s.segments, s.records_on_disk), (1, 3));
        assert!(
            s.findings
                .iter()
                .any(|f| f.kind == FindingKind::Unsupported(3) && f.offset == Some(0)),
            "{:?}",
            s.findings
        );
    }

    #[test]
    fn zeros_after_the_newest_frame_are_preallocated_space_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 3);
        let (path, _) = write_segment(dir.path(), 4, 3);
        let mut b = std::fs::read(&path).unwrap();
        let end = b.len() as u64;
        b.resize(b.len() + 5000, 0);
        std::fs::write(&path, &b).unwrap();
        let s = survey(dir.path(), &mut |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(s.damage().count(), 0, "{:?}", s.findings);
        assert_eq!((s.torn_tail_bytes(), s.preallocated_bytes()), (0, 5000));
        assert_eq!(s.records_on_disk, 6);

        // A frame torn half-way into the zeros: both, each for its own bytes.
        b[end as usize..end as usize + 10].fill(0x5A);
        std::fs::write(&path, &b).unwrap();
        let s = survey(dir.path(), &mut |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(s.damage().count(), 0, "{:?}", s.findings);
        assert_eq!((s.torn_tail_bytes(), s.preallocated_bytes()), (10, 4990));
        let offsets: Vec<_> = s.findings.iter().map(|f| f.offset).collect();
        assert_eq!(offsets, vec![Some(end), Some(end + 10)]);
    }

    #[test]
    fn bad_headers_and_confirmed_file_are_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_segment(dir.path(), 1, 2);
        std::fs::rename(
            &path,
            dir.path().join(crate::spool::format::segment_file_name(7)),
        )
        .unwrap();
        std::fs::write(dir.path().join(CONFIRMED_FILE), b"garbage").unwrap();
        let s = survey(dir.path(), &mut |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(s.damage().count(), 2, "{:?}", s.findings);
        assert_eq!(s.segments, 0);
    }

    #[test]
    fn missing_dir_is_an_error_and_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(
            survey(&missing, &mut |_| ControlFlow::Continue(())),
            Err(Error::NoSuchDir(_))
        ));
        assert!(!missing.exists());
    }
}
