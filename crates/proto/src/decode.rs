//! Streaming decoder: bytes from a peer into [`Packet`]s.
//!
//! Spec ids are cited as `[MQTT-x.y.z-n]`; where MQTT 3.1.1 and 5.0 number the same rule
//! differently, both are given. Section numbers without an id refer to MQTT 5.0.

use bytes::{Buf, Bytes, BytesMut};

use crate::wire::{
    PROTOCOL_NAME, PROTOCOL_NAME_V31, connect_flag, packet_type, property, var_int_len,
};
use crate::{
    Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, ConnectProperties, DecodeError,
    Disconnect, DisconnectProperties, Packet, ProtocolVersion, PubResponse, Publish,
    PublishProperties, QoS, ReasonCode, ResponseProperties, RetainHandling, SubAck, Subscribe,
    SubscribeProperties, SubscriptionOptions, UnsubAck, Unsubscribe, UserProperty, Will,
    WillProperties, topic,
};

type Result<T> = std::result::Result<T, DecodeError>;

/// The end of the connection a decoder serves. Only one rule depends on it: a PUBLISH
/// carries Subscription Identifiers from server to client only [MQTT-3.3.4-6].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Decodes what clients send.
    Server,
    /// Decodes what servers send.
    Client,
}

/// Decodes MQTT packets from a growing buffer, one at a time.
///
/// Feed it the connection's read buffer after every read and call [`Decoder::decode`] until
/// it returns `Ok(None)`. A packet is removed from the front of the buffer only once all of
/// it has arrived; its payload, password, correlation and authentication data are slices of
/// the buffer, not copies. Any error means the connection must be closed (after telling a v5
/// peer [`DecodeError::reason_code`]); the buffer is then in no defined state.
#[derive(Debug, Clone)]
pub struct Decoder {
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
    side: Side,
}

impl Decoder {
    /// Server side: the version is unknown until CONNECT is decoded, and CONNECT must come
    /// first.
    pub fn new(max_packet_size: u32) -> Self {
        Self {
            version: None,
            max_packet_size,
            side: Side::Server,
        }
    }

    /// Client side: the version it sent in CONNECT.
    pub fn with_version(version: ProtocolVersion, max_packet_size: u32) -> Self {
        Self {
            version: Some(version),
            max_packet_size,
            side: Side::Client,
        }
    }

    /// The protocol version packets are decoded in. On the server side it is set by the
    /// first CONNECT as soon as its protocol name and level are read, even when the rest
    /// of that CONNECT turns out to be invalid, so the refusal can be sent in that version.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// Changes the largest packet accepted, fixed header included.
    pub fn set_max_packet_size(&mut self, max: u32) {
        self.max_packet_size = max;
    }

    /// Decodes one packet from the front of `buf`.
    ///
    /// `Ok(None)`: more bytes are needed and `buf` is untouched. `Ok(Some(packet))`: the
    /// packet's bytes were removed from the front of `buf`. A packet larger than the maximum
    /// packet size fails as soon as its fixed header is in, before its body is buffered.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>> {
        let Some((&first, rest)) = buf.split_first() else {
            return Ok(None);
        };
        let kind = first >> 4;
        let flags = first & 0x0F;
        // [MQTT-3.1.0-1] The first packet from a client MUST be CONNECT.
        if self.version.is_none() && kind != packet_type::CONNECT {
            return Err(DecodeError::Protocol("first packet must be CONNECT"));
        }
        check_fixed_header_flags(kind, flags, self.version)?;

        let Some((length_len, remaining)) = remaining_length(rest)? else {
            return Ok(None);
        };
        let size = 1 + length_len + remaining;
        if size > self.max_packet_size as usize {
            return Err(DecodeError::PacketTooLarge {
                size,
                max: self.max_packet_size,
            });
        }
        // [MQTT-1.5.5-1] v5 requires the shortest encoding; 3.1.1 (2.2.3) does not, so v3
        // peers get the benefit of the doubt. Before CONNECT the version is not known yet:
        // the CONNECT decoder checks it once it has read the protocol level.
        let shortest_length = length_len == var_int_len(remaining);
        if self.version == Some(ProtocolVersion::V5) && !shortest_length {
            return Err(non_shortest_var_int());
        }
        if buf.len() < size {
            return Ok(None);
        }

