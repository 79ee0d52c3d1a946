//! A cluster of real `midge` binaries through a real nats-server (2.15.1, installed by
//! scripts/nats-server.sh; CI installs it through scripts/test-deps.sh). Publisher and
//! subscriber sit on different nodes; clients are raw MQTT bytes sharing no code with the
//! broker. A missing nats-server fails these tests: they never skip.

mod support;

use std::time::{Duration, Instant};

use support::cluster::*;
use support::*;

#[tokio::test]
async fn qos_0_1_2_cross_nodes_downgraded_per_subscription() {
    let (_dir, nats, a, b, _da, _db) = two_nodes("cluster-qos").await;
    let (mut sub, _) = connect(b.port, &connect_v311("sub", true)).await;
    for (id, qos) in [(1, 0), (2, 1), (3, 2)] {
        subscribe_to(&mut sub, id, &format!("q/{qos}"), qos).await;
    }
    nats.wait_subjects("b", &["mq.m.q.0", "mq.m.q.1", "mq.m.q.2"])
        .await;
    let (mut publisher, _) = connect(a.port, &connect_v311("pub", true)).await;
    // Every publish QoS to every subscription QoS: delivered at the lower of the two.
    let mut id = 0;
    for publish_qos in 0..=2u8 {
        for sub_qos in 0..=2u8 {
            id += 1;
            let payload = format!("{publish_qos}{sub_qos}");
            publish_acked(
                &mut publisher,
                publish_qos,
                &format!("q/{sub_qos}"),
                id,
                payload.as_bytes(),
            )
            .await;
        }
    }
    let got = receive(&mut sub, 9).await;
    let mut seen: Vec<(String, u8)> = got
        .iter()
        .map(|p| (String::from_utf8(p.payload.clone()).unwrap(), p.qos))
        .collect();
    seen.sort();
    let expected: Vec<(String, u8)> = (0..=2u8)
        .flat_map(|p| (0..=2u8).map(move |s| (format!("{p}{s}"), p.min(s))))
        .collect();
    assert_eq!(seen, expected);
    assert!(got.iter().all(|p| !p.retain && !p.dup));
}

#[tokio::test]
async fn tricky_topics_wildcards_and_sys_across_nodes() {
    let dir = TestDir::new("cluster-topics");
    let nats = Nats::start(&dir).await;
    let (dir_a, dir_b) = (
        TestDir::new("cluster-topics-a"),
        TestDir::new("cluster-topics-b"),
    );
    // Node a publishes $SYS every second; none of it may reach b.
    let mut a = node(&dir_a, "a", &[nats.url()], 1);
    let mut b = node(&dir_b, "b", &[nats.url()], 0);
    a.start(&[]).await;
    b.start(&[]).await;
    let (mut sub, _) = connect(b.port, &connect_v311("sub", true)).await;
    subscribe_to(&mut sub, 1, "#", 1).await;
    subscribe_to(&mut sub, 2, "$dollar/#", 1).await;
    subscribe_to(&mut sub, 3, "$SYS/#", 1).await;
    // Overlaps "#": each message still arrives once.
    subscribe_to(&mut sub, 4, "a.b/+", 1).await;
    subscribe_to(&mut sub, 5, "parent/#", 1).await;
    nats.wait_subjects(
        "b",
        &[
            "mq.d.=24dollar",
            "mq.d.=24dollar.>",
            "mq.m.>",
            "mq.m.a=2Eb.*",
            "mq.m.parent",
            "mq.m.parent.>",
        ],
    )
    .await;
    let (mut publisher, _) = connect(a.port, &connect_v311("pub", true)).await;
    let topics = [
        "a.b/c",
        "sp ace/*/>",
        "/leading",
        "empty//levels/",
        "é/ü/日本",
        "x=3D/=",
        "$dollar/x",
        "$dollar",
        "parent",
    ];
    for (i, topic) in topics.iter().enumerate() {
        publish_acked(&mut publisher, 1, topic, i as u16 + 1, topic.as_bytes()).await;
    }
    // "$notsubscribed/x" matches no filter: "#" does not match "$" topics [MQTT-4.7.2-1].
    publish_acked(&mut publisher, 1, "$notsubscribed/x", 100, b"no").await;
    let got = receive(&mut sub, topics.len()).await;
    let mut got: Vec<String> = got
        .into_iter()
        .map(|p| {
            assert_eq!(p.payload, p.topic.as_bytes(), "payload intact");
            p.topic
        })
        .collect();
    got.sort();
    let mut expected: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    expected.sort();
    assert_eq!(
        got, expected,
        "every topic byte-identical, once, and no $SYS from node a"
    );
    // Node a did publish $SYS (seen by a local subscriber).
    let (mut local, _) = connect(a.port, &connect_v311("local", true)).await;
    subscribe_to(&mut local, 1, "$SYS/broker/uptime", 0).await;
    let p = local
        .recv_within(Duration::from_secs(3))
        .await
        .unwrap()
        .expect("$SYS on a");
    assert_eq!(p.publish(false).topic, "$SYS/broker/uptime");
    assert!(
        sub.recv_within(Duration::from_millis(1500))
            .await
            .unwrap()
            .is_none(),
        "$SYS stays on its node"
    );
}

