//! Typed configuration: defaults, a TOML file, `MIDGE_SECTION__KEY` environment overrides,
//! and validation that names the key at fault.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a configuration was refused. The message names the file, the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type.
    /// `message` is toml's, which gives the line, the column and the key.
    #[error("{origin}: {message}")]
    Parse {
        /// The file path, or where the text came from.
        origin: String,
        /// toml's description, with line and key.
        message: String,
    },
    /// An environment override could not be applied.
    #[error("environment variable {var}: {reason}")]
    Env {
        /// The variable.
        var: String,
        /// Why.
        reason: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{origin}: invalid value for `{key}`: {reason}")]
    Invalid {
        /// The file path, or where the text came from.
        origin: String,
        /// Dotted key, e.g. `mqtt.max_inflight`.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners; by default one MQTT listener on 127.0.0.1:1883.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Access control.
    pub auth: AuthConfig,
    /// Protocol limits and behaviour.
    pub mqtt: MqttConfig,
    /// `$SYS` topics.
    pub sys: SysConfig,
    /// Persistence of sessions, queues and retained messages.
    pub storage: StorageConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listeners: vec![ListenerConfig::default()],
            auth: AuthConfig::default(),
            mqtt: MqttConfig::default(),
            sys: SysConfig::default(),
            storage: StorageConfig::default(),
        }
    }
}

/// A `[[listener]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address and port; port 0 picks a free port.
    pub bind: SocketAddr,
    /// Wire protocol.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// A name for logs and metrics; defaults to `<protocol>:<bind>`.
    #[serde(default)]
    pub name: Option<String>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
            protocol: ListenerProtocol::Mqtt,
            name: None,
        }
    }
}

impl ListenerConfig {
    /// The name used in logs.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("mqtt:{}", self.bind))
    }
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// MQTT over TCP.
    #[default]
    Mqtt,
}

/// `[auth]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Allow clients without credentials. Unset means: only from loopback addresses.
    pub allow_anonymous: Option<bool>,
}

/// What happens to a QoS 1/2 delivery when a session's queue is full and holds no QoS 0
/// delivery to drop instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    /// Drop the new delivery (Mosquitto's behaviour).
    #[default]
    DropNew,
    /// Drop the oldest queued delivery to make room.
    DropOldest,
}

/// How a shared-subscription group picks the member for each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareStrategyConfig {
    /// Each member in turn, skipping offline members.
    #[default]
    RoundRobin,
    /// A random member, preferring online ones.
    Random,
}

/// `[mqtt]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Largest keep-alive accepted, in seconds. v5 clients asking for more (or for 0 when
    /// this is below 65535) are told the Server Keep Alive; v3 clients asking for more are
    /// refused, as they cannot be told.
    pub max_keepalive: u16,
    /// Largest packet accepted, in bytes; advertised to v5 clients.
    pub max_packet_size: u32,
    /// QoS 1/2 messages in flight per direction; advertised as Receive Maximum.
    pub max_inflight: u16,
    /// Deliveries queued per session beyond the in-flight window; 0 is unlimited.
    pub max_queued_messages: usize,
    /// Bytes queued per session; 0 is unlimited.
    pub max_queued_bytes: usize,
    /// What to drop when a queue is full of QoS 1/2 deliveries.
    pub queue_full_policy: QueueFullPolicy,
    /// Queue QoS 0 messages for offline persistent sessions.
    pub queue_qos0_offline: bool,
    /// Whether retained messages are supported.
    pub retain_available: bool,
    /// Concurrent connections; 0 is unlimited.
    pub max_connections: usize,
    /// Subscriptions per client; 0 is unlimited.
    pub max_subscriptions_per_client: usize,
    /// Levels in a topic name or filter.
    pub max_topic_levels: usize,
    /// Bytes in a topic name or filter.
    pub max_topic_length: usize,
    /// Topic aliases a v5 client may use towards the broker.
    pub topic_alias_maximum: u16,
    /// Time allowed between accepting a connection and receiving CONNECT.
    pub connect_timeout_secs: u64,
    /// Upper bound on session expiry; 0 means no bound (v3 persistent sessions never
    /// expire then).
    pub max_session_expiry_secs: u32,
    /// Shared-subscription member selection.
    pub shared_subscription_strategy: ShareStrategyConfig,
    /// Sent as Response Information to v5 clients that request it.
    pub response_information: Option<String>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            max_keepalive: 65_535,
            max_packet_size: 1_048_576,
            max_inflight: 32,
            max_queued_messages: 1_000,
            max_queued_bytes: 0,
            queue_full_policy: QueueFullPolicy::DropNew,
            queue_qos0_offline: false,
            retain_available: true,
            max_connections: 100_000,
            max_subscriptions_per_client: 10_000,
            max_topic_levels: 128,
            max_topic_length: 65_535,
            topic_alias_maximum: 64,
            connect_timeout_secs: 10,
            max_session_expiry_secs: 0,
            shared_subscription_strategy: ShareStrategyConfig::RoundRobin,
            response_information: None,
        }
    }
}

