//! `midge bench`: a load generator and latency meter for any MQTT broker.
//!
//! Built for one core: a current-thread runtime by default, one task per connection, many
//! PUBLISH packets per write, large reads, no channels and no allocation per message on
//! the publishing side. Every payload carries its send time, publisher id and sequence
//! number, so a subscriber measures latency and detects loss, duplicates and reordering
//! itself. The generator's own CPU time is reported, so a saturated generator shows.

mod amqp;
mod client;
mod conn;
mod histogram;
mod load;
mod procstat;
mod report;
mod sequence;
mod shared;

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use midge_proto::{ProtocolVersion, QoS};

/// The smallest payload: send time (8 bytes), publisher id (4) and sequence number (4).
pub const HEADER_LEN: usize = 16;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// P publishers, each on its own topic, to S subscribers of one wildcard filter.
    Fanin,
    /// P publishers on one topic to S subscribers of that topic.
    Fanout,
    /// N publisher/subscriber pairs, each on its own topic.
    Pairs,
    /// P publishers to one `$share` group of S subscribers.
    Shared,
    /// Traffic as devices send it: N publisher/subscriber pairs (default 1,000), each
    /// publishing at its share of --rate (default 10,000 msg/s in all), every message in
    /// a write of its own, the publishers' schedules spread evenly over each period
    /// instead of firing together. Measures CPU per message while the broker is not
    /// saturated.
    Device,
    /// C idle connections opened at a given rate and held open (broker memory per
    /// connection).
    Conn,
    /// P AMQP 0-9-1 publishers to `amq.topic` (routing key `<prefix>.amqp.<id>`) at a fixed
    /// --rate (default 10,000 msg/s in all) to S MQTT subscribers of `<prefix>/amqp/+`,
    /// each receiving every message: a broker that maps `amq.topic` to MQTT, as midge and
    /// RabbitMQ's MQTT plugin do. -q 0: delivery mode 1, -q 1: 2.
    AmqpMqtt,
    /// P MQTT publishers to `<prefix>/mqtt/<id>` at a fixed --rate to S AMQP consumers,
    /// each with its own queue bound to `amq.topic` with `<prefix>.mqtt.*` (-q 0:
    /// no-ack, -q 1: acknowledged).
    MqttAmqp,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Fanin => "fanin",
            Scenario::Fanout => "fanout",
            Scenario::Pairs => "pairs",
            Scenario::Shared => "shared",
            Scenario::Device => "device",
            Scenario::Conn => "conn",
            Scenario::AmqpMqtt => "amqp-mqtt",
            Scenario::MqttAmqp => "mqtt-amqp",
        }
    }
}

