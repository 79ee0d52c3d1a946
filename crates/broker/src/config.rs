//! Typed configuration: defaults, a TOML file, `MIDGE_SECTION__KEY` environment overrides,
//! and validation that names the key at fault.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod cluster;
mod endpoint;

pub use cluster::{ClusterBackend, ClusterConfig, NatsServer};
pub use endpoint::Endpoint;

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
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Limits per client address, applied before any handshake.
    pub limits: LimitsConfig,
    /// Limits on what misbehaving clients can write to the log.
    pub log: LogConfig,
    /// Persistence of sessions, queues and retained messages.
    pub storage: StorageConfig,
    /// `[admin]`: the HTTP admin listener (metrics, REST API).
    pub admin: AdminConfig,
    /// `[cluster]`: nodes serving as one broker through NATS; `None` is a single node.
    pub cluster: Option<ClusterConfig>,
    /// `[amqp]`: how AMQP 0-9-1 and MQTT meet.
    pub amqp: AmqpConfig,
}

/// `[amqp]`: how AMQP 0-9-1 and MQTT meet.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// RabbitMQ's behaviour for MQTT clients: a `.` in a topic name or filter is a level
    /// separator too (`a.b` is `a/b`), as when the topic is a routing key.
    pub mqtt_dots_as_separators: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listeners: vec![ListenerConfig::default()],
            auth: AuthConfig::default(),
            mqtt: MqttConfig::default(),
            sys: SysConfig::default(),
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
            storage: StorageConfig::default(),
            admin: AdminConfig::default(),
            cluster: None,
            amqp: AmqpConfig::default(),
        }
    }
}

/// The admin listener's address when `[admin] bind` is not set.
pub const DEFAULT_ADMIN_BIND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 18083);

/// `[admin]`: the HTTP admin listener (`/metrics`, `/api/v1`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Whether the admin listener runs.
    pub enabled: bool,
    /// Address and port; unset means [`DEFAULT_ADMIN_BIND`]. When unset and that port is
    /// taken, the broker runs without the admin listener and logs a warning (two brokers
    /// on one host); a `bind` that is set and fails stops the start.
    pub bind: Option<SocketAddr>,
    /// `[admin.tls]`: HTTPS with this certificate chain and key.
    pub tls: Option<AdminTlsConfig>,
    /// Users (Mosquitto password-file format, written by `midge passwd`). Unset: no login,
    /// and only loopback clients are served.
    pub password_file: Option<PathBuf>,
    /// Users of `password_file` who may only read (GET); every other user is an admin.
    pub viewers: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: None,
            tls: None,
            password_file: None,
            viewers: Vec::new(),
        }
    }
}

impl AdminConfig {
    /// The address in force.
    pub fn bind_addr(&self) -> SocketAddr {
        self.bind.unwrap_or(DEFAULT_ADMIN_BIND)
    }
}

/// `[admin.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// A `[[listener]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address and port; port 0 picks a free port.
    pub bind: SocketAddr,
    /// Wire protocol.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// A name for logs and metrics; defaults to `<scheme>:<bind>` (`mqtt`, `mqtts`, `ws`,
    /// `wss`).
    #[serde(default)]
    pub name: Option<String>,
    /// `[listener.auth]`: this listener's own access settings, each falling back to `[auth]`.
    #[serde(default)]
    pub auth: ListenerAuthConfig,
    /// WebSocket listeners: the HTTP paths that accept the upgrade, one string or a list.
    /// Empty means [`DEFAULT_WS_PATH`]. Only for `protocol = "ws"`.
    #[serde(default, deserialize_with = "one_or_many")]
    pub ws_path: Vec<String>,
    /// TLS on this listener (`mqtts`, `wss`).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// The WebSocket path when `ws_path` is not set.
pub const DEFAULT_WS_PATH: &str = "/mqtt";

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
            protocol: ListenerProtocol::Mqtt,
            name: None,
            auth: ListenerAuthConfig::default(),
            ws_path: Vec::new(),
            tls: None,
        }
    }
}

