//! Svix / Standard Webhooks signature verification, on the raw body bytes before any parsing.
//!
//! Signed content is `{id}.{timestamp}.{body}`. `v1` signatures are HMAC-SHA256 keyed with the
//! base64-decoded part of a `whsec_…` secret, base64-encoded; `v1a` signatures are Ed25519 over
//! the same content, checked with a `whpk_…` public key. The signature header may carry several
//! space-separated `version,signature` entries: a request is authentic if any entry of a known
//! version matches any configured key (several keys at once make secret rotation painless).
//! Unknown versions are skipped. The timestamp must be within the tolerance in both directions.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Most signature entries considered in one header; more is an attack, not a rotation.
pub const MAX_SIGNATURES: usize = 32;

/// One configured key.
#[derive(Clone)]
pub enum Key {
    /// `whsec_…`: HMAC-SHA256 secret for `v1`.
    Hmac(Vec<u8>),
    /// `whpk_…`: Ed25519 public key for `v1a`.
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        match self {
            Key::Hmac(_) => f.write_str("Key::Hmac(<redacted>)"),
            Key::Ed25519(_) => f.write_str("Key::Ed25519(<public key>)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a secret must start with `whsec_` (HMAC) or `whpk_` (Ed25519 public key)")]
    Prefix,
    #[error("the part after the prefix is not valid base64")]
    Base64,
    #[error("an HMAC secret must decode to at least 16 bytes")]
    TooShort,
    #[error("an Ed25519 public key must decode to 32 bytes of a valid point")]
    Ed25519,
}

impl Key {
    /// Parses `whsec_<base64>` or `whpk_<base64>`.
    pub fn parse(s: &str) -> Result<Key, KeyError> {
        let s = s.trim();
        if let Some(b) = s.strip_prefix("whsec_") {
            let bytes = B64.decode(b).map_err(|_| KeyError::Base64)?;
            if bytes.len() < 16 {
                return Err(KeyError::TooShort);
            }
            Ok(Key::Hmac(bytes))
        } else if let Some(b) = s.strip_prefix("whpk_") {
            let bytes = B64.decode(b).map_err(|_| KeyError::Base64)?;
            let arr: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Ed25519)?;
            ed25519_dalek::VerifyingKey::from_bytes(&arr)
                .map(Key::Ed25519)
                .map_err(|_| KeyError::Ed25519)
        } else {
            Err(KeyError::Prefix)
        }
    }
}

/// Why a signature check failed; the code is the JSON `error`, and says which check failed
/// without revealing anything about the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("missing_signature_headers")]
    MissingHeaders,
    #[error("invalid_timestamp")]
    InvalidTimestamp,
    #[error("timestamp_out_of_tolerance")]
    OutOfTolerance,
    #[error("malformed_signature")]
    Malformed,
    #[error("no_matching_signature")]
    NoMatch,
}

impl SigError {
    pub fn code(&self) -> &'static str {
        match self {
            SigError::MissingHeaders => "missing_signature_headers",
            SigError::InvalidTimestamp => "invalid_timestamp",
            SigError::OutOfTolerance => "timestamp_out_of_tolerance",
            SigError::Malformed => "malformed_signature",
            SigError::NoMatch => "no_matching_signature",
        }
    }

    pub fn detail(&self) -> &'static str {
        match self {
            SigError::MissingHeaders => {
                "webhook-id, webhook-timestamp and webhook-signature (or the svix-* spellings) are required"
            }
            SigError::InvalidTimestamp => "the signature timestamp is not a Unix time in seconds",
            SigError::OutOfTolerance => {
                "the signature timestamp is too far from the current time (auth.tolerance)"
            }
            SigError::Malformed => "the signature header has no well-formed signature entry",
            SigError::NoMatch => "no signature matches any configured secret",
        }
    }
}

/// One `version,signature` entry of the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    pub version: &'a str,
    pub signature: &'a str,
}

/// Splits a signature header into entries. Entries without a comma are skipped; at most
/// [`MAX_SIGNATURES`] are returned.
pub fn parse_header(h: &str) -> Vec<Entry<'_>> {
    h.split(' ')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (version, signature) = p.split_once(',')?;
            (!version.is_empty() && !signature.is_empty()).then_some(Entry { version, signature })
        })
        .take(MAX_SIGNATURES)
        .collect()
}

