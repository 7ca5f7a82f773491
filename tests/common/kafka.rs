//! Kafka: a private tansu broker (the Kafka-protocol broker the tests start), the bridge's Kafka
//! configuration, and reading topics back with rdkafka or the independent kafka-python client.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hookbridge::config::Config;

use super::child::{find_bin, ChildServer};
use super::process::{bridge_env, test_config};
use super::unique;

/// Path of the `tansu` binary (Apache-Kafka-protocol broker): `TANSU_BIN`, `PATH`, or cargo's
/// bin, if there is one.
pub fn find_tansu() -> Option<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo_bin = Path::new(&home).join(".cargo/bin/tansu");
    find_bin(
        "tansu",
        "TANSU_BIN",
        &[cargo_bin.to_str().unwrap_or_default()],
    )
}

/// [`find_tansu`], or a failed test.
pub fn tansu_bin() -> PathBuf {
    find_tansu().expect("tansu not found: run scripts/test, which installs it (or set TANSU_BIN)")
}

/// A private Kafka-protocol broker (tansu, in-memory storage) on a port of its own (see
/// [`super::broker_port`]), fixed across restarts.
pub struct Tansu {
    server: ChildServer,
}

impl Tansu {
    /// Picks a port without starting the broker.
    pub fn new() -> Tansu {
        Tansu {
            server: ChildServer::new("tansu"),
        }
    }

    pub async fn started() -> Tansu {
        let mut t = Tansu::new();
        t.start().await;
        t
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    pub async fn start(&mut self) {
        let bin = tansu_bin();
        let command = |port: u16| {
            let url = format!("tcp://127.0.0.1:{port}");
            let mut c = Command::new(&bin);
            c.args(["broker", "--listener-url", &url])
                .args(["--advertised-listener-url", &url])
                .args(["--storage-engine", "memory://tansu/"])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            c
        };
        let ready = |port: u16| async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        };
        self.server
            .start(Duration::from_secs(20), command, ready)
            .await;
    }
}

/// One Kafka record as a consumer saw it.
#[derive(Debug, Clone)]
pub struct KafkaRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub headers: Vec<(String, String)>,
    pub value: Vec<u8>,
}

impl KafkaRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).unwrap()
    }
}

/// Reads `topics` from the beginning with the independent client (kafka-python), until `count`
/// records or `timeout`.
pub async fn kafka_python_consume(
    brokers: &str,
    topics: &[String],
    count: usize,
    timeout: Duration,
) -> Vec<KafkaRecord> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka_consume.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .args(["--brokers", brokers, "--count", &count.to_string()])
        .args(["--timeout", &timeout.as_secs_f64().to_string()])
        .args(topics);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| {
            panic!("python3 cannot run ({e}): run scripts/test, which installs what the tests need")
        });
    assert!(
        out.status.success(),
        "kafka-python consumer failed (missing kafka-python? run scripts/test, which installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            KafkaRecord {
                topic: v["topic"].as_str().unwrap().to_owned(),
                partition: v["partition"].as_i64().unwrap() as i32,
                offset: v["offset"].as_i64().unwrap(),
                key: v["key"].as_str().map(str::to_owned),
                headers: v["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| {
                        (
                            h[0].as_str().unwrap().to_owned(),
                            h[1].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect(),
                value: hex_decode(v["value"].as_str().unwrap()),
            }
        })
        .collect()
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// An rdkafka consumer for assigning partitions by hand (no group offsets are committed).
fn kafka_consumer(brokers: &str) -> rdkafka::consumer::BaseConsumer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("hbtest"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

fn kafka_record(m: &rdkafka::message::BorrowedMessage<'_>) -> KafkaRecord {
    use rdkafka::message::{Headers, Message};
    KafkaRecord {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        headers: m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        let v = String::from_utf8_lossy(h.value.unwrap_or_default());
                        (h.key.to_owned(), v.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default(),
        value: m.payload().unwrap_or_default().to_vec(),
    }
}

/// Reads `topics` from the beginning with an rdkafka consumer, until `count` records or
/// `timeout`.
pub async fn rdkafka_consume(
    brokers: &str,
    topics: &[String],
    count: usize,
    timeout: Duration,
) -> Vec<KafkaRecord> {
    use rdkafka::consumer::Consumer;
    use rdkafka::{Offset, TopicPartitionList};
    let brokers = brokers.to_owned();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let consumer = kafka_consumer(&brokers);
        let deadline = Instant::now() + timeout;
        let mut tpl = TopicPartitionList::new();
        for t in &topics {
            loop {
                let md = consumer.fetch_metadata(Some(t), Duration::from_secs(5));
                if let Ok(md) = md {
                    let parts = md
                        .topics()
                        .first()
                        .map(|t| t.partitions().len())
                        .unwrap_or(0);
                    if parts > 0 {
                        for p in 0..parts as i32 {
                            tpl.add_partition_offset(t, p, Offset::Beginning).unwrap();
                        }
                        break;
                    }
                }
                assert!(Instant::now() < deadline, "topic {t} never appeared");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        while out.len() < count && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => out.push(kafka_record(&m)),
                Some(Err(e)) => eprintln!("consumer error: {e}"),
                None => {}
            }
        }
        out
    })
    .await
    .unwrap()
}

