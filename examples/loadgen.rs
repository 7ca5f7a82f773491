//! Load generator: posts Sessionboard-shaped deliveries to a running bridge with N concurrent
//! clients and prints the acknowledgement throughput and latency percentiles.
//!
//! ```text
//! cargo run --release --example loadgen -- http://127.0.0.1:8080/webhooks/sessionboard 20000 64
//! ```
//! Arguments: URL, number of requests (default 10000), concurrency (default 32), body size in
//! bytes (default: about 1 KiB, like a real session.updated), and an optional token header
//! `name=value`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args
        .first()
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:8080/webhooks/sessionboard".into());
    let total: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let concurrency: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let size: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let token = args
        .get(4)
        .and_then(|s| s.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()));

    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency as usize)
        .build_http::<Full<Bytes>>();
    let next = Arc::new(AtomicU64::new(0));
    let run = format!("{}", std::process::id());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, url, run, token) = (
            client.clone(),
            next.clone(),
            url.clone(),
            run.clone(),
            token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let pad = "x".repeat(size.saturating_sub(300));
                let body = format!(
                    r#"{{"data":{{"id":"res-{}","n":{n},"pad":"{pad}"}},"metadata":{{"action":"session.updated","actor_id":7,"event_id":4001,"org_id":"org-1","version":1,"datetime":"2026-04-28T16:00:00Z"}}}}"#,
                    n % 1000
                );
                let mut req = http::Request::post(&url)
                    .header("content-type", "application/json")
                    .header("webhook-id", format!("load-{run}-{n}"));
                if let Some((k, v)) = &token {
                    req = req.header(k.as_str(), v.as_str());
                }
                let req = req.body(Full::new(Bytes::from(body))).unwrap();
                let t = Instant::now();
                match client.request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        let _ = resp.into_body().collect().await;
                        if ok {
                            lat.push(t.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        lat.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!("requests:     {total} ({errors} not 2xx)");
    println!("concurrency:  {concurrency}, body ~{size} B");
    println!("elapsed:      {:.2} s", elapsed.as_secs_f64());
    println!(
        "throughput:   {:.0} acknowledged deliveries/s",
        lat.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "ack latency:  p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.90).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}
