//! A session's inbox: the bounded queue routing pushes deliveries onto, and the wake-up
//! for the connection that drains it. The mailbox outlives connections: while a persistent
//! session is offline its messages queue here, and the next connection drains them.
//!
//! While its session is persistent (expiry above 0) the mailbox records each QoS 1/2
//! delivery it queues, and each it drops, in the session's [`SessionJournal`], under its
//! lock, so the store sees a queue's changes in the order they happened. Every delivery
//! carries a sequence number that orders the queue in the store.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};

use midge_proto::QoS;
use tokio::sync::oneshot;

use crate::config::QueueFullPolicy;
use crate::memory::MemoryBudget;
use crate::model::{Delivery, Message, QueueLimits, ShrinkSparse, next_session_id};
use crate::store::{Journal, SessionJournal};

/// An emptied queue with room for more than this many deliveries gives its memory back.
const KEEP_QUEUE_CAPACITY: usize = 16;

/// Under memory pressure, a queue holding this many bytes (as the budget counts them) is
/// behind: QoS 0 is no longer queued on it. A subscriber keeping up holds a few
/// deliveries at most (those of one read of a publisher's, or one `$SYS` update, before
/// its connection runs).
pub const BEHIND_BYTES: usize = 64 * 1024;

/// What one queued delivery costs beyond its message, which every queue holding it shares
/// and which counts once (`model::Charge`): its slot in the queue.
pub const DELIVERY_OVERHEAD: usize = std::mem::size_of::<Queued>();

/// Counts every queue starting or stopping to refuse QoS 0 for being full (see
/// [`Mailbox::refuses_qos0`]). Routing keeps, for each filter with many subscribers, which
/// of them take QoS 0 now, and works that out again only when this has moved: a message then
/// skips thousands of dead subscribers' full queues (counting a drop for each) instead of
/// visiting each one.
static REFUSALS: AtomicU64 = AtomicU64::new(0);

/// The count of [`REFUSALS`] now.
pub fn refusals() -> u64 {
    REFUSALS.load(Ordering::Acquire)
}

/// A queued delivery and its place in the queue.
#[derive(Debug, Clone)]
pub struct Queued {
    /// Queue sequence number, increasing per mailbox (the key of its row in the store).
    pub seq: u64,
    /// The delivery.
    pub delivery: Delivery,
}

/// Exact-size copies of messages made by [`Mailbox::compact`], by the original's address.
/// Both are held weakly: an entry is good while the original lives (so its address is not
/// reused) and the copy is still held somewhere.
#[derive(Debug, Default)]
pub struct Copies(std::collections::HashMap<usize, (Weak<Message>, Weak<Message>)>);

impl Copies {
    /// The copy of `message`, made now if there is none.
    fn copy_of(&mut self, message: &Arc<Message>) -> Arc<Message> {
        let key = Arc::as_ptr(message) as usize;
        if let Some(copy) = self.0.get(&key).and_then(|(_, copy)| copy.upgrade()) {
            return copy;
        }
        let copy = Arc::new(message.compacted());
        self.0
            .insert(key, (Arc::downgrade(message), Arc::downgrade(&copy)));
        copy
    }

    /// Forgets the copies of messages that are gone, or whose copies are, and gives back
    /// the room a storm of them left (a weak entry also keeps its message's allocation).
    pub fn forget_gone(&mut self) {
        self.0
            .retain(|_, (original, copy)| original.strong_count() > 0 && copy.strong_count() > 0);
        self.0.shrink_sparse();
    }

    /// Messages with a copy.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no message has a copy.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued; `evicted` older deliveries were dropped to make room.
    Queued {
        /// Deliveries dropped to make room (QoS 0 first, then per policy).
        evicted: usize,
    },
    /// Not queued: the session is offline and it is QoS 0, or the queue is full.
    Dropped,
    /// Not queued: the session has ended.
    Closed,
}

/// Limits a queue sets for itself (an AMQP queue's `x-max-length`, `x-max-length-bytes`
/// and `x-overflow`), applied instead of the broker's to every delivery, whatever its QoS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OwnLimits {
    /// Most deliveries queued.
    pub max_messages: Option<usize>,
    /// Most payload bytes queued (RabbitMQ's `x-max-length-bytes` counts message bodies).
    pub max_bytes: Option<usize>,
    /// When full, drop the oldest (RabbitMQ's `drop-head`) rather than the newcomer
    /// (`reject-publish`).
    pub drop_head: bool,
}

/// What routing delivers to: a subscriber's bounded queue, with an owner id (for no-local
/// and shared groups) and whether anyone is draining it now. It assumes nothing about who
/// drains it: an MQTT connection serving a session today (through [`Mailbox::pop_queued`]
/// and [`Mailbox::poll_notified`]); an AMQP queue, drained by its consumers, would be
/// another implementation. [`Mailbox`] is the one in use.
pub trait Inbox: Send + Sync + fmt::Debug {
    /// Client id (or queue name) owning the inbox.
    fn owner(&self) -> &Arc<str>;

    /// Queues a delivery within `limits`, waking whoever drains the inbox.
    fn push(&self, delivery: Delivery, limits: &QueueLimits) -> PushOutcome;

    /// Whether a consumer is attached now.
    fn is_online(&self) -> bool;
}

impl Inbox for Mailbox {
    fn owner(&self) -> &Arc<str> {
        self.client_id()
    }

    fn push(&self, delivery: Delivery, limits: &QueueLimits) -> PushOutcome {
        Mailbox::push(self, delivery, limits)
    }

    fn is_online(&self) -> bool {
        Mailbox::is_online(self)
    }
}

/// A delivery, or what makes one: [`Mailbox::push`] decides from the message and
/// the QoS whether it is queued, and only then makes it.
pub trait ToDeliver {
    /// The message delivered.
    fn message(&self) -> &Message;
    /// The QoS it is delivered at.
    fn qos(&self) -> QoS;
    /// The delivery itself.
    fn make(self) -> Delivery;
}

impl ToDeliver for Delivery {
    fn message(&self) -> &Message {
        &self.message
    }

    fn qos(&self) -> QoS {
        self.qos
    }

    fn make(self) -> Delivery {
        self
    }
}

/// An instruction for the connection currently serving this session.
#[derive(Debug)]
pub enum Control {
    /// Another connection is taking the session over: send DISCONNECT 0x8E, end the
    /// connection, hand the session back to the registry, then answer.
    TakeOver(oneshot::Sender<()>),
    /// An administrator disconnects the client: send DISCONNECT 0x98, end the connection
    /// as an abnormal close (the will is published); with `discard_session`, the session
    /// ends too instead of being kept.
    Kick {
        /// End the session as well.
        discard_session: bool,
    },
    /// The admin API asks who is connected: answer with the connection's details and
    /// carry on.
    Describe(oneshot::Sender<ConnectionDetail>),
}

