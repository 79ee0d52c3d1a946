//! The message scenarios (`fanin`, `fanout`, `pairs`, `shared`, `device`, and with amqp.rs's
//! AMQP side `amqp-mqtt` and `mqtt-amqp`): publishers and subscribers as plain tasks that
//! share only atomic counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::BytesMut;
use midge_proto::{OutgoingPublish, Packet, PubResponse, PublishProperties, QoS};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;

use super::amqp;
use super::client::Client;
use super::histogram::Histogram;
use super::report::{Report, Usage};
use super::sequence::{Stream, Streams};
use super::shared::{Published, Received, STALL, Shared, Tally};
use super::{Plan, Scenario};

/// Bytes of PUBLISH packets per write (many messages per system call).
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Read buffer per subscriber; large, so one read takes everything the broker wrote.
const READ_BUF: usize = 256 * 1024;
/// Connections opened at once while setting up.
const CONNECT_CONCURRENCY: usize = 100;

/// Connects `count` clients, `CONNECT_CONCURRENCY` at a time, subscribing each if `subscribe`.
async fn connect_all(
    plan: &Arc<Plan>,
    role: &str,
    count: u32,
    subscribe: bool,
) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(count as usize);
    let ids: Vec<u32> = (0..count).collect();
    for chunk in ids.chunks(CONNECT_CONCURRENCY) {
        let handles: Vec<JoinHandle<anyhow::Result<Client>>> = chunk
            .iter()
            .map(|&id| {
                let plan = Arc::clone(plan);
                let client_id = plan.client_id(role, id);
                tokio::spawn(async move {
                    // Subscribers may sit on another node of a cluster (--sub-port).
                    let addr = if subscribe {
                        &plan.sub_addr
                    } else {
                        &plan.addr
                    };
                    let mut client = Client::connect(addr, &client_id, plan.version).await?;
                    if subscribe {
                        client
                            .subscribe(&plan.subscribe_filter(id), plan.qos)
                            .await?;
                    }
                    Ok(client)
                })
            })
            .collect();
        for handle in handles {
            clients.push(handle.await.context("connect task")??);
        }
    }
    Ok(clients)
}

pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    let plan = Arc::new(plan.clone());
    let mut report = Report::default();
    let connecting = Instant::now();
    // Subscribers first, so no message is published before its subscribers exist. In
    // amqp-mqtt the publishers speak AMQP, in mqtt-amqp the subscribers (consumers) do.
    let amqp_side = amqp::amqp_publishers(plan.scenario);
    let (subscribers, consumers) = if amqp_side == Some(false) {
        (
            Vec::new(),
            amqp::connect_all(&plan, plan.subscribers, true).await?,
        )
    } else {
        (
            connect_all(&plan, "s", plan.subscribers, true).await?,
            Vec::new(),
        )
    };
    let (publishers, amqp_publishers) = if amqp_side == Some(true) {
        (
            Vec::new(),
            amqp::connect_all(&plan, plan.publishers, false).await?,
        )
    } else {
        (
            connect_all(&plan, "p", plan.publishers, false).await?,
            Vec::new(),
        )
    };
    report.connect_time = connecting.elapsed();
    report.connections = plan.subscribers + plan.publishers;
    for client in subscribers.iter().chain(publishers.iter()) {
        report.handshake.record(client.handshake.as_nanos() as u64);
    }
    for conn in consumers.iter().chain(amqp_publishers.iter()) {
        report.handshake.record(conn.handshake.as_nanos() as u64);
    }
    tokio::time::sleep(plan.settle).await;

    let clock = Instant::now();
    let window_start = clock + plan.warmup;
    let end = plan.count.is_none().then(|| window_start + plan.duration);
    let shared = Arc::new(Shared {
        clock,
        delivered: (0..plan.publishers).map(|_| AtomicU64::new(0)).collect(),
        wake: (0..plan.publishers).map(|_| Notify::new()).collect(),
        delivered_total: AtomicU64::new(0),
        sent_total: AtomicU64::new(0),
        window_start_ns: plan.warmup.as_nanos() as u64,
        window_end_ns: AtomicU64::new(end.map_or(u64::MAX, |e| (e - clock).as_nanos() as u64)),
    });
    let (stop, stopped) = watch::channel(false);

    let mut subscriber_tasks: Vec<JoinHandle<anyhow::Result<Received>>> = subscribers
        .into_iter()
        .map(|client| {
            tokio::spawn(subscriber(
                client,
                Arc::clone(&plan),
                Arc::clone(&shared),
                stopped.clone(),
            ))
        })
        .collect();
    subscriber_tasks.extend(consumers.into_iter().map(|conn| {
        tokio::spawn(amqp::consumer(
            conn,
            Arc::clone(&plan),
            Arc::clone(&shared),
            stopped.clone(),
        ))
    }));
    // --count is split evenly; the first publishers take the remainder.
    let quota = |id: u32| {
        plan.count.map(|count| {
            let p = u64::from(plan.publishers);
            count / p + u64::from(u64::from(id) < count % p)
        })
    };
    let mut publisher_tasks: Vec<JoinHandle<anyhow::Result<Published>>> = publishers
        .into_iter()
        .enumerate()
        .map(|(id, client)| {
            let id = id as u32;
            tokio::spawn(publisher(
                id,
                client,
                Arc::clone(&plan),
                Arc::clone(&shared),
                quota(id),
                end,
            ))
        })
        .collect();
    publisher_tasks.extend(amqp_publishers.into_iter().enumerate().map(|(id, conn)| {
        let id = id as u32;
        tokio::spawn(amqp::publisher(
            id,
            conn,
            Arc::clone(&plan),
            Arc::clone(&shared),
            quota(id),
            end,
        ))
    }));
    if !plan.quiet {
        tokio::spawn(progress(
            Arc::clone(&plan),
            Arc::clone(&shared),
            stopped.clone(),
        ));
    }

    sleep_until(window_start.into()).await;
    report.start = Some(Usage::now(plan.broker_pid));
    if let Some(end) = end {
        sleep_until(end.into()).await;
        report.end = Some(Usage::now(plan.broker_pid));
    }
    let mut connections = Vec::with_capacity(publisher_tasks.len());
    for task in publisher_tasks {
        let done = task.await.context("publisher task")??;
        report.sent += done.sent;
        report.stalls += done.stalls;
        report.inflight = if report.inflight == 0 {
            done.inflight
        } else {
            report.inflight.min(done.inflight)
        };
        // Held open until the subscribers are done: closing is not part of the run.
        connections.push(done.client);
    }
    let finished = Instant::now();
    if end.is_none() {
        report.end = Some(Usage::now(plan.broker_pid));
        shared.window_end_ns.store(shared.now_ns(), Relaxed);
    }
    report.window = end
        .unwrap_or(finished)
        .saturating_duration_since(window_start);

    // Messages still on their way: wait while deliveries keep coming, within --drain.
    report.expected = report.sent * plan.fan();
    let drain_deadline = finished + plan.drain;
    let mut last = (shared.delivered_total.load(Relaxed), Instant::now());
    while shared.delivered_total.load(Relaxed) < report.expected && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = shared.delivered_total.load(Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > STALL {
            break;
        }
    }
    let _ = stop.send(true);

    let mut streams: Vec<Streams> = Vec::with_capacity(subscriber_tasks.len());
    for task in subscriber_tasks {
        let done = task.await.context("subscriber task")??;
        report.delivered += done.delivered_window;
        report.delivered_total += done.delivered_total;
        report.unexpected += done.unexpected;
        report.latency.merge(&done.latency);
        streams.push(done.streams);
    }
    drop(connections);
    let mut unique = 0;
    for stream in streams.iter().flat_map(Streams::iter) {
        unique += stream.unique();
        report.duplicated += stream.duplicated();
        report.reordered += stream.reordered();
    }
    if plan.scenario == Scenario::Shared {
        // Each message is for one member of the group: what counts is the union of what
        // the members received; a message received by two members is a duplicate.
        unique = 0;
        for publisher in 0..plan.publishers as usize {
            let mut group = Stream::default();
            for heard in streams.iter().filter_map(|member| member.get(publisher)) {
                report.duplicated += group.union(heard);
            }
            unique += group.unique();
        }
    }
    report.lost = report.expected.saturating_sub(unique);
    Ok(report)
}

/// Reads whatever acknowledgements have arrived, without waiting; PUBREC is answered with
/// PUBREL (into `out`). Returns how many messages completed.
fn read_acks(client: &mut Client, out: &mut BytesMut) -> anyhow::Result<u64> {
    loop {
        if client.read_buf.capacity() - client.read_buf.len() < 4096 {
            client.read_buf.reserve(64 * 1024);
        }
        let space = client.read_buf.capacity() - client.read_buf.len();
        match client.stream.try_read_buf(&mut client.read_buf) {
            Ok(0) => bail!("the broker closed a publisher's connection"),
            // A short read drained the socket: another read would only say so.
            Ok(n) if n < space => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e).context("reading acknowledgements"),
        }
    }
    let mut completed = 0;
    while let Some(packet) = client.decoder.decode(&mut client.read_buf)? {
        match packet {
            Packet::PubAck(_) | Packet::PubComp(_) => completed += 1,
            Packet::PubRec(rec) => {
                Packet::PubRel(PubResponse::success(rec.packet_id)).encode(client.version, out)?;
            }
            Packet::Disconnect(d) => bail!(
                "the broker disconnected a publisher: {:#04x}",
                d.reason_code.0
            ),
            _ => {}
        }
    }
    Ok(completed)
}

