//! `[auth]`: who may deliver, and replay protection.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, Error, REDACTED};

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
    /// Most delivery ids remembered; the oldest are forgotten first. About 21 bytes of memory
    /// each; at most 100,000,000 (the `dedup` module's `MAX_ENTRIES`). Default 1,000,000.
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

impl AuthConfig {
    /// Some mechanism is configured (signatures or a token). Whether the secret files really
    /// hold a secret is known only once they are read (`ingress::auth::Gate::from_config`).
    pub fn is_configured(&self) -> bool {
        !self.secrets.is_empty() || !self.secret_files.is_empty() || self.header_name.is_some()
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
        super::Credentials::of(self).validate("auth")?;
        if self.tolerance.is_zero() {
            return Err(invalid("auth.tolerance", "must be positive"));
        }
        if !self.dedup_window.is_zero()
            && (self.dedup_max_entries == 0 || self.dedup_max_entries > 100_000_000)
        {
            return Err(invalid(
                "auth.dedup_max_entries",
                "must be between 1 and 100000000 (or set auth.dedup_window = \"0s\")",
            ));
        }
        if !self.dedup_window.is_zero()
            && (self.dedup_wait.is_zero() || self.dedup_wait > Duration::from_secs(60))
        {
            return Err(invalid(
                "auth.dedup_wait",
                "must be between 1ms and 60s (the sender gives up after 15s)",
            ));
        }
        Ok(())
    }
}

redacted_debug!(AuthConfig);
