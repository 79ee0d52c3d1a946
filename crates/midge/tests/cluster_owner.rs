//! One connection per client id across a cluster of real `midge` binaries on a real
//! nats-server, and the cluster's node list in `$SYS` and the admin API. Clients are raw
//! MQTT bytes. A missing nats-server fails these tests: they never skip.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use support::cluster::*;
use support::*;

const PINGRESP: u8 = 13;
const DISCONNECT_KIND: u8 = 14;
/// The node TTL (`NODE_TTL` in cluster/ownership.rs) plus margin for the heartbeat.
const NODE_GONE_WITHIN: Duration = Duration::from_secs(8);

/// A node with the admin API on a port of its own and `$SYS` every second.
fn admin_node(dir: &TestDir, name: &str, urls: &[String]) -> (Midge, u16) {
    let node = node(dir, name, urls, 1);
    let admin = free_port();
    node.edit_config(|text| {
        text + &format!("\n[admin]\nenabled = true\nbind = \"127.0.0.1:{admin}\"\n")
    });
    (node, admin)
}

/// GET `path` from an admin API: status and JSON body.
fn get(admin: u16, path: &str) -> (u16, serde_json::Value) {
    // The admin listener opens just after the MQTT one the start waited for.
    let deadline = Instant::now() + TIMEOUT;
    let mut stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", admin)) {
            Ok(stream) => break stream,
            Err(e) => assert!(Instant::now() < deadline, "admin API: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or_default())
}

fn node_ids(admin: u16) -> Vec<String> {
    let (status, body) = get(admin, "/api/v1/cluster/nodes");
    assert_eq!(status, 200, "{body}");
    body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["node"].as_str().map(str::to_owned))
        .collect()
}

/// Polls the admin API until the node list is `expected`.
async fn wait_nodes(admin: u16, expected: &[&str], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = node_ids(admin);
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nodes {now:?}, expected {expected:?}"
        );
        // Heartbeats are periodic; the admin API is the signal.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the connection is still served: PINGREQ answered with PINGRESP. A DISCONNECT
/// or a closed connection means it was taken over.
async fn alive(raw: &mut Raw) -> bool {
    if raw.send(&PINGREQ).await.is_err() {
        return false;
    }
    loop {
        match raw.recv().await {
            Ok(p) if p.kind() == PINGRESP => return true,
            Ok(p) if p.kind() == DISCONNECT_KIND => return false,
            // A CONNACK read late, or anything before the answer.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                panic!("neither PINGRESP nor close in time")
            }
            Err(_) => return false,
        }
    }
}

/// Reads until the connection closes; returns the DISCONNECT reason seen, if any.
async fn closed(raw: &mut Raw) -> Option<u8> {
    let mut reason = None;
    loop {
        match raw.recv().await {
            Ok(p) if p.kind() == DISCONNECT_KIND => reason = p.body.first().copied(),
            Ok(p) => panic!("unexpected packet {p:02X?}"),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                panic!("the taken-over connection stayed open")
            }
            Err(_) => return reason,
        }
    }
}

#[tokio::test]
async fn connect_on_b_takes_the_id_over_from_a_with_0x8e() {
    let (_dir, _nats, a, b, _da, _db) = two_nodes("owner-takeover").await;
    let (mut first, _) = connect(a.port, &connect_v5("dup", true, 0)).await;
    assert!(alive(&mut first).await);
    let started = Instant::now();
    let (mut second, _) = connect(b.port, &connect_v5("dup", true, 0)).await;
    // The old connection was told before the new one's CONNACK: it is already going.
    assert_eq!(closed(&mut first).await, Some(0x8E), "DISCONNECT 0x8E");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(alive(&mut second).await);

    // And back: the id moves to A again, B's connection goes.
    let (mut third, _) = connect(a.port, &connect_v5("dup", true, 0)).await;
    assert_eq!(closed(&mut second).await, Some(0x8E));
    assert!(alive(&mut third).await);
}

#[tokio::test]
async fn a_v3_client_taken_over_from_another_node_is_closed() {
    let (_dir, _nats, a, b, _da, _db) = two_nodes("owner-v3").await;
    let (mut first, _) = connect(a.port, &connect_v311("old", true)).await;
    let (mut second, _) = connect(b.port, &connect_v311("old", true)).await;
    // MQTT 3.1.1 has no DISCONNECT from the server: just closed.
    assert_eq!(closed(&mut first).await, None);
    assert!(alive(&mut second).await);
}

