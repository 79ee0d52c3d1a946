//! `[cluster]`: several midge nodes serving as one broker, with NATS as the fabric.
//!
//! Stage 1 carries live messages. [`ClusterRouting`] wraps the node's [`Router`] behind
//! the [`Routing`] seam:
//! - subscribing and unsubscribing also keep this node's NATS subscriptions, one per
//!   subject its filters need, counted, so NATS sends the node only what some local
//!   subscription wants (NATS propagates that interest through its own cluster);
//! - a message routed here goes to the local subscribers, and is queued (never awaited)
//!   for the publisher task, which publishes it once to NATS on the node's one connection,
//!   in order;
//! - a message from NATS is routed to the local subscribers only;
//! - shared subscriptions are served cluster-wide through NATS queue groups, on a second
//!   connection ([`shared`]).
//!
//! Tasks (spawned by [`Cluster::start`]): the fabric ([`fabric`]: the node's own NATS
//! connection, which publishes what is forwarded and keeps the subscriptions), and the
//! receiver, which decodes, drops duplicates (a message matching two of the node's
//! subjects arrives once per subject) and routes. None of them holds a lock across an
//! await; the router's lock is taken only inside `Router` calls, and no NATS call is made
//! under it.

pub mod envelope;
pub mod fabric;
pub mod keys;
pub mod ownership;
pub mod retained;
pub mod sessions;
pub mod shared;
pub mod subject;
pub mod wills;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use midge_proto::SubscriptionOptions;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::config::{ClusterConfig, ShareStrategyConfig};
use crate::mailbox::Mailbox;
use crate::model::{Delivery, Message, QueueLimits, now_millis};
use crate::router::{Reach, RouteOutcome, Router, Routing, SubscriptionSummary};
use crate::stats::Stats;
use envelope::Origin;

/// Longest subject published or subscribed to. nats-server closes a connection whose
/// control line (`PUB <subject> <size>`) exceeds `max_control_line`, 4 KiB by default;
/// topics and filters whose subject is longer stay on their node (counted, logged).
pub const MAX_SUBJECT_LEN: usize = 4000;

/// How many sequence numbers back per origin node duplicates are recognised. Copies of
/// one message (one per matching subject of this node) arrive close together; one older
/// than this is dropped as a duplicate.
const DEDUP_WINDOW: u64 = 1 << 16;

/// Messages received from NATS waiting to be routed here.
const INBOUND_QUEUE: usize = 8192;

/// Counters of the cluster fabric on this node.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Messages published to NATS.
    pub forwarded: AtomicU64,
    /// Messages not published to NATS: the forward queue was full, the subject too long or
    /// the payload above NATS's maximum.
    pub forward_dropped: AtomicU64,
    /// Messages received from NATS and routed here.
    pub received: AtomicU64,
    /// Copies received for more than one matching subject, dropped.
    pub duplicates: AtomicU64,
    /// Messages from NATS that did not decode, dropped.
    pub invalid: AtomicU64,
    /// NATS subjects this node is subscribed to.
    pub subjects: AtomicU64,
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `cluster.creds_file` could not be read.
    #[error("cluster.creds_file {path}: {source}")]
    Credentials {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// `cluster.tls_ca_file` could not be read. Checked before connecting: retrying
    /// would not make it appear.
    #[error("cluster.tls_ca_file {path}: {source}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

pub(crate) enum Interest {
    Add(String),
    Remove(String),
}

/// A connection to NATS, made before the node serves anyone; [`Cluster::routing`] and
/// [`Cluster::start`] turn it into the broker's router and tasks.
#[derive(Debug)]
pub struct Cluster {
    fabric: fabric::Connection,
    settings: fabric::Settings,
    node: Arc<str>,
    incarnation: u64,
    local: Arc<Router>,
    stats: Arc<ClusterStats>,
    forward_tx: mpsc::Sender<Arc<Message>>,
    forward_rx: mpsc::Receiver<Arc<Message>>,
    interest_tx: mpsc::UnboundedSender<Interest>,
    interest_rx: mpsc::UnboundedReceiver<Interest>,
    shared: shared::Shared,
    /// Client-id ownership and the node list ([`ownership`]).
    owners: Arc<ownership::Owners>,
}

/// How long one attempt at opening the JetStream KV buckets may take before it is given
/// up and made again. A stream another node is creating at the same moment has no leader
/// yet, and a request about it gets no answer at all: it would wait out the client's whole
/// request timeout (10 s). Measured: about every second start of three nodes at once on a
/// fresh three-server cluster hit this; a new attempt a moment later is answered.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);

async fn options(config: &ClusterConfig) -> Result<async_nats::ConnectOptions, ClusterError> {
    let node = config.node_id.clone();
    let mut options = match &config.creds_file {
        Some(path) => async_nats::ConnectOptions::new()
            .credentials_file(path)
            .await
            .map_err(|source| ClusterError::Credentials {
                path: path.display().to_string(),
                source,
            })?,
        None => async_nats::ConnectOptions::new(),
    };
    options = options
        .name(format!("midge {node}"))
        // The first server listed is the node's own (a sidecar, or the nearest); the
        // others are for failover.
        .retain_servers_order()
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None::<usize>)
        .event_callback(move |event| {
            let node = node.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!(node_id = %node, "cluster: connected to NATS")
                    }
                    async_nats::Event::Disconnected => tracing::warn!(
                        node_id = %node,
                        "cluster: disconnected from NATS; reconnecting (messages to and from other nodes wait or are lost meanwhile)"
                    ),
                    other => tracing::warn!(node_id = %node, "cluster: NATS: {other}"),
                }
            }
        });
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &config.tls_ca_file {
        std::fs::File::open(ca).map_err(|source| ClusterError::CaFile {
            path: ca.display().to_string(),
            source,
        })?;
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if config.tls_required {
        options = options.require_tls(true);
    }
    Ok(options)
}

