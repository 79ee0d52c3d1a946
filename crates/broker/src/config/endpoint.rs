//! The URL of an HTTP service (auth, JWKS): plain data, parsed (and so checked) when the
//! configuration is validated, and used by `auth` to connect.

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
    /// `https://`.
    pub(crate) tls: bool,
}

/// Splits `host:port` (`[v6]:port` too; the host keeps its brackets); without a port,
/// `default`. `None` when the port is not a number from 0 to 65535.
pub(crate) fn split_port(authority: &str, default: u16) -> Option<(&str, u16)> {
    match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => {
            Some((&authority[..i], authority[i + 1..].parse().ok()?))
        }
        _ => Some((authority, default)),
    }
}

impl Endpoint {
    /// Parses an `http://` or `https://` URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (rest, tls) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => return Err("must start with http:// or https://".to_owned()),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err("needs a host (and no user info)".into());
        }
        let (host, port) = split_port(authority, if tls { 443 } else { 80 })
            .ok_or_else(|| "bad port".to_owned())?;
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
            tls,
        })
    }

    /// Whether the URL is `https://`.
    pub fn is_https(&self) -> bool {
        self.tls
    }

    /// The path and query.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The URL as configured.
    pub fn url(&self) -> &str {
        &self.url
    }
}
