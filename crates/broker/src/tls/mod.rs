//! TLS for listeners: rustls with the ring provider, TLS 1.2 and 1.3, certificates and keys
//! from PEM files, optional client certificates, and reloading the files without a restart.
//!
//! Each TLS listener holds a [`TlsListener`]: the paths from its `[listener.tls]` section and
//! the rustls configuration built from them. A new connection takes the configuration in
//! force when it arrives; a reload swaps it for later connections only, so connections that
//! are already up keep theirs.

mod identity;
mod verifier;
mod x509;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::config::{CertIdentity, TlsConfig};
use crate::log_limit::LogLimiter;

pub use identity::{common_name, subject_string};

/// Why a certificate, key or CA file was refused. The message names the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is not the PEM it should be.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the certificate chain, the key, or the pair.
    #[error("{path}: {reason}")]
    Rejected {
        /// The file at fault (the key file when the pair does not match).
        path: PathBuf,
        /// rustls's reason.
        reason: String,
    },
}

/// Why a TLS handshake produced no usable connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The handshake itself failed (not TLS, no acceptable version or cipher, a client
    /// certificate that does not verify, a required one missing, ...).
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    /// `cert_identity = "cn"` and the verified certificate's subject has no common name.
    #[error("the client certificate's subject has no common name to use as the user name")]
    NoCommonName,
}

/// The files that make up a listener's TLS settings, and when each last changed: a reload
/// only rebuilds when one of them did.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<Option<(SystemTime, u64)>>);

/// The TLS side of one listener: its settings and the rustls configuration in force.
#[derive(Debug)]
pub struct TlsListener {
    settings: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    /// The files' state at the last load attempt, successful or not, so a broken file is
    /// reported once rather than at every poll.
    last_attempt: Mutex<Fingerprint>,
    /// Lines about failed handshakes are limited per peer address (`[log]`).
    log_limit: Arc<LogLimiter>,
}

impl TlsListener {
    /// Loads the certificate chain, the key and the client CAs. Any problem is an error
    /// naming the file. Failed handshakes are logged within `log_limit`.
    pub fn load(settings: &TlsConfig, log_limit: Arc<LogLimiter>) -> Result<Self, TlsError> {
        let fingerprint = fingerprint(settings);
        let config = build_server_config(settings)?;
        Ok(Self {
            settings: settings.clone(),
            current: RwLock::new(Arc::new(config)),
            last_attempt: Mutex::new(fingerprint),
            log_limit,
        })
    }

    /// Completes the TLS handshake on an accepted connection with the configuration in
    /// force now, and returns the stream and, when `cert_identity` asks for it, the verified
    /// client certificate's identity.
    pub async fn accept<S: Socket>(
        &self,
        stream: S,
    ) -> Result<(TlsStream<S>, Option<String>), HandshakeError> {
        let config = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (peer, local) = stream.addresses();
        // The caller drops this future when the connect timeout passes (or at shutdown):
        // that failed handshake is logged too.
        let mut unfinished = Unfinished {
            listener: Some(self),
            peer,
            local,
        };
        let result = tokio_rustls::TlsAcceptor::from(config).accept(stream).await;
        unfinished.listener = None;
        let stream = match result {
            Ok(stream) => stream,
            Err(error) => {
                self.log_failure(peer, local, &error);
                return Err(HandshakeError::Tls(error));
            }
        };
        let identity = self.identity(&stream)?;
        Ok((stream, identity))
    }

    /// Tells the operator why a handshake failed (a client certificate refused, no common
    /// protocol version, not TLS at all, ...): the client is only told "certificate
    /// unknown" or less. Rate-limited per address.
    fn log_failure(
        &self,
        peer: Option<std::net::SocketAddr>,
        local: Option<std::net::SocketAddr>,
        error: &io::Error,
    ) {
        if peer.is_some_and(|p| !self.log_limit.allow(p.ip())) {
            return;
        }
        let show =
            |a: Option<std::net::SocketAddr>| a.map_or_else(|| "?".to_owned(), |a| a.to_string());
        let (peer, local) = (show(peer), show(local));
        tracing::warn!(%peer, %local, "TLS handshake failed: {error}");
    }

    /// The user name a verified client certificate gives, if `cert_identity` asks for one
    /// and the client presented a certificate (rustls has verified it against `client_ca`).
    fn identity<S>(&self, stream: &TlsStream<S>) -> Result<Option<String>, HandshakeError> {
        let Some(leaf) = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
        else {
            return Ok(None);
        };
        match self.settings.cert_identity {
            CertIdentity::None => Ok(None),
            CertIdentity::Cn => common_name(leaf)
                .map(Some)
                .ok_or(HandshakeError::NoCommonName),
            CertIdentity::Subject => Ok(subject_string(leaf)),
        }
    }

