//! `hookbridge spool …` run as the real binary against spools built with the library API:
//! read-only commands work (and change nothing) next to a lock holder, `verify` names damage,
//! `requeue` refuses a locked spool and otherwise moves a record back without losing it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hookbridge::deadletter::{DeadLetters, Meta};
use hookbridge::delivery::Delivery;
use hookbridge::metrics::Metrics;
use hookbridge::spool::{Spool, SpoolConfig};

/// Default `http.max_body_bytes` (1 MiB) plus the bridge's record overhead: what the binary
/// appends at most.
const MAX_APPEND_BYTES: u32 = 1024 * 1024 + 8 * 1024;
const SEGMENT_HEADER_LEN: u64 = 24;
const FRAME_HEADER_LEN: u64 = 24;

fn spool_cfg(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_owned(),
        segment_bytes: 64 * 1024,
        max_bytes: 64 * 1024 * 1024,
        max_append_bytes: MAX_APPEND_BYTES,
        max_batch_bytes: 1024 * 1024,
        preallocate_bytes: 1 << 20,
        confirm_interval: Duration::from_millis(10),
        min_free_bytes: 0,
        retain_confirmed: Duration::ZERO,
    }
}

/// Opens the spool, retrying briefly while it is `Locked`: another test in this process may be
/// spawning a `hookbridge` child, and between its fork and exec the child holds a copy of every
/// descriptor, our just-closed spool's flock'd `LOCK` included (close-on-exec lets go only at
/// the exec).
fn open(dir: &Path) -> Spool {
    for _ in 0..100 {
        match Spool::open(spool_cfg(dir), Arc::new(Metrics::new())) {
            Err(hookbridge::spool::Error::Locked) => std::thread::sleep(Duration::from_millis(10)),
            r => return r.unwrap().0,
        }
    }
    panic!("spool stayed locked for a second")
}

fn delivery(i: u64, action: &str) -> Delivery {
    Delivery {
        id: format!("msg_{i}"),
        timestamp: None,
        action: action.to_owned(),
        resource_id: format!("res{i}"),
        org_id: Some("org1".to_owned()),
        event_id: None,
        received_at_ms: 1_700_000_000_000 + i,
        reject_reason: None,
        copied: None,
        endpoint: None,
        trace: None,
        body: Bytes::from(format!(
            "{{\n  \"n\": {i},\n  \"metadata\": {{\"action\": \"{action}\"}}\n}}"
        )),
    }
}

/// Appends `n` deliveries (actions alternate `a.created` / `b.updated`), confirms up to
/// `confirm`, closes. Returns each record's (seq, frame offset) in the one segment.
async fn fill(dir: &Path, n: u64, confirm: u64) -> Vec<(u64, u64)> {
    let spool = open(dir);
    let mut off = SEGMENT_HEADER_LEN;
    let mut frames = Vec::new();
    for i in 1..=n {
        let action = if i % 2 == 1 { "a.created" } else { "b.updated" };
        let payload = delivery(i, action).encode();
        let len = payload.len() as u64;
        let seq = spool.append(payload).await.unwrap();
        frames.push((seq, off));
        off += FRAME_HEADER_LEN + len;
    }
    spool.confirm(confirm);
    spool.close().await.unwrap();
    frames
}

fn hookbridge(dir: &Path, args: &[&str]) -> Output {
    hookbridge_with_env(dir, &[], args)
}

/// `hookbridge spool --dir DIR ARGS` with only `PATH` and `env` in its environment.
fn hookbridge_with_env(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hookbridge"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .arg("spool")
        .arg("--dir")
        .arg(dir)
        .args(args);
    c.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn lines(o: &Output) -> Vec<serde_json::Value> {
    assert!(o.status.success(), "{}", stderr(o));
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every path under `dir` with its length: to show a command changed nothing.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if m.is_dir() {
            out.extend(snapshot(&e.path()));
        }
        out.push((e.path(), if m.is_dir() { 0 } else { m.len() }));
    }
    out.sort();
    out
}

fn dead_letter(dl: &DeadLetters, seq: u64, id: &str) -> Bytes {
    let payload = delivery(seq, "c.deleted").encode();
    let meta = Meta {
        seq,
        id: id.to_owned(),
        action: "c.deleted".to_owned(),
        destination: "sb.c.deleted".to_owned(),
        reason: "message_too_large".to_owned(),
        error: "Broker: Message size too large".to_owned(),
        dead_lettered_at_ms: 1_700_000_000_000,
    };
    dl.put(&meta, &payload).unwrap();
    payload
}

