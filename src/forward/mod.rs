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
//! - One record cannot stop the rest (ARCHITECTURE.md invariant 10). The window bounds the
//!   records not yet *settled*, not the distance to the confirmed position: a record that keeps
//!   failing holds one slot while the records behind it are published and leave the window
//!   (the spool keeps them, unconfirmed, until the stuck one settles). A failure counts against
//!   `forward.max_attempts` only if the broker confirmed another record since the record's
//!   previous failure, so during an outage (nothing confirms) nothing is ever given up; a record
//!   that exhausts its budget is dead-lettered as `retries_exhausted`. A record whose CRC matched
//!   but which does not decode (written by a newer version) is dead-lettered as `undecodable`.
//! - A record on its way to the dead-letter store never goes back to the broker: a failed
//!   dead-letter write is retried as a dead-letter write, with backoff, until it succeeds. A body
//!   the ingress kept as unusable is never published at all.

mod dead_letter;
mod message;
mod progress;
mod window;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use rand::Rng;

use crate::clock::Clock;
use crate::config::ForwardConfig;
use crate::deadletter::{self, DeadLetters};
use crate::delivery::Delivery;
use crate::endpoint::Endpoints;
use crate::metrics::Metrics;
use crate::sink::{BrokerState, BrokerStatus, Message, SendError, Sink};
use crate::spool::{self, Spool, StoredRecord};

pub use message::message;
pub use progress::{Oldest, Progress};
use window::{Pending, Sent, Window};

/// How many records to read from the spool per batch.
const READ_BATCH: usize = 256;

/// Dead-letter reason of a record that kept failing while the broker confirmed others.
pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";
/// Dead-letter reason of a spool record whose CRC matched but which does not decode.
pub const UNDECODABLE: &str = "undecodable";
/// Dead-letter reason of a record whose endpoint is no longer configured: publishing it under
/// another endpoint's namespace would break their isolation (see `endpoint`).
pub const UNKNOWN_ENDPOINT: &str = "unknown_endpoint";

