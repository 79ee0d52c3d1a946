//! Keep-alive: closed after 1.5 × keep-alive of silence, 0 disables it, `max_keepalive`
//! caps it (v5 Server Keep Alive; v3 refused with return code 2, as Mosquitto does).

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5 as mqtt5;
use tokio::time::{Instant, sleep};

use crate::harness::{TestBroker, V5Packet, connect_v311_with};

/// A v5 CONNECT with clean start and the given keep alive.
fn connect_v5_keep_alive(client_id: &str, keep_alive: u16) -> mqtt5::Connect {
    mqtt5::Connect {
        keep_alive,
        ..crate::harness::v5_connect(client_id)
    }
}

#[tokio::test]
async fn silent_connection_is_closed_after_one_and_a_half_keep_alives() {
    let broker = TestBroker::start().await;
    let (mut v3, _) = {
        let mut raw = broker.raw().await;
        raw.send(&connect_v311_with("quiet3", true, 1)).await;
        assert_eq!(raw.recv(4).await, crate::harness::CONNACK_V311_OK);
        (raw, ())
    };
    let (mut v5, _) = broker.raw_v5(connect_v5_keep_alive("quiet5", 1)).await;
    let connected = Instant::now();
    // [MQTT-3.1.2-24] v3 is simply closed; v5 is told 0x8D (keep alive timeout) first.
    v3.expect_closed().await;
    v5.expect_disconnect(0x8D).await;
    let waited = connected.elapsed();
    assert!(
        (Duration::from_millis(1400)..Duration::from_millis(2500)).contains(&waited),
        "closed after {waited:?}; expected about 1.5 s"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn keep_alive_0_disables_the_timeout() {
    let broker = TestBroker::start().await;
    let mut off = broker.raw().await;
    off.send(&connect_v311_with("off", true, 0)).await;
    assert_eq!(off.recv(4).await, crate::harness::CONNACK_V311_OK);
    // A keep-alive-1 client connected at the same time serves as the clock.
    let mut clock = broker.raw().await;
    clock.send(&connect_v311_with("clock", true, 1)).await;
    assert_eq!(clock.recv(4).await, crate::harness::CONNACK_V311_OK);
    clock.expect_closed().await;
    // As long silent, and still served.
    off.ping_fence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn any_packet_from_the_client_restarts_the_keep_alive_timer() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.send(&connect_v311_with("busy", true, 1)).await;
    assert_eq!(raw.recv(4).await, crate::harness::CONNACK_V311_OK);
    // Sleeps are the point here: activity at 1.0 s must carry the connection past 1.5 s.
    sleep(Duration::from_millis(1000)).await;
    raw.send(&[
        0x30, 0x04, // PUBLISH QoS 0, remaining length 4
        0x00, 0x01, b't', // topic "t"
        b'x', // payload
    ])
    .await;
    sleep(Duration::from_millis(1100)).await;
    // 2.1 s after CONNECT, 1.1 s after the PUBLISH: still open.
    raw.ping_fence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn max_keepalive_lowers_a_v5_keep_alive_and_says_so_in_connack() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_keepalive = 1).await;
    let (mut raw, ack) = broker.raw_v5(connect_v5_keep_alive("capped", 60)).await;
    let connected = Instant::now();
    // [MQTT-3.2.2-21] the client must use the Server Keep Alive; the broker enforces it.
    assert_eq!(ack.properties.unwrap().server_keep_alive, Some(1));
    raw.expect_disconnect(0x8D).await;
    assert!(connected.elapsed() < Duration::from_millis(2500));
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_keep_alive_within_max_keepalive_gets_no_server_keep_alive() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_keepalive = 30).await;
    let (_raw, ack) = broker.raw_v5(connect_v5_keep_alive("fine", 30)).await;
    assert_eq!(ack.properties.unwrap().server_keep_alive, None);
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_keep_alive_0_gets_server_keep_alive_when_max_keepalive_is_set() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_keepalive = 30).await;
    let (_raw, ack) = broker.raw_v5(connect_v5_keep_alive("never", 0)).await;
    // "Off" is longer than any cap: the client is told to use the maximum.
    assert_eq!(ack.properties.unwrap().server_keep_alive, Some(30));
    broker.shutdown().await;
}

#[tokio::test]
async fn v3_keep_alive_above_max_keepalive_is_refused_with_return_code_2() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_keepalive = 30).await;
    let mut refused = broker.raw().await;
    refused.send(&connect_v311_with("long", true, 31)).await;
    // v3 cannot be told a Server Keep Alive: CONNACK 2 (identifier rejected), as Mosquitto.
    assert_eq!(refused.recv_until_closed().await, [0x20, 0x02, 0x00, 0x02]);

    let mut accepted = broker.raw().await;
    accepted.send(&connect_v311_with("exact", true, 30)).await;
    assert_eq!(accepted.recv(4).await, crate::harness::CONNACK_V311_OK);
    broker.shutdown().await;
}

#[tokio::test]
async fn v5_pingreq_gets_pingresp() {
    let broker = TestBroker::start().await;
    let (mut raw, _) = broker.raw_v5(crate::harness::v5_connect("ping")).await;
    raw.send(&[0xC0, 0x00]).await; // PINGREQ
    assert!(matches!(raw.recv_v5().await, V5Packet::PingResp(_)));
    broker.shutdown().await;
}
