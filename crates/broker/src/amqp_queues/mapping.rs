//! RabbitMQ's mapping between `amq.topic` and the MQTT topic space: routing keys and
//! binding keys to topics and filters (`.` ↔ `/`, `*` ↔ `+`, `#` ↔ `#`), and messages
//! both ways (delivery mode ↔ QoS with the `x-mqtt-publish-qos` header, content type,
//! correlation id, reply-to, expiration, headers ↔ MQTT 5 properties).

use std::sync::Arc;

use base64ct::{Base64, Encoding};
use bytes::{Bytes, BytesMut};
use midge_amqp_proto::{BasicProperties, FieldTable, FieldValue, FramePayload};
use midge_proto::{PublishProperties, QoS, topic};

use crate::model::{Message, Millis, next_message_id};

/// The header RabbitMQ carries the MQTT publisher's QoS in.
pub const QOS_HEADER: &str = "x-mqtt-publish-qos";
/// The header RabbitMQ carries the MQTT PUBLISH's DUP flag in.
pub const DUP_HEADER: &str = "x-mqtt-dup";

/// An AMQP routing key as the MQTT topic it names: `.` → `/`. Wildcards have no place
/// in a topic name, so a key with `*` or `#` words is refused, as is an empty key.
pub fn routing_key_to_topic(key: &str) -> Result<String, String> {
    let topic = key.replace('.', "/");
    if topic.is_empty() {
        return Err("an empty routing key names no MQTT topic".to_owned());
    }
    if topic.split('/').any(|w| w == "*" || w == "#") || topic.contains(['+', '#']) {
        return Err(format!(
            "routing key '{key}' holds a wildcard; on amq.topic a routing key is an MQTT topic name"
        ));
    }
    topic::validate_topic_name(&topic)
        .map_err(|e| format!("routing key '{key}' is not a valid MQTT topic: {e}"))?;
    Ok(topic)
}

/// An AMQP binding key as the MQTT filter it stands for: `.` → `/`, `*` → `+`, `#` → `#`.
/// Keys with no MQTT equivalent (`#` before the last word, a wildcard inside a word) are
/// refused with a reason.
pub fn binding_key_to_filter(key: &str) -> Result<String, String> {
    if key.is_empty() {
        return Err("an empty binding key names no MQTT topic".to_owned());
    }
    let mut words = Vec::new();
    for word in key.split('.') {
        words.push(match word {
            "*" => "+".to_owned(),
            "#" => "#".to_owned(),
            w if w.contains(['*', '#', '+']) => {
                return Err(format!(
                    "binding key '{key}': a wildcard inside the word '{w}' has no MQTT equivalent"
                ));
            }
            w => w.to_owned(),
        });
    }
    let filter = words.join("/");
    topic::validate_topic_filter(&filter).map_err(|_| {
        format!("binding key '{key}' has no MQTT equivalent ('#' must be the last word)")
    })?;
    Ok(filter)
}

/// An MQTT topic as the routing key AMQP consumers see: `/` → `.`.
pub fn topic_to_routing_key(topic: &str) -> String {
    topic.replace('/', ".")
}

/// The message an AMQP publish becomes.
pub fn to_message(
    topic: String,
    properties: &BasicProperties,
    body: Bytes,
    origin: Arc<str>,
    now: Millis,
) -> Message {
    let header_qos = properties
        .headers
        .as_ref()
        .and_then(|h| h.get(QOS_HEADER))
        .and_then(FieldValue::as_i64);
    let qos = match (properties.delivery_mode, header_qos) {
        (_, Some(0)) | (None | Some(0) | Some(1), None) => QoS::AtMostOnce,
        // RabbitMQ delivers QoS 2 as QoS 1; so do AMQP publishes here.
        _ => QoS::AtLeastOnce,
    };
    let mut user_properties = Vec::new();
    if let Some(headers) = &properties.headers {
        for (name, value) in &headers.0 {
            if name == QOS_HEADER || name == DUP_HEADER {
                continue;
            }
            if let Some(text) = header_text(value) {
                user_properties.push((name.clone(), text));
            }
        }
    }
    let expires_at = properties
        .expiration
        .as_deref()
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(|ms| now.saturating_add(ms));
    Message {
        charge: Default::default(),
        id: next_message_id(),
        topic,
        payload: body,
        qos,
        retain: false,
        properties: PublishProperties {
            content_type: properties.content_type.clone(),
            correlation_data: properties
                .correlation_id
                .as_ref()
                .map(|c| Bytes::copy_from_slice(c.as_bytes())),
            response_topic: properties.reply_to.as_deref().map(|r| r.replace('.', "/")),
            user_properties,
            ..PublishProperties::default()
        }
        .into(),
        expires_at,
        received_at: now,
        origin,
    }
}

