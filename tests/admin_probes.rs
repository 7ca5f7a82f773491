//! The admin listener against hostile or broken clients (issue 23, item 3), on the real binary:
//! `/livez` and `/readyz` answer while stalled scrapers hold every other slot, and idle, slow and
//! non-reading connections are closed.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const PIPELINED_METRICS: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";

async fn bridge(tag: &str, extra: &[(&str, &str)]) -> (tempfile::TempDir, BridgeProcess) {
    let dir = tempfile::tempdir().unwrap();
    let id = unique(tag);
    let mut env = bridge_env(dir.path(), &id, &id.to_uppercase());
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let bridge = BridgeProcess::spawn(&env).await;
    (dir, bridge)
}

/// A connection with a small receive buffer, so the bridge's answers fill it quickly.
async fn connect_small(admin: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    socket.connect(admin).await
}

/// Pipelines `GET /metrics` and never reads; reconnects whenever the bridge closes it.
fn stalled_client(admin: SocketAddr) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let burst = PIPELINED_METRICS.repeat(64);
        loop {
            let Ok(mut s) = connect_small(admin).await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            while s.write_all(&burst).await.is_ok() {}
        }
    })
}

/// One probe as a kubelet sends it: a new connection, one request. Returns the status code and
/// how long the answer took.
async fn probe(admin: SocketAddr, path: &str) -> (Option<u16>, Duration) {
    let started = Instant::now();
    let answer = async {
        let mut s = TcpStream::connect(admin).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(2).any(|w| w == b"\r\n") {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
        }
        std::str::from_utf8(&head)
            .ok()?
            .split(' ')
            .nth(1)?
            .parse()
            .ok()
    };
    let status = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .ok()
        .flatten();
    (status, started.elapsed())
}

/// The sum of `name`'s samples whose labels contain `filter`, from a `/metrics` scrape on a new
/// connection; `None` when the scrape fails (slots still taken).
async fn try_metric(admin: SocketAddr, name: &str, filter: &str) -> Option<f64> {
    let scrape = async {
        let mut s = TcpStream::connect(admin).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).await.ok()?;
        text.starts_with("HTTP/1.1 200").then_some(text)
    };
    let text = tokio::time::timeout(Duration::from_secs(5), scrape)
        .await
        .ok()??;
    Some(
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// Waits until `f` is true (or fails after `within`).
async fn eventually<F: std::future::Future<Output = bool>>(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_while_stalled_clients_hold_every_admin_slot() {
    let (_dir, bridge) = bridge("stall", &[("HOOKBRIDGE_ADMIN__WRITE_TIMEOUT", "2s")]).await;
    let admin = bridge.admin;
    // More stalled clients than admin.max_connections (64).
    let stalled: Vec<_> = (0..70).map(|_| stalled_client(admin)).collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut worst = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(6);
    let mut probes = 0;
    while Instant::now() < until {
        for path in ["/livez", "/readyz"] {
            let (status, took) = probe(admin, path).await;
            assert_eq!(status, Some(200), "{path} after {took:?} (probe {probes})");
            assert!(took < Duration::from_secs(1), "{path} took {took:?}");
            worst = worst.max(took);
            probes += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{probes} probes during the stall, worst {worst:?}");
    for s in &stalled {
        s.abort();
    }

    // The stall really took every ordinary slot (the reserve turned away stalled clients that
    // asked for /metrics there), and admin.write_timeout closed stalled clients.
    for (name, filter) in [
        ("hookbridge_admin_rejected_connections_total", "not_probe"),
        ("hookbridge_admin_connection_errors_total", "write_timeout"),
    ] {
        eventually(
            Duration::from_secs(15),
            &format!("{name}{{{filter}}} > 0"),
            || async {
                try_metric(admin, name, filter)
                    .await
                    .is_some_and(|v| v > 0.0)
            },
        )
        .await;
    }
}

#[tokio::test]
async fn idle_slow_and_non_reading_admin_connections_are_closed() {
    let (_dir, bridge) = bridge(
        "idle",
        &[
            ("HOOKBRIDGE_ADMIN__IDLE_TIMEOUT", "1s"),
            ("HOOKBRIDGE_ADMIN__WRITE_TIMEOUT", "1s"),
        ],
    )
    .await;
    let admin = bridge.admin;
    let closed_within = |mut s: TcpStream, within: Duration| async move {
        let started = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout(within, s.read(&mut buf)).await {
                Err(_) => panic!("still open after {within:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                Ok(Ok(_)) => {}
            }
        }
    };

    // Idle from the start: nothing sent.
    let s = TcpStream::connect(admin).await.unwrap();
    closed_within(s, Duration::from_secs(5)).await;

    // Idle after an answer (keep-alive).
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    closed_within(s, Duration::from_secs(5)).await;

    // A request head trickled too slowly.
    let mut s = TcpStream::connect(admin).await.unwrap();
    let trickle = tokio::spawn(async move {
        for b in b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n" {
            if s.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(10), trickle)
            .await
            .unwrap()
            .unwrap(),
        "a head trickled over 6 s was still accepted"
    );

    // A client that pipelines and stops reading: closed once its answer makes no progress for
    // admin.write_timeout, long before it read all the answers it asked for.
    let mut s = connect_small(admin).await.unwrap();
    let asked = 2000;
    s.write_all(&PIPELINED_METRICS.repeat(asked)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = Vec::new();
    let read_all = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    assert!(read_all.is_ok(), "connection still open after 13 s");
    let answers = got.windows(12).filter(|w| w == b"HTTP/1.1 200").count();
    assert!(answers < asked, "all {asked} answers arrived");
    // Counted once the connection is gone (after its lingering close).
    drop(s);
    for kind in ["write_timeout", "header_timeout"] {
        eventually(Duration::from_secs(10), kind, || async {
            try_metric(admin, "hookbridge_admin_connection_errors_total", kind)
                .await
                .is_some_and(|v| v > 0.0)
        })
        .await;
    }
}

/// The ingress shares the write deadline: a client that pipelines requests and never reads its
/// answers is closed after `http.write_timeout`, instead of holding its slot and its answers.
#[tokio::test]
async fn ingress_closes_a_client_that_stops_reading() {
    let (_dir, bridge) = bridge("ingress", &[("HOOKBRIDGE_HTTP__WRITE_TIMEOUT", "1s")]).await;
    let s = connect_small(bridge.http).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    // The same delivery again and again: after the first, each is a cheap "duplicate" 200 on a
    // keep-alive connection; as many as it takes to fill the socket buffers.
    let body = body("session.updated", "r-1", 1);
    let one = format!(
        "POST /webhooks/sessionboard HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n\
         webhook-id: msg_stall\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let writer = tokio::spawn(async move {
        let burst = one.repeat(1000).into_bytes();
        for _ in 0..200 {
            if wr.write_all(&burst).await.is_err() {
                return;
            }
        }
    });
    eventually(
        Duration::from_secs(30),
        "write_timeout on the ingress",
        || async {
            try_metric(
                bridge.admin,
                "hookbridge_http_connection_errors_total",
                "write_timeout",
            )
            .await
            .is_some_and(|v| v > 0.0)
        },
    )
    .await;
    // The connection is really gone: reading drains what was sent before, then ends.
    let mut sink = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut sink)).await;
    assert!(ended.is_ok(), "ingress connection still open");
    writer.abort();
}
