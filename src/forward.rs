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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use rand::Rng;

use crate::cloudevents::CloudEvents;
use crate::config::ForwardConfig;
use crate::deadletter::{self, DeadLetters};
use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::routing::Router;
use crate::sink::{self, BrokerState, BrokerStatus, Message, SendError, Sink};
use crate::spool::{self, Spool, StoredRecord};

/// How many records to read from the spool per batch.
const READ_BATCH: usize = 256;

/// Dead-letter reason of a record that kept failing while the broker confirmed others.
pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";
/// Dead-letter reason of a spool record whose CRC matched but which does not decode.
pub const UNDECODABLE: &str = "undecodable";

pub struct Forwarder {
    pub spool: Spool,
    pub sink: Arc<dyn Sink>,
    pub router: Router,
    /// `sink.cloudevents`: how the message carries CloudEvents attributes, if at all.
    pub cloudevents: Arc<CloudEvents>,
    pub cfg: ForwardConfig,
    pub metrics: Arc<Metrics>,
    pub status: Arc<BrokerStatus>,
    pub dead_letters: Arc<DeadLetters>,
    /// What the admin listener shows of the oldest unsettled record.
    pub progress: Arc<Progress>,
}

/// The forwarder's oldest unsettled record and how many records are stuck, for `/readyz`,
/// `hookbridge status` and the gauges (the admin listener reads it at each scrape, so an age
/// keeps growing while the forwarder itself has nothing to do).
#[derive(Default)]
pub struct Progress(Mutex<ProgressState>);

#[derive(Default, Clone)]
struct ProgressState {
    oldest: Option<Oldest>,
    stuck: usize,
}

/// The oldest record the forwarder has read and not settled.
#[derive(Debug, Clone)]
pub struct Oldest {
    pub seq: u64,
    pub delivery_id: String,
    pub destination: String,
    /// Failed publish attempts so far.
    pub attempts: u32,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// When the forwarder read it.
    pub since: Instant,
}

impl Progress {
    /// The oldest unsettled record, if any, and the number of stuck records.
    pub fn snapshot(&self) -> (Option<Oldest>, usize) {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (s.oldest.clone(), s.stuck)
    }

    fn set(&self, oldest: Option<Oldest>, stuck: usize) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = ProgressState { oldest, stuck };
    }
}

/// What the forwarder keeps of a message once the sink has it: enough to log it, release its
/// key and dead-letter it.
#[derive(Default)]
struct Sent {
    seq: u64,
    id: String,
    destination: String,
    key: String,
}

struct Slot {
    msg: Sent,
    /// The message, built at admission and moved (not cloned) into the first send. A retry
    /// rebuilds it from `record`: retries are rare, and a clone of every message for the
    /// case that it fails cost an allocation per header on the hot path.
    ready: Option<Message>,
    /// The spool record payload (the message's body is a slice of it, so this costs nothing);
    /// kept for the dead-letter store.
    record: bytes::Bytes,
    /// When the record was read from the spool.
    admitted: Instant,
    /// Failed attempts so far.
    attempts: u32,
    /// Failed attempts during which the broker confirmed other records (see [`Window::confirms`]).
    strikes: u32,
    /// `Window::confirms` when this record last failed (or was first sent).
    confirms_seen: u64,
    /// The first strike: from here `forward.max_retry_age` counts.
    stuck_since: Option<Instant>,
    /// The last failure, for `/readyz`.
    last_error: Option<String>,
    /// The ingress kept this authentic but unroutable body for the dead-letter store, or it does
    /// not decode (reason).
    rejected: Option<&'static str>,
    /// Set once the record is bound for the dead-letter store; from then on it is never sent.
    dead_letter: Option<DeadLetterJob>,
}

/// A record being moved to the dead-letter store.
struct DeadLetterJob {
    /// Written again unchanged by every retry.
    meta: Arc<deadletter::Meta>,
    /// The metric label (`meta.reason`, from the fixed set of `SendError` kinds).
    reason: &'static str,
    /// Failed writes so far.
    failures: u32,
}

/// The records read from the spool and not yet settled.
#[derive(Default)]
struct Window {
    /// By seq. A settled record leaves at once: the confirmed position is just below the
    /// smallest seq here (or the last seq read when it is empty).
    slots: BTreeMap<u64, Slot>,
    /// Per ordering key, the seqs waiting in order; the front one is the one being sent.
    by_key: HashMap<String, VecDeque<u64>>,
    /// Payload bytes of `slots`.
    bytes: u64,
    /// The last seq read from the spool.
    last_read: u64,
    /// The position last passed to `Spool::confirm`.
    confirmed: u64,
    /// Records the broker confirmed since the start: a failure while this moved is a strike.
    confirms: u64,
    /// Slots with at least one strike.
    stuck: usize,
    /// (seq, attempts) of the oldest slot as last shown in [`Progress`].
    shown: Option<(u64, u32)>,
}

