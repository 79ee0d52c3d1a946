//! Fine print of the spec found by running a third-party broker test suite against midge:
//! packets within the client's Maximum Packet Size.

use rumqttc::v5::mqttbytes::v5 as mqtt5;

use crate::harness::{TestBroker, V5Packet, connect_properties, v5_connect_with};

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
