//! The admin listener: `/metrics` (Prometheus text), `/livez`, `/readyz`, the admin API under
//! `/api/v1/` ([`api`], behind the bearer token of [`auth`]) and the page `/ui` ([`ui`]). Never
//! on the ingress port, so the metrics and health of a bridge are not exposed to the webhook
//! sender.
//!
//! The probes must answer whatever other clients do (a liveness probe that times out restarts a
//! healthy pod): the listener keeps connections for [`PROBE_PATHS`] only (`server::Reserve`),
//! and `/metrics` is rendered one at a time, each render answering every request that was
//! waiting when it began ([`Renders`]), so stalled or numerous scrapers cannot multiply its cost.

pub mod api;
pub mod auth;
mod ui;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::deadletter::DeadLetters;
use crate::dedup::Dedup;
use crate::forward::Progress;
use crate::metrics::Metrics;
use crate::server::{self, HttpResponse};
use crate::sink::{BrokerState, BrokerStatus};
use crate::spool::{Health, Spool};

/// The `/readyz` answer, which `hookbridge status` reads back. The fields are in alphabetical
/// order, the order the document has always had on the wire. Reading is lenient (a missing field
/// takes its default) so that `status` can summarise a bridge of another version; only `ready`
/// is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readyz {
    /// Bytes of unconfirmed records (retained and preallocated bytes not counted).
    #[serde(default)]
    pub backlog_bytes: u64,
    /// Unconfirmed records in the spool.
    #[serde(default)]
    pub backlog_records: u64,
    /// `unknown` (no publish attempt yet), `up` or `down`.
    #[serde(default = "unknown")]
    pub broker: String,
    /// Records in the dead-letter store.
    #[serde(default)]
    pub dead_letters: u64,
    /// The forwarder's oldest unsettled record, if any.
    #[serde(default)]
    pub oldest_unconfirmed: Option<OldestUnconfirmed>,
    /// The spool can take deliveries (the answer is 200, else 503).
    pub ready: bool,
    /// Bytes of confirmed records kept for replay.
    #[serde(default)]
    pub retained_bytes: u64,
    /// `ok`, `full` or `failed`.
    #[serde(default = "unknown")]
    pub spool: String,
    /// Records failing while the broker confirms others.
    #[serde(default)]
    pub stuck_records: u64,
}

/// `oldest_unconfirmed` in [`Readyz`]; fields in alphabetical order, as on the wire.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OldestUnconfirmed {
    /// Since the forwarder read it.
    pub age_seconds: u64,
    /// Failed publish attempts so far.
    pub attempts: u32,
    pub delivery_id: String,
    pub destination: String,
    /// The last failure, if any.
    pub last_error: Option<String>,
    pub seq: u64,
}

fn unknown() -> String {
    "?".to_owned()
}

pub struct Admin {
    pub spool: Spool,
    pub metrics: Arc<Metrics>,
    pub broker: Arc<BrokerStatus>,
    pub dead_letters: Arc<DeadLetters>,
    /// `None` when de-duplication is off.
    pub dedup: Option<Arc<Dedup>>,
    /// The forwarder's oldest unsettled record.
    pub forward: Arc<Progress>,
    pub renders: Renders,
    /// Longest a `/metrics` request waits for a render before it gets 503.
    pub render_wait: Duration,
    /// `/api/v1/` but `status`.
    pub api: api::Api,
}

/// `GET /api/v1/status`: the `/readyz` document, the quota and the counters a rate is
/// computed from (two samples apart, as `hookbridge status` does from `/metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusDoc {
    pub readyz: Readyz,
    /// `spool.max_bytes`.
    pub spool_max_bytes: u64,
    /// Deliveries acknowledged, records published, records dead-lettered, since start.
    pub accepted_total: u64,
    pub published_total: u64,
    pub dead_lettered_total: u64,
    /// Whether `admin.token_file` is set (the rest of the API answers).
    pub api_enabled: bool,
    pub version: String,
    /// The same counters per endpoint, `default` first (absent from bridges before endpoints).
    #[serde(default)]
    pub endpoints: Vec<EndpointCounts>,
}

/// One endpoint's counters since start, in [`StatusDoc`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointCounts {
    pub name: String,
    pub accepted_total: u64,
    /// Requests to its path answered with an error.
    pub rejected_total: u64,
    pub published_total: u64,
    pub dead_lettered_total: u64,
}

