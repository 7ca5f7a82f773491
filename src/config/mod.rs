//! Configuration: built-in defaults → TOML file (`--config`) → environment (`HOOKBRIDGE_…`, `__`
//! for nesting), merged by figment, then [`Config::validate`] checks the values. Unknown keys and
//! bad values are errors that name the key.
//!
//! This module holds plain data and knows nothing of what is built from it: the router, the
//! access gate and the TLS certificate are built by `routing`, `ingress::auth` and `tls` from a
//! validated `Config` (gathered in `app::Settings`), with errors that name the key the same way.
//! One file per section; each section validates its own values, and the rules that span
//! sections live here.
//!
//! The key names here are the public contract documented in the README; rename nothing without a
//! deprecation.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

// The sections holding secrets print redacted, so a `{:?}` in a log line cannot leak them.
macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let json = serde_json::to_string(&self.redacted()).map_err(|_| std::fmt::Error)?;
                write!(f, "{} {json}", stringify!($t))
            }
        }
    )*};
}

mod auth;
mod forward;
mod http;
mod log;
mod memory;
mod routing;
mod sink;
mod spool;

pub use self::routing::RoutingConfig;
pub use auth::AuthConfig;
pub use forward::ForwardConfig;
pub use http::{AdminConfig, HttpConfig, TlsConfig};
pub use log::{LogConfig, LogFormat, ShutdownConfig};
pub use memory::{cgroup_memory_limit, parse_bytes, MemoryEstimate};
pub use sink::{
    CloudEventsMode, Compression, KafkaConfig, NatsConfig, NatsMode, SinkConfig, SinkKind,
    KAFKA_RESERVED_OPTIONS, ORG_ID_PLACEHOLDER,
};
pub use spool::SpoolSection;

/// What the environment prefix is; `HOOKBRIDGE_HTTP__LISTEN` sets `http.listen`.
pub const ENV_PREFIX: &str = "HOOKBRIDGE_";

const REDACTED: &str = "<redacted>";

/// Largest `http.max_body_bytes` accepted: 64 MiB. `app` checks at compile time that a body this
/// large, with its record overhead, still fits the spool format's `MAX_RECORD_BYTES`.
pub const MAX_BODY_BYTES: u32 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read or parsed, a key is unknown, or a value has the wrong type.
    /// figment's message names the key and where the value came from.
    #[error(transparent)]
    Load(#[from] Box<figment::Error>),
    /// A value parsed but makes no sense (names the key).
    #[error("invalid `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// An [`Error::Invalid`] for `key`; the modules that build things from the configuration use it
/// too, so that every configuration error names its key the same way.
pub fn invalid(key: &'static str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The raw configuration as written by the operator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[http]`: the webhook listener (and `[http.tls]`). Default: each key's own.
    pub http: HttpConfig,
    /// `[admin]`: metrics and health. Default: each key's own.
    pub admin: AdminConfig,
    /// `[auth]`: who may deliver, replay protection. Default: each key's own (no checks).
    pub auth: AuthConfig,
    /// `[spool]`: the write-ahead log. Default: each key's own.
    pub spool: SpoolSection,
    /// `[routing]`: action → subject / topic. Default: each key's own.
    pub routing: RoutingConfig,
    /// `[forward]`: publishing and retries. Default: each key's own.
    pub forward: ForwardConfig,
    /// `[sink]`: the broker. Default: each key's own (NATS JetStream on loopback).
    pub sink: SinkConfig,
    /// `[log]`. Default: each key's own.
    pub log: LogConfig,
    /// `[shutdown]`. Default: each key's own.
    pub shutdown: ShutdownConfig,
}

/// The figment that [`Config::load`] extracts from; exposed so tests can add providers.
pub fn figment(file: Option<&Path>) -> Figment {
    let mut f = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        // `Toml::file` silently yields nothing for a missing file; an operator who names a file
        // means it, so that is checked in `load`.
        f = f.merge(Toml::file_exact(path));
    }
    f.merge(config_env())
}

