//! On-disk layouts: the segment header, the record frame and the confirmed-position file.
//!
//! Everything in this file is persistent format. DO NOT reorder fields, change their sizes or
//! endianness, or change what a CRC covers without bumping [`FORMAT_VERSION`] and teaching
//! recovery to read the previous version: a spool written by the running release must stay
//! readable by the next one. All integers are little-endian.
//!
//! Segment format versions (the header's version field):
//!
//! | version | written by | frames | payloads (`crate::delivery`) |
//! |--------:|------------|--------|------------------------------|
//! | 1 | up to release efe9fd6 | as below | delivery records V1–V3 |
//! | 2 | this release on | as below (unchanged) | V1–V4 (V4: endpoint, trace context) |
//!
//! The frame layout did not change in version 2; what changed is what a payload may be. The
//! version is bumped so that a release that cannot decode a V4 payload never reads one: it
//! refuses every segment of version 2 at open (`Error::Incompatible`, naming the file) before
//! changing anything. For that to hold, the writer never appends to a segment of an older
//! version: recovery does not hand it one as the active segment, so the first append after an
//! upgrade starts a new segment of [`FORMAT_VERSION`] (`recovery.rs`, `scan_segments`).
//! Readers accept [`OLDEST_READABLE_VERSION`] ..= [`FORMAT_VERSION`].

use std::fmt;

/// Format version written into the header of every new segment.
pub(crate) const FORMAT_VERSION: u32 = 2;

/// Oldest segment format version this build reads (and keeps reading until its records are
/// confirmed and the segment deleted; it is never appended to).
pub(crate) const OLDEST_READABLE_VERSION: u32 = 1;

/// Format version of the confirmed-position file, written and the only one read. Its layout
/// did not change with segment version 2, so it stays 1: an older release reads it, and
/// refuses the spool by its version-2 segment instead, naming that file.
pub(crate) const CONFIRMED_VERSION: u32 = 1;

/// First 8 bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"HBSPOOL\0";

/// First 8 bytes of the confirmed-position file.
pub(crate) const CONFIRMED_MAGIC: [u8; 8] = *b"HBCONFRM";

/// Segment header — do not reorder / change without bumping the format version:
///
/// | offset | size | field                         |
/// |-------:|-----:|-------------------------------|
/// | 0      | 8    | magic `b"HBSPOOL\0"`          |
/// | 8      | 4    | format version (u32): 1 or 2  |
/// | 12     | 4    | reserved, written as zero     |
/// | 16     | 8    | base seq (u64): first record  |
pub(crate) const SEGMENT_HEADER_LEN: u64 = 24;

/// Record frame header — do not reorder / change without bumping the format version:
///
/// | offset | size | field                                              |
/// |-------:|-----:|----------------------------------------------------|
/// | 0      | 4    | `len` (u32): payload bytes that follow the header  |
/// | 4      | 4    | CRC-32C over bytes 8 .. 24 + len                   |
/// | 8      | 8    | seq (u64)                                          |
/// | 16     | 8    | appended_at_ms (u64), ms since the Unix epoch      |
/// | 24     | len  | payload                                            |
///
/// The CRC covers everything after itself, so a frame is checked with one pass over one
/// contiguous slice. `len` is outside the CRC; a corrupt `len` is caught because the CRC is then
/// computed over the wrong bytes, the frame runs past the end of the data, or `len` exceeds
/// [`MAX_RECORD_BYTES`].
pub(crate) const FRAME_HEADER_LEN: u64 = 24;

/// Largest `len` a frame may have: 64 MiB + 8 KiB. A frame with a larger `len` is corrupt.
///
/// This bound is part of the format, not of any configuration: a reader judges the bytes on
/// disk by it alone, so a record appended under one configuration stays readable under any
/// other (lowering the append limit must not turn acknowledged records into "corrupt" ones and
/// lose them). The append limit a spool is opened with is capped at this value, so the writer
/// never produces a frame a reader would refuse. Changing it is a format change.
pub const MAX_RECORD_BYTES: u32 = 64 * 1024 * 1024 + 8 * 1024;

/// Confirmed-position file — do not reorder / change without bumping [`CONFIRMED_VERSION`]:
///
/// | offset | size | field                                   |
/// |-------:|-----:|-----------------------------------------|
/// | 0      | 8    | magic `b"HBCONFRM"`                     |
/// | 8      | 4    | format version (u32): [`CONFIRMED_VERSION`] |
/// | 12     | 8    | confirmed seq (u64)                     |
/// | 20     | 4    | CRC-32C over bytes 0 .. 20              |
pub(crate) const CONFIRMED_LEN: usize = 24;

/// Bytes a frame carrying `payload_len` bytes occupies on disk.
pub(crate) fn frame_len(payload_len: usize) -> u64 {
    FRAME_HEADER_LEN + payload_len as u64
}

