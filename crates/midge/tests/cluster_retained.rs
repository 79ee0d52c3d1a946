//! Retained messages cluster-wide: real `midge` binaries and a real nats-server with
//! JetStream (see cluster.rs for the installation). A retained PUBLISH on one node is kept
//! in the KV bucket and mirrored by every node; clients are raw MQTT bytes.

mod support;

use std::time::{Duration, Instant};

use support::cluster::*;
use support::*;

/// The PUBLISH packets a new v5 subscriber to `filter` on `port` gets at subscribe (the
/// retained messages), acknowledged, each with its topic and payload.
async fn retained_at(port: u16, filter: &str, qos: u8) -> Vec<(RawPacket, RawPublish)> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let id = format!(
        "probe-{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let (mut raw, _) = connect_served(port, &connect_v5(&id, true, 0)).await;
    raw.send(&subscribe(true, 1, filter, qos)).await.unwrap();
    let suback = raw.recv().await.unwrap();
    assert_eq!(suback.kind(), 9, "SUBACK: {suback:02X?}");
    let mut got = Vec::new();
    while let Some(packet) = raw.recv_within(QUIET).await.unwrap() {
        let publish = packet.publish(true);
        if publish.qos == 1 {
            raw.send(&ack(PUBACK, publish.packet_id)).await.unwrap();
        }
        got.push((packet, publish));
    }
    raw.send(&DISCONNECT).await.unwrap();
    got.sort_by(|a, b| a.1.topic.cmp(&b.1.topic));
    got
}

/// Subscribes new clients until the retained messages sent for `filter` are `want`
/// (topic, payload; sorted by topic): a node's mirror follows the bucket within
/// milliseconds, not at once.
async fn wait_retained(
    port: u16,
    filter: &str,
    qos: u8,
    want: &[(&str, &[u8])],
) -> Vec<(RawPacket, RawPublish)> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        // Only what comes with RETAIN set: a probe that subscribes while a node is still
        // forwarding a message published on another node just before gets that copy live
        // (RETAIN 0, as any message routed after a SUBSCRIBE), which is not the retained
        // one. A retained message sent without RETAIN is never counted, so it fails here.
        let got: Vec<_> = retained_at(port, filter, qos)
            .await
            .into_iter()
            .filter(|(_, p)| p.retain)
            .collect();
        let seen: Vec<(&str, &[u8])> = got
            .iter()
            .map(|(_, p)| (p.topic.as_str(), &p.payload[..]))
            .collect();
        if seen == want {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "retained on port {port} for {filter}: {seen:?}, expected {want:?}"
        );
    }
}

async fn publish_retained(raw: &mut Raw, qos: u8, topic: &str, payload: &[u8]) {
    raw.send(&publish(true, qos, false, true, topic, 1, payload))
        .await
        .unwrap();
    if qos == 1 {
        assert_eq!(raw.recv().await.unwrap().kind(), 4, "PUBACK");
    }
}

fn string_property(id: u8, s: &str) -> Vec<u8> {
    let mut out = vec![id];
    out.extend((s.len() as u16).to_be_bytes());
    out.extend(s.as_bytes());
    out
}

/// A v5 retained PUBLISH at QoS 1 on `topic` with a message expiry of `expiry` seconds
/// and the properties `extra`.
fn retained_v5(topic: &str, expiry: u32, extra: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut props = vec![0x02];
    props.extend(expiry.to_be_bytes());
    props.extend(extra);
    let mut body = Vec::new();
    body.extend((topic.len() as u16).to_be_bytes());
    body.extend(topic.as_bytes());
    body.extend(7u16.to_be_bytes()); // packet id
    body.push(props.len() as u8);
    body.extend(&props);
    body.extend(payload);
    assert!(body.len() < 128);
    [&[0x33, body.len() as u8][..], &body].concat()
}

/// The properties of a v5 PUBLISH as (identifier, value bytes).
fn v5_properties(body: &[u8], qos: u8) -> Vec<(u8, Vec<u8>)> {
    v5_publish_properties(body, qos).0
}

fn expiry_left(packet: &RawPacket, qos: u8) -> u32 {
    let props = v5_properties(&packet.body, qos);
    let expiry = props.iter().find(|(id, _)| *id == 0x02).expect("expiry");
    u32::from_be_bytes(expiry.1[..].try_into().unwrap())
}

