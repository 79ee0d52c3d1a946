//! Accept loops and the running server: binds every listener, accepts and spawns at once
//! (TLS and WebSocket handshakes and CONNECT happen in the connection's task under the
//! connect timeout, so a slow client never stalls accepting), limits connections (in all,
//! and per address before any handshake), runs the background tasks, reloads the
//! configuration ([`reload`]) and certificates, and shuts down gracefully.

pub mod reload;
mod ws;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, AdminContext, AdminError, AdminUsers};
use crate::amqp::{self, AmqpContext};
use crate::auth::{AuthError, Dynsec, LoginGuard};
use crate::broker::{Broker, Parts};
use crate::cluster::Cluster;
use crate::cluster::retained::ClusterRetained;
use crate::config::{Config, ConfigError, ConfigSource};
use crate::conn_limit::{ConnLimiter, ConnSlot, HeldKey, Refusal};
use crate::connection::{self, ListenerContext};
use crate::memory;
use crate::model::now_millis;
use crate::stats::Stats;
use crate::store::{self, Opening, StoreError};
use crate::sys;
use crate::tls::{self, TlsError, TlsListener};
use reload::{Reloader, Shared};

/// How long shutdown waits for connections to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often certificate, key and client CA files are checked for changes.
const TLS_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// How often [`Server::measure_resident_memory`] reads the process's resident memory: a
/// read of /proc/self/status, some 20 µs, so 0.02 % of a core.
const RESIDENT_INTERVAL: Duration = Duration::from_millis(100);
/// [`Server::measure_resident_memory`] gives free heap memory back at most this often...
pub const RELEASE_INTERVAL: Duration = Duration::from_secs(10);
/// ... while resident growth beyond the budget's count is at least this. A release that
/// gave back less than a quarter of it doubles the wait before the next, up to
/// [`RELEASE_INTERVAL_MAX`]: with 100,000 idle connections the growth beyond the count is
/// their own state, which stays, and each release holds the allocator's locks for
/// milliseconds.
pub const RELEASE_FROM: u64 = 16 << 20;
/// The longest wait between two releases.
pub const RELEASE_INTERVAL_MAX: Duration = Duration::from_secs(320);

/// When [`Server::measure_resident_memory`] next gives free heap memory back.
#[derive(Debug)]
struct ReleasePace {
    wait: Duration,
    last: tokio::time::Instant,
}

impl ReleasePace {
    fn new(now: tokio::time::Instant) -> Self {
        Self {
            wait: RELEASE_INTERVAL,
            last: now,
        }
    }

    /// Whether to release now, with `beyond` bytes of resident growth beyond the count.
    fn due(&self, beyond: u64, now: tokio::time::Instant) -> bool {
        beyond >= RELEASE_FROM && now.duration_since(self.last) >= self.wait
    }

    /// A release ended at `now`, and resident memory fell by `freed` bytes.
    fn released(&mut self, freed: u64, now: tokio::time::Instant) {
        self.last = now;
        self.wait = if freed >= RELEASE_FROM / 4 {
            RELEASE_INTERVAL
        } else {
            (self.wait * 2).min(RELEASE_INTERVAL_MAX)
        };
    }
}

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
    /// `[cluster]` could not start.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// Why a reload was refused, or left some settings as they were.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration file does not load (syntax, unknown key, bad value: the message
    /// names the file, line and key); nothing changed.
    #[error("{0}; the running configuration stays in force")]
    Config(#[from] ConfigError),
    /// A listener's new settings cannot be used (an address that cannot be bound, TLS or
    /// access files that do not load); nothing changed.
    #[error("{0}; the running configuration stays in force")]
    Listener(StartError),
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

/// What a reload changed, and what it could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// What changed, one line each.
    pub changes: Vec<String>,
    /// Keys whose new values need a restart; their running values stay in force.
    pub restart_required: Vec<String>,
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
    /// Background tasks; the listeners' accept loops are the reloader's.
    tasks: Vec<JoinHandle<()>>,
    /// The connections open on all listeners (every connection task holds its place
    /// until it ends): shutdown waits for it to reach 0.
    connections: Arc<ConnectionCount>,
    /// What [`Server::reload`] re-reads; shared with the admin listener.
    reloader: Arc<Reloader>,
    /// Where the admin listener listens, when it runs.
    admin_addr: Option<SocketAddr>,
}

/// The counts a listener's connections are in: `mqtt.max_connections`, `[limits]` per
/// address (both the server's, shared by every listener) and the listener's open
/// connections.
#[derive(Debug)]
struct Counts {
    total: Arc<ConnectionCount>,
    per_ip: Arc<ConnLimiter>,
    /// Gauge: connections open on this listener.
    open: Arc<AtomicU64>,
}

/// A connection's places in its listener's [`Counts`], given back when its task ends
/// (what the task holds beside the connection). 24 bytes in every connection's task: one
/// `Arc` for the three counts and the address's key in 9 bytes, where the three guards it
/// is made from are 48.
#[derive(Debug)]
struct Place {
    counts: Arc<Counts>,
    key: Option<HeldKey>,
}