/// A config for one Kafka test: like [`test_config`], with the Kafka sink on `brokers`.
pub fn kafka_config(spool_dir: &Path, tag: &str, brokers: &str) -> Config {
    let mut c = test_config(spool_dir, tag);
    c.sink.kind = hookbridge::config::SinkKind::Kafka;
    c.sink.kafka.brokers = brokers.to_owned();
    c.sink.kafka.create_topics = true;
    c.sink.kafka.partitions = 3;
    c.sink.kafka.message_timeout = Duration::from_secs(5);
    c
}

/// Environment for [`BridgeProcess::spawn`] with the Kafka sink on `brokers` (topics created by
/// the bridge, 3 partitions, 5 s message timeout as in [`kafka_config`]).
pub fn kafka_bridge_env(spool_dir: &Path, prefix: &str, brokers: &str) -> Vec<(String, String)> {
    let mut env = bridge_env(spool_dir, prefix, "UNUSED");
    env.extend(
        [
            ("HOOKBRIDGE_SINK__KIND", "kafka".to_owned()),
            ("HOOKBRIDGE_SINK__KAFKA__BROKERS", brokers.to_owned()),
            ("HOOKBRIDGE_SINK__KAFKA__CREATE_TOPICS", "true".to_owned()),
            ("HOOKBRIDGE_SINK__KAFKA__PARTITIONS", "3".to_owned()),
            ("HOOKBRIDGE_SINK__KAFKA__MESSAGE_TIMEOUT", "5s".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    env
}

/// Reads every record of `topic` from the beginning (all partitions) until none has come for
/// `idle` and at least the sum of the partitions' high watermarks was read, so the caller need
/// not know how many duplicates there are. (The watermarks are only a lower bound: tansu's were
/// seen to undercount by one.) Returns records in partition order.
pub async fn kafka_read_all(brokers: &str, topic: &str, timeout: Duration) -> Vec<KafkaRecord> {
    use rdkafka::consumer::Consumer;
    use rdkafka::{Offset, TopicPartitionList};
    let idle = Duration::from_secs(2);
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + timeout;
        let consumer = kafka_consumer(&brokers);
        let (parts, floor) = loop {
            if let Ok(md) = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)) {
                let parts = md
                    .topics()
                    .first()
                    .map(|t| t.partitions().len())
                    .unwrap_or(0) as i32;
                if parts > 0 {
                    let marks: Option<i64> = (0..parts)
                        .map(|p| {
                            consumer
                                .fetch_watermarks(&topic, p, Duration::from_secs(5))
                                .ok()
                                .map(|(lo, hi)| hi - lo)
                        })
                        .sum();
                    if let Some(m) = marks {
                        break (parts, m as usize);
                    }
                }
            }
            assert!(Instant::now() < deadline, "topic {topic} never appeared");
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut tpl = TopicPartitionList::new();
        for p in 0..parts {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let mut last = Instant::now();
        while Instant::now() < deadline && (out.len() < floor || last.elapsed() < idle) {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    last = Instant::now();
                    out.push(kafka_record(&m));
                }
                Some(Err(e)) => eprintln!("consumer error: {e}"),
                None => {}
            }
        }
        assert!(
            out.len() >= floor,
            "read {} of at least {floor} records of {topic}",
            out.len()
        );
        out
    })
    .await
    .unwrap()
}

/// The process: `port`, `stop`, `freeze`, `thaw`.
impl std::ops::Deref for Tansu {
    type Target = ChildServer;
    fn deref(&self) -> &ChildServer {
        &self.server
    }
}

impl std::ops::DerefMut for Tansu {
    fn deref_mut(&mut self) -> &mut ChildServer {
        &mut self.server
    }
}

/// Creates a topic through the bridge's own sink with `create_topics` (admin CreateTopics).
pub async fn create_topic(cfg: &hookbridge::config::KafkaConfig, topic: &str) {
    use hookbridge::sink::{kafka::KafkaSink, BrokerStatus, Message, Sink};
    let sink = KafkaSink::new(
        cfg,
        std::sync::Arc::new(BrokerStatus::default()),
        prometheus::IntGauge::new("q", "q").unwrap(),
    )
    .unwrap();
    // Sending a marker record creates the topic; consumers in the test ignore it by id.
    sink.send(Message {
        seq: 0,
        id: "topic-setup".into(),
        destination: topic.into(),
        key: "setup".into(),
        headers: vec![],
        payload: bytes::Bytes::from_static(b"{}"),
    })
    .await
    .unwrap();
    sink.close().await;
}
