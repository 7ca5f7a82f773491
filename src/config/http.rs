//! `[http]` (the webhook listener) and `[admin]` (metrics and health).

use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// Most bytes of request bodies held in memory at once, across all connections: bodies being
    /// read, and read ones until the spool writer has stored them. A body that would go over it
    /// gets 503 `buffer_full` with `Retry-After` before more of it is read. At least
    /// `max_body_bytes`. Default 64 MiB.
    pub max_buffered_bytes: u64,
    /// Most request bodies one client address (the peer, or the address `trusted_proxies`
    /// vouch for) may have unfinished at once; more get 429 `too_many_bodies`. 0 turns the cap
    /// off. Default 0.
    pub max_bodies_per_client: usize,
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
    /// Longest a closing connection keeps reading (and discarding) what the client still sends,
    /// so that a client that writes its whole body before reading gets the early answer (413,
    /// 401, 400, 408…) instead of a reset. `0s` closes at once. Default 2 s.
    #[serde(with = "humantime_serde")]
    pub linger_timeout: Duration,
    /// Most bytes a closing connection reads and discards before it closes anyway. Default
    /// 4 MiB (four times the default `max_body_bytes`: an over-limit body is read to its end).
    pub linger_bytes: u64,
    /// Longest an answer may wait for the client to read it: a connection whose writes make no
    /// progress for this long is closed (a client that sends and never reads cannot hold a slot
    /// and its answer's memory). Default 10 s.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed for `auth.allow_cidrs`. Default none.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Serve plain HTTP on a non-loopback `listen` address. Only for deployments where TLS is
    /// terminated in front of the bridge (a Kubernetes ingress, a load balancer, a sidecar);
    /// otherwise configure `[http.tls]`. Loopback addresses always allow plain HTTP. Default
    /// false.
    pub allow_plaintext: bool,
    /// HTTPS on the webhook listener. Default: off (plain HTTP).
    pub tls: TlsConfig,
}

/// `[http.tls]`: a certificate chain and its key, watched for changes and reloaded in place.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first. Setting it (with `key_file`) turns TLS
    /// on. Default none.
    pub cert_file: Option<PathBuf>,
    /// PEM file with the private key of the leaf certificate: PKCS#8 (`BEGIN PRIVATE KEY`),
    /// RSA (`BEGIN RSA PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`), unencrypted. Default none.
    pub key_file: Option<PathBuf>,
    /// How often both files are checked for a change (content or symlink target); a
    /// changed pair is loaded and used for new connections. `0s` turns reloading off. Default
    /// 10 s.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Time a client has to complete the TLS handshake before the connection is closed (the
    /// request head then has `header_timeout` of its own). Default 10 s.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: None,
            key_file: None,
            reload_interval: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl TlsConfig {
    /// Both files are set: the listener serves HTTPS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }

    fn validate(&self) -> Result<(), Error> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                return Err(invalid(
                    "http.tls.key_file",
                    "must be set when http.tls.cert_file is",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "http.tls.cert_file",
                    "must be set when http.tls.key_file is",
                ))
            }
            _ => {}
        }
        if self.handshake_timeout.is_zero() {
            return Err(invalid("http.tls.handshake_timeout", "must be positive"));
        }
        if !self.reload_interval.is_zero() && self.reload_interval < Duration::from_millis(100) {
            return Err(invalid(
                "http.tls.reload_interval",
                "must be at least 100ms, or 0s to turn reloading off",
            ));
        }
        Ok(())
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".parse().unwrap(),
            path: "/webhooks/sessionboard".into(),
            max_body_bytes: 1024 * 1024,
            max_buffered_bytes: 64 * 1024 * 1024,
            max_bodies_per_client: 0,
            request_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            retry_after: Duration::from_secs(5),
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            linger_timeout: Duration::from_secs(2),
            linger_bytes: 4 * 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            trusted_proxies: Vec::new(),
            allow_plaintext: false,
            tls: TlsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the metrics and health listener. Default `127.0.0.1:9090`.
    pub listen: SocketAddr,
    /// Open admin connections beyond this (and beyond the probe reserve) are closed at once.
    /// Default 64.
    pub max_connections: usize,
    /// Connections reserved for `/livez` and `/readyz`, used once `max_connections` are taken:
    /// a connection in the reserve answers one probe and closes, so stalled scrapers cannot
    /// starve the liveness probe. At least 1. Default 8.
    pub probe_connections: usize,
    /// Longest a reserve connection may take for its probe, request and answer. Default 2 s.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// A connection that has not sent a whole request head this long after it opened or after
    /// its last answer is closed. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A connection whose answer makes no progress for this long (the client does not read) is
    /// closed; also the longest a `/metrics` request waits for the one render at a time before
    /// it gets 503. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// File holding the bearer token of the admin API (`/api/v1/`) and the page (`/ui`), at
    /// least 16 characters (surrounding whitespace ignored); re-read when it changes, so a
    /// rotated Kubernetes Secret applies without a restart. Without it only the status
    /// document answers. Default none.
    pub token_file: Option<PathBuf>,
    /// Most dead letters one `GET /api/v1/dead-letters` page lists. Default 1000.
    pub max_page_size: usize,
    /// Largest admin API request body; larger ones get 413. Default 64 KiB.
    pub max_request_bytes: u64,
    /// Most bytes of records a replay through the running bridge holds in memory; a larger one
    /// gets 413 and is for `hookbridge spool replay` with the bridge stopped. Default 64 MiB.
    pub max_replay_bytes: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9090".parse().unwrap(),
            max_connections: 64,
            probe_connections: 8,
            probe_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(5),
            token_file: None,
            max_page_size: 1000,
            max_request_bytes: 64 * 1024,
            max_replay_bytes: 64 * 1024 * 1024,
        }
    }
}

