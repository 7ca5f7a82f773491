//! Shared test harness: start the bridge (in-process on port 0, or the real binary), post
//! deliveries over real HTTP, and read what arrived from a real NATS server.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use hookbridge::app::{App, Settings};
use hookbridge::config::Config;

pub mod cluster;
pub mod delivered;
pub mod haproxy;
pub mod tls;

/// NATS with JetStream the tests use: `HOOKBRIDGE_TEST_NATS_URL` or the machine's local server.
pub fn nats_url() -> String {
    std::env::var("HOOKBRIDGE_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A name unique to this test process and call, safe as a NATS token and stream name.
pub fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{tag}{}x{}x{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A loopback port for a broker the test starts, stops and restarts on one address (the bridge
/// under test is configured with it before the broker runs, or while it is down, so port 0 will
/// not do). It is drawn at random from below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`): there no outgoing connection can be given it (which is how a
/// port picked by binding 0 and released gets taken before the broker binds it, or how a client
/// reconnecting to a stopped broker on an ephemeral port can connect to itself). Only another
/// process binding that very number can take it; the brokers' `start` detects that and retries on
/// a new port while nobody has been told the address yet.
pub fn broker_port() -> u16 {
    use rand::Rng;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let range = ephemeral_low.saturating_sub(12_000).max(1024)..ephemeral_low;
    assert!(!range.is_empty(), "no ports below {ephemeral_low}");
    let mut rng = rand::rng();
    for _ in 0..100 {
        let port = rng.random_range(range.clone());
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {range:?}")
}

/// A test port that a broker is told about; records whether anyone has seen it yet.
#[derive(Debug)]
struct BrokerPort {
    port: u16,
    told: std::sync::atomic::AtomicBool,
}

impl BrokerPort {
    fn new() -> BrokerPort {
        BrokerPort {
            port: broker_port(),
            told: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The port, from now on fixed for this broker.
    fn get(&self) -> u16 {
        self.told.store(true, Ordering::Relaxed);
        self.port
    }

    /// Whether the port is free right now (checked just before a broker is started on it).
    fn free(&self) -> bool {
        StdListener::bind(("127.0.0.1", self.port)).is_ok()
    }

    /// After `what` could not start on the port (`why`; most likely another process bound it
    /// since it was picked): a new port if nobody was told the old one yet, else a failed test.
    fn retry(&mut self, what: &str, why: &str) {
        assert!(
            !self.told.load(Ordering::Relaxed),
            "{what} cannot start on port {} ({why}), which the test already handed out; \
             another process probably bound it",
            self.port
        );
        eprintln!(
            "{what} cannot start on port {} ({why}); retrying on another",
            self.port
        );
        self.port = broker_port();
    }
}

/// A config for one test: loopback port 0, its own spool directory, prefix and stream.
pub fn test_config(spool_dir: &Path, tag: &str) -> Config {
    let mut c = Config::default();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.admin.listen = "127.0.0.1:0".parse().unwrap();
    c.spool.dir = spool_dir.to_owned();
    c.spool.segment_bytes = 1024 * 1024;
    c.spool.max_bytes = 256 * 1024 * 1024;
    let id = unique(tag);
    c.routing.prefix = format!("{id}.");
    c.sink.nats.url = nats_url();
    c.sink.nats.stream = id.to_uppercase();
    c.sink.nats.request_timeout = Duration::from_secs(2);
    c.forward.retry_max = Duration::from_millis(500);
    c.shutdown.grace = Duration::from_secs(5);
    c
}

/// The bridge running in this process.
pub struct TestApp {
    pub http: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), hookbridge::app::Error>>>,
}

impl TestApp {
    pub async fn start(config: Config) -> TestApp {
        let settings = Settings::new(config).expect("test config is valid");
        let app = App::bind(settings).await.expect("app binds");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let http = app.http_addr();
        let admin = app.admin_addr();
        let task = tokio::spawn(app.run(async {
            let _ = rx.await;
        }));
        TestApp {
            http,
            admin,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

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

/// A Sessionboard-shaped body for resource `rid` carrying a per-resource sequence number.
pub fn body(action: &str, rid: &str, n: u64) -> String {
    format!(
        r#"{{"data":{{"id":"{rid}","n":{n},"note":"é☕"}},"metadata":{{"action":"{action}","actor_id":7,"event_id":4001,"org_id":"org-1","version":1,"datetime":"2026-04-28T16:00:00Z"}}}}"#
    )
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fixtures")
}

/// The Sessionboard sample bodies shipped in `examples/fixtures/`, sorted.
pub fn fixture_files() -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// Checks the message headers every sink sets from the body `v`; `header` looks one up.
pub fn assert_sessionboard_headers<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    v: &serde_json::Value,
) {
    let action = v["metadata"]["action"].as_str().unwrap();
    assert_eq!(header("sessionboard-action"), Some(action));
    assert_eq!(header("content-type"), Some("application/json"));
    assert_eq!(header("sessionboard-resource-id"), v["data"]["id"].as_str());
    assert_eq!(
        header("sessionboard-org-id"),
        v["metadata"]["org_id"].as_str()
    );
    match &v["metadata"]["event_id"] {
        serde_json::Value::Null => assert_eq!(header("sessionboard-event-id"), None),
        e => assert_eq!(
            header("sessionboard-event-id"),
            Some(e.to_string().as_str())
        ),
    }
}

/// One message as it arrived at the broker.
#[derive(Debug, Clone)]
pub struct Received {
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap()
    }
}

pub async fn jetstream(url: &str) -> jetstream::Context {
    let client = async_nats::connect(url).await.unwrap_or_else(|e| {
        panic!(
            "no NATS with JetStream at {url} ({e}): run scripts/test, which starts one \
             (or set HOOKBRIDGE_TEST_NATS_URL)"
        )
    });
    jetstream::new(client)
}

/// Waits until the stream holds at least `want` messages (or `timeout` passes) and returns all of
/// them in stream order.
pub async fn read_stream(
    js: &jetstream::Context,
    stream: &str,
    want: usize,
    timeout: Duration,
) -> Vec<Received> {
    let deadline = Instant::now() + timeout;
    loop {
        let count = match js.get_stream(stream).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0) as usize,
            Err(_) => 0,
        };
        if count >= want || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Ok(stream) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let total = stream.get_info().await.unwrap().state.messages as usize;
    let mut out = Vec::with_capacity(total);
    let mut messages = consumer.messages().await.unwrap();
    while out.len() < total {
        match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
            Ok(Some(Ok(m))) => out.push(Received {
                subject: m.subject.to_string(),
                headers: m
                    .headers
                    .iter()
                    .flat_map(|h| {
                        h.iter()
                            .map(|(k, vs)| (k.to_string(), vs[0].to_string()))
                            .collect::<Vec<_>>()
                    })
                    .collect(),
                payload: m.payload.clone(),
            }),
            _ => break,
        }
    }
    out
}

pub async fn delete_stream(js: &jetstream::Context, stream: &str) {
    let _ = js.delete_stream(stream).await;
}

/// Path of a `nats-server` binary for tests that need a server they can stop and start.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return p.into();
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v nats-server"])
        .output()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !p.is_empty() {
            return p.into();
        }
    }
    for p in [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("nats-server not found: run scripts/test, which installs it (or set NATS_SERVER_BIN)")
}

/// A private NATS server (JetStream on, own storage) the test can stop and restart on one port.
pub struct NatsServer {
    port: BrokerPort,
    store: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Picks a port (see [`broker_port`]) and a storage directory but does not start the server.
    pub fn new(store: &Path) -> NatsServer {
        NatsServer {
            port: BrokerPort::new(),
            store: store.to_owned(),
            child: None,
        }
    }

    /// The server's port: fixed from the first call on, across restarts.
    pub fn port(&self) -> u16 {
        self.port.get()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }

    pub async fn start(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if !self.port.free() {
                self.port.retry("nats-server", "port in use");
                continue;
            }
            let mut child = Command::new(nats_server_bin())
                .args(["-a", "127.0.0.1", "-p", &self.port.port.to_string()])
                .args(["-js", "-sd"])
                .arg(&self.store)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nats-server");
            let url = format!("nats://127.0.0.1:{}", self.port.port);
            let exited = loop {
                if let Ok(Some(status)) = child.try_wait() {
                    break Some(status);
                }
                if async_nats::connect(&url).await.is_ok() {
                    break None;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("nats-server did not start");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            match exited {
                None => {
                    self.child = Some(child);
                    return;
                }
                Some(status) => self.port.retry("nats-server", &format!("exited: {status}")),
            }
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The real `hookbridge` binary, configured through the environment.
pub struct BridgeProcess {
    pub child: Child,
    /// Where this process listens; a restarted bridge (a new `spawn`) has new addresses.
    pub http: SocketAddr,
    pub admin: SocketAddr,
}

impl BridgeProcess {
    /// Starts the binary with both listeners on `127.0.0.1:0`, so no port can be taken between
    /// choosing and binding it, and learns the bound addresses from its `hookbridge serving` log
    /// line (`listen=` and `admin=`, text or JSON). For that line the harness adds
    /// `hookbridge::app=info` to `RUST_LOG` (`warn` unless `env` sets one) and keeps those info
    /// lines out of the test's stderr unless they were asked for; everything else the bridge
    /// logs goes to stderr as before. Returns once `/livez` answers 200; panics if the process
    /// exits first.
    pub async fn spawn(env: &[(String, String)]) -> BridgeProcess {
        let asked = env
            .iter()
            .find(|(k, _)| k == "RUST_LOG")
            .map(|(_, v)| v.clone());
        let filter = format!(
            "{},hookbridge::app=info",
            asked.as_deref().unwrap_or("warn")
        );
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookbridge"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOOKBRIDGE_HTTP__LISTEN", "127.0.0.1:0")
            .env("HOOKBRIDGE_ADMIN__LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env("RUST_LOG", filter);
        let mut child = cmd.spawn().expect("spawn hookbridge");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let quiet_info = asked.is_none();
        // Reads the log for the whole life of the process (a full pipe would block it).
        std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addrs) = serving_addrs(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addrs);
                    }
                    continue;
                }
                let info = line.contains(" INFO ") || line.contains(r#""level":"INFO""#);
                if !(quiet_info && info) {
                    let _ = writeln!(std::io::stderr(), "{line}");
                }
            }
        });
        let (http, admin) = match tokio::time::timeout(Duration::from_secs(20), rx).await {
            Ok(Ok(addrs)) => addrs,
            Ok(Err(_)) => {
                let status = child.wait().expect("wait for hookbridge");
                panic!("hookbridge exited before serving: {status}");
            }
            Err(_) => {
                let _ = child.kill();
                panic!("hookbridge did not log `hookbridge serving` within 20 s");
            }
        };
        let client = http_client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _, _)) =
                request(&client, "GET", &format!("http://{admin}/livez"), &[], "").await
            {
                break;
            }
            assert!(Instant::now() < deadline, "hookbridge did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        BridgeProcess { child, http, admin }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    pub fn sigterm(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The ingress and admin addresses from the bridge's `hookbridge serving` log line, in the text
/// format (`… hookbridge serving listen=127.0.0.1:1234 path=… admin=127.0.0.1:5678 …`) or the
/// JSON one (`{"fields":{"message":"hookbridge serving","listen":"…","admin":"…",…},…}`).
fn serving_addrs(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    if !line.contains("hookbridge serving") {
        return None;
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        let field = |k: &str| v["fields"][k].as_str()?.parse().ok();
        return Some((field("listen")?, field("admin")?));
    }
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|t| t.strip_prefix(k)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    Some((field("listen")?, field("admin")?))
}

/// Environment for [`BridgeProcess::spawn`] equivalent to `test_config`.
pub fn bridge_env(spool_dir: &Path, prefix: &str, stream: &str) -> Vec<(String, String)> {
    [
        ("HOOKBRIDGE_SPOOL__DIR", spool_dir.display().to_string()),
        ("HOOKBRIDGE_ROUTING__PREFIX", format!("{prefix}.")),
        ("HOOKBRIDGE_SINK__NATS__URL", nats_url()),
        ("HOOKBRIDGE_SINK__NATS__STREAM", stream.to_owned()),
        ("HOOKBRIDGE_SINK__NATS__REQUEST_TIMEOUT", "2s".to_owned()),
        ("HOOKBRIDGE_FORWARD__RETRY_MAX", "500ms".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
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

/// Path of the `tansu` binary (Apache-Kafka-protocol broker): `TANSU_BIN`, `PATH`, or cargo's bin.
pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return p.into();
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v tansu"]).output() {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !p.is_empty() {
            return p.into();
        }
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let p = Path::new(&home).join(".cargo/bin/tansu");
    assert!(
        p.exists(),
        "tansu not found: run scripts/test, which installs it (or set TANSU_BIN)"
    );
    p
}

/// A private Kafka-protocol broker (tansu, in-memory storage) on a port of its own (see
/// [`broker_port`]), fixed across restarts.
pub struct Tansu {
    port: BrokerPort,
    child: Option<Child>,
}

impl Tansu {
    /// Picks a port without starting the broker.
    pub fn new() -> Tansu {
        Tansu {
            port: BrokerPort::new(),
            child: None,
        }
    }

    pub async fn started() -> Tansu {
        let mut t = Tansu::new();
        t.start().await;
        t
    }

    /// The broker's port: fixed from the first call on, across restarts.
    pub fn port(&self) -> u16 {
        self.port.get()
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    pub async fn start(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if !self.port.free() {
                self.port.retry("tansu", "port in use");
                continue;
            }
            let port = self.port.port;
            let url = format!("tcp://127.0.0.1:{port}");
            let mut child = Command::new(tansu_bin())
                .args(["broker", "--listener-url", &url])
                .args(["--advertised-listener-url", &url])
                .args(["--storage-engine", "memory://tansu/"])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn tansu");
            let exited = loop {
                if let Ok(Some(status)) = child.try_wait() {
                    break Some(status);
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    break None;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("tansu did not start");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            match exited {
                None => {
                    self.child = Some(child);
                    return;
                }
                Some(status) => self.port.retry("tansu", &format!("exited: {status}")),
            }
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: connections stay open but nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.thaw();
        self.stop();
    }
}

/// One Kafka record as a consumer saw it.
#[derive(Debug, Clone)]
pub struct KafkaRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub headers: Vec<(String, String)>,
    pub value: Vec<u8>,
}

impl KafkaRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).unwrap()
    }
}

/// Reads `topics` from the beginning with the independent client (kafka-python), until `count`
/// records or `timeout`.
pub async fn kafka_python_consume(
    brokers: &str,
    topics: &[String],
    count: usize,
    timeout: Duration,
) -> Vec<KafkaRecord> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka_consume.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .args(["--brokers", brokers, "--count", &count.to_string()])
        .args(["--timeout", &timeout.as_secs_f64().to_string()])
        .args(topics);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| {
            panic!("python3 cannot run ({e}): run scripts/test, which installs what the tests need")
        });
    assert!(
        out.status.success(),
        "kafka-python consumer failed (missing kafka-python? run scripts/test, which installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            KafkaRecord {
                topic: v["topic"].as_str().unwrap().to_owned(),
                partition: v["partition"].as_i64().unwrap() as i32,
                offset: v["offset"].as_i64().unwrap(),
                key: v["key"].as_str().map(str::to_owned),
                headers: v["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| {
                        (
                            h[0].as_str().unwrap().to_owned(),
                            h[1].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect(),
                value: hex_decode(v["value"].as_str().unwrap()),
            }
        })
        .collect()
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// An rdkafka consumer for assigning partitions by hand (no group offsets are committed).
fn kafka_consumer(brokers: &str) -> rdkafka::consumer::BaseConsumer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("hbtest"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

fn kafka_record(m: &rdkafka::message::BorrowedMessage<'_>) -> KafkaRecord {
    use rdkafka::message::{Headers, Message};
    KafkaRecord {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        headers: m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        let v = String::from_utf8_lossy(h.value.unwrap_or_default());
                        (h.key.to_owned(), v.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default(),
        value: m.payload().unwrap_or_default().to_vec(),
    }
}

/// Reads `topics` from the beginning with an rdkafka consumer, until `count` records or
/// `timeout`.
pub async fn rdkafka_consume(
    brokers: &str,
    topics: &[String],
    count: usize,
    timeout: Duration,
) -> Vec<KafkaRecord> {
    use rdkafka::consumer::Consumer;
    use rdkafka::{Offset, TopicPartitionList};
    let brokers = brokers.to_owned();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let consumer = kafka_consumer(&brokers);
        let deadline = Instant::now() + timeout;
        let mut tpl = TopicPartitionList::new();
        for t in &topics {
            loop {
                let md = consumer.fetch_metadata(Some(t), Duration::from_secs(5));
                if let Ok(md) = md {
                    let parts = md
                        .topics()
                        .first()
                        .map(|t| t.partitions().len())
                        .unwrap_or(0);
                    if parts > 0 {
                        for p in 0..parts as i32 {
                            tpl.add_partition_offset(t, p, Offset::Beginning).unwrap();
                        }
                        break;
                    }
                }
                assert!(Instant::now() < deadline, "topic {t} never appeared");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        while out.len() < count && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => out.push(kafka_record(&m)),
                Some(Err(e)) => eprintln!("consumer error: {e}"),
                None => {}
            }
        }
        out
    })
    .await
    .unwrap()
}

/// A config for one Kafka test: like [`test_config`], with the Kafka sink on `brokers`.
pub fn kafka_config(spool_dir: &Path, tag: &str, brokers: &str) -> Config {
    let mut c = test_config(spool_dir, tag);
    c.sink.kind = hookbridge::config::SinkKind::Kafka;
    c.sink.kafka.brokers = brokers.to_owned();
    c.sink.kafka.create_topics = true;
    c.sink.kafka.partitions = 3;
    c.sink.kafka.message_timeout = Duration::from_secs(5);
    c
}

// ---- Fault-injection helpers (tests/faults.rs) ----

impl NatsServer {
    /// SIGSTOP the private server: connections stay open but nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`NatsServer::freeze`].
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }
}

impl BridgeProcess {
    /// Waits up to `timeout` for the process to exit on its own; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }
}

/// Environment for [`BridgeProcess::spawn`] with the Kafka sink on `brokers` (topics created by
/// the bridge, 3 partitions, 5 s message timeout as in [`kafka_config`]).
pub fn kafka_bridge_env(spool_dir: &Path, prefix: &str, brokers: &str) -> Vec<(String, String)> {
    let mut env = bridge_env(spool_dir, prefix, "UNUSED");
    env.extend(
        [
            ("HOOKBRIDGE_SINK__KIND", "kafka".to_owned()),
            ("HOOKBRIDGE_SINK__KAFKA__BROKERS", brokers.to_owned()),
            ("HOOKBRIDGE_SINK__KAFKA__CREATE_TOPICS", "true".to_owned()),
            ("HOOKBRIDGE_SINK__KAFKA__PARTITIONS", "3".to_owned()),
            ("HOOKBRIDGE_SINK__KAFKA__MESSAGE_TIMEOUT", "5s".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    env
}

/// Waits until the bridge's `/readyz` reports an empty backlog (everything confirmed by the
/// broker); returns the last `/readyz` body, or `None` on timeout.
pub async fn wait_drained(
    client: &HttpClient,
    admin: SocketAddr,
    timeout: Duration,
) -> Option<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((_, _, ready)) =
            request(client, "GET", &format!("http://{admin}/readyz"), &[], "").await
        {
            if ready["backlog_records"] == 0 {
                return Some(ready);
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads every record of `topic` from the beginning (all partitions) until none has come for
/// `idle` and at least the sum of the partitions' high watermarks was read, so the caller need
/// not know how many duplicates there are. (The watermarks are only a lower bound: tansu's were
/// seen to undercount by one.) Returns records in partition order.
pub async fn kafka_read_all(brokers: &str, topic: &str, timeout: Duration) -> Vec<KafkaRecord> {
    use rdkafka::consumer::Consumer;
    use rdkafka::{Offset, TopicPartitionList};
    let idle = Duration::from_secs(2);
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + timeout;
        let consumer = kafka_consumer(&brokers);
        let (parts, floor) = loop {
            if let Ok(md) = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)) {
                let parts = md
                    .topics()
                    .first()
                    .map(|t| t.partitions().len())
                    .unwrap_or(0) as i32;
                if parts > 0 {
                    let marks: Option<i64> = (0..parts)
                        .map(|p| {
                            consumer
                                .fetch_watermarks(&topic, p, Duration::from_secs(5))
                                .ok()
                                .map(|(lo, hi)| hi - lo)
                        })
                        .sum();
                    if let Some(m) = marks {
                        break (parts, m as usize);
                    }
                }
            }
            assert!(Instant::now() < deadline, "topic {topic} never appeared");
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut tpl = TopicPartitionList::new();
        for p in 0..parts {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let mut last = Instant::now();
        while Instant::now() < deadline && (out.len() < floor || last.elapsed() < idle) {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    last = Instant::now();
                    out.push(kafka_record(&m));
                }
                Some(Err(e)) => eprintln!("consumer error: {e}"),
                None => {}
            }
        }
        assert!(
            out.len() >= floor,
            "read {} of at least {floor} records of {topic}",
            out.len()
        );
        out
    })
    .await
    .unwrap()
}
