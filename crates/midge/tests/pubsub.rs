//! `midge pub` and `midge sub`, the built binary, against a broker started in the test.
//! Independent clients are the witnesses: rumqttc (v3.1.1 and v5) and Mosquitto's
//! `mosquitto_pub`/`mosquitto_sub` receive what `midge pub` sends and send what `midge sub`
//! prints; never midge's own client on both ends.
//!
//! `midge sub` tests know the subscription is in place when the retained "ready" message
//! published beforehand has been printed: the broker sends retained messages after
//! granting the subscription.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use midge_broker::{Config, Server};
use rumqttc::v5::mqttbytes::v5 as mqtt5;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;

const TIMEOUT: Duration = Duration::from_secs(15);

/// The exit codes documented in README.md.
const EXIT_USAGE: i32 = 2;
const EXIT_CONNECTION: i32 = 3;
const EXIT_NOT_AUTHORIZED: i32 = 5;
const EXIT_TIMEOUT: i32 = 6;

// ---- the broker ----

struct Broker {
    server: Server,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// A broker from TOML listener sections (binds on 127.0.0.1:0) and extra settings;
    /// memory store, no $SYS.
    async fn start(listeners: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{listeners}\n[sys]\ninterval_secs = 0\n\n[storage]\nbackend = \"memory\"\n\n{extra}"
        );
        let config = Config::from_toml(&text, "test config").expect("valid test config");
        let server = Server::start(config).await.expect("broker starts");
        Self { server, _dir: dir }
    }

    async fn tcp() -> Self {
        Self::start(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n",
            "[auth]\nallow_anonymous = true\n",
        )
        .await
    }

    fn addr(&self, index: usize) -> SocketAddr {
        self.server.local_addrs()[index]
    }

    fn port(&self) -> String {
        self.addr(0).port().to_string()
    }
}

// ---- running midge ----

fn midge(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_midge"));
    command
        .args(args)
        .env_remove("MIDGE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs `midge args...` to its end (bounded), feeding `stdin`.
async fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut command = midge(args);
    if stdin.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command.spawn().expect("spawn midge");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).await.unwrap();
        drop(pipe);
    }
    tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("midge {args:?} did not finish in {TIMEOUT:?}"))
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[track_caller]
fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}, stderr: {}",
        output.status.code(),
        stderr(output)
    );
}

/// `midge sub` running in the background, its stdout read line by line.
struct Sub {
    child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Sub {
    fn start(args: &[&str]) -> Self {
        let mut all = vec!["sub"];
        all.extend(args);
        let mut child = midge(&all).spawn().expect("spawn midge sub");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    async fn line(&mut self) -> String {
        match tokio::time::timeout(TIMEOUT, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => {
                let mut err = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut err).await;
                }
                panic!("no line from midge sub: {other:?}; stderr: {err}")
            }
        }
    }

    /// Waits for the exit; returns the code and the rest of stdout.
    async fn exit(mut self) -> (i32, String, String) {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = self.lines.next_line().await {
            rest.push(line);
        }
        let status = tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .expect("midge sub exits")
            .unwrap();
        let mut err = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut err).await;
        }
        (status.code().unwrap_or(-1), rest.join("\n"), err)
    }
}

// ---- rumqttc witnesses ----

enum Event {
    V3(rumqttc::Packet),
    V5(Box<mqtt5::Packet>),
}

