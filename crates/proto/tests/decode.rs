//! The decoder on bytes written by hand from the specifications (MQTT 3.1, 3.1.1, 5.0),
//! never produced by our encoder. Each byte or field has a comment saying what it is.

mod common;

use bytes::{Bytes, BytesMut};
use common::{MAX, decode_one, from_client, from_server, minimal_connect, server_first};
use midge_proto::*;

fn user(name: &str, value: &str) -> UserProperty {
    (name.to_owned(), value.to_owned())
}

#[test]
fn v311_connect_with_will_and_credentials() {
    // The flags and keep alive are the 3.1.1 spec's example (figure 3.6).
    #[rustfmt::skip]
    let bytes = [
        0x10, 35,                               // CONNECT, remaining length 35
        0x00, 0x04, b'M', b'Q', b'T', b'T',     // protocol name "MQTT"
        0x04,                                   // protocol level 4: 3.1.1
        0xCE,                                   // user name, password, will QoS 1, will, clean session
        0x00, 0x0A,                             // keep alive 10 s
        0x00, 0x03, b'c', b'i', b'd',           // client id "cid"
        0x00, 0x03, b'a', b'/', b'b',           // will topic "a/b"
        0x00, 0x02, b'h', b'i',                 // will message "hi"
        0x00, 0x04, b'u', b's', b'e', b'r',     // user name "user"
        0x00, 0x03, 0x01, 0x02, 0x03,           // password: 3 bytes of binary data
    ];
    let mut decoder = Decoder::new(MAX);
    let packet = decode_one(&mut decoder, &bytes).unwrap();
    assert_eq!(decoder.version(), Some(ProtocolVersion::V311));
    let Packet::Connect(connect) = packet else {
        panic!("{packet:?}")
    };
    assert_eq!(
        *connect,
        Connect {
            protocol: ProtocolVersion::V311,
            clean_start: true,
            keep_alive: 10,
            client_id: "cid".into(),
            will: Some(Will {
                topic: "a/b".into(),
                payload: Bytes::from_static(b"hi"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: WillProperties::default(),
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(&[1, 2, 3])),
            properties: ConnectProperties::default(),
        }
    );
}

#[test]
fn v31_mqisdp_connect() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 29,                                           // CONNECT, remaining length 29
        0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p',     // protocol name "MQIsdp"
        0x03,                                               // protocol level 3: MQTT 3.1
        0xC0,                                               // user name, password; no clean session
        0x00, 0x1E,                                         // keep alive 30 s
        0x00, 0x09, b'v', b'3', b'1', b'c', b'l', b'i', b'e', b'n', b't', // client id "v31client"
        0x00, 0x01, b'u',                                   // user name "u"
        0x00, 0x01, b'p',                                   // password "p"
    ];
    let mut decoder = Decoder::new(MAX);
    let Packet::Connect(connect) = decode_one(&mut decoder, &bytes).unwrap() else {
        panic!()
    };
    assert_eq!(decoder.version(), Some(ProtocolVersion::V31));
    assert_eq!(connect.protocol, ProtocolVersion::V31);
    assert!(!connect.clean_start);
    assert_eq!(connect.keep_alive, 30);
    assert_eq!(connect.client_id, "v31client");
    assert_eq!(connect.username.as_deref(), Some("u"));
    assert_eq!(connect.password.as_deref(), Some(&b"p"[..]));
    assert_eq!(connect.will, None);
}

#[test]
fn v31_connect_tolerates_credential_flags_without_the_fields() {
    // Some 3.1 clients set the flags and send nothing; Mosquitto accepts it for 3.1.
    #[rustfmt::skip]
    let bytes = [
        0x10, 15,                                           // CONNECT, remaining length 15
        0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p',     // protocol name "MQIsdp"
        0x03,                                               // protocol level 3
        0xC2,                                               // user name, password, clean session
        0x00, 0x3C,                                         // keep alive 60 s
        0x00, 0x01, b'c',                                   // client id "c"; nothing follows
    ];
    let Packet::Connect(connect) = server_first(&bytes).unwrap() else {
        panic!()
    };
    assert_eq!((connect.username, connect.password), (None, None));
}

