//! A two-node cluster end to end over each way of reaching NATS `[cluster]` offers: TLS
//! with a private CA, a token, and an nsc credentials file (JWT + NKey, the server in
//! operator mode). User and password are covered in cluster.rs. Each option also has its
//! refusal: the node says so, retries, and keeps its MQTT listener closed. Everything is on
//! loopback, with a real nats-server (see cluster.rs) and certificates, keys and JWTs made
//! here.

mod support;

use std::path::{Path, PathBuf};

use base64ct::{Base64UrlUnpadded, Encoding};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use support::cluster::*;
use support::*;

/// Two running nodes and their directories; the nodes stop before the directories go.
struct Pair {
    _a: Midge,
    _b: Midge,
    _dirs: (TestDir, TestDir),
}

/// Nodes a and b on `nats`, each configured with `extra` `[cluster]` lines; a message
/// published at QoS 1 on a reaches a subscriber on b.
async fn two_nodes_carry_a_message(nats: &Nats, name: &str, extra: &str) -> Pair {
    let (dir_a, dir_b) = (
        TestDir::new(&format!("{name}-a")),
        TestDir::new(&format!("{name}-b")),
    );
    let mut a = node(&dir_a, "a", &[nats.url()], 0);
    let mut b = node(&dir_b, "b", &[nats.url()], 0);
    for n in [&a, &b] {
        n.edit_config(|t| t + extra);
    }
    a.start(&[]).await;
    b.start(&[]).await;
    let (mut sub, _) = connect(b.port, &connect_v311("sub", true)).await;
    subscribe_to(&mut sub, 1, "auth/t", 1).await;
    nats.wait_subjects("b", &["mq.m.auth.t"]).await;
    let (mut publisher, _) = connect(a.port, &connect_v311("pub", true)).await;
    publish_acked(&mut publisher, 1, "auth/t", 1, name.as_bytes()).await;
    let got = receive(&mut sub, 1).await;
    assert_eq!((got[0].qos, &got[0].payload[..]), (1, name.as_bytes()));
    Pair {
        _a: a,
        _b: b,
        _dirs: (dir_a, dir_b),
    }
}

/// The connections NATS knows as midge's (`midge <node>` and the node's others: `...
/// shared`, `... control`, `... retained`), from `/connz` with `query`.
fn midge_connections(nats: &Nats, query: &str) -> Vec<serde_json::Value> {
    let connz = nats.monitoring(&format!("/connz?{query}")).expect("connz");
    connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with("midge ")))
        .cloned()
        .collect()
}

/// Both nodes' main connections are among `connections` (each node has more: shared
/// subscriptions, control, retained).
fn assert_has_nodes(connections: &[serde_json::Value]) {
    for name in ["midge a", "midge b"] {
        assert!(
            connections.iter().any(|c| c["name"] == name),
            "no {name}: {connections:?}"
        );
    }
}

/// A nats-server started with `-c <dir>/<file>` holding `config`, plus the usual flags.
async fn nats_with_config(dir: &TestDir, file: &str, config: &str) -> Nats {
    let path = dir.0.join(file);
    std::fs::write(&path, config).expect("write nats config");
    let path = path.display().to_string();
    Nats::start_with(dir, free_port(), &["-c", &path]).await
}

/// A CA and a certificate it signed for 127.0.0.1 and localhost: (ca.pem, cert.pem,
/// key.pem) in `dir`.
fn write_ca_and_server_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[tokio::test]
async fn tls_with_a_private_ca_carries_messages_and_untrusted_roots_are_refused() {
    let dir = TestDir::new("nats-tls");
    let (ca, cert, key) = write_ca_and_server_cert(&dir.0);
    // A `tls` block makes the server require TLS of every client.
    let nats = nats_with_config(
        &dir,
        "tls.conf",
        &format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 5\n}}\n",
            cert.display(),
            key.display()
        ),
    )
    .await;
    let ca_line = format!("tls_ca_file = \"{}\"\n", ca.display());
    let _nodes = two_nodes_carry_a_message(&nats, "nats-tls", &ca_line).await;
    let connections = midge_connections(&nats, "");
    assert_has_nodes(&connections);
    for c in &connections {
        assert!(
            c["tls_version"].as_str().is_some_and(|v| !v.is_empty()),
            "a plain connection to a TLS-only server: {c}"
        );
    }

    // TLS with the system's roots, which do not hold our CA: the certificate is refused.
    let text =
        refused_node_keeps_waiting(&nats, "nats-tls-untrusted", "tls_required = true\n").await;
    let lower = text.to_lowercase();
    assert!(
        lower.contains("certificate") || lower.contains("tls"),
        "the TLS failure is named: {text}"
    );
}

#[tokio::test]
async fn a_token_carries_messages_and_a_wrong_one_keeps_the_node_waiting() {
    let dir = TestDir::new("nats-token");
    let nats = Nats::start_with(&dir, free_port(), &["--auth", "t0ken-midge"]).await;
    let _nodes = two_nodes_carry_a_message(&nats, "nats-token", "token = \"t0ken-midge\"\n").await;

    let text = refused_node_keeps_waiting(&nats, "nats-token-bad", "token = \"wrong\"\n").await;
    assert!(
        text.contains("uthorization"),
        "the refusal is named: {text}"
    );
}

