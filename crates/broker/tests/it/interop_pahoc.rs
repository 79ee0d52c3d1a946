//! The Eclipse Paho C client (Debian's libpaho-mqtt-dev, libpaho-mqtt3c), as embedded
//! devices use it, against midge in MQTT 3.1.1 and 5: tests/interop/c/seed_device.c runs
//! the scenario of seed 000_4e451f008431d936 (retained QoS 1 will, QoS 1 on sensors/#)
//! and prints what it observed as JSON lines; a rumqttc witness checks its will.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokio::process::Command;
use tokio::time::Instant;

use crate::client::V5;
use crate::harness::{TIMEOUT, TestBroker};
use crate::interop_seed::{
    LineProcess, assert_no_will_yet, assert_seed_reading, assert_will_on_kill, build, missing,
    scratch_dir, will_watcher,
};
use crate::interop_util::{Mqtt, Received, hex, plain, repo_root, run};

/// Compiles tests/interop/c/seed_device.c into `dir` against libpaho-mqtt3c; fails naming
/// scripts/test-deps.sh when gcc or the library is missing.
async fn build_device(dir: &Path) -> PathBuf {
    const TOOL: &str = "gcc with the Paho C client (gcc, libpaho-mqtt-dev)";
    if let Err(e) = std::process::Command::new("gcc").arg("--version").output() {
        missing(TOOL, &format!("cannot run `gcc`: {e}"));
    }
    if !Path::new("/usr/include/MQTTClient.h").is_file() {
        missing(TOOL, "/usr/include/MQTTClient.h does not exist");
    }
    let program = dir.join("seed_device");
    let built = build(
        "Paho C seed_device",
        Command::new("gcc")
            .args(["-std=c11", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra"])
            .args(["-Werror", "-O1", "-o"])
            .arg(&program)
            .arg(repo_root().join("tests/interop/c/seed_device.c"))
            .arg("-lpaho-mqtt3c"),
    )
    .await;
    if let Err(e) = built {
        missing(TOOL, &e);
    }
    program
}

/// One line of seed_device's output: exactly one of these is set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Event {
    connected: Option<Connected>,
    subscribed: Option<Subscribed>,
    published: Option<Published>,
    received: Option<Received>,
    done: Option<bool>,
    error: Option<String>,
    rc: Option<i32>,
}

#[derive(Debug, Deserialize)]
struct Connected {
    version: u8,
    reason_code: u8,
    session_present: bool,
}

#[derive(Debug, Deserialize)]
struct Subscribed {
    granted: u8,
}

#[derive(Debug, Deserialize)]
struct Published {
    topic: String,
    /// Hex.
    payload: String,
}

/// The next event `device` prints; its error line, or anything unparsable, fails the test.
async fn next_event(device: &mut LineProcess, deadline: Instant, waiting_for: &str) -> Event {
    let line = device.next_line(deadline, waiting_for).await;
    match serde_json::from_str::<Event>(&line) {
        Ok(Event {
            error: Some(error),
            rc,
            ..
        }) => device.fail(&format!("failed: {error} (rc {rc:?})")).await,
        Ok(event) => event,
        Err(e) => device.fail(&format!("printed {line:?} ({e})")).await,
    }
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex payload"))
        .collect()
}

async fn seed_scenario(version: Mqtt) {
    let client = match version {
        Mqtt::V311 => "Paho C 3.1.1",
        Mqtt::V5 => "Paho C 5",
    };
    let dir = scratch_dir();
    let program = build_device(dir.path()).await;

    let broker = TestBroker::start().await;
    let mut wills = will_watcher(&broker).await;

    let started = Instant::now();
    let deadline = started + TIMEOUT;
    let args = [
        "127.0.0.1".to_owned(),
        broker.port().to_string(),
        (if version == Mqtt::V5 { "5" } else { "311" }).to_owned(),
    ];
    let mut device = LineProcess::spawn(&program, &args, &[]);

    let connected = next_event(&mut device, deadline, "connected").await;
    let Some(connected) = connected.connected else {
        device.fail("did not report its CONNACK first").await
    };
    let expected_version = if version == Mqtt::V5 { 5 } else { 4 };
    assert_eq!(
        (
            connected.version,
            connected.reason_code,
            connected.session_present
        ),
        (expected_version, 0, false),
        "{client}: CONNACK (protocol level, reason code, session present)"
    );

    let subscribed = next_event(&mut device, deadline, "subscribed").await;
    let Some(subscribed) = subscribed.subscribed else {
        device.fail("did not report its SUBACK").await
    };
    assert_eq!(subscribed.granted, 1, "{client}: granted QoS for sensors/#");

    // The subscription exists now: a reading from another device must reach it.
    let humidity = br#"{"value":45,"unit":"percent"}"#;
    let mut other = V5::connect(&broker, "humidity-sensor").await;
    other
        .publish("sensors/humidity/room1", 1, false, &humidity[..])
        .await;

    let published = next_event(&mut device, deadline, "published").await;
    let Some(published) = published.published else {
        device.fail("did not report its PUBACK").await
    };
    assert_eq!(published.topic, "sensors/temperature/room1");
    let reading = unhex(&published.payload);
    assert_seed_reading(&reading, client);

    let mut received = Vec::new();
    loop {
        let event = next_event(&mut device, deadline, "received or done").await;
        match event {
            Event {
                received: Some(message),
                ..
            } => received.push(message),
            Event {
                done: Some(true), ..
            } => break,
            other => {
                device
                    .fail(&format!("reported {other:?} out of turn"))
                    .await
            }
        }
    }
    received.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(
        received,
        [
            plain("sensors/humidity/room1", 1, false, humidity),
            plain("sensors/temperature/room1", 1, false, &reading),
        ],
        "{client}: both readings through sensors/# at QoS 1, payloads intact"
    );
    assert_eq!(hex(&reading), published.payload);

    assert_no_will_yet(&broker, &mut wills).await;
    let will = assert_will_on_kill(&broker, &mut wills, device, "clients/c-client/status").await;
    let will_user_properties = will.properties.map(|p| p.user_properties);
    match version {
        Mqtt::V311 => assert_eq!(will_user_properties, None, "{client}: will properties"),
        Mqtt::V5 => assert_eq!(
            will_user_properties,
            Some(vec![("cause".to_owned(), "crash".to_owned())]),
            "{client}: the will's user property"
        ),
    }
    eprintln!("{client} seed scenario took {:?}", started.elapsed());
    broker.shutdown().await;
}

#[tokio::test]
async fn pahoc_v311_seed_device_qos1_on_sensors_and_retained_will_when_killed() {
    seed_scenario(Mqtt::V311).await;
}

#[tokio::test]
async fn pahoc_v5_seed_device_qos1_on_sensors_and_will_with_properties_when_killed() {
    seed_scenario(Mqtt::V5).await;
}

// ---- Debian's paho.mqtt.c-examples: paho_c_sub and paho_c_pub (libpaho-mqtt3as) ----

/// Panics naming scripts/test-deps.sh unless `program` can be started.
fn require_example(program: &str) {
    if let Err(e) = std::process::Command::new(program)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        missing(
            "the Paho C example programs (paho.mqtt.c-examples)",
            &format!("cannot run `{program}`: {e}"),
        );
    }
}

