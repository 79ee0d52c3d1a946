//! The admin listener: HTTP (or HTTPS with `[admin.tls]`) serving Prometheus metrics at
//! `/metrics` and the REST API under `/api/v1`.
//!
//! Access: with `admin.password_file`, every request needs HTTP Basic credentials of a
//! user in that file; users listed in `admin.viewers` may only read (GET), the others are
//! admins. Without a password file only loopback clients are served, as admins. Failed
//! logins spend the same per-address budget as MQTT logins (`[auth.rate_limit]`).
//!
//! The admin module reads the broker through its public parts and calls back into the
//! server only through [`ReloadFn`], so it imports nothing of the listener.

mod api;
mod live;
mod metrics;
mod process;

use std::collections::HashMap;
use std::collections::HashSet;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use base64ct::Encoding;
use hyper_util::rt::TokioIo;
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{AuthError, LoginGuard, PasswordFile};
use crate::broker::Broker;
use crate::config::{AdminConfig, CertIdentity, TlsConfig};
use crate::tls::{TlsError, TlsListener};

pub use api::ApiError;

/// Does what SIGHUP does: re-reads the configuration file and puts it in force. The
/// answer is the report as JSON; the error is what failed, for the caller.
pub type ReloadFn = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<serde_json::Value, String>> + Send>>
        + Send
        + Sync,
>;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request's headers may take to arrive (also bounds an idle keep-alive
/// connection waiting for its next request).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Admin connections open at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// How long verified credentials are remembered, so a dashboard polling every second
/// does not run a password hash per request.
const CREDENTIAL_CACHE_TTL: Duration = Duration::from_secs(300);
/// Credentials remembered at most.
const CREDENTIAL_CACHE_SIZE: usize = 64;

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// `[admin.tls]` files are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `admin.password_file` is unusable.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read only.
    Viewer,
    /// Read and change.
    Admin,
}

/// One MQTT listener as the admin API shows it.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    /// Name in logs and metrics.
    pub name: String,
    /// `mqtt`, `mqtts`, `ws` or `wss`.
    pub scheme: &'static str,
    /// Bound address.
    pub addr: SocketAddr,
    /// Gauge: connections open on it (including ones still in their handshakes).
    pub connections: Arc<AtomicU64>,
}

/// The MQTT listeners as the admin API lists them; a reload replaces the list.
#[derive(Debug, Default)]
pub struct Listeners(RwLock<Arc<Vec<ListenerInfo>>>);

impl Listeners {
    /// The listeners running now.
    pub fn list(&self) -> Arc<Vec<ListenerInfo>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the list (at start and after a reload).
    pub fn set(&self, list: Vec<ListenerInfo>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(list);
    }
}

