//! Repairs of the dead-letter store and the spool, shared by the offline tools
//! (`hookbridge spool dead-letter …`, `hookbridge spool replay` with the bridge stopped) and the
//! admin API of a running bridge (`admin::api`): which dead letters a request selects, putting
//! them back (requeue), removing them (purge), and which records a replay copies.
//!
//! Both callers pass the [`Spool`] that holds the lock: the tool's own, or the running bridge's,
//! so a copy goes through the one spool writer (group commit, quota, fsync) and then the one
//! forwarder path (order per resource, retries, dead letters).
//!
//! Invariant 3 and 8 for repairs: a requeued record is appended and fsync'd into the spool
//! *before* its file leaves the dead-letter store, so a crash at any point leaves every record in
//! the store, in the spool, or in both (a duplicate, which the delivery id lets the broker and
//! consumers drop), never in neither. Replay deletes nothing.

use std::collections::{BTreeMap, HashSet};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::clock::{self, now_ms, rfc3339};
use crate::deadletter::{self, DeadLetters, Meta};
use crate::delivery::{Copied, CopyKind, Delivery};
use crate::spool::{self, inspect, Spool};

/// How many copies are queued to the spool writer at once: one group commit covers them.
const AT_ONCE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or changing the dead-letter store failed.
    #[error(transparent)]
    DeadLetters(#[from] deadletter::Error),
    /// Scanning the spool directory failed.
    #[error(transparent)]
    Inspect(#[from] inspect::Error),
    /// A time or seq argument could not be understood; the message names it.
    #[error("{0}")]
    Usage(String),
}

/// A time: RFC 3339 (`2025-01-31T12:00:00Z`) or a duration ago (`15m`), in ms since the epoch.
pub fn parse_time(flag: &str, s: &str) -> Result<u64, Error> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(clock::to_ms(t));
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok(now_ms().saturating_sub(d.as_millis() as u64)),
        Err(_) => Err(Error::Usage(format!(
            "{flag} {s:?}: expected an RFC 3339 time (2025-01-31T12:00:00Z) or a duration ago (15m)"
        ))),
    }
}

/// Which dead letters a request means: every given criterion must hold; `all` alone selects
/// every record. The same shape is the API's JSON and the CLI's flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Selection {
    /// These seqs (the seq the record had in the spool).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub seq: Vec<u64>,
    /// This delivery id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// This reason code (`too_large`, `retries_exhausted`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// This `metadata.action`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// This destination (subject or topic).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Dead-lettered at or after this time (RFC 3339 or a duration ago).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Dead-lettered at or before this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Every record (with no other criterion).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

/// A [`Selection`] with its times parsed.
#[derive(Debug, Clone)]
pub struct Matcher {
    sel: Selection,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
}

impl Selection {
    /// Whether nothing but `all` narrows it.
    pub fn is_empty(&self) -> bool {
        Selection {
            all: false,
            ..self.clone()
        } == Selection::default()
    }

    /// Checks it: a changing request must say `all` or name at least one criterion, and `all`
    /// takes no other (so a typo cannot widen "these" into "every").
    pub fn matcher(&self, changing: bool) -> Result<Matcher, Error> {
        if changing && self.is_empty() && !self.all {
            return Err(Error::Usage(
                "select the dead letters: seq, id, reason, action, destination, since/until, or all"
                    .into(),
            ));
        }
        if self.all && !self.is_empty() {
            return Err(Error::Usage("`all` takes no other criterion".into()));
        }
        let time = |k: &str, v: &Option<String>| v.as_deref().map(|s| parse_time(k, s)).transpose();
        Ok(Matcher {
            since_ms: time("since", &self.since)?,
            until_ms: time("until", &self.until)?,
            sel: self.clone(),
        })
    }

    /// How a message says what was selected: `with reason "too_large"`, `at all`.
    pub fn describe(&self) -> String {
        if self.all || self.is_empty() {
            return "at all".into();
        }
        let mut parts = Vec::new();
        if !self.seq.is_empty() {
            let seqs: Vec<String> = self.seq.iter().map(u64::to_string).collect();
            parts.push(format!("with seq {}", seqs.join(", ")));
        }
        for (k, v) in [
            ("delivery id", &self.id),
            ("reason", &self.reason),
            ("action", &self.action),
            ("destination", &self.destination),
        ] {
            if let Some(v) = v {
                parts.push(format!("with {k} {v:?}"));
            }
        }
        if let Some(s) = &self.since {
            parts.push(format!("since {s}"));
        }
        if let Some(u) = &self.until {
            parts.push(format!("until {u}"));
        }
        parts.join(" ")
    }
}

