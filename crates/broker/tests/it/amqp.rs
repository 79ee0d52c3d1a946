//! AMQP 0-9-1 listeners: the seeds' RabbitMQ MQTT <-> AMQP examples with pika and paho
//! (tests/interop/python/amqp_seed.py), and raw bytes for what bad input gets. The raw
//! frames here are written and read by hand, not with midge-amqp-proto, so a symmetric
//! codec bug cannot pass unnoticed.

use std::net::SocketAddr;

use midge_broker::config::{ListenerConfig, ListenerProtocol};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::harness::{TIMEOUT, TestBroker, V4Packet, qos4};
use crate::interop_util::{Tool, repo_root, require, run_json};

/// A broker with its MQTT listener first and an AMQP listener second.
async fn start() -> (TestBroker, SocketAddr) {
    let broker = TestBroker::start_with(|config| {
        config.listeners.push(ListenerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            protocol: ListenerProtocol::Amqp,
            ..ListenerConfig::default()
        });
    })
    .await;
    let amqp = broker.server.as_ref().unwrap().local_addrs()[1];
    (broker, amqp)
}

fn require_pika() {
    require(Tool::Paho);
    let out = std::process::Command::new("python3")
        .args(["-c", "import pika"])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "pika is needed by this test: pip install -r tests/interop/python/requirements.txt"
    );
}

