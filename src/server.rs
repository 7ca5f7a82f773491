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
//!
//! # What a client can hold
//!
//! Every state a connection can be in is bounded in time, so a slot always comes back:
//! reading a request head by `header_timeout` (hyper's timer, which also runs while a
//! keep-alive connection waits for its next request), writing an answer by `write_timeout`
//! ([`WriteDeadline`]: a client that sends and never reads is closed once its answer has made
//! no progress for that long), lingering by `linger_timeout`. Pipelining is bounded by hyper:
//! it serves one request at a time, reads at most `max_buf_size` ahead, and stops taking
//! answers into its write buffer past `max_buf_size` until the socket takes them, so a client
//! that does not read holds about one answer of memory, for at most `write_timeout`.
//!
//! # The probe reserve
//!
//! With a [`Reserve`] (the admin listener), `max_connections` is not the end: once those slots
//! are taken, a further `connections` slots admit only a connection whose first request line
//! asks for one of `paths` (read with `peek`, before hyper sees the stream). It is answered
//! once, without keep-alive, and the whole connection must be done within `timeout`. Stalled
//! scrapers holding every ordinary slot therefore cannot starve `/livez` and `/readyz`, and a
//! client cannot park in the reserve.
//!
//! A slot is given back *before* its socket is closed ([`Slotted`]): a client learns that its
//! connection ended only once the slot is free again, so clients that reconnect the moment they
//! are closed (a crowd of stalled scrapers cut off by `write_timeout` together) never hold more
//! slots than they have connections, and cannot crowd a probe out of the reserve.

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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

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
    /// A connection whose writes make no progress for this long is closed ([`WriteDeadline`]).
    pub write_timeout: Duration,
    /// Slots kept for probes once `max_connections` are taken (see "The probe reserve"); plain
    /// TCP only (ignored with TLS).
    pub reserve: Option<Reserve>,
}

/// Connections kept for probes; see "The probe reserve" in the module doc.
#[derive(Debug, Clone)]
pub struct Reserve {
    /// How many.
    pub connections: usize,
    /// The request paths a reserve connection may ask for, in its first and only request.
    pub paths: &'static [&'static str],
    /// Longest a reserve connection lives, from accept to close.
    pub timeout: Duration,
    /// Counts reserve connections closed because they asked for something else.
    pub not_probe_counter: Option<prometheus::IntCounter>,
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
    let reserve = match (&limits.reserve, &tls) {
        (Some(r), None) => Some(Arc::new(Semaphore::new(r.connections))),
        _ => None,
    };
    let http = http_builder(&limits);
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
        let Some((permit, reserved)) = take_slot(&permits, reserve.as_ref(), &limits, peer).await
        else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let stream = Slotted {
            _slot: permit,
            stream,
        };
        let conn = Connection {
            service: make_service(peer),
            peer,
            // Taken now, so that `graceful.shutdown()` also waits for a connection still in its
            // handshake; it then stops after its first request.
            watcher: graceful.watcher(),
            http: http.clone(),
            tls: tls.clone(),
            limits: limits.clone(),
            reserved,
        };
        tokio::spawn(conn.serve(stream));
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

/// The HTTP/1 settings every connection of a listener shares.
fn http_builder(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    http
}