impl Matcher {
    pub fn matches(&self, m: &Meta) -> bool {
        let s = &self.sel;
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        (s.seq.is_empty() || s.seq.contains(&m.seq))
            && eq(&s.id, &m.id)
            && eq(&s.reason, &m.reason)
            && eq(&s.action, &m.action)
            && eq(&s.destination, &m.destination)
            && self.since_ms.is_none_or(|t| m.dead_lettered_at_ms >= t)
            && self.until_ms.is_none_or(|t| m.dead_lettered_at_ms <= t)
    }

    /// Whether it selects every record (an unreadable file is then reported, not skipped
    /// silently).
    pub fn is_all(&self) -> bool {
        self.sel.all
    }
}

/// The selected dead letters in seq order, and the unreadable files met (always reported; they
/// count as skipped for `all`). Blocking (reads every file).
pub fn select(dl: &DeadLetters, m: &Matcher) -> Result<(Vec<Meta>, Vec<String>), Error> {
    let mut out = Vec::new();
    let mut unreadable = Vec::new();
    for e in dl.list()? {
        match e {
            Ok(meta) if m.matches(&meta) => out.push(meta),
            Ok(_) => {}
            Err(e) => unreadable.push(e.to_string()),
        }
    }
    Ok((out, unreadable))
}

/// The record payload for a copy put back into the spool: the same delivery (id, body, receive
/// time), marked as a copy so its messages carry `hookbridge-copy` and `hookbridge-received-at`.
pub fn mark_copy(d: Delivery, how: CopyKind) -> Bytes {
    Delivery {
        copied: Some(Copied {
            how,
            at_ms: now_ms(),
        }),
        ..d
    }
    .encode()
}

/// One dead letter put back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requeued {
    /// Its seq in the store (the seq it had).
    pub seq: u64,
    pub id: String,
    pub action: String,
    /// The seq of the copy in the spool.
    pub new_seq: u64,
}

/// What a requeue did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequeueReport {
    pub requeued: Vec<Requeued>,
    /// Records left in the store, with why (not a delivery record).
    pub skipped: Vec<String>,
    /// Set when the spool refused an append (full, failed): the records after it are still in
    /// the store.
    pub stopped: Option<String>,
}

/// Puts `selected` back into `spool`: for each batch of [`AT_ONCE`], the copies are appended in
/// order and fsync'd, and only then are their files removed from the store (module doc).
/// `progress` counts records done. Stops at the first refused append.
pub async fn requeue(
    spool: &Spool,
    dl: &Arc<DeadLetters>,
    selected: Vec<Meta>,
    progress: &AtomicU64,
) -> Result<RequeueReport, Error> {
    let mut report = RequeueReport::default();
    for chunk in selected.chunks(AT_ONCE) {
        let (store, metas) = (dl.clone(), chunk.to_vec());
        let loaded = blocking(move || -> Result<Vec<(Meta, Option<Delivery>)>, Error> {
            let mut out = Vec::new();
            for m in metas {
                if let Some((_, payload)) = store.get(m.seq)? {
                    out.push((m, Delivery::decode(payload).ok()));
                }
            }
            Ok(out)
        })
        .await?;
        let mut copies = Vec::new();
        for (m, d) in loaded {
            match d {
                Some(d) => copies.push((m, mark_copy(d, CopyKind::Requeue))),
                None => report.skipped.push(format!(
                    "dead letter seq {} is not a delivery record; left in the store",
                    m.seq
                )),
            }
        }
        let appended = append_batch(spool, copies.iter().map(|(_, payload)| payload)).await;
        let mut durable = Vec::new();
        for ((m, _), r) in copies.into_iter().zip(appended) {
            match r {
                Ok(new_seq) => durable.push(Requeued {
                    seq: m.seq,
                    id: m.id,
                    action: m.action,
                    new_seq,
                }),
                Err(e) if report.stopped.is_none() => report.stopped = Some(e.to_string()),
                Err(_) => {}
            }
        }
        // Invariant 3: only what the spool holds durably leaves the store.
        let (store, seqs) = (
            dl.clone(),
            durable.iter().map(|r| r.seq).collect::<Vec<_>>(),
        );
        blocking(move || Ok(seqs.iter().try_for_each(|s| store.remove(*s).map(drop))?)).await?;
        progress.fetch_add(durable.len() as u64, Ordering::Relaxed);
        report.requeued.extend(durable);
        if report.stopped.is_some() {
            break;
        }
    }
    Ok(report)
}

