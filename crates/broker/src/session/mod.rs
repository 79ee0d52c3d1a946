//! The session machine: one connected client's protocol state, sans I/O.
//!
//! It takes packets and the time, writes response packets into an output buffer, and
//! reaches routing and the retained store only through [`SessionEnv`] (which the broker
//! implements with its in-memory router and retained store). It never touches a socket or a clock,
//! so every spec rule is testable without a network. The connection task owns the socket
//! and authorization (which may be asynchronous) and drives this.
//!
//! A persistent session (expiry above 0) records each change of its state — subscriptions,
//! in-flight messages and their stages, held QoS 2 ids — in its [`SessionJournal`]: an
//! operation handed to the store writer, not I/O.

mod aliases;
mod connect;
mod env;
mod inbound;
mod outbound;
mod state;
mod subscriptions;

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;
use midge_proto::{
    ConnAck, Disconnect, DisconnectProperties, EncodeError, Packet, ProtocolVersion, PubResponse,
    ReasonCode, Will,
};

pub use connect::{Negotiated, Refusal, negotiate, within_topic_limits};
pub use env::SessionEnv;
pub use inbound::ResolvedPublish;
pub use state::SessionState;

use aliases::Aliases;

use crate::auth::DeliveryFilter;
use crate::model::{Delivery, Millis, Stage};
use crate::stats::LocalStats;
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
    /// Close the connection as an abnormal end (the will is published), sending nothing:
    /// an MQTT 3 QoS 1/2 PUBLISH refused under memory pressure, which v3 cannot answer.
    Close(&'static str),
}

/// See the module documentation.
#[derive(Debug)]
pub struct Session {
    state: SessionState,
    protocol: ProtocolVersion,
    /// QoS 1/2 messages we may have in flight to the client: min(its Receive Maximum,
    /// our `max_inflight`) [MQTT-3.3.4-7].
    send_window: u16,
    client_max_packet_size: u32,
    client_topic_alias_maximum: u16,
    /// What few sessions have (topic aliases, a retained backlog, a delivery filter),
    /// boxed together and only while there is any: one pointer in every connection's task
    /// rather than three.
    rare: Option<Box<Rare>>,
    /// Whether the session began with expiry 0, which DISCONNECT may not change
    /// [MQTT-3.14.2-2].
    began_with_zero_expiry: bool,
    /// Boxed: most clients have no will, and a will is large.
    will: Option<Box<Will>>,
    username: Option<Box<str>>,
    /// The session is persistent: its changes are recorded through its mailbox's journal
    /// (see [`Session::journal`]). A flag rather than a copy of the journal handle, whose
    /// 32 bytes would be in every connection's task.
    stored: bool,
    /// Whether the output holds a packet that must not reach the client before the store
    /// has committed what it confirms (see [`Session::take_settle`]).
    settle: bool,
    /// The in-flight count last added to the broker's gauge ([`Session::flush_stats`]).
    /// The other counts are the thread's, not the session's ([`LocalStats`]).
    inflight_reported: u32,
}

/// The parts of a [`Session`] that few have.
#[derive(Debug, Default)]
struct Rare {
    /// Topic aliases both ways: only v5 clients that use aliases have any.
    aliases: Option<Aliases>,
    /// Retained messages found at SUBSCRIBE, sent before anything from the mailbox.
    retained_backlog: VecDeque<Delivery>,
    /// Set when a subscription is only partly readable under the ACL: every delivery's
    /// topic is checked before it is sent.
    delivery_filter: Option<DeliveryFilter>,
}

/// The journal of a session whose mailbox is `mailbox`, while it is `stored`. A function
/// of the two fields, not of the session, so it can be used while other fields are
/// borrowed mutably.
fn journal_of(mailbox: &crate::mailbox::Mailbox, stored: bool) -> Option<&SessionJournal> {
    if stored {
        mailbox.store_journal()
    } else {
        None
    }
}

impl Session {
    /// Where changes are recorded while the session is persistent.
    fn journal(&self) -> Option<&SessionJournal> {
        journal_of(&self.state.mailbox, self.stored)
    }

