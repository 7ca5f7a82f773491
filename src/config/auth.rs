//! `[auth]`: who may deliver, and replay protection.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Error, REDACTED};

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Signing secrets: `whsec_…` (HMAC, `v1`) or `whpk_…` (Ed25519 public key, `v1a`); any
    /// one matching is enough, so old and new can overlap during rotation. Default none.
    pub secrets: Vec<String>,
    /// Files holding more secrets, one per line (`#` comments). Default none.
    pub secret_files: Vec<PathBuf>,
    /// Largest accepted distance between the signature timestamp and now, either way. Default 5 min.
    #[serde(with = "humantime_serde")]
    pub tolerance: Duration,
    /// Header carrying a shared token (e.g. `x-hookbridge-token`). Default: none.
    pub header_name: Option<String>,
    /// Accepted token values (several, for rotation). Default: none.
    pub header_values: Vec<String>,
    /// Serve without any authentication on a non-loopback address. Default false.
    pub allow_unauthenticated: bool,
    /// How long delivery ids are remembered to drop the sender's repeats. Default 24 h; 0 disables.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Most delivery ids remembered; the oldest are forgotten first. Default 1,000,000.
    pub dedup_max_entries: usize,
    /// How long a request waits when an earlier attempt with the same delivery id is still being
    /// stored; after that it gets 503 + `Retry-After` (never a 2xx before the first copy is
    /// fsync'd). Default 5 s.
    #[serde(with = "humantime_serde")]
    pub dedup_wait: Duration,
    /// Client networks allowed to deliver (CIDRs); empty allows all. Default empty.
    pub allow_cidrs: Vec<ipnet::IpNet>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secrets: Vec::new(),
            secret_files: Vec::new(),
            tolerance: Duration::from_secs(300),
            header_name: None,
            header_values: Vec::new(),
            allow_unauthenticated: false,
            dedup_window: Duration::from_secs(24 * 3600),
            dedup_max_entries: 1_000_000,
            dedup_wait: Duration::from_secs(5),
            allow_cidrs: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// A copy with every secret replaced by `<redacted>`.
    pub fn redacted(&self) -> AuthConfig {
        let mut c = self.clone();
        for v in c.header_values.iter_mut().chain(c.secrets.iter_mut()) {
            *v = REDACTED.into();
        }
        c
    }
}

/// Parses `auth.secrets` and the secrets in `auth.secret_files`. Errors name the key and the
/// position, never the secret.
pub(super) fn load_keys(auth: &AuthConfig) -> Result<Vec<crate::ingress::signature::Key>, Error> {
    use crate::ingress::signature::Key;
    let mut keys = Vec::new();
    for (i, s) in auth.secrets.iter().enumerate() {
        keys.push(Key::parse(s).map_err(|e| Error::Invalid {
            key: "auth.secrets",
            reason: format!("entry {i}: {e}"),
        })?);
    }
    for path in &auth.secret_files {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Invalid {
            key: "auth.secret_files",
            reason: format!("{}: {e}", path.display()),
        })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            keys.push(Key::parse(line).map_err(|e| Error::Invalid {
                key: "auth.secret_files",
                reason: format!("{} line {}: {e}", path.display(), n + 1),
            })?);
        }
    }
    Ok(keys)
}

redacted_debug!(AuthConfig);
