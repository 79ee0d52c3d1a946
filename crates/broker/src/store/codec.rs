//! The byte encoding of store keys and records.
//!
//! Hand-written rather than derived: the records are few and flat, the layout is ours to
//! version (the store's format record), it adds no dependency, and a decoder that meets a
//! short or malformed record names the record and the field instead of panicking.
//! Integers are big-endian, so numeric key suffixes sort in order; strings and byte strings
//! carry a length prefix; `Option`s a presence byte.

use std::sync::Arc;

use bytes::Bytes;
use midge_proto::{
    PublishProperties, QoS, ReasonCode, RetainHandling, SubscriptionOptions, UserProperty, Will,
    WillProperties,
};

use crate::model::{Delivery, Message, MessageId, Millis};
use crate::model::{Stage, SubscriptionRecord};

/// A record or key that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{record}: {field} is truncated or invalid")]
pub struct CodecError {
    /// Which record.
    pub record: &'static str,
    /// Which field.
    pub field: &'static str,
}

/// Builds one record.
#[derive(Debug, Default)]
pub(crate) struct Encoder(Vec<u8>);

impl Encoder {
    pub(crate) fn finish(self) -> Vec<u8> {
        self.0
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    pub(crate) fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        // Payloads are bounded by the maximum packet size (< 2^28), so u32 always fits.
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(v);
        self
    }

    pub(crate) fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    fn opt<T>(&mut self, v: Option<T>, put: impl FnOnce(&mut Self, T)) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                put(self, v);
                self
            }
        }
    }
}

/// Reads one record; every read names the field it is for.
#[derive(Debug)]
pub(crate) struct Decoder<'a> {
    buf: &'a [u8],
    record: &'static str,
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(buf: &'a [u8], record: &'static str) -> Self {
        Self { buf, record }
    }

    fn error(&self, field: &'static str) -> CodecError {
        CodecError {
            record: self.record,
            field,
        }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(self.error(field));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], CodecError> {
        let bytes = self.take(N, field)?;
        <[u8; N]>::try_from(bytes).map_err(|_| self.error(field))
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, CodecError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, CodecError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.error(field)),
        }
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], CodecError> {
        let len = self.u32(field)?;
        let len = usize::try_from(len).map_err(|_| self.error(field))?;
        self.take(len, field)
    }

    pub(crate) fn str(&mut self, field: &'static str) -> Result<&'a str, CodecError> {
        let bytes = self.bytes(field)?;
        std::str::from_utf8(bytes).map_err(|_| self.error(field))
    }

    fn opt<T>(
        &mut self,
        field: &'static str,
        get: impl FnOnce(&mut Self) -> Result<T, CodecError>,
    ) -> Result<Option<T>, CodecError> {
        if self.bool(field)? {
            get(self).map(Some)
        } else {
            Ok(None)
        }
    }

    fn qos(&mut self, field: &'static str) -> Result<QoS, CodecError> {
        match self.u8(field)? {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            _ => Err(self.error(field)),
        }
    }

    /// The rest of the buffer (a key's last part).
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails if anything is left: a record longer than its layout is not ours.
    pub(crate) fn end(&self) -> Result<(), CodecError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.error("end of record (trailing bytes)"))
        }
    }
}

// ---- keys ----

/// The key prefix of everything a client's session owns: length-prefixed, so no client id
/// is a prefix of another's key space.
pub(crate) fn client_key(client_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(client_id.len() + 2 + 8);
    let len = u16::try_from(client_id.len()).unwrap_or(u16::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(client_id.as_bytes());
    key
}

#[cfg(test)]
pub(crate) fn client_key_with(client_id: &str, suffix: &[u8]) -> Vec<u8> {
    let mut key = client_key(client_id);
    key.extend_from_slice(suffix);
    key
}

/// Splits a session-owned key into the client id and the rest.
pub(crate) fn split_client_key<'a>(
    key: &'a [u8],
    record: &'static str,
) -> Result<(&'a str, &'a [u8]), CodecError> {
    let mut d = Decoder::new(key, record);
    let len = usize::from(d.u16("client id length")?);
    let id = d.take(len, "client id")?;
    let id = std::str::from_utf8(id).map_err(|_| d.error("client id"))?;
    Ok((id, d.rest()))
}

