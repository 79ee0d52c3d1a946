//! `$SYS/broker/...` topics, with the names Mosquitto uses so existing dashboards read
//! them unchanged. Published retained, and only when a value changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::broker::Broker;
use crate::model::{Message, now_millis};

/// The `$SYS` topics and their current values.
pub fn values(broker: &Broker) -> Vec<(&'static str, String)> {
    let s = broker.stats.snapshot();
    let total = broker.registry.len() as u64;
    let connected = s.clients_connected;
    vec![
        (
            "$SYS/broker/version",
            format!("midge version {}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "$SYS/broker/uptime",
            format!("{} seconds", broker.uptime_secs()),
        ),
        ("$SYS/broker/clients/connected", connected.to_string()),
        ("$SYS/broker/clients/active", connected.to_string()),
        (
            "$SYS/broker/clients/disconnected",
            total.saturating_sub(connected).to_string(),
        ),
        ("$SYS/broker/clients/total", total.to_string()),
        ("$SYS/broker/clients/maximum", s.clients_maximum.to_string()),
        (
            "$SYS/broker/clients/expired",
            s.sessions_expired.to_string(),
        ),
        // midge's own: connections refused at accept by the limits per address.
        (
            "$SYS/broker/connections/refused/per_ip",
            s.connections_refused_per_ip.to_string(),
        ),
        (
            "$SYS/broker/connections/refused/rate",
            s.connections_refused_rate.to_string(),
        ),
        (
            "$SYS/broker/messages/received",
            s.packets_received.to_string(),
        ),
        ("$SYS/broker/messages/sent", s.packets_sent.to_string()),
        (
            "$SYS/broker/publish/messages/received",
            s.publish_received.to_string(),
        ),
        (
            "$SYS/broker/publish/messages/sent",
            s.publish_sent.to_string(),
        ),
        (
            "$SYS/broker/publish/messages/dropped",
            s.publish_dropped.to_string(),
        ),
        ("$SYS/broker/bytes/received", s.bytes_received.to_string()),
        ("$SYS/broker/bytes/sent", s.bytes_sent.to_string()),
        (
            "$SYS/broker/subscriptions/count",
            broker.router.len().to_string(),
        ),
        (
            "$SYS/broker/retained messages/count",
            broker.retained.len().to_string(),
        ),
        (
            "$SYS/broker/retained messages/dropped",
            s.retained_dropped.to_string(),
        ),
        // midge's own: what connections cost before CONNECT, and those closed for it.
        (
            "$SYS/broker/connections/pre_connect/bytes",
            s.pre_connect_bytes.to_string(),
        ),
        (
            "$SYS/broker/connections/pre_connect/bytes/maximum",
            s.pre_connect_bytes_maximum.to_string(),
        ),
        (
            "$SYS/broker/connections/pre_connect/dropped/not_connect",
            s.pre_connect_dropped_not_connect.to_string(),
        ),
        (
            "$SYS/broker/connections/pre_connect/dropped/too_large",
            s.pre_connect_dropped_too_large.to_string(),
        ),
        (
            "$SYS/broker/connections/pre_connect/dropped/over_budget",
            s.pre_connect_dropped_over_budget.to_string(),
        ),
        (
            "$SYS/broker/connections/pre_connect/dropped/timeout",
            s.pre_connect_dropped_timeout.to_string(),
        ),
    ]
}

/// Publishes the `$SYS` topics every `interval` until shutdown.
pub async fn run(broker: Arc<Broker>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut last: HashMap<&'static str, String> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = now_millis();
        for (topic, value) in values(&broker) {
            if last.get(topic) == Some(&value) {
                continue;
            }
            let message = Message::internal(
                topic.to_owned(),
                Bytes::from(value.clone().into_bytes()),
                true,
                now,
            );
            broker.publish(message);
            last.insert(topic, value);
        }
    }
}
