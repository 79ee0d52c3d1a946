//! Routing: which sessions get a message, and with which QoS, flags and identifiers.
//!
//! The trie's read lock is held only to collect targets; pushing onto mailboxes happens
//! after it is released, so a slow or contended mailbox never blocks subscribes.
//!
//! The broker routes through [`Routing`], the seam for remote interest and forwarding;
//! [`Router`] is the single node's implementation. Deliveries go to each subscriber's
//! [`Inbox`].

mod snapshot;
mod trie;

use std::cell::OnceCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use midge_proto::{QoS, SubscriptionOptions};

use crate::config::ShareStrategyConfig;
use crate::mailbox::{Copies, Inbox, Mailbox, PushOutcome, ToDeliver};
use crate::model::QueueLimits;
use crate::model::{Delivery, Message};
use snapshot::{Snapshot, Subscriber, Takers};
pub use trie::Reach;
use trie::{Matches, ShareStrategy, Target, Trie};

/// Subscriptions and routing as the broker uses them: the seam where a cluster adds
/// remote interest and forwarding. Every change of local interest passes through
/// `subscribe` / `unsubscribe` / `unsubscribe_mailbox` (a cluster implementation tells the
/// other nodes which filters this node wants, and keeps theirs); every publish made here
/// passes through `route` (forwarded to the nodes whose interest matches), and a publish
/// received from another node enters through `route` too (delivered locally only).
/// [`Router`] is the single node's: the local trie alone.
pub trait Routing: Send + Sync + fmt::Debug {
    /// Adds or replaces `mailbox`'s subscription to a validated filter (which may be a
    /// `$share/` filter). Returns true if the subscription already existed.
    fn subscribe(
        &self,
        mailbox: &Arc<Mailbox>,
        filter: &str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) -> bool;

    /// Removes `client_id`'s subscription to `filter`; returns true if it existed.
    fn unsubscribe(&self, filter: &str, client_id: &str) -> bool;

    /// Removes a subscription only if it still points at `mailbox`.
    fn unsubscribe_mailbox(&self, filter: &str, mailbox: &Arc<Mailbox>) -> bool;

    /// Queues `message` for every matching subscriber.
    fn route(&self, message: &Arc<Message>, limits: &QueueLimits) -> RouteOutcome;

    /// Hands deliveries taken from a member that left their shared groups to other
    /// members. Returns, for each delivery, whether another member took it. Called with no
    /// mailbox lock held.
    fn hand_over_all(
        &self,
        deliveries: &[Delivery],
        leaving: &str,
        limits: &QueueLimits,
    ) -> Vec<bool>;

    /// One compaction sweep of the queues that are behind ([`Router::compact`]).
    fn compact(&self) -> usize;

    /// Number of subscriptions.
    fn len(&self) -> usize;

    /// True when there are no subscriptions.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `limit` subscriptions after `after` (filter, client id) that `keep` accepts,
    /// in filter then client id order, for the admin API ([`Router::subscriptions_page`]).
    fn subscriptions_page(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
        keep: &mut dyn FnMut(&str, &str) -> bool,
    ) -> Vec<SubscriptionSummary>;
}

impl Routing for Router {
    fn subscriptions_page(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
        keep: &mut dyn FnMut(&str, &str) -> bool,
    ) -> Vec<SubscriptionSummary> {
        Router::subscriptions_page(self, after, limit, keep)
    }

    fn subscribe(
        &self,
        mailbox: &Arc<Mailbox>,
        filter: &str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) -> bool {
        Router::subscribe(self, mailbox, filter, options, identifier)
    }

    fn unsubscribe(&self, filter: &str, client_id: &str) -> bool {
        Router::unsubscribe(self, filter, client_id)
    }

    fn unsubscribe_mailbox(&self, filter: &str, mailbox: &Arc<Mailbox>) -> bool {
        Router::unsubscribe_mailbox(self, filter, mailbox)
    }

    fn route(&self, message: &Arc<Message>, limits: &QueueLimits) -> RouteOutcome {
        Router::route(self, message, limits)
    }

    fn hand_over_all(
        &self,
        deliveries: &[Delivery],
        leaving: &str,
        limits: &QueueLimits,
    ) -> Vec<bool> {
        Router::hand_over_all(self, deliveries, leaving, limits)
    }

    fn compact(&self) -> usize {
        Router::compact(self)
    }

    fn len(&self) -> usize {
        Router::len(self)
    }
}

/// A subscriber with this many deliveries queued is behind: routing lists its queue for
/// compaction ([`Router::compact`]), whose sweeps copy the messages that wait there through
/// a whole sweep interval. A subscriber keeping up holds a whole read's worth of a
/// publisher's messages for a moment all the time under load, and copying those as they
/// are routed would cost the fast path an allocation and a copy per message; so only what
/// really waits is copied, off the fast path.
pub const COMPACT_BACKLOG: usize = 32;

/// How often queues that are behind are compacted: a message is copied once it has waited
/// between one and two of these.
pub const COMPACT_INTERVAL: Duration = Duration::from_secs(1);

/// A message for at least this many sessions is queued off the worker thread
/// (`tokio::task::block_in_place`). A task woken by a worker goes to that worker's LIFO
/// slot, which no other worker takes from and which wakes none: a subscriber keeping up
/// would run only once the message had been queued for every other target, 1.4 ms with
/// 10,000. Off the worker, its wake goes to the shared queue and an idle worker takes it
/// at once. Handing the worker on costs a few microseconds, a few percent of queuing a
/// message for this many sessions.
pub const OFF_WORKER_FROM: usize = 1024;

/// Whether this thread is a worker of a multi-threaded tokio runtime, the only place
/// `block_in_place` may be called from (or, off a worker, runs its closure as it is).
fn on_a_worker_of_many() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// What routing one message did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteOutcome {
    /// Sessions the message was queued for.
    pub delivered: usize,
    /// Deliveries dropped: full queues, offline QoS 0, and older deliveries evicted.
    pub dropped: usize,
}

/// One subscription as the admin API lists it. Ordered by filter, then client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSummary {
    /// The filter as subscribed (`$share/{group}/...` for a shared subscription).
    pub filter: String,
    /// The subscriber.
    pub client_id: Arc<str>,
    /// Its options (maximum QoS, no local, ...).
    pub options: midge_proto::SubscriptionOptions,
    /// Its subscription identifier (v5).
    pub identifier: Option<u32>,
    /// Whether its session is connected.
    pub online: bool,
}

impl Ord for SubscriptionSummary {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.filter.as_str(), &*self.client_id).cmp(&(other.filter.as_str(), &*other.client_id))
    }
}

