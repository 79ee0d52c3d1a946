//! Accept loops and the running server: binds every listener, accepts and spawns at once
//! (TLS and WebSocket handshakes and CONNECT happen in the connection's task under the
//! connect timeout, so a slow client never stalls accepting), limits connections (in all,
//! and per address before any handshake), runs the background tasks, reloads
//! certificates, and shuts down gracefully.

mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminContext, AdminError, AdminUsers, ListenerInfo};
use crate::amqp::{self, AmqpContext};
use crate::auth::{AccessControl, AuthError, LoginGuard};
use crate::broker::Broker;
use crate::config::{Config, ListenerProtocol};
use crate::conn_limit::{ConnLimiter, Refusal};
use crate::connection::{self, ListenerContext};
use crate::model::now_millis;
use crate::stats::Stats;
use crate::store::{self, Opening, StoreError};
use crate::sys;
use crate::tls::{self, TlsError, TlsListener};

/// How long shutdown waits for connections to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often certificate, key and client CA files are checked for changes.
const TLS_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({name}): {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A listener's password file, ACL file or HTTP auth settings are unusable.
    #[error("listener {name}: {source}")]
    Auth {
        /// Listener name.
        name: String,
        /// What is wrong, with the file and line.
        source: AuthError,
    },
    /// A listener's certificate, key or client CA file is missing or unusable.
    #[error("listener {name}: {source}")]
    Tls {
        /// Listener name.
        name: String,
        /// Which file and why.
        source: TlsError,
    },
    /// The store could not be opened or read back.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a reload left some settings as they were.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A TLS listener's files could not be loaded; it keeps its previous certificate.
    #[error("listener {name}: {source}; keeping the previous certificate")]
    Tls {
        /// Listener name.
        name: String,
        /// Which file and why.
        source: TlsError,
    },
    /// A password or ACL file could not be loaded; its previous contents stay in force.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// A listener whose certificate can be reloaded.
type TlsListeners = Arc<Vec<(String, Arc<TlsListener>)>>;

/// A running broker. Dropping it without [`Server::shutdown`] leaves its tasks running on
/// the runtime until the runtime stops.
#[derive(Debug)]
pub struct Server {
    broker: Arc<Broker>,
    local_addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// One clone per live connection task; the count tells shutdown when all have ended.
    live: Arc<()>,
    /// What [`Server::reload`] re-reads; shared with the admin listener.
    reloader: Arc<Reloader>,
    /// Where the admin listener listens, when it runs.
    admin_addr: Option<SocketAddr>,
}

/// What SIGHUP re-reads.
#[derive(Debug)]
struct Reloader {
    broker: Arc<Broker>,
    /// Each listener's access control.
    access: Vec<AccessControl>,
    /// The TLS listeners.
    tls: TlsListeners,
    /// The admin listener's users.
    admin_users: Option<Arc<AdminUsers>>,
}

impl Reloader {
    fn reload(&self) -> Result<(), ReloadError> {
        let mut first_error = reload_certificates(&self.tls, true).err();
        for access in &self.access {
            if let Err(e) = access.reload() {
                first_error.get_or_insert(e.into());
            }
        }
        if let Some(Err(e)) = self.admin_users.as_ref().map(|users| users.reload()) {
            tracing::warn!("admin.password_file: {e}; keeping the previous users");
            first_error.get_or_insert(e.into());
        }
        // Subscriptions granted under the old rules are checked under the new ones.
        self.broker.registry.recheck_owners();
        first_error.map_or(Ok(()), Err)
    }
}

/// Counts a connection on its listener while it lives (part of what the connection
/// task holds).
#[derive(Debug)]
struct OpenConnection(Arc<AtomicU64>);

impl OpenConnection {
    fn enter(gauge: &Arc<AtomicU64>) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Server {
    /// Reads the store back, then binds every listener and starts serving. A damaged
    /// store stops the start (see [`Server::start_with`] for `--recover`).
    pub async fn start(config: Config) -> Result<Self, StartError> {
        Self::start_with(config, Opening::default()).await
    }

    /// [`Server::start`], with control over how the store is opened.
    pub async fn start_with(config: Config, opening: Opening) -> Result<Self, StartError> {
        // Sessions, subscriptions and retained messages are back before anyone connects.
        let storage = config.storage.clone();
        let (journal, recovered) =
            tokio::task::spawn_blocking(move || store::open(&storage, opening))
                .await
                .map_err(|e| StoreError::Failed {
                    path: config.storage.dir.display().to_string(),
                    what: format!("opening the store stopped: {e}"),
                })??;
        let broker = Broker::with_journal(config, Some(journal));
        broker.restore(recovered, now_millis());
        let config = broker.config.clone();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let live = Arc::new(());
        let limit = match config.mqtt.max_connections {
            0 => Semaphore::MAX_PERMITS,
            n => n,
        };
        // One per server: both limits hold across listeners.
        let limits = AcceptLimits {
            total: Arc::new(Semaphore::new(limit)),
            per_ip: ConnLimiter::new(&config.limits),
        };

        let mut tasks = Vec::new();
        let mut local_addrs = Vec::new();
        let mut access_controls = Vec::new();
        let login_guard = LoginGuard::new(&config, broker.log_limit.clone());
        let mut tls_listeners = Vec::new();
        let mut listener_infos = Vec::new();
        // AMQP queues are shared by every AMQP listener.
        let amqp_queues = broker.amqp.clone();
        for listener_config in &config.listeners {
            let name = listener_config.display_name();
            let addr = listener_config.bind;
            let tls = match &listener_config.tls {
                Some(settings) => {
                    let loaded = TlsListener::load(settings, broker.log_limit.clone()).map_err(
                        |source| StartError::Tls {
                            name: name.clone(),
                            source,
                        },
                    )?;
                    let loaded = Arc::new(loaded);
                    tls_listeners.push((name.clone(), loaded.clone()));
                    Some(loaded)
                }
                None => None,
            };
            let websocket =
                (listener_config.protocol == ListenerProtocol::Ws).then(|| ws::WsSettings {
                    paths: listener_config.ws_paths(),
                    max_message_size: usize::try_from(config.mqtt.max_packet_size)
                        .unwrap_or(usize::MAX),
                });
            let listener = bind(addr).map_err(|source| StartError::Bind {
                name: name.clone(),
                addr,
                source,
            })?;
            let local = listener.local_addr().unwrap_or(addr);
            let access = AccessControl::for_listener(&config, listener_config, login_guard.clone())
                .map_err(|source| StartError::Auth {
                    name: name.clone(),
                    source,
                })?;
            let is_amqp = listener_config.protocol == ListenerProtocol::Amqp;
            match &websocket {
                _ if is_amqp => {
                    tracing::info!(listener = %name, address = %local, "listening for AMQP 0-9-1 over {}; {}", listener_config.scheme(), access.describe())
                }
                Some(ws) => {
                    tracing::info!(listener = %name, address = %local, paths = ?ws.paths, "listening for MQTT over {}; {}", listener_config.scheme(), access.describe())
                }
                None => {
                    tracing::info!(listener = %name, address = %local, "listening for MQTT over {}; {}", listener_config.scheme(), access.describe())
                }
            }
            access_controls.push(access.clone());
            if access.anonymous_unset() {
                tracing::warn!(listener = %name, "auth.allow_anonymous is not set: anonymous clients are accepted from loopback addresses only; set it explicitly in the config file");
            }
            local_addrs.push(local);
            let gauge = Arc::new(AtomicU64::new(0));
            listener_infos.push(ListenerInfo {
                name: name.clone(),
                scheme: listener_config.scheme(),
                addr: local,
                connections: gauge.clone(),
            });
            let amqp = is_amqp.then(|| {
                Arc::new(AmqpContext {
                    name: name.clone(),
                    access: access.clone(),
                    queues: amqp_queues.clone(),
                })
            });
            let context = Arc::new(ListenerContext { name, access });
            let transport = Arc::new(Transport {
                tls,
                websocket,
                open: gauge,
                amqp,
            });
            tasks.push(tokio::spawn(accept_loop(
                listener,
                transport,
                context,
                broker.clone(),
                limits.clone(),
                shutdown_rx.clone(),
                live.clone(),
            )));
        }
        tasks.push(tokio::spawn(housekeeping(
            broker.clone(),
            shutdown_rx.clone(),
        )));
        if config.sys.interval_secs > 0 {
            let interval = Duration::from_secs(config.sys.interval_secs);
            tasks.push(tokio::spawn(sys::run(
                broker.clone(),
                interval,
                shutdown_rx.clone(),
            )));
        }
        let tls: TlsListeners = Arc::new(tls_listeners);
        if !tls.is_empty() {
            tasks.push(tokio::spawn(watch_certificates(
                tls.clone(),
                shutdown_rx.clone(),
            )));
        }
        let admin_users = if config.admin.enabled {
            let users = AdminUsers::load(&config.admin).map_err(|source| StartError::Auth {
                name: "admin".to_owned(),
                source,
            })?;
            Some(Arc::new(users))
        } else {
            None
        };
        let reloader = Arc::new(Reloader {
            broker: broker.clone(),
            access: access_controls,
            tls,
            admin_users: admin_users.clone(),
        });
        let mut admin_addr = None;
        if let Some(users) = admin_users {
            let for_admin = reloader.clone();
            let context = AdminContext {
                broker: broker.clone(),
                guard: login_guard.clone(),
                users,
                listeners: Arc::new(listener_infos),
                reload: Arc::new(move || for_admin.reload().map_err(|e| e.to_string())),
                live_views: Arc::default(),
            };
            match admin::start(context, &config.admin, shutdown_rx.clone()).await {
                Ok((addr, task)) => {
                    admin_addr = Some(addr);
                    tasks.push(task);
                }
                // Nobody asked for this port: a second broker on the host runs without.
                Err(AdminError::Bind { addr, source }) if config.admin.bind.is_none() => {
                    tracing::warn!(
                        "admin listener not started: cannot listen on {addr} ({source}); set admin.bind to another address, or admin.enabled = false"
                    );
                }
                Err(AdminError::Bind { addr, source }) => {
                    return Err(StartError::Bind {
                        name: "admin".to_owned(),
                        addr,
                        source,
                    });
                }
                Err(AdminError::Tls(source)) => {
                    return Err(StartError::Tls {
                        name: "admin".to_owned(),
                        source,
                    });
                }
                Err(AdminError::Auth(source)) => {
                    return Err(StartError::Auth {
                        name: "admin".to_owned(),
                        source,
                    });
                }
            }
        }
        Ok(Self {
            broker,
            local_addrs,
            shutdown,
            tasks,
            live,
            reloader,
            admin_addr,
        })
    }

    /// Where the admin listener listens, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Re-reads the files that can change without a restart (the binary calls this on
    /// SIGHUP): every TLS listener's certificate, key and client CA, and every listener's
    /// password and ACL files. New connections use what was read; connections already up
    /// stay up. Whatever fails to load keeps its previous contents; the first failure is
    /// returned and every one is logged.
    pub fn reload(&self) -> Result<(), ReloadError> {
        self.reloader.reload()
    }

    /// The broker, for in-process use and tests.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Bound addresses, in configuration order (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Stops accepting, tells every client the server is going (v5 DISCONNECT 0x8B),
    /// waits a few seconds for connections to end, and stops the background tasks.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        // Connections serving a session wait on their mailbox, not on the shutdown
        // channel (see `Connection::run`): wake them to look. One that attaches after
        // this sees the flag when its `run` starts.
        self.broker.registry.wake_owners();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while Arc::strong_count(&self.live) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let remaining = Arc::strong_count(&self.live) - 1;
        if remaining > 0 {
            tracing::warn!(
                remaining,
                "connections still open at the end of the shutdown grace period"
            );
        }
        for task in self.tasks {
            task.abort();
        }
        // Everything the ended connections parked is committed durably before the end.
        if let Some(journal) = &self.broker.journal {
            journal.close().await;
        }
        tracing::info!("broker stopped");
    }
}

/// Pending connections the kernel queues before `accept`: enough for a connect storm
/// (thousands of clients coming back after a network blip). std's default is 128.
const ACCEPT_BACKLOG: u32 = 1024;

/// Binds a TCP listener as `TcpListener::bind` does (with `SO_REUSEADDR`), but with
/// [`ACCEPT_BACKLOG`].
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// What the accept loops check before spawning a connection.
#[derive(Debug, Clone)]
struct AcceptLimits {
    /// `mqtt.max_connections`.
    total: Arc<Semaphore>,
    /// `[limits]`, per client address.
    per_ip: Arc<ConnLimiter>,
}

async fn accept_loop(
    listener: TcpListener,
    transport: Arc<Transport>,
    context: Arc<ListenerContext>,
    broker: Arc<Broker>,
    limits: AcceptLimits,
    mut shutdown: watch::Receiver<bool>,
    live: Arc<()>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors; back off instead of spinning.
                tracing::warn!(listener = %context.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Before the global limit, so a flooding address's refusals are counted as its
        // own; dropping `stream` closes the socket unread.
        let slot = match limits.per_ip.admit(peer.ip(), std::time::Instant::now()) {
            Ok(slot) => slot,
            Err(refusal) => {
                let (counter, key) = match refusal {
                    Refusal::PerIp => (
                        &broker.stats.connections_refused_per_ip,
                        "limits.connections_per_ip",
                    ),
                    Refusal::Rate => (
                        &broker.stats.connections_refused_rate,
                        "limits.connect_rate_per_ip",
                    ),
                };
                Stats::add(counter, 1);
                if broker.log_limit.allow(peer.ip()) {
                    tracing::info!(listener = %context.name, %peer, "{key} reached; connection refused");
                }
                continue;
            }
        };
        let Ok(permit) = limits.total.clone().try_acquire_owned() else {
            Stats::add(&broker.stats.connections_refused, 1);
            if broker.log_limit.allow(peer.ip()) {
                tracing::warn!(listener = %context.name, %peer, "max_connections reached; connection refused");
            }
            continue;
        };
        Stats::add(&broker.stats.connections_accepted, 1);
        let _ = stream.set_nodelay(true);
        let (transport, context, broker, shutdown, live) = (
            transport.clone(),
            context.clone(),
            broker.clone(),
            shutdown.clone(),
            live.clone(),
        );
        let held = (permit, slot, live, OpenConnection::enter(&transport.open));
        if transport.is_plain() {
            // Spawned as it is, without a wrapping future: plain TCP connections are most
            // of them, and each extra layer would add to every connection's task.
            let (reader, writer) = stream.into_split();
            tokio::spawn(connection::serve(
                reader, writer, peer, None, context, broker, shutdown, held,
            ));
        } else {
            tokio::spawn(async move {
                transport
                    .serve(stream, peer, context, broker, shutdown, held)
                    .await;
            });
        }
    }
}

/// What a listener wraps around TCP: TLS, WebSocket, both or neither.
#[derive(Debug)]
struct Transport {
    tls: Option<Arc<TlsListener>>,
    websocket: Option<ws::WsSettings>,
    /// Gauge: connections open on this listener.
    open: Arc<AtomicU64>,
    /// Set on AMQP listeners: what their connections share.
    amqp: Option<Arc<AmqpContext>>,
}

impl Transport {
    /// Plain TCP: no handshake before MQTT.
    fn is_plain(&self) -> bool {
        self.tls.is_none() && self.websocket.is_none() && self.amqp.is_none()
    }
}

/// A connection's byte stream once the handshakes are done, whatever the transport.
trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// Why a connection ended before MQTT began.
#[derive(Debug, thiserror::Error)]
enum HandshakeFailure {
    #[error(transparent)]
    Tls(#[from] tls::HandshakeError),
    #[error("WebSocket upgrade failed: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("no TLS or WebSocket handshake within {0:?}")]
    Timeout(Duration),
}

impl Transport {
    /// Runs the handshakes (in this connection's own task, under the connect timeout),
    /// then serves MQTT on the result.
    async fn serve(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        context: Arc<ListenerContext>,
        broker: Arc<Broker>,
        mut shutdown: watch::Receiver<bool>,
        held: impl Send + 'static,
    ) {
        let timeout = Duration::from_secs(broker.config.mqtt.connect_timeout_secs);
        let handshake = async {
            // Boxed: TLS and WebSocket handshakes are large futures that plain TCP
            // connections would otherwise carry for their whole life.
            tokio::time::timeout(timeout, Box::pin(self.handshake(stream)))
                .await
                .unwrap_or(Err(HandshakeFailure::Timeout(timeout)))
        };
        let handshake = tokio::select! {
            result = handshake => result,
            _ = shutdown.changed() => return,
        };
        match handshake {
            Ok((stream, _)) if self.amqp.is_some() => {
                let (reader, writer) = tokio::io::split(stream);
                if let Some(context) = self.amqp.clone() {
                    amqp::serve(reader, writer, peer, context, broker, shutdown, held).await;
                }
            }
            Ok((stream, identity)) => {
                let (reader, writer) = tokio::io::split(stream);
                connection::serve(
                    reader, writer, peer, identity, context, broker, shutdown, held,
                )
                .await;
            }
            Err(failure) => {
                Stats::add(&broker.stats.handshakes_failed, 1);
                match failure {
                    // The client got through TLS with a certificate the CA signed: worth
                    // telling the operator why it is turned away.
                    HandshakeFailure::Tls(tls::HandshakeError::NoCommonName) => {
                        if broker.log_limit.allow(peer.ip()) {
                            tracing::info!(listener = %context.name, %peer, "connection refused: {failure}")
                        }
                    }
                    _ => {
                        tracing::debug!(listener = %context.name, %peer, "connection closed: {failure}")
                    }
                }
            }
        }
    }

    async fn handshake(
        &self,
        stream: TcpStream,
    ) -> Result<(Box<dyn ByteStream>, Option<String>), HandshakeFailure> {
        let (stream, identity): (Box<dyn ByteStream>, _) = match &self.tls {
            Some(tls) => {
                let (stream, identity) = tls.accept(stream).await?;
                (Box::new(stream), identity)
            }
            None => (Box::new(stream), None),
        };
        let stream: Box<dyn ByteStream> = match &self.websocket {
            Some(settings) => Box::new(ws::accept(stream, settings).await?),
            None => stream,
        };
        Ok((stream, identity))
    }
}

/// Reloads the TLS listeners whose files changed (all of them with `force`).
fn reload_certificates(listeners: &TlsListeners, force: bool) -> Result<(), ReloadError> {
    let mut first_error = None;
    for (name, listener) in listeners.iter() {
        match listener.reload(force) {
            Ok(true) => {
                tracing::info!(listener = %name, cert = %listener.cert_path().display(), "TLS certificate reloaded; new connections use it")
            }
            Ok(false) => {}
            Err(source) => {
                let error = ReloadError::Tls {
                    name: name.clone(),
                    source,
                };
                tracing::warn!("{error}");
                first_error.get_or_insert(error);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Polls the certificate, key and client CA files' modification times and reloads a
/// listener when one changed. Polling a few small files every couple of seconds costs less
/// than a file watcher and works the same on every platform and through symbolic links.
async fn watch_certificates(listeners: TlsListeners, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TLS_POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        // A few stat calls; a rebuild reads small files and happens only after a change.
        let _ = reload_certificates(&listeners, false);
    }
}

/// Session expiry, delayed wills and expired retained messages.
async fn housekeeping(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweeps = 0u32;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = now_millis();
        broker.tick(now);
        sweeps = sweeps.wrapping_add(1);
        if sweeps.is_multiple_of(4) {
            // Sums up the log lines left out in windows that are over.
            broker.log_limit.sweep();
        }
        if sweeps.is_multiple_of(240) {
            broker.retained.sweep_expired(now);
        }
    }
}
