//! The HTTP auth backend: connect and topic checks answered by a web service, as with
//! RabbitMQ's `auth_backend_http` or EMQX's HTTP authentication.
//!
//! midge's flavour: each check is a `POST` of a JSON object; `200` with
//! `{"result": "allow"}` allows, any other answer denies. RabbitMQ's flavour
//! (`flavor = "rabbitmq"`): GET query or form POST parameters to `user_path`,
//! `vhost_path`, `resource_path` and `topic_path`, answered `allow` (with tags) or `deny`.
//! Timeouts and errors deny too, but are not cached and are reported as the service being
//! unavailable. The client is a small HTTP/1.1 client over tokio for `http://` and (with
//! rustls) `https://` URLs, one connection per check; the decision cache absorbs repeats.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha512};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::AuthError;
use crate::config::{Endpoint, HttpAuthConfig, HttpFlavor, HttpMethod};

/// Largest response read from the service.
const MAX_RESPONSE: usize = 64 * 1024;

/// Why a check got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No answer within `timeout_ms`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting, writing or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The answer is not HTTP.
    #[error("bad HTTP response: {0}")]
    Response(&'static str),
}

impl Endpoint {
    /// POSTs a JSON `body` and returns the status code and the response body.
    async fn post(&self, tls: &ClientTls, body: &[u8]) -> Result<(u16, Vec<u8>), HttpError> {
        self.send(tls, "POST", &self.path, Some("application/json"), body)
            .await
    }

    /// Sends one request for `path` (the endpoint's, or it with a query added) and returns
    /// the status code and the response body. Over TLS when the URL is `https://`.
    pub async fn send(
        &self,
        tls: &ClientTls,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
        let _ = stream.set_nodelay(true);
        let content_type = content_type
            .map(|t| format!("Content-Type: {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{content_type}\
             Accept: application/json, text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\nUser-Agent: midge/{}\r\n\r\n",
            self.authority,
            body.len(),
            env!("CARGO_PKG_VERSION"),
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        if !self.tls {
            return exchange(stream, &request).await;
        }
        let connector = tls.connector()?;
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .map_err(|_| HttpError::Response("the URL's host is not a valid TLS server name"))?;
        let stream = connector.connect(name, stream).await?;
        exchange(stream, &request).await
    }
}

/// Writes `request` and reads the response to its end.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> Result<(u16, Vec<u8>), HttpError> {
    stream.write_all(request).await?;
    stream.flush().await?;
    let mut response = Vec::with_capacity(1024);
    loop {
        if response.len() >= MAX_RESPONSE {
            return Err(HttpError::Response("response too large"));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if let Some(parsed) = parse_response(&response)? {
            return Ok(parsed);
        }
    }
    parse_response_at_eof(&response)
}

/// The TLS side of an HTTPS client: the CAs that sign the service's certificate (`ca_file`,
/// else the operating system's bundle) and an optional client certificate.
#[derive(Clone, Default)]
pub struct ClientTls(Option<tokio_rustls::TlsConnector>);

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ClientTls(configured)"
        } else {
            "ClientTls(none)"
        })
    }
}

/// Where the usual operating systems keep their CA bundle, most common first.
const OS_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

