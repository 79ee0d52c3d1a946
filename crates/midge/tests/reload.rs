//! Live reload against the real binary: SIGHUP, `POST /api/v1/reload` and `midge ctl
//! reload` read the whole configuration file again. Listeners come and go, limits and
//! TLS files apply to new connections, a bad file changes nothing, and keys that take a
//! restart are reported and left as they were. In every test a subscriber and a publisher
//! connected before the first reload stay connected: after each reload the subscriber
//! receives what the publisher sends.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use support::{
    Midge, Raw, TIMEOUT, TestDir, connect, connect_v311, free_port, publish, subscribe_and_wait,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running broker with an admin listener (loopback, so no login), and two clients on
/// its first listener: a subscriber to `check/#` and a publisher.
struct Fixture {
    _dir: TestDir,
    midge: Midge,
    admin: u16,
    subscriber: Raw,
    publisher: Raw,
    checks: u32,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Fixture {
    /// `extra` is appended to the configuration (after `[admin]`).
    async fn start(name: &str, extra: &str) -> Self {
        let dir = TestDir::new(name);
        let mut midge = Midge::new(&dir, "interval");
        let admin = free_port();
        midge.edit_config(|text| {
            format!("{text}\n[admin]\nbind = \"127.0.0.1:{admin}\"\n\n{extra}")
        });
        midge.start(&[]).await;
        let deadline = tokio::time::Instant::now() + support::START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", admin)).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no admin listener:\n{}",
                midge.last_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (mut subscriber, _) = connect(midge.port, &connect_v311("subscriber", true)).await;
        subscribe_and_wait(&mut subscriber, false, "check/#", 0).await;
        let (publisher, _) = connect(midge.port, &connect_v311("publisher", true)).await;
        Self {
            _dir: dir,
            midge,
            admin,
            subscriber,
            publisher,
            checks: 0,
        }
    }

    fn edit(&self, edit: impl FnOnce(String) -> String) {
        self.midge.edit_config(edit);
    }

    /// The clients connected before any reload are still served: what the publisher
    /// sends now reaches the subscriber.
    async fn assert_clients_still_served(&mut self) {
        self.checks += 1;
        let payload = format!("after reload {}", self.checks);
        let packet = publish(
            false,
            0,
            false,
            false,
            "check/reload",
            0,
            payload.as_bytes(),
        );
        self.publisher
            .send(&packet)
            .await
            .expect("the publisher is still connected");
        let got = self
            .subscriber
            .recv()
            .await
            .expect("the subscriber is still connected");
        assert_eq!(got.publish(false).payload, payload.as_bytes());
    }

    /// `midge ctl reload` (with `--json` if asked).
    async fn ctl_reload(&self, json: bool) -> Run {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_midge"));
        command
            .arg("ctl")
            .arg("--url")
            .arg(format!("http://127.0.0.1:{}", self.admin))
            .env_remove("MIDGE_CTL_USER")
            .env_remove("MIDGE_CTL_PASSWORD")
            .env_remove("MIDGE_CTL_URL");
        if json {
            command.arg("--json");
        }
        let out = tokio::time::timeout(TIMEOUT, command.arg("reload").output())
            .await
            .expect("ctl finishes in time")
            .expect("run midge ctl");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// An admin API request over plain HTTP/1.1: the status and the JSON body.
    async fn http(&self, method: &str, path: &str) -> (u16, serde_json::Value) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.admin)).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut answer))
            .await
            .expect("answer in time")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {answer}"));
        let (_, body) = answer.split_once("\r\n\r\n").expect("headers end");
        let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        (status, body)
    }

    /// Lines of the log that end a reload.
    fn reloads_logged(&self) -> usize {
        let log = self.midge.last_log();
        log.matches("reload done").count() + log.matches("reload failed").count()
    }

    /// Sends SIGHUP and waits until the broker logs the reload's end.
    async fn sighup(&self) {
        let before = self.reloads_logged();
        let pid = self.midge.pid().expect("midge is running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while self.reloads_logged() == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no end of the reload in the log:\n{}",
                self.midge.last_log()
            );
            // The log is a file the child writes: polled.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Whether a TCP connection to `port` is refused.
async fn refused(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).await.is_err()
}

