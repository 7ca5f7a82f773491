//! `[[endpoints]]`: more webhook senders on the same listener, each with its own path,
//! credentials and destination namespace.
//!
//! The top-level `http.path`, `[auth]` and `[routing]` (and `sink.cloudevents_source`) are the
//! endpoint named `default`, so a configuration written before endpoints existed means what it
//! meant. Every `[[endpoints]]` entry adds one more; [`Config::endpoints`] lists them all, the
//! default first. De-duplication (`auth.dedup_*`) and the signature tolerance (`auth.tolerance`)
//! stay global: one remembered-id set and one clock serve every endpoint.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::sink::is_uri_reference;
use super::{
    invalid, AuthConfig, Config, Error, RoutingConfig, SinkConfig, ORG_ID_PLACEHOLDER, REDACTED,
};

/// The name of the endpoint the top-level keys describe (what a spool record without an
/// endpoint came through).
pub use crate::delivery::DEFAULT_ENDPOINT;

/// Longest endpoint name (it is a metric label and a message header).
pub const MAX_NAME_LEN: usize = 32;

/// One `[[endpoints]]` entry.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Names the endpoint in metrics, logs, the spool and the `hookbridge-endpoint` header:
    /// 1 to 32 of `[a-z0-9_-]`, starting with a letter or digit; not `default`.
    pub name: String,
    /// The path its sender posts to on the webhook listener; unique across endpoints.
    pub path: String,
    /// Its credentials. A secret here opens this endpoint only.
    #[serde(default)]
    pub auth: Credentials,
    /// Its destination namespace: `prefix`, `dead_letter`, `routes` as in `[routing]`. No two
    /// endpoints may be able to publish to the same subject / topic.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// The CloudEvents `source` of its messages (`{org_id}` is replaced). Default
    /// `<sink.cloudevents_source_fallback>/<name>/orgs/{org_id}`; see
    /// [`Endpoint::cloudevents_sources`].
    #[serde(default)]
    pub cloudevents_source: Option<String>,
}

/// Who may deliver to one endpoint: the same keys, with the same meaning, as in `[auth]`.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Credentials {
    pub secrets: Vec<String>,
    pub secret_files: Vec<PathBuf>,
    pub header_name: Option<String>,
    pub header_values: Vec<String>,
    pub allow_cidrs: Vec<ipnet::IpNet>,
    pub allow_unauthenticated: bool,
}

impl Credentials {
    /// The credentials `[auth]` gives the default endpoint.
    pub fn of(auth: &AuthConfig) -> Credentials {
        Credentials {
            secrets: auth.secrets.clone(),
            secret_files: auth.secret_files.clone(),
            header_name: auth.header_name.clone(),
            header_values: auth.header_values.clone(),
            allow_cidrs: auth.allow_cidrs.clone(),
            allow_unauthenticated: auth.allow_unauthenticated,
        }
    }

    /// Some mechanism is configured (signatures or a token).
    pub fn is_configured(&self) -> bool {
        !self.secrets.is_empty() || !self.secret_files.is_empty() || self.header_name.is_some()
    }

    /// A copy with every secret replaced by `<redacted>`.
    pub fn redacted(&self) -> Credentials {
        let mut c = self.clone();
        for v in c.header_values.iter_mut().chain(c.secrets.iter_mut()) {
            *v = REDACTED.into();
        }
        c
    }

    /// The token rules of `[auth]`, with keys under `section` (`auth`, `endpoints[1].auth`).
    pub(super) fn validate(&self, section: &str) -> Result<(), Error> {
        let key = |k: &str| -> Cow<'static, str> { format!("{section}.{k}").into() };
        match (&self.header_name, self.header_values.is_empty()) {
            (None, true) => Ok(()),
            (None, false) => Err(invalid(
                key("header_name"),
                format!("must be set when {section}.header_values is"),
            )),
            (Some(_), true) => Err(invalid(
                key("header_values"),
                format!("must list at least one token when {section}.header_name is set"),
            )),
            (Some(name), false) => {
                if ::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(invalid(key("header_name"), "is not a valid header name"));
                }
                if self.header_values.iter().any(|v| v.len() < 16) {
                    return Err(invalid(
                        key("header_values"),
                        "each token must be at least 16 characters",
                    ));
                }
                Ok(())
            }
        }
    }
}

