//! What persistence costs: QoS 1 throughput through an in-process broker with each store
//! configuration, and start-up time with a large store.
//!
//!   cargo bench -p midge-broker --bench store
//!   cargo bench -p midge-broker --bench store -- throughput   (or: startup)
//!
//! Throughput: publishers send QoS 1 messages (a window of 256 unacknowledged each) to one
//! persistent subscriber (MQTT 3.1.1, clean session 0) that acknowledges every message;
//! the time runs until every PUBACK has reached the publishers and every message the
//! subscriber. Start-up: a redb store holding 100,000 retained messages and 10,000
//! persistent sessions (one subscription and five queued messages each) is opened, read
//! back and restored until the listener is bound.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use midge_broker::config::{Durability, StorageBackend};
use midge_broker::model::SubscriptionRecord;
use midge_broker::model::{Delivery, Message, now_millis};
use midge_broker::store::{self, Opening};
use midge_broker::{Broker, Config, Server};
use midge_proto::{
    Connect, ConnectProperties, Decoder, Packet, ProtocolVersion, PubResponse, Publish,
    PublishProperties, QoS, Subscribe, SubscribeProperties, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Semaphore;

const V311: ProtocolVersion = ProtocolVersion::V311;
const WINDOW: usize = 256;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("midge-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn encode(packet: &Packet, out: &mut BytesMut) {
    packet.encode(V311, out).expect("encodes");
}

async fn read_packet(
    reader: &mut OwnedReadHalf,
    decoder: &mut Decoder,
    buf: &mut BytesMut,
) -> Packet {
    loop {
        if let Some(p) = decoder.decode(buf).expect("decodes") {
            return p;
        }
        buf.reserve(64 * 1024);
        let n = reader.read_buf(buf).await.expect("read");
        assert!(n > 0, "broker closed the connection");
    }
}

async fn connect(
    port: u16,
    id: &str,
    clean: bool,
) -> (OwnedReadHalf, OwnedWriteHalf, Decoder, BytesMut) {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut reader, mut writer) = stream.into_split();
    let mut out = BytesMut::new();
    encode(
        &Packet::Connect(Box::new(Connect {
            protocol: V311,
            clean_start: clean,
            keep_alive: 0,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        })),
        &mut out,
    );
    writer.write_all(&out).await.expect("write");
    let mut decoder = Decoder::with_version(V311, u32::MAX);
    let mut buf = BytesMut::new();
    let connack = read_packet(&mut reader, &mut decoder, &mut buf).await;
    assert!(matches!(connack, Packet::ConnAck(_)));
    (reader, writer, decoder, buf)
}

/// One QoS 1 publisher: `count` messages of `payload` bytes, at most WINDOW unacknowledged.
async fn publisher(port: u16, id: String, count: usize, payload: usize) {
    let (mut reader, mut writer, mut decoder, mut buf) = connect(port, &id, true).await;
    let window = Arc::new(Semaphore::new(WINDOW));
    let acks = {
        let window = window.clone();
        tokio::spawn(async move {
            for _ in 0..count {
                match read_packet(&mut reader, &mut decoder, &mut buf).await {
                    Packet::PubAck(_) => window.add_permits(1),
                    other => panic!("publisher got {other:?}"),
                }
            }
        })
    };
    let body = Bytes::from(vec![b'x'; payload]);
    let mut out = BytesMut::new();
    let mut sent = 0;
    while sent < count {
        let permit = window.acquire().await.expect("semaphore");
        permit.forget();
        let mut n = 1;
        while n < count - sent
            && let Ok(p) = window.try_acquire()
        {
            p.forget();
            n += 1;
        }
        for _ in 0..n {
            let packet_id = (sent % 65_000 + 1) as u16;
            encode(
                &Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: "bench/t".into(),
                    packet_id,
                    properties: PublishProperties::default(),
                    payload: body.clone(),
                }),
                &mut out,
            );
            sent += 1;
        }
        writer.write_all(&out).await.expect("write");
        out.clear();
    }
    acks.await.expect("acks");
}

/// The persistent subscriber: acknowledges everything, returns after `count` messages.
async fn subscriber(
    mut reader: OwnedReadHalf,
    mut writer: OwnedWriteHalf,
    mut decoder: Decoder,
    mut buf: BytesMut,
    count: usize,
) {
    let mut out = BytesMut::new();
    let mut got = 0;
    while got < count {
        loop {
            match decoder.decode(&mut buf).expect("decodes") {
                Some(Packet::Publish(p)) => {
                    got += 1;
                    encode(&Packet::PubAck(PubResponse::success(p.packet_id)), &mut out);
                }
                Some(other) => panic!("subscriber got {other:?}"),
                None => break,
            }
        }
        if !out.is_empty() {
            writer.write_all(&out).await.expect("write");
            out.clear();
        }
        if got < count {
            buf.reserve(64 * 1024);
            let n = reader.read_buf(&mut buf).await.expect("read");
            assert!(n > 0, "broker closed the subscriber");
        }
    }
}

