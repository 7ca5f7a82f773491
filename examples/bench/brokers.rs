//! Broker-alone ceilings: the messages the bridge would publish (same subject/topic, key,
//! headers and body), published straight to the broker by a Rust client with up to `WINDOW`
//! acknowledgements in flight, no hookbridge in between. The most any bridge could forward here.

use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::load::Fixture;
use crate::procs::{PREFIX, STREAM};

/// Publishes in flight, like the forwarder's default `forward.max_in_flight`.
pub const WINDOW: usize = 1024;

pub struct AloneResult {
    pub confirmed: u64,
    pub elapsed: Duration,
}

impl AloneResult {
    pub fn rate(&self) -> f64 {
        self.confirmed as f64 / self.elapsed.as_secs_f64()
    }
}

/// The headers `forward::message` sets for a delivery of this fixture (unsigned requests carry no
/// `webhook-timestamp`).
fn headers(f: &Fixture, id: &str, n: u64) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("webhook-id", id.to_owned()),
        ("content-type", "application/json".to_owned()),
        ("sessionboard-action", f.action.clone()),
        ("sessionboard-resource-id", Fixture::resource(n)),
        ("sessionboard-org-id", f.org_id.clone()),
    ];
    if let Some(e) = &f.event_id {
        h.push(("sessionboard-event-id", e.clone()));
    }
    h
}

/// JetStream: a stream like the one the bridge creates (subjects `<prefix>>`, defaults
/// otherwise), `publish_with_headers` with `Nats-Msg-Id`, PubAck futures kept in flight.
pub async fn nats(url: &str, fixture: &Fixture, duration: Duration) -> AloneResult {
    let client = async_nats::connect(url)
        .await
        .expect("connect to nats-server");
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec![format!("{PREFIX}>")],
        ..Default::default()
    })
    .await
    .expect("create stream");
    let subject = format!("{PREFIX}{}", fixture.action);
    // One acknowledged message before the clock starts: the stream is ready.
    js.publish(subject.clone(), fixture.body(0).into())
        .await
        .expect("publish")
        .await
        .expect("warm-up PubAck");
    let mut inflight = FuturesUnordered::new();
    let mut confirmed = 0u64;
    let start = Instant::now();
    let deadline = start + duration;
    let mut n = 0u64;
    while Instant::now() < deadline {
        while inflight.len() >= WINDOW {
            if let Some(Ok(_)) = inflight.next().await {
                confirmed += 1;
            }
        }
        let id = format!("alone_{n}");
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in headers(fixture, &id, n) {
            h.insert(k, v.as_str());
        }
        h.insert("Nats-Msg-Id", id.as_str());
        let ack = js
            .publish_with_headers(subject.clone(), h, fixture.body(n).into())
            .await
            .expect("publish");
        inflight.push(std::future::IntoFuture::into_future(ack));
        n += 1;
    }
    while let Some(r) = inflight.next().await {
        if r.is_ok() {
            confirmed += 1;
        }
    }
    AloneResult {
        confirmed,
        elapsed: start.elapsed(),
    }
}

/// Kafka: rdkafka `FutureProducer` with the bridge's own producer settings
/// (`sink::kafka::client_config`: idempotence, acks=all, lz4, message timeout), key = `data.id`,
/// into a topic created like the bridge creates it (3 partitions).
pub async fn kafka(brokers: &str, fixture: &Fixture, duration: Duration) -> AloneResult {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::util::Timeout;

    let cfg = hookbridge::config::KafkaConfig {
        brokers: brokers.to_owned(),
        ..Default::default()
    };
    let client = hookbridge::sink::kafka::client_config(&cfg);
    let topic = format!("{PREFIX}{}", fixture.action);
    let admin: AdminClient<_> = client.create().expect("kafka admin client");
    admin
        .create_topics(
            [&NewTopic::new(
                &topic,
                cfg.partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create topic");
    let producer: std::sync::Arc<FutureProducer> =
        std::sync::Arc::new(client.create().expect("kafka producer"));
    let timeout = cfg.message_timeout;
    // One delivered message before the clock starts: metadata fetched, partition leaders known.
    producer
        .send(
            FutureRecord::to(&topic)
                .key("warm-up")
                .payload(&fixture.body(0)[..]),
            Timeout::After(timeout),
        )
        .await
        .expect("warm-up delivery");
    let mut inflight = FuturesUnordered::new();
    let mut confirmed = 0u64;
    let start = Instant::now();
    let deadline = start + duration;
    let mut n = 0u64;
    while Instant::now() < deadline {
        while inflight.len() >= WINDOW {
            if let Some(true) = inflight.next().await {
                confirmed += 1;
            }
        }
        let id = format!("alone_{n}");
        let hs = headers(fixture, &id, n);
        let body = fixture.body(n);
        let (producer, topic) = (producer.clone(), topic.clone());
        inflight.push(async move {
            let mut headers = OwnedHeaders::new_with_capacity(hs.len());
            for (k, v) in &hs {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let key = Fixture::resource(n);
            let record = FutureRecord::to(&topic)
                .key(key.as_bytes())
                .payload(&body[..])
                .headers(headers);
            producer.send(record, Timeout::After(timeout)).await.is_ok()
        });
        n += 1;
    }
    while let Some(ok) = inflight.next().await {
        if ok {
            confirmed += 1;
        }
    }
    AloneResult {
        confirmed,
        elapsed: start.elapsed(),
    }
}
