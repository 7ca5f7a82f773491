//! Configuration: built-in defaults → TOML file (`--config`) → environment (`HOOKBRIDGE_…`, `__`
//! for nesting), merged by figment, then [`Config::validate`] turns the raw values into the typed
//! [`Settings`] the rest of the process uses. Unknown keys are errors that name the key.
//!
//! The key names here are the public contract documented in the README; rename nothing without a
//! deprecation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::routing::{self, Router};

/// What the environment prefix is; `HOOKBRIDGE_HTTP__LISTEN` sets `http.listen`.
pub const ENV_PREFIX: &str = "HOOKBRIDGE_";

const REDACTED: &str = "<redacted>";

/// Largest `http.max_body_bytes` accepted: 64 MiB. `app` checks at compile time that a body this
/// large, with its record overhead, still fits the spool format's `MAX_RECORD_BYTES`.
pub const MAX_BODY_BYTES: u32 = 64 * 1024 * 1024;

/// Upper bound on `spool.retain_confirmed`.
const MAX_RETAIN_CONFIRMED: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read or parsed, a key is unknown, or a value has the wrong type.
    /// figment's message names the key and where the value came from.
    #[error(transparent)]
    Load(#[from] Box<figment::Error>),
    /// A value parsed but makes no sense (names the key).
    #[error("invalid `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The raw configuration as written by the operator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub admin: AdminConfig,
    pub auth: AuthConfig,
    pub spool: SpoolSection,
    pub routing: RoutingConfig,
    pub forward: ForwardConfig,
    pub sink: SinkConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
}

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

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Signing secrets: `whsec_…` (HMAC, `v1`) or `whpk_…` (Ed25519 public key, `v1a`); any
    /// one matching is enough, so old and new can overlap during rotation. Default none.
    pub secrets: Vec<String>,
    /// Files holding more secrets, one per line (`#` comments). Default none.
    pub secret_files: Vec<PathBuf>,
    /// Largest accepted distance between the signature timestamp and now, either way. Default 5 min.
    #[serde(with = "humantime_serde")]
    pub tolerance: Duration,
    /// Header carrying a shared token (e.g. `x-hookbridge-token`). Default: none.
    pub header_name: Option<String>,
    /// Accepted token values (several, for rotation). Default: none.
    pub header_values: Vec<String>,
    /// Serve without any authentication on a non-loopback address. Default false.
    pub allow_unauthenticated: bool,
    /// How long delivery ids are remembered to drop the sender's repeats. Default 24 h; 0 disables.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Most delivery ids remembered; the oldest are forgotten first. Default 1,000,000.
    pub dedup_max_entries: usize,
    /// How long a request waits when an earlier attempt with the same delivery id is still being
    /// stored; after that it gets 503 + `Retry-After` (never a 2xx before the first copy is
    /// fsync'd). Default 5 s.
    #[serde(with = "humantime_serde")]
    pub dedup_wait: Duration,
    /// Client networks allowed to deliver (CIDRs); empty allows all. Default empty.
    pub allow_cidrs: Vec<ipnet::IpNet>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secrets: Vec::new(),
            secret_files: Vec::new(),
            tolerance: Duration::from_secs(300),
            header_name: None,
            header_values: Vec::new(),
            allow_unauthenticated: false,
            dedup_window: Duration::from_secs(24 * 3600),
            dedup_max_entries: 1_000_000,
            dedup_wait: Duration::from_secs(5),
            allow_cidrs: Vec::new(),
        }
    }
}

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
            confirm_interval: Duration::from_millis(100),
            min_free_bytes: 256 * 1024 * 1024,
            retain_confirmed: Duration::from_secs(5 * 60),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Prepended to the action to form the subject / topic. Default `sessionboard.`.
    pub prefix: String,
    /// Suffix (after `prefix`) for deliveries whose action is not a valid token. Default `unroutable`.
    pub dead_letter: String,
    /// Fixed destinations for an action (`session.updated`) or a pattern (`session.*`). Default empty.
    pub routes: BTreeMap<String, String>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            prefix: "sessionboard.".into(),
            dead_letter: "unroutable".into(),
            routes: BTreeMap::new(),
        }
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    #[default]
    Nats,
    Kafka,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// `nats` or `kafka`. Default `nats`.
    pub kind: SinkKind,
    pub nats: NatsConfig,
    pub kafka: KafkaConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatsMode {
    /// Publish through JetStream and wait for the stream's PubAck.
    #[default]
    Jetstream,
    /// Plain publish, confirmed by a flush (the server has read it; no persistence).
    Core,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated. Default `nats://127.0.0.1:4222`.
    pub url: String,
    /// `jetstream` or `core`. Default `jetstream`.
    pub mode: NatsMode,
    /// JetStream stream name. Default `SESSIONBOARD`.
    pub stream: String,
    /// Create the stream (subjects `<prefix>>`) when it is missing. Default true.
    pub create_stream: bool,
    /// Time to wait for a PubAck or flush before the attempt counts as failed. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Credentials file (`.creds`) for NATS auth. Default none.
    pub credentials_file: Option<PathBuf>,
    /// Token for NATS token auth. Default none.
    pub token: Option<String>,
    /// User and password for NATS auth. Default none.
    pub user: Option<String>,
    pub password: Option<String>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            mode: NatsMode::Jetstream,
            stream: "SESSIONBOARD".into(),
            create_stream: true,
            request_timeout: Duration::from_secs(5),
            credentials_file: None,
            token: None,
            user: None,
            password: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    #[default]
    Lz4,
}

