//! The bridge's one clock, injectable. It answers two questions:
//!
//! - **Wall time** ([`Clock::wall_ms`]): milliseconds since the Unix epoch. Every timestamp that
//!   is stored or printed (a delivery's `received_at_ms`, a record's `appended_at_ms`, a dead
//!   letter's time, a de-duplication entry's time) comes from here. A clock set before 1970
//!   reads as 0 rather than failing: a wrong timestamp is better than a refused delivery.
//! - **Monotonic time** ([`Clock::mono_ms`]): milliseconds since an arbitrary start, for ages
//!   measured inside the process (the spool's retention clock, the forwarder's retry age), so a
//!   wall-clock step (NTP after a suspend, an operator's `date -s`) can neither expire nor extend
//!   them. Meaningless across restarts, and only ever compared with readings of the same clock.
//!
//! Production uses [`Clock::system`] (the default). Tests build a [`ManualClock`], hand its
//! [`Clock`] to the spool, the de-duplication set or the forwarder, and move time with
//! [`ManualClock::advance`] (both readings) or [`ManualClock::set_wall_ms`] (a wall-clock step)
//! instead of sleeping. A reading costs one branch over the system call it makes.
//!
//! Timers that pace real work (the spool writer's persist interval and statvfs samples, the
//! forwarder's backoff sleeps, request timeouts) stay on tokio's or std's own clocks: they
//! decide when work happens, not what a record's age is. Async tests pause those with
//! `tokio::time::pause`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall and monotonic time, from the system or from a [`ManualClock`]. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Clock(Source);

#[derive(Debug, Clone, Default)]
enum Source {
    #[default]
    System,
    Manual(Arc<ManualTimes>),
}

impl Clock {
    /// The system's clocks (`SystemTime` and `Instant`).
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// Milliseconds since the Unix epoch, now; 0 before it.
    pub fn wall_ms(&self) -> u64 {
        match &self.0 {
            Source::System => to_ms(SystemTime::now()),
            Source::Manual(t) => t.wall_ms.load(Ordering::Acquire),
        }
    }

    /// Milliseconds on a monotonic clock, now: only differences between two readings mean
    /// anything.
    pub fn mono_ms(&self) -> u64 {
        match &self.0 {
            Source::System => {
                static START: OnceLock<Instant> = OnceLock::new();
                START.get_or_init(Instant::now).elapsed().as_millis() as u64
            }
            Source::Manual(t) => t.mono_ms.load(Ordering::Acquire),
        }
    }
}

/// A clock that moves only when told to, for tests. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<ManualTimes>);

#[derive(Debug)]
struct ManualTimes {
    wall_ms: AtomicU64,
    mono_ms: AtomicU64,
}

impl ManualClock {
    /// A clock whose wall time is `wall_ms` and whose monotonic time is 0.
    pub fn new(wall_ms: u64) -> ManualClock {
        ManualClock(Arc::new(ManualTimes {
            wall_ms: AtomicU64::new(wall_ms),
            mono_ms: AtomicU64::new(0),
        }))
    }

    /// A manual clock starting at the system's wall time now.
    pub fn starting_now() -> ManualClock {
        ManualClock::new(Clock::system().wall_ms())
    }

    /// The [`Clock`] to hand to what is under test; it reads this manual clock.
    pub fn clock(&self) -> Clock {
        Clock(Source::Manual(self.0.clone()))
    }

    /// Time passes: both readings move forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = by.as_millis() as u64;
        self.0.wall_ms.fetch_add(ms, Ordering::AcqRel);
        self.0.mono_ms.fetch_add(ms, Ordering::AcqRel);
    }

    /// The wall clock is set (stepped, either way); monotonic time does not move.
    pub fn set_wall_ms(&self, wall_ms: u64) {
        self.0.wall_ms.store(wall_ms, Ordering::Release);
    }
}

/// Milliseconds since the Unix epoch on the system clock, now: for commands that run once and
/// for tests. Long-running parts of the bridge read the [`Clock`] they were given.
pub fn now_ms() -> u64 {
    Clock::system().wall_ms()
}

/// Milliseconds since the Unix epoch of `t`; 0 before it.
pub fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `ms` since the epoch as RFC 3339 UTC with milliseconds (`2025-01-31T12:00:00.000Z`).
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_and_before() {
        assert_eq!(to_ms(UNIX_EPOCH + Duration::from_millis(1500)), 1500);
        assert_eq!(to_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(rfc3339(1500), "1970-01-01T00:00:01.500Z");
        assert!(now_ms() > 1_600_000_000_000);
        let system = Clock::system();
        let before = system.mono_ms();
        assert!(system.mono_ms() >= before);
    }

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let manual = ManualClock::new(5_000);
        let clock = manual.clock();
        assert_eq!((clock.wall_ms(), clock.mono_ms()), (5_000, 0));
        manual.advance(Duration::from_millis(1500));
        assert_eq!((clock.wall_ms(), clock.mono_ms()), (6_500, 1_500));
        manual.set_wall_ms(1_000);
        assert_eq!(
            (clock.wall_ms(), clock.mono_ms()),
            (1_000, 1_500),
            "a wall-clock step leaves monotonic time alone"
        );
        assert_eq!(manual.clone().clock().wall_ms(), 1_000, "clones share");
    }
}