/// A slot for a new connection from `peer`: one of `max_connections`, else one of the probe
/// `reserve` (then `true`: it may ask for a probe only), else none: the caller closes it, and it
/// is counted as rejected. With a reserve, a connection that finds every slot taken waits up to
/// [`RESERVE_WAIT`] for one: slots held by connections that are being closed come back within
/// microseconds, and a probe should not fail for arriving in that instant. Without one (the
/// ingress), it is closed at once, so an overloaded ingress never slows its accept loop.
async fn take_slot(
    permits: &Arc<Semaphore>,
    reserve: Option<&Arc<Semaphore>>,
    limits: &Limits,
    peer: std::net::SocketAddr,
) -> Option<(OwnedSemaphorePermit, bool)> {
    if let Ok(p) = permits.clone().try_acquire_owned() {
        return Some((p, false));
    }
    if let Some(reserve) = reserve {
        let slot = tokio::time::timeout(RESERVE_WAIT, async {
            tokio::select! {
                biased;
                p = permits.clone().acquire_owned() => p.map(|p| (p, false)),
                p = reserve.clone().acquire_owned() => p.map(|p| (p, true)),
            }
        });
        if let Ok(Ok(slot)) = slot.await {
            return Some(slot);
        }
    }
    if let Some(c) = &limits.rejected_counter {
        c.inc();
    }
    tracing::debug!(%peer, "connection limit reached; closing");
    None
}

/// How long a connection to a listener with a probe reserve waits for a slot (see [`take_slot`]).
const RESERVE_WAIT: Duration = Duration::from_millis(20);

/// An accepted connection, about to be served on its own task.
struct Connection<S> {
    service: S,
    peer: std::net::SocketAddr,
    watcher: Watcher,
    http: hyper::server::conn::http1::Builder,
    tls: Option<TlsAccept>,
    limits: Arc<Limits>,
    /// It holds a slot of the probe reserve.
    reserved: bool,
}

impl<S, F> Connection<S>
where
    S: Service<Request<Incoming>, Response = HttpResponse, Error = Infallible, Future = F>
        + Send
        + 'static,
    F: Future<Output = Result<HttpResponse, Infallible>> + Send + 'static,
{
    /// Serves the connection to its end (TLS handshake first, if any), keeping the
    /// open-connection gauge and counting how it ended if by an error.
    async fn serve(self, stream: Slotted) {
        let Connection {
            service,
            peer,
            watcher,
            http,
            tls,
            limits,
            reserved,
        } = self;
        if let Some(g) = &limits.open_gauge {
            g.inc();
        }
        let result = match (tls, &limits.reserve) {
            (None, Some(r)) if reserved => {
                serve_probe(stream, &http, service, watcher, &limits, r).await
            }
            (None, _) => serve_lingering(stream, &http, service, watcher, &limits).await,
            (Some(tls), _) => {
                match tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream)).await
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
    }
}

/// Serves a connection in the probe reserve: one request, if its request line asks for one of
/// the reserve's paths, all within the reserve's timeout.
async fn serve_probe<S, F>(
    stream: Slotted,
    http: &hyper::server::conn::http1::Builder,
    service: S,
    watcher: Watcher,
    limits: &Limits,
    reserve: &Reserve,
) -> Result<(), ConnError>
where
    S: Service<Request<Incoming>, Response = HttpResponse, Error = Infallible, Future = F>
        + Send
        + 'static,
    F: Future<Output = Result<HttpResponse, Infallible>> + Send + 'static,
{
    let mut http = http.clone();
    http.keep_alive(false);
    let serve = async {
        if !asks_for(&stream.stream, reserve.paths).await {
            if let Some(c) = &reserve.not_probe_counter {
                c.inc();
            }
            return Ok(());
        }
        serve_lingering(stream, &http, service, watcher, limits).await
    };
    tokio::time::timeout(reserve.timeout, serve)
        .await
        .unwrap_or(Err(ConnError::ProbeTimeout))
}

