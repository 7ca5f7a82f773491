//! `[log]` and `[shutdown]`: process behaviour.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, Error};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`. Default `text`.
    pub format: LogFormat,
    /// tracing filter directive (`RUST_LOG` wins when set). Default `info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Time allowed for in-flight requests and publishes after SIGTERM. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace: Duration::from_secs(10),
        }
    }
}

impl LogConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        tracing_subscriber::EnvFilter::try_new(&self.level)
            .map_err(|e| invalid("log.level", e.to_string()))?;
        Ok(())
    }
}

impl ShutdownConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.grace.is_zero() {
            return Err(invalid("shutdown.grace", "must be positive"));
        }
        Ok(())
    }
}
