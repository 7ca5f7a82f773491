//! The load generator: raw HTTP/1.1 over keep-alive TCP, closed loop on one thread (like `wrk
//! -t1`: N connections, each sends its next request when the previous answer arrived) or open
//! loop (requests due at fixed intervals, sent by a pacer thread and read on another; latency
//! counted from the *intended* send time, so a stall of the server is not hidden by the
//! generator waiting for it: no coordinated omission).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `data.id` of `examples/fixtures/session.updated.json`, replaced per request by one of 1,000
/// resource ids of the same length, so every body has the fixture's exact size.
const FIXTURE_ID: &str = "0fd630f1-f29d-4da9-953f-48f1a09f76b5";
/// Distinct `data.id` values the requests are spread over.
pub const RESOURCES: u64 = 1000;

/// The session.updated fixture, split around its `data.id`.
#[derive(Clone)]
pub struct Fixture {
    head: Vec<u8>,
    tail: Vec<u8>,
    pub org_id: String,
    pub event_id: Option<String>,
    pub action: String,
}

impl Fixture {
    pub fn load(path: &std::path::Path) -> Fixture {
        let raw =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let v: serde_json::Value = serde_json::from_str(&raw).expect("fixture is JSON");
        assert_eq!(v["data"]["id"], FIXTURE_ID, "fixture's data.id changed");
        let quoted = format!("\"{FIXTURE_ID}\"");
        let at = raw.find(&quoted).expect("data.id in fixture") + 1;
        Fixture {
            head: raw.as_bytes()[..at].to_vec(),
            tail: raw.as_bytes()[at + FIXTURE_ID.len()..].to_vec(),
            org_id: v["metadata"]["org_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            event_id: match &v["metadata"]["event_id"] {
                serde_json::Value::Null => None,
                e => Some(
                    e.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| e.to_string()),
                ),
            },
            action: v["metadata"]["action"].as_str().expect("action").to_owned(),
        }
    }

    /// The resource id of request `n` (36 characters, like the fixture's UUID).
    pub fn resource(n: u64) -> String {
        format!("00000000-0000-4000-8000-{:012}", n % RESOURCES)
    }

    pub fn body(&self, n: u64) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.head.len() + 36 + self.tail.len());
        b.extend_from_slice(&self.head);
        b.extend_from_slice(Self::resource(n).as_bytes());
        b.extend_from_slice(&self.tail);
        b
    }

    pub fn len(&self) -> usize {
        self.head.len() + 36 + self.tail.len()
    }
}

/// Builds the bytes of request `n`: a POST with a unique `webhook-id`, optionally signed.
pub struct Requests {
    fixture: Fixture,
    /// One request head per path; request `n` goes to path `n` mod their number.
    heads: Vec<String>,
    run: String,
    /// Signed requests, built before the timed loop (see `presign`).
    signed: Option<Vec<Vec<u8>>>,
}

impl Requests {
    /// Requests posted to `paths` in turn (one path, or several endpoints of one bridge).
    pub fn round_robin(fixture: Fixture, addr: SocketAddr, paths: &[&str], run: &str) -> Requests {
        Requests {
            heads: paths
                .iter()
                .map(|path| format!(
                    "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                    fixture.len()
                ))
                .collect(),
            fixture,
            run: run.to_owned(),
            signed: None,
        }
    }

    fn head(&self, n: u64) -> &str {
        &self.heads[(n % self.heads.len() as u64) as usize]
    }

    pub fn id(&self, n: u64) -> String {
        format!("msg_{}_{n}", self.run)
    }

    /// Signs `count` requests (Standard Webhooks `v1`, HMAC-SHA256 over `id.timestamp.body`)
    /// now, so the client's HMAC does not compete with the bridge's verification for the same
    /// two cores during the timed loop. A run that uses them all stops early.
    pub fn presign(&mut self, secret: &str, count: u64) {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        let all = (0..count)
            .map(|n| {
                let id = self.id(n);
                let body = self.fixture.body(n);
                let sig = hookbridge::ingress::signature::sign_v1(secret, &id, &ts, &body);
                let mut r = self.head(n).as_bytes().to_vec();
                r.extend_from_slice(
                    format!("webhook-id: {id}\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {sig}\r\n\r\n")
                        .as_bytes(),
                );
                r.extend_from_slice(&body);
                r
            })
            .collect();
        self.signed = Some(all);
    }

