//! The part of a session that outlives its connection: subscriptions, messages in flight
//! both ways, and the mailbox. Plain data, so it can be parked in the registry, handed to
//! the next connection, or (later) stored and moved between nodes.

use std::collections::VecDeque;
use std::sync::Arc;

use midge_proto::ReasonCode;

use crate::mailbox::Mailbox;
use crate::model::{Inflight, SubscriptionRecord};
use crate::small_map::SmallMap;

/// See the module documentation.
#[derive(Debug)]
pub struct SessionState {
    /// Client identifier.
    pub client_id: Arc<str>,
    /// Where routing queues messages for this session.
    pub mailbox: Arc<Mailbox>,
    /// Subscriptions by full filter (including `$share/...`).
    pub subscriptions: SmallMap<String, SubscriptionRecord>,
    /// Outbound QoS 1/2 messages, oldest first (resent in this order on resume).
    pub inflight: VecDeque<Inflight>,
    /// Inbound QoS 2 packet ids PUBREC'd and waiting for PUBREL, with the PUBREC's reason
    /// (success or no matching subscribers): a PUBLISH repeating one of them is not routed
    /// again, and gets the same answer.
    pub awaiting_pubrel: SmallMap<u16, ReasonCode>,
    /// Next outbound packet identifier to try.
    pub next_packet_id: u16,
    /// Session expiry interval in seconds; 0 ends the session with the connection,
    /// `u32::MAX` never expires.
    pub expiry_interval: u32,
    /// Counts changes of `subscriptions`, so a cluster node can tell when to write the
    /// connected session's record again (`Registry::session_changed`).
    pub subscription_changes: u64,
    /// `subscription_changes` when the record was last written.
    pub subscriptions_recorded: u64,
}

impl SessionState {
    /// A new, empty session.
    pub fn new(client_id: Arc<str>, mailbox: Arc<Mailbox>) -> Self {
        Self {
            client_id,
            mailbox,
            subscriptions: SmallMap::new(),
            inflight: VecDeque::new(),
            awaiting_pubrel: SmallMap::new(),
            next_packet_id: 1,
            expiry_interval: 0,
            subscription_changes: 0,
            subscriptions_recorded: 0,
        }
    }

    /// Allocates an outbound packet identifier not held by any in-flight message.
    /// Callers keep in-flight below 65,535, so one is always free.
    pub fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|i| i.packet_id == id) {
                return id;
            }
        }
    }

    /// Position of the in-flight entry for `packet_id`. Acknowledgements mostly arrive in
    /// order, so the search usually ends at the front.
    pub fn inflight_position(&self, packet_id: u16) -> Option<usize> {
        self.inflight.iter().position(|i| i.packet_id == packet_id)
    }

    /// QoS 1/2 messages in flight that count against the client's Receive Maximum.
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }
}
