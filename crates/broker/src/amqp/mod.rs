//! AMQP 0-9-1 clients on the same broker, as RabbitMQ's MQTT plugin pairs them: the
//! `amq.topic` exchange is the MQTT topic space ([`mapping`](crate::amqp_queues::mapping)), a queue is a mailbox that
//! routing delivers to like an MQTT session's ([`amqp_queues`](crate::amqp_queues)), and the default exchange `""`
//! puts a message straight into the queue its routing key names.
//!
//! One task per connection, like MQTT's: the protocol header, connection.start/tune/open
//! (PLAIN and AMQPLAIN checked by the listener's `AccessControl`), then frames in and
//! deliveries out. What is not built yet is refused with 540 NOT_IMPLEMENTED and a reply
//! text that names it; nothing is acknowledged that was not done.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use midge_amqp_proto::{
    self as wire, ContentHeader, DecodeError, FieldTable, FieldValue, Frame, FramePayload,
    HeaderCheck, Method, PROTOCOL_HEADER, reply,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::amqp_queues::connections::ConnectionInfo;
use crate::amqp_queues::mapping;
use crate::amqp_queues::{Declared, Grant, Queue, QueueArgs, QueueFlags, Queues};
use crate::auth::{AccessControl, Credentials, FilterVerdict, Identity};
use crate::broker::Broker;
use crate::mailbox::{Inbox, PushOutcome, Queued};
use crate::model::{Delivery, now_millis};
use crate::stats::Stats;

/// Largest frame midge accepts and proposes (RabbitMQ's default).
const FRAME_MAX: u32 = 131_072;
/// Highest channel number midge proposes (RabbitMQ's default).
const CHANNEL_MAX: u16 = 2047;
/// Heartbeat interval midge proposes, in seconds (RabbitMQ's default).
const HEARTBEAT: u16 = 60;
/// Deliveries written per wake-up before reading again, so one busy queue cannot starve
/// the socket's reads.
const PUMP_BATCH: usize = 256;
/// How long a connection.close waits for close-ok.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// What an AMQP listener shares with its connections.
#[derive(Debug)]
pub struct AmqpContext {
    /// Listener name, for logs.
    pub name: String,
    /// The listener's authentication and ACLs.
    pub access: AccessControl,
    /// Queues, shared by every AMQP listener of the server.
    pub queues: Arc<Queues>,
    /// The configuration its connections are accepted under (a reload gives new
    /// connections a new one).
    pub config: Arc<crate::config::Config>,
}

/// An error that closes a channel or the whole connection.
#[derive(Debug)]
enum Fault {
    Channel(u16, String),
    Connection(u16, String),
}

type Outcome = Result<(), Fault>;

/// Where a published message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Routed {
    /// At least one queue or subscriber took it.
    Taken,
    /// Nothing it was for (basic.return when mandatory; confirmed).
    Unroutable,
    /// The queue it was for refused it (full with reject-publish): nacked.
    Rejected,
}

fn channel_fault(code: u16, text: impl Into<String>) -> Fault {
    Fault::Channel(code, text.into())
}

/// A message being received: basic.publish, then its header, then its body frames.
#[derive(Debug)]
struct Incoming {
    exchange: String,
    routing_key: String,
    mandatory: bool,
    header: Option<ContentHeader>,
    body: BytesMut,
}

#[derive(Debug)]
struct Consumer {
    tag: String,
    queue: Arc<Queue>,
    no_ack: bool,
}

#[derive(Debug)]
struct Unacked {
    queue: Arc<Queue>,
    queued: Queued,
}

#[derive(Debug, Default)]
struct Channel {
    /// channel.close sent; everything but close and close-ok is ignored until close-ok.
    closing: bool,
    consumers: Vec<Consumer>,
    /// Where the round robin over consumers resumes.
    next_consumer: usize,
    next_delivery_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
    prefetch: u16,
    /// Publisher confirms on: the sequence number of the last publish.
    confirms: Option<u64>,
    incoming: Option<Incoming>,
    /// Confirms to send once the store has settled: (tag, ack; false: nack).
    pending_acks: Vec<(u64, bool)>,
}

/// Serves one AMQP connection until it ends. `held` (the connection permit) is released
/// when it returns.
#[allow(clippy::too_many_arguments)]
pub async fn serve<R, W>(
    mut reader: R,
    writer: W,
    peer: SocketAddr,
    context: Arc<AmqpContext>,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
    held: impl Send,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _held = held;
    let id = broker.next_connection_id();
    let mut conn = Connection {
        writer,
        out: BytesMut::with_capacity(4096),
        broker: broker.clone(),
        context,
        id,
        client_id: Arc::from(format!("amqp-{id}")),
        identity: None,
        peer,
        frame_max: FRAME_MAX,
        channel_max: CHANNEL_MAX,
        heartbeat: 0,
        channels: HashMap::new(),
        info: None,
    };
    let mut buf = BytesMut::with_capacity(4096);
    let timeout = Duration::from_secs(conn.context.config.mqtt.connect_timeout_secs.max(1));
    let opened = tokio::select! {
        r = tokio::time::timeout(timeout, conn.open(&mut reader, &mut buf)) => r.unwrap_or(Ok(false)),
        _ = shutdown.changed() => Ok(false),
    };
    match opened {
        Ok(true) => {}
        Ok(false) => return,
        Err(fault) => {
            conn.fail(&mut reader, &mut buf, fault).await;
            return;
        }
    }
    broker.stats.client_connected();
    let info = Arc::new(ConnectionInfo {
        client_id: conn.client_id.clone(),
        peer,
        listener: conn.context.name.clone(),
        username: conn.username(),
        connected_at_ms: now_millis(),
        heartbeat: conn.heartbeat,
        bytes_received: Default::default(),
        bytes_sent: Default::default(),
        channels: Default::default(),
    });
    conn.context.queues.connections.add(id, info.clone());
    conn.info = Some(info);
    tracing::debug!(listener = %conn.context.name, %peer, connection = id, "AMQP connection open");
    let ended = conn.run(&mut reader, &mut buf, &mut shutdown).await;
    if let Err(fault) = ended {
        conn.fail(&mut reader, &mut buf, fault).await;
    }
    conn.release_all();
    conn.context.queues.connection_closed(&broker, id);
    conn.context.queues.connections.remove(id);
    broker.stats.client_disconnected();
}

