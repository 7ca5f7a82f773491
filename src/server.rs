//! The HTTP/1.1 accept loop shared by the ingress and admin listeners: connection limit, header
//! read timeout, graceful shutdown (stop accepting, let in-flight requests finish, then give up
//! after the grace period), and — for the ingress when `[http.tls]` is set — the TLS handshake.
//!
//! A TLS connection takes its connection slot before the handshake and runs the handshake in its
//! own task under `handshake_timeout`, so a client that never finishes one can neither stall the
//! accept loop nor hold a slot for longer than that.
//!
//! # Lingering close
//!
//! Many clients (Python's `http.client`, most webhook senders) write the whole request before
//! they read the answer. When the bridge answers early (413 on the `Content-Length`, 401 on a
//! token, 400, 408) and closes with part of the body still unread, the kernel resets the
//! connection, and the reset can destroy the answer before the client reads it: the client sees
//! a broken pipe instead of a 413. So hyper is lent the stream ([`Lent`]) and hands it back when
//! it is done; the connection task then half-closes it and reads and discards what the client
//! still sends, until the client closes, `linger_bytes` were read or `linger_timeout` passed
//! (RFC 9112 §9.6). Only then is the socket closed. The slot stays taken meanwhile, so lingering
//! is bounded like every other connection state.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};

use crate::metrics::Family;

pub type HttpResponse = Response<Full<Bytes>>;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections beyond this are closed at once.
    pub max_connections: usize,
    /// Time allowed to read a request head (slow-loris guard).
    pub header_timeout: Duration,
    /// Counts connections refused for the limit.
    pub rejected_counter: Option<prometheus::IntCounter>,
    /// Gauge of open connections.
    pub open_gauge: Option<prometheus::IntGauge>,
    /// Most header fields per request (431 above).
    pub max_headers: usize,
    /// Most bytes of request head buffered (431 above).
    pub max_header_bytes: usize,
    /// Counts connections ended by an error, by kind.
    pub error_counter: Option<Family<prometheus::IntCounterVec>>,
    /// Longest a closing connection reads and discards what the client still sends (see
    /// "Lingering close"); zero closes at once.
    pub linger_timeout: Duration,
    /// Most bytes read and discarded while lingering.
    pub linger_bytes: u64,
    /// Counts lingering closes that read something or waited, by how they ended.
    pub linger_counter: Option<Family<prometheus::IntCounterVec>>,
}

/// TLS for a listener: the acceptor (which presents the current certificate) and how long a
/// client has to complete the handshake.
#[derive(Clone)]
pub struct TlsAccept {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub handshake_timeout: Duration,
}

/// Serves `listener` until `shutdown` resolves, then waits up to `grace` for open connections to
/// finish their in-flight requests. Returns once every connection is closed or the grace ran out.
/// `make_service` builds the service for one connection from the peer address. With `tls`, every
/// connection is served over TLS (a client speaking plain HTTP fails the handshake).
pub async fn serve<M, S, F>(
    listener: TcpListener,
    make_service: M,
    limits: Limits,
    tls: Option<TlsAccept>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    S: Service<Request<Incoming>, Response = HttpResponse, Error = Infallible, Future = F>
        + Send
        + 'static,
    F: Future<Output = Result<HttpResponse, Infallible>> + Send + 'static,
    M: Fn(std::net::SocketAddr) -> S,
{
    let limits = Arc::new(limits);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if let Some(c) = &limits.rejected_counter {
                c.inc();
            }
            tracing::debug!(%peer, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = make_service(peer);
        // Taken now, so that `graceful.shutdown()` also waits for a connection still in its
        // handshake; it then stops after its first request.
        let watcher = graceful.watcher();
        let http = http.clone();
        let tls = tls.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            if let Some(g) = &limits.open_gauge {
                g.inc();
            }
            let result = match tls {
                None => serve_lingering(stream, &http, service, watcher, &limits).await,
                Some(tls) => {
                    match tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream))
                        .await
                    {
                        Err(_) => Err(ConnError::HandshakeTimeout),
                        Ok(Err(e)) => Err(ConnError::Handshake(e)),
                        Ok(Ok(stream)) => {
                            serve_lingering(stream, &http, service, watcher, &limits).await
                        }
                    }
                }
            };
            if let Err(e) = result {
                let kind = e.kind();
                if let Some(c) = &limits.error_counter {
                    c.with_label_values(&[kind]).inc();
                }
                tracing::debug!(%peer, error = %e, kind, "connection ended with error");
            }
            if let Some(g) = &limits.open_gauge {
                g.dec();
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the grace period; closing them"
        );
    }
}

