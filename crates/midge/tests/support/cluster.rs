//! A NATS server (or several) and midge nodes clustered through it, for the cluster tests
//! (`cluster*.rs`). Included by `support/mod.rs`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// How long "nothing more arrives" is watched for (absence is not an event).
pub const QUIET: Duration = Duration::from_millis(500);

pub fn nats_server_binary() -> PathBuf {
    let path = std::env::var_os("MIDGE_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            std::env::var_os("MIDGE_NATS_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".cache/midge/nats-server-2.15.1"))
                .join("nats-server")
        });
    assert!(
        path.is_file(),
        "nats-server is missing ({}): the cluster tests need it. Install it with \
         `scripts/nats-server.sh install` (scripts/test-deps.sh does it for CI), or set \
         MIDGE_NATS_SERVER to another nats-server (2.15.1 is what they are run with)",
        path.display()
    );
    path
}

/// One nats-server with JetStream on loopback, in the test's directory; killed on drop.
pub struct Nats {
    pub child: Child,
    pub port: u16,
    pub monitor: u16,
}

impl Nats {
    pub async fn start(dir: &TestDir) -> Self {
        Self::start_on(dir, free_port()).await
    }

    pub async fn start_on(dir: &TestDir, port: u16) -> Self {
        Self::start_with(dir, port, &[]).await
    }

    /// `n` servers clustered over loopback routes.
    pub async fn cluster(dir: &TestDir, n: usize) -> Vec<Self> {
        let route_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = Vec::new();
        for (i, route_port) in route_ports.iter().enumerate() {
            let listen = format!("nats://127.0.0.1:{route_port}");
            let name = format!("n{i}");
            let args = [
                "-n",
                &name,
                "--cluster_name",
                "midge-test",
                "--cluster",
                &listen,
                "--routes",
                &routes,
            ];
            servers.push(Self::start_with(dir, free_port(), &args).await);
        }
        servers
    }

    pub async fn start_with(dir: &TestDir, port: u16, extra: &[&str]) -> Self {
        let monitor = free_port();
        let log = std::fs::File::create(dir.0.join(format!("nats-{port}.log"))).expect("log");
        let child = Command::new(nats_server_binary())
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor.to_string(), "-js", "-sd"])
            .arg(dir.0.join(format!("js-{port}")))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        Self::started(child, port, monitor).await
    }

    /// A spawned server, once its monitoring port answers.
    pub async fn started(child: Child, port: u16, monitor: u16) -> Self {
        let nats = Self {
            child,
            port,
            monitor,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while nats.connz().is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            // Polling the monitoring port: the server gives no other readiness signal.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `/connz?subs=1` from the monitoring endpoint.
    pub fn connz(&self) -> std::io::Result<serde_json::Value> {
        self.monitoring("/connz?subs=1")
    }

    pub fn monitoring(&self, path: &str) -> std::io::Result<serde_json::Value> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.monitor))?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body)
            .ok_or_else(|| std::io::Error::other("no HTTP body"))?;
        serde_json::from_str(body).map_err(std::io::Error::other)
    }

    /// The connection NATS knows as node `node`: its subjects and the messages NATS sent it.
    pub fn node(&self, node: &str) -> (Vec<String>, u64) {
        let connz = self.connz().expect("connz");
        let name = format!("midge {node}");
        let connection = connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name.as_str())
            .unwrap_or_else(|| panic!("node {node} is not connected to NATS: {connz}"));
        let mut subjects: Vec<String> = connection["subscriptions_list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        subjects.sort();
        (subjects, connection["out_msgs"].as_u64().unwrap_or(0))
    }

    /// Waits until this server's routes carry interest in every one of `subjects` (from a
    /// node on another server of the NATS cluster).
    pub async fn wait_route_interest(&self, subjects: &[&str]) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let routez = self.monitoring("/routez?subs=1").expect("routez");
            let known: Vec<&str> = routez["routes"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|r| r["subscriptions_list"].as_array().into_iter().flatten())
                .filter_map(|s| s.as_str())
                .collect();
            if subjects.iter().all(|s| known.contains(s)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "routes never carried {subjects:?}: {known:?}"
            );
            // Route interest has no other signal than the monitoring endpoint.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until this server knows the JetStream meta leader of its NATS cluster. A node
    /// started before that waits for its first JetStream request to time out (10 s).
    pub async fn wait_meta_leader(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let jsz = self.monitoring("/jsz").expect("jsz");
            if jsz["meta_cluster"]["leader"]
                .as_str()
                .is_some_and(|leader| !leader.is_empty())
            {
                return;
            }
            assert!(Instant::now() < deadline, "no JetStream meta leader: {jsz}");
            // The election has no other signal than the monitoring endpoint.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every one of `nodes` is connected to this server again (after a restart
    /// of the server, the NATS client reconnects on its own).
    pub async fn wait_nodes_connected(&self, nodes: &[&str]) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let connz = self.connz().expect("connz");
            let all = nodes.iter().all(|node| {
                connz["connections"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["name"] == format!("midge {node}").as_str())
            });
            if all {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nodes {nodes:?} did not reconnect: {connz}"
            );
            // Reconnection has no signal but the server's connection list.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `node` is subscribed to exactly `subjects` (sorted).
    pub async fn wait_subjects(&self, node: &str, subjects: &[&str]) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let (now, _) = self.node(node);
            if now == subjects {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} subscribes to {now:?}, expected {subjects:?}"
            );
            // Interest reaches NATS asynchronously; its monitoring endpoint is the signal.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects like [`connect`], but while the node refuses with 0x88 (Server unavailable:
