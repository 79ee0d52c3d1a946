//! `$SYS/broker/...`: Mosquitto's topic names, retained, updated every `sys.interval_secs`.

use std::collections::HashMap;

use tokio::time::Instant;

use crate::client::{V3, text};
use crate::harness::{TIMEOUT, TestBroker};

/// The topics Mosquitto dashboards read.
const MOSQUITTO_TOPICS: [&str; 10] = [
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/clients/total",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/bytes/received",
    "$SYS/broker/bytes/sent",
    "$SYS/broker/subscriptions/count",
    "$SYS/broker/retained messages/count",
];

/// Every `$SYS` value `watcher` received, by topic, in order.
#[derive(Default)]
struct Seen(HashMap<String, Vec<String>>);

impl Seen {
    /// Receives until `done` holds, bounded by [`TIMEOUT`].
    async fn until(&mut self, watcher: &mut V3, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out; $SYS so far: {:?}",
                self.0
            );
            let p = watcher.next_publish().await;
            self.0.entry(p.topic).or_default().push(text(&p.payload));
        }
    }

    fn last(&self, topic: &str) -> Option<&str> {
        self.0.get(topic)?.last().map(String::as_str)
    }

    fn number(&self, topic: &str) -> Option<u64> {
        self.last(topic)?.split(' ').next()?.parse().ok()
    }
}

#[tokio::test]
async fn sys_topics_carry_mosquitto_names_and_are_retained() {
    let broker = TestBroker::start_with(|c| c.sys.interval_secs = 1).await;
    // The first update is published as the broker starts, so these arrive as retained
    // messages on subscribing.
    broker
        .eventually("the first $SYS update", |b| {
            b.retained.len() >= MOSQUITTO_TOPICS.len()
        })
        .await;
    let mut watcher = V3::connect(&broker, "watcher").await;
    watcher.subscribe_ok("$SYS/broker/#", 0).await;
    let mut seen = Seen::default();
    // `$SYS/brokers/...` (the EMQX-style node topics) is retained too, outside this filter.
    let under_broker = broker
        .broker()
        .retained
        .matching("$SYS/broker/#", midge_broker::model::now_millis())
        .len();
    for _ in 0..under_broker {
        let p = watcher.next_publish().await;
        assert!(p.retain, "{} sent at subscribe with RETAIN", p.topic);
        seen.0.entry(p.topic).or_default().push(text(&p.payload));
    }
    for topic in MOSQUITTO_TOPICS {
        assert!(
            seen.last(topic).is_some(),
            "{topic} missing; got {:?}",
            seen.0.keys()
        );
    }
    assert!(
        seen.last("$SYS/broker/version")
            .unwrap()
            .starts_with("midge version ")
    );
    let uptime = seen.last("$SYS/broker/uptime").unwrap();
    assert!(uptime.ends_with(" seconds"), "uptime {uptime:?}");
    for topic in MOSQUITTO_TOPICS.iter().skip(1) {
        assert!(
            seen.number(topic).is_some(),
            "{topic} = {:?}",
            seen.last(topic)
        );
    }

    // `#` does not reach into `$SYS` [MQTT-4.7.2-1]: its first message is a normal one.
    let mut everything = V3::connect(&broker, "everything").await;
    everything.subscribe_ok("#", 0).await;
    V3::connect(&broker, "pub")
        .await
        .publish("plain", 0, false, "plain")
        .await;
    assert_eq!(everything.next_publish().await.topic, "plain");
    broker.shutdown().await;
}

