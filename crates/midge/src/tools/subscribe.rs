//! `midge sub`: subscribe and print messages until -C messages, -W seconds, or Ctrl-C.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use midge_client::Client;
use midge_client::midge_proto::{
    Disconnect, QoS, ReasonCode, RetainHandling, SubscriptionOptions, topic,
};

use super::connect::ConnectArgs;
use super::{Failure, exit, finish, format, runtime};

#[derive(Debug, Args)]
#[command(
    disable_help_flag = true,
    disable_version_flag = true,
    after_help = "Examples:\n  midge sub -t 'sensors/#' -v\n  midge sub -t a -t b -C 1 -W 10       exit after one message, or fail after 10 s\n  midge sub -t 'sensors/#' -F '%t %q %p\\n'\n  midge sub -V 5 -t 'sensors/#' --json\n  midge sub -L wss://broker:8084/mqtt --cafile ca.crt -t 'sensors/#'\n  midge sub -L mqtts://broker:8883/sensors/temp --tls-use-os-certs\n\nExit codes: 0 done (-C reached or interrupted), 1 error, 2 usage, 3 connection failed or lost,\n4 refused by the broker, 5 bad credentials or not authorized, 6 -W timed out."
)]
pub struct SubArgs {
    /// Topic filter to subscribe to; may repeat.
    #[arg(short = 't', long = "topic")]
    topics: Vec<String>,
    /// Maximum QoS of the subscriptions.
    #[arg(short = 'q', long = "qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Print "topic payload" (an empty payload prints as "(null)").
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Exit after COUNT messages.
    #[arg(short = 'C', long = "count", value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Give up after SECONDS (exit code 6) unless -C was reached first.
    #[arg(short = 'W', long = "timeout", value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    wait: Option<u64>,
    /// Do not print stale messages (those with the retain flag set).
    #[arg(short = 'R', long = "no-stale")]
    no_stale: bool,
    /// Do not add a newline after each message.
    #[arg(short = 'N', long = "no-newline")]
    no_newline: bool,
    /// Output format: %t topic, %p payload, %q QoS, %r retain, %m message id, %l length,
    /// %x hex payload, %C %E %F %R %S %P MQTT 5 properties, %U time, %j JSON, %%; \n \t
    /// escapes. No newline is added.
    #[arg(short = 'F', long = "format", conflicts_with_all = ["json", "verbose"])]
    format: Option<String>,
    /// One JSON object per line: topic, qos, retain, payload (or payload_base64 when not
    /// UTF-8) and MQTT 5 properties.
    #[arg(long = "json", conflicts_with = "verbose")]
    json: bool,
    /// MQTT 5 no-local: do not receive this client's own publications.
    #[arg(long = "nl")]
    no_local: bool,
    /// MQTT 5 retain-as-published: keep the publisher's retain flag.
    #[arg(long = "rap")]
    retain_as_published: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub fn run(args: SubArgs) -> ExitCode {
    finish("sub", subscribe(args))
}

fn subscribe(args: SubArgs) -> Result<u8, Failure> {
    let connection = args
        .connect
        .build(&["connect", "subscribe", "disconnect", "will"])?;
    let mut filters = args.topics;
    filters.extend(connection.url_topic);
    if filters.is_empty() {
        return Err(Failure::usage(
            "at least one topic filter is needed: -t FILTER",
        ));
    }
    for filter in &filters {
        topic::validate_topic_filter(filter)
            .map_err(|e| Failure::usage(format!("topic filter {filter:?}: {e}")))?;
    }
    let v5 = connection.options.connect.protocol.is_v5();
    if (args.no_local || args.retain_as_published) && !v5 {
        return Err(Failure::usage("--nl and --rap need MQTT 5 (-V 5)"));
    }
    let options = SubscriptionOptions {
        qos: QoS::from_u8(args.qos).unwrap_or_default(),
        no_local: args.no_local,
        retain_as_published: args.retain_as_published,
        retain_handling: RetainHandling::SendAtSubscribe,
    };
    let output = Output {
        verbose: args.verbose,
        newline: !args.no_newline,
        format: args.format,
        json: args.json,
    };
    let disconnect = Disconnect {
        properties: connection.properties.disconnect,
        ..Disconnect::default()
    };
    runtime()?.block_on(async move {
        let started = tokio::time::Instant::now();
        let mut client = Client::connect(&connection.transport, connection.options).await?;
        let entries = filters.iter().map(|f| (f.clone(), options)).collect();
        let granted = client
            .subscribe(entries, connection.properties.subscribe)
            .await?;
        let mut refused_all = true;
        let mut not_authorized = false;
        for (filter, code) in filters.iter().zip(&granted) {
            if code.is_error() {
                eprintln!(
                    "midge sub: subscription to {filter} refused: {} ({:#04x})",
                    code.description(),
                    code.0
                );
                not_authorized |= *code == ReasonCode::NOT_AUTHORIZED;
            } else {
                refused_all = false;
            }
        }
        if refused_all {
            return Err(Failure {
                code: if not_authorized {
                    exit::NOT_AUTHORIZED
                } else {
                    exit::ERROR
                },
                message: "every subscription was refused".to_owned(),
            });
        }
        let deadline = args.wait.map(|s| started + Duration::from_secs(s));
        let far = started + Duration::from_secs(u64::from(u32::MAX));
        let mut printed = 0u64;
        let mut line = Vec::new();
        let outcome = loop {
            tokio::select! {
                received = client.recv() => {
                    let publish = received?;
                    if args.no_stale && publish.retain {
                        continue;
                    }
                    line.clear();
                    output.render(&publish, &mut line);
                    let mut stdout = std::io::stdout().lock();
                    if let Err(e) = stdout.write_all(&line).and_then(|()| stdout.flush()) {
                        // A closed pipe (`| head -1`) is the reader saying it has enough.
                        if e.kind() == std::io::ErrorKind::BrokenPipe {
                            break Ok(exit::SUCCESS);
                        }
                        break Err(Failure::other(format!("cannot write to stdout: {e}")));
                    }
                    printed += 1;
                    if args.count.is_some_and(|count| printed >= count) {
                        break Ok(exit::SUCCESS);
                    }
                }
                () = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    break Err(Failure {
                        code: exit::TIMEOUT,
                        message: format!(
                            "timed out after {} s (-W) with {printed} message(s)",
                            args.wait.unwrap_or_default()
                        ),
                    });
                }
                interrupted = tokio::signal::ctrl_c() => {
                    interrupted.map_err(|e| Failure::other(format!("signal handling: {e}")))?;
                    break Ok(exit::SUCCESS);
                }
            }
        };
        // Leaving is best effort: the outcome is already decided.
        let _ = client.disconnect(disconnect).await;
        outcome
    })
}

struct Output {
    verbose: bool,
    newline: bool,
    format: Option<String>,
    json: bool,
}

impl Output {
    fn render(&self, publish: &midge_client::midge_proto::Publish, out: &mut Vec<u8>) {
        if let Some(spec) = &self.format {
            format::formatted(spec, publish, out);
        } else if self.json {
            out.extend_from_slice(format::json_line(publish).as_bytes());
            if self.newline {
                out.push(b'\n');
            }
        } else {
            format::plain(publish, self.verbose, self.newline, out);
        }
    }
}
