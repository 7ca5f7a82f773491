//! SIGTERM under load: the exit within `shutdown.grace`, and nothing acknowledged lost.

use std::time::{Duration, Instant};

use super::common::load::Load;
use super::common::*;
use super::delivered::Ack;
use super::{
    arrivals_kafka, arrivals_nats, check, env_for, start_broker, stop_and_clean, Broker, ACTION,
    PATH, RESTART_ACKS,
};

/// SIGTERM while 16 clients post: every 2xx arrives (after a restart), every other answer is a
/// connection error or 503, and the process exits 0 within `shutdown.grace` (+ slack). With
/// `frozen`, the Kafka broker is SIGSTOPped at the time, so in-flight publishes hang and the
/// grace period is what bounds the exit.
async fn graceful(broker: Broker, frozen: bool) {
    let label = format!(
        "{broker:?} SIGTERM{}",
        if frozen { " (broker frozen)" } else { "" }
    );
    let grace = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("term");
    let (tansu, target) = start_broker(broker).await;
    let mut env = env_for(broker, dir.path(), &prefix, &target);
    env.push(("HOOKBRIDGE_SHUTDOWN__GRACE".into(), "5s".into()));
    if let Ok(l) = std::env::var("HOOKBRIDGE_FAULT_LOG") {
        env.push(("RUST_LOG".into(), l));
    }
    let mut bridge = BridgeProcess::spawn(&env).await;
    let client = http_client();
    let mut published_before = 0.0;
    if frozen {
        // Make the topic exist first, then freeze the broker with publishes in flight.
        let id = format!("{prefix}-warm");
        assert_eq!(
            post(&client, &bridge.url(PATH), &id, body(ACTION, "warm", 0)).await,
            200
        );
        wait_drained(&client, bridge.admin, Duration::from_secs(60))
            .await
            .expect("warm-up confirmed");
        published_before = published(&client, bridge.admin).await;
        tansu.as_ref().unwrap().freeze();
    }
    // 16 writers, one resource each.
    let load = Load::start(bridge.url(PATH), &prefix, ACTION, 16, 1, Duration::ZERO);
    load.wait_acked_by_current(&label, RESTART_ACKS).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if frozen {
        let acked = load.acked_count();
        assert_backlog_built(&client, bridge.admin, &label, published_before, acked).await;
    }
    let term = Instant::now();
    bridge.sigterm();
    let exit = bridge.wait_exit(grace + Duration::from_secs(10)).await;
    let took = term.elapsed();
    let exit = exit.unwrap_or_else(|| panic!("{label}: still running {took:?} after SIGTERM"));
    assert_eq!(exit.code(), Some(0), "{label}: exit status {exit:?}");
    assert!(
        took <= grace + Duration::from_secs(2),
        "{label}: exit took {took:?}, grace is {grace:?}"
    );
    if frozen {
        tansu.as_ref().unwrap().thaw();
    }
    // The writers go on against the restarted bridge, which must take deliveries again.
    let bridge = BridgeProcess::spawn(&env).await;
    load.retarget(bridge.url(PATH));
    load.wait_acked_by_current(&label, RESTART_ACKS).await;
    let out = load.stop().await;
    let (refused, conn_err) = (out.refused, out.unreachable);
    let mut acked = out.acked;
    if frozen {
        acked.push(Ack {
            id: format!("{prefix}-warm"),
            rid: "warm".into(),
            n: 0,
        });
    }
    wait_drained(&client, bridge.admin, Duration::from_secs(120))
        .await
        .expect("drains after restart");
    let got = match broker {
        Broker::Nats => arrivals_nats(&target, &prefix.to_uppercase(), acked.len()).await,
        Broker::Kafka => arrivals_kafka(&target, &format!("{prefix}.{ACTION}")).await,
    };
    let t = check(&label, &acked, &got);
    eprintln!(
        "RESULT {label}: exit code 0 after {took:?} (grace {grace:?}); {} acknowledged (before \
         and after the restart), {refused} answered 503, {conn_err} connection errors, 0 lost, {} records, \
         {} duplicates, {} arrived without a 2xx",
        t.acked, t.records, t.duplicates, t.unacked_arrived
    );
    stop_and_clean(bridge, broker, &target, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_nats() {
    if !require(&[Tier::Nats]) {
        return;
    }
    graceful(Broker::Nats, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_kafka() {
    if !require(&[Tier::Kafka]) {
        return;
    }
    graceful(Broker::Kafka, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_kafka_frozen_exits_within_grace() {
    if !require(&[Tier::Kafka]) {
        return;
    }
    graceful(Broker::Kafka, true).await;
}
