//! The protocol header and frames: streaming decode from a `BytesMut`, encoding into one.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::method::{BasicProperties, Method};
use crate::wire::{Reader, Writer};

/// What an AMQP 0-9-1 client sends first, and what the server answers any other header with.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";
/// The last octet of every frame.
pub const FRAME_END: u8 = 0xCE;
/// The smallest frame-max a peer may set (spec 4.2.1): every connection method fits.
pub const FRAME_MIN_SIZE: u32 = 4096;
/// Frame header (type, channel, size) plus the end octet.
const FRAME_OVERHEAD: usize = 8;

const TYPE_METHOD: u8 = 1;
const TYPE_HEADER: u8 = 2;
const TYPE_BODY: u8 = 3;
const TYPE_HEARTBEAT: u8 = 8;

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderCheck {
    /// Fewer than 8 bytes so far, all consistent with the 0-9-1 header.
    NeedMore,
    /// The AMQP 0-9-1 header.
    Ok,
    /// Anything else: answer with [`PROTOCOL_HEADER`] and close (spec 4.2.2).
    Wrong,
}

/// Checks the protocol header at the start of `buf` (without consuming it).
pub fn check_protocol_header(buf: &[u8]) -> HeaderCheck {
    let n = buf.len().min(PROTOCOL_HEADER.len());
    if buf[..n] != PROTOCOL_HEADER[..n] {
        HeaderCheck::Wrong
    } else if n < PROTOCOL_HEADER.len() {
        HeaderCheck::NeedMore
    } else {
        HeaderCheck::Ok
    }
}

/// A content header frame's payload.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentHeader {
    /// The class of the method it follows (60, basic).
    pub class_id: u16,
    /// Total size of the body frames that follow.
    pub body_size: u64,
    /// The properties.
    pub properties: BasicProperties,
}

/// One frame's payload.
#[derive(Debug, Clone, PartialEq)]
pub enum FramePayload {
    /// A method.
    Method(Method),
    /// A content header.
    Header(ContentHeader),
    /// A piece of a content body.
    Body(Bytes),
    /// A heartbeat (channel 0, empty).
    Heartbeat,
}

/// One frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Channel number (0: the connection).
    pub channel: u16,
    /// What it carries.
    pub payload: FramePayload,
}

/// Decodes one frame from the front of `buf`: `Ok(None)` until a whole frame is there.
/// A frame larger than `frame_max` (whole frame, as the spec counts it; 0: no limit) is
/// refused from its header, before its payload is buffered.
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, DecodeError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    let whole = u64::from(size) + FRAME_OVERHEAD as u64;
    if !matches!(kind, TYPE_METHOD | TYPE_HEADER | TYPE_BODY | TYPE_HEARTBEAT) {
        return Err(DecodeError::UnknownFrameType(kind));
    }
    if frame_max != 0 && whole > u64::from(frame_max) {
        return Err(DecodeError::TooLarge {
            size: whole,
            max: frame_max,
        });
    }
    // `whole` fits in usize on every target midge builds for (64-bit); on 32-bit a frame
    // over usize::MAX is refused by frame_max first, as frame_max is a u32.
    let Ok(whole) = usize::try_from(whole) else {
        return Err(DecodeError::TooLarge {
            size: whole,
            max: frame_max,
        });
    };
    if buf.len() < whole {
        // Grow towards the frame a bounded step at a time: the size is the peer's word.
        buf.reserve((whole - buf.len()).min(64 * 1024));
        return Ok(None);
    }
    let end = buf[whole - 1];
    if end != FRAME_END {
        return Err(DecodeError::BadFrameEnd(end));
    }
    let mut frame = buf.split_to(whole);
    frame.advance(7);
    frame.truncate(size as usize);
    let payload = frame.freeze();
    let payload = match kind {
        TYPE_METHOD => FramePayload::Method(Method::decode(payload)?),
        TYPE_HEADER => FramePayload::Header(decode_header(payload)?),
        TYPE_BODY => FramePayload::Body(payload),
        _ => {
            if channel != 0 || size != 0 {
                return Err(DecodeError::BadHeartbeat { channel, size });
            }
            FramePayload::Heartbeat
        }
    };
    Ok(Some(Frame { channel, payload }))
}

fn decode_header(payload: Bytes) -> Result<ContentHeader, DecodeError> {
    const W: &str = "content header";
    let mut r = Reader::new(payload);
    let class_id = r.u16(W)?;
    let _weight = r.u16(W)?;
    let body_size = r.u64(W)?;
    let properties = BasicProperties::decode(&mut r)?;
    Ok(ContentHeader {
        class_id,
        body_size,
        properties,
    })
}

