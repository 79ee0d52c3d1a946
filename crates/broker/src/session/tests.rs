//! Scenario tests of the session machine, with virtual time and no network: two or more
//! sessions on one in-memory broker, each writing into its own output buffer.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use midge_proto::*;

use super::*;
use crate::broker::Broker;
use crate::config::Config;
use crate::mailbox::Mailbox;

const NOW: Millis = 1_000_000;

struct Client {
    session: Session,
    out: BytesMut,
    decoder: Decoder,
}

fn broker() -> Arc<Broker> {
    Broker::new(Config::default())
}

fn connect_packet(protocol: ProtocolVersion, client_id: &str) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

fn client_with(broker: &Broker, connect: Connect) -> Client {
    let negotiated = negotiate(&connect, &broker.config().mqtt).expect("CONNECT accepted");
    let mailbox = Mailbox::new(negotiated.client_id.clone());
    mailbox.set_online(true);
    let state = SessionState::new(negotiated.client_id.clone(), mailbox);
    let protocol = negotiated.protocol;
    let mut session = Session::new(state, negotiated, broker.config().mqtt.max_inflight);
    let mut out = BytesMut::new();
    let connack = ConnAck {
        session_present: false,
        reason_code: ReasonCode::SUCCESS,
        properties: Default::default(),
    };
    session.start(connack, NOW, &mut out);
    let mut client = Client {
        session,
        out,
        decoder: Decoder::with_version(protocol, u32::MAX),
    };
    assert!(matches!(client.take().as_slice(), [Packet::ConnAck(_)]));
    client
}

fn client(broker: &Broker, protocol: ProtocolVersion, client_id: &str) -> Client {
    client_with(broker, connect_packet(protocol, client_id))
}

fn publish(topic: &str, qos: QoS, packet_id: u16, payload: &'static str) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: PublishProperties::default(),
        payload: Bytes::from_static(payload.as_bytes()),
    }
}

fn sub_options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..Default::default()
    }
}

impl Client {
    /// Everything the machine wrote since the last call, decoded.
    fn take(&mut self) -> Vec<Packet> {
        let mut packets = Vec::new();
        while let Some(p) = self
            .decoder
            .decode(&mut self.out)
            .expect("machine output decodes")
        {
            packets.push(p);
        }
        assert!(self.out.is_empty(), "partial packet left in output");
        packets
    }

    fn send(&mut self, broker: &Broker, packet: Packet) -> Result<Flow, Violation> {
        self.send_at(broker, packet, NOW)
    }

    fn send_at(&mut self, broker: &Broker, packet: Packet, now: Millis) -> Result<Flow, Violation> {
        match packet {
            Packet::Publish(p) => {
                let resolved = self.session.resolve_publish(p, broker)?;
                self.session
                    .publish(resolved, true, broker, now, &mut self.out);
                Ok(Flow::Continue)
            }
            Packet::Subscribe(s) => {
                let verdicts = vec![true; s.filters.len()];
                self.session
                    .subscribe(s, &verdicts, broker, now, &mut self.out)
                    .map(|()| Flow::Continue)
            }
            other => self.session.handle(other, broker, &mut self.out),
        }
    }

