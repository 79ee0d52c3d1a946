//! `[auth.http] flavor = "rabbitmq"` against a small rabbitmq_auth_backend_http service
//! (tests/interop/python/rabbitmq_auth_service.py, Python's own HTTP and form parsers),
//! with GET and POST, allow and deny at each of user_path, vhost_path, resource_path and
//! topic_path; and the HTTP backends over `https://` with a CA file and a client
//! certificate.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use midge_broker::config::{HttpAuthConfig, HttpFlavor, HttpMethod};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::access_support::{broker_with, connack_for, connected, publish_qos1, subscribe};
use crate::harness::TIMEOUT;
use crate::interop_util::repo_root;
use crate::pki::Pki;

const V3: bool = false;
const V5: bool = true;

/// The Python service, its port, and the requests it has logged.
pub struct RabbitService {
    _child: Child,
    pub port: u16,
    scheme: &'static str,
    requests: Arc<Mutex<Vec<Value>>>,
}

impl RabbitService {
    /// Starts the service with these extra arguments (`--cert`, `--key`, `--client-ca`,
    /// `--jwks`); over HTTPS when `--cert` is among them.
    pub async fn start(extra: &[String]) -> Self {
        let script = repo_root().join("tests/interop/python/rabbitmq_auth_service.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(extra)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(TIMEOUT, lines.next_line())
            .await
            .expect("the service prints its port in time")
            .unwrap()
            .expect("a port line")
            .parse()
            .unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        });
        let scheme = if extra.iter().any(|a| a == "--cert") {
            "https"
        } else {
            "http"
        };
        Self {
            _child: child,
            port,
            scheme,
            requests,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.port)
    }

    /// The logged requests to `path`, waiting briefly for the log to catch up (the
    /// service prints a request before answering it, but the pipe is read separately).
    pub async fn requests_to(&self, path: &str, at_least: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let found: Vec<Value> = self
                .requests
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r["path"] == path)
                .cloned()
                .collect();
            if found.len() >= at_least || tokio::time::Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub fn rabbit_config(&self, method: HttpMethod) -> HttpAuthConfig {
        HttpAuthConfig {
            flavor: HttpFlavor::Rabbitmq,
            user_path: Some(self.url("/auth/user")),
            vhost_path: Some(self.url("/auth/vhost")),
            resource_path: Some(self.url("/auth/resource")),
            topic_path: Some(self.url("/auth/topic")),
            method,
            // Every check reaches the service.
            cache_size: 0,
            ..HttpAuthConfig::default()
        }
    }
}

/// v5 PUBACK reason for a QoS 1 PUBLISH (0x00 is sent as the short form).
async fn puback_reason(client: &mut crate::harness::Raw, topic: &str) -> u8 {
    client.send(&publish_qos1(V5, 9, topic, b"x", false)).await;
    let ack = client.recv_packet().await;
    assert_eq!(ack[0], 0x40, "{ack:02X?}");
    ack.get(4).copied().unwrap_or(0)
}

async fn suback_reason(client: &mut crate::harness::Raw, filter: &str) -> u8 {
    client.send(&subscribe(V5, 3, filter, 1)).await;
    let ack = client.recv_packet().await;
    assert_eq!(ack[0], 0x90, "{ack:02X?}");
    *ack.last().unwrap()
}

