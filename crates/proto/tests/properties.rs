//! Property tests: arbitrary valid packets of every version round-trip through the encoder
//! and decoder, `encoded_len` is exact, arbitrary splits of a stream decode to the same
//! packets, and no input, however broken, makes the decoder panic.

mod common;

use bytes::{Bytes, BytesMut};
use common::minimal_connect;
use midge_proto::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{Index, select};

const V31: ProtocolVersion = ProtocolVersion::V31;
const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

// The v5 reason codes each packet may carry (spec tables 3-1 to 3-12).
const CONNACK_REASONS: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const PUBACK_REASONS: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_REASONS: &[u8] = &[0x00, 0x92];
const SUBACK_REASONS: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const SUBACK_V3_CODES: &[u8] = &[0x00, 0x01, 0x02, 0x80];
const UNSUBACK_REASONS: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_REASONS: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_REASONS: &[u8] = &[0x00, 0x18, 0x19];

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(V31), Just(V311), Just(V5)]
}

/// Any UTF-8 string the spec allows: every character but U+0000.
fn text() -> impl Strategy<Value = String> {
    "[^\\x00]{0,8}"
}

fn topic_name() -> impl Strategy<Value = String> {
    "[^\\x00+#]{1,8}"
}

/// Filters are not syntax checked; no `$share/`, so No Local may be set on any of them.
fn topic_filter() -> impl Strategy<Value = String> {
    "[a-z/+#]{1,8}"
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn user_properties() -> impl Strategy<Value = Vec<UserProperty>> {
    vec((text(), text()), 0..3)
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn reason(allowed: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    select(allowed).prop_map(ReasonCode)
}

/// `strategy` in v5, the default (no properties) before.
fn v5_only<T: Default + Clone + std::fmt::Debug + 'static>(
    version: ProtocolVersion,
    strategy: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if version.is_v5() {
        strategy.boxed()
    } else {
        Just(T::default()).boxed()
    }
}

/// Authentication data only ever comes with a method.
fn authentication() -> impl Strategy<Value = (Option<String>, Option<Bytes>)> {
    (option::of(text()), option::of(binary())).prop_map(|(method, data)| {
        let data = if method.is_some() { data } else { None };
        (method, data)
    })
}

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        option::of(1..=u32::MAX),
        option::of(any::<u16>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        user_properties(),
        authentication(),
    )
        .prop_map(
            |(expiry, receive_max, max_size, alias_max, response, problem, users, auth)| {
                ConnectProperties {
                    session_expiry_interval: expiry,
                    receive_maximum: receive_max,
                    maximum_packet_size: max_size,
                    topic_alias_maximum: alias_max,
                    request_response_information: response,
                    request_problem_information: problem,
                    user_properties: users,
                    authentication_method: auth.0,
                    authentication_data: auth.1,
                }
            },
        )
}

fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        option::of(any::<u32>()),
        option::of(0..=1u8),
        option::of(any::<u32>()),
        option::of(text()),
        option::of(topic_name()),
        option::of(binary()),
        user_properties(),
    )
        .prop_map(
            |(delay, format, expiry, content_type, response_topic, correlation, users)| {
                WillProperties {
                    will_delay_interval: delay,
                    payload_format_indicator: format,
                    message_expiry_interval: expiry,
                    content_type,
                    response_topic,
                    correlation_data: correlation,
                    user_properties: users,
                }
            },
        )
}

fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = (
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        v5_only(version, will_properties()),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        option::of(will),
        option::of(text()),
        option::of(binary()),
        v5_only(version, connect_properties()),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // [MQTT-3.1.2-22] Before v5 a password needs a user name.
                let password = if version.is_v5() || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Box::new(Connect {
                    protocol: version,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn connack(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    if !version.is_v5() {
        return (any::<bool>(), 0..=5u8)
            .prop_map(move |(session_present, code)| {
                let reason_code = ReasonCode::from_v3_connack(code).unwrap();
                Packet::ConnAck(ConnAck {
                    // 3.1 has no session present flag: its encoding is always 0.
                    session_present: session_present && code == 0 && version != V31,
                    reason_code,
                    properties: Default::default(),
                })
            })
            .boxed();
    }
    let flags = option::of(any::<bool>());
    let properties = (
        (
            option::of(any::<u32>()),
            option::of(1..=u16::MAX),
            option::of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
            flags.clone(),
            option::of(1..=u32::MAX),
            option::of(text()),
            option::of(any::<u16>()),
            option::of(text()),
        ),
        (
            user_properties(),
            flags.clone(),
            flags.clone(),
            flags,
            option::of(any::<u16>()),
            option::of(text()),
            option::of(text()),
            authentication(),
        ),
    )
        .prop_map(|(a, b)| ConnAckProperties {
            session_expiry_interval: a.0,
            receive_maximum: a.1,
            maximum_qos: a.2,
            retain_available: a.3,
            maximum_packet_size: a.4,
            assigned_client_identifier: a.5,
            topic_alias_maximum: a.6,
            reason_string: a.7,
            user_properties: b.0,
            wildcard_subscription_available: b.1,
            subscription_identifiers_available: b.2,
            shared_subscription_available: b.3,
            server_keep_alive: b.4,
            response_information: b.5,
            server_reference: b.6,
            authentication_method: b.7.0,
            authentication_data: b.7.1,
        });
    (any::<bool>(), reason(CONNACK_REASONS), properties)
        .prop_map(|(session_present, reason_code, properties)| {
            Packet::ConnAck(ConnAck {
                session_present: session_present && reason_code == ReasonCode::SUCCESS,
                reason_code,
                properties,
            })
        })
        .boxed()
}

/// `from_server`: a PUBLISH the server sends, which may carry subscription identifiers.
fn publish(version: ProtocolVersion, from_server: bool) -> impl Strategy<Value = Packet> {
    let max_ids = if from_server { 3 } else { 0 };
    let properties = (
        option::of(0..=1u8),
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        option::of(topic_name()),
        option::of(binary()),
        user_properties(),
        vec(1..=MAX_SUBSCRIPTION_IDENTIFIER, 0..=max_ids),
        option::of(text()),
    )
        .prop_map(
            |(format, expiry, alias, response, correlation, users, ids, content_type)| {
                PublishProperties {
                    payload_format_indicator: format,
                    message_expiry_interval: expiry,
                    topic_alias: alias,
                    response_topic: response,
                    correlation_data: correlation,
                    user_properties: users,
                    subscription_identifiers: ids,
                    content_type,
                }
            },
        );
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        packet_id(),
        v5_only(version, properties),
        vec(any::<u8>(), 0..64),
    )
        .prop_map(
            |(qos, dup, retain, topic, use_alias, packet_id, properties, payload)| {
                let at_qos_0 = qos == QoS::AtMostOnce;
                // An empty topic name stands for a topic alias the receiver knows.
                let topic = if use_alias && properties.topic_alias.is_some() {
                    String::new()
                } else {
                    topic
                };
                Packet::Publish(Publish {
                    dup: dup && !at_qos_0,
                    qos,
                    retain,
                    topic,
                    packet_id: if at_qos_0 { 0 } else { packet_id },
                    properties,
                    payload: payload.into(),
                })
            },
        )
}

fn response_properties() -> impl Strategy<Value = ResponseProperties> {
    (option::of(text()), user_properties()).prop_map(|(reason_string, user_properties)| {
        ResponseProperties {
            reason_string,
            user_properties,
        }
    })
}

fn pub_response(
    version: ProtocolVersion,
    allowed: &'static [u8],
) -> impl Strategy<Value = PubResponse> {
    let reason_code = if version.is_v5() {
        reason(allowed).boxed()
    } else {
        Just(ReasonCode::SUCCESS).boxed()
    };
    (
        packet_id(),
        reason_code,
        v5_only(version, response_properties()),
    )
        .prop_map(|(packet_id, reason_code, properties)| PubResponse {
            packet_id,
            reason_code,
            properties,
        })
}

fn subscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let options =
        (qos(), any::<bool>(), any::<bool>(), 0..3u8).prop_map(move |(qos, nl, rap, rh)| {
            if !version.is_v5() {
                return SubscriptionOptions {
                    qos,
                    ..Default::default()
                };
            }
            let retain_handling = match rh {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendIfNew,
                _ => RetainHandling::DontSend,
            };
            SubscriptionOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling,
            }
        });
    let properties = (
        option::of(1..=MAX_SUBSCRIPTION_IDENTIFIER),
        user_properties(),
    )
        .prop_map(
            |(subscription_identifier, user_properties)| SubscribeProperties {
                subscription_identifier,
                user_properties,
            },
        );
    (
        packet_id(),
        vec((topic_filter(), options), 1..4),
        v5_only(version, properties),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        })
}

