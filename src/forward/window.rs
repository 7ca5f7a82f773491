//! The forwarder's window: the records read from the spool and not yet settled, per-key queues
//! (one send in flight per ordering key), and each record's failures and strikes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::dead_letter::DeadLetterJob;
use crate::config::ForwardConfig;
use crate::sink::Message;

/// What the forwarder keeps of a message once the sink has it: enough to log it, release its
/// key and dead-letter it.
#[derive(Default)]
pub(super) struct Sent {
    pub(super) seq: u64,
    /// Shared with [`super::Oldest`]: showing the oldest record costs no copy.
    pub(super) id: Arc<str>,
    pub(super) destination: Arc<str>,
    pub(super) key: String,
    /// The `endpoint` and `action` labels of its metrics (`Metrics::endpoint_label`,
    /// `routing::action_label`).
    pub(super) endpoint: &'static str,
    pub(super) action: &'static str,
}

/// A record read from the spool and not yet settled (published or dead-lettered).
pub(super) struct Pending {
    pub(super) msg: Sent,
    /// The message, built at admission and moved (not cloned) into the first send. A retry
    /// rebuilds it from `record`: retries are rare, and a clone of every message for the
    /// case that it fails would cost an allocation per header on the hot path.
    pub(super) ready: Option<Message>,
    /// The spool record payload (the message's body is a slice of it, so this costs nothing);
    /// kept for the dead-letter store.
    pub(super) record: bytes::Bytes,
    /// When the record was read from the spool.
    pub(super) admitted: Instant,
    /// Failed attempts so far.
    pub(super) attempts: u32,
    /// Failed attempts during which the broker confirmed other records (see [`Window::confirms`]).
    pub(super) strikes: u32,
    /// `Window::confirms` when this record last failed (or was first sent).
    pub(super) confirms_seen: u64,
    /// The first strike, on the forwarder's monotonic clock ([`crate::clock::Clock::mono_ms`]):
    /// from here `forward.max_retry_age` counts.
    pub(super) stuck_since: Option<u64>,
    /// The last failure, for `/readyz`.
    pub(super) last_error: Option<Arc<str>>,
    /// The ingress kept this authentic but unroutable body for the dead-letter store, or it does
    /// not decode (reason).
    pub(super) rejected: Option<&'static str>,
    /// Set once the record is bound for the dead-letter store; from then on it is never sent.
    pub(super) dead_letter: Option<DeadLetterJob>,
}

/// The records read from the spool and not yet settled.
#[derive(Default)]
pub(super) struct Window {
    /// By seq. A settled record leaves at once: the confirmed position is just below the
    /// smallest seq here (or the last seq read when it is empty).
    pub(super) pending: BTreeMap<u64, Pending>,
    /// Per ordering key, the seqs waiting in order; the front one is the one being sent.
    pub(super) by_key: HashMap<String, VecDeque<u64>>,
    /// Payload bytes of `pending`.
    pub(super) bytes: u64,
    /// The last seq read from the spool.
    pub(super) last_read: u64,
    /// The position last passed to `Spool::confirm`.
    pub(super) confirmed: u64,
    /// Records the broker confirmed since the start: a failure while this moved is a strike.
    pub(super) confirms: u64,
    /// Pending records with at least one strike.
    pub(super) stuck: usize,
    /// (seq, attempts) of the oldest record as last shown in [`Progress`](super::Progress).
    pub(super) shown: Option<(u64, u32)>,
}

impl Window {
    pub(super) fn full(&self, cfg: &ForwardConfig) -> bool {
        self.pending.len() >= cfg.max_in_flight || self.bytes >= cfg.max_in_flight_bytes
    }
}

impl Pending {
    /// A record just read from the spool; `confirms` is [`Window::confirms`] now.
    pub(super) fn new(
        msg: Sent,
        ready: Option<Message>,
        record: bytes::Bytes,
        rejected: Option<&'static str>,
        confirms: u64,
    ) -> Self {
        Pending {
            msg,
            ready,
            record,
            admitted: Instant::now(),
            attempts: 0,
            strikes: 0,
            confirms_seen: confirms,
            stuck_since: None,
            last_error: None,
            rejected,
            dead_letter: None,
        }
    }

    /// Counts a failed send. It is a strike if the broker confirmed other records (`confirms`,
    /// [`Window::confirms`] now) since this one last failed or was sent: then the failure is about
    /// the record, not an outage. `now_ms` is the forwarder's monotonic time. Returns true when
    /// this is the record's first strike.
    pub(super) fn failed(&mut self, error: String, confirms: u64, now_ms: u64) -> bool {
        self.attempts += 1;
        self.last_error = Some(error.into());
        let mut first_strike = false;
        if confirms != self.confirms_seen {
            self.strikes += 1;
            if self.stuck_since.is_none() {
                self.stuck_since = Some(now_ms);
                first_strike = true;
            }
        }
        self.confirms_seen = confirms;
        first_strike
    }

    /// Whether a record that just failed has used up its budget: `forward.max_attempts` strikes,
    /// and either `forward.max_retry_age` since the first one or a full window (the record is
    /// then holding up records that could be published). `now_ms` is the forwarder's monotonic
    /// time.
    pub(super) fn exhausted(&self, cfg: &ForwardConfig, window_full: bool, now_ms: u64) -> bool {
        if self.stuck_since.is_none() {
            return false;
        }
        let age = Duration::from_millis(self.stuck_age_ms(now_ms));
        self.strikes >= cfg.max_attempts && (window_full || age >= cfg.max_retry_age)
    }

    /// Milliseconds since the first strike at monotonic time `now_ms` (0 without one).
    pub(super) fn stuck_age_ms(&self, now_ms: u64) -> u64 {
        self.stuck_since
            .map_or(0, |since| now_ms.saturating_sub(since))
    }
}
