//! Password files: Mosquitto's formats read unchanged, refusals with the right CONNACK
//! codes, failed-login rate limiting, and reload while connections stay up.

use std::net::SocketAddr;
use std::process::Command;

use tokio::net::TcpSocket;

use crate::access_support::{
    TempDir, broker_with, connack_for, connack_v3, connack_v5_refused, connect, connected,
};
use crate::harness::Raw;

const V3: bool = false;
const V5: bool = true;

/// Runs the installed `mosquitto_passwd` (Debian's mosquitto package).
fn mosquitto_passwd(args: &[&str]) {
    let status = Command::new("mosquitto_passwd")
        .args(args)
        .status()
        .expect("mosquitto_passwd must be installed (apt-get install mosquitto); scripts/test.sh installs it");
    assert!(status.success(), "mosquitto_passwd {args:?} failed");
}

fn is_success(connack: &[u8]) -> bool {
    connack[0] == 0x20 && connack[3] == 0x00
}

#[tokio::test]
async fn a_password_file_made_by_mosquitto_passwd_is_accepted_unchanged() {
    let dir = TempDir::new("mosquitto-passwd");
    let file = dir.path().join("passwords");
    let file_str = file.to_str().unwrap();
    // Mosquitto 2.0's default ($7$, PBKDF2-SHA512) and its 1.x format ($6$, -H sha512).
    mosquitto_passwd(&["-c", "-b", file_str, "alice", "secret1"]);
    mosquitto_passwd(&["-H", "sha512", "-b", file_str, "carol", "hunter2"]);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("alice:$7$"), "{text}");
    assert!(text.contains("carol:$6$"), "{text}");

    let broker = broker_with(|c| c.auth.password_file = Some(file.clone())).await;
    assert!(is_success(
        &connack_for(&broker, V3, Some("alice"), Some(b"secret1")).await
    ));
    assert!(is_success(
        &connack_for(&broker, V5, Some("alice"), Some(b"secret1")).await
    ));
    assert!(is_success(
        &connack_for(&broker, V3, Some("carol"), Some(b"hunter2")).await
    ));
    assert!(is_success(
        &connack_for(&broker, V5, Some("carol"), Some(b"hunter2")).await
    ));
    broker.shutdown().await;
}