/// it cannot claim the client id because its NATS connection or the JetStream behind it is
/// not back yet) tries again, up to [`START_TIMEOUT`].
pub async fn connect_served(port: u16, packet: &[u8]) -> (Raw, bool) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let mut raw = Raw::connect(port).await.expect("TCP connect");
        raw.send(packet).await.expect("send CONNECT");
        let connack = raw.recv().await.expect("CONNACK");
        assert_eq!(connack.kind(), 2, "expected CONNACK, got {connack:02X?}");
        match connack.body[1] {
            0x00 => return (raw, connack.body[0] & 0x01 == 1),
            0x88 if Instant::now() < deadline => {
                // The node has no signal for "claims work again" but an accepted CONNECT.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => panic!("CONNACK refused: {connack:02X?}"),
        }
    }
}

/// A midge node `name` of a cluster on `urls`, with `$SYS` every `sys_secs` (0: off).
pub fn node(dir: &TestDir, name: &str, urls: &[String], sys_secs: u32) -> Midge {
    let node = Midge::new(dir, "none");
    let urls = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    node.edit_config(|text| {
        text.replace("interval_secs = 0", &format!("interval_secs = {sys_secs}"))
            + &format!(
                "\n[cluster]\nbackend = \"nats\"\nnode_id = \"{name}\"\nnats_urls = [{urls}]\n"
            )
    });
    node
}

/// A NATS server and two started nodes, "a" and "b".
pub async fn two_nodes(name: &str) -> (TestDir, Nats, Midge, Midge, TestDir, TestDir) {
    let dir = TestDir::new(name);
    let nats = Nats::start(&dir).await;
    let (dir_a, dir_b) = (
        TestDir::new(&format!("{name}-a")),
        TestDir::new(&format!("{name}-b")),
    );
    let mut a = node(&dir_a, "a", &[nats.url()], 0);
    let mut b = node(&dir_b, "b", &[nats.url()], 0);
    a.start(&[]).await;
    b.start(&[]).await;
    (dir, nats, a, b, dir_a, dir_b)
}

/// Reads PUBLISH packets until `count` arrived, acknowledging each, then checks that
/// nothing more arrives.
pub async fn receive(raw: &mut Raw, count: usize) -> Vec<RawPublish> {
    let mut got = Vec::new();
    while got.len() < count {
        let packet = raw
            .recv()
            .await
            .unwrap_or_else(|e| panic!("after {} of {count} messages ({got:?}): {e}", got.len()));
        match packet.kind() {
            3 => {
                let p = packet.publish(false);
                match p.qos {
                    1 => raw.send(&ack(PUBACK, p.packet_id)).await.unwrap(),
                    2 => raw.send(&ack(PUBREC, p.packet_id)).await.unwrap(),
                    _ => {}
                }
                got.push(p);
            }
            6 => raw.send(&ack(PUBCOMP, packet.packet_id())).await.unwrap(),
            other => panic!("unexpected packet type {other}: {packet:02X?}"),
        }
    }
    loop {
        match raw.recv_within(QUIET).await.unwrap() {
            None => break,
            Some(p) if p.kind() == 6 => raw.send(&ack(PUBCOMP, p.packet_id())).await.unwrap(),
            Some(p) => panic!("more than {count} messages: {got:?} then {p:02X?}"),
        }
    }
    got
}

