//! AMQP queues: each is a [`Mailbox`] that routing delivers to like any MQTT session's,
//! bound to `amq.topic` through router subscriptions with the mapped filters. Shared by
//! every AMQP listener of one server (the table is the broker's).
//!
//! A mailbox wakes one waiter; a queue's consumers may be on several connections, so each
//! queue has a relay task that turns the mailbox's wake-ups into a `Notify` every consuming
//! connection waits on. Whichever connection pops a message first delivers it.
//!
//! A durable queue (not exclusive) is a stored session of its mailbox: its bindings are the
//! session's subscriptions and its persistent (QoS 1) messages the session's queue rows,
//! journaled by the mailbox as an MQTT session's are; a message leaves the store when it
//! is acknowledged (or dropped), not when it is delivered. The declaration is a row of its
//! own (`store::amqp`). Restored at start by [`Queues::restore`].
//!
//! Locks: the table's lock and a queue's state lock are never held while calling the
//! router or a mailbox (see ARCHITECTURE.md, lock hierarchy).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use midge_amqp_proto::FieldTable;
use midge_proto::{QoS, SubscriptionOptions};
use tokio::sync::Notify;

pub mod connections;
pub mod mapping;

use crate::auth::{AccessControl, FilterVerdict};
use crate::mailbox::{Mailbox, OwnLimits, Queued};
pub use crate::model::AMQP_QUEUE_OWNER_PREFIX as OWNER_PREFIX;
use crate::model::{Millis, QueueLimits, SubscriptionRecord, now_millis};
use crate::router::Routing;
use crate::store::{AmqpQueueRecord, Journal, RecoveredAmqpQueue};

/// What the queue table needs of the broker: its routing (bindings are subscriptions) and
/// the queue limits in force. `Broker` implements it, so the table, which the broker
/// holds, does not import the broker.
pub trait QueueHost {
    /// Routing, where bindings subscribe.
    fn routing(&self) -> &dyn Routing;
    /// Queue limits in force for a queue without its own.
    fn queue_limits(&self) -> QueueLimits;
}

impl<T: QueueHost> QueueHost for Arc<T> {
    fn routing(&self) -> &dyn Routing {
        (**self).routing()
    }

    fn queue_limits(&self) -> QueueLimits {
        (**self).queue_limits()
    }
}

/// Arguments RabbitMQ's clients commonly send that change nothing on a single node with
/// one queue type: accepted and ignored (`x-queue-mode` has no effect since RabbitMQ
/// 3.12; the locators choose a node; `x-queue-version` picks a storage format).
const IGNORED_ARGUMENTS: [&str; 4] = [
    "x-queue-mode",
    "x-queue-master-locator",
    "x-queue-leader-locator",
    "x-queue-version",
];

/// The `x-` arguments a queue honours, as declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueArgs {
    /// `x-message-ttl`: messages expire this many milliseconds after they were queued.
    pub message_ttl: Option<u64>,
    /// `x-expires`: the queue is deleted once unused this many milliseconds.
    pub expires: Option<u64>,
    /// `x-max-length`: most ready messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: most bytes of ready messages.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow = reject-publish` (else `drop-head`, RabbitMQ's default).
    pub reject_publish: bool,
}

fn invalid(name: &str, queue: &str, why: &str) -> String {
    format!("invalid arg '{name}' for queue '{queue}' in vhost '/': {why}")
}

impl QueueArgs {
    /// Reads `arguments` as RabbitMQ validates them. `Err`: the reply text of the 406
    /// PRECONDITION_FAILED channel error.
    pub fn parse(arguments: &FieldTable, queue: &str) -> Result<Self, String> {
        let mut args = Self::default();
        for (name, value) in &arguments.0 {
            let int = |min: i64| match value.as_i64() {
                Some(v) if v >= min => Ok(Some(v.unsigned_abs())),
                Some(v) => Err(invalid(
                    name,
                    queue,
                    &format!("{v} is below the least value, {min}"),
                )),
                None => Err(invalid(name, queue, "an integer is required")),
            };
            match name.as_str() {
                "x-message-ttl" => args.message_ttl = int(0)?,
                "x-expires" => args.expires = int(1)?,
                "x-max-length" => args.max_length = int(0)?,
                "x-max-length-bytes" => args.max_length_bytes = int(0)?,
                "x-overflow" => {
                    args.reject_publish = match value.as_str() {
                        Some("drop-head") => false,
                        Some("reject-publish") => true,
                        Some("reject-publish-dlx") => {
                            return Err(invalid(
                                name,
                                queue,
                                "'reject-publish-dlx' needs dead lettering, which midge does not do; use 'reject-publish' or 'drop-head'",
                            ));
                        }
                        _ => {
                            return Err(invalid(
                                name,
                                queue,
                                "expected 'drop-head' or 'reject-publish'",
                            ));
                        }
                    }
                }
                "x-queue-type" => match value.as_str() {
                    Some("classic") => {}
                    Some(kind) => {
                        return Err(invalid(
                            name,
                            queue,
                            &format!(
                                "queue type '{kind}' is not supported: midge's queues are classic queues"
                            ),
                        ));
                    }
                    None => return Err(invalid(name, queue, "a string is required")),
                },
                n if IGNORED_ARGUMENTS.contains(&n) => {}
                n if n.starts_with("x-") => {
                    return Err(invalid(
                        name,
                        queue,
                        "midge does not support this queue argument (it supports x-message-ttl, x-expires, x-max-length, x-max-length-bytes, x-overflow)",
                    ));
                }
                // RabbitMQ ignores arguments it does not know that are not `x-`.
                _ => {}
            }
        }
        Ok(args)
    }