pub(crate) fn message_key(id: MessageId) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

pub(crate) fn decode_message_key(key: &[u8]) -> Result<MessageId, CodecError> {
    let mut d = Decoder::new(key, "message key");
    let id = d.u64("message id")?;
    d.end()?;
    Ok(id)
}

pub(crate) fn decode_u64_suffix(suffix: &[u8], record: &'static str) -> Result<u64, CodecError> {
    let mut d = Decoder::new(suffix, record);
    let v = d.u64("sequence number")?;
    d.end()?;
    Ok(v)
}

pub(crate) fn decode_u16_suffix(suffix: &[u8], record: &'static str) -> Result<u16, CodecError> {
    let mut d = Decoder::new(suffix, record);
    let v = d.u16("packet id")?;
    d.end()?;
    Ok(v)
}

// ---- records ----

/// The format-version record.
pub(crate) fn encode_format(version: u32) -> Vec<u8> {
    version.to_be_bytes().to_vec()
}

pub(crate) fn decode_format(value: &[u8]) -> Result<u32, CodecError> {
    let mut d = Decoder::new(value, "format record");
    let v = d.u32("format version")?;
    d.end()?;
    Ok(v)
}

/// A stored session: the incarnation it belongs to, its expiry interval and, while no
/// connection serves it, the wall-clock time it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRecord {
    /// Which incarnation of the client id this is (see `Mailbox::session_id`).
    pub session: u64,
    /// Session Expiry Interval, seconds.
    pub expiry_interval: u32,
    /// When it expires; `None` while connected or when it never expires.
    pub expires_at: Option<Millis>,
}

pub(crate) fn encode_session(r: &SessionRecord) -> Vec<u8> {
    let mut e = Encoder::default();
    e.u64(r.session)
        .u32(r.expiry_interval)
        .opt(r.expires_at, |e, v| {
            e.u64(v);
        });
    e.finish()
}

pub(crate) fn decode_session(value: &[u8]) -> Result<SessionRecord, CodecError> {
    let mut d = Decoder::new(value, "session record");
    let r = SessionRecord {
        session: d.u64("session id")?,
        expiry_interval: d.u32("expiry interval")?,
        expires_at: d.opt("expires at", |d| d.u64("expires at"))?,
    };
    d.end()?;
    Ok(r)
}

pub(crate) fn encode_subscription(r: &SubscriptionRecord) -> Vec<u8> {
    let o = r.options;
    let mut e = Encoder::default();
    e.u8(o.qos as u8)
        .bool(o.no_local)
        .bool(o.retain_as_published)
        .u8(match o.retain_handling {
            RetainHandling::SendAtSubscribe => 0,
            RetainHandling::SendIfNew => 1,
            RetainHandling::DontSend => 2,
        })
        .opt(r.identifier, |e, v| {
            e.u32(v);
        });
    e.finish()
}

pub(crate) fn decode_subscription(value: &[u8]) -> Result<SubscriptionRecord, CodecError> {
    let mut d = Decoder::new(value, "subscription record");
    let qos = d.qos("qos")?;
    let no_local = d.bool("no local")?;
    let retain_as_published = d.bool("retain as published")?;
    let retain_handling = match d.u8("retain handling")? {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DontSend,
        _ => return Err(d.error("retain handling")),
    };
    let identifier = d.opt("subscription identifier", |d| {
        d.u32("subscription identifier")
    })?;
    d.end()?;
    Ok(SubscriptionRecord {
        options: SubscriptionOptions {
            qos,
            no_local,
            retain_as_published,
            retain_handling,
        },
        identifier,
    })
}

/// What a queued or in-flight row says about its delivery; the message itself is a row of
/// its own, shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeliveryRecord {
    pub(crate) message: MessageId,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) subscription_ids: Vec<u32>,
    pub(crate) shared: Option<String>,
}

