//! The one store writer: a thread that receives [`Op`]s, turns them into row changes and
//! commits them in batches.
//!
//! - Batching: with `sync`, a batch is whatever arrived while the previous commit ran, so
//!   every client waiting for a commit shares one fsync (group commit). With `interval`
//!   and `none`, a batch collects for `flush_interval_ms` from its first operation.
//! - Within a batch, changes to one row coalesce (last wins); a row created and deleted
//!   within one batch is never written, and neither is a message queued and finished
//!   within one batch.
//! - Messages are stored once: queue and in-flight rows refer to a message row by id; the
//!   writer counts references in memory (rebuilt at start) and deletes a message row when
//!   its last reference goes.
//! - Operations of an older incarnation of a client id (a session that was replaced) are
//!   ignored, so they cannot touch the newer session's rows.
//! - A failed commit is logged and retried with the rows kept; nothing is acknowledged
//!   (with `sync`) until it succeeds.
//! - Once a minute it removes retained messages and queued messages that have expired.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::codec::{self, DeliveryRecord, InflightRecord, WillRecord};
use super::journal::{Op, SessionOp, StoreStats};
use super::{Journal, RowOp, Store, StoreError, Table};
use crate::config::{Durability, StorageConfig};
use crate::model::{Message, MessageId, Millis, ShrinkSparse, now_millis};

/// How often expired messages are removed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// With `durability = "none"`, how often a durable checkpoint bounds what a crash loses
/// (and lets redb reuse pages freed since the last one).
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);
/// Operations in one transaction at most, so one commit stays short.
const MAX_BATCH_OPS: usize = 50_000;
/// Pause before retrying a failed commit.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// Failed commits are logged at most this often.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the writer knows exists in the store.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub(crate) sessions: HashMap<Arc<str>, SessionRows>,
    pub(crate) messages: HashMap<MessageId, MessageRef>,
    pub(crate) retained: HashMap<String, RetainedRef>,
}

impl Index {
    fn stored_bytes(&self) -> u64 {
        let messages: u64 = self.messages.values().map(|m| m.bytes).sum();
        let retained: u64 = self.retained.values().map(|r| r.bytes).sum();
        let rows: u64 = self
            .sessions
            .values()
            .map(|s| {
                s.queue.values().map(|q| q.bytes).sum::<u64>()
                    + s.inflight
                        .values()
                        .map(|i| i.value.len() as u64)
                        .sum::<u64>()
            })
            .sum();
        messages + retained + rows
    }
}

/// The rows of one stored session.
#[derive(Debug)]
pub(crate) struct SessionRows {
    pub(crate) session: u64,
    pub(crate) subscriptions: HashSet<String>,
    pub(crate) queue: BTreeMap<u64, QueueRow>,
    pub(crate) inflight: HashMap<u16, InflightRow>,
    pub(crate) pubrel: HashSet<u16>,
    pub(crate) will: bool,
}

impl SessionRows {
    pub(crate) fn new(session: u64) -> Self {
        Self {
            session,
            subscriptions: HashSet::new(),
            queue: BTreeMap::new(),
            inflight: HashMap::new(),
            pubrel: HashSet::new(),
            will: false,
        }
    }
}

#[derive(Debug)]
pub(crate) struct QueueRow {
    pub(crate) message: MessageId,
    pub(crate) bytes: u64,
}

#[derive(Debug)]
pub(crate) struct InflightRow {
    pub(crate) message: MessageId,
    /// The stored value, kept so a stage change rewrites it without the delivery.
    pub(crate) value: Vec<u8>,
}

#[derive(Debug)]
pub(crate) struct MessageRef {
    pub(crate) count: u32,
    pub(crate) bytes: u64,
    pub(crate) expires_at: Option<Millis>,
    /// Whether the row exists in the store (or is in the open batch).
    pub(crate) stored: bool,
}