/// Whether the first request line on `stream` is `GET` or `HEAD` of one of `paths` (a query
/// string allowed), read with `peek` so hyper still sees the whole request. False when the
/// client closes or sends anything else.
async fn asks_for(stream: &TcpStream, paths: &[&str]) -> bool {
    let longest = paths.iter().map(|p| p.len()).max().unwrap_or(0);
    // "HEAD " + path + the byte after it.
    let mut buf = vec![0u8; longest + 6];
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let head = &buf[..n];
        let target = match head.iter().position(|b| *b == b' ') {
            Some(at) if matches!(&head[..at], b"GET" | b"HEAD") => &head[at + 1..],
            Some(_) => return false,
            None if n == buf.len() => return false,
            None => &[][..],
        };
        if let Some(end) = target.iter().position(|b| *b == b' ' || *b == b'?') {
            return paths.iter().any(|p| p.as_bytes() == &target[..end]);
        }
        if n == buf.len() || head.contains(&b'\n') {
            return false;
        }
        // Part of the request line so far: `peek` leaves the socket readable, so wait a little
        // instead of spinning (the caller's timeout bounds the whole).
        tokio::time::sleep(Duration::from_millis(5)).await;
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
        // Invariant 10: a client that stops reading cannot hold its slot.
        io: Some(WriteDeadline::new(io, limits.write_timeout)),
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

/// An accepted stream and the connection slot it holds. Invariant 10: the slot is given back
/// before the socket is closed (fields drop in declaration order), so by the time the client can
/// see the close, its slot is free for its next connection (module doc, "The probe reserve").
struct Slotted {
    _slot: OwnedSemaphorePermit,
    stream: TcpStream,
}

impl AsyncRead for Slotted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Slotted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
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

/// A connection's stream whose writes must make progress: once a write (or flush, or
/// shutdown) has been pending for `timeout` without a byte going out, it fails with
/// [`WriteStalled`], and hyper closes the connection. Any progress starts the clock again, so a
/// slow reader that keeps reading is not cut off; one that stopped reading is.
struct WriteDeadline<T> {
    io: T,
    timeout: Duration,
    /// Allocated on the first stall, re-armed on later ones.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether `sleep` runs for the current stall.
    armed: bool,
}

/// The error a stalled write fails with (found again in [`ConnError::kind`]).
#[derive(Debug, thiserror::Error)]
#[error("the client read nothing for the write timeout")]
struct WriteStalled;

impl<T> WriteDeadline<T> {
    fn new(io: T, timeout: Duration) -> Self {
        WriteDeadline {
            io,
            timeout,
            sleep: None,
            armed: false,
        }
    }

    /// After a write returned `poll`: progress disarms the deadline; a stall arms it (once per
    /// stall) and fails when it has passed.
    fn deadline<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        if poll.is_ready() {
            self.armed = false;
            return poll;
        }
        let when = tokio::time::Instant::now() + self.timeout;
        let sleep = match &mut self.sleep {
            Some(s) => {
                if !self.armed {
                    s.as_mut().reset(when);
                }
                s
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep_until(when))),
        };
        self.armed = true;
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                WriteStalled,
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.deadline(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.deadline(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        this.deadline(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_shutdown(cx);
        this.deadline(cx, poll)
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
    #[error("probe connection not done in time")]
    ProbeTimeout,
}

impl ConnError {
    /// The `kind` label of `hookbridge_{http,admin}_connection_errors_total`
    /// (`metrics::labels::CONNECTION_ERROR_KINDS`).
    fn kind(&self) -> &'static str {
        match self {
            ConnError::Http(e) if write_stalled(e) => "write_timeout",
            ConnError::Http(e) if e.is_timeout() => "header_timeout",
            ConnError::Http(e) if e.is_parse_too_large() => "headers_too_large",
            ConnError::Http(e) if e.is_incomplete_message() => "incomplete",
            ConnError::Http(_) => "other",
            ConnError::Handshake(_) => "tls_handshake",
            ConnError::HandshakeTimeout => "tls_handshake_timeout",
            ConnError::ProbeTimeout => "probe_timeout",
        }
    }
}

/// Whether hyper gave up because of [`WriteStalled`].
fn write_stalled(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|inner| inner.is::<WriteStalled>()) {
                return true;
            }
        }
        source = s.source();
    }
    false
}

/// A JSON response with the given status. Serialized straight into the body buffer, not through
/// `fmt::Display` as a `Value`'s `to_string` would.
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
