//! Authentication and authorization as the connection sees them: one [`AccessControl`]
//! per listener, built from its `[listener.auth]` settings falling back to `[auth]`.
//!
//! - Who may connect: a verified client certificate identity; else a user name and
//!   password checked against the password file ([`password`]) or the HTTP service
//!   ([`http`]); else the anonymous policy (by default: loopback clients only).
//! - What they may do: the ACL file ([`acl`]) and the HTTP service's `acl_url`; deny wins.
//!   Without either, everything is allowed (the session machine itself keeps clients
//!   out of `$SYS`).
//! - Failed logins are rate limited per client address ([`limiter`]); password checks
//!   run in `spawn_blocking`, a few at a time, so they never stall the async workers.
//!
//! The connection awaits these, so a backend may be slow (HTTP) without blocking the
//! session machine. The password and ACL files are reloaded by [`AccessControl::reload`]
//! (SIGHUP) without touching connections.

pub mod acl;
pub mod http;
pub mod limiter;
pub mod password;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use midge_proto::{ReasonCode, topic};
use tokio::sync::Semaphore;

pub use acl::{AclFile, FilterVerdict};
pub use http::{Action, Endpoint, HttpBackend, HttpError};
pub use limiter::LoginLimiter;
pub use password::{PasswordFile, hash_password};

use crate::config::{Config, ListenerConfig};
use crate::log_limit::LogLimiter;
use crate::stats::{AuthStats, Stats};

/// Why access settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line of a password or ACL file is wrong.
    #[error("{path}: line {line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// An HTTP backend setting is wrong.
    #[error("invalid value for `{key}`: {reason}")]
    Http {
        /// Dotted key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// What a client presents at CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// Client identifier.
    pub client_id: &'a str,
    /// User name, if given.
    pub username: Option<&'a str>,
    /// Password, if given.
    pub password: Option<&'a [u8]>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The identity of a verified TLS client certificate, when the listener maps one to a
    /// user name. Such a client is authenticated under that name, without a password.
    pub certificate_identity: Option<&'a str>,
}

/// Who a client is once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name ACLs see: the certificate identity, the verified user name, or the
    /// (unverified) CONNECT user name when nothing checks passwords; `None` if anonymous.
    pub username: Option<String>,
}

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Publish to a topic name.
    Publish,
    /// Subscribe to a topic filter.
    Subscribe,
}

/// State shared by every listener's access control: failed-login buckets per address,
/// the bound on concurrent password checks, and the broker's log limiter.
#[derive(Debug)]
pub struct LoginGuard {
    limiter: LoginLimiter,
    /// Lines about failed logins are rate limited per address with the broker's others.
    log_limit: Arc<LogLimiter>,
    /// Password checks in flight at most: a spray of slow hashes cannot fill the blocking
    /// thread pool.
    verifications: Arc<Semaphore>,
    /// Logins checked, by outcome, and how long the checks took.
    pub stats: AuthStats,
}

impl LoginGuard {
    /// Whether `ip` may try a login now (it has not used up its failed logins).
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.limiter.permits(ip, Instant::now())
    }

    /// Counts a failed login from `ip` (the admin listener's too).
    pub fn record_failure(&self, ip: IpAddr) {
        self.limiter.record_failure(ip, Instant::now());
    }

    /// Checks a password against `file` on the blocking pool, a few at a time, counting
    /// the outcome and the time taken in [`LoginGuard::stats`]; a failure is recorded
    /// against `ip`.
    pub async fn verify_password(
        &self,
        file: Arc<PasswordFile>,
        ip: IpAddr,
        username: &str,
        password: &[u8],
    ) -> bool {
        let started = Instant::now();
        let ok = verify_on_pool(&self.verifications, file, username, password).await;
        self.stats.duration.observe(started.elapsed());
        let counter = if ok {
            &self.stats.success
        } else {
            self.record_failure(ip);
            &self.stats.failure
        };
        Stats::add(counter, 1);
        ok
    }

    /// From `[auth.rate_limit]`; failed logins are logged through `log_limit`.
    pub fn new(config: &Config, log_limit: Arc<LogLimiter>) -> Arc<Self> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(Self {
            limiter: LoginLimiter::new(&config.auth.rate_limit),
            log_limit,
            verifications: Arc::new(Semaphore::new(cores.max(2))),
            stats: AuthStats::default(),
        })
    }
}