#[test]
fn stats_on_an_empty_spool_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = json(&hookbridge(dir.path(), &["stats", "--json"]));
    assert_eq!(s["records"], 0);
    assert_eq!(s["segments"], 0);
    assert_eq!(s["next_seq"], 1);
    assert_eq!(s["dead_letters"], 0);
    assert_eq!(s["lock"], "free");
    assert!(snapshot(dir.path()).is_empty(), "no LOCK, no dead-letter/");

    let missing = dir.path().join("nope");
    let o = hookbridge(&missing, &["stats"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no such spool directory"));
    assert!(!missing.exists());
}

#[tokio::test]
async fn stats_on_a_populated_spool() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 10, 3).await;
    let dl = DeadLetters::open(dir.path()).unwrap();
    dead_letter(&dl, 99, "msg_dl");

    let s = json(&hookbridge(dir.path(), &["stats", "--json"]));
    assert_eq!(s["records"], 7);
    assert_eq!(s["records_on_disk"], 10);
    assert_eq!(s["segments"], 1);
    assert_eq!(s["confirmed"], 3);
    assert_eq!(s["next_seq"], 11);
    assert_eq!(s["oldest_record_seq"], 4);
    assert_eq!(s["dead_letters"], 1);
    assert_eq!(s["damage"], 0);
    assert!(s["bytes"].as_u64().unwrap() > 10 * FRAME_HEADER_LEN);

    let o = hookbridge(dir.path(), &["stats"]);
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(text.contains("7 unconfirmed (10 on disk)"), "{text}");
    assert!(text.contains("not running"), "{text}");
}

#[tokio::test]
async fn read_only_commands_work_while_the_spool_is_locked_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 5, 0).await;
    let live = open(dir.path());
    live.append(delivery(6, "a.created").encode())
        .await
        .unwrap();
    let before = snapshot(dir.path());

    let s = json(&hookbridge(dir.path(), &["stats", "--json"]));
    assert_eq!(s["records"], 6);
    assert_eq!(s["lock"], "held");
    let o = hookbridge(dir.path(), &["verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("running (spool lock held)"));
    assert_eq!(lines(&hookbridge(dir.path(), &["inspect"])).len(), 6);
    assert!(hookbridge(dir.path(), &["dead-letter", "list"])
        .status
        .success());

    assert_eq!(snapshot(dir.path()), before);
    // The live handle still works: the tools did not take its lock.
    assert_eq!(
        live.append(delivery(7, "a.created").encode())
            .await
            .unwrap(),
        7
    );
    live.close().await.unwrap();
}

#[tokio::test]
async fn verify_clean_damaged_and_torn() {
    let dir = tempfile::tempdir().unwrap();
    let frames = fill(dir.path(), 10, 0).await;
    let o = hookbridge(dir.path(), &["verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("clean"));

    // A torn tail with no bridge running: a note, still exit 0.
    let seg = dir.path().join("00000000000000000001.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    let full = bytes.clone();
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&seg, &bytes).unwrap();
    let o = hookbridge(dir.path(), &["verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("torn tail"), "{}", stdout(&o));
    assert_eq!(
        std::fs::read(&seg).unwrap().len(),
        bytes.len(),
        "not truncated"
    );

    // A flipped byte in the body of seq 5: damage, named by segment and offset.
    let mut bytes = full;
    let (seq, off) = frames[4];
    assert_eq!(seq, 5);
    bytes[(off + FRAME_HEADER_LEN + 10) as usize] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();
    let o = hookbridge(dir.path(), &["verify"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!("00000000000000000001.seg offset {off}")),
        "{out}"
    );
    assert!(out.contains("CRC mismatch"), "{out}");
    assert!(out.contains("DAMAGE FOUND"), "{out}");
    let s = json(&hookbridge(dir.path(), &["stats", "--json"]));
    assert_eq!(s["damage"], 1);

    let o = hookbridge(&dir.path().join("missing"), &["verify"]);
    assert_eq!(o.status.code(), Some(2));
}

#[tokio::test]
async fn inspect_filters() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 10, 2).await;

    let all = lines(&hookbridge(dir.path(), &["inspect"]));
    let seqs: Vec<u64> = all.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (3..=10).collect::<Vec<_>>(), "unconfirmed only");
    let r = &all[0];
    assert_eq!(r["id"], "msg_3");
    assert_eq!(r["action"], "a.created");
    assert_eq!(r["resource_id"], "res3");
    assert_eq!(r["org_id"], "org1");
    assert_eq!(r["confirmed"], false);
    assert_eq!(r["body"]["n"], 3, "body embedded as JSON");
    assert!(r["appended_at"].as_str().unwrap().ends_with('Z'));
    assert!(r["received_at"]
        .as_str()
        .unwrap()
        .starts_with("2023-11-14T22:13:20"));

    let with_confirmed = lines(&hookbridge(dir.path(), &["inspect", "--all"]));
    assert_eq!(with_confirmed.len(), 10);
    assert_eq!(with_confirmed[0]["confirmed"], true);

    let b = lines(&hookbridge(
        dir.path(),
        &["inspect", "--action", "b.updated"],
    ));
    let seqs: Vec<u64> = b.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![4, 6, 8, 10]);

    let limited = lines(&hookbridge(
        dir.path(),
        &["inspect", "--action", "a.created", "--limit", "2"],
    ));
    let seqs: Vec<u64> = limited.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![3, 5]);

    assert_eq!(
        lines(&hookbridge(dir.path(), &["inspect", "--since", "15m"])).len(),
        8
    );
    assert!(lines(&hookbridge(
        dir.path(),
        &["inspect", "--since", "2999-01-01T00:00:00Z"]
    ))
    .is_empty());
    let o = hookbridge(dir.path(), &["inspect", "--since", "yesterday"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--since"));
}

#[test]
fn dead_letter_list() {
    let dir = tempfile::tempdir().unwrap();
    let o = hookbridge(dir.path(), &["dead-letter", "list"]);
    assert!(stdout(&o).contains("no dead letters"), "{}", stdout(&o));
    let dl = DeadLetters::open(dir.path()).unwrap();
    dead_letter(&dl, 4, "msg_four");
    dead_letter(&dl, 9, "msg_nine");

    let rows = lines(&hookbridge(dir.path(), &["dead-letter", "list", "--json"]));
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["seq"], 4);
    assert_eq!(rows[0]["id"], "msg_four");
    assert_eq!(rows[0]["action"], "c.deleted");
    assert_eq!(rows[0]["destination"], "sb.c.deleted");
    assert_eq!(rows[0]["reason"], "message_too_large");
    assert_eq!(rows[0]["error"], "Broker: Message size too large");
    assert_eq!(rows[0]["dead_lettered_at"], "2023-11-14T22:13:20.000Z");
    let o = hookbridge(dir.path(), &["dead-letter", "list"]);
    let text = stdout(&o);
    assert!(
        text.contains("msg_nine") && text.contains("message_too_large"),
        "{text}"
    );
}

#[tokio::test]
async fn requeue_is_refused_while_locked_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 3, 3).await;
    let dl = DeadLetters::open(dir.path()).unwrap();
    dead_letter(&dl, 2, "msg_two");
    let live = open(dir.path());
    let before = snapshot(dir.path());

    let o = hookbridge(dir.path(), &["dead-letter", "requeue", "--all"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("locked"), "{}", stderr(&o));
    assert!(stderr(&o).contains("Stop the bridge"), "{}", stderr(&o));
    assert_eq!(snapshot(dir.path()), before);
    assert_eq!(live.stats().records, 0);
    assert_eq!(live.stats().next_seq, 4);
    live.close().await.unwrap();
    assert_eq!(DeadLetters::open(dir.path()).unwrap().len(), 1);
}