    /// Request `n` into `buf`; false when the pre-signed requests are used up.
    pub fn build(&self, n: u64, buf: &mut Vec<u8>) -> bool {
        buf.clear();
        if let Some(signed) = &self.signed {
            let Some(r) = signed.get(n as usize) else {
                return false;
            };
            buf.extend_from_slice(r);
            return true;
        }
        buf.extend_from_slice(self.head(n).as_bytes());
        buf.extend_from_slice(format!("webhook-id: {}\r\n\r\n", self.id(n)).as_bytes());
        buf.extend_from_slice(&self.fixture.head);
        buf.extend_from_slice(Fixture::resource(n).as_bytes());
        buf.extend_from_slice(&self.fixture.tail);
        true
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let mut c = Conn {
            addr,
            stream: None,
            buf: Vec::with_capacity(4096),
        };
        c.reconnect().await?;
        Ok(c)
    }

    async fn reconnect(&mut self) -> std::io::Result<()> {
        let s = TcpStream::connect(self.addr).await?;
        s.set_nodelay(true)?;
        self.stream = Some(s);
        self.buf.clear();
        Ok(())
    }

    /// Sends one request and reads the response; returns the status code. Reconnects (and
    /// fails this request) when the server closed the connection.
    async fn roundtrip(&mut self, req: &[u8]) -> std::io::Result<u16> {
        if self.stream.is_none() {
            self.reconnect().await?;
        }
        let result = self.exchange(req).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange(&mut self, req: &[u8]) -> std::io::Result<u16> {
        let stream = self.stream.as_mut().expect("connected");
        stream.write_all(req).await?;
        self.response().await
    }

    /// A second handle on the connection for writing from another thread (the same socket:
    /// non-blocking, as tokio set it).
    fn std_clone(&self) -> std::net::TcpStream {
        use std::os::fd::AsFd;
        let fd = self
            .stream
            .as_ref()
            .expect("connected")
            .as_fd()
            .try_clone_to_owned()
            .expect("dup the connection");
        std::net::TcpStream::from(fd)
    }

    /// Reads the next response; returns its status code. Closes the connection on an error
    /// (and when the server says it closes).
    async fn response(&mut self) -> std::io::Result<u16> {
        let result = self.read_response().await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn read_response(&mut self) -> std::io::Result<u16> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(std::io::ErrorKind::NotConnected.into());
        };
        loop {
            if let Some((status, len, close)) = parse_response(&self.buf)? {
                self.buf.drain(..len);
                if close {
                    self.stream = None;
                }
                return Ok(status);
            }
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A complete response at the start of `buf`: (status, bytes it takes, server closes).
fn parse_response(buf: &[u8]) -> std::io::Result<Option<(u16, usize, bool)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| std::io::Error::other("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let (mut len, mut close) = (0usize, false);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        if k.eq_ignore_ascii_case("content-length") {
            len = v
                .trim()
                .parse()
                .map_err(|_| std::io::Error::other("bad content-length"))?;
        } else if k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    let total = end + 4 + len;
    Ok((buf.len() >= total).then_some((status, total, close)))
}

/// Latencies in microseconds, 1 µs to 100 s at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).unwrap()
}

fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// What one load run measured.
pub struct LoadResult {
    pub ok: u64,
    /// Responses other than 2xx, and requests that failed on the connection.
    pub errors: u64,
    pub elapsed: Duration,
    /// Closed loop: send → response. Open loop: *intended* send time → response.
    pub latency: Histogram<u64>,
    /// Open loop only: actual send → response (the service time the bridge saw).
    pub service: Histogram<u64>,
    /// Open loop only: how late requests went out (actual − intended send time).
    pub lateness: Histogram<u64>,
    /// Open loop only: requests sent more than `MISSED_AFTER` after their due time.
    pub missed: u64,
    pub statuses: std::collections::BTreeMap<u16, u64>,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// How a run is bounded.
#[derive(Clone, Copy)]
pub enum Until {
    Time(Duration),
    /// Stop after this many requests were sent (request numbers 0..n).
    Count(u64),
}

/// Runs `f` on a thread of its own with a single-threaded runtime (the closed loop never takes
/// more than one of the machine's cores; the open loop adds its pacer).
pub fn on_own_thread<T: Send + 'static>(
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
    .join()
    .expect("load generator thread")
}

/// `n` connections, all open before the clock starts.
async fn connect_all(addr: SocketAddr, n: usize) -> Vec<Conn> {
    let mut cs = Vec::with_capacity(n);
    for _ in 0..n {
        cs.push(
            Conn::connect(addr)
                .await
                .expect("connect to the server under test"),
        );
    }
    cs
}

struct Shared {
    next: AtomicU64,
}

/// Closed loop: `conns` connections, each sending its next request as soon as the previous
/// response arrived.
pub fn closed_loop(
    addr: SocketAddr,
    conns: usize,
    until: Until,
    reqs: Arc<Requests>,
) -> LoadResult {
    on_own_thread(move || {
        Box::pin(async move {
            let shared = Arc::new(Shared {
                next: AtomicU64::new(0),
            });
            let cs = connect_all(addr, conns).await;
            let start = Instant::now();
            let deadline = match until {
                Until::Time(d) => Some(start + d),
                Until::Count(_) => None,
            };
            let limit = match until {
                Until::Count(n) => n,
                Until::Time(_) => u64::MAX,
            };
            let mut tasks = Vec::new();
            for mut c in cs {
                let (shared, reqs) = (shared.clone(), reqs.clone());
                tasks.push(tokio::spawn(async move {
                    let mut r = Partial::default();
                    let mut buf = Vec::with_capacity(2048);
                    loop {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            break;
                        }
                        let n = shared.next.fetch_add(1, Ordering::Relaxed);
                        if n >= limit || !reqs.build(n, &mut buf) {
                            break;
                        }
                        let t = Instant::now();
                        let res = c.roundtrip(&buf).await;
                        r.record(res, t.elapsed());
                    }
                    r
                }));
            }
            let mut total = Partial::default();
            for t in tasks {
                total.merge(t.await.unwrap());
            }
            total.finish(start.elapsed(), 0, histogram(), histogram())
        })
    })
}

