//! What the interop tests share: finding the independent clients (and failing loudly when
//! one is missing), running a client process under a timeout, the JSON line the scenario
//! scripts print, the checks both the paho and the mqtt.js scenarios must pass, and a
//! Mosquitto broker process for the differential tests.
//!
//! Self-contained (no `crate::` paths), so the cluster interop tests of the `midge` crate
//! include it too (`crates/midge/tests/cluster_interop.rs`) and run the same scenarios
//! and checks against a cluster.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// Limit for one scenario script: each of its waits is bounded by 5 s, and it has a few.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

// ---- the tools, and a clear failure when one is missing ----

/// An independent client (or broker) the interop tests drive midge with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tool {
    /// `python3` with paho-mqtt 2.x.
    Paho,
    /// `node` with mqtt.js installed in tests/interop/js/node_modules.
    MqttJs,
    /// `mosquitto_pub` and `mosquitto_sub`.
    MosquittoClients,
    /// The `mosquitto` broker.
    Mosquitto,
}

impl Tool {
    fn probe(self) -> Result<(), String> {
        match self {
            Tool::Paho => {
                let check = "import sys, paho.mqtt; \
                     sys.exit(0 if paho.mqtt.__version__.startswith('2.') else \
                     'paho-mqtt ' + paho.mqtt.__version__ + ' is installed; 2.x is needed')";
                command_succeeds("python3", &["-c", check])
            }
            Tool::MqttJs => {
                command_succeeds("node", &["--version"])?;
                let package = repo_root().join("tests/interop/js/node_modules/mqtt/package.json");
                if package.is_file() {
                    Ok(())
                } else {
                    Err(format!("{} does not exist", package.display()))
                }
            }
            Tool::MosquittoClients => {
                command_exists("mosquitto_pub")?;
                command_exists("mosquitto_sub")
            }
            Tool::Mosquitto => command_exists(mosquitto_program()),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Tool::Paho => "Python paho-mqtt 2.x",
            Tool::MqttJs => "mqtt.js (node)",
            Tool::MosquittoClients => "mosquitto_pub/mosquitto_sub (mosquitto-clients)",
            Tool::Mosquitto => "the mosquitto broker",
        }
    }
}

/// Panics with a message naming scripts/test-deps.sh unless `tool` is usable. Interop tests
/// never skip: a missing client is a failed test. Checked once per test binary.
pub fn require(tool: Tool) {
    static CHECKED: OnceLock<Mutex<HashMap<Tool, Result<(), String>>>> = OnceLock::new();
    let checked = CHECKED.get_or_init(Default::default);
    let result = checked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(tool)
        .or_insert_with(|| tool.probe())
        .clone();
    if let Err(problem) = result {
        panic!(
            "{} is needed by this interop test but is not usable: {problem}\n\
             Install the interop clients with: scripts/test-deps.sh",
            tool.name()
        );
    }
}

