//! The routed message envelope and the per-subscriber delivery that points at it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use midge_proto::{Publish, PublishProperties, QoS, Will};

use crate::memory::{Ledger, MemoryBudget};

/// Wall-clock milliseconds since the Unix epoch. Message and session expiry are absolute
/// wall-clock times so they keep counting across restarts and can cross machines.
pub type Millis = u64;

/// The current wall-clock time in [`Millis`].
pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// Identifies a [`Message`]: unique in the process, and above every id found in the store
/// at start, so the store can keep one copy of a message however many sessions queue it.
pub type MessageId = u64;

static NEXT_MESSAGE_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh [`MessageId`].
pub fn next_message_id() -> MessageId {
    NEXT_MESSAGE_ID.fetch_add(1, Ordering::Relaxed)
}

/// Makes every later [`next_message_id`] greater than `id` (ids found in the store at start).
pub fn message_ids_above(id: MessageId) {
    NEXT_MESSAGE_ID.fetch_max(id.saturating_add(1), Ordering::Relaxed);
}

/// One application message as the broker routes it: shared by every subscriber through an
/// `Arc`, never copied per subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Process-unique id; the store keys the message by it.
    pub id: MessageId,
    /// Topic name (aliases already resolved).
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS the publisher used; each delivery is capped by its subscription's QoS.
    pub qos: QoS,
    /// The publisher's RETAIN flag.
    pub retain: bool,
    /// Properties to forward. Topic alias, subscription identifiers and message expiry are
    /// per delivery and kept out of here.
    pub properties: Properties,
    /// Absolute expiry, from the publisher's Message Expiry Interval.
    pub expires_at: Option<Millis>,
    /// When the broker received it; the forwarded expiry interval is the remainder.
    pub received_at: Millis,
    /// Client id of the publisher, for no-local; empty for messages the broker makes.
    pub origin: Arc<str>,
    /// What the message counts in the memory budget, from when the broker takes it on
    /// ([`Charge::new`] in `Broker::publish`, the retained store) until it is dropped.
    pub charge: Charge,
}

/// A message's v5 properties, boxed, and absent when there are none (most messages): the
/// envelope is moved several times on its way into its `Arc`, and the properties would
/// be over half of it. Reads go through `Deref`; a write makes the box.
#[derive(Clone, Default)]
pub struct Properties(Option<Box<PublishProperties>>);

/// What a message without properties reads as.
static NO_PROPERTIES: PublishProperties = PublishProperties {
    payload_format_indicator: None,
    message_expiry_interval: None,
    topic_alias: None,
    response_topic: None,
    correlation_data: None,
    user_properties: Vec::new(),
    subscription_identifiers: Vec::new(),
    content_type: None,
};

impl Properties {
    /// Boxes `properties`, or holds nothing when they are all absent.
    pub fn new(properties: PublishProperties) -> Self {
        // Field by field: the derived `==` against an empty value costs more than this.
        let p = &properties;
        if p.payload_format_indicator.is_none()
            && p.message_expiry_interval.is_none()
            && p.topic_alias.is_none()
            && p.response_topic.is_none()
            && p.correlation_data.is_none()
            && p.user_properties.is_empty()
            && p.subscription_identifiers.is_empty()
            && p.content_type.is_none()
        {
            Self(None)
        } else {
            Self(Some(Box::new(properties)))
        }
    }
}

impl From<PublishProperties> for Properties {
    fn from(properties: PublishProperties) -> Self {
        Self::new(properties)
    }
}

impl std::ops::Deref for Properties {
    type Target = PublishProperties;

    fn deref(&self) -> &PublishProperties {
        self.0.as_deref().unwrap_or(&NO_PROPERTIES)
    }
}

impl std::ops::DerefMut for Properties {
    /// Makes the box if there is none yet.
    fn deref_mut(&mut self) -> &mut PublishProperties {
        self.0.get_or_insert_with(Box::default)
    }
}

