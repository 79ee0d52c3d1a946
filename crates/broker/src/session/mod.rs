//! The session machine: one connected client's protocol state, sans I/O.
//!
//! It takes packets and the time, writes response packets into an output buffer, and uses
//! the broker's in-memory router and retained store. It never touches a socket or a clock,
//! so every spec rule is testable without a network. The connection task owns the socket
//! and authorization (which may be asynchronous) and drives this.
//!
//! A persistent session (expiry above 0) records each change of its state — subscriptions,
//! in-flight messages and their stages, held QoS 2 ids — in its [`SessionJournal`]: an
//! operation handed to the store writer, not I/O.

mod connect;
mod state;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::BytesMut;
use midge_proto::{
    ConnAck, Disconnect, DisconnectProperties, EncodeError, OutgoingPublish, Packet,
    ProtocolVersion, PubResponse, Publish, QoS, ReasonCode, ResponseProperties, SubAck, Subscribe,
    UnsubAck, Unsubscribe, Will, topic,
};

pub use connect::{Negotiated, Refusal, negotiate, within_topic_limits};
pub use state::{Inflight, SessionState, Stage, SubscriptionRecord};

use crate::auth::DeliveryFilter;
use crate::broker::Broker;
use crate::mailbox::{Mailbox, QueueLimits};
use crate::message::{Delivery, Message, Millis};
use crate::stats::{LocalStats, Stats};
use crate::store::SessionJournal;

/// A protocol violation by the client: the connection closes, telling a v5 client `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// DISCONNECT reason code.
    pub reason: ReasonCode,
    /// For the log.
    pub message: &'static str,
}

fn violation(reason: ReasonCode, message: &'static str) -> Violation {
    Violation { reason, message }
}

/// What the connection should do after a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// The client sent DISCONNECT: close without publishing the will, unless it was kept
    /// by reason 0x04.
    Disconnect,
}

/// A PUBLISH whose topic alias is resolved and which passed the protocol checks, waiting
/// for an authorization verdict.
#[derive(Debug)]
pub struct ResolvedPublish(Publish);

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
}

/// Topic aliases of one connection, both ways.
#[derive(Debug, Default)]
struct Aliases {
    /// Topic -> alias we told the client. Aliases are never reassigned, so the map only
    /// grows to the client's maximum.
    outbound: HashMap<String, u16>,
    /// Alias -> topic the client told us.
    inbound: HashMap<u16, String>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Session {
    state: SessionState,
    protocol: ProtocolVersion,
    /// QoS 1/2 messages we may have in flight to the client: min(its Receive Maximum,
    /// our `max_inflight`) [MQTT-3.3.4-7].
    send_window: usize,
    client_max_packet_size: u32,
    client_topic_alias_maximum: u16,
    /// Topic aliases both ways; boxed, as only v5 clients that use aliases have any.
    aliases: Option<Box<Aliases>>,
    /// Whether the session began with expiry 0, which DISCONNECT may not change
    /// [MQTT-3.14.2-2].
    began_with_zero_expiry: bool,
    /// Boxed: most clients have no will, and a will is large.
    will: Option<Box<Will>>,
    username: Option<String>,
    /// Retained messages found at SUBSCRIBE, sent before anything from the mailbox.
    retained_backlog: VecDeque<Delivery>,
    /// Set when a subscription is only partly readable under the ACL: every delivery's
    /// topic is checked before it is sent. `None` (the usual case) costs nothing.
    delivery_filter: Option<Box<DeliveryFilter>>,
    /// Where changes are recorded while the session is persistent.
    journal: Option<SessionJournal>,
    /// Whether the output holds a packet that must not reach the client before the store
    /// has committed what it confirms (see [`Session::take_settle`]).
    settle: bool,
    /// Counts for the broker's statistics, flushed by the connection.
    pub stats: LocalStats,
}

impl Session {
    /// Starts serving `state` under the negotiated parameters.
    pub fn new(mut state: SessionState, negotiated: Negotiated, max_inflight: u16) -> Self {
        state.expiry_interval = negotiated.expiry_interval;
        // Stored from now on if it outlives the connection; a resumed stored session that
        // now has expiry 0 is removed from the store.
        let journal = state.mailbox.persist(negotiated.expiry_interval);
        Self {
            state,
            protocol: negotiated.protocol,
            send_window: usize::from(negotiated.client_receive_maximum.min(max_inflight)),
            client_max_packet_size: negotiated.client_max_packet_size,
            client_topic_alias_maximum: negotiated.client_topic_alias_maximum,
            aliases: None,
            began_with_zero_expiry: negotiated.expiry_interval == 0,
            will: negotiated.will.map(Box::new),
            username: negotiated.username,
            retained_backlog: VecDeque::new(),
            delivery_filter: None,
            journal,
            settle: false,
            stats: LocalStats::default(),
        }
    }

