//! Who may deliver. The only way to obtain a [`Verified`] — the request body together with the
//! proof that it passed the configured checks — is [`Gate::check`], and the ingress builds the
//! delivery for the spool from a `Verified` only. So an unchecked body cannot reach the spool by
//! accident: the raw bytes are moved into the gate and only come out verified.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::signature::{self, Key, SigError};
use crate::clock::Clock;
use crate::config::{self, invalid, Config, Endpoint};

/// A request body that passed the gate, with the delivery headers the gate looked at.
#[derive(Debug)]
pub struct Verified {
    body: Bytes,
    /// A token or signature was checked (not just an open loopback gate): the sender is known,
    /// so even a malformed body is kept (dead-lettered) rather than refused.
    authentic: bool,
}

impl Verified {
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    pub fn into_body(self) -> Bytes {
        self.body
    }

    pub fn authentic(&self) -> bool {
        self.authentic
    }
}

/// Why a request was refused; [`Denied::code`] is the JSON `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The token header is absent.
    #[error("missing_token")]
    MissingToken,
    /// The token header is present (possibly more than once) but a value does not match.
    #[error("invalid_token")]
    InvalidToken,
    /// Signatures are configured and the signature check failed.
    #[error("{0}")]
    Signature(SigError),
    /// The client address is not in `auth.allow_cidrs`.
    #[error("forbidden_source")]
    ForbiddenSource,
}

impl Denied {
    pub fn code(&self) -> &'static str {
        match self {
            Denied::MissingToken => "missing_token",
            Denied::InvalidToken => "invalid_token",
            Denied::Signature(e) => e.code(),
            Denied::ForbiddenSource => "forbidden_source",
        }
    }

    pub fn detail(&self) -> &'static str {
        match self {
            Denied::MissingToken => "the configured token header is missing",
            Denied::InvalidToken => "the token does not match",
            Denied::Signature(e) => e.detail(),
            Denied::ForbiddenSource => "the client address is not allowed (auth.allow_cidrs)",
        }
    }

    /// 403 for a source-address refusal, 401 for everything else. Never a status that tells a
    /// sender to stop retrying: once the operator fixes a secret, retries must get through.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Denied::ForbiddenSource => http::StatusCode::FORBIDDEN,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }
}

/// The shared-token check. Prints the header name and how many tokens, never the digests.
#[derive(Clone)]
pub struct TokenAuth {
    pub header: http::HeaderName,
    /// SHA-256 of each accepted value: compared in constant time, and equal length whatever the
    /// configured tokens are, so neither content nor length leaks through timing.
    pub digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuth")
            .field("header", &self.header)
            .field("tokens", &self.digests.len())
            .finish()
    }
}

/// Signature settings.
#[derive(Debug, Clone)]
pub struct SignatureAuth {
    pub keys: Vec<Key>,
    pub tolerance: Duration,
}

/// Source-address settings.
#[derive(Debug, Clone, Default)]
pub struct SourceAuth {
    /// Allowed client networks; empty allows all.
    pub allow: Vec<IpNet>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

/// The configured checks. Each configured mechanism must pass.
#[derive(Debug, Clone)]
pub struct Gate {
    pub token: Option<TokenAuth>,
    pub signatures: Option<SignatureAuth>,
    pub source: SourceAuth,
    /// What the signature timestamp's tolerance is judged against (its wall time); the ingress
    /// stamps `received_at_ms` from it too. [`Clock::system`] unless a test sets it.
    pub clock: Clock,
}

/// The system's Unix time in seconds, as a signature timestamp carries it.
pub fn system_clock() -> i64 {
    unix_secs(&Clock::system())
}

fn unix_secs(clock: &Clock) -> i64 {
    (clock.wall_ms() / 1000) as i64
}

/// SHA-256 of a token, the form tokens are compared in.
pub fn digest(value: &[u8]) -> [u8; 32] {
    Sha256::digest(value).into()
}

impl Gate {
    /// The default endpoint's gate (the top-level `[auth]`); see [`Gate::for_endpoint`].
    pub fn from_config(c: &Config) -> Result<Gate, config::Error> {
        Gate::for_endpoint(c, &c.endpoints()[0])
    }

