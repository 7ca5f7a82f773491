//! The admin API under `/api/v1/` on the admin listener: the status document, the dead-letter
//! store (list, groups, one record, requeue, purge) and replay (plan, run as a job, progress).
//! JSON in and out; every refusal is `{"error": code, "message": …}`.
//!
//! The work is [`crate::repair`]'s, on the running bridge's own spool writer and dead-letter
//! store. What it must never do: let an unauthenticated request read data or change anything
//! (the token is checked before a body byte is read), read a body past
//! `admin.max_request_bytes` or `admin.idle_timeout`, hold more than `admin.max_replay_bytes` of
//! records for a replay, or run two changing actions at once (409 `busy`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::Request;
use serde_json::{json, Value};

use super::auth::{Token, Verdict};
use crate::clock::rfc3339;
use crate::deadletter::{DeadLetters, Meta};
use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::repair::{self, ReplayRequest, Selection};
use crate::server::{self, HttpResponse};
use crate::spool::Spool;

pub const PREFIX: &str = "/api/v1/";

/// What the API works with; built by `app` from the running bridge's parts.
pub struct Api {
    pub spool: Spool,
    /// `spool.dir`, which a replay scans read-only.
    pub spool_dir: std::path::PathBuf,
    pub dead_letters: Arc<DeadLetters>,
    pub metrics: Arc<Metrics>,
    /// `None`: only the status document answers.
    pub token: Option<Arc<Token>>,
    pub max_page_size: usize,
    pub max_request_bytes: u64,
    pub max_replay_bytes: u64,
    /// Longest a request body may take to arrive (`admin.idle_timeout`).
    pub read_timeout: Duration,
    /// Held by the one changing action (requeue, purge, a replay job) at a time.
    pub busy: Arc<tokio::sync::Mutex<()>>,
    /// The last replay job started.
    pub job: Mutex<Option<Arc<Job>>>,
    pub next_job: AtomicU64,
}

/// A replay running (or done) on the bridge.
pub struct Job {
    pub id: u64,
    pub total: u64,
    pub appended: AtomicU64,
    pub plan: repair::PlanSummary,
    /// `None` while running; then the new seq range, or why the spool refused.
    pub outcome: Mutex<Option<JobOutcome>>,
}

/// A finished job: the copies' seq range, or why it stopped.
pub type JobOutcome = Result<Option<(u64, u64)>, String>;

