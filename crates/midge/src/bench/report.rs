//! What a run measured, as text for people or one JSON object for scripts.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use super::histogram::Histogram;
use super::procstat::{self, Pid};
use super::{Plan, Scenario};

/// A snapshot of CPU time and memory, taken at the edges of the measured window.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub own_cpu: Duration,
    pub broker_cpu: Option<Duration>,
    pub broker_rss_kib: Option<u64>,
}

impl Usage {
    /// Reads ours and, if given, the broker's. A broker that cannot be read (gone, or
    /// another user's) is reported as absent, not as an error: the load figures stand.
    pub fn now(broker_pid: Option<u32>) -> Self {
        Self {
            own_cpu: procstat::cpu_time(Pid::Own).unwrap_or_default(),
            broker_cpu: broker_pid.and_then(|p| procstat::cpu_time(Pid::Other(p)).ok()),
            broker_rss_kib: broker_pid.and_then(|p| procstat::rss_kib(Pid::Other(p)).ok()),
        }
    }
}

/// Everything a run measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Length of the measured window.
    pub window: Duration,
    /// Messages published over the whole run (warm-up included).
    pub sent: u64,
    /// Deliveries that should have happened: each message times the subscribers it is for.
    pub expected: u64,
    /// Deliveries received inside the measured window.
    pub delivered: u64,
    /// Deliveries received over the whole run.
    pub delivered_total: u64,
    /// Publish to delivery, nanoseconds, of messages sent inside the measured window.
    pub latency: Histogram,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Deliveries whose payload this run did not write (another client's traffic).
    pub unexpected: u64,
    /// The in-flight bound the publishers used (the broker's Receive Maximum can lower it).
    pub inflight: u64,
    /// Times a publisher gave up waiting for deliveries that never came.
    pub stalls: u64,
    pub connections: u32,
    /// First CONNECT to last CONNACK (and SUBACK).
    pub connect_time: Duration,
    /// `conn`: the first CONNECT's wall-clock time, Unix seconds.
    pub connect_started_unix: Option<f64>,
    /// CONNECT to CONNACK, nanoseconds.
    pub handshake: Histogram,
    pub start: Option<Usage>,
    pub end: Option<Usage>,
    /// `conn --conn-fanout`: the one message to every connection.
    pub fanout: Option<Fanout>,
}

/// How one message fanned out to every idle connection (`conn --conn-fanout`).
#[derive(Debug, Clone, Copy)]
pub struct Fanout {
    /// Connections that received it.
    pub received: u32,
    /// From its write to the last receipt (unknown when another client published it).
    pub seconds: Option<f64>,
    /// The last receipt's wall-clock time, Unix seconds.
    pub last_unix: Option<f64>,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn latency_json(h: &Histogram) -> Value {
    json!({
        "count": h.count(),
        "mean": us(h.mean() as u64),
        "p50": us(h.quantile(0.5)),
        "p90": us(h.quantile(0.9)),
        "p99": us(h.quantile(0.99)),
        "p999": us(h.quantile(0.999)),
        "max": us(h.max()),
    })
}

fn latency_text(h: &Histogram) -> String {
    if h.count() == 0 {
        return "none measured".to_string();
    }
    let f = |ns: u64| {
        if ns >= 10_000_000 {
            format!("{:.1} ms", ns as f64 / 1e6)
        } else {
            format!("{:.0} µs", us(ns))
        }
    };
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        f(h.quantile(0.5)),
        f(h.quantile(0.9)),
        f(h.quantile(0.99)),
        f(h.quantile(0.999)),
        f(h.max())
    )
}