#[tokio::test]
async fn pika_and_paho_run_the_seed_examples() {
    require_pika();
    let (broker, amqp) = start().await;
    let script = repo_root().join("tests/interop/python/amqp_seed.py");
    let args = vec![
        script.display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        broker.port().to_string(),
        "--amqp-port".into(),
        amqp.port().to_string(),
    ];
    let r: Value = run_json("python3", &args).await;

    // MQTT -> AMQP: QoS 0 is delivery mode 1, QoS 1 is 2, with RabbitMQ's header.
    let m = &r["mqtt_to_amqp"];
    assert_eq!(m[0]["exchange"], "amq.topic");
    assert_eq!(m[0]["routing_key"], "hello.mqtt");
    assert_eq!(m[0]["body"], "hello mqtt");
    assert_eq!(m[0]["delivery_mode"], 1);
    assert_eq!(m[0]["mqtt_qos"], 0);
    assert_eq!(m[1]["body"], "hello mqtt qos1");
    assert_eq!(m[1]["delivery_mode"], 2);
    assert_eq!(m[1]["mqtt_qos"], 1);

    // AMQP -> MQTT with the properties carried across.
    let a = &r["amqp_to_mqtt"];
    assert_eq!(a["topic"], "hello/amqp");
    assert_eq!(a["payload"], "hello amqp");
    assert_eq!(a["qos"], 1);
    assert_eq!(a["content_type"], "text/plain");
    assert_eq!(a["correlation_data"], "req-1");
    assert_eq!(a["response_topic"], "replies/seed");
    assert_eq!(
        a["user_properties"],
        serde_json::json!([["origin", "pika"]])
    );

    // The mapping table: home.*.light and sensors.# as MQTT filters; home/a/b/light does
    // not match home.*.light; sensors matches sensors.# (as # matches zero words).
    assert_eq!(
        r["mapping_to_amqp"],
        serde_json::json!(["sensors.temp.room1", "home.kitchen.light", "sensors"])
    );
    assert_eq!(r["mapping_left"], 0);
    assert_eq!(r["mapping_to_mqtt"], "sensors/temp/room1");

    assert_eq!(r["unroutable"], "returned");
    assert_eq!(r["passive_unknown"][0], 404);
    assert!(
        r["passive_unknown"][1]
            .as_str()
            .unwrap()
            .contains("no-such-exchange")
    );
    assert_eq!(r["fanout"][0], 540);
    assert_eq!(r["other_channel_open"], true);

    // Prefetch 2 held the third job back; closing the channel put the two back first.
    assert_eq!(r["prefetched"], serde_json::json!(["job0", "job1"]));
    assert_eq!(
        r["redelivered"],
        serde_json::json!([["job0", true], ["job1", true], ["job2", false]])
    );
    assert_eq!(r["nack_requeued"], serde_json::json!(["n", true]));
    assert_eq!(r["after_reject"], 0);
    assert_eq!(r["purged"], 0);
    assert_eq!(r["deleted"], 0);
    assert_eq!(r["after_multiple_ack"], 0);
    assert_eq!(r["auto_deleted"], true);
    assert_eq!(r["exclusive_deleted"], true);
    assert_eq!(r["shared_a"], serde_json::json!(["s1"]));
    assert_eq!(
        r["shared_b"],
        serde_json::json!([["s2", false], ["s3", false], ["s1", true]])
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn queue_arguments_follow_rabbitmq_semantics() {
    require_pika();
    let (broker, amqp) = start().await;
    let script = repo_root().join("tests/interop/python/amqp_args.py");
    let args = vec![
        script.display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        broker.port().to_string(),
        "--amqp-port".into(),
        amqp.port().to_string(),
    ];
    let r: Value = run_json("python3", &args).await;
    // TTLs: the queue's and the message's own; the expired heads are not counted.
    assert_eq!(r["ttl_count"], 2, "{r}");
    assert_eq!(r["ttl"], serde_json::json!(["fresh", "long-expiration"]));
    assert_eq!(r["drop_head"], serde_json::json!(["b", "c"]));
    assert_eq!(r["reject_publish"], serde_json::json!(["a", "b"]));
    assert_eq!(r["reject_confirm"], "nacked", "{r}");
    assert_eq!(r["reject_confirm_kept"], serde_json::json!(["kept"]));
    assert_eq!(r["max_bytes"], serde_json::json!(["bbbb", "cccc"]));
    assert_eq!(r["unacked_len"], serde_json::json!(["first", 1]));
    assert_eq!(r["expired_queue_gone"], true);
    assert_eq!(r["consumed_queue_kept"], true);
    for (key, arg) in [
        ("quorum", "x-queue-type"),
        ("stream", "x-queue-type"),
        ("dlx", "x-dead-letter-exchange"),
        ("negative_ttl", "x-message-ttl"),
    ] {
        assert_eq!(r[key][0], 406, "{key}: {r}");
        let text = r[key][1].as_str().unwrap();
        assert!(
            text.starts_with("PRECONDITION_FAILED - invalid arg '") && text.contains(arg),
            "{key}: {text}"
        );
    }
    assert!(
        r["quorum"][1]
            .as_str()
            .unwrap()
            .contains("'quorum' is not supported")
    );
    assert_eq!(r["lazy"], Value::Null);
    assert_eq!(r["same_again"], Value::Null);
    assert_eq!(r["other_ttl"][0], 406);
    assert_eq!(
        r["other_ttl"][1],
        "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'ttl' in vhost '/': received '1100' but current is '1000'"
    );
    assert_eq!(r["passive_ignores_args"], Value::Null);
    broker.shutdown().await;
}

/// `[amqp] mqtt_dots_as_separators`: on, an MQTT subscription to `hello.amqp` is one to
/// `hello/amqp` (RabbitMQ's behaviour); off, `.` is an ordinary character.
#[tokio::test]
async fn mqtt_dots_as_separators_makes_a_dot_a_level_separator_only_when_on() {
    for on in [true, false] {
        let broker = TestBroker::start_with(|c| c.amqp.mqtt_dots_as_separators = on).await;
        let (mut sub, _) = broker.raw_v311("dots-sub", true).await;
        sub.subscribe_v4(1, "hello.amqp", 0).await;
        let (mut publisher, _) = broker.raw_v311("dots-pub", true).await;
        for topic in ["hello/amqp", "hello.amqp"] {
            let publish = rumqttc::Publish::new(topic, qos4(0), topic.as_bytes().to_vec());
            publisher.send_v4(V4Packet::Publish(publish)).await;
        }
        // In order from one publisher: the first message the subscriber gets tells
        // whether hello/amqp matched hello.amqp. With the option on, both arrive under
        // the slash form, as RabbitMQ delivers them.
        let first = sub.recv_v4_publish().await;
        if on {
            assert_eq!(&first.payload[..], b"hello/amqp");
            assert_eq!(first.topic, "hello/amqp");
            let second = sub.recv_v4_publish().await;
            assert_eq!(&second.payload[..], b"hello.amqp");
            assert_eq!(second.topic, "hello/amqp");
        } else {
            assert_eq!(&first.payload[..], b"hello.amqp");
            assert_eq!(first.topic, "hello.amqp");
        }
        broker.shutdown().await;
    }
}

/// Seed 002's browser example: Paho JS in headless Chromium over the WebSocket listener
/// (path /ws), subscribed to `hello.amqp`, gets what amqplib publishes with routing key
/// `hello.amqp` (tests/interop/js/amqp_browser.mjs).
#[tokio::test]
async fn paho_js_in_chromium_receives_the_seed_amqplib_message_with_dots_as_separators() {
    require(Tool::MqttJs);
    let broker = TestBroker::start_with(|config| {
        config.amqp.mqtt_dots_as_separators = true;
        config.mqtt.connect_timeout_secs = 30;
        config.listeners.push(ListenerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            protocol: ListenerProtocol::Ws,
            ws_path: vec!["/ws".to_owned()],
            ..ListenerConfig::default()
        });
        config.listeners.push(ListenerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            protocol: ListenerProtocol::Amqp,
            ..ListenerConfig::default()
        });
    })
    .await;
    let addrs = broker.server.as_ref().unwrap().local_addrs().to_vec();
    let script = repo_root().join("tests/interop/js/amqp_browser.mjs");
    let args = vec![
        script.display().to_string(),
        addrs[1].port().to_string(),
        addrs[0].port().to_string(),
        addrs[2].port().to_string(),
    ];
    let r: Value = run_json("node", &args).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["fromAmqp"], true, "{r}");
    assert_eq!(r["fromMqtt"], true, "{r}");
    broker.shutdown().await;
}

