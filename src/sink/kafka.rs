//! Kafka sink (rdkafka, librdkafka built in statically with the crate's bundled sources). The
//! only module that imports `rdkafka`.
//!
//! The producer is idempotent with `acks=all`, so librdkafka's own retries neither duplicate nor
//! reorder within a partition. A record counts as confirmed only on its delivery report. When
//! librdkafka gives up on a message (`message.timeout.ms`, a transport error) the forwarder
//! resends it from the spool; nothing is skipped because a timeout passed.
//!
//! Key = `data.id`, so each resource's changes land in one partition, in order.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use super::{BrokerState, BrokerStatus, Message, SendError, Sink};
use crate::config::KafkaConfig;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// librdkafka refused the configuration (unknown property, invalid value). The message is
    /// librdkafka's own and names the property.
    #[error("invalid Kafka client configuration (check sink.kafka.options): {0}")]
    Config(String),
}

/// Routes librdkafka's logs and errors into `tracing` and tracks whether brokers are reachable.
struct Context {
    status: Arc<BrokerStatus>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(facility = fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.status.set(BrokerState::Down);
        }
        tracing::warn!(error = %error, "librdkafka: {reason}");
    }
}

struct Inner {
    /// Replaced when librdkafka reports a fatal error (see [`Inner::replace_if_fatal`]).
    producer: std::sync::RwLock<Arc<FutureProducer<Context>>>,
    client: ClientConfig,
    status: Arc<BrokerStatus>,
    admin: Option<AdminClient<DefaultClientContext>>,
    partitions: i32,
    replication_factor: i32,
    message_timeout: Duration,
    unknown_topic_attempts: u32,
    /// Topics this process created or found existing (with `create_topics`).
    known_topics: Mutex<HashSet<String>>,
    /// Held while one send asks the broker to create a topic: the others wait for its answer
    /// instead of each sending its own CreateTopics (up to `forward.max_in_flight` at once).
    topic_check: tokio::sync::Mutex<()>,
    /// Consecutive unknown-topic failures per topic (with `create_topics = false`).
    unknown_topic_failures: Mutex<HashMap<String, u32>>,
    queue_gauge: prometheus::IntGauge,
}

pub struct KafkaSink(Arc<Inner>);

/// The librdkafka configuration hookbridge uses: the operator's `options` first, then the
/// properties hookbridge owns (config validation already refused options that collide).
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &cfg.options {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", &cfg.client_id)
        .set("compression.type", cfg.compression.as_str())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            cfg.message_timeout.as_millis().to_string(),
        );
    c
}

impl KafkaSink {
    /// Creates the producer (no broker needed: librdkafka connects in the background).
    pub fn new(
        cfg: &KafkaConfig,
        status: Arc<BrokerStatus>,
        queue_gauge: prometheus::IntGauge,
    ) -> Result<KafkaSink, Error> {
        let client = client_config(cfg);
        let producer: FutureProducer<Context> = client
            .create_with_context(Context {
                status: status.clone(),
            })
            .map_err(|e| Error::Config(e.to_string()))?;
        let admin = if cfg.create_topics {
            Some(
                client
                    .create()
                    .map_err(|e: KafkaError| Error::Config(e.to_string()))?,
            )
        } else {
            None
        };
        Ok(KafkaSink(Arc::new(Inner {
            producer: std::sync::RwLock::new(Arc::new(producer)),
            client,
            status,
            admin,
            partitions: cfg.partitions,
            replication_factor: cfg.replication_factor,
            message_timeout: cfg.message_timeout,
            unknown_topic_attempts: cfg.unknown_topic_attempts,
            known_topics: Mutex::new(HashSet::new()),
            topic_check: tokio::sync::Mutex::new(()),
            unknown_topic_failures: Mutex::new(HashMap::new()),
            queue_gauge,
        })))
    }
}

impl Inner {
    fn producer(&self) -> Arc<FutureProducer<Context>> {
        self.producer.read().unwrap().clone()
    }