impl ListenerConfig {
    /// The name used in logs.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.scheme(), self.bind))
    }

    /// `mqtt`, `mqtts`, `ws`, `wss`, `amqp` or `amqps`.
    pub fn scheme(&self) -> &'static str {
        match (self.protocol, self.tls.is_some()) {
            (ListenerProtocol::Mqtt, false) => "mqtt",
            (ListenerProtocol::Mqtt, true) => "mqtts",
            (ListenerProtocol::Ws, false) => "ws",
            (ListenerProtocol::Ws, true) => "wss",
            (ListenerProtocol::Amqp, false) => "amqp",
            (ListenerProtocol::Amqp, true) => "amqps",
        }
    }

    /// The WebSocket paths in force (the default when none is configured).
    pub fn ws_paths(&self) -> Vec<String> {
        if self.ws_path.is_empty() {
            vec![DEFAULT_WS_PATH.to_owned()]
        } else {
            self.ws_path.clone()
        }
    }

    /// Checks this listener's settings; `index` is its position, for the message.
    fn validate(&self, index: usize) -> Result<(), (String, String)> {
        let key = |k: &str| format!("listener[{index}].{k}");
        if self.protocol != ListenerProtocol::Ws && !self.ws_path.is_empty() {
            return Err((
                key("ws_path"),
                "only applies to protocol = \"ws\"".to_owned(),
            ));
        }
        for path in &self.ws_path {
            if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
                return Err((
                    key("ws_path"),
                    format!(
                        "`{path}` is not an HTTP path (it must start with `/` and have no query)"
                    ),
                ));
            }
        }
        if let Some(tls) = self.tls.as_ref().filter(|tls| tls.client_ca.is_none()) {
            if tls.crl.is_some() {
                return Err((
                    key("tls.crl"),
                    "needs tls.client_ca, the CA whose revocations it lists".to_owned(),
                ));
            }
            if tls.require_client_cert {
                return Err((
                    key("tls.require_client_cert"),
                    "needs tls.client_ca, the CA that signs client certificates".to_owned(),
                ));
            }
            if tls.cert_identity != CertIdentity::None {
                return Err((
                    key("tls.cert_identity"),
                    "needs tls.client_ca: only a verified client certificate names a user"
                        .to_owned(),
                ));
            }
        }
        Ok(())
    }
}

/// Accepts `"/mqtt"` as well as `["/mqtt", "/ws"]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// MQTT over TCP (or TLS).
    #[default]
    Mqtt,
    /// MQTT over WebSocket (or secure WebSocket with `[listener.tls]`).
    Ws,
    /// AMQP 0-9-1 (or `amqps` with `[listener.tls]`); the usual port is 5672 (5671).
    Amqp,
}

/// `[listener.tls]`: TLS 1.2 and 1.3 with a certificate chain and key from PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain: the server certificate first, then intermediates.
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
    /// PEM CA certificates that sign client certificates. Set, clients are asked for a
    /// certificate and one they present must verify against these.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Refuse clients that present no certificate (needs `client_ca`).
    #[serde(default)]
    pub require_client_cert: bool,
    /// PEM CRLs (`X509 CRL` blocks) of the `client_ca` CAs: a revoked client certificate
    /// is refused. Reloaded with the certificates (needs `client_ca`).
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// Use the verified client certificate's identity as the user name.
    #[serde(default)]
    pub cert_identity: CertIdentity,
}

/// Which part of a verified client certificate becomes the user name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertIdentity {
    /// The subject's common name (Mosquitto's `use_identity_as_username`).
    Cn,
    /// The whole subject as an RFC 4514 string, e.g. `CN=dev1,O=Acme,C=DE` (Mosquitto's
    /// `use_subject_as_username`).
    Subject,
    /// The certificate names nobody; the CONNECT user name and password count.
    #[default]
    None,
}

/// `[auth]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Allow clients without credentials. Unset means: only from loopback addresses.
    pub allow_anonymous: Option<bool>,
    /// Mosquitto-format password file (`user:hash` lines).
    pub password_file: Option<PathBuf>,
    /// Mosquitto-format ACL file; when set, anything it does not allow is refused.
    pub acl_file: Option<PathBuf>,
    /// Whom the ACL file's `topic` lines before the first `user` line apply to.
    pub acl_leading_topics: AclLeadingTopics,
    /// `[auth.http]`: the HTTP auth backend.
    pub http: Option<HttpAuthConfig>,
    /// `[auth.jwt]`: JWT authentication.
    pub jwt: Option<JwtConfig>,
    /// `[auth.dynsec]`: dynamic security in Mosquitto's plugin file format, shared by
    /// every listener.
    pub dynsec: Option<DynsecConfig>,
    /// Which backends are asked about a user, in order; the first that knows the user
    /// decides. Default: password file, dynsec, JWT, HTTP.
    pub order: Vec<AuthSource>,
    /// `[auth.rate_limit]`: failed logins per client address (all listeners).
    pub rate_limit: LoginRateLimitConfig,
}

/// Whom an ACL file's `topic` lines before its first `user` line apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AclLeadingTopics {
    /// Anonymous clients only, as in Mosquitto.
    #[default]
    Anonymous,
    /// Every client, anonymous or not (midge's earlier reading; not Mosquitto's).
    Everyone,
}

/// `[listener.auth]`: a listener's own access settings. Each key left out falls back to
/// the same key of `[auth]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerAuthConfig {
    /// See [`AuthConfig::allow_anonymous`].
    pub allow_anonymous: Option<bool>,
    /// See [`AuthConfig::password_file`].
    pub password_file: Option<PathBuf>,
    /// See [`AuthConfig::acl_file`].
    pub acl_file: Option<PathBuf>,
    /// See [`AuthConfig::acl_leading_topics`].
    pub acl_leading_topics: Option<AclLeadingTopics>,
    /// See [`AuthConfig::http`]; replaces the global table as a whole.
    pub http: Option<HttpAuthConfig>,
    /// See [`AuthConfig::jwt`]; replaces the global table as a whole.
    pub jwt: Option<JwtConfig>,
    /// See [`AuthConfig::order`].
    pub order: Option<Vec<AuthSource>>,
}

