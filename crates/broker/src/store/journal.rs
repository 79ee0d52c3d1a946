//! The handle through which the broker records changes for the store writer: a channel
//! send per change, never I/O, never a wait (except [`Journal::settled`], which the
//! connection awaits before writing when durability is `sync`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use midge_proto::{ReasonCode, Will};
use tokio::sync::{oneshot, watch};

use super::codec::SessionRecord;
use crate::model::{Delivery, Message, Millis, now_millis};
use crate::model::{Stage, SubscriptionRecord};

/// In `interval` and `none` modes, connections wait for the writer once this many
/// operations are queued for it, so a disk slower than the clients bounds memory instead
/// of growing it.
const MAX_BACKLOG: u64 = 1_000_000;

/// A change to one stored session.
#[derive(Debug)]
pub(crate) enum SessionOp {
    /// The session is (still) stored with this record.
    Put(SessionRecord),
    /// The session ended: everything it owns goes.
    Delete,
    Subscribe {
        filter: String,
        record: SubscriptionRecord,
    },
    Unsubscribe {
        filter: String,
    },
    /// A QoS 1/2 delivery queued at `seq`.
    Enqueue {
        seq: u64,
        delivery: Delivery,
    },
    /// The delivery at `seq` left the queue without going in flight (expired, too large,
    /// evicted, handed to another group member).
    Dequeue {
        seq: u64,
    },
    /// A delivery went in flight under `packet_id`; it left the queue at `seq` (none for
    /// retained messages sent at subscribe). One operation, so no commit sees it in
    /// neither place or in both.
    Dispatch {
        seq: Option<u64>,
        packet_id: u16,
        order: u64,
        stage: Stage,
        delivery: Delivery,
    },
    /// An in-flight message moved on (PUBREC received: awaiting PUBCOMP).
    Stage {
        packet_id: u16,
        stage: Stage,
    },
    /// An in-flight message is finished (PUBACK, PUBCOMP, error PUBREC, or dropped).
    Acked {
        packet_id: u16,
    },
    /// An inbound QoS 2 packet id was PUBREC'd with `reason` and is held until PUBREL.
    PubrelHeld {
        packet_id: u16,
        reason: ReasonCode,
    },
    /// PUBREL released an inbound QoS 2 packet id.
    PubrelReleased {
        packet_id: u16,
    },
    /// A will waits for its delay.
    WillPut {
        publish_at: Millis,
        will: Will,
    },
    /// The delayed will was published or cancelled.
    WillDelete,
}

/// One operation for the writer.
#[derive(Debug)]
pub(crate) enum Op {
    Session {
        client: Arc<str>,
        session: u64,
        op: SessionOp,
    },
    RetainedPut(Arc<Message>),
    RetainedDelete(String),
    /// A durable AMQP queue's declaration row (`None` deletes it).
    AmqpQueue {
        name: String,
        value: Option<Vec<u8>>,
    },
    /// Commit durably now, then answer.
    Flush(oneshot::Sender<()>),
    /// Commit durably, close the store, answer, and stop.
    Close(oneshot::Sender<()>),
}

/// Counters of the store, shared by the writer and the broker.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Gauge: bytes of messages, retained messages and queue rows in the store.
    pub stored_bytes: AtomicU64,
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Operations applied.
    pub operations: AtomicU64,
    /// Commits that failed (each is retried).
    pub failed_commits: AtomicU64,
    /// Messages for offline sessions dropped because the store was full.
    pub dropped_full: AtomicU64,
    /// Time each successful commit took (with its fsync when durable).
    pub commit_duration: crate::stats::Histogram,
    last_full_warning: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    tx: mpsc::Sender<Op>,
    /// Operations sent so far. Incremented before each send, so a reader that sees N knows
    /// its own earlier sends are among the first N the writer receives.
    issued: AtomicU64,
    /// Operations received by the writer and committed.
    committed: watch::Receiver<u64>,
    sync: bool,
    max_stored_bytes: u64,
    stats: Arc<StoreStats>,
    location: String,
}

/// See the module documentation. Clones share one writer.
#[derive(Debug, Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