/// MQTT protocol version on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Version {
    /// MQTT 3.1.1.
    #[value(name = "311")]
    V311,
    /// MQTT 5.0.
    #[value(name = "5")]
    V5,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    midge bench pairs --pairs 100 -q 1 -d 10\n  \
    midge bench fanin -P 100 -S 1 -q 0 --broker-pid $(pidof mosquitto)\n  \
    midge bench fanout -S 100 -q 1 -V 311 --json\n  \
    midge bench pairs -q 1 --rate 10000     # latency at a fixed rate\n  \
    midge bench device -N 10000 --rate 10000 -q 1 --broker-pid $(pidof midge)\n  \
    midge bench conn -C 10000 --conn-subscribe --connect-rate 2000 --broker-pid $(pidof midge)\n  \
    midge bench amqp-mqtt -P 10 -S 2 --rate 5000 -q 1 --amqp-port 5672 --broker-pid $(pidof midge)\n  \
    midge bench mqtt-amqp -P 10 -S 2 --rate 5000 -q 1 -V 311 --broker-pid $(pidof midge)")]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(short, long, default_value_t = 1883)]
    port: u16,
    /// Host the MQTT subscribers connect to (default: --host): another node of a cluster,
    /// so messages cross nodes.
    #[arg(long)]
    sub_host: Option<String>,
    /// Port the MQTT subscribers connect to (default: --port).
    #[arg(long)]
    sub_port: Option<u16>,
    /// AMQP 0-9-1 port (amqp-mqtt, mqtt-amqp), on --host.
    #[arg(long, default_value_t = 5672)]
    amqp_port: u16,
    /// AMQP user (PLAIN); guest/guest is what RabbitMQ and midge accept from loopback.
    #[arg(long, default_value = "guest")]
    amqp_user: String,
    /// AMQP password.
    #[arg(long, default_value = "guest")]
    amqp_password: String,
    /// MQTT version.
    #[arg(short = 'V', long = "mqtt-version", value_enum, default_value = "5")]
    version: Version,
    /// QoS of publications and subscriptions.
    #[arg(short, long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Publishers (default: fanin 100, fanout 1, shared 10).
    #[arg(short = 'P', long)]
    publishers: Option<u32>,
    /// Subscribers (default: fanin 1, fanout 100, shared 10).
    #[arg(short = 'S', long)]
    subscribers: Option<u32>,
    /// Publisher/subscriber pairs for `pairs` (default 100) and `device` (default 1,000).
    #[arg(short = 'N', long)]
    pairs: Option<u32>,
    /// Idle connections for `conn`.
    #[arg(short = 'C', long, default_value_t = 1000)]
    connections: u32,
    /// `conn`: each connection subscribes to a topic of its own.
    #[arg(long)]
    conn_subscribe: bool,
    /// `conn`: each connection subscribes to one topic they all share instead, and once
    /// they are up and the broker's memory is read, one more client publishes one QoS 0
    /// message to it: the report gives how long until every connection had it.
    #[arg(long, conflicts_with = "conn_subscribe")]
    conn_fanout: bool,
    /// `conn --conn-fanout` over several processes (bench/million.sh): publish nothing,
    /// create this file once every connection is up and waiting, then wait at most --hold
    /// seconds for a message published by another client. Times are also reported as Unix
    /// times, so that runs against several brokers can be put together.
    #[arg(long, requires = "conn_fanout")]
    fanout_ready_file: Option<std::path::PathBuf>,
    /// `conn`: spread the connections over this many loopback source addresses (127.0.0.1,
    /// 127.0.0.2, ...): one source address has about 28,000 ephemeral ports towards one
    /// broker port, so more connections than that need more addresses.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16_000_000))]
    conn_sources: u32,
    /// `conn`: the first of the --conn-sources addresses; the others follow it. Given, the
    /// connections are bound to it even when there is one: runs against several brokers at
    /// once (bench/million.sh) each take addresses of their own, because the kernel's search
    /// for a free port to one destination slows down as that destination's ports fill.
    #[arg(long, default_value = "127.0.0.1")]
    conn_source_first: std::net::Ipv4Addr,
    /// `conn`: new connections per second (0: as fast as the broker accepts them, with at
    /// most 64 handshakes in progress at once).
    #[arg(long, default_value_t = 0)]
    connect_rate: u32,
    /// `conn`: seconds to hold the connections open after the last one is up.
    #[arg(long, default_value_t = 2.0)]
    hold: f64,
    /// Payload bytes (at least 16: send time, publisher id, sequence number).
    #[arg(short = 's', long, default_value_t = 16)]
    payload: usize,
    /// Total messages per second over all publishers (0: as fast as sustainable; `device`
    /// defaults to 10,000 and needs a rate).
    #[arg(short, long)]
    rate: Option<u64>,
    /// Per publisher, the most messages sent but not yet acknowledged (QoS 1/2) or
    /// delivered to every subscriber: the broker's queues cannot hide a backlog.
    #[arg(short, long, default_value_t = 64)]
    inflight: u32,
    /// As fast as sustainable: a publisher writes once at least this many messages fit in
    /// its window (0: half the window). 1 writes as soon as one acknowledgement or delivery
    /// frees a slot.
    #[arg(long, default_value_t = 1)]
    min_batch: u32,
    /// Seconds measured, after the warm-up.
    #[arg(short, long, default_value_t = 10.0)]
    duration: f64,
    /// Send this many messages in total (over all publishers) instead of running for
    /// --duration; the measured window then ends when the last one is sent.
    #[arg(short = 'n', long)]
    count: Option<u64>,
    /// Seconds to wait between the last SUBACK and the first publish: a cluster node
    /// acknowledges a SUBSCRIBE before the other nodes learn of it through NATS, so
    /// messages published at once can miss a subscriber on another node.
    #[arg(long, default_value_t = 0.0)]
    settle: f64,
    /// Seconds of traffic before measuring (excluded from every figure but loss).
    #[arg(short, long, default_value_t = 2.0)]
    warmup: f64,
    /// Longest wait, after the publishers stop, for messages still on their way.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// The broker's process id: report its CPU time and memory over the measured window.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Topic prefix (runs with different prefixes do not see each other's traffic).
    #[arg(long, default_value = "bench")]
    topic_prefix: String,
    /// Runtime worker threads (1: a single-threaded runtime, the leanest).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print one JSON object on stdout instead of the human report.
    #[arg(long)]
    json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
}

