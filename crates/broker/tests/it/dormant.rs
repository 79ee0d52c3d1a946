//! Dormant connections (`mqtt.dormant_after_secs`): an idle plain-TCP connection leaves
//! tokio, and whatever concerns it wakes it, so that a client never sees the difference:
//! deliveries, its own packets, its keep-alive deadline, its socket closing, a takeover,
//! an administrator's kick, a shutdown.

use std::time::Duration;

use tokio::time::Instant;

use crate::admin_http;
use crate::harness::{CONNACK_V311_OK, Raw, TestBroker, connect_v311_with, v5_connect};

/// A broker whose idle connections go dormant after a second (so within two).
async fn broker() -> TestBroker {
    TestBroker::start_with(|c| c.mqtt.dormant_after_secs = 1).await
}

/// Waits until `n` connections are dormant.
async fn dormant(broker: &TestBroker, n: u64) {
    broker
        .eventually(&format!("{n} dormant connections"), |b| {
            b.dormant_connections().0 == n
        })
        .await;
}

async fn v311(broker: &TestBroker, client_id: &str, keep_alive: u16) -> Raw {
    let mut raw = broker.raw().await;
    raw.send(&connect_v311_with(client_id, true, keep_alive))
        .await;
    assert_eq!(raw.recv(4).await, CONNACK_V311_OK);
    raw
}

/// QoS 1 PUBLISH (v3.1.1), raw.
fn publish_q1(topic: &str, packet_id: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = rumqttc::Publish::new(topic, rumqttc::QoS::AtLeastOnce, payload.to_vec());
    p.pkid = packet_id;
    let mut buf = bytes::BytesMut::new();
    p.write(&mut buf).unwrap();
    buf.to_vec()
}

/// A dormant subscriber gets what is published to it, acknowledges it, goes dormant
/// again, and then publishes itself: its own packets wake it too.
#[tokio::test]
async fn a_dormant_subscriber_gets_messages_and_can_publish() {
    let broker = broker().await;
    let mut sub = v311(&broker, "sleepy-sub", 60).await;
    sub.subscribe_v4(1, "dormant/+", 1).await;
    dormant(&broker, 1).await;
    let (_, woken_before) = broker.broker().dormant_connections();

    let mut publisher = v311(&broker, "publisher", 60).await;
    publisher.send(&publish_q1("dormant/a", 7, b"one")).await;
    assert_eq!(publisher.recv(4).await, [0x40, 0x02, 0x00, 0x07], "PUBACK");
    let got = sub.recv_v4_publish().await;
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        ("dormant/a", &b"one"[..])
    );
    sub.send_v4(rumqttc::Packet::PubAck(rumqttc::PubAck::new(got.pkid)))
        .await;
    assert!(broker.broker().dormant_connections().1 > woken_before);

    // Both asleep now: the subscriber's PUBLISH wakes it, and the publisher (now
    // subscribed) is woken by the delivery.
    publisher.subscribe_v4(2, "back", 1).await;
    dormant(&broker, 2).await;
    sub.send(&publish_q1("back", 9, b"two")).await;
    assert_eq!(sub.recv(4).await, [0x40, 0x02, 0x00, 0x09], "PUBACK");
    let got = publisher.recv_v4_publish().await;
    assert_eq!(&got.payload[..], b"two");
    sub.ping_fence().await;
    broker.shutdown().await;
}

/// A dormant connection's keep-alive deadline still closes it on time, and its will is
/// published; a client that closes its socket while dormant ends the same way.
#[tokio::test]
async fn keep_alive_and_a_closed_socket_end_dormant_connections_with_their_wills() {
    let broker = broker().await;
    let mut watcher = v311(&broker, "watcher", 0).await;
    watcher.subscribe_v4(1, "will/#", 0).await;

    let will = |client_id: &str, keep_alive: u16| {
        let mut connect = rumqttc::Connect::new(client_id);
        connect.keep_alive = keep_alive;
        connect.last_will = Some(rumqttc::LastWill::new(
            format!("will/{client_id}"),
            "gone",
            rumqttc::QoS::AtMostOnce,
            false,
        ));
        connect
    };
    let mut silent = broker.raw().await;
    silent
        .send_v4(rumqttc::Packet::Connect(will("silent", 3)))
        .await;
    assert_eq!(silent.recv(4).await, CONNACK_V311_OK);
    let connected = Instant::now();
    let mut closer = broker.raw().await;
    closer
        .send_v4(rumqttc::Packet::Connect(will("closer", 0)))
        .await;
    assert_eq!(closer.recv(4).await, CONNACK_V311_OK);
    dormant(&broker, 3).await;

    drop(closer);
    let got = watcher.recv_v4_publish().await;
    assert_eq!(&got.topic[..], "will/closer");

    // [MQTT-3.1.2-24] 1.5 × 3 s after CONNECT, asleep or not.
    silent.expect_closed().await;
    let waited = connected.elapsed();
    assert!(
        (Duration::from_millis(4400)..Duration::from_millis(5500)).contains(&waited),
        "closed after {waited:?}; expected about 4.5 s"
    );
    let got = watcher.recv_v4_publish().await;
    assert_eq!(&got.topic[..], "will/silent");
    broker.shutdown().await;
}