    fn subscribe(
        &mut self,
        broker: &Broker,
        filters: &[(&str, SubscriptionOptions)],
        id: Option<u32>,
    ) -> Vec<ReasonCode> {
        let subscribe = Subscribe {
            packet_id: 1,
            filters: filters.iter().map(|(f, o)| ((*f).to_owned(), *o)).collect(),
            properties: SubscribeProperties {
                subscription_identifier: id,
                user_properties: vec![],
            },
        };
        self.send(broker, Packet::Subscribe(subscribe))
            .expect("SUBSCRIBE accepted");
        match self.take().first() {
            Some(Packet::SubAck(ack)) => ack.reason_codes.clone(),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Pumps the mailbox and returns the PUBLISH packets written.
    fn deliveries_at(&mut self, now: Millis) -> Vec<Publish> {
        self.session.pump(now, &mut self.out, usize::MAX);
        self.take()
            .into_iter()
            .map(|p| match p {
                Packet::Publish(p) => p,
                other => panic!("expected PUBLISH, got {other:?}"),
            })
            .collect()
    }

    fn deliveries(&mut self) -> Vec<Publish> {
        self.deliveries_at(NOW)
    }
}

#[test]
fn qos1_publish_is_acknowledged_and_delivered_then_acknowledged_by_the_subscriber() {
    let b = broker();
    let mut sub = client(&b, ProtocolVersion::V5, "sub");
    let mut publisher = client(&b, ProtocolVersion::V5, "pub");
    assert_eq!(
        sub.subscribe(&b, &[("a/+", sub_options(QoS::AtLeastOnce))], None),
        [ReasonCode::GRANTED_QOS_1]
    );

    publisher
        .send(
            &b,
            Packet::Publish(publish("a/b", QoS::AtLeastOnce, 7, "hi")),
        )
        .unwrap();
    assert_eq!(publisher.take(), [Packet::PubAck(PubResponse::success(7))]);

    let got = sub.deliveries();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].topic.as_str(), got[0].qos, &got[0].payload[..]),
        ("a/b", QoS::AtLeastOnce, &b"hi"[..])
    );
    assert_eq!(sub.session.state().inflight.len(), 1);
    sub.send(&b, Packet::PubAck(PubResponse::success(got[0].packet_id)))
        .unwrap();
    assert!(sub.session.state().inflight.is_empty());
}

#[test]
fn v5_publish_without_subscribers_is_acknowledged_with_no_matching_subscribers() {
    let b = broker();
    let mut publisher = client(&b, ProtocolVersion::V5, "pub");
    publisher
        .send(
            &b,
            Packet::Publish(publish("nobody", QoS::AtLeastOnce, 1, "x")),
        )
        .unwrap();
    let Packet::PubAck(ack) = &publisher.take()[0] else {
        panic!()
    };
    assert_eq!(ack.reason_code, ReasonCode::NO_MATCHING_SUBSCRIBERS);
}

#[test]
fn qos2_duplicate_publish_is_not_routed_twice() {
    let b = broker();
    let mut sub = client(&b, ProtocolVersion::V311, "sub");
    let mut publisher = client(&b, ProtocolVersion::V311, "pub");
    sub.subscribe(&b, &[("t", sub_options(QoS::ExactlyOnce))], None);

    let first = publish("t", QoS::ExactlyOnce, 9, "once");
    let mut again = first.clone();
    again.dup = true;
    publisher.send(&b, Packet::Publish(first)).unwrap();
    publisher.send(&b, Packet::Publish(again)).unwrap();
    assert_eq!(
        publisher.take(),
        [
            Packet::PubRec(PubResponse::success(9)),
            Packet::PubRec(PubResponse::success(9))
        ]
    );
    publisher
        .send(&b, Packet::PubRel(PubResponse::success(9)))
        .unwrap();
    assert_eq!(publisher.take(), [Packet::PubComp(PubResponse::success(9))]);
    assert_eq!(sub.deliveries().len(), 1);

    // After PUBREL the id is free: the same id is a new message.
    publisher
        .send(
            &b,
            Packet::Publish(publish("t", QoS::ExactlyOnce, 9, "twice")),
        )
        .unwrap();
    assert_eq!(sub.deliveries().len(), 1);
}

#[test]
fn qos2_outbound_goes_through_pubrec_pubrel_pubcomp() {
    let b = broker();
    let mut sub = client(&b, ProtocolVersion::V5, "sub");
    let mut publisher = client(&b, ProtocolVersion::V5, "pub");
    sub.subscribe(&b, &[("t", sub_options(QoS::ExactlyOnce))], None);
    publisher
        .send(&b, Packet::Publish(publish("t", QoS::ExactlyOnce, 1, "x")))
        .unwrap();
    let got = sub.deliveries();
    let id = got[0].packet_id;
    assert_eq!(got[0].qos, QoS::ExactlyOnce);

    sub.send(&b, Packet::PubRec(PubResponse::success(id)))
        .unwrap();
    assert_eq!(sub.take(), [Packet::PubRel(PubResponse::success(id))]);
    assert_eq!(sub.session.state().inflight[0].stage, Stage::AwaitPubComp);
    sub.send(&b, Packet::PubComp(PubResponse::success(id)))
        .unwrap();
    assert!(sub.session.state().inflight.is_empty());
}

