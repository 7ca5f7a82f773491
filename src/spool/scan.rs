//! Sequential frame scanning over one segment file, with resynchronisation after corruption.
//! Recovery and readers both scan through [`SegmentCursor`], so they agree on what a valid frame
//! is and where the record after a corrupt one starts.
//!
//! # Which frames are accepted
//!
//! A frame at offset `off` is accepted only if all of these hold:
//! 1. its header and `len` payload bytes lie before the scan limit;
//! 2. `len <= MAX_RECORD_BYTES`, the format's bound (never the configured append limit, which
//!    may have been larger when the frame was written);
//! 3. `last_good < seq <= last_good + 1 + (off - good_end) / FRAME_HEADER_LEN`, where `last_good`
//!    is the seq of the last accepted frame and `good_end` the offset just past it;
//! 4. the CRC-32C verifies.
//!
//! Rule 3 rests on the segment invariant that the i-th frame of a segment carries seq
//! `base + i` (the writer starts a new segment whenever the next seq would not continue the
//! active one). Right after a good frame (`off == good_end`) only `last_good + 1` is accepted;
//! after skipping `d` bytes at most `d / FRAME_HEADER_LEN` frames can have been lost, so the
//! window widens by one seq per 24 skipped bytes. Zeroed or stale bytes therefore fail cheaply
//! before any CRC is computed, and a frame that happens to be embedded in some payload (payloads
//! are untrusted webhook bodies) is accepted during resync only if it also guesses a sequence
//! number within that narrow window and a valid CRC. Since no frame carries seq 0, resync also
//! jumps over a run of zero bytes (preallocated space, or pages that never reached the disk) to
//! 15 bytes before the next non-zero byte, at memory speed: the rules above reject every
//! offset it skips.

use std::io;

use super::format::{decode_frame, FrameHeader, FRAME_HEADER_LEN, MAX_RECORD_BYTES};
use super::fs::SpoolFile;

/// A verified frame found by the cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameInfo {
    pub offset: u64,
    pub seq: u64,
    pub appended_at_ms: u64,
    pub len: u32,
}

impl FrameInfo {
    pub(crate) fn end(&self) -> u64 {
        self.offset + FRAME_HEADER_LEN + u64::from(self.len)
    }
}

/// One step of a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// A valid frame; its payload is available from [`SegmentCursor::payload`] until the next call.
    Record(FrameInfo),
    /// The bytes at `offset` are not a valid frame. `resumed` is the next valid frame (returned
    /// by the following call), or `None` if no valid frame starts before the limit (the cursor
    /// then sits at the limit). `last_good` is the seq of the last valid frame before `offset`.
    Corrupt {
        offset: u64,
        last_good: u64,
        resumed: Option<FrameInfo>,
    },
    /// The cursor reached the limit.
    End,
}

impl Step {
    /// Records lost in a corrupt region, judged from the seq numbers around it (at least one).
    /// `next_seq` is the first seq known to follow the region when it runs to the limit.
    pub(crate) fn lost_records(
        last_good: u64,
        resumed: Option<FrameInfo>,
        next_seq: Option<u64>,
    ) -> u64 {
        let next = resumed.map(|f| f.seq).or(next_seq);
        next.map_or(1, |n| n.saturating_sub(last_good + 1)).max(1)
    }
}

/// Buffered, positional scanner over one segment file.
#[derive(Debug)]
pub(crate) struct SegmentCursor {
    file: SpoolFile,
    /// Offset of the next frame to look at.
    pos: u64,
    last_good: u64,
    good_end: u64,
    /// File bytes `[buf_off, buf_off + buf.len())`.
    buf: Vec<u8>,
    buf_off: u64,
    /// Minimum read size.
    chunk: usize,
}

impl SegmentCursor {
    /// A cursor positioned at `offset`, which must be a frame boundary whose frame carries
    /// `last_good + 1` (the segment's first frame with `last_good = base - 1`, or a checkpoint).
    pub(crate) fn new(file: SpoolFile, offset: u64, last_good: u64, chunk: usize) -> Self {
        SegmentCursor {
            file,
            pos: offset,
            last_good,
            good_end: offset,
            buf: Vec::new(),
            buf_off: 0,
            chunk,
        }
    }

    pub(crate) fn file(&self) -> &SpoolFile {
        &self.file
    }

    pub(crate) fn into_file(self) -> SpoolFile {
        self.file
    }

    /// Payload of the frame just returned as [`Step::Record`].
    pub(crate) fn payload(&self, f: &FrameInfo) -> &[u8] {
        let start = (f.offset + FRAME_HEADER_LEN - self.buf_off) as usize;
        &self.buf[start..start + f.len as usize]
    }

