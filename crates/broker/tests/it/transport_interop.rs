//! TLS and WebSocket with other people's clients: Python paho-mqtt (CA verification, TLS 1.2
//! and 1.3, a client certificate as the user), Mosquitto's `mosquitto_pub`/`mosquitto_sub`
//! (`--cafile`, `--cert`, `--key`), mqtt.js over `ws://` and `wss://`, and the README's
//! WebSocket page in headless Chromium. `scripts/test-deps.sh` installs them all.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use midge_broker::config::CertIdentity;

use crate::pki::Pki;
use crate::tls::{LogCapture, listener, start, tls_settings};
use crate::ws::ws_listener;

/// External clients start an interpreter (or a browser) first, so they get longer than
/// the in-process tests' TIMEOUT.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a program to completion (bounded), with the broker still serving on this runtime.
async fn run(program: &str, args: &[&str], cwd: &Path) -> Output {
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(PROCESS_TIMEOUT, child)
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish in {PROCESS_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (run scripts/test-deps.sh)"))
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn python_dir() -> PathBuf {
    repo_root().join("tests/interop/python")
}

fn js_dir() -> PathBuf {
    repo_root().join("tests/interop/js")
}

#[tokio::test]
async fn paho_verifies_the_ca_and_round_trips_a_message_over_tls_12_and_13() {
    let pki = Pki::new("paho");
    let server_cert = pki.server("server");
    let (server, ports) = start(vec![listener(Some(tls_settings(&server_cert)))], |_| {}).await;
    let port = ports[0].to_string();
    let ca = pki.ca_path.display().to_string();
    for (tls_version, mqtt, expected) in [("1.2", "3.1.1", "TLSv1.2"), ("1.3", "5", "TLSv1.3")] {
        let output = run(
            "python3",
            &[
                "tls_pubsub.py",
                "--port",
                &port,
                "--cafile",
                &ca,
                "--tls-version",
                tls_version,
                "--mqtt",
                mqtt,
            ],
            &python_dir(),
        )
        .await;
        assert!(output.status.success(), "{}", describe(&output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains(&format!("\"tls_version\": \"{expected}\"")),
            "{stdout}"
        );
        assert!(
            stdout.contains("\"received\": \"hello over TLS\""),
            "{stdout}"
        );
    }

    // A CA that did not sign the broker's certificate: paho refuses the broker.
    let stranger = Pki::new("paho-stranger");
    let output = run(
        "python3",
        &[
            "tls_pubsub.py",
            "--port",
            &port,
            "--cafile",
            &stranger.ca_path.display().to_string(),
        ],
        &python_dir(),
    )
    .await;
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("CERTIFICATE_VERIFY_FAILED"),
        "{}",
        describe(&output)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn paho_client_certificate_common_name_is_the_user() {
    let (logs, _guard) = LogCapture::start();
    let pki = Pki::new("paho-identity");
    let server_cert = pki.server("server");
    let device = pki.client("device", Some("paho-device-9"), "Acme");
    let mut settings = tls_settings(&server_cert);
    settings.client_ca = Some(pki.ca_path.clone());
    settings.cert_identity = CertIdentity::Cn;
    let (server, ports) = start(vec![listener(Some(settings))], |config| {
        config.auth.allow_anonymous = Some(false);
    })
    .await;
    let port = ports[0].to_string();
    let ca = pki.ca_path.display().to_string();

    let output = run(
        "python3",
        &[
            "tls_pubsub.py",
            "--port",
            &port,
            "--cafile",
            &ca,
            "--certfile",
            &device.cert_path.display().to_string(),
            "--keyfile",
            &device.key_path.display().to_string(),
            "--client-id",
            "paho-with-cert",
        ],
        &python_dir(),
    )
    .await;
    assert!(output.status.success(), "{}", describe(&output));
    let connected = logs.lines_with("client_id=paho-with-cert ");
    assert!(
        connected
            .iter()
            .any(|line| line.contains("client connected")
                && line.contains("username=paho-device-9 ")),
        "{connected:#?}"
    );

    // Without the certificate it is an anonymous client, and those are refused here.
    let output = run(
        "python3",
        &[
            "tls_pubsub.py",
            "--port",
            &port,
            "--cafile",
            &ca,
            "--client-id",
            "paho-without-cert",
        ],
        &python_dir(),
    )
    .await;
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("Not authorized"),
        "{}",
        describe(&output)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn mosquitto_clients_with_cafile_and_client_certificates() {
    let pki = Pki::new("mosquitto");
    let server_cert = pki.server("server");
    let device = pki.client("device", Some("mosquitto-device"), "Acme");
    let mut settings = tls_settings(&server_cert);
    settings.client_ca = Some(pki.ca_path.clone());
    settings.require_client_cert = true;
    settings.cert_identity = CertIdentity::Cn;
    let (server, ports) = start(vec![listener(Some(settings))], |config| {
        config.auth.allow_anonymous = Some(false);
    })
    .await;
    let port = ports[0].to_string();
    let ca = pki.ca_path.display().to_string();
    let cert = device.cert_path.display().to_string();
    let key = device.key_path.display().to_string();
    let tls_args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "--cafile",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
    ];

    // Retained, so the subscriber gets it whenever it subscribes: no race between the two.
    let mut publish = tls_args.to_vec();
    publish.extend([
        "-t",
        "tls/retained",
        "-m",
        "from mosquitto_pub",
        "-r",
        "-q",
        "1",
    ]);
    let output = run("mosquitto_pub", &publish, &repo_root()).await;
    assert!(output.status.success(), "{}", describe(&output));

    let mut subscribe = tls_args.to_vec();
    subscribe.extend(["-t", "tls/#", "-v", "-C", "1", "-W", "10"]);
    let output = run("mosquitto_sub", &subscribe, &repo_root()).await;
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim_end(),
        "tls/retained from mosquitto_pub"
    );

    // The listener requires a certificate: --cafile alone does not get in.
    let output = run(
        "mosquitto_sub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "--cafile",
            &ca,
            "-t",
            "tls/#",
            "-C",
            "1",
            "-W",
            "5",
        ],
        &repo_root(),
    )
    .await;
    assert!(!output.status.success(), "{}", describe(&output));
    server.shutdown().await;
}

#[tokio::test]
async fn mqttjs_over_ws_and_wss() {
    let pki = Pki::new("mqttjs");
    let server_cert = pki.server("server");
    let mut secure = ws_listener(&["/mqtt", "/ws"]);
    secure.tls = Some(tls_settings(&server_cert));
    let (server, ports) = start(vec![ws_listener(&[]), secure], |_| {}).await;
    let ca = pki.ca_path.display().to_string();
    let cases = [
        (format!("ws://127.0.0.1:{}/mqtt", ports[0]), "4", None),
        (format!("ws://127.0.0.1:{}/mqtt", ports[0]), "5", None),
        (format!("wss://127.0.0.1:{}/mqtt", ports[1]), "4", Some(&ca)),
        (format!("wss://127.0.0.1:{}/ws", ports[1]), "5", Some(&ca)),
    ];
    for (url, mqtt, ca) in cases {
        let mut args = vec!["ws_pubsub.mjs", url.as_str(), "--mqtt", mqtt];
        if let Some(ca) = ca {
            args.extend(["--ca", ca.as_str()]);
        }
        let output = run("node", &args, &js_dir()).await;
        assert!(output.status.success(), "{url}: {}", describe(&output));
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("\"ok\":true"),
            "{url}: {}",
            describe(&output)
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn readme_websocket_page_in_headless_chromium_receives_and_publishes() {
    let (server, ports) = start(vec![listener(None), ws_listener(&["/mqtt"])], |config| {
        config.mqtt.connect_timeout_secs = 30
    })
    .await;
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("readme-websocket-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let output = run(
        "node",
        &[
            "browser_page.mjs",
            &repo_root().join("README.md").display().to_string(),
            &format!("ws://127.0.0.1:{}/mqtt", ports[1]),
            &format!("mqtt://127.0.0.1:{}", ports[0]),
            &screenshot.display().to_string(),
        ],
        &js_dir(),
    )
    .await;
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    // What the page showed: the other client's message, then its own.
    assert!(
        stdout.contains("\"chat/node: hello from node\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"chat/browser: hello from chromium\""),
        "{stdout}"
    );
    // What the other client received from the click.
    assert!(
        stdout.contains("\"topic\":\"chat/browser\",\"payload\":\"hello from chromium\""),
        "{stdout}"
    );
    let png = std::fs::read(&screenshot).expect("screenshot saved");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    server.shutdown().await;
}