#[tokio::test]
async fn sys_values_follow_the_broker_every_interval() {
    let broker = TestBroker::start_with(|c| c.sys.interval_secs = 1).await;
    let mut watcher = V3::connect(&broker, "watcher").await;
    watcher.subscribe_ok("$SYS/broker/#", 0).await;
    let mut other = V3::connect(&broker, "other").await;
    other.subscribe_ok("x/#", 1).await;
    other.publish("x/kept", 1, true, "retained").await;
    let retained = broker.broker().retained.len() as u64;

    let mut seen = Seen::default();
    seen.until(&mut watcher, |s| {
        s.last("$SYS/broker/clients/connected") == Some("2")
            && s.last("$SYS/broker/clients/total") == Some("2")
            && s.number("$SYS/broker/subscriptions/count") == Some(2)
            && s.number("$SYS/broker/retained messages/count") == Some(retained)
            && s.0.get("$SYS/broker/uptime").is_some_and(|u| u.len() >= 2)
    })
    .await;
    // The value is republished only when it changes, but uptime changes every interval.
    let uptimes: Vec<u64> = seen.0["$SYS/broker/uptime"]
        .iter()
        .map(|u| u.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(
        uptimes.windows(2).all(|w| w[1] > w[0]),
        "uptime {uptimes:?}"
    );
    for topic in [
        "$SYS/broker/messages/received",
        "$SYS/broker/bytes/received",
        "$SYS/broker/bytes/sent",
    ] {
        assert!(seen.number(topic).unwrap() > 0, "{topic}");
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn load_averages_store_figures_and_emqx_node_topics_are_published() {
    let broker = TestBroker::start_with(|c| c.sys.interval_secs = 1).await;
    let mut watcher = V3::connect(&broker, "watcher").await;
    watcher.subscribe_ok("$SYS/#", 0).await;
    let node = midge_broker::sys::node_name();
    let base = format!("$SYS/brokers/{node}");
    let mut seen = Seen::default();
    // Load averages come from the second update on (the first is their baseline).
    seen.until(&mut watcher, |s| {
        // The last topic of an update.
        s.last(&format!("{base}/sysdescr")).is_some()
            && s.last("$SYS/broker/load/sockets/15min").is_some()
    })
    .await;
    for name in [
        "messages/received",
        "messages/sent",
        "publish/received",
        "publish/sent",
        "publish/dropped",
        "bytes/received",
        "bytes/sent",
        "connections",
        "sockets",
    ] {
        for period in ["1min", "5min", "15min"] {
            let topic = format!("$SYS/broker/load/{name}/{period}");
            let value = seen
                .last(&topic)
                .unwrap_or_else(|| panic!("{topic} missing"));
            let number: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("{topic} = {value}"));
            assert!(number >= 0.0 && value.contains('.'), "{topic} = {value}");
        }
    }
    // A connection after the first update shows in the next one's 1-minute loads.
    V3::connect(&broker, "later").await;
    seen.until(&mut watcher, |s| {
        s.last("$SYS/broker/load/sockets/1min") != Some("0.00")
            && s.last("$SYS/broker/load/connections/1min") != Some("0.00")
    })
    .await;
    assert_eq!(seen.last("$SYS/broker/store/messages/count"), Some("0"));
    assert!(seen.number("$SYS/broker/store/messages/bytes").is_some());
    assert_eq!(seen.last("$SYS/brokers"), Some(node.as_str()));
    assert_eq!(
        seen.last(&format!("{base}/version")),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(
        seen.last(&format!("{base}/uptime"))
            .unwrap()
            .ends_with(" seconds")
    );
    assert_eq!(
        seen.last(&format!("{base}/sysdescr")),
        Some("midge MQTT broker")
    );
    let datetime = seen.last(&format!("{base}/datetime")).unwrap();
    assert_eq!(datetime.len(), 19, "{datetime}");
    assert!(datetime.starts_with("20"), "{datetime}");
    broker.shutdown().await;
}

#[tokio::test]
async fn client_events_are_published_as_emqx_does_when_turned_on() {
    let broker = TestBroker::start_with(|c| c.sys.client_events = true).await;
    let mut watcher = V3::connect(&broker, "watcher").await;
    watcher.subscribe_ok("$SYS/brokers/+/clients/#", 0).await;
    let node = midge_broker::sys::node_name();
    drop(V3::connect(&broker, "dev-1").await);
    let mut seen = Seen::default();
    let base = format!("$SYS/brokers/{node}/clients/dev-1");
    seen.until(&mut watcher, |s| {
        s.last(&format!("{base}/disconnected")).is_some()
    })
    .await;
    let connected: serde_json::Value =
        serde_json::from_str(seen.last(&format!("{base}/connected")).unwrap()).unwrap();
    assert_eq!(connected["clientid"], "dev-1");
    assert_eq!(connected["ipaddress"], "127.0.0.1");
    assert_eq!(connected["proto_ver"], 4);
    assert!(connected["connected_at"].as_u64().unwrap() > 1_600_000_000_000);
    let disconnected: serde_json::Value =
        serde_json::from_str(seen.last(&format!("{base}/disconnected")).unwrap()).unwrap();
    assert_eq!(disconnected["clientid"], "dev-1");
    assert!(disconnected["reason"].is_string());
    broker.shutdown().await;

    // Off by default: nothing is published.
    let broker = TestBroker::start().await;
    let mut watcher = V3::connect(&broker, "watcher").await;
    watcher.subscribe_ok("$SYS/brokers/+/clients/#", 0).await;
    drop(V3::connect(&broker, "dev-2").await);
    let mut fence = V3::connect(&broker, "fence").await;
    // dev-2 has been through connect and finish (where the events would go out).
    broker
        .eventually("dev-2 gone", |b| b.registry.connected_len() == 2)
        .await;
    // The watcher gets nothing: a message to itself is the first thing it sees.
    watcher.subscribe_ok("self", 0).await;
    fence.publish("self", 0, false, "done").await;
    assert_eq!(watcher.next_publish().await.topic, "self");
    broker.shutdown().await;
}
