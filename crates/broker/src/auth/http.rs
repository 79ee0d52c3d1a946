//! The HTTP auth backend: connect and topic checks answered by a web service, as with
//! RabbitMQ's `auth_backend_http` or EMQX's HTTP authentication.
//!
//! Each check is a `POST` of a JSON object; `200` with `{"result": "allow"}` allows,
//! any other answer denies. Timeouts and errors deny too, but are not cached and are
//! reported as the service being unavailable. The client is a small HTTP/1.1 client over
//! tokio for `http://` URLs (one connection per check; the decision cache absorbs repeats).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha512};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::AuthError;
use crate::config::HttpAuthConfig;

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

/// A parsed `http://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address to connect to (no brackets).
    host: String,
    /// Port to connect to.
    port: u16,
    /// `host:port` for the Host header (brackets kept for IPv6).
    authority: String,
    /// Path and query.
    path: String,
    /// The original URL, for logs.
    url: String,
}

impl Endpoint {
    /// Parses an `http://` URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            if url.starts_with("https://") {
                "https is not supported by the HTTP auth backend; use http:// to a service \
                 on the same host or network"
                    .to_owned()
            } else {
                "must start with http://".to_owned()
            }
        })?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err("needs a host (and no user info)".into());
        }
        let (host, port) = match authority.rfind(':') {
            Some(i) if !authority[i..].contains(']') => (
                &authority[..i],
                authority[i + 1..]
                    .parse::<u16>()
                    .map_err(|_| "bad port".to_owned())?,
            ),
            _ => (authority, 80),
        };
        let authority = format!("{host}:{port}");
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err("needs a host".into());
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        Ok(Self {
            host,
            port,
            authority,
            path,
            url: url.to_owned(),
        })
    }

    /// POSTs `body` and returns the status code and the response body.
    async fn post(&self, body: &[u8]) -> Result<(u16, Vec<u8>), HttpError> {
        let mut stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
        let _ = stream.set_nodelay(true);
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Accept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\
             User-Agent: midge/{}\r\n\r\n",
            self.path,
            self.authority,
            body.len(),
            env!("CARGO_PKG_VERSION"),
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        stream.write_all(&request).await?;
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
    connect: Option<Endpoint>,
    acl: Option<Endpoint>,
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
        Ok(Self {
            connect: endpoint("auth.http.url", &config.url)?,
            acl: endpoint("auth.http.acl_url", &config.acl_url)?,
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
        self.acl.is_some()
    }

    /// Decisions cached now.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    async fn ask(
        &self,
        endpoint: &Endpoint,
        key: [u8; 32],
        body: serde_json::Value,
    ) -> Result<bool, HttpError> {
        if let Some(decision) = self.cache.get(&key, Instant::now()) {
            return Ok(decision);
        }
        let body = body.to_string().into_bytes();
        let (status, response) = tokio::time::timeout(self.timeout, endpoint.post(&body))
            .await
            .map_err(|_| HttpError::Timeout(self.timeout))??;
        let decision = allows(status, &response);
        self.cache.put(key, decision, Instant::now());
        Ok(decision)
    }

    /// Asks `url` whether this client may connect. `Ok(None)` when no `url` is set.
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
        let body = serde_json::json!({
            "clientid": client_id,
            "username": username,
            "password": password,
            "peer": peer.to_string(),
            "listener": self.listener,
        });
        // The caller logs a failure, within the per-address log limit.
        self.ask(endpoint, key, body).await.map(Some)
    }

    /// The `url` connect checks go to, for logs.
    pub fn connect_url(&self) -> Option<&str> {
        self.connect.as_ref().map(|endpoint| endpoint.url.as_str())
    }

    /// Asks `acl_url` whether this client may publish to or subscribe to `topic`.
    /// `Ok(None)` when no `acl_url` is set.
    pub async fn check_topic(
        &self,
        client_id: &str,
        username: Option<&str>,
        topic: &str,
        action: Action,
    ) -> Result<Option<bool>, HttpError> {
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
        self.ask(endpoint, key, body).await.map(Some).inspect_err(|e| {
            tracing::warn!(url = %endpoint.url, client_id, topic, error = %e, "HTTP ACL check failed; access denied");
        })
    }
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
        assert!(Endpoint::parse("https://x/").unwrap_err().contains("https"));
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
