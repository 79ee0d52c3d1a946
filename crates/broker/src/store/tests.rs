//! Store tests: the writer's row bookkeeping, recovery round trips through the broker with
//! both backends, and damaged stores.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use midge_proto::{
    ConnAck, Connect, ConnectProperties, Decoder, Packet, ProtocolVersion, PubResponse, Publish,
    PublishProperties, QoS, ReasonCode, Subscribe, SubscribeProperties, SubscriptionOptions, Will,
    WillProperties,
};

use super::*;
use crate::broker::Broker;
use crate::config::{Config, Durability, StorageConfig};
use crate::model::QueueLimits;
use crate::model::Stage;
use crate::model::{Delivery, Message, now_millis};
use crate::session::{Session, negotiate};

fn memory_config() -> Config {
    let mut config = Config::default();
    config.storage.backend = StorageBackend::Memory;
    config
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "midge-store-{name}-{}-{}",
            std::process::id(),
            now_millis()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn opening(store: &MemoryStore) -> Opening {
    Opening {
        recover: false,
        store: Some(Box::new(store.clone())),
    }
}

/// A broker on `store`, with what it held restored.
fn broker_on(config: &Config, opening: Opening) -> Arc<Broker> {
    let (journal, recovered) = open(&config.storage, opening).expect("store opens");
    let broker = Broker::with_journal(config.clone(), Some(journal));
    broker.restore(recovered, now_millis());
    broker
}

struct Client {
    session: Session,
    out: BytesMut,
    decoder: Decoder,
    connection_id: u64,
}

impl Client {
    async fn connect(broker: &Broker, id: &str, expiry: u32, clean: bool) -> Self {
        Self::connect_with_will(broker, id, expiry, clean, None).await
    }

    async fn connect_with_will(
        broker: &Broker,
        id: &str,
        expiry: u32,
        clean: bool,
        will: Option<Will>,
    ) -> Self {
        let connect = Connect {
            protocol: ProtocolVersion::V5,
            clean_start: clean,
            keep_alive: 60,
            client_id: id.into(),
            will,
            username: None,
            password: None,
            properties: ConnectProperties {
                session_expiry_interval: Some(expiry),
                ..Default::default()
            },
        };
        let negotiated = negotiate(&connect, &broker.config().mqtt).expect("CONNECT accepted");
        let connection_id = broker.next_connection_id();
        let attached = broker
            .attach(
                negotiated.client_id.clone(),
                clean,
                connection_id,
                now_millis(),
            )
            .await;
        let mut session = Session::new(
            attached.state,
            negotiated,
            broker.config().mqtt.max_inflight,
        );
        let mut out = BytesMut::new();
        let connack = ConnAck {
            session_present: attached.session_present,
            reason_code: ReasonCode::SUCCESS,
            properties: Default::default(),
        };
        session.start(connack, now_millis(), &mut out);
        Self {
            session,
            out,
            decoder: Decoder::with_version(ProtocolVersion::V5, u32::MAX),
            connection_id,
        }
    }

    fn take(&mut self) -> Vec<Packet> {
        let mut packets = Vec::new();
        while let Some(p) = self.decoder.decode(&mut self.out).expect("output decodes") {
            packets.push(p);
        }
        packets
    }

    fn subscribe(&mut self, broker: &Broker, filter: &str, qos: QoS) {
        let subscribe = Subscribe {
            packet_id: 1,
            filters: vec![(
                filter.into(),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
            properties: SubscribeProperties::default(),
        };
        self.session
            .subscribe(subscribe, &[true], broker, now_millis(), &mut self.out)
            .unwrap();
        self.take();
    }

    fn publish(&mut self, broker: &Broker, topic: &str, qos: QoS, packet_id: u16, payload: &str) {
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id,
            properties: PublishProperties::default(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        };
        let resolved = self.session.resolve_publish(publish, broker).unwrap();
        self.session
            .publish(resolved, true, broker, now_millis(), &mut self.out);
    }

    fn pump(&mut self) -> Vec<Packet> {
        self.session.pump(now_millis(), &mut self.out, usize::MAX);
        self.take()
    }

    fn send(&mut self, broker: &Broker, packet: Packet) {
        self.session.handle(packet, broker, &mut self.out).unwrap();
    }

    fn disconnect(self, broker: &Broker) {
        let will_delay = self.session.will_delay();
        let (state, will) = self.session.into_parts();
        broker.detach(
            self.connection_id,
            state,
            will.map(|w| (w, will_delay)),
            now_millis(),
        );
    }
}

fn message(topic: &str, qos: QoS, payload: &'static str) -> Message {
    let mut m = Message::internal(
        topic.into(),
        Bytes::from_static(payload.as_bytes()),
        false,
        0,
    );
    m.qos = qos;
    m
}

fn payloads(queue: &[(u64, Delivery)]) -> Vec<Bytes> {
    queue
        .iter()
        .map(|(_, d)| d.message.payload.clone())
        .collect()
}

fn publish_payloads(packets: &[Packet]) -> Vec<(u16, Bytes)> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((p.packet_id, p.payload.clone())),
            _ => None,
        })
        .collect()
}

