//! Live reload: SIGHUP, `POST /api/v1/reload` and `midge ctl reload` read the whole
//! configuration file again ([`Server::reload`](super::Server::reload)) and put it in
//! force without a restart. Connections already up stay up through every reload.
//!
//! - **The file.** Read and validated as at start ([`ConfigSource`], the same `MIDGE_*`
//!   overrides); a file that does not load is refused with its file, line and key, and
//!   nothing changes.
//! - **Needs a restart.** The keys [`keep_fixed`] lists (storage, the shared-subscription
//!   strategy, `$SYS` interval, `[log]`, `[auth.rate_limit]`, the admin listener's
//!   `enabled`, `bind` and `tls`): a new value is reported (WARN, and in the report) and
//!   the running one stays.
//! - **Listeners.** A listener of the new file is the running one with the same `name`,
//!   else the one with the same configured `bind` (for port 0, also the same protocol, in
//!   order). New ones are bound and start; removed ones stop accepting (their socket
//!   closes) and their connections stay until they leave. A kept listener keeps its
//!   socket and is updated in place: each accepted connection reads its listener's
//!   current [`Generation`] once (transport, access control, configuration), so new
//!   connections get the new settings, and established ones keep what they were accepted
//!   with. TLS settings that are unchanged keep their `TlsListener` (files read again);
//!   new ones load a new one. Access settings that are unchanged (the listener's
//!   `[listener.auth]`, `[auth]`, the name) keep their `AccessControl`, whose password,
//!   ACL and JWKS files are read again and apply to everyone at once, as before; changed
//!   ones build a new one for new connections, while connected clients keep the one they
//!   logged in under.
//! - **Limits.** `[mqtt]` (`Broker::set_config`; each connection keeps the `Arc<Config>`
//!   it was accepted with), `mqtt.max_connections` and `[limits]` (the accept loops'
//!   counters, changed in place) apply to new connections; queue limits and
//!   `retain_available` to every message from then on.
//! - **Admin.** `admin.password_file` (also a new path) and `admin.viewers` are read again.
//!
//! Everything that can fail (binding, loading TLS and access files) is done before
//! anything is put in force, so a refused reload changes nothing. Reloads run one at a
//! time (the state's `tokio::sync::Mutex`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use super::{
    AcceptLimits, Accepting, Counts, CurrentGeneration, Generation, Listening, ReloadError,
    ReloadReport, StartError, TlsListeners, Transport, bind, reload_certificate, start_accepting,
    ws,
};
use crate::admin::{AdminUsers, ListenerInfo, Listeners};
use crate::amqp::AmqpContext;
use crate::amqp_queues::Queues;
use crate::auth::{AccessControl, LoginGuard};
use crate::broker::Broker;
use crate::config::{Config, ConfigError, ConfigSource, ListenerConfig, ListenerProtocol};
use crate::connection::ListenerContext;
use crate::tls::TlsListener;

/// What every listener, and so a reload, shares.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) broker: Arc<Broker>,
    pub(super) limits: AcceptLimits,
    pub(super) guard: Arc<LoginGuard>,
    pub(super) amqp_queues: Arc<Queues>,
    pub(super) shutdown: watch::Receiver<bool>,
    /// The TLS listeners, for the certificate watcher.
    pub(super) tls: Arc<RwLock<TlsListeners>>,
    pub(super) admin_users: Option<Arc<AdminUsers>>,
    pub(super) admin_listeners: Arc<Listeners>,
}

/// See the module documentation.
#[derive(Debug)]
pub(super) struct Reloader {
    shared: Shared,
    /// Where the configuration is read again from; `None`: the one in force is used again.
    source: Mutex<Option<ConfigSource>>,
    state: tokio::sync::Mutex<State>,
}

/// What a reload changes.
#[derive(Debug)]
struct State {
    config: Arc<Config>,
    /// In configuration order.
    listeners: Vec<Running>,
}

/// A listener that is accepting.
#[derive(Debug)]
struct Running {
    config: ListenerConfig,
    name: String,
    local: SocketAddr,
    gauge: Arc<AtomicU64>,
    tls: Option<Arc<TlsListener>>,
    access: AccessControl,
    current: CurrentGeneration,
    accepting: Accepting,
}

/// A listener of the new configuration with everything that can fail done.
#[derive(Debug)]
struct Prepared {
    place: Place,
    tls: Option<Arc<TlsListener>>,
    /// The running listener's, whose files are read again when put in force.
    tls_kept: bool,
    access: AccessControl,
    /// The running listener's, whose files are read again when put in force.
    access_kept: bool,
}

