//! MQTT over TLS, driven by a rustls client: both protocol versions, client certificates
//! (required, optional, from the wrong CA), the certificate identity as the user name,
//! handshakes that never block accepting, bad files at start-up, and certificate reload.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use midge_broker::config::{CertIdentity, ListenerConfig, TlsConfig};
use midge_broker::{Config, Server};
use rustls::ProtocolVersion;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::harness::{CONNACK_V311_OK, TIMEOUT};
use crate::pki::{
    ALL_VERSIONS, Issued, Pki, client_config, mqtt_connect, pem, ping, tls_connect, unwrap_pkcs8,
};

/// v3.1.1 CONNACK: refused, return code 5 (not authorized).
const CONNACK_V311_NOT_AUTHORIZED: [u8; 4] = [0x20, 0x02, 0x00, 0x05];

pub fn tls_settings(server: &Issued) -> TlsConfig {
    TlsConfig {
        cert: server.cert_path.clone(),
        key: server.key_path.clone(),
        client_ca: None,
        require_client_cert: false,
        crl: None,
        cert_identity: CertIdentity::None,
    }
}

pub fn listener(tls: Option<TlsConfig>) -> ListenerConfig {
    ListenerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        tls,
        ..ListenerConfig::default()
    }
}

/// A broker with exactly these listeners, `$SYS` off. Returns it and the bound ports.
pub async fn start(
    listeners: Vec<ListenerConfig>,
    adjust: impl FnOnce(&mut Config),
) -> (Server, Vec<u16>) {
    let mut config = Config {
        listeners,
        ..crate::harness::test_config()
    };
    config.sys.interval_secs = 0;
    adjust(&mut config);
    let server = Server::start(config).await.expect("broker starts");
    let ports = server.local_addrs().iter().map(SocketAddr::port).collect();
    (server, ports)
}