        let mut body = buf.split_to(size).freeze();
        body.advance(1 + length_len);
        let r = Reader(body);
        let packet = if kind == packet_type::CONNECT {
            Packet::Connect(Box::new(self.connect(r, shortest_length)?))
        } else {
            let Some(version) = self.version else {
                return Err(DecodeError::Protocol("first packet must be CONNECT"));
            };
            let v5 = version.is_v5();
            match kind {
                packet_type::CONNACK => Packet::ConnAck(connack(r, version)?),
                packet_type::PUBLISH => Packet::Publish(publish(r, flags, version, self.side)?),
                packet_type::PUBACK => Packet::PubAck(pub_response(r, v5, reasons::PUBACK)?),
                packet_type::PUBREC => Packet::PubRec(pub_response(r, v5, reasons::PUBACK)?),
                packet_type::PUBREL => Packet::PubRel(pub_response(r, v5, reasons::PUBREL)?),
                packet_type::PUBCOMP => Packet::PubComp(pub_response(r, v5, reasons::PUBREL)?),
                packet_type::SUBSCRIBE => Packet::Subscribe(subscribe(r, v5)?),
                packet_type::SUBACK => Packet::SubAck(suback(r, v5)?),
                packet_type::UNSUBSCRIBE => Packet::Unsubscribe(unsubscribe(r, v5)?),
                packet_type::UNSUBACK => Packet::UnsubAck(unsuback(r, v5)?),
                packet_type::PINGREQ => {
                    r.end()?;
                    Packet::PingReq
                }
                packet_type::PINGRESP => {
                    r.end()?;
                    Packet::PingResp
                }
                packet_type::DISCONNECT => Packet::Disconnect(disconnect(r, v5)?),
                packet_type::AUTH if v5 => Packet::Auth(auth(r)?),
                // Ruled out by the fixed header check; kept as an error, never a panic.
                _ => return Err(DecodeError::Malformed("reserved packet type")),
            }
        };
        Ok(Some(packet))
    }

    /// CONNECT (3.1). Sets the decoder's version as soon as name and level are known.
    fn connect(&mut self, mut r: Reader, shortest_length: bool) -> Result<Connect> {
        let name = r.string()?;
        let level = r.u8()?;
        // [MQTT-3.1.2-1] protocol name, [MQTT-3.1.2-2] protocol level: anything else is
        // answered with "unacceptable protocol version" by the broker.
        let protocol = match (name.as_str(), level) {
            (PROTOCOL_NAME_V31, 3) => ProtocolVersion::V31,
            (PROTOCOL_NAME, 4) => ProtocolVersion::V311,
            (PROTOCOL_NAME, 5) => ProtocolVersion::V5,
            _ => return Err(DecodeError::UnsupportedProtocolVersion { name, level }),
        };
        // A second CONNECT does not switch the connection's version; the broker refuses it.
        if self.version.is_none() {
            self.version = Some(protocol);
        }
        let v5 = protocol.is_v5();
        if v5 && !shortest_length {
            return Err(non_shortest_var_int()); // [MQTT-1.5.5-1]
        }

        let flags = r.u8()?;
        // [MQTT-3.1.2-3] The reserved flag MUST be 0 (3.1.1 and 5.0). MQTT 3.1 only calls
        // it "unused", so 3.1 clients are not held to it.
        if flags & connect_flag::RESERVED != 0 && protocol != ProtocolVersion::V31 {
            return Err(DecodeError::Malformed("CONNECT reserved flag is set"));
        }
        let has_will = flags & connect_flag::WILL != 0;
        let will_qos = (flags >> connect_flag::WILL_QOS_SHIFT) & 0b11;
        let will_retain = flags & connect_flag::WILL_RETAIN != 0;
        // Without a will, Will QoS and Will Retain MUST be 0:
        // v5 [MQTT-3.1.2-11] [MQTT-3.1.2-13], 3.1.1 [MQTT-3.1.2-13] [MQTT-3.1.2-15].
        if !has_will && (will_qos != 0 || will_retain) {
            return Err(DecodeError::Malformed(
                "will QoS or will retain set without a will",
            ));
        }
        // Will QoS 3 is malformed: v5 3.1.2.6, 3.1.1 [MQTT-3.1.2-14].
        let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::Malformed("will QoS 3"))?;
        let has_username = flags & connect_flag::USERNAME != 0;
        let has_password = flags & connect_flag::PASSWORD != 0;
        // [MQTT-3.1.2-22] In v3 a password needs a user name; v5 allows a password alone
        // (3.1.2.9).
        if !v5 && has_password && !has_username {
            return Err(DecodeError::Malformed(
                "password flag set without user name flag",
            ));
        }
        let keep_alive = r.u16()?;
        let properties = if v5 {
            connect_properties(&mut r)?
        } else {
            Default::default()
        };

        // [MQTT-3.1.3-4] The client id is a UTF-8 string; what it may contain is the
        // broker's decision.
        let client_id = r.string()?;
        let will = if has_will {
            let properties = if v5 {
                will_properties(&mut r)?
            } else {
                Default::default()
            };
            let topic = r.string()?;
            // The will topic is a topic name: no wildcards [MQTT-3.3.2-2], at least one
            // character [MQTT-4.7.3-1]. v5 CONNACK has 0x90 for exactly this (3.2.2.2).
            if topic::validate_topic_name(&topic).is_err() {
                return Err(DecodeError::TopicNameInvalid(
                    "will topic is not a valid topic name",
                ));
            }
            let payload = r.binary()?;
            Some(Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        // Some MQTT 3.1 clients set the user name or password flag without sending the
        // field; Mosquitto accepts that from 3.1 clients only, and so do we.
        let missing = |r: &Reader| protocol == ProtocolVersion::V31 && r.is_empty();
        let username = (has_username && !missing(&r))
            .then(|| r.string())
            .transpose()?;
        let password = (has_password && !missing(&r))
            .then(|| r.binary())
            .transpose()?;
        r.end()?;
        Ok(Connect {
            protocol,
            clean_start: flags & connect_flag::CLEAN_START != 0,
            keep_alive,
            client_id,
            will,
            username,
            password,
            properties,
        })
    }
}

