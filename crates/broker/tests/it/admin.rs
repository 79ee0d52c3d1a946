//! The admin listener: access (loopback only without a password file; HTTP Basic with
//! one; viewers read only; failed logins share the MQTT rate limit), `/metrics` valid
//! under promtool with counters that move, and the REST API with its errors.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::access_support::{TempDir, broker_with, connack_v5_refused, connect};
use crate::admin_http::{get, request};
use crate::harness::{Raw, TestBroker};

/// The value of one sample, `name` with its labels as written, e.g.
/// `midge_sessions{state="online"}`.
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().expect("a number"))
        })
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

/// Runs `promtool check metrics` on `text`; panics with its findings.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (Debian package prometheus); scripts/test-deps.sh installs it");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn metrics(broker: &TestBroker) -> String {
    let answer = get(broker.admin(), "/metrics", None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.text()
}

#[tokio::test]
async fn metrics_pass_promtool_and_counters_move() {
    let broker = TestBroker::start().await;
    let answer = get(broker.admin(), "/metrics", None).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let before = answer.text();
    promtool_check(&before);
    // Listeners are named after their configured address (port 0 here), which stays the
    // same across restarts.
    let listener = "midge_connections{listener=\"mqtt:127.0.0.1:0\"}";
    assert_eq!(sample(&before, listener), 0.0);
    assert_eq!(sample(&before, "midge_connections_accepted_total"), 0.0);
    assert_eq!(
        sample(&before, "midge_messages_received_total{qos=\"0\"}"),
        0.0
    );
    assert_eq!(sample(&before, "midge_build_info{version=\"0.1.0\"}"), 1.0);
    assert!(sample(&before, "process_resident_memory_bytes") > 0.0);

    // A subscriber and a publisher: accepted, connected, one message in and one out.
    let (mut sub, _) = broker.raw_v311("sub", true).await;
    sub.subscribe_v4(1, "t/#", 1).await;
    let (mut publisher, _) = broker.raw_v311("pub", true).await;
    publisher
        .send_v4(rumqttc::Packet::Publish(rumqttc::Publish::new(
            "t/1",
            rumqttc::QoS::AtMostOnce,
            "x",
        )))
        .await;
    sub.recv_v4_publish().await;
    publisher.ping_fence().await;
    sub.ping_fence().await;
    let after = metrics(&broker).await;
    promtool_check(&after);
    assert_eq!(sample(&after, listener), 2.0);
    assert_eq!(sample(&after, "midge_connections_accepted_total"), 2.0);
    assert_eq!(sample(&after, "midge_sessions{state=\"online\"}"), 2.0);
    assert_eq!(sample(&after, "midge_subscriptions"), 1.0);
    assert_eq!(
        sample(&after, "midge_messages_received_total{qos=\"0\"}"),
        1.0
    );
    assert_eq!(
        sample(&after, "midge_messages_delivered_total{qos=\"0\"}"),
        1.0
    );
    assert_eq!(sample(&after, "midge_sessions_created_total"), 2.0);
    assert!(sample(&after, "midge_bytes_received_total") > 0.0);

    drop(publisher);
    drop(sub);
    broker
        .eventually("connections closed", |b| {
            b.stats.snapshot().clients_connected == 0
        })
        .await;
    let closed = metrics(&broker).await;
    assert_eq!(sample(&closed, "midge_sessions{state=\"online\"}"), 0.0);
    broker.shutdown().await;
}

