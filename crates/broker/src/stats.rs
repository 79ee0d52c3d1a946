//! Broker counters: the one source for `$SYS`, metrics and the management API.
//!
//! Connections count locally and add to these in batches (once per wake-up), so the hot
//! path does not contend on shared cache lines for every packet.

use std::cell::Cell;
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
    /// Connections refused at accept: their address had `limits.connections_per_ip` open.
    connections_refused_per_ip,
    /// Connections refused at accept: their address connected faster than
    /// `limits.connect_rate_per_ip` allows.
    connections_refused_rate,
    /// Times a listener went over to accepting on its own thread because a limit refused
    /// a connection (a connect flood), until a second passed without a refusal.
    connect_floods,
    /// CONNECTs refused (bad credentials, client id, protocol version, ...).
    connects_refused,
    /// Connections closed before MQTT began: TLS or WebSocket handshake failed or timed out.
    handshakes_failed,
    /// Sessions that ended by expiry.
    sessions_expired,
    /// Sessions that ended when their connection did, instead of being kept, because
    /// `limits.max_parked_sessions` sessions were already parked.
    sessions_not_parked,
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
    /// PUBLISH packets received at QoS 1 (QoS 0 is the rest of `publish_received`).
    publish_received_qos1,
    /// PUBLISH packets received at QoS 2.
    publish_received_qos2,
    /// PUBLISH packets sent at QoS 1 (QoS 0 is the rest of `publish_sent`).
    publish_sent_qos1,
    /// PUBLISH packets sent at QoS 2.
    publish_sent_qos2,
    /// Deliveries dropped because the message expired before it could be sent (part of
    /// `publish_dropped`).
    publish_dropped_expired,
    /// Deliveries dropped because they exceed the client's Maximum Packet Size (part of
    /// `publish_dropped`; the rest were dropped by full queues).
    publish_dropped_too_large,
    /// Sessions that began new at CONNECT (no stored session, or clean start).
    sessions_created,
    /// Sessions resumed at CONNECT (session present).
    sessions_resumed,
    /// CONNECTs refused with 0x86 (v3: 4), bad user name or password.
    connects_refused_credentials,
    /// CONNECTs refused with 0x87 (v3: 5), not authorized.
    connects_refused_not_authorized,
    /// CONNECTs refused with 0x9F, too many failed logins from the address.
    connects_refused_rate_limited,
    /// CONNECTs refused with 0x85 (v3: 2), client identifier not valid.
    connects_refused_client_id,
    /// CONNECTs refused with 0x88 or 0x89 (v3: 3), server unavailable or busy.
    connects_refused_unavailable,
    /// Gauge: QoS 1/2 deliveries in flight (sent, not yet acknowledged) on connected
    /// sessions, as of each connection's last wake-up.
    inflight,
    /// Gauge: bytes buffered by connections that have not completed CONNECT and
    /// authentication (read buffer capacity), bounded by `mqtt.max_pre_connect_bytes`.
    pre_connect_bytes,
    /// Highest value `pre_connect_bytes` has reached.
    pre_connect_bytes_maximum,
    /// Connections closed because their first packet was not CONNECT.
    pre_connect_dropped_not_connect,
    /// Connections closed because their CONNECT announced more than `mqtt.max_connect_size`.
    pre_connect_dropped_too_large,
    /// Connections closed because their partial CONNECT did not fit in
    /// `mqtt.max_pre_connect_bytes`.
    pre_connect_dropped_over_budget,
    /// Connections closed for sending no complete CONNECT within `mqtt.connect_timeout_secs`.
    pre_connect_dropped_timeout,
    /// Times a connection went over its publish rate (`limits.publish_rate_per_client`,
    /// `publish_bytes_per_client`) and was paused (`publish_rate_action = "throttle"`).
    publish_rate_throttled,
    /// Connections closed for going over their publish rate (`publish_rate_action =
    /// "disconnect"`).
    publish_rate_disconnected,
}

impl Stats {
    /// Adds a connection.
    pub fn client_connected(&self) {
        let now = self.clients_connected.fetch_add(1, Ordering::Relaxed) + 1;
        self.clients_maximum.fetch_max(now, Ordering::Relaxed);
    }

