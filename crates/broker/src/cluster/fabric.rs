//! The node's connection to NATS for live messages: it publishes what the node forwards
//! and holds one subscription per subject the node's filters need, speaking NATS's client
//! protocol itself.
//!
//! Why not async-nats here: it gives every subscription a channel of its own, whose first
//! block holds 32 messages (5,920 bytes), and the node kept a forwarding task per
//! subscription; with a topic per device, a node paid 6.6 KiB per connection for them
//! (BENCHMARKS.md, "A subject per connection in a cluster"). Here a subscription is a
//! number and its subject, and every message comes through the one reader. The node's
//! other NATS connections (ownership, shared groups, retained messages) stay on
//! async-nats: they hold few subscriptions, and JetStream is theirs.
//!
//! One task ([`run`]) owns the connection. Its writer sends the PUBs the forward queue
//! brings, in order and batched, the SUBs and UNSUBs interest changes ask for, PINGs and
//! PONGs; its reader hands MSGs to the receiver and answers the server's PINGs. Both are
//! polled by that task, so nothing is shared across threads. A connection that fails, or
//! leaves two PINGs unanswered, is replaced: the configured servers are tried in order,
//! then those the servers announced, and every subject is subscribed again. `echo` is off,
//! so the node never gets its own messages back.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64ct::{Base64UrlUnpadded, Encoding as _};
use bytes::{Buf, Bytes, BytesMut};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, watch};

use super::envelope::{self, Origin};
use super::{ClusterError, ClusterStats, Interest, MAX_SUBJECT_LEN, should_log, subject};
use crate::auth::http::ClientTls;
use crate::broker::Broker;
use crate::config::{ClusterConfig, NatsServer};
use crate::model::{Message, now_millis};
use crate::stats::Stats;

/// Time for a TCP connect, or for one step of the handshake (INFO, TLS, CONNECT's PONG).
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the node PINGs; two unanswered mean the connection is dead.
const PING_INTERVAL: Duration = Duration::from_secs(20);
/// Longest protocol line read (an INFO listing a large cluster's servers is the longest).
const MAX_LINE: usize = 1 << 20;
/// Largest message accepted: NATS's own ceiling for `max_payload`.
const MAX_MESSAGE: usize = 64 << 20;
/// PUBs written in one system call, at most (bytes), when the queue holds more.
const WRITE_BATCH: usize = 64 << 10;
/// Room made in the read buffer before a read, when less than a quarter of it is left.
/// Payloads are split off the buffer, so it keeps no room of its own: without this, reads
/// would shrink to what is left of its last allocation.
const READ_ROOM: usize = 64 << 10;

/// A message from NATS for the receiver.
#[derive(Debug)]
pub struct Inbound {
    /// The subject it was published to.
    pub subject: String,
    /// The envelope.
    pub payload: Bytes,
}

/// Why a connection could not be made, or ended.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A step took longer than [`STEP_TIMEOUT`].
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The server said `-ERR`, or broke the protocol.
    #[error("{0}")]
    Protocol(String),
}

/// The server's INFO, what of it the node uses.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Info {
    server_name: String,
    max_payload: usize,
    tls_required: bool,
    tls_available: bool,
    nonce: Option<String>,
    connect_urls: Vec<String>,
}

/// How to reach NATS: the `[cluster]` settings that concern the connection.
#[derive(Debug)]
pub struct Settings {
    name: String,
    servers: Vec<NatsServer>,
    user_password: Option<(String, String)>,
    token: Option<String>,
    /// JWT and NKey seed from `creds_file`.
    creds: Option<(String, String)>,
    /// TLS to every server, not only those asking for it.
    tls_required: bool,
    tls: ClientTls,
}

impl Settings {
    /// Reads the settings and the files they name.
    pub fn new(config: &ClusterConfig) -> Result<Self, ClusterError> {
        let creds = match &config.creds_file {
            Some(path) => {
                let invalid =
                    |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
                let read = std::fs::read_to_string(path).and_then(|text| {
                    let (jwt, seed) = parse_creds(&text)
                        .ok_or_else(|| invalid("no user JWT and NKey seed in it".into()))?;
                    // A seed that cannot sign would fail every connection attempt.
                    nkeys::KeyPair::from_seed(&seed)
                        .map_err(|e| invalid(format!("the NKey seed: {e}")))?;
                    Ok((jwt, seed))
                });
                Some(read.map_err(|source| ClusterError::Credentials {
                    path: path.display().to_string(),
                    source,
                })?)
            }
            None => None,
        };
        let tls = match &config.tls_ca_file {
            Some(ca) => ClientTls::new(Some(ca), None, None).map_err(|e| ClusterError::CaFile {
                path: ca.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
            // The system's roots, for servers that ask for TLS; none found is an error
            // only when a server asks.
            None => ClientTls::new(None, None, None).unwrap_or_default(),
        };
        let servers = config
            .nats_urls
            .iter()
            .filter_map(|url| NatsServer::parse(url).ok())
            .collect();
        Ok(Self {
            name: format!("midge {}", config.node_id),
            servers,
            user_password: config.user.clone().zip(config.password.clone()),
            token: config.token.clone(),
            creds,
            tls_required: config.tls_required || config.tls_ca_file.is_some(),
            tls,
        })
    }
}

/// The JWT and seed of an `nsc` credentials file: the first line of each armoured block.
fn parse_creds(text: &str) -> Option<(String, String)> {
    let block = |begin: &str| {
        let mut lines = text.lines().skip_while(|l| !l.contains(begin));
        lines.next()?;
        lines
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)
    };
    Some((
        block("BEGIN NATS USER JWT")?,
        block("BEGIN USER NKEY SEED")?,
    ))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection past its handshake.
pub struct Connection {
    stream: Box<dyn Io>,
    /// What was read past the handshake.
    read: BytesMut,
    info: Info,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.info.server_name)
            .finish()
    }
}

