//! The memory budget (`limits.max_memory`) with a consumer that never reads, and the
//! publish rate limits per client (`limits.publish_rate_per_client`,
//! `limits.publish_rate_action`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{self as mqtt5, ConnectReturnCode, Filter, PubAckReason};
use tokio::time::Instant;

use crate::client::V3;
use crate::harness::{
    TIMEOUT, TestBroker, V4Packet, V5Packet, connect_properties, connect_v311, qos5, v5_connect,
    v5_connect_with, v5_publish,
};

const BUDGET: u64 = 256 * 1024;

/// Publishes QoS 1 and returns the PUBACK's reason.
async fn publish_qos1(
    raw: &mut crate::harness::Raw,
    topic: &str,
    pid: u16,
    payload: &[u8],
) -> PubAckReason {
    raw.send_v5(V5Packet::Publish(v5_publish(topic, 1, pid, payload)))
        .await;
    match raw.recv_v5().await {
        V5Packet::PubAck(ack) => {
            assert_eq!(ack.pkid, pid);
            ack.reason
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn a_dead_consumer_fills_the_budget_then_the_broker_refuses_and_recovers() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_memory = Some(midge_broker::config::ByteSize(BUDGET));
        // The session's own limits stay out of the way: the budget is what stops it.
        c.mqtt.max_queued_messages = 100_000;
    })
    .await;
    let memory = broker.broker().memory.clone();

    // A v3 publisher connected before the pressure, for what v3 observes.
    let (mut v3_publisher, _) = broker.raw_v311("v3-pub", true).await;
    // A subscriber keeping up, on another topic.
    let mut live = V3::connect(&broker, "live").await;
    live.subscribe_ok("other/#", 0).await;
    // The dead consumer: QoS 1, one message in flight at most, and it never reads.
    let props = mqtt5::ConnectProperties {
        receive_maximum: Some(1),
        ..connect_properties()
    };
    let (mut dead, _) = broker.raw_v5(v5_connect_with("dead", true, props)).await;
    dead.subscribe_v5(1, Filter::new("load/#", qos5(1)), None)
        .await;

    let (mut publisher, _) = broker.raw_v5(v5_connect("pub")).await;
    let payload = vec![b'x'; 1024];
    let mut accepted = 0u32;
    let refused_at = loop {
        let pid = (accepted % 60_000 + 1) as u16;
        match publish_qos1(&mut publisher, "load/x", pid, &payload).await {
            PubAckReason::Success => accepted += 1,
            PubAckReason::QuotaExceeded => break accepted,
            other => panic!("unexpected PUBACK reason {other:?}"),
        }
        assert!(
            accepted < 2_000,
            "never refused: {} bytes used",
            memory.used()
        );
    };
    eprintln!(
        "budget {BUDGET}: {refused_at} QoS 1 messages accepted, then 0x97 at {} bytes counted",
        memory.used()
    );
    // About the budget's worth of 1 KiB messages went in first.
    assert!(
        (150..400).contains(&refused_at),
        "refused after {refused_at} messages"
    );
    assert!(memory.pressure());
    // Pressure holds until the count is back under 85 %.
    assert!(memory.used() >= BUDGET / 100 * 90);
    assert_eq!(memory.refused_publishes.load(Ordering::Relaxed), 1);

    // QoS 0 behind the dead consumer's backlog is dropped and counted by reason…
    publisher
        .send_v5(V5Packet::Publish(v5_publish("load/x", 0, 0, b"zero")))
        .await;
    // …while the subscriber keeping up still gets QoS 0.
    publisher
        .send_v5(V5Packet::Publish(v5_publish("other/x", 0, 0, b"still")))
        .await;
    assert_eq!(&live.next_publish().await.payload[..], b"still");
    assert_eq!(memory.dropped_qos0.load(Ordering::Relaxed), 1);
    let sys: Vec<_> = midge_broker::sys::values(broker.broker());
    let value = |topic: &str| {
        sys.iter()
            .find(|(t, _)| *t == topic)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {topic}"))
    };
    assert_eq!(value("$SYS/broker/publish/messages/dropped/memory"), "1");
    assert_eq!(value("$SYS/broker/publish/messages/refused/memory"), "1");
    assert_eq!(value("$SYS/broker/memory/pressure"), "1");

    // v3 cannot be told "quota exceeded": no PUBACK, the connection closes, and the
    // client sends the message again when it reconnects.
    v3_publisher
        .send_v4(V4Packet::Publish({
            let mut p = rumqttc::Publish::new("load/x", rumqttc::QoS::AtLeastOnce, "v3");
            p.pkid = 1;
            p
        }))
        .await;
    v3_publisher.expect_closed().await;

    // New connections are refused: v5 0x89 server busy, v3 3 server unavailable.
    let mut refused = broker.raw().await;
    refused
        .send_v5(V5Packet::Connect(v5_connect("late"), None, None))
        .await;
    match refused.recv_v5().await {
        V5Packet::ConnAck(ack) => assert_eq!(ack.code, ConnectReturnCode::ServerBusy),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let mut refused_v3 = broker.raw().await;
    refused_v3.send(&connect_v311("late-v3")).await;
    assert_eq!(refused_v3.recv(4).await, [0x20, 0x02, 0x00, 0x03]);
    assert_eq!(memory.refused_connections.load(Ordering::Relaxed), 2);

    // The dead consumer goes: its queue is given back, and the broker takes work again.
    drop(dead);
    broker
        .eventually("the dead consumer's queue released", |b| {
            !b.memory.pressure()
        })
        .await;
    assert!(
        memory.used() < BUDGET / 2,
        "{} bytes still counted",
        memory.used()
    );
    let (mut again, _) = broker.raw_v5(v5_connect("again")).await;
    assert_eq!(
        publish_qos1(&mut again, "load/x", 1, &payload).await,
        PubAckReason::NoMatchingSubscribers
    );
    broker.shutdown().await;
}

/// A retained message counts against the budget, and is given back when deleted.
#[tokio::test]
async fn retained_messages_count_against_the_budget() {
    let broker = TestBroker::start().await;
    let memory = broker.broker().memory.clone();
    let before = memory.used();
    let mut publisher = V3::connect(&broker, "retainer").await;
    publisher.publish("kept", 1, true, vec![b'r'; 10_000]).await;
    assert!(memory.used() >= before + 10_000);
    publisher.publish("kept", 1, true, Vec::new()).await;
    // The connection's buffers (counted too) are released at its next wake-up.
    broker
        .eventually("retained bytes given back", |b| b.memory.used() == before)
        .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_rate_limited_publisher_is_held_to_its_rate_and_others_are_not() {
    const RATE: usize = 50;
    let broker = TestBroker::start_with(|c| c.limits.publish_rate_per_client = RATE as u32).await;
    let mut subscriber = V3::connect(&broker, "counter").await;
    subscriber.subscribe_ok("rate/#", 0).await;

    // The flood: 300 QoS 0 publishes in one write.
    let (mut flood, _) = broker.raw_v311("flood", true).await;
    let mut bytes = bytes::BytesMut::new();
    for i in 0..300u16 {
        let p = rumqttc::Publish::new("rate/a", rumqttc::QoS::AtMostOnce, i.to_be_bytes().to_vec());
        V4Packet::Publish(p).write(&mut bytes, usize::MAX).unwrap();
    }
    flood.send(&bytes).await;
    // Another client within its own rate, sending while the flood is held back.
    let (mut polite, _) = broker.raw_v311("polite", true).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent_polite = Instant::now();
    let mut polite_bytes = bytes::BytesMut::new();
    for _ in 0..40 {
        let p = rumqttc::Publish::new("rate/b", rumqttc::QoS::AtMostOnce, "b");
        V4Packet::Publish(p)
            .write(&mut polite_bytes, usize::MAX)
            .unwrap();
    }
    polite.send(&polite_bytes).await;

    let mut first_flood: Option<Instant> = None;
    let (mut flood_in_window, mut polite_got) = (0usize, 0usize);
    let mut polite_done: Option<Duration> = None;
    let window = Duration::from_secs(2);
    let deadline = Instant::now() + window + TIMEOUT;
    loop {
        let now = Instant::now();
        if first_flood.is_some_and(|t| now >= t + window) && polite_done.is_some() {
            break;
        }
        assert!(
            now < deadline,
            "timed out: {flood_in_window} / {polite_got}"
        );
        let Ok(publish) =
            tokio::time::timeout(Duration::from_millis(100), subscriber.next_publish()).await
        else {
            continue;
        };
        let now = Instant::now();
        if publish.topic == "rate/a" {
            let first = *first_flood.get_or_insert(now);
            if now < first + window {
                flood_in_window += 1;
            }
        } else {
            polite_got += 1;
            if polite_got == 40 {
                polite_done = Some(now - sent_polite);
            }
        }
    }
    eprintln!(
        "rate limit {RATE}/s: {flood_in_window} flood messages in the first {window:?}; the other client's 40 in {:?}",
        polite_done.unwrap_or_default()
    );
    // One second's worth at once, then the rate: 150 in two seconds, with room for a
    // loaded machine's scheduling on either side.
    assert!(
        (RATE * 2..=RATE * 3 + 30).contains(&flood_in_window),
        "{flood_in_window} flood messages in {window:?} at {RATE}/s"
    );
    let polite_done = polite_done.unwrap();
    assert!(
        polite_done < Duration::from_secs(1),
        "the other client's 40 took {polite_done:?}"
    );
    // Held back, not closed, and counted once per pause.
    let stats = broker.stats();
    assert!(stats.publish_rate_throttled >= 1, "{stats:?}");
    assert_eq!(stats.publish_rate_disconnected, 0);
    flood.ping_fence().await;
    broker.shutdown().await;
}

/// `limits.publish_rate_action = "disconnect"`: a client over its rate is closed, MQTT 5
/// with DISCONNECT 0x96 and MQTT 3 without a word; what it sent within the rate is
/// delivered and acknowledged, the PUBLISH over it is not; a client within its rate keeps
/// its connection.
#[tokio::test]
async fn over_its_rate_a_client_is_disconnected_with_0x96_when_asked() {
    const RATE: u16 = 20;
    let broker = TestBroker::start_with(|c| {
        c.limits.publish_rate_per_client = u32::from(RATE);
        c.limits.publish_rate_action = midge_broker::config::PublishRateAction::Disconnect;
    })
    .await;
    let mut subscriber = V3::connect(&broker, "counter").await;
    subscriber.subscribe_ok("rate/#", 1).await;

    // MQTT 5: 30 QoS 1 publishes in one write. One second's worth is within the rate.
    let (mut v5, _) = broker.raw_v5(v5_connect("flood5")).await;
    let mut bytes = bytes::BytesMut::new();
    for pid in 1..=30u16 {
        V5Packet::Publish(v5_publish("rate/v5", 1, pid, &pid.to_be_bytes()))
            .write(&mut bytes, None)
            .unwrap();
    }
    v5.send(&bytes).await;
    for pid in 1..=RATE {
        match v5.recv_v5().await {
            V5Packet::PubAck(ack) => {
                assert_eq!((ack.pkid, ack.reason), (pid, PubAckReason::Success));
            }
            other => panic!("expected PUBACK {pid}, got {other:?}"),
        }
    }
    let why = v5.expect_disconnect(0x96).await;
    assert_eq!(why.as_deref(), Some("message rate too high"));

    // MQTT 3.1.1: closed, as it has no DISCONNECT to send.
    let (mut v3, _) = broker.raw_v311("flood3", true).await;
    let mut bytes = bytes::BytesMut::new();
    for i in 0..30u16 {
        let p = rumqttc::Publish::new(
            "rate/v3",
            rumqttc::QoS::AtMostOnce,
            i.to_be_bytes().to_vec(),
        );
        V4Packet::Publish(p).write(&mut bytes, usize::MAX).unwrap();
    }
    v3.send(&bytes).await;
    v3.expect_closed().await;

    // A client at its rate's worth stays connected.
    let (mut polite, _) = broker.raw_v311("polite", true).await;
    let mut bytes = bytes::BytesMut::new();
    for _ in 0..RATE {
        let p = rumqttc::Publish::new("rate/polite", rumqttc::QoS::AtMostOnce, "p");
        V4Packet::Publish(p).write(&mut bytes, usize::MAX).unwrap();
    }
    polite.send(&bytes).await;
    polite.ping_fence().await;

    // The subscriber got what was within each rate, in order, and nothing over it.
    let mut got = std::collections::HashMap::<String, Vec<Vec<u8>>>::new();
    for _ in 0..3 * RATE {
        let publish = subscriber.next_publish().await;
        got.entry(publish.topic.clone())
            .or_default()
            .push(publish.payload.to_vec());
    }
    let expected: Vec<Vec<u8>> = (1..=RATE).map(|pid| pid.to_be_bytes().to_vec()).collect();
    assert_eq!(got["rate/v5"], expected);
    let expected: Vec<Vec<u8>> = (0..RATE).map(|i| i.to_be_bytes().to_vec()).collect();
    assert_eq!(got["rate/v3"], expected);
    assert_eq!(got["rate/polite"].len(), usize::from(RATE));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), subscriber.next_publish())
            .await
            .is_err(),
        "a publish over the rate was delivered"
    );
    let stats = broker.stats();
    assert_eq!(stats.publish_rate_disconnected, 2, "{stats:?}");
    assert_eq!(stats.publish_rate_throttled, 0);
    broker.shutdown().await;
}

