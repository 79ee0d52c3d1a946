//! The AMQP side of `amqp-mqtt` and `mqtt-amqp`: AMQP 0-9-1 publishers to `amq.topic` and
//! AMQP consumers of queues bound to it, on midge's own codec (`midge-amqp-proto`) over a
//! plain `TcpStream`, like the MQTT side on `midge-proto`. The MQTT side is load.rs's.
//! Works against any broker that maps `amq.topic` to MQTT as RabbitMQ does.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use midge_amqp_proto::{
    self as wire, BasicProperties, FieldTable, Frame, FramePayload, Method, PROTOCOL_HEADER,
};
use midge_proto::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::sleep_until;

use super::client::explain_io;
use super::histogram::Histogram;
use super::sequence::Streams;
use super::shared::{Published, Received, STALL, Shared, Tally};
use super::{Plan, Scenario};

/// How long a handshake or a declaration may take before the bench gives up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest frame the bench reads before tune (the spec's minimum frame-max is 4096; brokers
/// propose 128 KiB).
const FRAME_MAX: u32 = 1 << 20;
/// Bytes of publishes per write.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// The one channel the bench uses.
const CHANNEL: u16 = 1;

/// An AMQP connection with channel 1 open.
#[derive(Debug)]
pub struct AmqpConn {
    pub stream: TcpStream,
    pub read_buf: BytesMut,
    /// The negotiated frame-max: content bodies are split to fit it.
    pub frame_max: u32,
    /// Protocol header written to channel.open-ok read.
    pub handshake: Duration,
}

impl AmqpConn {
    /// Connects, logs in with PLAIN, opens vhost `/` and channel 1; heartbeats off.
    pub async fn connect(addr: &str, user: &str, password: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| explain_io(e, &format!("connecting to AMQP at {addr}")))?;
        stream.set_nodelay(true)?;
        let started = Instant::now();
        let mut conn = Self {
            stream,
            read_buf: BytesMut::with_capacity(64 * 1024),
            frame_max: FRAME_MAX,
            handshake: Duration::ZERO,
        };
        tokio::time::timeout(REPLY_TIMEOUT, conn.open(user, password))
            .await
            .with_context(|| format!("no AMQP handshake with {addr} within {REPLY_TIMEOUT:?}"))??;
        conn.handshake = started.elapsed();
        Ok(conn)
    }

    async fn open(&mut self, user: &str, password: &str) -> anyhow::Result<()> {
        self.stream.write_all(&PROTOCOL_HEADER).await?;
        match self.next_method(0).await? {
            Method::ConnectionStart { .. } => {}
            other => bail!("expected connection.start, got {}", other.name()),
        }
        let response = format!("\0{user}\0{password}");
        self.send(
            0,
            &Method::ConnectionStartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: Bytes::from(response.into_bytes()),
                locale: "en_US".into(),
            },
        )
        .await?;
        let (channel_max, frame_max) = match self.next_method(0).await? {
            Method::ConnectionTune {
                channel_max,
                frame_max,
                ..
            } => (channel_max, frame_max),
            Method::ConnectionClose { reply_text, .. } => bail!("login refused: {reply_text}"),
            other => bail!("expected connection.tune, got {}", other.name()),
        };
        self.frame_max = if frame_max == 0 {
            FRAME_MAX
        } else {
            frame_max.min(FRAME_MAX)
        };
        self.send(
            0,
            &Method::ConnectionTuneOk {
                channel_max,
                frame_max: self.frame_max,
                heartbeat: 0,
            },
        )
        .await?;
        self.send(
            0,
            &Method::ConnectionOpen {
                virtual_host: "/".into(),
            },
        )
        .await?;
        match self.next_method(0).await? {
            Method::ConnectionOpenOk => {}
            other => bail!("expected connection.open-ok, got {}", other.name()),
        }
        self.call(Method::ChannelOpen).await?;
        Ok(())
    }

    async fn send(&mut self, channel: u16, method: &Method) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        wire::encode_method(channel, method, &mut out);
        self.stream.write_all(&out).await.context("AMQP write")
    }

    async fn next_frame(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(frame) = wire::decode_frame(&mut self.read_buf, self.frame_max)? {
                return Ok(frame);
            }
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                bail!("the broker closed the AMQP connection");
            }
        }
    }

    /// The next method on `channel`; a close of the channel or connection is an error.
    async fn next_method(&mut self, channel: u16) -> anyhow::Result<Method> {
        loop {
            let frame = self.next_frame().await?;
            match frame.payload {
                FramePayload::Method(Method::ConnectionClose { reply_text, .. }) => {
                    bail!("the broker closed the AMQP connection: {reply_text}")
                }
                FramePayload::Method(Method::ChannelClose { reply_text, .. }) => {
                    bail!("the broker closed the AMQP channel: {reply_text}")
                }
                FramePayload::Method(m) if frame.channel == channel => return Ok(m),
                _ => {}
            }
        }
    }

    /// Sends a synchronous method on channel 1 and returns the reply.
    async fn call(&mut self, method: Method) -> anyhow::Result<Method> {
        self.send(CHANNEL, &method).await?;
        tokio::time::timeout(REPLY_TIMEOUT, self.next_method(CHANNEL))
            .await
            .with_context(|| format!("no reply to {} within {REPLY_TIMEOUT:?}", method.name()))?
    }
}