impl Compression {
    /// The librdkafka `compression.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma-separated `host:port`. Default `127.0.0.1:9092`.
    pub brokers: String,
    /// Kafka client id. Default `hookbridge`.
    pub client_id: String,
    /// `none`, `gzip`, `snappy` or `lz4`. Default `lz4`.
    pub compression: Compression,
    /// Create a missing topic (admin CreateTopics) on first use. Default false.
    pub create_topics: bool,
    /// Partitions of topics hookbridge creates. Default 3.
    pub partitions: i32,
    /// Replication factor of topics hookbridge creates. Default 1 (raise it on a real cluster).
    pub replication_factor: i32,
    /// librdkafka `message.timeout.ms`: how long one attempt may take, librdkafka's own retries
    /// included, before the forwarder resends from the spool. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    /// Attempts at an unknown topic (with `create_topics = false`) before its records are
    /// dead-lettered. Default 5.
    pub unknown_topic_attempts: u32,
    /// Extra librdkafka properties (TLS, SASL, tuning), passed through and validated at startup.
    /// Default empty.
    pub options: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            client_id: "hookbridge".into(),
            compression: Compression::Lz4,
            create_topics: false,
            partitions: 3,
            replication_factor: 1,
            message_timeout: Duration::from_secs(30),
            unknown_topic_attempts: 5,
            options: BTreeMap::new(),
        }
    }
}

/// librdkafka properties hookbridge sets itself; an `options` entry for one of them is an error
/// that points at the key to use instead (or says why it cannot change).
pub const KAFKA_RESERVED_OPTIONS: &[(&str, &str)] = &[
    ("bootstrap.servers", "use sink.kafka.brokers"),
    ("metadata.broker.list", "use sink.kafka.brokers"),
    ("client.id", "use sink.kafka.client_id"),
    ("compression.type", "use sink.kafka.compression"),
    ("compression.codec", "use sink.kafka.compression"),
    ("message.timeout.ms", "use sink.kafka.message_timeout"),
    ("delivery.timeout.ms", "use sink.kafka.message_timeout"),
    (
        "enable.idempotence",
        "hookbridge always enables the idempotent producer",
    ),
    ("acks", "hookbridge always produces with acks=all"),
    (
        "request.required.acks",
        "hookbridge always produces with acks=all",
    ),
    (
        "max.in.flight.requests.per.connection",
        "bounded by the idempotent producer",
    ),
    ("max.in.flight", "bounded by the idempotent producer"),
];

impl AuthConfig {
    /// A copy with every secret replaced by `<redacted>`.
    pub fn redacted(&self) -> AuthConfig {
        let mut c = self.clone();
        for v in c.header_values.iter_mut().chain(c.secrets.iter_mut()) {
            *v = REDACTED.into();
        }
        c
    }
}

impl NatsConfig {
    /// A copy with the token and password replaced by `<redacted>`.
    pub fn redacted(&self) -> NatsConfig {
        let mut c = self.clone();
        for v in [&mut c.token, &mut c.password].into_iter().flatten() {
            *v = REDACTED.into();
        }
        c
    }
}

impl KafkaConfig {
    /// A copy with secret-looking librdkafka options replaced by `<redacted>`.
    pub fn redacted(&self) -> KafkaConfig {
        let mut c = self.clone();
        for (k, v) in c.options.iter_mut() {
            if is_secret_option(k) {
                *v = REDACTED.into();
            }
        }
        c
    }
}

