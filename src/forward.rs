//! The forwarder: reads the spool in order, publishes through the [`Sink`] with many sends in
//! flight, retries failures with capped exponential backoff and jitter, and tells the spool which
//! prefix of records the broker has confirmed.
//!
//! Invariants:
//! - The confirmed position only moves over a contiguous prefix of broker-confirmed records, so a
//!   crash replays everything not confirmed (at-least-once; the delivery id lets brokers de-dup).
//! - At most one message per ordering key (`data.id`) is in flight. The next change to a resource
//!   is sent only after the previous one is confirmed, so retries can never reorder a resource's
//!   changes. Different resources flow in parallel, up to `forward.max_in_flight` records.
//! - Nothing is dropped for a broker error. A transient failure is retried from the record held
//!   here (the spool still has it). A permanent one (the broker will never take this record) moves
//!   the record to the local dead-letter store, durably, before it counts as done — so one bad
//!   record or topic cannot block the others, and is still there for an operator to requeue.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use rand::Rng;

use crate::config::ForwardConfig;
use crate::deadletter::{self, DeadLetters};
use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::routing::Router;
use crate::sink::{self, BrokerState, BrokerStatus, Message, SendError, Sink};
use crate::spool::{self, Spool, StoredRecord};

/// How many records to read from the spool per batch.
const READ_BATCH: usize = 256;

pub struct Forwarder {
    pub spool: Spool,
    pub sink: Arc<dyn Sink>,
    pub router: Router,
    pub cfg: ForwardConfig,
    pub metrics: Arc<Metrics>,
    pub status: Arc<BrokerStatus>,
    pub dead_letters: Arc<DeadLetters>,
}

struct Slot {
    msg: Message,
    /// The spool record payload (the message's body is a slice of it, so this costs nothing);
    /// kept for the dead-letter store.
    record: bytes::Bytes,
    /// Failed attempts so far.
    attempts: u32,
    /// Confirmed by the broker, or stored as a dead letter.
    done: bool,
    /// The ingress kept this authentic but unroutable body for the dead-letter store (reason).
    rejected: Option<&'static str>,
}

/// How one attempt at a record ended.
enum Outcome {
    Sent(Result<(), SendError>),
    DeadLettered(Result<(), deadletter::Error>),
}

type Attempt = BoxFuture<'static, (u64, Instant, Outcome)>;

/// The capped exponential backoff for the `attempt`-th retry (1-based), with "equal jitter": half
/// the delay fixed, half random, so a fleet of records retrying after an outage spreads out.
pub fn backoff(cfg: &ForwardConfig, attempt: u32) -> Duration {
    let exp = cfg
        .retry_initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(cfg.retry_max);
    let half = capped / 2;
    half + rand::rng().random_range(Duration::ZERO..=half)
}

/// Builds the broker message for a stored delivery.
pub fn message(router: &Router, seq: u64, d: Delivery) -> Message {
    let route = router.route(&d.action);
    let mut headers = vec![
        ("webhook-id", d.id.clone()),
        ("content-type", "application/json".to_owned()),
    ];
    let optional = [
        ("sessionboard-action", Some(d.action.as_str())),
        ("sessionboard-resource-id", Some(d.resource_id.as_str())),
        ("sessionboard-org-id", d.org_id.as_deref()),
        ("sessionboard-event-id", d.event_id.as_deref()),
        ("webhook-timestamp", d.timestamp.as_deref()),
    ];
    for (name, value) in optional {
        if let Some(v) = value.and_then(sink::header_safe) {
            headers.push((name, v.to_owned()));
        }
    }
    Message {
        seq,
        id: d.id,
        destination: route.destination,
        key: d.resource_id,
        headers,
        payload: d.body,
    }
}

