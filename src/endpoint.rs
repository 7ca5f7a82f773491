//! The endpoints the bridge serves, built from the configuration (`config::Config::endpoints`):
//! for each, its path and gate (what the ingress checks) and its router and CloudEvents
//! attributes (what the forwarder publishes with).
//!
//! Isolation between senders rests on two things. The ingress picks the endpoint by the
//! request path before it reads a byte of the body, and checks the request with that endpoint's
//! gate only, so a secret opens its own endpoint and nothing else. The spool record carries the
//! endpoint's name (`Delivery::endpoint`), and the forwarder routes it with that endpoint's
//! router only; `config` refuses namespaces that overlap, so no endpoint can publish into
//! another's. A record whose endpoint is no longer configured is dead-lettered
//! (`unknown_endpoint`), never published under someone else's namespace.

use crate::cloudevents::CloudEvents;
use crate::config::{self, Config};
use crate::ingress::auth::Gate;
use crate::routing::Router;

/// One endpoint, built.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `default` for the top-level keys.
    pub name: String,
    pub path: String,
    pub gate: Gate,
    pub router: Router,
    pub cloudevents: CloudEvents,
}

/// Every endpoint, `default` first.
#[derive(Debug, Clone)]
pub struct Endpoints {
    list: Vec<Endpoint>,
}

impl Endpoints {
    /// From a validated configuration; reads the secret files. Errors name the key.
    pub fn from_config(c: &Config) -> Result<Endpoints, config::Error> {
        let list = c
            .endpoints()
            .iter()
            .map(|e| {
                let (source, fallback) = e.cloudevents_sources(&c.sink);
                Ok(Endpoint {
                    name: e.name.to_owned(),
                    path: e.path.to_owned(),
                    gate: Gate::for_endpoint(c, e)?,
                    router: Router::for_endpoint(e)?,
                    cloudevents: CloudEvents::from_config(c).with_sources(source, fallback),
                })
            })
            .collect::<Result<_, config::Error>>()?;
        Ok(Endpoints { list })
    }

    /// Endpoints made by hand (tests); the first is the default.
    pub fn new(list: Vec<Endpoint>) -> Endpoints {
        assert!(!list.is_empty(), "the default endpoint comes first");
        Endpoints { list }
    }

    /// The endpoint the top-level keys describe.
    pub fn default_endpoint(&self) -> &Endpoint {
        &self.list[0]
    }

    /// The endpoint serving `path`.
    pub fn by_path(&self, path: &str) -> Option<&Endpoint> {
        self.list.iter().find(|e| e.path == path)
    }

    /// The endpoint a record names (`None`: the default); `None` when it is not configured.
    pub fn by_name(&self, name: Option<&str>) -> Option<&Endpoint> {
        match name {
            None => Some(self.default_endpoint()),
            Some(n) => self.list.iter().find(|e| e.name == n),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Endpoint> {
        self.list.iter()
    }

    /// The names, default first: the values of the `endpoint` metric label.
    pub fn names(&self) -> Vec<String> {
        self.list.iter().map(|e| e.name.clone()).collect()
    }
}
