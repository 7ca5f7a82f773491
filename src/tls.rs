//! TLS for the webhook listener: loads `http.tls.cert_file` / `http.tls.key_file`, hands the
//! accept loop (`server.rs`) a rustls acceptor, and reloads the pair when the files change.
//!
//! The `ServerConfig` is built once (ring provider, TLS 1.3 and 1.2 only, ALPN `http/1.1`); what
//! changes is the certificate it presents, which a [`ResolvesServerCert`] reads from a slot on
//! every handshake. A reload swaps the slot: handshakes already done keep the old certificate,
//! every later one gets the new. A reload that fails (unreadable or half-written files, no
//! certificate, a key that does not match) leaves the slot alone — the bridge keeps serving the
//! certificate it has — and is logged and counted.
//!
//! Change detection compares, every `http.tls.reload_interval`, a fingerprint of both files:
//! the resolved path (so a symlink swap, as cert-manager's and Kubernetes' `..data` link does,
//! is seen) and a digest of the content (an in-place rewrite). A certificate written in two steps (the
//! chain, then the key) may be caught half-way: that reload fails and the next change, the second
//! write, is loaded. A pair that fails is not retried until one of the files changes again.
//!
//! This module never logs key material; errors name the configuration key and the file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{self, TlsConfig};
use crate::metrics::Metrics;

const CERT_KEY: &str = "http.tls.cert_file";
const KEY_KEY: &str = "http.tls.key_file";

/// Why a certificate and key could not be loaded, at startup or on a reload.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read (missing, permissions, a dangling symlink).
    #[error("{}: {source}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The certificate file is not well-formed PEM.
    #[error("{}: not a well-formed PEM file: {reason}", path.display())]
    CertPem { path: PathBuf, reason: String },
    /// The certificate file holds no `BEGIN CERTIFICATE` section.
    #[error("{}: no PEM certificate (BEGIN CERTIFICATE) in the file", path.display())]
    NoCertificate { path: PathBuf },
    /// The key file is not well-formed PEM (the details are not printed: they could quote key
    /// material).
    #[error("{}: not a well-formed PEM file", path.display())]
    KeyPem { path: PathBuf },
    /// The key file holds no private key in a supported form.
    #[error("{}: no private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) in the file", path.display())]
    NoKey { path: PathBuf },
    /// The key parsed as PEM but rustls cannot use it (unsupported algorithm, corrupt DER).
    #[error("{}: unusable private key: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    /// The key is not the key of the first (leaf) certificate in the chain, or the leaf
    /// certificate cannot be parsed.
    #[error("the key in {} does not match the certificate in {} ({reason})", key_path.display(), cert_path.display())]
    Mismatch {
        cert_path: PathBuf,
        key_path: PathBuf,
        reason: String,
    },
}

impl Error {
    /// The configuration key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            Error::Read { key, .. } => key,
            Error::CertPem { .. } | Error::NoCertificate { .. } => CERT_KEY,
            Error::KeyPem { .. }
            | Error::NoKey { .. }
            | Error::BadKey { .. }
            | Error::Mismatch { .. } => KEY_KEY,
        }
    }
}

/// The certificate currently presented; swapped by [`Tls::reload_if_changed`].
struct Slot(RwLock<Arc<CertifiedKey>>);

// By hand: nothing about the key is printed.
impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot(..)")
    }
}

