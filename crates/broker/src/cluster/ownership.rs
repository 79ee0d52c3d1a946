//! One connection per client id across the cluster, and the cluster's node list.
//!
//! **Ownership.** The JetStream KV bucket [`OWNERS_BUCKET`] maps each connected client id
//! ([`owner_key`]) to its [`Holder`]: node id, node incarnation and connection id, so
//! every connection has its own epoch. A CONNECT first attaches locally (the registry
//! takes the id over from a connection on this node), then [`Owners::claim`]s the key by
//! compare-and-set: read the entry and its revision, write this connection expecting that
//! revision (0: no entry), re-read and retry on a conflict. Exactly one of two racing
//! CONNECTs writes over the other, and it learns whom it displaced; the last writer wins,
//! as MQTT's takeover wants. The winner then asks the displaced holder's node to let go,
//! by request on that node's control subject ([`control_subject`]) and waits (bounded)
//! for the answer, so the old connection has sent DISCONNECT 0x8E and closed before the
//! new one gets its CONNACK. A node answers for a connection it no longer holds at once,
//! and a dead node has no responder, which NATS reports at once.
//!
//! A request to the one node concerned was chosen over a KV watch: a watch sends every
//! CONNECT in the cluster to every node, and gives the new owner no answer to wait for.
//! A request that is lost (the new owner dies between its write and its request) leaves
//! the old connection alone, and the new one died: still one live connection.
//!
//! Without NATS, a CONNECT cannot be fenced: it is refused with CONNACK 0x88 (server
//! unavailable; v3: return code 3), at once while the NATS connection is down and after
//! [`CLAIM_TIMEOUT`] when JetStream does not answer. A connection that ends for any reason
//! other than being taken over deletes its key, expecting its own revision, so it never
//! deletes a newer owner's and the next CONNECT elsewhere finds the key free.
//!
//! **Nodes.** Each node puts a [`NodeRecord`] into [`NODES_BUCKET`] every [`HEARTBEAT`]
//! (the bucket's entries age out after [`NODE_TTL`]) and watches the bucket: a node is
//! listed while its last record arrived less than [`NODE_TTL`] ago here. The list is
//! published in `$SYS/broker/cluster/nodes` and served by the admin API.
//!
//! All of this runs on a connection of its own to NATS ("midge NODE control"), so
//! control requests never wait behind forwarded messages. No lock is held across an
//! await and no NATS call is made under one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::ClusterError;
pub use super::keys::{HEARTBEAT, NODE_TTL, owner_key};
use crate::broker::Broker;
use crate::config::ClusterConfig;
use crate::mailbox::{Control, Mailbox};
use crate::model::{Message, now_millis};
use crate::registry::{Claim, Ownership};
use crate::stats::Stats;

/// Client id → [`Holder`].
pub const OWNERS_BUCKET: &str = "midge_owners";
/// Node id → [`NodeRecord`], aged out after [`NODE_TTL`].
pub const NODES_BUCKET: &str = "midge_nodes";
/// Longest a claim waits for JetStream (CAS) before the CONNECT is refused with 0x88.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest the new owner waits for the old owner's node to close the old connection; a
/// hung node does not keep the client out longer (see CLUSTER.md, self-fencing is later).
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Compare-and-set rounds before a claim gives up (each conflict means another CONNECT
/// with this client id won a round: it is unlikely to happen more than a few times).
const CAS_ATTEMPTS: usize = 32;
/// The subject on which `node` is asked to let a client id go.
pub fn control_subject(node: &str) -> String {
    // Node ids are letters, digits, `-` and `_` (checked by the configuration): one token.
    format!("mq.c.{node}.leave")
}

/// Who holds a client id: a connection of a node's incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Node id.
    pub node: String,
    /// The node process's start (microseconds since the epoch): connection ids restart
    /// with the process.
    pub incarnation: u64,
    /// The connection, numbered by the node.
    pub connection: u64,
}

/// A node's announcement in [`NODES_BUCKET`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id.
    pub node: String,
    /// When the node process started (milliseconds since the epoch).
    pub started_at_ms: u64,
    /// Clients connected to it when it last announced itself.
    pub clients: u64,
}

