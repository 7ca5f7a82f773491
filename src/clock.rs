//! Wall-clock time as the bridge records it: milliseconds since the Unix epoch. Every timestamp
//! that is stored or printed (a delivery's `received_at_ms`, a dead letter's time, the
//! de-duplication window's start) comes from here, so there is one answer to "what is now".
//!
//! A clock set before 1970 reads as 0 rather than failing: a wrong timestamp is better than a
//! refused delivery. Ages inside the process are measured on a monotonic clock instead (see
//! `spool::state`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    to_ms(SystemTime::now())
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
    }
}
