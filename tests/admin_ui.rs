//! The admin page `/ui` in a real browser (issue 25): Debian's headless chromium driven by
//! `playwright-core` (`tests/ui/drive.mjs`) against the real binary and JetStream. The page
//! shows a dead letter the test made, shows its body, requeues it (and the broker gets it), then
//! previews and runs a replay; the page must not break its Content-Security-Policy.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hookbridge::deadletter::DeadLetters;

const PATH: &str = "/webhooks/sessionboard";
const TOKEN: &str = ADMIN_TOKEN;
const ACTION: &str = "session.updated";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_requeues_and_replays_in_chromium() {
    if !require(&[Tier::Nats, Tier::Browser]) {
        return;
    }
    let began = Instant::now();
    let (spool, etc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    put_dead_letter(spool.path(), 500, "ui-dead-7", "u", 7, "too_large");
    let token_file = token_file(etc.path());
    let id = unique("ui");
    let stream = id.to_uppercase();
    let mut env = bridge_env(spool.path(), &id, &stream);
    env.push(("HOOKBRIDGE_ADMIN__TOKEN_FILE".into(), token_file));
    env.push(("HOOKBRIDGE_SPOOL__RETAIN_CONFIRMED".into(), "1h".into()));
    env.push(("HOOKBRIDGE_SPOOL__CONFIRM_INTERVAL".into(), "100ms".into()));
    let bridge = BridgeProcess::spawn(&env).await;
    let client = http_client();
    for i in 0..3 {
        let status = post(
            &client,
            &bridge.url(PATH),
            &format!("ui-{i}"),
            body(ACTION, "u", i),
        )
        .await;
        assert_eq!(status, 200);
    }
    wait_drained(&client, bridge.admin, Duration::from_secs(30))
        .await
        .expect("drained");
    // Let the persisted confirmed position cover them, so the replay preview has records.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut cmd = std::process::Command::new("node");
    cmd.arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/drive.mjs"))
        .env("HB_ADMIN", format!("http://{}", bridge.admin))
        .env("HB_TOKEN", TOKEN)
        .env("HB_DEAD_ID", "ui-dead-7")
        .env("CHROMIUM_BIN", chromium_bin());
    // Blocking: the bridge is another process, and every step in the script has its timeout.
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for step in [
        "loaded",
        "dead letter shown: 500 ui-dead-7",
        "body shown:",
        "requeued",
        "plan: ",
        "replayed ",
    ] {
        assert!(stdout.contains(step), "{step}: {stdout}");
    }

    let js = jetstream(&nats_url()).await;
    let got = read_stream(&js, &stream, 4, Duration::from_secs(20)).await;
    let requeued = got
        .iter()
        .find(|m| m.header("webhook-id") == Some("ui-dead-7"))
        .unwrap_or_else(|| panic!("the requeued dead letter reached the broker: {stdout}"));
    assert_eq!(requeued.header("hookbridge-copy"), Some("requeue"));
    assert_eq!(requeued.json()["data"]["n"], 7);
    assert!(DeadLetters::open_existing(spool.path())
        .unwrap()
        .unwrap()
        .is_empty());
    let replayed = metric(
        &client,
        bridge.admin,
        "hookbridge_admin_records_total",
        r#"action="replay""#,
    )
    .await;
    assert!(replayed >= 3.0, "{replayed}: {stdout}");
    eprintln!("{stdout}browser test took {:?}", began.elapsed());
    delete_stream(&js, &stream).await;
}
