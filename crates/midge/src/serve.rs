//! `midge serve`: load the configuration, start the broker, reload certificates on SIGHUP,
//! stop on SIGINT/SIGTERM.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use midge_broker::{Config, Server};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see midge.example.toml). Without one, midge listens on
    /// 127.0.0.1:1883 and accepts anonymous clients from loopback only.
    #[arg(short, long, value_name = "FILE", env = "MIDGE_CONFIG")]
    config: Option<PathBuf>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false)
        // The log goes to stderr (fmt's default is stdout), coloured only on a terminal.
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = Config::load(args.config.as_deref(), std::env::vars())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let server = Server::start(config).await?;
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "midge started");
        wait_for_signal(&server).await?;
        tracing::info!("shutting down");
        server.shutdown().await;
        Ok(())
    })
}

/// Waits for SIGINT or SIGTERM; reloads on every SIGHUP meanwhile.
async fn wait_for_signal(server: &Server) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            result = tokio::signal::ctrl_c() => return result.context("waiting for SIGINT"),
            _ = terminate.recv() => return Ok(()),
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading");
                // Failures are logged by the server, and the previous settings stay.
                if server.reload().is_ok() {
                    tracing::info!("reload done");
                }
            }
        }
    }
}