/// A rumqttc client whose event loop forwards incoming packets.
struct Witness {
    v3: Option<rumqttc::AsyncClient>,
    v5: Option<rumqttc::v5::AsyncClient>,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Witness {
    async fn v3(addr: SocketAddr, id: &str) -> Self {
        let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if let rumqttc::Event::Incoming(packet) = event
                    && tx.send(Event::V3(packet)).is_err()
                {
                    break;
                }
            }
        });
        let mut witness = Self {
            v3: Some(client),
            v5: None,
            events,
        };
        witness
            .wait(|e| matches!(e, Event::V3(rumqttc::Packet::ConnAck(_))))
            .await;
        witness
    }

    async fn v5(addr: SocketAddr, id: &str) -> Self {
        let mut options = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 100);
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if let rumqttc::v5::Event::Incoming(packet) = event
                    && tx.send(Event::V5(Box::new(packet))).is_err()
                {
                    break;
                }
            }
        });
        let mut witness = Self {
            v3: None,
            v5: Some(client),
            events,
        };
        witness
            .wait(|e| matches!(e, Event::V5(p) if matches!(**p, mqtt5::Packet::ConnAck(_))))
            .await;
        witness
    }

    async fn wait(&mut self, pick: impl Fn(&Event) -> bool) -> Event {
        loop {
            let event = tokio::time::timeout(TIMEOUT, self.events.recv())
                .await
                .expect("rumqttc event in time")
                .expect("rumqttc event loop running");
            if pick(&event) {
                return event;
            }
        }
    }

    async fn subscribe(&mut self, filter: &str) {
        if let Some(client) = &self.v3 {
            client
                .subscribe(filter, rumqttc::QoS::ExactlyOnce)
                .await
                .unwrap();
            self.wait(|e| matches!(e, Event::V3(rumqttc::Packet::SubAck(_))))
                .await;
        } else if let Some(client) = &self.v5 {
            client
                .subscribe(filter, rumqttc::v5::mqttbytes::QoS::ExactlyOnce)
                .await
                .unwrap();
            self.wait(|e| matches!(e, Event::V5(p) if matches!(**p, mqtt5::Packet::SubAck(_))))
                .await;
        }
    }

    /// The next PUBLISH (v3): topic, payload, QoS, retain.
    async fn publication(&mut self) -> (String, Bytes, u8, bool) {
        match self
            .wait(|e| matches!(e, Event::V3(rumqttc::Packet::Publish(_))))
            .await
        {
            Event::V3(rumqttc::Packet::Publish(p)) => (p.topic, p.payload, p.qos as u8, p.retain),
            _ => unreachable!(),
        }
    }

    async fn publication_v5(&mut self) -> mqtt5::Publish {
        match self
            .wait(|e| matches!(e, Event::V5(p) if matches!(**p, mqtt5::Packet::Publish(_))))
            .await
        {
            Event::V5(packet) => match *packet {
                mqtt5::Packet::Publish(p) => p,
                _ => unreachable!(),
            },
            Event::V3(_) => unreachable!(),
        }
    }

    /// Nothing published within `wait`.
    async fn silent_for(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(event) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            if let Some(Event::V3(rumqttc::Packet::Publish(p))) = event {
                panic!("unexpected publication {p:?}");
            }
        }
    }

    /// Publishes at QoS 1 (v3) and waits for the PUBACK: the broker has it.
    async fn publish(&mut self, topic: &str, payload: &[u8], retain: bool) {
        let client = self.v3.as_ref().expect("v3 witness");
        client
            .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload.to_vec())
            .await
            .unwrap();
        self.wait(|e| matches!(e, Event::V3(rumqttc::Packet::PubAck(_))))
            .await;
    }
}

/// `midge sub` is subscribed once it has printed the retained "ready" message on
/// `ready_topic`, published here first.
async fn publish_ready(witness: &mut Witness, ready_topic: &str) {
    witness.publish(ready_topic, b"ready", true).await;
}

// ---- midge pub ----

#[tokio::test]
async fn pub_qos_0_1_and_2_reach_a_rumqttc_subscriber() {
    let broker = Broker::tcp().await;
    let mut witness = Witness::v3(broker.addr(0), "witness").await;
    witness.subscribe("q/#").await;
    let port = broker.port();
    for qos in ["0", "1", "2"] {
        let topic = format!("q/{qos}");
        let output = run(
            &[
                "pub",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                &topic,
                "-m",
                &format!("at qos {qos}"),
                "-q",
                qos,
            ],
            None,
        )
        .await;
        assert_success(&output);
        let (got_topic, payload, got_qos, retain) = witness.publication().await;
        assert_eq!(got_topic, topic);
        assert_eq!(payload, format!("at qos {qos}"));
        assert_eq!(got_qos.to_string(), qos);
        assert!(!retain);
    }
    // MQTT 3.1 and 5 as well.
    for version in ["31", "5"] {
        let output = run(
            &[
                "pub",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-t",
                "q/v",
                "-m",
                version,
                "-q",
                "2",
            ],
            None,
        )
        .await;
        assert_success(&output);
        let (_, payload, qos, _) = witness.publication().await;
        assert_eq!((payload, qos), (Bytes::from(version), 2));
    }
}

