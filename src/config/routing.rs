//! `[routing]`: action → subject / topic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Prepended to the action to form the subject / topic. Default `sessionboard.`.
    pub prefix: String,
    /// Suffix (after `prefix`) for deliveries whose action is not a valid token. Default `unroutable`.
    pub dead_letter: String,
    /// Fixed destinations for an action (`session.updated`) or a pattern (`session.*`). Default empty.
    pub routes: BTreeMap<String, String>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            prefix: "sessionboard.".into(),
            dead_letter: "unroutable".into(),
            routes: BTreeMap::new(),
        }
    }
}