#[tokio::test]
async fn argon2id_lines_are_verified() {
    let dir = TempDir::new("argon2");
    let hash = midge_broker::auth::hash_password(b"correct horse").unwrap();
    let file = dir.write("passwords", &format!("# made by midge\ndave:{hash}\n"));
    let broker = broker_with(|c| c.auth.password_file = Some(file)).await;
    assert!(is_success(
        &connack_for(&broker, V5, Some("dave"), Some(b"correct horse")).await
    ));
    // v5: 0x86 bad user name or password.
    assert_eq!(
        connack_for(&broker, V5, Some("dave"), Some(b"correct horsE")).await,
        connack_v5_refused(0x86)
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_refused_alike() {
    let dir = TempDir::new("refusals");
    let hash = midge_broker::auth::hash_password(b"pw").unwrap();
    let file = dir.write("passwords", &format!("alice:{hash}\n"));
    let broker = broker_with(|c| c.auth.password_file = Some(file)).await;
    for user in ["alice", "mallory"] {
        // v3.1.1 return code 4: bad user name or password.
        assert_eq!(
            connack_for(&broker, V3, Some(user), Some(b"nope")).await,
            connack_v3(4)
        );
        // v5 reason 0x86: bad user name or password.
        assert_eq!(
            connack_for(&broker, V5, Some(user), Some(b"nope")).await,
            connack_v5_refused(0x86)
        );
    }
    // A user name without a password is refused the same way.
    assert_eq!(
        connack_for(&broker, V3, Some("alice"), None).await,
        connack_v3(4)
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn anonymous_clients_are_refused_as_not_authorized() {
    let dir = TempDir::new("anonymous");
    let hash = midge_broker::auth::hash_password(b"pw").unwrap();
    let file = dir.write("passwords", &format!("alice:{hash}\n"));
    let broker = broker_with(|c| c.auth.password_file = Some(file)).await;
    // v3.1.1 return code 5: not authorized.
    assert_eq!(connack_for(&broker, V3, None, None).await, connack_v3(5));
    // v5 reason 0x87: not authorized.
    assert_eq!(
        connack_for(&broker, V5, None, None).await,
        connack_v5_refused(0x87)
    );
    broker.shutdown().await;
}

/// A raw connection from a chosen loopback address (127.0.0.0/8 is all loopback).
async fn raw_from(source: &str, broker: SocketAddr) -> Raw {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    Raw {
        stream: socket.connect(broker).await.expect("connect"),
    }
}

#[tokio::test]
async fn failed_logins_are_rate_limited_per_address() {
    let dir = TempDir::new("rate-limit");
    let hash = midge_broker::auth::hash_password(b"pw").unwrap();
    let file = dir.write("passwords", &format!("alice:{hash}\n"));
    let broker = broker_with(|c| {
        c.auth.password_file = Some(file);
        c.auth.rate_limit.failures_burst = 3;
        c.auth.rate_limit.failures_per_minute = 1;
    })
    .await;
    for _ in 0..3 {
        let mut raw = raw_from("127.0.0.1", broker.addr).await;
        raw.send(&connect(V5, "spray", Some("alice"), Some(b"guess"), None))
            .await;
        assert_eq!(raw.recv_packet().await, connack_v5_refused(0x86));
    }
    // The bucket is empty: even the right password is refused, without being checked.
    // v5 reason 0x9F: connection rate exceeded.
    let mut raw = raw_from("127.0.0.1", broker.addr).await;
    raw.send(&connect(V5, "spray", Some("alice"), Some(b"pw"), None))
        .await;
    assert_eq!(raw.recv_packet().await, connack_v5_refused(0x9F));
    // v3.1.1 has no such code: return code 3, server unavailable.
    let mut raw = raw_from("127.0.0.1", broker.addr).await;
    raw.send(&connect(V3, "spray", Some("alice"), Some(b"pw"), None))
        .await;
    assert_eq!(raw.recv_packet().await, connack_v3(3));
    // Another address is not affected.
    let mut other = raw_from("127.0.0.2", broker.addr).await;
    other
        .send(&connect(V3, "other", Some("alice"), Some(b"pw"), None))
        .await;
    assert_eq!(other.recv_packet().await, connack_v3(0));
    broker.shutdown().await;
}

#[tokio::test]
async fn reload_picks_up_a_changed_password_file_while_connections_stay_up() {
    let dir = TempDir::new("reload");
    let old = midge_broker::auth::hash_password(b"old").unwrap();
    let file = dir.write("passwords", &format!("alice:{old}\n"));
    let broker = broker_with(|c| c.auth.password_file = Some(file.clone())).await;
    let mut alice = connected(&broker, V3, "alice-1", Some("alice"), Some(b"old")).await;

    let new = midge_broker::auth::hash_password(b"new").unwrap();
    let bob = midge_broker::auth::hash_password(b"bob").unwrap();
    dir.write("passwords", &format!("alice:{new}\nbob:{bob}\n"));
    broker
        .server
        .as_ref()
        .unwrap()
        .reload()
        .await
        .expect("reload");

    assert_eq!(
        connack_for(&broker, V3, Some("alice"), Some(b"old")).await,
        connack_v3(4)
    );
    assert_eq!(
        connack_for(&broker, V3, Some("alice"), Some(b"new")).await,
        connack_v3(0)
    );
    assert_eq!(
        connack_for(&broker, V3, Some("bob"), Some(b"bob")).await,
        connack_v3(0)
    );
    // The connection made before the reload is still served: PINGREQ gets PINGRESP.
    alice.send(&[0xC0, 0x00]).await;
    assert_eq!(alice.recv(2).await, [0xD0, 0x00]);

    // A broken file is refused with its line; the previous one stays in force.
    dir.write("passwords", &format!("alice:{new}\nbroken line\n"));
    let error = broker
        .server
        .as_ref()
        .unwrap()
        .reload()
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("line 2"), "{error}");
    assert_eq!(
        connack_for(&broker, V3, Some("bob"), Some(b"bob")).await,
        connack_v3(0)
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_bad_password_file_stops_the_start_with_file_and_line() {
    let dir = TempDir::new("bad-file");
    let file = dir.write("passwords", "# users\nalice:plaintext\n");
    let mut config = crate::harness::test_config();
    config.listeners[0].bind = "127.0.0.1:0".parse().unwrap();
    config.auth.password_file = Some(file.clone());
    let error = midge_broker::Server::start(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains(file.to_str().unwrap()), "{error}");
    assert!(error.contains("line 2"), "{error}");
}
