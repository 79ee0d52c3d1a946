//! Reloading the configuration in process (`Server::reload_with`, what SIGHUP does with
//! the file it reads): admin users from a new password file, `max_connections` and a
//! listener's access settings for new connections only, a protocol changed in place on
//! the listener's port, and the report. The real binary's
//! reloads are in `crates/midge/tests/reload.rs`.

use crate::access_support::{TempDir, connack_v3};
use crate::admin_http::{get, request};
use crate::harness::{TestBroker, connect_v311_with};

fn server(broker: &TestBroker) -> &midge_broker::Server {
    broker.server.as_ref().unwrap()
}

/// The configuration in force, to be changed and reloaded.
fn running(broker: &TestBroker) -> midge_broker::Config {
    midge_broker::Config::clone(&broker.broker().config())
}

#[tokio::test]
async fn admin_users_come_from_a_new_password_file_and_viewers_list() {
    let dir = TempDir::new("reload-admin");
    let root = midge_broker::auth::hash_password(b"secret").unwrap();
    let first = dir.write("first", &format!("root:{root}\n"));
    let ops = midge_broker::auth::hash_password(b"pw").unwrap();
    let second = dir.write("second", &format!("ops:{ops}\n"));
    let broker = TestBroker::start_with(|c| c.admin.password_file = Some(first)).await;
    let admin = broker.admin();
    assert_eq!(
        get(admin, "/api/v1/health", Some(("root", "secret")))
            .await
            .status,
        200
    );

    let mut config = running(&broker);
    config.admin.password_file = Some(second);
    config.admin.viewers = vec!["ops".to_owned()];
    let report = server(&broker).reload_with(config).await.expect("reload");
    assert!(report.restart_required.is_empty(), "{report:?}");
    assert!(
        report.changes.iter().any(|c| c.starts_with("admin:")),
        "{report:?}"
    );
    // The new file's user logs in, as a viewer; the old file's does not.
    let as_ops = Some(("ops", "pw"));
    assert_eq!(get(admin, "/api/v1/health", as_ops).await.status, 200);
    let reload = request(admin, "POST", "/api/v1/reload", as_ops, None).await;
    assert_eq!(reload.status, 403, "{}", reload.text());
    let old = get(admin, "/api/v1/health", Some(("root", "secret"))).await;
    assert_eq!(old.status, 401, "{}", old.text());
    broker.shutdown().await;
}

#[tokio::test]
async fn a_lower_max_connections_refuses_new_connections_and_keeps_open_ones() {
    let broker = TestBroker::start().await;
    let (mut a, _) = broker.raw_v311("a", true).await;
    let (mut b, _) = broker.raw_v311("b", true).await;
    let mut config = running(&broker);
    config.mqtt.max_connections = 2;
    let report = server(&broker).reload_with(config.clone()).await.unwrap();
    assert!(
        report.changes.iter().any(|c| c.starts_with("mqtt:")),
        "{report:?}"
    );
    // Refused at accept: closed before anything is read or written.
    let mut third = broker.raw().await;
    third.send(&connect_v311_with("c", true, 60)).await;
    assert_eq!(third.recv_until_closed().await, b"");
    a.ping_fence().await;
    b.ping_fence().await;

    config.mqtt.max_connections = 3;
    server(&broker).reload_with(config).await.unwrap();
    let (mut c, _) = broker.raw_v311("c", true).await;
    c.ping_fence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn new_access_settings_apply_to_new_connections_and_connected_clients_stay() {
    let broker = TestBroker::start_with(|c| c.auth.allow_anonymous = Some(true)).await;
    let (mut anonymous, _) = broker.raw_v311("before", true).await;
    let mut config = running(&broker);
    config.listeners[0].auth.allow_anonymous = Some(false);
    let report = server(&broker).reload_with(config).await.unwrap();
    assert!(
        report.changes.iter().any(|c| c.contains("access settings")),
        "{report:?}"
    );
    // Same listener, same port, new rules: an anonymous CONNECT is refused (5).
    let mut late = broker.raw().await;
    late.send(&connect_v311_with("after", true, 60)).await;
    assert_eq!(late.recv(4).await, connack_v3(5));
    anonymous.ping_fence().await;
    assert_eq!(
        server(&broker).listeners().await,
        [(
            "mqtt:127.0.0.1:0".to_owned(),
            server(&broker).local_addrs()[0]
        )]
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_listener_changes_protocol_in_place_on_its_port() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let broker = TestBroker::start_with(|c| {
        c.listeners[0].bind = format!("127.0.0.1:{port}").parse().unwrap();
    })
    .await;
    let (mut plain, _) = broker.raw_v311("plain", true).await;
    let mut config = running(&broker);
    config.listeners[0].protocol = midge_broker::config::ListenerProtocol::Ws;
    let report = server(&broker).reload_with(config).await.unwrap();
    assert!(
        report
            .changes
            .iter()
            .any(|c| c.contains("protocol settings")),
        "{report:?}"
    );
    // The same socket now answers a WebSocket upgrade; the MQTT client keeps its TCP.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let upgrade = format!(
        "GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    tcp.write_all(upgrade.as_bytes()).await.unwrap();
    let mut status = [0u8; 12];
    tokio::time::timeout(crate::harness::TIMEOUT, tcp.read_exact(&mut status))
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(&status, b"HTTP/1.1 101");
    plain.ping_fence().await;
    assert_eq!(server(&broker).listeners().await[0].1.port(), port);
    broker.shutdown().await;
}
