//! How `midge sub` prints a message: the payload (default), `topic payload` (-v), a
//! Mosquitto-style format string (-F), or one JSON object per line (--json).

use std::fmt::Write as _;

use base64ct::{Base64, Encoding};
use midge_client::midge_proto::Publish;
use serde_json::{Map, Value, json};

/// The default output: the payload, with `-v` the topic and a space before it. Like
/// mosquitto_sub, `-v` prints `(null)` for an empty payload.
pub fn plain(publish: &Publish, verbose: bool, newline: bool, out: &mut Vec<u8>) {
    if verbose {
        out.extend_from_slice(publish.topic.as_bytes());
        if publish.payload.is_empty() {
            out.extend_from_slice(b" (null)");
        } else {
            out.push(b' ');
            out.extend_from_slice(&publish.payload);
        }
    } else {
        out.extend_from_slice(&publish.payload);
    }
    if newline {
        out.push(b'\n');
    }
}

/// `-F`: `%t` topic, `%p` payload, `%q` QoS, `%r` retain flag (0/1), `%m` message id
/// (0 for QoS 0), `%l` payload length, `%x`/`%X` payload in hex, `%C` content type,
/// `%E` message expiry interval, `%F` payload format indicator, `%R` response topic,
/// `%S` subscription identifiers, `%P` user properties (`name:value`, space separated),
/// `%U` Unix time with nanoseconds, `%j` the `--json` object, `%%`; escapes `\n`, `\t`,
/// `\r`, `\\`, `\0`, `\a`, `\e`, `\v`. No newline is added. Anything else is printed as
/// written.
pub fn formatted(format: &str, publish: &Publish, out: &mut Vec<u8>) {
    let mut chars = format.chars();
    let mut text = String::new();
    while let Some(c) = chars.next() {
        match c {
            '%' => match chars.next() {
                Some('p') => {
                    out.extend_from_slice(text.as_bytes());
                    text.clear();
                    out.extend_from_slice(&publish.payload);
                }
                Some(spec) => field(spec, publish, &mut text),
                None => text.push('%'),
            },
            '\\' => match chars.next() {
                Some('n') => text.push('\n'),
                Some('t') => text.push('\t'),
                Some('r') => text.push('\r'),
                Some('\\') => text.push('\\'),
                Some('0') => text.push('\0'),
                Some('a') => text.push('\u{7}'),
                Some('e') => text.push('\u{1b}'),
                Some('v') => text.push('\u{b}'),
                Some(other) => {
                    text.push('\\');
                    text.push(other);
                }
                None => text.push('\\'),
            },
            other => text.push(other),
        }
    }
    out.extend_from_slice(text.as_bytes());
}

fn field(spec: char, publish: &Publish, text: &mut String) {
    let properties = &publish.properties;
    // Writing to a String cannot fail.
    let _ = match spec {
        't' => write!(text, "{}", publish.topic),
        'q' => write!(text, "{}", publish.qos as u8),
        'r' => write!(text, "{}", u8::from(publish.retain)),
        'm' => write!(text, "{}", publish.packet_id),
        'l' => write!(text, "{}", publish.payload.len()),
        'x' => publish
            .payload
            .iter()
            .try_for_each(|b| write!(text, "{b:02x}")),
        'X' => publish
            .payload
            .iter()
            .try_for_each(|b| write!(text, "{b:02X}")),
        'C' => write!(text, "{}", properties.content_type.as_deref().unwrap_or("")),
        'E' => match properties.message_expiry_interval {
            Some(seconds) => write!(text, "{seconds}"),
            None => Ok(()),
        },
        'F' => match properties.payload_format_indicator {
            Some(indicator) => write!(text, "{indicator}"),
            None => Ok(()),
        },
        'R' => write!(
            text,
            "{}",
            properties.response_topic.as_deref().unwrap_or("")
        ),
        'S' => {
            let ids: Vec<String> = properties
                .subscription_identifiers
                .iter()
                .map(u32::to_string)
                .collect();
            write!(text, "{}", ids.join(","))
        }
        'P' => {
            let pairs: Vec<String> = properties
                .user_properties
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect();
            write!(text, "{}", pairs.join(" "))
        }
        'U' => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            write!(text, "{}.{:09}", now.as_secs(), now.subsec_nanos())
        }
        'j' => write!(text, "{}", json_line(publish)),
        '%' => write!(text, "%"),
        other => write!(text, "%{other}"),
    };
}

