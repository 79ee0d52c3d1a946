//! The seed corpus in `fuzz/seeds/<target>/`: valid packets of every type in every
//! protocol version, and sample password, ACL and configuration files.
//!
//! `MIDGE_FUZZ_WRITE_SEEDS=1 cargo test --manifest-path fuzz/Cargo.toml` rewrites the
//! directory from here; without the variable the test checks that every seed is still
//! accepted (decodes, round-trips, parses), so the corpus cannot rot silently.

use bytes::{Bytes, BytesMut};
use midge_proto::{
    Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, ConnectProperties, Disconnect,
    DisconnectProperties, Packet, ProtocolVersion, PubResponse, Publish, PublishProperties, QoS,
    ReasonCode, ResponseProperties, RetainHandling, SubAck, Subscribe, SubscribeProperties,
    SubscriptionOptions, UnsubAck, Unsubscribe, Will, WillProperties,
};

fn user_props() -> Vec<(String, String)> {
    vec![("k".into(), "v".into()), ("k".into(), "second".into())]
}

fn connects(version: ProtocolVersion) -> Vec<(&'static str, Connect)> {
    let v5 = version.is_v5();
    let minimal = Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 60,
        client_id: "fuzz-client".into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    };
    let full = Connect {
        clean_start: false,
        will: Some(Will {
            topic: "devices/fuzz/status".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: if v5 {
                WillProperties {
                    will_delay_interval: Some(5),
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(3600),
                    content_type: Some("text/plain".into()),
                    response_topic: Some("replies/fuzz".into()),
                    correlation_data: Some(Bytes::from_static(b"\x01\x02")),
                    user_properties: user_props(),
                }
            } else {
                WillProperties::default()
            },
        }),
        username: Some("alice".into()),
        password: Some(Bytes::from_static(b"secret")),
        properties: if v5 {
            ConnectProperties {
                session_expiry_interval: Some(3600),
                receive_maximum: Some(20),
                maximum_packet_size: Some(65536),
                topic_alias_maximum: Some(10),
                request_response_information: Some(true),
                request_problem_information: Some(false),
                user_properties: user_props(),
                authentication_method: Some("SCRAM-SHA-1".into()),
                authentication_data: Some(Bytes::from_static(b"client-first")),
            }
        } else {
            ConnectProperties::default()
        },
        ..minimal.clone()
    };
    let empty_id = Connect {
        client_id: String::new(),
        ..minimal.clone()
    };
    vec![
        ("connect", minimal),
        ("connect_full", full),
        ("connect_empty_id", empty_id),
    ]
}

