//! JWT authentication (`[auth.jwt]`): a token in the CONNECT password (or user name) is
//! checked with a shared secret (HS256/384/512), a PEM public key or a JWKS (RS, PS, ES,
//! EdDSA), by the `jsonwebtoken` crate on ring.
//!
//! - `exp` is required; `exp`, `nbf` and `iat` are checked with `leeway_secs`.
//! - `verify_claims` names claims that must equal a value, where `%u` is the CONNECT user
//!   name and `%c` the client id (a claim that is an array must contain it).
//! - `acl_claim` names an optional claim granting topics to the connection, in EMQX's
//!   forms: `{"pub": [..], "sub": [..], "all": [..]}` or a list of
//!   `{"permission": "allow"|"deny", "action": "publish"|"subscribe"|"all", "topic": ..}`
//!   (`${username}`/`${clientid}` or `%u`/`%c` as whole levels). When a token carries the
//!   claim, it alone decides that connection's topics.
//! - A JWKS file is re-read on SIGHUP and, when it changed, every `jwks_refresh_secs`; a
//!   JWKS URL is fetched at start and then every `jwks_refresh_secs`, in the background.
//!
//! The token's `exp` ends the connection: the connection closes at that time (MQTT 5 with
//! DISCONNECT 0xA0).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::AuthError;
use super::acl::AclFile;
use super::http::ClientTls;
use crate::config::{AclLeadingTopics, Endpoint, JwtConfig, JwtFrom};

/// An unknown `kid`, or a failed JWKS fetch, has the keys loaded again after this long
/// (or after `jwks_refresh_secs`, if that is shorter).
const SOON: Duration = Duration::from_secs(10);

/// Per-connection grants remembered at most (entries of expired tokens are dropped first).
const MAX_GRANTS: usize = 100_000;

/// Key families: a key only verifies algorithms of its own family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(algorithm: Algorithm) -> Family {
    match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        Algorithm::EdDSA => Family::Ed,
        _ => Family::Rsa,
    }
}

struct Key {
    kid: Option<String>,
    family: Family,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?}, {:?})", self.kid, self.family)
    }
}

#[derive(Debug)]
enum JwksSource {
    File(PathBuf),
    Url(Endpoint),
}

/// Keys that can change: from a JWKS file or URL.
#[derive(Debug)]
struct Jwks {
    source: JwksSource,
    refresh: Duration,
    tls: ClientTls,
    current: RwLock<Arc<Vec<Key>>>,
    /// When the keys were last loaded (or a load was last started), and the file's state.
    last: Mutex<(Instant, Option<SystemTime>)>,
    fetching: Arc<AtomicBool>,
}

#[derive(Debug)]
enum Keys {
    Fixed(Vec<Key>),
    Jwks(Arc<Jwks>),
}

/// A token's verdict.
#[derive(Debug)]
pub enum Verdict {
    /// The credential is not a JWT: another backend may know the user.
    NotMine,
    /// A valid token.
    Accepted(Grant),
    /// A JWT that does not verify, has expired, or lacks a required claim.
    Refused(String),
}

/// What a valid token gives the connection.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The user name: the CONNECT user name (`from = "password"`) or the token's `sub`
    /// (`from = "username"`).
    pub username: Option<String>,
    /// The token's `exp`.
    pub expires: SystemTime,
    /// Topics the token's ACL claim grants, if it has one.
    pub acl: Option<Arc<AclFile>>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct JwtBackend {
    from: JwtFrom,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    verify_claims: Vec<(String, String)>,
    acl_claim: Option<String>,
    keys: Keys,
    /// The ACL claim of each client id's latest login on this listener.
    grants: Mutex<HashMap<String, (Arc<AclFile>, SystemTime)>>,
}

fn bad(key: &str, reason: impl Into<String>) -> AuthError {
    AuthError::Http {
        key: format!("auth.jwt.{key}"),
        reason: reason.into(),
    }
}

