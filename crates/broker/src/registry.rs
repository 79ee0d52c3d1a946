//! Sessions by client id: attaching a connection (taking over a live one, resuming or
//! replacing a stored session), parking a session when its connection ends, session
//! expiry and delayed wills.
//!
//! Takeover is a small state machine (lock the client id, look up, stop the old owner,
//! transfer, own) that talks to the old owner only through its mailbox, so it would work
//! the same if the owner were elsewhere.
//!
//! For stored sessions the registry records what only it knows: the expiry deadline when a
//! session is parked, and delayed wills. At start, [`Registry::restore`] puts back the
//! sessions read from the store as parked sessions.
//!
//! The registry never calls back into the broker: what must happen once its lock is
//! released (sessions that ended, wills that are due, a takeover to answer) is returned as
//! [`Effects`], which the broker carries out ([`Broker::attach`](crate::Broker::attach),
//! [`Broker::detach`](crate::Broker::detach), [`Broker::tick`](crate::Broker::tick)).
//! Telling a client id's current holder to let go goes through [`Ownership`]: the seam where
//! a cluster adds cluster-wide uniqueness; [`LocalOwnership`] is the single node's.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use midge_proto::Will;
use tokio::sync::oneshot;

use crate::mailbox::{ConnectionDetail, Control, Mailbox};
use crate::model::{Millis, QueueLimits};
use crate::session::SessionState;
use crate::stats::Stats;
use crate::store::{Journal, RecoveredSession};

mod ownership;

pub use ownership::{Claim, LocalOwnership, Ownership};

/// How long a new connection waits for the old owner of its client id to let go.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct PendingWill {
    will: Will,
    publish_at: Millis,
}

/// A client id's entry. 24 bytes, so that with its key an entry is 40 and the table
/// costs about 67 bytes per client id at 10,000 (41 bytes a bucket with its control
/// byte, 16,384 buckets): what a slot has only while an attach runs or no connection
/// serves the session is boxed apart ([`Idle`]), and the owner is a plain number with a
/// value that cannot occur for "none" (see [`NONE`]), behind accessors.
#[derive(Debug)]
struct Slot {
    /// The mailbox the session's subscriptions point at.
    mailbox: Arc<Mailbox>,
    /// Connection serving the session ([`Slot::owner`]); [`NONE`] when none does.
    owner: u64,
    /// There while any of its parts is ([`Slot::trim`]).
    idle: Option<Box<Idle>>,
}

/// The parts of a [`Slot`] a served session's slot usually has none of.
#[derive(Debug)]
struct Idle {
    /// Serialises attaches of this client id; there only while an attach is under way.
    /// An `Arc` count above 1 means an attach holds or waits for it, and the slot must
    /// stay.
    attach_lock: Option<Arc<tokio::sync::Mutex<()>>>,
    /// The session while no connection serves it. Boxed: a slot is boxed apart for an
    /// attach alone, on every CONNECT.
    parked: Option<Box<SessionState>>,
    /// When the parked session expires ([`Slot::expires_at`]); [`NONE`] when it does not.
    expires_at: Millis,
    will: Option<Box<PendingWill>>,
}

impl Default for Idle {
    fn default() -> Self {
        Self {
            attach_lock: None,
            parked: None,
            expires_at: NONE,
            will: None,
        }
    }
}

/// "None" for [`Slot::owner`] and [`Idle::expires_at`]: connection ids count up from 1,
/// and no deadline is 584 million years away.
const NONE: u64 = u64::MAX;

impl Slot {
    fn new(mailbox: Arc<Mailbox>) -> Self {
        Self {
            mailbox,
            owner: NONE,
            idle: None,
        }
    }

    /// The connection serving the session.
    fn owner(&self) -> Option<u64> {
        (self.owner != NONE).then_some(self.owner)
    }

    fn set_owner(&mut self, owner: Option<u64>) {
        self.owner = owner.unwrap_or(NONE);
    }

    fn idle_mut(&mut self) -> &mut Idle {
        self.idle.get_or_insert_with(Box::default)
    }

    /// Gives the boxed parts back once none is left.
    fn trim(&mut self) {
        if self.idle.as_ref().is_some_and(|idle| {
            idle.attach_lock.is_none()
                && idle.parked.is_none()
                && idle.expires_at == NONE
                && idle.will.is_none()
        }) {
            self.idle = None;
        }
    }

    /// The session while no connection serves it.
    fn parked(&self) -> Option<&SessionState> {
        self.idle.as_ref()?.parked.as_deref()
    }

    /// Takes one of the boxed parts out, giving the box back if it was the last.
    fn take_part<T>(&mut self, part: impl FnOnce(&mut Idle) -> Option<T>) -> Option<T> {
        let taken = part(self.idle.as_mut()?);
        self.trim();
        taken
    }

    fn take_parked(&mut self) -> Option<Box<SessionState>> {
        self.take_part(|idle| idle.parked.take())
    }

    fn set_parked(&mut self, state: SessionState) {
        self.idle_mut().parked = Some(Box::new(state));
    }

    /// The will waiting for its delay.
    fn will(&self) -> Option<&PendingWill> {
        self.idle.as_ref()?.will.as_deref()
    }

    fn take_will(&mut self) -> Option<Box<PendingWill>> {
        self.take_part(|idle| idle.will.take())
    }