// ---- raw bytes ----

const HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xCE);
    f
}

fn method(channel: u16, class: u16, id: u16, args: &[u8]) -> Vec<u8> {
    let mut p = class.to_be_bytes().to_vec();
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(args);
    frame(1, channel, &p)
}

fn short(s: &str) -> Vec<u8> {
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

/// Reads one frame: (type, channel, payload).
async fn read_frame(s: &mut TcpStream) -> (u8, u16, Vec<u8>) {
    let mut head = [0u8; 7];
    timeout(TIMEOUT, s.read_exact(&mut head))
        .await
        .expect("frame in time")
        .expect("frame");
    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
    let mut rest = vec![0u8; size + 1];
    timeout(TIMEOUT, s.read_exact(&mut rest))
        .await
        .expect("frame in time")
        .expect("frame");
    assert_eq!(rest[size], 0xCE, "frame end");
    rest.truncate(size);
    (head[0], u16::from_be_bytes([head[1], head[2]]), rest)
}

/// Reads frames until a method frame and returns (channel, class, method, args).
async fn read_method(s: &mut TcpStream) -> (u16, u16, u16, Vec<u8>) {
    loop {
        let (kind, channel, p) = read_frame(s).await;
        if kind == 1 {
            let class = u16::from_be_bytes([p[0], p[1]]);
            let id = u16::from_be_bytes([p[2], p[3]]);
            return (channel, class, id, p[4..].to_vec());
        }
    }
}

/// A close method's reply code and text.
fn close_reason(args: &[u8]) -> (u16, String) {
    let code = u16::from_be_bytes([args[0], args[1]]);
    let len = args[2] as usize;
    (
        code,
        String::from_utf8_lossy(&args[3..3 + len]).into_owned(),
    )
}

/// Header, start-ok (PLAIN guest/guest), tune-ok with frame-max 4096, open `vhost`.
async fn handshake(addr: SocketAddr, vhost: &str) -> TcpStream {
    handshake_with_heartbeat(addr, vhost, 0).await
}

async fn handshake_with_heartbeat(addr: SocketAddr, vhost: &str, heartbeat: u16) -> TcpStream {
    handshake_as(addr, vhost, heartbeat, "guest", "guest").await
}

async fn handshake_as(
    addr: SocketAddr,
    vhost: &str,
    heartbeat: u16,
    user: &str,
    password: &str,
) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(HEADER).await.unwrap();
    let (_, class, id, _) = read_method(&mut s).await;
    assert_eq!((class, id), (10, 10), "connection.start");
    let mut start_ok = vec![0, 0, 0, 0];
    start_ok.extend(short("PLAIN"));
    let response = format!("\0{user}\0{password}");
    start_ok.extend_from_slice(&(response.len() as u32).to_be_bytes());
    start_ok.extend_from_slice(response.as_bytes());
    start_ok.extend(short("en_US"));
    s.write_all(&method(0, 10, 11, &start_ok)).await.unwrap();
    let (_, class, id, tune) = read_method(&mut s).await;
    assert_eq!((class, id), (10, 30), "connection.tune");
    assert_eq!(&tune[2..6], &131072u32.to_be_bytes(), "frame-max proposed");
    let mut tune_ok = vec![0, 0, 0, 0, 0x10, 0];
    tune_ok.extend_from_slice(&heartbeat.to_be_bytes());
    s.write_all(&method(0, 10, 31, &tune_ok)).await.unwrap();
    let mut open = short(vhost);
    open.extend(short(""));
    open.push(0);
    s.write_all(&method(0, 10, 40, &open)).await.unwrap();
    s
}

async fn expect_connection_close(s: &mut TcpStream) -> (u16, String) {
    let (channel, class, id, args) = read_method(s).await;
    assert_eq!((channel, class, id), (0, 10, 50), "connection.close");
    close_reason(&args)
}

