//! Bounds with stated behaviour: connections, packet size, in-flight window, queued
//! messages and bytes per session (QoS 0 first, then the policy; every drop counted),
//! subscriptions per client, topic levels and length.

use midge_broker::config::QueueFullPolicy;
use rumqttc::v5::mqttbytes::v5::{self as mqtt5, Filter, PubAckReason, SubscribeReasonCode};

use crate::client::{V3, text};
use crate::harness::{
    CONNACK_V311_OK, TestBroker, V4Packet, V5Packet, connect_v311, qos4, qos5, v5_connect,
};

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_at_once() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_connections = 2).await;
    let (mut first, _) = broker.raw_v311("first", true).await;
    let (_second, _) = broker.raw_v311("second", true).await;
    // The third is accepted by the OS and closed by the broker without a word.
    let mut third = broker.raw().await;
    third.expect_closed().await;
    assert_eq!(broker.stats().connections_refused, 1);

    // When one leaves, there is room again.
    first.send(&[0xE0, 0x00]).await; // DISCONNECT
    first.expect_closed().await;
    let mut attempts = 0;
    loop {
        // The slot frees a moment after the close is visible to the client; a refused
        // attempt is closed at once, so retrying is bounded and quick.
        attempts += 1;
        assert!(attempts <= 50, "no room after a client left");
        let mut again = broker.raw().await;
        let _ = again.stream.try_write(&connect_v311("again"));
        let mut ack = [0u8; 4];
        if tokio::time::timeout(
            crate::harness::TIMEOUT,
            tokio::io::AsyncReadExt::read_exact(&mut again.stream, &mut ack),
        )
        .await
        .expect("answer or close")
        .is_ok()
        {
            assert_eq!(ack, CONNACK_V311_OK);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn packet_above_max_packet_size_closes_only_that_v3_connection() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_packet_size = 100).await;
    let mut bystander = V3::connect(&broker, "bystander").await;
    bystander.subscribe_ok("alive", 0).await;

    let (mut big, _) = broker.raw_v311("big", true).await;
    let mut publish = vec![
        0x30, 0x7E, // PUBLISH QoS 0, remaining length 126: 128 bytes in all
        0x00, 0x01, b't', // topic "t"
    ];
    publish.extend([b'x'; 123]); // payload
    big.send(&publish).await;
    big.expect_closed().await;

    // The limit is applied from the fixed header alone: a 256 MB announcement is refused
    // without waiting for (or buffering) its body.
    let (mut huge, _) = broker.raw_v311("huge", true).await;
    huge.send(&[
        0x30, 0xFF, 0xFF, 0xFF, 0x7F, // PUBLISH, remaining length 268,435,455
    ])
    .await;
    huge.expect_closed().await;

    V3::connect(&broker, "pub")
        .await
        .publish("alive", 0, false, "yes")
        .await;
    assert_eq!(text(&bystander.next_publish().await.payload), "yes");
    broker.shutdown().await;
}

#[tokio::test]
async fn max_inflight_bounds_unacknowledged_messages_to_a_v3_client() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_inflight = 2).await;
    let (mut sub, _) = broker.raw_v311("slow", true).await;
    sub.subscribe_v4(1, "w", 1).await;
    let mut publisher = V3::connect(&broker, "pub").await;
    for n in 1..=4 {
        publisher.publish("w", 1, false, format!("m{n}")).await;
    }
    let m1 = sub.recv_v4_publish().await;
    let _m2 = sub.recv_v4_publish().await;
    sub.ping_fence().await; // the third waits for an acknowledgement
    let id = m1.pkid.to_be_bytes();
    sub.send(&[0x40, 0x02, id[0], id[1]]).await; // PUBACK m1
    assert_eq!(&sub.recv_v4_publish().await.payload[..], b"m3");
    sub.ping_fence().await;
    broker.shutdown().await;
}