/// Checks the flag bits of the first byte, before anything else is read.
fn check_fixed_header_flags(kind: u8, flags: u8, version: Option<ProtocolVersion>) -> Result<()> {
    use packet_type::*;
    let valid = match kind {
        PUBLISH => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::Malformed("PUBLISH with QoS 3")); // [MQTT-3.3.1-4]
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(DecodeError::Malformed("PUBLISH with DUP set at QoS 0")); // [MQTT-3.3.1-2]
            }
            true
        }
        // [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1]: reserved bits MUST be 0010. MQTT 3.1
        // sent these packets "at QoS 1" with DUP set on retries, so 3.1 may carry DUP too.
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => {
            flags == 0b0010 || (version == Some(ProtocolVersion::V31) && flags == 0b1010)
        }
        // Type 15 is reserved before MQTT 5 (3.1.1 2.2.1).
        AUTH if version.is_some_and(|v| !v.is_v5()) => {
            return Err(DecodeError::Malformed("AUTH does not exist before MQTT 5"));
        }
        // [MQTT-2.1.3-1] (v5), [MQTT-2.2.2-1] (3.1.1): reserved flags MUST be as listed;
        // invalid flags are a Malformed Packet.
        CONNECT..=AUTH => flags == 0,
        // Type 0 is reserved (2.1.2).
        _ => return Err(DecodeError::Malformed("reserved packet type 0")),
    };
    if valid {
        Ok(())
    } else {
        Err(DecodeError::Malformed("invalid fixed header flags"))
    }
}

/// Reads the Remaining Length after the first byte: `(bytes it takes, value)`, or `None`
/// until all of its bytes are in. At most four bytes (1.5.5, 3.1.1 2.2.3).
fn remaining_length(bytes: &[u8]) -> Result<Option<(usize, usize)>> {
    let mut value = 0;
    for (i, &byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((i + 1, value)));
        }
    }
    if bytes.len() >= 4 {
        return Err(DecodeError::Malformed(
            "remaining length is longer than four bytes",
        ));
    }
    Ok(None)
}

fn non_shortest_var_int() -> DecodeError {
    DecodeError::Malformed("variable byte integer not in its shortest form")
}

const TRUNCATED: DecodeError = DecodeError::Malformed("packet ends inside a field");

/// Reads fields from one packet body (or one property block). Every read checks the bytes
/// are there: a field running past the remaining length is malformed, never a panic.
struct Reader(Bytes);

impl Reader {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn u8(&mut self) -> Result<u8> {
        if self.0.is_empty() {
            return Err(TRUNCATED);
        }
        Ok(self.0.get_u8())
    }

    fn u16(&mut self) -> Result<u16> {
        if self.0.len() < 2 {
            return Err(TRUNCATED);
        }
        Ok(self.0.get_u16())
    }

    fn u32(&mut self) -> Result<u32> {
        if self.0.len() < 4 {
            return Err(TRUNCATED);
        }
        Ok(self.0.get_u32())
    }

