//! `[http]` (the webhook listener) and `[admin]` (metrics and health).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, Error, MAX_BODY_BYTES};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the webhook endpoint listens on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Path the sender posts to. Default `/webhooks/sessionboard`.
    pub path: String,
    /// Largest accepted body; larger ones get 413. At most [`MAX_BODY_BYTES`]. Lowering it
    /// affects new requests only: a backlog accepted under a larger limit is still delivered.
    /// Default 1 MiB.
    pub max_body_bytes: u32,
    /// Time allowed to read a whole request (head and body). Default 30 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Time allowed to read a request head (slow-loris guard). Default 10 s.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Open connections beyond this are closed at once. Default 1024.
    pub max_connections: usize,
    /// `Retry-After` sent with 503 answers. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Most header fields in one request; more get 431. Default 64.
    pub max_headers: usize,
    /// Most bytes of request line and headers; more get 431. Default 16 KiB (at least 8 KiB).
    pub max_header_bytes: usize,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed for `auth.allow_cidrs`. Default none.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".parse().unwrap(),
            path: "/webhooks/sessionboard".into(),
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            retry_after: Duration::from_secs(5),
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the metrics and health listener. Default `127.0.0.1:9090`.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9090".parse().unwrap(),
        }
    }
}

impl HttpConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        if !self.path.starts_with('/') {
            return Err(invalid("http.path", "must start with `/`"));
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_BODY_BYTES {
            return Err(invalid(
                "http.max_body_bytes",
                "must be between 1 and 64 MiB",
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(invalid("http.request_timeout", "must be positive"));
        }
        if self.max_connections == 0 {
            return Err(invalid("http.max_connections", "must be positive"));
        }
        if self.max_headers == 0 {
            return Err(invalid("http.max_headers", "must be positive"));
        }
        if self.max_header_bytes < 8192 {
            return Err(invalid("http.max_header_bytes", "must be at least 8192"));
        }
        Ok(())
    }
}
