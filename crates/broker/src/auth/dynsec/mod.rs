//! Dynamic security compatible with Mosquitto's dynamic-security plugin (`[auth.dynsec]`):
//! clients, groups and roles kept in the plugin's JSON file, changed at run time by JSON
//! commands published to `$CONTROL/dynamic-security/v1` (replies on `…/response`) or
//! posted to the admin API.
//!
//! Concurrency: connections read the state through [`Dynsec::snapshot`], a clone of an
//! `Arc` under a read lock held for nothing else. Commands run one at a time under the
//! `writer` mutex: they clone the state, change the clone, write the file (temporary
//! file, fsync, rename), then swap the `Arc` in. Neither lock is held while anything
//! outside this module is called; MQTT commands run in order on the blocking pool
//! ([`Dynsec::submit`]) because new passwords are hashed there.

mod commands;
pub mod state;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{Map, Value, json};

pub use commands::READ_ONLY;
pub use state::{AclType, Hashed, State};

use super::{AuthError, FilterVerdict};
use crate::config::DynsecConfig;

/// Where commands are published.
pub const COMMAND_TOPIC: &str = "$CONTROL/dynamic-security/v1";
/// Where replies are published.
pub const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";
/// Topics only clients that dynsec decides for may publish to.
pub const CONTROL_PREFIX: &str = "$CONTROL/dynamic-security/";
/// The same topics as a filter: only clients that dynsec decides for may subscribe.
pub const CONTROL_FILTER: &str = "$CONTROL/dynamic-security/#";

/// MQTT command documents waiting at most; beyond, a document is answered at once with
/// an error instead of running (only clients whose roles allow publishing to
/// `$CONTROL/dynamic-security/v1` get here).
const MAX_QUEUED: usize = 1024;

/// What a command document did.
#[derive(Debug)]
pub struct Outcome {
    /// `{"responses":[…]}`, as JSON text.
    pub response: Vec<u8>,
    /// Some command changed the state: connections check their subscriptions and their
    /// user again.
    pub changed: bool,
}

type Done = Box<dyn FnOnce(Outcome) + Send>;

struct Job {
    payload: Vec<u8>,
    caller: String,
    done: Done,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    running: bool,
}

/// What authentication needs to know about one dynsec client.
#[derive(Debug, Clone)]
pub struct Login {
    /// `None`: the client has no password and cannot log in.
    pub password: Option<Hashed>,
    /// A disabled client cannot log in.
    pub disabled: bool,
    /// When set, the only client id this user may connect with.
    pub clientid: Option<String>,
}

/// The dynamic-security state shared by every listener.
pub struct Dynsec {
    path: PathBuf,
    iterations: u32,
    /// Taken by commands (before `state`), held while the file is written.
    writer: Mutex<()>,
    state: RwLock<Arc<State>>,
    /// Iterations of the decoy hash an unknown user's login costs.
    decoy_iterations: AtomicU32,
    queue: Mutex<Queue>,
}

