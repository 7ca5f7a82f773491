//! The whole bridge (in process) on a spool whose fsync the test holds and then lets succeed or
//! fail: retries of a delivery whose first attempt is still being stored, and requests dropped
//! mid-append, must never be answered 2xx before the first copy is on disk.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hookbridge::app::{App, Settings};
use hookbridge::config::Config;
use hookbridge::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::faulty::{FaultFs, Op, EIO};

const PATH: &str = "/webhooks/sessionboard";

struct Bridge {
    http: SocketAddr,
    metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<Result<(), hookbridge::app::Error>>,
}

impl Bridge {
    /// Starts the bridge with its spool on `fs`; the broker is unreachable (nothing here needs
    /// one: the ingress never talks to it).
    async fn start(spool_dir: &Path, fs: &FaultFs, dedup_wait: Duration) -> Bridge {
        let mut c = Config::default();
        c.http.listen = "127.0.0.1:0".parse().unwrap();
        c.admin.listen = "127.0.0.1:0".parse().unwrap();
        c.spool.dir = spool_dir.to_owned();
        c.sink.nats.url = "nats://127.0.0.1:1".into();
        c.auth.dedup_wait = dedup_wait;
        c.shutdown.grace = Duration::from_secs(2);
        let app = App::bind_with_fs(Settings::new(c).unwrap(), Arc::new(fs.clone()))
            .await
            .expect("app binds");
        let http = app.http_addr();
        let metrics = app.metrics();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(app.run(async {
            let _ = rx.await;
        }));
        Bridge {
            http,
            metrics,
            stop: Some(tx),
            task,
        }
    }

