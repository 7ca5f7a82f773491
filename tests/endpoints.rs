//! Two senders on one bridge (`[[endpoints]]`), on the real binary against real brokers
//! (JetStream and Kafka): each sender's signed deliveries land only under its own namespace,
//! a delivery signed for one endpoint and posted to the other gets 401 and is never stored, the
//! same delivery id on both endpoints is two deliveries while a repeat on one is a duplicate,
//! and a restart in between changes none of this. Every message is described by the AsyncAPI
//! document of the same configuration (`hookbridge asyncapi`): its destination is a channel of
//! its endpoint, each header it carries is in that channel's message, with the fixed value
//! where the document fixes one, and each required header is there.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use hookbridge::ingress::signature::sign_v1;

/// The default endpoint's sender (Sessionboard production) and the second one's (sandbox).
const PROD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SANDBOX_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const PROD_PATH: &str = "/webhooks/sessionboard";
const SANDBOX_PATH: &str = "/webhooks/sandbox";

/// The configuration file: the top-level keys are the endpoint `default`; `[[endpoints]]` adds
/// `sandbox` under its own prefix.
fn config_file(dir: &Path, prefix: &str) -> String {
    let path = dir.join("hookbridge.toml");
    std::fs::write(
        &path,
        format!(
            r#"[auth]
secrets = ["{PROD_SECRET}"]

[[endpoints]]
name = "sandbox"
path = "{SANDBOX_PATH}"
auth = {{ secrets = ["{SANDBOX_SECRET}"] }}
routing = {{ prefix = "{prefix}-sandbox." }}
"#
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// Posts `body` as delivery `id`, signed with `secret`, to `path`; the status and JSON `status`
/// (or `error`).
async fn post_signed(
    bridge: &BridgeProcess,
    path: &str,
    secret: &str,
    id: &str,
    body: &str,
) -> (u16, String) {
    let ts = hookbridge::ingress::auth::system_clock().to_string();
    let signature = sign_v1(secret, id, &ts, body.as_bytes());
    let (status, _, json) = request(
        &http_client(),
        "POST",
        &bridge.url(path),
        &[
            ("content-type", "application/json"),
            ("webhook-id", id),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &signature),
        ],
        body.to_owned(),
    )
    .await
    .unwrap();
    let word = json["status"].as_str().or(json["error"].as_str());
    (status, word.unwrap_or_default().to_owned())
}

/// Posts as [`post_signed`] and asserts the status and JSON `status` / `error`.
async fn expect_post(
    bridge: &BridgeProcess,
    path: &str,
    secret: &str,
    id: &str,
    body: &str,
    want: (u16, &str),
) {
    let got = post_signed(bridge, path, secret, id, body).await;
    assert_eq!((got.0, got.1.as_str()), want, "{id} to {path}");
}

/// One published message: where it went, its `webhook-id` and `hookbridge-endpoint`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Out {
    destination: String,
    id: String,
    endpoint: String,
}

/// `hookbridge asyncapi` for the bridge's configuration: each channel's address and the header
/// schema of its message.
fn documented_headers(env: &[(String, String)]) -> HashMap<String, serde_json::Value> {
    let doc = stdout_of(
        std::process::Command::new(env!("CARGO_BIN_EXE_hookbridge"))
            .env_clear()
            .envs(env.iter().cloned())
            .args(["asyncapi", "--format", "json"]),
    );
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    doc["channels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, ch)| {
            let headers = doc["components"]["messages"][id]["headers"].clone();
            (ch["address"].as_str().unwrap().to_owned(), headers)
        })
        .collect()
}

