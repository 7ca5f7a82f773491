//! `[forward]`: spool → sink pipelining, retries, and when a record stops being retried.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, Error};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// Records read from the spool and not yet settled (confirmed or dead-lettered), at most.
    /// Default 1024.
    pub max_in_flight: usize,
    /// Payload bytes of those records, at most (one record may go over). Default 32 MiB.
    pub max_in_flight_bytes: u64,
    /// First retry delay after a failed publish. Default 100 ms.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Retry delay cap. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Failed attempts, each while the broker confirmed other records, after which a record is
    /// dead-lettered as `retries_exhausted` (once it is also `max_retry_age` old, or sooner when
    /// the window is full). Failures during an outage never count. Default 10.
    pub max_attempts: u32,
    /// How long a record keeps being retried after its first failure before `max_attempts`
    /// alone can give it up. Default 5 min.
    #[serde(with = "humantime_serde")]
    pub max_retry_age: Duration,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            max_in_flight: 1024,
            max_in_flight_bytes: 32 << 20,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            max_attempts: 10,
            max_retry_age: Duration::from_secs(300),
        }
    }
}

impl ForwardConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.max_in_flight == 0 {
            return Err(invalid("forward.max_in_flight", "must be positive"));
        }
        if self.max_in_flight_bytes == 0 {
            return Err(invalid("forward.max_in_flight_bytes", "must be positive"));
        }
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            return Err(invalid(
                "forward.retry_max",
                "retry_initial must be positive and retry_max at least retry_initial",
            ));
        }
        if self.max_attempts == 0 {
            return Err(invalid("forward.max_attempts", "must be positive"));
        }
        Ok(())
    }
}
