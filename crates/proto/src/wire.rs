//! Wire constants and helpers shared by the decoder and the encoder.

/// Control packet types: the upper four bits of the first byte (spec 2.1.2).
pub(crate) mod packet_type {
    pub(crate) const CONNECT: u8 = 1;
    pub(crate) const CONNACK: u8 = 2;
    pub(crate) const PUBLISH: u8 = 3;
    pub(crate) const PUBACK: u8 = 4;
    pub(crate) const PUBREC: u8 = 5;
    pub(crate) const PUBREL: u8 = 6;
    pub(crate) const PUBCOMP: u8 = 7;
    pub(crate) const SUBSCRIBE: u8 = 8;
    pub(crate) const SUBACK: u8 = 9;
    pub(crate) const UNSUBSCRIBE: u8 = 10;
    pub(crate) const UNSUBACK: u8 = 11;
    pub(crate) const PINGREQ: u8 = 12;
    pub(crate) const PINGRESP: u8 = 13;
    pub(crate) const DISCONNECT: u8 = 14;
    pub(crate) const AUTH: u8 = 15;
}

/// v5 property identifiers (spec 2.2.2.2, table 2-4).
pub(crate) mod property {
    pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub(crate) const CONTENT_TYPE: u8 = 0x03;
    pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
    pub(crate) const CORRELATION_DATA: u8 = 0x09;
    pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
    pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
    pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
    pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
    pub(crate) const REASON_STRING: u8 = 0x1F;
    pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
    pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub(crate) const TOPIC_ALIAS: u8 = 0x23;
    pub(crate) const MAXIMUM_QOS: u8 = 0x24;
    pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
    pub(crate) const USER_PROPERTY: u8 = 0x26;
    pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

    /// The spec's name of a string or binary property, for errors.
    pub(crate) fn name(id: u8) -> &'static str {
        match id {
            CONTENT_TYPE => "content type",
            RESPONSE_TOPIC => "response topic",
            CORRELATION_DATA => "correlation data",
            ASSIGNED_CLIENT_IDENTIFIER => "assigned client identifier",
            AUTHENTICATION_METHOD => "authentication method",
            AUTHENTICATION_DATA => "authentication data",
            RESPONSE_INFORMATION => "response information",
            SERVER_REFERENCE => "server reference",
            REASON_STRING => "reason string",
            _ => "property",
        }
    }
}

/// CONNECT flag bits (spec 3.1.2.3).
pub(crate) mod connect_flag {
    pub(crate) const RESERVED: u8 = 0x01;
    pub(crate) const CLEAN_START: u8 = 0x02;
    pub(crate) const WILL: u8 = 0x04;
    pub(crate) const WILL_QOS_SHIFT: u8 = 3;
    pub(crate) const WILL_RETAIN: u8 = 0x20;
    pub(crate) const PASSWORD: u8 = 0x40;
    pub(crate) const USERNAME: u8 = 0x80;
}

/// Protocol name of MQTT 3.1.
pub(crate) const PROTOCOL_NAME_V31: &str = "MQIsdp";
/// Protocol name of MQTT 3.1.1 and 5.0.
pub(crate) const PROTOCOL_NAME: &str = "MQTT";

/// Bytes a Variable Byte Integer takes for `value` in its shortest form (spec 1.5.5).
/// Values above the 4-byte maximum report 4; callers bound the value first.
pub(crate) fn var_int_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}
