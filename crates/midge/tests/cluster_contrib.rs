//! The deployment files in `contrib/cluster/` work as shipped: three nats-servers run from
//! `nats.conf` (with its user permissions) and three midge nodes from `midge.toml`, only
//! hosts, ports and directories changed for loopback, and cross-node routing, the retained
//! bucket, client-id ownership and a session moving work through them. A permission those
//! need missing from `nats.conf` fails here (checked by deleting the owners' one). A missing
//! nats-server fails this test: it never skips.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::cluster::*;
use support::*;

const NATS_CONF: &str = include_str!("../../../contrib/cluster/nats.conf");
const MIDGE_TOML: &str = include_str!("../../../contrib/cluster/midge.toml");

/// `text` with `from` replaced, which must occur in it (so the test follows the file).
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "contrib file no longer has {from:?}");
    text.replace(from, to)
}

/// Server `i` of three from `nats.conf`, on loopback.
async fn server(dir: &TestDir, i: usize, client: u16, routes: &[u16]) -> Nats {
    let monitor = free_port();
    let mut conf = replaced(NATS_CONF, "server_name: n1", &format!("server_name: n{i}"));
    conf = replaced(&conf, "0.0.0.0:4222", &format!("127.0.0.1:{client}"));
    conf = replaced(
        &conf,
        "http: 127.0.0.1:8222",
        &format!("http: 127.0.0.1:{monitor}"),
    );
    let store = dir.0.join(format!("js-{i}"));
    conf = replaced(
        &conf,
        "store_dir: /var/lib/nats",
        &format!("store_dir: \"{}\"", store.display()),
    );
    conf = replaced(&conf, "0.0.0.0:6222", &format!("127.0.0.1:{}", routes[i]));
    for (host, port) in routes.iter().enumerate() {
        conf = replaced(
            &conf,
            &format!("nats-route://host{}:6222", host + 1),
            &format!("nats-route://127.0.0.1:{port}"),
        );
    }
    let path = dir.0.join(format!("nats-{i}.conf"));
    std::fs::write(&path, conf).unwrap();
    let log = std::fs::File::create(dir.0.join(format!("nats-{i}.log"))).unwrap();
    let child = Command::new(nats_server_binary())
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn nats-server");
    Nats::started(child, client, monitor).await
}

/// Node `i` from `midge.toml`'s `[cluster]`, its listener the harness's.
fn midge_node(dir: &TestDir, i: usize, nats: &Nats) -> Midge {
    let node = Midge::new(dir, "none");
    let cluster = &MIDGE_TOML[MIDGE_TOML.find("[cluster]").expect("[cluster] table")..];
    let mut cluster = replaced(
        cluster,
        "node_id = \"node-1\"",
        &format!("node_id = \"node-{i}\""),
    );
    let urls = cluster
        .lines()
        .find(|l| l.starts_with("nats_urls"))
        .expect("nats_urls")
        .to_owned();
    cluster = replaced(
        &cluster,
        &urls,
        &format!("nats_urls = [\"nats://127.0.0.1:{}\"]", nats.port),
    );
    node.edit_config(|text| text + "\n" + &cluster);
    node
}

#[tokio::test]
async fn the_contrib_cluster_files_run_a_working_cluster() {
    let dir = TestDir::new("contrib-cluster");
    let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut servers = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        servers.push(server(&dir, i, *client, &routes).await);
    }
    let dirs: Vec<TestDir> = (1..=3)
        .map(|i| TestDir::new(&format!("contrib-cluster-{i}")))
        .collect();
    let mut nodes: Vec<Midge> = dirs
        .iter()
        .zip(&servers)
        .enumerate()
        .map(|(i, (d, s))| midge_node(d, i + 1, s))
        .collect();
    for n in &mut nodes {
        n.start(&[]).await;
    }
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();

    // Routing across nodes (mq.>).
    let (mut sub, _) = connect(ports[2], &connect_v311("contrib-sub", false)).await;
    subscribe_to(&mut sub, 1, "contrib/#", 1).await;
    let (mut publisher, _) = connect(ports[0], &connect_v311("contrib-pub", true)).await;
    until_seen(&mut publisher, &mut sub, "contrib/probe").await;
    publish_acked(&mut publisher, 1, "contrib/x", 1, b"across").await;
    let got = receive(&mut sub, 1).await;
    assert_eq!(got[0].topic, "contrib/x");

    // The retained bucket ($KV.midge_retained.>): retained through node 2, read on node 1.
    let (mut retainer, _) = connect(ports[1], &connect_v311("contrib-retainer", true)).await;
    retainer
        .send(&publish(false, 1, false, true, "kept/r", 1, b"kept"))
        .await
        .unwrap();
    assert_eq!(retainer.recv().await.unwrap().kind(), 4, "PUBACK");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (mut reader, _) = connect(ports[0], &connect_v311("contrib-reader", true)).await;
        reader
            .send(&subscribe(false, 1, "kept/r", 0))
            .await
            .unwrap();
        assert_eq!(reader.recv().await.unwrap().kind(), 9, "SUBACK");
        if let Some(p) = reader
            .recv_within(Duration::from_millis(300))
            .await
            .unwrap()
        {
            let p = p.publish(false);
            assert!(p.retain);
            assert_eq!(p.payload, b"kept");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retained message never reached node 1"
        );
    }

    // Ownership ($KV.midge_owners.>) and the session moving with it: the subscriber's id
    // connects on node 1, node 3 lets go, and the session comes along.
    let (mut moved, present) = connect(ports[0], &connect_v311("contrib-sub", false)).await;
    assert!(present, "session present after moving to node 1");
    // MQTT 3.1.1 has no DISCONNECT from the server: node 3 closes the connection.
    assert!(
        sub.recv().await.is_err(),
        "node 3 kept the taken-over connection"
    );
    publish_acked(&mut publisher, 1, "contrib/y", 2, b"after the move").await;
    let got = receive(&mut moved, 1).await;
    assert_eq!(got[0].topic, "contrib/y");
    assert_eq!(got[0].payload, b"after the move");
}
