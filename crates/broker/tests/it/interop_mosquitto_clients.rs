//! mosquitto_pub and mosquitto_sub (Debian's mosquitto-clients) against midge: MQTT 3.1,
//! 3.1.1 and 5 at QoS 2, retained messages, v5 properties set with `-D`, and `$SYS`.

use std::time::Duration;

use crate::harness::{TIMEOUT, TestBroker};
use crate::interop_util::{Running, Tool, require, run};

/// mosquitto_sub's `-F` format for one received message: topic|qos|retain|payload.
const FORMAT: &str = "%t|%q|%r|%p";

fn args(broker: &TestBroker, rest: &[&str]) -> Vec<String> {
    ["-h", "127.0.0.1", "-p", &broker.port().to_string()]
        .iter()
        .chain(rest)
        .map(|s| (*s).to_owned())
        .collect()
}

/// Starts mosquitto_sub, and returns once its subscription is in midge's router, so that
/// what is published next reaches it.
async fn subscribe(broker: &TestBroker, rest: &[&str]) -> Running {
    require(Tool::MosquittoClients);
    let before = broker.broker().router.len();
    let sub = Running::spawn("mosquitto_sub", &args(broker, rest));
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while broker.broker().router.len() == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "mosquitto_sub {rest:?} did not subscribe within {TIMEOUT:?}"
        );
        // Polling the router: mosquitto_sub tells nobody when its SUBACK arrived.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sub
}

async fn publish(broker: &TestBroker, rest: &[&str]) {
    require(Tool::MosquittoClients);
    let out = run("mosquitto_pub", &args(broker, rest), TIMEOUT).await;
    assert!(
        out.status.success(),
        "mosquitto_pub {rest:?} failed ({}): {}",
        out.status,
        out.stderr
    );
}

/// Waits for mosquitto_sub (run with `-C`) to exit and returns its output lines.
async fn received(sub: Running) -> Vec<String> {
    let out = sub.finish(TIMEOUT * 2).await;
    assert!(
        out.status.success(),
        "mosquitto_sub failed ({}): {}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout.lines().map(str::to_owned).collect()
}

async fn qos2_round_trip(version: &str) {
    let broker = TestBroker::start().await;
    let topic = format!("interop/mosquitto/v{version}");
    let sub = subscribe(
        &broker,
        &[
            "-V", version, "-q", "2", "-t", &topic, "-C", "2", "-F", FORMAT,
        ],
    )
    .await;
    for payload in ["first", "second"] {
        publish(
            &broker,
            &["-V", version, "-q", "2", "-t", &topic, "-m", payload],
        )
        .await;
    }
    assert_eq!(
        received(sub).await,
        [format!("{topic}|2|0|first"), format!("{topic}|2|0|second")],
        "MQTT {version}: QoS 2 both ways, in order"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn mosquitto_clients_v31_qos2_round_trip() {
    qos2_round_trip("31").await;
}

#[tokio::test]
async fn mosquitto_clients_v311_qos2_round_trip() {
    qos2_round_trip("311").await;
}

#[tokio::test]
async fn mosquitto_clients_v5_qos2_round_trip() {
    qos2_round_trip("5").await;
}

#[tokio::test]
async fn mosquitto_pub_retained_message_reaches_later_mosquitto_sub_of_each_version() {
    require(Tool::MosquittoClients);
    let broker = TestBroker::start().await;
    let topic = "interop/mosquitto/retained";
    publish(
        &broker,
        &["-V", "311", "-q", "1", "-r", "-t", topic, "-m", "kept"],
    )
    .await;
    for version in ["31", "311", "5"] {
        let sub = Running::spawn(
            "mosquitto_sub",
            &args(
                &broker,
                &[
                    "-V", version, "-q", "1", "-t", topic, "-C", "1", "-F", FORMAT,
                ],
            ),
        );
        assert_eq!(
            received(sub).await,
            [format!("{topic}|1|1|kept")],
            "MQTT {version}: the retained message, retain flag set"
        );
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn mosquitto_pub_v5_user_properties_and_expiry_reach_mosquitto_sub() {
    let broker = TestBroker::start().await;
    let topic = "interop/mosquitto/properties";
    let sub = subscribe(
        &broker,
        &[
            "-V",
            "5",
            "-q",
            "1",
            "-t",
            topic,
            "-C",
            "1",
            "-F",
            "%t|%q|%P|%E|%C|%R|%p",
        ],
    )
    .await;
    publish(
        &broker,
        &[
            "-V",
            "5",
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            "with properties",
            "-D",
            "publish",
            "user-property",
            "colour",
            "blue",
            "-D",
            "publish",
            "user-property",
            "colour",
            "green",
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
            "interop/reply",
        ],
    )
    .await;
    let lines = received(sub).await;
    let [line] = &lines[..] else {
        panic!("expected one message, got {lines:?}");
    };
    let fields: Vec<&str> = line.split('|').collect();
    let [
        topic_got,
        qos,
        users,
        expiry,
        content_type,
        response_topic,
        payload,
    ] = fields[..]
    else {
        panic!("unexpected mosquitto_sub output {line:?}");
    };
    assert_eq!((topic_got, qos, payload), (topic, "1", "with properties"));
    assert_eq!(
        users, "colour:blue colour:green",
        "user properties in order"
    );
    let expiry: u32 = expiry.parse().expect("message expiry interval printed");
    assert!((59..=60).contains(&expiry), "remaining expiry {expiry}");
    assert_eq!(
        (content_type, response_topic),
        ("text/plain", "interop/reply")
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn mosquitto_sub_reads_sys_topics_with_mosquitto_names() {
    require(Tool::MosquittoClients);
    let broker = TestBroker::start_with(|c| c.sys.interval_secs = 1).await;
    // $SYS values are retained: a subscriber gets one of each at once. From the second
    // update on (the load averages begin there) the set of topics stays the same.
    broker
        .eventually("the second $SYS update", |b| {
            !b.retained
                .matching(
                    "$SYS/broker/load/sockets/15min",
                    midge_broker::model::now_millis(),
                )
                .is_empty()
        })
        .await;
    let expected = broker
        .broker()
        .retained
        .matching("$SYS/#", midge_broker::model::now_millis())
        .len()
        .to_string();
    let sub = Running::spawn(
        "mosquitto_sub",
        &args(
            &broker,
            &["-V", "311", "-t", "$SYS/#", "-C", &expected, "-v"],
        ),
    );
    let lines = received(sub).await;
    let value = |topic: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(topic)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{topic} missing from {lines:#?}"))
            .to_owned()
    };
    assert!(value("$SYS/broker/version").starts_with("midge version "));
    assert!(value("$SYS/broker/uptime").ends_with(" seconds"));
    for topic in [
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
        "$SYS/broker/bytes/sent",
        "$SYS/broker/subscriptions/count",
        "$SYS/broker/retained messages/count",
    ] {
        let v = value(topic);
        assert!(v.parse::<u64>().is_ok(), "{topic} = {v:?} is not a count");
    }
    broker.shutdown().await;
}