/// The run, with defaults resolved and limits checked.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario: Scenario,
    pub addr: String,
    /// Where MQTT subscribers connect (`addr` unless --sub-host/--sub-port).
    pub sub_addr: String,
    /// The AMQP listener (amqp-mqtt, mqtt-amqp).
    pub amqp_addr: String,
    pub amqp_user: String,
    pub amqp_password: String,
    pub version: ProtocolVersion,
    pub qos: QoS,
    pub publishers: u32,
    pub subscribers: u32,
    pub connections: u32,
    pub conn_subscribe: bool,
    /// `conn`: one shared subscription topic, and one message fanned out over it at the end.
    pub conn_fanout: bool,
    /// `conn --conn-fanout`: another client publishes; this file says when to.
    pub fanout_ready_file: Option<std::path::PathBuf>,
    /// `conn`: loopback source addresses the connections are spread over.
    pub conn_sources: u32,
    /// `conn`: the first of them.
    pub conn_source_first: std::net::Ipv4Addr,
    pub connect_rate: u32,
    pub hold: Duration,
    pub payload: usize,
    pub rate: u64,
    pub inflight: u32,
    pub min_batch: u32,
    pub duration: Duration,
    pub count: Option<u64>,
    pub settle: Duration,
    pub warmup: Duration,
    pub drain: Duration,
    pub broker_pid: Option<u32>,
    pub prefix: String,
    pub threads: usize,
    pub json: bool,
    pub quiet: bool,
    /// Distinguishes this run's client ids from other runs'.
    pub run_id: u32,
}

fn seconds(value: f64, name: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).with_context(|| format!("--{name} {value}: not seconds"))
}

