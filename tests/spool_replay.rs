//! Issue 13: a broker that acknowledged deliveries and then lost them (JetStream acks from the
//! page cache; a single-replica Kafka topic) gets them back from the spool's retained, confirmed
//! records with `hookbridge spool replay`, through the normal forwarder, with the original ids.
//! And retention never costs a delivery: retained segments are evicted before anything is
//! refused, and no unconfirmed record goes with them.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use common::*;
use hookbridge::clock::{Clock, ManualClock};
use hookbridge::metrics::Metrics;
use hookbridge::spool::{Error, Health, RealFs, Spool, SpoolConfig};

const PATH: &str = "/webhooks/sessionboard";
const ACTION: &str = "session.updated";

/// `hookbridge spool --dir DIR ARGS` (default configuration otherwise).
fn spool_cmd(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hookbridge"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg("spool")
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

/// [`spool_cmd`] for a command that takes the spool lock right after this process let go of it
/// (the in-process bridge stopped): between the fork and the exec of a child another test here
/// spawns, that child holds a copy of the `LOCK` descriptor, so retry briefly on "locked".
fn spool_cmd_after_close(dir: &Path, args: &[&str]) -> Output {
    for _ in 0..50 {
        let o = spool_cmd(dir, args);
        if !(o.status.code() == Some(1) && text(&o).contains("is locked")) {
            return o;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("spool stayed locked")
}

/// `Spool::open` on `clock`, retrying briefly on `Locked` for the same reason.
fn open_spool(
    cfg: SpoolConfig,
    metrics: Arc<Metrics>,
    clock: Clock,
) -> (Spool, hookbridge::spool::RecoveryReport) {
    for _ in 0..100 {
        match Spool::open_with_clock(
            cfg.clone(),
            metrics.clone(),
            Arc::new(RealFs),
            clock.clone(),
        ) {
            Err(Error::Locked) => std::thread::sleep(Duration::from_millis(10)),
            r => return r.unwrap(),
        }
    }
    panic!("spool stayed locked")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `resources` resources with `per` changes each, interleaved: (delivery id, resource, n, body).
fn deliveries(tag: &str, resources: u64, per: u64) -> Vec<(String, String, u64, String)> {
    let mut v = Vec::new();
    for n in 0..per {
        for r in 0..resources {
            let rid = format!("res-{r}");
            v.push((
                format!("{tag}-{r}-{n}"),
                rid.clone(),
                n,
                body(ACTION, &rid, n),
            ));
        }
    }
    v
}

/// Every delivery exactly once, byte-exact, each resource's changes in order. `got` is
/// (delivery id, body) in the order one consumer saw them (for Kafka: one partition after
/// another; a resource is keyed to one partition).
fn check_arrived(sent: &[(String, String, u64, String)], got: &[(String, Vec<u8>)]) {
    let ids: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicates: {ids:?}");
    assert_eq!(unique.len(), sent.len(), "missing deliveries: got {ids:?}");
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for (id, payload) in got {
        let (_, rid, n, b) = sent.iter().find(|s| &s.0 == id).expect("a sent id");
        assert_eq!(
            payload.as_slice(),
            b.as_bytes(),
            "{id}: body not byte-exact"
        );
        if let Some(prev) = last.insert(rid.clone(), *n) {
            assert!(prev < *n, "{rid}: change {n} arrived after {prev}");
        }
    }
}

async fn wait_retained(client: &HttpClient, admin: std::net::SocketAddr, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = metric(client, admin, "hookbridge_spool_retained_records", "").await;
        if r >= want {
            return;
        }
        assert!(Instant::now() < deadline, "retained records {r} < {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_that_lost_acknowledged_messages_gets_them_back_by_replay() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let started =
        humantime::format_rfc3339_seconds(SystemTime::now() - Duration::from_secs(1)).to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), "rpl");
    // Small segments: most of the retained records sit in sealed segments that would be
    // deleted at once without retention.
    cfg.spool.segment_bytes = 8192;
    let stream = cfg.sink.nats.stream.clone();
    let prefix = cfg.routing.prefix.clone();
    let sent = deliveries(&prefix, 6, 10);
    let app = TestApp::start(cfg.clone()).await;
    let client = http_client();
    for (id, _, _, b) in &sent {
        assert_eq!(post(&client, &app.url(PATH), id, b.clone()).await, 200);
    }
    wait_drained(&client, app.admin, Duration::from_secs(30))
        .await
        .expect("drained");
    let js = jetstream(&nats_url()).await;
    assert_eq!(
        read_stream(&js, &stream, sent.len(), Duration::from_secs(10))
            .await
            .len(),
        sent.len()
    );
    wait_retained(&client, app.admin, sent.len() as f64).await;
    assert!(metric(&client, app.admin, "hookbridge_spool_segments", "").await > 2.0);
    // Retained bytes follow the *persisted* confirmed position (only segments it covers may be
    // evicted), which trails the live one by up to `confirm_interval`: poll.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready = loop {
        let (status, _, ready) = request(&client, "GET", &app.admin_url("/readyz"), &[], "")
            .await
            .unwrap();
        assert_eq!(status, 200, "{ready}");
        if ready["retained_bytes"].as_u64().unwrap() > 0 || Instant::now() > deadline {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(ready["retained_bytes"].as_u64().unwrap() > 0, "{ready}");
    assert_eq!(ready["backlog_records"], 0, "{ready}");

    // While the bridge runs, replay refuses (and says why); a dry run is fine.
    let o = spool_cmd(dir.path(), &["replay", "--since", &started]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("Stop the bridge first"), "{}", text(&o));
    // The tools read the persisted confirmed position, up to `confirm_interval` behind.
    let want = format!("replay: {} record(s) ({} retained", sent.len(), sent.len());
    let deadline = Instant::now() + Duration::from_secs(5);
    let plan = loop {
        let o = spool_cmd(dir.path(), &["replay", "--since", "1", "--dry-run"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let plan = text(&o);
        if plan.contains(&want) || Instant::now() > deadline {
            break plan;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(plan.contains(&want), "{plan}");
    assert!(plan.contains("dry run: nothing changed"), "{plan}");
    assert!(plan.contains(&format!("seqs 1..={}", sent.len())), "{plan}");
    assert!(
        plan.contains(&format!("{}  {ACTION}", sent.len())),
        "{plan}"
    );
    app.stop().await;

    // The broker loses what it acknowledged. Does a purge forget the de-duplication window?
    // (It decides whether purging is a fair stand-in for a power loss: after a real loss the
    // lost ids are gone from the window too, because the server rebuilds it from the messages
    // it still has.)
    let probe = format!("{prefix}-probe");
    let subject = format!("{prefix}probe");
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", probe.as_str());
    let publish = |h: async_nats::HeaderMap| {
        let (js, subject) = (js.clone(), subject.clone());
        async move {
            js.publish_with_headers(subject, h, Bytes::from_static(b"probe"))
                .await
                .unwrap()
                .await
                .unwrap()
        }
    };
    // The bridge's stream covers `prefix.>` (every action under the prefix).
    assert!(!publish(h.clone()).await.duplicate);
    js.get_stream(&stream).await.unwrap().purge().await.unwrap();
    // It does not (nats-server 2.9): a purge keeps the window, so a replay into a merely purged
    // stream within `duplicate_window` would be dropped as duplicates (README, "Broker
    // durability"). Hence the stream is deleted below.
    assert!(
        publish(h).await.duplicate,
        "a purge now forgets the de-duplication window: update the README"
    );
    // A broker that lost its data lost the ids with it: model that exactly by deleting the
    // stream (the bridge recreates it).
    delete_stream(&js, &stream).await;

    let replayed_at = SystemTime::now();
    let o = spool_cmd_after_close(dir.path(), &["replay", "--since", &started]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("replayed {} record(s)", sent.len())),
        "{}",
        text(&o)
    );

    let app = TestApp::start(cfg).await;
    wait_drained(&client, app.admin, Duration::from_secs(30))
        .await
        .expect("replay drained");
    let got = read_stream(&js, &stream, sent.len(), Duration::from_secs(10)).await;
    let got: Vec<(String, Vec<u8>)> = got
        .iter()
        .map(|m| {
            let id = m.header("webhook-id").unwrap().to_owned();
            assert_eq!(m.header("Nats-Msg-Id"), Some(id.as_str()), "original id");
            // Marked as a copy, with the original's receive time (from before the replay).
            assert_eq!(m.header("hookbridge-copy"), Some("replay"), "{id}");
            let received = m.header("hookbridge-received-at").expect("receive time");
            let received = humantime::parse_rfc3339(received).unwrap();
            assert!(
                received >= humantime::parse_rfc3339(&started).unwrap() && received < replayed_at,
                "{id}: {received:?}"
            );
            (id, m.payload.to_vec())
        })
        .collect();
    check_arrived(&sent, &got);
    app.stop().await;
    delete_stream(&js, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_broker_restarted_empty_gets_everything_back_by_replay() {
    if !require(&[Tier::Kafka, Tier::Python]) {
        return;
    }
    let mut tansu = Tansu::started().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = kafka_config(dir.path(), "krpl", &tansu.brokers());
    cfg.spool.segment_bytes = 8192;
    let topic = format!("{}{ACTION}", cfg.routing.prefix);
    let sent = deliveries(&cfg.routing.prefix, 5, 8);
    let app = TestApp::start(cfg.clone()).await;
    let client = http_client();
    for (id, _, _, b) in &sent {
        assert_eq!(post(&client, &app.url(PATH), id, b.clone()).await, 200);
    }
    wait_drained(&client, app.admin, Duration::from_secs(60))
        .await
        .expect("drained");
    wait_retained(&client, app.admin, sent.len() as f64).await;
    app.stop().await;
    let before = kafka_read_all(&tansu.brokers(), &topic, Duration::from_secs(30)).await;
    assert_eq!(before.len(), sent.len());

    // In-memory storage: a restart is a broker that lost everything, topics included.
    tansu.stop();
    tansu.start().await;
    let o = spool_cmd_after_close(dir.path(), &["replay", "--since", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let app = TestApp::start(cfg).await;
    wait_drained(&client, app.admin, Duration::from_secs(60))
        .await
        .expect("replay drained");
    app.stop().await;
    // The independent client: every record once, in order per resource (one key, one partition).
    let got = kafka_python_consume(
        &tansu.brokers(),
        std::slice::from_ref(&topic),
        sent.len(),
        Duration::from_secs(30),
    )
    .await;
    let got: Vec<(String, Vec<u8>)> = got
        .iter()
        .map(|r| (r.header("webhook-id").unwrap().to_owned(), r.value.clone()))
        .collect();
    check_arrived(&sent, &got);
}

/// The spool alone: a quota two-thirds full of retained records accepts a quota's worth of new
/// ones (evicting), reports ready throughout, and refuses only once unconfirmed records fill it;
/// every unconfirmed record is still read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_records_are_evicted_before_any_append_is_refused() {
    const MAX: u64 = 256 << 10;
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        dir: dir.path().to_owned(),
        segment_bytes: 8192,
        max_bytes: MAX,
        max_append_bytes: 4096,
        max_batch_bytes: 64 << 10,
        preallocate_bytes: 1 << 20,
        confirm_interval: Duration::from_millis(1),
        min_free_bytes: 0,
        retain_confirmed: Duration::from_secs(3600),
    };
    let metrics = Arc::new(Metrics::new());
    let (spool, _) = open_spool(cfg.clone(), metrics.clone(), Clock::system());
    let payload = |i: u64| Bytes::from(format!("{i:0>1000}"));
    let frame = 24 + 1000u64;
    // Phase 1: confirmed records up to well past what health alone would call full.
    let mut seq = 0;
    while spool.stats().bytes + 4096 + 48 <= MAX {
        seq = spool.append(payload(seq)).await.unwrap();
    }
    spool.confirm(seq);
    let deadline = Instant::now() + Duration::from_secs(5);
    while spool.stats().retained_bytes + 2 * 8192 < spool.stats().bytes {
        assert!(
            Instant::now() < deadline,
            "never retained: {:?}",
            spool.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = spool.stats();
    assert_eq!(s.records, 0);
    assert_eq!(s.retained_records, seq);
    assert_eq!(
        spool.health(),
        Health::Ok,
        "retained bytes are not fullness: {s:?}"
    );

    // Phase 2: unconfirmed records until refused.
    let mut unconfirmed = Vec::new();
    let refused_at = loop {
        match spool
            .append(payload(1_000_000 + unconfirmed.len() as u64))
            .await
        {
            Ok(s) => unconfirmed.push(s),
            Err(Error::Full) => break spool.stats(),
            Err(e) => panic!("{e}"),
        }
        let s = spool.stats();
        assert!(s.bytes <= MAX, "over quota: {s:?}");
    };
    let evicted = metrics.spool_evicted_segments.get();
    assert!(evicted > 0, "nothing evicted");
    assert!(
        metrics.spool_evicted_records.get() >= seq * 9 / 10,
        "most retained records evicted: {}",
        metrics.spool_evicted_records.get()
    );
    // Refused only when the unconfirmed records (and the one segment that holds both kinds)
    // leave no room: within two segments of the quota.
    let unconfirmed_bytes = unconfirmed.len() as u64 * frame;
    assert!(
        unconfirmed_bytes + 2 * 8192 + 4096 > MAX,
        "refused with {unconfirmed_bytes} unconfirmed bytes: {refused_at:?}"
    );
    assert_eq!(refused_at.records, unconfirmed.len() as u64);
    assert_eq!(spool.health(), Health::Full);

    // Nothing unconfirmed was evicted.
    let mut reader = spool.reader();
    let mut read = Vec::new();
    while read.len() < unconfirmed.len() {
        let batch = tokio::time::timeout(Duration::from_secs(5), reader.next_batch(1000))
            .await
            .expect("every unconfirmed record is readable")
            .unwrap();
        read.extend(batch.into_iter().map(|r| {
            assert_eq!(r.payload, payload(1_000_000 + (r.seq - unconfirmed[0])));
            r.seq
        }));
    }
    assert_eq!(read, unconfirmed);
    spool.close().await.unwrap();
}

/// The README's disk-cost figure: what one retained delivery costs on disk beyond its body (a
/// 1,063-byte Sessionboard `contact.created` with a Svix-style 31-character id), measured from
/// the segment files the real ingress wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_cost_per_delivery_is_the_frame_header_plus_the_envelope() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path(), "cost");
    let stream = cfg.sink.nats.stream.clone();
    let app = TestApp::start(cfg).await;
    let client = http_client();
    let fixture = std::fs::read(fixtures_dir().join("contact.created.json")).unwrap();
    const N: u64 = 200;
    for i in 0..N {
        let id = format!("msg_2Zt7mRk9yQ4vXb3LcN8pW{i:06}");
        assert_eq!(id.len(), 31);
        assert_eq!(
            post(&client, &app.url(PATH), &id, fixture.clone()).await,
            200
        );
    }
    app.stop().await;
    let segments: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| e.metadata().unwrap().len() - 24)
        .sum();
    let per_record = segments / N;
    let overhead = per_record - fixture.len() as u64;
    eprintln!(
        "{} B body: {per_record} B per record on disk, {overhead} B overhead (24 B frame header + {} B envelope)",
        fixture.len(),
        overhead - 24
    );
    assert_eq!(segments % N, 0, "every record the same size");
    // README "Broker durability" → "Disk cost" quotes these figures: keep them true.
    assert_eq!(
        (fixture.len(), per_record, overhead - 24),
        (1063, 1232, 145),
        "the README's disk cost figures need updating"
    );
    delete_stream(&jetstream(&nats_url()).await, &stream).await;
}

/// The retention clock: confirmed segments stay for `retain_confirmed` after the position
/// covering them is persisted, survive a restart (which restarts their clock: the time of a
/// confirmation is not on disk), then go, all but the newest; with `0s` recovery deletes them.
/// The spool runs on a manual clock, so an hour passes when the test says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_segments_expire_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |retain: Duration| SpoolConfig {
        dir: dir.path().to_owned(),
        segment_bytes: 4096,
        max_bytes: 1 << 20,
        max_append_bytes: 4096,
        max_batch_bytes: 64 << 10,
        preallocate_bytes: 1 << 20,
        confirm_interval: Duration::from_millis(1),
        min_free_bytes: 0,
        retain_confirmed: retain,
    };
    let retain = Duration::from_secs(3600);
    let minutes = |m: u64| Duration::from_secs(60 * m);
    let time = ManualClock::starting_now();
    let open = |retain| open_spool(cfg(retain), Arc::new(Metrics::new()), time.clock());
    // The writer looks for expired segments every millisecond here (`confirm_interval`) once
    // its clock moved a second: what must not go is checked after giving it that long.
    let settle = || tokio::time::sleep(Duration::from_millis(50));
    let (spool, _) = open(retain);
    let mut seq = 0;
    for i in 0..20u64 {
        seq = spool
            .append(Bytes::from(vec![i as u8; 1000]))
            .await
            .unwrap();
    }
    spool.confirm(seq);
    let segments = spool.stats().segments;
    assert!(segments >= 6, "{:?}", spool.stats());
    let deadline = Instant::now() + Duration::from_secs(10);
    while spool.stats().bytes - spool.stats().retained_bytes > 4096 {
        assert!(
            Instant::now() < deadline,
            "never retained: {:?}",
            spool.stats()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    time.advance(minutes(50));
    settle().await;
    let s = spool.stats();
    assert_eq!(
        (s.segments, s.records, s.retained_records),
        (segments, 0, 20),
        "inside the hour"
    );
    assert_eq!(s.oldest_retained_age, Some(minutes(50)));
    // A wall-clock step two days forward shows in the age of what is stored (an append time),
    // never in retention (as the libfaketime test below checks on the real binary).
    time.set_wall_ms(time.clock().wall_ms() + 2 * 86_400_000);
    settle().await;
    let s = spool.stats();
    assert_eq!(s.segments, segments, "a wall-clock step expired nothing");
    assert_eq!(s.oldest_retained_age, Some(minutes(50 + 2 * 24 * 60)));
    spool.close().await.unwrap();

    // 50 minutes after the confirmation, 20 after the restart: 70 in all, but the restart
    // started a new window.
    let (spool, report) = open(retain);
    assert_eq!(
        (report.segments, report.records),
        (segments, 0),
        "kept at open"
    );
    assert_eq!(spool.stats().retained_records, 20);
    time.advance(minutes(20));
    settle().await;
    assert_eq!(
        spool.stats().segments,
        segments,
        "the restart restarted the clock"
    );
    time.advance(minutes(40));
    let deadline = Instant::now() + Duration::from_secs(10);
    while spool.stats().segments > 1 {
        assert!(
            Instant::now() < deadline,
            "never expired: {:?}",
            spool.stats()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    spool.close().await.unwrap();

    // The newest stays (appends continue it) until a restart without retention.
    let (spool, report) = open(Duration::ZERO);
    assert_eq!(report.segments, 1);
    assert_eq!(
        spool.append(Bytes::from_static(b"x")).await.unwrap(),
        seq + 1
    );
    spool.close().await.unwrap();
}

/// libfaketime, which lets a test step the wall clock of the real binary (Debian's `faketime`,
/// installed by scripts/test).
fn faketime() -> std::path::PathBuf {
    faketime_lib()
        .expect("libfaketime not found: run scripts/test, which installs Debian's faketime")
}

/// Retention ages are monotonic: the real binary, its wall clock stepped two days forward (by
/// libfaketime, monotonic clock untouched) while it retains confirmed segments for an hour,
/// keeps every one of them. The step is seen by the process: the age of the oldest retained
/// record, which is an append (wall-clock) time, jumps by two days.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_step_does_not_expire_retained_segments() {
    if !require(&[Tier::Nats, Tier::Faketime]) {
        return;
    }
    let lib = faketime();
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("faketime");
    std::fs::write(&clock, "+0\n").unwrap();
    let spool_dir = dir.path().join("spool");
    let id = unique("wallstep");
    let mut env = bridge_env(&spool_dir, &id, &id.to_uppercase());
    for (k, v) in [
        ("HOOKBRIDGE_SPOOL__RETAIN_CONFIRMED", "1h".to_owned()),
        ("HOOKBRIDGE_SPOOL__SEGMENT_BYTES", "4096".to_owned()),
        ("HOOKBRIDGE_SPOOL__PREALLOCATE_BYTES", "0".to_owned()),
        ("LD_PRELOAD", lib.display().to_string()),
        ("FAKETIME_TIMESTAMP_FILE", clock.display().to_string()),
        ("FAKETIME_NO_CACHE", "1".to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
    ] {
        env.push((k.to_owned(), v));
    }
    let bridge = BridgeProcess::spawn(&env).await;
    let client = http_client();
    let url = format!("http://{}/webhooks/sessionboard", bridge.http);
    for i in 0..40u64 {
        let status = post(
            &client,
            &url,
            &format!("{id}-{i}"),
            body("session.updated", "r", i),
        )
        .await;
        assert_eq!(status, 200);
    }
    let gauge = |name: &'static str| {
        let client = client.clone();
        let admin = bridge.admin;
        async move { metric(&client, admin, name, "").await }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while gauge("hookbridge_spool_retained_records").await < 40.0 {
        assert!(Instant::now() < deadline, "never confirmed and retained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let segments = gauge("hookbridge_spool_segments").await;
    assert!(segments >= 3.0, "several sealed segments: {segments}");

    std::fs::write(&clock, "+2d\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge("hookbridge_spool_oldest_retained_age_seconds").await < 86_400.0 {
        assert!(
            Instant::now() < deadline,
            "the bridge never saw the clock step"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The writer checks expiry about once a second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(gauge("hookbridge_spool_retained_records").await, 40.0);
    assert_eq!(gauge("hookbridge_spool_segments").await, segments);
    assert_eq!(gauge("hookbridge_spool_evicted_segments_total").await, 0.0);
    delete_stream(&jetstream(&nats_url()).await, &id.to_uppercase()).await;
}
