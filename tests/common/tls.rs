//! TLS test kit: certificate authorities and leaf certificates made per test (rcgen), a directory
//! laid out like a mounted Kubernetes TLS secret (whose `..data` symlink is swapped atomically to
//! rotate), and a rustls client that reports which certificate the bridge presented.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A leaf certificate for `localhost` / `127.0.0.1` and its key, as PEM, plus the DER the server
/// presents.
#[derive(Clone)]
pub struct Leaf {
    /// The leaf followed by its CA: a chain as cert-manager writes it.
    pub chain_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
    /// `not_after` as Unix seconds.
    pub not_after: i64,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("hookbridge test CA {name}"),
        );
        Ca {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf with serial `serial`, valid until 1 January of `year`.
    pub fn leaf(&self, serial: u64, year: i32) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        p.serial_number = Some(rcgen::SerialNumber::from(serial));
        p.not_after = rcgen::date_time_ymd(year, 1, 1);
        let not_after = p.not_after.unix_timestamp();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            chain_pem: cert.pem() + &self.cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            not_after,
        }
    }
}

/// `tls.crt` and `tls.key` as a Kubernetes secret volume has them: symlinks through `..data`,
/// which points at a versioned directory. [`SecretDir::rotate`] writes the next version and
/// swaps `..data` with one `rename`, as the kubelet (and cert-manager through it) does.
pub struct SecretDir {
    root: PathBuf,
    version: u32,
}

impl SecretDir {
    pub fn new(root: &Path, cert_pem: &str, key_pem: &str) -> SecretDir {
        let mut s = SecretDir {
            root: root.to_owned(),
            version: 0,
        };
        s.rotate(cert_pem, key_pem);
        std::os::unix::fs::symlink("..data/tls.crt", root.join("tls.crt")).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", root.join("tls.key")).unwrap();
        s
    }

    pub fn cert_path(&self) -> PathBuf {
        self.root.join("tls.crt")
    }

    pub fn key_path(&self) -> PathBuf {
        self.root.join("tls.key")
    }

    pub fn rotate(&mut self, cert_pem: &str, key_pem: &str) {
        self.version += 1;
        let name = format!("..v{}", self.version);
        let dir = self.root.join(&name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), key_pem).unwrap();
        let tmp = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.root.join("..data")).unwrap();
    }
}

/// A client trusting `ca_pems` only (TLS 1.2 and 1.3, ALPN http/1.1). Session resumption is off:
/// a resumed session presents no certificate, and the tests want to see which one is served.
pub fn client_config(ca_pems: &[String]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in ca_pems {
        roots
            .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
            .unwrap();
    }
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

/// POSTs `body` over a fresh TLS connection to `localhost` at `addr`; returns the status and the
/// leaf certificate the server presented. Errors say which step failed.
pub async fn post(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    path: &str,
    id: &str,
    body: &str,
) -> Result<(u16, Vec<u8>), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or("no server certificate")?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\nwebhook-id: {id}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response).await {
        Ok(_) => {}
        // A peer that closes without close_notify; the response is complete or the status
        // parse below says otherwise.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(format!("read: {e}")),
    }
    let text = String::from_utf8_lossy(&response);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {text:?}"))?;
    Ok((status, leaf))
}
