//! `[auth] order`: the password file, JWT and the HTTP service (RabbitMQ flavour, the
//! Python service) asked in order; the first that knows the user decides and the others
//! are not asked.

use midge_broker::config::{AuthSource, HttpMethod, JwtConfig};
use serde_json::json;

use crate::access_support::{TempDir, broker_with, connack_for};
use crate::harness::{TIMEOUT, TestBroker};
use crate::http_rabbitmq::RabbitService;
use crate::interop_util::{repo_root, run};

const SECRET: &str = "a shared secret of thirty-two bytes or more";

async fn token(sub: &str) -> String {
    let tool = repo_root().join("tests/interop/python/jwt_tool.py");
    let spec = json!({"alg": "HS256", "secret": SECRET, "claims": {"sub": sub}, "exp_in": 600});
    let out = run(
        "python3",
        &[tool.display().to_string(), "token".into(), spec.to_string()],
        TIMEOUT,
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    out.stdout.trim().to_owned()
}

async fn code(broker: &TestBroker, user: &str, password: &str) -> u8 {
    connack_for(broker, true, Some(user), Some(password.as_bytes())).await[3]
}

async fn chain_broker(
    dir: &TempDir,
    service: &RabbitService,
    order: Vec<AuthSource>,
) -> TestBroker {
    let mut passwords = String::new();
    for (user, password) in [("alice", "filepass"), ("dave", "davepass")] {
        let hash = midge_broker::auth::hash_password(password.as_bytes()).unwrap();
        passwords.push_str(&format!("{user}:{hash}\n"));
    }
    let password_file = dir.write("passwd", &passwords);
    let http = service.rabbit_config(HttpMethod::Post);
    broker_with(|c| {
        c.auth.password_file = Some(password_file);
        c.auth.jwt = Some(JwtConfig {
            secret: Some(SECRET.into()),
            verify_claims: [("sub".to_owned(), "%u".to_owned())].into(),
            ..JwtConfig::default()
        });
        c.auth.http = Some(http);
        c.auth.order = order;
        c.auth.rate_limit.failures_burst = 0;
    })
    .await
}

/// HTTP requests to the user path so far.
async fn asked(service: &RabbitService) -> usize {
    service.requests_to("/auth/user", 0).await.len()
}

#[tokio::test]
async fn the_default_order_is_password_file_jwt_http() {
    let service = RabbitService::start(&[]).await;
    let dir = TempDir::new("chain-default");
    let broker = chain_broker(&dir, &service, Vec::new()).await;
    let alice_token = token("alice").await;
    let erin_token = token("erin").await;

    // alice is in the password file: it decides, even where the service would allow.
    assert_eq!(code(&broker, "alice", "filepass").await, 0);
    assert_eq!(code(&broker, "alice", "secret").await, 0x86);
    assert_eq!(code(&broker, "alice", &alice_token).await, 0x86);
    assert_eq!(
        asked(&service).await,
        0,
        "the service was asked about alice"
    );
    // erin presents a JWT: JWT decides, before the service.
    assert_eq!(code(&broker, "erin", &erin_token).await, 0);
    assert_eq!(code(&broker, "bob", &erin_token).await, 0x86, "sub is erin");
    assert_eq!(asked(&service).await, 0);
    // carol is known to neither: the service decides.
    assert_eq!(code(&broker, "carol", "secret").await, 0);
    assert_eq!(service.requests_to("/auth/user", 1).await.len(), 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_configured_order_changes_who_decides() {
    let service = RabbitService::start(&[]).await;
    let dir = TempDir::new("chain-order");
    let order = vec![AuthSource::Jwt, AuthSource::Http, AuthSource::PasswordFile];
    let broker = chain_broker(&dir, &service, order).await;
    let alice_token = token("alice").await;
    // JWT first: alice's token lets her in although the password file lists her.
    assert_eq!(code(&broker, "alice", &alice_token).await, 0);
    // The service knows every user, so the password file after it is never asked.
    assert_eq!(code(&broker, "alice", "filepass").await, 0x86);
    assert_eq!(code(&broker, "dave", "davepass").await, 0x86);
    assert_eq!(code(&broker, "alice", "secret").await, 0);
    assert_eq!(service.requests_to("/auth/user", 3).await.len(), 3);
    broker.shutdown().await;
}

/// Issue 14's timing check for the HTTP backends (RabbitMQ flavour, decision cache off):
/// a known and an unknown user each cost one request per path. Run by hand:
/// `cargo test -p midge-broker --test it timing_of_http -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "measures time; run by hand"]
async fn timing_of_http_logins() {
    let service = RabbitService::start(&[]).await;
    let http = service.rabbit_config(HttpMethod::Get);
    let broker = broker_with(|c| {
        c.auth.http = Some(http);
        c.auth.rate_limit.failures_burst = 0;
    })
    .await;
    for (what, user, password) in [
        ("known user, right password", "alice", "secret"),
        ("known user, wrong password", "alice", "wrong"),
        ("unknown user", "nobody", "secret"),
    ] {
        let before = service.requests_to("/auth/user", 0).await.len();
        let mut times = Vec::new();
        for _ in 0..15 {
            let start = std::time::Instant::now();
            code(&broker, user, password).await;
            times.push(start.elapsed().as_micros());
        }
        times.sort_unstable();
        let requests = service.requests_to("/auth/user", before + 15).await.len() - before;
        println!(
            "HTTP (rabbitmq flavour): {what}: {} us median CONNECT to CONNACK, {requests} user_path requests for 15 logins",
            times[7]
        );
    }
    broker.shutdown().await;
}
