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
        let (host, port) = match authority.rfind(':') {
            Some(i) if !authority[i..].contains(']') => (
                &authority[..i],
                authority[i + 1..]
                    .parse::<u16>()
                    .map_err(|_| "bad port".to_owned())?,
            ),
            _ => (authority, if tls { 443 } else { 80 }),
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