struct Connection<W> {
    writer: W,
    out: BytesMut,
    broker: Arc<Broker>,
    context: Arc<AmqpContext>,
    id: u64,
    /// The id ACL rules see (`%c`).
    client_id: Arc<str>,
    identity: Option<Identity>,
    peer: SocketAddr,
    frame_max: u32,
    channel_max: u16,
    heartbeat: u16,
    channels: HashMap<u16, Channel>,
    /// What the admin API shows of it, once open.
    info: Option<Arc<ConnectionInfo>>,
}

/// Reads one frame, waiting for more bytes as needed. `Ok(None)`: the peer closed.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    frame_max: u32,
) -> Result<Option<Frame>, Fault> {
    loop {
        match wire::decode_frame(buf, frame_max) {
            Ok(Some(frame)) => return Ok(Some(frame)),
            Ok(None) => {}
            Err(e) => return Err(decode_fault(&e)),
        }
        match reader.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

fn decode_fault(e: &DecodeError) -> Fault {
    Fault::Connection(e.reply_code(), e.to_string())
}

/// Reply texts carry RabbitMQ's prefix: the code's name, then what was wrong.
fn reply_text(code: u16, text: &str) -> String {
    let name = match code {
        reply::CONTENT_TOO_LARGE => "CONTENT_TOO_LARGE",
        reply::NO_ROUTE => "NO_ROUTE",
        reply::CONNECTION_FORCED => "CONNECTION_FORCED",
        reply::ACCESS_REFUSED => "ACCESS_REFUSED",
        reply::NOT_FOUND => "NOT_FOUND",
        reply::RESOURCE_LOCKED => "RESOURCE_LOCKED",
        reply::PRECONDITION_FAILED => "PRECONDITION_FAILED",
        reply::FRAME_ERROR => "FRAME_ERROR",
        reply::SYNTAX_ERROR => "SYNTAX_ERROR",
        reply::COMMAND_INVALID => "COMMAND_INVALID",
        reply::CHANNEL_ERROR => "CHANNEL_ERROR",
        reply::UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
        reply::RESOURCE_ERROR => "RESOURCE_ERROR",
        reply::NOT_ALLOWED => "NOT_ALLOWED",
        reply::NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
        _ => "ERROR",
    };
    format!("{name} - {text}")
}

impl<W: AsyncWrite + Unpin> Connection<W> {
    async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let ok =
            self.writer.write_all(&self.out).await.is_ok() && self.writer.flush().await.is_ok();
        Stats::add(&self.broker.stats.bytes_sent, self.out.len() as u64);
        if let Some(info) = &self.info {
            ConnectionInfo::add(&info.bytes_sent, self.out.len() as u64);
        }
        self.out.clear();
        ok
    }

    fn send(&mut self, channel: u16, method: &Method) {
        wire::encode_method(channel, method, &mut self.out);
    }

    /// The header exchange, connection.start/tune/open. `Ok(false)`: ended without error
    /// to report (wrong header answered, peer gone, refused login answered).
    async fn open<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        buf: &mut BytesMut,
    ) -> Result<bool, Fault> {
        loop {
            match wire::check_protocol_header(buf) {
                HeaderCheck::Ok => break,
                HeaderCheck::Wrong => {
                    // Spec 4.2.2: answer with the header we speak, then close.
                    Stats::add(&self.broker.stats.protocol_errors, 1);
                    self.out.extend_from_slice(&PROTOCOL_HEADER);
                    self.flush().await;
                    return Ok(false);
                }
                HeaderCheck::NeedMore => {}
            }
            match reader.read_buf(buf).await {
                Ok(0) | Err(_) => return Ok(false),
                Ok(_) => {}
            }
        }
        let _ = buf.split_to(PROTOCOL_HEADER.len());
        let mut server_properties = FieldTable::default();
        let mut capabilities = FieldTable::default();
        for cap in [
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "authentication_failure_close",
            "per_consumer_qos",
        ] {
            capabilities.insert(cap, FieldValue::Bool(true));
        }
        server_properties.insert("capabilities", FieldValue::Table(capabilities));
        server_properties.insert("product", FieldValue::string("midge"));
        server_properties.insert("version", FieldValue::string(env!("CARGO_PKG_VERSION")));
        server_properties.insert("platform", FieldValue::string("Rust"));
        self.send(
            0,
            &Method::ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties,
                mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN"),
                locales: Bytes::from_static(b"en_US"),
            },
        );
        self.flush().await;
        // Until tune-ok, frames are at most the spec's minimum frame-max (4.2.1), which
        // also bounds what an unauthenticated client makes midge buffer.
        let Some(frame) = read_frame(reader, buf, wire::FRAME_MIN_SIZE).await? else {
            return Ok(false);
        };
        let (mechanism, response) = match (frame.channel, frame.payload) {
            (
                0,
                FramePayload::Method(Method::ConnectionStartOk {
                    mechanism,
                    response,
                    ..
                }),
            ) => (mechanism, response),
            (_, payload) => return Err(unexpected(&payload, "connection.start-ok")),
        };
        let (username, password) = credentials(&mechanism, &response)?;
        match self.authenticate(username, password).await {
            Some(identity) => self.identity = Some(identity),
            None => {
                Stats::add(&self.broker.stats.connects_refused, 1);
                let text = reply_text(
                    reply::ACCESS_REFUSED,
                    &format!("Login was refused using authentication mechanism {mechanism}"),
                );
                self.send(
                    0,
                    &Method::ConnectionClose {
                        reply_code: reply::ACCESS_REFUSED,
                        reply_text: text,
                        class_id: 0,
                        method_id: 0,
                    },
                );
                self.flush().await;
                return Ok(false);
            }
        }
        self.send(
            0,
            &Method::ConnectionTune {
                channel_max: CHANNEL_MAX,
                frame_max: FRAME_MAX,
                heartbeat: HEARTBEAT,
            },
        );
        self.flush().await;
        let Some(frame) = read_frame(reader, buf, FRAME_MAX).await? else {
            return Ok(false);
        };
        match (frame.channel, frame.payload) {
            (
                0,
                FramePayload::Method(Method::ConnectionTuneOk {
                    channel_max,
                    frame_max,
                    heartbeat,
                }),
            ) => {
                if frame_max != 0 && frame_max < wire::FRAME_MIN_SIZE {
                    return Err(Fault::Connection(
                        reply::SYNTAX_ERROR,
                        format!("frame_max={frame_max} < {} min size", wire::FRAME_MIN_SIZE),
                    ));
                }
                self.frame_max = if frame_max == 0 {
                    FRAME_MAX
                } else {
                    frame_max.min(FRAME_MAX)
                };
                self.channel_max = if channel_max == 0 {
                    CHANNEL_MAX
                } else {
                    channel_max.min(CHANNEL_MAX)
                };
                self.heartbeat = heartbeat;
            }
            (_, payload) => return Err(unexpected(&payload, "connection.tune-ok")),
        }
        let Some(frame) = read_frame(reader, buf, self.frame_max).await? else {
            return Ok(false);
        };
        match (frame.channel, frame.payload) {
            (0, FramePayload::Method(Method::ConnectionOpen { virtual_host })) => {
                if virtual_host != "/" {
                    return Err(Fault::Connection(
                        reply::NOT_ALLOWED,
                        format!(
                            "vhost '{virtual_host}' not found: midge serves the vhost '/' only"
                        ),
                    ));
                }
            }
            (_, payload) => return Err(unexpected(&payload, "connection.open")),
        }
        self.send(0, &Method::ConnectionOpenOk);
        Ok(self.flush().await)
    }

    /// The listener's authentication; `guest`/`guest` from loopback is accepted as
    /// anonymous where the listener accepts anonymous clients, as RabbitMQ's default does.
    async fn authenticate(&mut self, username: String, password: Bytes) -> Option<Identity> {
        let access = &self.context.access;
        let credentials = Credentials {
            client_id: &self.client_id,
            username: Some(&username),
            password: Some(&password),
            peer: self.peer,
            certificate_identity: None,
        };
        if let Ok(identity) = access.authenticate(&credentials).await {
            return Some(identity);
        }
        if username == "guest" && &password[..] == b"guest" && self.peer.ip().is_loopback() {
            let anonymous = Credentials {
                username: None,
                password: None,
                ..credentials
            };
            return access.authenticate(&anonymous).await.ok();
        }
        None
    }

    /// Sends connection.close for `fault`, waits briefly for close-ok, and counts the drop.
    async fn fail<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        buf: &mut BytesMut,
        fault: Fault,
    ) {
        let (code, text) = match fault {
            Fault::Connection(code, text) | Fault::Channel(code, text) => (code, text),
        };
        if code != reply::CONNECTION_FORCED {
            Stats::add(&self.broker.stats.protocol_errors, 1);
        }
        if self.broker.log_limit.allow(self.peer.ip()) {
            tracing::info!(listener = %self.context.name, peer = %self.peer, code, %text, "AMQP connection closed");
        }
        self.send(
            0,
            &Method::ConnectionClose {
                reply_code: code,
                reply_text: reply_text(code, &text),
                class_id: 0,
                method_id: 0,
            },
        );
        if !self.flush().await {
            return;
        }
        // Anything but close-ok is discarded (spec 4.2.2); the wait is bounded.
        let frame_max = self.frame_max;
        let wait = async move {
            loop {
                match read_frame(reader, buf, frame_max).await {
                    Ok(Some(Frame {
                        payload: FramePayload::Method(Method::ConnectionCloseOk),
                        ..
                    }))
                    | Ok(None)
                    | Err(_) => return,
                    Ok(Some(_)) => {}
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, wait).await;
    }

    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        buf: &mut BytesMut,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Outcome {
        let beat = Duration::from_secs(u64::from(self.heartbeat.max(1)));
        let mut ticker = tokio::time::interval(beat / 2);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_read = tokio::time::Instant::now();
        let mut access = self.context.queues.watch_access();
        access.borrow_and_update();
        loop {
            if *shutdown.borrow() {
                return Err(Fault::Connection(
                    reply::CONNECTION_FORCED,
                    "broker shutdown".into(),
                ));
            }
            // Frames already buffered first.
            loop {
                match wire::decode_frame(buf, self.frame_max) {
                    Ok(Some(frame)) => {
                        Stats::add(&self.broker.stats.packets_received, 1);
                        if self.frame(frame).await? {
                            self.flush().await;
                            // The client closes the socket once it has close-ok; until then
                            // what it still sends (frames queued on other channels before
                            // its close) is read and dropped, so it gets no reset.
                            let linger = async {
                                loop {
                                    buf.clear();
                                    match reader.read_buf(buf).await {
                                        Ok(0) | Err(_) => return,
                                        Ok(_) => {}
                                    }
                                }
                            };
                            let _ = tokio::time::timeout(CLOSE_WAIT, linger).await;
                            return Ok(());
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Err(decode_fault(&e)),
                }
            }
            self.settle_confirms().await;
            // Registered before pumping, so a message that arrives after the pump looked
            // wakes this connection.
            let ready: Vec<Arc<tokio::sync::Notify>> = self
                .channels
                .values()
                .flat_map(|c| c.consumers.iter().map(|k| k.queue.ready.clone()))
                .collect();
            let mut notified: Vec<_> = ready.iter().map(|n| Box::pin(n.notified())).collect();
            for waiting in &mut notified {
                waiting.as_mut().enable();
            }
            // More than one batch ready: after a turn for the socket and other tasks.
            let more = self.pump();
            if !self.flush().await {
                return Ok(());
            }
            let notified = std::future::poll_fn(|cx| {
                let mut ready = false;
                for waiting in &mut notified {
                    ready |= waiting.as_mut().poll(cx).is_ready();
                }
                if ready {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            });
            tokio::select! {
                biased;
                read = reader.read_buf(buf) => match read {
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(n) => {
                        Stats::add(&self.broker.stats.bytes_received, n as u64);
                        if let Some(info) = &self.info {
                            ConnectionInfo::add(&info.bytes_received, n as u64);
                        }
                        last_read = tokio::time::Instant::now();
                    }
                },
                _ = shutdown.changed() => {}
                changed = access.changed() => {
                    if changed.is_ok() {
                        self.check_user()?;
                    }
                }
                _ = ticker.tick(), if self.heartbeat > 0 => {
                    if last_read.elapsed() > beat * 2 {
                        // Two missed heartbeats: the peer is gone (spec 4.2.7).
                        return Err(Fault::Connection(reply::CONNECTION_FORCED, "missed heartbeats from client".into()));
                    }
                    wire::encode_heartbeat(&mut self.out);
                }
                _ = notified => {}
                _ = tokio::task::yield_now(), if more => {}
            }
        }
    }

    /// After the access rules changed: a user dynamic security disabled, or deleted since
    /// this connection logged in, is disconnected, as its MQTT connections are.
    fn check_user(&self) -> Outcome {
        let Some(info) = &self.info else {
            return Ok(());
        };
        let username = self.username();
        if self
            .context
            .access
            .revoked(username.as_deref(), info.connected_at_ms)
        {
            tracing::info!(connection = self.id, peer = %self.peer, user = ?username, "AMQP connection closed: dynamic security disabled or deleted its user");
            return Err(Fault::Connection(
                reply::CONNECTION_FORCED,
                format!(
                    "user '{}' was disabled or deleted",
                    username.unwrap_or_default()
                ),
            ));
        }
        Ok(())
    }

    /// Sends publisher confirms once what was published is as safe as a PUBACK makes it.
    async fn settle_confirms(&mut self) {
        if self.channels.values().all(|c| c.pending_acks.is_empty()) {
            return;
        }
        self.broker.store_settled().await;
        let mut acks = Vec::new();
        for (&number, channel) in &mut self.channels {
            for tag in channel.pending_acks.drain(..) {
                acks.push((number, tag));
            }
        }
        for (number, (tag, ack)) in acks {
            let method = if ack {
                Method::BasicAck {
                    delivery_tag: tag,
                    multiple: false,
                }
            } else {
                Method::BasicNack {
                    delivery_tag: tag,
                    multiple: false,
                    requeue: false,
                }
            };
            self.send(number, &method);
        }
    }

    /// Handles one frame; `Ok(true)` when the connection closed cleanly.
    async fn frame(&mut self, frame: Frame) -> Result<bool, Fault> {
        let number = frame.channel;
        if number == 0 {
            return match frame.payload {
                FramePayload::Heartbeat => Ok(false),
                FramePayload::Method(Method::ConnectionClose { .. }) => {
                    self.send(0, &Method::ConnectionCloseOk);
                    Ok(true)
                }
                FramePayload::Method(Method::ConnectionCloseOk) => Ok(true),
                FramePayload::Method(m) => Err(Fault::Connection(
                    reply::COMMAND_INVALID,
                    format!("{} is not allowed on channel 0 now", m.name()),
                )),
                _ => Err(Fault::Connection(
                    reply::UNEXPECTED_FRAME,
                    "content frame on channel 0".into(),
                )),
            };
        }
        if number > self.channel_max {
            return Err(Fault::Connection(
                reply::CHANNEL_ERROR,
                format!("channel {number} is over channel-max {}", self.channel_max),
            ));
        }
        let result = self.channel_frame(number, frame.payload).await;
        if let Some(info) = &self.info {
            info.channels.store(
                self.channels.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        match result {
            Ok(()) => Ok(false),
            Err(Fault::Channel(code, text)) => {
                self.close_channel(number, code, &text);
                Ok(false)
            }
            Err(fault) => Err(fault),
        }
    }

    fn close_channel(&mut self, number: u16, code: u16, text: &str) {
        self.release_channel(number);
        if let Some(channel) = self.channels.get_mut(&number) {
            channel.closing = true;
        }
        self.send(
            number,
            &Method::ChannelClose {
                reply_code: code,
                reply_text: reply_text(code, text),
                class_id: 0,
                method_id: 0,
            },
        );
    }

    async fn channel_frame(&mut self, number: u16, payload: FramePayload) -> Outcome {
        let Some(channel) = self.channels.get_mut(&number) else {
            return match payload {
                FramePayload::Method(Method::ChannelOpen) => {
                    self.channels.insert(
                        number,
                        Channel {
                            next_delivery_tag: 1,
                            ..Channel::default()
                        },
                    );
                    self.send(number, &Method::ChannelOpenOk);
                    Ok(())
                }
                FramePayload::Method(m) => Err(Fault::Connection(
                    reply::CHANNEL_ERROR,
                    format!(
                        "expected 'channel.open' on channel {number}, got '{}'",
                        m.name()
                    ),
                )),
                _ => Err(Fault::Connection(
                    reply::UNEXPECTED_FRAME,
                    format!("content frame on channel {number}, which is not open"),
                )),
            };
        };
        if channel.closing {
            match payload {
                FramePayload::Method(Method::ChannelCloseOk) => {
                    self.channels.remove(&number);
                }
                FramePayload::Method(Method::ChannelClose { .. }) => {
                    self.send(number, &Method::ChannelCloseOk);
                }
                _ => {}
            }
            return Ok(());
        }
        if let Some(incoming) = &mut channel.incoming {
            return match payload {
                FramePayload::Header(header) if incoming.header.is_none() => {
                    let max = u64::from(self.context.config.mqtt.max_packet_size);
                    if header.body_size > max {
                        channel.incoming = None;
                        return Err(channel_fault(
                            reply::PRECONDITION_FAILED,
                            format!(
                                "message size {} is larger than max size {max}",
                                header.body_size
                            ),
                        ));
                    }
                    incoming.header = Some(header);
                    self.maybe_publish(number).await
                }
                FramePayload::Body(piece) if incoming.header.is_some() => {
                    incoming.body.extend_from_slice(&piece);
                    self.maybe_publish(number).await
                }
                other => Err(Fault::Connection(
                    reply::UNEXPECTED_FRAME,
                    format!(
                        "expected content {} on channel {number}, got {}",
                        if incoming.header.is_none() {
                            "header"
                        } else {
                            "body"
                        },
                        payload_name(&other)
                    ),
                )),
            };
        }
        match payload {
            FramePayload::Method(m) => self.method(number, m).await,
            other => Err(Fault::Connection(
                reply::UNEXPECTED_FRAME,
                format!(
                    "{} on channel {number} with no basic.publish before it",
                    payload_name(&other)
                ),
            )),
        }
    }

    /// Publishes the message being received once its body is complete.
    async fn maybe_publish(&mut self, number: u16) -> Outcome {
        let Some(channel) = self.channels.get_mut(&number) else {
            return Ok(());
        };
        let Some(incoming) = &channel.incoming else {
            return Ok(());
        };
        let Some(header) = &incoming.header else {
            return Ok(());
        };
        let size = incoming.body.len() as u64;
        if size < header.body_size {
            return Ok(());
        }
        if size > header.body_size {
            return Err(Fault::Connection(
                reply::FRAME_ERROR,
                format!(
                    "body of {size} bytes is over the {} the content header said",
                    header.body_size
                ),
            ));
        }
        let Some(incoming) = channel.incoming.take() else {
            return Ok(());
        };
        let tag = channel.confirms.as_mut().map(|seq| {
            *seq += 1;
            *seq
        });
        // An unroutable message is confirmed too, after its basic.return, as RabbitMQ does;
        // one a queue refused (x-overflow reject-publish, or full) is nacked.
        let routed = self.publish(number, incoming).await?;
        if let Some(tag) = tag
            && let Some(channel) = self.channels.get_mut(&number)
        {
            channel.pending_acks.push((tag, routed != Routed::Rejected));
        }
        Ok(())
    }

    /// Routes a complete message.
    async fn publish(&mut self, number: u16, incoming: Incoming) -> Result<Routed, Fault> {
        let Incoming {
            exchange,
            routing_key,
            mandatory,
            header,
            body,
        } = incoming;
        let properties = header.map(|h| h.properties).unwrap_or_default();
        let body = body.freeze();
        Stats::add(&self.broker.stats.publish_received, 1);
        let now = now_millis();
        let delivered = match exchange.as_str() {
            "amq.topic" => {
                let topic = mapping::routing_key_to_topic(&routing_key)
                    .map_err(|e| channel_fault(reply::PRECONDITION_FAILED, e))?;
                if topic.starts_with('$') {
                    return Err(channel_fault(
                        reply::ACCESS_REFUSED,
                        format!(
                            "routing key '{routing_key}' names a '$' topic, which clients may not publish to"
                        ),
                    ));
                }
                let username = self.username();
                if !self
                    .context
                    .access
                    .authorize_publish(&self.client_id, username.as_deref(), &topic)
                    .await
                {
                    Stats::add(&self.broker.stats.publish_denied, 1);
                    return Err(channel_fault(
                        reply::ACCESS_REFUSED,
                        format!(
                            "write access to topic '{topic}' (routing key '{routing_key}') refused"
                        ),
                    ));
                }
                let message = mapping::to_message(
                    topic,
                    &properties,
                    body.clone(),
                    self.client_id.clone(),
                    now,
                );
                if self.broker.publish(message).delivered > 0 {
                    Routed::Taken
                } else {
                    Routed::Unroutable
                }
            }
            "" => match self.context.queues.get(&routing_key) {
                Some(queue) => {
                    // The default exchange: straight into the named queue. An empty topic
                    // (never an MQTT topic) tells the delivery which exchange it came by.
                    let message = mapping::to_direct_message(
                        &properties,
                        body.clone(),
                        self.client_id.clone(),
                        now,
                    );
                    let delivery = Delivery {
                        qos: message.qos,
                        message: Arc::new(message),
                        retain: false,
                        subscription_ids: Vec::new(),
                        shared: None,
                    };
                    match Inbox::push(&*queue.mailbox, delivery, &self.broker.queue_limits()) {
                        PushOutcome::Queued { .. } => Routed::Taken,
                        PushOutcome::Dropped => {
                            Stats::add(&self.broker.stats.publish_dropped, 1);
                            Routed::Rejected
                        }
                        PushOutcome::Closed => Routed::Unroutable,
                    }
                }
                None => Routed::Unroutable,
            },
            other => {
                return Err(channel_fault(
                    reply::NOT_FOUND,
                    format!("no exchange '{other}' in vhost '/'"),
                ));
            }
        };
        if delivered == Routed::Unroutable && mandatory {
            self.send(
                number,
                &Method::BasicReturn {
                    reply_code: reply::NO_ROUTE,
                    reply_text: "NO_ROUTE".into(),
                    exchange,
                    routing_key,
                },
            );
            wire::encode_content(number, &properties, &body, self.frame_max, &mut self.out);
        }
        Ok(delivered)
    }

    fn username(&self) -> Option<String> {
        self.identity.as_ref().and_then(|i| i.username.clone())
    }

    fn channel(&mut self, number: u16) -> &mut Channel {
        self.channels.entry(number).or_default()
    }

    async fn method(&mut self, number: u16, method: Method) -> Outcome {
        let queues = self.context.queues.clone();
        let broker = self.broker.clone();
        match method {
            Method::ChannelClose { .. } => {
                self.release_channel(number);
                self.channels.remove(&number);
                self.send(number, &Method::ChannelCloseOk);
            }
            Method::ChannelOpen => {
                return Err(Fault::Connection(
                    reply::CHANNEL_ERROR,
                    format!("channel {number} is already open"),
                ));
            }
            Method::ChannelFlow { active } => {
                if !active {
                    return Err(channel_fault(
                        reply::NOT_IMPLEMENTED,
                        "channel.flow with active=false is not supported",
                    ));
                }
                self.send(number, &Method::ChannelFlowOk { active });
            }
            Method::ExchangeDeclare {
                exchange,
                kind,
                passive,
                no_wait,
                ..
            } => {
                let known = match exchange.as_str() {
                    "amq.topic" => Some("topic"),
                    "" => Some("direct"),
                    _ => None,
                };
                match known {
                    Some(own) if passive || kind == own => {}
                    Some(own) => {
                        return Err(channel_fault(
                            reply::PRECONDITION_FAILED,
                            format!(
                                "inequivalent arg 'type' for exchange '{exchange}' in vhost '/': received '{kind}' but current is '{own}'"
                            ),
                        ));
                    }
                    None if passive => {
                        return Err(channel_fault(
                            reply::NOT_FOUND,
                            format!("no exchange '{exchange}' in vhost '/'"),
                        ));
                    }
                    None => {
                        return Err(channel_fault(
                            reply::NOT_IMPLEMENTED,
                            format!(
                                "declaring exchange '{exchange}' of type '{kind}': midge has only 'amq.topic' (the MQTT topic space) and the default exchange"
                            ),
                        ));
                    }
                }
                if !no_wait {
                    self.send(number, &Method::ExchangeDeclareOk);
                }
            }
            Method::QueueDeclare {
                queue,
                passive,
                durable,
                exclusive,
                auto_delete,
                no_wait,
                arguments,
            } => {
                // A passive declaration checks existence only, as RabbitMQ's does.
                let args = if passive {
                    QueueArgs::default()
                } else {
                    let name = if queue.is_empty() { "amq.gen" } else { &queue };
                    QueueArgs::parse(&arguments, name)
                        .map_err(|text| channel_fault(reply::PRECONDITION_FAILED, text))?
                };
                let q = if passive {
                    match queues.get(&queue) {
                        Some(q) if q.exclusive_owner.is_some_and(|c| c != self.id) => {
                            return Err(locked(&queue));
                        }
                        Some(q) => q,
                        None => return Err(not_found(&queue)),
                    }
                } else {
                    if queue.starts_with("amq.") {
                        return Err(channel_fault(
                            reply::ACCESS_REFUSED,
                            format!("queue name '{queue}' contains reserved prefix 'amq.*'"),
                        ));
                    }
                    let name = if queue.is_empty() {
                        queues.generate_name()
                    } else {
                        queue.clone()
                    };
                    let flags = QueueFlags {
                        durable,
                        exclusive,
                        auto_delete,
                    };
                    match queues.declare(&broker, &name, flags, args, self.id) {
                        Declared::Queue(q) => q,
                        Declared::Locked => return Err(locked(&name)),
                        Declared::Inequivalent(text) => {
                            return Err(channel_fault(reply::PRECONDITION_FAILED, text));
                        }
                    }
                };
                if !no_wait {
                    self.send(
                        number,
                        &Method::QueueDeclareOk {
                            queue: q.name.to_string(),
                            message_count: q.message_count(),
                            consumer_count: q.consumer_count(),
                        },
                    );
                }
            }
            Method::QueueBind {
                queue,
                exchange,
                routing_key,
                no_wait,
                ..
            } => {
                let q = self.usable_queue(&queue)?;
                let filter = self.binding_filter(&exchange, &routing_key).await?;
                if let Some(filter) = filter {
                    let grant = Grant {
                        client_id: self.client_id.clone(),
                        username: self.username(),
                        access: self.context.access.clone(),
                    };
                    queues.bind(&broker, &q, &filter, Some(grant));
                }
                if !no_wait {
                    self.send(number, &Method::QueueBindOk);
                }
            }
            Method::QueueUnbind {
                queue,
                exchange,
                routing_key,
                ..
            } => {
                let q = self.usable_queue(&queue)?;
                if exchange != "amq.topic" {
                    return Err(unknown_exchange(&exchange));
                }
                let filter = mapping::binding_key_to_filter(&routing_key)
                    .map_err(|e| channel_fault(reply::NOT_IMPLEMENTED, e))?;
                queues.unbind(&broker, &q, &filter);
                self.send(number, &Method::QueueUnbindOk);
            }
            Method::QueuePurge { queue, no_wait } => {
                let q = self.usable_queue(&queue)?;
                let purged = q.mailbox.take_deliveries(|_| true);
                for queued in &purged {
                    q.forget(queued);
                }
                let purged = purged.len();
                if !no_wait {
                    self.send(
                        number,
                        &Method::QueuePurgeOk {
                            message_count: u32::try_from(purged).unwrap_or(u32::MAX),
                        },
                    );
                }
            }
            Method::QueueDelete {
                queue,
                if_unused,
                if_empty,
                no_wait,
            } => {
                let Some(q) = queues.get(&queue) else {
                    // RabbitMQ answers delete-ok for a queue that is not there.
                    if !no_wait {
                        self.send(number, &Method::QueueDeleteOk { message_count: 0 });
                    }
                    return Ok(());
                };
                if q.exclusive_owner.is_some_and(|c| c != self.id) {
                    return Err(locked(&queue));
                }
                if if_unused && q.consumer_count() > 0 {
                    return Err(channel_fault(
                        reply::PRECONDITION_FAILED,
                        format!("queue '{queue}' in vhost '/' in use"),
                    ));
                }
                if if_empty && q.message_count() > 0 {
                    return Err(channel_fault(
                        reply::PRECONDITION_FAILED,
                        format!("queue '{queue}' in vhost '/' is not empty"),
                    ));
                }
                self.drop_consumers_of(&q);
                let count = queues.delete(&broker, &q);
                if !no_wait {
                    self.send(
                        number,
                        &Method::QueueDeleteOk {
                            message_count: count,
                        },
                    );
                }
            }
            Method::BasicQos {
                prefetch_count,
                global,
                ..
            } => {
                if global {
                    return Err(channel_fault(
                        reply::NOT_IMPLEMENTED,
                        "basic.qos with global=true (a prefetch shared by a channel's consumers) is not supported yet",
                    ));
                }
                self.channel(number).prefetch = prefetch_count;
                self.send(number, &Method::BasicQosOk);
            }
            Method::BasicConsume {
                queue,
                consumer_tag,
                no_ack,
                exclusive,
                no_wait,
                ..
            } => {
                if exclusive {
                    return Err(channel_fault(
                        reply::NOT_IMPLEMENTED,
                        "exclusive consumers are not supported yet",
                    ));
                }
                let q = self.usable_queue(&queue)?;
                let tag = if consumer_tag.is_empty() {
                    let next = self.channel(number).next_delivery_tag;
                    format!("amq.ctag-{}-{number}-{next}", self.id)
                } else {
                    consumer_tag
                };
                // A consumer tag is unique on its channel only, as in RabbitMQ.
                if self.channel(number).consumers.iter().any(|k| k.tag == tag) {
                    return Err(Fault::Connection(
                        reply::NOT_ALLOWED,
                        format!("attempt to reuse consumer tag '{tag}'"),
                    ));
                }
                q.add_consumer();
                if !no_wait {
                    self.send(
                        number,
                        &Method::BasicConsumeOk {
                            consumer_tag: tag.clone(),
                        },
                    );
                }
                self.channel(number).consumers.push(Consumer {
                    tag,
                    queue: q,
                    no_ack,
                });
            }
            Method::BasicCancel {
                consumer_tag,
                no_wait,
            } => {
                let channel = self.channel(number);
                if let Some(at) = channel.consumers.iter().position(|k| k.tag == consumer_tag) {
                    let consumer = channel.consumers.remove(at);
                    self.consumer_gone(&consumer.queue);
                }
                if !no_wait {
                    self.send(number, &Method::BasicCancelOk { consumer_tag });
                }
            }
            Method::BasicPublish {
                exchange,
                routing_key,
                mandatory,
                immediate,
            } => {
                if immediate {
                    return Err(channel_fault(reply::NOT_IMPLEMENTED, "immediate=true"));
                }
                self.channel(number).incoming = Some(Incoming {
                    exchange,
                    routing_key,
                    mandatory,
                    header: None,
                    body: BytesMut::new(),
                });
            }
            Method::BasicGet { queue, no_ack } => {
                let q = self.usable_queue(&queue)?;
                q.touch();
                // Expired messages are dropped on the way, as for consumers.
                let got = q.pop_live(now_millis());
                match got {
                    None => self.send(number, &Method::BasicGetEmpty),
                    Some(queued) => {
                        let redelivered = q.take_redelivered(queued.seq);
                        let channel = self.channel(number);
                        let tag = channel.next_delivery_tag;
                        channel.next_delivery_tag += 1;
                        let (exchange, routing_key) = origin_of(&queued.delivery, &q);
                        let method = Method::BasicGetOk {
                            delivery_tag: tag,
                            redelivered,
                            exchange,
                            routing_key,
                            message_count: q.message_count(),
                        };
                        self.write_delivery(number, &method, &queued.delivery);
                        if no_ack {
                            q.forget(&queued);
                        } else {
                            q.add_unacked(1);
                            self.channel(number)
                                .unacked
                                .insert(tag, Unacked { queue: q, queued });
                        }
                    }
                }
            }
            Method::BasicAck {
                delivery_tag,
                multiple,
            } => {
                self.settle(number, delivery_tag, multiple, None)?;
            }
            Method::BasicNack {
                delivery_tag,
                multiple,
                requeue,
            } => {
                self.settle(number, delivery_tag, multiple, Some(requeue))?;
            }
            Method::BasicReject {
                delivery_tag,
                requeue,
            } => {
                self.settle(number, delivery_tag, false, Some(requeue))?;
            }
            Method::BasicRecover { requeue } | Method::BasicRecoverAsync { requeue } => {
                if !requeue {
                    return Err(channel_fault(
                        reply::NOT_IMPLEMENTED,
                        "basic.recover with requeue=false is not supported",
                    ));
                }
                let unacked = std::mem::take(&mut self.channel(number).unacked);
                requeue_all(unacked.into_values());
                self.send(number, &Method::BasicRecoverOk);
            }
            Method::ConfirmSelect { no_wait } => {
                let channel = self.channel(number);
                channel.confirms.get_or_insert(0);
                if !no_wait {
                    self.send(number, &Method::ConfirmSelectOk);
                }
            }
            Method::TxSelect | Method::TxCommit | Method::TxRollback => {
                return Err(channel_fault(
                    reply::NOT_IMPLEMENTED,
                    "transactions (tx class) are not supported; use publisher confirms",
                ));
            }
            Method::ExchangeDelete { exchange, .. } => {
                return Err(channel_fault(
                    reply::ACCESS_REFUSED,
                    format!(
                        "exchange '{exchange}' cannot be deleted: midge's exchanges are built in"
                    ),
                ));
            }
            Method::ExchangeBind { .. } | Method::ExchangeUnbind { .. } => {
                return Err(channel_fault(
                    reply::NOT_IMPLEMENTED,
                    "exchange-to-exchange bindings are not supported",
                ));
            }
            other => {
                return Err(Fault::Connection(
                    reply::COMMAND_INVALID,
                    format!("{} is not a method a client sends", other.name()),
                ));
            }
        }
        Ok(())
    }

    /// A queue this connection may use.
    fn usable_queue(&self, name: &str) -> Result<Arc<Queue>, Fault> {
        match self.context.queues.get(name) {
            Some(q) if q.exclusive_owner.is_some_and(|c| c != self.id) => Err(locked(name)),
            Some(q) => Ok(q),
            None => Err(not_found(name)),
        }
    }

    /// The MQTT filter of a binding to amq.topic, checked for read access. `None`: a
    /// binding to the default exchange by the queue's own name, which always exists.
    async fn binding_filter(&mut self, exchange: &str, key: &str) -> Result<Option<String>, Fault> {
        match exchange {
            "amq.topic" => {}
            "" => {
                return Err(channel_fault(
                    reply::ACCESS_REFUSED,
                    "operation not permitted on the default exchange",
                ));
            }
            other => return Err(unknown_exchange(other)),
        }
        let filter = mapping::binding_key_to_filter(key)
            .map_err(|e| channel_fault(reply::NOT_IMPLEMENTED, e))?;
        let username = self.username();
        let verdict = self
            .context
            .access
            .authorize_subscribe(&self.client_id, username.as_deref(), &filter)
            .await;
        match verdict {
            FilterVerdict::Allowed => Ok(Some(filter)),
            // A partly readable filter needs a check per delivery, which AMQP queues do
            // not make yet: refused rather than leaking what the ACL hides.
            FilterVerdict::Partly => Err(channel_fault(
                reply::ACCESS_REFUSED,
                format!(
                    "read access to all of '{filter}' (binding key '{key}') is not granted; bind a narrower key"
                ),
            )),
            FilterVerdict::Denied => Err(channel_fault(
                reply::ACCESS_REFUSED,
                format!("read access to '{filter}' (binding key '{key}') refused"),
            )),
        }
    }

    /// ack (`requeue` None), nack or reject of one tag or all up to it.
    fn settle(&mut self, number: u16, tag: u64, multiple: bool, requeue: Option<bool>) -> Outcome {
        let channel = self.channel(number);
        let taken: Vec<Unacked> = if multiple {
            let keep = channel.unacked.split_off(&tag.saturating_add(1));
            let taken = std::mem::replace(&mut channel.unacked, keep);
            // tag 0 with multiple: everything outstanding.
            taken.into_values().collect()
        } else {
            match channel.unacked.remove(&tag) {
                Some(u) => vec![u],
                None => {
                    return Err(channel_fault(
                        reply::PRECONDITION_FAILED,
                        format!("unknown delivery tag {tag}"),
                    ));
                }
            }
        };
        if requeue == Some(true) {
            requeue_all(taken.into_iter());
        } else {
            for u in taken {
                u.queue.add_unacked(-1);
                u.queue.forget(&u.queued);
            }
        }
        Ok(())
    }

    /// Writes deliveries to consumers within their channels' prefetch. True when more may
    /// be ready than one batch carried.
    fn pump(&mut self) -> bool {
        let now = now_millis();
        let mut written = 0;
        let numbers: Vec<u16> = self.channels.keys().copied().collect();
        for number in numbers {
            loop {
                if written >= PUMP_BATCH {
                    return true;
                }
                let Some(channel) = self.channels.get_mut(&number) else {
                    break;
                };
                if channel.closing || channel.consumers.is_empty() {
                    break;
                }
                let mut progressed = false;
                let mut ready = None;
                let n = channel.consumers.len();
                for i in 0..n {
                    let at = (channel.next_consumer + i) % n;
                    let consumer = &channel.consumers[at];
                    if !consumer.no_ack
                        && channel.prefetch > 0
                        && channel.unacked.len() >= usize::from(channel.prefetch)
                    {
                        continue;
                    }
                    let Some(queued) = consumer.queue.pop_live(now) else {
                        continue;
                    };
                    progressed = true;
                    let queue = consumer.queue.clone();
                    let tag = channel.next_delivery_tag;
                    channel.next_delivery_tag += 1;
                    channel.next_consumer = (at + 1) % n;
                    let (exchange, routing_key) = origin_of(&queued.delivery, &queue);
                    let method = Method::BasicDeliver {
                        consumer_tag: consumer.tag.clone(),
                        delivery_tag: tag,
                        redelivered: queue.take_redelivered(queued.seq),
                        exchange,
                        routing_key,
                    };
                    let delivery = queued.delivery.clone();
                    if consumer.no_ack {
                        queue.forget(&queued);
                    } else {
                        queue.add_unacked(1);
                        channel.unacked.insert(tag, Unacked { queue, queued });
                    }
                    ready = Some((method, delivery));
                    break;
                }
                if let Some((method, delivery)) = ready {
                    self.write_delivery(number, &method, &delivery);
                    written += 1;
                }
                if !progressed {
                    break;
                }
            }
        }
        false
    }

    fn write_delivery(&mut self, number: u16, method: &Method, delivery: &Delivery) {
        let properties = mapping::to_properties(&delivery.message, delivery.qos, now_millis());
        self.send(number, method);
        wire::encode_content(
            number,
            &properties,
            &delivery.message.payload,
            self.frame_max,
            &mut self.out,
        );
        Stats::add(&self.broker.stats.publish_sent, 1);
    }

    /// A consumer went: auto-delete its queue if that was the last one.
    fn consumer_gone(&self, queue: &Arc<Queue>) {
        if queue.remove_consumer() {
            self.context.queues.delete(&self.broker, queue);
        }
    }

    /// Consumers of a queue being deleted go without a cancel-ok (the client asked).
    fn drop_consumers_of(&mut self, queue: &Arc<Queue>) {
        for channel in self.channels.values_mut() {
            channel.consumers.retain(|k| {
                let gone = Arc::ptr_eq(&k.queue, queue);
                if gone {
                    queue.remove_consumer();
                }
                !gone
            });
        }
    }

    /// A channel ends: its unacknowledged deliveries go back to their queues, marked
    /// redelivered, and its consumers go.
    fn release_channel(&mut self, number: u16) {
        let Some(channel) = self.channels.get_mut(&number) else {
            return;
        };
        let unacked = std::mem::take(&mut channel.unacked);
        let consumers = std::mem::take(&mut channel.consumers);
        channel.incoming = None;
        requeue_all(unacked.into_values());
        for consumer in consumers {
            self.consumer_gone(&consumer.queue);
        }
    }

    fn release_all(&mut self) {
        let numbers: Vec<u16> = self.channels.keys().copied().collect();
        for number in numbers {
            self.release_channel(number);
        }
    }
}

/// Puts deliveries back at the front of their queues, in their original order, marked
/// redelivered.
fn requeue_all(unacked: impl Iterator<Item = Unacked>) {
    let mut by_queue: Vec<(Arc<Queue>, Vec<Queued>)> = Vec::new();
    for u in unacked {
        u.queue.add_unacked(-1);
        u.queue.mark_redelivered(u.queued.seq);
        match by_queue.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
            Some((_, list)) => list.push(u.queued),
            None => by_queue.push((u.queue, vec![u.queued])),
        }
    }
    for (queue, mut list) in by_queue {
        list.sort_by_key(|q| q.seq);
        queue.mailbox.unpop(list);
        // Wakes whoever consumes it, as a push onto an empty queue would.
        queue.mailbox.wake_connection();
    }
}

/// The exchange and routing key a delivery reports.
fn origin_of(delivery: &Delivery, queue: &Queue) -> (String, String) {
    if delivery.message.topic.is_empty() {
        (String::new(), queue.name.to_string())
    } else {
        (
            "amq.topic".to_owned(),
            mapping::topic_to_routing_key(&delivery.message.topic),
        )
    }
}

fn credentials(mechanism: &str, response: &[u8]) -> Result<(String, Bytes), Fault> {
    let refuse = |what: &str| {
        Fault::Connection(
            reply::ACCESS_REFUSED,
            format!("{mechanism} response is malformed: {what}"),
        )
    };
    match mechanism {
        "PLAIN" => {
            // [authzid] NUL authcid NUL passwd (RFC 4616).
            let mut parts = response.split(|b| *b == 0);
            let (Some(_authzid), Some(user), Some(pass), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(refuse("expected authzid NUL user NUL password"));
            };
            let user = std::str::from_utf8(user).map_err(|_| refuse("user name is not UTF-8"))?;
            Ok((user.to_owned(), Bytes::copy_from_slice(pass)))
        }
        "AMQPLAIN" => {
            let table = FieldTable::decode_body(Bytes::copy_from_slice(response))
                .map_err(|_| refuse("not a field table"))?;
            let text = |k: &str| table.get(k).and_then(FieldValue::as_str).map(str::to_owned);
            match (text("LOGIN"), text("PASSWORD")) {
                (Some(user), Some(pass)) => Ok((user, Bytes::from(pass.into_bytes()))),
                _ => Err(refuse("LOGIN and PASSWORD are required")),
            }
        }
        other => Err(Fault::Connection(
            reply::ACCESS_REFUSED,
            format!(
                "unsupported authentication mechanism '{other}'; midge offers PLAIN and AMQPLAIN"
            ),
        )),
    }
}

fn payload_name(payload: &FramePayload) -> String {
    match payload {
        FramePayload::Method(m) => format!("method '{}'", m.name()),
        FramePayload::Header(_) => "content header".into(),
        FramePayload::Body(_) => "content body".into(),
        FramePayload::Heartbeat => "heartbeat".into(),
    }
}

fn unexpected(payload: &FramePayload, expected: &str) -> Fault {
    Fault::Connection(
        reply::COMMAND_INVALID,
        format!("expected '{expected}', got {}", payload_name(payload)),
    )
}

fn not_found(queue: &str) -> Fault {
    channel_fault(reply::NOT_FOUND, format!("no queue '{queue}' in vhost '/'"))
}

fn locked(queue: &str) -> Fault {
    channel_fault(
        reply::RESOURCE_LOCKED,
        format!("cannot obtain exclusive access to locked queue '{queue}' in vhost '/'"),
    )
}

fn unknown_exchange(exchange: &str) -> Fault {
    channel_fault(
        reply::NOT_FOUND,
        format!("no exchange '{exchange}' in vhost '/'"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_amqplain_credentials() {
        let (u, p) = credentials("PLAIN", b"\0guest\0guest").unwrap();
        assert_eq!((u.as_str(), &p[..]), ("guest", &b"guest"[..]));
        assert!(credentials("PLAIN", b"guest").is_err());
        // AMQPLAIN: a table body without its length.
        let mut body = Vec::new();
        body.extend_from_slice(b"\x05LOGINS\x00\x00\x00\x05guest");
        body.extend_from_slice(b"\x08PASSWORDS\x00\x00\x00\x02pw");
        let (u, p) = credentials("AMQPLAIN", &body).unwrap();
        assert_eq!((u.as_str(), &p[..]), ("guest", &b"pw"[..]));
        assert!(matches!(
            credentials("EXTERNAL", b""),
            Err(Fault::Connection(reply::ACCESS_REFUSED, _))
        ));
    }
}
