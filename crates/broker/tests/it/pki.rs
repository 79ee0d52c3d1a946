//! A throwaway PKI for the transport tests: a CA, and server and client certificates it
//! signs, made with rcgen (ring) and written as PEM files into a temporary directory. Also
//! TLS clients (tokio-rustls) that trust that CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::harness::{TIMEOUT, connect_v311};

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("midge-it-{}-{n}-{label}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate and its key, as PEM text and files.
pub struct Issued {
    pub der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// A CA and the directory its files go in.
pub struct Pki {
    pub dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    pub ca_path: PathBuf,
}

impl Pki {
    pub fn new(label: &str) -> Self {
        let dir = TempDir::new(label);
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("midge test CA {label}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_path = dir.path("ca.crt");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        Self { dir, ca, ca_path }
    }

    /// A server certificate for 127.0.0.1 and localhost, files `<name>.crt`/`<name>.key`.
    pub fn server(&self, name: &str) -> Issued {
        self.server_with_key(name, KeyPair::generate().unwrap())
    }

    /// A server certificate for a given key pair.
    pub fn server_with_key(&self, name: &str, key: KeyPair) -> Issued {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(name, params, key)
    }

    /// A client certificate whose subject is `O=<organization>, CN=<common_name>`.
    pub fn client(&self, file: &str, common_name: Option<&str>, organization: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        // Not rcgen's default subject (which has a common name).
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, organization);
        if let Some(cn) = common_name {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(file, params, KeyPair::generate().unwrap())
    }

    fn issue(&self, name: &str, params: CertificateParams, key: KeyPair) -> Issued {
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let issued = Issued {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_path: self.dir.path(&format!("{name}.crt")),
            key_path: self.dir.path(&format!("{name}.key")),
        };
        std::fs::write(&issued.cert_path, &issued.cert_pem).unwrap();
        std::fs::write(&issued.key_path, &issued.key_pem).unwrap();
        issued
    }
}

/// The inner key of a PKCS#8 `PRIVATE KEY`: for RSA that is the PKCS#1 `RSAPrivateKey`,
/// for EC the SEC1 `ECPrivateKey`. PKCS#8 is
/// `SEQUENCE { INTEGER version, SEQUENCE algorithm, OCTET STRING privateKey, ... }`.
pub fn unwrap_pkcs8(pkcs8_pem: &str) -> Vec<u8> {
    let der = PrivateKeyDer::from_pem_slice(pkcs8_pem.as_bytes()).unwrap();
    let PrivateKeyDer::Pkcs8(der) = der else {
        panic!("not PKCS#8")
    };
    let bytes = der.secret_pkcs8_der();
    let (outer, _) = der_item(bytes, 0x30);
    let (_version, rest) = der_item(outer, 0x02);
    let (_algorithm, rest) = der_item(rest, 0x30);
    let (inner, _) = der_item(rest, 0x04);
    inner.to_vec()
}

/// One DER item with the expected tag: its content and what follows it.
fn der_item(input: &[u8], tag: u8) -> (&[u8], &[u8]) {
    assert_eq!(input[0], tag, "unexpected DER tag");
    let (len, header) = match input[1] {
        n if n < 0x80 => (usize::from(n), 2),
        0x81 => (usize::from(input[2]), 3),
        0x82 => (usize::from(u16::from_be_bytes([input[2], input[3]])), 4),
        other => panic!("length form {other:#x} not used by these keys"),
    };
    (&input[header..header + len], &input[header + len..])
}

/// PEM text of `der` with the given label.
pub fn pem(label: &str, der: &[u8]) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::new();
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                text.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A TLS client configuration trusting `ca`, optionally presenting `identity`, limited to
/// `versions`.
pub fn client_config(
    ca: &Path,
    identity: Option<&Issued>,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
    let config = match identity {
        Some(issued) => builder
            .with_client_auth_cert(
                vec![issued.der.clone()],
                PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// TLS 1.2 and 1.3.
pub const ALL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Opens TCP to `port` on 127.0.0.1 and completes a TLS handshake, verifying the server
/// certificate for the IP address 127.0.0.1.
pub async fn tls_connect(
    port: u16,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio::time::timeout(
        TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("TLS handshake timed out")
}

/// Sends a v3.1.1 CONNECT and returns the 4 bytes of the answer (CONNACK), or the error
/// that ended the stream before them.
pub async fn mqtt_connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    client_id: &str,
) -> std::io::Result<[u8; 4]> {
    stream.write_all(&connect_v311(client_id)).await?;
    let mut connack = [0; 4];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut connack))
        .await
        .expect("timed out waiting for CONNACK")?;
    Ok(connack)
}

/// PINGREQ: type 12, no flags; remaining length 0.
pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
/// PINGRESP: type 13; remaining length 0.
pub const PINGRESP: [u8; 2] = [0xD0, 0x00];

/// Sends PINGREQ and expects PINGRESP: the connection is alive.
pub async fn ping<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    stream.write_all(&PINGREQ).await.expect("write PINGREQ");
    let mut answer = [0; 2];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut answer))
        .await
        .expect("timed out waiting for PINGRESP")
        .expect("read PINGRESP");
    assert_eq!(answer, PINGRESP);
}
