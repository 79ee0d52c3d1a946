//! `midge pub`: publish one message (-m, -f, -n, -s) or one message per stdin line (-l).

use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{ArgGroup, Args};
use midge_client::midge_proto::{Disconnect, Publish, QoS, topic};
use midge_client::{Client, Error};
use tokio::io::AsyncBufReadExt;

use super::connect::ConnectArgs;
use super::{Failure, exit, finish, runtime};

#[derive(Debug, Args)]
#[command(
    disable_help_flag = true,
    disable_version_flag = true,
    group(ArgGroup::new("payload").required(true).args(["message", "file", "stdin_line", "stdin_file", "null_message"])),
    after_help = "Examples:\n  midge pub -t sensors/temp -m 21.5 -q 1 -r\n  tail -f log | midge pub -t logs -l\n  midge pub -V 5 -t t -m hi -D publish user-property source cli -D publish message-expiry-interval 60\n  midge pub -L mqtts://alice:secret@broker:8883/sensors/temp --cafile ca.crt -m 21.5\n  midge pub -L ws://broker:8083/mqtt -t hello -m world\n\nExit codes: 0 published, 1 error, 2 usage, 3 connection failed, 4 refused by the broker,\n5 bad credentials or not authorized, 6 timed out."
)]
pub struct PubArgs {
    /// Topic to publish to.
    #[arg(short = 't', long = "topic")]
    topic: Option<String>,
    /// The message payload.
    #[arg(short = 'm', long = "message")]
    message: Option<String>,
    /// Send the contents of FILE as the message.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Send each line of stdin as a message (without its line break; empty lines are empty
    /// messages).
    #[arg(short = 'l', long = "stdin-line")]
    stdin_line: bool,
    /// Send all of stdin as one message.
    #[arg(short = 's', long = "stdin-file")]
    stdin_file: bool,
    /// Send an empty message (with -r: clears the retained message).
    #[arg(short = 'n', long = "null-message")]
    null_message: bool,
    /// Quality of service.
    #[arg(short = 'q', long = "qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Retain the message.
    #[arg(short = 'r', long = "retain")]
    retain: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

enum Source {
    One(Bytes),
    Lines,
}

pub fn run(args: PubArgs) -> ExitCode {
    finish("pub", publish(args))
}

fn publish(args: PubArgs) -> Result<u8, Failure> {
    let connection = args
        .connect
        .build(&["connect", "publish", "disconnect", "will"])?;
    let topic = args
        .topic
        .or(connection.url_topic)
        .ok_or_else(|| Failure::usage("a topic is needed: -t TOPIC (or -L mqtt://host/topic)"))?;
    topic::validate_topic_name(&topic)
        .map_err(|e| Failure::usage(format!("topic {topic:?}: {e}")))?;
    let source = if let Some(message) = args.message {
        Source::One(Bytes::from(message))
    } else if let Some(file) = args.file {
        let data = std::fs::read(&file)
            .map_err(|e| Failure::other(format!("cannot read {}: {e}", file.display())))?;
        Source::One(Bytes::from(data))
    } else if args.stdin_file {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut data)
            .map_err(|e| Failure::other(format!("cannot read stdin: {e}")))?;
        Source::One(Bytes::from(data))
    } else if args.stdin_line {
        Source::Lines
    } else {
        Source::One(Bytes::new())
    };
    let template = Publish {
        dup: false,
        qos: QoS::from_u8(args.qos).unwrap_or_default(),
        retain: args.retain,
        topic,
        packet_id: 0,
        properties: connection.properties.publish,
        payload: Bytes::new(),
    };
    let disconnect = Disconnect {
        properties: connection.properties.disconnect,
        ..Disconnect::default()
    };
    runtime()?.block_on(async move {
        let mut client = Client::connect(&connection.transport, connection.options).await?;
        match source {
            Source::One(payload) => {
                client
                    .publish(Publish {
                        payload,
                        ..template
                    })
                    .await?;
            }
            Source::Lines => publish_lines(&mut client, &template).await?,
        }
        client.disconnect(disconnect).await?;
        Ok(exit::SUCCESS)
    })
}

/// One message per stdin line until end of input. While waiting for a line the client
/// keeps the connection alive (and discards anything the broker sends, which a publisher
/// only gets from a session it resumed).
async fn publish_lines(client: &mut Client, template: &Publish) -> Result<(), Error> {
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    // Kept across loop turns: a read interrupted by the other branch keeps what it read.
    let mut line = Vec::new();
    loop {
        let read = tokio::select! {
            read = stdin.read_until(b'\n', &mut line) => read,
            received = client.recv() => {
                received?;
                continue;
            }
        };
        let n = read.map_err(|e| Error::Unsupported(format!("cannot read stdin: {e}")))?;
        if n == 0 && line.is_empty() {
            return Ok(());
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let payload = Bytes::from(std::mem::take(&mut line));
        client
            .publish(Publish {
                payload,
                ..template.clone()
            })
            .await?;
    }
}
