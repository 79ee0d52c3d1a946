//! Persistent sessions moving between nodes while their node is alive (hand-over).
//!
//! When a CONNECT on node B displaces a connection on node A, B asks A to let the client
//! id go (`ownership.rs`). A closes the connection, which parks the session as on one
//! node; A then takes the parked session out of its registry ([`take_for_handover`]):
//! its subscriptions leave A's router (and A's NATS interest), its queue is closed, and
//! the whole state (subscriptions with options and identifiers, in-flight messages with
//! their packet ids and stages, inbound QoS 2 ids awaiting PUBREL, queued messages) goes
//! back to B in the reply, encoded here. B installs it ([`install`]) before its CONNACK,
//! which then says session present.
//!
//! The reply is one NATS message, so it is bounded by the server's `max_payload`: the
//! subscriptions, PUBREL ids and in-flight messages always go (a session whose state
//! alone exceeds it hands over nothing, logged); queued messages go oldest first while
//! they fit, and the newer rest is dropped, counted in `publish_dropped` and logged.
//!
//! Messages routed on A between its taking the session out and B's subscribing are not
//! delivered (at most once across nodes, as in the stage 1 guarantee table).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use midge_proto::{QoS, ReasonCode, RetainHandling, SubscriptionOptions};

use super::envelope::{self, Origin};
use crate::broker::Broker;
use crate::model::{Delivery, Inflight, Message, Stage, SubscriptionRecord, now_millis};
use crate::session::SessionState;
use crate::stats::Stats;

/// Longest a session record's read, write or delete waits for JetStream (the same as a
/// client-id claim, `ownership::CLAIM_TIMEOUT`).
const KV_TIMEOUT: Duration = Duration::from_secs(3);

/// First bytes of a hand-over (a reply without a session is `0` or `1`).
const MAGIC: &[u8; 4] = b"MSH1";
/// Room kept under `max_payload` for NATS's own framing of the reply.
const FRAMING: usize = 1024;

/// A session handed over by another node.
#[derive(Debug, Default)]
pub struct Handover {
    /// Subscriptions by filter.
    pub subscriptions: Vec<(String, SubscriptionRecord)>,
    /// In-flight outbound messages, oldest first.
    pub inflight: Vec<Inflight>,
    /// Inbound QoS 2 ids awaiting PUBREL, with their PUBREC reason.
    pub awaiting_pubrel: Vec<(u16, ReasonCode)>,
    /// Queued messages, oldest first.
    pub queued: Vec<Delivery>,
    /// Queued messages the sender left out (over `max_payload`).
    pub cut: u32,
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u32(s.len() as u32);
    out.put_slice(s);
}

fn put_delivery(out: &mut BytesMut, d: &Delivery, now: u64) {
    out.put_u8(d.qos as u8);
    out.put_u8(u8::from(d.retain));
    out.put_u32(d.subscription_ids.len() as u32);
    for id in &d.subscription_ids {
        out.put_u32(*id);
    }
    match &d.shared {
        Some(s) => {
            out.put_u8(1);
            put_str(out, s.as_bytes());
        }
        None => out.put_u8(0),
    }
    put_str(out, d.message.topic.as_bytes());
    let origin = Origin {
        node: String::new(),
        incarnation: 0,
        seq: 0,
    };
    let remaining = d.message.expires_at.map(|at| at.saturating_sub(now));
    put_str(out, &envelope::encode(&origin, &d.message, remaining));
}

/// Encodes `state` and its `queued` messages in at most `max` bytes; the second value
/// counts queued messages left out. `None` when even the state without queue exceeds it.
pub fn encode(state: &SessionState, queued: &[Delivery], max: usize) -> Option<(Bytes, u32)> {
    encode_with(state, &state.inflight, queued, max)
}

