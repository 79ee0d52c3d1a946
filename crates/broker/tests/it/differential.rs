//! Differential checks against Mosquitto 2.0: the same raw-byte scenario runs against a
//! Mosquitto process and against midge, and both must show the same outcome, where the
//! specification leaves room and Mosquitto's choice is the sensible one.
//!
//! Packets are written by hand below and read by this file's own small reader, not by
//! midge-proto, so a codec bug in midge cannot hide itself.
//!
//! Where midge deliberately differs, the test asserts what both share and says what
//! differs: a v5 client taken over gets DISCONNECT 0x8E from midge ([MQTT-3.1.4-3]) and a
//! bare close from Mosquitto; a v5 protocol error is announced by midge with a DISCONNECT
//! carrying the specific reason (0x82 for a second CONNECT, 0x90 for a wildcard topic
//! name), by Mosquitto with nothing or 0x82; a v5 PUBREL for an unknown packet id gets
//! PUBCOMP 0x92 from midge and 0x00 from Mosquitto; a v5 QoS 2 PUBLISH nobody subscribed to
//! gets PUBREC 0x10 from midge and 0x00 from Mosquitto (which routes QoS 2 only at PUBREL);
//! and a 3.1.1 client taken over by a connection resuming its persistent session has its
//! will published by midge (the connection closed without DISCONNECT) while Mosquitto
//! drops it.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{TIMEOUT, TestBroker};
use crate::interop_util::Mosquitto;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V311,
    V5,
}

const VERSIONS: [Version; 2] = [Version::V311, Version::V5];

/// What a client saw, decoded by [`Client::next`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    ConnAck {
        session_present: bool,
        code: u8,
    },
    Publish {
        topic: String,
        qos: u8,
        retain: bool,
        payload: Vec<u8>,
    },
    PubAck {
        packet_id: u16,
        code: u8,
    },
    PubRec {
        packet_id: u16,
        code: u8,
    },
    PubComp {
        packet_id: u16,
        code: u8,
    },
    SubAck {
        packet_id: u16,
        codes: Vec<u8>,
    },
    UnsubAck {
        packet_id: u16,
        codes: Vec<u8>,
    },
    Disconnect {
        code: u8,
    },
    /// Any other packet, by its first byte.
    Other(u8),
    /// The broker closed the connection.
    Closed,
}

/// A client id for `version`'s run, so the runs on one broker never share an id.
fn id(name: &str, version: Version) -> String {
    format!("{name}-{version:?}")
}

fn publish_seen(topic: &str, qos: u8, retain: bool, payload: &[u8]) -> Seen {
    Seen::Publish {
        topic: topic.to_owned(),
        qos,
        retain,
        payload: payload.to_vec(),
    }
}

// ---- packets, written by hand ----

/// A two-byte length and the bytes of `s`.
fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// Fixed header (`first` byte, remaining length as a variable byte integer) and body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

#[derive(Debug, Default)]
struct ConnectOptions<'a> {
    /// Clean session (3.1.1) / clean start (5).
    keep_session: bool,
    /// v5 Session Expiry Interval.
    session_expiry: Option<u32>,
    /// Will topic and payload (QoS 0, not retained, no properties).
    will: Option<(&'a str, &'a [u8])>,
}

fn connect(version: Version, client_id: &str, options: &ConnectOptions) -> Vec<u8> {
    let mut body = string(b"MQTT"); // protocol name
    body.push(match version {
        Version::V311 => 4, // protocol level 3.1.1
        Version::V5 => 5,   // protocol level 5
    });
    let mut flags = 0u8;
    if !options.keep_session {
        flags |= 0x02; // clean session / clean start
    }
    if options.will.is_some() {
        flags |= 0x04; // will flag, will QoS 0, will retain 0
    }
    body.push(flags);
    body.extend(60u16.to_be_bytes()); // keep alive 60 s
    if version == Version::V5 {
        match options.session_expiry {
            // property length 5: Session Expiry Interval (0x11), four bytes
            Some(expiry) => {
                body.extend([0x05, 0x11]);
                body.extend(expiry.to_be_bytes());
            }
            None => body.push(0x00), // no properties
        }
    }
    body.extend(string(client_id.as_bytes())); // client identifier
    if let Some((topic, payload)) = options.will {
        if version == Version::V5 {
            body.push(0x00); // no will properties
        }
        body.extend(string(topic.as_bytes())); // will topic
        body.extend(string(payload)); // will payload
    }
    packet(0x10, &body) // CONNECT
}