pub struct Forwarder {
    pub spool: Spool,
    pub sink: Arc<dyn Sink>,
    /// Each endpoint's router and CloudEvents attributes (`sink.cloudevents`).
    pub endpoints: Arc<Endpoints>,
    pub cfg: ForwardConfig,
    pub metrics: Arc<Metrics>,
    pub status: Arc<BrokerStatus>,
    pub dead_letters: Arc<DeadLetters>,
    /// What the admin listener shows of the oldest unsettled record.
    pub progress: Arc<Progress>,
    /// A retry age (`forward.max_retry_age`) is measured on its monotonic time, a dead letter's
    /// time is its wall time. [`Clock::system`] in production.
    pub clock: Clock,
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

impl Forwarder {
    /// Runs until `shutdown` resolves; then stops reading, waits up to `drain` for sends in flight,
    /// and returns (the caller closes the spool, which persists the confirmed position).
    pub async fn run(self, shutdown: impl Future<Output = ()>, drain: Duration) {
        let sink_name = self.sink.name();
        let mut reader = self.spool.reader();
        let mut w = Window::default();
        let mut attempts: FuturesUnordered<Attempt> = FuturesUnordered::new();
        let mut reader_done = false;
        tokio::pin!(shutdown);

        loop {
            let room = self.cfg.max_in_flight.saturating_sub(w.pending.len());
            let room_bytes = self.cfg.max_in_flight_bytes.saturating_sub(w.bytes);
            let can_read = room > 0 && room_bytes > 0 && !reader_done;
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some((seq, started, outcome)) = attempts.next(), if !attempts.is_empty() => {
                    self.settle(seq, started, outcome, &mut w, &mut attempts);
                }
                batch = reader.next_batch_within(room.min(READ_BATCH), room_bytes), if can_read => {
                    match batch {
                        Ok(records) => {
                            for r in records {
                                self.admit(r, &mut w, &mut attempts);
                            }
                            self.show(&mut w);
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
                Ok(Some((seq, started, result))) => {
                    self.settle(seq, started, result, &mut w, &mut attempts)
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        unconfirmed = w.pending.len(),
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
    fn admit(&self, r: StoredRecord, w: &mut Window, attempts: &mut FuturesUnordered<Attempt>) {
        let seq = r.seq;
        let record = r.payload.clone();
        w.last_read = seq;
        w.bytes += record.len() as u64;
        let (msg, ready, rejected) = match Delivery::decode(r.payload) {
            Ok(delivery) => {
                let endpoint = self.endpoints.by_name(delivery.endpoint.as_deref());
                let rejected = match (&delivery.reject_reason, endpoint) {
                    (Some(reason), _) => Some(crate::delivery::reject_label(reason)),
                    (None, None) => {
                        tracing::error!(seq, delivery_id = %delivery.id,
                            endpoint = delivery.endpoint_name(),
                            "spool record names an endpoint that is not configured; moving it to the dead-letter store");
                        Some(UNKNOWN_ENDPOINT)
                    }
                    (None, Some(_)) => None,
                };
                // A record of an unknown endpoint is never published; the default endpoint's
                // router only names its dead-letter entry.
                let endpoint = endpoint.unwrap_or(self.endpoints.default_endpoint());
                let id = delivery.id.as_str().into();
                let labels = (
                    self.metrics.endpoint_label(delivery.endpoint.as_deref()),
                    crate::routing::action_label(&delivery.action),
                );
                let msg = message(endpoint, seq, delivery);
                let sent = Sent {
                    seq,
                    endpoint: labels.0,
                    action: labels.1,
                    id,
                    destination: msg.destination.as_str().into(),
                    key: msg.key.clone(),
                };
                (sent, Some(msg), rejected)
            }
            Err(e) => {
                // The spool's CRC matched, so this is a record written by an incompatible
                // version, not disk damage. It cannot be published; kept, it would block the
                // stream forever. It goes to the dead-letter store as it is, queued with the
                // other unusable records (empty key).
                tracing::error!(seq, error = %e,
                    "spool record cannot be decoded; moving it to the dead-letter store");
                let sent = Sent {
                    seq,
                    endpoint: crate::metrics::labels::NO_ENDPOINT,
                    action: "invalid",
                    ..Sent::default()
                };
                (sent, None, Some(UNDECODABLE))
            }
        };
        let queue = w.by_key.entry(msg.key.clone()).or_default();
        queue.push_back(seq);
        let send_now = queue.len() == 1;
        w.pending
            .insert(seq, Pending::new(msg, ready, record, rejected, w.confirms));
        if send_now {
            let confirms = w.confirms;
            let rec = w.pending.get_mut(&seq).expect("just inserted");
            attempts.push(self.dispatch(rec, confirms));
        }
    }

    /// Sends, or for a record the ingress kept as unusable (or that does not decode), goes
    /// straight to the dead-letter store.
    fn dispatch(&self, rec: &mut Pending, confirms: u64) -> Attempt {
        match rec.rejected {
            // An unusable body is never published (its destination would be `<prefix>unroutable`
            // with an empty key).
            Some(kind) => {
                let detail = if kind == UNDECODABLE {
                    "the spool record does not decode (written by another version?)".to_owned()
                } else if kind == UNKNOWN_ENDPOINT {
                    "the record's endpoint is not configured (add it back, then requeue)".to_owned()
                } else {
                    format!("rejected at ingress: {kind}")
                };
                self.dead_letter(rec, &SendError::Permanent { kind, detail })
            }
            None => {
                rec.confirms_seen = confirms;
                let msg = self.take_message(rec);
                self.attempt(msg, Duration::ZERO)
            }
        }
    }

    /// The record's message for a send: the one built at admission, or rebuilt from the record.
    fn take_message(&self, rec: &mut Pending) -> Message {
        rec.ready.take().unwrap_or_else(|| {
            let d = Delivery::decode(rec.record.clone())
                .expect("a record that is sent decoded when it was admitted");
            let endpoint = self
                .endpoints
                .by_name(d.endpoint.as_deref())
                .expect("a record that is sent has a configured endpoint (checked at admission)");
            message(endpoint, rec.msg.seq, d)
        })
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

    /// Takes the outcome of one attempt at record `seq`.
    fn settle(
        &self,
        seq: u64,
        started: Instant,
        outcome: Outcome,
        w: &mut Window,
        attempts: &mut FuturesUnordered<Attempt>,
    ) {
        if !w.pending.contains_key(&seq) {
            return;
        }
        match outcome {
            Outcome::Sent(Ok(())) => self.on_published(seq, started, w, attempts),
            Outcome::Sent(Err(e)) => self.on_send_failed(seq, e, w, attempts),
            Outcome::DeadLettered(Ok(())) => self.on_dead_lettered(seq, w, attempts),
            Outcome::DeadLettered(Err(e)) => self.on_dead_letter_failed(seq, e, w, attempts),
        }
    }

    /// The broker confirmed the record: it is settled.
    fn on_published(
        &self,
        seq: u64,
        started: Instant,
        w: &mut Window,
        attempts: &mut FuturesUnordered<Attempt>,
    ) {
        let sink = self.sink.name();
        let msg = &w.pending[&seq].msg;
        self.metrics
            .published
            .with_label_values(&[sink, msg.endpoint, msg.action])
            .inc();
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
                    in_flight = w.pending.len(),
                    "publishing again; replaying the backlog"
                );
            }
            BrokerState::Unknown => self.status.set(BrokerState::Up),
        }
        let rec = &w.pending[&seq];
        if rec.attempts > 0 {
            tracing::debug!(seq, delivery_id = %rec.msg.id, attempts = rec.attempts + 1, "published after retries");
        }
        w.confirms += 1;
        self.finish(seq, w, attempts);
    }

    /// A send failed: retry it with backoff, or move the record to the dead-letter store if the
    /// broker refused it for good or it has used up its budget.
    fn on_send_failed(
        &self,
        seq: u64,
        e: SendError,
        w: &mut Window,
        attempts: &mut FuturesUnordered<Attempt>,
    ) {
        let sink = self.sink.name();
        let window_full = w.full(&self.cfg);
        let rec = w
            .pending
            .get_mut(&seq)
            .expect("settled record is in the window");
        self.metrics
            .publish_errors
            .with_label_values(&[sink, e.kind()])
            .inc();
        let now = self.clock.mono_ms();
        if rec.failed(e.to_string(), w.confirms, now) {
            w.stuck += 1;
        }
        let n = rec.attempts;
        match &e {
            SendError::Retryable { .. } if rec.exhausted(&self.cfg, window_full, now) => {
                let age = Duration::from_millis(rec.stuck_age_ms(now));
                tracing::error!(seq, delivery_id = %rec.msg.id, destination = %rec.msg.destination,
                    attempts = n, strikes = rec.strikes, ?age, error = %e,
                    "record kept failing while the broker confirmed others; moving it to the dead-letter store");
                let given_up = SendError::Permanent {
                    kind: RETRIES_EXHAUSTED,
                    detail: format!(
                        "{n} failed attempts ({} while the broker confirmed other records) over {:.0?}; last error: {e}",
                        rec.strikes, age
                    ),
                };
                attempts.push(self.dead_letter(rec, &given_up));
            }
            SendError::Retryable { .. } => attempts.push(self.retry(rec, &e)),
            SendError::Permanent { kind, .. } => {
                tracing::error!(seq, delivery_id = %rec.msg.id, destination = %rec.msg.destination,
                    reason = kind, error = %e,
                    "broker refused the record permanently; moving it to the dead-letter store");
                attempts.push(self.dead_letter(rec, &e));
            }
        }
        self.show(w);
    }

    /// Sends a record again after a retryable failure, with backoff. A failure without a strike
    /// means the broker is away: that is said once, not once per record.
    fn retry(&self, rec: &mut Pending, e: &SendError) -> Attempt {
        let sink = self.sink.name();
        let (seq, n) = (rec.msg.seq, rec.attempts);
        let delay = backoff(&self.cfg, n);
        if rec.strikes == 0 {
            self.metrics.broker_up.with_label_values(&[sink]).set(0);
            // During an outage every record in flight fails: say so once when
            // the broker goes away (and when it is back), not once per record.
            if self.status.get() != BrokerState::Down {
                self.status.set(BrokerState::Down);
                tracing::warn!(sink, destination = %rec.msg.destination, error = %e,
                    "publishing failed; holding deliveries in the spool and retrying with backoff");
            }
        } else if rec.strikes == 1 {
            tracing::warn!(seq, delivery_id = %rec.msg.id, destination = %rec.msg.destination,
                error = %e, max_attempts = self.cfg.max_attempts,
                "record failed while the broker confirmed others; retrying it within its budget");
        }
        tracing::debug!(seq, delivery_id = %rec.msg.id, destination = %rec.msg.destination,
            attempts = n, strikes = rec.strikes, retry_in = ?delay, error = %e, "publish failed; will retry");
        self.metrics
            .forward_retries
            .with_label_values(&[sink])
            .inc();
        let msg = self.take_message(rec);
        self.attempt(msg, delay)
    }

    /// The record is settled (confirmed or dead-lettered): it leaves the window, its key is
    /// released for the next record of the same resource, and the confirmed position advances.
    fn finish(&self, seq: u64, w: &mut Window, attempts: &mut FuturesUnordered<Attempt>) {
        let rec = w
            .pending
            .remove(&seq)
            .expect("settled record is in the window");
        w.bytes -= rec.record.len() as u64;
        if rec.stuck_since.is_some() {
            w.stuck -= 1;
        }
        let key = rec.msg.key.as_str();
        let (next, empty) = match w.by_key.get_mut(key) {
            Some(q) => {
                q.pop_front();
                (q.front().copied(), q.is_empty())
            }
            None => (None, false),
        };
        if empty {
            w.by_key.remove(key);
        }
        if let Some(next) = next {
            let confirms = w.confirms;
            let rec = w
                .pending
                .get_mut(&next)
                .expect("queued record is in the window");
            attempts.push(self.dispatch(rec, confirms));
        }
        let upto = match w.pending.first_key_value() {
            Some((&oldest, _)) => oldest - 1,
            None => w.last_read,
        };
        if upto > w.confirmed {
            w.confirmed = upto;
            self.spool.confirm(upto);
        }
        self.show(w);
    }
}

#[cfg(test)]
mod tests;
