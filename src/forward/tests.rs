//! The forwarder's unit tests; `model` runs the real forwarder against a scripted sink.

mod model;

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
