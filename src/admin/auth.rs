//! The admin API's bearer token (`admin.token_file`): read from a file so it can be a Kubernetes
//! Secret, kept only as its SHA-256, compared digest to digest in constant time, and re-read when
//! the file changes, so a rotated Secret applies without a restart. The token is never logged.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{self, AdminConfig};

/// Shortest token accepted: 16 characters, which a random token far exceeds in entropy.
pub const MIN_TOKEN_LEN: usize = 16;
/// How often the file is read again at most (on the next request after this long).
const RECHECK: Duration = Duration::from_secs(1);

/// What a request presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// No `Authorization: Bearer …`, or a wrong token.
    Unauthorized,
}

pub struct Token {
    path: PathBuf,
    state: Mutex<State>,
}

/// Names the file only: not even the digest goes into a log.
impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

struct State {
    digest: [u8; 32],
    checked: Instant,
}

impl Token {
    /// The token of `admin.token_file`, or `None` when it is unset. An unreadable file or a
    /// token shorter than [`MIN_TOKEN_LEN`] is an error naming the key.
    pub fn from_config(c: &AdminConfig) -> Result<Option<Token>, config::Error> {
        let Some(path) = &c.token_file else {
            return Ok(None);
        };
        let digest = read_digest(path).map_err(|e| config::invalid("admin.token_file", e))?;
        Ok(Some(Token {
            path: path.clone(),
            state: Mutex::new(State {
                digest,
                checked: Instant::now(),
            }),
        }))
    }

    /// Checks an `Authorization` header value. Re-reads the file first if [`RECHECK`] passed; a
    /// file that became unreadable or too short keeps the last good token (and says so once per
    /// check), so a half-written Secret update cannot lock the operator out or let anyone in.
    pub fn check(&self, authorization: Option<&str>) -> Verdict {
        let digest = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if s.checked.elapsed() >= RECHECK {
                s.checked = Instant::now();
                match read_digest(&self.path) {
                    Ok(d) => s.digest = d,
                    Err(e) => tracing::warn!(
                        file = %self.path.display(),
                        "admin.token_file unusable, keeping the previous token: {e}"
                    ),
                }
            }
            s.digest
        };
        let presented = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| Sha256::digest(t.trim().as_bytes()));
        match presented {
            Some(p) if bool::from(p.as_slice().ct_eq(&digest)) => Verdict::Ok,
            _ => Verdict::Unauthorized,
        }
    }
}

fn read_digest(path: &Path) -> Result<[u8; 32], String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = text.trim();
    if token.chars().count() < MIN_TOKEN_LEN {
        return Err(format!(
            "the token in {} must be at least {MIN_TOKEN_LEN} characters",
            path.display()
        ));
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_checks_rotation_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let mut c = AdminConfig::default();
        assert!(Token::from_config(&c).unwrap().is_none());
        c.token_file = Some(file.clone());
        assert!(Token::from_config(&c).is_err(), "missing file");
        std::fs::write(&file, "short\n").unwrap();
        let err = Token::from_config(&c).unwrap_err().to_string();
        assert!(
            err.contains("admin.token_file") && !err.contains("short\""),
            "{err}"
        );
        std::fs::write(&file, "0123456789abcdef-one\n").unwrap();
        let t = Token::from_config(&c).unwrap().unwrap();
        assert_eq!(t.check(Some("Bearer 0123456789abcdef-one")), Verdict::Ok);
        assert!(!format!("{t:?}").contains("digest"), "{t:?}");
        for bad in [
            None,
            Some("Bearer "),
            Some("0123456789abcdef-one"),
            Some("Bearer 0123456789abcdef-on"),
        ] {
            assert_eq!(t.check(bad), Verdict::Unauthorized, "{bad:?}");
        }
        std::fs::write(&file, "0123456789abcdef-two").unwrap();
        t.state.lock().unwrap().checked -= RECHECK;
        assert_eq!(
            t.check(Some("Bearer 0123456789abcdef-two")),
            Verdict::Ok,
            "rotated"
        );
        assert_eq!(
            t.check(Some("Bearer 0123456789abcdef-one")),
            Verdict::Unauthorized
        );
        std::fs::write(&file, "").unwrap();
        t.state.lock().unwrap().checked -= RECHECK;
        assert_eq!(
            t.check(Some("Bearer 0123456789abcdef-two")),
            Verdict::Ok,
            "kept"
        );
    }
}