#[derive(Debug)]
enum Place {
    /// The running listener at this index keeps its socket.
    Kept(usize),
    /// A new listener, bound.
    New(Listening, SocketAddr),
}

impl Reloader {
    /// Binds and starts the listeners of `config`.
    pub(super) fn start(
        shared: Shared,
        config: Arc<Config>,
    ) -> Result<(Self, Vec<SocketAddr>), StartError> {
        let prepared = config
            .listeners
            .iter()
            .map(|listener| prepare(&shared, &config, listener, None))
            .collect::<Result<Vec<_>, _>>()?;
        let mut state = State {
            config: config.clone(),
            listeners: Vec::new(),
        };
        let mut report = ReloadReport::default();
        // Nothing is kept, so nothing is read again: no file errors here.
        let _ = commit(&shared, &mut state, &config, prepared, &mut report);
        let addrs = state.listeners.iter().map(|l| l.local).collect();
        let reloader = Self {
            shared,
            source: Mutex::new(None),
            state: tokio::sync::Mutex::new(state),
        };
        Ok((reloader, addrs))
    }

    pub(super) fn set_source(&self, source: ConfigSource) {
        *self.source.lock().unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    pub(super) fn tls_listeners(&self) -> Arc<RwLock<TlsListeners>> {
        self.shared.tls.clone()
    }

    pub(super) fn admin_listeners(&self) -> Arc<Listeners> {
        self.shared.admin_listeners.clone()
    }

    pub(super) async fn listeners(&self) -> Vec<(String, SocketAddr)> {
        let state = self.state.lock().await;
        state
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.local))
            .collect()
    }

    /// Stops every accept loop (at shutdown).
    pub(super) async fn stop_listeners(&self) {
        let mut state = self.state.lock().await;
        for listener in &mut state.listeners {
            listener.accepting.stop().await;
        }
    }

    /// Reads the configuration from the source (or takes the one in force again) and
    /// puts it in force.
    pub(super) async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let source = self
            .source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(source) = source else {
            let config = Config::clone(&self.state.lock().await.config);
            return self.reload_with(config, "the running configuration").await;
        };
        let origin = source.origin();
        let loaded = tokio::task::spawn_blocking(move || source.load())
            .await
            .unwrap_or_else(|e| {
                Err(ConfigError::Parse {
                    origin: origin.clone(),
                    message: format!("reading stopped: {e}"),
                })
            });
        match loaded {
            Ok(config) => self.reload_with(config, &origin).await,
            Err(e) => {
                tracing::error!(
                    "configuration not reloaded: {e}; the running configuration stays in force"
                );
                Err(e.into())
            }
        }
    }

    /// Puts `config` in force (see the module documentation).
    pub(super) async fn reload_with(
        &self,
        mut config: Config,
        origin: &str,
    ) -> Result<ReloadReport, ReloadError> {
        let mut state = self.state.lock().await;
        let mut report = ReloadReport {
            restart_required: keep_fixed(&state.config, &mut config),
            ..ReloadReport::default()
        };
        for key in &report.restart_required {
            tracing::warn!(
                key = %key,
                "`{key}` changed in the configuration file, but it takes a restart: the running value stays in force"
            );
        }
        // Again, with the running values of those keys (which could make, say, an admin
        // listener on a public address lose its password file).
        if let Err(e) = config.validate(origin) {
            tracing::error!(
                "configuration not reloaded: {e}; the running configuration stays in force"
            );
            return Err(e.into());
        }
        let config = Arc::new(config);
        let running: Vec<&ListenerConfig> = state.listeners.iter().map(|l| &l.config).collect();
        let places = match_listeners(&running, &config.listeners);
        let mut prepared = Vec::with_capacity(places.len());
        for (listener, place) in config.listeners.iter().zip(&places) {
            let previous = place.map(|i| (i, &state.listeners[i], &*state.config));
            match prepare(&self.shared, &config, listener, previous) {
                Ok(p) => prepared.push(p),
                // The listeners bound so far close as `prepared` drops.
                Err(e) => {
                    let error = ReloadError::Listener(e);
                    tracing::error!("configuration not reloaded: {error}");
                    return Err(error);
                }
            }
        }

        // From here on, everything is put in force.
        let kept: HashSet<usize> = places.iter().flatten().copied().collect();
        for (i, listener) in state.listeners.iter_mut().enumerate() {
            if !kept.contains(&i) {
                // Its socket closes with the task; its connections are tasks of their own.
                listener.accepting.stop().await;
            }
        }
        describe_settings(&state.config, &config, &mut report);
        let shared = &self.shared;
        shared.broker.set_config(config.clone());
        shared.limits.total.set_max(config.mqtt.max_connections);
        shared.limits.per_ip.reconfigure(&config.limits);
        let mut errors = commit(shared, &mut state, &config, prepared, &mut report);
        if let Some(users) = &shared.admin_users {
            match users.reconfigure(&config.admin) {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!("admin.password_file: {e}; keeping the previous users");
                    errors.push(e.into());
                }
            }
        }
        // Subscriptions granted under the old rules are checked under the new ones.
        shared.broker.access_changed();
        for change in &report.changes {
            tracing::info!("reload: {change}");
        }
        errors.into_iter().next().map_or(Ok(report), Err)
    }
}

