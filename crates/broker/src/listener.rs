//! Accept loops and the running server: binds every listener, accepts and spawns at once
//! (handshakes and CONNECT happen in the connection task, so a slow client never stalls
//! accepting), limits connections, runs the background tasks, and shuts down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::auth::AccessControl;
use crate::broker::Broker;
use crate::config::Config;
use crate::connection::{self, ListenerContext};
use crate::message::now_millis;
use crate::stats::Stats;
use crate::store::{self, Opening, StoreError};
use crate::sys;

/// How long shutdown waits for connections to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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
    /// The store could not be opened or read back.
    #[error(transparent)]
    Store(#[from] StoreError),
}

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
        let limiter = Arc::new(Semaphore::new(limit));

        let mut tasks = Vec::new();
        let mut local_addrs = Vec::new();
        for listener_config in &config.listeners {
            let name = listener_config.display_name();
            let addr = listener_config.bind;
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    name: name.clone(),
                    addr,
                    source,
                })?;
            let local = listener.local_addr().unwrap_or(addr);
            let access = AccessControl::from_config(&config);
            tracing::info!(listener = %name, address = %local, "listening for MQTT; {}", access.describe());
            if config.auth.allow_anonymous.is_none() {
                tracing::warn!(listener = %name, "auth.allow_anonymous is not set: anonymous clients are accepted from loopback addresses only; set it explicitly in the config file");
            }
            local_addrs.push(local);
            let context = Arc::new(ListenerContext { name, access });
            tasks.push(tokio::spawn(accept_loop(
                listener,
                context,
                broker.clone(),
                limiter.clone(),
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
        Ok(Self {
            broker,
            local_addrs,
            shutdown,
            tasks,
            live,
        })
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

async fn accept_loop(
    listener: TcpListener,
    context: Arc<ListenerContext>,
    broker: Arc<Broker>,
    limiter: Arc<Semaphore>,
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
        let Ok(permit) = limiter.clone().try_acquire_owned() else {
            Stats::add(&broker.stats.connections_refused, 1);
            tracing::warn!(listener = %context.name, %peer, "max_connections reached; connection refused");
            continue;
        };
        Stats::add(&broker.stats.connections_accepted, 1);
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        let (context, broker, shutdown, live) = (
            context.clone(),
            broker.clone(),
            shutdown.clone(),
            live.clone(),
        );
        tokio::spawn(async move {
            connection::serve(reader, writer, peer, context, broker, shutdown).await;
            drop(permit);
            drop(live);
        });
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
        broker.registry.tick(&broker, now);
        sweeps = sweeps.wrapping_add(1);
        if sweeps.is_multiple_of(240) {
            broker.retained.sweep_expired(now);
        }
    }
}