/// Removes the selected records from the store for good. Returns how many were removed.
pub async fn purge(dl: &Arc<DeadLetters>, selected: Vec<Meta>) -> Result<u64, Error> {
    let store = dl.clone();
    blocking(move || {
        let mut n = 0;
        for m in selected {
            n += u64::from(store.remove(m.seq)?);
        }
        Ok(n)
    })
    .await
}

/// Appends one batch (at most [`AT_ONCE`]) concurrently, so group commit fsyncs it together,
/// and returns each append's seq or error in the batch's order. `join_all` over a short list
/// polls its futures in order, and an append is queued on its first poll: the new seqs follow
/// the batch's order (invariant 4).
async fn append_batch<'a>(
    spool: &Spool,
    payloads: impl Iterator<Item = &'a Bytes>,
) -> Vec<Result<u64, spool::Error>> {
    futures_util::future::join_all(payloads.map(|p| spool.append(p.clone()))).await
}

/// Runs blocking store I/O off the async workers (fsyncs).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("dead-letter store operations do not panic")
}

/// One end of a replay range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Seq(u64),
    /// Milliseconds since the epoch.
    Time(u64),
}

impl Bound {
    /// A plain number is a seq; anything else a time, as for [`parse_time`].
    pub fn parse(flag: &str, s: &str) -> Result<Bound, Error> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(Bound::Seq)
                .map_err(|_| Error::Usage(format!("{flag} {s:?}: seq out of range")));
        }
        parse_time(flag, s)
            .map(Bound::Time)
            .map_err(|_| Error::Usage(format!("{flag} {s:?}: expected a seq, an RFC 3339 time (2025-01-31T12:00:00Z) or a duration ago (15m)")))
    }
}

/// What a replay copies: the API's JSON and the CLI's flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayRequest {
    /// First record: a seq, an RFC 3339 time or a duration ago. Required.
    pub since: String,
    /// Last record (inclusive), in the same forms; default the newest.
    pub until: Option<String>,
    /// Only this `metadata.action`.
    pub action: Option<String>,
    /// Also copy dead letters in the range (they stay in the store).
    pub dead_letters: bool,
    /// Return the plan, change nothing.
    pub dry_run: bool,
}

/// A [`ReplayRequest`] with its bounds parsed.
pub struct ReplayFilter {
    since: Bound,
    until: Option<Bound>,
    action: Option<String>,
}

impl ReplayFilter {
    pub fn new(r: &ReplayRequest) -> Result<ReplayFilter, Error> {
        Ok(ReplayFilter {
            since: Bound::parse("--since", &r.since)?,
            until: r
                .until
                .as_deref()
                .map(|u| Bound::parse("--until", u))
                .transpose()?,
            action: r.action.clone(),
        })
    }

    fn wants(&self, seq: u64, at_ms: u64, action: &str) -> bool {
        let after = match self.since {
            Bound::Seq(s) => seq >= s,
            Bound::Time(t) => at_ms >= t,
        };
        let before = match self.until {
            None => true,
            Some(Bound::Seq(s)) => seq <= s,
            Some(Bound::Time(t)) => at_ms <= t,
        };
        after && before && self.action.as_deref().is_none_or(|a| a == action)
    }
}

/// One record a replay appends again.
pub struct Pick {
    pub seq: u64,
    pub at_ms: u64,
    pub action: String,
    pub dead_letter: bool,
    pub payload: Bytes,
}

/// What a replay will copy, as printed by the CLI and answered by the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSummary {
    pub records: u64,
    pub retained: u64,
    pub dead_letters: u64,
    /// Bytes of the copies (what a live replay holds in memory).
    pub bytes: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub first_appended: Option<String>,
    pub last_appended: Option<String>,
    pub by_action: BTreeMap<String, u64>,
    /// Unconfirmed records in the range: still queued, not copied.
    pub unconfirmed: u64,
    /// The scan met damaged regions or files (`hookbridge spool verify` says which).
    pub damaged: bool,
}

