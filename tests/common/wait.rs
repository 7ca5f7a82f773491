//! Waiting on a condition with a deadline, instead of sleeping and hoping it happened.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(20);

/// Waits until `cond()` holds; panics after `timeout` with "timed out after … waiting for `what`".
pub async fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(timeout, what, || std::future::ready(cond())).await
}

/// [`wait_until`] with a condition that has to await (a metric, a request).
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}
