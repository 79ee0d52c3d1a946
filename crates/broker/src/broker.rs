//! The broker's shared context: configuration, router, retained store, session registry
//! and counters. Connections and background tasks hold it in an `Arc`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use midge_proto::{SubscriptionOptions, Will};

use crate::config::{Config, MqttConfig, QueueFullPolicy};
use crate::log_limit::LogLimiter;
use crate::mailbox::Mailbox;
use crate::memory::MemoryBudget;
use crate::model::QueueLimits;
use crate::model::{Delivery, Message, Millis, Stage};
use crate::registry::{Attached, Effects, LocalOwnership, Ownership, Registry};
use crate::retain::{Retained, RetainedStore};
use crate::router::{RouteOutcome, Router, Routing};
use crate::session::{SessionEnv, SessionState};
use crate::stats::Stats;
use crate::store::{Journal, Recovered};

/// The implementations of the broker's seams: the in-process ones for a single node
/// ([`Broker::with_journal`]); a cluster would pass its own.
#[derive(Debug)]
pub struct Parts {
    /// Subscriptions and routing, with remote interest and forwarding in a cluster.
    pub router: Box<dyn Routing>,
    /// Retained messages, cluster-wide in a cluster.
    pub retained: Box<dyn Retained>,
    /// Who holds a client id, cluster-wide in a cluster.
    pub ownership: Box<dyn Ownership>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Broker {
    /// Configuration in force; see [`Broker::config`].
    config: ConfigCell,
    /// Subscriptions and routing: the seam for remote interest and forwarding.
    pub router: Box<dyn Routing>,
    /// Retained messages: the seam for cluster-wide retained.
    pub retained: Box<dyn Retained>,
    /// Sessions by client id.
    pub registry: Registry,
    /// Counters.
    pub stats: Stats,
    /// What client input holds in memory, against `limits.max_memory`.
    pub memory: Arc<MemoryBudget>,
    /// Rate limits log lines about refused, malformed and failed connections per peer.
    pub log_limit: Arc<LogLimiter>,
    /// Where persistent sessions and retained messages are recorded; `None` keeps
    /// everything in memory only (unit tests).
    pub journal: Option<Journal>,
    /// AMQP queues, shared by every AMQP listener (durable ones kept through `journal`).
    pub amqp: Arc<crate::amqp_queues::Queues>,
    started: Instant,
    next_connection_id: AtomicU64,
}

impl Broker {
    /// A broker with nothing in it that stores nothing.
    pub fn new(config: Config) -> Arc<Self> {
        Self::with_journal(config, None)
    }

    /// A broker with nothing in it that records persistent state through `journal`: the
    /// single node, with the in-process router, retained store and client-id ownership.
    pub fn with_journal(config: Config, journal: Option<Journal>) -> Arc<Self> {
        let memory = Arc::new(MemoryBudget::new(crate::memory::limit_for(&config.limits)));
        let parts = Parts {
            router: Box::new(Router::new(config.mqtt.shared_subscription_strategy)),
            retained: Box::new(RetainedStore::with_budget(memory.clone())),
            ownership: Box::new(LocalOwnership),
        };
        Self::assemble_with_budget(config, journal, parts, memory)
    }

    /// A broker built on the given implementations of its seams.
    pub fn assemble(config: Config, journal: Option<Journal>, parts: Parts) -> Arc<Self> {
        let memory = Arc::new(MemoryBudget::new(crate::memory::limit_for(&config.limits)));
        Self::assemble_with_budget(config, journal, parts, memory)
    }

    /// [`Broker::assemble`] with the budget the parts already count against.
    fn assemble_with_budget(
        config: Config,
        journal: Option<Journal>,
        parts: Parts,
        memory: Arc<MemoryBudget>,
    ) -> Arc<Self> {
        let log_limit = Arc::new(LogLimiter::new(&config.log));
        let registry =
            Registry::with_ownership(journal.clone(), parts.ownership).with_budget(memory.clone());
        registry.set_max_parked(config.limits.max_parked_sessions);
        let amqp = crate::amqp_queues::Queues::new(journal.clone(), Some(memory.clone()));
        Arc::new(Self {
            router: parts.router,
            config: ConfigCell::new(Arc::new(config)),
            retained: parts.retained,
            registry,
            stats: Stats::default(),
            memory,
            log_limit,
            amqp: Arc::new(amqp),
            journal,
            started: Instant::now(),
            next_connection_id: AtomicU64::new(1),
        })
    }