#[test]
fn pubrel_for_unknown_id_gets_pubcomp_packet_identifier_not_found_in_v5() {
    let b = broker();
    let mut c = client(&b, ProtocolVersion::V5, "c");
    c.send(&b, Packet::PubRel(PubResponse::success(77)))
        .unwrap();
    let Packet::PubComp(comp) = &c.take()[0] else {
        panic!()
    };
    assert_eq!(
        (comp.packet_id, comp.reason_code),
        (77, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)
    );
}

#[test]
fn packet_ids_are_not_reused_while_in_flight() {
    let b = broker();
    let mut sub = client(&b, ProtocolVersion::V311, "sub");
    let mut publisher = client(&b, ProtocolVersion::V311, "pub");
    sub.subscribe(&b, &[("t", sub_options(QoS::AtLeastOnce))], None);
    // Wrap the id counter around while id 1 stays in flight.
    publisher
        .send(&b, Packet::Publish(publish("t", QoS::AtLeastOnce, 1, "a")))
        .unwrap();
    let held = sub.deliveries()[0].packet_id;
    for _ in 0..70_000u32 {
        publisher
            .send(&b, Packet::Publish(publish("t", QoS::AtLeastOnce, 1, "b")))
            .unwrap();
        let id = sub.deliveries()[0].packet_id;
        assert_ne!(id, held);
        assert_ne!(id, 0);
        sub.send(&b, Packet::PubAck(PubResponse::success(id)))
            .unwrap();
    }
    publisher.take();
}

#[test]
fn receive_maximum_of_the_client_bounds_messages_in_flight() {
    let b = broker();
    let mut connect = connect_packet(ProtocolVersion::V5, "sub");
    connect.properties.receive_maximum = Some(2);
    let mut sub = client_with(&b, connect);
    let mut publisher = client(&b, ProtocolVersion::V5, "pub");
    sub.subscribe(&b, &[("t", sub_options(QoS::AtLeastOnce))], None);
    for i in 1..=3 {
        publisher
            .send(&b, Packet::Publish(publish("t", QoS::AtLeastOnce, i, "x")))
            .unwrap();
    }
    let first = sub.deliveries();
    assert_eq!(first.len(), 2, "only Receive Maximum messages go out");
    assert!(sub.deliveries().is_empty());
    sub.send(&b, Packet::PubAck(PubResponse::success(first[0].packet_id)))
        .unwrap();
    assert_eq!(sub.deliveries().len(), 1);
}

