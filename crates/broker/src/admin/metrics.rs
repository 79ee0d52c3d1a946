//! `GET /metrics`: every value read from the broker's counters ([`crate::stats`], the
//! store's and the login guard's) at scrape time, so nothing on the hot path knows about
//! Prometheus. Names follow Prometheus conventions: `midge_` prefix, `_total` on counters
//! (the encoder adds it), base units (seconds, bytes), no client id or topic labels.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::AdminContext;
use super::process;
use crate::stats::HistogramSnapshot;

/// The content type of the text exposition format.
pub(super) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every metric.
pub(super) fn render(context: &AdminContext) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BrokerCollector(context.clone())));
    let mut out = String::with_capacity(8 * 1024);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &registry);
    to_text_format(&out)
}

/// prometheus-client writes OpenMetrics, where a counter family `x` has samples `x_total`.
/// The Prometheus text format (0.0.4), which every scraper and `promtool check metrics`
/// read, names the family after its samples: so HELP and TYPE of counters get `_total`.
/// (`# EOF` is OpenMetrics only, and a comment to the text format; it is dropped too.)
fn to_text_format(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 16 * counters.len());
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[derive(Debug)]
struct BrokerCollector(AdminContext);

type Labels<'a> = Vec<(&'static str, &'a str)>;

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter_family(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels<'_>, u64)],
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge_family(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels<'_>, f64)],
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &HistogramSnapshot,
) -> std::fmt::Result {
    let mut metric = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    // The encoder adds the buckets up, and writes `+Inf` for `f64::MAX`.
    let buckets: Vec<(f64, u64)> = h
        .buckets
        .iter()
        .map(|&(bound, n)| (if bound.is_finite() { bound } else { f64::MAX }, n))
        .collect();
    metric
        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(h.sum, h.count, &buckets, None)
}

impl Collector for BrokerCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let context = &self.0;
        let broker = &context.broker;
        let s = broker.stats.snapshot();
        let e = &mut e;

        // Gauges.
        let listeners = context.listeners.list();
        let per_listener: Vec<(Labels<'_>, f64)> = listeners
            .iter()
            .map(|l| {
                let open = l.connections.load(std::sync::atomic::Ordering::Relaxed);
                (vec![("listener", l.name.as_str())], open as f64)
            })
            .collect();
        gauge_family(
            e,
            "midge_connections",
            "Network connections open, per listener (including those still in their TLS, WebSocket or CONNECT handshake).",
            &per_listener,
        )?;
        let sessions = broker.registry.len() as u64;
        let online = s.clients_connected.min(sessions);
        gauge_family(
            e,
            "midge_sessions",
            "Sessions, online (a connection serves them) or offline (kept for a client that left).",
            &[
                (vec![("state", "online")], online as f64),
                (vec![("state", "offline")], (sessions - online) as f64),
            ],
        )?;
        gauge(
            e,
            "midge_subscriptions",
            "Subscriptions (topic filters of all sessions).",
            broker.router.len() as f64,
        )?;
        gauge(
            e,
            "midge_retained_messages",
            "Retained messages.",
            broker.retained.len() as f64,
        )?;
        let (queued, parked_inflight) = broker.registry.queue_totals();
        gauge(
            e,
            "midge_queued_messages",
            "Deliveries waiting in session queues (online and offline sessions).",
            queued as f64,
        )?;
        gauge(
            e,
            "midge_inflight_messages",
            "QoS 1/2 deliveries sent and not yet acknowledged (connected sessions as of their last wake-up, plus offline sessions').",
            (s.inflight as usize + parked_inflight) as f64,
        )?;
        gauge(
            e,
            "midge_pre_connect_bytes",
            "Bytes buffered by connections that have not completed CONNECT (bounded by mqtt.max_pre_connect_bytes).",
            s.pre_connect_bytes as f64,
        )?;
        let memory = &broker.memory;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        gauge(
            e,
            "midge_memory_used_bytes",
            "Bytes client input holds as compared with limits.max_memory: those counted (queues, retained messages, buffers) and the resident growth they do not account for.",
            memory.used() as f64,
        )?;
        gauge(
            e,
            "midge_memory_uncounted_bytes",
            "The part of midge_memory_used_bytes measured as resident growth beyond the count (at most the count again).",
            memory.uncounted() as f64,
        )?;
        gauge(
            e,
            "midge_memory_budget_bytes",
            "limits.max_memory in force (0: no limit).",
            memory.budget() as f64,
        )?;
        gauge(
            e,
            "midge_memory_pressure",
            "1 while over the memory budget (QoS 1/2 publishes and new connections refused, QoS 0 dropped to backlogged sessions).",
            f64::from(u8::from(memory.pressure())),
        )?;
        gauge(
            e,
            "midge_clients_maximum",
            "Most connected clients at once since start.",
            s.clients_maximum as f64,
        )?;

        // Counters.
        counter(
            e,
            "midge_connections_accepted",
            "Network connections accepted.",
            s.connections_accepted,
        )?;
        counter_family(
            e,
            "midge_publish_rate_exceeded",
            "Times a connection went over its publish rate ([limits]), by what was done.",
            &[
                (vec![("action", "throttled")], s.publish_rate_throttled),
                (
                    vec![("action", "disconnected")],
                    s.publish_rate_disconnected,
                ),
            ],
        )?;
        counter(
            e,
            "midge_connect_floods",
            "Times a listener accepted on its own thread because a limit refused a connection.",
            s.connect_floods,
        )?;
        counter_family(
            e,
            "midge_connect_rejected",
            "Connections turned away, by reason.",
            &[
                (vec![("reason", "max_connections")], s.connections_refused),
                (
                    vec![("reason", "per_ip_connections")],
                    s.connections_refused_per_ip,
                ),
                (vec![("reason", "per_ip_rate")], s.connections_refused_rate),
                (vec![("reason", "handshake_failed")], s.handshakes_failed),
                (
                    vec![("reason", "bad_credentials")],
                    s.connects_refused_credentials,
                ),
                (
                    vec![("reason", "not_authorized")],
                    s.connects_refused_not_authorized,
                ),
                (
                    vec![("reason", "rate_limited")],
                    s.connects_refused_rate_limited,
                ),
                (
                    vec![("reason", "client_id_rejected")],
                    s.connects_refused_client_id,
                ),
                (
                    vec![("reason", "server_unavailable")],
                    s.connects_refused_unavailable
                        .saturating_sub(load(&memory.refused_connections)),
                ),
                (
                    vec![("reason", "memory_budget")],
                    load(&memory.refused_connections),
                ),
                (
                    vec![("reason", "not_connect")],
                    s.pre_connect_dropped_not_connect,
                ),
                (
                    vec![("reason", "connect_too_large")],
                    s.pre_connect_dropped_too_large,
                ),
                (
                    vec![("reason", "pre_connect_budget")],
                    s.pre_connect_dropped_over_budget,
                ),
                (
                    vec![("reason", "connect_timeout")],
                    s.pre_connect_dropped_timeout,
                ),
                (
                    vec![("reason", "other")],
                    s.connects_refused.saturating_sub(
                        s.connects_refused_credentials
                            + s.connects_refused_not_authorized
                            + s.connects_refused_rate_limited
                            + s.connects_refused_client_id
                            + s.connects_refused_unavailable,
                    ),
                ),
            ],
        )?;
        let by_qos = |total: u64, qos1: u64, qos2: u64| {
            vec![
                (vec![("qos", "0")], total.saturating_sub(qos1 + qos2)),
                (vec![("qos", "1")], qos1),
                (vec![("qos", "2")], qos2),
            ]
        };
        counter_family(
            e,
            "midge_messages_received",
            "PUBLISH packets received from clients, by QoS.",
            &by_qos(
                s.publish_received,
                s.publish_received_qos1,
                s.publish_received_qos2,
            ),
        )?;
        counter_family(
            e,
            "midge_messages_delivered",
            "PUBLISH packets sent to clients, by the QoS they were sent at.",
            &by_qos(s.publish_sent, s.publish_sent_qos1, s.publish_sent_qos2),
        )?;
        counter_family(
            e,
            "midge_messages_dropped",
            "Messages or deliveries dropped, by reason.",
            &[
                (
                    vec![("reason", "queue")],
                    s.publish_dropped.saturating_sub(
                        s.publish_dropped_expired
                            + s.publish_dropped_too_large
                            + load(&memory.dropped_qos0)
                            + load(&memory.refused_publishes),
                    ),
                ),
                (vec![("reason", "memory")], load(&memory.dropped_qos0)),
                (
                    vec![("reason", "memory_refused")],
                    load(&memory.refused_publishes),
                ),
                (vec![("reason", "expired")], s.publish_dropped_expired),
                (vec![("reason", "too_large")], s.publish_dropped_too_large),
                (vec![("reason", "not_authorized")], s.publish_denied),
                (vec![("reason", "retained_queue_full")], s.retained_dropped),
                (
                    vec![("reason", "store_full")],
                    broker.journal.as_ref().map_or(0, |j| {
                        j.stats()
                            .dropped_full
                            .load(std::sync::atomic::Ordering::Relaxed)
                    }),
                ),
            ],
        )?;
        counter(
            e,
            "midge_packets_received",
            "MQTT packets received.",
            s.packets_received,
        )?;
        counter(
            e,
            "midge_packets_sent",
            "MQTT packets sent.",
            s.packets_sent,
        )?;
        counter(
            e,
            "midge_bytes_received",
            "Bytes received from clients.",
            s.bytes_received,
        )?;
        counter(
            e,
            "midge_bytes_sent",
            "Bytes sent to clients.",
            s.bytes_sent,
        )?;
        counter(
            e,
            "midge_protocol_errors",
            "Connections closed for malformed or protocol-violating input.",
            s.protocol_errors,
        )?;
        counter(
            e,
            "midge_wills_published",
            "Wills published.",
            s.wills_published,
        )?;
        let auth = &context.guard.stats;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        counter_family(
            e,
            "midge_auth",
            "Logins checked against a password file or the HTTP service (MQTT and admin), by result.",
            &[
                (vec![("result", "success")], load(&auth.success)),
                (vec![("result", "failure")], load(&auth.failure)),
                (vec![("result", "rate_limited")], load(&auth.rate_limited)),
                (vec![("result", "error")], load(&auth.error)),
            ],
        )?;
        counter(
            e,
            "midge_sessions_created",
            "Sessions begun new at CONNECT.",
            s.sessions_created,
        )?;
        counter(
            e,
            "midge_sessions_resumed",
            "Sessions resumed at CONNECT (session present).",
            s.sessions_resumed,
        )?;
        counter(
            e,
            "midge_sessions_taken_over",
            "Sessions taken over by a new connection with the same client id.",
            s.sessions_taken_over,
        )?;
        counter(
            e,
            "midge_sessions_expired",
            "Sessions that ended by expiry.",
            s.sessions_expired,
        )?;

        // Histograms.
        histogram(
            e,
            "midge_auth_duration_seconds",
            "Time taken to check credentials (password hash or HTTP round trip).",
            &auth.duration.snapshot(),
        )?;
        if let Some(journal) = &broker.journal {
            let store = journal.stats();
            histogram(
                e,
                "midge_store_commit_duration_seconds",
                "Time taken by each store commit (with its fsync when durable).",
                &store.commit_duration.snapshot(),
            )?;
            gauge(
                e,
                "midge_store_bytes",
                "Bytes of messages, retained messages and queue rows in the store.",
                load(&store.stored_bytes) as f64,
            )?;
            counter(
                e,
                "midge_store_commits",
                "Store transactions committed.",
                load(&store.commits),
            )?;
            counter(
                e,
                "midge_store_commit_failures",
                "Store commits that failed (each is retried).",
                load(&store.failed_commits),
            )?;
        }

        // The process and the build.
        gauge(
            e,
            "midge_uptime_seconds",
            "Seconds since the broker started.",
            broker.uptime_secs() as f64,
        )?;
        let version = env!("CARGO_PKG_VERSION");
        gauge_family(
            e,
            "midge_build_info",
            "The midge build: always 1, with the version as a label.",
            &[(vec![("version", version)], 1.0)],
        )?;
        if let Some(p) = process::read() {
            counter_f64(
                e,
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds.",
                p.cpu_seconds,
            )?;
            gauge(
                e,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                p.resident_bytes as f64,
            )?;
            gauge(
                e,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                p.virtual_bytes as f64,
            )?;
            gauge(
                e,
                "process_open_fds",
                "Open file descriptors.",
                p.open_fds as f64,
            )?;
            gauge(
                e,
                "process_max_fds",
                "The open file descriptors limit.",
                p.max_fds as f64,
            )?;
            gauge(e, "process_threads", "OS threads.", p.threads as f64)?;
            gauge(
                e,
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds.",
                p.start_time_seconds,
            )?;
        }
        Ok(())
    }
}

fn counter_f64(e: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}