// ---- the writer's bookkeeping ----

#[tokio::test]
async fn a_message_queued_for_many_sessions_is_stored_once_and_goes_with_its_last_reference() {
    let store = MemoryStore::default();
    let config = memory_config();
    let (journal, _) = open(&config.storage, opening(&store)).unwrap();
    let a = journal.session("a".into(), 101);
    let b = journal.session("b".into(), 102);
    a.put(60, None);
    b.put(60, None);
    let delivery = Delivery {
        message: Arc::new(message("t", QoS::AtLeastOnce, "x")),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![4],
        shared: None,
    };
    a.enqueue(1, &delivery);
    b.enqueue(1, &delivery);
    journal.flush().await;
    assert_eq!(store.len(Table::Messages), 1);
    assert_eq!(store.len(Table::Queue), 2);

    a.dequeue(1);
    b.dispatch(Some(1), 7, 2, Stage::AwaitPubAck, &delivery);
    journal.flush().await;
    assert_eq!(store.len(Table::Queue), 0);
    assert_eq!(store.len(Table::Inflight), 1);
    assert_eq!(store.len(Table::Messages), 1, "still referenced in flight");

    b.acked(7);
    journal.flush().await;
    assert_eq!(store.len(Table::Inflight), 0);
    assert_eq!(
        store.len(Table::Messages),
        0,
        "the last reference took the message"
    );
}

