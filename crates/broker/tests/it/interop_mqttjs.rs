//! mqtt.js 5 (node) against midge: the scenario scripts in tests/interop/js/ drive the
//! broker and print what their clients observed; these tests assert on it. The scripts
//! report in the same shape as the paho ones, so the checks are shared.

use crate::harness::TestBroker;
use crate::interop_util::{
    Mqtt, MqttJsProperties, Persistent, PubSub, Retained, Wills, check_mqttjs_properties,
    check_persistent, check_pubsub, check_retained, check_will, mqttjs,
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

#[tokio::test]
async fn mqttjs_v5_properties_pass_through_and_broker_topic_aliases_resolve() {
    let broker = TestBroker::start().await;
    let result: MqttJsProperties = mqttjs("properties.mjs", &broker, Mqtt::V5).await;
    check_mqttjs_properties(&result);
    broker.shutdown().await;
}