    /// Counts a refused CONNECT by its reason (v5 code; v3 refusals are mapped to one).
    pub fn connect_refused(&self, reason: midge_proto::ReasonCode) {
        use midge_proto::ReasonCode as R;
        Self::add(&self.connects_refused, 1);
        let by_reason = match reason {
            R::BAD_USER_NAME_OR_PASSWORD => &self.connects_refused_credentials,
            R::NOT_AUTHORIZED => &self.connects_refused_not_authorized,
            R::CONNECTION_RATE_EXCEEDED => &self.connects_refused_rate_limited,
            R::CLIENT_IDENTIFIER_NOT_VALID => &self.connects_refused_client_id,
            R::SERVER_UNAVAILABLE | R::SERVER_BUSY => &self.connects_refused_unavailable,
            _ => return,
        };
        Self::add(by_reason, 1);
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

/// Counts made by the connections a thread serves, flushed into [`Stats`] in one go
/// (once per wake-up of a connection, so the 32-bit counts cannot overflow).
///
/// They are kept per thread ([`LocalStats::count`]) rather than in every connection:
/// between its wake-ups a connection has flushed everything, so a field of its own would
/// be 64 zero bytes in every connection's task. What this asks of the code that counts:
/// a connection flushes ([`LocalStats::take`]) before anything it awaits, or sets the
/// counts aside across the await ([`LocalStats::kept_across`]), so that another
/// connection on the same thread does not take them as its own.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LocalStats {
    /// Bytes received.
    pub bytes_received: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Packets received.
    pub packets_received: u32,
    /// Packets sent.
    pub packets_sent: u32,
    /// PUBLISH received.
    pub publish_received: u32,
    /// PUBLISH sent.
    pub publish_sent: u32,
    /// Deliveries dropped: expired (also in `dropped_expired`) or too large for the client.
    pub publish_dropped: u32,
    /// PUBLISH denied.
    pub publish_denied: u32,
    /// PUBLISH received at QoS 1 and 2.
    pub received_qos: [u32; 2],
    /// PUBLISH sent at QoS 1 and 2.
    pub sent_qos: [u32; 2],
    /// Deliveries dropped because their message expired.
    pub dropped_expired: u32,
}

thread_local! {
    /// This thread's counts since the last [`LocalStats::take`].
    static PENDING: Cell<LocalStats> = const { Cell::new(LocalStats::ZERO) };
}

impl LocalStats {
    const ZERO: Self = Self {
        bytes_received: 0,
        bytes_sent: 0,
        packets_received: 0,
        packets_sent: 0,
        publish_received: 0,
        publish_sent: 0,
        publish_dropped: 0,
        publish_denied: 0,
        received_qos: [0; 2],
        sent_qos: [0; 2],
        dropped_expired: 0,
    };

    /// Changes this thread's pending counts.
    #[inline]
    pub fn count(change: impl FnOnce(&mut LocalStats)) {
        PENDING.with(|pending| {
            let mut counts = pending.get();
            change(&mut counts);
            pending.set(counts);
        });
    }

    /// This thread's pending counts, left pending.
    pub fn peek() -> Self {
        PENDING.with(Cell::get)
    }

    /// This thread's pending counts, which are then zero.
    pub fn take() -> Self {
        PENDING.with(|pending| pending.replace(Self::ZERO))
    }

    /// Awaits `future` with this thread's pending counts set aside, and puts them back on
    /// whichever thread it finishes: meanwhile the task may move, and other connections
    /// run and flush on this thread.
    pub async fn kept_across<F: std::future::Future>(future: F) -> F::Output {
        let kept = Self::take();
        let output = future.await;
        if kept != Self::ZERO {
            Self::count(|counts| counts.merge(&kept));
        }
        output
    }

    fn merge(&mut self, other: &Self) {
        self.bytes_received += other.bytes_received;
        self.bytes_sent += other.bytes_sent;
        self.packets_received += other.packets_received;
        self.packets_sent += other.packets_sent;
        self.publish_received += other.publish_received;
        self.publish_sent += other.publish_sent;
        self.publish_dropped += other.publish_dropped;
        self.publish_denied += other.publish_denied;
        self.received_qos[0] += other.received_qos[0];
        self.received_qos[1] += other.received_qos[1];
        self.sent_qos[0] += other.sent_qos[0];
        self.sent_qos[1] += other.sent_qos[1];
        self.dropped_expired += other.dropped_expired;
    }

    /// Counts a PUBLISH received at `qos`.
    pub fn received(&mut self, qos: midge_proto::QoS) {
        self.publish_received += 1;
        match qos {
            midge_proto::QoS::AtMostOnce => {}
            midge_proto::QoS::AtLeastOnce => self.received_qos[0] += 1,
            midge_proto::QoS::ExactlyOnce => self.received_qos[1] += 1,
        }
    }

    /// Counts a PUBLISH sent at `qos`.
    pub fn sent(&mut self, qos: midge_proto::QoS) {
        self.publish_sent += 1;
        match qos {
            midge_proto::QoS::AtMostOnce => {}
            midge_proto::QoS::AtLeastOnce => self.sent_qos[0] += 1,
            midge_proto::QoS::ExactlyOnce => self.sent_qos[1] += 1,
        }
    }

