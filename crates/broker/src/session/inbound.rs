//! Inbound PUBLISH (alias resolution, protocol checks, routing, the acknowledgement) and
//! the inbound half of QoS 2 (PUBREL).

use bytes::BytesMut;
use midge_proto::{Packet, PubResponse, Publish, QoS, ReasonCode, ResponseProperties};

use super::{Flow, Session, SessionEnv, Violation, violation, within_topic_limits};
use crate::model::{Message, Millis};
use crate::stats::LocalStats;

/// A PUBLISH whose topic alias is resolved and which passed the protocol checks, waiting
/// for an authorization verdict.
#[derive(Debug)]
pub struct ResolvedPublish(Publish, Taken);

/// Whether an authorized PUBLISH is routed, or was taken by the broker itself (a
/// dynamic-security command): then it is acknowledged and goes to no subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    Route,
    ByBroker,
}

impl ResolvedPublish {
    /// The topic to authorize.
    pub fn topic(&self) -> &str {
        &self.0.topic
    }

    /// The QoS the client used.
    pub fn qos(&self) -> QoS {
        self.0.qos
    }

    /// Whether the client asked for it to be retained.
    pub fn retain(&self) -> bool {
        self.0.retain
    }

    /// The packet id (0 for QoS 0).
    pub fn packet_id(&self) -> u16 {
        self.0.packet_id
    }

    /// The payload.
    pub fn payload(&self) -> &bytes::Bytes {
        &self.0.payload
    }

    /// The broker handles this message itself (a `$CONTROL` command): it is acknowledged
    /// but not routed or retained.
    pub fn take_by_broker(&mut self) {
        self.1 = Taken::ByBroker;
    }
}

impl Session {
    /// First half of PUBLISH handling: topic alias resolution and protocol checks.
    pub fn resolve_publish(
        &mut self,
        mut publish: Publish,
        env: &impl SessionEnv,
    ) -> Result<ResolvedPublish, Violation> {
        LocalStats::count(|c| c.received(publish.qos));
        let config = env.mqtt();
        if self.protocol.is_v5() {
            // [MQTT-3.3.4-6] a client must not send Subscription Identifiers.
            if !publish.properties.subscription_identifiers.is_empty() {
                return Err(violation(
                    ReasonCode::PROTOCOL_ERROR,
                    "PUBLISH from a client with a subscription identifier",
                ));
            }
            if let Some(alias) = publish.properties.topic_alias.take() {
                self.resolve_inbound_alias(alias, &mut publish, config.topic_alias_maximum)?;
            }
        }
        if publish.topic.is_empty() {
            return Err(violation(
                ReasonCode::TOPIC_NAME_INVALID,
                "empty topic name",
            ));
        }
        if publish.retain && !config.retain_available {
            // [MQTT-3.3.1-14]
            return Err(violation(
                ReasonCode::RETAIN_NOT_SUPPORTED,
                "retain is not available",
            ));
        }
        if publish.qos == QoS::ExactlyOnce
            && self.protocol.is_v5()
            && !self.state.awaiting_pubrel.contains_key(&publish.packet_id)
            && self.state.awaiting_pubrel.len() >= usize::from(config.max_inflight)
        {
            // [MQTT-3.3.4-7] [MQTT-3.3.4-9] more unacknowledged QoS 2 PUBLISH than our
            // Receive Maximum. MQTT 3.1.1 has no way to tell a client that limit, so there
            // the packet id space (65,535 two-byte ids) is the only bound, as in Mosquitto.
            return Err(violation(
                ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                "receive maximum exceeded",
            ));
        }
        Ok(ResolvedPublish(publish, Taken::Route))
    }

