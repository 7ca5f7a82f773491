//! Writers that keep posting distinct deliveries while a test breaks things (kills, restarts,
//! broker outages), and which bridge process acknowledged what: after a restart a test asserts
//! that the new process acknowledged something, so a bridge that refuses everything after a
//! restart cannot pass on what its predecessor acknowledged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::body;
use super::delivered::Ack;
use super::http::{http_client, post};
use super::process::BridgeProcess;
use super::wait::wait_until;

/// One acknowledgement: the delivery, when its 2xx came, and from which bridge process (0 for
/// the one the load started on, 1 after the first [`Load::retarget`], …).
#[derive(Clone, Debug)]
pub struct Acked {
    pub ack: Ack,
    pub at: Instant,
    pub process: usize,
}

/// What the writers saw, once stopped.
#[derive(Debug)]
pub struct Outcome {
    pub acked: Vec<Ack>,
    pub times: Vec<Instant>,
    /// 503 answers.
    pub refused: u64,
    /// Posts without an answer (connection refused or reset: the process was gone).
    pub unreachable: u64,
}

impl Outcome {
    /// Posts without a 2xx.
    pub fn failed(&self) -> u64 {
        self.refused + self.unreachable
    }
}

/// `writers` clients posting `action` deliveries, each client owning `per_writer` resources
/// (`<tag>-w<w>-r<k>`, ids `<tag>-<w>-<k>-<n>`) with their own change numbers, one post at a
/// time, `pause` between posts. A POST without a 2xx is not retried (the next change is a new
/// delivery), so every duplicate at the broker is the bridge's. Any answer other than 200, 503
/// or none fails the test. Clearing `running` pauses them.
pub struct Load {
    acked: Arc<Mutex<Vec<Acked>>>,
    refused: Arc<AtomicU64>,
    unreachable: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    pub running: Arc<AtomicBool>,
    /// The bridge process number and its ingress URL.
    target: Arc<RwLock<(usize, String)>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(
        url: String,
        tag: &str,
        action: &'static str,
        writers: u64,
        per_writer: u64,
        pause: Duration,
    ) -> Load {
        let mut load = Load {
            acked: Arc::default(),
            refused: Arc::default(),
            unreachable: Arc::default(),
            stop: Arc::default(),
            running: Arc::new(AtomicBool::new(true)),
            target: Arc::new(RwLock::new((0, url))),
            tasks: Vec::new(),
        };
        let client = http_client();
        for w in 0..writers {
            let writer = Writer {
                client: client.clone(),
                acked: load.acked.clone(),
                refused: load.refused.clone(),
                unreachable: load.unreachable.clone(),
                stop: load.stop.clone(),
                running: load.running.clone(),
                target: load.target.clone(),
                tag: tag.to_owned(),
                action,
                w,
                per_writer,
                pause,
            };
            load.tasks.push(tokio::spawn(writer.run()));
        }
        load
    }

    /// Points the writers at a new bridge process (after a restart); returns its number.
    pub fn retarget(&self, url: String) -> usize {
        let mut t = self.target.write().unwrap();
        *t = (t.0 + 1, url);
        t.0
    }

    /// The number of the process the writers post to now.
    pub fn process(&self) -> usize {
        self.target.read().unwrap().0
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Acknowledgements that came from bridge process `process`.
    pub fn acked_by(&self, process: usize) -> usize {
        let acked = self.acked.lock().unwrap();
        acked.iter().filter(|a| a.process == process).count()
    }

    /// Waits until the current bridge process acknowledged something; panics after `timeout`,
    /// naming `label` and the process.
    pub async fn wait_acked_by_current(&self, label: &str, timeout: Duration) {
        let p = self.process();
        let what = format!("{label}: acknowledgements from bridge process {p}");
        wait_until(timeout, &what, || self.acked_by(p) > 0).await;
    }

    pub async fn stop(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        Outcome {
            times: acked.iter().map(|a| a.at).collect(),
            acked: acked.into_iter().map(|a| a.ack).collect(),
            refused: self.refused.load(Ordering::Relaxed),
            unreachable: self.unreachable.load(Ordering::Relaxed),
        }
    }
}

/// 8 writers post `action` deliveries to `bridge` until `acked` were acknowledged; then the
/// bridge is SIGKILLed without warning. Returns the ids it acknowledged. Only 200s count, and an
/// answer other than 200, 503 or none fails the test.
pub async fn acked_until_sigkill(
    bridge: &mut BridgeProcess,
    tag: &str,
    action: &'static str,
    acked: usize,
) -> Vec<String> {
    let load = Load::start(
        bridge.url("/webhooks/sessionboard"),
        tag,
        action,
        8,
        1,
        Duration::ZERO,
    );
    let what = format!("{acked} acknowledged deliveries");
    wait_until(Duration::from_secs(60), &what, || {
        load.acked_count() >= acked
    })
    .await;
    bridge.kill9();
    load.stop().await.acked.into_iter().map(|a| a.id).collect()
}

/// One writer of a [`Load`].
struct Writer {
    client: super::http::HttpClient,
    acked: Arc<Mutex<Vec<Acked>>>,
    refused: Arc<AtomicU64>,
    unreachable: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    running: Arc<AtomicBool>,
    target: Arc<RwLock<(usize, String)>>,
    tag: String,
    action: &'static str,
    w: u64,
    per_writer: u64,
    pause: Duration,
}

impl Writer {
    async fn run(self) {
        let (tag, w) = (&self.tag, self.w);
        let mut seq = vec![0u64; self.per_writer as usize];
        let mut i = 0usize;
        while !self.stop.load(Ordering::Relaxed) {
            if !self.running.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            let k = i % seq.len();
            i += 1;
            let (rid, n) = (format!("{tag}-w{w}-r{k}"), seq[k]);
            seq[k] += 1;
            let id = format!("{tag}-{w}-{k}-{n}");
            let (process, url) = self.target.read().unwrap().clone();
            match post(&self.client, &url, &id, body(self.action, &rid, n)).await {
                200 => {
                    let ack = Ack { id, rid, n };
                    let at = Instant::now();
                    self.acked.lock().unwrap().push(Acked { ack, at, process });
                }
                503 => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                0 => {
                    self.unreachable.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                s => panic!("unexpected status {s} for {id}"),
            }
            if !self.pause.is_zero() {
                tokio::time::sleep(self.pause).await;
            }
        }
    }
}
