//! Wills cluster-wide: each published exactly once, after its delay, also when the node
//! that held the connection dies.
//!
//! **Records.** When a connection with a will is accepted (after its client-id claim), its
//! node writes a [`Record`] into the JetStream KV bucket [`WILLS_BUCKET`], keyed like
//! `midge_owners` ([`owner_key`]): the holder (node, incarnation, connection), the will
//! as a cluster envelope, the will delay and the session expiry. The write is queued, not
//! awaited before CONNACK: a node killed within its round trip loses that will.
//!
//! **Exactly once.** Whoever publishes or cancels a will first deletes its record
//! expecting the revision it read or wrote; only the winner of that compare-and-set
//! publishes, the loser does nothing. On its own node a will is fired or cancelled as on
//! one node (the registry decides), then the record goes the same way. A CONNECT that
//! displaced a holder on another node, or on an earlier run of this one, settles the
//! record left behind ([`Op::Settle`]): a resumed session cancels a pending delayed will
//! [MQTT-3.1.3-9]; a clean start (the session ends) or a will without delay publishes it.
//!
//! **Dead nodes.** Every node watches the node list (`ownership.rs`); when a node drops out
//! of it (no heartbeat for 5 s, or stopped) the survivors look at every record whose
//! holder (or claimer) is no longer alive. Each claims it by compare-and-set, so one
//! survivor wins: a will due now is deleted and published; a delayed one is rewritten
//! naming the claimer and its deadline (the delay counted from when the dead node was
//! last seen alive), and published at the deadline by deleting that revision, unless a
//! resume elsewhere deleted it meanwhile. A claimer that dies in turn is swept likewise.
//! A node also sweeps once, [`NODE_TTL`] after it starts, for records of nodes that are
//! gone (its own earlier run included: same node id, another incarnation).
//!
//! Operations of this node are queued per key on [`SHARDS`] tasks, in order, so a will's
//! write, fire and cancel reach the bucket in the order the registry decided them. The
//! registry never waits for them; a takeover asked for by another node waits (bounded)
//! until this node's operations on the client id are done, so the new holder's settling
//! comes after.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use midge_proto::Will;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::envelope::{self, Origin};
use super::keys::{HEARTBEAT, NODE_TTL, owner_key};
use crate::broker::Broker;
use crate::model::{Message, now_millis};
use crate::stats::Stats;

/// The listed nodes and how long ago each was last heard from (the node list of
/// `ownership.rs`, which holds [`Wills`]).
pub type NodeList = Arc<dyn Fn() -> Vec<(String, Duration)> + Send + Sync>;

/// Client id → [`Record`] of the will of its connection (or of its parked session).
pub const WILLS_BUCKET: &str = "midge_wills";
/// Longest one read, write or delete waits for JetStream.
const KV_TIMEOUT: Duration = Duration::from_secs(3);
/// Tasks the node's will operations are spread over (by key; one key, one task).
pub const SHARDS: usize = 8;
/// First bytes of a record.
const MAGIC: &[u8; 4] = b"MWL1";
/// Compare-and-set rounds of a settle (each conflict is a survivor claiming meanwhile).
const CAS_ATTEMPTS: usize = 8;
/// Room kept under `max_payload` for NATS's own framing.
const FRAMING: usize = 1024;

/// [`WILLS_BUCKET`]'s configuration: one value per client id, on disk.
pub fn bucket_config() -> kv::Config {
    kv::Config {
        bucket: WILLS_BUCKET.to_owned(),
        description: "midge: wills of connected clients and parked sessions".into(),
        history: 1,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

/// Who holds a will and when it is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The node that accepted the connection.
    pub node: String,
    /// That node's incarnation.
    pub incarnation: u64,
    /// The connection, numbered by its node.
    pub connection: u64,
    /// Will Delay Interval, seconds.
    pub delay: u32,
    /// Session Expiry Interval, seconds (`u32::MAX`: never).
    pub expiry: u32,
    /// The survivor (node, incarnation) that claimed it after the holder's node died.
    #[serde(default)]
    pub claimed_by: Option<(String, u64)>,
    /// When the claimer publishes it (milliseconds since the epoch, the claimer's clock).
    #[serde(default)]
    pub publish_at: Option<u64>,
}

impl Header {
    /// How long after the connection ends the will is due: its delay, but never past the
    /// end of the session, as on one node.
    pub fn due_after_ms(&self) -> u64 {
        if self.expiry == 0 {
            0
        } else {
            u64::from(self.delay.min(self.expiry)) * 1000
        }
    }

    /// Who must publish or cancel it: the claimer, else the holder's node.
    pub fn owner(&self) -> (&str, u64) {
        match &self.claimed_by {
            Some((node, incarnation)) => (node, *incarnation),
            None => (&self.node, self.incarnation),
        }
    }
}

/// A will as kept in [`WILLS_BUCKET`].
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Holder, delay, claim.
    pub header: Header,
    /// The will's topic.
    pub topic: String,
    /// The will message as a cluster envelope (its expiry as the full interval, counted
    /// from publication).
    pub envelope: Bytes,
}

