//! The plugin's file format, ACL evaluation, the commands, atomic writes, and concurrent
//! readers while commands run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

use super::state::{AclType, State};
use super::*;

/// Written by Debian's `mosquitto_ctrl dynsec init fixture.json admin pw`, unchanged.
const INIT_FILE: &str = include_str!("init-fixture.json");

fn temp_path(name: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("midge-dynsec-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn dynsec_with(text: &str) -> Arc<Dynsec> {
    let path = temp_path("dynamic-security.json");
    std::fs::write(&path, text).unwrap();
    Dynsec::load(&DynsecConfig {
        file: path,
        iterations: 10,
    })
    .unwrap()
}

/// Runs one command document; returns the responses.
fn run(dynsec: &Dynsec, commands: Value) -> Vec<Value> {
    let outcome = dynsec.execute(commands.to_string().as_bytes(), "test", false);
    let reply: Value = serde_json::from_slice(&outcome.response).unwrap();
    reply["responses"].as_array().unwrap().clone()
}

/// Runs commands that must all succeed.
fn ok(dynsec: &Dynsec, commands: Value) {
    for response in run(dynsec, json!({ "commands": commands })) {
        assert!(response.get("error").is_none(), "{response}");
    }
}

#[test]
fn a_file_made_by_mosquitto_ctrl_init_loads_and_its_password_verifies() {
    let state = State::from_json(INIT_FILE).unwrap();
    let admin = &state.clients["admin"];
    assert_eq!(admin.textname.as_deref(), Some("Dynsec admin user"));
    let hash = admin.password.as_ref().unwrap();
    assert_eq!(hash.iterations, 101);
    assert!(hash.verify(b"pw"));
    assert!(!hash.verify(b"pW"));
    // The admin role lets it send commands and read the replies, nothing else.
    let admin = Some("admin");
    assert!(state.allows(admin, AclType::PublishClientSend, COMMAND_TOPIC));
    assert!(!state.allows(admin, AclType::PublishClientSend, "a/b"));
    assert!(state.allows(admin, AclType::SubscribePattern, RESPONSE_TOPIC));
    assert!(state.allows(admin, AclType::SubscribePattern, "$SYS/broker/#"));
    // Defaults: no publishing or subscribing without an ACL; receiving allowed.
    assert!(!state.allows(None, AclType::PublishClientSend, "a"));
    assert!(!state.allows(None, AclType::SubscribePattern, "a"));
    assert!(state.allows(None, AclType::PublishClientReceive, "a"));
}

#[test]
fn the_file_format_round_trips() {
    let dynsec = dynsec_with(INIT_FILE);
    ok(
        &dynsec,
        json!([
            {"command": "createRole", "rolename": "r", "textname": "R", "acls": [
                {"acltype": "subscribeLiteral", "topic": "x/+", "priority": 3, "allow": true}]},
            {"command": "createGroup", "groupname": "g", "roles": [{"rolename": "r", "priority": 2}]},
            {"command": "createClient", "username": "u", "password": "p", "clientid": "cid",
             "textdescription": "d", "roles": [{"rolename": "r"}]},
            {"command": "addGroupClient", "groupname": "g", "username": "u", "priority": 7},
            {"command": "disableClient", "username": "u"},
            {"command": "setAnonymousGroup", "groupname": "g"},
            {"command": "setDefaultACLAccess", "acls": [{"acltype": "subscribe", "allow": true}]},
        ]),
    );
    let text = std::fs::read_to_string(dynsec.path()).unwrap();
    let saved: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(saved["anonymousGroup"], "g");
    assert_eq!(
        saved["groups"][0]["clients"],
        json!([{"username": "u", "priority": 7}])
    );
    assert_eq!(saved["clients"][1]["disabled"], true);
    let mut reloaded = State::from_json(&text).unwrap();
    reloaded.deleted = dynsec.snapshot().deleted.clone();
    assert_eq!(reloaded, *dynsec.snapshot());
    // Nothing left beside it.
    let dir = dynsec.path().parent().unwrap();
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 1);
}