#[tokio::test]
async fn racing_connects_on_two_nodes_leave_exactly_one() {
    let (_dir, _nats, a, b, _da, _db) = two_nodes("owner-race").await;
    for round in 0..25 {
        let id = format!("race-{round}");
        let (ca, cb) = (connect_v5(&id, true, 0), connect_v5(&id, true, 0));
        // Both CONNECTs at once; each CONNACK comes once its claim is settled, after the
        // connection it displaced (if any) was closed.
        let open = |port: u16, packet: Vec<u8>| async move {
            let mut raw = Raw::connect(port).await.expect("TCP connect");
            raw.send(&packet).await.expect("CONNECT");
            if let Ok(connack) = raw.recv().await {
                assert_eq!(connack.kind(), 2, "{connack:02X?}");
                assert_eq!(connack.body[1], 0, "accepted: {connack:02X?}");
            }
            raw
        };
        let (mut x, mut y) = tokio::join!(open(a.port, ca), open(b.port, cb));
        let (x_alive, y_alive) = tokio::join!(alive(&mut x), alive(&mut y));
        assert!(
            x_alive != y_alive,
            "round {round}: alive on a: {x_alive}, on b: {y_alive}\n{}\n{}",
            a.last_log(),
            b.last_log()
        );
        // Still exactly one a moment later (no late takeover).
        let (x_alive2, y_alive2) = tokio::join!(alive(&mut x), alive(&mut y));
        assert_eq!((x_alive2, y_alive2), (x_alive, y_alive), "round {round}");
    }
}

