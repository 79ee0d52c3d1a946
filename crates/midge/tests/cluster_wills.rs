//! Wills across a cluster of real `midge` binaries on a real nats-server: published
//! exactly once cluster-wide, after their delay, also when the node holding the
//! connection is SIGKILLed. Clients are raw MQTT bytes. A missing nats-server fails these
//! tests: they never skip.

mod support;

use std::time::{Duration, Instant};

use support::cluster::*;
use support::*;

/// A node killed is dropped from the node list within 5 s of its last heartbeat, and the
/// survivors look at its wills within a second of that.
const DEAD_NODE_WILL_WITHIN: Duration = Duration::from_secs(12);
/// How long "no further copy" is watched for after a will arrived: past the time every
/// survivor has swept the dead node's records.
const NO_DUPLICATE_FOR: Duration = Duration::from_secs(4);

fn push_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u16).to_be_bytes());
    out.extend(s);
}

/// CONNECT, MQTT 5, persistent (`session_expiry`) with a QoS 1 will on `topic` delayed
/// by `delay` seconds.
fn connect_v5_will(
    client_id: &str,
    clean_start: bool,
    session_expiry: u32,
    topic: &str,
    delay: u32,
) -> Vec<u8> {
    // Connect flags: will QoS 1 (bits 4-3), will flag (bit 2), clean start (bit 1).
    let flags = 0x08 | 0x04 | if clean_start { 0x02 } else { 0x00 };
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, flags, 0x00, 0x3C];
    body.push(0x05); // properties: Session Expiry Interval
    body.push(0x11);
    body.extend(session_expiry.to_be_bytes());
    push_str(&mut body, client_id.as_bytes());
    body.push(0x05); // will properties: Will Delay Interval
    body.push(0x18);
    body.extend(delay.to_be_bytes());
    push_str(&mut body, topic.as_bytes());
    push_str(&mut body, format!("will of {client_id}").as_bytes());
    frame(0x10, body)
}

/// CONNECT, MQTT 3.1.1, clean session, with a QoS 1 will on `topic`.
fn connect_v311_will(client_id: &str, topic: &str) -> Vec<u8> {
    connect_v311_will_flags(client_id, topic, 0x00)
}

/// [`connect_v311_will`] with more connect flags (0x20: will retain).
fn connect_v311_will_flags(client_id: &str, topic: &str, more: u8) -> Vec<u8> {
    let flags = 0x08 | 0x04 | 0x02 | more;
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, flags, 0x00, 0x3C];
    push_str(&mut body, client_id.as_bytes());
    push_str(&mut body, topic.as_bytes());
    push_str(&mut body, format!("will of {client_id}").as_bytes());
    frame(0x10, body)
}

fn frame(first: u8, body: Vec<u8>) -> Vec<u8> {
    assert!(body.len() < 128, "short packets only");
    let mut out = vec![first, body.len() as u8];
    out.extend(body);
    out
}

/// A v3 subscriber to `topic` on the node `name` at `port`, once NATS knows its interest.
async fn subscriber(nats: &Nats, name: &str, port: u16, id: &str, topic: &str) -> Raw {
    let (mut raw, _) = connect(port, &connect_v311(id, true)).await;
    subscribe_to(&mut raw, 1, topic, 1).await;
    let subject = format!("mq.m.{}", topic.replace('/', "."));
    nats.wait_subjects(name, &[subject.as_str()]).await;
    raw
}

/// The next PUBLISH within `wait` (acknowledged), or `None`.
async fn next_will(raw: &mut Raw, wait: Duration) -> Option<RawPublish> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let packet = raw
            .recv_within(left)
            .await
            .expect("subscriber connection")?;
        if packet.kind() != 3 {
            continue;
        }
        let p = packet.publish(false);
        if p.qos == 1 {
            raw.send(&ack(PUBACK, p.packet_id)).await.unwrap();
        }
        return Some(p);
    }
}

/// Nodes "a", "b" (and "c" when `three`) on one nats-server, each having heard of the others.
async fn nodes(name: &str, names: &[&str]) -> (TestDir, Nats, Vec<Midge>, Vec<TestDir>) {
    let dir = TestDir::new(name);
    let nats = Nats::start(&dir).await;
    let dirs: Vec<TestDir> = names
        .iter()
        .map(|n| TestDir::new(&format!("{name}-{n}")))
        .collect();
    let mut started = Vec::new();
    for (n, d) in names.iter().zip(&dirs) {
        let mut node = node(d, n, &[nats.url()], 0);
        node.start(&[]).await;
        started.push(node);
    }
    // Heartbeats every second: every node lists every other one after this.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    (dir, nats, started, dirs)
}

