//! rumqttc clients (v3.1.1 and v5) driven from a test: the event loop runs in its own
//! task and forwards every event, so a test awaits exactly what it expects, each wait
//! bounded by [`TIMEOUT`]. The event loop stops at the first error: rumqttc would
//! otherwise reconnect on its own, and the tests want to see the connection end.

use std::collections::VecDeque;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as mqtt5;
use rumqttc::{Outgoing, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::harness::{TIMEOUT, TestBroker, qos5};

/// A rumqttc v3.1.1 client.
pub struct V3 {
    pub client: rumqttc::AsyncClient,
    events: mpsc::UnboundedReceiver<Result<rumqttc::Event, rumqttc::ConnectionError>>,
    task: JoinHandle<()>,
    /// PUBLISHes that arrived while the test waited for something else.
    early: VecDeque<rumqttc::Publish>,
}

impl V3 {
    /// Options for `client_id` on `broker`: clean session, keep alive 60 s.
    pub fn options(broker: &TestBroker, client_id: &str) -> rumqttc::MqttOptions {
        let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", broker.port());
        options.set_keep_alive(std::time::Duration::from_secs(60));
        options
    }

    /// Connects with default options; the CONNACK must accept.
    pub async fn connect(broker: &TestBroker, client_id: &str) -> Self {
        Self::connect_with(Self::options(broker, client_id)).await.0
    }

    /// Connects; the CONNACK must accept. Returns it too.
    pub async fn connect_with(options: rumqttc::MqttOptions) -> (Self, rumqttc::ConnAck) {
        let mut client = Self::start(options);
        match client.event().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => {
                assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
                (client, ack)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Starts the event loop without waiting for anything.
    pub fn start(options: rumqttc::MqttOptions) -> Self {
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let failed = event.is_err();
                if tx.send(event).is_err() || failed {
                    break;
                }
            }
        });
        Self {
            client,
            events,
            task,
            early: VecDeque::new(),
        }
    }

    /// The next event, or the error that ended the connection.
    pub async fn event(&mut self) -> Result<rumqttc::Event, rumqttc::ConnectionError> {
        tokio::time::timeout(TIMEOUT, self.events.recv())
            .await
            .expect("timed out waiting for a rumqttc event")
            .expect("event loop ended")
    }

    /// The next packet from the broker, skipping our own outgoing events.
    pub async fn incoming(&mut self) -> rumqttc::Packet {
        loop {
            match self.event().await {
                Ok(rumqttc::Event::Incoming(packet)) => return packet,
                Ok(rumqttc::Event::Outgoing(_)) => {}
                Err(e) => panic!("connection failed: {e:?}"),
            }
        }
    }

    /// The next PUBLISH from the broker; acknowledgements and pings on the way are skipped.
    pub async fn next_publish(&mut self) -> rumqttc::Publish {
        if let Some(publish) = self.early.pop_front() {
            return publish;
        }
        loop {
            if let rumqttc::Packet::Publish(publish) = self.incoming().await {
                return publish;
            }
        }
    }

    /// Waits for an incoming packet `pick` accepts, keeping PUBLISHes that come first.
    async fn wait_for<T>(&mut self, mut pick: impl FnMut(&rumqttc::Packet) -> Option<T>) -> T {
        loop {
            let packet = self.incoming().await;
            if let Some(found) = pick(&packet) {
                return found;
            }
            if let rumqttc::Packet::Publish(publish) = packet {
                self.early.push_back(publish);
            }
        }
    }

    /// Subscribes and returns the SUBACK's return codes.
    pub async fn subscribe(&mut self, filter: &str, qos: u8) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client
            .subscribe(filter, crate::harness::qos4(qos))
            .await
            .expect("request queued");
        self.wait_for(|p| match p {
            rumqttc::Packet::SubAck(ack) => Some(ack.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Subscribes and checks the broker granted `qos`.
    pub async fn subscribe_ok(&mut self, filter: &str, qos: u8) {
        let codes = self.subscribe(filter, qos).await;
        assert_eq!(
            codes,
            [rumqttc::SubscribeReasonCode::Success(crate::harness::qos4(
                qos
            ))]
        );
    }

    pub async fn unsubscribe(&mut self, filter: &str) {
        self.client
            .unsubscribe(filter)
            .await
            .expect("request queued");
        self.wait_for(|p| matches!(p, rumqttc::Packet::UnsubAck(_)).then_some(()))
            .await;
    }

    /// Publishes and waits until the exchange is complete: written (QoS 0), PUBACK (QoS 1)
    /// or PUBCOMP (QoS 2).
    pub async fn publish(&mut self, topic: &str, qos: u8, retain: bool, payload: impl Into<Bytes>) {
        let qos = crate::harness::qos4(qos);
        self.client
            .publish_bytes(topic, qos, retain, payload.into())
            .await
            .expect("request queued");
        match qos {
            QoS::AtMostOnce => loop {
                match self.event().await {
                    Ok(rumqttc::Event::Outgoing(Outgoing::Publish(_))) => return,
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        self.early.push_back(p)
                    }
                    Ok(_) => {}
                    Err(e) => panic!("connection failed: {e:?}"),
                }
            },
            QoS::AtLeastOnce => {
                self.wait_for(|p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(()))
                    .await
            }
            QoS::ExactlyOnce => {
                self.wait_for(|p| matches!(p, rumqttc::Packet::PubComp(_)).then_some(()))
                    .await
            }
        }
    }

    /// Waits for the connection to end and returns why.
    pub async fn closed(&mut self) -> rumqttc::ConnectionError {
        loop {
            match self.event().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    self.early.push_back(p)
                }
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    }

    /// Drops the connection without DISCONNECT, like a network failure.
    pub fn kill(self) {
        self.task.abort();
    }

    /// Sends DISCONNECT and waits for the broker to close the connection.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("request queued");
        self.closed().await;
    }
}

impl Drop for V3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A rumqttc v5 client.
pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    events: mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, rumqttc::v5::ConnectionError>>,
    task: JoinHandle<()>,
    early: VecDeque<mqtt5::Publish>,
}

