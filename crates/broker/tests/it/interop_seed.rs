//! What the seed-scenario interop tests (interop_go, interop_pahoc) share: building a client
//! program into a scratch directory under target/tmp, running it while reading its output line by
//! line, and the rumqttc witnesses that check the device's will: none while it lives, then
//! the will when it is killed, and the retained copy for a later subscriber.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5 as mqtt5;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{V5, text};
use crate::harness::{TIMEOUT, TestBroker};

/// Limit for compiling one client program: a cold Go build on a busy CI machine is slow.
const BUILD_TIMEOUT: Duration = Duration::from_secs(180);

/// Where the tests put what they compile: inside target/, never in the source tree.
pub fn build_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-seed")
}

/// A fresh directory under [`build_dir`] for one test's programs, removed when dropped.
pub fn scratch_dir() -> tempfile::TempDir {
    std::fs::create_dir_all(build_dir())
        .and_then(|()| tempfile::tempdir_in(build_dir()))
        .unwrap_or_else(|e| panic!("a directory in {}: {e}", build_dir().display()))
}

/// Runs a build command to completion within [`BUILD_TIMEOUT`]; Err carries its output.
pub async fn build(what: &str, command: &mut Command) -> Result<(), String> {
    std::fs::create_dir_all(build_dir()).map_err(|e| format!("{}: {e}", build_dir().display()))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the {what} build: {e}"))?;
    let out = tokio::time::timeout(BUILD_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("the {what} build did not finish within {BUILD_TIMEOUT:?}"))?
        .map_err(|e| format!("the {what} build: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "the {what} build failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Panics naming scripts/test-deps.sh: interop tests never skip, a missing tool fails them.
pub fn missing(tool: &str, problem: &str) -> ! {
    panic!(
        "{tool} is needed by this interop test but is not usable: {problem}\n\
         Install the interop clients with: scripts/test-deps.sh"
    )
}

/// A client program running alongside the test; its stdout arrives line by line, so the
/// test can act on what it has done so far. Killed if the test drops it.
pub struct LineProcess {
    what: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every stdout line so far, for failure messages.
    seen: Vec<String>,
    stderr: JoinHandle<String>,
}

impl LineProcess {
    pub fn spawn(program: &Path, args: &[String], env: &[(&str, String)]) -> Self {
        let what = format!("{} {}", program.display(), args.join(" "));
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
        let (tx, lines) = mpsc::unbounded_channel();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        tokio::spawn(async move {
            let mut line = Vec::new();
            while stdout
                .read_until(b'\n', &mut line)
                .await
                .is_ok_and(|n| n > 0)
            {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                if tx.send(text).is_err() {
                    break;
                }
                line.clear();
            }
        });
        let mut pipe = child.stderr.take().expect("piped stderr");
        let stderr = tokio::spawn(async move {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes).await;
            String::from_utf8_lossy(&bytes).into_owned()
        });
        Self {
            what,
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// The next stdout line, within what is left of `deadline`. Panics, with everything the
    /// program printed, when none comes or the program ends.
    pub async fn next_line(&mut self, deadline: Instant, waiting_for: &str) -> String {
        match tokio::time::timeout_at(deadline, self.lines.recv()).await {
            Ok(Some(line)) => {
                self.seen.push(line.clone());
                line
            }
            Ok(None) => {
                let status = self.child.wait().await;
                self.fail(&format!(
                    "ended ({status:?}) while the test waited for {waiting_for}"
                ))
                .await
            }
            Err(_) => {
                self.fail(&format!("did not print {waiting_for} in time"))
                    .await
            }
        }
    }

    /// Reads lines until one equals `expected`.
    pub async fn expect_line(&mut self, expected: &str, deadline: Instant) {
        while self.next_line(deadline, &format!("{expected:?}")).await != expected {}
    }

    /// Panics with `problem` and all the program printed; kills the program first.
    pub async fn fail(&mut self, problem: &str) -> ! {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        panic!(
            "`{}` {problem}.\nstdout:\n{}\nstderr:\n{stderr}",
            self.what,
            self.seen.join("\n")
        );
    }

    /// Every stdout line read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// SIGKILL: the program dies without a word to the broker, as a device losing power
    /// would; the kernel closes its socket. Returns how it ended.
    pub async fn kill(mut self) -> ExitStatus {
        self.child.start_kill().expect("kill the client program");
        tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .expect("the killed program exits")
            .expect("wait for the killed program")
    }
}

/// A rumqttc v5 client watching `clients/#` (where the seed devices' wills go) and `fence`.
pub async fn will_watcher(broker: &TestBroker) -> V5 {
    let mut watcher = V5::connect(broker, "will-watcher").await;
    watcher.subscribe_ok("clients/#", 1).await;
    watcher.subscribe_ok("fence", 0).await;
    watcher
}

/// A message published by another client now reaches `watcher` before anything else: the
/// live device's will has not been published.
pub async fn assert_no_will_yet(broker: &TestBroker, watcher: &mut V5) {
    let mut fencer = V5::connect(broker, "fencer").await;
    fencer.publish("fence", 0, false, "fence").await;
    let next = watcher.next_publish().await;
    assert_eq!(
        (text(&next.topic).as_str(), text(&next.payload).as_str()),
        ("fence", "fence"),
        "a will was published while its client was still connected"
    );
}

/// Kills `device` and checks that its will (`will_topic`, "offline", QoS 1, retained) is
/// published at once to `watcher` and is then kept for a later subscriber. Returns the
/// will as `watcher` got it, for version-specific checks.
pub async fn assert_will_on_kill(
    broker: &TestBroker,
    watcher: &mut V5,
    device: LineProcess,
    will_topic: &str,
) -> mqtt5::Publish {
    let status = device.kill().await;
    assert!(
        !status.success(),
        "the device was killed, not ended: {status}"
    );
    // Shorter than the watcher's own limit per event, to fail with this message instead.
    let will = tokio::time::timeout(TIMEOUT - Duration::from_secs(1), watcher.next_publish())
        .await
        .unwrap_or_else(|_| panic!("no will on {will_topic} after the device was killed"));
    assert_eq!(
        (
            text(&will.topic).as_str(),
            text(&will.payload).as_str(),
            will.qos,
            will.retain
        ),
        (will_topic, "offline", crate::harness::qos5(1), false),
        "the will of the killed device, at QoS 1, to a live subscriber without the retain flag"
    );
    // The will asked to be retained: a subscriber that comes later still learns the state.
    let mut late = V5::connect(broker, "late-subscriber").await;
    late.subscribe_ok(will_topic, 1).await;
    let kept = late.next_publish().await;
    assert_eq!(
        (
            text(&kept.topic).as_str(),
            text(&kept.payload).as_str(),
            kept.retain
        ),
        (will_topic, "offline", true),
        "the will was retained"
    );
    will
}

/// Checks `payload` is the seed's reading, `{"value":22.5,"unit":"celsius","timestamp":<unix
/// seconds>}`; panics naming `client` when it is not.
pub fn assert_seed_reading(payload: &[u8], client: &str) {
    let reading: serde_json::Value = serde_json::from_slice(payload).unwrap_or_else(|e| {
        panic!(
            "{client}: the reading is not JSON ({e}): {}",
            String::from_utf8_lossy(payload)
        )
    });
    assert_eq!(reading["value"], 22.5, "{client}: reading {reading}");
    assert_eq!(reading["unit"], "celsius", "{client}: reading {reading}");
    assert!(reading["timestamp"].is_i64(), "{client}: reading {reading}");
}
