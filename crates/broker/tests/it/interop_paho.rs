//! Python paho-mqtt 2.x against midge: the scenario scripts in tests/interop/python/ drive
//! the broker and print what their clients observed; these tests assert on it.

use crate::harness::TestBroker;
use crate::interop_util::{
    Mqtt, PahoProperties, Persistent, PubSub, Retained, Shared, Wills, check_paho_properties,
    check_persistent, check_pubsub, check_retained, check_shared, check_will, paho,
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

#[tokio::test]
async fn paho_v5_properties_subscription_ids_topic_alias_and_expiry_pass_through() {
    let broker = TestBroker::start().await;
    let result: PahoProperties = paho("properties.py", &broker, Mqtt::V5).await;
    check_paho_properties(&result);
    broker.shutdown().await;
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
