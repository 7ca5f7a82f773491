//! The processes a run starts, each on free loopback ports and in its own directory: the bridge
//! (the release binary with a generated configuration), a private nats-server, tansu, and the
//! no-op ceiling server (this driver in `--noop-server` mode).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hookbridge::cli::status::Scrape;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A loopback port nothing listens on right now, from below the kernel's ephemeral range (see
/// the harness's `broker_port`).
pub fn free_port() -> u16 {
    crate::child::broker_port()
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn wait_tcp(child: &mut Child, addr: SocketAddr, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Peak and current resident set of a process, in bytes (`VmHWM`, `VmRSS`).
pub fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// SIGTERM, then SIGKILL after `grace`; reaps the child.
fn stop(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal(child, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The sink a bridge publishes to.
#[derive(Clone)]
pub enum Sink {
    /// JetStream at this URL (which may have no server: spool only).
    Nats(String),
    /// Kafka bootstrap `host:port`.
    Kafka(String),
}

/// The hookbridge binary under test.
pub struct Bridge {
    child: Child,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// Process start → `/readyz` 200.
    pub startup: Duration,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

pub struct BridgeConfig<'a> {
    pub spool: &'a Path,
    pub sink: Sink,
    /// A `whsec_` secret: requests must be signed.
    pub secret: Option<&'a str>,
    pub log: &'a Path,
}

pub const INGRESS_PATH: &str = "/webhooks/sessionboard";

/// The path of endpoint `i` of a bridge started with several (0: the default endpoint).
pub fn endpoint_path(i: usize) -> String {
    match i {
        0 => INGRESS_PATH.to_owned(),
        i => format!("/webhooks/e{i}"),
    }
}
/// Topic/subject prefix; JetStream stream and Kafka topics follow from it.
pub const PREFIX: &str = "bench.";
pub const STREAM: &str = "BENCH";

impl Bridge {
    /// Writes the configuration next to the spool and starts `bin` with it; returns once
    /// `/readyz` answers 200. Everything not set here is the default configuration.
    pub async fn start(bin: &Path, cfg: &BridgeConfig<'_>) -> Bridge {
        Bridge::start_with_endpoints(bin, cfg, 1).await
    }

    /// The same with `endpoints` endpoints in all: the default one and `[[endpoints]]` `e1`,
    /// `e2`, … on [`endpoint_path`], each under its own prefix (`bench1.`, …) and with the
    /// default endpoint's authentication (the secret, or none: the listener is loopback).
    pub async fn start_with_endpoints(
        bin: &Path,
        cfg: &BridgeConfig<'_>,
        endpoints: usize,
    ) -> Bridge {
        let (http, admin) = (loopback(free_port()), loopback(free_port()));
        let auth = match cfg.secret {
            Some(s) => format!("secrets = [\"{s}\"]\n"),
            None => String::new(),
        };
        let sink = match &cfg.sink {
            Sink::Nats(url) => {
                format!("kind = \"nats\"\n[sink.nats]\nurl = \"{url}\"\nstream = \"{STREAM}\"\n")
            }
            // tansu does not create topics on first use; the bridge creates its own.
            Sink::Kafka(brokers) => format!(
                "kind = \"kafka\"\n[sink.kafka]\nbrokers = \"{brokers}\"\ncreate_topics = true\n"
            ),
        };
        // The replay scenario holds a 1,000,000-record backlog (~1.3 GB): the quota is raised
        // above the default 1 GiB for it. A stop with the broker unreachable would wait the
        // whole default 10 s `shutdown.grace` for publishes that cannot finish; 1 s changes only
        // how long a stop waits (what is unconfirmed stays in the spool either way). Nothing
        // else differs from the defaults.
        let toml = format!(
            "[http]\nlisten = \"{http}\"\n[admin]\nlisten = \"{admin}\"\n[auth]\n{auth}\
             [spool]\ndir = \"{}\"\nmax_bytes = {}\n[routing]\nprefix = \"{PREFIX}\"\n\
             [log]\nlevel = \"warn\"\n[shutdown]\ngrace = \"1s\"\n[sink]\n{sink}",
            cfg.spool.display(),
            4u64 << 30,
        );
        let mut toml = toml;
        for i in 1..endpoints {
            toml.push_str(&format!(
                "[[endpoints]]\nname = \"e{i}\"\npath = \"{}\"\n[endpoints.auth]\n{auth}\
                 [endpoints.routing]\nprefix = \"bench{i}.\"\n",
                endpoint_path(i)
            ));
        }
        let path = cfg.spool.with_extension("toml");
        std::fs::write(&path, toml).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(cfg.log)
            .unwrap();
        let started = Instant::now();
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&path)
            .arg("run")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        // No idle pooling: a scrape after a long quiet spell must not meet a connection the
        // admin listener already closed.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        let url: http::Uri = format!("http://{admin}/readyz").parse().unwrap();
        let deadline = started + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "hookbridge exited before /readyz answered 200: {status}; see {}",
                    cfg.log.display()
                );
            }
            if let Ok(r) = client.get(url.clone()).await {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "hookbridge not ready after 120 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let startup = started.elapsed();
        Bridge {
            child,
            http,
            admin,
            startup,
            client,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let url: http::Uri = format!("http://{}/metrics", self.admin).parse().unwrap();
        for _ in 0..5 {
            if let Ok(r) = self.client.get(url.clone()).await {
                if let Ok(b) = r.into_body().collect().await {
                    return String::from_utf8_lossy(&b.to_bytes()).into_owned();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no /metrics from the bridge at {}", self.admin)
    }

    /// Sum of every sample of metric `name` (all label sets).
    pub async fn metric(&self, name: &str) -> f64 {
        metric(&self.metrics().await, name)
    }

    /// Graceful stop (SIGTERM; SIGKILL after 30 s).
    pub fn stop(mut self) {
        stop(&mut self.child, Duration::from_secs(30));
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(5));
    }
}

/// `name` summed over its label sets (0 if absent), read with the bridge's own parser.
pub fn metric(text: &str, name: &str) -> f64 {
    Scrape::parse(text).sum(name).unwrap_or(0.0)
}

/// The smallest bucket bound of histogram `name` under which at least fraction `q` of its
/// samples fall: an upper bound of its `q` quantile.
pub fn bucket_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let buckets = Scrape::parse(text).by(&format!("{name}_bucket"), "le");
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .and_then(|(le, _)| le.parse().ok())
}

/// A process the driver started; killed on drop.
pub struct Service {
    child: Child,
    pub addr: SocketAddr,
}

impl Service {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(5));
    }
}

/// A private nats-server with JetStream storing under `dir` (never the system one on 4222).
pub async fn nats_server(dir: &Path) -> Service {
    let port = free_port();
    let bin = nats_server_bin();
    std::fs::create_dir_all(dir).unwrap();
    let mut child = Command::new(&bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (apt-get install nats-server)", bin.display()));
    wait_tcp(
        &mut child,
        loopback(port),
        "nats-server",
        Duration::from_secs(10),
    )
    .await;
    Service {
        child,
        addr: loopback(port),
    }
}

/// tansu, the Kafka-protocol broker, with in-memory storage.
pub async fn tansu() -> Service {
    let port = free_port();
    let bin = tansu_bin();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut child = Command::new(&bin)
        .args(["broker", "--listener-url", &url])
        .args(["--advertised-listener-url", &url])
        .args(["--storage-engine", "memory://tansu/"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/test installs tansu)", bin.display()));
    wait_tcp(&mut child, loopback(port), "tansu", Duration::from_secs(20)).await;
    Service {
        child,
        addr: loopback(port),
    }
}

/// The no-op ceiling server: this driver, re-executed in `--noop-server` mode.
pub async fn noop_server() -> Service {
    let port = free_port();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--noop-server", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_tcp(
        &mut child,
        loopback(port),
        "no-op server",
        Duration::from_secs(10),
    )
    .await;
    Service {
        child,
        addr: loopback(port),
    }
}

/// `TANSU_BIN`, `tansu` on `PATH`, or cargo's bin directory.
pub fn tansu_bin() -> PathBuf {
    let cargo_bin = Path::new(&std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/tansu");
    crate::child::find_bin("tansu", "TANSU_BIN", &[]).unwrap_or(cargo_bin)
}

/// `NATS_SERVER_BIN`, `nats-server` on `PATH`, or Debian's path.
pub fn nats_server_bin() -> PathBuf {
    crate::child::find_bin("nats-server", "NATS_SERVER_BIN", &[])
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

/// `--noop-server ADDR`: the runtime `hookbridge run` builds (`src/cli/run.rs`: multi-thread,
/// default workers), the bridge's own accept loop (`hookbridge::server::serve`: same hyper http1 settings, connection
/// limit, TCP_NODELAY), and a handler that reads the whole body and answers 200.
pub fn run_noop_server(addr: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let d = hookbridge::config::Config::default().http;
        let limits = hookbridge::server::Limits {
            max_connections: d.max_connections,
            header_timeout: d.header_timeout,
            rejected_counter: None,
            open_gauge: None,
            max_headers: d.max_headers,
            max_header_bytes: d.max_header_bytes,
            error_counter: None,
            linger_timeout: d.linger_timeout,
            linger_bytes: d.linger_bytes,
            linger_counter: None,
            write_timeout: d.write_timeout,
            reserve: None,
        };
        let service = |_peer| {
            hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let _ = req.into_body().collect().await;
                Ok::<_, std::convert::Infallible>(hookbridge::server::json(
                    http::StatusCode::OK,
                    &serde_json::json!({"status": "ok"}),
                ))
            })
        };
        hookbridge::server::serve(
            listener,
            service,
            limits,
            None,
            std::future::pending(),
            Duration::from_secs(1),
        )
        .await;
    });
}