#[tokio::test]
async fn requeue_puts_the_record_back_and_removes_it_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 3, 3).await;
    let dl = DeadLetters::open(dir.path()).unwrap();
    let payload = dead_letter(&dl, 2, "msg_two");
    dead_letter(&dl, 3, "msg_three");

    let o = hookbridge(dir.path(), &["dead-letter", "requeue", "--seq", "7"]);
    assert_eq!(o.status.code(), Some(1), "nothing selected");
    assert!(stderr(&o).contains("no dead letter"));

    let o = hookbridge(dir.path(), &["dead-letter", "requeue", "--id", "msg_two"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("as spool seq 4"), "{}", stdout(&o));

    let left: Vec<u64> = DeadLetters::open(dir.path())
        .unwrap()
        .list()
        .unwrap()
        .into_iter()
        .map(|m| m.unwrap().seq)
        .collect();
    assert_eq!(left, vec![3]);
    let spool = open(dir.path());
    let got = spool.reader().next_batch(10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].seq, 4);
    assert_eq!(
        unmarked(&got[0].payload, "requeue"),
        payload,
        "the same delivery, marked"
    );
    spool.close().await.unwrap();
}

/// The record a copy was made from: the copy decoded, checked to be marked as `how`, and encoded
/// again without the mark (byte-exact with the original, which the ingress wrote as V2).
fn unmarked(copy: &Bytes, how: &str) -> Bytes {
    let d = Delivery::decode(copy.clone()).expect("a copy decodes");
    let copied = d.copied.expect("a copy is marked");
    assert_eq!(copied.how.as_str(), how);
    assert!(copied.at_ms > 1_700_000_000_000, "{copied:?}");
    Delivery { copied: None, ..d }.encode()
}

