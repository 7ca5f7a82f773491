//! What the forwarder shows of its window to the admin listener: the oldest unsettled record and
//! how many records are stuck.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::window::Window;
use super::Forwarder;

/// The forwarder's oldest unsettled record and how many records are stuck, for `/readyz`,
/// `hookbridge status` and the gauges (the admin listener reads it at each scrape, so an age
/// keeps growing while the forwarder itself has nothing to do).
#[derive(Default)]
pub struct Progress {
    oldest: Mutex<Option<Oldest>>,
    stuck: AtomicUsize,
}

/// The oldest record the forwarder has read and not settled.
#[derive(Debug, Clone)]
pub struct Oldest {
    pub seq: u64,
    pub delivery_id: Arc<str>,
    pub destination: Arc<str>,
    /// Failed publish attempts so far.
    pub attempts: u32,
    /// The last failure, if any.
    pub last_error: Option<Arc<str>>,
    /// When the forwarder read it.
    pub since: Instant,
}

impl Progress {
    /// The oldest unsettled record, if any, and the number of stuck records.
    pub fn snapshot(&self) -> (Option<Oldest>, usize) {
        let oldest = self
            .oldest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (oldest, self.stuck.load(Ordering::Relaxed))
    }
}

impl Forwarder {
    /// Updates the gauges and [`Progress`]: the stuck count every time, the oldest record when it
    /// or its attempts changed (its strings are shared with the window, so that is a lock and
    /// a few reference counts per settled record).
    pub(super) fn show(&self, w: &mut Window) {
        self.metrics.forward_in_flight.set(w.pending.len() as i64);
        self.metrics.forward_in_flight_bytes.set(w.bytes as i64);
        self.metrics.forward_stuck_records.set(w.stuck as i64);
        self.progress.stuck.store(w.stuck, Ordering::Relaxed);
        let oldest = w.pending.first_key_value();
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
        *self
            .progress
            .oldest
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = oldest;
    }
}