/// One packet of every other type, as they would appear in `version`.
fn others(version: ProtocolVersion) -> Vec<(&'static str, Packet)> {
    let v5 = version.is_v5();
    let props = |reason: &str| {
        if v5 {
            ResponseProperties {
                reason_string: Some(reason.into()),
                user_properties: user_props(),
            }
        } else {
            ResponseProperties::default()
        }
    };
    let response = |id, reason_code, text: &str| PubResponse {
        packet_id: id,
        reason_code: if v5 { reason_code } else { ReasonCode::SUCCESS },
        properties: props(text),
    };
    let publish = |qos, id, retain, dup| Publish {
        dup,
        qos,
        retain,
        topic: "sensors/room1/temp".into(),
        packet_id: id,
        properties: if v5 && qos != QoS::AtMostOnce {
            PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                topic_alias: Some(1),
                response_topic: Some("replies/room1".into()),
                correlation_data: Some(Bytes::from_static(b"corr")),
                user_properties: user_props(),
                subscription_identifiers: Vec::new(),
                content_type: Some("application/json".into()),
            }
        } else {
            PublishProperties::default()
        },
        payload: Bytes::from_static(b"{\"t\":21.5}"),
    };
    let options = |qos, no_local, rap, rh| SubscriptionOptions {
        qos,
        no_local: v5 && no_local,
        retain_as_published: v5 && rap,
        retain_handling: if v5 {
            rh
        } else {
            RetainHandling::SendAtSubscribe
        },
    };
    let mut packets = vec![
        (
            "connack",
            Packet::ConnAck(ConnAck {
                session_present: version != ProtocolVersion::V31,
                reason_code: ReasonCode::SUCCESS,
                properties: if v5 {
                    ConnAckProperties {
                        session_expiry_interval: Some(60),
                        receive_maximum: Some(32),
                        maximum_qos: Some(QoS::AtLeastOnce),
                        retain_available: Some(true),
                        maximum_packet_size: Some(1 << 20),
                        assigned_client_identifier: Some("auto-1".into()),
                        topic_alias_maximum: Some(64),
                        reason_string: Some("welcome".into()),
                        user_properties: user_props(),
                        wildcard_subscription_available: Some(true),
                        subscription_identifiers_available: Some(true),
                        shared_subscription_available: Some(true),
                        server_keep_alive: Some(30),
                        response_information: Some("replies/".into()),
                        server_reference: Some("other:1883".into()),
                        authentication_method: Some("SCRAM-SHA-1".into()),
                        authentication_data: Some(Bytes::from_static(b"server-final")),
                    }
                } else {
                    ConnAckProperties::default()
                },
            }),
        ),
        (
            "connack_refused",
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::NOT_AUTHORIZED,
                properties: ConnAckProperties::default(),
            }),
        ),
        (
            "publish_qos0",
            Packet::Publish(publish(QoS::AtMostOnce, 0, false, false)),
        ),
        (
            "publish_qos1",
            Packet::Publish(publish(QoS::AtLeastOnce, 7, true, false)),
        ),
        (
            "publish_qos2_dup",
            Packet::Publish(publish(QoS::ExactlyOnce, 8, false, true)),
        ),
        (
            "puback",
            Packet::PubAck(response(7, ReasonCode::NO_MATCHING_SUBSCRIBERS, "none")),
        ),
        (
            "pubrec",
            Packet::PubRec(response(8, ReasonCode::SUCCESS, "ok")),
        ),
        (
            "pubrel",
            Packet::PubRel(response(8, ReasonCode::SUCCESS, "ok")),
        ),
        (
            "pubcomp",
            Packet::PubComp(response(8, ReasonCode::SUCCESS, "ok")),
        ),
        (
            "subscribe",
            Packet::Subscribe(Subscribe {
                packet_id: 9,
                filters: vec![
                    (
                        "sensors/#".into(),
                        options(QoS::AtLeastOnce, true, true, RetainHandling::SendIfNew),
                    ),
                    (
                        "$share/g1/ch/+".into(),
                        options(QoS::ExactlyOnce, false, false, RetainHandling::DontSend),
                    ),
                    (
                        "+/status".into(),
                        options(
                            QoS::AtMostOnce,
                            false,
                            false,
                            RetainHandling::SendAtSubscribe,
                        ),
                    ),
                ],
                properties: if v5 {
                    SubscribeProperties {
                        subscription_identifier: Some(42),
                        user_properties: user_props(),
                    }
                } else {
                    SubscribeProperties::default()
                },
            }),
        ),
        (
            "suback",
            Packet::SubAck(SubAck {
                packet_id: 9,
                reason_codes: vec![
                    ReasonCode::GRANTED_QOS_1,
                    ReasonCode::GRANTED_QOS_2,
                    ReasonCode::UNSPECIFIED_ERROR,
                ],
                properties: props("granted"),
            }),
        ),
        (
            "unsubscribe",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 10,
                filters: vec!["sensors/#".into(), "$share/g1/ch/+".into()],
                user_properties: if v5 { user_props() } else { Vec::new() },
            }),
        ),
        ("pingreq", Packet::PingReq),
        ("pingresp", Packet::PingResp),
        (
            "disconnect",
            Packet::Disconnect(Disconnect {
                reason_code: if v5 {
                    ReasonCode::DISCONNECT_WITH_WILL_MESSAGE
                } else {
                    ReasonCode::SUCCESS
                },
                properties: if v5 {
                    DisconnectProperties {
                        session_expiry_interval: Some(0),
                        reason_string: Some("bye".into()),
                        user_properties: user_props(),
                        server_reference: None,
                    }
                } else {
                    DisconnectProperties::default()
                },
            }),
        ),
    ];
    if v5 {
        packets.push((
            "unsuback",
            Packet::UnsubAck(UnsubAck {
                packet_id: 10,
                reason_codes: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
                properties: props("done"),
            }),
        ));
        packets.push((
            "auth",
            Packet::Auth(Auth {
                reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
                properties: AuthProperties {
                    authentication_method: Some("SCRAM-SHA-1".into()),
                    authentication_data: Some(Bytes::from_static(b"client-final")),
                    reason_string: Some("continue".into()),
                    user_properties: user_props(),
                },
            }),
        ));
    } else {
        // A v3 UNSUBACK carries no reason codes.
        packets.push((
            "unsuback",
            Packet::UnsubAck(UnsubAck {
                packet_id: 10,
                reason_codes: Vec::new(),
                properties: ResponseProperties::default(),
            }),
        ));
    }
    packets
}