/// Writes a frame around what `body` writes, patching the size in afterwards.
fn framed(out: &mut BytesMut, kind: u8, channel: u16, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(kind);
    out.put_u16(channel);
    let size_at = out.len();
    out.put_u32(0);
    let start = out.len();
    body(out);
    let size = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
}

/// Encodes a method frame.
pub fn encode_method(channel: u16, method: &Method, out: &mut BytesMut) {
    framed(out, TYPE_METHOD, channel, |out| method.encode(out));
}

/// Encodes a heartbeat frame.
pub fn encode_heartbeat(out: &mut BytesMut) {
    framed(out, TYPE_HEARTBEAT, 0, |_| {});
}

/// Encodes a content header and the body, split into body frames within `frame_max`
/// (0: one body frame).
pub fn encode_content(
    channel: u16,
    properties: &BasicProperties,
    body: &[u8],
    frame_max: u32,
    out: &mut BytesMut,
) {
    framed(out, TYPE_HEADER, channel, |out| {
        let mut w = Writer::new(out);
        w.u16(crate::method::class::BASIC);
        w.u16(0);
        w.u64(body.len() as u64);
        properties.encode(&mut w);
    });
    let chunk = match frame_max {
        0 => body.len().max(1),
        n => (n as usize).saturating_sub(FRAME_OVERHEAD).max(1),
    };
    for piece in body.chunks(chunk) {
        framed(out, TYPE_BODY, channel, |out| out.put_slice(piece));
    }
}

