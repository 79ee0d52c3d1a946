//! Durable AMQP queues across a crash: the real `midge` binary with an AMQP listener is
//! killed with SIGKILL while a pika client holds an unacknowledged message, and started
//! again on the same store (tests/interop/python/amqp_durable.py drives both sides).

mod support;

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/python/amqp_durable.py")
}

fn require_pika() {
    let out = std::process::Command::new("python3")
        .args(["-c", "import pika, paho.mqtt"])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "pika and paho-mqtt are needed by this test: pip install -r tests/interop/python/requirements.txt"
    );
}

fn args(midge: &Midge, amqp_port: u16, phase: &str) -> Vec<String> {
    vec![
        script().display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        midge.port.to_string(),
        "--amqp-port".into(),
        amqp_port.to_string(),
        "--phase".into(),
        phase.into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_queues_bindings_and_persistent_messages_survive_sigkill() {
    require_pika();
    let dir = TestDir::new("amqp-durable");
    let mut midge = Midge::new(&dir, "sync");
    let amqp_port = free_port();
    midge.edit_config(|text| {
        format!("{text}\n[[listener]]\nbind = \"127.0.0.1:{amqp_port}\"\nprotocol = \"amqp\"\n")
    });
    midge.start(&[]).await;

    // Phase one stays connected (m2 unacknowledged) after printing what it did.
    let mut before = Command::new("python3")
        .args(args(&midge, amqp_port, "before"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run python3");
    let mut lines = BufReader::new(before.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(TIMEOUT, lines.next_line())
        .await
        .expect("phase one reports within the timeout")
        .expect("read phase one")
        .unwrap_or_else(|| panic!("phase one printed nothing:\n{}", midge.last_log()));
    let r: Value = serde_json::from_str(&line).expect("phase one prints JSON");
    assert_eq!(r["got"], json!(["m1", "m2"]));
    // Ready: m3, m4, the transient message and m5 (m2 is unacknowledged).
    assert_eq!(r["orders"], 4);

    midge.crash_and_restart().await;
    let _ = before.kill().await;

    let out = tokio::time::timeout(
        TIMEOUT * 3,
        Command::new("python3")
            .args(args(&midge, amqp_port, "after"))
            .output(),
    )
    .await
    .expect("phase two ends within the timeout")
    .expect("run python3");
    assert!(
        out.status.success(),
        "phase two failed:\n{}\nbroker log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        midge.last_log()
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("phase two prints JSON");
    // m1 was acknowledged; the transient message did not survive; m2 (unacknowledged at
    // the crash) is back first, and everything restored is marked redelivered.
    assert_eq!(r["orders_ready"], 4, "{r}");
    assert_eq!(
        r["orders"],
        json!([
            ["m2", true, 2],
            ["m3", true, 2],
            ["m4", true, 2],
            ["m5", true, 2],
            ["after", false, 2],
            ["sensor", false, 2]
        ])
    );
    // Non-durable and exclusive queues are gone, as in RabbitMQ.
    assert_eq!(r["transient_q"][0], 404, "{r}");
    assert_eq!(r["excl_durable"][0], 404, "{r}");
    // The arguments were restored: a declaration with others is refused.
    assert_eq!(r["inequivalent"][0], 406, "{r}");
    assert!(
        r["inequivalent"][1]
            .as_str()
            .unwrap()
            .contains("inequivalent arg 'x-max-length' for queue 'orders'"),
        "{r}"
    );
    assert_eq!(r["marker"], "marker");
}
