//! Retained messages cluster-wide, in the JetStream KV bucket [`BUCKET`].
//!
//! Each node keeps the whole retained set in its own [`RetainedStore`], a mirror fed by a
//! KV watch, so SUBSCRIBE matches locally without a network call. Before the node serves
//! anyone it loads the bucket's current values; then the watch applies every change from
//! any node. The mirror only stores: live delivery of a retained PUBLISH goes through the
//! routing fabric, so a mirrored message is never delivered twice.
//!
//! - **Key**: the topic's subject ([`subject::topic_to_subject`]). Its tokens use only
//!   `[A-Za-z0-9_=-]` joined by `.`, which KV keys allow, and it decodes back exactly.
//! - **Value**: the message's [`envelope`], stamped with this node's id, incarnation and a
//!   sequence number per write. A deletion (empty retained payload) is written as an
//!   envelope with an empty payload rather than a KV delete, so it too says who wrote it.
//! - **Writes**: a retained PUBLISH updates the local mirror at once (as on one node) and
//!   queues the KV write, never awaited on the publish path. One writer task puts them in
//!   order; only the latest change per topic waits, so a topic's last value wins on this
//!   node, and the KV's order decides between nodes (last writer wins). While NATS is
//!   unreachable, changes of up to `forward_queue` topics wait and are retried with
//!   backoff; beyond that, or for a value above NATS's maximum payload or a key too long
//!   for a subject, the change stays on this node (counted in [`RetainedStats::dropped`]).
//! - **Echoes**: a KV entry older than this node's own pending write for the same topic is
//!   skipped (the pending write lands after it in the KV's order); the echo of the pending
//!   write itself is applied and ends the wait. So every node ends with the KV's value.
//! - **Expiry** is stored as the time left when written; a reader subtracts the time since
//!   the NATS server stored the entry. Only the reading node's and the NATS server's clocks
//!   are compared, never two nodes', and a negative difference counts as zero.
//! - `$SYS` topics never leave their node.
//!
//! Locks: the pending-write table is a std mutex, never held across an await, with no
//! NATS call and no mirror call under it; the mirror takes its own lock inside its calls.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::envelope::{self, Origin};
use super::{ClusterError, MAX_SUBJECT_LEN, should_log, subject};
use crate::config::ClusterConfig;
use crate::model::{Message, Millis, now_millis};
use crate::retain::{Retained, RetainedStore};
use crate::stats::Stats;

/// The KV bucket holding the retained messages.
pub const BUCKET: &str = "midge_retained";

/// How long a stopping node keeps writing changes that still wait for NATS.
const DRAIN: Duration = Duration::from_secs(2);

/// How long the initial load may take before it is started again.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Counters of the retained bucket on this node.
#[derive(Debug, Default)]
pub struct RetainedStats {
    /// Changes written to the bucket.
    pub written: AtomicU64,
    /// Changes made here that never reach the bucket (see the module documentation).
    pub dropped: AtomicU64,
    /// Entries from the bucket applied to the mirror.
    pub applied: AtomicU64,
    /// Entries skipped: an older echo, or another node's value superseded by a pending
    /// write of this node.
    pub superseded: AtomicU64,
    /// Entries that did not decode (not midge's), ignored.
    pub invalid: AtomicU64,
}

/// The latest change of a topic waiting to be written; `None` deletes.
#[derive(Debug)]
struct Write {
    seq: u64,
    message: Option<Arc<Message>>,
}

#[derive(Debug, Default)]
struct Pending {
    next_seq: u64,
    queued: HashMap<String, Write>,
    order: VecDeque<String>,
    /// Per topic, the sequence number of this node's latest change not yet seen back
    /// through the watch.
    unconfirmed: HashMap<String, u64>,
}

impl Pending {
    fn pop(&mut self) -> Option<(String, Write)> {
        while let Some(topic) = self.order.pop_front() {
            if let Some(write) = self.queued.remove(&topic) {
                return Some((topic, write));
            }
        }
        None
    }

    /// Puts a failed write back in front, unless a newer change of its topic is queued.
    fn retry(&mut self, topic: String, write: Write) {
        if !self.queued.contains_key(&topic) {
            self.order.push_front(topic.clone());
            self.queued.insert(topic, write);
        }
    }

