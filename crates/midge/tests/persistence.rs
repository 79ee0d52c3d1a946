//! Persistence through crashes: the real `midge` binary is started as a child process with
//! its own config and data directory, killed with SIGKILL and started again; independent
//! clients (rumqttc, and raw bytes that share no code with the broker) check what survived.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use support::*;

/// How long "nothing more arrives" is watched for. Absence cannot be awaited as an event,
/// so this is a bounded quiet period after everything expected has arrived.
const QUIET: Duration = Duration::from_millis(500);

/// Reads `count` PUBLISH packets on a resumed session, acknowledging each (QoS 1: PUBACK;
/// QoS 2: PUBREC, then PUBCOMP for the PUBREL), then checks nothing more arrives.
async fn receive_exactly(raw: &mut Raw, v5: bool, count: usize) -> Vec<RawPublish> {
    let mut got = Vec::new();
    let mut awaiting_pubrel = BTreeSet::new();
    while got.len() < count || !awaiting_pubrel.is_empty() {
        let packet = raw
            .recv()
            .await
            .unwrap_or_else(|e| panic!("after {} of {count} messages: {e}", got.len()));
        match packet.kind() {
            3 => {
                let p = packet.publish(v5);
                match p.qos {
                    1 => raw.send(&ack(PUBACK, p.packet_id)).await.unwrap(),
                    2 => {
                        awaiting_pubrel.insert(p.packet_id);
                        raw.send(&ack(PUBREC, p.packet_id)).await.unwrap();
                    }
                    _ => {}
                }
                got.push(p);
            }
            6 => {
                let id = packet.packet_id();
                assert!(awaiting_pubrel.remove(&id), "PUBREL for unknown id {id}");
                raw.send(&ack(PUBCOMP, id)).await.unwrap();
            }
            other => panic!("unexpected packet type {other}: {packet:02X?}"),
        }
    }
    assert_eq!(got.len(), count, "more messages than expected: {got:?}");
    let extra = raw.recv_within(QUIET).await.unwrap();
    assert!(extra.is_none(), "more than {count} messages: {extra:02X?}");
    got
}

