//! `midge serve`: load the configuration, start the broker, reload certificates on SIGHUP,
//! stop on SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use midge_broker::store::Opening;
use midge_broker::{Config, Server};
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
    let config = Config::load(args.config.as_deref(), std::env::vars())?;
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
        let server = Server::start_with(config, opening).await?;
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

    /// Resolves on SIGINT or SIGTERM; SIGHUP meanwhile reloads what can be reloaded.
    async fn wait_for_shutdown(&mut self, server: &Server) {
        loop {
            tokio::select! {
                _ = self.interrupt.recv() => return,
                _ = self.terminate.recv() => return,
                _ = self.hangup.recv() => {
                    tracing::info!("SIGHUP: reloading");
                    // Failures are logged by the server, and the previous settings stay.
                    if server.reload().is_ok() {
                        tracing::info!("reload done");
                    }
                }
            }
        }
    }
}
