//! Deleting and evicting fully confirmed segments: the writer's half of "Retention" in the
//! spool's module docs. Once the spool is open, only this code removes segment files, and only
//! segments every record of which the persisted confirmed position covers (invariant 3).

use std::path::{Path, PathBuf};

use super::super::fs;
use super::super::state::lock;
use super::Writer;

impl Writer {
    /// Deletes, oldest first, every segment whose retention ran out: all of its records are <=
    /// the persisted position, and it was first seen so at least `retain_confirmed` ago (with
    /// `0s`, at once). The newest segment is kept (appends continue it) unless it is fully
    /// confirmed and the quota is so tight that a maximum-size record would not fit even with
    /// every other retained segment evicted: then it goes too, with all older ones (an
    /// eviction, if their retention had not run out), and the next append starts a new segment.
    /// That is safe because the durable `confirmed` file keeps the seq high-water mark. Sealed
    /// segments still inside their retention otherwise go only by [`Self::make_room`].
    pub(super) fn delete_confirmed_segments(&mut self) {
        self.deletions_due = false;
        let persisted = self.persisted;
        let retain_ms = self.shared.cfg.retain_confirmed.as_millis() as u64;
        // Monotonic: a wall-clock step must not expire a retention window early.
        let now = self.shared.clock.mono_ms();
        // (base, path, len, records if deleted before its retention ran out)
        let victims: Vec<(u64, PathBuf, u64, Option<u64>)> = {
            let mut table = lock(&self.shared.segments);
            table.stamp_retained(persisted, now);
            // Invariant 3: `expired` only counts segments stamped fully confirmed.
            let n = table.expired(retain_ms, now);
            let mut v: Vec<_> = table
                .segs
                .iter()
                .take(n)
                .map(|s| (s.base, s.path.clone(), s.len, None))
                .collect();
            // Fully confirmed newest implies every older segment is fully confirmed too. The
            // retained ones count as free for appends already; the newest does not (see
            // `SegmentTable::stamp_retained`), so under quota pressure it goes here.
            let newest = table.segs.len().checked_sub(1);
            if newest.is_some_and(|i| table.fully_confirmed(i, persisted)) && self.quota_pressed() {
                let bases: Vec<u64> = table.segs.iter().map(|s| s.base).collect();
                for (i, s) in table.segs.iter().enumerate().skip(n) {
                    let records = match bases.get(i + 1) {
                        Some(next) => next - s.base,
                        None => s.last_seq.map_or(0, |l| l + 1 - s.base),
                    };
                    let expired = s
                        .confirmed_at_ms
                        .is_some_and(|at| now.saturating_sub(at) >= retain_ms);
                    v.push((s.base, s.path.clone(), s.len, (!expired).then_some(records)));
                }
            }
            v
        };
        if victims.is_empty() {
            return;
        }
        let mut removed = 0;
        for (base, path, len, evicted) in victims {
            if !self.remove_segment(
                base,
                &path,
                len,
                "deleting a confirmed segment failed; will retry after the next persist",
            ) {
                break;
            }
            if let Some(records) = evicted {
                self.shared.metrics.spool_evicted_segments.inc();
                self.shared.metrics.spool_evicted_records.inc_by(records);
            }
            removed += 1;
        }
        self.sync_dir_after_deleting("deleting");
        tracing::debug!(
            segments = removed,
            confirmed = persisted,
            "deleted confirmed segments"
        );
        // Deleting is what frees space: look at once rather than refuse for up to a period.
        self.resample_free_space();
    }

    /// Unlinks a fully confirmed segment and forgets it; on failure counts and logs `failed`
    /// and returns false (the caller stops: it is retried after the next persist or batch).
    fn remove_segment(&mut self, base: u64, path: &Path, len: u64, failed: &str) -> bool {
        if let Err(e) = fs::remove_file(self.shared.fs.as_ref(), path) {
            self.shared
                .metrics
                .spool_errors
                .with_label_values(&["confirm"])
                .inc();
            tracing::error!(segment = %path.display(), error = %e, "{failed}");
            return false;
        }
        self.forget_segment(base, len);
        true
    }