impl PartialEq for Properties {
    /// By value: no box equals a box of absent properties.
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Properties {}

impl PartialEq<PublishProperties> for Properties {
    fn eq(&self, other: &PublishProperties) -> bool {
        **self == *other
    }
}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// A message's count in the memory budget: set when the broker takes the message on
/// (before it is shared), given back when the last reference to it goes. So a message
/// queued for many sessions counts once (each delivery adds only its slot), and it counts
/// as long as anything holds it: queues, in-flight windows, the retained store.
#[derive(Default)]
pub struct Charge(Option<(&'static Ledger, u64)>);

impl Charge {
    /// Counts `bytes` in `budget` now (and no more when dropped), through the thread's sum
    /// (see [`Ledger`]).
    pub fn new(budget: &MemoryBudget, bytes: u64) -> Self {
        Self::in_ledger(budget.ledger(), bytes)
    }

    /// Counts `bytes` in `ledger`.
    pub fn in_ledger(ledger: &'static Ledger, bytes: u64) -> Self {
        ledger.add(i64::try_from(bytes).unwrap_or(i64::MAX));
        Self(Some((ledger, bytes)))
    }

    /// What is counted, if anything.
    pub fn bytes(&self) -> u64 {
        self.0.as_ref().map_or(0, |(_, bytes)| *bytes)
    }

    /// The count it is in, if any.
    pub fn ledger(&self) -> Option<&'static Ledger> {
        self.0.as_ref().map(|(ledger, _)| *ledger)
    }
}

impl Clone for Charge {
    /// A copy of a message is a message of its own, not counted yet.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for Charge {
    /// Not part of what a message is.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Charge {}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Charge({})", self.bytes())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some((ledger, bytes)) = self.0 {
            ledger.add(-i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }
}

impl Message {
    /// Builds the envelope for a PUBLISH received from `origin`.
    pub fn from_publish(publish: Publish, origin: Arc<str>, now: Millis) -> Self {
        let mut properties = publish.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let expiry = properties.message_expiry_interval.take();
        Self {
            id: next_message_id(),
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties: Properties::new(properties),
            expires_at: expiry.map(|secs| now + u64::from(secs) * 1000),
            received_at: now,
            origin,
            charge: Charge::default(),
        }
    }

    /// Builds the message a will turns into.
    pub fn from_will(will: Will, origin: Arc<str>, now: Millis) -> Self {
        let p = will.properties;
        Self {
            id: next_message_id(),
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties: Properties::new(PublishProperties {
                payload_format_indicator: p.payload_format_indicator,
                content_type: p.content_type,
                response_topic: p.response_topic,
                correlation_data: p.correlation_data,
                user_properties: p.user_properties,
                ..PublishProperties::default()
            }),
            expires_at: p
                .message_expiry_interval
                .map(|secs| now + u64::from(secs) * 1000),
            received_at: now,
            origin,
            charge: Charge::default(),
        }
    }

    /// A message the broker itself publishes (`$SYS`).
    pub fn internal(topic: String, payload: Bytes, retain: bool, now: Millis) -> Self {
        Self {
            id: next_message_id(),
            topic,
            payload,
            qos: QoS::AtMostOnce,
            retain,
            properties: Properties::default(),
            expires_at: None,
            received_at: now,
            origin: Arc::from(""),
            charge: Charge::default(),
        }
    }

    /// True once the message expiry interval has passed [MQTT-3.3.2-5].
    pub fn is_expired(&self, now: Millis) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// The Message Expiry Interval to forward: the received value minus the time the
    /// message waited in the broker, rounded up so it never reads 0 while still alive
    /// [MQTT-3.3.2-6].
    pub fn remaining_expiry(&self, now: Millis) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_sub(now);
            u32::try_from(left.div_ceil(1000)).unwrap_or(u32::MAX)
        })
    }

    /// A copy whose payload and correlation data have allocations of their own, of
    /// their exact size. Received payloads are slices of the connection's read buffer (up
    /// to 64 KiB, or a whole large packet), so a message kept beyond its immediate
    /// delivery (retained, or queued behind a backlog) would keep all of that buffer
    /// alive, where its [`Message::weight`] counts only its own bytes. The other
    /// properties are owned strings already.
    pub fn compacted(&self) -> Self {
        let mut properties = self.properties.clone();
        if let Some(data) = properties
            .0
            .as_mut()
            .and_then(|p| p.correlation_data.as_mut())
        {
            *data = Bytes::copy_from_slice(data);
        }
        let mut copy = Self {
            payload: Bytes::copy_from_slice(&self.payload),
            properties,
            ..self.clone()
        };
        // The copy counts where the original does, for as long as it lives.
        if let Some(ledger) = self.charge.ledger() {
            copy.charge = Charge::in_ledger(ledger, copy.footprint());
        }
        copy
    }

    /// What the message occupies: [`Message::weight`], the envelope and its `Arc` counts.
    pub fn footprint(&self) -> u64 {
        let boxed = if self.properties.0.is_some() {
            std::mem::size_of::<PublishProperties>()
        } else {
            0
        };
        (std::mem::size_of::<Self>() + 2 * std::mem::size_of::<usize>() + boxed + self.weight())
            as u64
    }

    /// A rough size for queue accounting: payload, topic and properties that hold data.
    pub fn weight(&self) -> usize {
        let p = &self.properties;
        self.payload.len()
            + self.topic.len()
            + p.user_properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + p.correlation_data.as_ref().map_or(0, Bytes::len)
            + p.response_topic.as_ref().map_or(0, String::len)
            + p.content_type.as_ref().map_or(0, String::len)
    }
}

