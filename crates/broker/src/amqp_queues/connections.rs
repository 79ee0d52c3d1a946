//! Open AMQP connections, for the admin API's client list and the `$SYS` counts: each
//! connection registers itself once open and leaves when it ends. Byte counters are
//! atomics the connection bumps; nothing else is kept for it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// One open connection as the admin API shows it.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// The id ACL rules see (`amqp-<n>`), also its name in the client list.
    pub client_id: Arc<str>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener it connected to.
    pub listener: String,
    /// The user it logged in as.
    pub username: Option<String>,
    /// When connection.open completed, in milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
    /// Heartbeat interval in force, seconds (0: none).
    pub heartbeat: u16,
    /// Bytes received on it.
    pub bytes_received: AtomicU64,
    /// Bytes sent on it.
    pub bytes_sent: AtomicU64,
    /// Channels open.
    pub channels: AtomicU64,
}

/// The open connections, by connection number.
#[derive(Debug, Default)]
pub struct Connections {
    map: Mutex<BTreeMap<u64, Arc<ConnectionInfo>>>,
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<ConnectionInfo>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection is open.
    pub fn add(&self, id: u64, info: Arc<ConnectionInfo>) {
        self.lock().insert(id, info);
    }

    /// A connection ended.
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every open connection, by client id.
    pub fn all(&self) -> Vec<Arc<ConnectionInfo>> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        all
    }
}

impl ConnectionInfo {
    /// The connection as the admin API lists a client: a session's entry (an AMQP
    /// connection has no session) with its connection's details.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "client_id": &*self.client_id,
            "name": &*self.client_id,
            "protocol": "amqp",
            "online": true,
            "messages": null,
            "messages_ready": 0,
            "messages_unacknowledged": null,
            "consumers": 1,
            "subscriptions": 0,
            "expires_at_ms": null,
            "connection": {
                "address": self.peer.to_string(),
                "listener": self.listener,
                "protocol": "amqp",
                "username": self.username,
                "keep_alive": self.heartbeat,
                "connected_at_ms": self.connected_at_ms,
                "bytes_received": Self::get(&self.bytes_received),
                "bytes_sent": Self::get(&self.bytes_sent),
                "dropped": 0,
                "channels": Self::get(&self.channels),
            },
        })
    }

    /// Adds to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u64) -> Arc<ConnectionInfo> {
        Arc::new(ConnectionInfo {
            client_id: Arc::from(format!("amqp-{id}")),
            peer: "127.0.0.1:1".parse().unwrap(),
            listener: "amqp".into(),
            username: None,
            connected_at_ms: 0,
            heartbeat: 0,
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            channels: AtomicU64::new(0),
        })
    }

    /// Connections come and go from many threads at once; the table ends consistent.
    #[test]
    fn concurrent_adds_and_removes_leave_exactly_the_survivors() {
        let table = Arc::new(Connections::default());
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let table = table.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let id = t * 1000 + i;
                        table.add(id, info(id));
                        let _ = table.all();
                        if i % 2 == 0 {
                            table.remove(id);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(table.len(), 8 * 250);
        assert!(
            table
                .all()
                .iter()
                .all(|c| c.client_id.ends_with(|d: char| "13579".contains(d)))
        );
    }
}
