//! Encoder: [`Packet`] and [`OutgoingPublish`] into bytes.
//!
//! Every packet is walked twice by one generic routine: first into a [`Counter`] that
//! measures the body and checks every field limit, then, only if that succeeded, into the
//! buffer after one `reserve`. Writing therefore cannot fail halfway, and the length and
//! the bytes come from the same code, so they cannot disagree.

use bytes::{BufMut, BytesMut};

use crate::wire::{
    PROTOCOL_NAME, PROTOCOL_NAME_V31, connect_flag, packet_type, property, var_int_len,
};
use crate::{
    Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, ConnectProperties, Disconnect,
    DisconnectProperties, EncodeError, MAX_REMAINING_LENGTH, OutgoingPublish, Packet,
    ProtocolVersion, PubResponse, Publish, QoS, ReasonCode, ResponseProperties, RetainHandling,
    SubAck, Subscribe, SubscribeProperties, SubscriptionOptions, UnsubAck, Unsubscribe,
    UserProperty, WillProperties,
};

impl Packet {
    /// Appends the packet, encoded for `version`, to `buf`.
    ///
    /// v3 drops properties and maps reason codes to v3 return codes; v5 uses the shortest
    /// forms the spec allows. CONNECT is written with the protocol name and level of
    /// `version` (its `protocol` field is not consulted). On error `buf` is unchanged.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            // One code path for every PUBLISH the broker sends.
            Self::Publish(publish) => OutgoingPublish::from(publish).encode(version, buf),
            _ => {
                self.check_version(version)?;
                write_packet(self, version, buf)
            }
        }
    }

    /// The full encoded size, fixed header included; what [`Packet::encode`] appends.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        match self {
            Self::Publish(publish) => OutgoingPublish::from(publish).encoded_len(version),
            _ => {
                self.check_version(version)?;
                packet_len(self, version)
            }
        }
    }

    /// Appends the packet like [`Packet::encode`], but no larger than `max_size` bytes, the
    /// peer's Maximum Packet Size. Where the spec lets a sender leave them out so that a
    /// packet fits — the Reason String and User Properties of CONNACK, PUBACK, PUBREC,
    /// PUBREL, PUBCOMP, SUBACK, UNSUBACK, DISCONNECT and AUTH ([MQTT-3.1.2-24],
    /// [MQTT-3.2.2-19], [MQTT-3.2.2-20], [MQTT-3.4.2-2], [MQTT-3.4.2-3], ...,
    /// [MQTT-3.14.2-3], [MQTT-3.14.2-4], [MQTT-3.15.2-2], [MQTT-3.15.2-3]) — the reason
    /// string goes first, then the user properties. A packet that still does not fit is
    /// not written ([`EncodeError::ExceedsMaximumPacketSize`]): the sender must discard it
    /// [MQTT-3.1.2-25]. On error `buf` is unchanged.
    pub fn encode_within(
        &self,
        version: ProtocolVersion,
        max_size: usize,
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        // No limit set (the usual case): every encodable packet fits, so skip measuring.
        if max_size >= crate::MAX_PACKET_SIZE as usize {
            return self.encode(version, buf);
        }
        let mut size = self.encoded_len(version)?;
        if size <= max_size {
            return self.encode(version, buf);
        }
        // Only a peer with a small limit gets here, so a copy to trim is affordable.
        let mut trimmed = self.clone();
        for step in [Trim::ReasonString, Trim::UserProperties] {
            if trimmed.trim(step) {
                size = trimmed.encoded_len(version)?;
                if size <= max_size {
                    return trimmed.encode(version, buf);
                }
            }
        }
        Err(EncodeError::ExceedsMaximumPacketSize {
            size,
            max: max_size,
        })
    }

    /// Removes what `step` names, if this packet may go without it; true if anything was
    /// removed.
    fn trim(&mut self, step: Trim) -> bool {
        let (reason_string, user_properties) = match self {
            Self::ConnAck(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::PubAck(p) | Self::PubRec(p) | Self::PubRel(p) | Self::PubComp(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::SubAck(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::UnsubAck(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::Disconnect(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::Auth(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            // PUBLISH properties belong to the message: a PUBLISH that does not fit is not
            // sent at all. CONNECT, SUBSCRIBE and UNSUBSCRIBE carry no reason string.
            Self::Connect(_)
            | Self::Publish(_)
            | Self::Subscribe(_)
            | Self::Unsubscribe(_)
            | Self::PingReq
            | Self::PingResp => return false,
        };
        match step {
            Trim::ReasonString => reason_string.take().is_some(),
            Trim::UserProperties => {
                let had = !user_properties.is_empty();
                user_properties.clear();
                had
            }
        }
    }

    fn check_version(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
        match self {
            Self::Auth(_) if !version.is_v5() => Err(EncodeError::NotInVersion("AUTH")),
            _ => Ok(()),
        }
    }
}

/// What [`Packet::encode_within`] leaves out, in this order.
#[derive(Clone, Copy)]
enum Trim {
    ReasonString,
    UserProperties,
}

impl OutgoingPublish<'_> {
    /// Appends the PUBLISH, encoded for `version`, to `buf`. On error `buf` is unchanged.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
        write_packet(self, version, buf)
    }

    /// The full encoded size, fixed header included.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        packet_len(self, version)
    }
}

impl<'a> From<&'a Publish> for OutgoingPublish<'a> {
    /// The PUBLISH as received: alias, expiry and subscription identifiers are taken from
    /// its properties.
    fn from(publish: &'a Publish) -> Self {
        Self {
            dup: publish.dup,
            qos: publish.qos,
            retain: publish.retain,
            topic: &publish.topic,
            packet_id: publish.packet_id,
            properties: &publish.properties,
            topic_alias: publish.properties.topic_alias,
            message_expiry_interval: publish.properties.message_expiry_interval,
            subscription_identifiers: &publish.properties.subscription_identifiers,
            payload: &publish.payload,
        }
    }
}

/// A packet's fixed header byte and body.
trait Body {
    fn first_byte(&self) -> u8;
    /// Writes the body. Never fails: field limits are checked by running it into a
    /// [`Counter`] first.
    fn write_body<S: Sink>(&self, version: ProtocolVersion, sink: &mut S);
}

fn body_len<B: Body>(packet: &B, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let mut counter = Counter::default();
    packet.write_body(version, &mut counter);
    match counter.error {
        Some(error) => Err(error),
        // 2.1.4: the remaining length is a Variable Byte Integer of at most four bytes.
        None if counter.len > MAX_REMAINING_LENGTH => Err(EncodeError::PacketTooLarge(counter.len)),
        None => Ok(counter.len),
    }
}

fn packet_len<B: Body>(packet: &B, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let len = body_len(packet, version)?;
    Ok(1 + var_int_len(len) + len)
}

fn write_packet<B: Body>(
    packet: &B,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let len = body_len(packet, version)?;
    let total = 1 + var_int_len(len) + len;
    buf.reserve(total);
    let start = buf.len();
    buf.put_u8(packet.first_byte());
    buf.var_int(len);
    packet.write_body(version, buf);
    debug_assert_eq!(
        buf.len() - start,
        total,
        "counted and written lengths differ"
    );
    Ok(())
}

/// Where a body goes: a [`Counter`] or the output buffer.
trait Sink {
    fn u8(&mut self, value: u8);
    fn u16(&mut self, value: u16);
    fn u32(&mut self, value: u32);
    /// A Variable Byte Integer (1.5.5), at most 268,435,455.
    fn var_int(&mut self, value: usize);
    /// Bytes as they are, e.g. a PUBLISH payload.
    fn raw(&mut self, bytes: &[u8]);
    /// Binary Data (1.5.6): a two-byte length and the bytes, at most 65,535 of them.
    fn binary(&mut self, field: &'static str, bytes: &[u8]);
    /// A property block (2.2.2): its length, then the properties.
    fn properties<P: Properties>(&mut self, properties: &P);

    /// UTF-8 Encoded String (1.5.4).
    fn string(&mut self, field: &'static str, value: &str) {
        self.binary(field, value.as_bytes());
    }
}

/// Measures a body and records the first field that exceeds its limit.
#[derive(Default)]
struct Counter {
    len: usize,
    error: Option<EncodeError>,
}

impl Sink for Counter {
    fn u8(&mut self, _: u8) {
        self.len += 1;
    }

    fn u16(&mut self, _: u16) {
        self.len += 2;
    }

    fn u32(&mut self, _: u32) {
        self.len += 4;
    }

    fn var_int(&mut self, value: usize) {
        // Only subscription identifiers can exceed this here: a property block that large
        // makes the packet too large, which `body_len` reports.
        if value > MAX_REMAINING_LENGTH {
            self.error
                .get_or_insert(EncodeError::FieldTooLong("subscription identifier"));
        }
        self.len += var_int_len(value);
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
    }

    fn binary(&mut self, field: &'static str, bytes: &[u8]) {
        if bytes.len() > usize::from(u16::MAX) {
            self.error.get_or_insert(EncodeError::FieldTooLong(field));
        }
        self.len += 2 + bytes.len();
    }

    fn properties<P: Properties>(&mut self, properties: &P) {
        let start = self.len;
        properties.write(self);
        self.len += var_int_len(self.len - start);
    }
}

impl Sink for BytesMut {
    fn u8(&mut self, value: u8) {
        self.put_u8(value);
    }

    fn u16(&mut self, value: u16) {
        self.put_u16(value);
    }

    fn u32(&mut self, value: u32) {
        self.put_u32(value);
    }

    fn var_int(&mut self, mut value: usize) {
        loop {
            let digit = (value % 128) as u8;
            value /= 128;
            if value == 0 {
                self.put_u8(digit);
                return;
            }
            self.put_u8(digit | 0x80);
        }
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.put_slice(bytes);
    }

    fn binary(&mut self, _: &'static str, bytes: &[u8]) {
        // The Counter has checked the length fits.
        self.put_u16(bytes.len() as u16);
        self.put_slice(bytes);
    }

    fn properties<P: Properties>(&mut self, properties: &P) {
        let mut counter = Counter::default();
        properties.write(&mut counter);
        self.var_int(counter.len);
        properties.write(self);
    }
}

/// A set of v5 properties.
trait Properties {
    fn write<S: Sink>(&self, sink: &mut S);

    fn is_empty(&self) -> bool {
        let mut counter = Counter::default();
        self.write(&mut counter);
        counter.len == 0
    }
}

fn put_u8<S: Sink>(sink: &mut S, id: u8, value: Option<u8>) {
    if let Some(value) = value {
        sink.u8(id);
        sink.u8(value);
    }
}

fn put_bool<S: Sink>(sink: &mut S, id: u8, value: Option<bool>) {
    put_u8(sink, id, value.map(u8::from));
}

fn put_u16<S: Sink>(sink: &mut S, id: u8, value: Option<u16>) {
    if let Some(value) = value {
        sink.u8(id);
        sink.u16(value);
    }
}

fn put_u32<S: Sink>(sink: &mut S, id: u8, value: Option<u32>) {
    if let Some(value) = value {
        sink.u8(id);
        sink.u32(value);
    }
}

fn put_string<S: Sink>(sink: &mut S, id: u8, value: Option<&str>) {
    if let Some(value) = value {
        sink.u8(id);
        sink.string(property::name(id), value);
    }
}

fn put_binary<S: Sink>(sink: &mut S, id: u8, value: Option<&[u8]>) {
    if let Some(value) = value {
        sink.u8(id);
        sink.binary(property::name(id), value);
    }
}

fn put_user_properties<S: Sink>(sink: &mut S, user_properties: &[UserProperty]) {
    for (name, value) in user_properties {
        sink.u8(property::USER_PROPERTY);
        sink.string("user property", name);
        sink.string("user property", value);
    }
}

impl Properties for ConnectProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        use property::*;
        put_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_string(
            s,
            AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
        );
        put_binary(s, AUTHENTICATION_DATA, self.authentication_data.as_deref());
        put_bool(
            s,
            REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        put_bool(
            s,
            REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        put_u16(s, RECEIVE_MAXIMUM, self.receive_maximum);
        put_u16(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_u32(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        put_user_properties(s, &self.user_properties);
    }
}

impl Properties for WillProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        use property::*;
        put_u8(s, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        put_u32(s, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_string(s, CONTENT_TYPE, self.content_type.as_deref());
        put_string(s, RESPONSE_TOPIC, self.response_topic.as_deref());
        put_binary(s, CORRELATION_DATA, self.correlation_data.as_deref());
        put_u32(s, WILL_DELAY_INTERVAL, self.will_delay_interval);
        put_user_properties(s, &self.user_properties);
    }
}

impl Properties for ConnAckProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        use property::*;
        put_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_string(
            s,
            ASSIGNED_CLIENT_IDENTIFIER,
            self.assigned_client_identifier.as_deref(),
        );
        put_u16(s, SERVER_KEEP_ALIVE, self.server_keep_alive);
        put_string(
            s,
            AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
        );
        put_binary(s, AUTHENTICATION_DATA, self.authentication_data.as_deref());
        put_string(
            s,
            RESPONSE_INFORMATION,
            self.response_information.as_deref(),
        );
        put_string(s, SERVER_REFERENCE, self.server_reference.as_deref());
        put_string(s, REASON_STRING, self.reason_string.as_deref());
        put_u16(s, RECEIVE_MAXIMUM, self.receive_maximum);
        put_u16(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_u8(s, MAXIMUM_QOS, self.maximum_qos.map(|qos| qos as u8));
        put_bool(s, RETAIN_AVAILABLE, self.retain_available);
        put_user_properties(s, &self.user_properties);
        put_u32(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        put_bool(
            s,
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        put_bool(
            s,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        );
        put_bool(
            s,
            SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
    }
}

/// The properties an [`OutgoingPublish`] sends: the message's own, with alias, expiry and
/// subscription identifiers taken from the outgoing fields.
struct OutgoingProperties<'a, 'b>(&'b OutgoingPublish<'a>);

impl Properties for OutgoingProperties<'_, '_> {
    fn write<S: Sink>(&self, s: &mut S) {
        use property::*;
        let publish = self.0;
        let p = publish.properties;
        put_u8(s, PAYLOAD_FORMAT_INDICATOR, p.payload_format_indicator);
        put_u32(s, MESSAGE_EXPIRY_INTERVAL, publish.message_expiry_interval);
        put_string(s, CONTENT_TYPE, p.content_type.as_deref());
        put_string(s, RESPONSE_TOPIC, p.response_topic.as_deref());
        put_binary(s, CORRELATION_DATA, p.correlation_data.as_deref());
        for &id in publish.subscription_identifiers {
            s.u8(SUBSCRIPTION_IDENTIFIER);
            s.var_int(id as usize);
        }
        put_u16(s, TOPIC_ALIAS, publish.topic_alias);
        put_user_properties(s, &p.user_properties);
    }
}

impl Properties for ResponseProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        put_string(s, property::REASON_STRING, self.reason_string.as_deref());
        put_user_properties(s, &self.user_properties);
    }

    fn is_empty(&self) -> bool {
        ResponseProperties::is_empty(self)
    }
}

impl Properties for SubscribeProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        if let Some(id) = self.subscription_identifier {
            s.u8(property::SUBSCRIPTION_IDENTIFIER);
            s.var_int(id as usize);
        }
        put_user_properties(s, &self.user_properties);
    }
}

/// UNSUBSCRIBE carries user properties only.
impl Properties for Vec<UserProperty> {
    fn write<S: Sink>(&self, s: &mut S) {
        put_user_properties(s, self);
    }
}

impl Properties for DisconnectProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        use property::*;
        put_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_string(s, SERVER_REFERENCE, self.server_reference.as_deref());
        put_string(s, REASON_STRING, self.reason_string.as_deref());
        put_user_properties(s, &self.user_properties);
    }
}