/// An MQTT topic as RabbitMQ's routing key, and a filter as a binding key.
pub fn routing_key(topic: &str) -> String {
    topic.replace('/', ".").replace('+', "*")
}

/// Connects `count` AMQP clients; consumers get an exclusive server-named queue bound to
/// `amq.topic` with the mapped subscription filter, and a consumer on it.
pub async fn connect_all(
    plan: &Arc<Plan>,
    count: u32,
    consume: bool,
) -> anyhow::Result<Vec<AmqpConn>> {
    let mut conns = Vec::with_capacity(count as usize);
    for id in 0..count {
        let mut conn =
            AmqpConn::connect(&plan.amqp_addr, &plan.amqp_user, &plan.amqp_password).await?;
        if consume {
            let queue = match conn
                .call(Method::QueueDeclare {
                    queue: String::new(),
                    passive: false,
                    durable: false,
                    exclusive: true,
                    auto_delete: true,
                    no_wait: false,
                    arguments: FieldTable::default(),
                })
                .await?
            {
                Method::QueueDeclareOk { queue, .. } => queue,
                other => bail!("expected queue.declare-ok, got {}", other.name()),
            };
            conn.call(Method::QueueBind {
                queue: queue.clone(),
                exchange: "amq.topic".into(),
                routing_key: routing_key(&plan.subscribe_filter(id)),
                no_wait: false,
                arguments: FieldTable::default(),
            })
            .await?;
            let no_ack = plan.qos == QoS::AtMostOnce;
            if !no_ack {
                // Unacknowledged deliveries are bounded by the publishers' in-flight windows.
                conn.call(Method::BasicQos {
                    prefetch_size: 0,
                    prefetch_count: 0,
                    global: false,
                })
                .await?;
            }
            conn.call(Method::BasicConsume {
                queue,
                consumer_tag: format!("bench-{id}"),
                no_local: false,
                no_ack,
                exclusive: false,
                no_wait: false,
                arguments: FieldTable::default(),
            })
            .await?;
        }
        conns.push(conn);
    }
    Ok(conns)
}

/// Checks what the broker sent a publisher, without waiting: a close is an error.
fn check_closed(conn: &mut AmqpConn) -> anyhow::Result<()> {
    loop {
        match conn.stream.try_read_buf(&mut conn.read_buf) {
            Ok(0) => bail!("the broker closed a publisher's AMQP connection"),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e).context("reading from the broker"),
        }
    }
    while let Some(frame) = wire::decode_frame(&mut conn.read_buf, conn.frame_max)? {
        if let FramePayload::Method(
            Method::ChannelClose { reply_text, .. } | Method::ConnectionClose { reply_text, .. },
        ) = frame.payload
        {
            bail!("the broker closed a publisher: {reply_text}");
        }
    }
    Ok(())
}

/// An AMQP publisher at its share of the fixed rate, within the same in-flight window as
/// MQTT QoS 0 publishers (messages sent but not yet delivered to every subscriber).
pub async fn publisher(
    id: u32,
    mut conn: AmqpConn,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    quota: Option<u64>,
    end: Option<Instant>,
) -> anyhow::Result<Published> {
    let key = routing_key(&plan.publish_topic(id));
    let properties = BasicProperties {
        delivery_mode: Some(if plan.qos == QoS::AtMostOnce { 1 } else { 2 }),
        ..BasicProperties::default()
    };
    let publish = Method::BasicPublish {
        exchange: "amq.topic".into(),
        routing_key: key,
        mandatory: false,
        immediate: false,
    };
    let mut payload = vec![0u8; plan.payload];
    payload[8..12].copy_from_slice(&id.to_le_bytes());
    let fan = plan.fan();
    let inflight = u64::from(plan.inflight);
    let rate = plan.rate as f64 / f64::from(plan.publishers);
    let batch = (WRITE_BATCH_BYTES / (plan.payload + 64)).max(1) as u64;
    let mut out = BytesMut::with_capacity(WRITE_BATCH_BYTES * 2);
    let (mut sent, mut written_off, mut stalls) = (0u64, 0u64, 0u64);
    let mut progress = (0u64, Instant::now());
    let started = Instant::now();
    loop {
        let now = Instant::now();
        if end.is_some_and(|end| now >= end) || quota.is_some_and(|quota| sent >= quota) {
            break;
        }
        check_closed(&mut conn)?;
        let delivered = shared.delivered[id as usize].load(Relaxed);
        if delivered != progress.0 {
            progress = (delivered, now);
        }
        let outstanding = sent.saturating_sub(delivered / fan + written_off);
        let mut allowed = inflight.saturating_sub(outstanding).min(batch);
        let due = (now.saturating_duration_since(started).as_secs_f64() * rate) as u64 + 1;
        let mut next_due = None;
        if due.saturating_sub(sent) < allowed {
            allowed = due.saturating_sub(sent);
            next_due = Some(started + Duration::from_secs_f64(sent as f64 / rate));
        }
        if let Some(quota) = quota {
            allowed = allowed.min(quota - sent);
        }
        if allowed > 0 {
            payload[..8].copy_from_slice(&shared.now_ns().to_le_bytes());
            for _ in 0..allowed {
                payload[12..16].copy_from_slice(&(sent as u32).to_le_bytes());
                wire::encode_method(CHANNEL, &publish, &mut out);
                wire::encode_content(CHANNEL, &properties, &payload, conn.frame_max, &mut out);
                sent += 1;
            }
            shared.sent_total.fetch_add(allowed, Relaxed);
            conn.stream.write_all(&out).await.context("publishing")?;
            out.clear();
            continue;
        }
        if outstanding >= inflight && now - progress.1 > STALL {
            // Deliveries stopped coming: the broker dropped what is outstanding.
            written_off += outstanding;
            stalls += 1;
            progress.1 = now;
            continue;
        }
        let mut wake_at = end.unwrap_or(now + STALL);
        if let Some(due) = next_due {
            wake_at = wake_at.min(due);
        }
        if outstanding >= inflight {
            wake_at = wake_at.min(progress.1 + STALL + Duration::from_millis(1));
        }
        tokio::select! {
            () = shared.wake[id as usize].notified() => {}
            () = sleep_until(wake_at.into()) => {}
        }
    }
    Ok(Published {
        sent,
        stalls,
        inflight,
        client: Box::new(conn),
    })
}

