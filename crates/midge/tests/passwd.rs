//! `midge passwd` creates, updates and deletes password file entries that the broker then
//! accepts or refuses.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use midge_broker::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(5);

fn midge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_midge"))
        .args(args)
        .output()
        .expect("run midge")
}

fn passwd(args: &[&str]) {
    let mut all = vec!["passwd"];
    all.extend(args);
    let output = midge(&all);
    assert!(
        output.status.success(),
        "midge {all:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("midge-passwd-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A v3.1.1 CONNECT with user name and password; returns the CONNACK return code.
async fn connect_code(addr: std::net::SocketAddr, user: &str, password: &str) -> u8 {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04]; // protocol name, level 4
    body.push(0xC2); // flags: user name, password, clean session
    body.extend([0x00, 0x3C]); // keep alive 60 s
    for field in ["passwd-test", user, password] {
        body.extend((field.len() as u16).to_be_bytes());
        body.extend(field.as_bytes());
    }
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&packet).await.unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut connack))
        .await
        .expect("CONNACK in time")
        .unwrap();
    assert_eq!(connack[..3], [0x20, 0x02, 0x00], "{connack:02X?}");
    connack[3]
}

async fn start_broker(password_file: &Path) -> Server {
    let mut config = Config::default();
    config.listeners[0].bind = "127.0.0.1:0".parse().unwrap();
    config.sys.interval_secs = 0;
    config.storage.backend = midge_broker::config::StorageBackend::Memory;
    config.auth.allow_anonymous = Some(false);
    config.auth.password_file = Some(password_file.to_owned());
    Server::start(config).await.expect("broker starts")
}

#[tokio::test]
async fn passwd_creates_updates_and_deletes_users_the_broker_then_checks() {
    let dir = temp_dir("lifecycle");
    let file = dir.join("passwords");
    let f = file.to_str().unwrap();
    passwd(&["-c", "-b", f, "alice", "first"]);
    passwd(&["-b", f, "bob", "bobs"]);
    passwd(&["-b", f, "alice", "second"]);
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("alice:$argon2id$"), "{text}");
    assert!(lines[1].starts_with("bob:$argon2id$"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let server = start_broker(&file).await;
    let addr = server.local_addrs()[0];
    assert_eq!(connect_code(addr, "alice", "second").await, 0);
    assert_eq!(connect_code(addr, "alice", "first").await, 4);
    assert_eq!(connect_code(addr, "bob", "bobs").await, 0);

    passwd(&["-D", f, "bob"]);
    server.reload().await.expect("reload");
    assert_eq!(connect_code(addr, "bob", "bobs").await, 4);
    assert_eq!(connect_code(addr, "alice", "second").await, 0);
    server.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn passwd_keeps_other_lines_as_they_were() {
    let dir = temp_dir("keep");
    let file = dir.join("passwords");
    // A Mosquitto line, a comment and a blank line survive an update of another user.
    let original = "# from mosquitto\nalice:$7$101$7uMu3Vpxl+R6GBp2$AlLlV6aP5pffa77x98O7CGwmHfHP9cVTSHduCITeKqeO0D+U5glkNOjHGI1cRWxTf+kUgbqCBUdehHipxFREVw==\n\ncarol:$6$x$y\n";
    std::fs::write(&file, original).unwrap();
    passwd(&["-b", file.to_str().unwrap(), "carol", "new"]);
    let text = std::fs::read_to_string(&file).unwrap();
    let (before, after) = text.split_once("carol:").unwrap();
    assert_eq!(
        before,
        "# from mosquitto\nalice:$7$101$7uMu3Vpxl+R6GBp2$AlLlV6aP5pffa77x98O7CGwmHfHP9cVTSHduCITeKqeO0D+U5glkNOjHGI1cRWxTf+kUgbqCBUdehHipxFREVw==\n\n"
    );
    assert!(after.starts_with("$argon2id$"), "{text}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn passwd_refuses_mistakes_with_a_message() {
    let dir = temp_dir("mistakes");
    let file = dir.join("missing");
    let f = file.to_str().unwrap();
    let output = midge(&["passwd", "-b", f, "alice", "pw"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("use -c"));
    let output = midge(&["passwd", "-c", "-b", f, "a:b", "pw"]);
    assert!(!output.status.success());
    passwd(&["-c", "-b", f, "alice", "pw"]);
    let output = midge(&["passwd", "-D", f, "nobody"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("nobody"));
    // A password argument without -b is refused (it would end up in shell history by mistake).
    let output = midge(&["passwd", f, "alice", "pw"]);
    assert!(!output.status.success());
    std::fs::remove_dir_all(dir).unwrap();
}

/// `midge passwd --scram` writes an entry that serves SCRAM-SHA-256 and SCRAM-SHA-512
/// (driven by Python scramp through tests/interop/python/scram_client.py) and plain
/// passwords alike.
#[tokio::test]
async fn passwd_scram_entries_serve_both_hashes_and_plain_passwords() {
    let dir = temp_dir("scram");
    let file = dir.join("passwords");
    let f = file.to_str().unwrap();
    passwd(&[
        "-c",
        "-b",
        "--scram",
        "--iterations",
        "4096",
        f,
        "erin",
        "s3cret",
    ]);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("erin:SCRAM-SHA-256$4096:") && text.contains(",SCRAM-SHA-512$4096:"),
        "{text}"
    );
    let output = midge(&[
        "passwd",
        "-b",
        "--scram",
        "--iterations",
        "100",
        f,
        "x",
        "pw",
    ]);
    assert!(!output.status.success(), "too few iterations are refused");

    let server = start_broker(&file).await;
    let addr = server.local_addrs()[0];
    assert_eq!(connect_code(addr, "erin", "s3cret").await, 0);
    assert_eq!(connect_code(addr, "erin", "s3creT").await, 4);
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/interop/python/scram_client.py")
        .display()
        .to_string();
    for method in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
        for (password, reason) in [("s3cret", 0), ("s3creT", 0x86)] {
            let mut child = tokio::process::Command::new("python3");
            child.args([&script, "--port", &addr.port().to_string(), "login"]);
            child.args(["--method", method, "--user", "erin", "--password", password]);
            child.kill_on_drop(true);
            let out = tokio::time::timeout(Duration::from_secs(30), child.output())
                .await
                .expect("scram_client.py in time")
                .expect("python3 with scramp (scripts/test-deps.sh)");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
            let connack = &result["connect"][1];
            assert_eq!(connack["reason"], reason, "{method}: {result}");
            if reason == 0 {
                assert_eq!(connack["verified"], true, "{method}: {result}");
            }
        }
    }
    server.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}
