//! Reads what hookbridge published to Kafka: a consumer group on every `sessionboard.*` topic
//! (a regex subscription, so topics created later are picked up), offsets committed after each
//! record is handled, and de-duplication on the delivery id.
//!
//! ```text
//! cargo run --example consume_kafka -- [--brokers 127.0.0.1:9092] [--prefix sessionboard.]
//!     [--group sessionboard-example] [--count N] [--timeout 30s]
//! ```
//! Prints one line per record: `handled <action> resource=<data.id> id=<delivery id>
//! topic=<topic>/<partition>@<offset>`, or `skipped duplicate id=<delivery id> …` for a delivery
//! id it already handled. The group's committed offsets live in the broker, so a restart goes on
//! where the last run stopped. Exits after `--count` records, or when none has arrived for
//! `--timeout` (exit code 1 if `--count` was given and not reached).

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use clap::Parser;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;

#[derive(Parser)]
#[command(about = "Consumer group for what hookbridge publishes to Kafka")]
struct Args {
    /// Bootstrap servers (`sink.kafka.brokers`).
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topic prefix (`routing.prefix`): subscribes to `^<prefix>.*`.
    #[arg(long, default_value = "sessionboard.")]
    prefix: String,
    /// Consumer group: the broker keeps its committed offsets across runs.
    #[arg(long, default_value = "sessionboard-example")]
    group: String,
    /// Exit after this many records (duplicates included).
    #[arg(long)]
    count: Option<u64>,
    /// Exit when no record has arrived for this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// How often the topic list is refreshed, i.e. how soon a new topic matching the prefix is
    /// read.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    refresh: Duration,
    /// Delivery ids remembered for de-duplication (oldest forgotten first).
    #[arg(long, default_value_t = 100_000)]
    remember: usize,
}

/// The delivery ids handled most recently, at most `cap` of them.
///
/// In memory only, so it forgets across restarts: a real consumer persists the ids it handled
/// together with its own state (in the same database transaction as the change the record
/// caused), which is what makes the de-duplication exact.
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
    cap: usize,
}

impl Seen {
    fn new(cap: usize) -> Seen {
        Seen {
            ids: HashSet::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Records `id`; false if it was already there.
    fn insert(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == self.cap {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.ids.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

/// `^<prefix>.*` with the prefix's regex metacharacters escaped (a prefix is `[A-Za-z0-9._-]`,
/// so only the dots need it).
fn subscription(prefix: &str) -> String {
    format!("^{}.*", prefix.replace('.', "\\."))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
    let args = Args::parse();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", &args.group)
        // Offsets are committed by hand, after a record is handled: a crash in between means the
        // record is read again (at-least-once), never skipped.
        .set("enable.auto.commit", "false")
        // A new group starts at the oldest record still kept.
        .set("auto.offset.reset", "earliest")
        .set(
            "topic.metadata.refresh.interval.ms",
            args.refresh.as_millis().to_string(),
        )
        .create()?;
    consumer.subscribe(&[&subscription(&args.prefix)])?;
    let mut seen = Seen::new(args.remember);
    let mut received = 0u64;
    while args.count.is_none_or(|c| received < c) {
        let m = match tokio::time::timeout(args.timeout, consumer.recv()).await {
            Ok(m) => m?,
            Err(_) => break,
        };
        received += 1;
        let header = |name: &str| {
            m.headers()
                .and_then(|h| h.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_else(|| "-".to_owned())
        };
        let (id, action, resource) = (
            header("webhook-id"),
            header("sessionboard-action"),
            header("sessionboard-resource-id"),
        );
        if seen.insert(&id) {
            // The work a real consumer does goes here. The record key is `data.id`, so every
            // change to one resource is in one partition, in the order the bridge received it.
            println!(
                "handled {action} resource={resource} id={id} topic={}/{}@{}",
                m.topic(),
                m.partition(),
                m.offset()
            );
        } else {
            println!("skipped duplicate id={id} action={action} resource={resource}");
        }
        // Commit after handling (a duplicate too, or it would be read again after a restart).
        consumer.commit_message(&m, CommitMode::Sync)?;
    }
    Ok(match args.count {
        Some(c) if received < c => {
            eprintln!("consume_kafka: {received} of {c} records before --timeout");
            std::process::ExitCode::FAILURE
        }
        _ => std::process::ExitCode::SUCCESS,
    })
}