/// (a) A client with a will on A, subscribers on B and C; A SIGKILLed: each subscriber
/// gets the will exactly once (two survivors, one publication), nothing more afterwards.
#[tokio::test]
async fn a_killed_nodes_will_is_published_once_by_the_survivors() {
    let (_dir, nats, mut n, _dirs) = nodes("wills-killed", &["a", "b", "c"]).await;
    let mut on_b = subscriber(&nats, "b", n[1].port, "sub-b", "will/t").await;
    let mut on_c = subscriber(&nats, "c", n[2].port, "sub-c", "will/t").await;
    // Retained: it reaches the cluster's retained bucket through the survivor too.
    let (_client, _) = connect(n[0].port, &connect_v311_will_flags("dying", "will/t", 0x20)).await;
    // The record's write is queued after CONNACK: give it its round trip.
    tokio::time::sleep(Duration::from_millis(300)).await;
    n[0].kill();
    let killed = Instant::now();
    for sub in [&mut on_b, &mut on_c] {
        let will = next_will(sub, DEAD_NODE_WILL_WITHIN)
            .await
            .unwrap_or_else(|| panic!("no will\n{}\n{}", n[1].last_log(), n[2].last_log()));
        assert_eq!(will.topic, "will/t");
        assert_eq!(will.payload, b"will of dying");
    }
    assert!(
        killed.elapsed() >= Duration::from_secs(3),
        "published before the node was declared gone"
    );
    for sub in [&mut on_b, &mut on_c] {
        assert!(
            next_will(sub, NO_DUPLICATE_FOR).await.is_none(),
            "published twice"
        );
    }
    // Retained cluster-wide: a later subscriber on either survivor gets it.
    for port in [n[1].port, n[2].port] {
        let (mut late, _) = connect(port, &connect_v311("late", true)).await;
        subscribe_to(&mut late, 1, "will/t", 1).await;
        let retained = next_will(&mut late, TIMEOUT)
            .await
            .expect("the retained will");
        assert!(retained.retain, "{retained:?}");
        assert_eq!(retained.payload, b"will of dying");
    }
}