/// A backend in `[auth] order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthSource {
    /// `password_file`: knows the users it lists.
    PasswordFile,
    /// `[auth.dynsec]`: knows the clients its file lists.
    Dynsec,
    /// `[auth.jwt]`: knows a client whose credential is a JWT.
    Jwt,
    /// `[auth.http]`: knows every user (the service answers for all).
    Http,
}

/// The default `[auth] order`.
pub const DEFAULT_AUTH_ORDER: [AuthSource; 4] = [
    AuthSource::PasswordFile,
    AuthSource::Dynsec,
    AuthSource::Jwt,
    AuthSource::Http,
];

/// `[auth.dynsec]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DynsecConfig {
    /// The state, in Mosquitto's dynamic-security plugin JSON format. Written (atomically)
    /// at every change; a missing file starts empty.
    pub file: PathBuf,
    /// PBKDF2-SHA512 iterations for passwords set by commands.
    pub iterations: u32,
}

impl Default for DynsecConfig {
    fn default() -> Self {
        Self {
            file: PathBuf::from("dynamic-security.json"),
            iterations: 10_000,
        }
    }
}

/// `[auth.jwt]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Where the token is: the CONNECT password or user name.
    pub from: JwtFrom,
    /// Accepted algorithms: HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA.
    pub algorithms: Vec<String>,
    /// Shared secret of the HS algorithms.
    pub secret: Option<String>,
    /// PEM public key for RS/PS, ES or EdDSA.
    pub public_key: Option<PathBuf>,
    /// JWKS: a file, or an `http(s)://` URL.
    pub jwks: Option<String>,
    /// How often a JWKS file is checked for changes, or a JWKS URL fetched again.
    pub jwks_refresh_secs: u64,
    /// PEM CAs for an `https://` JWKS URL; unset: the operating system's bundle.
    pub ca_file: Option<PathBuf>,
    /// Seconds of clock skew allowed for `exp`, `nbf` and `iat`.
    pub leeway_secs: u64,
    /// Claims that must equal these values; `%u` is the user name, `%c` the client id.
    pub verify_claims: std::collections::BTreeMap<String, String>,
    /// The claim granting topics (EMQX's `acl`); unset: tokens grant no topics.
    pub acl_claim: Option<String>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            from: JwtFrom::Password,
            algorithms: vec!["HS256".to_owned()],
            secret: None,
            public_key: None,
            jwks: None,
            jwks_refresh_secs: 300,
            ca_file: None,
            leeway_secs: 30,
            verify_claims: std::collections::BTreeMap::new(),
            acl_claim: None,
        }
    }
}

/// Where a JWT comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JwtFrom {
    /// The CONNECT password.
    #[default]
    Password,
    /// The CONNECT user name.
    Username,
}

/// `[auth.http]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpAuthConfig {
    /// Which protocol the service speaks.
    pub flavor: HttpFlavor,
    /// `http://` or `https://` URL for connect checks (midge flavour).
    pub url: Option<String>,
    /// URL for publish and subscribe checks (midge flavour).
    pub acl_url: Option<String>,
    /// RabbitMQ flavour: full URLs, as RabbitMQ's `auth_http.user_path` and so on.
    pub user_path: Option<String>,
    /// See [`HttpAuthConfig::user_path`].
    pub vhost_path: Option<String>,
    /// See [`HttpAuthConfig::user_path`].
    pub resource_path: Option<String>,
    /// See [`HttpAuthConfig::user_path`].
    pub topic_path: Option<String>,
    /// RabbitMQ flavour: parameters in the query of a GET (RabbitMQ's default) or in a
    /// form-encoded POST body.
    pub method: HttpMethod,
    /// RabbitMQ flavour: the virtual host named in checks.
    pub vhost: String,
    /// RabbitMQ flavour: the exchange named in resource and topic checks.
    pub exchange: String,
    /// PEM CA certificates for `https://` URLs; unset: the operating system's bundle.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain for `https://` services that ask for one.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Time allowed for one check; a check that takes longer denies.
    pub timeout_ms: u64,
    /// Decisions kept; 0 turns the cache off.
    pub cache_size: usize,
    /// How long a decision is kept.
    pub cache_ttl_secs: u64,
}

impl Default for HttpAuthConfig {
    fn default() -> Self {
        Self {
            flavor: HttpFlavor::Midge,
            url: None,
            acl_url: None,
            user_path: None,
            vhost_path: None,
            resource_path: None,
            topic_path: None,
            method: HttpMethod::Get,
            vhost: "/".to_owned(),
            exchange: "amq.topic".to_owned(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            timeout_ms: 2_000,
            cache_size: 10_000,
            cache_ttl_secs: 60,
        }
    }
}

/// The protocol an HTTP auth service speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpFlavor {
    /// JSON POSTs to `url` and `acl_url`.
    #[default]
    Midge,
    /// `rabbitmq_auth_backend_http`'s form parameters and `allow`/`deny` answers.
    Rabbitmq,
}

