//! The client against a scripted broker over an in-memory stream, on virtual time.

use bytes::{Bytes, BytesMut};
use midge_proto::{
    ConnAckProperties, Decoder, DisconnectProperties, PublishProperties, RetainHandling,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

/// The broker end: decodes what the client sends (server-side decoder), sends packets.
struct Broker {
    io: DuplexStream,
    decoder: Decoder,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Broker {
    async fn recv(&mut self) -> Packet {
        loop {
            if let Some(packet) = self
                .decoder
                .decode(&mut self.buf)
                .expect("client sent valid bytes")
            {
                return packet;
            }
            let n = tokio::time::timeout(Duration::from_secs(30), self.io.read_buf(&mut self.buf))
                .await
                .expect("client packet in time")
                .expect("read");
            assert!(n > 0, "client closed the connection");
        }
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.encode(self.version, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }
}

fn connack(reason: ReasonCode, properties: ConnAckProperties) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: reason,
        properties,
    })
}

fn publish(qos: QoS, packet_id: u16, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: "t".into(),
        packet_id,
        properties: PublishProperties::default(),
        payload: Bytes::from_static(payload),
    }
}

/// Starts `Client::handshake` against a broker that answers CONNECT with `answer`.
async fn connected(
    version: ProtocolVersion,
    keep_alive: u16,
    answer: Packet,
) -> (Result<Client, Error>, Broker, Connect) {
    let (client_io, broker_io) = tokio::io::duplex(4096);
    let mut broker = Broker {
        io: broker_io,
        decoder: Decoder::new(midge_proto::MAX_PACKET_SIZE),
        buf: BytesMut::new(),
        version,
    };
    let mut options = ConnectOptions::new(version, "c1");
    options.connect.keep_alive = keep_alive;
    let client = tokio::spawn(Client::handshake(Box::new(client_io), options));
    let Packet::Connect(connect) = broker.recv().await else {
        panic!("first packet is not CONNECT");
    };
    broker.send(answer).await;
    (client.await.unwrap(), broker, *connect)
}

#[tokio::test(start_paused = true)]
async fn connect_sends_the_options_and_keeps_the_connack() {
    let properties = ConnAckProperties {
        assigned_client_identifier: Some("given".into()),
        server_keep_alive: Some(7),
        ..ConnAckProperties::default()
    };
    let (client, _broker, connect) = connected(
        ProtocolVersion::V5,
        60,
        connack(ReasonCode::SUCCESS, properties),
    )
    .await;
    let client = client.unwrap();
    assert_eq!(connect.client_id, "c1");
    assert_eq!(connect.protocol, ProtocolVersion::V5);
    assert!(connect.clean_start);
    assert_eq!(
        client
            .connack()
            .properties
            .assigned_client_identifier
            .as_deref(),
        Some("given")
    );
    // [MQTT-3.2.2-21] the broker's Server Keep Alive replaces ours.
    assert_eq!(client.keep_alive(), Some(Duration::from_secs(7)));
}

