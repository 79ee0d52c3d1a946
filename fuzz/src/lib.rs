//! Checks shared by the fuzz targets, and the seed corpus they start from.
//!
//! The targets only call these; keeping the oracles here lets the seed test below run
//! them on every seed with plain `cargo test`, so a seed that stops decoding (or stops
//! round-tripping) after a protocol change is noticed without a fuzz run.

use bytes::BytesMut;
use midge_proto::{DecodeError, Decoder, MAX_PACKET_SIZE, Packet, ProtocolVersion};

pub mod seeds;

/// The three versions, indexed by a fuzz input byte.
pub const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V31,
    ProtocolVersion::V311,
    ProtocolVersion::V5,
];

/// What decoding a byte stream gave: the packets in order, then the error that ended it
/// (if any), and the bytes left undecoded (only meaningful without an error).
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    pub packets: Vec<(Packet, Option<ProtocolVersion>)>,
    pub error: Option<DecodeError>,
    pub left: Vec<u8>,
}

/// Decodes `bytes` arriving in one read.
pub fn decode_at_once(decoder: Decoder, bytes: &[u8]) -> Decoded {
    decode_in_chunks(decoder, bytes, bytes.len())
}

/// Decodes `bytes` arriving in reads of `chunk` bytes, calling the decoder after every
/// read until it wants more, as the connection task does.
pub fn decode_in_chunks(mut decoder: Decoder, bytes: &[u8], chunk: usize) -> Decoded {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(packet)) => {
                    // A decoded packet always consumes bytes; otherwise the caller's loop
                    // would spin forever.
                    assert!(buf.len() < before, "a packet was decoded from no bytes");
                    packets.push((packet, decoder.version()));
                }
                Ok(None) => {
                    assert_eq!(
                        buf.len(),
                        before,
                        "Ok(None) must leave the buffer untouched"
                    );
                    break;
                }
                Err(error) => {
                    return Decoded {
                        packets,
                        error: Some(error),
                        left: Vec::new(),
                    };
                }
            }
        }
    }
    Decoded {
        packets,
        error: None,
        left: buf.to_vec(),
    }
}

/// Whatever decodes must encode again, at the length `encoded_len` predicts, and decode
/// to the same packet. `version` is the one the packet was decoded in; a CONNECT is
/// encoded in its own protocol version and decoded by a fresh server-side decoder.
pub fn check_round_trip(packet: &Packet, version: ProtocolVersion) {
    let (version, mut decoder) = match packet {
        Packet::Connect(connect) => (connect.protocol, Decoder::new(MAX_PACKET_SIZE)),
        _ => (version, Decoder::with_version(version, MAX_PACKET_SIZE)),
    };
    let mut buf = BytesMut::new();
    if let Err(e) = packet.encode(version, &mut buf) {
        panic!("decoded packet does not encode in {version:?}: {e}\n{packet:#?}");
    }
    let len = packet
        .encoded_len(version)
        .expect("encode worked, so encoded_len must");
    assert_eq!(len, buf.len(), "encoded_len disagrees with encode");
    let encoded = buf.clone();
    match decoder.decode(&mut buf) {
        Ok(Some(again)) => {
            assert_eq!(
                &again, packet,
                "round trip changed the packet ({version:?}): {encoded:?}"
            );
            assert!(buf.is_empty(), "round trip left bytes over");
        }
        other => panic!(
            "re-encoded packet does not decode ({version:?}): {other:?}\n{encoded:?}\n{packet:#?}"
        ),
    }

    // Within its own size the packet is written as is; one byte less either trims it to
    // something that still decodes, or refuses.
    let mut within = BytesMut::new();
    packet
        .encode_within(version, len, &mut within)
        .expect("a packet fits its own size");
    assert_eq!(
        within, encoded,
        "encode_within at full size changed the bytes"
    );
    let mut smaller = BytesMut::new();
    if packet.encode_within(version, len - 1, &mut smaller).is_ok() {
        assert!(smaller.len() < len, "encode_within exceeded its limit");
        let mut decoder = match packet {
            Packet::Connect(_) => Decoder::new(MAX_PACKET_SIZE),
            _ => Decoder::with_version(version, MAX_PACKET_SIZE),
        };
        match decoder.decode(&mut smaller) {
            Ok(Some(trimmed)) => assert_eq!(trimmed.name(), packet.name()),
            other => panic!("trimmed packet does not decode: {other:?}"),
        }
    } else {
        assert!(smaller.is_empty(), "a refused encode_within wrote bytes");
    }
}

