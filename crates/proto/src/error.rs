//! Decode and encode errors. A decode error knows the reason code the peer must be told.

use crate::ReasonCode;

/// Why bytes from a peer are not a valid packet. Every variant closes the connection; the
/// broker tells a v5 peer [`DecodeError::reason_code`] first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The remaining length announces more than the configured maximum; raised from the
    /// fixed header, before the body is buffered.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// Fixed header plus remaining length.
        size: usize,
        /// The limit in force.
        max: u32,
    },
    /// CONNECT names a protocol level this broker does not speak. `level` is the byte read;
    /// the broker answers with a v3 CONNACK return code 1 (or v5 0x84 for level 5 peers).
    #[error("unsupported protocol version: name {name:?}, level {level}")]
    UnsupportedProtocolVersion {
        /// Protocol name as read.
        name: String,
        /// Protocol level as read.
        level: u8,
    },
    /// The bytes violate the packet format (reason 0x81).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The packet is well formed but breaks a protocol rule (reason 0x82).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A PUBLISH or will topic name contains a wildcard, or is empty where no topic alias
    /// can stand in for it (v3 PUBLISH, will topic) (reason 0x90). A v5 PUBLISH with an
    /// empty topic name and no alias is a [`DecodeError::Protocol`] error (spec 3.3.2.1).
    #[error("invalid topic name: {0}")]
    TopicNameInvalid(&'static str),
    /// A PUBLISH carries Topic Alias 0, which is never valid [MQTT-3.3.2-8] (reason 0x94).
    #[error("topic alias 0 is not valid")]
    TopicAliasInvalid,
}

impl DecodeError {
    /// The v5 reason code for DISCONNECT (or CONNACK while connecting).
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            Self::UnsupportedProtocolVersion { .. } => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            Self::Malformed(_) => ReasonCode::MALFORMED_PACKET,
            Self::Protocol(_) => ReasonCode::PROTOCOL_ERROR,
            Self::TopicNameInvalid(_) => ReasonCode::TOPIC_NAME_INVALID,
            Self::TopicAliasInvalid => ReasonCode::TOPIC_ALIAS_INVALID,
        }
    }
}

/// Why a packet cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string or binary field is longer than 65,535 bytes, or a subscription identifier
    /// is above 268,435,455.
    #[error("field {0} is longer than 65535 bytes")]
    FieldTooLong(&'static str),
    /// The packet would exceed the 268,435,455-byte remaining length the format allows.
    #[error("packet body of {0} bytes exceeds the MQTT limit of 268435455 bytes")]
    PacketTooLarge(usize),
    /// The packet does not exist in the protocol version (AUTH in v3).
    #[error("{0} does not exist in this protocol version")]
    NotInVersion(&'static str),
    /// The packet exceeds the peer's Maximum Packet Size even without the properties the
    /// spec lets a sender leave out (see [`crate::Packet::encode_within`]).
    #[error("packet of {size} bytes exceeds the peer's maximum packet size of {max} bytes")]
    ExceedsMaximumPacketSize {
        /// The smallest encoding, fixed header included.
        size: usize,
        /// The peer's limit.
        max: usize,
    },
}