#[tokio::test]
async fn pub_retained_message_is_kept_and_null_message_clears_it() {
    let broker = Broker::tcp().await;
    let port = broker.port();
    let output = run(
        &[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "r/a",
            "-m",
            "kept",
            "-r",
            "-q",
            "1",
        ],
        None,
    )
    .await;
    assert_success(&output);
    let mut first = Witness::v3(broker.addr(0), "first").await;
    first.subscribe("r/a").await;
    let (topic, payload, _, retain) = first.publication().await;
    assert_eq!(
        (topic.as_str(), &payload[..], retain),
        ("r/a", &b"kept"[..], true)
    );

    let output = run(
        &[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "r/a",
            "-n",
            "-r",
            "-q",
            "1",
        ],
        None,
    )
    .await;
    assert_success(&output);
    // The live empty message reaches the subscriber; a new subscriber gets nothing retained.
    let (_, payload, _, _) = first.publication().await;
    assert!(payload.is_empty());
    let mut second = Witness::v3(broker.addr(0), "second").await;
    second.subscribe("r/a").await;
    second.silent_for(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn pub_l_sends_each_stdin_line_and_f_sends_a_file() {
    let broker = Broker::tcp().await;
    let port = broker.port();
    let mut witness = Witness::v3(broker.addr(0), "witness").await;
    witness.subscribe("lines").await;
    let output = run(
        &[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "lines",
            "-l",
            "-q",
            "1",
        ],
        Some(b"one\n\nthree \nlast without newline"),
    )
    .await;
    assert_success(&output);
    for expected in ["one", "", "three ", "last without newline"] {
        let (_, payload, _, _) = witness.publication().await;
        assert_eq!(payload, expected);
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload.bin");
    let content: Vec<u8> = (0..=255u8).chain(b"\nend\n".iter().copied()).collect();
    std::fs::write(&file, &content).unwrap();
    let output = run(
        &[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "lines",
            "-f",
            file.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_success(&output);
    let (_, payload, _, _) = witness.publication().await;
    assert_eq!(&payload[..], &content[..]);

    let output = run(
        &[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "lines",
            "-f",
            "/nonexistent/file",
        ],
        None,
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("cannot read /nonexistent/file"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn pub_v5_properties_reach_a_v5_rumqttc_subscriber() {
    let broker = Broker::tcp().await;
    let mut witness = Witness::v5(broker.addr(0), "witness5").await;
    witness.subscribe("props").await;
    let output = run(
        &[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port(),
            "-V",
            "5",
            "-t",
            "props",
            "-m",
            "p",
            "-q",
            "1",
            "-D",
            "publish",
            "user-property",
            "source",
            "cli",
            "-D",
            "publish",
            "user-property",
            "source",
            "again",
            "-D",
            "publish",
            "message-expiry-interval",
            "60",
            "-D",
            "publish",
            "content-type",
            "text/plain",
            "-D",
            "publish",
            "response-topic",
            "replies",
            "-D",
            "publish",
            "correlation-data",
            "abc",
            "-D",
            "connect",
            "session-expiry-interval",
            "30",
        ],
        None,
    )
    .await;
    assert_success(&output);
    let publish = witness.publication_v5().await;
    assert_eq!(publish.payload, "p");
    let properties = publish.properties.expect("v5 properties");
    assert_eq!(
        properties.user_properties,
        vec![
            ("source".to_owned(), "cli".to_owned()),
            ("source".to_owned(), "again".to_owned())
        ]
    );
    let expiry = properties.message_expiry_interval.expect("message expiry");
    assert!((55..=60).contains(&expiry), "expiry {expiry}");
    assert_eq!(properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(properties.response_topic.as_deref(), Some("replies"));
    assert_eq!(properties.correlation_data.as_deref(), Some(&b"abc"[..]));
}

#[tokio::test]
async fn pub_l_keeps_the_connection_alive_while_stdin_is_quiet() {
    let broker = Broker::tcp().await;
    let mut witness = Witness::v3(broker.addr(0), "witness").await;
    witness.subscribe("slow").await;
    let mut child = midge(&[
        "pub",
        "-h",
        "127.0.0.1",
        "-p",
        &broker.port(),
        "-t",
        "slow",
        "-l",
        "-q",
        "1",
        "-k",
        "1",
    ])
    .stdin(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"first\n").await.unwrap();
    assert_eq!(witness.publication().await.1, "first");
    // The broker closes a connection silent for 1.5 x keep-alive; pings keep this one.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    stdin.write_all(b"after a pause\n").await.unwrap();
    drop(stdin);
    assert_eq!(witness.publication().await.1, "after a pause");
    let output = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_success(&output);
}

// ---- midge sub ----

#[tokio::test]
async fn sub_prints_payloads_and_topics_and_exits_after_count() {
    let broker = Broker::tcp().await;
    let mut witness = Witness::v3(broker.addr(0), "publisher").await;
    publish_ready(&mut witness, "s/ready").await;
    let port = broker.port();
    let mut sub = Sub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        "s/#",
        "-t",
        "other",
        "-v",
        "-C",
        "4",
        "-q",
        "1",
    ]);
    assert_eq!(sub.line().await, "s/ready ready");
    witness.publish("s/a", b"hello world", false).await;
    witness.publish("other", b"", false).await;
    witness.publish("s/b/c", b"last", false).await;
    let (code, rest, err) = sub.exit().await;
    assert_eq!(code, 0, "{err}");
    // -v prints an empty payload as "(null)", as mosquitto_sub does.
    assert_eq!(rest, "s/a hello world\nother (null)\ns/b/c last");

    // Without -v: the payload alone.
    let mut sub = Sub::start(&["-h", "127.0.0.1", "-p", &port, "-t", "s/#", "-C", "2"]);
    assert_eq!(sub.line().await, "ready");
    witness.publish("s/x", b"plain", false).await;
    let (code, rest, _) = sub.exit().await;
    assert_eq!((code, rest.as_str()), (0, "plain"));
}

#[tokio::test]
async fn sub_format_string_prints_mosquitto_fields() {
    let broker = Broker::tcp().await;
    let mut witness = Witness::v3(broker.addr(0), "publisher").await;
    publish_ready(&mut witness, "f/ready").await;
    let mut sub = Sub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &broker.port(),
        "-t",
        "f/#",
        "-q",
        "2",
        "-C",
        "2",
        "-F",
        "%t|%p|%q|%r|%l|%x|%%\\n",
    ]);
    assert_eq!(sub.line().await, "f/ready|ready|1|1|5|7265616479|%");
    witness.publish("f/a", b"hi", false).await;
    let (code, rest, err) = sub.exit().await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(rest, "f/a|hi|1|0|2|6869|%");
}

#[tokio::test]
async fn sub_json_prints_one_object_per_message_with_v5_properties() {
    let broker = Broker::tcp().await;
    let mut witness = Witness::v3(broker.addr(0), "publisher").await;
    publish_ready(&mut witness, "j/ready").await;
    let mut sub = Sub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &broker.port(),
        "-V",
        "5",
        "-t",
        "j/#",
        "-q",
        "1",
        "-C",
        "3",
        "--json",
        "-D",
        "subscribe",
        "subscription-identifier",
        "7",
    ]);
    let ready: serde_json::Value = serde_json::from_str(&sub.line().await).unwrap();
    assert_eq!(
        ready,
        serde_json::json!({"topic": "j/ready", "qos": 1, "retain": true, "payload": "ready",
                           "properties": {"subscription_identifiers": [7]}})
    );
    witness.publish("j/bin", &[0xff, 0x00, 0x41], false).await;
    let publisher5 = Witness::v5(broker.addr(0), "publisher5").await;
    let properties = mqtt5::PublishProperties {
        user_properties: vec![("k".into(), "v".into())],
        message_expiry_interval: Some(120),
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    publisher5
        .v5
        .as_ref()
        .unwrap()
        .publish_with_properties(
            "j/text",
            rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            false,
            "héllo",
            properties,
        )
        .await
        .unwrap();
    let (code, rest, err) = sub.exit().await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = rest
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["topic"], "j/bin");
    assert_eq!(lines[0]["payload_base64"], "/wBB");
    assert!(lines[0].get("payload").is_none());
    assert_eq!(lines[1]["payload"], "héllo");
    assert_eq!(lines[1]["qos"], 0);
    let props = &lines[1]["properties"];
    assert_eq!(props["user_properties"], serde_json::json!([["k", "v"]]));
    assert_eq!(props["content_type"], "text/plain");
    let expiry = props["message_expiry_interval"].as_u64().unwrap();
    assert!((115..=120).contains(&expiry), "{expiry}");
}

#[tokio::test]
async fn sub_w_times_out_with_exit_code_6() {
    let broker = Broker::tcp().await;
    let started = std::time::Instant::now();
    let output = run(
        &[
            "sub",
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port(),
            "-t",
            "quiet",
            "-W",
            "1",
        ],
        None,
    )
    .await;
    assert_eq!(
        output.status.code(),
        Some(EXIT_TIMEOUT),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("midge sub: timed out after 1 s (-W)"),
        "{}",
        stderr(&output)
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(stdout(&output), "");
}

#[tokio::test]
async fn sub_r_skips_stale_retained_messages() {
    let broker = Broker::tcp().await;
    let mut witness = Witness::v3(broker.addr(0), "publisher").await;
    witness.publish("stale", b"old", true).await;
    let sub = Sub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &broker.port(),
        "-t",
        "stale",
        "-R",
        "-C",
        "1",
    ]);
    // No retained marker can show the subscription is in place (-R hides it), so live
    // messages go out until one is printed; the retained one never is.
    let finished = async {
        loop {
            witness.publish("stale", b"new", false).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (code, output, err) = tokio::select! {
        result = sub.exit() => result,
        () = finished => unreachable!(),
    };
    assert_eq!(code, 0, "{err}");
    assert_eq!(output, "new");
}

// ---- failures and their exit codes ----

#[tokio::test]
async fn sub_taken_over_exits_1_with_the_broker_reason() {
    let broker = Broker::tcp().await;
    let mut witness = Witness::v3(broker.addr(0), "publisher").await;
    publish_ready(&mut witness, "to/ready").await;
    let mut sub = Sub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &broker.port(),
        "-V",
        "5",
        "-i",
        "same",
        "-t",
        "to/ready",
    ]);
    assert_eq!(sub.line().await, "ready");
    let _thief = Witness::v5(broker.addr(0), "same").await;
    let (code, _, err) = sub.exit().await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("midge sub: disconnected by the broker: session taken over (0x8e)"),
        "{err}"
    );
}

#[tokio::test]
async fn nothing_listening_exits_3_naming_the_address() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port().to_string()
    };
    let output = run(
        &["pub", "-h", "127.0.0.1", "-p", &port, "-t", "t", "-m", "x"],
        None,
    )
    .await;
    assert_eq!(output.status.code(), Some(EXIT_CONNECTION));
    assert!(
        stderr(&output).starts_with(&format!("midge pub: cannot connect to 127.0.0.1:{port}")),
        "{}",
        stderr(&output)
    );
    let output = run(&["sub", "-h", "127.0.0.1", "-p", &port, "-t", "t"], None).await;
    assert_eq!(output.status.code(), Some(EXIT_CONNECTION));
}

