//! MQTT 5 features: limits advertised in CONNACK, message expiry, topic aliases, receive
//! maximum and maximum packet size both ways, subscription identifiers, no-local,
//! properties passed through, response information, reason codes.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{self as mqtt5, Filter, PubAckReason, PublishProperties};

use crate::client::{V3, V5, text};
use crate::harness::{
    Raw, TestBroker, V5Packet, connect_properties, publish_properties, qos5, v5_connect,
    v5_connect_with,
};

/// A raw v5 client with `properties` in its CONNECT.
async fn raw_v5_props(
    broker: &TestBroker,
    client_id: &str,
    properties: mqtt5::ConnectProperties,
) -> (Raw, mqtt5::ConnAck) {
    broker
        .raw_v5(v5_connect_with(client_id, true, properties))
        .await
}

fn puback(raw_ack: V5Packet) -> mqtt5::PubAck {
    match raw_ack {
        V5Packet::PubAck(ack) => ack,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn connack_advertises_the_broker_limits() {
    let broker = TestBroker::start_with(|c| {
        c.mqtt.max_inflight = 10;
        c.mqtt.max_packet_size = 2000;
        c.mqtt.topic_alias_maximum = 5;
    })
    .await;
    let (_raw, ack) = broker.raw_v5(v5_connect("limits")).await;
    let p = ack.properties.expect("CONNACK properties");
    assert_eq!(p.receive_max, Some(10));
    assert_eq!(p.max_packet_size, Some(2000));
    assert_eq!(p.topic_alias_max, Some(5));
    assert_eq!(p.retain_available, None, "absent means available");
    broker.shutdown().await;
}

#[tokio::test]
async fn stale_message_is_not_delivered_and_remaining_expiry_is_forwarded() {
    let broker = TestBroker::start().await;
    let expiry = mqtt5::ConnectProperties {
        session_expiry_interval: Some(60),
        ..connect_properties()
    };
    let (mut sub, _) = broker
        .raw_v5(v5_connect_with("offline", true, expiry.clone()))
        .await;
    sub.subscribe_v5(1, Filter::new("exp/#", qos5(1)), None)
        .await;
    sub.send(&[0xE0, 0x00]).await; // DISCONNECT: the session waits, with its queue
    sub.expect_closed().await;

    let mut publisher = V5::connect(&broker, "pub").await;
    let expiring = |secs| PublishProperties {
        message_expiry_interval: Some(secs),
        ..publish_properties()
    };
    publisher
        .publish_with("exp/a", 1, false, "stale", expiring(1))
        .await;
    publisher
        .publish_with("exp/b", 1, false, "fresh", expiring(60))
        .await;
    publisher.publish("exp/c", 1, false, "forever").await;
    publisher
        .publish_with("exp/r", 1, true, "stale retained", expiring(1))
        .await;
    // Expiry is wall-clock time: nothing to await but the clock.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let (mut sub, ack) = broker
        .raw_v5(v5_connect_with("offline", false, expiry))
        .await;
    assert!(ack.session_present);
    // [MQTT-3.3.2-5] "stale" expired while queued: the first delivery is "fresh".
    let fresh = sub.recv_v5_publish().await;
    assert_eq!(&fresh.payload[..], b"fresh");
    // [MQTT-3.3.2-6] the interval forwarded is what is left of the 60 s.
    let left = fresh.properties.unwrap().message_expiry_interval.unwrap();
    assert!((57..=59).contains(&left), "forwarded expiry {left}");
    let id = fresh.pkid.to_be_bytes();
    sub.send(&[0x40, 0x02, id[0], id[1]]).await;
    let forever = sub.recv_v5_publish().await;
    assert_eq!(&forever.payload[..], b"forever");
    assert_eq!(
        forever.properties.and_then(|p| p.message_expiry_interval),
        None
    );
    let id = forever.pkid.to_be_bytes();
    sub.send(&[0x40, 0x02, id[0], id[1]]).await;
    sub.ping_fence().await;

    // An expired retained message is not sent to a new subscriber either.
    let (mut late, _) = broker.raw_v5(v5_connect("late")).await;
    late.subscribe_v5(1, Filter::new("exp/r", qos5(1)), None)
        .await;
    late.ping_fence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn topic_alias_from_the_client_stands_for_its_topic() {
    let broker = TestBroker::start().await;
    let mut subscriber = V3::connect(&broker, "sub").await;
    subscriber.subscribe_ok("al/#", 1).await;
    let mut publisher = V5::connect(&broker, "pub").await;
    let alias = |n| PublishProperties {
        topic_alias: Some(n),
        ..publish_properties()
    };
    publisher
        .publish_with("al/t", 1, false, "set", alias(1))
        .await;
    publisher.publish_with("", 1, false, "use", alias(1)).await;
    // An alias may be pointed at another topic (v5 3.3.2.3.4).
    publisher
        .publish_with("al/u", 1, false, "reset", alias(1))
        .await;
    publisher
        .publish_with("", 1, false, "reuse", alias(1))
        .await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let p = subscriber.next_publish().await;
        got.push(format!("{} {}", p.topic, text(&p.payload)));
    }
    assert_eq!(got, ["al/t set", "al/t use", "al/u reset", "al/u reuse"]);
    broker.shutdown().await;
}

#[tokio::test]
async fn topic_alias_above_the_advertised_maximum_is_refused_with_0x94() {
    let broker = TestBroker::start_with(|c| c.mqtt.topic_alias_maximum = 2).await;
    let (mut raw, ack) = broker.raw_v5(v5_connect("alias")).await;
    assert_eq!(ack.properties.unwrap().topic_alias_max, Some(2));
    raw.send(&[
        0x30, 0x0B, // PUBLISH QoS 0, remaining length 11
        0x00, 0x04, b'a', b'l', b'/', b'x', // topic "al/x"
        0x03, // properties length 3
        0x23, 0x00, 0x03, // topic alias 3, above the maximum of 2 [MQTT-3.3.2-9]
        b'p', // payload
    ])
    .await;
    raw.expect_disconnect(0x94).await; // Topic Alias invalid
    broker.shutdown().await;
}

#[tokio::test]
async fn unknown_topic_alias_is_a_protocol_error() {
    let broker = TestBroker::start().await;
    let (mut raw, _) = broker.raw_v5(v5_connect("alias")).await;
    raw.send(&[
        0x30, 0x07, // PUBLISH QoS 0, remaining length 7
        0x00, 0x00, // empty topic: the alias must stand for one
        0x03, // properties length 3
        0x23, 0x00, 0x01, // topic alias 1, never set on this connection
        b'p', // payload
    ])
    .await;
    raw.expect_disconnect(0x82).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn broker_uses_topic_aliases_up_to_the_client_maximum() {
    let broker = TestBroker::start().await;
    let (mut aliased, _) = raw_v5_props(
        &broker,
        "aliased",
        mqtt5::ConnectProperties {
            topic_alias_max: Some(2),
            ..connect_properties()
        },
    )
    .await;
    aliased
        .subscribe_v5(1, Filter::new("ta/#", qos5(0)), None)
        .await;
    let (mut plain, _) = broker.raw_v5(v5_connect("plain")).await;
    plain
        .subscribe_v5(1, Filter::new("ta/#", qos5(0)), None)
        .await;

    let mut publisher = V3::connect(&broker, "pub").await;
    for topic in ["ta/a", "ta/b", "ta/c", "ta/a", "ta/b", "ta/c"] {
        publisher.publish(topic, 0, false, topic.to_owned()).await;
    }
    let mut seen = Vec::new();
    for _ in 0..6 {
        let p = aliased.recv_v5_publish().await;
        let alias = p.properties.and_then(|p| p.topic_alias);
        seen.push((
            String::from_utf8(p.topic.to_vec()).unwrap(),
            alias,
            text(&p.payload),
        ));
    }
    let expected = [
        ("ta/a", Some(1), "ta/a"), // new alias, sent with the topic
        ("ta/b", Some(2), "ta/b"),
        ("ta/c", None, "ta/c"), // the client's maximum of 2 is used up
        ("", Some(1), "ta/a"),  // known alias: topic left empty
        ("", Some(2), "ta/b"),
        ("ta/c", None, "ta/c"),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(t, a, p)| ((*t).to_owned(), *a, (*p).to_owned()))
        .collect();
    assert_eq!(seen, expected);
    // A client that accepts no aliases gets none [MQTT-3.3.2-11].
    for _ in 0..6 {
        let p = plain.recv_v5_publish().await;
        assert!(!p.topic.is_empty());
        assert_eq!(p.properties.and_then(|p| p.topic_alias), None);
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn broker_never_exceeds_the_client_receive_maximum() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = raw_v5_props(
        &broker,
        "slow",
        mqtt5::ConnectProperties {
            receive_maximum: Some(2),
            ..connect_properties()
        },
    )
    .await;
    sub.subscribe_v5(1, Filter::new("rm", qos5(1)), None).await;
    let mut publisher = V3::connect(&broker, "pub").await;
    for n in 1..=5 {
        // Each PUBACK means the message is queued for the subscriber.
        publisher.publish("rm", 1, false, format!("m{n}")).await;
    }
    let m1 = sub.recv_v5_publish().await;
    let m2 = sub.recv_v5_publish().await;
    // [MQTT-3.3.4-9] two unacknowledged: the third waits. The PINGRESP comes next.
    sub.ping_fence().await;
    let id = m1.pkid.to_be_bytes();
    sub.send(&[0x40, 0x02, id[0], id[1]]).await; // PUBACK m1
    let m3 = sub.recv_v5_publish().await;
    sub.ping_fence().await;
    for m in [&m2, &m3] {
        let id = m.pkid.to_be_bytes();
        sub.send(&[0x40, 0x02, id[0], id[1]]).await;
    }
    let m4 = sub.recv_v5_publish().await;
    let m5 = sub.recv_v5_publish().await;
    let order: Vec<_> = [m1, m2, m3, m4, m5]
        .iter()
        .map(|m| text(&m.payload))
        .collect();
    assert_eq!(order, ["m1", "m2", "m3", "m4", "m5"]);
    broker.shutdown().await;
}

#[tokio::test]
async fn client_exceeding_the_broker_receive_maximum_with_qos2_gets_0x93() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_inflight = 2).await;
    let (mut raw, ack) = broker.raw_v5(v5_connect("greedy")).await;
    assert_eq!(ack.properties.unwrap().receive_max, Some(2));
    for id in 1..=3u8 {
        raw.send(&[
            0x34, 0x06, // PUBLISH QoS 2, remaining length 6
            0x00, 0x01, b't', // topic "t"
            0x00, id,   // packet id
            0x00, // properties length 0
        ])
        .await;
        if id < 3 {
            // PUBREC, no PUBREL follows: the id stays unacknowledged.
            assert!(matches!(raw.recv_v5().await, V5Packet::PubRec(_)));
        }
    }
    // [MQTT-3.3.4-7] a third unacknowledged QoS 2 PUBLISH exceeds Receive Maximum 2.
    raw.expect_disconnect(0x93).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn packet_above_the_broker_maximum_packet_size_gets_0x95() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_packet_size = 100).await;
    let (mut raw, ack) = broker.raw_v5(v5_connect("big")).await;
    assert_eq!(ack.properties.unwrap().max_packet_size, Some(100));
    let publish = mqtt5::Publish::new("t", qos5(0), vec![b'x'; 120], None);
    raw.send_v5(V5Packet::Publish(publish)).await;
    raw.expect_disconnect(0x95).await; // Packet too large
    broker.shutdown().await;
}

#[tokio::test]
async fn message_too_big_for_one_client_is_dropped_for_that_client_only() {
    let broker = TestBroker::start().await;
    let (mut small, _) = raw_v5_props(
        &broker,
        "small",
        mqtt5::ConnectProperties {
            max_packet_size: Some(64),
            ..connect_properties()
        },
    )
    .await;
    small
        .subscribe_v5(1, Filter::new("size/#", qos5(1)), None)
        .await;
    let mut roomy = V5::connect(&broker, "roomy").await;
    roomy.subscribe_ok("size/#", 1).await;

    let mut publisher = V3::connect(&broker, "pub").await;
    publisher
        .publish("size/big", 1, false, vec![b'x'; 100])
        .await;
    publisher.publish("size/small", 1, false, "fits").await;
    // [MQTT-3.1.2-25] not sent to the client that cannot take it; its next one is.
    let next = small.recv_v5_publish().await;
    assert_eq!(&next.payload[..], b"fits");
    assert_eq!(roomy.next_publish().await.payload.len(), 100);
    assert_eq!(text(&roomy.next_publish().await.payload), "fits");
    assert!(broker.stats().publish_dropped >= 1, "the drop is counted");
    broker.shutdown().await;
}

#[tokio::test]
async fn subscription_identifier_follows_the_latest_subscribe() {
    let broker = TestBroker::start().await;
    let mut sub = V5::connect(&broker, "sub").await;
    let mut publisher = V3::connect(&broker, "pub").await;
    async fn ids_of_next(sub: &mut V5, publisher: &mut V3) -> Vec<usize> {
        publisher.publish("sid", 0, false, "x").await;
        sub.next_publish()
            .await
            .properties
            .map(|p| p.subscription_identifiers)
            .unwrap_or_default()
    }
    sub.subscribe_filter(Filter::new("sid", qos5(0)), Some(7))
        .await;
    assert_eq!(ids_of_next(&mut sub, &mut publisher).await, [7]);
    // [MQTT-3.8.4-3] the new SUBSCRIBE replaces the subscription, identifier included.
    sub.subscribe_filter(Filter::new("sid", qos5(0)), Some(268_435_455))
        .await;
    assert_eq!(ids_of_next(&mut sub, &mut publisher).await, [268_435_455]);
    sub.subscribe_filter(Filter::new("sid", qos5(0)), None)
        .await;
    assert!(ids_of_next(&mut sub, &mut publisher).await.is_empty());
    broker.shutdown().await;
}

#[tokio::test]
async fn no_local_subscription_does_not_get_the_clients_own_messages() {
    let broker = TestBroker::start().await;
    let mut me = V5::connect(&broker, "me").await;
    let filter = Filter {
        nolocal: true,
        ..Filter::new("chat", qos5(1))
    };
    me.subscribe_filter(filter, None).await;
    let mut other = V5::connect(&broker, "other").await;
    other.subscribe_ok("chat", 1).await;

    me.publish("chat", 1, false, "mine").await;
    other.publish("chat", 1, false, "theirs").await;
    // [MQTT-3.8.3-3] not sent back to its publisher; everyone else gets it.
    assert_eq!(text(&me.next_publish().await.payload), "theirs");
    assert_eq!(text(&other.next_publish().await.payload), "mine");
    assert_eq!(text(&other.next_publish().await.payload), "theirs");
    broker.shutdown().await;
}

#[tokio::test]
async fn publish_properties_pass_through_unchanged() {
    let broker = TestBroker::start().await;
    let mut sub = V5::connect(&broker, "sub").await;
    sub.subscribe_ok("props", 1).await;
    let mut v3 = V3::connect(&broker, "sub3").await;
    v3.subscribe_ok("props", 1).await;
    let user_properties = vec![
        ("a".to_owned(), "1".to_owned()),
        ("b".to_owned(), "2".to_owned()),
        ("a".to_owned(), "1".to_owned()),
        ("a".to_owned(), "3".to_owned()),
        ("ünï".to_owned(), "".to_owned()),
    ];
    let properties = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("reply/to/me".into()),
        correlation_data: Some(Bytes::from_static(&[0, 1, 2, 0xFF])),
        user_properties: user_properties.clone(),
        ..publish_properties()
    };
    let mut publisher = V5::connect(&broker, "pub").await;
    publisher
        .publish_with("props", 1, false, "{}", properties)
        .await;

    let got = sub.next_publish().await;
    let p = got.properties.expect("properties forwarded");
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.response_topic.as_deref(), Some("reply/to/me"));
    assert_eq!(p.correlation_data.as_deref(), Some(&[0, 1, 2, 0xFF][..]));
    // [MQTT-3.3.2-17] [MQTT-3.3.2-18] same order, duplicates kept.
    assert_eq!(p.user_properties, user_properties);
    assert_eq!(p.message_expiry_interval, None);
    // A v3 subscriber gets the message without them.
    assert_eq!(text(&v3.next_publish().await.payload), "{}");
    broker.shutdown().await;
}

