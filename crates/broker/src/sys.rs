//! `$SYS/broker/...` topics, with the names Mosquitto uses so existing dashboards read
//! them unchanged. Published retained, and only when a value changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::broker::Broker;
use crate::model::{Message, Millis, now_millis};
use crate::stats::StatsSnapshot;

/// The `$SYS` topics and their current values.
pub fn values(broker: &Broker) -> Vec<(&'static str, String)> {
    let s = broker.stats.snapshot();
    // AMQP connections are connected clients without a session.
    let total = (broker.registry.len() + broker.amqp.connections.len()) as u64;
    let connected = s.clients_connected;
    let memory = &broker.memory;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
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
        (
            "$SYS/broker/sessions/not parked",
            s.sessions_not_parked.to_string(),
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
            "$SYS/broker/connections/floods",
            s.connect_floods.to_string(),
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
        // midge's own: the AMQP side (its connections count in clients/connected too).
        (
            "$SYS/broker/amqp/connections",
            broker.amqp.connections.len().to_string(),
        ),
        ("$SYS/broker/amqp/queues", broker.amqp.len().to_string()),
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
        // midge's own: connections over their publish rate (`[limits]`).
        (
            "$SYS/broker/clients/publish_rate/throttled",
            s.publish_rate_throttled.to_string(),
        ),
        (
            "$SYS/broker/clients/publish_rate/disconnected",
            s.publish_rate_disconnected.to_string(),
        ),
        // midge's own: the memory budget (`limits.max_memory`) and what it turned away.
        ("$SYS/broker/memory/used", memory.used().to_string()),
        ("$SYS/broker/memory/maximum", memory.maximum().to_string()),
        // The part of `used` measured rather than counted (resident growth).
        (
            "$SYS/broker/memory/uncounted",
            memory.uncounted().to_string(),
        ),
        (
            "$SYS/broker/memory/budget",
            // 0: no limit.
            memory.budget().to_string(),
        ),
        (
            "$SYS/broker/memory/pressure",
            u8::from(memory.pressure()).to_string(),
        ),
        (
            "$SYS/broker/publish/messages/dropped/memory",
            load(&memory.dropped_qos0).to_string(),
        ),
        (
            "$SYS/broker/publish/messages/refused/memory",
            load(&memory.refused_publishes).to_string(),
        ),
        (
            "$SYS/broker/connections/refused/memory",
            load(&memory.refused_connections).to_string(),
        ),
    ]
}

/// The periods of Mosquitto's load averages, with their topic suffixes.
const LOAD_PERIODS: [(f64, &str); 3] = [(60.0, "1min"), (300.0, "5min"), (900.0, "15min")];

/// Mosquitto's `$SYS/broker/load/...`: per-minute rates as exponentially weighted
/// averages over 1, 5 and 15 minutes, updated each `$SYS` interval (as Mosquitto does).
#[derive(Debug, Default)]
pub struct LoadAverages {
    previous: Option<StatsSnapshot>,
    /// Per counter, the three averages.
    averages: [[f64; 3]; LOAD_COUNTERS],
}

const LOAD_COUNTERS: usize = 9;

impl LoadAverages {
    /// The counters averaged, with their topic names.
    fn counters(s: &StatsSnapshot) -> [(&'static str, u64); LOAD_COUNTERS] {
        [
            ("messages/received", s.packets_received),
            ("messages/sent", s.packets_sent),
            ("publish/received", s.publish_received),
            ("publish/sent", s.publish_sent),
            ("publish/dropped", s.publish_dropped),
            ("bytes/received", s.bytes_received),
            ("bytes/sent", s.bytes_sent),
            ("connections", s.clients_connected_total()),
            ("sockets", s.connections_accepted),
        ]
    }

    /// Folds in the counters `elapsed_secs` after the previous update and returns the
    /// topics and values (`%.2f`, per minute). The first update only takes a baseline.
    pub fn update(&mut self, s: &StatsSnapshot, elapsed_secs: f64) -> Vec<(String, String)> {
        let Some(previous) = self.previous.replace(*s) else {
            return Vec::new();
        };
        if elapsed_secs <= 0.0 {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(LOAD_COUNTERS * 3);
        let before = Self::counters(&previous);
        for (i, (name, now)) in Self::counters(s).into_iter().enumerate() {
            let per_minute = now.saturating_sub(before[i].1) as f64 * 60.0 / elapsed_secs;
            for (j, (period, suffix)) in LOAD_PERIODS.iter().enumerate() {
                let weight = (-elapsed_secs / period).exp();
                let average = &mut self.averages[i][j];
                *average = *average * weight + per_minute * (1.0 - weight);
                out.push((
                    format!("$SYS/broker/load/{name}/{suffix}"),
                    format!("{average:.2}"),
                ));
            }
        }
        out
    }
}

/// Publishes an EMQX-style client event, `$SYS/brokers/<node>/clients/<client id>/<event>`
/// with a JSON payload, when `sys.client_events` is on. A client id with `+` or `#`
/// (not allowed in a topic name) gets none.
pub fn client_event(broker: &Broker, client_id: &str, event: &str, payload: serde_json::Value) {
    if !broker.config().sys.client_events || client_id.contains(['+', '#']) {
        return;
    }
    static NODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let node = NODE.get_or_init(node_name);
    let topic = format!("$SYS/brokers/{node}/clients/{client_id}/{event}");
    let body = Bytes::from(payload.to_string().into_bytes());
    broker.publish(Message::internal(topic, body, false, now_millis()));
}

/// The node name in the EMQX-style `$SYS/brokers/<node>/...` topics: `midge@<host>`.
pub fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty() && !h.contains(['/', '+', '#']))
        .unwrap_or_else(|| "localhost".to_owned());
    format!("midge@{host}")
}