#[derive(Debug)]
pub(crate) struct RetainedRef {
    pub(crate) bytes: u64,
    pub(crate) expires_at: Option<Millis>,
}

/// Starts the writer thread on `store`; `cleanup` is committed first.
pub(crate) fn spawn(
    store: Box<dyn Store>,
    config: &StorageConfig,
    index: Index,
    cleanup: Vec<RowOp>,
) -> Result<Journal, StoreError> {
    let (tx, rx) = mpsc::channel();
    let (committed_tx, committed_rx) = watch::channel(0);
    let stats = Arc::new(StoreStats::default());
    stats
        .stored_bytes
        .store(index.stored_bytes(), Ordering::Relaxed);
    let location = store.location();
    let journal = Journal::new(
        tx,
        committed_rx,
        config.durability == Durability::Sync,
        config.max_stored_bytes,
        stats.clone(),
        location.clone(),
    );
    let mut writer = Writer {
        store,
        rx,
        committed: committed_tx,
        received: 0,
        durability: config.durability,
        flush_interval: Duration::from_millis(config.flush_interval_ms),
        index,
        pending: BTreeMap::new(),
        batch_ops: 0,
        touched: HashSet::new(),
        new_messages: HashMap::new(),
        stats,
        location: location.clone(),
        last_durable: Instant::now(),
        unsynced: false,
        last_error_log: None,
        replies: Vec::new(),
        closing: None,
        durable_requested: false,
    };
    for row in cleanup {
        let pending = Pending {
            value: row.value,
            fresh: false,
        };
        writer.pending.insert((row.table, row.key), pending);
    }
    std::thread::Builder::new()
        .name("midge-store".into())
        .spawn(move || writer.run())
        .map_err(|e| StoreError::Failed {
            path: location,
            what: format!("cannot start the writer thread: {e}"),
        })?;
    Ok(journal)
}

/// A row's change in the open batch.
struct Pending {
    /// The new value; `None` deletes.
    value: Option<Vec<u8>>,
    /// The row did not exist before this batch: deleting it again just forgets it.
    fresh: bool,
}

struct Writer {
    store: Box<dyn Store>,
    rx: mpsc::Receiver<Op>,
    committed: watch::Sender<u64>,
    /// Operations received so far; all of them are in the store after a commit.
    received: u64,
    durability: Durability,
    flush_interval: Duration,
    index: Index,
    /// The open batch: row → change, coalesced.
    pending: BTreeMap<(Table, Vec<u8>), Pending>,
    batch_ops: usize,
    /// Messages whose reference count changed in this batch.
    touched: HashSet<MessageId>,
    /// Messages referenced in this batch that have no row yet.
    new_messages: HashMap<MessageId, Arc<Message>>,
    stats: Arc<StoreStats>,
    location: String,
    last_durable: Instant,
    /// Whether non-durable commits were made since the last durable one.
    unsynced: bool,
    last_error_log: Option<Instant>,
    /// Flushes waiting for the next successful durable commit.
    replies: Vec<oneshot::Sender<()>>,
    closing: Option<oneshot::Sender<()>>,
    durable_requested: bool,
}

impl Writer {
    fn run(mut self) {
        let mut failing = !self.pending.is_empty() && !self.commit(true);
        let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
        loop {
            let wait = if failing {
                RETRY_DELAY
            } else {
                next_sweep.saturating_duration_since(Instant::now())
            };
            match self.rx.recv_timeout(wait) {
                Ok(op) => {
                    self.take(op);
                    self.gather();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // Every journal is gone (the broker was dropped without `close`).
                    self.commit(true);
                    return;
                }
            }
            if Instant::now() >= next_sweep {
                self.sweep(now_millis());
                next_sweep = Instant::now() + SWEEP_INTERVAL;
            }
            let durable = self.durability != Durability::None
                || self.durable_requested
                || self.closing.is_some()
                || self.last_durable.elapsed() >= CHECKPOINT_INTERVAL;
            failing = !self.commit(durable);
            if let Some(reply) = self.closing.take() {
                if failing {
                    tracing::error!(store = %self.location, "closing the store with changes that could not be committed; they are lost");
                }
                // Close the store (redb releases its file lock) before answering, so the
                // caller may open it again at once.
                drop(self);
                let _ = reply.send(());
                return;
            }
            if failing {
                std::thread::sleep(RETRY_DELAY);
            }
        }
    }

