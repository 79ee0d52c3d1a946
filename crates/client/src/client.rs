//! The protocol on top of the framing: one operation at a time, each returning when its
//! exchange is complete, with the broker's publications and pings handled in between.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use midge_proto::{
    ConnAck, Connect, ConnectProperties, Disconnect, Packet, ProtocolVersion, PubResponse, Publish,
    QoS, ReasonCode, SubAck, Subscribe, SubscribeProperties, SubscriptionOptions, UnsubAck,
    Unsubscribe, UserProperty,
};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::time::Instant;

use crate::error::v3_return_code;
use crate::{BoxStream, Error, PacketReader, PacketWriter, Transport};

/// What to send in CONNECT, and how long to wait for answers.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The CONNECT packet as sent (version, client id, clean start, keep-alive, will,
    /// credentials, v5 properties).
    pub connect: Connect,
    /// The longest wait for CONNACK and for each acknowledgement.
    pub timeout: Duration,
    /// The largest packet accepted from the broker (announced in v5 CONNECT only if set
    /// in `connect.properties`).
    pub max_packet_size: u32,
}

impl ConnectOptions {
    /// Clean start, keep-alive 60 s, no credentials, no will, a 10 s timeout.
    pub fn new(protocol: ProtocolVersion, client_id: impl Into<String>) -> Self {
        Self {
            connect: Connect {
                protocol,
                clean_start: true,
                keep_alive: 60,
                client_id: client_id.into(),
                will: None,
                username: None,
                password: None,
                properties: ConnectProperties::default(),
            },
            timeout: Duration::from_secs(10),
            max_packet_size: midge_proto::MAX_PACKET_SIZE,
        }
    }
}

/// A connected MQTT client.
#[derive(Debug)]
pub struct Client {
    reader: PacketReader<ReadHalf<BoxStream>>,
    writer: PacketWriter<WriteHalf<BoxStream>>,
    version: ProtocolVersion,
    connack: ConnAck,
    /// The keep-alive in force (the broker's Server Keep Alive wins); `None` when off.
    keep_alive: Option<Duration>,
    last_sent: Instant,
    ping_sent: Option<Instant>,
    timeout: Duration,
    next_packet_id: u16,
    /// Publications that arrived while another exchange was waited for.
    received: VecDeque<Publish>,
    /// Inbound QoS 2 packet ids delivered and not yet released by PUBREL: a PUBLISH
    /// repeating one is acknowledged again but not delivered twice.
    awaiting_pubrel: HashSet<u16>,
}

impl Client {
    /// Opens `transport`, sends CONNECT and waits for CONNACK. A refusal is
    /// [`Error::Refused`].
    pub async fn connect(transport: &Transport, options: ConnectOptions) -> Result<Self, Error> {
        let stream = transport.connect().await?;
        Self::handshake(stream, options).await
    }

    /// CONNECT and CONNACK over a stream that is already open.
    pub async fn handshake(stream: BoxStream, options: ConnectOptions) -> Result<Self, Error> {
        let version = options.connect.protocol;
        let (read, write) = tokio::io::split(stream);
        let mut reader = PacketReader::new(read, version, options.max_packet_size);
        let mut writer = PacketWriter::new(write, version);
        let requested_keep_alive = options.connect.keep_alive;
        let exchange = async {
            writer
                .send(&Packet::Connect(Box::new(options.connect)))
                .await?;
            reader.read_packet().await
        };
        let packet = tokio::time::timeout(options.timeout, exchange)
            .await
            .map_err(|_| Error::Timeout("waiting for CONNACK"))??;
        let connack = match packet {
            Packet::ConnAck(connack) => connack,
            Packet::Disconnect(disconnect) => return Err(disconnected(disconnect)),
            other => {
                return Err(Error::Protocol(format!(
                    "expected CONNACK, got {}",
                    other.name()
                )));
            }
        };
        if connack.reason_code.is_error() {
            return Err(Error::Refused {
                reason: connack.reason_code,
                v3_return_code: v3_return_code(version, connack.reason_code),
                reason_string: connack.properties.reason_string,
            });
        }
        // [MQTT-3.2.2-21] the Server Keep Alive replaces the value the client sent.
        let keep_alive = connack
            .properties
            .server_keep_alive
            .unwrap_or(requested_keep_alive);
        Ok(Self {
            reader,
            writer,
            version,
            connack,
            keep_alive: (keep_alive > 0).then(|| Duration::from_secs(u64::from(keep_alive))),
            last_sent: Instant::now(),
            ping_sent: None,
            timeout: options.timeout,
            next_packet_id: 0,
            received: VecDeque::new(),
            awaiting_pubrel: HashSet::new(),
        })
    }

    /// The broker's CONNACK (session present, v5 properties such as an assigned client
    /// identifier).
    pub fn connack(&self) -> &ConnAck {
        &self.connack
    }

    /// The protocol version of this connection.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// The keep-alive in force, `None` when off.
    pub fn keep_alive(&self) -> Option<Duration> {
        self.keep_alive
    }