    /// Makes the unlinks of confirmed segments durable. A failure is counted and logged but not
    /// fatal: a lost unlink only brings back confirmed records, which recovery deletes (or
    /// eviction evicts) again.
    fn sync_dir_after_deleting(&self, what: &str) {
        if let Err(e) = self.shared.fs.sync_dir(&self.dir) {
            self.shared
                .metrics
                .spool_errors
                .with_label_values(&["confirm"])
                .inc();
            tracing::error!(error = %e, "fsync of the spool directory after {what} segments failed");
        }
    }

    /// Rule 6: before a batch is written, evicts fully confirmed segments, oldest first, while
    /// the batch (`reserved` bytes) would not fit the quota or would eat into `min_free_bytes`.
    /// Appends were admitted counting retained bytes as free, so this is what keeps the segment
    /// files within `max_bytes`. Only segments covered by the persisted position are ever
    /// candidates (invariant 3): an unconfirmed record is never evicted.
    pub(super) fn make_room(&mut self, reserved: u64) {
        let cfg = &self.shared.cfg;
        let (max_bytes, min_free) = (cfg.max_bytes, cfg.min_free_bytes);
        let mut evicted = 0u64;
        loop {
            let pressed = {
                let q = lock(&self.shared.quota);
                // The batch goes into the preallocated zeros first (or a rotation cuts them).
                let used = q.disk.saturating_sub(q.preallocated);
                let free = q.fs_free.saturating_add(q.preallocated);
                q.retained > 0
                    && (used + reserved > max_bytes
                        || (min_free > 0 && free.saturating_sub(reserved) < min_free))
            };
            if !pressed {
                break;
            }
            let victim = {
                let table = lock(&self.shared.segments);
                // Invariant 3: only a segment every record of which the persisted position covers;
                // and a sealed one, as counted in `Quota::retained`.
                match (table.segs.front(), table.segs.get(1)) {
                    (Some(s), Some(next)) if table.fully_confirmed(0, self.persisted) => {
                        Some((s.base, s.path.clone(), s.len, next.base - s.base))
                    }
                    _ => None,
                }
            };
            let Some((base, path, len, records)) = victim else {
                break;
            };
            if !self.remove_segment(base, &path, len, "evicting a retained segment failed") {
                break;
            }
            // The estimate until the resample below.
            let mut q = lock(&self.shared.quota);
            q.fs_free = q.fs_free.saturating_add(len);
            drop(q);
            self.shared.metrics.spool_evicted_segments.inc();
            self.shared.metrics.spool_evicted_records.inc_by(records);
            evicted += 1;
        }
        if evicted > 0 {
            self.sync_dir_after_deleting("evicting");
            tracing::info!(
                segments = evicted,
                "evicted retained confirmed segments to make room for new deliveries"
            );
            self.resample_free_space();
        }
    }

    /// Drops a deleted segment from the table and the quota (with the retained bytes it held).
    fn forget_segment(&mut self, base: u64, len: u64) {
        // The newest segment's file is longer than its frames by what was preallocated.
        let active = self.active.take_if(|a| a.base == base);
        let mut table = lock(&self.shared.segments);
        table.segs.retain(|s| s.base != base);
        let (_, retained) = table.stamp_retained(self.persisted, self.shared.clock.mono_ms());
        let mut quota = lock(&self.shared.quota);
        quota.freed(active.as_ref().map_or(len, |a| a.alloc));
        if active.is_some() {
            quota.preallocated = 0;
        }
        quota.retained = retained;
    }

    /// Recomputes the retained bytes (and starts the retention clock of newly fully confirmed
    /// segments) after the persisted position moved.
    pub(super) fn refresh_retained(&mut self) {
        let mut table = lock(&self.shared.segments);
        let (_, retained) = table.stamp_retained(self.persisted, self.shared.clock.mono_ms());
        lock(&self.shared.quota).retained = retained;
    }

    /// Whether a maximum-size append would be refused for quota even counting every retained
    /// (sealed, fully confirmed) segment as free: then only deleting the newest segment, if it
    /// is fully confirmed, can make room.
    fn quota_pressed(&self) -> bool {
        let q = lock(&self.shared.quota);
        let used = q.used() + q.queued;
        self.shared.cfg.max_bytes.saturating_sub(used) < self.shared.max_reservation()
    }
}
