//! A client opening connection after connection with garbage cannot flood the log of the
//! real `midge` binary: per address, the first `log.lines_per_peer` lines of a window are
//! logged and the rest summed up in one line once the window is over.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections, each refused at its first byte.
const GARBAGE: usize = 2_000;
/// Open at once: enough for a quick flood, few enough for any open files limit.
const BATCH: usize = 50;

/// Sends an HTTP request (its first byte, 'G', is no CONNECT) and waits for the close.
async fn garbage_connection(port: u16) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    // The broker may close before all of it is written.
    let _ = stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(TIMEOUT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a garbage connection stayed open");
}

/// The lines about closing connections, and the lines left out according to the
/// summaries, in `log`.
fn count(log: &str) -> (usize, u64, usize) {
    let closing = log
        .lines()
        .filter(|l| l.contains("closing connection"))
        .count();
    let mut summarised = 0;
    let mut summaries = 0;
    for line in log.lines() {
        if let Some((before, _)) = line.split_once(" more like this from 127.0.0.1 in the last ") {
            let n = before.rsplit(' ').next().unwrap();
            summarised += n.parse::<u64>().expect("a count before 'more like this'");
            summaries += 1;
        }
    }
    (closing, summarised, summaries)
}

#[tokio::test]
async fn garbage_connections_are_logged_a_few_times_per_window_and_summed_up() {
    let dir = TestDir::new("log-flood");
    let mut midge = Midge::new(&dir, "interval");
    // A short window, so the summary comes within the test.
    let mut config = std::fs::read_to_string(&midge.config).unwrap();
    config.push_str("\n[log]\nlines_per_peer = 5\npeer_window_secs = 2\n");
    std::fs::write(&midge.config, config).unwrap();
    midge.start(&[]).await;

    let started = Instant::now();
    for _ in 0..GARBAGE / BATCH {
        let batch: Vec<_> = (0..BATCH)
            .map(|_| tokio::spawn(garbage_connection(midge.port)))
            .collect();
        for connection in batch {
            connection.await.unwrap();
        }
    }
    let flood = started.elapsed();

    // Every refusal is either logged or counted in a summary, once the last window is
    // over (2 s, and the once-a-second sweep).
    let deadline = Instant::now() + Duration::from_secs(10);
    let (closing, summarised, summaries) = loop {
        let (closing, summarised, summaries) = count(&midge.last_log());
        if closing as u64 + summarised >= GARBAGE as u64 || Instant::now() >= deadline {
            break (closing, summarised, summaries);
        }
        // The log is a file the child writes: polling is the only way to see it grow.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = midge.last_log();
    assert_eq!(
        closing as u64 + summarised,
        GARBAGE as u64,
        "{closing} lines logged and {summarised} summed up:\n{log}"
    );
    assert!(summaries >= 1, "no summary line:\n{log}");
    // 5 lines per 2 s window while the flood lasted, and one summary per window.
    let windows = flood.as_secs() as usize / 2 + 2;
    assert!(
        closing <= 5 * windows && summaries <= windows,
        "{closing} lines and {summaries} summaries in {flood:?}:\n{log}"
    );
    assert!(
        log.lines().count() < 100,
        "{} log lines for {GARBAGE} garbage connections",
        log.lines().count()
    );

    // The broker still serves.
    let mut client = Raw::connect(midge.port).await.unwrap();
    client
        .send(&connect_v311("after-the-flood", true))
        .await
        .unwrap();
    let connack = client.recv().await.unwrap();
    assert_eq!(connack.kind(), 2, "CONNACK");
}