/// A persistent v3.1.1 session on `q/#` (QoS 2) that is offline while `publish` runs, then
/// comes back and returns the payloads it finds waiting.
async fn offline_queue(broker: &TestBroker, messages: &[(u8, &str)]) -> Vec<String> {
    let mut options = V3::options(broker, "offline");
    options.set_clean_session(false);
    let (mut client, _) = V3::connect_with(options.clone()).await;
    client.subscribe_ok("q/#", 2).await;
    client.subscribe_ok("fence", 0).await;
    client.disconnect().await;

    let mut publisher = V3::connect(broker, "pub").await;
    for (qos, payload) in messages {
        publisher
            .publish("q/m", *qos, false, payload.to_string())
            .await;
    }
    let (mut client, ack) = V3::connect_with(options).await;
    assert!(ack.session_present);
    publisher.publish("fence", 0, false, "fence").await;
    let mut got = Vec::new();
    loop {
        let p = client.next_publish().await;
        if p.topic == "fence" {
            return got;
        }
        got.push(text(&p.payload));
    }
}

#[tokio::test]
async fn full_queue_drops_new_messages_by_default_and_counts_them() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_queued_messages = 3).await;
    let got = offline_queue(&broker, &[(1, "1"), (2, "2"), (1, "3"), (2, "4"), (1, "5")]).await;
    assert_eq!(got, ["1", "2", "3"]);
    assert_eq!(broker.stats().publish_dropped, 2);
    broker.shutdown().await;
}

#[tokio::test]
async fn full_queue_with_drop_oldest_keeps_the_newest() {
    let broker = TestBroker::start_with(|c| {
        c.mqtt.max_queued_messages = 3;
        c.mqtt.queue_full_policy = QueueFullPolicy::DropOldest;
    })
    .await;
    let got = offline_queue(&broker, &[(1, "1"), (2, "2"), (1, "3"), (2, "4"), (1, "5")]).await;
    assert_eq!(got, ["3", "4", "5"]);
    assert_eq!(broker.stats().publish_dropped, 2);
    broker.shutdown().await;
}

#[tokio::test]
async fn full_queue_drops_qos0_first() {
    let broker = TestBroker::start_with(|c| {
        c.mqtt.max_queued_messages = 2;
        c.mqtt.queue_qos0_offline = true;
    })
    .await;
    let got = offline_queue(
        &broker,
        &[
            (0, "zero"), // queued: QoS 0 may queue offline here
            (1, "a"),    // queue full
            (1, "b"),    // "zero" makes room
            (0, "late"), // full of QoS 1: a new QoS 0 is dropped
            (2, "c"),    // full of QoS 1/2: dropped by the default policy
        ],
    )
    .await;
    assert_eq!(got, ["a", "b"]);
    assert_eq!(broker.stats().publish_dropped, 3);
    broker.shutdown().await;
}

