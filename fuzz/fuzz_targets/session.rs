//! The session machine, driven by what a client sends and by time, with the rest of the
//! broker replaced by a fake `SessionEnv` that routes the client's publishes back to its
//! own subscriptions (so deliveries, in-flight windows and acknowledgements all run) and
//! keeps retained messages.
//!
//! The input is a client's byte stream: a CONNECT (any version), then any packets. Each
//! packet advances the clock by 100 ms per byte it took, so expiry is reached too. Topics
//! and filters starting with `deny` are refused by "authorization".
//!
//! Checks: no panic; everything the session writes decodes in the client's version and
//! fits its Maximum Packet Size; in-flight messages stay within the send window and have
//! distinct packet identifiers.
#![no_main]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use midge_broker::config::MqttConfig;
use midge_broker::mailbox::Mailbox;
use midge_broker::model::{Delivery, Message, Millis, QueueLimits};
use midge_broker::session::{Flow, Session, SessionEnv, SessionState, negotiate};
use midge_broker::stats::Stats;
use midge_proto::topic;
use midge_proto::{ConnAck, Decoder, Packet, QoS, ReasonCode, SubscriptionOptions};

struct Sub {
    filter: String,
    options: SubscriptionOptions,
    identifier: Option<u32>,
    mailbox: Arc<Mailbox>,
}

#[derive(Default)]
struct LoopbackEnv {
    mqtt: MqttConfig,
    stats: Stats,
    subs: Mutex<Vec<Sub>>,
    retained: Mutex<Vec<Arc<Message>>>,
}

fn plain(filter: &str) -> (&str, Option<Arc<str>>) {
    match topic::parse_shared(filter) {
        Ok(Some(shared)) => (shared.filter, Some(filter.into())),
        _ => (filter, None),
    }
}

impl SessionEnv for LoopbackEnv {
    fn mqtt(&self) -> &MqttConfig {
        &self.mqtt
    }

    fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            max_messages: 16,
            max_bytes: 4096,
            policy: self.mqtt.queue_full_policy,
            queue_qos0_offline: self.mqtt.queue_qos0_offline,
        }
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn memory_pressure(&self) -> bool {
        false
    }

    fn refused_for_memory(&self) {}

    fn publish(&self, message: Message) -> usize {
        let message = Arc::new(message);
        if message.retain {
            let mut retained = self.retained.lock().unwrap();
            retained.retain(|m| m.topic != message.topic);
            if !message.payload.is_empty() {
                retained.push(message.clone());
            }
        }
        let limits = self.queue_limits();
        let subs = self.subs.lock().unwrap();
        let mut reached = 0;
        for sub in subs.iter() {
            let (filter, shared) = plain(&sub.filter);
            if !topic::matches(filter, &message.topic) {
                continue;
            }
            if sub.options.no_local && shared.is_none() {
                continue;
            }
            let delivery = Delivery {
                message: message.clone(),
                qos: message.qos.min(sub.options.qos),
                retain: sub.options.retain_as_published && message.retain,
                subscription_ids: sub.identifier.into_iter().collect(),
                shared,
            };
            sub.mailbox.push(delivery, &limits);
            reached += 1;
        }
        reached
    }

    fn subscribe(
        &self,
        mailbox: &Arc<Mailbox>,
        filter: &str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) -> bool {
        let mut subs = self.subs.lock().unwrap();
        let had = subs.iter().any(|s| s.filter == filter);
        subs.retain(|s| s.filter != filter);
        subs.push(Sub {
            filter: filter.to_owned(),
            options,
            identifier,
            mailbox: mailbox.clone(),
        });
        had
    }

    fn unsubscribe(&self, filter: &str, _client_id: &str) {
        self.subs.lock().unwrap().retain(|s| s.filter != filter);
    }

    fn hand_over(&self, deliveries: &[Delivery], _leaving: &str) -> Vec<bool> {
        vec![false; deliveries.len()]
    }

    fn retained(&self, filter: &str, now: Millis) -> Vec<Arc<Message>> {
        let (filter, _) = plain(filter);
        let retained = self.retained.lock().unwrap();
        retained
            .iter()
            .filter(|m| topic::matches(filter, &m.topic))
            .filter(|m| m.expires_at.is_none_or(|at| at > now))
            .cloned()
            .collect()
    }
}

const MAX_PACKET_SIZE: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    let env = LoopbackEnv::default();
    let mut input = BytesMut::from(data);
    let mut decoder = Decoder::new(MAX_PACKET_SIZE);
    let Ok(Some(Packet::Connect(connect))) = decoder.decode(&mut input) else {
        return;
    };
    let Ok(negotiated) = negotiate(&connect, env.mqtt()) else {
        return;
    };
    let version = connect.protocol;
    let max_packet_size = negotiated.client_max_packet_size as usize;
    let window = usize::from(
        negotiated
            .client_receive_maximum
            .min(env.mqtt().max_inflight),
    );
    let mailbox = Mailbox::new(negotiated.client_id.clone());
    mailbox.set_online(true);
    let state = SessionState::new(negotiated.client_id.clone(), mailbox);
    let mut session = Session::new(state, negotiated, env.mqtt().max_inflight);

    let mut now: Millis = 1_000_000;
    let mut out = BytesMut::new();
    let mut client = Decoder::with_version(version, u32::MAX);
    let connack = ConnAck {
        session_present: false,
        reason_code: ReasonCode::SUCCESS,
        properties: Default::default(),
    };
    session.start(connack, now, &mut out);

    let denied = |name: &str| plain(name).0.starts_with("deny");
    loop {
        let before = input.len();
        let packet = match decoder.decode(&mut input) {
            Ok(Some(packet)) => packet,
            _ => break,
        };
        now += (before - input.len()) as Millis * 100;
        let flow = match packet {
            Packet::Publish(publish) => {
                let allowed = !denied(&publish.topic);
                session
                    .resolve_publish(publish, &env)
                    .map(|resolved| session.publish(resolved, allowed, &env, now, &mut out))
            }
            Packet::Subscribe(subscribe) => {
                let verdicts: Vec<bool> =
                    subscribe.filters.iter().map(|(f, _)| !denied(f)).collect();
                session
                    .subscribe(subscribe, &verdicts, &env, now, &mut out)
                    .map(|()| Flow::Continue)
            }
            other => session.handle(other, &env, &mut out),
        };
        session.pump(now, &mut out, 64 * 1024);

        // What the client receives must be valid for it.
        while !out.is_empty() {
            let len = out.len();
            match client.decode(&mut out) {
                Ok(Some(packet)) => {
                    let size = len - out.len();
                    assert!(
                        size <= max_packet_size,
                        "{} of {size} bytes exceeds the client's maximum {max_packet_size}",
                        packet.name()
                    );
                    if let Packet::Publish(p) = &packet {
                        assert!(p.qos == QoS::AtMostOnce || p.packet_id != 0);
                    }
                }
                other => panic!("the session wrote what the client cannot decode: {other:?}"),
            }
        }
        let inflight = &session.state().inflight;
        assert!(
            inflight.len() <= window,
            "{} in flight, window {window}",
            inflight.len()
        );
        let ids: HashSet<u16> = inflight.iter().map(|i| i.packet_id).collect();
        assert_eq!(
            ids.len(),
            inflight.len(),
            "packet identifiers reused in flight"
        );

        match flow {
            Ok(Flow::Continue) => {}
            Ok(Flow::Disconnect | Flow::Close(_)) | Err(_) => break,
        }
    }
});
