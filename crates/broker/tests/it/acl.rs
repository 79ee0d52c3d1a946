//! ACL files: publish, subscribe, retained and live delivery, wills, `%u`/`%c` patterns,
//! with v3.1.1 and v5 clients in raw bytes and rumqttc.

use std::path::PathBuf;
use std::time::Duration;

use midge_broker::Broker;

use crate::access_support::{
    TempDir, WillSpec, broker_with, connect, connect_with, connected, parse_publish,
    publish_packet_id, publish_qos1, raw, subscribe,
};
use crate::harness::{Raw, TIMEOUT, TestBroker};

const V3: bool = false;
const V5: bool = true;

const ACL: &str = "\
# rules for everyone: `pattern` lines (leading `topic` lines would be for anonymous clients)
pattern read public/#
pattern deny test/nosubscribe

user admin
topic readwrite #

user alice
topic readwrite alice/#
topic read test/#
topic deny test/secret
topic write wills/ok

user bob
topic read bob/#

pattern readwrite devices/%c/#
pattern read users/%u/#
";

/// A broker with a password file (admin, alice, bob; password = user name) and [`ACL`].
async fn acl_broker(dir: &TempDir) -> TestBroker {
    let mut passwords = String::new();
    for user in ["admin", "alice", "bob"] {
        let hash = midge_broker::auth::hash_password(user.as_bytes()).unwrap();
        passwords.push_str(&format!("{user}:{hash}\n"));
    }
    let password_file = dir.write("passwords", &passwords);
    let acl_file: PathBuf = dir.write("acl", ACL);
    broker_with(|c| {
        c.auth.password_file = Some(password_file);
        c.auth.acl_file = Some(acl_file);
    })
    .await
}

/// Mosquitto's meaning: leading `topic` lines are for anonymous clients only, so a file
/// that grants anonymous clients `anon/#` grants a named user nothing of it; with
/// `acl_leading_topics = "everyone"` (the old reading, an explicit option) it does.
#[tokio::test]
async fn leading_topic_lines_grant_anonymous_clients_only() {
    use midge_broker::config::AclLeadingTopics;
    const FILE: &str = "topic readwrite anon/#\nuser alice\ntopic readwrite alice/#\n";
    for (leading, alice_gets_anon) in [
        (None, false),
        (Some(AclLeadingTopics::Anonymous), false),
        (Some(AclLeadingTopics::Everyone), true),
    ] {
        let dir = TempDir::new("acl-leading");
        let hash = midge_broker::auth::hash_password(b"alice").unwrap();
        let password_file = dir.write("passwords", &format!("alice:{hash}\n"));
        let acl_file = dir.write("acl", FILE);
        let broker = broker_with(|c| {
            c.auth.password_file = Some(password_file);
            c.auth.acl_file = Some(acl_file);
            c.auth.allow_anonymous = Some(true);
            if let Some(leading) = leading {
                c.auth.acl_leading_topics = leading;
            }
        })
        .await;
        for v5 in [V3, V5] {
            let refused = if v5 { 0x87 } else { 0x80 };
            let mut anonymous = connected(&broker, v5, &format!("anon-{v5}"), None, None).await;
            assert_eq!(suback_code(&mut anonymous, v5, "anon/#").await, 0x01);
            assert_eq!(suback_code(&mut anonymous, v5, "alice/#").await, refused);
            let mut alice = login(&broker, v5, &format!("alice-{v5}"), "alice").await;
            assert_eq!(suback_code(&mut alice, v5, "alice/#").await, 0x01);
            let expected = if alice_gets_anon { 0x01 } else { refused };
            assert_eq!(
                suback_code(&mut alice, v5, "anon/x").await,
                expected,
                "{leading:?}"
            );
            if v5 {
                let ack = puback(&mut alice, v5, "anon/x", b"p", false).await;
                let code = ack.get(4).copied().unwrap_or(0);
                assert_eq!(code == 0x87, !alice_gets_anon, "{leading:?}");
            }
        }
        broker.shutdown().await;
    }
}

async fn login(broker: &TestBroker, v5: bool, client_id: &str, user: &str) -> Raw {
    connected(broker, v5, client_id, Some(user), Some(user.as_bytes())).await
}

/// Subscribes and returns the SUBACK's return code / reason code.
async fn suback_code(client: &mut Raw, v5: bool, filter: &str) -> u8 {
    client.send(&subscribe(v5, 1, filter, 1)).await;
    let suback = client.recv_packet().await;
    assert_eq!(suback[0], 0x90, "{suback:02X?}");
    // v3: 90 03 <id> <code>; v5: 90 04 <id> <properties length 0> <code>.
    *suback.last().unwrap()
}