#[test]
fn v5_connect_with_properties_and_will_properties() {
    // The variable header starts as the v5 spec's example (figure 3-6): flags 0xCE, keep
    // alive 10, Session Expiry Interval 10; more properties follow.
    #[rustfmt::skip]
    let bytes = [
        0x10, 114,                              // CONNECT, remaining length 114
        0x00, 0x04, b'M', b'Q', b'T', b'T',     // protocol name "MQTT"
        0x05,                                   // protocol level 5
        0xCE,                                   // user name, password, will QoS 1, will, clean start
        0x00, 0x0A,                             // keep alive 10 s
        40,                                     // property length 40
        0x11, 0x00, 0x00, 0x00, 0x0A,           //   session expiry interval 10
        0x21, 0x00, 0x14,                       //   receive maximum 20
        0x22, 0x00, 0x0A,                       //   topic alias maximum 10
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property k=v
        0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M', // authentication method "SCRAM"
        0x16, 0x00, 0x02, 0x01, 0x02,           //   authentication data 01 02
        0x27, 0x00, 0x00, 0x10, 0x00,           //   maximum packet size 4096
        0x17, 0x00,                             //   request problem information 0
        0x19, 0x01,                             //   request response information 1
        0x00, 0x02, b'c', b'5',                 // client id "c5"
        37,                                     // will property length 37
        0x18, 0x00, 0x00, 0x00, 0x05,           //   will delay interval 5
        0x01, 0x01,                             //   payload format indicator: UTF-8
        0x02, 0x00, 0x00, 0x00, 0x3C,           //   message expiry interval 60
        0x03, 0x00, 0x04, b't', b'e', b'x', b't', // content type "text"
        0x08, 0x00, 0x03, b'r', b'/', b't',     //   response topic "r/t"
        0x09, 0x00, 0x02, 0xAB, 0xCD,           //   correlation data AB CD
        0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b', // user property a=b
        0x00, 0x04, b'w', b'i', b'l', b'l',     // will topic "will"
        0x00, 0x03, b'b', b'y', b'e',           // will payload "bye"
        0x00, 0x04, b'u', b's', b'e', b'r',     // user name "user"
        0x00, 0x02, 0x00, 0xFF,                 // password: binary 00 FF
    ];
    let mut decoder = Decoder::new(MAX);
    let Packet::Connect(connect) = decode_one(&mut decoder, &bytes).unwrap() else {
        panic!()
    };
    assert_eq!(decoder.version(), Some(ProtocolVersion::V5));
    assert_eq!(
        *connect,
        Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 10,
            client_id: "c5".into(),
            will: Some(Will {
                topic: "will".into(),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: WillProperties {
                    will_delay_interval: Some(5),
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(60),
                    content_type: Some("text".into()),
                    response_topic: Some("r/t".into()),
                    correlation_data: Some(Bytes::from_static(&[0xAB, 0xCD])),
                    user_properties: vec![user("a", "b")],
                },
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(&[0x00, 0xFF])),
            properties: ConnectProperties {
                session_expiry_interval: Some(10),
                receive_maximum: Some(20),
                maximum_packet_size: Some(4096),
                topic_alias_maximum: Some(10),
                request_response_information: Some(true),
                request_problem_information: Some(false),
                user_properties: vec![user("k", "v")],
                authentication_method: Some("SCRAM".into()),
                authentication_data: Some(Bytes::from_static(&[1, 2])),
            },
        }
    );
}

#[test]
fn v5_connect_may_carry_a_password_without_a_user_name() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 17,                               // CONNECT, remaining length 17
        0x00, 0x04, b'M', b'Q', b'T', b'T',     // protocol name "MQTT"
        0x05,                                   // protocol level 5
        0x40,                                   // password only (3.1.2.9)
        0x00, 0x00,                             // keep alive 0: off
        0x00,                                   // property length 0
        0x00, 0x00,                             // client id "" (the server assigns one)
        0x00, 0x02, b'p', b'w',                 // password "pw"
    ];
    let Packet::Connect(connect) = server_first(&bytes).unwrap() else {
        panic!()
    };
    assert_eq!(connect.client_id, "");
    assert_eq!(connect.username, None);
    assert_eq!(connect.password.as_deref(), Some(&b"pw"[..]));
}

#[test]
fn v311_publish_from_the_spec_example() {
    // 3.1.1 figure 3.11: topic "a/b", packet identifier 10.
    #[rustfmt::skip]
    let bytes = [
        0x32, 12,                               // PUBLISH QoS 1, remaining length 12
        0x00, 0x03, b'a', b'/', b'b',           // topic name "a/b"
        0x00, 0x0A,                             // packet identifier 10
        b'h', b'e', b'l', b'l', b'o',           // payload "hello"
    ];
    let packet = from_client(ProtocolVersion::V311, &bytes).unwrap();
    assert_eq!(
        packet,
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "a/b".into(),
            packet_id: 10,
            properties: PublishProperties::default(),
            payload: Bytes::from_static(b"hello"),
        })
    );
}

#[test]
fn v5_publish_from_the_spec_example() {
    // v5 figure 3-9: topic "a/b", packet identifier 10, no properties.
    #[rustfmt::skip]
    let bytes = [
        0x32, 8,                                // PUBLISH QoS 1, remaining length 8
        0x00, 0x03, b'a', b'/', b'b',           // topic name "a/b"
        0x00, 0x0A,                             // packet identifier 10
        0x00,                                   // property length 0
                                                // empty payload (3.3.3 allows it)
    ];
    let Packet::Publish(publish) = from_client(ProtocolVersion::V5, &bytes).unwrap() else {
        panic!()
    };
    assert_eq!((publish.topic.as_str(), publish.packet_id), ("a/b", 10));
    assert!(publish.payload.is_empty());
}

