//! Retained messages cluster-wide, in the JetStream KV bucket [`BUCKET`].
//!
//! Each node keeps the whole retained set in its own [`RetainedStore`], a mirror fed from
//! the bucket, so SUBSCRIBE matches locally without a network call. Before the node serves
//! anyone it loads each key's latest entry; then it applies every later entry from any
//! node, in the bucket's order. The bucket is read through a pull consumer on its stream
//! rather than async-nats's KV watch, which creates its push consumer before subscribing
//! and so can miss the first entries (an initial load that never came, seen here). The
//! mirror only stores: live delivery of a retained PUBLISH goes through the routing
//! fabric, so a mirrored message is never delivered twice. The node's own store
//! (`[storage]`) is not used for retained messages in a cluster: the bucket is the truth.
//!
//! - **Key**: the topic's subject ([`subject::topic_to_subject`]). Its tokens use only
//!   `[A-Za-z0-9_=-]` joined by `.`, which KV keys allow, and it decodes back exactly.
//! - **Value**: the message's [`envelope`], stamped with this node's id. A deletion (empty
//!   retained payload) is a value with an empty payload rather than a KV delete; a delete
//!   or purge made with a NATS tool also deletes.
//! - **Writes**: a retained PUBLISH updates the mirror at once (as on one node) and queues
//!   the bucket write, never awaited on the publish path. One writer task puts them in
//!   order; only the latest change per topic waits, so a topic's last value wins on this
//!   node, and the bucket's order decides between nodes (last writer wins). While NATS is
//!   unreachable, changes of up to `forward_queue` topics wait and are retried with
//!   backoff (a stopping node tries for 2 s more); beyond that, or for a value above
//!   NATS's maximum payload or a key too long for a subject, the change stays on this
//!   node until the topic changes again (counted in [`RetainedStats::dropped`]).
//! - **Order**: the bucket keeps one entry per key, so a node may never see its own entry
//!   (overwritten first). A write's acknowledgement gives its revision instead: entries at
//!   or below it are older than what the mirror holds and are skipped; an entry arriving
//!   while a write is on its way is held, and applied once the write's revision shows it
//!   newer. So every node ends with the bucket's value.
//! - **Expiry** is stored as the time left when written; a reader subtracts the time since
//!   the NATS server stored the entry. Only the reading node's and the NATS server's clocks
//!   are compared, never two nodes', and a negative difference counts as zero: a skew of
//!   `s` shortens (reader ahead) or lengthens by up to `s` what is left at loading.
//!   Expired entries stay in the bucket until overwritten; every reader drops them.
//! - `$SYS` topics never leave their node.
//!
//! Locks: the pending-write table (a std mutex) is taken before the mirror's tree lock,
//! so a local change and a bucket entry never interleave between the two; neither is held
//! across an await, and no NATS call is made under them.

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
const LOAD_TIMEOUT: Duration = Duration::from_secs(20);

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

/// What this node knows of its own changes of one topic, to tell which bucket entries are
/// older than what its mirror holds.
#[derive(Debug, Default)]
struct Guard {
    /// Sequence number of this node's latest change of the topic.
    latest: u64,
    /// Sequence number of its latest change written (or given up).
    settled: u64,
    /// Bucket revision of its latest write: entries at or below it are older.
    floor: u64,
    /// The newest entry received while a change was not yet written, with its revision:
    /// it may turn out newer than the write (applied then) or older (dropped).
    held: Option<(u64, Message)>,
}

impl Guard {
    fn unsettled(&self) -> bool {
        self.latest > self.settled
    }
}

#[derive(Debug, Default)]
struct Pending {
    next_seq: u64,
    queued: HashMap<String, Write>,
    order: VecDeque<String>,
    guards: HashMap<String, Guard>,
    /// The highest revision received from the bucket: none below it comes any more.
    position: u64,
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

    /// Drops the guards that can no longer skip anything.
    fn prune(&mut self) {
        let position = self.position;
        self.guards
            .retain(|_, g| g.unsettled() || g.held.is_some() || g.floor > position);
    }
}

#[derive(Debug)]
struct Shared {
    mirror: RetainedStore,
    /// Taken before the mirror's lock, whenever both are (see the module documentation).
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

