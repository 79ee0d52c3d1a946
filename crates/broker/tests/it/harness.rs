//! Starting a broker for a test, and talking to it with raw bytes.
//!
//! Raw connections decode what the broker sends with rumqttc's codec (`recv_v4`,
//! `recv_v5`), never with midge-proto, so a symmetric codec bug cannot pass unnoticed.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use midge_broker::stats::StatsSnapshot;
use midge_broker::{Config, Server};
use rumqttc::v5::mqttbytes::v5 as mqtt5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Every wait in these tests is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// How long a test listens to be sure a connection stays open, where no later event can
/// stand in as a fence. Kept short: it only has to outlast a loopback round trip.
pub const QUIET: Duration = Duration::from_millis(300);

/// A v3.1.1 packet as rumqttc decodes it.
pub type V4Packet = rumqttc::Packet;
/// A v5 packet as rumqttc decodes it.
pub type V5Packet = mqtt5::Packet;

/// The defaults for a test broker: one listener on a free loopback port, `$SYS` off, and
/// the memory store — many brokers run in this one process, and none may share (or leave
/// behind) the default ./data store.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.listeners[0].bind = "127.0.0.1:0".parse().unwrap();
    config.sys.interval_secs = 0;
    config.storage.backend = midge_broker::config::StorageBackend::Memory;
    // Many brokers run at once: each admin listener gets a free port.
    config.admin.bind = Some("127.0.0.1:0".parse().unwrap());
    config
}

/// A broker on a free loopback port, shut down when the test ends.
pub struct TestBroker {
    pub server: Option<Server>,
    pub addr: SocketAddr,
}

