//! NATS sink (async-nats): JetStream publish confirmed by the stream's PubAck, or core publish
//! confirmed by a flush. The only module that imports `async_nats`.
//!
//! The client connects in the background and reconnects forever, so the bridge starts and keeps
//! accepting while NATS is down; each send is bounded by `sink.nats.request_timeout` and a timeout
//! is just a retryable failure. `sink.nats.url` may list several servers of a cluster: the client
//! fails over between them (and the servers the cluster announces). A stream leader election is
//! seen here as timeouts or "no responders" until a new leader answers: retried like any outage,
//! and the `Nats-Msg-Id` de-duplication drops a retry whose first attempt the old leader stored.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::HeaderName;
use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::{ConnectOptions, HeaderMap};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{BrokerState, BrokerStatus, Message, SendError, Sink};
use crate::config::{NatsConfig, NatsMode};
use crate::endpoint::Endpoints;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL or credentials could not be used (bad URL, unreadable credentials file).
    #[error("cannot set up the NATS connection: {0}")]
    Setup(String),
}

/// The stream hookbridge creates when `create_stream = true`.
#[derive(Debug)]
struct StreamSpec {
    name: String,
    subjects: Vec<String>,
    replicas: usize,
    /// Set once the replica-count mismatch was logged (every concurrent lookup sees it).
    replicas_warned: AtomicBool,
}

pub struct NatsSink {
    /// Shared with every send in flight: one reference count per message instead of copies of
    /// the client, the JetStream context and the stream's names.
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    /// `Some` in JetStream mode.
    js: Option<jetstream::Context>,
    stream: Option<StreamSpec>,
    /// Set once the stream is known to exist; cleared when a publish says it is gone.
    stream_ready: AtomicBool,
    /// Held by the one send that asks the server for the stream while it is not known to exist.
    stream_check: tokio::sync::Mutex<()>,
    timeout: Duration,
}

impl NatsSink {
    /// Returns at once; the connection is made (and remade) in the background.
    pub async fn connect(
        cfg: &NatsConfig,
        endpoints: &Endpoints,
        status: Arc<BrokerStatus>,
    ) -> Result<NatsSink, Error> {
        let mut opts = ConnectOptions::new()
            .name("hookbridge")
            .retry_on_initial_connect()
            .connection_timeout(cfg.request_timeout)
            .request_timeout(Some(cfg.request_timeout))
            .event_callback(move |event| {
                let status = status.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("connected to NATS");
                            status.set(BrokerState::Up);
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!(
                                "disconnected from NATS; reconnecting in the background"
                            );
                            status.set(BrokerState::Down);
                        }
                        other => tracing::info!(event = %other, "NATS client event"),
                    }
                }
            });
        if let Some(path) = &cfg.credentials_file {
            opts = opts
                .credentials_file(path)
                .await
                .map_err(|e| Error::Setup(format!("credentials file {}: {e}", path.display())))?;
        }
        if let Some(token) = &cfg.token {
            opts = opts.token(token.clone());
        }
        if let (Some(user), Some(pass)) = (&cfg.user, &cfg.password) {
            opts = opts.user_and_password(user.clone(), pass.clone());
        }
        let client = opts
            .connect(cfg.servers())
            .await
            .map_err(|e| Error::Setup(e.to_string()))?;
        let (js, stream) = match cfg.mode {
            NatsMode::Core => (None, None),
            NatsMode::Jetstream => {
                let js = jetstream::ContextBuilder::new()
                    .timeout(cfg.request_timeout)
                    .ack_timeout(cfg.request_timeout)
                    .build(client.clone());
                let stream = cfg.create_stream.then(|| StreamSpec {
                    name: cfg.stream.clone(),
                    subjects: stream_subjects(endpoints),
                    replicas: cfg.replicas,
                    replicas_warned: AtomicBool::new(false),
                });
                (Some(js), stream)
            }
        };
        Ok(NatsSink {
            inner: Arc::new(Inner {
                client,
                js,
                stream,
                stream_ready: AtomicBool::new(false),
                stream_check: tokio::sync::Mutex::new(()),
                timeout: cfg.request_timeout,
            }),
        })
    }
}