    /// A change made on this node: to the mirror at once, and queued for the bucket.
    fn change(&self, message: &Message) -> Option<Arc<Message>> {
        let topic = message.topic.as_str();
        if key_too_long(topic) {
            self.dropped(topic, "the topic is too long for a KV key");
            return self.mirror.update(message);
        }
        let mut pending = self.pending();
        if !pending.queued.contains_key(topic) && pending.queued.len() >= self.capacity {
            drop(pending);
            self.dropped(topic, "too many changes wait for NATS");
            return self.mirror.update(message);
        }
        // Under the pending lock, so no bucket entry lands between the two.
        let stored = self.mirror.update(message);
        pending.next_seq += 1;
        let seq = pending.next_seq;
        pending.guards.entry(topic.to_owned()).or_default().latest = seq;
        let write = Write {
            seq,
            message: stored.clone(),
        };
        if pending.queued.insert(topic.to_owned(), write).is_none() {
            pending.order.push_back(topic.to_owned());
        }
        drop(pending);
        self.wake.notify_one();
        stored
    }

    /// The write of change `seq` of `topic` is done: stored at `revision`, or given up
    /// (`None`).
    fn settle(&self, topic: &str, seq: u64, revision: Option<u64>) {
        let mut pending = self.pending();
        let position = pending.position;
        let Some(guard) = pending.guards.get_mut(topic) else {
            return;
        };
        guard.settled = guard.settled.max(seq);
        if let Some(revision) = revision {
            guard.floor = guard.floor.max(revision);
        }
        let floor = guard.floor;
        if guard.held.as_ref().is_some_and(|(r, _)| *r <= floor) {
            guard.held = None;
        }
        if guard.unsettled() {
            return;
        }
        let held = guard.held.take();
        if held.is_some() || floor <= position {
            pending.guards.remove(topic);
        }
        if let Some((_, message)) = held {
            // Another node's value, stored after this node's write.
            self.mirror.update(&message);
            Stats::add(&self.stats.applied, 1);
        }
    }

    /// Applies one bucket entry received at `now` to the mirror.
    fn apply(&self, entry: kv::Entry, now: Millis) {
        let revision = entry.revision;
        let message = self.decode(entry, now);
        let mut pending = self.pending();
        pending.position = pending.position.max(revision);
        let Some(message) = message else {
            return;
        };
        match pending.guards.get_mut(&message.topic) {
            Some(guard) if guard.unsettled() => {
                // Older or newer than this node's write in flight: known once it is
                // written.
                Stats::add(&self.stats.superseded, 1);
                if revision > guard.floor && guard.held.as_ref().is_none_or(|(r, _)| revision > *r)
                {
                    guard.held = Some((revision, message));
                }
                return;
            }
            Some(guard) if revision <= guard.floor => {
                Stats::add(&self.stats.superseded, 1);
                return;
            }
            Some(_) => {
                pending.guards.remove(&message.topic);
            }
            None => {}
        }
        self.mirror.update(&message);
        Stats::add(&self.stats.applied, 1);
    }

