//! Opening a byte stream to a broker: TCP, TLS, WebSocket, secure WebSocket.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::Error;
use crate::ws;

/// A bidirectional byte stream the client can run MQTT over.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> ByteStream for T {}

/// Whatever stream [`Transport::connect`] opened.
pub type BoxStream = Box<dyn ByteStream>;

/// How bytes reach the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `mqtt://`: plain TCP.
    Tcp,
    /// `mqtts://`: TLS over TCP.
    Tls,
    /// `ws://`: WebSocket (subprotocol `mqtt`).
    Ws,
    /// `wss://`: WebSocket over TLS.
    Wss,
}

impl Scheme {
    /// True for the schemes that run TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Tls | Self::Wss)
    }

    /// The port a broker conventionally listens on (Mosquitto's and midge's defaults).
    pub fn default_port(self) -> u16 {
        match self {
            Self::Tcp => 1883,
            Self::Tls => 8883,
            Self::Ws => 8083,
            Self::Wss => 8084,
        }
    }
}

/// TLS settings. There is no built-in trust store: a server is verified against the roots
/// of `ca_file`, `ca_dir` and the operating system's bundle (`os_certs`) together, or not at
/// all with `insecure`.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM file of the CA certificates that may sign the broker's certificate.
    pub ca_file: Option<PathBuf>,
    /// Directory whose files hold PEM CA certificates (files holding none are skipped).
    pub ca_dir: Option<PathBuf>,
    /// Trust the operating system's CA bundle: the file `SSL_CERT_FILE` names, or the first
    /// of the usual distribution locations that exists.
    pub os_certs: bool,
    /// PEM client certificate chain, for brokers that ask for one.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Skip verifying the broker's certificate and name (testing only: anyone in the middle
    /// can read and change the traffic).
    pub insecure: bool,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Transport {
    /// TCP, TLS, WebSocket or secure WebSocket.
    pub scheme: Scheme,
    /// Host name or IP address; also the TLS server name and the WebSocket `Host`.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The HTTP path of the WebSocket endpoint (`/mqtt` by convention).
    pub ws_path: String,
    /// TLS settings, used by `mqtts` and `wss`.
    pub tls: TlsOptions,
    /// Bounds the TCP connect, TLS handshake and WebSocket upgrade together.
    pub timeout: Duration,
}

impl Transport {
    /// Plain TCP to `host:port`, with a 10 s connect timeout.
    pub fn tcp(host: impl Into<String>, port: u16) -> Self {
        Self {
            scheme: Scheme::Tcp,
            host: host.into(),
            port,
            ws_path: "/mqtt".to_owned(),
            tls: TlsOptions::default(),
            timeout: Duration::from_secs(10),
        }
    }

    /// Opens the stream: TCP connect, then the TLS handshake and/or WebSocket upgrade.
    pub async fn connect(&self) -> Result<BoxStream, Error> {
        // The TLS configuration is checked first: a bad file is a usage problem, not a
        // network one, and is reported even when the broker is down.
        let tls = if self.scheme.is_tls() {
            Some(client_config(&self.tls)?)
        } else {
            None
        };
        tokio::time::timeout(self.timeout, self.open(tls))
            .await
            .map_err(|_| Error::Timeout("connecting (TCP, TLS or WebSocket handshake)"))?
    }

    async fn open(&self, tls: Option<Arc<ClientConfig>>) -> Result<BoxStream, Error> {
        let address = format!("{}:{}", self.host, self.port);
        let tcp = TcpStream::connect(address.as_str())
            .await
            .map_err(|e| Error::network(format!("cannot connect to {address}"), e))?;
        // MQTT packets are small and latency matters more than segment count.
        let _ = tcp.set_nodelay(true);
        let stream: BoxStream = match tls {
            Some(config) => {
                let name = ServerName::try_from(self.host.clone()).map_err(|_| {
                    Error::TlsConfig(format!("{:?} is not a valid server name", self.host))
                })?;
                let tls = TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| Error::network(format!("TLS handshake with {address}"), e))?;
                Box::new(tls)
            }
            None => Box::new(tcp),
        };
        match self.scheme {
            Scheme::Tcp | Scheme::Tls => Ok(stream),
            Scheme::Ws | Scheme::Wss => {
                let url = format!(
                    "{}://{}:{}{}",
                    if self.scheme == Scheme::Wss {
                        "wss"
                    } else {
                        "ws"
                    },
                    bracket_ipv6(&self.host),
                    self.port,
                    self.ws_path
                );
                let ws = ws::connect(&url, stream).await?;
                Ok(Box::new(ws))
            }
        }
    }
}