impl Properties for AuthProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        use property::*;
        put_string(
            s,
            AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
        );
        put_binary(s, AUTHENTICATION_DATA, self.authentication_data.as_deref());
        put_string(s, REASON_STRING, self.reason_string.as_deref());
        put_user_properties(s, &self.user_properties);
    }
}

impl Body for OutgoingPublish<'_> {
    fn first_byte(&self) -> u8 {
        // [MQTT-3.3.1-2] DUP is 0 at QoS 0, whatever the caller carried over.
        let dup = self.dup && self.qos != QoS::AtMostOnce;
        packet_type::PUBLISH << 4
            | u8::from(dup) << 3
            | (self.qos as u8) << 1
            | u8::from(self.retain)
    }

    fn write_body<S: Sink>(&self, version: ProtocolVersion, s: &mut S) {
        s.string("topic name", self.topic);
        // 3.3.2.2: the packet identifier only at QoS 1 and 2.
        if self.qos != QoS::AtMostOnce {
            s.u16(self.packet_id);
        }
        if version.is_v5() {
            s.properties(&OutgoingProperties(self));
        }
        s.raw(self.payload);
    }
}

impl Body for Packet {
    fn first_byte(&self) -> u8 {
        use packet_type::*;
        let (kind, flags) = match self {
            Self::Connect(_) => (CONNECT, 0),
            Self::ConnAck(_) => (CONNACK, 0),
            Self::Publish(publish) => return OutgoingPublish::from(publish).first_byte(),
            Self::PubAck(_) => (PUBACK, 0),
            Self::PubRec(_) => (PUBREC, 0),
            // [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1]: reserved flags 0010.
            Self::PubRel(_) => (PUBREL, 0b0010),
            Self::PubComp(_) => (PUBCOMP, 0),
            Self::Subscribe(_) => (SUBSCRIBE, 0b0010),
            Self::SubAck(_) => (SUBACK, 0),
            Self::Unsubscribe(_) => (UNSUBSCRIBE, 0b0010),
            Self::UnsubAck(_) => (UNSUBACK, 0),
            Self::PingReq => (PINGREQ, 0),
            Self::PingResp => (PINGRESP, 0),
            Self::Disconnect(_) => (DISCONNECT, 0),
            Self::Auth(_) => (AUTH, 0),
        };
        kind << 4 | flags
    }