#[tokio::test]
async fn usage_errors_exit_2() {
    for args in [
        &["pub", "-m", "no topic"][..],
        &["pub", "-t", "a/#", "-m", "wildcard"],
        &["pub", "-t", "t"],
        &["pub", "-t", "t", "-m", "x", "-c"],
        &[
            "pub",
            "-t",
            "t",
            "-m",
            "x",
            "-D",
            "publish",
            "content-type",
            "x",
        ],
        &[
            "pub",
            "-t",
            "t",
            "-m",
            "x",
            "-V",
            "5",
            "-D",
            "publish",
            "no-such-property",
            "1",
        ],
        &["sub", "-W", "1"],
        &["sub", "-t", "a/#/b"],
        &["sub", "-t", "t", "-L", "mqtts://127.0.0.1/t"],
        &["sub", "-t", "t", "--unknown-flag"],
    ] {
        let output = run(args, None).await;
        assert_eq!(
            output.status.code(),
            Some(EXIT_USAGE),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(!stderr(&output).is_empty(), "{args:?} says why");
    }
}

#[tokio::test]
async fn help_is_long_only_and_h_is_the_host() {
    let output = run(&["sub", "--help"], None).await;
    assert_success(&output);
    assert!(
        stdout(&output).contains("-h, --host <HOST>"),
        "{}",
        stdout(&output)
    );
    assert!(
        stdout(&output).contains("Exit codes"),
        "{}",
        stdout(&output)
    );
    // -V takes a protocol version, not --version.
    let output = run(&["pub", "-V", "7", "-t", "t", "-m", "x"], None).await;
    assert_eq!(output.status.code(), Some(EXIT_USAGE));
}

/// A broker with a password file holding alice/secret and no anonymous access.
async fn broker_with_passwords() -> (Broker, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let output = run(
        &[
            "passwd",
            "-c",
            "-b",
            file.to_str().unwrap(),
            "alice",
            "secret",
        ],
        None,
    )
    .await;
    assert_success(&output);
    let broker = Broker::start(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n",
        &format!(
            "[auth]\nallow_anonymous = false\npassword_file = \"{}\"\n",
            file.display()
        ),
    )
    .await;
    (broker, dir)
}

#[tokio::test]
async fn bad_credentials_and_no_credentials_exit_5_with_the_broker_reason() {
    let (broker, _dir) = broker_with_passwords().await;
    let port = broker.port();
    let base = ["-h", "127.0.0.1", "-p", &port, "-t", "t"];
    let pub_args = |extra: &[&'static str]| {
        let mut args = vec!["pub"];
        args.extend(base);
        args.extend(["-m", "x"]);
        args.extend(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let cases: [(&[&str], &str); 4] = [
        (
            &["-u", "alice", "-P", "wrong"],
            "midge pub: connection refused: bad user name or password (return code 4)",
        ),
        (
            &["-u", "alice", "-P", "wrong", "-V", "5"],
            "midge pub: connection refused: bad user name or password (0x86)",
        ),
        (
            &[],
            "midge pub: connection refused: not authorized (return code 5)",
        ),
        (&["-V", "5"], "midge pub: connection refused:"),
    ];
    for (extra, message) in cases {
        let args = pub_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = run(&args, None).await;
        assert_eq!(
            output.status.code(),
            Some(EXIT_NOT_AUTHORIZED),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).starts_with(message),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let output = run(
        &[
            "sub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "t",
            "-u",
            "alice",
            "-P",
            "nope",
        ],
        None,
    )
    .await;
    assert_eq!(output.status.code(), Some(EXIT_NOT_AUTHORIZED));

    // The right password works, also given in an -L URL.
    let output = run(
        &[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "t",
            "-m",
            "x",
            "-u",
            "alice",
            "-P",
            "secret",
        ],
        None,
    )
    .await;
    assert_success(&output);
    let url = format!("mqtt://alice:secret@127.0.0.1:{port}/t");
    let output = run(&["pub", "-L", &url, "-m", "x", "-q", "1"], None).await;
    assert_success(&output);
}

// ---- transports ----

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signs, as PEM
/// files in `dir`.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn make_pki(dir: &Path) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "midge pubsub test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca_path = write("ca.crt", ca.pem());
    let issue = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = issue(
        vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
        "broker",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) =
        issue(Vec::new(), "sensor-1", ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        ca: ca_path,
        server_cert: write("server.crt", server_cert),
        server_key: write("server.key", server_key),
        client_cert: write("client.crt", client_cert),
        client_key: write("client.key", client_key),
    }
}

#[tokio::test]
async fn tls_pub_and_sub_verify_the_broker_with_cafile() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let (ca, cert, key) = (&pki.ca, &pki.server_cert, &pki.server_key);
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = make_pki(other_dir.path()).ca;
    let broker = Broker::start(
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nbind = \"127.0.0.1:0\"\n\
             [listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        "[auth]\nallow_anonymous = true\n",
    )
    .await;
    let tls_port = broker.addr(1).port().to_string();
    let ca = ca.to_str().unwrap();
    let mut witness = Witness::v3(broker.addr(0), "witness").await;
    witness.subscribe("tls/#").await;

    let output = run(
        &[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &tls_port,
            "--cafile",
            ca,
            "-t",
            "tls/a",
            "-m",
            "over tls",
            "-q",
            "1",
        ],
        None,
    )
    .await;
    assert_success(&output);
    assert_eq!(witness.publication().await.1, "over tls");
    let url = format!("mqtts://127.0.0.1:{tls_port}/tls/b");
    let output = run(&["pub", "-L", &url, "--insecure", "-m", "insecure"], None).await;
    assert_success(&output);
    assert_eq!(witness.publication().await.1, "insecure");

    // A CA that did not sign the broker's certificate: the handshake fails, exit 3.
    let output = run(
        &[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &tls_port,
            "--cafile",
            other_ca.to_str().unwrap(),
            "-t",
            "tls/c",
            "-m",
            "x",
        ],
        None,
    )
    .await;
    assert_eq!(
        output.status.code(),
        Some(EXIT_CONNECTION),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("TLS handshake"),
        "{}",
        stderr(&output)
    );

    publish_ready(&mut witness, "tls/ready").await;
    let mut sub = Sub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &tls_port,
        "--cafile",
        ca,
        "-t",
        "tls/ready",
        "-t",
        "tls/live",
        "-C",
        "2",
    ]);
    assert_eq!(sub.line().await, "ready");
    witness.publish("tls/live", b"to tls sub", false).await;
    let (code, rest, err) = sub.exit().await;
    assert_eq!((code, rest.as_str()), (0, "to tls sub"), "{err}");
}