    /// A Variable Byte Integer inside the body: only v5 has them, so the shortest form is
    /// required [MQTT-1.5.5-1].
    fn var_int(&mut self) -> Result<u32> {
        let mut value = 0;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                // A last byte of 0 after the first adds nothing: a longer form than needed.
                if i > 0 && byte == 0 {
                    return Err(non_shortest_var_int());
                }
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed(
            "variable byte integer is longer than four bytes",
        ))
    }

    fn take(&mut self, len: usize) -> Result<Bytes> {
        if self.0.len() < len {
            return Err(TRUNCATED);
        }
        Ok(self.0.split_to(len))
    }

    /// Binary Data (1.5.6): a two-byte length, then the bytes, sliced without copying.
    fn binary(&mut self) -> Result<Bytes> {
        let len = self.u16()?;
        self.take(len.into())
    }

    /// UTF-8 Encoded String (1.5.4).
    fn string(&mut self) -> Result<String> {
        let bytes = self.binary()?;
        // v5 [MQTT-1.5.4-2], 3.1.1 [MQTT-1.5.3-2]: U+0000 is not allowed.
        if bytes.contains(&0) {
            return Err(DecodeError::Malformed("string contains U+0000"));
        }
        // v5 [MQTT-1.5.4-1], 3.1.1 [MQTT-1.5.3-1]: well-formed UTF-8, no surrogates (a Rust
        // str cannot hold them). A BOM is kept as U+FEFF, not stripped [MQTT-1.5.4-3].
        match std::str::from_utf8(&bytes) {
            Ok(text) => Ok(text.to_owned()),
            Err(_) => Err(DecodeError::Malformed("string is not well-formed UTF-8")),
        }
    }

    /// A non-zero Packet Identifier: v5 [MQTT-2.2.1-3], 3.1.1 [MQTT-2.3.1-1]. An
    /// acknowledgement of 0 acknowledges nothing that can have been sent.
    fn packet_id(&mut self) -> Result<u16> {
        match self.u16()? {
            0 => Err(DecodeError::Protocol("packet identifier 0")),
            id => Ok(id),
        }
    }

    /// A topic filter in SUBSCRIBE or UNSUBSCRIBE: UTF-8 [MQTT-3.8.3-1] [MQTT-3.10.3-1] and
    /// at least one character [MQTT-4.7.3-1]. Its syntax is the broker's to judge, per
    /// filter, in SUBACK.
    fn filter(&mut self) -> Result<String> {
        let filter = self.string()?;
        if filter.is_empty() {
            return Err(DecodeError::Protocol("empty topic filter"));
        }
        Ok(filter)
    }

    /// Everything left, e.g. a PUBLISH payload.
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.0)
    }

    /// Every field must fit the remaining length exactly: bytes left over are malformed.
    fn end(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(
                "bytes left over after the last field",
            ))
        }
    }

    /// The property block (2.2.2): its length, then a reader over exactly those bytes.
    fn properties(&mut self) -> Result<Reader> {
        let len = self.var_int()?;
        Ok(Reader(self.take(len as usize)?))
    }

    /// The next property identifier, `None` at the end of the block. Identifiers are
    /// Variable Byte Integers, but every defined one is a single byte below 0x80; longer
    /// ones are unknown, which the caller rejects.
    fn property_id(&mut self) -> Result<Option<u8>> {
        if self.is_empty() {
            Ok(None)
        } else {
            self.u8().map(Some)
        }
    }

    fn user_property(&mut self) -> Result<UserProperty> {
        Ok((self.string()?, self.string()?))
    }

    /// A byte property that may only be 0 or 1; anything else is a Protocol Error
    /// (e.g. 3.1.2.11.6, 3.2.2.3.5).
    fn flag(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Protocol("property value must be 0 or 1")),
        }
    }

    /// Payload Format Indicator (3.3.2.3.2): 0 unspecified bytes, 1 UTF-8.
    fn payload_format(&mut self) -> Result<u8> {
        match self.u8()? {
            format @ (0 | 1) => Ok(format),
            _ => Err(DecodeError::Protocol(
                "payload format indicator must be 0 or 1",
            )),
        }
    }

    fn non_zero_u16(&mut self, error: &'static str) -> Result<u16> {
        match self.u16()? {
            0 => Err(DecodeError::Protocol(error)),
            value => Ok(value),
        }
    }

    fn non_zero_u32(&mut self, error: &'static str) -> Result<u32> {
        match self.u32()? {
            0 => Err(DecodeError::Protocol(error)),
            value => Ok(value),
        }
    }

    /// Subscription Identifier: 1 to 268,435,455; 0 is a Protocol Error (3.3.2.3.8,
    /// 3.8.2.1.2).
    fn subscription_identifier(&mut self) -> Result<u32> {
        match self.var_int()? {
            0 => Err(DecodeError::Protocol("subscription identifier 0")),
            id => Ok(id),
        }
    }

    /// Response Topic: a topic name, so no wildcards [MQTT-3.3.2-14] and not empty
    /// [MQTT-4.7.3-1].
    fn response_topic(&mut self) -> Result<String> {
        let topic = self.string()?;
        if topic::validate_topic_name(&topic).is_err() {
            return Err(DecodeError::Protocol(
                "response topic is not a valid topic name",
            ));
        }
        Ok(topic)
    }
}

/// Stores a property that may appear once; each property's section says "It is a Protocol
/// Error to include the X more than once".
fn once<T>(slot: &mut Option<T>, value: T) -> Result<()> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("property appears more than once"));
    }
    *slot = Some(value);
    Ok(())
}

/// 2.2.2.2: "A Control Packet which contains an Identifier which is not valid for its
/// packet type [...] is a Malformed Packet."
fn not_allowed() -> DecodeError {
    DecodeError::Malformed("property not valid for this packet type")
}

/// "It is a Protocol Error to include Authentication Data if there is no Authentication
/// Method" (3.1.2.11.10, 3.2.2.3.18, 3.15.2.2.3).
fn check_authentication(method: &Option<String>, data: &Option<Bytes>) -> Result<()> {
    if data.is_some() && method.is_none() {
        return Err(DecodeError::Protocol(
            "authentication data without authentication method",
        ));
    }
    Ok(())
}

/// The v5 reason codes each packet may carry (tables 3-1 to 3-12). Any other value is a
/// Protocol Error, e.g. [MQTT-3.4.2-1] "MUST use one of the PUBACK Reason Codes".
mod reasons {
    pub(super) const CONNACK: &[u8] = &[
        0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95,
        0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
    ];
    /// PUBACK and PUBREC.
    pub(super) const PUBACK: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
    /// PUBREL and PUBCOMP.
    pub(super) const PUBREL: &[u8] = &[0x00, 0x92];
    pub(super) const SUBACK: &[u8] = &[
        0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
    ];
    pub(super) const UNSUBACK: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
    pub(super) const DISCONNECT: &[u8] = &[
        0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94,
        0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
    ];
    pub(super) const AUTH: &[u8] = &[0x00, 0x18, 0x19];
    /// MQTT 3.1.1 SUBACK return codes [MQTT-3.9.3-2].
    pub(super) const SUBACK_V3: &[u8] = &[0x00, 0x01, 0x02, 0x80];
}

