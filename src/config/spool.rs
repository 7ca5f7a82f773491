//! `[spool]`: the write-ahead log on disk.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, Error};

/// Upper bound on `spool.retain_confirmed`.
const MAX_RETAIN_CONFIRMED: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    /// Spool directory. Default `./hookbridge-spool`.
    pub dir: PathBuf,
    /// Quota for all segment files; above it deliveries get 503. Default 1 GiB.
    pub max_bytes: u64,
    /// Segment size at which a new segment is started. Default 64 MiB.
    pub segment_bytes: u64,
    /// Most bytes written by one group commit. Default 4 MiB.
    pub max_batch_bytes: usize,
    /// How far ahead of its last record the newest segment is extended with zeros, so that a
    /// group commit overwrites blocks that already exist instead of growing the file: its
    /// `fdatasync` then writes no file size or block allocation, only the data. Counted in
    /// `max_bytes` (and taken only from free quota); cut off when the segment is sealed or the
    /// spool closes. Never past `segment_bytes`, so a smaller segment size caps it. 0 appends by
    /// growing the file. Default 1 MiB.
    pub preallocate_bytes: u64,
    /// How often the confirmed position is persisted while it moves. Default 100 ms.
    #[serde(with = "humantime_serde")]
    pub confirm_interval: Duration,
    /// Deliveries get 503 while the filesystem holding the spool has less free space than this,
    /// so a disk filled by something else gives a 503 that clears by itself instead of ENOSPC
    /// on a segment write, which fails the spool until restart. It also leaves room for the
    /// dead-letter store in the same directory. 0 disables the check. Default 256 MiB.
    pub min_free_bytes: u64,
    /// How long confirmed records stay on disk after the broker confirmed them, so that
    /// `hookbridge spool replay` can put back what a broker acknowledged but lost before syncing
    /// it (JetStream syncs every 2 minutes by default). Counted in `max_bytes`, but evicted
    /// first, oldest segment first, whenever new deliveries need the room: retention never
    /// causes a 503. `0s` deletes confirmed segments at once. At most 7 days. Default 5 min.
    #[serde(with = "humantime_serde")]
    pub retain_confirmed: Duration,
}

impl Default for SpoolSection {
    fn default() -> Self {
        SpoolSection {
            dir: PathBuf::from("./hookbridge-spool"),
            max_bytes: 1024 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
            max_batch_bytes: 4 * 1024 * 1024,
            preallocate_bytes: 1024 * 1024,
            confirm_interval: Duration::from_millis(100),
            min_free_bytes: 256 * 1024 * 1024,
            retain_confirmed: Duration::from_secs(5 * 60),
        }
    }
}

impl SpoolSection {
    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.segment_bytes < 4096 {
            return Err(invalid("spool.segment_bytes", "must be at least 4096"));
        }
        if self.max_bytes < 2 * self.segment_bytes {
            return Err(invalid(
                "spool.max_bytes",
                "must be at least twice spool.segment_bytes (a full segment is only deleted once a newer one exists)",
            ));
        }
        if self.min_free_bytes != 0 && self.min_free_bytes < 1024 * 1024 {
            // A margin below 1 MiB protects nothing; far likelier someone meant MiB.
            return Err(invalid(
                "spool.min_free_bytes",
                "is in bytes: use 0 to disable the check, or at least 1048576 (1 MiB)",
            ));
        }
        if self.max_batch_bytes == 0 {
            return Err(invalid("spool.max_batch_bytes", "must be positive"));
        }
        if self.retain_confirmed > MAX_RETAIN_CONFIRMED {
            // Retention is for a broker's unsynced tail (minutes), not an archive.
            return Err(invalid(
                "spool.retain_confirmed",
                "must be at most 7 days (0s disables retention)",
            ));
        }
        Ok(())
    }
}