/// A request to let go of a client id, sent to the holder's node.
#[derive(Debug, Serialize, Deserialize)]
struct Leave {
    client_id: String,
    incarnation: u64,
    connection: u64,
    /// The new connection starts a clean session: a delayed will of the session handed
    /// over is published, not cancelled (the session ends).
    #[serde(default)]
    clean_start: bool,
}

/// Why a CONNECT cannot be served now (CONNACK 0x88).
pub type Unavailable = &'static str;

/// Counters of client-id ownership on this node.
#[derive(Debug, Default)]
pub struct OwnershipStats {
    /// Client ids claimed in KV.
    pub claims: std::sync::atomic::AtomicU64,
    /// Claims that displaced a holder on another node, which was asked to let go.
    pub takeovers_sent: std::sync::atomic::AtomicU64,
    /// Connections here closed because a CONNECT on another node took the id over.
    pub taken_over_remotely: std::sync::atomic::AtomicU64,
    /// CONNECTs refused because the claim could not be made (NATS unreachable).
    pub refused: std::sync::atomic::AtomicU64,
    /// Other nodes that did not answer a request to let go in time.
    pub leave_timeouts: std::sync::atomic::AtomicU64,
}

/// Client-id ownership and the node list of this node; shared by the claims, the control
/// responder, the heartbeat and the admin API.
pub struct Owners {
    node: Arc<str>,
    incarnation: u64,
    started_at_ms: u64,
    client: async_nats::Client,
    owners: kv::Store,
    nodes: kv::Store,
    /// Parked persistent sessions' state (`sessions.rs`), keyed like `owners`.
    sessions: kv::Store,
    /// Writes to `sessions`, in order per key ([`SessionWrites`]).
    session_writes: SessionWrites,
    /// Wills kept cluster-wide (`wills.rs`).
    pub wills: Arc<super::wills::Wills>,
    /// The KV revision each local connection's claim wrote, by client id, for its release.
    held: Held,
    /// Nodes heard from, with when.
    seen: Mutex<HashMap<String, (NodeRecord, Instant)>>,
    /// Requests to let go, subscribed to before the node serves anyone (a request
    /// meeting no responder would mean the node is gone); taken by the control task.
    requests: Mutex<Option<async_nats::Subscriber>>,
    /// Counters.
    pub stats: OwnershipStats,
}

impl std::fmt::Debug for Owners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owners")
            .field("node", &self.node)
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The KV revision each local connection's claim wrote, by client id: what its release
/// deletes, expecting that revision. Connections of this node claim and release the same
/// id concurrently (a takeover on this node: the old connection releases as the new one
/// claims); a leaf lock, held for a map operation only.
#[derive(Debug, Default)]
struct Held(Mutex<HashMap<Arc<str>, (u64, u64)>>);

impl Held {
    /// `connection` claimed `client_id` at `revision`. A newer claim of this node may have
    /// been recorded first: revisions only grow, and the newest stays.
    fn record(&self, client_id: &Arc<str>, connection: u64, revision: u64) {
        let mut held = lock(&self.0);
        let slot = held
            .entry(client_id.clone())
            .or_insert((connection, revision));
        if slot.1 < revision {
            *slot = (connection, revision);
        }
    }

    /// Forgets `client_id`'s claim if `connection` holds it; its revision.
    fn take(&self, client_id: &str, connection: u64) -> Option<u64> {
        let mut held = lock(&self.0);
        match held.get(client_id) {
            Some(&(c, revision)) if c == connection => {
                held.remove(client_id);
                Some(revision)
            }
            _ => None,
        }
    }
}

/// A write to the sessions bucket.
enum SessionWrite {
    Put {
        client_id: String,
        record: Bytes,
        expires_at: Option<u64>,
    },
    Delete,
}

/// Writes to the sessions bucket from a few tasks, each key always through the same one,
/// so a session's writes land in the order they were made (a connected session's record
/// written at SUBSCRIBE must not land after the one its park wrote a moment later). Each
/// task's queue is bounded: past it a write is dropped, counted in the log.
struct SessionWrites(Vec<tokio::sync::mpsc::Sender<(String, SessionWrite)>>);

/// Tasks writing session records, and how many writes each may have waiting.
const SESSION_WRITERS: usize = 8;
const SESSION_WRITES_QUEUED: usize = 4096;