    /// Puts back what the store held (before any listener opens): the retained tree, then
    /// the sessions with their subscriptions and queues; then ends sessions and publishes
    /// wills that fell due while the broker was down.
    pub fn restore(&self, mut recovered: Recovered, now: Millis) {
        let Some(journal) = &self.journal else {
            return;
        };
        self.amqp
            .restore(self, std::mem::take(&mut recovered.amqp_queues));
        let (retained, sessions) = (recovered.retained.len(), recovered.sessions.len());
        for message in recovered.retained {
            self.retained.update(&message);
        }
        let limits = self.queue_limits();
        for session in recovered.sessions {
            let subscriptions = session.subscriptions.clone();
            let (mailbox, dropped) = self.registry.restore(session, journal, &limits, now);
            Stats::add(&self.stats.publish_dropped, dropped as u64);
            for (filter, record) in &subscriptions {
                self.router
                    .subscribe(&mailbox, filter, record.options, record.identifier);
            }
        }
        self.tick(now);
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

    /// The configuration in force. Taken once per new connection (or admin request), never
    /// per message: a connection keeps the `Arc` it was accepted with, so a reload changes
    /// what new connections get. What routing needs per message is read from atomics
    /// instead ([`Broker::queue_limits`]).
    pub fn config(&self) -> Arc<Config> {
        self.config
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts `config` in force (a reload): new connections take it; queue limits,
    /// `retain_available` and `limits.max_parked_sessions` apply from the next message or
    /// disconnect on.
    pub fn set_config(&self, config: Arc<Config>) {
        self.config.routing.set(&config);
        self.registry
            .set_max_parked(config.limits.max_parked_sessions);
        *self
            .config
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// The broker as the session of a connection accepted under `config` sees it.
    pub fn env<'a>(&'a self, config: &'a Config) -> ConnectionEnv<'a> {
        ConnectionEnv {
            broker: self,
            mqtt: &config.mqtt,
        }
    }

    /// Queue limits in force.
    pub fn queue_limits(&self) -> QueueLimits {
        self.config.routing.queue_limits()
    }

    /// Publishes a message: updates the retained store if it is retained, then routes it.
    /// The message counts in the memory budget from here until the last queue (or
    /// in-flight window) holding it lets go.
    pub fn publish(&self, mut message: Message) -> RouteOutcome {
        message.charge = crate::model::Charge::new(&self.memory, message.footprint());
        if message.retain && self.config.routing.retain_available.load(Ordering::Relaxed) {
            let stored = self.retained.update(&message);
            if let Some(journal) = &self.journal {
                journal.retained(&message.topic, stored.as_ref());
            }
        }
        let outcome = self.router.route(&Arc::new(message), &self.queue_limits());
        Stats::add(&self.stats.publish_dropped, outcome.dropped as u64);
        outcome
    }

    /// Attaches connection `connection_id` to `client_id` ([`Registry::attach`]), then
    /// ends the session it replaced and publishes that session's will.
    pub async fn attach(
        &self,
        client_id: Arc<str>,
        clean_start: bool,
        connection_id: u64,
        now: Millis,
    ) -> Attached {
        let (attached, effects) = self
            .registry
            .attach(&self.stats, client_id, clean_start, connection_id)
            .await;
        self.apply(effects, now);
        attached
    }

    /// A connection ended ([`Registry::detach`]): the session is parked or ends, and the
    /// will is published now or scheduled.
    pub fn detach(
        &self,
        connection_id: u64,
        state: SessionState,
        will: Option<(Will, u32)>,
        now: Millis,
    ) {
        let effects = self.registry.detach(connection_id, state, will, now);
        self.apply(effects, now);
    }

    /// Access rules changed (reload, dynamic security): MQTT and AMQP connections check
    /// their users and what was granted under the old rules.
    pub fn access_changed(&self) {
        self.registry.recheck_owners();
        self.amqp.access_changed();
    }

    /// Ends expired sessions and publishes delayed wills that are due ([`Registry::tick`]).
    pub fn tick(&self, now: Millis) {
        let effects = self.registry.tick(&self.stats, now);
        self.apply(effects, now);
        self.amqp.tick(self, now);
    }

    /// Disconnects a client for an administrator ([`Registry::kick`]) and carries out
    /// what that leaves to do (an offline session that ends, its will).
    pub fn kick(&self, client_id: &str, discard_session: bool) -> crate::registry::KickOutcome {
        let (outcome, effects) = self.registry.kick(client_id, discard_session);
        self.apply(effects, crate::model::now_millis());
        outcome
    }

    /// Carries out what the registry left to do, in its order.
    fn apply(&self, effects: Effects, now: Millis) {
        if effects.over_parked_limit > 0 {
            Stats::add(&self.stats.sessions_not_parked, effects.over_parked_limit);
            if let Some(state) = effects.ended.first() {
                tracing::warn!(client_id = %state.client_id, limit = self.config().limits.max_parked_sessions, "session ended at disconnect instead of being kept: limits.max_parked_sessions reached");
            }
        }
        for state in effects.ended {
            self.end_session(state);
        }
        for (client_id, will) in effects.wills {
            // A cluster publishes it once no other node can ([`Ownership::will_due`]).
            if let Some(will) = self.registry.will_due(&client_id, will) {
                self.publish_will(&client_id, will, now);
            }
        }
        if let Some(reply) = effects.release {
            let _ = reply.send(());
        }
    }

    /// A session ends: its subscriptions go, its mailbox closes, and messages it held for
    /// a shared subscription go to another member of the group [MQTT-4.8.2-?].
    fn end_session(&self, state: SessionState) {
        for filter in state.subscriptions.keys() {
            self.router.unsubscribe_mailbox(filter, &state.mailbox);
        }
        let limits = self.queue_limits();
        let queued = state.mailbox.close();
        let unacked = state
            .inflight
            .into_iter()
            .filter(|i| i.stage != Stage::AwaitPubComp)
            .map(|i| i.delivery);
        let shared: Vec<Delivery> = queued
            .into_iter()
            .chain(unacked)
            .filter(|d| d.shared.is_some() && d.qos != midge_proto::QoS::AtMostOnce)
            .collect();
        if !shared.is_empty() {
            self.router
                .hand_over_all(&shared, &state.client_id, &limits);
        }
    }

    /// Publishes a client's will.
    pub fn publish_will(&self, client_id: &Arc<str>, will: Will, now: Millis) {
        tracing::debug!(client_id = %client_id, topic = %will.topic, "publishing will");
        Stats::add(&self.stats.wills_published, 1);
        self.publish(Message::from_will(will, client_id.clone(), now));
    }
}

/// The configuration in force, swapped whole by a reload.
#[derive(Debug)]
struct ConfigCell {
    /// Read once per connection; written by a reload. A leaf lock: held for an `Arc`
    /// clone or swap.
    current: RwLock<Arc<Config>>,
    /// What [`SessionEnv::mqtt`] of the broker itself returns: a reference cannot come out
    /// of `current`. Only sessions driven with the broker as their environment (tests,
    /// in-process tools) see it; connections go through [`Broker::env`].
    initial: Arc<Config>,
    /// The settings routing reads per message, copied here at each swap.
    routing: RoutingSettings,
}

impl ConfigCell {
    fn new(config: Arc<Config>) -> Self {
        let routing = RoutingSettings::default();
        routing.set(&config);
        Self {
            current: RwLock::new(config.clone()),
            initial: config,
            routing,
        }
    }
}

/// `[mqtt]` settings every publish reads, as atomics: no lock on the message path. Each
/// is read on its own; a publish racing a reload may see some old and some new values,
/// each of which was valid.
#[derive(Debug, Default)]
struct RoutingSettings {
    max_queued_messages: AtomicUsize,
    max_queued_bytes: AtomicUsize,
    drop_oldest: AtomicBool,
    queue_qos0_offline: AtomicBool,
    retain_available: AtomicBool,
}

impl RoutingSettings {
    fn set(&self, config: &Config) {
        let m = &config.mqtt;
        let relaxed = Ordering::Relaxed;
        self.max_queued_messages
            .store(m.max_queued_messages, relaxed);
        self.max_queued_bytes.store(m.max_queued_bytes, relaxed);
        self.drop_oldest
            .store(m.queue_full_policy == QueueFullPolicy::DropOldest, relaxed);
        self.queue_qos0_offline.store(m.queue_qos0_offline, relaxed);
        self.retain_available.store(m.retain_available, relaxed);
    }

    fn queue_limits(&self) -> QueueLimits {
        let relaxed = Ordering::Relaxed;
        QueueLimits {
            max_messages: self.max_queued_messages.load(relaxed),
            max_bytes: self.max_queued_bytes.load(relaxed),
            policy: if self.drop_oldest.load(relaxed) {
                QueueFullPolicy::DropOldest
            } else {
                QueueFullPolicy::DropNew
            },
            queue_qos0_offline: self.queue_qos0_offline.load(relaxed),
        }
    }
}

/// The broker as one connection's session sees it ([`Broker::env`]): the `[mqtt]`
/// settings the connection was accepted under, everything else from the broker.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionEnv<'a> {
    broker: &'a Broker,
    mqtt: &'a MqttConfig,
}

impl SessionEnv for ConnectionEnv<'_> {
    fn mqtt(&self) -> &MqttConfig {
        self.mqtt
    }

    fn queue_limits(&self) -> QueueLimits {
        self.broker.queue_limits()
    }

    fn stats(&self) -> &Stats {
        &self.broker.stats
    }

    fn publish(&self, message: Message) -> usize {
        SessionEnv::publish(self.broker, message)
    }

    fn memory_pressure(&self) -> bool {
        SessionEnv::memory_pressure(self.broker)
    }

    fn refused_for_memory(&self) {
        SessionEnv::refused_for_memory(self.broker);
    }

    fn subscribe(
        &self,
        mailbox: &Arc<Mailbox>,
        filter: &str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) -> bool {
        SessionEnv::subscribe(self.broker, mailbox, filter, options, identifier)
    }

    fn unsubscribe(&self, filter: &str, client_id: &str) {
        SessionEnv::unsubscribe(self.broker, filter, client_id);
    }

    fn hand_over(&self, deliveries: &[Delivery], leaving: &str) -> Vec<bool> {
        SessionEnv::hand_over(self.broker, deliveries, leaving)
    }

    fn retained(&self, filter: &str, now: Millis) -> Vec<Arc<Message>> {
        SessionEnv::retained(self.broker, filter, now)
    }
}

/// The single node's answer to what a session asks: this process's router and retained
/// store. Connections use [`ConnectionEnv`], which differs only in [`SessionEnv::mqtt`].
impl crate::amqp_queues::QueueHost for Broker {
    fn routing(&self) -> &dyn Routing {
        &*self.router
    }

