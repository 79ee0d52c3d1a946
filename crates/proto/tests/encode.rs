//! The encoder against bytes written by hand from the specifications, the shortest v5
//! forms, the v3 mappings, and the limits.

use bytes::{Bytes, BytesMut};
use midge_proto::*;

const V31: ProtocolVersion = ProtocolVersion::V31;
const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// Encodes `packet` and checks `encoded_len` agrees with what was written.
fn encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    packet.encode(version, &mut buf).unwrap();
    assert_eq!(packet.encoded_len(version), Ok(buf.len()));
    buf.to_vec()
}

fn publish(qos: QoS, packet_id: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: "t".into(),
        packet_id,
        properties: PublishProperties::default(),
        payload: Bytes::from_static(b"hi"),
    }
}

#[test]
fn v311_connect_with_will_and_credentials() {
    let connect = Connect {
        protocol: V311,
        clean_start: true,
        keep_alive: 10,
        client_id: "cid".into(),
        will: Some(Will {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"hi"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval: Some(5),
                ..Default::default()
            },
        }),
        username: Some("user".into()),
        password: Some(Bytes::from_static(&[1, 2, 3])),
        properties: ConnectProperties {
            session_expiry_interval: Some(9),
            ..Default::default()
        },
    };
    #[rustfmt::skip]
    let expected = [
        0x10, 35,                               // CONNECT, remaining length 35
        0x00, 0x04, b'M', b'Q', b'T', b'T',     // protocol name "MQTT"
        0x04,                                   // protocol level 4
        0xEE,                                   // user name, password, will retain, will QoS 1, will, clean session
        0x00, 0x0A,                             // keep alive 10 s
        0x00, 0x03, b'c', b'i', b'd',           // client id "cid"
        0x00, 0x03, b'a', b'/', b'b',           // will topic "a/b" (no will properties in v3)
        0x00, 0x02, b'h', b'i',                 // will message "hi"
        0x00, 0x04, b'u', b's', b'e', b'r',     // user name "user"
        0x00, 0x03, 0x01, 0x02, 0x03,           // password
    ];
    assert_eq!(encode(&Packet::Connect(Box::new(connect)), V311), expected);
}

#[test]
fn connect_names_the_protocol_of_the_version() {
    let connect = Packet::Connect(Box::new(Connect {
        protocol: V31,
        clean_start: true,
        keep_alive: 60,
        client_id: "c".into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }));
    #[rustfmt::skip]
    let v31 = [
        0x10, 15,                                           // CONNECT, remaining length 15
        0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p',     // protocol name "MQIsdp"
        0x03,                                               // protocol level 3
        0x02,                                               // clean session
        0x00, 0x3C,                                         // keep alive 60
        0x00, 0x01, b'c',                                   // client id "c"
    ];
    assert_eq!(encode(&connect, V31), v31);
    #[rustfmt::skip]
    let v5 = [
        0x10, 14,                                           // CONNECT, remaining length 14
        0x00, 0x04, b'M', b'Q', b'T', b'T',                 // protocol name "MQTT"
        0x05,                                               // protocol level 5
        0x02,                                               // clean start
        0x00, 0x3C,                                         // keep alive 60
        0x00,                                               // property length 0
        0x00, 0x01, b'c',                                   // client id "c"
    ];
    assert_eq!(encode(&connect, V5), v5);
}

#[test]
fn v311_publish_from_the_spec_example() {
    let mut packet = publish(QoS::AtLeastOnce, 10);
    packet.topic = "a/b".into();
    packet.payload = Bytes::from_static(b"hello");
    #[rustfmt::skip]
    let expected = [
        0x32, 12,                               // PUBLISH QoS 1, remaining length 12
        0x00, 0x03, b'a', b'/', b'b',           // topic name "a/b"
        0x00, 0x0A,                             // packet identifier 10
        b'h', b'e', b'l', b'l', b'o',           // payload
    ];
    assert_eq!(encode(&Packet::Publish(packet), V311), expected);
}