    fn batch_open(&self) -> bool {
        self.closing.is_none() && !self.durable_requested && self.batch_ops < MAX_BATCH_OPS
    }

    /// Collects the rest of the batch after its first operation.
    fn gather(&mut self) {
        match self.durability {
            Durability::Sync => {
                while self.batch_open() {
                    match self.rx.try_recv() {
                        Ok(op) => self.take(op),
                        Err(_) => break,
                    }
                }
            }
            Durability::Interval | Durability::None => {
                let deadline = Instant::now() + self.flush_interval;
                while self.batch_open() {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match self.rx.recv_timeout(left) {
                        Ok(op) => self.take(op),
                        Err(_) => break,
                    }
                }
            }
        }
    }

    fn take(&mut self, op: Op) {
        self.received += 1;
        self.batch_ops += 1;
        match op {
            Op::Session {
                client,
                session,
                op,
            } => self.session_op(client, session, op),
            Op::RetainedPut(message) => {
                let value = codec::encode_retained(&message);
                let bytes = (message.topic.len() + value.len()) as u64;
                let old = self.index.retained.insert(
                    message.topic.clone(),
                    RetainedRef {
                        bytes,
                        expires_at: message.expires_at,
                    },
                );
                if let Some(old) = old {
                    self.sub_bytes(old.bytes);
                }
                self.add_bytes(bytes);
                self.put(Table::Retained, message.topic.as_bytes().to_vec(), value);
            }
            Op::RetainedDelete(topic) => self.delete_retained(&topic),
            Op::AmqpQueue { name, value } => match value {
                Some(value) => self.put(Table::AmqpQueues, name.into_bytes(), value),
                None => self.delete(Table::AmqpQueues, name.into_bytes()),
            },
            Op::Flush(reply) => {
                self.durable_requested = true;
                self.replies.push(reply);
            }
            Op::Close(reply) => self.closing = Some(reply),
        }
    }