#[tokio::test]
async fn retained_on_one_node_reaches_new_subscribers_on_another_with_qos_and_properties() {
    let (_dir, _nats, a, b, _da, _db) = two_nodes("retained-cross").await;
    let (mut publisher, _) = connect(a.port, &connect_v5("pub", true, 0)).await;
    publish_retained(&mut publisher, 0, "r/zero", b"q0").await;
    let mut extra = vec![0x01, 0x01]; // payload format: UTF-8
    extra.extend(string_property(0x03, "text/plain"));
    extra.extend(string_property(0x08, "reply/x"));
    extra.extend(string_property(0x09, "corr"));
    let mut user = string_property(0x26, "k");
    user.extend(&string_property(0, "v")[1..]);
    extra.extend(&user);
    publisher
        .send(&retained_v5("r/one", 100, &extra, b"q1"))
        .await
        .unwrap();
    assert_eq!(publisher.recv().await.unwrap().kind(), 4, "PUBACK");

    let got = wait_retained(b.port, "r/#", 1, &[("r/one", b"q1"), ("r/zero", b"q0")]).await;
    assert_eq!(got[0].1.qos, 1, "QoS 1 kept");
    assert_eq!(got[1].1.qos, 0, "QoS 0 kept");
    let mut props = v5_properties(&got[0].0.body, 1);
    let left = expiry_left(&got[0].0, 1);
    assert!((90..=100).contains(&left), "remaining expiry {left}");
    props.retain(|(id, _)| *id != 0x02);
    props.sort();
    let expected = vec![
        (0x01, vec![0x01]),
        (0x03, string_property(0x03, "text/plain")[1..].to_vec()),
        (0x08, string_property(0x08, "reply/x")[1..].to_vec()),
        (0x09, string_property(0x09, "corr")[1..].to_vec()),
        (0x26, user[1..].to_vec()),
    ];
    assert_eq!(props, expected, "properties as published");
    // A subscription at QoS 0 gets both at QoS 0; the publishing node has them too.
    let got = retained_at(b.port, "r/one", 0).await;
    assert_eq!((got.len(), got[0].1.qos), (1, 0));
    wait_retained(a.port, "r/#", 1, &[("r/one", b"q1"), ("r/zero", b"q0")]).await;
}

#[tokio::test]
async fn retained_survive_a_restart_and_the_bucket_wins_over_the_nodes_own_store() {
    let (_dir, _nats, mut a, b, _da, _db) = two_nodes("retained-restart").await;
    let (mut on_a, _) = connect(a.port, &connect_v5("pub-a", true, 0)).await;
    publish_retained(&mut on_a, 1, "s/kept", b"from a").await;
    publish_retained(&mut on_a, 1, "s/replaced", b"old").await;
    publish_retained(&mut on_a, 1, "s/deleted", b"gone soon").await;
    let all: &[(&str, &[u8])] = &[
        ("s/deleted", b"gone soon"),
        ("s/kept", b"from a"),
        ("s/replaced", b"old"),
    ];
    wait_retained(b.port, "s/#", 1, all).await;
    // Killed, then changed elsewhere while it is down: its own store is out of date.
    a.kill();
    let (mut on_b, _) = connect(b.port, &connect_v5("pub-b", true, 0)).await;
    publish_retained(&mut on_b, 1, "s/replaced", b"new").await;
    publish_retained(&mut on_b, 1, "s/deleted", b"").await;
    let now: &[(&str, &[u8])] = &[("s/kept", b"from a"), ("s/replaced", b"new")];
    wait_retained(b.port, "s/#", 1, now).await;
    a.start(&[]).await;
    // Loaded before the node listens: the first subscriber already gets the bucket's set.
    let got = retained_at(a.port, "s/#", 1).await;
    let seen: Vec<(&str, &[u8])> = got
        .iter()
        .map(|(_, p)| (p.topic.as_str(), &p.payload[..]))
        .collect();
    assert_eq!(seen, now, "node a after its restart");
    assert!(a.last_log().contains("retained messages loaded"));
    wait_retained(b.port, "s/#", 1, now).await;
}

