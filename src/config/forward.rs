//! `[forward]`: spool → sink pipelining and retries.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
