//! Who may deliver. The only way to obtain an [`Authenticated`] is [`Gate::check`]; the handler
//! needs one to build a delivery for the spool, so an unchecked request cannot reach the spool by
//! accident.

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::TokenAuth;

/// Proof that a request passed the configured access check.
#[derive(Debug)]
pub struct Authenticated {
    _private: (),
}

/// Why a request was refused; the text is the JSON `error` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The token header is absent.
    #[error("missing_token")]
    MissingToken,
    /// The token header is present (possibly more than once) but no value matches.
    #[error("invalid_token")]
    InvalidToken,
}

/// The configured access check.
#[derive(Debug, Clone)]
pub enum Gate {
    /// No authentication (only allowed on loopback unless the operator opted out; see config).
    Open,
    /// A shared token in a header.
    Token(TokenAuth),
}

impl Denied {
    /// The JSON `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            Denied::MissingToken => "missing_token",
            Denied::InvalidToken => "invalid_token",
        }
    }
}

/// SHA-256 of a token, the form tokens are compared in.
pub fn digest(value: &[u8]) -> [u8; 32] {
    Sha256::digest(value).into()
}

impl Gate {
    pub fn check(&self, headers: &HeaderMap) -> Result<Authenticated, Denied> {
        match self {
            Gate::Open => Ok(Authenticated { _private: () }),
            Gate::Token(auth) => {
                let mut values = headers.get_all(&auth.header).iter().peekable();
                if values.peek().is_none() {
                    return Err(Denied::MissingToken);
                }
                // A repeated header is ambiguous; require that every copy is a valid token rather
                // than letting one good copy vouch for another.
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
                    Ok(Authenticated { _private: () })
                } else {
                    Err(Denied::InvalidToken)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Gate {
        Gate::Token(TokenAuth {
            header: http::HeaderName::from_static("x-token"),
            digests: vec![
                digest(b"old-token-0123456789"),
                digest(b"new-token-0123456789"),
            ],
        })
    }

    #[test]
    fn token_table() {
        let g = gate();
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
            let mut h = HeaderMap::new();
            for v in *values {
                h.append("x-token", v.parse().unwrap());
            }
            assert_eq!(g.check(&h).map(|_| ()), *want, "{values:?}");
        }
    }

    #[test]
    fn open_gate_admits() {
        assert!(Gate::Open.check(&HeaderMap::new()).is_ok());
    }
}
