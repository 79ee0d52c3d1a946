//! One test per decoder rule: each input breaks exactly one rule, and the test asserts the
//! error's reason code, which names the `DecodeError` variant (0x81 Malformed, 0x82
//! Protocol, 0x84 UnsupportedProtocolVersion, 0x90 TopicNameInvalid, 0x95 PacketTooLarge).

mod common;

use bytes::BytesMut;
use common::{MAX, decode_one, from_client, from_server, server_first};
use midge_proto::{DecodeError, Decoder, Packet, ProtocolVersion, ReasonCode};

const V31: ProtocolVersion = ProtocolVersion::V31;
const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

const MALFORMED: ReasonCode = ReasonCode::MALFORMED_PACKET;
const PROTOCOL: ReasonCode = ReasonCode::PROTOCOL_ERROR;
const TOPIC_NAME_INVALID: ReasonCode = ReasonCode::TOPIC_NAME_INVALID;

/// The reason code of the error `result` must be.
fn error(result: Result<Packet, DecodeError>) -> ReasonCode {
    match result {
        Ok(packet) => panic!("decoded {packet:?}, expected an error"),
        Err(error) => error.reason_code(),
    }
}

/// Decodes from the first byte alone: errors that need no more than that.
fn first_byte(version: Option<ProtocolVersion>, byte: u8) -> Result<Option<Packet>, DecodeError> {
    let mut decoder = match version {
        Some(version) => Decoder::with_version(version, MAX),
        None => Decoder::new(MAX),
    };
    decoder.decode(&mut BytesMut::from(&[byte][..]))
}

/// A packet with a fixed header computed from its body (all bodies here are under 128).
fn packet(first: u8, parts: &[&[u8]]) -> Vec<u8> {
    let body = parts.concat();
    assert!(body.len() < 128);
    let mut bytes = vec![first, body.len() as u8];
    bytes.extend(body);
    bytes
}

/// A property block: its one-byte length, then the properties.
fn props(properties: &[u8]) -> Vec<u8> {
    assert!(properties.len() < 128);
    let mut block = vec![properties.len() as u8];
    block.extend_from_slice(properties);
    block
}

/// A v5 CONNECT: clean start, client id "c", the given CONNECT property block.
fn v5_connect(properties: &[u8]) -> Vec<u8> {
    #[rustfmt::skip]
    let header: &[u8] = &[
        0x00, 0x04, b'M', b'Q', b'T', b'T',     // protocol name "MQTT"
        0x05,                                   // protocol level 5
        0x02,                                   // clean start
        0x00, 0x3C,                             // keep alive 60
    ];
    packet(0x10, &[header, &props(properties), &[0x00, 0x01, b'c']])
}

/// A v5 CONNECT with a will on topic "w", payload "x", and the given will property block.
fn v5_connect_with_will(will_properties: &[u8]) -> Vec<u8> {
    #[rustfmt::skip]
    let header: &[u8] = &[
        0x00, 0x04, b'M', b'Q', b'T', b'T',     // protocol name "MQTT"
        0x05,                                   // protocol level 5
        0x06,                                   // will (QoS 0), clean start
        0x00, 0x3C,                             // keep alive 60
        0x00,                                   // property length 0
        0x00, 0x01, b'c',                       // client id "c"
    ];
    let will: &[u8] = &[0x00, 0x01, b'w', 0x00, 0x01, b'x']; // will topic "w", payload "x"
    packet(0x10, &[header, &props(will_properties), will])
}

/// A v3.1.1 CONNECT with the given flags and payload after the client id "c".
fn v311_connect(flags: u8, after_client_id: &[u8]) -> Vec<u8> {
    #[rustfmt::skip]
    let header: &[u8] = &[
        0x00, 0x04, b'M', b'Q', b'T', b'T',     // protocol name "MQTT"
        0x04,                                   // protocol level 4
        flags,
        0x00, 0x3C,                             // keep alive 60
        0x00, 0x01, b'c',                       // client id "c"
    ];
    packet(0x10, &[header, after_client_id])
}

/// A v5 QoS 0 PUBLISH on `topic` with the given property block and payload "p".
fn v5_publish(topic: &[u8], properties: &[u8]) -> Vec<u8> {
    let topic = [&[0x00, topic.len() as u8][..], topic].concat();
    packet(0x30, &[&topic, &props(properties), b"p"])
}

// Fixed header.

#[test]
fn packet_type_0_is_malformed() {
    assert_eq!(
        first_byte(Some(V5), 0x00).unwrap_err().reason_code(),
        MALFORMED
    );
}