    /// Adds these counts to `stats`.
    pub fn flush(&self, stats: &Stats) {
        let add = |counter: &AtomicU64, n: u32| Stats::add(counter, u64::from(n));
        add(&stats.packets_received, self.packets_received);
        add(&stats.packets_sent, self.packets_sent);
        Stats::add(&stats.bytes_received, self.bytes_received);
        Stats::add(&stats.bytes_sent, self.bytes_sent);
        add(&stats.publish_received, self.publish_received);
        add(&stats.publish_sent, self.publish_sent);
        add(&stats.publish_dropped, self.publish_dropped);
        add(&stats.publish_denied, self.publish_denied);
        add(&stats.publish_received_qos1, self.received_qos[0]);
        add(&stats.publish_received_qos2, self.received_qos[1]);
        add(&stats.publish_sent_qos1, self.sent_qos[0]);
        add(&stats.publish_sent_qos2, self.sent_qos[1]);
        add(&stats.publish_dropped_expired, self.dropped_expired);
        add(
            &stats.publish_dropped_too_large,
            self.publish_dropped - self.dropped_expired,
        );
    }
}

/// Moves the in-flight gauge by a connection's change since it last reported:
/// `reported` is what it last added (kept by the connection), `now` its count now (0 as
/// it ends).
pub fn report_inflight(stats: &Stats, reported: &mut u32, now: usize) {
    let now = u32::try_from(now).unwrap_or(u32::MAX);
    if now > *reported {
        Stats::add(&stats.inflight, u64::from(now - *reported));
    } else if now < *reported {
        stats
            .inflight
            .fetch_sub(u64::from(*reported - now), Ordering::Relaxed);
    }
    *reported = now;
}

impl StatsSnapshot {
    /// CONNECTs accepted: sessions created plus sessions resumed.
    pub fn clients_connected_total(&self) -> u64 {
        self.sessions_created + self.sessions_resumed
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
    fn flushing_adds_the_counts_and_the_inflight_gauge_moves_by_the_change() {
        let stats = Stats::default();
        let mut reported = 0;
        report_inflight(&stats, &mut reported, 3);
        assert_eq!((stats.snapshot().inflight, reported), (3, 3));
        report_inflight(&stats, &mut reported, 1);
        assert_eq!(stats.snapshot().inflight, 1);
        LocalStats::take();
        LocalStats::count(|c| {
            c.sent(midge_proto::QoS::ExactlyOnce);
            c.publish_dropped = 2;
            c.dropped_expired = 1;
        });
        LocalStats::take().flush(&stats);
        report_inflight(&stats, &mut reported, 0);
        let s = stats.snapshot();
        assert_eq!((s.inflight, s.publish_sent, s.publish_sent_qos2), (0, 1, 1));
        assert_eq!(
            (s.publish_dropped_expired, s.publish_dropped_too_large),
            (1, 1)
        );
        assert_eq!(LocalStats::peek(), LocalStats::default(), "taken is zero");
    }

    /// Counts set aside across an await are not taken by another task flushing on the
    /// same thread meanwhile, and are back once the await is over.
    #[test]
    fn counts_kept_across_an_await_are_not_taken_by_another_task() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let gate = std::sync::Arc::new(tokio::sync::Notify::new());
        let (first, second) = runtime.block_on(async {
            let waiting = {
                let gate = gate.clone();
                tokio::spawn(async move {
                    LocalStats::count(|c| c.packets_received += 3);
                    LocalStats::kept_across(gate.notified()).await;
                    LocalStats::take()
                })
            };
            tokio::task::yield_now().await;
            // The other task is parked in `kept_across`: nothing of its is pending here.
            let other = tokio::spawn(async {
                LocalStats::count(|c| c.packets_sent += 1);
                LocalStats::take()
            })
            .await
            .unwrap();
            gate.notify_one();
            (other, waiting.await.unwrap())
        });
        assert_eq!((first.packets_sent, first.packets_received), (1, 0));
        assert_eq!((second.packets_sent, second.packets_received), (0, 3));
    }

    /// Many threads count and flush into one `Stats` at once: nothing is lost or counted
    /// twice.
    #[test]
    fn flushes_from_many_threads_add_up() {
        let stats = Stats::default();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for round in 0..10_000u64 {
                        LocalStats::count(|c| {
                            c.packets_received += 1;
                            c.bytes_received += round;
                        });
                        if round % 7 == 0 {
                            LocalStats::take().flush(&stats);
                        }
                    }
                    LocalStats::take().flush(&stats);
                });
            }
        });
        let s = stats.snapshot();
        assert_eq!(s.packets_received, 80_000);
        assert_eq!(s.bytes_received, 8 * (0..10_000u64).sum::<u64>());
    }

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
