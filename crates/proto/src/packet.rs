//! One packet model for MQTT 3.1, 3.1.1 and 5.0.
//!
//! A v3 packet decodes into the same structs with every property absent and reason codes
//! mapped from v3 return codes; encoding for v3 drops properties and maps reason codes back.
//! Binary data (payloads, passwords, correlation data) is `Bytes`, sliced from the read
//! buffer without copying.

use bytes::Bytes;

use crate::ReasonCode;

/// The protocol level a client speaks, detected from CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V31,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V311,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Self::V31 => 3,
            Self::V311 => 4,
            Self::V5 => 5,
        }
    }

    /// True for MQTT 5.0, the only version with properties and reason codes on the wire.
    pub fn is_v5(self) -> bool {
        self == Self::V5
    }
}

/// Quality of service of a PUBLISH or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[repr(u8)]
pub enum QoS {
    /// QoS 0: at most once.
    #[default]
    AtMostOnce = 0,
    /// QoS 1: at least once.
    AtLeastOnce = 1,
    /// QoS 2: exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a wire value; `None` for 3, which is malformed [MQTT-3.3.1-4].
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// A user property: a UTF-8 string pair, which may repeat, even with the same name.
pub type UserProperty = (String, String);

/// Every MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (1).
    Connect(Box<Connect>),
    /// CONNACK (2).
    ConnAck(ConnAck),
    /// PUBLISH (3).
    Publish(Publish),
    /// PUBACK (4): QoS 1 acknowledgement.
    PubAck(PubResponse),
    /// PUBREC (5): QoS 2, part 1.
    PubRec(PubResponse),
    /// PUBREL (6): QoS 2, part 2.
    PubRel(PubResponse),
    /// PUBCOMP (7): QoS 2, part 3.
    PubComp(PubResponse),
    /// SUBSCRIBE (8).
    Subscribe(Subscribe),
    /// SUBACK (9).
    SubAck(SubAck),
    /// UNSUBSCRIBE (10).
    Unsubscribe(Unsubscribe),
    /// UNSUBACK (11).
    UnsubAck(UnsubAck),
    /// PINGREQ (12).
    PingReq,
    /// PINGRESP (13).
    PingResp,
    /// DISCONNECT (14). In v3 it carries no reason; it decodes as normal disconnection.
    Disconnect(Disconnect),
    /// AUTH (15), MQTT 5 only.
    Auth(Auth),
}

impl Packet {
    /// The packet's name as the spec writes it, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connect(_) => "CONNECT",
            Self::ConnAck(_) => "CONNACK",
            Self::Publish(_) => "PUBLISH",
            Self::PubAck(_) => "PUBACK",
            Self::PubRec(_) => "PUBREC",
            Self::PubRel(_) => "PUBREL",
            Self::PubComp(_) => "PUBCOMP",
            Self::Subscribe(_) => "SUBSCRIBE",
            Self::SubAck(_) => "SUBACK",
            Self::Unsubscribe(_) => "UNSUBSCRIBE",
            Self::UnsubAck(_) => "UNSUBACK",
            Self::PingReq => "PINGREQ",
            Self::PingResp => "PINGRESP",
            Self::Disconnect(_) => "DISCONNECT",
            Self::Auth(_) => "AUTH",
        }
    }
}

/// CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Detected from protocol name and level.
    pub protocol: ProtocolVersion,
    /// Clean Session (v3) / Clean Start (v5).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// May be empty.
    pub client_id: String,
    /// The Last Will, if the will flag was set.
    pub will: Option<Will>,
    /// User name, if the flag was set.
    pub username: Option<String>,
    /// Password, if the flag was set (binary data in v5).
    pub password: Option<Bytes>,
    /// v5 properties.
    pub properties: ConnectProperties,
}

/// CONNECT properties (v5 3.1.2.11).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectProperties {
    /// 0x11. Absent means 0.
    pub session_expiry_interval: Option<u32>,
    /// 0x21. Absent means 65,535; 0 is a protocol error.
    pub receive_maximum: Option<u16>,
    /// 0x27. Absent means no limit; 0 is a protocol error.
    pub maximum_packet_size: Option<u32>,
    /// 0x22. Absent means 0 (no aliases towards the client).
    pub topic_alias_maximum: Option<u16>,
    /// 0x19. 0 or 1.
    pub request_response_information: Option<bool>,
    /// 0x17. 0 or 1; absent means 1.
    pub request_problem_information: Option<bool>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
    /// 0x15.
    pub authentication_method: Option<String>,
    /// 0x16. Only with an authentication method.
    pub authentication_data: Option<Bytes>,
}