/// Topics beyond [`values`]: the store's figures and the EMQX-style node topics, which
/// EMQX dashboards and the seeds read.
pub fn more_values(broker: &Broker, node: &str, now: Millis) -> Vec<(String, String)> {
    let (queued, _) = broker.registry.queue_totals();
    let stored = broker.journal.as_ref().map_or(0, |j| {
        j.stats()
            .stored_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    });
    let base = format!("$SYS/brokers/{node}");
    vec![
        (
            "$SYS/broker/store/messages/count".to_owned(),
            queued.to_string(),
        ),
        (
            "$SYS/broker/store/messages/bytes".to_owned(),
            stored.to_string(),
        ),
        ("$SYS/brokers".to_owned(), node.to_owned()),
        (
            format!("{base}/version"),
            env!("CARGO_PKG_VERSION").to_owned(),
        ),
        (
            format!("{base}/uptime"),
            format!("{} seconds", broker.uptime_secs()),
        ),
        (format!("{base}/datetime"), datetime(now / 1000)),
        (format!("{base}/sysdescr"), "midge MQTT broker".to_owned()),
    ]
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for seconds since the Unix epoch.
fn datetime(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Publishes the `$SYS` topics every `interval` until shutdown.
pub async fn run(broker: Arc<Broker>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut last: HashMap<String, String> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    let mut load = LoadAverages::default();
    let mut last_tick = std::time::Instant::now();
    let node = node_name();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = now_millis();
        let elapsed = last_tick.elapsed().as_secs_f64();
        last_tick = std::time::Instant::now();
        let fixed = values(&broker)
            .into_iter()
            .map(|(topic, value)| (topic.to_owned(), value));
        let loads = load.update(&broker.stats.snapshot(), elapsed);
        for (topic, value) in fixed.chain(loads).chain(more_values(&broker, &node, now)) {
            if last.get(&topic) == Some(&value) {
                continue;
            }
            let message = Message::internal(
                topic.clone(),
                Bytes::from(value.clone().into_bytes()),
                true,
                now,
            );
            broker.publish(message);
            last.insert(topic, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(datetime(0), "1970-01-01 00:00:00");
        assert_eq!(datetime(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(datetime(1_796_482_861), "2026-12-05 15:01:01");
    }

    #[test]
    fn load_averages_approach_the_rate_per_minute() {
        let mut load = LoadAverages::default();
        let mut s = StatsSnapshot::default();
        assert!(
            load.update(&s, 10.0).is_empty(),
            "the first update is a baseline"
        );
        // 100 PUBLISH every 10 s: 600 a minute.
        let mut last = Vec::new();
        // Three hours: even the 15-minute average has converged.
        for _ in 0..1080 {
            s.publish_received += 100;
            last = load.update(&s, 10.0);
        }
        let value = |topic: &str| -> f64 {
            last.iter()
                .find(|(t, _)| t == topic)
                .unwrap()
                .1
                .parse()
                .unwrap()
        };
        assert!((value("$SYS/broker/load/publish/received/1min") - 600.0).abs() < 0.01);
        assert!((value("$SYS/broker/load/publish/received/15min") - 600.0).abs() < 1.0);
        assert_eq!(value("$SYS/broker/load/bytes/sent/5min"), 0.0);
        // One interval after the traffic stops, the 1-minute average has fallen most.
        let after = load.update(&s, 10.0);
        let one: f64 = after
            .iter()
            .find(|(t, _)| t.ends_with("publish/received/1min"))
            .unwrap()
            .1
            .parse()
            .unwrap();
        let fifteen: f64 = after
            .iter()
            .find(|(t, _)| t.ends_with("publish/received/15min"))
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert!(one < fifteen && one > 0.0, "{one} {fifteen}");
    }
}