/// The admin users: the password file and who of them are viewers.
#[derive(Debug)]
pub struct AdminUsers {
    /// The password file's path and contents, and the viewers: swapped together by
    /// [`AdminUsers::reconfigure`].
    file: RwLock<Users>,
    /// SHA-256 of accepted `user:password` pairs, with their user and when they were
    /// verified; cleared whenever the file is read again.
    verified: Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

/// What [`AdminUsers`] swaps.
#[derive(Debug)]
struct Users {
    path: Option<PathBuf>,
    file: Option<Arc<PasswordFile>>,
    viewers: Arc<HashSet<String>>,
}

impl Users {
    fn load(config: &AdminConfig) -> Result<Self, AuthError> {
        let file = match &config.password_file {
            Some(path) => Some(Arc::new(PasswordFile::load(path)?)),
            None => None,
        };
        Ok(Self {
            path: config.password_file.clone(),
            file,
            viewers: Arc::new(config.viewers.iter().cloned().collect()),
        })
    }
}

impl AdminUsers {
    /// Loads `admin.password_file`, if set.
    pub fn load(config: &AdminConfig) -> Result<Self, AuthError> {
        Ok(Self {
            file: RwLock::new(Users::load(config)?),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Reads `admin.password_file` (perhaps another file than before) and takes
    /// `admin.viewers` from `config`; on error the previous users stay. Remembered logins
    /// are forgotten either way.
    pub fn reconfigure(&self, config: &AdminConfig) -> Result<(), AuthError> {
        let swapped = Users::load(config)
            .map(|users| *self.file.write().unwrap_or_else(|e| e.into_inner()) = users);
        // After the swap, so no login checked against the old file is remembered.
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        swapped
    }

    fn current(&self) -> Option<Arc<PasswordFile>> {
        self.file
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .file
            .clone()
    }

    fn role_of(&self, user: &str) -> Role {
        let viewers = self
            .file
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .viewers
            .clone();
        if viewers.contains(user) {
            Role::Viewer
        } else {
            Role::Admin
        }
    }

    /// Whether logins are checked (a password file is configured).
    pub fn checks_logins(&self) -> bool {
        self.file
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .path
            .is_some()
    }
}

/// Everything the handlers read.
#[derive(Clone)]
pub struct AdminContext {
    /// The broker.
    pub broker: Arc<Broker>,
    /// The login limiter and auth counters shared with the MQTT listeners.
    pub guard: Arc<LoginGuard>,
    /// Admin users.
    pub users: Arc<AdminUsers>,
    /// The MQTT listeners.
    pub listeners: Arc<Listeners>,
    /// What `POST /api/v1/reload` runs.
    pub reload: ReloadFn,
    /// Live views (`/api/v1/live`) open now.
    pub live_views: Arc<std::sync::atomic::AtomicUsize>,
    /// A cluster node's client-id owners and node list; `None` on a single node.
    pub cluster: Option<Arc<crate::cluster::ownership::Owners>>,
}

impl std::fmt::Debug for AdminContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminContext")
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

/// Binds the admin listener and serves it until `shutdown`. Returns the bound address.
pub async fn start(
    context: AdminContext,
    config: &AdminConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), AdminError> {
    let addr = config.bind_addr();
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(TlsListener::load(
            &TlsConfig {
                cert: files.cert.clone(),
                key: files.key.clone(),
                client_ca: None,
                require_client_cert: false,
                cert_identity: CertIdentity::None,
                crl: None,
            },
            context.broker.log_limit.clone(),
        )?)),
        None => None,
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    let scheme = if tls.is_some() { "https" } else { "http" };
    if context.users.checks_logins() {
        tracing::info!(address = %local, "admin listener on {scheme}://{local}: HTTP Basic logins from admin.password_file");
    } else {
        tracing::warn!(address = %local, "admin listener on {scheme}://{local}: no admin.password_file, so only loopback clients are served, without login");
    }
    let router = api::router(context.clone());
    let task = tokio::spawn(accept_loop(listener, tls, context, router, shutdown));
    Ok((local, task))
}

trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<TlsListener>>,
    context: AdminContext,
    router: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            _ = shutdown.changed() => return,
        };
        let Ok(slot) = slot else { return };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                if let Some(pause) = crate::accept_error::back_off(&e) {
                    tracing::warn!(error = %e, "admin listener: accept failed; pausing {pause:?}");
                    tokio::time::sleep(pause).await;
                } else {
                    tracing::debug!(error = %e, "admin listener: accept failed");
                }
                continue;
            }
        };
        let (tls, context, router, mut shutdown) = (
            tls.clone(),
            context.clone(),
            router.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
            let Some(stream) = handshake(stream, tls.as_deref()).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                handle(context.clone(), router.clone(), peer, request)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

async fn handshake(stream: TcpStream, tls: Option<&TlsListener>) -> Option<Box<dyn ByteStream>> {
    let Some(tls) = tls else {
        return Some(Box::new(stream));
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
        Ok(Ok((stream, _))) => Some(Box::new(stream)),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "admin listener: TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// Authenticates, checks the role against the method, then routes.
async fn handle(
    context: AdminContext,
    mut router: axum::Router,
    peer: SocketAddr,
    mut request: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let role = match authenticate(&context, peer, &request).await {
        Ok(role) => role,
        Err(refusal) => return Ok(refusal),
    };
    // Dynamic-security commands are posted by viewers too; they may send only those
    // that read (see `api::dynsec`).
    let reads = matches!(*request.method(), Method::GET | Method::HEAD)
        || (request.method() == Method::POST && request.uri().path() == "/api/v1/dynsec");
    if role == Role::Viewer && !reads {
        return Ok(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this user is a viewer (admin.viewers) and may only read",
        )
        .into_response());
    }
    request.extensions_mut().insert(role);
    let request = request.map(Body::new);
    tower_service::Service::call(&mut router, request).await
}

async fn authenticate<B>(
    context: &AdminContext,
    peer: SocketAddr,
    request: &Request<B>,
) -> Result<Role, Response<Body>> {
    let users = &context.users;
    let Some(file) = users.current() else {
        return if is_loopback(peer.ip()) {
            Ok(Role::Admin)
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "loopback_only",
                "without admin.password_file the admin listener serves loopback clients only",
            )
            .into_response())
        };
    };
    let ip = peer.ip();
    if !context.guard.permits(ip) {
        crate::stats::Stats::add(&context.guard.stats.rate_limited, 1);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed logins from this address; try again later",
        )
        .into_response());
    }
    let Some((user, password)) = basic_credentials(request) else {
        return Err(unauthorized("HTTP Basic credentials are required"));
    };
    let digest: [u8; 32] = sha2::Sha256::digest(format!("{user}:{password}")).into();
    if let Some(role) = cached_role(users, &digest) {
        return Ok(role);
    }
    if !context
        .guard
        .verify_password(file, ip, &user, password.as_bytes())
        .await
    {
        tracing::info!(%peer, user, "admin listener: bad user name or password");
        return Err(unauthorized("bad user name or password"));
    }
    remember(users, digest, &user);
    Ok(users.role_of(&user))
}

fn cached_role(users: &AdminUsers, digest: &[u8; 32]) -> Option<Role> {
    let mut verified = users.verified.lock().unwrap_or_else(|e| e.into_inner());
    let (user, at) = verified.get(digest)?;
    if at.elapsed() > CREDENTIAL_CACHE_TTL {
        verified.remove(digest);
        return None;
    }
    Some(users.role_of(user))
}

fn remember(users: &AdminUsers, digest: [u8; 32], user: &str) {
    let mut verified = users.verified.lock().unwrap_or_else(|e| e.into_inner());
    if verified.len() >= CREDENTIAL_CACHE_SIZE {
        verified.retain(|_, (_, at)| at.elapsed() <= CREDENTIAL_CACHE_TTL);
        if verified.len() >= CREDENTIAL_CACHE_SIZE {
            verified.clear();
        }
    }
    verified.insert(digest, (user.to_owned(), Instant::now()));
}

fn basic_credentials<B>(request: &Request<B>) -> Option<(String, String)> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64ct::Base64::decode_vec(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn unauthorized(message: &str) -> Response<Body> {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"midge\", charset=\"UTF-8\""),
    );
    response
}

/// Whether `ip` is a loopback address (IPv4-mapped loopback included).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        IpAddr::V4(v4) => v4.is_loopback(),
    }
}
