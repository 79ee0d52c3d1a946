//! `midge ctl` against the real binary: every command, its tables and `--json`, and its
//! exit codes (1 API error, 2 usage, 3 unreachable, 4 login refused).

mod support;

use std::time::Duration;

use support::{Midge, TestDir, connect, connect_v311, free_port, subscribe_and_wait};
use tokio::net::TcpStream;

/// A broker with an admin listener on a free port and two admin users: `root`
/// (admin) and `watcher` (viewer).
async fn broker(dir: &TestDir) -> (Midge, u16) {
    let mut midge = Midge::new(dir, "interval");
    let admin_port = free_port();
    let users = dir.0.join("admin-users");
    let root = midge_broker::auth::hash_password(b"secret").unwrap();
    let watcher = midge_broker::auth::hash_password(b"look").unwrap();
    std::fs::write(&users, format!("root:{root}\nwatcher:{watcher}\n")).unwrap();
    let mut config = std::fs::read_to_string(&midge.config).unwrap();
    config.push_str(&format!(
        "\n[admin]\nbind = \"127.0.0.1:{admin_port}\"\npassword_file = \"{}\"\nviewers = [\"watcher\"]\n",
        users.display()
    ));
    std::fs::write(&midge.config, config).unwrap();
    midge.start(&[]).await;
    // The admin listener opens right after the MQTT listeners.
    let deadline = tokio::time::Instant::now() + support::START_TIMEOUT;
    while TcpStream::connect(("127.0.0.1", admin_port)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no admin listener:\n{}",
            midge.last_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (midge, admin_port)
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `midge ctl` with `--url` for `port` and the given login.
async fn ctl(port: u16, login: Option<(&str, &str)>, args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_midge"));
    command
        .arg("ctl")
        .arg("--url")
        .arg(format!("http://127.0.0.1:{port}"))
        .env_remove("MIDGE_CTL_USER")
        .env_remove("MIDGE_CTL_PASSWORD")
        .env_remove("MIDGE_CTL_URL");
    if let Some((user, password)) = login {
        command.args(["-u", user, "-P", password]);
    }
    let out = tokio::time::timeout(support::TIMEOUT, command.args(args).output())
        .await
        .expect("ctl finishes in time")
        .expect("run midge ctl");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

const ROOT: Option<(&str, &str)> = Some(("root", "secret"));

/// Rows of a table, split on runs of spaces.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[tokio::test]
async fn ctl_lists_kicks_publishes_and_reloads() {
    let dir = TestDir::new("ctl");
    let (midge, admin) = broker(&dir).await;

    // Two offline persistent sessions with one queued message each, one connected client.
    for id in ["queue-a", "queue-b"] {
        let (mut raw, _) = connect(midge.port, &connect_v311(id, false)).await;
        subscribe_and_wait(&mut raw, false, "jobs/#", 1).await;
    }
    let (mut live, _) = connect(midge.port, &connect_v311("live-1", true)).await;
    subscribe_and_wait(&mut live, false, "news", 0).await;
    let published = ctl(
        admin,
        ROOT,
        &["publish", "-t", "jobs/1", "-m", "work", "-q", "1"],
    )
    .await;
    assert_eq!(published.code, 0, "{}", published.stderr);
    assert_eq!(published.stdout.trim(), "published to jobs/1; matched 2");

    // rabbitmqctl list_queues name messages_ready messages_unacknowledged
    let queues = ctl(
        admin,
        ROOT,
        &[
            "list",
            "queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        ],
    )
    .await;
    assert_eq!(queues.code, 0, "{}", queues.stderr);
    assert_eq!(
        rows(&queues.stdout),
        [
            vec![
                "name",
                "messages_ready",
                "messages_unacknowledged",
                "consumers"
            ],
            vec!["live-1", "0", "", "1"],
            vec!["queue-a", "1", "0", "0"],
            vec!["queue-b", "1", "0", "0"],
        ]
        .iter()
        .map(|r| r
            .iter()
            .filter(|c| !c.is_empty())
            .map(|c| c.to_string())
            .collect::<Vec<_>>())
        .collect::<Vec<_>>()
    );
    // Aligned: the second column starts at the same offset on every line.
    let header = queues.stdout.lines().next().unwrap();
    let second = header.find("messages_ready").unwrap();
    for line in queues.stdout.lines().skip(1) {
        assert_ne!(
            line.as_bytes()[second],
            b' ',
            "column 2 aligned in {line:?}"
        );
        assert_eq!(line.as_bytes()[second - 1], b' ');
    }

    let json = ctl(admin, ROOT, &["--json", "list", "queues"]).await;
    let queues: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(queues.as_array().unwrap().len(), 3);
    assert_eq!(queues[1]["messages"], 1);

    let connections = ctl(
        admin,
        ROOT,
        &["list", "connections", "client_id", "consumers"],
    )
    .await;
    assert_eq!(
        rows(&connections.stdout),
        [["client_id", "consumers"], ["live-1", "1"]]
    );
    let unknown = ctl(admin, ROOT, &["list", "connections", "colour"]).await;
    assert_eq!(unknown.code, 2, "{}{}", unknown.stdout, unknown.stderr);
    assert!(
        unknown.stderr.contains("unknown column `colour`"),
        "{}",
        unknown.stderr
    );

    let subscriptions = ctl(admin, ROOT, &["list", "subscriptions"]).await;
    assert_eq!(
        rows(&subscriptions.stdout),
        [
            ["filter", "client_id", "qos"],
            ["jobs/#", "queue-a", "1"],
            ["jobs/#", "queue-b", "1"],
            ["news", "live-1", "0"]
        ]
    );
    let only_b = ctl(admin, ROOT, &["list", "subscriptions", "--client=-b"]).await;
    assert_eq!(rows(&only_b.stdout).len(), 2);

    // Retained: publish, list, delete, and delete again (the API's 404).
    ctl(
        admin,
        ROOT,
        &["publish", "-t", "sensors/t1", "-m", "21.5", "-r"],
    )
    .await;
    let retained = ctl(admin, ROOT, &["retained", "list", "sensors/#"]).await;
    assert_eq!(
        rows(&retained.stdout),
        [["topic", "qos", "payload"], ["sensors/t1", "0", "21.5"]]
    );
    let deleted = ctl(admin, ROOT, &["retained", "delete", "sensors/t1"]).await;
    assert_eq!(deleted.code, 0, "{}", deleted.stderr);
    let again = ctl(admin, ROOT, &["retained", "delete", "sensors/t1"]).await;
    assert_eq!(again.code, 1);
    assert!(
        again.stderr.contains("no retained message on `sensors/t1`"),
        "{}",
        again.stderr
    );
    assert!(again.stderr.contains("HTTP 404"), "{}", again.stderr);

    // Kick: the client's connection closes.
    let kicked = ctl(admin, ROOT, &["kick", "live-1"]).await;
    assert_eq!(
        (kicked.code, kicked.stdout.trim()),
        (0, "disconnected live-1")
    );
    let end = live.recv_within(support::TIMEOUT).await;
    assert!(
        matches!(end, Ok(None) | Err(_)),
        "connection closed: {end:?}"
    );
    let ended = ctl(admin, ROOT, &["kick", "queue-a", "--discard-session"]).await;
    assert_eq!(
        (ended.code, ended.stdout.trim()),
        (0, "ended the session of queue-a")
    );
    let missing = ctl(admin, ROOT, &["kick", "nobody"]).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing
            .stderr
            .contains("no session with client id `nobody`")
    );

    // Left: queue-b (live-1 had a clean session, queue-a was discarded).
    let status = ctl(admin, ROOT, &["status"]).await;
    assert_eq!(status.code, 0);
    let status_rows = rows(&status.stdout);
    assert!(status_rows.contains(&vec![
        "version".to_owned(),
        env!("CARGO_PKG_VERSION").to_owned()
    ]));
    assert!(
        status_rows.contains(&vec!["sessions.total".to_owned(), "1".to_owned()]),
        "{}",
        status.stdout
    );

    let reloaded = ctl(admin, ROOT, &["reload"]).await;
    assert_eq!((reloaded.code, reloaded.stdout.trim()), (0, "reloaded"));
    drop(midge);
}

#[tokio::test]
async fn ctl_exit_codes_tell_login_usage_and_network_failures_apart() {
    let dir = TestDir::new("ctl-codes");
    let (midge, admin) = broker(&dir).await;
    let wrong = ctl(admin, Some(("root", "guess")), &["status"]).await;
    assert_eq!(wrong.code, 4);
    assert!(
        wrong.stderr.contains("bad user name or password"),
        "{}",
        wrong.stderr
    );
    let anonymous = ctl(admin, None, &["status"]).await;
    assert_eq!(anonymous.code, 4);
    // A viewer reads, but may not change anything.
    let viewer = Some(("watcher", "look"));
    assert_eq!(ctl(admin, viewer, &["list", "queues"]).await.code, 0);
    let refused = ctl(admin, viewer, &["reload"]).await;
    assert_eq!(refused.code, 4);
    assert!(refused.stderr.contains("viewer"), "{}", refused.stderr);
    // Credentials from the environment.
    let from_env = tokio::process::Command::new(env!("CARGO_BIN_EXE_midge"))
        .args(["ctl", "status"])
        .env("MIDGE_CTL_URL", format!("http://127.0.0.1:{admin}"))
        .env("MIDGE_CTL_USER", "root")
        .env("MIDGE_CTL_PASSWORD", "secret")
        .output()
        .await
        .unwrap();
    assert!(
        from_env.status.success(),
        "{}",
        String::from_utf8_lossy(&from_env.stderr)
    );
    // Usage errors: clap's 2.
    assert_eq!(ctl(admin, ROOT, &["list", "everything"]).await.code, 2);
    assert_eq!(
        ctl(admin, ROOT, &["publish", "-t", "a", "-q", "5"])
            .await
            .code,
        1
    );
    let bad_url = tokio::process::Command::new(env!("CARGO_BIN_EXE_midge"))
        .args(["ctl", "--url", "ftp://x", "status"])
        .output()
        .await
        .unwrap();
    assert_eq!(bad_url.status.code(), Some(2));
    drop(midge);
    // Nobody listens: 3.
    let unreachable = ctl(free_port(), ROOT, &["status"]).await;
    assert_eq!(unreachable.code, 3, "{}", unreachable.stderr);
    assert!(
        unreachable
            .stderr
            .contains("cannot reach the admin listener")
    );
}