fn subscribe(version: Version, packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec(); // packet identifier
    if version == Version::V5 {
        body.push(0x00); // no properties
    }
    body.extend(string(filter.as_bytes())); // topic filter
    body.push(qos); // subscription options: maximum QoS only
    packet(0x82, &body) // SUBSCRIBE, reserved flags 0010
}

fn unsubscribe(version: Version, packet_id: u16, filter: &str) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec(); // packet identifier
    if version == Version::V5 {
        body.push(0x00); // no properties
    }
    body.extend(string(filter.as_bytes())); // topic filter
    packet(0xA2, &body) // UNSUBSCRIBE, reserved flags 0010
}

struct Publish<'a> {
    topic: &'a str,
    qos: u8,
    retain: bool,
    dup: bool,
    packet_id: u16,
    payload: &'a [u8],
}

fn publish(version: Version, p: &Publish) -> Vec<u8> {
    // PUBLISH: DUP bit 3, QoS bits 2-1, RETAIN bit 0
    let first = 0x30 | (u8::from(p.dup) << 3) | (p.qos << 1) | u8::from(p.retain);
    let mut body = string(p.topic.as_bytes()); // topic name
    if p.qos > 0 {
        body.extend(p.packet_id.to_be_bytes()); // packet identifier
    }
    if version == Version::V5 {
        body.push(0x00); // no properties
    }
    body.extend_from_slice(p.payload);
    packet(first, &body)
}

fn qos0<'a>(topic: &'a str, payload: &'a [u8]) -> Publish<'a> {
    Publish {
        topic,
        qos: 0,
        retain: false,
        dup: false,
        packet_id: 0,
        payload,
    }
}

/// PUBREL: type 6, reserved flags 0010, remaining length 2, packet identifier.
fn pubrel(packet_id: u16) -> Vec<u8> {
    packet(0x62, &packet_id.to_be_bytes())
}

/// DISCONNECT, remaining length 0 (v5: reason 0x00 normal disconnection).
const DISCONNECT: [u8; 2] = [0xE0, 0x00];

// ---- a raw client ----

struct Client {
    stream: TcpStream,
    version: Version,
    buf: Vec<u8>,
    closed: bool,
}