#[test]
fn qos2_beyond_our_receive_maximum_is_a_violation() {
    let mut config = Config::default();
    config.mqtt.max_inflight = 2;
    let b = Broker::new(config);
    let mut c = client(&b, ProtocolVersion::V5, "c");
    for id in 1..=2 {
        c.send(&b, Packet::Publish(publish("t", QoS::ExactlyOnce, id, "x")))
            .unwrap();
    }
    let err = c
        .send(&b, Packet::Publish(publish("t", QoS::ExactlyOnce, 3, "x")))
        .unwrap_err();
    assert_eq!(err.reason, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
}

#[test]
fn v3_qos2_beyond_max_inflight_is_accepted_as_v3_cannot_be_told_a_receive_maximum() {
    let mut config = Config::default();
    config.mqtt.max_inflight = 2;
    let b = Broker::new(config);
    let mut c = client(&b, ProtocolVersion::V311, "c");
    for id in 1..=5 {
        c.send(&b, Packet::Publish(publish("t", QoS::ExactlyOnce, id, "x")))
            .unwrap();
    }
    assert_eq!(c.session.state().awaiting_pubrel.len(), 5);
}

#[test]
fn inbound_topic_alias_is_learned_and_used() {
    let b = broker();
    let mut sub = client(&b, ProtocolVersion::V5, "sub");
    let mut publisher = client(&b, ProtocolVersion::V5, "pub");
    sub.subscribe(
        &b,
        &[("long/topic/name", sub_options(QoS::AtMostOnce))],
        None,
    );

    let mut first = publish("long/topic/name", QoS::AtMostOnce, 0, "1");
    first.properties.topic_alias = Some(3);
    publisher.send(&b, Packet::Publish(first)).unwrap();
    let mut second = publish("", QoS::AtMostOnce, 0, "2");
    second.properties.topic_alias = Some(3);
    publisher.send(&b, Packet::Publish(second)).unwrap();
    let topics: Vec<String> = sub.deliveries().into_iter().map(|p| p.topic).collect();
    assert_eq!(topics, ["long/topic/name", "long/topic/name"]);

    let mut unknown = publish("", QoS::AtMostOnce, 0, "3");
    unknown.properties.topic_alias = Some(4);
    assert_eq!(
        publisher
            .send(&b, Packet::Publish(unknown))
            .unwrap_err()
            .reason,
        ReasonCode::PROTOCOL_ERROR
    );
}

#[test]
fn topic_alias_above_our_maximum_is_invalid() {
    let b = broker();
    let mut c = client(&b, ProtocolVersion::V5, "c");
    let mut p = publish("t", QoS::AtMostOnce, 0, "x");
    p.properties.topic_alias = Some(b.config().mqtt.topic_alias_maximum + 1);
    assert_eq!(
        c.send(&b, Packet::Publish(p)).unwrap_err().reason,
        ReasonCode::TOPIC_ALIAS_INVALID
    );
}

#[test]
fn outbound_topic_alias_is_used_when_the_client_allows_it() {
    let b = broker();
    let mut connect = connect_packet(ProtocolVersion::V5, "sub");
    connect.properties.topic_alias_maximum = Some(1);
    let mut sub = client_with(&b, connect);
    let mut publisher = client(&b, ProtocolVersion::V5, "pub");
    sub.subscribe(&b, &[("#", sub_options(QoS::AtMostOnce))], None);
    for topic in ["a", "a", "b"] {
        publisher
            .send(&b, Packet::Publish(publish(topic, QoS::AtMostOnce, 0, "x")))
            .unwrap();
    }
    let got = sub.deliveries();
    let seen: Vec<(&str, Option<u16>)> = got
        .iter()
        .map(|p| (p.topic.as_str(), p.properties.topic_alias))
        .collect();
    // First use carries topic and alias, then the alias alone; the maximum (1) is used up
    // so "b" goes without one.
    assert_eq!(seen, [("a", Some(1)), ("", Some(1)), ("b", None)]);
}

#[test]
fn message_larger_than_the_client_maximum_packet_size_is_dropped() {
    let b = broker();
    let mut connect = connect_packet(ProtocolVersion::V5, "sub");
    connect.properties.maximum_packet_size = Some(64);
    let mut sub = client_with(&b, connect);
    let mut publisher = client(&b, ProtocolVersion::V5, "pub");
    sub.subscribe(&b, &[("t", sub_options(QoS::AtLeastOnce))], None);
    publisher
        .send(
            &b,
            Packet::Publish(publish("t", QoS::AtLeastOnce, 1, "small")),
        )
        .unwrap();
    // The counts are this thread's (`LocalStats`): start from none.
    crate::stats::LocalStats::take();
    let big: &'static str = Box::leak("x".repeat(100).into_boxed_str());
    publisher
        .send(&b, Packet::Publish(publish("t", QoS::AtLeastOnce, 2, big)))
        .unwrap();
    let got = sub.deliveries();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"small");
    assert_eq!(
        sub.session.state().inflight.len(),
        1,
        "the dropped message holds no packet id"
    );
    assert_eq!(crate::stats::LocalStats::peek().publish_dropped, 1);
}

