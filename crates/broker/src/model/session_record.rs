//! What a session keeps about its subscriptions and its outbound messages in flight:
//! plain data, shared by the session machine, the registry and the store.

use midge_proto::SubscriptionOptions;

use super::message::Delivery;

/// A subscription as the session remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// Options from SUBSCRIBE.
    pub options: SubscriptionOptions,
    /// v5 subscription identifier.
    pub identifier: Option<u32>,
}

/// Where an outbound QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    AwaitPubAck,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    AwaitPubRec,
    /// QoS 2 PUBREL sent, waiting for PUBCOMP.
    AwaitPubComp,
}

/// An outbound message the client has not finished acknowledging.
#[derive(Debug, Clone)]
pub struct Inflight {
    /// Packet identifier it was sent with; never reused while this entry exists.
    pub packet_id: u16,
    /// What was sent.
    pub delivery: Delivery,
    /// Acknowledgement stage.
    pub stage: Stage,
}
