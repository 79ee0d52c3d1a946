//! The bytes a message travels in between nodes (the NATS payload; the topic is the
//! subject). Compact and ours: a version byte, where the message came from (node, its
//! incarnation and a sequence number, for duplicate suppression), a flags byte saying
//! which properties follow, the properties, and the payload as the rest, so the receiver
//! slices it without copying. Lengths and numbers are LEB128 varints.
//!
//! Expiry travels as the time remaining, not the absolute time, so nodes whose clocks
//! disagree still agree on how long a message lives.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use midge_proto::{PublishProperties, QoS};

use crate::model::{Message, Millis, next_message_id};

const VERSION: u8 = 1;

const RETAIN: u8 = 1 << 2;
const FORMAT: u8 = 1 << 3;
const EXPIRY: u8 = 1 << 4;
const RESPONSE_TOPIC: u8 = 1 << 5;
const CORRELATION: u8 = 1 << 6;
const CONTENT_TYPE: u8 = 1 << 7;

/// Where a forwarded message comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The publishing node's `node_id`.
    pub node: String,
    /// Which run of that node (its start time in microseconds): sequence numbers restart
    /// with the process.
    pub incarnation: u64,
    /// The node's count of forwarded messages, from 1, in publish order.
    pub seq: u64,
}

/// Why bytes from NATS are not an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster message: {0} is truncated or invalid")]
pub struct EnvelopeError(&'static str);

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn put_bytes(out: &mut BytesMut, v: &[u8]) {
    put_varint(out, v.len() as u64);
    out.put_slice(v);
}

/// Encodes `message` from `origin`; `remaining_ms` is its remaining lifetime, if it has an
/// expiry (the caller drops messages already expired).
pub fn encode(origin: &Origin, message: &Message, remaining_ms: Option<Millis>) -> Bytes {
    let mut out = BytesMut::new();
    encode_into(&mut out, origin, message, remaining_ms);
    out.freeze()
}

/// [`encode`], appended to `out`: a caller encoding message after message reuses one
/// buffer instead of allocating for each.
pub fn encode_into(
    out: &mut BytesMut,
    origin: &Origin,
    message: &Message,
    remaining_ms: Option<Millis>,
) {
    let p = &message.properties;
    let mut flags = message.qos as u8;
    let mut set = |bit: u8, on: bool| {
        if on {
            flags |= bit;
        }
    };
    set(RETAIN, message.retain);
    set(FORMAT, p.payload_format_indicator.is_some());
    set(EXPIRY, remaining_ms.is_some());
    set(RESPONSE_TOPIC, p.response_topic.is_some());
    set(CORRELATION, p.correlation_data.is_some());
    set(CONTENT_TYPE, p.content_type.is_some());
    let properties: usize = p
        .user_properties
        .iter()
        .map(|(k, v)| k.len() + v.len() + 10)
        .sum();
    out.reserve(
        32 + origin.node.len()
            + message.origin.len()
            + p.response_topic.as_ref().map_or(0, String::len)
            + p.correlation_data.as_ref().map_or(0, Bytes::len)
            + p.content_type.as_ref().map_or(0, String::len)
            + properties
            + message.payload.len(),
    );
    out.put_u8(VERSION);
    put_bytes(out, origin.node.as_bytes());
    put_varint(out, origin.incarnation);
    put_varint(out, origin.seq);
    out.put_u8(flags);
    put_bytes(out, message.origin.as_bytes());
    if let Some(v) = p.payload_format_indicator {
        out.put_u8(v);
    }
    if let Some(v) = remaining_ms {
        put_varint(out, v);
    }
    if let Some(v) = &p.response_topic {
        put_bytes(out, v.as_bytes());
    }
    if let Some(v) = &p.correlation_data {
        put_bytes(out, v);
    }
    if let Some(v) = &p.content_type {
        put_bytes(out, v.as_bytes());
    }
    put_varint(out, p.user_properties.len() as u64);
    for (k, v) in &p.user_properties {
        put_bytes(out, k.as_bytes());
        put_bytes(out, v.as_bytes());
    }
    out.put_slice(&message.payload);
}

struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn u8(&mut self, what: &'static str) -> Result<u8, EnvelopeError> {
        let v = *self.buf.get(self.pos).ok_or(EnvelopeError(what))?;
        self.pos += 1;
        Ok(v)
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, EnvelopeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8(what)?;
            v |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(EnvelopeError(what))
    }

    fn bytes(&mut self, what: &'static str) -> Result<Bytes, EnvelopeError> {
        let len = self.varint(what)?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.pos.checked_add(len))
            .filter(|end| *end <= self.buf.len())
            .ok_or(EnvelopeError(what))?;
        let v = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(v)
    }

    fn string(&mut self, what: &'static str) -> Result<String, EnvelopeError> {
        String::from_utf8(self.bytes(what)?.to_vec()).map_err(|_| EnvelopeError(what))
    }
}

