//! Fine print of the spec found by running a third-party broker test suite against midge:
//! packets within the client's Maximum Packet Size, the MQTT 3.1 CONNACK, a close that
//! lets a client still writing read the reason, the topic level default, and a resent
//! QoS 2 PUBLISH answered like the first.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{self as mqtt5, PubRecReason};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::client::{V3, text};
use crate::harness::{
    CONNACK_V311_OK, TIMEOUT, TestBroker, V5Packet, connect_properties, v5_connect,
    v5_connect_with, v5_publish,
};

/// A v5 CONNECT (clean start) whose Maximum Packet Size is `max`.
fn connect_with_max_packet_size(client_id: &str, max: u32) -> mqtt5::Connect {
    let properties = mqtt5::ConnectProperties {
        max_packet_size: Some(max),
        ..connect_properties()
    };
    v5_connect_with(client_id, true, properties)
}

#[tokio::test]
async fn disconnect_leaves_out_its_reason_string_to_fit_the_client_maximum_packet_size() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_packet_size = 100).await;
    // The CONNACK (receive maximum, maximum packet size, topic alias maximum) is 16 bytes.
    let (mut raw, _) = broker
        .raw_v5(connect_with_max_packet_size("small", 16))
        .await;
    let publish = mqtt5::Publish::new("t", crate::harness::qos5(0), vec![b'x'; 120], None);
    raw.send_v5(V5Packet::Publish(publish)).await;
    // With its reason string the DISCONNECT would exceed 16 bytes [MQTT-3.14.2-3]: it
    // goes without, and the reason code alone still tells the client.
    let rest = raw.recv_until_closed().await;
    assert_eq!(rest, [0xE0, 0x01, 0x95], "DISCONNECT 0x95 within 16 bytes");

    // A client with room for it still gets the reason string.
    let (mut roomy, _) = broker
        .raw_v5(connect_with_max_packet_size("roomy", 64))
        .await;
    let publish = mqtt5::Publish::new("t", crate::harness::qos5(0), vec![b'x'; 120], None);
    roomy.send_v5(V5Packet::Publish(publish)).await;
    assert!(roomy.expect_disconnect(0x95).await.is_some());
    broker.shutdown().await;
}

#[tokio::test]
async fn connack_that_cannot_fit_the_client_maximum_packet_size_refuses_within_it() {
    let broker = TestBroker::start().await;
    // Exactly the 16 bytes of the default CONNACK: accepted.
    let (_fits, ack) = broker
        .raw_v5(connect_with_max_packet_size("sixteen", 16))
        .await;
    assert_eq!(ack.code, mqtt5::ConnectReturnCode::Success);

    // 5 bytes: the accepting CONNACK cannot be sent [MQTT-3.1.2-25], and without its
    // limits the client could not be served. It is refused in a CONNACK that fits.
    let mut raw = broker.raw().await;
    raw.send_v5(V5Packet::Connect(
        connect_with_max_packet_size("five", 5),
        None,
        None,
    ))
    .await;
    let rest = raw.recv_until_closed().await;
    assert_eq!(
        rest,
        [0x20, 0x03, 0x00, 0x83, 0x00],
        "CONNACK 0x83 (implementation specific error) in 5 bytes"
    );
    assert_eq!(broker.stats().connects_refused, 1);
    broker.shutdown().await;
}

/// An MQTT 3.1 CONNECT (`MQIsdp`, level 3) without clean session, client "v31p".
const CONNECT_V31_PERSISTENT: [u8; 20] = [
    0x10, 0x12, // CONNECT, remaining length 18
    0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', // protocol name "MQIsdp"
    0x03, // protocol level 3
    0x00, // connect flags: no clean session
    0x00, 0x3C, // keep alive 60
    0x00, 0x04, b'v', b'3', b'1', b'p', // client id "v31p"
];

#[tokio::test]
async fn mqtt31_connack_never_sets_the_session_present_bit() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.send(&CONNECT_V31_PERSISTENT).await;
    assert_eq!(raw.recv(4).await, CONNACK_V311_OK);
    raw.subscribe_v4(1, "v31/kept", 1).await;
    drop(raw);
    broker
        .eventually("the 3.1 session to be parked", |b| {
            b.registry.parked_len() == 1
        })
        .await;

    let mut raw = broker.raw().await;
    raw.send(&CONNECT_V31_PERSISTENT).await;
    // 3.1 has no session present flag: the byte is reserved and stays 0, although the
    // session (and its subscription) was resumed.
    assert_eq!(raw.recv(4).await, CONNACK_V311_OK);
    let mut publisher = V3::connect(&broker, "pub").await;
    publisher.publish("v31/kept", 1, false, "resumed").await;
    assert_eq!(&raw.recv_v4_publish().await.payload[..], b"resumed");
    broker.shutdown().await;
}