impl ClientTls {
    /// For `https://` URLs: trusts `ca_file` (PEM), or without one the OS bundle, and
    /// presents `client_cert`/`client_key` (PEM) when both are given.
    pub fn new(
        ca_file: Option<&Path>,
        client_cert: Option<&Path>,
        client_key: Option<&Path>,
    ) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let ca_file = match ca_file {
            Some(path) => path.to_owned(),
            None => OS_CA_BUNDLES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .ok_or("no ca_file and no operating system CA bundle found")?,
        };
        let mut roots = rustls::RootCertStore::empty();
        let cas = CertificateDer::pem_file_iter(&ca_file)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", ca_file.display()))?;
        let (added, _) = roots.add_parsable_certificates(cas);
        if added == 0 {
            return Err(format!("{}: no usable CA certificate", ca_file.display()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let config = match (client_cert, client_key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("{}: {e}", cert.display()))?;
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("{}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| format!("{}: {e}", cert.display()))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("client_cert and client_key go together".to_owned()),
        };
        Ok(Self(Some(tokio_rustls::TlsConnector::from(Arc::new(
            config,
        )))))
    }

    /// The connector, when built with [`ClientTls::new`] (for another protocol's client).
    pub fn tls_connector(&self) -> Option<&tokio_rustls::TlsConnector> {
        self.0.as_ref()
    }

    fn connector(&self) -> Result<&tokio_rustls::TlsConnector, HttpError> {
        self.0
            .as_ref()
            .ok_or(HttpError::Response("https:// URL without TLS settings"))
    }
}

/// Where the head ends and what it says.
struct Head {
    status: u16,
    body_start: usize,
    content_length: Option<usize>,
    chunked: bool,
}

fn parse_head(data: &[u8]) -> Result<Option<Head>, HttpError> {
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(data.get(..end).unwrap_or_default())
        .map_err(|_| HttpError::Response("header is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Response("not an HTTP/1.x status line"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::Response("bad status code"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse()
                    .map_err(|_| HttpError::Response("bad Content-Length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    Ok(Some(Head {
        status,
        body_start: end + 4,
        content_length,
        chunked,
    }))
}

/// A complete response, or `None` if more bytes are needed.
fn parse_response(data: &[u8]) -> Result<Option<(u16, Vec<u8>)>, HttpError> {
    let Some(head) = parse_head(data)? else {
        return Ok(None);
    };
    let body = data.get(head.body_start..).unwrap_or_default();
    if head.chunked {
        return Ok(decode_chunked(body)?.map(|b| (head.status, b)));
    }
    match head.content_length {
        Some(len) if body.len() >= len => Ok(Some((
            head.status,
            body.get(..len).unwrap_or_default().to_vec(),
        ))),
        Some(_) | None => Ok(None),
    }
}

fn parse_response_at_eof(data: &[u8]) -> Result<(u16, Vec<u8>), HttpError> {
    let head = parse_head(data)?.ok_or(HttpError::Response(
        "connection closed before the header ended",
    ))?;
    if head.chunked || head.content_length.is_some() {
        return Err(HttpError::Response(
            "connection closed before the body ended",
        ));
    }
    // No length: the body runs to the end of the connection.
    Ok((
        head.status,
        data.get(head.body_start..).unwrap_or_default().to_vec(),
    ))
}

/// Decodes a chunked body; `None` until the last chunk has arrived.
fn decode_chunked(mut data: &[u8]) -> Result<Option<Vec<u8>>, HttpError> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_line = std::str::from_utf8(data.get(..line_end).unwrap_or_default())
            .map_err(|_| HttpError::Response("bad chunk size"))?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| HttpError::Response("bad chunk size"))?;
        let start = line_end + 2;
        if size == 0 {
            return Ok(Some(body));
        }
        let Some(chunk) = data.get(start..start + size) else {
            return Ok(None);
        };
        body.extend_from_slice(chunk);
        match data.get(start + size..) {
            Some(rest) if rest.len() >= 2 => data = rest.get(2..).unwrap_or_default(),
            _ => return Ok(None),
        }
    }
}

/// Whether a response allows: status 200 and `{"result": "allow"}`.
fn allows(status: u16, body: &[u8]) -> bool {
    status == 200
        && serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                v.get("result")
                    .and_then(|r| r.as_str())
                    .map(|r| r == "allow")
            })
            .unwrap_or(false)
}

/// A bounded cache of decisions with a time to live. Keys are digests of the request, so
/// passwords are not kept in memory in clear.
#[derive(Debug)]
struct DecisionCache {
    capacity: usize,
    ttl: Duration,
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    decisions: HashMap<[u8; 32], (bool, Instant)>,
    /// Insertion order, for eviction; an entry here may be stale (re-inserted later).
    order: VecDeque<([u8; 32], Instant)>,
}

