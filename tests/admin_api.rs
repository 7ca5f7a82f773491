//! The admin API on a running bridge (issue 25), against the real binary and JetStream (and
//! tansu for Kafka): requeue and replay while live deliveries keep arriving lose nothing and keep
//! per-resource order; a SIGKILL during a bulk requeue leaves every record in the store or in the
//! spool; a wrong or missing token changes nothing; without a token the API is off; the CLI takes
//! the live path while the bridge holds the lock.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use hookbridge::deadletter::{DeadLetters, Meta};
use hookbridge::delivery::Delivery;
use serde_json::{json, Value};

const PATH: &str = "/webhooks/sessionboard";
const TOKEN: &str = "test-admin-token-0123456789";
const ACTION: &str = "session.updated";

/// A dead letter made the way the forwarder makes one: the delivery's spool payload and its meta.
fn put_dead_letter(dir: &Path, seq: u64, id: &str, rid: &str, n: u64, reason: &str) {
    let dl = DeadLetters::open(dir).unwrap();
    let d = Delivery {
        id: id.to_owned(),
        timestamp: None,
        action: ACTION.to_owned(),
        resource_id: rid.to_owned(),
        org_id: None,
        event_id: None,
        received_at_ms: hookbridge::clock::now_ms(),
        reject_reason: None,
        copied: None,
        body: Bytes::from(body(ACTION, rid, n)),
    };
    let meta = Meta {
        seq,
        id: id.to_owned(),
        action: ACTION.to_owned(),
        destination: format!("x.{ACTION}"),
        reason: reason.to_owned(),
        error: "made by the test".to_owned(),
        dead_lettered_at_ms: hookbridge::clock::now_ms(),
    };
    dl.put(&meta, &d.encode()).unwrap();
}

fn token_file(dir: &Path) -> String {
    let f = dir.join("admin-token");
    std::fs::write(&f, format!("{TOKEN}\n")).unwrap();
    f.display().to_string()
}

/// The binary on a fresh spool with the admin token, retention on.
fn env_with_token(spool: &Path, etc: &Path, tag: &str) -> (Vec<(String, String)>, String) {
    let id = unique(tag);
    let mut env = bridge_env(spool, &id, &id.to_uppercase());
    env.push(("HOOKBRIDGE_ADMIN__TOKEN_FILE".into(), token_file(etc)));
    env.push(("HOOKBRIDGE_SPOOL__RETAIN_CONFIRMED".into(), "1h".into()));
    env.push(("HOOKBRIDGE_SPOOL__CONFIRM_INTERVAL".into(), "100ms".into()));
    (env, id.to_uppercase())
}