    /// Scans the next frame below `limit` (a frame boundary: end of file, or of the committed
    /// data). The cursor's position only moves when a call succeeds, so after an I/O error the
    /// same call can be repeated.
    pub(crate) fn next(&mut self, limit: u64) -> io::Result<Step> {
        if self.pos >= limit {
            return Ok(Step::End);
        }
        if let Some(f) = self.frame_at(self.pos, limit)? {
            self.pos = f.end();
            self.last_good = f.seq;
            self.good_end = f.end();
            return Ok(Step::Record(f));
        }
        // Resync: the frame boundary is lost, so try every following byte offset. Committed data
        // and whole segments end on a frame boundary, so every frame after the damage starts
        // below `limit` and ends at or before it; scanning to the limit cannot miss one.
        let bad = self.pos;
        let mut candidate = bad + 1;
        while candidate + FRAME_HEADER_LEN <= limit {
            // A frame's seq (bytes 8..16) is never zero, so a frame cannot start more than 15
            // bytes before the next non-zero byte: zeroed space (preallocated, or a page that
            // never reached the disk) is crossed at memory speed, not byte by byte.
            let nonzero = self.next_nonzero(candidate, limit)?;
            candidate = candidate.max(nonzero.saturating_sub(15));
            if candidate + FRAME_HEADER_LEN > limit {
                break;
            }
            if let Some(f) = self.frame_at(candidate, limit)? {
                self.pos = candidate;
                return Ok(Step::Corrupt {
                    offset: bad,
                    last_good: self.last_good,
                    resumed: Some(f),
                });
            }
            candidate += 1;
        }
        self.pos = limit;
        Ok(Step::Corrupt {
            offset: bad,
            last_good: self.last_good,
            resumed: None,
        })
    }

    /// The frame at `off` if it passes every rule in the module docs.
    fn frame_at(&mut self, off: u64, limit: u64) -> io::Result<Option<FrameInfo>> {
        if off + FRAME_HEADER_LEN > limit {
            return Ok(None);
        }
        self.ensure(off, FRAME_HEADER_LEN, limit)?;
        let i = (off - self.buf_off) as usize;
        // Cheap checks on the header first, so zeroed or stale bytes fail without a CRC.
        let h = FrameHeader::decode(&self.buf[i..i + FRAME_HEADER_LEN as usize]);
        // Invariant 3: judged by the format's bound, not by today's append limit, so a record
        // acknowledged under a larger limit is not skipped (or cut off as a torn tail).
        if h.len > MAX_RECORD_BYTES || off + h.frame_len() > limit {
            return Ok(None);
        }
        let max_seq = self
            .last_good
            .saturating_add(1 + (off - self.good_end) / FRAME_HEADER_LEN);
        if h.seq <= self.last_good || h.seq > max_seq {
            return Ok(None);
        }
        self.ensure(off, h.frame_len(), limit)?;
        let i = (off - self.buf_off) as usize;
        if decode_frame(&self.buf[i..i + h.frame_len() as usize]).is_err() {
            return Ok(None);
        }
        Ok(Some(FrameInfo {
            offset: off,
            seq: h.seq,
            appended_at_ms: h.appended_at_ms,
            len: h.len,
        }))
    }

    /// Offset of the first non-zero byte at or after `off` and before `limit`, else `limit`.
    fn next_nonzero(&mut self, mut off: u64, limit: u64) -> io::Result<u64> {
        while off < limit {
            self.ensure(off, 1, limit)?;
            let i = (off - self.buf_off) as usize;
            if let Some(n) = self.buf[i..].iter().position(|&b| b != 0) {
                return Ok(off + n as u64);
            }
            off = self.buf_off + self.buf.len() as u64;
        }
        Ok(limit)
    }

    /// Makes file bytes `[off, off + n)` available in `buf` (`off + n <= limit`), reading at least
    /// a chunk at a time but never past `limit`.
    fn ensure(&mut self, off: u64, n: u64, limit: u64) -> io::Result<()> {
        if off >= self.buf_off && off + n <= self.buf_off + self.buf.len() as u64 {
            return Ok(());
        }
        let want = n.max(self.chunk as u64).min(limit - off) as usize;
        self.buf.resize(want, 0);
        if let Err(e) = self.file.read_exact_at(&mut self.buf, off) {
            self.buf.clear();
            return Err(e);
        }
        self.buf_off = off;
        Ok(())
    }
}

/// Where a segment stands among the others, which decides what a bad region in it means.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    /// No segment file has a higher base: only here can a write have been interrupted.
    pub is_newest: bool,
    /// Base of the next segment: bounds the seqs this one can hold.
    pub next_base: Option<u64>,
}