#[test]
fn v5_publish_with_properties() {
    #[rustfmt::skip]
    let bytes = [
        0x3D, 60,                               // PUBLISH DUP, QoS 2, RETAIN; remaining length 60
        0x00, 0x01, b't',                       // topic name "t"
        0x12, 0x34,                             // packet identifier 0x1234
        52,                                     // property length 52
        0x01, 0x01,                             //   payload format indicator: UTF-8
        0x02, 0x00, 0x00, 0x0E, 0x10,           //   message expiry interval 3600
        0x23, 0x00, 0x05,                       //   topic alias 5
        0x08, 0x00, 0x05, b'r', b'e', b'p', b'l', b'y', // response topic "reply"
        0x09, 0x00, 0x03, 0x01, 0x02, 0x03,     //   correlation data 01 02 03
        0x26, 0x00, 0x02, b'k', b'1', 0x00, 0x02, b'v', b'1', // user property k1=v1
        0x03, 0x00, 0x10,                       //   content type, 16 bytes:
        b'a', b'p', b'p', b'l', b'i', b'c', b'a', b't', b'i', b'o', b'n', b'/', b'j', b's', b'o', b'n',
        b'{', b'}',                             // payload "{}"
    ];
    let packet = from_client(ProtocolVersion::V5, &bytes).unwrap();
    assert_eq!(
        packet,
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "t".into(),
            packet_id: 0x1234,
            properties: PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(3600),
                topic_alias: Some(5),
                response_topic: Some("reply".into()),
                correlation_data: Some(Bytes::from_static(&[1, 2, 3])),
                user_properties: vec![user("k1", "v1")],
                subscription_identifiers: vec![],
                content_type: Some("application/json".into()),
            },
            payload: Bytes::from_static(b"{}"),
        })
    );
}

#[test]
fn v5_publish_with_empty_topic_uses_its_topic_alias() {
    #[rustfmt::skip]
    let bytes = [
        0x30, 8,                                // PUBLISH QoS 0, remaining length 8
        0x00, 0x00,                             // topic name "" (3.3.2.3.4)
        3,                                      // property length 3
        0x23, 0x00, 0x07,                       //   topic alias 7
        b'x', b'y',                             // payload "xy"
    ];
    let Packet::Publish(publish) = from_client(ProtocolVersion::V5, &bytes).unwrap() else {
        panic!()
    };
    assert_eq!(
        (publish.topic.as_str(), publish.properties.topic_alias),
        ("", Some(7))
    );
    assert_eq!(publish.packet_id, 0);
}

#[test]
fn v5_publish_from_a_server_may_repeat_subscription_identifiers() {
    // [MQTT-3.3.4-4] one per matching subscription.
    #[rustfmt::skip]
    let bytes = [
        0x30, 9,                                // PUBLISH QoS 0, remaining length 9
        0x00, 0x01, b's',                       // topic name "s"
        5,                                      // property length 5
        0x0B, 0x01,                             //   subscription identifier 1
        0x0B, 0x80, 0x01,                       //   subscription identifier 128 (two bytes)
                                                // empty payload
    ];
    let Packet::Publish(publish) = from_server(ProtocolVersion::V5, &bytes).unwrap() else {
        panic!()
    };
    assert_eq!(publish.properties.subscription_identifiers, vec![1, 128]);
}

#[test]
fn utf8_strings_follow_the_spec_example_and_keep_a_bom() {
    // 1.5.4 example: "A" followed by U+2A6D4 is 00 05 41 F0 AA 9B 94.
    #[rustfmt::skip]
    let bytes = [
        0x30, 7,                                // PUBLISH QoS 0, remaining length 7
        0x00, 0x05, 0x41, 0xF0, 0xAA, 0x9B, 0x94, // topic name "A\u{2A6D4}"
    ];
    let Packet::Publish(publish) = from_client(ProtocolVersion::V311, &bytes).unwrap() else {
        panic!()
    };
    assert_eq!(publish.topic, "A\u{2A6D4}");

    // [MQTT-1.5.4-3] 0xEF 0xBB 0xBF is U+FEFF and is not skipped.
    #[rustfmt::skip]
    let bytes = [
        0x30, 6,                                // PUBLISH QoS 0, remaining length 6
        0x00, 0x04, 0xEF, 0xBB, 0xBF, b'a',     // topic name "\u{FEFF}a"
    ];
    let Packet::Publish(publish) = from_client(ProtocolVersion::V311, &bytes).unwrap() else {
        panic!()
    };
    assert_eq!(publish.topic, "\u{FEFF}a");
}