#[tokio::test]
async fn rabbitmq_flavour_allows_and_denies_at_each_path_with_get_and_post() {
    let service = RabbitService::start(&[]).await;
    for method in [HttpMethod::Get, HttpMethod::Post] {
        let config = service.rabbit_config(method);
        let broker = broker_with(|c| c.auth.http = Some(config)).await;
        let before = service.requests.lock().unwrap().len();

        // user_path: allow (with tags) and deny.
        let mut alice = connected(&broker, V5, "a1", Some("alice"), Some(b"secret")).await;
        assert_eq!(
            connack_for(&broker, V5, Some("alice"), Some(b"wrong")).await[3],
            0x86
        );
        assert_eq!(
            connack_for(&broker, V3, Some("mallory"), Some(b"secret")).await[3],
            4
        );
        // vhost_path: bob's password is right, but the vhost is refused to him.
        assert_eq!(
            connack_for(&broker, V5, Some("bob"), Some(b"secret")).await[3],
            0x86
        );
        // topic_path: routing keys under "ok." only; 0x10: allowed, no subscribers.
        assert_eq!(puback_reason(&mut alice, "ok/a/b").await, 0x10);
        assert_eq!(puback_reason(&mut alice, "no/a").await, 0x87);
        assert_eq!(suback_reason(&mut alice, "ok/+/#").await, 0x01);
        assert_eq!(suback_reason(&mut alice, "no/#").await, 0x87);
        // resource_path: carol may read the exchange but not write to it.
        let mut carol = connected(&broker, V5, "c1", Some("carol"), Some(b"secret")).await;
        assert_eq!(puback_reason(&mut carol, "ok/x").await, 0x87);
        assert_eq!(suback_reason(&mut carol, "ok/x").await, 0x01);

        // What the service saw, as Python parsed it.
        let verb = if method == HttpMethod::Get {
            "GET"
        } else {
            "POST"
        };
        let all: Vec<Value> = service.requests.lock().unwrap()[before..].to_vec();
        assert!(all.iter().all(|r| r["method"] == verb), "{all:#?}");
        let users = service.requests_to("/auth/user", 5).await;
        let last_users = &users[users.len() - 5..];
        assert_eq!(last_users[0]["params"]["username"], "alice");
        assert_eq!(last_users[0]["params"]["password"], "secret");
        let vhosts = service.requests_to("/auth/vhost", 2).await;
        let bob = vhosts
            .iter()
            .rev()
            .find(|r| r["params"]["username"] == "bob");
        let bob = bob.expect("a vhost check for bob");
        assert_eq!(bob["params"]["vhost"], "/");
        assert_eq!(bob["params"]["ip"], "127.0.0.1");
        let topics = service.requests_to("/auth/topic", 4).await;
        let sub = topics
            .iter()
            .find(|r| r["params"]["routing_key"] == "ok.*.#")
            .expect("the subscription's routing key");
        assert_eq!(sub["params"]["permission"], "read");
        assert_eq!(sub["params"]["resource"], "topic");
        assert_eq!(sub["params"]["name"], "amq.topic");
        assert_eq!(sub["params"]["variable_map.client_id"], "a1");
        let resources = service.requests_to("/auth/resource", 1).await;
        assert!(
            resources.iter().any(|r| r["params"]["username"] == "carol"
                && r["params"]["permission"] == "write"
                && r["params"]["resource"] == "exchange"),
            "{resources:#?}"
        );
        broker.shutdown().await;
    }
}

/// An HTTPS service that requires a client certificate: with `ca_file`, `client_cert`
/// and `client_key` the checks go through; without the client certificate the service
/// cannot be asked (0x88 server unavailable); with the wrong CA neither.
#[tokio::test]
async fn https_with_a_ca_file_and_a_client_certificate() {
    let pki = Pki::new("https-auth");
    let server = pki.server("service");
    let client = pki.client("midge", Some("midge"), "Acme");
    let arg = |p: &PathBuf| p.display().to_string();
    let service = RabbitService::start(&[
        "--cert".into(),
        arg(&server.cert_path),
        "--key".into(),
        arg(&server.key_path),
        "--client-ca".into(),
        arg(&pki.ca_path),
    ])
    .await;
    let with_cert = HttpAuthConfig {
        ca_file: Some(pki.ca_path.clone()),
        client_cert: Some(client.cert_path.clone()),
        client_key: Some(client.key_path.clone()),
        ..service.rabbit_config(HttpMethod::Post)
    };
    let without_cert = HttpAuthConfig {
        client_cert: None,
        client_key: None,
        ..with_cert.clone()
    };
    let other = Pki::new("https-other");
    let wrong_ca = HttpAuthConfig {
        ca_file: Some(other.ca_path.clone()),
        ..with_cert.clone()
    };

    let broker = broker_with(|c| c.auth.http = Some(with_cert)).await;
    let mut alice = connected(&broker, V5, "a1", Some("alice"), Some(b"secret")).await;
    assert_eq!(puback_reason(&mut alice, "ok/x").await, 0x10);
    assert_eq!(
        connack_for(&broker, V5, Some("alice"), Some(b"wrong")).await[3],
        0x86
    );
    broker.shutdown().await;
    for config in [without_cert, wrong_ca] {
        let broker = broker_with(|c| c.auth.http = Some(config)).await;
        assert_eq!(
            connack_for(&broker, V5, Some("alice"), Some(b"secret")).await[3],
            0x88
        );
        broker.shutdown().await;
    }
}
