//! `conn`: many idle connections, opened at a given rate and held open, to measure the
//! broker's connection rate, handshake latency and memory per connection; with
//! `--conn-fanout`, also how long one message takes to reach all of them.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio::time::sleep_until;

use midge_proto::Packet;

use super::Plan;
use super::client::Client;
use super::report::{Report, Usage};

/// Handshakes in progress at once when no rate is given: enough to keep the broker busy,
/// few enough not to overflow its accept backlog.
const MAX_PENDING: usize = 64;
/// Longest wait for the fanned-out message this run publishes itself.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for the broker to settle (finish its work for the last connections) before its
/// memory is read.
const SETTLE: Duration = Duration::from_secs(1);

pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    let plan = Arc::new(plan.clone());
    let mut report = Report {
        start: Some(Usage::now(plan.broker_pid)),
        ..Report::default()
    };
    let clock = WallClock::now();
    let started = clock.instant;
    report.connect_started_unix = Some(clock.unix(started));
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING));
    let mut tasks: Vec<JoinHandle<anyhow::Result<(Client, Instant)>>> =
        Vec::with_capacity(plan.connections as usize);
    let mut last_progress = Instant::now();
    for id in 0..plan.connections {
        if plan.connect_rate > 0 {
            let due =
                started + Duration::from_secs_f64(f64::from(id) / f64::from(plan.connect_rate));
            sleep_until(due.into()).await;
        }
        let permit = Arc::clone(&pending)
            .acquire_owned()
            .await
            .context("semaphore closed")?;
        let task_plan = Arc::clone(&plan);
        tasks.push(tokio::spawn(async move {
            let plan = task_plan;
            let mut client = Client::connect_from(
                &plan.addr,
                plan.conn_source(id),
                &plan.client_id("c", id),
                plan.version,
            )
            .await?;
            if plan.conn_subscribe || plan.conn_fanout {
                client
                    .subscribe(&plan.subscribe_filter(id), plan.qos)
                    .await?;
            }
            drop(permit);
            Ok((client, Instant::now()))
        }));
        if !plan.quiet && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            eprintln!(
                "[{:>4.0} s] {} connections started",
                started.elapsed().as_secs_f64(),
                id + 1
            );
        }
    }
    // Every connection stays open (held in `clients`) until the end of the run.
    let mut clients = Vec::with_capacity(tasks.len());
    let mut last_up = started;
    for task in tasks {
        let (client, up) = task.await.context("connect task")??;
        report.handshake.record(client.handshake.as_nanos() as u64);
        last_up = last_up.max(up);
        clients.push(client);
    }
    report.connections = plan.connections;
    report.connect_time = last_up - started;
    if !plan.quiet {
        eprintln!(
            "[{:>4.0} s] {} connections up; holding for {:.0} s",
            started.elapsed().as_secs_f64(),
            clients.len(),
            (SETTLE.max(plan.hold)).as_secs_f64()
        );
    }
    tokio::time::sleep(SETTLE).await;
    report.end = Some(Usage::now(plan.broker_pid));
    report.window = started.elapsed();
    if plan.fanout_ready_file.is_none() {
        tokio::time::sleep(plan.hold.saturating_sub(SETTLE)).await;
    }
    if plan.conn_fanout {
        let (clients_back, fanout) = fan_out(&plan, clients, &clock).await?;
        clients = clients_back;
        report.fanout = Some(fanout);
    }
    // Still connected at the end? A broker that dropped connections must not look lean.
    let mut closed = 0;
    for client in &mut clients {
        let mut probe = [0u8; 64];
        match client.stream.try_read(&mut probe) {
            Ok(0) => closed += 1,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => closed += 1,
        }
    }
    anyhow::ensure!(
        closed == 0,
        "{closed} of {} connections were closed by the broker while idle",
        clients.len()
    );
    // Reset rather than closed: closing first, the bench would keep each connection's
    // address and port in TIME_WAIT for a minute, and the next run from the same source
    // addresses would find the ports taken (a bound socket cannot reuse them as a plain
    // connect on loopback can).
    for client in &clients {
        let _ = socket2::SockRef::from(&client.stream).set_linger(Some(Duration::ZERO));
    }
    Ok(report)
}

/// One QoS 0 message from a new client to the topic every connection subscribed to: the
/// time from its write to the last connection's receipt, and how many got it. With
/// `--fanout-ready-file` another client publishes it: the file says when every connection
/// is waiting, and the wait ends after `--hold` at the latest.
async fn fan_out(
    plan: &Arc<Plan>,
    clients: Vec<Client>,
    clock: &WallClock,
) -> anyhow::Result<(Vec<Client>, super::report::Fanout)> {
    let topic = plan.publish_topic(0);
    // A message published by another client may come long after this run's connections
    // were up (the other runs' connections take their time): --hold bounds that wait.
    let deadline = tokio::time::Instant::now()
        + if plan.fanout_ready_file.is_some() {
            plan.hold
        } else {
            REPLY_TIMEOUT
        };
    let waiting: Vec<JoinHandle<(Client, Option<Instant>)>> = clients
        .into_iter()
        .map(|mut client| {
            let topic = topic.clone();
            tokio::spawn(async move {
                let wait = async {
                    loop {
                        match client.wait_packet().await {
                            Ok(Packet::Publish(publish)) if publish.topic == topic => {
                                break Some(Instant::now());
                            }
                            Ok(_) => {}
                            Err(_) => break None,
                        }
                    }
                };
                let got = tokio::time::timeout_at(deadline, wait).await.ok().flatten();
                (client, got)
            })
        })
        .collect();
    let sent = match &plan.fanout_ready_file {
        Some(path) => {
            std::fs::write(path, b"").with_context(|| format!("creating {}", path.display()))?;
            None
        }
        None => {
            let mut publisher =
                Client::connect(&plan.addr, &plan.client_id("fan", 0), plan.version).await?;
            let sent = Instant::now();
            publisher.publish_qos0(&topic, &[0u8; 16]).await?;
            Some(sent)
        }
    };
    let mut clients = Vec::with_capacity(waiting.len());
    let (mut received, mut last) = (0u32, None::<Instant>);
    for task in waiting {
        let (client, got) = task.await.context("fan-out receiver")?;
        if let Some(at) = got {
            received += 1;
            last = last.max(Some(at));
        }
        clients.push(client);
    }
    Ok((
        clients,
        super::report::Fanout {
            received,
            seconds: sent.map(|sent| last.map_or(0.0, |last| (last - sent).as_secs_f64())),
            last_unix: last.map(|last| clock.unix(last)),
        },
    ))
}

/// Turns the monotonic instants the run measures with into wall-clock times, which runs
/// in other processes can be compared with.
struct WallClock {
    instant: Instant,
    unix: f64,
}

impl WallClock {
    fn now() -> Self {
        let instant = Instant::now();
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Self { instant, unix }
    }

    /// `at`, no earlier than this clock was read.
    fn unix(&self, at: Instant) -> f64 {
        self.unix + at.saturating_duration_since(self.instant).as_secs_f64()
    }
}