fn bracket_ipv6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls configuration: roots from `ca_file`, `ca_dir` and the OS bundle (or no
/// verification with `insecure`), and a client certificate if one is given.
pub(crate) fn client_config(options: &TlsOptions) -> Result<Arc<ClientConfig>, Error> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::TlsConfig(e.to_string()))?;
    let builder = if options.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        builder.with_root_certificates(roots(options)?)
    };
    let config = match (&options.cert_file, &options.key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| Error::TlsConfig(format!("{}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::TlsConfig(format!("client certificate: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(Error::TlsConfig(
                "a client certificate needs both a certificate and a key file".to_owned(),
            ));
        }
    };
    Ok(Arc::new(config))
}

/// Every root the options name, all trusted together.
fn roots(options: &TlsOptions) -> Result<RootCertStore, Error> {
    if options.ca_file.is_none() && options.ca_dir.is_none() && !options.os_certs {
        return Err(Error::TlsConfig(
            "no CA certificate to verify the broker with: give a CA file or directory, or use \
             the operating system's CA bundle (there is no built-in trust store), or skip \
             verification (insecure)"
                .to_owned(),
        ));
    }
    let mut roots = RootCertStore::empty();
    if let Some(ca_file) = &options.ca_file {
        for cert in read_certs(ca_file)? {
            roots
                .add(cert)
                .map_err(|e| Error::TlsConfig(format!("{}: {e}", ca_file.display())))?;
        }
    }
    if let Some(dir) = &options.ca_dir {
        add_lenient(&mut roots, read_cert_dir(dir)?, dir)?;
    }
    if options.os_certs {
        let bundle = os_ca_bundle()?;
        add_lenient(&mut roots, read_certs(&bundle)?, &bundle)?;
    }
    Ok(roots)
}

/// Adds the certificates webpki accepts as trust anchors. Shared stores (an OS bundle, a
/// hashed certificate directory) can hold a few that it rejects, and one of those should
/// not make the rest unusable; only a source that yields nothing is an error.
fn add_lenient(
    roots: &mut RootCertStore,
    certs: Vec<CertificateDer<'static>>,
    source: &Path,
) -> Result<(), Error> {
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::TlsConfig(format!(
            "{}: no usable CA certificate",
            source.display()
        )));
    }
    Ok(())
}

/// The PEM certificates of every regular file in `dir` (symbolic links followed), in name
/// order. Mosquitto's `--capath` reads an OpenSSL hashed directory (`c_rehash`); reading
/// every file finds the same certificates there and also works on a plain directory.
/// Files that hold no certificate (keys, READMEs, the hash links' other content) are skipped.
fn read_cert_dir(dir: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let describe = |e: std::io::Error| Error::TlsConfig(format!("{}: {e}", dir.display()));
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(describe)? {
        let path = entry.map_err(describe)?.path();
        // metadata follows symbolic links, as c_rehash directories are made of them.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            paths.push(path);
        }
    }
    paths.sort();
    let mut certs = Vec::new();
    for path in paths {
        certs.extend(
            CertificateDer::pem_file_iter(&path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| Error::TlsConfig(format!("{}: {e}", path.display())))?,
        );
    }
    if certs.is_empty() {
        return Err(Error::TlsConfig(format!(
            "{}: no PEM certificate in the directory's files",
            dir.display()
        )));
    }
    Ok(certs)
}

/// Where the usual operating systems keep their CA bundle, most common first.
const OS_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL, CentOS
    "/etc/ssl/ca-bundle.pem",             // openSUSE
    "/etc/ssl/cert.pem",                  // Alpine, macOS
];

/// The operating system's CA bundle: the file `SSL_CERT_FILE` names when it is set (as
/// OpenSSL does), otherwise the first of the usual locations that exists.
fn os_ca_bundle() -> Result<PathBuf, Error> {
    find_bundle(std::env::var_os("SSL_CERT_FILE"), OS_CA_BUNDLES)
}