/// One endpoint as the bridge serves it, whether from the top-level keys (`default`) or from an
/// `[[endpoints]]` entry.
#[derive(Clone)]
pub struct Endpoint<'a> {
    pub name: &'a str,
    pub path: &'a str,
    pub auth: Cow<'a, Credentials>,
    pub routing: &'a RoutingConfig,
    /// Where its keys live: `auth` / `routing` for the default, `endpoints[N]` for the others.
    pub section: Cow<'static, str>,
    cloudevents_source: Option<&'a str>,
}

impl Endpoint<'_> {
    /// The configuration key of `key` in this endpoint's credentials (`auth.secrets`,
    /// `endpoints[0].auth.secrets`).
    pub fn auth_key(&self, key: &str) -> Cow<'static, str> {
        match self.section.as_ref() {
            "" => format!("auth.{key}").into(),
            s => format!("{s}.auth.{key}").into(),
        }
    }

    /// The configuration key of `key` in this endpoint's routing.
    pub fn routing_key(&self, key: &str) -> Cow<'static, str> {
        match self.section.as_ref() {
            "" => format!("routing.{key}").into(),
            s => format!("{s}.routing.{key}").into(),
        }
    }

    /// Its CloudEvents `source` template (`{org_id}` is replaced) and the source of a delivery
    /// without `metadata.org_id`. The default endpoint's are `sink.cloudevents_source` and
    /// `sink.cloudevents_source_fallback`; another endpoint's are its own, or by default
    /// `<fallback>/<name>/orgs/{org_id}` and `<fallback>/<name>` (`/sessionboard/sandbox/…`), so
    /// two endpoints' events never share a source.
    pub fn cloudevents_sources(&self, sink: &SinkConfig) -> (String, String) {
        if self.section.is_empty() {
            return (
                sink.cloudevents_source.clone(),
                sink.cloudevents_source_fallback.clone(),
            );
        }
        let fallback = format!(
            "{}/{}",
            sink.cloudevents_source_fallback.trim_end_matches('/'),
            self.name
        );
        match self.cloudevents_source {
            Some(s) => (s.to_owned(), fallback),
            None => (format!("{fallback}/orgs/{ORG_ID_PLACEHOLDER}"), fallback),
        }
    }
}