/// For every endpoint, `<prefix>>` plus every fixed route destination outside the prefix.
fn stream_subjects(endpoints: &Endpoints) -> Vec<String> {
    let mut subjects = Vec::new();
    for router in endpoints.iter().map(|e| &e.router) {
        subjects.push(format!("{}>", router.prefix()));
        for d in router.fixed_destinations() {
            if !d.starts_with(router.prefix()) && !subjects.iter().any(|s| s == d) {
                subjects.push(d.to_owned());
            }
        }
    }
    subjects
}

/// The message's headers as async-nats wants them. The values are moved, not copied, and the
/// names (a small fixed set of `&'static str`) become `HeaderName`s without parsing or
/// allocating: per message, that validation and the copies were a visible share of the publish
/// path.
fn headers(headers: Vec<(&'static str, String)>, id: Option<String>) -> HeaderMap {
    let name = |n: &'static str| -> HeaderName {
        // `from_static` trusts the name; the names are the forwarder's constants.
        debug_assert!(n.parse::<HeaderName>().is_ok(), "invalid header name {n:?}");
        HeaderName::from_static(n)
    };
    let mut h = HeaderMap::new();
    for (n, value) in headers {
        h.insert(name(n), value);
    }
    if let Some(id) = id {
        // JetStream drops a second message with the same id inside the stream's duplicate window,
        // which absorbs our own retries and the sender's.
        h.insert(name("Nats-Msg-Id"), id);
    }
    h
}

impl Sink for NatsSink {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn send(&self, msg: Message) -> BoxFuture<'static, Result<(), SendError>> {
        let inner = self.inner.clone();
        async move {
            let Inner {
                client,
                js,
                stream,
                stream_ready: ready,
                stream_check,
                timeout,
            } = &*inner;
            let timeout = *timeout;
            match js {
                None => {
                    let h = headers(msg.headers, None);
                    client
                        .publish_with_headers(msg.destination, h, msg.payload)
                        .await
                        .map_err(|e| classify_core(e.kind(), e.to_string()))?;
                    match tokio::time::timeout(timeout, client.flush()).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(SendError::Retryable {
                            kind: "connection",
                            detail: e.to_string(),
                        }),
                        Err(_) => Err(SendError::Retryable {
                            kind: "timeout",
                            detail: format!("flush not confirmed within {timeout:?}"),
                        }),
                    }
                }
                Some(js) => {
                    if let Some(spec) = stream {
                        if !ready.load(Ordering::Acquire) {
                            // One send at a time asks the server; the others wait for its
                            // answer instead of sending up to `forward.max_in_flight` stream
                            // requests at once while the broker is away or just back.
                            let _one = stream_check.lock().await;
                            if !ready.load(Ordering::Acquire) {
                                // Boxed: its state is large (kilobytes), and inline it would
                                // size every send future for it.
                                Box::pin(ensure_stream(js, spec)).await?;
                                ready.store(true, Ordering::Release);
                            }
                        }
                    }
                    let h = headers(msg.headers, Some(msg.id));
                    let ack = js
                        .publish_with_headers(msg.destination, h, msg.payload)
                        .await
                        .map_err(|e| classify_js(&e))?;
                    match ack.await {
                        Ok(_) => Ok(()),
                        Err(e) => {
                            if e.kind() == PublishErrorKind::StreamNotFound {
                                ready.store(false, Ordering::Release);
                            }
                            Err(classify_js(&e))
                        }
                    }
                }
            }
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        let client = self.inner.client.clone();
        let timeout = self.inner.timeout;
        async move {
            let _ = tokio::time::timeout(timeout, client.flush()).await;
        }
        .boxed()
    }
}

