//! Differential test against RabbitMQ: the AMQP 0-9-1 <-> MQTT scenarios of
//! tests/interop/amqp/differential.py (pika and paho-mqtt) run unchanged against Debian's
//! rabbitmq-server with its MQTT plugin and against midge, and the two transcripts must be
//! equal, apart from the differences README lists under "AMQP 0-9-1", which are checked
//! here to be exactly what README says.
//!
//! RabbitMQ is started once per test binary run, by tests/interop/amqp/rabbitmq.sh on free
//! loopback ports with its own throwaway directories, and stops when the script's standard
//! input closes (so also when this process dies). Like every interop test, this one fails,
//! never skips, when RabbitMQ or pika is missing: scripts/test-deps.sh installs them.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use midge_broker::config::{ListenerConfig, ListenerProtocol};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::harness::TestBroker;
use crate::interop_util::{Tool, repo_root, require, run};

const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// RabbitMQ takes 5-20 s to start on a busy two-core machine.
const RABBITMQ_START: Duration = Duration::from_secs(120);
/// The whole scenario script: about 15 s against either broker.
const SCENARIOS_TIMEOUT: Duration = Duration::from_secs(120);

/// Every scenario the script runs; a transcript missing one is a failure.
const SCENARIOS: &[&str] = &[
    "mapping_mqtt_to_amqp",
    "mapping_amqp_to_mqtt",
    "payloads",
    "qos_mqtt_to_amqp",
    "qos_amqp_to_mqtt",
    "properties_amqp_to_amqp",
    "properties_amqp_to_mqtt",
    "redelivery",
    "confirms",
    "basic_get",
    "ack_multiple",
    "nack_reject",
    "prefetch",
    "round_robin",
    "mandatory_return",
    "purge_delete",
    "exclusive",
    "auto_delete",
    "default_exchange",
    "passive_and_404",
    "bind_unbind",
    "retained_not_replayed",
    "consume_cancel",
];

/// A difference README documents ("Differences from RabbitMQ"): at `pointer` in the
/// transcript, RabbitMQ observes `rabbitmq` and midge `midge`.
struct Known {
    pointer: &'static str,
    rabbitmq: Value,
    midge: Value,
}

fn known_differences() -> Vec<Known> {
    // A message from one AMQP client to another through amq.topic, as its consumer sees its
    // properties: midge keeps what MQTT 5 can carry, with header values as text, and adds
    // the MQTT headers; RabbitMQ passes AMQP properties through untouched. (Through the
    // default exchange midge keeps them whole too.)
    let mut known = vec![
        Known {
            pointer: "/properties_amqp_to_amqp/amq.topic/0/props",
            rabbitmq: json!({
                "content_type": "application/json", "content_encoding": "gzip",
                "delivery_mode": 2, "priority": 3, "correlation_id": "corr-1",
                "reply_to": "replies.here", "message_id": "msg-1", "timestamp": 1_700_000_000,
                "type": "kind", "user_id": "guest", "app_id": "diff",
                "headers": {"b": {"bool": true}, "list": {"array": [{"int": 1}, "x"]},
                            "n": {"int": 42}, "nested": {"table": {"k": "v"}}, "s": "text"}
            }),
            midge: json!({
                "content_type": "application/json", "delivery_mode": 2,
                "correlation_id": "corr-1", "reply_to": "replies.here",
                "headers": {"b": "true", "n": "42", "s": "text", "x-mqtt-dup": {"bool": false},
                            "x-mqtt-publish-qos": {"int": 1}}
            }),
        },
        Known {
            pointer: "/properties_amqp_to_amqp/amq.topic/1/props",
            rabbitmq: json!({}),
            midge: json!({
                "delivery_mode": 1,
                "headers": {"x-mqtt-dup": {"bool": false}, "x-mqtt-publish-qos": {"int": 0}}
            }),
        },
    ];
    known.extend([
        // The issue asks a passive declare of the default exchange to succeed; RabbitMQ
        // refuses any operation on it.
        Known {
            pointer: "/default_exchange/passive",
            rabbitmq: json!({"closed": 403, "name": "ACCESS_REFUSED"}),
            midge: json!({"ok": null}),
        },
        // AMQP -> MQTT QoS: midge maps delivery_mode (1 or none: QoS 0, 2: QoS 1, capped by
        // the subscription); RabbitMQ 3.10 delivers at the subscription's QoS whatever the
        // delivery mode.
        Known {
            pointer: "/qos_amqp_to_mqtt/sub1",
            rabbitmq: json!([["none", 1, false], ["dm1", 1, false], ["dm2", 1, false]]),
            midge: json!([["none", 0, false], ["dm1", 0, false], ["dm2", 1, false]]),
        },
        Known {
            pointer: "/qos_amqp_to_mqtt/sub2",
            rabbitmq: json!([["none", 1, false], ["dm1", 1, false], ["dm2", 1, false]]),
            midge: json!([["none", 0, false], ["dm1", 0, false], ["dm2", 1, false]]),
        },
    ]);
    known
}