    fn queue_limits(&self) -> QueueLimits {
        Broker::queue_limits(self)
    }
}

impl SessionEnv for Broker {
    fn mqtt(&self) -> &MqttConfig {
        &self.config.initial.mqtt
    }

    fn queue_limits(&self) -> QueueLimits {
        Broker::queue_limits(self)
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn publish(&self, message: Message) -> usize {
        Broker::publish(self, message).delivered
    }

    fn memory_pressure(&self) -> bool {
        self.memory.pressure()
    }

    fn refused_for_memory(&self) {
        Stats::add(&self.memory.refused_publishes, 1);
    }

    fn subscribe(
        &self,
        mailbox: &Arc<Mailbox>,
        filter: &str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) -> bool {
        self.router.subscribe(mailbox, filter, options, identifier)
    }

    fn unsubscribe(&self, filter: &str, client_id: &str) {
        self.router.unsubscribe(filter, client_id);
    }

    fn hand_over(&self, deliveries: &[Delivery], leaving: &str) -> Vec<bool> {
        self.router
            .hand_over_all(deliveries, leaving, &self.queue_limits())
    }

    fn retained(&self, filter: &str, now: Millis) -> Vec<Arc<Message>> {
        self.retained.matching(filter, now)
    }
}

#[cfg(test)]
mod tests;
