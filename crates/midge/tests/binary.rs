//! The `midge` binary as a user runs it: configuration errors, serving a client on the
//! configured port, environment overrides, graceful shutdown on SIGTERM and SIGINT, help.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Every wait in these tests is bounded by this.
const TIMEOUT: Duration = Duration::from_secs(10);

/// How soon after SIGTERM/SIGINT the process must have exited, a connected client told.
const PROMPT_EXIT: Duration = Duration::from_secs(3);

fn midge() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_midge"));
    // The test decides the whole environment midge sees that could change its behaviour.
    for (key, _) in std::env::vars() {
        if key.starts_with("MIDGE_") {
            command.env_remove(key);
        }
    }
    // These brokers run in parallel and are not about persistence: keep them off the
    // default ./data store, which only one process may hold.
    command
        .env("MIDGE_STORAGE__BACKEND", "memory")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    command
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("midge.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Runs midge to completion (it must stop on its own within TIMEOUT).
fn run_to_exit(command: &mut Command) -> (ExitStatus, String, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start midge");
    let status = wait_with_timeout(&mut child, TIMEOUT).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("midge did not exit within {TIMEOUT:?}");
    });
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    (status, stdout, stderr)
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        // std has no timed wait for a child; poll it.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running broker process, killed if the test ends without stopping it.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Running {
    fn start(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start midge");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits for a log line containing `text` and returns it.
    fn wait_for_log(&mut self, text: &str) -> String {
        if let Some(line) = self.log.iter().find(|l| l.contains(text)) {
            return line.clone();
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {text:?} within {TIMEOUT:?}; log so far:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// The address of the first listener, from its start-up log line.
    fn listening_on(&mut self) -> SocketAddr {
        let line = self.wait_for_log("listening for MQTT");
        line.split_whitespace()
            .find_map(|field| field.strip_prefix("address="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{signal} {}", self.child.id()))
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    fn wait_for_exit(&mut self, limit: Duration) -> ExitStatus {
        wait_with_timeout(&mut self.child, limit).unwrap_or_else(|| {
            panic!(
                "midge still running after {limit:?}; log:\n{}",
                self.log.join("\n")
            )
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- a raw MQTT client ----

struct Client {
    stream: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr, connect: &[u8]) -> Self {
        let stream = TcpStream::connect(addr).expect("connect to midge");
        stream
            .set_read_timeout(Some(TIMEOUT))
            .expect("read timeout");
        let mut client = Self { stream };
        client.send(connect);
        client
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// One whole packet (these tests only see short ones: one remaining-length byte).
    fn recv_packet(&mut self) -> Vec<u8> {
        let mut header = [0u8; 2];
        self.stream
            .read_exact(&mut header)
            .expect("packet header within the timeout");
        assert!(header[1] < 0x80, "unexpectedly long packet {header:02X?}");
        let mut body = vec![0u8; usize::from(header[1])];
        self.stream.read_exact(&mut body).expect("packet body");
        let mut packet = header.to_vec();
        packet.extend(body);
        packet
    }

    /// True when the broker has closed the connection (EOF) within the timeout.
    fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0))
    }
}

/// v3.1.1 CONNECT: protocol name "MQTT", level 4, clean session, keep alive 60, id "bin".
const CONNECT_V311: [u8; 17] = [
    0x10, 0x0F, // CONNECT, remaining length 15
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
    0x04, // protocol level 3.1.1
    0x02, // flags: clean session
    0x00, 0x3C, // keep alive 60 s
    0x00, 0x03, b'b', b'i', b'n', // client id "bin"
];

/// v5 CONNECT: level 5, clean start, keep alive 60, no properties, id "bin5".
const CONNECT_V5: [u8; 19] = [
    0x10, 0x11, // CONNECT, remaining length 17
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
    0x05, // protocol level 5
    0x02, // flags: clean start
    0x00, 0x3C, // keep alive 60 s
    0x00, // no properties
    0x00, 0x04, b'b', b'i', b'n', b'5', // client id "bin5"
];

/// v3.1.1 CONNACK: no session present, accepted.
const CONNACK_V311_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

/// Config text for one listener on `bind`, and whatever else is given.
fn config(bind: &str, rest: &str) -> String {
    format!("[[listener]]\nbind = \"{bind}\"\nprotocol = \"mqtt\"\n{rest}")
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

// ---- configuration errors ----

#[test]
fn unknown_config_key_stops_midge_naming_file_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(&dir, &config("127.0.0.1:0", "[mqtt]\nmax_inflite = 3\n"));
    let (status, _, stderr) = run_to_exit(midge().arg("--config").arg(&path));
    assert!(!status.success(), "exit status {status}");
    assert!(stderr.contains(&path_text(&path)), "file named: {stderr}");
    assert!(stderr.contains("line 5"), "line named: {stderr}");
    assert!(
        stderr.contains("unknown field `max_inflite`"),
        "key: {stderr}"
    );
}

#[test]
fn config_value_of_the_wrong_type_stops_midge_naming_file_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        &dir,
        &config("127.0.0.1:0", "[mqtt]\nmax_inflight = \"many\"\n"),
    );
    let (status, _, stderr) = run_to_exit(midge().arg("--config").arg(&path));
    assert!(!status.success(), "exit status {status}");
    assert!(stderr.contains(&path_text(&path)), "file named: {stderr}");
    assert!(stderr.contains("line 5"), "line named: {stderr}");
    assert!(
        stderr.contains("max_inflight = \"many\""),
        "key shown: {stderr}"
    );
    assert!(stderr.contains("invalid type"), "reason: {stderr}");
}

#[test]
fn invalid_config_value_stops_midge_naming_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(&dir, &config("127.0.0.1:0", "[mqtt]\nmax_inflight = 0\n"));
    let (status, _, stderr) = run_to_exit(midge().arg("serve").arg("--config").arg(&path));
    assert!(!status.success(), "exit status {status}");
    assert!(stderr.contains(&path_text(&path)), "file named: {stderr}");
    assert!(
        stderr.contains("`mqtt.max_inflight`"),
        "key named: {stderr}"
    );
}

// ---- serving ----

#[test]
fn midge_with_a_config_file_serves_a_client_and_warns_about_implicit_anonymous_access() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(&dir, &config("127.0.0.1:0", "[sys]\ninterval_secs = 0\n"));
    let mut midge = Running::start(midge().arg("--config").arg(&path));
    let addr = midge.listening_on();
    let warning = midge.wait_for_log("auth.allow_anonymous is not set");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        !warning.contains('\u{1b}'),
        "no colour codes in a log that is not a terminal: {warning:?}"
    );

    let mut client = Client::connect(addr, &CONNECT_V311);
    assert_eq!(client.recv_packet(), CONNACK_V311_OK);
    client.send(&[
        0x82, 0x08, // SUBSCRIBE, remaining length 8
        0x00, 0x01, // packet id 1
        0x00, 0x03, b'b', b'/', b't', // filter "b/t"
        0x00, // QoS 0
    ]);
    assert_eq!(client.recv_packet(), [0x90, 0x03, 0x00, 0x01, 0x00]); // SUBACK, QoS 0
    let publish = [
        0x30, 0x07, // PUBLISH QoS 0, remaining length 7
        0x00, 0x03, b'b', b'/', b't', // topic "b/t"
        b'h', b'i', // payload
    ];
    client.send(&publish);
    assert_eq!(client.recv_packet(), publish, "its own message back");
}

#[test]
fn env_override_of_the_listener_bind_wins_over_the_file() {
    // The file's port is held by this test: midge starts only if the override applies.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        &dir,
        &config(
            &format!("127.0.0.1:{taken_port}"),
            "[auth]\nallow_anonymous = true\n",
        ),
    );
    let mut midge = Running::start(
        midge()
            .arg("--config")
            .arg(&path)
            .env("MIDGE_LISTENER__0__BIND", "127.0.0.1:0"),
    );
    let addr = midge.listening_on();
    assert_ne!(addr.port(), taken_port);
    let mut client = Client::connect(addr, &CONNECT_V311);
    assert_eq!(client.recv_packet(), CONNACK_V311_OK);
}

