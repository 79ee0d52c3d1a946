//! Failed-login rate limiting per client address: a token bucket per address, spent by
//! each failed password check and refilled over time. An address with an empty bucket is
//! refused before any password is checked, so a password spray costs the broker little.
//! IPv6 addresses are grouped by /64, the block one host usually controls.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::LoginRateLimitConfig;
use crate::model::address_key as key;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// See the module documentation.
#[derive(Debug)]
pub struct LoginLimiter {
    burst: f64,
    per_second: f64,
    max_addresses: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl LoginLimiter {
    /// A limiter from `[auth.rate_limit]`.
    pub fn new(config: &LoginRateLimitConfig) -> Self {
        Self {
            burst: f64::from(config.failures_burst),
            per_second: f64::from(config.failures_per_minute) / 60.0,
            max_addresses: config.max_tracked_addresses.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn enabled(&self) -> bool {
        self.burst > 0.0
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second).min(self.burst)
    }

    /// Whether `ip` may try a password now.
    pub fn permits(&self, ip: IpAddr, now: Instant) -> bool {
        if !self.enabled() {
            return true;
        }
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        match buckets.get(&key(ip)) {
            Some(&bucket) => self.refilled(bucket, now) >= 1.0,
            None => true,
        }
    }

    /// Records a failed login from `ip`.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) {
        if !self.enabled() {
            return;
        }
        let key = key(ip);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(&key) && buckets.len() >= self.max_addresses {
            // Bounded memory: forget addresses whose buckets have refilled (they carry no
            // information); if that frees nothing, forget the one idle the longest.
            buckets.retain(|_, b| self.refilled(*b, now) < self.burst);
            if buckets.len() >= self.max_addresses
                && let Some(oldest) = buckets
                    .iter()
                    .min_by_key(|(_, b)| b.updated)
                    .map(|(k, _)| *k)
            {
                buckets.remove(&oldest);
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let tokens = self.refilled(*bucket, now);
        *bucket = Bucket {
            tokens: (tokens - 1.0).max(0.0),
            updated: now,
        };
    }

    /// How long until `ip` may try again (zero if it may now); for the log.
    pub fn retry_after(&self, ip: IpAddr, now: Instant) -> Duration {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        match buckets.get(&key(ip)) {
            Some(&bucket) if self.per_second > 0.0 => {
                let missing = (1.0 - self.refilled(bucket, now)).max(0.0);
                Duration::from_secs_f64(missing / self.per_second)
            }
            Some(_) => Duration::MAX,
            None => Duration::ZERO,
        }
    }

    /// Number of addresses tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(burst: u32, per_minute: u32, max: usize) -> LoginLimiter {
        LoginLimiter::new(&LoginRateLimitConfig {
            failures_burst: burst,
            failures_per_minute: per_minute,
            max_tracked_addresses: max,
        })
    }

    #[test]
    fn an_address_is_refused_after_its_burst_and_recovers_over_time() {
        let limiter = limiter(3, 60, 100);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.permits(ip, t0));
            limiter.record_failure(ip, t0);
        }
        assert!(!limiter.permits(ip, t0));
        assert!(limiter.permits(other, t0));
        // One token per second comes back.
        assert!(!limiter.permits(ip, t0 + Duration::from_millis(500)));
        assert!(limiter.permits(ip, t0 + Duration::from_secs(1)));
        assert_eq!(limiter.retry_after(ip, t0), Duration::from_secs(1));
    }

    #[test]
    fn ipv6_addresses_of_one_64_share_a_bucket() {
        let limiter = limiter(1, 1, 100);
        let t0 = Instant::now();
        limiter.record_failure("2001:db8::1".parse().unwrap(), t0);
        assert!(!limiter.permits("2001:db8::2".parse().unwrap(), t0));
        assert!(limiter.permits("2001:db8:0:1::1".parse().unwrap(), t0));
    }

    #[test]
    fn memory_stays_bounded() {
        let limiter = limiter(5, 1, 10);
        let t0 = Instant::now();
        for i in 0..100u32 {
            limiter.record_failure(IpAddr::V4(i.into()), t0 + Duration::from_millis(i.into()));
        }
        assert_eq!(limiter.tracked(), 10);
    }

    #[test]
    fn zero_burst_turns_it_off() {
        let limiter = limiter(0, 1, 10);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        limiter.record_failure(ip, t0);
        assert!(limiter.permits(ip, t0));
        assert_eq!(limiter.tracked(), 0);
    }
}