impl ReloadReport {
    /// The report as the admin API answers it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "reloaded": true,
            "changes": self.changes,
            "restart_required": self.restart_required,
        })
    }
}

/// Gives `new` the running values of the keys that cannot change without a restart, and
/// returns the keys whose value differed.
pub fn keep_fixed(running: &Config, new: &mut Config) -> Vec<String> {
    fn keep<T: PartialEq + Clone>(keys: &mut Vec<String>, key: &str, running: &T, new: &mut T) {
        if running != new {
            keys.push(key.to_owned());
            *new = running.clone();
        }
    }
    let mut keys = Vec::new();
    let k = &mut keys;
    let (r, n) = (&running.storage, &mut new.storage);
    // The store is opened, and its writer started, with these.
    keep(k, "storage.backend", &r.backend, &mut n.backend);
    keep(k, "storage.dir", &r.dir, &mut n.dir);
    keep(k, "storage.durability", &r.durability, &mut n.durability);
    keep(
        k,
        "storage.flush_interval_ms",
        &r.flush_interval_ms,
        &mut n.flush_interval_ms,
    );
    keep(
        k,
        "storage.max_stored_bytes",
        &r.max_stored_bytes,
        &mut n.max_stored_bytes,
    );
    // The router is built with it.
    keep(
        k,
        "mqtt.shared_subscription_strategy",
        &running.mqtt.shared_subscription_strategy,
        &mut new.mqtt.shared_subscription_strategy,
    );
    // The `$SYS` task runs at this interval, or was not started.
    keep(
        k,
        "sys.interval_secs",
        &running.sys.interval_secs,
        &mut new.sys.interval_secs,
    );
    // The log limiter and the failed-login limiter are built with these.
    let (r, n) = (&running.log, &mut new.log);
    keep(
        k,
        "log.lines_per_peer",
        &r.lines_per_peer,
        &mut n.lines_per_peer,
    );
    keep(
        k,
        "log.peer_window_secs",
        &r.peer_window_secs,
        &mut n.peer_window_secs,
    );
    keep(
        k,
        "log.max_tracked_peers",
        &r.max_tracked_peers,
        &mut n.max_tracked_peers,
    );
    let (r, n) = (&running.auth.rate_limit, &mut new.auth.rate_limit);
    keep(
        k,
        "auth.rate_limit.failures_burst",
        &r.failures_burst,
        &mut n.failures_burst,
    );
    keep(
        k,
        "auth.rate_limit.failures_per_minute",
        &r.failures_per_minute,
        &mut n.failures_per_minute,
    );
    keep(
        k,
        "auth.rate_limit.max_tracked_addresses",
        &r.max_tracked_addresses,
        &mut n.max_tracked_addresses,
    );
    // The memory budget is sized once, at start.
    keep(
        k,
        "limits.max_memory",
        &running.limits.max_memory,
        &mut new.limits.max_memory,
    );
    // A cluster node joins NATS once, before its listeners open.
    keep(k, "cluster", &running.cluster, &mut new.cluster);
    // One dynamic-security state is loaded at start and shared by every listener; its
    // commands, not the config file, change it.
    keep(k, "auth.dynsec", &running.auth.dynsec, &mut new.auth.dynsec);
    // The admin listener is bound once, with its TLS files.
    let (r, n) = (&running.admin, &mut new.admin);
    keep(k, "admin.enabled", &r.enabled, &mut n.enabled);
    keep(k, "admin.bind", &r.bind, &mut n.bind);
    keep(k, "admin.tls", &r.tls, &mut n.tls);
    keys
}

