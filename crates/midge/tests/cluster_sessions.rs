//! Persistent sessions moving between nodes of a cluster of real `midge` binaries on a
//! real nats-server. Clients are raw MQTT bytes. A missing nats-server fails these tests:
//! they never skip.

mod support;

use std::time::Duration;

use support::cluster::*;
use support::*;

/// Payloads of `got`, without a v5 PUBLISH's (empty) property list.
fn payloads(got: &[RawPublish], v5: bool) -> Vec<Vec<u8>> {
    got.iter()
        .map(|p| {
            if v5 {
                assert_eq!(p.payload.first(), Some(&0), "v5 properties: {p:?}");
                p.payload[1..].to_vec()
            } else {
                p.payload.clone()
            }
        })
        .collect()
}

/// A persistent session subscribed on A, offline while messages are queued for it on A,
/// resumes on B: session present, the queued QoS 1 and 2 messages arrive once, and its
/// subscription now works on B (messages from either node).
async fn moves_from_a_to_b_with_its_queue(name: &str, v5: bool) {
    let (_dir, _nats, a, b, _da, _db) = two_nodes(name).await;
    let open = |clean: bool| {
        if v5 {
            connect_v5("mover", clean, 300)
        } else {
            connect_v311("mover", clean)
        }
    };
    let (mut client, present) = connect(a.port, &open(false)).await;
    assert!(!present);
    client.send(&subscribe(v5, 1, "s/#", 2)).await.unwrap();
    assert_eq!(client.recv().await.unwrap().kind(), 9, "SUBACK");
    client.send(&DISCONNECT).await.unwrap();
    drop(client);

    // Queued on A for the offline session.
    let (mut publisher, _) = connect(a.port, &connect_v311("pub-a", true)).await;
    publish_acked(&mut publisher, 1, "s/1", 1, b"one").await;
    publish_acked(&mut publisher, 2, "s/2", 2, b"two").await;
    publish_acked(&mut publisher, 1, "s/3", 3, b"three").await;

    let (mut client, present) = connect(b.port, &open(false)).await;
    assert!(present, "session present on B\n{}", b.last_log());
    let got = receive(&mut client, 3).await;
    assert_eq!(
        payloads(&got, v5),
        [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );
    assert_eq!(
        got.iter().map(|p| p.qos).collect::<Vec<_>>(),
        [1, 2, 1],
        "QoS kept"
    );

    // The subscription lives on B now: messages from A cross over, and B's own arrive.
    let (mut publisher_b, _) = connect(b.port, &connect_v311("pub-b", true)).await;
    publish_acked(&mut publisher, 1, "s/4", 4, b"from a").await;
    assert_eq!(
        payloads(&receive(&mut client, 1).await, v5),
        [b"from a".to_vec()]
    );
    publish_acked(&mut publisher_b, 1, "s/5", 1, b"from b").await;
    assert_eq!(
        payloads(&receive(&mut client, 1).await, v5),
        [b"from b".to_vec()]
    );
}

#[tokio::test]
async fn a_v5_session_moves_to_another_node_with_its_queue() {
    moves_from_a_to_b_with_its_queue("sessions-v5", true).await;
}

#[tokio::test]
async fn a_v3_session_moves_to_another_node_with_its_queue() {
    moves_from_a_to_b_with_its_queue("sessions-v3", false).await;
}

/// A CONNECT on B while the session is connected on A: A's connection goes, the session
/// moves, and its subscription delivers on B, once.
#[tokio::test]
async fn a_live_session_taken_over_from_another_node_keeps_its_subscriptions() {
    let (_dir, _nats, a, b, _da, _db) = two_nodes("sessions-live").await;
    let (mut first, _) = connect(a.port, &connect_v5("live", false, 300)).await;
    first.send(&subscribe(true, 1, "l/+", 1)).await.unwrap();
    assert_eq!(first.recv().await.unwrap().kind(), 9, "SUBACK");
    let (mut second, present) = connect(b.port, &connect_v5("live", false, 300)).await;
    assert!(present, "session present\n{}", b.last_log());
    let (mut publisher, _) = connect(a.port, &connect_v311("pub-live", true)).await;
    // B subscribed in NATS before its CONNACK, but A may not know yet (CLUSTER.md: the
    // SUBACK window): probes until one comes round.
    until_seen(&mut publisher, &mut second, "l/probe").await;
    publish_acked(&mut publisher, 1, "l/x", 1, b"after").await;
    assert_eq!(
        payloads(&receive(&mut second, 1).await, true),
        [b"after".to_vec()]
    );
    // A's connection was closed with 0x8E and got nothing more.
    let mut reason = None;
    while let Ok(p) = first.recv().await {
        assert_eq!(p.kind(), 14, "only DISCONNECT: {p:02X?}");
        reason = p.body.first().copied();
    }
    assert_eq!(reason, Some(0x8E));
}

/// A clean start on B discards the session parked on A: nothing queued arrives, and
/// nothing published later either.
#[tokio::test]
async fn a_clean_start_elsewhere_discards_the_parked_session() {
    let (_dir, _nats, a, b, _da, _db) = two_nodes("sessions-clean").await;
    let (mut client, _) = connect(a.port, &connect_v5("cleaner", false, 300)).await;
    client.send(&subscribe(true, 1, "c/#", 1)).await.unwrap();
    assert_eq!(client.recv().await.unwrap().kind(), 9, "SUBACK");
    client.send(&DISCONNECT).await.unwrap();
    let (mut publisher, _) = connect(a.port, &connect_v311("pub-clean", true)).await;
    publish_acked(&mut publisher, 1, "c/1", 1, b"queued").await;
    let (mut client, present) = connect(b.port, &connect_v5("cleaner", true, 300)).await;
    assert!(!present);
    publish_acked(&mut publisher, 1, "c/2", 2, b"later").await;
    receive(&mut client, 0).await;
}

/// A session whose expiry passed while offline is not resumed on another node.
#[tokio::test]
async fn an_expired_session_does_not_move() {
    let (_dir, _nats, a, b, _da, _db) = two_nodes("sessions-expiry").await;
    let (mut client, _) = connect(a.port, &connect_v5("brief", false, 1)).await;
    client.send(&subscribe(true, 1, "e/#", 1)).await.unwrap();
    assert_eq!(client.recv().await.unwrap().kind(), 9, "SUBACK");
    client.send(&DISCONNECT).await.unwrap();
    let (mut publisher, _) = connect(a.port, &connect_v311("pub-exp", true)).await;
    publish_acked(&mut publisher, 1, "e/1", 1, b"queued").await;
    // Past the 1 s expiry (the registry's tick runs every second).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (mut client, present) = connect(b.port, &connect_v5("brief", false, 300)).await;
    assert!(!present, "expired session resumed");
    receive(&mut client, 0).await;
}

/// A's death: the session's subscriptions come back on B from the `midge_sessions`
/// bucket (session present), the messages A held queued for it are lost (stage 1, as
/// CLUSTER.md says: all of them, measured here), and what is published afterwards
/// arrives.
#[tokio::test]
async fn after_its_node_is_killed_a_session_resumes_elsewhere_without_its_queue() {
    let (_dir, _nats, mut a, b, _da, _db) = two_nodes("sessions-dead").await;
    let (mut client, _) = connect(a.port, &connect_v5("orphan", false, 300)).await;
    client.send(&subscribe(true, 1, "d/#", 1)).await.unwrap();
    assert_eq!(client.recv().await.unwrap().kind(), 9, "SUBACK");
    client.send(&DISCONNECT).await.unwrap();
    drop(client);
    let (mut publisher, _) = connect(a.port, &connect_v311("pub-dead", true)).await;
    const QUEUED_ON_A: usize = 3;
    for i in 0..QUEUED_ON_A {
        publish_acked(&mut publisher, 1, "d/q", i as u16 + 1, b"queued on a").await;
    }
    // The session's record is written after its SUBACK and its park, not awaited; give
    // the writes a moment before the kill.
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill();

    let (mut client, present) = connect(b.port, &connect_v5("orphan", false, 300)).await;
    assert!(present, "session present from the bucket\n{}", b.last_log());
    // Measured: of the QUEUED_ON_A messages A held for the offline session, none arrive.
    let lost = receive(&mut client, 0).await;
    assert!(lost.is_empty());
    let (mut publisher_b, _) = connect(b.port, &connect_v311("pub-b", true)).await;
    publish_acked(&mut publisher_b, 1, "d/x", 1, b"after").await;
    assert_eq!(
        payloads(&receive(&mut client, 1).await, true),
        [b"after".to_vec()]
    );
}

/// A session that expired while its node was dead is not restored from the bucket.
#[tokio::test]
async fn an_expired_session_of_a_dead_node_is_not_restored() {
    let (_dir, _nats, mut a, b, _da, _db) = two_nodes("sessions-dead-expiry").await;
    let (mut client, _) = connect(a.port, &connect_v5("gone", false, 1)).await;
    client.send(&subscribe(true, 1, "g/#", 1)).await.unwrap();
    assert_eq!(client.recv().await.unwrap().kind(), 9, "SUBACK");
    client.send(&DISCONNECT).await.unwrap();
    // The record is written right after the park; give it a moment before the kill.
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_client, present) = connect(b.port, &connect_v5("gone", false, 300)).await;
    assert!(!present, "an expired session was restored");
}

