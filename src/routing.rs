//! Routing: `metadata.action` → destination subject / topic. Pure functions, no I/O.
//!
//! The destination is always built from checked parts: the operator's prefix (validated at startup)
//! and an action that matched [`is_valid_action`]. Anything else goes to the dead-letter
//! destination, so untrusted input can never produce a NATS wildcard (`*`, `>`), an empty token or
//! an illegal Kafka topic name.

use std::collections::BTreeMap;

/// Longest action accepted as a routing token.
pub const MAX_ACTION_LEN: usize = 200;

/// Kafka's limit for a topic name; every destination must fit it.
pub const MAX_DESTINATION_LEN: usize = 249;

/// The Sessionboard webhook catalogue; used to keep metric label values bounded.
pub const KNOWN_ACTIONS: &[&str] = &[
    "contact.created",
    "contact.updated",
    "contact.deleted",
    "contact.event.associated",
    "contact.event.disassociated",
    "session.created",
    "session.updated",
    "session.deleted",
    "session.speaker.attached",
    "session.speaker.detached",
    "exhibitor.created",
    "exhibitor.updated",
    "exhibitor.deleted",
    "exhibitor.event.associated",
    "exhibitor.event.disassociated",
    "sponsor.created",
    "sponsor.updated",
    "sponsor.deleted",
    "sponsor.event.associated",
    "sponsor.event.disassociated",
];

/// `^[a-z0-9_-]+(\.[a-z0-9_-]+)*$`, at most [`MAX_ACTION_LEN`] bytes.
pub fn is_valid_action(action: &str) -> bool {
    !action.is_empty() && action.len() <= MAX_ACTION_LEN && action.split('.').all(is_valid_token)
}

fn is_valid_token(t: &str) -> bool {
    !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A subject / topic an operator wrote: tokens of `[A-Za-z0-9_-]`, dot-separated, no wildcards,
/// within Kafka's limits.
fn is_valid_destination(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= MAX_DESTINATION_LEN
        && d.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// Label value for `hookbridge_deliveries_accepted_total{action}`. Needs no routing (and no
/// allocation): an action is unroutable exactly when it is not a valid token.
pub fn action_label(action: &str) -> &'static str {
    if !is_valid_action(action) {
        return "unroutable";
    }
    KNOWN_ACTIONS
        .iter()
        .find(|a| **a == action)
        .copied()
        .unwrap_or("other")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Prefix(String),
    DeadLetter(String),
    Route(String),
}

/// Where one delivery goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: String,
    /// The action was not a valid token; `destination` is the dead-letter subject.
    pub unroutable: bool,
}

#[derive(Debug, Clone)]
pub struct Router {
    prefix: String,
    dead_letter: String,
    exact: BTreeMap<String, String>,
    /// `(prefix-with-trailing-dot, destination)`, longest prefix first.
    patterns: Vec<(String, String)>,
}

impl Router {
    /// The router of endpoint `e` (`[routing]` for the default); errors name the key.
    pub fn for_endpoint(e: &crate::config::Endpoint<'_>) -> Result<Router, crate::config::Error> {
        use crate::config::invalid;
        let c = e.routing;
        Router::new(&c.prefix, &c.dead_letter, &c.routes).map_err(|err| match err {
            ConfigError::Prefix(r) => invalid(e.routing_key("prefix"), r),
            ConfigError::DeadLetter(r) => invalid(e.routing_key("dead_letter"), r),
            ConfigError::Route(r) => invalid(e.routing_key("routes"), r),
        })
    }

    /// `prefix` is empty or ends with `.`; `dead_letter` is a valid action-style suffix; each route
    /// key is a valid action or `<valid action>.*`, each value a valid destination.
    pub fn new(
        prefix: &str,
        dead_letter: &str,
        routes: &BTreeMap<String, String>,
    ) -> Result<Router, ConfigError> {
        let prefix_ok = match prefix.strip_suffix('.') {
            Some(stem) => is_valid_destination(stem),
            None => prefix.is_empty(),
        };
        if !prefix_ok {
            return Err(ConfigError::Prefix(format!(
                "{prefix:?} must be empty or dot-separated tokens of [A-Za-z0-9_-] ending with `.`"
            )));
        }
        if !is_valid_action(dead_letter) {
            return Err(ConfigError::DeadLetter(format!(
                "{dead_letter:?} must match ^[a-z0-9_-]+(\\.[a-z0-9_-]+)*$"
            )));
        }
        let dl = format!("{prefix}{dead_letter}");
        if dl.len() > MAX_DESTINATION_LEN {
            return Err(ConfigError::DeadLetter(format!(
                "{dl:?} is longer than {MAX_DESTINATION_LEN} characters"
            )));
        }
        if prefix.len() + MAX_ACTION_LEN > MAX_DESTINATION_LEN {
            return Err(ConfigError::Prefix(format!(
                "{prefix:?} is too long: prefix plus a {MAX_ACTION_LEN}-character action must fit {MAX_DESTINATION_LEN} characters"
            )));
        }
        let mut exact = BTreeMap::new();
        let mut patterns = Vec::new();
        for (key, dest) in routes {
            if !is_valid_destination(dest) {
                return Err(ConfigError::Route(format!(
                    "destination {dest:?} for {key:?} must be dot-separated tokens of [A-Za-z0-9_-] (no wildcards), at most {MAX_DESTINATION_LEN} characters"
                )));
            }
            if let Some(stem) = key.strip_suffix(".*") {
                if !is_valid_action(stem) {
                    return Err(ConfigError::Route(format!(
                        "pattern {key:?} must be an action followed by `.*`"
                    )));
                }
                patterns.push((format!("{stem}."), dest.clone()));
            } else if is_valid_action(key) {
                exact.insert(key.clone(), dest.clone());
            } else {
                return Err(ConfigError::Route(format!(
                    "key {key:?} must be an action (session.updated) or a pattern (session.*)"
                )));
            }
        }
        patterns.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Ok(Router {
            prefix: prefix.to_owned(),
            dead_letter: dl,
            exact,
            patterns,
        })
    }