#[tokio::test(start_paused = true)]
async fn a_v3_refusal_keeps_the_return_code_and_counts_as_auth() {
    // A v3 CONNACK return code 5 decodes as "not authorized".
    let (client, _broker, _) = connected(
        ProtocolVersion::V311,
        60,
        connack(ReasonCode::NOT_AUTHORIZED, ConnAckProperties::default()),
    )
    .await;
    let error = client.unwrap_err();
    assert!(error.is_auth(), "{error:?}");
    assert_eq!(
        error.to_string(),
        "connection refused: not authorized (return code 5)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_v5_refusal_carries_the_reason_string() {
    let (client, _broker, _) = connected(
        ProtocolVersion::V5,
        60,
        connack(
            ReasonCode::SERVER_BUSY,
            ConnAckProperties {
                reason_string: Some("too many".into()),
                ..ConnAckProperties::default()
            },
        ),
    )
    .await;
    let error = client.unwrap_err();
    assert!(!error.is_auth());
    assert_eq!(
        error.to_string(),
        "connection refused: server busy (0x89): too many"
    );
}

#[tokio::test(start_paused = true)]
async fn no_connack_in_time_is_a_timeout() {
    let (client_io, _broker_io) = tokio::io::duplex(4096);
    let error = Client::handshake(
        Box::new(client_io),
        ConnectOptions::new(ProtocolVersion::V311, "c"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, Error::Timeout("waiting for CONNACK")),
        "{error:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn qos2_publish_runs_pubrec_pubrel_pubcomp() {
    let (client, mut broker, _) = connected(
        ProtocolVersion::V311,
        60,
        connack(ReasonCode::SUCCESS, Default::default()),
    )
    .await;
    let mut client = client.unwrap();
    let publishing = tokio::spawn(async move {
        let reason = client.publish(publish(QoS::ExactlyOnce, 0, b"x")).await;
        (client, reason)
    });
    let Packet::Publish(sent) = broker.recv().await else {
        panic!("expected PUBLISH")
    };
    assert_eq!(sent.qos, QoS::ExactlyOnce);
    assert_ne!(sent.packet_id, 0, "QoS 2 needs a packet id");
    broker
        .send(Packet::PubRec(PubResponse::success(sent.packet_id)))
        .await;
    assert_eq!(
        broker.recv().await,
        Packet::PubRel(PubResponse::success(sent.packet_id))
    );
    assert!(!publishing.is_finished());
    broker
        .send(Packet::PubComp(PubResponse::success(sent.packet_id)))
        .await;
    let (_client, reason) = publishing.await.unwrap();
    assert_eq!(reason.unwrap(), ReasonCode::SUCCESS);
}

#[tokio::test(start_paused = true)]
async fn a_refused_qos1_publish_is_rejected_and_a_pubrec_error_ends_qos2() {
    let (client, mut broker, _) = connected(
        ProtocolVersion::V5,
        60,
        connack(ReasonCode::SUCCESS, Default::default()),
    )
    .await;
    let mut client = client.unwrap();
    let publishing = tokio::spawn(async move {
        let first = client.publish(publish(QoS::AtLeastOnce, 0, b"x")).await;
        let second = client.publish(publish(QoS::ExactlyOnce, 0, b"y")).await;
        (first, second)
    });
    let Packet::Publish(first) = broker.recv().await else {
        panic!("expected PUBLISH")
    };
    let mut refusal = PubResponse::success(first.packet_id);
    refusal.reason_code = ReasonCode::NOT_AUTHORIZED;
    broker.send(Packet::PubAck(refusal)).await;
    let Packet::Publish(second) = broker.recv().await else {
        panic!("expected PUBLISH")
    };
    assert_ne!(first.packet_id, second.packet_id);
    let mut refusal = PubResponse::success(second.packet_id);
    refusal.reason_code = ReasonCode::QUOTA_EXCEEDED;
    broker.send(Packet::PubRec(refusal)).await;
    let (first, second) = publishing.await.unwrap();
    let first = first.unwrap_err();
    assert!(first.is_auth(), "{first:?}");
    assert_eq!(first.to_string(), "publish refused: not authorized (0x87)");
    assert!(matches!(
        second,
        Err(Error::Rejected {
            reason: ReasonCode::QUOTA_EXCEEDED,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn inbound_qos2_repeats_are_acknowledged_but_delivered_once() {
    let (client, mut broker, _) = connected(
        ProtocolVersion::V311,
        0,
        connack(ReasonCode::SUCCESS, Default::default()),
    )
    .await;
    let mut client = client.unwrap();
    broker
        .send(Packet::Publish(publish(QoS::ExactlyOnce, 5, b"two")))
        .await;
    let mut repeat = publish(QoS::ExactlyOnce, 5, b"two");
    repeat.dup = true;
    broker.send(Packet::Publish(repeat)).await;
    broker.send(Packet::PubRel(PubResponse::success(5))).await;
    broker
        .send(Packet::Publish(publish(QoS::AtLeastOnce, 6, b"one")))
        .await;
    assert_eq!(client.recv().await.unwrap().payload, "two");
    assert_eq!(client.recv().await.unwrap().payload, "one");
    assert_eq!(broker.recv().await, Packet::PubRec(PubResponse::success(5)));
    assert_eq!(broker.recv().await, Packet::PubRec(PubResponse::success(5)));
    assert_eq!(
        broker.recv().await,
        Packet::PubComp(PubResponse::success(5))
    );
    assert_eq!(broker.recv().await, Packet::PubAck(PubResponse::success(6)));
}

#[tokio::test(start_paused = true)]
async fn publications_arriving_during_subscribe_are_kept_for_recv() {
    let (client, mut broker, _) = connected(
        ProtocolVersion::V5,
        0,
        connack(ReasonCode::SUCCESS, Default::default()),
    )
    .await;
    let mut client = client.unwrap();
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        retain_handling: RetainHandling::SendAtSubscribe,
        ..SubscriptionOptions::default()
    };
    let subscribing = tokio::spawn(async move {
        let granted = client
            .subscribe(vec![("t".into(), options)], SubscribeProperties::default())
            .await;
        (client, granted)
    });
    let Packet::Subscribe(subscribe) = broker.recv().await else {
        panic!("expected SUBSCRIBE")
    };
    assert_eq!(subscribe.filters, vec![("t".to_owned(), options)]);
    // A retained message may come before the SUBACK.
    broker
        .send(Packet::Publish(publish(QoS::AtMostOnce, 0, b"retained")))
        .await;
    broker
        .send(Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            reason_codes: vec![ReasonCode::GRANTED_QOS_1],
            properties: Default::default(),
        }))
        .await;
    let (mut client, granted) = subscribing.await.unwrap();
    assert_eq!(granted.unwrap(), vec![ReasonCode::GRANTED_QOS_1]);
    assert_eq!(client.recv().await.unwrap().payload, "retained");
}

#[tokio::test(start_paused = true)]
async fn keep_alive_pings_and_a_missing_pingresp_is_a_timeout() {
    let (client, mut broker, _) = connected(
        ProtocolVersion::V311,
        5,
        connack(ReasonCode::SUCCESS, Default::default()),
    )
    .await;
    let mut client = client.unwrap();
    let started = Instant::now();
    let receiving = tokio::spawn(async move { client.recv().await.map(|_| ()) });
    assert_eq!(broker.recv().await, Packet::PingReq);
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    broker.send(Packet::PingResp).await;
    assert_eq!(broker.recv().await, Packet::PingReq);
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    // No PINGRESP this time: the client gives up one keep-alive later.
    let error = receiving.await.unwrap().unwrap_err();
    assert!(
        matches!(error, Error::Timeout("waiting for PINGRESP")),
        "{error:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(15));
}

#[tokio::test(start_paused = true)]
async fn a_broker_disconnect_names_the_reason() {
    let (client, mut broker, _) = connected(
        ProtocolVersion::V5,
        0,
        connack(ReasonCode::SUCCESS, Default::default()),
    )
    .await;
    let mut client = client.unwrap();
    broker
        .send(Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::SESSION_TAKEN_OVER,
            properties: DisconnectProperties {
                reason_string: Some("another connection".into()),
                ..DisconnectProperties::default()
            },
        }))
        .await;
    let error = client.recv().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "disconnected by the broker: session taken over (0x8e): another connection"
    );
}

#[tokio::test(start_paused = true)]
async fn disconnect_sends_disconnect_and_closes() {
    let (client, mut broker, _) = connected(
        ProtocolVersion::V311,
        0,
        connack(ReasonCode::SUCCESS, Default::default()),
    )
    .await;
    client
        .unwrap()
        .disconnect(Disconnect::default())
        .await
        .unwrap();
    assert_eq!(
        broker.recv().await,
        Packet::Disconnect(Disconnect::default())
    );
    let mut rest = Vec::new();
    assert_eq!(broker.io.read_to_end(&mut rest).await.unwrap(), 0);
}