/// `/metrics` renders, one at a time. A render that began after a request arrived is as fresh
/// as one made for it, so a request that waited for the lock reuses the last render if that one
/// began after it arrived. A pipelining client cannot make the bridge render more often than
/// once per render time, however many requests it sends.
#[derive(Default)]
pub struct Renders {
    /// Renders begun so far.
    begun: std::sync::atomic::AtomicU64,
    /// The last render: its number (of `begun`) and text.
    last: tokio::sync::Mutex<(u64, Bytes)>,
}

/// Every sample of a counter family: its `endpoint` label (if it has one) and value.
fn counter_values(
    f: &crate::metrics::Family<prometheus::IntCounterVec>,
) -> impl Iterator<Item = (Option<String>, u64)> {
    use prometheus::core::Collector;
    f.vec().collect().into_iter().flat_map(|mf| {
        mf.get_metric()
            .iter()
            .map(|x| {
                let endpoint = x
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "endpoint")
                    .map(|l| l.value().to_owned());
                (endpoint, x.get_counter().get_value() as u64)
            })
            .collect::<Vec<_>>()
    })
}

/// The paths the probe reserve serves.
pub const PROBE_PATHS: &[&str] = &["/livez", "/readyz"];

/// The admin service of one connection, with its peer (for the audit line).
#[derive(Clone)]
pub struct AdminService(pub Arc<Admin>, pub SocketAddr);

impl hyper::service::Service<Request<Incoming>> for AdminService {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let (this, peer) = (self.0.clone(), self.1);
        Box::pin(async move { Ok(this.handle(req, peer).await) })
    }
}

