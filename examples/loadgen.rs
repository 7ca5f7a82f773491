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

/// What to send, from the command line.
#[derive(Clone)]
struct Args {
    url: String,
    total: u64,
    concurrency: u64,
    size: usize,
    token: Option<(String, String)>,
}

fn parse_args() -> Args {
    let args: Vec<String> = std::env::args().skip(1).collect();
    Args {
        url: args
            .first()
            .cloned()
            .unwrap_or_else(|| "http://127.0.0.1:8080/webhooks/sessionboard".into()),
        total: args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000),
        concurrency: args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32),
        size: args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1024),
        token: args
            .get(4)
            .and_then(|s| s.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.concurrency as usize)
        .build_http::<Full<Bytes>>();
    let next = Arc::new(AtomicU64::new(0));
    let run = format!("{}", std::process::id());
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let worker = Worker {
                client: client.clone(),
                next: next.clone(),
                run: run.clone(),
                args: args.clone(),
            };
            tokio::spawn(worker.run())
        })
        .collect();
    let mut lat: Vec<Duration> = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        lat.extend(l);
        errors += e;
    }
    print_summary(&args, started.elapsed(), lat, errors);
}

/// One of the concurrent clients: takes the next request number until all are sent.
struct Worker {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    next: Arc<AtomicU64>,
    run: String,
    args: Args,
}

impl Worker {
    /// The latencies of its acknowledged requests and how many were not.
    async fn run(self) -> (Vec<Duration>, u64) {
        let Args {
            url,
            total,
            size,
            token,
            ..
        } = &self.args;
        let mut lat = Vec::new();
        let mut errors = 0u64;
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            if n >= *total {
                break;
            }
            let pad = "x".repeat(size.saturating_sub(300));
            let body = format!(
                r#"{{"data":{{"id":"res-{}","n":{n},"pad":"{pad}"}},"metadata":{{"action":"session.updated","actor_id":7,"event_id":4001,"org_id":"org-1","version":1,"datetime":"2026-04-28T16:00:00Z"}}}}"#,
                n % 1000
            );
            let mut req = http::Request::post(url)
                .header("content-type", "application/json")
                .header("webhook-id", format!("load-{}-{n}", self.run));
            if let Some((k, v)) = token {
                req = req.header(k.as_str(), v.as_str());
            }
            let req = req.body(Full::new(Bytes::from(body))).unwrap();
            let t = Instant::now();
            match self.client.request(req).await {
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
    }
}

fn print_summary(args: &Args, elapsed: Duration, mut lat: Vec<Duration>, errors: u64) {
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!("requests:     {} ({errors} not 2xx)", args.total);
    println!("concurrency:  {}, body ~{} B", args.concurrency, args.size);
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