#[tokio::test]
async fn another_protocol_header_gets_the_0_9_1_header_back_and_the_socket_closed() {
    let (broker, amqp) = start().await;
    for wrong in [
        &b"AMQP\x00\x01\x00\x00"[..],
        b"AMQP\x01\x01\x00\x0a",
        b"\x10\x0c\x00\x04MQTT",
    ] {
        let mut s = TcpStream::connect(amqp).await.unwrap();
        s.write_all(wrong).await.unwrap();
        let mut back = Vec::new();
        timeout(TIMEOUT, s.read_to_end(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, HEADER, "answer to {wrong:?}");
    }
    assert!(broker.stats().protocol_errors >= 3);
    broker.shutdown().await;
}

#[tokio::test]
async fn only_vhost_slash_is_served() {
    let (broker, amqp) = start().await;
    let mut s = handshake(amqp, "production").await;
    let (code, text) = expect_connection_close(&mut s).await;
    assert_eq!(code, 530);
    assert!(text.contains("vhost 'production'"), "{text}");
    let mut ok = handshake(amqp, "/").await;
    let (_, class, id, _) = read_method(&mut ok).await;
    assert_eq!((class, id), (10, 41), "connection.open-ok");
    broker.shutdown().await;
}

#[tokio::test]
async fn bad_frames_close_the_connection_with_their_reply_codes() {
    let (broker, amqp) = start().await;
    let open = async || {
        let mut s = handshake(amqp, "/").await;
        let (_, class, id, _) = read_method(&mut s).await;
        assert_eq!((class, id), (10, 41));
        s.write_all(&method(1, 20, 10, &short(""))).await.unwrap();
        let (channel, class, id, _) = read_method(&mut s).await;
        assert_eq!((channel, class, id), (1, 20, 11), "channel.open-ok");
        s
    };
    // A frame over the frame-max of 4096 the client agreed to.
    let mut s = open().await;
    s.write_all(&frame(3, 1, &vec![0u8; 5000])).await.unwrap();
    let (code, text) = expect_connection_close(&mut s).await;
    assert_eq!(code, 501, "{text}");
    assert!(text.contains("frame-max"), "{text}");
    // An unknown method.
    let mut s = open().await;
    s.write_all(&method(1, 60, 99, &[])).await.unwrap();
    let (code, text) = expect_connection_close(&mut s).await;
    assert_eq!(code, 540, "{text}");
    assert!(text.contains("60.99"), "{text}");
    // Arguments cut short (basic.ack with 2 of its 9 bytes).
    let mut s = open().await;
    s.write_all(&method(1, 60, 80, &[0, 0])).await.unwrap();
    let (code, _) = expect_connection_close(&mut s).await;
    assert_eq!(code, 502);
    // A body frame with no basic.publish before it.
    let mut s = open().await;
    s.write_all(&frame(3, 1, b"stray")).await.unwrap();
    let (code, text) = expect_connection_close(&mut s).await;
    assert_eq!(code, 505, "{text}");
    // A bad frame end octet.
    let mut s = open().await;
    let mut bad = frame(8, 0, &[]);
    *bad.last_mut().unwrap() = 0;
    s.write_all(&bad).await.unwrap();
    let (code, _) = expect_connection_close(&mut s).await;
    assert_eq!(code, 501);
    // The broker still serves others.
    let mut fine = open().await;
    fine.write_all(&method(0, 10, 50, &[0, 200, 0, 0, 0, 0, 0]))
        .await
        .unwrap();
    let (_, class, id, _) = read_method(&mut fine).await;
    assert_eq!((class, id), (10, 51), "connection.close-ok");
    broker.shutdown().await;
}

#[tokio::test]
async fn a_bad_password_is_refused_with_access_refused() {
    let dir = tempfile::tempdir().unwrap();
    let passwords = dir.path().join("passwd");
    let hash = midge_broker::auth::hash_password(b"right").unwrap();
    std::fs::write(&passwords, format!("alice:{hash}\n")).unwrap();
    let broker = TestBroker::start_with(|config| {
        config.auth.password_file = Some(passwords.clone());
        config.auth.allow_anonymous = Some(false);
        config.listeners.push(ListenerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            protocol: ListenerProtocol::Amqp,
            ..ListenerConfig::default()
        });
    })
    .await;
    let amqp = broker.server.as_ref().unwrap().local_addrs()[1];
    // guest/guest: not in the file, and anonymous clients are refused here.
    let mut s = TcpStream::connect(amqp).await.unwrap();
    s.write_all(HEADER).await.unwrap();
    read_method(&mut s).await;
    let mut start_ok = vec![0, 0, 0, 0];
    start_ok.extend(short("PLAIN"));
    start_ok.extend_from_slice(&12u32.to_be_bytes());
    start_ok.extend_from_slice(b"\0guest\0guest");
    start_ok.extend(short("en_US"));
    s.write_all(&method(0, 10, 11, &start_ok)).await.unwrap();
    let (code, text) = expect_connection_close(&mut s).await;
    assert_eq!(code, 403);
    assert!(text.contains("PLAIN"), "{text}");
    broker.shutdown().await;
}