    fn write_body<S: Sink>(&self, version: ProtocolVersion, s: &mut S) {
        match self {
            Self::Connect(connect) => write_connect(connect, version, s),
            Self::ConnAck(connack) => write_connack(connack, version, s),
            Self::Publish(publish) => OutgoingPublish::from(publish).write_body(version, s),
            Self::PubAck(ack) | Self::PubRec(ack) | Self::PubRel(ack) | Self::PubComp(ack) => {
                write_pub_response(ack, version, s)
            }
            Self::Subscribe(subscribe) => write_subscribe(subscribe, version, s),
            Self::SubAck(suback) => write_suback(suback, version, s),
            Self::Unsubscribe(unsubscribe) => write_unsubscribe(unsubscribe, version, s),
            Self::UnsubAck(unsuback) => write_unsuback(unsuback, version, s),
            Self::PingReq | Self::PingResp => {}
            Self::Disconnect(disconnect) => write_disconnect(disconnect, version, s),
            Self::Auth(auth) => write_auth(auth, s),
        }
    }
}

fn write_connect<S: Sink>(connect: &Connect, version: ProtocolVersion, s: &mut S) {
    let name = match version {
        ProtocolVersion::V31 => PROTOCOL_NAME_V31,
        ProtocolVersion::V311 | ProtocolVersion::V5 => PROTOCOL_NAME,
    };
    s.string("protocol name", name);
    s.u8(version.level());
    let mut flags = 0;
    if connect.clean_start {
        flags |= connect_flag::CLEAN_START;
    }
    if let Some(will) = &connect.will {
        flags |= connect_flag::WILL | (will.qos as u8) << connect_flag::WILL_QOS_SHIFT;
        if will.retain {
            flags |= connect_flag::WILL_RETAIN;
        }
    }
    if connect.username.is_some() {
        flags |= connect_flag::USERNAME;
    }
    if connect.password.is_some() {
        flags |= connect_flag::PASSWORD;
    }
    s.u8(flags);
    s.u16(connect.keep_alive);
    if version.is_v5() {
        s.properties(&connect.properties);
    }
    // 3.1.3: client id, will properties, will topic, will payload, user name, password.
    s.string("client identifier", &connect.client_id);
    if let Some(will) = &connect.will {
        if version.is_v5() {
            s.properties(&will.properties);
        }
        s.string("will topic", &will.topic);
        s.binary("will payload", &will.payload);
    }
    if let Some(username) = &connect.username {
        s.string("user name", username);
    }
    if let Some(password) = &connect.password {
        s.binary("password", password);
    }
}