/// A refusal: status, code, message.
#[derive(Debug)]
pub struct Refusal(StatusCode, &'static str, String);

fn refuse(status: StatusCode, code: &'static str, msg: impl Into<String>) -> Refusal {
    Refusal(status, code, msg.into())
}

impl Refusal {
    fn answer(&self) -> HttpResponse {
        server::json(self.0, &json!({"error": self.1, "message": self.2}))
    }
}

type Answer = Result<(StatusCode, Value), Refusal>;

/// One dead letter as JSON (`GET dead-letters`, `spool dead-letter list --json`): the store's
/// metadata, its time as RFC 3339 (`dead_lettered_at`) instead of epoch ms.
pub fn dead_letter_json(m: &Meta) -> Value {
    let mut v = serde_json::to_value(m).expect("meta serializes");
    if let Some(o) = v.as_object_mut() {
        o.remove("dead_lettered_at_ms");
        o.insert(
            "dead_lettered_at".into(),
            json!(rfc3339(m.dead_lettered_at_ms)),
        );
    }
    v
}

impl Api {
    /// Answers a request under [`PREFIX`] other than `status`.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
        let path = req.uri().path()[PREFIX.len()..].to_owned();
        let action = audit_action(req.method(), &path);
        let Some(token) = &self.token else {
            self.count(action, "unauthorized");
            return refuse(
                StatusCode::FORBIDDEN,
                "no_token",
                "the admin API is off: set admin.token_file to enable it",
            )
            .answer();
        };
        let auth = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if token.check(auth) == Verdict::Unauthorized {
            self.count(action, "unauthorized");
            if let Some(a) = action {
                tracing::warn!(target: "hookbridge::audit", action = a, peer = %peer, "admin action refused: missing or wrong token");
            }
            let mut r = refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <the token in admin.token_file>",
            )
            .answer();
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        let result = self.route(req, &path).await;
        let (status, body) = match result {
            Ok(ok) => ok,
            Err(r) => {
                if let Some(a) = action {
                    let outcome = if r.0.is_server_error() {
                        "failed"
                    } else {
                        "refused"
                    };
                    self.count(Some(a), outcome);
                    tracing::info!(target: "hookbridge::audit", action = a, outcome, error = r.1, peer = %peer, "admin action");
                }
                return r.answer();
            }
        };
        if let Some(a) = action {
            let count = body["count"].as_u64().unwrap_or(0);
            self.count(Some(a), "ok");
            self.metrics
                .admin_records
                .with_label_values(&[a])
                .inc_by(count);
            tracing::info!(target: "hookbridge::audit", action = a, outcome = "ok", count, peer = %peer, "admin action");
        }
        server::json(status, &body)
    }

    fn count(&self, action: Option<&str>, outcome: &str) {
        if let Some(a) = action {
            self.metrics
                .admin_actions
                .with_label_values(&[a, outcome])
                .inc();
        }
    }

    async fn route(&self, req: Request<Incoming>, path: &str) -> Answer {
        let method = req.method().clone();
        let query = req.uri().query().unwrap_or("").to_owned();
        match (&method, path) {
            (&Method::GET, "dead-letters") => self.list(&query).await,
            (&Method::GET, "dead-letters/groups") => self.groups().await,
            (&Method::GET, p) if p.starts_with("dead-letters/") => {
                self.show(&p["dead-letters/".len()..]).await
            }
            (&Method::POST, "dead-letters/requeue") => {
                let v = self.body(req).await?;
                self.requeue(parse(v)?).await
            }
            (&Method::POST, "dead-letters/purge") => {
                let mut v = self.body(req).await?;
                let confirmed = v
                    .as_object_mut()
                    .and_then(|o| o.remove("confirm"))
                    .is_some_and(|c| c == "purge");
                if !confirmed {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "confirm",
                        r#"purging deletes records for good: add "confirm": "purge""#,
                    ));
                }
                self.purge(parse(v)?).await
            }
            (&Method::POST, "replay") => {
                let v = self.body(req).await?;
                self.replay(parse(v)?).await
            }
            (&Method::GET, p) if p.starts_with("replay/") => self.job(&p["replay/".len()..]),
            (_, p)
                if KNOWN
                    .iter()
                    .any(|k| p == *k || p.starts_with(&format!("{k}/"))) =>
            {
                Err(refuse(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{method} is not served for {PREFIX}{p}"),
                ))
            }
            _ => Err(refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no {PREFIX}{path}: see docs/operations.md, \"Repairs on a running bridge\""
                ),
            )),
        }
    }

    /// The request body as JSON, read only up to `admin.max_request_bytes` and within
    /// `admin.idle_timeout` (invariant 10: a slow or huge body holds nothing for long).
    async fn body(&self, req: Request<Incoming>) -> Result<Value, Refusal> {
        let too_large = || {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "request bodies are limited to {} bytes (admin.max_request_bytes)",
                    self.max_request_bytes
                ),
            )
        };
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_request_bytes) {
            return Err(too_large());
        }
        let limited = Limited::new(req.into_body(), self.max_request_bytes as usize);
        let bytes: Bytes = match tokio::time::timeout(self.read_timeout, limited.collect()).await {
            Err(_) => {
                return Err(refuse(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "the request body did not arrive within admin.idle_timeout",
                ))
            }
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Ok(Err(e)) => return Err(refuse(StatusCode::BAD_REQUEST, "bad_body", e.to_string())),
            Ok(Ok(c)) => c.to_bytes(),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(json!({}));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| refuse(StatusCode::BAD_REQUEST, "bad_json", e.to_string()))
    }

    async fn store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&DeadLetters) -> Result<T, repair::Error> + Send + 'static,
    ) -> Result<T, Refusal> {
        let dl = self.dead_letters.clone();
        repair::blocking(move || f(&dl)).await.map_err(failed)
    }

    async fn list(&self, query: &str) -> Answer {
        let q = Query::parse(query)?;
        let limit = q.limit.unwrap_or(100).clamp(1, self.max_page_size);
        let matcher = q.selection.matcher(false).map_err(usage)?;
        let after = q.cursor.unwrap_or(0);
        let (metas, unreadable) = self.store(move |dl| repair::select(dl, &matcher)).await?;
        let page: Vec<&Meta> = metas.iter().filter(|m| m.seq > after).take(limit).collect();
        let more = metas.iter().filter(|m| m.seq > after).count() > page.len();
        let next = more
            .then(|| page.last().map(|m| m.seq.to_string()))
            .flatten();
        Ok((
            StatusCode::OK,
            json!({"items": page, "next_cursor": next, "total": metas.len(), "unreadable": unreadable}),
        ))
    }

    async fn groups(&self) -> Answer {
        let all = Selection::default().matcher(false).map_err(usage)?;
        let (metas, unreadable) = self.store(move |dl| repair::select(dl, &all)).await?;
        let mut groups = BTreeMap::<(String, String), u64>::new();
        for m in &metas {
            *groups
                .entry((m.reason.clone(), m.action.clone()))
                .or_default() += 1;
        }
        let groups: Vec<Value> = groups
            .into_iter()
            .map(|((reason, action), count)| json!({"reason": reason, "action": action, "count": count}))
            .collect();
        Ok((
            StatusCode::OK,
            json!({"groups": groups, "total": metas.len(), "unreadable": unreadable}),
        ))
    }

    async fn show(&self, seq: &str) -> Answer {
        let seq: u64 = seq.parse().map_err(|_| {
            refuse(
                StatusCode::BAD_REQUEST,
                "bad_seq",
                format!("{seq:?} is not a seq"),
            )
        })?;
        let found = self
            .store(move |dl| Ok(dl.get(seq)?))
            .await?
            .ok_or_else(|| {
                refuse(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no dead letter with seq {seq}"),
                )
            })?;
        let (meta, payload) = found;
        let mut doc = dead_letter_json(&meta);
        match Delivery::decode(payload) {
            Ok(d) => {
                doc["received_at"] = json!(rfc3339(d.received_at_ms));
                doc["resource_id"] = json!(d.resource_id);
                match std::str::from_utf8(&d.body) {
                    Ok(text) => doc["body"] = json!(text),
                    Err(_) => {
                        use base64::Engine;
                        doc["body_base64"] =
                            json!(base64::engine::general_purpose::STANDARD.encode(&d.body));
                    }
                }
            }
            Err(e) => doc["undecodable"] = json!(e.to_string()),
        }
        Ok((StatusCode::OK, doc))
    }

    fn lock(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, Refusal> {
        self.busy.clone().try_lock_owned().map_err(|_| {
            refuse(
                StatusCode::CONFLICT,
                "busy",
                "another requeue, purge or replay is running; try again when it is done",
            )
        })
    }

    async fn selected(&self, sel: &Selection) -> Result<(Vec<Meta>, Vec<String>), Refusal> {
        let matcher = sel.matcher(true).map_err(usage)?;
        let (metas, unreadable) = self.store(move |dl| repair::select(dl, &matcher)).await?;
        if metas.is_empty() {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                "nothing_selected",
                format!("no dead letter {}: nothing to do", sel.describe()),
            ));
        }
        Ok((metas, unreadable))
    }

    async fn requeue(&self, sel: Selection) -> Answer {
        let _busy = self.lock()?;
        let (metas, unreadable) = self.selected(&sel).await?;
        let progress = AtomicU64::new(0);
        let mut report = repair::requeue(&self.spool, &self.dead_letters, metas, &progress)
            .await
            .map_err(failed)?;
        if sel.all {
            report.skipped.extend(unreadable);
        }
        self.metrics
            .dead_letter_records
            .set(self.dead_letters.len() as i64);
        let count = report.requeued.len();
        let mut doc = serde_json::to_value(&report).expect("serializes");
        doc["count"] = json!(count);
        Ok((StatusCode::OK, doc))
    }

    async fn purge(&self, sel: Selection) -> Answer {
        let _busy = self.lock()?;
        let (metas, _) = self.selected(&sel).await?;
        let n = repair::purge(&self.dead_letters, metas)
            .await
            .map_err(failed)?;
        self.metrics
            .dead_letter_records
            .set(self.dead_letters.len() as i64);
        Ok((StatusCode::OK, json!({"purged": n, "count": n})))
    }

    async fn replay(&self, req: ReplayRequest) -> Answer {
        if req.since.is_empty() {
            return Err(usage(repair::Error::Usage(
                "`since` is required (a seq, an RFC 3339 time or a duration ago)".into(),
            )));
        }
        let filter = repair::ReplayFilter::new(&req).map_err(usage)?;
        // Held from the plan to the last append, so two replays cannot interleave their copies.
        let busy = if req.dry_run {
            None
        } else {
            Some(self.lock()?)
        };
        let dir = self.spool_dir.clone();
        let with_dead = req.dead_letters;
        let (picks, plan) =
            tokio::task::spawn_blocking(move || repair::replay_plan(&dir, &filter, with_dead))
                .await
                .expect("the replay scan does not panic")
                .map_err(failed)?;
        if req.dry_run {
            return Ok((StatusCode::OK, json!({"plan": plan, "count": 0})));
        }
        if plan.bytes > self.max_replay_bytes {
            return Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "replay_too_large",
                format!(
                    "the replay holds {} bytes of records, more than admin.max_replay_bytes ({}): narrow it (since/until/action) or run `hookbridge spool replay` with the bridge stopped",
                    plan.bytes, self.max_replay_bytes
                ),
            ));
        }
        if picks.is_empty() {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                "nothing_selected",
                "nothing to replay",
            ));
        }
        let job = Arc::new(Job {
            id: self.next_job.fetch_add(1, Ordering::Relaxed) + 1,
            total: picks.len() as u64,
            appended: AtomicU64::new(0),
            plan: plan.clone(),
            outcome: Mutex::new(None),
        });
        *self.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job.clone());
        let (spool, j) = (self.spool.clone(), job.clone());
        tokio::spawn(async move {
            let _busy = busy;
            let r = repair::append_in_order(&spool, &picks, &j.appended).await;
            let outcome = r.map_err(|(done, e)| {
                format!("the spool refused after {done} record(s): {e}; replay the rest (since the next seq) when it has room")
            });
            if let Err(e) = &outcome {
                tracing::warn!(target: "hookbridge::audit", job = j.id, "replay stopped: {e}");
            }
            *j.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
        });
        Ok((
            StatusCode::ACCEPTED,
            json!({"job": job.id, "plan": plan, "count": job.total}),
        ))
    }

    fn job(&self, id: &str) -> Answer {
        let job = self.job.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(job) = job.filter(|j| id.parse() == Ok(j.id)) else {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no replay job {id:?} (only the last one is kept)"),
            ));
        };
        Ok((StatusCode::OK, job_json(&job)))
    }
}