    /// An idempotent producer that hit a fatal error (for example fenced by the broker after its
    /// messages timed out during a long outage) refuses every later send. Retrying on it would
    /// never succeed, so it is replaced by a fresh producer (new producer id); the records are
    /// resent from the spool. Returns whether `used` was fatally broken.
    fn replace_if_fatal(&self, used: &Arc<FutureProducer<Context>>, error: &KafkaError) -> bool {
        // librdkafka raises some of these as instance-fatal errors and reports others only per
        // message (a broker that keeps fencing the producer id); either way this instance is done.
        let per_message = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::OutOfOrderSequenceNumber
                    | RDKafkaErrorCode::Fatal
            )
        );
        let Some((code, reason)) = used.client().fatal_error().or_else(|| {
            per_message.then(|| (error.rdkafka_error_code().unwrap(), error.to_string()))
        }) else {
            return false;
        };
        let mut current = self.producer.write().unwrap();
        if Arc::ptr_eq(&current, used) {
            match self.client.create_with_context(Context {
                status: self.status.clone(),
            }) {
                Ok(fresh) => {
                    tracing::error!(code = ?code, reason = %reason,
                        "the Kafka producer hit a fatal error; replaced it with a new one");
                    *current = Arc::new(fresh);
                }
                Err(e) => tracing::error!(error = %e, "replacing the failed Kafka producer failed"),
            }
        }
        true
    }

    /// Whether sends to `topic` can go ahead without [`Inner::ensure_topic`].
    fn topic_known(&self, topic: &str) -> bool {
        self.admin.is_none() || self.known_topics.lock().unwrap().contains(topic)
    }

    /// With `create_topics`, creates `topic` (an existing one is fine) and remembers it; called
    /// once [`Inner::topic_known`] said it is not known yet.
    async fn ensure_topic(&self, topic: &str) -> Result<(), SendError> {
        let Some(admin) = &self.admin else {
            return Ok(());
        };
        let new = NewTopic::new(
            topic,
            self.partitions,
            TopicReplication::Fixed(self.replication_factor),
        );
        let opts = AdminOptions::new().operation_timeout(Some(self.message_timeout));
        let results =
            admin
                .create_topics([&new], &opts)
                .await
                .map_err(|e| SendError::Retryable {
                    kind: "create_topic",
                    detail: format!("creating topic {topic}: {e}"),
                })?;
        for r in results {
            match r {
                Ok(_) => tracing::info!(topic, partitions = self.partitions, "created Kafka topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(
                        classify_code(code, format!("creating topic {topic}: {code}")).unwrap_or(
                            SendError::Retryable {
                                kind: "create_topic",
                                detail: format!("creating topic {topic}: {code}"),
                            },
                        ),
                    )
                }
            }
        }
        self.known_topics.lock().unwrap().insert(topic.to_owned());
        Ok(())
    }

    fn classify(&self, topic: &str, e: KafkaError) -> SendError {
        let detail = e.to_string();
        let Some(code) = e.rdkafka_error_code() else {
            return SendError::Retryable {
                kind: "client",
                detail,
            };
        };
        if matches!(
            code,
            RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition
        ) {
            if self.admin.is_some() {
                // Created earlier but gone now (deleted, or a broker that lost its state):
                // create it again on the next attempt.
                self.known_topics.lock().unwrap().remove(topic);
                return SendError::Retryable {
                    kind: "unknown_topic",
                    detail,
                };
            }
            let mut failures = self.unknown_topic_failures.lock().unwrap();
            let n = failures.entry(topic.to_owned()).or_insert(0);
            *n += 1;
            return if *n >= self.unknown_topic_attempts {
                SendError::Permanent {
                    kind: "unknown_topic",
                    detail: format!("{detail} ({n} attempts; sink.kafka.create_topics is false)"),
                }
            } else {
                SendError::Retryable {
                    kind: "unknown_topic",
                    detail,
                }
            };
        }
        classify_code(code, detail.clone()).unwrap_or(SendError::Retryable {
            kind: match code {
                RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::RequestTimedOut => "timeout",
                RDKafkaErrorCode::QueueFull => "queue_full",
                RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::NetworkException => "connection",
                _ => "broker",
            },
            detail,
        })
    }
}

/// The error codes retrying cannot fix: each becomes a dead letter with this reason.
fn classify_code(code: RDKafkaErrorCode, detail: String) -> Option<SendError> {
    let kind = match code {
        RDKafkaErrorCode::TopicAuthorizationFailed => "topic_authorization_failed",
        RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize => {
            "message_too_large"
        }
        RDKafkaErrorCode::InvalidTopic => "invalid_topic",
        RDKafkaErrorCode::InvalidMessage | RDKafkaErrorCode::InvalidRecord => "invalid_message",
        _ => return None,
    };
    Some(SendError::Permanent { kind, detail })
}

impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn send(&self, msg: Message) -> BoxFuture<'static, Result<(), SendError>> {
        let inner = self.0.clone();
        async move {
            // Boxed, and only when needed: the admin call's state is large, and inline it would
            // size every send future (up to `forward.max_in_flight` are alive at once) for it.
            if !inner.topic_known(&msg.destination) {
                let _one = inner.topic_check.lock().await;
                if !inner.topic_known(&msg.destination) {
                    Box::pin(inner.ensure_topic(&msg.destination)).await?;
                }
            }
            let mut headers = OwnedHeaders::new_with_capacity(msg.headers.len());
            for (name, value) in &msg.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value.as_bytes()),
                });
            }
            let record = FutureRecord::to(&msg.destination)
                .key(msg.key.as_bytes())
                .payload(&msg.payload[..])
                .headers(headers);
            // Queueing waits at most one message timeout for room in librdkafka's queue; the
            // forwarder's window keeps it far from full in practice.
            let producer = inner.producer();
            let result = producer
                .send(record, Timeout::After(inner.message_timeout))
                .await;
            inner.queue_gauge.set(producer.in_flight_count() as i64);
            match result {
                Ok(_) => {
                    if inner.admin.is_none() {
                        let mut f = inner.unknown_topic_failures.lock().unwrap();
                        if !f.is_empty() {
                            f.remove(&msg.destination);
                        }
                    }
                    Ok(())
                }
                Err((e, _)) => {
                    if inner.replace_if_fatal(&producer, &e) {
                        return Err(SendError::Retryable {
                            kind: "producer_fatal",
                            detail: e.to_string(),
                        });
                    }
                    Err(inner.classify(&msg.destination, e))
                }
            }
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        let inner = self.0.clone();
        async move {
            let timeout = inner.message_timeout.min(Duration::from_secs(5));
            let producer = inner.producer();
            let _ = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(cfg: &KafkaConfig) -> Result<KafkaSink, Error> {
        KafkaSink::new(
            cfg,
            Arc::new(BrokerStatus::default()),
            prometheus::IntGauge::new("q", "q").unwrap(),
        )
    }

    #[test]
    fn producer_is_created_without_a_broker() {
        let mut cfg = KafkaConfig {
            brokers: "127.0.0.1:1".into(),
            ..KafkaConfig::default()
        };
        cfg.options.insert("linger.ms".into(), "5".into());
        cfg.options
            .insert("security.protocol".into(), "sasl_ssl".into());
        cfg.options
            .insert("sasl.mechanism".into(), "SCRAM-SHA-512".into());
        cfg.options.insert("sasl.username".into(), "u".into());
        cfg.options.insert("sasl.password".into(), "p".into());
        assert!(sink(&cfg).is_ok());
    }

    #[test]
    fn typo_in_options_is_a_startup_error_naming_the_property() {
        let mut cfg = KafkaConfig::default();
        cfg.options.insert("linger.mss".into(), "5".into());
        let err = sink(&cfg).err().unwrap().to_string();
        assert!(err.contains("linger.mss"), "{err}");
        let mut cfg = KafkaConfig::default();
        cfg.options.insert("linger.ms".into(), "soon".into());
        let err = sink(&cfg).err().unwrap().to_string();
        assert!(err.contains("linger.ms"), "{err}");
    }

    #[test]
    fn permanent_codes() {
        for (code, kind) in [
            (
                RDKafkaErrorCode::TopicAuthorizationFailed,
                "topic_authorization_failed",
            ),
            (RDKafkaErrorCode::MessageSizeTooLarge, "message_too_large"),
            (RDKafkaErrorCode::InvalidTopic, "invalid_topic"),
        ] {
            let e = classify_code(code, String::new()).unwrap();
            assert!(matches!(e, SendError::Permanent { .. }));
            assert_eq!(e.kind(), kind);
        }
        assert!(classify_code(RDKafkaErrorCode::MessageTimedOut, String::new()).is_none());
        assert!(classify_code(RDKafkaErrorCode::AllBrokersDown, String::new()).is_none());
    }

    #[test]
    fn unknown_topic_becomes_permanent_after_the_configured_attempts() {
        let cfg = KafkaConfig {
            unknown_topic_attempts: 3,
            ..KafkaConfig::default()
        };
        let s = sink(&cfg).unwrap();
        let err = || KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition);
        assert!(matches!(
            s.0.classify("t", err()),
            SendError::Retryable { .. }
        ));
        assert!(matches!(
            s.0.classify("t", err()),
            SendError::Retryable { .. }
        ));
        assert!(matches!(
            s.0.classify("t", err()),
            SendError::Permanent { .. }
        ));
        assert!(matches!(
            s.0.classify("u", err()),
            SendError::Retryable { .. }
        ));
        // A timeout is never permanent, however often it happens.
        for _ in 0..10 {
            let e = s.0.classify(
                "t",
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
            );
            assert!(matches!(
                e,
                SendError::Retryable {
                    kind: "timeout",
                    ..
                }
            ));
        }
    }
}