impl DecisionCache {
    fn get(&self, key: &[u8; 32], now: Instant) -> Option<bool> {
        if self.capacity == 0 {
            return None;
        }
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .decisions
            .get(key)
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(decision, _)| *decision)
    }

    fn put(&self, key: [u8; 32], decision: bool, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.decisions.insert(key, (decision, now));
        inner.order.push_back((key, now));
        while inner.decisions.len() > self.capacity || inner.order.len() > 2 * self.capacity {
            let Some((old, at)) = inner.order.pop_front() else {
                break;
            };
            if inner.decisions.get(&old).is_some_and(|(_, t)| *t == at) {
                inner.decisions.remove(&old);
            }
        }
    }

    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .decisions
            .len()
    }
}

fn cache_key(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha512::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.get(..32).unwrap_or(&[0u8; 32]));
    key
}

/// What a topic check is for, as sent in `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// PUBLISH (and a will).
    Publish,
    /// SUBSCRIBE.
    Subscribe,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct HttpBackend {
    flavor: HttpFlavor,
    connect: Option<Endpoint>,
    acl: Option<Endpoint>,
    /// RabbitMQ flavour: `vhost_path`, `resource_path`, `topic_path` (`user_path` is
    /// `connect`).
    vhost: Option<Endpoint>,
    resource: Option<Endpoint>,
    topic: Option<Endpoint>,
    method: HttpMethod,
    vhost_name: String,
    exchange: String,
    tls: ClientTls,
    timeout: Duration,
    listener: String,
    cache: DecisionCache,
}

impl HttpBackend {
    /// A backend from `[auth.http]` for the listener named `listener`.
    pub fn new(config: &HttpAuthConfig, listener: &str) -> Result<Self, AuthError> {
        let endpoint = |key: &str, url: &Option<String>| {
            url.as_deref()
                .map(|u| {
                    Endpoint::parse(u).map_err(|reason| AuthError::Http {
                        key: key.to_owned(),
                        reason,
                    })
                })
                .transpose()
        };
        let rabbit = config.flavor == HttpFlavor::Rabbitmq;
        let rabbit_keys = [
            &config.user_path,
            &config.vhost_path,
            &config.resource_path,
            &config.topic_path,
        ];
        let midge_keys = [&config.url, &config.acl_url];
        let ignored = if rabbit {
            midge_keys.iter().any(|k| k.is_some())
        } else {
            rabbit_keys.iter().any(|k| k.is_some())
        };
        if ignored {
            tracing::warn!(flavor = ?config.flavor, "[auth.http] has URLs of the other flavour; they are ignored");
        }
        let (connect, acl) = if rabbit {
            (endpoint("auth.http.user_path", &config.user_path)?, None)
        } else {
            (
                endpoint("auth.http.url", &config.url)?,
                endpoint("auth.http.acl_url", &config.acl_url)?,
            )
        };
        let rabbit_endpoint = |key: &str, url: &Option<String>| {
            if rabbit { endpoint(key, url) } else { Ok(None) }
        };
        let vhost = rabbit_endpoint("auth.http.vhost_path", &config.vhost_path)?;
        let resource = rabbit_endpoint("auth.http.resource_path", &config.resource_path)?;
        let topic = rabbit_endpoint("auth.http.topic_path", &config.topic_path)?;
        let any_https = [&connect, &acl, &vhost, &resource, &topic]
            .into_iter()
            .flatten()
            .any(Endpoint::is_https);
        let tls = if any_https {
            ClientTls::new(
                config.ca_file.as_deref(),
                config.client_cert.as_deref(),
                config.client_key.as_deref(),
            )
            .map_err(|reason| AuthError::Http {
                key: "auth.http.ca_file".to_owned(),
                reason,
            })?
        } else {
            ClientTls::default()
        };
        Ok(Self {
            flavor: config.flavor,
            connect,
            acl,
            vhost,
            resource,
            topic,
            method: config.method,
            vhost_name: config.vhost.clone(),
            exchange: config.exchange.clone(),
            tls,
            timeout: Duration::from_millis(config.timeout_ms),
            listener: listener.to_owned(),
            cache: DecisionCache {
                capacity: config.cache_size,
                ttl: Duration::from_secs(config.cache_ttl_secs),
                inner: Mutex::default(),
            },
        })
    }

