//! One task per connection: it owns the socket halves and buffers, reads CONNECT under a
//! timeout, runs authentication and the registry attach, then drives the session machine:
//! decode everything a read brought, handle it, pump deliveries, write once per wake-up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use midge_proto::{
    Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, DecodeError, Decoder, Packet,
    ProtocolVersion, ReasonCode, Subscribe,
};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::auth::dynsec::RESPONSE_TOPIC;
use crate::auth::scram::{Exchange, Failure, Mechanism};
use crate::auth::{AccessControl, Credentials, FilterVerdict, Identity};
use crate::broker::Broker;
use crate::mailbox::{ConnectionDetail, Control, Mailbox};
use crate::model::{Message, now_millis};
use crate::pre_connect::{self, PreConnect, Refused};
use crate::publish_rate::{Over, PublishRate, Throttle};
use crate::session::{Flow, ResolvedPublish, Session, Violation, negotiate};
use crate::stats::{LocalStats, Stats};

/// How often, in packets handled from one read, the connection looks at the time it has
/// spent (see `process_now`).
const YIELD_EVERY_PACKETS: u32 = 64;
/// Time handling one read's packets may take before the task yields its worker.
const YIELD_AFTER: Duration = Duration::from_millis(1);

/// Stop pumping deliveries into the write buffer beyond this; the socket drains it first.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// While the socket does not take all that is written (the client is not keeping up),
/// stop pumping beyond this instead: the backlog of a consumer that stopped reading stays
/// in its queue, where the queue limits and the memory budget's policy (dropping QoS 0 to
/// the slowest first) apply, not in up to [`WRITE_HIGH_WATER`] of encoded bytes per
/// connection that nothing can take back.
const STALLED_WATER: usize = 4 * 1024;
/// Stop reading from a client whose responses pile up unread beyond this: TCP then pushes
/// back on its sending, instead of the write buffer growing without bound.
const READ_PAUSE: usize = 4 * WRITE_HIGH_WATER;
/// Most bytes taken in one read (through a buffer on the stack, see [`poll_read_into`]).
const READ_CHUNK: usize = 64 * 1024;
/// How long a closing connection may spend flushing its last packets.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// After its last packets, a closing connection reads and discards what the client still
/// sends for at most this long and this many bytes (see [`Connection::close`]).
const CLOSE_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
const CLOSE_DRAIN_BYTES: usize = 256 * 1024;

/// What a listener gives each of its connections.
#[derive(Debug)]
pub struct ListenerContext {
    /// Listener name, for logs.
    pub name: String,
    /// Authentication and authorization for this listener.
    pub access: AccessControl,
    /// The configuration this connection was accepted under: a reload gives new
    /// connections a new one and leaves this connection's as it was.
    pub config: Arc<crate::config::Config>,
    /// The server's shutdown flag. A connection clones it only while it waits on it
    /// (before CONNECT, and while closing), so no serving connection keeps a receiver of
    /// its own in its task; while serving it is woken through its mailbox and looks here.
    pub shutdown: watch::Receiver<bool>,
}

/// A SCRAM login's state kept for re-authentication (AUTH 0x19) [MQTT-4.12.1-1].
#[derive(Debug)]
struct EnhancedAuth {
    /// The method used at CONNECT; a re-authentication must use it.
    mechanism: Mechanism,
    /// The user authenticated at CONNECT; a re-authentication must be for them.
    username: String,
    /// The re-authentication in progress (at most one) and when it must be done by.
    pending: Option<(Box<Exchange>, Instant)>,
}

/// How the connection ended, which decides the will.
#[derive(Debug)]
enum End {
    /// The client sent DISCONNECT; the session machine already dropped the will unless it
    /// was reason 0x04.
    ClientDisconnect,
    /// Anything else: network error, keep-alive, protocol violation, shutdown. The will is
    /// published (after its delay).
    Abnormal(&'static str),
    /// Another connection took the session over; answer once the session is parked.
    TakenOver(oneshot::Sender<()>),
    /// An administrator disconnected the client (`Control::Kick`).
    Kicked {
        /// The session ends too.
        discard_session: bool,
    },
}

/// Reads what is there (up to [`READ_CHUNK`]) through a buffer on the stack and appends it
/// to `rbuf`. A connection waiting for input thus holds no read buffer: the stack buffer
/// exists only while a read is attempted, and `rbuf` grows to exactly what arrived. The
/// copy is cheap next to the system call, and there is still one read per wake-up.
fn poll_read_into<R: AsyncRead + Unpin>(
    reader: &mut R,
    rbuf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut buf = ReadBuf::uninit(&mut stack);
    ready!(Pin::new(reader).poll_read(cx, &mut buf))?;
    rbuf.extend_from_slice(buf.filled());
    Poll::Ready(Ok(buf.filled().len()))
}

/// What woke a serving connection (see [`Connection::poll_wait`]).
enum Wait {
    /// Some of the write buffer went out, or it was flushed.
    Written,
    WriteFailed,
    /// Bytes read (0 at end of stream), or the read error.
    Read(std::io::Result<usize>),
    /// Something arrived in the mailbox: deliveries, a control, or a wake-up to look at
    /// the shutdown flag.
    Mailbox,
    /// A publish rate pause ended: handle what was read before reading more.
    RateResumed,
    /// The keep-alive deadline passed (it may since have moved).
    KeepAlive,
}

/// The future of [`Connection::process_input`]: its outcome when nothing had to wait
/// (boxed: an `End` is larger than the pointer to the waiting future), or that future.
enum ProcessInput<F> {
    Done(Option<Box<End>>),
    Waiting(Pin<Box<F>>),
}

impl<F: Future<Output = Option<End>>> Future for ProcessInput<F> {
    type Output = Option<End>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<End>> {
        match self.get_mut() {
            ProcessInput::Done(end) => Poll::Ready(end.take().map(|end| *end)),
            ProcessInput::Waiting(waiting) => waiting.as_mut().poll(cx),
        }
    }
}

/// What stopped [`Connection::process_now`] before the read buffer was done.
enum Waiting {
    /// A packet whose topic check waits for an HTTP service (boxed: the HTTP request
    /// costs far more, and the serving loop's every return would otherwise be this large).
    Authorize(Box<Pending>),
    /// 1 ms of packets from one read: the worker is given up before the rest.
    Yield,
}

/// Clears the mailbox's waker when the connection stops waiting on it.
struct ForgetWaker<'a>(&'a Mailbox);

impl Drop for ForgetWaker<'_> {
    fn drop(&mut self) {
        self.0.forget_waker();
    }
}

/// What a serving connection adds up for the admin API (see [`Control::Describe`]).
#[derive(Debug, Default)]
struct Totals {
    connected_at_ms: u64,
    bytes_received: u64,
    bytes_sent: u64,
    dropped: u32,
    keep_alive: u16,
}

impl Totals {
    /// Adds a wake-up's counts, before they are flushed.
    fn add(&mut self, stats: &LocalStats) {
        self.bytes_received += stats.bytes_received;
        self.bytes_sent += stats.bytes_sent;
        self.dropped = self
            .dropped
            .saturating_add(stats.publish_dropped + stats.publish_denied);
    }
}

struct Connection<S> {
    /// The byte stream, not split into halves: reads and writes take turns in this one
    /// task, and splitting a TCP stream costs an `Arc` allocation (64 bytes) per
    /// connection.
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: Decoder,
    peer: SocketAddr,
    /// What only some logins have (a certificate identity, an expiring credential,
    /// SCRAM). Boxed, and only when there is any: most connections have none, and every
    /// byte here is in every connection's task.
    login: Option<Box<Login>>,
    broker: Arc<Broker>,
    listener: Arc<ListenerContext>,
    /// Bytes were written since the last flush. TLS and WebSocket streams may hold written
    /// bytes in a buffer until flushed.
    unflushed: bool,
    /// The socket did not take all of the last write (part of it, or none): see
    /// [`STALLED_WATER`].
    stalled: bool,
    /// The publish rate limits (`limits.publish_rate_per_client`, `..._bytes_...`), when
    /// set.
    rate: Option<Box<PublishRate>>,
    /// The read and write buffers' capacity as counted in the memory budget once the
    /// session runs (before, `pre_connect` counts the read buffer); given back on drop.
    /// A `u32`: the buffers are bounded by `max_packet_size` and the write high water.
    buffers_charged: u32,
}

/// The parts of a login that most connections do not have (see [`Connection::login`]).
#[derive(Default)]
struct Login {
    /// The verified client certificate's identity, when the listener maps one to the user
    /// name (`cert_identity`).
    certificate_identity: Option<Box<str>>,
    /// When the login's credential expires (a JWT's `exp`): the connection ends then.
    credential_deadline: Option<Instant>,
    /// The enhanced authentication of a client that logged in with SCRAM: what a
    /// re-authentication needs.
    enhanced: Option<EnhancedAuth>,
}