impl Record {
    /// The record of `client_id`'s `will`.
    pub fn new(header: Header, client_id: &Arc<str>, will: &Will) -> Self {
        let remaining = will
            .properties
            .message_expiry_interval
            .map(|secs| u64::from(secs) * 1000);
        let message = Message::from_will(will.clone(), client_id.clone(), 0);
        let origin = Origin {
            node: header.node.clone(),
            incarnation: header.incarnation,
            seq: 0,
        };
        Self {
            topic: message.topic.clone(),
            envelope: envelope::encode(&origin, &message, remaining),
            header,
        }
    }

    /// `MWL1`, then the header (JSON), the topic and the envelope, each after its length.
    pub fn encode(&self) -> Bytes {
        let header = serde_json::to_vec(&self.header).unwrap_or_default();
        let mut out = BytesMut::with_capacity(
            MAGIC.len() + 8 + header.len() + self.topic.len() + self.envelope.len(),
        );
        out.put_slice(MAGIC);
        out.put_u32(header.len() as u32);
        out.put_slice(&header);
        out.put_u32(self.topic.len() as u32);
        out.put_slice(self.topic.as_bytes());
        out.put_slice(&self.envelope);
        out.freeze()
    }

    /// The record in `value`; `None` if it is not one.
    pub fn decode(mut value: Bytes) -> Option<Self> {
        if !value.starts_with(MAGIC) {
            return None;
        }
        value.advance(MAGIC.len());
        let field = |value: &mut Bytes| {
            if value.remaining() < 4 {
                return None;
            }
            let n = value.get_u32() as usize;
            (value.remaining() >= n).then(|| value.split_to(n))
        };
        let header = serde_json::from_slice(&field(&mut value)?).ok()?;
        let topic = String::from_utf8(field(&mut value)?.to_vec()).ok()?;
        Some(Self {
            header,
            topic,
            envelope: value,
        })
    }

    /// The will as a message published at `now`.
    fn message(&self, now: u64) -> Option<Message> {
        envelope::decode(self.topic.clone(), self.envelope.clone(), now)
            .ok()
            .map(|(_, message)| message)
    }
}

/// One of this node's operations on a will record, carried out in order per key.
#[derive(Debug)]
enum Op {
    /// Connection `connection` was accepted with a will: write its record (`None`: the
    /// will is not kept beyond this node, too large or not authorized).
    Write {
        key: String,
        connection: u64,
        value: Option<Bytes>,
    },
    /// The registry made the will of `client_id` due here: publish it if this node still
    /// holds its record.
    Fire {
        key: String,
        client_id: Arc<str>,
        will: Will,
    },
    /// The will was cancelled here (of `connection` only, when given).
    Cancel {
        key: String,
        connection: Option<u64>,
    },
    /// A CONNECT here displaced a holder elsewhere: settle the record it left.
    Settle { key: String, clean_start: bool },
    /// Answered once the operations queued before it are done.
    Barrier(oneshot::Sender<()>),
}

/// Counters of cluster-wide wills on this node.
#[derive(Debug, Default)]
pub struct WillStats {
    /// Records written.
    pub written: std::sync::atomic::AtomicU64,
    /// Wills kept on their node only: too large, not authorized, or JetStream unreachable.
    pub not_written: std::sync::atomic::AtomicU64,
    /// Wills this node published from records of other connections: a dead node's, its
    /// own earlier run's, or one a CONNECT here displaced.
    pub claimed: std::sync::atomic::AtomicU64,
    /// Wills not published here because another node published or cancelled them first.
    pub lost_race: std::sync::atomic::AtomicU64,
}