impl std::fmt::Debug for Dynsec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dynsec")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Dynsec {
    /// Loads `file`. A missing file starts empty (it is written at the first change); a
    /// file that cannot be read or parsed is an error naming it.
    pub fn load(config: &DynsecConfig) -> Result<Arc<Self>, AuthError> {
        let path = &config.file;
        let state = match std::fs::read_to_string(path) {
            Ok(text) => State::from_json(&text).map_err(|reason| AuthError::Dynsec {
                path: path.clone(),
                reason,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), "dynamic-security file not found; starting with no clients (it is written at the first change)");
                State::default()
            }
            Err(source) => {
                return Err(AuthError::Read {
                    path: path.clone(),
                    source,
                });
            }
        };
        Ok(Arc::new(Self::with_state(path, config.iterations, state)))
    }

    fn with_state(path: &Path, iterations: u32, state: State) -> Self {
        let decoy = state.usual_iterations(iterations);
        Self {
            path: path.to_owned(),
            iterations,
            writer: Mutex::new(()),
            state: RwLock::new(Arc::new(state)),
            decoy_iterations: AtomicU32::new(decoy),
            queue: Mutex::new(Queue::default()),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state in force.
    pub fn snapshot(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether `username` is a dynsec client.
    pub fn knows(&self, username: &str) -> bool {
        self.snapshot().clients.contains_key(username)
    }

    /// What a login as `username` is checked against; `None` if dynsec does not know it.
    pub fn login(&self, username: &str) -> Option<Login> {
        let state = self.snapshot();
        let client = state.clients.get(username)?;
        Some(Login {
            password: client.password.clone(),
            disabled: client.disabled,
            clientid: client.clientid.clone(),
        })
    }

    /// A hash no password matches that costs what a usual client's check costs: checked
    /// for unknown users and for clients without a password.
    pub fn decoy(&self) -> Hashed {
        Hashed {
            hash: vec![0; 64],
            salt: vec![0; 12],
            iterations: self.decoy_iterations.load(Ordering::Relaxed),
        }
    }

    /// Whether a connection logged in as `username` at `connected_at_ms` (wall clock)
    /// must go: the client is disabled, or was deleted after that connection was made (as
    /// the plugin kicks clients by user name; a later login of that name, which another
    /// source decided, stays).
    pub fn revoked(&self, username: &str, connected_at_ms: u64) -> bool {
        let state = self.snapshot();
        match state.clients.get(username) {
            Some(c) => c.disabled,
            None => state
                .deleted
                .get(username)
                .is_some_and(|at| connected_at_ms <= *at),
        }
    }

    /// Whether dynsec decides topics for this client: a user it lists, or an anonymous
    /// client (the anonymous group, else `defaultACLAccess`).
    pub fn decides_for(&self, username: Option<&str>) -> bool {
        username.is_none_or(|u| self.knows(u))
    }

    /// `publishClientSend`.
    pub fn may_publish(&self, username: Option<&str>, topic: &str) -> bool {
        self.snapshot()
            .allows(username, AclType::PublishClientSend, topic)
    }

    /// `publishClientReceive`.
    pub fn may_read(&self, username: Option<&str>, topic: &str) -> bool {
        self.snapshot()
            .allows(username, AclType::PublishClientReceive, topic)
    }

    /// `unsubscribeLiteral`/`unsubscribePattern`.
    pub fn may_unsubscribe(&self, username: Option<&str>, filter: &str) -> bool {
        self.snapshot()
            .allows(username, AclType::UnsubscribePattern, filter)
    }

    /// `subscribeLiteral`/`subscribePattern`, then whether every topic under the filter
    /// may be received.
    pub fn subscribe_verdict(&self, username: Option<&str>, filter: &str) -> FilterVerdict {
        let state = self.snapshot();
        if !state.allows(username, AclType::SubscribePattern, filter) {
            return FilterVerdict::Denied;
        }
        state.receive_verdict(username, filter)
    }

    /// Runs a command document now (the admin API: `read_only` for a viewer). `caller`
    /// names who sent it, for the log.
    pub fn execute(&self, payload: &[u8], caller: &str, read_only: bool) -> Outcome {
        let reply = |responses: Vec<Value>| {
            serde_json::to_vec(&json!({ "responses": responses })).unwrap_or_default()
        };
        let document: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(_) => {
                return Outcome {
                    response: reply(vec![
                        json!({"command": "Unknown command", "error": "Payload not valid JSON"}),
                    ]),
                    changed: false,
                };
            }
        };
        let Some(list) = document.get("commands").and_then(Value::as_array) else {
            return Outcome {
                response: reply(vec![
                    json!({"command": "Unknown command", "error": "Invalid/missing commands"}),
                ]),
                changed: false,
            };
        };
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.snapshot();
        let mut next = (*current).clone();
        let mut changed = false;
        let mut responses = Vec::with_capacity(list.len());
        for command in list {
            let empty = Map::new();
            let cmd = command.as_object().unwrap_or(&empty);
            let name = cmd
                .get("command")
                .and_then(Value::as_str)
                .unwrap_or("Unknown command");
            let mut response = Map::new();
            response.insert("command".into(), json!(name));
            let result = if read_only && !READ_ONLY.contains(&name) {
                Err("Not authorized".to_owned())
            } else {
                // A failing command leaves the state as it was.
                let mut trial = next.clone();
                let applied = commands::apply(&mut trial, name, cmd, self.iterations);
                if applied.as_ref().is_ok_and(|done| done.changed) {
                    next = trial;
                }
                applied
            };
            match result {
                Ok(done) => {
                    if done.changed {
                        changed = true;
                        tracing::info!(caller, command = name, subject = %subject(cmd), "dynamic security changed");
                    }
                    if let Some(data) = done.data {
                        response.insert("data".into(), data);
                    }
                }
                Err(error) => {
                    tracing::debug!(caller, command = name, %error, "dynamic security command refused");
                    response.insert("error".into(), json!(error));
                }
            }
            if let Some(c) = cmd.get("correlationData") {
                response.insert("correlationData".into(), c.clone());
            }
            responses.push(Value::Object(response));
        }
        if changed {
            if let Err(e) = self.save(&next) {
                // The change stays in force; the file keeps the previous state.
                tracing::error!(path = %self.path.display(), error = %e, "dynamic-security file not written; the change holds until restart only");
            }
            self.decoy_iterations
                .store(next.usual_iterations(self.iterations), Ordering::Relaxed);
            *self.state.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        }
        Outcome {
            response: reply(responses),
            changed,
        }
    }

    /// Queues an MQTT command document; `done` gets its outcome. Documents run in the
    /// order submitted, on the blocking pool, with no lock held while `done` runs.
    pub fn submit(
        self: &Arc<Self>,
        payload: Vec<u8>,
        caller: String,
        done: impl FnOnce(Outcome) + Send + 'static,
    ) {
        let job = Job {
            payload,
            caller,
            done: Box::new(done),
        };
        let queued = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if queue.jobs.len() < MAX_QUEUED {
                queue.jobs.push_back(job);
                Ok(!std::mem::replace(&mut queue.running, true))
            } else {
                Err(job)
            }
        };
        let start = match queued {
            Ok(start) => start,
            Err(job) => {
                tracing::warn!(
                    caller = job.caller,
                    "dynamic security commands refused: {MAX_QUEUED} documents already waiting"
                );
                let response = json!({"responses": [
                    {"command": "Unknown command", "error": "Too many commands waiting"}]});
                (job.done)(Outcome {
                    response: response.to_string().into_bytes(),
                    changed: false,
                });
                return;
            }
        };
        if start {
            let me = self.clone();
            tokio::task::spawn_blocking(move || me.drain());
        }
    }

    fn drain(&self) {
        loop {
            let job = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                match queue.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        queue.running = false;
                        return;
                    }
                }
            };
            let outcome = self.execute(&job.payload, &job.caller, false);
            (job.done)(outcome);
        }
    }

    /// Writes the file atomically: a temporary file beside it, fsynced, renamed over it,
    /// and the directory fsynced.
    fn save(&self, state: &State) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(&state.to_json()).map_err(std::io::Error::other)?;
        let name = self
            .path
            .file_name()
            .map_or_else(|| "dynamic-security.json".into(), |n| n.to_string_lossy());
        let tmp = self.path.with_file_name(format!(".{name}.tmp"));
        {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                // Password hashes: readable by the broker's user only.
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&tmp)?;
            file.write_all(&text)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(dir) = std::fs::File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

/// The name a command is about, for the log (never a password).
fn subject(cmd: &Map<String, Value>) -> String {
    ["username", "groupname", "rolename", "acltype", "topic"]
        .iter()
        .filter_map(|k| {
            cmd.get(*k)
                .and_then(Value::as_str)
                .map(|v| format!("{k}={v}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}