#[tokio::test]
async fn a_message_queued_and_finished_within_one_batch_is_never_written() {
    let store = MemoryStore::default();
    let mut config = memory_config();
    config.storage.durability = Durability::Interval;
    config.storage.flush_interval_ms = 60_000;
    let (journal, _) = open(&config.storage, opening(&store)).unwrap();
    let a = journal.session("a".into(), 201);
    a.put(60, None);
    journal.flush().await;
    let delivery = Delivery {
        message: Arc::new(message("t", QoS::AtLeastOnce, "x")),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![],
        shared: None,
    };
    a.enqueue(1, &delivery);
    a.dispatch(Some(1), 1, 2, Stage::AwaitPubAck, &delivery);
    a.acked(1);
    journal.flush().await;
    assert!(
        journal
            .stats()
            .commits
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert_eq!(store.len(Table::Messages), 0);
    assert_eq!(store.len(Table::Queue), 0);
    assert_eq!(store.len(Table::Inflight), 0);
}

#[tokio::test]
async fn a_late_change_from_a_replaced_session_does_not_touch_its_successor() {
    let store = MemoryStore::default();
    let config = memory_config();
    let (journal, _) = open(&config.storage, opening(&store)).unwrap();
    let old = journal.session("c".into(), 301);
    old.put(60, None);
    old.subscribe(
        "old/#",
        crate::model::SubscriptionRecord {
            options: SubscriptionOptions::default(),
            identifier: None,
        },
    );
    let new = journal.session("c".into(), 302);
    new.put(60, None);
    new.subscribe(
        "new/#",
        crate::model::SubscriptionRecord {
            options: SubscriptionOptions::default(),
            identifier: None,
        },
    );
    // The old connection ends late: its delete must not remove the new session.
    old.delete();
    old.subscribe(
        "late/#",
        crate::model::SubscriptionRecord {
            options: SubscriptionOptions::default(),
            identifier: None,
        },
    );
    journal.flush().await;
    assert_eq!(store.len(Table::Sessions), 1);
    assert_eq!(store.len(Table::Subscriptions), 1);
    let (_, recovered) = open(&config.storage, opening(&store)).unwrap();
    assert_eq!(recovered.sessions[0].session, 302);
    assert_eq!(recovered.sessions[0].subscriptions[0].0, "new/#");
}

#[tokio::test]
async fn with_sync_durability_settled_waits_for_the_commit() {
    let store = MemoryStore::default();
    let mut config = memory_config();
    config.storage.durability = Durability::Sync;
    let (journal, _) = open(&config.storage, opening(&store)).unwrap();
    journal.session("s".into(), 401).put(60, None);
    journal.settled().await;
    assert_eq!(store.len(Table::Sessions), 1);

    // With a long interval, settled does not wait and the row is not there yet.
    let store = MemoryStore::default();
    config.storage.durability = Durability::Interval;
    config.storage.flush_interval_ms = 60_000;
    let (journal, _) = open(&config.storage, opening(&store)).unwrap();
    journal.flush().await;
    journal.session("s".into(), 402).put(60, None);
    journal.settled().await;
    assert_eq!(store.len(Table::Sessions), 0);
    journal.flush().await;
    assert_eq!(store.len(Table::Sessions), 1);
}

// ---- recovery through the broker ----

/// Builds state worth recovering on `broker`: a parked subscriber "sub" with three queued
/// messages, one QoS 2 message in flight awaiting PUBCOMP and one awaiting PUBACK; a
/// publisher "pub" holding QoS 2 packet ids 9 (PUBREC success) and 11 (no matching
/// subscribers) awaiting PUBREL; a retained message.
async fn build_state(broker: &Broker) {
    let mut sub = Client::connect(broker, "sub", 3600, true).await;
    sub.subscribe(broker, "t/#", QoS::ExactlyOnce);
    let mut publisher = Client::connect(broker, "pub", 3600, true).await;
    publisher.publish(broker, "t/1", QoS::ExactlyOnce, 9, "in-flight-2");
    publisher.publish(broker, "t/1", QoS::AtLeastOnce, 10, "in-flight-1");
    publisher.publish(broker, "nobody/here", QoS::ExactlyOnce, 11, "unheard");
    let sent = publish_payloads(&sub.pump());
    assert_eq!(sent.len(), 2);
    // PUBREC for the QoS 2 one: it now awaits PUBCOMP.
    sub.send(broker, Packet::PubRec(PubResponse::success(sent[0].0)));
    assert!(matches!(sub.take().as_slice(), [Packet::PubRel(_)]));
    sub.disconnect(broker);
    for (i, payload) in ["q1", "q2", "q3"].into_iter().enumerate() {
        publisher.publish(broker, "t/2", QoS::AtLeastOnce, 20 + i as u16, payload);
    }
    let mut retained = message("r/x", QoS::AtLeastOnce, "kept");
    retained.retain = true;
    broker.publish(retained);
    publisher.disconnect(broker);
}

async fn check_recovered(recovered: &Recovered) {
    assert_eq!(recovered.retained.len(), 1);
    assert_eq!(recovered.retained[0].payload, "kept");
    let sub = recovered
        .sessions
        .iter()
        .find(|s| &*s.client_id == "sub")
        .expect("sub stored");
    assert_eq!(sub.expiry_interval, 3600);
    assert!(sub.expires_at.is_some(), "parked with a deadline");
    assert_eq!(sub.subscriptions.len(), 1);
    assert_eq!(sub.subscriptions[0].0, "t/#");
    assert_eq!(sub.subscriptions[0].1.options.qos, QoS::ExactlyOnce);
    assert_eq!(payloads(&sub.queue), ["q1", "q2", "q3"]);
    let inflight: Vec<(Stage, Bytes)> = sub
        .inflight
        .iter()
        .map(|i| (i.stage, i.delivery.message.payload.clone()))
        .collect();
    assert_eq!(
        inflight,
        [
            (Stage::AwaitPubComp, Bytes::from("in-flight-2")),
            (Stage::AwaitPubAck, Bytes::from("in-flight-1")),
        ]
    );
    let publisher = recovered
        .sessions
        .iter()
        .find(|s| &*s.client_id == "pub")
        .expect("pub stored");
    assert_eq!(
        publisher.awaiting_pubrel,
        [
            (9, ReasonCode::SUCCESS),
            (11, ReasonCode::NO_MATCHING_SUBSCRIBERS)
        ]
    );
    assert!(recovered.losses.is_empty());
}

#[tokio::test]
async fn held_qos2_ids_stored_without_a_reason_recover_as_success() {
    let store = MemoryStore::default();
    let config = memory_config();
    let broker = broker_on(&config, opening(&store));
    build_state(&broker).await;
    broker.journal.as_ref().unwrap().close().await;
    drop(broker);
    // The row as it was written before the PUBREC reason was kept: empty.
    let key = codec::client_key_with("pub", &11u16.to_be_bytes());
    store.put_raw(Table::Pubrel, &key, &[]);
    let (_, recovered) = open(&config.storage, opening(&store)).unwrap();
    let publisher = recovered
        .sessions
        .iter()
        .find(|s| &*s.client_id == "pub")
        .expect("pub stored");
    assert_eq!(
        publisher.awaiting_pubrel,
        [(9, ReasonCode::SUCCESS), (11, ReasonCode::SUCCESS)]
    );
    assert!(recovered.losses.is_empty());
}

#[tokio::test]
async fn memory_store_recovers_sessions_queues_inflight_and_retained() {
    let store = MemoryStore::default();
    let config = memory_config();
    let broker = broker_on(&config, opening(&store));
    build_state(&broker).await;
    broker.journal.as_ref().unwrap().close().await;
    // Messages stored once: 2 in flight + 3 queued, each its own message.
    assert_eq!(store.len(Table::Messages), 5);
    let (_, recovered) = open(&config.storage, opening(&store)).unwrap();
    check_recovered(&recovered).await;
}

#[tokio::test]
async fn redb_store_recovers_sessions_queues_inflight_and_retained() {
    let dir = TempDir::new("roundtrip");
    let mut config = Config::default();
    config.storage.dir = dir.0.clone();
    let broker = broker_on(&config, Opening::default());
    build_state(&broker).await;
    broker.journal.as_ref().unwrap().close().await;
    drop(broker);
    let (journal, recovered) = open(&config.storage, Opening::default()).unwrap();
    check_recovered(&recovered).await;
    journal.close().await;
}

#[tokio::test]
async fn a_restored_session_receives_messages_before_it_reconnects_and_resumes_in_order() {
    let store = MemoryStore::default();
    let config = memory_config();
    let broker = broker_on(&config, opening(&store));
    build_state(&broker).await;
    broker.journal.as_ref().unwrap().close().await;
    drop(broker);

    let broker = broker_on(&config, opening(&store));
    assert_eq!(broker.registry.parked_len(), 2);
    assert_eq!(broker.retained.len(), 1);
    // Published while "sub" is still away: queued for it by its restored subscription.
    broker.publish(message("t/3", QoS::AtLeastOnce, "q4"));

    let mut sub = Client::connect(&broker, "sub", 3600, false).await;
    let resent = sub.take();
    // CONNACK (session present), PUBREL for the PUBREC'd QoS 2, PUBLISH DUP for QoS 1.
    assert!(matches!(&resent[0], Packet::ConnAck(c) if c.session_present));
    assert!(matches!(&resent[1], Packet::PubRel(_)));
    assert!(matches!(&resent[2], Packet::Publish(p) if p.dup && p.payload == "in-flight-1"));
    assert_eq!(resent.len(), 3);
    let queued: Vec<Bytes> = publish_payloads(&sub.pump())
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(queued, ["q1", "q2", "q3", "q4"]);

    // The publisher's held QoS 2 id survives: a resent PUBLISH 9 is not routed again.
    let mut publisher = Client::connect(&broker, "pub", 3600, false).await;
    publisher.take();
    publisher.publish(&broker, "t/1", QoS::ExactlyOnce, 9, "in-flight-2");
    assert!(matches!(publisher.take().as_slice(), [Packet::PubRec(_)]));
    assert!(sub.pump().is_empty(), "not routed twice");
    publisher.send(&broker, Packet::PubRel(PubResponse::success(9)));
    assert!(matches!(
        publisher.take().as_slice(),
        [Packet::PubComp(c)] if c.reason_code == ReasonCode::SUCCESS
    ));
}

#[tokio::test]
async fn a_session_resumed_with_expiry_zero_is_removed_from_the_store() {
    let store = MemoryStore::default();
    let config = memory_config();
    let broker = broker_on(&config, opening(&store));
    let client = Client::connect(&broker, "c", 60, true).await;
    client.disconnect(&broker);
    broker.journal.as_ref().unwrap().flush().await;
    assert_eq!(store.len(Table::Sessions), 1);
    let client = Client::connect(&broker, "c", 0, false).await;
    broker.journal.as_ref().unwrap().flush().await;
    assert_eq!(store.len(Table::Sessions), 0);
    client.disconnect(&broker);
}

#[tokio::test]
async fn clean_sessions_never_reach_the_store() {
    let store = MemoryStore::default();
    let config = memory_config();
    let broker = broker_on(&config, opening(&store));
    let mut sub = Client::connect(&broker, "clean-sub", 0, true).await;
    sub.subscribe(&broker, "t", QoS::AtLeastOnce);
    let mut publisher = Client::connect(&broker, "clean-pub", 0, true).await;
    publisher.publish(&broker, "t", QoS::ExactlyOnce, 1, "x");
    assert_eq!(publish_payloads(&sub.pump()).len(), 1);
    let journal = broker.journal.clone().unwrap();
    journal.flush().await;
    // Only the format record.
    assert_eq!(store.len(Table::Meta), 1);
    for table in Table::ALL.into_iter().filter(|t| *t != Table::Meta) {
        assert_eq!(store.len(table), 0, "table {}", table.name());
    }
    assert_eq!(
        journal
            .stats()
            .operations
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the flush itself"
    );
}

#[tokio::test]
async fn a_session_that_expired_while_down_is_dropped_and_its_will_published_at_start() {
    let store = MemoryStore::default();
    let config = memory_config();
    let broker = broker_on(&config, opening(&store));
    let mut watcher = Client::connect(&broker, "watcher", 3600, true).await;
    watcher.subscribe(&broker, "wills/#", QoS::AtLeastOnce);
    watcher.disconnect(&broker);
    let will = Will {
        topic: "wills/gone".into(),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: Some(30),
            ..Default::default()
        },
    };
    let dying = Client::connect_with_will(&broker, "dying", 1, true, Some(will)).await;
    dying.disconnect(&broker);
    broker.journal.as_ref().unwrap().close().await;
    drop(broker);
    assert_eq!(store.len(Table::Wills), 1);

    // Two seconds pass while the broker is down (the session expiry is 1 s): simulated by
    // moving the stored deadline back rather than sleeping.
    let (_, recovered) = open(&config.storage, opening(&store)).unwrap();
    let dying = recovered
        .sessions
        .iter()
        .find(|s| &*s.client_id == "dying")
        .unwrap();
    let record = codec::SessionRecord {
        session: dying.session,
        expiry_interval: 1,
        expires_at: Some(now_millis() - 2_000),
    };
    store.put_raw(
        Table::Sessions,
        &codec::client_key("dying"),
        &codec::encode_session(&record),
    );

    let broker = broker_on(&config, opening(&store));
    assert_eq!(broker.registry.parked_len(), 1, "only the watcher is left");
    let mut watcher = Client::connect(&broker, "watcher", 3600, false).await;
    watcher.take();
    let got = publish_payloads(&watcher.pump());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, "bye");
    broker.journal.as_ref().unwrap().flush().await;
    assert_eq!(store.len(Table::Wills), 0);
    assert_eq!(store.len(Table::Sessions), 1);
}

