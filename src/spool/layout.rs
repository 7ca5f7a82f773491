//! What each file of a spool directory is: its entries, the confirmed-position file and segment
//! headers. Judged here once, for recovery (which acts on the verdict: removes, moves aside,
//! refuses to start) and for the operator tools in `inspect.rs` (which only report it), so the
//! two never disagree. What lies inside a segment is judged by `scan.rs`.

use std::io;
use std::path::Path;

use super::format::{
    decode_confirmed, decode_segment_header, parse_segment_file_name, ConfirmedError, HeaderError,
    SEGMENT_HEADER_LEN,
};
use super::fs::{self, SpoolFs, DAMAGED_DIR, DEAD_LETTER_DIR};
use super::{CONFIRMED_FILE, CONFIRMED_TMP_FILE};

/// What an entry of the spool directory is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EntryKind {
    /// Ours, and not a segment: `LOCK`, `confirmed`, `damaged/`, `dead-letter/`, the
    /// de-duplication journal.
    Known,
    /// A file left by an interrupted crash-safe replace (`confirmed.tmp`, `*.seg.tmp`): never
    /// renamed into place, so never referenced.
    Temp,
    /// A segment file, with the base seq its name gives.
    Segment(u64),
    /// Anything else: not ours, left alone.
    Unexpected,
}

/// Judges a directory entry by its name (and whether it is a plain file).
pub(super) fn entry_kind(name: &str, is_file: bool) -> EntryKind {
    if name == "LOCK"
        || name == CONFIRMED_FILE
        || name == DAMAGED_DIR
        || name == DEAD_LETTER_DIR
        || name.starts_with("dedup.journal")
    {
        return EntryKind::Known;
    }
    if is_file
        && (name == CONFIRMED_TMP_FILE
            || name
                .strip_suffix(".tmp")
                .and_then(parse_segment_file_name)
                .is_some())
    {
        return EntryKind::Temp;
    }
    match parse_segment_file_name(name) {
        Some(base) if is_file => EntryKind::Segment(base),
        _ => EntryKind::Unexpected,
    }
}

/// What the `confirmed` file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfirmedState {
    /// No file: nothing was ever confirmed (position 0).
    Missing,
    Valid(u64),
    /// Wrong size, magic or CRC: recovery moves it aside and replays everything.
    Corrupt,
    /// A format version this build does not know.
    Unsupported(u32),
}

impl ConfirmedState {
    /// The position recovery uses.
    pub fn position(self) -> u64 {
        match self {
            ConfirmedState::Valid(p) => p,
            _ => 0,
        }
    }
}

/// Reads and judges the confirmed-position file at `path`.
pub(super) fn read_confirmed(sfs: &dyn SpoolFs, path: &Path) -> io::Result<ConfirmedState> {
    Ok(match fs::read_small(sfs, path)? {
        None => ConfirmedState::Missing,
        Some(b) => match decode_confirmed(&b) {
            Ok(p) => ConfirmedState::Valid(p),
            Err(ConfirmedError::Corrupt) => ConfirmedState::Corrupt,
            Err(ConfirmedError::UnsupportedVersion(v)) => ConfirmedState::Unsupported(v),
        },
    })
}

/// How a segment file looks by its length and header, before any frame is scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SegmentHeader {
    /// A header of a version this build reads (`format::OLDEST_READABLE_VERSION` ..=
    /// `format::FORMAT_VERSION`).
    Valid { version: u32 },
    /// Zero length: segments appear by rename after their header is fsync'd, so it never held a
    /// record of ours.
    Empty,
    /// Short or bad header, a base seq of 0, or one that disagrees with the file name.
    Damaged(String),
    /// A format version this build does not know.
    Unsupported(u32),
}

/// Judges the segment named for `base`, `len` bytes long. `read_header` fills the buffer it is
/// given with the file's first bytes; it is not called for an empty file.
pub(super) fn judge_segment_header(
    base: u64,
    len: u64,
    read_header: impl FnOnce(&mut [u8]) -> io::Result<()>,
) -> io::Result<SegmentHeader> {
    if len == 0 {
        return Ok(SegmentHeader::Empty);
    }
    let mut header = vec![0u8; len.min(SEGMENT_HEADER_LEN) as usize];
    read_header(&mut header)?;
    Ok(match decode_segment_header(&header) {
        Ok(h) if h.base_seq == 0 => {
            SegmentHeader::Damaged("base seq 0 (seqs start at 1)".to_owned())
        }
        Ok(h) if h.base_seq == base => SegmentHeader::Valid { version: h.version },
        Ok(h) => SegmentHeader::Damaged(format!(
            "header base seq {} does not match the file name",
            h.base_seq
        )),
        Err(HeaderError::UnsupportedVersion(v)) => SegmentHeader::Unsupported(v),
        Err(e) => SegmentHeader::Damaged(e.to_string()),
    })
}