    /// Exact override, then the longest matching pattern, then `prefix + action`.
    pub fn route(&self, action: &str) -> Route {
        if !is_valid_action(action) {
            return Route {
                destination: self.dead_letter.clone(),
                unroutable: true,
            };
        }
        let destination = if let Some(d) = self.exact.get(action) {
            d.clone()
        } else if let Some((_, d)) = self.patterns.iter().find(|(p, _)| action.starts_with(p)) {
            d.clone()
        } else {
            format!("{}{}", self.prefix, action)
        };
        Route {
            destination,
            unroutable: false,
        }
    }

    /// Prefix for the default JetStream stream subjects (`<prefix>>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every fixed destination the router can produce besides `prefix + action`.
    pub fn fixed_destinations(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.dead_letter.as_str())
            .chain(self.exact.values().map(String::as_str))
            .chain(self.patterns.iter().map(|(_, d)| d.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(&str, &str)]) -> Router {
        let routes = routes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Router::new("sessionboard.", "unroutable", &routes).unwrap()
    }

    #[test]
    fn routes_table() {
        let r = router(&[
            ("session.updated", "sessions.changes"),
            ("session.*", "sessions.all"),
            ("session.speaker.*", "sessions.speakers"),
        ]);
        let cases: &[(&str, &str, bool)] = &[
            ("contact.created", "sessionboard.contact.created", false),
            (
                "contact.event.associated",
                "sessionboard.contact.event.associated",
                false,
            ),
            ("session.updated", "sessions.changes", false),
            ("session.created", "sessions.all", false),
            ("session.speaker.attached", "sessions.speakers", false),
            ("sessionx.created", "sessionboard.sessionx.created", false),
            ("a_b-c.d9", "sessionboard.a_b-c.d9", false),
            ("", "sessionboard.unroutable", true),
            ("session.>", "sessionboard.unroutable", true),
            ("session.*", "sessionboard.unroutable", true),
            (">", "sessionboard.unroutable", true),
            ("session updated", "sessionboard.unroutable", true),
            ("session..updated", "sessionboard.unroutable", true),
            (".session", "sessionboard.unroutable", true),
            ("session.", "sessionboard.unroutable", true),
            ("Session.Updated", "sessionboard.unroutable", true),
            ("session/updated", "sessionboard.unroutable", true),
            ("séssion.updated", "sessionboard.unroutable", true),
            ("session.updated\n", "sessionboard.unroutable", true),
        ];
        for (action, dest, unroutable) in cases {
            let got = r.route(action);
            assert_eq!(got.destination, *dest, "action {action:?}");
            assert_eq!(got.unroutable, *unroutable, "action {action:?}");
        }
    }

    #[test]
    fn action_length_limit() {
        let r = router(&[]);
        let ok = "a".repeat(MAX_ACTION_LEN);
        assert!(!r.route(&ok).unroutable);
        assert!(r.route(&"a".repeat(MAX_ACTION_LEN + 1)).unroutable);
        assert!(r.route(&ok).destination.len() <= MAX_DESTINATION_LEN);
    }

    #[test]
    fn invalid_config_rejected() {
        let empty = BTreeMap::new();
        assert!(matches!(
            Router::new("sessionboard", "unroutable", &empty),
            Err(ConfigError::Prefix(_))
        ));
        assert!(matches!(
            Router::new("a.>.", "unroutable", &empty),
            Err(ConfigError::Prefix(_))
        ));
        assert!(matches!(
            Router::new("sb.", "dead.*", &empty),
            Err(ConfigError::DeadLetter(_))
        ));
        assert!(Router::new("", "unroutable", &empty).is_ok());
        assert!(Router::new("Acme.SB-1.", "unroutable", &empty).is_ok());
        for (k, v) in [
            ("session.*", "x.*"),
            ("session.*", "x..y"),
            ("session.*", ""),
            ("*", "x"),
            ("session.**", "x"),
            ("Session.updated", "x"),
        ] {
            let routes = [(k.to_string(), v.to_string())].into_iter().collect();
            assert!(
                matches!(
                    Router::new("sb.", "unroutable", &routes),
                    Err(ConfigError::Route(_))
                ),
                "{k} -> {v}"
            );
        }
    }

    #[test]
    fn labels_are_bounded() {
        let r = router(&[]);
        assert_eq!(action_label("session.updated"), "session.updated");
        assert_eq!(action_label("x.y"), "other");
        assert_eq!(action_label("x y"), "unroutable");
        assert!(r.route("x y").unroutable);
    }
}