/// The environment provider: only `HOOKBRIDGE_<SECTION>__<KEY>` variables are configuration.
///
/// Every key lives in a section, so a real override always has a `__`. Other `HOOKBRIDGE_*`
/// variables are someone else's: `HOOKBRIDGE_CONFIG` names the file (read by the CLI), and
/// Kubernetes gives every pod service-link variables for each Service in its namespace — a
/// Service named `hookbridge` yields `HOOKBRIDGE_PORT=tcp://…`, `HOOKBRIDGE_SERVICE_HOST`,
/// `HOOKBRIDGE_PORT_8080_TCP_ADDR` and more. Taking those as keys made the bridge refuse to start
/// on Kubernetes. A mistyped key inside a section (`HOOKBRIDGE_HTTP__LISTN`) is still an error; a
/// variable with a single `_` where `__` was meant is ignored like any other foreign variable.
fn config_env() -> Env {
    Env::prefixed(ENV_PREFIX)
        .filter(|key| is_config_key(key.as_str()))
        .split("__")
}

/// `key` is a variable name without [`ENV_PREFIX`]: `HTTP__LISTEN` is a key, `PORT`,
/// `SERVICE_HOST` and `CONFIG` are not.
fn is_config_key(key: &str) -> bool {
    key.contains("__")
}

impl Config {
    pub fn load(file: Option<&Path>) -> Result<Config, Error> {
        if let Some(path) = file {
            if !path.exists() {
                return Err(invalid(
                    "--config",
                    format!("file {} does not exist", path.display()),
                ));
            }
        }
        figment(file)
            .extract()
            .map_err(|e| Error::Load(Box::new(e)))
    }

    /// Checks every value, each section on its own and then the rules that span sections.
    /// Reads no file and builds nothing: what is built from the configuration (the router, the
    /// gate, the TLS certificate) is built by the module that owns it, from a configuration that
    /// passed this (see `app::Settings::new`).
    pub fn validate(&self) -> Result<(), Error> {
        self.http.validate()?;
        self.admin.validate()?;
        self.auth.validate()?;
        self.spool.validate()?;
        self.forward.validate()?;
        self.sink.validate()?;
        self.log.validate()?;
        self.shutdown.validate()?;
        if (self.spool.max_bytes as u128) < 4 * self.http.max_body_bytes as u128 {
            return Err(invalid(
                "spool.max_bytes",
                "must hold at least four maximum-size bodies (http.max_body_bytes)",
            ));
        }
        if !self.auth.is_configured()
            && !self.auth.allow_unauthenticated
            && !self.http.listen.ip().is_loopback()
        {
            return Err(invalid(
                "http.listen",
                format!(
                    "{} is not a loopback address and no authentication is configured; set auth.secrets, or auth.header_name/auth.header_values, or auth.allow_unauthenticated = true",
                    self.http.listen
                ),
            ));
        }
        // After the authentication rule, so a bare public listener hears about that first.
        self.http.validate_plaintext()
    }

    /// The effective configuration as TOML, secrets replaced by `<redacted>`.
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        c.auth = c.auth.redacted();
        c.sink.nats = c.sink.nats.redacted();
        c.sink.kafka = c.sink.kafka.redacted();
        toml::to_string_pretty(&c).expect("config serializes to TOML")
    }
}

#[cfg(test)]
// figment's `Jail` closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
pub(crate) mod tests {
    use super::*;
    use figment::Jail;
    use std::time::Duration;