async fn api(
    client: &HttpClient,
    admin: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let url = format!("http://{admin}/api/v1/{path}");
    let (status, _, v) = request(client, method, &url, &headers, body.to_owned())
        .await
        .unwrap();
    (status, v)
}

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
    let old: Vec<String> = (0..200).map(|i| format!("old-{i}")).collect();
    for (i, id) in old.iter().enumerate() {
        let b = body(ACTION, &format!("o{}", i % 10), i as u64 / 10);
        assert_eq!(post(&client, &bridge.url(PATH), id, b).await, 200);
    }
    wait_drained(&client, bridge.admin, Duration::from_secs(30))
        .await
        .expect("drained");
    let js = jetstream(&nats_url()).await;
    assert_eq!(
        read_stream(&js, &stream, 200, Duration::from_secs(10))
            .await
            .len(),
        200
    );

    // The plan sees the 200 once the persisted confirmed position covers them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = api(
            &client,
            bridge.admin,
            "POST",
            "replay",
            Some(TOKEN),
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

    // The broker loses them: a new stream of the same configuration (a purge would keep the
    // de-duplication window, see tests/spool_replay.rs).
    let config = js
        .get_stream(&stream)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    delete_stream(&js, &stream).await;
    js.create_stream(config).await.unwrap();

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
    let (s, v) = api(
        &client,
        bridge.admin,
        "POST",
        "replay",
        Some(TOKEN),
        r#"{"since":"1","until":"200"}"#,
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let job = v["job"].as_u64().unwrap();
    // One changing action at a time.
    let (s, v) = api(
        &client,
        bridge.admin,
        "POST",
        "dead-letters/requeue",
        Some(TOKEN),
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
        let (s, v) = api(
            &client,
            bridge.admin,
            "GET",
            &format!("replay/{job}"),
            Some(TOKEN),
            "",
        )
        .await;
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
            api(
                &client,
                bridge.admin,
                "POST",
                "dead-letters/requeue",
                Some(TOKEN),
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

/// Delivery ids in the spool directory (any record, confirmed or not).
fn ids_in_spool(dir: &Path) -> HashSet<String> {
    let mut ids = HashSet::new();
    hookbridge::spool::inspect::survey(dir, &mut |r| {
        if let Ok(d) = Delivery::decode(Bytes::copy_from_slice(r.payload)) {
            ids.insert(d.id);
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    ids
}

fn ids_in_store(dir: &Path) -> HashSet<String> {
    DeadLetters::open_existing(dir)
        .unwrap()
        .map(|dl| {
            dl.list()
                .unwrap()
                .into_iter()
                .map(|m| m.unwrap().id)
                .collect()
        })
        .unwrap_or_default()
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
            api(
                &c,
                admin,
                "POST",
                "dead-letters/requeue",
                Some(TOKEN),
                r#"{"all":true}"#,
            )
            .await
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
            let (s, v) = api(
                &client,
                bridge.admin,
                "POST",
                "dead-letters/requeue",
                Some(TOKEN),
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
    let (env, stream) = env_with_token(spool.path(), etc.path(), "apiauth");
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
    let (s, v) = api(
        &client,
        a,
        "POST",
        "dead-letters/requeue",
        Some(TOKEN),
        &big,
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (413, Some("body_too_large")),
        "{v}"
    );
    assert_eq!(ids_in_store(spool.path()).len(), 3, "nothing changed");

    // Reads: a page at a time, groups, one record with its body.
    let (s, v) = api(&client, a, "GET", "dead-letters?limit=2", Some(TOKEN), "").await;
    assert_eq!(
        (s, v["items"].as_array().unwrap().len(), v["total"].as_u64()),
        (200, 2, Some(3)),
        "{v}"
    );
    let next = v["next_cursor"].as_str().unwrap().to_owned();
    let (_, v) = api(
        &client,
        a,
        "GET",
        &format!("dead-letters?limit=2&cursor={next}"),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(v["items"][0]["seq"], 12, "{v}");
    assert_eq!(v["next_cursor"], Value::Null);
    let (_, v) = api(
        &client,
        a,
        "GET",
        "dead-letters?reason=too_large",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(v["total"], 1, "{v}");
    let (_, v) = api(&client, a, "GET", "dead-letters/groups", Some(TOKEN), "").await;
    assert_eq!(
        v["groups"],
        json!([
            {"reason": "too_large", "action": ACTION, "count": 1},
            {"reason": "topic_authorization_failed", "action": ACTION, "count": 2},
        ]),
        "{v}"
    );
    let (_, v) = api(&client, a, "GET", "dead-letters/11", Some(TOKEN), "").await;
    assert_eq!(v["id"], "t-1", "{v}");
    assert_eq!(
        serde_json::from_str::<Value>(v["body"].as_str().unwrap()).unwrap()["data"]["n"],
        1
    );

    // Purge one, requeue one by seq: both audited and counted.
    let (s, v) = api(
        &client,
        a,
        "POST",
        "dead-letters/purge",
        Some(TOKEN),
        r#"{"seq":[12],"confirm":"purge"}"#,
    )
    .await;
    assert_eq!((s, v["purged"].as_u64()), (200, Some(1)), "{v}");
    let (s, v) = api(
        &client,
        a,
        "POST",
        "dead-letters/requeue",
        Some(TOKEN),
        r#"{"seq":[10]}"#,
    )
    .await;
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

fn spool_cli(
    spool: &Path,
    admin: std::net::SocketAddr,
    token: &str,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_hookbridge"))
        .arg("spool")
        .args(["--dir", &spool.display().to_string()])
        .args(args)
        .env("HOOKBRIDGE_ADMIN__LISTEN", admin.to_string())
        .env("HOOKBRIDGE_ADMIN__TOKEN_FILE", token)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_repairs_through_the_running_bridge() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let (spool, etc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    put_dead_letter(spool.path(), 100, "c-big", "c", 0, "too_large");
    put_dead_letter(
        spool.path(),
        101,
        "c-acl",
        "c",
        1,
        "topic_authorization_failed",
    );
    let (env, stream) = env_with_token(spool.path(), etc.path(), "apicli");
    let token = etc.path().join("admin-token").display().to_string();
    let bridge = BridgeProcess::spawn(&env).await;
    let client = http_client();
    assert_eq!(
        post(&client, &bridge.url(PATH), "c-new", body(ACTION, "c", 2)).await,
        200
    );
    wait_drained(&client, bridge.admin, Duration::from_secs(30))
        .await
        .expect("drained");

    let (code, out, err) = spool_cli(
        spool.path(),
        bridge.admin,
        &token,
        &["dead-letter", "requeue", "--reason", "too_large"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(
            "requeued dead letter seq 100 (id c-big, action session.updated) as spool seq"
        ),
        "{out}"
    );
    assert!(
        out.contains("requeued 1 record(s); the running bridge forwards them"),
        "{out}"
    );
    let (code, _, err) = spool_cli(
        spool.path(),
        bridge.admin,
        &token,
        &["dead-letter", "requeue", "--reason", "too_large"],
    );
    assert_eq!(
        code,
        Some(1),
        "nothing selected is a refusal, as offline: {err}"
    );
    assert!(
        err.contains("no dead letter with reason \"too_large\""),
        "{err}"
    );
    let (code, _, err) = spool_cli(
        spool.path(),
        bridge.admin,
        &token,
        &["dead-letter", "purge", "--all"],
    );
    assert_eq!(code, Some(2), "purge needs --yes: {err}");
    let (code, out, err) = spool_cli(
        spool.path(),
        bridge.admin,
        &token,
        &["dead-letter", "purge", "--all", "--yes"],
    );
    assert_eq!(
        (code, out.trim()),
        (Some(0), "purged 1 dead letter(s)"),
        "{err}"
    );
    let (code, _, err) = spool_cli(
        spool.path(),
        bridge.admin,
        &etc.path().join("nope").display().to_string(),
        &["dead-letter", "requeue", "--all"],
    );
    assert_eq!(code, Some(2), "{err}");

    // Replay: the plan, then the copies, through the bridge.
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let (code, out, err) = spool_cli(
            spool.path(),
            bridge.admin,
            &token,
            &[
                "replay",
                "--since",
                "1",
                "--dry-run",
                "--admin",
                &format!("http://{}", bridge.admin),
            ],
        );
        assert_eq!(code, Some(0), "{out}{err}");
        if out.contains("replay: 2 record(s) (2 retained") || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        out.contains("replay: 2 record(s) (2 retained, 0 dead letter(s)), seqs 1..=2"),
        "{out}"
    );
    assert!(out.contains("dry run: nothing changed"), "{out}");
    let (code, out, err) = spool_cli(
        spool.path(),
        bridge.admin,
        &token,
        &["replay", "--since", "1"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("replayed 2 record(s) as spool seqs 3..=4; the running bridge forwards them"),
        "{out}"
    );
    wait_drained(&client, bridge.admin, Duration::from_secs(30))
        .await
        .expect("drained");
    let js = jetstream(&nats_url()).await;
    let got = read_stream(&js, &stream, 2, Duration::from_secs(10)).await;
    // c-new, c-big (requeued); the replayed copies carry ids the stream already has.
    let ids: Vec<_> = got.iter().filter_map(|m| m.header("webhook-id")).collect();
    assert_eq!(
        ids,
        ["c-new", "c-big"],
        "JetStream drops the copies inside its window"
    );
    delete_stream(&js, &stream).await;
}