impl Connection {
    /// The server's name, from its INFO.
    pub fn server_name(&self) -> &str {
        &self.info.server_name
    }
}

/// One line of the server, without its CRLF, and what follows it.
enum Op {
    Msg { subject: String, payload: Bytes },
    Info(Box<Info>),
    Ping,
    Pong,
    Ok,
    Err(String),
}

/// Takes the next whole operation off `buf`, if it holds one.
fn parse(buf: &mut BytesMut) -> Result<Option<Op>, FabricError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > MAX_LINE {
            return Err(FabricError::Protocol("protocol line too long".into()));
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[..end])
        .map_err(|_| FabricError::Protocol("protocol line not UTF-8".into()))?;
    let (verb, args) = line.split_once([' ', '\t']).unwrap_or((line, ""));
    let is = |name: &str| verb.eq_ignore_ascii_case(name);
    let bad = || FabricError::Protocol(format!("malformed {verb} from the server"));
    let op = if is("MSG") || is("HMSG") {
        // MSG subject sid [reply] size; HMSG subject sid [reply] header-size size. Read
        // into an array: this runs for every message.
        let sizes = if is("HMSG") { 2 } else { 1 };
        let mut fields = [""; 5];
        let mut n = 0;
        for field in args.split_ascii_whitespace() {
            *fields.get_mut(n).ok_or_else(bad)? = field;
            n += 1;
        }
        if n < 2 + sizes || n > 3 + sizes {
            return Err(bad());
        }
        let total: usize = fields[n - 1].parse().map_err(|_| bad())?;
        let header: usize = if sizes == 2 {
            fields[n - 2].parse().map_err(|_| bad())?
        } else {
            0
        };
        if total > MAX_MESSAGE || header > total {
            return Err(bad());
        }
        if buf.len() < end + 2 + total + 2 {
            buf.reserve(end + 2 + total + 2 - buf.len());
            return Ok(None);
        }
        let subject = fields[0].to_owned();
        buf.advance(end + 2 + header);
        let payload = buf.split_to(total - header).freeze();
        if &buf[..2] != b"\r\n" {
            return Err(FabricError::Protocol(
                "a message from the server without CRLF after its payload".into(),
            ));
        }
        buf.advance(2);
        return Ok(Some(Op::Msg { subject, payload }));
    } else if is("INFO") {
        Op::Info(Box::new(serde_json::from_str(args).map_err(|_| bad())?))
    } else if is("PING") {
        Op::Ping
    } else if is("PONG") {
        Op::Pong
    } else if is("+OK") {
        Op::Ok
    } else if is("-ERR") {
        Op::Err(args.trim().trim_matches('\'').to_owned())
    } else {
        return Err(FabricError::Protocol(format!("unknown operation {verb}")));
    };
    buf.advance(end + 2);
    Ok(Some(op))
}

/// Whether the server keeps the connection after this `-ERR`: a refused subject does not
/// end it; every other error closes it.
fn error_keeps_connection(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    error.starts_with("permissions violation") || error.starts_with("invalid subject")
}

async fn step<T>(
    what: &'static str,
    f: impl Future<Output = Result<T, FabricError>>,
) -> Result<T, FabricError> {
    tokio::time::timeout(STEP_TIMEOUT, f)
        .await
        .map_err(|_| FabricError::Timeout(what))?
}

/// Reads until one whole operation is in `buf`.
async fn read_op(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
) -> Result<Op, FabricError> {
    loop {
        if let Some(op) = parse(buf)? {
            return Ok(op);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(FabricError::Protocol(
                "the server closed the connection".into(),
            ));
        }
    }
}

