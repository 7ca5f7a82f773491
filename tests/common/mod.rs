//! Shared test harness, by concern: the bridge under test ([`process`]), HTTP ([`http`]), NATS
//! ([`nats`]), Kafka ([`kafka`]), child servers ([`child`]), which services this machine has
//! ([`tier`]), waiting on a condition ([`wait`]), load writers ([`load`]) and spool files read by
//! hand ([`spool_files`]). Their items are re-exported here, so a test says `use common::*;` (the
//! modules stay private: a module named `http` would shadow the `http` crate in the tests).
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

mod admin;
mod child;
pub mod cluster;
pub mod delivered;
pub mod haproxy;
mod http;
mod kafka;
pub mod load;
mod nats;
mod process;
pub mod spool_files;
mod tier;
pub mod tls;
mod wait;

pub use admin::*;
pub use child::*;
pub use http::*;
pub use kafka::*;
pub use nats::*;
pub use process::*;
pub use tier::*;
pub use wait::*;

/// A name unique to this test process and call, safe as a NATS token and stream name.
pub fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{tag}{}x{}x{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A Sessionboard-shaped body for resource `rid` carrying a per-resource sequence number.
pub fn body(action: &str, rid: &str, n: u64) -> String {
    format!(
        r#"{{"data":{{"id":"{rid}","n":{n},"note":"é☕"}},"metadata":{{"action":"{action}","actor_id":7,"event_id":4001,"org_id":"org-1","version":1,"datetime":"2026-04-28T16:00:00Z"}}}}"#
    )
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fixtures")
}

/// The Sessionboard sample bodies shipped in `examples/fixtures/`, sorted.
pub fn fixture_files() -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// Checks the message headers every sink sets from the body `v`; `header` looks one up.
pub fn assert_sessionboard_headers<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    v: &serde_json::Value,
) {
    let action = v["metadata"]["action"].as_str().unwrap();
    assert_eq!(header("sessionboard-action"), Some(action));
    assert_eq!(header("content-type"), Some("application/json"));
    assert_eq!(header("sessionboard-resource-id"), v["data"]["id"].as_str());
    assert_eq!(
        header("sessionboard-org-id"),
        v["metadata"]["org_id"].as_str()
    );
    match &v["metadata"]["event_id"] {
        serde_json::Value::Null => assert_eq!(header("sessionboard-event-id"), None),
        e => assert_eq!(
            header("sessionboard-event-id"),
            Some(e.to_string().as_str())
        ),
    }
}