#[test]
fn v311_subscribe_from_the_spec_example() {
    // 3.1.1 figures 3.21 and 3.22: packet identifier 10, "a/b" QoS 1, "c/d" QoS 2.
    #[rustfmt::skip]
    let bytes = [
        0x82, 14,                               // SUBSCRIBE (flags 0010), remaining length 14
        0x00, 0x0A,                             // packet identifier 10
        0x00, 0x03, b'a', b'/', b'b',           // topic filter "a/b"
        0x01,                                   //   requested QoS 1
        0x00, 0x03, b'c', b'/', b'd',           // topic filter "c/d"
        0x02,                                   //   requested QoS 2
    ];
    let qos = |qos| SubscriptionOptions {
        qos,
        ..Default::default()
    };
    assert_eq!(
        from_client(ProtocolVersion::V311, &bytes).unwrap(),
        Packet::Subscribe(Subscribe {
            packet_id: 10,
            filters: vec![
                ("a/b".into(), qos(QoS::AtLeastOnce)),
                ("c/d".into(), qos(QoS::ExactlyOnce)),
            ],
            properties: SubscribeProperties::default(),
        })
    );
}

#[test]
fn v5_subscribe_with_options_and_properties() {
    #[rustfmt::skip]
    let bytes = [
        0x82, 33,                               // SUBSCRIBE, remaining length 33
        0x00, 0x0A,                             // packet identifier 10
        9,                                      // property length 9
        0x0B, 0x07,                             //   subscription identifier 7
        0x26, 0x00, 0x01, b'x', 0x00, 0x01, b'y', // user property x=y
        0x00, 0x03, b'a', b'/', b'+',           // topic filter "a/+"
        0x2D,                                   //   QoS 1, no local, retain as published, retain handling 2
        0x00, 0x0C, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/', b'c', b'/', b'#', // "$share/g/c/#"
        0x12,                                   //   QoS 2, retain handling 1
    ];
    assert_eq!(
        from_client(ProtocolVersion::V5, &bytes).unwrap(),
        Packet::Subscribe(Subscribe {
            packet_id: 10,
            filters: vec![
                (
                    "a/+".into(),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::DontSend,
                    }
                ),
                (
                    "$share/g/c/#".into(),
                    SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: RetainHandling::SendIfNew,
                    }
                ),
            ],
            properties: SubscribeProperties {
                subscription_identifier: Some(7),
                user_properties: vec![user("x", "y")],
            },
        })
    );
}

#[test]
fn subscribe_filters_are_not_syntax_checked() {
    // The broker answers a bad filter in its own SUBACK entry (0x8F / 0x80).
    #[rustfmt::skip]
    let bytes = [
        0x82, 10,                               // SUBSCRIBE, remaining length 10
        0x00, 0x01,                             // packet identifier 1
        0x00, 0x05, b'a', b'/', b'#', b'/', b'b', // topic filter "a/#/b": invalid, still decoded
        0x00,                                   //   QoS 0
    ];
    let Packet::Subscribe(subscribe) = from_client(ProtocolVersion::V311, &bytes).unwrap() else {
        panic!()
    };
    assert_eq!(subscribe.filters[0].0, "a/#/b");
}

#[test]
fn v311_suback_from_the_spec_example() {
    // 3.1.1 figure 3.26: success QoS 0, 1, 2 and a failure.
    #[rustfmt::skip]
    let bytes = [
        0x90, 6,                                // SUBACK, remaining length 6
        0x00, 0x0A,                             // packet identifier 10
        0x00, 0x01, 0x02, 0x80,                 // return codes: QoS 0, 1, 2, failure
    ];
    assert_eq!(
        from_server(ProtocolVersion::V311, &bytes).unwrap(),
        Packet::SubAck(SubAck {
            packet_id: 10,
            reason_codes: vec![
                ReasonCode::GRANTED_QOS_0,
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::GRANTED_QOS_2,
                ReasonCode::UNSPECIFIED_ERROR,
            ],
            properties: ResponseProperties::default(),
        })
    );
}

#[test]
fn v5_suback_with_reason_string() {
    #[rustfmt::skip]
    let bytes = [
        0x90, 10,                               // SUBACK, remaining length 10
        0x00, 0x0A,                             // packet identifier 10
        5,                                      // property length 5
        0x1F, 0x00, 0x02, b'n', b'o',           //   reason string "no"
        0x01,                                   // granted QoS 1
        0x8F,                                   // topic filter invalid
    ];
    assert_eq!(
        from_server(ProtocolVersion::V5, &bytes).unwrap(),
        Packet::SubAck(SubAck {
            packet_id: 10,
            reason_codes: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::TOPIC_FILTER_INVALID],
            properties: ResponseProperties {
                reason_string: Some("no".into()),
                user_properties: vec![],
            },
        })
    );
}

#[test]
fn v311_unsubscribe_from_the_spec_example() {
    // 3.1.1 figure 3.30: packet identifier 10, "a/b" and "c/d".
    #[rustfmt::skip]
    let bytes = [
        0xA2, 12,                               // UNSUBSCRIBE (flags 0010), remaining length 12
        0x00, 0x0A,                             // packet identifier 10
        0x00, 0x03, b'a', b'/', b'b',           // topic filter "a/b"
        0x00, 0x03, b'c', b'/', b'd',           // topic filter "c/d"
    ];
    assert_eq!(
        from_client(ProtocolVersion::V311, &bytes).unwrap(),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 10,
            filters: vec!["a/b".into(), "c/d".into()],
            user_properties: vec![],
        })
    );
}