fn command_succeeds(program: &str, args: &[&str]) -> Result<(), String> {
    match std::process::Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`{program}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run `{program}`: {e}")),
    }
}

/// `mosquitto`, or Debian's /usr/sbin/mosquitto when /usr/sbin is not on PATH (as for
/// users other than root).
fn mosquitto_program() -> &'static str {
    const DEBIAN: &str = "/usr/sbin/mosquitto";
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("mosquitto").is_file())
    });
    if !on_path && Path::new(DEBIAN).is_file() {
        DEBIAN
    } else {
        "mosquitto"
    }
}

/// True when `program` can be started at all (its exit status for `--help` varies).
fn command_exists(program: &str) -> Result<(), String> {
    std::process::Command::new(program)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|_| ())
        .map_err(|e| format!("cannot run `{program}`: {e}"))
}

// ---- running a client process ----

/// What a finished process printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A client process running alongside the test, its output collected as it comes.
#[derive(Debug)]
pub struct Running {
    what: String,
    child: Child,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
}

impl Running {
    /// Starts `program args` with piped output; it is killed if the test drops it.
    pub fn spawn(program: &str, args: &[String]) -> Self {
        let what = format!("{program} {}", args.join(" "));
        let mut child = Command::new(program)
            .args(args)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
        let stdout = collect(child.stdout.take());
        let stderr = collect(child.stderr.take());
        Self {
            what,
            child,
            stdout,
            stderr,
        }
    }

    /// Waits for the process to exit within `limit`; kills it and panics (with what it
    /// printed) when it does not.
    pub async fn finish(mut self, limit: Duration) -> Output {
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap_or_else(|e| panic!("waiting for `{}`: {e}", self.what)),
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                let (stdout, stderr) = (self.stdout.await, self.stderr.await);
                panic!(
                    "`{}` did not finish within {limit:?}; killed.\nstdout:\n{}\nstderr:\n{}",
                    self.what,
                    stdout.unwrap_or_default(),
                    stderr.unwrap_or_default()
                );
            }
        };
        Output {
            status,
            stdout: self.stdout.await.unwrap_or_default(),
            stderr: self.stderr.await.unwrap_or_default(),
        }
    }
}

fn collect(pipe: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>) -> JoinHandle<String> {
    tokio::spawn(async move {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes).await;
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs `program args` to completion within `limit`.
pub async fn run(program: &str, args: &[String], limit: Duration) -> Output {
    Running::spawn(program, args).finish(limit).await
}

/// Runs a scenario script that must succeed and print its result as the last line of
/// stdout, and parses that line.
pub async fn run_json<T: DeserializeOwned>(program: &str, args: &[String]) -> T {
    let what = format!("{program} {}", args.join(" "));
    let out = run(program, args, SCRIPT_TIMEOUT).await;
    assert!(
        out.status.success(),
        "`{what}` failed ({}).\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    let line = out.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "`{what}` printed no result line ({e}).\nstdout:\n{}\nstderr:\n{}",
            out.stdout, out.stderr
        )
    })
}

/// MQTT version argument of the scenario scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mqtt {
    V311,
    V5,
}

impl Mqtt {
    fn arg(self) -> &'static str {
        match self {
            Mqtt::V311 => "311",
            Mqtt::V5 => "5",
        }
    }
}

/// What a scenario script runs against: one broker, or the nodes of a cluster on loopback.
pub trait Target {
    /// The MQTT ports: one, or one per node.
    fn ports(&self) -> Vec<u16>;
}

/// A cluster's nodes: the scripts' clients connect to them in turn.
impl Target for Vec<u16> {
    fn ports(&self) -> Vec<u16> {
        self.clone()
    }
}

fn scenario_args(script: PathBuf, target: &impl Target, version: Mqtt) -> Vec<String> {
    let ports = target.ports();
    let ports = match &ports[..] {
        [port] => ["--port".into(), port.to_string()],
        ports => [
            "--ports".into(),
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ],
    };
    let mut args = vec![
        script.display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
    ];
    args.extend(ports);
    args.extend(["--protocol".into(), version.arg().into()]);
    args
}

/// Runs tests/interop/python/`script` against `target` and parses its result.
pub async fn paho<T: DeserializeOwned>(script: &str, target: &impl Target, version: Mqtt) -> T {
    require(Tool::Paho);
    let path = repo_root().join("tests/interop/python").join(script);
    run_json("python3", &scenario_args(path, target, version)).await
}

/// Runs tests/interop/js/`script` against `target` and parses its result.
pub async fn mqttjs<T: DeserializeOwned>(script: &str, target: &impl Target, version: Mqtt) -> T {
    require(Tool::MqttJs);
    let path = repo_root().join("tests/interop/js").join(script);
    run_json("node", &scenario_args(path, target, version)).await
}

// ---- what the scripts report ----

/// A message as a client received it. `payload` is hex.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Received {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: String,
    #[serde(default)]
    pub properties: MessageProperties,
}

/// The v5 properties of a received PUBLISH (absent ones are `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageProperties {
    pub user_properties: Option<Vec<(String, String)>>,
    pub response_topic: Option<String>,
    /// Hex.
    pub correlation_data: Option<String>,
    pub content_type: Option<String>,
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub subscription_identifiers: Option<Vec<u32>>,
    pub topic_alias: Option<u16>,
}

/// CONNACK as a client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConnectResult {
    pub session_present: bool,
    pub reason_code: u8,
}

