//! The real forwarder over a real spool and dead-letter store (tempdir), publishing to a
//! scripted sink that checks per-key exclusion and records every call.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::{oneshot, Semaphore};

use crate::clock::ManualClock;
use crate::config::ForwardConfig;
use crate::deadletter::DeadLetters;
use crate::delivery::Delivery;
use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::routing::Router;
use crate::sink::{BrokerStatus, Message, SendError, Sink};
use crate::spool::{DelegatingFs, FsFile, RealFs, Spool, SpoolConfig, SpoolFs};

mod stuck;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Ok,
    Retryable,
    Permanent(&'static str),
}

/// How one call to `send` goes: wait `delay`, then for a permit of `gate` (if any),
/// then reply.
#[derive(Clone)]
struct Step {
    reply: Reply,
    delay: Duration,
    gate: Option<Arc<Semaphore>>,
}

fn step(reply: Reply, delay_ms: u64) -> Step {
    Step {
        reply,
        delay: Duration::from_millis(delay_ms),
        gate: None,
    }
}

#[derive(Default)]
struct SinkState {
    /// While set, every send fails as retryable after 1 ms (a broker outage).
    down: bool,
    /// Per delivery id, the steps of its successive calls; once used up, `Ok` after 1 ms.
    script: HashMap<String, VecDeque<Step>>,
    /// Every call, in call order: (delivery id, destination).
    calls: Vec<(String, String)>,
    /// Successful sends, in completion order: (delivery id, key).
    published: Vec<(String, String)>,
    /// Per key, the delivery id being sent.
    in_flight: HashMap<String, String>,
    /// Broken rules, reported by the test (a panic here would only kill the forwarder).
    violations: Vec<String>,
}

#[derive(Default)]
struct ScriptedSink(Mutex<SinkState>);

impl ScriptedSink {
    fn state(&self) -> MutexGuard<'_, SinkState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn script(&self, id: &str, steps: impl IntoIterator<Item = Step>) {
        self.state()
            .script
            .entry(id.to_owned())
            .or_default()
            .extend(steps);
    }
    fn calls_for(&self, id: &str) -> usize {
        self.state().calls.iter().filter(|(i, _)| i == id).count()
    }
    fn published(&self) -> Vec<String> {
        self.state()
            .published
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    }
}

impl Sink for Arc<ScriptedSink> {
    fn name(&self) -> &'static str {
        "scripted"
    }

    fn send(&self, msg: Message) -> BoxFuture<'static, Result<(), SendError>> {
        let step = {
            let mut s = self.state();
            s.calls.push((msg.id.clone(), msg.destination.clone()));
            if let Some(other) = s.in_flight.insert(msg.key.clone(), msg.id.clone()) {
                s.violations.push(format!(
                    "{} sent while {other} is in flight for key {:?}",
                    msg.id, msg.key
                ));
            }
            if s.down {
                step(Reply::Retryable, 1)
            } else {
                s.script
                    .get_mut(&msg.id)
                    .and_then(|q| q.pop_front())
                    .unwrap_or_else(|| step(Reply::Ok, 1))
            }
        };
        let me = self.clone();
        async move {
            tokio::time::sleep(step.delay).await;
            if let Some(gate) = step.gate {
                gate.acquire().await.expect("gate open").forget();
            }
            let mut s = me.state();
            s.in_flight.remove(&msg.key);
            let detail = "scripted".to_owned();
            match step.reply {
                Reply::Ok => {
                    s.published.push((msg.id, msg.key));
                    Ok(())
                }
                Reply::Retryable => Err(SendError::Retryable {
                    kind: "timeout",
                    detail,
                }),
                Reply::Permanent(kind) => Err(SendError::Permanent { kind, detail }),
            }
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        async {}.boxed()
    }
}

/// The real filesystem, except that creating a dead letter's temporary file fails while
/// `failures_left` > 0. Counts the creates.
#[derive(Default)]
struct FlakyDeadLetterFs {
    failures_left: AtomicU32,
    creates: AtomicU32,
}

