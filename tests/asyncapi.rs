//! `hookbridge asyncapi`: the printed document passes the official AsyncAPI parser
//! (`@asyncapi/parser`, `tests/asyncapi/validate.mjs`, no warnings allowed) for several
//! configurations; every fixture validates against its channel's message schema (jsonschema,
//! `tests/asyncapi/validate_fixtures.py`); the "Consume" tables in docs/messages.md are the
//! generator's output. Each validator is also shown a document or body it must reject.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{require, stdout_of, Tier};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `hookbridge asyncapi --format <format>` with `toml` as the configuration (none: defaults).
fn generate(toml: Option<&str>, format: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookbridge"));
    cmd.env_remove("HOOKBRIDGE_CONFIG")
        .args(["asyncapi", "--format", format]);
    if let Some(toml) = toml {
        let file = dir.path().join("hookbridge.toml");
        std::fs::write(&file, toml).unwrap();
        cmd.arg("--config").arg(file);
    }
    stdout_of(&mut cmd)
}

/// Runs `program args` with `stdin`; returns (success, stdout, stderr).
fn pipe(program: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program} cannot run ({e}): run scripts/test, which installs it")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The official parser's verdict on `doc`: what it read, or its diagnostics.
fn parse(doc: &str) -> Result<serde_json::Value, String> {
    let parser = root().join("tests/asyncapi/node_modules/@asyncapi/parser");
    assert!(
        parser.is_dir(),
        "@asyncapi/parser is not installed in tests/asyncapi/node_modules: run scripts/test \
         (or `npm ci` in tests/asyncapi)"
    );
    let (ok, stdout, stderr) = pipe("node", &["tests/asyncapi/validate.mjs", "--strict"], doc);
    if ok {
        Ok(serde_json::from_str(stdout.trim()).unwrap())
    } else {
        Err(stderr)
    }
}

const KAFKA_BINARY: &str = r#"
[routing]
prefix = "events."
[routing.routes]
"sponsor.*" = "partners.sponsors"
[sink]
kind = "kafka"
cloudevents = "binary"
[sink.kafka]
brokers = "k1.example:9093,k2.example:9093"
[sink.kafka.options]
"security.protocol" = "SASL_SSL"
"sasl.password" = "hunter2hunter2"
"#;

const NATS_STRUCTURED: &str = r#"
[sink]
cloudevents = "structured"
[sink.nats]
url = "nats://user:hunter2hunter2@nats.example:4222"
mode = "core"
"#;

/// Two senders: the default endpoint on `sessionboard.` and `sandbox` on `sandbox.sessionboard.`.
const TWO_ENDPOINTS: &str = r#"
[auth]
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
[sink]
cloudevents = "binary"
[[endpoints]]
name = "sandbox"
path = "/webhooks/sandbox"
auth.secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
routing.prefix = "sandbox.sessionboard."
"#;

