//! Topic rules: `$`-topics and leading wildcards, `$SYS` is the broker's, filter
//! validation; shared subscriptions across v5 and v3.1.1 members.

use std::collections::BTreeSet;

use rumqttc::v5::mqttbytes::v5::{Filter, PubAckReason, Subscribe, SubscribeReasonCode};

use crate::client::{V3, V5, text};
use crate::harness::{
    TestBroker, V4Packet, V5Packet, connect_properties, qos4, qos5, v5_connect, v5_connect_with,
};

#[tokio::test]
async fn leading_wildcards_do_not_match_dollar_topics() {
    let broker = TestBroker::start().await;
    let mut wild = V3::connect(&broker, "wild").await;
    for filter in ["#", "+/x", "+/+", "+/#"] {
        wild.subscribe_ok(filter, 0).await;
    }
    let mut explicit = V3::connect(&broker, "explicit").await;
    explicit.subscribe_ok("$dollar/#", 0).await;
    explicit.subscribe_ok("$dollar/+", 0).await;

    let mut publisher = V3::connect(&broker, "pub").await;
    publisher.publish("$dollar/x", 0, false, "dollar").await;
    publisher.publish("plain/x", 0, false, "plain").await;
    // [MQTT-4.7.2-1] the `$dollar/x` message reaches only the filters that name `$dollar`.
    assert_eq!(text(&wild.next_publish().await.payload), "plain");
    let got = explicit.next_publish().await;
    assert_eq!(
        (got.topic.as_str(), text(&got.payload).as_str()),
        ("$dollar/x", "dollar")
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn clients_cannot_publish_to_sys_topics() {
    let broker = TestBroker::start().await;
    let (mut watcher, _) = broker.raw_v311("watcher", true).await;
    watcher.subscribe_v4(1, "$SYS/#", 0).await;

    // v5: refused with 0x87 (not authorized).
    let (mut v5, _) = broker.raw_v5(v5_connect("pub5")).await;
    let mut publish = crate::harness::v5_publish("$SYS/broker/fake", 1, 1, b"lie");
    publish.retain = true;
    v5.send_v5(V5Packet::Publish(publish)).await;
    match v5.recv_v5().await {
        V5Packet::PubAck(ack) => assert_eq!(ack.reason, PubAckReason::NotAuthorized),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    // v3 cannot be told: acknowledged and dropped.
    let mut v3 = V3::connect(&broker, "pub3").await;
    v3.publish("$SYS/broker/fake", 1, true, "lie").await;
    v3.publish("$SYS", 1, false, "lie").await;

    // Both were decided before their PUBACKs; had either been routed, it would be queued
    // for the watcher ahead of the PINGRESP.
    watcher.ping_fence().await;
    assert_eq!(broker.broker().retained.len(), 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn invalid_filters_are_refused_per_filter_in_suback() {
    let broker = TestBroker::start().await;
    // rumqttc checks filters itself, so these go out through its encoder on raw sockets.
    let (mut v3, _) = broker.raw_v311("sub3", true).await;
    let filters = [
        "a/#/b",
        "a+/b",
        "$share/g",
        "$share//t",
        "$share/g+/t",
        "ok",
    ];
    let subscribe = rumqttc::Subscribe {
        pkid: 1,
        filters: filters
            .iter()
            .map(|f| rumqttc::SubscribeFilter::new((*f).to_owned(), qos4(1)))
            .collect(),
    };
    v3.send_v4(V4Packet::Subscribe(subscribe)).await;
    use rumqttc::SubscribeReasonCode::{Failure, Success};
    match v3.recv_v4().await {
        V4Packet::SubAck(ack) => assert_eq!(
            ack.return_codes,
            [
                Failure,
                Failure,
                Failure,
                Failure,
                Failure,
                Success(qos4(1))
            ]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }

    let (mut v5, _) = broker.raw_v5(v5_connect("sub5")).await;
    let filters = ["a/#/b", "$share/g", "$share/#/t", "ok"];
    let subscribe = Subscribe::new_many(filters.map(|f| Filter::new(f, qos5(1))), None);
    v5.send_v5(V5Packet::Subscribe(Subscribe {
        pkid: 1,
        ..subscribe
    }))
    .await;
    use SubscribeReasonCode::{Success as Granted, TopicFilterInvalid as Invalid};
    match v5.recv_v5().await {
        V5Packet::SubAck(ack) => {
            assert_eq!(
                ack.return_codes,
                [Invalid, Invalid, Invalid, Granted(qos5(1))]
            )
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    // Only the valid filters were subscribed, and both connections carry on.
    assert_eq!(broker.broker().router.len(), 2);
    v3.ping_fence().await;
    v5.ping_fence().await;
    broker.shutdown().await;
}

/// Receives `n` messages and returns their payloads as numbers.
async fn numbers_v5(client: &mut V5, n: usize) -> Vec<u32> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(text(&client.next_publish().await.payload).parse().unwrap());
    }
    got
}

async fn numbers_v3(client: &mut V3, n: usize) -> Vec<u32> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(text(&client.next_publish().await.payload).parse().unwrap());
    }
    got
}

#[tokio::test]
async fn shared_subscription_gives_each_message_to_one_member_in_turn() {
    let broker = TestBroker::start().await;
    let mut m1 = V5::connect(&broker, "m1").await;
    m1.subscribe_ok("$share/workers/jobs/+", 1).await;
    let mut m2 = V3::connect(&broker, "m2").await;
    m2.subscribe_ok("$share/workers/jobs/+", 1).await;
    let mut m3 = V5::connect(&broker, "m3").await;
    m3.subscribe_ok("$share/workers/jobs/+", 1).await;
    let mut everyone = V3::connect(&broker, "all").await;
    everyone.subscribe_ok("jobs/+", 1).await;

    let mut publisher = V3::connect(&broker, "pub").await;
    for n in 0..9 {
        publisher
            .publish(&format!("jobs/{n}"), 1, false, n.to_string())
            .await;
    }
    let (a, b, c) = (
        numbers_v5(&mut m1, 3).await,
        numbers_v3(&mut m2, 3).await,
        numbers_v5(&mut m3, 3).await,
    );
    // (v5 4.8.2) each message to exactly one member: together they got all nine once.
    let all: BTreeSet<u32> = a.iter().chain(&b).chain(&c).copied().collect();
    assert_eq!(all, (0..9).collect(), "members got {a:?} {b:?} {c:?}");
    // Round robin: each member got every third message.
    for got in [&a, &b, &c] {
        assert!(
            got.windows(2).all(|w| w[1] == w[0] + 3),
            "members got {a:?} {b:?} {c:?}"
        );
    }
    // A plain subscription to the same filter is not part of the group.
    assert_eq!(
        numbers_v3(&mut everyone, 9).await,
        (0..9).collect::<Vec<_>>()
    );

    // Nobody got more than their share: a message all three see plainly comes next.
    for sub in [&mut m1, &mut m3] {
        sub.subscribe_ok("fence", 0).await;
    }
    m2.subscribe_ok("fence", 0).await;
    publisher.publish("fence", 0, false, "99").await;
    assert_eq!(numbers_v5(&mut m1, 1).await, [99]);
    assert_eq!(numbers_v3(&mut m2, 1).await, [99]);
    assert_eq!(numbers_v5(&mut m3, 1).await, [99]);
    broker.shutdown().await;
}

#[tokio::test]
async fn shared_group_member_that_unsubscribes_leaves_the_messages_to_the_others() {
    let broker = TestBroker::start().await;
    let mut leaving = V3::connect(&broker, "leaving").await;
    leaving.subscribe_ok("$share/g/t", 1).await;
    leaving.subscribe_ok("fence", 0).await;
    let mut staying = V5::connect(&broker, "staying").await;
    staying.subscribe_ok("$share/g/t", 1).await;
    leaving.unsubscribe("$share/g/t").await;

    let mut publisher = V3::connect(&broker, "pub").await;
    for n in 0..4 {
        publisher.publish("t", 1, false, n.to_string()).await;
    }
    assert_eq!(numbers_v5(&mut staying, 4).await, [0, 1, 2, 3]);
    publisher.publish("fence", 0, false, "99").await;
    assert_eq!(
        numbers_v3(&mut leaving, 1).await,
        [99],
        "the leaver got a share"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn shared_group_member_that_disconnects_hands_its_pending_messages_over() {
    let broker = TestBroker::start().await;
    // A member that takes one message at a time and acknowledges none.
    let properties = rumqttc::v5::mqttbytes::v5::ConnectProperties {
        receive_maximum: Some(1),
        ..connect_properties()
    };
    let (mut stuck, _) = broker
        .raw_v5(v5_connect_with("stuck", true, properties))
        .await;
    stuck
        .subscribe_v5(1, Filter::new("$share/g/work", qos5(1)), None)
        .await;
    let mut healthy = V5::connect(&broker, "healthy").await;
    healthy.subscribe_ok("$share/g/work", 1).await;

    let mut publisher = V3::connect(&broker, "pub").await;
    for n in 0..6 {
        publisher.publish("work", 1, false, n.to_string()).await;
    }
    // Half went to `stuck`: one in flight, the rest queued behind it.
    let in_flight = stuck.recv_v5_publish().await;
    let mine = numbers_v5(&mut healthy, 3).await;
    stuck.send(&[0xE0, 0x00]).await; // DISCONNECT, session ends
    stuck.expect_closed().await;

    // Its unacknowledged and queued messages go to the member that is left.
    let handed = numbers_v5(&mut healthy, 3).await;
    let all: BTreeSet<u32> = mine.iter().chain(&handed).copied().collect();
    assert_eq!(all, (0..6).collect(), "got {mine:?} then {handed:?}");
    assert!(handed.contains(&text(&in_flight.payload).parse().unwrap()));
    broker.shutdown().await;
}

#[tokio::test]
async fn shared_subscription_gets_no_retained_messages() {
    let broker = TestBroker::start().await;
    V3::connect(&broker, "pub")
        .await
        .publish("kept/x", 1, true, "retained")
        .await;
    let (mut raw, _) = broker.raw_v5(v5_connect("member")).await;
    raw.subscribe_v5(1, Filter::new("$share/g/kept/#", qos5(1)), None)
        .await;
    // v5 3.3.1.3: retained messages are sent for new non-shared subscriptions only.
    raw.ping_fence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn shared_group_prefers_connected_members() {
    let broker = TestBroker::start().await;
    let mut options = V3::options(&broker, "away");
    options.set_clean_session(false);
    let (mut away, _) = V3::connect_with(options.clone()).await;
    away.subscribe_ok("$share/g/t", 1).await;
    away.subscribe_ok("fence", 0).await;
    away.disconnect().await;
    let mut here = V5::connect(&broker, "here").await;
    here.subscribe_ok("$share/g/t", 1).await;

    let mut publisher = V3::connect(&broker, "pub").await;
    for n in 0..4 {
        publisher.publish("t", 1, false, n.to_string()).await;
    }
    // The offline member's session still belongs to the group, but nothing waits for it.
    assert_eq!(numbers_v5(&mut here, 4).await, [0, 1, 2, 3]);
    let (mut away, ack) = V3::connect_with(options).await;
    assert!(ack.session_present);
    publisher.publish("fence", 0, false, "99").await;
    assert_eq!(numbers_v3(&mut away, 1).await, [99]);
    broker.shutdown().await;
}

#[tokio::test]
async fn unsubscribe_stops_deliveries_and_v5_reports_unknown_filters() {
    let broker = TestBroker::start().await;
    let (mut raw, _) = broker.raw_v5(v5_connect("unsub")).await;
    raw.subscribe_v5(1, Filter::new("u/#", qos5(1)), None).await;
    raw.subscribe_v5(2, Filter::new("fence", qos5(0)), None)
        .await;
    let unsubscribe = rumqttc::v5::mqttbytes::v5::Unsubscribe {
        pkid: 3,
        filters: vec!["u/#".into(), "never/subscribed".into()],
        properties: None,
    };
    raw.send_v5(V5Packet::Unsubscribe(unsubscribe)).await;
    use rumqttc::v5::mqttbytes::v5::UnsubAckReason::{NoSubscriptionExisted, Success};
    match raw.recv_v5().await {
        V5Packet::UnsubAck(ack) => {
            assert_eq!(ack.pkid, 3);
            assert_eq!(ack.reasons, [Success, NoSubscriptionExisted]); // 0x00, 0x11
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    let mut publisher = V3::connect(&broker, "pub").await;
    publisher.publish("u/a", 1, false, "after").await;
    publisher.publish("fence", 0, false, "fence").await;
    assert_eq!(&raw.recv_v5_publish().await.payload[..], b"fence");

    // 3.1.1: UNSUBACK echoes the packet id [MQTT-3.10.4-4].
    let (mut v3, _) = broker.raw_v311("unsub3", true).await;
    v3.subscribe_v4(1, "u/#", 0).await;
    v3.send(&[
        0xA2, 0x07, // UNSUBSCRIBE, remaining length 7
        0x00, 0x09, // packet id 9
        0x00, 0x03, b'u', b'/', b'#', // filter "u/#"
    ])
    .await;
    assert_eq!(v3.recv_packet().await, [0xB0, 0x02, 0x00, 0x09]);
    assert_eq!(broker.broker().router.len(), 1, "only the fence is left");
    broker.shutdown().await;
}
