//! Client certificates as Mosquitto users make them, with the openssl command line: X.509
//! v1 certificates from `openssl x509 -req` without an extension file (Mosquitto's TLS
//! guide), v3 ones for comparison, an expired one, one from another CA, and CRLs made by
//! `openssl ca`. mosquitto_pub is the client.

use std::path::PathBuf;
use std::process::Command;

use midge_broker::config::{CertIdentity, TlsConfig};
use midge_broker::{Config, Server};
use rustls::pki_types::pem::PemObject;

use crate::access_support::TempDir;
use crate::harness::TIMEOUT;
use crate::interop_util::{Tool, require, run};
use crate::tls::{LogCapture, listener, start};

/// `openssl ca`'s settings: a database for revocations and CRL numbers (which make a v2
/// CRL, the kind rustls-webpki reads). No extension section, so `openssl ca` signs v1
/// certificates as `openssl x509 -req` does.
const CA_CONFIG: &str = "\
[ca]
default_ca = ca_default
[ca_default]
database = index.txt
new_certs_dir = .
serial = serial
crlnumber = crlnumber
default_md = sha256
default_crl_days = 30
policy = policy_any
[policy_any]
commonName = supplied
";

/// A CA in a temporary directory, and the certificates it signs, all made by openssl.
struct OpensslCa {
    dir: TempDir,
}

impl OpensslCa {
    /// The CA (as in Mosquitto's guide) and a v3 server certificate for 127.0.0.1.
    fn new(label: &str) -> Self {
        let ca = Self {
            dir: TempDir::new(label),
        };
        ca.dir.write("ca.cnf", CA_CONFIG);
        ca.dir.write("index.txt", "");
        ca.dir.write("crlnumber", "1000\n");
        ca.dir.write("serial", "2000\n");
        let subject = format!("/CN=midge test CA {label}");
        ca.openssl(&[
            "req",
            "-new",
            "-x509",
            "-days",
            "30",
            "-extensions",
            "v3_ca",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            &subject,
        ]);
        ca.dir
            .write("server.ext", "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
        ca.openssl(&["genrsa", "-out", "server.key", "2048"]);
        ca.openssl(&[
            "req",
            "-new",
            "-key",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        ca.openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "30",
            "-extfile",
            "server.ext",
        ]);
        ca
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn key_and_request(&self, name: &str, common_name: &str) {
        self.openssl(&["genrsa", "-out", &format!("{name}.key"), "2048"]);
        let subject = format!("/CN={common_name}");
        let (key, csr) = (format!("{name}.key"), format!("{name}.csr"));
        self.openssl(&["req", "-out", &csr, "-key", &key, "-new", "-subj", &subject]);
    }

    /// Exactly the recipe of Mosquitto's TLS guide: an X.509 v1 certificate.
    fn client_v1(&self, name: &str, common_name: &str) {
        self.key_and_request(name, common_name);
        let (csr, crt) = (format!("{name}.csr"), format!("{name}.crt"));
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
        ]);
    }