    /// Whether connect checks go to the service.
    pub fn checks_connect(&self) -> bool {
        self.connect.is_some()
    }

    /// Whether topic checks go to the service.
    pub fn checks_topics(&self) -> bool {
        self.acl.is_some() || self.resource.is_some() || self.topic.is_some()
    }

    /// Decisions cached now.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Sends one check (cached by `key`) and reads the decision from the answer.
    async fn ask(
        &self,
        endpoint: &Endpoint,
        key: [u8; 32],
        request: Request<'_>,
    ) -> Result<bool, HttpError> {
        if let Some(decision) = self.cache.get(&key, Instant::now()) {
            return Ok(decision);
        }
        let exchange = async {
            match request {
                Request::Json(body) => {
                    let (status, response) = endpoint
                        .post(&self.tls, body.to_string().as_bytes())
                        .await?;
                    Ok::<_, HttpError>(allows(status, &response))
                }
                Request::Form(params) => {
                    let form = form_encode(params);
                    let (status, response) = match self.method {
                        HttpMethod::Get => {
                            let joiner = if endpoint.path.contains('?') {
                                '&'
                            } else {
                                '?'
                            };
                            let path = format!("{}{joiner}{form}", endpoint.path);
                            endpoint.send(&self.tls, "GET", &path, None, b"").await?
                        }
                        HttpMethod::Post => {
                            let form_type = Some("application/x-www-form-urlencoded");
                            endpoint
                                .send(
                                    &self.tls,
                                    "POST",
                                    &endpoint.path,
                                    form_type,
                                    form.as_bytes(),
                                )
                                .await?
                        }
                    };
                    Ok(rabbitmq_allows(status, &response))
                }
            }
        };
        let decision = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout(self.timeout))??;
        self.cache.put(key, decision, Instant::now());
        Ok(decision)
    }

    /// Asks whether this client may connect: `url`, or with the RabbitMQ flavour
    /// `user_path` and then `vhost_path` (both must allow). `Ok(None)` when neither is set.
    pub async fn check_connect(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&str>,
        peer: SocketAddr,
    ) -> Result<Option<bool>, HttpError> {
        let Some(endpoint) = &self.connect else {
            return Ok(None);
        };
        // The peer's port changes with every connection, so the cache keys on its address.
        let ip = peer.ip().to_string();
        let key = cache_key(&[
            b"connect",
            client_id.as_bytes(),
            username.unwrap_or_default().as_bytes(),
            &[u8::from(username.is_some())],
            password.unwrap_or_default().as_bytes(),
            &[u8::from(password.is_some())],
            ip.as_bytes(),
        ]);
        let result = match self.flavor {
            HttpFlavor::Midge => {
                let body = serde_json::json!({
                    "clientid": client_id,
                    "username": username,
                    "password": password,
                    "peer": peer.to_string(),
                    "listener": self.listener,
                });
                self.ask(endpoint, key, Request::Json(body)).await
            }
            HttpFlavor::Rabbitmq => {
                let user = username.unwrap_or_default();
                let mut params = vec![
                    ("username", user),
                    ("password", password.unwrap_or_default()),
                ];
                if password.is_none() {
                    params.pop();
                }
                let allowed = self.ask(endpoint, key, Request::Form(&params)).await;
                match (allowed, &self.vhost) {
                    (Ok(true), Some(vhost)) => {
                        let key = cache_key(&[b"vhost", user.as_bytes(), ip.as_bytes()]);
                        let params = [("username", user), ("vhost", &self.vhost_name), ("ip", &ip)];
                        self.ask(vhost, key, Request::Form(&params)).await
                    }
                    (other, _) => other,
                }
            }
        };
        // The caller logs a failure, within the per-address log limit.
        result.map(Some)
    }

    /// The URL connect checks go to (`url`, or `user_path`), for logs.
    pub fn connect_url(&self) -> Option<&str> {
        self.connect.as_ref().map(|endpoint| endpoint.url.as_str())
    }

    /// Asks whether this client may publish to or subscribe to `topic`: `acl_url`, or
    /// with the RabbitMQ flavour `resource_path` and `topic_path` (each that is set must
    /// allow). `Ok(None)` when none is set.
    pub async fn check_topic(
        &self,
        client_id: &str,
        username: Option<&str>,
        topic: &str,
        action: Action,
    ) -> Result<Option<bool>, HttpError> {
        if self.flavor == HttpFlavor::Rabbitmq {
            return self
                .check_topic_rabbitmq(client_id, username, topic, action)
                .await;
        }
        let Some(endpoint) = &self.acl else {
            return Ok(None);
        };
        let key = cache_key(&[
            action.as_str().as_bytes(),
            client_id.as_bytes(),
            username.unwrap_or_default().as_bytes(),
            &[u8::from(username.is_some())],
            topic.as_bytes(),
        ]);
        let body = serde_json::json!({
            "clientid": client_id,
            "username": username,
            "topic": topic,
            "action": action.as_str(),
        });
        self.ask(endpoint, key, Request::Json(body)).await.map(Some).inspect_err(|e| {
            tracing::warn!(url = %endpoint.url, client_id, topic, error = %e, "HTTP ACL check failed; access denied");
        })
    }

    /// RabbitMQ's MQTT plugin asks for `write` (publish) or `read` (subscribe) on the
    /// exchange, then topic access with the MQTT topic as an AMQP routing key.
    async fn check_topic_rabbitmq(
        &self,
        client_id: &str,
        username: Option<&str>,
        topic: &str,
        action: Action,
    ) -> Result<Option<bool>, HttpError> {
        if self.resource.is_none() && self.topic.is_none() {
            return Ok(None);
        }
        let user = username.unwrap_or_default();
        let permission = match action {
            Action::Publish => "write",
            Action::Subscribe => "read",
        };
        let vhost = self.vhost_name.as_str();
        let exchange = self.exchange.as_str();
        if let Some(endpoint) = &self.resource {
            let key = cache_key(&[b"resource", user.as_bytes(), permission.as_bytes()]);
            let params = [
                ("username", user),
                ("vhost", vhost),
                ("resource", "exchange"),
                ("name", exchange),
                ("permission", permission),
            ];
            match self.ask(endpoint, key, Request::Form(&params)).await {
                Ok(true) => {}
                Ok(false) => return Ok(Some(false)),
                Err(e) => {
                    tracing::warn!(url = %endpoint.url, client_id, topic, error = %e, "HTTP resource check failed; access denied");
                    return Err(e);
                }
            }
        }
        let Some(endpoint) = &self.topic else {
            return Ok(Some(true));
        };
        let routing_key = routing_key(topic);
        let key = cache_key(&[
            b"topic",
            user.as_bytes(),
            client_id.as_bytes(),
            permission.as_bytes(),
            topic.as_bytes(),
        ]);
        let params = [
            ("username", user),
            ("vhost", vhost),
            ("resource", "topic"),
            ("name", exchange),
            ("permission", permission),
            ("routing_key", &routing_key),
            ("variable_map.client_id", client_id),
            ("variable_map.username", user),
            ("variable_map.vhost", vhost),
        ];
        self.ask(endpoint, key, Request::Form(&params)).await.map(Some).inspect_err(|e| {
            tracing::warn!(url = %endpoint.url, client_id, topic, error = %e, "HTTP topic check failed; access denied");
        })
    }
}

