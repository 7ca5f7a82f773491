//! TLS on the webhook listener, with real clients: curl and the Svix Python library over
//! `requests` (both again after a rotation to a new CA), and a rustls client that checks which
//! certificate is served while the files rotate. Needs `curl`, `python3` with `svix` and
//! `requests`, and the local NATS.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::tls::{client_config, Ca, SecretDir};
use common::*;
use hookbridge::config::Config;

/// One request of the rotation test's client: status and served certificate, or what failed.
type Outcome = Result<(u16, Vec<u8>), String>;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn tls_config(spool: &Path, tag: &str, secret: &SecretDir) -> Config {
    let mut c = test_config(spool, tag);
    c.http.tls.cert_file = Some(secret.cert_path());
    c.http.tls.key_file = Some(secret.key_path());
    c
}

fn write_ca(dir: &Path, ca: &Ca) -> std::path::PathBuf {
    let path = dir.join("ca.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    path
}

/// `curl` with `args`; returns its exit status and stdout. Fails the test when curl is missing.
async fn curl(args: Vec<String>) -> (std::process::ExitStatus, String, String) {
    let out = tokio::task::spawn_blocking(move || Command::new("curl").args(args).output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("curl cannot run ({e}): run scripts/test, which installs it"));
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// curl arguments for a POST of `data` (`@file` or the body itself) to the bridge's HTTPS port,
/// trusting only `ca_file`; stdout ends with a line "<status> <http version>".
fn curl_post_args(ca_file: &Path, port: u16, extra: &[&str], data: String) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "--cacert".into(),
        ca_file.display().to_string(),
        // localhost may resolve to ::1 first; the bridge listens on 127.0.0.1.
        "--resolve".into(),
        format!("localhost:{port}:127.0.0.1"),
        "-H".into(),
        "content-type: application/json".into(),
        "-w".into(),
        "\n%{http_code} %{http_version}".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend([
        "--data-binary".into(),
        data,
        format!("https://localhost:{port}/webhooks/sessionboard"),
    ]);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_posts_over_https_and_plain_http_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("curl");
    let leaf = ca.leaf(7, 2031);
    let secret = SecretDir::new(dir.path(), &leaf.chain_pem, &leaf.key_pem);
    let ca_file = write_ca(dir.path(), &ca);
    let app = TestApp::start(tls_config(&dir.path().join("spool"), "tls_curl", &secret)).await;
    let port = app.http.port();
    let url = format!("https://localhost:{port}/webhooks/sessionboard");
    let fixture = fixtures_dir().join("session.updated.json");
    let post = |extra: &[&str]| {
        let data = format!("@{}", fixture.display());
        curl_post_args(&ca_file, port, extra, data)
    };

    // TLS 1.3 (curl's default) and TLS 1.2 both work, over HTTP/1.1.
    for (id, extra) in [
        ("msg_curl_1", vec!["-H", "webhook-id: msg_curl_1"]),
        (
            "msg_curl_2",
            vec!["-H", "webhook-id: msg_curl_2", "--tls-max", "1.2"],
        ),
    ] {
        let (status, out, err) = curl(post(&extra)).await;
        assert!(status.success(), "curl failed: {err}");
        let (body, code) = out.rsplit_once('\n').unwrap();
        assert_eq!(code, "200 1.1", "{out}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["status"], "accepted");
        assert_eq!(json["id"], id);
    }

    // A client that does not trust the CA refuses the certificate (it is really checked).
    let (status, _, _) = curl(vec![
        "-sS".into(),
        "--resolve".into(),
        format!("localhost:{port}:127.0.0.1"),
        url.clone(),
    ])
    .await;
    assert!(!status.success());

    // Plain HTTP to the TLS port gets no HTTP answer, and counts as a failed handshake.
    let client = http_client();
    let plain = request(
        &client,
        "POST",
        &app.url("/webhooks/sessionboard"),
        &[("webhook-id", "msg_plain")],
        "{}",
    )
    .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    let (status, out, _) = curl(vec![
        "-sS".into(),
        "-w".into(),
        "%{http_code}".into(),
        format!("http://127.0.0.1:{port}/webhooks/sessionboard"),
    ])
    .await;
    assert!(!status.success() && !out.contains("200"), "{out}");
    let failed = metric(
        &client,
        app.admin,
        "hookbridge_http_connection_errors_total",
        "kind=\"tls_handshake\"",
    )
    .await;
    assert!(failed >= 2.0, "tls_handshake errors: {failed}");
    assert_eq!(
        metric(
            &client,
            app.admin,
            "hookbridge_tls_cert_expiry_timestamp_seconds",
            ""
        )
        .await,
        leaf.not_after as f64
    );
    app.stop().await;
}

/// Runs `tests/svix_send.py` against the bridge's HTTPS port, trusting only `ca_file`: one
/// Svix-signed POST per file (ids `<prefix>0`, `<prefix>1`, …), then one tampered. Returns the
/// sender's lines.
async fn svix_send(
    port: u16,
    ca_file: &Path,
    files: &[std::path::PathBuf],
    prefix: &str,
) -> Vec<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/svix_send.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .args([
            "--url",
            &format!("https://localhost:{port}/webhooks/sessionboard"),
        ])
        .arg("--ca")
        .arg(ca_file)
        .args(["--secret", SECRET, "--id-prefix", prefix])
        .args(files);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "svix sender failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), files.len() + 1);
    for l in &lines[..files.len()] {
        assert_eq!(l["status"], 200, "{l}");
    }
    let forged = &lines[files.len()];
    assert_eq!(forged["tampered"], true);
    assert_eq!(forged["status"], 401, "{forged}");
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svix_signed_deliveries_over_https_reach_nats() {
    if !require(&[Tier::Nats, Tier::Python]) {
        return;
    }
    let probe = Command::new("python3")
        .args(["-c", "import svix, requests"])
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 cannot run ({e}): run scripts/test, which installs what the tests need")
        });
    assert!(
        probe.status.success(),
        "this test needs the Svix Python library: run scripts/test, which installs it ({})",
        String::from_utf8_lossy(&probe.stderr).trim()
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("svix");
    let leaf = ca.leaf(8, 2031);
    let mut secret = SecretDir::new(dir.path(), &leaf.chain_pem, &leaf.key_pem);
    let ca_file = write_ca(dir.path(), &ca);
    let mut c = tls_config(&dir.path().join("spool"), "tls_svix", &secret);
    c.auth.secrets = vec![SECRET.into()];
    c.http.tls.reload_interval = Duration::from_millis(200);
    let stream = c.sink.nats.stream.clone();
    let app = TestApp::start(c).await;
    let files: Vec<_> = fixture_files().into_iter().take(6).collect();
    let port = app.http.port();
    svix_send(port, &ca_file, &files[..3], "msg_tls_").await;

    // The certificate rotates mid-run to one from a new CA; the sender, now trusting only the
    // new CA, gets through once the bridge serves it, and one trusting only the old CA no longer
    // does.
    let ca2 = Ca::new("svix-two");
    let leaf2 = ca2.leaf(18, 2032);
    let ca2_file = dir.path().join("ca2.pem");
    std::fs::write(&ca2_file, ca2.pem()).unwrap();
    secret.rotate(&leaf2.chain_pem, &leaf2.key_pem);
    wait_for_reload(&app).await;
    svix_send(port, &ca2_file, &files[3..], "msg_tls_rotated_").await;
    let old = Command::new("python3")
        .args([
            "-c",
            "import requests,sys; requests.get(sys.argv[1], verify=sys.argv[2], timeout=5)",
            &format!("https://localhost:{port}/webhooks/sessionboard"),
        ])
        .arg(&ca_file)
        .output()
        .unwrap();
    assert!(
        !old.status.success()
            && String::from_utf8_lossy(&old.stderr).contains("CERTIFICATE_VERIFY_FAILED"),
        "a client trusting only the old CA still got through: {}",
        String::from_utf8_lossy(&old.stderr)
    );

    // Byte-exact at the broker (order is promised per resource only, and these are several).
    let js = jetstream(&nats_url()).await;
    let got = read_stream(&js, &stream, files.len(), Duration::from_secs(15)).await;
    let mut got: Vec<Vec<u8>> = got.iter().map(|m| m.payload.to_vec()).collect();
    let mut sent: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    got.sort();
    sent.sort();
    assert_eq!(got, sent);
    delete_stream(&js, &stream).await;
    app.stop().await;
}

/// Waits (up to 10 s) until the bridge counted one successful certificate reload.
async fn wait_for_reload(app: &TestApp) {
    let client = http_client();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(
        &client,
        app.admin,
        "hookbridge_tls_reloads_total",
        "result=\"ok\"",
    )
    .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let (ca1, ca2) = (Ca::new("one"), Ca::new("two"));
    // The second certificate comes from a new CA (the client trusts both, as during a CA
    // rollover); the third is a mismatched pair.
    let first = ca1.leaf(1001, 2031);
    let second = ca2.leaf(1002, 2032);
    let third = ca2.leaf(1003, 2033);
    let mut secret = SecretDir::new(dir.path(), &first.chain_pem, &first.key_pem);
    let mut c = tls_config(&dir.path().join("spool"), "tls_rotate", &secret);
    c.http.tls.reload_interval = Duration::from_millis(200);
    let app = TestApp::start(c).await;
    let (addr, admin) = (app.http, app.admin);
    let client = client_config(&[ca1.pem(), ca2.pem()]);
    let metrics = http_client();

    // A client posting on fresh connections the whole time.
    let seen: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poster = {
        let (seen, stop, client) = (seen.clone(), stop.clone(), client.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let r = common::tls::post(
                    addr,
                    &client,
                    "/webhooks/sessionboard",
                    &format!("msg_rot_{n}"),
                    &body("session.updated", "s1", n),
                )
                .await;
                seen.lock().unwrap().push(r);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let wait_for = |der: Vec<u8>| {
        let seen = seen.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let hit = seen
                    .lock()
                    .unwrap()
                    .iter()
                    .rposition(|r| matches!(r, Ok((_, d)) if *d == der));
                if let Some(i) = hit {
                    return i;
                }
                assert!(
                    Instant::now() < deadline,
                    "certificate never served; last results: {:?}",
                    seen.lock()
                        .unwrap()
                        .iter()
                        .rev()
                        .take(3)
                        .map(|r| r.as_ref().map(|(s, d)| (*s, d.len())))
                        .collect::<Vec<_>>()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let expiry = || {
        metric(
            &metrics,
            admin,
            "hookbridge_tls_cert_expiry_timestamp_seconds",
            "",
        )
    };
    let reloads = |result: &'static str| {
        let metrics = metrics.clone();
        async move {
            metric(
                &metrics,
                admin,
                "hookbridge_tls_reloads_total",
                &format!("result=\"{result}\""),
            )
            .await
        }
    };

    wait_for(first.der.clone()).await;
    assert_eq!(expiry().await, first.not_after as f64);

    // Rotation by symlink swap: new connections get the new certificate within the interval.
    let switch = seen.lock().unwrap().len();
    let rotated = Instant::now();
    secret.rotate(&second.chain_pem, &second.key_pem);
    wait_for(second.der.clone()).await;
    let took = rotated.elapsed();
    // Within the 200 ms reload interval; the bound is many intervals, for a busy machine.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(expiry().await, second.not_after as f64);
    assert_eq!(reloads("ok").await, 1.0);

    // curl, trusting only the new CA, gets through on a new connection; trusting only the old
    // one, it refuses the certificate now served.
    let port = addr.port();
    for (name, ca, ok) in [("ca2.pem", &ca2, true), ("ca1.pem", &ca1, false)] {
        let ca_file = dir.path().join(name);
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let id = format!("webhook-id: msg_rot_curl_{name}");
        let data = body("session.updated", "s1", 0);
        let (status, out, err) = curl(curl_post_args(&ca_file, port, &["-H", &id], data)).await;
        if ok {
            assert!(status.success(), "curl with the new CA failed: {err}");
            assert!(out.ends_with("\n200 1.1"), "{out}");
        } else {
            assert!(
                !status.success(),
                "curl trusted the old CA only and got: {out}"
            );
        }
    }

    // A mismatched pair (the third certificate with the second key) is refused and counted;
    // the second certificate stays.
    secret.rotate(&third.chain_pem, &second.key_pem);
    let broken = seen.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(5);
    while reloads("error").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the failed reload was not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    poster.await.unwrap();

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(seen.len() > 30, "only {} requests", seen.len());
    let first_new = seen
        .iter()
        .position(|r| matches!(r, Ok((_, d)) if *d == second.der))
        .unwrap();
    for (i, r) in seen.iter().enumerate() {
        let (status, der) = r
            .as_ref()
            .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!(*status, 200, "request {i}");
        // Before the rotation only the first certificate; once the second was served, never
        // the first again; never the third.
        if i < switch {
            assert_eq!(der, &first.der, "request {i}");
        }
        if i >= first_new {
            assert_eq!(der, &second.der, "request {i}");
        }
        assert_ne!(der, &third.der, "request {i}");
    }
    assert!(
        seen.len() > broken + 10,
        "too few requests after the broken rotation"
    );
    assert_eq!(reloads("ok").await, 1.0);
    assert_eq!(
        reloads("error").await,
        1.0,
        "a broken pair is not retried unchanged"
    );
    assert_eq!(expiry().await, second.not_after as f64);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_closed_and_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("stall");
    let leaf = ca.leaf(9, 2031);
    let secret = SecretDir::new(dir.path(), &leaf.chain_pem, &leaf.key_pem);
    let mut c = tls_config(&dir.path().join("spool"), "tls_stall", &secret);
    c.http.tls.handshake_timeout = Duration::from_millis(300);
    c.http.max_connections = 1;
    let app = TestApp::start(c).await;
    let client = client_config(&[ca.pem()]);

    // Connects and says nothing: it holds the only slot until the handshake timeout.
    let mut idle = tokio::net::TcpStream::connect(app.http).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused =
        common::tls::post(app.http, &client, "/webhooks/sessionboard", "msg_s0", "{}").await;
    assert!(refused.is_err(), "{refused:?}");
    // The server closes the idle connection after the timeout.
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut idle, &mut buf),
    )
    .await
    .expect("closed by the handshake timeout");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // The 300 ms handshake timeout, with room for a busy machine.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    // The slot is free again (the server drops the socket just before the slot, so allow it a
    // moment).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = common::tls::post(
            app.http,
            &client,
            "/webhooks/sessionboard",
            "msg_s1",
            &body("session.updated", "s1", 1),
        )
        .await;
        match r {
            Ok((status, _)) => {
                assert_eq!(status, 200);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "slot not freed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = http_client();
    assert_eq!(
        metric(
            &metrics,
            app.admin,
            "hookbridge_http_connection_errors_total",
            "kind=\"tls_handshake_timeout\""
        )
        .await,
        1.0
    );
    app.stop().await;
}

#[test]
fn startup_names_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("startup");
    let (a, b) = (ca.leaf(1, 2031), ca.leaf(2, 2031));
    let run = |cert: &Path, key: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_hookbridge"))
            .env_clear()
            .env("HOOKBRIDGE_SPOOL__DIR", dir.path().join("spool"))
            .env("HOOKBRIDGE_HTTP__LISTEN", "127.0.0.1:0")
            .env("HOOKBRIDGE_ADMIN__LISTEN", "127.0.0.1:0")
            .env("HOOKBRIDGE_HTTP__TLS__CERT_FILE", cert)
            .env("HOOKBRIDGE_HTTP__TLS__KEY_FILE", key)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let err = run(&cert, &key);
    assert!(
        err.contains("http.tls.cert_file") && err.contains(&cert.display().to_string()),
        "{err}"
    );
    std::fs::write(&cert, &a.chain_pem).unwrap();
    std::fs::write(&key, &b.key_pem).unwrap();
    let err = run(&cert, &key);
    assert!(
        err.contains("http.tls.key_file") && err.contains("does not match"),
        "{err}"
    );
    std::fs::write(&cert, "").unwrap();
    let err = run(&cert, &key);
    assert!(
        err.contains("http.tls.cert_file") && err.contains("no PEM certificate"),
        "{err}"
    );
}