#[test]
fn v5_unsubscribe_and_unsuback() {
    #[rustfmt::skip]
    let unsubscribe = [
        0xA2, 8,                                // UNSUBSCRIBE, remaining length 8
        0x00, 0x0B,                             // packet identifier 11
        0x00,                                   // property length 0
        0x00, 0x03, b'a', b'/', b'b',           // topic filter "a/b"
    ];
    let Packet::Unsubscribe(packet) = from_client(ProtocolVersion::V5, &unsubscribe).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (packet.packet_id, packet.filters),
        (11, vec!["a/b".to_owned()])
    );

    #[rustfmt::skip]
    let unsuback = [
        0xB0, 5,                                // UNSUBACK, remaining length 5
        0x00, 0x0B,                             // packet identifier 11
        0x00,                                   // property length 0
        0x00,                                   // success
        0x11,                                   // no subscription existed
    ];
    assert_eq!(
        from_server(ProtocolVersion::V5, &unsuback).unwrap(),
        Packet::UnsubAck(UnsubAck {
            packet_id: 11,
            reason_codes: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
            properties: ResponseProperties::default(),
        })
    );
}

#[test]
fn v311_unsuback_has_no_reason_codes() {
    #[rustfmt::skip]
    let bytes = [
        0xB0, 2,                                // UNSUBACK, remaining length 2
        0x00, 0x0B,                             // packet identifier 11
    ];
    let Packet::UnsubAck(ack) = from_server(ProtocolVersion::V311, &bytes).unwrap() else {
        panic!()
    };
    assert_eq!((ack.packet_id, ack.reason_codes), (11, vec![]));
}

#[test]
fn puback_family_short_and_long_forms() {
    let v5 = ProtocolVersion::V5;
    let ack = |packet_id, reason_code, properties| PubResponse {
        packet_id,
        reason_code,
        properties,
    };

    // v3: the packet identifier is all there is.
    assert_eq!(
        from_client(ProtocolVersion::V311, &[0x40, 2, 0x00, 0x0A]).unwrap(),
        Packet::PubAck(PubResponse::success(10))
    );
    // v5, remaining length 2: Success, no properties (3.4.2.1).
    assert_eq!(
        from_client(v5, &[0x40, 2, 0x00, 0x0A]).unwrap(),
        Packet::PubAck(PubResponse::success(10))
    );
    #[rustfmt::skip]
    let reason_only = [
        0x40, 3,                                // PUBACK, remaining length 3
        0x00, 0x0A,                             // packet identifier 10
        0x10,                                   // no matching subscribers; no property length (3.4.2.2.1)
    ];
    assert_eq!(
        from_client(v5, &reason_only).unwrap(),
        Packet::PubAck(ack(
            10,
            ReasonCode::NO_MATCHING_SUBSCRIBERS,
            Default::default()
        ))
    );
    #[rustfmt::skip]
    let empty_properties = [
        0x40, 4,                                // PUBACK, remaining length 4
        0x00, 0x0A,                             // packet identifier 10
        0x80,                                   // unspecified error
        0x00,                                   // property length 0
    ];
    assert_eq!(
        from_client(v5, &empty_properties).unwrap(),
        Packet::PubAck(ack(10, ReasonCode::UNSPECIFIED_ERROR, Default::default()))
    );
    #[rustfmt::skip]
    let with_properties = [
        0x40, 10,                               // PUBACK, remaining length 10
        0x00, 0x0A,                             // packet identifier 10
        0x97,                                   // quota exceeded
        6,                                      // property length 6
        0x1F, 0x00, 0x03, b'q', b'u', b'o',     //   reason string "quo"
    ];
    let properties = ResponseProperties {
        reason_string: Some("quo".into()),
        user_properties: vec![],
    };
    assert_eq!(
        from_client(v5, &with_properties).unwrap(),
        Packet::PubAck(ack(10, ReasonCode::QUOTA_EXCEEDED, properties))
    );

    // PUBREC, PUBREL (flags 0010) and PUBCOMP share the shape.
    assert_eq!(
        from_client(v5, &[0x50, 3, 0x00, 0x0B, 0x91]).unwrap(),
        Packet::PubRec(ack(
            11,
            ReasonCode::PACKET_IDENTIFIER_IN_USE,
            Default::default()
        ))
    );
    assert_eq!(
        from_client(v5, &[0x62, 2, 0x00, 0x0B]).unwrap(),
        Packet::PubRel(PubResponse::success(11))
    );
    assert_eq!(
        from_server(v5, &[0x62, 3, 0x00, 0x0B, 0x92]).unwrap(),
        Packet::PubRel(ack(
            11,
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
            Default::default()
        ))
    );
    assert_eq!(
        from_server(ProtocolVersion::V31, &[0x70, 2, 0x00, 0x0B]).unwrap(),
        Packet::PubComp(PubResponse::success(11))
    );
}