#[test]
fn packet_type_15_before_v5_is_malformed() {
    // AUTH does not exist in 3.1.1, where type 15 is reserved.
    assert_eq!(
        first_byte(Some(V311), 0xF0).unwrap_err().reason_code(),
        MALFORMED
    );
    assert_eq!(first_byte(Some(V5), 0xF0), Ok(None));
}

#[test]
fn reserved_fixed_header_flags_are_malformed_from_the_first_byte() {
    // [MQTT-2.1.3-1], [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1].
    for byte in [
        0x60, // PUBREL without its 0010
        0x63, // PUBREL 0011
        0x80, // SUBSCRIBE 0000
        0xA0, // UNSUBSCRIBE 0000
        0x22, // CONNACK 0010
        0x41, // PUBACK 0001
        0x58, // PUBREC 1000
        0x74, // PUBCOMP 0100
        0x92, // SUBACK 0010
        0xB1, // UNSUBACK 0001
        0xC1, // PINGREQ 0001
        0xD8, // PINGRESP 1000
        0xE2, // DISCONNECT 0010
        0xF1, // AUTH 0001
    ] {
        let result = first_byte(Some(V5), byte);
        assert_eq!(
            result.unwrap_err().reason_code(),
            MALFORMED,
            "first byte {byte:#04X}"
        );
    }
    // CONNECT 0001, as the first packet.
    assert_eq!(first_byte(None, 0x11).unwrap_err().reason_code(), MALFORMED);
}

#[test]
fn remaining_length_of_five_bytes_is_malformed() {
    // 1.5.5: at most four bytes; the fourth byte's continuation bit is already an error.
    let mut decoder = Decoder::with_version(V311, MAX);
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x80, 0x80][..]);
    assert_eq!(
        decoder.decode(&mut buf).unwrap_err().reason_code(),
        MALFORMED
    );
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01][..]);
    assert_eq!(
        decoder.decode(&mut buf).unwrap_err().reason_code(),
        MALFORMED
    );
}

#[test]
fn non_shortest_remaining_length_is_malformed_in_v5_only() {
    // [MQTT-1.5.5-1] is a v5 rule; 3.1.1 (2.2.3) does not require the shortest form.
    let pingreq = [0xC0, 0x80, 0x00]; // PINGREQ, remaining length 0 in two bytes
    assert_eq!(error(from_client(V5, &pingreq)), MALFORMED);
    assert_eq!(from_client(V311, &pingreq), Ok(Packet::PingReq));
}

#[test]
fn non_shortest_remaining_length_in_the_first_v5_connect_is_malformed() {
    // Found once the protocol level is read; the version is known for the CONNACK.
    let mut connect = common::minimal_connect(V5);
    connect.splice(1..2, [0x80 | connect[1], 0x00]);
    let mut decoder = Decoder::new(MAX);
    assert_eq!(error(decode_one(&mut decoder, &connect)), MALFORMED);
    assert_eq!(decoder.version(), Some(V5));
    // The same in 3.1.1 is accepted.
    let mut connect = common::minimal_connect(V311);
    connect.splice(1..2, [0x80 | connect[1], 0x00]);
    assert!(server_first(&connect).is_ok());
}

#[test]
fn a_first_packet_other_than_connect_is_a_protocol_error() {
    // [MQTT-3.1.0-1], from the first byte.
    let error = first_byte(None, 0x30).unwrap_err();
    assert_eq!(error, DecodeError::Protocol("first packet must be CONNECT"));
    assert_eq!(error.reason_code(), PROTOCOL);
    assert_eq!(self::error(server_first(&[0xC0, 0x00])), PROTOCOL);
}

// CONNECT.

#[test]
fn unknown_protocol_name_or_level_is_unsupported_protocol_version() {
    #[rustfmt::skip]
    let cases: [(&[u8], u8); 4] = [
        (b"MQTX", 4),   // unknown name [MQTT-3.1.2-1]
        (b"MQTT", 6),   // unknown level [MQTT-3.1.2-2]
        (b"MQTT", 3),   // 3.1's level under 3.1.1's name
        (b"MQIsdp", 4), // 3.1.1's level under 3.1's name
    ];
    for (name, level) in cases {
        let name_field = [&[0x00, name.len() as u8][..], name].concat();
        let bytes = packet(
            0x10,
            &[&name_field, &[level, 0x02, 0x00, 0x3C, 0x00, 0x01, b'c']],
        );
        let mut decoder = Decoder::new(MAX);
        let error = decode_one(&mut decoder, &bytes).unwrap_err();
        assert_eq!(
            error,
            DecodeError::UnsupportedProtocolVersion {
                name: String::from_utf8(name.to_vec()).unwrap(),
                level,
            }
        );
        assert_eq!(
            error.reason_code(),
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
        );
        assert_eq!(decoder.version(), None);
    }
}

