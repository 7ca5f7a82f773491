//! `sink.cloudevents`: every fixture, in binary and in structured mode, on NATS (read back by
//! nats-py, `tests/cloudevents_nats.py`) and on Kafka (read back by kafka-python,
//! `tests/cloudevents_kafka.py`), each message decoded by the CloudEvents Python SDK. Routing, keys and the existing headers
//! are the same as with CloudEvents off.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;
use hookbridge::config::CloudEventsMode;

const PATH: &str = "/webhooks/sessionboard";
const STRUCTURED: &str = "application/cloudevents+json; charset=UTF-8";

/// A body no fixture covers: no org id (the fallback source), a `metadata.datetime` that is not
/// RFC 3339 (no `time`), a `data.id` with a quote and a non-ASCII letter (escaped in structured
/// mode, no `subject` header in binary mode: not header-safe).
const ODD: &[u8] = "{\"data\":{\"id\":\"q\\\"\u{e9}\"},\"metadata\":{\"action\":\"session.updated\",\"org_id\":null,\"datetime\":\"2026-04-28 16:00:00\"}}".as_bytes();

/// What was posted: delivery id → (bytes, parsed).
type Sent = BTreeMap<String, (Vec<u8>, serde_json::Value)>;

async fn post_all(url: &str, tag: &str) -> Sent {
    let client = http_client();
    let mut bodies: Vec<Vec<u8>> = fixture_files()
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    bodies.push(ODD.to_vec());
    let mut sent = BTreeMap::new();
    for (i, bytes) in bodies.into_iter().enumerate() {
        let id = format!("msg_{tag}_{i}");
        assert_eq!(post(&client, url, &id, bytes.clone()).await, 200);
        let v = serde_json::from_slice(&bytes).unwrap();
        sent.insert(id, (bytes, v));
    }
    assert_eq!(sent.len(), 22);
    sent
}

/// The attributes a delivery must carry, from the body alone (not from hookbridge's code).
fn expected(id: &str, v: &serde_json::Value) -> BTreeMap<&'static str, Option<String>> {
    let action = v["metadata"]["action"].as_str().unwrap();
    let source = match v["metadata"]["org_id"].as_str() {
        Some(org) => format!("/sessionboard/orgs/{org}"), // fixture org ids are UUIDs
        None => "/sessionboard".to_owned(),
    };
    let time = v["metadata"]["datetime"]
        .as_str()
        .filter(|t| *t == "2026-04-28T16:00:00Z") // what the fixtures carry; ODD's is not RFC 3339
        .map(str::to_owned);
    BTreeMap::from([
        ("specversion", Some("1.0".to_owned())),
        ("id", Some(id.to_owned())),
        ("source", Some(source)),
        ("type", Some(format!("com.sessionboard.{action}"))),
        ("subject", v["data"]["id"].as_str().map(str::to_owned)),
        ("time", time),
    ])
}

