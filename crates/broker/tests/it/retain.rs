//! Retained messages: one per topic, an empty payload deletes, sent on subscribe with
//! RETAIN set; v5 retain handling and retain-as-published.

use rumqttc::v5::mqttbytes::v5::{self as mqtt5, Filter, RetainForwardRule};

use crate::client::{V3, V5, text};
use crate::harness::{Raw, TestBroker, V5Packet, qos4, qos5, v5_connect};

#[tokio::test]
async fn retained_messages_are_kept_per_topic_and_sent_on_subscribe_with_retain_set() {
    let broker = TestBroker::start().await;
    let mut publisher = V3::connect(&broker, "pub").await;
    publisher.publish("r/a", 1, true, "first").await;
    publisher.publish("r/a", 2, true, "second").await; // replaces "first"
    publisher.publish("r/b", 0, true, "b").await;
    publisher.publish("r/c", 1, false, "not retained").await;
    assert_eq!(broker.broker().retained.len(), 2);

    let mut subscriber = V3::connect(&broker, "sub").await;
    subscriber.subscribe_ok("r/#", 1).await;
    let mut got = [
        subscriber.next_publish().await,
        subscriber.next_publish().await,
    ];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    let seen: Vec<_> = got
        .iter()
        .map(|p| (p.topic.as_str(), text(&p.payload), p.qos, p.retain))
        .collect();
    // [MQTT-3.3.1-8] RETAIN set on messages sent because of a new subscription; QoS is
    // the lower of the stored message's and the subscription's.
    assert_eq!(
        seen,
        [
            ("r/a", "second".to_owned(), qos4(1), true),
            ("r/b", "b".to_owned(), qos4(0), true),
        ]
    );

    // A retained message to an existing subscription is a normal delivery: RETAIN 0 for
    // 3.1.1 [MQTT-3.3.1-9].
    publisher.publish("r/a", 1, true, "live").await;
    let live = subscriber.next_publish().await;
    assert_eq!((text(&live.payload).as_str(), live.retain), ("live", false));
    broker.shutdown().await;
}

#[tokio::test]
async fn empty_retained_payload_deletes_the_retained_message() {
    let broker = TestBroker::start().await;
    let mut publisher = V3::connect(&broker, "pub").await;
    publisher.publish("del/a", 1, true, "doomed").await;
    publisher.publish("del/b", 1, true, "kept").await;
    publisher.publish("del/a", 1, true, "").await; // [MQTT-3.3.1-10]
    assert_eq!(broker.broker().retained.len(), 1);

    let mut subscriber = V3::connect(&broker, "sub").await;
    subscriber.subscribe_ok("del/#", 1).await;
    subscriber.subscribe_ok("fence", 0).await;
    publisher.publish("fence", 0, false, "fence").await;
    let kept = subscriber.next_publish().await;
    assert_eq!(
        (kept.topic.as_str(), text(&kept.payload).as_str()),
        ("del/b", "kept")
    );
    assert_eq!(text(&subscriber.next_publish().await.payload), "fence");
    broker.shutdown().await;
}