/// A request sent later than this after its due time missed its send slot.
const MISSED_AFTER: Duration = Duration::from_millis(1);

/// How often the open loop's pacer wakes: it sends every request that has come due since, so a
/// request goes out at most about this late (plus the time the pacer waits for a core), and the
/// server sees small bursts (4–5 requests at 45k/s) rather than a tick's worth at once.
const PACE: Duration = Duration::from_micros(100);

/// One open-loop connection as the pacer and its reader share it.
struct Slot {
    /// A clone of the connection for writing (the reader task owns the tokio half); replaced
    /// when the reader reconnects.
    writer: Option<std::net::TcpStream>,
    /// The request in flight: (due, sent).
    inflight: Option<(Instant, Instant)>,
}

/// Open loop: request `i` is due at `start + i / rate`. A pacer thread of its own sends each
/// due request on a free connection (one request per connection at a time, `conns` of them),
/// waking every [`PACE`]; the generator's thread reads the responses. Latency is counted from
/// the due time, so a slow server is not hidden by the generator waiting for it (no
/// coordinated omission); `service` (sent → answer) and `lateness` (due → sent) split it.
///
/// The pacer is not tokio's timer: that wakes on whole milliseconds, so every request of a
/// millisecond went out in one burst up to a millisecond late, which a server then answers as a
/// queue (against the no-op server at 45k/s: p50 1.5 ms and 60 % of requests more than 1 ms
/// late; with the pacer p50 0.2 ms and 1.5 %).
pub fn open_loop(
    addr: SocketAddr,
    conns: usize,
    rate: f64,
    duration: Duration,
    reqs: Arc<Requests>,
) -> LoadResult {
    on_own_thread(move || {
        Box::pin(async move {
            let cs = connect_all(addr, conns).await;
            let slots: Arc<Vec<std::sync::Mutex<Slot>>> = Arc::new(
                cs.iter()
                    .map(|c| {
                        std::sync::Mutex::new(Slot {
                            writer: Some(c.std_clone()),
                            inflight: None,
                        })
                    })
                    .collect(),
            );
            let free = Arc::new(std::sync::Mutex::new((0..conns).collect::<Vec<_>>()));
            let done = Arc::new(AtomicU64::new(0));
            let total_reqs = (rate * duration.as_secs_f64()) as u64;
            let start = Instant::now() + Duration::from_millis(10);

            let (stop, stopped) = tokio::sync::watch::channel(false);
            let mut tasks = Vec::new();
            for (i, c) in cs.into_iter().enumerate() {
                let (slots, free, done) = (slots.clone(), free.clone(), done.clone());
                let stopped = stopped.clone();
                tasks.push(tokio::spawn(read_answers(i, c, slots, free, done, stopped)));
            }

            let pacer = {
                let (slots, free, reqs) = (slots.clone(), free.clone(), reqs.clone());
                std::thread::spawn(move || pace(start, rate, total_reqs, &reqs, &slots, &free))
            };
            let (sent, missed) = tokio::task::spawn_blocking(move || pacer.join().unwrap())
                .await
                .unwrap();
            // Every answer, or 30 s for the stragglers.
            let wait_until = Instant::now() + Duration::from_secs(30);
            while done.load(Ordering::Acquire) < sent && Instant::now() < wait_until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let elapsed = start.elapsed();
            let mut total = Partial::default();
            let (mut service, mut lateness) = (histogram(), histogram());
            stop.send_replace(true);
            for t in tasks {
                let (r, s, l) = t.await.unwrap();
                total.merge(r);
                service.add(s).unwrap();
                lateness.add(l).unwrap();
            }
            total.finish(elapsed, missed, service, lateness)
        })
    })
}