/// [MQTT-3.1.2-24] A connection closes after one and a half times its keep alive without a
/// packet; `None` when keep alive is off. Computed when needed rather than kept: every
/// local of `Connection::run` is in every connection's task.
fn keep_alive_limit(keep_alive: u16) -> Option<Duration> {
    (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500))
}

/// How a connection that sent no usable CONNECT ends.
enum NoConnect {
    /// Through [`Connection::close`]: what was written (a CONNACK refusing it) goes first.
    Close,
    /// At once, with a reset: the client withheld its CONNECT (the deadline passed, or its
    /// partial CONNECT outgrew the pre-CONNECT budget), so there is nothing to say and no
    /// reason to wait for a shutdown (a WebSocket close handshake, for one).
    Reset,
}

/// A connection's write half, for how the connection's socket closes.
pub trait ResetOnClose {
    /// Makes the socket's close a reset (`SO_LINGER` 0) rather than a FIN, where the TCP
    /// socket can be reached. For a socket the broker closes first without an answer
    /// (no CONNECT within the deadline, a partial CONNECT over the pre-CONNECT budget):
    /// the side that closes first keeps the connection in TIME_WAIT for a minute, so a
    /// slowloris cycling its sockets through the deadline would pile them up on the
    /// broker's machine (see `listener::refuse`).
    fn reset_on_close(&self);
}

/// Makes `socket`'s close a reset: `SO_LINGER` 0. On failure it closes the usual way.
pub(crate) fn linger_zero(socket: &impl std::os::fd::AsFd) {
    let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
}

impl ResetOnClose for tokio::net::TcpStream {
    fn reset_on_close(&self) {
        linger_zero(self);
    }
}

/// An in-memory stream (tests, embedding) has no socket to reset.
impl ResetOnClose for tokio::io::DuplexStream {
    fn reset_on_close(&self) {}
}

impl<T: AsyncWrite + ResetOnClose> ResetOnClose for tokio::io::BufWriter<T> {
    fn reset_on_close(&self) {
        self.get_ref().reset_on_close();
    }
}

impl<S> Drop for Connection<S> {
    fn drop(&mut self) {
        self.broker.memory.release(u64::from(self.buffers_charged));
    }
}

