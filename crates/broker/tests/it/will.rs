//! Wills: published whenever a connection ends without a normal DISCONNECT, not after
//! one; v5 DISCONNECT 0x04; will delay (and its cancellation on resume); will properties.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{self as mqtt5, LastWill, LastWillProperties};
use tokio::time::Instant;

use crate::client::{V3, V5, text};
use crate::harness::{TestBroker, V4Packet, connect_properties, qos4, qos5, v5_connect_with};

/// A watcher subscribed to `will/#` at QoS 1 and to `fence`.
async fn watcher(broker: &TestBroker) -> V3 {
    let mut watcher = V3::connect(broker, "watcher").await;
    watcher.subscribe_ok("will/#", 1).await;
    watcher.subscribe_ok("fence", 0).await;
    watcher
}

/// Publishes to `fence` and checks it is the next thing `watcher` receives: no will came
/// before it.
async fn assert_no_will_before_fence(broker: &TestBroker, watcher: &mut V3) {
    let mut fencer = V3::connect(broker, "fencer").await;
    fencer.publish("fence", 0, false, "fence").await;
    let next = watcher.next_publish().await;
    assert_eq!(
        (next.topic.as_str(), text(&next.payload).as_str()),
        ("fence", "fence"),
        "a will was published"
    );
}

/// rumqttc v3 options for `client_id` with a will on `will/<client_id>`, payload "gone".
fn with_will(broker: &TestBroker, client_id: &str) -> rumqttc::MqttOptions {
    let mut options = V3::options(broker, client_id);
    options.set_last_will(rumqttc::LastWill::new(
        format!("will/{client_id}"),
        "gone",
        qos4(1),
        false,
    ));
    options
}

/// A raw v3.1.1 connection with a will, through rumqttc's encoder.
async fn raw_v311_with_will(
    broker: &TestBroker,
    client_id: &str,
    keep_alive: u16,
) -> crate::harness::Raw {
    let mut connect = rumqttc::Connect::new(client_id);
    connect.keep_alive = keep_alive;
    connect.last_will = Some(rumqttc::LastWill::new(
        format!("will/{client_id}"),
        "gone",
        qos4(1),
        false,
    ));
    let mut raw = broker.raw().await;
    raw.send_v4(V4Packet::Connect(connect)).await;
    assert_eq!(raw.recv(4).await, crate::harness::CONNACK_V311_OK);
    raw
}

async fn assert_will(watcher: &mut V3, client_id: &str) {
    let will = watcher.next_publish().await;
    assert_eq!(will.topic, format!("will/{client_id}"));
    assert_eq!((text(&will.payload).as_str(), will.qos), ("gone", qos4(1)));
}

#[tokio::test]
async fn will_is_published_when_the_network_connection_drops() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher(&broker).await;
    let (client, _) = V3::connect_with(with_will(&broker, "dropped")).await;
    client.kill();
    assert_will(&mut watcher, "dropped").await;
    broker.shutdown().await;
}

#[tokio::test]
async fn will_is_published_after_a_keep_alive_timeout() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher(&broker).await;
    let mut silent = raw_v311_with_will(&broker, "silent", 1).await;
    let started = Instant::now();
    assert_will(&mut watcher, "silent").await;
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "before 1.5 × keep alive"
    );
    silent.expect_closed().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn will_is_published_after_a_protocol_error() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher(&broker).await;
    let mut rude = raw_v311_with_will(&broker, "rude", 60).await;
    rude.send(&[
        0x36, 0x04, // PUBLISH with QoS 3: malformed [MQTT-3.3.1-4]
        0x00, 0x01, b't', b'x', // topic "t", payload "x"
    ])
    .await;
    rude.expect_closed().await;
    assert_will(&mut watcher, "rude").await;
    broker.shutdown().await;
}

#[tokio::test]
async fn will_is_published_when_the_connection_is_taken_over() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher(&broker).await;
    let (mut first, _) = V3::connect_with(with_will(&broker, "twin")).await;
    let _second = V3::connect(&broker, "twin").await;
    first.closed().await;
    assert_will(&mut watcher, "twin").await;
    broker.shutdown().await;
}

#[tokio::test]
async fn will_is_not_published_after_a_normal_disconnect() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher(&broker).await;
    let (v3, _) = V3::connect_with(with_will(&broker, "polite3")).await;
    v3.disconnect().await;
    let mut options = V5::options(&broker, "polite5");
    options.set_last_will(LastWill::new("will/polite5", "gone", qos5(1), false, None));
    let (v5, _) = V5::connect_with(options).await;
    v5.disconnect().await;
    // [MQTT-3.1.2-10] (3.1.1) [MQTT-3.14.4-3] (v5): a normal DISCONNECT discards the will.
    broker
        .eventually("both sessions to end", |b| b.registry.connected_len() == 1)
        .await;
    assert_no_will_before_fence(&broker, &mut watcher).await;
    assert_eq!(broker.stats().wills_published, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_disconnect_with_will_message_publishes_the_will() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher(&broker).await;
    let will = LastWill::new("will/leaving", "gone", qos5(1), false, None);
    let (mut raw, _) = broker
        .raw_v5_with_will(
            v5_connect_with("leaving", true, connect_properties()),
            Some(will),
        )
        .await;
    raw.send(&[
        0xE0, 0x02, // DISCONNECT, remaining length 2
        0x04, // reason: disconnect with will message
        0x00, // properties length 0
    ])
    .await;
    raw.expect_closed().await;
    assert_will(&mut watcher, "leaving").await;
    broker.shutdown().await;
}