/// Verifies a password on the blocking pool, holding one of `slots`.
async fn verify_on_pool(
    slots: &Arc<Semaphore>,
    file: Arc<PasswordFile>,
    username: &str,
    password: &[u8],
) -> bool {
    let Ok(permit) = slots.clone().acquire_owned().await else {
        return false;
    };
    let (username, password) = (username.to_owned(), password.to_vec());
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        file.verify(&username, &password)
    })
    .await
    .unwrap_or(false)
}

/// A file that SIGHUP reloads: readers take the current `Arc`, a reload swaps it.
#[derive(Debug)]
struct Reloadable<T> {
    path: PathBuf,
    current: RwLock<Arc<T>>,
}

impl<T> Reloadable<T> {
    fn load(path: &Path, load: impl Fn(&Path) -> Result<T, AuthError>) -> Result<Self, AuthError> {
        Ok(Self {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(load(path)?)),
        })
    }

    fn current(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Loads the file again; on error the previous contents stay in force.
    fn reload(&self, load: impl Fn(&Path) -> Result<T, AuthError>) -> Result<(), AuthError> {
        let fresh = Arc::new(load(&self.path)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

#[derive(Debug)]
struct Inner {
    listener: String,
    /// `Some(true)`: anyone; `Some(false)`: nobody without credentials a backend accepts;
    /// `None`: anonymous clients only from loopback addresses.
    allow_anonymous: Option<bool>,
    passwords: Option<Reloadable<PasswordFile>>,
    acl: Option<Reloadable<AclFile>>,
    http: Option<HttpBackend>,
    guard: Arc<LoginGuard>,
}

/// Who may connect to one listener, and what they may do. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AccessControl {
    inner: Arc<Inner>,
}

impl AccessControl {
    /// Access control for `listener`: its `[listener.auth]` keys, each falling back to
    /// `[auth]`. Reads the password and ACL files.
    pub fn for_listener(
        config: &Config,
        listener: &ListenerConfig,
        guard: Arc<LoginGuard>,
    ) -> Result<Self, AuthError> {
        let global = &config.auth;
        let own = &listener.auth;
        let name = listener.display_name();
        let password_file = own.password_file.as_ref().or(global.password_file.as_ref());
        let acl_file = own.acl_file.as_ref().or(global.acl_file.as_ref());
        let http = own.http.as_ref().or(global.http.as_ref());
        let inner = Inner {
            allow_anonymous: own.allow_anonymous.or(global.allow_anonymous),
            passwords: password_file
                .map(|p| Reloadable::load(p, PasswordFile::load))
                .transpose()?,
            acl: acl_file
                .map(|p| Reloadable::load(p, AclFile::load))
                .transpose()?,
            http: http.map(|h| HttpBackend::new(h, &name)).transpose()?,
            listener: name,
            guard,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Anonymous clients allowed from anywhere or nowhere, and nothing else configured.
    pub fn anonymous_only(allow_anonymous: Option<bool>) -> Self {
        let config = Config::default();
        Self {
            inner: Arc::new(Inner {
                listener: String::new(),
                allow_anonymous,
                passwords: None,
                acl: None,
                http: None,
                guard: LoginGuard::new(&config, Default::default()),
            }),
        }
    }

    /// Whether anonymous clients are allowed from `peer`.
    fn anonymous_allowed(&self, peer: &SocketAddr) -> bool {
        self.inner
            .allow_anonymous
            .unwrap_or_else(|| peer.ip().is_loopback())
    }

    /// True when `allow_anonymous` is left to the loopback default.
    pub fn anonymous_unset(&self) -> bool {
        self.inner.allow_anonymous.is_none()
    }

    fn checks_passwords(&self) -> bool {
        self.inner.passwords.is_some()
            || self
                .inner
                .http
                .as_ref()
                .is_some_and(HttpBackend::checks_connect)
    }

    /// Whether anything restricts publish and subscribe.
    pub fn checks_topics(&self) -> bool {
        self.inner.acl.is_some()
            || self
                .inner
                .http
                .as_ref()
                .is_some_and(HttpBackend::checks_topics)
    }

    /// Checks a CONNECT. Refusals: v5 0x87 / v3 5 for an anonymous client that is not
    /// allowed; 0x86 / 4 for a bad user name or password (an unknown user included);
    /// 0x9F / 3 when the address has too many failed logins; 0x88 / 3 when the HTTP
    /// service does not answer.
    pub async fn authenticate(
        &self,
        credentials: &Credentials<'_>,
    ) -> Result<Identity, ReasonCode> {
        if let Some(name) = credentials.certificate_identity {
            // The TLS layer verified the certificate; its identity is the user name.
            return Ok(Identity {
                username: Some(name.to_owned()),
            });
        }
        let Some(username) = credentials.username else {
            return if self.anonymous_allowed(&credentials.peer) {
                Ok(Identity { username: None })
            } else {
                Err(ReasonCode::NOT_AUTHORIZED)
            };
        };
        if !self.checks_passwords() {
            // Nothing can check a password: the name is only a name, and the anonymous
            // policy decides (as Mosquitto does without a password file).
            return if self.anonymous_allowed(&credentials.peer) {
                Ok(Identity {
                    username: Some(username.to_owned()),
                })
            } else {
                Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
            };
        }
        let ip = credentials.peer.ip();
        let limiter = &self.inner.guard.limiter;
        let log = || self.inner.guard.log_limit.allow(ip);
        if !limiter.permits(ip, Instant::now()) {
            if log() {
                tracing::info!(
                    peer = %credentials.peer,
                    listener = %self.inner.listener,
                    retry_after = ?limiter.retry_after(ip, Instant::now()),
                    "too many failed logins from this address; CONNECT refused without checking"
                );
            }
            Stats::add(&self.inner.guard.stats.rate_limited, 1);
            return Err(ReasonCode::CONNECTION_RATE_EXCEEDED);
        }
        let stats = &self.inner.guard.stats;
        let started = Instant::now();
        // Boxed for the same reason as in `ask_http`: it only exists while a password
        // is being checked.
        let checked = Box::pin(self.check_password(credentials, username)).await;
        stats.duration.observe(started.elapsed());
        let counter = match &checked {
            Ok(true) => &stats.success,
            Ok(false) => &stats.failure,
            Err(_) => &stats.error,
        };
        Stats::add(counter, 1);
        match checked {
            Ok(true) => Ok(Identity {
                username: Some(username.to_owned()),
            }),
            Ok(false) => {
                limiter.record_failure(ip, Instant::now());
                if log() {
                    tracing::info!(peer = %credentials.peer, username, listener = %self.inner.listener, "bad user name or password");
                }
                Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
            }
            Err(_) => Err(ReasonCode::SERVER_UNAVAILABLE),
        }
    }

    /// The password file decides for its users; other users go to the HTTP service if
    /// there is one, and otherwise fail after the same verification work as a known user.
    async fn check_password(
        &self,
        credentials: &Credentials<'_>,
        username: &str,
    ) -> Result<bool, HttpError> {
        let http = self.inner.http.as_ref().filter(|h| h.checks_connect());
        if let Some(passwords) = &self.inner.passwords {
            let file = passwords.current();
            if file.contains(username) || http.is_none() {
                let Some(password) = credentials.password else {
                    return Ok(false);
                };
                return Ok(self.verify_blocking(file, username, password).await);
            }
        }
        let Some(http) = http else {
            return Ok(false);
        };
        let password = match credentials.password.map(std::str::from_utf8) {
            None => None,
            Some(Ok(p)) => Some(p),
            // JSON carries text; a binary password cannot be passed on faithfully.
            Some(Err(_)) => return Ok(false),
        };
        let checked = http
            .check_connect(
                credentials.client_id,
                Some(username),
                password,
                credentials.peer,
            )
            .await;
        if let Err(e) = &checked
            && self.inner.guard.log_limit.allow(credentials.peer.ip())
        {
            tracing::warn!(url = http.connect_url().unwrap_or_default(), client_id = credentials.client_id, peer = %credentials.peer, error = %e, "HTTP auth check failed; connection refused");
        }
        Ok(checked?.unwrap_or(false))
    }

    async fn verify_blocking(
        &self,
        file: Arc<PasswordFile>,
        username: &str,
        password: &[u8],
    ) -> bool {
        verify_on_pool(&self.inner.guard.verifications, file, username, password).await
    }

    /// Checks a publish or subscribe; see [`AccessControl::authorize_publish`] and
    /// [`AccessControl::authorize_subscribe`] (a partly readable filter counts as allowed).
    pub async fn authorize(
        &self,
        client_id: &str,
        username: Option<&str>,
        access: Access,
        topic: &str,
    ) -> bool {
        match access {
            Access::Publish => self.authorize_publish(client_id, username, topic).await,
            Access::Subscribe => {
                self.authorize_subscribe(client_id, username, topic).await != FilterVerdict::Denied
            }
        }
    }

    /// May this client publish to `topic`? The ACL file first (in memory, no await), then
    /// the HTTP service; either one's refusal denies. Also used for a will's topic.
    pub async fn authorize_publish(
        &self,
        client_id: &str,
        username: Option<&str>,
        topic: &str,
    ) -> bool {
        self.authorize_publish_now(client_id, username, topic)
            && self
                .ask_http(client_id, username, topic, Action::Publish)
                .await
    }

    /// Whether topic checks ask an HTTP service, so that they must be awaited; otherwise
    /// [`AccessControl::authorize_publish_now`] and
    /// [`AccessControl::authorize_subscribe_now`] give the whole answer.
    pub fn topic_checks_wait(&self) -> bool {
        self.inner.http.as_ref().is_some_and(|h| h.checks_topics())
    }

    /// The ACL file's part of [`AccessControl::authorize_publish`].
    pub fn authorize_publish_now(
        &self,
        client_id: &str,
        username: Option<&str>,
        topic: &str,
    ) -> bool {
        self.inner
            .acl
            .as_ref()
            .is_none_or(|acl| acl.current().may_publish(client_id, username, topic))
    }

    /// The ACL file's part of [`AccessControl::authorize_subscribe`].
    pub fn authorize_subscribe_now(
        &self,
        client_id: &str,
        username: Option<&str>,
        filter: &str,
    ) -> FilterVerdict {
        let Some(acl) = &self.inner.acl else {
            return FilterVerdict::Allowed;
        };
        let plain = match topic::parse_shared(filter) {
            Ok(Some(shared)) => shared.filter,
            _ => filter,
        };
        acl.current().subscribe_verdict(client_id, username, plain)
    }

    /// May this client subscribe to `filter`? A `$share/{group}/` prefix is set aside for
    /// the ACL file (the HTTP service sees the filter as sent).
    /// [`FilterVerdict::Partly`]: granted, and deliveries are then checked one by one
    /// (see [`AccessControl::delivery_filter`]).
    pub async fn authorize_subscribe(
        &self,
        client_id: &str,
        username: Option<&str>,
        filter: &str,
    ) -> FilterVerdict {
        let verdict = self.authorize_subscribe_now(client_id, username, filter);
        if verdict == FilterVerdict::Denied {
            return verdict;
        }
        if self
            .ask_http(client_id, username, filter, Action::Subscribe)
            .await
        {
            verdict
        } else {
            FilterVerdict::Denied
        }
    }

    async fn ask_http(
        &self,
        client_id: &str,
        username: Option<&str>,
        topic: &str,
        action: Action,
    ) -> bool {
        match &self.inner.http {
            // Boxed: the HTTP exchange is a large future, and inline it would make every
            // connection's task that much bigger even where no HTTP service is set up.
            Some(http) if http.checks_topics() => matches!(
                Box::pin(http.check_topic(client_id, username, topic, action)).await,
                Ok(Some(true))
            ),
            _ => true,
        }
    }

    /// A per-delivery read check for a client with a partly readable subscription. It
    /// reads the ACL in force at each delivery, so a reload applies at once.
    pub fn delivery_filter(&self, client_id: Arc<str>, username: Option<&str>) -> DeliveryFilter {
        DeliveryFilter {
            access: self.clone(),
            client_id,
            username: username.map(Arc::from),
        }
    }

    /// Reloads the password and ACL files. A file that fails to load is reported and the
    /// previous contents stay in force; connections are not touched.
    pub fn reload(&self) -> Result<(), AuthError> {
        let mut first_error = None;
        if let Some(passwords) = &self.inner.passwords {
            match passwords.reload(PasswordFile::load) {
                Ok(()) => {
                    tracing::info!(listener = %self.inner.listener, path = %passwords.path.display(), users = passwords.current().len(), "password file reloaded")
                }
                Err(e) => {
                    tracing::error!(listener = %self.inner.listener, error = %e, "password file not reloaded; the previous one stays in force");
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(acl) = &self.inner.acl {
            match acl.reload(AclFile::load) {
                Ok(()) => {
                    tracing::info!(listener = %self.inner.listener, path = %acl.path.display(), rules = acl.current().rule_count(), "ACL file reloaded")
                }
                Err(e) => {
                    tracing::error!(listener = %self.inner.listener, error = %e, "ACL file not reloaded; the previous one stays in force");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// A description for the start-up log.
    pub fn describe(&self) -> String {
        let inner = &self.inner;
        let mut parts = vec![match inner.allow_anonymous {
            Some(true) => "anonymous access allowed from any address".to_owned(),
            Some(false) => "anonymous access refused".to_owned(),
            None => "anonymous access allowed from loopback addresses only".to_owned(),
        }];
        if let Some(p) = &inner.passwords {
            parts.push(format!(
                "{} users from {}",
                p.current().len(),
                p.path.display()
            ));
        }
        if let Some(a) = &inner.acl {
            parts.push(format!(
                "{} ACL rules from {}",
                a.current().rule_count(),
                a.path.display()
            ));
        }
        if let Some(h) = &inner.http {
            parts.push(format!(
                "HTTP auth for{}{}",
                if h.checks_connect() { " connect" } else { "" },
                if h.checks_topics() { " topics" } else { "" }
            ));
        }
        parts.join("; ")
    }
}

/// A synchronous read check for each message delivered to one client; see
/// [`AccessControl::delivery_filter`].
#[derive(Debug, Clone)]
pub struct DeliveryFilter {
    access: AccessControl,
    client_id: Arc<str>,
    username: Option<Arc<str>>,
}

impl DeliveryFilter {
    /// Whether the client may receive a message published to `topic`.
    pub fn allows(&self, topic: &str) -> bool {
        match &self.access.inner.acl {
            Some(acl) => acl
                .current()
                .may_read(&self.client_id, self.username.as_deref(), topic),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(peer: &str) -> Credentials<'static> {
        Credentials {
            client_id: "c",
            username: None,
            password: None,
            peer: peer.parse().unwrap(),
            certificate_identity: None,
        }
    }

    #[tokio::test]
    async fn default_allows_anonymous_on_loopback_only() {
        let access = AccessControl::anonymous_only(None);
        assert!(
            access
                .authenticate(&credentials("127.0.0.1:5000"))
                .await
                .is_ok()
        );
        assert!(
            access
                .authenticate(&credentials("[::1]:5000"))
                .await
                .is_ok()
        );
        assert_eq!(
            access.authenticate(&credentials("192.0.2.7:5000")).await,
            Err(ReasonCode::NOT_AUTHORIZED)
        );
    }

    #[tokio::test]
    async fn explicit_settings_apply_everywhere() {
        let open = AccessControl::anonymous_only(Some(true));
        assert!(
            open.authenticate(&credentials("192.0.2.7:5000"))
                .await
                .is_ok()
        );
        let closed = AccessControl::anonymous_only(Some(false));
        assert!(
            closed
                .authenticate(&credentials("127.0.0.1:5000"))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_certificate_identity_authenticates_without_a_password() {
        let closed = AccessControl::anonymous_only(Some(false));
        let identity = closed
            .authenticate(&Credentials {
                certificate_identity: Some("device-7"),
                username: Some("ignored"),
                ..credentials("192.0.2.7:5000")
            })
            .await
            .unwrap();
        assert_eq!(identity.username.as_deref(), Some("device-7"));
    }
}