/// For each listener of `new`, the index of the running listener it is: the one with the
/// same name, else the first unmatched one with the same configured address (with port 0,
/// also the same protocol, since several may share that address).
fn match_listeners(running: &[&ListenerConfig], new: &[ListenerConfig]) -> Vec<Option<usize>> {
    let mut taken = vec![false; running.len()];
    let mut places = vec![None; new.len()];
    let claim = |places: &mut Vec<Option<usize>>,
                 taken: &mut Vec<bool>,
                 same: &dyn Fn(&ListenerConfig, &ListenerConfig) -> bool| {
        for (place, listener) in places.iter_mut().zip(new) {
            if place.is_some() {
                continue;
            }
            let found = running
                .iter()
                .enumerate()
                .find(|(i, r)| !taken[*i] && same(r, listener));
            if let Some((i, _)) = found {
                taken[i] = true;
                *place = Some(i);
            }
        }
    };
    claim(&mut places, &mut taken, &|r, n| {
        n.name.is_some() && r.name == n.name && r.bind == n.bind
    });
    claim(&mut places, &mut taken, &|r, n| {
        r.bind == n.bind && (n.bind.port() != 0 || r.protocol == n.protocol)
    });
    places
}

/// Loads what `listener` needs (or keeps what the running listener it is has), and binds
/// a new one.
fn prepare(
    shared: &Shared,
    config: &Arc<Config>,
    listener: &ListenerConfig,
    previous: Option<(usize, &Running, &Config)>,
) -> Result<Prepared, StartError> {
    let name = listener.display_name();
    let kept_tls = previous
        .map(|(_, p, _)| p)
        .filter(|p| p.config.tls == listener.tls)
        .and_then(|p| p.tls.clone());
    let (tls, tls_kept) = match (&listener.tls, kept_tls) {
        (Some(_), Some(kept)) => (Some(kept), true),
        (Some(settings), None) => {
            let loaded =
                TlsListener::load(settings, shared.broker.log_limit.clone()).map_err(|source| {
                    StartError::Tls {
                        name: name.clone(),
                        source,
                    }
                })?;
            (Some(Arc::new(loaded)), false)
        }
        (None, _) => (None, false),
    };
    let kept_access = previous
        .filter(|(_, p, running)| {
            p.name == name && p.config.auth == listener.auth && running.auth == config.auth
        })
        .map(|(_, p, _)| p.access.clone());
    let (access, access_kept) = match kept_access {
        Some(kept) => (kept, true),
        None => {
            let access = AccessControl::for_listener(config, listener, shared.guard.clone())
                .map_err(|source| StartError::Auth {
                    name: name.clone(),
                    source,
                })?;
            (access, false)
        }
    };
    let place = match previous {
        Some((index, _, _)) => Place::Kept(index),
        None => {
            let addr = listener.bind;
            let socket = bind(addr).map_err(|source| StartError::Bind {
                name: name.clone(),
                addr,
                source,
            })?;
            let local = socket.local_addr().unwrap_or(addr);
            Place::New(socket, local)
        }
    };
    Ok(Prepared {
        place,
        tls,
        tls_kept,
        access,
        access_kept,
    })
}