impl DelegatingFs for Arc<FlakyDeadLetterFs> {
    fn inner(&self) -> &dyn SpoolFs {
        &RealFs
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        if path.to_string_lossy().ends_with(".dl.tmp") {
            self.creates.fetch_add(1, Ordering::SeqCst);
            let left = self.failures_left.load(Ordering::SeqCst);
            if left > 0 {
                self.failures_left.store(left - 1, Ordering::SeqCst);
                return Err(io::Error::from_raw_os_error(5)); // EIO
            }
        }
        RealFs.create(path)
    }
}

/// A routable delivery: id `msg_<i>`, ordering key `key`.
fn delivery(i: u64, key: &str) -> Delivery {
    Delivery {
        id: format!("msg_{i}"),
        timestamp: None,
        action: "session.updated".into(),
        resource_id: key.into(),
        org_id: None,
        event_id: None,
        received_at_ms: 0,
        reject_reason: None,
        copied: None,
        endpoint: None,
        trace: None,
        body: bytes::Bytes::from(format!("{{\"n\":{i}}}")),
    }
}

/// An authentic body the ingress kept as unusable, built as `ingress` builds one.
fn unusable(i: u64) -> Delivery {
    Delivery {
        id: format!("msg_{i}"),
        timestamp: None,
        action: String::new(),
        resource_id: String::new(),
        org_id: None,
        event_id: None,
        received_at_ms: 0,
        reject_reason: Some("invalid_json".into()),
        copied: None,
        endpoint: None,
        trace: None,
        body: bytes::Bytes::from(format!("not json {i}")),
    }
}

struct Bed {
    _dir: tempfile::TempDir,
    spool: Spool,
    dead_letters: Arc<DeadLetters>,
    metrics: Arc<Metrics>,
    sink: Arc<ScriptedSink>,
    progress: Arc<crate::forward::Progress>,
    /// The forwarder's clock: retry ages move only when a test advances it.
    clock: ManualClock,
    /// Delivery id → (seq, stored payload), in spool order.
    records: BTreeMap<u64, (String, bytes::Bytes)>,
}

impl Bed {
    /// A spool holding `deliveries` in this order (seqs 1..), and a dead-letter store
    /// beside it on `dl_fs`.
    async fn new(deliveries: Vec<Delivery>, dl_fs: Arc<dyn SpoolFs>) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let metrics = Arc::new(Metrics::new());
        let cfg = SpoolConfig {
            dir: spool_dir.clone(),
            segment_bytes: 1 << 20,
            max_bytes: 1 << 30,
            max_append_bytes: 64 << 10,
            max_batch_bytes: 1 << 20,
            preallocate_bytes: 1 << 20,
            confirm_interval: Duration::from_millis(5),
            min_free_bytes: 0,
            retain_confirmed: Duration::ZERO,
        };
        let (spool, _) = Spool::open(cfg, metrics.clone()).unwrap();
        let mut records = BTreeMap::new();
        for d in deliveries {
            let payload = d.encode();
            let seq = spool.append(payload.clone()).await.unwrap();
            records.insert(seq, (d.id, payload));
        }
        let dead_letters = Arc::new(DeadLetters::open_with_fs(&spool_dir, dl_fs).unwrap());
        Bed {
            _dir: dir,
            spool,
            dead_letters,
            metrics,
            sink: Arc::default(),
            progress: Arc::default(),
            clock: ManualClock::starting_now(),
            records,
        }
    }

    fn seq(&self, id: &str) -> u64 {
        *self
            .records
            .iter()
            .find(|(_, (i, _))| i == id)
            .expect("known id")
            .0
    }

    fn last_seq(&self) -> u64 {
        *self.records.keys().next_back().unwrap()
    }

    fn confirmed(&self) -> u64 {
        self.spool.stats().confirmed
    }

    /// Dead letters counted for `reason`, whichever endpoint label they have.
    fn dead_lettered(&self, reason: &str) -> u64 {
        ["default", crate::metrics::labels::NO_ENDPOINT]
            .iter()
            .map(|e| {
                self.metrics
                    .dead_lettered
                    .with_label_values(&[e, reason])
                    .get()
            })
            .sum()
    }

    /// Starts the forwarder; it stops when the returned sender is dropped or fired.
    fn start(&self, cfg: ForwardConfig) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let forwarder = Forwarder {
            spool: self.spool.clone(),
            sink: Arc::new(self.sink.clone()),
            endpoints: Arc::new(crate::endpoint::Endpoints::new(vec![
                crate::endpoint::Endpoint {
                    name: "default".into(),
                    path: "/hooks".into(),
                    gate: crate::ingress::auth::Gate::open(),
                    router: Router::new("sb.", "unroutable", &Default::default()).unwrap(),
                    cloudevents: crate::cloudevents::CloudEvents::off(),
                },
            ])),
            cfg,
            metrics: self.metrics.clone(),
            status: Arc::new(BrokerStatus::default()),
            dead_letters: self.dead_letters.clone(),
            progress: self.progress.clone(),
            clock: self.clock.clock(),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(forwarder.run(
            async move {
                let _ = rx.await;
            },
            Duration::from_secs(1),
        ));
        (tx, task)
    }

    /// Runs the forwarder until everything in the spool is confirmed.
    async fn run_to_end(&self, cfg: ForwardConfig) {
        let (stop, task) = self.start(cfg);
        let last = self.last_seq();
        wait_for("everything confirmed", || self.confirmed() == last).await;
        let _ = stop.send(());
        task.await.unwrap();
        self.check_sink_rules();
    }

    /// No key had two sends in flight; every published id was published once; per key,
    /// the published ids are in spool order.
    fn check_sink_rules(&self) {
        let s = self.sink.state();
        assert_eq!(s.violations, Vec::<String>::new());
        let mut per_key: HashMap<&str, Vec<u64>> = HashMap::new();
        for (id, key) in &s.published {
            per_key.entry(key).or_default().push(self.seq(id));
        }
        for (key, seqs) in per_key {
            let mut sorted = seqs.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(seqs, sorted, "key {key:?}: published out of order or twice");
        }
    }
}