/// A message being received: basic.deliver, then its header, then its body.
struct Pending {
    size: Option<u64>,
    body: BytesMut,
}

/// An AMQP consumer: counts and times deliveries as load.rs's MQTT subscribers do, and
/// acknowledges each read's deliveries with one basic.ack (multiple) unless no-ack.
pub async fn consumer(
    mut conn: AmqpConn,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Received> {
    let publishers = plan.publishers as usize;
    let no_ack = plan.qos == QoS::AtMostOnce;
    let mut done = Received {
        streams: Streams::new(publishers),
        latency: Histogram::new(),
        delivered_window: 0,
        delivered_total: 0,
        unexpected: 0,
    };
    let mut tally = Tally::new(publishers);
    let mut pending: Option<Pending> = None;
    let mut last_tag = 0u64;
    let mut out = BytesMut::with_capacity(1024);
    loop {
        if conn.read_buf.capacity() - conn.read_buf.len() < 64 * 1024 {
            conn.read_buf.reserve(256 * 1024);
        }
        let read = tokio::select! {
            biased;
            _ = stop.changed() => break,
            read = conn.stream.read_buf(&mut conn.read_buf) => read.context("consumer read")?,
        };
        if read == 0 {
            bail!("the broker closed a consumer's AMQP connection");
        }
        let now = shared.now_ns();
        let in_window = now >= shared.window_start_ns && now < shared.window_end_ns.load(Relaxed);
        let acked_before = last_tag;
        while let Some(frame) = wire::decode_frame(&mut conn.read_buf, conn.frame_max)? {
            let body = match frame.payload {
                FramePayload::Method(Method::BasicDeliver { delivery_tag, .. }) => {
                    last_tag = delivery_tag;
                    pending = Some(Pending {
                        size: None,
                        body: BytesMut::new(),
                    });
                    continue;
                }
                FramePayload::Method(
                    Method::ChannelClose { reply_text, .. }
                    | Method::ConnectionClose { reply_text, .. },
                ) => bail!("the broker closed a consumer: {reply_text}"),
                FramePayload::Header(header) => {
                    if let Some(p) = &mut pending {
                        p.size = Some(header.body_size);
                    }
                    continue;
                }
                FramePayload::Body(piece) => piece,
                _ => continue,
            };
            let Some(p) = &mut pending else { continue };
            p.body.extend_from_slice(&body);
            if p.size.is_none_or(|size| (p.body.len() as u64) < size) {
                continue;
            }
            let Some(message) = pending.take() else {
                continue;
            };
            tally.record(&message.body, now, in_window, &shared, &mut done);
        }
        tally.flush(&shared, &mut done);
        if !no_ack && last_tag != acked_before {
            wire::encode_method(
                CHANNEL,
                &Method::BasicAck {
                    delivery_tag: last_tag,
                    multiple: true,
                },
                &mut out,
            );
            conn.stream.write_all(&out).await.context("acknowledging")?;
            out.clear();
        }
    }
    Ok(done)
}

/// Whether `scenario` has AMQP publishers (true) or AMQP consumers (false); `None` for the
/// MQTT-only scenarios.
pub fn amqp_publishers(scenario: Scenario) -> Option<bool> {
    match scenario {
        Scenario::AmqpMqtt => Some(true),
        Scenario::MqttAmqp => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_filters_map_as_rabbitmq_does() {
        assert_eq!(routing_key("bench/amqp/3"), "bench.amqp.3");
        assert_eq!(routing_key("bench/mqtt/+"), "bench.mqtt.*");
    }
}
