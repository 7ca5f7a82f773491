//! Scaling out, against real processes on loopback: a three-server JetStream cluster whose stream
//! leader is SIGKILLed under load, a multi-partition Kafka topic (tansu) read back by kafka-python,
//! crash duplicates at the default `spool.confirm_interval`, and two bridge replicas behind HAProxy
//! with a sender that retries like Svix while one replica is SIGKILLed.
//!
//! `HOOKBRIDGE_SCALE_REQUEST_TIMEOUT` and `HOOKBRIDGE_SCALE_RETRY_MAX` (default `5s`, the
//! bridge's defaults) set `sink.nats.request_timeout` and `forward.retry_max` for the cluster
//! test, to compare stalls; `HOOKBRIDGE_SCALE_KILLS` (default 5) the SIGKILLs of the Kafka test.
//!
//! The tests in this file run one at a time (they share two cores with their brokers, and the
//! stall figures would otherwise measure the other tests). Figures are printed as `RESULT …`
//! lines (`cargo test --test scale_out -- --nocapture`); nothing asserts on speed.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use common::cluster::{wait_stream_leader, NatsCluster};
use common::delivered::{self, Ack, Arrival};
use common::haproxy::{Backend, Haproxy};
use common::*;
use rand::{Rng, SeedableRng};

const PATH: &str = "/webhooks/sessionboard";
const ACTION: &str = "session.updated";

/// One test of this file at a time (each test has its own runtime; tokio's mutex works across
/// them, and a failed test releases it while unwinding).
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// Sets `key` in a bridge environment, replacing an earlier value.
fn set(env: &mut Vec<(String, String)>, key: &str, value: impl Into<String>) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value.into()));
}

fn nats_arrivals(msgs: &[Received]) -> Vec<Arrival> {
    msgs.iter()
        .map(|m| Arrival {
            id: m.header("webhook-id").unwrap().to_owned(),
            rid: m.header("sessionboard-resource-id").unwrap().to_owned(),
            n: m.json()["data"]["n"].as_u64().unwrap(),
        })
        .collect()
}

/// Every acknowledged delivery arrived (panics naming the lost ones); returns the number of
/// duplicate records and the resources whose acknowledged changes first arrived out of order.
fn lost_duplicates_disorder(label: &str, acked: &[Ack], got: &[Arrival]) -> (usize, Vec<String>) {
    let t = delivered::tally(label, acked, got);
    (t.duplicates, t.disordered)
}

/// Adjacent pairs of a resource's first arrivals where the later change came first.
fn inversions(got: &[Arrival]) -> usize {
    let mut seen = HashSet::new();
    let mut last: HashMap<&str, u64> = HashMap::new();
    let mut n = 0;
    for a in got {
        if seen.insert(a.id.as_str()) {
            if let Some(prev) = last.insert(a.rid.as_str(), a.n) {
                n += usize::from(prev > a.n);
            }
        }
    }
    n
}