impl DeliveryRecord {
    pub(crate) fn of(delivery: &Delivery) -> Self {
        Self {
            message: delivery.message.id,
            qos: delivery.qos,
            retain: delivery.retain,
            subscription_ids: delivery.subscription_ids.clone(),
            shared: delivery.shared.as_deref().map(str::to_owned),
        }
    }

    pub(crate) fn into_delivery(self, message: Arc<Message>) -> Delivery {
        Delivery {
            message,
            qos: self.qos,
            retain: self.retain,
            subscription_ids: self.subscription_ids,
            shared: self.shared.map(Arc::from),
        }
    }
}

fn put_delivery(e: &mut Encoder, r: &DeliveryRecord) {
    e.u64(r.message).u8(r.qos as u8).bool(r.retain);
    e.u32(u32::try_from(r.subscription_ids.len()).unwrap_or(u32::MAX));
    for id in &r.subscription_ids {
        e.u32(*id);
    }
    e.opt(r.shared.as_deref(), |e, v| {
        e.str(v);
    });
}

fn get_delivery(d: &mut Decoder<'_>) -> Result<DeliveryRecord, CodecError> {
    let message = d.u64("message id")?;
    let qos = d.qos("qos")?;
    let retain = d.bool("retain")?;
    let n = d.u32("subscription identifier count")?;
    // Each identifier takes 4 bytes: a count larger than what is left is damage, and must
    // not become a huge allocation.
    if usize::try_from(n).map_or(true, |n| n > d.buf.len() / 4) {
        return Err(d.error("subscription identifier count"));
    }
    let mut subscription_ids = Vec::with_capacity(n as usize);
    for _ in 0..n {
        subscription_ids.push(d.u32("subscription identifier")?);
    }
    let shared = d.opt("shared subscription", |d| {
        d.str("shared subscription").map(str::to_owned)
    })?;
    Ok(DeliveryRecord {
        message,
        qos,
        retain,
        subscription_ids,
        shared,
    })
}

pub(crate) fn encode_queued(r: &DeliveryRecord) -> Vec<u8> {
    let mut e = Encoder::default();
    put_delivery(&mut e, r);
    e.finish()
}

pub(crate) fn decode_queued(value: &[u8]) -> Result<DeliveryRecord, CodecError> {
    let mut d = Decoder::new(value, "queued message record");
    let r = get_delivery(&mut d)?;
    d.end()?;
    Ok(r)
}

/// An outbound message in flight: its acknowledgement stage, its place in the resend order,
/// and the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InflightRecord {
    pub(crate) stage: Stage,
    pub(crate) order: u64,
    pub(crate) delivery: DeliveryRecord,
}

pub(crate) fn stage_byte(stage: Stage) -> u8 {
    match stage {
        Stage::AwaitPubAck => 0,
        Stage::AwaitPubRec => 1,
        Stage::AwaitPubComp => 2,
    }
}

/// Offset of the stage byte in an in-flight record, so a stage change rewrites one byte.
pub(crate) const INFLIGHT_STAGE_OFFSET: usize = 0;

pub(crate) fn encode_inflight(r: &InflightRecord) -> Vec<u8> {
    let mut e = Encoder::default();
    e.u8(stage_byte(r.stage)).u64(r.order);
    put_delivery(&mut e, &r.delivery);
    e.finish()
}

pub(crate) fn decode_inflight(value: &[u8]) -> Result<InflightRecord, CodecError> {
    let mut d = Decoder::new(value, "in-flight message record");
    let stage = match d.u8("stage")? {
        0 => Stage::AwaitPubAck,
        1 => Stage::AwaitPubRec,
        2 => Stage::AwaitPubComp,
        _ => return Err(d.error("stage")),
    };
    let order = d.u64("order")?;
    let delivery = get_delivery(&mut d)?;
    d.end()?;
    Ok(InflightRecord {
        stage,
        order,
        delivery,
    })
}

/// A held inbound QoS 2 id's row: the reason code of its PUBREC.
pub(crate) fn encode_pubrel(reason: ReasonCode) -> Vec<u8> {
    vec![reason.0]
}

