//! Python paho-mqtt 2.x against midge: the scenario scripts in tests/interop/python/ drive
//! the broker and print what their clients observed; these tests assert on it.

use serde::Deserialize;

use crate::harness::TestBroker;
use crate::interop_util::{
    Mqtt, Persistent, PubSub, Received, Retained, Wills, check_persistent, check_pubsub,
    check_retained, check_will, hex, paho,
};

#[tokio::test]
async fn paho_v311_pubsub_at_qos_0_1_2_keeps_payloads_and_order() {
    let broker = TestBroker::start().await;
    let result: PubSub = paho("pubsub.py", &broker, Mqtt::V311).await;
    check_pubsub(&result, "paho 3.1.1");
    broker.shutdown().await;
}

#[tokio::test]
async fn paho_v5_pubsub_at_qos_0_1_2_keeps_payloads_and_order() {
    let broker = TestBroker::start().await;
    let result: PubSub = paho("pubsub.py", &broker, Mqtt::V5).await;
    check_pubsub(&result, "paho 5");
    broker.shutdown().await;
}

#[tokio::test]
async fn paho_v311_subscriber_gets_retained_messages_and_deletions_hold() {
    let broker = TestBroker::start().await;
    let result: Retained = paho("retained.py", &broker, Mqtt::V311).await;
    check_retained(&result, "paho 3.1.1");
    broker.shutdown().await;
}

#[tokio::test]
async fn paho_v5_subscriber_gets_retained_messages_and_deletions_hold() {
    let broker = TestBroker::start().await;
    let result: Retained = paho("retained.py", &broker, Mqtt::V5).await;
    check_retained(&result, "paho 5");
    broker.shutdown().await;
}

#[tokio::test]
async fn paho_v311_will_is_published_when_the_socket_is_reset_not_after_disconnect() {
    let broker = TestBroker::start().await;
    let result: Wills = paho("will.py", &broker, Mqtt::V311).await;
    check_will(&result, Mqtt::V311, "paho 3.1.1");
    broker.shutdown().await;
}

#[tokio::test]
async fn paho_v5_will_with_properties_is_published_when_the_socket_is_reset() {
    let broker = TestBroker::start().await;
    let result: Wills = paho("will.py", &broker, Mqtt::V5).await;
    check_will(&result, Mqtt::V5, "paho 5");
    broker.shutdown().await;
}

#[tokio::test]
async fn paho_v311_persistent_session_queues_qos1_while_offline() {
    let broker = TestBroker::start().await;
    let result: Persistent = paho("persistent.py", &broker, Mqtt::V311).await;
    check_persistent(&result, "paho 3.1.1 clean session 0");
    broker.shutdown().await;
}

#[tokio::test]
async fn paho_v5_session_expiry_queues_qos1_while_offline() {
    let broker = TestBroker::start().await;
    let result: Persistent = paho("persistent.py", &broker, Mqtt::V5).await;
    check_persistent(&result, "paho 5 session expiry");
    broker.shutdown().await;
}

#[derive(Debug, Deserialize)]
struct Properties {
    routed: Vec<Received>,
    expiring: Vec<Received>,
}

#[tokio::test]
async fn paho_v5_properties_subscription_ids_topic_alias_and_expiry_pass_through() {
    let broker = TestBroker::start().await;
    let result: Properties = paho("properties.py", &broker, Mqtt::V5).await;

    let [with_properties, alias_set, alias_used] = &result.routed[..] else {
        panic!("expected three messages, got {:?}", result.routed);
    };
    assert_eq!(with_properties.topic, "interop/props/a/x");
    assert_eq!(with_properties.payload, hex(br#"{"x": 1}"#));
    // Overlapping subscriptions (QoS 1 id 7, QoS 0 id 9): one copy at QoS 1 with both ids.
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

    // The publisher's alias 3 resolves, both when set and when used alone.
    for (message, payload) in [(alias_set, "alias set"), (alias_used, "alias used")] {
        assert_eq!(
            (message.topic.as_str(), message.payload.as_str()),
            ("interop/props/alias/x", hex(payload.as_bytes()).as_str())
        );
        assert_eq!(
            message.properties.subscription_identifiers.as_deref(),
            Some(&[7, 9][..])
        );
    }

    // Retained with expiry 10 s, fetched more than a second later: the remaining interval.
    let [expiring] = &result.expiring[..] else {
        panic!(
            "expected the expiring retained message, got {:?}",
            result.expiring
        );
    };
    assert_eq!(
        (expiring.topic.as_str(), expiring.retain),
        ("interop/props/expiring", true)
    );
    let remaining = expiring.properties.message_expiry_interval;
    assert!(
        remaining.is_some_and(|r| (1..=9).contains(&r)),
        "remaining expiry after a second: {remaining:?}"
    );
    broker.shutdown().await;
}

#[derive(Debug, Deserialize)]
struct Shared {
    count: usize,
    /// Member name -> numbers of the messages it got.
    received: std::collections::BTreeMap<String, Vec<usize>>,
}

fn check_shared(result: &Shared, client: &str) {
    let mut all: Vec<usize> = result.received.values().flatten().copied().collect();
    all.sort_unstable();
    let expected: Vec<usize> = (0..result.count).collect();
    assert_eq!(
        all, expected,
        "{client}: each message to exactly one member"
    );
    for (member, got) in &result.received {
        assert!(!got.is_empty(), "{client}: member {member} got no message");
    }
}

#[tokio::test]
async fn paho_v311_shared_subscription_splits_messages_between_members() {
    let broker = TestBroker::start().await;
    let result: Shared = paho("shared.py", &broker, Mqtt::V311).await;
    check_shared(&result, "paho 3.1.1");
    broker.shutdown().await;
}

#[tokio::test]
async fn paho_v5_shared_subscription_splits_messages_between_members() {
    let broker = TestBroker::start().await;
    let result: Shared = paho("shared.py", &broker, Mqtt::V5).await;
    check_shared(&result, "paho 5");
    broker.shutdown().await;
}