/// Serves one accepted connection to the end. `certificate_identity` is the user name a
/// verified client certificate gives (see `[listener.tls] cert_identity`). `_held` (the
/// listener's connection permit, for one) is dropped when the connection ends.
///
/// Not an `async fn`: an `async fn` keeps its arguments in the future as well as the
/// locals they move into. Here the connection is built first and the future returned is
/// the connection's own, holding each part once.
#[allow(clippy::too_many_arguments)]
pub fn serve<S>(
    stream: S,
    peer: SocketAddr,
    certificate_identity: Option<String>,
    listener: Arc<ListenerContext>,
    broker: Arc<Broker>,
    held: impl Send,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin + ResetOnClose,
{
    // Until CONNECT is in, the smaller CONNECT limit applies (see `pre_connect`).
    let decoder = Decoder::new(listener.config.mqtt.connect_limit());
    let rate = PublishRate::new(&listener.config.limits);
    let conn = Connection {
        stream,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        decoder,
        peer,
        login: certificate_identity.map(|identity| {
            Box::new(Login {
                certificate_identity: Some(identity.into_boxed_str()),
                ..Login::default()
            })
        }),
        broker,
        listener,
        rate,
        unflushed: false,
        stalled: false,
        buffers_charged: 0,
    };
    conn.serve_session(held)
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + ResetOnClose,
{
    /// Reads the first packet, which must be CONNECT [MQTT-3.1.0-1], within the connect
    /// timeout, within the pre-CONNECT limits (`budget`). Answers a bad CONNECT itself
    /// where the protocol allows.
    async fn read_connect(
        &mut self,
        budget: &mut PreConnect,
        deadline: Instant,
    ) -> Result<Box<Connect>, NoConnect> {
        let timeout = Duration::from_secs(self.listener.config.mqtt.connect_timeout_secs);
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(Packet::Connect(connect))) => {
                    self.decoder
                        .set_max_packet_size(self.listener.config.mqtt.max_packet_size);
                    return Ok(connect);
                }
                Ok(Some(other)) => {
                    self.protocol_error(&format!("first packet is {}, not CONNECT", other.name()));
                    return Err(NoConnect::Close);
                }
                Ok(None) => {}
                Err(e) => {
                    let refused = PreConnect::classify(&self.rbuf, &e);
                    if let Some(refused) = refused {
                        budget.count(refused);
                    }
                    if refused == Some(Refused::TooLarge) {
                        // Seen in the fixed header: no version yet, so no CONNACK.
                        self.protocol_error(&format!(
                            "CONNECT too large: {e} (mqtt.max_connect_size)"
                        ));
                    } else {
                        self.connect_decode_error(&e);
                    }
                    return Err(NoConnect::Close);
                }
            }
            let mut shutdown = self.listener.shutdown.clone();
            let read = tokio::select! {
                read = tokio::time::timeout_at(deadline, budget.read(&mut self.stream, &mut self.rbuf)) => read,
                // Shutdown does not wait for a client that has not sent CONNECT yet.
                _ = shutdown.changed() => return Err(NoConnect::Close),
            };
            match read {
                Ok(pre_connect::Read::Closed) => return Err(NoConnect::Close),
                Ok(pre_connect::Read::Bytes(n)) => {
                    Stats::add(&self.broker.stats.bytes_received, n as u64)
                }
                Ok(pre_connect::Read::OverBudget) => {
                    budget.count(Refused::OverBudget);
                    if self.log_allowed() {
                        tracing::info!(peer = %self.peer, listener = %self.listener.name, "closing connection: partial CONNECT does not fit in mqtt.max_pre_connect_bytes");
                    }
                    return Err(NoConnect::Reset);
                }
                Err(_) => {
                    budget.count(Refused::Timeout);
                    tracing::debug!(peer = %self.peer, "no CONNECT within {timeout:?}; closing");
                    return Err(NoConnect::Reset);
                }
            }
        }
    }

    fn protocol_error(&self, what: &str) {
        Stats::add(&self.broker.stats.protocol_errors, 1);
        if self.log_allowed() {
            tracing::info!(peer = %self.peer, listener = %self.listener.name, "closing connection: {what}");
        }
    }

    /// Whether a line about this connection failing may be logged (see `log_limit`).
    fn log_allowed(&self) -> bool {
        self.broker.log_limit.allow(self.peer.ip())
    }

    /// A CONNECT that does not decode: v3 return code 1 for an unknown protocol level
    /// [MQTT-3.1.2-2]; a v5 CONNACK with the reason when the client is known to speak v5;
    /// otherwise just close.
    fn connect_decode_error(&mut self, error: &DecodeError) {
        self.protocol_error(&format!("bad CONNECT: {error}"));
        let (version, reason) = match error {
            DecodeError::UnsupportedProtocolVersion { .. } => (
                ProtocolVersion::V311,
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            ),
            _ if self.decoder.version() == Some(ProtocolVersion::V5) => {
                (ProtocolVersion::V5, error.reason_code())
            }
            _ => return,
        };
        let connack = ConnAck {
            session_present: false,
            reason_code: reason,
            properties: Default::default(),
        };
        let _ = Packet::ConnAck(connack).encode(version, &mut self.wbuf);
    }

    /// Refuses a CONNECT with a CONNACK carrying `reason` [MQTT-3.2.2-6], within the
    /// client's Maximum Packet Size.
    async fn refuse(&mut self, connect: &Connect, reason: ReasonCode, what: &str, client_id: &str) {
        let properties = ConnAckProperties::default();
        self.refuse_with(connect, reason, what, client_id, properties)
            .await;
    }

    /// [`Connection::refuse`] with CONNACK properties (a v5 reason string).
    async fn refuse_with(
        &mut self,
        connect: &Connect,
        reason: ReasonCode,
        what: &str,
        client_id: &str,
        properties: ConnAckProperties,
    ) {
        self.broker.stats.connect_refused(reason);
        if self.log_allowed() {
            tracing::info!(peer = %self.peer, client_id, listener = %self.listener.name, %reason, "connection refused: {what}");
        }
        let connack = ConnAck {
            session_present: false,
            reason_code: reason,
            properties,
        };
        let max = connect.properties.maximum_packet_size;
        let max = max.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
        let _ = Packet::ConnAck(connack).encode_within(connect.protocol, max, &mut self.wbuf);
        Box::pin(self.close()).await;
    }

    /// The SCRAM exchange of a CONNECT with an authentication method: the client-first
    /// message is CONNECT's Authentication Data; the server-first goes out in AUTH 0x18;
    /// the client-final must come back in AUTH 0x18 [MQTT-4.12.0-3] before `deadline`.
    /// Returns the identity and the server-final message for CONNACK; `Err(None)`: close
    /// without a CONNACK (the client left, went silent or disconnected).
    async fn scram_connect(
        &mut self,
        connect: &Connect,
        client_id: &str,
        mechanism: Mechanism,
        budget: &mut PreConnect,
        deadline: Instant,
    ) -> Result<(Identity, Vec<u8>), Option<Failure>> {
        let access = self.listener.access.clone();
        let data = connect.properties.authentication_data.as_deref();
        let (exchange, server_first) = access
            .scram_begin(mechanism, data, self.peer, connect.username.as_deref())
            .map_err(Some)?;
        let max = connect.properties.maximum_packet_size;
        let max = max.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
        if auth_packet(ReasonCode::CONTINUE_AUTHENTICATION, mechanism, server_first)
            .encode_within(ProtocolVersion::V5, max, &mut self.wbuf)
            .is_err()
        {
            return Err(Some(Failure {
                reason: ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                message: "AUTH exceeds the client's maximum packet size",
                counts: false,
            }));
        }
        if !self.write_out(deadline).await {
            return Err(None);
        }
        // Until CONNACK, the CONNECT limits apply to AUTH too.
        let mqtt = &self.listener.config.mqtt;
        self.decoder.set_max_packet_size(mqtt.connect_limit());
        let packet = Box::pin(self.read_pre_connack(budget, deadline)).await;
        self.decoder
            .set_max_packet_size(self.listener.config.mqtt.max_packet_size);
        let protocol_error = |message| {
            Some(Failure {
                reason: ReasonCode::PROTOCOL_ERROR,
                message,
                counts: false,
            })
        };
        match packet? {
            Packet::Auth(auth) => {
                if auth.properties.authentication_method.as_deref() != Some(mechanism.name()) {
                    self.protocol_error("AUTH without CONNECT's authentication method");
                    // [MQTT-4.12.0-5]
                    return Err(protocol_error(
                        "AUTH must carry the authentication method of CONNECT",
                    ));
                }
                if auth.reason_code != ReasonCode::CONTINUE_AUTHENTICATION {
                    self.protocol_error("AUTH during CONNECT is not 0x18");
                    // [MQTT-4.12.0-3]
                    return Err(protocol_error("the answer to AUTH 0x18 must be AUTH 0x18"));
                }
                let data = auth.properties.authentication_data.as_deref();
                access
                    .scram_finish(client_id, &exchange, data, self.peer)
                    .map_err(Some)
            }
            Packet::Disconnect(_) => Err(None),
            other => {
                self.protocol_error(&format!("{} during the AUTH exchange", other.name()));
                // [MQTT-3.1.2-30]
                Err(protocol_error(
                    "only AUTH or DISCONNECT may come before CONNACK when CONNECT has an authentication method",
                ))
            }
        }
    }

    /// Writes the write buffer out and flushes, before `deadline`; false if that fails.
    async fn write_out(&mut self, deadline: Instant) -> bool {
        let (writer, wbuf, stats) = (&mut self.stream, &mut self.wbuf, &self.broker.stats);
        let write = async {
            while !wbuf.is_empty() {
                match writer.write_buf(wbuf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => Stats::add(&stats.bytes_sent, n as u64),
                }
            }
            writer.flush().await.is_ok()
        };
        tokio::time::timeout_at(deadline, write)
            .await
            .unwrap_or(false)
    }

    /// Reads the next packet between CONNECT and CONNACK, within the pre-CONNECT budget
    /// and `deadline`. An undecodable packet is refused with its reason; end of stream,
    /// the deadline, the budget or shutdown close without a CONNACK (`Err(None)`).
    async fn read_pre_connack(
        &mut self,
        budget: &mut PreConnect,
        deadline: Instant,
    ) -> Result<Packet, Option<Failure>> {
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(packet)) => return Ok(packet),
                Ok(None) => {}
                Err(e) => {
                    self.protocol_error(&format!("bad packet during the AUTH exchange: {e}"));
                    return Err(Some(Failure {
                        reason: e.reason_code(),
                        message: "undecodable packet during the AUTH exchange",
                        counts: false,
                    }));
                }
            }
            let mut shutdown = self.listener.shutdown.clone();
            let read = tokio::select! {
                read = tokio::time::timeout_at(deadline, budget.read(&mut self.stream, &mut self.rbuf)) => read,
                _ = shutdown.changed() => return Err(None),
            };
            match read {
                Ok(pre_connect::Read::Closed) => return Err(None),
                Ok(pre_connect::Read::Bytes(n)) => {
                    Stats::add(&self.broker.stats.bytes_received, n as u64)
                }
                Ok(pre_connect::Read::OverBudget) => {
                    budget.count(Refused::OverBudget);
                    return Err(None);
                }
                Err(_) => {
                    budget.count(Refused::Timeout);
                    if self.log_allowed() {
                        tracing::info!(peer = %self.peer, listener = %self.listener.name, "closing connection: AUTH exchange not completed within mqtt.connect_timeout_secs");
                    }
                    return Err(None);
                }
            }
        }
    }

    /// AUTH on a live connection: re-authentication [MQTT-4.12.1-1]. AUTH 0x19 with
    /// CONNECT's method starts it (one at a time) and is answered with AUTH 0x18; the
    /// client's AUTH 0x18 finishes it, answered with AUTH 0x00 carrying the
    /// server-final message. Other packets go on meanwhile. A failed re-authentication
    /// closes with DISCONNECT 0x87 [MQTT-4.12.1-2]; AUTH without a method at CONNECT
    /// [MQTT-4.12.0-7], with another method, or out of turn is a protocol error.
    fn on_auth(&mut self, session: &mut Session, auth: Auth) -> Result<Flow, Violation> {
        let protocol_error = |message| Violation {
            reason: ReasonCode::PROTOCOL_ERROR,
            message,
        };
        let Some(enhanced) = self.login.as_deref_mut().and_then(|l| l.enhanced.as_mut()) else {
            return Err(protocol_error(
                "AUTH from a client that gave no authentication method at CONNECT",
            ));
        };
        let mechanism = enhanced.mechanism;
        if auth.properties.authentication_method.as_deref() != Some(mechanism.name()) {
            // 0x8C, which would fit, is not a DISCONNECT reason code.
            return Err(protocol_error(
                "AUTH must carry the authentication method of CONNECT",
            ));
        }
        let access = &self.listener.access;
        let data = auth.properties.authentication_data.as_deref();
        let failed = |failure: Failure| Violation {
            reason: match failure.reason {
                r @ (ReasonCode::CONNECTION_RATE_EXCEEDED | ReasonCode::PROTOCOL_ERROR) => r,
                _ => ReasonCode::NOT_AUTHORIZED,
            },
            message: failure.message,
        };
        let (reason, message) = match auth.reason_code {
            ReasonCode::RE_AUTHENTICATE => {
                if enhanced.pending.is_some() {
                    return Err(protocol_error("a re-authentication is already in progress"));
                }
                let (exchange, server_first) = access
                    .scram_begin(mechanism, data, self.peer, Some(&enhanced.username))
                    .map_err(failed)?;
                let timeout = Duration::from_secs(self.listener.config.mqtt.connect_timeout_secs);
                enhanced.pending = Some((exchange, Instant::now() + timeout));
                (ReasonCode::CONTINUE_AUTHENTICATION, server_first)
            }
            ReasonCode::CONTINUE_AUTHENTICATION => {
                let Some((exchange, _)) = enhanced.pending.take() else {
                    return Err(protocol_error(
                        "AUTH 0x18 with no authentication in progress",
                    ));
                };
                let (_, server_final) = access
                    .scram_finish(session.client_id(), &exchange, data, self.peer)
                    .map_err(failed)?;
                (ReasonCode::SUCCESS, server_final)
            }
            _ => return Err(protocol_error("a client sends AUTH 0x18 or 0x19 only")),
        };
        session.send(&auth_packet(reason, mechanism, message), &mut self.wbuf);
        Ok(Flow::Continue)
    }

    /// When a re-authentication in progress must be done by.
    fn reauth_deadline(&self) -> Option<Instant> {
        self.login
            .as_ref()?
            .enhanced
            .as_ref()?
            .pending
            .as_ref()
            .map(|(_, at)| *at)
    }

    /// When the login's credential expires, if it does.
    fn credential_deadline(&self) -> Option<Instant> {
        self.login.as_ref()?.credential_deadline
    }

    /// The login's rare parts, made when first needed.
    fn login_mut(&mut self) -> &mut Login {
        self.login.get_or_insert_with(Box::default)
    }

    /// Reads CONNECT and serves the connection to the end. The connect and end steps run in boxed
    /// futures of their own: only `run` is inline, so an idle connection's task is no
    /// bigger than what waiting needs.
    ///
    /// An `async move` block rather than an `async fn`, for the reason given at [`serve`]:
    /// the block uses the connection where it was captured. `held` is dropped with it.
    #[allow(clippy::manual_async_fn)] // deliberately not an async fn, see above
    fn serve_session(mut self, held: impl Send) -> impl Future<Output = ()> {
        async move {
            let _held = &held;
            let Some((mut session, keep_alive, connection_id)) = Box::pin(self.connect()).await
            else {
                return;
            };
            // A resumed session's record was taken when it resumed: written again. A
            // session without subscriptions has nothing to write yet.
            let state = session.state_mut();
            if state.subscriptions.is_empty() {
                state.subscriptions_recorded = state.subscription_changes;
            } else {
                self.broker.registry.record_connected(state);
            }
            let end = self.run(&mut session, keep_alive).await;
            Box::pin(self.finish(session, end, connection_id)).await;
        }
    }

    /// Reads CONNECT and establishes the session (see [`Connection::establish`]); closes
    /// the connection when no CONNECT is read. Until then the read buffer counts against
    /// the pre-CONNECT budget (CONNECT's fields may share its storage until
    /// authentication is done).
    async fn connect(&mut self) -> Option<(Session, u16, u64)> {
        let mut budget = PreConnect::new(&self.broker, &self.listener.config.mqtt);
        // One deadline for CONNECT and, with enhanced authentication, the AUTH exchange.
        let timeout = Duration::from_secs(self.listener.config.mqtt.connect_timeout_secs);
        let deadline = Instant::now() + timeout;
        let mut connect = match Box::pin(self.read_connect(&mut budget, deadline)).await {
            Ok(connect) => connect,
            Err(NoConnect::Close) => {
                drop(budget);
                Box::pin(self.close()).await;
                return None;
            }
            Err(NoConnect::Reset) => {
                self.stream.reset_on_close();
                return None;
            }
        };
        if self.listener.config.amqp.mqtt_dots_as_separators
            && let Some(will) = &mut connect.will
        {
            crate::amqp_queues::mapping::dots_to_slashes(&mut will.topic);
        }
        Box::pin(self.establish(connect, &mut budget, deadline)).await
    }

    /// Negotiates, authenticates and attaches the session; writes CONNACK. Returns the
    /// session, its keep alive and the connection id, or `None` after a refusal.
    async fn establish(
        &mut self,
        connect: Box<Connect>,
        budget: &mut PreConnect,
        deadline: Instant,
    ) -> Option<(Session, u16, u64)> {
        let broker = self.broker.clone();
        let mut negotiated = match negotiate(&connect, &self.listener.config.mqtt) {
            Ok(n) => n,
            Err(refusal) => {
                Box::pin(self.refuse(
                    &connect,
                    refusal.reason,
                    refusal.message,
                    &connect.client_id,
                ))
                .await;
                return None;
            }
        };
        if broker.memory.pressure() {
            // Over `limits.max_memory`: a new session would only add to it. Before
            // authentication, which may cost a password hash.
            Stats::add(&broker.memory.refused_connections, 1);
            Box::pin(self.refuse(
                &connect,
                ReasonCode::SERVER_BUSY,
                "memory budget exceeded (limits.max_memory)",
                &negotiated.client_id,
            ))
            .await;
            return None;
        }
        let authenticated = match connect.properties.authentication_method.as_deref() {
            None => {
                let credentials = Credentials {
                    client_id: &negotiated.client_id,
                    username: connect.username.as_deref(),
                    password: connect.password.as_deref(),
                    peer: self.peer,
                    certificate_identity: self
                        .login
                        .as_ref()
                        .and_then(|l| l.certificate_identity.as_deref()),
                };
                self.listener.access.authenticate(&credentials).await
            }
            Some(method) => {
                let Some(mechanism) = self.listener.access.scram_mechanism(method) else {
                    // [MQTT-4.12.0-1]
                    Box::pin(self.refuse(
                        &connect,
                        ReasonCode::BAD_AUTHENTICATION_METHOD,
                        "unsupported authentication method",
                        &negotiated.client_id,
                    ))
                    .await;
                    return None;
                };
                let exchange = self.scram_connect(
                    &connect,
                    &negotiated.client_id,
                    mechanism,
                    budget,
                    deadline,
                );
                match Box::pin(exchange).await {
                    Ok((identity, server_final)) => {
                        // [MQTT-4.12.0-5] the method again, with the server-final message.
                        negotiated.connack.authentication_method = Some(method.to_owned());
                        negotiated.connack.authentication_data = Some(server_final.into());
                        self.login_mut().enhanced = Some(EnhancedAuth {
                            mechanism,
                            username: identity.username.clone().unwrap_or_default(),
                            pending: None,
                        });
                        Ok(identity)
                    }
                    Err(Some(failed)) => {
                        let properties = ConnAckProperties {
                            reason_string: Some(failed.message.to_owned()),
                            ..ConnAckProperties::default()
                        };
                        Box::pin(self.refuse_with(
                            &connect,
                            failed.reason,
                            failed.message,
                            &negotiated.client_id,
                            properties,
                        ))
                        .await;
                        return None;
                    }
                    Err(None) => {
                        Box::pin(self.close()).await;
                        return None;
                    }
                }
            }
        };
        match authenticated {
            // ACLs see the authenticated name (a certificate identity replaces the
            // CONNECT user name).
            Ok(identity) => {
                negotiated.username = identity.username;
                if let Some(at) = identity.expires {
                    let left = at.duration_since(std::time::SystemTime::now());
                    self.login_mut().credential_deadline =
                        Some(Instant::now() + left.unwrap_or_default());
                }
            }
            Err(reason) => {
                Box::pin(self.refuse(
                    &connect,
                    reason,
                    "authentication failed",
                    &negotiated.client_id,
                ))
                .await;
                return None;
            }
        }
        // A verified certificate names the user: authorization and logs use that name,
        // not the one in CONNECT (Mosquitto's use_identity_as_username).
        if let Some(login) = &mut self.login
            && let Some(identity) = login.certificate_identity.take()
        {
            negotiated.username = Some(identity.into());
            if login.credential_deadline.is_none() && login.enhanced.is_none() {
                self.login = None;
            }
        }
        let connection_id = broker.next_connection_id();
        let client_id = negotiated.client_id.clone();
        let keep_alive = negotiated.keep_alive;
        let mut attached = broker
            .attach(
                client_id.clone(),
                negotiated.clean_start,
                connection_id,
                now_millis(),
            )
            .await;
        // A cluster node claims the client id cluster-wide (the holder elsewhere is told
        // to go, and hands its parked session over) before CONNACK; without NATS it
        // cannot, and serves no one as if alone.
        let claim = broker
            .registry
            .claim(&client_id, connection_id, negotiated.clean_start);
        let clustered = claim.is_some();
        if let Some(claim) = claim {
            match claim.await {
                Err(why) => {
                    broker.detach(connection_id, attached.state, None, now_millis());
                    Box::pin(self.refuse(
                        &connect,
                        ReasonCode::SERVER_UNAVAILABLE,
                        why,
                        &client_id,
                    ))
                    .await;
                    return None;
                }
                Ok(Some(handed)) if !negotiated.clean_start => {
                    if crate::cluster::sessions::install_encoded(
                        &broker,
                        &mut attached.state,
                        handed,
                    ) {
                        attached.session_present = true;
                    }
                }
                // A clean start discards the session the other node handed over.
                Ok(_) => {}
            }
        }
        // A cluster keeps the will beyond this node, so it is published even if the node
        // dies. Authorized now: another node publishing it has no connection to ask about.
        if clustered && let Some(will) = &connect.will {
            let authorized = self
                .listener
                .access
                .authorize_publish(&client_id, negotiated.username.as_deref(), &will.topic)
                .await;
            broker.registry.will_accepted(
                &client_id,
                connection_id,
                authorized.then_some(will),
                will.properties.will_delay_interval.unwrap_or(0),
                // Already capped by `max_session_expiry_secs`.
                negotiated.expiry_interval,
            );
        }
        // Everything needed from CONNECT is in `negotiated` now; its buffers need not
        // stay allocated for the life of the connection.
        drop(connect);
        let connack = ConnAck {
            session_present: attached.session_present,
            reason_code: ReasonCode::SUCCESS,
            properties: negotiated.connack.clone(),
        };
        tracing::debug!(
            peer = %self.peer,
            client_id = %client_id,
            username = %negotiated.username.as_deref().unwrap_or(""),
            protocol = ?negotiated.protocol,
            clean_start = negotiated.clean_start,
            session_present = attached.session_present,
            keep_alive,
            "client connected"
        );
        if self.listener.config.sys.client_events {
            crate::sys::client_event(
                &broker,
                &client_id,
                "connected",
                serde_json::json!({
                    "clientid": &*client_id,
                    "username": negotiated.username,
                    "ipaddress": self.peer.ip().to_string(),
                    "port": self.peer.port(),
                    "proto_ver": negotiated.protocol.level(),
                    "keepalive": keep_alive,
                    "clean_start": negotiated.clean_start,
                    "expiry_interval": negotiated.expiry_interval,
                    "connack": 0,
                    "connected_at": now_millis(),
                }),
            );
        }
        let mut session = Session::new(
            attached.state,
            negotiated,
            self.listener.config.mqtt.max_inflight,
        );
        if attached.session_present {
            LocalStats::kept_across(recheck_subscriptions(
                &self.listener,
                &self.broker,
                &mut session,
            ))
            .await;
        }
        session.start(connack, now_millis(), &mut self.wbuf);
        broker.stats.client_connected();
        let fresh_or_resumed = if attached.session_present {
            &broker.stats.sessions_resumed
        } else {
            &broker.stats.sessions_created
        };
        Stats::add(fresh_or_resumed, 1);
        Some((session, keep_alive, connection_id))
    }

    /// After `run`: parks or ends the session (handing on the will) and closes.
    async fn finish(&mut self, mut session: Session, end: End, connection_id: u64) {
        let broker = self.broker.clone();
        let client_id = session.client_id().clone();
        broker.stats.client_disconnected();
        session.flush_stats(&broker.stats, true);
        match &end {
            End::ClientDisconnect => tracing::debug!(client_id = %client_id, "client disconnected"),
            End::Abnormal(why) => {
                tracing::debug!(client_id = %client_id, "connection closed: {why}")
            }
            // Two clients with one id can take it from each other in a loop.
            End::TakenOver(_) if self.log_allowed() => {
                tracing::info!(client_id = %client_id, peer = %self.peer, "connection closed: session taken over by a new connection with the same client id")
            }
            End::Kicked { discard_session } => {
                tracing::info!(client_id = %client_id, peer = %self.peer, discard_session, "connection closed by an administrator")
            }
            End::TakenOver(_) => {}
        }
        if self.listener.config.sys.client_events {
            let reason = match &end {
                End::ClientDisconnect => "normal",
                End::Abnormal(why) => why,
                End::TakenOver(_) => "takenover",
                End::Kicked { .. } => "kicked",
            };
            crate::sys::client_event(
                &broker,
                &client_id,
                "disconnected",
                serde_json::json!({
                    "clientid": &*client_id,
                    "username": session.username(),
                    "reason": reason,
                    "disconnected_at": now_millis(),
                }),
            );
        }
        session.cap_expiry(self.listener.config.mqtt.max_session_expiry_secs);
        let will_delay = session.will_delay();
        let username = session.username().map(str::to_owned);
        let (mut state, will) = session.into_parts();
        if matches!(
            end,
            End::Kicked {
                discard_session: true
            }
        ) {
            // Expiry 0: the registry ends the session instead of parking it.
            state.expiry_interval = 0;
        }
        // The will's topic needs write access when the will is handed on, as Mosquitto
        // checks it when it sends the will; a refused will is dropped.
        let will = match will {
            Some(will)
                if !self
                    .listener
                    .access
                    .authorize_publish(&client_id, username.as_deref(), &will.topic)
                    .await =>
            {
                tracing::info!(client_id = %client_id, topic = %will.topic, "will not published: not authorized");
                Stats::add(&broker.stats.publish_denied, 1);
                None
            }
            will => will,
        };
        broker.detach(
            connection_id,
            state,
            will.map(|w| (w, will_delay)),
            now_millis(),
        );
        if let End::TakenOver(reply) = end {
            let _ = reply.send(());
        }
        self.close().await;
    }

    /// This connection for the admin API (`Control::Describe`).
    fn describe(&self, session: &Session, totals: &Totals) -> ConnectionDetail {
        // This thread's pending counts are this connection's: `describe` is called in
        // its turn, and every connection flushes before it awaits anything.
        let unflushed = LocalStats::peek();
        ConnectionDetail {
            peer: self.peer,
            listener: self.listener.name.clone(),
            protocol: match session.protocol() {
                ProtocolVersion::V31 => "3.1",
                ProtocolVersion::V311 => "3.1.1",
                ProtocolVersion::V5 => "5.0",
            },
            username: session.username().map(str::to_owned),
            keep_alive: totals.keep_alive,
            connected_at_ms: totals.connected_at_ms,
            bytes_received: totals.bytes_received + unflushed.bytes_received,
            bytes_sent: totals.bytes_sent + unflushed.bytes_sent,
            dropped: u64::from(totals.dropped)
                + u64::from(unflushed.publish_dropped + unflushed.publish_denied),
            inflight: session.state().inflight.len(),
            subscriptions: session.state().subscriptions.len(),
        }
    }

    /// Serves the session until the connection ends.
    ///
    /// Not an `async fn`, for the reason given at [`serve`]: its arguments would be kept
    /// in the future beside the locals, and this future is in every connection's task.
    #[allow(clippy::manual_async_fn)] // deliberately not an async fn, see above
    fn run<'a>(
        &'a mut self,
        session: &'a mut Session,
        keep_alive: u16,
    ) -> impl Future<Output = End> + 'a {
        async move {
            let mailbox = session.state().mailbox.clone();
            let mut totals = Totals {
                keep_alive,
                connected_at_ms: now_millis(),
                ..Totals::default()
            };
            let _forget = ForgetWaker(&mailbox);
            let mut last_read = Instant::now();
            // Boxed and only with a keep alive or a credential deadline: a `Sleep` is over 100
            // bytes, and inline it would be in every connection's task. It is reset, never
            // re-created; it wakes at whichever of the two comes first.
            // A re-authentication in progress has a deadline too (`reauth`).
            // The deadlines are read from `self` when needed, not copied here: every local kept
            // across an await is in every connection's task.
            let mut sleep = self
                .next_wake(keep_alive_limit(totals.keep_alive), last_read, None)
                .map(|at| Box::pin(tokio::time::sleep_until(at)));
            // Packets that came in the same read as CONNECT (a client may pipeline SUBSCRIBE
            // or PUBLISH right behind it) are handled now, not when more bytes arrive.
            if !self.rbuf.is_empty()
                && let Some(end) = self.process_input(session).await
            {
                return end;
            }
            // Shutdown wakes the mailbox of every attached session (`Registry::wake_owners`);
            // one that began before this connection attached is seen here.
            let mut woken = true;
            loop {
                if woken && *self.listener.shutdown.borrow() {
                    session.disconnect_packet(
                        ReasonCode::SERVER_SHUTTING_DOWN,
                        None,
                        &mut self.wbuf,
                    );
                    return End::Abnormal("server shutting down");
                }
                let high_water = if self.stalled {
                    STALLED_WATER
                } else {
                    WRITE_HIGH_WATER
                };
                // Most turns of this loop (a write done, a packet read) find nothing to send:
                // looked at without the mailbox's lock or the clock.
                if self.wbuf.len() < high_water && session.has_pending() {
                    session.pump(now_millis(), &mut self.wbuf, high_water);
                }
                totals.add(&session.flush_stats(&self.broker.stats, false));
                if session.take_settle() && !self.broker.store_is_settled() {
                    // [storage] durability = "sync": what we are about to send (PUBACK, PUBREC,
                    // PUBREL, QoS 2 PUBLISH with its packet id) never runs ahead of the store.
                    // Boxed: only a wait needs the future, and inline it would enlarge every
                    // connection's task.
                    Box::pin(self.broker.store_settled()).await;
                }
                // Empty buffers are released, so a waiting connection holds none; the read
                // buffer's storage lives on in payloads routed from it until they are sent.
                // Whatever their capacity: a buffer split or advanced to its end has none
                // left, yet still holds the allocation it was cut from (and the read
                // buffer, once split, a 40-byte shared header besides).
                if self.wbuf.is_empty() {
                    self.wbuf = BytesMut::new();
                } else if self.stalled
                    && self.wbuf.capacity() > 4 * STALLED_WATER.max(self.wbuf.len())
                {
                    // A stalled client keeps what is left of a large buffer for as long as it
                    // does not read: copy the rest into one of its size.
                    self.wbuf = BytesMut::from(&self.wbuf[..]);
                }
                if self.rbuf.is_empty() {
                    self.rbuf = BytesMut::new();
                }
                // What a client that does not read (the write buffer) or sends a large packet
                // (the read buffer) holds counts against `limits.max_memory` too.
                let buffers =
                    u32::try_from(self.rbuf.capacity() + self.wbuf.capacity()).unwrap_or(u32::MAX);
                if buffers != self.buffers_charged {
                    let before = std::mem::replace(&mut self.buffers_charged, buffers);
                    self.broker
                        .memory
                        .adjust(u64::from(before), u64::from(buffers));
                }
                woken = false;
                let event = std::future::poll_fn(|cx| {
                    self.poll_wait(cx, &mailbox, sleep.as_mut().map(|s| s.as_mut()))
                })
                .await;
                match event {
                    Wait::Written => {}
                    Wait::WriteFailed => return End::Abnormal("write failed"),
                    Wait::Read(Ok(0)) => {
                        return End::Abnormal("closed by the client without DISCONNECT");
                    }
                    Wait::Read(Err(_)) => return End::Abnormal("read failed"),
                    Wait::Read(Ok(n)) => {
                        LocalStats::count(|c| c.bytes_received += n as u64);
                        last_read = Instant::now();
                        if let Some(end) = self.process_input(session).await {
                            return end;
                        }
                        // A re-authentication begun: wake by its deadline (only then, so the
                        // timer is not reset for every read).
                        if let Some(at) = self.reauth_deadline()
                            && sleep.as_ref().is_none_or(|s| s.deadline() > at)
                        {
                            match &mut sleep {
                                Some(sleep) => sleep.as_mut().reset(at),
                                None => sleep = Some(Box::pin(tokio::time::sleep_until(at))),
                            }
                        }
                    }
                    Wait::Mailbox => {
                        woken = true;
                        if mailbox.take_recheck() {
                            if (self.listener.access)
                                .revoked(session.username(), totals.connected_at_ms)
                            {
                                tracing::info!(client_id = %session.client_id(), peer = %self.peer, "connection closed: dynamic security disabled or deleted its client");
                                session.disconnect_packet(
                                    ReasonCode::ADMINISTRATIVE_ACTION,
                                    None,
                                    &mut self.wbuf,
                                );
                                return End::Kicked {
                                    discard_session: false,
                                };
                            }
                            Box::pin(LocalStats::kept_across(recheck_subscriptions(
                                &self.listener,
                                &self.broker,
                                session,
                            )))
                            .await;
                        }
                        match mailbox.take_control() {
                            Some(Control::TakeOver(reply)) => {
                                // [MQTT-3.1.4-3]
                                session.disconnect_packet(
                                    ReasonCode::SESSION_TAKEN_OVER,
                                    None,
                                    &mut self.wbuf,
                                );
                                return End::TakenOver(reply);
                            }
                            Some(Control::Describe(reply)) => {
                                let _ = reply.send(self.describe(session, &totals));
                            }
                            Some(Control::Kick { discard_session }) => {
                                session.disconnect_packet(
                                    ReasonCode::ADMINISTRATIVE_ACTION,
                                    None,
                                    &mut self.wbuf,
                                );
                                return End::Kicked { discard_session };
                            }
                            None => {}
                        }
                    }
                    Wait::RateResumed => {
                        if let Some(end) = self.process_input(session).await {
                            return end;
                        }
                    }
                    Wait::KeepAlive => {
                        if self.rate.as_ref().is_some_and(|r| r.is_paused()) {
                            // Not reading is our doing, not the client's silence.
                            last_read = Instant::now();
                        }
                        if self
                            .credential_deadline()
                            .is_some_and(|at| Instant::now() >= at)
                        {
                            // MQTT 5 is told why (0xA0); an MQTT 3 connection is just closed.
                            tracing::info!(client_id = %session.client_id(), peer = %self.peer, "credential expired; connection closed");
                            session.disconnect_packet(
                                ReasonCode::MAXIMUM_CONNECT_TIME,
                                Some("credential expired"),
                                &mut self.wbuf,
                            );
                            return End::Abnormal("credential expired");
                        }
                        if self
                            .reauth_deadline()
                            .is_some_and(|at| Instant::now() >= at)
                        {
                            tracing::info!(client_id = %session.client_id(), peer = %self.peer, "re-authentication not completed in time; connection closed");
                            session.disconnect_packet(
                                ReasonCode::NOT_AUTHORIZED,
                                Some("re-authentication not completed in time"),
                                &mut self.wbuf,
                            );
                            return End::Abnormal("re-authentication not completed in time");
                        }
                        if keep_alive_limit(totals.keep_alive)
                            .is_some_and(|limit| last_read.elapsed() >= limit)
                        {
                            self.protocol_error("keep alive timeout");
                            session.disconnect_packet(
                                ReasonCode::KEEP_ALIVE_TIMEOUT,
                                None,
                                &mut self.wbuf,
                            );
                            return End::Abnormal("keep alive timeout");
                        }
                        match self.next_wake(
                            keep_alive_limit(totals.keep_alive),
                            last_read,
                            self.reauth_deadline(),
                        ) {
                            Some(at) => {
                                if let Some(sleep) = &mut sleep {
                                    sleep.as_mut().reset(at);
                                }
                            }
                            // Only a finished re-authentication's deadline had it armed.
                            None => sleep = None,
                        }
                    }
                }
            }
        }
    }

    /// When a serving connection must next wake without input: the keep-alive limit after
    /// `last_read`, the credential's expiry, or a re-authentication's deadline, whichever
    /// comes first.
    fn next_wake(
        &self,
        keep_alive: Option<Duration>,
        last_read: Instant,
        reauth: Option<Instant>,
    ) -> Option<Instant> {
        [
            keep_alive.map(|limit| last_read + limit),
            self.credential_deadline(),
            reauth,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Polls, in this order, what a serving connection waits for: writing out the
    /// buffer (then flushing), input (unless the client's responses pile up unread, see
    /// [`READ_PAUSE`]), the mailbox, and the keep-alive deadline. By hand rather than with
    /// `select!` over futures: nothing here needs state kept between polls, so an idle
    /// connection's task holds none.
    fn poll_wait(
        &mut self,
        cx: &mut Context<'_>,
        mailbox: &Mailbox,
        sleep: Option<Pin<&mut tokio::time::Sleep>>,
    ) -> Poll<Wait> {
        if !self.wbuf.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf) {
                Poll::Ready(written) => {
                    return Poll::Ready(match written {
                        Ok(0) | Err(_) => Wait::WriteFailed,
                        Ok(n) => {
                            self.stalled = n < self.wbuf.len();
                            self.wbuf.advance(n);
                            LocalStats::count(|c| c.bytes_sent += n as u64);
                            // All of it went: flush in the same turn rather than the next
                            // (for plain TCP a flush does nothing; at device rates every
                            // message is a write of its own).
                            self.unflushed = !self.wbuf.is_empty()
                                || !matches!(
                                    Pin::new(&mut self.stream).poll_flush(cx),
                                    Poll::Ready(Ok(()))
                                );
                            Wait::Written
                        }
                    });
                }
                // The socket is full: the client is not keeping up.
                Poll::Pending => self.stalled = true,
            }
        } else if self.unflushed
            && let Poll::Ready(flushed) = Pin::new(&mut self.stream).poll_flush(cx)
        {
            self.unflushed = false;
            return Poll::Ready(match flushed {
                Ok(()) => Wait::Written,
                Err(_) => Wait::WriteFailed,
            });
        }
        let throttle = match &mut self.rate {
            Some(rate) => rate.poll(cx),
            None => Throttle::Open,
        };
        if throttle == Throttle::Resumed {
            return Poll::Ready(Wait::RateResumed);
        }
        if self.wbuf.len() < READ_PAUSE
            && throttle == Throttle::Open
            && let Poll::Ready(read) = poll_read_into(&mut self.stream, &mut self.rbuf, cx)
        {
            return Poll::Ready(Wait::Read(read));
        }
        if mailbox.poll_notified(cx).is_ready() {
            return Poll::Ready(Wait::Mailbox);
        }
        if let Some(sleep) = sleep
            && sleep.poll(cx).is_ready()
        {
            return Poll::Ready(Wait::KeepAlive);
        }
        Poll::Pending
    }

    /// Handles the complete packets in the read buffer. Not an `async fn`: the future it
    /// returns is ready at once unless a packet must wait, and only then holds a boxed one
    /// (see [`Connection::process_now`]), so awaiting it adds a pointer to the task.
    fn process_input<'a>(
        &'a mut self,
        session: &'a mut Session,
    ) -> ProcessInput<impl Future<Output = Option<End>> + 'a> {
        match self.process_now(session) {
            Ok(end) => ProcessInput::Done(end.map(Box::new)),
            Err(waiting) => ProcessInput::Waiting(Box::pin(self.process_waiting(session, waiting))),
        }
    }

    /// Decodes and handles the complete packets in the read buffer for as long as none
    /// must wait. `Err` says what waits: a packet's topic check by an HTTP service, or the
    /// worker to be given up (see [`YIELD_AFTER`]); [`Connection::process_waiting`], boxed,
    /// then carries on. So waiting is never inline in the connection's task, whose every
    /// byte is in every connection (see "Memory per connection" in ARCHITECTURE.md).
    fn process_now(&mut self, session: &mut Session) -> Result<Option<End>, Waiting> {
        let checks_wait = self.listener.access.topic_checks_wait();
        let mut handled_here = 0u32;
        let mut since: Option<Instant> = None;
        loop {
            let packet = match self.next_packet(session) {
                Ok(Some(packet)) => packet,
                Ok(None) => return Ok(None),
                Err(end) => return Ok(Some(end)),
            };
            match self.dispatch(session, packet, checks_wait) {
                Ok(Dispatch::Authorize(pending)) if checks_wait => {
                    return Err(Waiting::Authorize(Box::new(pending)));
                }
                dispatched => {
                    let handled = self.handle_now(session, dispatched);
                    if let Some(end) = self.handled(session, handled) {
                        return Ok(Some(end));
                    }
                }
            }
            if self.rate.as_ref().is_some_and(|r| r.is_paused()) {
                // Over its publish rate: the rest waits in the read buffer (see
                // `publish_rate`).
                return Ok(None);
            }
            // A client that sends packets faster than they are handled gives up its
            // worker every so often instead of holding it for a whole buffer of them (up to
            // 64 KiB of costly SUBSCRIBE/UNSUBSCRIBE packets): every 64 packets it looks at
            // the clock, and past 1 ms it yields. Cheap packets (a saturated publisher's)
            // never get there, so their batches stay whole.
            handled_here += 1;
            if handled_here.is_multiple_of(YIELD_EVERY_PACKETS)
                && since.get_or_insert_with(Instant::now).elapsed() >= YIELD_AFTER
            {
                return Err(Waiting::Yield);
            }
        }
    }

    /// Waits for what [`Connection::process_now`] stopped at, then handles the rest of the
    /// read buffer the same way.
    async fn process_waiting(
        &mut self,
        session: &mut Session,
        mut waiting: Waiting,
    ) -> Option<End> {
        loop {
            match waiting {
                // The packets handled so far were counted on this thread: kept aside
                // while other connections run here (see `LocalStats`).
                Waiting::Yield => LocalStats::kept_across(tokio::task::yield_now()).await,
                Waiting::Authorize(pending) => {
                    let authorized = LocalStats::kept_across(authorize(
                        self.listener.clone(),
                        session.client_id().clone(),
                        session.username().map(str::to_owned),
                        *pending,
                    ))
                    .await;
                    let handled = self.complete(session, authorized);
                    if let Some(end) = self.handled(session, handled) {
                        return Some(end);
                    }
                    if self.rate.as_ref().is_some_and(|r| r.is_paused()) {
                        return None;
                    }
                }
            }
            waiting = match self.process_now(session) {
                Ok(end) => return end,
                Err(waiting) => waiting,
            };
        }
    }

    /// The next complete packet in the read buffer; an undecodable one ends the
    /// connection. Inlined for the same reason as [`Connection::dispatch`].
    #[inline(always)]
    fn next_packet(&mut self, session: &mut Session) -> Result<Option<Packet>, End> {
        match self.decoder.decode(&mut self.rbuf) {
            Ok(Some(packet)) => {
                LocalStats::count(|c| c.packets_received += 1);
                Ok(Some(packet))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                let violation = Violation {
                    reason: error.reason_code(),
                    message: "undecodable packet",
                };
                self.protocol_error(&format!("client {}: {error}", session.client_id()));
                session.disconnect_packet(violation.reason, None, &mut self.wbuf);
                Err(End::Abnormal("malformed packet"))
            }
        }
    }

    /// What a handled packet means for the connection.
    fn handled(&mut self, session: &mut Session, handled: Result<Flow, Violation>) -> Option<End> {
        let state = session.state();
        if state.subscription_changes != state.subscriptions_recorded {
            self.broker.registry.record_connected(session.state_mut());
        }
        match handled {
            Ok(Flow::Continue) => None,
            Ok(Flow::Disconnect) => Some(End::ClientDisconnect),
            Ok(Flow::Close(why)) => Some(End::Abnormal(why)),
            Err(violation) => {
                self.violation(session, &violation);
                Some(End::Abnormal("protocol violation"))
            }
        }
    }

    /// A PUBLISH over the connection's rate with `limits.publish_rate_action =
    /// "disconnect"`: it is not handled, and the connection closes, MQTT 5 with 0x96.
    #[cold]
    fn over_publish_rate(&mut self, session: &mut Session) -> Flow {
        Stats::add(&self.broker.stats.publish_rate_disconnected, 1);
        if self.log_allowed() {
            tracing::info!(client_id = %session.client_id(), peer = %self.peer, listener = %self.listener.name, "closing connection: over its publish rate (limits.publish_rate_action = \"disconnect\")");
        }
        session.disconnect_packet(ReasonCode::MESSAGE_RATE_TOO_HIGH, None, &mut self.wbuf);
        Flow::Close("publish rate exceeded")
    }

    fn violation(&mut self, session: &mut Session, violation: &Violation) {
        self.protocol_error(&format!(
            "client {}: {} ({})",
            session.client_id(),
            violation.message,
            violation.reason
        ));
        session.disconnect_packet(violation.reason, Some(violation.message), &mut self.wbuf);
    }

    /// Handles one packet, or, for PUBLISH and SUBSCRIBE, takes it as far as the
    /// authorization verdict it needs. A PUBLISH whose verdict needs no waiting is
    /// finished here: wrapping it in `Pending` and `Authorized` moved the resolved
    /// publish three more times per message (measured: 5 % CPU per message on saturated
    /// QoS 0 pairs). Inlined into `process_input`: out of line, the decoded packet and
    /// the result were copied across the call (another 4 % on the same benchmark).
    #[inline(always)]
    fn dispatch(
        &mut self,
        session: &mut Session,
        mut packet: Packet,
        checks_wait: bool,
    ) -> Result<Dispatch, Violation> {
        if self.listener.config.amqp.mqtt_dots_as_separators {
            crate::amqp_queues::mapping::dots_as_separators(&mut packet);
        }
        match packet {
            Packet::Publish(publish) => {
                if let Some(rate) = &mut self.rate {
                    match rate.publish(publish.payload.len()) {
                        Over::No => {}
                        Over::Paused => Stats::add(&self.broker.stats.publish_rate_throttled, 1),
                        Over::Disconnect => {
                            return Ok(Dispatch::Handled(self.over_publish_rate(session)));
                        }
                    }
                }
                let resolved =
                    session.resolve_publish(publish, &self.broker.env(&self.listener.config))?;
                if checks_wait {
                    return Ok(Dispatch::Authorize(Pending::Publish(resolved)));
                }
                let allowed = self.listener.access.authorize_publish_now(
                    session.client_id(),
                    session.username(),
                    resolved.topic(),
                );
                Ok(Dispatch::Handled(self.publish(session, resolved, allowed)))
            }
            Packet::Subscribe(subscribe) => Ok(Dispatch::Authorize(Pending::Subscribe(subscribe))),
            Packet::Unsubscribe(unsubscribe) if self.listener.access.checks_unsubscribe() => {
                let access = &self.listener.access;
                let allowed: Vec<bool> = (unsubscribe.filters.iter())
                    .map(|f| access.authorize_unsubscribe(session.username(), f))
                    .collect();
                session.unsubscribe_authorized(
                    unsubscribe,
                    &allowed,
                    &self.broker.env(&self.listener.config),
                    &mut self.wbuf,
                );
                Ok(Dispatch::Handled(Flow::Continue))
            }
            Packet::Auth(auth) => self.on_auth(session, auth).map(Dispatch::Handled),
            other => session
                .handle(
                    other,
                    &self.broker.env(&self.listener.config),
                    &mut self.wbuf,
                )
                .map(Dispatch::Handled),
        }
    }

    /// Finishes what [`Connection::dispatch`] started, authorizing with the ACL file alone.
    fn handle_now(
        &mut self,
        session: &mut Session,
        dispatched: Result<Dispatch, Violation>,
    ) -> Result<Flow, Violation> {
        match dispatched? {
            Dispatch::Handled(flow) => Ok(flow),
            Dispatch::Authorize(pending) => {
                let authorized = authorize_now(&self.listener.access, session, pending);
                self.complete(session, authorized)
            }
        }
    }

    /// Finishes a PUBLISH or SUBSCRIBE with its verdict.
    fn complete(
        &mut self,
        session: &mut Session,
        authorized: Authorized,
    ) -> Result<Flow, Violation> {
        match authorized {
            Authorized::Publish(resolved, allowed) => Ok(self.publish(session, resolved, allowed)),
            Authorized::Subscribe(subscribe, verdicts) => {
                self.subscribe(session, subscribe, verdicts)
            }
        }
    }

    /// A dynamic-security command (an authorized PUBLISH to its topic) is not routed: it
    /// runs, in order, on the blocking pool; then every connection checks its user and
    /// subscriptions again (if something changed) and the reply is published on the
    /// response topic, as the plugin does. A QoS 2 PUBLISH sent again is not run again.
    fn dynsec_command(&self, session: &Session, resolved: &mut ResolvedPublish) {
        let Some(dynsec) = self.listener.access.dynsec_command(resolved.topic()) else {
            return;
        };
        let repeated = resolved.qos() == midge_proto::QoS::ExactlyOnce
            && (session.state().awaiting_pubrel).contains_key(&resolved.packet_id());
        resolved.take_by_broker();
        if repeated {
            return;
        }
        let broker = self.broker.clone();
        let caller = format!(
            "{}/{}",
            session.client_id(),
            session.username().unwrap_or_default()
        );
        dynsec.submit(resolved.payload().to_vec(), caller, move |outcome| {
            if outcome.changed {
                broker.access_changed();
            }
            let mut reply = Message::internal(
                RESPONSE_TOPIC.to_owned(),
                outcome.response.into(),
                false,
                now_millis(),
            );
            reply.qos = midge_proto::QoS::AtLeastOnce;
            broker.publish(reply);
        });
    }

    /// Publishes with its authorization verdict.
    fn publish(
        &mut self,
        session: &mut Session,
        mut resolved: ResolvedPublish,
        allowed: bool,
    ) -> Flow {
        if allowed {
            self.dynsec_command(session, &mut resolved);
        }
        session.publish(
            resolved,
            allowed,
            &self.broker.env(&self.listener.config),
            now_millis(),
            &mut self.wbuf,
        )
    }

    /// Subscribes with one authorization verdict per filter.
    fn subscribe(
        &mut self,
        session: &mut Session,
        subscribe: Subscribe,
        verdicts: Vec<FilterVerdict>,
    ) -> Result<Flow, Violation> {
        if verdicts.contains(&FilterVerdict::Partly) {
            // Set before SUBACK's retained messages are pumped, so they are checked too.
            let access = &self.listener.access;
            let filter = access.delivery_filter(session.client_id().clone(), session.username());
            session.filter_deliveries(filter);
        }
        let granted: Vec<bool> = verdicts
            .iter()
            .map(|v| *v != FilterVerdict::Denied)
            .collect();
        session.subscribe(
            subscribe,
            &granted,
            &self.broker.env(&self.listener.config),
            now_millis(),
            &mut self.wbuf,
        )?;
        Ok(Flow::Continue)
    }

    /// Writes what is left (a CONNACK, a DISCONNECT), bounded in time, and closes.
    ///
    /// A socket closed with input unread resets the connection, and a client still writing
    /// (the rest of a packet too large, say) then gets the reset and may never read the
    /// reason it was sent. So, when there was something to say: write it, shut down
    /// writing (FIN after the data), and read and discard until the client closes too,
    /// within [`CLOSE_DRAIN_TIMEOUT`] and [`CLOSE_DRAIN_BYTES`], before closing.
    async fn close(&mut self) {
        // Acknowledgements in the buffer wait for the store as in `run`; if it does not
        // commit in time they are not sent, and the client resends.
        let settled = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, self.broker.store_settled());
        if settled.await.is_err() {
            self.wbuf.clear();
        }
        let drain = !self.wbuf.is_empty();
        let flush = async {
            while !self.wbuf.is_empty() {
                match self.stream.write_buf(&mut self.wbuf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => Stats::add(&self.broker.stats.bytes_sent, n as u64),
                }
            }
            let _ = self.stream.shutdown().await;
        };
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, flush).await;
        if drain {
            self.drain().await;
        }
    }

    /// Reads and discards input until the client closes, the budget is spent or the
    /// server shuts down (which does not wait for clients).
    async fn drain(&mut self) {
        let mut shutdown = self.listener.shutdown.clone();
        if *shutdown.borrow() {
            return;
        }
        let (reader, rbuf, stats) = (&mut self.stream, &mut self.rbuf, &self.broker.stats);
        let discard = async {
            let mut budget = CLOSE_DRAIN_BYTES;
            loop {
                rbuf.clear();
                match std::future::poll_fn(|cx| poll_read_into(reader, rbuf, cx)).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        Stats::add(&stats.bytes_received, n as u64);
                        budget = match budget.checked_sub(n) {
                            Some(left) if left > 0 => left,
                            _ => return,
                        };
                    }
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(CLOSE_DRAIN_TIMEOUT, discard) => {}
            _ = shutdown.changed() => {}
        }
        self.rbuf = BytesMut::new();
    }
}

