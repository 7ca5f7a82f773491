//! A spool directory as the tests read it by hand: its segment files and their format version.

use std::path::{Path, PathBuf};

/// The `*.seg` files of `dir`, in base order (their 20-digit names sort numerically).
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// The format version in a segment file's header (bytes 8..12, little-endian).
pub fn segment_version(seg: &Path) -> u32 {
    let b = std::fs::read(seg).unwrap();
    u32::from_le_bytes(b[8..12].try_into().unwrap())
}
