//! Limits per client address (`[limits]`), applied when a connection is accepted: before a
//! byte is read and before any TLS or WebSocket handshake. A refused socket is reset at
//! once without an answer, and counted by reason.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::harness::{CONNACK_V311_OK, Raw, TIMEOUT, TestBroker, connect_v311};
use crate::ws::ws_listener;

/// Writes, ignoring an error: the broker may have closed a refused socket already, and
/// what it did is read next.
async fn send_unchecked(raw: &mut Raw, bytes: &[u8]) {
    let _ = raw.stream.write_all(bytes).await;
}

/// Far below `connect_timeout_secs` (set to 120 below): a socket closed within this was
/// closed by a refusal, not by the CONNECT deadline.
const AT_ONCE: Duration = Duration::from_secs(5);

/// Connects to `addr` from 127.0.0.1, sends `bytes` and expects the broker's refusal: a
/// reset, without an answer, within [`AT_ONCE`]. The reset can end the connect itself, the
/// write, or the first read, whichever comes after it arrives.
async fn expect_refused(addr: SocketAddr, bytes: &[u8]) {
    let reset = |e: std::io::Error| {
        assert!(
            matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
            "expected a reset, got {e}"
        );
    };
    let mut stream = match TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(e) => return reset(e),
    };
    if let Err(e) = stream.write_all(bytes).await {
        return reset(e);
    }
    let mut byte = [0u8; 1];
    match tokio::time::timeout(AT_ONCE, stream.read(&mut byte)).await {
        Ok(Err(e)) => reset(e),
        Ok(Ok(0)) => panic!("an end of stream instead of a reset"),
        Ok(Ok(_)) => panic!("an answer from a refused connection: {byte:02X?}"),
        Err(_) => panic!("not refused within {AT_ONCE:?}"),
    }
}

#[tokio::test]
async fn connections_per_ip_counts_silent_sockets_and_refuses_at_once() {
    let broker = TestBroker::start_with(|c| {
        c.limits.connections_per_ip = 3;
        c.mqtt.connect_timeout_secs = 120;
    })
    .await;
    // Two silent sockets (a slowloris holds them without sending CONNECT) and one client.
    let silent_a = broker.raw().await;
    let _silent_b = broker.raw().await;
    let (mut client, _) = broker.raw_v311("one", true).await;

    // The fourth from 127.0.0.1 is reset without a word, though it sends a valid CONNECT.
    expect_refused(broker.addr, &connect_v311("four")).await;
    let stats = broker.stats();
    assert_eq!(stats.connections_refused_per_ip, 1);
    assert_eq!(stats.connections_refused_rate, 0);
    assert_eq!(stats.connections_accepted, 3);
    client.ping_fence().await;

    // When one of the three closes, its place is free again (the release follows the
    // close by a moment, so a refused try is retried, boundedly).
    drop(silent_a);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok(stream) = TcpStream::connect(broker.addr).await {
            let mut again = Raw { stream };
            send_unchecked(&mut again, &connect_v311("again")).await;
            let mut ack = [0u8; 4];
            if let Ok(Ok(_)) =
                tokio::time::timeout(TIMEOUT, again.stream.read_exact(&mut ack)).await
            {
                assert_eq!(ack, CONNACK_V311_OK);
                break;
            }
        }
        assert!(Instant::now() < deadline, "no place after a socket closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn the_limit_applies_before_the_websocket_handshake() {
    let broker = TestBroker::start_with(|c| {
        c.listeners = vec![ws_listener(&[])];
        c.limits.connections_per_ip = 1;
        c.mqtt.connect_timeout_secs = 120;
    })
    .await;
    // One socket that never starts its upgrade holds the address's only place.
    let _holder = broker.raw().await;
    // No HTTP answer at all: the socket was never handed to the handshake.
    expect_refused(
        broker.addr,
        b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n",
    )
    .await;
    let stats = broker.stats();
    assert_eq!(stats.connections_refused_per_ip, 1);
    assert_eq!(stats.handshakes_failed, 0, "no handshake was attempted");
    broker.shutdown().await;
}

#[tokio::test]
async fn connect_rate_per_ip_is_a_token_bucket() {
    let broker = TestBroker::start_with(|c| {
        c.limits.connect_rate_per_ip = 1;
        c.limits.connect_burst_per_ip = 2;
        c.limits.connections_per_ip = 0;
    })
    .await;
    let started = Instant::now();
    let (mut admitted, mut refused) = (Vec::new(), 0u64);
    for n in 0..6 {
        // A refusal is a reset, which may end the connect itself.
        let Ok(stream) = TcpStream::connect(broker.addr).await else {
            refused += 1;
            continue;
        };
        let mut raw = Raw { stream };
        send_unchecked(&mut raw, &connect_v311(&format!("c{n}"))).await;
        let mut ack = [0u8; 4];
        match tokio::time::timeout(TIMEOUT, raw.stream.read_exact(&mut ack)).await {
            Ok(Ok(_)) => {
                assert_eq!(ack, CONNACK_V311_OK);
                admitted.push(raw);
            }
            Ok(Err(_)) => refused += 1,
            Err(_) => panic!("neither CONNACK nor close within {TIMEOUT:?}"),
        }
    }
    // The burst of two, plus one per second that passed (slow machines take longer).
    let earned = 2 + started.elapsed().as_secs() as usize;
    assert!(admitted.len() >= 2, "the burst is admitted");
    assert!(admitted.len() <= earned, "{} admitted", admitted.len());
    assert!(refused >= 1);
    assert_eq!(broker.stats().connections_refused_rate, refused);
    assert_eq!(broker.stats().connections_refused_per_ip, 0);
    // Connections admitted are not disturbed by the refusals.
    for raw in &mut admitted {
        raw.ping_fence().await;
    }
    broker.shutdown().await;
}

/// A refusal is a connect flood: the listener accepts on a thread of its own (counted in
/// `connect_floods`) until a second passes without another refusal, and the connections
/// the limits let in meanwhile are handed over and served as usual.
#[tokio::test]
async fn a_refusal_starts_a_connect_flood_that_ends_after_a_quiet_second() {
    let broker = TestBroker::start_with(|c| {
        c.limits.connections_per_ip = 1;
        c.mqtt.connect_timeout_secs = 120;
    })
    .await;
    // 127.0.0.1's one place.
    let _holder = broker.raw().await;
    assert_eq!(broker.stats().connect_floods, 0);
    expect_refused(broker.addr, &[]).await;
    assert_eq!(
        broker.stats().connect_floods,
        1,
        "the refusal started a flood"
    );
    // A second refusal at once is the same flood.
    expect_refused(broker.addr, &[]).await;
    assert_eq!(broker.stats().connect_floods, 1, "still the same flood");

    // Another address is admitted during the flood, handed over and served.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().expect("address"))
        .expect("bind 127.0.0.2");
    let mut other = Raw {
        stream: socket.connect(broker.addr).await.expect("connect"),
    };
    other.send(&connect_v311("other-address")).await;
    assert_eq!(other.recv(4).await, CONNACK_V311_OK);
    other.ping_fence().await;

    // A quiet second ends the flood, so the next refusal starts another.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    expect_refused(broker.addr, &[]).await;
    let stats = broker.stats();
    assert_eq!(
        stats.connect_floods, 2,
        "a new flood after the quiet second"
    );
    assert_eq!(stats.connections_refused_per_ip, 3);
    assert_eq!(stats.connections_accepted, 2);
    broker.shutdown().await;
}

/// Sockets of the broker's side on `port` (127.0.0.1) that its close left behind, from
/// `/proc/net/tcp`: FIN_WAIT1/2, TIME_WAIT, CLOSING, LAST_ACK.
pub fn closing_sockets_on(port: u16) -> usize {
    let local = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .expect("/proc/net/tcp")
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&local.as_str())
                && matches!(fields.get(3), Some(&("04" | "05" | "06" | "0B" | "09")))
        })
        .count()
}