/// `out` (with `headers`) is what the document says its channel carries.
fn check_documented(
    documented: &HashMap<String, serde_json::Value>,
    out: &Out,
    headers: &[(String, String)],
) {
    let schema = documented
        .get(&out.destination)
        .unwrap_or_else(|| panic!("{}: no channel in the AsyncAPI document", out.destination));
    let described = schema["properties"].as_object().unwrap();
    for (name, value) in headers {
        let d = described.get(name).unwrap_or_else(|| {
            panic!(
                "{}: header {name} is published but not in the AsyncAPI document",
                out.destination
            )
        });
        if let Some(fixed) = d.get("const") {
            assert_eq!(fixed, value, "{}: header {name}", out.destination);
        }
    }
    for name in schema["required"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        assert!(
            headers.iter().any(|(n, _)| n == name),
            "{}: required header {name} missing",
            out.destination
        );
    }
    if let Some((_, msg_id)) = headers.iter().find(|(n, _)| n == "Nats-Msg-Id") {
        let want = match out.endpoint.as_str() {
            "default" => out.id.clone(),
            e => format!("{e}:{}", out.id),
        };
        assert_eq!(
            msg_id, &want,
            "Nats-Msg-Id is <endpoint>:<id> off the default"
        );
    }
}

/// The scenario on either broker. `read` returns every message published under `prefix.`,
/// with its headers.
async fn two_senders<R, F>(env: Vec<(String, String)>, prefix: &str, read: R)
where
    R: Fn(usize) -> F,
    F: std::future::Future<Output = Vec<(Out, Vec<(String, String)>)>>,
{
    let dir = tempfile::tempdir().unwrap();
    let mut env = env;
    env.push(("HOOKBRIDGE_CONFIG".into(), config_file(dir.path(), prefix)));
    let mut bridge = BridgeProcess::spawn(&env).await;
    let body = |rid: &str| common::body("session.updated", rid, 1);

    // Each sender on its own path.
    let mut expected = Vec::new();
    for i in 0..3 {
        for (endpoint, path, secret, tag) in [
            ("default", PROD_PATH, PROD_SECRET, "prod"),
            ("sandbox", SANDBOX_PATH, SANDBOX_SECRET, "sandbox"),
        ] {
            let id = format!("msg_{tag}_{i}");
            expect_post(&bridge, path, secret, &id, &body(tag), (200, "accepted")).await;
            expected.push((endpoint, id));
        }
    }
    // Cross-posting: a secret opens its own endpoint only.
    expect_post(
        &bridge,
        PROD_PATH,
        SANDBOX_SECRET,
        "msg_cross_1",
        &body("x"),
        (401, "no_matching_signature"),
    )
    .await;
    expect_post(
        &bridge,
        SANDBOX_PATH,
        PROD_SECRET,
        "msg_cross_2",
        &body("x"),
        (401, "no_matching_signature"),
    )
    .await;
    // The same id on both endpoints is two deliveries; a repeat on one is a duplicate.
    for (path, secret, endpoint) in [
        (PROD_PATH, PROD_SECRET, "default"),
        (SANDBOX_PATH, SANDBOX_SECRET, "sandbox"),
    ] {
        expect_post(
            &bridge,
            path,
            secret,
            "msg_same",
            &body("same"),
            (200, "accepted"),
        )
        .await;
        expected.push((endpoint, "msg_same".into()));
    }
    expect_post(
        &bridge,
        SANDBOX_PATH,
        SANDBOX_SECRET,
        "msg_same",
        &body("same"),
        (200, "duplicate"),
    )
    .await;

    // A restart on the same spool and configuration changes none of this. (A clean stop: the
    // de-duplication journal is written behind the acknowledgements, so a SIGKILL right after
    // the last request may forget the newest ids, which then arrive twice, never zero times.)
    bridge.sigterm();
    assert!(
        bridge.wait_exit(Duration::from_secs(30)).await.is_some(),
        "the bridge stops on SIGTERM"
    );
    let bridge = BridgeProcess::spawn(&env).await;
    for (path, secret) in [(PROD_PATH, PROD_SECRET), (SANDBOX_PATH, SANDBOX_SECRET)] {
        expect_post(
            &bridge,
            path,
            secret,
            "msg_same",
            &body("same"),
            (200, "duplicate"),
        )
        .await;
    }
    expect_post(
        &bridge,
        SANDBOX_PATH,
        PROD_SECRET,
        "msg_cross_3",
        &body("x"),
        (401, "no_matching_signature"),
    )
    .await;
    expect_post(
        &bridge,
        SANDBOX_PATH,
        SANDBOX_SECRET,
        "msg_after",
        &body("s"),
        (200, "accepted"),
    )
    .await;
    expected.push(("sandbox", "msg_after".into()));

    let mut want: Vec<Out> = expected
        .iter()
        .map(|(endpoint, id)| Out {
            destination: match *endpoint {
                "default" => format!("{prefix}.session.updated"),
                _ => format!("{prefix}-sandbox.session.updated"),
            },
            id: id.clone(),
            endpoint: endpoint.to_string(),
        })
        .collect();
    want.sort();
    let documented = documented_headers(&env);
    let mut got: Vec<Out> = read(want.len())
        .await
        .into_iter()
        .map(|(out, headers)| {
            check_documented(&documented, &out, &headers);
            out
        })
        .collect();
    got.sort();
    assert_eq!(
        got, want,
        "each delivery once, under its own endpoint's namespace only"
    );
    wait_drained(&http_client(), bridge.admin, Duration::from_secs(10)).await;

    // The counters since the restart, per endpoint: one acceptance and one refusal at sandbox.
    let client = http_client();
    let m = |name: &'static str, filter: &'static str| metric(&client, bridge.admin, name, filter);
    assert_eq!(
        m(
            "hookbridge_deliveries_accepted_total",
            r#"endpoint="sandbox""#
        )
        .await,
        1.0
    );
    assert_eq!(
        m(
            "hookbridge_deliveries_accepted_total",
            r#"endpoint="default""#
        )
        .await,
        0.0
    );
    assert_eq!(
        m(
            "hookbridge_deliveries_rejected_total",
            r#"endpoint="sandbox",reason="no_matching_signature""#
        )
        .await,
        1.0
    );
    let (status, _, doc) = request(&client, "GET", &bridge.admin_url("/api/v1/status"), &[], "")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let names: Vec<&str> = doc["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "sandbox"]);
    assert_eq!(doc["endpoints"][1]["accepted_total"], 1);
    assert_eq!(doc["endpoints"][1]["rejected_total"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_senders_on_jetstream() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let spool = tempfile::tempdir().unwrap();
    let prefix = unique("ep");
    let stream = prefix.to_uppercase();
    let env = bridge_env(spool.path(), &prefix, &stream);
    let js = jetstream(&nats_url()).await;
    two_senders(env, &prefix, |n| {
        let (js, stream) = (js.clone(), stream.clone());
        async move {
            read_stream(&js, &stream, n, Duration::from_secs(20))
                .await
                .into_iter()
                .map(|m| {
                    let out = Out {
                        destination: m.subject.to_string(),
                        id: m.header("webhook-id").unwrap_or_default().to_owned(),
                        endpoint: m
                            .header("hookbridge-endpoint")
                            .unwrap_or_default()
                            .to_owned(),
                    };
                    (out, m.headers)
                })
                .collect()
        }
    })
    .await;
    delete_stream(&js, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_senders_on_kafka() {
    if !require(&[Tier::Kafka]) {
        return;
    }
    let tansu = Tansu::started().await;
    let spool = tempfile::tempdir().unwrap();
    let prefix = unique("ep");
    let env = kafka_bridge_env(spool.path(), &prefix, &tansu.brokers());
    let brokers = tansu.brokers();
    two_senders(env, &prefix, |_| {
        let (brokers, prefix) = (brokers.clone(), prefix.clone());
        async move {
            let mut out = Vec::new();
            for topic in [
                format!("{prefix}.session.updated"),
                format!("{prefix}-sandbox.session.updated"),
            ] {
                for r in kafka_read_all(&brokers, &topic, Duration::from_secs(30)).await {
                    let header = |name: &str| r.header(name).unwrap_or_default().to_owned();
                    let o = Out {
                        destination: r.topic.clone(),
                        id: header("webhook-id"),
                        endpoint: header("hookbridge-endpoint"),
                    };
                    out.push((o, r.headers.clone()));
                }
            }
            out
        }
    })
    .await;
}
