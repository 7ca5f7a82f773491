//! The admin API's requeue on the Kafka sink (issue 25): dead letters requeued through the
//! running bridge reach a real Kafka-protocol broker (tansu), once each, in order per resource,
//! marked as requeued copies, while live deliveries flow beside them.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::*;

const PATH: &str = "/webhooks/sessionboard";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeued_dead_letters_reach_kafka_in_order() {
    if !require(&[Tier::Kafka]) {
        return;
    }
    let tansu = Tansu::started().await;
    let (spool, etc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for i in 0..40 {
        let (rid, n) = (format!("k{}", i % 4), i / 4);
        put_dead_letter(
            spool.path(),
            2_000 + i,
            &format!("kdl-{i}"),
            &rid,
            n,
            "unknown_topic",
        );
    }
    let prefix = unique("akafka");
    let mut env = kafka_bridge_env(spool.path(), &prefix, &tansu.brokers());
    env.push((
        "HOOKBRIDGE_ADMIN__TOKEN_FILE".into(),
        token_file(etc.path()),
    ));
    let bridge = BridgeProcess::spawn(&env).await;
    let client = http_client();
    let live = {
        let (client, url) = (client.clone(), bridge.url(PATH));
        tokio::spawn(async move {
            for i in 0..60u64 {
                let b = body(DL_ACTION, &format!("kl{}", i % 3), i / 3);
                assert_eq!(post(&client, &url, &format!("klive-{i}"), b).await, 200);
            }
        })
    };
    let (s, v) = admin_post(
        &client,
        bridge.admin,
        "dead-letters/requeue",
        r#"{"reason":"unknown_topic"}"#,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["requeued"].as_array().unwrap().len(), 40, "{v}");
    live.await.unwrap();
    wait_drained(&client, bridge.admin, Duration::from_secs(60))
        .await
        .expect("drained");
    let topic = format!("{prefix}.{DL_ACTION}");
    let got = kafka_read_all(&tansu.brokers(), &topic, Duration::from_secs(60)).await;
    let mut seen = HashSet::new();
    let mut by_resource: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in &got {
        let id = r.header("webhook-id").unwrap().to_owned();
        if id.starts_with("kdl-") {
            assert_eq!(r.header("hookbridge-copy"), Some("requeue"), "{id}");
        }
        seen.insert(id);
        let v = r.json();
        by_resource
            .entry(v["data"]["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(v["data"]["n"].as_u64().unwrap());
    }
    let want: HashSet<String> = (0..40)
        .map(|i| format!("kdl-{i}"))
        .chain((0..60).map(|i| format!("klive-{i}")))
        .collect();
    let missing: Vec<_> = want.difference(&seen).collect();
    assert!(missing.is_empty(), "missing on Kafka: {missing:?}");
    for (r, ns) in by_resource {
        let mut sorted = ns.clone();
        sorted.sort();
        assert_eq!(ns, sorted, "resource {r} out of order");
    }
    assert!(ids_in_store(spool.path()).is_empty());
}