    /// Client identifier.
    pub fn client_id(&self) -> &Arc<str> {
        &self.state.client_id
    }

    /// User name from CONNECT.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// From now on, checks each delivery's topic with `filter` before sending it (for a
    /// subscription the ACL allows only in part).
    pub fn filter_deliveries(&mut self, filter: DeliveryFilter) {
        self.delivery_filter = Some(Box::new(filter));
    }

    /// Removes a subscription without telling the client (a resumed subscription that
    /// is no longer authorized).
    pub fn drop_subscription(&mut self, filter: &str, broker: &Broker) {
        if self.state.subscriptions.remove(filter).is_some() {
            broker.router.unsubscribe(filter, &self.state.client_id);
            if let Some(journal) = &self.journal {
                journal.unsubscribe(filter);
            }
            self.hand_over_shared(filter, broker);
        }
    }

    /// Forgets queued and unacknowledged deliveries that no remaining subscription
    /// matches, after subscriptions were dropped: what was queued for them must not reach
    /// a client that may no longer have them. Released QoS 2 exchanges (PUBREL pending)
    /// carry no message and stay. Returns how many were dropped.
    pub fn forget_unmatched_deliveries(&mut self) -> usize {
        let filters: Vec<&str> = self
            .state
            .subscriptions
            .keys()
            .map(|f| match topic::parse_shared(f) {
                Ok(Some(shared)) => shared.filter,
                _ => f.as_str(),
            })
            .collect();
        let wanted = |d: &Delivery| filters.iter().any(|f| topic::matches(f, &d.message.topic));
        let queued = self.state.mailbox.retain_deliveries(|d| wanted(d));
        let inflight_before = self.state.inflight.len();
        let journal = self.journal.as_ref();
        self.state.inflight.retain(|i| {
            let keep = i.stage == Stage::AwaitPubComp || wanted(&i.delivery);
            if !keep && let Some(journal) = journal {
                journal.acked(i.packet_id);
            }
            keep
        });
        let dropped = queued + inflight_before - self.state.inflight.len();
        self.stats.publish_denied += dropped as u32;
        dropped
    }

    /// Protocol version.
    pub fn protocol(&self) -> ProtocolVersion {
        self.protocol
    }

    /// The persistent state (read-only).
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// Adds the connection's counts to `stats` (see [`LocalStats::flush`]); `ending`
    /// takes its in-flight deliveries off the gauge.
    pub fn flush_stats(&mut self, stats: &Stats, ending: bool) {
        let inflight = if ending { 0 } else { self.state.inflight.len() };
        self.stats.flush(stats, inflight);
    }

    /// Ends serving: hands back the persistent state and the will to publish (if the
    /// connection did not end with a normal DISCONNECT).
    pub fn into_parts(self) -> (SessionState, Option<Will>) {
        (self.state, self.will.map(|will| *will))
    }

    /// Will Delay Interval of the current will, seconds.
    pub fn will_delay(&self) -> u32 {
        self.will
            .as_ref()
            .and_then(|w| w.properties.will_delay_interval)
            .unwrap_or(0)
    }

    /// Whether the output written since the last call holds something that confirms state
    /// the store must have first: every control packet (CONNACK, PUBACK, PUBREC, PUBREL,
    /// PUBCOMP, SUBACK, ...) and QoS 2 PUBLISH, whose packet id the client will hold us
    /// to. QoS 0/1 PUBLISH need not wait: after a crash a QoS 1 message not yet recorded
    /// as in flight is still queued, and is sent again, which QoS 1 allows.
    pub fn take_settle(&mut self) -> bool {
        std::mem::take(&mut self.settle)
    }

