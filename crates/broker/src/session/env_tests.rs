//! The session machine driven through [`SessionEnv`] by a fake: what it asks of the rest
//! of the broker, and what it does with the answers, with no router or retained store.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use midge_proto::*;

use super::*;
use crate::config::MqttConfig;
use crate::mailbox::Mailbox;
use crate::model::{Delivery, Message, QueueLimits};
use crate::stats::Stats;

const NOW: Millis = 1_000_000;

/// Records every request and answers from what the test set up.
#[derive(Default)]
struct FakeEnv {
    mqtt: MqttConfig,
    stats: Stats,
    /// What `publish` answers: how many sessions the message reached.
    reach: usize,
    /// Filters `subscribe` says the session already had.
    existing: Vec<String>,
    /// What `retained` answers, whatever the filter.
    retained: Vec<Arc<Message>>,
    /// What `memory_pressure` answers.
    pressure: bool,
    calls: Mutex<Vec<String>>,
    published: Mutex<Vec<Message>>,
    handed_over: Mutex<Vec<Delivery>>,
}

impl FakeEnv {
    fn calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

impl SessionEnv for FakeEnv {
    fn mqtt(&self) -> &MqttConfig {
        &self.mqtt
    }

    fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            max_messages: self.mqtt.max_queued_messages,
            max_bytes: self.mqtt.max_queued_bytes,
            policy: self.mqtt.queue_full_policy,
            queue_qos0_offline: self.mqtt.queue_qos0_offline,
        }
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn memory_pressure(&self) -> bool {
        self.pressure
    }

    fn refused_for_memory(&self) {}

    fn publish(&self, message: Message) -> usize {
        self.calls
            .lock()
            .unwrap()
            .push(format!("publish {}", message.topic));
        self.published.lock().unwrap().push(message);
        self.reach
    }

    fn subscribe(
        &self,
        mailbox: &Arc<Mailbox>,
        filter: &str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) -> bool {
        self.calls.lock().unwrap().push(format!(
            "subscribe {} {filter} qos{} id{identifier:?}",
            mailbox.client_id(),
            options.qos as u8
        ));
        self.existing.iter().any(|f| f == filter)
    }

    fn unsubscribe(&self, filter: &str, client_id: &str) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("unsubscribe {client_id} {filter}"));
    }

    fn hand_over(&self, deliveries: &[Delivery], leaving: &str) -> Vec<bool> {
        let mut calls = self.calls.lock().unwrap();
        for delivery in deliveries {
            calls.push(format!(
                "hand over {} from {leaving}",
                delivery.message.topic
            ));
        }
        self.handed_over
            .lock()
            .unwrap()
            .extend_from_slice(deliveries);
        vec![true; deliveries.len()]
    }

    fn retained(&self, filter: &str, _now: Millis) -> Vec<Arc<Message>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("retained {filter}"));
        self.retained.clone()
    }
}

fn session(env: &FakeEnv, client_id: &str) -> (Session, BytesMut, Decoder) {
    let connect = Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    };
    let negotiated = negotiate(&connect, env.mqtt()).expect("CONNECT accepted");
    let mailbox = Mailbox::new(negotiated.client_id.clone());
    mailbox.set_online(true);
    let state = SessionState::new(negotiated.client_id.clone(), mailbox);
    let session = Session::new(state, negotiated, env.mqtt().max_inflight);
    (
        session,
        BytesMut::new(),
        Decoder::with_version(ProtocolVersion::V5, u32::MAX),
    )
}

fn decode(decoder: &mut Decoder, out: &mut BytesMut) -> Vec<Packet> {
    let mut packets = Vec::new();
    while let Some(p) = decoder.decode(out).expect("machine output decodes") {
        packets.push(p);
    }
    packets
}

fn subscribe_packet(filter: &str, qos: QoS, retain_handling: RetainHandling) -> Subscribe {
    Subscribe {
        packet_id: 7,
        filters: vec![(
            filter.to_owned(),
            SubscriptionOptions {
                qos,
                retain_handling,
                ..Default::default()
            },
        )],
        properties: SubscribeProperties {
            subscription_identifier: Some(3),
            user_properties: vec![],
        },
    }
}

fn qos1_publish(topic: &str) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topic.into(),
        packet_id: 11,
        properties: PublishProperties::default(),
        payload: Bytes::from_static(b"hello"),
    }
}

