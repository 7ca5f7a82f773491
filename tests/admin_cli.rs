//! The changing `spool` commands through a running bridge (issue 25): while the bridge holds the
//! spool lock, `dead-letter requeue`, `purge` and `replay` take its admin API and print what the
//! offline path prints, with the same exit codes.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const PATH: &str = "/webhooks/sessionboard";
const ACTION: &str = DL_ACTION;

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

// Over 80 lines: each command and its expected output, in the order an operator runs them.
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
