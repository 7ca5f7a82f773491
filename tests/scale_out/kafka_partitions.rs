//! A multi-partition Kafka topic on tansu: per-resource order, a clean restart that republishes
//! nothing, and duplicates per SIGKILL.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::{Rng, SeedableRng};

use super::common::load::Load;
use super::common::*;
use super::delivered::{Ack, Arrival};
use super::{lost_duplicates_disorder, serial, set, ACTION, PATH};

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
    let load = Load::start(bridge.url(PATH), &prefix, ACTION, 8, 4, Duration::ZERO);
    let mut per_kill = Vec::new();
    let mut replayed = Vec::new();
    let mut rates = Vec::new();
    let mut duplicates_so_far = 0;
    for c in 0..cycles {
        // Each process, the first and every restarted one, must take deliveries.
        load.wait_acked_by_current("Kafka SIGKILL", Duration::from_secs(30))
            .await;
        let before = load.acked_count();
        let ran = Duration::from_millis(rng.random_range(500..1500));
        tokio::time::sleep(ran).await;
        bridge.kill9();
        load.running.store(false, Ordering::Relaxed);
        let acked_now = load.acked_count();
        rates.push((acked_now - before) as f64 / ran.as_secs_f64());
        bridge = BridgeProcess::spawn(&env).await;
        load.retarget(bridge.url(PATH));
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
    load.wait_acked_by_current("Kafka SIGKILL", Duration::from_secs(30))
        .await;
    let out = load.stop().await;
    let failed = out.failed();
    let acked = out.acked;
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
