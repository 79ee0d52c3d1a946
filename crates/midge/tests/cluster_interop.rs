//! The interop scenarios (Python paho-mqtt and mqtt.js, tests/interop/) against a cluster:
//! three nats-servers with JetStream, clustered, and a midge node on each. The scripts get
//! the three ports (`--ports`) and connect their clients to the nodes in turn, so publisher
//! and subscriber are always on different nodes; the results are checked by the same
//! functions as against one broker (crates/broker/tests/it/interop_util.rs). A missing
//! nats-server, python3 with paho-mqtt or node with mqtt.js fails these tests: they never
//! skip.

mod support;

#[path = "../../broker/tests/it/interop_util.rs"]
mod interop_util;

use interop_util::{
    Mqtt, MqttJsProperties, PahoProperties, Persistent, PubSub, Retained, Shared, Wills,
    check_mqttjs_properties, check_paho_properties, check_persistent, check_pubsub, check_retained,
    check_shared, check_will, mqttjs, paho,
};
use support::cluster::{Nats, node};
use support::{Midge, TestDir};

/// Three NATS servers and a midge node on each. Each test has its own: the scenarios use
/// the same topics (retained ones among them) for 3.1.1 and 5.
struct Cluster {
    // Dropped in this order: the nodes, then NATS, then the directories.
    nodes: Vec<Midge>,
    _servers: Vec<Nats>,
    _dirs: Vec<TestDir>,
}

impl Cluster {
    async fn start(name: &str) -> Self {
        let dir = TestDir::new(name);
        let servers = Nats::cluster(&dir, 3).await;
        for server in &servers {
            server.wait_meta_leader().await;
        }
        let mut dirs = vec![dir];
        let mut nodes = Vec::new();
        for (i, server) in servers.iter().enumerate() {
            let node_dir = TestDir::new(&format!("{name}-{i}"));
            // Each node on its own server: messages, interest and the buckets cross routes.
            nodes.push(node(&node_dir, &format!("n{i}"), &[server.url()], 0));
            dirs.push(node_dir);
        }
        let [a, b, c] = &mut nodes[..] else {
            unreachable!("three nodes")
        };
        // The first node creates the KV buckets; the others, started together after it,
        // find them. (Nodes racing to create them can wait out a JetStream request
        // timeout, 10 s, seen here.)
        a.start(&[]).await;
        tokio::join!(b.start(&[]), c.start(&[]));
        Self {
            nodes,
            _servers: servers,
            _dirs: dirs,
        }
    }

    /// The nodes' MQTT ports, in the order the scripts' clients take them.
    fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }
}

// ---- paho-mqtt ----

#[tokio::test]
async fn paho_v311_pubsub_at_qos_0_1_2_across_nodes() {
    let cluster = Cluster::start("interop-paho-pubsub-3").await;
    let result: PubSub = paho("pubsub.py", &cluster.ports(), Mqtt::V311).await;
    check_pubsub(&result, "paho 3.1.1, 3 nodes");
}

#[tokio::test]
async fn paho_v5_pubsub_at_qos_0_1_2_across_nodes() {
    let cluster = Cluster::start("interop-paho-pubsub-5").await;
    let result: PubSub = paho("pubsub.py", &cluster.ports(), Mqtt::V5).await;
    check_pubsub(&result, "paho 5, 3 nodes");
}

#[tokio::test]
async fn paho_v311_retained_messages_and_deletions_across_nodes() {
    let cluster = Cluster::start("interop-paho-retained-3").await;
    let result: Retained = paho("retained.py", &cluster.ports(), Mqtt::V311).await;
    check_retained(&result, "paho 3.1.1, 3 nodes");
}

#[tokio::test]
async fn paho_v5_retained_messages_and_deletions_across_nodes() {
    let cluster = Cluster::start("interop-paho-retained-5").await;
    let result: Retained = paho("retained.py", &cluster.ports(), Mqtt::V5).await;
    check_retained(&result, "paho 5, 3 nodes");
}

#[tokio::test]
async fn paho_v311_will_on_socket_reset_reaches_another_node() {
    let cluster = Cluster::start("interop-paho-will-3").await;
    let result: Wills = paho("will.py", &cluster.ports(), Mqtt::V311).await;
    check_will(&result, Mqtt::V311, "paho 3.1.1, 3 nodes");
}

#[tokio::test]
async fn paho_v5_will_with_properties_on_socket_reset_reaches_another_node() {
    let cluster = Cluster::start("interop-paho-will-5").await;
    let result: Wills = paho("will.py", &cluster.ports(), Mqtt::V5).await;
    check_will(&result, Mqtt::V5, "paho 5, 3 nodes");
}

#[tokio::test]
async fn paho_v311_persistent_session_queued_on_one_node_resumes_on_another() {
    let cluster = Cluster::start("interop-paho-persistent-3").await;
    let result: Persistent = paho("persistent.py", &cluster.ports(), Mqtt::V311).await;
    check_persistent(&result, "paho 3.1.1 clean session 0, 3 nodes");
}