/// A connection as the admin API shows it, answered by the connection itself through
/// [`Control::Describe`], so nothing is kept for it while nobody asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionDetail {
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// The listener it connected to.
    pub listener: String,
    /// `3.1`, `3.1.1` or `5.0`.
    pub protocol: &'static str,
    /// The user name it is known by (certificate identity, verified or given name).
    pub username: Option<String>,
    /// Keep alive in force, in seconds (0: none).
    pub keep_alive: u16,
    /// When CONNECT completed, in milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
    /// Bytes received from it and sent to it on this connection.
    pub bytes_received: u64,
    /// See `bytes_received`.
    pub bytes_sent: u64,
    /// Deliveries to it dropped on this connection (expired, too large, not authorized).
    pub dropped: u64,
    /// QoS 1/2 deliveries sent and not yet acknowledged.
    pub inflight: usize,
    /// Subscriptions of its session.
    pub subscriptions: usize,
}

#[derive(Debug)]
struct Inner {
    queue: VecDeque<Queued>,
    bytes: usize,
    /// What the memory budget counts for this queue's slots now (see
    /// [`Mailbox::account`]).
    charged: usize,
    /// Payload bytes queued: what RabbitMQ's `x-max-length-bytes` counts (the queue's
    /// own limits); `bytes` is the whole weight, for the session queue limits.
    body: usize,
    qos0: usize,
    online: bool,
    closed: bool,
    control: Option<Control>,
    /// The access rules changed: the serving connection checks its subscriptions again.
    recheck: bool,
    next_seq: u64,
    /// `next_seq` at the compaction sweep before the last (see [`Mailbox::compact`]).
    swept_to: u64,
    /// `next_seq` at the last compaction sweep.
    seen_to: u64,
    /// Whether the session is kept in the store (its expiry is above 0).
    persistent: bool,
    /// A wake-up not yet seen by the connection (like a `Notify` permit).
    notified: bool,
    /// The queue's own limits, used instead of the ones each push passes. Boxed: only
    /// AMQP queues have them, and a mailbox is in every MQTT session.
    own: Option<Box<OwnLimits>>,
    /// The waiting connection's waker. Kept here rather than in a `Notified` future so
    /// the connection's task holds no waiting state for it (see `poll_notified`).
    waker: Option<Waker>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            bytes: 0,
            charged: 0,
            body: 0,
            qos0: 0,
            online: false,
            closed: false,
            control: None,
            recheck: false,
            next_seq: 1,
            swept_to: 0,
            seen_to: 0,
            persistent: false,
            notified: false,
            own: None,
            waker: None,
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Mailbox {
    /// Whose mailbox this is, and where it is recorded.
    ident: Ident,
    /// A copy of `Inner::online`, written under the lock and read without it: routing
    /// reads it while holding the trie lock, where taking a mailbox lock would close a
    /// lock-order cycle (see ARCHITECTURE.md, "Lock hierarchy").
    online: AtomicBool,
    /// A copy of the queue's length, written under the lock and read without it: routing
    /// looks at it to see whether a subscriber has a backlog (see [`Mailbox::backlog`]).
    queued: AtomicUsize,
    /// Where the queue's bytes are counted with everything else client input holds.
    budget: Option<Arc<MemoryBudget>>,
    /// On the router's list of queues to compact (see [`Mailbox::mark_behind`]).
    behind: AtomicBool,
    /// The queue's length when it last refused a QoS 0 delivery for holding
    /// `max_messages`, while it still holds that many; 0 otherwise. Written under the lock
    /// (each change counted in [`REFUSALS`]), read without it.
    refused_at: AtomicU32,
    inner: Mutex<Inner>,
}

/// A mailbox's client id and session incarnation id, held once: a session's journal
/// carries both, so a mailbox with one keeps them there (a mailbox is in every session,
/// and this makes it 24 bytes smaller).
#[derive(Debug)]
enum Ident {
    /// The broker has a store: the session's journal, used while `Inner::persistent`.
    Stored(SessionJournal),
    Plain {
        client_id: Arc<str>,
        /// Which incarnation of the client id this is: a session replaced by a new one
        /// with the same client id gets a new mailbox and id, so the store can tell their
        /// changes apart.
        session_id: u64,
    },
}

impl Mailbox {
    /// A new, empty, offline mailbox that records nothing and counts against no budget.
    pub fn new(client_id: Arc<str>) -> Arc<Self> {
        Self::with_store(client_id, None, None)
    }

    /// A new, empty, offline mailbox whose session is stored through `store` once it is
    /// persistent (see [`Mailbox::persist`]), and whose queue counts against `budget`.
    pub fn with_store(
        client_id: Arc<str>,
        store: Option<&Journal>,
        budget: Option<&Arc<MemoryBudget>>,
    ) -> Arc<Self> {
        let session_id = next_session_id();
        Self::build(client_id, session_id, store, budget, Inner::default())
    }

    /// The mailbox of a session read back from the store: persistent, with its stored id,
    /// and sequence numbers continuing above `next_seq`.
    pub fn restored(
        client_id: Arc<str>,
        session_id: u64,
        store: &Journal,
        budget: Option<&Arc<MemoryBudget>>,
        next_seq: u64,
    ) -> Arc<Self> {
        let inner = Inner {
            next_seq,
            persistent: true,
            ..Inner::default()
        };
        Self::build(client_id, session_id, Some(store), budget, inner)
    }

    fn build(
        client_id: Arc<str>,
        session_id: u64,
        store: Option<&Journal>,
        budget: Option<&Arc<MemoryBudget>>,
        inner: Inner,
    ) -> Arc<Self> {
        let ident = match store {
            Some(store) => Ident::Stored(store.session(client_id, session_id)),
            None => Ident::Plain {
                client_id,
                session_id,
            },
        };
        Arc::new(Self {
            ident,
            online: AtomicBool::new(inner.online),
            queued: AtomicUsize::new(0),
            budget: budget.cloned(),
            behind: AtomicBool::new(false),
            refused_at: AtomicU32::new(0),
            inner: Mutex::new(inner),
        })
    }