fn version_name(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V31 => "v31",
        ProtocolVersion::V311 => "v311",
        ProtocolVersion::V5 => "v5",
    }
}

fn encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    packet
        .encode(version, &mut buf)
        .expect("seed packets encode");
    buf.to_vec()
}

/// Seeds of one target: (file name, bytes).
pub type Seeds = Vec<(String, Vec<u8>)>;

/// `decode_stream`: a CONNECT of each version, alone, followed by each other packet, and
/// followed by a whole client session.
pub fn decode_stream() -> Seeds {
    let mut seeds = Seeds::new();
    for version in crate::VERSIONS {
        let v = version_name(version);
        for (name, connect) in connects(version) {
            let connect = encode(&Packet::Connect(Box::new(connect)), version);
            seeds.push((format!("{v}_{name}"), connect.clone()));
            if name != "connect" {
                continue;
            }
            let mut session = connect.clone();
            for (name, packet) in others(version) {
                let bytes = encode(&packet, version);
                let mut seed = connect.clone();
                seed.extend_from_slice(&bytes);
                seeds.push((format!("{v}_then_{name}"), seed));
                session.extend_from_slice(&bytes);
            }
            seeds.push((format!("{v}_session"), session));
        }
    }
    seeds
}

/// `decode_versioned`: the version selector byte, then one packet.
pub fn decode_versioned() -> Seeds {
    let mut seeds = Seeds::new();
    for (index, version) in crate::VERSIONS.into_iter().enumerate() {
        let v = version_name(version);
        let connects = connects(version)
            .into_iter()
            .map(|(name, c)| (name, Packet::Connect(Box::new(c))));
        for (name, packet) in connects.chain(others(version)) {
            let mut seed = vec![index as u8];
            seed.extend_from_slice(&encode(&packet, version));
            seeds.push((format!("{v}_{name}"), seed));
        }
    }
    seeds
}

/// `password_file`: Mosquitto's `$7$` and `$6$` lines (made by mosquitto_passwd 2.0.11),
/// an argon2id line as `midge passwd` writes it, comments and blank lines.
pub fn password_file() -> Seeds {
    const SEVEN: &str = "alice:$7$101$7uMu3Vpxl+R6GBp2$AlLlV6aP5pffa77x98O7CGwmHfHP9cVTSHduCITeKqeO0D+U5glkNOjHGI1cRWxTf+kUgbqCBUdehHipxFREVw==\n";
    const SIX: &str = "carol:$6$/gLxeBsT5Y7K/1z7$ODQfQYx1PvVTVm9apNA4E8NjmvmTKvKfdmxWk1w5S4vG0sojq8C+50CoEPtC/uVvSBgu4A5IBXtVOvb1y7Le+g==\n";
    const ARGON: &str = "dave:$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2uQm6yvoP0zTzUbnqRcTlLFd8BVKobiE4FLd/ypHBH0\n";
    vec![
        ("mosquitto_7".into(), SEVEN.into()),
        ("mosquitto_6".into(), SIX.into()),
        ("argon2id".into(), ARGON.into()),
        (
            "mixed".into(),
            format!("# users\n\n{SEVEN}{SIX}\r\n{ARGON}").into_bytes(),
        ),
    ]
}