#[test]
fn requeue_needs_exactly_one_selector() {
    let dir = tempfile::tempdir().unwrap();
    let o = hookbridge(dir.path(), &["dead-letter", "requeue"]);
    assert_eq!(o.status.code(), Some(2));
    let o = hookbridge(
        dir.path(),
        &["dead-letter", "requeue", "--all", "--seq", "1"],
    );
    assert_eq!(o.status.code(), Some(2));
}

#[tokio::test]
async fn records_larger_than_todays_body_limit_are_not_damage() {
    // Issue 14: a backlog written while `http.max_body_bytes` was 1 MiB, examined after the
    // operator lowered it to 64 KiB. The tools judge frames by the format's bound, as recovery
    // does, so the larger records are neither damage nor a torn tail.
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let n = 6u64;
    for i in 1..=n {
        let mut d = delivery(i, "a.created");
        if i % 2 == 0 {
            // Ends with a large record: the one a misjudged scan would call a torn tail.
            d.body = Bytes::from(format!("{{\"pad\": \"{}\"}}", "x".repeat(200 * 1024)));
        }
        spool.append(d.encode()).await.unwrap();
    }
    spool.close().await.unwrap();
    let before = snapshot(dir.path());

    let smaller = [("HOOKBRIDGE_HTTP__MAX_BODY_BYTES", "65536")];
    let o = hookbridge_with_env(dir.path(), &smaller, &["verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("clean"), "{}", stdout(&o));
    let s = json(&hookbridge_with_env(
        dir.path(),
        &smaller,
        &["stats", "--json"],
    ));
    assert_eq!(s["damage"], 0);
    assert_eq!(s["records"], n);
    let records = lines(&hookbridge_with_env(dir.path(), &smaller, &["inspect"]));
    assert_eq!(records.len(), n as usize);
    assert_eq!(snapshot(dir.path()), before);
}

/// `replay` selects confirmed records by seq range and action, leaves unconfirmed ones (still
/// queued) and dead-lettered ones (never published) alone unless `--dead-letters`, prints the
/// plan, and re-appends byte-exact copies in the original order, keeping the dead letters.
#[tokio::test]
async fn replay_selects_plans_and_reappends_in_order() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 10, 8).await;
    let dl = DeadLetters::open(dir.path()).unwrap();
    let dead4 = dead_letter(&dl, 4, "msg_four");
    let dead20 = dead_letter(&dl, 20, "msg_twenty");
    drop(dl);
    let before = snapshot(dir.path());

    let o = hookbridge(
        dir.path(),
        &["replay", "--since", "2", "--until", "6", "--dry-run"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = stdout(&o);
    assert!(
        plan.contains("replay: 4 record(s) (4 retained, 0 dead letter(s)), seqs 2..=6"),
        "{plan}"
    );
    assert!(
        plan.contains("       2  a.created") && plan.contains("       2  b.updated"),
        "{plan}"
    );
    assert!(plan.contains("dry run: nothing changed"), "{plan}");

    let o = hookbridge(
        dir.path(),
        &[
            "replay",
            "--since",
            "1",
            "--action",
            "a.created",
            "--dry-run",
        ],
    );
    let plan = stdout(&o);
    assert!(
        plan.contains("replay: 4 record(s)") && plan.contains("seqs 1..=7"),
        "{plan}"
    );
    assert!(plan.contains("1 unconfirmed record(s)"), "seq 9: {plan}");

    let o = hookbridge(dir.path(), &["replay", "--since", "100"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing to replay"), "{}", stderr(&o));
    let o = hookbridge(dir.path(), &["replay", "--since", "tomorrow"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(snapshot(dir.path()), before, "plans change nothing");

    let o = hookbridge(
        dir.path(),
        &["replay", "--since", "1", "--until", "20", "--dead-letters"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("replay: 9 record(s) (7 retained, 2 dead letter(s)), seqs 1..=20"),
        "{out}"
    );
    assert!(
        out.contains("replayed 9 record(s) as spool seqs 11..=19"),
        "{out}"
    );

    // The copies follow the unconfirmed seqs 9 and 10, in the original order.
    let originals: Vec<Bytes> = (1..=8u64)
        .map(|i| match i {
            4 => dead4.clone(),
            _ => delivery(i, if i % 2 == 1 { "a.created" } else { "b.updated" }).encode(),
        })
        .chain([dead20])
        .collect();
    let spool = open(dir.path());
    let got = spool.reader().next_batch(100).await.unwrap();
    let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (9..=19).collect::<Vec<_>>());
    let copies: Vec<Bytes> = got[2..]
        .iter()
        .map(|r| unmarked(&r.payload, "replay"))
        .collect();
    assert!(copies == originals, "the same deliveries, marked, in order");
    spool.close().await.unwrap();
    assert_eq!(
        DeadLetters::open(dir.path()).unwrap().len(),
        2,
        "dead letters stay"
    );
}
