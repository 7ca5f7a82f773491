//! Fault tests against the real binary and real brokers: the promise "a 2xx means it will reach
//! the broker" under SIGKILL crash loops, broker outages (stopped and SIGSTOPped), a full spool
//! (quota and a really full filesystem) and SIGTERM under load. One binary (`--test faults`), a module
//! per fault: [`crash_loop`], [`outage`], [`spool_full`], [`graceful`], [`damaged`].
//!
//! Sizes come from the environment so CI stays fast and a human can turn them up:
//! - `HOOKBRIDGE_FAULT_CYCLES` (default 5): SIGKILL/restart cycles per crash-loop test;
//! - `HOOKBRIDGE_FAULT_OUTAGE` (default 20000): deliveries posted during the two big outages
//!   (NATS stopped, Kafka stopped, a long Kafka freeze);
//! - `HOOKBRIDGE_FAULT_OUTAGE_SMALL` (default 2000): deliveries for the other two outage
//!   combinations (NATS frozen, short Kafka freeze), which are smaller by default to keep this file's
//!   total CI time within a few minutes;
//! - `HOOKBRIDGE_FAULT_SEED`: seed for the random kill delays (printed by every run);
//! - `HOOKBRIDGE_FAULT_LOG`: `RUST_LOG` for the bridge in the SIGTERM tests (default `warn`).
//!
//! The two tests on a tmpfs (the full filesystem and the `spool.min_free_bytes` guard) must mount
//! one, which needs root: they are `#[ignore]`d, and CI (root) runs them with
//! `cargo test --test faults -- --ignored`.
//!
//! Figures (acknowledged, arrived, duplicates, ack rate, replay time) are printed with
//! `eprintln!` (run with `--nocapture` to see them); nothing here asserts on speed, timeouts are
//! only failure guards.

#[path = "../common/mod.rs"]
mod common;

mod crash_loop;
mod damaged;
mod graceful;
mod outage;
mod spool_full;

use std::path::Path;
use std::time::Duration;

use common::delivered::{self, Ack, Arrival, Tally};
use common::*;

const PATH: &str = "/webhooks/sessionboard";
const ACTION: &str = "contact.updated";

/// How long a restarted bridge may take to acknowledge its first delivery under load.
const RESTART_ACKS: Duration = Duration::from_secs(30);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Broker {
    Nats,
    Kafka,
}

async fn arrivals_nats(url: &str, stream: &str, want: usize) -> Vec<Arrival> {
    let js = jetstream(url).await;
    read_stream(&js, stream, want, Duration::from_secs(60))
        .await
        .iter()
        .map(|m| Arrival {
            id: m.header("webhook-id").unwrap().to_owned(),
            rid: m.header("sessionboard-resource-id").unwrap().to_owned(),
            n: m.json()["data"]["n"].as_u64().unwrap(),
        })
        .collect()
}

async fn arrivals_kafka(brokers: &str, topic: &str) -> Vec<Arrival> {
    let all = kafka_read_all(brokers, topic, Duration::from_secs(120)).await;
    all.iter()
        .map(|r| Arrival {
            id: r.header("webhook-id").unwrap().to_owned(),
            rid: r.key.clone().unwrap(),
            n: r.json()["data"]["n"].as_u64().unwrap(),
        })
        .collect()
}

/// [`delivered::tally`], which fails on a lost delivery, failing on disorder too.
fn check(label: &str, acked: &[Ack], got: &[Arrival]) -> Tally {
    let t = delivered::tally(label, acked, got);
    assert!(
        t.disordered.is_empty(),
        "{label}: acknowledged changes out of order for {:?}",
        t.disordered
    );
    t
}

/// Environment for the real binary on `broker`: a NATS url + stream, or Kafka brokers.
/// Stops `bridge`, then deletes the JetStream stream of `prefix` (a Kafka run's topics go with
/// its tansu).
async fn stop_and_clean(bridge: BridgeProcess, broker: Broker, target: &str, prefix: &str) {
    drop(bridge);
    if broker == Broker::Nats {
        delete_stream(&jetstream(target).await, &prefix.to_uppercase()).await;
    }
}

/// The broker a test runs against: a tansu it started (kept alive by the caller) and its
/// address, or the shared NATS server's URL.
async fn start_broker(broker: Broker) -> (Option<Tansu>, String) {
    match broker {
        Broker::Kafka => {
            let tansu = Tansu::started().await;
            let target = tansu.brokers();
            (Some(tansu), target)
        }
        Broker::Nats => (None, nats_url()),
    }
}

fn env_for(broker: Broker, dir: &Path, prefix: &str, target: &str) -> Vec<(String, String)> {
    match broker {
        Broker::Nats => {
            let mut env = bridge_env(dir, prefix, &prefix.to_uppercase());
            env.push(("HOOKBRIDGE_SINK__NATS__URL".into(), target.to_owned()));
            env
        }
        Broker::Kafka => kafka_bridge_env(dir, prefix, target),
    }
}