#[tokio::test]
async fn tls13_only_and_tls12_only_clients_both_get_connack() {
    let pki = Pki::new("versions");
    let server_cert = pki.server("server");
    let (server, ports) = start(vec![listener(Some(tls_settings(&server_cert)))], |_| {}).await;
    for (version, expected) in [
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
    ] {
        let config = client_config(&pki.ca_path, None, &[version]);
        let mut stream = tls_connect(ports[0], config).await.expect("handshake");
        assert_eq!(stream.get_ref().1.protocol_version(), Some(expected));
        assert_eq!(
            mqtt_connect(&mut stream, "versions").await.unwrap(),
            CONNACK_V311_OK
        );
        ping(&mut stream).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn silent_client_on_the_tls_port_does_not_delay_another_clients_connect() {
    let pki = Pki::new("silent");
    let server_cert = pki.server("server");
    let (server, ports) = start(vec![listener(Some(tls_settings(&server_cert)))], |config| {
        // Far beyond TIMEOUT: if the silent clients held up accepting, the real client's
        // handshake would wait this long.
        config.mqtt.connect_timeout_secs = 120;
    })
    .await;
    // TCP connections that never send a ClientHello.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(("127.0.0.1", ports[0])).await.unwrap());
    }
    let config = client_config(&pki.ca_path, None, ALL_VERSIONS);
    let mut stream = tls_connect(ports[0], config).await.expect("handshake");
    assert_eq!(
        mqtt_connect(&mut stream, "prompt").await.unwrap(),
        CONNACK_V311_OK
    );
    drop(silent);
    server.shutdown().await;
}

#[tokio::test]
async fn silent_client_is_closed_after_the_connect_timeout() {
    let (logs, _guard) = LogCapture::start();
    let pki = Pki::new("timeout");
    let server_cert = pki.server("server");
    let (server, ports) = start(vec![listener(Some(tls_settings(&server_cert)))], |config| {
        config.mqtt.connect_timeout_secs = 1;
    })
    .await;
    let mut silent = TcpStream::connect(("127.0.0.1", ports[0])).await.unwrap();
    let mut buf = [0; 16];
    let read = tokio::time::timeout(TIMEOUT, silent.read(&mut buf))
        .await
        .expect("the broker should close a client that sends no handshake");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(server.broker().stats.snapshot().handshakes_failed, 1);
    // The operator sees who failed and why (issue 14).
    let local = silent.local_addr().unwrap();
    let logged = logs.lines_with("TLS handshake failed");
    assert!(
        logged.iter().any(|line| line.contains(" WARN ")
            && line.contains(&format!("peer={local}"))
            && line.contains("not finished within mqtt.connect_timeout_secs")),
        "{logged:#?}"
    );
    server.shutdown().await;
}

/// A TLS connection the broker closes at the deadline (no handshake, or a handshake and
/// then no CONNECT) is reset like a plain TCP one, so it leaves no TIME_WAIT entry behind.
#[tokio::test]
async fn tls_sockets_closed_at_the_deadline_leave_no_time_wait_behind() {
    let pki = Pki::new("deadline");
    let server_cert = pki.server("server");
    let (server, ports) = start(vec![listener(Some(tls_settings(&server_cert)))], |config| {
        config.mqtt.connect_timeout_secs = 1;
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(("127.0.0.1", ports[0])).await.unwrap());
    }
    let config = client_config(&pki.ca_path, None, ALL_VERSIONS);
    let mut handshaken = Vec::new();
    for _ in 0..3 {
        handshaken.push(
            tls_connect(ports[0], config.clone())
                .await
                .expect("handshake"),
        );
    }
    let mut buf = [0; 16];
    for stream in &mut silent {
        let read = tokio::time::timeout(TIMEOUT, stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
    }
    for stream in &mut handshaken {
        let read = tokio::time::timeout(TIMEOUT, stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
    }
    drop((silent, handshaken));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(crate::conn_limits::closing_sockets_on(ports[0]), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn plain_mqtt_on_the_tls_port_is_closed_and_counted() {
    let pki = Pki::new("plain");
    let server_cert = pki.server("server");
    let (server, ports) = start(vec![listener(Some(tls_settings(&server_cert)))], |_| {}).await;
    let mut plain = TcpStream::connect(("127.0.0.1", ports[0])).await.unwrap();
    let result = mqtt_connect(&mut plain, "plain").await;
    assert!(
        result.map_or(true, |answer| answer != CONNACK_V311_OK),
        "plain MQTT must not be accepted on a TLS port"
    );
    assert_eq!(server.broker().stats.snapshot().handshakes_failed, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn client_without_certificate_is_refused_when_one_is_required() {
    let pki = Pki::new("required");
    let server_cert = pki.server("server");
    let client_cert = pki.client("client", Some("device-1"), "Acme");
    let mut settings = tls_settings(&server_cert);
    settings.client_ca = Some(pki.ca_path.clone());
    settings.require_client_cert = true;
    let (server, ports) = start(vec![listener(Some(settings))], |_| {}).await;

    // TLS 1.3 lets the client finish its side before the server has checked the client's
    // certificate, so the refusal may show as a failed handshake or as the server's alert
    // ending the stream before CONNACK.
    let without = client_config(&pki.ca_path, None, ALL_VERSIONS);
    let refused = match tls_connect(ports[0], without).await {
        Err(_) => true,
        Ok(mut stream) => mqtt_connect(&mut stream, "no-cert").await.is_err(),
    };
    assert!(refused, "a client without a certificate got CONNACK");

    let with = client_config(&pki.ca_path, Some(&client_cert), ALL_VERSIONS);
    let mut stream = tls_connect(ports[0], with).await.expect("handshake");
    assert_eq!(
        mqtt_connect(&mut stream, "with-cert").await.unwrap(),
        CONNACK_V311_OK
    );
    server.shutdown().await;
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let pki = Pki::new("ca-a");
    let other = Pki::new("ca-b");
    let server_cert = pki.server("server");
    let stranger = other.client("stranger", Some("device-1"), "Elsewhere");
    let mut settings = tls_settings(&server_cert);
    settings.client_ca = Some(pki.ca_path.clone());
    // Optional client certificates: none is fine, a bad one is not.
    let (server, ports) = start(vec![listener(Some(settings))], |_| {}).await;

    let config = client_config(&pki.ca_path, Some(&stranger), ALL_VERSIONS);
    let refused = match tls_connect(ports[0], config).await {
        Err(_) => true,
        Ok(mut stream) => mqtt_connect(&mut stream, "stranger").await.is_err(),
    };
    assert!(refused, "a certificate from an unknown CA was accepted");

    let config = client_config(&pki.ca_path, None, ALL_VERSIONS);
    let mut stream = tls_connect(ports[0], config).await.expect("handshake");
    assert_eq!(
        mqtt_connect(&mut stream, "no-cert").await.unwrap(),
        CONNACK_V311_OK
    );
    server.shutdown().await;
}

/// Everything the broker logs while the guard lives, for tests that look at what an
/// operator sees. `#[tokio::test]` runs the broker's tasks on the test's own thread, so a
/// thread-local subscriber sees them.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn start() -> (Self, tracing::subscriber::DefaultGuard) {
        let capture = Self::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(capture.clone())
            .finish();
        // tracing caches each log statement's interest globally. With a single dispatcher
        // registered, a statement first reached on another test's thread (which has no
        // subscriber) is cached as never enabled; a second, permanent dispatcher makes
        // tracing ask every thread's own subscriber instead.
        static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
        SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
        (capture, tracing::subscriber::set_default(subscriber))
    }

    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

#[tokio::test]
async fn certificate_common_name_is_the_user_and_needs_no_password() {
    let (logs, _guard) = LogCapture::start();
    let pki = Pki::new("identity");
    let server_cert = pki.server("server");
    let device = pki.client("device", Some("sensor-7"), "Acme");
    let mut by_cn = tls_settings(&server_cert);
    by_cn.client_ca = Some(pki.ca_path.clone());
    by_cn.cert_identity = CertIdentity::Cn;
    let mut by_subject = by_cn.clone();
    by_subject.cert_identity = CertIdentity::Subject;
    let mut ignored = by_cn.clone();
    ignored.cert_identity = CertIdentity::None;
    let (server, ports) = start(
        vec![
            listener(Some(by_cn)),
            listener(Some(by_subject)),
            listener(Some(ignored)),
        ],
        // Nobody gets in without credentials.
        |config| config.auth.allow_anonymous = Some(false),
    )
    .await;

    let with_cert = client_config(&pki.ca_path, Some(&device), ALL_VERSIONS);
    let mut stream = tls_connect(ports[0], with_cert.clone()).await.unwrap();
    assert_eq!(
        mqtt_connect(&mut stream, "by-cn").await.unwrap(),
        CONNACK_V311_OK
    );
    let mut stream = tls_connect(ports[1], with_cert.clone()).await.unwrap();
    assert_eq!(
        mqtt_connect(&mut stream, "by-subject").await.unwrap(),
        CONNACK_V311_OK
    );
    // The same certificate on a listener that does not map identities is no credential.
    let mut stream = tls_connect(ports[2], with_cert).await.unwrap();
    assert_eq!(
        mqtt_connect(&mut stream, "ignored").await.unwrap(),
        CONNACK_V311_NOT_AUTHORIZED
    );
    // Without a certificate, the anonymous rule applies.
    let without = client_config(&pki.ca_path, None, ALL_VERSIONS);
    let mut stream = tls_connect(ports[0], without).await.unwrap();
    assert_eq!(
        mqtt_connect(&mut stream, "anonymous").await.unwrap(),
        CONNACK_V311_NOT_AUTHORIZED
    );

    let connected = logs.lines_with("client connected");
    let user_of = |client_id: &str| {
        let line = connected
            .iter()
            .find(|line| line.contains(&format!("client_id={client_id} ")))
            .unwrap_or_else(|| panic!("no connect logged for {client_id}: {connected:#?}"));
        let start = line.find("username=").expect("username field") + "username=".len();
        let end = line[start..]
            .find(" protocol=")
            .map_or(line.len(), |i| start + i);
        line[start..end].to_owned()
    };
    assert_eq!(user_of("by-cn"), "sensor-7");
    assert_eq!(user_of("by-subject"), "CN=sensor-7,O=Acme");
    server.shutdown().await;
}

#[tokio::test]
async fn certificate_without_common_name_is_refused_when_the_cn_is_the_user() {
    let pki = Pki::new("no-cn");
    let server_cert = pki.server("server");
    let nameless = pki.client("nameless", None, "Acme");
    let mut settings = tls_settings(&server_cert);
    settings.client_ca = Some(pki.ca_path.clone());
    settings.cert_identity = CertIdentity::Cn;
    let (server, ports) = start(vec![listener(Some(settings))], |config| {
        config.auth.allow_anonymous = Some(true);
    })
    .await;
    let config = client_config(&pki.ca_path, Some(&nameless), ALL_VERSIONS);
    let refused = match tls_connect(ports[0], config).await {
        Err(_) => true,
        Ok(mut stream) => mqtt_connect(&mut stream, "nameless").await.is_err(),
    };
    assert!(refused, "a certificate without CN got in as anonymous");
    assert_eq!(server.broker().stats.snapshot().handshakes_failed, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn pkcs8_pkcs1_and_sec1_keys_are_accepted() {
    let pki = Pki::new("keys");
    // EC P-256 in PKCS#8 (rcgen's own form) and the same kind of key as SEC1.
    let ec_pkcs8 = pki.server("ec-pkcs8");
    let ec_sec1 = pki.server("ec-sec1");
    std::fs::write(
        &ec_sec1.key_path,
        pem("EC PRIVATE KEY", &unwrap_pkcs8(&ec_sec1.key_pem)),
    )
    .unwrap();
    // RSA: a fixed test key (ring cannot generate RSA keys), as PKCS#8 and as PKCS#1.
    let rsa_pem = include_str!("fixtures/test-only-rsa-2048.pkcs8.pem");
    let rsa_key = || rcgen::KeyPair::from_pem(rsa_pem).unwrap();
    let rsa_pkcs8 = pki.server_with_key("rsa-pkcs8", rsa_key());
    let rsa_pkcs1 = pki.server_with_key("rsa-pkcs1", rsa_key());
    std::fs::write(
        &rsa_pkcs1.key_path,
        pem("RSA PRIVATE KEY", &unwrap_pkcs8(rsa_pem)),
    )
    .unwrap();

    for (label, issued, key_header) in [
        ("EC PKCS#8", &ec_pkcs8, "-----BEGIN PRIVATE KEY-----"),
        ("EC SEC1", &ec_sec1, "-----BEGIN EC PRIVATE KEY-----"),
        ("RSA PKCS#8", &rsa_pkcs8, "-----BEGIN PRIVATE KEY-----"),
        ("RSA PKCS#1", &rsa_pkcs1, "-----BEGIN RSA PRIVATE KEY-----"),
    ] {
        let key_text = std::fs::read_to_string(&issued.key_path).unwrap();
        assert!(key_text.starts_with(key_header), "{label}: {key_text}");
        let (server, ports) = start(vec![listener(Some(tls_settings(issued)))], |_| {}).await;
        let config = client_config(&pki.ca_path, None, ALL_VERSIONS);
        let mut stream = tls_connect(ports[0], config)
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(
            stream.get_ref().1.peer_certificates().unwrap()[0],
            issued.der,
            "{label}"
        );
        assert_eq!(
            mqtt_connect(&mut stream, "keys").await.unwrap(),
            CONNACK_V311_OK,
            "{label}"
        );
        server.shutdown().await;
    }
}

#[tokio::test]
async fn bad_certificate_files_stop_the_start_with_the_path_and_the_reason() {
    let pki = Pki::new("bad-files");
    let good = pki.server("server");
    let other = pki.server("other");
    let garbage = pki.dir.path("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let truncated = pki.dir.path("truncated.pem");
    let cut = &good.cert_pem[..good.cert_pem.len() / 2];
    std::fs::write(&truncated, cut).unwrap();
    let missing = pki.dir.path("missing.pem");

    let with = |cert: &std::path::Path, key: &std::path::Path, ca: Option<&std::path::Path>| {
        let mut settings = tls_settings(&good);
        settings.cert = cert.to_owned();
        settings.key = key.to_owned();
        settings.client_ca = ca.map(ToOwned::to_owned);
        settings
    };
    let cases = [
        (
            with(&missing, &good.key_path, None),
            &missing,
            "No such file",
        ),
        (
            with(&garbage, &good.key_path, None),
            &garbage,
            "no PEM CERTIFICATE",
        ),
        (
            with(&truncated, &good.key_path, None),
            &truncated,
            "not valid PEM",
        ),
        (
            with(&good.cert_path, &good.cert_path, None),
            &good.cert_path,
            "no PEM private key",
        ),
        (
            with(&good.cert_path, &other.key_path, None),
            &other.key_path,
            "does not go with the certificate",
        ),
        (
            with(&good.cert_path, &good.key_path, Some(&garbage)),
            &garbage,
            "no PEM CERTIFICATE",
        ),
    ];
    for (settings, path, reason) in cases {
        let config = Config {
            listeners: vec![listener(Some(settings))],
            ..crate::harness::test_config()
        };
        let error = Server::start(config)
            .await
            .err()
            .unwrap_or_else(|| panic!("started with {}", path.display()))
            .to_string();
        assert!(
            error.contains(&path.display().to_string()),
            "no path in: {error}"
        );
        assert!(error.contains(reason), "no `{reason}` in: {error}");
    }
}

/// Writes a new certificate and key over the listener's files and moves their modification
/// time ahead: file systems keep times at a coarse granularity, and a real renewal comes
/// long after the files it replaces.
fn replace_files(target: &Issued, new: &Issued) {
    let later = SystemTime::now() + Duration::from_secs(2);
    for (path, text) in [
        (&target.cert_path, &new.cert_pem),
        (&target.key_path, &new.key_pem),
    ] {
        std::fs::write(path, text).unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(later)
            .unwrap();
    }
}

async fn certificate_seen_by_a_new_client(pki: &Pki, port: u16) -> Vec<u8> {
    let config = client_config(&pki.ca_path, None, ALL_VERSIONS);
    let stream = tls_connect(port, config).await.expect("handshake");
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn reload_gives_new_connections_the_new_certificate_and_keeps_old_ones_up() {
    let pki = Pki::new("reload");
    let first = pki.server("server");
    let second = pki.server("second");
    let (server, ports) = start(vec![listener(Some(tls_settings(&first)))], |_| {}).await;
    let config = client_config(&pki.ca_path, None, ALL_VERSIONS);
    let mut old = tls_connect(ports[0], config).await.unwrap();
    assert_eq!(old.get_ref().1.peer_certificates().unwrap()[0], first.der);
    assert_eq!(
        mqtt_connect(&mut old, "old").await.unwrap(),
        CONNACK_V311_OK
    );

    replace_files(&first, &second);
    server.reload().await.expect("reload");
    assert_eq!(
        certificate_seen_by_a_new_client(&pki, ports[0]).await,
        second.der.to_vec()
    );
    ping(&mut old).await;

    // A broken key leaves the working certificate in place, and says which file.
    std::fs::write(&first.key_path, "-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap();
    let error = server
        .reload()
        .await
        .expect_err("a broken key must not load");
    assert!(
        error
            .to_string()
            .contains(&first.key_path.display().to_string()),
        "{error}"
    );
    assert_eq!(
        certificate_seen_by_a_new_client(&pki, ports[0]).await,
        second.der.to_vec()
    );
    ping(&mut old).await;
    server.shutdown().await;
}

#[tokio::test]
async fn changed_certificate_files_are_picked_up_without_a_signal() {
    let pki = Pki::new("poll");
    let first = pki.server("server");
    let second = pki.server("second");
    let (server, ports) = start(vec![listener(Some(tls_settings(&first)))], |_| {}).await;
    let config = client_config(&pki.ca_path, None, ALL_VERSIONS);
    let mut old = tls_connect(ports[0], config).await.unwrap();
    assert_eq!(
        mqtt_connect(&mut old, "old").await.unwrap(),
        CONNACK_V311_OK
    );

    replace_files(&first, &second);
    // The broker polls the files every 2 s; new connections see the new certificate within
    // a few polls. Retrying a connection is the only way a client can tell.
    let deadline = tokio::time::Instant::now() + TIMEOUT * 2;
    loop {
        if certificate_seen_by_a_new_client(&pki, ports[0]).await == second.der.to_vec() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ping(&mut old).await;
    server.shutdown().await;
}

/// Reads one MQTT packet's first byte and body length, and skips the body.
async fn skip_packet<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<u8> {
    let first = stream.read_u8().await?;
    let (mut length, mut shift) = (0usize, 0);
    loop {
        let byte = stream.read_u8().await?;
        length |= usize::from(byte & 0x7F) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await?;
    Ok(first)
}

#[tokio::test]
async fn slow_tls_reader_gets_every_message_once_it_reads() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    use tokio::io::AsyncWriteExt;

    const MESSAGES: usize = 200;
    const PAYLOAD: usize = 64 * 1024;
    let pki = Pki::new("slow");
    let server_cert = pki.server("server");
    let (server, ports) = start(
        vec![listener(Some(tls_settings(&server_cert))), listener(None)],
        |config| config.mqtt.max_queued_messages = 0,
    )
    .await;
    let config = client_config(&pki.ca_path, None, ALL_VERSIONS);
    let mut slow = tls_connect(ports[0], config).await.unwrap();
    assert_eq!(
        mqtt_connect(&mut slow, "slow").await.unwrap(),
        CONNACK_V311_OK
    );
    let subscribe = [
        0x82, 0x09, // SUBSCRIBE, remaining length 9
        0x00, 0x01, // packet id 1
        0x00, 0x04, b'b', b'u', b'l', b'k', // filter "bulk"
        0x00, // QoS 0
    ];
    slow.write_all(&subscribe).await.unwrap();
    assert_eq!(skip_packet(&mut slow).await.unwrap(), 0x90, "SUBACK");

    // 12.5 MiB, more than loopback's socket buffers hold, while the subscriber reads
    // nothing: the broker's writes to it block, part-way through TLS records.
    let mut options = MqttOptions::new("bulk-publisher", "127.0.0.1", ports[1]);
    options.set_max_packet_size(2 * PAYLOAD, 2 * PAYLOAD);
    let (publisher, mut events) = AsyncClient::new(options, MESSAGES);
    let publishing = tokio::spawn(async move {
        for _ in 0..MESSAGES {
            publisher
                .publish("bulk", QoS::AtLeastOnce, false, vec![b'x'; PAYLOAD])
                .await
                .unwrap();
        }
        let mut acked = 0;
        while acked < MESSAGES {
            if let Event::Incoming(Packet::PubAck(_)) = events.poll().await.unwrap() {
                acked += 1;
            }
        }
    });
    tokio::time::timeout(TIMEOUT * 4, publishing)
        .await
        .expect("publisher did not finish")
        .unwrap();

    // Every message was routed; the subscriber now reads them all.
    let read_all = async {
        for _ in 0..MESSAGES {
            assert_eq!(
                skip_packet(&mut slow).await.unwrap() & 0xF0,
                0x30,
                "PUBLISH"
            );
        }
    };
    tokio::time::timeout(TIMEOUT * 4, read_all)
        .await
        .expect("the subscriber did not get every message");
    server.shutdown().await;
}

/// TLS and WebSocket streams may hold written bytes until flushed. `tokio::io::BufWriter`
/// does the same, deterministically: nothing it holds reaches the client without a flush.
#[tokio::test]
async fn connection_flushes_a_stream_that_buffers_writes() {
    use midge_broker::auth::AccessControl;
    use midge_broker::connection::{self, ListenerContext};
    use tokio::io::AsyncWriteExt;

    let broker = midge_broker::Broker::new(crate::harness::test_config());
    let (_shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let context = Arc::new(ListenerContext {
        name: "buffered".to_owned(),
        access: AccessControl::anonymous_only(None),
        config: broker.config(),
        shutdown,
    });
    let (mut client, server_side) = tokio::io::duplex(64 * 1024);
    tokio::spawn(connection::serve(
        tokio::io::BufWriter::new(server_side),
        "127.0.0.1:50000".parse().unwrap(),
        None,
        context,
        broker,
        (),
    ));
    assert_eq!(
        mqtt_connect(&mut client, "buffered").await.unwrap(),
        CONNACK_V311_OK
    );
    ping(&mut client).await;
    client.shutdown().await.unwrap();
}