impl TestBroker {
    /// A broker with the default configuration, `$SYS` off, on a free port.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A broker with the configuration adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let mut config = test_config();
        adjust(&mut config);
        let server = Server::start(config).await.expect("broker starts");
        let addr = server.local_addrs()[0];
        Self {
            server: Some(server),
            addr,
        }
    }

    pub fn broker(&self) -> &std::sync::Arc<midge_broker::Broker> {
        self.server.as_ref().unwrap().broker()
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.broker().stats.snapshot()
    }

    /// The admin listener's address.
    pub fn admin(&self) -> SocketAddr {
        self.server
            .as_ref()
            .unwrap()
            .admin_addr()
            .expect("admin listener runs")
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// A raw TCP connection.
    pub async fn raw(&self) -> Raw {
        Raw {
            stream: TcpStream::connect(self.addr).await.expect("connect"),
        }
    }

    /// A raw v3.1.1 client, connected: CONNECT sent and an accepting CONNACK read.
    /// Returns the connection and the CONNACK's session present flag.
    pub async fn raw_v311(&self, client_id: &str, clean_session: bool) -> (Raw, bool) {
        let mut raw = self.raw().await;
        raw.send(&connect_v311_with(client_id, clean_session, 60))
            .await;
        let ack = raw.recv(4).await;
        assert_eq!(&ack[..2], [0x20, 0x02], "CONNACK header: {ack:02X?}");
        assert_eq!(ack[3], 0x00, "CONNACK return code: {ack:02X?}");
        (raw, ack[2] & 0x01 == 1)
    }

    /// A raw v5 client, connected with `connect` (encoded by rumqttc), and the CONNACK it
    /// got, which must accept it.
    pub async fn raw_v5(&self, connect: mqtt5::Connect) -> (Raw, mqtt5::ConnAck) {
        self.raw_v5_with_will(connect, None).await
    }

    /// Like [`TestBroker::raw_v5`], with a will.
    pub async fn raw_v5_with_will(
        &self,
        connect: mqtt5::Connect,
        will: Option<mqtt5::LastWill>,
    ) -> (Raw, mqtt5::ConnAck) {
        let mut raw = self.raw().await;
        raw.send_v5(V5Packet::Connect(connect, will, None)).await;
        match raw.recv_v5().await {
            V5Packet::ConnAck(ack) => {
                assert_eq!(ack.code, mqtt5::ConnectReturnCode::Success, "{ack:?}");
                (raw, ack)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Waits (bounded) until `condition` holds on the broker's state. For conditions no
    /// client can observe as an event (a session parked, a connection counted).
    pub async fn eventually(
        &self,
        what: &str,
        mut condition: impl FnMut(&midge_broker::Broker) -> bool,
    ) {
        let deadline = Instant::now() + TIMEOUT;
        while !condition(self.broker()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The interop scenario scripts run against the broker's one port.
impl crate::interop_util::Target for TestBroker {
    fn ports(&self) -> Vec<u16> {
        vec![self.port()]
    }
}

/// A v5 CONNECT for rumqttc's encoder: clean start, keep alive 60, no properties.
pub fn v5_connect(client_id: &str) -> mqtt5::Connect {
    mqtt5::Connect {
        keep_alive: 60,
        client_id: client_id.to_owned(),
        clean_start: true,
        properties: None,
    }
}

/// A v5 CONNECT with properties.
pub fn v5_connect_with(
    client_id: &str,
    clean_start: bool,
    properties: mqtt5::ConnectProperties,
) -> mqtt5::Connect {
    mqtt5::Connect {
        keep_alive: 60,
        client_id: client_id.to_owned(),
        clean_start,
        properties: Some(properties),
    }
}

/// Empty v5 CONNECT properties, to fill in with struct update syntax.
pub fn connect_properties() -> mqtt5::ConnectProperties {
    mqtt5::ConnectProperties::new()
}

/// Empty v5 PUBLISH properties.
pub fn publish_properties() -> mqtt5::PublishProperties {
    mqtt5::PublishProperties::default()
}

/// A v5 PUBLISH for rumqttc's encoder.
pub fn v5_publish(topic: &str, qos: u8, packet_id: u16, payload: &[u8]) -> mqtt5::Publish {
    let mut publish = mqtt5::Publish::new(topic, qos5(qos), payload.to_vec(), None);
    publish.pkid = packet_id;
    publish
}

pub fn qos4(qos: u8) -> rumqttc::QoS {
    rumqttc::qos(qos).expect("QoS 0, 1 or 2")
}

pub fn qos5(qos: u8) -> rumqttc::v5::mqttbytes::QoS {
    rumqttc::v5::mqttbytes::qos(qos).expect("QoS 0, 1 or 2")
}

/// A TCP connection that sends and expects exact bytes.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Encodes a v3.1.1 packet with rumqttc and sends it.
    pub async fn send_v4(&mut self, packet: V4Packet) {
        let mut buf = BytesMut::new();
        packet.write(&mut buf, usize::MAX).expect("rumqttc encodes");
        self.send(&buf).await;
    }

    /// Encodes a v5 packet with rumqttc and sends it.
    pub async fn send_v5(&mut self, packet: V5Packet) {
        let mut buf = BytesMut::new();
        packet.write(&mut buf, None).expect("rumqttc encodes");
        self.send(&buf).await;
    }

    /// Reads exactly `n` bytes.
    pub async fn recv(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        tokio::time::timeout(TIMEOUT, self.stream.read_exact(&mut buf))
            .await
            .expect("timed out waiting for bytes")
            .expect("read");
        buf
    }

    /// Reads one whole MQTT packet (fixed header and body) as bytes.
    pub async fn recv_packet(&mut self) -> Vec<u8> {
        let mut packet = self.recv(1).await;
        let mut multiplier = 1usize;
        let mut length = 0usize;
        loop {
            let byte = self.recv(1).await[0];
            packet.push(byte);
            length += usize::from(byte & 0x7F) * multiplier;
            multiplier *= 128;
            if byte & 0x80 == 0 {
                break;
            }
        }
        packet.extend(self.recv(length).await);
        packet
    }

    /// Reads one packet and decodes it as v3.1.1 with rumqttc.
    pub async fn recv_v4(&mut self) -> V4Packet {
        let bytes = self.recv_packet().await;
        V4Packet::read(&mut BytesMut::from(&bytes[..]), usize::MAX)
            .unwrap_or_else(|e| panic!("rumqttc cannot decode {bytes:02X?} as v3.1.1: {e:?}"))
    }

    /// Reads one packet and decodes it as v5 with rumqttc.
    pub async fn recv_v5(&mut self) -> V5Packet {
        let bytes = self.recv_packet().await;
        V5Packet::read(&mut BytesMut::from(&bytes[..]), None)
            .unwrap_or_else(|e| panic!("rumqttc cannot decode {bytes:02X?} as v5: {e:?}"))
    }

    /// Next v3.1.1 PUBLISH; any other packet fails the test.
    pub async fn recv_v4_publish(&mut self) -> rumqttc::Publish {
        match self.recv_v4().await {
            V4Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Next v5 PUBLISH; any other packet fails the test.
    pub async fn recv_v5_publish(&mut self) -> mqtt5::Publish {
        match self.recv_v5().await {
            V5Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Subscribes (v3.1.1) and checks the SUBACK grants what was asked.
    pub async fn subscribe_v4(&mut self, packet_id: u16, filter: &str, qos: u8) {
        let subscribe = rumqttc::Subscribe::new(filter, qos4(qos));
        let mut subscribe = subscribe;
        subscribe.pkid = packet_id;
        self.send_v4(V4Packet::Subscribe(subscribe)).await;
        match self.recv_v4().await {
            V4Packet::SubAck(ack) => {
                assert_eq!(ack.pkid, packet_id);
                assert_eq!(
                    ack.return_codes,
                    [rumqttc::SubscribeReasonCode::Success(qos4(qos))]
                );
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Subscribes (v5) with `filter` and checks the SUBACK grants its QoS.
    pub async fn subscribe_v5(&mut self, packet_id: u16, filter: mqtt5::Filter, id: Option<usize>) {
        let qos = filter.qos;
        let properties = id.map(|id| mqtt5::SubscribeProperties {
            id: Some(id),
            user_properties: vec![],
        });
        let mut subscribe = mqtt5::Subscribe::new(filter, properties);
        subscribe.pkid = packet_id;
        self.send_v5(V5Packet::Subscribe(subscribe)).await;
        match self.recv_v5().await {
            V5Packet::SubAck(ack) => {
                assert_eq!(ack.pkid, packet_id);
                assert_eq!(ack.return_codes, [mqtt5::SubscribeReasonCode::Success(qos)]);
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Sends PINGREQ and expects PINGRESP as the very next packet: everything the broker
    /// had already decided to send this connection came before it.
    pub async fn ping_fence(&mut self) {
        self.send(&[0xC0, 0x00]).await; // PINGREQ
        let packet = self.recv_packet().await;
        assert_eq!(packet, [0xD0, 0x00], "expected PINGRESP, got {packet:02X?}");
    }

    /// Waits for the broker to close the connection, returning whatever it sent first.
    pub async fn recv_until_closed(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        let result = tokio::time::timeout(TIMEOUT, async {
            let mut buf = [0u8; 4096];
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => all.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(
            result.is_ok(),
            "connection not closed within {TIMEOUT:?}; got {all:02X?}"
        );
        all
    }

    /// The broker closes the connection without sending anything (v3 style).
    pub async fn expect_closed(&mut self) {
        let rest = self.recv_until_closed().await;
        assert!(rest.is_empty(), "expected a plain close, got {rest:02X?}");
    }

    /// The broker sends a v5 DISCONNECT with `reason` and closes the connection.
    /// Returns the reason string, if the DISCONNECT carried one.
    pub async fn expect_disconnect(&mut self, reason: u8) -> Option<String> {
        let rest = self.recv_until_closed().await;
        assert!(
            rest.len() >= 3 && rest[0] == 0xE0 && usize::from(rest[1]) + 2 == rest.len(),
            "expected one DISCONNECT and a close, got {rest:02X?}"
        );
        assert_eq!(
            rest[2], reason,
            "DISCONNECT reason: expected 0x{reason:02X}, got {rest:02X?}"
        );
        if rest[1] == 1 {
            // Reason code only, no properties (allowed by 3.14.2.2.1). rumqttc 0.25 cannot
            // decode this form, so there is nothing more to read.
            return None;
        }
        match V5Packet::read(&mut BytesMut::from(&rest[..]), None) {
            Ok(V5Packet::Disconnect(d)) => d.properties.and_then(|p| p.reason_string),
            other => panic!("rumqttc decodes {rest:02X?} as {other:?}"),
        }
    }
}

/// A v3.1.1 CONNECT with clean session and keep alive 60.
pub fn connect_v311(client_id: &str) -> Vec<u8> {
    connect_v311_with(client_id, true, 60)
}

/// A v3.1.1 CONNECT without will or credentials.
pub fn connect_v311_with(client_id: &str, clean_session: bool, keep_alive: u16) -> Vec<u8> {
    let mut body = vec![
        0x00,
        0x04,
        b'M',
        b'Q',
        b'T',
        b'T',                                    // protocol name
        0x04,                                    // protocol level 4 (3.1.1)
        if clean_session { 0x02 } else { 0x00 }, // connect flags
    ];
    body.extend(keep_alive.to_be_bytes());
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// A v5 CONNECT with clean start, keep alive 60 and no properties.
pub fn connect_v5(client_id: &str) -> Vec<u8> {
    let mut body = vec![
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x00,
    ];
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// v3.1.1 CONNACK: accepted, no session present.
pub const CONNACK_V311_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