impl PartialOrd for SubscriptionSummary {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The subscription table and the routing of messages through it.
#[derive(Debug)]
pub struct Router {
    trie: RwLock<Trie>,
    strategy: ShareStrategy,
    random: AtomicU64,
    /// Queues found behind, for the next compaction sweep. A leaf lock: nothing is taken
    /// while holding it.
    behind: Mutex<Vec<Weak<Mailbox>>>,
    /// The copies compaction made, kept between sweeps. Only the sweep takes it, and takes
    /// mailbox locks (one at a time) while holding it; no mailbox lock is ever held when
    /// it is taken.
    copies: Mutex<Copies>,
}

impl Router {
    /// An empty router picking shared-group members with `strategy`.
    pub fn new(strategy: ShareStrategyConfig) -> Self {
        let strategy = match strategy {
            ShareStrategyConfig::RoundRobin => ShareStrategy::RoundRobin,
            ShareStrategyConfig::Random => ShareStrategy::Random,
        };
        let seed = crate::model::now_millis() | 1;
        Self {
            trie: RwLock::default(),
            strategy,
            random: AtomicU64::new(seed),
            behind: Mutex::default(),
            copies: Mutex::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Trie> {
        self.trie.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Trie> {
        self.trie.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or replaces `mailbox`'s subscription to a validated filter (which may be a
    /// `$share/` filter). Returns true if the subscription already existed.
    pub fn subscribe(
        &self,
        mailbox: &Arc<Mailbox>,
        filter: &str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) -> bool {
        let subscriber = Subscriber {
            mailbox: mailbox.clone(),
            options,
            identifier,
        };
        self.write().insert(filter, subscriber)
    }

    /// Removes a subscription; returns true if it existed.
    pub fn unsubscribe(&self, filter: &str, client_id: &str) -> bool {
        self.write().remove(filter, client_id, None)
    }

    /// Removes a subscription only if it still points at `mailbox`: a session that ends must
    /// not remove what a newer session with the same client id subscribed.
    pub fn unsubscribe_mailbox(&self, filter: &str, mailbox: &Arc<Mailbox>) -> bool {
        self.write()
            .remove(filter, mailbox.client_id(), Some(mailbox))
    }

    /// Up to `limit` subscriptions after `after` (a `(filter, client id)` pair) that pass
    /// `keep`, in filter then client id order, for the admin API. Memory is O(limit);
    /// the trie's read lock is held for one pass over it.
    pub fn subscriptions_page(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
        mut keep: impl FnMut(&str, &str) -> bool,
    ) -> Vec<SubscriptionSummary> {
        let mut page = std::collections::BinaryHeap::<SubscriptionSummary>::new();
        self.read().visit(&mut |filter, subscriber| {
            let client_id = subscriber.mailbox.client_id();
            let key = (filter, &**client_id);
            if after.is_some_and(|after| key <= after)
                || page.len() == limit
                    && page
                        .peek()
                        .is_some_and(|last| key >= (last.filter.as_str(), &*last.client_id))
                || !keep(filter, client_id)
            {
                return;
            }
            page.push(SubscriptionSummary {
                filter: filter.to_owned(),
                client_id: client_id.clone(),
                options: subscriber.options,
                identifier: subscriber.identifier,
                online: subscriber.mailbox.is_online(),
            });
            if page.len() > limit {
                page.pop();
            }
        });
        page.into_sorted_vec()
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// True when there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn next_random(&self) -> u64 {
        // xorshift64: only needs to spread picks, not to be unpredictable.
        let mut x = self.random.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random.store(x, Ordering::Relaxed);
        x
    }

    /// Queues `message` for every matching session.
    ///
    /// Overlapping subscriptions of one session give one delivery at the highest QoS,
    /// carrying all their identifiers [MQTT-3.3.4-2] [MQTT-3.3.4-3]; each shared group gives
    /// one delivery to one member [MQTT-4.8.2-3].
    pub fn route(&self, message: &Arc<Message>, limits: &QueueLimits) -> RouteOutcome {
        self.route_to(message, limits, Reach::All)
    }

    /// [`Router::route`] to the plain subscriptions only, or to the shared groups only.
    pub fn route_to(
        &self,
        message: &Arc<Message>,
        limits: &QueueLimits,
        reach: Reach,
    ) -> RouteOutcome {
        let random = if self.strategy == ShareStrategy::Random {
            self.next_random()
        } else {
            0
        };
        let mut matches = Matches::default();
        let plain_sets =
            self.read()
                .collect(&message.topic, self.strategy, random, reach, &mut matches);
        let (mut targets, sets) = if plain_sets > 1 {
            // Overlapping subscriptions of one session are merged target by target.
            (matches.into_targets(), Vec::new())
        } else {
            (matches.targets, matches.sets)
        };
        targets.retain(|t| !sent_back(&t.options, &t.mailbox, message));
        if plain_sets > 1 {
            // Group the plain subscriptions of each session together (`push_all` merges
            // neighbours); shared ones stay apart. With one filter's subscriptions no
            // session is there twice, and sorting 10,000 targets takes 0.4 ms.
            targets
                .sort_unstable_by_key(|t| (t.shared.is_some(), Arc::as_ptr(&t.mailbox) as usize));
        }
        // A QoS 0 message matching one large filter skips its subscribers whose queues
        // refuse it (see `SubscriberSet::qos0_takers`). With more sets, whose
        // subscribers were merged into `targets` above, `sets` is empty.
        let takers = match sets.as_slice() {
            [set] if message.qos == QoS::AtMostOnce => set.qos0_takers(limits),
            _ => None,
        };
        let plain = Plain {
            sets: &sets,
            takers,
            message,
        };
        let count = targets.len() + plain.len();
        if count >= OFF_WORKER_FROM && on_a_worker_of_many() {
            // Tasks woken meanwhile go to the runtime's shared queue, where another worker
            // takes them at once (see OFF_WORKER_FROM).
            tokio::task::block_in_place(|| self.push_all(message, &targets, &plain, limits))
        } else {
            self.push_all(message, &targets, &plain, limits)
        }
    }

    /// Queues `message` for `targets` (one session's plain subscriptions next to each
    /// other) and for the subscribers of `plain`, those behind last.
    fn push_all(
        &self,
        message: &Arc<Message>,
        targets: &[Target],
        plain: &Plain<'_>,
        limits: &QueueLimits,
    ) -> RouteOutcome {
        let mut outcome = RouteOutcome {
            delivered: 0,
            dropped: plain.skipped(),
        };
        // A message queued for an offline session will wait: it gets its own exact-size
        // copy, made at the first such session and shared by all of them, instead of
        // pinning the publisher's read buffer. Online subscribers that fall behind are
        // compacted later (see `compact`).
        let compacted = OnceCell::new();
        let message_for = |mailbox: &Mailbox| {
            if !mailbox.is_online() && (message.qos != QoS::AtMostOnce || limits.queue_qos0_offline)
            {
                compacted.get_or_init(|| Arc::new(message.compacted()))
            } else {
                message
            }
        };
        // Queues already behind go last: a subscriber keeping up does not wait while the
        // message is queued for (or dropped by) thousands of slow or dead ones.
        let mut behind = Vec::new();
        let mut note_behind = |merged| {
            if behind.capacity() == 0 {
                // One allocation, for at most all the targets.
                behind.reserve(targets.len() + plain.len());
            }
            behind.push(merged);
        };
        let mut rest = targets;
        while let Some(first) = rest.first() {
            let same = if first.shared.is_some() {
                1
            } else {
                rest.iter()
                    .take_while(|t| t.shared.is_none() && Arc::ptr_eq(&t.mailbox, &first.mailbox))
                    .count()
            };
            let (group, tail) = rest.split_at(same);
            rest = tail;
            let merged = Merged::new(message_for(&first.mailbox), Of::Targets(group));
            if first.mailbox.backlog() >= COMPACT_BACKLOG {
                note_behind(merged);
            } else {
                self.push_to(&first.mailbox, merged, limits, &mut outcome);
            }
        }
        for subscriber in plain.subscribers() {
            let merged = Merged::new(message_for(&subscriber.mailbox), Of::One(subscriber));
            if subscriber.mailbox.backlog() >= COMPACT_BACKLOG {
                note_behind(merged);
            } else {
                self.push_to(&subscriber.mailbox, merged, limits, &mut outcome);
            }
        }
        for merged in behind {
            self.push_to(merged.mailbox(), merged, limits, &mut outcome);
        }
        outcome
    }

    /// Queues one delivery for `mailbox` (one session's matching subscriptions, or one
    /// shared group's chosen member), and lists its queue for compaction once it is
    /// behind.
    fn push_to(
        &self,
        mailbox: &Arc<Mailbox>,
        merged: Merged<'_>,
        limits: &QueueLimits,
        outcome: &mut RouteOutcome,
    ) {
        outcome.record(mailbox.push(merged, limits));
        if mailbox.backlog() >= COMPACT_BACKLOG && mailbox.mark_behind() {
            self.behind
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Arc::downgrade(mailbox));
        }
    }

    /// One compaction sweep: each queue listed as behind since the last sweep has the
    /// messages that waited in it through a whole interval copied to exact size
    /// ([`Mailbox::compact`]); queues still behind stay listed. Called every
    /// [`COMPACT_INTERVAL`] by the broker's housekeeping. Returns the deliveries that got a
    /// copy.
    pub fn compact(&self) -> usize {
        let listed = std::mem::take(&mut *self.behind.lock().unwrap_or_else(|e| e.into_inner()));
        let mut copies = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        // Also once no queue is behind any more: the copies of the last sweep go, and so
        // does the room they took.
        copies.forget_gone();
        if listed.is_empty() {
            return 0;
        }
        let mut copied = 0;
        let mut still = Vec::new();
        for mailbox in listed.iter().filter_map(Weak::upgrade) {
            copied += mailbox.compact(&mut copies);
            if mailbox.unmark_behind(COMPACT_BACKLOG) {
                still.push(Arc::downgrade(&mailbox));
            }
        }
        drop(copies);
        if !still.is_empty() {
            self.behind
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(still);
        }
        copied
    }

    /// Queues `message` for one member of the shared group `full_filter`
    /// (`$share/{group}/{filter}`), picked with the configured strategy; None if the group
    /// has no member here. The caller knows the message matches the filter.
    pub fn deliver_shared(
        &self,
        full_filter: &str,
        message: &Arc<Message>,
        limits: &QueueLimits,
    ) -> Option<RouteOutcome> {
        let random = if self.strategy == ShareStrategy::Random {
            self.next_random()
        } else {
            0
        };
        let target = self
            .read()
            .pick_shared(full_filter, self.strategy, random)?;
        let mut outcome = RouteOutcome::default();
        let delivery = merge(message, std::slice::from_ref(&target));
        outcome.record(Inbox::push(&*target.mailbox, delivery, limits));
        Some(outcome)
    }

    /// Hands a delivery taken from a member that left its shared group to another member.
    /// Returns false if no other member exists.
    pub fn hand_over(&self, delivery: Delivery, leaving: &str, limits: &QueueLimits) -> bool {
        self.hand_over_all(std::slice::from_ref(&delivery), leaving, limits)[0]
    }

    /// Hands deliveries taken from a member that left their shared groups to other
    /// members, spread over them in turn. The members are looked up once per group under
    /// one read lock, and the pushes happen after it is released. Returns, for each
    /// delivery, whether another member took it.
    pub fn hand_over_all(
        &self,
        deliveries: &[Delivery],
        leaving: &str,
        limits: &QueueLimits,
    ) -> Vec<bool> {
        // Members per group, looked up once: (full filter, first index, count) into `members`.
        let mut groups: Vec<(Arc<str>, usize, usize)> = Vec::new();
        let mut members = Vec::new();
        {
            let trie = self.read();
            for filter in deliveries.iter().filter_map(|d| d.shared.as_ref()) {
                if !groups.iter().any(|(f, _, _)| f == filter) {
                    let first = members.len();
                    trie.shared_members(filter, leaving, &mut members);
                    groups.push((filter.clone(), first, members.len() - first));
                }
            }
        }
        // Leavers start at different members, so concurrent hand-overs spread out.
        let mut turn = self.next_random() as usize;
        deliveries
            .iter()
            .map(|delivery| {
                let Some(&(_, first, count)) = delivery
                    .shared
                    .as_ref()
                    .and_then(|f| groups.iter().find(|(g, _, _)| g == f))
                else {
                    return false;
                };
                // A member whose queue is full or that just ended passes to the next one.
                (0..count).any(|i| {
                    let target = &members[first + (turn + i) % count];
                    let delivery = merge(&delivery.message, std::slice::from_ref(target));
                    let taken = matches!(
                        Inbox::push(&*target.mailbox, delivery, limits),
                        PushOutcome::Queued { .. }
                    );
                    if taken {
                        turn = turn.wrapping_add(i + 1);
                    }
                    taken
                })
            })
            .collect()
    }
}

impl RouteOutcome {
    fn record(&mut self, push: PushOutcome) {
        match push {
            PushOutcome::Queued { evicted } => {
                self.delivered += 1;
                self.dropped += evicted;
            }
            PushOutcome::Dropped => self.dropped += 1,
            // A session that ended a moment ago; its subscriptions are being removed.
            PushOutcome::Closed => {}
        }
    }
}

/// [MQTT-3.8.3-3] no-local: a message is not sent back to its publisher.
fn sent_back(options: &SubscriptionOptions, mailbox: &Mailbox, message: &Message) -> bool {
    options.no_local && *Inbox::owner(mailbox) == message.origin
}

/// The plain subscriptions `message` matched as whole filters' [`Snapshot`]s.
struct Plain<'a> {
    sets: &'a [Snapshot],
    /// Of the one set, those that take the message, when others are skipped.
    takers: Option<Arc<Takers>>,
    message: &'a Message,
}

impl Plain<'_> {
    /// The subscribers to deliver to (no-local leaves the publisher out).
    fn subscribers(&self) -> impl Iterator<Item = &Subscriber> {
        let taken = self.takers.as_ref().map(|t| t.of_set(&self.sets[0]));
        let all = self
            .takers
            .is_none()
            .then(|| self.sets.iter().flat_map(|set| set.iter()));
        taken
            .into_iter()
            .flatten()
            .chain(all.into_iter().flatten())
            .filter(|s| !sent_back(&s.options, &s.mailbox, self.message))
    }

    /// How many subscribers are visited (no-local included).
    fn len(&self) -> usize {
        match &self.takers {
            Some(t) => t.len(),
            None => self.sets.iter().map(|set| set.len()).sum(),
        }
    }

    /// Deliveries dropped without a visit: subscribers whose full queues refuse them.
    fn skipped(&self) -> usize {
        self.takers.as_ref().map_or(0, |t| t.skipped(&self.sets[0]))
    }
}

/// The subscriptions of one session a delivery is for.
#[derive(Clone, Copy)]
enum Of<'a> {
    /// Its matching subscriptions (or one shared group's chosen member), as targets.
    Targets(&'a [Target]),
    /// Its one plain subscription in a filter's snapshot.
    One(&'a Subscriber),
}

/// One delivery for the subscriptions of one session that matched, made only once the
/// session's queue takes it (see [`Mailbox::push`]).
struct Merged<'a> {
    message: &'a Arc<Message>,
    of: Of<'a>,
    qos: QoS,
}

impl<'a> Merged<'a> {
    fn new(message: &'a Arc<Message>, of: Of<'a>) -> Self {
        let qos = match of {
            Of::Targets(targets) => targets
                .iter()
                .map(|t| t.options.qos)
                .max()
                .unwrap_or_default(),
            Of::One(s) => s.options.qos,
        };
        Self {
            message,
            of,
            // [MQTT-3.8.4-8] delivered at the lower of the publish and subscription QoS.
            qos: qos.min(message.qos),
        }
    }