fn encode_with(
    state: &SessionState,
    inflight: &std::collections::VecDeque<Inflight>,
    queued: &[Delivery],
    max: usize,
) -> Option<(Bytes, u32)> {
    let now = now_millis();
    let mut out = BytesMut::new();
    out.put_slice(MAGIC);
    out.put_u32(state.subscriptions.len() as u32);
    for (filter, record) in state.subscriptions.iter() {
        put_str(&mut out, filter.as_bytes());
        let o = record.options;
        out.put_u8(o.qos as u8);
        out.put_u8(u8::from(o.no_local) | (u8::from(o.retain_as_published) << 1));
        out.put_u8(match o.retain_handling {
            RetainHandling::SendAtSubscribe => 0,
            RetainHandling::SendIfNew => 1,
            RetainHandling::DontSend => 2,
        });
        match record.identifier {
            Some(id) => {
                out.put_u8(1);
                out.put_u32(id);
            }
            None => out.put_u8(0),
        }
    }
    out.put_u32(state.awaiting_pubrel.len() as u32);
    for (id, reason) in &state.awaiting_pubrel {
        out.put_u16(*id);
        out.put_u8(reason.0);
    }
    out.put_u32(inflight.len() as u32);
    for i in inflight {
        out.put_u16(i.packet_id);
        out.put_u8(match i.stage {
            Stage::AwaitPubAck => 0,
            Stage::AwaitPubRec => 1,
            Stage::AwaitPubComp => 2,
        });
        put_delivery(&mut out, &i.delivery, now);
    }
    // Count and cut (8 bytes) follow.
    if out.len() + 8 > max {
        return None;
    }
    let mut body = BytesMut::new();
    let mut sent = 0u32;
    for d in queued {
        let before = body.len();
        put_delivery(&mut body, d, now);
        if out.len() + 8 + body.len() > max {
            body.truncate(before);
            break;
        }
        sent += 1;
    }
    let cut = (queued.len() as u32).saturating_sub(sent);
    out.put_u32(sent);
    out.put_u32(cut);
    out.put_slice(&body);
    Some((out.freeze(), cut))
}

struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), &'static str> {
        if self.0.remaining() < n {
            Err("truncated session hand-over")
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }
    fn bytes(&mut self) -> Result<Bytes, &'static str> {
        let n = self.u32()? as usize;
        self.need(n)?;
        Ok(self.0.split_to(n))
    }
    fn string(&mut self) -> Result<String, &'static str> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "invalid session hand-over")
    }
    /// A count of items each at least `min` bytes long: bounds allocations by the input.
    fn count(&mut self, min: usize) -> Result<usize, &'static str> {
        let n = self.u32()? as usize;
        if n > self.0.remaining() / min {
            return Err("invalid session hand-over count");
        }
        Ok(n)
    }
    fn qos(&mut self) -> Result<QoS, &'static str> {
        QoS::from_u8(self.u8()?).ok_or("invalid QoS in session hand-over")
    }
    fn delivery(&mut self, now: u64) -> Result<Delivery, &'static str> {
        let qos = self.qos()?;
        let retain = self.u8()? != 0;
        let n = self.count(4)?;
        let mut subscription_ids = Vec::with_capacity(n);
        for _ in 0..n {
            subscription_ids.push(self.u32()?);
        }
        let shared = match self.u8()? {
            0 => None,
            _ => Some(Arc::from(self.string()?)),
        };
        let topic = self.string()?;
        let (_, message): (Origin, Message) = envelope::decode(topic, self.bytes()?, now)
            .map_err(|_| "invalid message in session hand-over")?;
        Ok(Delivery {
            message: Arc::new(message),
            qos,
            retain,
            subscription_ids,
            shared,
        })
    }
}

/// Decodes a reply to a request to let go: `None` for a reply without a session.
pub fn decode(buf: Bytes) -> Option<Result<Handover, &'static str>> {
    if !buf.starts_with(MAGIC) {
        return None;
    }
    Some(decode_body(buf.slice(MAGIC.len()..)))
}

fn decode_body(buf: Bytes) -> Result<Handover, &'static str> {
    let now = now_millis();
    let mut r = Reader(buf);
    let mut h = Handover::default();
    for _ in 0..r.count(8)? {
        let filter = r.string()?;
        let qos = r.qos()?;
        let flags = r.u8()?;
        let retain_handling = match r.u8()? {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DontSend,
            _ => return Err("invalid retain handling in session hand-over"),
        };
        let identifier = match r.u8()? {
            0 => None,
            _ => Some(r.u32()?),
        };
        h.subscriptions.push((
            filter,
            SubscriptionRecord {
                options: SubscriptionOptions {
                    qos,
                    no_local: flags & 1 != 0,
                    retain_as_published: flags & 2 != 0,
                    retain_handling,
                },
                identifier,
            },
        ));
    }
    for _ in 0..r.count(3)? {
        let id = r.u16()?;
        h.awaiting_pubrel.push((id, ReasonCode(r.u8()?)));
    }
    for _ in 0..r.count(3)? {
        let packet_id = r.u16()?;
        let stage = match r.u8()? {
            0 => Stage::AwaitPubAck,
            1 => Stage::AwaitPubRec,
            2 => Stage::AwaitPubComp,
            _ => return Err("invalid stage in session hand-over"),
        };
        h.inflight.push(Inflight {
            packet_id,
            delivery: r.delivery(now)?,
            stage,
        });
    }
    let sent = r.count(8)?;
    h.cut = r.u32()?;
    for _ in 0..sent {
        h.queued.push(r.delivery(now)?);
    }
    Ok(h)
}