    /// Sum of a counter's series whose labels contain `label` (e.g. `outcome="timeout"`).
    fn count(&self, name: &str, label: &str) -> u64 {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&self.metrics.registry.gather())
            .unwrap();
        text.lines()
            .filter(|l| {
                (l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
                    && l.contains(label)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// The delivery ids the spool in `dir` holds, in order (the bridge must be stopped).
async fn stored_ids(dir: &Path) -> Vec<String> {
    let (spool, _) = hookbridge::spool::Spool::open(
        crate::config(dir),
        Arc::new(hookbridge::metrics::Metrics::new()),
    )
    .expect("reopen the spool");
    let reader = spool.reader();
    crate::close_and_drain(&spool, reader)
        .await
        .into_iter()
        .map(|r| {
            hookbridge::delivery::Delivery::decode(r.payload)
                .unwrap()
                .id
        })
        .collect()
}

/// Writes one delivery request with `webhook-id: id`; the response is read by [`answer`].
async fn send(addr: SocketAddr, id: &str) -> TcpStream {
    let body = r#"{"data":{"id":"r-1"},"metadata":{"action":"session.updated"}}"#;
    let req = format!(
        "POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nwebhook-id: {id}\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// Status code and body of the response on `s`.
async fn answer(mut s: TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn spawn_answer(s: TcpStream) -> JoinHandle<(u16, String)> {
    tokio::spawn(answer(s))
}

/// Waits until the spool writer is blocked in the held fsync.
async fn until_held(fs: &FaultFs) {
    for _ in 0..500 {
        if fs.is_holding() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the spool never reached the held fsync");
}

/// Asserts the request has no answer yet (it must be waiting for the first attempt).
async fn still_waiting(req: &JoinHandle<(u16, String)>, what: &str) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !req.is_finished(),
        "{what} was answered while the first attempt was not yet on disk"
    );
}

/// Sends `id` while the spool's fsync is held, then a retry of it, and checks the retry waits.
/// With `drop_first` the first request's connection is closed mid-append (the sender gave up).
/// Returns the first request (unless dropped) and the retry; the caller releases the fsync.
async fn first_attempt_held_then_retried(
    bridge: &Bridge,
    fs: &FaultFs,
    id: &str,
    drop_first: bool,
) -> (Option<JoinHandle<(u16, String)>>, JoinHandle<(u16, String)>) {
    fs.hold(Op::SyncData, "seg");
    let first = send(bridge.http, id).await;
    until_held(fs).await;
    let first = if drop_first {
        drop(first);
        tokio::time::sleep(Duration::from_millis(100)).await;
        None
    } else {
        Some(spawn_answer(first))
    };
    let retry = spawn_answer(send(bridge.http, id).await);
    still_waiting(&retry, "the retry").await;
    (first, retry)
}

#[tokio::test]
async fn a_retry_during_a_slow_first_attempt_is_acknowledged_only_once_it_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new(Arc::new(hookbridge::spool::RealFs));
    let bridge = Bridge::start(dir.path(), &fs, Duration::from_secs(10)).await;

    let (first, retry) = first_attempt_held_then_retried(&bridge, &fs, "msg_slow", false).await;
    let first = first.unwrap();
    fs.release(None);

    let (status, text) = first.await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""status":"accepted""#), "{text}");
    let (status, text) = retry.await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""status":"duplicate""#), "{text}");
    assert_eq!(bridge.count("hookbridge_deliveries_accepted_total", ""), 1);
    assert_eq!(
        bridge.count("hookbridge_dedup_waits_total", r#"outcome="duplicate""#),
        1
    );
    bridge.stop().await;
    assert_eq!(stored_ids(dir.path()).await, vec!["msg_slow".to_owned()]);
}

#[tokio::test]
async fn a_retry_is_never_acknowledged_for_a_first_attempt_that_fails() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new(Arc::new(hookbridge::spool::RealFs));
    let bridge = Bridge::start(dir.path(), &fs, Duration::from_secs(10)).await;

    let (first, retry) = first_attempt_held_then_retried(&bridge, &fs, "msg_doomed", false).await;
    let first = first.unwrap();
    fs.release(Some(EIO));

    let (status, text) = first.await.unwrap();
    assert_eq!(status, 503, "{text}");
    // The retry took over the released claim and tried to store it itself, on a spool that is
    // now poisoned: 503 again, never 200.
    let (status, text) = retry.await.unwrap();
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("spool_failed"), "{text}");
    let (status, text) = answer(send(bridge.http, "msg_doomed").await).await;
    assert_eq!(status, 503, "a later retry too: {text}");
    assert_eq!(
        bridge.count("hookbridge_dedup_waits_total", r#"outcome="retried""#),
        1
    );
    assert_eq!(bridge.count("hookbridge_deliveries_accepted_total", ""), 0);
    bridge.stop().await;
}

#[tokio::test]
async fn a_request_dropped_mid_append_that_then_succeeds_makes_its_retry_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new(Arc::new(hookbridge::spool::RealFs));
    let bridge = Bridge::start(dir.path(), &fs, Duration::from_secs(10)).await;

    // The sender gives up on the first attempt and closes the connection mid-append.
    let (_, retry) = first_attempt_held_then_retried(&bridge, &fs, "msg_dropped", true).await;
    fs.release(None);

    let (status, text) = retry.await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains(r#""status":"duplicate""#),
        "the dropped attempt was stored; its retry must not store it twice: {text}"
    );
    // The first request was dropped before it could be answered (or counted)...
    assert_eq!(bridge.count("hookbridge_deliveries_accepted_total", ""), 0);
    // ...and the id is not stuck: it stays a plain duplicate afterwards.
    let (status, text) = answer(send(bridge.http, "msg_dropped").await).await;
    assert!(status == 200 && text.contains("duplicate"), "{text}");
    bridge.stop().await;
    // ...but its append went on and is the one copy stored.
    assert_eq!(stored_ids(dir.path()).await, vec!["msg_dropped".to_owned()]);
}

#[tokio::test]
async fn a_request_dropped_mid_append_that_then_fails_leaves_its_retry_unacknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new(Arc::new(hookbridge::spool::RealFs));
    let bridge = Bridge::start(dir.path(), &fs, Duration::from_secs(10)).await;

    // The sender gives up on the first attempt and closes the connection mid-append.
    let (_, retry) = first_attempt_held_then_retried(&bridge, &fs, "msg_lost", true).await;
    fs.release(Some(EIO));

    let (status, text) = retry.await.unwrap();
    assert_eq!(status, 503, "{text}");
    assert_eq!(bridge.count("hookbridge_deliveries_accepted_total", ""), 0);
    bridge.stop().await;
}

#[tokio::test]
async fn a_retry_that_waits_too_long_gets_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new(Arc::new(hookbridge::spool::RealFs));
    let bridge = Bridge::start(dir.path(), &fs, Duration::from_millis(500)).await;

    fs.hold(Op::SyncData, "seg");
    let first = spawn_answer(send(bridge.http, "msg_stuck").await);
    until_held(&fs).await;
    let (status, text) = answer(send(bridge.http, "msg_stuck").await).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("in_progress"), "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after:"), "{text}");
    assert_eq!(
        bridge.count("hookbridge_dedup_waits_total", r#"outcome="timeout""#),
        1
    );

    fs.release(None);
    assert_eq!(first.await.unwrap().0, 200);
    let (status, text) = answer(send(bridge.http, "msg_stuck").await).await;
    assert!(status == 200 && text.contains("duplicate"), "{text}");
    bridge.stop().await;
}
