//! The few client-side MQTT exchanges the bench needs, on `midge-proto` over a plain
//! `TcpStream`: CONNECT/CONNACK, SUBSCRIBE/SUBACK, and `conn`'s one fanned-out message.
//! Publishing and receiving under load are done by the load tasks themselves, with their
//! own buffers.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::BytesMut;
use midge_proto::{
    Connect, ConnectProperties, Decoder, MAX_PACKET_SIZE, OutgoingPublish, Packet, ProtocolVersion,
    PublishProperties, QoS, ReasonCode, Subscribe, SubscribeProperties, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a handshake or a subscription may take before the bench gives up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// An MQTT connection after CONNACK.
#[derive(Debug)]
pub struct Client {
    pub stream: TcpStream,
    pub decoder: Decoder,
    /// Bytes read past the last decoded packet.
    pub read_buf: BytesMut,
    pub version: ProtocolVersion,
    /// CONNECT written to CONNACK read.
    pub handshake: Duration,
    /// The broker's Receive Maximum (MQTT 5): QoS 1/2 messages it accepts unacknowledged.
    pub receive_maximum: u16,
}

/// Linux's errno for "too many open files" (per process).
const EMFILE: i32 = 24;

/// A clear message for running out of file descriptors, the usual failure with many
/// connections.
pub fn explain_io(error: std::io::Error, what: &str) -> anyhow::Error {
    if error.raw_os_error() == Some(EMFILE) {
        let limit = super::procstat::open_files_limit()
            .map_or_else(|| "unknown".to_string(), |l| l.to_string());
        anyhow!(
            "{what}: too many open files (the limit is {limit}); raise it with `ulimit -n`, \
             e.g. `ulimit -n 65536` before running the bench"
        )
    } else {
        anyhow::Error::new(error).context(what.to_string())
    }
}

/// Connects to `addr` from `source`.
async fn connect_bound(addr: &str, source: std::net::IpAddr) -> std::io::Result<TcpStream> {
    let target = tokio::net::lookup_host(addr)
        .await?
        .find(|a| a.is_ipv4() == source.is_ipv4())
        .ok_or_else(|| std::io::Error::other(format!("{addr}: no address of {source}'s family")))?;
    let socket = if source.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

impl Client {
    /// Connects with a clean session and keep-alive off (idle subscribers send nothing,
    /// and a keep-alive would make the broker close them).
    pub async fn connect(
        addr: &str,
        client_id: &str,
        version: ProtocolVersion,
    ) -> anyhow::Result<Self> {
        Self::connect_from(addr, None, client_id, version).await
    }

    /// [`Client::connect`] from the local address `source` (any port), when given.
    pub async fn connect_from(
        addr: &str,
        source: Option<std::net::IpAddr>,
        client_id: &str,
        version: ProtocolVersion,
    ) -> anyhow::Result<Self> {
        let stream = match source {
            None => TcpStream::connect(addr).await,
            Some(source) => connect_bound(addr, source).await,
        }
        .map_err(|e| explain_io(e, &format!("connecting to {addr}")))?;
        // Latency matters more than packet count: the bench batches its own writes.
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let mut client = Self {
            stream,
            decoder: Decoder::with_version(version, MAX_PACKET_SIZE),
            read_buf: BytesMut::with_capacity(256),
            version,
            handshake: Duration::ZERO,
            receive_maximum: u16::MAX,
        };
        let connect = Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: true,
            keep_alive: 0,
            client_id: client_id.to_string(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        }));
        let started = Instant::now();
        client.send(&connect).await?;
        match client.reply().await? {
            Packet::ConnAck(ack) if ack.reason_code == ReasonCode::SUCCESS => {
                // Absent means 65,535 [MQTT-3.2.2.3.3]; MQTT 3 has no such limit on the wire.
                if let Some(max) = ack.properties.receive_maximum {
                    client.receive_maximum = max;
                }
            }
            Packet::ConnAck(ack) => bail!(
                "{client_id}: CONNACK refused: {:#04x} {}",
                ack.reason_code.0,
                ack.reason_code.description()
            ),
            other => bail!("{client_id}: expected CONNACK, got {}", other.name()),
        }
        client.handshake = started.elapsed();
        Ok(client)
    }

    /// Subscribes to `filter` and waits for SUBACK; a refusal is an error.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        let subscribe = Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                filter.to_string(),
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            )],
            properties: SubscribeProperties::default(),
        });
        self.send(&subscribe).await?;
        match self.reply().await? {
            Packet::SubAck(ack) => match ack.reason_codes.first() {
                Some(code) if !code.is_error() => Ok(()),
                Some(code) => bail!("SUBSCRIBE {filter} refused: {:#04x}", code.0),
                None => bail!("SUBACK without a reason code"),
            },
            other => bail!("expected SUBACK, got {}", other.name()),
        }
    }

    /// Sends one QoS 0 PUBLISH.
    pub async fn publish_qos0(&mut self, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
        let mut buf = BytesMut::new();
        OutgoingPublish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic,
            packet_id: 0,
            properties: &PublishProperties::default(),
            topic_alias: None,
            message_expiry_interval: None,
            subscription_identifiers: &[],
            payload,
        }
        .encode(self.version, &mut buf)
        .context("encoding a PUBLISH")?;
        self.write(&buf).await
    }

    /// The next packet from the broker, however long it takes.
    pub async fn wait_packet(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.read_buf)? {
                return Ok(packet);
            }
            self.read_buf.reserve(256);
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                bail!("the broker closed the connection");
            }
        }
    }

    async fn send(&mut self, packet: &Packet) -> anyhow::Result<()> {
        let mut buf = BytesMut::new();
        packet
            .encode(self.version, &mut buf)
            .context("encoding a packet")?;
        self.write(&buf).await
    }

    async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream
            .write_all(bytes)
            .await
            .context("writing to the broker")
    }

    async fn reply(&mut self) -> anyhow::Result<Packet> {
        tokio::time::timeout(REPLY_TIMEOUT, self.wait_packet())
            .await
            .map_err(|_| anyhow!("no reply from the broker within {REPLY_TIMEOUT:?}"))?
    }
}
