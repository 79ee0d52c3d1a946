//! `midge`: the MQTT broker (`midge` or `midge serve`) and its tools.

// Denied rather than forbidden: `heap` declares one C function (see there).
#![deny(unsafe_code)]

mod bench;
mod ctl;
mod heap;
mod passwd;
mod serve;
mod tools;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "midge",
    version,
    about = "midge: an MQTT 3.1, 3.1.1 and 5.0 broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Options for `serve`, which is also what `midge` alone runs.
    #[command(flatten)]
    serve: serve::ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker (the default).
    Serve(serve::ServeArgs),
    /// Add, update or delete a user in a password file (argon2id; Mosquitto format).
    Passwd(passwd::PasswdArgs),
    /// Publish a message (Mosquitto's mosquitto_pub flags).
    Pub(tools::publish::PubArgs),
    /// Subscribe and print messages (Mosquitto's mosquitto_sub flags).
    Sub(tools::subscribe::SubArgs),
    /// Talk to a running broker's admin API: status, list connections, queues and
    /// subscriptions, retained messages, kick, publish, reload.
    Ctl(ctl::CtlArgs),
    /// Load-test an MQTT broker (any broker): throughput, latency, loss, connections.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Serve(args)) => serve::run(args),
        Some(Command::Passwd(args)) => passwd::run(args),
        Some(Command::Pub(args)) => return tools::publish::run(args),
        Some(Command::Sub(args)) => return tools::subscribe::run(args),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Ctl(args)) => return ctl::run(args),
        None => serve::run(cli.serve),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("midge: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
