//! `hookbridge probe ready|live`: a health check that needs nothing but this binary, for a
//! container `HEALTHCHECK` or a Kubernetes exec probe in an image that has no curl.
//!
//! It loads the configuration like `run` does (file and `HOOKBRIDGE_…` environment), asks the
//! admin listener for `/readyz` or `/livez` through the [`AdminClient`], and succeeds only on
//! `200`. This module never opens the spool or talks to a broker: the running bridge's own answer
//! is the verdict, and the client's hard deadline means a probe cannot hang past `--timeout`.

use std::io;
use std::time::Duration;

use super::admin_client::{self, AdminClient};
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
    #[error("GET {url}{path}: {source}")]
    Io {
        url: String,
        path: &'static str,
        source: io::Error,
    },
    /// Something answered, but not with an HTTP status line.
    #[error("GET {url}{path}: not an HTTP response")]
    Malformed { url: String, path: &'static str },
    /// The bridge answered with a status other than 200 (`/readyz` is 503 while the spool is
    /// full or failed). `body` is the start of its answer on one line.
    #[error("GET {url}{path}: {status} {body}")]
    Status {
        url: String,
        path: &'static str,
        status: u16,
        body: String,
    },
}

/// Runs the probe against the admin listener of `config`; on success returns the line to print.
pub fn run(args: &ProbeArgs, config: &Config) -> Result<String, Error> {
    let client = AdminClient::for_listener(config.admin.listen);
    let path = args.check.path();
    let body = get(&client, path, args.timeout)?;
    Ok(format!("GET {}{path}: 200 {body}", client.url()))
}

/// `GET path`; `Ok(first part of the body, on one line)` on 200. The whole exchange is bounded
/// by `timeout`.
pub fn get(client: &AdminClient, path: &'static str, timeout: Duration) -> Result<String, Error> {
    let url = || client.url().to_owned();
    let answer = client
        .get(path, timeout, MAX_RESPONSE_BYTES)
        .map_err(|e| match e {
            admin_client::Error::Io(source) => Error::Io {
                url: url(),
                path,
                source,
            },
            admin_client::Error::Malformed => Error::Malformed { url: url(), path },
        })?;
    let body = one_line(&answer.body);
    if answer.status == 200 {
        Ok(body)
    } else {
        Err(Error::Status {
            url: url(),
            path,
            status: answer.status,
            body,
        })
    }
}

/// The body on one line: trimmed, control characters replaced, cut to [`MAX_REASON_CHARS`].
fn one_line(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener};
    use std::time::Instant;

    fn get(addr: SocketAddr, path: &'static str, timeout: Duration) -> Result<String, Error> {
        super::get(&AdminClient::for_listener(addr), path, timeout)
    }

    #[test]
    fn bodies_are_quoted_on_one_line() {
        assert_eq!(
            one_line(b"{\"ready\":false,\n\"spool\":\"full\"}\n"),
            "{\"ready\":false, \"spool\":\"full\"}"
        );
        assert_eq!(one_line(&[b'x'; 500]).len(), MAX_REASON_CHARS);
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