#[tokio::test]
async fn retained_outlive_a_killed_node_and_reach_a_new_one() {
    let (_dir, nats, mut a, b, _da, _db) = two_nodes("retained-kill").await;
    let (mut on_a, _) = connect(a.port, &connect_v5("pub-a", true, 0)).await;
    publish_retained(&mut on_a, 1, "k/1", b"one").await;
    publish_retained(&mut on_a, 0, "k/2", b"two").await;
    let want: &[(&str, &[u8])] = &[("k/1", b"one"), ("k/2", b"two")];
    wait_retained(b.port, "k/#", 1, want).await;
    a.kill();
    wait_retained(b.port, "k/+", 1, want).await;
    let dir_c = TestDir::new("retained-kill-c");
    let mut c = node(&dir_c, "c", &[nats.url()], 0);
    c.start(&[]).await;
    let got = retained_at(c.port, "#", 1).await;
    let seen: Vec<(&str, &[u8])> = got
        .iter()
        .map(|(_, p)| (p.topic.as_str(), &p.payload[..]))
        .collect();
    assert_eq!(
        seen, want,
        "a new node has them from its first subscriber on"
    );
}

#[tokio::test]
async fn an_empty_payload_deletes_on_every_node() {
    let (_dir, _nats, a, b, _da, _db) = two_nodes("retained-delete").await;
    let (mut on_a, _) = connect(a.port, &connect_v5("pub-a", true, 0)).await;
    let (mut on_b, _) = connect(b.port, &connect_v5("pub-b", true, 0)).await;
    publish_retained(&mut on_a, 1, "d/x", b"x").await;
    publish_retained(&mut on_a, 1, "d/y", b"y").await;
    let both: &[(&str, &[u8])] = &[("d/x", b"x"), ("d/y", b"y")];
    wait_retained(b.port, "d/#", 1, both).await;
    // Deleted through the other node, and through the one that set it.
    publish_retained(&mut on_b, 1, "d/x", b"").await;
    publish_retained(&mut on_a, 0, "d/y", b"").await;
    for port in [a.port, b.port] {
        wait_retained(port, "d/#", 1, &[]).await;
    }
}

#[tokio::test]
async fn message_expiry_holds_on_the_other_node() {
    let (_dir, _nats, a, b, _da, _db) = two_nodes("retained-expiry").await;
    let (mut on_a, _) = connect(a.port, &connect_v5("pub-a", true, 0)).await;
    on_a.send(&retained_v5("e/short", 3, &[], b"brief"))
        .await
        .unwrap();
    assert_eq!(on_a.recv().await.unwrap().kind(), 4, "PUBACK");
    let published = Instant::now();
    publish_retained(&mut on_a, 1, "e/long", b"stays").await;
    let got = wait_retained(
        b.port,
        "e/#",
        1,
        &[("e/long", b"stays"), ("e/short", b"brief")],
    )
    .await;
    let left = expiry_left(&got[1].0, 1);
    assert!((1..=3).contains(&left), "remaining expiry {left}");
    // Past its expiry it is no longer sent, on either node.
    tokio::time::sleep(
        (published + Duration::from_millis(3_200)).saturating_duration_since(Instant::now()),
    )
    .await;
    for port in [b.port, a.port] {
        let got = retained_at(port, "e/#", 1).await;
        let topics: Vec<&str> = got.iter().map(|(_, p)| p.topic.as_str()).collect();
        assert_eq!(topics, ["e/long"], "port {port}");
    }
}

#[tokio::test]
async fn a_new_node_gets_the_remaining_expiry_not_the_original() {
    let dir = TestDir::new("retained-expiry-late");
    let nats = Nats::start(&dir).await;
    let dir_a = TestDir::new("retained-expiry-late-a");
    let mut a = node(&dir_a, "a", &[nats.url()], 0);
    a.start(&[]).await;
    let (mut on_a, _) = connect(a.port, &connect_v5("pub-a", true, 0)).await;
    on_a.send(&retained_v5("e/t", 6, &[], b"v")).await.unwrap();
    assert_eq!(on_a.recv().await.unwrap().kind(), 4, "PUBACK");
    let published = Instant::now();
    // Node b starts about 3 s later and loads the entry from the bucket.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dir_b = TestDir::new("retained-expiry-late-b");
    let mut b = node(&dir_b, "b", &[nats.url()], 0);
    b.start(&[]).await;
    let got = retained_at(b.port, "e/t", 1).await;
    let elapsed = published.elapsed().as_secs();
    assert_eq!(got.len(), 1, "still retained");
    let left = expiry_left(&got[0].0, 1);
    assert!(
        u64::from(left) <= 6 - elapsed.min(6) + 1 && left <= 4,
        "remaining expiry {left} after {elapsed} s"
    );
}

