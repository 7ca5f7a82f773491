//! `[sink]`, `[sink.nats]`, `[sink.kafka]`: where records are published.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, Error, REDACTED};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    #[default]
    Nats,
    Kafka,
}

/// How a message carries CloudEvents attributes (`sink.cloudevents`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudEventsMode {
    /// No CloudEvents attributes: the body and the `webhook-*` / `sessionboard-*` headers only.
    #[default]
    Off,
    /// Binary content mode: the body stays the sender's bytes, attributes travel as `ce-`
    /// (NATS) or `ce_` (Kafka) headers.
    Binary,
    /// Structured content mode: the message is one `application/cloudevents+json` event whose
    /// `data` is the sender's body, embedded byte for byte.
    Structured,
}

impl CloudEventsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CloudEventsMode::Off => "off",
            CloudEventsMode::Binary => "binary",
            CloudEventsMode::Structured => "structured",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// `nats` or `kafka`. Default `nats`.
    pub kind: SinkKind,
    /// CloudEvents on the wire: `off`, `binary` or `structured`. Default `off`.
    pub cloudevents: CloudEventsMode,
    /// The CloudEvents `source` (a URI-reference); `{org_id}` is replaced by `metadata.org_id`,
    /// percent-encoded. Default `/sessionboard/orgs/{org_id}`.
    pub cloudevents_source: String,
    /// The `source` of a delivery without `metadata.org_id` (a URI-reference, no placeholder).
    /// Default `/sessionboard`.
    pub cloudevents_source_fallback: String,
    /// Prepended to `metadata.action` to form the CloudEvents `type`. Default `com.sessionboard.`.
    pub cloudevents_type_prefix: String,
    /// `[sink.nats]`, used when `kind = "nats"`. Default: each key's own.
    pub nats: NatsConfig,
    /// `[sink.kafka]`, used when `kind = "kafka"`. Default: each key's own.
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
    /// Server URL(s), comma-separated: a seed list of cluster members; the client connects to
    /// one and fails over to the others (and to the members the cluster announces). Default
    /// `nats://127.0.0.1:4222`.
    pub url: String,
    /// `jetstream` or `core`. Default `jetstream`.
    pub mode: NatsMode,
    /// JetStream stream name. Default `SESSIONBOARD`.
    pub stream: String,
    /// Create the stream (subjects `<prefix>>`) when it is missing. Default true.
    pub create_stream: bool,
    /// Replicas of the stream hookbridge creates (1–5; JetStream keeps them on that many servers
    /// of a cluster, and a PubAck then means a majority stored the message). An existing stream
    /// keeps its own. Default 1.
    pub replicas: usize,
    /// Time to wait for a PubAck or flush before the attempt counts as failed. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Credentials file (`.creds`) for NATS auth. Default none.
    pub credentials_file: Option<PathBuf>,
    /// Token for NATS token auth. Default none.
    pub token: Option<String>,
    /// User for NATS user/password auth. Default none.
    pub user: Option<String>,
    /// Password for NATS user/password auth. Default none.
    pub password: Option<String>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            mode: NatsMode::Jetstream,
            stream: "SESSIONBOARD".into(),
            create_stream: true,
            replicas: 1,
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

/// Most replicas JetStream allows for a stream.
pub const MAX_NATS_REPLICAS: usize = 5;

impl NatsConfig {
    /// The server URLs of `url`, trimmed (validation refused empty entries).
    pub fn servers(&self) -> Vec<&str> {
        self.url.split(',').map(str::trim).collect()
    }

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

/// Option names whose values are secrets (redacted by `check-config`).
fn is_secret_option(key: &str) -> bool {
    key.contains("password") || key.contains("secret") || key.ends_with(".key.pem")
}

redacted_debug!(NatsConfig, KafkaConfig);

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            kind: SinkKind::Nats,
            cloudevents: CloudEventsMode::Off,
            cloudevents_source: "/sessionboard/orgs/{org_id}".into(),
            cloudevents_source_fallback: "/sessionboard".into(),
            cloudevents_type_prefix: "com.sessionboard.".into(),
            nats: NatsConfig::default(),
            kafka: KafkaConfig::default(),
        }
    }
}

/// The `{org_id}` placeholder of `sink.cloudevents_source`.
pub const ORG_ID_PLACEHOLDER: &str = "{org_id}";

/// Characters RFC 3986 allows in a URI-reference (unreserved, reserved, `%` of an escape).
pub(super) fn is_uri_reference(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&b))
}

impl SinkConfig {
    /// Both sinks are checked whichever is selected, so switching `kind` cannot surface an old
    /// mistake at the worst moment.
    pub(super) fn validate(&self) -> Result<(), Error> {
        // Checked in every mode, so turning CloudEvents on cannot surface an old mistake.
        if !is_uri_reference(&self.cloudevents_source.replace(ORG_ID_PLACEHOLDER, "x")) {
            return Err(invalid(
                "sink.cloudevents_source",
                "must be a URI-reference (RFC 3986 characters only), optionally with {org_id}",
            ));
        }
        if !is_uri_reference(&self.cloudevents_source_fallback) {
            return Err(invalid(
                "sink.cloudevents_source_fallback",
                "must be a URI-reference (RFC 3986 characters only)",
            ));
        }
        if self.cloudevents_type_prefix.len() > 200
            || !self
                .cloudevents_type_prefix
                .bytes()
                .all(|b| b.is_ascii_graphic())
        {
            return Err(invalid(
                "sink.cloudevents_type_prefix",
                "must be at most 200 visible ASCII characters",
            ));
        }
        self.kafka.validate()?;
        self.nats.validate()
    }
}

impl KafkaConfig {
    fn validate(&self) -> Result<(), Error> {
        if self.brokers.trim().is_empty() {
            return Err(invalid(
                "sink.kafka.brokers",
                "must name at least one broker",
            ));
        }
        if self.partitions < 1 {
            return Err(invalid("sink.kafka.partitions", "must be at least 1"));
        }
        if self.replication_factor < 1 {
            return Err(invalid(
                "sink.kafka.replication_factor",
                "must be at least 1",
            ));
        }
        if self.message_timeout < Duration::from_secs(1) {
            return Err(invalid("sink.kafka.message_timeout", "must be at least 1s"));
        }
        if self.unknown_topic_attempts == 0 {
            return Err(invalid(
                "sink.kafka.unknown_topic_attempts",
                "must be at least 1",
            ));
        }
        for key in self.options.keys() {
            if let Some((_, why)) = KAFKA_RESERVED_OPTIONS.iter().find(|(name, _)| name == key) {
                return Err(invalid(
                    "sink.kafka.options",
                    format!("`{key}` cannot be set here: {why}"),
                ));
            }
        }
        Ok(())
    }
}

impl NatsConfig {
    fn validate(&self) -> Result<(), Error> {
        if self.servers().iter().any(|s| s.is_empty()) {
            return Err(invalid(
                "sink.nats.url",
                "must be one or more comma-separated server URLs, none empty",
            ));
        }
        if !(1..=MAX_NATS_REPLICAS).contains(&self.replicas) {
            return Err(invalid(
                "sink.nats.replicas",
                format!("must be between 1 and {MAX_NATS_REPLICAS}"),
            ));
        }
        if self.stream.is_empty() || self.stream.contains(['.', '*', '>', ' ', '/', '\\']) {
            return Err(invalid(
                "sink.nats.stream",
                "must be a non-empty name without `.`, `*`, `>`, `/`, `\\` or spaces",
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(invalid("sink.nats.request_timeout", "must be positive"));
        }
        Ok(())
    }
}