fn reason(code: u8, allowed: &[u8]) -> Result<ReasonCode> {
    if allowed.contains(&code) {
        Ok(ReasonCode(code))
    } else {
        Err(DecodeError::Protocol(
            "reason code not allowed in this packet",
        ))
    }
}

/// CONNECT properties (3.1.2.11).
fn connect_properties(r: &mut Reader) -> Result<ConnectProperties> {
    use property::*;
    let mut p = ConnectProperties::default();
    let mut props = r.properties()?;
    while let Some(id) = props.property_id()? {
        match id {
            SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, props.u32()?)?,
            RECEIVE_MAXIMUM => once(
                &mut p.receive_maximum,
                props.non_zero_u16("receive maximum 0")?,
            )?,
            MAXIMUM_PACKET_SIZE => once(
                &mut p.maximum_packet_size,
                props.non_zero_u32("maximum packet size 0")?,
            )?,
            TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, props.u16()?)?,
            REQUEST_RESPONSE_INFORMATION => {
                once(&mut p.request_response_information, props.flag()?)?
            }
            REQUEST_PROBLEM_INFORMATION => once(&mut p.request_problem_information, props.flag()?)?,
            USER_PROPERTY => p.user_properties.push(props.user_property()?),
            AUTHENTICATION_METHOD => once(&mut p.authentication_method, props.string()?)?,
            AUTHENTICATION_DATA => once(&mut p.authentication_data, props.binary()?)?,
            _ => return Err(not_allowed()),
        }
    }
    check_authentication(&p.authentication_method, &p.authentication_data)?;
    Ok(p)
}

/// Will properties (3.1.3.2).
fn will_properties(r: &mut Reader) -> Result<WillProperties> {
    use property::*;
    let mut p = WillProperties::default();
    let mut props = r.properties()?;
    while let Some(id) = props.property_id()? {
        match id {
            WILL_DELAY_INTERVAL => once(&mut p.will_delay_interval, props.u32()?)?,
            PAYLOAD_FORMAT_INDICATOR => {
                once(&mut p.payload_format_indicator, props.payload_format()?)?
            }
            MESSAGE_EXPIRY_INTERVAL => once(&mut p.message_expiry_interval, props.u32()?)?,
            CONTENT_TYPE => once(&mut p.content_type, props.string()?)?,
            RESPONSE_TOPIC => once(&mut p.response_topic, props.response_topic()?)?,
            CORRELATION_DATA => once(&mut p.correlation_data, props.binary()?)?,
            USER_PROPERTY => p.user_properties.push(props.user_property()?),
            _ => return Err(not_allowed()),
        }
    }
    Ok(p)
}

/// CONNACK (3.2).
fn connack(mut r: Reader, version: ProtocolVersion) -> Result<ConnAck> {
    let flags = r.u8()?;
    // MQTT 3.1 reserves this whole byte ("not used") and has no session present flag, which
    // the encoder therefore never writes in 3.1: ignore it, as 3.1 peers are not held to
    // reserved bits elsewhere either.
    let session_present = if version == ProtocolVersion::V31 {
        false
    } else {
        // v5 [MQTT-3.2.2-1], 3.1.1 3.2.2.1: bits 7-1 of the acknowledge flags are reserved, 0.
        if flags & 0xFE != 0 {
            return Err(DecodeError::Malformed("CONNACK reserved flags are set"));
        }
        flags & 1 != 0
    };
    let code = r.u8()?;
    let reason_code = if version.is_v5() {
        reason(code, reasons::CONNACK)?
    } else {
        // 3.1.1 table 3.1: return codes 6-255 are reserved.
        ReasonCode::from_v3_connack(code)
            .ok_or(DecodeError::Protocol("reserved CONNACK return code"))?
    };
    // v5 [MQTT-3.2.2-6], 3.1.1 [MQTT-3.2.2-4]: a refusal has session present 0.
    if session_present && reason_code != ReasonCode::SUCCESS {
        return Err(DecodeError::Protocol(
            "session present set on a refused connection",
        ));
    }
    let properties = if version.is_v5() {
        connack_properties(&mut r)?
    } else {
        Default::default()
    };
    r.end()?;
    Ok(ConnAck {
        session_present,
        reason_code,
        properties,
    })
}