#[tokio::test]
async fn queue_is_also_bounded_in_bytes() {
    // Each message weighs its topic ("q/m", 3) plus payload (7): two fit in 20 bytes.
    let broker = TestBroker::start_with(|c| c.mqtt.max_queued_bytes = 20).await;
    let got = offline_queue(&broker, &[(1, "first.."), (1, "second."), (1, "third..")]).await;
    assert_eq!(got, ["first..", "second."]);
    assert_eq!(broker.stats().publish_dropped, 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn subscriptions_beyond_the_per_client_maximum_are_refused() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_subscriptions_per_client = 2).await;
    let (mut v5, _) = broker.raw_v5(v5_connect("many5")).await;
    let subscribe =
        mqtt5::Subscribe::new_many(["a", "b", "c"].map(|f| Filter::new(f, qos5(0))), None);
    v5.send_v5(V5Packet::Subscribe(mqtt5::Subscribe {
        pkid: 1,
        ..subscribe
    }))
    .await;
    use SubscribeReasonCode::{QuotaExceeded, Success};
    match v5.recv_v5().await {
        V5Packet::SubAck(ack) => assert_eq!(
            ack.return_codes,
            [Success(qos5(0)), Success(qos5(0)), QuotaExceeded] // 0x97
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    // Replacing an existing subscription does not count as another.
    v5.subscribe_v5(2, Filter::new("a", qos5(1)), None).await;

    let mut v3 = V3::connect(&broker, "many3").await;
    v3.subscribe_ok("a", 0).await;
    v3.subscribe_ok("b", 0).await;
    assert_eq!(
        v3.subscribe("c", 0).await,
        [rumqttc::SubscribeReasonCode::Failure]
    );
    assert_eq!(broker.broker().router.len(), 4);
    broker.shutdown().await;
}

#[tokio::test]
async fn topics_beyond_the_level_and_length_limits_are_refused() {
    let broker = TestBroker::start_with(|c| {
        c.mqtt.max_topic_levels = 3;
        c.mqtt.max_topic_length = 16;
    })
    .await;
    let mut watcher = V3::connect(&broker, "watcher").await;
    watcher.subscribe_ok("#", 0).await;

    let (mut v5, _) = broker.raw_v5(v5_connect("limits")).await;
    for (id, topic) in [(1, "a/b/c/d"), (2, "seventeen-chars-x")] {
        v5.send_v5(V5Packet::Publish(crate::harness::v5_publish(
            topic, 1, id, b"x",
        )))
        .await;
        match v5.recv_v5().await {
            V5Packet::PubAck(ack) => {
                assert_eq!(ack.reason, PubAckReason::TopicNameInvalid, "{topic}")
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    let subscribe = mqtt5::Subscribe::new_many(
        ["a/b/c/#", "a/+/c", "seventeen-chars-x"].map(|f| Filter::new(f, qos5(0))),
        None,
    );
    v5.send_v5(V5Packet::Subscribe(mqtt5::Subscribe {
        pkid: 3,
        ..subscribe
    }))
    .await;
    use SubscribeReasonCode::{Success, TopicFilterInvalid};
    match v5.recv_v5().await {
        V5Packet::SubAck(ack) => assert_eq!(
            ack.return_codes,
            [TopicFilterInvalid, Success(qos5(0)), TopicFilterInvalid]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }

    // v3 is acknowledged (it cannot be told) and the message dropped.
    let mut v3 = V3::connect(&broker, "limits3").await;
    v3.publish("a/b/c/d", 1, false, "too deep").await;
    v3.publish("a/b/c", 1, false, "fits").await;
    let got = watcher.next_publish().await;
    assert_eq!((got.topic.as_str(), got.qos), ("a/b/c", qos4(0)));
    broker.shutdown().await;
}

/// Issue 9, defect 2: retained messages matched at SUBSCRIBE went into an unbounded
/// backlog, outside the queue limits; one SUBSCRIBE repeating `#` queued a copy of the
/// retained tree per repetition for a client that need never read them.
#[tokio::test]
async fn retained_at_subscribe_count_against_the_queue_limits() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_queued_messages = 50).await;
    let (mut publisher, _) = broker.raw_v311("retainer", true).await;
    for i in 0..20 {
        let mut publish = rumqttc::Publish::new(format!("t/{i}"), qos4(0), vec![b'x'; 10]);
        publish.retain = true;
        publisher.send_v4(V4Packet::Publish(publish)).await;
    }
    publisher.ping_fence().await;

    let (mut subscriber, _) = broker.raw_v311("greedy", true).await;
    // 1,000 copies of `#` (one filter, sent once) and three more filters matching all 20:
    // 80 retained deliveries asked for, 50 allowed.
    let mut filters: Vec<_> = (0..1000)
        .map(|_| rumqttc::SubscribeFilter::new("#".into(), qos4(0)))
        .collect();
    for f in ["+/#", "t/#", "t/+"] {
        filters.push(rumqttc::SubscribeFilter::new(f.into(), qos4(0)));
    }
    let mut subscribe = rumqttc::Subscribe::new_many(filters);
    subscribe.pkid = 1;
    subscriber.send_v4(V4Packet::Subscribe(subscribe)).await;
    match subscriber.recv_v4().await {
        V4Packet::SubAck(ack) => assert_eq!(ack.return_codes.len(), 1003),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    subscriber.send(&[0xC0, 0x00]).await; // PINGREQ: its answer comes after the backlog
    let mut retained = 0;
    loop {
        match subscriber.recv_v4().await {
            V4Packet::Publish(p) => {
                assert!(p.retain);
                retained += 1;
            }
            V4Packet::PingResp => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(retained, 50, "the backlog stops at max_queued_messages");
    assert_eq!(broker.stats().retained_dropped, 30, "and counts the rest");
    broker.shutdown().await;
}