/// Why a segment header was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Fewer than [`SEGMENT_HEADER_LEN`] bytes.
    Short(usize),
    BadMagic,
    /// A well-formed header of a format this build cannot read (e.g. after a downgrade).
    UnsupportedVersion(u32),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Short(n) => write!(f, "short header ({n} of {SEGMENT_HEADER_LEN} bytes)"),
            HeaderError::BadMagic => f.write_str("bad magic"),
            HeaderError::UnsupportedVersion(v) => write!(f, "unsupported format version {v}"),
        }
    }
}

pub(crate) fn encode_segment_header(base_seq: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    // 12..16 reserved: zero.
    h[16..24].copy_from_slice(&base_seq.to_le_bytes());
    h
}

/// What a valid segment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DecodedHeader {
    pub base_seq: u64,
    /// [`OLDEST_READABLE_VERSION`] ..= [`FORMAT_VERSION`].
    pub version: u32,
}

/// Decodes a header of any version this build reads.
pub(crate) fn decode_segment_header(b: &[u8]) -> Result<DecodedHeader, HeaderError> {
    if b.len() < SEGMENT_HEADER_LEN as usize {
        return Err(HeaderError::Short(b.len()));
    }
    if b[0..8] != SEGMENT_MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    Ok(DecodedHeader {
        base_seq: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        version,
    })
}

/// Appends one frame to `out`. `payload` must be at most [`MAX_RECORD_BYTES`] long (`append`
/// enforces the append limit, which is capped at it).
pub(crate) fn encode_frame(out: &mut Vec<u8>, seq: u64, appended_at_ms: u64, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_RECORD_BYTES as usize);
    let len = u32::try_from(payload.len()).expect("payload length is bounded by MAX_RECORD_BYTES");
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&appended_at_ms.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The fixed part of a frame, decoded but not yet verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub len: u32,
    pub crc: u32,
    pub seq: u64,
    pub appended_at_ms: u64,
}

impl FrameHeader {
    /// `b` must hold at least [`FRAME_HEADER_LEN`] bytes.
    pub(crate) fn decode(b: &[u8]) -> FrameHeader {
        FrameHeader {
            len: u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
            crc: u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")),
            seq: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            appended_at_ms: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        }
    }

    /// Whole frame size on disk.
    pub(crate) fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN + u64::from(self.len)
    }

    /// `frame` is the complete frame (header and payload) this header was decoded from.
    pub(crate) fn crc_matches(&self, frame: &[u8]) -> bool {
        crc32c::crc32c(&frame[8..]) == self.crc
    }
}

/// Why bytes do not form a frame, judged on the bytes alone (sequence checks need context and
/// live in the scanner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// Fewer bytes than the header, or than the header says the frame needs.
    Incomplete,
    /// `len` exceeds [`MAX_RECORD_BYTES`]: never written by us, so corrupt.
    TooLong,
    BadCrc,
}

/// Decodes and verifies the frame at the start of `b`; returns the header and payload.
pub(crate) fn decode_frame(b: &[u8]) -> Result<(FrameHeader, &[u8]), FrameError> {
    if b.len() < FRAME_HEADER_LEN as usize {
        return Err(FrameError::Incomplete);
    }
    let h = FrameHeader::decode(b);
    // Invariant 3: the format's bound, never today's append limit, decides that a frame is
    // corrupt; a record acknowledged under a larger limit stays readable.
    if h.len > MAX_RECORD_BYTES {
        return Err(FrameError::TooLong);
    }
    let end = h.frame_len() as usize;
    if b.len() < end {
        return Err(FrameError::Incomplete);
    }
    if !h.crc_matches(&b[..end]) {
        return Err(FrameError::BadCrc);
    }
    Ok((h, &b[FRAME_HEADER_LEN as usize..end]))
}

/// Why the confirmed file was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConfirmedError {
    /// Wrong size, bad magic or bad CRC.
    Corrupt,
    UnsupportedVersion(u32),
}

pub(crate) fn encode_confirmed(seq: u64) -> [u8; CONFIRMED_LEN] {
    let mut b = [0u8; CONFIRMED_LEN];
    b[0..8].copy_from_slice(&CONFIRMED_MAGIC);
    b[8..12].copy_from_slice(&CONFIRMED_VERSION.to_le_bytes());
    b[12..20].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..20]);
    b[20..24].copy_from_slice(&crc.to_le_bytes());
    b
}