fn forward_cfg(max_in_flight: usize) -> ForwardConfig {
    ForwardConfig {
        max_in_flight,
        retry_initial: Duration::from_millis(10),
        retry_max: Duration::from_millis(200),
        ..ForwardConfig::default()
    }
}

/// Polls `cond` (virtual time advances while the runtime idles); gives up after 20 s of
/// real time.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn per_key_order_and_retries_until_published_once() {
    let keys = ["a", "b", "c", "d", "e"];
    let deliveries = (1..=60)
        .map(|i| delivery(i, keys[i as usize % 5]))
        .collect();
    let bed = Bed::new(deliveries, Arc::new(RealFs)).await;
    for i in 1..=60u64 {
        let id = format!("msg_{i}");
        // Varied latencies, so sends of different keys complete out of spool order.
        let ms = (i * 37) % 23;
        if i % 7 == 0 {
            bed.sink.script(
                &id,
                [
                    step(Reply::Retryable, ms),
                    step(Reply::Retryable, 1),
                    step(Reply::Ok, ms),
                ],
            );
        } else {
            bed.sink.script(&id, [step(Reply::Ok, ms)]);
        }
    }
    bed.run_to_end(forward_cfg(16)).await;

    let published = bed.sink.published();
    assert_eq!(published.len(), 60, "every record published exactly once");
    for i in 1..=60u64 {
        let id = format!("msg_{i}");
        assert_eq!(published.iter().filter(|p| **p == id).count(), 1, "{id}");
        let calls = if i % 7 == 0 { 3 } else { 1 };
        assert_eq!(bed.sink.calls_for(&id), calls, "{id}");
    }
    assert_eq!(
        bed.metrics
            .forward_retries
            .with_label_values(&["scripted"])
            .get(),
        2 * 8
    );
    assert!(bed.dead_letters.is_empty());
    bed.spool.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn confirmed_position_covers_only_a_contiguous_prefix_of_done_records() {
    // 1 and 5 are held (5 after a failed attempt); the others, all different keys, go
    // through.
    let deliveries = (1..=10).map(|i| delivery(i, &format!("k{i}"))).collect();
    let bed = Bed::new(deliveries, Arc::new(RealFs)).await;
    let gate1 = Arc::new(Semaphore::new(0));
    let gate5 = Arc::new(Semaphore::new(0));
    let held = |gate: &Arc<Semaphore>| Step {
        gate: Some(gate.clone()),
        ..step(Reply::Ok, 1)
    };
    bed.sink.script("msg_1", [held(&gate1)]);
    bed.sink
        .script("msg_5", [step(Reply::Retryable, 1), held(&gate5)]);
    let (stop, task) = bed.start(forward_cfg(64));

    wait_for("8 records published", || bed.sink.published().len() == 8).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bed.confirmed(), 0, "record 1 is not done");

    gate1.add_permits(1);
    let before5 = bed.seq("msg_5") - 1;
    wait_for("prefix up to 4 confirmed", || bed.confirmed() == before5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bed.confirmed(), before5, "record 5 is not done");

    gate5.add_permits(1);
    let last = bed.last_seq();
    wait_for("everything confirmed", || bed.confirmed() == last).await;
    let _ = stop.send(());
    task.await.unwrap();
    bed.check_sink_rules();
    assert_eq!(bed.sink.published().len(), 10);
    bed.spool.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn permanent_refusal_and_unusable_body_go_to_the_dead_letter_store() {
    let deliveries = vec![
        delivery(1, "a"),
        delivery(2, "a"),
        unusable(3),
        delivery(4, "b"),
    ];
    let bed = Bed::new(deliveries, Arc::new(RealFs)).await;
    bed.sink
        .script("msg_1", [step(Reply::Permanent("message_too_large"), 3)]);
    bed.run_to_end(forward_cfg(16)).await;

    assert_eq!(bed.sink.calls_for("msg_1"), 1);
    assert_eq!(
        bed.sink.calls_for("msg_3"),
        0,
        "an unusable body is never published"
    );
    let mut published = bed.sink.published();
    published.sort();
    assert_eq!(published, ["msg_2", "msg_4"]);

    let check = |id: &str, reason: &str, destination: &str| {
        let seq = bed.seq(id);
        let (meta, payload) = bed.dead_letters.get(seq).unwrap().expect("dead-lettered");
        assert_eq!(
            (meta.seq, meta.id.as_str(), meta.reason.as_str()),
            (seq, id, reason)
        );
        assert_eq!(meta.destination, destination);
        assert_eq!(payload, bed.records[&seq].1, "the spool record, unchanged");
    };
    check("msg_1", "message_too_large", "sb.session.updated");
    check("msg_3", "invalid_json", "sb.unroutable");
    assert_eq!(bed.dead_letters.len(), 2);
    assert_eq!(bed.dead_lettered("message_too_large"), 1);
    assert_eq!(bed.dead_lettered("invalid_json"), 1);
    assert_eq!(bed.metrics.dead_letter_records.get(), 2);
    bed.spool.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failed_dead_letter_write_is_retried_as_a_dead_letter_write() {
    const FAILURES: u32 = 3;
    let fs = Arc::new(FlakyDeadLetterFs::default());
    let deliveries = vec![
        unusable(1),
        delivery(2, "a"),
        delivery(3, "a"),
        unusable(4),
        delivery(5, "b"),
    ];
    let bed = Bed::new(deliveries, Arc::new(fs.clone())).await;
    // The broker refuses 2 every time it is asked.
    bed.sink.script(
        "msg_2",
        (0..20).map(|_| step(Reply::Permanent("message_too_large"), 1)),
    );
    fs.failures_left.store(FAILURES, Ordering::SeqCst);
    bed.run_to_end(forward_cfg(16)).await;

    let calls = bed.sink.state().calls.clone();
    assert!(
        calls.iter().all(|(_, dest)| !dest.ends_with("unroutable")),
        "an unusable body went to the broker: {calls:?}"
    );
    assert_eq!(bed.sink.calls_for("msg_1"), 0);
    assert_eq!(bed.sink.calls_for("msg_4"), 0);
    assert_eq!(
        bed.sink.calls_for("msg_2"),
        1,
        "the refusal is not asked again"
    );
    let mut published = bed.sink.published();
    published.sort();
    assert_eq!(published, ["msg_3", "msg_5"]);

    for id in ["msg_1", "msg_2", "msg_4"] {
        let seq = bed.seq(id);
        let (meta, payload) = bed.dead_letters.get(seq).unwrap().expect(id);
        assert_eq!(meta.id, id);
        assert_eq!(payload, bed.records[&seq].1);
    }
    assert_eq!(bed.dead_letters.len(), 3);
    // Counted once per record written, not per attempt.
    assert_eq!(bed.dead_lettered("invalid_json"), 2);
    assert_eq!(bed.dead_lettered("message_too_large"), 1);
    assert_eq!(fs.failures_left.load(Ordering::SeqCst), 0);
    assert_eq!(
        fs.creates.load(Ordering::SeqCst),
        FAILURES + 3,
        "one write per failure plus one per record"
    );
    bed.spool.close().await.unwrap();
}

/// A record whose CRC matched but which does not decode is dead-lettered as it is, never
/// published, and the records after it flow.
#[tokio::test(start_paused = true)]
async fn an_undecodable_record_is_dead_lettered() {
    let mut bed = Bed::new(vec![delivery(1, "a")], Arc::new(RealFs)).await;
    let garbage = bytes::Bytes::from_static(b"\xff\xfefrom a newer version");
    let seq = bed.spool.append(garbage.clone()).await.unwrap();
    bed.records.insert(seq, (String::new(), garbage.clone()));
    let after = delivery(3, "b");
    let seq3 = bed.spool.append(after.encode()).await.unwrap();
    bed.records.insert(seq3, (after.id.clone(), after.encode()));
    bed.run_to_end(forward_cfg(16)).await;
    let mut published = bed.sink.published();
    published.sort();
    assert_eq!(published, ["msg_1", "msg_3"]);
    let (meta, payload) = bed.dead_letters.get(seq).unwrap().expect("dead-lettered");
    assert_eq!(meta.reason, crate::forward::UNDECODABLE);
    assert_eq!(payload, garbage, "the record as it was stored");
    assert_eq!(bed.dead_lettered(crate::forward::UNDECODABLE), 1);
    bed.spool.close().await.unwrap();
}

/// A record whose endpoint is no longer configured is dead-lettered as it is, never published
/// under another endpoint's namespace, and the records after it flow.
#[tokio::test(start_paused = true)]
async fn a_record_of_an_unknown_endpoint_is_dead_lettered() {
    let mut bed = Bed::new(vec![delivery(1, "a")], Arc::new(RealFs)).await;
    let orphan = Delivery {
        endpoint: Some("removed".into()),
        ..delivery(2, "a")
    };
    let seq = bed.spool.append(orphan.encode()).await.unwrap();
    bed.records
        .insert(seq, (orphan.id.clone(), orphan.encode()));
    let after = delivery(3, "a");
    let seq3 = bed.spool.append(after.encode()).await.unwrap();
    bed.records.insert(seq3, (after.id.clone(), after.encode()));
    bed.run_to_end(forward_cfg(16)).await;
    assert_eq!(bed.sink.published(), ["msg_1", "msg_3"]);
    let (meta, payload) = bed.dead_letters.get(seq).unwrap().expect("dead-lettered");
    assert_eq!(meta.reason, crate::forward::UNKNOWN_ENDPOINT);
    assert_eq!(payload, orphan.encode(), "the record as it was stored");
    assert_eq!(bed.dead_lettered(crate::forward::UNKNOWN_ENDPOINT), 1);
    bed.spool.close().await.unwrap();
}

/// `forward.max_in_flight_bytes` below one record still moves, one record at a time.
#[tokio::test(start_paused = true)]
async fn a_byte_bound_below_one_record_still_forwards() {
    let deliveries = (1..=20).map(|i| delivery(i, &format!("k{i}"))).collect();
    let bed = Bed::new(deliveries, Arc::new(RealFs)).await;
    let cfg = ForwardConfig {
        max_in_flight_bytes: 1,
        ..forward_cfg(16)
    };
    bed.run_to_end(cfg).await;
    assert_eq!(bed.sink.published().len(), 20);
    bed.spool.close().await.unwrap();
}
