//! Dormant connections: plain-TCP connections that have been idle for
//! `mqtt.dormant_after_secs` leave tokio. Their task ends and their socket leaves tokio's I/O
//! driver; what they are (the connection's state, its session, its place in the
//! connection counts) waits in a box here, their socket in an epoll (kqueue) of this
//! module's own. That epoll is itself watched by tokio, and one task here wakes the
//! connections it reports.
//!
//! An idle connection's task cell (768 bytes) and I/O registration (256) are most of what
//! it costs (ARCHITECTURE.md, "Memory per connection"); a dormant one keeps its state, a
//! slot here and a waker instead.
//!
//! A dormant connection wakes, on a new task with its socket back in tokio, when:
//! - its socket becomes readable (input, the client closing, an error);
//! - its mailbox is woken (a delivery, a control such as takeover or kick, shutdown,
//!   re-checking its subscriptions);
//! - its deadline passes (keep alive, a credential's expiry).
//!
//! It then carries on exactly where it stopped. Readiness is never lost:
//! - registering a readable socket reports it at once;
//! - a mailbox woken while the connection was on its way here is found by
//!   [`Mailbox::wait_dormant`].
//!
//! A connection goes dormant on its own worker, without handing anything to another
//! thread: its socket moves from tokio's epoll to this one by two `epoll_ctl` calls.
//!
//! Locks: `Shared::state` is a leaf. It is not held across a system call, and nothing is
//! called while it is held.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Wake, Waker};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::mailbox::Mailbox;

/// A dormant connection, as this module sees it (`connection::Asleep`).
pub(crate) trait Sleeper: Send {
    /// Its socket.
    fn fd(&self) -> RawFd;
    /// Its session's mailbox.
    fn mailbox(&self) -> &Mailbox;
    /// When it must wake without input: its keep-alive limit or its credential's expiry.
    fn deadline(&self) -> Option<Instant>;
    /// Puts the socket back in tokio's I/O driver and carries on serving on a new task.
    fn wake(self: Box<Self>);
}

impl std::fmt::Debug for dyn Sleeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sleeper").field("fd", &self.fd()).finish()
    }
}

/// Where a broker's dormant connections wait. Its task starts with the first of them, on
/// the runtime that serves it, and ends with the broker.
#[derive(Debug, Default)]
pub(crate) struct Dormitory {
    started: OnceLock<Option<Arc<Shared>>>,
    counts: Arc<Counts>,
}

/// What the admin API's metrics show of dormant connections.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    /// Gauge: connections dormant now.
    pub(crate) dormant: AtomicU64,
    /// Times a dormant connection woke.
    pub(crate) woken: AtomicU64,
}

impl Dormitory {
    /// Takes `sleeper` in. When that cannot be done (the epoll could not be made or the
    /// socket not added to it), it is woken at once, so it carries on as before.
    pub(crate) fn put_to_sleep(&self, sleeper: Box<dyn Sleeper>) {
        let shared = self.started.get_or_init(|| match start(self.counts.clone()) {
            Ok(shared) => Some(shared),
            Err(e) => {
                tracing::warn!(error = %e, "idle connections cannot be made dormant: their epoll could not be created");
                None
            }
        });
        match shared {
            Some(shared) => shared.admit(sleeper),
            None => sleeper.wake(),
        }
    }

    /// Connections dormant now, and how many times one woke.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.counts.dormant.load(Ordering::Relaxed),
            self.counts.woken.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Dormitory {
    fn drop(&mut self) {
        if let Some(Some(shared)) = self.started.get() {
            shared.closed.store(true, Ordering::Relaxed);
            shared.notify.notify_one();
        }
    }
}

/// What the task shares with connections going dormant and with their mailboxes' wakers.
struct Shared {
    state: Mutex<State>,
    /// Adds and removes sockets in the epoll (`epoll_ctl` is safe from any thread).
    registry: mio::Registry,
    /// Wakes the task: a mailbox woken, an earlier deadline, the broker gone.
    notify: Notify,
    closed: AtomicBool,
    counts: Arc<Counts>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    slots: Slots,
    /// Deadlines by token; stale entries (woken earlier) are skipped when they come up.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Tokens of dormant connections whose mailbox was woken.
    woken: Vec<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by the connection going dormant, on its worker.
    fn admit(self: &Arc<Self>, sleeper: Box<dyn Sleeper>) {
        let fd = sleeper.fd();
        let deadline = sleeper.deadline();
        let token = self.lock().slots.insert(sleeper);
        self.counts.dormant.fetch_add(1, Ordering::Relaxed);
        // Nothing can reach the slot until the socket is registered or the waker
        // installed, both below.
        if let Err(e) =
            self.registry
                .register(&mut SourceFd(&fd), epoll_token(token), Interest::READABLE)
        {
            tracing::warn!(error = %e, "an idle connection could not be made dormant");
            let sleeper = self.lock().slots.take(token);
            if let Some(sleeper) = sleeper {
                self.counts.dormant.fetch_sub(1, Ordering::Relaxed);
                sleeper.wake();
            }
            return;
        }
        let waker = Waker::from(Arc::new(MailboxWaker {
            shared: self.clone(),
            token,
        }));
        let mut state = self.lock();
        let earliest = state.deadlines.peek().map(|Reverse((at, _))| *at);
        if let Some(at) = deadline {
            state.deadlines.push(Reverse((at, token)));
        }
        let woken = state
            .slots
            .get(token)
            .is_some_and(|sleeper| sleeper.mailbox().wait_dormant(waker));
        if woken {
            state.woken.push(token);
        }
        drop(state);
        if woken || deadline.is_some_and(|at| earliest.is_none_or(|e| at < e)) {
            self.notify.notify_one();
        }
    }
}

/// The waker a dormant connection's mailbox holds.
struct MailboxWaker {
    shared: Arc<Shared>,
    token: u64,
}

impl Wake for MailboxWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.lock().woken.push(self.token);
        self.shared.notify.notify_one();
    }
}

