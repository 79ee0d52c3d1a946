//! Shared subscriptions across a cluster of real `midge` binaries on a real nats-server:
//! each message reaches exactly one member of a `$share` group cluster-wide, whichever
//! node published it and wherever the members are. Clients are raw MQTT bytes.

mod support;

use std::time::{Duration, Instant};

use support::cluster::*;
use support::*;

/// Nodes `names` on one nats-server, started.
async fn nodes(test: &str, names: &[&str]) -> (Vec<TestDir>, Nats, Vec<Midge>) {
    let mut dirs = vec![TestDir::new(test)];
    let nats = Nats::start(&dirs[0]).await;
    let mut nodes = Vec::new();
    for name in names {
        let dir = TestDir::new(&format!("{test}-{name}"));
        let mut node = node(&dir, name, &[nats.url()], 0);
        node.start(&[]).await;
        dirs.push(dir);
        nodes.push(node);
    }
    (dirs, nats, nodes)
}

/// How many subscriptions the NATS connections of node `node` hold together (reply
/// inboxes aside).
fn node_subscriptions(nats: &Nats, node: &str) -> usize {
    let connz = nats.connz().expect("connz");
    let prefix = format!("midge {node}");
    connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["name"]
                .as_str()
                .is_some_and(|n| n == prefix || n.starts_with(&format!("{prefix} ")))
        })
        .flat_map(|c| c["subscriptions_list"].as_array().into_iter().flatten())
        // A node that made a NATS request holds its reply inbox from then on; its control
        // subject (`mq.c.<node>.leave`, client-id takeovers) is always there.
        .filter(|s| {
            s.as_str()
                .is_some_and(|s| !s.starts_with("_INBOX.") && !s.starts_with("mq.c."))
        })
        .count()
}

/// Waits until node `node` holds `count` NATS subscriptions.
async fn wait_node_subscriptions(nats: &Nats, node: &str, count: usize) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = node_subscriptions(nats, node);
        if now == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {node} holds {now} NATS subscriptions, expected {count}"
        );
        // Interest reaches NATS asynchronously; its monitoring endpoint is the signal.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connected client subscribed to `filter` at QoS 1.
async fn member(port: u16, id: &str, filter: &str) -> Raw {
    let (mut raw, _) = connect(port, &connect_v311(id, true)).await;
    subscribe_to(&mut raw, 1, filter, 1).await;
    raw
}

/// Reads from all `clients` (acknowledging) until `total` PUBLISHes arrived among them,
/// then checks that nothing more arrives. Returns, per client, the payloads it got; each
/// must have come at QoS 1.
async fn collect(clients: &mut [Raw], total: usize) -> Vec<Vec<String>> {
    collect_at(clients, total, &vec![1; clients.len()]).await
}

/// [`collect`], client `i`'s messages expected at QoS `qos[i]`.
async fn collect_at(clients: &mut [Raw], total: usize, qos: &[u8]) -> Vec<Vec<String>> {
    let mut got: Vec<Vec<String>> = vec![Vec::new(); clients.len()];
    let deadline = Instant::now() + 3 * TIMEOUT;
    while got.iter().map(Vec::len).sum::<usize>() < total {
        assert!(
            Instant::now() < deadline,
            "{} of {total} messages arrived: {got:?}",
            got.iter().map(Vec::len).sum::<usize>()
        );
        for (i, raw) in clients.iter_mut().enumerate() {
            while let Some(packet) = raw
                .recv_within(Duration::from_millis(5))
                .await
                .expect("connected")
            {
                let p = packet.publish(false);
                assert_eq!(p.qos, qos[i], "client {i}: {p:?}");
                if p.qos == 1 {
                    raw.send(&ack(PUBACK, p.packet_id)).await.unwrap();
                }
                got[i].push(String::from_utf8(p.payload).unwrap());
            }
        }
    }
    for (i, raw) in clients.iter_mut().enumerate() {
        if let Some(p) = raw.recv_within(QUIET).await.unwrap() {
            panic!("more than {total} messages: client {i} got {p:02X?} after {got:?}");
        }
    }
    got
}

