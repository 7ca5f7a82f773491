//! The examples and `hookbridge status`, run as the README tells an operator to run them, against
//! a real bridge and real brokers: `send_signed` against a bridge that checks signatures and
//! against a server that answers 503 first; `consume_nats` and `consume_kafka` reading what the
//! bridge published, skipping a duplicate; `hookbridge status` against a running bridge, a
//! not-ready one and nothing at all.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;

const PATH: &str = "/webhooks/sessionboard";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Path of a built example. `cargo test` builds the examples, but `cargo test --test examples`
/// does not, and an example binary left from an earlier build may be stale; so this asks cargo
/// to build them (a no-op when up to date) in this test binary's own target directory and
/// profile, and takes the paths from cargo's JSON messages (what the `escargot` crate does).
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<BTreeMap<String, PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        // <target>/<profile>/deps/examples-<hash>
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap();
        let target_dir = profile_dir.parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--locked", "--message-format=json"])
            .args(["--example", "send_signed"])
            .args(["--example", "consume_nats"])
            .args(["--example", "consume_kafka"])
            .arg("--target-dir")
            .arg(target_dir);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("cargo runs");
        assert!(
            out.status.success(),
            "building the examples failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact")
            .filter_map(|m| {
                let exe = m["executable"].as_str()?;
                Some((m["target"]["name"].as_str()?.to_owned(), exe.into()))
            })
            .collect()
    });
    built
        .get(name)
        .unwrap_or_else(|| panic!("cargo built no example {name}"))
        .clone()
}

/// Runs a command off the async runtime; returns its output, stdout and stderr as text.
async fn run(mut cmd: Command) -> (Output, String, String) {
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("command runs"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

fn send_signed(url: &str, secret: &str) -> Command {
    let mut cmd = Command::new(example("send_signed"));
    cmd.args(["--url", url])
        .env_clear()
        .env("HOOKBRIDGE_SECRET", secret);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_signed_delivers_every_fixture_to_a_bridge_with_the_same_secret() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), "exsend");
    cfg.auth.secrets = vec![SECRET.to_owned()];
    let stream = cfg.sink.nats.stream.clone();
    let app = TestApp::start(cfg).await;

    let (out, stdout, stderr) = run(send_signed(&app.url(PATH), SECRET)).await;
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), fixture_files().len(), "{stdout}");
    let mut ids = BTreeSet::new();
    for (line, file) in lines.iter().zip(fixture_files()) {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(
            fields[1..],
            ["200", "attempts=1", &file.display().to_string()]
        );
        ids.insert(fields[0].to_owned());
    }
    let js = jetstream(&nats_url()).await;
    let got = read_stream(&js, &stream, ids.len(), Duration::from_secs(20)).await;
    let got_ids: BTreeSet<String> = got
        .iter()
        .map(|m| m.header("webhook-id").unwrap().to_owned())
        .collect();
    assert_eq!(got_ids, ids, "every signed delivery was published");

    // A wrong secret: 401 is final for send_signed, which prints the bridge's error body.
    let other = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let mut cmd = send_signed(&app.url(PATH), other);
    cmd.arg(fixture_files()[0].clone());
    let (out, stdout, stderr) = run(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains(" 401 attempts=1 "), "{stdout}");
    assert!(stderr.contains("no_matching_signature"), "{stderr}");
    delete_stream(&js, &stream).await;
    app.stop().await;
}

/// One request as the scripted server saw it.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 server: answers the n-th request (from 0) with `respond(n, &request)`, a
/// complete raw response, and closes the connection. Returns its address and the requests seen.
async fn scripted_server(
    respond: impl Fn(usize, &Seen) -> String + Send + Sync + 'static,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (respond, log) = (Arc::new(respond), seen.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let (respond, log) = (respond.clone(), log.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let mut lines = head.lines();
                let path = lines
                    .next()
                    .and_then(|l| l.split(' ').nth(1))
                    .unwrap_or("")
                    .to_owned();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let req = Seen {
                    at: Instant::now(),
                    path,
                    headers,
                    body: buf[head_end..head_end + len].to_vec(),
                };
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push(req.clone());
                    log.len() - 1
                };
                let _ = conn.write_all(respond(n, &req).as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (addr, seen)
}

