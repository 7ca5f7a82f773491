//! The admin API on a running bridge (issue 25), against the real binary and JetStream (and
//! tansu for Kafka): requeue and replay while live deliveries keep arriving lose nothing and keep
//! per-resource order; a SIGKILL during a bulk requeue leaves every record in the store or in the
//! spool; a wrong or missing token changes nothing; without a token the API is off; the CLI takes
//! the live path while the bridge holds the lock.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use hookbridge::deadletter::DeadLetters;
use serde_json::{json, Value};

const PATH: &str = "/webhooks/sessionboard";
const TOKEN: &str = ADMIN_TOKEN;
const ACTION: &str = "session.updated";

/// Every id of `want` is in `got`, once; within each resource the `n`s count up.
fn check_once_in_order(got: &[Received], want: &HashSet<String>) {
    let mut seen = HashSet::new();
    let mut by_resource: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in got {
        let id = m.header("webhook-id").unwrap_or_default().to_owned();
        if !want.contains(&id) {
            continue;
        }
        assert!(seen.insert(id.clone()), "{id} arrived twice");
        let v = m.json();
        by_resource
            .entry(v["data"]["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(v["data"]["n"].as_u64().unwrap());
    }
    let missing: Vec<_> = want.difference(&seen).collect();
    assert!(missing.is_empty(), "{} missing: {missing:?}", missing.len());
    for (r, ns) in by_resource {
        let mut sorted = ns.clone();
        sorted.sort();
        assert_eq!(ns, sorted, "resource {r} out of order");
    }
}

/// Delivers 200 records (`old-*`), waits until a replay plan sees them all retained, then loses
/// them at the broker: a new stream of the same configuration (a purge would keep the
/// de-duplication window, see tests/spool_replay.rs). Returns their ids.
async fn deliver_then_lose(
    client: &HttpClient,
    bridge: &BridgeProcess,
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Vec<String> {
    let old: Vec<String> = (0..200).map(|i| format!("old-{i}")).collect();
    for (i, id) in old.iter().enumerate() {
        let b = body(ACTION, &format!("o{}", i % 10), i as u64 / 10);
        assert_eq!(post(client, &bridge.url(PATH), id, b).await, 200);
    }
    wait_drained(client, bridge.admin, Duration::from_secs(30))
        .await
        .expect("drained");
    assert_eq!(
        read_stream(js, stream, 200, Duration::from_secs(10))
            .await
            .len(),
        200
    );

    // The plan sees the 200 once the persisted confirmed position covers them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = admin_post(
            client,
            bridge.admin,
            "replay",
            r#"{"since":"1","until":"200","dry_run":true}"#,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        if v["plan"]["records"] == 200 {
            assert_eq!(v["plan"]["by_action"][ACTION], 200, "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "plan never saw the 200: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let config = js
        .get_stream(stream)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    delete_stream(js, stream).await;
    js.create_stream(config).await.unwrap();

    old
}

// Over 80 lines: one story (live load, a replay and a requeue racing it, then the count) told in
// order; its set-up is `deliver_then_lose`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_and_replay_under_live_load_lose_nothing_and_keep_order() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let began = Instant::now();
    let (spool, etc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for i in 0..5 {
        put_dead_letter(
            spool.path(),
            1_000_000 + i,
            &format!("dl-{i}"),
            &format!("d{i}"),
            0,
            "too_large",
        );
    }
    let (env, stream) = env_with_token(spool.path(), etc.path(), "apiload");
    let bridge = BridgeProcess::spawn(&env).await;
    let client = http_client();
    let js = jetstream(&nats_url()).await;
    let old = deliver_then_lose(&client, &bridge, &js, &stream).await;

    // 600 live deliveries from six senders, each in order on its own resources.
    let senders: Vec<_> = (0..6)
        .map(|s| {
            let (client, url) = (client.clone(), bridge.url(PATH));
            tokio::spawn(async move {
                for i in 0..100u64 {
                    let b = body(ACTION, &format!("l{s}-{}", i % 5), i / 5);
                    assert_eq!(post(&client, &url, &format!("live-{s}-{i}"), b).await, 200);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s, v) = admin_post(
        &client,
        bridge.admin,
        "replay",
        r#"{"since":"1","until":"200"}"#,
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let job = v["job"].as_u64().unwrap();
    // One changing action at a time.
    let (s, v) = admin_post(
        &client,
        bridge.admin,
        "dead-letters/requeue",
        r#"{"all":true}"#,
    )
    .await;
    let requeued = if s == 409 {
        assert_eq!(v["error"], "busy", "{v}");
        None
    } else {
        Some(v)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = admin_get(&client, bridge.admin, &format!("replay/{job}")).await;
        assert_eq!(s, 200, "{v}");
        if v["state"] == "done" {
            assert_eq!(v["appended"], 200, "{v}");
            break;
        }
        assert_ne!(v["state"], "failed", "{v}");
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let requeued = match requeued {
        Some(v) => v,
        None => {
            admin_post(
                &client,
                bridge.admin,
                "dead-letters/requeue",
                r#"{"all":true}"#,
            )
            .await
            .1
        }
    };
    assert_eq!(
        requeued["requeued"].as_array().unwrap().len(),
        5,
        "{requeued}"
    );
    for s in senders {
        s.await.unwrap();
    }
    wait_drained(&client, bridge.admin, Duration::from_secs(60))
        .await
        .expect("drained");
    let got = read_stream(&js, &stream, 805, Duration::from_secs(30)).await;
    let mut want: HashSet<String> = old.into_iter().collect();
    want.extend((0..6).flat_map(|s| (0..100).map(move |i| format!("live-{s}-{i}"))));
    want.extend((0..5).map(|i| format!("dl-{i}")));
    check_once_in_order(&got, &want);
    assert_eq!(got.len(), 805, "nothing else arrived");
    let copies = got
        .iter()
        .filter(|m| m.header("hookbridge-copy").is_some())
        .count();
    assert_eq!(copies, 205, "replayed and requeued copies are marked");
    let metrics = metrics_text(&client, bridge.admin).await;
    for line in [
        r#"hookbridge_admin_records_total{action="replay"} 200"#,
        r#"hookbridge_admin_records_total{action="requeue"} 5"#,
    ] {
        assert!(metrics.contains(line), "{line}");
    }
    assert!(DeadLetters::open_existing(spool.path())
        .unwrap()
        .unwrap()
        .is_empty());
    eprintln!(
        "load: 200 replayed + 5 requeued while 600 live: {} arrived in {:?}",
        got.len(),
        began.elapsed()
    );
    delete_stream(&js, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_bulk_requeue_leaves_every_record_in_the_store_or_the_spool() {
    if !require(&[Tier::Nats]) {
        return;
    }
    const N: u64 = 300;
    let client = http_client();
    let js = jetstream(&nats_url()).await;
    for run in 0..3 {
        let began = Instant::now();
        let (spool, etc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let want: HashSet<String> = (0..N).map(|i| format!("k{run}-{i}")).collect();
        for i in 0..N {
            put_dead_letter(
                spool.path(),
                1_000_000 + i,
                &format!("k{run}-{i}"),
                &format!("k{}", i % 10),
                i / 10,
                "too_large",
            );
        }
        let (env, stream) = env_with_token(spool.path(), etc.path(), "apikill");
        let mut bridge = BridgeProcess::spawn(&env).await;
        let admin = bridge.admin;
        let c = client.clone();
        let call = tokio::spawn(async move {
            admin_post(&c, admin, "dead-letters/requeue", r#"{"all":true}"#).await
        });
        let delay = Duration::from_millis(rand::random_range(2..60));
        tokio::time::sleep(delay).await;
        bridge.kill9();
        let _ = call.await;
        let (store, in_spool) = (ids_in_store(spool.path()), ids_in_spool(spool.path()));
        let both = store.intersection(&in_spool).count();
        let lost: Vec<_> = want
            .iter()
            .filter(|id| !store.contains(*id) && !in_spool.contains(*id))
            .collect();
        assert!(
            lost.is_empty(),
            "run {run}: killed after {delay:?}, lost {lost:?}"
        );
        eprintln!(
            "run {run}: killed after {delay:?}: {} in the store, {} in the spool, {both} in both",
            store.len(),
            in_spool.len()
        );

        // Restart: the spool's copies are forwarded; what is still in the store is requeued.
        let bridge = BridgeProcess::spawn(&env).await;
        if !store.is_empty() {
            let (s, v) = admin_post(
                &client,
                bridge.admin,
                "dead-letters/requeue",
                r#"{"all":true}"#,
            )
            .await;
            assert_eq!(s, 200, "{v}");
        }
        wait_drained(&client, bridge.admin, Duration::from_secs(60))
            .await
            .expect("drained");
        let got = read_stream(&js, &stream, N as usize, Duration::from_secs(30)).await;
        let ids: HashSet<String> = got
            .iter()
            .filter_map(|m| m.header("webhook-id").map(str::to_owned))
            .collect();
        let missing: Vec<_> = want.difference(&ids).collect();
        assert!(missing.is_empty(), "run {run}: not delivered: {missing:?}");
        assert!(ids_in_store(spool.path()).is_empty());
        eprintln!(
            "run {run}: all {N} delivered after the restart ({:?})",
            began.elapsed()
        );
        delete_stream(&js, &stream).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_token_gets_401_and_changes_nothing() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let (spool, etc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for i in 0..3 {
        put_dead_letter(
            spool.path(),
            10 + i,
            &format!("t-{i}"),
            "t",
            i,
            if i == 0 {
                "too_large"
            } else {
                "topic_authorization_failed"
            },
        );
    }
    let (env, _) = env_with_token(spool.path(), etc.path(), "apiauth");
    let bridge = BridgeProcess::spawn(&env).await;
    let client = http_client();
    let a = bridge.admin;
    for token in [
        None,
        Some("wrong-token-0123456789"),
        Some(&TOKEN[..TOKEN.len() - 1]),
    ] {
        for (method, path, body) in [
            ("POST", "dead-letters/requeue", r#"{"all":true}"#),
            (
                "POST",
                "dead-letters/purge",
                r#"{"all":true,"confirm":"purge"}"#,
            ),
            ("POST", "replay", r#"{"since":"1"}"#),
            ("GET", "dead-letters", ""),
            ("GET", "dead-letters/10", ""),
        ] {
            let (s, v) = api(&client, a, method, path, token, body).await;
            assert_eq!(
                (s, v["error"].as_str()),
                (401, Some("unauthorized")),
                "{method} {path} {token:?}: {v}"
            );
        }
    }
    assert_eq!(ids_in_store(spool.path()).len(), 3, "nothing changed");
    let m = metrics_text(&client, a).await;
    assert!(
        m.contains(r#"hookbridge_admin_actions_total{action="requeue",outcome="unauthorized"} 3"#),
        "{m}"
    );
}

// Over 80 lines: mostly the table of bad requests and their answers, one row each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_json_errors_reads_page_and_actions_count() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let (spool, etc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for i in 0..3 {
        let reason = if i == 0 {
            "too_large"
        } else {
            "topic_authorization_failed"
        };
        put_dead_letter(spool.path(), 10 + i, &format!("t-{i}"), "t", i, reason);
    }
    let (env, stream) = env_with_token(spool.path(), etc.path(), "apibad");
    let bridge = BridgeProcess::spawn(&env).await;
    let client = http_client();
    let a = bridge.admin;
    // Bad input, with the right token: JSON errors, nothing changed.
    for (method, path, body, status, code) in [
        ("POST", "dead-letters/requeue", "{", 400, "bad_json"),
        (
            "POST",
            "dead-letters/requeue",
            r#"{"sq":[1]}"#,
            400,
            "bad_request",
        ),
        ("POST", "dead-letters/requeue", "{}", 400, "bad_request"),
        (
            "POST",
            "dead-letters/requeue",
            r#"{"all":true,"reason":"x"}"#,
            400,
            "bad_request",
        ),
        (
            "POST",
            "dead-letters/requeue",
            r#"{"reason":"nope"}"#,
            404,
            "nothing_selected",
        ),
        (
            "POST",
            "dead-letters/purge",
            r#"{"all":true}"#,
            400,
            "confirm",
        ),
        (
            "POST",
            "replay",
            r#"{"since":"tomorrow"}"#,
            400,
            "bad_request",
        ),
        ("POST", "replay", "{}", 400, "bad_request"),
        ("GET", "dead-letters?colour=red", "", 400, "bad_query"),
        ("GET", "dead-letters/x", "", 400, "bad_seq"),
        ("GET", "dead-letters/99", "", 404, "not_found"),
        ("GET", "replay/7", "", 404, "not_found"),
        ("DELETE", "dead-letters", "", 405, "method_not_allowed"),
        ("GET", "nothing-here", "", 404, "not_found"),
    ] {
        let (s, v) = api(&client, a, method, path, Some(TOKEN), body).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (status, Some(code)),
            "{method} {path} {body}: {v}"
        );
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    let big = format!(r#"{{"id":"{}"}}"#, "x".repeat(70 * 1024));
    let (s, v) = admin_post(&client, a, "dead-letters/requeue", &big).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (413, Some("body_too_large")),
        "{v}"
    );
    assert_eq!(ids_in_store(spool.path()).len(), 3, "nothing changed");

    // Reads: a page at a time, groups, one record with its body.
    let (s, v) = admin_get(&client, a, "dead-letters?limit=2").await;
    assert_eq!(
        (s, v["items"].as_array().unwrap().len(), v["total"].as_u64()),
        (200, 2, Some(3)),
        "{v}"
    );
    let next = v["next_cursor"].as_str().unwrap().to_owned();
    let (_, v) = admin_get(&client, a, &format!("dead-letters?limit=2&cursor={next}")).await;
    assert_eq!(v["items"][0]["seq"], 12, "{v}");
    assert_eq!(v["next_cursor"], Value::Null);
    let (_, v) = admin_get(&client, a, "dead-letters?reason=too_large").await;
    assert_eq!(v["total"], 1, "{v}");
    let (_, v) = admin_get(&client, a, "dead-letters/groups").await;
    assert_eq!(
        v["groups"],
        json!([
            {"reason": "too_large", "action": ACTION, "count": 1},
            {"reason": "topic_authorization_failed", "action": ACTION, "count": 2},
        ]),
        "{v}"
    );
    let (_, v) = admin_get(&client, a, "dead-letters/11").await;
    assert_eq!(v["id"], "t-1", "{v}");
    assert_eq!(
        serde_json::from_str::<Value>(v["body"].as_str().unwrap()).unwrap()["data"]["n"],
        1
    );

    // Purge one, requeue one by seq: both audited and counted.
    let (s, v) = admin_post(
        &client,
        a,
        "dead-letters/purge",
        r#"{"seq":[12],"confirm":"purge"}"#,
    )
    .await;
    assert_eq!((s, v["purged"].as_u64()), (200, Some(1)), "{v}");
    let (s, v) = admin_post(&client, a, "dead-letters/requeue", r#"{"seq":[10]}"#).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["requeued"][0]["id"], "t-0", "{v}");
    assert_eq!(
        ids_in_store(spool.path()),
        HashSet::from(["t-1".to_owned()])
    );
    let js = jetstream(&nats_url()).await;
    let got = read_stream(&js, &stream, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("hookbridge-copy"), Some("requeue"));
    delete_stream(&js, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_the_status_answers() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let spool = tempfile::tempdir().unwrap();
    put_dead_letter(spool.path(), 1, "n-1", "n", 0, "too_large");
    let id = unique("apinotoken");
    let bridge = BridgeProcess::spawn(&bridge_env(spool.path(), &id, &id.to_uppercase())).await;
    let client = http_client();
    let (s, v) = api(&client, bridge.admin, "GET", "status", None, "").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["readyz"]["dead_letters"].as_u64(),
            v["api_enabled"].as_bool()
        ),
        (Some(1), Some(false)),
        "{v}"
    );
    for (method, path, body) in [
        ("POST", "dead-letters/requeue", r#"{"all":true}"#),
        (
            "POST",
            "dead-letters/purge",
            r#"{"all":true,"confirm":"purge"}"#,
        ),
        ("POST", "replay", r#"{"since":"1"}"#),
        ("GET", "dead-letters", ""),
    ] {
        for token in [None, Some(TOKEN)] {
            let (s, v) = api(&client, bridge.admin, method, path, token, body).await;
            assert_eq!(
                (s, v["error"].as_str()),
                (403, Some("no_token")),
                "{method} {path}: {v}"
            );
        }
    }
    assert_eq!(ids_in_store(spool.path()).len(), 1);
    // The CLI says why it cannot take the live path, and changes nothing.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_hookbridge"))
        .args([
            "spool",
            "--dir",
            &spool.path().display().to_string(),
            "dead-letter",
            "requeue",
            "--all",
        ])
        .env("HOOKBRIDGE_ADMIN__LISTEN", bridge.admin.to_string())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("locked") && err.contains("admin.token_file"),
        "{err}"
    );
    assert_eq!(ids_in_store(spool.path()).len(), 1);
}
