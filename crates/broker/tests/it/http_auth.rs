//! The HTTP auth backend against a real HTTP server on 127.0.0.1 started by the test:
//! connect and topic decisions, the request body, the timeout, and the decision cache.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use midge_broker::config::HttpAuthConfig;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::access_support::{
    broker_with, connack_for, connack_v3, connack_v5_refused, connected, publish_qos1,
};

const V3: bool = false;
const V5: bool = true;

/// A tiny HTTP/1.1 server: each request's JSON body is recorded and answered by `decide`
/// (`None`: never answer).
struct AuthService {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<(String, Value)>>>,
}

impl AuthService {
    async fn start(decide: fn(&str, &Value) -> Option<bool>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, log.clone(), decide));
            }
        });
        Self { addr, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    fn last(&self) -> (String, Value) {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

async fn serve(
    mut stream: TcpStream,
    log: Arc<Mutex<Vec<(String, Value)>>>,
    decide: fn(&str, &Value) -> Option<bool>,
) {
    let mut data = Vec::new();
    let (path, body) = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        data.extend_from_slice(&chunk[..n]);
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&data[..end]).to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        if data.len() >= end + 4 + length {
            let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
            assert!(head.starts_with("POST "), "{head}");
            break (
                path,
                serde_json::from_slice::<Value>(&data[end + 4..end + 4 + length]).unwrap(),
            );
        }
    };
    log.lock().unwrap().push((path.clone(), body.clone()));
    let Some(allow) = decide(&path, &body) else {
        // Never answer: the broker's timeout has to end the check.
        std::future::pending::<()>().await;
        return;
    };
    let answer = if allow {
        r#"{"result": "allow"}"#
    } else {
        r#"{"result": "deny"}"#
    };
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

/// Connect: user "good" with password "pw" is allowed. Topics: anything under `ok/`.
fn decide(path: &str, body: &Value) -> Option<bool> {
    Some(match path {
        "/auth" => body["username"] == "good" && body["password"] == "pw",
        "/acl" => body["topic"]
            .as_str()
            .unwrap_or_default()
            .starts_with("ok/"),
        _ => false,
    })
}

fn http_config(service: &AuthService) -> HttpAuthConfig {
    HttpAuthConfig {
        url: Some(service.url("/auth")),
        acl_url: Some(service.url("/acl")),
        ..HttpAuthConfig::default()
    }
}

#[tokio::test]
async fn the_service_allows_and_denies_connects() {
    let service = AuthService::start(decide).await;
    let broker = broker_with(|c| c.auth.http = Some(http_config(&service))).await;
    assert_eq!(
        connack_for(&broker, V3, Some("good"), Some(b"pw")).await,
        connack_v3(0)
    );
    let (path, body) = service.last();
    assert_eq!(path, "/auth");
    assert_eq!(body["clientid"], "probe");
    assert_eq!(body["username"], "good");
    assert_eq!(body["password"], "pw");
    assert!(
        body["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{body}"
    );
    assert!(
        body["listener"]
            .as_str()
            .unwrap()
            .starts_with("mqtt:127.0.0.1:"),
        "{body}"
    );

    // Denied: v3.1.1 return code 4, v5 reason 0x86.
    assert_eq!(
        connack_for(&broker, V3, Some("good"), Some(b"wrong")).await,
        connack_v3(4)
    );
    assert_eq!(
        connack_for(&broker, V5, Some("evil"), Some(b"pw")).await,
        connack_v5_refused(0x86)
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn the_service_decides_publish_and_subscribe() {
    let service = AuthService::start(decide).await;
    let broker = broker_with(|c| c.auth.http = Some(http_config(&service))).await;
    let mut client = connected(&broker, V5, "c1", Some("good"), Some(b"pw")).await;

    client.send(&publish_qos1(V5, 7, "ok/a", b"x", false)).await;
    // PUBACK: packet id 7, 0x10 no matching subscribers (allowed, nobody listening).
    assert_eq!(client.recv_packet().await, [0x40, 0x03, 0x00, 0x07, 0x10]);
    let (path, body) = service.last();
    assert_eq!(path, "/acl");
    assert_eq!(body["action"], "publish");
    assert_eq!(body["topic"], "ok/a");
    assert_eq!(body["clientid"], "c1");
    assert_eq!(body["username"], "good");

    client.send(&publish_qos1(V5, 8, "no/a", b"x", false)).await;
    // PUBACK: packet id 8, 0x87 not authorized.
    assert_eq!(client.recv_packet().await, [0x40, 0x03, 0x00, 0x08, 0x87]);

    client
        .send(&crate::access_support::subscribe(V5, 9, "no/#", 1))
        .await;
    // SUBACK: packet id 9, no properties, 0x87 not authorized.
    assert_eq!(
        client.recv_packet().await,
        [0x90, 0x04, 0x00, 0x09, 0x00, 0x87]
    );
    assert_eq!(service.last().1["action"], "subscribe");
    broker.shutdown().await;
}

#[tokio::test]
async fn a_service_that_does_not_answer_in_time_denies() {
    let service = AuthService::start(|_, _| None).await;
    let broker = broker_with(|c| {
        c.auth.http = Some(HttpAuthConfig {
            timeout_ms: 200,
            ..http_config(&service)
        })
    })
    .await;
    // The check times out: v5 0x88 server unavailable; v3.1.1 return code 3.
    assert_eq!(
        connack_for(&broker, V5, Some("good"), Some(b"pw")).await,
        connack_v5_refused(0x88)
    );
    assert_eq!(
        connack_for(&broker, V3, Some("good"), Some(b"pw")).await,
        connack_v3(3)
    );
    assert_eq!(service.count(), 2, "an unanswered check is not cached");
    broker.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_service_denies() {
    // A port nobody listens on: bind, note the port, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let broker = broker_with(|c| {
        c.auth.http = Some(HttpAuthConfig {
            url: Some(format!("http://127.0.0.1:{port}/auth")),
            ..HttpAuthConfig::default()
        })
    })
    .await;
    assert_eq!(
        connack_for(&broker, V5, Some("good"), Some(b"pw")).await,
        connack_v5_refused(0x88)
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn repeated_checks_are_answered_from_the_cache() {
    let service = AuthService::start(decide).await;
    let broker = broker_with(|c| c.auth.http = Some(http_config(&service))).await;
    assert_eq!(
        connack_for(&broker, V3, Some("good"), Some(b"pw")).await,
        connack_v3(0)
    );
    assert_eq!(
        connack_for(&broker, V3, Some("good"), Some(b"pw")).await,
        connack_v3(0)
    );
    assert_eq!(
        service.count(),
        1,
        "the second identical connect did not reach the service"
    );
    // A different password is a different question.
    assert_eq!(
        connack_for(&broker, V3, Some("good"), Some(b"other")).await,
        connack_v3(4)
    );
    assert_eq!(service.count(), 2);

    let mut client = connected(&broker, V3, "c2", Some("good"), Some(b"pw")).await;
    let before = service.count();
    for id in [1u16, 2] {
        client
            .send(&publish_qos1(V3, id, "ok/x", b"x", false))
            .await;
        assert_eq!(client.recv_packet().await, [0x40, 0x02, 0x00, id as u8]);
    }
    // One topic check for both publishes.
    assert_eq!(service.count(), before + 1);
    broker.shutdown().await;
}
