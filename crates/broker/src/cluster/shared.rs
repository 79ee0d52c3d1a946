//! Shared subscriptions cluster-wide: each message reaches one member of a
//! `$share/{group}/{filter}` among all nodes, not one per node with members.
//!
//! NATS picks the node. A node with members of a group holds, on a second NATS connection
//! of its own, one *queue* subscription per subject of the group's filter, all in one
//! queue group named after the group and filter ([`queue_name`]). NATS gives each message
//! to one subscription per queue group, across subjects, so a `#` filter's two subjects
//! still yield one copy (and they are disjoint anyway: `a` matches only `mq.m.a`, `a/b`
//! only `mq.m.a.>`). No duplicate suppression is needed on this path, and none is done:
//! the same (origin, sequence) legitimately arrives once per group.
//!
//! - **The publishing node's own members** are reached through NATS like the others: a
//!   node routes its messages to its plain subscriptions and publishes them once; the
//!   publish also reaches the queue groups, including this node's, because the queue
//!   subscriptions live on the second connection (the first one is `no_echo`). So a
//!   message never reaches both a local member directly and another node's member, and
//!   the publisher's node is one candidate among the others. Messages NATS does not carry
//!   (`$SYS`, a subject too long, the forward queue full) go to the local members directly.
//! - **Among a node's members** the configured `shared_subscription_strategy` picks
//!   ([`Router::deliver_shared`]), preferring connected members, as on one node; QoS is
//!   downgraded per member's subscription.
//! - **A member leaving** hands its queued messages to another member of the node first,
//!   as on one node; what no local member takes is handed to another node: a NATS request
//!   to the group's hand-over subject ([`handover_subject`], in the same queue group),
//!   answered by the node that queued it. The leaving node's second connection is also
//!   `no_echo`, so the request never comes back to it ([`connect_options`]). A message
//!   NATS gave a node whose last member left a moment before is handed over the same way,
//!   once: the node's subscriptions linger until what was on its way has come ([`pump`]). A
//!   hand-over no node takes (no member left in the cluster) is counted as dropped.
//!
//! NATS picks among nodes, not members: a node with one member gets as many messages as a
//! node with ten. Where nodes sit on different NATS servers, NATS prefers queue
//! subscribers on the publisher's own server, so a group's members near the publisher
//! get its messages while there are any.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use sha2::Digest as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::envelope::{self, Origin};
use super::{ClusterError, MAX_SUBJECT_LEN, subject};
use crate::broker::Broker;
use crate::config::ClusterConfig;
use crate::model::{Delivery, Message, now_millis};
use crate::router::Router;
use crate::stats::Stats;

/// Prefix of the hand-over subjects, one per group and filter.
pub const HANDOVER_PREFIX: &str = "mq.s";

/// Messages received for shared groups waiting to be delivered here.
const INBOUND_QUEUE: usize = 8192;

/// How long a hand-over waits for another node to answer.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// Messages a group's subscription still takes after its node's last member left, to be
/// handed over (see [`pump`]): more than NATS can have on its way to the node when the
/// node asks to leave.
const LINGER_MESSAGES: u64 = 65_536;

/// A subscription left lingering is dropped once no message came for this long.
const LINGER_IDLE: Duration = Duration::from_secs(1);

/// The task pumping one queue subscription, and how to tell it its node's last member
/// left (none for the hand-over subject, which is dropped at once).
type Pump = (JoinHandle<()>, Option<oneshot::Sender<()>>);

/// Counters of shared subscriptions on this node.
#[derive(Debug, Default)]
pub struct SharedStats {
    /// Messages NATS gave this node for one of its groups, queued for a member.
    pub delivered: AtomicU64,
    /// Messages handed to another node (a member left and no local member remained).
    pub handed_over: AtomicU64,
    /// Hand-overs no node took, dropped.
    pub handover_lost: AtomicU64,
    /// Messages for shared groups that did not decode, dropped.
    pub invalid: AtomicU64,
}