/// The KV bucket of parked persistent sessions' records.
pub const SESSIONS_BUCKET: &str = "midge_sessions";

/// [`SESSIONS_BUCKET`]'s configuration: one value per client id, on disk.
pub fn bucket_config() -> async_nats::jetstream::kv::Config {
    async_nats::jetstream::kv::Config {
        bucket: SESSIONS_BUCKET.to_owned(),
        description: "midge: parked persistent sessions (subscriptions, expiry)".into(),
        history: 1,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

/// What survives a node's death of a session it parks: its subscriptions and inbound
/// QoS 2 ids, no messages (stage 1: messages held by a dead node are lost). `None` when
/// the session has no subscription (nothing worth a write).
pub fn record(state: &SessionState) -> Option<Bytes> {
    if state.subscriptions.is_empty() {
        return None;
    }
    encode_with(state, &std::collections::VecDeque::new(), &[], usize::MAX).map(|(b, _)| b)
}

/// Writes a session record: when it expires (milliseconds since the epoch by the writing
/// node's clock, `u64::MAX`: never), then the encoded state.
pub async fn put_record(
    sessions: &async_nats::jetstream::kv::Store,
    client_id: &str,
    key: String,
    record: Bytes,
    expires_at: Option<u64>,
    max: usize,
) {
    if record.len() + 8 + FRAMING > max {
        tracing::warn!(client_id = %client_id, "cluster: session record exceeds NATS max_payload; not kept beyond this node");
        return;
    }
    let mut value = BytesMut::with_capacity(record.len() + 8);
    value.put_u64(expires_at.unwrap_or(u64::MAX));
    value.put_slice(&record);
    match tokio::time::timeout(KV_TIMEOUT, sessions.put(key, value.freeze())).await {
        Ok(Ok(_)) => {}
        _ => {
            tracing::warn!(client_id = %client_id, "cluster: session record not written (NATS JetStream unreachable)")
        }
    }
}

/// Takes the record under `key` of a session parked on a node that died: the encoded
/// hand-over, unless missing or expired. The record is deleted either way.
pub async fn restore_record(
    sessions: &async_nats::jetstream::kv::Store,
    key: &str,
) -> Option<Bytes> {
    let entry = tokio::time::timeout(KV_TIMEOUT, sessions.entry(key))
        .await
        .ok()?
        .ok()??;
    let _ = tokio::time::timeout(KV_TIMEOUT, sessions.delete(key)).await;
    if entry.operation != async_nats::jetstream::kv::Operation::Put || entry.value.len() < 8 {
        return None;
    }
    let mut value = entry.value;
    let expires_at = value.get_u64();
    // The writing node's clock against this one's: keep them NTP-synchronised.
    (expires_at > now_millis()).then_some(value)
}

/// Takes `client_id`'s parked session out of this node for a hand-over to another node:
/// its subscriptions leave the router, its queue closes. `None` when none is parked here
/// (a clean session, or it ended). The session's delayed will comes out with it, for the
/// caller to cancel or publish.
pub fn take_for_handover(
    broker: &Broker,
    client_id: &str,
    max: usize,
) -> (Option<Bytes>, Option<midge_proto::Will>) {
    let Some((state, will)) = broker.registry.take_parked(client_id) else {
        return (None, None);
    };
    (encode_handover(broker, client_id, state, max), will)
}

fn encode_handover(
    broker: &Broker,
    client_id: &str,
    state: SessionState,
    max: usize,
) -> Option<Bytes> {
    for filter in state.subscriptions.keys() {
        broker.router.unsubscribe_mailbox(filter, &state.mailbox);
    }
    let queued = state.mailbox.close();
    match encode(&state, &queued, max.saturating_sub(FRAMING)) {
        Some((bytes, cut)) => {
            if cut > 0 {
                Stats::add(&broker.stats.publish_dropped, u64::from(cut));
                tracing::warn!(client_id = %client_id, dropped = cut, "cluster: session handed to another node without its newest queued messages (over NATS max_payload)");
            }
            Some(bytes)
        }
        None => {
            Stats::add(&broker.stats.publish_dropped, queued.len() as u64);
            tracing::warn!(client_id = %client_id, "cluster: session state exceeds NATS max_payload; not handed over, the client starts a new session");
            None
        }
    }
}

/// Installs a session handed over by another node into `state` (the session this
/// connection attached): subscriptions into the router, in-flight messages, PUBREL ids
/// and queued messages.
pub fn install(broker: &Broker, state: &mut SessionState, handover: Handover) {
    for (filter, record) in handover.subscriptions {
        broker
            .router
            .subscribe(&state.mailbox, &filter, record.options, record.identifier);
        state.subscriptions.insert(filter, record);
    }
    for (packet_id, reason) in handover.awaiting_pubrel {
        state.awaiting_pubrel.insert(packet_id, reason);
    }
    for inflight in handover.inflight {
        // A session this node kept for the id may use the packet id: the message then
        // waits in the queue instead.
        if state.inflight_position(inflight.packet_id).is_some() {
            state
                .mailbox
                .push(inflight.delivery, &broker.queue_limits());
        } else {
            state.inflight.push_back(inflight);
        }
    }
    let limits = broker.queue_limits();
    for delivery in handover.queued {
        state.mailbox.push(delivery, &limits);
    }
    if handover.cut > 0 {
        tracing::warn!(client_id = %state.client_id, dropped = handover.cut, "cluster: session arrived without its newest queued messages (over NATS max_payload)");
    }
}

/// Decodes and installs a reply carrying a session ([`install`]); false when the reply
/// carries none or is invalid (logged: the client then starts a new session).
pub fn install_encoded(broker: &Broker, state: &mut SessionState, reply: Bytes) -> bool {
    match decode(reply) {
        Some(Ok(handover)) => {
            install(broker, state, handover);
            true
        }
        Some(Err(e)) => {
            tracing::warn!(client_id = %state.client_id, error = e, "cluster: session from another node not installed");
            false
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::Mailbox;

    fn delivery(topic: &str, payload: &'static [u8], qos: QoS) -> Delivery {
        let mut m = Message::internal(topic.to_owned(), Bytes::from_static(payload), false, 1);
        m.qos = qos;
        Delivery {
            message: Arc::new(m),
            qos,
            retain: false,
            subscription_ids: vec![7],
            shared: None,
        }
    }

    #[test]
    fn round_trip_and_cut_by_size() {
        let id: Arc<str> = Arc::from("c");
        let mut state = SessionState::new(id.clone(), Mailbox::new(id));
        let options = SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DontSend,
        };
        state.subscriptions.insert(
            "a/+".to_owned(),
            SubscriptionRecord {
                options,
                identifier: Some(7),
            },
        );
        state.awaiting_pubrel.insert(9, ReasonCode::SUCCESS);
        state.inflight.push_back(Inflight {
            packet_id: 3,
            delivery: delivery("a/x", b"in flight", QoS::ExactlyOnce),
            stage: Stage::AwaitPubRec,
        });
        let queued: Vec<Delivery> = (0..10)
            .map(|_| delivery("a/y", b"queued message", QoS::AtLeastOnce))
            .collect();
        let (all, cut) = encode(&state, &queued, 1 << 20).expect("fits");
        assert_eq!(cut, 0);
        let h = decode(all.clone()).expect("a hand-over").expect("valid");
        assert_eq!(h.subscriptions.len(), 1);
        assert_eq!(h.subscriptions[0].0, "a/+");
        assert_eq!(h.subscriptions[0].1.options, options);
        assert_eq!(h.subscriptions[0].1.identifier, Some(7));
        assert_eq!(h.awaiting_pubrel, vec![(9, ReasonCode::SUCCESS)]);
        assert_eq!(h.inflight.len(), 1);
        assert_eq!(h.inflight[0].packet_id, 3);
        assert_eq!(h.inflight[0].stage, Stage::AwaitPubRec);
        assert_eq!(&h.inflight[0].delivery.message.payload[..], b"in flight");
        assert_eq!(h.queued.len(), 10);
        assert_eq!(h.queued[0].message.topic, "a/y");
        assert_eq!(h.queued[0].subscription_ids, vec![7]);

        // Half the queue's room: the oldest go, the rest are counted.
        let max = all.len() - (all.len() / 4);
        let (part, cut) = encode(&state, &queued, max).expect("state fits");
        assert!(part.len() <= max);
        let h = decode(part).expect("a hand-over").expect("valid");
        assert!(cut > 0 && h.queued.len() as u32 + cut == 10, "{cut}");
        assert_eq!(h.cut, cut);
        assert!(encode(&state, &queued, 20).is_none());

        assert!(decode(Bytes::from_static(b"1")).is_none());
        for n in 0..all.len() {
            // Every truncation is an error, never a panic.
            assert!(decode(all.slice(..n)).is_none_or(|r| r.is_err() || n == all.len()));
        }
    }
}