/// Verifies one request. `now` is injected so the tolerance can be tested.
pub fn verify(
    keys: &[Key],
    tolerance: Duration,
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now_unix: i64,
) -> Result<(), SigError> {
    let ts: i64 = timestamp
        .parse()
        .ok()
        .filter(|_| timestamp.bytes().all(|b| b.is_ascii_digit()))
        .ok_or(SigError::InvalidTimestamp)?;
    if now_unix.abs_diff(ts) > tolerance.as_secs() {
        return Err(SigError::OutOfTolerance);
    }
    let entries = parse_header(signature_header);
    let mut usable = false;
    let mut ok = subtle::Choice::from(0);
    let mut hmacs: Option<Vec<[u8; 32]>> = None;
    for e in &entries {
        match e.version {
            "v1" => {
                let Ok(sig) = B64.decode(e.signature) else {
                    continue;
                };
                usable = true;
                let macs = hmacs.get_or_insert_with(|| {
                    keys.iter()
                        .filter_map(|k| match k {
                            Key::Hmac(secret) => Some(hmac(secret, id, timestamp, body)),
                            Key::Ed25519(_) => None,
                        })
                        .collect()
                });
                for mac in macs.iter() {
                    // ct_eq on slices of different lengths is false without comparing contents.
                    ok |= mac[..].ct_eq(&sig[..]);
                }
            }
            "v1a" => {
                let Ok(sig) = B64.decode(e.signature) else {
                    continue;
                };
                let Ok(sig) = ed25519_dalek::Signature::from_slice(&sig) else {
                    continue;
                };
                usable = true;
                for k in keys {
                    if let Key::Ed25519(pk) = k {
                        let msg = signed_content(id, timestamp, body);
                        ok |= subtle::Choice::from(pk.verify_strict(&msg, &sig).is_ok() as u8);
                    }
                }
            }
            _ => {} // unknown versions are skipped, per the spec
        }
    }
    if bool::from(ok) {
        Ok(())
    } else if !usable {
        Err(SigError::Malformed)
    } else {
        Err(SigError::NoMatch)
    }
}

fn signed_content(id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
    m.extend_from_slice(id.as_bytes());
    m.push(b'.');
    m.extend_from_slice(timestamp.as_bytes());
    m.push(b'.');
    m.extend_from_slice(body);
    m
}