fn start(counts: Arc<Counts>) -> std::io::Result<Arc<Shared>> {
    let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
    let poll = Poll::new()?;
    let shared = Arc::new(Shared {
        state: Mutex::default(),
        registry: poll.registry().try_clone()?,
        notify: Notify::new(),
        closed: AtomicBool::new(false),
        counts,
    });
    let poll = {
        let _entered = runtime.enter();
        // `AsyncFd::new` is deprecated because the caller could close the descriptor
        // while it is registered; here the `Poll` that owns it is inside the `AsyncFd`.
        #[allow(deprecated)]
        AsyncFd::new(EpollFd(poll))?
    };
    runtime.spawn(run(poll, shared.clone()));
    Ok(shared)
}

/// The epoll, for tokio to watch (it becomes readable when any socket in it does).
struct EpollFd(Poll);

impl AsRawFd for EpollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The dormant connections by token: a slot's index, and its generation in the high 32
/// bits so that a stale token (a waker or timer of a connection since woken) finds nothing.
#[derive(Default)]
struct Slots {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    sleeper: Option<Box<dyn Sleeper>>,
}

impl Slots {
    fn insert(&mut self, sleeper: Box<dyn Sleeper>) -> u64 {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot::default());
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 connections")
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.sleeper = Some(sleeper);
        (u64::from(slot.generation) << 32) | u64::from(index)
    }

    /// The token of what sleeps at `index` (an event of the epoll names only the index).
    fn token_at(&self, index: usize) -> Option<u64> {
        let slot = self.slots.get(index)?;
        slot.sleeper.as_ref()?;
        Some((u64::from(slot.generation) << 32) | index as u64)
    }

    fn get(&self, token: u64) -> Option<&dyn Sleeper> {
        let slot = self.slots.get((token & 0xffff_ffff) as usize)?;
        if u64::from(slot.generation) != token >> 32 {
            return None;
        }
        slot.sleeper.as_deref()
    }

    fn take(&mut self, token: u64) -> Option<Box<dyn Sleeper>> {
        let index = (token & 0xffff_ffff) as u32;
        let slot = self.slots.get_mut(index as usize)?;
        if u64::from(slot.generation) != token >> 32 {
            return None;
        }
        let sleeper = slot.sleeper.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index);
        Some(sleeper)
    }

    fn all(&self) -> Vec<u64> {
        (0..self.slots.len())
            .filter_map(|i| self.token_at(i))
            .collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

/// The epoll names a dormant socket by its slot's index.
fn epoll_token(token: u64) -> Token {
    Token((token & 0xffff_ffff) as usize)
}

/// The task: waits for sockets, mailboxes and deadlines, and wakes their connections.
async fn run(mut poll: AsyncFd<EpollFd>, shared: Arc<Shared>) {
    let mut events = Events::with_capacity(1024);
    let mut ready_indexes: Vec<usize> = Vec::new();
    loop {
        let next_deadline = shared.lock().deadlines.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
            ready = poll.readable_mut() => match ready {
                Ok(mut ready) => match ready.get_inner_mut().0.poll(&mut events, Some(Duration::ZERO)) {
                    Ok(()) => {
                        ready_indexes.extend(events.iter().map(|e| e.token().0));
                        // A full batch may have left more: look again before waiting.
                        if events.iter().count() < events.capacity() {
                            ready.clear_ready();
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::error!(error = %e, "epoll_wait on dormant connections failed; waking them all");
                        let all = shared.lock().slots.all();
                        wake(&shared, all);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, "the dormant connections' epoll failed; waking them all");
                    let all = shared.lock().slots.all();
                    wake(&shared, all);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = shared.notify.notified() => {}
            () = sleep_until(next_deadline), if next_deadline.is_some() => {}
        }
        let due = {
            let mut state = shared.lock();
            let State {
                slots,
                deadlines,
                woken,
            } = &mut *state;
            let mut due: Vec<u64> = ready_indexes
                .drain(..)
                .filter_map(|index| slots.token_at(index))
                .collect();
            due.append(woken);
            let now = Instant::now();
            while let Some(Reverse((at, token))) = deadlines.peek().copied()
                && at <= now
            {
                deadlines.pop();
                due.push(token);
            }
            if shared.closed.load(Ordering::Relaxed) {
                // The broker is gone (so is every connection, each holding it): nothing
                // more will arrive.
                due.extend(slots.all());
            }
            due
        };
        wake(&shared, due);
        if shared.closed.load(Ordering::Relaxed) {
            return;
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Wakes the connections named (stale tokens find nothing).
fn wake(shared: &Shared, tokens: Vec<u64>) {
    if tokens.is_empty() {
        return;
    }
    let waking: Vec<Box<dyn Sleeper>> = {
        let mut state = shared.lock();
        tokens
            .into_iter()
            .filter_map(|token| state.slots.take(token))
            .collect()
    };
    if waking.is_empty() {
        return;
    }
    // Counted first: whoever sees a connection awake sees it counted.
    let counts = &shared.counts;
    counts
        .woken
        .fetch_add(waking.len() as u64, Ordering::Relaxed);
    counts
        .dormant
        .fetch_sub(waking.len() as u64, Ordering::Relaxed);
    for sleeper in waking {
        // Out of this epoll before tokio's takes the socket, so only one watches it.
        let _ = shared.registry.deregister(&mut SourceFd(&sleeper.fd()));
        sleeper.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    /// A sleeper that reports its waking on a channel.
    struct Fake {
        id: usize,
        socket: std::net::TcpStream,
        mailbox: Arc<Mailbox>,
        deadline: Option<Instant>,
        woken: std::sync::mpsc::Sender<(usize, Self)>,
    }

    impl Sleeper for Fake {
        fn fd(&self) -> RawFd {
            self.socket.as_raw_fd()
        }
        fn mailbox(&self) -> &Mailbox {
            &self.mailbox
        }
        fn deadline(&self) -> Option<Instant> {
            self.deadline
        }
        fn wake(self: Box<Self>) {
            let woken = self.woken.clone();
            let _ = woken.send((self.id, *self));
        }
    }

    /// A connected pair of loopback sockets: (what the sleeper holds, its peer).
    fn socket_pair(listener: &std::net::TcpListener) -> (std::net::TcpStream, std::net::TcpStream) {
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        (ours, peer)
    }

    fn recv(woken: &std::sync::mpsc::Receiver<(usize, Fake)>) -> (usize, Fake) {
        woken
            .recv_timeout(Duration::from_secs(10))
            .expect("a sleeper woke within 10 s")
    }

    /// Each of the three causes wakes a sleeper, once; a sleeper whose mailbox was woken
    /// on its way in wakes at once; and nothing wakes one that nothing happened to.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn input_mailbox_and_deadline_each_wake_a_sleeper_once() {
        let dormitory = Dormitory::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (tx, woken) = std::sync::mpsc::channel();
        let mut peers = Vec::new();
        let mut mailboxes = Vec::new();
        for id in 0..5 {
            let (socket, peer) = socket_pair(&listener);
            let mailbox = Mailbox::new(format!("c{id}").into());
            if id == 3 {
                // Woken before it is put to sleep: the wake-up is kept.
                mailbox.request_recheck();
            }
            mailboxes.push(mailbox.clone());
            peers.push(peer);
            dormitory.put_to_sleep(Box::new(Fake {
                id,
                socket,
                mailbox,
                deadline: (id == 2).then(|| Instant::now() + Duration::from_millis(200)),
                woken: tx.clone(),
            }));
        }
        // What woke is kept: dropped, its socket would close.
        let mut awake = Vec::new();
        let mut next = || {
            let (id, sleeper) = recv(&woken);
            awake.push(sleeper);
            id
        };
        assert_eq!(next(), 3, "the mailbox woken on its way in");
        peers[0].write_all(b"x").unwrap();
        assert_eq!(next(), 0, "input");
        mailboxes[1].request_recheck();
        assert_eq!(next(), 1, "its mailbox");
        assert_eq!(next(), 2, "its deadline");
        // Waking the same ones again finds nothing asleep; number 4 sleeps on.
        peers[0].write_all(b"y").unwrap();
        mailboxes[1].request_recheck();
        assert!(
            woken.recv_timeout(Duration::from_millis(300)).is_err(),
            "nothing else woke"
        );
        assert_eq!(dormitory.counts(), (1, 4));
        // The peer closing wakes it too.
        drop(peers.remove(4));
        assert_eq!(recv(&woken).0, 4, "the peer closed");
        assert_eq!(dormitory.counts(), (0, 5));
    }

    /// Many threads put sleepers in and wake them, by input and by their mailboxes at the
    /// same time, over and over: each sleeper wakes exactly once per time it slept, and
    /// none is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_threads_put_to_sleep_and_wake_without_losing_one() {
        const THREADS: usize = 8;
        const SLEEPERS: usize = 32;
        const ROUNDS: usize = 20;
        let dormitory = Arc::new(Dormitory::default());
        let handle = tokio::runtime::Handle::current();
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let dormitory = dormitory.clone();
                let handle = handle.clone();
                std::thread::spawn(move || {
                    let _entered = handle.enter();
                    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    let (tx, woken) = std::sync::mpsc::channel();
                    let mut sleepers = Vec::new();
                    let mut peers = Vec::new();
                    for i in 0..SLEEPERS {
                        let (socket, peer) = socket_pair(&listener);
                        peers.push(peer);
                        sleepers.push(Fake {
                            id: t * SLEEPERS + i,
                            socket,
                            mailbox: Mailbox::new(format!("t{t}c{i}").into()),
                            deadline: None,
                            woken: tx.clone(),
                        });
                    }
                    let mut wakes = 0;
                    for round in 0..ROUNDS {
                        let mailboxes: Vec<_> =
                            sleepers.iter().map(|s| s.mailbox.clone()).collect();
                        for sleeper in sleepers.drain(..) {
                            dormitory.put_to_sleep(Box::new(sleeper));
                        }
                        // Half by input, half by the mailbox, some by both at once.
                        for (i, mailbox) in mailboxes.iter().enumerate() {
                            if (i + round) % 2 == 0 || i % 5 == 0 {
                                mailbox.request_recheck();
                            }
                            if (i + round) % 2 == 1 || i % 5 == 0 {
                                peers[i].write_all(b"x").unwrap();
                            }
                        }
                        let mut seen = std::collections::HashSet::new();
                        while sleepers.len() < SLEEPERS {
                            let Ok((id, mut sleeper)) = woken.recv_timeout(Duration::from_secs(10))
                            else {
                                let missing: Vec<usize> = (0..SLEEPERS)
                                    .filter(|i| !seen.contains(&(t * SLEEPERS + i)))
                                    .collect();
                                panic!("thread {t} round {round}: never woke: {missing:?}");
                            };
                            assert!(seen.insert(id), "sleeper {id} woke twice in round {round}");
                            // Take what woke it, as a connection would.
                            sleeper.mailbox.take_recheck();
                            let mut buf = [0u8; 64];
                            while std::io::Read::read(&mut sleeper.socket, &mut buf).is_ok() {}
                            sleepers.push(sleeper);
                            wakes += 1;
                        }
                        // Back in order, so that `mailboxes[i]` and `peers[i]` are one
                        // sleeper's.
                        sleepers.sort_by_key(|s| s.id);
                    }
                    wakes
                })
            })
            .collect();
        let mut total = 0;
        for thread in threads {
            total += tokio::task::spawn_blocking(move || thread.join().unwrap())
                .await
                .unwrap();
        }
        assert_eq!(total, THREADS * SLEEPERS * ROUNDS);
        let (dormant, woken) = dormitory.counts();
        assert_eq!(dormant, 0);
        assert_eq!(woken, (THREADS * SLEEPERS * ROUNDS) as u64);
    }

    /// A token taken once finds nothing the second time, nor after its slot is reused.
    #[test]
    fn stale_tokens_find_nothing() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (tx, _woken) = std::sync::mpsc::channel();
        let fake = || -> Box<dyn Sleeper> {
            Box::new(Fake {
                id: 0,
                socket: socket_pair(&listener).0,
                mailbox: Mailbox::new("fake".into()),
                deadline: None,
                woken: tx.clone(),
            })
        };
        let mut slots = Slots::default();
        let first = slots.insert(fake());
        assert!(slots.take(first).is_some());
        assert!(slots.take(first).is_none());
        let second = slots.insert(fake());
        assert_eq!(
            second & 0xffff_ffff,
            first & 0xffff_ffff,
            "the slot is reused"
        );
        assert_ne!(second, first);
        assert!(slots.get(first).is_none());
        assert!(slots.take(first).is_none());
        assert_eq!(slots.len(), 1);
        assert_eq!(
            slots.token_at((second & 0xffff_ffff) as usize),
            Some(second)
        );
        assert!(slots.take(second).is_some());
        assert_eq!(slots.len(), 0);
        assert_eq!(slots.token_at(0), None);
    }
}