#[tokio::test]
async fn a_listener_added_to_the_file_accepts_clients_after_sighup() {
    let mut f = Fixture::start("reload-add", "").await;
    let port = free_port();
    f.edit(|text| format!("{text}\n[[listener]]\nbind = \"127.0.0.1:{port}\"\n"));
    f.sighup().await;
    let (mut added, _) = connect(port, &connect_v311("on-the-new-port", true)).await;
    subscribe_and_wait(&mut added, false, "check/#", 0).await;
    f.assert_clients_still_served().await;
    // The client on the new listener is served like the others.
    assert_eq!(
        added.recv().await.unwrap().publish(false).payload,
        b"after reload 1"
    );
    let log = f.midge.last_log();
    assert!(
        log.contains(&format!("listener mqtt:127.0.0.1:{port} added")),
        "{log}"
    );
    // The admin API lists it, with its client.
    let (status, body) = f.http("GET", "/api/v1/listeners").await;
    assert_eq!(status, 200, "{body}");
    let added = body["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["address"] == format!("127.0.0.1:{port}"))
        .unwrap_or_else(|| panic!("{body}"))
        .clone();
    assert_eq!(added["connections"], 1, "{body}");
}

#[tokio::test]
async fn a_removed_listener_refuses_new_clients_and_keeps_its_connected_ones() {
    let port = free_port();
    let extra = format!("[[listener]]\nbind = \"127.0.0.1:{port}\"\n");
    let mut f = Fixture::start("reload-remove", &extra).await;
    let (mut leaving, _) = connect(port, &connect_v311("on-the-old-port", true)).await;
    subscribe_and_wait(&mut leaving, false, "check/#", 0).await;
    f.edit(|text| text.replace(&extra, ""));

    let run = f.ctl_reload(false).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(&format!(
            "changed: listener mqtt:127.0.0.1:{port} on 127.0.0.1:{port} removed"
        )),
        "{}",
        run.stdout
    );
    assert!(refused(port).await, "the removed listener still accepts");
    // Its client stays connected and keeps receiving; so do the others.
    f.assert_clients_still_served().await;
    assert_eq!(
        leaving.recv().await.unwrap().publish(false).payload,
        b"after reload 1"
    );
    // And it can still publish.
    leaving
        .send(&publish(
            false,
            0,
            false,
            false,
            "check/old",
            0,
            b"from the old port",
        ))
        .await
        .unwrap();
    assert_eq!(
        f.subscriber.recv().await.unwrap().publish(false).payload,
        b"from the old port"
    );
}

#[tokio::test]
async fn a_changed_limit_applies_to_new_connections_and_not_to_connected_ones() {
    let mut f = Fixture::start("reload-limit", "[mqtt]\nmax_packet_size = 4096\n").await;
    f.edit(|text| text.replace("max_packet_size = 4096", "max_packet_size = 1024"));
    let run = f.ctl_reload(false).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("changed: mqtt: new connections"),
        "{}",
        run.stdout
    );
    f.assert_clients_still_served().await;

    let big = vec![b'x'; 2000];
    // The publisher connected under the old limit may still send 2000 bytes.
    f.publisher
        .send(&publish(false, 0, false, false, "check/big", 0, &big))
        .await
        .unwrap();
    assert_eq!(
        f.subscriber.recv().await.unwrap().publish(false).payload,
        big
    );
    // A new connection gets the new limit: the same PUBLISH closes it.
    let (mut late, _) = connect(f.midge.port, &connect_v311("late", true)).await;
    late.send(&publish(false, 0, false, false, "check/big", 0, &big))
        .await
        .unwrap();
    match late.recv().await {
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "not closed: {e}"),
        Ok(packet) => panic!("a PUBLISH over the new limit was answered: {packet:02X?}"),
    }
    f.assert_clients_still_served().await;
}

/// Writes a certificate for 127.0.0.1 signed by `ca` to `<stem>.pem` and `<stem>-key.pem`.
fn write_server_cert(
    dir: &Path,
    stem: &str,
    ca: &CertifiedIssuer<'_, KeyPair>,
) -> CertificateDer<'static> {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}-key.pem")), key.serialize_pem()).unwrap();
    cert.der().clone()
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