/// An empty row, as written before the reason code was kept (a format both versions
/// read, so the format version stays), was a success.
pub(crate) fn decode_pubrel(value: &[u8]) -> Result<ReasonCode, CodecError> {
    let mut d = Decoder::new(value, "pubrel record");
    if value.is_empty() {
        return Ok(ReasonCode::SUCCESS);
    }
    let reason = ReasonCode(d.u8("reason code")?);
    d.end()?;
    Ok(reason)
}

fn put_user_properties(e: &mut Encoder, props: &[UserProperty]) {
    e.u32(u32::try_from(props.len()).unwrap_or(u32::MAX));
    for (k, v) in props {
        e.str(k).str(v);
    }
}

fn get_user_properties(d: &mut Decoder<'_>) -> Result<Vec<UserProperty>, CodecError> {
    let n = d.u32("user property count")?;
    // Each property takes at least 8 bytes (two length prefixes).
    if usize::try_from(n).map_or(true, |n| n > d.buf.len() / 8) {
        return Err(d.error("user property count"));
    }
    let mut props = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let k = d.str("user property name")?.to_owned();
        let v = d.str("user property value")?.to_owned();
        props.push((k, v));
    }
    Ok(props)
}

fn bytes_of(v: &[u8]) -> Bytes {
    Bytes::copy_from_slice(v)
}

pub(crate) fn encode_message(m: &Message) -> Vec<u8> {
    let p = &m.properties;
    let mut e = Encoder::default();
    e.str(&m.topic)
        .bytes(&m.payload)
        .u8(m.qos as u8)
        .bool(m.retain)
        .opt(p.payload_format_indicator, |e, v| {
            e.u8(v);
        })
        .opt(p.message_expiry_interval, |e, v| {
            e.u32(v);
        })
        .opt(p.topic_alias, |e, v| {
            e.u16(v);
        })
        .opt(p.response_topic.as_deref(), |e, v| {
            e.str(v);
        })
        .opt(p.correlation_data.as_deref(), |e, v| {
            e.bytes(v);
        });
    put_user_properties(&mut e, &p.user_properties);
    e.u32(u32::try_from(p.subscription_identifiers.len()).unwrap_or(u32::MAX));
    for id in &p.subscription_identifiers {
        e.u32(*id);
    }
    e.opt(p.content_type.as_deref(), |e, v| {
        e.str(v);
    })
    .opt(m.expires_at, |e, v| {
        e.u64(v);
    })
    .u64(m.received_at)
    .str(&m.origin);
    e.finish()
}

pub(crate) fn decode_message(id: MessageId, value: &[u8]) -> Result<Message, CodecError> {
    let mut d = Decoder::new(value, "message record");
    let topic = d.str("topic")?.to_owned();
    let payload = bytes_of(d.bytes("payload")?);
    let qos = d.qos("qos")?;
    let retain = d.bool("retain")?;
    let payload_format_indicator = d.opt("payload format indicator", |d| {
        d.u8("payload format indicator")
    })?;
    let message_expiry_interval = d.opt("message expiry interval", |d| {
        d.u32("message expiry interval")
    })?;
    let topic_alias = d.opt("topic alias", |d| d.u16("topic alias"))?;
    let response_topic = d.opt("response topic", |d| {
        d.str("response topic").map(str::to_owned)
    })?;
    let correlation_data = d.opt("correlation data", |d| {
        d.bytes("correlation data").map(bytes_of)
    })?;
    let user_properties = get_user_properties(&mut d)?;
    let n = d.u32("subscription identifier count")?;
    if usize::try_from(n).map_or(true, |n| n > d.buf.len() / 4) {
        return Err(d.error("subscription identifier count"));
    }
    let mut subscription_identifiers = Vec::with_capacity(n as usize);
    for _ in 0..n {
        subscription_identifiers.push(d.u32("subscription identifier")?);
    }
    let content_type = d.opt("content type", |d| d.str("content type").map(str::to_owned))?;
    let expires_at = d.opt("expires at", |d| d.u64("expires at"))?;
    let received_at = d.u64("received at")?;
    let origin = Arc::from(d.str("origin")?);
    d.end()?;
    Ok(Message {
        charge: Default::default(),
        id,
        topic,
        payload,
        qos,
        retain,
        properties: PublishProperties {
            payload_format_indicator,
            message_expiry_interval,
            topic_alias,
            response_topic,
            correlation_data,
            user_properties,
            subscription_identifiers,
            content_type,
        }
        .into(),
        expires_at,
        received_at,
        origin,
    })
}