    /// The message an entry holds (an empty payload deletes).
    fn decode(&self, entry: kv::Entry, now: Millis) -> Option<Message> {
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
        let mut message = match entry.operation {
            kv::Operation::Put => match envelope::decode(topic.clone(), entry.value.clone(), now) {
                Ok((_, message)) => message,
                Err(e) => {
                    invalid(&e.to_string());
                    return None;
                }
            },
            // Deleted with a NATS tool rather than through a node.
            kv::Operation::Delete | kv::Operation::Purge => deleted(),
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
        Some(message)
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
        let (client, store, stream, changes, revision) = loop {
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
                stream,
                changes,
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
        if subject::is_node_local(&message.topic) {
            return self.shared.mirror.update(message);
        }
        self.shared.change(message)
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

/// The bucket's entries from `from` (a revision), or each key's latest entry first when
/// `None`, and how many of those were pending when it started. A pull consumer rather than
/// the KV watch: async-nats's watch subscribes after creating its push consumer, so the
/// first entries can pass before it listens (seen here: an initial load never came).
async fn changes(
    stream: &async_nats::jetstream::stream::Stream,
    from: Option<u64>,
) -> Result<(Changes, u64), String> {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    let deliver_policy = match from {
        Some(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
        None => DeliverPolicy::LastPerSubject,
    };
    let consumer = stream
        .create_consumer(pull::Config {
            description: Some("midge retained mirror".to_owned()),
            deliver_policy,
            ack_policy: AckPolicy::None,
            filter_subject: format!("$KV.{BUCKET}.>"),
            // Removed by the server once this node stops asking (gone or cut off); the
            // node then starts a new one from the last revision it saw.
            inactive_threshold: Duration::from_secs(30),
            ..pull::Config::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let pending = consumer.cached_info().num_pending;
    let messages = consumer.messages().await.map_err(|e| e.to_string())?;
    Ok((messages, pending))
}

type Changes = async_nats::jetstream::consumer::pull::Stream;

/// The next entry of `changes`, as the KV API describes one; `None` when the stream
/// failed or ended (the caller starts another).
async fn next_entry(changes: &mut Changes) -> Result<kv::Entry, String> {
    let message = changes
        .next()
        .await
        .ok_or_else(|| "the consumer ended".to_owned())?
        .map_err(|e| e.to_string())?;
    let info = message.info().map_err(|e| e.to_string())?;
    let operation = match message
        .headers
        .as_ref()
        .and_then(|h| h.get("KV-Operation"))
        .map(|v| v.as_str())
    {
        Some("DEL") => kv::Operation::Delete,
        Some("PURGE") => kv::Operation::Purge,
        _ => kv::Operation::Put,
    };
    let prefix = format!("$KV.{BUCKET}.");
    Ok(kv::Entry {
        bucket: BUCKET.to_owned(),
        key: message
            .subject
            .strip_prefix(prefix.as_str())
            .unwrap_or_default()
            .to_owned(),
        value: message.payload.clone(),
        revision: info.stream_sequence,
        delta: info.pending,
        created: info.published,
        operation,
        seen_current: info.pending == 0,
    })
}

/// One attempt at connecting, opening the bucket and loading it into the mirror; returns
/// the changes after the loaded values and the last revision seen.
async fn load(
    config: &ClusterConfig,
    shared: &Shared,
) -> Result<(async_nats::Client, kv::Store, Stream, Changes, u64), LoadError> {
    let client = super::options(config)
        .await
        .map_err(LoadError::Config)?
        // Its own connection: the fabric's subscriptions and counters stay its own, and
        // this node's writes come back to it (the fabric's connection has no echo).
        .name(format!("midge {} retained", config.node_id))
        .connect(&config.nats_urls[..])
        .await
        .map_err(nats)?;
    let js = async_nats::jetstream::new(client.clone());
    // See OPEN_TIMEOUT.
    let opened = async {
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
        let stream = js.get_stream(&store.stream_name).await.map_err(nats)?;
        let (changes, pending) = changes(&stream, None).await.map_err(LoadError::Nats)?;
        Ok::<_, LoadError>((store, stream, changes, pending))
    };
    let (store, stream, mut changes, pending) = tokio::time::timeout(super::OPEN_TIMEOUT, opened)
        .await
        .map_err(|_| {
            LoadError::Nats(format!(
                "JetStream did not answer within {} s",
                super::OPEN_TIMEOUT.as_secs()
            ))
        })??;
    let mut revision = 0;
    if pending > 0 {
        // Each key's latest entry comes first; the last of them has nothing pending after.
        let deadline = tokio::time::Instant::now() + LOAD_TIMEOUT;
        loop {
            let entry = tokio::time::timeout_at(deadline, next_entry(&mut changes))
                .await
                .map_err(|_| LoadError::Nats("the initial values took too long".to_owned()))?
                .map_err(LoadError::Nats)?;
            revision = entry.revision;
            let done = entry.delta == 0;
            shared.apply(entry, now_millis());
            if done {
                break;
            }
        }
    }
    Ok((client, store, stream, changes, revision))
}

type Stream = async_nats::jetstream::stream::Stream;

/// Applies the bucket's changes to the mirror, reading again from the revision after the
/// last one seen when the consumer fails.
async fn watch_loop(
    shared: Arc<Shared>,
    stream: Stream,
    mut changes: Changes,
    mut revision: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let next = tokio::select! {
            e = next_entry(&mut changes) => e,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let why = match next {
            Ok(entry) => {
                revision = revision.max(entry.revision);
                shared.apply(entry, now_millis());
                delay = Duration::from_millis(100);
                continue;
            }
            Err(e) => e,
        };
        tracing::warn!(error = %why, "cluster: retained changes interrupted; reading again from revision {}", revision + 1);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
            match self::changes(&stream, Some(revision + 1)).await {
                Ok((c, _)) => {
                    changes = c;
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "cluster: retained changes unavailable"),
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
            shared.pending().prune();
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = shutdown.wait_for(|s| *s) => {}
            }
            continue;
        };
        origin.seq = write.seq;
        let value = value(&origin, &topic, write.message.as_deref(), now_millis());
        if value.len() > max_payload {
            shared.settle(&topic, write.seq, None);
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
            Ok(revision) => {
                shared.settle(&topic, write.seq, Some(revision));
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
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;

    fn local() -> ClusterRetained {
        ClusterRetained {
            shared: Arc::new(Shared {
                mirror: RetainedStore::default(),
                pending: Mutex::default(),
                wake: Notify::new(),
                capacity: 2,
                stats: RetainedStats::default(),
                node: "a".to_owned(),
                incarnation: 7,
                last_warning: Mutex::default(),
            }),
        }
    }

    fn message(topic: &str, payload: &'static [u8]) -> Message {
        Message::internal(topic.to_owned(), Bytes::from_static(payload), true, 0)
    }

    fn origin() -> Origin {
        Origin {
            node: "b".to_owned(),
            incarnation: 1,
            seq: 1,
        }
    }

    /// A bucket entry as the consumer gives it: `revision`, stored by the NATS server at
    /// `created_ms`.
    fn entry(
        revision: u64,
        message: &Message,
        remaining: Option<Millis>,
        created_ms: i128,
    ) -> kv::Entry {
        kv::Entry {
            bucket: BUCKET.to_owned(),
            key: subject::topic_to_subject(&message.topic),
            value: envelope::encode(&origin(), message, remaining),
            revision,
            delta: 0,
            created: async_nats::datetime::from_nanos(created_ms * 1_000_000).unwrap(),
            operation: kv::Operation::Put,
            seen_current: true,
        }
    }

    fn put(local: &ClusterRetained, revision: u64, topic: &str, payload: &'static [u8]) {
        local
            .shared
            .apply(entry(revision, &message(topic, payload), None, 0), 10);
    }

    fn payloads(local: &ClusterRetained, filter: &str) -> Vec<Bytes> {
        local
            .matching(filter, 0)
            .iter()
            .map(|m| m.payload.clone())
            .collect()
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
        let local = local();
        put(&local, 1, "t", b"v");
        assert_eq!(payloads(&local, "#"), ["v"]);
        put(&local, 2, "t", b"");
        assert!(local.is_empty());
        let mut deleted = entry(3, &message("u", b""), None, 0);
        put(&local, 3, "u", b"u");
        deleted.revision = 4;
        deleted.operation = kv::Operation::Delete;
        local.shared.apply(deleted, 10);
        assert!(local.is_empty(), "a delete made with a NATS tool");
        assert_eq!(local.shared.stats.applied.load(Relaxed), 4);
    }

    #[test]
    fn changes_coalesce_per_topic_and_sys_stays_local() {
        let local = local();
        local.update(&message("t", b"1"));
        local.update(&message("t", b"2"));
        local.update(&message("$SYS/broker/uptime", b"9"));
        let mut pending = local.shared.pending();
        assert_eq!(pending.queued.len(), 1);
        let (topic, write) = pending.pop().unwrap();
        assert_eq!((topic.as_str(), write.seq), ("t", 2));
        assert_eq!(write.message.unwrap().payload, "2");
        drop(pending);
        assert_eq!(local.len(), 2, "both in the mirror");
        local
            .shared
            .apply(entry(1, &message("$SYS/x", b"v"), None, 0), 10);
        assert_eq!(local.len(), 2);
        assert_eq!(local.shared.stats.invalid.load(Relaxed), 1);
    }

    #[test]
    fn an_entry_during_a_write_is_applied_only_if_stored_after_it() {
        let local = local();
        // Stored before this node's write (revision 5): dropped.
        local.update(&message("t", b"mine"));
        put(&local, 4, "t", b"theirs, older");
        assert_eq!(payloads(&local, "t"), ["mine"]);
        local.shared.settle("t", 1, Some(5));
        assert_eq!(payloads(&local, "t"), ["mine"]);
        // This node's own entry, and anything older, is skipped; newer ones apply.
        put(&local, 5, "t", b"mine");
        put(&local, 3, "t", b"stale");
        assert_eq!(payloads(&local, "t"), ["mine"]);
        put(&local, 6, "t", b"theirs, newer");
        assert_eq!(payloads(&local, "t"), ["theirs, newer"]);
        assert!(local.shared.pending().guards.is_empty());

        // Stored after this node's write (revision 8): applied once the write is done,
        // even if this node's own entry never arrives (the bucket keeps one per key).
        local.update(&message("t", b"mine 2"));
        put(&local, 9, "t", b"theirs, after");
        put(&local, 10, "t", b"theirs, later");
        assert_eq!(payloads(&local, "t"), ["mine 2"]);
        local.shared.settle("t", 2, Some(8));
        assert_eq!(payloads(&local, "t"), ["theirs, later"]);
        assert!(local.shared.pending().guards.is_empty());
    }

    #[test]
    fn a_second_change_keeps_entries_held_until_it_is_written() {
        let local = local();
        local.update(&message("t", b"1"));
        let (_, first) = local.shared.pending().pop().unwrap();
        local.update(&message("t", b"2"));
        put(&local, 6, "t", b"theirs");
        // The first write (revision 5) is older than the entry, the second may not be.
        local.shared.settle("t", first.seq, Some(5));
        assert_eq!(payloads(&local, "t"), ["2"]);
        local.shared.settle("t", first.seq + 1, Some(7));
        assert_eq!(payloads(&local, "t"), ["2"]);
        put(&local, 6, "t", b"theirs");
        assert_eq!(payloads(&local, "t"), ["2"]);
    }

    #[test]
    fn a_given_up_write_lets_the_held_entry_in() {
        let local = local();
        local.update(&message("t", b"too big"));
        put(&local, 3, "t", b"theirs");
        local.shared.settle("t", 1, None);
        assert_eq!(payloads(&local, "t"), ["theirs"]);
    }

    #[test]
    fn remaining_expiry_counts_from_when_the_server_stored_it() {
        let local = local();
        let s = &local.shared;
        let m = message("t", b"v");
        // Stored at 1 000 with 5 000 left, read at 3 000: 3 000 left.
        s.apply(entry(1, &m, Some(5_000), 1_000), 3_000);
        assert_eq!(local.matching("t", 3_000)[0].expires_at, Some(6_000));
        // A server clock ahead of the reader's takes nothing off.
        s.apply(entry(2, &m, Some(5_000), 9_000), 3_000);
        assert_eq!(local.matching("t", 0)[0].expires_at, Some(8_000));
        // Already expired when read: deletes what the mirror held.
        s.apply(entry(3, &m, Some(1_000), 1_000), 3_000);
        assert!(local.is_empty());
    }

    #[test]
    fn a_full_queue_keeps_new_topics_local_but_still_coalesces_waiting_ones() {
        let local = local();
        for topic in ["a", "b", "c"] {
            local.update(&message(topic, b"v"));
        }
        local.update(&message("a", b"w"));
        let s = &local.shared;
        assert_eq!(s.pending().queued.len(), 2, "capacity 2");
        assert_eq!(s.stats.dropped.load(Relaxed), 1);
        assert_eq!(local.len(), 3, "the local set still works");
        assert!(!s.pending().guards.contains_key("c"));
    }

    #[test]
    fn a_failed_write_is_retried_unless_a_newer_change_waits() {
        let local = local();
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
    }

    #[test]
    fn values_carry_the_remaining_expiry_and_expired_ones_delete() {
        let o = origin();
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
    fn guards_are_pruned_once_the_bucket_is_past_them() {
        let local = local();
        local.update(&message("t", b"mine"));
        local.shared.settle("t", 1, Some(5));
        assert_eq!(local.shared.pending().guards.len(), 1);
        put(&local, 6, "other", b"x");
        local.shared.pending().prune();
        assert!(local.shared.pending().guards.is_empty());
    }

    #[test]
    fn many_threads_changing_and_applying_end_consistent() {
        let local = local();
        let revision = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let (local, revision) = (&local, &revision);
                scope.spawn(move || {
                    for i in 0..500u64 {
                        let topic = if i % 2 == 0 { "a" } else { "b" };
                        local.update(&message(topic, b"mine"));
                        let r = revision.fetch_add(1, Relaxed) + 1;
                        put(local, r, topic, b"theirs");
                        let _ = local.matching("#", 0);
                    }
                });
            }
        });
        // Every change written, the writes stored after all entries so far.
        let s = &local.shared;
        let mut next = revision.load(Relaxed);
        loop {
            let popped = s.pending().pop();
            let Some((topic, write)) = popped else { break };
            next += 1;
            s.settle(&topic, write.seq, Some(next));
        }
        assert_eq!(s.pending().next_seq, 2_000);
        assert_eq!(payloads(&local, "#"), ["mine", "mine"]);
        put(&local, next + 1, "a", b"last");
        assert_eq!(payloads(&local, "a"), ["last"]);
    }
}