async fn throughput(
    label: &str,
    messages: usize,
    adjust: impl FnOnce(&mut Config),
    persistent: bool,
) {
    const PUBLISHERS: usize = 4;
    let dir = temp_dir(label);
    let mut config = Config::default();
    config.listeners[0].bind = "127.0.0.1:0".parse().expect("addr");
    config.sys.interval_secs = 0;
    config.mqtt.max_queued_messages = 0;
    config.storage.dir = dir.clone();
    adjust(&mut config);
    let server = Server::start(config).await.expect("broker starts");
    let port = server.local_addrs()[0].port();

    let (reader, mut writer, mut decoder, mut buf) = connect(port, "bench-sub", !persistent).await;
    let mut out = BytesMut::new();
    encode(
        &Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                "bench/#".into(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            )],
            properties: SubscribeProperties::default(),
        }),
        &mut out,
    );
    writer.write_all(&out).await.expect("write");
    let mut reader = reader;
    let suback = read_packet(&mut reader, &mut decoder, &mut buf).await;
    assert!(matches!(suback, Packet::SubAck(_)));

    let started = Instant::now();
    let sub = tokio::spawn(subscriber(reader, writer, decoder, buf, messages));
    let pubs: Vec<_> = (0..PUBLISHERS)
        .map(|i| {
            tokio::spawn(publisher(
                port,
                format!("bench-pub-{i}"),
                messages / PUBLISHERS,
                64,
            ))
        })
        .collect();
    for p in pubs {
        p.await.expect("publisher");
    }
    sub.await.expect("subscriber");
    let delivered = started.elapsed();
    // In interval and none modes acknowledgements do not wait for the store: the time
    // until the writer has caught up (a flush returns) is the sustained rate.
    let journal = server.broker().journal.clone();
    if let Some(journal) = &journal {
        journal.flush().await;
    }
    let stored = started.elapsed();
    let (commits, operations) = journal.as_ref().map_or((0, 0), |j| {
        let s = j.stats();
        (
            s.commits.load(Ordering::Relaxed),
            s.operations.load(Ordering::Relaxed),
        )
    });
    println!(
        "{label:<46} {:>8.0} msg/s delivered, {:>8.0} msg/s with the store caught up  ({messages} msgs: {:.2} s / {:.2} s; {operations} store ops in {commits} commits)",
        messages as f64 / delivered.as_secs_f64(),
        messages as f64 / stored.as_secs_f64(),
        delivered.as_secs_f64(),
        stored.as_secs_f64(),
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn startup() {
    const RETAINED: usize = 100_000;
    const SESSIONS: usize = 10_000;
    const QUEUED: usize = 5;
    let dir = temp_dir("startup");
    let mut config = Config::default();
    config.listeners[0].bind = "127.0.0.1:0".parse().expect("addr");
    config.sys.interval_secs = 0;
    config.storage.dir = dir.clone();

    let filling = Instant::now();
    let (journal, _) = store::open(&config.storage, Opening::default()).expect("store opens");
    let broker = Broker::with_journal(config.clone(), Some(journal.clone()));
    let now = now_millis();
    for i in 0..RETAINED {
        let payload = Bytes::from(format!("retained value {i:08}"));
        broker.publish(Message::internal(
            format!("devices/{}/state/{i}", i % 1000),
            payload,
            true,
            now,
        ));
    }
    for s in 0..SESSIONS {
        let client = Arc::<str>::from(format!("client-{s:05}"));
        let session = journal.session(client, 1_000_000 + s as u64);
        session.put(u32::MAX, None);
        session.subscribe(
            &format!("devices/{}/#", s % 1000),
            SubscriptionRecord {
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
                identifier: None,
            },
        );
        for q in 0..QUEUED {
            let mut message = Message::internal(
                format!("devices/{}/event", s % 1000),
                Bytes::from(format!("event {q}")),
                false,
                now,
            );
            message.qos = QoS::AtLeastOnce;
            let delivery = Delivery {
                message: Arc::new(message),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: Vec::new(),
                shared: None,
            };
            session.enqueue(q as u64 + 1, &delivery);
        }
    }
    journal.close().await;
    drop(broker);
    let size = std::fs::metadata(store::store_path(&dir)).map_or(0, |m| m.len());
    println!(
        "filled the store: {RETAINED} retained, {SESSIONS} sessions x {QUEUED} queued in {:.2} s; file {:.1} MiB",
        filling.elapsed().as_secs_f64(),
        size as f64 / (1024.0 * 1024.0)
    );

    for run in 1..=3 {
        let started = Instant::now();
        let server = Server::start(config.clone()).await.expect("broker starts");
        let elapsed = started.elapsed();
        let broker = server.broker();
        assert_eq!(broker.retained.len(), RETAINED);
        assert_eq!(broker.registry.parked_len(), SESSIONS);
        println!(
            "start-up {run}: {:>6.2} s to restore {RETAINED} retained messages and {SESSIONS} sessions ({} subscriptions)",
            elapsed.as_secs_f64(),
            broker.router.len()
        );
        server.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wants = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        if wants("throughput") {
            println!("QoS 1, 4 publishers -> 1 subscriber, 64-byte payloads:");
            let sync = |c: &mut Config| c.storage.durability = Durability::Sync;
            throughput(
                "clean sessions (nothing stored), redb sync",
                400_000,
                sync,
                false,
            )
            .await;
            let memory = |c: &mut Config| c.storage.backend = StorageBackend::Memory;
            throughput("persistent subscriber, memory store", 400_000, memory, true).await;
            for (label, durability, messages) in [
                (
                    "persistent subscriber, redb none",
                    Durability::None,
                    400_000,
                ),
                (
                    "persistent subscriber, redb interval (100 ms)",
                    Durability::Interval,
                    400_000,
                ),
                (
                    "persistent subscriber, redb sync",
                    Durability::Sync,
                    100_000,
                ),
            ] {
                throughput(label, messages, |c| c.storage.durability = durability, true).await;
            }
        }
        if wants("startup") {
            startup().await;
        }
    });
}
