//! The broker's shared context: configuration, router, retained store, session registry
//! and counters. Connections and background tasks hold it in an `Arc`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use midge_proto::Will;

use crate::config::Config;
use crate::mailbox::QueueLimits;
use crate::message::{Message, Millis};
use crate::registry::Registry;
use crate::retain::RetainedStore;
use crate::router::{RouteOutcome, Router};
use crate::stats::Stats;

/// See the module documentation.
#[derive(Debug)]
pub struct Broker {
    /// Configuration in force.
    pub config: Arc<Config>,
    /// Subscriptions and routing.
    pub router: Router,
    /// Retained messages.
    pub retained: RetainedStore,
    /// Sessions by client id.
    pub registry: Registry,
    /// Counters.
    pub stats: Stats,
    started: Instant,
    next_connection_id: AtomicU64,
}

impl Broker {
    /// A broker with nothing in it.
    pub fn new(config: Config) -> Arc<Self> {
        Arc::new(Self {
            router: Router::new(config.mqtt.shared_subscription_strategy),
            config: Arc::new(config),
            retained: RetainedStore::default(),
            registry: Registry::default(),
            stats: Stats::default(),
            started: Instant::now(),
            next_connection_id: AtomicU64::new(1),
        })
    }

    /// Seconds since start.
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// A process-unique id for a new connection.
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queue limits from the configuration.
    pub fn queue_limits(&self) -> QueueLimits {
        let m = &self.config.mqtt;
        QueueLimits {
            max_messages: m.max_queued_messages,
            max_bytes: m.max_queued_bytes,
            policy: m.queue_full_policy,
            queue_qos0_offline: m.queue_qos0_offline,
        }
    }

    /// Publishes a message: updates the retained store if it is retained, then routes it.
    pub fn publish(&self, message: Message) -> RouteOutcome {
        if message.retain && self.config.mqtt.retain_available {
            self.retained.update(&message);
        }
        let outcome = self.router.route(&Arc::new(message), &self.queue_limits());
        Stats::add(&self.stats.publish_dropped, outcome.dropped as u64);
        outcome
    }

    /// Publishes a client's will.
    pub fn publish_will(&self, client_id: &Arc<str>, will: Will, now: Millis) {
        tracing::debug!(client_id = %client_id, topic = %will.topic, "publishing will");
        Stats::add(&self.stats.wills_published, 1);
        self.publish(Message::from_will(will, client_id.clone(), now));
    }
}
