//! Rate limiting of log lines about refused, malformed and failed connections, per peer
//! address, so a client opening connection after connection with garbage cannot fill the
//! disk. In each window (`log.peer_window_secs`, a minute by default) the first
//! `log.lines_per_peer` lines about an address are logged; the rest are counted and, once
//! the window is over, summed up in one line: "N more like this from ADDR in the last
//! 60 s". IPv6 addresses are grouped by /64, as for failed logins.
//!
//! The table of addresses is bounded (`log.max_tracked_peers`): beyond it, addresses
//! share one window of their own, summed up as "from other addresses". Windows that are
//! over are summed up and forgotten by [`LogLimiter::sweep`] (from the housekeeping
//! task) or at the address's next line, whichever comes first.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::LogConfig;

/// One address's (or the overflow's) current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

impl Window {
    fn new(start: Instant) -> Self {
        Self {
            start,
            logged: 0,
            suppressed: 0,
        }
    }
}

/// Lines left out in one window, to be logged as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// The address (IPv6: its /64), or `None` for the addresses beyond the table's bound.
    pub peer: Option<IpAddr>,
    /// Lines left out.
    pub suppressed: u64,
    /// The window's length.
    pub window: Duration,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let window = self.window.as_secs();
        match self.peer {
            Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => write!(
                f,
                "{} more like this from {v6}/64 in the last {window} s",
                self.suppressed
            ),
            Some(ip) => write!(
                f,
                "{} more like this from {ip} in the last {window} s",
                self.suppressed
            ),
            None => write!(
                f,
                "{} more like this from other addresses in the last {window} s",
                self.suppressed
            ),
        }
    }
}

#[derive(Debug)]
struct State {
    peers: HashMap<IpAddr, Window>,
    /// Shared by addresses that found the table full.
    overflow: Option<Window>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct LogLimiter {
    per_window: u32,
    window: Duration,
    max_peers: usize,
    state: Mutex<State>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(&LogConfig::default())
    }
}

impl LogLimiter {
    /// A limiter from `[log]`.
    pub fn new(config: &LogConfig) -> Self {
        Self {
            per_window: config.lines_per_peer,
            window: Duration::from_secs(config.peer_window_secs.max(1)),
            max_peers: config.max_tracked_peers.max(1),
            state: Mutex::new(State {
                peers: HashMap::new(),
                overflow: None,
            }),
        }
    }

    /// Whether to log a line about `peer` now. Logs the summary of the address's last
    /// window first, if that window is over and left lines out.
    pub fn allow(&self, peer: IpAddr) -> bool {
        let (allowed, summary) = self.check(peer, Instant::now());
        if let Some(summary) = summary {
            tracing::warn!("{summary}");
        }
        allowed
    }

    /// Logs the summaries of the windows that are over, and forgets those addresses.
    pub fn sweep(&self) {
        for summary in self.sweep_at(Instant::now()) {
            tracing::warn!("{summary}");
        }
    }

    /// [`LogLimiter::allow`] at `now`, returning the summary instead of logging it.
    pub fn check(&self, peer: IpAddr, now: Instant) -> (bool, Option<Summary>) {
        if self.per_window == 0 {
            return (true, None);
        }
        let key = crate::model::address_key(peer);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *state;
        let full = state.peers.len() >= self.max_peers;
        let (window, who) = match state.peers.get_mut(&key) {
            Some(window) => (window, Some(key)),
            None if !full => (
                state.peers.entry(key).or_insert_with(|| Window::new(now)),
                Some(key),
            ),
            None => (state.overflow.get_or_insert_with(|| Window::new(now)), None),
        };
        let mut summary = None;
        if now.saturating_duration_since(window.start) >= self.window {
            summary = self.summary(who, window);
            *window = Window::new(now);
        }
        let allowed = window.logged < self.per_window;
        if allowed {
            window.logged += 1;
        } else {
            window.suppressed += 1;
        }
        (allowed, summary)
    }

    /// [`LogLimiter::sweep`] at `now`, returning the summaries instead of logging them.
    pub fn sweep_at(&self, now: Instant) -> Vec<Summary> {
        let mut summaries = Vec::new();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let over = |w: &Window| now.saturating_duration_since(w.start) >= self.window;
        state.peers.retain(|&peer, window| {
            if !over(window) {
                return true;
            }
            summaries.extend(self.summary(Some(peer), window));
            false
        });
        if let Some(window) = state.overflow.take_if(|w| over(w)) {
            summaries.extend(self.summary(None, &window));
        }
        summaries
    }