/// `[sys]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SysConfig {
    /// Seconds between `$SYS` updates; 0 disables them.
    pub interval_secs: u64,
}

impl Default for SysConfig {
    fn default() -> Self {
        Self { interval_secs: 10 }
    }
}

/// Where persistent state is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageBackend {
    /// An embedded redb database in `dir`: survives restarts and crashes.
    #[default]
    Redb,
    /// Process memory: nothing survives a restart.
    Memory,
}

/// When the store's writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// PUBACK/PUBREC (and everything else the broker sends) only after the changes they
    /// confirm are committed and fsynced; commits are shared by every waiting client.
    Sync,
    /// Changes are committed and fsynced every `flush_interval_ms`; a crash loses at most
    /// that much.
    #[default]
    Interval,
    /// Changes are written every `flush_interval_ms` without fsync; a crash falls back to
    /// the last durable checkpoint (one a minute, and at a clean shutdown).
    None,
}

/// `[storage]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Where persistent state is kept.
    pub backend: StorageBackend,
    /// Directory of the redb file (`midge.redb`), relative to the working directory.
    pub dir: PathBuf,
    /// When writes reach the disk.
    pub durability: Durability,
    /// Milliseconds between commits for `interval` and `none`.
    pub flush_interval_ms: u64,
    /// Bytes the store may hold before messages for offline sessions are dropped; 0 is
    /// unlimited.
    pub max_stored_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Redb,
            dir: PathBuf::from("./data"),
            durability: Durability::Interval,
            flush_interval_ms: 100,
            max_stored_bytes: 1 << 30,
        }
    }
}

impl Config {
    /// Reads a TOML file, applies `MIDGE_*` overrides from `env`, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (text, origin) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                    path: path.to_owned(),
                    source,
                })?;
                (text, path.display().to_string())
            }
            None => (String::new(), "defaults".to_owned()),
        };
        // Parse the file text itself first, so its errors carry line numbers.
        let mut config: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            origin: origin.clone(),
            message: e.to_string(),
        })?;
        let overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("MIDGE_") && k.contains("__"))
            .collect();
        if !overrides.is_empty() {
            let mut table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Parse {
                        origin: origin.clone(),
                        message: e.to_string(),
                    })?;
            let names = overrides
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            apply_env(&mut table, overrides)?;
            config = toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Env {
                    var: names,
                    reason: e.to_string(),
                })?;
        }
        config.validate(&origin)?;
        Ok(config)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| {
            Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                key: key.to_owned(),
                reason: reason.to_owned(),
            })
        };
        let m = &self.mqtt;
        if self.listeners.is_empty() {
            return invalid("listener", "at least one [[listener]] is needed");
        }
        if m.max_inflight == 0 {
            return invalid("mqtt.max_inflight", "must be between 1 and 65535");
        }
        if m.max_packet_size < 64 || m.max_packet_size > midge_proto::MAX_PACKET_SIZE {
            return invalid(
                "mqtt.max_packet_size",
                "must be between 64 and 268435460 bytes",
            );
        }
        if m.max_topic_levels == 0 {
            return invalid("mqtt.max_topic_levels", "must be at least 1");
        }
        if m.max_topic_length == 0 || m.max_topic_length > 65_535 {
            return invalid("mqtt.max_topic_length", "must be between 1 and 65535");
        }
        if m.connect_timeout_secs == 0 {
            return invalid("mqtt.connect_timeout_secs", "must be at least 1");
        }
        if self.storage.flush_interval_ms == 0 || self.storage.flush_interval_ms > 60_000 {
            return invalid(
                "storage.flush_interval_ms",
                "must be between 1 and 60000 milliseconds",
            );
        }
        if self.storage.backend == StorageBackend::Redb && self.storage.dir.as_os_str().is_empty() {
            return invalid("storage.dir", "must name a directory");
        }
        let mut binds = std::collections::HashSet::new();
        for l in &self.listeners {
            if l.bind.port() != 0 && !binds.insert(l.bind) {
                return invalid(
                    "listener.bind",
                    &format!("{} is used by two listeners", l.bind),
                );
            }
        }
        Ok(())
    }
}