/// CONNACK properties (3.2.2.3).
fn connack_properties(r: &mut Reader) -> Result<ConnAckProperties> {
    use property::*;
    let mut p = ConnAckProperties::default();
    let mut props = r.properties()?;
    while let Some(id) = props.property_id()? {
        match id {
            SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, props.u32()?)?,
            RECEIVE_MAXIMUM => once(
                &mut p.receive_maximum,
                props.non_zero_u16("receive maximum 0")?,
            )?,
            // 3.2.2.3.4: "a value other than 0 or 1" is a Protocol Error.
            MAXIMUM_QOS => {
                let qos = if props.flag()? {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                };
                once(&mut p.maximum_qos, qos)?
            }
            RETAIN_AVAILABLE => once(&mut p.retain_available, props.flag()?)?,
            MAXIMUM_PACKET_SIZE => once(
                &mut p.maximum_packet_size,
                props.non_zero_u32("maximum packet size 0")?,
            )?,
            ASSIGNED_CLIENT_IDENTIFIER => once(&mut p.assigned_client_identifier, props.string()?)?,
            TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, props.u16()?)?,
            REASON_STRING => once(&mut p.reason_string, props.string()?)?,
            USER_PROPERTY => p.user_properties.push(props.user_property()?),
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                once(&mut p.wildcard_subscription_available, props.flag()?)?
            }
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                once(&mut p.subscription_identifiers_available, props.flag()?)?
            }
            SHARED_SUBSCRIPTION_AVAILABLE => {
                once(&mut p.shared_subscription_available, props.flag()?)?
            }
            SERVER_KEEP_ALIVE => once(&mut p.server_keep_alive, props.u16()?)?,
            RESPONSE_INFORMATION => once(&mut p.response_information, props.string()?)?,
            SERVER_REFERENCE => once(&mut p.server_reference, props.string()?)?,
            AUTHENTICATION_METHOD => once(&mut p.authentication_method, props.string()?)?,
            AUTHENTICATION_DATA => once(&mut p.authentication_data, props.binary()?)?,
            _ => return Err(not_allowed()),
        }
    }
    check_authentication(&p.authentication_method, &p.authentication_data)?;
    Ok(p)
}

/// PUBLISH (3.3). QoS and DUP were checked with the fixed header.
fn publish(mut r: Reader, flags: u8, version: ProtocolVersion, side: Side) -> Result<Publish> {
    let qos =
        QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::Malformed("PUBLISH with QoS 3"))?;
    let topic = r.string()?;
    // 3.3.2.2: the packet identifier is there only at QoS 1 and 2.
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        r.packet_id()?
    };
    let properties = if version.is_v5() {
        publish_properties(&mut r, side)?
    } else {
        Default::default()
    };
    if topic.is_empty() {
        if !version.is_v5() {
            // [MQTT-4.7.3-1] Topic names are at least one character long.
            return Err(DecodeError::TopicNameInvalid("empty topic name"));
        }
        // 3.3.2.1: "It is a Protocol Error if the Topic Name is zero length and there is no
        // Topic Alias."
        if properties.topic_alias.is_none() {
            return Err(DecodeError::Protocol(
                "empty topic name without a topic alias",
            ));
        }
    } else if topic.contains(['+', '#']) {
        return Err(DecodeError::TopicNameInvalid(
            "topic name contains a wildcard",
        )); // [MQTT-3.3.2-2]
    }
    // 3.3.3: the payload is the rest, possibly empty.
    let payload = r.rest();
    Ok(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 1 != 0,
        topic,
        packet_id,
        properties,
        payload,
    })
}