#[tokio::test]
async fn a_clean_disconnect_releases_the_id_and_a_dead_node_does_not_hold_it() {
    let dir = TestDir::new("owner-release");
    let nats = Nats::start(&dir).await;
    let (dir_a, dir_b) = (
        TestDir::new("owner-release-a"),
        TestDir::new("owner-release-b"),
    );
    let (mut a, admin_a) = admin_node(&dir_a, "a", &[nats.url()]);
    let (mut b, admin_b) = admin_node(&dir_b, "b", &[nats.url()]);
    a.start(&[]).await;
    b.start(&[]).await;

    let (mut client, _) = connect(a.port, &connect_v5("mover", true, 0)).await;
    // Which node holds it, asked on either node.
    let (status, holder) = get(admin_b, "/api/v1/cluster/clients/mover");
    assert_eq!(status, 200, "{holder}");
    assert_eq!(holder["node"], "a");
    let (_, listed) = get(admin_a, "/api/v1/clients");
    assert_eq!(listed["items"][0]["client_id"], "mover");
    assert_eq!(listed["items"][0]["node"], "a");

    client.send(&DISCONNECT).await.unwrap();
    assert_eq!(closed(&mut client).await, None);
    // The key is deleted, so the next CONNECT anywhere asks no one.
    let deadline = Instant::now() + TIMEOUT;
    while get(admin_b, "/api/v1/cluster/clients/mover").0 != 404 {
        assert!(Instant::now() < deadline, "ownership not released");
        // The release is asynchronous; the admin API is the signal.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let (mut moved, _) = connect(b.port, &connect_v5("mover", true, 0)).await;
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(alive(&mut moved).await);
    assert_eq!(get(admin_a, "/api/v1/cluster/clients/mover").1["node"], "b");
    let (_, nodes) = get(admin_b, "/api/v1/cluster/nodes");
    assert_eq!(nodes["ownership"]["takeovers_sent"], 0, "{nodes}");
    assert_eq!(nodes["ownership"]["claims"], 1, "{nodes}");

    // A node killed with the id: the next CONNECT finds no responder and goes on at once.
    let (_orphan, _) = connect(a.port, &connect_v5("orphan", true, 0)).await;
    a.kill();
    let started = Instant::now();
    let (mut adopted, _) = connect(b.port, &connect_v5("orphan", true, 0)).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(alive(&mut adopted).await);
}

#[tokio::test]
async fn without_nats_a_connect_is_refused_with_server_unavailable() {
    let (_dir, mut nats, a, _b, _da, _db) = two_nodes("owner-no-nats").await;
    let _ = nats.child.kill();
    let _ = nats.child.wait();
    for (packet, reason) in [
        (connect_v5("lonely", true, 0), 0x88),
        (connect_v311("lonely3", true), 3),
    ] {
        let started = Instant::now();
        let mut raw = Raw::connect(a.port).await.unwrap();
        raw.send(&packet).await.unwrap();
        let connack = raw.recv().await.expect("CONNACK");
        assert_eq!(connack.kind(), 2);
        assert_eq!(connack.body[1], reason, "{connack:02X?}");
        // Bounded: the claim's timeout, not the NATS client's reconnect loop.
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[tokio::test]
async fn node_list_in_sys_and_admin_drops_a_killed_node() {
    let dir = TestDir::new("owner-nodes");
    let nats = Nats::start(&dir).await;
    let dirs: Vec<TestDir> = ["a", "b", "c"]
        .iter()
        .map(|n| TestDir::new(&format!("owner-nodes-{n}")))
        .collect();
    let mut nodes: Vec<(Midge, u16)> = ["a", "b", "c"]
        .iter()
        .zip(&dirs)
        .map(|(name, d)| admin_node(d, name, &[nats.url()]))
        .collect();
    for (node, _) in &mut nodes {
        node.start(&[]).await;
    }
    let admin_a = nodes[0].1;
    wait_nodes(admin_a, &["a", "b", "c"], START_TIMEOUT).await;
    wait_nodes(nodes[2].1, &["a", "b", "c"], TIMEOUT).await;
    let (_, body) = get(admin_a, "/api/v1/cluster/nodes");
    assert_eq!(body["node"], "a");
    assert_eq!(body["items"][0]["self"], true);

    let (mut sys, _) = connect(nodes[0].0.port, &connect_v311("watcher", true)).await;
    sys.send(&subscribe(false, 1, "$SYS/broker/cluster/#", 0))
        .await
        .unwrap();
    let mut own = None;
    let mut latest = None;
    let deadline = Instant::now() + TIMEOUT;
    while own.is_none() || latest.as_deref() != Some(r#"["a","b","c"]"#) {
        assert!(Instant::now() < deadline, "{own:?} {latest:?}");
        let packet = sys.recv().await.unwrap();
        if packet.kind() != 3 {
            continue;
        }
        let p = packet.publish(false);
        let payload = String::from_utf8(p.payload.clone()).unwrap();
        match p.topic.as_str() {
            "$SYS/broker/cluster/node" => own = Some(payload),
            "$SYS/broker/cluster/nodes" => latest = Some(payload),
            other => panic!("{other}"),
        }
    }
    assert_eq!(own.as_deref(), Some("a"));

    nodes[2].0.kill();
    let started = Instant::now();
    wait_nodes(admin_a, &["a", "b"], NODE_GONE_WITHIN).await;
    // $SYS follows.
    loop {
        assert!(started.elapsed() < NODE_GONE_WITHIN + Duration::from_secs(2));
        let p = sys.recv().await.unwrap().publish(false);
        if p.topic == "$SYS/broker/cluster/nodes" && p.payload == br#"["a","b"]"# {
            break;
        }
    }
    // A single node has no cluster endpoints.
    let single = TestDir::new("owner-nodes-single");
    let mut alone = Midge::new(&single, "none");
    let admin = free_port();
    alone.edit_config(|text| {
        text + &format!("\n[admin]\nenabled = true\nbind = \"127.0.0.1:{admin}\"\n")
    });
    alone.start(&[]).await;
    let (status, body) = get(admin, "/api/v1/cluster/nodes");
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_clustered");
}

#[tokio::test]
async fn takeover_across_a_three_server_nats_cluster() {
    let dir = TestDir::new("owner-nats3");
    let servers = Nats::cluster(&dir, 3).await;
    let (dir_a, dir_b) = (TestDir::new("owner-nats3-a"), TestDir::new("owner-nats3-b"));
    // Each node on its own server: the buckets are replicated on the three (R3), and the
    // claim and the request to let go cross NATS routes.
    let mut a = node(&dir_a, "a", &[servers[0].url()], 0);
    let mut b = node(&dir_b, "b", &[servers[1].url()], 0);
    a.start(&[]).await;
    b.start(&[]).await;
    assert!(
        !a.last_log().contains("kept on one NATS server"),
        "{}",
        a.last_log()
    );
    let (mut first, _) = connect(a.port, &connect_v5("roamer", true, 0)).await;
    let (mut second, _) = connect(b.port, &connect_v5("roamer", true, 0)).await;
    assert_eq!(closed(&mut first).await, Some(0x8E));
    assert!(alive(&mut second).await);
}