impl Place {
    /// Takes over `counted` and `slot`, taken from `counts`' limits, and counts the
    /// connection as open on the listener.
    fn new(counts: &Arc<Counts>, counted: Counted, slot: ConnSlot) -> Self {
        debug_assert!(
            counted
                .0
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c, &counts.total))
        );
        counted.keep();
        counts.open.fetch_add(1, Ordering::Relaxed);
        Self {
            counts: counts.clone(),
            key: slot.into_key(),
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.counts.per_ip.release_held(key);
        }
        self.counts.total.open.fetch_sub(1, Ordering::AcqRel);
        self.counts.open.fetch_sub(1, Ordering::Relaxed);
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
        let (shutdown, shutdown_rx) = watch::channel(false);
        // A cluster node opens no listener before it reaches NATS: serving as if alone
        // would split the broker.
        let cluster = match &config.cluster {
            Some(settings) => {
                let strategy = config.mqtt.shared_subscription_strategy;
                Some(Cluster::connect(settings, strategy).await?)
            }
            None => None,
        };
        // Retained messages come from the cluster's bucket, loaded before anyone connects;
        // this node's own store may hold values other nodes replaced since.
        let mut recovered = recovered;
        let mut cluster_tasks = Vec::new();
        let owners = cluster.as_ref().map(|c| c.owners());
        let broker = match (&cluster, &config.cluster) {
            (Some(cluster), Some(settings)) => {
                let (retained, tasks) =
                    ClusterRetained::open(settings, shutdown_rx.clone()).await?;
                cluster_tasks = tasks;
                recovered.retained.clear();
                let parts = Parts {
                    router: cluster.routing(),
                    retained: Box::new(retained),
                    ownership: cluster.ownership(),
                };
                Broker::assemble(config, Some(journal), parts)
            }
            _ => Broker::with_journal(config, Some(journal)),
        };
        broker.restore(recovered, now_millis());
        let config = broker.config();
        // One per server: both limits hold across listeners.
        let connections = Arc::new(ConnectionCount::new(config.mqtt.max_connections));
        let limits = AcceptLimits {
            total: connections.clone(),
            per_ip: ConnLimiter::new(&config.limits),
        };
        // One dynamic-security state for every listener; a damaged file stops the start.
        let dynsec = config
            .auth
            .dynsec
            .as_ref()
            .map(Dynsec::load)
            .transpose()
            .map_err(|source| StartError::Auth {
                name: "auth.dynsec".to_owned(),
                source,
            })?;
        let login_guard = LoginGuard::with_dynsec(&config, broker.log_limit.clone(), dynsec);
        let admin_users = if config.admin.enabled {
            let users = AdminUsers::load(&config.admin).map_err(|source| StartError::Auth {
                name: "admin".to_owned(),
                source,
            })?;
            Some(Arc::new(users))
        } else {
            None
        };
        let shared = Shared {
            broker: broker.clone(),
            limits,
            guard: login_guard.clone(),
            // AMQP queues are shared by every AMQP listener.
            amqp_queues: broker.amqp.clone(),
            shutdown: shutdown_rx.clone(),
            tls: Arc::default(),
            admin_users: admin_users.clone(),
            admin_listeners: Arc::default(),
        };
        let (reloader, local_addrs) = Reloader::start(shared, config.clone())?;
        let reloader = Arc::new(reloader);

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(housekeeping(
            broker.clone(),
            shutdown_rx.clone(),
        )));
        if let Some(cluster) = cluster {
            tasks.extend(cluster.start(broker.clone(), shutdown_rx.clone()));
        }
        tasks.extend(cluster_tasks);
        if config.sys.interval_secs > 0 {
            let interval = Duration::from_secs(config.sys.interval_secs);
            tasks.push(tokio::spawn(sys::run(
                broker.clone(),
                interval,
                shutdown_rx.clone(),
            )));
        }
        // Always: a reload may add a TLS listener.
        tasks.push(tokio::spawn(watch_certificates(
            reloader.tls_listeners(),
            shutdown_rx.clone(),
        )));
        let mut admin_addr = None;
        if let Some(users) = admin_users {
            let for_admin = reloader.clone();
            let context = AdminContext {
                broker: broker.clone(),
                guard: login_guard.clone(),
                users,
                listeners: reloader.admin_listeners(),
                reload: Arc::new(move || {
                    let reloader = for_admin.clone();
                    Box::pin(async move {
                        reloader
                            .reload()
                            .await
                            .map(|report| report.to_json())
                            .map_err(|e| e.to_string())
                    })
                }),
                live_views: Arc::default(),
                cluster: owners,
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
            connections,
            reloader,
            admin_addr,
        })
    }

    /// Where the admin listener listens, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Has the memory budget (`limits.max_memory`) measure the process's resident memory
    /// ten times a second and count its growth beyond what the budget counts (see
    /// `memory::MemoryBudget::observe_resident`). Only for a process that is this server
    /// and nothing else, as the binary is: in a process that runs other things (tests
    /// running several servers), their memory would be charged to the budget. Does
    /// nothing where resident memory cannot be read (not Linux).
    ///
    /// `release`, when given, asks the allocator to give the memory it holds free back to
    /// the system (the binary's is glibc's `malloc_trim`). It is called on a blocking
    /// thread, at most every [`RELEASE_INTERVAL`] (longer after releases that freed
    /// little), while resident growth beyond the count is at least [`RELEASE_FROM`]: after
    /// a burst of connections, glibc keeps most of what they used in its per-thread heaps.
    pub fn measure_resident_memory(&mut self, release: Option<fn()>) {
        if memory::resident_bytes().is_none() {
            return;
        }
        let broker = self.broker.clone();
        let mut shutdown = self.shutdown.subscribe();
        self.tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(RESIDENT_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut pace = ReleasePace::new(tokio::time::Instant::now());
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => return,
                }
                let Some(resident) = memory::resident_bytes() else {
                    continue;
                };
                let beyond = broker.memory.observe_resident(resident);
                let Some(release) = release else { continue };
                if pace.due(beyond, tokio::time::Instant::now()) {
                    let started = std::time::Instant::now();
                    if tokio::task::spawn_blocking(release).await.is_err() {
                        return;
                    }
                    let after = memory::resident_bytes().unwrap_or(resident);
                    pace.released(resident.saturating_sub(after), tokio::time::Instant::now());
                    tracing::debug!(
                        before = resident,
                        after,
                        took_us = started.elapsed().as_micros() as u64,
                        next_in_s = pace.wait.as_secs(),
                        "gave free heap memory back to the system"
                    );
                }
            }
        }));
    }

    /// Makes [`Server::reload`] read the configuration from `source` (the binary's
    /// `--config` file and environment). Without it, a reload keeps the configuration in
    /// force and only re-reads the files it names.
    pub fn reload_from(&self, source: ConfigSource) {
        self.reloader.set_source(source);
    }

    /// Reads the configuration again (see [`Server::reload_from`]) and puts it in force,
    /// what the binary does on SIGHUP (see [`listener::reload`](self::reload) for what
    /// changes live). Connections already up stay up. A configuration that does not load,
    /// or whose new settings cannot be used, changes nothing. Every TLS listener's
    /// certificate, key and client CA, and every password and ACL file, are read again;
    /// whatever fails to load keeps its previous contents, and the first such failure is
    /// returned once the rest is in force. Every failure is logged.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        self.reloader.reload().await
    }

    /// Puts `config` in force as [`Server::reload`] would had it read it from the file.
    pub async fn reload_with(&self, config: Config) -> Result<ReloadReport, ReloadError> {
        self.reloader.reload_with(config, "reload").await
    }

    /// The broker, for in-process use and tests.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Bound addresses at start, in configuration order (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The listeners running now (after reloads): name and bound address, in
    /// configuration order.
    pub async fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.reloader.listeners().await
    }

    /// Stops accepting, tells every client the server is going (v5 DISCONNECT 0x8B),
    /// waits a few seconds for connections to end, and stops the background tasks.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        // The accept loops end before the count below is read, so no connection is
        // admitted after the wait for them has begun.
        self.reloader.stop_listeners().await;
        // Connections serving a session wait on their mailbox, not on the shutdown
        // channel (see `Connection::run`): wake them to look. One that attaches after
        // this sees the flag when its `run` starts.
        self.broker.registry.wake_owners();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let open = || self.connections.open.load(Ordering::Acquire);
        while open() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let remaining = open();
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
fn bind(addr: SocketAddr) -> std::io::Result<Listening> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(ACCEPT_BACKLOG as i32)?;
    // A listening socket in a `TcpStream`: see [`Listening`].
    Ok(Listening(TcpStream::from_std(std::net::TcpStream::from(
        std::os::fd::OwnedFd::from(socket),
    ))?))
}