/// Connects to `server` and goes through INFO, TLS if either side wants it, CONNECT and
/// a PING answered, so a refused login is known here.
async fn connect_to(settings: &Settings, server: &NatsServer) -> Result<Connection, FabricError> {
    let tcp = step("connecting", async {
        Ok(TcpStream::connect((server.host.as_str(), server.port)).await?)
    })
    .await?;
    tcp.set_nodelay(true)?;
    let mut tcp = tcp;
    let mut buf = BytesMut::with_capacity(4096);
    let info = match step("waiting for INFO", read_op(&mut tcp, &mut buf)).await? {
        Op::Info(info) => info,
        Op::Err(e) => return Err(FabricError::Protocol(e)),
        _ => {
            return Err(FabricError::Protocol(
                "the server did not start with INFO".into(),
            ));
        }
    };
    let want_tls = settings.tls_required || server.tls;
    let tls = info.tls_required || want_tls;
    let mut stream: Box<dyn Io> = if tls {
        if want_tls && !(info.tls_required || info.tls_available) {
            return Err(FabricError::Protocol(
                "TLS is required, and the server does not offer it".into(),
            ));
        }
        let connector = settings.tls.tls_connector().ok_or_else(|| {
            FabricError::Protocol("the server requires TLS, and no CA certificates were found (set cluster.tls_ca_file)".into())
        })?;
        if !buf.is_empty() {
            return Err(FabricError::Protocol(
                "the server sent more than INFO before TLS".into(),
            ));
        }
        let name = rustls::pki_types::ServerName::try_from(server.host.clone())
            .map_err(|e| FabricError::Protocol(format!("{}: {e}", server.host)))?;
        let tls = step("in the TLS handshake", async {
            Ok(connector.connect(name, tcp).await?)
        })
        .await?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let connect = connect_message(settings, server, &info, tls)?;
    stream.write_all(connect.as_bytes()).await?;
    stream.flush().await?;
    loop {
        match step(
            "waiting for the answer to CONNECT",
            read_op(&mut stream, &mut buf),
        )
        .await?
        {
            Op::Pong => break,
            Op::Ping => stream.write_all(b"PONG\r\n").await?,
            Op::Err(e) => return Err(FabricError::Protocol(e)),
            Op::Ok | Op::Info(_) => {}
            Op::Msg { .. } => {
                return Err(FabricError::Protocol(
                    "a message before any subscription".into(),
                ));
            }
        }
    }
    Ok(Connection {
        stream,
        read: buf,
        info: *info,
    })
}

/// CONNECT (and the PING whose PONG says it was accepted).
fn connect_message(
    settings: &Settings,
    server: &NatsServer,
    info: &Info,
    tls: bool,
) -> Result<String, FabricError> {
    let mut connect = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "lang": "rust",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1,
        "name": settings.name,
        "echo": false,
        "headers": false,
        "tls_required": tls,
    });
    let credentials = server
        .user_password
        .as_ref()
        .or(settings.user_password.as_ref());
    if let Some((user, password)) = credentials {
        connect["user"] = user.as_str().into();
        connect["pass"] = password.as_str().into();
    }
    if let Some(token) = server.token.as_ref().or(settings.token.as_ref()) {
        connect["auth_token"] = token.as_str().into();
    }
    if let Some((jwt, seed)) = &settings.creds {
        let key = nkeys::KeyPair::from_seed(seed)
            .map_err(|e| FabricError::Protocol(format!("creds_file: the NKey seed: {e}")))?;
        let nonce = info.nonce.as_deref().unwrap_or_default();
        let signature = key
            .sign(nonce.as_bytes())
            .map_err(|e| FabricError::Protocol(format!("creds_file: signing: {e}")))?;
        connect["jwt"] = jwt.as_str().into();
        connect["sig"] = Base64UrlUnpadded::encode_string(&signature).into();
    }
    Ok(format!("CONNECT {connect}\r\nPING\r\n"))
}

/// Connects to the first server that accepts: the configured ones in order, then those
/// announced. The error is the last server's.
pub async fn connect(
    settings: &Settings,
    announced: &[NatsServer],
) -> Result<Connection, FabricError> {
    let mut last = FabricError::Protocol("no server to connect to".into());
    for server in settings.servers.iter().chain(announced) {
        match connect_to(settings, server).await {
            Ok(connection) => return Ok(connection),
            Err(e) => last = FabricError::Protocol(format!("{}:{}: {e}", server.host, server.port)),
        }
    }
    Err(last)
}

/// The node's subscriptions: a count per subject (how many local filters need it) and,
/// while positive, the subscription's id.
#[derive(Debug, Default)]
struct Subjects {
    counts: HashMap<String, (i64, Option<u64>)>,
    next_sid: u64,
}

/// What an interest change asks of the connection.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    Subscribe(u64),
    Unsubscribe(u64),
    Nothing,
}

impl Subjects {
    /// Applies `change`. Counts may pass below zero for a moment: an unsubscribe's change
    /// can arrive before the subscribe's from another connection. The subscription exists
    /// while the count is positive.
    fn apply(&mut self, subject: &str, delta: i64) -> Change {
        let entry = match self.counts.get_mut(subject) {
            Some(entry) => entry,
            None => self.counts.entry(subject.to_owned()).or_insert((0, None)),
        };
        entry.0 += delta;
        let change = match (entry.0 > 0, entry.1) {
            (true, None) if subject.len() <= MAX_SUBJECT_LEN => {
                self.next_sid += 1;
                entry.1 = Some(self.next_sid);
                Change::Subscribe(self.next_sid)
            }
            (true, None) => {
                tracing::warn!(%subject, "cluster: a filter too long for a NATS subject only receives messages published on this node");
                Change::Nothing
            }
            (false, Some(sid)) => {
                entry.1 = None;
                Change::Unsubscribe(sid)
            }
            _ => Change::Nothing,
        };
        if entry.0 == 0 {
            self.counts.remove(subject);
        }
        change
    }

    fn active(&self) -> impl Iterator<Item = (&str, u64)> {
        self.counts
            .iter()
            .filter_map(|(subject, (_, sid))| sid.map(|sid| (subject.as_str(), sid)))
    }
}