impl AdminConfig {
    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.max_connections == 0 {
            return Err(invalid("admin.max_connections", "must be positive"));
        }
        if self.probe_connections == 0 {
            return Err(invalid(
                "admin.probe_connections",
                "must be at least 1 (the probes' reserve)",
            ));
        }
        for (key, t) in [
            ("admin.probe_timeout", self.probe_timeout),
            ("admin.idle_timeout", self.idle_timeout),
            ("admin.write_timeout", self.write_timeout),
        ] {
            if t.is_zero() || t > Duration::from_secs(300) {
                return Err(invalid(key, "must be between 1ms and 300s"));
            }
        }
        if self.max_page_size == 0 || self.max_page_size > 100_000 {
            return Err(invalid(
                "admin.max_page_size",
                "must be between 1 and 100000",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_request_bytes) {
            return Err(invalid(
                "admin.max_request_bytes",
                "must be between 1 KiB and 16 MiB",
            ));
        }
        if self.max_replay_bytes < 1024 * 1024 {
            return Err(invalid("admin.max_replay_bytes", "must be at least 1 MiB"));
        }
        Ok(())
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
        if self.max_buffered_bytes < u64::from(self.max_body_bytes) {
            return Err(invalid(
                "http.max_buffered_bytes",
                "must be at least http.max_body_bytes (one largest body must fit)",
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
        if self.write_timeout.is_zero() || self.write_timeout > Duration::from_secs(300) {
            return Err(invalid(
                "http.write_timeout",
                "must be between 1ms and 300s",
            ));
        }
        if self.linger_timeout > Duration::from_secs(60) {
            return Err(invalid(
                "http.linger_timeout",
                "must be at most 60s (a lingering connection keeps its slot)",
            ));
        }
        self.tls.validate()
    }

    /// Plain HTTP is served only on loopback, unless TLS is configured or the operator said TLS
    /// ends in front of the bridge: webhook bodies and their tokens must not cross a network in
    /// the clear by default.
    pub(super) fn validate_plaintext(&self) -> Result<(), Error> {
        if self.tls.enabled() || self.allow_plaintext || self.listen.ip().is_loopback() {
            return Ok(());
        }
        Err(invalid(
            "http.listen",
            format!(
                "{} is not a loopback address and would serve plain HTTP; set http.tls.cert_file and http.tls.key_file to serve HTTPS, or http.allow_plaintext = true if TLS is terminated in front of the bridge (an ingress, a load balancer, a sidecar)",
                self.listen
            ),
        ))
    }
}