/// How the RabbitMQ flavour sends its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpMethod {
    /// In the query string.
    #[default]
    Get,
    /// As an `application/x-www-form-urlencoded` body.
    Post,
}

/// `[auth.rate_limit]`: a token bucket per client address, spent by failed logins.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginRateLimitConfig {
    /// Failed logins an address may have in a row; 0 turns the limit off.
    pub failures_burst: u32,
    /// Failed logins an address earns back per minute.
    pub failures_per_minute: u32,
    /// Addresses remembered at most.
    pub max_tracked_addresses: usize,
}

impl Default for LoginRateLimitConfig {
    fn default() -> Self {
        Self {
            failures_burst: 10,
            failures_per_minute: 6,
            max_tracked_addresses: 10_000,
        }
    }
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

/// What happens to a connection that publishes faster than `limits.publish_rate_per_client`
/// or `limits.publish_bytes_per_client` allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishRateAction {
    /// Stop reading from it until its buckets have refilled (TCP pushes back): nothing is
    /// refused or lost.
    #[default]
    Throttle,
    /// Close it: MQTT 5 with DISCONNECT 0x96 (message rate too high); MQTT 3, which has no
    /// way to say why, by closing the socket. The PUBLISH over the rate is not handled, so
    /// at QoS 1/2 it is not acknowledged and the client sends it again when it reconnects.
    Disconnect,
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Levels in a topic name or filter. The spec sets no limit; the default, 200, is
    /// Mosquitto's, so no topic it accepts is refused, while the depth the subscription
    /// trie and retained tree walk (recursively) per message stays bounded.
    pub max_topic_levels: usize,
    /// Bytes in a topic name or filter.
    pub max_topic_length: usize,
    /// Topic aliases a v5 client may use towards the broker.
    pub topic_alias_maximum: u16,
    /// Time allowed between accepting a connection and receiving CONNECT.
    pub connect_timeout_secs: u64,
    /// Largest CONNECT accepted, in bytes (capped by `max_packet_size`): until CONNECT and
    /// authentication are through, nobody knows who the client is.
    pub max_connect_size: u32,
    /// Bytes all connections that have not completed CONNECT may buffer together; 0 is
    /// unlimited.
    pub max_pre_connect_bytes: u64,
    /// Upper bound on session expiry; 0 means no bound.
    pub max_session_expiry_secs: u32,
    /// Session expiry of MQTT 3.1/3.1.1 persistent sessions (clean session 0), which
    /// cannot ask for one; 0 means they never expire.
    pub v3_session_expiry_secs: u32,
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
            max_topic_levels: 200,
            max_topic_length: 65_535,
            topic_alias_maximum: 64,
            connect_timeout_secs: 10,
            max_connect_size: 65_536,
            max_pre_connect_bytes: 64 << 20,
            max_session_expiry_secs: 0,
            v3_session_expiry_secs: 7 * 24 * 3600,
            shared_subscription_strategy: ShareStrategyConfig::RoundRobin,
            response_information: None,
        }
    }
}

/// `[limits]`: connections per client address, checked when a connection is accepted,
/// before any TLS or WebSocket handshake (see `conn_limit`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections one address (IPv6: one /64) may have open at once; 0 is unlimited.
    pub connections_per_ip: u32,
    /// New connections per second one address earns; 0 turns the rate limit off.
    pub connect_rate_per_ip: u32,
    /// New connections one address may open in a burst (the token bucket's size).
    pub connect_burst_per_ip: u32,
    /// Addresses with no connection open remembered at most for their rate bucket.
    pub max_tracked_addresses: usize,
    /// Sessions kept after their connection ended (parked) at most; beyond it a session
    /// ends with its connection. 0 is unlimited.
    pub max_parked_sessions: usize,
    /// Bytes client input may hold in the broker (queues, retained messages, pre-CONNECT
    /// buffers); above it the memory budget's policy applies (see `memory`). Absent: half
    /// of the machine's memory or of the cgroup limit (`memory::limit_for`); 0: none.
    pub max_memory: Option<ByteSize>,
    /// PUBLISH packets per second one connection may send; 0 is unlimited. Enforced by
    /// not reading from its socket (TCP pushes back on the client).
    pub publish_rate_per_client: u32,
    /// PUBLISH payload bytes per second one connection may send; 0 is unlimited.
    pub publish_bytes_per_client: ByteSize,
    /// What happens to a connection over either publish rate.
    pub publish_rate_action: PublishRateAction,
    /// The kernel send buffer of each accepted socket (`SO_SNDBUF`); 0 leaves it to the
    /// kernel's autotuning (up to `net.ipv4.tcp_wmem`'s maximum per connection).
    pub socket_send_buffer: ByteSize,
}

/// A size in bytes: a number, or a string with a unit (`"512MiB"`, `"2 GiB"`, `"64k"`;
/// k/M/G/T and KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB powers of 1000).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(Self(n)),
            Raw::Text(text) => parse_size(&text).map(Self).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{text:?} is not a size (bytes, or a number with KiB, MiB, GiB, ...)"
                ))
            }),
        }
    }
}