#[test]
fn outgoing_publish_sends_its_own_alias_expiry_and_subscription_identifiers() {
    // The stored message carries the publisher's values; each subscriber gets its own.
    let properties = PublishProperties {
        topic_alias: Some(9),
        message_expiry_interval: Some(100),
        subscription_identifiers: vec![5],
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    let outgoing = OutgoingPublish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "t",
        packet_id: 7,
        properties: &properties,
        topic_alias: Some(2),
        message_expiry_interval: Some(40),
        subscription_identifiers: &[1, 300],
        payload: b"hi",
    };
    #[rustfmt::skip]
    let expected = [
        0x32, 28,                               // PUBLISH QoS 1, remaining length 28
        0x00, 0x01, b't',                       // topic name "t"
        0x00, 0x07,                             // packet identifier 7
        20,                                     // property length 20
        0x02, 0x00, 0x00, 0x00, 0x28,           //   message expiry interval 40
        0x0B, 0x01,                             //   subscription identifier 1
        0x0B, 0xAC, 0x02,                       //   subscription identifier 300
        0x23, 0x00, 0x02,                       //   topic alias 2
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property k=v
        b'h', b'i',                             // payload
    ];
    let mut buf = BytesMut::new();
    outgoing.encode(V5, &mut buf).unwrap();
    assert_eq!(&buf[..], expected);
    assert_eq!(outgoing.encoded_len(V5), Ok(expected.len()));
}

#[test]
fn packet_publish_encodes_as_the_outgoing_publish_built_from_it() {
    let mut packet = publish(QoS::ExactlyOnce, 3);
    packet.dup = true;
    packet.retain = true;
    packet.properties = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        topic_alias: Some(4),
        response_topic: Some("r".into()),
        correlation_data: Some(Bytes::from_static(b"c")),
        user_properties: vec![("a".into(), "b".into())],
        subscription_identifiers: vec![1, 2],
        content_type: Some("text/plain".into()),
    };
    let mut direct = BytesMut::new();
    OutgoingPublish::from(&packet)
        .encode(V5, &mut direct)
        .unwrap();
    assert_eq!(encode(&Packet::Publish(packet.clone()), V5), &direct[..]);
    let decoded = Decoder::with_version(V5, u32::MAX)
        .decode(&mut direct)
        .unwrap();
    assert_eq!(decoded, Some(Packet::Publish(packet)));
}

#[test]
fn qos_0_publish_has_no_packet_identifier_and_no_dup() {
    // [MQTT-3.3.1-2], 3.3.2.2
    let mut packet = publish(QoS::AtMostOnce, 99);
    packet.dup = true;
    #[rustfmt::skip]
    let expected = [
        0x30, 5,                                // PUBLISH QoS 0, DUP cleared
        0x00, 0x01, b't',                       // topic name "t"
        b'h', b'i',                             // payload; no packet identifier
    ];
    assert_eq!(encode(&Packet::Publish(packet), V311), expected);
}

#[test]
fn v3_publish_drops_properties() {
    let mut packet = publish(QoS::AtMostOnce, 0);
    packet.properties.message_expiry_interval = Some(5);
    packet
        .properties
        .user_properties
        .push(("k".into(), "v".into()));
    assert_eq!(
        encode(&Packet::Publish(packet), V311),
        [0x30, 5, 0x00, 0x01, b't', b'h', b'i']
    );
}

