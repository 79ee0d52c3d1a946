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
//!
//! Durable queues: after the scenarios, both brokers restart (RabbitMQ on the same node
//! directory and ports, midge on the same redb store) and the script's `--after-restart`
//! scenarios look at what survived.

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
/// The whole scenario script: about 20 s against either broker.
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
    "queue_arguments",
    "exchanges",
    "login",
    "unsupported",
    "durable_before",
];

/// What the script runs with `--after-restart`, once the broker restarted.
const AFTER_RESTART: &[&str] = &["durable_after"];

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
        // Queue arguments midge does not honour are refused rather than ignored.
        Known {
            pointer: "/queue_arguments/max_priority",
            rabbitmq: json!({"ok": "qa-prio"}),
            midge: json!({"closed": 406, "name": "PRECONDITION_FAILED"}),
        },
        Known {
            pointer: "/queue_arguments/dead_letter",
            rabbitmq: json!({"ok": "qa-dlx"}),
            midge: json!({"closed": 406, "name": "PRECONDITION_FAILED"}),
        },
        // After a restart every restored message is marked redelivered; RabbitMQ marks
        // those delivered before the stop (p1) only.
        Known {
            pointer: "/durable_after/messages/1/redelivered",
            rabbitmq: json!(false),
            midge: json!(true),
        },
        Known {
            pointer: "/durable_after/messages/2/redelivered",
            rabbitmq: json!(false),
            midge: json!(true),
        },
    ]);
    // midge has amq.topic and the default exchange only: other exchanges and types are
    // refused with 540 (a channel error), and the other built-in exchanges do not exist.
    for pointer in [
        "/exchanges/direct",
        "/exchanges/fanout",
        "/exchanges/topic",
        "/exchanges/headers",
    ] {
        known.push(Known {
            pointer,
            rabbitmq: json!({"ok": null}),
            midge: json!({"closed": 540, "name": "NOT_IMPLEMENTED"}),
        });
    }
    // AMQP -> MQTT QoS without an x-mqtt-publish-qos header: midge maps delivery_mode (1
    // or none: QoS 0, 2: QoS 1, capped by the subscription); RabbitMQ 3.10 delivers at the
    // subscription's QoS whatever the delivery mode. With the header both follow it.
    for pointer in [
        "/qos_amqp_to_mqtt/sub1/0/1",
        "/qos_amqp_to_mqtt/sub1/1/1",
        "/qos_amqp_to_mqtt/sub2/0/1",
        "/qos_amqp_to_mqtt/sub2/1/1",
    ] {
        known.push(Known {
            pointer,
            rabbitmq: json!(1),
            midge: json!(0),
        });
    }
    // Refused with 540 on that channel: transactions, a channel-wide prefetch, exclusive
    // consumers.
    for pointer in [
        "/unsupported/tx_select",
        "/unsupported/qos_global",
        "/unsupported/exclusive_consumer",
    ] {
        known.push(Known {
            pointer,
            rabbitmq: json!({"ok": null}),
            midge: json!({"closed": 540, "name": "NOT_IMPLEMENTED"}),
        });
    }
    // Where nothing checks passwords and anonymous clients are allowed (the test broker:
    // loopback), any password logs in, as an MQTT CONNECT does; RabbitMQ checks guest's.
    known.push(Known {
        pointer: "/login/wrong_password",
        rabbitmq: json!({"refused": 403, "name": "ACCESS_REFUSED"}),
        midge: json!({"ok": null}),
    });
    known.push(Known {
        pointer: "/exchanges/amq.direct_passive",
        rabbitmq: json!({"ok": null}),
        midge: json!({"closed": 404, "name": "NOT_FOUND"}),
    });
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
    /// AMQP, MQTT, Web MQTT, Erlang distribution.
    ports: [u16; 4],
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
        let ports = [free_port(), free_port(), free_port(), free_port()];
        let (child, stdin) = Self::launch(dir.path(), ports).await?;
        Ok(Self {
            amqp: ports[0],
            mqtt: ports[1],
            ports,
            child,
            stdin,
            _dir: dir,
        })
    }

    /// Stops the node and starts it again on the same directory (its database) and the
    /// same ports (its node name follows the AMQP port). A port taken meanwhile by another
    /// test's socket fails the start, which is tried again, twice.
    async fn restart(&mut self) {
        drop(self.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::launch(self._dir.path(), self.ports).await {
                Ok((child, stdin)) => {
                    self.child = child;
                    self.stdin = stdin;
                    return;
                }
                Err(failure) => failures.push(failure),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        panic!(
            "RabbitMQ did not start again in 3 tries:\n{}",
            failures.join("\n---\n")
        );
    }

    /// Runs tests/interop/amqp/rabbitmq.sh on `dir` and `ports` until the node is ready.
    async fn launch(dir: &Path, ports: [u16; 4]) -> Result<(Child, Option<ChildStdin>), String> {
        let [amqp, mqtt, ws, dist] = ports;
        let script = repo_root().join("tests/interop/amqp/rabbitmq.sh");
        let mut child = Command::new("bash")
            .arg(&script)
            .arg("run")
            .arg(dir)
            .args(ports.map(|p| p.to_string()))
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
            let log = std::fs::read_to_string(dir.join("server.out")).unwrap_or_default();
            return Err(format!(
                "ports {amqp} {mqtt} {ws} {dist} ({ready:?}):\n{err}\nserver.out:\n{log}"
            ));
        }
        Ok((child, stdin))
    }

    /// Closes the script's input and waits for the node to stop (its directory goes after).
    async fn stop(mut self) {
        drop(self.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

async fn scenarios(mqtt: u16, amqp: u16, broker: &str, after_restart: bool) -> Value {
    let script = repo_root().join("tests/interop/amqp/differential.py");
    let mut args = vec![
        script.display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--mqtt-port".into(),
        mqtt.to_string(),
        "--amqp-port".into(),
        amqp.to_string(),
    ];
    if after_restart {
        args.push("--after-restart".into());
    }
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
    let mut expected = if after_restart {
        AFTER_RESTART
    } else {
        SCENARIOS
    }
    .to_vec();
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

/// Both transcripts in one: the run's, then the run's after the restart.
fn merged(mut before: Value, after: Value) -> Value {
    if let (Some(all), Value::Object(after)) = (before.as_object_mut(), after) {
        all.extend(after);
    }
    before
}

/// midge with an AMQP listener and a redb store in `store`, which a restart keeps.
async fn midge(store: &Path) -> (TestBroker, u16) {
    let broker = TestBroker::start_with(|config| {
        config.listeners.push(ListenerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            protocol: ListenerProtocol::Amqp,
            ..ListenerConfig::default()
        });
        config.storage.backend = midge_broker::config::StorageBackend::Redb;
        config.storage.dir = store.to_owned();
    })
    .await;
    let amqp: SocketAddr = broker.server.as_ref().unwrap().local_addrs()[1];
    (broker, amqp.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_scenarios_observe_the_same_against_rabbitmq_and_midge() {
    require_rabbitmq_and_pika();
    let reference = async {
        let mut rabbitmq = RabbitMq::start().await;
        let before = scenarios(rabbitmq.mqtt, rabbitmq.amqp, "RabbitMQ", false).await;
        rabbitmq.restart().await;
        let after = scenarios(rabbitmq.mqtt, rabbitmq.amqp, "RabbitMQ", true).await;
        rabbitmq.stop().await;
        merged(before, after)
    };
    let ours = async {
        let store = tempfile::tempdir().expect("temporary directory");
        let (broker, amqp) = midge(store.path()).await;
        let before = scenarios(broker.port(), amqp, "midge", false).await;
        broker.shutdown().await;
        let (broker, amqp) = midge(store.path()).await;
        let after = scenarios(broker.port(), amqp, "midge", true).await;
        broker.shutdown().await;
        merged(before, after)
    };
    let (reference, ours) = tokio::join!(reference, ours);

    // The reference run itself must have worked: an exception there is a broken scenario.
    for name in SCENARIOS.iter().chain(AFTER_RESTART) {
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
