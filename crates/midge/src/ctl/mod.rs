//! `midge ctl`: the admin API from the command line, with rabbitmqctl's list commands.
//!
//! Exit codes: 0 done; 1 the API refused the request (its message is printed); 2 usage
//! error; 3 the admin listener could not be reached; 4 the login was refused (401, 403 or
//! 429).

mod http;

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use http::{Answer, Endpoint};

/// Exit code: the API answered with an error.
const EXIT_API: u8 = 1;
/// Exit code: bad arguments (also clap's).
const EXIT_USAGE: u8 = 2;
/// Exit code: the admin listener could not be reached.
const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: the login was refused.
const EXIT_LOGIN: u8 = 4;

/// Rows fetched per request when following pages.
const PAGE: usize = 1000;

#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes: 0 done; 1 the API refused the request (its message is printed); \
2 usage error; 3 the admin listener could not be reached; 4 the login was refused."
)]
pub struct CtlArgs {
    /// The admin listener.
    #[arg(
        long,
        env = "MIDGE_CTL_URL",
        default_value = "http://127.0.0.1:18083",
        global = true
    )]
    url: String,
    /// User name (a user of [admin] password_file).
    #[arg(short = 'u', long = "username", env = "MIDGE_CTL_USER", global = true)]
    username: Option<String>,
    /// Password.
    #[arg(
        short = 'P',
        long = "password",
        env = "MIDGE_CTL_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    password: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// For https: PEM file of the CA that signs the admin listener's certificate.
    #[arg(long, value_name = "FILE", global = true)]
    cafile: Option<std::path::PathBuf>,
    /// For https: trust the operating system's CA bundle.
    #[arg(long, global = true)]
    tls_use_os_certs: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Broker status: version, uptime, connections, sessions, messages.
    Status,
    /// List connections, queues (sessions) or subscriptions.
    List {
        #[command(subcommand)]
        what: ListWhat,
    },
    /// Retained messages.
    Retained {
        #[command(subcommand)]
        action: RetainedAction,
    },
    /// Disconnect a client (MQTT 5 clients get DISCONNECT 0x98, administrative action).
    Kick {
        /// The client id.
        client_id: String,
        /// End the client's session too (also when it is not connected).
        #[arg(long)]
        discard_session: bool,
    },
    /// Publish a message as the broker.
    Publish {
        /// Topic.
        #[arg(short = 't', long)]
        topic: String,
        /// Payload (text).
        #[arg(short = 'm', long, default_value = "")]
        message: String,
        /// QoS 0, 1 or 2.
        #[arg(short = 'q', long, default_value_t = 0)]
        qos: u8,
        /// Retain the message.
        #[arg(short = 'r', long)]
        retain: bool,
    },
    /// Re-read what SIGHUP re-reads (certificates, password and ACL files).
    Reload,
}