/// Lower-case hex, as the scripts print payloads.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The scripts' deterministic payload: byte j is (seed * 31 + j) % 256.
pub fn pattern(seed: usize, size: usize) -> Vec<u8> {
    (0..size).map(|j| ((seed * 31 + j) % 256) as u8).collect()
}

/// A received message's fields without properties, for compact comparisons.
pub fn plain(topic: &str, qos: u8, retain: bool, payload: &[u8]) -> Received {
    Received {
        topic: topic.to_owned(),
        qos,
        retain,
        payload: hex(payload),
        properties: MessageProperties::default(),
    }
}

fn without_properties(messages: &[Received]) -> Vec<Received> {
    messages
        .iter()
        .map(|m| Received {
            properties: MessageProperties::default(),
            ..m.clone()
        })
        .collect()
}

// ---- checks shared by the paho and mqtt.js scenarios (same scripts, same result shape) ----

/// Result of pubsub.py / pubsub.mjs.
#[derive(Debug, Deserialize)]
pub struct PubSub {
    pub granted: Vec<u8>,
    pub sizes: Vec<usize>,
    pub received: Vec<Received>,
}

/// QoS 0/1/2 each arrive complete, in publish order, at the subscription's QoS; QoS 2 to a
/// QoS 1 subscription arrives at QoS 1.
pub fn check_pubsub(result: &PubSub, client: &str) {
    assert_eq!(result.granted, [0, 1, 2, 1], "{client}: granted QoS");
    for qos in 0..3u8 {
        let topic = format!("interop/pubsub/q{qos}");
        let got: Vec<_> = result
            .received
            .iter()
            .filter(|m| m.topic == topic)
            .cloned()
            .collect();
        let expected: Vec<_> = result
            .sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                plain(
                    &topic,
                    qos,
                    false,
                    &pattern(usize::from(qos) * 10 + i, size),
                )
            })
            .collect();
        assert_eq!(
            without_properties(&got),
            expected,
            "{client}: QoS {qos} messages (in order, payloads intact)"
        );
    }
    let down: Vec<_> = result
        .received
        .iter()
        .filter(|m| m.topic == "interop/pubsub/down")
        .cloned()
        .collect();
    assert_eq!(
        without_properties(&down),
        [plain("interop/pubsub/down", 1, false, b"downgraded")],
        "{client}: QoS 2 publish to a QoS 1 subscription"
    );
}

/// Result of retained.py / retained.mjs.
#[derive(Debug, Deserialize)]
pub struct Retained {
    pub at_subscribe: Vec<Received>,
    pub live: Vec<Received>,
}

/// The two stored messages on subscribe (retain set, stored QoS), not the deleted one;
/// a live message without the retain flag [MQTT-3.3.1-9].
pub fn check_retained(result: &Retained, client: &str) {
    let mut at_subscribe = without_properties(&result.at_subscribe);
    at_subscribe.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(
        at_subscribe,
        [
            plain("interop/retained/a", 1, true, b"A"),
            plain("interop/retained/b", 0, true, b"B"),
        ],
        "{client}: retained messages on subscribe"
    );
    assert_eq!(
        without_properties(&result.live),
        [plain("interop/retained/a", 1, false, b"live")],
        "{client}: a message published to an existing subscription"
    );
}

/// Result of will.py / will.mjs.
#[derive(Debug, Deserialize)]
pub struct Wills {
    pub received: Vec<Received>,
}

