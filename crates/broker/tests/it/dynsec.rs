//! Dynamic security driven by Debian's `mosquitto_ctrl`, unchanged: a file made offline by
//! `mosquitto_ctrl dynsec init`, whose admin then creates a client and a role over MQTT;
//! the client is refused a topic, gains it, loses a live subscription when the ACL is
//! removed, is disconnected when disabled, and the state survives a restart.

use midge_broker::config::DynsecConfig;
use rumqttc::SubscribeReasonCode;

use crate::access_support::{TempDir, broker_with, connack_for};
use crate::client::V3;
use crate::harness::{TIMEOUT, TestBroker};
use crate::interop_util::{Tool, require, run};

/// Runs `mosquitto_ctrl` as the admin against `broker`; it must succeed and print no
/// error. Returns what it printed.
async fn ctrl(broker: &TestBroker, args: &[&str]) -> String {
    let mut all: Vec<String> = [
        "-h",
        "127.0.0.1",
        "-p",
        &broker.port().to_string(),
        "-u",
        "admin",
        "-P",
        "adminpw",
        "dynsec",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let out = run("mosquitto_ctrl", &all, TIMEOUT * 2).await;
    assert!(
        out.status.success() && !out.stdout.contains("Error") && !out.stderr.contains("Error"),
        "mosquitto_ctrl {args:?} failed ({}):\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

async fn init(dir: &TempDir) -> std::path::PathBuf {
    require(Tool::MosquittoClients);
    let file = dir.path().join("dynamic-security.json");
    let out = run(
        "mosquitto_ctrl",
        &[
            "dynsec".into(),
            "init".into(),
            file.display().to_string(),
            "admin".into(),
            "adminpw".into(),
        ],
        TIMEOUT,
    )
    .await;
    assert!(
        out.status.success(),
        "mosquitto_ctrl dynsec init failed (scripts/test-deps.sh installs mosquitto-clients): {}",
        out.stderr
    );
    file
}

async fn dynsec_broker(file: &std::path::Path) -> TestBroker {
    let file = file.to_owned();
    broker_with(|c| {
        c.auth.dynsec = Some(DynsecConfig {
            file,
            iterations: 1000,
        });
        c.auth.rate_limit.failures_burst = 0;
    })
    .await
}

fn login(broker: &TestBroker, client_id: &str, user: &str, password: &str) -> rumqttc::MqttOptions {
    let mut options = V3::options(broker, client_id);
    options.set_credentials(user, password);
    options
}

#[tokio::test]
async fn mosquitto_ctrl_manages_clients_roles_and_live_subscriptions() {
    let dir = TempDir::new("dynsec");
    let file = init(&dir).await;
    let broker = dynsec_broker(&file).await;

    ctrl(&broker, &["createClient", "alice", "-p", "alicepw"]).await;
    ctrl(&broker, &["createClient", "bob", "-p", "bobpw"]).await;
    ctrl(&broker, &["createRole", "reader"]).await;
    ctrl(&broker, &["createRole", "writer"]).await;
    ctrl(
        &broker,
        &[
            "addRoleACL",
            "writer",
            "publishClientSend",
            "data/#",
            "allow",
        ],
    )
    .await;
    ctrl(
        &broker,
        &[
            "addRoleACL",
            "writer",
            "publishClientSend",
            "fence/#",
            "allow",
        ],
    )
    .await;
    ctrl(&broker, &["addClientRole", "bob", "writer"]).await;
    let listed = ctrl(&broker, &["listClients"]).await;
    assert!(
        listed.contains("alice") && listed.contains("bob"),
        "{listed}"
    );

    // alice may connect, but holds no role: defaultACLAccess refuses subscribing and
    // publishing.
    let (mut alice, _) = V3::connect_with(login(&broker, "alice-1", "alice", "alicepw")).await;
    assert_eq!(
        alice.subscribe("data/#", 1).await,
        [SubscribeReasonCode::Failure]
    );
    let denied = broker.stats().publish_denied;
    alice.publish("data/x", 1, false, "refused").await;
    assert_eq!(broker.stats().publish_denied, denied + 1);
    // A client without the admin role cannot send commands: refused like any publish.
    alice
        .publish(
            "$CONTROL/dynamic-security/v1",
            1,
            false,
            r#"{"commands":[{"command":"deleteClient","username":"bob"}]}"#,
        )
        .await;
    assert_eq!(broker.stats().publish_denied, denied + 2);
    assert!(ctrl(&broker, &["getClient", "bob"]).await.contains("bob"));

    // Granted through a role: the subscription succeeds and messages arrive.
    ctrl(
        &broker,
        &[
            "addRoleACL",
            "reader",
            "subscribePattern",
            "data/#",
            "allow",
        ],
    )
    .await;
    ctrl(
        &broker,
        &[
            "addRoleACL",
            "reader",
            "subscribePattern",
            "fence/#",
            "allow",
        ],
    )
    .await;
    ctrl(&broker, &["addClientRole", "alice", "reader", "5"]).await;
    alice.subscribe_ok("data/#", 1).await;
    alice.subscribe_ok("fence/#", 1).await;
    // An unsubscribe ACL that denies: MQTT 3 gets its UNSUBACK, but the subscription
    // stays (the fence message below still arrives); MQTT 5 is told 0x87.
    ctrl(
        &broker,
        &[
            "addRoleACL",
            "reader",
            "unsubscribePattern",
            "fence/#",
            "deny",
        ],
    )
    .await;
    alice.unsubscribe("fence/#").await;
    let mut options = crate::client::V5::options(&broker, "alice-v5");
    options.set_credentials("alice", "alicepw");
    let (mut alice5, _) = crate::client::V5::connect_with(options).await;
    alice5.subscribe_ok("fence/#", 0).await;
    alice5
        .client
        .unsubscribe("fence/#")
        .await
        .expect("request queued");
    loop {
        if let rumqttc::v5::mqttbytes::v5::Packet::UnsubAck(ack) = alice5.incoming().await {
            assert_eq!(
                ack.reasons,
                [rumqttc::v5::mqttbytes::v5::UnsubAckReason::NotAuthorized]
            );
            break;
        }
    }
    drop(alice5);
    let (mut bob, _) = V3::connect_with(login(&broker, "bob-1", "bob", "bobpw")).await;
    // Bound to a client id, bob may log in with that one only.
    ctrl(&broker, &["setClientId", "bob", "bob-1"]).await;
    assert_eq!(
        connack_for(&broker, false, Some("bob"), Some(b"bobpw")).await[3],
        4,
        "bob logged in with another client id"
    );
    bob.publish("data/1", 1, false, "one").await;
    let got = alice.next_publish().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("data/1", &b"one"[..])
    );

    // The ACL goes: the live subscription goes with it. What bob publishes next under
    // data/ no longer arrives; the fence message, published after it, does.
    ctrl(
        &broker,
        &["removeRoleACL", "reader", "subscribePattern", "data/#"],
    )
    .await;
    bob.publish("data/2", 1, false, "two").await;
    bob.publish("fence/1", 1, false, "fence").await;
    let got = alice.next_publish().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("fence/1", &b"fence"[..]),
        "a message under the removed ACL arrived"
    );
    assert_eq!(
        alice.subscribe("data/#", 1).await,
        [SubscribeReasonCode::Failure]
    );

    // Disabled: the live connection is closed, and logging in again is refused.
    ctrl(&broker, &["disableClient", "alice"]).await;
    let shown = ctrl(&broker, &["getClient", "alice"]).await;
    assert!(
        shown.contains("Disabled: true") && shown.contains("reader (priority: 5)"),
        "{shown}"
    );
    let _ = tokio::time::timeout(TIMEOUT, alice.closed())
        .await
        .expect("alice's connection was not closed after disableClient");
    assert_eq!(
        connack_for(&broker, false, Some("alice"), Some(b"alicepw")).await[3],
        4,
        "a disabled client logged in"
    );
    // Deleted: bob's connection is closed too.
    ctrl(&broker, &["deleteClient", "bob"]).await;
    let _ = tokio::time::timeout(TIMEOUT, bob.closed())
        .await
        .expect("bob's connection was not closed after deleteClient");
    broker.shutdown().await;

    // The file holds the changes: a new broker starts from it.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let users: Vec<&str> = saved["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["username"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["admin", "alice"]);
    let broker = dynsec_broker(&file).await;
    assert_eq!(
        connack_for(&broker, false, Some("alice"), Some(b"alicepw")).await[3],
        4,
        "alice is no longer disabled after a restart"
    );
    ctrl(&broker, &["enableClient", "alice"]).await;
    let (mut alice, _) = V3::connect_with(login(&broker, "alice-2", "alice", "alicepw")).await;
    alice.subscribe_ok("fence/#", 1).await;
    assert_eq!(
        alice.subscribe("data/#", 0).await,
        [SubscribeReasonCode::Failure]
    );
    // mosquitto_ctrl's form of setDefaultACLAccess: with no ACL about data/#, the default
    // now allows it.
    ctrl(&broker, &["setDefaultACLAccess", "subscribe", "allow"]).await;
    let defaults = ctrl(&broker, &["getDefaultACLAccess"]).await;
    assert!(
        defaults.contains("subscribe            : allow"),
        "{defaults}"
    );
    alice.subscribe_ok("data/#", 0).await;
    assert_eq!(
        connack_for(&broker, false, Some("alice"), Some(b"wrong")).await[3],
        4
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_damaged_file_stops_the_start_naming_it() {
    let dir = TempDir::new("dynsec-damaged");
    let file = dir.write(
        "dynamic-security.json",
        "{\"clients\": [{\"username\": 5}]}",
    );
    let mut config = crate::harness::test_config();
    config.auth.dynsec = Some(DynsecConfig {
        file: file.clone(),
        iterations: 1000,
    });
    let error = midge_broker::Server::start(config)
        .await
        .expect_err("a damaged dynamic-security file was accepted")
        .to_string();
    assert!(
        error.contains(&file.display().to_string()) && error.contains("username"),
        "{error}"
    );
    // Never silently replaced.
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "{\"clients\": [{\"username\": 5}]}"
    );
}

/// The admin API takes the same command documents: an admin changes, a viewer only
/// reads, and a change applies to live connections at once.
#[tokio::test]
async fn the_admin_api_runs_the_same_commands() {
    use crate::admin_http::request;

    let dir = TempDir::new("dynsec-admin");
    let file = init(&dir).await;
    let admin_hash = midge_broker::auth::hash_password(b"secret").unwrap();
    let viewer_hash = midge_broker::auth::hash_password(b"look").unwrap();
    let users = dir.write(
        "admin-users",
        &format!("root:{admin_hash}\nwatcher:{viewer_hash}\n"),
    );
    let dynsec_file = file.clone();
    let broker = broker_with(|c| {
        c.auth.dynsec = Some(DynsecConfig {
            file: dynsec_file,
            iterations: 1000,
        });
        c.admin.password_file = Some(users);
        c.admin.viewers = vec!["watcher".to_owned()];
    })
    .await;
    let post = |login: (&'static str, &'static str), body: serde_json::Value| {
        let addr = broker.admin();
        async move {
            let answer = request(
                addr,
                "POST",
                "/api/v1/dynsec",
                Some(login),
                Some(body.to_string().as_bytes()),
            )
            .await;
            assert_eq!(answer.status, 200, "{}", answer.text());
            answer.json()["responses"].clone()
        }
    };
    let root = ("root", "secret");
    let watcher = ("watcher", "look");

    let replies = post(
        root,
        serde_json::json!({"commands": [
            {"command": "createRole", "rolename": "r", "acls": [
                {"acltype": "subscribePattern", "topic": "t/#", "allow": true}]},
            {"command": "createClient", "username": "carol", "password": "cpw",
             "roles": [{"rolename": "r"}], "correlationData": "42"},
        ]}),
    )
    .await;
    assert_eq!(
        replies,
        serde_json::json!([
            {"command": "createRole"},
            {"command": "createClient", "correlationData": "42"},
        ])
    );
    let (mut carol, _) = V3::connect_with(login(&broker, "carol-1", "carol", "cpw")).await;
    carol.subscribe_ok("t/#", 0).await;

    // publishClientReceive: the subscription stands, and each delivery is checked.
    let replies = post(
        root,
        serde_json::json!({"commands": [
            {"command": "addRoleACL", "rolename": "r", "acltype": "publishClientReceive",
             "topic": "t/secret", "allow": false},
            {"command": "createRole", "rolename": "w", "acls": [
                {"acltype": "publishClientSend", "topic": "t/#", "allow": true}]},
            {"command": "createClient", "username": "dave", "password": "dpw",
             "roles": [{"rolename": "w"}]},
        ]}),
    )
    .await;
    assert!(
        replies
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.get("error").is_none()),
        "{replies}"
    );
    let (mut dave, _) = V3::connect_with(login(&broker, "dave-1", "dave", "dpw")).await;
    dave.publish("t/secret", 1, false, "hidden").await;
    dave.publish("t/open", 1, false, "shown").await;
    let got = carol.next_publish().await;
    assert_eq!(
        got.topic, "t/open",
        "a delivery the receive ACL denies arrived"
    );

    // A viewer reads; its changes are refused and change nothing.
    let replies = post(
        watcher,
        serde_json::json!({"commands": [
            {"command": "getRole", "rolename": "r"},
            {"command": "disableClient", "username": "carol"},
        ]}),
    )
    .await;
    let acls = replies[0]["data"]["role"]["acls"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        acls.contains(
            &serde_json::json!({"acltype": "subscribePattern", "topic": "t/#",
            "priority": -1, "allow": true})
        ),
        "{acls:?}"
    );
    assert_eq!(replies[1]["error"], "Not authorized");
    carol.subscribe_ok("t/x", 0).await;

    // The admin disables carol: her live connection ends.
    let replies = post(
        root,
        serde_json::json!({"commands": [{"command": "disableClient", "username": "carol"}]}),
    )
    .await;
    assert!(replies[0].get("error").is_none(), "{replies}");
    let _ = tokio::time::timeout(TIMEOUT, carol.closed())
        .await
        .expect("carol's connection was not closed after disableClient");
    broker.shutdown().await;
}

/// A dynsec file with `users` (name, password) and no roles, written by the test.
pub(crate) fn dynsec_file(dir: &TempDir, users: &[(&str, &str)]) -> std::path::PathBuf {
    use base64ct::Encoding;
    let clients: Vec<serde_json::Value> = users
        .iter()
        .map(|(name, password)| {
            let hash = midge_broker::auth::dynsec::Hashed::new(password.as_bytes(), 1000).unwrap();
            serde_json::json!({
                "username": name,
                "password": base64ct::Base64::encode_string(&hash.hash),
                "salt": base64ct::Base64::encode_string(&hash.salt),
                "iterations": hash.iterations,
            })
        })
        .collect();
    dir.write(
        "dynamic-security.json",
        &serde_json::json!({ "clients": clients }).to_string(),
    )
}

/// `[auth] order` with the password file and dynsec: the first that knows the user
/// decides; a user only the password file knows may not send dynsec commands.
#[tokio::test]
async fn the_first_source_that_knows_the_user_decides() {
    use midge_broker::config::AuthSource;

    let dir = TempDir::new("dynsec-order");
    let file = dynsec_file(&dir, &[("alice", "dynpass"), ("bob", "bobpass")]);
    let hash = midge_broker::auth::hash_password(b"filepass").unwrap();
    let passwd = dir.write("passwd", &format!("alice:{hash}\ncarol:{hash}\n"));
    for (order, alice_ok, alice_refused) in [
        (Vec::new(), "filepass", "dynpass"),
        (
            vec![AuthSource::Dynsec, AuthSource::PasswordFile],
            "dynpass",
            "filepass",
        ),
    ] {
        let (file, passwd) = (file.clone(), passwd.clone());
        let broker = broker_with(|c| {
            c.auth.dynsec = Some(DynsecConfig {
                file,
                iterations: 1000,
            });
            c.auth.password_file = Some(passwd);
            c.auth.order = order.clone();
            c.auth.rate_limit.failures_burst = 0;
        })
        .await;
        let code = |user: &'static str, password: &'static str| {
            let broker = &broker;
            async move { connack_for(broker, false, Some(user), Some(password.as_bytes())).await[3] }
        };
        assert_eq!(code("alice", alice_ok).await, 0, "{order:?}");
        assert_eq!(code("alice", alice_refused).await, 4, "{order:?}");
        assert_eq!(code("bob", "bobpass").await, 0, "{order:?}");
        assert_eq!(code("carol", "filepass").await, 0, "{order:?}");
        assert_eq!(code("nobody", "filepass").await, 4, "{order:?}");

        // carol (password file only, no ACL file: every topic open) still may not send
        // dynsec commands.
        let (mut carol, _) = V3::connect_with(login(&broker, "carol-1", "carol", "filepass")).await;
        let denied = broker.stats().publish_denied;
        carol
            .publish(
                "$CONTROL/dynamic-security/v1",
                1,
                false,
                r#"{"commands":[{"command":"deleteClient","username":"bob"}]}"#,
            )
            .await;
        assert_eq!(broker.stats().publish_denied, denied + 1);
        carol.publish("open/topic", 1, false, "fine").await;
        assert_eq!(broker.stats().publish_denied, denied + 1);
        // Nor read their replies.
        assert_eq!(
            carol.subscribe("$CONTROL/#", 0).await,
            [SubscribeReasonCode::Failure]
        );
        carol.subscribe_ok("open/#", 0).await;
        broker.shutdown().await;
    }
}