fn write_connack<S: Sink>(connack: &ConnAck, version: ProtocolVersion, s: &mut S) {
    // 3.1 reserves this byte; session present is new in 3.1.1.
    s.u8(u8::from(
        connack.session_present && version != ProtocolVersion::V31,
    ));
    if version.is_v5() {
        s.u8(connack.reason_code.0);
        s.properties(&connack.properties);
    } else {
        s.u8(connack.reason_code.to_v3_connack());
    }
}

fn write_pub_response<S: Sink>(ack: &PubResponse, version: ProtocolVersion, s: &mut S) {
    s.u16(ack.packet_id);
    // 3.4.2.1: reason code and property length may be omitted for Success without
    // properties; the property length alone for any reason without properties.
    let has_properties = !ack.properties.is_empty();
    if version.is_v5() && (ack.reason_code != ReasonCode::SUCCESS || has_properties) {
        s.u8(ack.reason_code.0);
        if has_properties {
            s.properties(&ack.properties);
        }
    }
}

fn subscription_options(options: &SubscriptionOptions, version: ProtocolVersion) -> u8 {
    let qos = options.qos as u8;
    if !version.is_v5() {
        return qos;
    }
    let retain_handling = match options.retain_handling {
        RetainHandling::SendAtSubscribe => 0,
        RetainHandling::SendIfNew => 1,
        RetainHandling::DontSend => 2,
    };
    qos | u8::from(options.no_local) << 2
        | u8::from(options.retain_as_published) << 3
        | retain_handling << 4
}

