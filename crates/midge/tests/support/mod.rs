//! Running the real `midge` binary as a child process, and a raw-bytes MQTT client that
//! shares no code with the broker.

#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every wait for a packet is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a broker may take to start (a debug build reading a store).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A directory of its own for one test, removed at the end unless the test failed.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("midge-it-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create test dir");
        Self(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A free loopback port (bound and released; the broker binds it next), never one this
/// process was given before: the kernel may hand a released port out again, and a test
/// that picks several before starting anything (a NATS cluster's route ports, then each
/// server's client and monitoring ports) would give two servers the same one.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let port = listener.local_addr().expect("local addr").port();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// The `midge` binary under test, with its config file and data directory in a test dir.
pub struct Midge {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// Extra environment for the broker process (e.g. `TOKIO_WORKER_THREADS`).
    pub env: Vec<(String, String)>,
    starts: u32,
}

impl Midge {
    /// Writes the configuration: one listener on a free port, anonymous clients, no `$SYS`,
    /// storage in `<dir>/data` with `durability`.
    pub fn new(dir: &TestDir, durability: &str) -> Self {
        let port = free_port();
        let config = dir.0.join("midge.toml");
        let data = dir.0.join("data");
        std::fs::write(
            &config,
            format!(
                "[[listener]]\nbind = \"127.0.0.1:{port}\"\n\n[auth]\nallow_anonymous = true\n\n\
                 [sys]\ninterval_secs = 0\n\n[storage]\ndir = \"{}\"\ndurability = \"{durability}\"\n\
                 flush_interval_ms = 50\n",
                data.display()
            ),
        )
        .expect("write config");
        Self {
            child: None,
            port,
            dir: dir.0.clone(),
            config,
            env: Vec::new(),
            starts: 0,
        }
    }

    /// Rewrites the configuration file (before [`Midge::start`]).
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).expect("read config");
        std::fs::write(&self.config, edit(text)).expect("write config");
    }

    /// The running broker's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The running broker's resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.pid().expect("midge is running"))
    }

    /// The running broker's open file descriptors.
    pub fn open_fds(&self) -> usize {
        let pid = self.pid().expect("midge is running");
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("/proc/PID/fd")
            .count()
    }

    pub fn store_file(&self) -> PathBuf {
        self.dir.join("data").join("midge.redb")
    }

    fn log_file(&self, n: u32) -> PathBuf {
        self.dir.join(format!("midge-{n}.log"))
    }

    /// Everything the broker wrote to stderr in its `n`-th run.
    pub fn log(&self, n: u32) -> String {
        std::fs::read_to_string(self.log_file(n)).unwrap_or_default()
    }

    /// The log of the latest run.
    pub fn last_log(&self) -> String {
        self.log(self.starts)
    }

    fn spawn(&mut self, extra: &[&str]) -> Child {
        self.starts += 1;
        let log = std::fs::File::create(self.log_file(self.starts)).expect("log file");
        Command::new(env!("CARGO_BIN_EXE_midge"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("MIDGE_CONFIG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn midge")
    }

    /// Starts the broker and waits until it accepts connections.
    pub async fn start(&mut self, extra: &[&str]) {
        assert!(self.child.is_none(), "already running");
        let mut child = self.spawn(extra);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("midge exited during start ({status}):\n{}", self.last_log());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "midge did not listen within {START_TIMEOUT:?}:\n{}",
                self.last_log()
            );
            // Polling for the port: the child gives no other readiness signal.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child = Some(child);
    }

    /// Runs the broker expecting it to refuse to start; returns its exit status and log.
    pub async fn start_refused(&mut self, extra: &[&str]) -> (std::process::ExitStatus, String) {
        let mut child = self.spawn(extra);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return (status, self.last_log());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "midge was expected to refuse to start but kept running:\n{}",
                    self.last_log()
                );
            }
            // Polling the child's exit: std has no awaitable wait.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no shutdown, no final commit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL midge");
            let _ = child.wait();
        }
    }

    /// SIGKILL, then start again.
    pub async fn crash_and_restart(&mut self) {
        self.kill();
        self.start(&[]).await;
    }

    pub fn store_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Midge {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A process's resident set size in KiB (`VmRSS` in `/proc/PID/status`; 0 once it is gone).
pub fn rss_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time a process has used, user and system, in seconds (`/proc/PID/stat`; Linux
/// reports it in USER_HZ, 100 a second, on every architecture).
pub fn cpu_secs_of(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split(' ').collect();
            // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
            let ticks: u64 =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(0.0)
}

// ---- raw MQTT ----

/// One MQTT packet as received: the first byte and the body after the remaining length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPacket {
    pub first: u8,
    pub body: Vec<u8>,
}

impl RawPacket {
    /// The packet type (upper four bits of the first byte).
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }

    /// The packet identifier of PUBACK/PUBREC/PUBREL/PUBCOMP/SUBACK (first two body bytes).
    pub fn packet_id(&self) -> u16 {
        u16::from_be_bytes([self.body[0], self.body[1]])
    }

    /// Decodes a PUBLISH.
    pub fn publish(&self, v5: bool) -> RawPublish {
        assert_eq!(self.kind(), 3, "expected PUBLISH, got {self:02X?}");
        let qos = (self.first >> 1) & 0x03;
        let b = &self.body;
        let topic_len = usize::from(u16::from_be_bytes([b[0], b[1]]));
        let topic = String::from_utf8(b[2..2 + topic_len].to_vec()).expect("utf-8 topic");
        let mut at = 2 + topic_len;
        let packet_id = if qos > 0 {
            at += 2;
            u16::from_be_bytes([b[at - 2], b[at - 1]])
        } else {
            0
        };
        if v5 {
            // Property length (variable byte integer), then the properties, skipped.
            let (len, used) = read_varint(&b[at..]);
            at += used + len;
        }
        RawPublish {
            dup: self.first & 0x08 != 0,
            qos,
            retain: self.first & 0x01 != 0,
            topic,
            packet_id,
            payload: b[at..].to_vec(),
        }
    }
}

