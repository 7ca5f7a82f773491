//! The dead-letter path: a record the broker refused permanently, that exhausted its retries, that
//! the ingress kept as unusable, or that does not decode goes to the local dead-letter store. From
//! then on it is only ever written there: a failed write is retried as a write, with backoff,
//! never sent to the broker again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::FutureExt;

use super::window::{Pending, Window};
use super::{backoff, Attempt, Forwarder, Outcome};
use crate::deadletter;
use crate::delivery::Delivery;
use crate::sink::SendError;

/// A record being moved to the dead-letter store.
pub(super) struct DeadLetterJob {
    /// Written again unchanged by every retry.
    meta: Arc<deadletter::Meta>,
    /// The metric label (`meta.reason`, from the fixed set of `SendError` kinds).
    reason: &'static str,
    /// Failed writes so far.
    failures: u32,
}

impl Forwarder {
    /// Starts moving a record the broker refused permanently (or the ingress kept as unusable,
    /// or that exhausted its retries) to the dead-letter store. From here on the record is only
    /// ever written there.
    pub(super) fn dead_letter(&self, rec: &mut Pending, e: &SendError) -> Attempt {
        let action = Delivery::decode(rec.record.clone())
            .map(|d| d.action)
            .unwrap_or_default();
        let meta = Arc::new(deadletter::Meta {
            seq: rec.msg.seq,
            id: rec.msg.id.to_string(),
            action,
            destination: rec.msg.destination.to_string(),
            reason: e.kind().to_owned(),
            error: e.to_string(),
            dead_lettered_at_ms: self.clock.wall_ms(),
        });
        rec.dead_letter = Some(DeadLetterJob {
            meta: meta.clone(),
            reason: e.kind(),
            failures: 0,
        });
        self.write_dead_letter(meta, rec.record.clone(), Duration::ZERO)
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

    /// The record is durably in the dead-letter store: it is settled.
    pub(super) fn on_dead_lettered(
        &self,
        seq: u64,
        w: &mut Window,
        attempts: &mut FuturesUnordered<Attempt>,
    ) {
        let rec = &w.pending[&seq];
        let job = rec
            .dead_letter
            .as_ref()
            .expect("a dead-letter write has its job");
        // Invariant 8: counted when the record is durably in the store, once.
        self.metrics
            .dead_lettered
            .with_label_values(&[rec.msg.endpoint, job.reason])
            .inc();
        self.metrics
            .dead_letter_records
            .set(self.dead_letters.len() as i64);
        if job.failures > 0 {
            tracing::info!(seq, delivery_id = %rec.msg.id, failed_writes = job.failures,
                "dead letter written after failed attempts");
        }
        self.finish(seq, w, attempts);
    }

    /// Writing the dead letter failed: retry the write, never the broker. The broker refused
    /// this record for good, or it is an unusable body that must not be published at all. The
    /// record stays in the spool (unconfirmed) until the write succeeds, and its key waits
    /// behind it.
    pub(super) fn on_dead_letter_failed(
        &self,
        seq: u64,
        e: deadletter::Error,
        w: &mut Window,
        attempts: &mut FuturesUnordered<Attempt>,
    ) {
        let rec = w
            .pending
            .get_mut(&seq)
            .expect("settled record is in the window");
        let job = rec
            .dead_letter
            .as_mut()
            .expect("a dead-letter write has its job");
        job.failures += 1;
        let delay = backoff(&self.cfg, job.failures);
        // Once per record at error level; a failing store would otherwise log every
        // retry of every record waiting on it.
        if job.failures == 1 {
            tracing::error!(seq, delivery_id = %rec.msg.id, reason = job.reason, error = %e,
                "writing the dead letter failed; retrying the write with backoff");
        } else {
            tracing::debug!(seq, delivery_id = %rec.msg.id, failed_writes = job.failures,
                retry_in = ?delay, error = %e, "writing the dead letter failed again");
        }
        attempts.push(self.write_dead_letter(job.meta.clone(), rec.record.clone(), delay));
    }
}