/// `acl_file`: rule files with queries (client id, user name, topics and filters).
pub fn acl_file() -> Seeds {
    let mosquitto = "\
# general rules
topic read public/#
topic deny public/secret
user alice
topic readwrite alice/#
topic deny alice/secret
topic write +/status
user bob
topic $SYS/#
pattern write devices/%c/status
pattern read users/%u/#
";
    let queries = |q: &[&str]| {
        let mut seed = mosquitto.to_owned();
        for part in q {
            seed.push('\0');
            seed.push_str(part);
        }
        seed.into_bytes()
    };
    vec![
        ("rules_only".into(), mosquitto.as_bytes().to_vec()),
        (
            "alice".into(),
            queries(&[
                "c1",
                "alice",
                "alice/#",
                "alice/x",
                "alice/secret",
                "public/+",
                "public/secret",
                "public/news",
                "#",
            ]),
        ),
        (
            "anonymous".into(),
            queries(&[
                "dev-7",
                "",
                "devices/dev-7/status",
                "users/+/x",
                "+/status",
                "a/status",
            ]),
        ),
        (
            "sys".into(),
            queries(&[
                "c",
                "bob",
                "$SYS/#",
                "$SYS/broker/uptime",
                "+/broker/uptime",
                "#",
            ]),
        ),
        (
            "patterns_with_slash".into(),
            queries(&[
                "a/b",
                "u/v",
                "devices/a/b/status",
                "devices/+/+/status",
                "users/u/v/x",
            ]),
        ),
    ]
}