#[test]
fn the_document_passes_the_official_asyncapi_parser() {
    if !require(&[Tier::AsyncApiParser]) {
        return;
    }
    let default = parse(&generate(None, "yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(default["version"], "3.0.0");
    assert_eq!(default["servers"][0], "nats://127.0.0.1:4222");
    assert_eq!(default["channels"].as_object().unwrap().len(), 21);
    assert_eq!(
        default["channels"]["sessionSpeakerAttached"],
        "sessionboard.session.speaker.attached"
    );
    assert_eq!(default["channels"]["unroutable"], "sessionboard.unroutable");
    assert_eq!(default["operations"], 21);
    assert_eq!(
        parse(&generate(None, "json")).unwrap(),
        default,
        "YAML and JSON say the same"
    );

    let kafka_yaml = generate(Some(KAFKA_BINARY), "yaml");
    assert!(!kafka_yaml.contains("hunter2"), "no secret in the document");
    assert!(kafka_yaml.contains("\"ce_type\""));
    let kafka = parse(&kafka_yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        kafka["servers"],
        serde_json::json!([
            "kafka-secure://k1.example:9093",
            "kafka-secure://k2.example:9093"
        ])
    );
    assert_eq!(kafka["channels"]["sponsorCreated"], "partners.sponsors");
    assert_eq!(
        kafka["channels"]["contactCreated"],
        "events.contact.created"
    );
    assert_eq!(kafka["channels"]["unroutable"], "events.unroutable");

    let nats_yaml = generate(Some(NATS_STRUCTURED), "yaml");
    assert!(!nats_yaml.contains("hunter2"), "no secret in the document");
    assert!(nats_yaml.contains("application/cloudevents+json"));
    assert!(
        !nats_yaml.contains("Nats-Msg-Id"),
        "core NATS sets no Nats-Msg-Id"
    );
    let nats = parse(&nats_yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(nats["servers"][0], "nats://nats.example:4222");

    let two_yaml = generate(Some(TWO_ENDPOINTS), "yaml");
    assert!(!two_yaml.contains("whsec_"), "no secret in the document");
    let two = parse(&two_yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(two["channels"].as_object().unwrap().len(), 42);
    assert_eq!(two["operations"], 42);
    assert_eq!(
        two["channels"]["contactCreated"],
        "sessionboard.contact.created"
    );
    assert_eq!(
        two["channels"]["sandbox_contactCreated"],
        "sandbox.sessionboard.contact.created"
    );
    assert_eq!(
        two["channels"]["sandbox_unroutable"],
        "sandbox.sessionboard.unroutable"
    );
}

#[test]
fn the_parser_rejects_a_broken_document() {
    if !require(&[Tier::AsyncApiParser]) {
        return;
    }
    // Negative control: an AsyncAPI 2 operation verb in a 3.0 document.
    let mut doc: serde_json::Value = serde_json::from_str(&generate(None, "json")).unwrap();
    doc["operations"]["publishSessionUpdated"]["action"] = "publish".into();
    let err = parse(&doc.to_string()).expect_err("an invalid document must be rejected");
    assert!(err.contains("action"), "{err}");
}

fn fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("examples/fixtures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    v
}

fn validate_fixtures(doc: &str, files: &[PathBuf]) -> (bool, String) {
    let mut args = vec!["tests/asyncapi/validate_fixtures.py".to_owned()];
    args.extend(files.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = pipe("python3", &args, doc);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "jsonschema is missing: run scripts/test, which installs it\n{stderr}"
    );
    (ok, format!("{stdout}{stderr}"))
}

#[test]
fn every_fixture_matches_its_channel_schema() {
    if !require(&[Tier::Python]) {
        return;
    }
    let files = fixtures();
    assert_eq!(files.len(), 21);
    for toml in [None, Some(KAFKA_BINARY), Some(TWO_ENDPOINTS)] {
        let (ok, out) = validate_fixtures(&generate(toml, "json"), &files);
        assert!(ok, "{out}");
        assert_eq!(
            out.lines().filter(|l| l.starts_with("ok ")).count(),
            21,
            "{out}"
        );
    }
    // Negative control: a contact whose email is a number, and a body on no channel.
    let dir = tempfile::tempdir().unwrap();
    let mut contact: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("examples/fixtures/contact.created.json")).unwrap(),
    )
    .unwrap();
    contact["data"]["email"] = 5.into();
    let bad_email = dir.path().join("bad-email.json");
    std::fs::write(&bad_email, contact.to_string()).unwrap();
    contact["metadata"]["action"] = "contact.merged".into();
    let unknown = dir.path().join("unknown-action.json");
    std::fs::write(&unknown, contact.to_string()).unwrap();
    let (ok, out) = validate_fixtures(&generate(None, "json"), &[bad_email, unknown]);
    assert!(!ok, "{out}");
    assert!(out.contains("data/email"), "{out}");
    assert!(out.contains("no channel for contact.merged"), "{out}");
}

#[test]
fn docs_consume_tables_are_the_generator_output() {
    let page = std::fs::read_to_string(root().join("docs/messages.md")).unwrap();
    let begin = "<!-- generated by `hookbridge asyncapi --format markdown`; tests/asyncapi.rs checks it -->\n";
    let end = "<!-- end of generated tables -->";
    let start = page
        .find(begin)
        .expect("docs/messages.md has the generated block")
        + begin.len();
    let stop = start
        + page[start..]
            .find(end)
            .expect("docs/messages.md block ends");
    assert_eq!(
        &page[start..stop],
        generate(None, "markdown"),
        "docs/messages.md \"Consume\" tables differ from `hookbridge asyncapi --format markdown`; paste its output"
    );
}