/// Writers that post distinct changes to their own resources until stopped: `writers` clients,
/// each owning `per_writer` resources (`<tag>-w<w>-r<k>`) with their own change numbers, posting
/// one change at a time, `pause` between posts. A POST without a 2xx is not retried (the next
/// change is a new delivery). Cleared `running` pauses them.
struct Load {
    acked: Arc<Mutex<Vec<(Ack, Instant)>>>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    running: Arc<AtomicBool>,
    url: Arc<RwLock<String>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, tag: &str, writers: u64, per_writer: u64, pause: Duration) -> Load {
        let client = http_client();
        let load = Load {
            acked: Arc::default(),
            failed: Arc::default(),
            stop: Arc::default(),
            running: Arc::new(AtomicBool::new(true)),
            url: Arc::new(RwLock::new(url)),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (client, url, stop, running, acked, failed, tag) = (
                client.clone(),
                load.url.clone(),
                load.stop.clone(),
                load.running.clone(),
                load.acked.clone(),
                load.failed.clone(),
                tag.to_owned(),
            );
            tasks.push(tokio::spawn(async move {
                let mut seq = vec![0u64; per_writer as usize];
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    if !running.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    let k = i % per_writer as usize;
                    i += 1;
                    let (rid, n) = (format!("{tag}-w{w}-r{k}"), seq[k]);
                    seq[k] += 1;
                    let id = format!("{tag}-{w}-{k}-{n}");
                    let u = url.read().unwrap().clone();
                    match post(&client, &u, &id, body(ACTION, &rid, n)).await {
                        200 => {
                            let ack = Ack { id, rid, n };
                            acked.lock().unwrap().push((ack, Instant::now()));
                        }
                        0 | 503 => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        s => panic!("unexpected status {s} for {id}"),
                    }
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
            }));
        }
        Load { tasks, ..load }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn stop(self) -> (Vec<Ack>, Vec<Instant>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let times = acked.iter().map(|(_, t)| *t).collect();
        (
            acked.into_iter().map(|(a, _)| a).collect(),
            times,
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Longest gap between consecutive instants (sorted).
fn longest_gap(times: &mut [Instant]) -> Duration {
    times.sort_unstable();
    times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// 1. Clustered JetStream
// ---------------------------------------------------------------------------------------------

/// What the admin endpoint said at one moment.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    published: f64,
    broker_up: f64,
    ready_status: u16,
    broker: String,
}

/// Polls `/metrics` and `/readyz` every 100 ms until stopped.
fn sample_admin(
    admin: std::net::SocketAddr,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Sample>> {
    tokio::spawn(async move {
        let client = http_client();
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let text = metrics_text(&client, admin).await;
            let value = |name: &str| {
                text.lines()
                    .filter(|l| l.starts_with(name))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>()
            };
            let (published, broker_up) = (
                value("hookbridge_published_total"),
                value("hookbridge_broker_up"),
            );
            let (ready_status, broker) =
                match request(&client, "GET", &format!("http://{admin}/readyz"), &[], "").await {
                    Ok((s, _, v)) => (s, v["broker"].as_str().unwrap_or("?").to_owned()),
                    Err(_) => (0, "unreachable".to_owned()),
                };
            out.push(Sample {
                at: t0.elapsed(),
                published,
                broker_up,
                ready_status,
                broker,
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        out
    })
}

/// The longest time `hookbridge_published_total` stood still among stalls overlapping
/// `(from, to)` (one stall may span two kills), with when it began; and whether the broker was
/// reported down in it.
fn stall_in(samples: &[Sample], from: Duration, to: Duration) -> (Duration, Duration, bool) {
    let increases: Vec<&Sample> = samples
        .windows(2)
        .filter(|w| w[1].published > w[0].published)
        .map(|w| &w[1])
        .collect();
    let mut best = (Duration::ZERO, Duration::ZERO, false);
    for w in increases.windows(2) {
        let (a, b) = (w[0].at, w[1].at);
        if b > from && a < to && b - a > best.0 {
            let down = samples
                .iter()
                .filter(|s| s.at >= a && s.at <= b)
                .any(|s| s.broker_up == 0.0 || s.broker == "down");
            best = (b - a, a, down);
        }
    }
    best
}

/// A bridge on a three-server JetStream cluster (seed list of all three, stream with 3 replicas,
/// production timeouts) under 8 writers for about 20 s; the stream leader is SIGKILLed, restarted,
/// then the new leader is SIGKILLed and restarted. Every acknowledged delivery is in the stream
/// exactly once, in per-resource order; `/readyz` stays 200 throughout and ends `broker: up`
/// with `hookbridge_broker_up` 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clustered_jetstream_survives_leader_kills() {
    if !require(&[Tier::NatsServer]) {
        return;
    }
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NatsCluster::start(&dir.path().join("nats"), 3).await;
    let prefix = unique("clu");
    let stream = prefix.to_uppercase();
    let mut env = bridge_env(&dir.path().join("spool"), &prefix, &stream);
    // The seed list, with a server that never answers first: the client moves on.
    let dead = format!("nats://127.0.0.1:{}", broker_port());
    set(
        &mut env,
        "HOOKBRIDGE_SINK__NATS__URL",
        format!("{dead}, {}", cluster.urls()),
    );
    set(&mut env, "HOOKBRIDGE_SINK__NATS__REPLICAS", "3");
    // The defaults, so the stalls are the ones an operator sees (or others to compare).
    let timing = |var: &str| std::env::var(var).unwrap_or_else(|_| "5s".into());
    let (request_timeout, retry_max) = (
        timing("HOOKBRIDGE_SCALE_REQUEST_TIMEOUT"),
        timing("HOOKBRIDGE_SCALE_RETRY_MAX"),
    );
    set(
        &mut env,
        "HOOKBRIDGE_SINK__NATS__REQUEST_TIMEOUT",
        &request_timeout,
    );
    set(&mut env, "HOOKBRIDGE_FORWARD__RETRY_MAX", &retry_max);
    let bridge = BridgeProcess::spawn(&env).await;
    let t0 = Instant::now();
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = sample_admin(bridge.admin, t0, stop_sampling.clone());
    // About 400 deliveries/s: a steady flow that leaves the two cores to the three servers.
    let load = Load::start(bridge.url(PATH), &prefix, 8, 4, Duration::from_millis(20));

    let replicas = {
        let js = cluster.jetstream().await;
        cluster
            .stream_leader(&stream, Duration::from_secs(30))
            .await;
        let mut s = js.get_stream(&stream).await.unwrap();
        s.info().await.unwrap().config.num_replicas
    };
    assert_eq!(replicas, 3, "the bridge created the stream with 3 replicas");
    let mut kills = Vec::new();
    let mut killed = Vec::new();
    for round in 0..2 {
        // Before the first kill the load already ran while the stream was being created.
        tokio::time::sleep(Duration::from_secs(if round == 0 { 2 } else { 4 })).await;
        let leader = cluster
            .stream_leader(&stream, Duration::from_secs(30))
            .await;
        // The second kill is another node: the leader elected after the first, unless the
        // restarted one took leadership back.
        let victim = if killed.contains(&leader) {
            (0..3).find(|i| !killed.contains(i)).unwrap()
        } else {
            leader
        };
        // A watcher on the survivors times the election.
        let js = cluster.jetstream().await;
        cluster.kill9(victim);
        let at = t0.elapsed();
        let elected = {
            let (stream, victim) = (stream.clone(), cluster.name(victim).to_owned());
            tokio::spawn(async move {
                wait_stream_leader(&js, &stream, Some(&victim), Duration::from_secs(60)).await;
                t0.elapsed()
            })
        };
        eprintln!(
            "cluster: round {round}: SIGKILL {} (stream leader: {}) at {at:?}, {} acknowledged",
            cluster.name(victim),
            cluster.name(leader),
            load.acked_count()
        );
        kills.push((
            at,
            cluster.name(victim).to_owned(),
            victim == leader,
            elected,
        ));
        killed.push(victim);
        tokio::time::sleep(Duration::from_secs(6)).await;
        cluster.restart(victim).await;
        eprintln!(
            "cluster: round {round}: restarted {} at {:?}",
            cluster.name(victim),
            t0.elapsed()
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (acked, mut ack_times, failed) = load.stop().await;
    let client = http_client();
    let ready = wait_drained(&client, bridge.admin, Duration::from_secs(120))
        .await
        .expect("the backlog drains once the cluster is whole");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_sampling.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap();

    let js = cluster.jetstream().await;
    let msgs = read_stream(&js, &stream, acked.len(), Duration::from_secs(60)).await;
    let got = nats_arrivals(&msgs);
    let (duplicates, disordered) = lost_duplicates_disorder("cluster", &acked, &got);
    assert_eq!(duplicates, 0, "Nats-Msg-Id de-duplication leaves one copy");
    assert!(
        disordered.is_empty(),
        "per-resource order broken for {disordered:?}"
    );
    let not_ready: Vec<&Sample> = samples.iter().filter(|s| s.ready_status != 200).collect();
    assert!(
        not_ready.is_empty(),
        "/readyz must stay 200 while the cluster elects: {not_ready:?}"
    );
    // After the drain the last publish succeeded: both say so.
    assert_eq!(ready["broker"], "up", "{ready}");
    assert_eq!(
        metric(&client, bridge.admin, "hookbridge_broker_up", "").await,
        1.0
    );

    let mut report = Vec::new();
    let mut elections = Vec::new();
    for (_, _, _, elected) in kills.iter_mut() {
        elections.push(elected.await.unwrap());
    }
    for (i, (at, name, was_leader, _)) in kills.iter().enumerate() {
        let to = kills.get(i + 1).map_or(Duration::MAX, |k| k.0);
        let (stall, began, down) = stall_in(&samples, *at, to);
        // Publishes in flight at the dead leader fail, and so do those sent during the
        // election: the admin endpoint must say so while nothing gets through.
        assert!(
            down,
            "kill {}: nothing published for {stall:?}, yet /readyz and hookbridge_broker_up \
             never said the broker was down",
            i + 1
        );
        report.push(format!(
            "kill {} of {name} ({}) at {at:.1?}: new stream leader after {:.1?}, longest \
             publish stall {stall:.1?} (from {began:.1?}), broker reported down in it: {down}",
            i + 1,
            if *was_leader {
                "stream leader"
            } else {
                "follower"
            },
            elections[i].saturating_sub(*at),
        ));
    }
    // Stalls that ended before the first kill: the publishing rhythm without a failure.
    let before_kills: Vec<Sample> = samples
        .iter()
        .filter(|s| s.at <= kills[0].0)
        .cloned()
        .collect();
    let (baseline, _, _) = stall_in(&before_kills, Duration::ZERO, kills[0].0);
    let down_samples = samples.iter().filter(|s| s.broker_up == 0.0).count();
    eprintln!(
        "RESULT clustered JetStream (3 servers, R3, {}; request_timeout {request_timeout}, \
         retry_max {retry_max}): {} acknowledged ({failed} \
         POSTs without 2xx), {} in the stream, 0 lost, {duplicates} duplicates, per-resource \
         order kept over {} resources; {}; longest publish gap before the first kill \
         {baseline:.1?}; longest gap between 2xx answers {:.1?}; /readyz 200 in all {} samples, \
         broker_up 0 in {down_samples} samples",
        nats_server_version(),
        acked.len(),
        got.len(),
        acked.iter().map(|a| &a.rid).collect::<HashSet<_>>().len(),
        report.join("; "),
        longest_gap(&mut ack_times),
        samples.len(),
    );
}

fn nats_server_version() -> String {
    std::process::Command::new(nats_server_bin())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// 2. Partitioned Kafka
// ---------------------------------------------------------------------------------------------

fn kafka_env(dir: &Path, prefix: &str, tansu: &Tansu, partitions: u32) -> Vec<(String, String)> {
    let mut env = kafka_bridge_env(dir, prefix, &tansu.brokers());
    set(
        &mut env,
        "HOOKBRIDGE_SINK__KAFKA__PARTITIONS",
        partitions.to_string(),
    );
    env
}

/// Partitions of `topic` as the broker reports them.
async fn partition_count(brokers: &str, topic: &str) -> usize {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        let md = c
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .unwrap();
        md.topics()[0].partitions().len()
    })
    .await
    .unwrap()
}

/// 1,200 changes to 50 resources from 10 concurrent clients, on a topic the bridge created with
/// 8 partitions: kafka-python finds every resource in one partition, its changes in order, and
/// the resources spread over several partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_partitions_keep_each_resource_in_order() {
    if !require(&[Tier::Kafka, Tier::Python]) {
        return;
    }
    let _serial = serial().await;
    let tansu = Tansu::started().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("kpart");
    let topic = format!("{prefix}.{ACTION}");
    let bridge = BridgeProcess::spawn(&kafka_env(dir.path(), &prefix, &tansu, 8)).await;
    let client = http_client();
    let url = bridge.url(PATH);
    let mut tasks = Vec::new();
    for w in 0..10u64 {
        let (client, url, prefix) = (client.clone(), url.clone(), prefix.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..120u64 {
                let (k, n) = (i % 5, i / 5);
                let rid = format!("{prefix}-w{w}-r{k}");
                let id = format!("{prefix}-{w}-{k}-{n}");
                assert_eq!(post(&client, &url, &id, body(ACTION, &rid, n)).await, 200);
                acked.push(Ack { id, rid, n });
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    wait_drained(&client, bridge.admin, Duration::from_secs(60))
        .await
        .expect("drained");
    assert_eq!(partition_count(&tansu.brokers(), &topic).await, 8);
    let records = kafka_python_consume(
        &tansu.brokers(),
        std::slice::from_ref(&topic),
        acked.len(),
        Duration::from_secs(60),
    )
    .await;
    // kafka-python reads partition by partition; order is only defined within one.
    let mut by_partition: BTreeMap<i32, Vec<&KafkaRecord>> = BTreeMap::new();
    for r in &records {
        by_partition.entry(r.partition).or_default().push(r);
    }
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    let mut arrivals = Vec::new();
    for (p, rs) in by_partition.iter_mut() {
        rs.sort_by_key(|r| r.offset);
        for r in rs.iter() {
            let v = r.json();
            let rid = v["data"]["id"].as_str().unwrap().to_owned();
            assert_eq!(r.key.as_deref(), Some(rid.as_str()), "keyed by data.id");
            let first = *partition_of.entry(rid.clone()).or_insert(*p);
            assert_eq!(first, *p, "resource {rid} in partitions {first} and {p}");
            arrivals.push(Arrival {
                id: r.header("webhook-id").unwrap().to_owned(),
                rid,
                n: v["data"]["n"].as_u64().unwrap(),
            });
        }
    }
    let (duplicates, disordered) = lost_duplicates_disorder("partitions", &acked, &arrivals);
    assert!(
        disordered.is_empty(),
        "out of order within a partition: {disordered:?}"
    );
    assert!(
        by_partition.len() > 1,
        "50 keys on 8 partitions use more than one"
    );
    let sizes: Vec<usize> = by_partition.values().map(Vec::len).collect();
    eprintln!(
        "RESULT Kafka 8 partitions (tansu): {} changes to {} resources from 10 clients, \
         {} records read by kafka-python, {duplicates} duplicates, every resource in one \
         partition and in order; records per partition {sizes:?}",
        acked.len(),
        partition_of.len(),
        records.len()
    );
}

/// A clean restart (SIGTERM) publishes nothing again: the confirmed position was persisted when
/// the spool closed. After the restart one new delivery is the only record published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_clean_restart_replays_nothing() {
    if !require(&[Tier::Kafka]) {
        return;
    }
    let _serial = serial().await;
    let tansu = Tansu::started().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("kterm");
    let topic = format!("{prefix}.{ACTION}");
    let env = kafka_env(dir.path(), &prefix, &tansu, 3);
    let mut bridge = BridgeProcess::spawn(&env).await;
    let client = http_client();
    for i in 0..300u64 {
        let rid = format!("{prefix}-r{}", i % 10);
        let status = post(
            &client,
            &bridge.url(PATH),
            &format!("{prefix}-{i}"),
            body(ACTION, &rid, i),
        )
        .await;
        assert_eq!(status, 200);
    }
    wait_drained(&client, bridge.admin, Duration::from_secs(60))
        .await
        .expect("drained");
    bridge.sigterm();
    let status = bridge
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status}");
    let bridge = BridgeProcess::spawn(&env).await;
    let rid = format!("{prefix}-r0");
    let id = format!("{prefix}-after");
    assert_eq!(
        post(&client, &bridge.url(PATH), &id, body(ACTION, &rid, 300)).await,
        200
    );
    wait_drained(&client, bridge.admin, Duration::from_secs(60))
        .await
        .expect("drained");
    let published = metric(&client, bridge.admin, "hookbridge_published_total", "").await;
    assert_eq!(
        published, 1.0,
        "the restarted bridge published only the new delivery"
    );
    let records = kafka_read_all(&tansu.brokers(), &topic, Duration::from_secs(60)).await;
    let ids: HashSet<&str> = records
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert_eq!(ids.len(), 301);
    assert_eq!(records.len(), 301, "no record published twice");
    eprintln!("RESULT Kafka SIGTERM restart: 300 published before, 1 after, 0 replayed");
}

/// Duplicates per SIGKILL at the default `spool.confirm_interval` (100 ms): 8 writers post
/// without pause; the bridge is SIGKILLed after a random 0.5–1.5 s, writers pause, the bridge
/// restarts on its spool and drains; the new duplicates at the broker are that kill's. Nothing
/// acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_duplicates_per_sigkill() {
    if !require(&[Tier::Kafka]) {
        return;
    }
    let _serial = serial().await;
    let cycles = std::env::var("HOOKBRIDGE_SCALE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5u32);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tansu = Tansu::started().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("kkill");
    let topic = format!("{prefix}.{ACTION}");
    let env = kafka_env(dir.path(), &prefix, &tansu, 3);
    let mut bridge = BridgeProcess::spawn(&env).await;
    let client = http_client();
    let load = Load::start(bridge.url(PATH), &prefix, 8, 4, Duration::ZERO);
    let mut per_kill = Vec::new();
    let mut replayed = Vec::new();
    let mut rates = Vec::new();
    let mut duplicates_so_far = 0;
    for c in 0..cycles {
        let before = load.acked_count();
        let ran = Duration::from_millis(rng.random_range(500..1500));
        tokio::time::sleep(ran).await;
        bridge.kill9();
        load.running.store(false, Ordering::Relaxed);
        let acked_now = load.acked_count();
        rates.push((acked_now - before) as f64 / ran.as_secs_f64());
        bridge = BridgeProcess::spawn(&env).await;
        *load.url.write().unwrap() = bridge.url(PATH);
        wait_drained(&client, bridge.admin, Duration::from_secs(60))
            .await
            .expect("drained after restart");
        // With the writers paused, all the new process published is the replay.
        replayed.push(metric(&client, bridge.admin, "hookbridge_published_total", "").await as u64);
        let records = kafka_read_all(&tansu.brokers(), &topic, Duration::from_secs(60)).await;
        let distinct: HashSet<&str> = records
            .iter()
            .map(|r| r.header("webhook-id").unwrap())
            .collect();
        let duplicates = records.len() - distinct.len();
        per_kill.push(duplicates - duplicates_so_far);
        duplicates_so_far = duplicates;
        eprintln!(
            "Kafka SIGKILL {c}: after {ran:?}, {acked_now} acknowledged, {} duplicates from this kill",
            per_kill[c as usize]
        );
        load.running.store(true, Ordering::Relaxed);
    }
    let (acked, _, failed) = load.stop().await;
    wait_drained(&client, bridge.admin, Duration::from_secs(60))
        .await
        .expect("drained");
    let records = kafka_read_all(&tansu.brokers(), &topic, Duration::from_secs(60)).await;
    let got: Vec<Arrival> = records
        .iter()
        .map(|r| Arrival {
            id: r.header("webhook-id").unwrap().to_owned(),
            rid: r.key.clone().unwrap(),
            n: r.json()["data"]["n"].as_u64().unwrap(),
        })
        .collect();
    let (duplicates, disordered) = lost_duplicates_disorder("kafka kills", &acked, &got);
    assert!(disordered.is_empty(), "out of order: {disordered:?}");
    let mut sorted = per_kill.clone();
    sorted.sort_unstable();
    eprintln!(
        "RESULT Kafka duplicates per SIGKILL (confirm_interval 100ms, seed {seed}): {per_kill:?} \
         (median {}, max {}); records republished per restart {replayed:?}; ack rate before \
         each kill {:?}/s; {} acknowledged, {failed} POSTs without 2xx, 0 lost, {duplicates} \
         duplicates in all",
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        rates.iter().map(|r| r.round() as u64).collect::<Vec<_>>(),
        acked.len(),
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Several replicas behind HAProxy
// ---------------------------------------------------------------------------------------------

/// What the retrying sender saw.
#[derive(Debug, Default)]
struct SenderStats {
    attempts: u64,
    connection_errors: u64,
    by_status: BTreeMap<u16, u64>,
    longest_until_2xx: Duration,
}

/// Delivers one message like Svix does: until a 2xx, retrying connection errors, timeouts, 429
/// and 5xx with exponential backoff (50 ms doubling to 2 s, jittered), or after `Retry-After`
/// when the answer has one. Returns the replica that answered (`x-served-by`).
async fn deliver(
    client: &HttpClient,
    url: &str,
    id: &str,
    body: &str,
    stats: &Mutex<SenderStats>,
) -> String {
    let started = Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(15),
            request(
                client,
                "POST",
                url,
                &[("content-type", "application/json"), ("webhook-id", id)],
                body.to_owned(),
            ),
        )
        .await;
        let wait = {
            let mut s = stats.lock().unwrap();
            s.attempts += 1;
            match attempt {
                Ok(Ok((status, headers, _))) => {
                    *s.by_status.entry(status).or_default() += 1;
                    match status {
                        200..=299 => {
                            s.longest_until_2xx = s.longest_until_2xx.max(started.elapsed());
                            return headers
                                .get("x-served-by")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("?")
                                .to_owned();
                        }
                        429 | 500..=599 => headers
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                            .map(Duration::from_secs),
                        s => panic!("{id}: the sender does not retry {s}"),
                    }
                }
                Ok(Err(_)) | Err(_) => {
                    s.connection_errors += 1;
                    None
                }
            }
        };
        let jitter = rand::rng().random_range(0.5..1.0);
        tokio::time::sleep(wait.unwrap_or(delay.mul_f64(jitter))).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Two replicas (own spools, own ports) behind HAProxy, round robin, health-checked on `/readyz`.
/// 8 Svix-like senders deliver changes to 48 resources; replica r0 is SIGKILLed while the broker
/// is briefly frozen (so it dies holding acknowledged, unpublished deliveries), and restarted
/// 6 s later. Nothing acknowledged is lost, and what r0 had acknowledged but not published is
/// published once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_behind_haproxy_lose_nothing_when_one_is_killed() {
    if !require(&[Tier::Haproxy, Tier::NatsServer]) {
        return;
    }
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::new(&dir.path().join("nats"));
    nats.start().await;
    let prefix = unique("rep");
    let stream = prefix.to_uppercase();
    let backends: Vec<Backend> = (0..2)
        .map(|_| Backend {
            ingress: broker_port(),
            admin: broker_port(),
        })
        .collect();
    let envs: Vec<Vec<(String, String)>> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut env = bridge_env(&dir.path().join(format!("spool{i}")), &prefix, &stream);
            set(&mut env, "HOOKBRIDGE_SINK__NATS__URL", nats.url());
            set(
                &mut env,
                "HOOKBRIDGE_HTTP__LISTEN",
                format!("127.0.0.1:{}", b.ingress),
            );
            set(
                &mut env,
                "HOOKBRIDGE_ADMIN__LISTEN",
                format!("127.0.0.1:{}", b.admin),
            );
            env
        })
        .collect();
    let mut replicas = Vec::new();
    for env in &envs {
        replicas.push(BridgeProcess::spawn(env).await);
    }
    let proxy = Haproxy::start(dir.path(), &backends).await;
    let url = proxy.url(PATH);

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new(SenderStats::default()));
    let client = http_client();
    let mut senders = Vec::new();
    for w in 0..8u64 {
        let (client, url, stop, stats, prefix) = (
            client.clone(),
            url.clone(),
            stop.clone(),
            stats.clone(),
            prefix.clone(),
        );
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (k, n) = (i % 6, i / 6);
                i += 1;
                let rid = format!("{prefix}-w{w}-r{k}");
                let id = format!("{prefix}-{w}-{k}-{n}");
                let served_by = deliver(&client, &url, &id, &body(ACTION, &rid, n), &stats).await;
                acked.push((Ack { id, rid, n }, served_by, Instant::now()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The broker stops answering for a moment, so r0 holds acknowledged deliveries when it dies.
    let frozen_at = Instant::now();
    nats.freeze();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let backlog_r0 = metric(&client, replicas[0].admin, "hookbridge_spool_records", "").await;
    replicas[0].kill9();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.thaw();
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Before r0 is back: what it acknowledged and did not publish is missing from the stream.
    let js = jetstream(&nats.url()).await;
    let before: HashSet<String> = read_stream(&js, &stream, 0, Duration::ZERO)
        .await
        .iter()
        .map(|m| m.header("webhook-id").unwrap().to_owned())
        .collect();
    replicas[0] = BridgeProcess::spawn(&envs[0]).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let mut timed = Vec::new();
    for s in senders {
        timed.extend(s.await.unwrap());
    }
    let acked: Vec<Ack> = timed.iter().map(|(a, _, _)| a.clone()).collect();
    for r in &replicas {
        wait_drained(&client, r.admin, Duration::from_secs(60))
            .await
            .expect("both replicas drain");
    }
    let msgs = read_stream(&js, &stream, acked.len(), Duration::from_secs(60)).await;
    let got = nats_arrivals(&msgs);
    let (duplicates, disordered) = lost_duplicates_disorder("replicas", &acked, &got);
    // Acknowledged by r0 before it was killed, not in the stream until it was back.
    let waiting: Vec<&Ack> = timed
        .iter()
        .filter(|(a, by, at)| *at < killed_at && by == "r0" && !before.contains(&a.id))
        .map(|(a, _, _)| a)
        .collect();
    // Order across replicas in normal operation: the changes acknowledged before the freeze.
    let calm: Vec<Ack> = timed
        .iter()
        .filter(|(_, _, at)| *at < frozen_at)
        .map(|(a, _, _)| a.clone())
        .collect();
    let calm_ids: HashSet<&str> = calm.iter().map(|a| a.id.as_str()).collect();
    let calm_got: Vec<Arrival> = got
        .iter()
        .filter(|a| calm_ids.contains(a.id.as_str()))
        .cloned()
        .collect();
    let (_, calm_disordered) = lost_duplicates_disorder("replicas, calm", &calm, &calm_got);
    assert!(
        !waiting.is_empty(),
        "r0 was killed holding {backlog_r0} unpublished records, yet all it acknowledged was \
         published before it came back"
    );
    let by_replica = timed.iter().fold(BTreeMap::new(), |mut m, (_, by, _)| {
        *m.entry(by.as_str()).or_insert(0u64) += 1;
        m
    });
    let stats = stats.lock().unwrap();
    eprintln!(
        "RESULT two replicas behind HAProxy, r0 SIGKILLed and restarted 6 s later: {} \
         acknowledged {by_replica:?}, 0 lost, {duplicates} duplicates in the stream; r0 held \
         {backlog_r0} unpublished records at the kill, {} of its acknowledged deliveries \
         published only after its restart; resources out of order across replicas: {} of {} \
         ({} adjacent inversions), and {} ({} inversions) among the {} changes acknowledged \
         before the broker froze; sender: {} attempts, {} connection errors, statuses {:?}, \
         longest time to a 2xx {:.1?}",
        acked.len(),
        waiting.len(),
        disordered.len(),
        acked.iter().map(|a| &a.rid).collect::<HashSet<_>>().len(),
        inversions(&got),
        calm_disordered.len(),
        inversions(&calm_got),
        calm.len(),
        stats.attempts,
        stats.connection_errors,
        stats.by_status,
        stats.longest_until_2xx,
    );
}