/// A refused connection is reset, not closed with a FIN: the side that closes first keeps
/// a connection in TIME_WAIT for a minute, so every refusal of a flood would cost the
/// broker's machine a TIME_WAIT entry (9,220 after 5 s of 2,000 refused connects a second).
#[tokio::test]
async fn a_refused_connection_is_reset_and_leaves_no_time_wait_behind() {
    let broker = TestBroker::start_with(|c| {
        c.limits.connections_per_ip = 1;
        c.mqtt.connect_timeout_secs = 120;
    })
    .await;
    let _holder = broker.raw().await;
    for _ in 0..20 {
        expect_refused(broker.addr, &[]).await;
    }
    assert_eq!(broker.stats().connections_refused_per_ip, 20);
    // With a FIN the entries appear as soon as the clients' own FINs arrive (when they
    // closed, above); give loopback a moment all the same.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(closing_sockets_on(broker.port()), 0);
    broker.shutdown().await;
}

/// A socket that sends no CONNECT within `connect_timeout_secs` is closed by the broker
/// first, so it too is reset rather than left in TIME_WAIT: a slowloris that cycles its
/// sockets through the deadline would otherwise pile the entries up.
#[tokio::test]
async fn a_socket_silent_past_the_connect_deadline_leaves_no_time_wait_behind() {
    let broker = TestBroker::start_with(|c| {
        c.mqtt.connect_timeout_secs = 1;
    })
    .await;
    let started = Instant::now();
    let mut silent: Vec<Raw> = Vec::new();
    for _ in 0..5 {
        silent.push(broker.raw().await);
    }
    for raw in &mut silent {
        // An end of stream or a reset, whichever the client reads first.
        assert!(raw.recv_until_closed().await.is_empty(), "no answer");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed at the deadline"
    );
    drop(silent);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(closing_sockets_on(broker.port()), 0);
    broker.shutdown().await;
}