/// What a check sends.
enum Request<'a> {
    /// midge flavour: a JSON body.
    Json(serde_json::Value),
    /// RabbitMQ flavour: form parameters.
    Form(&'a [(&'a str, &'a str)]),
}

/// An MQTT topic or filter as RabbitMQ's MQTT plugin writes it as a routing key: levels
/// joined by `.`, `+` as `*` (`#` stays).
fn routing_key(topic: &str) -> String {
    topic
        .split('/')
        .map(|level| if level == "+" { "*" } else { level })
        .collect::<Vec<_>>()
        .join(".")
}

/// `application/x-www-form-urlencoded`, as in a query string.
fn form_encode(params: &[(&str, &str)]) -> String {
    let encode = |text: &str| {
        let mut out = String::with_capacity(text.len());
        for byte in text.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    out.push(char::from(byte));
                }
                _ => out.push_str(&format!("%{byte:02X}")),
            }
        }
        out
    };
    params
        .iter()
        .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// RabbitMQ's answers: `allow`, `allow TAG...` (user_path) or `deny`, with status 200.
fn rabbitmq_allows(status: u16, body: &[u8]) -> bool {
    status == 200
        && std::str::from_utf8(body)
            .ok()
            .and_then(|text| text.split_whitespace().next())
            .is_some_and(|word| word.eq_ignore_ascii_case("allow"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_default_port_and_path() {
        let e = Endpoint::parse("http://127.0.0.1:8080/auth?x=1").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("127.0.0.1:8080", "/auth?x=1")
        );
        let e = Endpoint::parse("http://auth.local").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("auth.local:80", "/")
        );
        let e = Endpoint::parse("http://[::1]/a").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.host.as_str(), e.port),
            ("[::1]:80", "::1", 80)
        );
        assert!(Endpoint::parse("http://h:99999/").is_err());
        let e = Endpoint::parse("https://auth.local/x").unwrap();
        assert_eq!((e.authority.as_str(), e.tls), ("auth.local:443", true));
        assert!(Endpoint::parse("ftp://x/").is_err());
        assert!(Endpoint::parse("http:///x").is_err());
    }

    #[test]
    fn responses_with_length_chunks_or_eof_parse() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\n{\"result\": \"allow\"}";
        let (status, body) = parse_response(full).unwrap().unwrap();
        assert!(allows(status, &body));
        assert!(parse_response(&full[..full.len() - 1]).unwrap().is_none());
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"res\r\nd\r\nult\":\"allow\"}\r\n0\r\n\r\n";
        let (status, body) = parse_response(chunked).unwrap().unwrap();
        assert_eq!(body, b"{\"result\":\"allow\"}");
        assert!(allows(status, &body));
        let eof = b"HTTP/1.0 200 OK\r\n\r\n{\"result\":\"deny\"}";
        assert!(parse_response(eof).unwrap().is_none());
        let (status, body) = parse_response_at_eof(eof).unwrap();
        assert!(!allows(status, &body));
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[test]
    fn rabbitmq_answers_routing_keys_and_forms() {
        assert!(rabbitmq_allows(200, b"allow"));
        assert!(rabbitmq_allows(200, b"allow management monitoring\n"));
        assert!(!rabbitmq_allows(200, b"deny"));
        assert!(!rabbitmq_allows(200, b"allowed"));
        assert!(!rabbitmq_allows(500, b"allow"));
        assert_eq!(routing_key("a/+/c/#"), "a.*.c.#");
        assert_eq!(
            form_encode(&[("username", "a b&c"), ("vhost", "/")]),
            "username=a%20b%26c&vhost=%2F"
        );
    }

    #[test]
    fn only_200_with_result_allow_allows() {
        assert!(allows(200, br#"{"result":"allow","extra":1}"#));
        assert!(!allows(200, br#"{"result":"deny"}"#));
        assert!(!allows(200, br#"{"result":"Allow"}"#));
        assert!(!allows(200, b"allow"));
        assert!(!allows(403, br#"{"result":"allow"}"#));
        assert!(!allows(200, b""));
    }

    #[test]
    fn the_cache_expires_and_stays_bounded() {
        let cache = DecisionCache {
            capacity: 3,
            ttl: Duration::from_secs(10),
            inner: Mutex::default(),
        };
        let t0 = Instant::now();
        cache.put([1; 32], true, t0);
        assert_eq!(cache.get(&[1; 32], t0), Some(true));
        assert_eq!(cache.get(&[1; 32], t0 + Duration::from_secs(10)), None);
        for i in 2..10u8 {
            cache.put([i; 32], false, t0);
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&[9; 32], t0), Some(false));
        assert_eq!(cache.get(&[1; 32], t0), None);
    }
}
