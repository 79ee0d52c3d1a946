//! One log line per peer address per interval about failed TLS handshakes, so a client that
//! retries in a loop (or a scanner) cannot flood the log, while an operator still sees
//! every address that fails and why. The lines left out are counted and reported with the
//! address's next line.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Addresses remembered at most; beyond that they share one slot.
const MAX_PEERS: usize = 4096;

#[derive(Debug)]
pub(super) struct LogGuard {
    interval: Duration,
    /// Per address (`None`: the shared overflow slot): when a line was last logged, and the
    /// lines left out since.
    peers: Mutex<HashMap<Option<IpAddr>, (Instant, u64)>>,
}

impl LogGuard {
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            interval,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(left_out)` when a line about `peer` may be logged now, with the number of
    /// lines left out since the last one; `None` when this one is to be left out.
    pub(super) fn admit(&self, peer: Option<IpAddr>, now: Instant) -> Option<u64> {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut key = peer;
        if !peers.contains_key(&key) && peers.len() >= MAX_PEERS {
            peers.retain(|_, (last, _)| now.duration_since(*last) < self.interval);
            if peers.len() >= MAX_PEERS {
                key = None;
            }
        }
        match peers.get_mut(&key) {
            Some((last, left_out)) if now.duration_since(*last) < self.interval => {
                *left_out += 1;
                None
            }
            Some((last, left_out)) => {
                *last = now;
                Some(std::mem::take(left_out))
            }
            None => {
                peers.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_peer_per_interval_with_the_count_left_out() {
        let guard = LogGuard::new(Duration::from_secs(60));
        let start = Instant::now();
        let a = Some(IpAddr::from([192, 0, 2, 1]));
        let b = Some(IpAddr::from([192, 0, 2, 2]));
        assert_eq!(guard.admit(a, start), Some(0));
        assert_eq!(guard.admit(a, start + Duration::from_secs(1)), None);
        assert_eq!(guard.admit(a, start + Duration::from_secs(2)), None);
        // Another address is not held back by the first.
        assert_eq!(guard.admit(b, start + Duration::from_secs(2)), Some(0));
        assert_eq!(guard.admit(a, start + Duration::from_secs(61)), Some(2));
        assert_eq!(guard.admit(a, start + Duration::from_secs(62)), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let guard = LogGuard::new(Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..MAX_PEERS as u32 {
            assert_eq!(
                guard.admit(Some(IpAddr::from(i.to_be_bytes())), now),
                Some(0)
            );
        }
        let late = Some(IpAddr::from([203, 0, 113, 1]));
        // The overflow slot logs once, then holds back the rest.
        assert_eq!(guard.admit(late, now), Some(0));
        assert_eq!(guard.admit(Some(IpAddr::from([203, 0, 113, 2])), now), None);
        assert!(guard.peers.lock().unwrap().len() <= MAX_PEERS + 1);
    }
}
