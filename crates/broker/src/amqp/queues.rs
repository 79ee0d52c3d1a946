//! AMQP queues: each is a [`Mailbox`] that routing delivers to like any MQTT session's,
//! bound to `amq.topic` through router subscriptions with the mapped filters. Shared by
//! every AMQP listener of one server.
//!
//! A mailbox wakes one waiter; a queue's consumers may be on several connections, so each
//! queue has a relay task that turns the mailbox's wake-ups into a `Notify` every consuming
//! connection waits on. Whichever connection pops a message first delivers it.
//!
//! Locks: the table's lock and a queue's state lock are never held while calling the
//! router or a mailbox (see ARCHITECTURE.md, lock hierarchy).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use midge_proto::{QoS, SubscriptionOptions};
use tokio::sync::Notify;

use crate::broker::Broker;
use crate::mailbox::Mailbox;

/// The router names subscribers by client id; a queue's id starts with U+0000, which no
/// MQTT client id may contain [MQTT-1.5.4-2], so the two never collide.
const OWNER_PREFIX: &str = "\u{0}amqp-queue:";

/// One queue.
#[derive(Debug)]
pub struct Queue {
    /// Its name.
    pub name: Arc<str>,
    /// Where routing puts its messages.
    pub mailbox: Arc<Mailbox>,
    /// As declared (kept in memory only in this stage).
    pub durable: bool,
    /// The connection owning an exclusive queue.
    pub exclusive_owner: Option<u64>,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Woken when the queue gets messages after being empty (or gets some back).
    pub ready: Arc<Notify>,
    state: Mutex<QueueState>,
}

#[derive(Debug, Default)]
struct QueueState {
    /// Bound MQTT filters.
    bindings: BTreeSet<String>,
    consumers: usize,
    had_consumer: bool,
    /// Queue sequence numbers delivered once and put back.
    redelivered: HashSet<u64>,
    deleted: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Messages ready.
    pub fn message_count(&self) -> u32 {
        u32::try_from(self.mailbox.len()).unwrap_or(u32::MAX)
    }

    /// Consumers attached.
    pub fn consumer_count(&self) -> u32 {
        u32::try_from(self.lock().consumers).unwrap_or(u32::MAX)
    }

    /// Whether it was deleted.
    pub fn is_deleted(&self) -> bool {
        self.lock().deleted
    }

    /// Adds a consumer.
    pub fn add_consumer(&self) {
        let mut s = self.lock();
        s.consumers += 1;
        s.had_consumer = true;
    }

    /// Removes a consumer; true when the queue should now be auto-deleted.
    pub fn remove_consumer(&self) -> bool {
        let mut s = self.lock();
        s.consumers = s.consumers.saturating_sub(1);
        self.auto_delete && s.had_consumer && s.consumers == 0
    }

    /// Marks a queue sequence number as delivered before (it is being put back).
    pub fn mark_redelivered(&self, seq: u64) {
        self.lock().redelivered.insert(seq);
    }

    /// Whether `seq` was delivered before; forgets it (it is leaving the queue again).
    pub fn take_redelivered(&self, seq: u64) -> bool {
        self.lock().redelivered.remove(&seq)
    }
}

/// The queue table.
#[derive(Debug, Default)]
pub struct Queues {
    map: Mutex<HashMap<Arc<str>, Arc<Queue>>>,
    next_generated: AtomicU64,
}

/// What declaring did.
#[derive(Debug)]
pub enum Declared {
    /// The queue (new or existing).
    Queue(Arc<Queue>),
    /// Exists with other flags: the name of the first that differs.
    Inequivalent(&'static str),
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

    /// Finds or creates a queue.
    pub fn declare(&self, name: &str, flags: QueueFlags, connection: u64) -> Declared {
        let mut map = self.lock();
        if let Some(q) = map.get(name) {
            if q.exclusive_owner.is_some_and(|c| c != connection) {
                return Declared::Locked;
            }
            let differs = if q.durable != flags.durable {
                Some("durable")
            } else if q.exclusive_owner.is_some() != flags.exclusive {
                Some("exclusive")
            } else if q.auto_delete != flags.auto_delete {
                Some("auto_delete")
            } else {
                None
            };
            return match differs {
                Some(what) => Declared::Inequivalent(what),
                None => Declared::Queue(q.clone()),
            };
        }
        let name: Arc<str> = Arc::from(name);
        let mailbox = Mailbox::new(Arc::from(format!("{OWNER_PREFIX}{name}")));
        // A queue keeps what it is sent whether or not a consumer is attached.
        mailbox.set_online(true);
        let ready = Arc::new(Notify::new());
        let queue = Arc::new(Queue {
            name: name.clone(),
            mailbox: mailbox.clone(),
            durable: flags.durable,
            exclusive_owner: flags.exclusive.then_some(connection),
            auto_delete: flags.auto_delete,
            ready: ready.clone(),
            state: Mutex::default(),
        });
        map.insert(name, queue.clone());
        drop(map);
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
        Declared::Queue(queue)
    }

    /// Binds `queue` to `amq.topic` with an MQTT filter (a router subscription).
    pub fn bind(&self, broker: &Broker, queue: &Queue, filter: &str) {
        let fresh = queue.lock().bindings.insert(filter.to_owned());
        if fresh {
            let options = SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..SubscriptionOptions::default()
            };
            broker
                .router
                .subscribe(&queue.mailbox, filter, options, None);
        }
    }

    /// Removes a binding; false if there was none.
    pub fn unbind(&self, broker: &Broker, queue: &Queue, filter: &str) -> bool {
        let had = queue.lock().bindings.remove(filter);
        if had {
            broker.router.unsubscribe_mailbox(filter, &queue.mailbox);
        }
        had
    }

    /// Deletes a queue: its bindings go, its messages are dropped. Returns how many.
    pub fn delete(&self, broker: &Broker, queue: &Arc<Queue>) -> u32 {
        {
            let mut map = self.lock();
            if map.get(&queue.name).is_some_and(|q| Arc::ptr_eq(q, queue)) {
                map.remove(&queue.name);
            }
        }
        let bindings = {
            let mut s = queue.lock();
            s.deleted = true;
            std::mem::take(&mut s.bindings)
        };
        for filter in &bindings {
            broker.router.unsubscribe_mailbox(filter, &queue.mailbox);
        }
        let dropped = queue.mailbox.close().len();
        // Ends the relay task.
        queue.mailbox.wake_connection();
        u32::try_from(dropped).unwrap_or(u32::MAX)
    }

    /// Deletes the exclusive queues of a connection that ended.
    pub fn connection_closed(&self, broker: &Broker, connection: u64) {
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

    /// Number of queues.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when there is no queue.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
