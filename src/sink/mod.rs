//! Where confirmed deliveries go. A [`Sink`] publishes one [`Message`] and resolves only when the
//! broker has confirmed it (JetStream PubAck, Kafka delivery report, NATS flush); the forwarder
//! keeps many sends in flight and decides what is retried.
//!
//! Only `sink/nats.rs` imports `async_nats`; only `sink/kafka.rs` imports `rdkafka`.

pub mod kafka;
pub mod nats;

use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;
use futures_util::future::BoxFuture;

/// One message as every sink sees it, built by the forwarder from a spool record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Spool sequence number (for logs).
    pub seq: u64,
    /// The broker-side de-duplication key (`Nats-Msg-Id`): the delivery id, as `<endpoint>:<id>`
    /// for an endpoint other than `default`, so two senders' equal ids stay two messages in one
    /// stream. (The `webhook-id` header is the delivery id as sent.)
    pub id: String,
    /// Subject / topic, already checked by the router.
    pub destination: String,
    /// Ordering key: `data.id`.
    pub key: String,
    /// Header name → value; values are header-safe (visible ASCII and spaces).
    pub headers: Vec<(&'static str, String)>,
    /// The request body, byte-exact.
    pub payload: Bytes,
}

/// Why a send failed. Nothing is dropped: a retryable failure is retried from the spool, a
/// permanent one moves the record to the local dead-letter store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// The broker is unreachable, timed out, or refused for a reason that may pass (no stream
    /// yet, leader election). `kind` is a metric label from a fixed set.
    #[error("{kind}: {detail}")]
    Retryable { kind: &'static str, detail: String },
    /// The broker refused this message for a reason retrying will not fix (too large, not
    /// authorized, invalid or missing destination). `kind` is the dead-letter reason label.
    #[error("{kind} (permanent): {detail}")]
    Permanent { kind: &'static str, detail: String },
}

impl SendError {
    pub fn kind(&self) -> &'static str {
        match self {
            SendError::Retryable { kind, .. } | SendError::Permanent { kind, .. } => kind,
        }
    }
}

pub trait Sink: Send + Sync + 'static {
    /// Metric label: `nats` or `kafka`.
    fn name(&self) -> &'static str;
    /// Publishes `msg` and resolves once the broker confirmed it. Must be cancel-safe in the sense
    /// that dropping the future never loses a record (the spool still holds it).
    fn send(&self, msg: Message) -> BoxFuture<'static, Result<(), SendError>>;
    /// Flushes and closes connections; called once at shutdown after the last send resolved.
    fn close(&self) -> BoxFuture<'static, ()>;
}

/// What the admin endpoint reports about the broker.
#[derive(Debug, Default)]
pub struct BrokerStatus(AtomicU8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerState {
    /// Nothing sent or heard yet.
    Unknown,
    Up,
    Down,
}

impl BrokerStatus {
    pub fn set(&self, s: BrokerState) {
        let v = match s {
            BrokerState::Unknown => 0,
            BrokerState::Up => 1,
            BrokerState::Down => 2,
        };
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> BrokerState {
        match self.0.load(Ordering::Relaxed) {
            1 => BrokerState::Up,
            2 => BrokerState::Down,
            _ => BrokerState::Unknown,
        }
    }
}

/// A header value as sent, or `None` when it is not safe to put in a header (control characters,
/// non-ASCII, over 1 KiB). The body still carries the original.
pub fn header_safe(v: &str) -> Option<&str> {
    (!v.is_empty() && v.len() <= 1024 && v.bytes().all(|b| b == b' ' || b.is_ascii_graphic()))
        .then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_safety() {
        assert_eq!(header_safe("session.updated"), Some("session.updated"));
        assert_eq!(header_safe("a b"), Some("a b"));
        assert_eq!(header_safe("a\r\nb"), None);
        assert_eq!(header_safe("é"), None);
        assert_eq!(header_safe(""), None);
        assert_eq!(header_safe(&"x".repeat(1025)), None);
    }
}
