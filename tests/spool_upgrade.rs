//! Upgrade from the release at commit efe9fd6: the spool it left when it crashed with a backlog
//! (`tests/fixtures/spool-efe9fd6/`, written by `scripts/make-upgrade-fixture`: segment format
//! version 1, delivery records V2, the newest segment ending in preallocated zeros) is forwarded
//! by this build exactly once, byte-exact and in order per resource, and new deliveries go to a
//! segment of version 2 while the version-1 segments are never appended to.
//!
//! The other direction cannot run in CI (it has no efe9fd6 binary), so it was checked by hand
//! (2026-12-06): a copy of the fixture in /tmp/up, this build run on it against NATS, one
//! delivery posted (seq 164, in the new version-2 segment), SIGKILL; then the efe9fd6 binary
//! started on /tmp/up refused it before changing anything (every file's SHA-256 unchanged) and
//! exited 1, printing to stderr (its error chain repeats the innermost error):
//!
//! ```text
//! hookbridge: spool /tmp/up: /tmp/up/00000000000000000164.seg: spool format version 2 is not supported by this build: /tmp/up/00000000000000000164.seg: spool format version 2 is not supported by this build
//! ```

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::delivered::{assert_exactly_once, tally, Ack, Arrival};
use common::spool_files::{segment_files, segment_version};
use common::*;

const PATH: &str = "/webhooks/sessionboard";
const FIXTURE: &str = "tests/fixtures/spool-efe9fd6";

/// One delivery the fixture's spool holds: its id, fixture file and round (1 or 2).
struct Sent {
    id: String,
    file: String,
    round: u64,
}

/// The deliveries in `spool-efe9fd6.sent`, in the order they were acknowledged.
fn fixture_sent() -> Vec<Sent> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join("tests/fixtures/spool-efe9fd6.sent"))
        .unwrap()
        .lines()
        .map(|l| {
            let (id, file) = l.split_once('\t').expect("id<TAB>file");
            let round = id.strip_prefix("fx-").unwrap()[..1].parse().unwrap();
            Sent {
                id: id.to_owned(),
                file: file.to_owned(),
                round,
            }
        })
        .collect()
}

/// The segment files of `dir` in base order, with their header's format version.
fn segments(dir: &Path) -> Vec<(PathBuf, u32)> {
    segment_files(dir)
        .into_iter()
        .map(|p| {
            let v = segment_version(&p);
            (p, v)
        })
        .collect()
}

fn base_of(seg: &Path) -> u64 {
    seg.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_efe9fd6_spool_is_forwarded_exactly_once_and_never_appended_to() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = root.join(FIXTURE);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    for e in std::fs::read_dir(&fixture).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), spool.join(e.file_name())).unwrap();
        }
    }
    let old_segments = segments(&spool);
    assert!(old_segments.len() >= 2, "{old_segments:?}");
    assert!(
        old_segments.iter().all(|(_, v)| *v == 1),
        "{old_segments:?}"
    );
    let old_bytes: Vec<Vec<u8>> = old_segments
        .iter()
        .map(|(p, _)| std::fs::read(p).unwrap())
        .collect();

    let prefix = unique("upgrade");
    let stream = prefix.to_uppercase();
    let mut env = bridge_env(&spool, &prefix, &stream);
    // Keep the confirmed version-1 segments, to show at the end that they were not appended to.
    env.push(("HOOKBRIDGE_SPOOL__RETAIN_CONFIRMED".into(), "1h".into()));
    let bridge = BridgeProcess::spawn(&env).await;
    let client = http_client();

    // The backlog: every fixture delivery exactly once, byte-exact, in order per resource.
    let sent = fixture_sent();
    assert_eq!(sent.len(), 42);
    let js = jetstream(&nats_url()).await;
    let got = read_stream(&js, &stream, sent.len(), Duration::from_secs(60)).await;
    assert_exactly_once(
        "the efe9fd6 backlog",
        sent.iter().map(|s| s.id.as_str()),
        got.iter().map(|m| m.header("webhook-id").unwrap()),
    );
    // What was acknowledged: each fixture file is one resource (its `data.id`), changed once per
    // round.
    let bodies: BTreeMap<&str, Vec<u8>> = sent
        .iter()
        .map(|s| {
            let b = std::fs::read(root.join("examples/fixtures").join(&s.file)).unwrap();
            (s.id.as_str(), b)
        })
        .collect();
    let rid = |body: &[u8]| -> String {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        v["data"]["id"].as_str().unwrap().to_owned()
    };
    let acks: Vec<Ack> = sent
        .iter()
        .map(|s| Ack {
            id: s.id.clone(),
            rid: rid(&bodies[s.id.as_str()]),
            n: s.round,
        })
        .collect();
    let round: BTreeMap<&str, u64> = sent.iter().map(|s| (s.id.as_str(), s.round)).collect();
    let mut arrivals = Vec::new();
    for m in &got {
        let id = m.header("webhook-id").unwrap();
        let original = &bodies[id];
        assert_eq!(&m.payload[..], &original[..], "{id}: body not byte-exact");
        let v: serde_json::Value = serde_json::from_slice(original).unwrap();
        let action = v["metadata"]["action"].as_str().unwrap();
        assert_eq!(m.subject, format!("{prefix}.{action}"), "{id}");
        arrivals.push(Arrival {
            id: id.to_owned(),
            rid: rid(&m.payload),
            n: round[id],
        });
    }
    let t = tally("the efe9fd6 backlog", &acks, &arrivals);
    assert!(t.disordered.is_empty(), "out of order: {:?}", t.disordered);
    let resources: std::collections::BTreeSet<&str> = acks.iter().map(|a| a.rid.as_str()).collect();
    assert_eq!(resources.len(), 21, "21 resources with two changes each");

    // New deliveries after the upgrade go to a new segment of version 2.
    let mut new_ids = Vec::new();
    for n in 0..10u64 {
        let id = format!("after-upgrade-{n}");
        let b = body("session.updated", "after-upgrade", n);
        assert_eq!(post(&client, &bridge.url(PATH), &id, b).await, 200, "{id}");
        new_ids.push(id);
    }
    let now = segments(&spool);
    let last_old_base = base_of(&old_segments.last().unwrap().0);
    let (new_segment, new_version) = now.last().unwrap();
    assert_eq!(*new_version, 2, "{now:?}");
    assert!(base_of(new_segment) > last_old_base, "{now:?}");
    // The version-1 segments are still there (retained), still version 1, and hold exactly
    // what they held: recovery only cut the preallocated zeros off the newest one.
    for ((path, _), before) in old_segments.iter().zip(&old_bytes) {
        let after = std::fs::read(path).unwrap();
        assert_eq!(&after[8..12], &1u32.to_le_bytes(), "{}", path.display());
        assert_eq!(&after[..], &before[..after.len()], "{}", path.display());
        assert!(
            before[after.len()..].iter().all(|&b| b == 0),
            "{}: more than zeros cut",
            path.display()
        );
    }
    assert!(
        now.iter().filter(|(_, v)| *v == 1).count() == old_segments.len(),
        "{now:?}"
    );

    let got = read_stream(
        &js,
        &stream,
        sent.len() + new_ids.len(),
        Duration::from_secs(60),
    )
    .await;
    assert_exactly_once(
        "the backlog and the deliveries after the upgrade",
        sent.iter()
            .map(|s| s.id.as_str())
            .chain(new_ids.iter().map(String::as_str)),
        got.iter().map(|m| m.header("webhook-id").unwrap()),
    );
    drop(bridge);
    delete_stream(&js, &stream).await;
}