/// Publishes and completes the QoS handshake with the publisher's node.
pub async fn publish_acked(raw: &mut Raw, qos: u8, topic: &str, packet_id: u16, payload: &[u8]) {
    raw.send(&publish(
        false, qos, false, false, topic, packet_id, payload,
    ))
    .await
    .unwrap();
    match qos {
        0 => {}
        1 => assert_eq!(raw.recv().await.unwrap().kind(), 4, "PUBACK"),
        _ => {
            assert_eq!(raw.recv().await.unwrap().kind(), 5, "PUBREC");
            raw.send(&ack(PUBREL, packet_id)).await.unwrap();
            assert_eq!(raw.recv().await.unwrap().kind(), 7, "PUBCOMP");
        }
    }
}

pub async fn subscribe_to(raw: &mut Raw, packet_id: u16, filter: &str, qos: u8) {
    raw.send(&subscribe(false, packet_id, filter, qos))
        .await
        .unwrap();
    let suback = raw.recv().await.unwrap();
    assert_eq!(suback.kind(), 9, "SUBACK: {suback:02X?}");
    assert_eq!(suback.body.last(), Some(&qos), "granted QoS");
}

/// Publishes probes on `topic` until the subscriber sees one: NATS carries a new
/// subscription's interest to the other servers asynchronously.
pub async fn until_seen(publisher: &mut Raw, subscriber: &mut Raw, topic: &str) {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut packet_id = 1;
    loop {
        assert!(
            Instant::now() < deadline,
            "{topic} never crossed the cluster"
        );
        publish_acked(publisher, 0, topic, packet_id, b"probe").await;
        packet_id += 1;
        if let Some(p) = subscriber
            .recv_within(Duration::from_millis(200))
            .await
            .unwrap()
        {
            assert_eq!(p.publish(false).topic, topic);
            // Drain later probes already on their way.
            while subscriber
                .recv_within(Duration::from_millis(200))
                .await
                .unwrap()
                .is_some()
            {}
            return;
        }
    }
}

/// The properties of a v5 PUBLISH body (after the topic and, for QoS > 0, the packet id),
/// as (identifier, value bytes), and the payload. Knows the properties these tests send.
pub fn v5_publish_properties(body: &[u8], qos: u8) -> (Vec<(u8, Vec<u8>)>, Vec<u8>) {
    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let mut at = 2 + topic_len + if qos > 0 { 2 } else { 0 };
    let len = usize::from(body[at]);
    assert!(len < 128, "short property list expected");
    at += 1;
    let end = at + len;
    let mut props = Vec::new();
    let u16_at = |at: usize| usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
    while at < end {
        let id = body[at];
        at += 1;
        let size = match id {
            0x01 => 1,
            0x02 => 4,
            0x03 | 0x08 | 0x09 => 2 + u16_at(at),
            0x26 => {
                let key = 2 + u16_at(at);
                key + 2 + u16_at(at + key)
            }
            other => panic!("unexpected property {other:#x}"),
        };
        props.push((id, body[at..at + size].to_vec()));
        at += size;
    }
    (props, body[end..].to_vec())
}

/// Runs a node configured with `extra` `[cluster]` lines that NATS refuses; checks that it
/// logs the failure again and again, keeps running and never listens. Returns its log.
pub async fn refused_node_keeps_waiting(nats: &Nats, name: &str, extra: &str) -> String {
    let dir = TestDir::new(name);
    let node = node(&dir, name, &[nats.url()], 0);
    node.edit_config(|t| t + extra);
    // Spawned here rather than through Midge::start, which waits for the listener.
    let log = dir.0.join("refused.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_midge"))
        .arg("serve")
        .arg("--config")
        .arg(&node.config)
        .env("RUST_LOG", "info")
        .env_remove("MIDGE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn midge");
    let deadline = Instant::now() + START_TIMEOUT;
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.matches("cannot reach NATS").count() >= 3 {
            break text;
        }
        if Instant::now() >= deadline || child.try_wait().expect("try_wait").is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no repeated retries logged: {text}");
        }
        // The log is the node's only signal while it waits.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let listening = tokio::net::TcpStream::connect(("127.0.0.1", node.port))
        .await
        .is_ok();
    let running = child.try_wait().expect("try_wait").is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(running, "the node gave up instead of retrying: {text}");
    assert!(
        !listening,
        "a node refused by NATS opened its listener: {text}"
    );
    text
}
