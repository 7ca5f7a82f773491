//! The binary's command line: `check-config` validates and redacts; bad configuration is a clear
//! startup error that names the key; `probe` asks a running bridge whether it is ready or alive.

mod common;

use std::process::Command;

fn hookbridge() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hookbridge"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

#[test]
fn check_config_prints_effective_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hb.toml");
    std::fs::write(
        &file,
        "[auth]\nheader_name = \"x-hookbridge-token\"\nheader_values = [\"very-secret-token-1\"]\n[http]\nlisten = \"0.0.0.0:8080\"\nallow_plaintext = true\n",
    )
    .unwrap();
    let out = hookbridge()
        .args(["check-config", "--config"])
        .arg(&file)
        .env("HOOKBRIDGE_SINK__NATS__STREAM", "FROMENV")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("<redacted>"));
    assert!(!stdout.contains("very-secret-token-1"));
    assert!(stdout.contains("stream = \"FROMENV\""));
    assert!(stdout.contains("listen = \"0.0.0.0:8080\""));
    assert!(stdout.contains("cloudevents = \"off\""));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("with CloudEvents off"),
        "check-config reports the CloudEvents mode"
    );
}

#[test]
fn check_config_reports_the_cloudevents_mode() {
    let out = hookbridge()
        .arg("check-config")
        .env("HOOKBRIDGE_SINK__KIND", "kafka")
        .env("HOOKBRIDGE_SINK__CLOUDEVENTS", "structured")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("publishing to Kafka with CloudEvents structured"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("cloudevents = \"structured\""));
}

#[test]
fn unknown_keys_and_bad_values_are_named() {
    let out = hookbridge()
        .arg("check-config")
        .env("HOOKBRIDGE_SPOOL__MAX_BYTEZ", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_bytez"), "{err}");

    let out = hookbridge()
        .arg("check-config")
        .env("HOOKBRIDGE_HTTP__LISTEN", "0.0.0.0:8080")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.listen") && err.contains("allow_unauthenticated"),
        "{err}"
    );

    // With authentication settled, a public listener still needs TLS or the explicit opt-out.
    let out = hookbridge()
        .arg("check-config")
        .env("HOOKBRIDGE_HTTP__LISTEN", "0.0.0.0:8080")
        .env("HOOKBRIDGE_AUTH__ALLOW_UNAUTHENTICATED", "true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.listen")
            && err.contains("http.tls.cert_file")
            && err.contains("http.allow_plaintext = true"),
        "{err}"
    );

    let out = hookbridge()
        .args(["check-config", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn run_refuses_an_unusable_spool_dir_naming_it() {
    // `run` with an unusable spool directory fails fast with a message naming it.
    let dir = tempfile::tempdir().unwrap();
    let file_not_dir = dir.path().join("plainfile");
    std::fs::write(&file_not_dir, "x").unwrap();
    let out = hookbridge()
        .env("HOOKBRIDGE_SPOOL__DIR", &file_not_dir)
        .env("HOOKBRIDGE_HTTP__LISTEN", "127.0.0.1:0")
        .env("HOOKBRIDGE_ADMIN__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plainfile"), "{err}");
}

/// A spool another process holds (a running bridge has `LOCK` flock'd): a second `run` on it
/// fails at once and says the spool is locked, instead of sharing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_a_spool_that_another_process_holds_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = common::unique("lock");
    let env = common::bridge_env(dir.path(), &prefix, &prefix.to_uppercase());
    // Serving means recovery ran, and recovery takes the lock first.
    let mut holder = common::BridgeProcess::spawn(&env).await;
    let mut second = hookbridge();
    second.envs(env.iter().map(|(k, v)| (k, v)));
    let mut child = second
        .env("HOOKBRIDGE_HTTP__LISTEN", "127.0.0.1:0")
        .env("HOOKBRIDGE_ADMIN__LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("a second bridge on a held spool still runs after 20 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "a second bridge on a held spool: {err}"
    );
    assert!(err.contains("locked"), "{err}");
    assert_eq!(
        holder.child.try_wait().unwrap(),
        None,
        "the holder keeps running"
    );
}

/// `deploy/hookbridge.toml` listens publicly, so as shipped it refuses to start until a real
/// signing secret is in place (issue 30); with one it is valid, and the secret is not printed.
#[test]
fn the_shipped_example_config_needs_a_real_secret_and_hookbridge_config_env_names_the_file() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/hookbridge.toml");
    let out = hookbridge()
        .arg("check-config")
        .env("HOOKBRIDGE_CONFIG", example)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the example started without a secret"
    );
    assert!(err.contains("auth.secret_files"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("signing-secrets");
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    std::fs::write(&secrets, format!("{secret}\n")).unwrap();
    let out = hookbridge()
        .arg("check-config")
        .env("HOOKBRIDGE_CONFIG", example)
        // As the systemd unit does with its credential.
        .env(
            "HOOKBRIDGE_AUTH__SECRET_FILES",
            format!("[{}]", secrets.display()),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&secrets.display().to_string()), "{stdout}");
    assert!(!stdout.contains(secret));
}