impl Plan {
    /// Checks the arguments and fills in the scenario's defaults.
    pub fn new(args: BenchArgs) -> anyhow::Result<Self> {
        let (publishers, subscribers) = match args.scenario {
            Scenario::Fanin => (
                args.publishers.unwrap_or(100),
                args.subscribers.unwrap_or(1),
            ),
            Scenario::Fanout => (
                args.publishers.unwrap_or(1),
                args.subscribers.unwrap_or(100),
            ),
            Scenario::Shared => (
                args.publishers.unwrap_or(10),
                args.subscribers.unwrap_or(10),
            ),
            Scenario::AmqpMqtt | Scenario::MqttAmqp => {
                (args.publishers.unwrap_or(10), args.subscribers.unwrap_or(1))
            }
            Scenario::Pairs | Scenario::Device => {
                if args.publishers.is_some() || args.subscribers.is_some() {
                    bail!(
                        "{} takes --pairs N, not --publishers/--subscribers",
                        args.scenario.name()
                    );
                }
                let default = if args.scenario == Scenario::Device {
                    1000
                } else {
                    100
                };
                let pairs = args.pairs.unwrap_or(default);
                (pairs, pairs)
            }
            Scenario::Conn => (0, 0),
        };
        if args.scenario != Scenario::Conn && (publishers == 0 || subscribers == 0) {
            bail!("at least one publisher and one subscriber are needed");
        }
        if args.scenario == Scenario::Conn && args.connections == 0 {
            bail!("--connections must be at least 1");
        }
        let last_source =
            u64::from(u32::from(args.conn_source_first)) + u64::from(args.conn_sources) - 1;
        if args.conn_source_first.octets()[0] != 127 || last_source >> 24 != 127 {
            bail!(
                "--conn-source-first {} with --conn-sources {}: the addresses must be in \
                 127.0.0.0/8 (loopback)",
                args.conn_source_first,
                args.conn_sources
            );
        }
        if args.payload < HEADER_LEN {
            bail!(
                "--payload {} is too small: at least {HEADER_LEN} bytes (send time, publisher \
                 id, sequence number)",
                args.payload
            );
        }
        if args.inflight == 0 || (args.qos > 0 && args.inflight > 65_535) {
            bail!("--inflight must be 1..=65535 (packet identifiers are 16 bits)");
        }
        if args.threads == 0 {
            bail!("--threads must be at least 1");
        }
        if args.count == Some(0) {
            bail!("--count must be at least 1");
        }
        let fixed_rate = matches!(
            args.scenario,
            Scenario::Device | Scenario::AmqpMqtt | Scenario::MqttAmqp
        );
        let rate = match (fixed_rate, args.rate) {
            (true, None) => 10_000,
            (true, Some(0)) => bail!(
                "{} needs a fixed --rate: it measures a broker that is not saturated",
                args.scenario.name()
            ),
            (_, rate) => rate.unwrap_or(0),
        };
        if matches!(args.scenario, Scenario::AmqpMqtt | Scenario::MqttAmqp) && args.qos > 1 {
            bail!(
                "{}: -q 0 or 1 (AMQP has two delivery modes)",
                args.scenario.name()
            );
        }
        let qos = match args.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        Ok(Self {
            scenario: args.scenario,
            addr: format!("{}:{}", args.host, args.port),
            sub_addr: format!(
                "{}:{}",
                args.sub_host.as_deref().unwrap_or(&args.host),
                args.sub_port.unwrap_or(args.port)
            ),
            amqp_addr: format!("{}:{}", args.host, args.amqp_port),
            amqp_user: args.amqp_user,
            amqp_password: args.amqp_password,
            version: match args.version {
                Version::V311 => ProtocolVersion::V311,
                Version::V5 => ProtocolVersion::V5,
            },
            qos,
            publishers,
            subscribers,
            connections: args.connections,
            conn_subscribe: args.conn_subscribe,
            conn_fanout: args.conn_fanout,
            fanout_ready_file: args.fanout_ready_file,
            conn_sources: args.conn_sources,
            conn_source_first: args.conn_source_first,
            connect_rate: args.connect_rate,
            hold: seconds(args.hold, "hold")?,
            payload: args.payload,
            rate,
            inflight: args.inflight,
            min_batch: args.min_batch,
            duration: seconds(args.duration, "duration")?,
            count: args.count,
            settle: seconds(args.settle, "settle")?,
            warmup: seconds(args.warmup, "warmup")?,
            drain: seconds(args.drain, "drain")?,
            broker_pid: args.broker_pid,
            prefix: args.topic_prefix,
            threads: args.threads,
            json: args.json,
            quiet: args.quiet,
            run_id: std::process::id(),
        })
    }

    /// How many subscribers receive each message.
    pub fn fan(&self) -> u64 {
        match self.scenario {
            Scenario::Fanin | Scenario::Fanout | Scenario::AmqpMqtt | Scenario::MqttAmqp => {
                u64::from(self.subscribers)
            }
            Scenario::Pairs | Scenario::Device | Scenario::Shared | Scenario::Conn => 1,
        }
    }

    /// The topic publisher `id` publishes to.
    pub fn publish_topic(&self, id: u32) -> String {
        let prefix = &self.prefix;
        match self.scenario {
            Scenario::Fanin => format!("{prefix}/fanin/{id}"),
            Scenario::Fanout => format!("{prefix}/fanout"),
            Scenario::Pairs => format!("{prefix}/pairs/{id}"),
            Scenario::Shared => format!("{prefix}/shared/{id}"),
            Scenario::Device => format!("{prefix}/device/{id}"),
            Scenario::Conn if self.conn_fanout => format!("{prefix}/conn/all"),
            Scenario::Conn => format!("{prefix}/conn/{id}"),
            Scenario::AmqpMqtt => format!("{prefix}/amqp/{id}"),
            Scenario::MqttAmqp => format!("{prefix}/mqtt/{id}"),
        }
    }

    /// Whether every message goes out in a write of its own, on a schedule spread over
    /// the publishers (devices), rather than as many as fit in one write.
    pub fn one_per_write(&self) -> bool {
        self.scenario == Scenario::Device
    }