#[test]
fn puback_family_uses_the_shortest_v5_form() {
    let ack = |reason_code, reason_string: Option<&str>| PubResponse {
        packet_id: 10,
        reason_code,
        properties: ResponseProperties {
            reason_string: reason_string.map(Into::into),
            user_properties: vec![],
        },
    };
    // Success, no properties: remaining length 2 (3.4.2.1).
    assert_eq!(
        encode(&Packet::PubAck(ack(ReasonCode::SUCCESS, None)), V5),
        [0x40, 2, 0x00, 0x0A]
    );
    // A reason without properties: no property length (3.4.2.2.1).
    assert_eq!(
        encode(
            &Packet::PubRec(ack(ReasonCode::NO_MATCHING_SUBSCRIBERS, None)),
            V5
        ),
        [0x50, 3, 0x00, 0x0A, 0x10]
    );
    // Properties need the reason code even when it is Success.
    #[rustfmt::skip]
    let expected = [
        0x70, 8,                                // PUBCOMP, remaining length 8
        0x00, 0x0A,                             // packet identifier 10
        0x00,                                   // success
        4,                                      // property length 4
        0x1F, 0x00, 0x01, b'x',                 //   reason string "x"
    ];
    assert_eq!(
        encode(&Packet::PubComp(ack(ReasonCode::SUCCESS, Some("x"))), V5),
        expected
    );
    // PUBREL keeps its 0010 flags; v3 carries the packet identifier only.
    assert_eq!(
        encode(
            &Packet::PubRel(ack(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND, Some("x"))),
            V311
        ),
        [0x62, 2, 0x00, 0x0A]
    );
}

#[test]
fn connack_v3_return_codes_and_v5_reason_codes() {
    let connack = |reason_code| {
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code,
            properties: Default::default(),
        })
    };
    assert_eq!(
        encode(&connack(ReasonCode::BANNED), V311),
        [0x20, 2, 0x00, 0x05]
    );
    assert_eq!(
        encode(&connack(ReasonCode::SERVER_BUSY), V31),
        [0x20, 2, 0x00, 0x03]
    );
    assert_eq!(
        encode(&connack(ReasonCode::BANNED), V5),
        [0x20, 3, 0x00, 0x8A, 0x00]
    );
    let accepted = Packet::ConnAck(ConnAck {
        session_present: true,
        reason_code: ReasonCode::SUCCESS,
        properties: ConnAckProperties {
            maximum_qos: Some(QoS::AtLeastOnce),
            ..Default::default()
        },
    });
    assert_eq!(encode(&accepted, V311), [0x20, 2, 0x01, 0x00]);
    #[rustfmt::skip]
    let expected = [
        0x20, 5,                                // CONNACK, remaining length 5
        0x01,                                   // session present
        0x00,                                   // success
        2,                                      // property length 2
        0x24, 0x01,                             //   maximum QoS 1
    ];
    assert_eq!(encode(&accepted, V5), expected);
}

#[test]
fn v31_connack_leaves_the_reserved_session_present_bit_clear() {
    let resumed = Packet::ConnAck(ConnAck {
        session_present: true,
        reason_code: ReasonCode::SUCCESS,
        properties: Default::default(),
    });
    // 3.1 reserves the first byte of the variable header; 3.1.1 made bit 0 session present.
    assert_eq!(encode(&resumed, V31), [0x20, 2, 0x00, 0x00]);
    assert_eq!(encode(&resumed, V311), [0x20, 2, 0x01, 0x00]);
}

#[test]
fn subscribe_options_byte() {
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 10,
        filters: vec![(
            "a/+".into(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DontSend,
            },
        )],
        properties: SubscribeProperties {
            subscription_identifier: Some(7),
            user_properties: vec![],
        },
    });
    #[rustfmt::skip]
    let v5 = [
        0x82, 11,                               // SUBSCRIBE, remaining length 11
        0x00, 0x0A,                             // packet identifier 10
        2,                                      // property length 2
        0x0B, 0x07,                             //   subscription identifier 7
        0x00, 0x03, b'a', b'/', b'+',           // topic filter "a/+"
        0x2D,                                   //   QoS 1, no local, retain as published, retain handling 2
    ];
    assert_eq!(encode(&subscribe, V5), v5);
    #[rustfmt::skip]
    let v311 = [
        0x82, 8,                                // SUBSCRIBE, remaining length 8
        0x00, 0x0A,                             // packet identifier 10
        0x00, 0x03, b'a', b'/', b'+',           // topic filter "a/+"
        0x01,                                   //   requested QoS 1 only
    ];
    assert_eq!(encode(&subscribe, V311), v311);
}

