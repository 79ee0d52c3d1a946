//! Helpers shared by the test files: decode hand-written bytes in a given role.

#![allow(dead_code, unreachable_pub)]

use bytes::BytesMut;
use midge_proto::{DecodeError, Decoder, Packet, ProtocolVersion};

/// A maximum packet size no test reaches unless it means to.
pub const MAX: u32 = 1 << 20;

/// The smallest CONNECT of each version: clean session, keep alive 60, client id "c".
#[rustfmt::skip]
pub fn minimal_connect(version: ProtocolVersion) -> Vec<u8> {
    match version {
        ProtocolVersion::V31 => vec![
            0x10, 15,                                          // CONNECT, remaining length 15
            0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p',    // protocol name "MQIsdp"
            0x03,                                              // protocol level 3
            0x02,                                              // flags: clean session
            0x00, 0x3C,                                        // keep alive 60
            0x00, 0x01, b'c',                                  // client id "c"
        ],
        ProtocolVersion::V311 => vec![
            0x10, 13,                                          // CONNECT, remaining length 13
            0x00, 0x04, b'M', b'Q', b'T', b'T',                // protocol name "MQTT"
            0x04,                                              // protocol level 4
            0x02,                                              // flags: clean session
            0x00, 0x3C,                                        // keep alive 60
            0x00, 0x01, b'c',                                  // client id "c"
        ],
        ProtocolVersion::V5 => vec![
            0x10, 14,                                          // CONNECT, remaining length 14
            0x00, 0x04, b'M', b'Q', b'T', b'T',                // protocol name "MQTT"
            0x05,                                              // protocol level 5
            0x02,                                              // flags: clean start
            0x00, 0x3C,                                        // keep alive 60
            0x00,                                              // property length 0
            0x00, 0x01, b'c',                                  // client id "c"
        ],
    }
}

/// Decodes exactly one packet from `bytes`, which must hold exactly that packet.
pub fn decode_one(decoder: &mut Decoder, bytes: &[u8]) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = decoder.decode(&mut buf)?;
    let packet = packet.unwrap_or_else(|| panic!("incomplete packet: {bytes:02X?}"));
    assert!(buf.is_empty(), "{} bytes left after one packet", buf.len());
    Ok(packet)
}

/// The first packet a server receives on a new connection.
pub fn server_first(bytes: &[u8]) -> Result<Packet, DecodeError> {
    decode_one(&mut Decoder::new(MAX), bytes)
}

/// A server-side decoder that has accepted a CONNECT of `version`.
pub fn server_decoder(version: ProtocolVersion) -> Decoder {
    let mut decoder = Decoder::new(MAX);
    decode_one(&mut decoder, &minimal_connect(version)).expect("minimal CONNECT");
    assert_eq!(decoder.version(), Some(version));
    decoder
}

/// A packet a client sends, received by a server of `version`.
pub fn from_client(version: ProtocolVersion, bytes: &[u8]) -> Result<Packet, DecodeError> {
    decode_one(&mut server_decoder(version), bytes)
}

/// A packet a server sends, received by a client of `version`.
pub fn from_server(version: ProtocolVersion, bytes: &[u8]) -> Result<Packet, DecodeError> {
    decode_one(&mut Decoder::with_version(version, MAX), bytes)
}
