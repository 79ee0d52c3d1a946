//! Stress scenarios against the real binary, run with more worker threads than cores so
//! lock-order cycles show up as a broker that stops answering. RELIABILITY.md has what
//! each scenario showed, with its figures; `scripts/stress.sh` runs the long variants.
//!
//! Each scenario runs for `MIDGE_STRESS_SECS` seconds (default 6, the CI variant); the long
//! variant is `MIDGE_STRESS_SECS=300 cargo test --release -p midge --test stress`, with the
//! sizes scaled up by the `MIDGE_STRESS_*` variables below. Scenarios run one at a time
//! (they measure the broker's memory and latency) and print their figures on stderr
//! (`-- --nocapture`).
//! A watchdog opens a fresh connection every 100 ms and pings an existing one; any answer
//! slower than `STALL` fails the scenario, naming what stalled.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{Midge, TestDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// An answer slower than this counts as a stall. Far above any honest answer from a debug
/// build under this load (milliseconds), far below "never".
const STALL: Duration = Duration::from_secs(3);

/// One scenario at a time: each measures the broker's memory and latency, which another
/// scenario running beside it on the same cores would distort.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A number from the environment, or `default` (the CI size).
fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn scenario_duration() -> Duration {
    Duration::from_secs(env_or("MIDGE_STRESS_SECS", 6))
}

/// Starts the broker with eight workers, `$SYS` every second when `sys`, and `extra`
/// configuration sections appended.
async fn start_broker_with(dir: &TestDir, sys: bool, extra: &str) -> Midge {
    let mut midge = Midge::new(dir, "none");
    // Eight workers on a two-core machine: the default on an eight-core host, and enough
    // threads to sit in every position of a lock cycle at once.
    midge.env.push(("TOKIO_WORKER_THREADS".into(), "8".into()));
    // `MIDGE_STRESS_BROKER_LOG`: the broker's RUST_LOG (its log is kept in the test's
    // directory when the scenario fails).
    if let Ok(filter) = std::env::var("MIDGE_STRESS_BROKER_LOG") {
        midge.env.push(("RUST_LOG".into(), filter));
    }
    midge.edit_config(|text| {
        let text = if sys {
            text.replace("interval_secs = 0", "interval_secs = 1")
        } else {
            text
        };
        // `MIDGE_STRESS_STORAGE=memory` takes the store out of a figure.
        let text = match std::env::var("MIDGE_STRESS_STORAGE") {
            Ok(backend) => text.replace(
                "[storage]\n",
                &format!("[storage]\nbackend = \"{backend}\"\n"),
            ),
            Err(_) => text,
        };
        format!("{text}\n{extra}")
    });
    midge.start(&[]).await;
    midge
}

async fn start_broker(dir: &TestDir) -> Midge {
    start_broker_with(dir, false, "").await
}

/// Connects (MQTT 3.1.1, clean session), checks the CONNACK, and returns the write half;
/// everything the broker sends afterwards is read and thrown away by a task of its own
/// (nothing is acknowledged, so QoS 1 deliveries pile up in flight and then in the queue).
async fn connect_discarding(port: u16, client_id: &str) -> OwnedWriteHalf {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("TCP connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .write_all(&support::connect_v311(client_id, true))
        .await
        .expect("send CONNECT");
    let connack = read_connack(&mut stream).await;
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK for {client_id}");
    let (mut read, write) = stream.into_split();
    tokio::spawn(async move {
        let mut sink = vec![0u8; 64 * 1024];
        while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    write
}

/// A TCP connection to the broker (on 127.0.0.1) from another loopback address, so the
/// limits per address see a different client.
async fn connect_from(
    source: Ipv4Addr,
    port: u16,
    recv_buffer: Option<u32>,
) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    socket.bind(SocketAddr::from((source, 0)))?;
    socket
        .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
}

/// What the watchdog saw.
struct Watch {
    /// Slowest round (a fresh CONNECT/CONNACK plus a PINGREQ/PINGRESP).
    slowest: Duration,
    /// Every PINGREQ/PINGRESP round trip of the connected client.
    pings: Vec<Duration>,
}

/// Fails the test if a new client cannot connect, or an existing one gets no PINGRESP,
/// within [`STALL`], checking every `every` until `stop`.
async fn watchdog_every(port: u16, stop: Arc<AtomicBool>, every: Duration) -> Watch {
    let (mut pinger, _) =
        support::connect(port, &support::connect_v311("watchdog-ping", true)).await;
    let mut slowest = Duration::ZERO;
    let mut pings = Vec::new();
    let mut n = 0u32;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let started = Instant::now();
        let fresh = tokio::time::timeout(STALL, async {
            let mut raw = support::Raw::connect(port).await?;
            raw.send(&support::connect_v311(&format!("watchdog-{n}"), true))
                .await?;
            raw.recv_within(STALL).await
        })
        .await;
        match fresh {
            Ok(Ok(Some(p))) if p.kind() == 2 => {}
            other => {
                panic!("broker stalled: no CONNACK for a new client within {STALL:?} ({other:?})")
            }
        }
        let ping = Instant::now();
        pinger.send(&support::PINGREQ).await.expect("send PINGREQ");
        match pinger.recv_within(STALL).await {
            Ok(Some(p)) if p.kind() == 13 => {}
            other => panic!("broker stalled: no PINGRESP within {STALL:?} ({other:?})"),
        }
        pings.push(ping.elapsed());
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(every).await;
    }
    Watch { slowest, pings }
}

/// Starts a watchdog that checks every 100 ms.
fn watchdog(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Watch> {
    watchdog_on_own_thread(port, stop, Duration::from_millis(100))
}

/// Starts a watchdog on a thread with a runtime of its own, as a client on another machine
/// would be: on the test's runtime its answers waited for the load's tasks to be polled
/// first (a burst of 500 connects is 500 tasks), which the figures then blamed on the broker.
fn watchdog_on_own_thread(
    port: u16,
    stop: Arc<AtomicBool>,
    every: Duration,
) -> std::thread::JoinHandle<Watch> {
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("watchdog runtime")
                .block_on(watchdog_every(port, stop, every))
        })
        .expect("watchdog thread")
}