impl Admin {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
        let path = req.uri().path();
        if path == "/api/v1/status" && req.method() == Method::GET {
            return server::json(StatusCode::OK, &self.status_document());
        }
        if path.starts_with(api::PREFIX) {
            return self.api.handle(req, peer).await;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return server::json(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "method_not_allowed", "detail": "use GET"}),
            );
        }
        match req.uri().path() {
            "/metrics" => {
                use std::sync::atomic::Ordering::SeqCst;
                let arrived = self.renders.begun.load(SeqCst);
                let Ok(mut last) =
                    tokio::time::timeout(self.render_wait, self.renders.last.lock()).await
                else {
                    return server::json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"error": "busy", "detail": "/metrics renders are taking too long"}),
                    );
                };
                if last.0 <= arrived {
                    let n = self.renders.begun.fetch_add(1, SeqCst) + 1;
                    self.refresh_gauges();
                    *last = (n, Bytes::from(self.metrics.render()));
                }
                let text = last.1.clone();
                drop(last);
                Response::builder()
                    .header(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                    .body(Full::new(text))
                    .expect("static response parts are valid")
            }
            "/livez" => server::json(StatusCode::OK, &json!({"status": "alive"})),
            "/readyz" => self.readyz(),
            "/ui" => ui::page(),
            // Browsers ask for it with every page; an empty answer keeps their consoles clean.
            "/favicon.ico" => Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(Full::new(Bytes::new()))
                .expect("static response parts are valid"),
            _ => server::json(
                StatusCode::NOT_FOUND,
                &json!({"error": "not_found", "detail": "try /metrics, /livez, /readyz, /api/v1/status or /ui"}),
            ),
        }
    }

    /// Ready while the spool can take deliveries, whatever the broker's state: during a broker
    /// outage the bridge is exactly what should keep receiving traffic.
    fn readyz(&self) -> HttpResponse {
        let doc = self.readyz_document();
        let status = if doc.ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        server::json(status, &doc)
    }

    fn readyz_document(&self) -> Readyz {
        let stats = self.spool.stats();
        let (oldest, stuck) = self.forward.snapshot();
        let (ready, spool) = match self.spool.health() {
            Health::Ok => (true, "ok"),
            Health::Full => (false, "full"),
            Health::Failed => (false, "failed"),
        };
        let broker = match self.broker.get() {
            BrokerState::Unknown => "unknown",
            BrokerState::Up => "up",
            BrokerState::Down => "down",
        };
        Readyz {
            backlog_bytes: stats
                .bytes
                .saturating_sub(stats.retained_bytes)
                .saturating_sub(stats.preallocated_bytes),
            backlog_records: stats.records,
            broker: broker.to_owned(),
            dead_letters: self.dead_letters.len(),
            oldest_unconfirmed: oldest.map(|o| OldestUnconfirmed {
                age_seconds: o.since.elapsed().as_secs(),
                attempts: o.attempts,
                delivery_id: o.delivery_id.to_string(),
                destination: o.destination.to_string(),
                last_error: o.last_error.as_deref().map(str::to_owned),
                seq: o.seq,
            }),
            ready,
            retained_bytes: stats.retained_bytes,
            spool: spool.to_owned(),
            stuck_records: stuck as u64,
        }
    }

    fn status_document(&self) -> StatusDoc {
        let m = &self.metrics;
        let sum = |f: &crate::metrics::Family<prometheus::IntCounterVec>| -> u64 {
            counter_values(f).map(|(_, v)| v).sum()
        };
        let of = |f: &crate::metrics::Family<prometheus::IntCounterVec>, endpoint: &str| -> u64 {
            counter_values(f)
                .filter(|(e, _)| e.as_deref() == Some(endpoint))
                .map(|(_, v)| v)
                .sum()
        };
        StatusDoc {
            readyz: self.readyz_document(),
            spool_max_bytes: m.spool_max_bytes.get() as u64,
            accepted_total: sum(&m.deliveries_accepted),
            published_total: sum(&m.published),
            dead_lettered_total: sum(&m.dead_lettered),
            api_enabled: self.api.token.is_some(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            endpoints: m
                .endpoint_names()
                .iter()
                .map(|e| EndpointCounts {
                    name: e.to_string(),
                    accepted_total: of(&m.deliveries_accepted, e),
                    rejected_total: of(&m.deliveries_rejected, e),
                    published_total: of(&m.published, e),
                    dead_lettered_total: of(&m.dead_lettered, e),
                })
                .collect(),
        }
    }

    fn refresh_gauges(&self) {
        let s = self.spool.stats();
        let m = &self.metrics;
        m.spool_records.set(s.records as i64);
        m.spool_bytes.set(s.bytes as i64);
        m.spool_segments.set(s.segments as i64);
        m.spool_confirmed_seq.set(s.confirmed as i64);
        m.spool_oldest_record_age
            .set(s.oldest_unconfirmed_age.map_or(0.0, |d| d.as_secs_f64()));
        m.spool_retained_records.set(s.retained_records as i64);
        m.spool_retained_bytes.set(s.retained_bytes as i64);
        m.spool_preallocated_bytes.set(s.preallocated_bytes as i64);
        m.spool_oldest_retained_age
            .set(s.oldest_retained_age.map_or(0.0, |d| d.as_secs_f64()));
        // The stuck count is the forwarder's own gauge; the ages need the scrape's clock.
        let (oldest, _) = self.forward.snapshot();
        m.forward_oldest_age.set(
            oldest
                .as_ref()
                .map_or(0.0, |o| o.since.elapsed().as_secs_f64()),
        );
        m.forward_oldest_attempts
            .set(oldest.map_or(0, |o| i64::from(o.attempts)));
        if let Some(d) = &self.dedup {
            m.dedup_ids.set(d.len() as i64);
            m.dedup_journal_bytes.set(d.journal_bytes() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed document writes what the `json!` it replaced wrote, byte for byte, and `status`
    /// reads the answers of older bridges that lack the newer fields.
    #[test]
    fn readyz_keeps_its_wire_form() {
        let doc = Readyz {
            backlog_bytes: 900,
            backlog_records: 5,
            broker: "up".into(),
            dead_letters: 1,
            oldest_unconfirmed: Some(OldestUnconfirmed {
                age_seconds: 75,
                attempts: 4,
                delivery_id: "msg_7".into(),
                destination: "sb.contact.created".into(),
                last_error: None,
                seq: 7,
            }),
            ready: true,
            retained_bytes: 10,
            spool: "ok".into(),
            stuck_records: 1,
        };
        let old = json!({
            "ready": true,
            "spool": "ok",
            "broker": "up",
            "backlog_records": 5,
            "backlog_bytes": 900,
            "retained_bytes": 10,
            "dead_letters": 1,
            "stuck_records": 1,
            "oldest_unconfirmed": json!({
                "seq": 7,
                "delivery_id": "msg_7",
                "destination": "sb.contact.created",
                "attempts": 4,
                "age_seconds": 75,
                "last_error": null,
            }),
        });
        let wire = serde_json::to_string(&doc).unwrap();
        assert_eq!(wire, old.to_string());
        assert_eq!(serde_json::from_str::<Readyz>(&wire).unwrap(), doc);
        let none = Readyz {
            oldest_unconfirmed: None,
            ..doc
        };
        assert!(serde_json::to_string(&none)
            .unwrap()
            .contains("\"oldest_unconfirmed\":null,"));

        let older: Readyz = serde_json::from_str(
            r#"{"ready":false,"spool":"failed","broker":"up","backlog_records":5,"backlog_bytes":900,"dead_letters":0}"#,
        )
        .unwrap();
        assert_eq!((older.ready, older.stuck_records), (false, 0));
        assert!(serde_json::from_str::<Readyz>(r#"{"spool":"ok"}"#).is_err());
    }
}