/// The records a replay selects, in original seq order, and its summary. Read-only and
/// blocking: safe next to the running bridge (the scan is `spool::inspect`'s).
pub fn replay_plan(
    spool_dir: &Path,
    f: &ReplayFilter,
    dead_letters: bool,
) -> Result<(Vec<Pick>, PlanSummary), Error> {
    let dead: Vec<Meta> = match DeadLetters::open_existing(spool_dir)? {
        Some(dl) => dl.list()?.into_iter().filter_map(Result::ok).collect(),
        None => Vec::new(),
    };
    // A dead-lettered record was never published (it was refused or unusable), though its
    // segment is confirmed past: it is replayed only with `dead_letters`, from the store.
    let dead_seqs: HashSet<u64> = dead.iter().map(|m| m.seq).collect();
    let mut picks = Vec::new();
    let mut unconfirmed = 0;
    let survey = inspect::survey(spool_dir, &mut |r| {
        let Ok(d) = Delivery::decode(Bytes::copy_from_slice(r.payload)) else {
            return ControlFlow::Continue(());
        };
        if !f.wants(r.seq, r.appended_at_ms, &d.action) || dead_seqs.contains(&r.seq) {
            return ControlFlow::Continue(());
        }
        if !r.confirmed {
            unconfirmed += 1;
            return ControlFlow::Continue(());
        }
        picks.push(Pick {
            seq: r.seq,
            at_ms: r.appended_at_ms,
            action: d.action.clone(),
            dead_letter: false,
            payload: mark_copy(d, CopyKind::Replay),
        });
        ControlFlow::Continue(())
    })?;
    if dead_letters {
        if let Some(dl) = DeadLetters::open_existing(spool_dir)? {
            for m in dead {
                let Some((_, payload)) = dl.get(m.seq)? else {
                    continue;
                };
                let Ok(d) = Delivery::decode(payload) else {
                    continue;
                };
                // The store keeps no append time; the receive time is the closest.
                if f.wants(m.seq, d.received_at_ms, &d.action) {
                    picks.push(Pick {
                        seq: m.seq,
                        at_ms: d.received_at_ms,
                        action: d.action.clone(),
                        dead_letter: true,
                        payload: mark_copy(d, CopyKind::Replay),
                    });
                }
            }
        }
        picks.sort_by_key(|p| p.seq);
    }
    let summary = summarize(&picks, unconfirmed, survey.damage().count() > 0);
    Ok((picks, summary))
}

fn summarize(picks: &[Pick], unconfirmed: u64, damaged: bool) -> PlanSummary {
    let dead = picks.iter().filter(|p| p.dead_letter).count() as u64;
    let mut by_action = BTreeMap::new();
    for p in picks {
        *by_action.entry(p.action.clone()).or_default() += 1;
    }
    let times = picks.iter().map(|p| p.at_ms);
    PlanSummary {
        records: picks.len() as u64,
        retained: picks.len() as u64 - dead,
        dead_letters: dead,
        bytes: picks.iter().map(|p| p.payload.len() as u64).sum(),
        first_seq: picks.first().map(|p| p.seq),
        last_seq: picks.last().map(|p| p.seq),
        first_appended: times.clone().min().map(rfc3339),
        last_appended: times.max().map(rfc3339),
        by_action,
        unconfirmed,
        damaged,
    }
}