#[test]
fn publish_goes_to_the_env_and_its_reach_decides_the_puback() {
    for (reach, expected) in [
        (0, ReasonCode::NO_MATCHING_SUBSCRIBERS),
        (2, ReasonCode::SUCCESS),
    ] {
        let env = FakeEnv {
            reach,
            ..FakeEnv::default()
        };
        let (mut session, mut out, mut decoder) = session(&env, "pub");
        let resolved = session.resolve_publish(qos1_publish("a/b"), &env).unwrap();
        session.publish(resolved, true, &env, NOW, &mut out);

        assert_eq!(env.calls(), ["publish a/b"]);
        let published = env.published.lock().unwrap();
        assert_eq!(&*published[0].origin, "pub");
        assert_eq!(published[0].payload, Bytes::from_static(b"hello"));
        match decode(&mut decoder, &mut out).as_slice() {
            [Packet::PubAck(ack)] => {
                assert_eq!((ack.packet_id, ack.reason_code), (11, expected));
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

#[test]
fn under_memory_pressure_qos1_is_refused_with_quota_exceeded_and_qos0_still_goes() {
    let env = FakeEnv {
        pressure: true,
        reach: 1,
        ..FakeEnv::default()
    };
    let (mut session, mut out, mut decoder) = session(&env, "pub");
    let resolved = session.resolve_publish(qos1_publish("a/b"), &env).unwrap();
    assert_eq!(
        session.publish(resolved, true, &env, NOW, &mut out),
        Flow::Continue
    );
    assert!(env.calls().is_empty(), "a refused QoS 1 is not routed");
    match decode(&mut decoder, &mut out).as_slice() {
        [Packet::PubAck(ack)] => assert_eq!(ack.reason_code, ReasonCode::QUOTA_EXCEEDED),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let qos0 = Publish {
        qos: QoS::AtMostOnce,
        packet_id: 0,
        ..qos1_publish("a/c")
    };
    let resolved = session.resolve_publish(qos0, &env).unwrap();
    session.publish(resolved, true, &env, NOW, &mut out);
    assert_eq!(env.calls(), ["publish a/c"]);
}

#[test]
fn a_refused_publish_never_reaches_the_env() {
    let env = FakeEnv::default();
    let (mut session, mut out, mut decoder) = session(&env, "pub");
    let resolved = session.resolve_publish(qos1_publish("a/b"), &env).unwrap();
    session.publish(resolved, false, &env, NOW, &mut out);
    assert!(env.calls().is_empty());
    match decode(&mut decoder, &mut out).as_slice() {
        [Packet::PubAck(ack)] => assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[test]
fn subscribe_asks_the_env_and_sends_its_retained_messages_after_suback() {
    let retained = Arc::new(Message::internal(
        "a/b".into(),
        Bytes::from_static(b"kept"),
        true,
        NOW,
    ));
    let env = FakeEnv {
        retained: vec![retained],
        existing: vec!["x/#".into()],
        ..FakeEnv::default()
    };
    let (mut session, mut out, mut decoder) = session(&env, "sub");
    let subscribe = subscribe_packet("a/+", QoS::AtLeastOnce, RetainHandling::SendAtSubscribe);
    session
        .subscribe(subscribe, &[true], &env, NOW, &mut out)
        .unwrap();
    assert_eq!(
        env.calls(),
        ["subscribe sub a/+ qos1 idSome(3)", "retained a/+"]
    );
    session.pump(NOW, &mut out, usize::MAX);
    match decode(&mut decoder, &mut out).as_slice() {
        [Packet::SubAck(ack), Packet::Publish(p)] => {
            assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_1]);
            assert_eq!((p.topic.as_str(), p.retain), ("a/b", true));
            assert_eq!(p.properties.subscription_identifiers, [3]);
        }
        other => panic!("expected SUBACK then the retained PUBLISH, got {other:?}"),
    }

    // Retain Handling 1: the env says the subscription existed, so nothing is sent.
    let subscribe = subscribe_packet("x/#", QoS::AtLeastOnce, RetainHandling::SendIfNew);
    session
        .subscribe(subscribe, &[true], &env, NOW, &mut out)
        .unwrap();
    assert_eq!(env.calls(), ["subscribe sub x/# qos1 idSome(3)"]);
    session.pump(NOW, &mut out, usize::MAX);
    assert!(matches!(
        decode(&mut decoder, &mut out).as_slice(),
        [Packet::SubAck(_)]
    ));
}

#[test]
fn leaving_a_shared_subscription_hands_its_queued_deliveries_to_the_env() {
    let env = FakeEnv::default();
    let (mut session, mut out, mut decoder) = session(&env, "member");
    let subscribe = subscribe_packet("$share/g/t", QoS::AtLeastOnce, RetainHandling::DontSend);
    session
        .subscribe(subscribe, &[true], &env, NOW, &mut out)
        .unwrap();
    assert_eq!(env.calls(), ["subscribe member $share/g/t qos1 idSome(3)"]);

    let limits = QueueLimits {
        max_messages: 0,
        max_bytes: 0,
        policy: crate::config::QueueFullPolicy::default(),
        queue_qos0_offline: false,
    };
    let shared = |topic: &str| Delivery {
        message: Arc::new(Message::internal(topic.into(), Bytes::new(), false, NOW)),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![],
        shared: Some(Arc::from("$share/g/t")),
    };
    let mailbox = session.state().mailbox.clone();
    mailbox.push(shared("t"), &limits);
    mailbox.push(
        Delivery {
            shared: None,
            ..shared("other")
        },
        &limits,
    );

    let unsubscribe = Unsubscribe {
        packet_id: 8,
        filters: vec!["$share/g/t".into()],
        user_properties: vec![],
    };
    session
        .handle(Packet::Unsubscribe(unsubscribe), &env, &mut out)
        .unwrap();
    assert_eq!(
        env.calls(),
        ["unsubscribe member $share/g/t", "hand over t from member"]
    );
    // The handed-over delivery left the mailbox; the unshared one stays.
    assert_eq!(mailbox.len(), 1);
    assert_eq!(env.handed_over.lock().unwrap().len(), 1);
    match decode(&mut decoder, &mut out).as_slice() {
        [Packet::SubAck(_), Packet::UnsubAck(ack)] => {
            assert_eq!(ack.reason_codes, [ReasonCode::SUCCESS]);
        }
        other => panic!("expected SUBACK, UNSUBACK, got {other:?}"),
    }
}
