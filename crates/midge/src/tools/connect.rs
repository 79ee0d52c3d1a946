//! The connection flags `midge pub` and `midge sub` share, and what they build: the
//! transport, the CONNECT packet, and the `-D` properties.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{ArgAction, Args};
use midge_client::midge_proto::{ProtocolVersion, QoS, Will, topic};
use midge_client::{ConnectOptions, Scheme, TlsOptions, Transport};

use super::Failure;
use super::properties::{self, Properties};
use super::url;

#[derive(Debug, Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnectArgs {
    /// Broker host.
    #[arg(
        short = 'h',
        long = "host",
        default_value = "localhost",
        conflicts_with = "url"
    )]
    pub host: String,
    /// Broker port [default: 1883, or 8883 with TLS].
    #[arg(short = 'p', long = "port", conflicts_with = "url")]
    pub port: Option<u16>,
    /// mqtt[s]://[user[:password]@]host[:port]/topic, or ws[s]://[user[:password]@]host[:port][/path]
    /// for WebSocket (path default /mqtt; topics from -t).
    #[arg(short = 'L', long = "url", value_name = "URL")]
    pub url: Option<String>,
    /// Client id [default: midge-<pid>-<random>].
    #[arg(short = 'i', long = "id", conflicts_with = "id_prefix")]
    pub id: Option<String>,
    /// Client id prefix; the process id is appended.
    #[arg(short = 'I', long = "id-prefix")]
    pub id_prefix: Option<String>,
    /// User name.
    #[arg(short = 'u', long = "username")]
    pub username: Option<String>,
    /// Password.
    #[arg(short = 'P', long = "pw")]
    pub password: Option<String>,
    /// Keep-alive in seconds; 0 disables it.
    #[arg(short = 'k', long = "keepalive", default_value_t = 60)]
    pub keepalive: u16,
    /// Disable clean session / clean start: keep the session (and, in MQTT 5, make it
    /// never expire unless -x says otherwise). Needs -i.
    #[arg(short = 'c', long = "disable-clean-session")]
    pub keep_session: bool,
    /// MQTT 5 session expiry interval in seconds (-1 or inf: never).
    #[arg(short = 'x', long = "session-expiry-interval", value_parser = parse_expiry)]
    pub session_expiry: Option<u32>,
    /// Protocol version: 31 (MQTT 3.1), 311 (3.1.1) or 5 (also mqttv31, mqttv311, mqttv5).
    #[arg(short = 'V', long = "protocol-version", default_value = "311", value_parser = parse_version)]
    pub version: ProtocolVersion,
    /// MQTT 5 property: -D COMMAND NAME VALUE (user-property takes NAME VALUE), e.g.
    /// -D publish message-expiry-interval 60, -D connect session-expiry-interval 300.
    #[arg(
        short = 'D',
        long = "property",
        num_args = 3..=4,
        value_names = ["COMMAND", "NAME", "VALUE"],
        action = ArgAction::Append
    )]
    pub properties: Vec<String>,
    /// Will topic.
    #[arg(long = "will-topic", help_heading = "Will")]
    pub will_topic: Option<String>,
    /// Will payload.
    #[arg(long = "will-payload", requires = "will_topic", help_heading = "Will")]
    pub will_payload: Option<String>,
    /// Will QoS.
    #[arg(long = "will-qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2), help_heading = "Will")]
    pub will_qos: u8,
    /// Publish the will retained.
    #[arg(long = "will-retain", requires = "will_topic", help_heading = "Will")]
    pub will_retain: bool,
    /// CA certificates (PEM) to verify the broker with; turns on TLS.
    #[arg(long = "cafile", value_name = "FILE", help_heading = "TLS")]
    pub cafile: Option<PathBuf>,
    /// Directory of CA certificates (PEM) to verify the broker with; turns on TLS. Every
    /// file's certificates are trusted and files holding none are skipped, so a c_rehash'd
    /// directory like /etc/ssl/certs works, and so does a plain one.
    #[arg(long = "capath", value_name = "DIR", help_heading = "TLS")]
    pub capath: Option<PathBuf>,
    /// Verify the broker with the operating system's CA bundle ($SSL_CERT_FILE, else the
    /// first of /etc/ssl/certs/ca-certificates.crt, /etc/pki/tls/certs/ca-bundle.crt,
    /// /etc/ssl/ca-bundle.pem, /etc/ssl/cert.pem); turns on TLS.
    #[arg(long = "tls-use-os-certs", help_heading = "TLS")]
    pub os_certs: bool,
    /// Client certificate (PEM); turns on TLS.
    #[arg(
        long = "cert",
        value_name = "FILE",
        requires = "key",
        help_heading = "TLS"
    )]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(
        long = "key",
        value_name = "FILE",
        requires = "cert",
        help_heading = "TLS"
    )]
    pub key: Option<PathBuf>,
    /// Do not verify the broker's certificate or host name (testing only); turns on TLS.
    #[arg(long = "insecure", help_heading = "TLS")]
    pub insecure: bool,
    /// Give up on a connection or an acknowledgement after this many seconds.
    #[arg(long = "connect-timeout", default_value_t = 10, value_name = "SECONDS")]
    pub timeout: u64,
    /// Print help (-h is the host, as in Mosquitto).
    #[arg(long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,
}

fn parse_version(text: &str) -> Result<ProtocolVersion, String> {
    match text {
        "31" | "mqttv31" => Ok(ProtocolVersion::V31),
        "311" | "mqttv311" => Ok(ProtocolVersion::V311),
        "5" | "mqttv5" => Ok(ProtocolVersion::V5),
        _ => Err("use 31, 311 or 5".to_owned()),
    }
}

