//! The broker's shared context: configuration, router, retained store, session registry
//! and counters. Connections and background tasks hold it in an `Arc`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use midge_proto::Will;

use crate::config::Config;
use crate::log_limit::LogLimiter;
use crate::mailbox::QueueLimits;
use crate::message::{Message, Millis};
use crate::registry::Registry;
use crate::retain::RetainedStore;
use crate::router::{RouteOutcome, Router};
use crate::stats::Stats;
use crate::store::{Journal, Recovered};

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
    /// Rate limits log lines about refused, malformed and failed connections per peer.
    pub log_limit: Arc<LogLimiter>,
    /// Where persistent sessions and retained messages are recorded; `None` keeps
    /// everything in memory only (unit tests).
    pub journal: Option<Journal>,
    started: Instant,
    next_connection_id: AtomicU64,
}

impl Broker {
    /// A broker with nothing in it that stores nothing.
    pub fn new(config: Config) -> Arc<Self> {
        Self::with_journal(config, None)
    }

    /// A broker with nothing in it that records persistent state through `journal`.
    pub fn with_journal(config: Config, journal: Option<Journal>) -> Arc<Self> {
        let log_limit = Arc::new(LogLimiter::new(&config.log));
        Arc::new(Self {
            router: Router::new(config.mqtt.shared_subscription_strategy),
            config: Arc::new(config),
            retained: RetainedStore::default(),
            registry: Registry::default(),
            stats: Stats::default(),
            log_limit,
            journal,
            started: Instant::now(),
            next_connection_id: AtomicU64::new(1),
        })
    }

    /// Puts back what the store held (before any listener opens): the retained tree, then
    /// the sessions with their subscriptions and queues; then ends sessions and publishes
    /// wills that fell due while the broker was down.
    pub fn restore(&self, recovered: Recovered, now: Millis) {
        let Some(journal) = &self.journal else {
            return;
        };
        let (retained, sessions) = (recovered.retained.len(), recovered.sessions.len());
        for message in recovered.retained {
            self.retained.update(&message);
        }
        for session in recovered.sessions {
            self.registry.restore(self, session, journal, now);
        }
        self.registry.tick(self, now);
        if retained + sessions > 0 || recovered.expired_messages > 0 {
            tracing::info!(
                store = %journal.location(),
                retained,
                sessions,
                expired_messages = recovered.expired_messages,
                "restored from the store"
            );
        }
    }

    /// Resolves once the store has committed everything recorded so far, when durability
    /// is `sync` (at once otherwise). The connection awaits it before writing.
    pub async fn store_settled(&self) {
        if let Some(journal) = &self.journal {
            journal.settled().await;
        }
    }

    /// Whether [`Broker::store_settled`] would resolve at once.
    pub fn store_is_settled(&self) -> bool {
        self.journal.as_ref().is_none_or(Journal::is_settled)
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
            let stored = self.retained.update(&message);
            if let Some(journal) = &self.journal {
                journal.retained(&message.topic, stored.as_ref());
            }
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
