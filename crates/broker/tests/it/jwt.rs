//! `[auth.jwt]` with tokens made by PyJWT (tests/interop/python/jwt_tool.py): HS256 with a
//! secret, ES256 with a PEM public key, RS256 from a JWKS file and from an https:// JWKS
//! URL, both rotating; good, expired, wrong-key and wrong-claim tokens; the ACL claim; and
//! the connection closed when its token expires (MQTT 5 with DISCONNECT 0xA0).

use std::path::{Path, PathBuf};
use std::time::Duration;

use midge_broker::config::JwtConfig;
use serde_json::{Value, json};

use crate::access_support::{
    TempDir, broker_with, connack_for, connected, publish_qos1, subscribe,
};
use crate::harness::{Raw, TIMEOUT, TestBroker};
use crate::interop_util::{repo_root, run};
use crate::pki::Pki;

const V3: bool = false;
const V5: bool = true;

/// At least 32 bytes, as HS256 keys should be.
const SECRET: &str = "a shared secret of thirty-two bytes or more";

fn tool() -> String {
    repo_root()
        .join("tests/interop/python/jwt_tool.py")
        .display()
        .to_string()
}

/// A token from PyJWT.
async fn token(spec: Value) -> String {
    let out = run(
        "python3",
        &[tool(), "token".into(), spec.to_string()],
        TIMEOUT,
    )
    .await;
    assert!(out.status.success(), "jwt_tool token: {}", out.stderr);
    out.stdout.trim().to_owned()
}

/// Writes `dir/name.{key,pub,jwk}` for `alg`.
async fn keys(dir: &Path, name: &str, alg: &str) {
    let args = [
        tool(),
        "keys".into(),
        dir.display().to_string(),
        name.into(),
        alg.into(),
    ];
    let out = run("python3", &args, TIMEOUT).await;
    assert!(out.status.success(), "jwt_tool keys: {}", out.stderr);
}