    /// The first argument in which `self` (the queue's) and `declared` differ, with
    /// RabbitMQ's wording of the two values.
    fn differs(&self, declared: &Self) -> Option<(&'static str, String, String)> {
        let show = |v: Option<u64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
        let overflow = |r: bool| if r { "reject-publish" } else { "drop-head" }.to_owned();
        let pairs = [
            ("x-message-ttl", self.message_ttl, declared.message_ttl),
            ("x-expires", self.expires, declared.expires),
            ("x-max-length", self.max_length, declared.max_length),
            (
                "x-max-length-bytes",
                self.max_length_bytes,
                declared.max_length_bytes,
            ),
        ];
        for (name, current, received) in pairs {
            if current != received {
                return Some((name, show(received), show(current)));
            }
        }
        (self.reject_publish != declared.reject_publish).then(|| {
            (
                "x-overflow",
                overflow(declared.reject_publish),
                overflow(self.reject_publish),
            )
        })
    }

    fn own_limits(&self) -> Option<OwnLimits> {
        let size = |v: Option<u64>| v.map(|v| usize::try_from(v).unwrap_or(usize::MAX));
        (self.max_length.is_some() || self.max_length_bytes.is_some()).then(|| OwnLimits {
            max_messages: size(self.max_length),
            max_bytes: size(self.max_length_bytes),
            drop_head: !self.reject_publish,
        })
    }

    fn record(&self, auto_delete: bool) -> AmqpQueueRecord {
        AmqpQueueRecord {
            auto_delete,
            message_ttl: self.message_ttl,
            expires: self.expires,
            max_length: self.max_length,
            max_length_bytes: self.max_length_bytes,
            reject_publish: self.reject_publish,
        }
    }

    fn of_record(r: &AmqpQueueRecord) -> Self {
        Self {
            message_ttl: r.message_ttl,
            expires: r.expires,
            max_length: r.max_length,
            max_length_bytes: r.max_length_bytes,
            reject_publish: r.reject_publish,
        }
    }
}

/// One queue.
#[derive(Debug)]
pub struct Queue {
    /// Its name.
    pub name: Arc<str>,
    /// Where routing puts its messages.
    pub mailbox: Arc<Mailbox>,
    /// As declared.
    pub durable: bool,
    /// The connection owning an exclusive queue.
    pub exclusive_owner: Option<u64>,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Its `x-` arguments.
    pub args: QueueArgs,
    /// Woken when the queue gets messages after being empty (or gets some back).
    pub ready: Arc<Notify>,
    /// Whether it is kept in the store (durable, not exclusive, and the broker has one).
    stored: bool,
    /// When it was last used (declared, consumed from, got from), for `x-expires`.
    last_used: AtomicU64,
    state: Mutex<QueueState>,
}

#[derive(Debug, Default)]
struct QueueState {
    /// Bound MQTT filters.
    bindings: BTreeSet<String>,
    /// Who made each binding made since the start, to check it again when the rules
    /// change. Restored bindings have none: their binder is not stored.
    granted: HashMap<String, Grant>,
    consumers: usize,
    had_consumer: bool,
    /// Queue sequence numbers delivered once and put back.
    redelivered: HashSet<u64>,
    /// Delivered and not yet acknowledged.
    unacked: usize,
    deleted: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `queued` expired: its own expiry (`expiration`) or the queue's
    /// `x-message-ttl`, counted from when it was received.
    pub fn is_expired(&self, queued: &Queued, now: Millis) -> bool {
        let message = &queued.delivery.message;
        message.is_expired(now)
            || self
                .args
                .message_ttl
                .is_some_and(|ttl| message.received_at.saturating_add(ttl) <= now)
    }