#[tokio::test]
async fn sys_retained_stay_on_their_node() {
    let dir = TestDir::new("retained-sys");
    let nats = Nats::start(&dir).await;
    let (dir_a, dir_b) = (
        TestDir::new("retained-sys-a"),
        TestDir::new("retained-sys-b"),
    );
    // Only node a publishes $SYS (retained, every second).
    let mut a = node(&dir_a, "a", &[nats.url()], 1);
    let mut b = node(&dir_b, "b", &[nats.url()], 0);
    a.start(&[]).await;
    b.start(&[]).await;
    let deadline = Instant::now() + TIMEOUT;
    while retained_at(a.port, "$SYS/broker/version", 0)
        .await
        .is_empty()
    {
        assert!(Instant::now() < deadline, "node a published no $SYS");
    }
    // A later retained message of node a reaches b, so anything a wrote before it would
    // have too.
    let (mut on_a, _) = connect(a.port, &connect_v5("pub-a", true, 0)).await;
    publish_retained(&mut on_a, 1, "marker", b"m").await;
    wait_retained(b.port, "marker", 1, &[("marker", b"m")]).await;
    assert!(retained_at(b.port, "$SYS/#", 1).await.is_empty());
    assert!(!retained_at(a.port, "$SYS/#", 0).await.is_empty());
}

#[tokio::test]
async fn concurrent_writers_of_one_topic_leave_every_node_the_same_value() {
    let (_dir, _nats, a, b, _da, _db) = two_nodes("retained-race").await;
    let (mut on_a, _) = connect(a.port, &connect_v5("pub-a", true, 0)).await;
    let (mut on_b, _) = connect(b.port, &connect_v5("pub-b", true, 0)).await;
    for i in 0..20u8 {
        let (from_a, from_b) = ([b'a', i], [b'b', i]);
        tokio::join!(
            publish_retained(&mut on_a, 1, "w", &from_a),
            publish_retained(&mut on_b, 1, "w", &from_b),
        );
    }
    // Whichever write the bucket ordered last is the value on both nodes.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let on_a = retained_at(a.port, "w", 1).await;
        let on_b = retained_at(b.port, "w", 1).await;
        assert_eq!((on_a.len(), on_b.len()), (1, 1));
        let (x, y) = (&on_a[0].1.payload, &on_b[0].1.payload);
        if x == y {
            assert_eq!(x[1], 19, "the last round's value: {x:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nodes disagree: {x:?} / {y:?}\n{}\n{}",
            a.last_log(),
            b.last_log()
        );
    }
}

#[tokio::test]
async fn changes_made_while_nats_is_down_apply_locally_and_reach_the_bucket_when_it_is_back() {
    let (dir, nats, a, b, _da, _db) = two_nodes("retained-nats-down").await;
    let (mut on_a, _) = connect(a.port, &connect_v5("pub-a", true, 0)).await;
    publish_retained(&mut on_a, 1, "n/before", b"1").await;
    wait_retained(b.port, "n/#", 1, &[("n/before", b"1")]).await;
    let port = nats.port;
    drop(nats);
    // The node's own subscribers see the change at once; the bucket gets it later. (A
    // node cut off from NATS refuses new CONNECTs, so the check subscribes on the
    // connection that was already up.)
    publish_retained(&mut on_a, 1, "n/during", b"2").await;
    publish_retained(&mut on_a, 1, "n/before", b"").await;
    on_a.send(&subscribe(true, 9, "n/#", 1)).await.unwrap();
    let suback = on_a.recv().await.unwrap();
    assert_eq!(suback.kind(), 9, "SUBACK: {suback:02X?}");
    let got = on_a.recv().await.unwrap().publish(true);
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("n/during", &b"2"[..])
    );
    assert!(got.retain, "RETAIN set at subscribe");
    assert!(
        on_a.recv_within(Duration::from_millis(500))
            .await
            .unwrap()
            .is_none(),
        "n/before was deleted"
    );
    // Same port and JetStream directory: the bucket survives the restart.
    let nats = Nats::start_on(&dir, port).await;
    nats.wait_nodes_connected(&["a", "b"]).await;
    for port in [b.port, a.port] {
        wait_retained(port, "n/#", 1, &[("n/during", b"2")]).await;
    }
}