/// PUBLISH properties (3.3.2.3).
fn publish_properties(r: &mut Reader, side: Side) -> Result<PublishProperties> {
    use property::*;
    let mut p = PublishProperties::default();
    let mut props = r.properties()?;
    while let Some(id) = props.property_id()? {
        match id {
            PAYLOAD_FORMAT_INDICATOR => {
                once(&mut p.payload_format_indicator, props.payload_format()?)?
            }
            MESSAGE_EXPIRY_INTERVAL => once(&mut p.message_expiry_interval, props.u32()?)?,
            // [MQTT-3.3.2-8] A Topic Alias of 0 is not permitted (3.3.4: a Protocol Error).
            // [MQTT-3.3.2-8] DISCONNECT 0x94, not a generic protocol error.
            TOPIC_ALIAS => match props.u16()? {
                0 => return Err(DecodeError::TopicAliasInvalid),
                alias => once(&mut p.topic_alias, alias)?,
            },
            RESPONSE_TOPIC => once(&mut p.response_topic, props.response_topic()?)?,
            CORRELATION_DATA => once(&mut p.correlation_data, props.binary()?)?,
            USER_PROPERTY => p.user_properties.push(props.user_property()?),
            // May repeat from a server: one per matching subscription [MQTT-3.3.4-4].
            SUBSCRIPTION_IDENTIFIER if side == Side::Client => p
                .subscription_identifiers
                .push(props.subscription_identifier()?),
            // [MQTT-3.3.4-6] A PUBLISH from a client MUST NOT contain one.
            SUBSCRIPTION_IDENTIFIER => {
                return Err(DecodeError::Protocol(
                    "subscription identifier in PUBLISH from a client",
                ));
            }
            CONTENT_TYPE => once(&mut p.content_type, props.string()?)?,
            _ => return Err(not_allowed()),
        }
    }
    Ok(p)
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP (3.4 to 3.7).
fn pub_response(mut r: Reader, v5: bool, allowed: &[u8]) -> Result<PubResponse> {
    let packet_id = r.packet_id()?;
    // v3: the remaining length is exactly 2 (3.1.1 3.4.1).
    // v5: remaining length 2 means Success without properties (3.4.2.1); below 4 there is
    // no property length and no properties (3.4.2.2.1).
    let reason_code = if v5 && !r.is_empty() {
        reason(r.u8()?, allowed)?
    } else {
        ReasonCode::SUCCESS
    };
    let properties = if v5 && !r.is_empty() {
        response_properties(&mut r)?
    } else {
        Default::default()
    };
    r.end()?;
    Ok(PubResponse {
        packet_id,
        reason_code,
        properties,
    })
}

/// Reason String and User Properties: the properties of PUBACK, PUBREC, PUBREL, PUBCOMP,
/// SUBACK and UNSUBACK.
fn response_properties(r: &mut Reader) -> Result<ResponseProperties> {
    let mut p = ResponseProperties::default();
    let mut props = r.properties()?;
    while let Some(id) = props.property_id()? {
        match id {
            property::REASON_STRING => once(&mut p.reason_string, props.string()?)?,
            property::USER_PROPERTY => p.user_properties.push(props.user_property()?),
            _ => return Err(not_allowed()),
        }
    }
    Ok(p)
}

/// SUBSCRIBE (3.8).
fn subscribe(mut r: Reader, v5: bool) -> Result<Subscribe> {
    let packet_id = r.packet_id()?;
    let mut properties = SubscribeProperties::default();
    if v5 {
        let mut props = r.properties()?;
        while let Some(id) = props.property_id()? {
            match id {
                property::SUBSCRIPTION_IDENTIFIER => once(
                    &mut properties.subscription_identifier,
                    props.subscription_identifier()?,
                )?,
                property::USER_PROPERTY => properties.user_properties.push(props.user_property()?),
                _ => return Err(not_allowed()),
            }
        }
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.filter()?;
        let options = subscription_options(r.u8()?, v5, &filter)?;
        filters.push((filter, options));
    }
    // v5 [MQTT-3.8.3-2] (a Protocol Error), 3.1.1 [MQTT-3.8.3-3]: at least one filter.
    if filters.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE without a topic filter"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

/// The options byte after each SUBSCRIBE filter (3.8.3.1).
fn subscription_options(byte: u8, v5: bool, filter: &str) -> Result<SubscriptionOptions> {
    if !v5 {
        // 3.1.1 [MQTT-3-8.3-4]: reserved bits set or QoS 3 are malformed.
        if byte & 0b1111_1100 != 0 {
            return Err(DecodeError::Malformed(
                "SUBSCRIBE options reserved bits are set",
            ));
        }
        let qos = QoS::from_u8(byte).ok_or(DecodeError::Malformed("subscription QoS 3"))?;
        return Ok(SubscriptionOptions {
            qos,
            ..Default::default()
        });
    }
    // [MQTT-3.8.3-5] Bits 6 and 7 are reserved; set, the packet is malformed.
    if byte & 0b1100_0000 != 0 {
        return Err(DecodeError::Malformed(
            "SUBSCRIBE options reserved bits are set",
        ));
    }
    // 3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3."
    let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::Protocol("subscription QoS 3"))?;
    let no_local = byte & 0b0100 != 0;
    // [MQTT-3.8.3-4] No Local on a shared subscription is a Protocol Error.
    if no_local && matches!(topic::parse_shared(filter), Ok(Some(_))) {
        return Err(DecodeError::Protocol(
            "no local set on a shared subscription",
        ));
    }
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DontSend,
        // 3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3."
        _ => return Err(DecodeError::Protocol("retain handling 3")),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

/// SUBACK (3.9).
fn suback(mut r: Reader, v5: bool) -> Result<SubAck> {
    let packet_id = r.packet_id()?;
    let properties = if v5 {
        response_properties(&mut r)?
    } else {
        Default::default()
    };
    let allowed = if v5 {
        reasons::SUBACK
    } else {
        reasons::SUBACK_V3
    };
    let mut reason_codes = Vec::new();
    while !r.is_empty() {
        reason_codes.push(reason(r.u8()?, allowed)?);
    }
    // [MQTT-3.8.4-6] One per filter, and SUBSCRIBE has at least one.
    if reason_codes.is_empty() {
        return Err(DecodeError::Protocol("SUBACK without a reason code"));
    }
    Ok(SubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

/// UNSUBSCRIBE (3.10).
fn unsubscribe(mut r: Reader, v5: bool) -> Result<Unsubscribe> {
    let packet_id = r.packet_id()?;
    let mut user_properties = Vec::new();
    if v5 {
        let mut props = r.properties()?;
        while let Some(id) = props.property_id()? {
            match id {
                property::USER_PROPERTY => user_properties.push(props.user_property()?),
                _ => return Err(not_allowed()),
            }
        }
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.filter()?);
    }
    // [MQTT-3.10.3-2] At least one filter (v5: a Protocol Error).
    if filters.is_empty() {
        return Err(DecodeError::Protocol("UNSUBSCRIBE without a topic filter"));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        user_properties,
    })
}

/// UNSUBACK (3.11). In v3 it is the packet identifier alone.
fn unsuback(mut r: Reader, v5: bool) -> Result<UnsubAck> {
    let packet_id = r.packet_id()?;
    let mut ack = UnsubAck {
        packet_id,
        reason_codes: Vec::new(),
        properties: Default::default(),
    };
    if v5 {
        ack.properties = response_properties(&mut r)?;
        while !r.is_empty() {
            ack.reason_codes.push(reason(r.u8()?, reasons::UNSUBACK)?);
        }
        // [MQTT-3.11.3-1] One per filter, and UNSUBSCRIBE has at least one.
        if ack.reason_codes.is_empty() {
            return Err(DecodeError::Protocol("UNSUBACK without a reason code"));
        }
    }
    r.end()?;
    Ok(ack)
}

/// DISCONNECT (3.14). v3 has no variable header.
fn disconnect(mut r: Reader, v5: bool) -> Result<Disconnect> {
    let mut packet = Disconnect::default();
    // 3.14.2.1: with remaining length 0 the reason is 0x00, normal disconnection; below 2
    // there is no property length (3.14.2.2.1).
    if v5 && !r.is_empty() {
        packet.reason_code = reason(r.u8()?, reasons::DISCONNECT)?;
        if !r.is_empty() {
            packet.properties = disconnect_properties(&mut r)?;
        }
    }
    r.end()?;
    Ok(packet)
}

/// DISCONNECT properties (3.14.2.2).
fn disconnect_properties(r: &mut Reader) -> Result<DisconnectProperties> {
    use property::*;
    let mut p = DisconnectProperties::default();
    let mut props = r.properties()?;
    while let Some(id) = props.property_id()? {
        match id {
            SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, props.u32()?)?,
            REASON_STRING => once(&mut p.reason_string, props.string()?)?,
            USER_PROPERTY => p.user_properties.push(props.user_property()?),
            SERVER_REFERENCE => once(&mut p.server_reference, props.string()?)?,
            _ => return Err(not_allowed()),
        }
    }
    Ok(p)
}

/// AUTH (3.15), v5 only.
fn auth(mut r: Reader) -> Result<Auth> {
    // 3.15.2.1: remaining length 0 means Success without properties. Otherwise the
    // property length follows the reason code; unlike PUBACK and DISCONNECT, AUTH has no
    // form without it.
    if r.is_empty() {
        return Ok(Auth::default());
    }
    let reason_code = reason(r.u8()?, reasons::AUTH)?;
    let mut p = AuthProperties::default();
    let mut props = r.properties()?;
    while let Some(id) = props.property_id()? {
        use property::*;
        match id {
            AUTHENTICATION_METHOD => once(&mut p.authentication_method, props.string()?)?,
            AUTHENTICATION_DATA => once(&mut p.authentication_data, props.binary()?)?,
            REASON_STRING => once(&mut p.reason_string, props.string()?)?,
            USER_PROPERTY => p.user_properties.push(props.user_property()?),
            _ => return Err(not_allowed()),
        }
    }
    check_authentication(&p.authentication_method, &p.authentication_data)?;
    r.end()?;
    Ok(Auth {
        reason_code,
        properties: p,
    })
}

/// Inputs the fuzz targets (fuzz/) found, each with the bytes that showed the fault.
#[cfg(test)]
mod fuzz_regressions {
    use super::*;

    fn decode_all(mut decoder: Decoder, bytes: &[u8]) -> Result<Vec<Packet>> {
        let mut buf = BytesMut::from(bytes);
        let mut packets = Vec::new();
        while let Some(packet) = decoder.decode(&mut buf)? {
            packets.push(packet);
        }
        assert!(buf.is_empty(), "bytes left over");
        Ok(packets)
    }

    /// Decodes `bytes` as a client of `version`, encodes the packet again and decodes that.
    fn round_trip(version: ProtocolVersion, bytes: &[u8]) -> (Packet, Packet) {
        let [packet] = &decode_all(Decoder::with_version(version, 1 << 20), bytes).unwrap()[..]
        else {
            panic!("not one packet")
        };
        let mut encoded = BytesMut::new();
        packet.encode(version, &mut encoded).unwrap();
        let [again] = &decode_all(Decoder::with_version(version, 1 << 20), &encoded).unwrap()[..]
        else {
            panic!("not one packet")
        };
        (packet.clone(), again.clone())
    }

    /// decode_versioned, crash-5b6cb4e9: a 3.1 CONNACK with bit 0 of its reserved first
    /// byte set decoded as "session present", which 3.1 does not have and the encoder
    /// rightly leaves out, so the packet changed in a round trip.
    #[test]
    fn v31_connack_first_byte_is_not_session_present() {
        let bytes = [0x20, 0x02, 0x01, 0x00];
        let (packet, again) = round_trip(ProtocolVersion::V31, &bytes);
        assert_eq!(packet, again);
        let Packet::ConnAck(connack) = packet else {
            panic!("{packet:?}")
        };
        assert!(!connack.session_present);
        // Any value of the unused byte is accepted from a 3.1 server.
        let (packet, _) = round_trip(ProtocolVersion::V31, &[0x20, 0x02, 0xFF, 0x00]);
        assert!(matches!(packet, Packet::ConnAck(c) if !c.session_present));
        // 3.1.1 keeps the flag and the reserved bits.
        let (packet, _) = round_trip(ProtocolVersion::V311, &bytes);
        assert!(matches!(packet, Packet::ConnAck(c) if c.session_present));
        assert!(
            decode_all(
                Decoder::with_version(ProtocolVersion::V311, 1 << 20),
                &[0x20, 0x02, 0x03, 0x00]
            )
            .is_err()
        );
    }
}