impl Config {
    /// Every endpoint: `default` (the top-level keys) first, then `[[endpoints]]` in order.
    pub fn endpoints(&self) -> Vec<Endpoint<'_>> {
        let default = Endpoint {
            name: DEFAULT_ENDPOINT,
            path: &self.http.path,
            auth: Cow::Owned(Credentials::of(&self.auth)),
            routing: &self.routing,
            section: Cow::Borrowed(""),
            cloudevents_source: None,
        };
        std::iter::once(default)
            .chain(self.endpoints.iter().enumerate().map(|(i, e)| Endpoint {
                name: &e.name,
                path: &e.path,
                auth: Cow::Borrowed(&e.auth),
                routing: &e.routing,
                section: format!("endpoints[{i}]").into(),
                cloudevents_source: e.cloudevents_source.as_deref(),
            }))
            .collect()
    }

    /// The rules `[[endpoints]]` adds: names and paths unique and well-formed, each endpoint's
    /// credentials valid and present on a public listener, and no two destination namespaces
    /// overlapping.
    pub(super) fn validate_endpoints(&self) -> Result<(), Error> {
        let all = self.endpoints();
        let mut names = HashSet::new();
        let mut paths = HashSet::new();
        for e in &all {
            if e.section.is_empty() {
                names.insert(e.name);
                paths.insert(e.path);
                continue;
            }
            let key = |k: &str| -> Cow<'static, str> { format!("{}.{k}", e.section).into() };
            if !is_valid_name(e.name) {
                return Err(invalid(
                    key("name"),
                    format!(
                        "{:?} must be 1 to {MAX_NAME_LEN} of [a-z0-9_-], starting with a letter or digit",
                        e.name
                    ),
                ));
            }
            if !names.insert(e.name) {
                return Err(invalid(
                    key("name"),
                    format!(
                        "{:?} is taken (the top-level keys are the endpoint `default`)",
                        e.name
                    ),
                ));
            }
            if !e.path.starts_with('/') {
                return Err(invalid(key("path"), "must start with `/`"));
            }
            if !paths.insert(e.path) {
                return Err(invalid(
                    key("path"),
                    format!("{:?} is already another endpoint's path (http.path is the default endpoint's)", e.path),
                ));
            }
            e.auth.validate(&format!("{}.auth", e.section))?;
            if let Some(source) = e.cloudevents_source {
                if !is_uri_reference(&source.replace(ORG_ID_PLACEHOLDER, "x")) {
                    return Err(invalid(
                        key("cloudevents_source"),
                        "must be a URI-reference (RFC 3986 characters only), optionally with {org_id}",
                    ));
                }
            }
            if !e.auth.is_configured()
                && !e.auth.allow_unauthenticated
                && !self.http.listen.ip().is_loopback()
            {
                return Err(invalid(
                    key("auth"),
                    format!(
                        "{} is not a loopback address and endpoint {:?} has no authentication; set its auth.secrets, or auth.header_name/auth.header_values, or auth.allow_unauthenticated = true",
                        self.http.listen, e.name
                    ),
                ));
            }
        }
        for (i, a) in all.iter().enumerate() {
            for b in &all[..i] {
                if let Some(why) = overlap(a.routing, b.routing) {
                    return Err(invalid(
                        a.routing_key("prefix"),
                        format!(
                            "endpoint {:?} could publish where endpoint {:?} does ({why}); give each endpoint its own routing.prefix",
                            a.name, b.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `^[a-z0-9][a-z0-9_-]*$`, at most [`MAX_NAME_LEN`] bytes, not `default`.
fn is_valid_name(name: &str) -> bool {
    name != DEFAULT_ENDPOINT
        && !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Why two routings could produce the same destination, if they could. A routing produces
/// `prefix + action` for any action, plus its fixed destinations (the dead-letter destination
/// and the route values), so two overlap when one prefix starts with the other, or a fixed
/// destination of one lies under the other's prefix or equals one of its fixed destinations.
fn overlap(a: &RoutingConfig, b: &RoutingConfig) -> Option<String> {
    if a.prefix.starts_with(&b.prefix) || b.prefix.starts_with(&a.prefix) {
        return Some(format!(
            "prefixes {:?} and {:?} share a namespace",
            a.prefix, b.prefix
        ));
    }
    let fixed = |r: &RoutingConfig| -> Vec<String> {
        std::iter::once(format!("{}{}", r.prefix, r.dead_letter))
            .chain(r.routes.values().cloned())
            .collect()
    };
    let (fa, fb) = (fixed(a), fixed(b));
    let under = |d: &String, r: &RoutingConfig| d.starts_with(&r.prefix);
    fa.iter()
        .find(|d| under(d, b) || fb.contains(d))
        .or_else(|| fb.iter().find(|d| under(d, a)))
        .map(|d| format!("both can produce {d:?}"))
}

impl EndpointConfig {
    /// A copy with every secret replaced by `<redacted>`.
    pub fn redacted(&self) -> EndpointConfig {
        let mut c = self.clone();
        c.auth = c.auth.redacted();
        c
    }
}

redacted_debug!(EndpointConfig, Credentials);

/// Routes for the tests: `prefix`, `unroutable`, and `routes`.
#[cfg(test)]
pub(super) fn routing(prefix: &str, routes: &[(&str, &str)]) -> RoutingConfig {
    RoutingConfig {
        prefix: prefix.into(),
        dead_letter: "unroutable".into(),
        routes: routes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_namespaces() {
        type Side = (&'static str, &'static [(&'static str, &'static str)]);
        let cases: &[(Side, Side, bool)] = &[
            (("sb.", &[]), ("sandbox.", &[]), false),
            (("sb.", &[]), ("sb.", &[]), true),
            (("sb.", &[]), ("sb.sandbox.", &[]), true),
            (("", &[]), ("sandbox.", &[]), true),
            (("a.", &[]), ("ab.", &[]), false),
            // A route of one into the other's prefix.
            (
                ("sb.", &[("session.*", "sandbox.sessions")]),
                ("sandbox.", &[]),
                true,
            ),
            // Two routes to the same destination outside both prefixes.
            (
                ("sb.", &[("session.*", "all")]),
                ("sandbox.", &[("session.*", "all")]),
                true,
            ),
            (
                ("sb.", &[("session.*", "sb-all")]),
                ("sandbox.", &[("session.*", "sandbox-all")]),
                false,
            ),
        ];
        for ((pa, ra), (pb, rb), want) in cases {
            let (a, b) = (routing(pa, ra), routing(pb, rb));
            assert_eq!(
                overlap(&a, &b).is_some(),
                *want,
                "{pa} {ra:?} / {pb} {rb:?}"
            );
            assert_eq!(overlap(&b, &a).is_some(), *want, "reversed: {pa} / {pb}");
        }
    }

    /// The key `check-config` names for `toml`, or `None` when it is valid.
    fn refused_key(toml: &str) -> Option<String> {
        match crate::config::tests::load_str(toml) {
            Ok(_) => None,
            Err(Error::Invalid { key, .. }) => Some(key.into_owned()),
            Err(e) => panic!("{toml}: {e}"),
        }
    }

    #[test]
    fn validation_names_the_entry_and_key() {
        let sandbox = "[[endpoints]]\nname = \"sandbox\"\npath = \"/sandbox\"\nrouting = { prefix = \"sandbox.\" }\n";
        assert_eq!(refused_key(sandbox), None);
        let cases = [
            // Its default prefix is the default endpoint's.
            (
                "[[endpoints]]\nname = \"sandbox\"\npath = \"/sandbox\"\n".to_owned(),
                "endpoints[0].routing.prefix",
            ),
            (
                format!(
                    "{sandbox}{}",
                    sandbox.replace("/sandbox", "/other").replace("x.", "y.")
                ),
                "endpoints[1].name",
            ),
            (
                format!(
                    "{sandbox}{}",
                    sandbox
                        .replace("\"sandbox\"", "\"other\"")
                        .replace("x.", "y.")
                ),
                "endpoints[1].path",
            ),
            (
                sandbox.replace("/sandbox", "/webhooks/sessionboard"),
                "endpoints[0].path",
            ),
            (
                sandbox.replace("\"sandbox\"", "\"default\""),
                "endpoints[0].name",
            ),
            (
                sandbox.replace("\"sandbox\"", "\"Sandbox\""),
                "endpoints[0].name",
            ),
            (sandbox.replace("/sandbox", "sandbox"), "endpoints[0].path"),
            (
                sandbox.replace(
                    "prefix = \"sandbox.\"",
                    "prefix = \"sandbox.\", routes = { \"session.*\" = \"sessionboard.mine\" }",
                ),
                "endpoints[0].routing.prefix",
            ),
            (
                format!("{sandbox}auth = {{ header_name = \"x-token\" }}\n"),
                "endpoints[0].auth.header_values",
            ),
            (
                format!("{sandbox}cloudevents_source = \"a b\"\n"),
                "endpoints[0].cloudevents_source",
            ),
        ];
        for (toml, key) in cases {
            assert_eq!(refused_key(&toml).as_deref(), Some(key), "{toml}");
        }
    }

    #[test]
    fn what_is_built_from_an_entry_names_its_key_too() {
        let sandbox = "[[endpoints]]\nname = \"sandbox\"\npath = \"/sandbox\"\n";
        for (entry, key) in [
            (
                "routing = { prefix = \"sandbox\" }\n",
                "endpoints[0].routing.prefix",
            ),
            (
                "routing = { prefix = \"sandbox.\" }\nauth = { secrets = [\"nothex\"] }\n",
                "endpoints[0].auth.secrets",
            ),
        ] {
            let c = crate::config::tests::load_str(&format!("{sandbox}{entry}")).unwrap();
            match crate::endpoint::Endpoints::from_config(&c) {
                Err(Error::Invalid { key: k, .. }) => assert_eq!(k, key, "{entry}"),
                other => panic!("{entry}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_endpoint_without_authentication_is_refused_on_a_public_listener() {
        let public = "[http]\nlisten = \"0.0.0.0:8080\"\nallow_plaintext = true\n[auth]\nheader_name = \"x-token\"\nheader_values = [\"0123456789abcdef\"]\n";
        let entry = "[[endpoints]]\nname = \"sandbox\"\npath = \"/sandbox\"\nrouting = { prefix = \"sandbox.\" }\n";
        assert_eq!(
            refused_key(&format!("{public}{entry}")).as_deref(),
            Some("endpoints[0].auth")
        );
        for auth in [
            "auth = { allow_unauthenticated = true }\n",
            "auth = { secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"] }\n",
        ] {
            assert_eq!(
                refused_key(&format!("{public}{entry}{auth}")),
                None,
                "{auth}"
            );
        }
    }

    #[test]
    fn names() {
        for ok in ["sandbox", "client-7", "a", "0_x"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        let long = "x".repeat(MAX_NAME_LEN + 1);
        for bad in ["", "default", "Sandbox", "-x", "a.b", "a b", long.as_str()] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }
}