/// A listening socket, held in a tokio `TcpStream` for the one thing tokio's `TcpListener`
/// does not offer: waiting until a connection is queued without accepting it. Accepting
/// is then `accept(2)` on the descriptor (`socket2`), which gives a socket tokio has not
/// registered: one the limits refuse is closed without ever having been registered, and
/// one they let in is registered then. Nothing reads or writes through the `TcpStream`
/// itself. The registration can move: [`Listening::into_socket`] gives it up, so that a
/// listener's socket is watched by the workers or by the [`acceptor`], never by both.
#[derive(Debug)]
struct Listening(TcpStream);

/// A listening socket while no runtime watches it (in a std `TcpStream`, as above).
type ListeningSocket = std::net::TcpStream;

impl Listening {
    /// `socket`, listening and non-blocking, registered with the current runtime's driver.
    /// Registering consumes the socket, also when it fails.
    fn register(socket: ListeningSocket) -> std::io::Result<Self> {
        TcpStream::from_std(socket).map(Self)
    }

    /// The socket, no longer registered. Deregistering cannot fail for a registered
    /// descriptor; if it did, the socket would be closed and the error returned.
    fn into_socket(self) -> std::io::Result<ListeningSocket> {
        self.0.into_std()
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    /// The next connection.
    async fn accept(&self) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
        loop {
            // Waiting for readiness takes nothing from the task's cooperative budget
            // (tokio's `TcpListener::accept` did): without this a flood that keeps the
            // queue full would keep the loop from ever yielding its thread.
            tokio::task::consume_budget().await;
            self.0.readable().await?;
            match self.0.try_io(tokio::io::Interest::READABLE, || {
                socket2::SockRef::from(&self.0).accept()
            }) {
                Ok((socket, addr)) => match addr.as_socket() {
                    Some(peer) => return Ok((socket.into(), peer)),
                    // Cannot happen on a TCP listener; dropping closes it.
                    None => continue,
                },
                // `try_io` cleared the readiness; wait again.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Readies `stream`, which `accept(2)` gave, for serving while it is still a plain socket:
/// non-blocking (accept(2) does not pass the listener's mode on), `TCP_NODELAY`, and
/// `limits.socket_send_buffer` when set.
fn prepare(stream: &std::net::TcpStream, send_buffer: u64) -> std::io::Result<()> {
    stream.set_nonblocking(true)?;
    let socket = socket2::SockRef::from(stream);
    // Failures leave the kernel's defaults; the connection still works.
    let _ = socket.set_tcp_nodelay(true);
    if send_buffer > 0 {
        let _ = socket.set_send_buffer_size(send_buffer as usize);
    }
    Ok(())
}

/// How long a listener keeps accepting on the [`acceptor`] after the limits last refused
/// one of its connections.
const FLOOD_CALM: Duration = Duration::from_secs(1);

/// The runtime that accepts for listeners under a connect flood: one thread of its own,
/// for the life of the process.
///
/// A listener accepts on the workers, in [`accept_loop`], until the limits refuse a
/// connection (`connections_per_ip`, `connect_rate_per_ip`, `max_connections`). Then it
/// gives its socket to [`flood_accept_loop`], which accepts here until [`FLOOD_CALM`] has
/// passed without a refusal, hands what the limits let in over to the listener's task on
/// the workers, and gives the socket back. The socket is registered with one of the two
/// drivers at a time, so only one thread is woken per connect.
///
/// Why: during a flood (bursts of 500 connects, most refused) the worker that accepted had
/// used its share of the core, and the kernel's scheduler then let it wait behind the
/// flooding client when a connected client's packet woke it: that client's PINGREQ p99
/// went from 0.2 to 1-3 ms (RELIABILITY.md, "Connection floods and slowloris"). Here the
/// accepting and the refusals are charged to this thread, and the workers, idle between
/// client packets, run as soon as they wake.
///
/// Why not always: each hand-over wakes a worker from another thread, which cost 25-40 %
/// more CPU per connection set up when the broker had one core, and a connect storm that
/// the limits let in (devices coming back after an outage) is better served at full
/// speed.
///
/// `None` if the thread or its runtime could not be started (logged once); listeners then
/// go on accepting on the workers through floods.
fn acceptor() -> Option<&'static tokio::runtime::Handle> {
    static ACCEPTOR: std::sync::OnceLock<Option<tokio::runtime::Handle>> =
        std::sync::OnceLock::new();
    ACCEPTOR
        .get_or_init(|| {
            let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
            let started = std::thread::Builder::new()
                .name("midge-accept".into())
                .spawn(move || {
                    // I/O and timers: all it uses. (With tokio's signal feature built in,
                    // the I/O driver still takes a duplicate of the signal socket: four
                    // descriptors in all, once.)
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_io()
                        .enable_time()
                        .build();
                    match runtime {
                        Ok(runtime) => {
                            let _ = handle_tx.send(Ok(runtime.handle().clone()));
                            runtime.block_on(std::future::pending::<()>());
                        }
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                        }
                    }
                });
            let handle = match started {
                Ok(_) => handle_rx.recv().unwrap_or_else(|_| {
                    Err(std::io::Error::other("the accept thread ended at its start"))
                }),
                Err(e) => Err(e),
            };
            handle
                .inspect_err(|e| {
                    tracing::error!(error = %e, "cannot start the accept thread; connect floods are accepted on the workers");
                })
                .ok()
        })
        .as_ref()
}

/// What the [`flood_accept_loop`] may have waiting for the listener's task; beyond it the
/// loop waits, and new connects wait in the kernel's listen queue.
const HAND_OVER_QUEUE: usize = 1024;

/// A connection the limits let in, not yet registered with tokio.
struct Admitted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    generation: Arc<Generation>,
    counted: Counted,
    slot: ConnSlot,
}

/// From the [`flood_accept_loop`] to the listener's task.
enum Handed {
    /// A connection to serve.
    Admitted(Admitted),
    /// The flood is over: the listening socket, to accept on the workers again.
    Calm(ListeningSocket),
}

/// What the limits made of one `accept(2)`.
enum Admission {
    Admitted(Admitted),
    /// Refused by a limit: closed, counted and (within the log allowance) logged.
    Refused,
    /// `accept(2)` failed for want of resources: pause this long.
    Pause(Duration),
    /// Nothing to do: the error concerned the one connection, which is gone.
    Skipped,
}

/// One listener's accept loops: [`accept_loop`] on the serving runtime, and
/// [`flood_accept_loop`] on the [`acceptor`].
#[derive(Debug)]
pub(super) struct Accepting {
    worker: JoinHandle<()>,
    /// Started by the worker loop at the listener's first flood, so a broker that never
    /// sees one never starts the accept thread.
    flood: FloodTask,
}

/// A listener's [`flood_accept_loop`] task, once started.
type FloodTask = Arc<std::sync::Mutex<Option<JoinHandle<()>>>>;

impl Accepting {
    /// Stops both loops; the listening socket is closed when this returns.
    pub(super) async fn stop(&mut self) {
        // The worker loop first: once it has ended it cannot start the flood loop.
        self.worker.abort();
        let _ = (&mut self.worker).await;
        let flood = self.flood.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(flood) = flood {
            flood.abort();
            let _ = flood.await;
        }
    }
}

/// Starts accepting on `listening`, registered with the calling runtime, which serves the
/// connections.
fn start_accepting(
    listening: Listening,
    current: CurrentGeneration,
    broker: Arc<Broker>,
    limits: AcceptLimits,
    shutdown: watch::Receiver<bool>,
) -> Accepting {
    let flood = FloodTask::default();
    let worker = tokio::spawn(accept_loop(
        listening,
        current,
        broker,
        limits,
        flood.clone(),
        shutdown,
    ));
    Accepting { worker, flood }
}

/// Applies the limits to what `accept(2)` gave.
fn admit(
    accepted: std::io::Result<(std::net::TcpStream, SocketAddr)>,
    current: &CurrentGeneration,
    broker: &Broker,
    limits: &AcceptLimits,
) -> Admission {
    let generation = current.read().unwrap_or_else(|e| e.into_inner()).clone();
    let context = &generation.context;
    let (stream, peer) = match accepted {
        Ok(accepted) => accepted,
        Err(e) => {
            return match crate::accept_error::back_off(&e) {
                Some(pause) => {
                    tracing::warn!(listener = %context.name, error = %e, "accept failed; pausing {pause:?}");
                    Admission::Pause(pause)
                }
                None => {
                    tracing::debug!(listener = %context.name, error = %e, "accept failed");
                    Admission::Skipped
                }
            };
        }
    };
    // Before the global limit, so a flooding address's refusals are counted as its own.
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
            refuse(stream);
            return Admission::Refused;
        }
    };
    let Some(counted) = limits.total.enter() else {
        refuse(stream);
        Stats::add(&broker.stats.connections_refused, 1);
        if broker.log_limit.allow(peer.ip()) {
            tracing::warn!(listener = %context.name, %peer, "max_connections reached; connection refused");
        }
        return Admission::Refused;
    };
    if let Err(e) = prepare(&stream, context.config.limits.socket_send_buffer.0) {
        // Per connection, so through the same per-address allowance as refusals.
        if broker.log_limit.allow(peer.ip()) {
            tracing::warn!(listener = %context.name, %peer, error = %e, "accepted connection could not be set up; closed");
        }
        return Admission::Skipped;
    }
    Admission::Admitted(Admitted {
        stream,
        peer,
        generation,
        counted,
        slot,
    })
}