    /// The same with an extension file, which makes a v3 certificate.
    fn client_v3(&self, name: &str, common_name: &str) {
        self.key_and_request(name, common_name);
        self.dir.write("client.ext", "basicConstraints=CA:FALSE\n");
        let (csr, crt) = (format!("{name}.csr"), format!("{name}.crt"));
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-extfile",
            "client.ext",
        ]);
    }

    /// A v1 certificate that expired in 2020 (`openssl x509 -req` cannot backdate).
    fn client_v1_expired(&self, name: &str, common_name: &str) {
        self.key_and_request(name, common_name);
        let (csr, crt) = (format!("{name}.csr"), format!("{name}.crt"));
        self.openssl(&[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-cert",
            "ca.crt",
            "-keyfile",
            "ca.key",
            "-in",
            &csr,
            "-out",
            &crt,
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200201000000Z",
        ]);
    }

    fn revoke(&self, name: &str) {
        let crt = format!("{name}.crt");
        self.openssl(&[
            "ca", "-config", "ca.cnf", "-cert", "ca.crt", "-keyfile", "ca.key", "-revoke", &crt,
        ]);
    }

    /// Writes `crl.pem` listing what has been revoked so far.
    fn write_crl(&self) -> PathBuf {
        self.openssl(&[
            "ca", "-config", "ca.cnf", "-cert", "ca.crt", "-keyfile", "ca.key", "-gencrl", "-out",
            "crl.pem",
        ]);
        self.path("crl.pem")
    }

    /// A listener's TLS settings: client certificates required, their CN the user name.
    fn settings(&self, crl: Option<PathBuf>) -> TlsConfig {
        TlsConfig {
            cert: self.path("server.crt"),
            key: self.path("server.key"),
            client_ca: Some(self.path("ca.crt")),
            require_client_cert: true,
            crl,
            cert_identity: CertIdentity::Cn,
        }
    }
}

/// Runs mosquitto_pub with the client certificate `name` from `issuer`, trusting `ca`'s
/// CA; returns whether it succeeded, and what it printed.
async fn mosquitto_pub(
    port: u16,
    ca: &OpensslCa,
    issuer: &OpensslCa,
    name: &str,
) -> (bool, String) {
    mosquitto_pub_tls(port, ca, issuer, name, "tlsv1.3").await
}