/// The Last Will carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// A topic name (no wildcards).
    pub topic: String,
    /// Binary payload.
    pub payload: Bytes,
    /// QoS of the will publication.
    pub qos: QoS,
    /// Whether it is published retained.
    pub retain: bool,
    /// v5 will properties.
    pub properties: WillProperties,
}

/// Will properties (v5 3.1.3.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WillProperties {
    /// 0x18. Seconds to wait before publishing; absent means 0.
    pub will_delay_interval: Option<u32>,
    /// 0x01. 0 unspecified bytes, 1 UTF-8.
    pub payload_format_indicator: Option<u8>,
    /// 0x02.
    pub message_expiry_interval: Option<u32>,
    /// 0x03.
    pub content_type: Option<String>,
    /// 0x08.
    pub response_topic: Option<String>,
    /// 0x09.
    pub correlation_data: Option<Bytes>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
}

/// CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Session present flag; must be 0 when the reason is an error.
    pub session_present: bool,
    /// v5 reason code; v3 return codes map through [`ReasonCode::to_v3_connack`].
    pub reason_code: ReasonCode,
    /// v5 properties.
    pub properties: ConnAckProperties,
}

/// CONNACK properties (v5 3.2.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAckProperties {
    /// 0x11.
    pub session_expiry_interval: Option<u32>,
    /// 0x21.
    pub receive_maximum: Option<u16>,
    /// 0x24. 0 or 1; absent means 2.
    pub maximum_qos: Option<QoS>,
    /// 0x25. Absent means available.
    pub retain_available: Option<bool>,
    /// 0x27.
    pub maximum_packet_size: Option<u32>,
    /// 0x12.
    pub assigned_client_identifier: Option<String>,
    /// 0x22.
    pub topic_alias_maximum: Option<u16>,
    /// 0x1F.
    pub reason_string: Option<String>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
    /// 0x28. Absent means available.
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29. Absent means available.
    pub subscription_identifiers_available: Option<bool>,
    /// 0x2A. Absent means available.
    pub shared_subscription_available: Option<bool>,
    /// 0x13.
    pub server_keep_alive: Option<u16>,
    /// 0x1A.
    pub response_information: Option<String>,
    /// 0x1C.
    pub server_reference: Option<String>,
    /// 0x15.
    pub authentication_method: Option<String>,
    /// 0x16.
    pub authentication_data: Option<Bytes>,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag: a redelivery of an earlier attempt. Must be 0 for QoS 0 [MQTT-3.3.1-2].
    pub dup: bool,
    /// QoS of this transmission.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name. Empty only in v5 with a topic alias property.
    pub topic: String,
    /// Non-zero for QoS 1 and 2; 0 (absent on the wire) for QoS 0.
    pub packet_id: u16,
    /// v5 properties.
    pub properties: PublishProperties,
    /// Application payload, sliced from the read buffer.
    pub payload: Bytes,
}

/// PUBLISH properties (v5 3.3.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishProperties {
    /// 0x01. 0 unspecified bytes, 1 UTF-8.
    pub payload_format_indicator: Option<u8>,
    /// 0x02. Seconds the message lives.
    pub message_expiry_interval: Option<u32>,
    /// 0x23. Non-zero.
    pub topic_alias: Option<u16>,
    /// 0x08. A topic name.
    pub response_topic: Option<String>,
    /// 0x09.
    pub correlation_data: Option<Bytes>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
    /// 0x0B, server to client only; may repeat. Non-zero, at most 268,435,455.
    pub subscription_identifiers: Vec<u32>,
    /// 0x03.
    pub content_type: Option<String>,
}