#[test]
fn connect_reserved_flag_is_malformed_but_the_version_is_known() {
    // [MQTT-3.1.2-3]
    let mut decoder = Decoder::new(MAX);
    assert_eq!(
        error(decode_one(&mut decoder, &v311_connect(0x03, &[]))),
        MALFORMED
    );
    assert_eq!(decoder.version(), Some(V311));

    let mut v5 = v5_connect(&[]);
    v5[9] |= 0x01; // the flags byte
    let mut decoder = Decoder::new(MAX);
    assert_eq!(error(decode_one(&mut decoder, &v5)), MALFORMED);
    assert_eq!(
        decoder.version(),
        Some(V5),
        "the refusal must be a v5 CONNACK"
    );
}

#[test]
fn connect_reserved_flag_is_tolerated_in_v31() {
    // MQTT 3.1 calls the bit "unused" and never required it to be 0.
    let mut connect = common::minimal_connect(V31);
    connect[11] |= 0x01; // the flags byte
    assert!(server_first(&connect).is_ok());
}

#[test]
fn will_qos_without_a_will_is_malformed() {
    // v5 [MQTT-3.1.2-11], 3.1.1 [MQTT-3.1.2-13]
    assert_eq!(error(server_first(&v311_connect(0x0A, &[]))), MALFORMED);
}

#[test]
fn will_retain_without_a_will_is_malformed() {
    // v5 [MQTT-3.1.2-13], 3.1.1 [MQTT-3.1.2-15]
    assert_eq!(error(server_first(&v311_connect(0x22, &[]))), MALFORMED);
}

#[test]
fn will_qos_3_is_malformed() {
    // v5 3.1.2.6, 3.1.1 [MQTT-3.1.2-14]: flags will, QoS 3, clean session.
    let will = [0x00, 0x01, b'w', 0x00, 0x01, b'x'];
    assert_eq!(error(server_first(&v311_connect(0x1E, &will))), MALFORMED);
}

#[test]
fn password_without_user_name_is_malformed_in_v311() {
    // [MQTT-3.1.2-22]; v5 allows it (tested in decode.rs).
    let password = [0x00, 0x02, b'p', b'w'];
    assert_eq!(
        error(server_first(&v311_connect(0x42, &password))),
        MALFORMED
    );
}

#[test]
fn will_topic_with_a_wildcard_or_empty_is_topic_name_invalid() {
    for topic in [&b"a/+"[..], b"a/#", b""] {
        let will = [&[0x00, topic.len() as u8][..], topic, &[0x00, 0x01, b'x']].concat();
        let connect = v311_connect(0x06, &will); // will, clean session
        assert_eq!(
            error(server_first(&connect)),
            TOPIC_NAME_INVALID,
            "{topic:?}"
        );
    }
}

#[test]
fn strings_must_be_well_formed_utf8_without_u0000() {
    // [MQTT-1.5.4-1] (3.1.1 [MQTT-1.5.3-1]) and [MQTT-1.5.4-2] (3.1.1 [MQTT-1.5.3-2]).
    for client_id in [
        &[b'a', 0x00, b'b'][..],         // U+0000
        &[0xC3, 0x28],                   // invalid continuation byte
        &[0xED, 0xA0, 0x80],             // UTF-16 surrogate U+D800 encoded in UTF-8
        &[0xC0, 0x80],                   // overlong U+0000
        &[0xF8, 0x88, 0x80, 0x80, 0x80], // five-byte form
        &[0xE2, 0x82],                   // truncated sequence
    ] {
        #[rustfmt::skip]
        let header: &[u8] = &[
            0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
            0x04, 0x02, 0x00, 0x3C,             // level 4, clean session, keep alive 60
            0x00, client_id.len() as u8,        // client id length
        ];
        let connect = packet(0x10, &[header, client_id]);
        assert_eq!(error(server_first(&connect)), MALFORMED, "{client_id:02X?}");
    }
}

#[test]
fn bytes_after_the_last_field_are_malformed() {
    // 3.1.1 2.2.3 / v5 2.1.4: the remaining length covers exactly the fields.
    let mut connect = common::minimal_connect(V311);
    connect[1] += 1;
    connect.push(0x00);
    assert_eq!(error(server_first(&connect)), MALFORMED);
}

#[test]
fn a_field_running_past_the_remaining_length_is_malformed() {
    // The client id announces 5 bytes; the packet ends after 1.
    let mut connect = common::minimal_connect(V311);
    let last = connect.len() - 2;
    connect[last] = 5;
    assert_eq!(error(server_first(&connect)), MALFORMED);
}

