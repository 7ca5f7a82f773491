//! HAProxy (Debian's package) as a test child process: round robin over bridge replicas,
//! health-checked on each replica's admin `/readyz`, naming the replica that answered in an
//! `x-served-by` response header.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::child::{require_bin, ChildServer};

/// Path of the `haproxy` binary: `HAPROXY_BIN`, `PATH`, or Debian's `/usr/sbin/haproxy`.
pub fn haproxy_bin() -> PathBuf {
    require_bin("haproxy", "HAPROXY_BIN", &["/usr/sbin/haproxy"])
}

/// One replica behind the proxy: its ingress and admin ports on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    pub ingress: u16,
    pub admin: u16,
}

pub struct Haproxy {
    server: ChildServer,
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
        let bin = haproxy_bin();
        let path = dir.join("haproxy.cfg");
        let command = |port: u16| {
            std::fs::write(&path, config(port, backends)).unwrap();
            let mut c = Command::new(&bin);
            c.arg("-f")
                .arg(&path)
                .arg("-db")
                .stdout(Stdio::null())
                // Its warnings (a backend down) go to the test's stderr.
                .stderr(Stdio::piped());
            c
        };
        let ready = |port: u16| async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        };
        let mut server = ChildServer::new("haproxy");
        server.start(Duration::from_secs(15), command, ready).await;
        Haproxy { server }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.server.port())
    }
}
