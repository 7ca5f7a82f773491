//! The webhook endpoint: authenticate, bound and read the body, check it is a Sessionboard
//! delivery, append it to the spool, and answer 2xx only once the spool says it is fsync'd.
//!
//! The ingress never talks to a broker: a broker outage cannot slow or fail an acknowledgement.

pub mod auth;
pub mod budget;
pub mod envelope;
pub mod signature;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;

use crate::dedup::{Claim, ClaimGuard, Dedup};
use crate::delivery::{Delivery, TraceContext};
use crate::endpoint::{Endpoint, Endpoints};
use crate::metrics::Metrics;
use crate::routing;
use crate::server::{self, HttpResponse};
use crate::spool::{self, Spool};
use auth::{Gate, Verified};
use budget::{Budget, PerClient, Reservation};

/// Longest delivery id or timestamp header value accepted.
const MAX_ID_HEADER_LEN: usize = 256;

/// Everything a request handler needs; shared by all connections.
pub struct Ingress {
    /// The paths served, each with its gate and routing.
    pub endpoints: Arc<Endpoints>,
    pub max_body_bytes: u32,
    pub request_timeout: Duration,
    pub retry_after: Duration,
    pub spool: Spool,
    /// Replay protection; `None` when `auth.dedup_window` is 0.
    pub dedup: Option<Arc<Dedup>>,
    /// Longest wait for a concurrent attempt with the same delivery id (`auth.dedup_wait`).
    pub dedup_wait: Duration,
    pub metrics: Arc<Metrics>,
    /// Bytes of bodies held in memory, across all requests (`http.max_buffered_bytes`).
    pub budget: Arc<Budget>,
    /// Unfinished bodies per client address (`http.max_bodies_per_client`); `None`: no cap.
    pub per_client: Option<Arc<PerClient>>,
}

/// A refusal: status, error code and a short human explanation.
struct Reject {
    status: StatusCode,
    code: &'static str,
    detail: String,
    retry_after: Option<Duration>,
}

fn reject(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Reject {
    Reject {
        status,
        code,
        detail: detail.into(),
        retry_after: None,
    }
}

/// The body of a 2xx. Fields in alphabetical order: the bytes are what the `json!` map (sorted
/// keys) produced before, so clients see no change.
#[derive(serde::Serialize)]
struct Answer<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_letter_reason: Option<&'static str>,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    status: &'static str,
}

/// The body of a refusal (alphabetical, as above).
#[derive(serde::Serialize)]
struct Refusal<'a> {
    detail: &'a str,
    error: &'static str,
}

/// hyper `Service` for one connection: the shared state and the peer address.
#[derive(Clone)]
pub struct IngressService(pub Arc<Ingress>, pub std::net::IpAddr);

impl hyper::service::Service<Request<Incoming>> for IngressService {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.0.clone();
        let peer = self.1;
        Box::pin(async move { Ok(this.handle(req, peer).await) })
    }
}

/// What happened to an acknowledged request.
enum Accepted {
    /// Stored in the spool with this sequence number.
    Stored {
        id: String,
        seq: u64,
        dead_letter: Option<&'static str>,
    },
    /// Stored before, within `auth.dedup_window`: acknowledged, not stored again.
    Duplicate { id: String },
}

impl Ingress {
    async fn handle(&self, req: Request<Incoming>, peer: std::net::IpAddr) -> HttpResponse {
        let started = Instant::now();
        let resp = match self.accept(req, peer).await {
            Ok(Accepted::Stored {
                id,
                seq,
                dead_letter,
            }) => {
                self.metrics
                    .ack_latency
                    .observe(started.elapsed().as_secs_f64());
                server::json(
                    StatusCode::OK,
                    &Answer {
                        dead_letter_reason: dead_letter,
                        id: &id,
                        seq: Some(seq),
                        status: "accepted",
                    },
                )
            }
            Ok(Accepted::Duplicate { id }) => {
                self.metrics.deliveries_duplicate.inc();
                server::json(
                    StatusCode::OK,
                    &Answer {
                        dead_letter_reason: None,
                        id: &id,
                        seq: None,
                        status: "duplicate",
                    },
                )
            }
            Err(r) => {
                let mut resp = server::json(
                    r.status,
                    &Refusal {
                        detail: &r.detail,
                        error: r.code,
                    },
                );
                // A refused request may have left its body unread, which makes the connection
                // unusable for another request: say so instead of letting the client find out.
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
                if let Some(after) = r.retry_after {
                    resp.headers_mut().insert(
                        http::header::RETRY_AFTER,
                        http::HeaderValue::from(after.as_secs().max(1)),
                    );
                }
                if r.status == StatusCode::METHOD_NOT_ALLOWED {
                    resp.headers_mut()
                        .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
                }
                resp
            }
        };
        self.metrics
            .http_requests
            .with_label_values(&[resp.status().as_str()])
            .inc();
        resp
    }