#[derive(Debug, Subcommand)]
enum ListWhat {
    /// Connected clients. Columns: client_id (or name), online, messages,
    /// messages_ready, messages_unacknowledged, consumers, subscriptions.
    Connections {
        /// Columns to show, in order.
        columns: Vec<String>,
    },
    /// Sessions, online and offline, as RabbitMQ queues. Columns: name, messages,
    /// messages_ready, messages_unacknowledged, consumers, online, subscriptions.
    Queues {
        /// Columns to show, in order.
        columns: Vec<String>,
    },
    /// Subscriptions. Columns: filter, client_id, qos, no_local, retain_as_published,
    /// subscription_identifier, online.
    Subscriptions {
        /// Columns to show, in order.
        columns: Vec<String>,
        /// Only filters containing this.
        #[arg(long)]
        filter: Option<String>,
        /// Only client ids containing this.
        #[arg(long)]
        client: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum RetainedAction {
    /// List retained messages matching a topic filter.
    List {
        /// Topic filter.
        #[arg(default_value = "#")]
        filter: String,
    },
    /// Delete the retained message of a topic.
    Delete {
        /// Topic.
        topic: String,
    },
}

/// Why a command failed, with its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Runs `midge ctl`.
pub fn run(args: CtlArgs) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(EXIT_API, format!("cannot start the runtime: {e}")))
        .and_then(|runtime| runtime.block_on(execute(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("midge ctl: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn execute(args: CtlArgs) -> Result<(), Failure> {
    let mut endpoint = Endpoint::parse(&args.url).map_err(|e| Failure::new(EXIT_USAGE, e))?;
    endpoint.login = match (args.username, args.password) {
        (Some(user), Some(password)) => Some((user, password)),
        (Some(user), None) => Some((user, String::new())),
        (None, Some(_)) => return Err(Failure::new(EXIT_USAGE, "-P needs -u")),
        (None, None) => None,
    };
    endpoint.tls.ca_file = args.cafile;
    endpoint.tls.os_certs = args.tls_use_os_certs;
    let json_out = args.json;
    let api = Api(endpoint);
    match args.command {
        CtlCommand::Status => {
            let stats = api.call("GET", "/api/v1/stats", None).await?;
            let health = api.call("GET", "/api/v1/health", None).await?;
            if json_out {
                return print_json(&json!({"health": health, "stats": stats}));
            }
            let mut rows = vec![vec!["version".to_owned(), cell(&health["version"])]];
            flatten("", &stats, &mut rows);
            print_table(&["key".to_owned(), "value".to_owned()], &rows)
        }
        CtlCommand::List { what } => {
            let (path, columns, defaults): (String, Vec<String>, &[&str]) = match what {
                ListWhat::Connections { columns } => (
                    "/api/v1/clients?".to_owned(),
                    columns,
                    &[
                        "client_id",
                        "messages_ready",
                        "messages_unacknowledged",
                        "subscriptions",
                    ],
                ),
                ListWhat::Queues { columns } => (
                    "/api/v1/sessions?".to_owned(),
                    columns,
                    &[
                        "name",
                        "messages",
                        "messages_ready",
                        "messages_unacknowledged",
                        "consumers",
                    ],
                ),
                ListWhat::Subscriptions {
                    columns,
                    filter,
                    client,
                } => {
                    let mut path = "/api/v1/subscriptions?".to_owned();
                    if let Some(f) = filter {
                        path.push_str(&format!("filter={}&", encode(&f)));
                    }
                    if let Some(c) = client {
                        path.push_str(&format!("client_id={}&", encode(&c)));
                    }
                    (path, columns, &["filter", "client_id", "qos"])
                }
            };
            let items = api.all_pages(&path).await?;
            show_items(json_out, &items, &columns, defaults)
        }
        CtlCommand::Retained { action } => match action {
            RetainedAction::List { filter } => {
                let items = api
                    .all_pages(&format!("/api/v1/retained?filter={}&", encode(&filter)))
                    .await?;
                show_items(json_out, &items, &[], &["topic", "qos", "payload"])
            }
            RetainedAction::Delete { topic } => {
                let answer = api
                    .call(
                        "DELETE",
                        &format!("/api/v1/retained/{}", encode_path(&topic)),
                        None,
                    )
                    .await?;
                done(
                    json_out,
                    &answer,
                    &format!("deleted the retained message of {topic}"),
                )
            }
        },
        CtlCommand::Kick {
            client_id,
            discard_session,
        } => {
            let answer = api
                .call(
                    "DELETE",
                    &format!(
                        "/api/v1/clients/{}?discard_session={discard_session}",
                        encode(&client_id)
                    ),
                    None,
                )
                .await?;
            let what = match (answer["disconnected"].as_bool(), discard_session) {
                (Some(true), false) => format!("disconnected {client_id}"),
                (Some(true), true) => format!("disconnected {client_id} and ended its session"),
                _ => format!("ended the session of {client_id}"),
            };
            done(json_out, &answer, &what)
        }
        CtlCommand::Publish {
            topic,
            message,
            qos,
            retain,
        } => {
            let body = json!({"topic": topic, "payload": message, "qos": qos, "retain": retain});
            let answer = api
                .call("POST", "/api/v1/publish", Some(body.to_string().as_bytes()))
                .await?;
            done(
                json_out,
                &answer,
                &format!("published to {topic}; matched {}", cell(&answer["matched"])),
            )
        }
        CtlCommand::Reload => {
            let answer = api.call("POST", "/api/v1/reload", None).await?;
            let mut text = String::from("reloaded");
            let lines = |key: &str| -> Vec<String> {
                answer[key]
                    .as_array()
                    .map(|a| a.iter().map(cell).collect())
                    .unwrap_or_default()
            };
            for change in lines("changes") {
                text.push_str(&format!("\nchanged: {change}"));
            }
            for key in lines("restart_required") {
                text.push_str(&format!(
                    "\nrestart required: {key} (the running value stays in force)"
                ));
            }
            done(json_out, &answer, &text)
        }
    }
}

/// `{"a": {"b": 1}}` as the row `a.b  1`.
fn flatten(prefix: &str, value: &Value, rows: &mut Vec<Vec<String>>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, rows);
            }
        }
        other => rows.push(vec![prefix.to_owned(), cell(other)]),
    }
}