#[test]
fn retained_messages_follow_retain_handling_and_keep_the_retain_flag() {
    let b = broker();
    let mut publisher = client(&b, ProtocolVersion::V5, "pub");
    let mut retained = publish("r/1", QoS::AtLeastOnce, 1, "kept");
    retained.retain = true;
    publisher.send(&b, Packet::Publish(retained)).unwrap();

    let mut sub = client(&b, ProtocolVersion::V5, "sub");
    sub.subscribe(&b, &[("r/+", sub_options(QoS::AtMostOnce))], None);
    let got = sub.deliveries();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].retain,
        "[MQTT-3.3.1-8] retained at subscribe keeps RETAIN"
    );
    assert_eq!(got[0].qos, QoS::AtMostOnce);

    // Retain handling 1: only for a new subscription.
    let if_new = SubscriptionOptions {
        retain_handling: RetainHandling::SendIfNew,
        ..sub_options(QoS::AtMostOnce)
    };
    sub.subscribe(&b, &[("r/+", if_new)], None);
    assert!(sub.deliveries().is_empty());
    sub.subscribe(&b, &[("r/#", if_new)], None);
    assert_eq!(sub.deliveries().len(), 1);

    // Retain handling 2: never.
    let never = SubscriptionOptions {
        retain_handling: RetainHandling::DontSend,
        ..sub_options(QoS::AtMostOnce)
    };
    let mut other = client(&b, ProtocolVersion::V5, "other");
    other.subscribe(&b, &[("r/1", never)], None);
    assert!(other.deliveries().is_empty());
}

#[test]
fn live_messages_lose_retain_unless_retain_as_published() {
    let b = broker();
    let mut plain = client(&b, ProtocolVersion::V5, "plain");
    let mut rap = client(&b, ProtocolVersion::V5, "rap");
    plain.subscribe(&b, &[("t", sub_options(QoS::AtMostOnce))], None);
    let keep = SubscriptionOptions {
        retain_as_published: true,
        ..sub_options(QoS::AtMostOnce)
    };
    rap.subscribe(&b, &[("t", keep)], None);
    let mut publisher = client(&b, ProtocolVersion::V5, "pub");
    let mut p = publish("t", QoS::AtMostOnce, 0, "x");
    p.retain = true;
    publisher.send(&b, Packet::Publish(p)).unwrap();
    assert!(!plain.deliveries()[0].retain);
    assert!(rap.deliveries()[0].retain);
}

#[test]
fn empty_retained_payload_deletes_the_retained_message() {
    let b = broker();
    let mut publisher = client(&b, ProtocolVersion::V311, "pub");
    let mut set = publish("r", QoS::AtMostOnce, 0, "v");
    set.retain = true;
    publisher.send(&b, Packet::Publish(set)).unwrap();
    assert_eq!(b.retained.len(), 1);
    let mut clear = publish("r", QoS::AtMostOnce, 0, "");
    clear.retain = true;
    publisher.send(&b, Packet::Publish(clear)).unwrap();
    assert_eq!(b.retained.len(), 0);
}

#[test]
fn no_local_subscription_does_not_receive_own_messages() {
    let b = broker();
    let mut c = client(&b, ProtocolVersion::V5, "c");
    let no_local = SubscriptionOptions {
        no_local: true,
        ..sub_options(QoS::AtMostOnce)
    };
    c.subscribe(&b, &[("t", no_local)], None);
    c.send(&b, Packet::Publish(publish("t", QoS::AtMostOnce, 0, "x")))
        .unwrap();
    assert!(c.deliveries().is_empty());
}

#[test]
fn subscription_identifiers_are_carried_on_deliveries() {
    let b = broker();
    let mut sub = client(&b, ProtocolVersion::V5, "sub");
    sub.subscribe(&b, &[("a/#", sub_options(QoS::AtMostOnce))], Some(11));
    sub.subscribe(&b, &[("a/b", sub_options(QoS::AtMostOnce))], Some(22));
    let mut publisher = client(&b, ProtocolVersion::V5, "pub");
    publisher
        .send(&b, Packet::Publish(publish("a/b", QoS::AtMostOnce, 0, "x")))
        .unwrap();
    let got = sub.deliveries();
    assert_eq!(got.len(), 1, "one copy for overlapping subscriptions");
    let mut ids = got[0].properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, [11, 22]);
}