fn suback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let codes = if version.is_v5() {
        SUBACK_REASONS
    } else {
        SUBACK_V3_CODES
    };
    (
        packet_id(),
        vec(reason(codes), 1..4),
        v5_only(version, response_properties()),
    )
        .prop_map(|(packet_id, reason_codes, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reason_codes,
                properties,
            })
        })
}

fn unsubscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        vec(topic_filter(), 1..4),
        v5_only(version, user_properties()),
    )
        .prop_map(|(packet_id, filters, user_properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                user_properties,
            })
        })
}

fn unsuback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    // v3 UNSUBACK carries no reason codes.
    let codes = if version.is_v5() {
        vec(reason(UNSUBACK_REASONS), 1..4).boxed()
    } else {
        Just(vec![]).boxed()
    };
    (packet_id(), codes, v5_only(version, response_properties())).prop_map(
        |(packet_id, reason_codes, properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reason_codes,
                properties,
            })
        },
    )
}

fn disconnect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let properties = (
        option::of(any::<u32>()),
        option::of(text()),
        user_properties(),
        option::of(text()),
    )
        .prop_map(
            |(expiry, reason_string, user_properties, server_reference)| DisconnectProperties {
                session_expiry_interval: expiry,
                reason_string,
                user_properties,
                server_reference,
            },
        );
    let disconnect =
        (reason(DISCONNECT_REASONS), properties).prop_map(|(reason_code, properties)| {
            Packet::Disconnect(Disconnect {
                reason_code,
                properties,
            })
        });
    v5_only(version, disconnect.prop_map(Some))
        .prop_map(|packet| packet.unwrap_or_else(|| Packet::Disconnect(Disconnect::default())))
}

fn auth() -> impl Strategy<Value = Packet> {
    (
        reason(AUTH_REASONS),
        authentication(),
        option::of(text()),
        user_properties(),
    )
        .prop_map(
            |(
                reason_code,
                (authentication_method, authentication_data),
                reason_string,
                user_properties,
            )| {
                Packet::Auth(Auth {
                    reason_code,
                    properties: AuthProperties {
                        authentication_method,
                        authentication_data,
                        reason_string,
                        user_properties,
                    },
                })
            },
        )
}

/// What a client sends once connected.
fn client_packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut packets = vec![
        publish(version, false).boxed(),
        pub_response(version, PUBACK_REASONS)
            .prop_map(Packet::PubAck)
            .boxed(),
        pub_response(version, PUBACK_REASONS)
            .prop_map(Packet::PubRec)
            .boxed(),
        pub_response(version, PUBREL_REASONS)
            .prop_map(Packet::PubRel)
            .boxed(),
        pub_response(version, PUBREL_REASONS)
            .prop_map(Packet::PubComp)
            .boxed(),
        subscribe(version).boxed(),
        unsubscribe(version).boxed(),
        Just(Packet::PingReq).boxed(),
        disconnect(version).boxed(),
    ];
    if version.is_v5() {
        packets.push(auth().boxed());
    }
    proptest::strategy::Union::new(packets).boxed()
}

/// Every packet the version has, in either direction.
fn any_packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    prop_oneof![
        1 => connect(version),
        1 => connack(version),
        2 => publish(version, true),
        6 => client_packet(version),
        1 => suback(version),
        1 => unsuback(version),
        1 => Just(Packet::PingResp),
    ]
    .boxed()
}

fn versioned<S: Strategy>(
    packets: impl Fn(ProtocolVersion) -> S + Clone + 'static,
) -> impl Strategy<Value = (ProtocolVersion, S::Value)> {
    version().prop_flat_map(move |version| (Just(version), packets(version)))
}

fn encode_all(packets: &[Packet], version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for packet in packets {
        packet.encode(version, &mut buf).unwrap();
    }
    buf.to_vec()
}

