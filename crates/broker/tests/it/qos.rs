//! QoS 0, 1 and 2 in both directions: granted QoS, acknowledgement flows, exactly-once
//! inbound, resend on resume, packet identifiers.

use std::collections::HashSet;

use rumqttc::v5::mqttbytes::v5 as mqtt5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{V3, V5, text};
use crate::harness::{TestBroker, V4Packet, V5Packet, qos4, qos5, v5_connect};

#[tokio::test]
async fn delivered_qos_is_the_minimum_of_publish_and_subscription_qos_v3_subscriber() {
    let broker = TestBroker::start().await;
    let mut subscriber = V3::connect(&broker, "sub").await;
    for sub_qos in 0..=2 {
        subscriber
            .subscribe_ok(&format!("grant/{sub_qos}"), sub_qos)
            .await;
    }
    let mut publisher = V5::connect(&broker, "pub").await;
    for sub_qos in 0..=2u8 {
        for pub_qos in 0..=2u8 {
            let payload = format!("{pub_qos}{sub_qos}");
            publisher
                .publish(&format!("grant/{sub_qos}"), pub_qos, false, payload)
                .await;
        }
    }
    for sub_qos in 0..=2u8 {
        for pub_qos in 0..=2u8 {
            let publish = subscriber.next_publish().await;
            assert_eq!(text(&publish.payload), format!("{pub_qos}{sub_qos}"));
            // [MQTT-3.8.4-8] the lower of the two.
            assert_eq!(
                publish.qos,
                qos4(pub_qos.min(sub_qos)),
                "{pub_qos}/{sub_qos}"
            );
        }
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn delivered_qos_is_the_minimum_of_publish_and_subscription_qos_v5_subscriber() {
    let broker = TestBroker::start().await;
    let mut subscriber = V5::connect(&broker, "sub").await;
    for sub_qos in 0..=2 {
        subscriber
            .subscribe_ok(&format!("grant/{sub_qos}"), sub_qos)
            .await;
    }
    let mut publisher = V3::connect(&broker, "pub").await;
    for sub_qos in 0..=2u8 {
        for pub_qos in 0..=2u8 {
            let payload = format!("{pub_qos}{sub_qos}");
            publisher
                .publish(&format!("grant/{sub_qos}"), pub_qos, false, payload)
                .await;
        }
    }
    for sub_qos in 0..=2u8 {
        for pub_qos in 0..=2u8 {
            let publish = subscriber.next_publish().await;
            assert_eq!(text(&publish.payload), format!("{pub_qos}{sub_qos}"));
            assert_eq!(
                publish.qos,
                qos5(pub_qos.min(sub_qos)),
                "{pub_qos}/{sub_qos}"
            );
        }
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn inbound_qos1_and_qos2_are_acknowledged_with_puback_and_pubrec_pubrel_pubcomp() {
    let broker = TestBroker::start().await;
    let (mut raw, _) = broker.raw_v311("acks", true).await;
    raw.send(&[
        0x32, 0x06, // PUBLISH QoS 1, remaining length 6
        0x00, 0x01, b't', // topic "t"
        0x00, 0x0A, // packet id 10
        b'1', // payload
    ])
    .await;
    assert_eq!(raw.recv_packet().await, [0x40, 0x02, 0x00, 0x0A]); // PUBACK 10
    raw.send(&[
        0x34, 0x06, // PUBLISH QoS 2, remaining length 6
        0x00, 0x01, b't', // topic "t"
        0x00, 0x0B, // packet id 11
        b'2', // payload
    ])
    .await;
    assert_eq!(raw.recv_packet().await, [0x50, 0x02, 0x00, 0x0B]); // PUBREC 11
    raw.send(&[0x62, 0x02, 0x00, 0x0B]).await; // PUBREL 11
    assert_eq!(raw.recv_packet().await, [0x70, 0x02, 0x00, 0x0B]); // PUBCOMP 11
    broker.shutdown().await;
}

#[tokio::test]
async fn qos2_duplicate_publish_is_not_routed_twice() {
    let broker = TestBroker::start().await;
    let mut subscriber = V3::connect(&broker, "sub").await;
    subscriber.subscribe_ok("dup/#", 2).await;
    let (mut publisher, _) = broker.raw_v311("pub", true).await;
    let publish = |dup: bool, payload: &[u8; 4]| {
        let mut p = vec![
            if dup { 0x3C } else { 0x34 }, // PUBLISH QoS 2, DUP as given
            0x0D,                          // remaining length 13
            0x00,
            0x05,
            b'd',
            b'u',
            b'p',
            b'/',
            b'a', // topic "dup/a"
            0x00,
            0x07, // packet id 7
        ];
        p.extend(payload);
        p
    };
    publisher.send(&publish(false, b"once")).await;
    assert_eq!(publisher.recv_packet().await, [0x50, 0x02, 0x00, 0x07]); // PUBREC 7
    // The PUBREC was "lost": the client sends the PUBLISH again, with DUP.
    publisher.send(&publish(true, b"once")).await;
    assert_eq!(publisher.recv_packet().await, [0x50, 0x02, 0x00, 0x07]); // PUBREC 7 again
    // Even without DUP, the held packet id marks it as the same message.
    publisher.send(&publish(false, b"once")).await;
    assert_eq!(publisher.recv_packet().await, [0x50, 0x02, 0x00, 0x07]);
    publisher.send(&[0x62, 0x02, 0x00, 0x07]).await; // PUBREL 7
    assert_eq!(publisher.recv_packet().await, [0x70, 0x02, 0x00, 0x07]); // PUBCOMP 7
    // After PUBCOMP the id is free: the same id now carries a new message.
    publisher.send(&publish(false, b"next")).await;
    assert_eq!(publisher.recv_packet().await, [0x50, 0x02, 0x00, 0x07]);

    assert_eq!(text(&subscriber.next_publish().await.payload), "once");
    assert_eq!(
        text(&subscriber.next_publish().await.payload),
        "next",
        "the repeated PUBLISH was routed again"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn outbound_qos2_goes_through_pubrec_pubrel_pubcomp() {
    let broker = TestBroker::start().await;
    let (mut v3, _) = broker.raw_v311("sub3", true).await;
    v3.subscribe_v4(1, "q2", 2).await;
    let (mut v5, _) = broker.raw_v5(v5_connect("sub5")).await;
    v5.subscribe_v5(1, mqtt5::Filter::new("q2", qos5(2)), None)
        .await;
    let mut publisher = V3::connect(&broker, "pub").await;
    publisher.publish("q2", 2, false, "exactly once").await;

    let publish = v3.recv_v4_publish().await;
    assert_eq!((publish.qos, publish.dup), (qos4(2), false));
    let id = publish.pkid.to_be_bytes();
    v3.send(&[0x50, 0x02, id[0], id[1]]).await; // PUBREC
    assert_eq!(v3.recv_packet().await, [0x62, 0x02, id[0], id[1]]); // PUBREL
    v3.send(&[0x70, 0x02, id[0], id[1]]).await; // PUBCOMP
    v3.ping_fence().await; // and nothing else: the exchange is over

    let publish = v5.recv_v5_publish().await;
    assert_eq!((publish.qos, publish.dup), (qos5(2), false));
    let id = publish.pkid.to_be_bytes();
    v5.send(&[0x50, 0x02, id[0], id[1]]).await; // PUBREC, reason success
    match v5.recv_v5().await {
        V5Packet::PubRel(rel) => {
            assert_eq!(rel.pkid, publish.pkid);
            assert_eq!(rel.reason, mqtt5::PubRelReason::Success);
        }
        other => panic!("expected PUBREL, got {other:?}"),
    }
    v5.send(&[0x70, 0x02, id[0], id[1]]).await; // PUBCOMP
    v5.ping_fence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_pubrel_for_an_unknown_packet_id_gets_pubcomp_0x92() {
    let broker = TestBroker::start().await;
    let (mut raw, _) = broker.raw_v5(v5_connect("stray")).await;
    raw.send(&[0x62, 0x02, 0x00, 0x33]).await; // PUBREL 0x33, never PUBREC'd
    // [MQTT-4.3.3-11] answered anyway; v5 says the id was not found.
    assert_eq!(raw.recv_packet().await, [0x70, 0x03, 0x00, 0x33, 0x92]);
    broker.shutdown().await;
}

#[tokio::test]
async fn unacknowledged_messages_are_resent_with_dup_and_pubrel_on_resume() {
    let broker = TestBroker::start().await;
    let (mut sub, present) = broker.raw_v311("resume", false).await;
    assert!(!present);
    sub.subscribe_v4(1, "r/1", 1).await;
    sub.subscribe_v4(2, "r/2", 2).await;
    let mut publisher = V3::connect(&broker, "pub").await;
    publisher.publish("r/1", 1, false, "m1").await;
    publisher.publish("r/2", 2, false, "m2").await;
    publisher.publish("r/2", 2, false, "m3").await;

    let m1 = sub.recv_v4_publish().await;
    let m2 = sub.recv_v4_publish().await;
    let m3 = sub.recv_v4_publish().await;
    assert_eq!(
        [&m1.payload[..], &m2.payload[..], &m3.payload[..]],
        [b"m1", b"m2", b"m3"]
    );
    // Only m3 gets as far as PUBREC; the connection then drops.
    let id3 = m3.pkid.to_be_bytes();
    sub.send(&[0x50, 0x02, id3[0], id3[1]]).await; // PUBREC m3
    assert_eq!(sub.recv_packet().await, [0x62, 0x02, id3[0], id3[1]]); // PUBREL m3
    drop(sub);
    broker
        .eventually("the session to be parked", |b| b.registry.parked_len() == 1)
        .await;

    let (mut sub, present) = broker.raw_v311("resume", false).await;
    assert!(present);
    // [MQTT-4.4.0-1] same packet ids, original order; PUBLISH with DUP [MQTT-3.3.1-1],
    // PUBREL for the PUBREC'd one.
    let again1 = sub.recv_v4_publish().await;
    assert_eq!(
        (again1.dup, again1.pkid, again1.qos, &again1.payload[..]),
        (true, m1.pkid, qos4(1), &b"m1"[..])
    );
    let again2 = sub.recv_v4_publish().await;
    assert_eq!(
        (again2.dup, again2.pkid, again2.qos, &again2.payload[..]),
        (true, m2.pkid, qos4(2), &b"m2"[..])
    );
    assert_eq!(sub.recv_packet().await, [0x62, 0x02, id3[0], id3[1]]); // PUBREL m3
    sub.ping_fence().await;

    // Finish every exchange; a second resume then has nothing to resend.
    let (id1, id2) = (m1.pkid.to_be_bytes(), m2.pkid.to_be_bytes());
    sub.send(&[0x40, 0x02, id1[0], id1[1]]).await; // PUBACK m1
    sub.send(&[0x50, 0x02, id2[0], id2[1]]).await; // PUBREC m2
    assert_eq!(sub.recv_packet().await, [0x62, 0x02, id2[0], id2[1]]);
    sub.send(&[0x70, 0x02, id2[0], id2[1]]).await; // PUBCOMP m2
    sub.send(&[0x70, 0x02, id3[0], id3[1]]).await; // PUBCOMP m3
    sub.send(&[0xE0, 0x00]).await; // DISCONNECT
    sub.expect_closed().await;
    let (mut sub, present) = broker.raw_v311("resume", false).await;
    assert!(present);
    sub.ping_fence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn packet_ids_are_not_reused_while_in_flight_across_wrap_around() {
    // Enough messages to use every packet id once more while the first stays in flight.
    const MESSAGES: usize = 65_600;
    let broker = TestBroker::start_with(|c| c.mqtt.max_queued_messages = 0).await;
    let (mut sub, _) = broker.raw_v311("ids", true).await;
    sub.subscribe_v4(1, "ids", 1).await;

    // The publisher streams every message in one go and drains its PUBACKs.
    let (mut publisher, _) = broker.raw_v311("pub", true).await;
    let one = [
        0x32, 0x07, // PUBLISH QoS 1, remaining length 7
        0x00, 0x03, b'i', b'd', b's', // topic "ids"
        0x00, 0x01, // packet id 1 (inbound QoS 1 ids may repeat once acknowledged)
    ];
    let all: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * MESSAGES)
        .collect();
    let publishing = tokio::spawn(async move {
        let (mut read, mut write) = publisher.stream.split();
        let drain = async {
            let mut buf = vec![0u8; 64 * 1024];
            let mut acked = 0;
            while acked < MESSAGES * 4 {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => acked += n,
                }
            }
        };
        let (_, written) = tokio::join!(drain, write.write_all(&all));
        written.expect("publisher writes");
    });

    let first = sub.recv_v4_publish().await.pkid;
    let mut seen = HashSet::new();
    let mut buf = bytes::BytesMut::new();
    let mut received = 1;
    while received < MESSAGES {
        // Decode as many PUBLISHes as one read brought, acknowledge them together.
        let n = tokio::time::timeout(crate::harness::TIMEOUT, sub.stream.read_buf(&mut buf))
            .await
            .expect("timed out waiting for deliveries")
            .expect("read");
        assert!(n > 0, "subscriber connection closed");
        let mut acks = Vec::new();
        loop {
            match V4Packet::read(&mut buf, usize::MAX) {
                Ok(V4Packet::Publish(p)) => {
                    assert_ne!(p.pkid, first, "packet id {first} reused while in flight");
                    seen.insert(p.pkid);
                    let id = p.pkid.to_be_bytes();
                    acks.extend([0x40, 0x02, id[0], id[1]]); // PUBACK
                    received += 1;
                }
                Ok(other) => panic!("expected PUBLISH, got {other:?}"),
                Err(rumqttc::Error::InsufficientBytes(_)) => break,
                Err(e) => panic!("undecodable delivery: {e:?}"),
            }
        }
        sub.send(&acks).await;
    }
    // Every other id came round, so the allocator really wrapped past the held one.
    assert_eq!(seen.len(), 65_534);
    publishing.await.expect("publisher task");
    broker.shutdown().await;
}

#[tokio::test]
async fn qos2_publish_repeated_after_reconnect_is_not_routed_twice() {
    let broker = TestBroker::start().await;
    let mut subscriber = V3::connect(&broker, "sub").await;
    subscriber.subscribe_ok("eo/#", 2).await;
    let publish = |dup: bool, payload: u8| {
        [
            if dup { 0x3C } else { 0x34 }, // PUBLISH QoS 2, DUP as given
            0x07,                          // remaining length 7
            0x00,
            0x02,
            b'e',
            b'o', // topic "eo"
            0x00,
            0x05, // packet id 5
            payload,
        ]
    };
    let (mut publisher, _) = broker.raw_v311("pub", false).await;
    publisher.send(&publish(false, b'1')).await;
    assert_eq!(publisher.recv_packet().await, [0x50, 0x02, 0x00, 0x05]); // PUBREC 5
    // The connection drops before PUBREL; the held id is session state.
    drop(publisher);
    broker
        .eventually("the session to be parked", |b| b.registry.parked_len() == 1)
        .await;
    let (mut publisher, present) = broker.raw_v311("pub", false).await;
    assert!(present);
    publisher.send(&publish(true, b'1')).await;
    assert_eq!(publisher.recv_packet().await, [0x50, 0x02, 0x00, 0x05]);
    publisher.send(&[0x62, 0x02, 0x00, 0x05]).await; // PUBREL 5
    assert_eq!(publisher.recv_packet().await, [0x70, 0x02, 0x00, 0x05]); // PUBCOMP 5
    publisher.send(&publish(false, b'2')).await;
    assert_eq!(publisher.recv_packet().await, [0x50, 0x02, 0x00, 0x05]);

    assert_eq!(text(&subscriber.next_publish().await.payload), "1");
    assert_eq!(
        text(&subscriber.next_publish().await.payload),
        "2",
        "routed twice"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_pubrec_with_an_error_ends_the_qos2_exchange() {
    let broker = TestBroker::start().await;
    let properties = rumqttc::v5::mqttbytes::v5::ConnectProperties {
        receive_maximum: Some(1),
        ..crate::harness::connect_properties()
    };
    let (mut sub, _) = broker
        .raw_v5(crate::harness::v5_connect_with("refuser", true, properties))
        .await;
    sub.subscribe_v5(1, mqtt5::Filter::new("x", qos5(2)), None)
        .await;
    let mut publisher = V3::connect(&broker, "pub").await;
    publisher.publish("x", 2, false, "refused").await;
    publisher.publish("x", 2, false, "next").await;

    let first = sub.recv_v5_publish().await;
    let id = first.pkid.to_be_bytes();
    sub.send(&[
        0x50, 0x03, // PUBREC, remaining length 3
        id[0], id[1], // packet id
        0x80,  // reason: unspecified error
    ])
    .await;
    // No PUBREL for it [MQTT-4.3.3-4]; its slot in the receive maximum of 1 is free again,
    // so the next message comes at once.
    let next = sub.recv_v5_publish().await;
    assert_eq!(&next.payload[..], b"next");
    broker.shutdown().await;
}