#[test]
fn connect_property_values_out_of_range_are_protocol_errors() {
    #[rustfmt::skip]
    let cases: [&[u8]; 5] = [
        &[0x21, 0x00, 0x00],                    // receive maximum 0 (3.1.2.11.3)
        &[0x27, 0x00, 0x00, 0x00, 0x00],        // maximum packet size 0 (3.1.2.11.4)
        &[0x17, 0x02],                          // request problem information 2 (3.1.2.11.7)
        &[0x19, 0x02],                          // request response information 2 (3.1.2.11.6)
        &[0x16, 0x00, 0x01, 0xAA],              // authentication data without method (3.1.2.11.10)
    ];
    for properties in cases {
        assert_eq!(
            error(server_first(&v5_connect(properties))),
            PROTOCOL,
            "{properties:02X?}"
        );
    }
}

#[test]
fn a_property_twice_is_a_protocol_error() {
    #[rustfmt::skip]
    let twice = [
        0x11, 0x00, 0x00, 0x00, 0x0A,           // session expiry interval 10
        0x11, 0x00, 0x00, 0x00, 0x0B,           // session expiry interval 11
    ];
    assert_eq!(error(server_first(&v5_connect(&twice))), PROTOCOL);
    // User properties may repeat, even with the same name.
    #[rustfmt::skip]
    let users = [
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'1', // user property k=1
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'2', // user property k=2
    ];
    let Packet::Connect(connect) = server_first(&v5_connect(&users)).unwrap() else {
        panic!()
    };
    assert_eq!(connect.properties.user_properties.len(), 2);
}

#[test]
fn a_property_not_valid_for_the_packet_is_malformed() {
    // 2.2.2.2: "an Identifier which is not valid for its packet type [...] is a Malformed
    // Packet".
    let topic_alias = [0x23, 0x00, 0x01];
    assert_eq!(error(server_first(&v5_connect(&topic_alias))), MALFORMED);
    let unknown = [0x7F, 0x00];
    assert_eq!(error(server_first(&v5_connect(&unknown))), MALFORMED);
}

#[test]
fn a_property_block_longer_than_the_packet_is_malformed() {
    let mut connect = v5_connect(&[]);
    connect[12] = 50; // the property length
    assert_eq!(error(server_first(&connect)), MALFORMED);
}

#[test]
fn a_property_value_cut_by_its_block_is_malformed() {
    // Receive maximum needs two bytes; the block holds one.
    assert_eq!(error(server_first(&v5_connect(&[0x21, 0x00]))), MALFORMED);
}

#[test]
fn non_shortest_variable_byte_integers_inside_v5_packets_are_malformed() {
    // [MQTT-1.5.5-1]: a subscription identifier of 1 written in two bytes...
    let sub_id = [0x0B, 0x81, 0x00];
    assert_eq!(
        error(from_server(V5, &v5_publish(b"t", &sub_id))),
        MALFORMED
    );
    // ...and a property length of 0 written in two bytes.
    #[rustfmt::skip]
    let puback = [
        0x40, 5,                                // PUBACK, remaining length 5
        0x00, 0x01,                             // packet identifier 1
        0x80,                                   // unspecified error
        0x80, 0x00,                             // property length 0, in two bytes
    ];
    assert_eq!(error(from_client(V5, &puback)), MALFORMED);
}

#[test]
fn a_variable_byte_integer_of_five_bytes_is_malformed() {
    let sub_id = [0x0B, 0x80, 0x80, 0x80, 0x80, 0x01];
    assert_eq!(
        error(from_server(V5, &v5_publish(b"t", &sub_id))),
        MALFORMED
    );
}

#[test]
fn will_property_rules() {
    #[rustfmt::skip]
    let cases: [(&[u8], ReasonCode); 4] = [
        (&[0x18, 0, 0, 0, 1, 0x18, 0, 0, 0, 2], PROTOCOL), // will delay interval twice
        (&[0x01, 0x02], PROTOCOL),                         // payload format indicator 2
        (&[0x08, 0x00, 0x03, b'a', b'/', b'#'], PROTOCOL), // response topic "a/#" [MQTT-3.3.2-14]
        (&[0x11, 0x00, 0x00, 0x00, 0x01], MALFORMED),      // session expiry: not a will property
    ];
    for (properties, reason) in cases {
        let connect = v5_connect_with_will(properties);
        assert_eq!(error(server_first(&connect)), reason, "{properties:02X?}");
    }
}

// PUBLISH.

#[test]
fn publish_qos_3_is_malformed() {
    // [MQTT-3.3.1-4], from the first byte.
    assert_eq!(
        first_byte(Some(V311), 0x36).unwrap_err().reason_code(),
        MALFORMED
    );
}