    fn set_will(&mut self, will: PendingWill) {
        self.idle_mut().will = Some(Box::new(will));
    }

    /// When the parked session expires.
    fn expires_at(&self) -> Option<Millis> {
        self.idle
            .as_ref()
            .and_then(|idle| (idle.expires_at != NONE).then_some(idle.expires_at))
    }

    fn set_expires_at(&mut self, at: Option<Millis>) {
        match at {
            Some(at) => self.idle_mut().expires_at = at,
            None => {
                if let Some(idle) = &mut self.idle {
                    idle.expires_at = NONE;
                    self.trim();
                }
            }
        }
    }

    /// A clone of the attach lock, made if there is none.
    fn attach_lock(&mut self) -> Arc<tokio::sync::Mutex<()>> {
        self.idle_mut()
            .attach_lock
            .get_or_insert_with(Arc::default)
            .clone()
    }

    fn removable(&self) -> bool {
        self.owner().is_none()
            && self.idle.as_ref().is_none_or(|idle| {
                idle.parked.is_none()
                    && idle.will.is_none()
                    && idle
                        .attach_lock
                        .as_ref()
                        .is_none_or(|l| Arc::strong_count(l) == 1)
            })
    }
}

#[derive(Debug, Default)]
struct Inner {
    slots: HashMap<Arc<str>, Slot>,
    /// Deadlines (session expiry, delayed wills), checked lazily against the slot. An
    /// entry goes stale when its session resumes or its will is cancelled; see
    /// [`Inner::push_timer`] for what bounds them.
    timers: BinaryHeap<Reverse<(Millis, Arc<str>)>>,
    /// Slots holding a parked session (kept here so the cap costs no scan).
    parked: usize,
}

/// Stale timers tolerated beyond this many per slot (each slot has at most two live
/// ones) before the heap is rebuilt from the slots.
pub(crate) const TIMERS_PER_SLOT: usize = 4;
/// ... plus this many, so small registries do not rebuild on every push.
pub(crate) const TIMER_SLACK: usize = 1024;

impl Inner {
    /// Schedules a deadline for `client_id`. A client reconnecting in a loop leaves a
    /// stale entry per park until that deadline passes (an hour for a one-hour expiry);
    /// when stale entries outnumber the live ones by far, the heap is rebuilt from the
    /// slots' own deadlines, so it stays within a constant factor of the slot count. A
    /// rebuild costs O(slots) and follows at least that many pushes: amortised O(1).
    fn push_timer(&mut self, at: Millis, client_id: Arc<str>) {
        self.timers.push(Reverse((at, client_id)));
        if self.timers.len() > TIMERS_PER_SLOT * self.slots.len() + TIMER_SLACK {
            self.rebuild_timers();
        }
    }

    fn rebuild_timers(&mut self) {
        let live = self.slots.iter().flat_map(|(id, slot)| {
            let expiry = slot.expires_at().map(|at| Reverse((at, id.clone())));
            let will = slot.will().map(|w| Reverse((w.publish_at, id.clone())));
            expiry.into_iter().chain(will)
        });
        self.timers = live.collect();
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    /// Where new mailboxes record persistent sessions; `None` keeps them in memory only.
    journal: Option<Journal>,
    /// How the holder of a client id is told to let go.
    ownership: Box<dyn Ownership>,
    /// Most parked sessions; 0 is unlimited (`limits.max_parked_sessions`).
    max_parked: std::sync::atomic::AtomicUsize,
    /// What new mailboxes' queues count against (`limits.max_memory`).
    budget: Option<Arc<crate::memory::MemoryBudget>>,
}

/// What the registry leaves the broker to do once its lock is released, in this order:
/// end the sessions (subscriptions, mailbox, shared deliveries to other members), publish
/// the wills, then answer a takeover that waits for this session to be parked.
#[derive(Debug, Default)]
#[must_use = "ended sessions and due wills must be carried out"]
pub struct Effects {
    /// Sessions that ended: replaced, expired, or gone with their connection.
    pub ended: Vec<SessionState>,
    /// Wills due now, with the client id they belong to.
    pub wills: Vec<(Arc<str>, Will)>,
    /// A takeover waiting for this session to be parked, answered last.
    pub release: Option<oneshot::Sender<()>>,
    /// Sessions that ended at disconnect instead of being parked, because
    /// `max_parked_sessions` parked sessions already wait.
    pub over_parked_limit: u64,
}

/// What [`Registry::kick`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickOutcome {
    /// No session has that client id.
    NotFound,
    /// The connection was told to go (it sends DISCONNECT 0x98 and closes).
    Disconnecting,
    /// The client is not connected and its session was kept (nothing to do).
    NotConnected,
    /// The client was not connected; its session was ended.
    SessionEnded,
}

/// One session as the admin API lists it. Ordered by client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// Client identifier.
    pub client_id: Arc<str>,
    /// Whether a connection serves it.
    pub online: bool,
    /// Deliveries waiting in its queue.
    pub queued: usize,
    /// QoS 1/2 deliveries sent and not yet acknowledged; known here for offline sessions
    /// only (an online session's in-flight window lives in its connection).
    pub inflight: Option<usize>,
    /// Subscriptions; known here for offline sessions only.
    pub subscriptions: Option<usize>,
    /// When an offline session expires.
    pub expires_at: Option<Millis>,
}

impl Ord for SessionSummary {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.client_id.cmp(&other.client_id)
    }
}