#[tokio::test]
async fn tls_trusts_a_capath_directory_and_the_os_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = make_pki(other_dir.path()).ca;
    let broker = Broker::start(
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nbind = \"127.0.0.1:0\"\n\
             [listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.server_cert.display(),
            pki.server_key.display()
        ),
        "[auth]\nallow_anonymous = true\n",
    )
    .await;
    let tls_port = broker.addr(1).port().to_string();
    let mut witness = Witness::v3(broker.addr(0), "witness").await;
    witness.subscribe("trust/#").await;

    // The CA among files without certificates, as in /etc/ssl/certs.
    let capath = tempfile::tempdir().unwrap();
    std::fs::copy(&pki.ca, capath.path().join("test-ca.pem")).unwrap();
    std::fs::write(capath.path().join("README"), "not a certificate\n").unwrap();
    let capath_arg = capath.path().to_str().unwrap();
    let pub_args = |trust: &[&'static str], extra: Vec<String>, topic: &str| {
        let mut args: Vec<String> = ["pub", "-h", "127.0.0.1", "-p", &tls_port, "-q", "1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(trust.iter().map(|s| s.to_string()));
        args.extend(extra);
        args.extend([
            "-t".to_owned(),
            topic.to_owned(),
            "-m".to_owned(),
            topic.to_owned(),
        ]);
        args
    };
    let bounded = |mut command: Command| async move {
        tokio::time::timeout(TIMEOUT, command.output())
            .await
            .expect("midge finishes")
            .unwrap()
    };

    let args = pub_args(&["--capath"], vec![capath_arg.to_owned()], "trust/capath");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_success(&run(&args, None).await);
    assert_eq!(witness.publication().await.1, "trust/capath");

    // Combined with a --cafile that did not sign the broker: the roots add up.
    let args = pub_args(
        &["--cafile"],
        vec![
            other_ca.to_str().unwrap().to_owned(),
            "--capath".to_owned(),
            capath_arg.to_owned(),
        ],
        "trust/both",
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_success(&run(&args, None).await);
    assert_eq!(witness.publication().await.1, "trust/both");

    let args = pub_args(&["--tls-use-os-certs"], Vec::new(), "trust/os");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut command = midge(&args);
    command.env("SSL_CERT_FILE", &pki.ca);
    assert_success(&bounded(command).await);
    assert_eq!(witness.publication().await.1, "trust/os");

    // An "OS bundle" that did not sign the broker: the handshake fails.
    let mut command = midge(&args);
    command.env("SSL_CERT_FILE", &other_ca);
    let output = bounded(command).await;
    assert_eq!(
        output.status.code(),
        Some(EXIT_CONNECTION),
        "{}",
        stderr(&output)
    );

    // A directory without certificates is a usage error naming it.
    let empty = tempfile::tempdir().unwrap();
    let args = pub_args(
        &["--capath"],
        vec![empty.path().to_str().unwrap().to_owned()],
        "trust/empty",
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run(&args, None).await;
    assert_eq!(
        output.status.code(),
        Some(EXIT_USAGE),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains(empty.path().to_str().unwrap()),
        "{}",
        stderr(&output)
    );

    // TLS without any trust source: refused, with the options in the advice.
    let url = format!("mqtts://127.0.0.1:{tls_port}/trust/none");
    let output = run(&["pub", "-L", &url, "-m", "x"], None).await;
    assert_eq!(
        output.status.code(),
        Some(EXIT_USAGE),
        "{}",
        stderr(&output)
    );
    for option in ["--cafile", "--capath", "--tls-use-os-certs", "--insecure"] {
        assert!(stderr(&output).contains(option), "{}", stderr(&output));
    }

    publish_ready(&mut witness, "trust/ready").await;
    let mut sub = Sub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &tls_port,
        "--capath",
        capath_arg,
        "-t",
        "trust/ready",
        "-C",
        "1",
    ]);
    assert_eq!(sub.line().await, "ready");
    let (code, _, err) = sub.exit().await;
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn websocket_and_secure_websocket_urls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let (ca, cert, key) = (&pki.ca, &pki.server_cert, &pki.server_key);
    let broker = Broker::start(
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n\n\
             [[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"ws\"\nws_path = \"/mqtt\"\n\n\
             [[listener]]\nbind = \"127.0.0.1:0\"\nprotocol = \"ws\"\nws_path = \"/secure\"\n\
             [listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        "[auth]\nallow_anonymous = true\n",
    )
    .await;
    let ws = format!("ws://127.0.0.1:{}/mqtt", broker.addr(1).port());
    let wss = format!("wss://localhost:{}/secure", broker.addr(2).port());
    let ca = ca.to_str().unwrap();
    let mut witness = Witness::v3(broker.addr(0), "witness").await;
    witness.subscribe("ws/#").await;

    let output = run(
        &["pub", "-L", &ws, "-t", "ws/a", "-m", "over ws", "-q", "2"],
        None,
    )
    .await;
    assert_success(&output);
    assert_eq!(witness.publication().await.1, "over ws");
    let output = run(
        &[
            "pub", "-L", &wss, "--cafile", ca, "-V", "5", "-t", "ws/b", "-m", "over wss", "-q", "1",
        ],
        None,
    )
    .await;
    assert_success(&output);
    assert_eq!(witness.publication().await.1, "over wss");

    // A path the broker does not serve: the upgrade fails, exit 3.
    let wrong = format!("ws://127.0.0.1:{}/nope", broker.addr(1).port());
    let output = run(&["pub", "-L", &wrong, "-t", "ws/c", "-m", "x"], None).await;
    assert_eq!(
        output.status.code(),
        Some(EXIT_CONNECTION),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("WebSocket upgrade"),
        "{}",
        stderr(&output)
    );

    publish_ready(&mut witness, "ws/ready").await;
    for url in [&ws, &wss] {
        let mut sub = Sub::start(&[
            "-L", url, "--cafile", ca, "-t", "ws/ready", "-t", "ws/live", "-v", "-C", "2",
        ]);
        if url == &ws {
            // --cafile without TLS is a usage error.
            let (code, _, err) = sub.exit().await;
            assert_eq!(code, EXIT_USAGE, "{err}");
            sub = Sub::start(&[
                "-L", url, "-t", "ws/ready", "-t", "ws/live", "-v", "-C", "2",
            ]);
        }
        assert_eq!(sub.line().await, "ws/ready ready");
        witness.publish("ws/live", b"to ws sub", false).await;
        let (code, rest, err) = sub.exit().await;
        assert_eq!((code, rest.as_str()), (0, "ws/live to ws sub"), "{err}");
    }
}

#[tokio::test]
async fn tls_client_certificate_for_a_broker_that_requires_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let broker = Broker::start(
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nbind = \"127.0.0.1:0\"\n\
             [listener.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n\
             require_client_cert = true\n",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display()
        ),
        "[auth]\nallow_anonymous = true\n",
    )
    .await;
    let mut witness = Witness::v3(broker.addr(0), "witness").await;
    witness.subscribe("mtls").await;
    let port = broker.addr(1).port().to_string();
    let ca = pki.ca.to_str().unwrap();
    let output = run(
        &[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "--cafile",
            ca,
            "--cert",
            pki.client_cert.to_str().unwrap(),
            "--key",
            pki.client_key.to_str().unwrap(),
            "-t",
            "mtls",
            "-m",
            "with a certificate",
            "-q",
            "1",
        ],
        None,
    )
    .await;
    assert_success(&output);
    assert_eq!(witness.publication().await.1, "with a certificate");
    // Without one the broker ends the handshake: a connection failure, exit 3.
    let output = run(
        &[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "--cafile",
            ca,
            "-t",
            "mtls",
            "-m",
            "x",
            "-q",
            "1",
        ],
        None,
    )
    .await;
    assert_eq!(
        output.status.code(),
        Some(EXIT_CONNECTION),
        "{}",
        stderr(&output)
    );
    // A certificate without its key is a usage error.
    let output = run(
        &[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "--cafile",
            ca,
            "--cert",
            pki.client_cert.to_str().unwrap(),
            "-t",
            "mtls",
            "-m",
            "x",
        ],
        None,
    )
    .await;
    assert_eq!(
        output.status.code(),
        Some(EXIT_USAGE),
        "{}",
        stderr(&output)
    );
}