/// The seed's scenario with the packaged Paho C tools, which use the asynchronous library:
/// paho_c_sub on sensors/# at QoS 1 with a retained QoS 1 will, paho_c_pub publishing a
/// reading at QoS 1 (it exits once PUBACK came), the reading printed by paho_c_sub, and
/// its will when it is killed.
async fn examples_scenario(version: Mqtt) {
    let client = match version {
        Mqtt::V311 => "paho_c_sub/paho_c_pub 3.1.1",
        Mqtt::V5 => "paho_c_sub/paho_c_pub 5",
    };
    require_example("paho_c_sub");
    require_example("paho_c_pub");
    let broker = TestBroker::start().await;
    let mut wills = will_watcher(&broker).await;
    let started = Instant::now();
    let common = |rest: &[&str]| -> Vec<String> {
        let port = broker.port().to_string();
        let v = if version == Mqtt::V5 { "5" } else { "311" };
        [
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            v,
            "-u",
            "guest",
            "-P",
            "guest",
        ]
        .iter()
        .chain(rest)
        .map(|s| (*s).to_owned())
        .collect()
    };

    let before = broker.broker().router.len();
    let will_args = [
        "--will-topic",
        "clients/paho-c-sub/status",
        "--will-payload",
        "offline",
        "--will-qos",
        "1",
        // Paho C 1.3's option parser takes a value after --will-retain (and ignores it).
        "--will-retain",
        "1",
    ];
    let sub_args = common(
        &[
            &["-i", "paho-c-sub", "-k", "60", "-q", "1", "-t", "sensors/#"][..],
            &will_args,
        ]
        .concat(),
    );
    let mut sub = LineProcess::spawn(Path::new("paho_c_sub"), &sub_args, &[]);
    // paho_c_sub says nothing on SUBACK: wait for its subscription in midge's router.
    while broker.broker().router.len() == before {
        if Instant::now() > started + TIMEOUT {
            sub.fail("did not subscribe in time").await;
        }
        // Polling the router: nothing tells the test when the subscription is made.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let reading = format!(
        r#"{{"value":22.5,"unit":"celsius","timestamp":{}}}"#,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()
    );
    let pub_args = common(&[
        "-i",
        "paho-c-pub",
        "-q",
        "1",
        "-t",
        "sensors/temperature/room1",
        "-m",
        &reading,
    ]);
    let out = run("paho_c_pub", &pub_args, TIMEOUT).await;
    assert!(
        out.status.success(),
        "{client}: paho_c_pub failed ({}):\n{}{}",
        out.status,
        out.stdout,
        out.stderr
    );

    // With a wildcard filter paho_c_sub prints "<payload length> <topic>\t<payload>".
    let expected = format!("{} sensors/temperature/room1\t{reading}", reading.len());
    sub.expect_line(&expected, Instant::now() + TIMEOUT).await;

    assert_no_will_yet(&broker, &mut wills).await;
    assert_will_on_kill(&broker, &mut wills, sub, "clients/paho-c-sub/status").await;
    eprintln!("{client} seed scenario took {:?}", started.elapsed());
    broker.shutdown().await;
}

#[tokio::test]
async fn pahoc_examples_v311_sub_gets_qos1_reading_on_sensors_and_its_will_fires_when_killed() {
    examples_scenario(Mqtt::V311).await;
}

#[tokio::test]
async fn pahoc_examples_v5_sub_gets_qos1_reading_on_sensors_and_its_will_fires_when_killed() {
    examples_scenario(Mqtt::V5).await;
}