    /// Rebuilds the configuration from the files if any of them changed since the last
    /// attempt (or always, with `force`). New connections use the new configuration;
    /// connections already up keep theirs. On an error the configuration in force stays.
    /// Returns whether a new configuration was installed.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let now = fingerprint(&self.settings);
        {
            let mut last = self
                .last_attempt
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !force && *last == now {
                return Ok(false);
            }
            *last = now;
        }
        let config = build_server_config(&self.settings)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        Ok(true)
    }

    /// The certificate file, for logs.
    pub fn cert_path(&self) -> &Path {
        &self.settings.cert
    }
}

/// Logs a handshake whose future was dropped before it finished.
/// A connection TLS runs over: a TCP stream, or one wrapped by the listener.
pub trait Socket: AsyncRead + AsyncWrite + Unpin {
    /// The peer's and the local address, for the log line of a failed handshake.
    fn addresses(&self) -> (Option<std::net::SocketAddr>, Option<std::net::SocketAddr>);
}

impl Socket for TcpStream {
    fn addresses(&self) -> (Option<std::net::SocketAddr>, Option<std::net::SocketAddr>) {
        (self.peer_addr().ok(), self.local_addr().ok())
    }
}

struct Unfinished<'a> {
    listener: Option<&'a TlsListener>,
    peer: Option<std::net::SocketAddr>,
    local: Option<std::net::SocketAddr>,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(listener) = self.listener {
            let error = io::Error::new(
                io::ErrorKind::TimedOut,
                "not finished within mqtt.connect_timeout_secs (or the server is shutting down)",
            );
            listener.log_failure(self.peer, self.local, &error);
        }
    }
}

fn fingerprint(settings: &TlsConfig) -> Fingerprint {
    let files = [
        Some(&settings.cert),
        Some(&settings.key),
        settings.client_ca.as_ref(),
        settings.crl.as_ref(),
    ];
    Fingerprint(
        files
            .into_iter()
            .flatten()
            .map(|path| {
                // Follows symbolic links, so a renewal that repoints a link is seen too.
                let meta = std::fs::metadata(path).ok()?;
                Some((meta.modified().ok()?, meta.len()))
            })
            .collect(),
    )
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls server configuration from the files named in `settings`.
fn build_server_config(settings: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let chain = read_certificates(&settings.cert)?;
    let key = read_key(&settings.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rejected {
            path: settings.cert.clone(),
            reason: e.to_string(),
        })?;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            let cas = read_certificates(ca_path)?;
            for ca in &cas {
                roots.add(ca.clone()).map_err(|e| TlsError::Rejected {
                    path: ca_path.clone(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let crls = match &settings.crl {
                Some(path) => read_crls(path)?,
                None => Vec::new(),
            };
            let rejected = |path: &Path, reason: String| TlsError::Rejected {
                path: path.to_owned(),
                reason,
            };
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .with_crls(crls.iter().cloned());
            let verifier = if settings.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let webpki = verifier
                .build()
                .map_err(|e| rejected(settings.crl.as_deref().unwrap_or(ca_path), e.to_string()))?;
            let algorithms = provider().signature_verification_algorithms;
            let verifier = verifier::ClientVerifier::new(webpki, &cas, &crls, algorithms)
                .map_err(|reason| rejected(settings.crl.as_deref().unwrap_or(ca_path), reason))?;
            builder.with_client_cert_verifier(Arc::new(verifier))
        }
    };
    // rustls checks that the key belongs to the first certificate of the chain.
    builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rejected {
            path: settings.key.clone(),
            reason: format!(
                "does not go with the certificate in {}: {e}",
                settings.cert.display()
            ),
        })
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn pem_error(path: &Path, error: &pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        reason: format!("not valid PEM: {error}"),
    }
}

/// Every `CERTIFICATE` block in a PEM file; at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(path)?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, &e))?;
    if certificates.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            reason: "no PEM CERTIFICATE block found".to_owned(),
        });
    }
    Ok(certificates)
}

/// Every `X509 CRL` block in a PEM file; at least one.
fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = read_file(path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, &e))?;
    if crls.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            reason: "no PEM X509 CRL block found".to_owned(),
        });
    }
    Ok(crls)
}

/// The first private key in a PEM file: `PRIVATE KEY` (PKCS#8), `RSA PRIVATE KEY` (PKCS#1)
/// or `EC PRIVATE KEY` (SEC1).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::Pem {
            path: path.to_owned(),
            reason: "no PEM private key found (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
                .to_owned(),
        },
        other => pem_error(path, &other),
    })
}