impl Window {
    fn full(&self, cfg: &ForwardConfig) -> bool {
        self.slots.len() >= cfg.max_in_flight || self.bytes >= cfg.max_in_flight_bytes
    }
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

/// Builds the broker message for a stored delivery. CloudEvents only adds headers or wraps the
/// body: destination and key come from routing alone, in every mode.
pub fn message(router: &Router, ce: &CloudEvents, seq: u64, d: Delivery) -> Message {
    let route = router.route(&d.action);
    let optional = [
        ("sessionboard-action", Some(d.action.as_str())),
        ("sessionboard-resource-id", Some(d.resource_id.as_str())),
        ("sessionboard-org-id", d.org_id.as_deref()),
        ("sessionboard-event-id", d.event_id.as_deref()),
        ("webhook-timestamp", d.timestamp.as_deref()),
    ];
    // Room for every header this function and CloudEvents can add: building one never
    // reallocates.
    let mut headers = Vec::with_capacity(4 + optional.len() + CloudEvents::MAX_HEADERS);
    headers.push(("webhook-id", d.id.clone()));
    headers.push(("content-type", "application/json".to_owned()));
    for (name, value) in optional {
        if let Some(v) = value.and_then(sink::header_safe) {
            headers.push((name, v.to_owned()));
        }
    }
    // A copy an operator put back reaches consumers after changes received later: say so, with
    // the time the original was received, so a consumer can keep the newest state.
    if let Some(c) = d.copied {
        headers.push(("hookbridge-copy", c.how.as_str().to_owned()));
        headers.push(("hookbridge-received-at", rfc3339_millis(d.received_at_ms)));
    }
    // An unusable body is never published (it goes to the dead-letter store as the spool
    // record), and may not even be JSON: it is not wrapped.
    let payload = match d.reject_reason {
        None => ce.apply(&d, &mut headers),
        Some(_) => d.body.clone(),
    };
    Message {
        seq,
        id: d.id,
        destination: route.destination,
        key: d.resource_id,
        headers,
        payload,
    }
}

/// `2026-12-05T12:00:00.123Z`.
fn rfc3339_millis(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
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
            let room = self.cfg.max_in_flight.saturating_sub(w.slots.len());
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
                        unconfirmed = w.slots.len(),
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
                let rejected = delivery
                    .reject_reason
                    .as_deref()
                    .map(crate::delivery::reject_label);
                let msg = message(&self.router, &self.cloudevents, seq, delivery);
                let sent = Sent {
                    seq,
                    id: msg.id.clone(),
                    destination: msg.destination.clone(),
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
                    ..Sent::default()
                };
                (sent, None, Some(UNDECODABLE))
            }
        };
        let queue = w.by_key.entry(msg.key.clone()).or_default();
        queue.push_back(seq);
        let send_now = queue.len() == 1;
        w.slots.insert(
            seq,
            Slot {
                msg,
                ready,
                record,
                admitted: Instant::now(),
                attempts: 0,
                strikes: 0,
                confirms_seen: w.confirms,
                stuck_since: None,
                last_error: None,
                rejected,
                dead_letter: None,
            },
        );
        if send_now {
            let confirms = w.confirms;
            let slot = w.slots.get_mut(&seq).expect("just inserted");
            attempts.push(self.dispatch(slot, confirms));
        }
    }

    /// Sends, or for a record the ingress kept as unusable (or that does not decode), goes
    /// straight to the dead-letter store.
    fn dispatch(&self, slot: &mut Slot, confirms: u64) -> Attempt {
        match slot.rejected {
            // An unusable body is never published (its destination would be `<prefix>unroutable`
            // with an empty key).
            Some(kind) => {
                let detail = if kind == UNDECODABLE {
                    "the spool record does not decode (written by another version?)".to_owned()
                } else {
                    format!("rejected at ingress: {kind}")
                };
                self.dead_letter(slot, &SendError::Permanent { kind, detail })
            }
            None => {
                slot.confirms_seen = confirms;
                let msg = self.take_message(slot);
                self.attempt(msg, Duration::ZERO)
            }
        }
    }

    /// The slot's message for a send: the one built at admission, or rebuilt from the record.
    fn take_message(&self, slot: &mut Slot) -> Message {
        slot.ready.take().unwrap_or_else(|| {
            let d = Delivery::decode(slot.record.clone())
                .expect("a record that is sent decoded when it was admitted");
            message(&self.router, &self.cloudevents, slot.msg.seq, d)
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

    /// Starts moving a record the broker refused permanently (or the ingress kept as unusable,
    /// or that exhausted its retries) to the dead-letter store. From here on the record is only
    /// ever written there.
    fn dead_letter(&self, slot: &mut Slot, e: &SendError) -> Attempt {
        let action = Delivery::decode(slot.record.clone())
            .map(|d| d.action)
            .unwrap_or_default();
        let meta = Arc::new(deadletter::Meta {
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
        });
        slot.dead_letter = Some(DeadLetterJob {
            meta: meta.clone(),
            reason: e.kind(),
            failures: 0,
        });
        self.write_dead_letter(meta, slot.record.clone(), Duration::ZERO)
    }

    /// One attempt at writing a dead letter, after `delay`.
    fn write_dead_letter(
        &self,
        meta: Arc<deadletter::Meta>,
        record: bytes::Bytes,
        delay: Duration,
    ) -> Attempt {
        let store = self.dead_letters.clone();
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
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
        w: &mut Window,
        attempts: &mut FuturesUnordered<Attempt>,
    ) {
        let sink = self.sink.name();
        let in_window = w.slots.len();
        let window_full = w.full(&self.cfg);
        let confirms = w.confirms;
        let Some(slot) = w.slots.get_mut(&seq) else {
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
                w.confirms += 1;
                self.finish(seq, w, attempts);
            }
            Outcome::DeadLettered(Ok(())) => {
                let job = slot
                    .dead_letter
                    .as_ref()
                    .expect("a dead-letter write has its job");
                // Invariant 8: counted when the record is durably in the store, once.
                self.metrics
                    .dead_lettered
                    .with_label_values(&[job.reason])
                    .inc();
                self.metrics
                    .dead_letter_records
                    .set(self.dead_letters.len() as i64);
                if job.failures > 0 {
                    tracing::info!(seq, delivery_id = %slot.msg.id, failed_writes = job.failures,
                        "dead letter written after failed attempts");
                }
                self.finish(seq, w, attempts);
            }
            Outcome::DeadLettered(Err(e)) => {
                // Retry the write, never the broker: the broker refused this record for good, or
                // it is an unusable body that must not be published at all. The record stays in
                // the spool (unconfirmed) until the write succeeds, and its key waits behind it.
                let job = slot
                    .dead_letter
                    .as_mut()
                    .expect("a dead-letter write has its job");
                job.failures += 1;
                let delay = backoff(&self.cfg, job.failures);
                // Once per record at error level; a failing store would otherwise log every
                // retry of every record waiting on it.
                if job.failures == 1 {
                    tracing::error!(seq, delivery_id = %slot.msg.id, reason = job.reason, error = %e,
                        "writing the dead letter failed; retrying the write with backoff");
                } else {
                    tracing::debug!(seq, delivery_id = %slot.msg.id, failed_writes = job.failures,
                        retry_in = ?delay, error = %e, "writing the dead letter failed again");
                }
                attempts.push(self.write_dead_letter(job.meta.clone(), slot.record.clone(), delay));
            }
            Outcome::Sent(Err(e)) => {
                slot.attempts += 1;
                slot.last_error = Some(e.to_string());
                let n = slot.attempts;
                self.metrics
                    .publish_errors
                    .with_label_values(&[sink, e.kind()])
                    .inc();
                // A strike: the broker confirmed other records since this one last failed (or
                // was sent), so this is about the record, not an outage.
                if confirms != slot.confirms_seen {
                    slot.strikes += 1;
                    if slot.stuck_since.is_none() {
                        slot.stuck_since = Some(Instant::now());
                        w.stuck += 1;
                    }
                }
                slot.confirms_seen = confirms;
                match &e {
                    SendError::Retryable { .. } if self.exhausted(slot, window_full) => {
                        let age = slot.stuck_since.map(|t| t.elapsed()).unwrap_or_default();
                        tracing::error!(seq, delivery_id = %slot.msg.id, destination = %slot.msg.destination,
                            attempts = n, strikes = slot.strikes, ?age, error = %e,
                            "record kept failing while the broker confirmed others; moving it to the dead-letter store");
                        let given_up = SendError::Permanent {
                            kind: RETRIES_EXHAUSTED,
                            detail: format!(
                                "{n} failed attempts ({} while the broker confirmed other records) over {:.0?}; last error: {e}",
                                slot.strikes, age
                            ),
                        };
                        attempts.push(self.dead_letter(slot, &given_up));
                    }
                    SendError::Retryable { .. } => {
                        let delay = backoff(&self.cfg, n);
                        if slot.strikes == 0 {
                            self.metrics.broker_up.with_label_values(&[sink]).set(0);
                            // During an outage every record in flight fails: say so once when
                            // the broker goes away (and when it is back), not once per record.
                            if self.status.get() != BrokerState::Down {
                                self.status.set(BrokerState::Down);
                                tracing::warn!(sink, destination = %slot.msg.destination, error = %e,
                                    "publishing failed; holding deliveries in the spool and retrying with backoff");
                            }
                        } else if slot.strikes == 1 {
                            tracing::warn!(seq, delivery_id = %slot.msg.id, destination = %slot.msg.destination,
                                error = %e, max_attempts = self.cfg.max_attempts,
                                "record failed while the broker confirmed others; retrying it within its budget");
                        }
                        tracing::debug!(seq, delivery_id = %slot.msg.id, destination = %slot.msg.destination,
                            attempts = n, strikes = slot.strikes, retry_in = ?delay, error = %e, "publish failed; will retry");
                        self.metrics
                            .forward_retries
                            .with_label_values(&[sink])
                            .inc();
                        let msg = self.take_message(slot);
                        attempts.push(self.attempt(msg, delay));
                    }
                    SendError::Permanent { kind, .. } => {
                        tracing::error!(seq, delivery_id = %slot.msg.id, destination = %slot.msg.destination,
                            reason = kind, error = %e,
                            "broker refused the record permanently; moving it to the dead-letter store");
                        attempts.push(self.dead_letter(slot, &e));
                    }
                }
                self.show(w);
            }
        }
    }

    /// Whether a record that just failed has used up its budget: `forward.max_attempts` strikes,
    /// and either `forward.max_retry_age` since the first one or a full window (the record is
    /// then holding up records that could be published).
    fn exhausted(&self, slot: &Slot, window_full: bool) -> bool {
        let Some(since) = slot.stuck_since else {
            return false;
        };
        slot.strikes >= self.cfg.max_attempts
            && (window_full || since.elapsed() >= self.cfg.max_retry_age)
    }

    /// The record is settled (confirmed or dead-lettered): it leaves the window, its key is
    /// released for the next record of the same resource, and the confirmed position advances.
    fn finish(&self, seq: u64, w: &mut Window, attempts: &mut FuturesUnordered<Attempt>) {
        let slot = w
            .slots
            .remove(&seq)
            .expect("settled record is in the window");
        w.bytes -= slot.record.len() as u64;
        if slot.stuck_since.is_some() {
            w.stuck -= 1;
        }
        let key = slot.msg.key.as_str();
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
            let slot = w
                .slots
                .get_mut(&next)
                .expect("queued record is in the window");
            attempts.push(self.dispatch(slot, confirms));
        }
        let upto = match w.slots.first_key_value() {
            Some((&oldest, _)) => oldest - 1,
            None => w.last_read,
        };
        if upto > w.confirmed {
            w.confirmed = upto;
            self.spool.confirm(upto);
        }
        self.show(w);
    }

    /// Updates the gauges and, when the oldest record or its attempts changed, [`Progress`].
    fn show(&self, w: &mut Window) {
        self.metrics.forward_in_flight.set(w.slots.len() as i64);
        self.metrics.forward_in_flight_bytes.set(w.bytes as i64);
        self.metrics.forward_stuck_records.set(w.stuck as i64);
        let oldest = w.slots.first_key_value();
        let now = oldest.map(|(&seq, s)| (seq, s.attempts));
        if now == w.shown {
            return;
        }
        w.shown = now;
        let oldest = oldest.map(|(&seq, s)| Oldest {
            seq,
            delivery_id: s.msg.id.clone(),
            destination: s.msg.destination.clone(),
            attempts: s.attempts,
            last_error: s.last_error.clone(),
            since: s.admitted,
        });
        self.progress.set(oldest, w.stuck);
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
            ..ForwardConfig::default()
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
            copied: None,
            body: bytes::Bytes::from_static(b"{}"),
        };
        let m = message(&router, &CloudEvents::off(), 7, d);
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

    #[test]
    fn a_copy_says_so_with_the_original_receive_time() {
        let router = Router::new("sb.", "unroutable", &Default::default()).unwrap();
        let d = Delivery {
            id: "msg_1".into(),
            timestamp: None,
            action: "session.updated".into(),
            resource_id: "r-1".into(),
            org_id: None,
            event_id: None,
            received_at_ms: 1_764_936_000_123,
            reject_reason: None,
            copied: None,
            body: bytes::Bytes::from_static(b"{}"),
        };
        let header = |m: &Message, name: &str| {
            m.headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        let original = message(&router, &CloudEvents::off(), 1, d.clone());
        assert_eq!(header(&original, "hookbridge-copy"), None);
        let copy = Delivery {
            copied: Some(crate::delivery::Copied {
                how: crate::delivery::CopyKind::Requeue,
                at_ms: 1_764_939_600_000,
            }),
            ..d
        };
        let m = message(&router, &CloudEvents::off(), 2, copy);
        assert_eq!(header(&m, "hookbridge-copy").as_deref(), Some("requeue"));
        assert_eq!(
            header(&m, "hookbridge-received-at").as_deref(),
            Some("2025-12-05T12:00:00.123Z")
        );
        assert_eq!(m.payload, original.payload, "the body is unchanged");
    }

    #[test]
    fn cloudevents_never_change_destination_or_key() {
        let router = Router::new("sb.", "unroutable", &Default::default()).unwrap();
        let d = Delivery {
            id: "msg_1".into(),
            timestamp: None,
            action: "session.updated".into(),
            resource_id: "r-1".into(),
            org_id: None,
            event_id: None,
            received_at_ms: 0,
            reject_reason: None,
            copied: None,
            body: bytes::Bytes::from_static(br#"{"data":{"id":"r-1"}}"#),
        };
        let off = message(&router, &CloudEvents::off(), 1, d.clone());
        for mode in ["binary", "structured"] {
            let toml = format!("[sink]\ncloudevents = \"{mode}\"\n");
            let ce = CloudEvents::from_config(&crate::config::tests::load_str(&toml).unwrap());
            let m = message(&router, &ce, 1, d.clone());
            assert_eq!(
                (&m.destination, &m.key, &m.id),
                (&off.destination, &off.key, &off.id)
            );
            let rejected = Delivery {
                reject_reason: Some("invalid_json".into()),
                copied: None,
                body: bytes::Bytes::from_static(b"not json"),
                ..d.clone()
            };
            let m = message(&router, &ce, 1, rejected);
            assert_eq!(m.payload, bytes::Bytes::from_static(b"not json"), "{mode}");
        }
    }

    /// The real forwarder over a real spool and dead-letter store (tempdir), publishing to a
    /// scripted sink that checks per-key exclusion and records every call.
    mod model {
        use std::collections::{BTreeMap, HashMap, VecDeque};
        use std::io;
        use std::path::Path;
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::{Arc, Mutex, MutexGuard};
        use std::time::Duration;

        use futures_util::future::BoxFuture;
        use futures_util::FutureExt;
        use tokio::sync::{oneshot, Semaphore};

        use crate::config::ForwardConfig;
        use crate::deadletter::DeadLetters;
        use crate::delivery::Delivery;
        use crate::forward::Forwarder;
        use crate::metrics::Metrics;
        use crate::routing::Router;
        use crate::sink::{BrokerStatus, Message, SendError, Sink};
        use crate::spool::{DelegatingFs, FsFile, RealFs, Spool, SpoolConfig, SpoolFs};

        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Reply {
            Ok,
            Retryable,
            Permanent(&'static str),
        }

        /// How one call to `send` goes: wait `delay`, then for a permit of `gate` (if any),
        /// then reply.
        #[derive(Clone)]
        struct Step {
            reply: Reply,
            delay: Duration,
            gate: Option<Arc<Semaphore>>,
        }

        fn step(reply: Reply, delay_ms: u64) -> Step {
            Step {
                reply,
                delay: Duration::from_millis(delay_ms),
                gate: None,
            }
        }

        #[derive(Default)]
        struct SinkState {
            /// While set, every send fails as retryable after 1 ms (a broker outage).
            down: bool,
            /// Per delivery id, the steps of its successive calls; once used up, `Ok` after 1 ms.
            script: HashMap<String, VecDeque<Step>>,
            /// Every call, in call order: (delivery id, destination).
            calls: Vec<(String, String)>,
            /// Successful sends, in completion order: (delivery id, key).
            published: Vec<(String, String)>,
            /// Per key, the delivery id being sent.
            in_flight: HashMap<String, String>,
            /// Broken rules, reported by the test (a panic here would only kill the forwarder).
            violations: Vec<String>,
        }

        #[derive(Default)]
        struct ScriptedSink(Mutex<SinkState>);

        impl ScriptedSink {
            fn state(&self) -> MutexGuard<'_, SinkState> {
                self.0.lock().unwrap_or_else(|e| e.into_inner())
            }
            fn script(&self, id: &str, steps: impl IntoIterator<Item = Step>) {
                self.state()
                    .script
                    .entry(id.to_owned())
                    .or_default()
                    .extend(steps);
            }
            fn calls_for(&self, id: &str) -> usize {
                self.state().calls.iter().filter(|(i, _)| i == id).count()
            }
            fn published(&self) -> Vec<String> {
                self.state()
                    .published
                    .iter()
                    .map(|(id, _)| id.clone())
                    .collect()
            }
        }

        impl Sink for Arc<ScriptedSink> {
            fn name(&self) -> &'static str {
                "scripted"
            }

            fn send(&self, msg: Message) -> BoxFuture<'static, Result<(), SendError>> {
                let step = {
                    let mut s = self.state();
                    s.calls.push((msg.id.clone(), msg.destination.clone()));
                    if let Some(other) = s.in_flight.insert(msg.key.clone(), msg.id.clone()) {
                        s.violations.push(format!(
                            "{} sent while {other} is in flight for key {:?}",
                            msg.id, msg.key
                        ));
                    }
                    if s.down {
                        step(Reply::Retryable, 1)
                    } else {
                        s.script
                            .get_mut(&msg.id)
                            .and_then(|q| q.pop_front())
                            .unwrap_or_else(|| step(Reply::Ok, 1))
                    }
                };
                let me = self.clone();
                async move {
                    tokio::time::sleep(step.delay).await;
                    if let Some(gate) = step.gate {
                        gate.acquire().await.expect("gate open").forget();
                    }
                    let mut s = me.state();
                    s.in_flight.remove(&msg.key);
                    let detail = "scripted".to_owned();
                    match step.reply {
                        Reply::Ok => {
                            s.published.push((msg.id, msg.key));
                            Ok(())
                        }
                        Reply::Retryable => Err(SendError::Retryable {
                            kind: "timeout",
                            detail,
                        }),
                        Reply::Permanent(kind) => Err(SendError::Permanent { kind, detail }),
                    }
                }
                .boxed()
            }

            fn close(&self) -> BoxFuture<'static, ()> {
                async {}.boxed()
            }
        }

        /// The real filesystem, except that creating a dead letter's temporary file fails while
        /// `failures_left` > 0. Counts the creates.
        #[derive(Default)]
        struct FlakyDeadLetterFs {
            failures_left: AtomicU32,
            creates: AtomicU32,
        }

        impl DelegatingFs for Arc<FlakyDeadLetterFs> {
            fn inner(&self) -> &dyn SpoolFs {
                &RealFs
            }
            fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
                if path.to_string_lossy().ends_with(".dl.tmp") {
                    self.creates.fetch_add(1, Ordering::SeqCst);
                    let left = self.failures_left.load(Ordering::SeqCst);
                    if left > 0 {
                        self.failures_left.store(left - 1, Ordering::SeqCst);
                        return Err(io::Error::from_raw_os_error(5)); // EIO
                    }
                }
                RealFs.create(path)
            }
        }

        /// A routable delivery: id `msg_<i>`, ordering key `key`.
        fn delivery(i: u64, key: &str) -> Delivery {
            Delivery {
                id: format!("msg_{i}"),
                timestamp: None,
                action: "session.updated".into(),
                resource_id: key.into(),
                org_id: None,
                event_id: None,
                received_at_ms: 0,
                reject_reason: None,
                copied: None,
                body: bytes::Bytes::from(format!("{{\"n\":{i}}}")),
            }
        }

        /// An authentic body the ingress kept as unusable, built as `ingress` builds one.
        fn unusable(i: u64) -> Delivery {
            Delivery {
                id: format!("msg_{i}"),
                timestamp: None,
                action: String::new(),
                resource_id: String::new(),
                org_id: None,
                event_id: None,
                received_at_ms: 0,
                reject_reason: Some("invalid_json".into()),
                copied: None,
                body: bytes::Bytes::from(format!("not json {i}")),
            }
        }

        struct Bed {
            _dir: tempfile::TempDir,
            spool: Spool,
            dead_letters: Arc<DeadLetters>,
            metrics: Arc<Metrics>,
            sink: Arc<ScriptedSink>,
            progress: Arc<crate::forward::Progress>,
            /// Delivery id → (seq, stored payload), in spool order.
            records: BTreeMap<u64, (String, bytes::Bytes)>,
        }

        impl Bed {
            /// A spool holding `deliveries` in this order (seqs 1..), and a dead-letter store
            /// beside it on `dl_fs`.
            async fn new(deliveries: Vec<Delivery>, dl_fs: Arc<dyn SpoolFs>) -> Bed {
                let dir = tempfile::tempdir().unwrap();
                let spool_dir = dir.path().join("spool");
                let metrics = Arc::new(Metrics::new());
                let cfg = SpoolConfig {
                    dir: spool_dir.clone(),
                    segment_bytes: 1 << 20,
                    max_bytes: 1 << 30,
                    max_append_bytes: 64 << 10,
                    max_batch_bytes: 1 << 20,
                    preallocate_bytes: 1 << 20,
                    confirm_interval: Duration::from_millis(5),
                    min_free_bytes: 0,
                    retain_confirmed: Duration::ZERO,
                };
                let (spool, _) = Spool::open(cfg, metrics.clone()).unwrap();
                let mut records = BTreeMap::new();
                for d in deliveries {
                    let payload = d.encode();
                    let seq = spool.append(payload.clone()).await.unwrap();
                    records.insert(seq, (d.id, payload));
                }
                let dead_letters = Arc::new(DeadLetters::open_with_fs(&spool_dir, dl_fs).unwrap());
                Bed {
                    _dir: dir,
                    spool,
                    dead_letters,
                    metrics,
                    sink: Arc::default(),
                    progress: Arc::default(),
                    records,
                }
            }

            fn seq(&self, id: &str) -> u64 {
                *self
                    .records
                    .iter()
                    .find(|(_, (i, _))| i == id)
                    .expect("known id")
                    .0
            }

            fn last_seq(&self) -> u64 {
                *self.records.keys().next_back().unwrap()
            }

            fn confirmed(&self) -> u64 {
                self.spool.stats().confirmed
            }

            fn dead_lettered(&self, reason: &str) -> u64 {
                self.metrics
                    .dead_lettered
                    .with_label_values(&[reason])
                    .get()
            }

            /// Starts the forwarder; it stops when the returned sender is dropped or fired.
            fn start(
                &self,
                cfg: ForwardConfig,
            ) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
                let forwarder = Forwarder {
                    spool: self.spool.clone(),
                    sink: Arc::new(self.sink.clone()),
                    router: Router::new("sb.", "unroutable", &Default::default()).unwrap(),
                    cloudevents: Arc::new(crate::cloudevents::CloudEvents::off()),
                    cfg,
                    metrics: self.metrics.clone(),
                    status: Arc::new(BrokerStatus::default()),
                    dead_letters: self.dead_letters.clone(),
                    progress: self.progress.clone(),
                };
                let (tx, rx) = oneshot::channel::<()>();
                let task = tokio::spawn(forwarder.run(
                    async move {
                        let _ = rx.await;
                    },
                    Duration::from_secs(1),
                ));
                (tx, task)
            }

            /// Runs the forwarder until everything in the spool is confirmed.
            async fn run_to_end(&self, cfg: ForwardConfig) {
                let (stop, task) = self.start(cfg);
                let last = self.last_seq();
                wait_for("everything confirmed", || self.confirmed() == last).await;
                let _ = stop.send(());
                task.await.unwrap();
                self.check_sink_rules();
            }

            /// No key had two sends in flight; every published id was published once; per key,
            /// the published ids are in spool order.
            fn check_sink_rules(&self) {
                let s = self.sink.state();
                assert_eq!(s.violations, Vec::<String>::new());
                let mut per_key: HashMap<&str, Vec<u64>> = HashMap::new();
                for (id, key) in &s.published {
                    per_key.entry(key).or_default().push(self.seq(id));
                }
                for (key, seqs) in per_key {
                    let mut sorted = seqs.clone();
                    sorted.sort();
                    sorted.dedup();
                    assert_eq!(seqs, sorted, "key {key:?}: published out of order or twice");
                }
            }
        }

        fn forward_cfg(max_in_flight: usize) -> ForwardConfig {
            ForwardConfig {
                max_in_flight,
                retry_initial: Duration::from_millis(10),
                retry_max: Duration::from_millis(200),
                ..ForwardConfig::default()
            }
        }

        /// Polls `cond` (virtual time advances while the runtime idles); gives up after 20 s of
        /// real time.
        async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !cond() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "timed out waiting: {what}"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }

        #[tokio::test(start_paused = true)]
        async fn per_key_order_and_retries_until_published_once() {
            let keys = ["a", "b", "c", "d", "e"];
            let deliveries = (1..=60)
                .map(|i| delivery(i, keys[i as usize % 5]))
                .collect();
            let bed = Bed::new(deliveries, Arc::new(RealFs)).await;
            for i in 1..=60u64 {
                let id = format!("msg_{i}");
                // Varied latencies, so sends of different keys complete out of spool order.
                let ms = (i * 37) % 23;
                if i % 7 == 0 {
                    bed.sink.script(
                        &id,
                        [
                            step(Reply::Retryable, ms),
                            step(Reply::Retryable, 1),
                            step(Reply::Ok, ms),
                        ],
                    );
                } else {
                    bed.sink.script(&id, [step(Reply::Ok, ms)]);
                }
            }
            bed.run_to_end(forward_cfg(16)).await;

            let published = bed.sink.published();
            assert_eq!(published.len(), 60, "every record published exactly once");
            for i in 1..=60u64 {
                let id = format!("msg_{i}");
                assert_eq!(published.iter().filter(|p| **p == id).count(), 1, "{id}");
                let calls = if i % 7 == 0 { 3 } else { 1 };
                assert_eq!(bed.sink.calls_for(&id), calls, "{id}");
            }
            assert_eq!(
                bed.metrics
                    .forward_retries
                    .with_label_values(&["scripted"])
                    .get(),
                2 * 8
            );
            assert!(bed.dead_letters.is_empty());
            bed.spool.close().await.unwrap();
        }

        #[tokio::test(start_paused = true)]
        async fn confirmed_position_covers_only_a_contiguous_prefix_of_done_records() {
            // 1 and 5 are held (5 after a failed attempt); the others, all different keys, go
            // through.
            let deliveries = (1..=10).map(|i| delivery(i, &format!("k{i}"))).collect();
            let bed = Bed::new(deliveries, Arc::new(RealFs)).await;
            let gate1 = Arc::new(Semaphore::new(0));
            let gate5 = Arc::new(Semaphore::new(0));
            let held = |gate: &Arc<Semaphore>| Step {
                gate: Some(gate.clone()),
                ..step(Reply::Ok, 1)
            };
            bed.sink.script("msg_1", [held(&gate1)]);
            bed.sink
                .script("msg_5", [step(Reply::Retryable, 1), held(&gate5)]);
            let (stop, task) = bed.start(forward_cfg(64));

            wait_for("8 records published", || bed.sink.published().len() == 8).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(bed.confirmed(), 0, "record 1 is not done");

            gate1.add_permits(1);
            let before5 = bed.seq("msg_5") - 1;
            wait_for("prefix up to 4 confirmed", || bed.confirmed() == before5).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(bed.confirmed(), before5, "record 5 is not done");

            gate5.add_permits(1);
            let last = bed.last_seq();
            wait_for("everything confirmed", || bed.confirmed() == last).await;
            let _ = stop.send(());
            task.await.unwrap();
            bed.check_sink_rules();
            assert_eq!(bed.sink.published().len(), 10);
            bed.spool.close().await.unwrap();
        }

        #[tokio::test(start_paused = true)]
        async fn permanent_refusal_and_unusable_body_go_to_the_dead_letter_store() {
            let deliveries = vec![
                delivery(1, "a"),
                delivery(2, "a"),
                unusable(3),
                delivery(4, "b"),
            ];
            let bed = Bed::new(deliveries, Arc::new(RealFs)).await;
            bed.sink
                .script("msg_1", [step(Reply::Permanent("message_too_large"), 3)]);
            bed.run_to_end(forward_cfg(16)).await;

            assert_eq!(bed.sink.calls_for("msg_1"), 1);
            assert_eq!(
                bed.sink.calls_for("msg_3"),
                0,
                "an unusable body is never published"
            );
            let mut published = bed.sink.published();
            published.sort();
            assert_eq!(published, ["msg_2", "msg_4"]);

            let check = |id: &str, reason: &str, destination: &str| {
                let seq = bed.seq(id);
                let (meta, payload) = bed.dead_letters.get(seq).unwrap().expect("dead-lettered");
                assert_eq!(
                    (meta.seq, meta.id.as_str(), meta.reason.as_str()),
                    (seq, id, reason)
                );
                assert_eq!(meta.destination, destination);
                assert_eq!(payload, bed.records[&seq].1, "the spool record, unchanged");
            };
            check("msg_1", "message_too_large", "sb.session.updated");
            check("msg_3", "invalid_json", "sb.unroutable");
            assert_eq!(bed.dead_letters.len(), 2);
            assert_eq!(bed.dead_lettered("message_too_large"), 1);
            assert_eq!(bed.dead_lettered("invalid_json"), 1);
            assert_eq!(bed.metrics.dead_letter_records.get(), 2);
            bed.spool.close().await.unwrap();
        }

        #[tokio::test(start_paused = true)]
        async fn a_failed_dead_letter_write_is_retried_as_a_dead_letter_write() {
            const FAILURES: u32 = 3;
            let fs = Arc::new(FlakyDeadLetterFs::default());
            let deliveries = vec![
                unusable(1),
                delivery(2, "a"),
                delivery(3, "a"),
                unusable(4),
                delivery(5, "b"),
            ];
            let bed = Bed::new(deliveries, Arc::new(fs.clone())).await;
            // The broker refuses 2 every time it is asked.
            bed.sink.script(
                "msg_2",
                (0..20).map(|_| step(Reply::Permanent("message_too_large"), 1)),
            );
            fs.failures_left.store(FAILURES, Ordering::SeqCst);
            bed.run_to_end(forward_cfg(16)).await;

            let calls = bed.sink.state().calls.clone();
            assert!(
                calls.iter().all(|(_, dest)| !dest.ends_with("unroutable")),
                "an unusable body went to the broker: {calls:?}"
            );
            assert_eq!(bed.sink.calls_for("msg_1"), 0);
            assert_eq!(bed.sink.calls_for("msg_4"), 0);
            assert_eq!(
                bed.sink.calls_for("msg_2"),
                1,
                "the refusal is not asked again"
            );
            let mut published = bed.sink.published();
            published.sort();
            assert_eq!(published, ["msg_3", "msg_5"]);

            for id in ["msg_1", "msg_2", "msg_4"] {
                let seq = bed.seq(id);
                let (meta, payload) = bed.dead_letters.get(seq).unwrap().expect(id);
                assert_eq!(meta.id, id);
                assert_eq!(payload, bed.records[&seq].1);
            }
            assert_eq!(bed.dead_letters.len(), 3);
            // Counted once per record written, not per attempt.
            assert_eq!(bed.dead_lettered("invalid_json"), 2);
            assert_eq!(bed.dead_lettered("message_too_large"), 1);
            assert_eq!(fs.failures_left.load(Ordering::SeqCst), 0);
            assert_eq!(
                fs.creates.load(Ordering::SeqCst),
                FAILURES + 3,
                "one write per failure plus one per record"
            );
            bed.spool.close().await.unwrap();
        }
        /// 1 is refused (retryably) forever; 2 has its key and waits behind it. `others` are
        /// the records of other keys, each sent with `delay_ms`.
        async fn stuck_bed(others: Vec<Delivery>, delay_ms: u64) -> Bed {
            let mut deliveries = vec![delivery(1, "stuck"), delivery(2, "stuck")];
            let ids: Vec<String> = others.iter().map(|d| d.id.clone()).collect();
            deliveries.extend(others);
            let bed = Bed::new(deliveries, Arc::new(RealFs)).await;
            bed.sink
                .script("msg_1", (0..100_000).map(|_| step(Reply::Retryable, 5)));
            for id in ids {
                bed.sink.script(&id, [step(Reply::Ok, delay_ms)]);
            }
            bed
        }

        /// Ends the run and checks that 1 was given up and everything else published.
        async fn check_given_up(
            bed: &Bed,
            stop: oneshot::Sender<()>,
            task: tokio::task::JoinHandle<()>,
            others: usize,
        ) {
            let last = bed.last_seq();
            wait_for("everything settled", || bed.confirmed() == last).await;
            let _ = stop.send(());
            task.await.unwrap();
            bed.check_sink_rules();
            let published = bed.sink.published();
            assert_eq!(published.len(), others + 1);
            assert!(
                published.contains(&"msg_2".to_owned()),
                "2 follows once 1 is settled"
            );
            let (meta, _) = bed.dead_letters.get(1).unwrap().expect("1 dead-lettered");
            assert_eq!(meta.reason, crate::forward::RETRIES_EXHAUSTED);
            assert!(meta.error.contains("scripted"), "{}", meta.error);
            assert_eq!(bed.dead_lettered(crate::forward::RETRIES_EXHAUSTED), 1);
            assert_eq!(bed.metrics.forward_stuck_records.get(), 0);
        }

        /// Records of other keys flow past a stuck one: it holds one slot of the window, not the
        /// window. Without a budget left it stays, shown as the oldest and as stuck.
        #[tokio::test(start_paused = true)]
        async fn a_stuck_record_holds_one_slot_and_is_shown() {
            let others = (3..=202)
                .map(|i| delivery(i, &format!("k{}", i % 50)))
                .collect();
            let bed = stuck_bed(others, 1).await;
            let cfg = ForwardConfig {
                max_attempts: u32::MAX,
                ..forward_cfg(8)
            };
            let (stop, task) = bed.start(cfg);
            wait_for("the other 200 published", || {
                bed.sink.published().len() == 200
            })
            .await;
            assert_eq!(bed.confirmed(), 0, "1 is not settled: nothing is confirmed");
            assert_eq!(bed.metrics.forward_stuck_records.get(), 1);
            assert_eq!(bed.metrics.forward_in_flight.get(), 2, "1, and 2 behind it");
            let (oldest, stuck) = bed.progress.snapshot();
            let oldest = oldest.expect("an oldest record");
            assert_eq!(
                (oldest.seq, oldest.delivery_id.as_str(), stuck),
                (1, "msg_1", 1)
            );
            assert!(oldest.attempts >= 1 && oldest.last_error.is_some());
            let _ = stop.send(());
            task.await.unwrap();
            bed.check_sink_rules();
            assert!(bed.dead_letters.is_empty());
            bed.spool.close().await.unwrap();
        }

        /// With the window full, `forward.max_attempts` strikes are enough.
        #[tokio::test(start_paused = true)]
        async fn a_stuck_record_is_given_up_after_its_attempts_when_the_window_is_full() {
            let others = (3..=202)
                .map(|i| delivery(i, &format!("k{}", i % 50)))
                .collect();
            let bed = stuck_bed(others, 100).await;
            let cfg = ForwardConfig {
                max_attempts: 4,
                max_retry_age: Duration::from_secs(3600),
                ..forward_cfg(8)
            };
            let (stop, task) = bed.start(cfg);
            check_given_up(&bed, stop, task, 200).await;
            assert!(bed.sink.calls_for("msg_1") >= 4);
            bed.spool.close().await.unwrap();
        }

        /// With room in the window, the record is given up once it is also
        /// `forward.max_retry_age` old; until then it keeps being retried.
        #[tokio::test(start_paused = true)]
        async fn a_stuck_record_is_given_up_after_its_retry_age() {
            // One key: its 100 records go one after another, 50 ms each (5 s of confirms).
            let others = (3..=102).map(|i| delivery(i, "k")).collect();
            let bed = stuck_bed(others, 50).await;
            let cfg = ForwardConfig {
                max_attempts: 3,
                max_retry_age: Duration::from_secs(2),
                ..forward_cfg(1024)
            };
            let (stop, task) = bed.start(cfg);
            check_given_up(&bed, stop, task, 100).await;
            let (meta, _) = bed.dead_letters.get(1).unwrap().unwrap();
            assert!(
                bed.sink.calls_for("msg_1") > 3,
                "retried past max_attempts until old enough: {}",
                meta.error
            );
            bed.spool.close().await.unwrap();
        }

        /// While nothing confirms, failures are an outage: no record is given up however often
        /// it fails, and everything is published once the broker is back.
        #[tokio::test(start_paused = true)]
        async fn an_outage_dead_letters_nothing() {
            let deliveries = (1..=40)
                .map(|i| delivery(i, &format!("k{}", i % 7)))
                .collect();
            let bed = Bed::new(deliveries, Arc::new(RealFs)).await;
            bed.sink.state().down = true;
            let cfg = ForwardConfig {
                max_attempts: 1,
                max_retry_age: Duration::ZERO,
                ..forward_cfg(16)
            };
            let (stop, task) = bed.start(cfg);
            wait_for("many failed attempts", || {
                bed.sink.state().calls.len() > 500
            })
            .await;
            assert!(bed.dead_letters.is_empty());
            assert_eq!(bed.metrics.forward_stuck_records.get(), 0);
            let (oldest, _) = bed.progress.snapshot();
            assert!(oldest.expect("oldest").attempts > 5);
            bed.sink.state().down = false;
            let last = bed.last_seq();
            wait_for("everything confirmed", || bed.confirmed() == last).await;
            let _ = stop.send(());
            task.await.unwrap();
            bed.check_sink_rules();
            assert_eq!(bed.sink.published().len(), 40);
            assert!(
                bed.dead_letters.is_empty(),
                "an outage dead-letters nothing"
            );
            assert_eq!(bed.progress.snapshot().0.map(|o| o.seq), None);
            bed.spool.close().await.unwrap();
        }

        /// A record whose CRC matched but which does not decode is dead-lettered as it is, never
        /// published, and the records after it flow.
        #[tokio::test(start_paused = true)]
        async fn an_undecodable_record_is_dead_lettered() {
            let mut bed = Bed::new(vec![delivery(1, "a")], Arc::new(RealFs)).await;
            let garbage = bytes::Bytes::from_static(b"\xff\xfefrom a newer version");
            let seq = bed.spool.append(garbage.clone()).await.unwrap();
            bed.records.insert(seq, (String::new(), garbage.clone()));
            let after = delivery(3, "b");
            let seq3 = bed.spool.append(after.encode()).await.unwrap();
            bed.records.insert(seq3, (after.id.clone(), after.encode()));
            bed.run_to_end(forward_cfg(16)).await;
            let mut published = bed.sink.published();
            published.sort();
            assert_eq!(published, ["msg_1", "msg_3"]);
            let (meta, payload) = bed.dead_letters.get(seq).unwrap().expect("dead-lettered");
            assert_eq!(meta.reason, crate::forward::UNDECODABLE);
            assert_eq!(payload, garbage, "the record as it was stored");
            assert_eq!(bed.dead_lettered(crate::forward::UNDECODABLE), 1);
            bed.spool.close().await.unwrap();
        }

        /// `forward.max_in_flight_bytes` below one record still moves, one record at a time.
        #[tokio::test(start_paused = true)]
        async fn a_byte_bound_below_one_record_still_forwards() {
            let deliveries = (1..=20).map(|i| delivery(i, &format!("k{i}"))).collect();
            let bed = Bed::new(deliveries, Arc::new(RealFs)).await;
            let cfg = ForwardConfig {
                max_in_flight_bytes: 1,
                ..forward_cfg(16)
            };
            bed.run_to_end(cfg).await;
            assert_eq!(bed.sink.published().len(), 20);
            bed.spool.close().await.unwrap();
        }
    }
}