// ---- sessions ----

#[tokio::test]
async fn c_keeps_the_session_so_messages_wait_for_the_next_run() {
    let broker = Broker::tcp().await;
    let port = broker.port();
    let mut witness = Witness::v3(broker.addr(0), "publisher").await;
    publish_ready(&mut witness, "c/ready").await;
    for version in ["311", "5"] {
        let id = format!("kept-{version}");
        let topic = format!("c/{version}");
        let mut sub = Sub::start(&[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            version,
            "-i",
            &id,
            "-c",
            "-q",
            "1",
            "-t",
            "c/ready",
            "-t",
            &topic,
            "-C",
            "1",
        ]);
        assert_eq!(sub.line().await, "ready");
        let (code, _, err) = sub.exit().await;
        assert_eq!(code, 0, "{err}");
        witness.publish(&topic, b"while away", false).await;
        let output = run(
            &[
                "sub",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-i",
                &id,
                "-c",
                "-q",
                "1",
                "-t",
                &topic,
                "-C",
                "1",
            ],
            None,
        )
        .await;
        assert_success(&output);
        assert_eq!(stdout(&output), "while away\n", "MQTT {version}");
    }
    // Without -c the session ends with the connection: nothing waits.
    let mut sub = Sub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-i",
        "clean",
        "-q",
        "1",
        "-t",
        "c/ready",
        "-t",
        "c/clean",
        "-C",
        "1",
    ]);
    assert_eq!(sub.line().await, "ready");
    assert_eq!(sub.exit().await.0, 0);
    witness.publish("c/clean", b"lost", false).await;
    let output = run(
        &[
            "sub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-i",
            "clean",
            "-q",
            "1",
            "-t",
            "c/clean",
            "-W",
            "1",
        ],
        None,
    )
    .await;
    assert_eq!(output.status.code(), Some(EXIT_TIMEOUT));
    assert_eq!(stdout(&output), "");
}