impl Client {
    /// Connects and returns the client with what it got in answer to CONNECT.
    async fn connect(
        addr: SocketAddr,
        version: Version,
        client_id: &str,
        options: &ConnectOptions<'_>,
    ) -> (Self, Seen) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut client = Self {
            stream,
            version,
            buf: Vec::new(),
            closed: false,
        };
        client.send(&connect(version, client_id, options)).await;
        let connack = client.next().await;
        (client, connack)
    }

    /// Connects with a clean session; panics unless the CONNACK is a success.
    async fn clean(addr: SocketAddr, version: Version, client_id: &str) -> Self {
        let (client, connack) =
            Self::connect(addr, version, client_id, &ConnectOptions::default()).await;
        assert!(
            matches!(connack, Seen::ConnAck { code: 0, .. }),
            "{client_id}: {connack:?}"
        );
        client
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    async fn subscribe(&mut self, packet_id: u16, filter: &str, qos: u8) {
        self.send(&subscribe(self.version, packet_id, filter, qos))
            .await;
        let suback = self.next().await;
        assert_eq!(
            suback,
            Seen::SubAck {
                packet_id,
                codes: vec![qos]
            },
            "SUBSCRIBE {filter}"
        );
    }

    async fn publish(&mut self, p: &Publish<'_>) {
        self.send(&publish(self.version, p)).await;
    }

    /// The next packet, or `Closed`; panics if nothing comes within TIMEOUT.
    async fn next(&mut self) -> Seen {
        loop {
            if let Some(seen) = self.take_packet() {
                return seen;
            }
            if self.closed {
                return Seen::Closed;
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout(TIMEOUT, self.stream.read(&mut chunk))
                .await
                .expect("timed out waiting for a packet");
            match read {
                Ok(0) | Err(_) => self.closed = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Everything up to and including the close.
    async fn until_closed(&mut self) -> Vec<Seen> {
        let mut seen = Vec::new();
        loop {
            let next = self.next().await;
            seen.push(next.clone());
            if next == Seen::Closed {
                return seen;
            }
        }
    }

    /// Decodes one whole packet from the buffer, if there is one.
    fn take_packet(&mut self) -> Option<Seen> {
        let mut length = 0usize;
        let mut header = 1;
        loop {
            let byte = *self.buf.get(header)?;
            length += usize::from(byte & 0x7F) << (7 * (header - 1));
            header += 1;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let body = self.buf.get(header..header + length)?.to_vec();
        let first = self.buf[0];
        self.buf.drain(..header + length);
        Some(decode(self.version, first, &body))
    }
}

fn u16_at(body: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([body[at], body[at + 1]])
}

/// Skips a v5 property block at `at` (variable byte integer length, then the
/// properties); returns the offset after it.
fn skip_properties(body: &[u8], mut at: usize) -> usize {
    let mut length = 0usize;
    let mut shift = 0;
    loop {
        let byte = body[at];
        at += 1;
        length += usize::from(byte & 0x7F) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return at + length;
        }
    }
}

fn decode(version: Version, first: u8, body: &[u8]) -> Seen {
    let v5 = version == Version::V5;
    // PUBACK, PUBREC, PUBCOMP: packet id, then (v5) a reason code that defaults to 0.
    let ack = |body: &[u8]| (u16_at(body, 0), body.get(2).copied().unwrap_or(0));
    match first >> 4 {
        2 => Seen::ConnAck {
            session_present: body[0] & 1 == 1,
            code: body[1],
        },
        3 => {
            let qos = (first >> 1) & 3;
            let topic_len = usize::from(u16_at(body, 0));
            let topic = String::from_utf8(body[2..2 + topic_len].to_vec()).expect("UTF-8 topic");
            let mut at = 2 + topic_len + if qos > 0 { 2 } else { 0 };
            if v5 {
                at = skip_properties(body, at);
            }
            publish_seen(&topic, qos, first & 1 == 1, &body[at..])
        }
        4 => {
            let (packet_id, code) = ack(body);
            Seen::PubAck { packet_id, code }
        }
        5 => {
            let (packet_id, code) = ack(body);
            Seen::PubRec { packet_id, code }
        }
        7 => {
            let (packet_id, code) = ack(body);
            Seen::PubComp { packet_id, code }
        }
        9 | 11 => {
            let packet_id = u16_at(body, 0);
            let at = if v5 { skip_properties(body, 2) } else { 2 };
            let codes = body[at..].to_vec();
            if first >> 4 == 9 {
                Seen::SubAck { packet_id, codes }
            } else {
                Seen::UnsubAck { packet_id, codes }
            }
        }
        14 => Seen::Disconnect {
            code: body.first().copied().unwrap_or(0),
        },
        _ => Seen::Other(first),
    }
}

// ---- running a scenario on both brokers ----

/// A fresh midge and a fresh Mosquitto.
async fn brokers() -> (TestBroker, Mosquitto) {
    (TestBroker::start().await, Mosquitto::start().await)
}

/// Runs `scenario` for `version` against midge, then against Mosquitto; evaluates to
/// (midge's outcome, Mosquitto's outcome).
macro_rules! on_both {
    ($midge:expr, $mosquitto:expr, $version:expr, $scenario:ident) => {{
        let ours = $scenario($midge.addr, $version).await;
        let theirs = $scenario($mosquitto.addr, $version).await;
        (ours, theirs)
    }};
}

// ---- scenarios ----

/// Client A, with a will, is taken over by client B (same id, clean session/start, no
/// session kept). What B's CONNACK says and what a watcher of the will topic gets.
async fn takeover_will(addr: SocketAddr, version: Version) -> (Seen, Seen) {
    let topic = format!("diff/will/{version:?}");
    let mut watcher = Client::clean(addr, version, &id("watcher", version)).await;
    watcher.subscribe(1, &topic, 0).await;
    let will = ConnectOptions {
        will: Some((&topic, b"A is gone")),
        ..Default::default()
    };
    let (_a, connack) = Client::connect(addr, version, &id("takeover", version), &will).await;
    assert!(matches!(connack, Seen::ConnAck { code: 0, .. }));
    let (_b, connack_b) = Client::connect(
        addr,
        version,
        &id("takeover", version),
        &ConnectOptions::default(),
    )
    .await;
    (connack_b, watcher.next().await)
}

#[tokio::test]
async fn differential_will_is_published_when_a_clean_session_is_taken_over() {
    let (midge, mosquitto) = brokers().await;
    for version in VERSIONS {
        let (ours, theirs) = on_both!(midge, mosquitto, version, takeover_will);
        assert_eq!(ours, theirs, "{version:?}: midge vs Mosquitto");
        let topic = format!("diff/will/{version:?}");
        assert_eq!(
            ours,
            (
                Seen::ConnAck {
                    session_present: false,
                    code: 0
                },
                publish_seen(&topic, 0, false, b"A is gone")
            ),
            "{version:?}"
        );
    }
    midge.shutdown().await;
}

/// A second CONNECT, and a PUBLISH to a topic name with a wildcard: protocol errors.
/// Everything the client saw until the connection closed, for each.
async fn protocol_errors(addr: SocketAddr, version: Version) -> [Vec<Seen>; 2] {
    let mut twice = Client::clean(addr, version, &id("twice", version)).await;
    twice
        .send(&connect(
            version,
            &id("twice", version),
            &ConnectOptions::default(),
        ))
        .await;
    let mut wildcard = Client::clean(addr, version, &id("wildcard", version)).await;
    wildcard.publish(&qos0("diff/+/wildcard", b"no")).await;
    [twice.until_closed().await, wildcard.until_closed().await]
}

#[tokio::test]
async fn differential_protocol_errors_close_the_connection() {
    let (midge, mosquitto) = brokers().await;
    // 3.1.1 has no way to say why: both just close.
    let (ours, theirs) = on_both!(midge, mosquitto, Version::V311, protocol_errors);
    assert_eq!(ours, theirs, "3.1.1: midge vs Mosquitto");
    assert_eq!(ours, [vec![Seen::Closed], vec![Seen::Closed]]);

    // v5: both close, having sent at most a DISCONNECT with an error reason (midge names
    // the reason; Mosquitto 2.0 sends nothing for a second CONNECT and 0x82 for the topic).
    let (ours, theirs) = on_both!(midge, mosquitto, Version::V5, protocol_errors);
    for (broker, outcome) in [("midge", &ours), ("Mosquitto", &theirs)] {
        for seen in outcome {
            let closes_with_at_most_an_error = match &seen[..] {
                [Seen::Closed] => true,
                [Seen::Disconnect { code }, Seen::Closed] => *code >= 0x80,
                _ => false,
            };
            assert!(closes_with_at_most_an_error, "v5 {broker}: {seen:?}");
        }
    }
    assert_eq!(
        ours,
        [
            vec![Seen::Disconnect { code: 0x82 }, Seen::Closed],
            vec![Seen::Disconnect { code: 0x90 }, Seen::Closed],
        ],
        "v5 midge: protocol error, topic name invalid"
    );
    midge.shutdown().await;
}

/// A QoS 2 retained message (full QoS 2 exchange, nobody subscribed yet), then
/// subscribers at QoS 1 and QoS 0: the publisher's PUBCOMP and what each subscriber gets
/// on subscribe. The PUBREC reason differs and is only checked to be a success: midge
/// routes on PUBLISH and says 0x10 (no matching subscribers), Mosquitto routes QoS 2 on
/// PUBREL and says 0x00.
async fn retained_downgrade(addr: SocketAddr, version: Version) -> (Seen, Vec<Seen>) {
    let topic = format!("diff/retained/{version:?}");
    let mut publisher = Client::clean(addr, version, &id("retainer", version)).await;
    publisher
        .publish(&Publish {
            topic: &topic,
            qos: 2,
            retain: true,
            dup: false,
            packet_id: 3,
            payload: b"stored at QoS 2",
        })
        .await;
    let pubrec = publisher.next().await;
    assert!(
        matches!(pubrec, Seen::PubRec { packet_id: 3, code } if code < 0x80),
        "{pubrec:?}"
    );
    publisher.send(&pubrel(3)).await;
    let pubcomp = publisher.next().await;
    let mut seen = Vec::new();
    for qos in [1, 0] {
        let mut subscriber =
            Client::clean(addr, version, &id(&format!("retained-q{qos}"), version)).await;
        subscriber.subscribe(1, &topic, qos).await;
        seen.push(subscriber.next().await);
    }
    (pubcomp, seen)
}

#[tokio::test]
async fn differential_retained_message_comes_at_the_lower_subscription_qos() {
    let (midge, mosquitto) = brokers().await;
    for version in VERSIONS {
        let (ours, theirs) = on_both!(midge, mosquitto, version, retained_downgrade);
        assert_eq!(ours, theirs, "{version:?}: midge vs Mosquitto");
        let topic = format!("diff/retained/{version:?}");
        assert_eq!(
            ours,
            (
                Seen::PubComp {
                    packet_id: 3,
                    code: 0
                },
                vec![
                    publish_seen(&topic, 1, true, b"stored at QoS 2"),
                    publish_seen(&topic, 0, true, b"stored at QoS 2"),
                ]
            ),
            "{version:?}"
        );
    }
    midge.shutdown().await;
}

/// A client publishes QoS 1 to `$SYS/...`, then QoS 0 to a marker topic; a watcher of
/// both. The acknowledgement, and the watcher's first message.
async fn sys_publish(addr: SocketAddr, version: Version) -> (Seen, Seen) {
    let mut watcher = Client::clean(addr, version, &id("sys-watcher", version)).await;
    watcher.subscribe(1, "$SYS/diff/#", 0).await;
    watcher.subscribe(2, "diff/marker", 0).await;
    let mut client = Client::clean(addr, version, &id("sys-writer", version)).await;
    client
        .publish(&Publish {
            topic: "$SYS/diff/forged",
            qos: 1,
            retain: false,
            dup: false,
            packet_id: 5,
            payload: b"forged",
        })
        .await;
    let ack = client.next().await;
    // Routed, the $SYS message would reach the watcher before the marker.
    client.publish(&qos0("diff/marker", b"after")).await;
    (ack, watcher.next().await)
}

#[tokio::test]
async fn differential_client_publish_to_sys_is_acknowledged_and_not_delivered() {
    let (midge, mosquitto) = brokers().await;
    for (version, code) in [(Version::V311, 0x00), (Version::V5, 0x87)] {
        let (ours, theirs) = on_both!(midge, mosquitto, version, sys_publish);
        assert_eq!(ours, theirs, "{version:?}: midge vs Mosquitto");
        assert_eq!(
            ours,
            (
                // v3 cannot be told; v5 hears 0x87 (not authorized).
                Seen::PubAck { packet_id: 5, code },
                publish_seen("diff/marker", 0, false, b"after"),
            ),
            "{version:?}"
        );
    }
    midge.shutdown().await;
}

/// A persistent subscriber (3.1.1 clean session 0; v5 session expiry 300) goes offline;
/// QoS 0 then QoS 1 messages are published; it returns. Its CONNACK and first message.
async fn offline_qos0(addr: SocketAddr, version: Version) -> (Seen, Seen) {
    let persistent = ConnectOptions {
        keep_session: version == Version::V311,
        session_expiry: Some(300),
        ..Default::default()
    };
    let topic = format!("diff/offline/{version:?}");
    let (mut subscriber, _) =
        Client::connect(addr, version, &id("offline", version), &persistent).await;
    subscriber.subscribe(1, &topic, 1).await;
    subscriber.send(&DISCONNECT).await;
    // The broker closes after DISCONNECT: from then on the session is offline.
    assert_eq!(subscriber.until_closed().await, [Seen::Closed]);

    let mut publisher = Client::clean(addr, version, &id("offline-pub", version)).await;
    publisher.publish(&qos0(&topic, b"qos 0")).await;
    publisher
        .publish(&Publish {
            topic: &topic,
            qos: 1,
            retain: false,
            dup: false,
            packet_id: 4,
            payload: b"qos 1",
        })
        .await;
    assert_eq!(
        publisher.next().await,
        Seen::PubAck {
            packet_id: 4,
            code: 0
        }
    );

    let resume = ConnectOptions {
        keep_session: true,
        ..persistent
    };
    let (mut back, connack) =
        Client::connect(addr, version, &id("offline", version), &resume).await;
    (connack, back.next().await)
}

#[tokio::test]
async fn differential_qos0_message_to_an_offline_persistent_session_is_dropped() {
    let (midge, mosquitto) = brokers().await;
    for version in VERSIONS {
        let (ours, theirs) = on_both!(midge, mosquitto, version, offline_qos0);
        assert_eq!(ours, theirs, "{version:?}: midge vs Mosquitto");
        let topic = format!("diff/offline/{version:?}");
        assert_eq!(
            ours,
            (
                Seen::ConnAck {
                    session_present: true,
                    code: 0
                },
                publish_seen(&topic, 1, false, b"qos 1"),
            ),
            "{version:?}"
        );
    }
    midge.shutdown().await;
}

/// A QoS 2 PUBLISH, the same again with DUP before PUBREL, then PUBREL and a QoS 0
/// marker. The publisher's acknowledgements and what a watcher got up to the marker.
async fn qos2_resend(addr: SocketAddr, version: Version) -> (Vec<Seen>, Vec<Seen>) {
    let mut watcher = Client::clean(addr, version, &id("dup-watcher", version)).await;
    watcher.subscribe(1, "diff/dup/#", 0).await;
    let mut publisher = Client::clean(addr, version, &id("dup-pub", version)).await;
    let mut message = Publish {
        topic: "diff/dup/t",
        qos: 2,
        retain: false,
        dup: false,
        packet_id: 9,
        payload: b"once",
    };
    let mut acks = Vec::new();
    publisher.publish(&message).await;
    acks.push(publisher.next().await);
    message.dup = true;
    publisher.publish(&message).await;
    acks.push(publisher.next().await);
    publisher.send(&pubrel(9)).await;
    acks.push(publisher.next().await);
    publisher.publish(&qos0("diff/dup/marker", b"end")).await;
    let mut got = vec![watcher.next().await];
    while got.last() != Some(&publish_seen("diff/dup/marker", 0, false, b"end")) {
        got.push(watcher.next().await);
    }
    (acks, got)
}

#[tokio::test]
async fn differential_qos2_publish_resent_before_pubrel_is_routed_once() {
    let (midge, mosquitto) = brokers().await;
    for version in VERSIONS {
        let (ours, theirs) = on_both!(midge, mosquitto, version, qos2_resend);
        assert_eq!(ours, theirs, "{version:?}: midge vs Mosquitto");
        let rec = Seen::PubRec {
            packet_id: 9,
            code: 0,
        };
        assert_eq!(
            ours,
            (
                vec![
                    rec.clone(),
                    rec,
                    Seen::PubComp {
                        packet_id: 9,
                        code: 0
                    }
                ],
                vec![
                    publish_seen("diff/dup/t", 0, false, b"once"),
                    publish_seen("diff/dup/marker", 0, false, b"end"),
                ]
            ),
            "{version:?}"
        );
    }
    midge.shutdown().await;
}

/// PUBREL for a packet id the broker never saw: the answer.
async fn unknown_pubrel(addr: SocketAddr, version: Version) -> Seen {
    let mut client = Client::clean(addr, version, &id("pubrel", version)).await;
    client.send(&pubrel(7)).await;
    client.next().await
}

/// UNSUBSCRIBE from a filter never subscribed: the answer.
async fn unknown_unsubscribe(addr: SocketAddr, version: Version) -> Seen {
    let mut client = Client::clean(addr, version, &id("unsubscriber", version)).await;
    client.send(&unsubscribe(version, 5, "diff/never")).await;
    client.next().await
}

#[tokio::test]
async fn differential_acknowledgements_for_unknown_ids_and_filters() {
    let (midge, mosquitto) = brokers().await;
    // v3.1.1 PUBREL for an unknown id: PUBCOMP all the same (v5 differs, see the top).
    let (ours, theirs) = on_both!(midge, mosquitto, Version::V311, unknown_pubrel);
    assert_eq!(ours, theirs, "3.1.1 PUBREL: midge vs Mosquitto");
    assert_eq!(
        ours,
        Seen::PubComp {
            packet_id: 7,
            code: 0
        }
    );
    for (version, codes) in [(Version::V311, vec![]), (Version::V5, vec![0x11])] {
        let (ours, theirs) = on_both!(midge, mosquitto, version, unknown_unsubscribe);
        assert_eq!(ours, theirs, "{version:?} UNSUBSCRIBE: midge vs Mosquitto");
        // v5: 0x11 no subscription existed; v3 UNSUBACK has no codes.
        assert_eq!(
            ours,
            Seen::UnsubAck {
                packet_id: 5,
                codes
            },
            "{version:?}"
        );
    }
    midge.shutdown().await;
}
