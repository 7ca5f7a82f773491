//! The ingress memory budget against the real binary (issue 23, item 2): unauthenticated
//! clients trickling bodies they never finish cannot raise the bridge's memory beyond
//! `http.max_buffered_bytes` plus a stated margin, a signed delivery sent meanwhile gets 200 or
//! 503 with `Retry-After`, and `http.max_bodies_per_client` answers 429.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hookbridge::ingress::signature::sign_v1;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const MIB: u64 = 1 << 20;
/// The budget under test: small, so that what it bounds stands out against the process' size.
const BUDGET: u64 = MIB;
/// What the bridge may grow by beyond the budget while 64 connections are open and refused:
/// their connection state (hyper's read buffer up to `http.max_header_bytes`, about 64 KiB each
/// in the memory estimate: 4 MiB), the 503 answers and the allocator's own slack. Without the
/// budget the same flood raised a debug build's peak RSS by 1.1 GiB
/// (`benches/ingress_flood.py`).
const MARGIN: u64 = 16 * MIB;

fn kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
        * 1024
}

fn env(spool: &std::path::Path, tag: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = bridge_env(spool, tag, &tag.to_uppercase());
    env.push(("HOOKBRIDGE_AUTH__SECRETS".into(), format!("[\"{SECRET}\"]")));
    for (k, v) in extra {
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// Opens a chunked POST and sends 1-byte chunks, 1024 per write, until `bytes` are sent or the
/// bridge answers; then keeps the connection open, unfinished, until `stop`. Returns the status
/// the bridge answered with, if it did.
async fn trickle(addr: std::net::SocketAddr, bytes: usize, stop: Arc<AtomicBool>) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(
        b"POST /webhooks/sessionboard HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          transfer-encoding: chunked\r\nwebhook-id: msg_flood\r\nwebhook-timestamp: 1\r\n\
          webhook-signature: v1,AAAA\r\n\r\n",
    )
    .await
    .ok()?;
    let burst = b"1\r\nx\r\n".repeat(1024);
    let mut sent = 0;
    let mut answer = [0u8; 64];
    let status = |buf: &[u8]| {
        std::str::from_utf8(buf)
            .ok()?
            .split(' ')
            .nth(1)?
            .parse::<u16>()
            .ok()
    };
    while sent < bytes && !stop.load(Ordering::Relaxed) {
        match s.try_read(&mut answer) {
            Ok(0) => return None,
            Ok(n) => return status(&answer[..n]),
            Err(_) => {}
        }
        let n = 1024.min(bytes - sent);
        if s.write_all(&burst[..6 * n]).await.is_err() {
            return None;
        }
        sent += n;
    }
    while !stop.load(Ordering::Relaxed) {
        match s.try_read(&mut answer) {
            Ok(0) => return None,
            Ok(n) => return status(&answer[..n]),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    None
}

async fn signed_post(
    client: &HttpClient,
    url: &str,
    id: &str,
) -> (u16, http::HeaderMap, serde_json::Value) {
    let body = common::body("session.updated", "r-1", 1);
    let ts = hookbridge::ingress::auth::system_clock().to_string();
    let sig = sign_v1(SECRET, id, &ts, body.as_bytes());
    request(
        client,
        "POST",
        url,
        &[
            ("content-type", "application/json"),
            ("webhook-id", id),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &sig),
        ],
        body,
    )
    .await
    .expect("the bridge answers")
}

/// Posts a signed delivery until it is stored (200), for at most 10 s.
async fn stored_soon(client: &HttpClient, url: &str, id: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = signed_post(client, url, id).await;
        if status == 200 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{id}: still {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_unauthenticated_bodies_cannot_exceed_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let tag = unique("budget");
    let bridge = BridgeProcess::spawn(&env(
        dir.path(),
        &tag,
        &[
            ("HOOKBRIDGE_HTTP__MAX_BUFFERED_BYTES", &BUDGET.to_string()),
            ("HOOKBRIDGE_HTTP__MAX_BODY_BYTES", &MIB.to_string()),
            // The flood must not end by the request timeout before it has filled the budget
            // (a debug build under a loaded machine decodes 1-byte chunks slowly).
            ("HOOKBRIDGE_HTTP__REQUEST_TIMEOUT", "300s"),
        ],
    ))
    .await;
    let client = http_client();
    let pid = bridge.child.id();
    // A first signed delivery, so that the sink connection and the spool's first segment are
    // part of the baseline rather than of the rise.
    let (status, _, _) =
        signed_post(&client, &bridge.url("/webhooks/sessionboard"), "msg_warm").await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = kib(pid, "VmRSS");

    let stop = Arc::new(AtomicBool::new(false));
    let flood: Vec<_> = (0..64)
        .map(|_| tokio::spawn(trickle(bridge.http, MIB as usize - 1, stop.clone())))
        .collect();
    // The flood fills the budget: at least one of its bodies has been refused for it.
    let buffer_full = || {
        metric(
            &client,
            bridge.admin,
            "hookbridge_http_rejected_bodies_total",
            "reason=\"buffer_full\"",
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let mut buffered_max = 0.0f64;
    while buffer_full().await == 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the flood never filled the budget"
        );
        buffered_max = buffered_max
            .max(metric(&client, bridge.admin, "hookbridge_http_buffered_bytes", "").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // While the flood is on: the budget is never exceeded, and a signed delivery is either
    // stored or refused with Retry-After.
    let mut answers = Vec::new();
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        buffered_max = buffered_max
            .max(metric(&client, bridge.admin, "hookbridge_http_buffered_bytes", "").await);
        let (status, headers, _) = signed_post(
            &client,
            &bridge.url("/webhooks/sessionboard"),
            &format!("msg_during_{i}"),
        )
        .await;
        assert!(
            status == 200 || (status == 503 && headers.contains_key("retry-after")),
            "a signed delivery during the flood got {status} {headers:?}"
        );
        answers.push(status);
    }
    let peak_rss = kib(pid, "VmHWM");
    stop.store(true, Ordering::Relaxed);
    let mut statuses = Vec::new();
    for t in flood {
        statuses.push(t.await.unwrap());
    }
    let rise = peak_rss.saturating_sub(before);
    eprintln!(
        "RSS before {:.1} MiB, peak {:.1} MiB (rise {:.1} MiB, budget {:.1} + margin {:.1}); flood answers {statuses:?}; signed deliveries {answers:?}",
        before as f64 / MIB as f64,
        peak_rss as f64 / MIB as f64,
        rise as f64 / MIB as f64,
        BUDGET as f64 / MIB as f64,
        MARGIN as f64 / MIB as f64,
    );
    assert!(
        buffered_max <= BUDGET as f64,
        "hookbridge_http_buffered_bytes reached {buffered_max}"
    );
    assert!(
        rise <= BUDGET + MARGIN,
        "RSS rose by {rise} bytes, more than the budget {BUDGET} + margin {MARGIN}"
    );
    assert!(
        statuses.iter().flatten().all(|s| *s == 503),
        "flood bodies are only ever refused with 503: {statuses:?}"
    );
    // Once the flood is gone, its reservations are given back and deliveries are stored.
    stored_soon(&client, &bridge.url("/webhooks/sessionboard"), "msg_after").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metric(&client, bridge.admin, "hookbridge_http_buffered_bytes", "").await != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "reservations still held 30 s after the flood closed its connections"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metric(
            &client,
            bridge.admin,
            "hookbridge_http_max_buffered_bytes",
            ""
        )
        .await,
        BUDGET as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_unfinished_bodies_from_one_address_get_429() {
    let dir = tempfile::tempdir().unwrap();
    let tag = unique("perclient");
    let bridge = BridgeProcess::spawn(&env(
        dir.path(),
        &tag,
        &[("HOOKBRIDGE_HTTP__MAX_BODIES_PER_CLIENT", "2")],
    ))
    .await;
    let client = http_client();
    let stop = Arc::new(AtomicBool::new(false));
    // Two slow bodies take the address' share…
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(trickle(bridge.http, 10, stop.clone())))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&client, bridge.admin, "hookbridge_http_buffered_bytes", "").await
        < 2.0 * hookbridge::ingress::budget::FIRST_STEP as f64
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow bodies never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // …so a third body from 127.0.0.1, even a signed one, is refused before it is read.
    let (status, headers, json) = request(
        &client,
        "POST",
        &bridge.url("/webhooks/sessionboard"),
        &[
            ("content-type", "application/json"),
            ("webhook-id", "msg_3"),
        ],
        common::body("session.updated", "r-1", 1),
    )
    .await
    .unwrap();
    assert_eq!(status, 429, "{json}");
    assert_eq!(json["error"], "too_many_bodies");
    assert_eq!(headers["connection"], "close");
    assert_eq!(
        metric(
            &client,
            bridge.admin,
            "hookbridge_http_rejected_bodies_total",
            "reason=\"too_many_bodies\""
        )
        .await,
        1.0
    );
    // Once they end, the address may send again.
    stop.store(true, Ordering::Relaxed);
    for t in slow {
        t.await.unwrap();
    }
    stored_soon(&client, &bridge.url("/webhooks/sessionboard"), "msg_4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_is_reserved_whole_before_the_body_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let tag = unique("declared");
    let bridge = BridgeProcess::spawn(&env(
        dir.path(),
        &tag,
        &[
            ("HOOKBRIDGE_HTTP__MAX_BODY_BYTES", "65536"),
            ("HOOKBRIDGE_HTTP__MAX_BUFFERED_BYTES", "65536"),
        ],
    ))
    .await;
    let client = http_client();
    // One request declares the largest body and sends 10 bytes of it: it holds the whole budget.
    let mut holder = TcpStream::connect(bridge.http).await.unwrap();
    holder
        .write_all(
            b"POST /webhooks/sessionboard HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 65536\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&client, bridge.admin, "hookbridge_http_buffered_bytes", "").await < 65536.0 {
        assert!(std::time::Instant::now() < deadline, "never reserved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A signed delivery of a few hundred bytes does not fit: 503 buffer_full, Retry-After.
    let (status, headers, json) =
        signed_post(&client, &bridge.url("/webhooks/sessionboard"), "msg_1").await;
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["error"], "buffer_full");
    assert_eq!(headers["retry-after"], "5");
    // The holder goes away: its reservation is given back and the delivery is stored.
    drop(holder);
    stored_soon(&client, &bridge.url("/webhooks/sessionboard"), "msg_1").await;
}