fn job_json(job: &Job) -> Value {
    let appended = job.appended.load(Ordering::Relaxed);
    let mut doc =
        json!({"job": job.id, "total": job.total, "appended": appended, "plan": job.plan});
    match &*job.outcome.lock().unwrap_or_else(|e| e.into_inner()) {
        None => doc["state"] = json!("running"),
        Some(Ok(range)) => {
            doc["state"] = json!("done");
            doc["first_seq"] = json!(range.map(|r| r.0));
            doc["last_seq"] = json!(range.map(|r| r.1));
        }
        Some(Err(e)) => {
            doc["state"] = json!("failed");
            doc["message"] = json!(e);
        }
    }
    doc
}

/// The changing actions, for the audit line and the metrics; reads are not audited.
fn audit_action(method: &Method, path: &str) -> Option<&'static str> {
    if method != Method::POST {
        return None;
    }
    Some(match path {
        "dead-letters/requeue" => "requeue",
        "dead-letters/purge" => "purge",
        "replay" => "replay",
        _ => return None,
    })
}

/// The paths served, for 405 against 404.
const KNOWN: &[&str] = &["status", "dead-letters", "replay"];

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Refusal> {
    serde_json::from_value(v)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))
}

fn usage(e: repair::Error) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
}

fn failed(e: repair::Error) -> Refusal {
    tracing::error!("admin API: {e}");
    refuse(StatusCode::INTERNAL_SERVER_ERROR, "failed", e.to_string())
}