    /// Stores the delivery (or recognises a duplicate) at the endpoint its path names; returns
    /// only once it is durable. A refusal by a configured endpoint is counted under its name.
    async fn accept(
        &self,
        req: Request<Incoming>,
        peer: std::net::IpAddr,
    ) -> Result<Accepted, Reject> {
        let Some(endpoint) = self.endpoints.by_path(req.uri().path()) else {
            return Err(reject(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint",
            ));
        };
        let result = self.accept_at(endpoint, req, peer).await;
        if let Err(r) = &result {
            self.metrics
                .deliveries_rejected
                .with_label_values(&[&endpoint.name, r.code])
                .inc();
        }
        result
    }

    /// [`Ingress::accept`] at `endpoint`, with its gate alone.
    async fn accept_at(
        &self,
        endpoint: &Endpoint,
        req: Request<Incoming>,
        peer: std::net::IpAddr,
    ) -> Result<Accepted, Reject> {
        self.check_head(endpoint, &req, peer)?;
        let (headers, body, reservation) = self.receive(req, peer, &endpoint.gate).await?;
        let id = id_header(&headers, "webhook-id", "svix-id")?;
        let timestamp = id_header(&headers, "webhook-timestamp", "svix-timestamp")?;
        // Only this endpoint's gate: another endpoint's secret opens nothing here.
        let verified = endpoint
            .gate
            .check(&headers, id.as_deref(), timestamp.as_deref(), body)
            .map_err(|d| reject(d.status(), d.code(), d.detail()))?;
        let mut delivery = self.build(endpoint, verified, id, timestamp)?;
        // The sender's W3C trace context, if it sent a valid one: it travels with the record
        // and every message published from it (`traceparent` / `tracestate` headers).
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        delivery.trace = TraceContext::from_headers(header("traceparent"), header("tracestate"));
        let claim = match &self.dedup {
            None => None,
            Some(dedup) => match self
                .claim(dedup, &delivery, delivery.received_at_ms)
                .await?
            {
                Some(guard) => Some(guard),
                None => {
                    tracing::debug!(delivery_id = %delivery.id, "duplicate delivery; acknowledged, not stored again");
                    return Ok(Accepted::Duplicate { id: delivery.id });
                }
            },
        };
        self.store(endpoint, delivery, claim, reservation).await
    }

    /// What can be refused before the body is read: the method, and the endpoint's gate's
    /// checks of the source address and headers.
    fn check_head(
        &self,
        endpoint: &Endpoint,
        req: &Request<Incoming>,
        peer: std::net::IpAddr,
    ) -> Result<(), Reject> {
        if req.method() != Method::POST {
            return Err(reject(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "deliveries are POSTed",
            ));
        }
        endpoint
            .gate
            .check_head(peer, req.headers())
            .map_err(|d| reject(d.status(), d.code(), d.detail()))
    }

