//! `midge serve`: load the configuration, start the broker, reload the configuration on
//! SIGHUP, stop on SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use midge_broker::Server;
use midge_broker::config::ConfigSource;
use midge_broker::store::Opening;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see midge.example.toml). Without one, midge listens on
    /// 127.0.0.1:1883 and accepts anonymous clients from loopback only.
    #[arg(short, long, value_name = "FILE", env = "MIDGE_CONFIG")]
    config: Option<PathBuf>,
    /// Start even if the store is damaged: keep what is readable, move the damaged file
    /// aside (midge.redb.damaged-<time>) and log what was lost.
    #[arg(long)]
    recover: bool,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Logs go to stderr (stdout stays free for tools' output); colour only on a terminal,
    // so log files and journald get plain text.
    let stderr = std::io::stderr();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&stderr))
        .init();
    // Kept for reloads, which read the file again with the same overrides.
    let source = ConfigSource {
        path: args.config.clone(),
        env: std::env::vars().collect(),
    };
    let config = source.load()?;
    // Before the runtime starts its threads; see the function.
    prepare_descriptors(config.mqtt.max_connections);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        // Hooked before the listeners open: a signal that comes once clients can connect
        // must shut down gracefully, not kill the process with the default action.
        let mut signals = Signals::install()?;
        let opening = Opening {
            recover: args.recover,
            ..Opening::default()
        };
        // A cluster node waits for NATS before it opens its listeners; a stop signal
        // meanwhile ends the wait.
        let mut server = tokio::select! {
            server = Server::start_with(config, opening) => server?,
            () = signals.wait_for_stop() => {
                tracing::info!("stopped before the listeners opened");
                return Ok(());
            }
        };
        server.reload_from(source);
        // The process is the broker: its resident memory counts against the budget, and
        // what glibc holds free after a burst goes back to the system.
        server.measure_resident_memory(Some(crate::heap::release_free_memory));
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "midge started");
        signals.wait_for_shutdown(&server).await;
        tracing::info!("shutting down");
        server.shutdown().await;
        Ok(())
    })
}

/// The signals `midge serve` handles, installed before the listeners open: a signal that
/// comes once clients can connect must be handled, not kill the process by default.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let install =
            |kind, name| signal(kind).with_context(|| format!("installing the {name} handler"));
        Ok(Self {
            interrupt: install(SignalKind::interrupt(), "SIGINT")?,
            terminate: install(SignalKind::terminate(), "SIGTERM")?,
            hangup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// Resolves on SIGINT or SIGTERM, before there is anything to reload.
    async fn wait_for_stop(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    /// Resolves on SIGINT or SIGTERM; SIGHUP meanwhile reloads the configuration.
    async fn wait_for_shutdown(&mut self, server: &Server) {
        loop {
            tokio::select! {
                _ = self.interrupt.recv() => return,
                _ = self.terminate.recv() => return,
                _ = self.hangup.recv() => {
                    tracing::info!("SIGHUP: reloading");
                    // A reload is not cancelled by a signal that comes meanwhile: those
                    // wait for it (a SIGTERM during a reload stops the broker after it).
                    match server.reload().await {
                        Ok(report) if report.restart_required.is_empty() => {
                            tracing::info!("reload done");
                        }
                        Ok(report) => {
                            tracing::warn!(
                                restart_required = %report.restart_required.join(", "),
                                "reload done; some changed keys take a restart"
                            );
                        }
                        // The server has logged what failed; what it could not load
                        // stays as it was.
                        Err(e) => tracing::error!("reload failed: {e}"),
                    }
                }
            }
        }
    }
}

/// Descriptors beyond what a broker holds besides its connections: listeners, the store,
/// password and certificate files being read, log output.
const SPARE_DESCRIPTORS: u64 = 64;

/// The descriptor table is grown up front to at most this many entries (1 MiB of kernel
/// memory); past it, growth happens as connections come, as before.
const MAX_PREGROWN_DESCRIPTORS: u64 = 1 << 17;

/// Readies the process for `max_connections` connections, before any thread starts:
/// - the open-files soft limit is raised towards the hard limit (the usual soft limit of
///   1024 would refuse the 1,000th client);
/// - the descriptor table is grown to that size once, now. Linux grows it by doubling as
///   descriptors are taken, and in a process with several threads each growth waits for an
///   RCU grace period inside `accept` (measured: stalls of 10-20 ms, during which no
///   connection on that worker is served). In a single-threaded process it does not wait.
fn prepare_descriptors(max_connections: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // 0 is unlimited: as many as the hard limit allows.
    let wanted = match max_connections {
        0 => u64::MAX,
        n => (n as u64).saturating_add(SPARE_DESCRIPTORS),
    };
    let limit = getrlimit(Resource::Nofile);
    let reachable = limit.maximum.map_or(wanted, |hard| wanted.min(hard));
    if limit.current.is_some_and(|soft| soft < reachable) {
        let raised = Rlimit {
            current: Some(reachable),
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "could not raise the open files limit");
        }
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if max_connections > 0 && soft < wanted {
        // Not a warning: the default max_connections (100,000) is above many systems' hard
        // limit, and the limit is what the operator sets on purpose.
        tracing::info!(
            open_files_limit = soft,
            max_connections,
            "the open files limit caps connections below max_connections (raise it with \
             ulimit -n, or LimitNOFILE= in a systemd unit)"
        );
    }
    // A duplicate at the highest usable number makes the kernel size the table for it;
    // the table keeps that size after the duplicate is closed.
    let top = soft
        .min(wanted)
        .min(MAX_PREGROWN_DESCRIPTORS)
        .saturating_sub(1);
    if let Ok(top) = i32::try_from(top)
        && top > 0
        && let Err(e) = rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), top)
    {
        tracing::debug!(error = %e, "could not grow the descriptor table");
    }
}