/// `GET dead-letters` query: the selection's filters, `cursor` (the last seq of the previous
/// page) and `limit`.
struct Query {
    selection: Selection,
    cursor: Option<u64>,
    limit: Option<usize>,
}

impl Query {
    fn parse(q: &str) -> Result<Query, Refusal> {
        let mut out = Query {
            selection: Selection::default(),
            cursor: None,
            limit: None,
        };
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).ok_or_else(|| bad_query(k))?;
            let s = &mut out.selection;
            match k {
                "reason" => s.reason = Some(v),
                "action" => s.action = Some(v),
                "destination" => s.destination = Some(v),
                "id" => s.id = Some(v),
                "since" => s.since = Some(v),
                "until" => s.until = Some(v),
                "cursor" => out.cursor = Some(v.parse().map_err(|_| bad_query(k))?),
                "limit" => out.limit = Some(v.parse().map_err(|_| bad_query(k))?),
                _ => return Err(bad_query(k)),
            }
        }
        Ok(out)
    }
}

fn bad_query(k: &str) -> Refusal {
    refuse(
        StatusCode::BAD_REQUEST,
        "bad_query",
        format!("query parameter {k:?} is unknown or malformed (reason, action, destination, id, since, until, cursor, limit)"),
    )
}

/// `%XX` and `+` decoding of one query value; `None` if it is not UTF-8 or a `%` is malformed.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?
            }
            b => b,
        });
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_and_refuse_unknown_keys() {
        let q = Query::parse("reason=too_large&action=session.updated&since=2025-01-01T00%3A00%3A00Z&cursor=7&limit=2").unwrap();
        assert_eq!(q.selection.reason.as_deref(), Some("too_large"));
        assert_eq!(q.selection.since.as_deref(), Some("2025-01-01T00:00:00Z"));
        assert_eq!((q.cursor, q.limit), (Some(7), Some(2)));
        assert!(Query::parse("colour=red").is_err());
        assert!(Query::parse("limit=x").is_err());
        assert!(Query::parse("reason=%zz").is_err());
        assert_eq!(percent_decode("a+b%2Fc").as_deref(), Some("a b/c"));
    }
}
