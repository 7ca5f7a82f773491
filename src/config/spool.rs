//! `[spool]`: the write-ahead log on disk.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, Error};

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
    /// How often the confirmed position is persisted while it moves. Default 100 ms.
    #[serde(with = "humantime_serde")]
    pub confirm_interval: Duration,
    /// Deliveries get 503 while the filesystem holding the spool has less free space than this,
    /// so a disk filled by something else gives a 503 that clears by itself instead of ENOSPC
    /// on a segment write, which fails the spool until restart. It also leaves room for the
    /// dead-letter store in the same directory. 0 disables the check. Default 256 MiB.
    pub min_free_bytes: u64,
}

impl Default for SpoolSection {
    fn default() -> Self {
        SpoolSection {
            dir: PathBuf::from("./hookbridge-spool"),
            max_bytes: 1024 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
            max_batch_bytes: 4 * 1024 * 1024,
            confirm_interval: Duration::from_millis(100),
            min_free_bytes: 256 * 1024 * 1024,
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
        Ok(())
    }
}