/// The NATS queue group of a shared subscription (`$share/{group}/{filter}`): a hash, so
/// any group name and filter fit NATS's token rules and control-line limit. 128 bits of
/// SHA-256, stable across builds: every node must compute the same name.
pub fn queue_name(full_filter: &str) -> String {
    let digest = sha2::Sha256::digest(full_filter.as_bytes());
    let mut name = String::with_capacity(33);
    name.push('g');
    for b in &digest[..16] {
        name.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        name.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    name
}

/// The subject messages of a shared subscription are handed over on.
pub fn handover_subject(full_filter: &str) -> String {
    format!("{HANDOVER_PREFIX}.{}", queue_name(full_filter))
}

/// Whether `topic`'s subject fits [`MAX_SUBJECT_LEN`] (what the publisher task forwards),
/// without building it.
pub fn travels(topic: &str) -> bool {
    // Each byte becomes at most three (`=XX`), and each of the at most `len + 1` levels
    // adds a `.`.
    if subject::PLAIN_PREFIX.len() + 4 * topic.len() < MAX_SUBJECT_LEN {
        return true;
    }
    let len: usize = topic
        .split('/')
        .map(|level| {
            1 + if level.is_empty() {
                1
            } else {
                level
                    .bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                            1
                        } else {
                            3
                        }
                    })
                    .sum()
            }
        })
        .sum();
    subject::PLAIN_PREFIX.len() + len <= MAX_SUBJECT_LEN
}

enum Command {
    /// A local member joined the group (`$share/{group}/{filter}`).
    Join(Arc<str>),
    /// A local member left it.
    Leave(Arc<str>),
    /// Messages of these groups for another node's members.
    HandOver(Vec<(Arc<str>, Arc<Message>)>),
}

/// What [`super::ClusterRouting`] tells the shared-subscription tasks.
#[derive(Debug, Clone)]
pub struct SharedHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Join(g) => write!(f, "+{g}"),
            Self::Leave(g) => write!(f, "-{g}"),
            Self::HandOver(m) => write!(f, "hand over {}", m.len()),
        }
    }
}

impl SharedHandle {
    /// A member of `full_filter` was added (`true`) or removed here. Shared filters that
    /// never leave the node (`$SYS`) are served locally, as on one node.
    pub fn member(&self, full_filter: &str, joined: bool) {
        let full: Arc<str> = Arc::from(full_filter);
        // Fails only once the task ended, at shutdown.
        let _ = self.commands.send(if joined {
            Command::Join(full)
        } else {
            Command::Leave(full)
        });
    }

    /// Hands what no local member took (`taken[i]` false) to another node's member,
    /// marking it taken: the leaver then forgets it. Not for `$SYS` groups.
    pub fn hand_over(&self, deliveries: &[Delivery], taken: &mut [bool]) {
        let batch: Vec<(Arc<str>, Arc<Message>)> = deliveries
            .iter()
            .zip(taken.iter_mut())
            .filter(|(d, taken)| !**taken && !subject::is_node_local(&d.message.topic))
            .filter_map(|(d, taken)| {
                let group = d.shared.clone()?;
                *taken = true;
                Some((group, d.message.clone()))
            })
            .collect();
        if !batch.is_empty() {
            let _ = self.commands.send(Command::HandOver(batch));
        }
    }

    #[cfg(test)]
    pub(super) fn for_tests() -> (Self, mpsc::UnboundedReceiver<impl std::fmt::Debug>) {
        let (commands, rx) = mpsc::unbounded_channel();
        (Self { commands }, rx)
    }
}

/// The node's second NATS connection, for its queue subscriptions; see the module
/// documentation.
#[derive(Debug)]
pub struct Shared {
    client: async_nats::Client,
    handle: SharedHandle,
    commands: mpsc::UnboundedReceiver<Command>,
    stats: Arc<SharedStats>,
}