/// Publishes at QoS 1 and returns the PUBACK.
async fn puback(client: &mut Raw, v5: bool, topic: &str, payload: &[u8], retain: bool) -> Vec<u8> {
    client
        .send(&publish_qos1(v5, 7, topic, payload, retain))
        .await;
    let ack = client.recv_packet().await;
    assert_eq!(ack[0], 0x40, "{ack:02X?}");
    ack
}

/// Receives PUBLISH packets, acknowledging QoS 1 ones, and returns (topic, payload).
async fn next_message(client: &mut Raw, v5: bool) -> (String, Vec<u8>) {
    let packet = client.recv_packet().await;
    if let Some(id) = publish_packet_id(&packet) {
        // PUBACK: packet id, success.
        let [high, low] = id.to_be_bytes();
        client.send(&[0x40, 0x02, high, low]).await;
    }
    parse_publish(v5, &packet)
}

#[tokio::test]
async fn publish_outside_the_acl_gets_0x87_in_v5_and_is_not_routed() {
    let dir = TempDir::new("acl-pub-v5");
    let broker = acl_broker(&dir).await;
    let mut admin = login(&broker, V5, "admin", "admin").await;
    assert_eq!(suback_code(&mut admin, V5, "#").await, 0x01);
    let mut alice = login(&broker, V5, "alice", "alice").await;

    // PUBACK: packet id 7, reason 0x87 not authorized.
    assert_eq!(
        puback(&mut alice, V5, "bob/x", b"no", false).await,
        [0x40, 0x03, 0x00, 0x07, 0x87]
    );
    // Allowed: reason 0x00 (a subscriber matched), and it is the next thing admin sees.
    assert_eq!(
        puback(&mut alice, V5, "alice/x", b"yes", false).await,
        [0x40, 0x02, 0x00, 0x07]
    );
    assert_eq!(
        next_message(&mut admin, V5).await,
        ("alice/x".into(), b"yes".to_vec())
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn publish_outside_the_acl_is_acknowledged_and_dropped_in_v3() {
    let dir = TempDir::new("acl-pub-v3");
    let broker = acl_broker(&dir).await;
    let mut admin = login(&broker, V3, "admin", "admin").await;
    assert_eq!(suback_code(&mut admin, V3, "#").await, 0x01);
    let mut alice = login(&broker, V3, "alice", "alice").await;

    // v3 cannot be told: a plain PUBACK for packet id 7 [MQTT-3.3.5-2].
    assert_eq!(
        puback(&mut alice, V3, "bob/x", b"no", false).await,
        [0x40, 0x02, 0x00, 0x07]
    );
    assert_eq!(
        puback(&mut alice, V3, "alice/x", b"yes", false).await,
        [0x40, 0x02, 0x00, 0x07]
    );
    assert_eq!(
        next_message(&mut admin, V3).await,
        ("alice/x".into(), b"yes".to_vec())
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn subscriptions_outside_the_acl_are_refused() {
    let dir = TempDir::new("acl-sub");
    let broker = acl_broker(&dir).await;
    for v5 in [V3, V5] {
        let refused = if v5 { 0x87 } else { 0x80 };
        let mut bob = login(&broker, v5, "bob", "bob").await;
        assert_eq!(suback_code(&mut bob, v5, "bob/#").await, 0x01);
        assert_eq!(suback_code(&mut bob, v5, "alice/#").await, refused);
        assert_eq!(suback_code(&mut bob, v5, "other/#").await, refused);
        // Patterns apply to users too.
        assert_eq!(suback_code(&mut bob, v5, "public/news").await, 0x01);
        // `pattern deny test/nosubscribe` refuses it even to admin, who may read `#`.
        let mut admin = login(&broker, v5, "admin", "admin").await;
        assert_eq!(
            suback_code(&mut admin, v5, "test/nosubscribe").await,
            refused
        );
        assert_eq!(suback_code(&mut admin, v5, "test/other").await, 0x01);
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn rumqttc_v311_sees_a_refused_subscription() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
    let dir = TempDir::new("acl-rumqttc");
    let broker = acl_broker(&dir).await;
    let mut options = MqttOptions::new("bob-rumqttc", "127.0.0.1", broker.port());
    options.set_credentials("bob", "bob");
    let (client, mut events) = AsyncClient::new(options, 10);
    client.subscribe("alice/#", QoS::AtLeastOnce).await.unwrap();
    let codes = tokio::time::timeout(TIMEOUT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(ack))) => return ack.return_codes,
                Ok(_) => {}
                Err(e) => panic!("rumqttc: {e}"),
            }
        }
    })
    .await
    .expect("SUBACK in time");
    assert_eq!(codes, [SubscribeReasonCode::Failure]);
    broker.shutdown().await;
}