/// SUBSCRIBE with retain handling `rule`, then returns the retained payloads sent for it:
/// everything between SUBACK and the PINGRESP of a ping sent after it.
async fn retained_after_subscribe(
    raw: &mut Raw,
    packet_id: u16,
    rule: RetainForwardRule,
) -> Vec<String> {
    let filter = Filter {
        retain_forward_rule: rule,
        ..Filter::new("rh/#", qos5(1))
    };
    raw.subscribe_v5(packet_id, filter, None).await;
    raw.send(&[0xC0, 0x00]).await; // PINGREQ
    let mut payloads = Vec::new();
    loop {
        match raw.recv_v5().await {
            V5Packet::PingResp(_) => return payloads,
            V5Packet::Publish(p) => {
                assert!(p.retain, "sent at subscribe, so RETAIN is set");
                let id = p.pkid.to_be_bytes();
                raw.send(&[0x40, 0x02, id[0], id[1]]).await; // PUBACK
                payloads.push(text(&p.payload));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn v5_retain_handling_0_sends_at_every_subscribe() {
    let broker = TestBroker::start().await;
    V3::connect(&broker, "pub")
        .await
        .publish("rh/x", 1, true, "kept")
        .await;
    let (mut raw, _) = broker.raw_v5(v5_connect("rh0")).await;
    let rule = RetainForwardRule::OnEverySubscribe;
    assert_eq!(
        retained_after_subscribe(&mut raw, 1, rule.clone()).await,
        ["kept"]
    );
    // Subscribing again to the same filter sends it again [MQTT-3.3.1-9] (v5).
    assert_eq!(retained_after_subscribe(&mut raw, 2, rule).await, ["kept"]);
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_retain_handling_1_sends_only_for_a_new_subscription() {
    let broker = TestBroker::start().await;
    V3::connect(&broker, "pub")
        .await
        .publish("rh/x", 1, true, "kept")
        .await;
    let (mut raw, _) = broker.raw_v5(v5_connect("rh1")).await;
    let rule = RetainForwardRule::OnNewSubscribe;
    assert_eq!(
        retained_after_subscribe(&mut raw, 1, rule.clone()).await,
        ["kept"]
    );
    // [MQTT-3.3.1-10] (v5) the subscription exists now: nothing is sent.
    assert!(retained_after_subscribe(&mut raw, 2, rule).await.is_empty());
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_retain_handling_2_never_sends_at_subscribe() {
    let broker = TestBroker::start().await;
    V3::connect(&broker, "pub")
        .await
        .publish("rh/x", 1, true, "kept")
        .await;
    let (mut raw, _) = broker.raw_v5(v5_connect("rh2")).await;
    // [MQTT-3.3.1-11] (v5)
    assert!(
        retained_after_subscribe(&mut raw, 1, RetainForwardRule::Never)
            .await
            .is_empty()
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_retain_as_published_keeps_the_flag_on_live_deliveries() {
    let broker = TestBroker::start().await;
    let mut keeps = V5::connect(&broker, "rap").await;
    let filter = Filter {
        preserve_retain: true,
        ..Filter::new("rap", qos5(1))
    };
    keeps.subscribe_filter(filter, None).await;
    let mut clears = V5::connect(&broker, "plain").await;
    clears.subscribe_ok("rap", 1).await;

    let mut publisher = V5::connect(&broker, "pub").await;
    publisher.publish("rap", 1, true, "retained").await;
    publisher.publish("rap", 1, false, "not retained").await;
    // [MQTT-3.3.1-13] (v5) retain as published: the publisher's flag.
    let (a, b) = (keeps.next_publish().await, keeps.next_publish().await);
    assert_eq!((a.retain, b.retain), (true, false));
    // [MQTT-3.3.1-12] (v5) otherwise RETAIN is 0 on live deliveries.
    let (a, b) = (clears.next_publish().await, clears.next_publish().await);
    assert_eq!((a.retain, b.retain), (false, false));
    broker.shutdown().await;
}

#[tokio::test]
async fn retain_unavailable_is_advertised_and_a_retained_publish_is_refused() {
    let broker = TestBroker::start_with(|c| c.mqtt.retain_available = false).await;
    let (mut raw, ack) = broker.raw_v5(v5_connect("noretain")).await;
    assert_eq!(ack.properties.unwrap().retain_available, Some(0));
    let mut publish = mqtt5::Publish::new("r", qos5(0), "x", None);
    publish.retain = true;
    raw.send_v5(V5Packet::Publish(publish)).await;
    raw.expect_disconnect(0x9A).await; // Retain not supported (v5 3.3.1.3)
    assert_eq!(broker.broker().retained.len(), 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn deleting_a_retained_message_is_still_delivered_to_current_subscribers() {
    let broker = TestBroker::start().await;
    let mut subscriber = V3::connect(&broker, "sub").await;
    subscriber.subscribe_ok("gone", 1).await;
    let mut publisher = V3::connect(&broker, "pub").await;
    publisher.publish("gone", 1, true, "value").await;
    publisher.publish("gone", 1, true, "").await;
    assert_eq!(text(&subscriber.next_publish().await.payload), "value");
    // "processed as normal" (3.1.1 [MQTT-3.3.1-10]): the empty message is forwarded.
    let empty = subscriber.next_publish().await;
    assert!(empty.payload.is_empty());
    assert_eq!(broker.broker().retained.len(), 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn retained_will_is_refused_at_connect_when_retain_is_unavailable() {
    let broker = TestBroker::start_with(|c| c.mqtt.retain_available = false).await;
    let mut raw = broker.raw().await;
    let will = mqtt5::LastWill::new("w", "x", qos5(0), true, None);
    raw.send_v5(V5Packet::Connect(v5_connect("will"), Some(will), None))
        .await;
    match raw.recv_v5().await {
        V5Packet::ConnAck(ack) => {
            assert_eq!(ack.code, mqtt5::ConnectReturnCode::RetainNotSupported) // 0x9A
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    broker.shutdown().await;
}