async fn mosquitto_pub_tls(
    port: u16,
    ca: &OpensslCa,
    issuer: &OpensslCa,
    name: &str,
    version: &str,
) -> (bool, String) {
    require(Tool::MosquittoClients);
    let path = |dir: &OpensslCa, file: &str| dir.path(file).display().to_string();
    let args: Vec<String> = [
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "--cafile",
        &path(ca, "ca.crt"),
        "--cert",
        &path(issuer, &format!("{name}.crt")),
        "--key",
        &path(issuer, &format!("{name}.key")),
        "-i",
        name,
        "-t",
        "certs/test",
        "-m",
        "hello",
        "--tls-version",
        version,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let out = run("mosquitto_pub", &args, TIMEOUT).await;
    (out.status.success(), out.stderr)
}

/// Only a verified certificate lets a client in: nobody is anonymous.
fn closed(config: &mut Config) {
    config.auth.allow_anonymous = Some(false);
}

#[tokio::test]
async fn v1_client_certificates_from_mosquittos_recipe_are_accepted() {
    let ca = OpensslCa::new("v1-ok");
    ca.client_v1("client", "device-1");
    ca.client_v3("modern", "device-2");
    let text = std::fs::read(ca.path("client.crt")).unwrap();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(&text).unwrap();
    // The recipe gives X.509 v1: the TBS starts with the serial, no [0] version field.
    assert_eq!(der[4..6], [0x30, 0x82][..], "TBS is a long SEQUENCE");
    assert_eq!(
        der[8], 0x02,
        "v1 certificate: the serial number comes first"
    );

    let (server, ports) = start(vec![listener(Some(ca.settings(None)))], closed).await;
    // TLS 1.2 and 1.3 check the client's handshake signature differently.
    for version in ["tlsv1.2", "tlsv1.3"] {
        for name in ["client", "modern"] {
            let (ok, stderr) = mosquitto_pub_tls(ports[0], &ca, &ca, name, version).await;
            assert!(
                ok,
                "mosquitto_pub --cert {name}.crt ({version}) refused: {stderr}"
            );
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn v1_certificates_from_another_ca_or_expired_are_refused_and_logged() {
    let (logs, _guard) = LogCapture::start();
    let ca = OpensslCa::new("v1-bad");
    let other = OpensslCa::new("v1-other");
    other.client_v1("stranger", "device-1");
    ca.client_v1_expired("old", "device-2");
    let (server, ports) = start(
        vec![
            listener(Some(ca.settings(None))),
            listener(Some(ca.settings(None))),
        ],
        |config| {
            closed(config);
            // [log]: two lines per address and window, to see the limit at work.
            config.log.lines_per_peer = 2;
        },
    )
    .await;
    let (ok, _) = mosquitto_pub(ports[0], &ca, &other, "stranger").await;
    assert!(!ok, "a v1 certificate from another CA was accepted");
    let (ok, _) = mosquitto_pub(ports[1], &ca, &ca, "old").await;
    assert!(!ok, "an expired v1 certificate was accepted");
    // A third failure from the same address within the window is not logged.
    let (ok, _) = mosquitto_pub(ports[0], &ca, &other, "stranger").await;
    assert!(!ok);

    let failures = logs.lines_with("TLS handshake failed");
    let on = |port: u16| -> Vec<&String> {
        failures
            .iter()
            .filter(|line| {
                let local = format!("local=127.0.0.1:{port}");
                line.split_whitespace().any(|field| field == local)
            })
            .collect()
    };
    let (stranger, old) = (on(ports[0]), on(ports[1]));
    assert_eq!(stranger.len(), 1, "{failures:#?}");
    assert!(stranger[0].contains(" WARN "), "{}", stranger[0]);
    assert!(stranger[0].contains("peer=127.0.0.1:"), "{}", stranger[0]);
    assert!(stranger[0].contains("UnknownIssuer"), "{}", stranger[0]);
    assert_eq!(old.len(), 1, "{failures:#?}");
    assert!(old[0].contains("Expired"), "{}", old[0]);
    server.shutdown().await;
}

#[tokio::test]
async fn revoked_client_certificates_are_refused_and_the_crl_reloads() {
    let (logs, _guard) = LogCapture::start();
    let ca = OpensslCa::new("crl");
    ca.client_v1("good-v1", "good-1");
    ca.client_v1("revoked-v1", "revoked-1");
    ca.client_v3("good-v3", "good-3");
    ca.client_v3("revoked-v3", "revoked-3");
    ca.revoke("revoked-v1");
    ca.revoke("revoked-v3");
    let crl = ca.write_crl();
    let (server, ports) = start(vec![listener(Some(ca.settings(Some(crl))))], closed).await;
    for (name, accepted) in [
        ("good-v1", true),
        ("revoked-v1", false),
        ("good-v3", true),
        ("revoked-v3", false),
    ] {
        let (ok, stderr) = mosquitto_pub(ports[0], &ca, &ca, name).await;
        assert_eq!(ok, accepted, "{name}: {stderr}");
    }
    assert!(
        logs.lines_with("TLS handshake failed")
            .iter()
            .any(|line| line.contains("Revoked")),
        "the revocation is logged"
    );
    // Revoking good-v1 and reloading: the new CRL applies to new connections.
    ca.revoke("good-v1");
    ca.write_crl();
    server.reload().await.expect("reload");
    let (ok, _) = mosquitto_pub(ports[0], &ca, &ca, "good-v1").await;
    assert!(
        !ok,
        "a certificate revoked by the reloaded CRL was accepted"
    );
    let (ok, stderr) = mosquitto_pub(ports[0], &ca, &ca, "good-v3").await;
    assert!(ok, "{stderr}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_crl_of_another_ca_stops_the_start_with_its_path() {
    let ca = OpensslCa::new("crl-mine");
    let other = OpensslCa::new("crl-other");
    let crl = other.write_crl();
    let mut config = Config {
        listeners: vec![listener(Some(ca.settings(Some(crl.clone()))))],
        ..crate::harness::test_config()
    };
    config.sys.interval_secs = 0;
    let Err(error) = Server::start(config).await else {
        panic!("a CRL from another CA was accepted");
    };
    let message = error.to_string();
    assert!(message.contains(&crl.display().to_string()), "{message}");
    assert!(message.contains("client_ca"), "{message}");
}
