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
    for _ in 0..broker.broker().retained.len() {
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