/// Only the reset client's will, with its v5 will properties.
pub fn check_will(result: &Wills, version: Mqtt, client: &str) {
    let mut expected = plain("interop/will/doomed", 1, false, b"doomed is gone");
    if version == Mqtt::V5 {
        expected.properties.user_properties = Some(vec![("reason".into(), "reset".into())]);
        expected.properties.content_type = Some("text/plain".into());
    }
    assert_eq!(
        result.received,
        [expected],
        "{client}: the reset client's will, and no will for the client that sent DISCONNECT"
    );
}

/// Result of persistent.py / persistent.mjs.
#[derive(Debug, Deserialize)]
pub struct Persistent {
    pub first: ConnectResult,
    pub second: ConnectResult,
    pub received: Vec<Received>,
}

/// Session present on return, the QoS 1 messages in order, the QoS 0 one not queued.
pub fn check_persistent(result: &Persistent, client: &str) {
    assert!(
        !result.first.session_present,
        "{client}: first connection has no session"
    );
    assert!(
        result.second.session_present,
        "{client}: the session is present on return"
    );
    let topic = "interop/persistent/t";
    assert_eq!(
        without_properties(&result.received),
        [
            plain(topic, 1, false, b"one"),
            plain(topic, 1, false, b"two"),
            plain(topic, 1, false, b"three"),
        ],
        "{client}: queued QoS 1 messages in order, QoS 0 not queued"
    );
}

