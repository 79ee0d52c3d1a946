//! `[cluster]`: several midge nodes serving as one broker through NATS.

use std::path::PathBuf;

use serde::Deserialize;

/// The engine nodes share state and messages through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterBackend {
    /// NATS (core subjects for live messages; JetStream in later stages).
    Nats,
}

/// `[cluster]`. Without the section midge is a single node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Only `"nats"`.
    pub backend: ClusterBackend,
    /// This node's name, unique in the cluster: letters, digits, `-` and `_`.
    pub node_id: String,
    /// NATS servers to connect to (`nats://host:port`, `tls://host:port`); the client
    /// moves to another one when its server goes away.
    #[serde(default = "default_urls")]
    pub nats_urls: Vec<String>,
    /// NATS user name, with `password`.
    #[serde(default)]
    pub user: Option<String>,
    /// NATS password, with `user`.
    #[serde(default)]
    pub password: Option<String>,
    /// NATS token (instead of user and password).
    #[serde(default)]
    pub token: Option<String>,
    /// NATS credentials file (JWT and NKey seed), as `nsc` writes it.
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    /// PEM file of the CA certificates that sign the NATS servers' certificates; setting it
    /// requires TLS.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Require TLS to NATS even without `tls_ca_file` (the system's roots are then used).
    #[serde(default)]
    pub tls_required: bool,
    /// Messages waiting to be published to NATS (while it is slow or reconnecting) before
    /// further ones are not forwarded to other nodes, and counted as dropped.
    #[serde(default = "default_forward_queue")]
    pub forward_queue: usize,
    /// Copies JetStream keeps of the retained-message bucket (`midge_retained`), when this
    /// node creates it: 1 survives midge nodes but not the NATS server holding it; 3 on a
    /// 3-server NATS cluster survives one server. An existing bucket keeps its own.
    #[serde(default = "default_retained_replicas")]
    pub retained_replicas: usize,
}

/// One entry of `nats_urls`, parsed: `nats://`, `tls://` or no scheme, an optional
/// `user:password@` or `token@`, a host (IPv6 in brackets) and a port (4222 if none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsServer {
    /// Host name or address, without brackets.
    pub host: String,
    /// Port.
    pub port: u16,
    /// `tls://`: TLS whatever the server offers.
    pub tls: bool,
    /// `user:password@`.
    pub user_password: Option<(String, String)>,
    /// `token@`.
    pub token: Option<String>,
}

impl NatsServer {
    /// Parses a URL of `nats_urls`, or a `host:port` a server announces.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (rest, tls) = match url.split_once("://") {
            Some(("nats", rest)) => (rest, false),
            Some(("tls", rest)) => (rest, true),
            Some((scheme, _)) => {
                return Err(format!(
                    "{url}: scheme {scheme}:// is not nats:// or tls://"
                ));
            }
            None => (url, false),
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, authority) = match rest.rsplit_once('@') {
            Some((userinfo, authority)) => (Some(userinfo), authority),
            None => (None, rest),
        };
        let (host, port) = super::endpoint::split_port(authority, 4222)
            .ok_or_else(|| format!("{url}: bad port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', '?', ' ']) {
            return Err(format!("{url}: needs a host"));
        }
        let (user_password, token) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (Some((user.to_owned(), password.to_owned())), None),
                None => (None, Some(info.to_owned())),
            },
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
            user_password,
            token,
        })
    }
}

fn default_urls() -> Vec<String> {
    vec!["nats://127.0.0.1:4222".to_owned()]
}

fn default_forward_queue() -> usize {
    65_536
}

fn default_retained_replicas() -> usize {
    1
}

impl ClusterConfig {
    /// A cluster on `urls` as node `node_id`, defaults elsewhere.
    pub fn nats(node_id: &str, urls: Vec<String>) -> Self {
        Self {
            backend: ClusterBackend::Nats,
            node_id: node_id.to_owned(),
            nats_urls: urls,
            user: None,
            password: None,
            token: None,
            creds_file: None,
            tls_ca_file: None,
            tls_required: false,
            forward_queue: default_forward_queue(),
            retained_replicas: default_retained_replicas(),
        }
    }