/// A retained message keeps its own id, so it is a message record with the id in front.
pub(crate) fn encode_retained(m: &Message) -> Vec<u8> {
    let mut v = m.id.to_be_bytes().to_vec();
    v.extend_from_slice(&encode_message(m));
    v
}

pub(crate) fn decode_retained(value: &[u8]) -> Result<Message, CodecError> {
    let mut d = Decoder::new(value, "retained message record");
    let id = d.u64("message id")?;
    decode_message(id, d.rest())
}

/// A will waiting for its delay: the session incarnation it belongs to, when it is due,
/// and the will.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WillRecord {
    pub(crate) session: u64,
    pub(crate) publish_at: Millis,
    pub(crate) will: Will,
}

pub(crate) fn encode_will(r: &WillRecord) -> Vec<u8> {
    let w = &r.will;
    let p = &w.properties;
    let mut e = Encoder::default();
    e.u64(r.session)
        .u64(r.publish_at)
        .str(&w.topic)
        .bytes(&w.payload)
        .u8(w.qos as u8)
        .bool(w.retain)
        .opt(p.will_delay_interval, |e, v| {
            e.u32(v);
        })
        .opt(p.payload_format_indicator, |e, v| {
            e.u8(v);
        })
        .opt(p.message_expiry_interval, |e, v| {
            e.u32(v);
        })
        .opt(p.content_type.as_deref(), |e, v| {
            e.str(v);
        })
        .opt(p.response_topic.as_deref(), |e, v| {
            e.str(v);
        })
        .opt(p.correlation_data.as_deref(), |e, v| {
            e.bytes(v);
        });
    put_user_properties(&mut e, &p.user_properties);
    e.finish()
}