/// Closes a refused connection unread with a reset (`SO_LINGER` 0) rather than a FIN.
///
/// Why: the side that closes first keeps the connection in TIME_WAIT for a minute. A
/// refusal is the broker closing first, so a flood of 2,000 refused connects a second left
/// 9,220 TIME_WAIT entries after 5 s; at the bursts of 20,000 they fill the
/// kernel's table (`tcp_max_tw_buckets`, 131,072 here) within seconds, after which the
/// kernel drops TIME_WAIT for every connection on the machine and warns in its log. The
/// refused client sees "connection reset" instead of an end of stream; it had sent nothing
/// that could be lost (what it had sent would be unread, which resets anyway).
fn refuse(stream: std::net::TcpStream) {
    connection::linger_zero(&stream);
}

/// What the accept loops check before spawning a connection.
#[derive(Debug, Clone)]
struct AcceptLimits {
    /// `mqtt.max_connections`.
    total: Arc<ConnectionCount>,
    /// `[limits]`, per client address.
    per_ip: Arc<ConnLimiter>,
}

/// Connections open on all listeners against `mqtt.max_connections`, which a reload may
/// change: a count and a limit, both atomic (a semaphore's permits could not shrink below
/// the ones held).
#[derive(Debug)]
struct ConnectionCount {
    open: AtomicUsize,
    /// 0: unlimited.
    max: AtomicUsize,
}

