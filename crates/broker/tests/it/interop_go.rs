//! The Go example of seed 000_4e451f008431d936 (eclipse/paho.mqtt.golang, Debian's
//! golang-github-eclipse-paho.mqtt.golang-dev) against midge: tests/interop/go/seed/ is the
//! seed's program, changed only to take the broker address from MQTT_BROKER. The test builds
//! it offline in GOPATH mode, runs it, reads what it prints and checks its will with a
//! rumqttc witness.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;
use tokio::time::Instant;

use crate::client::{V5, text};
use crate::harness::{TIMEOUT, TestBroker, qos5};
use crate::interop_seed::{
    LineProcess, assert_no_will_yet, assert_seed_reading, assert_will_on_kill, build, missing,
    scratch_dir, will_watcher,
};
use crate::interop_util::repo_root;

/// Debian installs Go packages' sources here; GOPATH mode builds from it with no network.
const DEBIAN_GOPATH: &str = "/usr/share/gocode";

/// The seed publishes a reading every 5 s, starting right after CONNACK. Its subscription
/// is made concurrently (in the OnConnect goroutine), so the first reading may be routed
/// before it exists; the second one, 5 s later, cannot be.
const PUBLISH_PERIOD: Duration = Duration::from_secs(5);

/// Builds tests/interop/go/seed into `dir`; fails naming scripts/test-deps.sh when Go or
/// the Debian paho package is missing.
async fn build_seed(dir: &Path) -> PathBuf {
    const TOOL: &str = "Go with eclipse/paho.mqtt.golang (golang-go, \
                        golang-github-eclipse-paho.mqtt.golang-dev)";
    if let Err(e) = std::process::Command::new("go").arg("version").output() {
        missing(TOOL, &format!("cannot run `go`: {e}"));
    }
    let paho = Path::new(DEBIAN_GOPATH).join("src/github.com/eclipse/paho.mqtt.golang");
    if !paho.join("client.go").is_file() {
        missing(TOOL, &format!("{} does not exist", paho.display()));
    }
    let program = dir.join("seed");
    let built = build(
        "Go seed",
        Command::new("go")
            .args(["build", "-o"])
            .arg(&program)
            .arg(".")
            .current_dir(repo_root().join("tests/interop/go/seed"))
            .env("GO111MODULE", "off")
            .env("GOPATH", DEBIAN_GOPATH)
            // Go's build cache, kept between runs inside target/ so rebuilds are quick.
            .env("GOCACHE", crate::interop_seed::build_dir().join("go-cache"))
            .env_remove("GOFLAGS"),
    )
    .await;
    if let Err(e) = built {
        missing(TOOL, &e);
    }
    program
}

/// What the seed's message handler printed: `Topic: <t>` then `Payload: <p>` per message.
/// The handler runs for one message at a time, so the n-th Topic goes with the n-th Payload
/// even when other goroutines' lines come between them.
fn handled(lines: &[String]) -> Vec<(String, String)> {
    let field = |prefix: &str| -> Vec<String> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(prefix).map(str::to_owned))
            .collect()
    };
    field("Topic: ")
        .into_iter()
        .zip(field("Payload: "))
        .collect()
}

#[tokio::test]
async fn go_paho_seed_publishes_and_receives_at_qos_1_on_sensors_and_its_will_fires_when_killed() {
    let dir = scratch_dir();
    let program = build_seed(dir.path()).await;

    let broker = TestBroker::start().await;
    let mut wills = will_watcher(&broker).await;
    let mut sensors = V5::connect(&broker, "sensor-watcher").await;
    sensors.subscribe_ok("sensors/#", 1).await;

    let started = Instant::now();
    let mut seed = LineProcess::spawn(
        &program,
        &[],
        &[("MQTT_BROKER", format!("tcp://127.0.0.1:{}", broker.port()))],
    );
    // The seed prints these after CONNACK and after SUBACK.
    seed.expect_line("Подключено", started + TIMEOUT).await;
    seed.expect_line("Подписка на sensors/#", started + TIMEOUT)
        .await;

    // Its QoS 1 reading reaches another subscriber at QoS 1, intact.
    let reading = sensors.next_publish().await;
    assert_eq!(
        (text(&reading.topic).as_str(), reading.qos, reading.retain),
        ("sensors/temperature/room1", qos5(1), false),
        "the seed's reading as another subscriber gets it"
    );
    assert_seed_reading(&reading.payload, "Go seed, as published");

    // A reading from another device reaches the seed through sensors/#.
    let humidity = r#"{"value":45,"unit":"percent"}"#;
    let mut other = V5::connect(&broker, "humidity-sensor").await;
    other
        .publish("sensors/humidity/room1", 1, false, humidity)
        .await;

    // The seed's handler prints every message it gets: the other device's, and its own
    // reading coming back (within one publish period, see PUBLISH_PERIOD).
    let deadline = Instant::now() + PUBLISH_PERIOD + TIMEOUT;
    loop {
        let got = handled(seed.seen());
        let has = |topic: &str| got.iter().any(|(t, _)| t == topic);
        if has("sensors/humidity/room1") && has("sensors/temperature/room1") {
            for (topic, payload) in &got {
                match topic.as_str() {
                    "sensors/humidity/room1" => {
                        assert_eq!(payload, humidity, "the other device's reading")
                    }
                    "sensors/temperature/room1" => {
                        assert_seed_reading(payload.as_bytes(), "Go seed, as received back")
                    }
                    other => panic!("the seed got a message on {other}: {got:?}"),
                }
            }
            break;
        }
        seed.next_line(
            deadline,
            "both messages on sensors/# (Topic:/Payload: lines)",
        )
        .await;
    }
    // "Опубликовано" follows the PUBACK, which may come after the reading's way back.
    if !seed.seen().iter().any(|l| l == "Опубликовано") {
        seed.expect_line("Опубликовано", Instant::now() + TIMEOUT)
            .await;
    }
    assert!(
        !seed
            .seen()
            .iter()
            .any(|l| l.starts_with("Соединение потеряно")),
        "the seed lost its connection: {:?}",
        seed.seen()
    );

    assert_no_will_yet(&broker, &mut wills).await;
    let will = assert_will_on_kill(&broker, &mut wills, seed, "clients/go-client/status").await;
    assert_eq!(will.properties, None, "a 3.1.1 will has no properties");
    eprintln!("Go seed scenario took {:?}", started.elapsed());
    broker.shutdown().await;
}