    fn send(&mut self, packet: &Packet, out: &mut BytesMut) {
        self.settle = true;
        // Within the client's Maximum Packet Size, leaving out a reason string or user
        // properties that do not fit [MQTT-3.1.2-24].
        let max = usize::try_from(self.client_max_packet_size).unwrap_or(usize::MAX);
        match packet.encode_within(self.protocol, max, out) {
            Ok(()) => self.stats.packets_sent += 1,
            // No room even in its smallest form (a SUBACK for many filters, say): not
            // sent [MQTT-3.1.2-25]. The client chose the limit, so this is no warning.
            Err(e @ EncodeError::ExceedsMaximumPacketSize { .. }) => {
                tracing::debug!(client_id = %self.state.client_id, error = %e, "{} not sent", packet.name())
            }
            // Only our own oversized fields; nothing to tell the client.
            Err(e) => {
                tracing::warn!(client_id = %self.state.client_id, error = %e, "cannot encode {}", packet.name())
            }
        }
    }

    /// Writes CONNACK, then resends what was in flight when the previous connection ended:
    /// PUBLISH with DUP for unacknowledged QoS 1 and un-PUBREC'd QoS 2, PUBREL for
    /// PUBREC'd QoS 2 [MQTT-4.4.0-1] [MQTT-4.4.0-2].
    pub fn start(&mut self, connack: ConnAck, now: Millis, out: &mut BytesMut) {
        self.send(&Packet::ConnAck(connack), out);
        let inflight = std::mem::take(&mut self.state.inflight);
        for entry in inflight {
            match entry.stage {
                Stage::AwaitPubComp => {
                    self.send(&Packet::PubRel(PubResponse::success(entry.packet_id)), out);
                    self.state.inflight.push_back(entry);
                }
                Stage::AwaitPubAck | Stage::AwaitPubRec => {
                    if self.write_publish(&entry.delivery, entry.packet_id, true, now, out) {
                        self.state.inflight.push_back(entry);
                    } else if let Some(journal) = &self.journal {
                        journal.acked(entry.packet_id);
                    }
                }
            }
        }
    }

    /// Handles every packet except PUBLISH and SUBSCRIBE, which need an authorization
    /// verdict first (see [`Session::resolve_publish`] and [`Session::subscribe`]).
    pub fn handle(
        &mut self,
        packet: Packet,
        broker: &Broker,
        out: &mut BytesMut,
    ) -> Result<Flow, Violation> {
        match packet {
            Packet::PubAck(ack) => self.on_puback(&ack),
            Packet::PubRec(rec) => self.on_pubrec(&rec, out),
            Packet::PubRel(rel) => self.on_pubrel(&rel, out),
            Packet::PubComp(comp) => self.on_pubcomp(&comp),
            Packet::Unsubscribe(unsubscribe) => self.unsubscribe(unsubscribe, broker, out),
            Packet::PingReq => self.send(&Packet::PingResp, out),
            Packet::Disconnect(disconnect) => return self.on_disconnect(&disconnect),
            // [MQTT-3.1.0-2] a second CONNECT is a protocol error.
            Packet::Connect(_) => {
                return Err(violation(ReasonCode::PROTOCOL_ERROR, "second CONNECT"));
            }
            // No authentication method is ever accepted at CONNECT, so AUTH cannot follow
            // [MQTT-4.12.0-2]... (a client must not send AUTH without one).
            Packet::Auth(_) => {
                return Err(violation(
                    ReasonCode::PROTOCOL_ERROR,
                    "AUTH without an authentication method",
                ));
            }
            Packet::Publish(_) | Packet::Subscribe(_) => {
                return Err(violation(
                    ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                    "PUBLISH/SUBSCRIBE need authorization",
                ));
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                return Err(violation(
                    ReasonCode::PROTOCOL_ERROR,
                    "server-to-client packet from a client",
                ));
            }
        }
        Ok(Flow::Continue)
    }

    // ---- inbound PUBLISH ----