/// A new connection with a dormant connection's client id takes its session over, an
/// administrator's kick reaches one, and shutdown tells every dormant v5 client why.
#[tokio::test]
async fn takeover_kick_and_shutdown_reach_dormant_connections() {
    let broker = broker().await;
    let (mut first, _) = broker.raw_v5(v5_connect("taken")).await;
    let (mut kicked, _) = broker.raw_v5(v5_connect("kicked")).await;
    let (mut stays, _) = broker.raw_v5(v5_connect("stays")).await;
    dormant(&broker, 3).await;

    let (mut second, _) = broker.raw_v5(v5_connect("taken")).await;
    first.expect_disconnect(0x8E).await; // session taken over

    let answer = admin_http::request(
        broker.admin(),
        "DELETE",
        "/api/v1/clients/kicked",
        None,
        None,
    )
    .await;
    assert!(answer.status < 300, "kick answered {}", answer.status);
    kicked.expect_disconnect(0x98).await; // administrative action

    dormant(&broker, 2).await;
    let started = Instant::now();
    broker.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3));
    second.expect_disconnect(0x8B).await; // server shutting down
    stays.expect_disconnect(0x8B).await;
}

/// The admin API describes a dormant connection (it wakes to answer), and the metrics
/// count dormant connections and their wake-ups.
#[tokio::test]
async fn the_admin_api_and_metrics_see_dormant_connections() {
    let broker = broker().await;
    let _a = v311(&broker, "described", 42).await;
    dormant(&broker, 1).await;
    let metrics = admin_http::get(broker.admin(), "/metrics", None)
        .await
        .text();
    assert!(
        metrics.contains("midge_connections_dormant 1"),
        "metrics: {metrics}"
    );
    let answer = admin_http::get(broker.admin(), "/api/v1/clients/described", None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.json()["connection"]["keep_alive"],
        42,
        "{}",
        answer.text()
    );
    let metrics = admin_http::get(broker.admin(), "/metrics", None)
        .await
        .text();
    assert!(
        metrics.contains("midge_dormant_wakeups_total 1"),
        "metrics: {metrics}"
    );
    broker.shutdown().await;
}

/// `dormant_after_secs = 0` keeps every connection awake; it is served as before.
#[tokio::test]
async fn dormancy_can_be_turned_off() {
    let broker = TestBroker::start_with(|c| c.mqtt.dormant_after_secs = 0).await;
    let mut raw = v311(&broker, "awake", 60).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(broker.broker().dormant_connections(), (0, 0));
    raw.ping_fence().await;
    broker.shutdown().await;
}

/// Many subscribers go dormant together and are woken together by deliveries from
/// several publishers, over and over: every QoS 1 message arrives once, in order per
/// publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_dormant_subscribers_woken_together_lose_nothing() {
    const SUBSCRIBERS: usize = 100;
    const PUBLISHERS: usize = 4;
    const ROUNDS: usize = 2;
    let broker = broker().await;
    let mut subs = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut sub = v311(&broker, &format!("s{i}"), 60).await;
        sub.subscribe_v4(1, "fleet/#", 1).await;
        subs.push(sub);
    }
    let mut pubs = Vec::new();
    for p in 0..PUBLISHERS {
        pubs.push(v311(&broker, &format!("p{p}"), 60).await);
    }
    for round in 0..ROUNDS {
        dormant(&broker, (SUBSCRIBERS + PUBLISHERS) as u64).await;
        for (p, publisher) in pubs.iter_mut().enumerate() {
            for m in 0..3u16 {
                let id = m + 1;
                let payload = format!("{round}:{m}");
                publisher
                    .send(&publish_q1(&format!("fleet/{p}"), id, payload.as_bytes()))
                    .await;
                assert_eq!(publisher.recv(4).await, [0x40, 0x02, 0x00, id as u8]);
            }
        }
        let readers = subs.drain(..).map(|mut sub| {
            tokio::spawn(async move {
                let mut seen = vec![Vec::new(); PUBLISHERS];
                for _ in 0..PUBLISHERS * 3 {
                    let got = sub.recv_v4_publish().await;
                    let p: usize = got.topic["fleet/".len()..].parse().unwrap();
                    seen[p].push(String::from_utf8(got.payload.to_vec()).unwrap());
                    sub.send_v4(rumqttc::Packet::PubAck(rumqttc::PubAck::new(got.pkid)))
                        .await;
                }
                // Nothing more: no duplicate follows.
                sub.ping_fence().await;
                (sub, seen)
            })
        });
        let readers: Vec<_> = readers.collect();
        for reader in readers {
            let (sub, seen) = reader.await.unwrap();
            for per_publisher in seen {
                let expected: Vec<String> = (0..3).map(|m| format!("{round}:{m}")).collect();
                assert_eq!(per_publisher, expected);
            }
            subs.push(sub);
        }
    }
    broker.shutdown().await;
}