/// The first message of both properties scenarios: its properties arrive unchanged, and
/// overlapping subscriptions (QoS 1 id 7, QoS 0 id 9) give one copy at QoS 1 with both
/// identifiers.
fn check_passed_through(with_properties: &Received) {
    assert_eq!(with_properties.topic, "interop/props/a/x");
    assert_eq!(with_properties.payload, hex(br#"{"x": 1}"#));
    assert_eq!(with_properties.qos, 1);
    let p = &with_properties.properties;
    assert_eq!(
        p.user_properties.as_deref(),
        Some(
            &[
                ("k".to_owned(), "v1".to_owned()),
                ("k".to_owned(), "v2".to_owned()),
                ("unicode".to_owned(), "\u{fc}\u{2713}".to_owned()),
            ][..]
        ),
        "user properties in order, repeats kept"
    );
    assert_eq!(p.response_topic.as_deref(), Some("interop/reply"));
    assert_eq!(p.correlation_data.as_deref(), Some("0001636f7272ff"));
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.payload_format_indicator, Some(1));
    let expiry = p.message_expiry_interval.expect("message expiry forwarded");
    assert!((118..=120).contains(&expiry), "remaining expiry {expiry}");
    assert_eq!(p.subscription_identifiers.as_deref(), Some(&[7, 9][..]));
}

/// Result of properties.py (MQTT 5 only).
#[derive(Debug, Deserialize)]
pub struct PahoProperties {
    pub routed: Vec<Received>,
    pub expiring: Vec<Received>,
}

/// Properties pass through unchanged, overlapping subscriptions give one copy with both
/// identifiers, the publisher's topic alias resolves, a retained message's expiry counts
/// down.
pub fn check_paho_properties(result: &PahoProperties) {
    let [with_properties, alias_set, alias_used] = &result.routed[..] else {
        panic!("expected three messages, got {:?}", result.routed);
    };
    check_passed_through(with_properties);

    // The publisher's alias 3 resolves, both when set and when used alone.
    for (message, payload) in [(alias_set, "alias set"), (alias_used, "alias used")] {
        assert_eq!(
            (message.topic.as_str(), message.payload.as_str()),
            ("interop/props/alias/x", hex(payload.as_bytes()).as_str())
        );
        assert_eq!(
            message.properties.subscription_identifiers.as_deref(),
            Some(&[7, 9][..])
        );
    }

    // Retained with expiry 10 s, fetched more than a second later: the remaining interval.
    let [expiring] = &result.expiring[..] else {
        panic!(
            "expected the expiring retained message, got {:?}",
            result.expiring
        );
    };
    assert_eq!(
        (expiring.topic.as_str(), expiring.retain),
        ("interop/props/expiring", true)
    );
    let remaining = expiring.properties.message_expiry_interval;
    assert!(
        remaining.is_some_and(|r| (1..=9).contains(&r)),
        "remaining expiry after a second: {remaining:?}"
    );
}

/// Result of properties.mjs (MQTT 5 only).
#[derive(Debug, Deserialize)]
pub struct MqttJsProperties {
    pub routed: Vec<Received>,
    pub wire_topics: Vec<String>,
}

/// Properties pass through unchanged, overlapping subscriptions give one copy with both
/// identifiers, and the broker's topic aliases (the subscriber allowed some) resolve.
pub fn check_mqttjs_properties(result: &MqttJsProperties) {
    let [with_properties, first, second] = &result.routed[..] else {
        panic!("expected three messages, got {:?}", result.routed);
    };
    check_passed_through(with_properties);

    // The subscriber allowed 5 aliases: midge assigns them, and mqtt.js maps each back to
    // its topic, including the second message on a topic, sent with the alias alone.
    assert!(
        with_properties.properties.topic_alias.is_some(),
        "midge used a topic alias"
    );
    for (message, payload) in [(first, "first"), (second, "second")] {
        assert_eq!(
            (message.topic.as_str(), message.payload.as_str()),
            ("interop/props/b/x", hex(payload.as_bytes()).as_str())
        );
    }
    assert_eq!(first.properties.topic_alias, second.properties.topic_alias);
    assert_ne!(
        first.properties.topic_alias, with_properties.properties.topic_alias,
        "two topics, two aliases"
    );
    assert_eq!(
        result.wire_topics,
        ["interop/props/a/x", "interop/props/b/x", ""],
        "the repeated topic went out as its alias alone"
    );
}

/// Result of shared.py.
#[derive(Debug, Deserialize)]
pub struct Shared {
    pub count: usize,
    /// Member name -> numbers of the messages it got.
    pub received: std::collections::BTreeMap<String, Vec<usize>>,
}

/// Each message to exactly one member, and every member got some.
pub fn check_shared(result: &Shared, client: &str) {
    let mut all: Vec<usize> = result.received.values().flatten().copied().collect();
    all.sort_unstable();
    let expected: Vec<usize> = (0..result.count).collect();
    assert_eq!(
        all, expected,
        "{client}: each message to exactly one member"
    );
    for (member, got) in &result.received {
        assert!(!got.is_empty(), "{client}: member {member} got no message");
    }
}

// ---- a Mosquitto broker for the differential tests ----

/// How long Mosquitto may take to accept connections.
const MOSQUITTO_START: Duration = Duration::from_secs(5);

/// `mosquitto -c <tmp.conf>` on a free loopback port; killed when dropped.
#[derive(Debug)]
pub struct Mosquitto {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts Mosquitto (anonymous, no persistence) and waits until it accepts connections.
    pub async fn start() -> Self {
        require(Tool::Mosquitto);
        // The port is found free, released, then given to Mosquitto: another process could
        // take it in between, so a failed start is retried on a new port.
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start().await {
                Ok(mosquitto) => return mosquitto,
                Err(e) => failures.push(e),
            }
        }
        panic!("mosquitto did not start:\n{}", failures.join("\n"));
    }

    async fn try_start() -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let conf = dir.path().join("mosquitto.conf");
        let log = dir.path().join("mosquitto.log");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 log_dest stderr\nlog_type all\n"
            ),
        )
        .map_err(|e| format!("writing {}: {e}", conf.display()))?;
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = Command::new(mosquitto_program())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run mosquitto: {e}"))?;
        let deadline = tokio::time::Instant::now() + MOSQUITTO_START;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(Self { addr, child, dir });
            }
            let log = || std::fs::read_to_string(&log).unwrap_or_default();
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("mosquitto exited ({status}):\n{}", log()));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("mosquitto not accepting on {addr}:\n{}", log()));
            }
            // Polling for the listener: Mosquitto gives no readiness signal.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Mosquitto's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}