#[tokio::test]
async fn stored_queues_keep_the_per_session_limit_at_start() {
    let store = MemoryStore::default();
    let config = memory_config();
    let broker = broker_on(&config, opening(&store));
    let mut sub = Client::connect(&broker, "sub", 3600, true).await;
    sub.subscribe(&broker, "t", QoS::AtLeastOnce);
    sub.disconnect(&broker);
    for p in ["1", "2", "3", "4"] {
        broker.publish(message("t", QoS::AtLeastOnce, p));
    }
    broker.journal.as_ref().unwrap().close().await;
    drop(broker);

    let mut smaller = config.clone();
    smaller.mqtt.max_queued_messages = 2;
    let broker = broker_on(&smaller, opening(&store));
    let mut sub = Client::connect(&broker, "sub", 3600, false).await;
    sub.take();
    let got: Vec<Bytes> = publish_payloads(&sub.pump())
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(got, ["1", "2"]);
    broker.journal.as_ref().unwrap().flush().await;
    assert_eq!(
        store.len(Table::Queue),
        0,
        "the two over the limit were removed too"
    );
}

#[tokio::test]
async fn a_full_store_drops_new_messages_for_offline_sessions_and_counts_them() {
    let store = MemoryStore::default();
    let mut config = memory_config();
    config.storage.max_stored_bytes = 1;
    config.storage.durability = Durability::Sync;
    let broker = broker_on(&config, opening(&store));
    let mut offline = Client::connect(&broker, "offline", 3600, true).await;
    offline.subscribe(&broker, "t", QoS::AtLeastOnce);
    offline.disconnect(&broker);
    let mut online = Client::connect(&broker, "online", 3600, true).await;
    online.subscribe(&broker, "t", QoS::AtLeastOnce);
    let journal = broker.journal.clone().unwrap();

    broker.publish(message("t", QoS::AtLeastOnce, "first"));
    journal.settled().await;
    assert!(journal.is_full());
    let outcome = broker.publish(message("t", QoS::AtLeastOnce, "second"));
    assert_eq!(outcome.delivered, 1, "the connected session still gets it");
    assert_eq!(outcome.dropped, 1);
    assert_eq!(
        journal
            .stats()
            .dropped_full
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let got: Vec<Bytes> = publish_payloads(&online.pump())
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(got, ["first", "second"]);
}

// ---- damaged stores ----

#[tokio::test]
async fn an_undecodable_row_refuses_the_start_and_recover_keeps_the_rest() {
    let store = MemoryStore::default();
    let config = memory_config();
    let broker = broker_on(&config, opening(&store));
    build_state(&broker).await;
    broker.journal.as_ref().unwrap().close().await;
    drop(broker);
    // Damage the retained message's row.
    store.put_raw(Table::Retained, b"r/x", &[0xFF, 0x01]);

    let err = open(&config.storage, opening(&store))
        .unwrap_err()
        .to_string();
    assert!(err.contains("memory"), "{err}");
    assert!(err.contains("retained"), "{err}");
    assert!(err.contains("--recover"), "{err}");

    let recover = Opening {
        recover: true,
        store: Some(Box::new(store.clone())),
    };
    let (journal, recovered) = open(&config.storage, recover).unwrap();
    assert!(recovered.retained.is_empty());
    assert_eq!(recovered.losses.undecodable.get("retained"), Some(&1));
    assert_eq!(recovered.sessions.len(), 2, "everything else is kept");
    journal.flush().await;
    assert_eq!(store.len(Table::Retained), 0, "the bad row is gone");
}

#[tokio::test]
async fn a_store_from_a_newer_format_is_refused_even_with_recover() {
    let store = MemoryStore::default();
    store.put_raw(
        Table::Meta,
        FORMAT_KEY,
        &codec::encode_format(FORMAT_VERSION + 1),
    );
    let config = memory_config();
    for recover in [false, true] {
        let opening = Opening {
            recover,
            store: Some(Box::new(store.clone())),
        };
        let err = open(&config.storage, opening).unwrap_err();
        assert!(
            matches!(err, StoreError::NewerFormat { found, .. } if found == FORMAT_VERSION + 1),
            "{err}"
        );
    }
}

fn redb_config(dir: &TempDir) -> StorageConfig {
    StorageConfig {
        dir: dir.0.clone(),
        ..StorageConfig::default()
    }
}

#[tokio::test]
async fn a_truncated_redb_file_is_refused_naming_it_and_recover_sets_it_aside() {
    let dir = TempDir::new("truncated");
    let config = redb_config(&dir);
    let (journal, _) = open(&config, Opening::default()).unwrap();
    for i in 0..200u32 {
        let mut m = message(&format!("r/{i}"), QoS::AtMostOnce, "retained payload");
        m.retain = true;
        journal.retained(&m.topic.clone(), Some(&Arc::new(m)));
    }
    journal.close().await;
    let path = store_path(&dir.0);
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);

    let err = open(&config, Opening::default()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Damaged { .. }), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");

    let recover = Opening {
        recover: true,
        store: None,
    };
    let (journal, _) = open(&config, recover).expect("starts with --recover");
    journal.close().await;
    let aside: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("midge.redb.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    // The fresh store opens cleanly now.
    let (journal, _) = open(&config, Opening::default()).unwrap();
    journal.close().await;
}

#[tokio::test]
async fn a_second_broker_on_the_same_redb_file_is_told_it_is_in_use() {
    let dir = TempDir::new("inuse");
    let config = redb_config(&dir);
    let (journal, _) = open(&config, Opening::default()).unwrap();
    let err = open(&config, Opening::default()).unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    journal.close().await;
}

#[test]
fn queue_limits_type_is_shared_with_restore() {
    // `Mailbox::restore` applies the same limits a push does.
    let mailbox = crate::mailbox::Mailbox::new("c".into());
    let limits = QueueLimits {
        max_messages: 1,
        max_bytes: 0,
        policy: crate::config::QueueFullPolicy::DropNew,
        queue_qos0_offline: false,
    };
    let d = |p: &'static str| Delivery {
        message: Arc::new(message("t", QoS::AtLeastOnce, p)),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![],
        shared: None,
    };
    assert_eq!(mailbox.restore(vec![(5, d("a")), (6, d("b"))], &limits), 1);
    assert_eq!(mailbox.len(), 1);
    assert_eq!(mailbox.next_seq(), 6);
}