#[tokio::test]
async fn amqplib_publishes_the_seed_message_to_an_mqtt_subscriber_and_round_trips() {
    require(Tool::MqttJs);
    let module = repo_root().join("tests/interop/js/node_modules/amqplib/package.json");
    assert!(
        module.is_file(),
        "amqplib is needed: npm ci in tests/interop/js ({} is missing)",
        module.display()
    );
    let (broker, amqp) = start().await;
    let script = repo_root().join("tests/interop/js/amqp_seed.mjs");
    let args = vec![
        script.display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        broker.port().to_string(),
        "--amqp-port".into(),
        amqp.port().to_string(),
    ];
    let r: Value = run_json("node", &args).await;
    // The seed's publish has no delivery mode: QoS 0 on the MQTT side.
    assert_eq!(
        r["seed"],
        serde_json::json!({"topic": "hello/amqp", "payload": "hello amqp", "qos": 0})
    );
    assert_eq!(r["server_named"], true);
    assert_eq!(r["confirmed"], true);
    assert_eq!(
        r["round_trip"],
        serde_json::json!([
            {"key": "round.one", "body": "1", "redelivered": false},
            {"key": "round.two", "body": "2", "redelivered": false}
        ])
    );
    broker.shutdown().await;
}

/// queue.declare of `name` with no flags and no arguments.
fn declare(channel: u16, name: &str) -> Vec<u8> {
    let mut args = vec![0, 0];
    args.extend(short(name));
    args.extend_from_slice(&[0, 0, 0, 0, 0]);
    method(channel, 50, 10, &args)
}

fn bind(channel: u16, queue: &str, key: &str) -> Vec<u8> {
    let mut args = vec![0, 0];
    args.extend(short(queue));
    args.extend(short("amq.topic"));
    args.extend(short(key));
    args.extend_from_slice(&[0, 0, 0, 0, 0]);
    method(channel, 50, 20, &args)
}