/// Parses a size as [`ByteSize`] reads it.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            connections_per_ip: 20_000,
            connect_rate_per_ip: 0,
            connect_burst_per_ip: 100,
            max_tracked_addresses: 10_000,
            max_parked_sessions: 1_000_000,
            max_memory: None,
            publish_rate_per_client: 0,
            publish_bytes_per_client: ByteSize(0),
            publish_rate_action: PublishRateAction::Throttle,
            socket_send_buffer: ByteSize(0),
        }
    }
}

impl MqttConfig {
    /// The largest CONNECT accepted: `max_connect_size`, or `max_packet_size` if smaller.
    pub fn connect_limit(&self) -> u32 {
        self.max_connect_size.min(self.max_packet_size)
    }
}

/// `[sys]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SysConfig {
    /// Seconds between `$SYS` updates; 0 disables them.
    pub interval_secs: u64,
    /// Publish EMQX-style `$SYS/brokers/<node>/clients/<client id>/connected` and
    /// `/disconnected` events (JSON, not retained).
    pub client_events: bool,
}

impl Default for SysConfig {
    fn default() -> Self {
        Self {
            interval_secs: 10,
            client_events: false,
        }
    }
}

/// `[log]`: lines about refused, malformed and failed connections, per peer address
/// (see `log_limit`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Lines logged per address per window; the rest are summed up in one line. 0 logs
    /// every line.
    pub lines_per_peer: u32,
    /// The window, in seconds.
    pub peer_window_secs: u64,
    /// Addresses tracked at most; beyond them, addresses share one allowance.
    pub max_tracked_peers: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            lines_per_peer: 5,
            peer_window_secs: 60,
            max_tracked_peers: 10_000,
        }
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
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

/// Where the configuration in force came from, so that a reload reads it again the same
/// way: the file, and the `MIDGE_*` overrides of the environment at start.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The TOML file; `None`: the defaults.
    pub path: Option<PathBuf>,
    /// The environment's variables (only `MIDGE_SECTION__KEY` ones are used).
    pub env: Vec<(String, String)>,
}