#[test]
fn suback_maps_failures_to_0x80_in_v3() {
    let suback = Packet::SubAck(SubAck {
        packet_id: 1,
        reason_codes: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::NOT_AUTHORIZED],
        properties: ResponseProperties::default(),
    });
    assert_eq!(encode(&suback, V311), [0x90, 4, 0x00, 0x01, 0x01, 0x80]);
    assert_eq!(encode(&suback, V5), [0x90, 5, 0x00, 0x01, 0x00, 0x01, 0x87]);
}

#[test]
fn unsubscribe_and_unsuback() {
    let unsubscribe = Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        filters: vec!["a".into()],
        user_properties: vec![],
    });
    assert_eq!(
        encode(&unsubscribe, V311),
        [0xA2, 5, 0x00, 0x02, 0x00, 0x01, b'a']
    );
    assert_eq!(
        encode(&unsubscribe, V5),
        [0xA2, 6, 0x00, 0x02, 0x00, 0x00, 0x01, b'a']
    );
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: 2,
        reason_codes: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
        properties: ResponseProperties::default(),
    });
    // 3.1.1 UNSUBACK is the packet identifier alone.
    assert_eq!(encode(&unsuback, V311), [0xB0, 2, 0x00, 0x02]);
    assert_eq!(encode(&unsuback, V5), [0xB0, 4, 0x00, 0x02, 0x00, 0x11]);
}

#[test]
fn ping_packets() {
    assert_eq!(encode(&Packet::PingReq, V311), [0xC0, 0x00]);
    assert_eq!(encode(&Packet::PingResp, V5), [0xD0, 0x00]);
}

#[test]
fn disconnect_uses_the_shortest_v5_form() {
    let disconnect = |reason_code, properties| {
        Packet::Disconnect(Disconnect {
            reason_code,
            properties,
        })
    };
    let normal = disconnect(
        ReasonCode::NORMAL_DISCONNECTION,
        DisconnectProperties::default(),
    );
    let taken_over = disconnect(
        ReasonCode::SESSION_TAKEN_OVER,
        DisconnectProperties::default(),
    );
    let with_expiry = disconnect(
        ReasonCode::NORMAL_DISCONNECTION,
        DisconnectProperties {
            session_expiry_interval: Some(0),
            ..Default::default()
        },
    );
    assert_eq!(encode(&normal, V5), [0xE0, 0]);
    assert_eq!(encode(&taken_over, V5), [0xE0, 1, 0x8E]);
    assert_eq!(
        encode(&with_expiry, V5),
        [0xE0, 7, 0x00, 5, 0x11, 0, 0, 0, 0]
    );
    // v3 DISCONNECT has no variable header.
    assert_eq!(encode(&taken_over, V311), [0xE0, 0]);
}

#[test]
fn auth_uses_the_shortest_form_and_does_not_exist_in_v3() {
    assert_eq!(encode(&Packet::Auth(Auth::default()), V5), [0xF0, 0]);
    let continue_auth = Packet::Auth(Auth {
        reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: AuthProperties::default(),
    });
    // Unlike DISCONNECT, a reason code is always followed by the property length.
    assert_eq!(encode(&continue_auth, V5), [0xF0, 2, 0x18, 0x00]);

    let mut buf = BytesMut::from(&b"before"[..]);
    assert_eq!(
        continue_auth.encode(V311, &mut buf),
        Err(EncodeError::NotInVersion("AUTH"))
    );
    assert_eq!(
        continue_auth.encoded_len(V31),
        Err(EncodeError::NotInVersion("AUTH"))
    );
    assert_eq!(&buf[..], b"before");
}

#[test]
fn encode_appends_to_the_buffer() {
    let mut buf = BytesMut::from(&[0xAA][..]);
    Packet::PingReq.encode(V5, &mut buf).unwrap();
    Packet::PingResp.encode(V5, &mut buf).unwrap();
    assert_eq!(&buf[..], [0xAA, 0xC0, 0x00, 0xD0, 0x00]);
}