// ---- operator mode: JWTs and NKeys made here, as nsc would ----

/// A JWT of `claims` (`iss` set to `issuer`'s public key, `iat` and `jti` filled in),
/// signed by `issuer` the way NATS expects: ed25519 over "header.claims", base64url
/// without padding.
fn sign_jwt(issuer: &nkeys::KeyPair, mut claims: serde_json::Value) -> String {
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    claims["iss"] = issuer.public_key().into();
    claims["iat"] = now.into();
    // nsc puts a hash of the claims here; the server only needs it present.
    claims["jti"] = format!("MIDGETEST{now}X{serial}").into();
    let header = Base64UrlUnpadded::encode_string(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = Base64UrlUnpadded::encode_string(claims.to_string().as_bytes());
    let signed = format!("{header}.{body}");
    let signature = issuer.sign(signed.as_bytes()).expect("sign");
    format!("{signed}.{}", Base64UrlUnpadded::encode_string(&signature))
}

/// An account JWT signed by `operator`, with JetStream on if `jetstream` (the cluster
/// keeps KV buckets; the server refuses it on the system account).
fn account_jwt(
    operator: &nkeys::KeyPair,
    account: &nkeys::KeyPair,
    name: &str,
    jetstream: bool,
) -> String {
    let mut limits = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    if jetstream {
        for key in ["mem_storage", "disk_storage", "streams", "consumer"] {
            limits[key] = (-1).into();
        }
    }
    sign_jwt(
        operator,
        serde_json::json!({
            "sub": account.public_key(),
            "name": name,
            "nats": {
                "limits": limits,
                "default_permissions": { "pub": {}, "sub": {} },
                "type": "account",
                "version": 2,
            },
        }),
    )
}

/// A user JWT of `user` issued by `account`.
fn user_jwt(account: &nkeys::KeyPair, user: &nkeys::KeyPair) -> String {
    sign_jwt(
        account,
        serde_json::json!({
            "sub": user.public_key(),
            "name": "midge",
            "nats": {
                "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                "type": "user",
                "version": 2,
            },
        }),
    )
}

/// A credentials file as `nsc generate creds` writes it.
fn write_creds(path: &Path, jwt: &str, seed: &str) {
    std::fs::write(
        path,
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n"
        ),
    )
    .expect("write creds");
}

#[tokio::test]
async fn a_credentials_file_carries_messages_and_a_foreign_seed_keeps_the_node_waiting() {
    let dir = TestDir::new("nats-creds");
    let operator = nkeys::KeyPair::new_operator();
    let system = nkeys::KeyPair::new_account();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = sign_jwt(
        &operator,
        serde_json::json!({
            "sub": operator.public_key(),
            "name": "midge-test",
            "nats": {
                "system_account": system.public_key(),
                "type": "operator",
                "version": 2,
            },
        }),
    );
    // Accounts exist only as the JWTs preloaded here; no resolver to ask.
    let nats = nats_with_config(
        &dir,
        "operator.conf",
        &format!(
            "operator: \"{operator_jwt}\"\nsystem_account: \"{sys}\"\nresolver: MEMORY\n\
             resolver_preload: {{\n  {sys}: \"{sys_jwt}\"\n  {acc}: \"{acc_jwt}\"\n}}\n",
            sys = system.public_key(),
            sys_jwt = account_jwt(&operator, &system, "SYS", false),
            acc = account.public_key(),
            acc_jwt = account_jwt(&operator, &account, "midge", true),
        ),
    )
    .await;
    let creds = dir.0.join("midge.creds");
    write_creds(
        &creds,
        &user_jwt(&account, &user),
        &user.seed().expect("seed"),
    );
    let creds_line = format!("creds_file = \"{}\"\n", creds.display());
    let _nodes = two_nodes_carry_a_message(&nats, "nats-creds", &creds_line).await;
    // Every connection of both nodes is the user of the account, as the JWT says.
    let connections = midge_connections(&nats, "auth=1");
    assert_has_nodes(&connections);
    for c in &connections {
        assert_eq!(c["account"], account.public_key().as_str(), "{c}");
        assert_eq!(c["authorized_user"], user.public_key().as_str(), "{c}");
    }

    // The right JWT with another user's seed: the signed nonce does not match.
    let foreign = dir.0.join("foreign.creds");
    write_creds(
        &foreign,
        &user_jwt(&account, &user),
        &nkeys::KeyPair::new_user().seed().expect("seed"),
    );
    let text = refused_node_keeps_waiting(
        &nats,
        "nats-creds-foreign",
        &format!("creds_file = \"{}\"\n", foreign.display()),
    )
    .await;
    assert!(
        text.contains("uthorization"),
        "the refusal is named: {text}"
    );
}