impl ConnectionCount {
    fn new(max: usize) -> Self {
        Self {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        }
    }

    fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// A place for one more connection, unless `max` are open.
    fn enter(self: &Arc<Self>) -> Option<Counted> {
        let max = self.max.load(Ordering::Relaxed);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (max == 0 || open < max).then_some(open + 1)
            })
            .ok()
            .map(|_| Counted(Some(self.clone())))
    }
}

/// One connection's place in [`ConnectionCount`], given back on drop unless a [`Place`]
/// took it over ([`Counted::keep`]).
#[derive(Debug)]
struct Counted(Option<Arc<ConnectionCount>>);

impl Counted {
    /// Keeps the place taken: whoever calls this gives it back.
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(count) = self.0.take() {
            count.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What one listener gives the connections it accepts: replaced whole by a reload, and
/// read once per accepted connection, which keeps it for its life.
#[derive(Debug)]
struct Generation {
    transport: Arc<Transport>,
    context: Arc<ListenerContext>,
}

/// A listener's current [`Generation`], shared by its accept loop and the reloader.
type CurrentGeneration = Arc<RwLock<Arc<Generation>>>;

/// Waits for the next connection on `listening`, or forever while the socket is away.
async fn accept_if_here(
    listening: &Option<Listening>,
) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    match listening {
        Some(listening) => listening.accept().await,
        None => std::future::pending().await,
    }
}

/// A listener's loop on the serving runtime: accepts while it holds the socket, serves
/// what it accepts and what the [`flood_accept_loop`] hands over, and at a refusal gives
/// the socket to the [`flood_accept_loop`].
#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listening: Listening,
    current: CurrentGeneration,
    broker: Arc<Broker>,
    limits: AcceptLimits,
    flood_task: FloodTask,
    mut shutdown: watch::Receiver<bool>,
) {
    // Connections get a receiver that has not seen a change, so one that starts after
    // shutdown began still sees it.
    let for_connections = shutdown.clone();
    let mut listening = Some(listening);
    let (handed_tx, mut handed) = tokio::sync::mpsc::channel(HAND_OVER_QUEUE);
    // To the flood loop, once started.
    let mut flood: Option<tokio::sync::mpsc::Sender<ListeningSocket>> = None;
    loop {
        let accepted = tokio::select! {
            accepted = accept_if_here(&listening) => accepted,
            handed = handed.recv() => {
                match handed {
                    Some(Handed::Admitted(admitted)) => {
                        serve(admitted, &broker, &for_connections);
                    }
                    Some(Handed::Calm(socket)) => listening = register_again(socket, &current),
                    // This loop holds a sender.
                    None => {}
                }
                continue;
            }
            _ = shutdown.changed() => return,
        };
        match admit(accepted, &current, &broker, &limits) {
            Admission::Admitted(admitted) => serve(admitted, &broker, &for_connections),
            Admission::Refused => {
                if flood.is_none() {
                    let Some(acceptor) = acceptor() else {
                        continue;
                    };
                    // At most one socket is ever on its way: the listener's own.
                    let (to_flood, floods) = tokio::sync::mpsc::channel(1);
                    let task = acceptor.spawn(flood_accept_loop(
                        floods,
                        current.clone(),
                        broker.clone(),
                        limits.clone(),
                        for_connections.clone(),
                        handed_tx.clone(),
                    ));
                    *flood_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
                    flood = Some(to_flood);
                }
                let Some(to_flood) = &flood else {
                    continue;
                };
                let Some(here) = listening.take() else {
                    continue;
                };
                let socket = match here.into_socket() {
                    Ok(socket) => socket,
                    Err(e) => return lost(&current, &e),
                };
                match to_flood.try_send(socket) {
                    Ok(()) => Stats::add(&broker.stats.connect_floods, 1),
                    // Cannot be full (one socket); closed only while stopping.
                    Err(e) => listening = register_again(e.into_inner(), &current),
                }
            }
            Admission::Pause(pause) => tokio::time::sleep(pause).await,
            Admission::Skipped => {}
        }
    }
}

