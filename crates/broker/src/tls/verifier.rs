//! The client certificate verifier: rustls' `WebPkiClientVerifier` for X.509 v3
//! certificates, and a verification of our own for v1 end-entity certificates, which
//! rustls-webpki refuses outright but Mosquitto (OpenSSL) accepts.
//!
//! A v1 client certificate is accepted when it is signed by the key of one of the
//! `client_ca` certificates whose subject is its issuer, is within its validity period,
//! and (with `crl`) the issuer's CRL, itself signed by that CA, does not list its serial.
//! It must be issued by a `client_ca` certificate directly: a v1 certificate cannot say it
//! is a CA, so it is never an intermediate, and a chain through intermediates the client
//! sends is not built for it. The trust anchors are the same as for v3 certificates.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use super::x509;

/// A `client_ca` certificate as the v1 path needs it.
#[derive(Debug)]
struct Authority {
    /// The subject Name's content, compared with a certificate's issuer.
    subject: Vec<u8>,
    key_algorithm: Vec<u8>,
    public_key: Vec<u8>,
}

/// A CRL for the v1 path, already checked to be signed by the authority at `authority`.
#[derive(Debug)]
struct Crl {
    authority: usize,
    list: webpki::CertRevocationList<'static>,
}

/// See the module documentation.
#[derive(Debug)]
pub(super) struct ClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    authorities: Vec<Authority>,
    crls: Vec<Crl>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientVerifier {
    /// `webpki` verifies v3 certificates (built from the same CAs and CRLs). A CRL that no
    /// CA of `cas` signed is an error (the message says which).
    pub(super) fn new(
        webpki: Arc<dyn ClientCertVerifier>,
        cas: &[CertificateDer<'_>],
        crls: &[CertificateRevocationListDer<'_>],
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Result<Self, String> {
        let authorities: Vec<Authority> = cas
            .iter()
            .filter_map(|ca| x509::certificate(ca))
            .map(|ca| Authority {
                subject: ca.subject.to_vec(),
                key_algorithm: ca.key_algorithm.to_vec(),
                public_key: ca.public_key.to_vec(),
            })
            .collect();
        let mut checked = Vec::new();
        for (index, der) in crls.iter().enumerate() {
            let list = webpki::OwnedCertRevocationList::from_der(der).map_err(|e| {
                format!("CRL {}: not a CRL rustls-webpki accepts: {e:?}", index + 1)
            })?;
            let list = webpki::CertRevocationList::from(list);
            let signed =
                x509::signed(der).ok_or_else(|| format!("CRL {}: malformed", index + 1))?;
            let authority = authorities
                .iter()
                .position(|a| {
                    a.subject == list.issuer() && verify_signed(&algorithms, a, signed).is_ok()
                })
                .ok_or_else(|| {
                    format!(
                        "CRL {}: not issued and signed by any certificate in client_ca",
                        index + 1
                    )
                })?;
            checked.push(Crl { authority, list });
        }
        Ok(Self {
            webpki,
            authorities,
            crls: checked,
            algorithms,
        })
    }

    fn verify_v1(&self, certificate: &x509::Certificate<'_>, now: UnixTime) -> Result<(), Error> {
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let mut issuers = self
            .authorities
            .iter()
            .enumerate()
            .filter(|(_, a)| a.subject == certificate.issuer)
            .peekable();
        if issuers.peek().is_none() {
            return Err(CertificateError::UnknownIssuer.into());
        }
        let (index, _) = issuers
            .find(|(_, a)| verify_signed(&self.algorithms, a, certificate.signed).is_ok())
            .ok_or(CertificateError::BadSignature)?;
        if now < certificate.not_before {
            return Err(CertificateError::NotValidYet.into());
        }
        if now > certificate.not_after {
            return Err(CertificateError::Expired.into());
        }
        if self.crls.is_empty() {
            return Ok(());
        }
        // As rustls does by default: with CRLs configured, a certificate whose issuer has
        // none is refused (its status is unknown).
        let mut known = false;
        for crl in self.crls.iter().filter(|c| c.authority == index) {
            known = true;
            if crl
                .list
                .find_serial(certificate.serial)
                .map_err(|_| CertificateError::BadEncoding)?
                .is_some()
            {
                return Err(CertificateError::Revoked.into());
            }
        }
        if known {
            Ok(())
        } else {
            Err(CertificateError::UnknownRevocationStatus.into())
        }
    }
}

/// A v1 certificate, parsed; `None` for any other version or what does not parse (left
/// to webpki, which gives the precise error).
fn as_v1<'a>(certificate: &'a CertificateDer<'_>) -> Option<x509::Certificate<'a>> {
    x509::certificate(certificate).filter(|c| c.version == 0)
}

/// Checks `signed` against `authority`'s key with the algorithm the signature names.
fn verify_signed(
    algorithms: &WebPkiSupportedAlgorithms,
    authority: &Authority,
    signed: x509::Signed<'_>,
) -> Result<(), Error> {
    let algorithm = algorithms
        .all
        .iter()
        .find(|alg| {
            alg.public_key_alg_id().as_ref() == authority.key_algorithm.as_slice()
                && alg.signature_alg_id().as_ref() == signed.algorithm
        })
        .ok_or(CertificateError::BadSignature)?;
    algorithm
        .verify_signature(&authority.public_key, signed.tbs.whole, signed.signature)
        .map_err(|_| CertificateError::BadSignature.into())
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.webpki.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.webpki.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        match as_v1(end_entity) {
            Some(v1) => self
                .verify_v1(&v1, now)
                .map(|()| ClientCertVerified::assertion()),
            None => self
                .webpki
                .verify_client_cert(end_entity, intermediates, now),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let Some(v1) = as_v1(cert) else {
            return self.webpki.verify_tls12_signature(message, cert, dss);
        };
        // As rustls' own TLS 1.2 check: every algorithm of the scheme whose key type fits.
        let candidates = self
            .algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == dss.scheme)
            .map(|(_, algs)| *algs)
            .unwrap_or_default();
        let fitting = candidates
            .iter()
            .filter(|alg| alg.public_key_alg_id().as_ref() == v1.key_algorithm);
        for alg in fitting {
            if alg
                .verify_signature(v1.public_key, message, dss.signature())
                .is_ok()
            {
                return Ok(HandshakeSignatureValid::assertion());
            }
        }
        Err(CertificateError::BadSignature.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        match as_v1(cert) {
            Some(v1) => rustls::crypto::verify_tls13_signature_with_raw_key(
                message,
                &SubjectPublicKeyInfoDer::from(v1.spki),
                dss,
                &self.algorithms,
            ),
            None => self.webpki.verify_tls13_signature(message, cert, dss),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