impl JwtBackend {
    /// From `[auth.jwt]`: reads the public key or JWKS file (a JWKS URL is fetched in the
    /// background, so this needs a tokio runtime when one is configured).
    pub fn new(config: &JwtConfig) -> Result<Self, AuthError> {
        let algorithms = config
            .algorithms
            .iter()
            .map(|name| {
                name.parse::<Algorithm>()
                    .map_err(|_| bad("algorithms", format!("unknown algorithm `{name}`")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if algorithms.is_empty() {
            return Err(bad("algorithms", "name at least one algorithm"));
        }
        let hmac = algorithms.iter().any(|a| family(*a) == Family::Hmac);
        let keys = match (&config.secret, &config.public_key, &config.jwks) {
            (Some(secret), None, None) => {
                if algorithms.iter().any(|a| family(*a) != Family::Hmac) {
                    return Err(bad("secret", "only HS256, HS384 and HS512 use a secret"));
                }
                Keys::Fixed(vec![Key {
                    kid: None,
                    family: Family::Hmac,
                    key: DecodingKey::from_secret(secret.as_bytes()),
                }])
            }
            (None, Some(path), None) => Keys::Fixed(vec![public_key(path, &algorithms)?]),
            (None, None, Some(jwks)) => {
                if hmac {
                    return Err(bad("jwks", "HS algorithms need `secret`"));
                }
                let source = if jwks.starts_with("http://") || jwks.starts_with("https://") {
                    JwksSource::Url(Endpoint::parse(jwks).map_err(|r| bad("jwks", r))?)
                } else {
                    JwksSource::File(PathBuf::from(jwks))
                };
                let tls = match &source {
                    JwksSource::Url(url) if url.is_https() => {
                        ClientTls::new(config.ca_file.as_deref(), None, None)
                            .map_err(|r| bad("ca_file", r))?
                    }
                    _ => ClientTls::default(),
                };
                let jwks = Arc::new(Jwks {
                    source,
                    refresh: Duration::from_secs(config.jwks_refresh_secs.max(1)),
                    tls,
                    current: RwLock::new(Arc::new(Vec::new())),
                    last: Mutex::new((Instant::now(), None)),
                    fetching: Arc::new(AtomicBool::new(false)),
                });
                match &jwks.source {
                    JwksSource::File(path) => jwks.load_file(path, true)?,
                    JwksSource::Url(_) => jwks.start_fetch(),
                }
                Keys::Jwks(jwks)
            }
            _ => {
                return Err(bad(
                    "secret",
                    "set exactly one of secret, public_key and jwks",
                ));
            }
        };
        Ok(Self {
            from: config.from,
            algorithms,
            leeway: config.leeway_secs,
            verify_claims: config
                .verify_claims
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            acl_claim: config.acl_claim.clone(),
            keys,
            grants: Mutex::new(HashMap::new()),
        })
    }

    /// Where the token comes from.
    pub fn from(&self) -> JwtFrom {
        self.from
    }

    /// Whether tokens may carry topic grants.
    pub fn grants_topics(&self) -> bool {
        self.acl_claim.is_some()
    }

    /// Re-reads a JWKS file (SIGHUP). A fetched JWKS is fetched again.
    pub fn reload(&self) -> Result<(), AuthError> {
        match &self.keys {
            Keys::Jwks(jwks) => match &jwks.source {
                JwksSource::File(path) => jwks.load_file(path, true),
                JwksSource::Url(_) => {
                    jwks.start_fetch();
                    Ok(())
                }
            },
            Keys::Fixed(_) => Ok(()),
        }
    }

    /// Checks the token a client presents. `username` is the CONNECT user name, `token`
    /// the credential `from` names.
    pub fn check(&self, client_id: &str, username: Option<&str>, token: &str) -> Verdict {
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Verdict::NotMine;
        };
        let keys = match &self.keys {
            Keys::Fixed(keys) => KeysRef::Fixed(keys),
            Keys::Jwks(jwks) => KeysRef::Shared(jwks.keys()),
        };
        let keys = keys.as_slice();
        let wanted = family(header.alg);
        let mut candidates: Vec<&Key> = keys
            .iter()
            .filter(|k| k.family == wanted)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        // No key fits (an unknown `kid`, say): one verification is still done, with the
        // first key at hand, so a guess costs what a real token does. A JWKS may have
        // rotated: it is loaded again, at most every few seconds, for the next logins.
        let decoy = candidates.is_empty();
        if decoy && let Keys::Jwks(jwks) = &self.keys {
            jwks.refresh_if_due(jwks.refresh.min(SOON));
        }
        if decoy && let Some(first) = keys.first() {
            candidates.push(first);
        }
        let mut last_error = "no key for the token's algorithm or kid".to_owned();
        for key in candidates {
            let algorithms: Vec<Algorithm> = self
                .algorithms
                .iter()
                .copied()
                .filter(|a| family(*a) == key.family)
                .collect();
            if algorithms.is_empty() {
                continue;
            }
            let mut validation = Validation::new(algorithms[0]);
            validation.algorithms = algorithms;
            validation.leeway = self.leeway;
            validation.validate_aud = false;
            validation.required_spec_claims = ["exp".to_owned()].into();
            match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
                Ok(data) if !decoy => return self.accept(client_id, username, &data.claims),
                Ok(_) => {}
                Err(e) => last_error = format!("{:?}", e.kind()),
            }
        }
        Verdict::Refused(last_error)
    }

    fn accept(&self, client_id: &str, username: Option<&str>, claims: &Value) -> Verdict {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if claims
            .get("iat")
            .and_then(Value::as_u64)
            .is_some_and(|iat| iat > now + self.leeway)
        {
            return Verdict::Refused("issued in the future (iat)".to_owned());
        }
        let username = match self.from {
            JwtFrom::Password => username.map(str::to_owned),
            JwtFrom::Username => claims.get("sub").and_then(Value::as_str).map(str::to_owned),
        };
        for (name, template) in &self.verify_claims {
            let want = template
                .replace("%u", username.as_deref().unwrap_or_default())
                .replace("%c", client_id);
            let matches = match claims.get(name) {
                Some(Value::String(s)) => *s == want,
                Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(&want)),
                // A number or boolean compares as its JSON text (`"42"`, `"true"`).
                Some(other) => {
                    let text = other.to_string();
                    text == want
                }
                None => false,
            };
            // A template with %u needs a user name to compare with.
            if !matches || (template.contains("%u") && username.is_none()) {
                return Verdict::Refused(format!("claim `{name}` is not `{want}`"));
            }
        }
        let Some(exp) = claims.get("exp").and_then(Value::as_u64) else {
            return Verdict::Refused("no numeric exp".to_owned());
        };
        let expires = UNIX_EPOCH + Duration::from_secs(exp.saturating_add(self.leeway));
        let acl = match self.acl_claim.as_deref().and_then(|name| claims.get(name)) {
            None => None,
            Some(claim) => match acl_from_claim(claim) {
                Ok(acl) => Some(Arc::new(acl)),
                Err(reason) => return Verdict::Refused(format!("ACL claim: {reason}")),
            },
        };
        Verdict::Accepted(Grant {
            username,
            expires,
            acl,
        })
    }

    /// Remembers (or forgets) the ACL claim of `client_id`'s newest login.
    pub fn remember(&self, client_id: &str, grant: Option<&Grant>) {
        let mut grants = self.grants.lock().unwrap_or_else(PoisonError::into_inner);
        match grant.and_then(|g| g.acl.clone().map(|acl| (acl, g.expires))) {
            Some(entry) => {
                if grants.len() >= MAX_GRANTS {
                    let now = SystemTime::now();
                    grants.retain(|_, (_, expires)| *expires > now);
                }
                if grants.len() < MAX_GRANTS {
                    grants.insert(client_id.to_owned(), entry);
                }
            }
            None => {
                grants.remove(client_id);
            }
        }
    }

    /// The ACL a token granted `client_id`, if its newest login had one. An expired
    /// token's grant allows nothing (its connection is closed at expiry anyway).
    pub fn grant(&self, client_id: &str) -> Option<Arc<AclFile>> {
        let grants = self.grants.lock().unwrap_or_else(PoisonError::into_inner);
        let (acl, expires) = grants.get(client_id)?;
        if *expires <= SystemTime::now() {
            return Some(Arc::new(AclFile::default()));
        }
        Some(acl.clone())
    }
}

enum KeysRef<'a> {
    Fixed(&'a [Key]),
    Shared(Arc<Vec<Key>>),
}

impl KeysRef<'_> {
    fn as_slice(&self) -> &[Key] {
        match self {
            Self::Fixed(keys) => keys,
            Self::Shared(keys) => keys,
        }
    }
}