fn is_header_safe(s: &str) -> bool {
    s.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

/// Checks a structured event's raw bytes: `data` is the posted body spliced in verbatim.
fn assert_embeds_verbatim(event: &[u8], body: &[u8]) {
    let tail = [br#","data":"#.as_slice(), body, b"}"].concat();
    assert!(
        event.ends_with(&tail),
        "data must be the received bytes, verbatim: {}",
        String::from_utf8_lossy(event)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_binary_and_structured_read_by_nats_py_and_the_cloudevents_sdk() {
    if !require(&[Tier::Nats, Tier::Python]) {
        return;
    }
    for mode in [CloudEventsMode::Binary, CloudEventsMode::Structured] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = test_config(dir.path(), &format!("ce{}", mode.as_str()));
        cfg.sink.cloudevents = mode;
        let prefix = cfg.routing.prefix.clone();
        let stream = cfg.sink.nats.stream.clone();
        let app = TestApp::start(cfg).await;
        let sent = post_all(&app.url(PATH), mode.as_str()).await;

        let got = python_reader(
            "tests/cloudevents_nats.py",
            &[
                "--url",
                &nats_url(),
                "--stream",
                &stream,
                "--mode",
                mode.as_str(),
                "--count",
                &sent.len().to_string(),
            ],
        )
        .await;
        delivered::assert_exactly_once(
            &format!("NATS {}", mode.as_str()),
            sent.keys().map(String::as_str),
            got.iter()
                .map(|r| r["headers"]["webhook-id"].as_str().unwrap()),
        );
        let mut printed = false;
        for r in &got {
            let header = |name: &str| r["headers"][name].as_str().map(str::to_owned);
            let id = header("webhook-id").unwrap();
            let (bytes, v) = &sent[&id];
            let action = v["metadata"]["action"].as_str().unwrap();
            assert_eq!(
                r["subject"],
                format!("{prefix}{action}"),
                "routing unchanged"
            );
            assert_eq!(header("Nats-Msg-Id"), Some(id.clone()));
            assert_eq!(header("sessionboard-action").as_deref(), Some(action));
            let payload = unhex(r["payload"].as_str().unwrap());
            let want = expected(&id, v);
            match mode {
                CloudEventsMode::Binary => {
                    assert_eq!(&payload, bytes, "binary: body byte-identical");
                    assert_eq!(header("content-type").as_deref(), Some("application/json"));
                    for (attr, value) in &want {
                        let value = value.as_deref().filter(|v| is_header_safe(v));
                        assert_eq!(
                            header(&format!("ce-{attr}")).as_deref(),
                            value,
                            "ce-{attr} of {id}"
                        );
                    }
                }
                _ => {
                    assert_eq!(header("content-type").as_deref(), Some(STRUCTURED));
                    assert!(header("ce-id").is_none(), "structured: no ce- headers");
                    assert_embeds_verbatim(&payload, bytes);
                }
            }
            assert_decoded(&r["event"], &want, v, mode, &payload);
            if !printed && action == "session.updated" && v["metadata"]["org_id"].is_string() {
                printed = true;
                eprintln!(
                    "NATS {} message on {} (nats-py + CloudEvents SDK):\n  headers {}\n  payload {}\n  event {}",
                    mode.as_str(),
                    r["subject"],
                    r["headers"],
                    String::from_utf8_lossy(&payload),
                    serde_json::to_string(&r["event"]["attributes"]).unwrap()
                );
            }
        }
        app.stop().await;
        delete_stream(&jetstream(&nats_url()).await, &stream).await;
    }
}

/// What the CloudEvents SDK decoded, in either mode, on either broker.
fn assert_decoded(
    event: &serde_json::Value,
    want: &BTreeMap<&'static str, Option<String>>,
    body: &serde_json::Value,
    mode: CloudEventsMode,
    payload: &[u8],
) {
    let attrs = &event["attributes"];
    assert_eq!(attrs["specversion"], "1.0");
    assert_eq!(attrs["id"].as_str(), want["id"].as_deref());
    assert_eq!(attrs["source"].as_str(), want["source"].as_deref());
    assert_eq!(attrs["type"].as_str(), want["type"].as_deref());
    assert_eq!(attrs["datacontenttype"], "application/json");
    if mode == CloudEventsMode::Structured {
        assert_eq!(attrs["subject"].as_str(), want["subject"].as_deref());
    }
    match &want["time"] {
        // The SDK parses `time` into a datetime; isoformat() spells UTC `+00:00`.
        Some(_) => assert_eq!(attrs["time"], "2026-04-28T16:00:00+00:00"),
        // The SDK's event constructor fills a missing `time` with its own clock, so the absence
        // is checked on the wire: no ce-time/ce_time header (checked by the caller), no `time`
        // member.
        None if mode == CloudEventsMode::Structured => {
            let raw: serde_json::Value = serde_json::from_slice(payload).unwrap();
            assert!(raw.get("time").is_none(), "{raw}");
        }
        None => {}
    }
    assert_eq!(&event["data"], body, "data decodes to the posted body");
}

/// Runs one of the Python readers (`script`, relative to the crate) and returns its JSON lines.
async fn python_reader(script: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let mut cmd = Command::new("python3");
    cmd.arg(&script).args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| {
            panic!("python3 cannot run ({e}): run scripts/test, which installs what the tests need")
        });
    assert!(
        out.status.success(),
        "{} failed (missing kafka-python, nats-py or cloudevents? run scripts/test, which \
         installs them): {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_binary_and_structured_read_by_the_cloudevents_sdk() {
    if !require(&[Tier::Kafka, Tier::Python]) {
        return;
    }
    let tansu = Tansu::started().await;
    for mode in [CloudEventsMode::Binary, CloudEventsMode::Structured] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = kafka_config(
            dir.path(),
            &format!("kce{}", mode.as_str()),
            &tansu.brokers(),
        );
        cfg.sink.cloudevents = mode;
        let prefix = cfg.routing.prefix.clone();
        let app = TestApp::start(cfg).await;
        let sent = post_all(&app.url(PATH), mode.as_str()).await;
        let mut topics: Vec<String> = sent
            .values()
            .map(|(_, v)| format!("{prefix}{}", v["metadata"]["action"].as_str().unwrap()))
            .collect();
        topics.sort();
        topics.dedup();

        let (brokers, count) = (tansu.brokers(), sent.len().to_string());
        let mut args = vec![
            "--brokers",
            &brokers,
            "--mode",
            mode.as_str(),
            "--count",
            &count,
            "--timeout",
            "60",
        ];
        args.extend(topics.iter().map(String::as_str));
        let got = python_reader("tests/cloudevents_kafka.py", &args).await;
        let ids: Vec<&str> = got
            .iter()
            .map(|r| {
                let headers = r["headers"].as_array().unwrap();
                let id = headers.iter().find(|h| h[0] == "webhook-id").unwrap();
                id[1].as_str().unwrap()
            })
            .collect();
        delivered::assert_exactly_once(
            &format!("Kafka {}", mode.as_str()),
            sent.keys().map(String::as_str),
            ids,
        );
        let mut printed = false;
        for r in &got {
            let header = |name: &str| {
                r["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|h| h[0] == name)
                    .map(|h| h[1].as_str().unwrap().to_owned())
            };
            let id = header("webhook-id").unwrap();
            let (bytes, v) = &sent[&id];
            let action = v["metadata"]["action"].as_str().unwrap();
            assert_eq!(r["topic"], format!("{prefix}{action}"), "routing unchanged");
            assert_eq!(r["key"], v["data"]["id"], "key = data.id");
            assert_eq!(header("sessionboard-action").as_deref(), Some(action));
            let value = unhex(r["value"].as_str().unwrap());
            let event = &r["event"];
            let attrs = &event["attributes"];
            let want = expected(&id, v);
            match mode {
                CloudEventsMode::Binary => {
                    assert_eq!(&value, bytes, "binary: value byte-identical");
                    for (attr, value) in &want {
                        let value = value.as_deref().filter(|v| is_header_safe(v));
                        assert_eq!(header(&format!("ce_{attr}")).as_deref(), value);
                    }
                }
                _ => {
                    assert_eq!(header("content-type").as_deref(), Some(STRUCTURED));
                    assert!(header("ce_id").is_none(), "structured: no ce_ headers");
                    assert_embeds_verbatim(&value, bytes);
                }
            }
            assert_decoded(event, &want, v, mode, &value);
            assert_eq!(
                attrs["partitionkey"], v["data"]["id"],
                "the SDK reads the key"
            );
            if !printed && action == "session.updated" && v["metadata"]["org_id"].is_string() {
                printed = true;
                eprintln!(
                    "Kafka {} message on {} (kafka-python + CloudEvents SDK):\n  key {}\n  headers {}\n  value {}\n  event {}",
                    mode.as_str(),
                    r["topic"],
                    r["key"],
                    r["headers"],
                    String::from_utf8_lossy(&value),
                    serde_json::to_string(&event["attributes"]).unwrap()
                );
            }
        }
        app.stop().await;
    }
}