    /// Sets a row that may already exist in the store.
    fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.put_row(table, key, value, false);
    }

    /// Sets a row; `fresh` says it does not exist in the store yet.
    fn put_row(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>, fresh: bool) {
        match self.pending.entry((table, key)) {
            Entry::Occupied(mut e) => e.get_mut().value = Some(value),
            Entry::Vacant(e) => {
                e.insert(Pending {
                    value: Some(value),
                    fresh,
                });
            }
        }
    }

    fn delete(&mut self, table: Table, key: Vec<u8>) {
        match self.pending.entry((table, key)) {
            Entry::Occupied(e) if e.get().fresh => {
                e.remove();
            }
            Entry::Occupied(mut e) => e.get_mut().value = None,
            Entry::Vacant(e) => {
                e.insert(Pending {
                    value: None,
                    fresh: false,
                });
            }
        }
    }

    fn add_bytes(&self, n: u64) {
        self.stats.stored_bytes.fetch_add(n, Ordering::Relaxed);
    }

    fn sub_bytes(&self, n: u64) {
        // Saturating: the gauge is approximate and must never wrap.
        let _ = self
            .stats
            .stored_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    fn delete_retained(&mut self, topic: &str) {
        if let Some(old) = self.index.retained.remove(topic) {
            self.sub_bytes(old.bytes);
            self.delete(Table::Retained, topic.as_bytes().to_vec());
        }
    }

    /// One more row refers to `message`.
    fn reference(&mut self, message: &Arc<Message>) {
        let new_messages = &mut self.new_messages;
        let entry = self.index.messages.entry(message.id).or_insert_with(|| {
            new_messages.insert(message.id, message.clone());
            MessageRef {
                count: 0,
                bytes: 0,
                expires_at: message.expires_at,
                stored: false,
            }
        });
        entry.count += 1;
        self.touched.insert(message.id);
    }

    /// One row fewer refers to message `id`.
    fn release(&mut self, id: MessageId) {
        if let Some(entry) = self.index.messages.get_mut(&id) {
            entry.count = entry.count.saturating_sub(1);
            self.touched.insert(id);
        }
    }

    fn remove_queue_row(&mut self, client_key: &[u8], rows: &mut SessionRows, seq: u64) {
        if let Some(old) = rows.queue.remove(&seq) {
            self.delete(Table::Queue, [client_key, &seq.to_be_bytes()].concat());
            self.sub_bytes(old.bytes);
            self.release(old.message);
        }
    }

    fn remove_inflight_row(&mut self, client_key: &[u8], rows: &mut SessionRows, packet_id: u16) {
        if let Some(old) = rows.inflight.remove(&packet_id) {
            self.delete(
                Table::Inflight,
                [client_key, &packet_id.to_be_bytes()].concat(),
            );
            self.sub_bytes(old.value.len() as u64);
            self.release(old.message);
        }
    }

    fn session_op(&mut self, client: Arc<str>, session: u64, op: SessionOp) {
        let client_key = codec::client_key(&client);
        if let SessionOp::Put(record) = op {
            // A new incarnation replaces whatever an older one left.
            if self
                .index
                .sessions
                .get(&client)
                .is_some_and(|s| s.session != session)
            {
                self.delete_session(&client, &client_key);
            }
            self.put(Table::Sessions, client_key, codec::encode_session(&record));
            self.index
                .sessions
                .entry(client)
                .or_insert_with(|| SessionRows::new(session));
            return;
        }
        let Some(mut rows) = self.index.sessions.remove(&client) else {
            // Not stored (any more): nothing to change.
            return;
        };
        if rows.session != session {
            // An older incarnation's late change.
            self.index.sessions.insert(client, rows);
            return;
        }
        let key_with = |suffix: &[u8]| [client_key.as_slice(), suffix].concat();
        match op {
            SessionOp::Put(_) => {}
            SessionOp::Delete => {
                self.index.sessions.insert(client.clone(), rows);
                self.delete_session(&client, &client_key);
                return;
            }
            SessionOp::Subscribe { filter, record } => {
                self.put(
                    Table::Subscriptions,
                    key_with(filter.as_bytes()),
                    codec::encode_subscription(&record),
                );
                rows.subscriptions.insert(filter);
            }
            SessionOp::Unsubscribe { filter } => {
                if rows.subscriptions.remove(&filter) {
                    self.delete(Table::Subscriptions, key_with(filter.as_bytes()));
                }
            }
            SessionOp::Enqueue { seq, delivery } => {
                let fresh = !rows.queue.contains_key(&seq);
                self.remove_queue_row(&client_key, &mut rows, seq);
                let key = key_with(&seq.to_be_bytes());
                let value = codec::encode_queued(&DeliveryRecord::of(&delivery));
                let bytes = (key.len() + value.len()) as u64;
                self.reference(&delivery.message);
                rows.queue.insert(
                    seq,
                    QueueRow {
                        message: delivery.message.id,
                        bytes,
                    },
                );
                self.add_bytes(bytes);
                self.put_row(Table::Queue, key, value, fresh);
            }
            SessionOp::Dequeue { seq } => self.remove_queue_row(&client_key, &mut rows, seq),
            SessionOp::Dispatch {
                seq,
                packet_id,
                order,
                stage,
                delivery,
            } => {
                // In flight first, then out of the queue, so the message's count does not
                // pass through 0 in between.
                self.reference(&delivery.message);
                let fresh = !rows.inflight.contains_key(&packet_id);
                self.remove_inflight_row(&client_key, &mut rows, packet_id);
                let value = codec::encode_inflight(&InflightRecord {
                    stage,
                    order,
                    delivery: DeliveryRecord::of(&delivery),
                });
                self.add_bytes(value.len() as u64);
                rows.inflight.insert(
                    packet_id,
                    InflightRow {
                        message: delivery.message.id,
                        value: value.clone(),
                    },
                );
                self.put_row(
                    Table::Inflight,
                    key_with(&packet_id.to_be_bytes()),
                    value,
                    fresh,
                );
                if let Some(seq) = seq {
                    self.remove_queue_row(&client_key, &mut rows, seq);
                }
            }
            SessionOp::Stage { packet_id, stage } => {
                if let Some(row) = rows.inflight.get_mut(&packet_id) {
                    if let Some(byte) = row.value.get_mut(codec::INFLIGHT_STAGE_OFFSET) {
                        *byte = codec::stage_byte(stage);
                    }
                    let value = row.value.clone();
                    self.put(Table::Inflight, key_with(&packet_id.to_be_bytes()), value);
                }
            }
            SessionOp::Acked { packet_id } => {
                self.remove_inflight_row(&client_key, &mut rows, packet_id);
            }
            SessionOp::PubrelHeld { packet_id, reason } => {
                let fresh = rows.pubrel.insert(packet_id);
                self.put_row(
                    Table::Pubrel,
                    key_with(&packet_id.to_be_bytes()),
                    codec::encode_pubrel(reason),
                    fresh,
                );
            }
            SessionOp::PubrelReleased { packet_id } => {
                if rows.pubrel.remove(&packet_id) {
                    self.delete(Table::Pubrel, key_with(&packet_id.to_be_bytes()));
                }
            }
            SessionOp::WillPut { publish_at, will } => {
                rows.will = true;
                let value = codec::encode_will(&WillRecord {
                    session,
                    publish_at,
                    will,
                });
                self.put(Table::Wills, client_key.clone(), value);
            }
            SessionOp::WillDelete => {
                if rows.will {
                    rows.will = false;
                    self.delete(Table::Wills, client_key.clone());
                }
            }
        }
        self.index.sessions.insert(client, rows);
    }

    /// Deletes every row of the stored session `client`.
    fn delete_session(&mut self, client: &str, client_key: &[u8]) {
        let Some(mut rows) = self.index.sessions.remove(client) else {
            return;
        };
        let key_with = |suffix: &[u8]| [client_key, suffix].concat();
        for filter in std::mem::take(&mut rows.subscriptions) {
            self.delete(Table::Subscriptions, key_with(filter.as_bytes()));
        }
        let seqs: Vec<u64> = rows.queue.keys().copied().collect();
        for seq in seqs {
            self.remove_queue_row(client_key, &mut rows, seq);
        }
        let ids: Vec<u16> = rows.inflight.keys().copied().collect();
        for packet_id in ids {
            self.remove_inflight_row(client_key, &mut rows, packet_id);
        }
        for packet_id in std::mem::take(&mut rows.pubrel) {
            self.delete(Table::Pubrel, key_with(&packet_id.to_be_bytes()));
        }
        if rows.will {
            self.delete(Table::Wills, client_key.to_vec());
        }
        self.delete(Table::Sessions, client_key.to_vec());
    }

    /// Removes expired retained messages and queued messages whose expiry passed. The
    /// in-memory queues drop them when they reach the front; a later dequeue of a row
    /// already gone is a no-op.
    fn sweep(&mut self, now: Millis) {
        let expired: Vec<String> = self
            .index
            .retained
            .iter()
            .filter(|(_, r)| r.expires_at.is_some_and(|at| at <= now))
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in &expired {
            self.delete_retained(topic);
        }
        let clients: Vec<Arc<str>> = self.index.sessions.keys().cloned().collect();
        let mut removed = 0;
        for client in clients {
            let Some(mut rows) = self.index.sessions.remove(&client) else {
                continue;
            };
            let messages = &self.index.messages;
            let seqs: Vec<u64> = rows
                .queue
                .iter()
                .filter(|(_, q)| {
                    messages
                        .get(&q.message)
                        .and_then(|m| m.expires_at)
                        .is_some_and(|at| at <= now)
                })
                .map(|(seq, _)| *seq)
                .collect();
            let client_key = codec::client_key(&client);
            for seq in seqs {
                self.remove_queue_row(&client_key, &mut rows, seq);
                removed += 1;
            }
            self.index.sessions.insert(client, rows);
        }
        if removed + expired.len() > 0 {
            tracing::debug!(
                store = %self.location,
                retained = expired.len(),
                queued = removed,
                "removed expired messages from the store"
            );
        }
    }

    /// Gives back the room the index's tables grew to at a peak (a storm of sessions
    /// and messages), once they are at most a quarter full.
    fn shrink_sparse_tables(&mut self) {
        self.index.sessions.shrink_sparse();
        self.index.messages.shrink_sparse();
        self.index.retained.shrink_sparse();
        self.new_messages.shrink_sparse();
        self.touched.shrink_sparse();
    }

    /// Writes rows of messages first referenced in this batch, deletes rows of messages no
    /// longer referenced.
    fn finish_messages(&mut self) {
        for id in std::mem::take(&mut self.touched) {
            let Some(entry) = self.index.messages.get_mut(&id) else {
                continue;
            };
            if entry.count == 0 {
                let (stored, bytes) = (entry.stored, entry.bytes);
                self.index.messages.remove(&id);
                self.new_messages.remove(&id);
                if stored {
                    self.sub_bytes(bytes);
                    self.delete(Table::Messages, codec::message_key(id));
                }
            } else if !entry.stored {
                let Some(message) = self.new_messages.remove(&id) else {
                    continue;
                };
                let key = codec::message_key(id);
                let value = codec::encode_message(&message);
                entry.bytes = (key.len() + value.len()) as u64;
                entry.stored = true;
                let bytes = entry.bytes;
                self.add_bytes(bytes);
                self.put_row(Table::Messages, key, value, true);
            }
        }
    }

    /// Commits the open batch; returns false if the store refused it (the rows are kept
    /// for the next attempt).
    fn commit(&mut self, durable: bool) -> bool {
        self.finish_messages();
        self.shrink_sparse_tables();
        let ops = std::mem::take(&mut self.batch_ops);
        // An empty durable commit still makes earlier non-durable ones durable.
        if !self.pending.is_empty() || (durable && self.unsynced) {
            let rows: Vec<RowOp> = std::mem::take(&mut self.pending)
                .into_iter()
                .map(|((table, key), p)| RowOp {
                    table,
                    key,
                    value: p.value,
                })
                .collect();
            let started = Instant::now();
            if let Err(e) = self.store.apply(&rows, durable) {
                self.stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                if self
                    .last_error_log
                    .is_none_or(|at| at.elapsed() >= ERROR_LOG_INTERVAL)
                {
                    self.last_error_log = Some(Instant::now());
                    tracing::error!(error = %e, rows = rows.len(), "store commit failed; retrying (with durability = \"sync\", acknowledgements wait)");
                }
                // Keep the rows for the next attempt.
                for row in rows {
                    let pending = Pending {
                        value: row.value,
                        fresh: false,
                    };
                    self.pending.insert((row.table, row.key), pending);
                }
                self.batch_ops = ops;
                return false;
            }
            self.stats.commit_duration.observe(started.elapsed());
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            self.unsynced = !durable;
        }
        self.stats
            .operations
            .fetch_add(ops as u64, Ordering::Relaxed);
        if durable {
            self.last_durable = Instant::now();
            self.durable_requested = false;
            for reply in self.replies.drain(..) {
                let _ = reply.send(());
            }
        }
        self.committed.send_replace(self.received);
        true
    }
}