#[test]
fn publish_dup_at_qos_0_is_malformed() {
    // [MQTT-3.3.1-2], from the first byte.
    assert_eq!(
        first_byte(Some(V5), 0x38).unwrap_err().reason_code(),
        MALFORMED
    );
}

#[test]
fn publish_packet_identifier_0_is_a_protocol_error() {
    // [MQTT-2.2.1-3] (3.1.1 [MQTT-2.3.1-1])
    let bytes = [0x32, 5, 0x00, 0x01, b't', 0x00, 0x00];
    assert_eq!(error(from_client(V311, &bytes)), PROTOCOL);
}

#[test]
fn publish_topic_with_wildcards_is_topic_name_invalid() {
    // [MQTT-3.3.2-2]
    for topic in [&b"a/+"[..], b"#", b"a+b"] {
        let v311 = packet(0x30, &[&[0x00, topic.len() as u8], topic]);
        assert_eq!(error(from_client(V311, &v311)), TOPIC_NAME_INVALID);
        assert_eq!(
            error(from_client(V5, &v5_publish(topic, &[]))),
            TOPIC_NAME_INVALID
        );
    }
}

#[test]
fn empty_publish_topic_in_v3_is_topic_name_invalid() {
    // [MQTT-4.7.3-1]
    assert_eq!(
        error(from_client(V311, &[0x30, 2, 0x00, 0x00])),
        TOPIC_NAME_INVALID
    );
}

#[test]
fn empty_publish_topic_without_alias_in_v5_is_a_protocol_error() {
    // 3.3.2.1: "It is a Protocol Error if the Topic Name is zero length and there is no
    // Topic Alias."
    assert_eq!(error(from_client(V5, &v5_publish(b"", &[]))), PROTOCOL);
}

#[test]
fn topic_alias_0_is_topic_alias_invalid() {
    // [MQTT-3.3.2-8]
    assert_eq!(
        error(from_client(V5, &v5_publish(b"t", &[0x23, 0x00, 0x00]))),
        ReasonCode::TOPIC_ALIAS_INVALID
    );
}

#[test]
fn subscription_identifier_in_a_client_publish_is_a_protocol_error() {
    // [MQTT-3.3.4-6]
    assert_eq!(
        error(from_client(V5, &v5_publish(b"t", &[0x0B, 0x01]))),
        PROTOCOL
    );
}

#[test]
fn subscription_identifier_0_is_a_protocol_error() {
    // 3.3.2.3.8
    assert_eq!(
        error(from_server(V5, &v5_publish(b"t", &[0x0B, 0x00]))),
        PROTOCOL
    );
}

#[test]
fn publish_property_rules() {
    #[rustfmt::skip]
    let cases: [(&[u8], ReasonCode); 5] = [
        (&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 1], PROTOCOL), // message expiry interval twice
        (&[0x01, 0x02], PROTOCOL),                         // payload format indicator 2
        (&[0x08, 0x00, 0x01, b'+'], PROTOCOL),             // response topic "+" [MQTT-3.3.2-14]
        (&[0x11, 0x00, 0x00, 0x00, 0x01], MALFORMED),      // session expiry: not a PUBLISH property
        (&[0x09, 0x00, 0x05, 0x01], MALFORMED),            // correlation data cut short
    ];
    for (properties, reason) in cases {
        assert_eq!(
            error(from_client(V5, &v5_publish(b"t", properties))),
            reason,
            "{properties:02X?}"
        );
    }
}

#[test]
fn publish_topic_with_u0000_is_malformed() {
    let bytes = [0x30, 5, 0x00, 0x03, b'a', 0x00, b'b'];
    assert_eq!(error(from_client(V311, &bytes)), MALFORMED);
}

#[test]
fn publish_cut_inside_the_packet_identifier_is_malformed() {
    let bytes = [0x32, 4, 0x00, 0x01, b't', 0x00];
    assert_eq!(error(from_client(V311, &bytes)), MALFORMED);
}

// PUBACK, PUBREC, PUBREL, PUBCOMP.

#[test]
fn v3_acknowledgements_have_remaining_length_2() {
    assert_eq!(
        error(from_client(V311, &[0x40, 3, 0x00, 0x01, 0x00])),
        MALFORMED
    );
    assert_eq!(error(from_client(V311, &[0x50, 1, 0x00])), MALFORMED);
    assert_eq!(error(from_server(V31, &[0x62, 0])), MALFORMED);
}

