//! A full spool: the `spool.max_bytes` quota, a really full filesystem, and the
//! `spool.min_free_bytes` guard (the last two on a tmpfs, so root only).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use super::common::*;
use super::delivered::Ack;
use super::{arrivals_nats, check, env_for, Broker, ACTION, PATH};

/// Outcome of posts that ran into a full spool.
struct FillOutcome {
    acked: Vec<Ack>,
    /// (id, status, error code, Retry-After) of every non-2xx answer.
    refused: Vec<(String, u16, String, Option<String>)>,
}

/// 4 clients post distinct deliveries until each has been refused `refusals` times in a row.
async fn fill(url: &str, prefix: &str, refusals: usize) -> FillOutcome {
    let client = http_client();
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let (client, url, prefix) = (client.clone(), url.to_owned(), prefix.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut refused = Vec::new();
            let mut streak = 0;
            let mut n = 0u64;
            while streak < refusals {
                let rid = format!("c{w}");
                let id = format!("{prefix}-{w}-{n}");
                let r = request(
                    &client,
                    "POST",
                    &url,
                    &[("content-type", "application/json"), ("webhook-id", &id)],
                    body(ACTION, &rid, n),
                )
                .await;
                match r {
                    Ok((200, _, _)) => {
                        streak = 0;
                        acked.push(Ack { id, rid, n });
                    }
                    Ok((s, h, v)) => {
                        streak += 1;
                        let after = h.get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                        let code = v["error"].as_str().unwrap_or_default().to_owned();
                        refused.push((id, s, code, after));
                    }
                    Err(e) => panic!("{id}: {e}"),
                }
                n += 1;
            }
            (acked, refused)
        }));
    }
    let mut out = FillOutcome {
        acked: Vec::new(),
        refused: Vec::new(),
    };
    for t in tasks {
        let (a, r) = t.await.unwrap();
        out.acked.extend(a);
        out.refused.extend(r);
    }
    out
}