#[tokio::test]
async fn order_per_publisher_holds_across_nodes() {
    let (_dir, nats, a, b, _da, _db) = two_nodes("cluster-order").await;
    let (mut sub, _) = connect(b.port, &connect_v311("sub", true)).await;
    subscribe_to(&mut sub, 1, "o/+", 2).await;
    nats.wait_subjects("b", &["mq.m.o.*"]).await;
    let (mut publisher, _) = connect(a.port, &connect_v311("pub", true)).await;
    const N: u16 = 300;
    // Pipelined: QoS 1 without waiting for each PUBACK, mixed with QoS 0.
    for i in 1..=N {
        let qos = u8::from(i % 3 != 0);
        publisher
            .send(&publish(
                false,
                qos,
                false,
                false,
                "o/t",
                i,
                &i.to_be_bytes(),
            ))
            .await
            .unwrap();
    }
    let got = receive(&mut sub, usize::from(N)).await;
    let order: Vec<u16> = got
        .iter()
        .map(|p| u16::from_be_bytes([p.payload[0], p.payload[1]]))
        .collect();
    assert_eq!(order, (1..=N).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_node_receives_only_what_its_subscriptions_want() {
    let (_dir, nats, a, b, _da, _db) = two_nodes("cluster-interest").await;
    let (mut publisher, _) = connect(a.port, &connect_v311("pub", true)).await;
    for i in 1..=50 {
        publish_acked(&mut publisher, 1, "busy/topic", i, b"x").await;
    }
    nats.wait_subjects("b", &[]).await;
    assert_eq!(nats.node("b").1, 0, "no interest: NATS sent node b nothing");

    let (mut sub, _) = connect(b.port, &connect_v311("sub", true)).await;
    subscribe_to(&mut sub, 1, "wanted/1", 1).await;
    // A second subscriber to the same filter shares the node's one NATS subscription.
    let (mut sub2, _) = connect(b.port, &connect_v311("sub2", true)).await;
    subscribe_to(&mut sub2, 1, "wanted/1", 1).await;
    nats.wait_subjects("b", &["mq.m.wanted.1"]).await;
    for i in 1..=20 {
        publish_acked(&mut publisher, 1, "busy/topic", i, b"x").await;
    }
    publish_acked(&mut publisher, 1, "wanted/1", 99, b"y").await;
    assert_eq!(receive(&mut sub, 1).await[0].payload, b"y");
    assert_eq!(receive(&mut sub2, 1).await[0].payload, b"y");
    assert_eq!(nats.node("b").1, 1, "only the wanted message crossed");

    // The subject stays while one subscriber remains, and goes with the last.
    sub.send(&unsubscribe(false, 2, "wanted/1")).await.unwrap();
    assert_eq!(sub.recv().await.unwrap().kind(), 11, "UNSUBACK");
    assert_eq!(nats.node("b").0, ["mq.m.wanted.1"]);
    sub2.send(&DISCONNECT).await.unwrap();
    nats.wait_subjects("b", &[]).await;
    drop(a);
}

#[tokio::test]
async fn a_node_opens_no_listener_until_nats_is_reachable() {
    let dir = TestDir::new("cluster-wait");
    let nats_port = free_port();
    let node_dir = TestDir::new("cluster-wait-a");
    let mut a = node(
        &node_dir,
        "a",
        &[format!("nats://127.0.0.1:{nats_port}")],
        0,
    );
    let port = a.port;
    let log = node_dir.0.join("midge-1.log");
    let (_nats, ()) = tokio::join!(
        async {
            // The node retries and says so, and does not serve meanwhile.
            let deadline = Instant::now() + START_TIMEOUT;
            while !std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("cannot reach NATS")
            {
                assert!(Instant::now() < deadline, "no retry logged");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_err(),
                "MQTT served before NATS was reachable"
            );
            Nats::start_on(&dir, nats_port).await
        },
        a.start(&[]),
    );
    let log = a.last_log();
    assert!(log.contains("joined through NATS"), "{log}");
    let (mut c, _) = connect(a.port, &connect_v311("c", true)).await;
    subscribe_to(&mut c, 1, "t", 0).await;
}

#[tokio::test]
async fn three_nodes_on_three_clustered_nats_servers() {
    let dir = TestDir::new("cluster-three");
    let servers = Nats::cluster(&dir, 3).await;
    let dirs: Vec<TestDir> = ["a", "b", "c"]
        .iter()
        .map(|n| TestDir::new(&format!("cluster-three-{n}")))
        .collect();
    // Each node lists its own server first and the others for failover.
    let mut nodes = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let urls: Vec<String> = (0..3).map(|k| servers[(i + k) % 3].url()).collect();
        let mut node = node(&dirs[i], name, &urls, 0);
        node.start(&[]).await;
        nodes.push(node);
    }
    let (mut sub, _) = connect(nodes[2].port, &connect_v311("sub", true)).await;
    subscribe_to(&mut sub, 1, "w/+/x", 2).await;
    subscribe_to(&mut sub, 2, "w/#", 1).await;
    servers[2]
        .wait_subjects("c", &["mq.m.w", "mq.m.w.*.x", "mq.m.w.>"])
        .await;
    servers[0]
        .wait_route_interest(&["mq.m.w", "mq.m.w.*.x", "mq.m.w.>"])
        .await;
    let (mut publisher, _) = connect(nodes[0].port, &connect_v311("pub", true)).await;
    for i in 1..=100u16 {
        let topic = if i % 2 == 0 { "w/a/x" } else { "w" };
        publish_acked(&mut publisher, 2, topic, i, &i.to_be_bytes()).await;
    }
    let got = receive(&mut sub, 100).await;
    // Order holds across the two topics too, though they reach node c through different
    // NATS subscriptions: node c has one connection for all of them, and NATS keeps one
    // publishing connection's order towards it (across the route as well).
    let order: Vec<u16> = got
        .iter()
        .map(|p| u16::from_be_bytes([p.payload[0], p.payload[1]]))
        .collect();
    assert_eq!(
        order,
        (1..=100).collect::<Vec<u16>>(),
        "once each, in order"
    );
    for p in &got {
        // "w/a/x" matches both filters: the higher QoS (2) wins; "w" only "w/#" (QoS 1).
        let expected = if p.topic == "w" { 1 } else { 2 };
        assert_eq!(p.qos, expected, "{p:?}");
    }
    assert_eq!(
        servers[1].node("b").1,
        0,
        "node b wants nothing and got nothing"
    );
}

fn string_property(id: u8, s: &str) -> Vec<u8> {
    let mut out = vec![id];
    out.extend((s.len() as u16).to_be_bytes());
    out.extend(s.as_bytes());
    out
}

#[tokio::test]
async fn v5_properties_and_retain_as_published_cross_nodes() {
    let (_dir, nats, a, b, _da, _db) = two_nodes("cluster-v5").await;
    let (mut sub, _) = connect(b.port, &connect_v5("sub", true, 0)).await;
    // SUBSCRIBE v5: "p/#" at QoS 1 with Retain As Published (options bit 3).
    let mut body = vec![0x00, 0x01, 0x00, 0x00, 0x03];
    body.extend(b"p/#");
    body.push(0x01 | 0x08);
    sub.send(&[&[0x82, body.len() as u8][..], &body].concat())
        .await
        .unwrap();
    assert_eq!(sub.recv().await.unwrap().kind(), 9, "SUBACK");
    let (mut plain, _) = connect(b.port, &connect_v5("plain", true, 0)).await;
    subscribe_to_v5(&mut plain, "p/#").await;
    nats.wait_subjects("b", &["mq.m.p", "mq.m.p.>"]).await;

    let mut props = vec![0x01, 0x01]; // payload format: UTF-8
    props.extend([0x02, 0, 0, 0, 100]); // message expiry: 100 s
    props.extend(string_property(0x03, "text/plain"));
    props.extend(string_property(0x08, "reply/x"));
    props.extend(string_property(0x09, "corr\u{1}"));
    let mut user = string_property(0x26, "k");
    user.extend(&string_property(0, "v")[1..]);
    props.extend(&user);
    let mut body = Vec::new();
    body.extend(6u16.to_be_bytes());
    body.extend(b"p/topi");
    body.extend(7u16.to_be_bytes()); // packet id
    body.push(props.len() as u8);
    body.extend(&props);
    body.extend(b"payload");
    // PUBLISH QoS 1 with RETAIN.
    let (mut publisher, _) = connect(a.port, &connect_v5("pub", true, 0)).await;
    publisher
        .send(&[&[0x33, body.len() as u8][..], &body].concat())
        .await
        .unwrap();
    assert_eq!(publisher.recv().await.unwrap().kind(), 4, "PUBACK");

    for (client, retain) in [(&mut sub, true), (&mut plain, false)] {
        let packet = client.recv().await.unwrap();
        assert_eq!(packet.kind(), 3, "PUBLISH: {packet:02X?}");
        assert_eq!(
            packet.first & 0x01 == 1,
            retain,
            "retain as published: {retain}"
        );
        let publish = packet.publish(true);
        assert_eq!(publish.topic, "p/topi");
        client.send(&ack(PUBACK, publish.packet_id)).await.unwrap();
        let (got, payload) = v5_publish_properties(&packet.body, publish.qos);
        assert_eq!(payload, b"payload");
        let expiry = got.iter().find(|(id, _)| *id == 0x02).expect("expiry kept");
        let left = u32::from_be_bytes(expiry.1[..].try_into().unwrap());
        assert!((95..=100).contains(&left), "remaining expiry {left}");
        let others: Vec<(u8, Vec<u8>)> = got.into_iter().filter(|(id, _)| *id != 0x02).collect();
        let expected = vec![
            (0x01, vec![0x01]),
            (0x03, string_property(0x03, "text/plain")[1..].to_vec()),
            (0x08, string_property(0x08, "reply/x")[1..].to_vec()),
            (0x09, string_property(0x09, "corr\u{1}")[1..].to_vec()),
            (0x26, user[1..].to_vec()),
        ];
        let mut sorted = others.clone();
        sorted.sort();
        assert_eq!(sorted, expected, "properties as published");
    }
}

async fn subscribe_to_v5(raw: &mut Raw, filter: &str) {
    raw.send(&subscribe(true, 1, filter, 1)).await.unwrap();
    let suback = raw.recv().await.unwrap();
    assert_eq!(suback.kind(), 9, "SUBACK: {suback:02X?}");
}

#[tokio::test]
async fn nats_credentials_are_used_and_a_refused_node_keeps_waiting() {
    let dir = TestDir::new("cluster-auth");
    let port = free_port();
    let nats = Nats::start_with(&dir, port, &["--user", "midge", "--pass", "s3cret"]).await;
    let good_dir = TestDir::new("cluster-auth-good");
    let mut good = node(&good_dir, "good", &[nats.url()], 0);
    good.edit_config(|t| t + "user = \"midge\"\npassword = \"s3cret\"\n");
    good.start(&[]).await;
    let (mut c, _) = connect(good.port, &connect_v311("c", true)).await;
    subscribe_to(&mut c, 1, "t", 0).await;
    nats.wait_subjects("good", &["mq.m.t"]).await;

    // A wrong password: NATS refuses, the node says so, retries, and serves no one.
    let text = refused_node_keeps_waiting(
        &nats,
        "cluster-auth-bad",
        "user = \"midge\"\npassword = \"wrong\"\n",
    )
    .await;
    assert!(
        text.contains("uthorization"),
        "the refusal is named: {text}"
    );
}

#[tokio::test]
async fn nodes_reconnect_and_restore_interest_after_nats_restarts() {
    let (dir, nats, a, b, _da, _db) = two_nodes("cluster-restart").await;
    let (mut sub, _) = connect(b.port, &connect_v311("sub", true)).await;
    subscribe_to(&mut sub, 1, "r/#", 1).await;
    nats.wait_subjects("b", &["mq.m.r", "mq.m.r.>"]).await;
    let port = nats.port;
    drop(nats);
    let nats = Nats::start_on(&dir, port).await;
    // No midge restart: the NATS client reconnects and subscribes again.
    nats.wait_nodes_connected(&["a", "b"]).await;
    nats.wait_subjects("b", &["mq.m.r", "mq.m.r.>"]).await;
    let (mut publisher, _) = connect_served(a.port, &connect_v311("pub", true)).await;
    publish_acked(&mut publisher, 1, "r", 1, b"after restart").await;
    let got = receive(&mut sub, 1).await;
    assert_eq!(got[0].payload, b"after restart");
}

#[tokio::test]
async fn a_node_fails_over_to_its_next_nats_server_and_subscribes_again() {
    let dir = TestDir::new("cluster-failover");
    // Three servers: JetStream (which the nodes need to start) keeps its quorum after one dies.
    let servers = Nats::cluster(&dir, 3).await;
    servers[1].wait_meta_leader().await;
    let (da, db) = (
        TestDir::new("cluster-failover-a"),
        TestDir::new("cluster-failover-b"),
    );
    let mut a = node(&da, "a", &[servers[1].url()], 0);
    a.start(&[]).await;
    // b lists the server about to die first.
    let mut b = node(&db, "b", &[servers[0].url(), servers[1].url()], 0);
    b.start(&[]).await;
    let (mut sub, _) = connect(b.port, &connect_v311("sub", true)).await;
    subscribe_to(&mut sub, 1, "f/+", 1).await;
    servers[0].wait_subjects("b", &["mq.m.f.*"]).await;
    let (mut publisher, _) = connect(a.port, &connect_v311("pub", true)).await;
    let mut servers = servers;
    drop(servers.remove(0));
    // b's live-message connection moves to the survivor with its subscription; the MQTT
    // connections on both nodes stay up throughout.
    servers[0].wait_nodes_connected(&["b"]).await;
    servers[0].wait_subjects("b", &["mq.m.f.*"]).await;
    publish_acked(&mut publisher, 1, "f/1", 1, b"after failover").await;
    let got = receive(&mut sub, 1).await;
    assert_eq!(got[0].payload, b"after failover");
}

#[tokio::test]
async fn unreadable_nats_files_stop_the_start_with_the_key_named() {
    let dir = TestDir::new("cluster-files");
    for (key, file) in [
        ("tls_ca_file", "missing-ca.pem"),
        ("creds_file", "missing.creds"),
    ] {
        let mut node = node(&dir, "a", &["nats://127.0.0.1:1".to_owned()], 0);
        let path = dir.0.join(file);
        node.edit_config(|t| t + &format!("{key} = \"{}\"\n", path.display()));
        let (status, log) = node.start_refused(&[]).await;
        assert!(!status.success(), "{log}");
        assert!(log.contains(&format!("cluster.{key}")), "{log}");
        assert!(log.contains(file), "{log}");
    }
}

#[tokio::test]
async fn survivors_keep_serving_after_a_node_is_killed() {
    let (_dir, nats, mut a, b, _da, _db) = two_nodes("cluster-kill").await;
    let dir_c = TestDir::new("cluster-kill-c");
    let mut c = node(&dir_c, "c", &[nats.url()], 0);
    c.start(&[]).await;
    let (mut on_a, _) = connect(a.port, &connect_v311("on-a", true)).await;
    subscribe_to(&mut on_a, 1, "k", 1).await;
    let (mut on_c, _) = connect(c.port, &connect_v311("on-c", true)).await;
    subscribe_to(&mut on_c, 1, "k", 1).await;
    nats.wait_subjects("a", &["mq.m.k"]).await;
    nats.wait_subjects("c", &["mq.m.k"]).await;
    a.kill();
    // Node a's interest goes with its NATS connection: nothing to clean up.
    let deadline = Instant::now() + START_TIMEOUT;
    while nats.connz().expect("connz")["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["name"] == "midge a")
    {
        assert!(Instant::now() < deadline, "node a's connection stayed");
        // The server notices the closed socket on its own; its list is the signal.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut publisher, _) = connect(b.port, &connect_v311("pub", true)).await;
    publish_acked(&mut publisher, 1, "k", 1, b"still here").await;
    assert_eq!(receive(&mut on_c, 1).await[0].payload, b"still here");
}
