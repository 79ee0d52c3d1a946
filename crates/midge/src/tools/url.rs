//! `-L` URLs: `mqtt[s]://[user[:password]@]host[:port][/topic]` as Mosquitto reads them,
//! and `ws[s]://[user[:password]@]host[:port][/path]` for WebSocket, where the path is the
//! HTTP endpoint (default `/mqtt`) and topics come from `-t`.

use midge_client::Scheme;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub scheme: Scheme,
    pub username: Option<String>,
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
    /// mqtt/mqtts: the topic; ws/wss: the HTTP path.
    pub path: Option<String>,
}

pub fn parse(url: &str) -> Result<BrokerUrl, String> {
    let bad = |why: &str| format!("-L {url}: {why}");
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected mqtt://, mqtts://, ws:// or wss://"))?;
    let scheme = match scheme {
        "mqtt" => Scheme::Tcp,
        "mqtts" => Scheme::Tls,
        "ws" => Scheme::Ws,
        "wss" => Scheme::Wss,
        _ => return Err(bad("unknown scheme; use mqtt, mqtts, ws or wss")),
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], Some(&rest[at..])),
        None => (rest, None),
    };
    // The password may contain '@'; the host may not.
    let (credentials, host_port) = match authority.rsplit_once('@') {
        Some((credentials, host_port)) => (Some(credentials), host_port),
        None => (None, authority),
    };
    let (username, password) = match credentials {
        None => (None, None),
        Some(credentials) => match credentials.split_once(':') {
            Some((user, password)) => (
                Some(percent_decode(user).map_err(|e| bad(&e))?),
                Some(percent_decode(password).map_err(|e| bad(&e))?),
            ),
            None => (
                Some(percent_decode(credentials).map_err(|e| bad(&e))?),
                None,
            ),
        },
    };
    let (host, port) = split_host_port(host_port).map_err(|e| bad(&e))?;
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let path = match (scheme, path) {
        (Scheme::Tcp | Scheme::Tls, Some(topic)) if topic.len() > 1 => {
            Some(percent_decode(&topic[1..]).map_err(|e| bad(&e))?)
        }
        (Scheme::Ws | Scheme::Wss, Some(path)) => Some(path.to_owned()),
        _ => None,
    };
    Ok(BrokerUrl {
        scheme,
        username,
        password,
        host,
        port: port.unwrap_or(scheme.default_port()),
        path,
    })
}

fn split_host_port(host_port: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = host_port.strip_prefix('[') {
        // [IPv6]:port
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed '[' in the host".to_owned())?;
        (host, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    let port = match port {
        None => None,
        Some(port) => Some(
            port.parse::<u16>()
                .map_err(|_| format!("bad port {port:?}"))?,
        ),
    };
    Ok((host.to_owned(), port))
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {text:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls_carry_credentials_host_port_and_topic() {
        let url = parse("mqtt://alice:p%40ss@example.com:1884/sensors/%23").unwrap();
        assert_eq!(url.scheme, Scheme::Tcp);
        assert_eq!(url.username.as_deref(), Some("alice"));
        assert_eq!(url.password.as_deref(), Some("p@ss"));
        assert_eq!(url.host, "example.com");
        assert_eq!(url.port, 1884);
        assert_eq!(url.path.as_deref(), Some("sensors/#"));
    }

    #[test]
    fn default_ports_follow_the_scheme() {
        assert_eq!(parse("mqtt://h").unwrap().port, 1883);
        assert_eq!(parse("mqtts://h/t").unwrap().port, 8883);
        assert_eq!(parse("ws://h").unwrap().port, 8083);
        assert_eq!(parse("wss://h").unwrap().port, 8084);
    }

    #[test]
    fn websocket_paths_are_http_paths() {
        let url = parse("wss://bob@[::1]:9001/ws?x=1").unwrap();
        assert_eq!(url.scheme, Scheme::Wss);
        assert_eq!(url.host, "::1");
        assert_eq!(url.port, 9001);
        assert_eq!(url.username.as_deref(), Some("bob"));
        assert_eq!(url.password, None);
        assert_eq!(url.path.as_deref(), Some("/ws?x=1"));
    }

    #[test]
    fn bad_urls_say_why() {
        assert!(parse("http://h").unwrap_err().contains("unknown scheme"));
        assert!(parse("h:1883").unwrap_err().contains("expected mqtt://"));
        assert!(parse("mqtt://h:99999").unwrap_err().contains("bad port"));
        assert!(parse("mqtt://:1883").unwrap_err().contains("no host"));
    }
}