fn parse_expiry(text: &str) -> Result<u32, String> {
    match text {
        "-1" | "inf" | "∞" => Ok(u32::MAX),
        _ => text
            .parse()
            .map_err(|_| "seconds from 0 to 4294967295, or -1 for never".to_owned()),
    }
}

/// Everything needed to connect, built from the flags.
#[derive(Debug)]
pub struct Connection {
    pub transport: Transport,
    pub options: ConnectOptions,
    pub properties: Properties,
    /// The topic of an mqtt[s]:// URL.
    pub url_topic: Option<String>,
}

impl ConnectArgs {
    /// Checks the flags and builds the connection; `commands` are the `-D` packets the
    /// tool sends.
    pub fn build(self, commands: &[&str]) -> Result<Connection, Failure> {
        let version = self.version;
        if !self.properties.is_empty() && !version.is_v5() {
            return Err(Failure::usage("-D properties need MQTT 5 (-V 5)"));
        }
        let mut properties =
            properties::parse(&self.properties, commands).map_err(Failure::usage)?;
        let tls = TlsOptions {
            ca_file: self.cafile,
            ca_dir: self.capath,
            os_certs: self.os_certs,
            cert_file: self.cert,
            key_file: self.key,
            insecure: self.insecure,
        };
        let has_roots = tls.ca_file.is_some() || tls.ca_dir.is_some() || tls.os_certs;
        let wants_tls = has_roots || tls.cert_file.is_some() || tls.insecure;
        let (scheme, host, port, mut username, mut password, ws_path, url_topic) = match &self.url {
            Some(text) => {
                let url = url::parse(text).map_err(Failure::usage)?;
                let (ws_path, topic) = match url.scheme {
                    Scheme::Ws | Scheme::Wss => (url.path, None),
                    Scheme::Tcp | Scheme::Tls => (None, url.path),
                };
                (
                    url.scheme,
                    url.host,
                    url.port,
                    url.username,
                    url.password,
                    ws_path,
                    topic,
                )
            }
            None => {
                let scheme = if wants_tls { Scheme::Tls } else { Scheme::Tcp };
                let port = self.port.unwrap_or(scheme.default_port());
                (scheme, self.host, port, None, None, None, None)
            }
        };
        if wants_tls && !scheme.is_tls() {
            return Err(Failure::usage(
                "--cafile, --capath, --tls-use-os-certs, --cert and --insecure need TLS: \
                 use mqtts:// or wss:// with -L",
            ));
        }
        if scheme.is_tls() && !has_roots && !tls.insecure {
            return Err(Failure::usage(
                "TLS needs --cafile, --capath or --tls-use-os-certs to verify the broker \
                 (midge has no built-in trust store), or --insecure to skip verification",
            ));
        }
        if self.username.is_some() {
            username = self.username;
        }
        if self.password.is_some() {
            password = self.password;
        }
        if password.is_some() && username.is_none() {
            return Err(Failure::usage("a password (-P) needs a user name (-u)"));
        }

        let id_given = self.id.is_some();
        let client_id = match (self.id, self.id_prefix) {
            (Some(id), _) => id,
            (None, Some(prefix)) => format!("{prefix}{}", std::process::id()),
            (None, None) => generated_id(),
        };
        if self.keep_session && !id_given {
            // A kept session is only useful if the next run names the same id.
            return Err(Failure::usage(
                "-c (keep the session) needs a client id (-i)",
            ));
        }
        // Mosquitto's rule: -c in MQTT 5 without -x keeps the session forever.
        let session_expiry = match (self.session_expiry, self.keep_session) {
            (Some(expiry), _) => Some(expiry),
            (None, true) => Some(u32::MAX),
            (None, false) => None,
        };
        if version.is_v5() {
            if let Some(expiry) = session_expiry {
                properties
                    .connect
                    .session_expiry_interval
                    .get_or_insert(expiry);
            }
        } else if self.session_expiry.is_some() {
            return Err(Failure::usage("-x (session expiry) needs MQTT 5 (-V 5)"));
        }

        let will = match self.will_topic {
            Some(will_topic) => {
                topic::validate_topic_name(&will_topic)
                    .map_err(|e| Failure::usage(format!("--will-topic {will_topic:?}: {e}")))?;
                Some(Will {
                    topic: will_topic,
                    payload: Bytes::from(self.will_payload.unwrap_or_default()),
                    qos: QoS::from_u8(self.will_qos).unwrap_or_default(),
                    retain: self.will_retain,
                    properties: std::mem::take(&mut properties.will),
                })
            }
            None => {
                if properties.will != Default::default() {
                    return Err(Failure::usage("-D will ... needs --will-topic"));
                }
                None
            }
        };

        let mut options = ConnectOptions::new(version, client_id);
        options.connect.clean_start = !self.keep_session;
        options.connect.keep_alive = self.keepalive;
        options.connect.username = username;
        options.connect.password = password.map(Bytes::from);
        options.connect.will = will;
        options.connect.properties = std::mem::take(&mut properties.connect);
        options.timeout = Duration::from_secs(self.timeout.max(1));

        let mut transport = Transport::tcp(host, port);
        transport.scheme = scheme;
        transport.tls = tls;
        transport.timeout = options.timeout;
        if let Some(path) = ws_path {
            transport.ws_path = path;
        }
        Ok(Connection {
            transport,
            options,
            properties,
            url_topic,
        })
    }
}

/// A client id unlikely to collide with another run's: pid and clock nanoseconds. 23
/// characters at most, the length every broker must accept [MQTT-3.1.3-5].
fn generated_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("midge-{}-{nanos:x}", std::process::id())
}