/// Sends DISCONNECT and waits for the broker to close, so the session is parked before
/// anything else happens.
async fn disconnect(mut raw: Raw) {
    raw.send(&DISCONNECT).await.unwrap();
    match raw.recv_within(support::TIMEOUT).await {
        Err(_) => {}
        Ok(other) => panic!("expected the broker to close, got {other:02X?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_and_queued_qos1_qos2_messages_survive_sigkill_once_and_in_order() {
    let dir = TestDir::new("survive");
    let mut midge = Midge::new(&dir, "sync");
    midge.start(&[]).await;

    // Two persistent subscribers, then offline: MQTT 3.1.1 with clean session 0, and MQTT 5
    // with a one-hour session expiry.
    let (mut v311, present) = connect(midge.port, &connect_v311("sub-v311", false)).await;
    assert!(!present);
    subscribe_and_wait(&mut v311, false, "data/#", 2).await;
    disconnect(v311).await;
    let (mut v5, _) = connect(midge.port, &connect_v5("sub-v5", true, 3600)).await;
    subscribe_and_wait(&mut v5, true, "data/#", 2).await;
    disconnect(v5).await;

    // rumqttc publishes a retained message and ten QoS 1/2 messages, and waits for every
    // acknowledgement (PUBACK, or PUBCOMP for QoS 2).
    let mut options = MqttOptions::new("publisher", "127.0.0.1", midge.port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 32);
    client
        .publish("state/lamp", QoS::AtLeastOnce, true, "on")
        .await
        .unwrap();
    for i in 0..10u32 {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        client
            .publish("data/x", qos, false, format!("m{i}"))
            .await
            .unwrap();
    }
    let acknowledged = async {
        let mut acks = 0;
        while acks < 11 {
            match events.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(_) | Incoming::PubComp(_))) => acks += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    };
    tokio::time::timeout(support::TIMEOUT, acknowledged)
        .await
        .expect("all acknowledged");

    midge.crash_and_restart().await;

    // The retained message is there for a new subscriber (rumqttc, MQTT 5).
    let options = rumqttc::v5::MqttOptions::new("retained-check", "127.0.0.1", midge.port);
    let (client, mut events) = rumqttc::v5::AsyncClient::new(options, 10);
    client
        .subscribe("state/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    let retained = tokio::time::timeout(support::TIMEOUT, async {
        loop {
            match events.poll().await {
                Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::Publish(p))) => break p,
                Ok(_) => {}
                Err(e) => panic!("retained check: {e}"),
            }
        }
    })
    .await
    .expect("retained message after restart");
    assert_eq!(&retained.topic[..], b"state/lamp");
    assert_eq!(&retained.payload[..], b"on");
    assert!(retained.retain);

    // Each subscriber resumes and gets the ten messages once, in order, at their QoS.
    for (v5, packet) in [
        (false, connect_v311("sub-v311", false)),
        (true, connect_v5("sub-v5", false, 3600)),
    ] {
        let (mut raw, present) = connect(midge.port, &packet).await;
        assert!(present, "session present after the crash (v5: {v5})");
        let got = receive_exactly(&mut raw, v5, 10).await;
        let payloads: Vec<String> = got
            .iter()
            .map(|p| String::from_utf8(p.payload.clone()).unwrap())
            .collect();
        let expected: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
        assert_eq!(payloads, expected, "v5: {v5}");
        let qos: Vec<u8> = got.iter().map(|p| p.qos).collect();
        assert_eq!(qos, [1, 2, 1, 2, 1, 2, 1, 2, 1, 2], "v5: {v5}");
        disconnect(raw).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_to_a_subscriber_crashed_between_pubrec_and_pubcomp_resumes_with_pubrel() {
    let dir = TestDir::new("q2-sub");
    let mut midge = Midge::new(&dir, "sync");
    midge.start(&[]).await;

    let (mut sub, _) = connect(midge.port, &connect_v5("q2-sub", true, 3600)).await;
    subscribe_and_wait(&mut sub, true, "q2", 2).await;

    // A publisher completes its QoS 2 exchange.
    let (mut publisher, _) = connect(midge.port, &connect_v311("q2-pub", true)).await;
    publisher
        .send(&publish(false, 2, false, false, "q2", 1, b"exactly-once"))
        .await
        .unwrap();
    assert_eq!(publisher.recv().await.unwrap().first, 0x50, "PUBREC");
    publisher.send(&ack(PUBREL, 1)).await.unwrap();
    assert_eq!(publisher.recv().await.unwrap().first, 0x70, "PUBCOMP");

    // The subscriber gets the PUBLISH, answers PUBREC, receives PUBREL...
    let delivered = sub.recv().await.unwrap().publish(true);
    assert_eq!(delivered.payload, b"exactly-once");
    assert_eq!(delivered.qos, 2);
    sub.send(&ack(PUBREC, delivered.packet_id)).await.unwrap();
    let pubrel = sub.recv().await.unwrap();
    assert_eq!(pubrel.first, 0x62, "PUBREL");
    assert_eq!(pubrel.packet_id(), delivered.packet_id);

    // ...and the broker dies before the PUBCOMP.
    midge.crash_and_restart().await;

    let (mut sub, present) = connect(midge.port, &connect_v5("q2-sub", false, 3600)).await;
    assert!(present);
    // [MQTT-4.4.0-1] the broker resends PUBREL, not the PUBLISH.
    let resent = sub.recv().await.unwrap();
    assert_eq!(resent.first, 0x62, "PUBREL expected, got {resent:02X?}");
    assert_eq!(resent.packet_id(), delivered.packet_id);
    sub.send(&ack(PUBCOMP, delivered.packet_id)).await.unwrap();
    let extra = sub.recv_within(QUIET).await.unwrap();
    assert!(extra.is_none(), "nothing more expected, got {extra:02X?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_from_a_publisher_crashed_between_pubrec_and_pubrel_is_routed_once() {
    let dir = TestDir::new("q2-pub");
    let mut midge = Midge::new(&dir, "sync");
    midge.start(&[]).await;

    let (mut sub, _) = connect(midge.port, &connect_v311("q2p-sub", false)).await;
    subscribe_and_wait(&mut sub, false, "q2p", 2).await;
    disconnect(sub).await;

    let (mut publisher, _) = connect(midge.port, &connect_v311("q2p-pub", false)).await;
    publisher
        .send(&publish(false, 2, false, false, "q2p", 7, b"once"))
        .await
        .unwrap();
    let pubrec = publisher.recv().await.unwrap();
    assert_eq!(pubrec.first, 0x50, "PUBREC");
    assert_eq!(pubrec.packet_id(), 7);

    // The broker dies before the PUBREL.
    midge.crash_and_restart().await;

    let (mut publisher, present) = connect(midge.port, &connect_v311("q2p-pub", false)).await;
    assert!(present);
    // The publisher did not get PUBCOMP, so it resends the PUBLISH with DUP, same id.
    publisher
        .send(&publish(false, 2, true, false, "q2p", 7, b"once"))
        .await
        .unwrap();
    let pubrec = publisher.recv().await.unwrap();
    assert_eq!(
        (pubrec.first, pubrec.packet_id()),
        (0x50, 7),
        "PUBREC again"
    );
    publisher.send(&ack(PUBREL, 7)).await.unwrap();
    let pubcomp = publisher.recv().await.unwrap();
    assert_eq!((pubcomp.first, pubcomp.packet_id()), (0x70, 7), "PUBCOMP");

    // The subscriber gets it exactly once.
    let (mut sub, present) = connect(midge.port, &connect_v311("q2p-sub", false)).await;
    assert!(present);
    let got = receive_exactly(&mut sub, false, 1).await;
    assert_eq!(got[0].payload, b"once");
}

/// The subscriber of the crash loop: reconnects whenever the broker goes away, records
/// every number it receives, acknowledges it.
async fn crash_loop_subscriber(
    port: u16,
    received: Arc<Mutex<Vec<u32>>>,
    progress: tokio::sync::watch::Sender<usize>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        let Ok(mut raw) = Raw::connect(port).await else {
            // The broker is restarting: try again shortly.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if raw.send(&connect_v311("loop-sub", false)).await.is_err() {
            continue;
        }
        loop {
            let packet = tokio::select! {
                p = raw.recv_within(Duration::from_secs(1)) => p,
                _ = stop.changed() => return,
            };
            match packet {
                Ok(Some(p)) if p.kind() == 3 => {
                    let p = p.publish(false);
                    let n: u32 = String::from_utf8(p.payload)
                        .unwrap()
                        .parse()
                        .expect("numbered payload");
                    let distinct = {
                        let mut r = received.lock().unwrap();
                        r.push(n);
                        r.iter().collect::<BTreeSet<_>>().len()
                    };
                    progress.send_replace(distinct);
                    if raw.send(&ack(PUBACK, p.packet_id)).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_with_sync_durability_loses_no_acknowledged_message() {
    const TOTAL: u32 = 600;
    const WINDOW: usize = 10;
    const KILL_AT: [usize; 4] = [100, 250, 400, 500];
    let dir = TestDir::new("crash-loop");
    let mut midge = Midge::new(&dir, "sync");
    midge.start(&[]).await;

    let (mut sub, _) = connect(midge.port, &connect_v311("loop-sub", false)).await;
    subscribe_and_wait(&mut sub, false, "loop", 1).await;
    disconnect(sub).await;
    let received = Arc::new(Mutex::new(Vec::new()));
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let subscriber = tokio::spawn(crash_loop_subscriber(
        midge.port,
        received.clone(),
        progress_tx,
        stop_rx,
    ));

    // The publisher: QoS 1, at most WINDOW unacknowledged; after a crash it reconnects and
    // resends everything unacknowledged with DUP.
    let mut acked = BTreeSet::new();
    let mut unacked: BTreeMap<u16, u32> = BTreeMap::new();
    let mut next = 0u32;
    let mut kills = KILL_AT.iter().peekable();
    let (mut publisher, _) = connect(midge.port, &connect_v311("loop-pub", false)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    while acked.len() < TOTAL as usize {
        assert!(
            tokio::time::Instant::now() < deadline,
            "crash loop took too long"
        );
        let mut broken = false;
        while unacked.len() < WINDOW && next < TOTAL {
            let packet_id = (next % 60_000 + 1) as u16;
            let payload = next.to_string();
            if publisher
                .send(&publish(
                    false,
                    1,
                    false,
                    false,
                    "loop",
                    packet_id,
                    payload.as_bytes(),
                ))
                .await
                .is_err()
            {
                broken = true;
            }
            unacked.insert(packet_id, next);
            next += 1;
        }
        if !broken {
            match publisher.recv().await {
                Ok(p) if p.first == 0x40 => {
                    if let Some(n) = unacked.remove(&p.packet_id()) {
                        acked.insert(n);
                    }
                }
                Ok(other) => panic!("publisher: unexpected {other:02X?}"),
                Err(_) => broken = true,
            }
        }
        if kills.peek().is_some_and(|&&k| acked.len() >= k) {
            kills.next();
            midge.crash_and_restart().await;
            broken = true;
        }
        if broken {
            let (mut again, present) = connect(midge.port, &connect_v311("loop-pub", false)).await;
            assert!(present, "the publisher's session survives");
            for (packet_id, n) in &unacked {
                again
                    .send(&publish(
                        false,
                        1,
                        true,
                        false,
                        "loop",
                        *packet_id,
                        n.to_string().as_bytes(),
                    ))
                    .await
                    .unwrap();
            }
            publisher = again;
        }
    }

    // Every acknowledged number reaches the persistent subscriber.
    let all = tokio::time::timeout(
        Duration::from_secs(60),
        progress.wait_for(|&n| n >= TOTAL as usize),
    )
    .await;
    let got = received.lock().unwrap().clone();
    let distinct: BTreeSet<u32> = got.iter().copied().collect();
    let missing: Vec<u32> = acked.difference(&distinct).copied().collect();
    assert!(
        all.is_ok() && missing.is_empty(),
        "acknowledged but never delivered: {missing:?} (received {} distinct)",
        distinct.len()
    );
    let duplicates = got.len() - distinct.len();
    eprintln!(
        "crash loop: {TOTAL} acknowledged, {} kills, {} delivered, {duplicates} duplicate deliveries",
        KILL_AT.len(),
        got.len()
    );
    stop_tx.send_replace(true);
    let _ = subscriber.await;
}

/// Fills the store with 200 retained messages `r/0`..`r/199`, then kills the broker.
async fn fill_with_retained(midge: &mut Midge) {
    midge.start(&[]).await;
    let (mut publisher, _) = connect(midge.port, &connect_v311("filler", true)).await;
    for i in 0..200u16 {
        let payload = vec![b'x'; 200];
        publisher
            .send(&publish(
                false,
                1,
                false,
                true,
                &format!("r/{i}"),
                i + 1,
                &payload,
            ))
            .await
            .unwrap();
        assert_eq!(publisher.recv().await.unwrap().first, 0x40, "PUBACK");
    }
    midge.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_row_stops_the_start_and_recover_keeps_every_other_row() {
    let dir = TestDir::new("bad-row");
    let mut midge = Midge::new(&dir, "sync");
    fill_with_retained(&mut midge).await;
    // A row the broker did not write: redb itself is intact, the record is not ours.
    {
        let db = redb::Database::open(midge.store_file()).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let table: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("retained");
            let mut table = txn.open_table(table).unwrap();
            table
                .insert(b"r/bad".as_slice(), [0xFF, 0x00].as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }

    let (status, log) = midge.start_refused(&[]).await;
    assert!(!status.success());
    let path = midge.store_file().display().to_string();
    assert!(log.contains(&path), "names the file:\n{log}");
    assert!(
        log.contains("table `retained` does not decode"),
        "says what failed:\n{log}"
    );

    midge.start(&["--recover"]).await;
    let log = midge.last_log();
    assert!(
        log.contains("1 undecodable row(s) in table `retained`"),
        "says what was lost:\n{log}"
    );
    assert!(
        log.contains("midge.redb.damaged-"),
        "names where the file went:\n{log}"
    );

    // Every other retained message is still there.
    let (mut sub, _) = connect(midge.port, &connect_v311("reader", true)).await;
    subscribe_and_wait(&mut sub, false, "r/#", 0).await;
    let mut topics = BTreeSet::new();
    while topics.len() < 200 {
        let p = sub.recv().await.expect("retained message").publish(false);
        assert!(p.retain);
        topics.insert(p.topic);
    }
    assert!(!topics.contains("r/bad"));
    assert!(
        sub.recv_within(QUIET).await.unwrap().is_none(),
        "nothing else"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_stops_the_start_naming_the_file_and_recover_sets_it_aside() {
    for damage in ["truncated", "overwritten"] {
        let dir = TestDir::new(damage);
        let mut midge = Midge::new(&dir, "sync");
        fill_with_retained(&mut midge).await;

        let path = midge.store_file();
        let len = std::fs::metadata(&path).unwrap().len();
        match damage {
            "truncated" => {
                let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                file.set_len(len / 2).unwrap();
            }
            _ => {
                // Everything after the first page becomes garbage.
                let mut bytes = std::fs::read(&path).unwrap();
                for b in bytes.iter_mut().skip(4096) {
                    *b = 0xA5;
                }
                std::fs::write(&path, bytes).unwrap();
            }
        }

        let (status, log) = midge.start_refused(&[]).await;
        assert!(!status.success(), "{damage}: refused with a failure status");
        assert!(
            log.contains(&path.display().to_string()),
            "{damage}: names the file:\n{log}"
        );
        assert!(
            log.contains("damaged"),
            "{damage}: says what is wrong:\n{log}"
        );
        assert!(
            log.contains("--recover"),
            "{damage}: says what to do:\n{log}"
        );

        midge.start(&["--recover"]).await;
        let log = midge.last_log();
        eprintln!("{damage}, started with --recover:\n{log}");
        assert!(
            log.contains("moved aside"),
            "{damage}: says the file was moved:\n{log}"
        );
        assert!(log.contains("lost"), "{damage}: says what was lost:\n{log}");
        let aside: Vec<_> = std::fs::read_dir(dir.0.join("data"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("midge.redb.damaged-")
            })
            .collect();
        assert_eq!(aside.len(), 1, "{damage}: the damaged file is kept aside");
        assert!(
            log.contains(&aside[0].path().display().to_string()),
            "{damage}: names where:\n{log}"
        );

        // The recovered broker works, and its store opens without --recover next time.
        let (mut sub, _) = connect(midge.port, &connect_v311("after", true)).await;
        subscribe_and_wait(&mut sub, false, "t", 1).await;
        midge.kill();
        midge.start(&[]).await;
        midge.kill();
    }
}