#[tokio::test]
async fn a_client_still_writing_after_0x95_reads_the_disconnect() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_packet_size = 1024).await;
    let (mut raw, _) = broker.raw_v5(v5_connect("writer")).await;
    // A PUBLISH announcing 1 MiB, refused from its fixed header with 0x95.
    raw.send(&[0x30, 0x80, 0x80, 0x40]).await;
    // The client does not read yet: it goes on sending the body it announced. Closed at
    // once, the broker's socket would answer with a reset, failing these writes and
    // discarding the DISCONNECT the client has not read.
    let chunk = [b'x'; 1024];
    for i in 0..16 {
        if let Err(e) = raw.stream.write_all(&chunk).await {
            panic!("write {i} after the 0x95 failed: {e}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    raw.expect_disconnect(0x95).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn the_drain_after_a_disconnect_is_bounded() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_packet_size = 1024).await;
    let (mut raw, _) = broker.raw_v5(v5_connect("flood")).await;
    raw.send(&[0x30, 0x80, 0x80, 0x40]).await;
    // A client that never stops writing is closed once the drain's budget is spent.
    let started = Instant::now();
    let chunk = vec![b'x'; 64 * 1024];
    loop {
        assert!(
            started.elapsed() < TIMEOUT,
            "still accepting writes after {TIMEOUT:?}"
        );
        match tokio::time::timeout(TIMEOUT, raw.stream.write_all(&chunk)).await {
            Ok(Ok(())) => tokio::time::sleep(Duration::from_millis(5)).await,
            Ok(Err(_)) => break,
            Err(_) => panic!("a write blocked for {TIMEOUT:?}: the broker stopped reading"),
        }
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn topics_of_200_levels_are_accepted_by_default() {
    let broker = TestBroker::start().await;
    // Mosquitto accepts 200 levels, the spec any number.
    let deep = vec!["l"; 200].join("/");
    let mut subscriber = V3::connect(&broker, "deep").await;
    subscriber.subscribe_ok(&deep, 1).await;
    let mut publisher = V3::connect(&broker, "pub").await;
    publisher.publish(&deep, 1, false, "deep").await;
    let got = subscriber.next_publish().await;
    assert_eq!(
        (got.topic.as_str(), text(&got.payload).as_str()),
        (deep.as_str(), "deep")
    );

    // One level more is beyond the default.
    assert_eq!(
        subscriber.subscribe(&format!("{deep}/l"), 1).await,
        [rumqttc::SubscribeReasonCode::Failure]
    );
    broker.shutdown().await;
}

/// Expects PUBREC for `packet_id` and returns its reason.
async fn pubrec_reason(raw: &mut crate::harness::Raw, packet_id: u16) -> PubRecReason {
    match raw.recv_v5().await {
        V5Packet::PubRec(rec) => {
            assert_eq!(rec.pkid, packet_id);
            rec.reason
        }
        other => panic!("expected PUBREC, got {other:?}"),
    }
}

#[tokio::test]
async fn a_resent_qos2_publish_gets_the_reason_of_the_first_pubrec() {
    let broker = TestBroker::start().await;
    let properties = mqtt5::ConnectProperties {
        session_expiry_interval: Some(60),
        ..connect_properties()
    };
    let connect = v5_connect_with("pub2", false, properties);
    let (mut raw, _) = broker.raw_v5(connect.clone()).await;
    let mut publish = v5_publish("nobody/listens", 2, 7, b"x");
    raw.send_v5(V5Packet::Publish(publish.clone())).await;
    assert_eq!(
        pubrec_reason(&mut raw, 7).await,
        PubRecReason::NoMatchingSubscribers
    );
    // The PUBREC was "lost": the same PUBLISH again, with DUP, gets the same answer.
    publish.dup = true;
    raw.send_v5(V5Packet::Publish(publish.clone())).await;
    assert_eq!(
        pubrec_reason(&mut raw, 7).await,
        PubRecReason::NoMatchingSubscribers
    );

    // The held id and its reason are session state: after a reconnect, still the same.
    drop(raw);
    broker
        .eventually("the session to be parked", |b| b.registry.parked_len() == 1)
        .await;
    let (mut raw, ack) = broker.raw_v5(connect).await;
    assert!(ack.session_present);
    raw.send_v5(V5Packet::Publish(publish)).await;
    assert_eq!(
        pubrec_reason(&mut raw, 7).await,
        PubRecReason::NoMatchingSubscribers
    );
    raw.send_v5(V5Packet::PubRel(mqtt5::PubRel::new(7, None)))
        .await;
    assert!(matches!(raw.recv_v5().await, V5Packet::PubComp(c) if c.pkid == 7));
    broker.shutdown().await;
}
