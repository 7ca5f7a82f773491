//! HTTP: the client the tests post deliveries with, and reading the bridge's admin endpoints
//! (`/metrics`, `/readyz`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http()
}

/// Sends a request; returns status, response headers and the body parsed as JSON (Null if not JSON).
pub async fn request(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<(u16, http::HeaderMap, serde_json::Value), String> {
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(body.into())).map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Ok((status, headers, json))
}

/// POSTs a delivery body with a delivery id; returns the status.
pub async fn post(client: &HttpClient, url: &str, id: &str, body: impl Into<Bytes>) -> u16 {
    request(
        client,
        "POST",
        url,
        &[("content-type", "application/json"), ("webhook-id", id)],
        body,
    )
    .await
    .map(|(s, _, _)| s)
    .unwrap_or(0)
}

/// The admin `/metrics` text.
pub async fn metrics_text(client: &HttpClient, admin: SocketAddr) -> String {
    let req = http::Request::builder()
        .uri(format!("http://{admin}/metrics"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// Reads a counter or gauge value from the admin `/metrics` text (sum over label sets that
/// contain `label_filter`).
pub async fn metric(client: &HttpClient, admin: SocketAddr, name: &str, label_filter: &str) -> f64 {
    metrics_text(client, admin)
        .await
        .lines()
        .filter(|l| {
            (l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
                && l.contains(label_filter)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the bridge is drained: `/readyz` answers 200 (ready) with an empty backlog
/// (everything confirmed by the broker); returns that `/readyz` body, or `None` on timeout. A
/// bridge that refuses deliveries (spool full or failed) is not drained.
pub async fn wait_drained(
    client: &HttpClient,
    admin: SocketAddr,
    timeout: Duration,
) -> Option<serde_json::Value> {
    wait_backlog_empty(client, admin, timeout, true).await
}

/// Waits until `/readyz` reports an empty backlog, and answers 200 if `ready`: [`wait_drained`],
/// or with `ready` false for a bridge that is drained but refuses deliveries (a full disk).
pub async fn wait_backlog_empty(
    client: &HttpClient,
    admin: SocketAddr,
    timeout: Duration,
    ready: bool,
) -> Option<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((status, _, body)) =
            request(client, "GET", &format!("http://{admin}/readyz"), &[], "").await
        {
            if body["backlog_records"] == 0 && (status == 200 || !ready) {
                return Some(body);
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /readyz`: its status code and document (panics if the admin listener does not answer).
pub async fn readyz(client: &HttpClient, admin: SocketAddr) -> (u16, serde_json::Value) {
    let (status, _, body) = request(client, "GET", &format!("http://{admin}/readyz"), &[], "")
        .await
        .unwrap_or_else(|e| panic!("GET /readyz on {admin}: {e}"));
    (status, body)
}

/// `hookbridge_published_total` (all sinks): records the broker confirmed.
pub async fn published(client: &HttpClient, admin: SocketAddr) -> f64 {
    metric(client, admin, "hookbridge_published_total", "").await
}

/// Asserts that the broker fault took hold (item 1 of issue 29: a freeze that did nothing must
/// fail the test): since the fault began, when [`published`] was `published_before`, the bridge
/// published nothing and its backlog holds at least the `acked_since` deliveries it acknowledged
/// since. Returns the backlog.
pub async fn assert_backlog_built(
    client: &HttpClient,
    admin: SocketAddr,
    label: &str,
    published_before: f64,
    acked_since: usize,
) -> u64 {
    let (_, _, ready) = request(client, "GET", &format!("http://{admin}/readyz"), &[], "")
        .await
        .unwrap();
    let published_now = published(client, admin).await;
    let backlog = ready["backlog_records"].as_u64().unwrap_or(0);
    assert_eq!(
        published_now, published_before,
        "{label}: the bridge published while the broker was away, so the fault did not happen \
         ({published_before} published when it began, {published_now} now; backlog {backlog})"
    );
    assert!(
        backlog >= acked_since as u64,
        "{label}: backlog {backlog} < {acked_since} acknowledged since the broker went away, so \
         the fault did not happen ({ready})"
    );
    backlog
}

/// Waits until a restarted bridge published something (`hookbridge_published_total > 0`): the
/// proof that it replayed what its killed predecessor left unconfirmed.
pub async fn wait_replayed(client: &HttpClient, admin: SocketAddr, timeout: Duration) {
    let what = "the restarted bridge to publish its replay (hookbridge_published_total > 0)";
    super::wait::wait_for(timeout, what, || async {
        published(client, admin).await > 0.0
    })
    .await;
}