fn public_key(path: &Path, algorithms: &[Algorithm]) -> Result<Key, AuthError> {
    let pem = std::fs::read(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })?;
    let families: Vec<Family> = algorithms.iter().map(|a| family(*a)).collect();
    let Some(&first) = families.first() else {
        return Err(bad("algorithms", "name at least one algorithm"));
    };
    if families.iter().any(|f| *f != first) {
        return Err(bad(
            "algorithms",
            "one public_key serves one family: RS/PS, ES or EdDSA",
        ));
    }
    let key = match first {
        Family::Hmac => return Err(bad("public_key", "HS algorithms need `secret`")),
        Family::Rsa => DecodingKey::from_rsa_pem(&pem),
        Family::Ec => DecodingKey::from_ec_pem(&pem),
        Family::Ed => DecodingKey::from_ed_pem(&pem),
    }
    .map_err(|e| bad("public_key", format!("{}: {e}", path.display())))?;
    Ok(Key {
        kid: None,
        family: first,
        key,
    })
}

/// The keys of a JWKS document; keys of a kind this cannot use are skipped.
fn parse_jwks(text: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_slice(text).map_err(|e| format!("not a JWKS: {e}"))?;
    Ok(set
        .keys
        .iter()
        .filter_map(|jwk| {
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Family::Rsa,
                AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
                AlgorithmParameters::OctetKey(_) => return None,
            };
            Some(Key {
                kid: jwk.common.key_id.clone(),
                family,
                key: DecodingKey::from_jwk(jwk).ok()?,
            })
        })
        .collect())
}