#[tokio::test]
async fn paho_v5_session_expiry_queued_on_one_node_resumes_on_another() {
    let cluster = Cluster::start("interop-paho-persistent-5").await;
    let result: Persistent = paho("persistent.py", &cluster.ports(), Mqtt::V5).await;
    check_persistent(&result, "paho 5 session expiry, 3 nodes");
}

#[tokio::test]
async fn paho_v5_properties_subscription_ids_topic_alias_and_expiry_across_nodes() {
    let cluster = Cluster::start("interop-paho-properties").await;
    let result: PahoProperties = paho("properties.py", &cluster.ports(), Mqtt::V5).await;
    check_paho_properties(&result);
}

#[tokio::test]
async fn paho_v311_shared_subscription_members_on_two_nodes_split_messages() {
    let cluster = Cluster::start("interop-paho-shared-3").await;
    let result: Shared = paho("shared.py", &cluster.ports(), Mqtt::V311).await;
    check_shared(&result, "paho 3.1.1, 3 nodes");
}

#[tokio::test]
async fn paho_v5_shared_subscription_members_on_two_nodes_split_messages() {
    let cluster = Cluster::start("interop-paho-shared-5").await;
    let result: Shared = paho("shared.py", &cluster.ports(), Mqtt::V5).await;
    check_shared(&result, "paho 5, 3 nodes");
}

// ---- mqtt.js ----

#[tokio::test]
async fn mqttjs_v311_pubsub_at_qos_0_1_2_across_nodes() {
    let cluster = Cluster::start("interop-mqttjs-pubsub-3").await;
    let result: PubSub = mqttjs("pubsub.mjs", &cluster.ports(), Mqtt::V311).await;
    check_pubsub(&result, "mqtt.js 3.1.1, 3 nodes");
}

#[tokio::test]
async fn mqttjs_v5_pubsub_at_qos_0_1_2_across_nodes() {
    let cluster = Cluster::start("interop-mqttjs-pubsub-5").await;
    let result: PubSub = mqttjs("pubsub.mjs", &cluster.ports(), Mqtt::V5).await;
    check_pubsub(&result, "mqtt.js 5, 3 nodes");
}

#[tokio::test]
async fn mqttjs_v311_retained_messages_and_deletions_across_nodes() {
    let cluster = Cluster::start("interop-mqttjs-retained-3").await;
    let result: Retained = mqttjs("retained.mjs", &cluster.ports(), Mqtt::V311).await;
    check_retained(&result, "mqtt.js 3.1.1, 3 nodes");
}

#[tokio::test]
async fn mqttjs_v5_retained_messages_and_deletions_across_nodes() {
    let cluster = Cluster::start("interop-mqttjs-retained-5").await;
    let result: Retained = mqttjs("retained.mjs", &cluster.ports(), Mqtt::V5).await;
    check_retained(&result, "mqtt.js 5, 3 nodes");
}

#[tokio::test]
async fn mqttjs_v311_will_on_socket_reset_reaches_another_node() {
    let cluster = Cluster::start("interop-mqttjs-will-3").await;
    let result: Wills = mqttjs("will.mjs", &cluster.ports(), Mqtt::V311).await;
    check_will(&result, Mqtt::V311, "mqtt.js 3.1.1, 3 nodes");
}

#[tokio::test]
async fn mqttjs_v5_will_with_properties_on_socket_reset_reaches_another_node() {
    let cluster = Cluster::start("interop-mqttjs-will-5").await;
    let result: Wills = mqttjs("will.mjs", &cluster.ports(), Mqtt::V5).await;
    check_will(&result, Mqtt::V5, "mqtt.js 5, 3 nodes");
}

#[tokio::test]
async fn mqttjs_v311_persistent_session_queued_on_one_node_resumes_on_another() {
    let cluster = Cluster::start("interop-mqttjs-persistent-3").await;
    let result: Persistent = mqttjs("persistent.mjs", &cluster.ports(), Mqtt::V311).await;
    check_persistent(&result, "mqtt.js 3.1.1 clean session 0, 3 nodes");
}

#[tokio::test]
async fn mqttjs_v5_session_expiry_queued_on_one_node_resumes_on_another() {
    let cluster = Cluster::start("interop-mqttjs-persistent-5").await;
    let result: Persistent = mqttjs("persistent.mjs", &cluster.ports(), Mqtt::V5).await;
    check_persistent(&result, "mqtt.js 5 session expiry, 3 nodes");
}

#[tokio::test]
async fn mqttjs_v5_properties_pass_through_and_topic_aliases_across_nodes() {
    let cluster = Cluster::start("interop-mqttjs-properties").await;
    let result: MqttJsProperties = mqttjs("properties.mjs", &cluster.ports(), Mqtt::V5).await;
    check_mqttjs_properties(&result);
}