/// Serves one connection over `io`, then closes it lingering (see "Lingering close").
async fn serve_lingering<T, S, F>(
    io: T,
    http: &hyper::server::conn::http1::Builder,
    service: S,
    watcher: Watcher,
    limits: &Limits,
) -> Result<(), ConnError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = HttpResponse, Error = Infallible, Future = F>
        + Send
        + 'static,
    F: Future<Output = Result<HttpResponse, Infallible>> + Send + 'static,
{
    let (back, mut returned) = oneshot::channel();
    let lent = Lent {
        io: Some(io),
        back: Some(back),
    };
    let result = watcher
        .watch(http.serve_connection(TokioIo::new(lent), service))
        .await
        .map_err(ConnError::Http);
    // The connection (and the stream lent to it) was dropped with the finished future.
    if let Ok(io) = returned.try_recv() {
        let ended = linger(io, limits.linger_timeout, limits.linger_bytes).await;
        if let (Some(ended), Some(c)) = (ended, &limits.linger_counter) {
            c.with_label_values(&[ended]).inc();
        }
    }
    result
}

/// Half-closes `io`, then reads and discards until the client closes, `max_bytes` were read or
/// `timeout` passed. Returns how it ended (the metric label), or `None` when the client had
/// already closed and sent nothing more: the ordinary end of a connection, not worth counting.
async fn linger<T: AsyncRead + AsyncWrite + Unpin>(
    mut io: T,
    timeout: Duration,
    max_bytes: u64,
) -> Option<&'static str> {
    if timeout.is_zero() {
        return None;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    // hyper shuts the write side down after a clean close, not always after an error; a second
    // shutdown is harmless.
    if tokio::time::timeout_at(deadline, io.shutdown())
        .await
        .is_err()
    {
        return Some("timeout");
    }
    let mut buf = vec![0; 8192];
    let mut discarded = 0u64;
    loop {
        match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
            Err(_) => return Some("timeout"),
            Ok(Ok(0)) => return (discarded > 0).then_some("closed"),
            Ok(Ok(n)) => {
                discarded += n as u64;
                if discarded >= max_bytes {
                    return Some("byte_limit");
                }
            }
            Ok(Err(_)) => return (discarded > 0).then_some("error"),
        }
    }
}

/// A connection's stream lent to hyper: when hyper drops it, it goes back through `back` to the
/// connection task, which closes it lingering.
struct Lent<T> {
    /// `Some` until dropped.
    io: Option<T>,
    back: Option<oneshot::Sender<T>>,
}

impl<T> Lent<T> {
    fn io(&mut self) -> Pin<&mut T>
    where
        T: Unpin,
    {
        Pin::new(self.io.as_mut().expect("the stream is lent until dropped"))
    }
}

impl<T> Drop for Lent<T> {
    fn drop(&mut self) {
        if let (Some(io), Some(back)) = (self.io.take(), self.back.take()) {
            // The receiver is gone only if the connection task is, which then closes it.
            let _ = back.send(io);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Lent<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.get_mut().io().poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Lent<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().io().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().io().poll_shutdown(cx)
    }
}

/// Why a connection ended early; [`ConnError::kind`] is the metric label.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Http(hyper::Error),
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
    #[error("TLS handshake not completed in time")]
    HandshakeTimeout,
}

impl ConnError {
    /// The `kind` label of `hookbridge_http_connection_errors_total`.
    fn kind(&self) -> &'static str {
        match self {
            ConnError::Http(e) if e.is_timeout() => "header_timeout",
            ConnError::Http(e) if e.is_parse_too_large() => "headers_too_large",
            ConnError::Http(e) if e.is_incomplete_message() => "incomplete",
            ConnError::Http(_) => "other",
            ConnError::Handshake(_) => "tls_handshake",
            ConnError::HandshakeTimeout => "tls_handshake_timeout",
        }
    }
}

/// A JSON response with the given status. Serialized straight into the body buffer (a
/// `Value`'s `to_string` goes through `fmt::Display`, several times slower per request).
pub fn json<T: serde::Serialize + ?Sized>(status: http::StatusCode, body: &T) -> HttpResponse {
    let body = serde_json::to_vec(body).expect("response bodies serialize");
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