/// What the task carries from one connection to the next.
pub(crate) struct Parts {
    /// The node's messages for NATS, in routing order.
    pub forward: mpsc::Receiver<Arc<Message>>,
    /// Changes of the node's interest.
    pub interest: mpsc::UnboundedReceiver<Interest>,
    /// Messages from NATS, for the receiver.
    pub inbound: mpsc::Sender<Inbound>,
    /// The node, its run, and the sequence number of what it forwarded.
    pub origin: Origin,
    /// The cluster's counters.
    pub stats: Arc<ClusterStats>,
    /// For the broker's counters.
    pub broker: Arc<Broker>,
    /// Ends the task.
    pub shutdown: watch::Receiver<bool>,
}

enum Ended {
    Shutdown,
    Lost(FabricError),
}

/// Serves `connection`, then the ones replacing it, until shutdown.
pub(crate) async fn run(mut connection: Connection, settings: Settings, mut parts: Parts) {
    let mut subjects = Subjects::default();
    let mut last_warning = None;
    loop {
        let mut announced = announced_servers(&connection.info);
        match serve(
            connection,
            &mut subjects,
            &mut parts,
            &mut announced,
            &mut last_warning,
        )
        .await
        {
            Ended::Shutdown => return,
            Ended::Lost(e) => tracing::warn!(
                node_id = %parts.origin.node,
                error = %e,
                "cluster: disconnected from NATS; reconnecting (messages to and from other nodes wait or are lost meanwhile)"
            ),
        }
        let mut delay = Duration::from_millis(100);
        connection = loop {
            let attempt = tokio::select! {
                c = connect(&settings, &announced) => c,
                _ = parts.shutdown.wait_for(|s| *s) => return,
            };
            match attempt {
                Ok(c) => break c,
                Err(e) => tracing::warn!(
                    node_id = %parts.origin.node,
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "cluster: cannot reach NATS"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = parts.shutdown.wait_for(|s| *s) => return,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        };
        tracing::info!(node_id = %parts.origin.node, server = %connection.info.server_name, "cluster: connected to NATS");
    }
}

fn announced_servers(info: &Info) -> Vec<NatsServer> {
    info.connect_urls
        .iter()
        .filter_map(|url| NatsServer::parse(url).ok())
        .collect()
}

/// One connection's life: returns when it fails or the node shuts down.
async fn serve(
    connection: Connection,
    subjects: &mut Subjects,
    parts: &mut Parts,
    announced: &mut Vec<NatsServer>,
    last_warning: &mut Option<std::time::Instant>,
) -> Ended {
    let Connection {
        stream,
        read: mut buf,
        info,
    } = connection;
    let max_payload = if info.max_payload == 0 {
        1 << 20
    } else {
        info.max_payload
    };
    let (mut reader, mut writer) = tokio::io::split(stream);
    // PINGs sent and not answered; PONGs owed to the server; the reader's signals.
    let unanswered = AtomicU32::new(0);
    let owed = AtomicU32::new(0);
    let pong_owed = Notify::new();
    let pong_seen = Notify::new();
    let Parts {
        forward,
        interest,
        inbound,
        origin,
        stats,
        broker,
        shutdown,
    } = parts;

    let node = origin.node.clone();
    let read = async {
        loop {
            while let Some(op) = parse(&mut buf)? {
                match op {
                    Op::Msg { subject, payload } => {
                        if inbound.send(Inbound { subject, payload }).await.is_err() {
                            return Ok(Ended::Shutdown);
                        }
                    }
                    Op::Ping => {
                        owed.fetch_add(1, Ordering::Relaxed);
                        pong_owed.notify_one();
                    }
                    Op::Pong => {
                        let _ =
                            unanswered.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                n.checked_sub(1)
                            });
                        pong_seen.notify_one();
                    }
                    Op::Info(info) => *announced = announced_servers(&info),
                    Op::Ok => {}
                    Op::Err(e) if error_keeps_connection(&e) => {
                        if should_log(last_warning) {
                            tracing::warn!(node_id = %node, "cluster: NATS refused: {e} (further ones are logged at most every 10 s)");
                        }
                    }
                    Op::Err(e) => return Err(FabricError::Protocol(e)),
                }
            }
            if buf.capacity() - buf.len() < READ_ROOM / 4 {
                buf.reserve(READ_ROOM);
            }
            if reader.read_buf(&mut buf).await? == 0 {
                return Err(FabricError::Protocol(
                    "the server closed the connection".into(),
                ));
            }
        }
    };

    let write = async {
        let mut out = Vec::with_capacity(4096);
        for (subject, sid) in subjects.active() {
            push_sub(&mut out, subject, sid);
        }
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut forward_warning = None;
        let mut scratch = Scratch::default();
        loop {
            if !out.is_empty() {
                writer.write_all(&out).await?;
                writer.flush().await?;
                out.clear();
                if out.capacity() > WRITE_BATCH * 2 {
                    out.shrink_to(4096);
                }
            }
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                _ = ping.tick() => {
                    if unanswered.fetch_add(1, Ordering::Relaxed) >= 2 {
                        return Err(FabricError::Protocol("two PINGs unanswered".into()));
                    }
                    out.extend_from_slice(b"PING\r\n");
                }
                _ = pong_owed.notified() => {}
                change = interest.recv() => {
                    let Some(change) = change else { break };
                    let (subject, delta) = match &change {
                        Interest::Add(s) => (s, 1),
                        Interest::Remove(s) => (s, -1),
                    };
                    match subjects.apply(subject, delta) {
                        Change::Subscribe(sid) => {
                            push_sub(&mut out, subject, sid);
                            Stats::add(&stats.subjects, 1);
                        }
                        Change::Unsubscribe(sid) => {
                            let _ = write!(out, "UNSUB {sid}\r\n");
                            stats.subjects.fetch_sub(1, Ordering::Relaxed);
                        }
                        Change::Nothing => {}
                    }
                }
                message = forward.recv() => {
                    let Some(message) = message else { break };
                    let mut next = Some(message);
                    while let Some(message) = next.take() {
                        match push_pub(&mut out, &mut scratch, origin, &message, max_payload) {
                            Ok(true) => Stats::add(&stats.forwarded, 1),
                            Ok(false) => {}
                            Err(why) => {
                                Stats::add(&stats.forward_dropped, 1);
                                Stats::add(&broker.stats.publish_dropped, 1);
                                if should_log(&mut forward_warning) {
                                    tracing::warn!(topic = %message.topic, "cluster: not forwarded to other nodes: {why} (further ones are counted, logged at most every 10 s)");
                                }
                            }
                        }
                        if out.len() < WRITE_BATCH {
                            next = forward.try_recv().ok();
                        }
                    }
                }
            }
            for _ in 0..owed.swap(0, Ordering::Relaxed) {
                out.extend_from_slice(b"PONG\r\n");
            }
        }
        // What was published reaches the server before the connection goes: its PONG
        // comes after it has taken every PUB before the PING.
        // PONGs come in order, so the last one answers this PING.
        out.extend_from_slice(b"PING\r\n");
        unanswered.fetch_add(1, Ordering::Relaxed);
        writer.write_all(&out).await?;
        writer.flush().await?;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while unanswered.load(Ordering::Relaxed) > 0 {
                pong_seen.notified().await;
            }
        })
        .await;
        Ok(Ended::Shutdown)
    };

    let ended: Result<Ended, FabricError> = tokio::select! {
        r = read => r,
        w = write => w,
    };
    ended.unwrap_or_else(Ended::Lost)
}