fn find_bundle(env: Option<std::ffi::OsString>, candidates: &[&str]) -> Result<PathBuf, Error> {
    if let Some(file) = env.filter(|file| !file.is_empty()) {
        // Named explicitly: a missing file is reported when it is read, not skipped.
        return Ok(PathBuf::from(file));
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .ok_or_else(|| {
            Error::TlsConfig(format!(
                "no operating system CA bundle found (looked for {}; set SSL_CERT_FILE)",
                candidates.join(", ")
            ))
        })
}

fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::TlsConfig(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::TlsConfig(format!(
            "{}: no certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// Accepts any certificate and name but still checks the handshake signatures, so the
/// session is at least bound to the key the server presented.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_without_a_ca_file_or_insecure_is_refused_with_advice() {
        let error = client_config(&TlsOptions::default()).unwrap_err();
        assert!(
            error.to_string().contains("no built-in trust store")
                && error.to_string().contains("directory"),
            "{error}"
        );
        assert!(
            client_config(&TlsOptions {
                insecure: true,
                ..TlsOptions::default()
            })
            .is_ok()
        );
    }

    #[test]
    fn unreadable_ca_file_names_the_file() {
        let error = client_config(&TlsOptions {
            ca_file: Some("/nonexistent/ca.crt".into()),
            ..TlsOptions::default()
        })
        .unwrap_err();
        assert!(error.to_string().contains("/nonexistent/ca.crt"), "{error}");
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let error = client_config(&TlsOptions {
            insecure: true,
            cert_file: Some("client.crt".into()),
            ..TlsOptions::default()
        })
        .unwrap_err();
        assert!(error.to_string().contains("both"), "{error}");
    }

    fn ca_pem() -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn ca_dir_trusts_every_file_with_certificates_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.pem"), ca_pem()).unwrap();
        std::fs::write(dir.path().join("b.pem"), ca_pem() + &ca_pem()).unwrap();
        std::fs::write(dir.path().join("README"), "not a certificate\n").unwrap();
        std::fs::create_dir(dir.path().join("subdir")).unwrap();
        assert_eq!(read_cert_dir(dir.path()).unwrap().len(), 3);
        let options = TlsOptions {
            ca_dir: Some(dir.path().to_owned()),
            ..TlsOptions::default()
        };
        assert_eq!(roots(&options).unwrap().len(), 3);
        assert!(client_config(&options).is_ok());
    }

    #[test]
    fn ca_dir_without_certificates_names_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "nothing here\n").unwrap();
        let error = client_config(&TlsOptions {
            ca_dir: Some(dir.path().to_owned()),
            ..TlsOptions::default()
        })
        .unwrap_err();
        let text = error.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(text.contains("no PEM certificate"), "{text}");
    }

    #[test]
    fn ca_file_and_ca_dir_roots_are_combined() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        std::fs::write(certs.join("one.pem"), ca_pem()).unwrap();
        let file = dir.path().join("ca.crt");
        std::fs::write(&file, ca_pem()).unwrap();
        let options = TlsOptions {
            ca_file: Some(file),
            ca_dir: Some(certs),
            ..TlsOptions::default()
        };
        assert_eq!(roots(&options).unwrap().len(), 2);
    }

    #[test]
    fn os_bundle_is_ssl_cert_file_or_the_first_existing_location() {
        let dir = tempfile::tempdir().unwrap();
        let second = dir.path().join("second.crt");
        let third = dir.path().join("third.crt");
        std::fs::write(&second, "").unwrap();
        std::fs::write(&third, "").unwrap();
        let missing = dir.path().join("missing.crt");
        let candidates = [
            missing.to_str().unwrap(),
            second.to_str().unwrap(),
            third.to_str().unwrap(),
        ];
        assert_eq!(find_bundle(None, &candidates).unwrap(), second);
        // SSL_CERT_FILE wins, even over existing locations; empty means unset.
        assert_eq!(
            find_bundle(Some("/my/bundle.pem".into()), &candidates).unwrap(),
            PathBuf::from("/my/bundle.pem")
        );
        assert_eq!(find_bundle(Some("".into()), &candidates).unwrap(), second);
        let error = find_bundle(None, &candidates[..1]).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("missing.crt") && text.contains("SSL_CERT_FILE"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_a_network_error() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let error = Transport::tcp("127.0.0.1", port)
            .connect()
            .await
            .unwrap_err();
        assert!(error.is_network(), "{error:?}");
        assert!(
            error.to_string().contains("cannot connect to 127.0.0.1"),
            "{error}"
        );
    }
}