// ---- Mosquitto's clients ----

fn mosquitto_tool(name: &str) -> &str {
    let found = std::process::Command::new(name)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "{name} is missing: run scripts/test-deps.sh (installs mosquitto-clients)"
    );
    name
}

#[tokio::test]
async fn mosquitto_clients_agree_with_midge_pub_and_sub() {
    let broker = Broker::tcp().await;
    let port = broker.port();
    let mosquitto_sub = mosquitto_tool("mosquitto_sub");
    let mosquitto_pub = mosquitto_tool("mosquitto_pub");

    // midge pub -> mosquitto_sub (v5, user property printed with %P).
    let mut witness = Witness::v3(broker.addr(0), "witness").await;
    publish_ready(&mut witness, "m/ready").await;
    let mut sub = Command::new(mosquitto_sub)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "5",
            "-t",
            "m/ready",
            "-t",
            "m/from-midge",
            "-C",
            "2",
            "-F",
            "%t %p %P",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mosquitto_sub");
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(TIMEOUT, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.as_deref(), Some("m/ready ready "));
    let output = run(
        &[
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "5",
            "-t",
            "m/from-midge",
            "-m",
            "hi mosquitto",
            "-q",
            "2",
            "-D",
            "publish",
            "user-property",
            "by",
            "midge",
        ],
        None,
    )
    .await;
    assert_success(&output);
    let second = tokio::time::timeout(TIMEOUT, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        second.as_deref(),
        Some("m/from-midge hi mosquitto by:midge")
    );
    let status = tokio::time::timeout(TIMEOUT, sub.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    // mosquitto_pub -> midge sub.
    let mut sub = Sub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        "m/ready",
        "-t",
        "m/from-mosquitto",
        "-v",
        "-q",
        "2",
        "-C",
        "2",
    ]);
    assert_eq!(sub.line().await, "m/ready ready");
    let status = Command::new(mosquitto_pub)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "m/from-mosquitto",
            "-m",
            "hi midge",
            "-q",
            "2",
        ])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let (code, rest, err) = sub.exit().await;
    assert_eq!(
        (code, rest.as_str()),
        (0, "m/from-mosquitto hi midge"),
        "{err}"
    );
}

// ---- will ----

#[tokio::test]
async fn a_killed_sub_leaves_its_will() {
    let broker = Broker::tcp().await;
    let mut witness = Witness::v3(broker.addr(0), "witness").await;
    witness.subscribe("wills/#").await;
    publish_ready(&mut witness, "w/ready").await;
    let mut sub = Sub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &broker.port(),
        "-t",
        "w/ready",
        "--will-topic",
        "wills/sub",
        "--will-payload",
        "gone",
        "--will-qos",
        "1",
    ]);
    assert_eq!(sub.line().await, "ready");
    sub.child.start_kill().unwrap();
    let (topic, payload, qos, _) = witness.publication().await;
    assert_eq!(
        (topic.as_str(), &payload[..], qos),
        ("wills/sub", &b"gone"[..], 1)
    );
}
