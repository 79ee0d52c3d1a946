//! What a client costs before CONNECT: a CONNECT larger than `mqtt.max_connect_size` is
//! refused from its fixed header, a first packet that is not CONNECT at once, and all
//! partial CONNECTs together stay within `mqtt.max_pre_connect_bytes`, while ordinary
//! clients still connect.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{CONNACK_V311_OK, TestBroker};

/// Longer than any wait here: a close seen by these tests is the broker refusing, never
/// the connect timeout.
const CONNECT_TIMEOUT_SECS: u64 = 60;

/// A fixed header announcing a CONNECT with `remaining` bytes after it, and the start of
/// its variable header (protocol name "MQTT", level 4).
fn connect_header(remaining: usize) -> Vec<u8> {
    let mut bytes = vec![0x10];
    let mut left = remaining;
    loop {
        let mut byte = (left % 128) as u8;
        left /= 128;
        if left > 0 {
            byte |= 0x80;
        }
        bytes.push(byte);
        if left == 0 {
            break;
        }
    }
    bytes.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04]);
    bytes
}

/// A whole v3.1.1 CONNECT (clean session, keep alive 60) with `client_id`.
fn connect_with_client_id(client_id: &str) -> Vec<u8> {
    let mut bytes = connect_header(10 + 2 + client_id.len());
    bytes.extend_from_slice(&[0x02, 0x00, 0x3C]);
    bytes.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    bytes.extend_from_slice(client_id.as_bytes());
    bytes
}

/// Whether the broker closes `stream` within `wait` (a read or write error counts).
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(wait, stream.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(n)) => panic!("expected no answer before CONNECT, got {:02X?}", &buf[..n]),
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_connect_larger_than_max_connect_size_is_refused_from_its_fixed_header() {
    let broker = TestBroker::start_with(|c| {
        c.mqtt.connect_timeout_secs = CONNECT_TIMEOUT_SECS;
        c.mqtt.max_connect_size = 16 * 1024;
    })
    .await;
    // Within max_packet_size (1 MiB), above max_connect_size: only the header and a few
    // bytes are sent, the broker must not wait for the rest.
    let mut raw = broker.raw().await;
    raw.send(&connect_header(1_000_000)).await;
    assert!(closed_within(&mut raw.stream, Duration::from_secs(5)).await);
    let stats = broker.stats();
    assert_eq!(stats.pre_connect_dropped_too_large, 1);
    assert_eq!(stats.protocol_errors, 1);

    // Just below the cap is fine.
    let mut ok = broker.raw().await;
    let connect = connect_with_client_id(&"x".repeat(16 * 1024 - 15));
    assert_eq!(connect.len(), 16 * 1024);
    ok.send(&connect).await;
    assert_eq!(ok.recv(4).await, CONNACK_V311_OK);
    broker.shutdown().await;
}

#[tokio::test]
async fn many_sockets_sending_half_of_a_1_mb_connect_are_all_closed() {
    // The reproduction from the issue, scaled down: with max_packet_size (1 MiB) as the
    // only limit, each of these made the broker buffer 500 KB until the connect timeout.
    const SOCKETS: usize = 200;
    let broker =
        TestBroker::start_with(|c| c.mqtt.connect_timeout_secs = CONNECT_TIMEOUT_SECS).await;
    let addr = broker.addr;
    let sockets: Vec<_> = (0..SOCKETS)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.expect("connect");
                let mut bytes = connect_header(1_000_000);
                bytes.resize(500_000, b'a');
                // Refused from the fixed header: the rest may meet a closed socket.
                if stream.write_all(&bytes).await.is_err() {
                    return true;
                }
                closed_within(&mut stream, Duration::from_secs(5)).await
            })
        })
        .collect();
    for socket in sockets {
        assert!(socket.await.unwrap(), "a 1 MB CONNECT was not refused");
    }
    let stats = broker.stats();
    assert_eq!(stats.pre_connect_dropped_too_large, SOCKETS as u64);
    // Each was closed after its first read at most.
    let most = (SOCKETS * 64 * 1024) as u64;
    assert!(
        stats.pre_connect_bytes_maximum <= most,
        "pre-CONNECT bytes reached {}",
        stats.pre_connect_bytes_maximum
    );
    let (mut client, _) = broker.raw_v311("ordinary", true).await;
    client.ping_fence().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_first_byte_that_is_not_connect_is_refused_at_once() {
    let broker =
        TestBroker::start_with(|c| c.mqtt.connect_timeout_secs = CONNECT_TIMEOUT_SECS).await;
    // "GET / HTTP/1.1": 'G' is 0x47, a PUBACK fixed header. One byte is enough to refuse.
    let mut raw = broker.raw().await;
    raw.send(b"G").await;
    assert!(closed_within(&mut raw.stream, Duration::from_secs(5)).await);
    assert_eq!(broker.stats().pre_connect_dropped_not_connect, 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn partial_connects_beyond_the_pre_connect_budget_are_closed_and_others_still_connect() {
    const BUDGET: u64 = 1024 * 1024;
    const ATTACKERS: usize = 200;
    // Each announces a 60,000-byte CONNECT (under max_connect_size) and sends half of it.
    const SENT: usize = 30_000;
    let broker = TestBroker::start_with(|c| {
        c.mqtt.connect_timeout_secs = CONNECT_TIMEOUT_SECS;
        c.mqtt.max_connect_size = 64 * 1024;
        c.mqtt.max_pre_connect_bytes = BUDGET;
    })
    .await;
    let addr = broker.addr;
    let mut attackers = Vec::new();
    for _ in 0..ATTACKERS {
        attackers.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let mut bytes = connect_header(60_000);
            bytes.resize(SENT, b'a');
            if stream.write_all(&bytes).await.is_err() {
                return (stream, true);
            }
            let closed = closed_within(&mut stream, Duration::from_secs(2)).await;
            (stream, closed)
        }));
    }
    let mut open = Vec::new();
    let mut closed = 0;
    for attacker in attackers {
        let (stream, was_closed) = attacker.await.unwrap();
        if was_closed {
            closed += 1;
        } else {
            open.push(stream);
        }
    }
    // What the budget holds at most, at SENT bytes (or more, as buffers grow by doubling)
    // per connection; the rest are closed.
    let fit = BUDGET as usize / SENT;
    assert!(
        open.len() <= fit && closed >= ATTACKERS - fit,
        "{} partial CONNECTs stayed open, {closed} closed; the budget holds {fit}",
        open.len()
    );
    let stats = broker.stats();
    assert!(
        stats.pre_connect_bytes_maximum <= BUDGET,
        "pre-CONNECT bytes reached {}",
        stats.pre_connect_bytes_maximum
    );
    assert!(stats.pre_connect_bytes <= BUDGET);
    // Every close seen was the budget's (one after the wait above may come on top).
    assert!(stats.pre_connect_dropped_over_budget >= closed as u64);

    // Meanwhile an ordinary client connects: small CONNECTs keep a share of the budget.
    let (mut client, _) = broker.raw_v311("ordinary", true).await;
    client.ping_fence().await;

    // Closing the partial connections gives their bytes back.
    drop(open);
    broker
        .eventually("pre-CONNECT bytes released", |b| {
            b.stats.snapshot().pre_connect_bytes == 0
        })
        .await;
    broker.shutdown().await;
}