impl Shared {
    /// Connects the second connection, retrying like the first (which succeeded a moment
    /// ago, so this rarely waits).
    pub async fn connect(config: &ClusterConfig) -> Result<Self, ClusterError> {
        let mut delay = Duration::from_millis(100);
        let client = loop {
            match connect_options(config)
                .await?
                .connect(&config.nats_urls[..])
                .await
            {
                Ok(client) => break client,
                Err(e) => {
                    tracing::warn!(node_id = %config.node_id, error = %e, retry_in_ms = delay.as_millis() as u64, "cluster: cannot open the shared-subscription connection to NATS");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        let (commands_tx, commands) = mpsc::unbounded_channel();
        Ok(Self {
            client,
            handle: SharedHandle {
                commands: commands_tx,
            },
            commands,
            stats: Arc::default(),
        })
    }

    /// What [`super::ClusterRouting`] holds.
    pub fn handle(&self) -> SharedHandle {
        self.handle.clone()
    }

    /// Spawns the subscription keeper and the deliverer; they end when `shutdown` turns
    /// true.
    pub fn start(
        self,
        node: &str,
        incarnation: u64,
        local: Arc<Router>,
        broker: Arc<Broker>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let origin = Origin {
            node: node.to_owned(),
            incarnation,
            seq: 0,
        };
        vec![
            tokio::spawn(keep_loop(
                self.client.clone(),
                self.commands,
                inbound_tx,
                origin,
                self.stats.clone(),
                broker.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(deliver_loop(
                self.client,
                self.handle,
                local,
                inbound_rx,
                self.stats,
                broker,
                shutdown,
            )),
        ]
    }
}

/// The second connection's options. `no_echo`, like the first connection: a hand-over
/// request must never come back to this node. Its hand-over subscription is still in
/// the queue group when its last member's messages are handed over (the unsubscribe
/// reaches NATS after the first requests), and with echo NATS gave this node about
/// every other first request, which no member here answered: lost.
async fn connect_options(
    config: &ClusterConfig,
) -> Result<async_nats::ConnectOptions, ClusterError> {
    Ok(super::options(config)
        .await?
        .no_echo()
        .name(format!("midge {} shared", config.node_id)))
}

/// A message for a group, with the group's full filter.
type Inbound = (Arc<str>, async_nats::Message);

/// Keeps the queue subscriptions of the groups with members here, and sends hand-overs.
async fn keep_loop(
    client: async_nats::Client,
    mut commands: mpsc::UnboundedReceiver<Command>,
    inbound: mpsc::Sender<Inbound>,
    origin: Origin,
    stats: Arc<SharedStats>,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Members per group, and the tasks pumping its subscriptions while it has any. As
    // for plain interest, a count may pass below zero for a moment.
    let mut groups: HashMap<Arc<str>, (i64, Vec<Pump>)> = HashMap::new();
    // Subscriptions of groups whose last member here left, still handing over.
    let mut lingering: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let command = tokio::select! {
            c = commands.recv() => match c { Some(c) => c, None => break },
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (full, delta) = match command {
            Command::Join(full) => (full, 1),
            Command::Leave(full) => (full, -1),
            Command::HandOver(batch) => {
                let (client, origin, stats, broker) = (
                    client.clone(),
                    origin.clone(),
                    stats.clone(),
                    broker.clone(),
                );
                // Requests wait for answers: off this loop, which keeps subscriptions.
                tokio::spawn(async move {
                    for (group, message) in batch {
                        hand_over(&client, &origin, &group, &message, &stats, &broker).await;
                    }
                });
                continue;
            }
        };
        let entry = groups.entry(full.clone()).or_insert((0, Vec::new()));
        entry.0 += delta;
        if entry.0 > 0 && entry.1.is_empty() {
            entry.1 = subscribe(&client, &full, &inbound).await;
        } else if entry.0 <= 0 {
            lingering.retain(|task| !task.is_finished());
            for (task, leave) in entry.1.drain(..) {
                match leave.map(|leave| leave.send(())) {
                    Some(Ok(())) => lingering.push(task),
                    // The hand-over subject: dropping the subscriber (with its task)
                    // unsubscribes; a request still on its way finds another node.
                    _ => task.abort(),
                }
            }
            if entry.0 == 0 {
                groups.remove(&full);
            }
        }
    }
    for (_, (_, pumps)) in groups {
        for (task, _) in pumps {
            task.abort();
        }
    }
    for task in lingering {
        task.abort();
    }
}

/// Subscribes to the subjects of `full`'s filter and its hand-over subject, in its queue
/// group; returns the tasks pumping them.
async fn subscribe(
    client: &async_nats::Client,
    full: &Arc<str>,
    inbound: &mpsc::Sender<Inbound>,
) -> Vec<Pump> {
    let filter = match midge_proto::topic::parse_shared(full) {
        Ok(Some(shared)) => shared.filter,
        _ => return Vec::new(),
    };
    let mut subjects = subject::filter_to_subjects(filter);
    if subjects.is_empty() {
        // `$SYS`: served on the node.
        return Vec::new();
    }
    if subjects.iter().any(|s| s.len() > MAX_SUBJECT_LEN) {
        tracing::warn!(filter = %full, "cluster: a shared filter too long for a NATS subject receives only messages whose topic is too long to cross nodes");
        return Vec::new();
    }
    let handover = handover_subject(full);
    subjects.push(handover.clone());
    let queue = queue_name(full);
    let mut tasks = Vec::new();
    for subject in subjects {
        let (leave, left) = if subject == handover {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        match client.queue_subscribe(subject.clone(), queue.clone()).await {
            Ok(subscriber) => tasks.push((
                tokio::spawn(pump(subscriber, full.clone(), inbound.clone(), left)),
                leave,
            )),
            Err(e) => {
                tracing::warn!(%subject, error = %e, "cluster: NATS queue subscription failed")
            }
        }
    }
    tasks
}

/// Moves one queue subscription's messages to the deliverer, tagged with their group.
///
/// When `left` fires (the node's last member of the group left), the subscription is not
/// dropped: NATS may already have sent this node messages of the group, and the NATS
/// client discards what arrives for a subscription it dropped, before the server has even
/// seen the unsubscribe (measured: a few, at times dozens of a burst lost). Instead the
/// server is told to unsubscribe after [`LINGER_MESSAGES`] more than this task has
/// received, which the client also waits for, so whatever was on its way still arrives
/// and is handed over to another node (the deliverer finds no member here). Once the
/// server stops, or no message came for [`LINGER_IDLE`], the task ends.
async fn pump(
    mut subscriber: async_nats::Subscriber,
    group: Arc<str>,
    inbound: mpsc::Sender<Inbound>,
    mut left: Option<oneshot::Receiver<()>>,
) {
    use futures_util::StreamExt as _;
    enum Step {
        Message(Option<async_nats::Message>),
        Leave,
    }
    let mut received = 0u64;
    let mut lingering = false;
    loop {
        let step = if let Some(leave) = left.as_mut() {
            tokio::select! {
                next = subscriber.next() => Step::Message(next),
                // Sent, or the sender gone: either way the group has no member here.
                _ = leave => Step::Leave,
            }
        } else if lingering {
            match tokio::time::timeout(LINGER_IDLE, subscriber.next()).await {
                Ok(next) => Step::Message(next),
                // Idle: nothing is on its way any more.
                Err(_) => break,
            }
        } else {
            Step::Message(subscriber.next().await)
        };
        match step {
            Step::Leave => {
                left = None;
                lingering = true;
                if subscriber
                    .unsubscribe_after(received + LINGER_MESSAGES)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Step::Message(None) => break,
            Step::Message(Some(message)) => {
                received += 1;
                if inbound.send((group.clone(), message)).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// The hand-over payload: the topic (u16 length, bytes) then the envelope.
fn handover_payload(origin: &Origin, message: &Message, remaining: Option<u64>) -> Bytes {
    let envelope = envelope::encode(origin, message, remaining);
    let mut out = BytesMut::with_capacity(2 + message.topic.len() + envelope.len());
    // Topics are at most 65535 bytes (MQTT's string length).
    out.put_u16(message.topic.len() as u16);
    out.put_slice(message.topic.as_bytes());
    out.put_slice(&envelope);
    out.freeze()
}

fn parse_handover(mut payload: Bytes) -> Option<(String, Bytes)> {
    if payload.len() < 2 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([payload[0], payload[1]]));
    if payload.len() < 2 + len {
        return None;
    }
    let topic = String::from_utf8(payload[2..2 + len].to_vec()).ok()?;
    Some((topic, payload.split_off(2 + len)))
}

/// The answer of the node that queued a hand-over.
const TAKEN: &[u8] = b"1";

/// Asks another node with members of `group` to take `message`; counts it lost if none
/// does.
async fn hand_over(
    client: &async_nats::Client,
    origin: &Origin,
    group: &str,
    message: &Message,
    stats: &SharedStats,
    broker: &Broker,
) {
    let now = now_millis();
    let remaining = match message.expires_at {
        Some(at) if at <= now => return,
        Some(at) => Some(at - now),
        None => None,
    };
    let payload = handover_payload(origin, message, remaining);
    let request = client.request(handover_subject(group), payload);
    let answer = tokio::time::timeout(HANDOVER_TIMEOUT, request).await;
    if matches!(&answer, Ok(Ok(reply)) if reply.payload == TAKEN) {
        Stats::add(&stats.handed_over, 1);
        return;
    }
    Stats::add(&stats.handover_lost, 1);
    Stats::add(&broker.stats.publish_dropped, 1);
    let why = match answer {
        Ok(Ok(_)) => "the node asked has no member left".to_owned(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer".to_owned(),
    };
    tracing::debug!(%group, topic = %message.topic, %why, "cluster: a shared-subscription message found no member on another node; dropped");
}

/// Delivers what NATS gives this node for its groups, each to one local member.
async fn deliver_loop(
    client: async_nats::Client,
    handle: SharedHandle,
    local: Arc<Router>,
    mut inbound: mpsc::Receiver<Inbound>,
    stats: Arc<SharedStats>,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_warning = None;
    loop {
        let (group, message) = tokio::select! {
            m = inbound.recv() => match m { Some(m) => m, None => break },
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let now = now_millis();
        let handed = message
            .subject
            .strip_prefix(HANDOVER_PREFIX)
            .is_some_and(|rest| rest.starts_with('.'));
        let decoded = if handed {
            parse_handover(message.payload)
                .ok_or_else(|| "hand-over framing".to_owned())
                .and_then(|(topic, envelope)| {
                    envelope::decode(topic, envelope, now).map_err(|e| e.to_string())
                })
        } else {
            subject::subject_to_topic(message.subject.as_str())
                .map_err(|e| e.to_string())
                .and_then(|topic| {
                    envelope::decode(topic, message.payload, now).map_err(|e| e.to_string())
                })
        };
        let decoded = match decoded {
            Ok((_, decoded)) => Arc::new(decoded),
            Err(e) => {
                Stats::add(&stats.invalid, 1);
                if super::should_log(&mut last_warning) {
                    tracing::warn!(subject = %message.subject, "cluster: dropped a shared-subscription message from NATS: {e}");
                }
                continue;
            }
        };
        let taken = if decoded.expires_at.is_some_and(|at| at <= now) {
            true
        } else {
            match local.deliver_shared(&group, &decoded, &broker.queue_limits()) {
                Some(outcome) => {
                    Stats::add(&stats.delivered, 1);
                    Stats::add(&broker.stats.publish_dropped, outcome.dropped as u64);
                    true
                }
                None => false,
            }
        };
        if let Some(reply) = message.reply {
            let answer = if taken { TAKEN } else { b"0" };
            let _ = client.publish(reply, Bytes::from_static(answer)).await;
        } else if !taken {
            // The last member here left after NATS picked this node: once more, to
            // another node.
            let delivery = Delivery {
                message: decoded,
                qos: midge_proto::QoS::AtMostOnce,
                retain: false,
                subscription_ids: Vec::new(),
                shared: Some(group),
            };
            handle.hand_over(std::slice::from_ref(&delivery), &mut [false]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_are_stable_distinct_and_valid_tokens() {
        let a = queue_name("$share/g/a/#");
        assert_eq!(a, queue_name("$share/g/a/#"));
        assert_eq!(a.len(), 33);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, queue_name("$share/g/a/+"));
        assert_ne!(a, queue_name("$share/h/a/#"));
        // Fixed: another build (another Rust, another machine) must agree.
        assert_eq!(
            queue_name("$share/g/t"),
            format!("g{}", &hex(&sha2::Sha256::digest(b"$share/g/t"))[..32])
        );
        assert_eq!(
            handover_subject("$share/g/t"),
            format!("mq.s.{}", queue_name("$share/g/t"))
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn travels_agrees_with_the_subject_length() {
        for topic in [
            "a".repeat(3990),
            "a".repeat(3996),
            "a".repeat(3997),
            ".".repeat(1331),
            ".".repeat(1332),
            "/".repeat(1995),
            "/".repeat(1996),
            format!("{}/x", "é".repeat(600)),
            "short/topic".to_owned(),
        ] {
            assert_eq!(
                travels(&topic),
                subject::topic_to_subject(&topic).len() <= MAX_SUBJECT_LEN,
                "{} bytes",
                topic.len()
            );
        }
    }

    #[test]
    fn handover_payload_round_trips() {
        let mut m = Message::internal("a/b c".into(), Bytes::from_static(b"payload"), false, 0);
        m.qos = midge_proto::QoS::AtLeastOnce;
        let origin = Origin {
            node: "n".into(),
            incarnation: 1,
            seq: 0,
        };
        let payload = handover_payload(&origin, &m, Some(1000));
        let (topic, envelope) = parse_handover(payload.clone()).expect("framed");
        assert_eq!(topic, "a/b c");
        let (from, back) = envelope::decode(topic, envelope, 5).expect("envelope");
        assert_eq!(from, origin);
        assert_eq!(
            (back.payload, back.qos, back.expires_at),
            (m.payload, m.qos, Some(1005))
        );
        assert!(parse_handover(payload.slice(..4)).is_none(), "truncated");
        assert!(parse_handover(Bytes::from_static(b"\x00")).is_none());
    }

    #[tokio::test]
    async fn the_shared_connection_never_gets_its_own_hand_overs() {
        let config: ClusterConfig = toml::from_str(
            "backend = \"nats\"\nnode_id = \"n1\"\nnats_urls = [\"nats://127.0.0.1:4222\"]",
        )
        .expect("config");
        let options = format!("{:?}", connect_options(&config).await.expect("options"));
        // The options' Debug is the only way to read them back.
        assert!(options.contains(r#""no_echo": true"#), "{options}");
        assert!(options.contains(r#""midge n1 shared""#), "{options}");
    }

    #[test]
    fn hand_over_sends_only_what_no_local_member_took() {
        let (handle, mut rx) = SharedHandle::for_tests();
        let delivery = |topic: &str, shared: Option<&str>| Delivery {
            message: Arc::new(Message::internal(topic.into(), Bytes::new(), false, 0)),
            qos: midge_proto::QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            shared: shared.map(Arc::from),
        };
        let deliveries = [
            delivery("t", Some("$share/g/t")),
            delivery("t", Some("$share/g/t")),
            delivery("$SYS/x", Some("$share/g/$SYS/#")),
            delivery("t", None),
        ];
        let mut taken = [true, false, false, false];
        handle.hand_over(&deliveries, &mut taken);
        assert_eq!(taken, [true, true, false, false]);
        assert_eq!(
            format!("{:?}", rx.try_recv().expect("one batch")),
            "hand over 1"
        );
        assert!(rx.try_recv().is_err());
    }
}