/// (b) A will delayed 12 s, its node killed: it arrives after the delay, not before.
#[tokio::test]
async fn a_delayed_will_of_a_killed_node_waits_for_its_delay() {
    let (_dir, nats, mut n, _dirs) = nodes("wills-delay", &["a", "b"]).await;
    let mut on_b = subscriber(&nats, "b", n[1].port, "sub-b", "will/d").await;
    let (_client, _) = connect(n[0].port, &connect_v5_will("late", true, 300, "will/d", 12)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    n[0].kill();
    let killed = Instant::now();
    // Counted from A's last heartbeat, a second (or, on a loaded machine, a little more)
    // before the kill; the survivors know A is gone after 5 s.
    assert!(
        next_will(&mut on_b, Duration::from_secs(8)).await.is_none(),
        "published before its delay"
    );
    let will = next_will(&mut on_b, Duration::from_secs(12))
        .await
        .unwrap_or_else(|| panic!("no will\n{}", n[1].last_log()));
    assert_eq!(will.payload, b"will of late");
    assert!(
        killed.elapsed() >= Duration::from_secs(8),
        "{:?}",
        killed.elapsed()
    );
    assert!(
        next_will(&mut on_b, NO_DUPLICATE_FOR).await.is_none(),
        "published twice"
    );
}

/// (c) A will delayed 10 s, its node killed, and the client resuming on B within the
/// delay: no will. Beside it, a client that does not come back: its will is published
/// (the dead node's wills are looked at, the resumed one was cancelled).
#[tokio::test]
async fn resuming_on_another_node_within_the_delay_cancels_the_will() {
    let (_dir, nats, mut n, _dirs) = nodes("wills-resume", &["a", "b"]).await;
    let mut on_b = subscriber(&nats, "b", n[1].port, "sub-b", "will/r").await;
    let (_back, _) = connect(n[0].port, &connect_v5_will("back", true, 300, "will/r", 10)).await;
    let (_gone, _) = connect(n[0].port, &connect_v5_will("gone", true, 300, "will/r", 10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    n[0].kill();
    let (_resumed, _) = connect(n[1].port, &connect_v5("back", false, 300)).await;
    let will = next_will(&mut on_b, Duration::from_secs(20))
        .await
        .unwrap_or_else(|| {
            panic!(
                "no will of the client that stayed away\n{}",
                n[1].last_log()
            )
        });
    assert_eq!(will.payload, b"will of gone");
    assert!(
        next_will(&mut on_b, NO_DUPLICATE_FOR).await.is_none(),
        "the resumed client's will was published"
    );
}

/// (d) A normal DISCONNECT on A: no will on A or B, and none later when A is killed (its
/// record went with the DISCONNECT).
#[tokio::test]
async fn a_normal_disconnect_leaves_no_will_anywhere() {
    let (_dir, nats, mut n, _dirs) = nodes("wills-disconnect", &["a", "b"]).await;
    let mut on_a = subscriber(&nats, "a", n[0].port, "sub-a", "will/n").await;
    let mut on_b = subscriber(&nats, "b", n[1].port, "sub-b", "will/n").await;
    let (mut client, _) = connect(n[0].port, &connect_v311_will("polite", "will/n")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.send(&DISCONNECT).await.unwrap();
    drop(client);
    assert!(next_will(&mut on_a, Duration::from_secs(1)).await.is_none());
    drop(on_a);
    n[0].kill();
    assert!(
        next_will(&mut on_b, DEAD_NODE_WILL_WITHIN).await.is_none(),
        "a will after a normal DISCONNECT"
    );
}

/// (e) A connection dropped without DISCONNECT on a live node A: its will arrives once on
/// B and once on A; no survivor publishes it again.
#[tokio::test]
async fn a_dropped_connection_on_a_live_node_publishes_its_will_once() {
    let (_dir, nats, mut n, _dirs) = nodes("wills-drop", &["a", "b"]).await;
    let mut on_a = subscriber(&nats, "a", n[0].port, "sub-a", "will/e").await;
    let mut on_b = subscriber(&nats, "b", n[1].port, "sub-b", "will/e").await;
    let (client, _) = connect(n[0].port, &connect_v311_will("dropped", "will/e")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(client);
    for sub in [&mut on_a, &mut on_b] {
        let will = next_will(sub, TIMEOUT).await.expect("the will");
        assert_eq!(will.payload, b"will of dropped");
    }
    // Past a node-list period: nothing else publishes it.
    for sub in [&mut on_a, &mut on_b] {
        assert!(
            next_will(sub, Duration::from_secs(3)).await.is_none(),
            "published twice"
        );
    }
    // Its record went when A published it: A dying leaves nothing for B to publish.
    drop(on_a);
    n[0].kill();
    assert!(
        next_will(&mut on_b, DEAD_NODE_WILL_WITHIN).await.is_none(),
        "published again after its node died"
    );
}

/// A node SIGKILLed and restarted at once with the same node id (the others never see it
/// gone): the restarted node publishes the wills its previous run left, once.
#[tokio::test]
async fn a_restarted_node_publishes_the_wills_of_its_previous_run() {
    let (_dir, nats, mut n, _dirs) = nodes("wills-restart", &["a", "b"]).await;
    let mut on_b = subscriber(&nats, "b", n[1].port, "sub-b", "will/s").await;
    let (_client, _) = connect(n[0].port, &connect_v311_will("crashed", "will/s")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    n[0].crash_and_restart().await;
    let will = next_will(&mut on_b, DEAD_NODE_WILL_WITHIN)
        .await
        .unwrap_or_else(|| panic!("no will\n{}", n[0].last_log()));
    assert_eq!(will.payload, b"will of crashed");
    assert!(
        next_will(&mut on_b, NO_DUPLICATE_FOR).await.is_none(),
        "published twice"
    );
}

/// A session parked on A with a delayed will, taken over from B: resumed, the will is
/// cancelled; with a clean start the session ends and its will is published at once, as
/// on one node [MQTT-3.1.3-9].
#[tokio::test]
async fn a_clean_start_elsewhere_publishes_a_parked_sessions_delayed_will() {
    let (_dir, nats, n, _dirs) = nodes("wills-takeover", &["a", "b"]).await;
    let mut on_b = subscriber(&nats, "b", n[1].port, "sub-b", "will/c").await;
    for id in ["resumer", "restarter"] {
        let (client, _) = connect(n[0].port, &connect_v5_will(id, true, 300, "will/c", 30)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Dropped: parked on A with its will pending for 30 s.
        drop(client);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_resumed, present) = connect(n[1].port, &connect_v5("resumer", false, 300)).await;
    assert!(present, "resumed on B");
    let (_fresh, present) = connect(n[1].port, &connect_v5("restarter", true, 300)).await;
    assert!(!present);
    let will = next_will(&mut on_b, TIMEOUT)
        .await
        .expect("the clean start's will");
    assert_eq!(will.payload, b"will of restarter");
    assert!(
        next_will(&mut on_b, NO_DUPLICATE_FOR).await.is_none(),
        "the resumed session's will was published"
    );
}