/// Feeds `stream` to `decoder` in chunks cut at `cuts`, decoding after each chunk.
fn decode_in_chunks(decoder: &mut Decoder, stream: &[u8], cuts: &[Index]) -> Vec<Packet> {
    let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(stream.len() + 1)).collect();
    cuts.push(stream.len());
    cuts.sort_unstable();
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let mut start = 0;
    for cut in cuts {
        buf.extend_from_slice(&stream[start..cut]);
        start = cut;
        while let Some(packet) = decoder.decode(&mut buf).unwrap() {
            packets.push(packet);
        }
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    packets
}

/// Decodes until the decoder wants more bytes or gives up; only a panic can fail.
fn decode_everything(decoder: &mut Decoder, bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(_)) = decoder.decode(&mut buf) {}
}

/// Decoders in every role: client side of each version, a server before CONNECT, and a
/// server after a CONNECT of each version.
fn all_decoders(max_packet_size: u32) -> Vec<Decoder> {
    let mut decoders = vec![Decoder::new(max_packet_size)];
    for version in [V31, V311, V5] {
        decoders.push(Decoder::with_version(version, max_packet_size));
        let mut server = Decoder::new(max_packet_size);
        decode_everything(&mut server, &minimal_connect(version));
        decoders.push(server);
    }
    decoders
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn valid_packets_round_trip((version, packet) in versioned(any_packet)) {
        let mut buf = BytesMut::new();
        packet.encode(version, &mut buf).unwrap();
        prop_assert_eq!(packet.encoded_len(version), Ok(buf.len()));
        let mut decoder = Decoder::with_version(version, MAX_PACKET_SIZE);
        prop_assert_eq!(decoder.decode(&mut buf), Ok(Some(packet)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_splits_of_a_stream_decode_to_the_same_packets(
        (version, packets) in versioned(|version| vec(any_packet(version), 1..8)),
        cuts in vec(any::<Index>(), 0..10),
    ) {
        let stream = encode_all(&packets, version);
        let mut decoder = Decoder::with_version(version, MAX_PACKET_SIZE);
        prop_assert_eq!(decode_in_chunks(&mut decoder, &stream, &cuts), packets);
    }

    #[test]
    fn a_server_decodes_a_split_client_session(
        (version, (connect, packets)) in
            versioned(|version| (connect(version), vec(client_packet(version), 0..8))),
        cuts in vec(any::<Index>(), 0..10),
    ) {
        let packets: Vec<Packet> = std::iter::once(connect).chain(packets).collect();
        let stream = encode_all(&packets, version);
        let mut decoder = Decoder::new(MAX_PACKET_SIZE);
        prop_assert_eq!(decode_in_chunks(&mut decoder, &stream, &cuts), packets);
        prop_assert_eq!(decoder.version(), Some(version));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn the_decoder_never_panics_on_arbitrary_bytes(
        bytes in vec(any::<u8>(), 0..256),
        max_packet_size in prop_oneof![Just(MAX_PACKET_SIZE), 0..512u32],
    ) {
        for mut decoder in all_decoders(max_packet_size) {
            decode_everything(&mut decoder, &bytes);
        }
    }

    #[test]
    fn the_decoder_never_panics_on_arbitrary_bodies(first: u8, body in vec(any::<u8>(), 0..128)) {
        // A correct fixed header gets random bytes past the first checks.
        let mut bytes = vec![first, body.len() as u8];
        bytes.extend_from_slice(&body);
        for mut decoder in all_decoders(MAX_PACKET_SIZE) {
            decode_everything(&mut decoder, &bytes);
        }
    }

    #[test]
    fn the_decoder_never_panics_on_mutated_packets(
        (version, packet) in versioned(any_packet),
        mutations in vec((any::<Index>(), any::<u8>(), 0..3u8), 1..4),
    ) {
        let mut bytes = encode_all(&[packet], version);
        for (at, value, kind) in mutations {
            match kind {
                0 if !bytes.is_empty() => {
                    let at = at.index(bytes.len());
                    bytes[at] = value;
                }
                1 if !bytes.is_empty() => {
                    bytes.remove(at.index(bytes.len()));
                }
                _ => bytes.insert(at.index(bytes.len() + 1), value),
            }
        }
        for mut decoder in all_decoders(MAX_PACKET_SIZE) {
            decode_everything(&mut decoder, &bytes);
        }
    }
}
