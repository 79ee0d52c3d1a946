//! Overlapping subscriptions of one client: one copy, at the highest granted QoS, carrying
//! every matching subscription identifier.

use rumqttc::v5::mqttbytes::v5::{Filter, SubscribeReasonCode};

use crate::client::{V3, V5, text};
use crate::harness::{TestBroker, qos4, qos5};

#[tokio::test]
async fn v5_overlapping_subscriptions_deliver_one_copy_at_the_highest_qos_with_every_identifier() {
    let broker = TestBroker::start().await;
    let mut subscriber = V5::connect(&broker, "sub").await;
    for (filter, qos, id) in [
        ("ov/+", 0, Some(1)),
        ("ov/#", 2, Some(2)),
        ("ov/a", 1, None),
        ("+/a", 0, Some(300)),
    ] {
        let codes = subscriber
            .subscribe_filter(Filter::new(filter, qos5(qos)), id)
            .await;
        assert_eq!(codes, [SubscribeReasonCode::Success(qos5(qos))]);
    }
    subscriber.subscribe_ok("fence", 0).await;
    let mut publisher = V3::connect(&broker, "pub").await;
    publisher.publish("ov/a", 2, false, "one copy").await;
    publisher.publish("fence", 0, false, "fence").await;

    let publish = subscriber.next_publish().await;
    assert_eq!(text(&publish.payload), "one copy");
    // [MQTT-3.3.4-2] one copy at the highest QoS of the matching subscriptions.
    assert_eq!(publish.qos, qos5(2));
    // [MQTT-3.3.4-3] with the identifiers of all of them, in any order.
    let mut ids = publish
        .properties
        .expect("PUBLISH properties")
        .subscription_identifiers;
    ids.sort();
    assert_eq!(ids, [1, 2, 300]);
    let next = subscriber.next_publish().await;
    assert_eq!(text(&next.payload), "fence", "a second copy was delivered");

    // A topic only one subscription matches carries only its identifier.
    publisher.publish("ov/b/c", 1, false, "deep").await;
    let publish = subscriber.next_publish().await;
    assert_eq!(text(&publish.payload), "deep");
    assert_eq!(publish.properties.unwrap().subscription_identifiers, [2]);
    assert_eq!(publish.qos, qos5(1), "capped by the publish QoS");
    broker.shutdown().await;
}

#[tokio::test]
async fn v3_overlapping_subscriptions_deliver_one_copy_at_the_highest_qos() {
    let broker = TestBroker::start().await;
    let mut subscriber = V3::connect(&broker, "sub").await;
    subscriber.subscribe_ok("ov/#", 1).await;
    subscriber.subscribe_ok("ov/+", 0).await;
    subscriber.subscribe_ok("#", 0).await;
    let mut publisher = V3::connect(&broker, "pub").await;
    publisher.publish("ov/a", 2, false, "one copy").await;
    publisher.publish("fence", 0, false, "fence").await;

    let publish = subscriber.next_publish().await;
    assert_eq!(
        (text(&publish.payload).as_str(), publish.qos),
        ("one copy", qos4(1))
    );
    let next = subscriber.next_publish().await;
    assert_eq!(text(&next.payload), "fence", "a second copy was delivered");
    broker.shutdown().await;
}