/// Applies `MIDGE_SECTION__KEY=value` overrides: `MIDGE_MQTT__MAX_INFLIGHT=64` sets
/// `mqtt.max_inflight`; `MIDGE_LISTENER__0__BIND=...` sets the first listener's `bind`.
/// A value is read as TOML (number, boolean, quoted string) or else taken as a string.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (var, raw) in env {
        let Some(path) = var.strip_prefix("MIDGE_") else {
            continue;
        };
        let keys: Vec<String> = path.split("__").map(str::to_lowercase).collect();
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let err = |reason: &str| ConfigError::Env {
            var: var.clone(),
            reason: reason.to_owned(),
        };
        set_path(table, &keys, value).map_err(|r| err(&r))?;
    }
    Ok(())
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    let (first, rest) = keys.split_first().ok_or("empty key")?;
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return Ok(());
    }
    let next_is_index = rest[0].parse::<usize>().is_ok();
    let entry = table.entry(first.clone()).or_insert_with(|| {
        if next_is_index {
            toml::Value::Array(Vec::new())
        } else {
            toml::Value::Table(toml::Table::new())
        }
    });
    set_value(entry, rest, value)
}

fn set_value(node: &mut toml::Value, keys: &[String], value: toml::Value) -> Result<(), String> {
    match node {
        toml::Value::Table(t) => set_path(t, keys, value),
        toml::Value::Array(a) => {
            let (first, rest) = keys.split_first().ok_or("empty key")?;
            let i: usize = first
                .parse()
                .map_err(|_| format!("`{first}` is not an index"))?;
            if i == a.len() {
                a.push(toml::Value::Table(toml::Table::new()));
            }
            let slot = a
                .get_mut(i)
                .ok_or_else(|| format!("index {i} is past the end of the list"))?;
            if rest.is_empty() {
                *slot = value;
                Ok(())
            } else {
                set_value(slot, rest, value)
            }
        }
        _ => Err(format!("`{}` is not a section", keys.join("."))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_and_matches_defaults_where_it_says_so() {
        let text = include_str!("../../../midge.example.toml");
        let config = Config::from_toml(text, "midge.example.toml").expect("example parses");
        assert_eq!(config.mqtt.max_inflight, MqttConfig::default().max_inflight);
        assert_eq!(config.listeners[0].bind, "127.0.0.1:1883".parse().unwrap());
    }

    #[test]
    fn unknown_key_is_refused_with_line_and_key() {
        let err = Config::from_toml("[mqtt]\nmax_inflight = 10\nmax_inflite = 3\n", "test.toml")
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("test.toml"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("max_inflite"), "{msg}");
    }

    #[test]
    fn wrong_type_is_refused_with_line() {
        let err = Config::from_toml("[mqtt]\nmax_inflight = \"lots\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let err = Config::from_toml("[mqtt]\nmax_inflight = 0\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mqtt.max_inflight"), "{err}");
    }

    #[test]
    fn env_overrides_file_values() {
        let env = [
            ("MIDGE_MQTT__MAX_INFLIGHT".to_owned(), "7".to_owned()),
            ("MIDGE_AUTH__ALLOW_ANONYMOUS".to_owned(), "false".to_owned()),
            (
                "MIDGE_LISTENER__0__BIND".to_owned(),
                "127.0.0.1:2883".to_owned(),
            ),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        let dir = std::env::temp_dir().join(format!("midge-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.toml");
        std::fs::write(
            &path,
            "[[listener]]\nbind = \"127.0.0.1:1883\"\n[mqtt]\nmax_inflight = 3\n",
        )
        .unwrap();
        let config = Config::load(Some(&path), env).unwrap();
        assert_eq!(config.mqtt.max_inflight, 7);
        assert_eq!(config.auth.allow_anonymous, Some(false));
        assert_eq!(config.listeners[0].bind.port(), 2883);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = Config::load(Some(Path::new("/nonexistent/midge.toml")), [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/midge.toml"), "{err}");
    }
}