/// Awaits a watchdog, passing its panic on.
async fn watched(guard: std::thread::JoinHandle<Watch>) -> Watch {
    match tokio::task::spawn_blocking(move || guard.join())
        .await
        .expect("join the watchdog")
    {
        Ok(watch) => watch,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Percentiles of a set of durations.
#[derive(Debug, Clone, Copy)]
struct Spread {
    n: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Spread {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let at = |p: f64| {
            samples
                .get(((samples.len().saturating_sub(1)) as f64 * p).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        Self {
            n: samples.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: samples.last().copied().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            // Hundredths: p99 alone is about 0.3 ms, and 20 % of it is what is compared.
            "p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms (n={})",
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3,
            self.n
        )
    }
}

/// The broker's `$SYS/broker/...` values, as retained messages (needs `$SYS` on; read
/// after at least one interval has passed since what is to be counted).
async fn sys_values(port: u16) -> HashMap<String, String> {
    let (mut raw, _) = support::connect(port, &support::connect_v311("sys-reader", true)).await;
    raw.send(&support::subscribe(false, 1, "$SYS/broker/#", 0))
        .await
        .expect("send SUBSCRIBE");
    let mut values = HashMap::new();
    while let Ok(Some(p)) = raw.recv_within(Duration::from_millis(500)).await {
        if p.kind() == 3 {
            let publish = p.publish(false);
            values.insert(
                publish.topic,
                String::from_utf8_lossy(&publish.payload).into_owned(),
            );
        }
    }
    values
}

fn sys_counter(values: &HashMap<String, String>, topic: &str) -> u64 {
    values
        .get(topic)
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

/// Samples a process's RSS every 200 ms until `stop`: (when, KiB).
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<(Instant, u64)>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            samples.push((Instant::now(), support::rss_kib_of(pid)));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        samples
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A small deterministic generator, so a failing run can be repeated.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Issue 9, defect 1: members of two shared groups, with deliveries queued, leave and
/// rejoin one group in a loop while a publisher floods both groups' topics and another
/// client subscribes and unsubscribes. Before the fix, a member handing its queued `g1`
/// deliveries over held its mailbox lock while waiting for the trie lock, and a publish
/// routing to `g2` held the trie lock while waiting for that mailbox: every worker ended
/// up in `futex_wait` within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_group_churn_under_flood_never_stalls() {
    let _serial = SERIAL.lock().await;
    let dir = TestDir::new("stress-shared");
    let midge = start_broker(&dir).await;
    let port = midge.port;
    let stop = Arc::new(AtomicBool::new(false));
    let churns = Arc::new(AtomicU64::new(0));
    let published = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();

    for m in 0..16 {
        let mut w = connect_discarding(port, &format!("member-{m}")).await;
        w.write_all(&support::subscribe(false, 1, "$share/g1/ch/a", 1))
            .await
            .unwrap();
        w.write_all(&support::subscribe(false, 2, "$share/g2/ch/b", 1))
            .await
            .unwrap();
        let (stop, churns) = (stop.clone(), churns.clone());
        tasks.push(tokio::spawn(async move {
            let mut id = 3u16;
            while !stop.load(Ordering::Relaxed) {
                let mut batch = support::unsubscribe(false, id, "$share/g1/ch/a");
                batch.extend(support::subscribe(false, id + 1, "$share/g1/ch/a", 1));
                id = id.wrapping_add(2).max(3);
                if w.write_all(&batch).await.is_err() {
                    break;
                }
                churns.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }

    let mut publisher = connect_discarding(port, "publisher").await;
    {
        let (stop, published) = (stop.clone(), published.clone());
        tasks.push(tokio::spawn(async move {
            let mut id = 1u16;
            while !stop.load(Ordering::Relaxed) {
                let mut batch = Vec::new();
                for i in 0..64 {
                    let topic = if i % 2 == 0 { "ch/a" } else { "ch/b" };
                    batch.extend(support::publish(false, 1, false, false, topic, id, b"x"));
                    id = id.checked_add(1).unwrap_or(1);
                }
                if publisher.write_all(&batch).await.is_err() {
                    break;
                }
                published.fetch_add(64, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        }));
    }

    let mut churner = connect_discarding(port, "churner").await;
    {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u16;
            while !stop.load(Ordering::Relaxed) {
                let filter = format!("other/{}/+", i % 50);
                let mut batch = support::subscribe(false, i.max(1), &filter, 1);
                batch.extend(support::unsubscribe(false, i.max(1), &filter));
                if churner.write_all(&batch).await.is_err() {
                    break;
                }
                i = i.wrapping_add(1);
                tokio::task::yield_now().await;
            }
        }));
    }

    let guard = watchdog(port, stop.clone());
    tokio::time::sleep(scenario_duration()).await;
    stop.store(true, Ordering::Relaxed);
    let slowest = watched(guard).await.slowest;
    for task in tasks {
        task.abort();
    }
    let (churns, published) = (
        churns.load(Ordering::Relaxed),
        published.load(Ordering::Relaxed),
    );
    eprintln!(
        "shared churn: {churns} leave/rejoin, {published} publishes, slowest answer {slowest:?}"
    );
    assert!(churns > 100, "the members churned ({churns})");
    assert!(published > 1000, "the publisher flooded ({published})");
    drop(midge);
}

/// Storm counts, shared by the storm's connections.
#[derive(Default)]
struct StormCounts {
    connacks: AtomicU64,
    /// Connections the broker closed while the client was still using them (taken over).
    closed_by_broker: AtomicU64,
    /// Connections closed before their CONNACK (taken over at once).
    closed_before_connack: AtomicU64,
    /// CONNECTs that got no answer within [`STALL`].
    stalled: AtomicU64,
    batches: AtomicU64,
}

/// One of the storm's connections, reconnecting under `client_id` until `stop`: each
/// connection subscribes and unsubscribes a normal and a `$share` filter, publishes QoS 0
/// to them, a few times, then ends by DISCONNECT, by dropping the socket, or by being
/// taken over by another connection with the same id. Nothing is acknowledged and the
/// `keep/` subscription is never touched.
async fn storm_connection(
    port: u16,
    client_id: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    counts: Arc<StormCounts>,
) {
    let mut rng = Lcg(seed);
    let mut packet_id = 1u16;
    // Which filters the connections churn: `MIDGE_STRESS_STORM_CHURN` = normal, share,
    // both (the default) or none, to tell apart what a figure comes from.
    let churn = std::env::var("MIDGE_STRESS_STORM_CHURN").unwrap_or_else(|_| "both".into());
    let (use_normal, use_shared) = (
        matches!(churn.as_str(), "both" | "normal"),
        matches!(churn.as_str(), "both" | "share"),
    );
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (mut read, mut write) = stream.into_split();
        if write
            .write_all(&support::connect_v311(&client_id, false))
            .await
            .is_err()
        {
            continue;
        }
        let mut connack = [0u8; 4];
        match tokio::time::timeout(STALL, read.read_exact(&mut connack)).await {
            Ok(Ok(_)) => {
                assert_eq!(&connack[..2], [0x20, 0x02], "CONNACK for {client_id}");
                assert_eq!(connack[3], 0, "CONNACK accepts {client_id}");
                counts.connacks.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(_)) => {
                counts.closed_before_connack.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(_) => {
                counts.stalled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        }
        let reader = tokio::spawn(async move {
            let mut sink = vec![0u8; 16 * 1024];
            while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        for _ in 0..=rng.below(8) {
            if reader.is_finished() || stop.load(Ordering::Relaxed) {
                break;
            }
            let (k, g) = (rng.below(50), rng.below(5));
            let normal = format!("churn/{k}/+");
            let shared = format!("$share/g{g}/churn/{k}/x");
            let filters: Vec<&String> = [(use_normal, &normal), (use_shared, &shared)]
                .into_iter()
                .filter_map(|(on, f)| on.then_some(f))
                .collect();
            let mut batch = Vec::new();
            for filter in &filters {
                batch.extend(support::subscribe(false, packet_id, filter, 1));
                packet_id = packet_id.checked_add(1).unwrap_or(1);
            }
            // QoS 0: leftover churn subscriptions of a session taken over mid-batch must
            // not fill its queue with QoS 1 messages, which would crowd out `keep/`.
            let topic = format!("churn/{k}/x");
            batch.extend(support::publish(
                false, 0, false, false, &topic, 0, b"storm",
            ));
            for filter in &filters {
                batch.extend(support::unsubscribe(false, packet_id, filter));
                packet_id = packet_id.checked_add(1).unwrap_or(1);
            }
            if write.write_all(&batch).await.is_err() {
                break;
            }
            counts.batches.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(rng.below(5))).await;
        }
        let ending = rng.below(3);
        if ending == 2 {
            // Stay a moment, to be taken over.
            let until = Instant::now() + Duration::from_millis(50);
            while !reader.is_finished() && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if reader.is_finished() {
            counts.closed_by_broker.fetch_add(1, Ordering::Relaxed);
        } else if ending == 0 {
            let _ = write.write_all(&support::DISCONNECT).await;
        }
        // Otherwise the socket is dropped without a word.
        reader.abort();
    }
}

/// Publishes up to `per_id` QoS 1 messages to each `keep/{i}`, in acknowledged batches
/// spread over `spread` (and stopping there); returns the payloads the broker
/// acknowledged, per id.
async fn keep_publisher(
    port: u16,
    ids: usize,
    per_id: usize,
    spread: Duration,
) -> Vec<Vec<Vec<u8>>> {
    let (mut raw, _) = support::connect(port, &support::connect_v311("keep-publisher", true)).await;
    let total = ids * per_id;
    // One round trip per batch, not per message: a storm slows every round trip down.
    let batch = ids.min(32);
    let batches = total.div_ceil(batch);
    let interval = spread / u32::try_from(batches).expect("few batches");
    let deadline = Instant::now() + spread;
    let mut published = vec![Vec::new(); ids];
    let mut j = 0;
    while j < total && Instant::now() < deadline {
        let mut bytes = Vec::new();
        let mut pending = HashMap::new();
        for _ in 0..batch.min(total - j) {
            let i = j % ids;
            let payload = format!("keep-{j}").into_bytes();
            let packet_id = u16::try_from(j % 65_535 + 1).expect("fits");
            bytes.extend(support::publish(
                false,
                1,
                false,
                false,
                &format!("keep/{i}"),
                packet_id,
                &payload,
            ));
            pending.insert(packet_id, (i, payload));
            j += 1;
        }
        raw.send(&bytes).await.expect("send keep PUBLISHes");
        while !pending.is_empty() {
            match raw.recv_within(STALL).await {
                Ok(Some(p)) if p.kind() == 4 => {
                    let (i, payload) = pending
                        .remove(&p.packet_id())
                        .expect("PUBACK for a keep message in flight");
                    published[i].push(payload);
                }
                other => panic!("no PUBACK for a keep message within {STALL:?} ({other:?})"),
            }
        }
        tokio::time::sleep(interval).await;
    }
    published
}

/// Issue 9, "takeover and churn storms" (scaled down for CI: 200 connections over 20
/// client ids; `MIDGE_STRESS_STORM_CONNECTIONS`/`_IDS` scale it): persistent sessions
/// taken over again and again while their connections subscribe, unsubscribe (normal and
/// `$share`) and publish. The broker keeps answering (watchdog), every QoS 1 message
/// published to the sessions' own subscription is delivered after each storm, open files
/// come back, and RSS after the storms stays within a bound (RSS after each round is
/// printed: a leak grows with every round, allocator slack does not).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn takeover_and_churn_storm_loses_no_qos1_message() {
    let _serial = SERIAL.lock().await;
    let connections = env_or("MIDGE_STRESS_STORM_CONNECTIONS", 200) as usize;
    let ids = env_or("MIDGE_STRESS_STORM_IDS", 20) as usize;
    let rounds = env_or("MIDGE_STRESS_STORM_ROUNDS", 2).max(2) as u32;
    let duration = scenario_duration() / rounds;
    // Enough to cover a storm, and all of it fits in a session's in-flight window plus
    // its queue (32 + 1000 by default): a message dropped for a full queue would be the
    // configured policy, not a loss.
    let per_id = (duration.as_secs() as usize * 8).clamp(20, 500);
    let dir = TestDir::new("stress-storm");
    let midge = start_broker(&dir).await;
    let port = midge.port;
    let pid = midge.pid().expect("running");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_start, fds_start) = (midge.rss_kib(), midge.open_fds());
    let anon_start = rss_anon_kib_of(midge.pid().expect("running"));
    let mut rss_after = Vec::new();
    let mut anon_after = Vec::new();
    let mut fds_end = 0;

    for round in 1..=rounds {
        // Each id's persistent session subscribes to its own topic once; the storm never
        // touches that subscription, so everything published to it must arrive.
        for i in 0..ids {
            let id = format!("storm-{i}");
            let (mut raw, _) = support::connect(port, &support::connect_v311(&id, false)).await;
            support::subscribe_and_wait(&mut raw, false, &format!("keep/{i}"), 1).await;
            raw.send(&support::DISCONNECT).await.expect("DISCONNECT");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(StormCounts::default());
        let sampler = sample_rss(pid, stop.clone());
        let cpu_from = support::cpu_secs_of(pid);
        let storm_from = Instant::now();
        let tasks: Vec<_> = (0..connections)
            .map(|t| {
                tokio::spawn(storm_connection(
                    port,
                    format!("storm-{}", t % ids),
                    u64::from(round) * 1_000_000 + t as u64 + 1,
                    stop.clone(),
                    counts.clone(),
                ))
            })
            .collect();
        let publisher = tokio::spawn(keep_publisher(port, ids, per_id, duration * 3 / 4));
        let guard = watchdog(port, stop.clone());
        tokio::time::sleep(duration).await;
        let published = match publisher.await {
            Ok(published) => published,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        stop.store(true, Ordering::Relaxed);
        let cpu = (support::cpu_secs_of(pid) - cpu_from) / storm_from.elapsed().as_secs_f64();
        let watch = watched(guard).await;
        for task in tasks {
            let _ = tokio::time::timeout(support::TIMEOUT, task).await;
        }
        let rss_peak = sampler
            .await
            .expect("sampler")
            .iter()
            .map(|s| s.1)
            .max()
            .unwrap_or(0);

        // Every QoS 1 message to the surviving sessions: each id's session, resumed, gets
        // all of its `keep/` messages (in-flight ones again, with DUP) and acknowledges them.
        let (mut lost, mut duplicates, mut delivered) = (0usize, 0usize, 0usize);
        for (i, expected) in published.iter().enumerate() {
            let id = format!("storm-{i}");
            let (mut raw, present) =
                support::connect(port, &support::connect_v311(&id, false)).await;
            assert!(present, "{id}'s session survived the storm");
            let topic = format!("keep/{i}");
            let mut got: HashSet<Vec<u8>> = HashSet::new();
            let deadline = Instant::now() + support::TIMEOUT;
            while got.len() < expected.len() {
                let wait = deadline.saturating_duration_since(Instant::now());
                match raw.recv_within(wait).await {
                    Ok(Some(p)) if p.kind() == 3 => {
                        let publish = p.publish(false);
                        if publish.qos > 0 {
                            raw.send(&support::ack(support::PUBACK, publish.packet_id))
                                .await
                                .expect("PUBACK");
                        }
                        if publish.topic == topic && !got.insert(publish.payload) {
                            duplicates += 1;
                        }
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            delivered += got.len();
            lost += expected.iter().filter(|p| !got.contains(*p)).count();
            raw.send(&support::DISCONNECT).await.expect("DISCONNECT");
            // A clean session replaces the persistent one: nothing of the storm stays.
            let (mut clean, _) = support::connect(port, &support::connect_v311(&id, true)).await;
            clean.send(&support::DISCONNECT).await.expect("DISCONNECT");
        }
        let total: usize = published.iter().map(Vec::len).sum();
        // The broker gives the heap memory glibc holds free back at most every 10 s
        // (`RELEASE_INTERVAL`): "after" is once it has had the chance.
        tokio::time::sleep(Duration::from_secs(12)).await;
        rss_after.push(midge.rss_kib());
        anon_after.push(rss_anon_kib_of(midge.pid().expect("running")));
        fds_end = midge.open_fds();
        let pings = Spread::of(watch.pings);
        let c = |n: &AtomicU64| n.load(Ordering::Relaxed);
        eprintln!(
            "storm round {round}/{rounds}: {connections} connections over {ids} ids for \
             {duration:?}: {} CONNACKs, {} taken over (closed by the broker in use), {} closed \
             before CONNACK, {} batches of sub/unsub/publish; QoS 1 to the surviving sessions: \
             {total} published, {delivered} delivered, {lost} lost, {duplicates} duplicates; RSS \
             {:.1} MiB at the start, {:.1} peak, {:.1} after this round (anonymous: {:.1} at the \
             start, {:.1} after); open files \
             {fds_start} -> {fds_end}; broker CPU {:.0} % of a core; watchdog slowest round \
             {:?}, PINGREQ {pings}",
            c(&counts.connacks),
            c(&counts.closed_by_broker),
            c(&counts.closed_before_connack),
            c(&counts.batches),
            mib(rss_start),
            mib(rss_peak),
            mib(*rss_after.last().expect("pushed")),
            mib(anon_start),
            mib(*anon_after.last().expect("pushed")),
            cpu * 100.0,
            watch.slowest,
        );
        assert_eq!(
            c(&counts.stalled),
            0,
            "every CONNECT answered within {STALL:?}"
        );
        assert!(
            c(&counts.connacks) > connections as u64,
            "the connections reconnected"
        );
        assert!(c(&counts.closed_by_broker) > 0, "sessions were taken over");
        // Acknowledged batches slow down with the storm; what matters is that every id got
        // messages to lose.
        assert!(
            published.iter().all(|p| !p.is_empty()),
            "the keep publisher got through to every id ({total})"
        );
        assert_eq!(lost, 0, "QoS 1 messages lost");
    }
    assert!(
        fds_end <= fds_start + 2,
        "open files back to {fds_start} (now {fds_end})"
    );
    // Not "back within 10 %" (issue 9): glibc keeps freed memory in per-thread heaps, and
    // what a storm leaves varies from round to round by more than a round adds (see
    // RELIABILITY.md). The bound scales with the connections a storm keeps open at once
    // and catches a leak of ~100 bytes per takeover (the CI storm makes ~150,000).
    let allowance_kib = 16 * 1024 * (connections as u64 / 200).max(1);
    let last = *rss_after.last().expect("rounds");
    assert!(
        last <= rss_start + allowance_kib,
        "RSS after the storms {rss_after:?} KiB, start {rss_start} KiB"
    );
    drop(midge);
}

/// Payload of the fan-out messages: 1 KiB, starting with the send time in nanoseconds
/// since `epoch`.
fn timed_payload(epoch: Instant) -> Vec<u8> {
    let mut payload = vec![0u8; 1024];
    let nanos = u64::try_from(epoch.elapsed().as_nanos()).expect("fits");
    payload[..8].copy_from_slice(&nanos.to_be_bytes());
    payload
}

/// Each message's (arrival, latency) at the live subscriber of a fan-out scenario.
type Arrivals = Arc<Mutex<Vec<(Instant, Duration)>>>;

/// The latencies of the messages that arrived in `[from, to)`.
fn arrived_between(arrivals: &Arrivals, from: Instant, to: Instant) -> Vec<Duration> {
    arrivals
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, l)| *l)
        .collect()
}

/// Writes `MIDGE_STRESS_ARRIVALS`: a line per message, "SUBSCRIBER SECONDS LATENCY
/// PHASE", the arrival in seconds since `epoch`, its latency in seconds, and the phase (0
/// before `loaded_from`, 1 after).
fn write_arrivals(path: &str, epoch: Instant, loaded_from: Instant, sets: &[(&str, &Arrivals)]) {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (name, arrivals) in sets {
        for (at, latency) in arrivals.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "{name} {:.6} {:.6} {}",
                (*at - epoch).as_secs_f64(),
                latency.as_secs_f64(),
                u8::from(*at >= loaded_from)
            );
        }
    }
    std::fs::write(path, out).expect("write MIDGE_STRESS_ARRIVALS");
}

/// The live subscriber of the fan-out scenarios, until `stop`. It pings every 20 s: it
/// sends nothing else, and phases of a minute would outlast its 60 s keep alive.
fn spawn_live_reader(
    mut live: support::Raw,
    epoch: Instant,
    stop: Arc<AtomicBool>,
) -> (Arrivals, tokio::task::JoinHandle<()>) {
    let arrivals: Arrivals = Arc::default();
    let reader = {
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            let mut pinged = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if pinged.elapsed() >= Duration::from_secs(20) {
                    live.send(&[0xC0, 0x00]).await.expect("PINGREQ");
                    pinged = Instant::now();
                }
                match live.recv_within(Duration::from_millis(100)).await {
                    Ok(Some(p)) if p.kind() == 3 => {
                        let publish = p.publish(false);
                        let sent = u64::from_be_bytes(publish.payload[..8].try_into().unwrap());
                        let now = Instant::now();
                        let latency = (now - epoch).saturating_sub(Duration::from_nanos(sent));
                        arrivals.lock().unwrap().push((now, latency));
                    }
                    Ok(_) => {}
                    Err(e) => panic!("live subscriber lost its connection: {e}"),
                }
            }
        })
    };
    (arrivals, reader)
}

/// The fan-out publisher: `rate` messages a second to `fan/t` ([`timed_payload`], QoS 0),
/// in batches every 10 ms until `stop`; `sent` is given each batch's size once written.
async fn spawn_fan_publisher(
    port: u16,
    epoch: Instant,
    rate: u64,
    stop: Arc<AtomicBool>,
    sent: impl FnMut(u64) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    spawn_timed_publisher(port, "fan/t", epoch, rate, stop, sent).await
}

/// [`spawn_fan_publisher`] on `topic` (its client id is `topic` with `-` for `/`).
async fn spawn_timed_publisher(
    port: u16,
    topic: &'static str,
    epoch: Instant,
    rate: u64,
    stop: Arc<AtomicBool>,
    mut sent: impl FnMut(u64) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let mut w = connect_discarding(port, &format!("{}-publisher", topic.replace('/', "-"))).await;
    tokio::spawn(async move {
        let per_tick = (rate / 100).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let mut batch = Vec::new();
            for _ in 0..per_tick {
                let payload = timed_payload(epoch);
                batch.extend(support::publish(false, 0, false, false, topic, 0, &payload));
            }
            w.write_all(&batch).await.expect("publish");
            sent(per_tick);
        }
    })
}

/// `limits.socket_send_buffer` for the dead-consumer scenarios:
/// `MIDGE_STRESS_SNDBUF_KIB` KiB (64 unless set; 0 leaves the kernel's autotuning, under
/// which each dead subscriber can hold megabytes of kernel memory).
fn dead_send_buffer() -> String {
    format!(
        "socket_send_buffer = \"{}KiB\"\n",
        env_or("MIDGE_STRESS_SNDBUF_KIB", 64)
    )
}

/// Dead subscriber `d` of `fan/t` (`clean`: a clean session): a small receive buffer, so
/// the broker's writes block soon, and never read after its CONNACK. The stream and the
/// CONNACK's return code.
async fn connect_dead(port: u16, d: usize, clean: bool) -> (TcpStream, u8) {
    let mut stream = connect_from(Ipv4Addr::LOCALHOST, port, Some(4096))
        .await
        .expect("dead subscriber connects");
    let mut hello = support::connect_v311(&format!("dead-{d}"), clean);
    hello.extend(support::subscribe(false, 1, "fan/t", 0));
    stream
        .write_all(&hello)
        .await
        .expect("CONNECT and SUBSCRIBE");
    let code = read_connack(&mut stream).await[3];
    (stream, code)
}

/// The 4 bytes of a v3.1.1 CONNACK, within [`support::TIMEOUT`].
async fn read_connack(stream: &mut TcpStream) -> [u8; 4] {
    let mut connack = [0u8; 4];
    tokio::time::timeout(support::TIMEOUT, stream.read_exact(&mut connack))
        .await
        .expect("CONNACK in time")
        .expect("read CONNACK");
    connack
}

/// Issue 9, "slow and dead consumers" (scaled down for CI: 100 subscribers that never read,
/// which a debug build keeps up with on two shared cores at 1,000 messages a second;
/// `MIDGE_STRESS_DEAD` and `MIDGE_STRESS_FANOUT_RATE` scale it): a publisher fans 1 KiB
/// QoS 0 messages out at a fixed rate to one live subscriber, first alone, then with the dead subscribers added. The
/// live one keeps its throughput and latency, the broker keeps answering, and RSS stays
/// bounded by the queue limits: it levels off once the dead sessions' queues are full
/// instead of growing with time, and every drop is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_consumers_cost_bounded_memory_and_spare_a_live_one() {
    let _serial = SERIAL.lock().await;
    let dead = env_or("MIDGE_STRESS_DEAD", 100) as usize;
    let rate = env_or("MIDGE_STRESS_FANOUT_RATE", 1000);
    // Each phase (alone, then with the dead): half the scenario, or
    // `MIDGE_STRESS_DEAD_PHASE_SECS` (the issue's run is 60 s).
    let phase = match env_or("MIDGE_STRESS_DEAD_PHASE_SECS", 0) {
        0 => scenario_duration() / 2,
        secs => Duration::from_secs(secs),
    };
    let max_queued = 100u64;
    let dir = TestDir::new("stress-dead");
    let midge = start_broker_with(
        &dir,
        true,
        &format!(
            "[mqtt]\nmax_queued_messages = {max_queued}\n[limits]\n{}",
            dead_send_buffer()
        ),
    )
    .await;
    let port = midge.port;
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));

    // The live subscriber: every message's (arrival, latency).
    let (mut live, _) = support::connect(port, &support::connect_v311("live", true)).await;
    support::subscribe_and_wait(&mut live, false, "fan/t", 0).await;
    let (arrivals, reader) = spawn_live_reader(live, epoch, stop.clone());
    // The publisher: `rate` messages a second, in batches every 10 ms.
    let sent: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let publisher = {
        let sent = sent.clone();
        spawn_fan_publisher(port, epoch, rate, stop.clone(), move |n| {
            let now = Instant::now();
            sent.lock().unwrap().extend((0..n).map(|_| now));
        })
        .await
    };
    // Another subscriber, of a topic the dead do not share, with its own publisher at the
    // same rate: the issue's "other subscribers".
    let (mut other, _) = support::connect(port, &support::connect_v311("other", true)).await;
    support::subscribe_and_wait(&mut other, false, "other/t", 0).await;
    let (other_arrivals, other_reader) = spawn_live_reader(other, epoch, stop.clone());
    let other_sent: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let other_publisher = {
        let sent = other_sent.clone();
        spawn_timed_publisher(port, "other/t", epoch, rate, stop.clone(), move |n| {
            let now = Instant::now();
            sent.lock().unwrap().extend((0..n).map(|_| now));
        })
        .await
    };
    let guard = watchdog(port, stop.clone());
    let sampler = sample_rss(midge.pid().expect("running"), stop.clone());

    let pid = midge.pid().expect("running");
    let quiet_from = Instant::now();
    let cpu_quiet_from = support::cpu_secs_of(pid);
    tokio::time::sleep(phase).await;
    let quiet_to = Instant::now();
    let cpu_quiet = support::cpu_secs_of(pid) - cpu_quiet_from;
    let rss_before_dead = midge.rss_kib();

    // The dead: persistent sessions subscribed to the fan-out, whose sockets are never
    // read again (a small receive buffer, so the broker's writes block soon).
    let mut holders = Vec::with_capacity(dead);
    for chunk in (0..dead).collect::<Vec<_>>().chunks(50) {
        let connects = chunk.iter().map(|&d| async move {
            let (stream, code) = connect_dead(port, d, false).await;
            assert_eq!(code, 0, "dead-{d} accepted");
            stream
        });
        holders.extend(futures_join_all(connects).await);
    }
    let loaded_from = Instant::now();
    let cpu_loaded_from = support::cpu_secs_of(pid);
    tokio::time::sleep(phase).await;
    let loaded_to = Instant::now();
    let cpu_loaded = support::cpu_secs_of(pid) - cpu_loaded_from;
    stop.store(true, Ordering::Relaxed);
    let watch = watched(guard).await;
    publisher.await.expect("publisher");
    other_publisher.await.expect("other publisher");
    for reader in [reader, other_reader] {
        match reader.await {
            Ok(()) => {}
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    let rss = sampler.await.expect("sampler");
    // Every message's arrival, for finding when the slow ones came (a stall every second
    // showed the compaction sweep holding a worker).
    if let Ok(path) = std::env::var("MIDGE_STRESS_ARRIVALS") {
        write_arrivals(
            &path,
            epoch,
            loaded_from,
            &[("live", &arrivals), ("other", &other_arrivals)],
        );
    }
    // $SYS is published every second: wait for the values that count the whole run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sys = sys_values(port).await;
    let dropped = sys_counter(&sys, "$SYS/broker/publish/messages/dropped");

    let window_of =
        |sent: &Mutex<Vec<Instant>>, arrivals: &Arrivals, from: Instant, to: Instant| {
            let sent = sent
                .lock()
                .unwrap()
                .iter()
                .filter(|t| **t >= from && **t < to)
                .count();
            let arrived = arrived_between(arrivals, from, to);
            let secs = (to - from).as_secs_f64();
            (
                sent as f64 / secs,
                arrived.len() as f64 / secs,
                Spread::of(arrived),
            )
        };
    let window = |from, to| window_of(&sent, &arrivals, from, to);
    let (quiet_sent, quiet_rate, quiet_latency) = window(quiet_from, quiet_to);
    let (_, other_quiet_rate, other_quiet) =
        window_of(&other_sent, &other_arrivals, quiet_from, quiet_to);
    let (_, other_loaded_rate, other_loaded) =
        window_of(&other_sent, &other_arrivals, loaded_from, loaded_to);
    let (loaded_sent, loaded_rate, loaded_latency) = window(loaded_from, loaded_to);
    // Memory and latency while the dead were there: the first and second half of that
    // phase (the first includes filling their socket buffers and queues).
    let half = loaded_from + (loaded_to - loaded_from) / 2;
    let (_, _, settled_latency) = window(half, loaded_to);
    let max_in = |from: Instant, to: Instant| {
        rss.iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|s| s.1)
            .max()
            .unwrap_or(0)
    };
    let (first_half, second_half) = (max_in(loaded_from, half), max_in(half, loaded_to));
    let per_dead = (second_half.max(first_half).saturating_sub(rss_before_dead)) / dead as u64;
    let pings = Spread::of(watch.pings);
    eprintln!(
        "dead consumers: {dead} subscribers that never read, {rate} msg/s of 1 KiB QoS 0 fan-out, \
         max_queued_messages {max_queued}; live subscriber alone: {quiet_sent:.0} sent/s, \
         {quiet_rate:.0} received/s, latency {quiet_latency}; with the dead: {loaded_sent:.0} \
         sent/s, {loaded_rate:.0} received/s, latency {loaded_latency}, in its second half \
         {settled_latency}; subscriber of another topic (its own publisher, same rate): \
         alone {other_quiet_rate:.0} received/s, latency {other_quiet}, with the dead \
         {other_loaded_rate:.0} received/s, latency {other_loaded}; RSS {:.1} MiB before \
         the dead, max {:.1} in the first half and {:.1} in the second half of their phase \
         ({per_dead} KiB per dead session); dropped deliveries ($SYS) {dropped}; broker CPU \
         {:.0} % of a core alone, {:.0} % with the dead; watchdog slowest round {:?}, \
         PINGREQ {pings}",
        mib(rss_before_dead),
        mib(first_half),
        mib(second_half),
        cpu_quiet * 100.0 / (quiet_to - quiet_from).as_secs_f64(),
        cpu_loaded * 100.0 / (loaded_to - loaded_from).as_secs_f64(),
        watch.slowest,
    );
    drop(holders);
    assert!(
        quiet_rate > 0.0 && loaded_rate > 0.0,
        "the live subscriber received"
    );
    // The live subscriber keeps most of its throughput (CI machines are noisy and this
    // is a debug build; RELIABILITY.md has the release figures).
    assert!(
        loaded_rate >= quiet_rate * 0.5,
        "live throughput {loaded_rate:.0}/s with the dead, {quiet_rate:.0}/s without"
    );
    assert!(loaded_latency.p99 < STALL, "live latency {loaded_latency}");
    assert!(
        other_loaded_rate >= other_quiet_rate * 0.5 && other_loaded.p99 < STALL,
        "the other topic's subscriber: {other_loaded_rate:.0}/s with the dead, \
         {other_quiet_rate:.0}/s without, latency {other_loaded}"
    );
    assert!(
        dropped > 0,
        "full queues of the dead dropped messages, counted"
    );
    // Bounded by the queue limits: per dead session, its queue of 1 KiB messages with room
    // for their overhead, plus its write buffer and the publisher's read buffer its
    // messages may pin (issue 9, defect 4); at this rate, unbounded queues would take
    // 1 MiB a second per session.
    let budget_kib = dead as u64 * (max_queued * 5 / 4 + 128) + 8 * 1024;
    let growth = second_half.max(first_half).saturating_sub(rss_before_dead);
    assert!(
        growth <= budget_kib,
        "RSS grew {growth} KiB with {dead} dead subscribers (budget {budget_kib} KiB)"
    );
    drop(midge);
}

/// Issue 9, "a memory budget": the dead-consumer scenario with `[limits] max_memory`
/// (`MIDGE_STRESS_BUDGET_MIB`, 8 MiB in CI) and the default queue limit of 1,000 messages
/// per session, which alone would let each dead subscriber hold about 1 MiB. Once the count
/// reaches the budget the broker drops QoS 0 to the queues that are behind (counted as
/// `$SYS/broker/publish/messages/dropped/memory`) and refuses new connections; the live
/// subscriber keeps receiving; RSS stays near the budget plus what each connection holds
/// outside it (its kernel socket buffer, not counted); when the dead go, pressure ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_consumers_under_a_memory_budget_stay_within_it() {
    let _serial = SERIAL.lock().await;
    let dead = env_or("MIDGE_STRESS_DEAD", 100) as usize;
    let rate = env_or("MIDGE_STRESS_FANOUT_RATE", 1000);
    let budget_mib = env_or("MIDGE_STRESS_BUDGET_MIB", 8);
    let phase = match env_or("MIDGE_STRESS_DEAD_PHASE_SECS", 0) {
        0 => scenario_duration() / 2,
        secs => Duration::from_secs(secs),
    };
    let dir = TestDir::new("stress-budget");
    let midge = start_broker_with(
        &dir,
        true,
        &format!(
            "[limits]\nmax_memory = \"{budget_mib}MiB\"\n{}[mqtt]\nmax_queued_messages = 1000\n",
            dead_send_buffer()
        ),
    )
    .await;
    let (port, pid) = (midge.port, midge.pid().expect("running"));
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));

    // `$SYS` as it changes: the latest value of each topic, and the highest memory count.
    let (mut sys, _) = support::connect(port, &support::connect_v311("sys-reader", true)).await;
    support::subscribe_and_wait(&mut sys, false, "$SYS/broker/#", 0).await;
    let sys_latest: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let sys_reader = {
        let (latest, stop) = (sys_latest.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Some(p)) = sys.recv_within(Duration::from_millis(100)).await
                    && p.kind() == 3
                {
                    let publish = p.publish(false);
                    let value = String::from_utf8_lossy(&publish.payload).into_owned();
                    latest.lock().unwrap().insert(publish.topic, value);
                }
            }
        })
    };
    let sys_now = |topic: &str| -> u64 {
        sys_latest
            .lock()
            .unwrap()
            .get(topic)
            .and_then(|v| v.parse().ok())
            .unwrap_or_default()
    };

    // The live subscriber and the fan-out publisher, as in the scenario without a budget.
    let (mut live, _) = support::connect(port, &support::connect_v311("live", true)).await;
    support::subscribe_and_wait(&mut live, false, "fan/t", 0).await;
    let (arrivals, reader) = spawn_live_reader(live, epoch, stop.clone());
    let sent = Arc::new(AtomicU64::new(0));
    let publisher = {
        let sent = sent.clone();
        spawn_fan_publisher(port, epoch, rate, stop.clone(), move |n| {
            sent.fetch_add(n, Ordering::Relaxed);
        })
        .await
    };
    let guard = watchdog(port, stop.clone());
    let sampler = sample_rss(pid, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = midge.rss_kib();

    // The dead: clean sessions subscribed to the fan-out that never read after CONNACK.
    // Once the budget is reached, the later ones are refused (0x03): that is the policy.
    let mut holders = Vec::with_capacity(dead);
    let mut refused = 0usize;
    for chunk in (0..dead).collect::<Vec<_>>().chunks(50) {
        let connects = chunk.iter().map(|&d| async move {
            let (stream, code) = connect_dead(port, d, true).await;
            (code == 0).then_some(stream)
        });
        for held in futures_join_all(connects).await {
            match held {
                Some(stream) => holders.push(stream),
                None => refused += 1,
            }
        }
    }
    let loaded_from = Instant::now();
    let sent_from = sent.load(Ordering::Relaxed);
    tokio::time::sleep(phase).await;
    let loaded_to = Instant::now();
    let sent_in_phase = sent.load(Ordering::Relaxed) - sent_from;
    // Two `$SYS` intervals, so the figures cover the phase.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let used_max = sys_now("$SYS/broker/memory/maximum");
    let uncounted = sys_now("$SYS/broker/memory/uncounted");
    let dropped_memory = sys_now("$SYS/broker/publish/messages/dropped/memory");
    let dropped = sys_now("$SYS/broker/publish/messages/dropped");
    let refused_memory = sys_now("$SYS/broker/connections/refused/memory");
    let rss_loaded = midge.rss_kib();

    // The dead go (clean sessions end with their connections): pressure ends.
    let dead_connected = holders.len();
    drop(holders);
    let recovered_from = Instant::now();
    let deadline = recovered_from + Duration::from_secs(10);
    while sys_now("$SYS/broker/memory/pressure") != 0 || sys_now("$SYS/broker/memory/used") == 0 {
        assert!(
            Instant::now() < deadline,
            "memory pressure did not end after the dead consumers left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered_in = recovered_from.elapsed();
    stop.store(true, Ordering::Relaxed);
    let watch = watched(guard).await;
    publisher.await.expect("publisher");
    match reader.await {
        Ok(()) => {}
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
    sys_reader.await.expect("sys reader");
    let rss = sampler.await.expect("sampler");
    let rss_max = rss
        .iter()
        .filter(|(t, _)| *t >= loaded_from && *t < loaded_to)
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let arrived = arrived_between(&arrivals, loaded_from, loaded_to);
    let secs = (loaded_to - loaded_from).as_secs_f64();
    let (sent_rate, live_rate) = (sent_in_phase as f64 / secs, arrived.len() as f64 / secs);
    let latency = Spread::of(arrived);
    let growth = rss_max.max(rss_loaded).saturating_sub(rss_before);
    eprintln!(
        "dead consumers under a memory budget: max_memory {budget_mib} MiB, {dead} subscribers \
         that never read ({dead_connected} connected, {refused} refused at CONNECT), {rate} msg/s \
         of 1 KiB QoS 0 fan-out, max_queued_messages 1000; memory max {:.1} MiB (of which measured, at \
         the end: {:.1} MiB); RSS \
         {:.1} MiB before, max {:.1} MiB with the dead ({:.1} MiB at the end of their phase); \
         dropped ($SYS) {dropped}, of which memory {dropped_memory}; connections refused for \
         memory {refused_memory}; live subscriber {live_rate:.0} received/s of {sent_rate:.0} \
         sent/s, latency {latency}; pressure ended {recovered_in:?} after the dead left; \
         watchdog slowest round {:?}",
        used_max as f64 / 1048576.0,
        uncounted as f64 / 1048576.0,
        mib(rss_before),
        mib(rss_max),
        mib(rss_loaded),
        watch.slowest,
    );
    let budget_kib = budget_mib * 1024;
    assert!(
        dropped_memory > 0,
        "the budget was reached and QoS 0 dropped"
    );
    assert!(
        live_rate >= sent_rate * 0.5,
        "the live subscriber kept {live_rate:.0}/s of {sent_rate:.0}/s"
    );
    assert!(latency.p99 < STALL, "live latency {latency}");
    // Counted: the budget, plus what was queued before each dead queue was behind (64 KiB)
    // and its write buffer (up to 64 KiB and a message, in a buffer of up to twice that).
    let counted_bound = budget_kib + dead as u64 * 200;
    assert!(
        used_max / 1024 <= counted_bound,
        "counted {used_max} bytes, bound {counted_bound} KiB"
    );
    // RSS: the binary measures its resident memory, so what the count leaves out (tasks,
    // sessions, allocator slack) is held to the budget too. A tenth and 1 MiB more for
    // what grows between the broker's samples and this test's. Without the budget each
    // dead queue grows to 1,000 messages (1 MiB).
    let rss_bound = budget_kib + budget_kib / 10 + 1024;
    assert!(
        growth <= rss_bound,
        "RSS grew {growth} KiB with {dead} dead subscribers (bound {rss_bound} KiB)"
    );
    drop(midge);
}

/// Runs futures to completion concurrently, in order (no extra crate for `join_all`).
async fn futures_join_all<
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<T> {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        match handle.await {
            Ok(v) => out.push(v),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

/// Slowloris counts.
#[derive(Default)]
struct SlowCounts {
    opened: AtomicU64,
    /// Sockets the broker closed before their CONNECT was complete.
    closed: AtomicU64,
    /// Refused at once (closed before the first byte of CONNECT could be sent).
    refused: AtomicU64,
    /// Closed sockets' lifetimes in milliseconds, longest.
    longest_ms: AtomicU64,
}

/// A slowloris socket from `source`, again and again until `stop`: sends `hello` (a
/// CONNECT, or the start of a TLS ClientHello) one byte a second and counts when the
/// broker closes it.
async fn slowloris(
    port: u16,
    source: Ipv4Addr,
    hello: Vec<u8>,
    stop: Arc<AtomicBool>,
    counts: Arc<SlowCounts>,
) {
    let connect = hello;
    while !stop.load(Ordering::Relaxed) {
        let mut stream = match connect_from(source, port, None).await {
            Ok(stream) => stream,
            // A refusal is a reset, which can arrive before the connect returns.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                counts.opened.fetch_add(1, Ordering::Relaxed);
                counts.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        counts.opened.fetch_add(1, Ordering::Relaxed);
        let opened = Instant::now();
        let mut probe = [0u8; 16];
        let mut closed = false;
        for byte in &connect {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if stream.write_all(std::slice::from_ref(byte)).await.is_err() {
                closed = true;
                break;
            }
            // A second between bytes, watching for the broker's close meanwhile.
            match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut probe)).await {
                Ok(Ok(0) | Err(_)) => {
                    closed = true;
                    break;
                }
                Ok(Ok(_)) => panic!("the broker answered an incomplete CONNECT or ClientHello"),
                Err(_) => {}
            }
        }
        assert!(
            closed,
            "a CONNECT or ClientHello trickled over {} s was let through",
            connect.len()
        );
        let lived = opened.elapsed();
        if lived < Duration::from_millis(500) {
            counts.refused.fetch_add(1, Ordering::Relaxed);
            // A slowloris holds sockets rather than spinning: try again a second later.
            tokio::time::sleep(Duration::from_secs(1)).await;
        } else {
            counts.closed.fetch_add(1, Ordering::Relaxed);
            let ms = u64::try_from(lived.as_millis()).unwrap_or(u64::MAX);
            counts.longest_ms.fetch_max(ms, Ordering::Relaxed);
        }
    }
}

/// The start of a TLS ClientHello that never completes: a handshake record announcing 512
/// bytes, then the ClientHello's header and version, then padding.
fn partial_client_hello() -> Vec<u8> {
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, // record: handshake, TLS 1.0 framing, 512 bytes
        0x01, 0x00, 0x01, 0xFC, // handshake: ClientHello, 508 bytes
        0x03, 0x03, // client version TLS 1.2
    ];
    hello.resize(24, 0x2A); // the start of the client random
    hello
}

/// Issue 9, "connection floods and slowloris" (scaled down for CI: bursts of 500 connects
/// four times a second from 8 addresses, 100 slowloris sockets on the MQTT port from 2
/// addresses and 100 half-open TLS handshakes on a TLS port from 2 more;
/// `MIDGE_STRESS_BURST` and `MIDGE_STRESS_SLOWLORIS` scale it): with `[limits]` per address
/// and a 2 s CONNECT deadline (which also bounds the TLS handshake), refusals are counted
/// by reason, every slowloris and half-open TLS socket is closed at its deadline, open
/// files come back, and a connected client's PINGREQ latency stays low.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_flood_and_slowloris_spare_connected_clients() {
    let _serial = SERIAL.lock().await;
    let burst = env_or("MIDGE_STRESS_BURST", 500) as usize;
    let slow = env_or("MIDGE_STRESS_SLOWLORIS", 100) as usize;
    let duration = scenario_duration();
    let connect_timeout = 2u64;
    let dir = TestDir::new("stress-flood");
    // A second listener with TLS, for the half-open handshakes.
    let tls_port = support::free_port();
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("certificate");
    let (cert, key) = (dir.0.join("server.crt"), dir.0.join("server.key"));
    std::fs::write(&cert, certified.cert.pem()).expect("write certificate");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    let midge = start_broker_with(
        &dir,
        true,
        &format!(
            "[mqtt]\nconnect_timeout_secs = {connect_timeout}\n\n[limits]\n\
             connections_per_ip = 32\nconnect_rate_per_ip = 100\nconnect_burst_per_ip = 50\n\n\
             [[listener]]\nbind = \"127.0.0.1:{tls_port}\"\n[listener.tls]\ncert = \"{}\"\n\
             key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .await;
    let port = midge.port;

    // Quiet: the watchdog alone (from 127.0.0.1, which nothing below uses).
    let stop = Arc::new(AtomicBool::new(false));
    let every = Duration::from_millis(20);
    let quiet_guard = watchdog_on_own_thread(port, stop.clone(), every);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let quiet = Spread::of(watched(quiet_guard).await.pings);
    let (rss_start, fds_start) = (midge.rss_kib(), midge.open_fds());

    let stop = Arc::new(AtomicBool::new(false));
    let pid = midge.pid().expect("running");
    let sampler = sample_rss(pid, stop.clone());
    let cpu_from = support::cpu_secs_of(pid);
    let guard = watchdog_on_own_thread(port, stop.clone(), every);
    // Slowloris from 127.0.0.10 and .11: more than connections_per_ip from each.
    let slow_counts = Arc::new(SlowCounts::default());
    let mut slow_tasks: Vec<_> = (0..slow)
        .map(|n| {
            let source = Ipv4Addr::new(127, 0, 0, 10 + (n % 2) as u8);
            let hello = support::connect_v311(&format!("slow-{n}"), true);
            tokio::spawn(slowloris(
                port,
                source,
                hello,
                stop.clone(),
                slow_counts.clone(),
            ))
        })
        .collect();
    // Half-open TLS handshakes from 127.0.0.12 and .13.
    let tls_counts = Arc::new(SlowCounts::default());
    slow_tasks.extend((0..slow).map(|n| {
        let source = Ipv4Addr::new(127, 0, 0, 12 + (n % 2) as u8);
        tokio::spawn(slowloris(
            tls_port,
            source,
            partial_client_hello(),
            stop.clone(),
            tls_counts.clone(),
        ))
    }));
    // Bursts from 127.0.0.2 to .9, split over child processes (see `FLOOD_PER_PROCESS`).
    let flood = spawn_flood_processes(port, burst, duration);
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let cpu = (support::cpu_secs_of(pid) - cpu_from) / duration.as_secs_f64();
    let watch = watched(guard).await;
    let flood = flood.await;
    for task in slow_tasks {
        match tokio::time::timeout(support::TIMEOUT, task).await {
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            _ => {}
        }
    }
    let rss_peak = sampler
        .await
        .expect("sampler")
        .iter()
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    // Everything the flood opened is closed by now or within the CONNECT deadline.
    tokio::time::sleep(Duration::from_secs(connect_timeout + 1)).await;
    let sys = sys_values(port).await;
    let (rss_end, fds_end) = (midge.rss_kib(), midge.open_fds());
    let per_ip = sys_counter(&sys, "$SYS/broker/connections/refused/per_ip");
    let by_rate = sys_counter(&sys, "$SYS/broker/connections/refused/rate");
    let timeouts = sys_counter(&sys, "$SYS/broker/connections/pre_connect/dropped/timeout");
    let pre_connect_max = sys_counter(&sys, "$SYS/broker/connections/pre_connect/bytes/maximum");
    let flooded = Spread::of(watch.pings);
    let c = |n: &AtomicU64| n.load(Ordering::Relaxed);
    eprintln!(
        "flood: {} connects in bursts of {burst} from 8 addresses over {duration:?} ({} \
         connected, {} reset by a refusal before the connect returned, {} failed otherwise, \
         from {} processes); refused at accept: {per_ip} per_ip, {by_rate} rate; \
         slowloris: {} sockets opened from 2 addresses, {} closed at the {connect_timeout} s \
         CONNECT deadline (longest lived {} ms), {} refused at once, {timeouts} CONNECT \
         timeouts counted ($SYS), pre-CONNECT buffers at most {pre_connect_max} bytes; \
         half-open TLS: {} \
         opened from 2 addresses, {} closed at the deadline (longest lived {} ms), {} \
         refused at once; RSS {:.1} MiB before, \
         {:.1} peak, {:.1} after; open files {fds_start} -> {fds_end}; broker CPU {:.0} % of \
         a core; connected client's \
         PINGREQ quiet {quiet}, under flood {flooded} (p99 x{:.1}); watchdog slowest round {:?}",
        flood.attempts,
        flood.connected,
        flood.reset,
        flood.failed,
        flood.processes,
        c(&slow_counts.opened),
        c(&slow_counts.closed),
        c(&slow_counts.longest_ms),
        c(&slow_counts.refused),
        c(&tls_counts.opened),
        c(&tls_counts.closed),
        c(&tls_counts.longest_ms),
        c(&tls_counts.refused),
        mib(rss_start),
        mib(rss_peak),
        mib(rss_end),
        cpu * 100.0,
        flooded.p99.as_secs_f64() / quiet.p99.as_secs_f64().max(1e-6),
        watch.slowest,
    );
    assert!(
        per_ip > 0 && by_rate > 0,
        "both limits refused, counted by reason"
    );
    // Every connect of the flood reached the broker: one that failed in the client (out
    // of descriptors, say) would make the flood smaller than it claims.
    assert_eq!(
        flood.failed, 0,
        "flood connects that failed other than by a refusal"
    );
    assert!(
        timeouts >= c(&slow_counts.closed),
        "every slowloris socket closed at the deadline is counted ({timeouts})"
    );
    for (what, counts) in [("slowloris", &slow_counts), ("half-open TLS", &tls_counts)] {
        assert!(
            c(&counts.closed) > 0,
            "{what} sockets were closed at the deadline"
        );
        assert!(
            c(&counts.longest_ms) < (connect_timeout + 2) * 1000,
            "no {what} socket outlived the deadline by much"
        );
    }
    // The flood starts the broker's accept thread, whose tokio runtime holds four
    // descriptors for the rest of the process's life (two epoll, an eventfd, a socket):
    // the same four after any number of floods.
    const ACCEPT_THREAD_FDS: usize = 4;
    assert!(
        fds_end <= fds_start + 2 + ACCEPT_THREAD_FDS,
        "open files back to {fds_start} (now {fds_end})"
    );
    // Generous for a debug build on a shared machine; RELIABILITY.md has the figures.
    assert!(
        flooded.p99 < Duration::from_millis(500),
        "connected client's PINGREQ under flood: {flooded}"
    );
    drop(midge);
}

/// Connects of one burst a flood process makes at most: each is a descriptor until it
/// completes, and one process may not have more than the container's hard limit (20,000
/// here, which the broker's side of the sockets does not share). A burst of 20,000 is
/// two processes of 10,000, started together.
const FLOOD_PER_PROCESS: usize = 10_000;

/// What the flood's connects came to, summed over its processes.
#[derive(Debug, Default)]
struct FloodCounts {
    processes: usize,
    attempts: u64,
    connected: u64,
    reset: u64,
    failed: u64,
}

/// Runs the flood (`flood_bursts`) for `duration` in child processes of this test binary
/// (`flood_child_process`), each making its share of every burst, and sums their counts.
fn spawn_flood_processes(
    port: u16,
    burst: usize,
    duration: Duration,
) -> impl std::future::Future<Output = FloodCounts> {
    let processes = burst.div_ceil(FLOOD_PER_PROCESS).max(1);
    let exe = std::env::current_exe().expect("test binary");
    let children: Vec<_> = (0..processes)
        .map(|n| {
            let share = burst / processes + usize::from(n < burst % processes);
            tokio::process::Command::new(&exe)
                .args([
                    "flood_child_process",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(
                    FLOOD_CHILD_ENV,
                    format!("{port} {share} {}", duration.as_millis()),
                )
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .expect("start a flood process")
        })
        .collect();
    async move {
        let mut counts = FloodCounts {
            processes,
            ..FloodCounts::default()
        };
        for child in children {
            let output = child.wait_with_output().await.expect("flood process");
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(output.status.success(), "flood process failed: {stdout}");
            let line = stdout
                .lines()
                // libtest writes the test's name on the same line first.
                .find_map(|l| l.split_once(FLOOD_CHILD_REPORT).map(|(_, counts)| counts))
                .unwrap_or_else(|| panic!("no counts from a flood process: {stdout}"));
            let n: Vec<u64> = line
                .split_whitespace()
                .map(|x| x.parse().expect("a count"))
                .collect();
            counts.attempts += n[0];
            counts.connected += n[1];
            counts.reset += n[2];
            counts.failed += n[3];
        }
        counts
    }
}

/// `port burst milliseconds` for a flood process.
const FLOOD_CHILD_ENV: &str = "MIDGE_STRESS_FLOOD_CHILD";
/// The line a flood process reports its counts on: attempts, connected, reset, failed.
const FLOOD_CHILD_REPORT: &str = "flood-counts: ";

/// One process of the connection flood, started by `spawn_flood_processes` (not a test of
/// its own: it fails when run without its instructions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a process of connection_flood_and_slowloris_spare_connected_clients"]
async fn flood_child_process() {
    let spec = std::env::var(FLOOD_CHILD_ENV)
        .expect("started by connection_flood_and_slowloris_spare_connected_clients");
    let n: Vec<u64> = spec
        .split_whitespace()
        .map(|x| x.parse().expect("a number"))
        .collect();
    let (port, burst, duration) = (n[0] as u16, n[1] as usize, Duration::from_millis(n[2]));
    let counts = flood_bursts(port, burst, duration).await;
    println!(
        "{FLOOD_CHILD_REPORT}{} {} {} {}",
        counts.attempts, counts.connected, counts.reset, counts.failed
    );
}

/// Bursts of `burst` TCP connects four times a second for `duration`, each burst from one
/// of 127.0.0.2 to .9 in turn: each socket is closed as soon as it connects, or is reset
/// by a refusal.
async fn flood_bursts(port: u16, burst: usize, duration: Duration) -> FloodCounts {
    /// How one connect ended.
    enum Outcome {
        Connected,
        Reset,
        /// A SYN the kernel dropped under the flood, retried past `STALL`: the flood's
        /// doing.
        TimedOut,
        /// Anything else is the client's failure.
        Failed(std::io::Error),
    }
    let mut counts = FloodCounts {
        processes: 1,
        ..FloodCounts::default()
    };
    let end = Instant::now() + duration;
    let mut round = 0u8;
    while Instant::now() < end {
        let started = Instant::now();
        let source = Ipv4Addr::new(127, 0, 0, 2 + round % 8);
        round = round.wrapping_add(1);
        let connects = (0..burst).map(|_| async move {
            match tokio::time::timeout(STALL, connect_from(source, port, None)).await {
                // Closed at once: dropped here, not when the whole burst is done.
                Ok(Ok(_stream)) => Outcome::Connected,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Outcome::Reset,
                Ok(Err(e)) => Outcome::Failed(e),
                Err(_) => Outcome::TimedOut,
            }
        });
        for outcome in futures_join_all(connects).await {
            counts.attempts += 1;
            match outcome {
                Outcome::Connected => counts.connected += 1,
                Outcome::Reset => counts.reset += 1,
                Outcome::TimedOut => {}
                Outcome::Failed(e) => {
                    if counts.failed == 0 {
                        eprintln!("flood connect failed: {e}");
                    }
                    counts.failed += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250).saturating_sub(started.elapsed())).await;
    }
    counts
}

// ---- long soak ----

use bytes::Bytes;
use midge_client::midge_proto::{
    ConnectProperties, Disconnect, ProtocolVersion, Publish, PublishProperties, QoS,
    SubscribeProperties, SubscriptionOptions, Will, WillProperties,
};
use midge_client::{Client, ConnectOptions, Transport};

/// Retained topics the churner sets, replaces and deletes (`soak/retained/N`).
const SOAK_RETAINED_TOPICS: u64 = 200;
/// Session expiry of the short-lived MQTT 5 sessions, in seconds: short enough that
/// expiry fires many times in a run.
const SOAK_SHORT_EXPIRY: u32 = 2;
/// Persistent sessions that stay subscribed to their own `soak/keep/N` and must get every
/// message published there.
const SOAK_KEEPERS: usize = 4;

/// What the soak's clients did, shared by its tasks.
#[derive(Default)]
struct SoakCounts {
    /// Publications acknowledged (QoS 1 and 2) or sent (QoS 0), by QoS.
    published: [AtomicU64; 3],
    /// Messages the steady `soak/data/#` and `$share` subscribers received.
    received: AtomicU64,
    shared_received: AtomicU64,
    /// Sessions the reconnect loops opened, and of those resumed (session present).
    sessions: AtomicU64,
    resumed: AtomicU64,
    /// Connections dropped without DISCONNECT while carrying a will, and wills received.
    wills_armed: AtomicU64,
    wills_received: AtomicU64,
    /// Retained messages set (with a payload) and deleted (empty payload).
    retained_set: AtomicU64,
    retained_deleted: AtomicU64,
    /// Snapshots of `soak/retained/#` taken by the loops, and retained messages in them.
    retained_snapshots: AtomicU64,
    retained_received: AtomicU64,
    /// Errors in the reconnect loops (they reconnect), by what failed.
    loop_errors: Mutex<HashMap<String, u64>>,
    /// Keep sessions that came back without their session (must stay 0).
    keep_not_resumed: AtomicU64,
}

impl SoakCounts {
    fn error(&self, what: &str, e: &midge_client::Error) {
        let key = format!("{what}: {e}");
        // Messages may carry ids; the kind is what the summary needs.
        let key: String = key.chars().take(60).collect();
        *self
            .loop_errors
            .lock()
            .expect("counts lock")
            .entry(key)
            .or_default() += 1;
    }
}

fn soak_options(
    version: ProtocolVersion,
    client_id: &str,
    clean: bool,
    session_expiry: Option<u32>,
) -> ConnectOptions {
    let mut options = ConnectOptions::new(version, client_id);
    options.connect.clean_start = clean;
    options.connect.properties = ConnectProperties {
        session_expiry_interval: session_expiry,
        ..ConnectProperties::default()
    };
    options
}

async fn soak_connect(port: u16, options: ConnectOptions) -> Result<Client, midge_client::Error> {
    Client::connect(&Transport::tcp("127.0.0.1", port), options).await
}

fn soak_publish(
    topic: String,
    qos: QoS,
    retain: bool,
    payload: Vec<u8>,
    expiry: Option<u32>,
) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic,
        packet_id: 0,
        properties: PublishProperties {
            message_expiry_interval: expiry,
            ..PublishProperties::default()
        },
        payload: Bytes::from(payload),
    }
}

async fn soak_subscribe(
    client: &mut Client,
    filter: &str,
    qos: QoS,
) -> Result<(), midge_client::Error> {
    let options = SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    };
    let codes = client
        .subscribe(
            vec![(filter.to_owned(), options)],
            SubscribeProperties::default(),
        )
        .await?;
    assert!(
        codes.iter().all(|c| !c.is_error()),
        "SUBSCRIBE {filter} refused: {codes:?}"
    );
    Ok(())
}

fn qos_of(n: u64) -> QoS {
    match n % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Receives until `until` (or an error), counting into `counter`; returns what it got.
async fn soak_receive(
    client: &mut Client,
    until: Instant,
    counter: &AtomicU64,
) -> Result<(), midge_client::Error> {
    loop {
        match tokio::time::timeout_at(until, client.recv()).await {
            Err(_) => return Ok(()),
            Ok(Ok(_)) => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// A publisher to `soak/data/{p}/{k}`: `rate` messages a second, QoS 0, 1 and 2 in turn,
/// payloads of 64 to 575 bytes; an MQTT 5 publisher gives every fourth message a 3 s
/// message expiry. Every publication waits for its acknowledgement flow.
async fn soak_publisher(
    port: u16,
    p: u64,
    rate: u64,
    stop: Arc<AtomicBool>,
    counts: Arc<SoakCounts>,
) {
    let version = if p.is_multiple_of(2) {
        ProtocolVersion::V311
    } else {
        ProtocolVersion::V5
    };
    let mut client = soak_connect(
        port,
        soak_options(version, &format!("soak-pub-{p}"), true, None),
    )
    .await
    .expect("publisher connects");
    let mut rng = Lcg(p + 17);
    let mut tick =
        tokio::time::interval(Duration::from_secs(1) / u32::try_from(rate.max(1)).expect("rate"));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let qos = qos_of(n);
        let expiry = (version == ProtocolVersion::V5 && n.is_multiple_of(4)).then_some(3);
        let mut payload = format!("{p}-{n}-").into_bytes();
        payload.resize(64 + rng.below(512) as usize, b'.');
        let topic = format!("soak/data/{p}/{}", rng.below(20));
        client
            .publish(soak_publish(topic, qos, false, payload, expiry))
            .await
            .expect("the broker acknowledges every publication");
        counts.published[qos as usize].fetch_add(1, Ordering::Relaxed);
        n += 1;
    }
    let _ = client.disconnect(Disconnect::default()).await;
}

/// A subscriber that stays connected, reading `filter` until `stop`.
async fn soak_steady_subscriber(
    port: u16,
    client_id: String,
    version: ProtocolVersion,
    filter: &'static str,
    qos: QoS,
    stop: Arc<AtomicBool>,
    counter: Arc<SoakCounts>,
) {
    let mut client = soak_connect(port, soak_options(version, &client_id, true, None))
        .await
        .expect("steady subscriber connects");
    soak_subscribe(&mut client, filter, qos)
        .await
        .expect("SUBACK");
    let count = if filter.starts_with("$share/") {
        &counter.shared_received
    } else {
        &counter.received
    };
    while !stop.load(Ordering::Relaxed) {
        let until = Instant::now() + Duration::from_millis(200);
        soak_receive(&mut client, until, count)
            .await
            .unwrap_or_else(|e| panic!("{client_id} lost its connection: {e}"));
    }
    let _ = client.disconnect(Disconnect::default()).await;
}

/// Publishes sequenced messages to each `soak/keep/{i}` (QoS 1 and 2 in turn), `rate` a
/// second over all keepers, until `stop`; returns the sequence numbers acknowledged, per
/// keeper.
async fn soak_keep_publisher(port: u16, rate: u64, stop: Arc<AtomicBool>) -> Vec<Vec<u64>> {
    let mut client = soak_connect(
        port,
        soak_options(ProtocolVersion::V5, "soak-keep-pub", true, None),
    )
    .await
    .expect("keep publisher connects");
    let mut acked = vec![Vec::new(); SOAK_KEEPERS];
    let mut tick =
        tokio::time::interval(Duration::from_secs(1) / u32::try_from(rate.max(1)).expect("rate"));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let i = (seq % SOAK_KEEPERS as u64) as usize;
        let qos = if seq.is_multiple_of(2) {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        client
            .publish(soak_publish(
                format!("soak/keep/{i}"),
                qos,
                false,
                seq.to_be_bytes().to_vec(),
                None,
            ))
            .await
            .expect("keep publication acknowledged");
        acked[i].push(seq);
        seq += 1;
    }
    let _ = client.disconnect(Disconnect::default()).await;
    acked
}

fn keep_options(i: usize) -> ConnectOptions {
    // Even keepers are MQTT 3.1.1 (clean session 0), odd ones MQTT 5 with an hour's expiry.
    if i.is_multiple_of(2) {
        soak_options(
            ProtocolVersion::V311,
            &format!("soak-keep-{i}"),
            false,
            None,
        )
    } else {
        soak_options(
            ProtocolVersion::V5,
            &format!("soak-keep-{i}"),
            false,
            Some(3600),
        )
    }
}

fn keep_seq(publish: &Publish) -> u64 {
    u64::from_be_bytes(
        publish.payload[..8]
            .try_into()
            .expect("an 8-byte sequence number"),
    )
}

/// A persistent session that stays subscribed to `soak/keep/{i}` while its connection
/// comes and goes: connected for 1 to 5 s, then DISCONNECT or a dropped socket, offline for
/// up to a second, resumed. Returns the sequence numbers received and the duplicates.
async fn soak_keeper(
    port: u16,
    i: usize,
    stop: Arc<AtomicBool>,
    counts: Arc<SoakCounts>,
) -> (HashSet<u64>, u64) {
    let mut rng = Lcg(1000 + i as u64);
    let mut client = soak_connect(port, keep_options(i))
        .await
        .expect("keeper connects");
    let qos = if i.is_multiple_of(2) {
        QoS::AtLeastOnce
    } else {
        QoS::ExactlyOnce
    };
    soak_subscribe(&mut client, &format!("soak/keep/{i}"), qos)
        .await
        .expect("SUBACK");
    let (mut got, mut duplicates) = (HashSet::new(), 0u64);
    loop {
        let until = Instant::now() + Duration::from_millis(1000 + rng.below(4000));
        loop {
            match tokio::time::timeout_at(until, client.recv()).await {
                Err(_) => break,
                Ok(Ok(publish)) => {
                    if !got.insert(keep_seq(&publish)) {
                        duplicates += 1;
                    }
                }
                Ok(Err(e)) => panic!("keeper {i} lost its connection: {e}"),
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        if stop.load(Ordering::Relaxed) || rng.below(2) == 0 {
            client
                .disconnect(Disconnect::default())
                .await
                .expect("keeper DISCONNECT");
        } else {
            drop(client);
        }
        if stop.load(Ordering::Relaxed) {
            return (got, duplicates);
        }
        tokio::time::sleep(Duration::from_millis(rng.below(1000))).await;
        client = soak_connect(port, keep_options(i))
            .await
            .expect("keeper reconnects");
        if !client.connack().session_present {
            counts.keep_not_resumed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A client that connects, does a little and leaves, again and again, in one of six ways
/// chosen at random: MQTT 3.1.1 clean with a new id; 3.1.1 persistent under its own id;
/// MQTT 5 with a new id and a 2 s session expiry (which must then expire); MQTT 5 under its
/// own id with a 3 s expiry, offline for 0 to 5 s (expired or resumed); a will, fired by
/// dropping the socket (retained or not, MQTT 5 ones delayed 1 s); a snapshot of the
/// retained topics.
async fn soak_reconnector(port: u16, t: u64, stop: Arc<AtomicBool>, counts: Arc<SoakCounts>) {
    let mut rng = Lcg(5000 + t);
    let mut n = 0u64;
    let sink = AtomicU64::new(0);
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let kind = rng.below(6);
        let stay = Instant::now() + Duration::from_millis(200 + rng.below(1800));
        let (options, filter, will) = match kind {
            0 => (
                soak_options(
                    ProtocolVersion::V311,
                    &format!("soak-loop-{t}-{n}"),
                    true,
                    None,
                ),
                format!("soak/data/{}/#", rng.below(4)),
                false,
            ),
            1 => (
                soak_options(
                    ProtocolVersion::V311,
                    &format!("soak-loop3-{t}"),
                    false,
                    None,
                ),
                // A resumed session subscribes again to the same filter, as devices do.
                format!("soak/data/+/{}", t % 20),
                false,
            ),
            2 => (
                soak_options(
                    ProtocolVersion::V5,
                    &format!("soak-loop-{t}-{n}"),
                    true,
                    Some(SOAK_SHORT_EXPIRY),
                ),
                if rng.below(2) == 0 {
                    format!("$share/loop{}/soak/data/#", rng.below(3))
                } else {
                    format!("soak/data/{}/+", rng.below(4))
                },
                false,
            ),
            3 => (
                soak_options(
                    ProtocolVersion::V5,
                    &format!("soak-loop5-{t}"),
                    false,
                    Some(3),
                ),
                format!("soak/data/{}/{}", t % 4, t % 20),
                false,
            ),
            4 => {
                let v5 = rng.below(2) == 0;
                let version = if v5 {
                    ProtocolVersion::V5
                } else {
                    ProtocolVersion::V311
                };
                let mut options = soak_options(
                    version,
                    &format!("soak-will-{t}-{n}"),
                    true,
                    v5.then_some(SOAK_SHORT_EXPIRY),
                );
                options.connect.will = Some(Will {
                    topic: format!("soak/will/{t}"),
                    payload: Bytes::from(format!("gone {t}-{n}")),
                    qos: QoS::AtLeastOnce,
                    retain: rng.below(2) == 0,
                    properties: WillProperties {
                        will_delay_interval: v5.then_some(1),
                        ..WillProperties::default()
                    },
                });
                (options, format!("soak/data/{}/0", rng.below(4)), true)
            }
            _ => (
                soak_options(
                    ProtocolVersion::V5,
                    &format!("soak-snap-{t}-{n}"),
                    true,
                    None,
                ),
                "soak/retained/#".to_owned(),
                false,
            ),
        };
        let mut client = match soak_connect(port, options).await {
            Ok(client) => client,
            Err(e) => {
                counts.error("connect", &e);
                continue;
            }
        };
        counts.sessions.fetch_add(1, Ordering::Relaxed);
        if client.connack().session_present {
            counts.resumed.fetch_add(1, Ordering::Relaxed);
        }
        let qos = qos_of(rng.below(3));
        if let Err(e) = soak_subscribe(&mut client, &filter, qos).await {
            counts.error("subscribe", &e);
            continue;
        }
        let result = if kind == 5 {
            // Retained messages arrive right after SUBACK, then the churner's new ones:
            // stop at the first quiet 300 ms or when the stay is over.
            counts.retained_snapshots.fetch_add(1, Ordering::Relaxed);
            let mut result = Ok(());
            while let Ok(received) = tokio::time::timeout_at(
                stay.min(Instant::now() + Duration::from_millis(300)),
                client.recv(),
            )
            .await
            {
                match received {
                    Ok(_) => {
                        counts.retained_received.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            result
        } else {
            soak_receive(&mut client, stay, &sink).await
        };
        if let Err(e) = result {
            counts.error("receive", &e);
            continue;
        }
        // Wills fire on a dropped socket; the others end either way.
        if will {
            counts.wills_armed.fetch_add(1, Ordering::Relaxed);
            drop(client);
        } else if rng.below(3) == 0 {
            drop(client);
        } else if let Err(e) = client.disconnect(Disconnect::default()).await {
            counts.error("disconnect", &e);
        }
        // Kind 3 stays away for 0 to 5 s: its 3 s session expires or is resumed.
        let away = if kind == 3 {
            rng.below(5000)
        } else {
            rng.below(200)
        };
        tokio::time::sleep(Duration::from_millis(away)).await;
    }
}

/// Sets, replaces and deletes retained messages on `soak/retained/N` at `rate` a second:
/// three in five set (QoS 0 to 2, 10 to 2,009 bytes), one in five sets one with a 2 s
/// message expiry, one in five deletes.
async fn soak_retainer(port: u16, rate: u64, stop: Arc<AtomicBool>, counts: Arc<SoakCounts>) {
    let mut client = soak_connect(
        port,
        soak_options(ProtocolVersion::V5, "soak-retainer", true, None),
    )
    .await
    .expect("retainer connects");
    let mut rng = Lcg(77);
    let mut tick =
        tokio::time::interval(Duration::from_secs(1) / u32::try_from(rate.max(1)).expect("rate"));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let topic = format!("soak/retained/{}", rng.below(SOAK_RETAINED_TOPICS));
        let action = rng.below(5);
        let (payload, expiry) = match action {
            0..=2 => (vec![b'r'; 10 + rng.below(2000) as usize], None),
            3 => (vec![b'e'; 10 + rng.below(200) as usize], Some(2)),
            _ => (Vec::new(), None),
        };
        let deleted = payload.is_empty();
        client
            .publish(soak_publish(
                topic,
                qos_of(rng.below(3)),
                true,
                payload,
                expiry,
            ))
            .await
            .expect("retained publication acknowledged");
        if deleted {
            counts.retained_deleted.fetch_add(1, Ordering::Relaxed);
        } else {
            counts.retained_set.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = client.disconnect(Disconnect::default()).await;
}

/// A persistent subscriber of everything under `soak/data/` that reads 256 bytes every
/// 100 ms through a 4 KiB receive buffer and never acknowledges: its in-flight window and
/// then its queue fill, and the broker drops (and counts) what does not fit.
async fn soak_slow_consumer(port: u16, i: usize, stop: Arc<AtomicBool>) {
    let mut stream = connect_from(Ipv4Addr::LOCALHOST, port, Some(4096))
        .await
        .expect("slow consumer connects");
    let id = format!("soak-slow-{i}");
    stream
        .write_all(&support::connect_v311(&id, false))
        .await
        .expect("send CONNECT");
    stream
        .write_all(&support::subscribe(false, 1, "soak/data/#", 1))
        .await
        .expect("send SUBSCRIBE");
    let mut buf = [0u8; 256];
    let mut last_ping = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // Slow, not silent: within the 60 s keep-alive (the PINGRESP waits in line).
        if last_ping.elapsed() > Duration::from_secs(20) {
            stream.write_all(&support::PINGREQ).await.expect("PINGREQ");
            last_ping = Instant::now();
        }
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => panic!("{id} was disconnected"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Counts every will published to `soak/will/#`.
async fn soak_will_watcher(port: u16, stop: Arc<AtomicBool>, counts: Arc<SoakCounts>) {
    let mut client = soak_connect(
        port,
        soak_options(ProtocolVersion::V5, "soak-will-watch", true, None),
    )
    .await
    .expect("will watcher connects");
    soak_subscribe(&mut client, "soak/will/#", QoS::AtLeastOnce)
        .await
        .expect("SUBACK");
    while !stop.load(Ordering::Relaxed) {
        let until = Instant::now() + Duration::from_millis(200);
        soak_receive(&mut client, until, &counts.wills_received)
            .await
            .expect("will watcher stays connected");
    }
    // Retained wills arrive again at SUBSCRIBE only, so none is counted twice.
    let _ = client.disconnect(Disconnect::default()).await;
}

/// A process's anonymous resident memory in KiB (`RssAnon`): RSS without the pages of the
/// binary, which grow as code runs for the first time (a debug binary is over 200 MiB).
fn rss_anon_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Samples a process's RSS and anonymous RSS (KiB) and open files every `every` until
/// `stop`.
fn sample_process(
    pid: u32,
    stop: Arc<AtomicBool>,
    every: Duration,
) -> tokio::task::JoinHandle<Vec<(Instant, u64, u64, usize)>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
            let (rss, anon) = (support::rss_kib_of(pid), rss_anon_kib_of(pid));
            // A line a minute, so a long run shows its course while it runs.
            if samples.len() % 60 == 59 {
                eprintln!(
                    "soak progress: {} s, RSS {:.1} MiB (anonymous {:.1}), open files {fds}",
                    samples.len() + 1,
                    mib(rss),
                    mib(anon)
                );
            }
            samples.push((Instant::now(), rss, anon, fds));
            tokio::time::sleep(every).await;
        }
        samples
    })
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// The broker's Prometheus samples (`name{labels}` and value) from its admin listener.
async fn metrics(admin_port: u16) -> Vec<(String, u64)> {
    let mut stream = TcpStream::connect(("127.0.0.1", admin_port))
        .await
        .expect("admin connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .expect("GET /metrics");
    let mut text = String::new();
    tokio::time::timeout(support::TIMEOUT, stream.read_to_string(&mut text))
        .await
        .expect("metrics in time")
        .expect("read metrics");
    text.lines()
        .filter(|l| l.starts_with("midge_"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// `midge_messages_dropped` by reason.
fn dropped_by_reason(samples: &[(String, u64)]) -> Vec<(String, u64)> {
    samples
        .iter()
        .filter(|(series, _)| series.starts_with("midge_messages_dropped"))
        .filter_map(|(series, value)| {
            let reason = series.split("reason=\"").nth(1)?.split('"').next()?;
            Some((reason.to_owned(), *value))
        })
        .collect()
}

/// What the broker holds: its gauges of connections, sessions, subscriptions, retained,
/// queued and in-flight messages, and stored bytes.
fn holdings(samples: &[(String, u64)]) -> Vec<(&'static str, u64)> {
    const GAUGES: [&str; 7] = [
        "connections",
        "sessions",
        "subscriptions",
        "retained_messages",
        "queued_messages",
        "inflight_messages",
        "store_bytes",
    ];
    GAUGES
        .into_iter()
        .map(|name| {
            let full = format!("midge_{name}");
            let total = samples
                .iter()
                .filter(|(series, _)| *series == full || series.starts_with(&format!("{full}{{")))
                .map(|s| s.1)
                .sum();
            (name, total)
        })
        .collect()
}

fn held(holdings: &[(&str, u64)], name: &str) -> u64 {
    holdings.iter().find(|(n, _)| *n == name).map_or(0, |h| h.1)
}

fn show_holdings(holdings: &[(&str, u64)]) -> String {
    holdings
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Issue 9, "long soak": mixed load for `MIDGE_STRESS_SOAK_SECS` (CI: 30 s in debug;
/// `scripts/stress.sh`: 30 minutes in release) — publishers over QoS 0, 1 and 2, steady
/// normal and `$share` subscribers, clients that reconnect in a loop (clean and persistent
/// 3.1.1 and 5 sessions, short session expiry that fires, message expiry), retained
/// messages set, replaced and deleted over a bounded topic set, wills firing, and slow
/// consumers at their queue limits. RSS stays flat after the warm-up (first 20 %),
/// open files come back once everyone has left, persistent sessions that stay subscribed
/// lose no QoS 1 or 2 message, and the broker answers throughout (watchdog).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_soak_keeps_memory_flat_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let duration = Duration::from_secs(env_or("MIDGE_STRESS_SOAK_SECS", 30));
    let publishers = env_or("MIDGE_STRESS_SOAK_PUBLISHERS", 4);
    let rate = env_or("MIDGE_STRESS_SOAK_RATE", 50);
    let reconnectors = env_or("MIDGE_STRESS_SOAK_RECONNECTORS", 12);
    let slow = env_or("MIDGE_STRESS_SOAK_SLOW", 3) as usize;
    let retain_rate = env_or("MIDGE_STRESS_SOAK_RETAIN_RATE", 50);
    // The issue's 5 % needs a run past its warm-up: in the 30 s debug run the persistent
    // sessions' queues are still filling and RSS still rises (+9 to +14 % measured, see
    // RELIABILITY.md), so CI allows 20 % and checks what the broker holds instead.
    let rss_bound_pct = env_or(
        "MIDGE_STRESS_SOAK_RSS_PCT",
        if cfg!(debug_assertions) { 20 } else { 5 },
    );
    // Room for the `$SYS` reader's retained topics at SUBSCRIBE.
    let max_queued = env_or("MIDGE_STRESS_SOAK_MAX_QUEUED", 200);
    let dir = TestDir::new("stress-soak");
    let admin_port = support::free_port();
    let midge = start_broker_with(
        &dir,
        true,
        &format!(
            "[mqtt]\nmax_queued_messages = {max_queued}\n\n[admin]\nbind = \"127.0.0.1:{admin_port}\"\n"
        ),
    )
    .await;
    let port = midge.port;
    let pid = midge.pid().expect("running");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_start, fds_start) = (midge.rss_kib(), midge.open_fds());

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(SoakCounts::default());
    let sampler = sample_process(pid, stop.clone(), Duration::from_secs(1));
    let cpu_from = support::cpu_secs_of(pid);
    let started = Instant::now();
    let guard = watchdog(port, stop.clone());

    let watcher = tokio::spawn(soak_will_watcher(port, stop.clone(), counts.clone()));
    let mut steady = Vec::new();
    for s in 0..2u64 {
        let version = if s == 0 {
            ProtocolVersion::V311
        } else {
            ProtocolVersion::V5
        };
        steady.push(tokio::spawn(soak_steady_subscriber(
            port,
            format!("soak-all-{s}"),
            version,
            "soak/data/#",
            qos_of(s + 1),
            stop.clone(),
            counts.clone(),
        )));
    }
    for s in 0..4u64 {
        let version = if s.is_multiple_of(2) {
            ProtocolVersion::V311
        } else {
            ProtocolVersion::V5
        };
        steady.push(tokio::spawn(soak_steady_subscriber(
            port,
            format!("soak-share-{s}"),
            version,
            "$share/soak/soak/data/#",
            qos_of(s),
            stop.clone(),
            counts.clone(),
        )));
    }
    let keepers: Vec<_> = (0..SOAK_KEEPERS)
        .map(|i| tokio::spawn(soak_keeper(port, i, stop.clone(), counts.clone())))
        .collect();
    let slow_tasks: Vec<_> = (0..slow)
        .map(|i| tokio::spawn(soak_slow_consumer(port, i, stop.clone())))
        .collect();
    // Subscribers first, so the first publications find them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let keep_publisher = tokio::spawn(soak_keep_publisher(port, 40, stop.clone()));
    let mut load: Vec<_> = (0..publishers)
        .map(|p| tokio::spawn(soak_publisher(port, p, rate, stop.clone(), counts.clone())))
        .collect();
    if retain_rate > 0 {
        load.push(tokio::spawn(soak_retainer(
            port,
            retain_rate,
            stop.clone(),
            counts.clone(),
        )));
    }
    load.extend(
        (0..reconnectors)
            .map(|t| tokio::spawn(soak_reconnector(port, t, stop.clone(), counts.clone()))),
    );

    // What the broker holds at the end of the warm-up and at the end of the load: the
    // same holdings and a higher RSS would be a leak, not state.
    tokio::time::sleep((duration / 5).saturating_sub(started.elapsed())).await;
    let held_after_warmup = holdings(&metrics(admin_port).await);
    tokio::time::sleep(duration.saturating_sub(started.elapsed())).await;
    let held_at_end = holdings(&metrics(admin_port).await);
    // The figures while the load is still on: RSS at the end of the run, $SYS, drops.
    let loaded_for = started.elapsed();
    let cpu = (support::cpu_secs_of(pid) - cpu_from) / loaded_for.as_secs_f64();
    let rss_loaded_end = midge.rss_kib();
    stop.store(true, Ordering::Relaxed);
    let watch = watched(guard).await;
    let acked = match keep_publisher.await {
        Ok(acked) => acked,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    for task in load.into_iter().chain(steady).chain([watcher]) {
        match tokio::time::timeout(support::TIMEOUT, task).await {
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(_) => {}
            Err(_) => panic!("a soak client did not finish within {:?}", support::TIMEOUT),
        }
    }
    let mut kept = Vec::new();
    for task in keepers {
        match task.await {
            Ok(k) => kept.push(k),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    for task in slow_tasks {
        match task.await {
            Ok(()) => {}
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    let samples = sampler.await.expect("sampler");

    // Every acknowledged keep message: each keeper's session, resumed once more, delivers
    // what its connections had not received yet, and is then replaced by a clean session.
    let (mut lost, mut duplicates, mut delivered) = (0usize, 0u64, 0usize);
    for (i, (mut got, dups)) in kept.into_iter().enumerate() {
        duplicates += dups;
        let mut client = soak_connect(port, keep_options(i))
            .await
            .expect("keeper resumes");
        assert!(
            client.connack().session_present,
            "keeper {i}'s session survived"
        );
        let deadline = Instant::now() + support::TIMEOUT;
        while acked[i].iter().any(|s| !got.contains(s)) {
            match tokio::time::timeout_at(deadline, client.recv()).await {
                Ok(Ok(publish)) => {
                    if !got.insert(keep_seq(&publish)) {
                        duplicates += 1;
                    }
                }
                Ok(Err(e)) => panic!("keeper {i} while draining: {e}"),
                Err(_) => break,
            }
        }
        delivered += acked[i].iter().filter(|s| got.contains(s)).count();
        lost += acked[i].iter().filter(|s| !got.contains(s)).count();
        client
            .disconnect(Disconnect::default())
            .await
            .expect("DISCONNECT");
        let mut options = keep_options(i);
        options.connect.clean_start = true;
        options.connect.properties.session_expiry_interval = None;
        let clean = soak_connect(port, options).await.expect("clean keeper");
        clean
            .disconnect(Disconnect::default())
            .await
            .expect("DISCONNECT");
    }
    // The slow consumers' sessions are replaced by clean ones too.
    for i in 0..slow {
        let clean = soak_connect(
            port,
            soak_options(ProtocolVersion::V311, &format!("soak-slow-{i}"), true, None),
        )
        .await
        .expect("clean slow consumer");
        clean
            .disconnect(Disconnect::default())
            .await
            .expect("DISCONNECT");
    }
    let keep_total: usize = acked.iter().map(Vec::len).sum();

    // Everyone has left: short sessions expire and delayed wills fire within 2 s; then the
    // counters of at least one more `$SYS` interval.
    tokio::time::sleep(Duration::from_secs(u64::from(SOAK_SHORT_EXPIRY) + 3)).await;
    let sys = sys_values(port).await;
    let after = metrics(admin_port).await;
    let drops = dropped_by_reason(&after);
    let held_after = holdings(&after);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_end, fds_end) = (midge.rss_kib(), midge.open_fds());

    // RSS: median of the tenth of the run right after the warm-up (the first fifth) against
    // the median of the last tenth, which a spike or a trough does not move.
    let window = |from: f64, to: f64, anon: bool| {
        median(
            samples
                .iter()
                .filter(|(t, ..)| {
                    let at = (*t - started).as_secs_f64() / loaded_for.as_secs_f64();
                    at >= from && at < to
                })
                .map(|s| if anon { s.2 } else { s.1 })
                .collect(),
        )
    };
    let after_warmup = window(0.2, 0.3, false);
    let last = window(0.9, 1.0, false);
    let growth_pct = (last as f64 - after_warmup as f64) * 100.0 / after_warmup.max(1) as f64;
    let anon_growth_pct = (window(0.9, 1.0, true) as f64 - window(0.2, 0.3, true) as f64) * 100.0
        / window(0.2, 0.3, true).max(1) as f64;
    let tenths = |anon: bool| {
        (0..10)
            .map(|d| {
                format!(
                    "{:.1}",
                    mib(window(f64::from(d) / 10.0, f64::from(d + 1) / 10.0, anon))
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let fds_loaded: Vec<usize> = samples.iter().map(|s| s.3).collect();
    let rss_peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let published: Vec<u64> = counts
        .published
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .collect();
    let pings = Spread::of(watch.pings);
    let c = |n: &AtomicU64| n.load(Ordering::Relaxed);
    let errors = counts.loop_errors.lock().expect("counts lock").clone();
    eprintln!(
        "soak: {loaded_for:.0?} of mixed load, {publishers} publishers at {rate}/s published \
         QoS 0/1/2 {published:?}; steady subscribers received {} (normal) and {} ($share); \
         reconnect loops: {} sessions ({} resumed), {} wills armed, {} received; retained: {} \
         set, {} deleted, {} snapshots with {} messages, {} retained at the end; keep \
         sessions: {keep_total} QoS 1/2 published, {delivered} delivered, {lost} lost, \
         {duplicates} duplicates, {} reconnects without the session; $SYS: {} publish \
         received, {} sent, {} dropped, {} sessions expired, {} sessions and {} subscriptions \
         left after everyone left; dropped by reason {drops:?}; held after the warm-up \
         [{}], at the end of the load [{}], after everyone left [{}]; \
         loop errors {errors:?}; RSS {:.1} MiB at the start, {:.1} after the warm-up \
         (median), {:.1} in the last tenth (median, {growth_pct:+.1} %), peak {:.1}, {:.1} at \
         the end of the load, {:.1} after everyone left; RSS by tenths of the run (median, \
         MiB) [{}], anonymous [{}] ({anon_growth_pct:+.1} % after the warm-up); open files {fds_start} at the start, {}..{} under load, {fds_end} after; \
         broker CPU {:.0} % of a core; watchdog slowest round {:?}, PINGREQ {pings}",
        c(&counts.received),
        c(&counts.shared_received),
        c(&counts.sessions),
        c(&counts.resumed),
        c(&counts.wills_armed),
        c(&counts.wills_received),
        c(&counts.retained_set),
        c(&counts.retained_deleted),
        c(&counts.retained_snapshots),
        c(&counts.retained_received),
        sys_counter(&sys, "$SYS/broker/retained messages/count"),
        c(&counts.keep_not_resumed),
        sys_counter(&sys, "$SYS/broker/publish/messages/received"),
        sys_counter(&sys, "$SYS/broker/publish/messages/sent"),
        sys_counter(&sys, "$SYS/broker/publish/messages/dropped"),
        sys_counter(&sys, "$SYS/broker/clients/expired"),
        sys_counter(&sys, "$SYS/broker/clients/total"),
        sys_counter(&sys, "$SYS/broker/subscriptions/count"),
        show_holdings(&held_after_warmup),
        show_holdings(&held_at_end),
        show_holdings(&held_after),
        mib(rss_start),
        mib(after_warmup),
        mib(last),
        mib(rss_peak),
        mib(rss_loaded_end),
        mib(rss_end),
        tenths(false),
        tenths(true),
        fds_loaded.iter().min().unwrap_or(&0),
        fds_loaded.iter().max().unwrap_or(&0),
        cpu * 100.0,
        watch.slowest,
    );
    assert_eq!(lost, 0, "QoS 1/2 messages lost to persistent sessions");
    assert!(keep_total > 0, "the keep publisher published");
    assert_eq!(c(&counts.keep_not_resumed), 0, "every keep session resumed");
    assert!(
        published.iter().all(|&n| n > 0),
        "every QoS published ({published:?})"
    );
    assert!(
        c(&counts.received) > 0 && c(&counts.shared_received) > 0,
        "the steady subscribers received"
    );
    assert!(
        sys_counter(&sys, "$SYS/broker/clients/expired") > 0,
        "short sessions expired"
    );
    assert!(c(&counts.wills_received) > 0, "wills fired");
    assert!(
        c(&counts.retained_deleted) > 0 && c(&counts.retained_snapshots) > 0,
        "retained churn"
    );
    // `$SYS` topics are retained too.
    let retained_bound = SOAK_RETAINED_TOPICS + reconnectors + sys.len() as u64;
    assert!(
        sys_counter(&sys, "$SYS/broker/retained messages/count") <= retained_bound,
        "retained messages bounded by the topic set, a will per loop and $SYS ({retained_bound})"
    );
    let queue_drops = drops.iter().find(|(r, _)| r == "queue").map_or(0, |d| d.1);
    assert!(
        queue_drops > 0,
        "slow consumers' full queues dropped, counted ({drops:?})"
    );
    assert!(
        growth_pct < rss_bound_pct as f64,
        "RSS grew {growth_pct:.1} % after the warm-up (bound {rss_bound_pct} %): [{}] MiB by tenths",
        tenths(false)
    );
    assert!(
        fds_end <= fds_start + 2,
        "open files back to {fds_start} (now {fds_end})"
    );
    // Once everyone has left and the short sessions have expired, only the loops' 3.1.1
    // persistent sessions (one id, one filter each) and the last `$SYS` reader may be left,
    // with at most a full queue each: nothing accumulates with the number of sessions run.
    let (sessions, subscriptions, queued) = (
        held(&held_after, "sessions"),
        held(&held_after, "subscriptions"),
        held(&held_after, "queued_messages"),
    );
    assert!(
        sessions <= reconnectors + 1 && subscriptions <= reconnectors + 1,
        "sessions and subscriptions left: [{}]",
        show_holdings(&held_after)
    );
    assert!(
        queued <= sessions * max_queued,
        "queued messages left: [{}]",
        show_holdings(&held_after)
    );
    drop(midge);
}
