//! `midge bench` against a real `midge` broker process: short runs whose JSON report must
//! show traffic delivered without loss.

use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A broker child process on a free loopback port, killed on drop.
struct Broker {
    child: Child,
    port: u16,
    /// The AMQP listener's port, when the broker has one.
    amqp_port: Option<u16>,
    _dir: Option<tempfile::TempDir>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl Broker {
    fn start() -> Self {
        Self::start_with(None)
    }

    /// With an AMQP listener beside the MQTT one (from a config file).
    fn start_amqp() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let amqp = free_port();
        let config = dir.path().join("midge.toml");
        std::fs::write(
            &config,
            // Listener 0's address comes from MIDGE_LISTENER__0__BIND (start_with).
            format!(
                "[[listener]]\nbind = \"127.0.0.1:1883\"\n\n\
                 [[listener]]\nbind = \"127.0.0.1:{amqp}\"\nprotocol = \"amqp\"\n"
            ),
        )
        .expect("write config");
        let mut broker = Self::start_with(Some(&config));
        broker.amqp_port = Some(amqp);
        broker._dir = Some(dir);
        broker
    }

    /// bench/relay/relay.c (the floor of `FLOOR=1 bench/compare.sh`) instead of midge,
    /// with its io_uring loop when `uring`.
    fn start_relay(program: &std::path::Path, uring: bool) -> Self {
        let port = free_port();
        let mut command = Command::new(program);
        if uring {
            command.arg("--uring");
        }
        // Its stderr says why, if io_uring or the port is refused.
        command.arg(port.to_string()).stderr(Stdio::inherit());
        Self::spawn_listening(&mut command, port, "the relay")
    }

    fn start_with(config: Option<&std::path::Path>) -> Self {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_midge"));
        command.arg("serve");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        for (key, _) in std::env::vars() {
            if key.starts_with("MIDGE_") {
                command.env_remove(key);
            }
        }
        command
            .env("MIDGE_STORAGE__BACKEND", "memory")
            .env("MIDGE_SYS__INTERVAL_SECS", "0")
            .env("MIDGE_LISTENER__0__BIND", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null());
        Self::spawn_listening(&mut command, port, "midge")
    }