/// Cluster-wide wills of this node (see the module documentation).
pub struct Wills {
    node: Arc<str>,
    incarnation: u64,
    client: async_nats::Client,
    store: kv::Store,
    shards: Vec<mpsc::UnboundedSender<Op>>,
    /// The shards' receivers until [`Wills::start`] takes them.
    inboxes: Mutex<Option<Vec<mpsc::UnboundedReceiver<Op>>>>,
    hasher: std::collections::hash_map::RandomState,
    /// Counters.
    pub stats: WillStats,
}

impl std::fmt::Debug for Wills {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wills")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// How a compare-and-set delete went.
#[derive(Debug, PartialEq, Eq)]
enum Deleted {
    /// This node deleted it: it publishes or cancels.
    Won,
    /// The revision moved on: another node (or a later write) took it.
    Lost,
    /// JetStream did not answer.
    Failed,
}

impl Wills {
    /// Wills of `node`'s run `incarnation`, kept in `store` through `client` (the control
    /// connection).
    pub fn new(
        node: Arc<str>,
        incarnation: u64,
        client: async_nats::Client,
        store: kv::Store,
    ) -> Arc<Self> {
        let (shards, inboxes) = (0..SHARDS).map(|_| mpsc::unbounded_channel()).unzip();
        Arc::new(Self {
            node,
            incarnation,
            client,
            store,
            shards,
            inboxes: Mutex::new(Some(inboxes)),
            hasher: std::collections::hash_map::RandomState::new(),
            stats: WillStats::default(),
        })
    }

    fn queue(&self, key: &str, op: Op) {
        let shard = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        // Fails only once the shard ended, at shutdown: the record stays for a survivor.
        let _ = self.shards[shard].send(op);
    }

    /// Connection `connection` accepted `client_id` with `will` (`None`: not kept beyond
    /// this node), due `delay` seconds after the connection ends, in a session expiring
    /// `expiry` seconds after it.
    pub fn accepted(
        &self,
        client_id: &Arc<str>,
        connection: u64,
        will: Option<&Will>,
        delay: u32,
        expiry: u32,
    ) {
        let key = owner_key(client_id);
        let value = will.and_then(|will| {
            let header = Header {
                node: self.node.to_string(),
                incarnation: self.incarnation,
                connection,
                delay,
                expiry,
                claimed_by: None,
                publish_at: None,
            };
            let value = Record::new(header, client_id, will).encode();
            if value.len() + FRAMING > self.client.server_info().max_payload {
                tracing::warn!(client_id = %client_id, "cluster: will exceeds NATS max_payload; published by this node only");
                return None;
            }
            Some(value)
        });
        self.queue(
            &key.clone(),
            Op::Write {
                key,
                connection,
                value,
            },
        );
    }

    /// The registry made `client_id`'s will due here; published once this node deleted
    /// its record (or kept none).
    pub fn fire(&self, client_id: &Arc<str>, will: Will) {
        let key = owner_key(client_id);
        self.queue(
            &key.clone(),
            Op::Fire {
                key,
                client_id: client_id.clone(),
                will,
            },
        );
    }

    /// `client_id`'s will was cancelled here (that of `connection` only, when given).
    pub fn cancel(&self, client_id: &str, connection: Option<u64>) {
        let key = owner_key(client_id);
        self.queue(&key.clone(), Op::Cancel { key, connection });
    }

    /// A CONNECT of `client_id` here displaced a holder on another node (or an earlier run
    /// of this one): the record that holder left is cancelled when the session resumes,
    /// published when it ends (`clean_start`) or when the will has no delay.
    pub fn settle(&self, client_id: &str, clean_start: bool) {
        let key = owner_key(client_id);
        self.queue(&key.clone(), Op::Settle { key, clean_start });
    }

    /// Resolves once this node's operations on `client_id` queued so far are done (at
    /// most [`KV_TIMEOUT`] and a bit later).
    pub async fn barrier(&self, client_id: &str) {
        let (reply, done) = oneshot::channel();
        self.queue(&owner_key(client_id), Op::Barrier(reply));
        let _ = tokio::time::timeout(KV_TIMEOUT + Duration::from_secs(1), done).await;
    }