/// A raw v5 connection with session expiry `expiry` and a will delayed by `delay`.
async fn delayed_will_client(
    broker: &TestBroker,
    client_id: &str,
    clean_start: bool,
    expiry: u32,
    delay: u32,
) -> (crate::harness::Raw, mqtt5::ConnAck) {
    let properties = mqtt5::ConnectProperties {
        session_expiry_interval: Some(expiry),
        ..connect_properties()
    };
    let will_properties = LastWillProperties {
        delay_interval: Some(delay),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: vec![],
    };
    let will = LastWill::new(
        format!("will/{client_id}"),
        "gone",
        qos5(1),
        false,
        Some(will_properties),
    );
    broker
        .raw_v5_with_will(
            v5_connect_with(client_id, clean_start, properties),
            Some(will),
        )
        .await
}

#[tokio::test]
async fn v5_will_is_published_after_the_will_delay() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher(&broker).await;
    let (raw, _) = delayed_will_client(&broker, "delayed", true, 30, 1).await;
    drop(raw);
    let dropped = Instant::now();
    broker
        .eventually("the session to be parked", |b| b.registry.parked_len() == 1)
        .await;
    // Not yet: the fence comes first.
    assert_no_will_before_fence(&broker, &mut watcher).await;
    assert_will(&mut watcher, "delayed").await;
    let waited = dropped.elapsed();
    assert!(
        waited >= Duration::from_millis(950),
        "will after {waited:?}, before its 1 s delay"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_will_delay_is_cancelled_when_the_session_resumes_in_time() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher(&broker).await;
    let (raw, _) = delayed_will_client(&broker, "back", true, 30, 1).await;
    drop(raw);
    broker
        .eventually("the session to be parked", |b| b.registry.parked_len() == 1)
        .await;
    let (_raw, ack) = delayed_will_client(&broker, "back", false, 30, 1).await;
    assert!(ack.session_present);
    // [MQTT-3.1.3-9] Nothing can announce a will that is never sent: wait past the delay
    // (and a housekeeping tick), then fence.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_no_will_before_fence(&broker, &mut watcher).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_delayed_will_is_published_at_once_when_clean_start_ends_the_session() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher(&broker).await;
    let (raw, _) = delayed_will_client(&broker, "restart", true, 300, 300).await;
    drop(raw);
    broker
        .eventually("the session to be parked", |b| b.registry.parked_len() == 1)
        .await;
    // A clean start ends the old session, and with it the wait for the will.
    let (_raw, ack) = broker
        .raw_v5(v5_connect_with("restart", true, connect_properties()))
        .await;
    assert!(!ack.session_present);
    assert_will(&mut watcher, "restart").await;
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_delayed_will_is_published_when_the_session_expires_first() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher(&broker).await;
    let (raw, _) = delayed_will_client(&broker, "expiring", true, 1, 300).await;
    drop(raw);
    let dropped = Instant::now();
    // The will waits for its delay or the end of the session, whichever is first (3.1.3.2.2).
    assert_will(&mut watcher, "expiring").await;
    let waited = dropped.elapsed();
    assert!(
        waited >= Duration::from_millis(950),
        "will after {waited:?}"
    );
    assert_eq!(broker.broker().registry.parked_len(), 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_will_properties_are_carried_over_to_the_will_message() {
    let broker = TestBroker::start().await;
    let mut watcher = V5::connect(&broker, "watcher").await;
    watcher.subscribe_ok("will/#", 1).await;
    let user_properties = vec![
        ("k".to_owned(), "1".to_owned()),
        ("other".to_owned(), "x".to_owned()),
        ("k".to_owned(), "2".to_owned()),
    ];
    let will_properties = LastWillProperties {
        delay_interval: None,
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(120),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: user_properties.clone(),
    };
    let will = LastWill::new("will/props", "gone", qos5(1), false, Some(will_properties));
    let (raw, _) = broker
        .raw_v5_with_will(
            v5_connect_with("props", true, connect_properties()),
            Some(will),
        )
        .await;
    drop(raw);

    let will = watcher.next_publish().await;
    assert_eq!(
        (&will.topic[..], &will.payload[..]),
        (&b"will/props"[..], &b"gone"[..])
    );
    let p = will.properties.expect("will properties");
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.response_topic.as_deref(), Some("reply/here"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"\x00\x01corr"[..]));
    assert_eq!(
        p.user_properties, user_properties,
        "same order, duplicates kept"
    );
    let expiry = p.message_expiry_interval.expect("message expiry forwarded");
    assert!((119..=120).contains(&expiry), "remaining expiry {expiry}");
    broker.shutdown().await;
}

#[tokio::test]
async fn retained_will_becomes_the_retained_message_of_its_topic() {
    let broker = TestBroker::start().await;
    let mut options = V3::options(&broker, "status");
    options.set_last_will(rumqttc::LastWill::new(
        "status/dev",
        "offline",
        qos4(1),
        true,
    ));
    let (client, _) = V3::connect_with(options).await;
    client.kill();
    broker
        .eventually("the will to be retained", |b| b.retained.len() == 1)
        .await;
    let mut late = V3::connect(&broker, "late").await;
    late.subscribe_ok("status/#", 1).await;
    let will = late.next_publish().await;
    assert_eq!(
        (text(&will.payload).as_str(), will.retain),
        ("offline", true)
    );
    broker.shutdown().await;
}