#[test]
fn expired_messages_are_not_delivered_and_the_remainder_is_forwarded() {
    let b = broker();
    let mut sub = client(&b, ProtocolVersion::V5, "sub");
    sub.subscribe(&b, &[("t", sub_options(QoS::AtLeastOnce))], None);
    let mut publisher = client(&b, ProtocolVersion::V5, "pub");
    let mut p = publish("t", QoS::AtLeastOnce, 1, "x");
    p.properties.message_expiry_interval = Some(10);
    publisher.send(&b, Packet::Publish(p.clone())).unwrap();
    // Four seconds later: 6 seconds remain [MQTT-3.3.2-6].
    let got = sub.deliveries_at(NOW + 4_000);
    assert_eq!(got[0].properties.message_expiry_interval, Some(6));
    sub.send(&b, Packet::PubAck(PubResponse::success(got[0].packet_id)))
        .unwrap();

    publisher.send(&b, Packet::Publish(p)).unwrap();
    assert!(
        sub.deliveries_at(NOW + 10_000).is_empty(),
        "[MQTT-3.3.2-5] expired"
    );
}

#[test]
fn clients_may_not_publish_to_sys_topics() {
    let b = broker();
    let mut sub = client(&b, ProtocolVersion::V311, "sub");
    sub.subscribe(&b, &[("$SYS/#", sub_options(QoS::AtLeastOnce))], None);

    let mut v5 = client(&b, ProtocolVersion::V5, "v5");
    v5.send(
        &b,
        Packet::Publish(publish("$SYS/broker/uptime", QoS::AtLeastOnce, 1, "0")),
    )
    .unwrap();
    let Packet::PubAck(ack) = &v5.take()[0] else {
        panic!()
    };
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);

    // v3 cannot be told: acknowledged, not routed [MQTT-3.3.5-2].
    let mut v3 = client(&b, ProtocolVersion::V311, "v3");
    v3.send(
        &b,
        Packet::Publish(publish("$SYS/broker/uptime", QoS::AtLeastOnce, 1, "0")),
    )
    .unwrap();
    assert_eq!(v3.take(), [Packet::PubAck(PubResponse::success(1))]);
    assert!(sub.deliveries().is_empty());
}

#[test]
fn invalid_filters_are_refused_per_entry() {
    let b = broker();
    let mut v5 = client(&b, ProtocolVersion::V5, "v5");
    let reasons = v5.subscribe(
        &b,
        &[
            ("a/#/b", sub_options(QoS::AtMostOnce)),
            ("ok", sub_options(QoS::ExactlyOnce)),
        ],
        None,
    );
    assert_eq!(
        reasons,
        [ReasonCode::TOPIC_FILTER_INVALID, ReasonCode::GRANTED_QOS_2]
    );
    let mut v3 = client(&b, ProtocolVersion::V311, "v3");
    let reasons = v3.subscribe(&b, &[("a+", sub_options(QoS::AtMostOnce))], None);
    // The v3 encoder writes 0x80 for any failure; the v3 decoder reads it back as 0x80.
    assert_eq!(reasons, [ReasonCode::UNSPECIFIED_ERROR]);
}

#[test]
fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let b = broker();
    let mut c = client(&b, ProtocolVersion::V5, "c");
    let subscribe = Subscribe {
        packet_id: 1,
        filters: vec![(
            "$share/g/t".into(),
            SubscriptionOptions {
                no_local: true,
                ..Default::default()
            },
        )],
        properties: SubscribeProperties::default(),
    };
    assert_eq!(
        c.send(&b, Packet::Subscribe(subscribe)).unwrap_err().reason,
        ReasonCode::PROTOCOL_ERROR
    );
}

#[test]
fn subscription_identifier_from_a_client_publish_is_a_protocol_error() {
    let b = broker();
    let mut c = client(&b, ProtocolVersion::V5, "c");
    let mut p = publish("t", QoS::AtMostOnce, 0, "x");
    p.properties.subscription_identifiers = vec![1];
    assert_eq!(
        c.send(&b, Packet::Publish(p)).unwrap_err().reason,
        ReasonCode::PROTOCOL_ERROR
    );
}

#[test]
fn second_connect_is_a_protocol_error() {
    let b = broker();
    let mut c = client(&b, ProtocolVersion::V311, "c");
    let err = c
        .send(
            &b,
            Packet::Connect(Box::new(connect_packet(ProtocolVersion::V311, "c"))),
        )
        .unwrap_err();
    assert_eq!(err.reason, ReasonCode::PROTOCOL_ERROR);
}