    /// The loopback address connection `id` of `conn` connects from: `None` with one
    /// source (the system picks, as for every other scenario).
    pub fn conn_source(&self, id: u32) -> Option<std::net::IpAddr> {
        let first = self.conn_source_first;
        (self.conn_sources > 1 || first != std::net::Ipv4Addr::LOCALHOST).then(|| {
            std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                u32::from(first).wrapping_add(id % self.conn_sources),
            ))
        })
    }

    /// The filter subscriber `id` subscribes to.
    pub fn subscribe_filter(&self, id: u32) -> String {
        let prefix = &self.prefix;
        match self.scenario {
            Scenario::Fanin => format!("{prefix}/fanin/+"),
            Scenario::Fanout => format!("{prefix}/fanout"),
            Scenario::Pairs => format!("{prefix}/pairs/{id}"),
            Scenario::Shared => format!("$share/bench/{prefix}/shared/+"),
            Scenario::Device => format!("{prefix}/device/{id}"),
            Scenario::Conn if self.conn_fanout => format!("{prefix}/conn/all"),
            Scenario::Conn => format!("{prefix}/conn/{id}"),
            Scenario::AmqpMqtt => format!("{prefix}/amqp/+"),
            Scenario::MqttAmqp => format!("{prefix}/mqtt/+"),
        }
    }

    /// A client id unique to this run and role.
    pub fn client_id(&self, role: &str, id: u32) -> String {
        format!("mb{}-{role}{id}", self.run_id)
    }
}

