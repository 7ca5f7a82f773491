//! The admin API from a test: dead letters made the way the forwarder makes them, API calls
//! with or without the token, and where a delivery id is (the store, the spool).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::Path;

use bytes::Bytes;
use hookbridge::deadletter::{DeadLetters, Meta};
use hookbridge::delivery::Delivery;
use serde_json::Value;

use super::body;
use super::http::{request, HttpClient};
use super::process::bridge_env;
use super::unique;

/// The admin token of the tests' bridges ([`token_file`]).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The action of the dead letters [`put_dead_letter`] makes.
pub const DL_ACTION: &str = "session.updated";

/// A dead letter made the way the forwarder makes one: the delivery's spool payload and its meta.
pub fn put_dead_letter(dir: &Path, seq: u64, id: &str, rid: &str, n: u64, reason: &str) {
    let dl = DeadLetters::open(dir).unwrap();
    let d = Delivery {
        id: id.to_owned(),
        timestamp: None,
        action: DL_ACTION.to_owned(),
        resource_id: rid.to_owned(),
        org_id: None,
        event_id: None,
        received_at_ms: hookbridge::clock::now_ms(),
        reject_reason: None,
        copied: None,
        endpoint: None,
        trace: None,
        body: Bytes::from(body(DL_ACTION, rid, n)),
    };
    let meta = Meta {
        seq,
        id: id.to_owned(),
        action: DL_ACTION.to_owned(),
        destination: format!("x.{DL_ACTION}"),
        reason: reason.to_owned(),
        error: "made by the test".to_owned(),
        dead_lettered_at_ms: hookbridge::clock::now_ms(),
    };
    dl.put(&meta, &d.encode()).unwrap();
}

/// Writes [`ADMIN_TOKEN`] to a file in `dir`; returns its path.
pub fn token_file(dir: &Path) -> String {
    let f = dir.join("admin-token");
    std::fs::write(&f, format!("{ADMIN_TOKEN}\n")).unwrap();
    f.display().to_string()
}

/// One `/api/v1/` call: status and JSON answer.
pub async fn api(
    client: &HttpClient,
    admin: SocketAddr,
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

/// Delivery ids in the spool directory (any record, confirmed or not).
pub fn ids_in_spool(dir: &Path) -> HashSet<String> {
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

pub fn ids_in_store(dir: &Path) -> HashSet<String> {
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

/// The binary on a fresh spool with the admin token, retention on.
pub fn env_with_token(spool: &Path, etc: &Path, tag: &str) -> (Vec<(String, String)>, String) {
    let id = unique(tag);
    let mut env = bridge_env(spool, &id, &id.to_uppercase());
    env.push(("HOOKBRIDGE_ADMIN__TOKEN_FILE".into(), token_file(etc)));
    env.push(("HOOKBRIDGE_SPOOL__RETAIN_CONFIRMED".into(), "1h".into()));
    env.push(("HOOKBRIDGE_SPOOL__CONFIRM_INTERVAL".into(), "100ms".into()));
    (env, id.to_uppercase())
}

/// `POST /api/v1/{path}` with [`ADMIN_TOKEN`].
pub async fn admin_post(
    client: &HttpClient,
    admin: SocketAddr,
    path: &str,
    body: &str,
) -> (u16, Value) {
    api(client, admin, "POST", path, Some(ADMIN_TOKEN), body).await
}

/// `GET /api/v1/{path}` with [`ADMIN_TOKEN`].
pub async fn admin_get(client: &HttpClient, admin: SocketAddr, path: &str) -> (u16, Value) {
    api(client, admin, "GET", path, Some(ADMIN_TOKEN), "").await
}

/// Requeues the dead letters `selection` (JSON) names on the bridge at `admin`, checks that
/// `n` were requeued, and waits until its backlog is empty again.
pub async fn requeue_and_drain(client: &HttpClient, admin: SocketAddr, selection: &str, n: usize) {
    let (s, v) = admin_post(client, admin, "dead-letters/requeue", selection).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["requeued"].as_array().unwrap().len(), n, "{v}");
    super::http::wait_drained(client, admin, std::time::Duration::from_secs(60))
        .await
        .expect("drained");
}