/// Puts the prepared listeners in force, in configuration order: kept ones get a new
/// [`Generation`] (and their kept files are read again), new ones start accepting.
/// Running listeners no prepared one kept are dropped (their accept loops were stopped).
/// Returns the files that failed to load again, which keep their previous contents.
fn commit(
    shared: &Shared,
    state: &mut State,
    config: &Arc<Config>,
    prepared: Vec<Prepared>,
    report: &mut ReloadReport,
) -> Vec<ReloadError> {
    let mut old: Vec<Option<Running>> = std::mem::take(&mut state.listeners)
        .into_iter()
        .map(Some)
        .collect();
    let mut errors = Vec::new();
    let mut running = Vec::with_capacity(prepared.len());
    for (listener, p) in config.listeners.iter().zip(prepared) {
        let name = listener.display_name();
        if let (true, Some(tls)) = (p.tls_kept, &p.tls)
            && let Err(e) = reload_certificate(&name, tls, true)
        {
            errors.push(e);
        }
        if p.access_kept
            && let Err(e) = p.access.reload()
        {
            errors.push(e.into());
        }
        let kept = match p.place {
            Place::Kept(i) => old.get_mut(i).and_then(Option::take),
            Place::New(..) => None,
        };
        match (kept, p.place) {
            (Some(mut r), _) => {
                let generation =
                    generation(shared, config, listener, &name, &p.tls, &p.access, &r.gauge);
                *r.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(generation);
                let mut what = Vec::new();
                if r.config.tls != listener.tls {
                    what.push("TLS settings");
                }
                if !p.access_kept {
                    what.push(
                        "access settings (connected clients keep the ones they logged in under)",
                    );
                }
                if r.config.protocol != listener.protocol || r.config.ws_path != listener.ws_path {
                    what.push("protocol settings");
                }
                if r.name != name {
                    what.push("name");
                }
                if !what.is_empty() {
                    report.changes.push(format!(
                        "listener {name} on {}: new connections get the new {}",
                        r.local,
                        what.join(", ")
                    ));
                }
                r.config = listener.clone();
                r.name = name;
                r.tls = p.tls;
                r.access = p.access;
                running.push(r);
            }
            (None, Place::New(socket, local)) => {
                let gauge = Arc::new(AtomicU64::new(0));
                let generation =
                    generation(shared, config, listener, &name, &p.tls, &p.access, &gauge);
                log_listening(listener, &name, local, &p.access);
                report
                    .changes
                    .push(format!("listener {name} added on {local}"));
                let current: CurrentGeneration = Arc::new(RwLock::new(Arc::new(generation)));
                let accepting = start_accepting(
                    socket,
                    current.clone(),
                    shared.broker.clone(),
                    shared.limits.clone(),
                    shared.shutdown.clone(),
                );
                running.push(Running {
                    config: listener.clone(),
                    name,
                    local,
                    gauge,
                    tls: p.tls,
                    access: p.access,
                    current,
                    accepting,
                });
            }
            // `Place::Kept` always names a running listener (`match_listeners`).
            (None, Place::Kept(_)) => {}
        }
    }
    for removed in old.into_iter().flatten() {
        let open = removed.gauge.load(Ordering::Relaxed);
        report.changes.push(format!(
            "listener {} on {} removed: it accepts no more connections; its {open} open connections stay until they leave",
            removed.name, removed.local
        ));
    }
    state.listeners = running;
    state.config = config.clone();
    let tls: Vec<_> = state
        .listeners
        .iter()
        .filter_map(|l| Some((l.name.clone(), l.tls.clone()?)))
        .collect();
    *shared.tls.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tls);
    shared.admin_listeners.set(
        state
            .listeners
            .iter()
            .map(|l| ListenerInfo {
                name: l.name.clone(),
                scheme: l.config.scheme(),
                addr: l.local,
                connections: l.gauge.clone(),
            })
            .collect(),
    );
    errors
}

/// What `listener`'s accepted connections get from now on.
fn generation(
    shared: &Shared,
    config: &Arc<Config>,
    listener: &ListenerConfig,
    name: &str,
    tls: &Option<Arc<TlsListener>>,
    access: &AccessControl,
    gauge: &Arc<AtomicU64>,
) -> Generation {
    let websocket = (listener.protocol == ListenerProtocol::Ws).then(|| ws::WsSettings {
        paths: listener.ws_paths(),
        max_message_size: usize::try_from(config.mqtt.max_packet_size).unwrap_or(usize::MAX),
    });
    let amqp = (listener.protocol == ListenerProtocol::Amqp).then(|| {
        Arc::new(AmqpContext {
            name: name.to_owned(),
            access: access.clone(),
            queues: shared.amqp_queues.clone(),
            config: config.clone(),
        })
    });
    Generation {
        transport: Arc::new(Transport {
            tls: tls.clone(),
            websocket,
            counts: Arc::new(Counts {
                total: shared.limits.total.clone(),
                per_ip: shared.limits.per_ip.clone(),
                open: gauge.clone(),
            }),
            amqp,
        }),
        context: Arc::new(ListenerContext {
            name: name.to_owned(),
            access: access.clone(),
            config: config.clone(),
            shutdown: shared.shutdown.clone(),
        }),
    }
}

