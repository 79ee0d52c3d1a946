//! One HTTP/1.1 request per connection to the admin listener (`Connection: close`),
//! over midge-client's transport (TCP, or TLS for `https://`). The answer is read to its
//! end: `Content-Length`, chunked, or until the server closes.

use std::time::Duration;

use base64ct::Encoding;
use midge_client::{Scheme, TlsOptions, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers larger than this are refused: the API pages its lists.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Where the admin API is and how to log in.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) https: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Path prefix from the URL (without a trailing slash).
    pub(crate) base: String,
    pub(crate) login: Option<(String, String)>,
    pub(crate) tls: TlsOptions,
    pub(crate) timeout: Duration,
}

/// Why a request failed before an HTTP answer came.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("{0}")]
    Connect(String),
    #[error("bad answer from the admin listener: {0}")]
    Protocol(String),
}

/// An HTTP answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Endpoint {
    /// Parses `http://host:port/prefix` or `https://...`.
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(format!("--url {url}: must start with http:// or https://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("--url {url}: unclosed [ in the host"))?;
            (host.to_owned(), after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host.to_owned(), Some(port)),
                None => (authority.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("--url {url}: no host"));
        }
        let port = match port {
            Some(p) => p
                .parse()
                .map_err(|_| format!("--url {url}: `{p}` is not a port"))?,
            None if https => 443,
            None => 80,
        };
        Ok(Self {
            https,
            host,
            port,
            base: path.to_owned(),
            login: None,
            tls: TlsOptions::default(),
            timeout: Duration::from_secs(10),
        })
    }

    /// Sends one request; `body` is JSON.
    pub(crate) async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Answer, HttpError> {
        tokio::time::timeout(self.timeout, self.exchange(method, path, body))
            .await
            .map_err(|_| {
                HttpError::Connect(format!(
                    "no answer from {}:{} within {:?}",
                    self.host, self.port, self.timeout
                ))
            })?
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Answer, HttpError> {
        let mut transport = Transport::tcp(self.host.clone(), self.port);
        if self.https {
            transport.scheme = Scheme::Tls;
            transport.tls = self.tls.clone();
        }
        transport.timeout = self.timeout;
        let mut stream = transport
            .connect()
            .await
            .map_err(|e| HttpError::Connect(e.to_string()))?;
        let host = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: application/json\r\nUser-Agent: midge-ctl/{}\r\n",
            self.base,
            env!("CARGO_PKG_VERSION")
        );
        if let Some((user, password)) = &self.login {
            let token = base64ct::Base64::encode_string(format!("{user}:{password}").as_bytes());
            head.push_str(&format!("Authorization: Basic {token}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let io = |e: std::io::Error| HttpError::Connect(format!("talking to {host}: {e}"));
        stream.write_all(head.as_bytes()).await.map_err(io)?;
        stream.write_all(body).await.map_err(io)?;
        stream.flush().await.map_err(io)?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_ANSWER as u64 + 1)
            .read_to_end(&mut raw)
            .await
            .map_err(io)?;
        if raw.len() > MAX_ANSWER {
            return Err(HttpError::Protocol("the answer is too large".to_owned()));
        }
        parse(&raw)
    }
}

fn parse(raw: &[u8]) -> Result<Answer, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(HttpError::Protocol(
                "the answer ended in its headers".to_owned(),
            ));
        }
        Err(e) => return Err(HttpError::Protocol(e.to_string())),
    };
    let status = response.code.unwrap_or(0);
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let rest = &raw[head_len..];
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(length) = header("content-length") {
        let length: usize = length
            .trim()
            .parse()
            .map_err(|_| HttpError::Protocol(format!("Content-Length `{length}`")))?;
        rest.get(..length)
            .ok_or_else(|| HttpError::Protocol("the answer is shorter than announced".to_owned()))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Answer { status, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, HttpError> {
    let bad = |what: &str| HttpError::Protocol(format!("chunked body: {what}"));
    let mut out = Vec::new();
    loop {
        let end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("no chunk size"))?;
        let size_text = std::str::from_utf8(&data[..end]).map_err(|_| bad("size"))?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("size"))?;
        data = &data[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).ok_or_else(|| bad("truncated"))?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).ok_or_else(|| bad("truncated"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_into_host_port_and_prefix() {
        let e = Endpoint::parse("http://127.0.0.1:18083").unwrap();
        assert_eq!(
            (e.https, e.host.as_str(), e.port, e.base.as_str()),
            (false, "127.0.0.1", 18083, "")
        );
        let e = Endpoint::parse("https://admin.example/midge/").unwrap();
        assert_eq!(
            (e.https, e.host.as_str(), e.port, e.base.as_str()),
            (true, "admin.example", 443, "/midge")
        );
        let e = Endpoint::parse("http://[::1]:9000").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 9000));
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("http://x:port").is_err());
    }

    #[test]
    fn chunked_and_sized_answers_are_read() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let a = parse(chunked).unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"abcde"[..]));
        let sized = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}";
        let a = parse(sized).unwrap();
        assert_eq!((a.status, a.body.as_slice()), (404, &b"{}"[..]));
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc").is_err());
    }
}
