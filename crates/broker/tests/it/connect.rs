//! CONNECT and CONNACK: protocol level detection (3.1, 3.1.1, 5.0 on one port), client
//! identifier rules, the connect timeout, CONNECT first and only once, refusals.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{self as mqtt5, ConnectReturnCode};
use tokio::time::Instant;

use crate::client::{V3, V5, text};
use crate::harness::{
    CONNACK_V311_OK, TestBroker, V5Packet, connect_properties, connect_v5, connect_v311,
    connect_v311_with, v5_connect, v5_connect_with,
};

/// `MQIsdp` level 3: an MQTT 3.1 CONNECT with clean session, keep alive 60, client "v31".
const CONNECT_V31: [u8; 19] = [
    0x10, 0x11, // CONNECT, remaining length 17
    0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', // protocol name "MQIsdp"
    0x03, // protocol level 3
    0x02, // connect flags: clean session
    0x00, 0x3C, // keep alive 60
    0x00, 0x03, b'v', b'3', b'1', // client id "v31"
];

#[tokio::test]
async fn mqtt31_mqisdp_client_is_accepted_and_served_in_its_own_version() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.send(&CONNECT_V31).await;
    assert_eq!(raw.recv(4).await, CONNACK_V311_OK);

    // 3.1 SUBSCRIBE and PUBLISH share 3.1.1's layout; the client hears its own message.
    raw.subscribe_v4(1, "v31/t", 1).await;
    let mut publisher = V5::connect(&broker, "pub5").await;
    publisher.publish("v31/t", 1, false, "to 3.1").await;
    let publish = raw.recv_v4_publish().await;
    assert_eq!(
        (publish.topic.as_str(), &publish.payload[..]),
        ("v31/t", &b"to 3.1"[..])
    );
    assert_eq!(publish.qos, rumqttc::QoS::AtLeastOnce);
    broker.shutdown().await;
}

