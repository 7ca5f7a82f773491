//! SIGKILL crash loops under load, on the same spool, for both sinks.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use super::common::load::Load;
use super::common::*;
use super::{
    arrivals_kafka, arrivals_nats, check, env_for, env_num, start_broker, stop_and_clean, Broker,
    ACTION, PATH, RESTART_ACKS,
};

/// Writers keep posting distinct deliveries (8 clients, each owning 4 resources with their own
/// sequence numbers) while the binary is SIGKILLed at random moments and restarted on the same
/// spool, `HOOKBRIDGE_FAULT_CYCLES` times. A failed POST is not retried: the next change is a new
/// delivery, so every duplicate at the broker is a replay by the bridge.
async fn crash_loop(broker: Broker) {
    let cycles = env_num("HOOKBRIDGE_FAULT_CYCLES", 5);
    let seed = env_num(
        "HOOKBRIDGE_FAULT_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("crash");
    let (_tansu, target) = start_broker(broker).await;
    let env = env_for(broker, dir.path(), &prefix, &target);
    let mut bridge = BridgeProcess::spawn(&env).await;
    let client = http_client();
    let load = Load::start(bridge.url(PATH), &prefix, ACTION, 8, 4, Duration::ZERO);
    let label = format!("{broker:?} crash loop");
    let started = Instant::now();
    for c in 0..cycles {
        // Every process, the first and each restarted one, must take deliveries: a bridge that
        // refused everything after a restart would otherwise pass on its predecessors' 2xx.
        load.wait_acked_by_current(&label, RESTART_ACKS).await;
        let delay = Duration::from_millis(rng.random_range(100..1500));
        tokio::time::sleep(delay).await;
        let before = load.acked_count();
        bridge.kill9();
        eprintln!("{label}: cycle {c}: SIGKILL after {delay:?}, {before} acknowledged so far");
        bridge = BridgeProcess::spawn(&env).await;
        load.retarget(bridge.url(PATH));
    }
    load.wait_acked_by_current(&label, RESTART_ACKS).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = load.stop().await;
    let load_time = started.elapsed();
    let failed = out.failed();
    let acked = out.acked;
    let drained = Instant::now();
    let ready = wait_drained(&client, bridge.admin, Duration::from_secs(120))
        .await
        .expect("backlog drains after the last restart");
    let drain_time = drained.elapsed();
    let got = match broker {
        Broker::Nats => arrivals_nats(&target, &prefix.to_uppercase(), acked.len()).await,
        Broker::Kafka => arrivals_kafka(&target, &format!("{prefix}.{ACTION}")).await,
    };
    let t = check(&label, &acked, &got);
    eprintln!(
        "RESULT {label} (seed {seed}): {cycles} SIGKILL cycles in {load_time:?}, \
         {} acknowledged, {} failed posts (no 2xx), lost 0, {} records at broker, {} distinct, \
         {} duplicates, {} distinct arrived without a 2xx; drain after last restart {drain_time:?} \
         ({ready})",
        t.acked, failed, t.records, t.distinct, t.duplicates, t.unacked_arrived
    );
    stop_and_clean(bridge, broker, &target, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_under_load_nats() {
    if !require(&[Tier::Nats]) {
        return;
    }
    crash_loop(Broker::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_under_load_kafka() {
    if !require(&[Tier::Kafka]) {
        return;
    }
    crash_loop(Broker::Kafka).await;
}
