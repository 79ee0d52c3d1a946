//! The broker accepts a client and routes a message between two clients.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::harness::{CONNACK_V311_OK, TIMEOUT, TestBroker, connect_v311};

#[tokio::test]
async fn raw_v311_connect_is_accepted() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.send(&connect_v311("raw")).await;
    assert_eq!(raw.recv(4).await, CONNACK_V311_OK);
    broker.shutdown().await;
}

#[tokio::test]
async fn rumqttc_v311_publish_reaches_subscriber() {
    let broker = TestBroker::start().await;
    let mut options = MqttOptions::new("sub", "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (sub, mut sub_loop) = AsyncClient::new(options, 10);
    sub.subscribe("greet/+", QoS::AtLeastOnce).await.unwrap();
    let received = tokio::spawn(async move {
        loop {
            match sub_loop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let options = MqttOptions::new("pub", "127.0.0.1", broker.port());
                    let (publisher, mut pub_loop) = AsyncClient::new(options, 10);
                    publisher
                        .publish("greet/world", QoS::AtLeastOnce, false, "hello")
                        .await
                        .unwrap();
                    tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
                }
                Ok(Event::Incoming(Packet::Publish(p))) => return (p.topic, p.payload, broker),
                Ok(_) => {}
                Err(e) => panic!("subscriber: {e}"),
            }
        }
    });
    let (topic, payload, broker) = tokio::time::timeout(TIMEOUT, received)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(topic, "greet/world");
    assert_eq!(&payload[..], b"hello");
    broker.shutdown().await;
}