/// Decodes an envelope for `topic` received at `now` into its origin and a new message
/// of this node (its own id; expiry counted from `now`).
pub fn decode(topic: String, buf: Bytes, now: Millis) -> Result<(Origin, Message), EnvelopeError> {
    let mut r = Reader { buf, pos: 0 };
    if r.u8("version")? != VERSION {
        return Err(EnvelopeError("version"));
    }
    let origin = Origin {
        node: r.string("node")?,
        incarnation: r.varint("incarnation")?,
        seq: r.varint("sequence")?,
    };
    let flags = r.u8("flags")?;
    let qos = match flags & 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return Err(EnvelopeError("qos")),
    };
    let client: Arc<str> = Arc::from(r.string("origin client")?);
    let mut properties = PublishProperties::default();
    if flags & FORMAT != 0 {
        properties.payload_format_indicator = Some(r.u8("payload format")?);
    }
    let mut expires_at = None;
    if flags & EXPIRY != 0 {
        expires_at = Some(now.saturating_add(r.varint("expiry")?));
    }
    if flags & RESPONSE_TOPIC != 0 {
        properties.response_topic = Some(r.string("response topic")?);
    }
    if flags & CORRELATION != 0 {
        properties.correlation_data = Some(r.bytes("correlation data")?);
    }
    if flags & CONTENT_TYPE != 0 {
        properties.content_type = Some(r.string("content type")?);
    }
    let count = r.varint("user property count")?;
    // Each property takes at least two bytes: bounds the allocation by the input.
    if count > (r.buf.len() - r.pos) as u64 / 2 {
        return Err(EnvelopeError("user property count"));
    }
    properties.user_properties.reserve(count as usize);
    for _ in 0..count {
        let k = r.string("user property name")?;
        let v = r.string("user property value")?;
        properties.user_properties.push((k, v));
    }
    let payload = r.buf.slice(r.pos..);
    let message = Message {
        id: next_message_id(),
        topic,
        payload,
        qos,
        retain: flags & RETAIN != 0,
        properties: properties.into(),
        expires_at,
        received_at: now,
        origin: client,
        charge: Default::default(),
    };
    Ok((origin, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            node: "node-a".into(),
            incarnation: 1_765_000_000_000_000,
            seq: 300,
        }
    }

    fn message(qos: QoS, retain: bool, properties: PublishProperties) -> Message {
        Message {
            id: 7,
            topic: "a/b".into(),
            payload: Bytes::from_static(b"payload \x00\xff"),
            qos,
            retain,
            properties: properties.into(),
            expires_at: None,
            received_at: 5,
            origin: "publisher".into(),
            charge: Default::default(),
        }
    }

    #[test]
    fn every_property_round_trips() {
        let properties = PublishProperties {
            payload_format_indicator: Some(1),
            response_topic: Some("reply/é".into()),
            correlation_data: Some(Bytes::from_static(b"\x01\x02")),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), String::new())],
            content_type: Some("text/plain".into()),
            ..PublishProperties::default()
        };
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for retain in [false, true] {
                let sent = message(qos, retain, properties.clone());
                let bytes = encode(&origin(), &sent, Some(2_500));
                let (from, got) = decode("a/b".into(), bytes, 1_000).unwrap();
                assert_eq!(from, origin());
                assert_eq!(got.qos, qos);
                assert_eq!(got.retain, retain);
                assert_eq!(got.properties, properties);
                assert_eq!(got.payload, sent.payload);
                assert_eq!(&*got.origin, "publisher");
                assert_eq!(got.expires_at, Some(3_500), "remaining time from receipt");
                assert_eq!(got.received_at, 1_000);
                assert_eq!(got.topic, "a/b");
            }
        }
    }

    #[test]
    fn a_bare_message_is_small() {
        let sent = message(QoS::AtMostOnce, false, PublishProperties::default());
        let bytes = encode(&origin(), &sent, None);
        // version, node, incarnation, seq, flags, client, property count, payload.
        assert_eq!(bytes.len(), 1 + 7 + 8 + 2 + 1 + 10 + 1 + sent.payload.len());
        let (_, got) = decode("a/b".into(), bytes, 9).unwrap();
        assert_eq!(got.expires_at, None);
        assert_eq!(got.properties, PublishProperties::default());
    }

    #[test]
    fn truncated_or_corrupt_input_is_an_error_not_a_panic() {
        let properties = PublishProperties {
            response_topic: Some("r".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..PublishProperties::default()
        };
        let bytes = encode(
            &origin(),
            &message(QoS::ExactlyOnce, true, properties),
            Some(1),
        );
        let payload_len = 10;
        for end in 0..bytes.len() - payload_len {
            assert!(decode("t".into(), bytes.slice(..end), 0).is_err(), "{end}");
        }
        let mut wrong_version = bytes.to_vec();
        wrong_version[0] = 2;
        assert!(decode("t".into(), wrong_version.into(), 0).is_err());
        let qos3 = [VERSION, 0, 0, 0, 3, 0, 0];
        assert_eq!(
            decode("t".into(), Bytes::copy_from_slice(&qos3), 0).unwrap_err(),
            EnvelopeError("qos")
        );
        let huge_count = [VERSION, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x03];
        assert!(decode("t".into(), Bytes::copy_from_slice(&huge_count), 0).is_err());
    }
}