/// `config`: the example file, a small one, and one with environment overrides.
pub fn config() -> Seeds {
    let small = "\
[[listener]]
bind = \"127.0.0.1:0\"

[[listener]]
bind = \"127.0.0.1:0\"
protocol = \"ws\"
ws_path = [\"/mqtt\", \"/ws\"]
[listener.auth]
allow_anonymous = false
[listener.auth.http]
url = \"http://127.0.0.1:8080/auth\"

[[listener]]
bind = \"127.0.0.1:0\"
[listener.tls]
cert = \"server.crt\"
key = \"server.key\"
client_ca = \"ca.crt\"
require_client_cert = true
cert_identity = \"cn\"

[auth.http]
acl_url = \"http://localhost:9000/acl\"
timeout_ms = 100

[mqtt]
max_packet_size = 4096
max_connect_size = 1024
max_pre_connect_bytes = 8192
";
    let env = format!(
        "{small}\0MIDGE_MQTT__MAX_INFLIGHT=64\nMIDGE_LISTENER__0__BIND=\"127.0.0.1:1999\"\n\
         MIDGE_LISTENER__3__BIND=127.0.0.1:0\nMIDGE_AUTH__ALLOW_ANONYMOUS=true\n"
    );
    vec![
        (
            "example".into(),
            include_str!("../../midge.example.toml").into(),
        ),
        ("small".into(), small.into()),
        ("env_overrides".into(), env.into_bytes()),
    ]
}

/// Topics, subjects, filters and an envelope for the cluster codec, NUL-separated.
fn topic_subject() -> Seeds {
    vec![
        (
            "topics_and_filters".into(),
            "a.b/c\0sp ace/*/>\0/\0a//b/\0$dollar/x\0#\0+/c\0a.b/#\0$dollar/+\0é/ü".into(),
        ),
        (
            "subjects".into(),
            "mq.m.a=2Eb.c\0mq.d.=24dollar.x\0mq.m.=.=\0mq.m.=C3=A9".into(),
        ),
        (
            // Version, node "n", incarnation 1, seq 2, QoS 1 and retain, client "c", no user
            // properties, payload "p".
            "envelope".into(),
            b"\x01\x01n\x01\x02\x05\x01c\x00p".to_vec(),
        ),
    ]
}

/// `amqp_frames`: what real AMQP clients send: the protocol header and the opening
/// handshake (PLAIN and AMQPLAIN), then a channel declaring a queue with arguments of
/// several field types, binding it, publishing with properties and headers (the body in
/// two frames), consuming, acknowledging; and a heartbeat.
pub fn amqp_frames() -> Seeds {
    use midge_amqp_proto::{
        BasicProperties, FieldTable, FieldValue, Method, PROTOCOL_HEADER, encode_content,
        encode_heartbeat, encode_method,
    };
    let method = |channel: u16, m: Method| {
        let mut out = BytesMut::new();
        encode_method(channel, &m, &mut out);
        out.to_vec()
    };
    let mut client_properties = FieldTable::default();
    let mut capabilities = FieldTable::default();
    capabilities.insert("publisher_confirms", FieldValue::Bool(true));
    client_properties.insert("product", FieldValue::string("pika"));
    client_properties.insert("capabilities", FieldValue::Table(capabilities));
    let start_ok = |mechanism: &str, response: Bytes| Method::ConnectionStartOk {
        client_properties: client_properties.clone(),
        mechanism: mechanism.into(),
        response,
        locale: "en_US".into(),
    };
    let mut amqplain = BytesMut::new();
    amqplain.extend_from_slice(b"\x05LOGINS\x00\x00\x00\x05guest");
    amqplain.extend_from_slice(b"\x08PASSWORDS\x00\x00\x00\x05guest");
    let open = |start: Method| {
        let mut bytes = PROTOCOL_HEADER.to_vec();
        bytes.extend(method(0, start));
        bytes.extend(method(
            0,
            Method::ConnectionTuneOk {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 60,
            },
        ));
        bytes.extend(method(
            0,
            Method::ConnectionOpen {
                virtual_host: "/".into(),
            },
        ));
        bytes
    };
    let plain = open(start_ok("PLAIN", Bytes::from_static(b"\0guest\0guest")));
    let mut arguments = FieldTable::default();
    arguments.insert("x-message-ttl", FieldValue::I32(60_000));
    arguments.insert("x-expires", FieldValue::I64(3_600_000));
    arguments.insert("x-max-length", FieldValue::U16(100));
    arguments.insert("x-overflow", FieldValue::string("reject-publish"));
    arguments.insert("x-queue-type", FieldValue::string("classic"));
    arguments.insert(
        "misc",
        FieldValue::Array(vec![
            FieldValue::F64(1.5),
            FieldValue::Decimal(2, 314),
            FieldValue::Timestamp(1_700_000_000),
            FieldValue::Void,
            FieldValue::ByteArray(Bytes::from_static(b"\x00\x01")),
        ]),
    );
    let mut session = plain.clone();
    session.extend(method(1, Method::ChannelOpen));
    session.extend(method(1, Method::ConfirmSelect { no_wait: false }));
    session.extend(method(
        1,
        Method::QueueDeclare {
            queue: "lalalala".into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments,
        },
    ));
    session.extend(method(
        1,
        Method::QueueBind {
            queue: "lalalala".into(),
            exchange: "amq.topic".into(),
            routing_key: "hello.mqtt".into(),
            no_wait: false,
            arguments: FieldTable::default(),
        },
    ));
    session.extend(method(
        1,
        Method::BasicPublish {
            exchange: "amq.topic".into(),
            routing_key: "hello.amqp".into(),
            mandatory: true,
            immediate: false,
        },
    ));
    let mut headers = FieldTable::default();
    headers.insert("x-mqtt-publish-qos", FieldValue::U8(1));
    let properties = BasicProperties {
        content_type: Some("text/plain".into()),
        headers: Some(headers),
        delivery_mode: Some(2),
        correlation_id: Some("req-1".into()),
        reply_to: Some("replies.seed".into()),
        expiration: Some("60000".into()),
        timestamp: Some(1_700_000_000),
        ..BasicProperties::default()
    };
    let mut content = BytesMut::new();
    // frame-max 12 splits the body over two body frames.
    encode_content(1, &properties, b"hello amqp", 12, &mut content);
    session.extend_from_slice(&content);
    session.extend(method(
        1,
        Method::BasicQos {
            prefetch_size: 0,
            prefetch_count: 10,
            global: false,
        },
    ));
    session.extend(method(
        1,
        Method::BasicConsume {
            queue: "lalalala".into(),
            consumer_tag: String::new(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            no_wait: false,
            arguments: FieldTable::default(),
        },
    ));
    session.extend(method(
        1,
        Method::BasicAck {
            delivery_tag: 1,
            multiple: true,
        },
    ));
    session.extend(method(
        1,
        Method::BasicNack {
            delivery_tag: 2,
            multiple: false,
            requeue: true,
        },
    ));
    let mut beat = BytesMut::new();
    encode_heartbeat(&mut beat);
    session.extend_from_slice(&beat);
    session.extend(method(
        0,
        Method::ConnectionClose {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        },
    ));
    vec![
        ("open_plain".into(), plain),
        (
            "open_amqplain".into(),
            open(start_ok("AMQPLAIN", amqplain.freeze())),
        ),
        ("session".into(), session),
        ("heartbeat".into(), beat.to_vec()),
    ]
}

/// Every target's seeds, by target name.
pub fn all() -> Vec<(&'static str, Seeds)> {
    vec![
        ("decode_stream", decode_stream()),
        ("decode_versioned", decode_versioned()),
        // A client's stream, CONNECT first, is what the session target reads too.
        ("session", decode_stream()),
        ("amqp_frames", amqp_frames()),
        ("password_file", password_file()),
        ("acl_file", acl_file()),
        ("config", config()),
        ("topic_subject", topic_subject()),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::check_stream;
    use midge_broker::Config;
    use midge_broker::auth::{AclFile, PasswordFile};
    use midge_broker::config::AclLeadingTopics;
    use midge_proto::Decoder;

    fn dir(target: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .join(target)
    }

    /// Writes the seed directories when asked; otherwise checks the files there are the
    /// ones this module makes.
    #[test]
    fn seed_files_are_current() {
        let write = std::env::var_os("MIDGE_FUZZ_WRITE_SEEDS").is_some();
        for (target, seeds) in all() {
            let dir = dir(target);
            if write {
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).unwrap();
            }
            for (name, bytes) in seeds {
                let path = dir.join(&name);
                if write {
                    std::fs::write(&path, &bytes).unwrap();
                } else {
                    let on_disk =
                        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    assert_eq!(on_disk, bytes, "{} is stale", path.display());
                }
            }
        }
    }

    #[test]
    fn decoder_seeds_decode_whole_and_round_trip() {
        for (name, bytes) in decode_stream() {
            let decoded = crate::decode_at_once(Decoder::new(1 << 20), &bytes);
            assert!(decoded.error.is_none(), "{name}: {:?}", decoded.error);
            assert!(decoded.left.is_empty(), "{name}: bytes left over");
            check_stream(Decoder::new(1 << 20), &bytes, 3);
        }
        for (name, bytes) in decode_versioned() {
            let version = crate::VERSIONS[usize::from(bytes[0])];
            let decoded =
                crate::decode_at_once(Decoder::with_version(version, 1 << 20), &bytes[1..]);
            assert_eq!(decoded.packets.len(), 1, "{name}: {:?}", decoded.error);
            check_stream(Decoder::with_version(version, 1 << 20), &bytes[1..], 1);
        }
    }

    #[test]
    fn amqp_seeds_decode_whole_and_round_trip() {
        for (name, bytes) in amqp_frames() {
            let decoded = crate::decode_amqp_in_chunks(&bytes, bytes.len(), 0);
            assert!(decoded.error.is_none(), "{name}: {:?}", decoded.error);
            assert!(decoded.left.is_empty(), "{name}: bytes left over");
            assert!(!decoded.frames.is_empty(), "{name}: no frame");
            crate::check_amqp_stream(&bytes, 3, 0);
            crate::check_amqp_stream(&bytes, 5, 4096);
        }
    }

    #[test]
    fn file_seeds_parse() {
        for (name, bytes) in password_file() {
            let text = String::from_utf8(bytes).unwrap();
            PasswordFile::parse(Path::new(&name), &text).unwrap();
        }
        for (name, bytes) in acl_file() {
            let text = String::from_utf8(bytes).unwrap();
            let rules = text.split('\0').next().unwrap();
            for leading in [AclLeadingTopics::Anonymous, AclLeadingTopics::Everyone] {
                AclFile::parse(Path::new(&name), rules, leading).unwrap();
            }
        }
        for (name, bytes) in config() {
            let text = String::from_utf8(bytes).unwrap();
            let (toml, env) = text.split_once('\0').unwrap_or((&text, ""));
            let env = env
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()));
            Config::from_toml_with_env(toml, &name, env).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