    /// Publishes and waits for the whole acknowledgement flow: nothing for QoS 0, PUBACK for
    /// QoS 1, PUBREC/PUBREL/PUBCOMP for QoS 2. The packet id is assigned here. Returns the
    /// final reason code (v5 may say 0x10 no matching subscribers); a refusal is
    /// [`Error::Rejected`].
    pub async fn publish(&mut self, mut publish: Publish) -> Result<ReasonCode, Error> {
        let qos = publish.qos;
        publish.packet_id = match qos {
            QoS::AtMostOnce => 0,
            _ => self.packet_id(),
        };
        let id = publish.packet_id;
        self.queue(&Packet::Publish(publish))?;
        match qos {
            QoS::AtMostOnce => {
                self.flush().await?;
                Ok(ReasonCode::SUCCESS)
            }
            QoS::AtLeastOnce => {
                let ack = self
                    .wait_for(
                        "PUBACK",
                        |p| matches!(p, Packet::PubAck(a) if a.packet_id == id),
                    )
                    .await?;
                response_reason(ack, "publish")
            }
            QoS::ExactlyOnce => {
                let rec = self
                    .wait_for(
                        "PUBREC",
                        |p| matches!(p, Packet::PubRec(a) if a.packet_id == id),
                    )
                    .await?;
                // [MQTT-4.3.3] an error PUBREC ends the exchange; no PUBREL follows.
                let reason = response_reason(rec, "publish")?;
                self.queue(&Packet::PubRel(PubResponse::success(id)))?;
                let comp = self
                    .wait_for(
                        "PUBCOMP",
                        |p| matches!(p, Packet::PubComp(a) if a.packet_id == id),
                    )
                    .await?;
                response_reason(comp, "publish (PUBCOMP)")?;
                Ok(reason)
            }
        }
    }

    /// Subscribes and returns the broker's answer per filter, in order: the granted QoS, or
    /// a failure code (v3 failures are 0x80).
    pub async fn subscribe(
        &mut self,
        filters: Vec<(String, SubscriptionOptions)>,
        properties: SubscribeProperties,
    ) -> Result<Vec<ReasonCode>, Error> {
        let id = self.packet_id();
        let count = filters.len();
        self.queue(&Packet::Subscribe(Subscribe {
            packet_id: id,
            filters,
            properties,
        }))?;
        let packet = self
            .wait_for(
                "SUBACK",
                |p| matches!(p, Packet::SubAck(a) if a.packet_id == id),
            )
            .await?;
        let Packet::SubAck(SubAck { reason_codes, .. }) = packet else {
            unreachable!("wait_for returns the packet it matched");
        };
        if reason_codes.len() != count {
            return Err(Error::Protocol(format!(
                "SUBACK has {} return codes for {count} filters",
                reason_codes.len()
            )));
        }
        Ok(reason_codes)
    }

    /// Unsubscribes; returns v5's reason per filter (empty for v3, which has none).
    pub async fn unsubscribe(
        &mut self,
        filters: Vec<String>,
        user_properties: Vec<UserProperty>,
    ) -> Result<Vec<ReasonCode>, Error> {
        let id = self.packet_id();
        self.queue(&Packet::Unsubscribe(Unsubscribe {
            packet_id: id,
            filters,
            user_properties,
        }))?;
        let packet = self
            .wait_for(
                "UNSUBACK",
                |p| matches!(p, Packet::UnsubAck(a) if a.packet_id == id),
            )
            .await?;
        let Packet::UnsubAck(UnsubAck { reason_codes, .. }) = packet else {
            unreachable!("wait_for returns the packet it matched");
        };
        Ok(reason_codes)
    }

    /// The next publication from the broker, acknowledged (QoS 1: PUBACK; QoS 2: PUBREC,
    /// then PUBCOMP when PUBREL comes). Keeps the connection alive while it waits.
    /// Cancel-safe: dropping the future loses no message, so it can sit in a `select!`.
    pub async fn recv(&mut self) -> Result<Publish, Error> {
        loop {
            if !self.received.is_empty() {
                // Its acknowledgement goes out before the caller sees it; flushing first
                // keeps the message queued if this future is dropped meanwhile.
                self.flush().await?;
                if let Some(publish) = self.received.pop_front() {
                    return Ok(publish);
                }
            }
            let packet = self.next_packet(None).await?;
            if let Some(other) = self.absorb(packet)? {
                return Err(unexpected(&other, "PUBLISH"));
            }
        }
    }

    /// Sends DISCONNECT and closes the connection (v5: with `disconnect`'s reason and
    /// properties; v3 DISCONNECT has none).
    pub async fn disconnect(mut self, disconnect: Disconnect) -> Result<(), Error> {
        self.queue(&Packet::Disconnect(disconnect))?;
        tokio::time::timeout(self.timeout, self.writer.shutdown())
            .await
            .map_err(|_| Error::Timeout("sending DISCONNECT"))?
    }