    /// Forgets a write that will never be made.
    fn abandon(&mut self, topic: &str, seq: u64) {
        if self.unconfirmed.get(topic) == Some(&seq) {
            self.unconfirmed.remove(topic);
        }
    }

    /// Whether a bucket entry for `topic` written by `own_seq` (this incarnation's
    /// sequence number, if it is its own) goes to the mirror.
    fn accept(&mut self, topic: &str, own_seq: Option<u64>) -> bool {
        let Some(&latest) = self.unconfirmed.get(topic) else {
            return true;
        };
        if own_seq == Some(latest) {
            self.unconfirmed.remove(topic);
            return true;
        }
        false
    }
}

#[derive(Debug)]
struct Shared {
    mirror: RetainedStore,
    pending: Mutex<Pending>,
    wake: Notify,
    /// Topics whose change may wait at once.
    capacity: usize,
    stats: RetainedStats,
    node: String,
    incarnation: u64,
    last_warning: Mutex<Option<Instant>>,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dropped(&self, topic: &str, why: &str) {
        Stats::add(&self.stats.dropped, 1);
        let log = should_log(&mut self.last_warning.lock().unwrap_or_else(|e| e.into_inner()));
        if log {
            tracing::warn!(%topic, "cluster: retained change kept on this node only: {why} (further ones are counted, logged at most every 10 s)");
        }
    }

    fn enqueue(&self, topic: &str, message: Option<Arc<Message>>) {
        if key_too_long(topic) {
            self.dropped(topic, "the topic is too long for a KV key");
            return;
        }
        let mut pending = self.pending();
        if !pending.queued.contains_key(topic) && pending.queued.len() >= self.capacity {
            drop(pending);
            self.dropped(topic, "too many changes wait for NATS");
            return;
        }
        pending.next_seq += 1;
        let seq = pending.next_seq;
        pending.unconfirmed.insert(topic.to_owned(), seq);
        if pending
            .queued
            .insert(topic.to_owned(), Write { seq, message })
            .is_none()
        {
            pending.order.push_back(topic.to_owned());
        }
        drop(pending);
        self.wake.notify_one();
    }

    /// Applies one bucket entry received at `now` to the mirror.
    fn apply(&self, entry: kv::Entry, now: Millis) {
        let Some(message) = self.decode(entry, now) else {
            return;
        };
        let (message, own_seq) = message;
        if !self.pending().accept(&message.topic, own_seq) {
            Stats::add(&self.stats.superseded, 1);
            return;
        }
        self.mirror.update(&message);
        Stats::add(&self.stats.applied, 1);
    }