    /// The first problem found, as (key, reason).
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        let id = &self.node_id;
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err((
                "cluster.node_id",
                "must be 1 to 64 letters, digits, '-' or '_'".to_owned(),
            ));
        }
        if self.nats_urls.is_empty() {
            return Err(("cluster.nats_urls", "name at least one server".to_owned()));
        }
        if let Some(error) = self
            .nats_urls
            .iter()
            .find_map(|url| NatsServer::parse(url).err())
        {
            return Err(("cluster.nats_urls", error));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(("cluster.user", "user and password go together".to_owned()));
        }
        let methods = [
            self.user.is_some(),
            self.token.is_some(),
            self.creds_file.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err((
                "cluster.token",
                "use one of user/password, token or creds_file".to_owned(),
            ));
        }
        if self.forward_queue == 0 {
            return Err(("cluster.forward_queue", "must be at least 1".to_owned()));
        }
        if !(1..=5).contains(&self.retained_replicas) {
            return Err((
                "cluster.retained_replicas",
                "JetStream keeps 1 to 5 replicas".to_owned(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ClusterBackend, Config};

    #[test]
    fn absent_section_is_a_single_node() {
        assert!(Config::from_toml("", "t").unwrap().cluster.is_none());
    }

    #[test]
    fn section_parses_with_defaults() {
        let config =
            Config::from_toml("[cluster]\nbackend = \"nats\"\nnode_id = \"n-1\"\n", "t").unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.backend, ClusterBackend::Nats);
        assert_eq!(cluster.node_id, "n-1");
        assert_eq!(cluster.nats_urls, ["nats://127.0.0.1:4222"]);
        assert_eq!(cluster.forward_queue, 65_536);
        assert_eq!(cluster.retained_replicas, 1);
        assert!(cluster.user.is_none() && cluster.token.is_none() && !cluster.tls_required);
    }

    #[test]
    fn nats_urls_parse_like_the_nats_clients() {
        use super::NatsServer;
        let s = NatsServer::parse("nats://127.0.0.1:4223").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.tls), ("127.0.0.1", 4223, false));
        let s = NatsServer::parse("tls://u:p@nats.example:7422/").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.tls),
            ("nats.example", 7422, true)
        );
        assert_eq!(s.user_password, Some(("u".into(), "p".into())));
        let s = NatsServer::parse("nats://s3cret@[::1]").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("::1", 4222));
        assert_eq!(s.token.as_deref(), Some("s3cret"));
        let s = NatsServer::parse("10.0.0.7:4222").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.tls), ("10.0.0.7", 4222, false));
        for bad in ["http://h", "nats://", "nats://h:99999", "nats://:4222"] {
            assert!(NatsServer::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_settings_name_their_key() {
        for (extra, key) in [
            ("node_id = \"a.b\"", "cluster.node_id"),
            ("node_id = \"\"", "cluster.node_id"),
            ("node_id = \"a\"\nnats_urls = []", "cluster.nats_urls"),
            ("node_id = \"a\"\nuser = \"u\"", "cluster.user"),
            (
                "node_id = \"a\"\nnats_urls = [\"http://h:4222\"]",
                "cluster.nats_urls",
            ),
            (
                "node_id = \"a\"\nnats_urls = [\"nats://h:x\"]",
                "cluster.nats_urls",
            ),
            (
                "node_id = \"a\"\ntoken = \"t\"\ncreds_file = \"c\"",
                "cluster.token",
            ),
            (
                "node_id = \"a\"\nforward_queue = 0",
                "cluster.forward_queue",
            ),
            (
                "node_id = \"a\"\nretained_replicas = 0",
                "cluster.retained_replicas",
            ),
        ] {
            let text = format!("[cluster]\nbackend = \"nats\"\n{extra}\n");
            let error = Config::from_toml(&text, "t").unwrap_err().to_string();
            assert!(error.contains(key), "{extra}: {error}");
        }
        let error = Config::from_toml("[cluster]\nbackend = \"redis\"\nnode_id = \"a\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(error.contains("backend"), "{error}");
    }
}
