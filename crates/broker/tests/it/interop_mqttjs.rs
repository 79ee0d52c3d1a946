//! mqtt.js 5 (node) against midge: the scenario scripts in tests/interop/js/ drive the
//! broker and print what their clients observed; these tests assert on it. The scripts
//! report in the same shape as the paho ones, so the checks are shared.

use serde::Deserialize;

use crate::harness::TestBroker;
use crate::interop_util::{
    Mqtt, Persistent, PubSub, Received, Retained, Wills, check_persistent, check_pubsub,
    check_retained, check_will, hex, mqttjs,
};

#[tokio::test]
async fn mqttjs_v311_pubsub_at_qos_0_1_2_keeps_payloads_and_order() {
    let broker = TestBroker::start().await;
    let result: PubSub = mqttjs("pubsub.mjs", &broker, Mqtt::V311).await;
    check_pubsub(&result, "mqtt.js 3.1.1");
    broker.shutdown().await;
}

#[tokio::test]
async fn mqttjs_v5_pubsub_at_qos_0_1_2_keeps_payloads_and_order() {
    let broker = TestBroker::start().await;
    let result: PubSub = mqttjs("pubsub.mjs", &broker, Mqtt::V5).await;
    check_pubsub(&result, "mqtt.js 5");
    broker.shutdown().await;
}

#[tokio::test]
async fn mqttjs_v311_subscriber_gets_retained_messages_and_deletions_hold() {
    let broker = TestBroker::start().await;
    let result: Retained = mqttjs("retained.mjs", &broker, Mqtt::V311).await;
    check_retained(&result, "mqtt.js 3.1.1");
    broker.shutdown().await;
}

#[tokio::test]
async fn mqttjs_v5_subscriber_gets_retained_messages_and_deletions_hold() {
    let broker = TestBroker::start().await;
    let result: Retained = mqttjs("retained.mjs", &broker, Mqtt::V5).await;
    check_retained(&result, "mqtt.js 5");
    broker.shutdown().await;
}

#[tokio::test]
async fn mqttjs_v311_will_is_published_when_the_socket_is_reset_not_after_disconnect() {
    let broker = TestBroker::start().await;
    let result: Wills = mqttjs("will.mjs", &broker, Mqtt::V311).await;
    check_will(&result, Mqtt::V311, "mqtt.js 3.1.1");
    broker.shutdown().await;
}

#[tokio::test]
async fn mqttjs_v5_will_with_properties_is_published_when_the_socket_is_reset() {
    let broker = TestBroker::start().await;
    let result: Wills = mqttjs("will.mjs", &broker, Mqtt::V5).await;
    check_will(&result, Mqtt::V5, "mqtt.js 5");
    broker.shutdown().await;
}

#[tokio::test]
async fn mqttjs_v311_persistent_session_queues_qos1_while_offline() {
    let broker = TestBroker::start().await;
    let result: Persistent = mqttjs("persistent.mjs", &broker, Mqtt::V311).await;
    check_persistent(&result, "mqtt.js 3.1.1 clean session 0");
    broker.shutdown().await;
}

#[tokio::test]
async fn mqttjs_v5_session_expiry_queues_qos1_while_offline() {
    let broker = TestBroker::start().await;
    let result: Persistent = mqttjs("persistent.mjs", &broker, Mqtt::V5).await;
    check_persistent(&result, "mqtt.js 5 session expiry");
    broker.shutdown().await;
}

#[derive(Debug, Deserialize)]
struct Properties {
    routed: Vec<Received>,
    wire_topics: Vec<String>,
}

#[tokio::test]
async fn mqttjs_v5_properties_pass_through_and_broker_topic_aliases_resolve() {
    let broker = TestBroker::start().await;
    let result: Properties = mqttjs("properties.mjs", &broker, Mqtt::V5).await;

    let [with_properties, first, second] = &result.routed[..] else {
        panic!("expected three messages, got {:?}", result.routed);
    };
    assert_eq!(with_properties.topic, "interop/props/a/x");
    assert_eq!(with_properties.payload, hex(br#"{"x": 1}"#));
    assert_eq!(with_properties.qos, 1);
    let p = &with_properties.properties;
    assert_eq!(
        p.user_properties.as_deref(),
        Some(
            &[
                ("k".to_owned(), "v1".to_owned()),
                ("k".to_owned(), "v2".to_owned()),
                ("unicode".to_owned(), "\u{fc}\u{2713}".to_owned()),
            ][..]
        ),
        "user properties in order, repeats kept"
    );
    assert_eq!(p.response_topic.as_deref(), Some("interop/reply"));
    assert_eq!(p.correlation_data.as_deref(), Some("0001636f7272ff"));
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.payload_format_indicator, Some(1));
    let expiry = p.message_expiry_interval.expect("message expiry forwarded");
    assert!((118..=120).contains(&expiry), "remaining expiry {expiry}");
    assert_eq!(p.subscription_identifiers.as_deref(), Some(&[7, 9][..]));

    // The subscriber allowed 5 aliases: midge assigns them, and mqtt.js maps each back to
    // its topic, including the second message on a topic, sent with the alias alone.
    assert!(
        with_properties.properties.topic_alias.is_some(),
        "midge used a topic alias"
    );
    for (message, payload) in [(first, "first"), (second, "second")] {
        assert_eq!(
            (message.topic.as_str(), message.payload.as_str()),
            ("interop/props/b/x", hex(payload.as_bytes()).as_str())
        );
    }
    assert_eq!(first.properties.topic_alias, second.properties.topic_alias);
    assert_ne!(
        first.properties.topic_alias, with_properties.properties.topic_alias,
        "two topics, two aliases"
    );
    assert_eq!(
        result.wire_topics,
        ["interop/props/a/x", "interop/props/b/x", ""],
        "the repeated topic went out as its alias alone"
    );
    broker.shutdown().await;
}