impl ConfigSource {
    /// Reads and validates the configuration ([`Config::load`]).
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.path.as_deref(), self.env.iter().cloned())
    }

    /// How errors name it: the file's path, or `defaults`.
    pub fn origin(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "defaults".to_owned(), |p| p.display().to_string())
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
        Self::from_toml_with_env(&text, &origin, env)
    }

    /// Parses TOML text, applies `MIDGE_*` overrides from `env`, and validates; `origin`
    /// names the text in errors. What [`Config::load`] does once it has read the file.
    pub fn from_toml_with_env(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let origin = origin.to_owned();
        // Parse the file text itself first, so its errors carry line numbers.
        let mut config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
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
        Self::from_toml_with_env(text, origin, std::iter::empty())
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
        let l = &self.limits;
        if l.connect_rate_per_ip > 0 && l.connect_burst_per_ip == 0 {
            return invalid(
                "limits.connect_burst_per_ip",
                "must be at least 1 while connect_rate_per_ip is above 0",
            );
        }
        if l.max_tracked_addresses == 0 {
            return invalid("limits.max_tracked_addresses", "must be at least 1");
        }
        if l.socket_send_buffer.0 > 1 << 30 {
            return invalid("limits.socket_send_buffer", "must be at most 1GiB");
        }
        if m.max_connect_size < 64 {
            return invalid("mqtt.max_connect_size", "must be at least 64 bytes");
        }
        // Large buffers may fill three quarters of the budget: twice the largest CONNECT
        // leaves room for one.
        if m.max_pre_connect_bytes != 0
            && m.max_pre_connect_bytes < 2 * u64::from(m.connect_limit())
        {
            return invalid(
                "mqtt.max_pre_connect_bytes",
                "must be 0 (unlimited) or at least twice max_connect_size (or max_packet_size \
                 if smaller)",
            );
        }
        if self.log.peer_window_secs == 0 {
            return invalid("log.peer_window_secs", "must be at least 1");
        }
        if self.log.max_tracked_peers == 0 {
            return invalid("log.max_tracked_peers", "must be at least 1");
        }
        let r = &self.auth.rate_limit;
        if r.failures_burst > 0 && r.failures_per_minute == 0 {
            return invalid(
                "auth.rate_limit.failures_per_minute",
                "must be at least 1 while failures_burst is above 0",
            );
        }
        let listener_jwt = self.listeners.iter().filter_map(|l| l.auth.jwt.as_ref());
        // Which key goes with which algorithm is checked when the keys are loaded.
        for jwt in self.auth.jwt.iter().chain(listener_jwt) {
            if jwt.algorithms.is_empty() {
                return invalid("auth.jwt.algorithms", "name at least one algorithm");
            }
        }
        if self.auth.dynsec.as_ref().is_some_and(|d| d.iterations == 0) {
            return invalid("auth.dynsec.iterations", "must be at least 1");
        }
        let listener_orders = self.listeners.iter().filter_map(|l| l.auth.order.as_ref());
        for order in std::iter::once(&self.auth.order).chain(listener_orders) {
            let mut seen = std::collections::HashSet::new();
            if !order.iter().all(|source| seen.insert(*source)) {
                return invalid("auth.order", "names a backend twice");
            }
        }
        let listener_http = self.listeners.iter().filter_map(|l| l.auth.http.as_ref());
        for http in self.auth.http.iter().chain(listener_http) {
            let rabbit = [
                &http.user_path,
                &http.vhost_path,
                &http.resource_path,
                &http.topic_path,
            ];
            match http.flavor {
                HttpFlavor::Midge if http.url.is_none() && http.acl_url.is_none() => {
                    return invalid("auth.http", "set url, acl_url or both");
                }
                HttpFlavor::Rabbitmq if rabbit.iter().all(|p| p.is_none()) => {
                    return invalid("auth.http", "set user_path, topic_path or both");
                }
                _ => {}
            }
            if http.client_cert.is_some() != http.client_key.is_some() {
                return invalid(
                    "auth.http.client_cert",
                    "client_cert and client_key go together",
                );
            }
            if http.timeout_ms == 0 {
                return invalid("auth.http.timeout_ms", "must be at least 1");
            }
            for (key, url) in [
                ("auth.http.url", &http.url),
                ("auth.http.acl_url", &http.acl_url),
                ("auth.http.user_path", &http.user_path),
                ("auth.http.vhost_path", &http.vhost_path),
                ("auth.http.resource_path", &http.resource_path),
                ("auth.http.topic_path", &http.topic_path),
            ] {
                if let Some(Err(reason)) = url.as_deref().map(Endpoint::parse) {
                    return invalid(key, &reason);
                }
            }
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
        let admin = &self.admin;
        if admin.enabled && admin.password_file.is_none() && !admin.bind_addr().ip().is_loopback() {
            return invalid(
                "admin.password_file",
                &format!(
                    "needed because admin.bind ({}) is not a loopback address; without it the admin API would be open to the network",
                    admin.bind_addr()
                ),
            );
        }
        if !admin.viewers.is_empty() && admin.password_file.is_none() {
            return invalid(
                "admin.viewers",
                "needs admin.password_file, which names the users",
            );
        }
        if let Some(Err((key, reason))) = self.cluster.as_ref().map(ClusterConfig::validate) {
            return invalid(key, &reason);
        }
        let mut binds = std::collections::HashSet::new();
        for (index, l) in self.listeners.iter().enumerate() {
            if let Err((key, reason)) = l.validate(index) {
                return invalid(&key, &reason);
            }
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
        let (example, default) = (&config.auth.rate_limit, LoginRateLimitConfig::default());
        assert_eq!(example.failures_burst, default.failures_burst);
        assert_eq!(example.failures_per_minute, default.failures_per_minute);
        assert_eq!(example.max_tracked_addresses, default.max_tracked_addresses);
        let (example, default) = (&config.mqtt, MqttConfig::default());
        assert_eq!(example.max_connect_size, default.max_connect_size);
        assert_eq!(example.max_pre_connect_bytes, default.max_pre_connect_bytes);
        let (example, default) = (&config.log, LogConfig::default());
        assert_eq!(example.lines_per_peer, default.lines_per_peer);
        assert_eq!(example.peer_window_secs, default.peer_window_secs);
        assert_eq!(example.max_tracked_peers, default.max_tracked_peers);
        let (example, default) = (&config.limits, LimitsConfig::default());
        assert_eq!(example.connections_per_ip, default.connections_per_ip);
        assert_eq!(example.connect_rate_per_ip, default.connect_rate_per_ip);
        assert_eq!(example.connect_burst_per_ip, default.connect_burst_per_ip);
        assert_eq!(example.max_parked_sessions, default.max_parked_sessions);
        assert_eq!(
            config.mqtt.v3_session_expiry_secs,
            MqttConfig::default().v3_session_expiry_secs
        );
        assert_eq!(example.max_tracked_addresses, default.max_tracked_addresses);
        assert_eq!(config.admin.enabled, AdminConfig::default().enabled);
        assert_eq!(config.admin.bind, None);
    }

    #[test]
    fn the_container_config_listens_everywhere_with_anonymous_access_off() {
        let text = include_str!("../../../contrib/docker/midge.toml");
        for text in [text.to_owned(), uncomment_keys(text)] {
            let config = Config::from_toml(&text, "contrib/docker/midge.toml").unwrap();
            assert!(
                config
                    .listeners
                    .iter()
                    .all(|l| l.bind.ip().is_unspecified())
            );
            assert_eq!(config.auth.allow_anonymous, Some(false));
            assert!(config.auth.password_file.is_some());
            assert!(config.admin.bind_addr().ip().is_unspecified());
            assert!(config.admin.password_file.is_some());
            assert_eq!(config.storage.dir, PathBuf::from("/data"));
        }
    }

    #[test]
    fn connection_limits_are_checked_and_named() {
        for (text, key) in [
            (
                "[limits]\nconnect_rate_per_ip = 5\nconnect_burst_per_ip = 0\n",
                "limits.connect_burst_per_ip",
            ),
            (
                "[limits]\nmax_tracked_addresses = 0\n",
                "limits.max_tracked_addresses",
            ),
        ] {
            let err = Config::from_toml(text, "t.toml").unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        let off =
            "[limits]\nconnections_per_ip = 0\nconnect_rate_per_ip = 0\nconnect_burst_per_ip = 0\n";
        let config = Config::from_toml(off, "t.toml").unwrap();
        assert_eq!(config.limits.connections_per_ip, 0);
    }

    #[test]
    fn memory_and_rate_limits_read_sizes() {
        assert_eq!(parse_size("1234"), Some(1234));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("2 GiB"), Some(2 << 30));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("1GB"), Some(1_000_000_000));
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(parse_size("MiB"), None);
        let text = "[limits]\nmax_memory = \"256MiB\"\npublish_rate_per_client = 10\npublish_bytes_per_client = 4096\nsocket_send_buffer = \"64KiB\"\n";
        let config = Config::from_toml(text, "t.toml").unwrap();
        assert_eq!(config.limits.max_memory, Some(ByteSize(256 << 20)));
        assert_eq!(config.limits.publish_rate_per_client, 10);
        assert_eq!(config.limits.publish_bytes_per_client, ByteSize(4096));
        assert_eq!(
            config.limits.publish_rate_action,
            PublishRateAction::Throttle
        );
        assert_eq!(config.limits.socket_send_buffer, ByteSize(64 << 10));
        let err = Config::from_toml("[limits]\nmax_memory = \"lots\"\n", "t.toml").unwrap_err();
        assert!(err.to_string().contains("max_memory"), "{err}");
        let zero = Config::from_toml("[limits]\nmax_memory = 0\n", "t.toml").unwrap();
        assert_eq!(zero.limits.max_memory, Some(ByteSize(0)));
        let disconnect =
            Config::from_toml("[limits]\npublish_rate_action = \"disconnect\"\n", "t.toml")
                .unwrap();
        assert_eq!(
            disconnect.limits.publish_rate_action,
            PublishRateAction::Disconnect
        );
        let err = Config::from_toml("[limits]\n\npublish_rate_action = \"drop\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.toml") && err.contains("line 3") && err.contains("publish_rate_action"),
            "{err}"
        );
    }

    /// Uncomments every commented `key = value`, `[[listener]]` and `[listener.tls]` line.
    fn uncomment_keys(text: &str) -> String {
        text.lines()
            .map(|line| {
                let rest = line.strip_prefix("# ").unwrap_or(line);
                let is_key = rest.split_once(" = ").is_some_and(|(key, _)| {
                    !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                });
                // A commented table header, possibly followed by a comment of its own.
                let is_header = rest.starts_with('[')
                    && rest
                        .split(" #")
                        .next()
                        .is_some_and(|h| h.trim_end().ends_with(']'));
                if rest != line && (is_key || is_header) {
                    rest
                } else {
                    line
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn every_commented_key_in_the_example_file_parses() {
        let text = uncomment_keys(include_str!("../../../midge.example.toml"));
        let config = Config::from_toml(&text, "midge.example.toml, uncommented").unwrap();
        let schemes: Vec<_> = config.listeners.iter().map(|l| l.scheme()).collect();
        assert_eq!(schemes, ["mqtt", "mqtt", "mqtts", "ws", "amqp", "wss"]);
        assert_eq!(config.listeners[1].auth.allow_anonymous, Some(false));
        let mqtts = config.listeners[2].tls.as_ref().unwrap();
        assert!(mqtts.require_client_cert);
        assert_eq!(mqtts.cert_identity, CertIdentity::Cn);
        assert_eq!(config.listeners[3].ws_paths(), ["/mqtt", "/ws"]);
        assert_eq!(config.listeners[4].ws_paths(), [DEFAULT_WS_PATH]);
        assert_eq!(config.auth.allow_anonymous, Some(true));
        assert!(mqtts.crl.is_some());
        assert_eq!(config.auth.acl_leading_topics, AclLeadingTopics::Anonymous);
        assert_eq!(config.auth.order, DEFAULT_AUTH_ORDER);
        let dynsec = config.auth.dynsec.as_ref().unwrap();
        assert_eq!(dynsec.iterations, DynsecConfig::default().iterations);
        assert!(dynsec.file.ends_with("dynamic-security.json"));
        let jwt = config.auth.jwt.as_ref().unwrap();
        assert_eq!(jwt.verify_claims.get("sub").map(String::as_str), Some("%u"));
        assert_eq!(jwt.acl_claim.as_deref(), Some("acl"));
        let http = config.auth.http.as_ref().unwrap();
        assert!(http.topic_path.is_some() && http.client_key.is_some());
        assert_eq!(http.method, HttpMethod::Get);
        assert!(config.admin.enabled);
        assert_eq!(config.admin.bind, Some(DEFAULT_ADMIN_BIND));
        assert_eq!(config.admin.viewers, ["grafana"]);
        assert!(config.admin.password_file.is_some() && config.admin.tls.is_some());
        let cluster = config.cluster.as_ref().unwrap();
        assert_eq!(cluster.node_id, "node-1");
        assert!(cluster.user.is_some() && cluster.tls_ca_file.is_some());
    }

    #[test]
    fn pre_connect_limits_are_checked() {
        let config = Config::from_toml("[mqtt]\nmax_packet_size = 1000\n", "t.toml").unwrap();
        assert_eq!(config.mqtt.connect_limit(), 1000);
        assert_eq!(Config::default().mqtt.connect_limit(), 65_536);
        for (text, key) in [
            ("[mqtt]\nmax_connect_size = 10\n", "mqtt.max_connect_size"),
            (
                "[mqtt]\nmax_pre_connect_bytes = 1000\n",
                "mqtt.max_pre_connect_bytes",
            ),
        ] {
            let err = Config::from_toml(text, "t.toml").unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        for ok in [
            "[mqtt]\nmax_pre_connect_bytes = 0\n",
            "[mqtt]\nmax_pre_connect_bytes = 131072\n",
        ] {
            assert!(Config::from_toml(ok, "t.toml").is_ok(), "{ok}");
        }
        let too_small = "[mqtt]\nmax_pre_connect_bytes = 131071\n";
        assert!(Config::from_toml(too_small, "t.toml").is_err());
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
    fn ws_path_is_one_path_or_a_list_and_defaults_to_mqtt() {
        let config = Config::from_toml(
            "[[listener]]\nbind = \"127.0.0.1:8083\"\nprotocol = \"ws\"\n\
             [[listener]]\nbind = \"127.0.0.1:8084\"\nprotocol = \"ws\"\nws_path = \"/ws\"\n\
             [[listener]]\nbind = \"127.0.0.1:8085\"\nprotocol = \"ws\"\nws_path = [\"/mqtt\", \"/ws\"]\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(config.listeners[0].ws_paths(), ["/mqtt"]);
        assert_eq!(config.listeners[1].ws_paths(), ["/ws"]);
        assert_eq!(config.listeners[2].ws_paths(), ["/mqtt", "/ws"]);
        assert_eq!(config.listeners[2].display_name(), "ws:127.0.0.1:8085");
    }

    #[test]
    fn tls_section_parses_with_defaults() {
        let config = Config::from_toml(
            "[[listener]]\nbind = \"127.0.0.1:8883\"\n[listener.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
            "t.toml",
        )
        .unwrap();
        let tls = config.listeners[0].tls.as_ref().unwrap();
        assert_eq!(tls.cert, Path::new("c.pem"));
        assert_eq!(tls.client_ca, None);
        assert!(!tls.require_client_cert);
        assert_eq!(tls.cert_identity, CertIdentity::None);
        assert_eq!(config.listeners[0].display_name(), "mqtts:127.0.0.1:8883");
    }

    #[test]
    fn listener_settings_that_cannot_work_name_the_listener_and_key() {
        let cases = [
            (
                "[[listener]]\nbind = \"127.0.0.1:1883\"\nws_path = \"/mqtt\"\n",
                "listener[0].ws_path",
            ),
            (
                "[[listener]]\nbind = \"127.0.0.1:8083\"\nprotocol = \"ws\"\nws_path = \"mqtt\"\n",
                "listener[0].ws_path",
            ),
            (
                "[[listener]]\nbind = \"127.0.0.1:8883\"\n[listener.tls]\ncert = \"c\"\nkey = \"k\"\nrequire_client_cert = true\n",
                "listener[0].tls.require_client_cert",
            ),
            (
                "[[listener]]\nbind = \"127.0.0.1:8883\"\n[listener.tls]\ncert = \"c\"\nkey = \"k\"\ncert_identity = \"cn\"\n",
                "listener[0].tls.cert_identity",
            ),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(text, "t.toml").unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        let err = Config::from_toml(
            "[[listener]]\nbind = \"127.0.0.1:8883\"\n[listener.tls]\ncert = \"c\"\nkey = \"k\"\ncert_identity = \"email\"\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("line 6") && err.contains("cert_identity"),
            "{err}"
        );
    }

    #[test]
    fn tls_paths_can_come_from_the_environment() {
        let env = [
            (
                "MIDGE_LISTENER__0__TLS__CERT".to_owned(),
                "/etc/midge/cert.pem".to_owned(),
            ),
            (
                "MIDGE_LISTENER__0__TLS__KEY".to_owned(),
                "/etc/midge/key.pem".to_owned(),
            ),
        ];
        let dir = std::env::temp_dir().join(format!("midge-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.toml");
        std::fs::write(&path, "[[listener]]\nbind = \"127.0.0.1:8883\"\n").unwrap();
        let config = Config::load(Some(&path), env).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        let tls = config.listeners[0].tls.as_ref().unwrap();
        assert_eq!(tls.cert, Path::new("/etc/midge/cert.pem"));
        assert_eq!(tls.key, Path::new("/etc/midge/key.pem"));
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = Config::load(Some(Path::new("/nonexistent/midge.toml")), [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/midge.toml"), "{err}");
    }
}