fn hmac(secret: &[u8], id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Signs like a sender would (`v1,<base64>`): for tests, the load generator and the docs.
pub fn sign_v1(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let Ok(Key::Hmac(k)) = Key::parse(secret) else {
        panic!("sign_v1 needs a whsec_ secret");
    };
    format!("v1,{}", B64.encode(hmac(&k, id, timestamp, body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: Duration = Duration::from_secs(300);

    /// The public Standard Webhooks / Svix test vectors (`examples/fixtures/README.md`).
    const VECTORS: &[(&str, &str, &str, &str, &str)] = &[
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            r#"{"test": 2432232314}"#,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
        (
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            "1649367553",
            r#"{"email":"test@example.com","username":"test_user"}"#,
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        ),
    ];

    fn check(
        secret: &str,
        id: &str,
        ts: &str,
        body: &str,
        sig: &str,
        now: i64,
    ) -> Result<(), SigError> {
        verify(
            &[Key::parse(secret).unwrap()],
            TOL,
            id,
            ts,
            sig,
            body.as_bytes(),
            now,
        )
    }

    #[test]
    fn public_vectors_pass() {
        for (secret, id, ts, body, sig) in VECTORS {
            let now = ts.parse().unwrap();
            assert_eq!(check(secret, id, ts, body, sig, now), Ok(()), "{id}");
            assert_eq!(sign_v1(secret, id, ts, body.as_bytes()), *sig);
        }
    }

    #[test]
    fn documented_negative_vector_fails() {
        let (secret, id, ts, body, _) = VECTORS[0];
        let bad = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
        assert_eq!(
            check(secret, id, ts, body, bad, 1614265330),
            Err(SigError::NoMatch)
        );
    }

    /// Every one-character change to the id, timestamp, body or signature fails.
    #[test]
    fn one_character_mutations_fail() {
        for (secret, id, ts, body, sig) in VECTORS {
            let now: i64 = ts.parse().unwrap();
            let mutate = |s: &str, i: usize| -> String {
                let mut b = s.as_bytes().to_vec();
                b[i] = if b[i] == b'A' { b'B' } else { b'A' };
                String::from_utf8(b).unwrap()
            };
            for i in 0..id.len() {
                assert!(check(secret, &mutate(id, i), ts, body, sig, now).is_err());
            }
            for i in 0..ts.len() {
                // Keep the timestamp in tolerance so the signature check itself is exercised.
                let t = mutate(ts, i);
                let r = check(secret, id, &t, body, sig, t.parse().unwrap_or(now));
                assert!(r.is_err(), "ts {t}");
            }
            for i in 0..body.len() {
                assert!(check(secret, id, ts, &mutate(body, i), sig, now).is_err());
            }
            for i in 3..sig.len() - 1 {
                assert!(
                    check(secret, id, ts, body, &mutate(sig, i), now).is_err(),
                    "sig pos {i}"
                );
            }
            for i in 6..secret.len() {
                let s = mutate(secret, i);
                if let Ok(k) = Key::parse(&s) {
                    assert!(verify(&[k], TOL, id, ts, sig, body.as_bytes(), now).is_err());
                }
            }
        }
    }

    #[test]
    fn rotation_any_configured_key_and_any_entry() {
        let (secret, id, ts, body, sig) = VECTORS[0];
        let other = Key::parse(VECTORS[1].0).unwrap();
        let keys = [other.clone(), Key::parse(secret).unwrap()];
        let now = 1614265330;
        assert_eq!(
            verify(&keys, TOL, id, ts, sig, body.as_bytes(), now),
            Ok(())
        );
        // Several entries: an old signature first, then the valid one; unknown versions skipped.
        let multi = format!("v1,AAAA v2,whatever {sig} v1a,notbase64!");
        assert_eq!(
            verify(&keys, TOL, id, ts, &multi, body.as_bytes(), now),
            Ok(())
        );
        assert_eq!(
            verify(&[other], TOL, id, ts, sig, body.as_bytes(), now),
            Err(SigError::NoMatch)
        );
    }

    #[test]
    fn tolerance_edges_past_and_future() {
        let (secret, id, ts, body, sig) = VECTORS[0];
        let t: i64 = ts.parse().unwrap();
        let tol = TOL.as_secs() as i64;
        for (now, ok) in [
            (t, true),
            (t + tol, true),
            (t - tol, true),
            (t + tol + 1, false),
            (t - tol - 1, false),
        ] {
            let r = check(secret, id, ts, body, sig, now);
            assert_eq!(r.is_ok(), ok, "now = ts {:+}", now - t);
            if !ok {
                assert_eq!(r, Err(SigError::OutOfTolerance));
            }
        }
    }

    #[test]
    fn malformed_inputs() {
        let (secret, id, ts, body, _) = VECTORS[0];
        let now = 1614265330;
        for h in ["", "v1", "v1,", ",abc", "v2,abc", "v1,###", "   "] {
            assert_eq!(
                check(secret, id, ts, body, h, now),
                Err(SigError::Malformed),
                "{h:?}"
            );
        }
        for t in [
            "",
            "abc",
            "-5",
            "+1614265330",
            "1614265330.0",
            "99999999999999999999",
        ] {
            assert_eq!(
                check(secret, id, t, body, "v1,AAAA", now),
                Err(SigError::InvalidTimestamp),
                "{t:?}"
            );
        }
        // Too many entries are cut, not all tried.
        let many = "v1,AAAA ".repeat(10_000);
        assert_eq!(parse_header(&many).len(), MAX_SIGNATURES);
    }

    #[test]
    fn keys_parse_and_never_print() {
        assert!(matches!(
            Key::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(KeyError::Prefix)
        ));
        assert!(matches!(Key::parse("whsec_!!!"), Err(KeyError::Base64)));
        assert!(matches!(Key::parse("whsec_AAAA"), Err(KeyError::TooShort)));
        assert!(matches!(Key::parse("whpk_AAAA"), Err(KeyError::Ed25519)));
        let k = Key::parse(VECTORS[0].0).unwrap();
        assert!(!format!("{k:?}").contains("MfKQ"));
    }

    #[test]
    fn ed25519_v1a() {
        use ed25519_dalek::{Signer, SigningKey};
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let pk = format!("whpk_{}", B64.encode(sk.verifying_key().as_bytes()));
        let key = Key::parse(&pk).unwrap();
        let (id, ts, body) = ("msg_1", "1700000000", b"{\"a\":1}".as_slice());
        let sig = sk.sign(&signed_content(id, ts, body));
        let header = format!("v1a,{}", B64.encode(sig.to_bytes()));
        assert_eq!(
            verify(
                std::slice::from_ref(&key),
                TOL,
                id,
                ts,
                &header,
                body,
                1700000000
            ),
            Ok(())
        );
        assert_eq!(
            verify(&[key], TOL, id, ts, &header, b"{\"a\":2}", 1700000000),
            Err(SigError::NoMatch)
        );
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(h in "\\PC*") {
            let _ = parse_header(&h);
            let _ = verify(&[Key::Hmac(vec![1; 32])], TOL, "id", "1", &h, b"", 1);
        }

        #[test]
        fn signed_bodies_verify_and_altered_ones_do_not(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            flip in proptest::num::usize::ANY,
        ) {
            let secret = VECTORS[0].0;
            let sig = sign_v1(secret, "msg_x", "1700000000", &body);
            let key = [Key::parse(secret).unwrap()];
            proptest::prop_assert_eq!(verify(&key, TOL, "msg_x", "1700000000", &sig, &body, 1700000000), Ok(()));
            if !body.is_empty() {
                let mut b = body.clone();
                let i = flip % b.len();
                b[i] ^= 1;
                proptest::prop_assert_eq!(
                    verify(&key, TOL, "msg_x", "1700000000", &sig, &b, 1700000000),
                    Err(SigError::NoMatch)
                );
            }
        }
    }
}