/// A v5 client is connected when `signal` arrives: it gets DISCONNECT 0x8B and midge
/// exits 0 within PROMPT_EXIT.
fn graceful_shutdown_on(signal: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        &dir,
        &config("127.0.0.1:0", "[auth]\nallow_anonymous = true\n"),
    );
    let mut midge = Running::start(midge().arg("--config").arg(&path));
    let addr = midge.listening_on();
    let mut client = Client::connect(addr, &CONNECT_V5);
    let connack = client.recv_packet();
    assert_eq!(
        &connack[..4],
        [0x20, connack[1], 0x00, 0x00],
        "v5 CONNACK, success"
    );

    let sent = Instant::now();
    midge.signal(signal);
    let disconnect = client.recv_packet();
    // DISCONNECT (0xE0), remaining length, reason 0x8B server shutting down, then the
    // properties: a reason string naming it.
    assert_eq!(
        (disconnect[0], disconnect[2]),
        (0xE0, 0x8B),
        "the client is told the server is shutting down: {disconnect:02X?}"
    );
    assert!(
        disconnect.windows(20).any(|w| w == b"server shutting down"),
        "reason string: {disconnect:02X?}"
    );
    assert!(client.closed(), "connection closed after DISCONNECT");
    let status = midge.wait_for_exit(PROMPT_EXIT);
    assert!(status.success(), "exit status {status} after SIG{signal}");
    eprintln!("SIG{signal} to exit: {:?}", sent.elapsed());
}

#[test]
fn sigterm_disconnects_v5_clients_with_0x8b_and_exits_zero() {
    graceful_shutdown_on("TERM");
}

#[test]
fn sigint_disconnects_v5_clients_with_0x8b_and_exits_zero() {
    graceful_shutdown_on("INT");
}

#[test]
fn serve_help_describes_the_config_option() {
    let (status, stdout, stderr) = run_to_exit(midge().args(["serve", "--help"]));
    assert!(status.success(), "exit status {status}: {stderr}");
    assert!(stdout.contains("Usage: midge serve"), "{stdout}");
    assert!(stdout.contains("--config <FILE>"), "{stdout}");
}

/// The soft and hard open-files limits in a `/proc/PID/limits` text.
fn open_files_limits(limits: &str) -> (u64, u64) {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let parse = |s: &str| s.parse().unwrap_or(u64::MAX); // "unlimited"
    (parse(fields[3]), parse(fields[4]))
}

#[test]
fn descriptors_for_max_connections_are_ready_before_clients_come() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        &dir,
        &config("127.0.0.1:0", "[mqtt]\nmax_connections = 3000\n"),
    );
    let mut midge = Running::start(midge().arg("--config").arg(&path));
    midge.listening_on();
    let pid = midge.child.id();
    let (_, hard) = open_files_limits(&std::fs::read_to_string("/proc/self/limits").unwrap());
    // max_connections plus spare descriptors, as far as the hard limit allows.
    let expected = hard.min(3000 + 64);
    let (soft, _) =
        open_files_limits(&std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap());
    assert!(soft >= expected, "soft limit {soft}, expected {expected}");
    // The descriptor table was grown at start, not one doubling at a time under load.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let table: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .expect("FDSize line")
        .trim()
        .parse()
        .unwrap();
    assert!(
        table >= expected,
        "descriptor table {table}, expected {expected}"
    );
}