    /// The gate a validated configuration asks for at endpoint `e`: its token
    /// (`header_name`/`header_values`), the secrets in `secrets` and `secret_files` (read
    /// here), `allow_cidrs`, and the global `auth.tolerance` and `http.trusted_proxies`. Errors
    /// name the key (and the file and line), never a secret.
    pub fn for_endpoint(c: &Config, e: &Endpoint<'_>) -> Result<Gate, config::Error> {
        let auth = &e.auth;
        let token = match &auth.header_name {
            None => None,
            Some(name) => Some(TokenAuth {
                header: http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    invalid(e.auth_key("header_name"), "is not a valid header name")
                })?,
                digests: auth
                    .header_values
                    .iter()
                    .map(|v| digest(v.as_bytes()))
                    .collect(),
            }),
        };
        let keys = load_keys(e)?;
        if keys.is_empty() && !auth.secret_files.is_empty() && auth.secrets.is_empty() {
            // Listing secret files that hold nothing would silently turn signature checks off.
            return Err(invalid(
                e.auth_key("secret_files"),
                "the files hold no secret (every line is empty or a comment)",
            ));
        }
        Ok(Gate {
            token,
            signatures: (!keys.is_empty()).then_some(SignatureAuth {
                keys,
                tolerance: c.auth.tolerance,
            }),
            source: SourceAuth {
                allow: auth.allow_cidrs.clone(),
                trusted_proxies: c.http.trusted_proxies.clone(),
            },
            clock: Clock::system(),
        })
    }

    /// No checks at all (only allowed on loopback unless the operator opted out; see config).
    pub fn open() -> Gate {
        Gate {
            token: None,
            signatures: None,
            source: SourceAuth::default(),
            clock: Clock::system(),
        }
    }

    /// The client address: the peer, or — when the peer is a trusted proxy — the right-most
    /// `X-Forwarded-For` address that is not itself a trusted proxy. A forwarded-for header from
    /// anyone else is ignored, so it cannot be forged past the allowlist.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let trusted = |ip: &IpAddr| self.source.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(&peer) {
            return peer;
        }
        let mut client = peer;
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !trusted(&ip) {
                        break;
                    }
                }
                // An unparsable hop: stop and use the last good one, never skip past it.
                Err(_) => break,
            }
        }
        client
    }

    /// Checks what the request head decides — the source address, then the token — before a
    /// byte of the body is read: an unauthenticated client is refused without being read.
    pub fn check_head(&self, peer: IpAddr, headers: &HeaderMap) -> Result<(), Denied> {
        if !self.source.allow.is_empty() {
            let ip = self.client_ip(peer, headers);
            if !self.source.allow.iter().any(|n| n.contains(&ip)) {
                return Err(Denied::ForbiddenSource);
            }
        }
        match &self.token {
            Some(auth) => check_token(auth, headers),
            None => Ok(()),
        }
    }

    /// Checks the signature, after [`Gate::check_head`] passed; `id` and `timestamp` are the
    /// already-validated delivery headers (either spelling).
    pub fn check(
        &self,
        headers: &HeaderMap,
        id: Option<&str>,
        timestamp: Option<&str>,
        body: Bytes,
    ) -> Result<Verified, Denied> {
        if let Some(sig) = &self.signatures {
            let header =
                signature_header(headers).ok_or(Denied::Signature(SigError::MissingHeaders))?;
            let (Some(id), Some(ts)) = (id, timestamp) else {
                return Err(Denied::Signature(SigError::MissingHeaders));
            };
            signature::verify(
                &sig.keys,
                sig.tolerance,
                id,
                ts,
                header,
                &body,
                unix_secs(&self.clock),
            )
            .map_err(Denied::Signature)?;
        }
        Ok(Verified {
            body,
            authentic: self.token.is_some() || self.signatures.is_some(),
        })
    }
}

