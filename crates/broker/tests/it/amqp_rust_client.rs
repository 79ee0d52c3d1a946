//! A Rust AMQP 0-9-1 client (amqprs) against midge: publish with publisher confirms,
//! consume, ack, through amq.topic (which an MQTT subscriber sees too) and the default
//! exchange. pika and amqplib run the same round trip in amqp.rs.

use std::time::Duration;

use amqprs::callbacks::{ChannelCallback, DefaultConnectionCallback};
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, Channel,
    ConfirmSelectArguments, QueueBindArguments, QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, FieldValue, Nack, Return};
use midge_broker::config::{ListenerConfig, ListenerProtocol};
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::harness::{TIMEOUT, TestBroker};

/// Reports the broker's publisher confirms (and anything else it says) to the test.
struct Confirms(mpsc::UnboundedSender<String>);

#[async_trait::async_trait]
impl ChannelCallback for Confirms {
    async fn close(
        &mut self,
        _: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        let _ = self.0.send(format!("close {close}"));
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, cancel: Cancel) -> Result<(), amqprs::error::Error> {
        let _ = self.0.send(format!("cancel {}", cancel.consumer_tag()));
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        let _ = self
            .0
            .send(format!("ack {} {}", ack.delivery_tag(), ack.mutiple()));
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        let _ = self.0.send(format!("nack {}", nack.delivery_tag()));
    }
    async fn publish_return(&mut self, _: &Channel, ret: Return, _: BasicProperties, _: Vec<u8>) {
        let _ = self.0.send(format!("return {ret}"));
    }
}

/// Waits until every tag up to `last` is confirmed; panics on anything else.
async fn confirmed_up_to(events: &mut mpsc::UnboundedReceiver<String>, last: u64) {
    let mut settled = 0;
    while settled < last {
        let event = timeout(TIMEOUT, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no confirm for tag {} within {TIMEOUT:?}", settled + 1))
            .expect("channel callback alive");
        let mut words = event.split(' ');
        assert_eq!(words.next(), Some("ack"), "a confirm, not: {event}");
        let tag: u64 = words.next().unwrap().parse().unwrap();
        let multiple = words.next() == Some("true");
        assert!(
            tag == settled + 1 || (multiple && tag > settled),
            "confirms in order: got {event} after tag {settled}"
        );
        settled = tag;
    }
}

#[tokio::test]
async fn amqprs_publishes_with_confirms_consumes_and_acks() {
    let broker = TestBroker::start_with(|config| {
        config.listeners.push(ListenerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            protocol: ListenerProtocol::Amqp,
            ..ListenerConfig::default()
        });
    })
    .await;
    let amqp = broker.server.as_ref().unwrap().local_addrs()[1];
    let (mut mqtt, _) = broker.raw_v311("rust-client-sub", true).await;
    mqtt.subscribe_v4(1, "rust/amqp/#", 1).await;

    let conn = Connection::open(&OpenConnectionArguments::new(
        "127.0.0.1",
        amqp.port(),
        "guest",
        "guest",
    ))
    .await
    .expect("amqprs connects");
    conn.register_callback(DefaultConnectionCallback)
        .await
        .unwrap();
    let ch = conn.open_channel(None).await.unwrap();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    ch.register_callback(Confirms(events_tx)).await.unwrap();
    let (queue, _, _) = ch
        .queue_declare(QueueDeclareArguments::new("rust-round-trip"))
        .await
        .unwrap()
        .expect("declare-ok");
    ch.queue_bind(QueueBindArguments::new(&queue, "amq.topic", "rust.amqp.#"))
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectArguments::default())
        .await
        .unwrap();

    // Three through amq.topic, persistent (MQTT QoS 1), and one through the default exchange.
    for i in 0..3 {
        let props = BasicProperties::default()
            .with_persistence(true)
            .with_content_type("text/plain")
            .finish();
        ch.basic_publish(
            props,
            format!("rust {i}").into_bytes(),
            BasicPublishArguments::new("amq.topic", "rust.amqp.t"),
        )
        .await
        .unwrap();
    }
    ch.basic_publish(
        BasicProperties::default(),
        b"direct".to_vec(),
        BasicPublishArguments::new("", &queue),
    )
    .await
    .unwrap();
    confirmed_up_to(&mut events, 4).await;

    // The MQTT subscriber got the amq.topic ones, mapped.
    for i in 0..3 {
        let p = timeout(TIMEOUT, mqtt.recv_v4_publish())
            .await
            .expect("MQTT delivery");
        assert_eq!(&p.topic[..], "rust/amqp/t");
        assert_eq!(p.payload, format!("rust {i}").as_bytes());
        assert_eq!(p.qos, rumqttc::QoS::AtLeastOnce);
    }

    // The queue has all four, in order; each is acknowledged.
    let consume = BasicConsumeArguments::new(&queue, "rust-consumer");
    let (_tag, mut deliveries) = ch.basic_consume_rx(consume).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        let m = timeout(TIMEOUT, deliveries.recv())
            .await
            .expect("a delivery within the timeout")
            .expect("consumer open");
        let deliver = m.deliver.expect("basic.deliver");
        let props = m.basic_properties.expect("properties");
        assert!(!deliver.redelivered());
        let qos = props
            .headers()
            .and_then(|h| h.get(&"x-mqtt-publish-qos".try_into().unwrap()).cloned());
        got.push((
            deliver.exchange().clone(),
            deliver.routing_key().clone(),
            String::from_utf8(m.content.unwrap()).unwrap(),
            props.delivery_mode(),
            qos,
        ));
        ch.basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false))
            .await
            .unwrap();
    }
    let topic = |i: u8| {
        (
            "amq.topic".to_owned(),
            "rust.amqp.t".to_owned(),
            format!("rust {i}"),
            Some(2),
            Some(FieldValue::b(1)),
        )
    };
    assert_eq!(
        got,
        [
            topic(0),
            topic(1),
            topic(2),
            // Through the default exchange the properties come back as published: none.
            (
                String::new(),
                queue.clone(),
                "direct".to_owned(),
                None,
                None
            ),
        ]
    );

    // Acknowledged: a new channel finds the queue empty once the first has closed (its
    // acks were read before its close).
    ch.close().await.unwrap();
    let check = conn.open_channel(None).await.unwrap();
    let (_, messages, consumers) = check
        .queue_declare(QueueDeclareArguments::new(&queue).passive(true).finish())
        .await
        .unwrap()
        .expect("declare-ok");
    assert_eq!((messages, consumers), (0, 0), "nothing left unacknowledged");
    timeout(Duration::from_secs(5), conn.close())
        .await
        .expect("close within 5 s")
        .unwrap();
    broker.shutdown().await;
}