/// `midge bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = Plan::new(args)?;
    let runtime = if plan.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(plan.threads)
            .enable_all()
            .build()
    }
    .context("starting the runtime")?;
    let report = runtime.block_on(async {
        match plan.scenario {
            Scenario::Conn => conn::run(&plan).await,
            _ => load::run(&plan).await,
        }
    })?;
    if plan.json {
        println!("{}", report.to_json(&plan));
    } else {
        print!("{}", report.to_text(&plan));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))?;
        Plan::new(cli.args)
    }

    #[test]
    fn scenario_defaults_fill_in_publishers_and_subscribers() {
        let fanin = plan(&["fanin"]).unwrap();
        assert_eq!(
            (fanin.publishers, fanin.subscribers, fanin.fan()),
            (100, 1, 1)
        );
        let fanout = plan(&["fanout", "-S", "7"]).unwrap();
        assert_eq!(
            (fanout.publishers, fanout.subscribers, fanout.fan()),
            (1, 7, 7)
        );
        let pairs = plan(&["pairs", "--pairs", "3"]).unwrap();
        assert_eq!(
            (pairs.publishers, pairs.subscribers, pairs.fan()),
            (3, 3, 1)
        );
        assert_eq!(pairs.publish_topic(2), pairs.subscribe_filter(2));
        let shared = plan(&["shared"]).unwrap();
        assert!(shared.subscribe_filter(0).starts_with("$share/"));
        let device = plan(&["device"]).unwrap();
        assert_eq!(
            (device.publishers, device.subscribers, device.rate),
            (1000, 1000, 10_000)
        );
        assert!(device.one_per_write() && !pairs.one_per_write());
        assert_eq!(device.publish_topic(5), device.subscribe_filter(5));
        assert_eq!(plan(&["device", "-N", "20", "-r", "50"]).unwrap().rate, 50);
        assert_eq!(plan(&["pairs"]).unwrap().rate, 0);
    }

    #[test]
    fn options_parse_into_the_plan() {
        let p = plan(&[
            "pairs",
            "-V",
            "311",
            "-q",
            "2",
            "-s",
            "256",
            "--rate",
            "10000",
            "--port",
            "1884",
            "--host",
            "::1",
            "-d",
            "1.5",
            "-w",
            "0",
            "--broker-pid",
            "42",
            "--json",
        ])
        .unwrap();
        assert_eq!(p.version, ProtocolVersion::V311);
        assert_eq!(p.qos, QoS::ExactlyOnce);
        assert_eq!((p.payload, p.rate), (256, 10_000));
        assert_eq!(p.addr, "::1:1884");
        assert_eq!(
            p.sub_addr, p.addr,
            "subscribers on the same broker by default"
        );
        let other = plan(&["pairs", "--sub-port", "1885"]).unwrap();
        assert_eq!(
            (other.addr.as_str(), other.sub_addr.as_str()),
            ("127.0.0.1:1883", "127.0.0.1:1885")
        );
        let other = plan(&["pairs", "--sub-host", "10.0.0.2"]).unwrap();
        assert_eq!(other.sub_addr, "10.0.0.2:1883");
        assert_eq!(other.settle, Duration::ZERO);
        let settled = plan(&["pairs", "--settle", "0.5"]).unwrap();
        assert_eq!(settled.settle, Duration::from_millis(500));
        assert_eq!(p.duration, Duration::from_millis(1500));
        assert_eq!(p.warmup, Duration::ZERO);
        assert_eq!(p.broker_pid, Some(42));
        assert!(p.json);
        let c = plan(&[
            "conn",
            "-C",
            "10000",
            "--conn-subscribe",
            "--connect-rate",
            "500",
        ])
        .unwrap();
        assert_eq!(
            (c.connections, c.conn_subscribe, c.connect_rate),
            (10_000, true, 500)
        );
        assert_eq!(c.conn_source(4), None, "one source: the system picks");
        let f = plan(&["conn", "-C", "10", "--conn-fanout", "--conn-sources", "3"]).unwrap();
        assert!(f.conn_fanout);
        assert_eq!(
            f.subscribe_filter(7),
            f.publish_topic(0),
            "one topic for all"
        );
        let sources: Vec<_> = (0..4)
            .map(|id| f.conn_source(id).unwrap().to_string())
            .collect();
        assert_eq!(
            sources,
            ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.1"]
        );
        let own = plan(&["conn", "--conn-source-first", "127.10.3.1"]).unwrap();
        assert_eq!(
            own.conn_source(5).unwrap().to_string(),
            "127.10.3.1",
            "one source of its own: bound to it"
        );
        let two = plan(&[
            "conn",
            "--conn-sources",
            "2",
            "--conn-source-first",
            "127.10.3.255",
        ])
        .unwrap();
        let sources: Vec<_> = (0..3)
            .map(|id| two.conn_source(id).unwrap().to_string())
            .collect();
        assert_eq!(sources, ["127.10.3.255", "127.10.4.0", "127.10.3.255"]);
        assert!(plan(&["conn", "--conn-fanout", "--conn-subscribe"]).is_err());
        assert!(
            plan(&["conn", "--fanout-ready-file", "/tmp/r"]).is_err(),
            "only with --conn-fanout"
        );
        assert!(plan(&["conn", "--conn-sources", "0"]).is_err());
        assert!(plan(&["conn", "--conn-source-first", "10.0.0.1"]).is_err());
        assert!(
            plan(&[
                "conn",
                "--conn-source-first",
                "127.255.255.255",
                "--conn-sources",
                "2"
            ])
            .is_err()
        );
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(
            plan(&["pairs", "-s", "15"]).is_err(),
            "payload below 16 bytes"
        );
        assert!(plan(&["pairs", "-q", "3"]).is_err(), "QoS 3");
        assert!(plan(&["pairs", "-V", "4"]).is_err(), "MQTT version 4");
        assert!(plan(&["pairs", "-P", "3"]).is_err(), "pairs takes --pairs");
        assert!(plan(&["fanin", "-S", "0"]).is_err(), "no subscriber");
        assert!(plan(&["pairs", "-q", "1", "--inflight", "70000"]).is_err());
        assert!(plan(&["pairs", "-d", "-1"]).is_err(), "negative duration");
        assert!(plan(&["mesh"]).is_err(), "unknown scenario");
        assert!(
            plan(&["device", "--rate", "0"]).is_err(),
            "device needs a rate"
        );
        assert!(
            plan(&["device", "-S", "3"]).is_err(),
            "device takes --pairs"
        );
        assert!(plan(&["amqp-mqtt", "--rate", "0"]).is_err(), "a fixed rate");
        assert!(
            plan(&["mqtt-amqp", "-q", "2"]).is_err(),
            "two delivery modes"
        );
    }

    #[test]
    fn amqp_scenarios_pair_amqp_keys_with_mqtt_topics() {
        let p = plan(&["amqp-mqtt", "--amqp-port", "5673", "-S", "3"]).unwrap();
        assert_eq!((p.publishers, p.subscribers, p.fan()), (10, 3, 3));
        assert_eq!((p.rate, p.amqp_addr.as_str()), (10_000, "127.0.0.1:5673"));
        assert_eq!(amqp::routing_key(&p.publish_topic(4)), "bench.amqp.4");
        assert_eq!(p.subscribe_filter(0), "bench/amqp/+");
        let m = plan(&["mqtt-amqp", "-P", "2"]).unwrap();
        assert_eq!(amqp::routing_key(&m.subscribe_filter(0)), "bench.mqtt.*");
        assert_eq!(m.publish_topic(1), "bench/mqtt/1");
    }
}
