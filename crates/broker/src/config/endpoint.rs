//! The URL of an HTTP auth service: plain data, parsed (and so checked) when the
//! configuration is validated, and used by `auth::http` to connect.

/// A parsed `http://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address to connect to (no brackets).
    pub(crate) host: String,
    /// Port to connect to.
    pub(crate) port: u16,
    /// `host:port` for the Host header (brackets kept for IPv6).
    pub(crate) authority: String,
    /// Path and query.
    pub(crate) path: String,
    /// The original URL, for logs.
    pub(crate) url: String,
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
}