impl Report {
    fn per_second(&self, n: u64) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 { n as f64 / secs } else { 0.0 }
    }

    fn connect_rate(&self) -> f64 {
        let secs = self.connect_time.as_secs_f64();
        if secs > 0.0 {
            f64::from(self.connections) / secs
        } else {
            0.0
        }
    }

    fn cpu(&self, pick: impl Fn(&Usage) -> Option<Duration>) -> Option<Duration> {
        let (start, end) = (self.start?, self.end?);
        Some(pick(&end)?.saturating_sub(pick(&start)?))
    }

    fn generator_cpu(&self) -> Option<Duration> {
        self.cpu(|u| Some(u.own_cpu))
    }

    fn broker_cpu(&self) -> Option<Duration> {
        self.cpu(|u| u.broker_cpu)
    }

    /// CPU time as a share of one core over the window.
    fn share(&self, cpu: Duration) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 {
            cpu.as_secs_f64() / secs * 100.0
        } else {
            0.0
        }
    }

    fn rss(&self) -> (Option<u64>, Option<u64>) {
        (
            self.start.and_then(|u| u.broker_rss_kib),
            self.end.and_then(|u| u.broker_rss_kib),
        )
    }

    fn kib_per_connection(&self) -> Option<f64> {
        let (Some(before), Some(after)) = self.rss() else {
            return None;
        };
        (self.connections > 0).then(|| (after as f64 - before as f64) / f64::from(self.connections))
    }

    fn broker_us_per_message(&self) -> Option<f64> {
        let cpu = self.broker_cpu()?;
        (self.delivered > 0).then(|| cpu.as_secs_f64() * 1e6 / self.delivered as f64)
    }

    /// One JSON object.
    pub fn to_json(&self, plan: &Plan) -> Value {
        let (rss_before, rss_after) = self.rss();
        let mut out = json!({
            "scenario": plan.scenario.name(),
            "mqtt_version": if plan.version.is_v5() { "5" } else { "3.1.1" },
            "qos": plan.qos as u8,
            "window_s": self.window.as_secs_f64(),
            "connections": {
                "count": self.connections,
                "seconds": self.connect_time.as_secs_f64(),
                "per_sec": self.connect_rate(),
                "started_unix": self.connect_started_unix,
                "up_unix": self
                    .connect_started_unix
                    .map(|t| t + self.connect_time.as_secs_f64()),
                "handshake_us": latency_json(&self.handshake),
            },
            "generator": {
                "cpu_s": self.generator_cpu().map(|d| d.as_secs_f64()),
                "cpu_pct": self.generator_cpu().map(|d| self.share(d)),
                "threads": plan.threads,
            },
            "broker": {
                "pid": plan.broker_pid,
                "cpu_s": self.broker_cpu().map(|d| d.as_secs_f64()),
                "cpu_pct": self.broker_cpu().map(|d| self.share(d)),
                "cpu_us_per_msg": self.broker_us_per_message(),
                "rss_kib_before": rss_before,
                "rss_kib_after": rss_after,
                "kib_per_conn": (plan.scenario == Scenario::Conn)
                    .then(|| self.kib_per_connection())
                    .flatten(),
            },
        });
        if plan.scenario != Scenario::Conn {
            let load = json!({
                "publishers": plan.publishers,
                "subscribers": plan.subscribers,
                "payload": plan.payload,
                "rate": plan.rate,
                "inflight": self.inflight,
                "sent": self.sent,
                "expected": self.expected,
                "delivered": self.delivered,
                "delivered_total": self.delivered_total,
                "delivered_per_sec": self.per_second(self.delivered),
                "latency_us": latency_json(&self.latency),
                "lost": self.lost,
                "duplicated": self.duplicated,
                "reordered": self.reordered,
                "unexpected": self.unexpected,
                "stalls": self.stalls,
            });
            if let (Value::Object(out), Value::Object(load)) = (&mut out, load) {
                out.extend(load);
            }
        } else if let Value::Object(out) = &mut out {
            out.insert("conn_subscribe".into(), plan.conn_subscribe.into());
            out.insert("conn_fanout".into(), plan.conn_fanout.into());
            if let Some(f) = self.fanout {
                out.insert(
                    "fanout".into(),
                    json!({
                        "received": f.received,
                        "seconds": f.seconds,
                        "last_unix": f.last_unix,
                    }),
                );
            }
        }
        out
    }

    /// The human report.
    pub fn to_text(&self, plan: &Plan) -> String {
        let mut t = String::new();
        let version = if plan.version.is_v5() {
            "MQTT 5"
        } else {
            "MQTT 3.1.1"
        };
        if plan.scenario == Scenario::Conn {
            let _ = writeln!(
                t,
                "conn: {} idle connections{}, {version}",
                plan.connections,
                if plan.conn_fanout {
                    " subscribed to one topic"
                } else if plan.conn_subscribe {
                    " with one subscription each"
                } else {
                    ""
                }
            );
        } else {
            let pace = if plan.rate > 0 {
                format!("{} msgs/s", plan.rate)
            } else {
                "as fast as sustainable".to_string()
            };
            let _ = writeln!(
                t,
                "{}: {} publishers -> {} subscribers, QoS {}, {version}, {}-byte payloads, {pace} \
                 (inflight {}), {:.1} s measured",
                plan.scenario.name(),
                plan.publishers,
                plan.subscribers,
                plan.qos as u8,
                plan.payload,
                self.inflight,
                self.window.as_secs_f64(),
            );
            let _ = writeln!(
                t,
                "delivered    {:.0} msgs/s ({} in the window; {} sent, {} delivered in all)",
                self.per_second(self.delivered),
                self.delivered,
                self.sent,
                self.delivered_total
            );
            let _ = writeln!(t, "latency      {}", latency_text(&self.latency));
            let _ = writeln!(
                t,
                "anomalies    lost {}  duplicated {}  reordered {}{}{}",
                self.lost,
                self.duplicated,
                self.reordered,
                if self.unexpected > 0 {
                    format!("  foreign {}", self.unexpected)
                } else {
                    String::new()
                },
                if self.stalls > 0 {
                    format!("  publisher stalls {}", self.stalls)
                } else {
                    String::new()
                }
            );
        }
        let _ = writeln!(
            t,
            "connections  {} in {:.2} s ({:.0}/s); handshake {}",
            self.connections,
            self.connect_time.as_secs_f64(),
            self.connect_rate(),
            latency_text(&self.handshake)
        );
        if let Some(f) = self.fanout {
            let _ = match f.seconds {
                Some(seconds) => writeln!(
                    t,
                    "fan-out      one message to {} of {} connections in {seconds:.3} s",
                    f.received, self.connections
                ),
                None => writeln!(
                    t,
                    "fan-out      another client's message reached {} of {} connections",
                    f.received, self.connections
                ),
            };
        }
        if let Some(cpu) = self.generator_cpu() {
            let share = self.share(cpu);
            let warning = if share > 90.0 * plan.threads as f64 {
                "  SATURATED: the figures may be the generator's limit"
            } else {
                ""
            };
            let _ = writeln!(
                t,
                "generator    CPU {:.2} s ({share:.0} % of a core){warning}",
                cpu.as_secs_f64()
            );
        }
        if let Some(pid) = plan.broker_pid {
            let mut line = format!("broker       pid {pid}:");
            if let Some(cpu) = self.broker_cpu() {
                let _ = write!(
                    line,
                    " CPU {:.2} s ({:.0} %)",
                    cpu.as_secs_f64(),
                    self.share(cpu)
                );
            }
            if let Some(per) = self.broker_us_per_message() {
                let _ = write!(line, ", {per:.2} µs per delivered message");
            }
            let (before, after) = self.rss();
            if let (Some(before), Some(after)) = (before, after) {
                let _ = write!(line, ", RSS {before} -> {after} KiB");
            }
            if plan.scenario == Scenario::Conn
                && let Some(per) = self.kib_per_connection()
            {
                let _ = write!(line, " ({per:.2} KiB per connection)");
            }
            let _ = writeln!(t, "{line}");
        }
        t
    }
}