    /// Starts `command` (`what`) and waits until it accepts connections on `port`.
    fn spawn_listening(command: &mut Command, port: u16, what: &str) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{what} exited during start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not listen within 30 s"
            );
            // Polling for the port: the child gives no other readiness signal.
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            amqp_port: None,
            _dir: None,
        }
    }

    /// Runs `midge bench` against this broker with a time limit.
    fn bench(&self, args: &[&str]) -> Output {
        let port = self.port.to_string();
        let pid = self.child.id().to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_midge"))
            .arg("bench")
            .args(args)
            .args(["--port", &port, "--broker-pid", &pid, "--quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start midge bench");
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("midge bench {args:?} did not finish within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("bench output")
    }

    fn bench_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let output = self.bench(&all);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "midge bench {args:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn number(report: &Value, path: &[&str]) -> f64 {
    let mut value = report;
    for key in path {
        value = &value[key];
    }
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {report}"))
}

#[test]
fn pairs_qos1_run_delivers_every_message_once_and_in_order() {
    let broker = Broker::start();
    let report = broker.bench_json(&["pairs", "-N", "10", "-q", "1", "-d", "1", "-w", "0.2"]);
    assert!(number(&report, &["delivered"]) > 0.0, "{report}");
    assert!(number(&report, &["delivered_per_sec"]) > 0.0, "{report}");
    assert_eq!(number(&report, &["lost"]), 0.0, "{report}");
    assert_eq!(number(&report, &["duplicated"]), 0.0, "{report}");
    assert_eq!(number(&report, &["reordered"]), 0.0, "{report}");
    assert_eq!(
        number(&report, &["sent"]),
        number(&report, &["delivered_total"]),
        "{report}"
    );
    assert!(number(&report, &["latency_us", "p99"]) > 0.0, "{report}");
    assert_eq!(number(&report, &["connections", "count"]), 20.0);
    // The broker's figures come from /proc/<pid>.
    assert!(
        number(&report, &["broker", "rss_kib_after"]) > 0.0,
        "{report}"
    );
    number(&report, &["broker", "cpu_s"]);
    number(&report, &["generator", "cpu_s"]);
}

#[test]
fn mqtt311_qos2_count_run_delivers_exactly_the_count() {
    let broker = Broker::start();
    let report = broker.bench_json(&[
        "pairs",
        "-N",
        "4",
        "-q",
        "2",
        "-V",
        "311",
        // More than the broker's max_inflight (32): MQTT 3.1.1 cannot be told that limit,
        // so the broker must accept the extra unreleased QoS 2 messages.
        "--inflight",
        "64",
        "-n",
        "2000",
        "-w",
        "0",
    ]);
    assert_eq!(number(&report, &["sent"]), 2000.0, "{report}");
    assert_eq!(number(&report, &["delivered_total"]), 2000.0, "{report}");
    assert_eq!(number(&report, &["lost"]), 0.0, "{report}");
    assert_eq!(number(&report, &["duplicated"]), 0.0, "{report}");
}

#[test]
fn conn_run_holds_idle_subscribed_connections_and_reports_broker_memory() {
    let broker = Broker::start();
    let report = broker.bench_json(&["conn", "-C", "50", "--conn-subscribe", "--hold", "0"]);
    assert_eq!(number(&report, &["connections", "count"]), 50.0, "{report}");
    assert!(
        number(&report, &["connections", "per_sec"]) > 0.0,
        "{report}"
    );
    assert!(number(&report, &["connections", "handshake_us", "max"]) > 0.0);
    // Memory per connection is after minus before over 50: any number, but present.
    number(&report, &["broker", "kib_per_conn"]);
}

/// `--conn-fanout`: every connection subscribes to one topic and gets the one message
/// published to it at the end; `--conn-sources` spreads them over loopback addresses.
#[test]
fn conn_fanout_reaches_every_connection_from_every_source_address() {
    let broker = Broker::start();
    let sources = std::thread::scope(|scope| {
        let run = scope.spawn(|| {
            broker.bench_json(&[
                "conn",
                "-C",
                "60",
                "--conn-fanout",
                "--conn-sources",
                "3",
                "--hold",
                "2",
            ])
        });
        // The clients' side of their connections to the broker, while they are held.
        let remote = format!(":{:04X}", broker.port);
        let mut sources = std::collections::BTreeMap::<String, usize>::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !run.is_finished() && Instant::now() < deadline {
            let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
            let mut seen = std::collections::BTreeMap::new();
            for line in table.lines().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields[2].ends_with(&remote) && fields[3] == "01" {
                    let ip = u32::from_str_radix(&fields[1][..8], 16).expect("hex address");
                    let ip = std::net::Ipv4Addr::from(ip.swap_bytes()).to_string();
                    *seen.entry(ip).or_insert(0) += 1;
                }
            }
            // All 60 up, before the publisher of the fanned-out message connects.
            if sources.is_empty() && seen.values().sum::<usize>() == 60 {
                sources = seen;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let report = run.join().expect("bench thread");
        assert_eq!(number(&report, &["fanout", "received"]), 60.0, "{report}");
        assert!(number(&report, &["fanout", "seconds"]) > 0.0, "{report}");
        sources
    });
    let expected: std::collections::BTreeMap<String, usize> =
        ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
            .into_iter()
            .map(|ip| (ip.to_owned(), 20))
            .collect();
    assert_eq!(sources, expected);
}

#[test]
fn too_small_a_payload_is_refused_with_the_reason() {
    let broker = Broker::start();
    let output = broker.bench(&["pairs", "-s", "8"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("at least 16 bytes"), "{stderr}");
}

/// Runs a count-bounded scenario and checks that every subscriber got what the scenario
/// promises it: all of the messages (fanin, fanout), or each message once across the
/// `$share` group (shared).
fn assert_complete(broker: &Broker, args: &[&str], sent: f64, delivered: f64) {
    let mut all = args.to_vec();
    all.extend(["-w", "0"]);
    let report = broker.bench_json(&all);
    assert_eq!(number(&report, &["sent"]), sent, "{report}");
    assert_eq!(number(&report, &["expected"]), delivered, "{report}");
    assert_eq!(number(&report, &["delivered_total"]), delivered, "{report}");
    for field in ["lost", "duplicated", "reordered", "unexpected"] {
        assert_eq!(number(&report, &[field]), 0.0, "{field}: {report}");
    }
}

#[test]
fn fanin_fanout_and_shared_runs_deliver_what_each_subscriber_is_owed() {
    let broker = Broker::start();
    // 2 wildcard subscribers each receive all 1,000 messages of 5 publishers.
    assert_complete(
        &broker,
        &["fanin", "-P", "5", "-S", "2", "-q", "1", "-n", "1000"],
        1000.0,
        2000.0,
    );
    // 5 subscribers of one topic each receive all 500 QoS 2 messages.
    assert_complete(
        &broker,
        &["fanout", "-P", "1", "-S", "5", "-q", "2", "-n", "500"],
        500.0,
        2500.0,
    );
    // A $share group of 3 receives each of 1,200 messages exactly once, MQTT 3.1.1.
    assert_complete(
        &broker,
        &[
            "shared", "-P", "4", "-S", "3", "-q", "1", "-n", "1200", "-V", "311",
        ],
        1200.0,
        1200.0,
    );
}

/// `count` messages from `devices` devices at 2,000 msg/s in all, at QoS 0 and at QoS 1,
/// each delivered once and in order.
fn assert_device_runs_complete(broker: &Broker, devices: u32, count: u32) {
    let (devices, n) = (devices.to_string(), count.to_string());
    for qos in ["0", "1"] {
        assert_complete(
            broker,
            &["device", "-N", &devices, "-r", "2000", "-q", qos, "-n", &n],
            f64::from(count),
            f64::from(count),
        );
    }
}

#[test]
fn device_run_sends_one_message_per_write_at_the_rate_and_loses_none() {
    let broker = Broker::start();
    // 200 devices at 2,000 msg/s in all (10 each): a short CI variant of the device-scale
    // scenario (BENCHMARKS.md runs 1,000 to 10,000 devices). Correctness only.
    assert_device_runs_complete(&broker, 200, 2000);
    let report = broker.bench_json(&["device", "-N", "50", "-r", "500", "-q", "1", "-d", "1"]);
    assert_eq!(
        number(&report, &["connections", "count"]),
        100.0,
        "{report}"
    );
    // Paced, not saturated: about 500 msg/s over the second measured.
    let rate = number(&report, &["delivered_per_sec"]);
    assert!((300.0..=700.0).contains(&rate), "{rate} msg/s: {report}");
    assert_eq!(number(&report, &["lost"]), 0.0, "{report}");
}

/// Compiles bench/relay/relay.c with gcc and liburing (scripts/test-deps.sh installs both).
fn build_relay() -> std::path::PathBuf {
    let program = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("relay");
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/relay/relay.c");
    let output = Command::new("gcc")
        .args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&program)
        .arg(&source)
        .arg("-luring")
        .output()
        .unwrap_or_else(|e| panic!("cannot run gcc ({e}); install it with scripts/test-deps.sh"));
    assert!(
        output.status.success(),
        "gcc could not build {} (liburing-dev missing? scripts/test-deps.sh installs it):\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    program
}

/// The do-nothing relay that BENCHMARKS.md sets midge's device figures against must carry
/// the scenarios it is measured in, whole and in order, in both of its I/O loops: a relay
/// that dropped messages would show a floor lower than the real one.
#[test]
fn the_floor_relay_carries_device_and_saturated_traffic_in_both_io_loops() {
    let relay = build_relay();
    for uring in [false, true] {
        let broker = Broker::start_relay(&relay, uring);
        assert_device_runs_complete(&broker, 100, 1000);
        let saturated: [(&[&str], f64, f64); 3] = [
            // MQTT 3.1.1, many packets per read and packets split across reads.
            (
                &[
                    "pairs", "-N", "10", "-q", "1", "-V", "311", "-s", "3000", "-n", "20000",
                ],
                20000.0,
                20000.0,
            ),
            (
                &["fanout", "-P", "1", "-S", "20", "-q", "0", "-n", "2000"],
                2000.0,
                40000.0,
            ),
            // fanin's subscriber has a filter with `+`.
            (
                &["fanin", "-P", "20", "-S", "1", "-q", "1", "-n", "5000"],
                5000.0,
                5000.0,
            ),
        ];
        for (args, sent, delivered) in saturated {
            assert_complete(&broker, args, sent, delivered);
        }
    }
}

#[test]
fn amqp_runs_carry_every_message_between_amqp_and_mqtt_clients() {
    let broker = Broker::start_amqp();
    let amqp = broker.amqp_port.expect("AMQP listener").to_string();
    // 3 AMQP publishers to 2 MQTT subscribers, and 3 MQTT publishers to 2 AMQP consumers
    // (each with its own queue), at a fixed rate: every subscriber gets all 600 messages.
    for scenario in ["amqp-mqtt", "mqtt-amqp"] {
        for qos in ["0", "1"] {
            assert_complete(
                &broker,
                &[
                    scenario,
                    "-P",
                    "3",
                    "-S",
                    "2",
                    "-q",
                    qos,
                    "-r",
                    "3000",
                    "-n",
                    "600",
                    "--amqp-port",
                    &amqp,
                ],
                600.0,
                1200.0,
            );
        }
    }
    // AMQP has two delivery modes: QoS 2 is refused with the reason.
    let output = broker.bench(&["amqp-mqtt", "-q", "2", "--amqp-port", &amqp]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("-q 0 or 1"), "{stderr}");
}

/// `n` consecutive loopback ports that were free a moment ago.
fn consecutive_free_ports(n: u16) -> u16 {
    loop {
        let first = free_port();
        if first.checked_add(n).is_none() {
            continue;
        }
        let held: Vec<_> = (first..first + n)
            .map(|port| std::net::TcpListener::bind(("127.0.0.1", port)))
            .collect();
        if held.iter().all(Result::is_ok) {
            return first;
        }
    }
}

/// bench/million.sh, small: 240 connections over a three-node midge cluster on NATS, and
/// over three Mosquittos bridged to the first, each node's connections made by a `midge
/// bench conn --fanout-ready-file` process of its own, then one message published on the
/// first node to all of them. The script fails unless every connection got it.
#[test]
fn million_script_fans_out_over_a_cluster_and_over_bridged_mosquittos() {
    for broker in ["midge", "mosquitto"] {
        let out = tempfile::tempdir().expect("temporary directory");
        let base = consecutive_free_ports(4);
        let output = Command::new("timeout")
            .arg("300")
            .arg("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../bench/million.sh"
            ))
            .env("MIDGE", env!("CARGO_BIN_EXE_midge"))
            .env("BROKER", broker)
            .env("TOTAL", "240")
            .env("PER_NODE", "80")
            .env("BASE_PORT", base.to_string())
            .env("NATS_PORT", (base + 3).to_string())
            .env("WAIT", "60")
            .env("SETTLE", "1")
            .env("OUT", out.path())
            .output()
            .expect("run bash");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "bench/million.sh with {broker} failed:\n{stdout}\n{stderr}"
        );
        for expected in [
            "3 node(s)",
            "connections up        240 of 240 (0 generator(s) failed)",
            "fan-out               240 of 240 received",
        ] {
            let expected = if broker == "mosquitto" && expected == "3 node(s)" {
                "3 process(es), bridged to the first"
            } else {
                expected
            };
            assert!(
                stdout.contains(expected),
                "{broker}: no {expected:?} in\n{stdout}"
            );
        }
    }
}