#[tokio::test]
async fn retained_and_live_messages_under_a_denied_topic_are_not_delivered() {
    let dir = TempDir::new("acl-retained");
    let broker = acl_broker(&dir).await;
    let mut admin = login(&broker, V5, "admin", "admin").await;
    puback(&mut admin, V5, "test/secret", b"s", true).await;
    puback(&mut admin, V5, "test/open", b"o", true).await;

    for v5 in [V3, V5] {
        let mut alice = login(&broker, v5, &format!("alice-{v5}"), "alice").await;
        // alice may read test/# except test/secret: granted, and filtered per message.
        assert_eq!(suback_code(&mut alice, v5, "test/#").await, 0x01);
        assert_eq!(
            next_message(&mut alice, v5).await,
            ("test/open".into(), b"o".to_vec())
        );
        puback(&mut admin, V5, "test/secret", b"live secret", false).await;
        puback(&mut admin, V5, "test/open", b"live open", false).await;
        assert_eq!(
            next_message(&mut alice, v5).await,
            ("test/open".into(), b"live open".to_vec())
        );
    }
    // A filter wholly inside the denied topic is refused, so no retained message either.
    let mut alice = login(&broker, V5, "alice-2", "alice").await;
    assert_eq!(suback_code(&mut alice, V5, "test/secret").await, 0x87);
    alice.send(&[0xC0, 0x00]).await; // PINGREQ
    assert_eq!(alice.recv(2).await, [0xD0, 0x00], "nothing before PINGRESP");
    broker.shutdown().await;
}

#[tokio::test]
async fn patterns_substitute_client_id_and_user_name() {
    let dir = TempDir::new("acl-patterns");
    let broker = acl_broker(&dir).await;
    let mut bob = login(&broker, V5, "dev1", "bob").await;
    // %c: devices/dev1/# is bob's through his client id; 0x10 = no matching subscribers.
    assert_eq!(
        puback(&mut bob, V5, "devices/dev1/t", b"1", false).await,
        [0x40, 0x03, 0x00, 0x07, 0x10]
    );
    assert_eq!(
        puback(&mut bob, V5, "devices/dev2/t", b"1", false).await,
        [0x40, 0x03, 0x00, 0x07, 0x87]
    );
    // %u: users/bob/# readable, users/alice/# not.
    assert_eq!(suback_code(&mut bob, V5, "users/bob/#").await, 0x01);
    assert_eq!(suback_code(&mut bob, V5, "users/alice/#").await, 0x87);
    // Anonymous clients get no %u rules (here: the broker refuses them anyway).
    broker.shutdown().await;
}