impl V5 {
    /// Options for `client_id` on `broker`: clean start, keep alive 60 s.
    pub fn options(broker: &TestBroker, client_id: &str) -> rumqttc::v5::MqttOptions {
        let mut options = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", broker.port());
        options.set_keep_alive(std::time::Duration::from_secs(60));
        options
    }

    pub async fn connect(broker: &TestBroker, client_id: &str) -> Self {
        Self::connect_with(Self::options(broker, client_id)).await.0
    }

    pub async fn connect_with(options: rumqttc::v5::MqttOptions) -> (Self, mqtt5::ConnAck) {
        let mut client = Self::start(options);
        match client.event().await {
            Ok(rumqttc::v5::Event::Incoming(mqtt5::Packet::ConnAck(ack))) => {
                assert_eq!(ack.code, mqtt5::ConnectReturnCode::Success);
                (client, ack)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub fn start(options: rumqttc::v5::MqttOptions) -> Self {
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 100);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let failed = event.is_err();
                if tx.send(event).is_err() || failed {
                    break;
                }
            }
        });
        Self {
            client,
            events,
            task,
            early: VecDeque::new(),
        }
    }

    pub async fn event(&mut self) -> Result<rumqttc::v5::Event, rumqttc::v5::ConnectionError> {
        tokio::time::timeout(TIMEOUT, self.events.recv())
            .await
            .expect("timed out waiting for a rumqttc event")
            .expect("event loop ended")
    }

    pub async fn incoming(&mut self) -> mqtt5::Packet {
        loop {
            match self.event().await {
                Ok(rumqttc::v5::Event::Incoming(packet)) => return packet,
                Ok(rumqttc::v5::Event::Outgoing(_)) => {}
                Err(e) => panic!("connection failed: {e:?}"),
            }
        }
    }

    pub async fn next_publish(&mut self) -> mqtt5::Publish {
        if let Some(publish) = self.early.pop_front() {
            return publish;
        }
        loop {
            if let mqtt5::Packet::Publish(publish) = self.incoming().await {
                return publish;
            }
        }
    }

    async fn wait_for<T>(&mut self, mut pick: impl FnMut(&mqtt5::Packet) -> Option<T>) -> T {
        loop {
            let packet = self.incoming().await;
            if let Some(found) = pick(&packet) {
                return found;
            }
            if let mqtt5::Packet::Publish(publish) = packet {
                self.early.push_back(publish);
            }
        }
    }

    /// Subscribes with `filter` (and a subscription identifier) and returns the SUBACK.
    pub async fn subscribe_filter(
        &mut self,
        filter: mqtt5::Filter,
        id: Option<usize>,
    ) -> Vec<mqtt5::SubscribeReasonCode> {
        let properties = mqtt5::SubscribeProperties {
            id,
            user_properties: vec![],
        };
        self.client
            .subscribe_many_with_properties([filter], properties)
            .await
            .expect("request queued");
        self.wait_for(|p| match p {
            mqtt5::Packet::SubAck(ack) => Some(ack.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Subscribes with plain options and checks the broker granted `qos`.
    pub async fn subscribe_ok(&mut self, filter: &str, qos: u8) {
        let codes = self
            .subscribe_filter(mqtt5::Filter::new(filter, qos5(qos)), None)
            .await;
        assert_eq!(codes, [mqtt5::SubscribeReasonCode::Success(qos5(qos))]);
    }

    /// Publishes with properties and waits until the exchange is complete.
    pub async fn publish_with(
        &mut self,
        topic: &str,
        qos: u8,
        retain: bool,
        payload: impl Into<Bytes>,
        properties: mqtt5::PublishProperties,
    ) {
        let qos = qos5(qos);
        self.client
            .publish_with_properties(topic, qos, retain, payload.into(), properties)
            .await
            .expect("request queued");
        self.await_completion(qos).await;
    }

    pub async fn publish(&mut self, topic: &str, qos: u8, retain: bool, payload: impl Into<Bytes>) {
        let qos = qos5(qos);
        self.client
            .publish(topic, qos, retain, payload.into())
            .await
            .expect("request queued");
        self.await_completion(qos).await;
    }

    async fn await_completion(&mut self, qos: rumqttc::v5::mqttbytes::QoS) {
        use rumqttc::v5::mqttbytes::QoS as Q;
        match qos {
            Q::AtMostOnce => loop {
                match self.event().await {
                    Ok(rumqttc::v5::Event::Outgoing(Outgoing::Publish(_))) => return,
                    Ok(rumqttc::v5::Event::Incoming(mqtt5::Packet::Publish(p))) => {
                        self.early.push_back(p)
                    }
                    Ok(_) => {}
                    Err(e) => panic!("connection failed: {e:?}"),
                }
            },
            Q::AtLeastOnce => {
                self.wait_for(|p| matches!(p, mqtt5::Packet::PubAck(_)).then_some(()))
                    .await
            }
            Q::ExactlyOnce => {
                self.wait_for(|p| matches!(p, mqtt5::Packet::PubComp(_)).then_some(()))
                    .await
            }
        }
    }

    pub async fn closed(&mut self) -> rumqttc::v5::ConnectionError {
        loop {
            match self.event().await {
                Ok(rumqttc::v5::Event::Incoming(mqtt5::Packet::Publish(p))) => {
                    self.early.push_back(p)
                }
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    }

    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("request queued");
        self.closed().await;
    }
}

impl Drop for V5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// rumqttc v5 options with clean start and session expiry as given.
pub fn mqtt5_options(
    broker: &TestBroker,
    client_id: &str,
    clean_start: bool,
    session_expiry: u32,
) -> rumqttc::v5::MqttOptions {
    let mut options = V5::options(broker, client_id);
    options.set_clean_start(clean_start);
    options.set_session_expiry_interval(Some(session_expiry));
    options
}

/// Payloads as strings, for readable assertions.
pub fn text(payload: &Bytes) -> String {
    String::from_utf8_lossy(payload).into_owned()
}