    /// Reads the body within `http.request_timeout`; returns the headers, the body, and the
    /// budget reservation that pays for it.
    async fn receive(
        &self,
        req: Request<Incoming>,
        peer: std::net::IpAddr,
        gate: &Gate,
    ) -> Result<(HeaderMap, Bytes, Reservation), Reject> {
        let limit = self.max_body_bytes as usize;
        let length = content_length(req.headers());
        if length.is_some_and(|len| len > limit as u64) {
            return Err(too_large(limit));
        }
        let (parts, body) = req.into_parts();
        // Invariant 10: a body is paid for from the budget before it is read, and one client
        // cannot hold more than its share of unfinished bodies.
        let slot = match &self.per_client {
            None => None,
            Some(per_client) => {
                let client = gate.client_ip(peer, &parts.headers);
                let slot = per_client.enter(client).ok_or_else(|| {
                    self.body_rejected("too_many_bodies");
                    reject(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_bodies",
                        "too many unfinished request bodies from this client address",
                    )
                })?;
                Some(slot)
            }
        };
        let first = length.unwrap_or(budget::FIRST_STEP.min(limit as u64));
        let mut reservation = self
            .budget
            .reserve(first)
            .ok_or_else(|| self.buffer_full())?;
        let body = match tokio::time::timeout(
            self.request_timeout,
            self.read_body(body, limit, &mut reservation),
        )
        .await
        {
            Err(_) => {
                return Err(reject(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!("body not received within {:?}", self.request_timeout),
                ))
            }
            Ok(result) => result?,
        };
        drop(slot);
        Ok((parts.headers, body, reservation))
    }

    /// Appends the delivery to the spool and waits for its fsync.
    async fn store(
        &self,
        endpoint: &Endpoint,
        mut delivery: Delivery,
        claim: Option<ClaimGuard>,
        reservation: Reservation,
    ) -> Result<Accepted, Reject> {
        let (id, now_ms) = (delivery.id.clone(), delivery.received_at_ms);
        let dead_letter = delivery
            .reject_reason
            .as_deref()
            .map(crate::delivery::reject_label);
        let label = if dead_letter.is_some() {
            "invalid"
        } else {
            routing::action_label(&delivery.action)
        };
        // With a claim, the spool's writer thread commits it once the record's fsync returned
        // (invariant 1), whether or not this request is still there to hear the answer: if the
        // sender timed out and closed the connection mid-append, the append still finishes and
        // its real outcome is what a retry of the same id finds. A record that is not stored
        // drops the guard unrun, which releases the id.
        //
        // Invariant 10: the body's reservation travels the same way, given back when the writer
        // is done with the record (run or dropped), not when this request ends.
        let payload = delivery.encode();
        // The record is the only copy from here on.
        drop(std::mem::take(&mut delivery.body));
        let on_durable: spool::OnDurable = match claim {
            None => Box::new(move |_seq| drop(reservation)),
            Some(guard) => Box::new(move |_seq| {
                guard.commit(now_ms);
                drop(reservation);
            }),
        };
        let seq = self
            .spool
            .append_then(payload, on_durable)
            .await
            .map_err(|e| self.not_stored(e, &id))?;
        self.metrics
            .deliveries_accepted
            .with_label_values(&[&endpoint.name, label])
            .inc();
        if let Some(reason) = dead_letter {
            self.metrics
                .deliveries_invalid
                .with_label_values(&[reason])
                .inc();
            tracing::warn!(delivery_id = %id, seq, reason,
                "authentic delivery cannot be routed; stored for the dead-letter store");
        } else if label == "unroutable" {
            self.metrics.deliveries_unroutable.inc();
            let route = endpoint.router.route(&delivery.action);
            tracing::warn!(delivery_id = %id, seq, destination = %route.destination,
                "action is not a valid routing token; routed to the dead-letter destination");
        }
        tracing::debug!(delivery_id = %id, seq, action = label, "accepted");
        Ok(Accepted::Stored {
            id,
            seq,
            dead_letter,
        })
    }

    /// The answer to a delivery the spool did not store.
    fn not_stored(&self, e: spool::Error, id: &str) -> Reject {
        let unavailable = |code, detail| Reject {
            retry_after: Some(self.retry_after),
            ..reject(StatusCode::SERVICE_UNAVAILABLE, code, detail)
        };
        match e {
            spool::Error::Full => {
                unavailable("spool_full", "the local spool is at its quota; retry later")
            }
            spool::Error::TooLarge => too_large(self.max_body_bytes as usize),
            spool::Error::Closed => {
                unavailable("shutting_down", "the bridge is shutting down; retry later")
            }
            e => {
                tracing::error!(delivery_id = %id, error = %e, "spool append failed; delivery not acknowledged");
                unavailable(
                    "spool_failed",
                    "the local spool cannot store deliveries; retry later",
                )
            }
        }
    }