impl Journal {
    pub(crate) fn new(
        tx: mpsc::Sender<Op>,
        committed: watch::Receiver<u64>,
        sync: bool,
        max_stored_bytes: u64,
        stats: Arc<StoreStats>,
        location: String,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                tx,
                issued: AtomicU64::new(0),
                committed,
                sync,
                max_stored_bytes,
                stats,
                location,
            }),
        }
    }

    pub(super) fn send(&self, op: Op) {
        self.shared.issued.fetch_add(1, Ordering::SeqCst);
        // The writer only stops after `close`; a send after that has nothing to reach.
        let _ = self.shared.tx.send(op);
    }

    /// The store's counters.
    pub fn stats(&self) -> &StoreStats {
        &self.shared.stats
    }

    /// Where the store is, for messages.
    pub fn location(&self) -> &str {
        &self.shared.location
    }

    /// Whether PUBACK/PUBREC wait for commits (`durability = "sync"`).
    pub fn is_sync(&self) -> bool {
        self.shared.sync
    }

    /// The journal of one session incarnation.
    pub fn session(&self, client: Arc<str>, session: u64) -> SessionJournal {
        SessionJournal {
            journal: self.clone(),
            client,
            session,
        }
    }

    /// Resolves once everything recorded so far is committed — with `sync`, or when the
    /// writer has fallen far behind; otherwise at once. The connection awaits it before
    /// writing, so nothing it sends (PUBACK, PUBREC, PUBREL, a PUBLISH with its packet id)
    /// runs ahead of the store.
    pub async fn settled(&self) {
        let target = self.shared.issued.load(Ordering::SeqCst);
        if self.is_settled_for(target) {
            return;
        }
        let mut committed = self.shared.committed.clone();
        // An error means the writer stopped (closed): nothing more will commit.
        let _ = committed.wait_for(|&c| c >= target).await;
    }

    /// Whether [`Journal::settled`] would resolve at once.
    pub fn is_settled(&self) -> bool {
        self.is_settled_for(self.shared.issued.load(Ordering::SeqCst))
    }

    fn is_settled_for(&self, target: u64) -> bool {
        let committed = *self.shared.committed.borrow();
        committed >= target || (!self.shared.sync && target - committed < MAX_BACKLOG)
    }

    /// Commits everything recorded so far durably.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Flush(tx));
        let _ = rx.await;
    }

    /// Commits everything durably and closes the store; later records are dropped.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Close(tx));
        let _ = rx.await;
    }

    /// Records the retained tree's change for `topic`: the stored copy, or a deletion.
    /// `$SYS` topics are not stored: the broker republishes them.
    pub(crate) fn retained(&self, topic: &str, stored: Option<&Arc<Message>>) {
        if topic == "$SYS" || topic.starts_with("$SYS/") {
            return;
        }
        match stored {
            Some(message) => self.send(Op::RetainedPut(message.clone())),
            None => self.send(Op::RetainedDelete(topic.to_owned())),
        }
    }

    /// Whether the store holds `max_stored_bytes` or more.
    pub fn is_full(&self) -> bool {
        self.shared.max_stored_bytes > 0
            && self.shared.stats.stored_bytes.load(Ordering::Relaxed)
                >= self.shared.max_stored_bytes
    }

    /// Counts a message dropped because the store is full, warning at most once a minute.
    pub(crate) fn count_full_drop(&self) {
        let stats = &self.shared.stats;
        stats.dropped_full.fetch_add(1, Ordering::Relaxed);
        let now = now_millis();
        let last = stats.last_full_warning.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 60_000
            && stats
                .last_full_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                store = %self.shared.location,
                max_stored_bytes = self.shared.max_stored_bytes,
                dropped = stats.dropped_full.load(Ordering::Relaxed),
                "the store is full: QoS 1/2 messages for offline sessions are dropped until it has room"
            );
        }
    }
}

/// The journal of one session incarnation (client id + session id): what the session
/// machine, its mailbox and the registry record about it.
#[derive(Debug, Clone)]
pub struct SessionJournal {
    journal: Journal,
    client: Arc<str>,
    session: u64,
}

impl SessionJournal {
    fn send(&self, op: SessionOp) {
        self.journal.send(Op::Session {
            client: self.client.clone(),
            session: self.session,
            op,
        });
    }

    /// The client id of the session.
    pub fn client(&self) -> &Arc<str> {
        &self.client
    }

    /// The session incarnation id.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// The broker-wide journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The session is stored with this expiry; `expires_at` is set while it is parked.
    pub fn put(&self, expiry_interval: u32, expires_at: Option<Millis>) {
        self.send(SessionOp::Put(SessionRecord {
            session: self.session,
            expiry_interval,
            expires_at,
        }));
    }

    /// The session ended.
    pub fn delete(&self) {
        self.send(SessionOp::Delete);
    }

    /// A subscription was added or replaced.
    pub fn subscribe(&self, filter: &str, record: SubscriptionRecord) {
        self.send(SessionOp::Subscribe {
            filter: filter.to_owned(),
            record,
        });
    }

    /// A subscription was removed.
    pub fn unsubscribe(&self, filter: &str) {
        self.send(SessionOp::Unsubscribe {
            filter: filter.to_owned(),
        });
    }

    /// A QoS 1/2 delivery was queued at `seq`.
    pub fn enqueue(&self, seq: u64, delivery: &Delivery) {
        self.send(SessionOp::Enqueue {
            seq,
            delivery: delivery.clone(),
        });
    }

    /// The delivery at `seq` left the queue without going in flight.
    pub fn dequeue(&self, seq: u64) {
        self.send(SessionOp::Dequeue { seq });
    }

    /// A delivery went in flight (from the queue at `seq`, if it was queued).
    pub fn dispatch(
        &self,
        seq: Option<u64>,
        packet_id: u16,
        order: u64,
        stage: Stage,
        delivery: &Delivery,
    ) {
        self.send(SessionOp::Dispatch {
            seq,
            packet_id,
            order,
            stage,
            delivery: delivery.clone(),
        });
    }

    /// An in-flight message reached `stage`.
    pub fn stage(&self, packet_id: u16, stage: Stage) {
        self.send(SessionOp::Stage { packet_id, stage });
    }

    /// An in-flight message is finished.
    pub fn acked(&self, packet_id: u16) {
        self.send(SessionOp::Acked { packet_id });
    }

    /// An inbound QoS 2 packet id, PUBREC'd with `reason`, is held until PUBREL.
    pub fn pubrel_held(&self, packet_id: u16, reason: ReasonCode) {
        self.send(SessionOp::PubrelHeld { packet_id, reason });
    }

    /// An inbound QoS 2 packet id was released.
    pub fn pubrel_released(&self, packet_id: u16) {
        self.send(SessionOp::PubrelReleased { packet_id });
    }

    /// A will waits for its delay.
    pub fn will_put(&self, publish_at: Millis, will: &Will) {
        self.send(SessionOp::WillPut {
            publish_at,
            will: will.clone(),
        });
    }

    /// The delayed will was published or cancelled.
    pub fn will_delete(&self) {
        self.send(SessionOp::WillDelete);
    }
}