struct Api(Endpoint);

impl Api {
    /// One request; an error answer becomes a [`Failure`] with the API's message.
    async fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Value, Failure> {
        let answer = self
            .0
            .request(method, path, body)
            .await
            .map_err(|e| match e {
                http::HttpError::Connect(m) => Failure::new(
                    EXIT_UNREACHABLE,
                    format!("cannot reach the admin listener: {m}"),
                ),
                e @ http::HttpError::Protocol(_) => Failure::new(EXIT_API, e.to_string()),
            })?;
        interpret(answer)
    }

    /// Every item of a paged list, following `next`.
    async fn all_pages(&self, path_with_query: &str) -> Result<Vec<Value>, Failure> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("{path_with_query}limit={PAGE}");
            if let Some(cursor) = &after {
                path.push_str(&format!("&after={}", encode(cursor)));
            }
            let page = self.call("GET", &path, None).await?;
            if let Some(list) = page["items"].as_array() {
                items.extend(list.iter().cloned());
            }
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => return Ok(items),
            }
        }
    }
}

fn interpret(answer: Answer) -> Result<Value, Failure> {
    let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    if (200..300).contains(&answer.status) {
        return Ok(body);
    }
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).into_owned());
    let code = match answer.status {
        401 | 403 | 429 => EXIT_LOGIN,
        _ => EXIT_API,
    };
    Err(Failure::new(
        code,
        format!("{} (HTTP {})", message, answer.status),
    ))
}

fn done(json_out: bool, answer: &Value, text: &str) -> Result<(), Failure> {
    if json_out {
        print_json(answer)
    } else {
        println!("{text}");
        Ok(())
    }
}

fn print_json(value: &Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    println!("{text}");
    Ok(())
}

fn show_items(
    json_out: bool,
    items: &[Value],
    columns: &[String],
    defaults: &[&str],
) -> Result<(), Failure> {
    if json_out {
        return print_json(&Value::Array(items.to_vec()));
    }
    let columns: Vec<String> = if columns.is_empty() {
        defaults.iter().map(|c| (*c).to_owned()).collect()
    } else {
        columns.to_vec()
    };
    // Every column must exist in the API's items (checked against the first one, or,
    // for an empty list, the defaults' family is not known: any name is accepted).
    if let Some(first) = items.first() {
        for column in &columns {
            if first.get(column).is_none() {
                let known: Vec<&str> = first
                    .as_object()
                    .map(|o| o.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                return Err(Failure::new(
                    EXIT_USAGE,
                    format!("unknown column `{column}`; columns: {}", known.join(" ")),
                ));
            }
        }
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| columns.iter().map(|c| cell(&item[c])).collect())
        .collect();
    print_table(&columns, &rows)
}

/// A JSON value as a table cell: strings bare, null empty.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Columns separated by two spaces, each as wide as its widest cell.
fn print_table(header: &[String], rows: &[Vec<String>]) -> Result<(), Failure> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(c);
            } else {
                text.push_str(&format!("{c:<w$}  "));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    let written = line(header).and_then(|()| rows.iter().try_for_each(|r| line(r)));
    written.map_err(|e| Failure::new(EXIT_API, format!("writing the output: {e}")))
}

/// Percent-encodes a query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a topic for a path, keeping its slashes.
fn encode_path(topic: &str) -> String {
    topic.split('/').map(encode).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_percent_encoded() {
        assert_eq!(encode("a/#+ b\0"), "a%2F%23%2B%20b%00");
        assert_eq!(encode_path("sensors/#x"), "sensors/%23x");
    }

    #[test]
    fn nested_stats_flatten_to_dotted_keys() {
        let mut rows = Vec::new();
        flatten("", &json!({"a": {"b": 1, "c": null}, "d": "x"}), &mut rows);
        assert_eq!(rows, [["a.b", "1"], ["a.c", ""], ["d", "x"]]);
    }
}