impl SessionWrites {
    fn start(sessions: kv::Store, max_payload: usize) -> Self {
        let senders = (0..SESSION_WRITERS)
            .map(|_| {
                let (tx, mut rx) =
                    tokio::sync::mpsc::channel::<(String, SessionWrite)>(SESSION_WRITES_QUEUED);
                let sessions = sessions.clone();
                tokio::spawn(async move {
                    while let Some((key, write)) = rx.recv().await {
                        match write {
                            SessionWrite::Put {
                                client_id,
                                record,
                                expires_at,
                            } => {
                                super::sessions::put_record(
                                    &sessions,
                                    &client_id,
                                    key,
                                    record,
                                    expires_at,
                                    max_payload,
                                )
                                .await;
                            }
                            SessionWrite::Delete => {
                                let _ = tokio::time::timeout(CLAIM_TIMEOUT, sessions.delete(&key))
                                    .await;
                            }
                        }
                    }
                });
                tx
            })
            .collect();
        Self(senders)
    }

    fn send(&self, key: String, write: SessionWrite) {
        use std::hash::{BuildHasher as _, BuildHasherDefault};
        let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(&key);
        let shard = &self.0[(hash % self.0.len() as u64) as usize];
        if shard.try_send((key, write)).is_err() {
            tracing::warn!(
                "cluster: a session record write was dropped (JetStream too slow for the rate of session changes)"
            );
        }
    }
}

/// Opens a KV bucket, creating it when missing: replicated on 3 servers when the NATS
/// cluster has them, on one otherwise (a single server refuses replicas).
async fn bucket(
    js: &async_nats::jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(config.bucket.clone()).await {
        return Ok(store);
    }
    let replicated = kv::Config {
        num_replicas: 3,
        ..config.clone()
    };
    match js.create_key_value(replicated).await {
        Ok(store) => Ok(store),
        // JetStream error codes: 10074 "replicas > 1 not supported in non-clustered
        // mode", 10023 "insufficient resources" (fewer than 3 JetStream servers). Any
        // other failure (no meta leader elected yet) is retried, not settled with one copy.
        Err(first)
            if !["10074", "10023"]
                .iter()
                .any(|code| first.to_string().contains(code)) =>
        {
            Err(first.to_string())
        }
        Err(first) => match js.create_key_value(config.clone()).await {
            Ok(store) => {
                tracing::warn!(bucket = %config.bucket, error = %first, "cluster: KV bucket kept on one NATS server (no 3 JetStream servers to replicate it)");
                Ok(store)
            }
            // Another node may have created it meanwhile.
            Err(e) => js
                .get_key_value(config.bucket.clone())
                .await
                .map_err(|_| e.to_string()),
        },
    }
}

