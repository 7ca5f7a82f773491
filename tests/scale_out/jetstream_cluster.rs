//! A bridge on a three-server JetStream cluster whose stream leader is SIGKILLed under load.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::common::cluster::{wait_stream_leader, NatsCluster};
use super::common::load::Load;
use super::common::*;
use super::{longest_gap, lost_duplicates_disorder, nats_arrivals, serial, set, ACTION, PATH};

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
    let load = Load::start(
        bridge.url(PATH),
        &prefix,
        ACTION,
        8,
        4,
        Duration::from_millis(20),
    );

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
    let out = load.stop().await;
    let failed = out.failed();
    let (acked, mut ack_times) = (out.acked, out.times);
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