impl Forwarder {
    /// Runs until `shutdown` resolves; then stops reading, waits up to `drain` for sends in flight,
    /// and returns (the caller closes the spool, which persists the confirmed position).
    pub async fn run(self, shutdown: impl Future<Output = ()>, drain: Duration) {
        let sink_name = self.sink.name();
        let mut reader = self.spool.reader();
        let mut window: BTreeMap<u64, Slot> = BTreeMap::new();
        // Per ordering key, the seqs waiting in order; the front one is the one in flight.
        let mut by_key: HashMap<String, VecDeque<u64>> = HashMap::new();
        let mut attempts: FuturesUnordered<Attempt> = FuturesUnordered::new();
        let mut reader_done = false;
        tokio::pin!(shutdown);

        loop {
            let room = self.cfg.max_in_flight.saturating_sub(window.len());
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some((seq, started, outcome)) = attempts.next(), if !attempts.is_empty() => {
                    self.settle(seq, started, outcome, &mut window, &mut by_key, &mut attempts);
                }
                batch = reader.next_batch(room.min(READ_BATCH)), if room > 0 && !reader_done => {
                    match batch {
                        Ok(records) => {
                            for r in records {
                                self.admit(r, &mut window, &mut by_key, &mut attempts);
                            }
                            self.metrics.forward_in_flight.set(window.len() as i64);
                        }
                        Err(spool::Error::Closed) => reader_done = true,
                        Err(e) => {
                            tracing::error!(error = %e, "reading the spool failed; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            }
        }

        // Drain: no new records, let what is in flight resolve (retries included) until the
        // deadline. Whatever is still unconfirmed stays in the spool for the next start.
        let deadline = tokio::time::Instant::now() + drain;
        while !attempts.is_empty() {
            match tokio::time::timeout_at(deadline, attempts.next()).await {
                Ok(Some((seq, started, result))) => self.settle(
                    seq,
                    started,
                    result,
                    &mut window,
                    &mut by_key,
                    &mut attempts,
                ),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        unconfirmed = window.len(),
                        "shutdown grace ran out with publishes in flight; they stay in the spool"
                    );
                    break;
                }
            }
        }
        self.sink.close().await;
        tracing::info!(sink = sink_name, "forwarder stopped");
    }

    /// Takes a record from the spool into the window, and sends it unless its key is busy.
    fn admit(
        &self,
        r: StoredRecord,
        window: &mut BTreeMap<u64, Slot>,
        by_key: &mut HashMap<String, VecDeque<u64>>,
        attempts: &mut FuturesUnordered<Attempt>,
    ) {
        let seq = r.seq;
        let record = r.payload.clone();
        let delivery = match Delivery::decode(r.payload) {
            Ok(d) => d,
            Err(e) => {
                // The spool's CRC matched, so this is a record written by an incompatible version,
                // not disk damage. Keeping it would block the stream forever.
                tracing::error!(seq, error = %e, "spool record cannot be decoded; skipping it");
                self.metrics
                    .publish_errors
                    .with_label_values(&[self.sink.name(), "undecodable"])
                    .inc();
                window.insert(
                    seq,
                    Slot {
                        msg: Message {
                            seq,
                            ..Message::default()
                        },
                        record: bytes::Bytes::new(),
                        attempts: 0,
                        done: true,
                        rejected: None,
                    },
                );
                self.advance(window);
                return;
            }
        };
        let rejected = delivery
            .reject_reason
            .as_deref()
            .map(crate::delivery::reject_label);
        let msg = message(&self.router, seq, delivery);
        let queue = by_key.entry(msg.key.clone()).or_default();
        queue.push_back(seq);
        let send_now = queue.len() == 1;
        window.insert(
            seq,
            Slot {
                msg,
                record,
                attempts: 0,
                done: false,
                rejected,
            },
        );
        if send_now {
            attempts.push(self.dispatch(&window[&seq]));
        }
    }

    /// Sends, or for a record the ingress kept as unroutable, goes straight to the dead-letter
    /// store.
    fn dispatch(&self, slot: &Slot) -> Attempt {
        match slot.rejected {
            Some(kind) => {
                let e = SendError::Permanent {
                    kind,
                    detail: format!("rejected at ingress: {kind}"),
                };
                self.metrics
                    .dead_lettered
                    .with_label_values(&[e.kind()])
                    .inc();
                self.dead_letter(slot, &e)
            }
            None => self.attempt(slot.msg.clone(), Duration::ZERO),
        }
    }

    fn attempt(&self, msg: Message, delay: Duration) -> Attempt {
        let sink = self.sink.clone();
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let seq = msg.seq;
            let started = Instant::now();
            let result = sink.send(msg).await;
            (seq, started, Outcome::Sent(result))
        }
        .boxed()
    }

    /// Stores a record the broker refused permanently in the dead-letter store.
    fn dead_letter(&self, slot: &Slot, e: &SendError) -> Attempt {
        let store = self.dead_letters.clone();
        let action = Delivery::decode(slot.record.clone())
            .map(|d| d.action)
            .unwrap_or_default();
        let meta = deadletter::Meta {
            seq: slot.msg.seq,
            id: slot.msg.id.clone(),
            action,
            destination: slot.msg.destination.clone(),
            reason: e.kind().to_owned(),
            error: e.to_string(),
            dead_lettered_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        let record = slot.record.clone();
        async move {
            let seq = meta.seq;
            let started = Instant::now();
            let result = tokio::task::spawn_blocking(move || store.put(&meta, &record))
                .await
                .expect("dead-letter write does not panic");
            (seq, started, Outcome::DeadLettered(result))
        }
        .boxed()
    }

    fn settle(
        &self,
        seq: u64,
        started: Instant,
        outcome: Outcome,
        window: &mut BTreeMap<u64, Slot>,
        by_key: &mut HashMap<String, VecDeque<u64>>,
        attempts: &mut FuturesUnordered<Attempt>,
    ) {
        let sink = self.sink.name();
        let in_window = window.len();
        let Some(slot) = window.get_mut(&seq) else {
            return;
        };
        match outcome {
            Outcome::Sent(Ok(())) => {
                self.metrics.published.with_label_values(&[sink]).inc();
                self.metrics
                    .publish_latency
                    .with_label_values(&[sink])
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.broker_up.with_label_values(&[sink]).set(1);
                match self.status.get() {
                    BrokerState::Up => {}
                    BrokerState::Down => {
                        self.status.set(BrokerState::Up);
                        tracing::info!(
                            sink,
                            in_flight = in_window,
                            "publishing again; replaying the backlog"
                        );
                    }
                    BrokerState::Unknown => self.status.set(BrokerState::Up),
                }
                if slot.attempts > 0 {
                    tracing::debug!(seq, delivery_id = %slot.msg.id, attempts = slot.attempts + 1, "published after retries");
                }
                self.finish(seq, window, by_key, attempts);
            }
            Outcome::DeadLettered(Ok(())) => {
                self.metrics
                    .dead_letter_records
                    .set(self.dead_letters.len() as i64);
                self.finish(seq, window, by_key, attempts);
            }
            Outcome::DeadLettered(Err(e)) => {
                // Could not store it locally either: keep the record and try the broker again
                // later; it stays in the spool whatever happens.
                tracing::error!(seq, delivery_id = %slot.msg.id, error = %e,
                    "writing the dead letter failed; will retry");
                attempts.push(self.attempt(slot.msg.clone(), self.cfg.retry_max));
            }
            Outcome::Sent(Err(e)) => {
                slot.attempts += 1;
                let n = slot.attempts;
                self.metrics
                    .publish_errors
                    .with_label_values(&[sink, e.kind()])
                    .inc();
                match &e {
                    SendError::Retryable { .. } => {
                        self.metrics.broker_up.with_label_values(&[sink]).set(0);
                        let delay = backoff(&self.cfg, n);
                        // During an outage every record in flight fails: say so once when the
                        // broker goes away (and when it is back), not once per record.
                        if self.status.get() != BrokerState::Down {
                            self.status.set(BrokerState::Down);
                            tracing::warn!(sink, destination = %slot.msg.destination, error = %e,
                                "publishing failed; holding deliveries in the spool and retrying with backoff");
                        }
                        tracing::debug!(seq, delivery_id = %slot.msg.id, destination = %slot.msg.destination,
                            attempts = n, retry_in = ?delay, error = %e, "publish failed; will retry");
                        self.metrics
                            .forward_retries
                            .with_label_values(&[sink])
                            .inc();
                        attempts.push(self.attempt(slot.msg.clone(), delay));
                    }
                    SendError::Permanent { kind, .. } => {
                        self.metrics.dead_lettered.with_label_values(&[kind]).inc();
                        tracing::error!(seq, delivery_id = %slot.msg.id, destination = %slot.msg.destination,
                            reason = kind, error = %e,
                            "broker refused the record permanently; moving it to the dead-letter store");
                        attempts.push(self.dead_letter(slot, &e));
                    }
                }
            }
        }
    }

    /// The record is done (confirmed or dead-lettered): release its key for the next record of
    /// the same resource and advance the confirmed prefix.
    fn finish(
        &self,
        seq: u64,
        window: &mut BTreeMap<u64, Slot>,
        by_key: &mut HashMap<String, VecDeque<u64>>,
        attempts: &mut FuturesUnordered<Attempt>,
    ) {
        let slot = window
            .get_mut(&seq)
            .expect("finished record is in the window");
        slot.done = true;
        let key = slot.msg.key.clone();
        if let Some(q) = by_key.get_mut(&key) {
            q.pop_front();
            match q.front() {
                Some(next) => attempts.push(self.dispatch(&window[next])),
                None => {
                    by_key.remove(&key);
                }
            }
        }
        self.advance(window);
    }

    /// Pops the confirmed prefix of the window and tells the spool.
    fn advance(&self, window: &mut BTreeMap<u64, Slot>) {
        let mut upto = None;
        while let Some(entry) = window.first_entry() {
            if !entry.get().done {
                break;
            }
            upto = Some(*entry.key());
            entry.remove();
        }
        if let Some(seq) = upto {
            self.spool.confirm(seq);
        }
        self.metrics.forward_in_flight.set(window.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let cfg = ForwardConfig {
            max_in_flight: 1,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
        };
        for attempt in 1..40 {
            let d = backoff(&cfg, attempt);
            let full =
                (Duration::from_millis(100) * 2u32.pow((attempt - 1).min(20))).min(cfg.retry_max);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
    }

    #[test]
    fn message_headers_and_key() {
        let router = Router::new("sb.", "unroutable", &Default::default()).unwrap();
        let d = Delivery {
            id: "msg_1".into(),
            timestamp: Some("1700000000".into()),
            action: "session.updated".into(),
            resource_id: "r-1".into(),
            org_id: Some("org\r\nx".into()),
            event_id: Some("4001".into()),
            received_at_ms: 0,
            reject_reason: None,
            body: bytes::Bytes::from_static(b"{}"),
        };
        let m = message(&router, 7, d);
        assert_eq!(m.destination, "sb.session.updated");
        assert_eq!(m.key, "r-1");
        let names: Vec<_> = m.headers.iter().map(|(n, _)| *n).collect();
        assert!(names.contains(&"sessionboard-event-id"));
        assert!(
            !names.contains(&"sessionboard-org-id"),
            "unsafe value must be dropped"
        );
        assert_eq!(m.payload, bytes::Bytes::from_static(b"{}"));
    }
}