/// Panics, naming scripts/test-deps.sh, unless RabbitMQ's server and pika are installed.
fn require_rabbitmq_and_pika() {
    require(Tool::Paho);
    assert!(
        Path::new(RABBITMQ_SERVER).is_file(),
        "RabbitMQ is needed by this differential test but {RABBITMQ_SERVER} does not exist \
         (Debian package rabbitmq-server).\nInstall the interop clients and brokers with: \
         scripts/test-deps.sh"
    );
    let pika = std::process::Command::new("python3")
        .args(["-c", "import pika"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        pika,
        "pika is needed by this differential test.\nInstall the interop clients with: \
         scripts/test-deps.sh"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A RabbitMQ node run by tests/interop/amqp/rabbitmq.sh; it stops when `stdin` closes.
struct RabbitMq {
    amqp: u16,
    mqtt: u16,
    child: Child,
    stdin: Option<ChildStdin>,
    _dir: tempfile::TempDir,
}

impl RabbitMq {
    /// Starts a node on four free loopback ports. A port found free may be taken by
    /// another test's socket before the node binds it (the Erlang distribution port most
    /// often), so a node that fails to start is tried again on fresh ports, twice.
    async fn start() -> Self {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start().await {
                Ok(node) => return node,
                Err(failure) => failures.push(failure),
            }
        }
        panic!(
            "RabbitMQ did not start in 3 tries:\n{}",
            failures.join("\n---\n")
        );
    }

    async fn try_start() -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (amqp, mqtt, ws, dist) = (free_port(), free_port(), free_port(), free_port());
        let script = repo_root().join("tests/interop/amqp/rabbitmq.sh");
        let mut child = Command::new("bash")
            .arg(&script)
            .arg("run")
            .arg(dir.path())
            .args([amqp, mqtt, ws, dist].map(|p| p.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let ready = tokio::time::timeout(RABBITMQ_START, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("ready") {
                    return true;
                }
            }
            false
        })
        .await;
        if ready != Ok(true) {
            let _ = child.start_kill();
            let mut err = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), stderr.read_to_string(&mut err))
                        .await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
            let log = std::fs::read_to_string(dir.path().join("server.out")).unwrap_or_default();
            return Err(format!(
                "ports {amqp} {mqtt} {ws} {dist} ({ready:?}):\n{err}\nserver.out:\n{log}"
            ));
        }
        Ok(Self {
            amqp,
            mqtt,
            child,
            stdin,
            _dir: dir,
        })
    }

    /// Closes the script's input and waits for the node to stop (its directory goes after).
    async fn stop(mut self) {
        drop(self.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

async fn scenarios(mqtt: u16, amqp: u16, broker: &str) -> Value {
    let script = repo_root().join("tests/interop/amqp/differential.py");
    let args = vec![
        script.display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--mqtt-port".into(),
        mqtt.to_string(),
        "--amqp-port".into(),
        amqp.to_string(),
    ];
    let out = run("python3", &args, SCENARIOS_TIMEOUT).await;
    assert!(
        out.status.success(),
        "the scenarios failed against {broker} ({}).\nstderr:\n{}",
        out.status,
        out.stderr
    );
    let line = out.stdout.lines().last().unwrap_or_default();
    let transcript: Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "no transcript from the run against {broker} ({e}).\nstdout:\n{}\nstderr:\n{}",
            out.stdout, out.stderr
        )
    });
    let names: Vec<&str> = transcript
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let mut expected = SCENARIOS.to_vec();
    expected.sort_unstable();
    let mut got = names.clone();
    got.sort_unstable();
    assert_eq!(got, expected, "scenarios in the transcript from {broker}");
    transcript
}

/// Paths where two JSON values differ, with both sides.
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let (p, q) = (x.get(k), y.get(k));
                differences(
                    &format!("{path}/{k}"),
                    p.unwrap_or(&Value::Null),
                    q.unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                differences(&format!("{path}/{i}"), p, q, out);
            }
        }
        _ if a != b => out.push(format!("{path}\n    rabbitmq: {a}\n    midge:    {b}")),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_scenarios_observe_the_same_against_rabbitmq_and_midge() {
    require_rabbitmq_and_pika();
    let rabbitmq = RabbitMq::start().await;
    let broker = TestBroker::start_with(|config| {
        config.listeners.push(ListenerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            protocol: ListenerProtocol::Amqp,
            ..ListenerConfig::default()
        });
    })
    .await;
    let midge_amqp: SocketAddr = broker.server.as_ref().unwrap().local_addrs()[1];
    let (reference, ours) = tokio::join!(
        scenarios(rabbitmq.mqtt, rabbitmq.amqp, "RabbitMQ"),
        scenarios(broker.port(), midge_amqp.port(), "midge"),
    );
    rabbitmq.stop().await;
    broker.shutdown().await;

    // The reference run itself must have worked: an exception there is a broken scenario.
    for name in SCENARIOS {
        assert!(
            reference[name].get("exception").is_none(),
            "scenario {name} failed against RabbitMQ: {}",
            reference[name]
        );
    }
    let mut ours = ours;
    let mut stale = Vec::new();
    for known in known_differences() {
        let theirs = reference.pointer(known.pointer);
        let mine = ours.pointer_mut(known.pointer);
        if theirs != Some(&known.rabbitmq) || mine.as_deref() != Some(&known.midge) {
            stale.push(format!(
                "{}\n    README says rabbitmq {} and midge {}\n    observed    rabbitmq {} and midge {}",
                known.pointer,
                known.rabbitmq,
                known.midge,
                theirs.unwrap_or(&Value::Null),
                mine.as_deref().unwrap_or(&Value::Null),
            ));
        } else if let Some(mine) = mine {
            *mine = known.rabbitmq.clone();
        }
    }
    let mut found = Vec::new();
    differences("", &reference, &ours, &mut found);
    assert!(
        found.is_empty() && stale.is_empty(),
        "midge and RabbitMQ observed different things in {} places; fix midge or list the \
         difference in README and known_differences():\n{}\n\
         {} documented differences no longer hold as documented (update README and \
         known_differences()):\n{}",
        found.len(),
        found.join("\n"),
        stale.len(),
        stale.join("\n")
    );
}