    /// The next live message, dropping expired ones on the way (and from the store).
    pub fn pop_live(&self, now: Millis) -> Option<Queued> {
        let mut got = Vec::with_capacity(1);
        loop {
            self.mailbox.pop_queued(1, usize::MAX, &mut got);
            let queued = got.pop()?;
            if !self.is_expired(&queued, now) {
                return Some(queued);
            }
            self.forget(&queued);
        }
    }

    /// Drops the expired messages at the head, so counts leave them out (RabbitMQ drops
    /// them at the head as their time comes).
    pub fn drop_expired_head(&self, now: Millis) {
        if self.mailbox.is_empty() {
            return;
        }
        if let Some(live) = self.pop_live(now) {
            self.mailbox.unpop(vec![live]);
        }
    }

    /// A message taken from the queue left it for good (acknowledged, dropped).
    pub fn forget(&self, queued: &Queued) {
        self.lock().redelivered.remove(&queued.seq);
        if self.stored && queued.delivery.qos != QoS::AtMostOnce {
            self.mailbox.forget_stored(queued.seq);
        }
    }

    /// Messages ready (expired ones at the head left out).
    pub fn message_count(&self) -> u32 {
        self.drop_expired_head(now_millis());
        u32::try_from(self.mailbox.len()).unwrap_or(u32::MAX)
    }

    /// Messages delivered and not yet acknowledged.
    pub fn unacked_count(&self) -> u32 {
        u32::try_from(self.lock().unacked).unwrap_or(u32::MAX)
    }

    /// Consumers attached.
    pub fn consumer_count(&self) -> u32 {
        u32::try_from(self.lock().consumers).unwrap_or(u32::MAX)
    }

    /// Bound MQTT filters.
    pub fn bindings(&self) -> Vec<String> {
        self.lock().bindings.iter().cloned().collect()
    }

    /// Whether it was deleted.
    pub fn is_deleted(&self) -> bool {
        self.lock().deleted
    }

    /// Whether it is kept in the store across restarts.
    pub fn is_stored(&self) -> bool {
        self.stored
    }

    /// Marks it used now (for `x-expires`).
    pub fn touch(&self) {
        self.last_used.store(now_millis(), Ordering::Relaxed);
    }

    /// Adds a consumer.
    pub fn add_consumer(&self) {
        self.touch();
        let mut s = self.lock();
        s.consumers += 1;
        s.had_consumer = true;
    }

    /// Removes a consumer; true when the queue should now be auto-deleted.
    pub fn remove_consumer(&self) -> bool {
        self.touch();
        let mut s = self.lock();
        s.consumers = s.consumers.saturating_sub(1);
        self.auto_delete && s.had_consumer && s.consumers == 0
    }

    /// `n` more (or, negative, fewer) messages delivered and not yet acknowledged.
    pub fn add_unacked(&self, n: isize) {
        let mut s = self.lock();
        s.unacked = s.unacked.saturating_add_signed(n);
    }

    /// Marks a queue sequence number as delivered before (it is being put back).
    pub fn mark_redelivered(&self, seq: u64) {
        self.lock().redelivered.insert(seq);
    }

    /// Whether `seq` was delivered before; forgets it (it is leaving the queue again).
    pub fn take_redelivered(&self, seq: u64) -> bool {
        self.lock().redelivered.remove(&seq)
    }

    /// The queue as the admin API lists it: RabbitMQ's `list_queues` columns (messages =
    /// ready + unacknowledged) in the shape of a session's entry, with the declaration.
    pub fn describe(&self) -> serde_json::Value {
        let ready = self.message_count();
        let (unacked, consumers, bindings) = {
            let s = self.lock();
            (s.unacked, s.consumers, s.bindings.clone())
        };
        let keys: Vec<String> = bindings
            .iter()
            .map(|f| mapping::topic_to_routing_key(f).replace('+', "*"))
            .collect();
        let a = &self.args;
        let mut arguments = serde_json::Map::new();
        let mut put = |k: &str, v: Option<u64>| {
            if let Some(v) = v {
                arguments.insert(k.to_owned(), v.into());
            }
        };
        put("x-message-ttl", a.message_ttl);
        put("x-expires", a.expires);
        put("x-max-length", a.max_length);
        put("x-max-length-bytes", a.max_length_bytes);
        if a.reject_publish {
            arguments.insert("x-overflow".into(), "reject-publish".into());
        }
        serde_json::json!({
            "client_id": format!("amqp-queue:{}", self.name),
            "name": &*self.name,
            "protocol": "amqp",
            "online": consumers > 0,
            "messages": u64::from(ready) + unacked as u64,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
            "consumers": consumers,
            "subscriptions": bindings.len(),
            "expires_at_ms": null,
            "durable": self.durable,
            "exclusive": self.exclusive_owner.is_some(),
            "auto_delete": self.auto_delete,
            "arguments": arguments,
            "bindings": keys,
        })
    }

