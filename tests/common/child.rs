//! A server the test starts as a child process (nats-server, tansu, haproxy): its port, how it
//! is found, started with port retry, signalled, and killed on drop.

use std::future::Future;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A loopback port for a broker the test starts, stops and restarts on one address (the bridge
/// under test is configured with it before the broker runs, or while it is down, so port 0 will
/// not do). It is drawn at random from below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`): there no outgoing connection can be given it (which is how a
/// port picked by binding 0 and released gets taken before the broker binds it, or how a client
/// reconnecting to a stopped broker on an ephemeral port can connect to itself). Only another
/// process binding that very number can take it; [`ChildServer::start`] detects that and retries
/// on a new port while nobody has been told the address yet.
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
pub struct BrokerPort {
    pub port: u16,
    told: AtomicBool,
}

impl BrokerPort {
    pub fn new() -> BrokerPort {
        BrokerPort {
            port: broker_port(),
            told: AtomicBool::new(false),
        }
    }

    /// The port, from now on fixed for this broker.
    pub fn get(&self) -> u16 {
        self.told.store(true, Ordering::Relaxed);
        self.port
    }

    /// Whether the port is free right now (checked just before a broker is started on it).
    pub fn free(&self) -> bool {
        StdListener::bind(("127.0.0.1", self.port)).is_ok()
    }

    /// After `what` could not start on the port (`why`; most likely another process bound it
    /// since it was picked): a new port if nobody was told the old one yet, else a failed test.
    pub fn retry(&mut self, what: &str, why: &str) {
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

/// Where the program `name` is: the path in the environment variable `env`, else on `PATH`, else
/// the first of `fallbacks` that exists.
pub fn find_bin(name: &str, env: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Some(p.into());
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !p.is_empty() {
            return Some(p.into());
        }
    }
    fallbacks
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .map(Path::to_owned)
}

/// [`find_bin`], or a failed test that says how to get the program.
pub fn require_bin(name: &str, env: &str, fallbacks: &[&str]) -> PathBuf {
    find_bin(name, env, fallbacks).unwrap_or_else(|| {
        panic!("{name} not found: run scripts/test, which installs it (or set {env})")
    })
}

/// A server process on a [`BrokerPort`] of its own, fixed across restarts once told. Killed
/// (after a SIGCONT, in case it was frozen) when dropped.
#[derive(Debug)]
pub struct ChildServer {
    name: &'static str,
    port: BrokerPort,
    child: Option<Child>,
}

impl ChildServer {
    /// Picks a port without starting anything.
    pub fn new(name: &'static str) -> ChildServer {
        ChildServer {
            name,
            port: BrokerPort::new(),
            child: None,
        }
    }

    /// The server's port: fixed from the first call on, across restarts.
    pub fn port(&self) -> u16 {
        self.port.get()
    }

    /// Whether the process was started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts `command(port)` and waits until `ready(port)` or `timeout`. If the port was taken
    /// before the server bound it (it is in use, or the server exits), picks another one while
    /// nobody has been told the port yet. A piped stderr is passed on to the test's stderr,
    /// each line prefixed with the server's name.
    pub async fn start<R, F>(
        &mut self,
        timeout: Duration,
        mut command: impl FnMut(u16) -> Command,
        ready: R,
    ) where
        R: Fn(u16) -> F,
        F: Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.port.free() {
                self.port.retry(self.name, "port in use");
                continue;
            }
            let port = self.port.port;
            let mut child = command(port)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", self.name));
            let exited = loop {
                if let Ok(Some(status)) = child.try_wait() {
                    break Some(status);
                }
                if ready(port).await {
                    break None;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("{} did not start", self.name);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            match exited {
                None => {
                    self.pass_on_stderr(&mut child);
                    self.child = Some(child);
                    return;
                }
                Some(status) => {
                    if let Some(mut e) = child.stderr.take() {
                        use std::io::Read;
                        let mut err = String::new();
                        let _ = e.read_to_string(&mut err);
                        eprintln!("{} exited: {status}: {err}", self.name);
                    }
                    assert!(Instant::now() < deadline, "{} did not start", self.name);
                    self.port.retry(self.name, &format!("exited: {status}"));
                }
            }
        }
    }

    fn pass_on_stderr(&self, child: &mut Child) {
        let Some(e) = child.stderr.take() else { return };
        let name = self.name;
        std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            for line in std::io::BufReader::new(e).lines().map_while(Result::ok) {
                let _ = writeln!(std::io::stderr(), "{name}: {line}");
            }
        });
    }

    /// SIGKILL, and wait for the process.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: connections stay open but nothing answers. Panics if the server is not running
    /// or the signal cannot be sent: a freeze that silently did nothing would let a test pass
    /// without its fault.
    pub fn freeze(&self) {
        signal(self.pid(), libc::SIGSTOP);
    }

    /// SIGCONT after [`ChildServer::freeze`].
    pub fn thaw(&self) {
        signal(self.pid(), libc::SIGCONT);
    }

    fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
            .id()
    }
}

/// Sends `sig` to process `pid` with `kill(2)`; panics with the errno if it could not be sent.
pub fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) takes no pointers; a wrong pid is reported as an error, checked below.
    if unsafe { libc::kill(pid, sig) } != 0 {
        panic!(
            "kill({pid}, {sig}) failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // Best effort while dropping (maybe unwinding): a frozen process must die too.
            // SAFETY: as in `signal`.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGCONT) };
        }
        self.stop();
    }
}