    pub(crate) fn load_str(toml: &str) -> Result<Config, Error> {
        let c: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(toml))
            .extract()
            .map_err(|e| Error::Load(Box::new(e)))?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_validate() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
        assert!(!c.auth.is_configured());
        assert_eq!(c.spool.min_free_bytes, 256 << 20);
        assert_eq!(c.spool.retain_confirmed, Duration::from_secs(300));
    }

    #[test]
    fn small_segments_cap_preallocation_instead_of_refusing_it() {
        let c = load_str(
            "[http]\nmax_body_bytes = 16384\n[spool]\nsegment_bytes = 65536\nmax_bytes = 262144\n",
        )
        .unwrap();
        assert_eq!(
            c.spool.preallocate_bytes,
            1 << 20,
            "the default, capped by the writer"
        );
        let c = load_str("[spool]\npreallocate_bytes = 0\n").unwrap();
        assert_eq!(c.spool.preallocate_bytes, 0);
    }

    #[test]
    fn retain_confirmed_is_a_duration_with_a_bound() {
        let c = load_str("[spool]\nretain_confirmed = \"0s\"\n").unwrap();
        assert!(c.spool.retain_confirmed.is_zero());
        let c = load_str("[spool]\nretain_confirmed = \"10m\"\n").unwrap();
        assert_eq!(c.spool.retain_confirmed, Duration::from_secs(600));
        let err = load_str("[spool]\nretain_confirmed = \"8days\"\n").unwrap_err();
        assert!(err.to_string().contains("spool.retain_confirmed"), "{err}");
    }

    #[test]
    fn min_free_bytes_zero_disables_and_megabytes_pass() {
        for ok in ["0", "1048576", "268435456"] {
            let c = load_str(&format!("[spool]\nmin_free_bytes = {ok}\n")).unwrap();
            assert_eq!(c.spool.min_free_bytes.to_string(), ok);
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load_str("[http]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        let err = load_str("[spool]\ndirr = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("dirr"), "{err}");
    }

    #[test]
    fn wrong_type_names_key() {
        let err = load_str("[spool]\nmax_bytes = \"lots\"\n").unwrap_err();
        assert!(err.to_string().contains("max_bytes"), "{err}");
    }

    #[test]
    fn invalid_values_name_key() {
        for (toml, key) in [
            ("[http]\npath = \"no-slash\"\n", "http.path"),
            ("[spool]\nsegment_bytes = 10\n", "spool.segment_bytes"),
            ("[http]\nwrite_timeout = \"0s\"\n", "http.write_timeout"),
            ("[admin]\nmax_connections = 0\n", "admin.max_connections"),
            (
                "[admin]\nprobe_connections = 0\n",
                "admin.probe_connections",
            ),
            ("[admin]\nprobe_timeout = \"0s\"\n", "admin.probe_timeout"),
            ("[admin]\nidle_timeout = \"1h\"\n", "admin.idle_timeout"),
            ("[admin]\nwrite_timeout = \"0s\"\n", "admin.write_timeout"),
            ("[spool]\nmax_bytes = 1000000\n", "spool.max_bytes"),
            ("[spool]\nmin_free_bytes = 256\n", "spool.min_free_bytes"),
            (
                "[auth]\nheader_values = [\"0123456789abcdef\"]\n",
                "auth.header_name",
            ),
            (
                "[auth]\nheader_name = \"x-token\"\nheader_values = [\"short\"]\n",
                "auth.header_values",
            ),
            ("[http]\nlisten = \"0.0.0.0:8080\"\n", "http.listen"),
            ("[sink.nats]\nstream = \"a.b\"\n", "sink.nats.stream"),
            ("[sink.nats]\nreplicas = 0\n", "sink.nats.replicas"),
            ("[sink.nats]\nreplicas = 6\n", "sink.nats.replicas"),
            (
                "[sink.nats]\nurl = \"nats://a:4222,,nats://b:4222\"\n",
                "sink.nats.url",
            ),
            ("[log]\nlevel = \"[[[\"\n", "log.level"),
            (
                "[sink.kafka.options]\n\"acks\" = \"1\"\n",
                "sink.kafka.options",
            ),
            ("[sink.kafka]\npartitions = 0\n", "sink.kafka.partitions"),
            ("[sink]\ncloudevents = \"json\"\n", "cloudevents"),
            (
                "[sink]\ncloudevents_source = \"/a b\"\n",
                "sink.cloudevents_source",
            ),
            (
                "[sink]\ncloudevents_source_fallback = \"\"\n",
                "sink.cloudevents_source_fallback",
            ),
            (
                "[sink]\ncloudevents_type_prefix = \"a b\"\n",
                "sink.cloudevents_type_prefix",
            ),
            ("[sink.kafka]\ncompression = \"brotli\"\n", "compression"),
            (
                "[auth]\ndedup_max_entries = 100000001\n",
                "auth.dedup_max_entries",
            ),
            ("[auth]\ndedup_wait = \"0s\"\n", "auth.dedup_wait"),
            ("[auth]\ndedup_wait = \"2m\"\n", "auth.dedup_wait"),
        ] {
            let err = load_str(toml).unwrap_err();
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn nats_url_is_a_seed_list() {
        let c = load_str(
            "[sink.nats]\nurl = \"nats://a:4222, nats://b:4223 ,nats://c:4224\"\nreplicas = 3\n",
        )
        .unwrap();
        assert_eq!(
            c.sink.nats.servers(),
            ["nats://a:4222", "nats://b:4223", "nats://c:4224"]
        );
        assert_eq!(c.sink.nats.replicas, 3);
    }

    #[test]
    fn non_loopback_allowed_with_auth_or_explicit_opt_out() {
        for auth in [
            "[auth]\nallow_unauthenticated = true\n",
            "[auth]\nheader_name = \"X-Token\"\nheader_values = [\"0123456789abcdef\", \"fedcba9876543210\"]\n",
            "[auth]\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n",
        ] {
            load_str(&format!(
                "[http]\nlisten = \"0.0.0.0:8080\"\nallow_plaintext = true\n{auth}"
            ))
            .unwrap();
        }
    }

    #[test]
    fn plain_http_only_on_loopback_unless_tls_or_opted_out() {
        let auth = "[auth]\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n";
        // Loopback (v4 and v6): plain HTTP is fine.
        for listen in ["127.0.0.1:8080", "[::1]:8080"] {
            load_str(&format!("[http]\nlisten = \"{listen}\"\n{auth}")).unwrap();
        }
        // Anywhere else: refused, and the message names both ways out.
        for listen in ["0.0.0.0:8080", "[::]:8080", "10.1.2.3:8080"] {
            let err = load_str(&format!("[http]\nlisten = \"{listen}\"\n{auth}"))
                .unwrap_err()
                .to_string();
            for want in [
                "http.listen",
                "plain HTTP",
                "http.tls.cert_file",
                "http.allow_plaintext = true",
            ] {
                assert!(err.contains(want), "{listen}: {want} not in {err}");
            }
        }
        // TLS configured (the files are read later, by `tls`), or the explicit opt-out.
        load_str(&format!(
            "[http]\nlisten = \"0.0.0.0:8080\"\n[http.tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n{auth}"
        ))
        .unwrap();
        load_str(&format!(
            "[http]\nlisten = \"0.0.0.0:8080\"\nallow_plaintext = true\n{auth}"
        ))
        .unwrap();
        // Without authentication the older rule speaks first (it names allow_unauthenticated).
        let err = load_str("[http]\nlisten = \"0.0.0.0:8080\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("allow_unauthenticated"), "{err}");
    }

    #[test]
    fn tls_keys_are_checked() {
        for (toml, key) in [
            ("[http.tls]\ncert_file = \"/c.pem\"\n", "http.tls.key_file"),
            ("[http.tls]\nkey_file = \"/k.pem\"\n", "http.tls.cert_file"),
            (
                "[http.tls]\nhandshake_timeout = \"0s\"\n",
                "http.tls.handshake_timeout",
            ),
            (
                "[http.tls]\nreload_interval = \"1ms\"\n",
                "http.tls.reload_interval",
            ),
            ("[http.tls]\ncertfile = \"/c.pem\"\n", "certfile"),
        ] {
            let err = load_str(toml).unwrap_err();
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
        let c = load_str("[http.tls]\nreload_interval = \"0s\"\n").unwrap();
        assert!(!c.http.tls.enabled());
        assert_eq!(
            c.http.tls.handshake_timeout,
            std::time::Duration::from_secs(10)
        );
    }

    #[test]
    fn environment_overrides_file_with_double_underscore_nesting() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "hb.toml",
                "[http]\nlisten = \"127.0.0.1:1000\"\n[sink.nats]\nstream = \"FROMFILE\"\n",
            )?;
            jail.set_env("HOOKBRIDGE_SINK__NATS__STREAM", "FROMENV");
            jail.set_env("HOOKBRIDGE_SPOOL__MAX_BYTES", "2147483648");
            let c = Config::load(Some(Path::new("hb.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.http.listen.port(), 1000);
            assert_eq!(c.sink.nats.stream, "FROMENV");
            assert_eq!(c.spool.max_bytes, 2 << 30);
            Ok(())
        });
    }

    #[test]
    fn unknown_environment_key_is_an_error() {
        Jail::expect_with(|jail| {
            jail.set_env("HOOKBRIDGE_HTTP__LISTN", "127.0.0.1:1");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("listn"), "{err}");
            Ok(())
        });
    }

    /// The variables a pod gets from Services named `hookbridge` and `hookbridge-headless`
    /// (ports 8080 `http` and 9090 `admin`), as the kubelet writes them; `tests/service_links.rs`
    /// starts the real binary with the same set.
    pub(crate) const SERVICE_LINKS: &[(&str, &str)] = &[
        ("HOOKBRIDGE_PORT", "tcp://10.96.0.12:8080"),
        ("HOOKBRIDGE_SERVICE_HOST", "10.96.0.12"),
        ("HOOKBRIDGE_SERVICE_PORT", "8080"),
        ("HOOKBRIDGE_SERVICE_PORT_HTTP", "8080"),
        ("HOOKBRIDGE_SERVICE_PORT_ADMIN", "9090"),
        ("HOOKBRIDGE_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
        ("HOOKBRIDGE_PORT_8080_TCP_PROTO", "tcp"),
        ("HOOKBRIDGE_PORT_8080_TCP_PORT", "8080"),
        ("HOOKBRIDGE_PORT_8080_TCP_ADDR", "10.96.0.12"),
        ("HOOKBRIDGE_PORT_9090_TCP", "tcp://10.96.0.12:9090"),
        ("HOOKBRIDGE_PORT_9090_TCP_PROTO", "tcp"),
        ("HOOKBRIDGE_PORT_9090_TCP_PORT", "9090"),
        ("HOOKBRIDGE_PORT_9090_TCP_ADDR", "10.96.0.12"),
        ("HOOKBRIDGE_HEADLESS_PORT", "tcp://10.96.0.13:8080"),
        ("HOOKBRIDGE_HEADLESS_SERVICE_HOST", "10.96.0.13"),
        ("HOOKBRIDGE_HEADLESS_SERVICE_PORT", "8080"),
        ("HOOKBRIDGE_HEADLESS_SERVICE_PORT_HTTP", "8080"),
        ("HOOKBRIDGE_HEADLESS_PORT_8080_TCP", "tcp://10.96.0.13:8080"),
        ("HOOKBRIDGE_HEADLESS_PORT_8080_TCP_PROTO", "tcp"),
        ("HOOKBRIDGE_HEADLESS_PORT_8080_TCP_PORT", "8080"),
        ("HOOKBRIDGE_HEADLESS_PORT_8080_TCP_ADDR", "10.96.0.13"),
    ];

    #[test]
    fn kubernetes_service_links_are_not_keys() {
        Jail::expect_with(|jail| {
            for (name, value) in SERVICE_LINKS {
                jail.set_env(name, value);
            }
            jail.set_env("HOOKBRIDGE_CONFIG", "/nonexistent/ignored-here.toml");
            jail.set_env("HOOKBRIDGE_SINK__NATS__STREAM", "FROMENV");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.sink.nats.stream, "FROMENV");
            assert_eq!(c.http.listen, Config::default().http.listen);
            // A mistyped key inside a section is still refused next to them.
            jail.set_env("HOOKBRIDGE_HTTP__LISTENN", "127.0.0.1:1");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("listenn"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn config_keys_are_the_variables_with_a_section_separator() {
        for (key, is) in [
            ("HTTP__LISTEN", true),
            ("SINK__NATS__PASSWORD", true),
            ("HTTP__LISTENN", true),
            ("CONFIG", false),
            ("PORT", false),
            ("SERVICE_HOST", false),
            ("PORT_8080_TCP_ADDR", false),
            ("HEADLESS_SERVICE_PORT_HTTP", false),
            ("HTTP_LISTEN", false),
        ] {
            assert_eq!(is_config_key(key), is, "{key}");
        }
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/hb.toml"))).unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }

    #[test]
    fn redaction_hides_secrets() {
        let mut c = Config::default();
        c.auth.header_name = Some("x-token".into());
        c.auth.header_values = vec!["supersecretvalue1".into()];
        c.auth.secrets = vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()];
        c.sink.nats.password = Some("hunter2hunter2".into());
        c.sink
            .kafka
            .options
            .insert("sasl.password".into(), "kafkasecret99".into());
        let out = c.redacted_toml();
        let debug = format!("{c:?}");
        for secret in ["supersecretvalue1", "MfKQ9r8", "hunter2", "kafkasecret99"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(!out.contains("supersecretvalue1"));
        assert!(!out.contains("MfKQ9r8"));
        assert!(!out.contains("hunter2"));
        assert!(!out.contains("kafkasecret99"));
        assert!(out.contains(REDACTED));
    }
}