/// Publishes `n` QoS 1 messages on `topic(i)` from each of `publishers` (named), payload
/// `{name}-{i}`; returns every payload.
async fn publish_from(
    publishers: &mut [(String, Raw)],
    n: usize,
    topic: impl Fn(usize) -> String,
) -> Vec<String> {
    let mut sent = Vec::new();
    for i in 0..n {
        for (name, raw) in publishers.iter_mut() {
            let payload = format!("{name}-{i}");
            publish_acked(raw, 1, &topic(i), (i + 1) as u16, payload.as_bytes()).await;
            sent.push(payload);
        }
    }
    sent.sort();
    sent
}

async fn publishers(nodes: &[Midge], names: &[&str]) -> Vec<(String, Raw)> {
    let mut out = Vec::new();
    for (node, name) in nodes.iter().zip(names) {
        let (raw, _) = connect(node.port, &connect_v311(&format!("pub-{name}"), true)).await;
        out.push((name.to_string(), raw));
    }
    out
}

/// Every sent payload exactly once among `got`, and the members that got any.
fn once_each(got: &[Vec<String>], sent: &[String]) -> usize {
    let mut all: Vec<String> = got.iter().flatten().cloned().collect();
    all.sort();
    assert_eq!(all, sent, "every message exactly once across the group");
    got.iter().filter(|g| !g.is_empty()).count()
}

#[tokio::test]
async fn members_on_two_nodes_get_each_message_once_from_publishers_on_both() {
    let names = ["a", "b"];
    let (_dirs, nats, nodes) = nodes("cluster-shared-two", &names).await;
    let mut members = vec![
        member(nodes[0].port, "m-a", "$share/g/jobs/+").await,
        member(nodes[1].port, "m-b", "$share/g/jobs/+").await,
    ];
    for name in names {
        wait_node_subscriptions(&nats, name, 2).await;
    }
    let mut publishers = publishers(&nodes, &names).await;
    let sent = publish_from(&mut publishers, 100, |i| format!("jobs/{i}")).await;
    let got = collect(&mut members, sent.len()).await;
    assert_eq!(once_each(&got, &sent), 2, "spread over both nodes: {got:?}");
}

/// Three nodes, members on each (two on node b, which picks between them), two groups on
/// one `#` filter, a plain subscriber to it, and publishers on every node: each group
/// gets every message once, the plain subscriber gets every message once, and the
/// parent level that `#` also matches is no exception.
#[tokio::test]
async fn three_nodes_two_groups_and_a_plain_subscriber_on_one_filter() {
    let names = ["a", "b", "c"];
    let (_dirs, nats, nodes) = nodes("cluster-shared-three", &names).await;
    let mut group_g = vec![
        member(nodes[0].port, "g-a", "$share/g/w/#").await,
        member(nodes[1].port, "g-b1", "$share/g/w/#").await,
        member(nodes[1].port, "g-b2", "$share/g/w/#").await,
        member(nodes[2].port, "g-c", "$share/g/w/#").await,
    ];
    // Group h has members on a and c only; the plain subscriber sits on b.
    let mut group_h = vec![
        member(nodes[0].port, "h-a", "$share/h/w/#").await,
        member(nodes[2].port, "h-c", "$share/h/w/#").await,
    ];
    let mut plain = vec![member(nodes[1].port, "plain", "w/#").await];
    // `w/#` is two subjects per group and per plain filter, plus a hand-over subject
    // per group.
    wait_node_subscriptions(&nats, "a", 6).await;
    wait_node_subscriptions(&nats, "b", 5).await;
    wait_node_subscriptions(&nats, "c", 6).await;
    let mut publishers = publishers(&nodes, &names).await;
    let sent = publish_from(&mut publishers, 40, |i| {
        if i % 2 == 0 {
            "w".into()
        } else {
            format!("w/{i}")
        }
    })
    .await;
    let got_g = collect(&mut group_g, sent.len()).await;
    let nodes_g = [&got_g[0], &got_g[1], &got_g[2], &got_g[3]]
        .iter()
        .map(|g| !g.is_empty())
        .collect::<Vec<_>>();
    assert!(once_each(&got_g, &sent) >= 2, "spread: {got_g:?}");
    assert!(
        nodes_g[0] as u8 + (nodes_g[1] || nodes_g[2]) as u8 + nodes_g[3] as u8 >= 2,
        "over more than one node: {got_g:?}"
    );
    assert!(
        nodes_g[1] && nodes_g[2],
        "node b's strategy (round robin) uses both its members: {got_g:?}"
    );
    let got_h = collect(&mut group_h, sent.len()).await;
    assert_eq!(
        once_each(&got_h, &sent),
        2,
        "spread over a and c: {got_h:?}"
    );
    let got_plain = collect(&mut plain, sent.len()).await;
    once_each(&got_plain, &sent);
}