    /// Second half of PUBLISH handling: route it (unless refused) and acknowledge it.
    /// A refused v3 PUBLISH is acknowledged normally and dropped, as v3 has no way to say
    /// no [MQTT-3.3.5-2]; except under memory pressure, where a v3 QoS 1/2 PUBLISH is not
    /// acknowledged and the connection closes ([`Flow::Close`]): acknowledging would lose
    /// it, and the client sends it again when it reconnects [MQTT-4.4.0-1].
    pub fn publish(
        &mut self,
        publish: ResolvedPublish,
        authorized: bool,
        env: &impl SessionEnv,
        now: Millis,
        out: &mut BytesMut,
    ) -> Flow {
        let ResolvedPublish(publish, taken) = publish;
        let (qos, packet_id) = (publish.qos, publish.packet_id);
        if qos == QoS::ExactlyOnce
            && let Some(&reason_code) = self.state.awaiting_pubrel.get(&packet_id)
        {
            // [MQTT-4.3.3-9] a resent QoS 2 PUBLISH is acknowledged as the first was, not
            // routed again.
            let response = PubResponse {
                packet_id,
                reason_code,
                properties: ResponseProperties::default(),
            };
            self.send(&Packet::PubRec(response), out);
            return Flow::Continue;
        }
        let reason = if qos != QoS::AtMostOnce && env.memory_pressure() {
            // Over the memory budget (`limits.max_memory`): nothing new is taken on that
            // the broker would have to keep.
            env.refused_for_memory();
            LocalStats::count(|c| c.publish_dropped += 1);
            if !self.protocol.is_v5() {
                return Flow::Close("memory budget exceeded (QoS 1/2 PUBLISH not accepted)");
            }
            ReasonCode::QUOTA_EXCEEDED
        } else if !authorized || is_sys_topic(&publish.topic) {
            LocalStats::count(|c| c.publish_denied += 1);
            tracing::debug!(client_id = %self.state.client_id, topic = %publish.topic, "PUBLISH not authorized");
            ReasonCode::NOT_AUTHORIZED
        } else if taken == Taken::ByBroker {
            ReasonCode::SUCCESS
        } else if !within_topic_limits(&publish.topic, env.mqtt()) {
            ReasonCode::TOPIC_NAME_INVALID
        } else if publish.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&publish.payload).is_err()
        {
            ReasonCode::PAYLOAD_FORMAT_INVALID
        } else {
            let delivered = env.publish(Message::from_publish(
                publish,
                self.state.client_id.clone(),
                now,
            ));
            if delivered == 0 {
                ReasonCode::NO_MATCHING_SUBSCRIBERS
            } else {
                ReasonCode::SUCCESS
            }
        };
        let reason = if self.protocol.is_v5() {
            reason
        } else {
            ReasonCode::SUCCESS
        };
        let response = PubResponse {
            packet_id,
            reason_code: reason,
            properties: ResponseProperties::default(),
        };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(response), out),
            QoS::ExactlyOnce => {
                // A PUBREC with an error code ends the exchange [MQTT-4.3.3-?]; otherwise the
                // id is held until PUBREL.
                if !reason.is_error()
                    && self
                        .state
                        .awaiting_pubrel
                        .insert(packet_id, reason)
                        .is_none()
                    && let Some(journal) = self.journal()
                {
                    journal.pubrel_held(packet_id, reason);
                }
                self.send(&Packet::PubRec(response), out);
            }
        }
        Flow::Continue
    }

    pub(super) fn on_pubrel(&mut self, rel: &PubResponse, out: &mut BytesMut) {
        let known = self.state.awaiting_pubrel.remove(&rel.packet_id).is_some();
        if known && let Some(journal) = self.journal() {
            journal.pubrel_released(rel.packet_id);
        }
        // [MQTT-4.3.3-11] PUBCOMP even for an unknown id; v5 says it was not found.
        let reason = if known || !self.protocol.is_v5() {
            ReasonCode::SUCCESS
        } else {
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        };
        let response = PubResponse {
            packet_id: rel.packet_id,
            reason_code: reason,
            properties: Default::default(),
        };
        self.send(&Packet::PubComp(response), out);
    }
}

/// `$SYS/...` is the broker's; clients may not publish there.
fn is_sys_topic(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}