impl ResolvesServerCert for Slot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a complete Arc (the write is a single assignment).
        Some(
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// What identifies the files' current content without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint([Option<FileId>; 2]);

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileId {
    /// Where the path leads after every symlink.
    resolved: PathBuf,
    /// SHA-256 of the content. Reading two small files every few seconds costs nothing, and
    /// unlike size and mtime (whose granularity is a kernel tick) it cannot miss a rewrite.
    digest: [u8; 32],
}

fn file_id(path: &Path) -> Option<FileId> {
    use sha2::Digest;
    Some(FileId {
        resolved: std::fs::canonicalize(path).ok()?,
        digest: sha2::Sha256::digest(std::fs::read(path).ok()?).into(),
    })
}

/// What a successful load produced.
struct Loaded {
    key: Arc<CertifiedKey>,
    /// notAfter of the leaf, as Unix seconds, when it could be read.
    not_after: Option<i64>,
}

/// TLS for one listener: the fixed `ServerConfig`, the certificate slot, and where the files are.
#[derive(Clone)]
pub struct Tls {
    cert_path: PathBuf,
    key_path: PathBuf,
    reload_interval: Duration,
    handshake_timeout: Duration,
    provider: Arc<CryptoProvider>,
    slot: Arc<Slot>,
    server: Arc<ServerConfig>,
    /// The fingerprint of the pair in the slot (or of the last pair that failed to load), and the
    /// leaf's notAfter.
    state: Arc<std::sync::Mutex<(Fingerprint, Option<i64>)>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert_file", &self.cert_path)
            .field("key_file", &self.key_path)
            .field("reload_interval", &self.reload_interval)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the configured pair; `None` when `[http.tls]` is off. Errors name the key and the
    /// file, so a bad pair stops the bridge at startup with a message saying which.
    pub fn from_config(c: &TlsConfig) -> Result<Option<Tls>, config::Error> {
        let (Some(cert_path), Some(key_path)) = (&c.cert_file, &c.key_file) else {
            return Ok(None);
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let fingerprint = fingerprint(cert_path, key_path);
        let loaded = load(cert_path, key_path, &provider)
            .map_err(|e| config::invalid(e.key(), e.to_string()))?;
        let slot = Arc::new(Slot(RwLock::new(loaded.key)));
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| config::invalid(CERT_KEY, e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(slot.clone());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Tls {
            cert_path: cert_path.clone(),
            key_path: key_path.clone(),
            reload_interval: c.reload_interval,
            handshake_timeout: c.handshake_timeout,
            provider,
            slot,
            server: Arc::new(server),
            state: Arc::new(std::sync::Mutex::new((fingerprint, loaded.not_after))),
        }))
    }

    /// The acceptor for the accept loop; it always presents the current certificate.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// notAfter of the certificate presented now, as Unix seconds.
    pub fn not_after(&self) -> Option<i64> {
        self.lock_state().1
    }

    /// The leaf certificate presented now (DER).
    pub fn current_leaf(&self) -> CertificateDer<'static> {
        let key = self.slot.0.read().unwrap_or_else(PoisonError::into_inner);
        key.cert[0].clone()
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, (Fingerprint, Option<i64>)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Loads the pair again if either file changed since the last attempt. `None`: nothing
    /// changed; `Some(Ok)`: the new certificate is in use; `Some(Err)`: the old one still is.
    /// Blocking (reads files): call it off the async runtime.
    pub fn reload_if_changed(&self) -> Option<Result<(), Error>> {
        let now = fingerprint(&self.cert_path, &self.key_path);
        if now == self.lock_state().0 {
            return None;
        }
        // Remember the attempt even if it fails: a broken pair is retried once a file changes
        // again, not every interval.
        self.lock_state().0 = now;
        Some(
            load(&self.cert_path, &self.key_path, &self.provider).map(|loaded| {
                *self.slot.0.write().unwrap_or_else(PoisonError::into_inner) = loaded.key;
                self.lock_state().1 = loaded.not_after;
            }),
        )
    }

    /// Checks the files every `reload_interval` until `stop` resolves; counts each reload in
    /// `hookbridge_tls_reloads_total{result}` and keeps the expiry gauge current. Returns at
    /// once when reloading is off (`0s`).
    pub async fn watch(self, metrics: Arc<Metrics>, stop: impl std::future::Future<Output = ()>) {
        metrics.tls_cert_expiry.set(self.not_after().unwrap_or(0));
        for result in ["ok", "error"] {
            metrics.tls_reloads.with_label_values(&[result]);
        }
        if self.reload_interval.is_zero() {
            return;
        }
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(self.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            let tls = self.clone();
            let Ok(outcome) = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await
            else {
                continue;
            };
            match outcome {
                None => {}
                Some(Ok(())) => {
                    metrics.tls_reloads.with_label_values(&["ok"]).inc();
                    let not_after = self.not_after();
                    metrics.tls_cert_expiry.set(not_after.unwrap_or(0));
                    tracing::info!(
                        cert_file = %self.cert_path.display(),
                        not_after,
                        "TLS certificate reloaded; new connections get the new certificate"
                    );
                }
                Some(Err(e)) => {
                    metrics.tls_reloads.with_label_values(&["error"]).inc();
                    tracing::error!(
                        key = e.key(),
                        error = %e,
                        "TLS certificate reload failed; still serving the previous certificate"
                    );
                }
            }
        }
    }
}

fn fingerprint(cert: &Path, key: &Path) -> Fingerprint {
    Fingerprint([file_id(cert), file_id(key)])
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

fn load(cert_path: &Path, key_path: &Path, provider: &CryptoProvider) -> Result<Loaded, Error> {
    let cert_pem = read(CERT_KEY, cert_path)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::CertPem {
            path: cert_path.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(Error::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key_pem = read(KEY_KEY, key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => Error::NoKey {
            path: key_path.to_owned(),
        },
        _ => Error::KeyPem {
            path: key_path.to_owned(),
        },
    })?;
    let not_after = not_after(&chain[0]);
    // `from_der` loads the key and checks that its public half is the leaf's.
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) | rustls::Error::InvalidCertificate(_) => {
            Error::Mismatch {
                cert_path: cert_path.to_owned(),
                key_path: key_path.to_owned(),
                reason: e.to_string(),
            }
        }
        other => Error::BadKey {
            path: key_path.to_owned(),
            reason: other.to_string(),
        },
    })?;
    Ok(Loaded {
        key: Arc::new(key),
        not_after,
    })
}

