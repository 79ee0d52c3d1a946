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
    /// Connections refused at accept: their address had `limits.connections_per_ip` open.
    connections_refused_per_ip,
    /// Connections refused at accept: their address connected faster than
    /// `limits.connect_rate_per_ip` allows.
    connections_refused_rate,
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