/// `socket`, back from the acceptor, registered with the calling runtime again. Failing
/// that (the kernel short of memory), the listener stops accepting, loudly.
fn register_again(socket: ListeningSocket, current: &CurrentGeneration) -> Option<Listening> {
    Listening::register(socket)
        .inspect_err(|e| lost(current, e))
        .ok()
}

/// Logs that a listener's socket is lost.
fn lost(current: &CurrentGeneration, error: &std::io::Error) {
    let name = current
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .context
        .name
        .clone();
    tracing::error!(listener = %name, %error, "listening socket could not be moved between threads; the listener accepts no more connections");
}

/// A listener's loop on the [`acceptor`]: waits for the socket [`accept_loop`] gives up
/// at a refusal, accepts on it until [`FLOOD_CALM`] passes without a refusal, hands what
/// the limits let in over to [`accept_loop`], and then gives the socket back.
async fn flood_accept_loop(
    mut floods: tokio::sync::mpsc::Receiver<ListeningSocket>,
    current: CurrentGeneration,
    broker: Arc<Broker>,
    limits: AcceptLimits,
    mut shutdown: watch::Receiver<bool>,
    handed: tokio::sync::mpsc::Sender<Handed>,
) {
    loop {
        let socket = tokio::select! {
            socket = floods.recv() => match socket {
                Some(socket) => socket,
                None => return,
            },
            _ = shutdown.changed() => return,
            // The listener's task is gone (stopped, or its runtime dropped).
            _ = handed.closed() => return,
        };
        // A duplicate descriptor, so the socket survives a failure to register it here.
        let spare = socket.try_clone().ok();
        let listening = match (Listening::register(socket), spare) {
            // The spare is closed with the tuple.
            (Ok(listening), _) => listening,
            (Err(error), Some(socket)) => {
                // Keep accepting on the workers.
                tracing::warn!(%error, "connect flood: the accept thread could not take the listening socket");
                if handed.send(Handed::Calm(socket)).await.is_err() {
                    return;
                }
                continue;
            }
            (Err(error), None) => return lost(&current, &error),
        };
        let calm = tokio::time::sleep(FLOOD_CALM);
        tokio::pin!(calm);
        loop {
            let accepted = tokio::select! {
                accepted = listening.accept() => accepted,
                _ = &mut calm => break,
                _ = shutdown.changed() => return,
                _ = handed.closed() => return,
            };
            match admit(accepted, &current, &broker, &limits) {
                Admission::Admitted(admitted) => tokio::select! {
                    sent = handed.send(Handed::Admitted(admitted)) => if sent.is_err() { return },
                    _ = shutdown.changed() => return,
                },
                Admission::Refused => {
                    calm.as_mut()
                        .reset(tokio::time::Instant::now() + FLOOD_CALM);
                }
                Admission::Pause(pause) => tokio::time::sleep(pause).await,
                Admission::Skipped => {}
            }
        }
        let socket = match listening.into_socket() {
            Ok(socket) => socket,
            Err(e) => return lost(&current, &e),
        };
        if handed.send(Handed::Calm(socket)).await.is_err() {
            return;
        }
    }
}

/// Registers an admitted connection with the calling runtime's I/O driver and spawns its
/// task there.
fn serve(admitted: Admitted, broker: &Arc<Broker>, shutdown: &watch::Receiver<bool>) {
    let Admitted {
        stream,
        peer,
        generation,
        counted,
        slot,
    } = admitted;
    let (transport, context) = (&generation.transport, &generation.context);
    let stream = match TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(e) => {
            if broker.log_limit.allow(peer.ip()) {
                tracing::warn!(listener = %context.name, %peer, error = %e, "accepted connection could not be registered; closed");
            }
            return;
        }
    };
    Stats::add(&broker.stats.connections_accepted, 1);
    let (transport, context, broker) = (transport.clone(), context.clone(), broker.clone());
    let held = Place::new(&transport.counts, counted, slot);
    if transport.is_plain() {
        // Spawned as it is, without a wrapping future: plain TCP connections are most of
        // them, and each extra layer would add to every connection's task.
        tokio::spawn(connection::serve(stream, peer, None, context, broker, held));
    } else {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            transport
                .serve(stream, peer, context, broker, shutdown, held)
                .await;
        });
    }
}