/// What a scan of a whole segment finds, judged the same way by recovery (which acts on it) and
/// the operator tools (which report it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// A valid frame; its payload is available from [`SegmentCursor::payload`] until the next
    /// call.
    Record(FrameInfo),
    /// Bad bytes at the end of the newest segment with nothing valid after them: not damage.
    /// The first `torn` bytes (up to the last non-zero byte) are a group commit that never
    /// completed, so never acknowledged; the `zeros` after them are space the writer
    /// preallocated. Recovery cuts both off.
    Tail {
        offset: u64,
        last_good: u64,
        torn: u64,
        zeros: u64,
    },
    /// Bad bytes followed by valid data, or at the end of an older segment (older segments are
    /// fsync'd and cut to their last frame before the next exists, so this cannot be a torn
    /// write): damage, `lost` records judged from the seqs around the region (at least 1).
    Corrupt {
        offset: u64,
        last_good: u64,
        resumed: Option<FrameInfo>,
        lost: u64,
    },
}

impl SegmentCursor {
    /// The next thing found below `limit` (the end of the file) in a segment at `place`, or
    /// `None` at the limit. After an I/O error the scan cannot be resumed.
    pub(crate) fn next_found(&mut self, limit: u64, place: Place) -> io::Result<Option<Found>> {
        Ok(Some(match self.next(limit)? {
            Step::End => return Ok(None),
            Step::Record(f) => Found::Record(f),
            Step::Corrupt {
                offset,
                last_good,
                resumed: None,
            } if place.is_newest => {
                let (torn, zeros) = split_tail(&self.file, offset, limit)?;
                Found::Tail {
                    offset,
                    last_good,
                    torn,
                    zeros,
                }
            }
            Step::Corrupt {
                offset,
                last_good,
                resumed,
            } => Found::Corrupt {
                offset,
                last_good,
                resumed,
                lost: Step::lost_records(last_good, resumed, place.next_base),
            },
        }))
    }
}

/// Splits the bytes `[from, limit)` after a segment's last frame at its last non-zero byte: the
/// torn write before it and the zeros the writer had preallocated after it, in bytes.
fn split_tail(file: &SpoolFile, from: u64, limit: u64) -> io::Result<(u64, u64)> {
    let end = nonzero_end(file, from, limit)?;
    Ok((end - from, limit - end))
}