/// `--json`: `topic`, `qos`, `retain`, then `payload` (a string) when the payload is
/// UTF-8, otherwise `payload_base64`; `properties` only when the message has any (MQTT 5):
/// `payload_format_indicator`, `message_expiry_interval`, `content_type`,
/// `response_topic`, `correlation_data` (or `correlation_data_base64`),
/// `user_properties` (a list of `[name, value]` pairs: names may repeat),
/// `subscription_identifiers`.
pub fn json_line(publish: &Publish) -> String {
    let mut object = Map::new();
    object.insert("topic".into(), json!(publish.topic));
    object.insert("qos".into(), json!(publish.qos as u8));
    object.insert("retain".into(), json!(publish.retain));
    binary(&mut object, "payload", &publish.payload);
    let p = &publish.properties;
    let mut properties = Map::new();
    if let Some(indicator) = p.payload_format_indicator {
        properties.insert("payload_format_indicator".into(), json!(indicator));
    }
    if let Some(seconds) = p.message_expiry_interval {
        properties.insert("message_expiry_interval".into(), json!(seconds));
    }
    if let Some(content_type) = &p.content_type {
        properties.insert("content_type".into(), json!(content_type));
    }
    if let Some(topic) = &p.response_topic {
        properties.insert("response_topic".into(), json!(topic));
    }
    if let Some(data) = &p.correlation_data {
        binary(&mut properties, "correlation_data", data);
    }
    if !p.user_properties.is_empty() {
        let pairs: Vec<Value> = p
            .user_properties
            .iter()
            .map(|(k, v)| json!([k, v]))
            .collect();
        properties.insert("user_properties".into(), Value::Array(pairs));
    }
    if !p.subscription_identifiers.is_empty() {
        properties.insert(
            "subscription_identifiers".into(),
            json!(p.subscription_identifiers),
        );
    }
    if !properties.is_empty() {
        object.insert("properties".into(), Value::Object(properties));
    }
    Value::Object(object).to_string()
}

/// `name` as a string when `data` is UTF-8, else `name_base64` (standard alphabet, padded).
fn binary(object: &mut Map<String, Value>, name: &str, data: &[u8]) {
    match std::str::from_utf8(data) {
        Ok(text) => object.insert(name.to_owned(), json!(text)),
        Err(_) => object.insert(format!("{name}_base64"), json!(Base64::encode_string(data))),
    };
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use midge_client::midge_proto::{PublishProperties, QoS};

    use super::*;

    fn message(payload: &'static [u8]) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: 42,
            properties: PublishProperties::default(),
            payload: Bytes::from_static(payload),
        }
    }

    fn format(spec: &str, publish: &Publish) -> String {
        let mut out = Vec::new();
        formatted(spec, publish, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn format_fields_and_escapes() {
        let m = message(b"hi");
        assert_eq!(format("%t %p %q %r %m %l %%\\n", &m), "a/b hi 1 1 42 2 %\n");
        assert_eq!(
            format("%x|%X|\\t|%z", &message(b"\xab\x01")),
            "ab01|AB01|\t|%z"
        );
    }

    #[test]
    fn format_properties() {
        let mut m = message(b"");
        m.properties.content_type = Some("text/plain".into());
        m.properties.message_expiry_interval = Some(30);
        m.properties.user_properties = vec![("k".into(), "v".into()), ("k".into(), "w".into())];
        m.properties.subscription_identifiers = vec![3, 9];
        assert_eq!(format("%C %E %P %S", &m), "text/plain 30 k:v k:w 3,9");
    }

    #[test]
    fn verbose_prints_topic_and_null_for_empty_payloads() {
        let mut out = Vec::new();
        plain(&message(b"x"), true, true, &mut out);
        plain(&message(b""), true, true, &mut out);
        plain(&message(b"y"), false, false, &mut out);
        assert_eq!(out, b"a/b x\na/b (null)\ny");
    }

    #[test]
    fn json_uses_base64_only_for_binary_payloads() {
        let text: Value = serde_json::from_str(&json_line(&message(b"hello"))).unwrap();
        assert_eq!(
            text,
            json!({"topic": "a/b", "qos": 1, "retain": true, "payload": "hello"})
        );
        let mut binary = message(b"\xff\x00");
        binary.properties.user_properties = vec![("k".into(), "v".into())];
        binary.properties.message_expiry_interval = Some(60);
        let value: Value = serde_json::from_str(&json_line(&binary)).unwrap();
        assert_eq!(value["payload_base64"], "/wA=");
        assert!(value.get("payload").is_none());
        assert_eq!(value["properties"]["user_properties"], json!([["k", "v"]]));
        assert_eq!(value["properties"]["message_expiry_interval"], 60);
    }
}