/// What a listener wraps around TCP: TLS, WebSocket, both or neither.
#[derive(Debug)]
struct Transport {
    tls: Option<Arc<TlsListener>>,
    websocket: Option<ws::WsSettings>,
    /// The counts its connections are in.
    counts: Arc<Counts>,
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

/// The TCP socket is inside the TLS and WebSocket layers, out of reach from here: the
/// [`Resettable`] around the stream and the one around its socket share a flag instead.
impl connection::ResetOnClose for Box<dyn ByteStream> {
    fn reset_on_close(&self) {}
}

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
        let timeout = Duration::from_secs(context.config.mqtt.connect_timeout_secs);
        let reset = Arc::new(AtomicBool::new(false));
        // Boxed: TLS and WebSocket handshakes are large futures that plain TCP connections
        // would otherwise carry for their whole life.
        let mut handshake = Box::pin(self.handshake(Resettable::new(stream, reset.clone())));
        let handshake = tokio::select! {
            result = tokio::time::timeout(timeout, handshake.as_mut()) => {
                result.unwrap_or_else(|_| {
                    // Set before the handshake, and with it the socket, is dropped.
                    reset.store(true, Ordering::Release);
                    Err(HandshakeFailure::Timeout(timeout))
                })
            }
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
                let stream = Resettable::new(stream, reset);
                connection::serve(stream, peer, identity, context, broker, held).await;
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
        stream: Resettable<TcpStream>,
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

/// A TLS or WebSocket connection's TCP socket, or its write half, with a flag they share:
/// set, the socket is reset (`SO_LINGER` 0) rather than closed with a FIN when the stream
/// is dropped. The broker sets it when it closes the connection first without an answer
/// (no handshake or no CONNECT within the deadline, a CONNECT over the pre-CONNECT
/// budget), as it does on plain TCP (see [`connection::ResetOnClose`]): the side that
/// closes first keeps a TIME_WAIT entry for a minute, and a slowloris or a flood of
/// half-open handshakes cycling through the deadline would pile them up. The TCP socket
/// sits under the TLS and WebSocket layers and the split, out of the write half's reach,
/// hence the flag.
struct Resettable<T: connection::ResetOnClose> {
    inner: T,
    reset: Arc<AtomicBool>,
}

impl<T: connection::ResetOnClose> Resettable<T> {
    fn new(inner: T, reset: Arc<AtomicBool>) -> Self {
        Self { inner, reset }
    }
}

impl<T: connection::ResetOnClose> connection::ResetOnClose for Resettable<T> {
    fn reset_on_close(&self) {
        self.reset.store(true, Ordering::Release);
    }
}

impl<T: connection::ResetOnClose> Drop for Resettable<T> {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Acquire) {
            self.inner.reset_on_close();
        }
    }
}

impl tls::Socket for Resettable<TcpStream> {
    fn addresses(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        self.inner.addresses()
    }
}