pub(crate) fn decode_confirmed(b: &[u8]) -> Result<u64, ConfirmedError> {
    if b.len() != CONFIRMED_LEN || b[0..8] != CONFIRMED_MAGIC {
        return Err(ConfirmedError::Corrupt);
    }
    let crc = u32::from_le_bytes(b[20..24].try_into().expect("4 bytes"));
    if crc32c::crc32c(&b[0..20]) != crc {
        return Err(ConfirmedError::Corrupt);
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if version != CONFIRMED_VERSION {
        return Err(ConfirmedError::UnsupportedVersion(version));
    }
    Ok(u64::from_le_bytes(b[12..20].try_into().expect("8 bytes")))
}

/// File name of the segment whose first record is `base_seq`: 20 digits, so that lexical and
/// numeric order agree.
pub(crate) fn segment_file_name(base_seq: u64) -> String {
    format!("{base_seq:020}.seg")
}

/// Inverse of [`segment_file_name`]; `None` for anything else.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 || !stem.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip() {
        for payload in [&b""[..], b"x", &[0xA5; 5000]] {
            let mut buf = Vec::new();
            encode_frame(&mut buf, 42, 1_700_000_000_123, payload);
            assert_eq!(buf.len() as u64, frame_len(payload.len()));
            let (h, p) = decode_frame(&buf).unwrap();
            assert_eq!(
                (h.seq, h.appended_at_ms, h.len as usize),
                (42, 1_700_000_000_123, payload.len())
            );
            assert_eq!(p, payload);
        }
    }

    #[test]
    fn frames_concatenate() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 1, 10, b"first");
        encode_frame(&mut buf, 2, 11, b"second");
        let (h1, p1) = decode_frame(&buf).unwrap();
        let (h2, p2) = decode_frame(&buf[h1.frame_len() as usize..]).unwrap();
        assert_eq!(
            (h1.seq, p1, h2.seq, p2),
            (1, &b"first"[..], 2, &b"second"[..])
        );
    }

    #[test]
    fn crc_detects_every_single_bit_flip_after_len() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 7, 99, b"hello, spool");
        for bit in 32..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                decode_frame(&bad).unwrap_err(),
                FrameError::BadCrc,
                "bit {bit}"
            );
        }
    }

    #[test]
    fn corrupt_len_is_rejected() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 7, 99, b"hello, spool");
        let mut longer = buf.clone();
        longer[0] ^= 0x01; // 12 -> 13: frame now runs past the buffer
        assert_eq!(decode_frame(&longer).unwrap_err(), FrameError::Incomplete);
        let mut shorter = buf.clone();
        shorter[0] ^= 0x04; // 12 -> 8: CRC over the wrong bytes
        assert_eq!(decode_frame(&shorter).unwrap_err(), FrameError::BadCrc);
        let mut huge = buf.clone();
        huge[3] ^= 0x80;
        assert_eq!(decode_frame(&huge).unwrap_err(), FrameError::TooLong);
        // The bound is the format's: up to it a length is plausible (here it runs past the
        // buffer), one past it is corrupt on its face.
        let mut at_max = buf.clone();
        at_max[0..4].copy_from_slice(&MAX_RECORD_BYTES.to_le_bytes());
        assert_eq!(decode_frame(&at_max).unwrap_err(), FrameError::Incomplete);
        at_max[0..4].copy_from_slice(&(MAX_RECORD_BYTES + 1).to_le_bytes());
        assert_eq!(decode_frame(&at_max).unwrap_err(), FrameError::TooLong);
        assert_eq!(
            decode_frame(&buf[..10]).unwrap_err(),
            FrameError::Incomplete
        );
    }

    #[test]
    fn segment_header_validation() {
        let h = encode_segment_header(12345);
        assert_eq!(
            decode_segment_header(&h),
            Ok(DecodedHeader {
                base_seq: 12345,
                version: 2
            })
        );
        assert_eq!(decode_segment_header(&h[..23]), Err(HeaderError::Short(23)));
        assert_eq!(decode_segment_header(&[]), Err(HeaderError::Short(0)));
        let mut bad = h;
        bad[0] = b'X';
        assert_eq!(decode_segment_header(&bad), Err(HeaderError::BadMagic));
        // Version 1 (written up to release efe9fd6) is still read.
        let mut v1 = h;
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            decode_segment_header(&v1),
            Ok(DecodedHeader {
                base_seq: 12345,
                version: 1
            })
        );
        for v in [0, 3, u32::MAX] {
            let mut other = h;
            other[8..12].copy_from_slice(&v.to_le_bytes());
            assert_eq!(
                decode_segment_header(&other),
                Err(HeaderError::UnsupportedVersion(v))
            );
        }
    }

    #[test]
    fn the_confirmed_file_stays_version_1() {
        let b = encode_confirmed(5);
        assert_eq!(b[8..12], 1u32.to_le_bytes());
        let mut v2 = b;
        v2[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c::crc32c(&v2[0..20]);
        v2[20..24].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_confirmed(&v2),
            Err(ConfirmedError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn confirmed_round_trip_and_corruption() {
        let b = encode_confirmed(987_654_321);
        assert_eq!(decode_confirmed(&b), Ok(987_654_321));
        for i in 0..CONFIRMED_LEN {
            let mut bad = b;
            bad[i] ^= 0x10;
            assert!(decode_confirmed(&bad).is_err(), "byte {i}");
        }
        assert_eq!(decode_confirmed(&b[..20]), Err(ConfirmedError::Corrupt));
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_file_name(1), "00000000000000000001.seg");
        assert_eq!(parse_segment_file_name("00000000000000000001.seg"), Some(1));
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_file_name("1.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000000a.seg"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000001.seg.tmp"),
            None
        );
    }
}