#[tokio::test]
async fn a_will_is_published_only_to_a_topic_the_client_may_write() {
    let dir = TempDir::new("acl-will");
    let broker = acl_broker(&dir).await;
    let mut admin = login(&broker, V3, "admin", "admin").await;
    assert_eq!(suback_code(&mut admin, V3, "wills/#").await, 0x01);
    let denied_before = denied(broker.broker());
    for (client_id, topic) in [("w-denied", "wills/denied"), ("w-ok", "wills/ok")] {
        let mut client = raw(&broker).await;
        let will = WillSpec {
            topic,
            payload: b"gone",
        };
        client
            .send(&connect(
                V3,
                client_id,
                Some("alice"),
                Some(b"alice"),
                Some(will),
            ))
            .await;
        assert_eq!(client.recv_packet().await, [0x20, 0x02, 0x00, 0x00]);
        // Closing without DISCONNECT makes the will due.
        drop(client);
        if topic == "wills/denied" {
            // The broker sends nothing observable for a refused will but its counter
            // (`$SYS/.../publish/messages/denied`); wait for it so the order below holds.
            wait_for_denied(broker.broker(), denied_before + 1).await;
        }
    }
    // The denied will was decided first; the first will admin sees is the allowed one.
    assert_eq!(
        next_message(&mut admin, V3).await,
        ("wills/ok".into(), b"gone".to_vec())
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_resumed_session_keeps_only_what_the_new_user_may_read() {
    // Neither alice's subscription nor what was queued for it reaches bob.
    let dir = TempDir::new("acl-resume");
    let broker = acl_broker(&dir).await;
    // alice subscribes alice/# in a persistent session (v3.1.1, clean session 0), leaves.
    let mut alice = raw(&broker).await;
    alice
        .send(&connect_with(
            V3,
            "shared-id",
            Some("alice"),
            Some(b"alice"),
            None,
            false,
        ))
        .await;
    assert_eq!(alice.recv_packet().await, [0x20, 0x02, 0x00, 0x00]);
    assert_eq!(suback_code(&mut alice, V3, "alice/#").await, 0x01);
    alice.send(&[0xE0, 0x00]).await; // DISCONNECT
    let _ = alice.recv_until_closed().await;
    // A QoS 1 message for alice waits in the parked session.
    let mut admin = login(&broker, V3, "admin", "admin").await;
    puback(&mut admin, V3, "alice/queued", b"for alice", false).await;

    // bob resumes that session (session present = 1) and subscribes to his own topics.
    let mut bob = raw(&broker).await;
    bob.send(&connect_with(
        V3,
        "shared-id",
        Some("bob"),
        Some(b"bob"),
        None,
        false,
    ))
    .await;
    assert_eq!(bob.recv_packet().await, [0x20, 0x02, 0x01, 0x00]);
    assert_eq!(suback_code(&mut bob, V3, "bob/#").await, 0x01);
    puback(&mut admin, V3, "alice/private", b"for alice", false).await;
    puback(&mut admin, V3, "bob/inbox", b"for bob", false).await;
    assert_eq!(
        next_message(&mut bob, V3).await,
        ("bob/inbox".into(), b"for bob".to_vec())
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn an_acl_reload_applies_to_the_next_publish() {
    let dir = TempDir::new("acl-reload");
    let broker = acl_broker(&dir).await;
    let mut bob = login(&broker, V5, "bob", "bob").await;
    assert_eq!(
        puback(&mut bob, V5, "bob/x", b"1", false).await,
        [0x40, 0x03, 0x00, 0x07, 0x87]
    );
    dir.write("acl", &format!("{ACL}\nuser bob\ntopic write bob/#\n"));
    broker
        .server
        .as_ref()
        .unwrap()
        .reload()
        .await
        .expect("reload");
    assert_eq!(
        puback(&mut bob, V5, "bob/x", b"1", false).await,
        [0x40, 0x03, 0x00, 0x07, 0x10]
    );
    broker.shutdown().await;
}

fn denied(broker: &Broker) -> u64 {
    broker
        .stats
        .publish_denied
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Polls the denied counter: a refused will has no other trace to await.
async fn wait_for_denied(broker: &Broker, at_least: u64) {
    tokio::time::timeout(TIMEOUT, async {
        while denied(broker) < at_least {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the will was not refused in time");
}

/// Issue 9, defect 7 (the class of CVE-2021-34434): a reload that takes away a read
/// right ends the live subscription it granted, at once, for v3 and v5.
#[tokio::test]
async fn an_acl_reload_revokes_live_subscriptions() {
    for v5 in [V3, V5] {
        let dir = TempDir::new("acl-revoke");
        let broker = acl_broker(&dir).await;
        let mut alice = login(&broker, v5, "alice", "alice").await;
        assert_eq!(suback_code(&mut alice, v5, "alice/#").await, 1);
        assert_eq!(suback_code(&mut alice, v5, "public/#").await, 1);
        let mut admin = login(&broker, v5, "admin", "admin").await;
        puback(&mut admin, v5, "alice/inbox", b"before", false).await;
        assert_eq!(next_message(&mut alice, v5).await.1, b"before");
        assert_eq!(broker.broker().router.len(), 2);

        // alice keeps public/# (the rule for everyone) and loses alice/#.
        dir.write("acl", &ACL.replace("topic readwrite alice/#\n", ""));
        broker
            .server
            .as_ref()
            .unwrap()
            .reload()
            .await
            .expect("reload");
        // The reload wakes alice's connection, which checks its subscriptions again.
        tokio::time::timeout(TIMEOUT, async {
            while broker.broker().router.len() != 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the revoked subscription was not removed in time");
        let ack = puback(&mut admin, v5, "alice/inbox", b"after", false).await;
        if v5 {
            assert_eq!(ack[4], 0x10, "v5 PUBACK: no matching subscribers");
        }
        puback(&mut admin, v5, "public/news", b"still", false).await;
        // The next message is the one the remaining subscription allows.
        assert_eq!(
            next_message(&mut alice, v5).await,
            ("public/news".to_string(), b"still".to_vec())
        );
        broker.shutdown().await;
    }
}