impl Jwks {
    fn keys(self: &Arc<Self>) -> Arc<Vec<Key>> {
        self.refresh_if_due(self.refresh);
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// When `every` has passed since the last load: a changed file is read again; a URL
    /// is fetched in the background (the keys in force serve until it is done).
    fn refresh_if_due(self: &Arc<Self>, every: Duration) {
        {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            if last.0.elapsed() < every {
                return;
            }
            last.0 = Instant::now();
        }
        match &self.source {
            JwksSource::File(path) => {
                if let Err(e) = self.load_file(path, false) {
                    tracing::error!(error = %e, "JWKS file not reloaded; the previous keys stay in force");
                }
            }
            JwksSource::Url(_) => self.start_fetch(),
        }
    }

    /// Reads the file (unless unchanged and not `force`d).
    fn load_file(&self, path: &Path, force: bool) -> Result<(), AuthError> {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            if !force && modified.is_some() && last.1 == modified {
                return Ok(());
            }
            *last = (Instant::now(), modified);
        }
        let text = std::fs::read(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        let keys = parse_jwks(&text)
            .map_err(|reason| bad("jwks", format!("{}: {reason}", path.display())))?;
        tracing::info!(path = %path.display(), keys = keys.len(), "JWKS loaded");
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        Ok(())
    }

    /// Fetches the URL in a task of its own (one at a time); on failure the keys in force
    /// stay.
    fn start_fetch(self: &Arc<Self>) {
        let JwksSource::Url(_) = &self.source else {
            return;
        };
        if self.fetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.fetching.store(false, Ordering::Release);
            return;
        };
        let jwks = self.clone();
        runtime.spawn(async move {
            let JwksSource::Url(url) = &jwks.source else {
                return;
            };
            let fetch = url.send(&jwks.tls, "GET", url.path(), None, b"");
            let failure = match tokio::time::timeout(Duration::from_secs(10), fetch).await {
                Ok(Ok((200, body))) => match parse_jwks(&body) {
                    Ok(keys) => {
                        tracing::info!(url = %url.url(), keys = keys.len(), "JWKS fetched");
                        *jwks.current.write().unwrap_or_else(PoisonError::into_inner) =
                            Arc::new(keys);
                        None
                    }
                    Err(e) => Some(e),
                },
                Ok(Ok((status, _))) => Some(format!("HTTP status {status}")),
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("no answer within 10 s".to_owned()),
            };
            if let Some(error) = failure {
                tracing::error!(url = %url.url(), %error, "JWKS fetch failed; the previous keys stay in force");
                // Tried again soon rather than after a whole refresh interval.
                let mut last = jwks.last.lock().unwrap_or_else(PoisonError::into_inner);
                let wait = jwks.refresh.saturating_sub(SOON);
                last.0 = Instant::now().checked_sub(wait).unwrap_or(last.0);
            }
            jwks.fetching.store(false, Ordering::Release);
        });
    }
}