    /// First half of PUBLISH handling: topic alias resolution and protocol checks.
    pub fn resolve_publish(
        &mut self,
        mut publish: Publish,
        broker: &Broker,
    ) -> Result<ResolvedPublish, Violation> {
        self.stats.received(publish.qos);
        let config = &broker.config.mqtt;
        if self.protocol.is_v5() {
            // [MQTT-3.3.4-6] a client must not send Subscription Identifiers.
            if !publish.properties.subscription_identifiers.is_empty() {
                return Err(violation(
                    ReasonCode::PROTOCOL_ERROR,
                    "PUBLISH from a client with a subscription identifier",
                ));
            }
            if let Some(alias) = publish.properties.topic_alias.take() {
                // [MQTT-3.3.2-8] [MQTT-3.3.2-9] 0 and values above our maximum are invalid.
                if alias == 0 || alias > config.topic_alias_maximum {
                    return Err(violation(
                        ReasonCode::TOPIC_ALIAS_INVALID,
                        "topic alias out of range",
                    ));
                }
                if publish.topic.is_empty() {
                    match self.aliases.as_ref().and_then(|a| a.inbound.get(&alias)) {
                        Some(topic) => publish.topic = topic.clone(),
                        None => {
                            return Err(violation(
                                ReasonCode::PROTOCOL_ERROR,
                                "unknown topic alias",
                            ));
                        }
                    }
                } else {
                    self.aliases
                        .get_or_insert_default()
                        .inbound
                        .insert(alias, publish.topic.clone());
                }
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
        Ok(ResolvedPublish(publish))
    }

    /// Second half of PUBLISH handling: route it (unless refused) and acknowledge it.
    /// A refused v3 PUBLISH is acknowledged normally and dropped, as v3 has no way to say
    /// no [MQTT-3.3.5-2].
    pub fn publish(
        &mut self,
        publish: ResolvedPublish,
        authorized: bool,
        broker: &Broker,
        now: Millis,
        out: &mut BytesMut,
    ) {
        let publish = publish.0;
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
            return;
        }
        let reason = if !authorized || is_sys_topic(&publish.topic) {
            self.stats.publish_denied += 1;
            tracing::debug!(client_id = %self.state.client_id, topic = %publish.topic, "PUBLISH not authorized");
            ReasonCode::NOT_AUTHORIZED
        } else if !within_topic_limits(&publish.topic, &broker.config.mqtt) {
            ReasonCode::TOPIC_NAME_INVALID
        } else if publish.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&publish.payload).is_err()
        {
            ReasonCode::PAYLOAD_FORMAT_INVALID
        } else {
            let outcome = broker.publish(Message::from_publish(
                publish,
                self.state.client_id.clone(),
                now,
            ));
            if outcome.delivered == 0 {
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
                    && let Some(journal) = &self.journal
                {
                    journal.pubrel_held(packet_id, reason);
                }
                self.send(&Packet::PubRec(response), out);
            }
        }
    }

