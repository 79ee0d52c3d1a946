//! Malformed and protocol-violating input, as raw bytes: that one connection is closed,
//! with the matching DISCONNECT reason for v5 and plainly for v3, the event is counted,
//! and a client connected meanwhile keeps working.

use crate::client::{V3, text};
use crate::harness::{TestBroker, v5_connect};

/// The protocol of the misbehaving connection.
#[derive(Clone, Copy, Debug)]
enum Version {
    V311,
    /// v5; the broker must answer DISCONNECT with this reason.
    V5(u8),
}

/// Connects a bystander, then a client that sends `bytes` after CONNECT; checks that the
/// client is closed as `version` says, that the violation was counted, and that the
/// bystander still gets its messages.
async fn closes(version: Version, bytes: &[u8]) {
    closes_with(|_| {}, version, bytes).await;
}

async fn closes_with(
    adjust: impl FnOnce(&mut midge_broker::Config),
    version: Version,
    bytes: &[u8],
) {
    let broker = TestBroker::start_with(adjust).await;
    let mut bystander = V3::connect(&broker, "bystander").await;
    bystander.subscribe_ok("alive", 0).await;

    match version {
        Version::V311 => {
            let (mut raw, _) = broker.raw_v311("offender", true).await;
            raw.send(bytes).await;
            raw.expect_closed().await;
        }
        Version::V5(reason) => {
            let (mut raw, _) = broker.raw_v5(v5_connect("offender")).await;
            raw.send(bytes).await;
            raw.expect_disconnect(reason).await;
        }
    }
    assert_eq!(
        broker.stats().protocol_errors,
        1,
        "{version:?} {bytes:02X?}"
    );

    V3::connect(&broker, "pub")
        .await
        .publish("alive", 0, false, "yes")
        .await;
    assert_eq!(text(&bystander.next_publish().await.payload), "yes");
    broker.shutdown().await;
}

const MALFORMED: u8 = 0x81;
const PROTOCOL_ERROR: u8 = 0x82;

#[tokio::test]
async fn remaining_length_longer_than_four_bytes() {
    let bytes = [
        0x30, // PUBLISH QoS 0
        0xFF, 0xFF, 0xFF, 0xFF, 0x01, // remaining length: a fifth byte (1.5.5)
    ];
    closes(Version::V311, &bytes).await;
    closes(Version::V5(MALFORMED), &bytes).await;
}

#[tokio::test]
async fn v5_remaining_length_not_in_its_shortest_form() {
    closes(
        Version::V5(MALFORMED),
        &[
            0xC0, // PINGREQ
            0x80, 0x00, // remaining length 0 in two bytes [MQTT-1.5.5-1]
        ],
    )
    .await;
}

#[tokio::test]
async fn reserved_fixed_header_flags() {
    // SUBSCRIBE must carry flags 0010 [MQTT-3.8.1-1]; here 0000.
    closes(
        Version::V311,
        &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b't', 0x00],
    )
    .await;
    closes(
        Version::V5(MALFORMED),
        &[
            0x80, 0x07, // SUBSCRIBE with flags 0000, remaining length 7
            0x00, 0x01, // packet id 1
            0x00, // properties length 0
            0x00, 0x01, b't', 0x00, // filter "t", QoS 0
        ],
    )
    .await;
    // PUBREL must carry 0010 [MQTT-3.6.1-1]; PINGREQ 0000.
    closes(Version::V311, &[0x60, 0x02, 0x00, 0x01]).await;
    closes(Version::V5(MALFORMED), &[0xC1, 0x00]).await;
}

#[tokio::test]
async fn reserved_packet_type_0() {
    closes(Version::V311, &[0x00, 0x00]).await;
    closes(Version::V5(MALFORMED), &[0x00, 0x00]).await;
}

#[tokio::test]
async fn publish_with_qos_3() {
    let bytes = [
        0x36, 0x06, // PUBLISH with QoS bits 11 [MQTT-3.3.1-4]
        0x00, 0x01, b't', // topic "t"
        0x00, 0x01, // packet id 1
        b'x', // payload
    ];
    closes(Version::V311, &bytes).await;
    closes(Version::V5(MALFORMED), &bytes).await;
}

