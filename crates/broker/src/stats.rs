//! Broker counters: the one source for `$SYS`, metrics and the management API.
//!
//! Connections count locally and add to these in batches (once per wake-up), so the hot
//! path does not contend on shared cache lines for every packet.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// See the module documentation. Every field is monotonic unless it says gauge.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A snapshot of [`Stats`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Stats {
            /// Reads every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Gauge: connections that completed CONNECT and are open.
    clients_connected,
    /// Highest value `clients_connected` has reached.
    clients_maximum,
    /// TCP connections accepted.
    connections_accepted,
    /// Connections refused at accept because of `max_connections`.
    connections_refused,
    /// CONNECTs refused (bad credentials, client id, protocol version, ...).
    connects_refused,
    /// Connections closed before MQTT began: TLS or WebSocket handshake failed or timed out.
    handshakes_failed,
    /// Sessions that ended by expiry.
    sessions_expired,
    /// Sessions taken over by a new connection with the same client id.
    sessions_taken_over,
    /// MQTT packets received.
    packets_received,
    /// MQTT packets sent.
    packets_sent,
    /// Bytes received.
    bytes_received,
    /// Bytes sent.
    bytes_sent,
    /// PUBLISH packets received.
    publish_received,
    /// PUBLISH packets sent.
    publish_sent,
    /// Deliveries dropped: full queues, offline QoS 0, oversize for the client, expired.
    publish_dropped,
    /// PUBLISH packets refused by authorization.
    publish_denied,
    /// Retained messages not sent at SUBSCRIBE because the session's queue limits
    /// (`max_queued_messages`, `max_queued_bytes`) were reached.
    retained_dropped,
    /// Connections closed for malformed or protocol-violating input.
    protocol_errors,
    /// Wills published.
    wills_published,
}

impl Stats {
    /// Adds a connection.
    pub fn client_connected(&self) {
        let now = self.clients_connected.fetch_add(1, Ordering::Relaxed) + 1;
        self.clients_maximum.fetch_max(now, Ordering::Relaxed);
    }

    /// Removes a connection.
    pub fn client_disconnected(&self) {
        self.clients_connected.fetch_sub(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Per-connection counts, flushed into [`Stats`] in one go.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalStats {
    /// Packets received.
    pub packets_received: u64,
    /// Packets sent.
    pub packets_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// PUBLISH received.
    pub publish_received: u64,
    /// PUBLISH sent.
    pub publish_sent: u64,
    /// Deliveries dropped.
    pub publish_dropped: u64,
    /// PUBLISH denied.
    pub publish_denied: u64,
}

impl LocalStats {
    /// Adds these counts to `stats` and resets them.
    pub fn flush(&mut self, stats: &Stats) {
        Stats::add(&stats.packets_received, self.packets_received);
        Stats::add(&stats.packets_sent, self.packets_sent);
        Stats::add(&stats.bytes_received, self.bytes_received);
        Stats::add(&stats.bytes_sent, self.bytes_sent);
        Stats::add(&stats.publish_received, self.publish_received);
        Stats::add(&stats.publish_sent, self.publish_sent);
        Stats::add(&stats.publish_dropped, self.publish_dropped);
        Stats::add(&stats.publish_denied, self.publish_denied);
        *self = Self::default();
    }
}

/// Upper bounds (seconds) of [`Histogram`] buckets: 100 µs to 10 s, enough for a store
/// commit (fsync) and a password hash.
pub const HISTOGRAM_BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

/// A duration histogram with fixed buckets ([`HISTOGRAM_BOUNDS`]); lock-free, so the
/// timed code never waits for a scrape.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is above every bound.
    buckets: [AtomicU64; HISTOGRAM_BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

/// A snapshot of a [`Histogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Sum of the observations, in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// `(upper bound, observations in this bucket)` (not cumulative); the last bound is
    /// infinity.
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, elapsed: std::time::Duration) {
        let secs = elapsed.as_secs_f64();
        let index = HISTOGRAM_BOUNDS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(HISTOGRAM_BOUNDS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads the histogram. Read while observations land, the count and the buckets may
    /// disagree by the few in flight; the count is taken as the total of the buckets so
    /// that the `+Inf` bucket always equals it.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let bounds = HISTOGRAM_BOUNDS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(&self.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        HistogramSnapshot {
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
        }
    }
}

/// Logins checked by the password file or the HTTP service, shared by every listener
/// (held by the `LoginGuard`); the admin listener counts its logins here too.
#[derive(Debug, Default)]
pub struct AuthStats {
    /// Credentials accepted.
    pub success: AtomicU64,
    /// Credentials refused (wrong password, unknown user).
    pub failure: AtomicU64,
    /// Refused without checking: too many failed logins from the address.
    pub rate_limited: AtomicU64,
    /// The HTTP service did not answer.
    pub error: AtomicU64,
    /// Time spent checking credentials (password hash or HTTP round trip).
    pub duration: Histogram,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn histogram_observations_land_in_their_bucket() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.0001, 1));
        // 3 ms lands in the 5 ms bucket, 20 s above every bound.
        let five_ms = s.buckets.iter().find(|(b, _)| *b == 0.005).unwrap();
        assert_eq!(five_ms.1, 1);
        assert_eq!(s.buckets.last().unwrap(), &(f64::INFINITY, 1));
        assert_eq!(s.buckets.iter().map(|(_, n)| n).sum::<u64>(), 3);
        assert!((s.sum - 20.00305).abs() < 1e-9);
    }
}
