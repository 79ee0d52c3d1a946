//! A large filter's plain subscriptions as routing reads them: one shared set, and which
//! of its subscribers take a QoS 0 message now (those whose queues are full and refuse it
//! are skipped, each counted as a dropped delivery).

use std::ops::Deref;
use std::sync::{Arc, Mutex};

use midge_proto::SubscriptionOptions;

use crate::mailbox::{self, Mailbox};
use crate::model::QueueLimits;

/// One subscription as the trie holds it.
#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
    pub(crate) mailbox: Arc<Mailbox>,
    pub(crate) options: SubscriptionOptions,
    pub(crate) identifier: Option<u32>,
}

/// A filter's plain subscriptions as routing reads them, built by the first match after
/// a change (under the trie's read lock; building clones the subscribers and takes no
/// other lock) and dropped by the next change (under the write lock). A route still
/// holding an older one delivers as if it had matched just before the change, as with
/// targets collected before it.
pub(crate) type Snapshot = Arc<SubscriberSet>;

/// The subscribers of a [`Snapshot`], and which of them take QoS 0 now.
#[derive(Debug)]
pub(crate) struct SubscriberSet {
    subscribers: Box<[Subscriber]>,
    /// The last [`Takers`] made, kept until a queue starts or stops refusing QoS 0
    /// ([`mailbox::refusals`]) or the queue limits change. A leaf lock: making them reads
    /// the queues' lock-free state and takes nothing else.
    takers: Mutex<Option<Arc<Takers>>>,
}

impl FromIterator<Subscriber> for SubscriberSet {
    fn from_iter<I: IntoIterator<Item = Subscriber>>(iter: I) -> Self {
        Self {
            subscribers: iter.into_iter().collect(),
            takers: Mutex::default(),
        }
    }
}

impl Deref for SubscriberSet {
    type Target = [Subscriber];

    fn deref(&self) -> &[Subscriber] {
        &self.subscribers
    }
}

impl SubscriberSet {
    /// Which subscribers a QoS 0 message pushed with `limits` may be queued for: all but
    /// those whose queues refuse it for being full ([`Mailbox::refuses_qos0`]). Ten
    /// thousand subscribers that stopped reading then cost a message one count, not ten
    /// thousand queue visits. None when every subscriber is to be visited (none skipped,
    /// or memory pressure, under which pushes to full queues also shrink them).
    pub(crate) fn qos0_takers(&self, limits: &QueueLimits) -> Option<Arc<Takers>> {
        let takers = {
            let mut kept = self.takers.lock().unwrap_or_else(|e| e.into_inner());
            // Read before the queues: a change during the pass shows at the next message.
            let refusals = mailbox::refusals();
            match kept.as_ref() {
                Some(t) if t.refusals == refusals && t.max_messages == limits.max_messages => {
                    t.clone()
                }
                _ => {
                    let made = Arc::new(Takers::of(&self.subscribers, limits, refusals));
                    *kept = Some(made.clone());
                    made
                }
            }
        };
        let probe = takers.probe.as_ref()?;
        (!probe.under_pressure()).then_some(takers)
    }
}

/// The subscribers of a set that take QoS 0 at one [`mailbox::refusals`] count.
#[derive(Debug)]
pub(crate) struct Takers {
    refusals: u64,
    max_messages: usize,
    /// Their places in the set, in order (empty when nobody is skipped: then `probe` is
    /// None and these are not used).
    indices: Box<[usize]>,
    /// One skipped queue: all of a broker's queues count against the same memory
    /// budget, so its pressure says whether skipping holds. None: nobody skipped.
    probe: Option<Arc<Mailbox>>,
}

impl Takers {
    fn of(subscribers: &[Subscriber], limits: &QueueLimits, refusals: u64) -> Self {
        // Made at the first skipped subscriber: where none is (other queues' refusals
        // moved the count), this costs the pass and no allocation.
        let mut indices: Option<Vec<usize>> = None;
        let mut probe = None;
        for (i, s) in subscribers.iter().enumerate() {
            // A no-local subscriber may be the publisher, which is skipped, not dropped:
            // it stays visited, so the count of drops stays exact.
            if !s.options.no_local && s.mailbox.refuses_qos0(limits) {
                probe.get_or_insert_with(|| s.mailbox.clone());
                indices.get_or_insert_with(|| {
                    let mut taken = Vec::with_capacity(subscribers.len());
                    taken.extend(0..i);
                    taken
                });
            } else if let Some(taken) = indices.as_mut() {
                taken.push(i);
            }
        }
        Self {
            refusals,
            max_messages: limits.max_messages,
            indices: indices.unwrap_or_default().into_boxed_slice(),
            probe,
        }
    }

    /// How many are taken out: each is a dropped delivery.
    pub(crate) fn skipped(&self, set: &SubscriberSet) -> usize {
        set.len() - self.indices.len()
    }

    /// How many take the message.
    pub(crate) fn len(&self) -> usize {
        self.indices.len()
    }

    /// The subscribers that take the message, from `set` (the one these were made of).
    pub(crate) fn of_set<'a>(
        &'a self,
        set: &'a SubscriberSet,
    ) -> impl Iterator<Item = &'a Subscriber> {
        self.indices.iter().map(|&i| &set[i])
    }
}
