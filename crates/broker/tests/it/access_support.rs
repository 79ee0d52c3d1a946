//! Helpers for the access-control tests: temporary files, brokers with access settings,
//! and raw MQTT packets with credentials, spelled out byte by byte.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use midge_broker::Config;
use tokio::net::TcpStream;

use crate::harness::{Raw, TestBroker};

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("midge-it-{}-{n}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    /// Writes `text` to `name` in this directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A broker whose `[auth]` section is set by `auth`; anonymous access is refused unless
/// `auth` says otherwise.
pub async fn broker_with(auth: impl FnOnce(&mut Config)) -> TestBroker {
    TestBroker::start_with(|config| {
        config.auth.allow_anonymous = Some(false);
        auth(config);
    })
    .await
}

/// A raw connection to `broker`.
pub async fn raw(broker: &TestBroker) -> Raw {
    Raw {
        stream: TcpStream::connect(broker.addr).await.expect("connect"),
    }
}

fn push_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u16).to_be_bytes());
    out.extend(s);
}

/// Fixed header byte plus the remaining length as a variable byte integer.
fn frame(first: u8, body: Vec<u8>) -> Vec<u8> {
    let mut packet = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

/// A will for [`connect`]: topic and payload, QoS 0, not retained.
pub struct WillSpec<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
}

/// CONNECT, v5 or v3.1.1, clean start, keep alive 60, with optional user name, password
/// and will.
pub fn connect(
    v5: bool,
    client_id: &str,
    user: Option<&str>,
    password: Option<&[u8]>,
    will: Option<WillSpec<'_>>,
) -> Vec<u8> {
    connect_with(v5, client_id, user, password, will, true)
}

/// CONNECT as [`connect`], with Clean Start / Clean Session as given (v3.1.1 sessions
/// without clean session never expire).
pub fn connect_with(
    v5: bool,
    client_id: &str,
    user: Option<&str>,
    password: Option<&[u8]>,
    will: Option<WillSpec<'_>>,
    clean_start: bool,
) -> Vec<u8> {
    let mut body = Vec::new();
    push_str(&mut body, b"MQTT"); // protocol name
    body.push(if v5 { 5 } else { 4 }); // protocol level
    let mut flags = if clean_start { 0x02 } else { 0x00 }; // clean start
    if will.is_some() {
        flags |= 0x04; // will flag, will QoS 0, will retain 0
    }
    if user.is_some() {
        flags |= 0x80;
    }
    if password.is_some() {
        flags |= 0x40;
    }
    body.push(flags);
    body.extend([0x00, 0x3C]); // keep alive 60 s
    if v5 {
        body.push(0x00); // no CONNECT properties
    }
    push_str(&mut body, client_id.as_bytes());
    if let Some(will) = will {
        if v5 {
            body.push(0x00); // no will properties
        }
        push_str(&mut body, will.topic.as_bytes());
        push_str(&mut body, will.payload);
    }
    if let Some(user) = user {
        push_str(&mut body, user.as_bytes());
    }
    if let Some(password) = password {
        push_str(&mut body, password);
    }
    frame(0x10, body)
}

/// The CONNACK a v3.1.1 client gets: no session present, then `code`.
pub fn connack_v3(code: u8) -> Vec<u8> {
    vec![0x20, 0x02, 0x00, code]
}

/// The CONNACK a v5 client gets: no session present, `reason`, and (for a refusal) no
/// properties.
pub fn connack_v5_refused(reason: u8) -> Vec<u8> {
    vec![0x20, 0x03, 0x00, reason, 0x00]
}

/// Connects with the given credentials and returns the first packet the broker sends.
pub async fn connack_for(
    broker: &TestBroker,
    v5: bool,
    user: Option<&str>,
    password: Option<&[u8]>,
) -> Vec<u8> {
    let mut raw = raw(broker).await;
    raw.send(&connect(v5, "probe", user, password, None)).await;
    raw.recv_packet().await
}

/// SUBSCRIBE with packet id `packet_id`, one filter at `qos`.
pub fn subscribe(v5: bool, packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if v5 {
        body.push(0x00); // no properties
    }
    push_str(&mut body, filter.as_bytes());
    body.push(qos); // subscription options: QoS only
    frame(0x82, body)
}

/// PUBLISH at QoS 1 with packet id `packet_id`.
pub fn publish_qos1(
    v5: bool,
    packet_id: u16,
    topic: &str,
    payload: &[u8],
    retain: bool,
) -> Vec<u8> {
    let mut body = Vec::new();
    push_str(&mut body, topic.as_bytes());
    body.extend(packet_id.to_be_bytes());
    if v5 {
        body.push(0x00); // no properties
    }
    body.extend(payload);
    frame(0x32 | u8::from(retain), body)
}

/// The packet id of a received QoS 1/2 PUBLISH.
pub fn publish_packet_id(packet: &[u8]) -> Option<u16> {
    if (packet[0] >> 1) & 0x03 == 0 {
        return None;
    }
    let mut i = 1;
    while packet[i] & 0x80 != 0 {
        i += 1;
    }
    i += 1;
    let topic_len = usize::from(u16::from_be_bytes([packet[i], packet[i + 1]]));
    let at = i + 2 + topic_len;
    Some(u16::from_be_bytes([packet[at], packet[at + 1]]))
}

/// Splits a received PUBLISH (QoS 0 or 1, v3 or v5) into topic and payload.
pub fn parse_publish(v5: bool, packet: &[u8]) -> (String, Vec<u8>) {
    assert_eq!(packet[0] & 0xF0, 0x30, "not a PUBLISH: {packet:02X?}");
    let qos = (packet[0] >> 1) & 0x03;
    let mut i = 1;
    while packet[i] & 0x80 != 0 {
        i += 1;
    }
    i += 1;
    let topic_len = usize::from(u16::from_be_bytes([packet[i], packet[i + 1]]));
    let topic = String::from_utf8(packet[i + 2..i + 2 + topic_len].to_vec()).unwrap();
    i += 2 + topic_len;
    if qos > 0 {
        i += 2;
    }
    if v5 {
        let props = usize::from(packet[i]);
        i += 1 + props;
    }
    (topic, packet[i..].to_vec())
}

/// A connected raw client (CONNACK checked).
pub async fn connected(
    broker: &TestBroker,
    v5: bool,
    client_id: &str,
    user: Option<&str>,
    password: Option<&[u8]>,
) -> Raw {
    let mut raw = raw(broker).await;
    raw.send(&connect(v5, client_id, user, password, None))
        .await;
    let connack = raw.recv_packet().await;
    assert_eq!(connack[0], 0x20, "{connack:02X?}");
    assert_eq!(connack[3], 0x00, "CONNACK refused: {connack:02X?}");
    raw
}