/// What [`Connection::dispatch`] did with a packet.
#[allow(
    clippy::large_enum_variant,
    reason = "returned and taken apart at once; boxing would allocate for every PUBLISH"
)]
enum Dispatch {
    /// Handled completely.
    Handled(Flow),
    /// Needs an authorization verdict first.
    Authorize(Pending),
}

/// A PUBLISH or SUBSCRIBE waiting for its authorization verdict.
enum Pending {
    Publish(ResolvedPublish),
    Subscribe(Subscribe),
}

/// A [`Pending`] packet with its verdict.
enum Authorized {
    Publish(ResolvedPublish, bool),
    /// One verdict per filter, in order.
    Subscribe(Subscribe, Vec<FilterVerdict>),
}

/// An AUTH packet of `mechanism` carrying `data`.
fn auth_packet(reason: ReasonCode, mechanism: Mechanism, data: Vec<u8>) -> Packet {
    Packet::Auth(Auth {
        reason_code: reason,
        properties: AuthProperties {
            authentication_method: Some(mechanism.name().to_owned()),
            authentication_data: Some(data.into()),
            ..AuthProperties::default()
        },
    })
}

/// Authorizes with the ACL file alone, no waiting: for listeners without HTTP topic
/// checks.
fn authorize_now(access: &AccessControl, session: &Session, pending: Pending) -> Authorized {
    let (client_id, username) = (session.client_id(), session.username());
    match pending {
        Pending::Publish(resolved) => {
            let allowed = access.authorize_publish_now(client_id, username, resolved.topic());
            Authorized::Publish(resolved, allowed)
        }
        Pending::Subscribe(subscribe) => {
            let verdicts = subscribe
                .filters
                .iter()
                .map(|(filter, _)| access.authorize_subscribe_now(client_id, username, filter))
                .collect();
            Authorized::Subscribe(subscribe, verdicts)
        }
    }
}