async fn publisher(
    id: u32,
    mut client: Client,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    quota: Option<u64>,
    end: Option<Instant>,
) -> anyhow::Result<Published> {
    let topic = plan.publish_topic(id);
    let properties = PublishProperties::default();
    let mut payload = vec![0u8; plan.payload];
    payload[8..12].copy_from_slice(&id.to_le_bytes());
    let qos = plan.qos;
    let acknowledged = qos != QoS::AtMostOnce;
    let fan = plan.fan();
    // [MQTT-3.3.4-7] never more unacknowledged QoS 1/2 messages than the broker accepts.
    let inflight = if acknowledged {
        u64::from(plan.inflight.min(u32::from(client.receive_maximum)))
    } else {
        u64::from(plan.inflight)
    };
    let rate = plan.rate as f64 / f64::from(plan.publishers);
    let packet_len = OutgoingPublish {
        dup: false,
        qos,
        retain: false,
        topic: &topic,
        packet_id: 1,
        properties: &properties,
        topic_alias: None,
        message_expiry_interval: None,
        subscription_identifiers: &[],
        payload: &payload,
    }
    .encoded_len(client.version)?;
    let batch = if plan.one_per_write() {
        1
    } else {
        (WRITE_BATCH_BYTES / packet_len).max(1) as u64
    };
    let mut out = BytesMut::with_capacity(WRITE_BATCH_BYTES + packet_len);
    let (mut sent, mut acked, mut written_off, mut stalls) = (0u64, 0u64, 0u64, 0u64);
    let mut progress = (0u64, Instant::now());
    // At a fixed rate, publishers do not fire together: each one's schedule starts at its
    // own point of the first period, spread evenly over the publishers (devices do not
    // fire together, and a fixed total rate means a steady stream: 100 publishers firing
    // at once every 10 ms would measure a 100-message burst's queueing, not latency).
    let phase = if rate > 0.0 {
        Duration::from_secs_f64(f64::from(id) / f64::from(plan.publishers) / rate)
    } else {
        Duration::ZERO
    };
    let started = Instant::now() + phase;
    loop {
        let now = Instant::now();
        if end.is_some_and(|end| now >= end) || quota.is_some_and(|quota| sent >= quota) {
            break;
        }
        let delivered = shared.delivered[id as usize].load(Relaxed);
        if delivered != progress.0 {
            progress = (delivered, now);
        }
        // Sent but not yet delivered to every subscriber, or not yet acknowledged.
        let mut outstanding = sent.saturating_sub(delivered / fan + written_off);
        if acknowledged {
            outstanding = outstanding.max(sent - acked);
        }
        let mut allowed = inflight.saturating_sub(outstanding).min(batch);
        let mut next_due = None;
        if rate > 0.0 {
            let due = (now.saturating_duration_since(started).as_secs_f64() * rate) as u64
                + u64::from(now >= started);
            if due.saturating_sub(sent) < allowed {
                allowed = due.saturating_sub(sent);
                // Message `sent` (counting from 0) is due at sent / rate.
                next_due = Some(started + Duration::from_secs_f64(sent as f64 / rate));
            }
        }
        if let Some(quota) = quota {
            allowed = allowed.min(quota - sent);
        }
        if rate == 0.0 {
            // With --min-batch, fewer and larger writes: less system-call cost per message.
            let mut low_water = match plan.min_batch {
                0 => inflight.div_ceil(2),
                n => u64::from(n).min(inflight),
            }
            .min(batch);
            if let Some(quota) = quota {
                low_water = low_water.min(quota - sent);
            }
            if allowed < low_water {
                allowed = 0;
            }
        }
        if allowed > 0 {
            // One timestamp per batch: the batch leaves in one write.
            payload[..8].copy_from_slice(&shared.now_ns().to_le_bytes());
            for _ in 0..allowed {
                payload[12..16].copy_from_slice(&(sent as u32).to_le_bytes());
                OutgoingPublish {
                    dup: false,
                    qos,
                    retain: false,
                    topic: &topic,
                    packet_id: (sent % 65_535) as u16 + 1,
                    properties: &properties,
                    topic_alias: None,
                    message_expiry_interval: None,
                    subscription_identifiers: &[],
                    payload: &payload,
                }
                .encode(client.version, &mut out)?;
                sent += 1;
            }
            shared.sent_total.fetch_add(allowed, Relaxed);
        }
        if acknowledged {
            acked += read_acks(&mut client, &mut out)?;
        }
        if !out.is_empty() {
            use tokio::io::AsyncWriteExt;
            client.stream.write_all(&out).await.context("publishing")?;
            out.clear();
            continue;
        }
        if outstanding >= inflight && now - progress.1 > STALL {
            // Deliveries stopped coming: the broker dropped what is outstanding (QoS 0
            // allows it, and a full queue can drop QoS 1/2). Stop waiting for it.
            written_off += outstanding;
            stalls += 1;
            progress.1 = now;
            continue;
        }
        let mut wake_at = end.unwrap_or(now + STALL);
        if let Some(due) = next_due {
            wake_at = wake_at.min(due);
        }
        if outstanding >= inflight {
            wake_at = wake_at.min(progress.1 + STALL + Duration::from_millis(1));
        }
        tokio::select! {
            ready = client.stream.readable(), if acknowledged => ready.context("publisher socket")?,
            () = shared.wake[id as usize].notified() => {}
            () = sleep_until(wake_at.into()) => {}
        }
    }
    // Everything sent must be acknowledged before the run can be judged.
    let deadline = Instant::now() + plan.drain;
    while acknowledged && acked < sent && Instant::now() < deadline {
        acked += read_acks(&mut client, &mut out)?;
        if !out.is_empty() {
            use tokio::io::AsyncWriteExt;
            client.stream.write_all(&out).await.context("publishing")?;
            out.clear();
        }
        let _ = tokio::time::timeout_at(deadline.into(), client.stream.readable()).await;
    }
    Ok(Published {
        sent,
        stalls,
        inflight,
        client: Box::new(client),
    })
}