    /// Spawns the shard tasks and the sweeper; they end when `shutdown` turns true (what
    /// is queued then is left to the survivors, who see this node stop).
    pub fn start(
        self: &Arc<Self>,
        nodes: NodeList,
        broker: Arc<Broker>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let inboxes = self
            .inboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        let mut tasks: Vec<JoinHandle<()>> = inboxes
            .into_iter()
            .map(|ops| {
                tokio::spawn(shard_loop(
                    self.clone(),
                    ops,
                    broker.clone(),
                    shutdown.clone(),
                ))
            })
            .collect();
        tasks.push(tokio::spawn(sweep_loop(
            self.clone(),
            nodes,
            broker,
            shutdown,
        )));
        tasks
    }

    async fn delete(&self, key: &str, revision: u64) -> Deleted {
        let delete = self.store.delete_expect_revision(key, Some(revision));
        match tokio::time::timeout(KV_TIMEOUT, delete).await {
            Ok(Ok(())) => Deleted::Won,
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Deleted::Lost,
            _ => Deleted::Failed,
        }
    }

    /// Publishes the will in `record`, through the normal routing path.
    fn publish(&self, broker: &Broker, record: &Record, why: &str) {
        let now = now_millis();
        let Some(message) = record.message(now) else {
            tracing::warn!(topic = %record.topic, "cluster: a will record does not decode; dropped");
            return;
        };
        tracing::info!(client_id = %message.origin, topic = %message.topic, node = %record.header.node, "cluster: publishing the will of a client of another node ({why})");
        Stats::add(&self.stats.claimed, 1);
        Stats::add(&broker.stats.wills_published, 1);
        broker.publish(message);
    }

    /// Settles the record under `key` left by a displaced holder (see [`Wills::settle`]).
    async fn settle_record(&self, broker: &Broker, key: &str, clean_start: bool) {
        for _ in 0..CAS_ATTEMPTS {
            let entry = match tokio::time::timeout(KV_TIMEOUT, self.store.entry(key)).await {
                Ok(Ok(Some(entry))) if entry.operation == kv::Operation::Put => entry,
                Ok(Ok(_)) => return,
                _ => {
                    tracing::warn!(
                        key,
                        "cluster: the will record of a displaced connection could not be read (NATS JetStream unreachable)"
                    );
                    return;
                }
            };
            let Some(record) = Record::decode(entry.value.clone()) else {
                let _ = self.delete(key, entry.revision).await;
                return;
            };
            let h = &record.header;
            if *h.node == *self.node && h.incarnation == self.incarnation && h.claimed_by.is_none()
            {
                // A connection of this run: the registry decides about it.
                return;
            }
            // A will whose delay has passed (a claimer's deadline) is due, not cancelled.
            let due = h.publish_at.is_some_and(|at| at <= now_millis());
            let publish = clean_start || h.due_after_ms() == 0 || due;
            match self.delete(key, entry.revision).await {
                Deleted::Won if publish => {
                    self.publish(broker, &record, "its connection was replaced");
                    return;
                }
                Deleted::Won | Deleted::Failed => return,
                Deleted::Lost => continue,
            }
        }
    }