/// Authorizes, waiting for the HTTP service where it decides. It owns what it needs (a
/// rare path: the clones cost nothing next to an HTTP request), and the packet is moved in
/// and comes back with its verdict, so the caller's future holds only this boxed one while
/// it waits.
async fn authorize(
    listener: Arc<ListenerContext>,
    client_id: Arc<str>,
    username: Option<String>,
    pending: Pending,
) -> Authorized {
    let (access, username) = (&listener.access, username.as_deref());
    let client_id = &*client_id;
    match pending {
        Pending::Publish(resolved) => {
            let allowed = access
                .authorize_publish(client_id, username, resolved.topic())
                .await;
            Authorized::Publish(resolved, allowed)
        }
        Pending::Subscribe(subscribe) => {
            let mut verdicts = Vec::with_capacity(subscribe.filters.len());
            for (filter, _) in &subscribe.filters {
                verdicts.push(
                    access
                        .authorize_subscribe(client_id, username, filter)
                        .await,
                );
            }
            Authorized::Subscribe(subscribe, verdicts)
        }
    }
}

/// A resumed session's subscriptions were granted to an earlier connection, perhaps
/// under another user name or ACL, and a live session's were granted under the ACL
/// before a reload: each is checked again, and those now refused are dropped before
/// anything more is delivered. (A free function: the connection's
/// stream halves need not be `Sync`.)
async fn recheck_subscriptions(listener: &ListenerContext, broker: &Broker, session: &mut Session) {
    let access = &listener.access;
    if !access.checks_topics() {
        return;
    }
    let filters: Vec<String> = session.state().subscriptions.keys().cloned().collect();
    let mut dropped = false;
    for filter in filters {
        match access
            .authorize_subscribe(session.client_id(), session.username(), &filter)
            .await
        {
            FilterVerdict::Allowed => {}
            FilterVerdict::Partly => {
                let check = access.delivery_filter(session.client_id().clone(), session.username());
                session.filter_deliveries(check);
            }
            FilterVerdict::Denied => {
                tracing::info!(client_id = %session.client_id(), %filter, "resumed subscription dropped: no longer authorized");
                session.drop_subscription(&filter, &broker.env(&listener.config));
                dropped = true;
            }
        }
    }
    if dropped {
        session.forget_unmatched_deliveries();
    }
}
