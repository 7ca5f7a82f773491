//! End to end against a real NATS JetStream server: HTTP in, spool, forwarder, stream out.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use common::load::acked_until_sigkill;
use common::*;

const PATH: &str = "/webhooks/sessionboard";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_arrives_on_its_subject_byte_exact_with_headers() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path(), "fx");
    let prefix = cfg.routing.prefix.clone();
    let stream = cfg.sink.nats.stream.clone();
    let app = TestApp::start(cfg).await;
    let client = http_client();

    let mut sent = BTreeMap::new();
    for (i, path) in fixture_files().iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        let id = format!("msg_fixture_{i}");
        let (status, _, json) = request(
            &client,
            "POST",
            &app.url(PATH),
            &[
                ("content-type", "application/json"),
                ("webhook-id", &id),
                ("webhook-timestamp", "1614265330"),
            ],
            bytes.clone(),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{path:?}: {json}");
        assert_eq!(json["status"], "accepted");
        assert_eq!(json["id"], id.as_str());
        sent.insert(id, bytes);
    }
    assert_eq!(sent.len(), 21);

    let js = jetstream(&nats_url()).await;
    let got = read_stream(&js, &stream, sent.len(), Duration::from_secs(20)).await;
    delivered::assert_exactly_once(
        "fixtures",
        sent.keys().map(String::as_str),
        got.iter().map(|m| m.header("webhook-id").unwrap()),
    );
    for m in &got {
        let id = m.header("webhook-id").unwrap();
        let original = &sent[id];
        assert_eq!(&m.payload[..], &original[..], "body must be byte-identical");
        let v: serde_json::Value = serde_json::from_slice(original).unwrap();
        let action = v["metadata"]["action"].as_str().unwrap();
        assert_eq!(m.subject, format!("{prefix}{action}"));
        assert_eq!(m.header("Nats-Msg-Id"), Some(id));
        assert_eq!(m.header("webhook-timestamp"), Some("1614265330"));
        assert_sessionboard_headers(|h| m.header(h), &v);
    }
    app.stop().await;
    delete_stream(&js, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_updates_to_one_resource_arrive_in_order() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path(), "ord");
    let stream = cfg.sink.nats.stream.clone();
    let app = TestApp::start(cfg).await;
    let url = app.url(PATH);

    // Other resources are posted concurrently, so the hot resource's records interleave with
    // theirs in the spool and in flight.
    let noise = {
        let url = url.clone();
        tokio::spawn(async move {
            let client = http_client();
            let mut tasks = Vec::new();
            for w in 0..4 {
                let client = client.clone();
                let url = url.clone();
                tasks.push(tokio::spawn(async move {
                    for n in 0..250u64 {
                        let rid = format!("other-{w}-{}", n % 7);
                        let s = post(
                            &client,
                            &url,
                            &format!("noise-{w}-{n}"),
                            body("contact.updated", &rid, n),
                        )
                        .await;
                        assert_eq!(s, 200);
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        })
    };
    let client = http_client();
    for n in 0..1000u64 {
        let s = post(
            &client,
            &url,
            &format!("hot-{n}"),
            body("session.updated", "hot", n),
        )
        .await;
        assert_eq!(s, 200);
    }
    noise.await.unwrap();

    let js = jetstream(&nats_url()).await;
    let got = read_stream(&js, &stream, 2000, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 2000);
    let hot: Vec<u64> = got
        .iter()
        .filter(|m| m.header("sessionboard-resource-id") == Some("hot"))
        .map(|m| m.json()["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(hot, (0..1000).collect::<Vec<_>>());
    // Every other resource is in order too.
    let mut last: HashMap<String, (String, u64)> = HashMap::new();
    for m in &got {
        let rid = m.header("sessionboard-resource-id").unwrap().to_owned();
        let id = m.header("webhook-id").unwrap().to_owned();
        let n = m.json()["data"]["n"].as_u64().unwrap();
        if let Some((_, prev)) = last.get(&rid) {
            assert!(n > *prev, "{rid}: {n} after {prev}");
        }
        last.insert(rid, (id, n));
    }
    app.stop().await;
    delete_stream(&js, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffers_while_nats_is_down_and_replays_when_it_returns() {
    if !require(&[Tier::Nats, Tier::NatsServer]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats_dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::new(nats_dir.path());
    let mut cfg = test_config(dir.path(), "down");
    cfg.sink.nats.url = nats.url();
    // A budget of two failures while others are confirmed, and no age: still, failures while
    // nothing confirms are an outage, and an outage gives up on nothing. (One such failure can
    // happen as the broker comes back: a send that failed just after another was confirmed.)
    cfg.forward.max_attempts = 2;
    cfg.forward.max_retry_age = Duration::ZERO;
    let stream = cfg.sink.nats.stream.clone();
    let app = TestApp::start(cfg).await;
    let client = http_client();

    let mut tasks = Vec::new();
    for w in 0..10 {
        let client = client.clone();
        let url = app.url(PATH);
        tasks.push(tokio::spawn(async move {
            for n in 0..50u64 {
                let s = post(
                    &client,
                    &url,
                    &format!("down-{w}-{n}"),
                    body("session.updated", &format!("r{w}"), n),
                )
                .await;
                assert_eq!(s, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (status, _, ready) = request(&client, "GET", &app.admin_url("/readyz"), &[], "")
        .await
        .unwrap();
    assert_eq!(
        status, 200,
        "a broker outage must not make the bridge unready: {ready}"
    );
    assert_ne!(ready["broker"], "up");
    assert_eq!(ready["backlog_records"], 500);

    nats.start().await;
    let js = jetstream(&nats.url()).await;
    let got = read_stream(&js, &stream, 500, Duration::from_secs(60)).await;
    let ids: HashSet<_> = got
        .iter()
        .map(|m| m.header("webhook-id").unwrap().to_owned())
        .collect();
    assert_eq!(
        ids.len(),
        500,
        "every acknowledged delivery arrives once NATS is back"
    );
    for w in 0..10 {
        let seq: Vec<u64> = got
            .iter()
            .filter(|m| m.header("sessionboard-resource-id") == Some(&format!("r{w}")))
            .map(|m| m.json()["data"]["n"].as_u64().unwrap())
            .collect();
        assert_eq!(seq, (0..50).collect::<Vec<_>>(), "resource r{w} in order");
    }
    // The backlog drains from the spool.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, ready) = request(&client, "GET", &app.admin_url("/readyz"), &[], "")
            .await
            .unwrap();
        if ready["backlog_records"] == 0 && ready["broker"] == "up" {
            assert_eq!(ready["dead_letters"], 0, "an outage dead-letters nothing");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backlog did not drain: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_documented_answers_and_never_a_wildcard_publish() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), "bad");
    cfg.http.max_body_bytes = 64 * 1024;
    let prefix = cfg.routing.prefix.clone();
    let stream = cfg.sink.nats.stream.clone();
    let app = TestApp::start(cfg).await;
    let client = http_client();
    let url = app.url(PATH);
    let json = [("content-type", "application/json")];

    let valid = body("session.updated", "r1", 1);
    let big = format!(
        r#"{{"data":{{"id":"r","pad":"{}"}},"metadata":{{"action":"a.b"}}}}"#,
        "x".repeat(70 * 1024)
    );
    // (method, path, body, expected status, expected error code)
    let cases: Vec<(&str, String, String, u16, &str)> = vec![
        ("POST", PATH.into(), "{not json".into(), 400, "invalid_json"),
        ("POST", PATH.into(), "".into(), 400, "invalid_json"),
        (
            "POST",
            PATH.into(),
            r#"{"data":{"id":"1"}}"#.into(),
            400,
            "missing_action",
        ),
        (
            "POST",
            PATH.into(),
            r#"{"data":{"id":"1"},"metadata":{}}"#.into(),
            400,
            "missing_action",
        ),
        (
            "POST",
            PATH.into(),
            r#"{"metadata":{"action":"a.b"},"data":{}}"#.into(),
            400,
            "missing_data_id",
        ),
        (
            "POST",
            PATH.into(),
            r#"{"metadata":{"action":"a.b"}}"#.into(),
            400,
            "missing_data_id",
        ),
        ("POST", PATH.into(), "[1,2,3]".into(), 400, "missing_action"),
        (
            "POST",
            PATH.into(),
            format!("{valid}garbage"),
            400,
            "invalid_json",
        ),
        ("POST", PATH.into(), big, 413, "payload_too_large"),
        ("GET", PATH.into(), "".into(), 405, "method_not_allowed"),
        ("PUT", PATH.into(), valid.clone(), 405, "method_not_allowed"),
        ("POST", "/other".into(), valid.clone(), 404, "not_found"),
        ("POST", format!("{PATH}/x"), valid.clone(), 404, "not_found"),
    ];
    for (method, path, body, want, code) in &cases {
        let (status, _, resp) = request(
            &client,
            method,
            &format!("http://{}{}", app.http, path),
            &json,
            body.clone(),
        )
        .await
        .unwrap();
        assert_eq!(
            status,
            *want,
            "{method} {path} {}: {resp}",
            &body[..body.len().min(60)]
        );
        assert_eq!(resp["error"], *code, "{resp}");
        assert!(resp["detail"].is_string(), "{resp}");
    }
    let (status, headers, _) = request(&client, "GET", &url, &[], "").await.unwrap();
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "POST");

    // Hostile actions are accepted (the sender signed them) but only ever reach the dead letter.
    let hostile = [
        "session.>",
        "session.*",
        ">",
        "*",
        "session updated",
        "session..updated",
        "a\u{0}b",
        "",
        "UPPER.case",
        "x.",
        "ünï.code",
    ];
    for (i, action) in hostile.iter().enumerate() {
        let b =
            serde_json::json!({"data": {"id": format!("h{i}")}, "metadata": {"action": action}})
                .to_string();
        let s = post(&client, &url, &format!("hostile-{i}"), b).await;
        assert_eq!(s, 200, "action {action:?}");
    }
    let ok = post(&client, &url, "good-1", valid).await;
    assert_eq!(ok, 200);

    let js = jetstream(&nats_url()).await;
    let got = read_stream(&js, &stream, hostile.len() + 1, Duration::from_secs(20)).await;
    assert_eq!(
        got.len(),
        hostile.len() + 1,
        "only accepted deliveries are published"
    );
    for m in &got {
        if m.header("webhook-id") == Some("good-1") {
            assert_eq!(m.subject, format!("{prefix}session.updated"));
        } else {
            assert_eq!(m.subject, format!("{prefix}unroutable"), "{m:?}");
        }
    }
    let unroutable = metric(
        &client,
        app.admin,
        "hookbridge_deliveries_unroutable_total",
        "",
    )
    .await;
    assert_eq!(unroutable, hostile.len() as f64);
    let c400 = metric(
        &client,
        app.admin,
        "hookbridge_http_requests_total",
        "status=\"400\"",
    )
    .await;
    assert_eq!(c400, 8.0);
    app.stop().await;
    delete_stream(&js, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_health_and_metrics() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path(), "adm");
    let stream = cfg.sink.nats.stream.clone();
    let app = TestApp::start(cfg).await;
    let client = http_client();
    assert_eq!(
        post(
            &client,
            &app.url(PATH),
            "adm-1",
            body("session.created", "s1", 0)
        )
        .await,
        200
    );

    let (s, _, live) = request(&client, "GET", &app.admin_url("/livez"), &[], "")
        .await
        .unwrap();
    assert_eq!((s, live["status"].as_str()), (200, Some("alive")));
    let (s, _, ready) = request(&client, "GET", &app.admin_url("/readyz"), &[], "")
        .await
        .unwrap();
    assert_eq!(s, 200, "{ready}");
    assert_eq!(ready["spool"], "ok");

    let js = jetstream(&nats_url()).await;
    assert_eq!(
        read_stream(&js, &stream, 1, Duration::from_secs(10))
            .await
            .len(),
        1
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while metric(
        &client,
        app.admin,
        "hookbridge_published_total",
        "sink=\"nats\"",
    )
    .await
        < 1.0
    {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = metrics_text(&client, app.admin).await;
    for name in [
        "hookbridge_http_requests_total",
        "hookbridge_deliveries_accepted_total",
        "hookbridge_deliveries_unroutable_total",
        "hookbridge_ack_latency_seconds_bucket",
        "hookbridge_spool_records",
        "hookbridge_spool_bytes",
        "hookbridge_spool_oldest_record_age_seconds",
        "hookbridge_spool_fsync_seconds_bucket",
        "hookbridge_spool_batch_records_bucket",
        "hookbridge_published_total",
        "hookbridge_publish_latency_seconds_bucket",
        "hookbridge_broker_up",
    ] {
        assert!(text.contains(name), "missing metric {name}");
    }
    assert!(text.contains(
        r#"hookbridge_deliveries_accepted_total{action="session.created",endpoint="default"} 1"#
    ));
    let (s, _, _) = request(&client, "GET", &app.admin_url("/nope"), &[], "")
        .await
        .unwrap();
    assert_eq!(s, 404);
    app.stop().await;
    delete_stream(&js, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_mode_publishes_confirmed_by_flush() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), "core");
    cfg.sink.nats.mode = hookbridge::config::NatsMode::Core;
    let prefix = cfg.routing.prefix.clone();
    let client_nats = async_nats::connect(nats_url()).await.unwrap();
    let mut sub = client_nats.subscribe(format!("{prefix}>")).await.unwrap();
    client_nats.flush().await.unwrap();
    let app = TestApp::start(cfg).await;
    let client = http_client();
    let b = body("sponsor.updated", "sp1", 3);
    assert_eq!(
        post(&client, &app.url(PATH), "core-1", b.clone()).await,
        200
    );
    use futures_util::StreamExt;
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("message arrives")
        .unwrap();
    assert_eq!(m.subject.as_str(), format!("{prefix}sponsor.updated"));
    assert_eq!(&m.payload[..], b.as_bytes());
    let h = m.headers.unwrap();
    assert_eq!(h.get("webhook-id").map(|v| v.as_str()), Some("core-1"));
    assert!(
        h.get("Nats-Msg-Id").is_none(),
        "core mode has no JetStream de-dup header"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_binary_replays_every_acknowledged_delivery() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("kill");
    let stream = prefix.to_uppercase();
    let env = bridge_env(dir.path(), &prefix, &stream);
    let mut bridge = BridgeProcess::spawn(&env).await;
    let client = http_client();

    // Let a few hundred through while writers keep posting, then kill without warning.
    let acked = acked_until_sigkill(&mut bridge, &prefix, "contact.updated", 400).await;

    let bridge2 = BridgeProcess::spawn(&env).await;
    // The restarted process replays what the killed one had not seen confirmed (at least the
    // deliveries acknowledged in its last group commits): without a replay this test would pass
    // on what the first process published.
    wait_replayed(&client, bridge2.admin, Duration::from_secs(30)).await;
    let js = jetstream(&nats_url()).await;
    let got = read_stream(&js, &stream, acked.len(), Duration::from_secs(60)).await;
    let arrived: HashSet<String> = got
        .iter()
        .map(|m| m.header("webhook-id").unwrap().to_owned())
        .collect();
    let missing: Vec<_> = acked.iter().filter(|id| !arrived.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged deliveries lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    drop(bridge2);
    delete_stream(&js, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_outlives_a_lower_body_limit_across_a_restart() {
    if !require(&[Tier::Nats, Tier::NatsServer]) {
        return;
    }
    // Issue 14: deliveries accepted under a 1 MiB limit while NATS is down, then the bridge is
    // restarted with `http.max_body_bytes` lowered to 64 KiB. The backlog was acknowledged, so
    // every record of it (the newest being a large one) must still reach the broker.
    let dir = tempfile::tempdir().unwrap();
    let nats_dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::new(nats_dir.path());
    let mut cfg = test_config(dir.path(), "lower");
    cfg.sink.nats.url = nats.url();
    let stream = cfg.sink.nats.stream.clone();
    let app = TestApp::start(cfg.clone()).await;
    let client = http_client();
    let mut sent = Vec::new();
    for n in 0..6u64 {
        let b = if n % 2 == 1 {
            format!(
                r#"{{"data":{{"id":"r1","n":{n},"pad":"{}"}},"metadata":{{"action":"session.updated"}}}}"#,
                "x".repeat(200 * 1024)
            )
        } else {
            body("session.updated", "r1", n)
        };
        let id = format!("lower-{n}");
        assert_eq!(post(&client, &app.url(PATH), &id, b.clone()).await, 200);
        sent.push((id, b));
    }
    app.stop().await;

    cfg.http.max_body_bytes = 64 * 1024;
    nats.start().await;
    let app = TestApp::start(cfg).await;
    let js = jetstream(&nats.url()).await;
    let got = read_stream(&js, &stream, sent.len(), Duration::from_secs(30)).await;
    let got: Vec<(String, String)> = got
        .iter()
        .map(|m| {
            let id = m.header("webhook-id").unwrap().to_owned();
            (id, String::from_utf8(m.payload.to_vec()).unwrap())
        })
        .collect();
    assert_eq!(
        got.iter()
            .map(|(id, b)| (id.as_str(), b.len()))
            .collect::<Vec<_>>(),
        sent.iter()
            .map(|(id, b)| (id.as_str(), b.len()))
            .collect::<Vec<_>>(),
        "every acknowledged delivery arrives, in order"
    );
    assert!(got == sent, "bodies arrive byte-exact");
    assert_eq!(
        metric(
            &client,
            app.admin,
            "hookbridge_spool_corrupt_records_total",
            ""
        )
        .await,
        0.0
    );
    app.stop().await;
}