impl PartialOrd for SessionSummary {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A session handed to a new connection.
#[derive(Debug)]
pub struct Attached {
    /// The session to serve.
    pub state: SessionState,
    /// Whether it existed before (CONNACK session present).
    pub session_present: bool,
}

impl Registry {
    /// An empty registry whose sessions record through `journal` (if any) and whose
    /// client ids are held by this process alone.
    pub fn new(journal: Option<Journal>) -> Self {
        Self::with_ownership(journal, Box::new(LocalOwnership))
    }

    /// An empty registry with another notion of who holds a client id.
    pub fn with_ownership(journal: Option<Journal>, ownership: Box<dyn Ownership>) -> Self {
        Self {
            inner: Mutex::default(),
            journal,
            ownership,
            max_parked: std::sync::atomic::AtomicUsize::new(0),
            budget: None,
        }
    }

    /// The same registry, with the queues of its sessions counted against `budget`.
    pub fn with_budget(mut self, budget: Arc<crate::memory::MemoryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Sets the most sessions that may wait parked (0: unlimited). Beyond it a session
    /// ends when its connection does, instead of being parked.
    pub fn set_max_parked(&self, max: usize) {
        self.max_parked
            .store(max, std::sync::atomic::Ordering::Relaxed);
    }

    fn new_mailbox(&self, client_id: &Arc<str>) -> Arc<Mailbox> {
        Mailbox::with_store(
            client_id.clone(),
            self.journal.as_ref(),
            self.budget.as_ref(),
        )
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of sessions, connected or parked.
    pub fn len(&self) -> usize {
        self.lock()
            .slots
            .values()
            .filter(|s| s.owner().is_some() || s.parked().is_some())
            .count()
    }

    /// True when there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wakes every connection serving a session, so each sees a change it would not be
    /// woken for otherwise (the server shutting down).
    pub fn wake_owners(&self) {
        for slot in self.lock().slots.values() {
            if slot.owner().is_some() {
                slot.mailbox.wake_connection();
            }
        }
    }

    /// Asks every connection serving a session to authorize its subscriptions again: the
    /// access rules changed, and a right taken away must stop deliveries at once, not at
    /// the next connection (the class of CVE-2021-34434). Parked sessions are checked
    /// when they resume, before anything is delivered.
    pub fn recheck_owners(&self) {
        for slot in self.lock().slots.values() {
            if slot.owner().is_some() {
                slot.mailbox.request_recheck();
            }
        }
    }

    /// Number of parked (disconnected, persistent) sessions.
    pub fn parked_len(&self) -> usize {
        self.lock().parked
    }

    /// Attaches connection `connection_id` to `client_id`: a live owner is told to go
    /// (v5 DISCONNECT 0x8E) and waited for, then the stored session is resumed, or
    /// replaced when `clean_start` [MQTT-3.1.2-4] [MQTT-3.1.2-5] [MQTT-3.1.4-3]. A replaced
    /// session and its delayed will are in the effects.
    pub async fn attach(
        &self,
        stats: &Stats,
        client_id: Arc<str>,
        clean_start: bool,
        connection_id: u64,
    ) -> (Attached, Effects) {
        let attach_lock = self
            .lock()
            .slots
            .entry(client_id.clone())
            .or_insert_with(|| Slot::new(self.new_mailbox(&client_id)))
            .attach_lock();
        let attaching = attach_lock.lock().await;

        // Looking at the owner and telling it to go happen under one lock, so `detach`
        // (which takes the same lock) either runs first, and there is no owner, or finds
        // the instruction and answers it.
        let told_owner = match self.lock().slots.get(&client_id) {
            Some(slot) if slot.owner().is_some() => {
                Some(self.ownership.ask_to_leave(&client_id, &slot.mailbox))
            }
            _ => None,
        };
        if let Some(done) = told_owner {
            tracing::info!(client_id = %client_id, "client id already connected: taking the session over from the existing connection");
            Stats::add(&stats.sessions_taken_over, 1);
            if tokio::time::timeout(TAKEOVER_TIMEOUT, done).await.is_err() {
                tracing::warn!(client_id = %client_id, "previous connection did not let go in time; its session state is dropped");
                if let Some(slot) = self.lock().slots.get_mut(&client_id) {
                    // The old connection ends its session itself when it finally detaches;
                    // the new one starts on a mailbox of its own.
                    slot.set_owner(None);
                    slot.mailbox = self.new_mailbox(&client_id);
                }
            }
        }

        let mut cancelled = false;
        let (ended, will, attached) = {
            let mut inner = self.lock();
            let slot = inner
                .slots
                .entry(client_id.clone())
                .or_insert_with(|| Slot::new(self.new_mailbox(&client_id)));
            let pending_will = slot.take_will();
            let parked = slot.take_parked().map(|state| *state);
            let took = usize::from(parked.is_some());
            slot.set_expires_at(None);
            slot.set_owner(Some(connection_id));
            let (ended, will, state, present) = match parked {
                Some(state) if !clean_start => {
                    // [MQTT-3.1.3-9] resumed in time: the delayed will is not sent.
                    cancelled = pending_will.is_some();
                    if cancelled && let Some(journal) = state.mailbox.journal() {
                        journal.will_delete();
                    }
                    (None, None, state, true)
                }
                parked => {
                    // A replaced session ends now, and so its delayed will is due. A new
                    // session never inherits the mailbox of one that ended.
                    if parked.is_some() || slot.mailbox.is_closed() {
                        slot.mailbox = self.new_mailbox(&client_id);
                    }
                    let state = SessionState::new(client_id.clone(), slot.mailbox.clone());
                    (parked, pending_will.map(|w| w.will), state, false)
                }
            };
            inner.parked -= took;
            state.mailbox.set_online(true);
            (
                ended,
                will,
                Attached {
                    state,
                    session_present: present,
                },
            )
        };
        if cancelled {
            self.ownership.will_cancelled(&client_id, None);
        }
        let effects = Effects {
            ended: ended.into_iter().collect(),
            wills: will
                .map(|will| (client_id.clone(), will))
                .into_iter()
                .collect(),
            release: None,
            over_parked_limit: 0,
        };
        drop(attaching);
        // Clones are only taken under the registry lock, so a count of 2 (the slot's and
        // ours) seen under it means no other attach holds or waits for this lock, and the
        // next one can start on a fresh lock.
        if let Some(slot) = self.lock().slots.get_mut(&client_id) {
            slot.take_part(|idle| {
                idle.attach_lock
                    .take_if(|l| Arc::ptr_eq(l, &attach_lock) && Arc::strong_count(l) == 2)
            });
        }
        (attached, effects)
    }

    /// A connection ended: the session is parked until it expires, or ends now when its
    /// expiry is 0; the will is published now or scheduled after its delay
    /// [MQTT-3.1.3-9] [MQTT-3.1.2-8].
    pub fn detach(
        &self,
        connection_id: u64,
        state: SessionState,
        will: Option<(Will, u32)>,
        now: Millis,
    ) -> Effects {
        let client_id = state.client_id.clone();
        let without_will = will.is_none();
        let record = (state.expiry_interval != 0)
            .then(|| self.ownership.session_record(&state))
            .flatten();
        let mut parked_until = None;
        let mut ended = None;
        let mut will_now = None;
        let mut answer_takeover = None;
        let mut over_parked_limit = 0;
        let owned_here;
        {
            let mut inner = self.lock();
            let mut timers = Vec::new();
            let Inner { slots, parked, .. } = &mut *inner;
            let slot = slots
                .entry(client_id.clone())
                .or_insert_with(|| Slot::new(self.new_mailbox(&client_id)));
            let owned = slot.owner() == Some(connection_id);
            owned_here = owned;
            if owned {
                slot.set_owner(None);
                // A connection that ended on its own (EOF, DISCONNECT, error) just as a new
                // one took over never read the takeover instruction: answer it here, once
                // the session is parked below, instead of leaving the new connection
                // waiting for TAKEOVER_TIMEOUT.
                answer_takeover = self.ownership.unanswered(&slot.mailbox);
            }
            state.mailbox.set_online(false);
            let max_parked = self.max_parked.load(std::sync::atomic::Ordering::Relaxed);
            let over_limit =
                owned && state.expiry_interval != 0 && max_parked > 0 && *parked >= max_parked;
            if over_limit {
                over_parked_limit = 1;
            }
            if !owned || state.expiry_interval == 0 || over_limit {
                ended = Some(state);
            } else {
                *parked += 1;
                let expiry = state.expiry_interval;
                let expires_at = (expiry != u32::MAX).then(|| now + u64::from(expiry) * 1000);
                if let Some(journal) = state.mailbox.journal() {
                    journal.put(expiry, expires_at);
                }
                slot.set_parked(state);
                parked_until = Some(expires_at);
                if let Some(at) = expires_at {
                    slot.set_expires_at(Some(at));
                    timers.push(at);
                }
            }
            if let Some((will, delay)) = will {
                // The will waits for its delay, but never past the end of the session.
                let delay = if ended.is_some() {
                    0
                } else {
                    delay.min(slot.parked().map_or(0, |s| s.expiry_interval))
                };
                if delay == 0 {
                    will_now = Some(will);
                } else {
                    let publish_at = now + u64::from(delay) * 1000;
                    if let Some(journal) = slot.parked().and_then(|s| s.mailbox.journal()) {
                        journal.will_put(publish_at, &will);
                    }
                    slot.set_will(PendingWill { will, publish_at });
                    timers.push(publish_at);
                }
            }
            if ended.is_some() && owned {
                if slot.removable() {
                    slots.remove(&client_id);
                } else {
                    slot.mailbox = self.new_mailbox(&client_id);
                }
            }
            for at in timers {
                inner.push_timer(at, client_id.clone());
            }
        }
        if without_will {
            self.ownership
                .will_cancelled(&client_id, Some(connection_id));
        }
        // A parked session keeps its client id claimed (a cluster's owners bucket names
        // this node), so a CONNECT elsewhere asks for it and it moves there.
        if owned_here && ended.is_some() {
            self.ownership.release(&client_id, connection_id);
        } else if let (Some(record), Some(expires_at)) = (record, parked_until) {
            self.ownership.parked(&client_id, record, expires_at);
        }
        Effects {
            ended: ended.into_iter().collect(),
            wills: will_now.map(|will| (client_id, will)).into_iter().collect(),
            release: answer_takeover,
            over_parked_limit,
        }
    }

    /// Claims `client_id` beyond this process for `connection_id`, which attached it
    /// ([`Ownership::claim`]); `None` on a single node.
    pub fn claim(
        &self,
        client_id: &Arc<str>,
        connection_id: u64,
        clean_start: bool,
    ) -> Option<Claim> {
        self.ownership.claim(client_id, connection_id, clean_start)
    }

    /// Connection `connection_id` of `client_id`, claimed beyond this process, has a will
    /// ([`Ownership::will_accepted`]).
    pub fn will_accepted(
        &self,
        client_id: &Arc<str>,
        connection_id: u64,
        will: Option<&Will>,
        delay: u32,
        expiry: u32,
    ) {
        self.ownership
            .will_accepted(client_id, connection_id, will, delay, expiry);
    }

    /// A persistent session connected here just attached, or its subscriptions changed:
    /// what a cluster keeps of it is written again ([`Ownership::connected`]).
    pub fn record_connected(&self, state: &mut SessionState) {
        state.subscriptions_recorded = state.subscription_changes;
        if state.expiry_interval == 0 {
            return;
        }
        self.ownership
            .connected(&state.client_id, self.ownership.session_record(state));
    }

    /// A will the registry made due: `Some` to publish now ([`Ownership::will_due`]).
    pub fn will_due(&self, client_id: &Arc<str>, will: Will) -> Option<Will> {
        self.ownership.will_due(client_id, will)
    }

    /// Tells connection `connection_id` to let `client_id` go (v5 DISCONNECT 0x8E), if it
    /// still serves it: a CONNECT elsewhere took the id over. The receiver resolves once the
    /// session is parked. `None`: that connection is gone, or already told to go by a
    /// takeover on this node (whose answer must not be lost).
    pub fn ask_to_leave_if(
        &self,
        client_id: &str,
        connection_id: u64,
    ) -> Option<oneshot::Receiver<()>> {
        let inner = self.lock();
        let slot = inner.slots.get(client_id)?;
        if slot.owner() != Some(connection_id) {
            return None;
        }
        let (reply, done) = oneshot::channel();
        if slot.mailbox.offer_control(Control::TakeOver(reply)) {
            return Some(done);
        }
        // A control is pending: a takeover keeps its place; an administrator's request
        // gives way (its asker sees no answer).
        match slot.mailbox.take_control() {
            Some(Control::TakeOver(first)) => {
                slot.mailbox.send_control(Control::TakeOver(first));
                None
            }
            _ => {
                let (reply, done) = oneshot::channel();
                slot.mailbox.send_control(Control::TakeOver(reply));
                Some(done)
            }
        }
    }

    /// Takes `client_id`'s parked session out, with its delayed will, when no connection
    /// here serves it; the caller moves it elsewhere, and cancels the will (the session
    /// resumes there, [MQTT-3.1.3-9]) or publishes it (it ends there).
    pub fn take_parked(&self, client_id: &str) -> Option<(SessionState, Option<Will>)> {
        let mut inner = self.lock();
        let slot = inner.slots.get_mut(client_id)?;
        if slot.owner().is_some() {
            return None;
        }
        let state = *slot.take_parked()?;
        slot.set_expires_at(None);
        let will = slot.take_will().map(|pending| pending.will);
        if will.is_some()
            && let Some(journal) = state.mailbox.journal()
        {
            journal.will_delete();
        }
        if slot.removable() {
            inner.slots.remove(client_id);
        }
        inner.parked -= 1;
        Some((state, will))
    }

    /// Expires sessions and publishes delayed wills that are due.
    pub fn tick(&self, stats: &Stats, now: Millis) -> Effects {
        let mut ended = Vec::new();
        let mut wills = Vec::new();
        {
            let mut inner = self.lock();
            let Inner {
                slots,
                timers,
                parked,
            } = &mut *inner;
            while let Some(Reverse((at, _))) = timers.peek() {
                if *at > now {
                    break;
                }
                let Some(Reverse((_, client_id))) = timers.pop() else {
                    break;
                };
                let Some(slot) = slots.get_mut(&client_id) else {
                    continue;
                };
                if slot.will().is_some_and(|w| w.publish_at <= now)
                    && let Some(pending) = slot.take_will()
                {
                    if let Some(journal) = slot.parked().and_then(|s| s.mailbox.journal()) {
                        journal.will_delete();
                    }
                    wills.push((client_id.clone(), pending.will));
                }
                if slot.owner().is_none() && slot.expires_at().is_some_and(|e| e <= now) {
                    slot.set_expires_at(None);
                    if let Some(state) = slot.take_parked() {
                        *parked -= 1;
                        tracing::debug!(client_id = %client_id, "session expired");
                        slot.mailbox = self.new_mailbox(&client_id);
                        Stats::add(&stats.sessions_expired, 1);
                        // [MQTT-3.1.3-9] the session ending also makes a delayed will due.
                        if let Some(pending) = slot.take_will() {
                            wills.push((client_id.clone(), pending.will));
                        }
                        ended.push(*state);
                    }
                }
                if slot.removable() {
                    slots.remove(&client_id);
                }
            }
        }
        Effects {
            ended,
            wills,
            release: None,
            over_parked_limit: 0,
        }
    }

    /// Puts back a session read from the store at start, parked: its subscriptions go into
    /// the router and its queue into its mailbox (within the queue limits), so messages
    /// published before the client returns are queued for it. A session that was connected
    /// when the broker stopped gets its full expiry interval from `now`. Call
    /// [`Registry::tick`] afterwards to end sessions and publish wills that fell due while
    /// the broker was down. Returns the session's mailbox, for its subscriptions to point
    /// at, and how many queued deliveries the queue limits dropped.
    pub fn restore(
        &self,
        stored: RecoveredSession,
        store: &Journal,
        limits: &QueueLimits,
        now: Millis,
    ) -> (Arc<Mailbox>, usize) {
        let client_id = stored.client_id;
        let mailbox = Mailbox::restored(
            client_id.clone(),
            stored.session,
            store,
            self.budget.as_ref(),
            stored.next_seq,
        );
        let dropped = mailbox.restore(stored.queue, limits);
        let expires_at = stored.expires_at.or_else(|| {
            (stored.expiry_interval != u32::MAX)
                .then(|| now + u64::from(stored.expiry_interval) * 1000)
        });
        if stored.expires_at.is_none()
            && let Some(journal) = mailbox.journal()
        {
            journal.put(stored.expiry_interval, expires_at);
        }
        let mut state = SessionState::new(client_id.clone(), mailbox.clone());
        state.subscriptions = stored.subscriptions.into_iter().collect();
        state.inflight = stored.inflight.into();
        state.awaiting_pubrel = stored.awaiting_pubrel.into_iter().collect();
        state.expiry_interval = stored.expiry_interval;
        let will = stored
            .will
            .map(|(will, publish_at)| Box::new(PendingWill { will, publish_at }));

        let mut inner = self.lock();
        let Inner {
            slots,
            timers,
            parked,
        } = &mut *inner;
        // Stored sessions all come back, even beyond `max_parked_sessions`: the limit keeps
        // new ones from being parked, never drops what was kept.
        *parked += 1;
        if let Some(at) = expires_at {
            timers.push(Reverse((at, client_id.clone())));
        }
        if let Some(w) = &will {
            timers.push(Reverse((w.publish_at, client_id.clone())));
        }
        let mut slot = Slot::new(mailbox.clone());
        *slot.idle_mut() = Idle {
            parked: Some(Box::new(state)),
            expires_at: expires_at.unwrap_or(NONE),
            will,
            attach_lock: None,
        };
        slots.insert(client_id, slot);
        (mailbox, dropped)
    }

    /// Whether an attach of `client_id` holds or waits for its slot's lock.
    #[cfg(test)]
    pub(crate) fn attach_lock_held(&self, client_id: &str) -> bool {
        self.lock()
            .slots
            .get(client_id)
            .is_some_and(|s| s.idle.as_ref().is_some_and(|i| i.attach_lock.is_some()))
    }

    /// Whether `client_id`'s slot has its rarely used parts boxed apart.
    #[cfg(test)]
    pub(crate) fn boxed_parts(&self, client_id: &str) -> Option<bool> {
        self.lock().slots.get(client_id).map(|s| s.idle.is_some())
    }

    /// Entries in the timer heap, and slots.
    #[cfg(test)]
    pub(crate) fn timers_and_slots(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.timers.len(), inner.slots.len())
    }

    /// Takes a clone of `client_id`'s attach lock, as an attach under way would.
    #[cfg(test)]
    pub(crate) fn hold_attach_lock(&self, client_id: &str) -> Option<Arc<tokio::sync::Mutex<()>>> {
        self.lock().slots.get_mut(client_id).map(Slot::attach_lock)
    }

    /// Up to `limit` sessions whose client id comes after `after` and passes `keep`, in
    /// client id order, for the admin API. Memory is O(limit) whatever the session count;
    /// the registry lock is held for one pass over the sessions.
    pub fn sessions_page(
        &self,
        after: Option<&str>,
        limit: usize,
        mut keep: impl FnMut(&SessionSummary) -> bool,
    ) -> Vec<SessionSummary> {
        let mut page = std::collections::BinaryHeap::<SessionSummary>::new();
        let inner = self.lock();
        for (id, slot) in &inner.slots {
            if after.is_some_and(|after| &**id <= after)
                || page.len() == limit && page.peek().is_some_and(|last| id >= &last.client_id)
            {
                continue;
            }
            let parked = slot.parked();
            let summary = SessionSummary {
                client_id: id.clone(),
                online: slot.owner().is_some(),
                queued: slot.mailbox.len(),
                inflight: parked.map(|p| p.inflight.len()),
                subscriptions: parked.map(|p| p.subscriptions.len()),
                expires_at: slot.expires_at(),
            };
            if !keep(&summary) {
                continue;
            }
            page.push(summary);
            if page.len() > limit {
                page.pop();
            }
        }
        drop(inner);
        page.into_sorted_vec()
    }

    /// Disconnects `client_id` for an administrator; with `discard_session` its session
    /// ends too (at once when it is offline: its will, if any, is due, as when a session
    /// expires). The broker carries out the effects ([`Broker::kick`](crate::Broker)).
    pub fn kick(&self, client_id: &str, discard_session: bool) -> (KickOutcome, Effects) {
        let mut effects = Effects::default();
        let mut inner = self.lock();
        let Some((id, slot)) = inner.slots.get_key_value(client_id) else {
            return (KickOutcome::NotFound, effects);
        };
        let id = id.clone();
        if slot.owner().is_some() {
            // A pending takeover ends the connection already; it is not disturbed.
            slot.mailbox
                .offer_control(Control::Kick { discard_session });
            return (KickOutcome::Disconnecting, effects);
        }
        if slot.parked().is_none() {
            return (KickOutcome::NotFound, effects);
        }
        if !discard_session {
            return (KickOutcome::NotConnected, effects);
        }
        let fresh = self.new_mailbox(&id);
        let Some(slot) = inner.slots.get_mut(&id) else {
            return (KickOutcome::NotFound, effects);
        };
        slot.set_expires_at(None);
        slot.mailbox = fresh;
        if let Some(state) = slot.take_parked() {
            tracing::info!(client_id = %id, "session ended by an administrator");
            effects.ended.push(*state);
        }
        // [MQTT-3.1.3-9] the session ending makes a delayed will due.
        if let Some(pending) = slot.take_will() {
            effects.wills.push((id.clone(), pending.will));
        }
        if slot.removable() {
            inner.slots.remove(&id);
        }
        (KickOutcome::SessionEnded, effects)
    }

    /// Deliveries queued in every session's mailbox, and QoS 1/2 deliveries in flight in
    /// offline sessions (online ones count theirs in `Stats::inflight`), for metrics. One
    /// pass under the registry lock that reads each queue's length without its lock
    /// ([`Mailbox::backlog`]): `$SYS` asks every second, and taking 10,000 mailbox locks
    /// under the registry lock kept connects waiting for it.
    pub fn queue_totals(&self) -> (usize, usize) {
        let inner = self.lock();
        inner
            .slots
            .values()
            .fold((0, 0), |(queued, inflight), slot| {
                (
                    queued + slot.mailbox.backlog(),
                    inflight + slot.parked().map_or(0, |p| p.inflight.len()),
                )
            })
    }

    /// Asks the connection serving `client_id` to describe itself; `None` when it is not
    /// connected or has another instruction pending (a takeover). The answer comes at
    /// the connection's next wake-up; the receiver fails if the connection ends first.
    pub fn describe(&self, client_id: &str) -> Option<oneshot::Receiver<ConnectionDetail>> {
        let inner = self.lock();
        let slot = inner.slots.get(client_id).filter(|s| s.owner().is_some())?;
        let (reply, answer) = oneshot::channel();
        slot.mailbox
            .offer_control(Control::Describe(reply))
            .then_some(answer)
    }

    /// Number of sessions with a live connection.
    pub fn connected_len(&self) -> usize {
        self.lock()
            .slots
            .values()
            .filter(|s| s.owner().is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use midge_proto::{QoS, WillProperties};

    use super::*;

    #[tokio::test]
    async fn a_session_ending_with_its_connection_comes_back_as_effects() {
        let registry = Registry::new(None);
        let stats = Stats::default();
        let id: Arc<str> = "c".into();
        let (attached, effects) = registry.attach(&stats, id.clone(), true, 1).await;
        assert!(effects.ended.is_empty() && effects.wills.is_empty());
        let will = Will {
            topic: "wills/c".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: WillProperties::default(),
        };
        let effects = registry.detach(1, attached.state, Some((will, 0)), 0);
        assert_eq!(effects.ended.len(), 1);
        assert_eq!(effects.wills.len(), 1);
        assert_eq!(effects.wills[0].0, id);
        // Closing the mailbox and publishing are the broker's part.
        assert!(!effects.ended[0].mailbox.is_closed());
        assert!(registry.is_empty());
    }

    /// A served session's slot keeps nothing boxed once its attach is done (24 bytes, 40
    /// with its key, in a table with a slot per client id); parking boxes the session,
    /// its expiry and a delayed will apart, and resuming gives the box back.
    #[tokio::test]
    async fn only_an_idle_or_attaching_slot_has_its_parts_boxed() {
        assert_eq!(std::mem::size_of::<Slot>(), 24);
        let registry = Registry::new(None);
        let stats = Stats::default();
        let id: Arc<str> = "c".into();
        let (attached, _) = registry.attach(&stats, id.clone(), false, 1).await;
        assert_eq!(registry.boxed_parts("c"), Some(false));
        let mut state = attached.state;
        state.expiry_interval = 60;
        let will = Will {
            topic: "wills/c".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: WillProperties::default(),
        };
        let effects = registry.detach(1, state, Some((will, 30)), 0);
        assert!(effects.ended.is_empty() && effects.wills.is_empty());
        assert_eq!(registry.boxed_parts("c"), Some(true));
        assert_eq!(registry.parked_len(), 1);
        let (attached, effects) = registry.attach(&stats, id.clone(), false, 2).await;
        assert!(attached.session_present);
        assert!(effects.wills.is_empty(), "resumed in time: no will");
        assert_eq!(registry.boxed_parts("c"), Some(false));
        assert_eq!(registry.parked_len(), 0);
        // The timers left behind find nothing due: no will, no expiry.
        let effects = registry.tick(&stats, 100_000);
        assert!(effects.ended.is_empty() && effects.wills.is_empty());
        assert_eq!(registry.boxed_parts("c"), Some(false));
        let effects = registry.detach(2, attached.state, None, 100_000);
        assert!(effects.ended.is_empty());
        // Expired: the session ends and the slot goes.
        let effects = registry.tick(&stats, 100_000 + 61_000);
        assert_eq!(effects.ended.len(), 1);
        assert_eq!(registry.boxed_parts("c"), None);
    }

    #[tokio::test]
    async fn a_takeover_from_another_node_reaches_only_the_connection_it_names() {
        let registry = Registry::new(None);
        let stats = Stats::default();
        let id: Arc<str> = "c".into();
        let (attached, _) = registry.attach(&stats, id.clone(), true, 1).await;
        let mailbox = attached.state.mailbox.clone();
        // Another connection (gone, or a later one) is not this one.
        assert!(registry.ask_to_leave_if("c", 2).is_none());
        assert!(registry.ask_to_leave_if("other", 1).is_none());
        assert!(mailbox.take_control().is_none());
        let done = registry.ask_to_leave_if("c", 1).expect("asked");
        let Some(Control::TakeOver(reply)) = mailbox.take_control() else {
            panic!("no takeover sent");
        };
        reply.send(()).unwrap();
        done.await.unwrap();

        // A takeover from this node already pending keeps its place and its answer.
        let (first, first_done) = oneshot::channel();
        mailbox.send_control(Control::TakeOver(first));
        assert!(registry.ask_to_leave_if("c", 1).is_none());
        let Some(Control::TakeOver(reply)) = mailbox.take_control() else {
            panic!("the pending takeover was lost");
        };
        reply.send(()).unwrap();
        first_done.await.unwrap();
    }

    #[tokio::test]
    async fn a_parked_session_is_taken_out_with_its_will_and_keeps_its_claim() {
        let released = Arc::new(Mutex::new(Vec::new()));
        let registry = Registry::with_ownership(None, Box::new(Recording(released.clone())));
        let stats = Stats::default();
        let id: Arc<str> = "p".into();
        let (mut attached, _) = registry.attach(&stats, id.clone(), false, 1).await;
        // Nothing to take while a connection serves it.
        assert!(registry.take_parked("p").is_none());
        attached.state.expiry_interval = 60;
        let will = Will {
            topic: "wills/p".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: WillProperties::default(),
        };
        let effects = registry.detach(1, attached.state, Some((will, 30)), 0);
        assert!(effects.ended.is_empty() && effects.wills.is_empty());
        // Parked: the id stays claimed (a cluster node is then asked for the session).
        assert!(released.lock().unwrap().is_empty());
        assert_eq!(registry.parked_len(), 1);
        let (state, will) = registry.take_parked("p").expect("parked");
        assert_eq!(state.expiry_interval, 60);
        assert_eq!(will.expect("its delayed will").topic, "wills/p");
        assert_eq!(registry.parked_len(), 0);
        assert!(registry.is_empty());
        // The delayed will went with it: nothing falls due here.
        let effects = registry.tick(&stats, 3_600_000);
        assert!(effects.wills.is_empty() && effects.ended.is_empty());
        assert!(registry.take_parked("p").is_none());
    }

    /// Records releases.
    #[derive(Debug, Default)]
    struct Recording(Arc<Mutex<Vec<(String, u64)>>>);

    impl Ownership for Recording {
        fn ask_to_leave(&self, id: &Arc<str>, mailbox: &Mailbox) -> oneshot::Receiver<()> {
            LocalOwnership.ask_to_leave(id, mailbox)
        }

        fn unanswered(&self, mailbox: &Mailbox) -> Option<oneshot::Sender<()>> {
            LocalOwnership.unanswered(mailbox)
        }

        fn release(&self, client_id: &Arc<str>, connection_id: u64) {
            self.0
                .lock()
                .unwrap()
                .push((client_id.to_string(), connection_id));
        }
    }

    #[tokio::test]
    async fn only_the_connection_holding_an_id_releases_it() {
        let released = Arc::new(Mutex::new(Vec::new()));
        let registry = Registry::with_ownership(None, Box::new(Recording(released.clone())));
        let stats = Stats::default();
        let id: Arc<str> = "c".into();
        let (first, _) = registry.attach(&stats, id.clone(), true, 1).await;
        assert!(
            registry.claim(&id, 1, true).is_none(),
            "no claim by default"
        );
        // Connection 2 of this node takes the id over; connection 1 still holds it when it
        // detaches (the registry hands it over after), so it releases: a cluster's release
        // expects its own KV revision, which connection 2's claim then moves on.
        let mailbox = first.state.mailbox.clone();
        let registry = Arc::new(registry);
        let taking = tokio::spawn({
            let (registry, id) = (registry.clone(), id.clone());
            async move {
                let stats = Stats::default();
                registry.attach(&stats, id, true, 2).await.0
            }
        });
        // Connection 1 reads the takeover, parks (here: ends) and answers.
        let reply = loop {
            if let Some(Control::TakeOver(reply)) = mailbox.take_control() {
                break reply;
            }
            tokio::task::yield_now().await;
        };
        let effects = registry.detach(1, first.state, None, 0);
        assert!(effects.release.is_none());
        reply.send(()).unwrap();
        let second = taking.await.unwrap();
        assert_eq!(*released.lock().unwrap(), [("c".to_owned(), 1)]);
        let _ = registry.detach(2, second.state, None, 0);
        assert_eq!(
            *released.lock().unwrap(),
            [("c".to_owned(), 1), ("c".to_owned(), 2)]
        );
        // A stale detach of a connection that no longer holds the id releases nothing.
        let (third, _) = registry.attach(&stats, id.clone(), true, 3).await;
        let stale = SessionState::new(id.clone(), third.state.mailbox.clone());
        let _ = registry.detach(1, stale, None, 0);
        assert_eq!(released.lock().unwrap().len(), 2);
    }
}
