//! The binary's command line: `check-config` validates and redacts; bad configuration is a clear
//! startup error that names the key.

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
fn run_refuses_a_locked_spool_only_after_saying_why() {
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

#[test]
fn the_shipped_example_config_is_valid_and_hookbridge_config_env_names_the_file() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/hookbridge.toml");
    let out = hookbridge()
        .arg("check-config")
        .env("HOOKBRIDGE_CONFIG", example)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("x-hookbridge-token"));
    assert!(!stdout.contains("change-me-to-a-long-random-token"));
}
