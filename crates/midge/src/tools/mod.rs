//! `midge pub` and `midge sub`: command-line clients with Mosquitto's flags where they mean
//! the same thing, on `midge-client`.

mod connect;
mod format;
mod properties;
pub mod publish;
pub mod subscribe;
mod url;

use std::process::ExitCode;

/// Exit codes a script can rely on (README, "Command-line clients").
pub mod exit {
    /// Success.
    pub const SUCCESS: u8 = 0;
    /// Anything else: a protocol error, the broker disconnecting us, a refused publish or
    /// subscription (other than not authorized), an unreadable input file.
    pub const ERROR: u8 = 1;
    /// Bad command line (clap uses 2 too).
    pub const USAGE: u8 = 2;
    /// The connection could not be made or was lost: nothing listening, DNS, TLS or
    /// WebSocket handshake failure, the broker closing the connection.
    pub const CONNECTION: u8 = 3;
    /// The broker refused the connection (CONNACK), for a reason other than credentials.
    pub const REFUSED: u8 = 4;
    /// Bad user name or password, or not authorized (CONNACK, or a publish/subscribe
    /// refused as not authorized).
    pub const NOT_AUTHORIZED: u8 = 5;
    /// Timed out: `-W` elapsed, or the broker did not answer in time.
    pub const TIMEOUT: u8 = 6;
}

/// An error and the exit code it maps to; printed as `midge <command>: <message>`.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: exit::USAGE,
            message: message.into(),
        }
    }

    pub fn other(message: impl Into<String>) -> Self {
        Self {
            code: exit::ERROR,
            message: message.into(),
        }
    }
}

impl From<midge_client::Error> for Failure {
    fn from(error: midge_client::Error) -> Self {
        use midge_client::Error;
        let code = if error.is_auth() {
            exit::NOT_AUTHORIZED
        } else {
            match &error {
                Error::Refused { .. } => exit::REFUSED,
                Error::Network { .. } | Error::Closed => exit::CONNECTION,
                Error::Timeout(_) => exit::TIMEOUT,
                Error::TlsConfig(_) => exit::USAGE,
                _ => exit::ERROR,
            }
        };
        Self {
            code,
            message: error.to_string(),
        }
    }
}

/// Runs `body` on a single-threaded runtime and turns its outcome into an exit code,
/// printing any failure on stderr.
fn finish(command: &str, outcome: Result<u8, Failure>) -> ExitCode {
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("midge {command}: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::other(format!("cannot start the runtime: {e}")))
}
