//! Scaling out, against real processes on loopback: a three-server JetStream cluster whose stream
//! leader is SIGKILLed under load, a multi-partition Kafka topic (tansu) read back by kafka-python,
//! crash duplicates at the default `spool.confirm_interval`, and two bridge replicas behind HAProxy
//! with a sender that retries like Svix while one replica is SIGKILLed.
//!
//! `HOOKBRIDGE_SCALE_REQUEST_TIMEOUT` and `HOOKBRIDGE_SCALE_RETRY_MAX` (default `5s`, the
//! bridge's defaults) set `sink.nats.request_timeout` and `forward.retry_max` for the cluster
//! test, to compare stalls; `HOOKBRIDGE_SCALE_KILLS` (default 5) the SIGKILLs of the Kafka test.
//!
//! One binary (`--test scale_out`), a module per setup: [`jetstream_cluster`], [`kafka_partitions`],
//! [`replicas`]. Its tests run one at a time (they share two cores with their brokers, and the
//! stall figures would otherwise measure the other tests). Figures are printed as `RESULT …`
//! lines (`cargo test --test scale_out -- --nocapture`); nothing asserts on speed.

#[path = "../common/mod.rs"]
mod common;

mod jetstream_cluster;
mod kafka_partitions;
mod replicas;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::delivered::{self, Ack, Arrival};
use common::*;

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

/// Longest gap between consecutive instants (sorted).
fn longest_gap(times: &mut [Instant]) -> Duration {
    times.sort_unstable();
    times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}