/// Decodes `bytes` at once and in chunks of `chunk`; both must agree, and every packet
/// must round-trip.
pub fn check_stream(decoder: Decoder, bytes: &[u8], chunk: usize) {
    let whole = decode_at_once(decoder.clone(), bytes);
    let pieces = decode_in_chunks(decoder, bytes, chunk);
    assert_eq!(
        whole, pieces,
        "decoding depends on how the bytes were split"
    );
    for (packet, version) in &whole.packets {
        let version = version.expect("a decoded packet implies a known version");
        check_round_trip(packet, version);
    }
}

/// What decoding an AMQP byte stream gave: the header check, the frames (each
/// re-encoded, so floats compare by their bits), the error that ended it, and the bytes
/// left over.
#[derive(Debug, PartialEq, Eq)]
pub struct AmqpDecoded {
    pub header: &'static str,
    pub frames: Vec<Vec<u8>>,
    pub error: Option<midge_amqp_proto::DecodeError>,
    pub left: Vec<u8>,
}

fn encode_amqp(frame: &midge_amqp_proto::Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    midge_amqp_proto::encode_frame(frame, &mut out);
    out.to_vec()
}

/// Decodes an AMQP client's bytes arriving in reads of `chunk` bytes, as the connection
/// task does: the protocol header when it is there, then frames within `frame_max`.
pub fn decode_amqp_in_chunks(bytes: &[u8], chunk: usize, frame_max: u32) -> AmqpDecoded {
    use midge_amqp_proto::{HeaderCheck, PROTOCOL_HEADER, check_protocol_header, decode_frame};
    let mut buf = BytesMut::new();
    let mut header = "need more";
    let mut frames = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        if header == "need more" {
            match check_protocol_header(&buf) {
                HeaderCheck::NeedMore => continue,
                HeaderCheck::Ok => {
                    header = "ok";
                    let _ = buf.split_to(PROTOCOL_HEADER.len());
                }
                // The broker answers and closes; the frames decoder still must not panic
                // on whatever follows.
                HeaderCheck::Wrong => header = "wrong",
            }
        }
        loop {
            let before = buf.len();
            match decode_frame(&mut buf, frame_max) {
                Ok(Some(frame)) => {
                    assert!(buf.len() < before, "a frame was decoded from no bytes");
                    frames.push(frame);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) must leave the buffer's bytes");
                    break;
                }
                Err(error) => {
                    // Every error carries a reply code the connection closes with.
                    assert!(error.reply_code() >= 500, "{error:?}");
                    return AmqpDecoded {
                        header,
                        frames: frames.iter().map(encode_amqp).collect(),
                        error: Some(error),
                        left: Vec::new(),
                    };
                }
            }
        }
    }
    AmqpDecoded {
        header,
        frames: frames.iter().map(encode_amqp).collect(),
        error: None,
        left: buf.to_vec(),
    }
}

/// Decodes `bytes` at once and in chunks of `chunk`; both must agree, and every frame
/// must encode to bytes that decode to a frame encoding the same.
pub fn check_amqp_stream(bytes: &[u8], chunk: usize, frame_max: u32) {
    let whole = decode_amqp_in_chunks(bytes, bytes.len(), frame_max);
    let pieces = decode_amqp_in_chunks(bytes, chunk, frame_max);
    assert_eq!(
        whole, pieces,
        "decoding depends on how the bytes were split"
    );
    for encoded in &whole.frames {
        let mut buf = BytesMut::from(&encoded[..]);
        match midge_amqp_proto::decode_frame(&mut buf, 0) {
            Ok(Some(again)) => {
                assert!(buf.is_empty(), "re-encoded frame left bytes");
                assert_eq!(&encode_amqp(&again), encoded, "frame does not round-trip");
            }
            other => panic!("re-encoded frame does not decode: {other:?}\n{encoded:?}"),
        }
    }
    // A table body as AMQPLAIN's response carries one.
    let _ = midge_amqp_proto::FieldTable::decode_body(bytes::Bytes::copy_from_slice(bytes));
}
