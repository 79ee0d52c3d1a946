//! Access settings per listener: two listeners of one broker with different anonymous
//! policies and password files.

use midge_broker::config::ListenerConfig;
use midge_broker::{Config, Server};
use tokio::net::TcpStream;

use crate::access_support::{TempDir, connack_v3, connack_v5_refused, connect};
use crate::harness::Raw;

async fn connack(
    addr: std::net::SocketAddr,
    v5: bool,
    user: Option<&str>,
    password: Option<&[u8]>,
) -> Vec<u8> {
    let mut raw = Raw {
        stream: TcpStream::connect(addr).await.expect("connect"),
    };
    raw.send(&connect(v5, "probe", user, password, None)).await;
    raw.recv_packet().await
}

#[tokio::test]
async fn each_listener_applies_its_own_anonymous_policy_and_password_file() {
    let dir = TempDir::new("listeners");
    let hash = midge_broker::auth::hash_password(b"pw").unwrap();
    let devices = dir.write("devices", &format!("sensor:{hash}\n"));

    let mut config = crate::harness::test_config();
    config.sys.interval_secs = 0;
    // Global: anonymous clients welcome (a loopback listener for local tools).
    config.auth.allow_anonymous = Some(true);
    let local = ListenerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        name: Some("local".into()),
        ..ListenerConfig::default()
    };
    let mut devices_listener = ListenerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        name: Some("devices".into()),
        ..ListenerConfig::default()
    };
    devices_listener.auth.allow_anonymous = Some(false);
    devices_listener.auth.password_file = Some(devices);
    config.listeners = vec![local, devices_listener];
    let server = Server::start(config).await.expect("broker starts");
    let [local, devices] = [server.local_addrs()[0], server.local_addrs()[1]];

    assert_eq!(connack(local, false, None, None).await, connack_v3(0));
    // Anonymous on the devices listener: v3.1.1 return code 5, v5 0x87.
    assert_eq!(connack(devices, false, None, None).await, connack_v3(5));
    assert_eq!(
        connack(devices, true, None, None).await,
        connack_v5_refused(0x87)
    );
    assert_eq!(
        connack(devices, false, Some("sensor"), Some(b"pw")).await,
        connack_v3(0)
    );
    assert_eq!(
        connack(devices, false, Some("sensor"), Some(b"no")).await,
        connack_v3(4)
    );
    // The local listener has no password file: a user name is only a name there.
    assert_eq!(
        connack(local, false, Some("sensor"), Some(b"no")).await,
        connack_v3(0)
    );
    server.shutdown().await;
}

#[test]
fn listener_auth_tables_parse_and_fall_back_to_auth() {
    let config = Config::from_toml(
        r#"
[[listener]]
bind = "127.0.0.1:1883"

[[listener]]
bind = "127.0.0.1:8883"
[listener.auth]
allow_anonymous = false
password_file = "/etc/midge/devices"
[listener.auth.http]
url = "http://127.0.0.1:8080/auth"

[auth]
allow_anonymous = true
acl_file = "/etc/midge/acl"
"#,
        "t.toml",
    )
    .expect("parses");
    assert_eq!(config.listeners[0].auth.allow_anonymous, None);
    assert_eq!(config.listeners[1].auth.allow_anonymous, Some(false));
    assert!(
        config.listeners[1]
            .auth
            .http
            .as_ref()
            .unwrap()
            .url
            .is_some()
    );
    assert!(config.auth.acl_file.is_some());
    // https:// is supported (issue 14); another scheme is refused, naming the key.
    let error = Config::from_toml("[auth.http]\nurl = \"ftp://x/\"\n", "t.toml")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("auth.http.url") && error.contains("https://"),
        "{error}"
    );
}