impl<T: connection::ResetOnClose + AsyncRead + Unpin> AsyncRead for Resettable<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: connection::ResetOnClose + AsyncWrite + Unpin> AsyncWrite for Resettable<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Reloads a TLS listener's files if they changed (always with `force`), logging the
/// outcome.
fn reload_certificate(name: &str, listener: &TlsListener, force: bool) -> Result<(), ReloadError> {
    match listener.reload(force) {
        Ok(true) => {
            tracing::info!(listener = %name, cert = %listener.cert_path().display(), "TLS certificate reloaded; new connections use it");
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(source) => {
            let error = ReloadError::Tls {
                name: name.to_owned(),
                source,
            };
            tracing::warn!("{error}");
            Err(error)
        }
    }
}

/// Polls the certificate, key and client CA files' modification times and reloads a
/// listener when one changed. Polling a few small files every couple of seconds costs less
/// than a file watcher and works the same on every platform and through symbolic links.
/// The list is the reloader's, read at each tick.
async fn watch_certificates(
    listeners: Arc<RwLock<TlsListeners>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(TLS_POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let current = listeners.read().unwrap_or_else(|e| e.into_inner()).clone();
        // A few stat calls; a rebuild reads small files and happens only after a change.
        for (name, listener) in current.iter() {
            let _ = reload_certificate(name, listener, false);
        }
    }
}

/// Session expiry, delayed wills, expired retained messages, AMQP bindings checked again
/// after the access rules changed, and the compaction of queues that are behind.
async fn housekeeping(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweeps = 0u32;
    let mut access = broker.amqp.watch_access();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
            // AMQP bindings granted under rules that changed are checked again.
            Ok(()) = access.changed() => {
                broker.amqp.recheck_bindings(&*broker).await;
                continue;
            }
        }
        let now = now_millis();
        broker.tick(now);
        sweeps = sweeps.wrapping_add(1);
        if sweeps.is_multiple_of(4) {
            // Sums up the log lines left out in windows that are over.
            broker.log_limit.sweep();
            // Every second (`router::COMPACT_INTERVAL`): messages waiting in queues that
            // are behind stop pinning their publishers' read buffers. The sweep visits every
            // such queue (10,000 dead subscribers: 10,000 locks), so it runs on the blocking
            // pool: on a worker it held up that worker's tasks, and the connections woken
            // there waited for it (a live subscriber's p99 was set by it).
            let sweeper = broker.clone();
            let _ = tokio::task::spawn_blocking(move || sweeper.router.compact()).await;
        }
        if sweeps.is_multiple_of(240) {
            broker.retained.sweep_expired(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A full listen queue must not keep the accept loop from yielding its thread: tokio's
    /// `readable` takes nothing from the cooperative budget, so `Listening::accept` takes
    /// a unit itself. Without that, 300 queued connections were all accepted before the
    /// other task on this (current-thread) runtime ran once.
    #[tokio::test]
    async fn accepting_a_full_queue_yields_to_other_tasks() {
        const QUEUED: usize = 300;
        let listening = bind("127.0.0.1:0".parse().expect("address")).expect("bind");
        let addr = listening.local_addr().expect("local address");
        // Each connect returns once the handshake is done: all of them wait in the queue.
        let clients: Vec<_> = (0..QUEUED)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        // The first accept waits for the driver to report the queue readable; from then
        // on the readiness stays set while connections are queued.
        listening.accept().await.expect("first accept");
        let other_ran = Arc::new(AtomicBool::new(false));
        let accepting = tokio::spawn({
            let other_ran = other_ran.clone();
            async move {
                for n in 1..QUEUED {
                    listening.accept().await.expect("accept");
                    if other_ran.load(Ordering::Relaxed) {
                        return Some(n);
                    }
                }
                None
            }
        });
        tokio::spawn(async move { other_ran.store(true, Ordering::Relaxed) });
        let yielded_after = accepting.await.expect("accepting task");
        drop(clients);
        assert!(
            matches!(yielded_after, Some(n) if n < QUEUED - 1),
            "the other task ran only after all {QUEUED} accepts ({yielded_after:?})"
        );
    }

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, D, E, F, Fut>(_f: impl FnOnce(A, B, C, D, E, F) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// A plain TCP connection's task is its future in tokio's task cell: 104 bytes of
    /// tokio's and the future's own tag around it, rounded up to 128 bytes. The cell is in
    /// every connection (see "Memory per connection" in ARCHITECTURE.md): at 928 bytes of
    /// future it was 1,152 bytes, at 784 896, at 664 768; now the future is 536 bytes and
    /// the cell 640, with nothing to spare. This keeps it from growing past that
    /// unnoticed.
    #[test]
    fn a_plain_tcp_connection_task_fits_640_bytes() {
        type Held = Place;
        let future =
            future_size::<_, _, _, _, _, Held, _>(connection::serve::<tokio::net::TcpStream>);
        // tokio's header (32), scheduler and task id (16), the stage's tag (8), trailer (48).
        let cell = (32 + 16 + future + 8 + 48).next_multiple_of(128);
        assert!(
            cell <= 640,
            "connection future {future} bytes, task cell {cell}"
        );
    }

    /// Releases come every `RELEASE_INTERVAL` while they free memory, ever less often
    /// while they do not, and only while enough is held beyond the count.
    #[test]
    fn releases_back_off_while_they_free_little() {
        let start = tokio::time::Instant::now();
        let mut pace = ReleasePace::new(start);
        let at = |secs| start + Duration::from_secs(secs);
        assert!(!pace.due(RELEASE_FROM, at(9)));
        assert!(!pace.due(RELEASE_FROM - 1, at(10)));
        assert!(pace.due(RELEASE_FROM, at(10)));
        // Freed a lot: the next one 10 s later.
        pace.released(RELEASE_FROM, at(10));
        assert!(pace.due(RELEASE_FROM, at(20)));
        // Freed little, again and again: 20, 40, ... s, up to the maximum.
        pace.released(0, at(20));
        assert!(!pace.due(RELEASE_FROM, at(39)));
        assert!(pace.due(RELEASE_FROM, at(40)));
        let mut now = 20;
        for _ in 0..10 {
            pace.released(RELEASE_FROM / 8, at(now));
            now += pace.wait.as_secs();
        }
        assert_eq!(pace.wait, RELEASE_INTERVAL_MAX);
        // A release that frees memory again brings the pace back.
        pace.released(RELEASE_FROM / 4, at(now));
        assert_eq!(pace.wait, RELEASE_INTERVAL);
    }

    /// Many threads take and give back places while the limit changes: no more are ever
    /// held than the highest limit, and every place comes back.
    #[test]
    fn the_connection_count_holds_its_limit_under_contention() {
        let count = Arc::new(ConnectionCount::new(3));
        let held = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        let Some(place) = count.enter() else {
                            continue;
                        };
                        let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::hint::spin_loop();
                        held.fetch_sub(1, Ordering::SeqCst);
                        drop(place);
                    }
                });
            }
            s.spawn(|| {
                for i in 0..2_000 {
                    count.set_max(if i % 2 == 0 { 2 } else { 5 });
                    std::thread::yield_now();
                }
                count.set_max(3);
            });
        });
        assert!(peak.load(Ordering::SeqCst) <= 5, "{peak:?}");
        assert_eq!(count.open.load(Ordering::SeqCst), 0);
        // Refusal itself, without depending on how the threads were scheduled.
        let held: Vec<_> = (0..3).filter_map(|_| count.enter()).collect();
        assert_eq!(held.len(), 3);
        assert!(count.enter().is_none());
        drop(held);
        count.set_max(0);
        let unlimited: Vec<_> = (0..100).filter_map(|_| count.enter()).collect();
        assert_eq!(unlimited.len(), 100);
    }
}
