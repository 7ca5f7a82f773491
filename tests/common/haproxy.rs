//! HAProxy (Debian's package) as a test child process: round robin over bridge replicas,
//! health-checked on each replica's admin `/readyz`, naming the replica that answered in an
//! `x-served-by` response header.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::BrokerPort;

/// Path of the `haproxy` binary: `HAPROXY_BIN`, `PATH`, or Debian's `/usr/sbin/haproxy`.
pub fn haproxy_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HAPROXY_BIN") {
        return p.into();
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v haproxy"])
        .output()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !p.is_empty() {
            return p.into();
        }
    }
    let p = Path::new("/usr/sbin/haproxy");
    assert!(
        p.exists(),
        "haproxy not found: run scripts/test, which installs it (or set HAPROXY_BIN)"
    );
    p.to_owned()
}

/// One replica behind the proxy: its ingress and admin ports on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    pub ingress: u16,
    pub admin: u16,
}

pub struct Haproxy {
    port: u16,
    child: Child,
}

/// The configuration: what the README's "Scaling out" shows, with test-sized timings (health
/// checks every 200 ms, a replica out after 2 failed checks, back after 2 good ones).
pub fn config(port: u16, backends: &[Backend]) -> String {
    let mut cfg = format!(
        "global\n  maxconn 1024\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n\
         \x20 retries 2\n  retry-on conn-failure\n  option redispatch\n\
         frontend webhooks\n  bind 127.0.0.1:{port}\n  default_backend bridges\n\
         backend bridges\n  balance roundrobin\n\
         \x20 option httpchk GET /readyz\n  http-check expect status 200\n\
         \x20 http-response set-header x-served-by %[srv_name]\n\
         \x20 default-server inter 200ms fall 2 rise 2\n"
    );
    for (i, b) in backends.iter().enumerate() {
        cfg.push_str(&format!(
            "  server r{i} 127.0.0.1:{} check port {}\n",
            b.ingress, b.admin
        ));
    }
    cfg
}

impl Haproxy {
    /// Writes the configuration into `dir` and starts `haproxy -db` on a free loopback port.
    pub async fn start(dir: &Path, backends: &[Backend]) -> Haproxy {
        let mut port = BrokerPort::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let path = dir.join("haproxy.cfg");
            std::fs::write(&path, config(port.port, backends)).unwrap();
            let mut child = Command::new(haproxy_bin())
                .arg("-f")
                .arg(&path)
                .arg("-db")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn haproxy");
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        use std::io::Read;
                        let _ = e.read_to_string(&mut err);
                    }
                    eprintln!("haproxy exited: {status}: {err}");
                    port.retry("haproxy", &format!("exited: {status}"));
                    assert!(Instant::now() < deadline, "haproxy did not start");
                    break;
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port.port))
                    .await
                    .is_ok()
                {
                    // Its warnings (a backend down) go to the test's stderr.
                    if let Some(e) = child.stderr.take() {
                        std::thread::spawn(move || {
                            use std::io::{BufRead, Write};
                            for line in std::io::BufReader::new(e).lines().map_while(Result::ok) {
                                let _ = writeln!(std::io::stderr(), "haproxy: {line}");
                            }
                        });
                    }
                    return Haproxy {
                        port: port.get(),
                        child,
                    };
                }
                assert!(Instant::now() < deadline, "haproxy did not start");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