#[tokio::test]
async fn the_store_commit_histogram_counts_commits() {
    let dir = TempDir::new("admin-store");
    let broker = TestBroker::start_with(|c| {
        c.storage.backend = midge_broker::config::StorageBackend::Redb;
        c.storage.dir = dir.path().to_owned();
        c.storage.durability = midge_broker::config::Durability::Sync;
    })
    .await;
    let before = metrics(&broker).await;
    let commits = sample(&before, "midge_store_commit_duration_seconds_count");
    // A persistent session is written to the store.
    let (mut raw, _) = broker.raw_v311("keeper", false).await;
    raw.subscribe_v4(1, "a", 1).await;
    let after = metrics(&broker).await;
    promtool_check(&after);
    let now = sample(&after, "midge_store_commit_duration_seconds_count");
    assert!(now > commits, "commits before {commits}, after {now}");
    assert_eq!(
        sample(
            &after,
            "midge_store_commit_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        now
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn unknown_paths_are_json_404s_and_health_answers() {
    let broker = TestBroker::start().await;
    let answer = get(broker.admin(), "/api/v1/nope", None).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.error_code(), "not_found");
    let health = get(broker.admin(), "/api/v1/health", None).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    broker.shutdown().await;
}

fn users(dir: &TempDir) -> std::path::PathBuf {
    let admin = midge_broker::auth::hash_password(b"secret").unwrap();
    let viewer = midge_broker::auth::hash_password(b"look").unwrap();
    dir.write("admin-users", &format!("root:{admin}\nwatcher:{viewer}\n"))
}

#[tokio::test]
async fn with_a_password_file_logins_are_required_and_viewers_only_read() {
    let dir = TempDir::new("admin-login");
    let file = users(&dir);
    let broker = TestBroker::start_with(|c| {
        c.admin.password_file = Some(file);
        c.admin.viewers = vec!["watcher".to_owned()];
    })
    .await;
    let admin = broker.admin();
    let anonymous = get(admin, "/api/v1/stats", None).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.error_code(), "unauthorized");
    assert!(
        anonymous
            .header("www-authenticate")
            .unwrap()
            .starts_with("Basic")
    );
    let wrong = get(admin, "/api/v1/stats", Some(("root", "guess"))).await;
    assert_eq!(wrong.status, 401);
    let unknown = get(admin, "/api/v1/stats", Some(("nobody", "secret"))).await;
    assert_eq!(unknown.status, 401);

    let viewer = Some(("watcher", "look"));
    assert_eq!(get(admin, "/api/v1/stats", viewer).await.status, 200);
    assert_eq!(get(admin, "/metrics", viewer).await.status, 200);
    let refused = request(admin, "POST", "/api/v1/reload", viewer, None).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.error_code(), "forbidden");

    let root = Some(("root", "secret"));
    let reloaded = request(admin, "POST", "/api/v1/reload", root, None).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    assert_eq!(reloaded.json()["reloaded"], true);

    let text = metrics_as(&broker, root).await;
    assert_eq!(sample(&text, "midge_auth_total{result=\"failure\"}"), 2.0);
    // Repeated logins come from the cache, which the reload emptied: watcher, root, and
    // root again after the reload were checked.
    assert_eq!(sample(&text, "midge_auth_total{result=\"success\"}"), 3.0);
    assert_eq!(sample(&text, "midge_auth_duration_seconds_count"), 5.0);
    broker.shutdown().await;
}

async fn metrics_as(broker: &TestBroker, login: crate::admin_http::Login<'_>) -> String {
    let answer = get(broker.admin(), "/metrics", login).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.text()
}

#[tokio::test]
async fn failed_admin_logins_spend_the_mqtt_login_budget() {
    let dir = TempDir::new("admin-limit");
    let file = users(&dir);
    let mqtt_users = dir.write(
        "mqtt-users",
        &format!(
            "alice:{}\n",
            midge_broker::auth::hash_password(b"pw").unwrap()
        ),
    );
    let broker = broker_with(|c| {
        c.admin.password_file = Some(file);
        c.auth.password_file = Some(mqtt_users);
        c.auth.rate_limit.failures_burst = 2;
        c.auth.rate_limit.failures_per_minute = 1;
    })
    .await;
    let admin = broker.admin();
    for _ in 0..2 {
        let answer = get(admin, "/api/v1/stats", Some(("root", "guess"))).await;
        assert_eq!(answer.status, 401);
    }
    // The budget is spent: the right password is refused without a check...
    let limited = get(admin, "/api/v1/stats", Some(("root", "secret"))).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.error_code(), "rate_limited");
    // ... and so is an MQTT login from the same address (v5 0x9F).
    let mut raw = Raw {
        stream: tokio::net::TcpStream::connect(broker.addr).await.unwrap(),
    };
    raw.send(&connect(true, "c", Some("alice"), Some(b"pw"), None))
        .await;
    assert_eq!(raw.recv_packet().await, connack_v5_refused(0x9F));
    broker.shutdown().await;
}

#[tokio::test]
async fn a_non_loopback_bind_without_a_password_file_is_refused_naming_the_key() {
    let text = "[admin]\nbind = \"0.0.0.0:18083\"\n";
    let error = midge_broker::Config::from_toml(text, "test.toml").unwrap_err();
    let message = error.to_string();
    assert!(message.contains("admin.password_file"), "{message}");
    assert!(message.contains("0.0.0.0:18083"), "{message}");
    // With a password file it is accepted.
    let text = "[admin]\nbind = \"0.0.0.0:18083\"\npassword_file = \"users\"\n";
    midge_broker::Config::from_toml(text, "test.toml").expect("accepted");
}

#[tokio::test]
async fn an_admin_bind_that_is_set_and_taken_stops_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut config = crate::harness::test_config();
    config.admin.bind = Some(addr);
    let error = midge_broker::Server::start(config).await.unwrap_err();
    assert!(error.to_string().contains("admin"), "{error}");
}

