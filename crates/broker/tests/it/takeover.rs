//! Session takeover: a second connection with the same client id closes the first
//! (v5: DISCONNECT 0x8E) and resumes or replaces its session per clean start.

use rumqttc::v5::mqttbytes::v5 as mqtt5;

use crate::client::{V3, V5, mqtt5_options, text};
use crate::harness::{TestBroker, connect_properties, qos5, v5_connect, v5_connect_with};

#[tokio::test]
async fn v5_second_connection_with_the_same_id_gets_the_first_disconnect_0x8e() {
    let broker = TestBroker::start().await;
    let (mut first, _) = broker.raw_v5(v5_connect("same")).await;
    let mut second = V5::connect(&broker, "same").await;
    // [MQTT-3.1.4-3] the existing connection is told why (0x8E), then closed.
    first.expect_disconnect(0x8E).await;
    // The new connection is the one that works.
    second.subscribe_ok("t", 1).await;
    let mut publisher = V3::connect(&broker, "pub").await;
    publisher.publish("t", 1, false, "for the second").await;
    assert_eq!(text(&second.next_publish().await.payload), "for the second");
    assert_eq!(broker.stats().sessions_taken_over, 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn rumqttc_v5_user_sees_session_taken_over_as_the_reason() {
    let broker = TestBroker::start().await;
    let mut first = V5::connect(&broker, "same").await;
    let _second = V5::connect(&broker, "same").await;
    // rumqttc decodes the DISCONNECT (it cannot decode the reason-code-only short form)
    // and reports it to its user as the error that ended the connection.
    match first.closed().await {
        rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ServerDisconnect {
            reason_code,
            reason_string,
        }) => {
            assert_eq!(reason_code, mqtt5::DisconnectReasonCode::SessionTakenOver);
            assert_eq!(reason_string.as_deref(), Some("session taken over"));
        }
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn v3_second_connection_with_the_same_id_closes_the_first() {
    let broker = TestBroker::start().await;
    let (mut first, _) = broker.raw_v311("same", true).await;
    let (mut second, _) = broker.raw_v311("same", true).await;
    // v3 has no DISCONNECT from the server: the first connection is simply closed.
    first.expect_closed().await;
    second.ping_fence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn takeover_without_clean_session_resumes_the_session_and_its_subscriptions() {
    let broker = TestBroker::start().await;
    let mut options = V3::options(&broker, "resume");
    options.set_clean_session(false);
    let (mut first, ack) = V3::connect_with(options.clone()).await;
    assert!(!ack.session_present);
    first.subscribe_ok("kept/#", 1).await;

    let (mut second, ack) = V3::connect_with(options).await;
    assert!(
        ack.session_present,
        "[MQTT-3.2.2-2] the session was resumed"
    );
    first.closed().await;
    // No new SUBSCRIBE: the subscription came with the session.
    let mut publisher = V3::connect(&broker, "pub").await;
    publisher
        .publish("kept/a", 1, false, "still subscribed")
        .await;
    let publish = second.next_publish().await;
    assert_eq!(
        (publish.topic.as_str(), text(&publish.payload).as_str()),
        ("kept/a", "still subscribed")
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn takeover_with_clean_start_replaces_the_session() {
    let broker = TestBroker::start().await;
    let properties = connect_properties();
    let persistent = mqtt5_options(&broker, "replace", false, 300);
    let (mut first, _) = V5::connect_with(persistent).await;
    first.subscribe_ok("old/#", 1).await;
    first.subscribe_ok("fence", 0).await;

    let (mut second, ack) = broker
        .raw_v5(v5_connect_with("replace", true, properties))
        .await;
    assert!(
        !ack.session_present,
        "[MQTT-3.2.2-2] clean start: a new session"
    );
    // rumqttc cannot decode the reason-code-only DISCONNECT; the 0x8E itself is checked
    // with raw bytes above.
    first.closed().await;
    // The old session's subscriptions went with it: only the new one's count.
    second
        .subscribe_v5(1, mqtt5::Filter::new("fence", qos5(0)), None)
        .await;
    let mut publisher = V3::connect(&broker, "pub").await;
    publisher
        .publish("old/a", 1, false, "to the old session")
        .await;
    publisher.publish("fence", 0, false, "fence").await;
    let publish = second.recv_v5_publish().await;
    assert_eq!(
        &publish.topic[..],
        b"fence",
        "old/a was not delivered before it"
    );
    assert_eq!(broker.broker().router.len(), 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_takeover_resumes_a_session_with_expiry() {
    let broker = TestBroker::start().await;
    let expiry = mqtt5::ConnectProperties {
        session_expiry_interval: Some(60),
        ..connect_properties()
    };
    let (mut first, ack) = broker
        .raw_v5(v5_connect_with("expiring", false, expiry))
        .await;
    assert!(!ack.session_present);
    first
        .subscribe_v5(1, mqtt5::Filter::new("kept", qos5(2)), None)
        .await;
    let (mut second, ack) = V5::connect_with(mqtt5_options(&broker, "expiring", false, 60)).await;
    assert!(ack.session_present);
    first.expect_disconnect(0x8E).await;
    let mut publisher = V5::connect(&broker, "pub").await;
    publisher.publish("kept", 2, false, "exactly once").await;
    let publish = second.next_publish().await;
    assert_eq!(text(&publish.payload), "exactly once");
    assert_eq!(publish.qos, qos5(2));
    broker.shutdown().await;
}

#[tokio::test]
async fn takeover_resumes_messages_the_old_connection_left_unacknowledged() {
    let broker = TestBroker::start().await;
    let (mut first, _) = broker.raw_v311("inflight", false).await;
    first.subscribe_v4(1, "work", 1).await;
    let mut publisher = V3::connect(&broker, "pub").await;
    publisher.publish("work", 1, false, "unacked").await;
    let original = first.recv_v4_publish().await;

    // The same client comes back on a new connection while the old one is still open.
    let (mut second, present) = broker.raw_v311("inflight", false).await;
    assert!(present);
    first.expect_closed().await;
    let again = second.recv_v4_publish().await;
    assert_eq!(
        (again.dup, again.pkid, &again.payload[..]),
        (true, original.pkid, &b"unacked"[..])
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn simultaneous_connections_with_one_client_id_leave_exactly_one_connected() {
    let broker = TestBroker::start().await;
    let mut attempts = Vec::new();
    for _ in 0..8 {
        let mut raw = broker.raw().await;
        raw.send(&crate::harness::connect_v311_with("crowd", false, 60))
            .await;
        attempts.push(raw);
    }
    // Every attempt is answered; all but one are then closed by the next takeover.
    let mut open = 0;
    for raw in &mut attempts {
        assert_eq!(raw.recv(2).await, [0x20, 0x02]);
        let rest = raw.recv(2).await;
        assert_eq!(rest[1], 0x00, "accepted");
        let mut byte = [0u8; 1];
        match tokio::time::timeout(
            crate::harness::QUIET,
            tokio::io::AsyncReadExt::read(&mut raw.stream, &mut byte),
        )
        .await
        {
            Err(_) => open += 1, // still open
            Ok(Ok(0)) => {}      // closed by a later takeover
            Ok(other) => panic!("unexpected {other:?} {byte:?}"),
        }
    }
    assert_eq!(open, 1, "exactly one connection keeps the client id");
    assert_eq!(broker.broker().registry.connected_len(), 1);
    assert_eq!(broker.stats().sessions_taken_over, 7);
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_takeover_with_clean_start_publishes_a_delayed_will_at_once() {
    let broker = TestBroker::start().await;
    let mut watcher = V3::connect(&broker, "watcher").await;
    watcher.subscribe_ok("will/#", 1).await;
    let expiry = mqtt5::ConnectProperties {
        session_expiry_interval: Some(300),
        ..connect_properties()
    };
    let will_properties = mqtt5::LastWillProperties {
        delay_interval: Some(300),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: vec![],
    };
    let will = mqtt5::LastWill::new("will/old", "gone", qos5(1), false, Some(will_properties));
    let (mut old, _) = broker
        .raw_v5_with_will(v5_connect_with("old", false, expiry), Some(will))
        .await;
    let (_new, ack) = broker
        .raw_v5(v5_connect_with("old", true, connect_properties()))
        .await;
    assert!(!ack.session_present);
    old.expect_disconnect(0x8E).await;
    // The old session ended with the takeover, so its will does not wait out its delay.
    assert_eq!(text(&watcher.next_publish().await.payload), "gone");
    broker.shutdown().await;
}
