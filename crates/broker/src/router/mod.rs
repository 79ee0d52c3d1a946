//! Routing: which sessions get a message, and with which QoS, flags and identifiers.
//!
//! The trie's read lock is held only to collect targets; pushing onto mailboxes happens
//! after it is released, so a slow or contended mailbox never blocks subscribes.
//!
//! The broker routes through [`Routing`], the seam for remote interest and forwarding;
//! [`Router`] is the single node's implementation. Deliveries go to each subscriber's
//! [`Inbox`].

mod trie;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use midge_proto::SubscriptionOptions;

use crate::config::ShareStrategyConfig;
use crate::mailbox::{Inbox, Mailbox, PushOutcome};
use crate::model::QueueLimits;
use crate::model::{Delivery, Message};
pub use trie::Reach;
use trie::{ShareStrategy, Subscriber, Target, Trie};

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

    fn len(&self) -> usize {
        Router::len(self)
    }
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
        let mut targets = Vec::new();
        self.read()
            .collect(&message.topic, self.strategy, random, reach, &mut targets);
        // [MQTT-3.8.3-3] no-local: not sent back to the publisher.
        targets.retain(|t| !(t.options.no_local && *Inbox::owner(&*t.mailbox) == message.origin));
        // Group the plain subscriptions of each session together; shared ones stay apart.
        targets.sort_unstable_by_key(|t| (t.shared.is_some(), Arc::as_ptr(&t.mailbox) as usize));

        let mut outcome = RouteOutcome::default();
        let mut rest = targets.as_slice();
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
            let delivery = merge(message, group);
            outcome.record(Inbox::push(&*first.mailbox, delivery, limits));
        }
        outcome
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

/// One delivery for the subscriptions of one session that matched.
fn merge(message: &Arc<Message>, targets: &[Target]) -> Delivery {
    let qos = targets
        .iter()
        .map(|t| t.options.qos)
        .max()
        .unwrap_or_default();
    // [MQTT-3.3.1-12] [MQTT-3.3.1-13] RETAIN is kept only for retain-as-published.
    let retain = message.retain && targets.iter().any(|t| t.options.retain_as_published);
    Delivery {
        message: message.clone(),
        // [MQTT-3.8.4-8] delivered at the lower of the publish and subscription QoS.
        qos: qos.min(message.qos),
        retain,
        subscription_ids: targets.iter().filter_map(|t| t.identifier).collect(),
        shared: targets.first().and_then(|t| t.shared.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QueueFullPolicy;
    use bytes::Bytes;
    use midge_proto::QoS;

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

    fn drain(mailbox: &Mailbox) -> Vec<Delivery> {
        let mut out = Vec::new();
        mailbox.pop_batch(usize::MAX, usize::MAX, &mut out);
        out
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
        use std::sync::atomic::AtomicBool;
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