fn jwks(dir: &Path, names: &[&str]) -> String {
    let keys: Vec<Value> = names
        .iter()
        .map(|n| {
            serde_json::from_slice(&std::fs::read(dir.join(format!("{n}.jwk"))).unwrap()).unwrap()
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

/// The CONNACK reason (v5) or return code (v3) for a login with `password`.
async fn login(broker: &TestBroker, v5: bool, user: &str, password: &str) -> u8 {
    connack_for(broker, v5, Some(user), Some(password.as_bytes())).await[3]
}

fn hs256(claims: Value, exp_in: i64) -> Value {
    json!({"alg": "HS256", "secret": SECRET, "claims": claims, "exp_in": exp_in})
}

#[tokio::test]
async fn hs256_tokens_good_expired_wrong_key_and_wrong_claims() {
    let config = JwtConfig {
        secret: Some(SECRET.into()),
        verify_claims: [("sub".to_owned(), "%u".to_owned())].into(),
        leeway_secs: 5,
        ..JwtConfig::default()
    };
    let broker = broker_with(|c| c.auth.jwt = Some(config)).await;
    let good = token(hs256(json!({"sub": "alice"}), 600)).await;
    let expired = token(hs256(json!({"sub": "alice"}), -60)).await;
    let wrong_key = token(
        json!({"alg": "HS256", "secret": "another secret, also thirty-two bytes long",
        "claims": {"sub": "alice"}, "exp_in": 600}),
    )
    .await;
    let no_exp = token(json!({"alg": "HS256", "secret": SECRET, "claims": {"sub": "alice"}})).await;
    for v5 in [V3, V5] {
        let refused = if v5 { 0x86 } else { 4 };
        assert_eq!(login(&broker, v5, "alice", &good).await, 0, "good token");
        assert_eq!(
            login(&broker, v5, "bob", &good).await,
            refused,
            "sub is not bob"
        );
        assert_eq!(
            login(&broker, v5, "alice", &expired).await,
            refused,
            "expired"
        );
        assert_eq!(
            login(&broker, v5, "alice", &wrong_key).await,
            refused,
            "wrong key"
        );
        assert_eq!(
            login(&broker, v5, "alice", &no_exp).await,
            refused,
            "no exp"
        );
        assert_eq!(login(&broker, v5, "alice", "not a token").await, refused);
    }
    broker.shutdown().await;
}

/// The token's exp ends the connection: MQTT 5 gets DISCONNECT 0xA0, MQTT 3 is closed.
#[tokio::test]
async fn a_connection_ends_when_its_token_expires() {
    let config = JwtConfig {
        secret: Some(SECRET.into()),
        leeway_secs: 0,
        ..JwtConfig::default()
    };
    let broker = broker_with(|c| c.auth.jwt = Some(config)).await;
    let short = token(hs256(json!({}), 2)).await;
    let mut v5 = connected(&broker, V5, "v5", Some("u"), Some(short.as_bytes())).await;
    let mut v3 = connected(&broker, V3, "v3", Some("u"), Some(short.as_bytes())).await;
    // A keep-alive of 60 s (the CONNECT helper's) would not end either connection.
    let disconnect = tokio::time::timeout(TIMEOUT, v5.recv_packet())
        .await
        .expect("DISCONNECT within the timeout");
    assert_eq!(disconnect[0], 0xE0, "{disconnect:02X?}");
    assert_eq!(disconnect[2], 0xA0, "reason: maximum connect time");
    tokio::time::timeout(TIMEOUT, v3.recv_until_closed())
        .await
        .expect("the v3 connection is closed");
    broker.shutdown().await;
}

#[tokio::test]
async fn es256_public_key_and_the_acl_claim() {
    let dir = TempDir::new("jwt-es256");
    keys(dir.path(), "device", "ES256").await;
    let config = JwtConfig {
        algorithms: vec!["ES256".into()],
        public_key: Some(dir.path().join("device.pub")),
        acl_claim: Some("acl".into()),
        ..JwtConfig::default()
    };
    let broker = broker_with(|c| c.auth.jwt = Some(config)).await;
    let key_file = dir.path().join("device.key").display().to_string();
    let es = |claims: Value| json!({"alg": "ES256", "key_file": key_file, "claims": claims, "exp_in": 600});
    let granted = token(es(json!({"acl": {"pub": ["up/%c"], "sub": ["down/#"]}}))).await;
    let mut client = connected(&broker, V5, "d1", Some("dev"), Some(granted.as_bytes())).await;
    assert_eq!(puback(&mut client, "up/d1").await, 0x10);
    assert_eq!(puback(&mut client, "up/d2").await, 0x87);
    assert_eq!(suback(&mut client, "down/#").await, 0x01);
    assert_eq!(suback(&mut client, "up/#").await, 0x87);
    // Without the claim nothing restricts the topics (no ACL file here).
    let plain = token(es(json!({}))).await;
    let mut other = connected(&broker, V5, "d2", Some("dev"), Some(plain.as_bytes())).await;
    assert_eq!(puback(&mut other, "up/d1").await, 0x10);
    // An HS256 token is refused: only ES256 is accepted.
    let hs = token(hs256(json!({}), 600)).await;
    assert_eq!(login(&broker, V5, "dev", &hs).await, 0x86);
    broker.shutdown().await;
}

async fn puback(client: &mut Raw, topic: &str) -> u8 {
    client.send(&publish_qos1(V5, 5, topic, b"x", false)).await;
    let ack = client.recv_packet().await;
    assert_eq!(ack[0], 0x40, "{ack:02X?}");
    ack.get(4).copied().unwrap_or(0)
}

async fn suback(client: &mut Raw, filter: &str) -> u8 {
    client.send(&subscribe(V5, 6, filter, 1)).await;
    let ack = client.recv_packet().await;
    assert_eq!(ack[0], 0x90, "{ack:02X?}");
    *ack.last().unwrap()
}

fn rs256(dir: &Path, name: &str) -> Value {
    json!({"alg": "RS256", "key_file": dir.join(format!("{name}.key")), "kid": name,
        "claims": {"sub": "svc"}, "exp_in": 600})
}

/// Polls until a login with `password` gets `code`, within the timeout. (The broker
/// must not limit failed logins: see [`no_login_limit`].)
async fn eventually(broker: &TestBroker, password: &str, code: u8) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let got = login(broker, V5, "svc", password).await;
        if got == code {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {got:#04x}, not {code:#04x}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polling logins fail until the keys arrive; the failed-login limit would stop them.
fn no_login_limit(config: &mut midge_broker::Config) {
    config.auth.rate_limit.failures_burst = 0;
}

#[tokio::test]
async fn rs256_from_a_jwks_file_that_rotates() {
    let dir = TempDir::new("jwt-jwks");
    for name in ["one", "two", "three"] {
        keys(dir.path(), name, "RS256").await;
    }
    let jwks_file: PathBuf = dir.write("jwks.json", &jwks(dir.path(), &["one"]));
    let config = JwtConfig {
        algorithms: vec!["RS256".into()],
        jwks: Some(jwks_file.display().to_string()),
        jwks_refresh_secs: 1,
        ..JwtConfig::default()
    };
    let broker = broker_with(|c| {
        c.auth.jwt = Some(config);
        no_login_limit(c);
    })
    .await;
    let one = token(rs256(dir.path(), "one")).await;
    let two = token(rs256(dir.path(), "two")).await;
    let three = token(rs256(dir.path(), "three")).await;
    assert_eq!(login(&broker, V5, "svc", &one).await, 0);
    assert_eq!(login(&broker, V5, "svc", &two).await, 0x86);

    // Rotation with a reload (SIGHUP): key one retired, key two in.
    dir.write("jwks.json", &jwks(dir.path(), &["two"]));
    broker
        .server
        .as_ref()
        .unwrap()
        .reload()
        .await
        .expect("reload");
    assert_eq!(login(&broker, V5, "svc", &two).await, 0);
    assert_eq!(login(&broker, V5, "svc", &one).await, 0x86);

    // Rotation without a signal: the file is looked at again every jwks_refresh_secs.
    dir.write("jwks.json", &jwks(dir.path(), &["two", "three"]));
    eventually(&broker, &three, 0).await;
    assert_eq!(login(&broker, V5, "svc", &two).await, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn rs256_from_an_https_jwks_url() {
    let dir = TempDir::new("jwt-jwks-url");
    keys(dir.path(), "web", "RS256").await;
    keys(dir.path(), "next", "RS256").await;
    let jwks_file = dir.write("jwks.json", &jwks(dir.path(), &["web"]));
    let pki = Pki::new("jwks-https");
    let server = pki.server("jwks");
    let service = crate::http_rabbitmq::RabbitService::start(&[
        "--cert".into(),
        server.cert_path.display().to_string(),
        "--key".into(),
        server.key_path.display().to_string(),
        "--jwks".into(),
        jwks_file.display().to_string(),
    ])
    .await;
    let config = JwtConfig {
        algorithms: vec!["RS256".into()],
        jwks: Some(service.url("/jwks.json")),
        ca_file: Some(pki.ca_path.clone()),
        jwks_refresh_secs: 1,
        ..JwtConfig::default()
    };
    let broker = broker_with(|c| {
        c.auth.jwt = Some(config);
        no_login_limit(c);
    })
    .await;
    let web = token(rs256(dir.path(), "web")).await;
    // The JWKS is fetched in the background at start.
    eventually(&broker, &web, 0).await;
    // The identity provider rotates its key: fetched again after jwks_refresh_secs.
    let next = token(rs256(dir.path(), "next")).await;
    assert_eq!(login(&broker, V5, "svc", &next).await, 0x86);
    dir.write("jwks.json", &jwks(dir.path(), &["next"]));
    eventually(&broker, &next, 0).await;
    assert_eq!(login(&broker, V5, "svc", &web).await, 0x86);
    broker.shutdown().await;
}