/// Appends `picks` in order, [`AT_ONCE`] at a time so group commit batches them; `progress`
/// counts the appended. Returns the new seq range, or how many were appended before the spool
/// refused. Nothing is deleted, so a crash part-way leaves fewer copies, never a loss.
pub async fn append_in_order(
    spool: &Spool,
    picks: &[Pick],
    progress: &AtomicU64,
) -> Result<Option<(u64, u64)>, (u64, spool::Error)> {
    let mut done = 0u64;
    let mut range: Option<(u64, u64)> = None;
    for chunk in picks.chunks(AT_ONCE) {
        for r in append_batch(spool, chunk.iter().map(|p| &p.payload)).await {
            let seq = r.map_err(|e| (done, e))?;
            range = Some(match range {
                None => (seq, seq),
                Some((first, last)) => {
                    assert!(seq > last, "replay appends keep their order");
                    (first, seq)
                }
            });
            done += 1;
            progress.store(done, Ordering::Relaxed);
        }
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(seq: u64, reason: &str, action: &str, at: u64) -> Meta {
        Meta {
            seq,
            id: format!("msg_{seq}"),
            action: action.into(),
            destination: format!("sb.{action}"),
            reason: reason.into(),
            error: String::new(),
            dead_lettered_at_ms: at,
        }
    }

    #[test]
    fn selections_need_a_criterion_and_all_stands_alone() {
        assert!(Selection::default().matcher(true).is_err());
        assert!(Selection::default().matcher(false).is_ok(), "listing");
        let all_and = Selection {
            all: true,
            reason: Some("too_large".into()),
            ..Default::default()
        };
        assert!(all_and.matcher(true).is_err());
        let m = Selection {
            reason: Some("too_large".into()),
            action: Some("session.updated".into()),
            since: Some("1970-01-01T00:00:01Z".into()),
            ..Default::default()
        }
        .matcher(true)
        .unwrap();
        assert!(m.matches(&meta(1, "too_large", "session.updated", 1000)));
        assert!(!m.matches(&meta(1, "too_large", "session.updated", 999)));
        assert!(!m.matches(&meta(1, "too_large", "session.created", 1000)));
        assert!(!m.matches(&meta(1, "acl", "session.updated", 1000)));
        let seqs = Selection {
            seq: vec![2, 3],
            ..Default::default()
        };
        assert_eq!(seqs.describe(), "with seq 2, 3");
        let m = seqs.matcher(true).unwrap();
        assert!(m.matches(&meta(3, "x", "a", 0)) && !m.matches(&meta(4, "x", "a", 0)));
        assert!(serde_json::from_str::<Selection>(r#"{"sq":[1]}"#).is_err());
    }

    /// A requeued copy is the same delivery, endpoint and trace context included, marked as a
    /// copy; a delivery of the default endpoint without trace context stays V3 (what earlier
    /// releases read).
    #[tokio::test]
    async fn a_requeued_copy_keeps_its_endpoint_and_trace_context() {
        use crate::delivery::TraceContext;
        use crate::spool::{Spool, SpoolConfig};
        use std::time::Duration;

        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            dir: dir.path().to_owned(),
            segment_bytes: 1 << 20,
            max_bytes: 1 << 30,
            max_append_bytes: 64 << 10,
            max_batch_bytes: 1 << 20,
            preallocate_bytes: 0,
            confirm_interval: Duration::from_millis(5),
            min_free_bytes: 0,
            retain_confirmed: Duration::ZERO,
        };
        let (spool, _) = Spool::open(cfg, Arc::new(crate::metrics::Metrics::new())).unwrap();
        let dl = Arc::new(DeadLetters::open(dir.path()).unwrap());
        let original = |seq: u64, endpoint: Option<&str>, trace: Option<TraceContext>| Delivery {
            id: format!("msg_{seq}"),
            timestamp: None,
            action: "session.updated".into(),
            resource_id: "r-1".into(),
            org_id: None,
            event_id: None,
            received_at_ms: 1_700_000_000_000 + seq,
            reject_reason: None,
            copied: None,
            endpoint: endpoint.map(Into::into),
            trace,
            body: Bytes::from(format!("{{\"n\":{seq}}}")),
        };
        let traced = original(
            1,
            Some("partner-a"),
            Some(TraceContext {
                traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                tracestate: Some("congo=t61rcWkgMzE".into()),
            }),
        );
        let plain = original(2, None, None);
        for (seq, d) in [(1, &traced), (2, &plain)] {
            dl.put(&meta(seq, "too_large", "session.updated", 0), &d.encode())
                .unwrap();
        }
        let selected = dl.list().unwrap().into_iter().map(Result::unwrap).collect();
        let report = requeue(&spool, &dl, selected, &AtomicU64::new(0))
            .await
            .unwrap();
        assert_eq!(report.requeued.len(), 2, "{report:?}");
        assert!(dl.is_empty());

        let mut reader = spool.reader();
        spool.close().await.unwrap();
        let records = reader.next_batch(10).await.unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(
            records[1].payload[0], 3,
            "the default endpoint's copy stays V3"
        );
        for (r, want) in records.iter().zip([traced, plain]) {
            let copy = Delivery::decode(r.payload.clone()).unwrap();
            assert_eq!(copy.copied.map(|c| c.how), Some(CopyKind::Requeue));
            assert_eq!(
                Delivery {
                    copied: None,
                    ..copy
                },
                want
            );
        }
    }

    #[test]
    fn replay_bounds_are_seqs_or_times() {
        assert_eq!(Bound::parse("--since", "42").unwrap(), Bound::Seq(42));
        assert_eq!(
            Bound::parse("--since", "1970-01-01T00:00:02Z").unwrap(),
            Bound::Time(2000)
        );
        assert!(matches!(Bound::parse("--since", "5m"), Ok(Bound::Time(_))));
        assert!(matches!(
            Bound::parse("--until", "soon"),
            Err(Error::Usage(m)) if m.contains("--until")
        ));
        let f = ReplayFilter {
            since: Bound::Seq(10),
            until: Some(Bound::Time(5_000)),
            action: Some("a.created".to_owned()),
        };
        assert!(f.wants(10, 5_000, "a.created"), "both ends inclusive");
        assert!(!f.wants(9, 1_000, "a.created"));
        assert!(!f.wants(11, 5_001, "a.created"));
        assert!(!f.wants(11, 1_000, "b.updated"));
    }
}