#[test]
fn acknowledgement_reason_codes_not_in_their_list_are_protocol_errors() {
    // [MQTT-3.4.2-1], [MQTT-3.5.2-1], [MQTT-3.6.2-1], [MQTT-3.7.2-1]
    for bytes in [
        [0x40, 3, 0x00, 0x01, 0x05], // PUBACK 0x05: no such reason
        [0x50, 3, 0x00, 0x01, 0x92], // PUBREC 0x92: PUBREL/PUBCOMP only
        [0x62, 3, 0x00, 0x01, 0x10], // PUBREL 0x10: PUBACK/PUBREC only
        [0x70, 3, 0x00, 0x01, 0x80], // PUBCOMP 0x80: not allowed
    ] {
        assert_eq!(error(from_client(V5, &bytes)), PROTOCOL, "{bytes:02X?}");
    }
}

#[test]
fn acknowledgement_of_packet_identifier_0_is_a_protocol_error() {
    assert_eq!(error(from_client(V5, &[0x40, 2, 0x00, 0x00])), PROTOCOL);
    assert_eq!(error(from_client(V311, &[0x70, 2, 0x00, 0x00])), PROTOCOL);
}

#[test]
fn acknowledgement_property_rules() {
    #[rustfmt::skip]
    let cases: [(&[u8], ReasonCode); 3] = [
        // PUBACK, id 1, success, session expiry: not a PUBACK property
        (&[0x40, 9, 0x00, 0x01, 0x00, 5, 0x11, 0, 0, 0, 1], MALFORMED),
        // PUBACK, id 1, success, reason string twice
        (&[0x40, 10, 0x00, 0x01, 0x00, 6, 0x1F, 0, 0, 0x1F, 0, 0], PROTOCOL),
        // PUBACK, id 1, success, empty properties, then a stray byte
        (&[0x40, 5, 0x00, 0x01, 0x00, 0, 0xFF], MALFORMED),
    ];
    for (bytes, reason) in cases {
        assert_eq!(error(from_client(V5, bytes)), reason, "{bytes:02X?}");
    }
}

// SUBSCRIBE and UNSUBSCRIBE.

#[test]
fn subscribe_without_filters_is_a_protocol_error() {
    // v5 [MQTT-3.8.3-2], 3.1.1 [MQTT-3.8.3-3]
    assert_eq!(error(from_client(V311, &[0x82, 2, 0x00, 0x01])), PROTOCOL);
    assert_eq!(
        error(from_client(V5, &[0x82, 3, 0x00, 0x01, 0x00])),
        PROTOCOL
    );
}

#[test]
fn subscribe_packet_identifier_0_is_a_protocol_error() {
    let bytes = [0x82, 6, 0x00, 0x00, 0x00, 0x01, b'a', 0x00];
    assert_eq!(error(from_client(V311, &bytes)), PROTOCOL);
}

/// SUBSCRIBE, packet identifier 1, one filter with `options`.
fn subscribe(version: ProtocolVersion, filter: &[u8], options: u8) -> Result<Packet, DecodeError> {
    let id_and_properties: &[u8] = if version.is_v5() {
        &[0x00, 0x01, 0x00]
    } else {
        &[0x00, 0x01]
    };
    let filter = [&[0x00, filter.len() as u8][..], filter].concat();
    from_client(
        version,
        &packet(0x82, &[id_and_properties, &filter, &[options]]),
    )
}

#[test]
fn v3_subscribe_options_reserved_bits_or_qos_3_are_malformed() {
    // 3.1.1 [MQTT-3-8.3-4]
    assert_eq!(error(subscribe(V311, b"a", 0x04)), MALFORMED);
    assert_eq!(error(subscribe(V311, b"a", 0x80)), MALFORMED);
    assert_eq!(error(subscribe(V311, b"a", 0x03)), MALFORMED);
    assert_eq!(error(subscribe(V31, b"a", 0x03)), MALFORMED);
}

#[test]
fn v5_subscribe_options_reserved_bits_are_malformed() {
    // [MQTT-3.8.3-5]
    assert_eq!(error(subscribe(V5, b"a", 0x40)), MALFORMED);
    assert_eq!(error(subscribe(V5, b"a", 0x80)), MALFORMED);
}

#[test]
fn v5_subscribe_qos_3_is_a_protocol_error() {
    // 3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3."
    assert_eq!(error(subscribe(V5, b"a", 0x03)), PROTOCOL);
}

#[test]
fn v5_subscribe_retain_handling_3_is_a_protocol_error() {
    // 3.8.3.1
    assert_eq!(error(subscribe(V5, b"a", 0x30)), PROTOCOL);
}