/// Quota: a small `spool.max_bytes` with NATS down. Ingress answers 503 + Retry-After once the
/// quota is reached, `/readyz` is 503, and the bridge resumes by itself once the broker is back
/// and the backlog drained. Every 2xx arrives; no 503'd id arrives unless re-posted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_quota_full_answers_503_then_resumes_by_itself() {
    if !require(&[Tier::NatsServer]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats_dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::new(nats_dir.path()); // down until the spool is full
    let prefix = unique("full");
    let stream = prefix.to_uppercase();
    let mut env = env_for(Broker::Nats, dir.path(), &prefix, &nats.url());
    env.extend(
        [
            ("HOOKBRIDGE_HTTP__MAX_BODY_BYTES", "16384"),
            ("HOOKBRIDGE_HTTP__RETRY_AFTER", "7s"),
            ("HOOKBRIDGE_SPOOL__SEGMENT_BYTES", "65536"),
            ("HOOKBRIDGE_SPOOL__MAX_BYTES", "262144"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let bridge = BridgeProcess::spawn(&env).await;
    let client = http_client();
    let out = fill(&bridge.url(PATH), &prefix, 25).await;
    assert!(!out.acked.is_empty());
    for (id, s, code, after) in &out.refused {
        assert_eq!(*s, 503, "{id}");
        assert_eq!(code, "spool_full", "{id}");
        assert_eq!(after.as_deref(), Some("7"), "{id}: Retry-After");
    }
    let (status, ready) = readyz(&client, bridge.admin).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["spool"], "full", "{ready}");
    let full_at = metric(&client, bridge.admin, "hookbridge_spool_bytes", "").await;

    nats.start().await;
    let back = Instant::now();
    wait_drained(&client, bridge.admin, Duration::from_secs(60))
        .await
        .expect("backlog drains");
    // Segments go once the confirmed position is persisted; then the bridge is ready again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let (s, ready) = readyz(&client, bridge.admin).await;
        if s == 200 {
            break ready;
        }
        assert!(Instant::now() < deadline, "never ready again: {ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let resumed = back.elapsed();
    let mut acked = out.acked.clone();
    let after_id = format!("{prefix}-after");
    assert_eq!(
        post(
            &client,
            &bridge.url(PATH),
            &after_id,
            body(ACTION, "after", 0)
        )
        .await,
        200
    );
    acked.push(Ack {
        id: after_id,
        rid: "after".into(),
        n: 0,
    });
    // The sender retries a few refused deliveries: now they are taken.
    let reposted: Vec<String> = out.refused.iter().take(5).map(|r| r.0.clone()).collect();
    for (i, id) in reposted.iter().enumerate() {
        let rid = format!("re{i}");
        assert_eq!(
            post(&client, &bridge.url(PATH), id, body(ACTION, &rid, 0)).await,
            200
        );
        acked.push(Ack {
            id: id.clone(),
            rid,
            n: 0,
        });
    }
    wait_drained(&client, bridge.admin, Duration::from_secs(60))
        .await
        .expect("drains");
    let got = arrivals_nats(&nats.url(), &stream, acked.len()).await;
    let t = check("spool quota", &acked, &got);
    let arrived: HashSet<&str> = got.iter().map(|a| a.id.as_str()).collect();
    let leaked: Vec<&str> = out
        .refused
        .iter()
        .map(|r| r.0.as_str())
        .filter(|id| arrived.contains(id) && !reposted.iter().any(|r| r == id))
        .collect();
    assert!(leaked.is_empty(), "503'd deliveries arrived: {leaked:?}");
    eprintln!(
        "RESULT spool quota 256 KiB (segments 64 KiB), broker down: {} acknowledged, {} refused \
         (all 503 spool_full, Retry-After: 7), spool bytes when full {full_at}, /readyz 503 \
         'full'; broker back -> ready again after {resumed:?} ({ready}); {} records, {} \
         duplicates, 0 lost, 0 refused ids arrived, {} re-posted arrived",
        out.acked.len(),
        out.refused.len(),
        t.records,
        t.duplicates,
        reposted.len()
    );
}

/// A mounted tmpfs; unmounted (then its directory removed) on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

/// A spool on a tmpfs of `size` with a nats-server of its own (not started), and the
/// environment of a NATS bridge on it. Fields drop in order: the server before its directory,
/// the tmpfs last.
struct SmallDisk {
    nats: NatsServer,
    _nats_dir: tempfile::TempDir,
    prefix: String,
    stream: String,
    env: Vec<(String, String)>,
    mnt: Tmpfs,
}

fn small_disk(size: &str, tag: &str, segment_bytes: &str, min_free_bytes: &str) -> SmallDisk {
    let mnt = mount_tmpfs(size);
    let nats_dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::new(nats_dir.path());
    let prefix = unique(tag);
    let env = small_disk_env(
        &mnt.path().join("spool"),
        &prefix,
        &nats.url(),
        segment_bytes,
        min_free_bytes,
    );
    SmallDisk {
        nats,
        _nats_dir: nats_dir,
        stream: prefix.to_uppercase(),
        prefix,
        env,
        mnt,
    }
}

/// A NATS bridge on a spool whose disk, not `spool.max_bytes` (1 GiB here), is the limit.
fn small_disk_env(
    spool: &Path,
    prefix: &str,
    nats_url: &str,
    segment_bytes: &str,
    min_free_bytes: &str,
) -> Vec<(String, String)> {
    let mut env = env_for(Broker::Nats, spool, prefix, nats_url);
    env.extend(
        [
            ("HOOKBRIDGE_HTTP__MAX_BODY_BYTES", "16384"),
            ("HOOKBRIDGE_SPOOL__SEGMENT_BYTES", segment_bytes),
            ("HOOKBRIDGE_SPOOL__MAX_BYTES", "1073741824"),
            ("HOOKBRIDGE_SPOOL__MIN_FREE_BYTES", min_free_bytes),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    env
}

/// Mounts a tmpfs of `size` (e.g. `2m`) on a fresh temporary directory; the guard unmounts it.
/// Mounting needs root, so the tests that call this are `#[ignore]`d: a plain `cargo test`
/// reports them as ignored (not as passed), and CI, which runs as root, runs them with
/// `--ignored` (see `.ci/run`). Where they do run, a failed mount fails the test.
fn mount_tmpfs(size: &str) -> Tmpfs {
    let mnt = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(mnt.path())
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "cannot mount a {size} tmpfs on {} ({}): {} (this test needs root)",
        mnt.path().display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Tmpfs(mnt)
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The filesystem itself fills up (a 2 MiB tmpfs, far below `spool.max_bytes`, with the
/// `spool.min_free_bytes` guard switched off so the disk really fills): writes fail,
/// the ingress answers 503 and never a 2xx for what it did not store; after a restart on the same
/// directory with the broker back, every 2xx'd delivery arrives and new ones are taken again.
/// Needs root (see [`mount_tmpfs`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to mount a tmpfs; CI runs it (cargo test --test faults -- --ignored)"]
async fn spool_on_a_full_filesystem_answers_503_never_2xx() {
    if !require(&[Tier::NatsServer]) {
        return;
    }
    let SmallDisk {
        mnt,
        _nats_dir,
        mut nats,
        prefix,
        stream,
        env,
    } = small_disk("2m", "enospc", "262144", "0");
    let mut bridge = BridgeProcess::spawn(&env).await;
    let client = http_client();
    let out = fill(&bridge.url(PATH), &prefix, 25).await;
    let mut codes: HashMap<(u16, String), usize> = HashMap::new();
    for (_, s, code, after) in &out.refused {
        assert_eq!(*s, 503, "only 503 for a full disk");
        assert!(after.is_some(), "503 carries Retry-After");
        *codes.entry((*s, code.clone())).or_default() += 1;
    }
    let (status, ready) = readyz(&client, bridge.admin).await;
    let df = std::process::Command::new("df")
        .arg(mnt.path())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .last()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    eprintln!(
        "tmpfs full: {} acknowledged, refusals {codes:?}; /readyz {status} {ready}; df: {df}",
        out.acked.len()
    );
    assert_eq!(status, 503, "readyz while the disk is full: {ready}");

    nats.start().await;
    // A failed write poisons the spool for good: the bridge drains what it stored, then exits 1
    // by itself so that its supervisor restarts it (done here by hand).
    let failed_at = Instant::now();
    let exit = bridge.wait_exit(Duration::from_secs(75)).await;
    let drained_in_place = failed_at.elapsed();
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(1),
        "a failed spool exits non-zero after draining"
    );
    let mut bridge = BridgeProcess::spawn(&env).await;
    // The disk is still full: drained, but maybe not ready.
    wait_backlog_empty(&client, bridge.admin, Duration::from_secs(60), false)
        .await
        .expect("drains after restart");
    let after_id = format!("{prefix}-after");
    let after_restart = post(
        &client,
        &bridge.url(PATH),
        &after_id,
        body(ACTION, "after", 0),
    )
    .await;
    assert_ne!(after_restart, 0);
    let bytes_drained = metric(&client, bridge.admin, "hookbridge_spool_bytes", "").await;
    // With the filesystem still 100% full the confirmed position cannot be persisted (its
    // replacement file needs a block), so no segment can be deleted and no space comes back. The
    // operator frees some space (here: grows the tmpfs) and restarts (the failed rotate poisoned
    // the spool again, and a poisoned spool neither persists nor deletes); then it takes
    // deliveries again.
    let mut freed_after = None;
    if after_restart != 200 {
        let grown = std::process::Command::new("mount")
            .args(["-o", "remount,size=4m"])
            .arg(mnt.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(grown, "remount the tmpfs bigger");
        // The poisoned bridge has nothing left to drain, so it exits 1 by itself; the
        // supervisor's restart (here by hand) runs recovery, now with space to spare.
        let exit = bridge.wait_exit(Duration::from_secs(75)).await;
        assert_eq!(
            exit.and_then(|s| s.code()),
            Some(1),
            "poisoned again, exits again"
        );
        freed_after = Some(bytes_drained);
        bridge = BridgeProcess::spawn(&env).await;
        assert_eq!(
            post(
                &client,
                &bridge.url(PATH),
                &after_id,
                body(ACTION, "after", 0)
            )
            .await,
            200,
            "takes deliveries again once space is free"
        );
    }
    let mut acked = out.acked.clone();
    acked.push(Ack {
        id: after_id,
        rid: "after".into(),
        n: 0,
    });
    wait_drained(&client, bridge.admin, Duration::from_secs(60))
        .await
        .expect("drains");
    let got = arrivals_nats(&nats.url(), &stream, acked.len()).await;
    let t = check("tmpfs full", &acked, &got);
    let arrived: HashSet<&str> = got.iter().map(|a| a.id.as_str()).collect();
    let refused_arrived = out
        .refused
        .iter()
        .filter(|r| arrived.contains(r.0.as_str()))
        .count();
    eprintln!(
        "RESULT tmpfs 2 MiB full: {} acknowledged, {} refused {codes:?}, /readyz {status}; \
         drained and exited by itself after {drained_in_place:?}: {exit:?}; after restart and \
         drain a new post got {after_restart} with {bytes_drained} spool bytes still on disk; \
         space freed (tmpfs grown to 4 MiB): spool bytes before the restart {freed_after:?}, then restart -> 200; 0 lost, {} records, {} \
         duplicates, {refused_arrived} refused ids arrived anyway",
        out.acked.len(),
        out.refused.len(),
        t.records,
        t.duplicates
    );
}

/// The `spool.min_free_bytes` guard on a small filesystem (a 4 MiB tmpfs, guard 2 MiB): the
/// spool stops taking deliveries before the disk is full — 503 `spool_full`, `/readyz` 503 — and,
/// because nothing failed, it resumes by itself once the broker drains the backlog and segments
/// are deleted, without a restart. Needs root (see [`mount_tmpfs`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to mount a tmpfs; CI runs it (cargo test --test faults -- --ignored)"]
async fn min_free_bytes_guard_keeps_the_disk_from_filling_and_resumes_by_itself() {
    if !require(&[Tier::NatsServer]) {
        return;
    }
    let SmallDisk {
        mnt: _mnt,
        _nats_dir,
        mut nats,
        prefix,
        stream,
        env,
    } = small_disk("4m", "guard", "131072", "2097152");
    let bridge = BridgeProcess::spawn(&env).await;
    let client = http_client();
    let out = fill(&bridge.url(PATH), &prefix, 25).await;
    for (_, s, code, after) in &out.refused {
        assert_eq!(
            (*s, code.as_str()),
            (503, "spool_full"),
            "the guard answers, not a failed write"
        );
        assert!(after.is_some(), "503 carries Retry-After");
    }
    let (status, ready) = readyz(&client, bridge.admin).await;
    assert_eq!(
        (status, ready["spool"].as_str()),
        (503, Some("full")),
        "{ready}"
    );
    let rejected = metric(
        &client,
        bridge.admin,
        "hookbridge_spool_rejected_total",
        "reason=\"disk_low\"",
    )
    .await;
    assert!(rejected > 0.0);

    nats.start().await;
    wait_drained(&client, bridge.admin, Duration::from_secs(60))
        .await
        .expect("drains once the broker is back");
    // Segments are deleted as the broker confirms; the guard lifts within a sample interval.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after_id = format!("{prefix}-after");
    loop {
        let s = post(
            &client,
            &bridge.url(PATH),
            &after_id,
            body(ACTION, "after", 0),
        )
        .await;
        if s == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "did not resume by itself (last status {s})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let js = jetstream(&nats.url()).await;
    let got = read_stream(&js, &stream, out.acked.len() + 1, Duration::from_secs(30)).await;
    let ids: HashSet<String> = got
        .iter()
        .filter_map(|m| m.header("webhook-id").map(str::to_owned))
        .collect();
    let lost = out.acked.iter().filter(|a| !ids.contains(&a.id)).count();
    assert_eq!(lost, 0, "every acknowledged delivery arrives");
    eprintln!(
        "RESULT min_free_bytes guard (4 MiB tmpfs, guard 2 MiB): {} acknowledged, {} refused with 503 spool_full, /readyz 503 'full', {rejected} disk_low rejections; resumed without restart after drain; 0 lost",
        out.acked.len(),
        out.refused.len()
    );
}
