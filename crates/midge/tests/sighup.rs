//! The `midge` binary reloads its TLS certificate on SIGHUP: new connections get the new
//! certificate, the process keeps running, and an open connection stays up.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStderr};

const TIMEOUT: Duration = Duration::from_secs(10);

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a certificate for 127.0.0.1 signed by `ca` to cert.pem/key.pem in `dir`.
fn write_server_cert(dir: &Path, ca: &CertifiedIssuer<'_, KeyPair>) -> CertificateDer<'static> {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    cert.der().clone()
}

/// Reads the broker's log until a line contains `needle`; returns that line.
async fn wait_for_log(lines: &mut Lines<BufReader<ChildStderr>>, needle: &str) -> String {
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("the broker exited before logging `{needle}`");
    };
    tokio::time::timeout(TIMEOUT, read)
        .await
        .unwrap_or_else(|_| panic!("no `{needle}` in the log within {TIMEOUT:?}"))
}

async fn tls_connect(
    port: u16,
    config: &Arc<ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio::time::timeout(
        TIMEOUT,
        tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp),
    )
    .await
    .expect("handshake timed out")
    .expect("handshake")
}

fn send_signal(child: &Child, signal: &str) {
    let pid = child.id().expect("broker running").to_string();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sighup_gives_new_connections_the_new_certificate() {
    let dir = TempDir(std::env::temp_dir().join(format!("midge-sighup-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let first = write_server_cert(&dir.0, &ca);
    let config = dir.0.join("midge.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"\n[sys]\ninterval_secs = 0\n[storage]\nbackend = \"memory\"\n",
            dir.0.display()
        ),
    )
    .unwrap();

    let mut broker = tokio::process::Command::new(env!("CARGO_BIN_EXE_midge"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start midge");
    let mut log = BufReader::new(broker.stderr.take().unwrap()).lines();
    let listening = wait_for_log(&mut log, "listening for MQTT over mqtts").await;
    let port: u16 = listening
        .split("address=127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no address in `{listening}`"));

    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let client = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let mut old = tls_connect(port, &client).await;
    assert_eq!(old.get_ref().1.peer_certificates().unwrap()[0], first);

    let second = write_server_cert(&dir.0, &ca);
    send_signal(&broker, "-HUP");
    wait_for_log(&mut log, "SIGHUP: reloading").await;
    wait_for_log(&mut log, "reload done").await;
    let new = tls_connect(port, &client).await;
    assert_eq!(new.get_ref().1.peer_certificates().unwrap()[0], second);

    // The first connection is still served: CONNECT (v3.1.1, client id "a") gets CONNACK.
    old.write_all(&[
        0x10, 0x0D, // CONNECT, remaining length 13
        0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
        0x04, // level 4 (3.1.1)
        0x02, // clean session
        0x00, 0x3C, // keep alive 60
        0x00, 0x01, b'a', // client id "a"
    ])
    .await
    .unwrap();
    let mut connack = [0; 4];
    tokio::time::timeout(TIMEOUT, old.read_exact(&mut connack))
        .await
        .expect("CONNACK timed out")
        .unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);

    send_signal(&broker, "-TERM");
    let status = tokio::time::timeout(TIMEOUT, broker.wait())
        .await
        .expect("midge did not stop on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}
