//! Persistent sessions: subscriptions kept, QoS 1/2 queued while offline and delivered in
//! order, session present, QoS 0 not queued by default; v5 session expiry.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{self as mqtt5, LastWill};
use tokio::time::Instant;

use crate::client::{V3, V5, mqtt5_options, text};
use crate::harness::{TestBroker, connect_properties, qos4, qos5, v5_connect_with};

/// Publishes the offline batch: QoS 1 and 2 messages around a QoS 0 one.
async fn publish_offline_batch(broker: &TestBroker) {
    let mut publisher = V3::connect(broker, "pub").await;
    publisher.publish("s/1", 1, false, "one").await;
    publisher.publish("s/2", 2, false, "two").await;
    publisher.publish("s/3", 0, false, "zero").await;
    publisher.publish("s/4", 1, false, "four").await;
    publisher.publish("s/5", 2, false, "five").await;
}

#[tokio::test]
async fn v311_persistent_session_keeps_subscriptions_and_queues_qos1_and_qos2_in_order() {
    let broker = TestBroker::start().await;
    let mut options = V3::options(&broker, "persistent");
    options.set_clean_session(false);
    let (mut client, ack) = V3::connect_with(options.clone()).await;
    assert!(!ack.session_present, "no session existed");
    client.subscribe_ok("s/#", 2).await;
    client.disconnect().await;

    publish_offline_batch(&broker).await;

    let (mut client, ack) = V3::connect_with(options).await;
    assert!(ack.session_present, "[MQTT-3.2.2-2]");
    let mut got = Vec::new();
    for _ in 0..4 {
        let p = client.next_publish().await;
        got.push((p.topic.clone(), text(&p.payload), p.qos));
    }
    assert_eq!(
        got,
        [
            ("s/1".to_owned(), "one".to_owned(), qos4(1)),
            ("s/2".to_owned(), "two".to_owned(), qos4(2)),
            ("s/4".to_owned(), "four".to_owned(), qos4(1)),
            ("s/5".to_owned(), "five".to_owned(), qos4(2)),
        ]
    );
    // The subscription is still there for live messages; the QoS 0 one never queued.
    V3::connect(&broker, "late")
        .await
        .publish("s/6", 0, false, "live")
        .await;
    assert_eq!(text(&client.next_publish().await.payload), "live");
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_session_with_expiry_keeps_subscriptions_and_queues_qos1_and_qos2_in_order() {
    let broker = TestBroker::start().await;
    let options = mqtt5_options(&broker, "persistent5", false, 60);
    let (mut client, ack) = V5::connect_with(options.clone()).await;
    assert!(!ack.session_present);
    client.subscribe_ok("s/#", 2).await;
    client.disconnect().await;

    publish_offline_batch(&broker).await;

    let (mut client, ack) = V5::connect_with(options).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    for _ in 0..4 {
        let p = client.next_publish().await;
        got.push((text(&p.payload), p.qos));
    }
    assert_eq!(
        got,
        [
            ("one".to_owned(), qos5(1)),
            ("two".to_owned(), qos5(2)),
            ("four".to_owned(), qos5(1)),
            ("five".to_owned(), qos5(2)),
        ]
    );
    V3::connect(&broker, "late")
        .await
        .publish("s/6", 0, false, "live")
        .await;
    assert_eq!(text(&client.next_publish().await.payload), "live");
    broker.shutdown().await;
}

#[tokio::test]
async fn qos0_is_queued_offline_when_configured() {
    let broker = TestBroker::start_with(|c| c.mqtt.queue_qos0_offline = true).await;
    let mut options = V3::options(&broker, "keepall");
    options.set_clean_session(false);
    let (mut client, _) = V3::connect_with(options.clone()).await;
    client.subscribe_ok("s/#", 2).await;
    client.disconnect().await;
    publish_offline_batch(&broker).await;
    let (mut client, _) = V3::connect_with(options).await;
    let mut payloads = Vec::new();
    for _ in 0..5 {
        payloads.push(text(&client.next_publish().await.payload));
    }
    assert_eq!(payloads, ["one", "two", "zero", "four", "five"]);
    broker.shutdown().await;
}

#[tokio::test]
async fn clean_session_discards_the_stored_session() {
    let broker = TestBroker::start().await;
    let mut persistent = V3::options(&broker, "cleaned");
    persistent.set_clean_session(false);
    let (mut client, _) = V3::connect_with(persistent.clone()).await;
    client.subscribe_ok("gone/#", 1).await;
    client.disconnect().await;

    // [MQTT-3.1.2-6] clean session 1: the stored session is discarded.
    let (mut client, ack) = V3::connect_with(V3::options(&broker, "cleaned")).await;
    assert!(!ack.session_present);
    client.subscribe_ok("fence", 0).await;
    let mut publisher = V3::connect(&broker, "pub").await;
    publisher
        .publish("gone/a", 1, false, "old subscription")
        .await;
    publisher.publish("fence", 0, false, "fence").await;
    assert_eq!(text(&client.next_publish().await.payload), "fence");
    client.disconnect().await;

    // A clean session ends with its connection: nothing to resume afterwards.
    let (_client, ack) = V3::connect_with(persistent).await;
    assert!(!ack.session_present);
    broker.shutdown().await;
}

/// A raw v5 client with `expiry` (or none) and clean start as given.
async fn raw_v5_expiry(
    broker: &TestBroker,
    client_id: &str,
    clean_start: bool,
    expiry: Option<u32>,
) -> (crate::harness::Raw, bool) {
    let properties = mqtt5::ConnectProperties {
        session_expiry_interval: expiry,
        ..connect_properties()
    };
    let (raw, ack) = broker
        .raw_v5(v5_connect_with(client_id, clean_start, properties))
        .await;
    (raw, ack.session_present)
}

/// DISCONNECT, reason 0, with Session Expiry Interval `expiry`.
fn disconnect_with_expiry(expiry: u32) -> Vec<u8> {
    let mut packet = vec![
        0xE0, 0x07, // DISCONNECT, remaining length 7
        0x00, // reason: normal disconnection
        0x05, // properties length 5
        0x11, // session expiry interval:
    ];
    packet.extend(expiry.to_be_bytes());
    packet
}

#[tokio::test]
async fn v5_session_ends_when_its_expiry_interval_passes() {
    let broker = TestBroker::start().await;
    let (mut raw, present) = raw_v5_expiry(&broker, "short", true, Some(1)).await;
    assert!(!present);
    raw.send(&[0xE0, 0x00]).await; // DISCONNECT
    raw.expect_closed().await;
    // Back within the interval: resumed.
    let (mut raw, present) = raw_v5_expiry(&broker, "short", false, Some(1)).await;
    assert!(present);
    raw.send(&[0xE0, 0x00]).await;
    raw.expect_closed().await;
    let parked = Instant::now();

    broker
        .eventually("the session to expire", |b| {
            b.stats.snapshot().sessions_expired == 1
        })
        .await;
    let waited = parked.elapsed();
    assert!(
        waited >= Duration::from_millis(950),
        "expired after {waited:?}, before 1 s"
    );
    let (mut raw, present) = raw_v5_expiry(&broker, "short", false, Some(1)).await;
    assert!(!present, "the expired session is gone");
    assert_new_session_receives(&broker, &mut raw).await;
    broker.shutdown().await;
}

/// The session now using a client id gets what it subscribes to: nothing of an ended
/// session with that id stands in its way.
async fn assert_new_session_receives(broker: &TestBroker, raw: &mut crate::harness::Raw) {
    raw.subscribe_v5(1, mqtt5::Filter::new("alive", qos5(1)), None)
        .await;
    V3::connect(broker, "pub")
        .await
        .publish("alive", 1, false, "yes")
        .await;
    assert_eq!(&raw.recv_v5_publish().await.payload[..], b"yes");
}

#[tokio::test]
async fn client_id_of_a_session_that_expired_with_a_delayed_will_is_usable_again() {
    let broker = TestBroker::start().await;
    let properties = mqtt5::ConnectProperties {
        session_expiry_interval: Some(1),
        ..connect_properties()
    };
    let will_properties = mqtt5::LastWillProperties {
        delay_interval: Some(1),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: vec![],
    };
    let will = LastWill::new("will/again", "gone", qos5(0), false, Some(will_properties));
    let (raw, _) = broker
        .raw_v5_with_will(v5_connect_with("again", true, properties), Some(will))
        .await;
    drop(raw);
    broker
        .eventually("the session to expire", |b| {
            b.stats.snapshot().sessions_expired == 1 && b.stats.snapshot().wills_published == 1
        })
        .await;
    let (mut raw, present) = raw_v5_expiry(&broker, "again", false, Some(60)).await;
    assert!(!present);
    assert_new_session_receives(&broker, &mut raw).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_session_expiry_0xffffffff_does_not_expire() {
    let broker = TestBroker::start().await;
    let (mut raw, _) = raw_v5_expiry(&broker, "forever", true, Some(u32::MAX)).await;
    raw.send(&[0xE0, 0x00]).await;
    raw.expect_closed().await;
    // A control session with expiry 1 s expires meanwhile: the clock has run.
    let (mut control, _) = raw_v5_expiry(&broker, "control", true, Some(1)).await;
    control.send(&[0xE0, 0x00]).await;
    control.expect_closed().await;
    broker
        .eventually("the control session to expire", |b| {
            b.stats.snapshot().sessions_expired == 1
        })
        .await;
    let (_raw, present) = raw_v5_expiry(&broker, "forever", false, Some(u32::MAX)).await;
    assert!(present);
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_disconnect_with_session_expiry_0_ends_the_session_at_once() {
    let broker = TestBroker::start().await;
    let (mut raw, _) = raw_v5_expiry(&broker, "brief", true, Some(300)).await;
    raw.send(&disconnect_with_expiry(0)).await;
    raw.expect_closed().await;
    assert_eq!(broker.broker().registry.parked_len(), 0);
    let (mut raw, present) = raw_v5_expiry(&broker, "brief", false, Some(300)).await;
    assert!(!present);
    assert_new_session_receives(&broker, &mut raw).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_disconnect_can_lengthen_the_session_expiry() {
    let broker = TestBroker::start().await;
    let (mut longer, _) = raw_v5_expiry(&broker, "longer", true, Some(1)).await;
    longer.send(&disconnect_with_expiry(300)).await;
    longer.expect_closed().await;
    let (mut control, _) = raw_v5_expiry(&broker, "control", true, Some(1)).await;
    control.send(&[0xE0, 0x00]).await;
    control.expect_closed().await;
    broker
        .eventually("the control session to expire", |b| {
            b.stats.snapshot().sessions_expired == 1
        })
        .await;
    let (_raw, present) = raw_v5_expiry(&broker, "longer", false, Some(1)).await;
    assert!(present, "the DISCONNECT's 300 s replaced the CONNECT's 1 s");
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_disconnect_setting_expiry_after_0_at_connect_is_a_protocol_error() {
    let broker = TestBroker::start().await;
    let mut watcher = V3::connect(&broker, "watcher").await;
    watcher.subscribe_ok("will/#", 1).await;
    let will = LastWill::new("will/zero", "gone", qos5(1), false, None);
    let (mut raw, _) = broker
        .raw_v5_with_will(
            v5_connect_with("zero", true, connect_properties()),
            Some(will),
        )
        .await;
    raw.send(&disconnect_with_expiry(30)).await;
    // [MQTT-3.14.2-2] a Protocol Error: the broker answers 0x82, and as the DISCONNECT was
    // not accepted, the will is published and no session is kept.
    raw.expect_disconnect(0x82).await;
    assert_eq!(text(&watcher.next_publish().await.payload), "gone");
    let (_raw, present) = raw_v5_expiry(&broker, "zero", false, Some(30)).await;
    assert!(!present);
    broker.shutdown().await;
}

#[tokio::test]
async fn max_session_expiry_caps_every_session() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_session_expiry_secs = 1).await;
    let (mut v5, ack) = broker
        .raw_v5(v5_connect_with(
            "asks-long",
            true,
            mqtt5::ConnectProperties {
                session_expiry_interval: Some(300),
                ..connect_properties()
            },
        ))
        .await;
    // v5 3.2.2.3.2: the client is told the expiry the broker will use.
    assert_eq!(ack.properties.unwrap().session_expiry_interval, Some(1));
    v5.send(&disconnect_with_expiry(600)).await; // a longer one at DISCONNECT is capped too
    v5.expect_closed().await;
    let (mut v3, _) = broker.raw_v311("never-expires", false).await;
    v3.send(&[0xE0, 0x00]).await;
    v3.expect_closed().await;
    let parked = Instant::now();
    broker
        .eventually("both sessions to expire", |b| {
            b.stats.snapshot().sessions_expired == 2
        })
        .await;
    assert!(parked.elapsed() >= Duration::from_millis(900));
    let (_v3, present) = broker.raw_v311("never-expires", false).await;
    assert!(!present);
    broker.shutdown().await;
}

#[tokio::test]
async fn v311_session_can_be_resumed_by_a_v5_connection() {
    let broker = TestBroker::start().await;
    let (mut v3, _) = broker.raw_v311("upgrader", false).await;
    v3.subscribe_v4(1, "up/#", 1).await;
    let mut publisher = V3::connect(&broker, "pub").await;
    publisher.publish("up/a", 1, false, "in flight").await;
    let in_flight = v3.recv_v4_publish().await;
    drop(v3); // never acknowledged
    broker
        .eventually("the session to be parked", |b| b.registry.parked_len() == 1)
        .await;
    publisher.publish("up/b", 1, false, "queued").await;

    // The same client id comes back speaking MQTT 5, keeping the session.
    let (mut v5, present) = raw_v5_expiry(&broker, "upgrader", false, Some(60)).await;
    assert!(present);
    let again = v5.recv_v5_publish().await;
    assert_eq!(
        (again.dup, again.pkid, &again.payload[..]),
        (true, in_flight.pkid, &b"in flight"[..])
    );
    let queued = v5.recv_v5_publish().await;
    assert_eq!(&queued.payload[..], b"queued");
    broker.shutdown().await;
}