    /// The message an entry holds (an empty payload deletes), and its sequence number if
    /// this incarnation wrote it.
    fn decode(&self, entry: kv::Entry, now: Millis) -> Option<(Message, Option<u64>)> {
        let invalid = |why: &str| {
            Stats::add(&self.stats.invalid, 1);
            tracing::debug!(key = %entry.key, "cluster: ignored a retained entry: {why}");
        };
        let topic = match subject::subject_to_topic(&entry.key) {
            Ok(topic) if !subject::is_node_local(&topic) => topic,
            Ok(_) => {
                invalid("a node-local topic");
                return None;
            }
            Err(e) => {
                invalid(&e.to_string());
                return None;
            }
        };
        let deleted = || Message::internal(topic.clone(), Bytes::new(), true, now);
        let (origin, mut message) = match entry.operation {
            kv::Operation::Put => match envelope::decode(topic.clone(), entry.value.clone(), now) {
                Ok((origin, message)) => (Some(origin), message),
                Err(e) => {
                    invalid(&e.to_string());
                    return None;
                }
            },
            // Deleted with a NATS tool rather than through a node.
            kv::Operation::Delete | kv::Operation::Purge => (None, deleted()),
        };
        if let Some(at) = message.expires_at {
            let stored =
                u64::try_from(entry.created.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
            let at = at.saturating_sub(now.saturating_sub(stored));
            if at <= now {
                message = deleted();
            } else {
                message.expires_at = Some(at);
            }
        }
        let own_seq = origin
            .filter(|o| o.node == self.node && o.incarnation == self.incarnation)
            .map(|o| o.seq);
        Some((message, own_seq))
    }
}

fn key_too_long(topic: &str) -> bool {
    // `$KV.<bucket>.<key>` is the subject the write is published to.
    subject::topic_to_subject(topic).len() + BUCKET.len() + 5 > MAX_SUBJECT_LEN
}

/// The [`Retained`] of a cluster node (see the module documentation).
#[derive(Debug, Clone)]
pub struct ClusterRetained {
    shared: Arc<Shared>,
}

impl ClusterRetained {
    /// Connects to NATS (its own connection, named `midge <node_id> retained`), opens the
    /// bucket (creating it if missing) and loads its current values, retrying with backoff
    /// and logging until all of that succeeds; then spawns the tasks that keep the mirror
    /// and write this node's changes, which end when `shutdown` turns true.
    pub async fn open(
        config: &ClusterConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Self, Vec<JoinHandle<()>>), ClusterError> {
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let shared = Arc::new(Shared {
            mirror: RetainedStore::default(),
            pending: Mutex::default(),
            wake: Notify::new(),
            capacity: config.forward_queue,
            stats: RetainedStats::default(),
            node: config.node_id.clone(),
            incarnation,
            last_warning: Mutex::default(),
        });
        let mut delay = Duration::from_millis(100);
        let (client, store, watch, revision) = loop {
            match load(config, &shared).await {
                Ok(loaded) => break loaded,
                Err(LoadError::Config(e)) => return Err(e),
                Err(LoadError::Nats(e)) => {
                    tracing::warn!(
                        node_id = %config.node_id,
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "cluster: cannot load the retained messages from NATS JetStream; MQTT listeners stay closed until it works"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        tracing::info!(
            node_id = %config.node_id,
            retained = shared.mirror.len(),
            "cluster: retained messages loaded from the {BUCKET} bucket"
        );
        let max_payload = client.server_info().max_payload;
        let tasks = vec![
            tokio::spawn(watch_loop(
                shared.clone(),
                store.clone(),
                watch,
                revision,
                shutdown.clone(),
            )),
            tokio::spawn(write_loop(shared.clone(), store, max_payload, shutdown)),
        ];
        Ok((Self { shared }, tasks))
    }

    /// This node's counters of the bucket.
    pub fn stats(&self) -> &RetainedStats {
        &self.shared.stats
    }
}

impl Retained for ClusterRetained {
    fn update(&self, message: &Message) -> Option<Arc<Message>> {
        let stored = self.shared.mirror.update(message);
        if !subject::is_node_local(&message.topic) {
            self.shared.enqueue(&message.topic, stored.clone());
        }
        stored
    }

    fn matching(&self, filter: &str, now: Millis) -> Vec<Arc<Message>> {
        self.shared.mirror.matching(filter, now)
    }

    fn len(&self) -> usize {
        self.shared.mirror.len()
    }

    fn sweep_expired(&self, now: Millis) -> usize {
        // Expired entries stay in the bucket until overwritten; every reader drops them.
        self.shared.mirror.sweep_expired(now)
    }
}

enum LoadError {
    Config(ClusterError),
    Nats(String),
}

fn nats(e: impl std::fmt::Display) -> LoadError {
    LoadError::Nats(e.to_string())
}

/// One attempt at connecting, opening the bucket and loading it into the mirror; returns
/// the watch positioned after the loaded values and the last revision seen.
async fn load(
    config: &ClusterConfig,
    shared: &Shared,
) -> Result<(async_nats::Client, kv::Store, kv::Watch, u64), LoadError> {
    let client = super::options(config)
        .await
        .map_err(LoadError::Config)?
        // Its own connection: the fabric's subscriptions and counters stay its own.
        .name(format!("midge {} retained", config.node_id))
        .connect(&config.nats_urls[..])
        .await
        .map_err(nats)?;
    let js = async_nats::jetstream::new(client.clone());
    let store = match js.get_key_value(BUCKET).await {
        Ok(store) => store,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: BUCKET.to_owned(),
                description: "midge: retained MQTT messages by topic".to_owned(),
                history: 1,
                num_replicas: config.retained_replicas,
                ..kv::Config::default()
            })
            .await
            .map_err(nats)?,
    };
    let values = store.status().await.map_err(nats)?.values();
    let mut watch = store.watch_all().await.map_err(nats)?;
    let mut revision = 0;
    if values > 0 {
        // The watch first sends each key's latest entry; the last of them has nothing
        // pending after it.
        let deadline = tokio::time::Instant::now() + LOAD_TIMEOUT;
        loop {
            let entry = tokio::time::timeout_at(deadline, watch.next())
                .await
                .map_err(|_| LoadError::Nats("the initial values took too long".to_owned()))?
                .ok_or_else(|| LoadError::Nats("the watch ended".to_owned()))?
                .map_err(nats)?;
            revision = entry.revision;
            let done = entry.delta == 0;
            shared.apply(entry, now_millis());
            if done {
                break;
            }
        }
    }
    Ok((client, store, watch, revision))
}

/// Applies the bucket's changes to the mirror, watching again from the last revision seen
/// when the watch fails.
async fn watch_loop(
    shared: Arc<Shared>,
    store: kv::Store,
    mut watch: kv::Watch,
    mut revision: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let next = tokio::select! {
            e = watch.next() => e,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let why = match next {
            Some(Ok(entry)) => {
                revision = revision.max(entry.revision);
                shared.apply(entry, now_millis());
                delay = Duration::from_millis(100);
                continue;
            }
            Some(Err(e)) => e.to_string(),
            None => "the watch ended".to_owned(),
        };
        tracing::warn!(error = %why, "cluster: retained watch interrupted; watching again from revision {}", revision + 1);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
            match store.watch_all_from_revision(revision + 1).await {
                Ok(w) => {
                    watch = w;
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "cluster: retained watch failed"),
            }
        }
    }
}

/// Writes queued changes to the bucket in order, retrying failures with backoff; at
/// shutdown keeps writing for up to [`DRAIN`].
async fn write_loop(
    shared: Arc<Shared>,
    store: kv::Store,
    max_payload: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut origin = Origin {
        node: shared.node.clone(),
        incarnation: shared.incarnation,
        seq: 0,
    };
    let mut delay = Duration::from_millis(100);
    let mut last_warning = None;
    let mut stopping = None;
    loop {
        if stopping.is_none() && *shutdown.borrow() {
            stopping = Some(tokio::time::Instant::now() + DRAIN);
        }
        let next = shared.pending().pop();
        let Some((topic, write)) = next else {
            if stopping.is_some() {
                return;
            }
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = shutdown.wait_for(|s| *s) => {}
            }
            continue;
        };
        origin.seq = write.seq;
        let value = value(&origin, &topic, write.message.as_deref(), now_millis());
        if value.len() > max_payload {
            shared.pending().abandon(&topic, write.seq);
            shared.dropped(&topic, "the message is above NATS's maximum payload");
            continue;
        }
        let key = subject::topic_to_subject(&topic);
        let put = store.put(&key, value);
        let result = match stopping {
            Some(deadline) => match tokio::time::timeout_at(deadline, put).await {
                Ok(result) => result,
                Err(_) => {
                    let left = shared.pending().queued.len() + 1;
                    tracing::warn!(
                        left,
                        "cluster: stopped with retained changes not written to NATS"
                    );
                    return;
                }
            },
            None => put.await,
        };
        match result {
            Ok(_) => {
                Stats::add(&shared.stats.written, 1);
                delay = Duration::from_millis(100);
            }
            Err(e) => {
                if should_log(&mut last_warning) {
                    tracing::warn!(%topic, error = %e, "cluster: retained change not written to NATS yet; retrying (further failures logged at most every 10 s)");
                }
                shared.pending().retry(topic, write);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait_for(|s| *s), if stopping.is_none() => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The bucket value of a change of `topic` made at `now`: its envelope, or one with an
/// empty payload for a deletion or a message that expired while it waited.
fn value(origin: &Origin, topic: &str, message: Option<&Message>, now: Millis) -> Bytes {
    match message {
        Some(m) if m.expires_at.is_none_or(|at| at > now) => {
            envelope::encode(origin, m, m.expires_at.map(|at| at - now))
        }
        _ => envelope::encode(
            origin,
            &Message::internal(topic.to_owned(), Bytes::new(), true, now),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared {
            mirror: RetainedStore::default(),
            pending: Mutex::default(),
            wake: Notify::new(),
            capacity: 2,
            stats: RetainedStats::default(),
            node: "a".to_owned(),
            incarnation: 7,
            last_warning: Mutex::default(),
        }
    }

    fn message(topic: &str, payload: &'static [u8]) -> Message {
        Message::internal(topic.to_owned(), Bytes::from_static(payload), true, 0)
    }

    /// A bucket entry as the watch gives it, stored by the NATS server at `created_ms`.
    fn entry(
        origin: &Origin,
        message: &Message,
        remaining: Option<Millis>,
        created_ms: i128,
    ) -> kv::Entry {
        kv::Entry {
            bucket: BUCKET.to_owned(),
            key: subject::topic_to_subject(&message.topic),
            value: envelope::encode(origin, message, remaining),
            revision: 1,
            delta: 0,
            created: async_nats::datetime::from_nanos(created_ms * 1_000_000).unwrap(),
            operation: kv::Operation::Put,
            seen_current: true,
        }
    }

    fn payloads(shared: &Shared, filter: &str) -> Vec<Bytes> {
        shared
            .mirror
            .matching(filter, 0)
            .iter()
            .map(|m| m.payload.clone())
            .collect()
    }

    fn origin(node: &str, incarnation: u64, seq: u64) -> Origin {
        Origin {
            node: node.to_owned(),
            incarnation,
            seq,
        }
    }

    #[test]
    fn keys_are_valid_kv_keys_and_decode_back() {
        for topic in [
            "a/b",
            "/lead",
            "a//b",
            "sp ace/.*>",
            "é/ü",
            "$share-not/x",
            "a/=3D",
        ] {
            let key = subject::topic_to_subject(topic);
            assert!(
                !key.starts_with('.') && !key.ends_with('.') && !key.contains(".."),
                "{key}"
            );
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b)),
                "{key}"
            );
            assert_eq!(subject::subject_to_topic(&key).unwrap(), topic);
        }
        assert!(!key_too_long(&"x".repeat(3900)));
        assert!(key_too_long(&"x".repeat(4000)));
    }

    #[test]
    fn another_nodes_entry_is_mirrored_and_an_empty_payload_deletes() {
        let shared = shared();
        let b = origin("b", 1, 1);
        shared.apply(entry(&b, &message("t", b"v"), None, 0), 10);
        assert_eq!(payloads(&shared, "#"), ["v"]);
        shared.apply(entry(&b, &message("t", b""), None, 0), 10);
        assert!(payloads(&shared, "#").is_empty());
        assert_eq!(
            shared
                .stats
                .applied
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    }

    #[test]
    fn a_pending_local_write_wins_over_entries_ordered_before_it() {
        let shared = shared();
        let local = ClusterRetained {
            shared: Arc::new(shared),
        };
        local.update(&message("t", b"mine-1"));
        local.update(&message("t", b"mine-2"));
        let s = &local.shared;
        // Coalesced: one write waits, the latest.
        assert_eq!(s.pending().queued.len(), 1);
        let (topic, write) = s.pending().pop().unwrap();
        assert_eq!((topic.as_str(), write.seq), ("t", 2));
        // Another node's value reaches the watch before this node's write: the KV orders
        // it first, so the mirror keeps this node's.
        s.apply(
            entry(&origin("b", 1, 9), &message("t", b"theirs"), None, 0),
            10,
        );
        assert_eq!(payloads(s, "t"), ["mine-2"]);
        // This incarnation's older echo is skipped too; its latest ends the wait.
        s.apply(
            entry(&origin("a", 7, 1), &message("t", b"mine-1"), None, 0),
            10,
        );
        assert_eq!(payloads(s, "t"), ["mine-2"]);
        s.apply(
            entry(&origin("a", 7, 2), &message("t", b"mine-2"), None, 0),
            10,
        );
        assert!(s.pending().unconfirmed.is_empty());
        // Afterwards other nodes' values apply again (they came after in the KV).
        s.apply(
            entry(&origin("b", 1, 10), &message("t", b"theirs-2"), None, 0),
            10,
        );
        assert_eq!(payloads(s, "t"), ["theirs-2"]);
        // A previous run of this node is another writer.
        s.apply(
            entry(&origin("a", 6, 2), &message("t", b"old run"), None, 0),
            10,
        );
        assert_eq!(payloads(s, "t"), ["old run"]);
    }

    #[test]
    fn sys_topics_stay_local_and_are_ignored_from_the_bucket() {
        let local = ClusterRetained {
            shared: Arc::new(shared()),
        };
        local.update(&message("$SYS/broker/uptime", b"1"));
        assert!(local.shared.pending().queued.is_empty());
        assert_eq!(local.len(), 1);
        let s = &local.shared;
        s.apply(
            entry(&origin("b", 1, 1), &message("$SYS/x", b"v"), None, 0),
            10,
        );
        assert_eq!(local.len(), 1);
        assert_eq!(
            s.stats.invalid.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn remaining_expiry_counts_from_when_the_server_stored_it() {
        let shared = shared();
        let b = origin("b", 1, 1);
        // Stored at 1 000 with 5 000 left, read at 3 000: 3 000 left.
        shared.apply(entry(&b, &message("t", b"v"), Some(5_000), 1_000), 3_000);
        let got = shared.mirror.matching("t", 3_000);
        assert_eq!(got[0].expires_at, Some(6_000));
        // A server clock ahead of the reader's takes nothing off.
        shared.apply(entry(&b, &message("t", b"v"), Some(5_000), 9_000), 3_000);
        assert_eq!(shared.mirror.matching("t", 0)[0].expires_at, Some(8_000));
        // Already expired when read: deletes what the mirror held.
        shared.apply(entry(&b, &message("t", b"v"), Some(1_000), 1_000), 3_000);
        assert!(shared.mirror.is_empty());
    }

    #[test]
    fn full_queue_drops_new_topics_but_still_coalesces_waiting_ones() {
        let local = ClusterRetained {
            shared: Arc::new(shared()),
        };
        for topic in ["a", "b", "c"] {
            local.update(&message(topic, b"v"));
        }
        local.update(&message("a", b"w"));
        let s = &local.shared;
        assert_eq!(s.pending().queued.len(), 2, "capacity 2");
        assert_eq!(
            s.stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(local.len(), 3, "the local set still works");
        assert!(!s.pending().unconfirmed.contains_key("c"));
    }

    #[test]
    fn a_failed_write_is_retried_unless_a_newer_change_waits() {
        let local = ClusterRetained {
            shared: Arc::new(shared()),
        };
        local.update(&message("t", b"1"));
        let s = &local.shared;
        let (topic, write) = s.pending().pop().unwrap();
        s.pending().retry(topic, write);
        let (topic, write) = s.pending().pop().unwrap();
        assert_eq!(write.seq, 1);
        local.update(&message("t", b"2"));
        s.pending().retry(topic, write);
        let (_, write) = s.pending().pop().unwrap();
        assert_eq!(write.seq, 2);
        assert!(s.pending().pop().is_none());
        // A write abandoned (too large) no longer holds other nodes' values back.
        s.pending().abandon("t", 2);
        assert!(s.pending().unconfirmed.is_empty());
    }

    #[test]
    fn values_carry_the_remaining_expiry_and_expired_ones_delete() {
        let o = origin("a", 7, 3);
        let mut m = message("t", b"v");
        m.expires_at = Some(5_000);
        let (_, got) = envelope::decode("t".into(), value(&o, "t", Some(&m), 1_000), 0).unwrap();
        assert_eq!(
            (got.payload.as_ref(), got.expires_at),
            (&b"v"[..], Some(4_000))
        );
        let (from, got) = envelope::decode("t".into(), value(&o, "t", Some(&m), 5_000), 0).unwrap();
        assert!(got.payload.is_empty());
        assert_eq!(from, o, "a deletion says who wrote it");
        let (_, got) = envelope::decode("t".into(), value(&o, "t", None, 0), 0).unwrap();
        assert!(got.payload.is_empty());
    }

    #[test]
    fn concurrent_updates_and_entries_leave_consistent_state() {
        let local = ClusterRetained {
            shared: Arc::new(shared()),
        };
        std::thread::scope(|scope| {
            for t in 0..4 {
                let local = &local;
                scope.spawn(move || {
                    for i in 0..500u64 {
                        let topic = if i % 2 == 0 { "a" } else { "b" };
                        local.update(&message(topic, b"v"));
                        let seq = i + 1;
                        local.shared.apply(
                            entry(&origin("b", t, seq), &message(topic, b"w"), None, 0),
                            0,
                        );
                        let _ = local.matching("#", 0);
                    }
                });
            }
        });
        let s = &local.shared;
        let pending = s.pending();
        assert!(pending.queued.len() <= 2 && pending.order.len() >= pending.queued.len());
        assert_eq!(pending.next_seq, 2_000);
        assert_eq!(pending.unconfirmed.len(), 2);
    }
}
