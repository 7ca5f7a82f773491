//! The HTTP/1.1 accept loop shared by the ingress and admin listeners: connection limit, header
//! read timeout, graceful shutdown (stop accepting, let in-flight requests finish, then give up
//! after the grace period), and — for the ingress when `[http.tls]` is set — the TLS handshake.
//!
//! A TLS connection takes its connection slot before the handshake and runs the handshake in its
//! own task under `handshake_timeout`, so a client that never finishes one can neither stall the
//! accept loop nor hold a slot for longer than that.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

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
    pub error_counter: Option<prometheus::IntCounterVec>,
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
        let gauge = limits.open_gauge.clone();
        let errors = limits.error_counter.clone();
        tokio::spawn(async move {
            if let Some(g) = &gauge {
                g.inc();
            }
            let result = match tls {
                None => watcher
                    .watch(http.serve_connection(TokioIo::new(stream), service))
                    .await
                    .map_err(ConnError::Http),
                Some(tls) => {
                    match tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream))
                        .await
                    {
                        Err(_) => Err(ConnError::HandshakeTimeout),
                        Ok(Err(e)) => Err(ConnError::Handshake(e)),
                        Ok(Ok(stream)) => watcher
                            .watch(http.serve_connection(TokioIo::new(stream), service))
                            .await
                            .map_err(ConnError::Http),
                    }
                }
            };
            if let Err(e) = result {
                let kind = e.kind();
                if let Some(c) = &errors {
                    c.with_label_values(&[kind]).inc();
                }
                tracing::debug!(%peer, error = %e, kind, "connection ended with error");
            }
            if let Some(g) = &gauge {
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