    /// Reads the body into one buffer whose capacity is what `reservation` covers, growing the
    /// reservation (and the buffer) as bytes arrive; never more than `limit` bytes.
    async fn read_body(
        &self,
        mut body: Incoming,
        limit: usize,
        reservation: &mut Reservation,
    ) -> Result<Bytes, Reject> {
        let mut buf: Vec<u8> = Vec::with_capacity(reservation.bytes() as usize);
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| reject(StatusCode::BAD_REQUEST, "body_read_failed", e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            let needed = buf.len() + data.len();
            if needed > limit {
                return Err(too_large(limit));
            }
            if needed > buf.capacity() {
                let size = reservation
                    .grow(needed as u64, limit as u64)
                    .ok_or_else(|| self.buffer_full())?;
                buf.reserve_exact(size as usize - buf.len());
            }
            buf.extend_from_slice(&data);
        }
        Ok(Bytes::from(buf))
    }

    fn body_rejected(&self, reason: &'static str) {
        self.metrics
            .http_rejected_bodies
            .with_label_values(&[reason])
            .inc();
    }

    fn buffer_full(&self) -> Reject {
        self.body_rejected("buffer_full");
        Reject {
            retry_after: Some(self.retry_after),
            ..reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "buffer_full",
                "the bridge holds as many request bodies in memory as http.max_buffered_bytes allows; retry later",
            )
        }
    }

    /// Claims the delivery's id, on its endpoint, for storing. `Ok(None)`: stored before, answer
    /// `duplicate`. While another request is storing the same id, waits (up to
    /// `auth.dedup_wait`) for its outcome: stored means duplicate; failed means this request
    /// stores it.
    async fn claim(
        &self,
        dedup: &Arc<Dedup>,
        delivery: &Delivery,
        now_ms: u64,
    ) -> Result<Option<ClaimGuard>, Reject> {
        let id = delivery.id.as_str();
        // Set when the first wait starts: a request that does not wait never reads the clock.
        let mut deadline = None;
        loop {
            let waited = deadline.is_some();
            match dedup.claim_in(delivery.endpoint.as_deref(), id, now_ms) {
                Claim::New(guard) => {
                    if waited {
                        self.metrics
                            .dedup_waits
                            .with_label_values(&["retried"])
                            .inc();
                    }
                    return Ok(Some(guard));
                }
                Claim::Duplicate => {
                    if waited {
                        self.metrics
                            .dedup_waits
                            .with_label_values(&["duplicate"])
                            .inc();
                    }
                    return Ok(None);
                }
                // Invariant 1: a copy still being stored is not on disk yet, so this request
                // cannot be acknowledged on its strength.
                Claim::InProgress(first) => {
                    let deadline = *deadline
                        .get_or_insert_with(|| tokio::time::Instant::now() + self.dedup_wait);
                    if tokio::time::timeout_at(deadline, first.wait())
                        .await
                        .is_err()
                    {
                        self.metrics
                            .dedup_waits
                            .with_label_values(&["timeout"])
                            .inc();
                        tracing::warn!(delivery_id = %id, waited = ?self.dedup_wait,
                            "an earlier attempt of this delivery is still being stored; asking the sender to retry");
                        return Err(Reject {
                            retry_after: Some(self.retry_after),
                            ..reject(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "in_progress",
                                "an earlier attempt of this delivery is still being stored; retry later",
                            )
                        });
                    }
                }
            }
        }
    }

    /// Turns a verified request into a delivery, or says what is wrong with it. A body from an
    /// authenticated sender that cannot be routed is still kept (with a reject reason, for the
    /// dead-letter store): refusing it would lose data the sender will never send differently.
    fn build(
        &self,
        endpoint: &Endpoint,
        verified: Verified,
        id: Option<String>,
        timestamp: Option<String>,
    ) -> Result<Delivery, Reject> {
        let authentic = verified.authentic();
        let body = verified.into_body();
        let id = id.unwrap_or_else(|| body_id(&body));
        let received_at_ms = endpoint.gate.clock.wall_ms();
        // The default endpoint's records are written as before endpoints existed.
        let through =
            (endpoint.name != crate::delivery::DEFAULT_ENDPOINT).then(|| endpoint.name.clone());
        let env = match envelope::parse(&body) {
            Ok(env) => env,
            Err(e) if authentic => {
                return Ok(Delivery {
                    id,
                    timestamp,
                    action: String::new(),
                    resource_id: String::new(),
                    org_id: None,
                    event_id: None,
                    received_at_ms,
                    reject_reason: Some(e.code().to_owned()),
                    copied: None,
                    endpoint: through,
                    trace: None,
                    body,
                })
            }
            Err(e) => {
                let detail = match &e {
                    envelope::EnvelopeError::InvalidJson(why) => {
                        format!("body is not valid JSON: {why}")
                    }
                    envelope::EnvelopeError::MissingAction => {
                        "metadata.action is missing or not a string".to_owned()
                    }
                    envelope::EnvelopeError::MissingDataId => {
                        "data.id is missing, empty, too long, or not a string or number".to_owned()
                    }
                };
                return Err(reject(StatusCode::BAD_REQUEST, e.code(), detail));
            }
        };
        Ok(Delivery {
            id,
            timestamp,
            action: crate::delivery::clip(&env.action).to_owned(),
            resource_id: env.resource_id,
            org_id: env.org_id.map(|s| crate::delivery::clip(&s).to_owned()),
            event_id: env.event_id.map(|s| crate::delivery::clip(&s).to_owned()),
            received_at_ms,
            reject_reason: None,
            copied: None,
            endpoint: through,
            trace: None,
            body,
        })
    }
}