/// A member leaves (UNSUBSCRIBE) and its node stops getting the group's messages; it
/// joins again and gets its share again; every message reaches the group once.
#[tokio::test]
async fn a_member_leaving_and_rejoining() {
    let names = ["a", "b"];
    let (_dirs, nats, nodes) = nodes("cluster-shared-rejoin", &names).await;
    let mut members = vec![
        member(nodes[0].port, "m-a", "$share/g/t").await,
        member(nodes[1].port, "m-b", "$share/g/t").await,
    ];
    wait_node_subscriptions(&nats, "a", 2).await;
    wait_node_subscriptions(&nats, "b", 2).await;
    let mut publishers = publishers(&nodes, &names).await;
    let sent = publish_from(&mut publishers, 30, |_| "t".into()).await;
    assert_eq!(
        once_each(&collect(&mut members, sent.len()).await, &sent),
        2
    );

    members[1]
        .send(&unsubscribe(false, 2, "$share/g/t"))
        .await
        .unwrap();
    assert_eq!(members[1].recv().await.unwrap().kind(), 11, "UNSUBACK");
    wait_node_subscriptions(&nats, "b", 0).await;
    let sent = publish_from(&mut publishers, 30, |_| "t".into()).await;
    let got = collect(&mut members, sent.len()).await;
    once_each(&got, &sent);
    assert!(got[1].is_empty(), "m-b left: {got:?}");

    subscribe_to(&mut members[1], 3, "$share/g/t", 1).await;
    wait_node_subscriptions(&nats, "b", 2).await;
    let sent = publish_from(&mut publishers, 30, |_| "t".into()).await;
    assert_eq!(
        once_each(&collect(&mut members, sent.len()).await, &sent),
        2,
        "m-b is back"
    );
}

/// Node b's only member is offline (persistent session) and queues what NATS gives b;
/// when its session ends, node b has no member left and hands those messages to node a's
/// member through NATS: each message still reaches the group once. Node b's hand-over
/// subscription is still in the queue group when its first requests go out; without
/// `no_echo` on b's shared connection NATS gave b about every other first request, which
/// nobody answered, and that message was lost.
#[tokio::test]
async fn a_nodes_last_member_leaving_hands_its_queue_to_another_node() {
    let names = ["a", "b"];
    let (_dirs, nats, nodes) = nodes("cluster-shared-handover", &names).await;
    let mut online = vec![member(nodes[0].port, "m-a", "$share/g/q").await];
    let (mut away, _) = connect(nodes[1].port, &connect_v311("m-b", false)).await;
    subscribe_to(&mut away, 1, "$share/g/q", 1).await;
    wait_node_subscriptions(&nats, "a", 2).await;
    wait_node_subscriptions(&nats, "b", 2).await;
    away.send(&DISCONNECT).await.unwrap();
    drop(away);
    // The session stays on b, with its membership: NATS still picks node b at times.
    let mut publishers = publishers(&nodes[..1], &names[..1]).await;
    let sent = publish_from(&mut publishers, 60, |_| "q".into()).await;
    let mut early = Vec::new();
    while let Some(packet) = online[0].recv_within(QUIET).await.unwrap() {
        let p = packet.publish(false);
        online[0].send(&ack(PUBACK, p.packet_id)).await.unwrap();
        early.push(String::from_utf8(p.payload).unwrap());
    }
    assert!(
        !early.is_empty() && early.len() < sent.len(),
        "NATS picks both nodes: a got {} of {}",
        early.len(),
        sent.len()
    );
    // A clean session for m-b ends the old one: its queue goes to node a.
    let (mut fresh, present) = connect(nodes[1].port, &connect_v311("m-b", true)).await;
    assert!(!present);
    wait_node_subscriptions(&nats, "b", 0).await;
    let rest = collect(&mut online, sent.len() - early.len()).await;
    let mut all = early;
    all.extend(rest.into_iter().flatten());
    once_each(&[all], &sent);
    assert!(fresh.recv_within(QUIET).await.unwrap().is_none());
}