    fn on_pubrel(&mut self, rel: &PubResponse, out: &mut BytesMut) {
        let known = self.state.awaiting_pubrel.remove(&rel.packet_id).is_some();
        if known && let Some(journal) = &self.journal {
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

    // ---- outbound acknowledgements ----

    fn on_puback(&mut self, ack: &PubResponse) {
        match self.state.inflight_position(ack.packet_id) {
            Some(i) if self.state.inflight[i].stage == Stage::AwaitPubAck => {
                self.state.inflight.remove(i);
                if let Some(journal) = &self.journal {
                    journal.acked(ack.packet_id);
                }
            }
            _ => {
                tracing::debug!(client_id = %self.state.client_id, packet_id = ack.packet_id, "PUBACK for unknown packet id")
            }
        }
    }

    fn on_pubrec(&mut self, rec: &PubResponse, out: &mut BytesMut) {
        let found = match self.state.inflight_position(rec.packet_id) {
            Some(i) if self.state.inflight[i].stage != Stage::AwaitPubAck => {
                if rec.reason_code.is_error() {
                    // [MQTT-4.3.3-4] an error PUBREC ends the exchange; no PUBREL.
                    self.state.inflight.remove(i);
                    if let Some(journal) = &self.journal {
                        journal.acked(rec.packet_id);
                    }
                    return;
                }
                self.state.inflight[i].stage = Stage::AwaitPubComp;
                if let Some(journal) = &self.journal {
                    journal.stage(rec.packet_id, Stage::AwaitPubComp);
                }
                true
            }
            _ => false,
        };
        let reason = if found || !self.protocol.is_v5() {
            ReasonCode::SUCCESS
        } else {
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        };
        let response = PubResponse {
            packet_id: rec.packet_id,
            reason_code: reason,
            properties: Default::default(),
        };
        self.send(&Packet::PubRel(response), out);
    }

    fn on_pubcomp(&mut self, comp: &PubResponse) {
        match self.state.inflight_position(comp.packet_id) {
            Some(i) if self.state.inflight[i].stage == Stage::AwaitPubComp => {
                self.state.inflight.remove(i);
                if let Some(journal) = &self.journal {
                    journal.acked(comp.packet_id);
                }
            }
            _ => {
                tracing::debug!(client_id = %self.state.client_id, packet_id = comp.packet_id, "PUBCOMP for unknown packet id")
            }
        }
    }

    // ---- SUBSCRIBE / UNSUBSCRIBE ----

    /// Handles SUBSCRIBE. `authorized[i]` is the verdict for the i-th filter.
    pub fn subscribe(
        &mut self,
        subscribe: Subscribe,
        authorized: &[bool],
        broker: &Broker,
        now: Millis,
        out: &mut BytesMut,
    ) -> Result<(), Violation> {
        let config = &broker.config.mqtt;
        let identifier = subscribe.properties.subscription_identifier;
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        // Retained messages sent at subscribe count against the queue limits, as queued
        // messages do: one SUBSCRIBE repeating `#` must not queue copies of the whole
        // retained tree without end (issue 9, defect 2).
        let limits = broker.queue_limits();
        let mut backlog = RetainedBudget::new(&limits, &self.retained_backlog, &self.state.mailbox);
        let mut collected: Vec<&str> = Vec::new();
        let filters = subscribe.filters;
        for (i, (filter, options)) in filters.iter().enumerate() {
            let (filter, options) = (filter.clone(), *options);
            let shared = topic::parse_shared(&filter).ok().flatten().is_some();
            if shared && options.no_local && self.protocol.is_v5() {
                // [MQTT-3.8.3-4]
                return Err(violation(
                    ReasonCode::PROTOCOL_ERROR,
                    "no-local on a shared subscription",
                ));
            }
            let reason = if topic::validate_topic_filter(&filter).is_err()
                || !within_topic_limits(&filter, config)
            {
                ReasonCode::TOPIC_FILTER_INVALID
            } else if !authorized.get(i).copied().unwrap_or(false) {
                ReasonCode::NOT_AUTHORIZED
            } else if config.max_subscriptions_per_client > 0
                && !self.state.subscriptions.contains_key(&filter)
                && self.state.subscriptions.len() >= config.max_subscriptions_per_client
            {
                ReasonCode::QUOTA_EXCEEDED
            } else {
                let existed =
                    broker
                        .router
                        .subscribe(&self.state.mailbox, &filter, options, identifier);
                // [MQTT-3.8.4-3] a repeated filter replaces the subscription.
                let record = SubscriptionRecord {
                    options,
                    identifier,
                };
                self.state.subscriptions.insert(filter.clone(), record);
                if let Some(journal) = &self.journal {
                    journal.subscribe(&filter, record);
                }
                // Shared subscriptions get no retained messages at subscribe [MQTT-4.8.2-?].
                let send_retained = !shared
                    && config.retain_available
                    && match options.retain_handling {
                        midge_proto::RetainHandling::SendAtSubscribe => true,
                        midge_proto::RetainHandling::SendIfNew => !existed,
                        midge_proto::RetainHandling::DontSend => false,
                    };
                // A filter repeated in one SUBSCRIBE replaces itself: its retained
                // messages are sent once.
                let repeated = collected.contains(&filters[i].0.as_str());
                if send_retained && !repeated {
                    collected.push(filters[i].0.as_str());
                    for message in broker.retained.matching(&filter, now) {
                        if !backlog.admit(&message) {
                            continue;
                        }
                        retained.push(Delivery {
                            qos: message.qos.min(options.qos),
                            // [MQTT-3.3.1-8] retained messages sent at subscribe keep RETAIN.
                            retain: true,
                            subscription_ids: identifier.into_iter().collect(),
                            shared: None,
                            message,
                        });
                    }
                }
                // [MQTT-3.9.3-?] granted QoS is what was asked; QoS 2 is supported.
                ReasonCode(options.qos as u8)
            };
            if reason.is_error() {
                tracing::debug!(client_id = %self.state.client_id, %filter, %reason, "subscription refused");
            }
            reasons.push(reason);
        }
        let suback = SubAck {
            packet_id: subscribe.packet_id,
            reason_codes: reasons,
            properties: ResponseProperties::default(),
        };
        // [MQTT-3.8.4-1] SUBACK first, then the retained messages.
        self.send(&Packet::SubAck(suback), out);
        self.retained_backlog.extend(retained);
        Stats::add(&broker.stats.retained_dropped, backlog.refused);
        Ok(())
    }

    fn unsubscribe(&mut self, unsubscribe: Unsubscribe, broker: &Broker, out: &mut BytesMut) {
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                if topic::validate_topic_filter(filter).is_err() {
                    return ReasonCode::TOPIC_FILTER_INVALID;
                }
                let known = self.state.subscriptions.remove(filter).is_some();
                broker.router.unsubscribe(filter, &self.state.client_id);
                if known {
                    if let Some(journal) = &self.journal {
                        journal.unsubscribe(filter);
                    }
                    self.hand_over_shared(filter, broker);
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        let unsuback = UnsubAck {
            packet_id: unsubscribe.packet_id,
            reason_codes: reasons,
            properties: ResponseProperties::default(),
        };
        self.send(&Packet::UnsubAck(unsuback), out);
    }

    /// Queued deliveries of a shared subscription this session left go to another member.
    fn hand_over_shared(&self, filter: &str, broker: &Broker) {
        if !filter.starts_with("$share/") {
            return;
        }
        let limits = broker.queue_limits();
        let mailbox = &self.state.mailbox;
        // Taken out first and handed over with no mailbox lock held: routing takes the
        // trie lock and other mailboxes' locks (see ARCHITECTURE.md, "Lock hierarchy").
        let taken = mailbox.take_deliveries(|d| d.shared.as_deref() == Some(filter));
        if taken.is_empty() {
            return;
        }
        let deliveries: Vec<Delivery> = taken.iter().map(|q| q.delivery.clone()).collect();
        let handed = broker
            .router
            .hand_over_all(&deliveries, &self.state.client_id, &limits);
        let mut kept = Vec::new();
        for (queued, handed) in taken.into_iter().zip(handed) {
            if handed {
                mailbox.forget_stored(queued.seq);
            } else {
                // No other member took it: it stays here, as without the hand-over.
                kept.push(queued);
            }
        }
        mailbox.reinsert(kept);
    }

    // ---- DISCONNECT ----

    fn on_disconnect(&mut self, disconnect: &Disconnect) -> Result<Flow, Violation> {
        if let Some(expiry) = disconnect.properties.session_expiry_interval {
            if self.began_with_zero_expiry && expiry != 0 {
                // [MQTT-3.14.2-2]
                return Err(violation(
                    ReasonCode::PROTOCOL_ERROR,
                    "session expiry set at DISCONNECT after 0 at CONNECT",
                ));
            }
            self.state.expiry_interval = expiry;
        }
        if disconnect.reason_code != ReasonCode::DISCONNECT_WITH_WILL_MESSAGE {
            // [MQTT-3.1.2-10] [MQTT-3.14.4-3] a normal DISCONNECT discards the will.
            self.will = None;
        }
        Ok(Flow::Disconnect)
    }

    /// Caps the session expiry a DISCONNECT set at the configured maximum.
    pub fn cap_expiry(&mut self, cap: u32) {
        if cap > 0 && self.state.expiry_interval > cap {
            self.state.expiry_interval = cap;
        }
    }

    /// The DISCONNECT the broker sends a v5 client before closing (nothing for v3). It
    /// carries a reason string (the spec's name for the reason unless a more specific one
    /// is given): it tells a user what happened, and some clients (rumqttc 0.25) cannot
    /// decode the reason-code-only short form at all. Only a client whose Maximum Packet
    /// Size has no room for the string gets the short form (see `Session::send`).
    pub fn disconnect_packet(
        &mut self,
        reason: ReasonCode,
        reason_string: Option<&str>,
        out: &mut BytesMut,
    ) {
        if self.protocol.is_v5() {
            let properties = DisconnectProperties {
                reason_string: Some(reason_string.unwrap_or(reason.description()).to_owned()),
                ..Default::default()
            };
            self.send(
                &Packet::Disconnect(Disconnect {
                    reason_code: reason,
                    properties,
                }),
                out,
            );
        }
    }

    // ---- outbound delivery ----

    /// Moves deliveries from the retained backlog and the mailbox into `out`, as far as the
    /// client's Receive Maximum allows, until `out` holds about `max_bytes`.
    pub fn pump(&mut self, now: Millis, out: &mut BytesMut, max_bytes: usize) {
        // Scratch for this call only (allocated only when something is pumped): kept in
        // the session, it would hold up to 64 deliveries' worth of capacity for the life
        // of a connection that once had a burst.
        let mut batch = Vec::new();
        let mut queued = Vec::new();
        while out.len() < max_bytes {
            let window = self.send_window.saturating_sub(self.state.inflight_len());
            // The retained backlog goes first; it only exists right after SUBSCRIBE.
            if !self.retained_backlog.is_empty() {
                let mut window = window;
                while let Some(front) = self.retained_backlog.front() {
                    if front.qos != QoS::AtMostOnce {
                        if window == 0 {
                            break;
                        }
                        window -= 1;
                    }
                    batch.extend(self.retained_backlog.pop_front());
                    if batch.len() >= 64 {
                        break;
                    }
                }
                if batch.is_empty() {
                    break;
                }
                for delivery in batch.drain(..) {
                    self.deliver(None, delivery, now, out);
                }
            } else {
                self.state.mailbox.pop_queued(64, window, &mut queued);
                if queued.is_empty() {
                    break;
                }
                for q in queued.drain(..) {
                    self.deliver(Some(q.seq), q.delivery, now, out);
                }
            }
        }
    }

    /// Sends one delivery; `seq` is its place in the mailbox queue (none for retained
    /// messages sent at subscribe).
    fn deliver(&mut self, seq: Option<u64>, delivery: Delivery, now: Millis, out: &mut BytesMut) {
        // Where a QoS 1/2 delivery that is not sent leaves the stored queue.
        let dropped = |journal: Option<&SessionJournal>| {
            if let (Some(journal), Some(seq)) = (journal, seq)
                && delivery.qos != QoS::AtMostOnce
            {
                journal.dequeue(seq);
            }
        };
        if let Some(filter) = &self.delivery_filter
            && !filter.allows(&delivery.message.topic)
        {
            tracing::trace!(client_id = %self.state.client_id, topic = %delivery.message.topic, "delivery not authorized");
            self.stats.publish_denied += 1;
            dropped(self.journal.as_ref());
            return;
        }
        if delivery.message.is_expired(now) {
            // [MQTT-3.3.2-5] an expired message is not sent.
            self.stats.publish_dropped += 1;
            self.stats.dropped_expired += 1;
            dropped(self.journal.as_ref());
            return;
        }
        if delivery.qos == QoS::AtMostOnce {
            self.write_publish(&delivery, 0, false, now, out);
            return;
        }
        let packet_id = self.state.allocate_packet_id();
        if self.write_publish(&delivery, packet_id, false, now, out) {
            let stage = if delivery.qos == QoS::AtLeastOnce {
                Stage::AwaitPubAck
            } else {
                Stage::AwaitPubRec
            };
            if let Some(journal) = &self.journal {
                let order = self.state.mailbox.next_seq();
                journal.dispatch(seq, packet_id, order, stage, &delivery);
            }
            self.state.inflight.push_back(Inflight {
                packet_id,
                delivery,
                stage,
            });
        } else {
            dropped(self.journal.as_ref());
        }
    }

    /// Encodes one PUBLISH. Returns false (and counts a drop) if it exceeds the client's
    /// Maximum Packet Size [MQTT-3.1.2-24] [MQTT-3.1.2-25].
    fn write_publish(
        &mut self,
        delivery: &Delivery,
        packet_id: u16,
        dup: bool,
        now: Millis,
        out: &mut BytesMut,
    ) -> bool {
        let message = &delivery.message;
        // Aliases are per connection; a resend (dup) may follow a reconnect, so it always
        // carries the full topic.
        let (topic, topic_alias) = if dup {
            (message.topic.as_str(), None)
        } else {
            self.outbound_alias(&message.topic)
        };
        let publish = OutgoingPublish {
            dup,
            qos: delivery.qos,
            retain: delivery.retain,
            topic,
            packet_id,
            properties: &message.properties,
            topic_alias,
            message_expiry_interval: message.remaining_expiry(now),
            subscription_identifiers: &delivery.subscription_ids,
            payload: &message.payload,
        };
        let fits = publish.encoded_len(self.protocol).is_ok_and(|len| {
            u32::try_from(len).is_ok_and(|len| len <= self.client_max_packet_size)
        });
        if !fits {
            // With a fresh alias, the client has not learned it: forget it.
            if topic_alias.is_some()
                && !topic.is_empty()
                && let Some(aliases) = &mut self.aliases
            {
                aliases.outbound.remove(&message.topic);
            }
            tracing::debug!(client_id = %self.state.client_id, topic = %message.topic, "message exceeds the client's maximum packet size, dropped");
            self.stats.publish_dropped += 1;
            return false;
        }
        self.settle |= delivery.qos == QoS::ExactlyOnce;
        match publish.encode(self.protocol, out) {
            Ok(()) => {
                self.stats.packets_sent += 1;
                self.stats.sent(delivery.qos);
                true
            }
            Err(e) => {
                tracing::warn!(client_id = %self.state.client_id, error = %e, "cannot encode PUBLISH");
                self.stats.publish_dropped += 1;
                false
            }
        }
    }

    /// The topic and alias to send: an alias the client knows (empty topic), a new alias
    /// with the topic, or the topic alone once the client's Topic Alias Maximum is used up.
    fn outbound_alias<'t>(&mut self, topic: &'t str) -> (&'t str, Option<u16>) {
        if self.client_topic_alias_maximum == 0 {
            return (topic, None);
        }
        let outbound = &mut self.aliases.get_or_insert_default().outbound;
        if let Some(&alias) = outbound.get(topic) {
            return ("", Some(alias));
        }
        let next = outbound.len() + 1;
        if next > usize::from(self.client_topic_alias_maximum) {
            return (topic, None);
        }
        let alias = next as u16;
        outbound.insert(topic.to_owned(), alias);
        (topic, Some(alias))
    }

    /// True when the mailbox or the retained backlog could give `pump` something now.
    pub fn has_pending(&self) -> bool {
        !self.retained_backlog.is_empty() || !self.state.mailbox.is_empty()
    }
}

/// `$SYS/...` is the broker's; clients may not publish there.
fn is_sys_topic(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

#[cfg(test)]
mod tests;

/// How many more retained messages one SUBSCRIBE may put in the session's backlog: the
/// backlog and the queue together stay within the queue limits (0 means unlimited).
struct RetainedBudget {
    messages: usize,
    bytes: usize,
    limits: QueueLimits,
    refused: u64,
}

impl RetainedBudget {
    fn new(limits: &QueueLimits, backlog: &VecDeque<Delivery>, mailbox: &Mailbox) -> Self {
        Self {
            messages: backlog.len() + mailbox.len(),
            bytes: backlog.iter().map(|d| d.message.weight()).sum(),
            limits: *limits,
            refused: 0,
        }
    }

    /// Counts `message` in if it fits; otherwise counts it refused.
    fn admit(&mut self, message: &Message) -> bool {
        let weight = message.weight();
        let full = (self.limits.max_messages > 0 && self.messages >= self.limits.max_messages)
            || (self.limits.max_bytes > 0
                && self.messages > 0
                && self.bytes + weight > self.limits.max_bytes);
        if full {
            self.refused += 1;
            return false;
        }
        self.messages += 1;
        self.bytes += weight;
        true
    }
}