#[test]
fn disconnect_decides_the_will_and_may_not_raise_expiry_from_zero() {
    let b = broker();
    let will = Will {
        topic: "w".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: WillProperties::default(),
    };
    let mut connect = connect_packet(ProtocolVersion::V5, "c");
    connect.will = Some(will.clone());

    let mut normal = client_with(&b, connect.clone());
    assert_eq!(
        normal.send(&b, Packet::Disconnect(Disconnect::default())),
        Ok(Flow::Disconnect)
    );
    assert!(
        normal.session.into_parts().1.is_none(),
        "normal DISCONNECT discards the will"
    );

    let mut with_will = client_with(&b, connect.clone());
    let keep = Disconnect {
        reason_code: ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
        ..Default::default()
    };
    assert_eq!(
        with_will.send(&b, Packet::Disconnect(keep)),
        Ok(Flow::Disconnect)
    );
    assert_eq!(with_will.session.into_parts().1, Some(will));

    let mut raising = client_with(&b, connect);
    let raise = Disconnect {
        properties: DisconnectProperties {
            session_expiry_interval: Some(60),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(
        raising
            .send(&b, Packet::Disconnect(raise))
            .unwrap_err()
            .reason,
        ReasonCode::PROTOCOL_ERROR
    );
}

#[test]
fn resume_resends_publish_with_dup_and_pubrel_for_pubrec_d_messages() {
    let b = broker();
    let mut sub = client(&b, ProtocolVersion::V311, "sub");
    let mut publisher = client(&b, ProtocolVersion::V311, "pub");
    sub.subscribe(&b, &[("t", sub_options(QoS::ExactlyOnce))], None);
    publisher
        .send(&b, Packet::Publish(publish("t", QoS::AtLeastOnce, 1, "q1")))
        .unwrap();
    publisher
        .send(&b, Packet::Publish(publish("t", QoS::ExactlyOnce, 2, "q2")))
        .unwrap();
    let got = sub.deliveries();
    assert_eq!(got.len(), 2);
    sub.send(&b, Packet::PubRec(PubResponse::success(got[1].packet_id)))
        .unwrap();
    sub.take();

    // The connection drops; a new one resumes the same state.
    let (state, _) = sub.session.into_parts();
    let negotiated = negotiate(
        &connect_packet(ProtocolVersion::V311, "sub"),
        &b.config().mqtt,
    )
    .unwrap();
    let mut session = Session::new(state, negotiated, 32);
    let mut out = BytesMut::new();
    let connack = ConnAck {
        session_present: true,
        reason_code: ReasonCode::SUCCESS,
        properties: Default::default(),
    };
    session.start(connack, NOW, &mut out);
    let mut resumed = Client {
        session,
        out,
        decoder: Decoder::with_version(ProtocolVersion::V311, u32::MAX),
    };
    let packets = resumed.take();
    assert!(matches!(&packets[0], Packet::ConnAck(c) if c.session_present));
    match &packets[1] {
        Packet::Publish(p) => {
            assert!(p.dup && p.packet_id == got[0].packet_id && &p.payload[..] == b"q1")
        }
        other => panic!("expected PUBLISH with DUP, got {other:?}"),
    }
    assert_eq!(
        packets[2],
        Packet::PubRel(PubResponse::success(got[1].packet_id))
    );
}

#[test]
fn auth_packet_without_a_method_is_a_protocol_error() {
    let b = broker();
    let mut c = client(&b, ProtocolVersion::V5, "c");
    assert_eq!(
        c.send(&b, Packet::Auth(Auth::default()))
            .unwrap_err()
            .reason,
        ReasonCode::PROTOCOL_ERROR
    );
}

#[test]
fn unsubscribe_reports_whether_the_subscription_existed() {
    let b = broker();
    let mut c = client(&b, ProtocolVersion::V5, "c");
    c.subscribe(&b, &[("t", sub_options(QoS::AtMostOnce))], None);
    let unsubscribe = Unsubscribe {
        packet_id: 5,
        filters: vec!["t".into(), "u".into()],
        user_properties: vec![],
    };
    c.send(&b, Packet::Unsubscribe(unsubscribe)).unwrap();
    let Packet::UnsubAck(ack) = &c.take()[0] else {
        panic!()
    };
    assert_eq!(
        ack.reason_codes,
        [ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
    );
    assert!(b.router.is_empty());
}
