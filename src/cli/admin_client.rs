//! The one client of a running bridge's admin listener, used by `hookbridge probe` and
//! `hookbridge status`: where to reach the listener, and one `GET` over plain HTTP/1.1.
//!
//! A listener bound to the unspecified address (`0.0.0.0`, `[::]`) is reached over loopback of
//! the same family. The client is deliberately a blocking `std::net` one (one request, one
//! connection, `Connection: close`, a hard deadline for the whole exchange) rather than the async
//! stack, so a probe cannot hang past its timeout and a command needs no runtime.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

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

/// The URL to reach a listener bound to `listen` from this machine (`http://127.0.0.1:9090`).
pub fn url(listen: SocketAddr) -> String {
    format!("http://{}", target(listen))
}

/// An admin listener to ask: `host:port`, a path prefix (empty unless the URL given has one, as
/// behind a proxy), and the URL it is known by in messages.
#[derive(Debug, Clone)]
pub struct AdminClient {
    authority: String,
    prefix: String,
    url: String,
}

/// One request to the admin listener.
pub struct Call<'a> {
    pub method: &'static str,
    /// Path and query, after the client's prefix.
    pub path: &'a str,
    /// The admin API token, sent as a bearer token.
    pub token: Option<&'a str>,
    /// A JSON body.
    pub body: Option<&'a str>,
    /// Bound on the whole exchange.
    pub timeout: Duration,
    /// Most bytes of the answer read.
    pub max_bytes: usize,
}

/// An answer: its status code and (the start of) its body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why a `GET` got no answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No answer: the name did not resolve, connection refused or reset, or nothing within the
    /// deadline (kind `TimedOut`).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Something answered, but not with an HTTP status line.
    #[error("not an HTTP response")]
    Malformed,
}

impl AdminClient {
    /// The listener of a configuration (`admin.listen`).
    pub fn for_listener(listen: SocketAddr) -> AdminClient {
        let target = target(listen);
        AdminClient {
            authority: target.to_string(),
            prefix: String::new(),
            url: format!("http://{target}"),
        }
    }

    /// A listener given as `http://host:port[/prefix]` (a trailing `/` is ignored, the port
    /// defaults to 80); `None` if `url` is not such a URL.
    pub fn for_url(url: &str) -> Option<AdminClient> {
        let url = url.trim_end_matches('/');
        let uri: http::Uri = url.parse().ok()?;
        let authority = uri.authority()?;
        if uri.scheme_str() != Some("http") || uri.query().is_some() {
            return None;
        }
        let authority = match authority.port_u16() {
            Some(_) => authority.as_str().to_owned(),
            None => format!("{}:80", authority.host()),
        };
        Some(AdminClient {
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            url: url.to_owned(),
        })
    }

    /// `http://host:port`, without a trailing `/`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `GET path`, reading at most `max_bytes` of the answer. The whole exchange (resolving,
    /// connecting, sending, reading) is bounded by `timeout`.
    pub fn get(&self, path: &str, timeout: Duration, max_bytes: usize) -> Result<Answer, Error> {
        self.send(Call {
            method: "GET",
            path,
            token: None,
            body: None,
            timeout,
            max_bytes,
        })
    }

    /// One request (`Call`), as [`AdminClient::get`]; a token goes as `Authorization: Bearer`,
    /// a body as JSON.
    pub fn send(&self, call: Call<'_>) -> Result<Answer, Error> {
        let Call {
            method,
            path,
            token,
            body,
            timeout,
            max_bytes,
        } = call;
        let deadline = Instant::now() + timeout;
        let remaining = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(timed_out)
        };
        let mut stream = self.connect(remaining()?)?;
        stream.set_write_timeout(Some(remaining()?))?;
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.prefix, self.authority
        );
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() || method != "GET" {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        // `Connection: close`: the answer ends at EOF. Each read gets only what is left of the
        // deadline.
        let mut response = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        while response.len() < max_bytes {
            stream.set_read_timeout(Some(remaining()?))?;
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock is how a read timeout shows up on Unix.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(timed_out().into()),
                Err(e) => return Err(e.into()),
            }
        }
        parse(&response).ok_or(Error::Malformed)
    }

    /// The first address of the authority that accepts a connection.
    fn connect(&self, timeout: Duration) -> io::Result<TcpStream> {
        let mut last = None;
        for addr in self.authority.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the name has no address")))
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out")
}

/// The status code and body of a raw HTTP/1.x response, or `None` if it does not start with a
/// status line.
fn parse(response: &[u8]) -> Option<Answer> {
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&response[..head_end]);
    let status_line = head.split("\r\n").next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    Some(Answer {
        status: code.parse().ok()?,
        body: response[head_end..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listeners_are_reached_over_loopback() {
        for (listen, expect) in [
            ("0.0.0.0:9090", "127.0.0.1:9090"),
            ("[::]:9090", "[::1]:9090"),
            ("127.0.0.1:9091", "127.0.0.1:9091"),
            ("10.1.2.3:9090", "10.1.2.3:9090"),
            ("[fd00::1]:9090", "[fd00::1]:9090"),
        ] {
            let listen = listen.parse().unwrap();
            assert_eq!(target(listen).to_string(), expect, "{listen}");
            assert_eq!(url(listen), format!("http://{expect}"));
            assert_eq!(
                AdminClient::for_listener(listen).url(),
                format!("http://{expect}")
            );
        }
    }

    #[test]
    fn admin_urls_given_on_the_command_line() {
        let c = AdminClient::for_url("http://localhost:9090/").unwrap();
        assert_eq!(
            (c.url(), c.authority.as_str()),
            ("http://localhost:9090", "localhost:9090")
        );
        let c = AdminClient::for_url("http://[::1]").unwrap();
        assert_eq!(c.authority, "[::1]:80");
        let c = AdminClient::for_url("http://proxy/hb/").unwrap();
        assert_eq!((c.prefix.as_str(), c.url()), ("/hb", "http://proxy/hb"));
        for bad in ["https://x:1", "x:1", "localhost", "http://x:1/?a=b", ""] {
            assert!(AdminClient::for_url(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn parse_reads_the_status_and_the_body() {
        for (response, expect) in [
            (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"[..],
                Some((200, &b"{}"[..])),
            ),
            (b"HTTP/1.0 404 Not Found\r\n\r\n", Some((404, b""))),
            (b"HTTP/1.1 200\r\n\r\nok", Some((200, b"ok"))),
            (b"SSH-2.0-OpenSSH_9.2\r\n", None),
            (b"HTTP/1.1 20 OK\r\n\r\n", None),
            (b"", None),
        ] {
            let got = parse(response);
            assert_eq!(
                got.as_ref().map(|a| (a.status, a.body.as_slice())),
                expect,
                "{:?}",
                String::from_utf8_lossy(response)
            );
        }
    }
}