impl Cluster {
    /// Connects to NATS, retrying with backoff (100 ms doubling to 5 s) and logging each
    /// failure, until it succeeds (dropping the future stops it). The node opens no
    /// listener before this returns, so it never serves as if it were alone.
    /// `strategy` picks shared-group members in the local router.
    pub async fn connect(
        config: &ClusterConfig,
        strategy: ShareStrategyConfig,
    ) -> Result<Self, ClusterError> {
        let settings = fabric::Settings::new(config)?;
        let mut delay = Duration::from_millis(100);
        let connection = loop {
            match fabric::connect(&settings, &[]).await {
                Ok(connection) => break connection,
                Err(e) => {
                    tracing::warn!(
                        node_id = %config.node_id,
                        urls = ?config.nats_urls,
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "cluster: cannot reach NATS; MQTT listeners stay closed until it is reachable"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        tracing::info!(
            node_id = %config.node_id,
            server = %connection.server_name(),
            "cluster: joined through NATS"
        );
        let shared = shared::Shared::connect(config).await?;
        let (forward_tx, forward_rx) = mpsc::channel(config.forward_queue);
        let (interest_tx, interest_rx) = mpsc::unbounded_channel();
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let owners = ownership::Owners::connect(config, incarnation).await?;
        Ok(Self {
            fabric: connection,
            settings,
            node: Arc::from(config.node_id.as_str()),
            incarnation,
            local: Arc::new(Router::new(strategy)),
            stats: Arc::default(),
            forward_tx,
            forward_rx,
            interest_tx,
            interest_rx,
            shared,
            owners,
        })
    }

    /// The broker's client-id ownership: cluster-wide ([`ownership`]).
    pub fn ownership(&self) -> Box<dyn crate::registry::Ownership> {
        Box::new(ownership::ClusterOwnership(self.owners.clone()))
    }

    /// Ownership and the node list, for the admin API.
    pub fn owners(&self) -> Arc<ownership::Owners> {
        self.owners.clone()
    }

    /// The broker's router: the local one wrapped in [`ClusterRouting`].
    pub fn routing(&self) -> Box<dyn Routing> {
        Box::new(ClusterRouting {
            local: self.local.clone(),
            forward: self.forward_tx.clone(),
            interest: self.interest_tx.clone(),
            stats: self.stats.clone(),
            shared: self.shared.handle(),
        })
    }

    /// Spawns the publisher, interest and receiver tasks for `broker` (built with
    /// [`Cluster::routing`]); they end when `shutdown` turns true.
    pub fn start(
        self,
        broker: Arc<Broker>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let origin = Origin {
            node: self.node.to_string(),
            incarnation: self.incarnation,
            seq: 0,
        };
        let mut tasks = self.owners.start(broker.clone(), shutdown.clone());
        tasks.extend(self.shared.start(
            &self.node,
            self.incarnation,
            self.local.clone(),
            broker.clone(),
            shutdown.clone(),
        ));
        tasks.extend([
            tokio::spawn(fabric::run(
                self.fabric,
                self.settings,
                fabric::Parts {
                    forward: self.forward_rx,
                    interest: self.interest_rx,
                    inbound: inbound_tx,
                    origin,
                    stats: self.stats.clone(),
                    broker: broker.clone(),
                    shutdown: shutdown.clone(),
                },
            )),
            tokio::spawn(receive_loop(
                self.node,
                self.incarnation,
                self.local,
                inbound_rx,
                self.stats,
                broker,
                shutdown,
            )),
        ]);
        tasks
    }
}

/// Whether a warning about dropped messages is logged now: at most one every 10 s (the
/// drops are counted).
fn should_log(last: &mut Option<std::time::Instant>) -> bool {
    let now = std::time::Instant::now();
    if last.is_some_and(|at| now.duration_since(at) < Duration::from_secs(10)) {
        return false;
    }
    *last = Some(now);
    true
}

/// Which sequence numbers of one origin were seen recently.
struct Window {
    incarnation: u64,
    highest: u64,
    seen: Vec<u64>,
}

impl Window {
    fn new(incarnation: u64) -> Self {
        Self {
            incarnation,
            highest: 0,
            seen: vec![0; (DEDUP_WINDOW / 64) as usize],
        }
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % DEDUP_WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    /// Marks `seq` seen; true if it was new.
    fn first_time(&mut self, seq: u64) -> bool {
        if seq > self.highest {
            if seq - self.highest >= DEDUP_WINDOW {
                self.seen.fill(0);
            } else {
                for s in self.highest + 1..seq {
                    let (word, mask) = Self::bit(s);
                    self.seen[word] &= !mask;
                }
            }
            self.highest = seq;
            let (word, mask) = Self::bit(seq);
            self.seen[word] |= mask;
            return true;
        }
        if self.highest - seq >= DEDUP_WINDOW {
            return false;
        }
        let (word, mask) = Self::bit(seq);
        let new = self.seen[word] & mask == 0;
        self.seen[word] |= mask;
        new
    }
}

/// Origins remembered for duplicate suppression; past it the table starts again (a burst
/// of duplicates at worst, dropped as such being impossible once forgotten).
const MAX_ORIGINS: usize = 1024;

/// Routes messages from other nodes to this node's subscribers.
async fn receive_loop(
    node: Arc<str>,
    incarnation: u64,
    local: Arc<Router>,
    mut inbound: mpsc::Receiver<fabric::Inbound>,
    stats: Arc<ClusterStats>,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut windows: HashMap<String, Window> = HashMap::new();
    let limits = broker.queue_limits();
    let mut last_warning = None;
    loop {
        let message = tokio::select! {
            m = inbound.recv() => match m { Some(m) => m, None => break },
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let now = now_millis();
        let decoded = subject::subject_to_topic(&message.subject)
            .map_err(|e| e.to_string())
            .and_then(|topic| {
                envelope::decode(topic, message.payload, now).map_err(|e| e.to_string())
            });
        let (origin, message) = match decoded {
            Ok(decoded) => decoded,
            Err(e) => {
                Stats::add(&stats.invalid, 1);
                if should_log(&mut last_warning) {
                    tracing::warn!(subject = %message.subject, "cluster: dropped a message from NATS: {e}");
                }
                continue;
            }
        };
        if *origin.node == *node {
            // Never echoed (no_echo): another process runs with this node_id.
            Stats::add(&stats.invalid, 1);
            if origin.incarnation != incarnation && should_log(&mut last_warning) {
                tracing::error!(node_id = %node, "cluster: another node uses this node_id; its messages are dropped here");
            }
            continue;
        }
        if windows.len() >= MAX_ORIGINS && !windows.contains_key(&origin.node) {
            windows.clear();
        }
        let window = match windows.get_mut(&origin.node) {
            Some(w) => w,
            None => windows
                .entry(origin.node.clone())
                .or_insert_with(|| Window::new(origin.incarnation)),
        };
        if window.incarnation != origin.incarnation {
            *window = Window::new(origin.incarnation);
        }
        if !window.first_time(origin.seq) {
            Stats::add(&stats.duplicates, 1);
            continue;
        }
        Stats::add(&stats.received, 1);
        if message.expires_at.is_some_and(|at| at <= now) {
            continue;
        }
        // Shared groups get their copies through their queue subscriptions.
        let outcome = local.route_to(&Arc::new(message), &limits, Reach::Plain);
        Stats::add(&broker.stats.publish_dropped, outcome.dropped as u64);
    }
}

/// The [`Routing`] of a cluster node: the local router, plus NATS interest and
/// forwarding (see the module documentation).
#[derive(Debug)]
pub struct ClusterRouting {
    local: Arc<Router>,
    forward: mpsc::Sender<Arc<Message>>,
    interest: mpsc::UnboundedSender<Interest>,
    stats: Arc<ClusterStats>,
    shared: shared::SharedHandle,
}

impl std::fmt::Debug for Interest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Add(s) => write!(f, "+{s}"),
            Self::Remove(s) => write!(f, "-{s}"),
        }
    }
}

impl ClusterRouting {
    fn interest(&self, filter: &str, add: bool) {
        if filter.starts_with("$share/") {
            self.shared.member(filter, add);
            return;
        }
        for subject in subject::filter_to_subjects(filter) {
            let change = if add {
                Interest::Add(subject)
            } else {
                Interest::Remove(subject)
            };
            // Fails only once the interest task ended, at shutdown.
            let _ = self.interest.send(change);
        }
    }
}

impl Routing for ClusterRouting {
    fn subscribe(
        &self,
        mailbox: &Arc<Mailbox>,
        filter: &str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) -> bool {
        let existed = self.local.subscribe(mailbox, filter, options, identifier);
        if !existed {
            self.interest(filter, true);
        }
        existed
    }

    fn unsubscribe(&self, filter: &str, client_id: &str) -> bool {
        let existed = self.local.unsubscribe(filter, client_id);
        if existed {
            self.interest(filter, false);
        }
        existed
    }

    fn unsubscribe_mailbox(&self, filter: &str, mailbox: &Arc<Mailbox>) -> bool {
        let existed = self.local.unsubscribe_mailbox(filter, mailbox);
        if existed {
            self.interest(filter, false);
        }
        existed
    }

    fn route(&self, message: &Arc<Message>, limits: &QueueLimits) -> RouteOutcome {
        if subject::is_node_local(&message.topic) {
            return self.local.route(message, limits);
        }
        // Shared groups get theirs through NATS, this node's members too (see `shared`).
        let mut outcome = self.local.route_to(message, limits, Reach::Plain);
        let queued = self.forward.try_send(message.clone()).is_ok();
        if !queued {
            Stats::add(&self.stats.forward_dropped, 1);
            outcome.dropped += 1;
        }
        if !queued || !shared::travels(&message.topic) {
            // NATS will not carry it: this node's shared members take it.
            let here = self.local.route_to(message, limits, Reach::Shared);
            outcome.delivered += here.delivered;
            outcome.dropped += here.dropped;
        }
        outcome
    }

    fn hand_over_all(
        &self,
        deliveries: &[Delivery],
        leaving: &str,
        limits: &QueueLimits,
    ) -> Vec<bool> {
        let mut taken = self.local.hand_over_all(deliveries, leaving, limits);
        self.shared.hand_over(deliveries, &mut taken);
        taken
    }

    fn compact(&self) -> usize {
        self.local.compact()
    }

    fn len(&self) -> usize {
        self.local.len()
    }

    fn subscriptions_page(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
        keep: &mut dyn FnMut(&str, &str) -> bool,
    ) -> Vec<SubscriptionSummary> {
        self.local.subscriptions_page(after, limit, keep)
    }
}

#[cfg(test)]
mod tests;
