//! Starting a broker for a test, and talking to it with raw bytes.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use midge_broker::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every wait in these tests is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A broker on a free loopback port, shut down when the test ends.
pub struct TestBroker {
    pub server: Option<Server>,
    pub addr: SocketAddr,
}

impl TestBroker {
    /// A broker with the default configuration, `$SYS` off, on a free port.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A broker with the configuration adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::default();
        config.listeners[0].bind = "127.0.0.1:0".parse().unwrap();
        config.sys.interval_secs = 0;
        // Many brokers run in this one process: none may share the default ./data store.
        config.storage.backend = midge_broker::config::StorageBackend::Memory;
        adjust(&mut config);
        let server = Server::start(config).await.expect("broker starts");
        let addr = server.local_addrs()[0];
        Self {
            server: Some(server),
            addr,
        }
    }

    pub fn broker(&self) -> &std::sync::Arc<midge_broker::Broker> {
        self.server.as_ref().unwrap().broker()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// A raw TCP connection.
    pub async fn raw(&self) -> Raw {
        Raw {
            stream: TcpStream::connect(self.addr).await.expect("connect"),
        }
    }
}

/// A TCP connection that sends and expects exact bytes.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads exactly `n` bytes.
    pub async fn recv(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        tokio::time::timeout(TIMEOUT, self.stream.read_exact(&mut buf))
            .await
            .expect("timed out waiting for bytes")
            .expect("read");
        buf
    }

    /// Reads one whole MQTT packet (fixed header and body) as bytes.
    pub async fn recv_packet(&mut self) -> Vec<u8> {
        let mut packet = self.recv(1).await;
        let mut multiplier = 1usize;
        let mut length = 0usize;
        loop {
            let byte = self.recv(1).await[0];
            packet.push(byte);
            length += usize::from(byte & 0x7F) * multiplier;
            multiplier *= 128;
            if byte & 0x80 == 0 {
                break;
            }
        }
        packet.extend(self.recv(length).await);
        packet
    }

    /// Waits for the broker to close the connection, returning whatever it sent first.
    pub async fn recv_until_closed(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        let result = tokio::time::timeout(TIMEOUT, self.stream.read_to_end(&mut all)).await;
        assert!(
            result.is_ok(),
            "connection not closed within {TIMEOUT:?}; got {all:02X?}"
        );
        all
    }
}

/// A v3.1.1 CONNECT with clean session and keep alive 60.
pub fn connect_v311(client_id: &str) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C];
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// A v5 CONNECT with clean start, keep alive 60 and no properties.
pub fn connect_v5(client_id: &str) -> Vec<u8> {
    let mut body = vec![
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x00,
    ];
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// v3.1.1 CONNACK: accepted, no session present.
pub const CONNACK_V311_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