/// A decoded PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPublish {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    pub packet_id: u16,
    pub payload: Vec<u8>,
}

fn read_varint(b: &[u8]) -> (usize, usize) {
    let mut value = 0usize;
    let mut multiplier = 1usize;
    for (i, byte) in b.iter().enumerate() {
        value += usize::from(byte & 0x7F) * multiplier;
        multiplier *= 128;
        if byte & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!("unterminated variable byte integer");
}

/// A TCP connection speaking raw MQTT bytes.
pub struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub async fn connect(port: u16) -> io::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::new(),
        })
    }

    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    fn parse(&mut self) -> Option<RawPacket> {
        if self.buf.len() < 2 {
            return None;
        }
        let mut len = 0usize;
        let mut multiplier = 1usize;
        let mut at = 1;
        loop {
            let byte = *self.buf.get(at)?;
            len += usize::from(byte & 0x7F) * multiplier;
            multiplier *= 128;
            at += 1;
            if byte & 0x80 == 0 {
                break;
            }
        }
        if self.buf.len() < at + len {
            return None;
        }
        let packet = RawPacket {
            first: self.buf[0],
            body: self.buf[at..at + len].to_vec(),
        };
        self.buf.drain(..at + len);
        Some(packet)
    }

    /// The next packet, or `None` if none arrives within `wait`. A closed connection is an
    /// error.
    pub async fn recv_within(&mut self, wait: Duration) -> io::Result<Option<RawPacket>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(packet) = self.parse() {
                return Ok(Some(packet));
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Ok(None),
                Ok(Ok(0)) => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    /// The next packet, within [`TIMEOUT`].
    pub async fn recv(&mut self) -> io::Result<RawPacket> {
        self.recv_within(TIMEOUT)
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "no packet in time"))
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u16).to_be_bytes());
    out.extend(s.as_bytes());
}

/// Fixed header (first byte, remaining length as a variable byte integer) + body.
fn frame(first: u8, body: Vec<u8>) -> Vec<u8> {
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
    out.extend(body);
    out
}

/// CONNECT, MQTT 3.1.1.
pub fn connect_v311(client_id: &str, clean_session: bool) -> Vec<u8> {
    let mut body = vec![
        0x00,
        0x04,
        b'M',
        b'Q',
        b'T',
        b'T',                                    // protocol name "MQTT"
        0x04,                                    // protocol level 4 (3.1.1)
        if clean_session { 0x02 } else { 0x00 }, // connect flags: clean session bit only
        0x00,
        0x3C, // keep alive 60 s
    ];
    push_str(&mut body, client_id); // client identifier
    frame(0x10, body)
}