// The sections holding secrets print redacted, so a `{:?}` in a log line cannot leak them.
macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let json = serde_json::to_string(&self.redacted()).map_err(|_| std::fmt::Error)?;
                write!(f, "{} {json}", stringify!($t))
            }
        }
    )*};
}
redacted_debug!(AuthConfig, NatsConfig, KafkaConfig);

/// Option names whose values are secrets (redacted by `check-config`).
fn is_secret_option(key: &str) -> bool {
    key.contains("password") || key.contains("secret") || key.ends_with(".key.pem")
}

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

/// Parses `auth.secrets` and the secrets in `auth.secret_files`. Errors name the key and the
/// position, never the secret.
fn load_keys(auth: &AuthConfig) -> Result<Vec<crate::ingress::signature::Key>, Error> {
    use crate::ingress::signature::Key;
    let mut keys = Vec::new();
    for (i, s) in auth.secrets.iter().enumerate() {
        keys.push(Key::parse(s).map_err(|e| Error::Invalid {
            key: "auth.secrets",
            reason: format!("entry {i}: {e}"),
        })?);
    }
    for path in &auth.secret_files {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Invalid {
            key: "auth.secret_files",
            reason: format!("{}: {e}", path.display()),
        })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            keys.push(Key::parse(line).map_err(|e| Error::Invalid {
                key: "auth.secret_files",
                reason: format!("{} line {}: {e}", path.display(), n + 1),
            })?);
        }
    }
    Ok(keys)
}

/// The figment that [`Config::load`] extracts from; exposed so tests can add providers.
pub fn figment(file: Option<&Path>) -> Figment {
    let mut f = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        // `Toml::file` silently yields nothing for a missing file; an operator who names a file
        // means it, so that is checked in `load`.
        f = f.merge(Toml::file_exact(path));
    }
    // `HOOKBRIDGE_CONFIG` names the file (read by the CLI); it is not a key.
    f.merge(Env::prefixed(ENV_PREFIX).ignore(&["CONFIG"]).split("__"))
}

/// Typed, validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub raw: Config,
    pub router: Router,
    /// The access checks (token, signatures, source addresses).
    pub gate: crate::ingress::auth::Gate,
}

/// Prints the header name and how many tokens, never the digests.
#[derive(Clone)]
pub struct TokenAuth {
    pub header: http::HeaderName,
    /// SHA-256 of each accepted value: compared in constant time, and equal length whatever the
    /// configured tokens are, so neither content nor length leaks through timing.
    pub digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuth")
            .field("header", &self.header)
            .field("tokens", &self.digests.len())
            .finish()
    }
}

impl Config {
    pub fn load(file: Option<&Path>) -> Result<Config, Error> {
        if let Some(path) = file {
            if !path.exists() {
                return Err(invalid(
                    "--config",
                    format!("file {} does not exist", path.display()),
                ));
            }
        }
        figment(file)
            .extract()
            .map_err(|e| Error::Load(Box::new(e)))
    }