/// QoS is downgraded per member's subscription, wherever the member is: a QoS 0 member on
/// node b gets its share at QoS 0, a QoS 1 member on node a at QoS 1.
#[tokio::test]
async fn qos_is_downgraded_per_member_across_nodes() {
    let names = ["a", "b"];
    let (_dirs, nats, nodes) = nodes("cluster-shared-qos", &names).await;
    let mut members = vec![member(nodes[0].port, "m-a", "$share/g/k").await];
    let (mut low, _) = connect(nodes[1].port, &connect_v311("m-b", true)).await;
    subscribe_to(&mut low, 1, "$share/g/k", 0).await;
    members.push(low);
    wait_node_subscriptions(&nats, "a", 2).await;
    wait_node_subscriptions(&nats, "b", 2).await;
    let mut publishers = publishers(&nodes, &names).await;
    let sent = publish_from(&mut publishers, 40, |_| "k".into()).await;
    let got = collect_at(&mut members, sent.len(), &[1, 0]).await;
    assert_eq!(once_each(&got, &sent), 2, "{got:?}");
}

/// Node b's only member leaves (UNSUBSCRIBE) while a burst published on node a is on its
/// way: what NATS already sent to b goes to a's member, so every message reaches the
/// group once.
#[tokio::test]
async fn a_member_leaving_while_messages_are_on_their_way() {
    let names = ["a", "b"];
    let (_dirs, nats, nodes) = nodes("cluster-shared-burst", &names).await;
    let mut members = [
        member(nodes[0].port, "m-a", "$share/g/s").await,
        member(nodes[1].port, "m-b", "$share/g/s").await,
    ];
    wait_node_subscriptions(&nats, "a", 2).await;
    wait_node_subscriptions(&nats, "b", 2).await;
    let (mut publisher, _) = connect(nodes[0].port, &connect_v311("pub", true)).await;
    let mut sent = Vec::new();
    // Not waiting for PUBACKs: the burst is still in NATS when m-b leaves.
    for i in 0..300u16 {
        if i == 150 {
            members[1]
                .send(&unsubscribe(false, 2, "$share/g/s"))
                .await
                .unwrap();
        }
        let payload = format!("p-{i}");
        publisher
            .send(&publish(
                false,
                1,
                false,
                false,
                "s",
                i + 1,
                payload.as_bytes(),
            ))
            .await
            .unwrap();
        sent.push(payload);
    }
    sent.sort();
    let mut got = Vec::new();
    let deadline = Instant::now() + 3 * TIMEOUT;
    while got.len() < sent.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} messages arrived",
            got.len(),
            sent.len()
        );
        for raw in members.iter_mut() {
            while let Some(packet) = raw
                .recv_within(Duration::from_millis(5))
                .await
                .expect("connected")
            {
                // m-b's UNSUBACK comes among its messages.
                if packet.kind() != 3 {
                    continue;
                }
                let p = packet.publish(false);
                raw.send(&ack(PUBACK, p.packet_id)).await.unwrap();
                got.push(String::from_utf8(p.payload).unwrap());
            }
        }
    }
    once_each(&[got], &sent);
}