    /// Whether `x-expires` has run out: unused that long, with no consumer.
    fn is_unused_since(&self, now: Millis) -> bool {
        self.args.expires.is_some_and(|expires| {
            self.consumer_count() == 0
                && self
                    .last_used
                    .load(Ordering::Relaxed)
                    .saturating_add(expires)
                    <= now
        })
    }
}

/// Who a binding's read access was granted to, and by which listener's rules.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The binding connection's client id (`%c`).
    pub client_id: Arc<str>,
    /// Its user.
    pub username: Option<String>,
    /// Its listener's access control, which a reload updates in place.
    pub access: AccessControl,
}

/// The queue table.
#[derive(Debug, Default)]
pub struct Queues {
    map: Mutex<HashMap<Arc<str>, Arc<Queue>>>,
    next_generated: AtomicU64,
    /// The broker's store, where durable queues are kept.
    journal: Option<Journal>,
    /// Open AMQP connections (for the admin API and `$SYS`).
    pub connections: connections::Connections,
    /// Bumped when access rules changed (reload, dynamic security): connections check
    /// their user, the housekeeping task the bindings.
    access_changed: AccessChanged,
}

/// A counter with watchers.
#[derive(Debug)]
struct AccessChanged(tokio::sync::watch::Sender<u64>);

impl Default for AccessChanged {
    fn default() -> Self {
        Self(tokio::sync::watch::Sender::new(0))
    }
}

/// What declaring did.
#[derive(Debug)]
pub enum Declared {
    /// The queue (new or existing).
    Queue(Arc<Queue>),
    /// Exists with other flags or arguments: the reply text of the 406.
    Inequivalent(String),
    /// Exclusive to another connection.
    Locked,
}

/// How a queue is declared.
#[derive(Debug, Clone, Copy)]
pub struct QueueFlags {
    /// durable
    pub durable: bool,
    /// exclusive
    pub exclusive: bool,
    /// auto-delete
    pub auto_delete: bool,
}