/// CONNECT, MQTT 5, with a Session Expiry Interval.
pub fn connect_v5(client_id: &str, clean_start: bool, session_expiry: u32) -> Vec<u8> {
    let mut body = vec![
        0x00,
        0x04,
        b'M',
        b'Q',
        b'T',
        b'T',                                  // protocol name "MQTT"
        0x05,                                  // protocol level 5
        if clean_start { 0x02 } else { 0x00 }, // connect flags: clean start bit only
        0x00,
        0x3C, // keep alive 60 s
        0x05, // property length 5
        0x11, // Session Expiry Interval (4-byte integer)
    ];
    body.extend(session_expiry.to_be_bytes());
    push_str(&mut body, client_id); // client identifier
    frame(0x10, body)
}

/// PUBLISH; v5 adds an empty property list.
pub fn publish(
    v5: bool,
    qos: u8,
    dup: bool,
    retain: bool,
    topic: &str,
    packet_id: u16,
    payload: &[u8],
) -> Vec<u8> {
    // Fixed header flags: DUP (bit 3), QoS (bits 2-1), RETAIN (bit 0).
    let first = 0x30 | (u8::from(dup) << 3) | (qos << 1) | u8::from(retain);
    let mut body = Vec::new();
    push_str(&mut body, topic); // topic name
    if qos > 0 {
        body.extend(packet_id.to_be_bytes()); // packet identifier
    }
    if v5 {
        body.push(0x00); // property length 0
    }
    body.extend(payload);
    frame(first, body)
}

/// SUBSCRIBE to one filter; v5 adds an empty property list.
pub fn subscribe(v5: bool, packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec(); // packet identifier
    if v5 {
        body.push(0x00); // property length 0
    }
    push_str(&mut body, filter); // topic filter
    body.push(qos); // subscription options: maximum QoS
    frame(0x82, body) // SUBSCRIBE with its required flags 0b0010
}

/// UNSUBSCRIBE from one filter; v5 adds an empty property list.
pub fn unsubscribe(v5: bool, packet_id: u16, filter: &str) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec(); // packet identifier
    if v5 {
        body.push(0x00); // property length 0
    }
    push_str(&mut body, filter); // topic filter
    frame(0xA2, body) // UNSUBSCRIBE with its required flags 0b0010
}

/// PINGREQ.
pub const PINGREQ: [u8; 2] = [0xC0, 0x00];

/// PUBACK (0x40), PUBREC (0x50), PUBREL (0x62, flags 0b0010) or PUBCOMP (0x70): the
/// two-byte packet identifier and no reason code (success in both versions).
pub fn ack(first: u8, packet_id: u16) -> Vec<u8> {
    let id = packet_id.to_be_bytes();
    vec![first, 0x02, id[0], id[1]]
}

pub const PUBACK: u8 = 0x40;
pub const PUBREC: u8 = 0x50;
pub const PUBREL: u8 = 0x62;
pub const PUBCOMP: u8 = 0x70;

/// DISCONNECT, normal (both versions).
pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// Connects and checks the CONNACK accepted; returns the client and the session-present
/// flag.
pub async fn connect(port: u16, packet: &[u8]) -> (Raw, bool) {
    let mut raw = Raw::connect(port).await.expect("TCP connect");
    raw.send(packet).await.expect("send CONNECT");
    let connack = raw.recv().await.expect("CONNACK");
    assert_eq!(connack.kind(), 2, "expected CONNACK, got {connack:02X?}");
    // Acknowledge flags (bit 0: session present), then the return/reason code 0.
    assert_eq!(connack.body[1], 0x00, "CONNACK refused: {connack:02X?}");
    (raw, connack.body[0] & 0x01 == 1)
}

/// Subscribes and waits for the SUBACK granting `qos`.
pub async fn subscribe_and_wait(raw: &mut Raw, v5: bool, filter: &str, qos: u8) {
    raw.send(&subscribe(v5, 1, filter, qos))
        .await
        .expect("send SUBSCRIBE");
    let suback = raw.recv().await.expect("SUBACK");
    assert_eq!(suback.kind(), 9, "expected SUBACK, got {suback:02X?}");
    assert_eq!(suback.body.last(), Some(&qos), "granted QoS");
}
pub mod cluster;
