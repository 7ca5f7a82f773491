//! The bridge under test: in this process on port 0 ([`TestApp`]), or the real binary as a child
//! process configured through the environment ([`BridgeProcess`]).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hookbridge::app::{App, Settings};
use hookbridge::config::Config;

use super::http::{http_client, request};
use super::nats::nats_url;
use super::unique;

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

    /// SIGTERM; panics if it cannot be sent (see [`super::child::signal`]).
    pub fn sigterm(&mut self) {
        super::child::signal(self.child.id(), libc::SIGTERM);
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

/// Runs `cmd` to completion and returns its stdout; panics with its stderr when it fails.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