/// An ACL from a token's claim, in either of EMQX's forms (see the module documentation),
/// as `pattern` rules of an ACL file so the usual matching applies.
fn acl_from_claim(claim: &Value) -> Result<AclFile, String> {
    let mut lines = Vec::new();
    let mut rule = |grant: &str, topic: &Value| -> Result<(), String> {
        let topic = topic.as_str().ok_or("a topic is not a string")?;
        if topic.contains(['\n', '\r']) {
            return Err("a topic has a line break".to_owned());
        }
        let topic = topic
            .replace("${username}", "%u")
            .replace("${clientid}", "%c");
        lines.push(format!("pattern {grant} {topic}"));
        Ok(())
    };
    match claim {
        Value::Object(map) => {
            for (action, topics) in map {
                let grant = match action.as_str() {
                    "pub" | "publish" => "write",
                    "sub" | "subscribe" => "read",
                    "all" => "readwrite",
                    other => return Err(format!("unknown key `{other}`")),
                };
                for topic in topics.as_array().ok_or("expected lists of topics")? {
                    rule(grant, topic)?;
                }
            }
        }
        Value::Array(rules) => {
            for r in rules {
                let permission = r.get("permission").and_then(Value::as_str);
                let action = r.get("action").and_then(Value::as_str).unwrap_or("all");
                let grant = match (permission, action) {
                    (Some("deny"), _) => "deny",
                    (Some("allow"), "publish") => "write",
                    (Some("allow"), "subscribe") => "read",
                    (Some("allow"), "all") => "readwrite",
                    _ => return Err(format!("bad rule {r}")),
                };
                match (r.get("topic"), r.get("topics")) {
                    (Some(topic), None) => rule(grant, topic)?,
                    (None, Some(Value::Array(topics))) => {
                        for topic in topics {
                            rule(grant, topic)?;
                        }
                    }
                    _ => return Err(format!("rule without topic: {r}")),
                }
            }
        }
        _ => return Err("expected an object or a list".to_owned()),
    }
    AclFile::parse(
        Path::new("the token's ACL claim"),
        &lines.join("\n"),
        AclLeadingTopics::Anonymous,
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    fn config(secret: &str) -> JwtConfig {
        JwtConfig {
            secret: Some(secret.to_owned()),
            ..JwtConfig::default()
        }
    }

    fn token(claims: &Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn tokens_are_checked_for_key_expiry_and_claims() {
        let mut c = config("s3cret");
        c.verify_claims = [("sub".to_owned(), "%u".to_owned())].into();
        let jwt = JwtBackend::new(&c).unwrap();
        let good = token(
            &serde_json::json!({"sub": "alice", "exp": now() + 60}),
            "s3cret",
        );
        assert!(matches!(
            jwt.check("c", Some("alice"), &good),
            Verdict::Accepted(Grant { username: Some(ref u), .. }) if u == "alice"
        ));
        assert!(matches!(
            jwt.check("c", Some("bob"), &good),
            Verdict::Refused(_)
        ));
        let wrong_key = token(
            &serde_json::json!({"sub": "alice", "exp": now() + 60}),
            "other",
        );
        assert!(matches!(
            jwt.check("c", Some("alice"), &wrong_key),
            Verdict::Refused(_)
        ));
        let expired = token(
            &serde_json::json!({"sub": "alice", "exp": now() - 120}),
            "s3cret",
        );
        assert!(matches!(
            jwt.check("c", Some("alice"), &expired),
            Verdict::Refused(_)
        ));
        let future = token(
            &serde_json::json!({"sub": "alice", "exp": now() + 600, "iat": now() + 300}),
            "s3cret",
        );
        assert!(matches!(
            jwt.check("c", Some("alice"), &future),
            Verdict::Refused(_)
        ));
        assert!(matches!(
            jwt.check("c", Some("alice"), "hunter2"),
            Verdict::NotMine
        ));
    }

    #[test]
    fn a_token_in_the_user_name_names_the_user_by_its_sub() {
        let mut c = config("s3cret");
        c.from = JwtFrom::Username;
        c.verify_claims = [("aud".to_owned(), "mqtt:%c".to_owned())].into();
        let jwt = JwtBackend::new(&c).unwrap();
        let t = token(
            &serde_json::json!({"sub": "dev-9", "aud": ["x", "mqtt:c1"], "exp": now() + 60}),
            "s3cret",
        );
        assert!(matches!(
            jwt.check("c1", Some(&t), &t),
            Verdict::Accepted(Grant { username: Some(ref u), .. }) if u == "dev-9"
        ));
        assert!(matches!(jwt.check("c2", Some(&t), &t), Verdict::Refused(_)));
    }

    #[test]
    fn acl_claims_in_both_forms() {
        let object =
            acl_from_claim(&serde_json::json!({"pub": ["up/%c"], "sub": ["down/#"]})).unwrap();
        assert!(object.may_publish("d1", Some("u"), "up/d1"));
        assert!(!object.may_publish("d1", Some("u"), "up/d2"));
        assert!(object.may_read("d1", Some("u"), "down/x"));
        assert!(!object.may_publish("d1", Some("u"), "down/x"));
        let list = acl_from_claim(&serde_json::json!([
            {"permission": "allow", "action": "all", "topic": "u/${username}/#"},
            {"permission": "deny", "action": "all", "topic": "u/${username}/secret"},
        ]))
        .unwrap();
        assert!(list.may_publish("c", Some("al"), "u/al/x"));
        assert!(!list.may_publish("c", Some("al"), "u/al/secret"));
        assert!(!list.may_read("c", Some("bo"), "u/al/x"));
        assert!(acl_from_claim(&serde_json::json!({"pub": ["a\ntopic #"]})).is_err());
        assert!(acl_from_claim(&serde_json::json!("topic")).is_err());
    }
}