    /// Starts serving `state` under the negotiated parameters.
    pub fn new(mut state: SessionState, negotiated: Negotiated, max_inflight: u16) -> Self {
        state.expiry_interval = negotiated.expiry_interval;
        // Stored from now on if it outlives the connection; a resumed stored session that
        // now has expiry 0 is removed from the store.
        let stored = state.mailbox.persist(negotiated.expiry_interval);
        Self {
            state,
            protocol: negotiated.protocol,
            send_window: negotiated.client_receive_maximum.min(max_inflight),
            client_max_packet_size: negotiated.client_max_packet_size,
            client_topic_alias_maximum: negotiated.client_topic_alias_maximum,
            rare: None,
            began_with_zero_expiry: negotiated.expiry_interval == 0,
            will: negotiated.will.map(Box::new),
            username: negotiated.username.map(String::into_boxed_str),
            stored,
            settle: false,
            inflight_reported: 0,
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
        self.rare_mut().delivery_filter = Some(filter);
    }

    /// The rare parts, made when first needed.
    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Gives the rare parts back once none is left (the retained backlog sent).
    fn trim_rare(&mut self) {
        if let Some(rare) = &mut self.rare
            && rare.retained_backlog.is_empty()
        {
            if rare.aliases.is_none() && rare.delivery_filter.is_none() {
                self.rare = None;
            } else {
                rare.retained_backlog = VecDeque::new();
            }
        }
    }

    /// Protocol version.
    pub fn protocol(&self) -> ProtocolVersion {
        self.protocol
    }

    /// The persistent state (read-only).
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// The state, to change outside the packet handlers (the record a cluster keeps).
    pub fn state_mut(&mut self) -> &mut SessionState {
        &mut self.state
    }

    /// Adds the counts pending on this thread to `stats` and returns them (see
    /// [`LocalStats`]: the connection calls this before anything it awaits), and moves
    /// the in-flight gauge; `ending` takes its in-flight deliveries off the gauge.
    pub fn flush_stats(&mut self, stats: &crate::stats::Stats, ending: bool) -> LocalStats {
        let inflight = if ending { 0 } else { self.state.inflight.len() };
        crate::stats::report_inflight(stats, &mut self.inflight_reported, inflight);
        let counts = LocalStats::take();
        counts.flush(stats);
        counts
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

    /// Writes a packet to `out`, counted (the connection sends AUTH through it).
    pub fn send(&mut self, packet: &Packet, out: &mut BytesMut) {
        self.settle = true;
        // Within the client's Maximum Packet Size, leaving out a reason string or user
        // properties that do not fit [MQTT-3.1.2-24].
        let max = usize::try_from(self.client_max_packet_size).unwrap_or(usize::MAX);
        match packet.encode_within(self.protocol, max, out) {
            Ok(()) => LocalStats::count(|c| c.packets_sent += 1),
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
                    } else if let Some(journal) = self.journal() {
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
        env: &impl SessionEnv,
        out: &mut BytesMut,
    ) -> Result<Flow, Violation> {
        match packet {
            Packet::PubAck(ack) => self.on_puback(&ack),
            Packet::PubRec(rec) => self.on_pubrec(&rec, out),
            Packet::PubRel(rel) => self.on_pubrel(&rel, out),
            Packet::PubComp(comp) => self.on_pubcomp(&comp),
            Packet::Unsubscribe(unsubscribe) => self.unsubscribe(unsubscribe, env, out),
            Packet::PingReq => self.send(&Packet::PingResp, out),
            Packet::Disconnect(disconnect) => return self.on_disconnect(&disconnect),
            // [MQTT-3.1.0-2] a second CONNECT is a protocol error.
            Packet::Connect(_) => {
                return Err(violation(ReasonCode::PROTOCOL_ERROR, "second CONNECT"));
            }
            // The connection handles AUTH (re-authentication, `Connection::on_auth`).
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
}

#[cfg(test)]
mod env_tests;
#[cfg(test)]
mod tests;
