//! `hookbridge probe ready|live`: a health check that needs nothing but this binary, for a
//! container `HEALTHCHECK` or a Kubernetes exec probe in an image that has no curl.
//!
//! It loads the configuration like `run` does (file and `HOOKBRIDGE_…` environment), asks the
//! admin listener for `/readyz` or `/livez` over plain HTTP/1.1, and succeeds only on `200`.
//! A listener on the unspecified address (`0.0.0.0`, `[::]`) is reached over loopback.
//!
//! This module never opens the spool or talks to a broker: the running bridge's own answer is the
//! verdict. It is deliberately a blocking `std::net` client (one request, one connection, a hard
//! deadline) rather than the async stack, so a probe cannot hang past `--timeout`.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::config::{self, Config};

/// Most bytes of an answer read; `/readyz` and `/livez` answer with a few hundred.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Most characters of the answer's body quoted in a failure reason.
const MAX_REASON_CHARS: usize = 200;

/// `hookbridge probe <ready|live> [--timeout D]`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Which endpoint to ask: `ready` (`/readyz`) or `live` (`/livez`).
    #[arg(value_enum)]
    pub check: Check,
    /// Deadline for connecting, sending and reading the answer (`500ms`, `2s`). Keep it below the
    /// orchestrator's own probe timeout.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Check {
    /// `/readyz`: the spool can take deliveries (200 also while the broker is down).
    Ready,
    /// `/livez`: the process is serving.
    Live,
}

impl Check {
    pub fn path(self) -> &'static str {
        match self {
            Check::Ready => "/readyz",
            Check::Live => "/livez",
        }
    }
}

/// Why a probe failed. Every variant is exit code 1: orchestrators know only healthy or not.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration could not be loaded (bad file, unknown key).
    #[error("configuration: {0}")]
    Config(#[from] config::Error),
    /// No answer: connection refused, reset, or nothing within the deadline.
    #[error("GET http://{addr}{path}: {source}")]
    Io {
        addr: SocketAddr,
        path: &'static str,
        source: io::Error,
    },
    /// Something answered, but not with an HTTP status line.
    #[error("GET http://{addr}{path}: not an HTTP response")]
    Malformed {
        addr: SocketAddr,
        path: &'static str,
    },
    /// The bridge answered with a status other than 200 (`/readyz` is 503 while the spool is
    /// full or failed). `body` is the start of its answer on one line.
    #[error("GET http://{addr}{path}: {status} {body}")]
    Status {
        addr: SocketAddr,
        path: &'static str,
        status: u16,
        body: String,
    },
}

/// The address to connect to for a listener bound to `listen`: loopback of the same family when
/// it is bound to the unspecified address, else the address itself.
pub fn target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Runs the probe against the admin listener of `config`; on success returns the line to print.
pub fn run(args: &ProbeArgs, config: &Config) -> Result<String, Error> {
    let addr = target(config.admin.listen);
    let body = get(addr, args.check.path(), args.timeout)?;
    Ok(format!(
        "GET http://{addr}{}: 200 {body}",
        args.check.path()
    ))
}

/// `GET path` on `addr`; `Ok(first part of the body)` on 200. The whole exchange is bounded by
/// `timeout`.
pub fn get(addr: SocketAddr, path: &'static str, timeout: Duration) -> Result<String, Error> {
    let io_err = |source| Error::Io { addr, path, source };
    let deadline = Instant::now() + timeout;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "timed out"))
    };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io_err)?;
    stream
        .set_write_timeout(Some(remaining().map_err(io_err)?))
        .map_err(io_err)?;
    let host = match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .map_err(io_err)?;
    // `Connection: close`: the answer ends at EOF. Each read gets only what is left of the deadline.
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while response.len() < MAX_RESPONSE_BYTES {
        stream
            .set_read_timeout(Some(remaining().map_err(io_err)?))
            .map_err(io_err)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // WouldBlock is how a read timeout shows up on Unix.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io_err(io::Error::new(io::ErrorKind::TimedOut, "timed out")))
            }
            Err(e) => return Err(io_err(e)),
        }
    }
    let (status, body) = parse(&response).ok_or(Error::Malformed { addr, path })?;
    if status == 200 {
        Ok(body)
    } else {
        Err(Error::Status {
            addr,
            path,
            status,
            body,
        })
    }
}

/// Status code and the body on one line (control characters replaced, cut to
/// [`MAX_REASON_CHARS`]), or `None` if `response` does not start with an HTTP status line.
fn parse(response: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(response);
    let status_line = text.split("\r\n").next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    let status: u16 = code.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim();
    let one_line: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON_CHARS)
        .collect();
    Some((status, one_line))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn unspecified_listeners_are_reached_over_loopback() {
        for (listen, expect) in [
            ("0.0.0.0:9090", "127.0.0.1:9090"),
            ("[::]:9090", "[::1]:9090"),
            ("127.0.0.1:9091", "127.0.0.1:9091"),
            ("10.1.2.3:9090", "10.1.2.3:9090"),
            ("[fd00::1]:9090", "[fd00::1]:9090"),
        ] {
            assert_eq!(
                target(listen.parse().unwrap()).to_string(),
                expect,
                "{listen}"
            );
        }
    }

    #[test]
    fn parse_reads_the_status_and_one_line_of_body() {
        for (response, expect) in [
            (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"[..],
                Some((200, "{}")),
            ),
            (
                b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"ready\":false,\n\"spool\":\"full\"}\n",
                Some((503, "{\"ready\":false, \"spool\":\"full\"}")),
            ),
            (b"HTTP/1.0 404 Not Found\r\n\r\n", Some((404, ""))),
            (b"HTTP/1.1 200\r\n\r\nok", Some((200, "ok"))),
            (b"SSH-2.0-OpenSSH_9.2\r\n", None),
            (b"HTTP/1.1 20 OK\r\n\r\n", None),
            (b"", None),
        ] {
            let got = parse(response);
            assert_eq!(
                got.as_ref().map(|(s, b)| (*s, b.as_str())),
                expect,
                "{:?}",
                String::from_utf8_lossy(response)
            );
        }
    }

    /// A one-shot server that answers the first connection with `answer` (after the request head).
    fn serve_once(answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "client closed before sending its request");
                head.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8(head).unwrap();
            assert!(head.starts_with("GET /readyz HTTP/1.1\r\n"), "{head}");
            s.write_all(answer).unwrap();
        });
        addr
    }

    #[test]
    fn only_200_is_healthy() {
        let ok = serve_once(b"HTTP/1.1 200 OK\r\n\r\n{\"ready\":true}");
        assert_eq!(
            get(ok, "/readyz", Duration::from_secs(5)).unwrap(),
            "{\"ready\":true}"
        );
        let full = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"spool\":\"full\"}");
        let err = get(full, "/readyz", Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, Error::Status { status: 503, .. }), "{err}");
        assert!(
            err.to_string().contains("503 {\"spool\":\"full\"}"),
            "{err}"
        );
        let junk = serve_once(b"hello\r\n");
        let err = get(junk, "/readyz", Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, Error::Malformed { .. }), "{err}");
    }

    #[test]
    fn a_closed_port_fails_at_once() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let started = Instant::now();
        let err = get(addr, "/livez", Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_silent_server_fails_at_the_deadline() {
        // Accepts (the kernel's backlog does) but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let started = Instant::now();
        let err = get(addr, "/readyz", Duration::from_millis(300)).unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(&err, Error::Io { source, .. } if source.kind() == io::ErrorKind::TimedOut),
            "{err}"
        );
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
        drop(listener);
    }
}