/// One DER element at the start of `b`: (tag, contents, the rest). Definite lengths only, as
/// DER requires.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for _ in 0..n {
            let (&x, rest) = b.split_first()?;
            len = (len << 8) | x as usize;
            b = rest;
        }
        len
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// The notAfter of an X.509 certificate, as Unix seconds: `Certificate → tbsCertificate →
/// [version] serialNumber signature issuer validity → notAfter` (RFC 5280 §4.1). A few lines
/// instead of an X.509 crate: only this one field is needed, for the expiry gauge; rustls has
/// already parsed the certificate properly. `None` for anything unexpected.
fn not_after(cert: &[u8]) -> Option<i64> {
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, cert, _) = tlv(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after_version) = tlv(rest)?;
    if tag == 0xa0 {
        // The explicit version; absent in a v1 certificate.
        rest = after_version;
    }
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        let (_, _, r) = tlv(rest)?;
        rest = r;
    }
    let (SEQUENCE, validity, _) = tlv(rest)? else {
        return None;
    };
    let (_, _, validity) = tlv(validity)?;
    let (tag, time, _) = tlv(validity)?;
    x509_time(tag, time)
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, tag 0x18), the
/// forms RFC 5280 allows, as Unix seconds.
fn x509_time(tag: u8, t: &[u8]) -> Option<i64> {
    if !t.ends_with(b"Z") || !t[..t.len() - 1].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let digits = &t[..t.len() - 1];
    let num = |s: &[u8]| s.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    let (year, rest) = match (tag, digits.len()) {
        // RFC 5280 §4.1.2.5.1: YY >= 50 is 19YY, else 20YY.
        (0x17, 12) => {
            let yy = num(&digits[..2]);
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (0x18, 14) => (num(&digits[..4]), &digits[4..]),
        _ => return None,
    };
    let (month, day) = (num(&rest[0..2]), num(&rest[2..4]));
    let (h, m, s) = (num(&rest[4..6]), num(&rest[6..8]), num(&rest[8..10]));
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        cert_pem: String,
        key_pem: String,
        der: Vec<u8>,
    }

    fn ca() -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (p.self_signed(&key).unwrap(), key)
    }

    fn leaf(ca: &(rcgen::Certificate, rcgen::KeyPair), not_after: (i32, u8, u8)) -> Pair {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = p.signed_by(&key, &ca.0, &ca.1).unwrap();
        Pair {
            cert_pem: cert.pem() + &ca.0.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn tls_config(dir: &Path) -> TlsConfig {
        TlsConfig {
            cert_file: Some(dir.join("tls.crt")),
            key_file: Some(dir.join("tls.key")),
            ..TlsConfig::default()
        }
    }

    fn write(dir: &Path, cert: &str, key: &str) {
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
    }

    #[test]
    fn not_after_reads_both_time_forms() {
        let ca = ca();
        // UTCTime up to 2049, GeneralizedTime from 2050 (RFC 5280).
        for (date, unix) in [
            ((2031, 5, 17), 1_936_742_400),
            ((2049, 12, 31), 2_524_521_600),
            ((2050, 1, 1), 2_524_608_000),
        ] {
            let pair = leaf(&ca, date);
            assert_eq!(not_after(&pair.der), Some(unix), "{date:?}");
        }
        assert_eq!(x509_time(0x17, b"700101000000Z"), Some(0));
        for bad in [
            &b"7001010000Z"[..],
            b"700101000000",
            b"70010100000+Z",
            b"701301000000Z",
        ] {
            assert_eq!(x509_time(0x17, bad), None, "{bad:?}");
        }
        assert_eq!(not_after(b"\x30\x03\x02\x01"), None);
        assert_eq!(
            not_after(&pair_der_truncated(&leaf(&ca, (2031, 1, 1)).der)),
            None
        );
    }

    fn pair_der_truncated(der: &[u8]) -> Vec<u8> {
        der[..der.len() / 3].to_vec()
    }

    #[test]
    fn startup_errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        let a = leaf(&ca, (2031, 1, 1));
        let b = leaf(&ca, (2031, 1, 1));
        let c = tls_config(dir.path());
        let err = |c: &TlsConfig| Tls::from_config(c).unwrap_err().to_string();

        // Missing files.
        let e = err(&c);
        assert!(e.contains(CERT_KEY) && e.contains("tls.crt"), "{e}");
        std::fs::write(dir.path().join("tls.crt"), &a.cert_pem).unwrap();
        let e = err(&c);
        assert!(e.contains(KEY_KEY) && e.contains("tls.key"), "{e}");
        // A key that is not the certificate's.
        write(dir.path(), &a.cert_pem, &b.key_pem);
        let e = err(&c);
        assert!(
            e.contains(KEY_KEY) && e.contains("does not match") && e.contains("tls.crt"),
            "{e}"
        );
        // No certificate in the certificate file (a key there by mistake).
        write(dir.path(), &a.key_pem, &a.key_pem);
        let e = err(&c);
        assert!(
            e.contains(CERT_KEY) && e.contains("no PEM certificate"),
            "{e}"
        );
        // No key in the key file, and a half-written key: neither error quotes the file.
        write(dir.path(), &a.cert_pem, &a.cert_pem);
        let e = err(&c);
        assert!(e.contains(KEY_KEY) && e.contains("no private key"), "{e}");
        let half = &a.key_pem[..a.key_pem.len() / 2];
        write(dir.path(), &a.cert_pem, half);
        let e = err(&c);
        assert!(e.contains(KEY_KEY) && !e.contains(&half[40..60]), "{e}");
        // The good pair loads; its expiry is known.
        write(dir.path(), &a.cert_pem, &a.key_pem);
        let tls = Tls::from_config(&c).unwrap().unwrap();
        assert_eq!(tls.current_leaf().as_ref(), &a.der[..]);
        assert!(tls.not_after().is_some());
        assert!(Tls::from_config(&TlsConfig::default()).unwrap().is_none());
    }

    #[test]
    fn reload_swaps_only_a_good_changed_pair() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        let (a, b) = (leaf(&ca, (2031, 1, 1)), leaf(&ca, (2032, 1, 1)));
        write(dir.path(), &a.cert_pem, &a.key_pem);
        let tls = Tls::from_config(&tls_config(dir.path())).unwrap().unwrap();
        assert!(tls.reload_if_changed().is_none(), "nothing changed");

        // Half-way through a rotation: new certificate, old key. Refused; A stays.
        std::fs::write(dir.path().join("tls.crt"), &b.cert_pem).unwrap();
        let e = tls.reload_if_changed().unwrap().unwrap_err();
        assert_eq!(e.key(), KEY_KEY);
        assert_eq!(tls.current_leaf().as_ref(), &a.der[..]);
        assert!(
            tls.reload_if_changed().is_none(),
            "a failed pair is not retried unchanged"
        );
        // The key follows: B is loaded, with its expiry.
        std::fs::write(dir.path().join("tls.key"), &b.key_pem).unwrap();
        tls.reload_if_changed().unwrap().unwrap();
        assert_eq!(tls.current_leaf().as_ref(), &b.der[..]);
        assert_eq!(tls.not_after(), Some(1_956_528_000));
        // A deleted file keeps B.
        std::fs::remove_file(dir.path().join("tls.key")).unwrap();
        assert!(matches!(
            tls.reload_if_changed(),
            Some(Err(Error::Read { .. }))
        ));
        assert_eq!(tls.current_leaf().as_ref(), &b.der[..]);
    }
}