#[test]
fn v31_pubrel_subscribe_and_unsubscribe_may_carry_dup() {
    // MQTT 3.1 sent these "at QoS 1" and set DUP when retrying them.
    assert_eq!(
        from_client(ProtocolVersion::V31, &[0x6A, 2, 0x00, 0x01]).unwrap(),
        Packet::PubRel(PubResponse::success(1))
    );
    #[rustfmt::skip]
    let subscribe = [
        0x8A, 6,                                // SUBSCRIBE with DUP, remaining length 6
        0x00, 0x01,                             // packet identifier 1
        0x00, 0x01, b'a',                       // topic filter "a"
        0x00,                                   //   QoS 0
    ];
    assert!(matches!(
        from_client(ProtocolVersion::V31, &subscribe),
        Ok(Packet::Subscribe(_))
    ));
    // 3.1.1 holds them to exactly 0010 [MQTT-3.8.1-1].
    assert_eq!(
        from_client(ProtocolVersion::V311, &subscribe),
        Err(DecodeError::Malformed("invalid fixed header flags"))
    );
}

#[test]
fn connack_forms() {
    // 3.1.1: session present, connection accepted.
    assert_eq!(
        from_server(ProtocolVersion::V311, &[0x20, 2, 0x01, 0x00]).unwrap(),
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: ReasonCode::SUCCESS,
            properties: Default::default(),
        })
    );
    // Return code 5, not authorized, maps to its v5 reason.
    let Packet::ConnAck(refused) =
        from_server(ProtocolVersion::V31, &[0x20, 2, 0x00, 0x05]).unwrap()
    else {
        panic!()
    };
    assert_eq!(refused.reason_code, ReasonCode::NOT_AUTHORIZED);

    #[rustfmt::skip]
    let v5 = [
        0x20, 72,                               // CONNACK, remaining length 72
        0x00,                                   // acknowledge flags: no session present
        0x00,                                   // success
        69,                                     // property length 69
        0x11, 0x00, 0x00, 0x00, 0x78,           //   session expiry interval 120
        0x21, 0x00, 0x0A,                       //   receive maximum 10
        0x24, 0x01,                             //   maximum QoS 1
        0x25, 0x00,                             //   retain available: no
        0x27, 0x00, 0x01, 0x00, 0x00,           //   maximum packet size 65536
        0x12, 0x00, 0x04, b'a', b'u', b't', b'o', // assigned client identifier "auto"
        0x22, 0x00, 0x05,                       //   topic alias maximum 5
        0x1F, 0x00, 0x02, b'o', b'k',           //   reason string "ok"
        0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b', // user property a=b
        0x28, 0x00,                             //   wildcard subscriptions: no
        0x29, 0x01,                             //   subscription identifiers: yes
        0x2A, 0x00,                             //   shared subscriptions: no
        0x13, 0x00, 0x1E,                       //   server keep alive 30
        0x1A, 0x00, 0x04, b'r', b'e', b's', b'p', // response information "resp"
        0x1C, 0x00, 0x03, b's', b'r', b'v',     //   server reference "srv"
        0x15, 0x00, 0x01, b'M',                 //   authentication method "M"
        0x16, 0x00, 0x01, 0x07,                 //   authentication data 07
    ];
    assert_eq!(
        from_server(ProtocolVersion::V5, &v5).unwrap(),
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::SUCCESS,
            properties: ConnAckProperties {
                session_expiry_interval: Some(120),
                receive_maximum: Some(10),
                maximum_qos: Some(QoS::AtLeastOnce),
                retain_available: Some(false),
                maximum_packet_size: Some(65536),
                assigned_client_identifier: Some("auto".into()),
                topic_alias_maximum: Some(5),
                reason_string: Some("ok".into()),
                user_properties: vec![user("a", "b")],
                wildcard_subscription_available: Some(false),
                subscription_identifiers_available: Some(true),
                shared_subscription_available: Some(false),
                server_keep_alive: Some(30),
                response_information: Some("resp".into()),
                server_reference: Some("srv".into()),
                authentication_method: Some("M".into()),
                authentication_data: Some(Bytes::from_static(&[7])),
            },
        })
    );
}

#[test]
fn ping_packets() {
    assert_eq!(
        from_client(ProtocolVersion::V311, &[0xC0, 0x00]).unwrap(),
        Packet::PingReq
    );
    assert_eq!(
        from_server(ProtocolVersion::V5, &[0xD0, 0x00]).unwrap(),
        Packet::PingResp
    );
}