/// A header value as MQTT user property text: strings as they are, numbers and booleans
/// written out; tables and arrays are left out (MQTT user properties are flat text).
fn header_text(value: &FieldValue) -> Option<String> {
    match value {
        FieldValue::LongString(_) | FieldValue::ByteArray(_) => value.as_str().map(str::to_owned),
        FieldValue::Bool(b) => Some(b.to_string()),
        FieldValue::F32(f) => Some(f.to_string()),
        FieldValue::F64(f) => Some(f.to_string()),
        v => v.as_i64().map(|n| n.to_string()),
    }
}

/// The user property a default-exchange message keeps its AMQP properties in. Such a
/// message only ever reaches AMQP queues, so no MQTT client sees it; and no MQTT user
/// property can have this name, as MQTT strings hold no U+0000 [MQTT-1.5.4-2].
const AMQP_PROPERTIES: &str = "\u{0}amqp-properties";

/// The message a publish to the default exchange becomes: `to_message`'s, with the AMQP
/// properties kept whole (as a content header, in base64) for its AMQP consumer, which
/// gets them back untouched, as from RabbitMQ.
pub fn to_direct_message(
    properties: &BasicProperties,
    body: Bytes,
    origin: Arc<str>,
    now: Millis,
) -> Message {
    let mut message = to_message(String::new(), properties, body, origin, now);
    let mut header = BytesMut::new();
    midge_amqp_proto::encode_content(0, properties, &[], 0, &mut header);
    message.properties.user_properties =
        vec![(AMQP_PROPERTIES.to_owned(), Base64::encode_string(&header))];
    message
}

/// The AMQP properties `to_direct_message` kept, if `message` has them.
fn kept_properties(message: &Message) -> Option<BasicProperties> {
    let (_, kept) = message
        .properties
        .user_properties
        .iter()
        .find(|(k, _)| k == AMQP_PROPERTIES)?;
    let mut header = BytesMut::from(&Base64::decode_vec(kept).ok()?[..]);
    match midge_amqp_proto::decode_frame(&mut header, u32::MAX) {
        Ok(Some(frame)) => match frame.payload {
            FramePayload::Header(h) => Some(h.properties),
            _ => None,
        },
        _ => None,
    }
}

/// The properties an AMQP consumer sees for a routed message.
pub fn to_properties(message: &Message, qos: QoS, now: Millis) -> BasicProperties {
    if let Some(kept) = kept_properties(message) {
        return kept;
    }
    let p = &message.properties;
    let mut headers = FieldTable::default();
    // Signed byte, as RabbitMQ's MQTT plugin writes it. RabbitMQ takes a QoS 2 publish in
    // as QoS 1, and says 1 here.
    let publish_qos = (message.qos as i8).min(QoS::AtLeastOnce as i8);
    headers.insert(QOS_HEADER, FieldValue::I8(publish_qos));
    // RabbitMQ's MQTT plugin says whether the PUBLISH was a retransmission; midge settles
    // retransmissions before routing, so what it routes is never one.
    headers.insert(DUP_HEADER, FieldValue::Bool(false));
    for (k, v) in &p.user_properties {
        headers.insert(k.clone(), FieldValue::string(v));
    }
    let correlation = p
        .correlation_data
        .as_ref()
        .and_then(|c| std::str::from_utf8(c).ok())
        .filter(|c| c.len() <= 255);
    if let (Some(data), None) = (&p.correlation_data, correlation) {
        // Binary or long correlation data cannot be a short string: RabbitMQ's header.
        headers.insert("x-correlation-id", FieldValue::ByteArray(data.clone()));
    }
    BasicProperties {
        content_type: p.content_type.clone(),
        headers: Some(headers),
        delivery_mode: Some(if qos == QoS::AtMostOnce { 1 } else { 2 }),
        correlation_id: correlation.map(str::to_owned),
        reply_to: p.response_topic.as_deref().map(topic_to_routing_key),
        expiration: message
            .expires_at
            .map(|at| at.saturating_sub(now).to_string()),
        ..BasicProperties::default()
    }
}