#[tokio::test]
async fn mqtt311_and_mqtt5_clients_share_one_port() {
    let broker = TestBroker::start().await;
    let mut raw5 = broker.raw().await;
    raw5.send(&connect_v5("raw5")).await;
    // A v5 CONNACK has a reason code and a properties block; rumqttc's v5 decoder reads it.
    match raw5.recv_v5().await {
        V5Packet::ConnAck(ack) => {
            assert_eq!(ack.code, ConnectReturnCode::Success);
            assert!(ack.properties.is_some(), "v5 CONNACK carries properties");
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let mut raw3 = broker.raw().await;
    raw3.send(&connect_v311("raw3")).await;
    assert_eq!(raw3.recv(4).await, CONNACK_V311_OK);

    let mut v3 = V3::connect(&broker, "sub3").await;
    v3.subscribe_ok("mixed/#", 1).await;
    let mut v5 = V5::connect(&broker, "pub5").await;
    v5.publish("mixed/a", 1, false, "from v5").await;
    let publish = v3.next_publish().await;
    assert_eq!(
        (publish.topic.as_str(), text(&publish.payload).as_str()),
        ("mixed/a", "from v5")
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_empty_client_id_gets_an_assigned_id_in_connack() {
    let broker = TestBroker::start().await;
    let (_a, ack_a) = broker.raw_v5(v5_connect("")).await;
    let (_b, ack_b) = broker.raw_v5(v5_connect("")).await;
    let id = |ack: &mqtt5::ConnAck| {
        ack.properties
            .as_ref()
            .and_then(|p| p.assigned_client_identifier.clone())
            .expect("Assigned Client Identifier in CONNACK [MQTT-3.2.2-16]")
    };
    let (id_a, id_b) = (id(&ack_a), id(&ack_b));
    assert!(!id_a.is_empty());
    assert_ne!(id_a, id_b, "each client gets its own id");
    // Both are connected at once, so the ids really name two sessions.
    broker
        .eventually("two sessions", |b| b.registry.connected_len() == 2)
        .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_client_id_chosen_by_the_client_is_not_echoed() {
    let broker = TestBroker::start().await;
    let (_raw, ack) = broker.raw_v5(v5_connect("mine")).await;
    let assigned = ack.properties.and_then(|p| p.assigned_client_identifier);
    assert_eq!(assigned, None);
    broker.shutdown().await;
}

#[tokio::test]
async fn v311_empty_client_id_is_accepted_with_clean_session() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.send(&connect_v311_with("", true, 60)).await;
    assert_eq!(raw.recv(4).await, CONNACK_V311_OK);
    raw.ping_fence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn v311_empty_client_id_without_clean_session_is_refused_with_return_code_2() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.send(&[
        0x10, 0x0C, // CONNECT, remaining length 12
        0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
        0x04, // level 4
        0x00, // connect flags: clean session 0
        0x00, 0x3C, // keep alive 60
        0x00, 0x00, // client id "" [MQTT-3.1.3-8]
    ])
    .await;
    // CONNACK, session present 0, return code 2 (identifier rejected), then close.
    assert_eq!(raw.recv_until_closed().await, [0x20, 0x02, 0x00, 0x02]);
    broker.shutdown().await;
}

#[tokio::test]
async fn v31_empty_client_id_is_refused_with_return_code_2() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.send(&[
        0x10, 0x0E, // CONNECT, remaining length 14
        0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', // "MQIsdp"
        0x03, // level 3
        0x02, // clean session
        0x00, 0x3C, // keep alive 60
        0x00, 0x00, // client id "": MQTT 3.1 requires 1 to 23 characters
    ])
    .await;
    assert_eq!(raw.recv_until_closed().await, [0x20, 0x02, 0x00, 0x02]);
    broker.shutdown().await;
}

#[tokio::test]
async fn connection_without_a_complete_connect_is_closed_at_the_connect_timeout() {
    let broker = TestBroker::start_with(|c| c.mqtt.connect_timeout_secs = 1).await;
    let started = Instant::now();
    let mut silent = broker.raw().await;
    let mut partial = broker.raw().await;
    // The first bytes of a CONNECT, and then nothing.
    partial.send(&[0x10, 0x0C, 0x00, 0x04, b'M']).await;
    // A client that connects in time is unaffected.
    let mut prompt = broker.raw().await;
    prompt.send(&connect_v311("prompt")).await;
    assert_eq!(prompt.recv(4).await, CONNACK_V311_OK);

    silent.expect_closed().await;
    partial.expect_closed().await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the 1 s connect timeout"
    );
    prompt.ping_fence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn first_packet_other_than_connect_closes_the_connection() {
    let broker = TestBroker::start().await;
    let cases: [(&str, &[u8]); 3] = [
        ("PINGREQ", &[0xC0, 0x00]),
        // PUBLISH QoS 0, topic "t", payload "x"
        ("PUBLISH", &[0x30, 0x04, 0x00, 0x01, b't', b'x']),
        // SUBSCRIBE id 1, filter "t", QoS 0
        (
            "SUBSCRIBE",
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b't', 0x00],
        ),
    ];
    for (name, bytes) in cases {
        let mut raw = broker.raw().await;
        raw.send(bytes).await;
        let got = raw.recv_until_closed().await;
        assert!(
            got.is_empty(),
            "{name} first: expected a plain close, got {got:02X?}"
        );
    }
    assert_eq!(broker.stats().clients_connected, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn second_connect_is_a_protocol_error() {
    let broker = TestBroker::start().await;
    let (mut v5, _) = broker.raw_v5(v5_connect("twice5")).await;
    v5.send(&connect_v5("twice5")).await;
    v5.expect_disconnect(0x82).await; // Protocol Error [MQTT-3.1.0-2]

    let (mut v3, _) = broker.raw_v311("twice3", true).await;
    v3.send(&connect_v311("twice3")).await;
    v3.expect_closed().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn unsupported_protocol_level_gets_return_code_1() {
    let broker = TestBroker::start().await;
    let cases: [(&str, [u8; 7]); 3] = [
        ("MQTT level 6", [0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06]),
        ("MQTT level 3", [0x00, 0x04, b'M', b'Q', b'T', b'T', 0x03]),
        ("MQTT level 0", [0x00, 0x04, b'M', b'Q', b'T', b'T', 0x00]),
    ];
    for (name, header) in cases {
        let mut raw = broker.raw().await;
        let mut packet = vec![0x10, 0x0D]; // CONNECT, remaining length 13
        packet.extend(header); // protocol name and level
        packet.extend([0x02, 0x00, 0x3C]); // clean session, keep alive 60
        packet.extend([0x00, 0x01, b'c']); // client id "c"
        raw.send(&packet).await;
        // [MQTT-3.1.2-2] CONNACK return code 1 (unacceptable protocol version), then close.
        assert_eq!(
            raw.recv_until_closed().await,
            [0x20, 0x02, 0x00, 0x01],
            "{name}"
        );
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn mqisdp_with_level_4_is_refused_with_return_code_1() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.send(&[
        0x10, 0x0F, // CONNECT, remaining length 15
        0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', // "MQIsdp"
        0x04, // level 4 belongs to "MQTT"
        0x02, 0x00, 0x3C, // clean session, keep alive 60
        0x00, 0x01, b'c', // client id
    ])
    .await;
    assert_eq!(raw.recv_until_closed().await, [0x20, 0x02, 0x00, 0x01]);
    broker.shutdown().await;
}

/// A v5 CONNECT the broker cannot accept gets a v5 CONNACK with the reason, then a close.
async fn refused_v5_connect(broker: &TestBroker, packet: &[u8]) -> ConnectReturnCode {
    let mut raw = broker.raw().await;
    raw.send(packet).await;
    let bytes = raw.recv_until_closed().await;
    match V5Packet::read(&mut bytes::BytesMut::from(&bytes[..]), None) {
        Ok(V5Packet::ConnAck(ack)) => {
            assert!(!ack.session_present);
            ack.code
        }
        other => panic!("expected a v5 CONNACK, got {bytes:02X?} = {other:?}"),
    }
}

#[tokio::test]
async fn malformed_v5_connect_gets_a_v5_connack_with_the_reason() {
    let broker = TestBroker::start().await;
    let reserved_flag = [
        0x10, 0x0E, // CONNECT, remaining length 14
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, // "MQTT" level 5
        0x03, // connect flags: clean start + reserved bit 0 [MQTT-3.1.2-3]
        0x00, 0x3C, // keep alive 60
        0x00, // properties length 0
        0x00, 0x01, b'c', // client id "c"
    ];
    assert_eq!(
        refused_v5_connect(&broker, &reserved_flag).await,
        ConnectReturnCode::MalformedPacket
    );

    let duplicate_property = [
        0x10, 0x18, // CONNECT, remaining length 24
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, // "MQTT" level 5
        0x02, // clean start
        0x00, 0x3C, // keep alive 60
        0x0A, // properties length 10
        0x11, 0x00, 0x00, 0x00, 0x0A, // session expiry interval 10
        0x11, 0x00, 0x00, 0x00, 0x0A, // ... again: a Protocol Error (2.2.2.2)
        0x00, 0x01, b'c', // client id "c"
    ];
    assert_eq!(
        refused_v5_connect(&broker, &duplicate_property).await,
        ConnectReturnCode::ProtocolError
    );

    let wildcard_will_topic = [
        0x10, 0x14, // CONNECT, remaining length 20
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, // "MQTT" level 5
        0x06, // clean start + will flag, will QoS 0
        0x00, 0x3C, // keep alive 60
        0x00, // properties length 0
        0x00, 0x01, b'c', // client id "c"
        0x00, // will properties length 0
        0x00, 0x01, b'#', // will topic "#": wildcards are not allowed in topic names
        0x00, 0x00, // will payload, empty
    ];
    assert_eq!(
        refused_v5_connect(&broker, &wildcard_will_topic).await,
        ConnectReturnCode::TopicNameInvalid
    );
    let receive_maximum_0 = [
        0x10, 0x11, // CONNECT, remaining length 17
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, // "MQTT" level 5
        0x02, // clean start
        0x00, 0x3C, // keep alive 60
        0x03, 0x21, 0x00, 0x00, // properties: receive maximum 0 (3.1.2.11.3)
        0x00, 0x01, b'c', // client id "c"
    ];
    assert_eq!(
        refused_v5_connect(&broker, &receive_maximum_0).await,
        ConnectReturnCode::ProtocolError
    );
    assert_eq!(broker.stats().clients_connected, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_connect_with_an_authentication_method_is_refused_with_0x8c() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    let properties = mqtt5::ConnectProperties {
        authentication_method: Some("SCRAM-SHA-256".into()),
        authentication_data: Some(bytes::Bytes::from_static(b"client-first")),
        ..connect_properties()
    };
    raw.send_v5(V5Packet::Connect(
        v5_connect_with("auth", true, properties),
        None,
        None,
    ))
    .await;
    match raw.recv_v5().await {
        V5Packet::ConnAck(ack) => {
            assert_eq!(ack.code, ConnectReturnCode::BadAuthenticationMethod)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    raw.expect_closed().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn auth_packet_after_a_connect_without_method_is_a_protocol_error() {
    let broker = TestBroker::start().await;
    let (mut raw, _) = broker.raw_v5(v5_connect("auth")).await;
    raw.send(&[
        0xF0, 0x02, // AUTH, remaining length 2
        0x18, // reason: continue authentication
        0x00, // properties length 0
    ])
    .await;
    // It is a Protocol Error to send AUTH when CONNECT had no Authentication Method (4.12).
    raw.expect_disconnect(0x82).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn shutdown_tells_v5_clients_0x8b_and_closes_v3_clients() {
    let broker = TestBroker::start().await;
    let (mut v5, _) = broker.raw_v5(v5_connect("v5")).await;
    let (mut v3, _) = broker.raw_v311("v3", true).await;
    let stopping = tokio::spawn(broker.shutdown());
    v5.expect_disconnect(0x8B).await; // Server shutting down
    v3.expect_closed().await;
    stopping.await.expect("shutdown completes");
}

#[tokio::test]
async fn packets_sent_in_the_same_write_as_connect_are_answered() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    let mut bytes = connect_v311("eager");
    bytes.extend_from_slice(&[
        0x82, 0x08, // SUBSCRIBE, remaining length 8
        0x00, 0x01, // packet id 1
        0x00, 0x03, b'a', b'/', b'b', // filter "a/b"
        0x01, // QoS 1
    ]);
    raw.send(&bytes).await;
    assert_eq!(raw.recv(4).await, CONNACK_V311_OK);
    // SUBACK for packet id 1, granted QoS 1 — without the client sending anything more.
    assert_eq!(raw.recv(5).await, [0x90, 0x03, 0x00, 0x01, 0x01]);
    broker.shutdown().await;
}
