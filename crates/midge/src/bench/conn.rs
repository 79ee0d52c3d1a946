//! `conn`: many idle connections, opened at a given rate and held open, to measure the
//! broker's connection rate, handshake latency and memory per connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio::time::sleep_until;

use super::Plan;
use super::client::Client;
use super::report::{Report, Usage};

/// Handshakes in progress at once when no rate is given: enough to keep the broker busy,
/// few enough not to overflow its accept backlog.
const MAX_PENDING: usize = 64;
/// Time for the broker to settle (finish its work for the last connections) before its
/// memory is read.
const SETTLE: Duration = Duration::from_secs(1);

pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    let plan = Arc::new(plan.clone());
    let mut report = Report {
        start: Some(Usage::now(plan.broker_pid)),
        ..Report::default()
    };
    let started = Instant::now();
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
            let mut client =
                Client::connect(&plan.addr, &plan.client_id("c", id), plan.version).await?;
            if plan.conn_subscribe {
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
    tokio::time::sleep(plan.hold.saturating_sub(SETTLE)).await;
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
    Ok(report)
}