#[test]
fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    // [MQTT-3.8.3-4]
    assert_eq!(error(subscribe(V5, b"$share/g/a", 0x04)), PROTOCOL);
    assert!(subscribe(V5, b"$share/g/a", 0x00).is_ok());
    assert!(subscribe(V5, b"$shared/a", 0x04).is_ok());
}

#[test]
fn empty_topic_filter_is_a_protocol_error() {
    // [MQTT-4.7.3-1]
    assert_eq!(error(subscribe(V311, b"", 0x00)), PROTOCOL);
    let unsubscribe = [0xA2, 4, 0x00, 0x01, 0x00, 0x00];
    assert_eq!(error(from_client(V311, &unsubscribe)), PROTOCOL);
}

#[test]
fn subscribe_filter_without_its_options_byte_is_malformed() {
    let bytes = [0x82, 5, 0x00, 0x01, 0x00, 0x01, b'a'];
    assert_eq!(error(from_client(V311, &bytes)), MALFORMED);
}

#[test]
fn subscribe_property_rules() {
    #[rustfmt::skip]
    let cases: [(&[u8], ReasonCode); 3] = [
        (&[0x0B, 0x00], PROTOCOL),              // subscription identifier 0 (3.8.2.1.2)
        (&[0x0B, 0x01, 0x0B, 0x02], PROTOCOL),  // two subscription identifiers (3.8.2.1.2)
        (&[0x23, 0x00, 0x01], MALFORMED),       // topic alias: not a SUBSCRIBE property
    ];
    for (properties, reason) in cases {
        let bytes = packet(
            0x82,
            &[&[0x00, 0x01], &props(properties), &[0x00, 0x01, b'a', 0x00]],
        );
        assert_eq!(error(from_client(V5, &bytes)), reason, "{properties:02X?}");
    }
}

#[test]
fn unsubscribe_without_filters_is_a_protocol_error() {
    // [MQTT-3.10.3-2]
    assert_eq!(error(from_client(V311, &[0xA2, 2, 0x00, 0x01])), PROTOCOL);
    assert_eq!(
        error(from_client(V5, &[0xA2, 3, 0x00, 0x01, 0x00])),
        PROTOCOL
    );
}

#[test]
fn unsubscribe_allows_only_user_properties() {
    // A reason string (0x1F) is not an UNSUBSCRIBE property.
    let bytes = packet(
        0xA2,
        &[
            &[0x00, 0x01],
            &props(&[0x1F, 0x00, 0x00]),
            &[0x00, 0x01, b'a'],
        ],
    );
    assert_eq!(error(from_client(V5, &bytes)), MALFORMED);
}

// SUBACK and UNSUBACK.

#[test]
fn suback_return_codes_outside_the_list_are_protocol_errors() {
    // 3.1.1 [MQTT-3.9.3-2]; v5 3.9.3 table 3-8.
    assert_eq!(
        error(from_server(V311, &[0x90, 3, 0x00, 0x01, 0x03])),
        PROTOCOL
    );
    assert_eq!(
        error(from_server(V311, &[0x90, 3, 0x00, 0x01, 0x8F])),
        PROTOCOL
    );
    assert_eq!(
        error(from_server(V5, &[0x90, 4, 0x00, 0x01, 0x00, 0x10])),
        PROTOCOL
    );
}

#[test]
fn suback_and_unsuback_without_reason_codes_are_protocol_errors() {
    assert_eq!(error(from_server(V311, &[0x90, 2, 0x00, 0x01])), PROTOCOL);
    assert_eq!(
        error(from_server(V5, &[0xB0, 3, 0x00, 0x01, 0x00])),
        PROTOCOL
    );
}

#[test]
fn v3_unsuback_has_no_payload() {
    assert_eq!(
        error(from_server(V311, &[0xB0, 3, 0x00, 0x01, 0x00])),
        MALFORMED
    );
}

#[test]
fn unsuback_reason_codes_outside_the_list_are_protocol_errors() {
    assert_eq!(
        error(from_server(V5, &[0xB0, 4, 0x00, 0x01, 0x00, 0x01])),
        PROTOCOL
    );
}

// CONNACK.

#[test]
fn connack_reserved_flags_are_malformed() {
    // v5 [MQTT-3.2.2-1]; 3.1.1 3.2.2.1.
    assert_eq!(error(from_server(V311, &[0x20, 2, 0x02, 0x00])), MALFORMED);
    assert_eq!(
        error(from_server(V5, &[0x20, 3, 0x80, 0x00, 0x00])),
        MALFORMED
    );
}

#[test]
fn connack_reserved_return_code_is_a_protocol_error() {
    assert_eq!(error(from_server(V311, &[0x20, 2, 0x00, 0x06])), PROTOCOL);
    assert_eq!(
        error(from_server(V5, &[0x20, 3, 0x00, 0x04, 0x00])),
        PROTOCOL
    );
}