#[tokio::test]
async fn sessions_and_clients_are_listed_in_pages_with_queue_columns() {
    let broker = TestBroker::start().await;
    let admin = broker.admin();
    // Three offline persistent sessions, each with a queued message, and one online.
    for id in ["q-a", "q-b", "q-c"] {
        let (mut raw, _) = broker.raw_v311(id, false).await;
        raw.subscribe_v4(1, "jobs", 1).await;
        raw.send(&[0xE0, 0x00]).await;
        raw.expect_closed().await;
    }
    let (mut online, _) = broker.raw_v311("live", true).await;
    online.ping_fence().await;
    let published = request(
        admin,
        "POST",
        "/api/v1/publish",
        None,
        Some(br#"{"topic": "jobs", "payload": "work", "qos": 1}"#),
    )
    .await;
    assert_eq!(published.status, 200, "{}", published.text());
    assert_eq!(published.json()["matched"], 3);

    let first = get(admin, "/api/v1/sessions?limit=2", None).await.json();
    let ids: Vec<&str> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["live", "q-a"]);
    assert_eq!(first["next"], "q-a");
    let q_a = &first["items"][1];
    assert_eq!(q_a["messages_ready"], 1);
    assert_eq!(q_a["messages_unacknowledged"], 0);
    assert_eq!(q_a["messages"], 1);
    assert_eq!(q_a["consumers"], 0);
    assert_eq!(first["items"][0]["consumers"], 1);
    let second = get(admin, "/api/v1/sessions?limit=2&after=q-a", None)
        .await
        .json();
    let ids: Vec<&str> = second["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["q-b", "q-c"]);
    let last = get(admin, "/api/v1/sessions?limit=2&after=q-c", None)
        .await
        .json();
    assert_eq!(last["items"].as_array().unwrap().len(), 0);
    assert!(last["next"].is_null());

    // Clients: connected ones by default; filters by state and id substring.
    let clients = get(admin, "/api/v1/clients", None).await.json();
    assert_eq!(clients["items"].as_array().unwrap().len(), 1);
    assert_eq!(clients["items"][0]["client_id"], "live");
    let offline = get(admin, "/api/v1/clients?state=offline&client_id=-b", None)
        .await
        .json();
    assert_eq!(offline["items"][0]["client_id"], "q-b");
    assert_eq!(offline["items"].as_array().unwrap().len(), 1);
    let one = get(admin, "/api/v1/clients/q-c", None).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["messages_ready"], 1);

    // Errors: JSON with honest statuses.
    let missing = get(admin, "/api/v1/clients/nobody", None).await;
    assert_eq!(
        (missing.status, missing.error_code().as_str()),
        (404, "not_found")
    );
    let too_big = get(admin, "/api/v1/sessions?limit=100000", None).await;
    assert_eq!(
        (too_big.status, too_big.error_code().as_str()),
        (400, "bad_request")
    );
    let not_a_number = get(admin, "/api/v1/sessions?limit=many", None).await;
    assert_eq!(not_a_number.status, 400);
    assert_eq!(not_a_number.error_code(), "bad_request");
    let bad_state = get(admin, "/api/v1/sessions?state=sleepy", None).await;
    assert_eq!(bad_state.status, 400);
    broker.shutdown().await;
}