fn log_listening(listener: &ListenerConfig, name: &str, local: SocketAddr, access: &AccessControl) {
    let scheme = listener.scheme();
    match listener.protocol {
        ListenerProtocol::Amqp => {
            tracing::info!(listener = %name, address = %local, "listening for AMQP 0-9-1 over {scheme}; {}", access.describe())
        }
        ListenerProtocol::Ws => {
            tracing::info!(listener = %name, address = %local, paths = ?listener.ws_paths(), "listening for MQTT over {scheme}; {}", access.describe())
        }
        ListenerProtocol::Mqtt => {
            tracing::info!(listener = %name, address = %local, "listening for MQTT over {scheme}; {}", access.describe())
        }
    }
    if access.anonymous_unset() {
        tracing::warn!(listener = %name, "auth.allow_anonymous is not set: anonymous clients are accepted from loopback addresses only; set it explicitly in the config file");
    }
}

/// Report lines for the sections that apply to new connections.
fn describe_settings(running: &Config, new: &Config, report: &mut ReloadReport) {
    if running.mqtt != new.mqtt {
        report.changes.push(
            "mqtt: new connections get the new settings; queue limits and retain_available apply to every message from now on".to_owned(),
        );
    }
    if running.limits != new.limits {
        report
            .changes
            .push("limits: new connections are admitted under the new limits".to_owned());
    }
    if running.sys.client_events != new.sys.client_events {
        report
            .changes
            .push("sys.client_events: for connections from now on".to_owned());
    }
    let (r, n) = (&running.admin, &new.admin);
    if r.password_file != n.password_file || r.viewers != n.viewers {
        report
            .changes
            .push("admin: users and viewers read from the new settings".to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(bind: &str, protocol: ListenerProtocol, name: Option<&str>) -> ListenerConfig {
        ListenerConfig {
            bind: bind.parse().unwrap(),
            protocol,
            name: name.map(str::to_owned),
            ..ListenerConfig::default()
        }
    }

    #[test]
    fn listeners_are_matched_by_name_then_by_address() {
        use ListenerProtocol::{Mqtt, Ws};
        let running = [
            listener("127.0.0.1:1883", Mqtt, None),
            listener("127.0.0.1:8083", Ws, Some("web")),
            listener("127.0.0.1:0", Mqtt, None),
            listener("127.0.0.1:0", Ws, None),
            listener("127.0.0.1:9000", Mqtt, None),
        ];
        let new = [
            // Port 0: the running one of the same protocol, not the first with the address.
            listener("127.0.0.1:0", Ws, None),
            // Same address, another protocol: the same listener, changed in place.
            listener("127.0.0.1:1883", Ws, None),
            // Same name, same address: kept; a name added to an address: kept too.
            listener("127.0.0.1:8083", Ws, Some("web")),
            listener("127.0.0.1:9000", Mqtt, Some("named-now")),
            // New.
            listener("127.0.0.1:1884", Mqtt, None),
            listener("127.0.0.1:0", Mqtt, None),
        ];
        let running: Vec<&ListenerConfig> = running.iter().collect();
        assert_eq!(
            match_listeners(&running, &new),
            [Some(3), Some(0), Some(1), Some(4), None, Some(2)]
        );
        // A named listener moved to another address is a new one (the old one goes).
        let moved = [listener("127.0.0.1:8084", Ws, Some("web"))];
        assert_eq!(match_listeners(&running, &moved), [None]);
    }

    #[test]
    fn keys_that_take_a_restart_keep_their_running_values() {
        let running = Config::default();
        let text = "[storage]\ndir = \"/elsewhere\"\nbackend = \"memory\"\n\
                    [mqtt]\nmax_inflight = 7\nshared_subscription_strategy = \"random\"\n\
                    [sys]\ninterval_secs = 1\n[limits]\nmax_memory = \"1GiB\"\n[auth.dynsec]\nfile = \"ds.json\"\n\
                    [admin]\nbind = \"127.0.0.1:18084\"\n";
        let mut new = Config::from_toml(text, "t.toml").unwrap();
        let keys = keep_fixed(&running, &mut new);
        assert_eq!(
            keys,
            [
                "storage.backend",
                "storage.dir",
                "mqtt.shared_subscription_strategy",
                "sys.interval_secs",
                "limits.max_memory",
                "auth.dynsec",
                "admin.bind"
            ]
        );
        assert_eq!(new.storage, running.storage);
        assert_eq!(new.sys, running.sys);
        assert_eq!(new.auth.dynsec, None);
        assert_eq!(new.admin, running.admin);
        // What can change live is left as the file says.
        assert_eq!(new.mqtt.max_inflight, 7);
        assert!(keep_fixed(&running, &mut new).is_empty());
    }
}