impl Queues {
    /// A table whose durable queues are kept through `journal`.
    pub fn new(journal: Option<Journal>) -> Self {
        Self {
            journal,
            ..Self::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Queue>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh server-generated name, RabbitMQ's style.
    pub fn generate_name(&self) -> String {
        let n = self.next_generated.fetch_add(1, Ordering::Relaxed);
        format!("amq.gen-{:016x}-{n}", crate::model::now_millis())
    }

    /// The queue named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Queue>> {
        self.lock().get(name).cloned()
    }

    /// Every queue, by name.
    pub fn all(&self) -> Vec<Arc<Queue>> {
        let mut all: Vec<Arc<Queue>> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Finds or creates a queue.
    pub fn declare(
        &self,
        broker: &dyn QueueHost,
        name: &str,
        flags: QueueFlags,
        args: QueueArgs,
        connection: u64,
    ) -> Declared {
        let mut map = self.lock();
        if let Some(q) = map.get(name) {
            if q.exclusive_owner.is_some_and(|c| c != connection) {
                return Declared::Locked;
            }
            let flag = |what: &str, current: bool, received: bool| {
                format!(
                    "inequivalent arg '{what}' for queue '{name}' in vhost '/': received '{received}' but current is '{current}'"
                )
            };
            let differs = if q.durable != flags.durable {
                Some(flag("durable", q.durable, flags.durable))
            } else if q.exclusive_owner.is_some() != flags.exclusive {
                Some(flag(
                    "exclusive",
                    q.exclusive_owner.is_some(),
                    flags.exclusive,
                ))
            } else if q.auto_delete != flags.auto_delete {
                Some(flag("auto_delete", q.auto_delete, flags.auto_delete))
            } else {
                q.args.differs(&args).map(|(what, received, current)| {
                    format!(
                        "inequivalent arg '{what}' for queue '{name}' in vhost '/': received '{received}' but current is '{current}'"
                    )
                })
            };
            return match differs {
                Some(text) => Declared::Inequivalent(text),
                None => {
                    q.touch();
                    Declared::Queue(q.clone())
                }
            };
        }
        // The new mailbox is reached by nobody else until the table lock is released, so
        // taking its lock (and recording it) here closes no lock-order cycle; doing it under
        // the table lock keeps two declarations of one name from both creating it.
        let stored = flags.durable && !flags.exclusive && self.journal.is_some();
        let owner: Arc<str> = Arc::from(format!("{OWNER_PREFIX}{name}"));
        let mailbox = Mailbox::with_store(owner, self.journal.as_ref());
        if stored {
            // Never expires: the queue is deleted by queue.delete (or x-expires).
            mailbox.persist(u32::MAX);
            if let Some(journal) = &self.journal {
                journal.amqp_queue(name, Some(&args.record(flags.auto_delete)));
            }
        }
        let queue = Self::build(name, mailbox, flags, args, connection, stored);
        map.insert(queue.name.clone(), queue.clone());
        drop(map);
        Self::start(broker, &queue);
        Declared::Queue(queue)
    }

    fn build(
        name: &str,
        mailbox: Arc<Mailbox>,
        flags: QueueFlags,
        args: QueueArgs,
        connection: u64,
        stored: bool,
    ) -> Arc<Queue> {
        if let Some(own) = args.own_limits() {
            mailbox.set_own_limits(own);
        }
        // A queue keeps what it is sent whether or not a consumer is attached.
        mailbox.set_online(true);
        Arc::new(Queue {
            name: Arc::from(name),
            mailbox,
            durable: flags.durable,
            exclusive_owner: flags.exclusive.then_some(connection),
            auto_delete: flags.auto_delete,
            args,
            ready: Arc::new(Notify::new()),
            stored,
            last_used: AtomicU64::new(now_millis()),
            state: Mutex::default(),
        })
    }

    /// Starts the relay from the mailbox's wake-ups to the consumers' `Notify`.
    fn start(_broker: &dyn QueueHost, queue: &Arc<Queue>) {
        let mailbox = queue.mailbox.clone();
        let ready = queue.ready.clone();
        // The relay ends once the mailbox is closed (`delete` wakes it to see that).
        tokio::spawn(async move {
            loop {
                mailbox.notified().await;
                ready.notify_waiters();
                if mailbox.is_closed() {
                    return;
                }
            }
        });
    }

    /// Puts back the durable queues the store held (before any listener opens): each
    /// with its bindings and persistent messages, ready again. Messages that were
    /// delivered and not acknowledged before the stop cannot be told from ones never
    /// delivered, so all come back marked redelivered.
    pub fn restore(&self, broker: &dyn QueueHost, recovered: Vec<RecoveredAmqpQueue>) {
        let Some(journal) = self.journal.clone() else {
            return;
        };
        let mut restored = 0;
        for RecoveredAmqpQueue {
            name,
            record,
            session,
        } in recovered
        {
            let owner: Arc<str> = Arc::from(format!("{OWNER_PREFIX}{name}"));
            let Some(record) = record else {
                // Its declaration went (deleted while stopping): so does its session.
                if let Some(s) = session {
                    Mailbox::restored(owner, s.session, &journal, s.next_seq).close();
                }
                continue;
            };
            let args = QueueArgs::of_record(&record);
            let flags = QueueFlags {
                durable: true,
                exclusive: false,
                auto_delete: record.auto_delete,
            };
            let (mailbox, subscriptions, messages) = match session {
                Some(s) => (
                    Mailbox::restored(owner, s.session, &journal, s.next_seq),
                    s.subscriptions,
                    s.queue,
                ),
                None => {
                    let mailbox = Mailbox::with_store(owner, Some(&journal));
                    mailbox.persist(u32::MAX);
                    (mailbox, Vec::new(), Vec::new())
                }
            };
            let limits = match args.own_limits() {
                // They fitted when queued; limits lowered since drop the newest.
                Some(own) => QueueLimits {
                    max_messages: own.max_messages.unwrap_or(0),
                    max_bytes: own.max_bytes.unwrap_or(0),
                    ..broker.queue_limits()
                },
                None => broker.queue_limits(),
            };
            let seqs: Vec<u64> = messages.iter().map(|(seq, _)| *seq).collect();
            let dropped = mailbox.restore(messages, &limits);
            let queue = Self::build(&name, mailbox, flags, args, 0, true);
            {
                let mut s = queue.lock();
                s.redelivered.extend(seqs);
                s.bindings
                    .extend(subscriptions.iter().map(|(filter, _)| filter.clone()));
            }
            for (filter, record) in &subscriptions {
                broker
                    .routing()
                    .subscribe(&queue.mailbox, filter, record.options, None);
            }
            if dropped > 0 {
                tracing::warn!(queue = %name, dropped, "AMQP queue restored over its length limit: the newest messages were dropped");
            }
            self.lock().insert(queue.name.clone(), queue.clone());
            Self::start(broker, &queue);
            restored += 1;
        }
        if restored > 0 {
            tracing::info!(queues = restored, "restored durable AMQP queues");
        }
    }

    /// Binds `queue` to `amq.topic` with an MQTT filter (a router subscription).
    /// `grant`: whose read access allowed it, checked again when the rules change.
    pub fn bind(&self, broker: &dyn QueueHost, queue: &Queue, filter: &str, grant: Option<Grant>) {
        let fresh = {
            let mut s = queue.lock();
            // Deleted since the caller found it (its ACL check awaits in between).
            if s.deleted {
                return;
            }
            if let Some(grant) = grant {
                s.granted.insert(filter.to_owned(), grant);
            }
            s.bindings.insert(filter.to_owned())
        };
        if fresh {
            let options = SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..SubscriptionOptions::default()
            };
            if let Some(journal) = queue.mailbox.journal() {
                journal.subscribe(
                    filter,
                    SubscriptionRecord {
                        options,
                        identifier: None,
                    },
                );
            }
            broker
                .routing()
                .subscribe(&queue.mailbox, filter, options, None);
            // A delete between the insert above and this subscribe took the binding and
            // unsubscribed before there was anything to unsubscribe: undo it here.
            if queue.is_deleted() {
                broker.routing().unsubscribe_mailbox(filter, &queue.mailbox);
            }
        }
    }

    /// Removes a binding; false if there was none.
    pub fn unbind(&self, broker: &dyn QueueHost, queue: &Queue, filter: &str) -> bool {
        let had = {
            let mut s = queue.lock();
            s.granted.remove(filter);
            s.bindings.remove(filter)
        };
        Self::unsubscribe(broker, queue, filter, had)
    }

    /// Removes a binding if it is still the one `grant` made (not made again since by
    /// someone else, whose rights were not what was checked).
    fn revoke(&self, broker: &dyn QueueHost, queue: &Queue, filter: &str, grant: &Grant) -> bool {
        let had = {
            let mut s = queue.lock();
            let same = s
                .granted
                .get(filter)
                .is_some_and(|g| g.client_id == grant.client_id && g.username == grant.username);
            if same {
                s.granted.remove(filter);
            }
            same && s.bindings.remove(filter)
        };
        Self::unsubscribe(broker, queue, filter, had)
    }

    /// The store and the router forget a binding the queue dropped (`had`).
    fn unsubscribe(broker: &dyn QueueHost, queue: &Queue, filter: &str, had: bool) -> bool {
        if had {
            if let Some(journal) = queue.mailbox.journal() {
                journal.unsubscribe(filter);
            }
            broker.routing().unsubscribe_mailbox(filter, &queue.mailbox);
        }
        had
    }

    /// Deletes a queue: its bindings go, its messages are dropped (and its rows in the
    /// store). Returns how many messages it had ready.
    pub fn delete(&self, broker: &dyn QueueHost, queue: &Arc<Queue>) -> u32 {
        {
            let mut map = self.lock();
            if map.get(&queue.name).is_some_and(|q| Arc::ptr_eq(q, queue)) {
                map.remove(&queue.name);
            }
        }
        let bindings = {
            let mut s = queue.lock();
            s.deleted = true;
            s.granted.clear();
            std::mem::take(&mut s.bindings)
        };
        for filter in &bindings {
            broker.routing().unsubscribe_mailbox(filter, &queue.mailbox);
        }
        if queue.stored
            && let Some(journal) = &self.journal
        {
            journal.amqp_queue(&queue.name, None);
        }
        // Closing deletes the stored session (bindings and messages) too.
        let dropped = queue.mailbox.close().len();
        // Ends the relay task.
        queue.mailbox.wake_connection();
        u32::try_from(dropped).unwrap_or(u32::MAX)
    }

    /// Deletes the exclusive queues of a connection that ended.
    pub fn connection_closed(&self, broker: &dyn QueueHost, connection: u64) {
        let owned: Vec<Arc<Queue>> = self
            .lock()
            .values()
            .filter(|q| q.exclusive_owner == Some(connection))
            .cloned()
            .collect();
        for q in owned {
            self.delete(broker, &q);
        }
    }

    /// Access rules changed: connections check their users again, and
    /// [`Queues::recheck_bindings`] runs.
    pub fn access_changed(&self) {
        self.access_changed
            .0
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Tells of [`Queues::access_changed`].
    pub fn watch_access(&self) -> tokio::sync::watch::Receiver<u64> {
        self.access_changed.0.subscribe()
    }

    /// Checks every binding made since the start against its binder's rules as they are
    /// now, as MQTT subscriptions are checked after a reload: one whose read access is no
    /// longer whole is removed, and the ready messages it brought that no remaining
    /// binding matches are dropped (those of the default exchange stay). Returns how many
    /// bindings went.
    pub async fn recheck_bindings(&self, broker: &(dyn QueueHost + Sync)) -> usize {
        let all: Vec<Arc<Queue>> = self.lock().values().cloned().collect();
        let mut removed = 0;
        for queue in all {
            let grants: Vec<(String, Grant)> = queue
                .lock()
                .granted
                .iter()
                .map(|(f, g)| (f.clone(), g.clone()))
                .collect();
            let mut dropped = false;
            for (filter, grant) in grants {
                if !grant.access.checks_topics() {
                    continue;
                }
                let verdict = grant
                    .access
                    .authorize_subscribe(&grant.client_id, grant.username.as_deref(), &filter)
                    .await;
                // Partly is refused at bind time too (no per-delivery check on queues).
                if verdict != FilterVerdict::Allowed {
                    tracing::info!(queue = %queue.name, %filter, user = ?grant.username, "AMQP binding removed: read access no longer granted");
                    if self.revoke(broker, &queue, &filter, &grant) {
                        dropped = true;
                        removed += 1;
                    }
                }
            }
            if dropped {
                let filters = queue.bindings();
                queue.mailbox.retain_deliveries(|d| {
                    d.message.topic.is_empty()
                        || filters
                            .iter()
                            .any(|f| midge_proto::topic::matches(f, &d.message.topic))
                });
            }
        }
        removed
    }

    /// Housekeeping: deletes queues unused for their `x-expires`, and drops expired
    /// messages at the heads of queues with `x-message-ttl`.
    pub fn tick(&self, broker: &dyn QueueHost, now: Millis) {
        let all: Vec<Arc<Queue>> = self.lock().values().cloned().collect();
        for q in all {
            if q.is_unused_since(now) {
                tracing::debug!(queue = %q.name, "AMQP queue unused for its x-expires: deleted");
                self.delete(broker, &q);
            } else if q.args.message_ttl.is_some() {
                q.drop_expired_head(now);
            }
        }
    }

    /// Number of queues.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when there is no queue.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{QueueFullPolicy, ShareStrategyConfig};
    use crate::router::Router;
    use midge_amqp_proto::FieldValue;

    /// The broker as the queue table sees it: a router and queue limits.
    struct Host {
        router: Router,
        amqp: Queues,
    }

    impl QueueHost for Host {
        fn routing(&self) -> &dyn Routing {
            &self.router
        }

        fn queue_limits(&self) -> QueueLimits {
            QueueLimits {
                max_messages: 1000,
                max_bytes: 0,
                policy: QueueFullPolicy::DropNew,
                queue_qos0_offline: true,
            }
        }
    }

    fn host() -> Arc<Host> {
        Arc::new(Host {
            router: Router::new(ShareStrategyConfig::RoundRobin),
            amqp: Queues::new(None),
        })
    }

    fn table(fields: &[(&str, FieldValue)]) -> FieldTable {
        FieldTable(
            fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn arguments_are_validated_as_rabbitmq_does() {
        let args = QueueArgs::parse(
            &table(&[
                ("x-message-ttl", FieldValue::I32(500)),
                ("x-expires", FieldValue::I64(60_000)),
                ("x-max-length", FieldValue::U8(3)),
                ("x-max-length-bytes", FieldValue::U32(1000)),
                ("x-overflow", FieldValue::string("reject-publish")),
                ("x-queue-type", FieldValue::string("classic")),
                ("x-queue-mode", FieldValue::string("lazy")),
                ("not-x", FieldValue::Bool(true)),
            ]),
            "q",
        )
        .unwrap();
        assert_eq!(
            args,
            QueueArgs {
                message_ttl: Some(500),
                expires: Some(60_000),
                max_length: Some(3),
                max_length_bytes: Some(1000),
                reject_publish: true,
            }
        );
        for bad in [
            ("x-message-ttl", FieldValue::I32(-1)),
            ("x-expires", FieldValue::I32(0)),
            ("x-max-length", FieldValue::string("3")),
            ("x-overflow", FieldValue::string("drop-tail")),
            ("x-overflow", FieldValue::string("reject-publish-dlx")),
            ("x-queue-type", FieldValue::string("quorum")),
            ("x-queue-type", FieldValue::string("stream")),
            ("x-dead-letter-exchange", FieldValue::string("dlx")),
            ("x-max-priority", FieldValue::I32(10)),
        ] {
            let name = bad.0;
            let text = QueueArgs::parse(&table(&[bad]), "q").unwrap_err();
            assert!(
                text.starts_with(&format!("invalid arg '{name}' for queue 'q'")),
                "{text}"
            );
        }
    }

    /// Bindings made and removed from many threads while the housekeeping task checks
    /// them again under rules that deny one filter: at the end, after a last check, no
    /// denied binding is left and the router holds exactly the queues' bindings.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_binds_and_rechecks_leave_only_allowed_bindings() {
        let dir = tempfile::tempdir().unwrap();
        let acl = dir.path().join("acl");
        std::fs::write(&acl, "user a\ntopic read t/0\ntopic read t/1\n").unwrap();
        let mut config = crate::config::Config::default();
        config.auth.acl_file = Some(acl);
        let access = AccessControl::for_listener(
            &config,
            &crate::config::ListenerConfig::default(),
            crate::auth::LoginGuard::new(&config, Default::default()),
        )
        .unwrap();
        let broker = host();
        let binders: Vec<_> = (0..6u64)
            .map(|t| {
                let (broker, access) = (broker.clone(), access.clone());
                tokio::task::spawn_blocking(move || {
                    let queues = &broker.amqp;
                    let flags = QueueFlags {
                        durable: false,
                        exclusive: false,
                        auto_delete: false,
                    };
                    for i in 0..500u64 {
                        let name = format!("q{}", (t + i) % 4);
                        let Declared::Queue(q) =
                            queues.declare(&broker, &name, flags, QueueArgs::default(), t)
                        else {
                            panic!("same flags and arguments: declared");
                        };
                        let grant = Grant {
                            client_id: Arc::from(format!("amqp-{t}")),
                            username: Some("a".to_owned()),
                            access: access.clone(),
                        };
                        let filter = format!("t/{}", i % 3);
                        queues.bind(&broker, &q, &filter, Some(grant));
                        if i % 7 == t % 7 {
                            queues.delete(&broker, &q);
                        } else if i % 5 == 0 {
                            queues.unbind(&broker, &q, &filter);
                        }
                    }
                })
            })
            .collect();
        let checker = {
            let broker = broker.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    broker.amqp.recheck_bindings(&*broker).await;
                    tokio::task::yield_now().await;
                }
            })
        };
        for task in binders {
            task.await.unwrap();
        }
        checker.await.unwrap();
        broker.amqp.recheck_bindings(&*broker).await;
        let live = broker.amqp.all();
        assert!(!live.is_empty());
        assert!(
            live.iter()
                .all(|q| !q.bindings().contains(&"t/2".to_owned())),
            "a denied binding survived the check"
        );
        let bindings: usize = live.iter().map(|q| q.bindings().len()).sum();
        assert_eq!(broker.router.len(), bindings);
    }