#[tokio::test]
async fn publish_with_dup_at_qos_0() {
    let bytes = [
        0x38, 0x04, // PUBLISH, DUP 1, QoS 0 [MQTT-3.3.1-2]
        0x00, 0x01, b't', // topic "t"
        b'x', // refused on the first byte, before anything after it is read
    ];
    closes(Version::V311, &bytes).await;
    closes(Version::V5(MALFORMED), &bytes).await;
}

#[tokio::test]
async fn packet_identifier_0() {
    // [MQTT-2.3.1-1] (3.1.1), [MQTT-2.2.1-3] (v5): QoS > 0 PUBLISH needs a non-zero id.
    closes(
        Version::V311,
        &[
            0x32, 0x06, // PUBLISH QoS 1
            0x00, 0x01, b't', // topic "t"
            0x00, 0x00, // packet id 0
            b'x',
        ],
    )
    .await;
    closes(
        Version::V5(PROTOCOL_ERROR),
        &[
            0x82, 0x07, // SUBSCRIBE
            0x00, 0x00, // packet id 0
            0x00, // properties length 0
            0x00, 0x01, b't', 0x00, // filter "t", QoS 0
        ],
    )
    .await;
}

#[tokio::test]
async fn wildcard_in_a_topic_name() {
    // [MQTT-3.3.2-2] topic names carry no wildcards.
    closes(
        Version::V311,
        &[0x30, 0x06, 0x00, 0x03, b'a', b'/', b'+', b'x'],
    )
    .await;
    closes(
        Version::V5(0x90), // Topic Name invalid
        &[
            0x30, 0x07, // PUBLISH QoS 0
            0x00, 0x03, b'a', b'/', b'#', // topic "a/#"
            0x00, // properties length 0
            b'x', // payload
        ],
    )
    .await;
}

#[tokio::test]
async fn invalid_utf8_in_a_topic() {
    closes(
        Version::V311,
        &[
            0x30, 0x05, // PUBLISH QoS 0
            0x00, 0x02, 0xC3, 0x28, // topic: an invalid 2-byte sequence [MQTT-1.5.3-1]
            b'x',
        ],
    )
    .await;
    closes(
        Version::V5(MALFORMED),
        &[
            0x82, 0x08, // SUBSCRIBE
            0x00, 0x01, // packet id 1
            0x00, // properties length 0
            0x00, 0x02, 0xED, 0xA0, // filter: the start of a UTF-16 surrogate, not UTF-8
            0x00,
        ],
    )
    .await;
}

#[tokio::test]
async fn null_character_in_a_topic() {
    let bytes = [
        0x30, 0x06, // PUBLISH QoS 0
        0x00, 0x03, b'a', 0x00, b'b', // topic "a\0b" [MQTT-1.5.4-2]
        0x00, // payload (v3) / properties length 0 (v5)
    ];
    closes(Version::V311, &bytes).await;
    closes(Version::V5(MALFORMED), &bytes).await;
}

#[tokio::test]
async fn packet_above_the_maximum_packet_size() {
    let small = |c: &mut midge_broker::Config| c.mqtt.max_packet_size = 64;
    let mut bytes = vec![
        0x30, 0x46, // PUBLISH QoS 0, remaining length 70: 72 bytes in all
        0x00, 0x01, b't', // topic "t"
        0x00, // properties length 0 (v5)
    ];
    bytes.extend([b'x'; 66]);
    closes_with(small, Version::V311, &bytes).await;
    closes_with(small, Version::V5(0x95), &bytes).await;
}

#[tokio::test]
async fn server_to_client_packets_from_a_client() {
    let v3: [&[u8]; 4] = [
        &[0x20, 0x02, 0x00, 0x00],       // CONNACK
        &[0x90, 0x03, 0x00, 0x01, 0x00], // SUBACK
        &[0xB0, 0x02, 0x00, 0x01],       // UNSUBACK
        &[0xD0, 0x00],                   // PINGRESP
    ];
    for bytes in v3 {
        closes(Version::V311, bytes).await;
    }
    let v5: [&[u8]; 4] = [
        &[0x20, 0x03, 0x00, 0x00, 0x00],       // CONNACK, no properties
        &[0x90, 0x04, 0x00, 0x01, 0x00, 0x00], // SUBACK id 1, granted QoS 0
        &[0xB0, 0x04, 0x00, 0x01, 0x00, 0x00], // UNSUBACK id 1, success
        &[0xD0, 0x00],                         // PINGRESP
    ];
    for bytes in v5 {
        closes(Version::V5(PROTOCOL_ERROR), bytes).await;
    }
}