    pub fn validate(self) -> Result<Settings, Error> {
        let c = &self;
        if !c.http.path.starts_with('/') {
            return Err(invalid("http.path", "must start with `/`"));
        }
        if c.http.max_body_bytes == 0 || c.http.max_body_bytes > MAX_BODY_BYTES {
            return Err(invalid(
                "http.max_body_bytes",
                "must be between 1 and 64 MiB",
            ));
        }
        if c.http.request_timeout.is_zero() {
            return Err(invalid("http.request_timeout", "must be positive"));
        }
        if c.http.max_connections == 0 {
            return Err(invalid("http.max_connections", "must be positive"));
        }
        if c.spool.segment_bytes < 4096 {
            return Err(invalid("spool.segment_bytes", "must be at least 4096"));
        }
        if c.spool.max_bytes < 2 * c.spool.segment_bytes {
            return Err(invalid(
                "spool.max_bytes",
                "must be at least twice spool.segment_bytes (a full segment is only deleted once a newer one exists)",
            ));
        }
        if (c.spool.max_bytes as u128) < 4 * c.http.max_body_bytes as u128 {
            return Err(invalid(
                "spool.max_bytes",
                "must hold at least four maximum-size bodies (http.max_body_bytes)",
            ));
        }
        if c.spool.min_free_bytes != 0 && c.spool.min_free_bytes < 1024 * 1024 {
            // A margin below 1 MiB protects nothing; far likelier someone meant MiB.
            return Err(invalid(
                "spool.min_free_bytes",
                "is in bytes: use 0 to disable the check, or at least 1048576 (1 MiB)",
            ));
        }
        if c.spool.max_batch_bytes == 0 {
            return Err(invalid("spool.max_batch_bytes", "must be positive"));
        }
        if c.spool.retain_confirmed > MAX_RETAIN_CONFIRMED {
            // Retention is for a broker's unsynced tail (minutes), not an archive.
            return Err(invalid(
                "spool.retain_confirmed",
                "must be at most 7 days (0s disables retention)",
            ));
        }
        if c.forward.max_in_flight == 0 {
            return Err(invalid("forward.max_in_flight", "must be positive"));
        }
        if c.forward.retry_initial.is_zero() || c.forward.retry_max < c.forward.retry_initial {
            return Err(invalid(
                "forward.retry_max",
                "retry_initial must be positive and retry_max at least retry_initial",
            ));
        }
        if c.shutdown.grace.is_zero() {
            return Err(invalid("shutdown.grace", "must be positive"));
        }
        let k = &c.sink.kafka;
        if k.brokers.trim().is_empty() {
            return Err(invalid(
                "sink.kafka.brokers",
                "must name at least one broker",
            ));
        }
        if k.partitions < 1 {
            return Err(invalid("sink.kafka.partitions", "must be at least 1"));
        }
        if k.replication_factor < 1 {
            return Err(invalid(
                "sink.kafka.replication_factor",
                "must be at least 1",
            ));
        }
        if k.message_timeout < Duration::from_secs(1) {
            return Err(invalid("sink.kafka.message_timeout", "must be at least 1s"));
        }
        if k.unknown_topic_attempts == 0 {
            return Err(invalid(
                "sink.kafka.unknown_topic_attempts",
                "must be at least 1",
            ));
        }
        for key in k.options.keys() {
            if let Some((_, why)) = KAFKA_RESERVED_OPTIONS.iter().find(|(name, _)| name == key) {
                return Err(Error::Invalid {
                    key: "sink.kafka.options",
                    reason: format!("`{key}` cannot be set here: {why}"),
                });
            }
        }
        if c.sink.nats.stream.is_empty()
            || c.sink.nats.stream.contains(['.', '*', '>', ' ', '/', '\\'])
        {
            return Err(invalid(
                "sink.nats.stream",
                "must be a non-empty name without `.`, `*`, `>`, `/`, `\\` or spaces",
            ));
        }
        if c.sink.nats.request_timeout.is_zero() {
            return Err(invalid("sink.nats.request_timeout", "must be positive"));
        }
        tracing_subscriber::EnvFilter::try_new(&c.log.level)
            .map_err(|e| invalid("log.level", e.to_string()))?;

        let router = Router::new(&c.routing.prefix, &c.routing.dead_letter, &c.routing.routes)
            .map_err(|e| match e {
                routing::ConfigError::Prefix(r) => invalid("routing.prefix", r),
                routing::ConfigError::DeadLetter(r) => invalid("routing.dead_letter", r),
                routing::ConfigError::Route(r) => invalid("routing.routes", r),
            })?;

        let token_auth = match (&c.auth.header_name, c.auth.header_values.is_empty()) {
            (None, true) => None,
            (None, false) => {
                return Err(invalid(
                    "auth.header_name",
                    "must be set when auth.header_values is",
                ))
            }
            (Some(_), true) => {
                return Err(invalid(
                    "auth.header_values",
                    "must list at least one token when auth.header_name is set",
                ))
            }
            (Some(name), false) => {
                let header = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| invalid("auth.header_name", "is not a valid header name"))?;
                if c.auth.header_values.iter().any(|v| v.len() < 16) {
                    return Err(invalid(
                        "auth.header_values",
                        "each token must be at least 16 characters",
                    ));
                }
                Some(TokenAuth {
                    header,
                    digests: c
                        .auth
                        .header_values
                        .iter()
                        .map(|v| crate::ingress::auth::digest(v.as_bytes()))
                        .collect(),
                })
            }
        };
        let keys = load_keys(&c.auth)?;
        if c.http.max_headers == 0 {
            return Err(invalid("http.max_headers", "must be positive"));
        }
        if c.http.max_header_bytes < 8192 {
            return Err(invalid("http.max_header_bytes", "must be at least 8192"));
        }
        if c.auth.tolerance.is_zero() {
            return Err(invalid("auth.tolerance", "must be positive"));
        }
        if !c.auth.dedup_window.is_zero() && c.auth.dedup_max_entries == 0 {
            return Err(invalid(
                "auth.dedup_max_entries",
                "must be positive (or set auth.dedup_window = \"0s\")",
            ));
        }
        if !c.auth.dedup_window.is_zero()
            && (c.auth.dedup_wait.is_zero() || c.auth.dedup_wait > Duration::from_secs(60))
        {
            return Err(invalid(
                "auth.dedup_wait",
                "must be between 1ms and 60s (the sender gives up after 15s)",
            ));
        }
        if token_auth.is_none()
            && keys.is_empty()
            && !c.auth.allow_unauthenticated
            && !c.http.listen.ip().is_loopback()
        {
            return Err(invalid(
                "http.listen",
                format!(
                    "{} is not a loopback address and no authentication is configured; set auth.secrets, or auth.header_name/auth.header_values, or auth.allow_unauthenticated = true",
                    c.http.listen
                ),
            ));
        }
        let gate = crate::ingress::auth::Gate {
            token: token_auth,
            signatures: (!keys.is_empty()).then_some(crate::ingress::auth::SignatureAuth {
                keys,
                tolerance: c.auth.tolerance,
            }),
            source: crate::ingress::auth::SourceAuth {
                allow: c.auth.allow_cidrs.clone(),
                trusted_proxies: c.http.trusted_proxies.clone(),
            },
            clock: crate::ingress::auth::system_clock,
        };
        Ok(Settings {
            router,
            gate,
            raw: self,
        })
    }

    /// The effective configuration as TOML, secrets replaced by `<redacted>`.
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        c.auth = c.auth.redacted();
        c.sink.nats = c.sink.nats.redacted();
        c.sink.kafka = c.sink.kafka.redacted();
        toml::to_string_pretty(&c).expect("config serializes to TOML")
    }
}