    /// Declarations, bindings and deletions of the same few queues from many threads at
    /// once leave the table and the router agreeing: every queue in the table is live,
    /// and the router holds exactly the bindings of the queues in the table.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_declares_binds_and_deletes_stay_consistent() {
        let broker = host();
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let broker = broker.clone();
                tokio::task::spawn_blocking(move || {
                    let queues = &broker.amqp;
                    let flags = QueueFlags {
                        durable: false,
                        exclusive: false,
                        auto_delete: false,
                    };
                    for i in 0..1000 {
                        let name = format!("q{}", (t + i) % 5);
                        let Declared::Queue(q) =
                            queues.declare(&broker, &name, flags, QueueArgs::default(), t)
                        else {
                            panic!("same flags and arguments: declared");
                        };
                        queues.bind(&broker, &q, &format!("t/{}", i % 3), None);
                        if i % 4 == t % 4 {
                            queues.delete(&broker, &q);
                        } else if i % 5 == 0 {
                            queues.unbind(&broker, &q, &format!("t/{}", i % 3));
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let live = broker.amqp.all();
        assert!(live.iter().all(|q| !q.is_deleted()));
        let bindings: usize = live.iter().map(|q| q.bindings().len()).sum();
        assert_eq!(broker.router.len(), bindings);
    }

    /// A connection that found a queue, then awaited its ACL check while another deleted
    /// the queue, binds a deleted queue: nothing may be left subscribed for it.
    #[tokio::test]
    async fn binding_a_queue_deleted_meanwhile_leaves_no_subscription() {
        let broker = host();
        let flags = QueueFlags {
            durable: false,
            exclusive: false,
            auto_delete: false,
        };
        let Declared::Queue(q) =
            broker
                .amqp
                .declare(&broker, "gone", flags, QueueArgs::default(), 1)
        else {
            panic!("declared");
        };
        broker.amqp.delete(&broker, &q);
        broker.amqp.bind(&broker, &q, "t/#", None);
        assert_eq!(broker.router.len(), 0);
        assert!(q.bindings().is_empty());
    }

    #[test]
    fn differences_name_the_argument_and_both_values() {
        let current = QueueArgs {
            message_ttl: Some(1000),
            ..QueueArgs::default()
        };
        assert_eq!(current.differs(&current), None);
        assert_eq!(
            current.differs(&QueueArgs::default()),
            Some(("x-message-ttl", "none".to_owned(), "1000".to_owned()))
        );
        let reject = QueueArgs {
            reject_publish: true,
            ..current
        };
        assert_eq!(
            current.differs(&reject),
            Some((
                "x-overflow",
                "reject-publish".to_owned(),
                "drop-head".to_owned()
            ))
        );
    }
}