    fn summary(&self, peer: Option<IpAddr>, window: &Window) -> Option<Summary> {
        (window.suppressed > 0).then_some(Summary {
            peer,
            suppressed: window.suppressed,
            window: self.window,
        })
    }

    /// Addresses in the table.
    pub fn tracked(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .peers
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(lines_per_peer: u32, max_tracked_peers: usize) -> LogLimiter {
        LogLimiter::new(&LogConfig {
            lines_per_peer,
            peer_window_secs: 60,
            max_tracked_peers,
        })
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(n.into())
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn the_first_lines_of_a_window_pass_and_the_rest_are_summed_up_once_it_is_over() {
        let limiter = limiter(3, 100);
        let t0 = Instant::now();
        let a = ip(1);
        let verdicts: Vec<bool> = (0..10)
            .map(|i| limiter.check(a, t0 + Duration::from_secs(i)).0)
            .collect();
        assert_eq!(verdicts.iter().filter(|&&v| v).count(), 3);
        assert!(verdicts[..3].iter().all(|&v| v));
        // Another address has its own allowance.
        assert_eq!(limiter.check(ip(2), t0), (true, None));
        // Within the window nothing is summed up yet.
        assert!(
            limiter
                .sweep_at(t0 + MINUTE - Duration::from_millis(1))
                .is_empty()
        );
        let summaries = limiter.sweep_at(t0 + MINUTE);
        assert_eq!(
            summaries,
            [Summary {
                peer: Some(a),
                suppressed: 7,
                window: MINUTE
            }]
        );
        assert_eq!(
            summaries[0].to_string(),
            "7 more like this from 0.0.0.1 in the last 60 s"
        );
        // Both windows are over: the table is empty, and the address starts afresh.
        assert_eq!(limiter.tracked(), 0);
        assert_eq!(limiter.check(a, t0 + MINUTE), (true, None));
    }

    #[test]
    fn the_next_line_after_a_window_brings_its_summary_when_no_sweep_came() {
        let limiter = limiter(1, 100);
        let t0 = Instant::now();
        let a = ip(7);
        assert!(limiter.check(a, t0).0);
        assert!(!limiter.check(a, t0).0);
        assert!(!limiter.check(a, t0).0);
        let (allowed, summary) = limiter.check(a, t0 + MINUTE);
        assert!(allowed);
        assert_eq!(summary.map(|s| s.suppressed), Some(2));
        // Nothing left out in the new window: nothing to sum up.
        assert!(limiter.sweep_at(t0 + 2 * MINUTE).is_empty());
    }

    #[test]
    fn a_flood_from_many_addresses_does_not_grow_the_table_beyond_its_bound() {
        let limiter = limiter(2, 100);
        let t0 = Instant::now();
        let mut logged = 0;
        for n in 0..100_000 {
            if limiter.check(ip(n), t0).0 {
                logged += 1;
            }
        }
        assert_eq!(limiter.tracked(), 100);
        // The line of each tracked address, and 2 for all the others together.
        assert_eq!(logged, 100 + 2);
        let summaries = limiter.sweep_at(t0 + MINUTE);
        assert_eq!(
            summaries,
            [Summary {
                peer: None,
                suppressed: 100_000 - 100 - 2,
                window: MINUTE
            }]
        );
        assert_eq!(
            summaries[0].to_string(),
            "99898 more like this from other addresses in the last 60 s"
        );
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn ipv6_addresses_are_grouped_by_their_64_prefix() {
        let limiter = limiter(1, 100);
        let t0 = Instant::now();
        assert!(limiter.check("2001:db8::1".parse().unwrap(), t0).0);
        assert!(!limiter.check("2001:db8::2".parse().unwrap(), t0).0);
        assert!(limiter.check("2001:db8:0:1::1".parse().unwrap(), t0).0);
        let summaries = limiter.sweep_at(t0 + MINUTE);
        assert_eq!(
            summaries[0].to_string(),
            "1 more like this from 2001:db8::/64 in the last 60 s"
        );
    }

    #[test]
    fn zero_lines_per_peer_turns_the_limit_off() {
        let limiter = limiter(0, 100);
        let t0 = Instant::now();
        assert!((0..1000).all(|_| limiter.check(ip(1), t0).0));
        assert_eq!(limiter.tracked(), 0);
    }
}