/// A subscriber that stopped reading holds its queue limit, a little of the write buffer
/// and `limits.socket_send_buffer` of kernel buffer: not a full write buffer of 64 KiB,
/// which no queue limit or memory policy could take back, nor an autotuned send buffer.
#[tokio::test]
async fn a_stalled_subscriber_holds_its_queue_not_its_buffers() {
    const QUEUED: usize = 10;
    const SENT: usize = 1_000;
    let broker = TestBroker::start_with(|c| {
        c.mqtt.max_queued_messages = QUEUED;
        c.limits.socket_send_buffer = midge_broker::config::ByteSize(4096);
    })
    .await;
    // The dead subscriber: a small receive buffer, so the kernel holds little on its side.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut dead = crate::harness::Raw {
        stream: socket.connect(broker.addr).await.expect("connect"),
    };
    dead.send(&connect_v311("dead")).await;
    assert_eq!(dead.recv(4).await, [0x20, 0x02, 0x00, 0x00]);
    dead.subscribe_v4(1, "dead/#", 0).await;

    // A few messages at a time, so the dead connection's task runs in between and moves
    // what it can from its queue towards the socket. What was sent is routed (queued or
    // dropped) once the broker has answered a PINGREQ sent behind it.
    let (mut publisher, _) = broker.raw_v311("pub", true).await;
    let mut burst = bytes::BytesMut::new();
    for _ in 0..5 {
        let publish = rumqttc::Publish::new("dead/x", rumqttc::QoS::AtMostOnce, vec![b'x'; 1024]);
        V4Packet::Publish(publish)
            .write(&mut burst, usize::MAX)
            .expect("encodes");
    }
    burst.extend_from_slice(&[0xC0, 0x00]);
    for _ in 0..SENT / 5 {
        publisher.send(&burst).await;
        assert_eq!(publisher.recv(2).await, [0xD0, 0x00]);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dropped = broker
        .broker()
        .stats
        .publish_dropped
        .load(Ordering::Relaxed) as usize;

    // Reading now drains whatever the broker and the kernel held for it.
    let mut received = 0;
    while let Ok(publish) =
        tokio::time::timeout(Duration::from_millis(500), dead.recv_packet()).await
    {
        assert_eq!(publish[0] & 0xF0, 0x30, "PUBLISH");
        received += 1;
    }
    eprintln!("stalled subscriber: {received} received of {SENT}, {dropped} dropped");
    assert_eq!(
        received + dropped,
        SENT,
        "every message delivered or counted"
    );
    // Held for it: QUEUED queued, up to 4 KiB and a message in the write buffer, and
    // the kernel's buffers on both sides (twice 4 KiB each, as Linux doubles them).
    assert!(
        received <= QUEUED + 40,
        "{received} messages were held for a subscriber that stopped reading"
    );
    broker.shutdown().await;
}