    /// Brings the memory budget and the lock-free length up to date after the queue
    /// changed, and gives back most of a queue's room once it has drained to a quarter.
    /// Slots are counted by the queue's capacity, which is what it occupies (up to twice
    /// its length, as it grows by doubling), and only above [`KEEP_QUEUE_CAPACITY`]: a
    /// queue that a subscriber keeps up with, going from empty to a few and back with
    /// every message, changes the budget not at all.
    fn account(&self, inner: &mut Inner) {
        let len = inner.queue.len();
        self.queued.store(len, Ordering::Relaxed);
        let refused_at = self.refused_at.load(Ordering::Relaxed);
        if refused_at != 0 && (inner.closed || len < refused_at as usize) {
            // Room again (or gone): routing must visit this queue again.
            self.refused_at.store(0, Ordering::Release);
            REFUSALS.fetch_add(1, Ordering::AcqRel);
        }
        // A VecDeque never shrinks by itself: after one burst an idle session, or a dead
        // one whose QoS 0 the memory policy dropped, would keep room for all of it.
        inner.queue.shrink_sparse_above(KEEP_QUEUE_CAPACITY);
        if let Some(budget) = &self.budget {
            let now = match inner.queue.capacity() {
                slots if slots > KEEP_QUEUE_CAPACITY => slots * DELIVERY_OVERHEAD,
                _ => 0,
            };
            if now != inner.charged {
                budget.adjust(inner.charged as u64, now as u64);
                inner.charged = now;
            }
        }
    }