#[tokio::test]
async fn acls_apply_through_the_mapped_topics_binding_needs_read_publishing_write() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    // Without a password file the PLAIN user name is the name ACLs see, as for MQTT.
    std::fs::write(&acl, "user guest\ntopic readwrite allowed/#\n").unwrap();
    let broker = TestBroker::start_with(|config| {
        config.auth.acl_file = Some(acl.clone());
        config.listeners.push(ListenerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            protocol: ListenerProtocol::Amqp,
            ..ListenerConfig::default()
        });
    })
    .await;
    let amqp = broker.server.as_ref().unwrap().local_addrs()[1];
    let mut s = handshake(amqp, "/").await;
    assert_eq!(read_method(&mut s).await.1, 10, "open-ok");
    for channel in 1..=3 {
        s.write_all(&method(channel, 20, 10, &short("")))
            .await
            .unwrap();
        assert_eq!(
            read_method(&mut s).await,
            (channel, 20, 11, vec![0, 0, 0, 0])
        );
    }
    s.write_all(&declare(1, "q")).await.unwrap();
    let (channel, class, id, _) = read_method(&mut s).await;
    assert_eq!((channel, class, id), (1, 50, 11), "queue.declare-ok");
    // Binding outside the readable topics: the channel is closed with 403.
    s.write_all(&bind(1, "q", "secret.x")).await.unwrap();
    let (channel, class, id, args) = read_method(&mut s).await;
    assert_eq!((channel, class, id), (1, 20, 40), "channel.close");
    let (code, text) = close_reason(&args);
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("secret/x"), "{text}");
    // Publishing outside the writable topics: 403 on that channel too.
    let mut publish = vec![0, 0];
    publish.extend(short("amq.topic"));
    publish.extend(short("secret.y"));
    publish.push(0);
    s.write_all(&method(2, 60, 40, &publish)).await.unwrap();
    let mut header = vec![0, 60, 0, 0];
    header.extend_from_slice(&1u64.to_be_bytes());
    header.extend_from_slice(&[0, 0]);
    s.write_all(&frame(2, 2, &header)).await.unwrap();
    s.write_all(&frame(3, 2, b"x")).await.unwrap();
    let (channel, class, id, args) = read_method(&mut s).await;
    assert_eq!((channel, class, id), (2, 20, 40), "channel.close");
    assert_eq!(close_reason(&args).0, 403);
    // Within the ACL, channel 3 binds; the other channels' errors did not touch it.
    s.write_all(&bind(3, "q", "allowed.#")).await.unwrap();
    let (channel, class, id, _) = read_method(&mut s).await;
    assert_eq!((channel, class, id), (3, 50, 21), "queue.bind-ok");
    assert_eq!(broker.stats().publish_denied, 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn heartbeats_are_sent_and_a_silent_client_is_closed() {
    let (broker, amqp) = start().await;
    // Heartbeat 1 s: midge beats every half second, and closes after 2 s of silence.
    let mut s = handshake_with_heartbeat(amqp, "/", 1).await;
    let (_, class, id, _) = read_method(&mut s).await;
    assert_eq!((class, id), (10, 41));
    let (kind, channel, payload) = read_frame(&mut s).await;
    assert_eq!(
        (kind, channel, payload.len()),
        (8, 0, 0),
        "a heartbeat frame"
    );
    // Silence from here on: connection.close 320, then the socket closes.
    let started = tokio::time::Instant::now();
    let (code, text) = expect_connection_close(&mut s).await;
    assert_eq!(code, 320, "{text}");
    assert!(text.contains("heartbeat"), "{text}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(1000));
    broker.shutdown().await;
}

#[tokio::test]
async fn amqps_serves_amqp_through_the_listener_tls_keys() {
    use crate::pki::{ALL_VERSIONS, Pki, client_config, tls_connect};
    let pki = Pki::new("amqps");
    let server = pki.server("127.0.0.1");
    let listener = ListenerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        protocol: ListenerProtocol::Amqp,
        tls: Some(crate::tls::tls_settings(&server)),
        ..ListenerConfig::default()
    };
    let (server, ports) = crate::tls::start(vec![listener], |_| {}).await;
    let mut s = tls_connect(ports[0], client_config(&pki.ca_path, None, ALL_VERSIONS))
        .await
        .expect("TLS handshake");
    s.write_all(HEADER).await.unwrap();
    let mut head = [0u8; 11];
    timeout(TIMEOUT, s.read_exact(&mut head))
        .await
        .expect("in time")
        .expect("connection.start");
    // A method frame on channel 0 whose class and method are 10, 10: connection.start.
    assert_eq!(
        (head[0], &head[1..3], &head[7..11]),
        (1, &[0, 0][..], &[0, 10, 0, 10][..])
    );
    server.shutdown().await;
}

/// Visibility: an AMQP queue shows in `/api/v1/queues` with RabbitMQ's `list_queues`
/// columns and in the sessions list, an AMQP connection in the clients list, both with
/// protocol "amqp", and both count in `$SYS` and `/api/v1/stats`.
#[tokio::test]
async fn queues_and_connections_show_in_the_admin_api_and_sys() {
    use crate::admin_http::get;
    let (broker, amqp) = start().await;
    let mut s = handshake(amqp, "/").await;
    assert_eq!(read_method(&mut s).await.1, 10, "open-ok");
    s.write_all(&method(1, 20, 10, &short(""))).await.unwrap();
    assert_eq!(read_method(&mut s).await.2, 11, "channel.open-ok");
    s.write_all(&declare(1, "visible")).await.unwrap();
    assert_eq!(read_method(&mut s).await.2, 11, "queue.declare-ok");
    s.write_all(&bind(1, "visible", "sensors.#")).await.unwrap();
    assert_eq!(read_method(&mut s).await.2, 21, "queue.bind-ok");
    let (mut publisher, _) = broker.raw_v311("visible-pub", true).await;
    for i in 0..3u8 {
        let publish = rumqttc::Publish::new(format!("sensors/{i}"), qos4(0), vec![i]);
        publisher.send_v4(V4Packet::Publish(publish)).await;
    }
    publisher.ping_fence().await;
    // Prefetch 1, one consumer: one message unacknowledged, two ready.
    s.write_all(&method(1, 60, 10, &[0, 0, 0, 0, 0, 1, 0]))
        .await
        .unwrap();
    assert_eq!(read_method(&mut s).await.2, 11, "basic.qos-ok");
    let mut consume = vec![0, 0];
    consume.extend(short("visible"));
    consume.extend(short("watcher"));
    consume.extend_from_slice(&[0, 0, 0, 0, 0]);
    s.write_all(&method(1, 60, 20, &consume)).await.unwrap();
    assert_eq!(read_method(&mut s).await.2, 21, "basic.consume-ok");
    assert_eq!(read_method(&mut s).await.2, 60, "basic.deliver");

    let admin = broker.admin();
    let queues = get(admin, "/api/v1/queues", None).await.json();
    let q = &queues["items"][0];
    assert_eq!(q["name"], "visible", "{queues}");
    assert_eq!(q["protocol"], "amqp");
    assert_eq!(q["messages"], 3, "{q}");
    assert_eq!(q["messages_ready"], 2, "{q}");
    assert_eq!(q["messages_unacknowledged"], 1, "{q}");
    assert_eq!(q["consumers"], 1, "{q}");
    assert_eq!(q["bindings"], serde_json::json!(["sensors.#"]));
    assert_eq!(q["durable"], false);

    let sessions = get(admin, "/api/v1/sessions", None).await.json();
    let items = sessions["items"].as_array().unwrap();
    let queue = items
        .iter()
        .find(|i| i["client_id"] == "amqp-queue:visible")
        .unwrap_or_else(|| panic!("queue not among the sessions: {sessions}"));
    assert_eq!(queue["protocol"], "amqp");
    assert_eq!(queue["messages_ready"], 2);
    assert!(
        items
            .iter()
            .any(|i| i["client_id"] == "visible-pub" && i["protocol"] == "mqtt"),
        "{sessions}"
    );

    let clients = get(admin, "/api/v1/clients", None).await.json();
    let amqp_client = clients["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["protocol"] == "amqp")
        .unwrap_or_else(|| panic!("no AMQP client listed: {clients}"));
    assert!(
        amqp_client["client_id"]
            .as_str()
            .unwrap()
            .starts_with("amqp-")
    );
    assert_eq!(amqp_client["connection"]["protocol"], "amqp");
    assert_eq!(amqp_client["connection"]["username"], "guest");
    assert_eq!(amqp_client["connection"]["channels"], 1);
    assert!(
        amqp_client["connection"]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    // Paging by client id covers both kinds: one at a time, every entry once.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let path = if after.is_empty() {
            "/api/v1/clients?limit=1".to_owned()
        } else {
            format!("/api/v1/clients?limit=1&after={after}")
        };
        let page = get(admin, &path, None).await.json();
        for item in page["items"].as_array().unwrap() {
            seen.push(item["client_id"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.contains(&"visible-pub".to_owned()), "{seen:?}");

    let stats = get(admin, "/api/v1/stats", None).await.json();
    assert_eq!(
        stats["amqp"],
        serde_json::json!({"connections": 1, "queues": 1})
    );
    assert_eq!(stats["connections"]["connected"], 2);
    assert_eq!(stats["sessions"]["online"], 1, "{stats}");
    let sys: std::collections::HashMap<&str, String> = midge_broker::sys::values(broker.broker())
        .into_iter()
        .collect();
    assert_eq!(sys["$SYS/broker/amqp/connections"], "1");
    assert_eq!(sys["$SYS/broker/amqp/queues"], "1");
    assert_eq!(sys["$SYS/broker/clients/connected"], "2");
    assert_eq!(sys["$SYS/broker/clients/disconnected"], "0");
    broker.shutdown().await;
}

/// Logs in as `user`, opens channel 1 and checks both went through.
async fn open_as(addr: SocketAddr, user: &str, password: &str) -> TcpStream {
    let mut s = handshake_as(addr, "/", 0, user, password).await;
    assert_eq!(
        read_method(&mut s).await.1,
        10,
        "{user}: connection.open-ok"
    );
    s.write_all(&method(1, 20, 10, &short(""))).await.unwrap();
    assert_eq!(read_method(&mut s).await.2, 11, "{user}: channel.open-ok");
    s
}

/// Dynamic security's disableClient and deleteClient close the AMQP connections of that
/// user (320 CONNECTION_FORCED), as they close its MQTT connections; other users' stay.
#[tokio::test]
async fn dynsec_disabling_or_deleting_a_user_closes_its_amqp_connections() {
    use crate::access_support::{TempDir, broker_with};
    use crate::admin_http::request;
    use midge_broker::config::DynsecConfig;

    let dir = TempDir::new("amqp-dynsec");
    let file =
        crate::dynsec::dynsec_file(&dir, &[("alice", "apw"), ("bob", "bpw"), ("carol", "cpw")]);
    let admin_hash = midge_broker::auth::hash_password(b"secret").unwrap();
    let users = dir.write("admin-users", &format!("root:{admin_hash}\n"));
    let broker = broker_with(|c| {
        c.auth.dynsec = Some(DynsecConfig {
            file,
            iterations: 1000,
        });
        c.admin.password_file = Some(users);
        c.listeners.push(ListenerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            protocol: ListenerProtocol::Amqp,
            ..ListenerConfig::default()
        });
    })
    .await;
    let amqp = broker.server.as_ref().unwrap().local_addrs()[1];
    let command = |body: &'static str| {
        let admin = broker.admin();
        async move {
            let answer = request(
                admin,
                "POST",
                "/api/v1/dynsec",
                Some(("root", "secret")),
                Some(body.as_bytes()),
            )
            .await;
            assert_eq!(answer.status, 200, "{}", answer.text());
            assert!(
                answer.json()["responses"][0].get("error").is_none(),
                "{}",
                answer.text()
            );
        }
    };
    let mut alice = open_as(amqp, "alice", "apw").await;
    let mut bob = open_as(amqp, "bob", "bpw").await;
    let mut carol = open_as(amqp, "carol", "cpw").await;

    command(r#"{"commands":[{"command":"disableClient","username":"alice"}]}"#).await;
    let (code, text) = expect_connection_close(&mut alice).await;
    assert_eq!(code, 320, "{text}");
    assert!(text.contains("alice"), "{text}");
    command(r#"{"commands":[{"command":"deleteClient","username":"bob"}]}"#).await;
    let (code, text) = expect_connection_close(&mut bob).await;
    assert_eq!(code, 320, "{text}");
    assert!(text.contains("bob"), "{text}");
    // carol was woken twice and stays: her channel still answers.
    s_declare_ok(&mut carol, "carols").await;
    broker.shutdown().await;
}

async fn s_declare_ok(s: &mut TcpStream, queue: &str) {
    s.write_all(&declare(1, queue)).await.unwrap();
    assert_eq!(
        read_method(s).await,
        (1, 50, 11, {
            let mut ok = short(queue);
            ok.extend_from_slice(&[0; 8]);
            ok
        }),
        "queue.declare-ok"
    );
}

/// An MQTT QoS 0 publish whose payload is its topic.
async fn publish(publisher: &mut crate::harness::Raw, topic: &str) {
    let packet = rumqttc::Publish::new(topic, qos4(0), topic.as_bytes().to_vec());
    publisher.send_v4(V4Packet::Publish(packet)).await;
}

/// basic.get of `queue` with no-ack until a message comes; its routing key.
async fn get_routing_key(s: &mut TcpStream, queue: &str) -> String {
    timeout(TIMEOUT, async {
        loop {
            let mut get = vec![0, 0];
            get.extend(short(queue));
            get.push(1);
            s.write_all(&method(1, 60, 70, &get)).await.unwrap();
            let (_, class, id, args) = read_method(s).await;
            match (class, id) {
                (60, 72) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                (60, 71) => {
                    // delivery-tag (8), redelivered (1), exchange, routing key.
                    let exchange = args[9] as usize;
                    let at = 10 + exchange;
                    let len = args[at] as usize;
                    return String::from_utf8_lossy(&args[at + 1..at + 1 + len]).into_owned();
                }
                other => panic!("basic.get answered with {other:?}"),
            }
        }
    })
    .await
    .expect("a message in time")
}

/// Issue 9, defect 7, for AMQP: a reload that takes away a read right removes the queue
/// bindings it granted, also of a queue whose binding connection is gone, and what they
/// brought that is still ready is not delivered.
#[tokio::test]
async fn an_acl_reload_removes_the_amqp_bindings_it_no_longer_allows() {
    use crate::access_support::TempDir;

    let dir = TempDir::new("amqp-acl-reload");
    // Leading topic lines: the anonymous MQTT publisher.
    let rules = "topic write #\nuser guest\ntopic read allowed/#\ntopic read revoked/#\n";
    let acl = dir.write("acl", rules);
    let broker = TestBroker::start_with(|config| {
        config.auth.acl_file = Some(acl);
        config.listeners.push(ListenerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            protocol: ListenerProtocol::Amqp,
            ..ListenerConfig::default()
        });
    })
    .await;
    let amqp = broker.server.as_ref().unwrap().local_addrs()[1];
    let mut binder = open_as(amqp, "guest", "guest").await;
    s_declare_ok(&mut binder, "kept").await;
    for key in ["allowed.#", "revoked.#"] {
        binder.write_all(&bind(1, "kept", key)).await.unwrap();
        assert_eq!(read_method(&mut binder).await.2, 21, "queue.bind-ok");
    }
    drop(binder);
    let (mut publisher, _) = broker.raw_v311("acl-pub", true).await;
    publish(&mut publisher, "revoked/1").await;
    publish(&mut publisher, "allowed/1").await;
    publisher.ping_fence().await;
    assert_eq!(broker.broker().router.len(), 2);

    dir.write("acl", &rules.replace("topic read revoked/#\n", ""));
    broker
        .server
        .as_ref()
        .unwrap()
        .reload()
        .await
        .expect("reload");
    timeout(TIMEOUT, async {
        while broker.broker().router.len() != 1 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the revoked binding was not removed in time");
    publish(&mut publisher, "revoked/2").await;
    publish(&mut publisher, "allowed/2").await;
    publisher.ping_fence().await;
    let mut reader = open_as(amqp, "guest", "guest").await;
    let mut keys = Vec::new();
    for _ in 0..2 {
        keys.push(get_routing_key(&mut reader, "kept").await);
    }
    assert_eq!(keys, ["allowed.1", "allowed.2"]);
    s_declare_ok(&mut reader, "kept").await;
    broker.shutdown().await;
}