fn write_subscribe<S: Sink>(subscribe: &Subscribe, version: ProtocolVersion, s: &mut S) {
    s.u16(subscribe.packet_id);
    if version.is_v5() {
        s.properties(&subscribe.properties);
    }
    for (filter, options) in &subscribe.filters {
        s.string("topic filter", filter);
        s.u8(subscription_options(options, version));
    }
}

fn write_suback<S: Sink>(suback: &SubAck, version: ProtocolVersion, s: &mut S) {
    s.u16(suback.packet_id);
    if version.is_v5() {
        s.properties(&suback.properties);
        for code in &suback.reason_codes {
            s.u8(code.0);
        }
    } else {
        for code in &suback.reason_codes {
            s.u8(code.to_v3_suback());
        }
    }
}

fn write_unsubscribe<S: Sink>(unsubscribe: &Unsubscribe, version: ProtocolVersion, s: &mut S) {
    s.u16(unsubscribe.packet_id);
    if version.is_v5() {
        s.properties(&unsubscribe.user_properties);
    }
    for filter in &unsubscribe.filters {
        s.string("topic filter", filter);
    }
}

fn write_unsuback<S: Sink>(unsuback: &UnsubAck, version: ProtocolVersion, s: &mut S) {
    s.u16(unsuback.packet_id);
    // 3.1.1 UNSUBACK is the packet identifier alone.
    if version.is_v5() {
        s.properties(&unsuback.properties);
        for code in &unsuback.reason_codes {
            s.u8(code.0);
        }
    }
}

fn write_disconnect<S: Sink>(disconnect: &Disconnect, version: ProtocolVersion, s: &mut S) {
    // 3.14.2.1: remaining length 0 for a normal disconnection without properties;
    // 3.14.2.2.1: no property length when there are no properties.
    let has_properties = !disconnect.properties.is_empty();
    if version.is_v5()
        && (disconnect.reason_code != ReasonCode::NORMAL_DISCONNECTION || has_properties)
    {
        s.u8(disconnect.reason_code.0);
        if has_properties {
            s.properties(&disconnect.properties);
        }
    }
}

fn write_auth<S: Sink>(auth: &Auth, s: &mut S) {
    // 3.15.2.1: remaining length 0 for Success without properties. Otherwise AUTH always
    // carries the property length.
    if auth.reason_code != ReasonCode::SUCCESS || !auth.properties.is_empty() {
        s.u8(auth.reason_code.0);
        s.properties(&auth.properties);
    }
}