    /// The session's queue.
    fn mailbox(&self) -> &'a Arc<Mailbox> {
        match self.of {
            Of::Targets(targets) => &targets[0].mailbox,
            Of::One(s) => &s.mailbox,
        }
    }
}

impl ToDeliver for Merged<'_> {
    fn message(&self) -> &Message {
        self.message
    }

    fn qos(&self) -> QoS {
        self.qos
    }

    fn make(self) -> Delivery {
        let message = self.message;
        // [MQTT-3.3.1-12] [MQTT-3.3.1-13] RETAIN is kept only for retain-as-published.
        let (retain, subscription_ids, shared) = match self.of {
            Of::Targets(targets) => (
                targets.iter().any(|t| t.options.retain_as_published),
                targets.iter().filter_map(|t| t.identifier).collect(),
                targets.first().and_then(|t| t.shared.clone()),
            ),
            Of::One(s) => (
                s.options.retain_as_published,
                s.identifier.into_iter().collect(),
                None,
            ),
        };
        Delivery {
            message: message.clone(),
            qos: self.qos,
            retain: message.retain && retain,
            subscription_ids,
            shared,
        }
    }
}

/// One delivery for the subscriptions of one session that matched.
fn merge(message: &Arc<Message>, targets: &[Target]) -> Delivery {
    Merged::new(message, Of::Targets(targets)).make()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QueueFullPolicy;
    use crate::memory::MemoryBudget;
    use bytes::Bytes;
    use midge_proto::QoS;
    use std::sync::atomic::AtomicBool;

    const LIMITS: QueueLimits = QueueLimits {
        max_messages: 100,
        max_bytes: 0,
        policy: QueueFullPolicy::DropNew,
        queue_qos0_offline: true,
    };

    fn message(topic: &str, qos: QoS, retain: bool, origin: &str) -> Arc<Message> {
        let mut m = Message::internal(topic.into(), Bytes::from_static(b"x"), retain, 0);
        m.qos = qos;
        m.origin = origin.into();
        Arc::new(m)
    }

    fn options(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            ..Default::default()
        }
    }

    /// `n` online sessions (`prefix0`, `prefix1`, ...) subscribed to `t`.
    fn online_subscribers(router: &Router, prefix: &str, n: usize, qos: QoS) -> Vec<Arc<Mailbox>> {
        (0..n)
            .map(|i| {
                let m = Mailbox::new(format!("{prefix}{i}").into());
                m.set_online(true);
                router.subscribe(&m, "t", options(qos), None);
                m
            })
            .collect()
    }

    fn drain(mailbox: &Mailbox) -> Vec<Delivery> {
        let mut out = Vec::new();
        mailbox.pop_batch(usize::MAX, usize::MAX, &mut out);
        out
    }

    /// A message whose payload and correlation data are slices of a 64 KiB read buffer,
    /// as the decoder leaves them.
    fn message_in_read_buffer(qos: QoS) -> (Bytes, Arc<Message>) {
        let buffer = Bytes::from(vec![7u8; 64 * 1024]);
        let mut m = Message::internal("t".into(), buffer.slice(0..10), false, 0);
        m.qos = qos;
        m.properties.correlation_data = Some(buffer.slice(10..20));
        (buffer, Arc::new(m))
    }

    /// `n` sessions behind (`COMPACT_BACKLOG` QoS 0 deliveries queued each) and one
    /// keeping up (nothing queued), all subscribed to `t`; queues hold up to 1,000.
    fn behind_and_live(
        router: &Router,
        n: usize,
    ) -> (Vec<Arc<Mailbox>>, Arc<Mailbox>, QueueLimits) {
        let limits = QueueLimits {
            max_messages: 1000,
            ..LIMITS
        };
        let behind = online_subscribers(router, "dead", n, QoS::AtMostOnce);
        let live = online_subscribers(router, "live", 1, QoS::AtMostOnce).remove(0);
        for _ in 0..COMPACT_BACKLOG {
            router.route(&message("t", QoS::AtMostOnce, false, "p"), &limits);
            drain(&live);
        }
        (behind, live, limits)
    }

    /// Records, when the subscriber keeping up is woken by its delivery, how many
    /// deliveries the queues behind hold by then.
    struct WakeProbe {
        behind: Vec<Arc<Mailbox>>,
        seen: Mutex<Option<usize>>,
    }

    impl std::task::Wake for WakeProbe {
        fn wake(self: Arc<Self>) {
            let queued = self.behind.iter().map(|m| m.backlog()).sum();
            *self.seen.lock().unwrap() = Some(queued);
        }
    }

    #[test]
    fn a_subscriber_keeping_up_is_served_before_queues_behind() {
        let router = Router::new(ShareStrategyConfig::RoundRobin);
        let (behind, live, limits) = behind_and_live(&router, 50);
        let before: usize = behind.iter().map(|m| m.backlog()).sum();
        assert_eq!(before, 50 * COMPACT_BACKLOG);
        let probe = Arc::new(WakeProbe {
            behind: behind.clone(),
            seen: Mutex::new(None),
        });
        let waker = std::task::Waker::from(probe.clone());
        assert!(
            live.poll_notified(&mut std::task::Context::from_waker(&waker))
                .is_ready()
        );
        assert!(
            live.poll_notified(&mut std::task::Context::from_waker(&waker))
                .is_pending()
        );
        router.route(&message("t", QoS::AtMostOnce, false, "p"), &limits);
        assert_eq!(
            *probe.seen.lock().unwrap(),
            Some(before),
            "the live subscriber was woken after queues behind got the message"
        );
        assert_eq!(drain(&live).len(), 1);
        assert!(behind.iter().all(|m| m.backlog() == COMPACT_BACKLOG + 1));
    }

    /// A message for thousands of sessions is queued off the worker: the subscriber
    /// keeping up, woken by its delivery, runs on another worker while the queues behind
    /// are still getting theirs. On the worker, it sat in the worker's LIFO slot until
    /// every queue had the message.
    #[test]
    fn a_subscriber_keeping_up_runs_while_a_large_fan_out_is_queued() {
        let router = Arc::new(Router::new(ShareStrategyConfig::RoundRobin));
        let n = 16 * OFF_WORKER_FROM;
        let (behind, live, limits) = behind_and_live(&router, n);
        let before = n * COMPACT_BACKLOG;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        let seen = runtime.block_on(async {
            let subscriber = tokio::spawn({
                let (live, behind) = (live.clone(), behind.clone());
                async move {
                    // The notification the earlier deliveries left, then the next one.
                    std::future::poll_fn(|cx| live.poll_notified(cx)).await;
                    std::future::poll_fn(|cx| live.poll_notified(cx)).await;
                    behind.iter().map(|m| m.backlog()).sum::<usize>()
                }
            });
            // The subscriber waits for its delivery before the message is routed.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let publisher = tokio::spawn({
                let router = router.clone();
                async move {
                    router.route(&message("t", QoS::AtMostOnce, false, "p"), &limits);
                }
            });
            publisher.await.unwrap();
            subscriber.await.unwrap()
        });
        assert!(
            seen < before + n,
            "the subscriber ran only after all {n} queues behind had the message ({seen} of {} queued)",
            before + n
        );
        assert_eq!(drain(&live).len(), 1);
        assert!(behind.iter().all(|m| m.backlog() == COMPACT_BACKLOG + 1));
    }

    #[test]
    fn queued_messages_do_not_pin_the_read_buffer() {
        let router = Router::new(ShareStrategyConfig::RoundRobin);
        let offline = Mailbox::new("offline".into());
        router.subscribe(&offline, "t", options(QoS::AtLeastOnce), None);
        let (buffer, message) = message_in_read_buffer(QoS::AtLeastOnce);
        router.route(&message, &LIMITS);
        // The connection is done with its read and the routed message.
        drop(message);
        // Before: the offline session's queue kept the whole 64 KiB alive for 20 bytes.
        assert!(buffer.is_unique(), "a queued message pins the read buffer");
        let got = drain(&offline);
        assert_eq!(got[0].message.payload, buffer.slice(0..10));
    }

    /// With online and offline subscribers of one filter, large or small: the online ones
    /// get the routed message itself, the offline ones one exact-size copy between them.
    #[test]
    fn offline_subscribers_share_one_copy_and_online_ones_get_the_original() {
        for online_count in [1, trie::SNAPSHOT_FROM] {
            let router = Router::new(ShareStrategyConfig::RoundRobin);
            let online = online_subscribers(&router, "on", online_count, QoS::AtLeastOnce);
            let offline: Vec<_> = (0..2)
                .map(|i| {
                    let m = Mailbox::new(format!("off{i}").into());
                    router.subscribe(&m, "t", options(QoS::AtLeastOnce), None);
                    m
                })
                .collect();
            let (buffer, message) = message_in_read_buffer(QoS::AtLeastOnce);
            router.route(&message, &LIMITS);
            for m in &online {
                assert!(Arc::ptr_eq(&drain(m)[0].message, &message));
            }
            drop(message);
            assert!(buffer.is_unique(), "the offline copies pin the read buffer");
            let (a, b) = (drain(&offline[0]), drain(&offline[1]));
            assert!(Arc::ptr_eq(&a[0].message, &b[0].message), "one copy");
            assert_eq!(a[0].message.payload, buffer.slice(0..10));
        }
    }

    #[test]
    fn a_subscriber_keeping_up_gets_the_message_uncopied() {
        let router = Router::new(ShareStrategyConfig::RoundRobin);
        let online = Mailbox::new("online".into());
        online.set_online(true);
        router.subscribe(&online, "t", options(QoS::AtLeastOnce), None);
        let (buffer, message) = message_in_read_buffer(QoS::AtLeastOnce);
        router.route(&message, &LIMITS);
        let got = drain(&online);
        assert!(Arc::ptr_eq(&got[0].message, &message));
        assert_eq!(got[0].message.payload.as_ptr(), buffer.as_ptr());
        // Behind, it is still not copied as it is routed: only what waits through a
        // whole sweep interval is.
        for _ in 0..COMPACT_BACKLOG {
            router.route(&message, &LIMITS);
        }
        assert_eq!(
            router.compact(),
            0,
            "first sweep: nothing has waited an interval"
        );
        let got = drain(&online);
        assert_eq!(got.len(), COMPACT_BACKLOG);
        assert!(got.iter().all(|d| Arc::ptr_eq(&d.message, &message)));
        // Drained, it leaves the list.
        assert_eq!(router.compact(), 0);
        assert!(router.behind.lock().unwrap().is_empty());
    }

    /// Messages waiting in queues that are behind get one exact-size copy per message,
    /// shared by every slow queue, at the second sweep after they were queued; queues keeping
    /// up keep the original.
    #[test]
    fn compaction_copies_what_waits_in_slow_queues_once() {
        let router = Router::new(ShareStrategyConfig::RoundRobin);
        let slow = online_subscribers(&router, "slow", 3, QoS::AtLeastOnce);
        let (buffer, message) = message_in_read_buffer(QoS::AtLeastOnce);
        for _ in 0..COMPACT_BACKLOG {
            router.route(&message, &LIMITS);
        }
        assert_eq!(router.compact(), 0);
        // A message queued after the first sweep waits one more interval than the others
        // have when the second sweep comes.
        let (later_buffer, later) = message_in_read_buffer(QoS::AtLeastOnce);
        router.route(&later, &LIMITS);
        assert_eq!(router.compact(), 3 * COMPACT_BACKLOG);
        assert_eq!(
            router.copies.lock().unwrap().len(),
            1,
            "one copy for all queues"
        );
        let mut copies = Vec::new();
        for m in &slow {
            let got = drain(m);
            assert_eq!(got.len(), COMPACT_BACKLOG + 1);
            for d in &got[..COMPACT_BACKLOG] {
                assert!(!Arc::ptr_eq(&d.message, &message));
                assert_ne!(d.message.payload.as_ptr(), buffer.as_ptr());
                assert_eq!(d.message.payload, message.payload);
                assert_eq!(d.message.topic, message.topic);
            }
            assert!(Arc::ptr_eq(&got[COMPACT_BACKLOG].message, &later));
            assert_eq!(
                got[COMPACT_BACKLOG].message.payload.as_ptr(),
                later_buffer.as_ptr()
            );
            copies.push(got[0].message.clone());
        }
        assert!(copies.iter().all(|c| Arc::ptr_eq(c, &copies[0])));
        // Drained, the queues leave the list while the copy is still held; once it is
        // not, the next sweep forgets it though no queue is behind (its weak entry would
        // keep the copy's allocation, and a storm's worth of them the table's room).
        assert_eq!(router.compact(), 0);
        assert!(router.behind.lock().unwrap().is_empty());
        assert_eq!(router.copies.lock().unwrap().len(), 1);
        drop(copies);
        assert_eq!(router.compact(), 0);
        assert_eq!(router.copies.lock().unwrap().len(), 0);
    }

    /// A filter with [`trie::SNAPSHOT_FROM`] subscribers or more is routed from a shared
    /// snapshot of them: every change (leave, new options, join) shows in the next
    /// message, no-local applies, and a session that also matched another filter gets one
    /// merged delivery.
    #[test]
    fn a_large_filter_is_routed_from_a_snapshot_that_follows_every_change() {
        let router = Router::new(ShareStrategyConfig::RoundRobin);
        let many = online_subscribers(&router, "s", trie::SNAPSHOT_FROM + 8, QoS::AtLeastOnce);
        let count = |m: &Mailbox| drain(m).len();
        let outcome = router.route(&message("t", QoS::AtLeastOnce, false, "p"), &LIMITS);
        assert_eq!(outcome.delivered, many.len());
        assert!(many.iter().all(|m| count(m) == 1));

        router.unsubscribe("t", many[0].client_id());
        router.subscribe(&many[1], "t", options(QoS::AtMostOnce), Some(7));
        let no_local = SubscriptionOptions {
            no_local: true,
            ..options(QoS::AtLeastOnce)
        };
        router.subscribe(&many[2], "t", no_local, None);
        router.subscribe(&many[3], "#", options(QoS::ExactlyOnce), Some(9));
        let late = Mailbox::new("late".into());
        late.set_online(true);
        router.subscribe(&late, "t", options(QoS::AtLeastOnce), None);

        // From s2, whose subscription is now no-local; "t" and "#" both match, so the
        // targets are merged one by one.
        let outcome = router.route(&message("t", QoS::ExactlyOnce, false, "s2"), &LIMITS);
        assert_eq!(outcome.delivered, many.len() - 2 + 1);
        assert!(drain(&many[0]).is_empty(), "unsubscribed");
        let changed = drain(&many[1]);
        assert_eq!(changed.len(), 1);
        assert_eq!(
            (changed[0].qos, &changed[0].subscription_ids[..]),
            (QoS::AtMostOnce, &[7][..])
        );
        assert!(drain(&many[2]).is_empty(), "no-local");
        let both = drain(&many[3]);
        assert_eq!(both.len(), 1, "one copy for two matching filters");
        assert_eq!(
            (both[0].qos, &both[0].subscription_ids[..]),
            (QoS::ExactlyOnce, &[9][..])
        );
        assert_eq!(count(&late), 1);
        assert!(many[4..].iter().all(|m| count(m) == 1));

        // Only "t" matches: routed from the snapshot, which saw the same changes.
        let outcome = router.route(&message("t/x", QoS::AtLeastOnce, false, "p"), &LIMITS);
        assert_eq!(outcome.delivered, 1, "only # matches t/x");
        assert_eq!(count(&many[3]), 1);
        let outcome = router.route(&message("t", QoS::AtLeastOnce, false, "s2"), &LIMITS);
        assert_eq!(outcome.delivered, many.len() - 2 + 1);
        assert!(drain(&many[0]).is_empty() && drain(&many[2]).is_empty());
        assert_eq!(drain(&many[1])[0].qos, QoS::AtMostOnce);
    }

    /// Lets `threads` run for 300 ms, stops them, and joins each within 10 s (a stuck
    /// thread fails the test); each returns how many rounds it did, at least one.
    fn run_for_a_while(threads: Vec<std::thread::JoinHandle<usize>>, stop: &AtomicBool) {
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for thread in threads {
            while !thread.is_finished() {
                assert!(std::time::Instant::now() < deadline, "a thread is stuck");
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(thread.join().expect("no panic") > 0);
        }
    }

    /// Routing to a filter with hundreds of subscribers from several threads while others
    /// leave and rejoin it, and join and leave a second filter: nothing stalls, and once
    /// the churn stops every subscriber still there gets the next message exactly once.
    #[test]
    fn routing_to_a_large_filter_while_it_changes_from_many_threads() {
        let router = Arc::new(Router::new(ShareStrategyConfig::RoundRobin));
        let members = online_subscribers(&router, "s", 400, QoS::AtMostOnce);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for t in 0..8 {
            let (router, stop) = (router.clone(), stop.clone());
            let mine: Vec<_> = members.iter().skip(t).step_by(8).cloned().collect();
            threads.push(std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    if t % 2 == 0 {
                        router.route(&message("t", QoS::AtMostOnce, false, "p"), &LIMITS);
                    } else {
                        let m = &mine[n % mine.len()];
                        router.unsubscribe("t", m.client_id());
                        router.subscribe(m, "t/#", options(QoS::AtMostOnce), None);
                        router.subscribe(m, "t", options(QoS::AtMostOnce), None);
                        router.unsubscribe("t/#", m.client_id());
                    }
                    for m in &mine {
                        drain(m);
                    }
                    n += 1;
                }
                n
            }));
        }
        run_for_a_while(threads, &stop);
        for m in &members {
            drain(m);
        }
        for m in members.iter().step_by(3) {
            router.unsubscribe("t", m.client_id());
        }
        let outcome = router.route(&message("t", QoS::AtLeastOnce, false, "p"), &LIMITS);
        assert_eq!(outcome.delivered, members.len() - members.len().div_ceil(3));
        for (i, m) in members.iter().enumerate() {
            assert_eq!(drain(m).len(), usize::from(i % 3 != 0), "{}", m.client_id());
        }
    }

    /// Queues that hold `max_messages` refuse QoS 0, and a QoS 0 message to a large filter
    /// skips them, counting a drop for each: `n` subscribers of `t` (at QoS 1) whose
    /// queues of 2 are full, and one keeping up.
    fn full_and_live(router: &Router, n: usize) -> (Vec<Arc<Mailbox>>, Arc<Mailbox>, QueueLimits) {
        let limits = QueueLimits {
            max_messages: 2,
            ..LIMITS
        };
        let full = online_subscribers(router, "full", n, QoS::AtLeastOnce);
        let live = online_subscribers(router, "live", 1, QoS::AtLeastOnce).remove(0);
        for _ in 0..3 {
            router.route(&message("t", QoS::AtMostOnce, false, "p"), &limits);
            assert_eq!(drain(&live).len(), 1);
        }
        (full, live, limits)
    }

    /// The takers of the filter's snapshot, as routing a QoS 0 message sees them.
    fn takers_of(router: &Router, limits: &QueueLimits) -> Option<Arc<Takers>> {
        let mut matches = Matches::default();
        router
            .read()
            .collect("t", ShareStrategy::RoundRobin, 0, Reach::All, &mut matches);
        matches.sets[0].qos0_takers(limits)
    }

    /// A QoS 0 message skips the subscribers whose full queues refuse it and counts each as
    /// dropped; one that drains is visited again from the next message, and raised limits
    /// (a reload) take effect at once. QoS 1, which a full queue of QoS 0 makes room for,
    /// visits everyone.
    #[test]
    fn qos0_skips_full_queues_until_they_drain() {
        let router = Router::new(ShareStrategyConfig::RoundRobin);
        let (full, live, limits) = full_and_live(&router, trie::SNAPSHOT_FROM + 36);
        let takers = takers_of(&router, &limits).expect("some are skipped");
        assert_eq!(takers.len(), 1, "only the live one is visited");
        let outcome = router.route(&message("t", QoS::AtMostOnce, false, "p"), &limits);
        assert_eq!((outcome.delivered, outcome.dropped), (1, full.len()));
        assert_eq!(drain(&live).len(), 1);
        // One full queue drains: it takes the next message.
        assert_eq!(drain(&full[7]).len(), 2);
        let outcome = router.route(&message("t", QoS::AtMostOnce, false, "p"), &limits);
        assert_eq!((outcome.delivered, outcome.dropped), (2, full.len() - 1));
        assert_eq!(drain(&full[7]).len(), 1);
        assert_eq!(drain(&live).len(), 1);
        // Room for more in every queue: nobody is skipped.
        let more = QueueLimits {
            max_messages: 3,
            ..limits
        };
        assert!(takers_of(&router, &more).is_none());
        let outcome = router.route(&message("t", QoS::AtMostOnce, false, "p"), &more);
        assert_eq!((outcome.delivered, outcome.dropped), (full.len() + 1, 0));
        // Full again at 3: QoS 1 still reaches every queue, evicting a QoS 0 in each.
        let outcome = router.route(&message("t", QoS::AtLeastOnce, false, "p"), &more);
        assert_eq!(
            (outcome.delivered, outcome.dropped),
            (full.len() + 1, full.len() - 1)
        );
        for m in &full {
            assert_eq!(drain(m).last().map(|d| d.qos), Some(QoS::AtLeastOnce));
        }
    }

    /// Skipping keeps the drop count exact: a no-local subscriber whose queue is full is
    /// still visited (the publisher's own message is skipped, not dropped).
    #[test]
    fn skipping_full_queues_leaves_no_local_subscribers_in() {
        let router = Router::new(ShareStrategyConfig::RoundRobin);
        let (full, live, limits) = full_and_live(&router, trie::SNAPSHOT_FROM);
        let own = Mailbox::new("own".into());
        own.set_online(true);
        let no_local = SubscriptionOptions {
            no_local: true,
            ..options(QoS::AtMostOnce)
        };
        router.subscribe(&own, "t", no_local, None);
        for _ in 0..3 {
            router.route(&message("t", QoS::AtMostOnce, false, "p"), &limits);
            drain(&live);
        }
        assert!(own.refuses_qos0(&limits));
        let outcome = router.route(&message("t", QoS::AtMostOnce, false, "own"), &limits);
        assert_eq!((outcome.delivered, outcome.dropped), (1, full.len()));
    }

    /// Under memory pressure every full queue is visited again, since a QoS 0 push to a
    /// queue that is behind then also shrinks it; the skipping made before the pressure
    /// began is not used.
    #[test]
    fn memory_pressure_visits_every_full_queue() {
        let router = Router::new(ShareStrategyConfig::RoundRobin);
        let budget = Arc::new(MemoryBudget::new(1 << 20));
        let limits = QueueLimits {
            max_messages: 2,
            ..LIMITS
        };
        let full: Vec<_> = (0..trie::SNAPSHOT_FROM)
            .map(|i| {
                let m = Mailbox::with_store(format!("full{i}").into(), None, Some(&budget));
                m.set_online(true);
                router.subscribe(&m, "t", options(QoS::AtMostOnce), None);
                m
            })
            .collect();
        let big = |i: u8| {
            let mut m = Message::internal("t".into(), Bytes::from(vec![i; 40_000]), false, 0);
            m.origin = "p".into();
            Arc::new(m)
        };
        for i in 0..3 {
            router.route(&big(i), &limits);
        }
        assert!(takers_of(&router, &limits).is_some_and(|t| t.len() == 0));
        assert_eq!(router.route(&big(3), &limits).dropped, full.len());
        assert_eq!(budget.dropped_qos0.load(Ordering::Relaxed), 0);
        budget.charge(1 << 21);
        assert!(budget.pressure());
        assert_eq!(router.route(&big(4), &limits).dropped, full.len());
        assert_eq!(
            budget.dropped_qos0.load(Ordering::Relaxed),
            full.len() as u64,
            "every queue was visited, and dropped for memory"
        );
        for m in &full {
            assert_eq!(drain(m).len(), 1, "the pressure took one QoS 0 out");
        }
    }

    /// Routing QoS 0 to a large filter from several threads while others drain queues
    /// that keep filling (each drain lets a queue take messages again, each refusal
    /// takes it out): every message is counted once for every subscriber, delivered or
    /// dropped, and once the routing stops and every queue has drained, the next message
    /// reaches all of them.
    #[test]
    fn skipping_full_queues_while_they_fill_and_drain_from_many_threads() {
        let router = Arc::new(Router::new(ShareStrategyConfig::RoundRobin));
        let members = online_subscribers(&router, "s", 300, QoS::AtMostOnce);
        let limits = QueueLimits {
            max_messages: 4,
            ..LIMITS
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for t in 0..8 {
            let (router, stop) = (router.clone(), stop.clone());
            let mine: Vec<_> = members.iter().skip(t).step_by(4).cloned().collect();
            threads.push(std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    if t % 2 == 0 {
                        let m = message("t", QoS::AtMostOnce, false, "p");
                        let outcome = router.route(&m, &limits);
                        assert_eq!(outcome.delivered + outcome.dropped, 300);
                    } else {
                        // Drains a few queues now and then; the rest stay full.
                        drain(&mine[n % mine.len()]);
                    }
                    n += 1;
                }
                n
            }));
        }
        run_for_a_while(threads, &stop);
        for m in &members {
            drain(m);
        }
        let outcome = router.route(&message("t", QoS::AtMostOnce, false, "p"), &limits);
        assert_eq!((outcome.delivered, outcome.dropped), (300, 0));
        for m in &members {
            assert_eq!(drain(m).len(), 1, "{}", m.client_id());
        }
    }

    #[test]
    fn overlapping_subscriptions_give_one_copy_at_highest_qos_with_all_identifiers() {
        let router = Router::new(ShareStrategyConfig::RoundRobin);
        let m = Mailbox::new("c".into());
        router.subscribe(&m, "a/+", options(QoS::AtMostOnce), Some(1));
        router.subscribe(&m, "a/#", options(QoS::ExactlyOnce), Some(2));
        router.subscribe(&m, "a/b", options(QoS::AtLeastOnce), None);
        let outcome = router.route(&message("a/b", QoS::ExactlyOnce, false, "p"), &LIMITS);
        assert_eq!(
            outcome,
            RouteOutcome {
                delivered: 1,
                dropped: 0
            }
        );
        let got = drain(&m);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].qos, QoS::ExactlyOnce);
        let mut ids = got[0].subscription_ids.clone();
        ids.sort();
        assert_eq!(ids, [1, 2]);
    }

    #[test]
    fn delivery_qos_is_capped_by_publish_qos() {
        let router = Router::new(ShareStrategyConfig::RoundRobin);
        let m = Mailbox::new("c".into());
        router.subscribe(&m, "t", options(QoS::ExactlyOnce), None);
        router.route(&message("t", QoS::AtLeastOnce, false, "p"), &LIMITS);
        assert_eq!(drain(&m)[0].qos, QoS::AtLeastOnce);
    }

    #[test]
    fn no_local_skips_the_publisher_only() {
        let router = Router::new(ShareStrategyConfig::RoundRobin);
        let me = Mailbox::new("me".into());
        let other = Mailbox::new("other".into());
        let no_local = SubscriptionOptions {
            no_local: true,
            ..options(QoS::AtLeastOnce)
        };
        router.subscribe(&me, "t", no_local, None);
        router.subscribe(&other, "t", no_local, None);
        router.route(&message("t", QoS::AtLeastOnce, false, "me"), &LIMITS);
        assert!(drain(&me).is_empty());
        assert_eq!(drain(&other).len(), 1);
    }

    #[test]
    fn retain_flag_is_cleared_unless_retain_as_published() {
        let router = Router::new(ShareStrategyConfig::RoundRobin);
        let plain = Mailbox::new("plain".into());
        let rap = Mailbox::new("rap".into());
        router.subscribe(&plain, "t", options(QoS::AtLeastOnce), None);
        let rap_options = SubscriptionOptions {
            retain_as_published: true,
            ..options(QoS::AtLeastOnce)
        };
        router.subscribe(&rap, "t", rap_options, None);
        router.route(&message("t", QoS::AtLeastOnce, true, "p"), &LIMITS);
        assert!(!drain(&plain)[0].retain);
        assert!(drain(&rap)[0].retain);
    }

    #[test]
    fn hand_over_spreads_over_connected_members_and_skips_the_leaver() {
        let router = Router::new(ShareStrategyConfig::RoundRobin);
        let members: Vec<_> = ["leaver", "a", "b", "offline"]
            .iter()
            .map(|id| Mailbox::new((*id).into()))
            .collect();
        for m in &members {
            router.subscribe(m, "$share/g/t", options(QoS::AtLeastOnce), None);
        }
        members[1].set_online(true);
        members[2].set_online(true);
        let message = message("t", QoS::AtLeastOnce, false, "p");
        let delivery = Delivery {
            message,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            shared: Some("$share/g/t".into()),
        };
        let batch = vec![delivery; 10];
        let handed = router.hand_over_all(&batch, "leaver", &LIMITS);
        assert_eq!(handed, [true; 10]);
        assert!(members[0].is_empty(), "never back to the leaver");
        assert!(members[3].is_empty(), "connected members come first");
        assert_eq!((members[1].len(), members[2].len()), (5, 5));
        // No other member: nothing is taken.
        let alone = vec![batch[0].clone()];
        assert_eq!(router.hand_over_all(&alone, "x", &LIMITS).len(), 1);
        let lonely = Router::new(ShareStrategyConfig::RoundRobin);
        lonely.subscribe(&members[0], "$share/g/t", options(QoS::AtLeastOnce), None);
        assert_eq!(lonely.hand_over_all(&alone, "leaver", &LIMITS), [false]);
    }

    /// Routing, subscription churn and hand-overs from many threads at once, with more
    /// threads than cores: a lock-order cycle between the trie and the mailboxes shows as
    /// threads that never finish.
    #[test]
    fn concurrent_route_churn_and_hand_over_finish() {
        let router = Arc::new(Router::new(ShareStrategyConfig::RoundRobin));
        let members: Vec<_> = (0..8)
            .map(|i| Mailbox::new(format!("m{i}").into()))
            .collect();
        for m in &members {
            m.set_online(true);
            router.subscribe(m, "$share/g1/a", options(QoS::AtLeastOnce), None);
            router.subscribe(m, "$share/g2/b", options(QoS::AtLeastOnce), None);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (t, mine) in members.iter().enumerate() {
            let (router, stop, mine) = (router.clone(), stop.clone(), mine.clone());
            threads.push(std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match t % 4 {
                        0 => {
                            router.route(&message("a", QoS::AtLeastOnce, false, "p"), &LIMITS);
                            router.route(&message("b", QoS::AtLeastOnce, false, "p"), &LIMITS);
                        }
                        1 => {
                            let f = format!("x/{}", n % 16);
                            router.subscribe(&mine, &f, options(QoS::AtMostOnce), None);
                            router.unsubscribe(&f, mine.client_id());
                        }
                        _ => {
                            router.unsubscribe("$share/g1/a", mine.client_id());
                            let taken = mine
                                .take_deliveries(|d| d.shared.as_deref() == Some("$share/g1/a"));
                            let batch: Vec<_> = taken.iter().map(|q| q.delivery.clone()).collect();
                            router.hand_over_all(&batch, mine.client_id(), &LIMITS);
                            router.subscribe(&mine, "$share/g1/a", options(QoS::AtLeastOnce), None);
                        }
                    }
                    // Keep queues from filling, so pushes keep taking locks.
                    let mut out = Vec::new();
                    mine.pop_batch(64, 64, &mut out);
                    n += 1;
                }
                n
            }));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for thread in threads {
            while !thread.is_finished() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "a thread is stuck: lock-order cycle"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            assert!(thread.join().expect("no panic") > 0);
        }
    }

    #[test]
    fn reach_splits_plain_and_shared_and_deliver_shared_picks_one_member() {
        let router = Router::new(ShareStrategyConfig::RoundRobin);
        let plain = Mailbox::new("plain".into());
        let members: Vec<_> = ["m1", "m2"]
            .iter()
            .map(|id| Mailbox::new((*id).into()))
            .collect();
        router.subscribe(&plain, "t/#", options(QoS::AtLeastOnce), None);
        for m in &members {
            m.set_online(true);
            router.subscribe(m, "$share/g/t/#", options(QoS::AtMostOnce), None);
        }
        let m = message("t/x", QoS::AtLeastOnce, false, "p");
        assert_eq!(router.route_to(&m, &LIMITS, Reach::Plain).delivered, 1);
        assert_eq!((plain.len(), members[0].len() + members[1].len()), (1, 0));
        assert_eq!(router.route_to(&m, &LIMITS, Reach::Shared).delivered, 1);
        assert_eq!((plain.len(), members[0].len() + members[1].len()), (1, 1));
        for _ in 0..4 {
            let outcome = router.deliver_shared("$share/g/t/#", &m, &LIMITS);
            assert_eq!(outcome.map(|o| o.delivered), Some(1));
        }
        // Round robin across the members; QoS downgraded to the member's.
        assert_eq!((members[0].len(), members[1].len()), (3, 2));
        let delivery = drain(&members[0]).remove(0);
        assert_eq!(delivery.qos, QoS::AtMostOnce);
        assert_eq!(delivery.shared.as_deref(), Some("$share/g/t/#"));
        assert!(router.deliver_shared("$share/h/t/#", &m, &LIMITS).is_none());
        assert!(router.deliver_shared("$share/g/t/+", &m, &LIMITS).is_none());
        assert!(router.deliver_shared("$share/g/u/#", &m, &LIMITS).is_none());
    }

    #[test]
    fn shared_delivery_hands_over_to_another_member() {
        let router = Router::new(ShareStrategyConfig::RoundRobin);
        let a = Mailbox::new("a".into());
        let b = Mailbox::new("b".into());
        router.subscribe(&a, "$share/g/t", options(QoS::AtLeastOnce), None);
        router.subscribe(&b, "$share/g/t", options(QoS::AtLeastOnce), None);
        router.route(&message("t", QoS::AtLeastOnce, false, "p"), &LIMITS);
        let (first, second) = if a.is_empty() { (&b, &a) } else { (&a, &b) };
        let delivery = drain(first).remove(0);
        assert_eq!(delivery.shared.as_deref(), Some("$share/g/t"));
        assert!(router.hand_over(delivery, first.client_id(), &LIMITS));
        assert_eq!(drain(second).len(), 1);
    }
}