#[test]
fn damaged_files_are_refused_with_the_reason() {
    for (text, reason) in [
        ("{", "not JSON"),
        ("[]", "not a JSON object"),
        (r#"{"clients": 3}"#, "`clients` is not an array"),
        (r#"{"clients": [{"password": "x"}]}"#, "no `username`"),
        (
            r#"{"clients": [{"username": "u", "password": "AAAA", "salt": "AAAA", "iterations": 5}]}"#,
            "64 bytes",
        ),
        (
            r#"{"roles": [{"rolename": "r", "acls": [{"acltype": "nope", "topic": "a"}]}]}"#,
            "acltype",
        ),
        (
            r#"{"defaultACLAccess": {"subscribe": "yes"}}"#,
            "not a boolean",
        ),
    ] {
        let error = State::from_json(text).unwrap_err();
        assert!(error.contains(reason), "{text}: {error}");
    }
}

#[test]
fn acls_follow_priority_then_client_roles_then_groups() {
    let dynsec = dynsec_with("{}");
    ok(
        &dynsec,
        json!([
            {"command": "createRole", "rolename": "low", "acls": [
                {"acltype": "publishClientSend", "topic": "a/#", "allow": true}]},
            {"command": "createRole", "rolename": "high", "acls": [
                {"acltype": "publishClientSend", "topic": "a/b", "allow": false},
                {"acltype": "publishClientSend", "topic": "a/+", "priority": 5, "allow": true}]},
            {"command": "createRole", "rolename": "grouprole", "acls": [
                {"acltype": "publishClientSend", "topic": "g/#", "allow": true},
                {"acltype": "publishClientSend", "topic": "a/c", "allow": false}]},
            {"command": "createGroup", "groupname": "g", "roles": [{"rolename": "grouprole"}]},
            {"command": "createClient", "username": "u", "roles": [{"rolename": "low", "priority": 1}]},
        ]),
    );
    let may = |topic: &str| dynsec.may_publish(Some("u"), topic);
    assert!(may("a/b"));
    assert!(!may("b"));
    // A higher-priority role decides first: within it, the higher-priority ACL.
    ok(
        &dynsec,
        json!([{"command": "addClientRole", "username": "u", "rolename": "high", "priority": 2}]),
    );
    assert!(
        may("a/b"),
        "a/+ (priority 5) comes before a/b in the same role"
    );
    assert!(may("a/c"));
    ok(
        &dynsec,
        json!([{"command": "removeRoleACL", "rolename": "high", "acltype": "publishClientSend", "topic": "a/+"}]),
    );
    assert!(
        !may("a/b"),
        "the high role's deny decides before the low role"
    );
    assert!(may("a/x"));
    // Group roles come after the client's own roles.
    ok(
        &dynsec,
        json!([{"command": "addGroupClient", "groupname": "g", "username": "u"}]),
    );
    assert!(may("a/c"), "the client's own role allowed a/c first");
    assert!(may("g/1"));
    // Anonymous clients: the anonymous group, else the defaults.
    assert!(!dynsec.may_publish(None, "g/1"));
    ok(
        &dynsec,
        json!([{"command": "setAnonymousGroup", "groupname": "g"}]),
    );
    assert!(dynsec.may_publish(None, "g/1"));
    assert!(!dynsec.may_publish(None, "a/c"));
    ok(
        &dynsec,
        json!([{"command": "setDefaultACLAccess", "acls": [{"acltype": "publishClientSend", "allow": true}]}]),
    );
    assert!(dynsec.may_publish(None, "z"));
    assert!(
        !dynsec.may_publish(None, "a/c"),
        "an ACL still beats the default"
    );
}

#[test]
fn subscribe_types_and_receive_verdicts() {
    let dynsec = dynsec_with("{}");
    ok(
        &dynsec,
        json!([
            {"command": "createRole", "rolename": "r", "acls": [
                {"acltype": "subscribeLiteral", "topic": "lit/+", "allow": true},
                {"acltype": "subscribePattern", "topic": "pat/#", "allow": true},
                {"acltype": "subscribePattern", "topic": "#", "allow": true},
                {"acltype": "subscribePattern", "topic": "pat/secret/#", "priority": 1, "allow": false},
                {"acltype": "publishClientReceive", "topic": "pat/hidden", "allow": false}]},
            {"command": "createClient", "username": "u", "roles": [{"rolename": "r"}]},
        ]),
    );
    let verdict = |filter: &str| dynsec.subscribe_verdict(Some("u"), filter);
    assert_eq!(verdict("lit/+"), FilterVerdict::Allowed);
    assert_eq!(verdict("pat/secret/x"), FilterVerdict::Denied);
    assert_eq!(verdict("pat/a/+"), FilterVerdict::Allowed);
    // `pat/#` covers a topic whose delivery is denied: checked per delivery.
    assert_eq!(verdict("pat/#"), FilterVerdict::Partly);
    assert!(!dynsec.may_read(Some("u"), "pat/hidden"));
    assert!(dynsec.may_read(Some("u"), "pat/shown"));
    // A wildcard at the first level does not reach `$` topics.
    assert_eq!(verdict("$SYS/x"), FilterVerdict::Denied);
    // An unknown user is not dynsec's to decide.
    assert!(!dynsec.decides_for(Some("stranger")));
    assert!(dynsec.decides_for(Some("u")) && dynsec.decides_for(None));
}

#[test]
fn commands_reply_as_the_plugin_does() {
    let dynsec = dynsec_with(INIT_FILE);
    let replies = run(
        &dynsec,
        json!({"commands": [
            {"command": "createClient", "username": "admin", "correlationData": "c1"},
            {"command": "createClient", "username": "x", "roles": [{"rolename": "nope"}]},
            {"command": "getClient", "username": "admin"},
            {"command": "listClients", "count": 1, "offset": 0},
            {"command": "getDefaultACLAccess"},
            {"command": "noSuchCommand"},
            {"command": "deleteRole", "rolename": "admin"},
            {"command": "getClient", "username": "admin"},
        ]}),
    );
    assert_eq!(
        replies[0],
        json!({"command": "createClient", "error": "Client already exists", "correlationData": "c1"})
    );
    assert_eq!(replies[1]["error"], "Role not found");
    assert_eq!(
        replies[2],
        json!({"command": "getClient", "data": {"client": {"username": "admin",
            "textname": "Dynsec admin user", "roles": [{"rolename": "admin"}], "groups": []}}})
    );
    assert_eq!(
        replies[3]["data"],
        json!({"totalCount": 1, "clients": ["admin"]})
    );
    assert_eq!(
        replies[4]["data"]["acls"][0],
        json!({"acltype": "publishClientSend", "allow": false})
    );
    assert_eq!(replies[5]["error"], "Unknown command");
    assert!(replies[6].get("error").is_none());
    assert_eq!(replies[7]["data"]["client"]["roles"], json!([]));
    assert!(!dynsec.knows("x"), "a failed command changed the state");

    let bad = dynsec.execute(b"not json", "test", false);
    assert!(!bad.changed);
    assert!(String::from_utf8_lossy(&bad.response).contains("Payload not valid JSON"));

    // A viewer (admin API) may read only.
    let viewer = dynsec.execute(
        br#"{"commands":[{"command":"listRoles"},{"command":"createRole","rolename":"v"}]}"#,
        "viewer",
        true,
    );
    let reply: Value = serde_json::from_slice(&viewer.response).unwrap();
    assert!(reply["responses"][0].get("error").is_none());
    assert_eq!(reply["responses"][1]["error"], "Not authorized");
    assert!(!viewer.changed);
}

#[test]
fn disabled_and_deleted_clients_are_revoked() {
    let dynsec = dynsec_with(INIT_FILE);
    ok(
        &dynsec,
        json!([{"command": "createClient", "username": "u", "password": "p"}]),
    );
    let before = crate::model::now_millis();
    assert!(!dynsec.revoked("u", before));
    ok(
        &dynsec,
        json!([{"command": "disableClient", "username": "u"}]),
    );
    assert!(dynsec.revoked("u", before) && dynsec.login("u").unwrap().disabled);
    ok(
        &dynsec,
        json!([{"command": "enableClient", "username": "u"}]),
    );
    assert!(!dynsec.revoked("u", before));
    ok(
        &dynsec,
        json!([{"command": "deleteClient", "username": "u"}]),
    );
    assert!(dynsec.revoked("u", before) && dynsec.login("u").is_none());
    // A login of that name after the deletion (another source knows it) stays.
    let deleted_at = dynsec.snapshot().deleted["u"];
    assert!(!dynsec.revoked("u", deleted_at + 1));
    // A name dynsec never had is not revoked.
    assert!(!dynsec.revoked("someone", before));
    ok(
        &dynsec,
        json!([{"command": "createClient", "username": "u", "password": "p"}]),
    );
    assert!(!dynsec.revoked("u", before));
    let hash = dynsec.login("u").unwrap().password.unwrap();
    assert!(hash.verify(b"p") && hash.iterations == 10);
    // The decoy costs what most clients' checks cost.
    assert_eq!(dynsec.decoy().iterations, 101, "admin's 101 wins a tie");
    ok(
        &dynsec,
        json!([{"command": "createClient", "username": "v", "password": "p"}]),
    );
    assert_eq!(dynsec.decoy().iterations, 10);
}

/// Many threads authorize while commands change the roles they read: every reader sees
/// a whole state (the ACL is there or not, never half), and nothing deadlocks.
#[test]
fn concurrent_authorization_and_commands() {
    let dynsec = dynsec_with(INIT_FILE);
    ok(
        &dynsec,
        json!([
            {"command": "createRole", "rolename": "r"},
            {"command": "createClient", "username": "u", "roles": [{"rolename": "r"}]},
        ]),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..8)
        .map(|i| {
            let (dynsec, stop) = (dynsec.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut checks = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let state = dynsec.snapshot();
                    // Both ACLs are added and removed in one document: a snapshot has
                    // both or neither.
                    let a = state.allows(Some("u"), AclType::PublishClientSend, "t/a");
                    let b = state.allows(Some("u"), AclType::SubscribePattern, "t/b");
                    assert_eq!(a, b, "a half-applied command was seen");
                    let _ = dynsec.subscribe_verdict(Some("u"), "t/#");
                    let _ = dynsec.may_read(Some(if i % 2 == 0 { "u" } else { "admin" }), "t/x");
                    checks += 1;
                }
                checks
            })
        })
        .collect();
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let dynsec = dynsec.clone();
            std::thread::spawn(move || {
                for n in 0..50 {
                    let (add, remove) = (
                        json!({"commands": [
                            {"command": "addRoleACL", "rolename": "r", "acltype": "publishClientSend", "topic": "t/a", "allow": true},
                            {"command": "addRoleACL", "rolename": "r", "acltype": "subscribePattern", "topic": "t/b", "allow": true},
                            {"command": "createClient", "username": format!("w{w}-{n}")},
                        ]}),
                        json!({"commands": [
                            {"command": "removeRoleACL", "rolename": "r", "acltype": "publishClientSend", "topic": "t/a"},
                            {"command": "removeRoleACL", "rolename": "r", "acltype": "subscribePattern", "topic": "t/b"},
                        ]}),
                    );
                    let _ = dynsec.execute(add.to_string().as_bytes(), "w", false);
                    let _ = dynsec.execute(remove.to_string().as_bytes(), "w", false);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    // Every client either writer created is in the state and in the file.
    let state = State::from_json(&std::fs::read_to_string(dynsec.path()).unwrap()).unwrap();
    assert_eq!(state.clients.len(), 2 + 100);
    assert_eq!(dynsec.snapshot().clients.len(), 2 + 100);
}

/// Submitted documents run in order, off the caller's thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_commands_run_in_order() {
    let dynsec = dynsec_with("{}");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for n in 0..20 {
        let tx = tx.clone();
        let doc = if n == 0 {
            json!({"commands": [{"command": "createRole", "rolename": "r"}]})
        } else {
            json!({"commands": [{"command": "addRoleACL", "rolename": "r",
                "acltype": "publishClientSend", "topic": format!("t/{n}"), "allow": true}]})
        };
        dynsec.submit(doc.to_string().into_bytes(), "t".into(), move |o| {
            let _ = tx.send(o);
        });
    }
    for _ in 0..20 {
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8(outcome.response).unwrap();
        assert!(!text.contains("error"), "{text}");
    }
    assert_eq!(
        dynsec.snapshot().roles["r"]
            .acls_of(AclType::PublishClientSend)
            .len(),
        19
    );
}

/// A full queue answers at once with an error rather than dropping a document silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_with_an_error() {
    let dynsec = dynsec_with("{}");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let total = MAX_QUEUED + 50;
    let refused = {
        // Commands wait for the writer lock: the queue fills.
        let _writer = dynsec.writer.lock().unwrap();
        for _ in 0..total {
            let tx = tx.clone();
            let doc = json!({"commands": [{"command": "getDefaultACLAccess"}]});
            dynsec.submit(doc.to_string().into_bytes(), "t".into(), move |o| {
                let _ = tx.send(o);
            });
        }
        let mut refused = 0;
        while let Ok(outcome) = rx.try_recv() {
            let text = String::from_utf8_lossy(&outcome.response).into_owned();
            assert!(text.contains("Too many commands waiting"), "{text}");
            refused += 1;
        }
        // One document may already have left the queue for the blocked drainer.
        assert!((49..=50).contains(&refused), "{refused}");
        refused
    };
    for _ in 0..total - refused {
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&outcome.response).into_owned();
        assert!(
            text.contains("publishClientSend") && !text.contains("error"),
            "{text}"
        );
    }
}