/// `[amqp] mqtt_dots_as_separators`: a `.` in an MQTT topic name is a level separator.
pub fn dots_to_slashes(topic: &mut String) {
    if topic.contains('.') {
        *topic = topic.replace('.', "/");
    }
}

/// [`dots_to_slashes`] for a filter; a shared subscription's group name keeps its dots.
fn filter_dots_to_slashes(filter: &mut String) {
    if let Some(rest) = filter.strip_prefix("$share/")
        && let Some((group, inner)) = rest.split_once('/')
    {
        if inner.contains('.') {
            *filter = format!("$share/{group}/{}", inner.replace('.', "/"));
        }
        return;
    }
    dots_to_slashes(filter);
}

/// Rewrites the topic names and filters of an MQTT client's PUBLISH, SUBSCRIBE and
/// UNSUBSCRIBE with dots as separators, as RabbitMQ's MQTT plugin treats them (the
/// topic becomes a routing key there).
pub fn dots_as_separators(packet: &mut midge_proto::Packet) {
    use midge_proto::Packet;
    match packet {
        Packet::Publish(p) => dots_to_slashes(&mut p.topic),
        Packet::Subscribe(s) => {
            for (filter, _) in &mut s.filters {
                filter_dots_to_slashes(filter);
            }
        }
        Packet::Unsubscribe(u) => {
            for filter in &mut u.filters {
                filter_dots_to_slashes(filter);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_mapping_table() {
        assert_eq!(
            topic_to_routing_key("sensors/temp/room1"),
            "sensors.temp.room1"
        );
        assert_eq!(
            routing_key_to_topic("sensors.temp.room1").unwrap(),
            "sensors/temp/room1"
        );
        assert_eq!(
            binding_key_to_filter("home.*.light").unwrap(),
            "home/+/light"
        );
        assert_eq!(binding_key_to_filter("sensors.#").unwrap(), "sensors/#");
        assert_eq!(binding_key_to_filter("hello.mqtt").unwrap(), "hello/mqtt");
        assert_eq!(routing_key_to_topic("hello.amqp").unwrap(), "hello/amqp");
    }

    #[test]
    fn default_exchange_messages_keep_their_amqp_properties_whole() {
        let mut headers = FieldTable::default();
        headers.insert("n", FieldValue::I32(42));
        let props = BasicProperties {
            content_encoding: Some("gzip".into()),
            headers: Some(headers),
            message_id: Some("m-1".into()),
            timestamp: Some(1_700_000_000),
            priority: Some(3),
            expiration: Some("60000".into()),
            ..BasicProperties::default()
        };
        let m = to_direct_message(&props, Bytes::from_static(b"x"), Arc::from("o"), 1000);
        assert_eq!(m.expires_at, Some(61_000), "expiry is still enforced");
        assert_eq!(to_properties(&m, m.qos, 30_000), props);
        // An MQTT message with no kept properties is mapped as before.
        let plain = to_message("t".into(), &props, Bytes::new(), Arc::from("o"), 0);
        assert_eq!(to_properties(&plain, plain.qos, 0).message_id, None);
    }

    #[test]
    fn dots_as_separators_rewrites_topics_and_filters_but_not_share_groups() {
        let mut t = "hello.amqp".to_owned();
        dots_to_slashes(&mut t);
        assert_eq!(t, "hello/amqp");
        for (filter, want) in [
            ("home.+.light", "home/+/light"),
            ("sensors.#", "sensors/#"),
            ("a/b", "a/b"),
            ("$share/g.1/x.y", "$share/g.1/x/y"),
            ("$share/g.1/xy", "$share/g.1/xy"),
        ] {
            let mut f = filter.to_owned();
            filter_dots_to_slashes(&mut f);
            assert_eq!(f, want, "{filter}");
        }
    }

    #[test]
    fn keys_without_an_mqtt_equivalent_are_refused() {
        assert!(binding_key_to_filter("a.#.b").is_err());
        assert!(binding_key_to_filter("a*.b").is_err());
        assert!(binding_key_to_filter("").is_err());
        assert!(routing_key_to_topic("a.*").is_err());
        assert!(routing_key_to_topic("a.+").is_err());
        assert!(routing_key_to_topic("").is_err());
    }

    #[test]
    fn message_mapping_both_ways() {
        let mut headers = FieldTable::default();
        headers.insert("app", FieldValue::string("x"));
        headers.insert("n", FieldValue::I32(5));
        let props = BasicProperties {
            content_type: Some("application/json".into()),
            delivery_mode: Some(2),
            correlation_id: Some("c-1".into()),
            reply_to: Some("replies.client1".into()),
            expiration: Some("60000".into()),
            headers: Some(headers),
            ..BasicProperties::default()
        };
        let m = to_message(
            "a/b".into(),
            &props,
            Bytes::from_static(b"hi"),
            Arc::from("o"),
            1000,
        );
        assert_eq!(m.qos, QoS::AtLeastOnce);
        assert_eq!(m.expires_at, Some(61_000));
        assert_eq!(
            m.properties.response_topic.as_deref(),
            Some("replies/client1")
        );
        assert_eq!(m.properties.correlation_data.as_deref(), Some(&b"c-1"[..]));
        assert_eq!(
            m.properties.user_properties,
            vec![("app".into(), "x".into()), ("n".into(), "5".into())]
        );
        let back = to_properties(&m, m.qos, 31_000);
        assert_eq!(back.delivery_mode, Some(2));
        assert_eq!(back.expiration.as_deref(), Some("30000"));
        assert_eq!(back.reply_to.as_deref(), Some("replies.client1"));
        assert_eq!(back.correlation_id.as_deref(), Some("c-1"));
        let h = back.headers.clone().unwrap();
        assert_eq!(h.get(QOS_HEADER), Some(&FieldValue::I8(1)));
        assert_eq!(h.get(DUP_HEADER), Some(&FieldValue::Bool(false)));
        // QoS 2 is reported as 1, as RabbitMQ does; the dup header does not come back.
        let m2 = Message {
            qos: QoS::ExactlyOnce,
            ..m.clone()
        };
        let h2 = to_properties(&m2, QoS::ExactlyOnce, 31_000)
            .headers
            .unwrap();
        assert_eq!(h2.get(QOS_HEADER), Some(&FieldValue::I8(1)));
        let again = to_message("a/b".into(), &back, Bytes::new(), Arc::from("o"), 0);
        assert!(
            again
                .properties
                .user_properties
                .iter()
                .all(|(k, _)| k != DUP_HEADER)
        );
        // delivery_mode 1 (or none) is QoS 0; the header overrides the mode.
        let transient = BasicProperties::default();
        let m0 = to_message("t".into(), &transient, Bytes::new(), Arc::from(""), 0);
        assert_eq!(m0.qos, QoS::AtMostOnce);
        assert_eq!(
            to_properties(&m0, QoS::AtMostOnce, 0).delivery_mode,
            Some(1)
        );
    }
}