async fn subscriber(
    mut client: Client,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Received> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let publishers = plan.publishers as usize;
    let mut done = Received {
        streams: Streams::new(publishers),
        latency: Histogram::new(),
        delivered_window: 0,
        delivered_total: 0,
        unexpected: 0,
    };
    let mut tally = Tally::new(publishers);
    let mut out = BytesMut::with_capacity(16 * 1024);
    loop {
        if client.read_buf.capacity() - client.read_buf.len() < READ_BUF / 4 {
            client.read_buf.reserve(READ_BUF);
        }
        let read = tokio::select! {
            biased;
            _ = stop.changed() => break,
            read = client.stream.read_buf(&mut client.read_buf) => read.context("subscriber read")?,
        };
        if read == 0 {
            bail!("the broker closed a subscriber's connection");
        }
        let now = shared.now_ns();
        let in_window = now >= shared.window_start_ns && now < shared.window_end_ns.load(Relaxed);
        while let Some(packet) = client.decoder.decode(&mut client.read_buf)? {
            let publish = match packet {
                Packet::Publish(publish) => publish,
                Packet::PubRel(rel) => {
                    Packet::PubComp(PubResponse::success(rel.packet_id))
                        .encode(client.version, &mut out)?;
                    continue;
                }
                Packet::Disconnect(d) => {
                    bail!(
                        "the broker disconnected a subscriber: {:#04x}",
                        d.reason_code.0
                    )
                }
                _ => continue,
            };
            match publish.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => Packet::PubAck(PubResponse::success(publish.packet_id))
                    .encode(client.version, &mut out)?,
                QoS::ExactlyOnce => Packet::PubRec(PubResponse::success(publish.packet_id))
                    .encode(client.version, &mut out)?,
            }
            tally.record(&publish.payload, now, in_window, &shared, &mut done);
        }
        tally.flush(&shared, &mut done);
        if !out.is_empty() {
            client
                .stream
                .write_all(&out)
                .await
                .context("acknowledging")?;
            out.clear();
        }
    }
    Ok(done)
}

/// Once a second on stderr: what was delivered and sent in that second.
async fn progress(plan: Arc<Plan>, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = (
        0u64,
        0u64,
        super::procstat::cpu_time(super::procstat::Pid::Own).unwrap_or_default(),
    );
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let delivered = shared.delivered_total.load(Relaxed);
        let sent = shared.sent_total.load(Relaxed);
        let cpu = super::procstat::cpu_time(super::procstat::Pid::Own).unwrap_or_default();
        let elapsed = shared.clock.elapsed();
        let phase = if elapsed < plan.warmup {
            " (warm-up)"
        } else {
            ""
        };
        eprintln!(
            "[{:>4.0} s] delivered {:>9}/s  sent {:>9}/s  generator CPU {:>3.0} %{phase}",
            elapsed.as_secs_f64(),
            delivered - last.0,
            sent - last.1,
            cpu.saturating_sub(last.2).as_secs_f64() * 100.0,
        );
        last = (delivered, sent, cpu);
    }
}