/// `hookbridge probe` against a bridge running in this process: 0 and one line on stdout when the
/// admin listener answers 200, 1 and one line on stderr when nothing listens. The admin listener
/// is bound to 0.0.0.0, as in the container image, so the probe has to reach it over loopback.
#[tokio::test(flavor = "multi_thread")]
async fn probe_asks_the_running_bridge_and_fails_on_a_closed_port() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path(), "probe");
    config.admin.listen = "0.0.0.0:0".parse().unwrap();
    // Nothing is published; core NATS leaves no stream behind on the shared server.
    config.sink.nats.mode = hookbridge::config::NatsMode::Core;
    let app = common::TestApp::start(config).await;
    let admin_listen = format!("0.0.0.0:{}", app.admin.port());

    for (check, path) in [("ready", "/readyz"), ("live", "/livez")] {
        let listen = admin_listen.clone();
        let out = tokio::task::spawn_blocking(move || {
            hookbridge()
                .args(["probe", check, "--timeout", "5s"])
                .env("HOOKBRIDGE_ADMIN__LISTEN", listen)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{check}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        assert!(
            stdout.starts_with(&format!(
                "GET http://127.0.0.1:{}{path}: 200 ",
                app.admin.port()
            )),
            "{stdout}"
        );
    }
    // The same through a config file, the way the image's HEALTHCHECK runs it.
    let file = dir.path().join("hb.toml");
    std::fs::write(&file, format!("[admin]\nlisten = \"{admin_listen}\"\n")).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        hookbridge()
            .args(["probe", "ready", "--config"])
            .arg(&file)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = app.admin.port();
    app.stop().await;

    // Nothing listens there any more.
    let out = hookbridge()
        .args(["probe", "ready", "--timeout", "5s"])
        .env("HOOKBRIDGE_ADMIN__LISTEN", format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "hookbridge probe: GET http://127.0.0.1:{port}/readyz: "
        )),
        "{err}"
    );

    // A configuration that cannot be loaded is unhealthy too, not a crash with another code.
    let out = hookbridge()
        .args(["probe", "live"])
        .env("HOOKBRIDGE_ADMIN__LISTN", "127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// The image's config (deploy/container.toml) listens on 0.0.0.0, so it must not start without
/// authentication, and must with a secret given the way deploy/compose.yaml gives it.
#[test]
fn the_container_config_needs_authentication() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/container.toml");
    let out = hookbridge()
        .arg("check-config")
        .env("HOOKBRIDGE_CONFIG", config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.listen") && err.contains("allow_unauthenticated"),
        "{err}"
    );

    let secret = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/demo-signing-secret");
    let out = hookbridge()
        .arg("check-config")
        .env("HOOKBRIDGE_CONFIG", config)
        .env("HOOKBRIDGE_AUTH__SECRET_FILES", format!("[\"{secret}\"]"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("listen = \"0.0.0.0:9090\""), "{stdout}");
    assert!(
        stdout.contains("dir = \"/var/lib/hookbridge/spool\""),
        "{stdout}"
    );
}

#[test]
fn check_config_prints_the_memory_estimate_and_enforces_a_limit() {
    // The defaults fit a 256 MiB pod (203 MiB), not a 192 MiB one.
    let out = hookbridge()
        .args(["check-config", "--memory-limit", "256Mi"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("memory estimate"), "{err}");
    let out = hookbridge()
        .args(["check-config", "--memory-limit", "192Mi"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("forwarder window (forward.max_in_flight_bytes)"),
        "{err}"
    );
    assert!(err.contains("exceeds --memory-limit (192.0 MiB)"), "{err}");
    // A configuration sized for it passes, and stdout is still the effective TOML alone.
    let sized = |limit: &str| {
        hookbridge()
            .args(["check-config", "--memory-limit", limit])
            .env("HOOKBRIDGE_FORWARD__MAX_IN_FLIGHT", "64")
            .env("HOOKBRIDGE_HTTP__MAX_BUFFERED_BYTES", "33554432")
            .output()
            .unwrap()
    };
    let out = sized("256Mi");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("max_buffered_bytes = 33554432"), "{stdout}");
    assert!(!stdout.contains("memory estimate"), "{stdout}");
    assert!(!sized("128Mi").status.success());
    // A limit that is not a byte count is a usage error.
    let out = sized("256MB");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown suffix"));
}
