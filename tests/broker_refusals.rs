//! A record the broker will never take does not stop the others (issue 23): against real
//! nats-servers, a stream whose `max_msg_size` refuses one record, a subject no stream covers,
//! and a NATS user denied one subject. What cannot be fixed by retrying is dead-lettered with its
//! reason, everything else arrives, in order per resource.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::stream;
use common::*;

const PATH: &str = "/webhooks/sessionboard";

/// Posts `n` small deliveries of `session.updated` over `spread` (so the broker keeps confirming
/// for that long), resources `r0`..`r9`, each resource's `n` counting up.
async fn post_small(app: &TestApp, tag: &str, n: u64, spread: Duration) {
    let client = http_client();
    let pause = spread / n as u32;
    for i in 0..n {
        let status = post(
            &client,
            &app.url(PATH),
            &format!("{tag}-{i}"),
            body("session.updated", &format!("r{}", i % 10), i / 10),
        )
        .await;
        assert_eq!(status, 200, "delivery {i}");
        tokio::time::sleep(pause).await;
    }
}

/// Waits until `/readyz` shows `dead` dead letters and an empty backlog; returns it.
async fn wait_settled(app: &TestApp, dead: u64, timeout: Duration) -> serde_json::Value {
    let client = http_client();
    let deadline = Instant::now() + timeout;
    loop {
        let (_, _, ready) = request(&client, "GET", &app.admin_url("/readyz"), &[], "")
            .await
            .unwrap();
        if ready["dead_letters"] == dead && ready["backlog_records"] == 0 {
            return ready;
        }
        assert!(Instant::now() < deadline, "not settled: {ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every small delivery arrived, once, in order per resource.
fn check_small(got: &[Received], tag: &str, n: u64) {
    let ids: HashSet<_> = got.iter().filter_map(|m| m.header("webhook-id")).collect();
    let missing: Vec<String> = (0..n)
        .map(|i| format!("{tag}-{i}"))
        .filter(|id| !ids.contains(id.as_str()))
        .collect();
    assert_eq!(
        missing,
        Vec::<String>::new(),
        "every small delivery arrives"
    );
    assert_eq!(ids.len() as u64, n, "and nothing else");
    for r in 0..10 {
        let seq: Vec<u64> = got
            .iter()
            .filter(|m| m.header("sessionboard-resource-id") == Some(&format!("r{r}")))
            .map(|m| m.json()["data"]["n"].as_u64().unwrap())
            .collect();
        let mut sorted = seq.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(seq, sorted, "resource r{r} in order, once each");
    }
}

fn dead_letter_reasons(spool: &std::path::Path) -> Vec<(String, String)> {
    let store = hookbridge::deadletter::DeadLetters::open(spool).unwrap();
    store
        .list()
        .unwrap()
        .into_iter()
        .map(|meta| {
            let meta = meta.unwrap();
            (meta.id, meta.reason)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_streams_max_msg_size_is_dead_lettered_and_the_rest_flows() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), "maxmsg");
    cfg.forward.max_in_flight = 64;
    cfg.sink.nats.create_stream = false;
    let stream_name = cfg.sink.nats.stream.clone();
    let prefix = cfg.routing.prefix.clone();
    let js = jetstream(&nats_url()).await;
    js.create_stream(stream::Config {
        name: stream_name.clone(),
        subjects: vec![format!("{prefix}>")],
        max_message_size: 2048,
        ..Default::default()
    })
    .await
    .unwrap();
    let app = TestApp::start(cfg).await;

    let big = format!(
        r#"{{"data":{{"id":"big","pad":"{}"}},"metadata":{{"action":"session.updated"}}}}"#,
        "x".repeat(4096)
    );
    assert_eq!(
        post(&http_client(), &app.url(PATH), "big-1", big).await,
        200
    );
    post_small(&app, "maxmsg", 400, Duration::from_millis(400)).await;

    let ready = wait_settled(&app, 1, Duration::from_secs(60)).await;
    assert_eq!(ready["stuck_records"], 0);
    let got = read_stream(&js, &stream_name, 400, Duration::from_secs(30)).await;
    check_small(&got, "maxmsg", 400);
    assert_eq!(
        dead_letter_reasons(dir.path()),
        [("big-1".to_owned(), "too_large".to_owned())]
    );
    app.stop().await;
    delete_stream(&js, &stream_name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_no_stream_covers_is_given_up_while_others_flow() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), "nostream");
    cfg.sink.nats.create_stream = false;
    cfg.forward.max_attempts = 3;
    cfg.forward.max_retry_age = Duration::from_secs(1);
    let stream_name = cfg.sink.nats.stream.clone();
    let prefix = cfg.routing.prefix.clone();
    let js = jetstream(&nats_url()).await;
    // Only sessions are covered: `contact.created` has no stream.
    js.create_stream(stream::Config {
        name: stream_name.clone(),
        subjects: vec![format!("{prefix}session.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    let app = TestApp::start(cfg).await;

    let client = http_client();
    let orphan = body("contact.created", "c1", 0);
    assert_eq!(post(&client, &app.url(PATH), "orphan-1", orphan).await, 200);
    // Same resource after the orphan: it waits, then follows once the orphan is settled.
    let after = body("session.updated", "c1", 1);
    assert_eq!(post(&client, &app.url(PATH), "after-1", after).await, 200);
    post_small(&app, "nostream", 200, Duration::from_secs(4)).await;

    wait_settled(&app, 1, Duration::from_secs(60)).await;
    let got = read_stream(&js, &stream_name, 201, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 201, "everything but the orphan");
    assert!(got
        .iter()
        .any(|m| m.header("webhook-id") == Some("after-1")));
    check_small(
        &got.into_iter()
            .filter(|m| m.header("webhook-id") != Some("after-1"))
            .collect::<Vec<_>>(),
        "nostream",
        200,
    );
    assert_eq!(
        dead_letter_reasons(dir.path()),
        [("orphan-1".to_owned(), "retries_exhausted".to_owned())]
    );
    app.stop().await;
    delete_stream(&js, &stream_name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_the_nats_user_may_not_publish_to_is_given_up_while_others_flow() {
    if !require(&[Tier::NatsServer]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats_dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), "denied");
    let prefix = cfg.routing.prefix.clone();
    let port = broker_port();
    let conf = nats_dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            r#"
listen: "127.0.0.1:{port}"
jetstream {{ store_dir: "{store}" }}
accounts {{
  BRIDGE {{
    jetstream: enabled
    users: [{{ user: bridge, password: s3cret, permissions: {{ publish: {{ deny: ["{prefix}contact.>"] }} }} }}]
  }}
}}
"#,
            store = nats_dir.path().join("js").display()
        ),
    )
    .unwrap();
    let mut server = Command::new(nats_server_bin())
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let connect = || {
        async_nats::ConnectOptions::with_user_and_password("bridge".into(), "s3cret".into())
            .connect(url.as_str())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let reader = loop {
        match connect().await {
            Ok(c) => break c,
            Err(_) => {
                assert!(Instant::now() < deadline, "nats-server did not start");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    cfg.sink.nats.url = url.clone();
    cfg.sink.nats.user = Some("bridge".into());
    cfg.sink.nats.password = Some("s3cret".into());
    cfg.sink.nats.request_timeout = Duration::from_millis(500);
    cfg.forward.max_attempts = 3;
    cfg.forward.max_retry_age = Duration::from_secs(1);
    let stream_name = cfg.sink.nats.stream.clone();
    let app = TestApp::start(cfg).await;

    let client = http_client();
    let denied = body("contact.created", "c1", 0);
    assert_eq!(
        post(&client, &app.url(PATH), "forbidden-1", denied).await,
        200
    );
    post_small(&app, "denied", 200, Duration::from_secs(5)).await;

    wait_settled(&app, 1, Duration::from_secs(60)).await;
    let js = async_nats::jetstream::new(reader);
    let got = read_stream(&js, &stream_name, 200, Duration::from_secs(30)).await;
    check_small(&got, "denied", 200);
    assert_eq!(
        dead_letter_reasons(dir.path()),
        [("forbidden-1".to_owned(), "retries_exhausted".to_owned())]
    );
    app.stop().await;
    let _ = server.kill();
    let _ = server.wait();
}