impl Owners {
    /// Connects the control connection and opens the buckets, retrying with backoff (100
    /// ms doubling to 5 s) until NATS and JetStream answer: the node opens no listener
    /// before, so it never accepts a client id it could not fence.
    pub async fn connect(
        config: &ClusterConfig,
        incarnation: u64,
    ) -> Result<Arc<Self>, ClusterError> {
        let mut delay = Duration::from_millis(100);
        loop {
            let options = super::options(config)
                .await?
                .name(format!("midge {} control", config.node_id));
            let attempt = async {
                let client = options
                    .connect(&config.nats_urls[..])
                    .await
                    .map_err(|e| e.to_string())?;
                let js = async_nats::jetstream::new(client.clone());
                let owners = bucket(
                    &js,
                    kv::Config {
                        bucket: OWNERS_BUCKET.to_owned(),
                        description: "midge: which node holds each connected client id".into(),
                        history: 1,
                        storage: async_nats::jetstream::stream::StorageType::File,
                        ..Default::default()
                    },
                )
                .await?;
                let nodes = bucket(
                    &js,
                    kv::Config {
                        bucket: NODES_BUCKET.to_owned(),
                        description: "midge: live nodes (heartbeats)".into(),
                        history: 1,
                        max_age: NODE_TTL,
                        storage: async_nats::jetstream::stream::StorageType::Memory,
                        ..Default::default()
                    },
                )
                .await?;
                let sessions = bucket(&js, super::sessions::bucket_config()).await?;
                let wills = bucket(&js, super::wills::bucket_config()).await?;
                let requests = client
                    .subscribe(control_subject(&config.node_id))
                    .await
                    .map_err(|e| e.to_string())?;
                // The subscription reaches the server before any CONNECT is accepted.
                client.flush().await.map_err(|e| e.to_string())?;
                Ok::<_, String>((client, owners, nodes, sessions, wills, requests))
            };
            // See OPEN_TIMEOUT.
            let attempt = async {
                tokio::time::timeout(super::OPEN_TIMEOUT, attempt)
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "JetStream did not answer within {} s",
                            super::OPEN_TIMEOUT.as_secs()
                        ))
                    })
            };
            match attempt.await {
                Ok((client, owners, nodes, sessions, wills, requests)) => {
                    let node: Arc<str> = Arc::from(config.node_id.as_str());
                    let session_writes =
                        SessionWrites::start(sessions.clone(), client.server_info().max_payload);
                    return Ok(Arc::new(Self {
                        wills: super::wills::Wills::new(
                            node.clone(),
                            incarnation,
                            client.clone(),
                            wills,
                        ),
                        node,
                        incarnation,
                        started_at_ms: now_millis(),
                        client,
                        owners,
                        nodes,
                        session_writes,
                        sessions,
                        held: Held::default(),
                        seen: Mutex::default(),
                        requests: Mutex::new(Some(requests)),
                        stats: OwnershipStats::default(),
                    }));
                }
                Err(e) => {
                    tracing::warn!(
                        node_id = %config.node_id,
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "cluster: NATS JetStream (client-id ownership, node list) not ready; MQTT listeners stay closed until it is"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    fn holder(&self, connection: u64) -> Holder {
        Holder {
            node: self.node.to_string(),
            incarnation: self.incarnation,
            connection,
        }
    }

    /// Claims `client_id` for `connection` (see the module documentation).
    pub async fn claim(
        self: Arc<Self>,
        client_id: Arc<str>,
        connection: u64,
        clean_start: bool,
    ) -> Result<Option<Bytes>, Unavailable> {
        let result = self.claim_inner(&client_id, connection, clean_start).await;
        if result.is_err() {
            Stats::add(&self.stats.refused, 1);
        }
        result
    }

    async fn claim_inner(
        &self,
        client_id: &Arc<str>,
        connection: u64,
        clean_start: bool,
    ) -> Result<Option<Bytes>, Unavailable> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err("the cluster's NATS is unreachable");
        }
        let key = owner_key(client_id);
        let value = Bytes::from(serde_json::to_vec(&self.holder(connection)).unwrap_or_default());
        let cas = async {
            for _ in 0..CAS_ATTEMPTS {
                let entry = self
                    .owners
                    .entry(key.clone())
                    .await
                    .map_err(|_| "reading the client id's owner failed")?;
                let (expected, previous) = match entry {
                    Some(e) if e.operation == kv::Operation::Put => {
                        (e.revision, serde_json::from_slice::<Holder>(&e.value).ok())
                    }
                    Some(e) => (e.revision, None),
                    None => (0, None),
                };
                match self.owners.update(&key, value.clone(), expected).await {
                    Ok(revision) => return Ok((revision, previous)),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                    Err(_) => return Err("writing the client id's owner failed"),
                }
            }
            Err("the client id is contended")
        };
        let (revision, previous) = tokio::time::timeout(CLAIM_TIMEOUT, cas)
            .await
            .map_err(|_| "the cluster's NATS JetStream did not answer")??;
        Stats::add(&self.stats.claims, 1);
        self.held.record(client_id, connection, revision);
        let Some(previous) = previous else {
            return Ok(None);
        };
        if *previous.node == *self.node {
            // A connection of this node was already told to go by the registry (which
            // also decided its will); one of a previous incarnation is gone, and the will
            // it left is settled here. A session record of this id describes a parked
            // session, not the one now connected.
            self.forget_session(&key);
            if previous.incarnation != self.incarnation {
                self.wills.settle(client_id, clean_start);
            }
            return Ok(None);
        }
        let handed = self.displace(client_id, &key, previous, clean_start).await;
        // After the old node's answer, which comes once it fired or cancelled its own
        // will: what is left is a dead (or unanswering) holder's.
        self.wills.settle(client_id, clean_start);
        Ok(handed)
    }

    /// Asks `previous`, on another node, to let `client_id` go; the session it hands over
    /// (or recorded, if its node is gone).
    async fn displace(
        &self,
        client_id: &Arc<str>,
        key: &str,
        previous: Holder,
        clean_start: bool,
    ) -> Option<Bytes> {
        Stats::add(&self.stats.takeovers_sent, 1);
        let leave = Leave {
            client_id: client_id.to_string(),
            incarnation: previous.incarnation,
            connection: previous.connection,
            clean_start,
        };
        let payload = Bytes::from(serde_json::to_vec(&leave).unwrap_or_default());
        let request = self
            .client
            .request(control_subject(&previous.node), payload);
        match tokio::time::timeout(LEAVE_TIMEOUT, request).await {
            // The session, when the old node parked one (see `sessions.rs`).
            Ok(Ok(reply)) if reply.payload.len() > 1 => {
                self.forget_session(key);
                return Some(reply.payload);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                tracing::debug!(client_id = %client_id, node = %previous.node, "cluster: the client id's previous node is gone");
                // What that node recorded of the session when it parked it.
                return super::sessions::restore_record(&self.sessions, key).await;
            }
            Ok(Err(e)) => {
                Stats::add(&self.stats.leave_timeouts, 1);
                tracing::warn!(client_id = %client_id, node = %previous.node, error = %e, "cluster: could not ask the client id's previous node to let go");
            }
            Err(_) => {
                Stats::add(&self.stats.leave_timeouts, 1);
                tracing::warn!(client_id = %client_id, node = %previous.node, "cluster: the client id's previous node did not let go in time; serving the new connection");
            }
        }
        self.forget_session(key);
        None
    }

    /// `connection` let go of `client_id` other than by being taken over from another
    /// node: deletes its key if it still holds it (expecting its revision, so a newer
    /// owner's key stays).
    pub fn release(self: &Arc<Self>, client_id: &Arc<str>, connection: u64) {
        let Some(revision) = self.held.take(client_id, connection) else {
            return;
        };
        let this = self.clone();
        let key = owner_key(client_id);
        tokio::spawn(async move {
            let delete = this.owners.delete_expect_revision(&key, Some(revision));
            // A failure leaves a stale key: the next CONNECT asks this node, which answers
            // at once that it holds nothing.
            let _ = tokio::time::timeout(CLAIM_TIMEOUT, delete).await;
        });
    }

    /// Deletes the session record under `key`: it describes a session that moved, ended
    /// or resumed.
    fn forget_session(&self, key: &str) {
        self.session_writes
            .send(key.to_owned(), SessionWrite::Delete);
    }

    /// Records `client_id`'s session: parked until `expires_at`, or connected (`None`).
    pub fn record_session(&self, client_id: &str, record: Bytes, expires_at: Option<u64>) {
        self.session_writes.send(
            owner_key(client_id),
            SessionWrite::Put {
                client_id: client_id.to_owned(),
                record,
                expires_at,
            },
        );
    }

    /// Who holds `client_id` according to the owners bucket.
    pub async fn owner_of(&self, client_id: &str) -> Result<Option<Holder>, String> {
        let entry = tokio::time::timeout(CLAIM_TIMEOUT, self.owners.entry(owner_key(client_id)))
            .await
            .map_err(|_| "NATS JetStream did not answer".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| serde_json::from_slice(&e.value).ok()))
    }

    /// The nodes heard from within [`NODE_TTL`] (this one always), by node id.
    pub fn nodes(&self) -> Vec<(NodeRecord, Duration)> {
        let mut nodes: Vec<(NodeRecord, Duration)> = lock(&self.seen)
            .values()
            .filter(|(record, at)| at.elapsed() < NODE_TTL && *record.node != *self.node)
            .map(|(record, at)| (record.clone(), at.elapsed()))
            .collect();
        nodes.push((
            NodeRecord {
                node: self.node.to_string(),
                started_at_ms: self.started_at_ms,
                clients: 0,
            },
            Duration::ZERO,
        ));
        nodes.sort_by(|a, b| a.0.node.cmp(&b.0.node));
        nodes
    }

    /// Spawns the control responder and the heartbeat for `broker`; both end when
    /// `shutdown` turns true.
    pub fn start(
        self: &Arc<Self>,
        broker: Arc<Broker>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let mut tasks = vec![
            tokio::spawn(control_loop(self.clone(), broker.clone(), shutdown.clone())),
            tokio::spawn(heartbeat_loop(
                self.clone(),
                broker.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(watch_nodes(self.clone(), shutdown.clone())),
        ];
        let owners = self.clone();
        let nodes: super::wills::NodeList = Arc::new(move || {
            owners
                .nodes()
                .into_iter()
                .map(|(record, age)| (record.node, age))
                .collect()
        });
        tasks.extend(self.wills.start(nodes, broker, shutdown));
        tasks
    }
}

/// Answers requests to let a client id go, each in a task of its own (one waits for its
/// connection to close).
async fn control_loop(
    owners: Arc<Owners>,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    use futures_util::StreamExt as _;
    let Some(mut requests) = lock(&owners.requests).take() else {
        return;
    };
    loop {
        let request = tokio::select! {
            r = requests.next() => match r { Some(r) => r, None => break },
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let Some(reply) = request.reply.clone() else {
            continue;
        };
        let Ok(leave) = serde_json::from_slice::<Leave>(&request.payload) else {
            continue;
        };
        let (owners, broker) = (owners.clone(), broker.clone());
        tokio::spawn(async move {
            let client_id: Arc<str> = Arc::from(leave.client_id.as_str());
            let this_run = leave.incarnation == owners.incarnation;
            let clean_start = leave.clean_start;
            let left = leave_here(&owners, &broker, leave).await;
            // A persistent session parked here (just now, or since its client went away)
            // moves with the client id (`sessions.rs`).
            let mut handed = None;
            if this_run {
                let max = owners.client.server_info().max_payload;
                let will;
                (handed, will) = super::sessions::take_for_handover(&broker, &client_id, max);
                // Its delayed will: the session ends with a clean start, else resumes.
                match will {
                    Some(will) if clean_start => owners.wills.fire(&client_id, will),
                    Some(_) => owners.wills.cancel(&client_id, None),
                    None => {}
                }
                // The new holder settles what is left of the will record after this
                // node fired or cancelled its own.
                owners.wills.barrier(&client_id).await;
            }
            let answer =
                handed.unwrap_or_else(|| Bytes::from_static(if left { b"1" } else { b"0" }));
            let _ = owners.client.publish(reply, answer).await;
        });
    }
}

/// Closes the connection of this node named by `leave`, if it still holds the client id;
/// true once it has (DISCONNECT 0x8E sent, session parked).
async fn leave_here(owners: &Owners, broker: &Broker, leave: Leave) -> bool {
    if leave.incarnation != owners.incarnation {
        return false;
    }
    let client_id: Arc<str> = Arc::from(leave.client_id);
    // Taken over: its release must not delete the new owner's key (it could not: the
    // revision moved on; this saves the round trip).
    let _ = owners.held.take(&client_id, leave.connection);
    let Some(done) = broker
        .registry
        .ask_to_leave_if(&client_id, leave.connection)
    else {
        return false;
    };
    tracing::info!(client_id = %client_id, "cluster: client id taken over by a connection on another node");
    Stats::add(&owners.stats.taken_over_remotely, 1);
    Stats::add(&broker.stats.sessions_taken_over, 1);
    tokio::time::timeout(LEAVE_TIMEOUT, done).await.is_ok()
}

/// Announces this node every [`HEARTBEAT`] and publishes the node list in `$SYS` when it
/// changes; deletes the announcement at shutdown so other nodes drop this one at once.
async fn heartbeat_loop(
    owners: Arc<Owners>,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    let mut published: Option<Vec<String>> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        let record = NodeRecord {
            node: owners.node.to_string(),
            started_at_ms: owners.started_at_ms,
            clients: broker.stats.snapshot().clients_connected,
        };
        let value = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        let put = owners.nodes.put(owners.node.to_string(), value);
        if let Ok(Err(e)) = tokio::time::timeout(HEARTBEAT, put).await {
            tracing::debug!(error = %e, "cluster: heartbeat not written");
        }
        if broker.config().sys.interval_secs == 0 {
            continue;
        }
        let list: Vec<String> = owners.nodes().into_iter().map(|(r, _)| r.node).collect();
        if published.as_ref() == Some(&list) {
            continue;
        }
        let now = now_millis();
        if published.is_none() {
            broker.publish(Message::internal(
                "$SYS/broker/cluster/node".to_owned(),
                Bytes::from(owners.node.to_string().into_bytes()),
                true,
                now,
            ));
        }
        let body = serde_json::to_vec(&list).unwrap_or_default();
        broker.publish(Message::internal(
            "$SYS/broker/cluster/nodes".to_owned(),
            Bytes::from(body),
            true,
            now,
        ));
        published = Some(list);
    }
    let delete = owners.nodes.delete(owners.node.to_string());
    let _ = tokio::time::timeout(Duration::from_secs(1), delete).await;
}

/// Keeps [`Owners::nodes`] from the announcements in [`NODES_BUCKET`], watching again
/// after the watch ends (NATS reconnecting).
async fn watch_nodes(owners: Arc<Owners>, mut shutdown: watch::Receiver<bool>) {
    use futures_util::StreamExt as _;
    loop {
        match owners.nodes.watch_all().await {
            Ok(mut entries) => loop {
                let entry = tokio::select! {
                    e = entries.next() => e,
                    _ = shutdown.wait_for(|s| *s) => return,
                };
                let Some(Ok(entry)) = entry else { break };
                let mut seen = lock(&owners.seen);
                match entry.operation {
                    kv::Operation::Put => {
                        if let Ok(record) = serde_json::from_slice::<NodeRecord>(&entry.value) {
                            seen.insert(entry.key, (record, Instant::now()));
                        }
                    }
                    kv::Operation::Delete | kv::Operation::Purge => {
                        seen.remove(&entry.key);
                    }
                }
            },
            Err(e) => tracing::debug!(error = %e, "cluster: node list watch failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// The [`Ownership`] of a cluster node: local takeover as on a single node, plus the
/// cluster-wide claim and release through [`Owners`].
#[derive(Debug, Clone)]
pub struct ClusterOwnership(pub Arc<Owners>);

impl Ownership for ClusterOwnership {
    fn ask_to_leave(&self, _client_id: &Arc<str>, mailbox: &Mailbox) -> oneshot::Receiver<()> {
        let (reply, done) = oneshot::channel();
        mailbox.send_control(Control::TakeOver(reply));
        done
    }

    fn unanswered(&self, mailbox: &Mailbox) -> Option<oneshot::Sender<()>> {
        match mailbox.take_control() {
            Some(Control::TakeOver(reply)) => Some(reply),
            _ => None,
        }
    }

    fn claim(&self, client_id: &Arc<str>, connection_id: u64, clean_start: bool) -> Option<Claim> {
        Some(Box::pin(self.0.clone().claim(
            client_id.clone(),
            connection_id,
            clean_start,
        )))
    }

    fn release(&self, client_id: &Arc<str>, connection_id: u64) {
        self.0.release(client_id, connection_id);
    }

    fn session_record(&self, state: &crate::session::SessionState) -> Option<Bytes> {
        super::sessions::record(state)
    }

    fn parked(&self, client_id: &Arc<str>, record: Bytes, expires_at: Option<u64>) {
        self.0.record_session(client_id, record, expires_at);
    }

    fn connected(&self, client_id: &Arc<str>, record: Option<Bytes>) {
        match record {
            // No deadline while connected: the session's expiry starts when it ends.
            Some(record) => self.0.record_session(client_id, record, None),
            None => self.0.forget_session(&owner_key(client_id)),
        }
    }

    fn will_accepted(
        &self,
        client_id: &Arc<str>,
        connection_id: u64,
        will: Option<&midge_proto::Will>,
        delay: u32,
        expiry: u32,
    ) {
        self.0
            .wills
            .accepted(client_id, connection_id, will, delay, expiry);
    }

    fn will_due(&self, client_id: &Arc<str>, will: midge_proto::Will) -> Option<midge_proto::Will> {
        self.0.wills.fire(client_id, will);
        None
    }

    fn will_cancelled(&self, client_id: &Arc<str>, connection_id: Option<u64>) {
        self.0.wills.cancel(client_id, connection_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_plain_bytes_and_escape_the_rest() {
        assert_eq!(owner_key("sensor-1_a"), "sensor-1_a");
        assert_eq!(owner_key(""), "=");
        assert_eq!(owner_key("a.b"), "a=2Eb");
        assert_eq!(owner_key("a/b c"), "a=2Fb=20c");
        assert_eq!(owner_key("="), "=3D");
        assert_eq!(owner_key("*>"), "=2A=3E");
        assert_eq!(owner_key("é"), "=C3=A9");
    }

    /// KV keys: `[-/_=.A-Za-z0-9]`, not starting or ending with `.` (async-nats checks
    /// the same); distinct ids give distinct keys.
    #[test]
    fn keys_are_valid_and_distinct() {
        let ids = [
            "", "=", "==", "=3D", ".", "..", "a.", ".a", "a b", "a=20b", "x", "X", "\u{0}", "日本",
            "$SYS", "+", "#",
        ];
        let mut keys = std::collections::HashSet::new();
        for id in ids {
            let key = owner_key(id);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b)),
                "{id:?} -> {key}"
            );
            assert!(!key.starts_with('.') && !key.ends_with('.'), "{key}");
            assert!(!key.contains('.'), "one token: {key}");
            assert!(keys.insert(key), "{id:?} collides");
        }
    }

    #[test]
    fn long_ids_are_hashed_within_the_limit() {
        let long = "/".repeat(400);
        let key = owner_key(&long);
        assert!(key.starts_with("=H") && key.len() == 2 + 64, "{key}");
        assert_ne!(owner_key(&"/".repeat(401)), key);
        // Just under the limit stays readable.
        let fits = "a".repeat(crate::cluster::keys::MAX_KEY_LEN);
        assert_eq!(owner_key(&fits), fits);
    }

    /// Many connections of one node claiming and releasing one id at once: the newest
    /// claim stays recorded, and only its connection's release takes it, once.
    #[test]
    fn held_claims_from_many_threads_keep_the_newest() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let held = Arc::new(Held::default());
        let id: Arc<str> = "c".into();
        for round in 0..50u64 {
            // Revisions given out in the reverse of the threads' start order, recorded at
            // once: the KV's order need not be the order the answers are handled in.
            let barrier = Arc::new(std::sync::Barrier::new(8));
            let threads: Vec<_> = (0..8u64)
                .map(|t| {
                    let (held, barrier, id) = (held.clone(), barrier.clone(), id.clone());
                    std::thread::spawn(move || {
                        let connection = round * 8 + t;
                        let revision = round * 8 + (8 - t);
                        barrier.wait();
                        held.record(&id, connection, revision);
                        (connection, revision)
                    })
                })
                .collect();
            let claims: Vec<(u64, u64)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let newest = *claims.iter().max_by_key(|(_, r)| *r).unwrap();
            let taken = Arc::new(AtomicUsize::new(0));
            let releases: Vec<_> = claims
                .iter()
                .map(|&(connection, _)| {
                    let (held, id, taken) = (held.clone(), id.clone(), taken.clone());
                    std::thread::spawn(move || {
                        if let Some(revision) = held.take(&id, connection) {
                            taken.fetch_add(1, Ordering::SeqCst);
                            assert_eq!(revision, newest.1);
                            assert_eq!(connection, newest.0);
                        }
                    })
                })
                .collect();
            for r in releases {
                r.join().unwrap();
            }
            assert_eq!(taken.load(Ordering::SeqCst), 1, "round {round}");
            assert!(held.take(&id, newest.0).is_none());
        }
    }

    #[test]
    fn holder_and_leave_round_trip() {
        let holder = Holder {
            node: "node-1".into(),
            incarnation: 42,
            connection: 7,
        };
        let bytes = serde_json::to_vec(&holder).unwrap();
        assert_eq!(serde_json::from_slice::<Holder>(&bytes).unwrap(), holder);
        assert_eq!(control_subject("node-1"), "mq.c.node-1.leave");
    }
}