/// A PUBLISH to encode, borrowing its parts: the broker encodes one shared message for
/// many subscribers, each with its own packet id, flags, alias, remaining expiry and
/// subscription identifiers, without cloning the message.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingPublish<'a> {
    /// DUP flag.
    pub dup: bool,
    /// QoS of this transmission.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name; empty when `topic_alias` refers to an alias the peer already knows.
    pub topic: &'a str,
    /// Packet identifier; ignored for QoS 0.
    pub packet_id: u16,
    /// The message's properties. Its `topic_alias`, `message_expiry_interval` and
    /// `subscription_identifiers` are NOT encoded; the three fields below are.
    pub properties: &'a PublishProperties,
    /// Topic alias to send, if any.
    pub topic_alias: Option<u16>,
    /// Remaining message expiry to send, if the message has one.
    pub message_expiry_interval: Option<u32>,
    /// Subscription identifiers of the matching subscriptions.
    pub subscription_identifiers: &'a [u32],
    /// Payload.
    pub payload: &'a [u8],
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResponse {
    /// Non-zero packet identifier.
    pub packet_id: u16,
    /// v5 reason code; `SUCCESS` for v3.
    pub reason_code: ReasonCode,
    /// v5 properties.
    pub properties: ResponseProperties,
}

impl PubResponse {
    /// A success response without properties, the only form v3 knows.
    pub fn success(packet_id: u16) -> Self {
        Self {
            packet_id,
            reason_code: ReasonCode::SUCCESS,
            properties: ResponseProperties::default(),
        }
    }
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseProperties {
    /// 0x1F.
    pub reason_string: Option<String>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
}

impl ResponseProperties {
    /// True when nothing would be encoded.
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

/// What a retained message does at subscribe time (v5 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum RetainHandling {
    /// 0: send retained messages at subscribe.
    #[default]
    SendAtSubscribe,
    /// 1: send only if the subscription did not exist.
    SendIfNew,
    /// 2: do not send.
    DontSend,
}

/// The options byte of one SUBSCRIBE entry. v3 carries only the QoS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// Do not send back messages this client published [MQTT-3.8.3-3].
    pub no_local: bool,
    /// Keep the publisher's RETAIN flag on forwarded messages.
    pub retain_as_published: bool,
    /// Retained messages at subscribe time.
    pub retain_handling: RetainHandling,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Non-zero packet identifier.
    pub packet_id: u16,
    /// At least one entry [MQTT-3.8.3-2]. Filters are UTF-8 checked, not syntax checked:
    /// the broker answers a bad filter in its own SUBACK entry.
    pub filters: Vec<(String, SubscriptionOptions)>,
    /// v5 properties.
    pub properties: SubscribeProperties,
}

/// SUBSCRIBE properties (v5 3.8.2.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscribeProperties {
    /// 0x0B. 1 to 268,435,455.
    pub subscription_identifier: Option<u32>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
}

/// SUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: u16,
    /// One per filter, in order.
    pub reason_codes: Vec<ReasonCode>,
    /// v5 properties.
    pub properties: ResponseProperties,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Non-zero packet identifier.
    pub packet_id: u16,
    /// At least one filter [MQTT-3.10.3-2].
    pub filters: Vec<String>,
    /// v5 user properties.
    pub user_properties: Vec<UserProperty>,
}

/// UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier of the UNSUBSCRIBE.
    pub packet_id: u16,
    /// v5: one per filter. v3 carries none; decoding v3 gives an empty list.
    pub reason_codes: Vec<ReasonCode>,
    /// v5 properties.
    pub properties: ResponseProperties,
}

/// DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// v5 reason; normal disconnection for v3.
    pub reason_code: ReasonCode,
    /// v5 properties.
    pub properties: DisconnectProperties,
}

impl Default for ReasonCode {
    fn default() -> Self {
        Self::SUCCESS
    }
}

/// DISCONNECT properties (v5 3.14.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DisconnectProperties {
    /// 0x11. Client to server only.
    pub session_expiry_interval: Option<u32>,
    /// 0x1F.
    pub reason_string: Option<String>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
    /// 0x1C. Server to client only.
    pub server_reference: Option<String>,
}

/// AUTH (v5 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// 0x00 success, 0x18 continue authentication, 0x19 re-authenticate.
    pub reason_code: ReasonCode,
    /// Properties.
    pub properties: AuthProperties,
}

/// AUTH properties (v5 3.15.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthProperties {
    /// 0x15.
    pub authentication_method: Option<String>,
    /// 0x16.
    pub authentication_data: Option<Bytes>,
    /// 0x1F.
    pub reason_string: Option<String>,
    /// 0x26.
    pub user_properties: Vec<UserProperty>,
}