#[cfg(test)]
// figment's `Jail` closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn load_str(toml: &str) -> Result<Settings, Error> {
        let c: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(toml))
            .extract()
            .map_err(|e| Error::Load(Box::new(e)))?;
        c.validate()
    }

    #[test]
    fn defaults_validate() {
        let s = Config::default().validate().unwrap();
        assert_eq!(s.raw.http.listen.to_string(), "127.0.0.1:8080");
        assert!(s.gate.token.is_none() && s.gate.signatures.is_none());
        assert_eq!(s.raw.spool.min_free_bytes, 256 << 20);
        assert_eq!(s.raw.spool.retain_confirmed, Duration::from_secs(300));
    }

    #[test]
    fn retain_confirmed_is_a_duration_with_a_bound() {
        let c = load_str("[spool]\nretain_confirmed = \"0s\"\n").unwrap();
        assert!(c.raw.spool.retain_confirmed.is_zero());
        let c = load_str("[spool]\nretain_confirmed = \"10m\"\n").unwrap();
        assert_eq!(c.raw.spool.retain_confirmed, Duration::from_secs(600));
        let err = load_str("[spool]\nretain_confirmed = \"8days\"\n").unwrap_err();
        assert!(err.to_string().contains("spool.retain_confirmed"), "{err}");
    }

    #[test]
    fn min_free_bytes_zero_disables_and_megabytes_pass() {
        for ok in ["0", "1048576", "268435456"] {
            let c = load_str(&format!("[spool]\nmin_free_bytes = {ok}\n")).unwrap();
            assert_eq!(c.raw.spool.min_free_bytes.to_string(), ok);
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load_str("[http]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        let err = load_str("[spool]\ndirr = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("dirr"), "{err}");
    }

    #[test]
    fn wrong_type_names_key() {
        let err = load_str("[spool]\nmax_bytes = \"lots\"\n").unwrap_err();
        assert!(err.to_string().contains("max_bytes"), "{err}");
    }

    #[test]
    fn invalid_values_name_key() {
        for (toml, key) in [
            ("[http]\npath = \"no-slash\"\n", "http.path"),
            ("[spool]\nsegment_bytes = 10\n", "spool.segment_bytes"),
            ("[spool]\nmax_bytes = 1000000\n", "spool.max_bytes"),
            ("[spool]\nmin_free_bytes = 256\n", "spool.min_free_bytes"),
            ("[routing]\nprefix = \"a b.\"\n", "routing.prefix"),
            (
                "[routing.routes]\n\"session.*\" = \"x.>\"\n",
                "routing.routes",
            ),
            (
                "[auth]\nheader_values = [\"0123456789abcdef\"]\n",
                "auth.header_name",
            ),
            (
                "[auth]\nheader_name = \"x-token\"\nheader_values = [\"short\"]\n",
                "auth.header_values",
            ),
            ("[http]\nlisten = \"0.0.0.0:8080\"\n", "http.listen"),
            ("[sink.nats]\nstream = \"a.b\"\n", "sink.nats.stream"),
            ("[log]\nlevel = \"[[[\"\n", "log.level"),
            (
                "[sink.kafka.options]\n\"acks\" = \"1\"\n",
                "sink.kafka.options",
            ),
            ("[sink.kafka]\npartitions = 0\n", "sink.kafka.partitions"),
            ("[sink.kafka]\ncompression = \"brotli\"\n", "compression"),
            ("[auth]\ndedup_wait = \"0s\"\n", "auth.dedup_wait"),
            ("[auth]\ndedup_wait = \"2m\"\n", "auth.dedup_wait"),
        ] {
            let err = load_str(toml).unwrap_err();
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn non_loopback_allowed_with_auth_or_explicit_opt_out() {
        load_str("[http]\nlisten = \"0.0.0.0:8080\"\n[auth]\nallow_unauthenticated = true\n")
            .unwrap();
        let s = load_str(
            "[http]\nlisten = \"0.0.0.0:8080\"\n[auth]\nheader_name = \"X-Token\"\nheader_values = [\"0123456789abcdef\", \"fedcba9876543210\"]\n",
        )
        .unwrap();
        assert_eq!(s.gate.token.unwrap().digests.len(), 2);
        let s = load_str(
            "[http]\nlisten = \"0.0.0.0:8080\"\n[auth]\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n",
        )
        .unwrap();
        assert_eq!(s.gate.signatures.unwrap().keys.len(), 1);
    }

    #[test]
    fn secrets_from_files_and_errors_that_do_not_leak() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secrets");
        std::fs::write(
            &f,
            "# rotation: old then new\nwhsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n\nwhsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n",
        )
        .unwrap();
        let mut c = Config::default();
        c.auth.secret_files = vec![f.clone()];
        assert_eq!(c.validate().unwrap().gate.signatures.unwrap().keys.len(), 2);
        let mut c = Config::default();
        c.auth.secrets = vec!["nothex-supersecret".into()];
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("auth.secrets") && !err.contains("supersecret"),
            "{err}"
        );
        std::fs::write(&f, "whsec_ok\n").unwrap();
        let mut c = Config::default();
        c.auth.secret_files = vec![f];
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("line 1") && !err.contains("whsec_ok"), "{err}");
    }

    #[test]
    fn environment_overrides_file_with_double_underscore_nesting() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "hb.toml",
                "[http]\nlisten = \"127.0.0.1:1000\"\n[sink.nats]\nstream = \"FROMFILE\"\n",
            )?;
            jail.set_env("HOOKBRIDGE_SINK__NATS__STREAM", "FROMENV");
            jail.set_env("HOOKBRIDGE_SPOOL__MAX_BYTES", "2147483648");
            let c = Config::load(Some(Path::new("hb.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.http.listen.port(), 1000);
            assert_eq!(c.sink.nats.stream, "FROMENV");
            assert_eq!(c.spool.max_bytes, 2 << 30);
            Ok(())
        });
    }

    #[test]
    fn unknown_environment_key_is_an_error() {
        Jail::expect_with(|jail| {
            jail.set_env("HOOKBRIDGE_HTTP__LISTN", "127.0.0.1:1");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("listn"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/hb.toml"))).unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }

    #[test]
    fn redaction_hides_secrets() {
        let mut c = Config::default();
        c.auth.header_name = Some("x-token".into());
        c.auth.header_values = vec!["supersecretvalue1".into()];
        c.auth.secrets = vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()];
        c.sink.nats.password = Some("hunter2hunter2".into());
        c.sink
            .kafka
            .options
            .insert("sasl.password".into(), "kafkasecret99".into());
        let out = c.redacted_toml();
        let debug = format!("{c:?}");
        for secret in ["supersecretvalue1", "MfKQ9r8", "hunter2", "kafkasecret99"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(!out.contains("supersecretvalue1"));
        assert!(!out.contains("MfKQ9r8"));
        assert!(!out.contains("hunter2"));
        assert!(!out.contains("kafkasecret99"));
        assert!(out.contains(REDACTED));
    }
}