/// One message on its way to one session: the shared message plus what differs per
/// subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The shared message.
    pub message: Arc<Message>,
    /// The QoS to deliver with: min(publish QoS, subscription QoS) [MQTT-3.8.4-8].
    pub qos: QoS,
    /// RETAIN flag to send [MQTT-3.3.1-8] [MQTT-3.3.1-9] [MQTT-3.3.1-12] [MQTT-3.3.1-13].
    pub retain: bool,
    /// Identifiers of every matching subscription of this session [MQTT-3.3.4-3].
    pub subscription_ids: Vec<u32>,
    /// The `$share/{group}/{filter}` subscription this came through, so it can be handed
    /// to another member if this session ends before delivering it.
    pub shared: Option<Arc<str>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(properties: PublishProperties) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t".into(),
            packet_id: 1,
            properties,
            payload: Bytes::from_static(b"p"),
        }
    }

    /// The envelope is moved into its `Arc` and between tasks by value: keep it small
    /// (it was 272 bytes with the properties inline).
    #[test]
    fn the_envelope_stays_small() {
        assert!(
            std::mem::size_of::<Message>() <= 160,
            "Message is {} bytes",
            std::mem::size_of::<Message>()
        );
    }

    #[test]
    fn properties_are_boxed_only_when_some_are_present() {
        // Per-delivery properties are taken out, so these leave nothing to box.
        let per_delivery = PublishProperties {
            topic_alias: Some(3),
            message_expiry_interval: Some(10),
            subscription_identifiers: vec![4],
            ..PublishProperties::default()
        };
        let m = Message::from_publish(publish(per_delivery), Arc::from("c"), 1_000);
        assert!(m.properties.0.is_none());
        assert_eq!(m.properties.content_type, None);
        assert_eq!(m.expires_at, Some(11_000));
        let plain_footprint = m.footprint();

        let kept = PublishProperties {
            content_type: Some("text/plain".into()),
            ..PublishProperties::default()
        };
        let mut m = Message::from_publish(publish(kept.clone()), Arc::from("c"), 0);
        assert!(m.properties.0.is_some());
        assert_eq!(m.properties, kept);
        // The box counts in the footprint, beside the content type's bytes.
        assert_eq!(
            m.footprint(),
            plain_footprint + (std::mem::size_of::<PublishProperties>() + 10) as u64
        );
        // Equal by value, boxed or not; a write makes the box.
        let mut none = Properties::default();
        assert_eq!(none, Properties::new(PublishProperties::default()));
        none.response_topic = Some("r".into());
        assert!(none.0.is_some());
        m.properties.content_type = None;
        assert_eq!(m.properties, Properties::default());
        assert_eq!(*m.properties, PublishProperties::default());
    }
}