pub(crate) fn decode_will(value: &[u8]) -> Result<WillRecord, CodecError> {
    let mut d = Decoder::new(value, "will record");
    let session = d.u64("session id")?;
    let publish_at = d.u64("publish at")?;
    let topic = d.str("topic")?.to_owned();
    let payload = bytes_of(d.bytes("payload")?);
    let qos = d.qos("qos")?;
    let retain = d.bool("retain")?;
    let will_delay_interval = d.opt("will delay interval", |d| d.u32("will delay interval"))?;
    let payload_format_indicator = d.opt("payload format indicator", |d| {
        d.u8("payload format indicator")
    })?;
    let message_expiry_interval = d.opt("message expiry interval", |d| {
        d.u32("message expiry interval")
    })?;
    let content_type = d.opt("content type", |d| d.str("content type").map(str::to_owned))?;
    let response_topic = d.opt("response topic", |d| {
        d.str("response topic").map(str::to_owned)
    })?;
    let correlation_data = d.opt("correlation data", |d| {
        d.bytes("correlation data").map(bytes_of)
    })?;
    let user_properties = get_user_properties(&mut d)?;
    d.end()?;
    Ok(WillRecord {
        session,
        publish_at,
        will: Will {
            topic,
            payload,
            qos,
            retain,
            properties: WillProperties {
                will_delay_interval,
                payload_format_indicator,
                message_expiry_interval,
                content_type,
                response_topic,
                correlation_data,
                user_properties,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_message() -> Message {
        Message {
            charge: Default::default(),
            id: 42,
            topic: "a/b".into(),
            payload: Bytes::from_static(b"payload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(9),
                topic_alias: Some(3),
                response_topic: Some("resp".into()),
                correlation_data: Some(Bytes::from_static(b"corr")),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
                subscription_identifiers: vec![7, 8],
                content_type: Some("text/plain".into()),
            }
            .into(),
            expires_at: Some(123_456),
            received_at: 100,
            origin: Arc::from("publisher"),
        }
    }

    #[test]
    fn pubrel_rows_keep_the_reason_and_old_empty_rows_read_as_success() {
        for reason in [ReasonCode::SUCCESS, ReasonCode::NO_MATCHING_SUBSCRIBERS] {
            assert_eq!(decode_pubrel(&encode_pubrel(reason)), Ok(reason));
        }
        assert_eq!(decode_pubrel(&[]), Ok(ReasonCode::SUCCESS));
        assert!(decode_pubrel(&[0x10, 0x00]).is_err());
    }

    #[test]
    fn message_round_trips_with_every_property() {
        let m = full_message();
        assert_eq!(decode_message(42, &encode_message(&m)).unwrap(), m);
        assert_eq!(decode_retained(&encode_retained(&m)).unwrap(), m);
        let bare = Message::internal("t".into(), Bytes::new(), false, 5);
        assert_eq!(
            decode_message(bare.id, &encode_message(&bare)).unwrap(),
            bare
        );
    }

    #[test]
    fn every_truncation_of_a_message_is_an_error_naming_the_record() {
        let bytes = encode_message(&full_message());
        for len in 0..bytes.len() {
            let err = decode_message(1, &bytes[..len]).unwrap_err();
            assert_eq!(err.record, "message record");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_message(1, &longer).is_err());
    }

    #[test]
    fn a_huge_count_is_refused_without_allocating() {
        // message id, qos 1, retain 0, then a subscription identifier count of 2^32-1.
        let mut v = 5u64.to_be_bytes().to_vec();
        v.extend([1, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        let err = decode_queued(&v).unwrap_err();
        assert_eq!(err.field, "subscription identifier count");
    }

    #[test]
    fn will_session_subscription_and_inflight_round_trip() {
        let will = WillRecord {
            session: 3,
            publish_at: 99,
            will: Will {
                topic: "w".into(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: WillProperties {
                    will_delay_interval: Some(10),
                    payload_format_indicator: Some(0),
                    message_expiry_interval: Some(60),
                    content_type: Some("c".into()),
                    response_topic: Some("r".into()),
                    correlation_data: Some(Bytes::from_static(b"x")),
                    user_properties: vec![("a".into(), "b".into())],
                },
            },
        };
        assert_eq!(decode_will(&encode_will(&will)).unwrap(), will);

        let session = SessionRecord {
            session: 9,
            expiry_interval: u32::MAX,
            expires_at: Some(77),
        };
        assert_eq!(decode_session(&encode_session(&session)).unwrap(), session);

        let sub = SubscriptionRecord {
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DontSend,
            },
            identifier: Some(268_435_455),
        };
        assert_eq!(
            decode_subscription(&encode_subscription(&sub)).unwrap(),
            sub
        );

        let inflight = InflightRecord {
            stage: Stage::AwaitPubComp,
            order: 17,
            delivery: DeliveryRecord {
                message: 5,
                qos: QoS::ExactlyOnce,
                retain: false,
                subscription_ids: vec![1, 2],
                shared: Some("$share/g/t".into()),
            },
        };
        let bytes = encode_inflight(&inflight);
        assert_eq!(bytes[INFLIGHT_STAGE_OFFSET], 2);
        assert_eq!(decode_inflight(&bytes).unwrap(), inflight);
    }

    #[test]
    fn client_keys_split_back_and_do_not_prefix_each_other() {
        let a = client_key_with("ab", &7u64.to_be_bytes());
        let (id, rest) = split_client_key(&a, "queue key").unwrap();
        assert_eq!(id, "ab");
        assert_eq!(decode_u64_suffix(rest, "queue key").unwrap(), 7);
        // "a" followed by bytes that spell "b..." never collides with "ab".
        assert!(!client_key_with("abc", b"").starts_with(&client_key("ab")));
        assert!(split_client_key(&[0, 5, b'a'], "k").is_err());
    }
}