    /// Packet ids cycle through 1..=65535; one exchange at a time never reuses a live one.
    fn packet_id(&mut self) -> u16 {
        self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
        self.next_packet_id
    }

    fn queue(&mut self, packet: &Packet) -> Result<(), Error> {
        self.writer.queue(packet)?;
        self.last_sent = Instant::now();
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Error> {
        tokio::time::timeout(self.timeout, self.writer.flush())
            .await
            .map_err(|_| Error::Timeout("writing to the broker"))?
    }

    /// Reads packets, handling the broker's publications and pings, until one matches.
    async fn wait_for(
        &mut self,
        what: &'static str,
        matches: impl Fn(&Packet) -> bool,
    ) -> Result<Packet, Error> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let packet = self.next_packet(Some((deadline, what))).await?;
            match self.absorb(packet)? {
                None => {}
                Some(packet) if matches(&packet) => return Ok(packet),
                Some(other) => return Err(unexpected(&other, what)),
            }
        }
    }

    /// The next packet from the broker, writing queued bytes and sending PINGREQ when the
    /// keep-alive falls due meanwhile. Every branch is cancel-safe.
    async fn next_packet(
        &mut self,
        deadline: Option<(Instant, &'static str)>,
    ) -> Result<Packet, Error> {
        loop {
            if let Some(packet) = self.reader.try_decode()? {
                return Ok(packet);
            }
            // [MQTT-3.1.2-23] a control packet at least every keep-alive; when a PINGREQ is
            // out, its PINGRESP is due within the same interval.
            let ping_at = self
                .keep_alive
                .map(|interval| self.ping_sent.map_or(self.last_sent, |sent| sent) + interval);
            let far = Instant::now() + Duration::from_secs(86_400);
            tokio::select! {
                result = self.writer.write_some(), if self.writer.has_work() => result?,
                result = self.reader.fill() => result?,
                () = tokio::time::sleep_until(ping_at.unwrap_or(far)), if ping_at.is_some() => {
                    if self.ping_sent.is_some() {
                        return Err(Error::Timeout("waiting for PINGRESP"));
                    }
                    self.queue(&Packet::PingReq)?;
                    self.ping_sent = Some(Instant::now());
                }
                () = tokio::time::sleep_until(deadline.map_or(far, |(at, _)| at)),
                    if deadline.is_some() =>
                {
                    let what = deadline.map_or("", |(_, what)| what);
                    return Err(Error::Timeout(waiting_for(what)));
                }
            }
        }
    }

    /// Handles what the broker may send at any time; returns any other packet.
    fn absorb(&mut self, packet: Packet) -> Result<Option<Packet>, Error> {
        match packet {
            Packet::Publish(publish) => {
                match publish.qos {
                    QoS::AtMostOnce => self.received.push_back(publish),
                    QoS::AtLeastOnce => {
                        self.queue(&Packet::PubAck(PubResponse::success(publish.packet_id)))?;
                        self.received.push_back(publish);
                    }
                    QoS::ExactlyOnce => {
                        let id = publish.packet_id;
                        self.queue(&Packet::PubRec(PubResponse::success(id)))?;
                        // [MQTT-4.3.3-10] a repeat of an unreleased id is not delivered again.
                        if self.awaiting_pubrel.insert(id) {
                            self.received.push_back(publish);
                        }
                    }
                }
                Ok(None)
            }
            Packet::PubRel(release) => {
                let id = release.packet_id;
                let known = self.awaiting_pubrel.remove(&id);
                let mut comp = PubResponse::success(id);
                if !known && self.version.is_v5() {
                    comp.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                self.queue(&Packet::PubComp(comp))?;
                Ok(None)
            }
            Packet::PingResp => {
                self.ping_sent = None;
                Ok(None)
            }
            Packet::Disconnect(disconnect) => Err(disconnected(disconnect)),
            other => Ok(Some(other)),
        }
    }
}

fn waiting_for(what: &'static str) -> &'static str {
    match what {
        "PUBACK" => "waiting for PUBACK",
        "PUBREC" => "waiting for PUBREC",
        "PUBCOMP" => "waiting for PUBCOMP",
        "SUBACK" => "waiting for SUBACK",
        "UNSUBACK" => "waiting for UNSUBACK",
        _ => "waiting for the broker",
    }
}

fn unexpected(packet: &Packet, what: &str) -> Error {
    Error::Protocol(format!(
        "unexpected {} while waiting for {what}",
        packet.name()
    ))
}

fn disconnected(disconnect: Disconnect) -> Error {
    Error::Disconnected {
        reason: disconnect.reason_code,
        reason_string: disconnect.properties.reason_string,
    }
}

fn response_reason(packet: Packet, what: &str) -> Result<ReasonCode, Error> {
    let (Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubComp(r)) = packet else {
        return Err(unexpected(&packet, "a publish acknowledgement"));
    };
    if r.reason_code.is_error() {
        return Err(Error::Rejected {
            what: what.to_owned(),
            reason: r.reason_code,
        });
    }
    Ok(r.reason_code)
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