    /// Deliveries queued, read without the lock (a moment out of date at most): a
    /// subscriber that has some is behind (offline, or not reading as fast as it is sent
    /// to).
    pub fn backlog(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Marks the queue as being on the router's list of queues to compact; true if it was
    /// not (so the caller lists it). A relaxed load, and a swap only when it changes.
    pub fn mark_behind(&self) -> bool {
        !self.behind.load(Ordering::Relaxed) && !self.behind.swap(true, Ordering::Relaxed)
    }

    /// Takes the queue off the router's list; true if it should stay on it because it is
    /// still behind (then it stays marked).
    pub fn unmark_behind(&self, threshold: usize) -> bool {
        self.behind.store(false, Ordering::Relaxed);
        self.backlog() >= threshold && self.mark_behind()
    }

    /// Gives each delivery that has waited here through a whole compaction interval (it
    /// was queued before the previous sweep and has not been sent since) an exact-size copy
    /// of its message, so it no longer holds on to the read buffer its payload was sliced
    /// from: a subscriber that is behind must not pin its publishers' buffers, which
    /// the memory budget does not see (issue 9, defect 4). `copies` maps an original
    /// message (by address) to its copy, so a message queued in many slow queues is copied
    /// once. Each delivery is looked at in one sweep only. Returns how many deliveries got
    /// a copy. Takes only this mailbox's lock. A queue that took nothing in the interval
    /// before the last sweep (a full queue refusing everything, say) is not walked: its
    /// walk would find nothing to copy, and 10,000 such queues of 100 took 8-10 ms a sweep.
    pub fn compact(&self, copies: &mut Copies) -> usize {
        let mut inner = self.lock();
        let (from, to) = (inner.swept_to, inner.seen_to);
        inner.swept_to = to;
        inner.seen_to = inner.next_seq;
        if from >= to {
            return 0;
        }
        let mut copied = 0;
        for queued in inner.queue.iter_mut() {
            if queued.seq < from || queued.seq >= to {
                continue;
            }
            let message = &mut queued.delivery.message;
            let copy = copies.copy_of(message);
            if !Arc::ptr_eq(&copy, message) {
                *message = copy;
                copied += 1;
            }
        }
        copied
    }

    /// Bytes this queue's slots count against the memory budget now (its messages count
    /// once each, wherever they are held).
    pub fn charged_bytes(&self) -> usize {
        self.lock().charged
    }

    /// The client id of the session this mailbox belongs to.
    pub fn client_id(&self) -> &Arc<str> {
        match &self.ident {
            Ident::Stored(journal) => journal.client(),
            Ident::Plain { client_id, .. } => client_id,
        }
    }

    /// The session incarnation id.
    pub fn session_id(&self) -> u64 {
        match &self.ident {
            Ident::Stored(journal) => journal.session(),
            Ident::Plain { session_id, .. } => *session_id,
        }
    }

    /// Sets whether the session is stored, from its expiry interval: above 0 records the
    /// session (a connected one: no expiry deadline yet) and returns true, after which
    /// its changes go through [`Mailbox::store_journal`]; 0 removes a stored session.
    /// Without a store, nothing is recorded.
    pub fn persist(&self, expiry_interval: u32) -> bool {
        let Some(journal) = self.store_journal() else {
            return false;
        };
        let mut inner = self.lock();
        if expiry_interval > 0 {
            inner.persistent = true;
            journal.put(expiry_interval, None);
            true
        } else {
            if inner.persistent {
                journal.delete();
            }
            inner.persistent = false;
            false
        }
    }

    /// The journal this mailbox's session is recorded through when the broker has a
    /// store, whether or not the session is persistent now: for a serving session, which
    /// knows that from [`Mailbox::persist`] and reads this without the lock.
    pub fn store_journal(&self) -> Option<&SessionJournal> {
        match &self.ident {
            Ident::Stored(journal) => Some(journal),
            Ident::Plain { .. } => None,
        }
    }

    /// The session's journal while it is stored.
    pub fn journal(&self) -> Option<SessionJournal> {
        let journal = self.store_journal()?;
        self.lock().persistent.then(|| journal.clone())
    }

    /// A fresh sequence number (the resend order of an in-flight message).
    pub fn next_seq(&self) -> u64 {
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        seq
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding this lock leaves the queue consistent (every
        // mutation is a single push or pop), so poisoning is safe to ignore.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a delivery, applying the limits. Wakes the connection if the queue was empty.
    /// The delivery is made only if it is queued (see [`ToDeliver`]): routing to thousands
    /// of full queues (dead subscribers) then builds and drops no delivery for each (an
    /// `Arc` count up and down, and its subscription identifiers).
    pub fn push(&self, delivery: impl ToDeliver, limits: &QueueLimits) -> PushOutcome {
        let mut inner = self.lock();
        if inner.closed {
            return PushOutcome::Closed;
        }
        if let Some(own) = inner.own.as_deref().copied() {
            return self.push_within(inner, delivery, own);
        }
        let message = delivery.message();
        let is_qos0 = delivery.qos() == QoS::AtMostOnce;
        if is_qos0 && !inner.online && !limits.queue_qos0_offline {
            return PushOutcome::Dropped;
        }
        if is_qos0
            && inner.bytes + inner.queue.len() * DELIVERY_OVERHEAD >= BEHIND_BYTES
            && let Some(budget) = self.budget.as_ref().filter(|b| b.pressure())
        {
            // Over the memory budget: QoS 0 is not queued behind a backlog, so the slow
            // and dead consumers lose it while those keeping up do not. One queued QoS 0
            // goes too, so their backlogs shrink.
            if inner.qos0 > 0 {
                inner.remove_first_qos0();
                self.account(&mut inner);
            }
            budget.dropped_qos0.fetch_add(1, Ordering::Relaxed);
            return PushOutcome::Dropped;
        }
        // QoS 0 deliveries are never stored.
        let journal = self
            .store_journal()
            .filter(|_| inner.persistent && !is_qos0);
        if let Some(journal) = journal
            && !inner.online
            && journal.journal().is_full()
        {
            // [storage] max_stored_bytes reached: an offline session gets nothing new.
            journal.journal().count_full_drop();
            return PushOutcome::Dropped;
        }
        let weight = message.weight();
        let mut evicted = 0;
        while inner.is_full(limits, weight) {
            // Full: QoS 0 goes first, whether it is the newcomer or already queued.
            if is_qos0 {
                self.note_refusal(&inner, limits);
                return PushOutcome::Dropped;
            }
            if inner.qos0 > 0 {
                inner.remove_first_qos0();
            } else if limits.policy == QueueFullPolicy::DropOldest && !inner.queue.is_empty() {
                if let Some(old) = inner.pop_front()
                    && let Some(journal) = journal
                {
                    journal.dequeue(old.seq);
                }
            } else {
                // QoS 0 may have been evicted before this turn.
                self.account(&mut inner);
                return PushOutcome::Dropped;
            }
            evicted += 1;
        }
        self.enqueue(inner, delivery.make(), journal, evicted)
    }

    /// The end of a push: the delivery joins the queue (and the store, with `journal`).
    fn enqueue(
        &self,
        mut inner: MutexGuard<'_, Inner>,
        delivery: Delivery,
        journal: Option<&SessionJournal>,
        evicted: usize,
    ) -> PushOutcome {
        let was_empty = inner.queue.is_empty();
        inner.bytes += delivery.message.weight();
        inner.body += delivery.message.payload.len();
        inner.qos0 += usize::from(delivery.qos == QoS::AtMostOnce);
        let seq = inner.next_seq;
        inner.next_seq += 1;
        if let Some(journal) = journal {
            journal.enqueue(seq, &delivery);
        }
        inner.queue.push_back(Queued { seq, delivery });
        self.account(&mut inner);
        if was_empty && inner.online {
            Self::wake(inner);
        }
        PushOutcome::Queued { evicted }
    }

    /// Sets limits of the queue's own (see [`OwnLimits`]).
    pub fn set_own_limits(&self, limits: OwnLimits) {
        self.lock().own = Some(Box::new(limits));
    }

    /// A push within the queue's own limits: when full, the oldest delivery goes
    /// (`drop_head`) or the newcomer is refused.
    fn push_within(
        &self,
        mut inner: MutexGuard<'_, Inner>,
        delivery: impl ToDeliver,
        own: OwnLimits,
    ) -> PushOutcome {
        let body = delivery.message().payload.len();
        let mut evicted = 0;
        loop {
            let full = own.max_messages.is_some_and(|m| inner.queue.len() >= m)
                || own.max_bytes.is_some_and(|m| inner.body + body > m);
            if !full {
                break;
            }
            if !own.drop_head || inner.queue.is_empty() {
                // Deliveries may have been evicted before this turn.
                self.account(&mut inner);
                return PushOutcome::Dropped;
            }
            if let Some(old) = inner.pop_front()
                && old.delivery.qos != QoS::AtMostOnce
                && inner.persistent
                && let Some(journal) = self.store_journal()
            {
                journal.dequeue(old.seq);
            }
            evicted += 1;
        }
        let journal = self
            .store_journal()
            .filter(|_| inner.persistent && delivery.qos() != QoS::AtMostOnce);
        self.enqueue(inner, delivery.make(), journal, evicted)
    }

    /// Takes up to `max` deliveries from the front, stopping before a QoS 1/2 delivery
    /// when `qos_window` is 0 so order is kept. `qos_window` is how many QoS 1/2
    /// deliveries may still go in flight.
    pub fn pop_batch(&self, max: usize, qos_window: usize, out: &mut Vec<Delivery>) {
        let mut queued = Vec::new();
        self.pop_queued(max.saturating_sub(out.len()), qos_window, &mut queued);
        out.extend(queued.into_iter().map(|q| q.delivery));
    }

    /// [`Mailbox::pop_batch`] keeping each delivery's sequence number: the caller records
    /// where each goes (in flight, or dropped) in the session's journal.
    pub fn pop_queued(&self, max: usize, mut qos_window: usize, out: &mut Vec<Queued>) {
        let mut inner = self.lock();
        // At most this many, in one allocation rather than by doubling.
        out.reserve(max.saturating_sub(out.len()).min(inner.queue.len()));
        while out.len() < max {
            match inner.queue.front() {
                Some(q) if q.delivery.qos != QoS::AtMostOnce && qos_window == 0 => break,
                Some(q) => {
                    if q.delivery.qos != QoS::AtMostOnce {
                        qos_window -= 1;
                    }
                }
                None => break,
            }
            if let Some(queued) = inner.pop_front() {
                out.push(queued);
            }
        }
        self.account(&mut inner);
    }

    /// Returns deliveries to the front of the queue, in order (a connection that could not
    /// send them). Their rows never left the store.
    pub fn unpop(&self, deliveries: Vec<Queued>) {
        let mut inner = self.lock();
        for q in deliveries.into_iter().rev() {
            inner.bytes += q.delivery.message.weight();
            inner.body += q.delivery.message.payload.len();
            inner.qos0 += usize::from(q.delivery.qos == QoS::AtMostOnce);
            inner.queue.push_front(q);
        }
        self.account(&mut inner);
    }

    /// Puts back a stored queue at start (oldest first), applying the limits as pushes
    /// would. Returns how many were dropped to fit (recorded as dequeued).
    pub fn restore(&self, queue: Vec<(u64, Delivery)>, limits: &QueueLimits) -> usize {
        let mut inner = self.lock();
        let mut dropped = 0;
        for (seq, delivery) in queue {
            let weight = delivery.message.weight();
            if inner.is_full(limits, weight) {
                dropped += 1;
                if let Some(journal) = self.store_journal() {
                    journal.dequeue(seq);
                }
                continue;
            }
            inner.bytes += weight;
            inner.body += delivery.message.payload.len();
            inner.qos0 += usize::from(delivery.qos == QoS::AtMostOnce);
            inner.next_seq = inner.next_seq.max(seq.saturating_add(1));
            inner.queue.push_back(Queued { seq, delivery });
        }
        self.account(&mut inner);
        dropped
    }

    /// Number of queued deliveries.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }

    /// Marks the session connected or not. Going online wakes the connection.
    pub fn set_online(&self, online: bool) {
        let mut inner = self.lock();
        inner.online = online;
        self.online.store(online, Ordering::Release);
        if online {
            // A control meant for a previous connection must not reach the next one.
            inner.control = None;
            Self::wake(inner);
        }
    }

    /// Whether the session this mailbox belonged to has ended.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Records that the queue refused a QoS 0 delivery, when it did for holding
    /// `max_messages` (a byte limit depends on the message): until it shrinks, every QoS 0
    /// delivery will be refused, whatever its size. Called under the lock, by `push` only
    /// (a queue with limits of its own pushes through `push_within` instead).
    fn note_refusal(&self, inner: &Inner, limits: &QueueLimits) {
        let len = inner.queue.len();
        if limits.max_messages > 0
            && len >= limits.max_messages
            && self.refused_at.load(Ordering::Relaxed) == 0
            && let Ok(at) = u32::try_from(len)
        {
            self.refused_at.store(at, Ordering::Release);
            REFUSALS.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Whether a QoS 0 delivery pushed now with `limits` would be refused for a full queue,
    /// read without the lock (a moment out of date at most; each change is counted in
    /// [`refusals`], read before this): the queue refused one when it held as many as it
    /// does now, and `limits` allow no more than that. Never true under memory pressure,
    /// where pushes to a queue that is behind also shrink it ([`Mailbox::push`]).
    pub fn refuses_qos0(&self, limits: &QueueLimits) -> bool {
        let at = self.refused_at.load(Ordering::Acquire) as usize;
        at != 0 && limits.max_messages > 0 && at >= limits.max_messages && !self.under_pressure()
    }

    /// Whether the memory budget this queue counts against is over its limit.
    pub fn under_pressure(&self) -> bool {
        self.budget.as_ref().is_some_and(|b| b.pressure())
    }

    /// Whether a connection is currently serving the session. Takes no lock: a hint
    /// that may be a moment out of date, which is all picking a shared member needs.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    /// Ends the mailbox: queued deliveries are returned, later pushes are refused, and a
    /// stored session is deleted from the store.
    pub fn close(&self) -> Vec<Delivery> {
        let mut inner = self.lock();
        inner.closed = true;
        inner.online = false;
        self.online.store(false, Ordering::Release);
        inner.bytes = 0;
        inner.body = 0;
        inner.qos0 = 0;
        if inner.persistent
            && let Some(journal) = self.store_journal()
        {
            journal.delete();
        }
        inner.persistent = false;
        let queued = inner.queue.drain(..).map(|q| q.delivery).collect();
        self.account(&mut inner);
        queued
    }

    /// Drops queued deliveries for which `keep` is false; returns how many.
    pub fn retain_deliveries(&self, mut keep: impl FnMut(&Delivery) -> bool) -> usize {
        let mut inner = self.lock();
        let before = inner.queue.len();
        let mut bytes = 0;
        let mut body = 0;
        let mut qos0 = 0;
        let journal = self.store_journal().filter(|_| inner.persistent);
        inner.queue.retain(|q| {
            let d = &q.delivery;
            let k = keep(d);
            if k {
                bytes += d.message.weight();
                body += d.message.payload.len();
                qos0 += usize::from(d.qos == QoS::AtMostOnce);
            } else if d.qos != QoS::AtMostOnce
                && let Some(journal) = journal
            {
                journal.dequeue(q.seq);
            }
            k
        });
        inner.bytes = bytes;
        inner.body = body;
        inner.qos0 = qos0;
        self.account(&mut inner);
        before - inner.queue.len()
    }

    /// Takes out the queued deliveries for which `take` is true, in order, keeping their
    /// rows in the store: the caller hands them elsewhere without holding this lock, then
    /// reports each with [`Mailbox::forget_stored`] or gives it back with
    /// [`Mailbox::reinsert`].
    pub fn take_deliveries(&self, mut take: impl FnMut(&Delivery) -> bool) -> Vec<Queued> {
        let mut inner = self.lock();
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(inner.queue.len());
        for q in std::mem::take(&mut inner.queue) {
            if take(&q.delivery) {
                taken.push(q);
            } else {
                kept.push_back(q);
            }
        }
        inner.queue = kept;
        for q in &taken {
            inner.bytes -= q.delivery.message.weight();
            inner.body -= q.delivery.message.payload.len();
            inner.qos0 -= usize::from(q.delivery.qos == QoS::AtMostOnce);
        }
        self.account(&mut inner);
        taken
    }

    /// Records that a delivery taken with [`Mailbox::take_deliveries`] left this queue
    /// for good.
    pub fn forget_stored(&self, seq: u64) {
        let inner = self.lock();
        if inner.persistent
            && let Some(journal) = self.store_journal()
        {
            journal.dequeue(seq);
        }
    }

    /// Puts back deliveries taken with [`Mailbox::take_deliveries`], each in its place by
    /// sequence number. Their rows never left the store. Refused once the mailbox closed.
    pub fn reinsert(&self, deliveries: Vec<Queued>) -> PushOutcome {
        if deliveries.is_empty() {
            return PushOutcome::Queued { evicted: 0 };
        }
        let mut inner = self.lock();
        if inner.closed {
            return PushOutcome::Closed;
        }
        let was_empty = inner.queue.is_empty();
        for q in deliveries {
            inner.bytes += q.delivery.message.weight();
            inner.body += q.delivery.message.payload.len();
            inner.qos0 += usize::from(q.delivery.qos == QoS::AtMostOnce);
            let at = inner.queue.partition_point(|e| e.seq < q.seq);
            inner.queue.insert(at, q);
        }
        self.account(&mut inner);
        if was_empty && inner.online {
            Self::wake(inner);
        }
        PushOutcome::Queued { evicted: 0 }
    }

    /// Sends an instruction to the serving connection and wakes it.
    pub fn send_control(&self, control: Control) {
        let mut inner = self.lock();
        inner.control = Some(control);
        Self::wake(inner);
    }

    /// Sends `control` unless another one is pending (a takeover, which ends the
    /// connection anyway and must not lose its answer); returns whether it was sent.
    pub fn offer_control(&self, control: Control) -> bool {
        let mut inner = self.lock();
        if inner.control.is_some() {
            return false;
        }
        inner.control = Some(control);
        Self::wake(inner);
        true
    }

    /// Wakes the serving connection without anything new to deliver (it then looks at
    /// what else changed, such as a shutdown).
    pub fn wake_connection(&self) {
        Self::wake(self.lock());
    }

    /// Asks the serving connection to authorize its subscriptions again (the ACL was
    /// reloaded), and wakes it.
    pub fn request_recheck(&self) {
        let mut inner = self.lock();
        inner.recheck = true;
        Self::wake(inner);
    }

    /// Takes a pending request to check the subscriptions again.
    pub fn take_recheck(&self) -> bool {
        std::mem::take(&mut self.lock().recheck)
    }

    /// Takes a pending instruction, if any.
    pub fn take_control(&self) -> Option<Control> {
        self.lock().control.take()
    }

    /// Ready when the mailbox has something new (deliveries or a control) since the last
    /// time it was; otherwise the waker is kept and woken then. A wake-up before anyone
    /// polls is kept, as a `Notify` keeps a permit.
    pub fn poll_notified(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.lock();
        if std::mem::take(&mut inner.notified) {
            return Poll::Ready(());
        }
        match &mut inner.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            none => *none = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Resolves when the mailbox has something new; see [`Mailbox::poll_notified`].
    pub async fn notified(&self) {
        std::future::poll_fn(|cx| self.poll_notified(cx)).await;
    }

    /// Forgets the waiting connection's waker, which would otherwise keep the ended
    /// connection's task allocated as long as the mailbox lives.
    pub fn forget_waker(&self) {
        self.lock().waker = None;
    }

    fn wake(mut inner: MutexGuard<'_, Inner>) {
        inner.notified = true;
        let waker = inner.waker.take();
        drop(inner);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        // A mailbox dropped with deliveries in it (never closed) gives their count back.
        if let Some(budget) = &self.budget {
            let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
            budget.release(inner.charged as u64);
        }
    }
}

impl Inner {
    fn is_full(&self, limits: &QueueLimits, weight: usize) -> bool {
        (limits.max_messages > 0 && self.queue.len() >= limits.max_messages)
            || (limits.max_bytes > 0
                && !self.queue.is_empty()
                && self.bytes + weight > limits.max_bytes)
    }

    fn pop_front(&mut self) -> Option<Queued> {
        let q = self.queue.pop_front()?;
        self.bytes -= q.delivery.message.weight();
        self.body -= q.delivery.message.payload.len();
        self.qos0 -= usize::from(q.delivery.qos == QoS::AtMostOnce);
        // The room it leaves is given back by `Mailbox::account`, which every caller runs.
        Some(q)
    }

    fn remove_first_qos0(&mut self) {
        if let Some(i) = self
            .queue
            .iter()
            .position(|q| q.delivery.qos == QoS::AtMostOnce)
            && let Some(q) = self.queue.remove(i)
        {
            self.bytes -= q.delivery.message.weight();
            self.body -= q.delivery.message.payload.len();
            self.qos0 -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn taken_deliveries_go_back_in_their_places() {
        use bytes::Bytes;
        let limits = QueueLimits {
            max_messages: 10,
            max_bytes: 0,
            policy: QueueFullPolicy::DropNew,
            queue_qos0_offline: true,
        };
        let mailbox = Mailbox::new("c".into());
        for (i, shared) in [None, Some("$share/g/t"), None, Some("$share/g/t")]
            .into_iter()
            .enumerate()
        {
            let mut m = crate::model::Message::internal(
                format!("t/{i}"),
                Bytes::from_static(b"x"),
                false,
                0,
            );
            m.qos = QoS::AtLeastOnce;
            let d = Delivery {
                message: Arc::new(m),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: Vec::new(),
                shared: shared.map(Into::into),
            };
            mailbox.push(d, &limits);
        }
        let taken = mailbox.take_deliveries(|d| d.shared.is_some());
        assert_eq!(taken.iter().map(|q| q.seq).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(mailbox.len(), 2);
        mailbox.reinsert(taken);
        let mut out = Vec::new();
        mailbox.pop_batch(10, 10, &mut out);
        let topics: Vec<_> = out.iter().map(|d| d.message.topic.to_string()).collect();
        assert_eq!(topics, ["t/0", "t/1", "t/2", "t/3"]);
        assert!(mailbox.is_empty());
        // The byte count followed the deliveries out and back in: nothing is left over.
        assert_eq!(mailbox.lock().bytes, 0);
    }

    use super::*;
    use crate::model::Message;
    use bytes::Bytes;

    /// A mailbox is in every session: with its `Arc` header it fits a 224-byte heap chunk
    /// (glibc's chunks are the size plus 8, rounded up to 16). It took 288 while the
    /// AMQP-only queue limits sat in it unboxed, and 256 while it kept its client id and
    /// session id beside the journal that has them too (`Ident`).
    #[test]
    fn a_mailbox_fits_a_224_byte_chunk() {
        let size = std::mem::size_of::<Mailbox>();
        let chunk = (16 + size + 8).next_multiple_of(16);
        assert!(chunk <= 224, "mailbox {size} bytes, heap chunk {chunk}");
    }

    fn delivery(qos: QoS, payload: &'static str) -> Delivery {
        let message =
            Message::internal("t".into(), Bytes::from_static(payload.as_bytes()), false, 0);
        Delivery {
            message: Arc::new(message),
            qos,
            retain: false,
            subscription_ids: vec![],
            shared: None,
        }
    }

    /// A queue's own limits hold whatever the QoS and whatever limits a push passes:
    /// drop-head drops the oldest (a QoS 1 one before a newer QoS 0 one), reject-publish
    /// the newcomer; a byte limit counts like the broker's.
    #[test]
    fn own_limits_drop_the_head_or_refuse_the_newcomer() {
        let broker_limits = QueueLimits {
            max_messages: 1000,
            max_bytes: 0,
            policy: QueueFullPolicy::DropNew,
            queue_qos0_offline: true,
        };
        let contents = |m: &Mailbox| {
            let mut out = Vec::new();
            m.pop_batch(100, 100, &mut out);
            let texts: Vec<String> = out
                .iter()
                .map(|d| String::from_utf8_lossy(&d.message.payload).into_owned())
                .collect();
            m.unpop(
                out.into_iter()
                    .enumerate()
                    .map(|(i, delivery)| Queued {
                        seq: i as u64,
                        delivery,
                    })
                    .collect(),
            );
            texts
        };
        let head = Mailbox::new("q".into());
        head.set_online(true);
        head.set_own_limits(OwnLimits {
            max_messages: Some(2),
            max_bytes: None,
            drop_head: true,
        });
        head.push(delivery(QoS::AtLeastOnce, "a"), &broker_limits);
        head.push(delivery(QoS::AtMostOnce, "b"), &broker_limits);
        let outcome = head.push(delivery(QoS::AtMostOnce, "c"), &broker_limits);
        assert_eq!(outcome, PushOutcome::Queued { evicted: 1 });
        assert_eq!(contents(&head), ["b", "c"]);

        let reject = Mailbox::new("r".into());
        reject.set_online(true);
        reject.set_own_limits(OwnLimits {
            max_messages: Some(2),
            max_bytes: None,
            drop_head: false,
        });
        for p in ["a", "b"] {
            reject.push(delivery(QoS::AtMostOnce, p), &broker_limits);
        }
        let outcome = reject.push(delivery(QoS::AtLeastOnce, "c"), &broker_limits);
        assert_eq!(outcome, PushOutcome::Dropped);
        assert_eq!(contents(&reject), ["a", "b"]);

        // Bodies count (as in RabbitMQ), not the topic: 2 bytes each, 5 hold two.
        let bytes = Mailbox::new("b".into());
        bytes.set_online(true);
        bytes.set_own_limits(OwnLimits {
            max_messages: None,
            max_bytes: Some(5),
            drop_head: true,
        });
        for p in ["aa", "bb", "cc"] {
            bytes.push(delivery(QoS::AtLeastOnce, p), &broker_limits);
        }
        assert_eq!(contents(&bytes), ["bb", "cc"]);
        // Zero messages allowed: nothing is kept.
        let none = Mailbox::new("n".into());
        none.set_own_limits(OwnLimits {
            max_messages: Some(0),
            max_bytes: None,
            drop_head: true,
        });
        assert_eq!(
            none.push(delivery(QoS::AtLeastOnce, "x"), &broker_limits),
            PushOutcome::Dropped
        );
        assert!(none.is_empty());
    }

    fn limits(max_messages: usize, policy: QueueFullPolicy) -> QueueLimits {
        QueueLimits {
            max_messages,
            max_bytes: 0,
            policy,
            queue_qos0_offline: false,
        }
    }

    fn payloads(mailbox: &Mailbox) -> Vec<Bytes> {
        let mut out = Vec::new();
        mailbox.pop_batch(usize::MAX, usize::MAX, &mut out);
        out.into_iter().map(|d| d.message.payload.clone()).collect()
    }

    #[test]
    fn offline_session_drops_qos0_and_queues_qos1() {
        let mailbox = Mailbox::new("c".into());
        let l = limits(10, QueueFullPolicy::DropNew);
        assert_eq!(
            mailbox.push(delivery(QoS::AtMostOnce, "a"), &l),
            PushOutcome::Dropped
        );
        assert_eq!(
            mailbox.push(delivery(QoS::AtLeastOnce, "b"), &l),
            PushOutcome::Queued { evicted: 0 }
        );
        assert_eq!(payloads(&mailbox), vec!["b"]);
    }

    #[test]
    fn full_queue_evicts_qos0_before_applying_policy() {
        let mailbox = Mailbox::new("c".into());
        mailbox.set_online(true);
        let l = limits(2, QueueFullPolicy::DropNew);
        mailbox.push(delivery(QoS::AtMostOnce, "zero"), &l);
        mailbox.push(delivery(QoS::AtLeastOnce, "one"), &l);
        // Full: a new QoS 0 is dropped, a new QoS 1 evicts the queued QoS 0.
        assert_eq!(
            mailbox.push(delivery(QoS::AtMostOnce, "zero2"), &l),
            PushOutcome::Dropped
        );
        assert_eq!(
            mailbox.push(delivery(QoS::ExactlyOnce, "two"), &l),
            PushOutcome::Queued { evicted: 1 }
        );
        // Full of QoS 1/2 with drop-new: the newcomer is dropped.
        assert_eq!(
            mailbox.push(delivery(QoS::AtLeastOnce, "three"), &l),
            PushOutcome::Dropped
        );
        assert_eq!(payloads(&mailbox), vec!["one", "two"]);
    }

    #[test]
    fn drop_oldest_policy_keeps_the_newest() {
        let mailbox = Mailbox::new("c".into());
        let l = limits(2, QueueFullPolicy::DropOldest);
        for p in ["1", "2", "3"] {
            mailbox.push(delivery(QoS::AtLeastOnce, p), &l);
        }
        assert_eq!(payloads(&mailbox), vec!["2", "3"]);
    }

    #[test]
    fn byte_limit_applies() {
        let mailbox = Mailbox::new("c".into());
        let l = QueueLimits {
            max_messages: 0,
            max_bytes: 6,
            policy: QueueFullPolicy::DropNew,
            queue_qos0_offline: false,
        };
        // weight = payload + topic ("t").
        assert!(matches!(
            mailbox.push(delivery(QoS::AtLeastOnce, "aa"), &l),
            PushOutcome::Queued { .. }
        ));
        assert!(matches!(
            mailbox.push(delivery(QoS::AtLeastOnce, "bb"), &l),
            PushOutcome::Queued { .. }
        ));
        assert_eq!(
            mailbox.push(delivery(QoS::AtLeastOnce, "cc"), &l),
            PushOutcome::Dropped
        );
    }

    #[test]
    fn pop_batch_stops_at_closed_window_to_keep_order() {
        let mailbox = Mailbox::new("c".into());
        mailbox.set_online(true);
        let l = limits(0, QueueFullPolicy::DropNew);
        mailbox.push(delivery(QoS::AtMostOnce, "a"), &l);
        mailbox.push(delivery(QoS::AtLeastOnce, "b"), &l);
        mailbox.push(delivery(QoS::AtMostOnce, "c"), &l);
        let mut out = Vec::new();
        mailbox.pop_batch(10, 0, &mut out);
        assert_eq!(out.len(), 1);
        mailbox.pop_batch(10, 1, &mut out);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn closed_mailbox_refuses_pushes() {
        let mailbox = Mailbox::new("c".into());
        let l = limits(0, QueueFullPolicy::DropNew);
        mailbox.push(delivery(QoS::AtLeastOnce, "a"), &l);
        assert_eq!(mailbox.close().len(), 1);
        assert_eq!(
            mailbox.push(delivery(QoS::AtLeastOnce, "b"), &l),
            PushOutcome::Closed
        );
    }

    /// A delivery whose message counts in `budget`, as `Broker::publish` makes them.
    fn charged(budget: &Arc<MemoryBudget>, qos: QoS, payload: &'static str) -> Delivery {
        let mut d = delivery(qos, payload);
        let mut message = Message::clone(&d.message);
        message.charge = crate::model::Charge::new(budget, message.footprint());
        d.message = Arc::new(message);
        d
    }

    fn budgeted() -> (Arc<MemoryBudget>, Arc<Mailbox>) {
        let budget = Arc::new(MemoryBudget::new(1 << 20));
        let mailbox = Mailbox::with_store("c".into(), None, Some(&budget));
        (budget, mailbox)
    }

    /// What a queue's slots count (see `Mailbox::account`): its capacity, above
    /// `KEEP_QUEUE_CAPACITY`.
    fn slots(mailbox: &Mailbox) -> u64 {
        match mailbox.lock().queue.capacity() {
            c if c > KEEP_QUEUE_CAPACITY => (c * DELIVERY_OVERHEAD) as u64,
            _ => 0,
        }
    }

    #[test]
    fn queued_messages_count_once_and_each_delivery_its_slot() {
        let (budget, mailbox) = budgeted();
        let other = Mailbox::with_store("d".into(), None, Some(&budget));
        mailbox.set_online(true);
        let l = limits(0, QueueFullPolicy::DropNew);
        let shared = charged(&budget, QoS::AtLeastOnce, "abc");
        let footprint = shared.message.footprint();
        mailbox.push(shared.clone(), &l);
        other.push(shared, &l);
        // Enough more for the queue's slots to count.
        let fillers = 39;
        let filler: Vec<_> = (0..fillers)
            .map(|_| charged(&budget, QoS::AtMostOnce, "de"))
            .collect();
        let filler_footprint = filler[0].message.footprint();
        for d in filler {
            mailbox.push(d, &l);
        }
        let n = fillers + 1;
        // The shared message once, each other message once, and the slots: at least one
        // per queued delivery, as room for them is what the queue holds.
        let messages = footprint + fillers as u64 * filler_footprint;
        let expected = messages + slots(&mailbox) + slots(&other);
        assert_eq!(budget.used(), expected);
        assert!(slots(&mailbox) >= (n * DELIVERY_OVERHEAD) as u64);
        assert_eq!(slots(&other), 0, "a queue of one counts no slot");
        assert_eq!(mailbox.charged_bytes() as u64, slots(&mailbox));
        assert_eq!(mailbox.backlog(), n);
        // Taken out (in flight, say), the message still counts, and so does the room.
        let mut out = Vec::new();
        mailbox.pop_queued(2, 2, &mut out);
        assert_eq!(budget.used(), expected);
        mailbox.unpop(out);
        assert_eq!(budget.used(), expected);
        let taken = mailbox.take_deliveries(|d| d.qos == QoS::AtLeastOnce);
        mailbox.reinsert(taken);
        // Reinserting rebuilds the queue, at the room it needs.
        assert_eq!(budget.used(), messages + slots(&mailbox));
        assert_eq!(mailbox.charged_bytes() as u64, slots(&mailbox));
        // The QoS 0 messages leave for good: all of them are given back.
        mailbox.retain_deliveries(|d| d.qos == QoS::AtLeastOnce);
        assert_eq!(budget.used(), footprint);
        assert_eq!(
            mailbox.charged_bytes(),
            0,
            "an almost empty queue gives its room back and counts no slot"
        );
        assert!(mailbox.lock().queue.capacity() <= KEEP_QUEUE_CAPACITY);
        // The shared message counts until the last queue holding it lets go.
        drop(mailbox.close());
        assert_eq!(budget.used(), footprint);
        // A mailbox dropped with deliveries in it gives them back too.
        drop(other);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn under_pressure_qos0_is_dropped_behind_a_backlog_only() {
        let (budget, slow) = budgeted();
        let fast = Mailbox::with_store("f".into(), None, Some(&budget));
        slow.set_online(true);
        fast.set_online(true);
        let l = limits(0, QueueFullPolicy::DropNew);
        let behind = BEHIND_BYTES.div_ceil(DELIVERY_OVERHEAD + 7);
        for _ in 0..behind {
            slow.push(delivery(QoS::AtMostOnce, "queued"), &l);
        }
        fast.push(delivery(QoS::AtMostOnce, "a few"), &l);
        budget.charge(1 << 20);
        assert!(budget.pressure());
        // The subscriber with a backlog loses the newcomer and one queued QoS 0.
        assert_eq!(
            slow.push(delivery(QoS::AtMostOnce, "new"), &l),
            PushOutcome::Dropped
        );
        assert_eq!(slow.len(), behind - 1);
        // One keeping up (a few queued) still gets it; QoS 1 is not dropped here (the
        // publisher was refused before routing).
        assert!(matches!(
            fast.push(delivery(QoS::AtMostOnce, "new"), &l),
            PushOutcome::Queued { .. }
        ));
        assert!(matches!(
            slow.push(delivery(QoS::AtLeastOnce, "one"), &l),
            PushOutcome::Queued { .. }
        ));
        assert_eq!(budget.dropped_qos0.load(Ordering::Relaxed), 1);
    }

    /// Pushes and pops from many threads onto shared mailboxes leave the budget exact.
    #[test]
    fn concurrent_queues_balance_the_budget() {
        let budget = Arc::new(MemoryBudget::unlimited());
        let mailboxes: Vec<_> = (0..4)
            .map(|i| Mailbox::with_store(format!("m{i}").into(), None, Some(&budget)))
            .collect();
        let l = limits(64, QueueFullPolicy::DropOldest);
        std::thread::scope(|scope| {
            for t in 0..8 {
                let (mailboxes, l, budget) = (&mailboxes, &l, &budget);
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for n in 0..5_000 {
                        let m = &mailboxes[(t + n) % mailboxes.len()];
                        m.push(charged(budget, QoS::AtLeastOnce, "payload"), l);
                        if n % 3 == 0 {
                            out.clear();
                            m.pop_batch(2, 2, &mut out);
                        }
                    }
                    drop(out);
                    // The scope returns before this thread's locals are destroyed.
                    budget.flush_thread();
                });
            }
        });
        // Each queue's counted slots, and each queued delivery's message (one per push
        // here).
        let queued: u64 = mailboxes.iter().map(|m| m.backlog() as u64).sum();
        let slots_counted: u64 = mailboxes.iter().map(|m| m.charged_bytes() as u64).sum();
        assert_eq!(
            slots_counted,
            mailboxes.iter().map(|m| slots(m)).sum::<u64>()
        );
        let footprint = delivery(QoS::AtLeastOnce, "payload").message.footprint();
        assert_eq!(budget.used(), slots_counted + queued * footprint);
        for m in &mailboxes {
            drop(m.close());
        }
        assert_eq!(budget.used(), 0);
    }
}