#[test]
fn disconnect_forms() {
    let v5 = ProtocolVersion::V5;
    // v3: no variable header; it means a normal disconnection.
    assert_eq!(
        from_client(ProtocolVersion::V311, &[0xE0, 0x00]).unwrap(),
        Packet::Disconnect(Disconnect::default())
    );
    // v5, remaining length 0: normal disconnection (3.14.2.1).
    assert_eq!(
        from_client(v5, &[0xE0, 0x00]).unwrap(),
        Packet::Disconnect(Disconnect::default())
    );
    // Remaining length 1: reason code only (3.14.2.2.1).
    let Packet::Disconnect(with_will) = from_client(v5, &[0xE0, 1, 0x04]).unwrap() else {
        panic!()
    };
    assert_eq!(
        with_will.reason_code,
        ReasonCode::DISCONNECT_WITH_WILL_MESSAGE
    );
    // Reason code and an empty property block.
    let Packet::Disconnect(taken_over) = from_server(v5, &[0xE0, 2, 0x8E, 0x00]).unwrap() else {
        panic!()
    };
    assert_eq!(taken_over.reason_code, ReasonCode::SESSION_TAKEN_OVER);

    #[rustfmt::skip]
    let with_properties = [
        0xE0, 13,                               // DISCONNECT, remaining length 13
        0x00,                                   // normal disconnection
        11,                                     // property length 11
        0x11, 0x00, 0x00, 0x00, 0x00,           //   session expiry interval 0
        0x1F, 0x00, 0x03, b'b', b'y', b'e',     //   reason string "bye"
    ];
    assert_eq!(
        from_client(v5, &with_properties).unwrap(),
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::NORMAL_DISCONNECTION,
            properties: DisconnectProperties {
                session_expiry_interval: Some(0),
                reason_string: Some("bye".into()),
                ..Default::default()
            },
        })
    );
    #[rustfmt::skip]
    let moved = [
        0xE0, 9,                                // DISCONNECT, remaining length 9
        0x9C,                                   // use another server
        7,                                      // property length 7
        0x1C, 0x00, 0x04, b'h', b'o', b's', b't', // server reference "host"
    ];
    let Packet::Disconnect(moved) = from_server(v5, &moved).unwrap() else {
        panic!()
    };
    assert_eq!(moved.reason_code, ReasonCode::USE_ANOTHER_SERVER);
    assert_eq!(moved.properties.server_reference.as_deref(), Some("host"));
}

#[test]
fn auth_forms() {
    let v5 = ProtocolVersion::V5;
    // Remaining length 0: Success without properties (3.15.2.1).
    assert_eq!(
        from_client(v5, &[0xF0, 0x00]).unwrap(),
        Packet::Auth(Auth::default())
    );
    #[rustfmt::skip]
    let continue_auth = [
        0xF0, 16,                               // AUTH, remaining length 16
        0x18,                                   // continue authentication
        14,                                     // property length 14
        0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M', // authentication method "SCRAM"
        0x16, 0x00, 0x03, 0x01, 0x02, 0x03,     //   authentication data 01 02 03
    ];
    assert_eq!(
        from_server(v5, &continue_auth).unwrap(),
        Packet::Auth(Auth {
            reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: AuthProperties {
                authentication_method: Some("SCRAM".into()),
                authentication_data: Some(Bytes::from_static(&[1, 2, 3])),
                ..Default::default()
            },
        })
    );
    #[rustfmt::skip]
    let reauthenticate = [
        0xF0, 2,                                // AUTH, remaining length 2
        0x19,                                   // re-authenticate
        0x00,                                   // property length 0
    ];
    let Packet::Auth(auth) = from_client(v5, &reauthenticate).unwrap() else {
        panic!()
    };
    assert_eq!(auth.reason_code, ReasonCode::RE_AUTHENTICATE);
}

#[test]
fn remaining_length_examples_from_the_spec() {
    // 1.5.5 table 1-1 (3.1.1 table 2.4): the smallest and largest value of each size, read
    // from the fixed header alone (the size check fires before any body is needed).
    let cases: [(&[u8], usize); 8] = [
        (&[0x00], 0),
        (&[0x7F], 127),
        (&[0x80, 0x01], 128),
        (&[0xFF, 0x7F], 16_383),
        (&[0x80, 0x80, 0x01], 16_384),
        (&[0xFF, 0xFF, 0x7F], 2_097_151),
        (&[0x80, 0x80, 0x80, 0x01], 2_097_152),
        (&[0xFF, 0xFF, 0xFF, 0x7F], 268_435_455),
    ];
    for (length, remaining) in cases {
        let mut buf = BytesMut::from(&[0x30][..]); // PUBLISH QoS 0
        buf.extend_from_slice(length);
        let size = 1 + length.len() + remaining;
        let mut decoder = Decoder::with_version(ProtocolVersion::V5, 0);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(DecodeError::PacketTooLarge { size, max: 0 })
        );
    }
}