/// The reader of open-loop connection `i`: takes each answer, records its latency from the
/// due time, service time and send lateness, and hands the connection back to the pacer
/// (`free`), until `stopped`. Counts every answered or failed request in `done`.
async fn read_answers(
    i: usize,
    mut c: Conn,
    slots: Arc<Vec<std::sync::Mutex<Slot>>>,
    free: Arc<std::sync::Mutex<Vec<usize>>>,
    done: Arc<AtomicU64>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> (Partial, Histogram<u64>, Histogram<u64>) {
    let mut r = Partial::default();
    let mut service = histogram();
    let mut lateness = histogram();
    loop {
        // Reading is cancel-safe: what arrived stays in the connection's buffer.
        let res = tokio::select! {
            res = c.response() => res,
            _ = stopped.wait_for(|s| *s) => break,
        };
        let now = Instant::now();
        let Some((due, sent)) = slots[i].lock().unwrap().inflight.take() else {
            // The server closed an idle connection (or spoke unasked).
            if c.stream.is_none() && reopen(&mut c, &slots[i]).await {
                continue;
            }
            break;
        };
        if res.as_ref().is_ok_and(|s| (200..300).contains(s)) {
            service.saturating_record(us(now - sent));
            lateness.saturating_record(us(sent.saturating_duration_since(due)));
        }
        r.record(res, now - due);
        // Failed or closed by the server: a new connection for the next one.
        if c.stream.is_none() && !reopen(&mut c, &slots[i]).await {
            done.fetch_add(1, Ordering::Release);
            break;
        }
        free.lock().unwrap().push(i);
        done.fetch_add(1, Ordering::Release);
    }
    (r, service, lateness)
}

/// Reconnects `c` and gives the pacer the new connection to write to; false if that failed.
async fn reopen(c: &mut Conn, slot: &std::sync::Mutex<Slot>) -> bool {
    if c.reconnect().await.is_err() {
        return false;
    }
    slot.lock().unwrap().writer = Some(c.std_clone());
    true
}

/// The open loop's pacer: sends requests `0..total` at their due times. Returns how many were
/// sent and how many missed their slot.
fn pace(
    start: Instant,
    rate: f64,
    total: u64,
    reqs: &Requests,
    slots: &[std::sync::Mutex<Slot>],
    free: &std::sync::Mutex<Vec<usize>>,
) -> (u64, u64) {
    // nanosleep's default slack is 50 µs on top of the PACE asked for.
    // SAFETY: PR_SET_TIMERSLACK takes an integer and sets it for this thread only.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1) };
    let mut missed = 0u64;
    let mut buf = Vec::with_capacity(2048);
    let mut n = 0u64;
    while n < total {
        let due = start + Duration::from_secs_f64(n as f64 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep((due - now).max(PACE));
            continue;
        }
        // Everything due by now goes out, oldest first, each on a free connection; with none
        // free, the request waits (its lateness counts in its latency).
        let Some(i) = free.lock().unwrap().pop() else {
            std::thread::sleep(PACE);
            continue;
        };
        if !reqs.build(n, &mut buf) {
            free.lock().unwrap().push(i);
            break;
        }
        let mut slot = slots[i].lock().unwrap();
        let at = Instant::now();
        if at > due + MISSED_AFTER {
            missed += 1;
        }
        slot.inflight = Some((due, at));
        let ok = slot.writer.as_mut().is_some_and(|w| write_all_nb(w, &buf));
        if !ok {
            // The reader sees the connection fail and counts the error.
            slot.writer = None;
        }
        drop(slot);
        n += 1;
    }
    (n, missed)
}

/// Writes all of `buf` to a non-blocking socket (the send buffer has room for a request; a full
/// one means the server stopped reading, and waiting a little is right).
fn write_all_nb(w: &mut std::net::TcpStream, mut buf: &[u8]) -> bool {
    use std::io::Write;
    while !buf.is_empty() {
        match w.write(buf) {
            Ok(0) => return false,
            Ok(k) => buf = &buf[k..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(PACE),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// One connection's tally, merged at the end.
struct Partial {
    ok: u64,
    errors: u64,
    latency: Histogram<u64>,
    statuses: std::collections::BTreeMap<u16, u64>,
}

impl Default for Partial {
    fn default() -> Self {
        Partial {
            ok: 0,
            errors: 0,
            latency: histogram(),
            statuses: Default::default(),
        }
    }
}

impl Partial {
    fn record(&mut self, res: std::io::Result<u16>, took: Duration) {
        match res {
            Ok(s) => {
                *self.statuses.entry(s).or_default() += 1;
                if (200..300).contains(&s) {
                    self.ok += 1;
                    self.latency.saturating_record(us(took));
                } else {
                    self.errors += 1;
                }
            }
            Err(_) => {
                *self.statuses.entry(0).or_default() += 1;
                self.errors += 1;
            }
        }
    }

    fn merge(&mut self, o: Partial) {
        self.ok += o.ok;
        self.errors += o.errors;
        self.latency.add(o.latency).unwrap();
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
    }

    fn finish(
        self,
        elapsed: Duration,
        missed: u64,
        service: Histogram<u64>,
        lateness: Histogram<u64>,
    ) -> LoadResult {
        LoadResult {
            ok: self.ok,
            errors: self.errors,
            elapsed,
            latency: self.latency,
            service,
            lateness,
            missed,
            statuses: self.statuses,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_response;

    #[test]
    fn parses_complete_responses_only() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(parse_response(r).unwrap(), Some((200, r.len(), false)));
        assert_eq!(parse_response(&r[..r.len() - 1]).unwrap(), None);
        let c =
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parse_response(c).unwrap(), Some((503, c.len(), true)));
    }
}