/// End of the last non-zero byte in `[from, limit)` of `file` (`from` if they are all zero).
fn nonzero_end(file: &SpoolFile, from: u64, limit: u64) -> io::Result<u64> {
    const BLOCK: u64 = 64 * 1024;
    let mut buf = vec![0u8; BLOCK.min(limit.saturating_sub(from)) as usize];
    let mut end = limit;
    while end > from {
        let start = end.saturating_sub(BLOCK).max(from);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b != 0) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::format::{encode_frame, encode_segment_header, SEGMENT_HEADER_LEN};
    use crate::spool::fs::{RealFs, SpoolFs};

    const H: u64 = SEGMENT_HEADER_LEN;

    /// A segment file with base 1 holding `payloads` as seqs 1..; returns the frame offsets.
    fn segment(
        dir: &tempfile::TempDir,
        payloads: &[&[u8]],
    ) -> (std::path::PathBuf, Vec<u64>, Vec<u8>) {
        let mut bytes = encode_segment_header(1).to_vec();
        let mut offsets = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            offsets.push(bytes.len() as u64);
            encode_frame(&mut bytes, i as u64 + 1, 1000 + i as u64, p);
        }
        let path = dir.path().join("seg");
        std::fs::write(&path, &bytes).unwrap();
        (path, offsets, bytes)
    }

    fn scan(path: &std::path::Path, chunk: usize) -> Vec<Step> {
        let file = RealFs.open_read(path).unwrap();
        let limit = file.len().unwrap();
        let mut c = SegmentCursor::new(file, H, 0, chunk);
        let mut steps = Vec::new();
        loop {
            match c.next(limit).unwrap() {
                Step::End => return steps,
                s => steps.push(s),
            }
        }
    }

    fn seqs(steps: &[Step]) -> Vec<u64> {
        steps
            .iter()
            .filter_map(|s| {
                if let Step::Record(f) = s {
                    Some(f.seq)
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn reads_all_frames_with_tiny_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, _) = segment(&dir, &[b"a", b"", &[7; 300], b"d"]);
        let file = RealFs.open_read(&path).unwrap();
        let limit = file.len().unwrap();
        let mut c = SegmentCursor::new(file, H, 0, 1);
        let mut got = Vec::new();
        while let Step::Record(f) = c.next(limit).unwrap() {
            got.push((f.seq, c.payload(&f).to_vec()));
        }
        assert_eq!(
            got,
            vec![
                (1, b"a".to_vec()),
                (2, vec![]),
                (3, vec![7; 300]),
                (4, b"d".to_vec())
            ]
        );
    }

    #[test]
    fn resyncs_after_corrupt_len() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets, mut bytes) = segment(&dir, &[b"one", b"two", b"three", b"four"]);
        bytes[offsets[1] as usize] ^= 0x40; // len of seq 2
        std::fs::write(&path, &bytes).unwrap();
        let steps = scan(&path, 7);
        assert_eq!(seqs(&steps), vec![1, 3, 4]);
        let Step::Corrupt {
            offset,
            last_good,
            resumed: Some(f),
        } = steps[1]
        else {
            panic!("{steps:?}")
        };
        assert_eq!((offset, last_good, f.offset), (offsets[1], 1, offsets[2]));
        assert_eq!(Step::lost_records(last_good, Some(f), None), 1);
    }

    #[test]
    fn corrupt_len_within_the_format_bound_is_still_caught() {
        // With a bound of 64 MiB most corrupt lengths pass the bound check; the frame running
        // past the data, the seq window and the CRC must still catch them.
        for bad_len in [
            3 + (1 << 16), // past the end of this small file
            MAX_RECORD_BYTES,
            3 + (24 + 5) + (24 + 4), // swallows seqs 3 and 4 exactly: CRC over the wrong bytes
            100,                     // ends inside seq 4
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (path, offsets, mut bytes) =
                segment(&dir, &[b"one", b"two", b"three", b"four", b"five"]);
            let o = offsets[1] as usize;
            bytes[o..o + 4].copy_from_slice(&bad_len.to_le_bytes());
            std::fs::write(&path, &bytes).unwrap();
            let steps = scan(&path, 16);
            assert_eq!(seqs(&steps), vec![1, 3, 4, 5], "len {bad_len}");
        }
    }

    #[test]
    fn torn_tail_resyncs_to_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets, bytes) = segment(&dir, &[b"one", b"two", &[9; 100]]);
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let steps = scan(&path, 64);
        assert_eq!(seqs(&steps), vec![1, 2]);
        assert_eq!(
            steps[2],
            Step::Corrupt {
                offset: offsets[2],
                last_good: 2,
                resumed: None
            }
        );
    }

    #[test]
    fn frame_embedded_in_a_payload_is_not_taken_for_the_next_record() {
        // A payload that contains a perfectly valid frame with an out-of-window seq.
        let mut fake = vec![0u8; 8];
        encode_frame(&mut fake, 1_000_000, 1, b"forged");
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets, mut bytes) = segment(&dir, &[b"one", &fake, b"three"]);
        bytes[offsets[1] as usize + 4] ^= 0xFF; // CRC of seq 2: the frame holding the fake
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(seqs(&scan(&path, 16)), vec![1, 3]);
    }

    #[test]
    fn resync_jumps_zeros_without_missing_the_frame_after_them() {
        // An empty payload puts the first non-zero byte of a frame as late as it can be, in
        // its seq (a zero len, and a CRC that may start with zero bytes).
        for zeros in [1, 15, 16, 24, 4096, 100_000] {
            let mut bytes = encode_segment_header(1).to_vec();
            encode_frame(&mut bytes, 1, 1000, b"a");
            bytes.resize(bytes.len() + zeros, 0);
            let second = bytes.len() as u64;
            encode_frame(&mut bytes, 2, 0, b"");
            encode_frame(&mut bytes, 3, 0, b"c");
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("seg");
            std::fs::write(&path, &bytes).unwrap();
            let steps = scan(&path, 512);
            assert_eq!(seqs(&steps), vec![1, 2, 3], "{zeros} zeros");
            let Step::Corrupt {
                resumed: Some(f), ..
            } = steps[1]
            else {
                panic!("{steps:?}")
            };
            assert_eq!(f.offset, second);
        }
    }

    #[test]
    fn zeroed_region_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets, mut bytes) = segment(&dir, &[b"one", &[1; 200], &[2; 200], b"four"]);
        let (a, b) = (offsets[1] as usize, offsets[3] as usize);
        bytes[a..b].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let steps = scan(&path, 32);
        assert_eq!(seqs(&steps), vec![1, 4]);
        let Step::Corrupt {
            last_good, resumed, ..
        } = steps[1]
        else {
            panic!()
        };
        assert_eq!(Step::lost_records(last_good, resumed, None), 2);
    }
}
