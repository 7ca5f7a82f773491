//! `[forward]`: spool → sink pipelining and retries.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, Error};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// Records handed to the sink and not yet confirmed, at most. Default 1024.
    pub max_in_flight: usize,
    /// First retry delay after a failed publish. Default 100 ms.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Retry delay cap. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            max_in_flight: 1024,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
        }
    }
}

impl ForwardConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.max_in_flight == 0 {
            return Err(invalid("forward.max_in_flight", "must be positive"));
        }
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            return Err(invalid(
                "forward.retry_max",
                "retry_initial must be positive and retry_max at least retry_initial",
            ));
        }
        Ok(())
    }
}
