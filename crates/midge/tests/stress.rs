//! Stress scenarios against the real binary, run with more worker threads than cores so
//! lock-order cycles show up as a broker that stops answering.
//!
//! Each scenario runs for `MIDGE_STRESS_SECS` seconds (default 6, the CI variant); the long
//! variant is `MIDGE_STRESS_SECS=300 cargo test --release -p midge --test stress`.
//! A watchdog opens a fresh connection every 100 ms and pings an existing one; any answer
//! slower than `STALL` fails the scenario, naming what stalled.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::{Midge, TestDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::Instant;

/// An answer slower than this counts as a stall. Far above any honest answer from a debug
/// build under this load (milliseconds), far below "never".
const STALL: Duration = Duration::from_secs(3);

fn scenario_duration() -> Duration {
    let secs = std::env::var("MIDGE_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    Duration::from_secs(secs)
}

async fn start_broker(dir: &TestDir) -> Midge {
    let mut midge = Midge::new(dir, "none");
    // Eight workers on a two-core machine: the default on an eight-core host, and enough
    // threads to sit in every position of a lock cycle at once.
    midge.env.push(("TOKIO_WORKER_THREADS".into(), "8".into()));
    midge.start(&[]).await;
    midge
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
    let mut connack = [0u8; 4];
    tokio::time::timeout(support::TIMEOUT, stream.read_exact(&mut connack))
        .await
        .expect("CONNACK in time")
        .expect("read CONNACK");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK for {client_id}");
    let (mut read, write) = stream.into_split();
    tokio::spawn(async move {
        let mut sink = vec![0u8; 64 * 1024];
        while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    write
}

/// Fails the test if a new client cannot connect, or an existing one gets no PINGRESP,
/// within [`STALL`], checking every 100 ms until `stop`. Returns the slowest answer.
async fn watchdog(port: u16, stop: Arc<AtomicBool>) -> Duration {
    let (mut pinger, _) =
        support::connect(port, &support::connect_v311("watchdog-ping", true)).await;
    let mut slowest = Duration::ZERO;
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
        pinger.send(&support::PINGREQ).await.expect("send PINGREQ");
        match pinger.recv_within(STALL).await {
            Ok(Some(p)) if p.kind() == 13 => {}
            other => panic!("broker stalled: no PINGRESP within {STALL:?} ({other:?})"),
        }
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    slowest
}

/// Issue 9, defect 1: members of two shared groups, with deliveries queued, leave and
/// rejoin one group in a loop while a publisher floods both groups' topics and another
/// client subscribes and unsubscribes. Before the fix, a member handing its queued `g1`
/// deliveries over held its mailbox lock while waiting for the trie lock, and a publish
/// routing to `g2` held the trie lock while waiting for that mailbox: every worker ended
/// up in `futex_wait` within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_group_churn_under_flood_never_stalls() {
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

    let guard = tokio::spawn(watchdog(port, stop.clone()));
    tokio::time::sleep(scenario_duration()).await;
    stop.store(true, Ordering::Relaxed);
    let slowest = match guard.await {
        Ok(slowest) => slowest,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
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
