//! The configuration reference in `docs/configuration.md`, generated from the code: every key,
//! its type, its default, its environment variable and what it means.
//!
//! Keys, types and defaults come from `Config::default()` serialized to TOML, so they cannot
//! drift from the code; the descriptions are the one hand-written part, in [`DESCRIPTIONS`]. A key
//! the defaults leave out (an `Option` that is `None`) has its type in [`UNSET_KEYS`]. The unit
//! tests below fail when a key has no description or a description names no key;
//! `tests/config_reference.rs` fails when the checked-in page differs from
//! [`reference_markdown`] (run it with `HOOKBRIDGE_BLESS=1` to rewrite the page).

use std::collections::BTreeMap;

use super::{Config, ENV_PREFIX};

/// Keys without a default value (`Option`s that are `None` by default), with their type.
pub const UNSET_KEYS: &[(&str, &str)] = &[
    ("http.tls.cert_file", "path"),
    ("http.tls.key_file", "path"),
    ("auth.header_name", "string"),
    ("admin.token_file", "path"),
    ("sink.nats.credentials_file", "path"),
    ("sink.nats.token", "string"),
    ("sink.nats.user", "string"),
    ("sink.nats.password", "string"),
];

/// Every key and what it means, in the order the reference lists them (grouped by section).
/// Markdown; links are relative to `docs/`.
pub const DESCRIPTIONS: &[(&str, &str)] = &[
    (
        "http.listen",
        r#"webhook listener. A non-loopback address requires `auth.secrets` or a token (or `auth.allow_unauthenticated = true`), and `[http.tls]` or `http.allow_plaintext = true` (see [TLS](security.md#tls))."#,
    ),
    ("http.path", r#"the one path deliveries are accepted on"#),
    ("http.max_body_bytes", r#"larger bodies get 413"#),
    (
        "http.max_buffered_bytes",
        r#"most bytes of request bodies in memory at once, all connections together (bodies being read, and read ones until the spool writer stored them); a body that does not fit gets 503 `buffer_full` + `Retry-After` before more of it is read. At least `http.max_body_bytes`"#,
    ),
    (
        "http.max_bodies_per_client",
        r#"most unfinished bodies one client address may have at once (the peer, or the `X-Forwarded-For` address `http.trusted_proxies` vouch for); more get 429 `too_many_bodies`. `0` turns the cap off"#,
    ),
    (
        "http.request_timeout",
        r#"time to receive the body (408 after)"#,
    ),
    (
        "http.header_timeout",
        r#"time to receive the request head (connection closed after, no response)"#,
    ),
    (
        "http.max_connections",
        r#"concurrent connections; more are closed at once"#,
    ),
    ("http.retry_after", r#"`Retry-After` on 503"#),
    (
        "http.max_headers",
        r#"header fields per request (431 above)"#,
    ),
    (
        "http.max_header_bytes",
        r#"bytes of request line and headers (431 above; at least 8192)"#,
    ),
    (
        "http.linger_timeout",
        r#"longest a closing connection reads and discards what the client still sends, so early answers (413, 401…) reach clients that write the whole body first; `0s` closes at once; at most `60s`"#,
    ),
    (
        "http.linger_bytes",
        r#"most bytes read and discarded by one lingering close"#,
    ),
    (
        "http.write_timeout",
        r#"a connection whose answer makes no progress this long (the client does not read) is closed (`hookbridge_http_connection_errors_total{kind="write_timeout"}`); 1 ms – 300 s"#,
    ),
    (
        "http.trusted_proxies",
        r#"CIDRs of proxies whose `X-Forwarded-For` is believed"#,
    ),
    (
        "http.allow_plaintext",
        r#"serve plain HTTP on a non-loopback `http.listen` (TLS terminated in front: an ingress, a load balancer, a sidecar)"#,
    ),
    (
        "http.tls.cert_file",
        r#"PEM certificate chain, leaf first; with `key_file` the listener serves HTTPS"#,
    ),
    (
        "http.tls.key_file",
        r#"PEM private key of the leaf (PKCS#8, RSA or SEC1, unencrypted)"#,
    ),
    (
        "http.tls.reload_interval",
        r#"how often both files are checked; a changed pair is loaded for new connections (`0s` disables; at least `100ms`)"#,
    ),
    (
        "http.tls.handshake_timeout",
        r#"time a client has to complete the TLS handshake before the connection is closed"#,
    ),
    (
        "admin.listen",
        r#"`/metrics`, `/livez`, `/readyz`, the admin API `/api/v1/` and the page `/ui` (see [Repairs on a running bridge](operations.md#repairs-on-a-running-bridge))"#,
    ),
    (
        "admin.max_connections",
        r#"concurrent admin connections; more are closed at once, except probes (next row)"#,
    ),
    (
        "admin.probe_connections",
        r#"connections kept for probes once `admin.max_connections` are taken: admitted only if the first request is `GET`/`HEAD` `/livez` or `/readyz`, answered once, then closed; at least 1"#,
    ),
    (
        "admin.probe_timeout",
        r#"longest a connection in the probe reserve lives (request and answer); 1 ms – 300 s"#,
    ),
    (
        "admin.idle_timeout",
        r#"an admin connection without a whole request head this long after it opened or after its last answer is closed; 1 ms – 300 s"#,
    ),
    (
        "admin.write_timeout",
        r#"an admin connection whose answer makes no progress this long is closed; also the longest a `/metrics` request waits for a render (503 `busy` after); 1 ms – 300 s"#,
    ),
    (
        "admin.token_file",
        r#"file with the bearer token of `/api/v1/` and `/ui` (at least 16 characters; whitespace around it ignored); re-read when it changes. Unset: only `GET /api/v1/status` answers, everything else 403 `no_token`"#,
    ),
    (
        "admin.max_page_size",
        r#"most dead letters one `GET /api/v1/dead-letters` page lists (`limit` above it is cut to it); 1 – 100000"#,
    ),
    (
        "admin.max_request_bytes",
        r#"largest admin API request body (413 above); 1 KiB – 16 MiB"#,
    ),
    (
        "admin.max_replay_bytes",
        r#"most bytes of records a live replay holds in memory; a larger plan gets 413 `replay_too_large` (use `hookbridge spool replay` with the bridge stopped). Counted in the memory estimate; at least 1 MiB"#,
    ),
    (
        "auth.secrets",
        r#"signing secrets: `whsec_…` (HMAC, `v1`) or `whpk_…` (Ed25519 public key, `v1a`); any one matching suffices"#,
    ),
    (
        "auth.secret_files",
        r#"files with more secrets, one per line (`#` comments); files that hold no secret at all are an error"#,
    ),
    (
        "auth.tolerance",
        r#"largest distance between the signature timestamp and now, either way"#,
    ),
    (
        "auth.dedup_window",
        r#"how long delivery ids are remembered (`0s` disables de-duplication)"#,
    ),
    (
        "auth.dedup_max_entries",
        r#"most ids remembered; oldest forgotten first. About 21 bytes of memory per id (1,000,000 ≈ 21 MB); at most 100,000,000"#,
    ),
    (
        "auth.dedup_wait",
        r#"how long a repeat waits for an earlier attempt of the same id that is still being stored, before 503 `in_progress` (1 ms – 60 s)"#,
    ),
    (
        "auth.allow_cidrs",
        r#"client networks allowed to deliver; empty allows all"#,
    ),
    (
        "auth.header_name",
        r#"header carrying a shared token (Sessionboard lets you add custom headers)"#,
    ),
    (
        "auth.header_values",
        r#"accepted tokens, ≥ 16 chars each; several at once for rotation; compared in constant time"#,
    ),
    (
        "auth.allow_unauthenticated",
        r#"allow a non-loopback listener without auth"#,
    ),
    (
        "spool.dir",
        r#"spool directory (local disk that honours fsync)"#,
    ),
    (
        "spool.max_bytes",
        r#"quota over all segment files; above it 503"#,
    ),
    (
        "spool.segment_bytes",
        r#"segment file size before rotating"#,
    ),
    (
        "spool.max_batch_bytes",
        r#"most bytes written by one group commit"#,
    ),
    (
        "spool.preallocate_bytes",
        r#"zeros written ahead of the newest segment's last record, so most group commits overwrite existing blocks and their `fdatasync` writes only the data (about half the writer's CPU per commit on ext4: see [BENCHMARKS.md](../BENCHMARKS.md)); taken only from free quota and disk space, counted in `spool.max_bytes`, cut on rotation and on a clean stop; `0` grows the file with each commit; never past `spool.segment_bytes`"#,
    ),
    (
        "spool.confirm_interval",
        r#"how often the confirmed position is persisted while it moves"#,
    ),
    (
        "spool.min_free_bytes",
        r#"503 while the spool's filesystem has less free space than this (sampled about once a second); `0` disables"#,
    ),
    (
        "spool.retain_confirmed",
        r#"keep confirmed records on disk this long after the broker confirmed them, for `hookbridge spool replay` (see [Broker durability](durability.md)); counted in `spool.max_bytes` but evicted first, oldest segment first, when new deliveries need the room, so it never causes a 503; `0s` deletes them at once; at most `7d`"#,
    ),
    (
        "routing.prefix",
        r#"subject/topic prefix (empty, or tokens ending in `.`)"#,
    ),
    ("routing.dead_letter", r#"suffix for unroutable actions"#),
    (
        "routing.routes",
        r#"table of `action` or `resource.*` → fixed subject"#,
    ),
    (
        "forward.max_in_flight",
        r#"records read from the spool and not yet settled (confirmed or dead-lettered); a stuck record holds one slot, not the window"#,
    ),
    (
        "forward.max_in_flight_bytes",
        r#"payload bytes of those records (one record may go over); with `max_in_flight`, what the forwarder holds in memory (`33554432` = 32 MiB)"#,
    ),
    (
        "forward.max_attempts",
        r#"failed attempts *while the broker confirmed other records* after which a record is dead-lettered as `retries_exhausted` (once it is also `max_retry_age` old, or at once when the window is full); failures while nothing confirms (an outage) never count"#,
    ),
    (
        "forward.max_retry_age",
        r#"how long a failing record keeps being retried after its first such failure before `max_attempts` alone can give it up: covers a stream leader election or an operator creating a missing stream"#,
    ),
    (
        "forward.retry_initial",
        r#"first retry delay after a failed publish"#,
    ),
    (
        "forward.retry_max",
        r#"retry delay cap (exponential backoff, equal jitter)"#,
    ),
    ("sink.kind", r#"`nats` or `kafka`"#),
    (
        "sink.cloudevents",
        r#"`off`, `binary` or `structured`: CloudEvents 1.0 on the wire (see [CloudEvents](messages.md#cloudevents))"#,
    ),
    (
        "sink.cloudevents_source",
        r#"CloudEvents `source` (a URI-reference); `{org_id}` is `metadata.org_id`, percent-encoded"#,
    ),
    (
        "sink.cloudevents_source_fallback",
        r#"`source` of a delivery without `metadata.org_id`"#,
    ),
    (
        "sink.cloudevents_type_prefix",
        r#"prepended to `metadata.action` to form the CloudEvents `type`"#,
    ),
    (
        "sink.nats.url",
        r#"server URL(s), comma-separated: a seed list of cluster members; the client connects to one and fails over to the others (see [Scaling out](scaling.md))"#,
    ),
    ("sink.nats.mode", r#"`jetstream` or `core`"#),
    ("sink.nats.stream", r#"JetStream stream"#),
    (
        "sink.nats.create_stream",
        r#"create the stream (subjects `<prefix>>` plus outside routes) when missing"#,
    ),
    (
        "sink.nats.replicas",
        r#"replicas of the stream hookbridge creates (1–5; `3` on a three-server cluster: a PubAck then means two servers stored it); an existing stream keeps its own, with a warning in the log when it differs"#,
    ),
    (
        "sink.nats.request_timeout",
        r#"PubAck / flush wait before an attempt counts as failed"#,
    ),
    (
        "sink.nats.credentials_file",
        r#"NATS credentials file (`.creds`)"#,
    ),
    ("sink.nats.token", r#"NATS token authentication"#),
    (
        "sink.nats.user",
        r#"NATS user/password authentication: the user"#,
    ),
    (
        "sink.nats.password",
        r#"NATS user/password authentication: the password"#,
    ),
    (
        "sink.kafka.brokers",
        r#"bootstrap brokers, comma-separated"#,
    ),
    ("sink.kafka.client_id", r#"Kafka client id"#),
    (
        "sink.kafka.compression",
        r#"`none`, `gzip`, `snappy` or `lz4`"#,
    ),
    (
        "sink.kafka.create_topics",
        r#"create a missing topic (admin API) before its first record"#,
    ),
    (
        "sink.kafka.partitions",
        r#"partitions of topics hookbridge creates"#,
    ),
    (
        "sink.kafka.replication_factor",
        r#"replication factor of topics hookbridge creates (raise it on a real cluster)"#,
    ),
    (
        "sink.kafka.message_timeout",
        r#"librdkafka `message.timeout.ms`: one attempt, librdkafka's retries included, before the forwarder resends"#,
    ),
    (
        "sink.kafka.unknown_topic_attempts",
        r#"with `create_topics = false`, attempts at an unknown topic before its records are dead-lettered"#,
    ),
    (
        "sink.kafka.options",
        r#"extra librdkafka properties (TLS, SASL, tuning); secrets in them are redacted by `check-config`"#,
    ),
    ("log.format", r#"`text` or `json` (to stderr)"#),
    ("log.level", r#"tracing filter; `RUST_LOG` overrides"#),
    (
        "shutdown.grace",
        r#"time for in-flight requests and publishes after SIGTERM/SIGINT"#,
    ),
];

/// The keys of one `[[endpoints]]` entry (`config::EndpointConfig`): type, default, meaning.
/// Environment variables cannot set them; `tests` check the names against the struct.
pub const ENDPOINT_KEYS: &[(&str, &str, &str, &str)] = &[
    (
        "name",
        "string",
        "required",
        "names the endpoint in metrics (`endpoint` label), logs, the spool and the `hookbridge-endpoint` header: 1 to 32 of `[a-z0-9_-]`, not `default` (the top-level keys are the endpoint `default`)",
    ),
    (
        "path",
        "string",
        "required",
        "the path its sender posts to on the webhook listener; unique, and not `http.path`",
    ),
    (
        "auth.secrets",
        "array",
        "`[]`",
        "as `auth.secrets`, for this endpoint only: a delivery signed with another endpoint's secret gets 401",
    ),
    ("auth.secret_files", "array", "`[]`", "as `auth.secret_files`"),
    ("auth.header_name", "string", "none", "as `auth.header_name`"),
    ("auth.header_values", "array", "`[]`", "as `auth.header_values`"),
    ("auth.allow_cidrs", "array", "`[]`", "as `auth.allow_cidrs`"),
    (
        "auth.allow_unauthenticated",
        "boolean",
        "`false`",
        "as `auth.allow_unauthenticated`: without any authentication, an endpoint on a non-loopback listener is refused unless this is set",
    ),
    (
        "routing.prefix",
        "string",
        "`\"sessionboard.\"`",
        "as `routing.prefix`. No two endpoints may be able to publish to the same subject / topic: prefixes where one starts with the other, or a route or dead-letter destination under another endpoint's prefix, are refused",
    ),
    ("routing.dead_letter", "string", "`\"unroutable\"`", "as `routing.dead_letter`"),
    ("routing.routes", "table", "`{}`", "as `routing.routes`"),
    (
        "cloudevents_source",
        "string",
        "`<sink.cloudevents_source_fallback>/<name>/orgs/{org_id}`",
        "the CloudEvents `source` of its messages; one without `metadata.org_id` gets `<sink.cloudevents_source_fallback>/<name>`",
    ),
];

/// A key's type and default as the code has them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyInfo {
    kind: String,
    default: Option<String>,
}

/// Every key of `Config::default()`, by dotted name. A table is a section unless the defaults
/// leave it empty: then it is a key whose value is a table (`routing.routes`, `sink.kafka.options`).
fn default_keys() -> BTreeMap<String, KeyInfo> {
    let root = toml::Value::try_from(Config::default()).expect("the defaults serialize to TOML");
    let mut keys = BTreeMap::new();
    walk("", &root, &mut keys);
    // A list of tables, empty by default: described by [`ENDPOINT_KEYS`] instead.
    keys.remove("endpoints");
    for (key, kind) in UNSET_KEYS {
        keys.insert(
            key.to_string(),
            KeyInfo {
                kind: kind.to_string(),
                default: None,
            },
        );
    }
    keys
}

fn walk(prefix: &str, value: &toml::Value, keys: &mut BTreeMap<String, KeyInfo>) {
    match value {
        toml::Value::Table(table) if !table.is_empty() => {
            for (name, v) in table {
                let key = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                walk(&key, v, keys);
            }
        }
        leaf => {
            keys.insert(prefix.to_string(), describe(leaf));
        }
    }
}

fn describe(value: &toml::Value) -> KeyInfo {
    let (kind, default) = match value {
        // Durations are written as humantime strings (`30s`, `5m`).
        toml::Value::String(s) if humantime::parse_duration(s).is_ok() => ("duration", s.clone()),
        toml::Value::String(s) => ("string", s.clone()),
        toml::Value::Integer(i) => ("integer", i.to_string()),
        toml::Value::Float(f) => ("float", f.to_string()),
        toml::Value::Boolean(b) => ("boolean", b.to_string()),
        toml::Value::Datetime(d) => ("datetime", d.to_string()),
        toml::Value::Array(a) => ("array", toml::Value::Array(a.clone()).to_string()),
        toml::Value::Table(t) => ("table", toml::Value::Table(t.clone()).to_string()),
    };
    KeyInfo {
        kind: kind.to_string(),
        default: Some(default),
    }
}

/// `sink.nats.url` → `HOOKBRIDGE_SINK__NATS__URL`.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase())
}

/// The generated part of `docs/configuration.md`: one table per section.
pub fn reference_markdown() -> String {
    let keys = default_keys();
    let mut out = String::new();
    let mut section = "";
    for (key, meaning) in DESCRIPTIONS {
        let this_section = key.rsplit_once('.').map_or("", |(s, _)| s);
        if this_section != section {
            section = this_section;
            out.push_str(&format!(
                "\n### `[{section}]`\n\n| key | type | default | environment | meaning |\n| --- | --- | --- | --- | --- |\n"
            ));
        }
        let info = keys
            .get(*key)
            .unwrap_or_else(|| panic!("`{key}` is not a key"));
        let default = info
            .default
            .as_deref()
            .map_or_else(|| "none".to_string(), |d| format!("`{d}`"));
        out.push_str(&format!(
            "| `{key}` | {} | {default} | `{}` | {meaning} |\n",
            info.kind,
            env_name(key)
        ));
    }
    out.push_str(
        "\n### `[[endpoints]]`\n\nEach entry adds one endpoint ([several senders](operations.md#several-senders)); the environment cannot set these.\n\n| key | type | default | meaning |\n| --- | --- | --- | --- |\n",
    );
    for (key, kind, default, meaning) in ENDPOINT_KEYS {
        out.push_str(&format!("| `{key}` | {kind} | {default} | {meaning} |\n"));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_a_description() {
        let described: Vec<&str> = DESCRIPTIONS.iter().map(|(k, _)| *k).collect();
        let keys = default_keys();
        let missing: Vec<&String> = keys
            .keys()
            .filter(|k| !described.contains(&k.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "keys without a description: {missing:?}"
        );
    }

    #[test]
    fn endpoint_keys_are_the_entry_keys() {
        let entry = crate::config::EndpointConfig {
            name: "x".into(),
            path: "/x".into(),
            auth: crate::config::Credentials {
                header_name: Some("h".into()),
                ..Default::default()
            },
            routing: Default::default(),
            cloudevents_source: Some("s".into()),
        };
        let mut keys = BTreeMap::new();
        walk("", &toml::Value::try_from(entry).unwrap(), &mut keys);
        let described: Vec<&str> = ENDPOINT_KEYS.iter().map(|(k, ..)| *k).collect();
        assert_eq!(keys.keys().map(String::as_str).collect::<Vec<_>>(), {
            let mut d = described.clone();
            d.sort();
            d
        });
    }

    #[test]
    fn every_description_names_a_key() {
        let keys = default_keys();
        let orphans: Vec<&str> = DESCRIPTIONS
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| !keys.contains_key(*k))
            .collect();
        assert!(orphans.is_empty(), "descriptions of no key: {orphans:?}");
        let mut seen = std::collections::BTreeSet::new();
        for (k, _) in DESCRIPTIONS {
            assert!(seen.insert(*k), "`{k}` is described twice");
        }
    }

    #[test]
    fn unset_keys_are_absent_from_the_defaults() {
        let root = toml::Value::try_from(Config::default()).unwrap();
        let mut keys = BTreeMap::new();
        walk("", &root, &mut keys);
        for (key, _) in UNSET_KEYS {
            assert!(
                !keys.contains_key(*key),
                "`{key}` has a default now: drop it from UNSET_KEYS"
            );
        }
    }

    #[test]
    fn env_names_nest_with_double_underscores() {
        assert_eq!(env_name("sink.nats.url"), "HOOKBRIDGE_SINK__NATS__URL");
        assert_eq!(env_name("http.listen"), "HOOKBRIDGE_HTTP__LISTEN");
    }

    #[test]
    fn defaults_and_types_come_from_the_code() {
        let keys = default_keys();
        let info = |k: &str| keys[k].clone();
        assert_eq!(
            info("http.listen").default.as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(info("http.request_timeout").kind, "duration");
        assert_eq!(info("http.max_body_bytes").kind, "integer");
        assert_eq!(info("routing.routes").kind, "table");
        assert_eq!(info("sink.nats.token").default, None);
    }
}