#[tokio::test]
async fn retained_messages_are_listed_by_filter_and_deleted() {
    let broker = TestBroker::start().await;
    let admin = broker.admin();
    for (topic, payload) in [
        ("sensors/a", "\"1\""),
        ("sensors/b", "\"2\""),
        ("other", "\"3\""),
    ] {
        let body = format!(r#"{{"topic": "{topic}", "payload": {payload}, "retain": true}}"#);
        let answer = request(
            admin,
            "POST",
            "/api/v1/publish",
            None,
            Some(body.as_bytes()),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    let binary = br#"{"topic": "bin", "payload": "/wA=", "payload_encoding": "base64", "retain": true, "qos": 1}"#;
    assert_eq!(
        request(admin, "POST", "/api/v1/publish", None, Some(binary))
            .await
            .status,
        200
    );

    let page = get(admin, "/api/v1/retained?filter=sensors/%23&limit=1", None)
        .await
        .json();
    assert_eq!(page["items"][0]["topic"], "sensors/a");
    assert_eq!(page["items"][0]["payload"], "1");
    assert_eq!(page["items"][0]["payload_base64"], "MQ==");
    assert_eq!(page["next"], "sensors/a");
    let rest = get(
        admin,
        "/api/v1/retained?filter=sensors/%23&after=sensors/a",
        None,
    )
    .await
    .json();
    assert_eq!(rest["items"][0]["topic"], "sensors/b");
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    let bin = get(admin, "/api/v1/retained?filter=bin", None).await.json();
    assert!(
        bin["items"][0]["payload"].is_null(),
        "not UTF-8: no text form"
    );
    assert_eq!(bin["items"][0]["payload_base64"], "/wA=");
    assert_eq!(bin["items"][0]["qos"], 1);

    let deleted = request(admin, "DELETE", "/api/v1/retained/sensors/a", None, None).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(broker.broker().retained.len(), 3);
    let again = request(admin, "DELETE", "/api/v1/retained/sensors/a", None, None).await;
    assert_eq!(again.status, 404);
    let wildcard = request(admin, "DELETE", "/api/v1/retained/sensors/%23", None, None).await;
    assert_eq!(wildcard.status, 400);
    let bad_filter = get(admin, "/api/v1/retained?filter=a/%23/b", None).await;
    assert_eq!(bad_filter.status, 400);
    broker.shutdown().await;
}

#[tokio::test]
async fn publish_refuses_bad_requests_with_their_status() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_packet_size = 1024).await;
    let admin = broker.admin();
    let cases: [(&[u8], u16, &str); 5] = [
        (b"not json", 400, "bad_request"),
        (br#"{"topic": "a/+"}"#, 400, "bad_request"),
        (br#"{"topic": "a", "qos": 3}"#, 400, "bad_request"),
        (
            br#"{"topic": "a", "payload": "%%", "payload_encoding": "base64"}"#,
            400,
            "bad_request",
        ),
        (br#"{"topic": "a", "colour": "red"}"#, 400, "bad_request"),
    ];
    for (body, status, code) in cases {
        let answer = request(admin, "POST", "/api/v1/publish", None, Some(body)).await;
        assert_eq!(answer.status, status, "{}", String::from_utf8_lossy(body));
        assert_eq!(answer.error_code(), code);
    }
    let large = format!(r#"{{"topic": "a", "payload": "{}"}}"#, "x".repeat(2048));
    let answer = request(
        admin,
        "POST",
        "/api/v1/publish",
        None,
        Some(large.as_bytes()),
    )
    .await;
    assert_eq!(
        (answer.status, answer.error_code().as_str()),
        (413, "payload_too_large")
    );
    let huge = vec![b' '; 3 * 1024 * 1024];
    let answer = request(admin, "POST", "/api/v1/publish", None, Some(&huge)).await;
    assert_eq!(
        (answer.status, answer.error_code().as_str()),
        (413, "payload_too_large")
    );
    // A subscriber gets what the API publishes, with its properties.
    let (mut sub, _) = broker.raw_v5(crate::harness::v5_connect("sub")).await;
    sub.subscribe_v5(
        1,
        rumqttc::v5::mqttbytes::v5::Filter::new("a", rumqttc::v5::mqttbytes::QoS::AtLeastOnce),
        None,
    )
    .await;
    let body = br#"{"topic": "a", "payload": "hi", "qos": 1, "properties": {"content_type": "text/plain", "user_properties": [["k", "v"]]}}"#;
    let answer = request(admin, "POST", "/api/v1/publish", None, Some(body)).await;
    assert_eq!(answer.json()["matched"], 1);
    let publish = sub.recv_v5_publish().await;
    assert_eq!(&publish.payload[..], b"hi");
    let props = publish.properties.unwrap();
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(props.user_properties, [("k".to_owned(), "v".to_owned())]);
    let openapi = get(admin, "/api/v1/openapi.json", None).await;
    assert_eq!(openapi.status, 200);
    assert!(openapi.json()["paths"]["/api/v1/publish"]["post"].is_object());
    broker.shutdown().await;
}

#[tokio::test]
async fn kicking_a_client_sends_administrative_action_and_can_end_its_session() {
    let broker = TestBroker::start().await;
    let admin = broker.admin();
    let mut props = crate::harness::connect_properties();
    props.session_expiry_interval = Some(3600);
    let (mut v5, _) = broker
        .raw_v5(crate::harness::v5_connect_with("dev-5", true, props))
        .await;
    let (mut v3, _) = broker.raw_v311("dev-3", false).await;
    v3.subscribe_v4(1, "x", 1).await;

    let kicked = request(admin, "DELETE", "/api/v1/clients/dev-5", None, None).await;
    assert_eq!(kicked.status, 200, "{}", kicked.text());
    assert_eq!(kicked.json()["disconnected"], true);
    // v5: DISCONNECT 0x98 administrative action; v3.1.1 has no server DISCONNECT: closed.
    v5.expect_disconnect(0x98).await;
    assert_eq!(
        request(admin, "DELETE", "/api/v1/clients/dev-3", None, None)
            .await
            .status,
        200
    );
    v3.expect_closed().await;
    broker
        .eventually("both offline", |b| b.registry.connected_len() == 0)
        .await;
    // The sessions stay (they have an expiry); kicking an offline client again is a
    // conflict, unless the session is to be discarded.
    let offline = get(admin, "/api/v1/sessions?state=offline", None)
        .await
        .json();
    assert_eq!(offline["items"].as_array().unwrap().len(), 2);
    let again = request(admin, "DELETE", "/api/v1/clients/dev-5", None, None).await;
    assert_eq!(
        (again.status, again.error_code().as_str()),
        (409, "not_connected")
    );
    let discard = request(
        admin,
        "DELETE",
        "/api/v1/clients/dev-5?discard_session=true",
        None,
        None,
    )
    .await;
    assert_eq!(discard.status, 200, "{}", discard.text());
    assert_eq!(discard.json()["session_discarded"], true);
    assert_eq!(get(admin, "/api/v1/clients/dev-5", None).await.status, 404);
    assert_eq!(broker.broker().registry.len(), 1);
    // dev-3's subscription went with its session when discarded.
    assert_eq!(broker.broker().router.len(), 1);
    let gone = request(
        admin,
        "DELETE",
        "/api/v1/clients/dev-3?discard_session=true",
        None,
        None,
    )
    .await;
    assert_eq!(gone.status, 200);
    assert_eq!(broker.broker().router.len(), 0);
    assert_eq!(
        request(admin, "DELETE", "/api/v1/clients/nobody", None, None)
            .await
            .status,
        404
    );

    // Online with discard_session: disconnected and the session does not stay.
    let (mut online, _) = broker.raw_v311("dev-x", false).await;
    online.ping_fence().await;
    let answer = request(
        admin,
        "DELETE",
        "/api/v1/clients/dev-x?discard_session=true",
        None,
        None,
    )
    .await;
    assert_eq!(answer.status, 200);
    online.expect_closed().await;
    broker
        .eventually("dev-x's session ends", |b| b.registry.is_empty())
        .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn subscriptions_are_listed_with_their_filters_in_pages() {
    let broker = TestBroker::start().await;
    let admin = broker.admin();
    let (mut a, _) = broker.raw_v311("sub-a", true).await;
    for (id, filter) in [
        (1, "a/+/b"),
        (2, "#"),
        (3, "a/#"),
        (4, "/lead"),
        (5, "$share/g/x/y"),
    ] {
        a.subscribe_v4(id, filter, 1).await;
    }
    let (mut b, _) = broker.raw_v311("sub-b", true).await;
    b.subscribe_v4(1, "a/#", 0).await;
    b.subscribe_v4(2, "$share/g/x/y", 0).await;

    let all = get(admin, "/api/v1/subscriptions", None).await.json();
    let listed: Vec<(String, String)> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["filter"].as_str().unwrap().to_owned(),
                s["client_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("#", "sub-a"),
        ("$share/g/x/y", "sub-a"),
        ("$share/g/x/y", "sub-b"),
        ("/lead", "sub-a"),
        ("a/#", "sub-a"),
        ("a/#", "sub-b"),
        ("a/+/b", "sub-a"),
    ]
    .iter()
    .map(|(f, c)| (f.to_string(), c.to_string()))
    .collect();
    assert_eq!(listed, expected);
    assert_eq!(all["items"][5]["qos"], 0);
    assert_eq!(all["items"][4]["qos"], 1);

    // Pages of 3 give the same list.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            None => "/api/v1/subscriptions?limit=3".to_owned(),
            Some(cursor) => format!(
                "/api/v1/subscriptions?limit=3&after={}",
                cursor
                    .replace('%', "%25")
                    .replace('#', "%23")
                    .replace('$', "%24")
                    .replace('/', "%2F")
                    .replace('+', "%2B")
                    .replace('\0', "%00")
            ),
        };
        let page = get(admin, &path, None).await.json();
        for s in page["items"].as_array().unwrap() {
            paged.push((
                s["filter"].as_str().unwrap().to_owned(),
                s["client_id"].as_str().unwrap().to_owned(),
            ));
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, expected);

    let by_client = get(admin, "/api/v1/subscriptions?client_id=sub-b", None)
        .await
        .json();
    assert_eq!(by_client["items"].as_array().unwrap().len(), 2);
    let by_filter = get(admin, "/api/v1/subscriptions?filter=a/%23", None)
        .await
        .json();
    assert_eq!(by_filter["items"].as_array().unwrap().len(), 2);
    let bad_cursor = get(admin, "/api/v1/subscriptions?after=x", None).await;
    assert_eq!(bad_cursor.status, 400);
    broker.shutdown().await;
}

#[tokio::test]
async fn counters_by_qos_drop_reason_and_session_event_move() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::mqttbytes::v5::{Disconnect, DisconnectReasonCode, Filter, Packet as P5};
    let broker = TestBroker::start().await;
    // A v5 subscriber that does not acknowledge, with a small Maximum Packet Size.
    let mut props = crate::harness::connect_properties();
    props.max_packet_size = Some(64);
    props.session_expiry_interval = Some(600);
    let (mut sub, _) = broker
        .raw_v5(crate::harness::v5_connect_with("slow", true, props))
        .await;
    sub.subscribe_v5(1, Filter::new("m/#", Q5::ExactlyOnce), None)
        .await;
    let (mut publisher, _) = broker.raw_v311("pub", true).await;
    let mut qos1 = rumqttc::Publish::new("m/1", rumqttc::QoS::AtLeastOnce, "a");
    qos1.pkid = 1;
    publisher.send_v4(rumqttc::Packet::Publish(qos1)).await;
    let _puback = publisher.recv_v4().await;
    let delivered = sub.recv_v5_publish().await;
    assert_eq!(delivered.qos, Q5::AtLeastOnce);
    // Too large for the subscriber: dropped for it.
    publisher
        .send_v4(rumqttc::Packet::Publish(rumqttc::Publish::new(
            "m/big",
            rumqttc::QoS::AtMostOnce,
            vec![b'x'; 200],
        )))
        .await;
    publisher.ping_fence().await;
    sub.ping_fence().await;
    // The subscriber has not acknowledged its QoS 1 delivery: one in flight.
    let text = metrics(&broker).await;
    promtool_check(&text);
    assert_eq!(
        sample(&text, "midge_messages_received_total{qos=\"1\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "midge_messages_received_total{qos=\"0\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "midge_messages_delivered_total{qos=\"1\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "midge_messages_dropped_total{reason=\"too_large\"}"),
        1.0
    );
    assert_eq!(sample(&text, "midge_inflight_messages"), 1.0);

    // Offline: the subscriber leaves without acknowledging; its delivery stays in flight
    // in the parked session, a QoS 1 message is queued, and a QoS 0 one is dropped (QoS 0
    // is not queued for offline sessions by default).
    sub.send_v5(P5::Disconnect(Disconnect::new(
        DisconnectReasonCode::NormalDisconnection,
    )))
    .await;
    broker
        .eventually("subscriber parked", |b| b.registry.connected_len() == 1)
        .await;
    let mut queued = rumqttc::Publish::new("m/2", rumqttc::QoS::AtLeastOnce, "b");
    queued.pkid = 2;
    publisher.send_v4(rumqttc::Packet::Publish(queued)).await;
    let _puback = publisher.recv_v4().await;
    publisher
        .send_v4(rumqttc::Packet::Publish(rumqttc::Publish::new(
            "m/3",
            rumqttc::QoS::AtMostOnce,
            "c",
        )))
        .await;
    publisher.ping_fence().await;
    let text = metrics(&broker).await;
    assert_eq!(sample(&text, "midge_inflight_messages"), 1.0);
    assert_eq!(sample(&text, "midge_queued_messages"), 1.0);
    assert_eq!(
        sample(&text, "midge_messages_dropped_total{reason=\"queue\"}"),
        1.0
    );
    assert_eq!(sample(&text, "midge_sessions{state=\"offline\"}"), 1.0);

    // Back with the session: resumed.
    let mut props = crate::harness::connect_properties();
    props.session_expiry_interval = Some(600);
    let (_back, _) = broker
        .raw_v5(crate::harness::v5_connect_with("slow", false, props))
        .await;
    let text = metrics(&broker).await;
    assert_eq!(sample(&text, "midge_sessions_resumed_total"), 1.0);
    assert_eq!(sample(&text, "midge_sessions_created_total"), 2.0);
    broker.shutdown().await;
}

#[tokio::test]
async fn refused_connects_are_counted_by_reason() {
    let dir = TempDir::new("admin-refused");
    let users = dir.write(
        "mqtt-users",
        &format!(
            "alice:{}\n",
            midge_broker::auth::hash_password(b"pw").unwrap()
        ),
    );
    let broker = broker_with(|c| c.auth.password_file = Some(users)).await;
    let mut raw = crate::access_support::raw(&broker).await;
    raw.send(&connect(true, "c1", Some("alice"), Some(b"nope"), None))
        .await;
    raw.recv_packet().await;
    let mut raw = crate::access_support::raw(&broker).await;
    raw.send(&connect(true, "c2", None, None, None)).await;
    raw.recv_packet().await;
    let text = metrics(&broker).await;
    promtool_check(&text);
    assert_eq!(
        sample(
            &text,
            "midge_connect_rejected_total{reason=\"bad_credentials\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "midge_connect_rejected_total{reason=\"not_authorized\"}"
        ),
        1.0
    );
    assert_eq!(sample(&text, "midge_auth_total{result=\"failure\"}"), 1.0);
    broker.shutdown().await;
}

/// The metric names in the Grafana dashboard's queries.
fn dashboard_metrics(dashboard: &str) -> Vec<String> {
    let is_name = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    dashboard
        .split(|c: char| !is_name(c))
        .filter(|word| word.starts_with("midge_") || word.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_metric_the_grafana_dashboard_uses_is_exported() {
    let dir = TempDir::new("admin-dashboard");
    // With a store, so the store's metrics are there too.
    let broker = TestBroker::start_with(|c| {
        c.storage.backend = midge_broker::config::StorageBackend::Redb;
        c.storage.dir = dir.path().to_owned();
    })
    .await;
    let text = metrics(&broker).await;
    let dashboard = include_str!("../../../../contrib/grafana/midge.json");
    let json: serde_json::Value = serde_json::from_str(dashboard).expect("dashboard is JSON");
    assert!(json["panels"].as_array().unwrap().len() >= 10);
    let used = dashboard_metrics(dashboard);
    assert!(used.len() >= 20, "{used:?}");
    for name in used {
        let exported = text
            .lines()
            .any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")));
        assert!(
            exported,
            "the dashboard uses {name}, which /metrics does not export"
        );
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn client_detail_is_answered_by_the_connection_itself() {
    let broker = TestBroker::start().await;
    let admin = broker.admin();
    let mut connect = crate::harness::v5_connect("detail");
    connect.keep_alive = 30;
    let login = rumqttc::v5::mqttbytes::v5::Login::new("someone", "");
    let mut raw = broker.raw().await;
    raw.send_v5(rumqttc::v5::mqttbytes::v5::Packet::Connect(
        connect,
        None,
        Some(login),
    ))
    .await;
    let _connack = raw.recv_v5().await;
    raw.subscribe_v5(
        1,
        rumqttc::v5::mqttbytes::v5::Filter::new("d/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce),
        None,
    )
    .await;
    let local = raw.stream.local_addr().unwrap();
    let detail = get(admin, "/api/v1/clients/detail", None).await;
    assert_eq!(detail.status, 200, "{}", detail.text());
    let d = detail.json();
    let c = &d["connection"];
    assert_eq!(c["address"], local.to_string());
    assert_eq!(c["listener"], "mqtt:127.0.0.1:0");
    assert_eq!(c["protocol"], "5.0");
    assert_eq!(c["username"], "someone");
    assert_eq!(c["keep_alive"], 30);
    // From CONNECT on: the SUBSCRIBE at least.
    assert!(c["bytes_received"].as_u64().unwrap() >= 8, "{c}");
    assert!(c["bytes_sent"].as_u64().unwrap() > 4);
    let since = c["connected_at_ms"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(since <= now && now - since < 60_000);
    assert_eq!(d["subscriptions"], 1);
    assert_eq!(d["messages_unacknowledged"], 0);
    // The connection goes on serving after answering.
    raw.ping_fence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn the_dashboard_in_headless_chromium_lists_kicks_and_deletes() {
    crate::interop_util::require(crate::interop_util::Tool::MqttJs);
    let dir = TempDir::new("admin-dashboard-browser");
    let file = users(&dir);
    let broker = TestBroker::start_with(|c| c.admin.password_file = Some(file)).await;
    // The page itself is served only with a login.
    assert_eq!(get(broker.admin(), "/", None).await.status, 401);
    let page = get(broker.admin(), "/", Some(("root", "secret"))).await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().contains("<title>midge</title>"));

    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let js = crate::interop_util::repo_root().join("tests/interop/js");
    let run = tokio::process::Command::new("node")
        .args([
            "dashboard.mjs".to_owned(),
            format!("http://{}/", broker.admin()),
            format!("mqtt://127.0.0.1:{}", broker.port()),
            "root".to_owned(),
            "secret".to_owned(),
            screenshot.display().to_string(),
        ])
        .current_dir(js)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("the browser test finishes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for step in [
        "logged in: version ",
        "device listed",
        "details shown",
        "device kicked: reason 152",
        "retained listed",
        "retained deleted",
        "live message shown",
    ] {
        assert!(stdout.contains(step), "{step} missing from {stdout}");
    }
    assert!(broker.broker().retained.is_empty());
    let png = std::fs::read(&screenshot).expect("screenshot saved");
    assert!(png.starts_with(b"\x89PNG"));
    broker.shutdown().await;
}

#[tokio::test]
async fn clients_are_filtered_by_user_name_and_address() {
    let broker = TestBroker::start_with(|c| c.auth.allow_anonymous = Some(true)).await;
    let admin = broker.admin();
    let mut kept = Vec::new();
    for (id, user, source) in [
        ("c-1", "alice", "127.0.0.1"),
        ("c-2", "bob", "127.0.0.2"),
        ("c-3", "alice", "127.0.0.2"),
    ] {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let mut raw = Raw {
            stream: socket.connect(broker.addr).await.unwrap(),
        };
        raw.send(&connect(true, id, Some(user), None, None)).await;
        raw.recv_packet().await;
        kept.push(raw);
    }
    let ids = |answer: &serde_json::Value| -> Vec<String> {
        answer["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["client_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let alice = get(admin, "/api/v1/clients?username=alice", None)
        .await
        .json();
    assert_eq!(ids(&alice), ["c-1", "c-3"]);
    assert_eq!(alice["items"][1]["connection"]["username"], "alice");
    let second = get(admin, "/api/v1/clients?address=127.0.0.2", None)
        .await
        .json();
    assert_eq!(ids(&second), ["c-2", "c-3"]);
    let both = get(
        admin,
        "/api/v1/clients?address=127.0.0.2&username=alice",
        None,
    )
    .await
    .json();
    assert_eq!(ids(&both), ["c-3"]);
    // Paged: one at a time, following next.
    let first = get(admin, "/api/v1/clients?username=alice&limit=1", None)
        .await
        .json();
    assert_eq!(
        (ids(&first), first["next"].as_str()),
        (vec!["c-1".to_owned()], Some("c-1"))
    );
    let rest = get(
        admin,
        "/api/v1/clients?username=alice&limit=1&after=c-1",
        None,
    )
    .await
    .json();
    assert_eq!(ids(&rest), ["c-3"]);
    let refused = get(admin, "/api/v1/clients?username=alice&state=offline", None).await;
    assert_eq!(refused.status, 400);
    broker.shutdown().await;
}

#[tokio::test]
async fn idle_admin_connections_are_capped() {
    let broker = TestBroker::start().await;
    let admin = broker.admin();
    // 64 connections that send nothing take every slot.
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    // Give the accept loop time to take them all.
    tokio::time::sleep(crate::harness::QUIET).await;
    let waiting = tokio::spawn(async move { get(admin, "/api/v1/health", None).await });
    tokio::time::sleep(crate::harness::QUIET).await;
    assert!(!waiting.is_finished(), "served beyond the connection cap");
    // One leaves: the waiting request is served.
    drop(idle.pop());
    let answer = tokio::time::timeout(crate::harness::TIMEOUT, waiting)
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert_eq!(answer.status, 200);
    broker.shutdown().await;
}

/// Opens `path` and returns the connection, with what it sent so far.
async fn open_stream(admin: std::net::SocketAddr, path: &str) -> (tokio::net::TcpStream, String) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    (stream, String::new())
}

/// Reads from `stream` into `seen` until it contains `wanted`, bounded by TIMEOUT.
async fn read_until(stream: &mut tokio::net::TcpStream, seen: &mut String, wanted: &str) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + crate::harness::TIMEOUT;
    while !seen.contains(wanted) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{wanted} not seen in {seen}"))
            .unwrap();
        assert!(n > 0, "closed before {wanted}: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test]
async fn the_live_view_streams_matching_messages_until_the_reader_goes() {
    let broker = TestBroker::start().await;
    let admin = broker.admin();
    let (mut stream, mut seen) = open_stream(admin, "/api/v1/live?filter=live/%23").await;
    read_until(&mut stream, &mut seen, ": live view of live/#").await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(
        seen.to_ascii_lowercase()
            .contains("content-type: text/event-stream")
    );
    assert_eq!(broker.broker().router.len(), 1);
    let (mut publisher, _) = broker.raw_v311("pub", true).await;
    for (topic, payload) in [("other", "no"), ("live/a", "first"), ("live/b/c", "second")] {
        publisher
            .send_v4(rumqttc::Packet::Publish(rumqttc::Publish::new(
                topic,
                rumqttc::QoS::AtMostOnce,
                payload,
            )))
            .await;
    }
    read_until(&mut stream, &mut seen, r#""payload":"second""#).await;
    assert!(seen.contains(r#"data: {"payload":"first","payload_base64":"Zmlyc3Q=","qos":0,"retain":false,"topic":"live/a"}"#), "{seen}");
    assert!(!seen.contains(r#""topic":"other""#), "{seen}");
    // Bad filters are refused.
    assert_eq!(
        get(admin, "/api/v1/live?filter=a/%23/b", None).await.status,
        400
    );
    assert_eq!(get(admin, "/api/v1/live", None).await.status, 400);
    // The reader goes: the subscription goes too (noticed at the next message).
    drop(stream);
    publisher
        .send_v4(rumqttc::Packet::Publish(rumqttc::Publish::new(
            "live/x",
            rumqttc::QoS::AtMostOnce,
            "after",
        )))
        .await;
    broker
        .eventually("the live view's subscription ends", |b| b.router.is_empty())
        .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn live_views_are_capped() {
    let broker = TestBroker::start().await;
    let admin = broker.admin();
    let mut open = Vec::new();
    for _ in 0..16 {
        let (mut stream, mut seen) = open_stream(admin, "/api/v1/live?filter=%23").await;
        read_until(&mut stream, &mut seen, ": live view of #").await;
        open.push(stream);
    }
    let refused = get(admin, "/api/v1/live?filter=%23", None).await;
    assert_eq!(
        (refused.status, refused.error_code().as_str()),
        (429, "too_many_live_views")
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn the_admin_listener_speaks_https_with_admin_tls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = crate::pki::Pki::new("admin-tls");
    let server = pki.server("admin");
    let broker = TestBroker::start_with(|c| {
        c.admin.tls = Some(midge_broker::config::AdminTlsConfig {
            cert: server.cert_path.clone(),
            key: server.key_path.clone(),
        });
    })
    .await;
    let config = crate::pki::client_config(&pki.ca_path, None, crate::pki::ALL_VERSIONS);
    let mut tls = crate::pki::tls_connect(broker.admin().port(), config)
        .await
        .expect("TLS handshake with the admin listener");
    tls.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(crate::harness::TIMEOUT, tls.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(r#""status":"ok""#), "{text}");
    // Plain HTTP is not served on it: the handshake fails and the connection closes.
    let mut plain = tokio::net::TcpStream::connect(broker.admin())
        .await
        .unwrap();
    plain
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(crate::harness::TIMEOUT, plain.read_to_end(&mut answer))
        .await
        .expect("closed");
    assert!(!answer.starts_with(b"HTTP/1.1 200"));
    broker.shutdown().await;
}

#[tokio::test]
async fn reload_keeps_clients_connected_and_refuses_a_bad_file_with_409() {
    let dir = TempDir::new("admin-reload");
    let file = users(&dir);
    let broker = TestBroker::start_with(|c| c.admin.password_file = Some(file.clone())).await;
    let admin = broker.admin();
    let root = Some(("root", "secret"));
    let (mut client, _) = broker.raw_v311("stays", true).await;
    let reloaded = request(admin, "POST", "/api/v1/reload", root, None).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    client.ping_fence().await;
    // A broken file: refused with the file and line, and the users in force stay.
    std::fs::write(&file, "root:not-a-hash\n").unwrap();
    let refused = request(admin, "POST", "/api/v1/reload", root, None).await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert_eq!(refused.error_code(), "reload_failed");
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains(&file.display().to_string()) && message.contains("line 1"),
        "{message}"
    );
    // The users in force stay: watcher, not in the broken file and not yet logged in
    // (so checked against the file, not the cache), still logs in.
    let watcher = Some(("watcher", "look"));
    assert_eq!(get(admin, "/api/v1/health", watcher).await.status, 200);
    client.ping_fence().await;
    broker.shutdown().await;
}