    /// Looks at every record and claims those whose holder (or claimer) is not alive:
    /// `live` are the listed nodes, `seen` when each node was last heard from.
    async fn sweep(
        self: &Arc<Self>,
        live: &HashSet<String>,
        seen: &HashMap<String, u64>,
        broker: &Arc<Broker>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), String> {
        use futures_util::TryStreamExt as _;
        let keys = async {
            let keys = self.store.keys().await.map_err(|e| e.to_string())?;
            keys.try_collect::<Vec<String>>()
                .await
                .map_err(|e| e.to_string())
        };
        let keys = tokio::time::timeout(KV_TIMEOUT * 4, keys)
            .await
            .map_err(|_| "listing the will records timed out".to_owned())??;
        let mut failed = None;
        for key in keys {
            let entry = match tokio::time::timeout(KV_TIMEOUT, self.store.entry(&key)).await {
                Ok(Ok(Some(entry))) if entry.operation == kv::Operation::Put => entry,
                Ok(Ok(_)) => continue,
                _ => {
                    failed = Some("reading a will record failed".to_owned());
                    continue;
                }
            };
            let Some(record) = Record::decode(entry.value.clone()) else {
                continue;
            };
            let (node, incarnation) = record.header.owner();
            let alive = if *node == *self.node {
                incarnation == self.incarnation
            } else {
                live.contains(node)
            };
            if alive {
                continue;
            }
            let last_seen = seen.get(node).copied();
            if let Err(e) = self
                .claim(key, entry.revision, record, last_seen, broker, shutdown)
                .await
            {
                failed = Some(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Claims the record of a dead holder under `key` at `revision`: publishes it now if it
    /// is due, else rewrites it naming this node and publishes it at its deadline. Losing
    /// the compare-and-set is fine (another survivor won); only a failure is an error.
    async fn claim(
        self: &Arc<Self>,
        key: String,
        revision: u64,
        record: Record,
        last_seen: Option<u64>,
        broker: &Arc<Broker>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), String> {
        let now = now_millis();
        let publish_at = record
            .header
            .publish_at
            .unwrap_or_else(|| last_seen.unwrap_or(now) + record.header.due_after_ms());
        if publish_at <= now {
            return match self.delete(&key, revision).await {
                Deleted::Won => {
                    self.publish(broker, &record, "its node is gone");
                    Ok(())
                }
                Deleted::Lost => {
                    Stats::add(&self.stats.lost_race, 1);
                    Ok(())
                }
                Deleted::Failed => Err("deleting a will record failed".to_owned()),
            };
        }
        let mut claimed = record.clone();
        claimed.header.claimed_by = Some((self.node.to_string(), self.incarnation));
        claimed.header.publish_at = Some(publish_at);
        let update = self.store.update(&key, claimed.encode(), revision);
        let claimed_revision = match tokio::time::timeout(KV_TIMEOUT, update).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Stats::add(&self.stats.lost_race, 1);
                return Ok(());
            }
            _ => return Err("claiming a will record failed".to_owned()),
        };
        tracing::debug!(
            key,
            publish_at,
            "cluster: claimed the delayed will of a gone node"
        );
        let (this, broker, mut shutdown) = (self.clone(), broker.clone(), shutdown.clone());
        tokio::spawn(async move {
            let wait = Duration::from_millis(publish_at.saturating_sub(now_millis()));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            loop {
                match this.delete(&key, claimed_revision).await {
                    Deleted::Won => {
                        this.publish(&broker, &record, "its node is gone");
                        return;
                    }
                    // Cancelled by a resume, or settled by a CONNECT elsewhere.
                    Deleted::Lost => return,
                    Deleted::Failed => {}
                }
                tokio::select! {
                    _ = tokio::time::sleep(HEARTBEAT) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        });
        Ok(())
    }
}

/// Carries out one shard's operations, in order. `held` is what this node wrote: by key,
/// the connection and the record's revision (`None`: not kept beyond this node).
async fn shard_loop(
    wills: Arc<Wills>,
    mut ops: mpsc::UnboundedReceiver<Op>,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut held: HashMap<String, (u64, Option<u64>)> = HashMap::new();
    loop {
        let op = tokio::select! {
            op = ops.recv() => match op { Some(op) => op, None => break },
            _ = shutdown.wait_for(|s| *s) => break,
        };
        match op {
            Op::Write {
                key,
                connection,
                value,
            } => {
                let revision = match value {
                    Some(value) => {
                        let put = wills.store.put(&key, value);
                        match tokio::time::timeout(KV_TIMEOUT, put).await {
                            Ok(Ok(revision)) => {
                                Stats::add(&wills.stats.written, 1);
                                Some(revision)
                            }
                            _ => {
                                tracing::warn!(
                                    key,
                                    "cluster: will record not written (NATS JetStream unreachable); published by this node only"
                                );
                                Stats::add(&wills.stats.not_written, 1);
                                None
                            }
                        }
                    }
                    None => {
                        Stats::add(&wills.stats.not_written, 1);
                        None
                    }
                };
                held.insert(key, (connection, revision));
            }
            Op::Fire {
                key,
                client_id,
                will,
            } => {
                let publish = match held.remove(&key) {
                    Some((_, Some(revision))) => match wills.delete(&key, revision).await {
                        Deleted::Won => true,
                        Deleted::Lost => {
                            Stats::add(&wills.stats.lost_race, 1);
                            tracing::debug!(client_id = %client_id, "cluster: will published or cancelled by another node");
                            false
                        }
                        Deleted::Failed => {
                            // Still published: a will delayed by an outage beats a lost one.
                            tracing::warn!(client_id = %client_id, "cluster: will record not deleted (NATS JetStream unreachable); publishing the will anyway");
                            true
                        }
                    },
                    Some((_, None)) => true,
                    // A will restored from this node's store: in a cluster its record in
                    // the bucket, settled or swept, decides.
                    None => false,
                };
                if publish {
                    broker.publish_will(&client_id, will, now_millis());
                }
            }
            Op::Cancel { key, connection } => {
                if let Some(&(holder, revision)) = held.get(&key)
                    && connection.is_none_or(|c| c == holder)
                {
                    held.remove(&key);
                    if let Some(revision) = revision {
                        let _ = wills.delete(&key, revision).await;
                    }
                }
            }
            Op::Settle { key, clean_start } => {
                wills.settle_record(&broker, &key, clean_start).await;
            }
            Op::Barrier(reply) => {
                let _ = reply.send(());
            }
        }
    }
}

/// Sweeps the records when a node drops out of the node list, and once [`NODE_TTL`] after
/// start (records of nodes gone before, this node's earlier run among them); a sweep that
/// failed is tried again every [`HEARTBEAT`].
async fn sweep_loop(
    wills: Arc<Wills>,
    nodes: NodeList,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(HEARTBEAT);
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut live: HashSet<String> = HashSet::new();
    let mut pending = false;
    let mut first_done = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let now = now_millis();
        let listed: HashSet<String> = nodes()
            .into_iter()
            .map(|(node, age)| {
                seen.insert(node.clone(), now.saturating_sub(age.as_millis() as u64));
                node
            })
            .collect();
        if live.iter().any(|node| !listed.contains(node)) {
            pending = true;
        }
        live = listed;
        // Not before every live node has been heard from: a node not yet listed would
        // look dead.
        if started.elapsed() < NODE_TTL + HEARTBEAT || (first_done && !pending) {
            continue;
        }
        match wills.sweep(&live, &seen, &broker, &shutdown).await {
            Ok(()) => {
                pending = false;
                first_done = true;
            }
            Err(e) => {
                tracing::debug!(error = %e, "cluster: sweeping will records failed; retrying")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use midge_proto::{QoS, WillProperties};

    fn will() -> Will {
        Will {
            topic: "wills/c".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval: Some(30),
                message_expiry_interval: Some(60),
                content_type: Some("text/plain".into()),
                ..WillProperties::default()
            },
        }
    }

    fn header() -> Header {
        Header {
            node: "a".into(),
            incarnation: 7,
            connection: 3,
            delay: 30,
            expiry: 10,
            claimed_by: None,
            publish_at: None,
        }
    }

    #[test]
    fn records_round_trip_and_give_the_will_as_published_later() {
        let id: Arc<str> = Arc::from("c");
        let record = Record::new(header(), &id, &will());
        let decoded = Record::decode(record.encode()).expect("a record");
        assert_eq!(decoded, record);
        let message = decoded.message(1_000).expect("a message");
        assert_eq!(message.topic, "wills/c");
        assert_eq!(&message.payload[..], b"gone");
        assert_eq!(message.qos, QoS::AtLeastOnce);
        assert!(message.retain);
        assert_eq!(&*message.origin, "c");
        assert_eq!(
            message.properties.content_type.as_deref(),
            Some("text/plain")
        );
        // The message expiry counts from publication.
        assert_eq!(message.expires_at, Some(61_000));
        let all = record.encode();
        for n in 0..all.len() {
            // Truncations never panic; most do not decode.
            let _ = Record::decode(all.slice(..n));
        }
        assert!(Record::decode(Bytes::from_static(b"nope")).is_none());
    }

    #[test]
    fn the_delay_never_outlasts_the_session() {
        let mut h = header();
        assert_eq!(h.due_after_ms(), 10_000, "session ends first");
        h.expiry = u32::MAX;
        assert_eq!(h.due_after_ms(), 30_000);
        h.expiry = 0;
        assert_eq!(h.due_after_ms(), 0, "no session to wait in");
        assert_eq!(h.owner(), ("a", 7));
        h.claimed_by = Some(("b".into(), 9));
        assert_eq!(h.owner(), ("b", 9));
    }
}
