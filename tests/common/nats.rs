//! NATS: the shared JetStream server the tests publish through, reading a stream back, and a
//! private `nats-server` a test can stop, freeze and restart on one port.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;

use super::child::{require_bin, ChildServer};

/// NATS with JetStream the tests use: `HOOKBRIDGE_TEST_NATS_URL` or the machine's local server.
pub fn nats_url() -> String {
    std::env::var("HOOKBRIDGE_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
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

/// Where `nats-server` may be besides `NATS_SERVER_BIN` and `PATH`.
pub const NATS_SERVER_PATHS: &[&str] = &[
    "/usr/sbin/nats-server",
    "/usr/bin/nats-server",
    "/usr/local/bin/nats-server",
];

/// Path of a `nats-server` binary for tests that need a server they can stop and start.
pub fn nats_server_bin() -> PathBuf {
    require_bin("nats-server", "NATS_SERVER_BIN", NATS_SERVER_PATHS)
}

/// `nats-server` on 127.0.0.1:`port` with JetStream storing in `store`, its output discarded.
pub fn nats_server_command(port: u16, store: &Path) -> Command {
    let mut c = Command::new(nats_server_bin());
    c.args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(["-js", "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Whether a NATS server on 127.0.0.1:`port` takes clients.
pub async fn takes_clients(port: u16) -> bool {
    async_nats::connect(format!("nats://127.0.0.1:{port}"))
        .await
        .is_ok()
}

/// A private NATS server (JetStream on, own storage) the test can stop and restart on one port.
pub struct NatsServer {
    server: ChildServer,
    store: PathBuf,
}

impl NatsServer {
    /// Picks a port (see [`super::broker_port`]) and a storage directory but does not start the
    /// server.
    pub fn new(store: &Path) -> NatsServer {
        NatsServer {
            server: ChildServer::new("nats-server"),
            store: store.to_owned(),
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }

    pub async fn start(&mut self) {
        let store = self.store.clone();
        let command = |port: u16| nats_server_command(port, &store);
        self.server
            .start(Duration::from_secs(10), command, takes_clients)
            .await;
    }
}

/// The process: `port`, `stop`, `freeze`, `thaw`.
impl std::ops::Deref for NatsServer {
    type Target = ChildServer;
    fn deref(&self) -> &ChildServer {
        &self.server
    }
}

impl std::ops::DerefMut for NatsServer {
    fn deref_mut(&mut self) -> &mut ChildServer {
        &mut self.server
    }
}