#[test]
fn two_byte_remaining_length_packet() {
    // Remaining length 128 = 0x80 0x01: topic "t" (3 bytes) and a 125-byte payload.
    let mut bytes = vec![0x30, 0x80, 0x01, 0x00, 0x01, b't'];
    bytes.extend_from_slice(&[0xAA; 125]);
    let Packet::Publish(publish) = from_client(ProtocolVersion::V311, &bytes).unwrap() else {
        panic!()
    };
    assert_eq!(publish.payload.len(), 125);
}

// Streaming: partial input, several packets per read, limits from the fixed header.

#[test]
fn a_packet_fed_one_byte_at_a_time_decodes_once_at_the_end() {
    let bytes = minimal_connect(ProtocolVersion::V5);
    let mut decoder = Decoder::new(MAX);
    let mut buf = BytesMut::new();
    for (i, &byte) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[byte]);
        let decoded = decoder.decode(&mut buf).unwrap();
        if i + 1 < bytes.len() {
            assert_eq!(decoded, None, "after {} bytes", i + 1);
            assert_eq!(buf.len(), i + 1, "an incomplete packet stays in the buffer");
        } else {
            assert!(matches!(decoded, Some(Packet::Connect(_))));
        }
    }
    assert!(buf.is_empty());
    assert_eq!(decoder.decode(&mut buf), Ok(None));
}

#[test]
fn several_packets_in_one_buffer_decode_in_order() {
    let mut buf = BytesMut::from(&minimal_connect(ProtocolVersion::V311)[..]);
    #[rustfmt::skip]
    buf.extend_from_slice(&[
        0x30, 5, 0x00, 0x01, b't', b'h', b'i', // PUBLISH QoS 0 "t", payload "hi"
        0xC0, 0x00,                             // PINGREQ
        0xE0, 0x00,                             // DISCONNECT
        0x30,                                   // first byte of a PUBLISH still in flight
    ]);
    let mut decoder = Decoder::new(MAX);
    let mut names = Vec::new();
    while let Some(packet) = decoder.decode(&mut buf).unwrap() {
        names.push(packet.name());
    }
    assert_eq!(names, ["CONNECT", "PUBLISH", "PINGREQ", "DISCONNECT"]);
    assert_eq!(&buf[..], &[0x30]);
}

#[test]
fn an_incomplete_fixed_header_waits_and_leaves_the_buffer_alone() {
    for partial in [
        &[0x30][..],
        &[0x30, 0x80],
        &[0x30, 0x80, 0x80],
        &[0x30, 0x80, 0x80, 0x80],
    ] {
        let mut buf = BytesMut::from(partial);
        let mut decoder = Decoder::with_version(ProtocolVersion::V5, MAX);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(&buf[..], partial);
    }
}

#[test]
fn packet_too_large_is_raised_from_the_fixed_header_alone() {
    // Only the fixed header of a PUBLISH announcing 1001 bytes: 1004 in all.
    let mut buf = BytesMut::from(&[0x30, 0xE9, 0x07][..]);
    let mut decoder = Decoder::with_version(ProtocolVersion::V311, 1000);
    let error = decoder.decode(&mut buf).unwrap_err();
    assert_eq!(
        error,
        DecodeError::PacketTooLarge {
            size: 1004,
            max: 1000
        }
    );
    assert_eq!(error.reason_code(), ReasonCode::PACKET_TOO_LARGE);

    // Exactly at the limit is fine: the decoder waits for the body.
    let mut buf = BytesMut::from(&[0x30, 0xE9, 0x07][..]);
    decoder.set_max_packet_size(1004);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
}

#[test]
fn the_first_connect_is_checked_against_the_limit_too() {
    let connect = minimal_connect(ProtocolVersion::V311);
    let mut decoder = Decoder::new(connect.len() as u32 - 1);
    let mut buf = BytesMut::from(&connect[..2]);
    assert!(matches!(
        decoder.decode(&mut buf),
        Err(DecodeError::PacketTooLarge { .. })
    ));
}

#[test]
fn payloads_are_slices_of_the_read_buffer() {
    let mut buf = BytesMut::with_capacity(64);
    buf.extend_from_slice(&[0x30, 7, 0x00, 0x01, b't', b'd', b'a', b't', b'a']);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let mut decoder = Decoder::with_version(ProtocolVersion::V311, MAX);
    let Some(Packet::Publish(publish)) = decoder.decode(&mut buf).unwrap() else {
        panic!()
    };
    assert_eq!(&publish.payload[..], b"data");
    assert!(
        range.contains(&(publish.payload.as_ptr() as usize)),
        "the payload was copied"
    );
}

#[test]
fn a_second_connect_decodes_and_keeps_the_connection_version() {
    let mut decoder = Decoder::new(MAX);
    decode_one(&mut decoder, &minimal_connect(ProtocolVersion::V311)).unwrap();
    let Packet::Connect(second) =
        decode_one(&mut decoder, &minimal_connect(ProtocolVersion::V5)).unwrap()
    else {
        panic!()
    };
    assert_eq!(second.protocol, ProtocolVersion::V5);
    assert_eq!(decoder.version(), Some(ProtocolVersion::V311));
}