/// The id used when the sender gave none: the body's SHA-256, so a retried identical body maps to
/// the same id (and the broker's de-duplication still works).
pub fn body_id(body: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in auth::digest(body) {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

fn too_large(limit: usize) -> Reject {
    reject(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("body exceeds http.max_body_bytes ({limit} bytes)"),
    )
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads one of two equivalent headers (Standard Webhooks and Svix spellings). Both present with
/// different values, a repeated header, or a value that is not short visible ASCII is refused:
/// the value ends up in broker headers and de-duplication keys.
fn id_header(h: &HeaderMap, a: &'static str, b: &'static str) -> Result<Option<String>, Reject> {
    let mut found: Option<&str> = None;
    for name in [a, b] {
        let mut values = h.get_all(name).iter();
        let Some(v) = values.next() else { continue };
        if values.next().is_some() {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "conflicting_headers",
                format!("{name} is repeated"),
            ));
        }
        let v = v
            .to_str()
            .ok()
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= MAX_ID_HEADER_LEN
                    && s.bytes().all(|c| c.is_ascii_graphic())
            })
            .ok_or_else(|| {
                reject(
                    StatusCode::BAD_REQUEST,
                    "invalid_header",
                    format!("{name} must be 1 to {MAX_ID_HEADER_LEN} visible ASCII characters"),
                )
            })?;
        match found {
            Some(prev) if prev != v => {
                return Err(reject(
                    StatusCode::BAD_REQUEST,
                    "conflicting_headers",
                    format!("{a} and {b} differ"),
                ))
            }
            _ => found = Some(v),
        }
    }
    Ok(found.map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn id_header_table() {
        let ok = |p: &[(&'static str, &str)]| id_header(&headers(p), "webhook-id", "svix-id").ok();
        assert_eq!(ok(&[]), Some(None));
        assert_eq!(ok(&[("webhook-id", "msg_1")]), Some(Some("msg_1".into())));
        assert_eq!(ok(&[("svix-id", "msg_1")]), Some(Some("msg_1".into())));
        assert_eq!(
            ok(&[("svix-id", "msg_1"), ("webhook-id", "msg_1")]),
            Some(Some("msg_1".into()))
        );
        assert_eq!(ok(&[("svix-id", "msg_1"), ("webhook-id", "msg_2")]), None);
        assert_eq!(
            ok(&[("webhook-id", "msg_1"), ("webhook-id", "msg_1")]),
            None
        );
        assert_eq!(ok(&[("webhook-id", "a b")]), None);
        assert_eq!(ok(&[("webhook-id", "")]), None);
        assert_eq!(ok(&[("webhook-id", &"x".repeat(257))]), None);
    }

    #[test]
    fn body_id_is_stable_hex() {
        let a = body_id(b"{}");
        assert_eq!(
            a,
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(a.len(), 71);
        assert_ne!(a, body_id(b"{ }"));
    }
}
