//! The sender's W3C trace context travels with the delivery (issue 27, first part): a valid
//! `traceparent` / `tracestate` on the request is stored in the spool record and published as
//! headers, also when the delivery waited out a crash in the spool; an invalid one is ignored,
//! never a reason to refuse the delivery.

mod common;

use std::time::Duration;

use common::*;

const PATH: &str = "/webhooks/sessionboard";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_senders_trace_context_survives_a_crash_and_reaches_jetstream() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let spool = tempfile::tempdir().unwrap();
    let prefix = unique("tc");
    let stream = prefix.to_uppercase();
    let env = bridge_env(spool.path(), &prefix, &stream);
    // First the broker is unreachable: the deliveries wait in the spool.
    let mut offline = env.clone();
    offline.push((
        "HOOKBRIDGE_SINK__NATS__URL".into(),
        "nats://127.0.0.1:1".into(),
    ));
    let mut bridge = BridgeProcess::spawn(&offline).await;
    let client = http_client();
    for (id, traceparent, tracestate) in [
        ("msg_traced", TRACEPARENT, Some(TRACESTATE)),
        ("msg_untraced", "", None),
        (
            "msg_bad_trace",
            "00-xyz-00f067aa0ba902b7-01",
            Some(TRACESTATE),
        ),
    ] {
        let mut headers = vec![("content-type", "application/json"), ("webhook-id", id)];
        if !traceparent.is_empty() {
            headers.push(("traceparent", traceparent));
        }
        if let Some(state) = tracestate {
            headers.push(("tracestate", state));
        }
        let body = common::body("session.updated", id, 1);
        let (status, _, json) = request(&client, "POST", &bridge.url(PATH), &headers, body)
            .await
            .unwrap();
        assert_eq!(
            (status, json["status"].as_str()),
            (200, Some("accepted")),
            "{id}"
        );
    }
    bridge.kill9();

    let bridge = BridgeProcess::spawn(&env).await;
    let js = jetstream(&nats_url()).await;
    let got = read_stream(&js, &stream, 3, Duration::from_secs(20)).await;
    let by_id = |id: &str| {
        got.iter()
            .find(|m| m.header("webhook-id") == Some(id))
            .unwrap_or_else(|| panic!("{id} was not published"))
    };
    let traced = by_id("msg_traced");
    assert_eq!(traced.header("traceparent"), Some(TRACEPARENT));
    assert_eq!(traced.header("tracestate"), Some(TRACESTATE));
    for id in ["msg_untraced", "msg_bad_trace"] {
        assert_eq!(by_id(id).header("traceparent"), None, "{id}");
        assert_eq!(by_id(id).header("tracestate"), None, "{id}");
    }
    wait_drained(&client, bridge.admin, Duration::from_secs(10)).await;
    delete_stream(&js, &stream).await;
}