#[tokio::test]
async fn a_new_certificate_path_is_what_new_handshakes_see() {
    let certs = TestDir::new("reload-tls-files");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let first = write_server_cert(&certs.0, "first", &ca);
    let second = write_server_cert(&certs.0, "second", &ca);
    let port = free_port();
    let dir = certs.0.display();
    let mut f = Fixture::start(
        "reload-tls",
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:{port}\"\n[listener.tls]\n\
             cert = \"{dir}/first.pem\"\nkey = \"{dir}/first-key.pem\"\n"
        ),
    )
    .await;
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

    f.edit(|text| text.replace("first", "second"));
    f.sighup().await;
    let new = tls_connect(port, &client).await;
    assert_eq!(new.get_ref().1.peer_certificates().unwrap()[0], second);
    f.assert_clients_still_served().await;

    // The connection made before the reload is still served: CONNECT gets CONNACK.
    old.write_all(&connect_v311("tls-old", true)).await.unwrap();
    let mut connack = [0; 4];
    tokio::time::timeout(TIMEOUT, old.read_exact(&mut connack))
        .await
        .expect("CONNACK timed out")
        .unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
}

#[tokio::test]
async fn a_bad_file_is_refused_with_file_line_and_key_and_changes_nothing() {
    let mut f = Fixture::start("reload-bad", "").await;
    let good = std::fs::read_to_string(&f.midge.config).unwrap();
    let config = f.midge.config.display().to_string();
    // A new listener that must not open, then a syntax error.
    let port = free_port();
    f.edit(|text| format!("{text}\n[[listener]]\nbind = \"127.0.0.1:{port}\"\n\n[mqtt\n"));
    let line = std::fs::read_to_string(&f.midge.config)
        .unwrap()
        .lines()
        .count();

    // SIGHUP: the log says why, and the running configuration stays.
    f.sighup().await;
    let log = f.midge.last_log();
    assert!(
        log.contains("configuration not reloaded") && log.contains(&config),
        "{log}"
    );
    assert!(log.contains(&format!("line {line}")), "line {line}: {log}");
    assert!(refused(port).await, "a listener of the refused file opened");
    f.assert_clients_still_served().await;

    // `midge ctl reload`: exit status 1, with the API's message.
    let run = f.ctl_reload(false).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(&config) && run.stderr.contains(&format!("line {line}")),
        "{}",
        run.stderr
    );
    assert!(refused(port).await);
    f.assert_clients_still_served().await;

    // An unknown key: named, with its line, in the API's error JSON.
    f.edit(|_| format!("{good}\n[mqtt]\nmax_inflight = 10\nmax_inflite = 3\n"));
    let line = good.lines().count() + 4;
    let (status, body) = f.http("POST", "/api/v1/reload").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "reload_failed", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&config)
            && message.contains("max_inflite")
            && message.contains(&format!("line {line}")),
        "line {line}: {message}"
    );
    let run = f.ctl_reload(false).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("max_inflite"), "{}", run.stderr);
    f.assert_clients_still_served().await;

    // Once the file is good again, a reload goes through.
    f.edit(|_| good);
    let run = f.ctl_reload(false).await;
    assert_eq!(
        (run.code, run.stdout.trim()),
        (0, "reloaded"),
        "{}",
        run.stderr
    );
    f.assert_clients_still_served().await;
}

#[tokio::test]
async fn a_new_storage_directory_is_reported_as_needing_a_restart_and_ignored() {
    let mut f = Fixture::start("reload-storage", "").await;
    let moved = f.midge.dir.join("elsewhere");
    f.edit(|text| {
        let old = format!("dir = \"{}\"", f.midge.dir.join("data").display());
        assert!(text.contains(&old), "{text}");
        text.replace(&old, &format!("dir = \"{}\"", moved.display()))
    });
    let run = f.ctl_reload(true).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let answer: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        answer["restart_required"],
        serde_json::json!(["storage.dir"])
    );
    let run = f.ctl_reload(false).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("restart required: storage.dir (the running value stays in force)"),
        "{}",
        run.stdout
    );
    let log = f.midge.last_log();
    assert!(
        log.contains("WARN") && log.contains("`storage.dir` changed"),
        "{log}"
    );
    f.assert_clients_still_served().await;
    // The store stays where it was.
    assert!(!moved.exists(), "the new storage directory was used");
    assert!(f.midge.store_file().exists());
}
