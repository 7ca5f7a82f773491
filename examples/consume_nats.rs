//! Reads what hookbridge published to NATS JetStream: a durable pull consumer on the bridge's
//! stream, explicit acks, and de-duplication on the delivery id.
//!
//! ```text
//! cargo run --example consume_nats -- [--url nats://127.0.0.1:4222] [--stream SESSIONBOARD]
//!     [--prefix sessionboard.] [--durable sessionboard-example] [--count N] [--timeout 30s]
//! ```
//! Prints one line per message: `handled <action> resource=<data.id> id=<delivery id>
//! subject=<subject>`, or `skipped duplicate id=<delivery id> …` for a delivery id it already
//! handled. The durable consumer remembers (on the server) what was acked, so a restart goes on
//! where the last run stopped. Exits after `--count` messages, or when none has arrived for
//! `--timeout` (exit code 1 if `--count` was given and not reached).

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use clap::Parser;
use futures_util::StreamExt;

#[derive(Parser)]
#[command(about = "Durable JetStream consumer for what hookbridge publishes")]
struct Args {
    /// NATS server URL(s) (`sink.nats.url`).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    url: String,
    /// The bridge's stream (`sink.nats.stream`).
    #[arg(long, default_value = "SESSIONBOARD")]
    stream: String,
    /// Subject prefix (`routing.prefix`): the consumer filters `<prefix>>`; empty for the whole
    /// stream.
    #[arg(long, default_value = "sessionboard.")]
    prefix: String,
    /// Durable consumer name: the server keeps its position across runs.
    #[arg(long, default_value = "sessionboard-example")]
    durable: String,
    /// Exit after this many messages (duplicates included).
    #[arg(long)]
    count: Option<u64>,
    /// Exit when no message has arrived for this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Delivery ids remembered for de-duplication (oldest forgotten first).
    #[arg(long, default_value_t = 100_000)]
    remember: usize,
}

/// The delivery ids handled most recently, at most `cap` of them.
///
/// In memory only, so it forgets across restarts: a real consumer persists the ids it handled
/// together with its own state (in the same database transaction as the change the message
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<std::process::ExitCode, Box<dyn std::error::Error + Send + Sync>> {
    let args = Args::parse();
    let client = async_nats::connect(&args.url).await?;
    let js = jetstream::new(client);
    let stream = js.get_stream(&args.stream).await?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            &args.durable,
            pull::Config {
                durable_name: Some(args.durable.clone()),
                ack_policy: AckPolicy::Explicit,
                filter_subject: if args.prefix.is_empty() {
                    String::new()
                } else {
                    format!("{}>", args.prefix)
                },
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    let mut seen = Seen::new(args.remember);
    let mut received = 0u64;
    while args.count.is_none_or(|c| received < c) {
        let m = match tokio::time::timeout(args.timeout, messages.next()).await {
            Ok(Some(m)) => m?,
            Ok(None) => break,
            Err(_) => break,
        };
        received += 1;
        let header = |name: &str| {
            m.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_else(|| "-".to_owned())
        };
        let (id, action, resource) = (
            header("webhook-id"),
            header("sessionboard-action"),
            header("sessionboard-resource-id"),
        );
        if seen.insert(&id) {
            // The work a real consumer does goes here. Messages of one resource arrive in the
            // order the bridge received them (it publishes the next change to a resource only
            // after the previous one was acknowledged by the stream).
            println!(
                "handled {action} resource={resource} id={id} subject={}",
                m.subject
            );
        } else {
            println!("skipped duplicate id={id} action={action} resource={resource}");
        }
        // Explicit ack once the work is done (a duplicate is acked too, or it would come back);
        // the double ack waits for the server to confirm, so an exit right after loses nothing.
        m.double_ack().await?;
    }
    Ok(match args.count {
        Some(c) if received < c => {
            eprintln!("consume_nats: {received} of {c} messages before --timeout");
            std::process::ExitCode::FAILURE
        }
        _ => std::process::ExitCode::SUCCESS,
    })
}