#[tokio::test]
async fn payload_not_matching_its_utf8_format_indicator_is_refused_with_0x99() {
    let broker = TestBroker::start().await;
    let (mut raw, _) = broker.raw_v5(v5_connect("pfi")).await;
    raw.send(&[
        0x32, 0x0A, // PUBLISH QoS 1, remaining length 10
        0x00, 0x01, b't', // topic "t"
        0x00, 0x05, // packet id 5
        0x02, // properties length 2
        0x01, 0x01, // payload format indicator 1: UTF-8
        0xC3, 0x28, // payload: not UTF-8
    ])
    .await;
    let ack = puback(raw.recv_v5().await);
    assert_eq!(
        (ack.pkid, ack.reason),
        (5, PubAckReason::PayloadFormatInvalid)
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn response_information_is_sent_when_requested() {
    let broker = TestBroker::start_with(|c| {
        c.mqtt.response_information = Some("responses/".into());
    })
    .await;
    let (_asks, ack) = raw_v5_props(
        &broker,
        "asks",
        mqtt5::ConnectProperties {
            request_response_info: Some(1),
            ..connect_properties()
        },
    )
    .await;
    assert_eq!(
        ack.properties.unwrap().response_information.as_deref(),
        Some("responses/")
    );
    let (_quiet, ack) = broker.raw_v5(v5_connect("quiet")).await;
    // [MQTT-3.1.2-28] not requested: not sent.
    assert_eq!(ack.properties.unwrap().response_information, None);
    broker.shutdown().await;
}

#[tokio::test]
async fn puback_says_0x10_when_no_subscriber_matched() {
    let broker = TestBroker::start().await;
    let (mut raw, _) = broker.raw_v5(v5_connect("alone")).await;
    raw.send_v5(V5Packet::Publish(crate::harness::v5_publish(
        "nobody/here",
        1,
        9,
        b"x",
    )))
    .await;
    let ack = puback(raw.recv_v5().await);
    assert_eq!(
        (ack.pkid, ack.reason),
        (9, PubAckReason::NoMatchingSubscribers)
    );
    // With a subscriber, plain success.
    let mut sub = V3::connect(&broker, "sub").await;
    sub.subscribe_ok("nobody/#", 0).await;
    raw.send_v5(V5Packet::Publish(crate::harness::v5_publish(
        "nobody/here",
        1,
        10,
        b"x",
    )))
    .await;
    let ack = puback(raw.recv_v5().await);
    assert_eq!((ack.pkid, ack.reason), (10, PubAckReason::Success));
    broker.shutdown().await;
}

#[tokio::test]
async fn protocol_error_disconnect_carries_a_reason_string() {
    let broker = TestBroker::start().await;
    let (mut raw, _) = broker.raw_v5(v5_connect("explained")).await;
    raw.send(&crate::harness::connect_v5("again")).await; // a second CONNECT
    let reason = raw.expect_disconnect(0x82).await;
    assert!(
        reason.is_some_and(|r| !r.is_empty()),
        "a reason string says what went wrong"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn retained_messages_sent_at_subscribe_respect_the_client_receive_maximum() {
    let broker = TestBroker::start().await;
    let mut publisher = V3::connect(&broker, "pub").await;
    for n in 1..=3 {
        publisher
            .publish(&format!("rr/{n}"), 1, true, n.to_string())
            .await;
    }
    let (mut sub, _) = raw_v5_props(
        &broker,
        "one-at-a-time",
        mqtt5::ConnectProperties {
            receive_maximum: Some(1),
            ..connect_properties()
        },
    )
    .await;
    sub.subscribe_v5(1, Filter::new("rr/+", qos5(1)), Some(5))
        .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = sub.recv_v5_publish().await;
        // Sent because of the subscription: RETAIN set, its identifier attached.
        assert!(p.retain);
        assert_eq!(p.properties.clone().unwrap().subscription_identifiers, [5]);
        got.push(text(&p.payload));
        sub.ping_fence().await; // one at a time: nothing more until this one is acked
        let id = p.pkid.to_be_bytes();
        sub.send(&[0x40, 0x02, id[0], id[1]]).await;
    }
    got.sort();
    assert_eq!(got, ["1", "2", "3"]);
    broker.shutdown().await;
}

#[tokio::test]
async fn qos2_deliveries_count_against_receive_maximum_until_pubcomp() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = raw_v5_props(
        &broker,
        "one",
        mqtt5::ConnectProperties {
            receive_maximum: Some(1),
            ..connect_properties()
        },
    )
    .await;
    sub.subscribe_v5(1, Filter::new("q2", qos5(2)), None).await;
    let mut publisher = V3::connect(&broker, "pub").await;
    publisher.publish("q2", 2, false, "first").await;
    publisher.publish("q2", 2, false, "second").await;

    let first = sub.recv_v5_publish().await;
    let id = first.pkid.to_be_bytes();
    sub.send(&[0x50, 0x02, id[0], id[1]]).await; // PUBREC
    assert!(matches!(sub.recv_v5().await, V5Packet::PubRel(_)));
    // [MQTT-3.3.4-9] still unacknowledged until PUBCOMP: "second" waits.
    sub.ping_fence().await;
    sub.send(&[0x70, 0x02, id[0], id[1]]).await; // PUBCOMP
    assert_eq!(&sub.recv_v5_publish().await.payload[..], b"second");
    broker.shutdown().await;
}

#[tokio::test]
async fn retained_message_too_big_for_the_client_is_skipped_at_subscribe() {
    let broker = TestBroker::start().await;
    let mut publisher = V3::connect(&broker, "pub").await;
    publisher.publish("sz/big", 1, true, vec![b'x'; 200]).await;
    publisher.publish("sz/small", 1, true, "fits").await;
    let (mut sub, _) = raw_v5_props(
        &broker,
        "small",
        mqtt5::ConnectProperties {
            max_packet_size: Some(64),
            receive_maximum: Some(1),
            ..connect_properties()
        },
    )
    .await;
    sub.subscribe_v5(1, Filter::new("sz/#", qos5(1)), None)
        .await;
    // The big one is dropped without taking the only slot of the receive maximum.
    let got = sub.recv_v5_publish().await;
    assert_eq!(&got.payload[..], b"fits");
    sub.ping_fence().await;
    broker.shutdown().await;
}