#[test]
fn remaining_length_boundaries() {
    // 1.5.5: 127 fits one byte, 128 needs two, 16,383 two, 16,384 three.
    for (remaining, header) in [
        (127, &[0x30, 0x7F][..]),
        (128, &[0x30, 0x80, 0x01]),
        (16_383, &[0x30, 0xFF, 0x7F]),
        (16_384, &[0x30, 0x80, 0x80, 0x01]),
    ] {
        let mut packet = publish(QoS::AtMostOnce, 0);
        packet.payload = Bytes::from(vec![0; remaining - 3]); // topic "t" takes 3 bytes
        let bytes = encode(&Packet::Publish(packet), V311);
        assert_eq!(&bytes[..header.len()], header);
        assert_eq!(bytes.len(), header.len() + remaining);
    }
}

#[test]
fn a_string_over_65535_bytes_is_field_too_long_and_leaves_the_buffer() {
    let long = "x".repeat(65_536);
    let mut packet = publish(QoS::AtMostOnce, 0);
    packet.topic = long.clone();
    let packet = Packet::Publish(packet);
    let mut buf = BytesMut::from(&b"kept"[..]);
    assert_eq!(
        packet.encode(V311, &mut buf),
        Err(EncodeError::FieldTooLong("topic name"))
    );
    assert_eq!(&buf[..], b"kept");
    assert_eq!(
        packet.encoded_len(V311),
        Err(EncodeError::FieldTooLong("topic name"))
    );

    // The limit is 65,535 bytes, inclusive.
    let mut ok = publish(QoS::AtMostOnce, 0);
    ok.topic = long[1..].to_owned();
    assert!(Packet::Publish(ok).encode(V311, &mut buf).is_ok());

    // A field inside the properties, which v3 drops, only counts in v5.
    let disconnect = Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::NORMAL_DISCONNECTION,
        properties: DisconnectProperties {
            reason_string: Some(long),
            ..Default::default()
        },
    });
    assert_eq!(
        disconnect.encoded_len(V5),
        Err(EncodeError::FieldTooLong("reason string"))
    );
    assert_eq!(disconnect.encoded_len(V311), Ok(2));
}

#[test]
fn a_body_over_the_remaining_length_limit_is_packet_too_large() {
    // Zeroed allocations are lazy, and the encoder fails before touching the payload.
    let payload = vec![0u8; MAX_REMAINING_LENGTH - 2];
    let properties = PublishProperties::default();
    let outgoing = OutgoingPublish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t",
        packet_id: 0,
        properties: &properties,
        topic_alias: None,
        message_expiry_interval: None,
        subscription_identifiers: &[],
        payload: &payload,
    };
    let size = MAX_REMAINING_LENGTH + 1;
    let mut buf = BytesMut::new();
    assert_eq!(
        outgoing.encode(V311, &mut buf),
        Err(EncodeError::PacketTooLarge(size))
    );
    assert!(buf.is_empty());
    // One byte less is the largest packet there is.
    let largest = OutgoingPublish {
        payload: &payload[1..],
        ..outgoing
    };
    assert_eq!(largest.encoded_len(V311), Ok(MAX_PACKET_SIZE as usize));
}

#[test]
fn a_subscription_identifier_over_268435455_is_field_too_long() {
    let properties = PublishProperties::default();
    let outgoing = OutgoingPublish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t",
        packet_id: 0,
        properties: &properties,
        topic_alias: None,
        message_expiry_interval: None,
        subscription_identifiers: &[MAX_SUBSCRIPTION_IDENTIFIER + 1],
        payload: b"",
    };
    let error = EncodeError::FieldTooLong("subscription identifier");
    assert_eq!(outgoing.encoded_len(V5), Err(error));
    let at_max = [MAX_SUBSCRIPTION_IDENTIFIER];
    let outgoing = OutgoingPublish {
        subscription_identifiers: &at_max,
        ..outgoing
    };
    assert_eq!(outgoing.encoded_len(V5), Ok(2 + 3 + 1 + 5));
}

