//! `midge serve`: load the configuration, start the broker, stop on SIGINT/SIGTERM.

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
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false)
        // The README promises stderr; fmt() alone writes to stdout.
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = Config::load(args.config.as_deref(), std::env::vars())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let opening = Opening {
            recover: args.recover,
            ..Opening::default()
        };
        let server = Server::start_with(config, opening).await?;
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "midge started");
        wait_for_signal().await?;
        tracing::info!("shutting down");
        server.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