async fn ensure_stream(js: &jetstream::Context, spec: &StreamSpec) -> Result<(), SendError> {
    let config = jetstream::stream::Config {
        name: spec.name.clone(),
        subjects: spec.subjects.clone(),
        num_replicas: spec.replicas,
        ..Default::default()
    };
    match js.get_or_create_stream(config).await {
        Ok(stream) => {
            let replicas = stream.cached_info().config.num_replicas;
            tracing::info!(stream = %spec.name, subjects = ?spec.subjects, replicas, "JetStream stream ready");
            if replicas != spec.replicas && !spec.replicas_warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(stream = %spec.name, replicas, configured = spec.replicas,
                    "the stream exists with another replica count; sink.nats.replicas applies only to a stream hookbridge creates");
            }
            Ok(())
        }
        Err(e) => Err(SendError::Retryable {
            kind: "stream_unavailable",
            detail: format!("cannot get or create stream {}: {e}", spec.name),
        }),
    }
}

/// JetStream API error codes (`err_code` in the server's answer) that retrying cannot fix.
fn permanent_api_error(code: u64) -> Option<&'static str> {
    match code {
        // "message size exceeds maximum allowed": the stream's max_msg_size.
        10054 => Some("too_large"),
        _ => None,
    }
}

fn classify_js(e: &jetstream::context::PublishError) -> SendError {
    use std::error::Error as _;
    let detail = e.to_string();
    // `Other` carries the server's API error, if the server answered with one.
    let api = e
        .source()
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .map(|api| (api.error_code().0, api.to_string()));
    if let Some((code, text)) = &api {
        if let Some(kind) = permanent_api_error(*code) {
            return SendError::Permanent {
                kind,
                detail: format!("{detail}: {text}"),
            };
        }
    }
    let detail = match api {
        Some((_, text)) => format!("{detail}: {text}"),
        None => detail,
    };
    match e.kind() {
        PublishErrorKind::TimedOut => SendError::Retryable {
            kind: "timeout",
            detail,
        },
        PublishErrorKind::BrokenPipe => SendError::Retryable {
            kind: "connection",
            detail,
        },
        // No stream bound to the subject (or, for a moment, no stream leader): retried. With
        // create_stream = false the operator may be about to create it; if the broker keeps
        // confirming other subjects meanwhile, `forward.max_attempts` gives the record up.
        PublishErrorKind::StreamNotFound => SendError::Retryable {
            kind: "stream_not_found",
            detail,
        },
        PublishErrorKind::MaxPayloadExceeded => SendError::Permanent {
            kind: "too_large",
            detail,
        },
        _ => SendError::Retryable {
            kind: "broker",
            detail,
        },
    }
}

fn classify_core(kind: async_nats::client::PublishErrorKind, detail: String) -> SendError {
    use async_nats::client::PublishErrorKind as K;
    match kind {
        K::MaxPayloadExceeded => SendError::Permanent {
            kind: "too_large",
            detail,
        },
        K::InvalidSubject => SendError::Permanent {
            kind: "invalid_destination",
            detail,
        },
        K::Send => SendError::Retryable {
            kind: "connection",
            detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_covers_every_endpoint_prefix_and_outside_routes() {
        let c = crate::config::tests::load_str(
            r#"
[routing]
routes = { "session.*" = "other.sessions", "contact.created" = "sessionboard.contacts" }
[[endpoints]]
name = "sandbox"
path = "/sandbox"
routing = { prefix = "sandbox.", routes = { "session.*" = "sandbox-sessions" } }
"#,
        )
        .unwrap();
        let endpoints = Endpoints::from_config(&c).unwrap();
        assert_eq!(
            stream_subjects(&endpoints),
            [
                "sessionboard.>",
                "other.sessions",
                "sandbox.>",
                "sandbox-sessions"
            ]
        );
    }
}