#[test]
fn encode_within_leaves_out_the_reason_string_then_the_user_properties() {
    let disconnect = Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::PACKET_TOO_LARGE,
        properties: DisconnectProperties {
            reason_string: Some("too big".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        },
    });
    let full = encode(&disconnect, V5);
    assert_eq!(full.len(), 21);
    let within = |max: usize| {
        let mut buf = BytesMut::new();
        disconnect
            .encode_within(V5, max, &mut buf)
            .map(|()| buf.to_vec())
    };
    assert_eq!(within(21), Ok(full));
    #[rustfmt::skip]
    let without_reason_string = [
        0xE0, 9,                                // DISCONNECT, remaining length 9
        0x95,                                   // packet too large
        7,                                      // property length 7
        0x26, 0, 1, b'k', 0, 1, b'v',           //   user property k=v
    ];
    assert_eq!(within(20).as_deref(), Ok(&without_reason_string[..]));
    assert_eq!(within(11).as_deref(), Ok(&without_reason_string[..]));
    assert_eq!(within(10).as_deref(), Ok(&[0xE0, 1, 0x95][..]));
    assert_eq!(within(3).as_deref(), Ok(&[0xE0, 1, 0x95][..]));

    // Below the smallest form nothing is written: the packet must be discarded.
    let mut buf = BytesMut::from(&b"before"[..]);
    assert_eq!(
        disconnect.encode_within(V5, 2, &mut buf),
        Err(EncodeError::ExceedsMaximumPacketSize { size: 3, max: 2 })
    );
    assert_eq!(&buf[..], b"before");
}

/// Every packet a server sends that may carry a reason string, with one (and a user
/// property) or without either.
fn server_packets(optional: bool) -> Vec<Packet> {
    let reason_string = optional.then(|| "a reason".to_owned());
    let user_properties = if optional {
        vec![("k".to_owned(), "v".to_owned())]
    } else {
        Vec::new()
    };
    let response = ResponseProperties {
        reason_string: reason_string.clone(),
        user_properties: user_properties.clone(),
    };
    let ack = PubResponse {
        packet_id: 1,
        reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
        properties: response.clone(),
    };
    vec![
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::NOT_AUTHORIZED,
            properties: ConnAckProperties {
                // Not optional: it stays.
                receive_maximum: Some(10),
                reason_string: reason_string.clone(),
                user_properties: user_properties.clone(),
                ..Default::default()
            },
        }),
        Packet::PubAck(ack.clone()),
        Packet::PubRec(ack.clone()),
        Packet::PubRel(ack.clone()),
        Packet::PubComp(ack),
        Packet::SubAck(SubAck {
            packet_id: 1,
            reason_codes: vec![ReasonCode::GRANTED_QOS_1],
            properties: response.clone(),
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 1,
            reason_codes: vec![ReasonCode::SUCCESS],
            properties: response,
        }),
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::SERVER_BUSY,
            properties: DisconnectProperties {
                reason_string: reason_string.clone(),
                user_properties: user_properties.clone(),
                ..Default::default()
            },
        }),
        Packet::Auth(Auth {
            reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: AuthProperties {
                authentication_method: Some("m".into()),
                reason_string,
                user_properties,
                ..Default::default()
            },
        }),
    ]
}

#[test]
fn encode_within_trims_every_server_packet_that_may_go_without() {
    for (full, bare) in server_packets(true).into_iter().zip(server_packets(false)) {
        let bare_bytes = encode(&bare, V5);
        let mut buf = BytesMut::new();
        full.encode_within(V5, bare_bytes.len(), &mut buf).unwrap();
        assert_eq!(buf.to_vec(), bare_bytes, "{}", full.name());
        // With room, nothing is left out.
        buf.clear();
        full.encode_within(V5, usize::MAX, &mut buf).unwrap();
        assert_eq!(buf.to_vec(), encode(&full, V5), "{}", full.name());
    }
}

#[test]
fn encode_within_never_trims_a_publish() {
    let mut message = publish(QoS::AtLeastOnce, 1);
    message.properties.user_properties = vec![("k".into(), "v".into())];
    let packet = Packet::Publish(message);
    let size = packet.encoded_len(V5).unwrap();
    let mut buf = BytesMut::new();
    assert_eq!(
        packet.encode_within(V5, size - 1, &mut buf),
        Err(EncodeError::ExceedsMaximumPacketSize {
            size,
            max: size - 1
        })
    );
    assert!(buf.is_empty());
}
