//! A midge node killed under traffic, in a cluster of three nodes on three clustered
//! nats-servers: the other nodes keep serving without a pause, the killed node's publisher
//! reconnects to another node and goes on, and what crossed the killed node is measured
//! against the stage-1 guarantee (QoS 1 across a node failure: at most once). Clients are
//! raw MQTT bytes. A missing nats-server fails these tests: they never skip.

mod support;

use std::time::{Duration, Instant};

use support::cluster::*;
use support::*;

/// Time between two publishes of one publisher.
const SPACING: Duration = Duration::from_millis(5);
/// How long the survivors' publisher runs; node a is killed a third of the way in.
const RUN: Duration = Duration::from_secs(3);
/// The longest a delivery between two surviving nodes may pause while a third dies.
/// The traffic between b and c never touches a (nor its NATS server, which stays up),
/// so the pause allowed is far below the NATS timeouts (2 s ping, 5 s node TTL); the
/// margin is for a loaded test machine.
const MAX_PAUSE: Duration = Duration::from_millis(1_000);

/// Publishes `fail/{name}/{seq}` at QoS 1 every [`SPACING`] until `stop`, each awaited
/// until its PUBACK; returns the sequence numbers acknowledged, or what was acknowledged
/// before the connection failed.
async fn publish_until(mut raw: Raw, name: &str, first: u32, stop: Instant) -> (Vec<u32>, bool) {
    let mut acked = Vec::new();
    let mut seq = first;
    while Instant::now() < stop {
        let packet_id = u16::try_from(seq % 60_000 + 1).unwrap();
        let topic = format!("fail/{name}");
        let sent = raw
            .send(&publish(
                false,
                1,
                false,
                false,
                &topic,
                packet_id,
                &seq.to_be_bytes(),
            ))
            .await;
        if sent.is_err() {
            return (acked, false);
        }
        match raw.recv().await {
            Ok(p) if p.kind() == 4 && p.packet_id() == packet_id => acked.push(seq),
            Ok(p) => panic!("{name}: expected PUBACK {packet_id}, got {p:02X?}"),
            Err(_) => return (acked, false),
        }
        seq += 1;
        tokio::time::sleep(SPACING).await;
    }
    (acked, true)
}

#[tokio::test]
async fn a_killed_node_pauses_nothing_between_the_others_and_its_publisher_moves_on() {
    let dir = TestDir::new("failure-kill");
    let servers = Nats::cluster(&dir, 3).await;
    let dirs: Vec<TestDir> = ["a", "b", "c"]
        .iter()
        .map(|n| TestDir::new(&format!("failure-kill-{n}")))
        .collect();
    let mut nodes: Vec<Midge> = ["a", "b", "c"]
        .iter()
        .zip(&dirs)
        .zip(&servers)
        .map(|((name, d), server)| node(d, name, &[server.url()], 0))
        .collect();
    for n in &mut nodes {
        n.start(&[]).await;
    }
    let (port_a, port_b, port_c) = (nodes[0].port, nodes[1].port, nodes[2].port);

    // The subscriber on c, to both publishers' topics and the probes.
    let (mut sub, _) = connect(port_c, &connect_v311("failure-sub", true)).await;
    subscribe_to(&mut sub, 1, "fail/#", 1).await;
    let (mut pub_a, _) = connect(port_a, &connect_v311("failure-pub-a", true)).await;
    let (mut pub_b, _) = connect(port_b, &connect_v311("failure-pub-b", true)).await;
    until_seen(&mut pub_a, &mut sub, "fail/probe-a").await;
    until_seen(&mut pub_b, &mut sub, "fail/probe-b").await;

    let started = Instant::now();
    let stop = started + RUN;
    let subscriber = tokio::spawn(async move {
        // (topic, sequence number, arrival) of every delivery until all is quiet.
        let mut got: Vec<(String, u32, Instant)> = Vec::new();
        let mut quiet_since = Instant::now();
        loop {
            match sub.recv_within(Duration::from_millis(100)).await.unwrap() {
                Some(packet) => {
                    let p = packet.publish(false);
                    sub.send(&ack(PUBACK, p.packet_id)).await.unwrap();
                    let seq = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
                    got.push((p.topic, seq, Instant::now()));
                    quiet_since = Instant::now();
                }
                None if Instant::now() > stop && quiet_since.elapsed() > QUIET => return got,
                None => {}
            }
        }
    });
    let from_b = tokio::spawn(publish_until(pub_b, "b", 0, stop));
    let from_a = tokio::spawn(publish_until(pub_a, "a", 0, stop));

    tokio::time::sleep(RUN / 3).await;
    let killed_at = Instant::now();
    nodes[0].kill();
    let (acked_on_a, finished) = from_a.await.unwrap();
    assert!(!finished, "a's publisher noticed nothing of the kill");
    // a's publisher reconnects, to b, and goes on where it was.
    let next = acked_on_a.last().map_or(0, |s| s + 1);
    let (moved, _) = connect(port_b, &connect_v311("failure-pub-a", true)).await;
    let reconnected_in = killed_at.elapsed();
    let (acked_after_move, finished) = publish_until(moved, "a", next, stop).await;
    assert!(finished);
    let (acked_on_b, finished) = from_b.await.unwrap();
    assert!(finished, "b's publisher was cut off by a's death");
    let got = subscriber.await.unwrap();

    let stream = |topic: &str| -> Vec<(u32, Instant)> {
        got.iter()
            .filter(|(t, _, _)| t == topic)
            .map(|(_, seq, at)| (*seq, *at))
            .collect()
    };
    // Between the survivors: everything, once, in order, and no pause.
    let b = stream("fail/b");
    let seqs: Vec<u32> = b.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs, acked_on_b,
        "b -> c lost, doubled or reordered messages"
    );
    let longest_pause = b
        .windows(2)
        .map(|w| w[1].1 - w[0].1)
        .max()
        .unwrap_or_default();
    assert!(
        longest_pause < MAX_PAUSE,
        "b -> c paused {longest_pause:?} while a died"
    );
    // Through the dead node: at most once and in order; what it acknowledged but never
    // forwarded is the stage-1 loss, measured here. `next` was in flight at the kill: a
    // may have forwarded it without acknowledging, and the publisher sends it again.
    let a: Vec<u32> = stream("fail/a").iter().map(|(s, _)| *s).collect();
    let before_kill: Vec<u32> = a.iter().copied().filter(|s| *s < next).collect();
    assert!(
        before_kill.windows(2).all(|w| w[0] < w[1]),
        "a's messages doubled or reordered: {a:?}"
    );
    let lost: Vec<u32> = acked_on_a
        .iter()
        .copied()
        .filter(|s| !before_kill.contains(s))
        .collect();
    // After the move, from b: everything, once, in order.
    let mut after: Vec<u32> = a.iter().copied().filter(|s| *s >= next).collect();
    if after.len() >= 2 && after[0] == next && after[1] == next {
        after.remove(0);
    }
    assert_eq!(after, acked_after_move, "a's publisher, moved to b");
    println!(
        "kill under traffic: b->c {} messages, longest pause {longest_pause:?}; a acknowledged \
         {} before the kill, {} of them not delivered ({lost:?}); a's publisher reconnected to b \
         in {reconnected_in:?} and sent {} more, all delivered",
        acked_on_b.len(),
        acked_on_a.len(),
        lost.len(),
        acked_after_move.len(),
    );
    // The loss is bounded by what a had acknowledged and not yet handed to NATS: a few
    // messages at most at this rate, never the stream.
    assert!(
        lost.len() <= 5,
        "a lost {} acknowledged messages",
        lost.len()
    );
}