/// Parses endpoint `e`'s `secrets` and the secrets in its `secret_files`. Errors name the key
/// and the position, never the secret.
fn load_keys(ep: &Endpoint<'_>) -> Result<Vec<Key>, config::Error> {
    let auth = &ep.auth;
    let mut keys = Vec::new();
    for (i, s) in auth.secrets.iter().enumerate() {
        keys.push(Key::parse(s).map_err(|e| config::Error::Invalid {
            key: ep.auth_key("secrets"),
            reason: format!("entry {i}: {e}"),
        })?);
    }
    for path in &auth.secret_files {
        let text = std::fs::read_to_string(path).map_err(|e| config::Error::Invalid {
            key: ep.auth_key("secret_files"),
            reason: format!("{}: {e}", path.display()),
        })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            keys.push(Key::parse(line).map_err(|e| config::Error::Invalid {
                key: ep.auth_key("secret_files"),
                reason: format!("{} line {}: {e}", path.display(), n + 1),
            })?);
        }
    }
    Ok(keys)
}

/// `webhook-signature` or `svix-signature`; several copies are joined (each may carry entries).
fn signature_header(headers: &HeaderMap) -> Option<&str> {
    let mut found = None;
    for name in ["webhook-signature", "svix-signature"] {
        for v in headers.get_all(name) {
            // A second header copy is ambiguous; only the first is considered, and a request
            // whose first copy fails is refused.
            if found.is_none() {
                found = v.to_str().ok();
            }
        }
    }
    found
}