fn response(status: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_signed_honours_retry_after_and_retries_5xx_until_accepted() {
    let (addr, seen) = scripted_server(|n, _| match n {
        0 => response(
            "503 Service Unavailable",
            "retry-after: 1\r\n",
            r#"{"error":"spool_full"}"#,
        ),
        1 => response("500 Internal Server Error", "", "{}"),
        _ => response("200 OK", "", r#"{"status":"accepted"}"#),
    })
    .await;
    let file = fixture_files()[0].clone();
    let mut cmd = send_signed(&format!("http://{addr}{PATH}"), SECRET);
    // A backoff far below the server's Retry-After, so the first wait shows which one was used.
    cmd.args(["--backoff", "100ms"]).arg(&file);
    let (out, stdout, stderr) = run(cmd).await;
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.ends_with(&format!(" 200 attempts=3 {}\n", file.display())),
        "{stdout}"
    );

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let body = std::fs::read(&file).unwrap();
    let keys = [hookbridge::ingress::signature::Key::parse(SECRET).unwrap()];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for r in &seen {
        assert_eq!(r.path, PATH);
        assert_eq!(r.body, body, "the body is sent byte for byte");
        assert_eq!(
            r.header("webhook-id"),
            seen[0].header("webhook-id"),
            "a retry keeps the id"
        );
        hookbridge::ingress::signature::verify(
            &keys,
            Duration::from_secs(300),
            r.header("webhook-id"),
            r.header("webhook-timestamp"),
            r.header("webhook-signature"),
            &r.body,
            now,
        )
        .expect("every attempt carries a valid signature");
    }
    let first_wait = seen[1].at - seen[0].at;
    let second_wait = seen[2].at - seen[1].at;
    assert!(
        first_wait >= Duration::from_millis(950),
        "Retry-After: 1 honoured: {first_wait:?}"
    );
    assert!(
        second_wait < Duration::from_millis(900),
        "backoff after a plain 500: {second_wait:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_nats_prints_each_delivery_once_acks_and_skips_a_duplicate() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path(), "excn");
    let (stream, prefix) = (cfg.sink.nats.stream.clone(), cfg.routing.prefix.clone());
    let app = TestApp::start(cfg).await;
    let client = http_client();
    let mut want = Vec::new();
    for (i, file) in fixture_files().iter().enumerate() {
        let bytes = std::fs::read(file).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let id = format!("msg_excn_{i}");
        assert_eq!(post(&client, &app.url(PATH), &id, bytes).await, 200);
        let action = v["metadata"]["action"].as_str().unwrap().to_owned();
        let resource = v["data"]["id"].as_str().unwrap().to_owned();
        want.push(format!(
            "handled {action} resource={resource} id={id} subject={prefix}{action}"
        ));
    }
    let js = jetstream(&nats_url()).await;
    let published = read_stream(&js, &stream, want.len(), Duration::from_secs(20)).await;
    assert_eq!(published.len(), want.len());
    // Order holds per resource only: deliveries to different resources may reach the stream in
    // any order, and the consumer prints the stream's.
    let want: Vec<String> = published
        .iter()
        .map(|m| {
            let id = format!(" id={} ", m.header("webhook-id").unwrap());
            let line = want.iter().find(|w| w.contains(&id));
            line.expect("a sent delivery").clone()
        })
        .collect();
    let first_id = published[0].header("webhook-id").unwrap().to_owned();

    // The same delivery id once more, as a redelivery or a replay outside JetStream's duplicate
    // window would bring it (no Nats-Msg-Id, so the stream keeps it).
    let first = &published[0];
    let mut headers = async_nats::HeaderMap::new();
    for (k, v) in &first.headers {
        if k != "Nats-Msg-Id" {
            headers.insert(k.as_str(), v.as_str());
        }
    }
    js.publish_with_headers(first.subject.clone(), headers, first.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();

    let consume = |count: Option<usize>, timeout: &str| {
        let mut cmd = Command::new(example("consume_nats"));
        cmd.args([
            "--url",
            &nats_url(),
            "--stream",
            &stream,
            "--prefix",
            &prefix,
        ])
        .args(["--durable", "excn", "--timeout", timeout]);
        if let Some(c) = count {
            cmd.args(["--count", &c.to_string()]);
        }
        cmd
    };
    let (out, stdout, stderr) = run(consume(Some(want.len() + 1), "20s")).await;
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let mut lines: Vec<&str> = stdout.lines().collect();
    let duplicate = lines.pop().unwrap();
    assert_eq!(lines, want, "one line per delivery, in stream order");
    assert!(
        duplicate.starts_with(&format!("skipped duplicate id={first_id} ")),
        "{duplicate}"
    );

    // Everything was acked: a second run of the durable consumer gets only what came since.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("webhook-id", "msg_excn_after");
    headers.insert("sessionboard-action", "session.created");
    headers.insert("sessionboard-resource-id", "r-after");
    let subject = format!("{prefix}session.created");
    js.publish_with_headers(subject.clone(), headers, "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let (out, stdout, stderr) = run(consume(None, "2s")).await;
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout,
        format!("handled session.created resource=r-after id=msg_excn_after subject={subject}\n"),
        "acked messages are not delivered again"
    );
    delete_stream(&js, &stream).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_kafka_reads_every_topic_of_the_prefix_commits_and_skips_a_duplicate() {
    if !require(&[Tier::Kafka]) {
        return;
    }
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let tansu = Tansu::started().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = kafka_config(dir.path(), "exck", &tansu.brokers());
    let prefix = cfg.routing.prefix.clone();
    let app = TestApp::start(cfg).await;
    let client = http_client();
    let mut want = BTreeSet::new();
    for (i, file) in fixture_files().iter().enumerate() {
        let bytes = std::fs::read(file).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let id = format!("msg_exck_{i}");
        assert_eq!(post(&client, &app.url(PATH), &id, bytes).await, 200);
        let action = v["metadata"]["action"].as_str().unwrap();
        let resource = v["data"]["id"].as_str().unwrap();
        want.insert(format!(
            "handled {action} resource={resource} id={id} topic={prefix}{action}"
        ));
    }
    assert!(
        wait_drained(&client, app.admin, Duration::from_secs(60))
            .await
            .is_some(),
        "the bridge published everything"
    );

    // A second copy of one delivery, as a producer retry or a replay after a crash writes it.
    let body = std::fs::read(&fixture_files()[0]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let action = v["metadata"]["action"].as_str().unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", tansu.brokers())
        .create()
        .unwrap();
    let topic = format!("{prefix}{action}");
    producer
        .send(
            FutureRecord::to(&topic)
                .key(v["data"]["id"].as_str().unwrap())
                .payload(&body)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "webhook-id",
                    value: Some("msg_exck_0"),
                })),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    let consume = |count: Option<usize>, timeout: &str| {
        let mut cmd = Command::new(example("consume_kafka"));
        cmd.args(["--brokers", &tansu.brokers(), "--prefix", &prefix])
            .args(["--group", "exck", "--refresh", "1s", "--timeout", timeout]);
        if let Some(c) = count {
            cmd.args(["--count", &c.to_string()]);
        }
        cmd
    };
    let (out, stdout, stderr) = run(consume(Some(want.len() + 1), "60s")).await;
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let (handled, skipped): (Vec<&str>, Vec<&str>) =
        stdout.lines().partition(|l| l.starts_with("handled "));
    // Partition and offset are the broker's business; compare the rest.
    let handled: BTreeSet<String> = handled
        .iter()
        .map(|l| l.rsplit_once('/').unwrap().0.to_owned())
        .collect();
    assert_eq!(handled, want, "{stdout}");
    assert_eq!(skipped.len(), 1, "{stdout}");
    assert!(
        skipped[0].starts_with("skipped duplicate id=msg_exck_0 "),
        "{stdout}"
    );

    // The offsets were committed: a second run of the group reads only what came since (and
    // waits for it, so an empty output cannot pass for a group that never got its partitions).
    producer
        .send(
            FutureRecord::to(&topic)
                .key("r-after")
                .payload("{}")
                .headers(
                    OwnedHeaders::new()
                        .insert(Header {
                            key: "webhook-id",
                            value: Some("msg_exck_after"),
                        })
                        .insert(Header {
                            key: "sessionboard-action",
                            value: Some(action),
                        })
                        .insert(Header {
                            key: "sessionboard-resource-id",
                            value: Some("r-after"),
                        }),
                ),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let (out, stdout, stderr) = run(consume(None, "10s")).await;
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "committed records are not read again:\n{stdout}"
    );
    assert!(
        lines[0].starts_with(&format!(
            "handled {action} resource=r-after id=msg_exck_after topic={topic}/"
        )),
        "{stdout}"
    );
    eprintln!("second consumer run took {:?}", started.elapsed());
    app.stop().await;
}

fn hookbridge_status() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookbridge"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg("status");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_summarises_a_running_bridge_and_says_when_it_cannot() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path(), "exst");
    let stream = cfg.sink.nats.stream.clone();
    let app = TestApp::start(cfg).await;
    let client = http_client();
    for (i, file) in fixture_files().iter().take(3).enumerate() {
        let bytes = std::fs::read(file).unwrap();
        assert_eq!(
            post(&client, &app.url(PATH), &format!("st-{i}"), bytes).await,
            200
        );
    }
    assert!(wait_drained(&client, app.admin, Duration::from_secs(20))
        .await
        .is_some());

    let mut cmd = hookbridge_status();
    cmd.args([
        "--admin",
        &format!("http://{}", app.admin),
        "--interval",
        "200ms",
    ]);
    let (out, stdout, stderr) = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for want in [
        format!("hookbridge at http://{}\n", app.admin),
        "\nready         yes (spool ok)\n".to_owned(),
        "\nbroker        nats up\n".to_owned(),
        "\nbacklog       0 records, ".to_owned(),
        "\nrates         0.0 acks/s, 0.0 published/s (over ".to_owned(),
        "\nsince start   3 accepted, 3 published, 0 duplicates\n".to_owned(),
        "\ndead letters  0 in store\n".to_owned(),
        "\nerrors        none\n".to_owned(),
        "\nhttp answers  3 2xx, 0 4xx, 0 5xx\n".to_owned(),
    ] {
        assert!(stdout.contains(&want), "{want:?} missing from\n{stdout}");
    }

    // The admin address from the configuration, as for every other subcommand.
    let mut cmd = hookbridge_status();
    cmd.env("HOOKBRIDGE_ADMIN__LISTEN", app.admin.to_string())
        .args(["--interval", "10ms"]);
    let (out, stdout, _) = run(cmd).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout.starts_with(&format!("hookbridge at http://{}\n", app.admin)));
    let js = jetstream(&nats_url()).await;
    delete_stream(&js, &stream).await;
    let admin = app.admin;
    app.stop().await;

    // Nothing listening any more: exit 2 and why.
    let mut cmd = hookbridge_status();
    cmd.args(["--admin", &format!("http://{admin}")]);
    let (out, stdout, stderr) = run(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stderr.contains("unreachable"), "{stderr}");

    // A bridge whose spool failed answers /readyz 503: exit 1, and the summary says why.
    let (addr, _) = scripted_server(|_, r| match r.path.as_str() {
        "/readyz" => response(
            "503 Service Unavailable",
            "",
            r#"{"ready":false,"spool":"failed","broker":"up","backlog_records":5,"backlog_bytes":900,"dead_letters":0}"#,
        ),
        _ => response(
            "200 OK",
            "",
            "hookbridge_spool_records 5\nhookbridge_spool_errors_total{op=\"fsync\"} 1\n",
        ),
    })
    .await;
    let mut cmd = hookbridge_status();
    cmd.args(["--admin", &format!("http://{addr}"), "--interval", "10ms"]);
    let (out, stdout, stderr) = run(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("\nready         NO — spool failed: "),
        "{stdout}"
    );
    assert!(
        stdout.contains("\nerrors        spool: fsync 1\n"),
        "{stdout}"
    );
}