/// A session *connected* on A when A dies: its subscriptions, written to the bucket at
/// SUBSCRIBE (not only when it parks), come back on B, v3 and v5; an UNSUBSCRIBE is
/// written too.
#[tokio::test]
async fn a_session_connected_when_its_node_dies_resumes_elsewhere_with_its_subscriptions() {
    let (_dir, _nats, mut a, b, _da, _db) = two_nodes("sessions-connected-dead").await;
    let (mut v3, _) = connect(a.port, &connect_v311("connected-v3", false)).await;
    subscribe_to(&mut v3, 1, "c3/#", 1).await;
    subscribe_to(&mut v3, 2, "gone3/#", 1).await;
    v3.send(&unsubscribe(false, 3, "gone3/#")).await.unwrap();
    assert_eq!(v3.recv().await.unwrap().kind(), 11, "UNSUBACK");
    let (mut v5, _) = connect(a.port, &connect_v5("connected-v5", false, 300)).await;
    v5.send(&subscribe(true, 1, "c5/#", 1)).await.unwrap();
    assert_eq!(v5.recv().await.unwrap().kind(), 9, "SUBACK");
    // The writes go out right after each SUBACK; give them a moment, then kill A with
    // both clients still connected.
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill();
    drop((v3, v5));

    let (mut v3, present) = connect(b.port, &connect_v311("connected-v3", false)).await;
    assert!(
        present,
        "v3 session present from the bucket\n{}",
        b.last_log()
    );
    let (mut v5, present) = connect(b.port, &connect_v5("connected-v5", false, 300)).await;
    assert!(
        present,
        "v5 session present from the bucket\n{}",
        b.last_log()
    );
    let (mut publisher, _) = connect(b.port, &connect_v311("pub-connected", true)).await;
    publish_acked(&mut publisher, 1, "c3/x", 1, b"to v3").await;
    publish_acked(&mut publisher, 1, "gone3/x", 2, b"unsubscribed").await;
    publish_acked(&mut publisher, 1, "c5/x", 3, b"to v5").await;
    assert_eq!(
        payloads(&receive(&mut v3, 1).await, false),
        [b"to v3".to_vec()]
    );
    assert_eq!(
        payloads(&receive(&mut v5, 1).await, true),
        [b"to v5".to_vec()]
    );
}