#[test]
fn connack_session_present_on_a_refusal_is_a_protocol_error() {
    // v5 [MQTT-3.2.2-6], 3.1.1 [MQTT-3.2.2-4]
    assert_eq!(error(from_server(V311, &[0x20, 2, 0x01, 0x05])), PROTOCOL);
    assert_eq!(
        error(from_server(V5, &[0x20, 3, 0x01, 0x87, 0x00])),
        PROTOCOL
    );
}

#[test]
fn v3_connack_has_remaining_length_2() {
    assert_eq!(
        error(from_server(V311, &[0x20, 3, 0x00, 0x00, 0x00])),
        MALFORMED
    );
    assert_eq!(error(from_server(V311, &[0x20, 1, 0x00])), MALFORMED);
}

#[test]
fn v5_connack_needs_its_property_length() {
    assert_eq!(error(from_server(V5, &[0x20, 2, 0x00, 0x00])), MALFORMED);
}

#[test]
fn connack_property_rules() {
    #[rustfmt::skip]
    let cases: [(&[u8], ReasonCode); 6] = [
        (&[0x24, 0x02], PROTOCOL),              // maximum QoS 2 (3.2.2.3.4)
        (&[0x25, 0x02], PROTOCOL),              // retain available 2 (3.2.2.3.5)
        (&[0x2A, 0x07], PROTOCOL),              // shared subscription available 7
        (&[0x21, 0x00, 0x00], PROTOCOL),        // receive maximum 0 (3.2.2.3.3)
        (&[0x16, 0x00, 0x00], PROTOCOL),        // authentication data without method
        (&[0x23, 0x00, 0x01], MALFORMED),       // topic alias: not a CONNACK property
    ];
    for (properties, reason) in cases {
        let bytes = packet(0x20, &[&[0x00, 0x00], &props(properties)]);
        assert_eq!(error(from_server(V5, &bytes)), reason, "{properties:02X?}");
    }
}

// PINGREQ, PINGRESP, DISCONNECT, AUTH.

#[test]
fn ping_packets_have_no_body() {
    assert_eq!(error(from_client(V311, &[0xC0, 1, 0x00])), MALFORMED);
    assert_eq!(error(from_server(V5, &[0xD0, 1, 0x00])), MALFORMED);
}

#[test]
fn v3_disconnect_has_no_body() {
    assert_eq!(error(from_client(V311, &[0xE0, 1, 0x00])), MALFORMED);
}

#[test]
fn disconnect_rules() {
    #[rustfmt::skip]
    let cases: [(&[u8], ReasonCode); 4] = [
        (&[0xE0, 1, 0x05], PROTOCOL),                           // reason 0x05 is not a DISCONNECT reason
        (&[0xE0, 5, 0x00, 3, 0x23, 0x00, 0x01], MALFORMED),     // topic alias: not a DISCONNECT property
        (&[0xE0, 6, 0x00, 4, 0x1F, 0, 0, 0x1F], MALFORMED),     // second reason string cut short
        (&[0xE0, 8, 0x00, 6, 0x1F, 0, 0, 0x1F, 0, 0], PROTOCOL), // reason string twice
    ];
    for (bytes, reason) in cases {
        assert_eq!(error(from_client(V5, bytes)), reason, "{bytes:02X?}");
    }
}

#[test]
fn auth_rules() {
    #[rustfmt::skip]
    let cases: [(&[u8], ReasonCode); 4] = [
        (&[0xF0, 2, 0x01, 0x00], PROTOCOL),                 // reason 0x01 is not an AUTH reason
        (&[0xF0, 1, 0x18], MALFORMED),                      // reason without property length
        (&[0xF0, 5, 0x18, 3, 0x16, 0x00, 0x00], PROTOCOL),  // authentication data without method
        (&[0xF0, 7, 0x18, 5, 0x11, 0, 0, 0, 0], MALFORMED), // session expiry: not an AUTH property
    ];
    for (bytes, reason) in cases {
        assert_eq!(error(from_client(V5, bytes)), reason, "{bytes:02X?}");
    }
}

#[test]
fn packet_too_large_names_its_reason_code() {
    let mut decoder = Decoder::with_version(V5, 10);
    let mut buf = BytesMut::from(&[0x30, 20][..]);
    let error = decoder.decode(&mut buf).unwrap_err();
    assert_eq!(error, DecodeError::PacketTooLarge { size: 22, max: 10 });
    assert_eq!(error.reason_code(), ReasonCode::PACKET_TOO_LARGE);
}