fn check_token(auth: &TokenAuth, headers: &HeaderMap) -> Result<(), Denied> {
    let mut values = headers.get_all(&auth.header).iter().peekable();
    if values.peek().is_none() {
        return Err(Denied::MissingToken);
    }
    // A repeated header is ambiguous; require that every copy is a valid token rather than
    // letting one good copy vouch for another.
    let mut all_ok = true;
    for v in values {
        let d = digest(v.as_bytes());
        // Compare against every configured digest without stopping early.
        let mut ok = subtle::Choice::from(0);
        for want in &auth.digests {
            ok |= d.ct_eq(want);
        }
        all_ok &= bool::from(ok);
    }
    if all_ok {
        Ok(())
    } else {
        Err(Denied::InvalidToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_gate() -> Gate {
        Gate {
            token: Some(TokenAuth {
                header: http::HeaderName::from_static("x-token"),
                digests: vec![
                    digest(b"old-token-0123456789"),
                    digest(b"new-token-0123456789"),
                ],
            }),
            ..Gate::open()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn token_table() {
        let g = token_gate();
        let cases: &[(&[&str], Result<(), Denied>)] = &[
            (&[], Err(Denied::MissingToken)),
            (&["old-token-0123456789"], Ok(())),
            (&["new-token-0123456789"], Ok(())),
            (&["new-token-012345678"], Err(Denied::InvalidToken)),
            (&["new-token-01234567890"], Err(Denied::InvalidToken)),
            (&[""], Err(Denied::InvalidToken)),
            (&["old-token-0123456789", "nope"], Err(Denied::InvalidToken)),
            (&["old-token-0123456789", "new-token-0123456789"], Ok(())),
        ];
        for (values, want) in cases {
            let h = headers(&values.iter().map(|v| ("x-token", *v)).collect::<Vec<_>>());
            assert_eq!(g.check_head(ip("192.0.2.1"), &h), *want, "{values:?}");
            if want.is_ok() {
                assert!(g.check(&h, None, None, Bytes::new()).unwrap().authentic());
            }
        }
    }

    #[test]
    fn open_gate_admits_but_is_not_authentic() {
        let v = Gate::open()
            .check(&HeaderMap::new(), None, None, Bytes::from_static(b"x"))
            .unwrap();
        assert!(!v.authentic());
        assert_eq!(v.into_body(), Bytes::from_static(b"x"));
    }

    #[test]
    fn signatures_required_even_with_a_valid_token() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let g = Gate {
            signatures: Some(SignatureAuth {
                keys: vec![Key::parse(secret).unwrap()],
                tolerance: Duration::from_secs(300),
            }),
            clock: crate::clock::ManualClock::new(1_614_265_330_000).clock(),
            ..token_gate()
        };
        let body = Bytes::from_static(br#"{"test": 2432232314}"#);
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let (id, ts) = (Some("msg_p5jXN8AQM9LWM0D4loKWxJek"), Some("1614265330"));
        let good = headers(&[("x-token", "old-token-0123456789"), ("svix-signature", sig)]);
        assert!(g.check(&good, id, ts, body.clone()).is_ok());
        let no_sig = headers(&[("x-token", "old-token-0123456789")]);
        assert_eq!(
            g.check(&no_sig, id, ts, body.clone()).unwrap_err(),
            Denied::Signature(SigError::MissingHeaders)
        );
        assert_eq!(
            g.check(&good, id, None, body.clone()).unwrap_err(),
            Denied::Signature(SigError::MissingHeaders)
        );
        let no_token = headers(&[("webhook-signature", sig)]);
        assert!(g.check(&no_token, id, ts, body).is_ok(), "signature alone");
        assert_eq!(
            g.check_head(ip("192.0.2.1"), &no_token).unwrap_err(),
            Denied::MissingToken
        );
        assert!(g.check_head(ip("192.0.2.1"), &good).is_ok());
    }

    #[test]
    fn forwarded_for_is_trusted_only_from_trusted_proxies() {
        let g = Gate {
            source: SourceAuth {
                allow: vec!["203.0.113.0/24".parse().unwrap()],
                trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            },
            ..Gate::open()
        };
        let xff = |v: &str| headers(&[("x-forwarded-for", v)]);
        // Direct client inside the allowlist.
        assert!(g.check_head(ip("203.0.113.5"), &HeaderMap::new()).is_ok());
        // Forged header from an untrusted peer is ignored.
        assert_eq!(
            g.check_head(ip("198.51.100.1"), &xff("203.0.113.5")),
            Err(Denied::ForbiddenSource)
        );
        // Through a trusted proxy: right-most untrusted hop counts.
        assert!(g.check_head(ip("10.1.1.1"), &xff("203.0.113.5")).is_ok());
        assert!(g
            .check_head(ip("10.1.1.1"), &xff("198.51.100.1, 203.0.113.5, 10.2.2.2"))
            .is_ok());
        // The attacker-controlled left part cannot win.
        assert_eq!(
            g.check_head(ip("10.1.1.1"), &xff("203.0.113.5, 198.51.100.1")),
            Err(Denied::ForbiddenSource)
        );
        // Garbage hop: stop at the last parsable one (the proxy itself, not allowed).
        assert_eq!(
            g.check_head(ip("10.1.1.1"), &xff("203.0.113.5, garbage")),
            Err(Denied::ForbiddenSource)
        );
    }

    fn gate_from(toml: &str) -> Result<Gate, config::Error> {
        Gate::from_config(&crate::config::tests::load_str(toml)?)
    }

    #[test]
    fn from_config_builds_what_auth_asks_for() {
        let g = gate_from("").unwrap();
        assert!(g.token.is_none() && g.signatures.is_none());
        let g = gate_from(
            "[auth]\nheader_name = \"X-Token\"\nheader_values = [\"0123456789abcdef\", \"fedcba9876543210\"]\n",
        )
        .unwrap();
        assert_eq!(g.token.unwrap().digests.len(), 2);
        let g =
            gate_from("[auth]\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n").unwrap();
        assert_eq!(g.signatures.unwrap().keys.len(), 1);
    }

    #[test]
    fn secrets_from_files_and_errors_that_do_not_leak() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secrets");
        std::fs::write(
            &f,
            "# rotation: old then new\nwhsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n\nwhsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n",
        )
        .unwrap();
        let mut c = Config::default();
        c.auth.secret_files = vec![f.clone()];
        let g = Gate::from_config(&c).unwrap();
        assert_eq!(g.signatures.unwrap().keys.len(), 2);
        let mut c = Config::default();
        c.auth.secrets = vec!["nothex-supersecret".into()];
        let err = Gate::from_config(&c).unwrap_err().to_string();
        assert!(
            err.contains("auth.secrets") && !err.contains("supersecret"),
            "{err}"
        );
        std::fs::write(&f, "whsec_ok\n").unwrap();
        let mut c = Config::default();
        c.auth.secret_files = vec![f.clone()];
        let err = Gate::from_config(&c).unwrap_err().to_string();
        assert!(err.contains("line 1") && !err.contains("whsec_ok"), "{err}");
        // Secret files that hold nothing would turn the signature check off without a word.
        std::fs::write(&f, "# nothing yet\n\n").unwrap();
        let err = Gate::from_config(&c).unwrap_err().to_string();
        assert!(err.contains("auth.secret_files"), "{err}");
    }
}