/// Encodes any frame (tests and tools; the server uses the specific encoders).
pub fn encode_frame(frame: &Frame, out: &mut BytesMut) {
    match &frame.payload {
        FramePayload::Method(m) => encode_method(frame.channel, m, out),
        FramePayload::Header(h) => framed(out, TYPE_HEADER, frame.channel, |out| {
            let mut w = Writer::new(out);
            w.u16(h.class_id);
            w.u16(0);
            w.u64(h.body_size);
            h.properties.encode(&mut w);
        }),
        FramePayload::Body(b) => framed(out, TYPE_BODY, frame.channel, |out| out.put_slice(b)),
        FramePayload::Heartbeat => encode_heartbeat(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::reply;
    use crate::table::{FieldTable, FieldValue};

    fn decode_all(bytes: &[u8], frame_max: u32) -> Result<Vec<Frame>, DecodeError> {
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(f) = decode_frame(&mut buf, frame_max)? {
            frames.push(f);
        }
        Ok(frames)
    }

    #[test]
    fn protocol_header() {
        assert_eq!(check_protocol_header(b"AMQ"), HeaderCheck::NeedMore);
        assert_eq!(check_protocol_header(b"AMQP\0\0\x09\x01"), HeaderCheck::Ok);
        // AMQP 1.0 and 0-8 headers, and MQTT's CONNECT, are refused.
        assert_eq!(check_protocol_header(b"AMQP\0\x01\0\0"), HeaderCheck::Wrong);
        assert_eq!(
            check_protocol_header(b"AMQP\x01\x01\x08\x00"),
            HeaderCheck::Wrong
        );
        assert_eq!(
            check_protocol_header(b"\x10\x0c\0\x04MQTT"),
            HeaderCheck::Wrong
        );
        assert_eq!(check_protocol_header(b"GET"), HeaderCheck::Wrong);
    }

    #[test]
    fn spec_bytes_of_channel_open_and_heartbeat() {
        // channel.open on channel 1: class 20, method 10, reserved shortstr "".
        let bytes =
            b"\x01\x00\x01\x00\x00\x00\x05\x00\x14\x00\x0a\x00\xce\x08\x00\x00\x00\x00\x00\x00\xce";
        let frames = decode_all(bytes, 0).unwrap();
        assert_eq!(
            frames,
            vec![
                Frame {
                    channel: 1,
                    payload: FramePayload::Method(Method::ChannelOpen)
                },
                Frame {
                    channel: 0,
                    payload: FramePayload::Heartbeat
                },
            ]
        );
        let mut out = BytesMut::new();
        encode_method(1, &Method::ChannelOpen, &mut out);
        encode_heartbeat(&mut out);
        assert_eq!(&out[..], &bytes[..]);
    }

    #[test]
    fn spec_bytes_of_basic_publish_with_packed_bits() {
        // basic.publish: ticket 0, exchange "amq.topic", routing key "a.b", mandatory=1.
        let mut payload = vec![0, 60, 0, 40, 0, 0, 9];
        payload.extend_from_slice(b"amq.topic");
        payload.push(3);
        payload.extend_from_slice(b"a.b");
        payload.push(0b01);
        let m = Method::decode(Bytes::from(payload.clone())).unwrap();
        assert_eq!(
            m,
            Method::BasicPublish {
                exchange: "amq.topic".into(),
                routing_key: "a.b".into(),
                mandatory: true,
                immediate: false
            }
        );
        let mut out = BytesMut::new();
        m.encode(&mut out);
        assert_eq!(&out[..], &payload[..]);
        // Five bits of queue.declare share one octet: passive, durable, exclusive,
        // auto-delete, no-wait = 0b10110 means durable, exclusive, no-wait.
        let decl = [0, 50, 0, 10, 0, 0, 1, b'q', 0b10110, 0, 0, 0, 0];
        assert_eq!(
            Method::decode(Bytes::copy_from_slice(&decl)).unwrap(),
            Method::QueueDeclare {
                queue: "q".into(),
                passive: false,
                durable: true,
                exclusive: true,
                auto_delete: false,
                no_wait: true,
                arguments: FieldTable::default()
            }
        );
    }

    #[test]
    fn content_round_trip_split_by_frame_max() {
        let mut headers = FieldTable::default();
        headers.insert("x-mqtt-publish-qos", FieldValue::U8(1));
        let props = BasicProperties {
            content_type: Some("text/plain".into()),
            headers: Some(headers),
            delivery_mode: Some(2),
            correlation_id: Some("c1".into()),
            reply_to: Some("r.to".into()),
            expiration: Some("60000".into()),
            timestamp: Some(7),
            ..BasicProperties::default()
        };
        let body = vec![7u8; 10_000];
        let mut out = BytesMut::new();
        encode_content(3, &props, &body, 4096, &mut out);
        let frames = decode_all(&out, 4096).unwrap();
        assert_eq!(frames.len(), 1 + 3);
        let FramePayload::Header(h) = &frames[0].payload else {
            panic!("not a header: {frames:?}")
        };
        assert_eq!((h.class_id, h.body_size), (60, 10_000));
        assert_eq!(h.properties, props);
        let joined: Vec<u8> = frames[1..]
            .iter()
            .flat_map(|f| match &f.payload {
                FramePayload::Body(b) => b.to_vec(),
                _ => panic!("not a body"),
            })
            .collect();
        assert_eq!(joined, body);
    }

    #[test]
    fn every_method_round_trips() {
        let t = FieldTable(vec![("k".into(), FieldValue::Bool(true))]);
        let methods = vec![
            Method::ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties: t.clone(),
                mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN"),
                locales: Bytes::from_static(b"en_US"),
            },
            Method::ConnectionStartOk {
                client_properties: t.clone(),
                mechanism: "PLAIN".into(),
                response: Bytes::from_static(b"\0guest\0guest"),
                locale: "en_US".into(),
            },
            Method::ConnectionTune {
                channel_max: 2047,
                frame_max: 131072,
                heartbeat: 60,
            },
            Method::ConnectionOpen {
                virtual_host: "/".into(),
            },
            Method::ConnectionOpenOk,
            Method::ConnectionClose {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            },
            Method::ChannelFlow { active: true },
            Method::ExchangeDeclare {
                exchange: "amq.topic".into(),
                kind: "topic".into(),
                passive: true,
                durable: true,
                auto_delete: false,
                internal: false,
                no_wait: false,
                arguments: t.clone(),
            },
            Method::QueueBind {
                queue: "q".into(),
                exchange: "amq.topic".into(),
                routing_key: "a.*".into(),
                no_wait: false,
                arguments: t.clone(),
            },
            Method::QueueDelete {
                queue: "q".into(),
                if_unused: true,
                if_empty: false,
                no_wait: true,
            },
            Method::QueueUnbind {
                queue: "q".into(),
                exchange: "amq.topic".into(),
                routing_key: "#".into(),
                arguments: t.clone(),
            },
            Method::BasicConsume {
                queue: "q".into(),
                consumer_tag: "ctag".into(),
                no_local: false,
                no_ack: true,
                exclusive: false,
                no_wait: false,
                arguments: t,
            },
            Method::BasicDeliver {
                consumer_tag: "ctag".into(),
                delivery_tag: u64::MAX,
                redelivered: true,
                exchange: "amq.topic".into(),
                routing_key: "a.b".into(),
            },
            Method::BasicGetOk {
                delivery_tag: 1,
                redelivered: false,
                exchange: "".into(),
                routing_key: "q".into(),
                message_count: 4,
            },
            Method::BasicNack {
                delivery_tag: 5,
                multiple: true,
                requeue: false,
            },
            Method::ConfirmSelect { no_wait: false },
            Method::TxCommit,
        ];
        for m in methods {
            let mut out = BytesMut::new();
            encode_method(9, &m, &mut out);
            let frames = decode_all(&out, 0).unwrap();
            assert_eq!(
                frames[0].payload,
                FramePayload::Method(m.clone()),
                "{}",
                m.name()
            );
        }
    }

    #[test]
    fn bad_frames_carry_their_reply_codes() {
        // Frame type 9 does not exist.
        let err = decode_all(b"\x09\0\0\0\0\0\0\xce", 0).unwrap_err();
        assert_eq!(err.reply_code(), reply::FRAME_ERROR);
        // Bad frame end.
        let err = decode_all(b"\x08\0\0\0\0\0\0\xcd", 0).unwrap_err();
        assert_eq!(err, DecodeError::BadFrameEnd(0xcd));
        // Heartbeat on channel 1.
        let err = decode_all(b"\x08\0\x01\0\0\0\0\xce", 0).unwrap_err();
        assert_eq!(err.reply_code(), reply::FRAME_ERROR);
        // Over frame-max: refused from the header alone.
        let err = decode_all(b"\x03\0\x01\x00\x01\x00\x00", 4096).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::TooLarge {
                size: 65544,
                max: 4096
            }
        ));
        assert_eq!(err.reply_code(), reply::FRAME_ERROR);
        // Unknown method 60.99.
        let err = decode_all(b"\x01\0\x01\0\0\0\x04\0\x3c\0\x63\xce", 0).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnknownMethod {
                class: 60,
                method: 99
            }
        );
        assert_eq!(err.reply_code(), reply::NOT_IMPLEMENTED);
        // basic.ack cut short.
        let err = decode_all(b"\x01\0\x01\0\0\0\x06\0\x3c\0\x50\0\0\xce", 0).unwrap_err();
        assert_eq!(err.reply_code(), reply::SYNTAX_ERROR);
        // A content header with a continuation flag.
        let err = decode_all(
            b"\x02\0\x01\0\0\0\x0e\0\x3c\0\0\0\0\0\0\0\0\0\0\0\x01\xce",
            0,
        )
        .unwrap_err();
        assert_eq!(err.reply_code(), reply::SYNTAX_ERROR);
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut whole = BytesMut::new();
        encode_method(
            1,
            &Method::BasicQos {
                prefetch_size: 0,
                prefetch_count: 10,
                global: false,
            },
            &mut whole,
        );
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(decode_frame(&mut buf, 0), Ok(None), "cut at {cut}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_all(&bytes, 4096);
            let _ = decode_all(&bytes, 0);
            let _ = Method::decode(Bytes::from(bytes.clone()));
            let _ = check_protocol_header(&bytes);
        }

        #[test]
        fn mutated_frames_never_panic(
            which in 0usize..4,
            at in 0usize..200,
            value in proptest::num::u8::ANY,
            cut in 0usize..200,
        ) {
            // Valid frames with one byte changed and the tail cut off somewhere: reaches
            // deeper into method and header decoding than random bytes do.
            let mut out = BytesMut::new();
            match which {
                0 => encode_method(1, &Method::QueueDeclare {
                    queue: "lalalala".into(), passive: false, durable: true, exclusive: false,
                    auto_delete: false, no_wait: false,
                    arguments: FieldTable(vec![("x-expires".into(), FieldValue::I32(1000)),
                        ("n".into(), FieldValue::Table(FieldTable(vec![("a".into(), FieldValue::Array(vec![FieldValue::Void]))])))]),
                }, &mut out),
                1 => encode_content(1, &BasicProperties {
                    headers: Some(FieldTable(vec![("x-mqtt-publish-qos".into(), FieldValue::U8(1))])),
                    delivery_mode: Some(2), content_type: Some("a".into()), ..Default::default()
                }, b"hello", 0, &mut out),
                2 => encode_method(0, &Method::ConnectionStartOk {
                    client_properties: FieldTable(vec![("product".into(), FieldValue::string("x"))]),
                    mechanism: "PLAIN".into(), response: Bytes::from_static(b"\0u\0p"), locale: "en_US".into(),
                }, &mut out),
                _ => encode_method(1, &Method::BasicPublish {
                    exchange: "amq.topic".into(), routing_key: "a.b".into(), mandatory: true, immediate: false,
                }, &mut out),
            }
            if at < out.len() {
                out[at] = value;
            }
            out.truncate(cut.max(1));
            let _ = decode_all(&out, 4096);
        }
    }
}