#[tokio::test]
async fn auth_packet_from_a_v3_client() {
    closes(Version::V311, &[0xF0, 0x00]).await; // type 15 is reserved before MQTT 5
}

#[tokio::test]
async fn subscribe_without_filters() {
    closes(Version::V311, &[0x82, 0x02, 0x00, 0x01]).await; // [MQTT-3.8.3-3]
    closes(
        Version::V5(PROTOCOL_ERROR),
        &[0x82, 0x03, 0x00, 0x01, 0x00], // packet id 1, no properties, no filter
    )
    .await;
}

#[tokio::test]
async fn subscription_options_out_of_range() {
    // 3.1.1: requested QoS 3 [MQTT-3.8.3-4].
    closes(
        Version::V311,
        &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b't', 0x03],
    )
    .await;
    // v5: retain handling 3 is a Protocol Error (3.8.3.1).
    closes(
        Version::V5(PROTOCOL_ERROR),
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b't', 0x30],
    )
    .await;
    // v5: no-local on a shared subscription [MQTT-3.8.3-4].
    let mut shared = vec![0x82, 0x12, 0x00, 0x01, 0x00, 0x00, 0x0C];
    shared.extend(b"$share/g/abc");
    shared.push(0x04); // options: no local
    closes(Version::V5(PROTOCOL_ERROR), &shared).await;
}

#[tokio::test]
async fn v5_properties_that_break_the_rules() {
    // Topic alias 0 [MQTT-3.3.2-8].
    closes(
        Version::V5(0x94),
        &[
            0x30, 0x08, // PUBLISH QoS 0
            0x00, 0x01, b't', // topic "t"
            0x03, 0x23, 0x00, 0x00, // properties: topic alias 0
            b'x',
        ],
    )
    .await;
    // A subscription identifier from a client [MQTT-3.3.4-6].
    closes(
        Version::V5(PROTOCOL_ERROR),
        &[
            0x30, 0x07, // PUBLISH QoS 0
            0x00, 0x01, b't', // topic "t"
            0x02, 0x0B, 0x01, // properties: subscription identifier 1
            b'x',
        ],
    )
    .await;
    // A property PUBLISH may not carry: session expiry interval (2.2.2.2).
    closes(
        Version::V5(MALFORMED),
        &[
            0x30, 0x0A, // PUBLISH QoS 0
            0x00, 0x01, b't', // topic "t"
            0x05, 0x11, 0x00, 0x00, 0x00, 0x01, // properties: session expiry 1
            b'x',
        ],
    )
    .await;
    // The same property twice (2.2.2.2).
    closes(
        Version::V5(PROTOCOL_ERROR),
        &[
            0x30, 0x0D, // PUBLISH QoS 0
            0x00, 0x01, b't', // topic "t"
            0x08, // properties length 8
            0x03, 0x00, 0x01, b'a', // content type "a"
            0x03, 0x00, 0x01, b'a', // content type "a", again
            b'x',
        ],
    )
    .await;
}

#[tokio::test]
async fn v5_zero_where_zero_is_not_allowed() {
    // Subscription identifier 0 (3.8.2.1.2).
    closes(
        Version::V5(PROTOCOL_ERROR),
        &[
            0x82, 0x09, // SUBSCRIBE
            0x00, 0x01, // packet id 1
            0x02, 0x0B, 0x00, // properties: subscription identifier 0
            0x00, 0x01, b't', 0x00, // filter "t", QoS 0
        ],
    )
    .await;
    // A wildcard in a Response Topic, which is a topic name [MQTT-3.3.2-14].
    closes(
        Version::V5(PROTOCOL_ERROR),
        &[
            0x30, 0x09, // PUBLISH QoS 0
            0x00, 0x01, b't', // topic "t"
            0x04, 0x08, 0x00, 0x01, b'#', // properties: response topic "#"
            b'x',
        ],
    )
    .await;
}