fn push_sub(out: &mut Vec<u8>, subject: &str, sid: u64) {
    let _ = write!(out, "SUB {subject} {sid}\r\n");
}

/// What [`push_pub`] builds a message's subject and envelope in, kept by the writer so that
/// forwarding a message allocates nothing.
#[derive(Default)]
struct Scratch {
    subject: String,
    envelope: BytesMut,
}

/// Appends the PUB of `message` (true), skips it because it expired while queued (false:
/// nobody may receive it now, so it is not a drop), or says why it is not forwarded.
fn push_pub(
    out: &mut Vec<u8>,
    scratch: &mut Scratch,
    origin: &mut Origin,
    message: &Message,
    max_payload: usize,
) -> Result<bool, String> {
    let now = now_millis();
    let remaining = match message.expires_at {
        Some(at) if at <= now => return Ok(false),
        Some(at) => Some(at - now),
        None => None,
    };
    let Scratch { subject, envelope } = scratch;
    subject.clear();
    subject::push_subject(subject, &message.topic);
    if subject.len() > MAX_SUBJECT_LEN {
        return Err("the topic is too long for a NATS subject".into());
    }
    origin.seq += 1;
    envelope.clear();
    envelope::encode_into(envelope, origin, message, remaining);
    let len = envelope.len();
    let pushed = if len > max_payload {
        origin.seq -= 1;
        Err(format!(
            "{len} bytes are more than the server's max_payload ({max_payload})"
        ))
    } else {
        // Into the buffer directly (writing to a Vec cannot fail): this runs per message.
        let _ = write!(out, "PUB {subject} {len}\r\n");
        out.extend_from_slice(&envelope[..]);
        out.extend_from_slice(b"\r\n");
        Ok(true)
    };
    if envelope.capacity() > WRITE_BATCH {
        // One large message does not keep its size in the scratch buffer.
        *envelope = BytesMut::new();
    }
    pushed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(bytes: &[u8]) -> (Vec<Op>, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let mut ops = Vec::new();
        while let Some(op) = parse(&mut buf).unwrap() {
            ops.push(op);
        }
        (ops, buf)
    }

    #[test]
    fn parses_messages_with_and_without_reply_and_headers() {
        let (ops, rest) = ops(
            b"MSG mq.m.a 1 5\r\nhello\r\nmsg mq.m.b 2 _INBOX.x 0\r\n\r\nHMSG mq.m.c 3 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\nPONG\r\n+OK\r\n-ERR 'Authorization Violation'\r\n",
        );
        assert!(rest.is_empty());
        let got: Vec<String> = ops
            .iter()
            .map(|op| match op {
                Op::Msg { subject, payload } => {
                    format!("{subject}={}", String::from_utf8_lossy(payload))
                }
                Op::Info(_) => "INFO".into(),
                Op::Ping => "PING".into(),
                Op::Pong => "PONG".into(),
                Op::Ok => "OK".into(),
                Op::Err(e) => format!("ERR {e}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                "mq.m.a=hello",
                "mq.m.b=",
                "mq.m.c=hi",
                "PING",
                "PONG",
                "OK",
                "ERR Authorization Violation"
            ]
        );
    }

    #[test]
    fn waits_for_a_whole_message_then_takes_it() {
        let whole = b"MSG s 1 10\r\n0123456789\r\nPING\r\n";
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            while let Some(op) = parse(&mut buf).unwrap() {
                assert!(matches!(op, Op::Msg { .. }), "cut {cut}");
            }
            buf.extend_from_slice(&whole[cut..]);
            let mut got = 0;
            while parse(&mut buf).unwrap().is_some() {
                got += 1;
            }
            assert!(buf.is_empty(), "cut {cut}");
            assert!(got >= 1, "cut {cut}");
        }
    }

    #[test]
    fn a_message_payload_may_hold_crlf_and_binary() {
        let (ops, _) = ops(b"MSG s 1 6\r\n\r\n\x00\xff\r\n\r\n");
        match &ops[..] {
            [Op::Msg { payload, .. }] => assert_eq!(&payload[..], b"\r\n\x00\xff\r\n"),
            _ => panic!("one message"),
        }
    }

    #[test]
    fn broken_input_is_an_error_not_a_guess() {
        for bad in [
            &b"MSG s 1\r\n"[..],
            b"MSG s 1 x\r\n",
            b"MSG s 1 3\r\nabcXY",
            b"HMSG s 1 9 3\r\nabc\r\n",
            b"MSG s 1 999999999999\r\n",
            b"WHAT\r\n",
            b"INFO {not json\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(parse(&mut buf).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let mut long = BytesMut::from(&vec![b'x'; MAX_LINE + 1][..]);
        assert!(parse(&mut long).is_err());
    }

    #[test]
    fn info_gives_payload_limit_nonce_and_servers() {
        let (ops, _) = ops(
            b"INFO {\"server_id\":\"X\",\"server_name\":\"n1\",\"max_payload\":1048576,\"nonce\":\"abc\",\"connect_urls\":[\"10.0.0.2:4222\"],\"headers\":true}\r\n",
        );
        let [Op::Info(info)] = &ops[..] else {
            panic!("one INFO")
        };
        assert_eq!(info.server_name, "n1");
        assert_eq!(info.max_payload, 1 << 20);
        assert_eq!(info.nonce.as_deref(), Some("abc"));
        let servers = announced_servers(info);
        assert_eq!(
            (servers[0].host.as_str(), servers[0].port),
            ("10.0.0.2", 4222)
        );
    }

    #[test]
    fn subjects_are_counted_and_subscribed_while_positive() {
        let mut s = Subjects::default();
        assert_eq!(s.apply("a", 1), Change::Subscribe(1));
        assert_eq!(s.apply("a", 1), Change::Nothing);
        assert_eq!(s.apply("a", -1), Change::Nothing);
        assert_eq!(s.apply("a", -1), Change::Unsubscribe(1));
        assert!(s.counts.is_empty());
        // A removal ahead of its addition: nothing until the count turns positive.
        assert_eq!(s.apply("b", -1), Change::Nothing);
        assert_eq!(s.apply("b", 1), Change::Nothing);
        assert!(s.counts.is_empty());
        assert_eq!(s.apply("b", 1), Change::Subscribe(2));
        assert_eq!(s.active().collect::<Vec<_>>(), [("b", 2)]);
        let long = "x".repeat(MAX_SUBJECT_LEN + 1);
        assert_eq!(s.apply(&long, 1), Change::Nothing);
        assert_eq!(s.active().count(), 1);
        assert_eq!(s.apply(&long, -1), Change::Nothing);
    }

    #[test]
    fn forwarded_messages_are_pubs_that_read_back_and_big_ones_are_refused() {
        let mut origin = Origin {
            node: "n1".into(),
            incarnation: 7,
            seq: 0,
        };
        let message = Message::internal("a/b".into(), Bytes::from_static(b"hi"), false, 1);
        let mut out = Vec::new();
        assert_eq!(
            push_pub(
                &mut out,
                &mut Scratch::default(),
                &mut origin,
                &message,
                1 << 20
            ),
            Ok(true)
        );
        // The server's MSG carries what the PUB did: turn one into the other and decode.
        let text = String::from_utf8_lossy(&out).into_owned();
        let (line, _) = text.split_once("\r\n").unwrap();
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[..2], ["PUB", "mq.m.a.b"]);
        let mut msg = format!("MSG {} 1 {}\r\n", fields[1], fields[2]).into_bytes();
        msg.extend_from_slice(&out[line.len() + 2..]);
        let (ops, rest) = ops(&msg);
        assert!(rest.is_empty());
        let [Op::Msg { subject, payload }] = &ops[..] else {
            panic!("one message")
        };
        let topic = subject::subject_to_topic(subject).unwrap();
        let (from, got) = envelope::decode(topic, payload.clone(), now_millis()).unwrap();
        assert_eq!((from.node.as_str(), from.seq), ("n1", 1));
        assert_eq!((&*got.topic, &got.payload[..]), ("a/b", &b"hi"[..]));

        let big = Message::internal("a/b".into(), Bytes::from(vec![0; 100]), false, 0);
        let mut out = Vec::new();
        assert!(push_pub(&mut out, &mut Scratch::default(), &mut origin, &big, 64).is_err());
        assert!(out.is_empty());
        assert_eq!(origin.seq, 1, "a refused message takes no sequence number");
    }

    /// One scratch buffer carries message after message: nothing of a longer one before
    /// is left in a shorter one after, and a large one does not keep its size.
    #[test]
    fn the_scratch_buffers_carry_each_message_alone() {
        let mut origin = Origin {
            node: "n1".into(),
            incarnation: 7,
            seq: 0,
        };
        let mut scratch = Scratch::default();
        let mut out = Vec::new();
        let sent = [
            ("a/much/longer/topic", vec![7u8; WRITE_BATCH + 1]),
            ("b", b"x".to_vec()),
            ("$SYS/c", b"yz".to_vec()),
        ];
        for (topic, payload) in &sent {
            let message =
                Message::internal((*topic).into(), Bytes::from(payload.clone()), false, 0);
            assert_eq!(
                push_pub(&mut out, &mut scratch, &mut origin, &message, 1 << 20),
                Ok(true)
            );
            if payload.len() > WRITE_BATCH {
                assert_eq!(scratch.envelope.capacity(), 0);
            }
        }
        // Read back as the server would deliver them.
        let mut msgs = Vec::new();
        let mut rest = &out[..];
        while !rest.is_empty() {
            let end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let line = std::str::from_utf8(&rest[..end]).unwrap();
            let fields: Vec<&str> = line.split(' ').collect();
            let len: usize = fields[2].parse().unwrap();
            msgs.extend_from_slice(format!("MSG {} 1 {len}\r\n", fields[1]).as_bytes());
            msgs.extend_from_slice(&rest[end + 2..end + 2 + len + 2]);
            rest = &rest[end + 2 + len + 2..];
        }
        let (ops, rest) = ops(&msgs);
        assert!(rest.is_empty());
        assert_eq!(ops.len(), sent.len());
        for (seq, (op, (topic, payload))) in ops.iter().zip(&sent).enumerate() {
            let Op::Msg {
                subject,
                payload: got,
            } = op
            else {
                panic!("a message")
            };
            let decoded_topic = subject::subject_to_topic(subject).unwrap();
            let (from, got) = envelope::decode(decoded_topic, got.clone(), now_millis()).unwrap();
            assert_eq!(from.seq, seq as u64 + 1);
            assert_eq!((&*got.topic, &got.payload[..]), (*topic, &payload[..]));
        }
    }

    /// A fake NATS server's side of one accepted connection.
    struct Peer {
        lines: tokio::io::Lines<tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>>,
        write: tokio::net::tcp::OwnedWriteHalf,
    }

    impl Peer {
        /// Accepts, sends INFO, and takes CONNECT and its PING.
        async fn accept(listener: &tokio::net::TcpListener) -> Self {
            use tokio::io::AsyncBufReadExt as _;
            let (socket, _) = listener.accept().await.unwrap();
            let (read, mut write) = socket.into_split();
            write
                .write_all(b"INFO {\"server_name\":\"fake\",\"max_payload\":1024}\r\n")
                .await
                .unwrap();
            let mut peer = Self {
                lines: tokio::io::BufReader::new(read).lines(),
                write,
            };
            let connect = peer.line().await;
            assert!(connect.starts_with("CONNECT {"), "{connect}");
            assert!(connect.contains("\"echo\":false"), "{connect}");
            assert_eq!(peer.raw_line().await, "PING");
            peer.send("PONG\r\n").await;
            peer
        }

        /// The next line but the node's PINGs, which are answered: the paused clock may
        /// reach the node's PING interval whenever both sides wait on the socket.
        async fn line(&mut self) -> String {
            loop {
                let line = self.raw_line().await;
                if line != "PING" {
                    return line;
                }
                self.send("PONG\r\n").await;
            }
        }

        async fn raw_line(&mut self) -> String {
            self.lines.next_line().await.unwrap().unwrap_or_default()
        }

        async fn send(&mut self, text: &str) {
            self.write.write_all(text.as_bytes()).await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_subscribes_relays_answers_pings_and_replaces_a_silent_server() {
        // Virtual time: a step that never comes ends the test after ten minutes of PINGs.
        let test = async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let config = ClusterConfig::nats("n1", vec![format!("nats://127.0.0.1:{port}")]);
            let settings = Settings::new(&config).unwrap();
            let (connection, mut peer) = tokio::join!(
                async { connect(&settings, &[]).await.unwrap() },
                Peer::accept(&listener)
            );
            assert_eq!(connection.server_name(), "fake");
            let (forward_tx, forward) = mpsc::channel(16);
            let (interest_tx, interest) = mpsc::unbounded_channel();
            let (inbound, mut inbound_rx) = mpsc::channel(16);
            let (shutdown_tx, shutdown) = watch::channel(false);
            let stats = Arc::new(ClusterStats::default());
            let parts = Parts {
                forward,
                interest,
                inbound,
                origin: Origin {
                    node: "n1".into(),
                    incarnation: 1,
                    seq: 0,
                },
                stats: stats.clone(),
                broker: Broker::new(crate::config::Config::default()),
                shutdown,
            };
            let task = tokio::spawn(run(connection, settings, parts));

            interest_tx.send(Interest::Add("mq.m.a".into())).unwrap();
            assert_eq!(peer.line().await, "SUB mq.m.a 1");
            peer.send("MSG mq.m.a 1 2\r\nhi\r\nPING\r\n").await;
            let got = inbound_rx.recv().await.unwrap();
            assert_eq!(
                (got.subject.as_str(), &got.payload[..]),
                ("mq.m.a", &b"hi"[..])
            );
            assert_eq!(peer.line().await, "PONG");
            forward_tx
                .send(Arc::new(Message::internal(
                    "a".into(),
                    Bytes::from_static(b"x"),
                    false,
                    0,
                )))
                .await
                .unwrap();
            assert!(peer.line().await.starts_with("PUB mq.m.a "));
            peer.line().await; // the envelope
            // Too big for the server's max_payload (1,024 bytes): counted, not sent.
            forward_tx
                .send(Arc::new(Message::internal(
                    "a".into(),
                    Bytes::from(vec![0; 2000]),
                    false,
                    0,
                )))
                .await
                .unwrap();
            interest_tx.send(Interest::Remove("mq.m.a".into())).unwrap();
            assert_eq!(peer.line().await, "UNSUB 1");
            assert_eq!(stats.forward_dropped.load(Ordering::Relaxed), 1);

            // The server stops answering: after its PINGs go unanswered the node connects
            // again and subscribes again to what it still wants.
            interest_tx.send(Interest::Add("mq.m.b".into())).unwrap();
            assert_eq!(peer.line().await, "SUB mq.m.b 2");
            for _ in 0..2 {
                assert_eq!(peer.raw_line().await, "PING");
            }
            let mut second = Peer::accept(&listener).await;
            assert_eq!(second.line().await, "SUB mq.m.b 2");
            drop(peer);

            // Shutdown: a last PING, answered, then the connection closes.
            shutdown_tx.send(true).unwrap();
            assert_eq!(second.raw_line().await, "PING");
            second.send("PONG\r\n").await;
            assert_eq!(second.raw_line().await, "", "closed after the PONG");
            task.await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(600), test)
            .await
            .expect("the exchange stalled");
    }

    #[test]
    fn creds_files_give_their_jwt_and_seed() {
        let text = "-----BEGIN NATS USER JWT-----\neyJhbGc.e30.sig\n------END NATS USER JWT------\n\n************************* IMPORTANT *************************\nNKEY Seed printed below can be used to sign and prove identity.\n\n-----BEGIN USER NKEY SEED-----\nSUAGIEYODKBBTUMOB666Z5KA4FCWAZV7HWSGRHOD7MK6UM5IYLWLACH7DQ\n------END USER NKEY SEED------\n";
        assert_eq!(
            parse_creds(text),
            Some((
                "eyJhbGc.e30.sig".to_owned(),
                "SUAGIEYODKBBTUMOB666Z5KA4FCWAZV7HWSGRHOD7MK6UM5IYLWLACH7DQ".to_owned()
            ))
        );
        assert_eq!(parse_creds("nothing here"), None);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.creds");
        std::fs::write(&path, text.replace("SUAG", "SXAG")).unwrap();
        let mut config = ClusterConfig::nats("n1", vec!["h:1".into()]);
        config.creds_file = Some(path);
        let error = Settings::new(&config).unwrap_err().to_string();
        assert!(
            error.contains("creds_file") && error.contains("NKey seed"),
            "{error}"
        );
    }

    /// The JSON of the CONNECT line in `text`.
    fn connect_json(text: &str) -> serde_json::Value {
        let line = text.strip_prefix("CONNECT ").unwrap().split("\r\n").next();
        serde_json::from_str(line.unwrap()).unwrap()
    }

    #[test]
    fn connect_carries_each_kind_of_credential() {
        let config = ClusterConfig::nats("n1", vec!["nats://u:p@h:1".into()]);
        let settings = Settings::new(&config).unwrap();
        let info = Info {
            nonce: Some("n0nce".into()),
            ..Info::default()
        };
        let text = connect_message(&settings, &settings.servers[0], &info, false).unwrap();
        let json = connect_json(&text);
        assert_eq!(
            (json["user"].as_str(), json["pass"].as_str()),
            (Some("u"), Some("p"))
        );
        assert_eq!(json["echo"], false);
        assert_eq!(json["name"], "midge n1");
        assert!(text.ends_with("\r\nPING\r\n"));

        let key = nkeys::KeyPair::new_user();
        let seed = key.seed().unwrap();
        let settings = Settings {
            creds: Some(("a.b.c".into(), seed)),
            ..Settings::new(&ClusterConfig::nats("n1", vec!["h:1".into()])).unwrap()
        };
        let text = connect_message(&settings, &settings.servers[0], &info, false).unwrap();
        let json = connect_json(&text);
        assert_eq!(json["jwt"], "a.b.c");
        let signature = Base64UrlUnpadded::decode_vec(json["sig"].as_str().unwrap()).unwrap();
        assert!(key.verify(b"n0nce", &signature).is_ok());
        assert!(json.get("user").is_none());
    }
}
