//! Connection limits per client address, checked in the accept loop before a byte is read
//! and before any TLS or WebSocket handshake, so a flood from one address costs an
//! `accept` and a `close` each: at most `limits.connections_per_ip` connections open at
//! once, and, when `limits.connect_rate_per_ip` is set, a token bucket of new connections
//! per second with a burst of `limits.connect_burst_per_ip`.
//!
//! IPv4-mapped IPv6 addresses count as IPv4; other IPv6 addresses are grouped by /64, the
//! block one host usually controls (counting per /128 would let one host use 2^64 keys).
//!
//! Memory stays bounded under a flood from many addresses: an address is remembered while
//! it has a connection open (one entry per address with open connections, so at most
//! `mqtt.max_connections` of them) or, once it has none, while its rate bucket is still
//! refilling. Those idle entries are capped at `limits.max_tracked_addresses`: past it,
//! the ones whose bucket has refilled go first, then the longest idle.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::config::LimitsConfig;
use crate::model::address_key;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address already has `connections_per_ip` connections open.
    PerIp,
    /// The address has used its burst and connects faster than `connect_rate_per_ip`.
    Rate,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Connections from this address that are open.
    open: u32,
    /// Rate tokens as of `updated`.
    tokens: f64,
    updated: Instant,
}

#[derive(Debug)]
struct Table {
    entries: HashMap<IpAddr, Entry>,
    /// Entries with no connection open (kept only for their rate bucket).
    idle: usize,
    /// Under the same lock as the counts, so a reload changes them between admissions.
    settings: Settings,
}

/// `[limits]` as the limiter uses them.
#[derive(Debug, Clone, Copy)]
struct Settings {
    /// 0: no limit on concurrent connections per address.
    per_ip: u32,
    /// Tokens per second; 0.0: no rate limit.
    rate: f64,
    burst: f64,
    max_idle: usize,
}

impl Settings {
    fn new(config: &LimitsConfig) -> Self {
        Self {
            per_ip: config.connections_per_ip,
            rate: f64::from(config.connect_rate_per_ip),
            burst: f64::from(config.connect_burst_per_ip.max(1)),
            max_idle: config.max_tracked_addresses.max(1),
        }
    }

    fn enabled(&self) -> bool {
        self.per_ip > 0 || self.rate > 0.0
    }

    fn refilled(&self, entry: &Entry, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(entry.updated).as_secs_f64();
        (entry.tokens + elapsed * self.rate).min(self.burst)
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct ConnLimiter {
    /// Either limit is on: read without the lock, so that with both off nothing is
    /// locked or counted.
    enabled: AtomicBool,
    table: Mutex<Table>,
}

/// An admitted address's key (see [`address_key`]) in 9 bytes rather than an
/// `IpAddr`'s 17, for what a connection holds for its whole life: an IPv4 address, or
/// the /64 prefix of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldKey {
    /// An IPv4 address (IPv4-mapped IPv6 ones too).
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6([u8; 8]),
}

impl HeldKey {
    /// The key of an address as [`address_key`] gives it.
    fn new(key: IpAddr) -> Self {
        match key {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let octets = v6.octets();
                let mut prefix = [0; 8];
                prefix.copy_from_slice(&octets[..8]);
                Self::V6(prefix)
            }
        }
    }

    fn ip(self) -> IpAddr {
        match self {
            Self::V4(v4) => IpAddr::from(v4),
            Self::V6(prefix) => {
                let mut octets = [0; 16];
                octets[..8].copy_from_slice(&prefix);
                IpAddr::from(octets)
            }
        }
    }
}

/// An admitted connection's place in its address's count, released on drop.
#[derive(Debug)]
pub struct ConnSlot {
    /// `None` when both limits are off: nothing was counted.
    held: Option<(Arc<ConnLimiter>, IpAddr)>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Some((limiter, key)) = self.held.take() {
            limiter.release(key, Instant::now());
        }
    }
}

impl ConnSlot {
    /// The place, kept, as a key to give back with [`ConnLimiter::release_held`] on the
    /// limiter that admitted it; `None` when nothing was counted.
    pub fn into_key(mut self) -> Option<HeldKey> {
        self.held.take().map(|(_, key)| HeldKey::new(key))
    }
}

impl ConnLimiter {
    /// A limiter from `[limits]`.
    pub fn new(config: &LimitsConfig) -> Arc<Self> {
        let settings = Settings::new(config);
        Arc::new(Self {
            enabled: AtomicBool::new(settings.enabled()),
            table: Mutex::new(Table {
                entries: HashMap::new(),
                idle: 0,
                settings,
            }),
        })
    }

    /// Puts new `[limits]` in force (a reload) for the connections admitted from now on;
    /// open connections keep their places in the counts. Connections admitted while both
    /// limits were off were not counted, and are not now.
    pub fn reconfigure(&self, config: &LimitsConfig) {
        let settings = Settings::new(config);
        let mut table = self.lock();
        table.settings = settings;
        self.enabled.store(settings.enabled(), Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Nothing here can panic half-way through an update; a poisoned lock holds a
        // consistent table.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `ip`, or says why not. The slot must live as long as the
    /// connection.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<ConnSlot, Refusal> {
        if !self.enabled.load(Ordering::Relaxed) {
            return Ok(ConnSlot { held: None });
        }
        let key = address_key(ip);
        let mut table = self.lock();
        let Table {
            entries,
            idle,
            settings,
        } = &mut *table;
        let entry = entries.entry(key).or_insert_with(|| {
            // Counted idle for a moment: the admission below makes it busy.
            *idle += 1;
            Entry {
                open: 0,
                tokens: settings.burst,
                updated: now,
            }
        });
        if settings.per_ip > 0 && entry.open >= settings.per_ip {
            return Err(Refusal::PerIp);
        }
        if settings.rate > 0.0 {
            let tokens = settings.refilled(entry, now);
            if tokens < 1.0 {
                return Err(Refusal::Rate);
            }
            entry.tokens = tokens - 1.0;
            entry.updated = now;
        }
        if entry.open == 0 {
            *idle -= 1;
        }
        entry.open += 1;
        Ok(ConnSlot {
            held: Some((self.clone(), key)),
        })
    }

    /// Gives back a place kept with [`ConnSlot::into_key`].
    pub fn release_held(&self, key: HeldKey) {
        self.release(key.ip(), Instant::now());
    }

    fn release(&self, key: IpAddr, now: Instant) {
        let mut table = self.lock();
        let Table {
            entries,
            idle,
            settings,
        } = &mut *table;
        let Some(entry) = entries.get_mut(&key) else {
            return;
        };
        entry.open = entry.open.saturating_sub(1);
        if entry.open > 0 {
            return;
        }
        if settings.rate == 0.0 || settings.refilled(entry, now) >= settings.burst {
            // A full bucket and no connection: nothing left to remember.
            entries.remove(&key);
            return;
        }
        *idle += 1;
        if *idle > settings.max_idle {
            Self::prune(&mut table, now);
        }
    }

    /// Brings idle entries down to three quarters of the cap, so the sort below runs once
    /// per quarter-cap releases, not on every one.
    fn prune(table: &mut Table, now: Instant) {
        let settings = table.settings;
        let target = settings.max_idle - settings.max_idle / 4;
        let before = table.entries.len();
        table
            .entries
            .retain(|_, e| e.open > 0 || settings.refilled(e, now) < settings.burst);
        table.idle -= before - table.entries.len();
        if table.idle <= target {
            return;
        }
        let mut idle: Vec<(Instant, IpAddr)> = table
            .entries
            .iter()
            .filter(|(_, e)| e.open == 0)
            .map(|(k, e)| (e.updated, *k))
            .collect();
        idle.sort_unstable();
        for (_, key) in idle.into_iter().take(table.idle - target) {
            table.entries.remove(&key);
        }
        table.idle = target;
    }

    /// Addresses remembered (with connections open or a bucket refilling).
    pub fn tracked(&self) -> usize {
        self.lock().entries.len()
    }

    /// Connections open from `ip`'s address (or /64) as counted here.
    pub fn open_from(&self, ip: IpAddr) -> u32 {
        self.lock()
            .entries
            .get(&address_key(ip))
            .map_or(0, |e| e.open)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;

    fn limiter(per_ip: u32, rate: u32, burst: u32, max: usize) -> Arc<ConnLimiter> {
        ConnLimiter::new(&LimitsConfig {
            connections_per_ip: per_ip,
            connect_rate_per_ip: rate,
            connect_burst_per_ip: burst,
            max_tracked_addresses: max,
            ..LimitsConfig::default()
        })
    }

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + n))
    }

    #[test]
    fn concurrent_connections_per_address_are_capped_and_freed_on_drop() {
        let l = limiter(2, 0, 0, 10);
        let now = Instant::now();
        let a = l.admit(v4(1), now).unwrap();
        let b = l.admit(v4(1), now).unwrap();
        assert_eq!(l.admit(v4(1), now).unwrap_err(), Refusal::PerIp);
        // Other addresses are not affected.
        let _c = l.admit(v4(2), now).unwrap();
        drop(a);
        let d = l.admit(v4(1), now).unwrap();
        assert_eq!(l.open_from(v4(1)), 2);
        drop(b);
        drop(d);
        // No rate limit: an address without connections is forgotten at once.
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn connect_rate_is_a_token_bucket_per_address() {
        let l = limiter(0, 2, 3, 10);
        let t0 = Instant::now();
        let slots: Vec<_> = (0..3).map(|_| l.admit(v4(1), t0).unwrap()).collect();
        assert_eq!(l.admit(v4(1), t0).unwrap_err(), Refusal::Rate);
        assert!(
            l.admit(v4(2), t0).is_ok(),
            "another address has its own bucket"
        );
        // Closing does not give tokens back; time does: two per second.
        drop(slots);
        assert_eq!(l.admit(v4(1), t0).unwrap_err(), Refusal::Rate);
        let t1 = t0 + Duration::from_millis(500);
        let _one = l.admit(v4(1), t1).unwrap();
        assert_eq!(l.admit(v4(1), t1).unwrap_err(), Refusal::Rate);
        // Refusals spend nothing: after a full refill the whole burst is back.
        let t2 = t1 + Duration::from_secs(10);
        for _ in 0..3 {
            l.admit(v4(1), t2).unwrap();
        }
        assert_eq!(l.admit(v4(1), t2).unwrap_err(), Refusal::Rate);
    }

    #[test]
    fn both_limits_apply_and_concurrency_is_checked_first() {
        let l = limiter(1, 1, 1, 10);
        let t0 = Instant::now();
        let held = l.admit(v4(1), t0).unwrap();
        assert_eq!(l.admit(v4(1), t0).unwrap_err(), Refusal::PerIp);
        drop(held);
        assert_eq!(l.admit(v4(1), t0).unwrap_err(), Refusal::Rate);
        assert!(l.admit(v4(1), t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn off_when_both_are_zero_and_nothing_is_tracked() {
        let l = limiter(0, 0, 0, 10);
        let now = Instant::now();
        let slots: Vec<_> = (0..1000).map(|_| l.admit(v4(1), now).unwrap()).collect();
        assert_eq!(l.tracked(), 0);
        drop(slots);
    }

    /// A place kept as a 9-byte key is given back to the count it was taken from, for
    /// IPv4, IPv6 (by /64) and mapped addresses alike; nothing is released twice.
    #[test]
    fn a_kept_key_gives_back_the_place_it_was_taken_from() {
        let l = limiter(1, 0, 0, 10);
        let now = Instant::now();
        let v6: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        for ip in [v4(1), v6, mapped] {
            let key = l.admit(ip, now).unwrap().into_key().expect("counted");
            assert_eq!(l.open_from(ip), 1, "{ip}: kept after the slot is gone");
            assert_eq!(l.admit(ip, now).unwrap_err(), Refusal::PerIp);
            l.release_held(key);
            assert_eq!(l.open_from(ip), 0, "{ip}");
            let again = l.admit(ip, now).unwrap();
            drop(again);
        }
        assert_eq!(l.tracked(), 0);
        assert_eq!(std::mem::size_of::<Option<HeldKey>>(), 9);
        // With both limits off nothing is counted, and there is nothing to give back.
        assert_eq!(
            limiter(0, 0, 0, 10).admit(v4(1), now).unwrap().into_key(),
            None
        );
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let l = limiter(1, 0, 0, 10);
        let now = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _held = l.admit(a, now).unwrap();
        assert_eq!(l.admit(same_64, now).unwrap_err(), Refusal::PerIp);
        assert!(l.admit(other_64, now).is_ok());
        let _v4 = l
            .admit(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), now)
            .unwrap();
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(l.admit(mapped, now).unwrap_err(), Refusal::PerIp);
        let loopback6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert!(l.admit(loopback6, now).is_ok());
    }

    #[test]
    fn a_flood_from_many_addresses_keeps_the_table_bounded() {
        let max = 100;
        let l = limiter(5, 1, 2, max);
        let t0 = Instant::now();
        // 10,000 addresses connect once and leave: each leaves a bucket refilling.
        for n in 0..10_000 {
            drop(l.admit(v4(n), t0).unwrap());
            assert!(l.tracked() <= max, "tracked {} at {n}", l.tracked());
        }
        // Addresses with connections open are never forgotten (their count is needed).
        let open: Vec<_> = (0..500)
            .map(|n| l.admit(v4(100_000 + n), t0).unwrap())
            .collect();
        for n in 0..1_000 {
            drop(l.admit(v4(200_000 + n), t0).unwrap());
        }
        assert!(l.tracked() <= 500 + max, "tracked {}", l.tracked());
        assert_eq!(l.open_from(v4(100_000)), 1);
        drop(open);
        // A minute on, every bucket from the flood has refilled and carries nothing: those
        // go first; the newest idle address is still limited.
        let later = t0 + Duration::from_secs(60);
        let last = max as u32;
        for n in 0..=last {
            let at = later + Duration::from_millis(u64::from(n));
            drop(l.admit(v4(400_000 + n), at).unwrap());
        }
        assert!(l.tracked() <= max, "tracked {}", l.tracked());
        // It spent one of its two tokens: one more, not two (a forgotten one would have two).
        let at = later + Duration::from_millis(u64::from(last));
        let _one = l.admit(v4(400_000 + last), at).unwrap();
        assert_eq!(l.admit(v4(400_000 + last), at).unwrap_err(), Refusal::Rate);
    }

    #[test]
    fn the_longest_idle_are_forgotten_first() {
        let l = limiter(0, 1, 1, 4);
        let t0 = Instant::now();
        for n in 0..4 {
            drop(
                l.admit(v4(n), t0 + Duration::from_millis(u64::from(n)))
                    .unwrap(),
            );
        }
        // The fifth idle entry brings the table down to three: the newest stay.
        drop(l.admit(v4(4), t0 + Duration::from_millis(4)).unwrap());
        assert_eq!(l.tracked(), 3);
        let at = t0 + Duration::from_millis(5);
        assert!(l.admit(v4(0), at).is_ok(), "the oldest was forgotten");
        assert_eq!(l.admit(v4(4), at).unwrap_err(), Refusal::Rate);
        assert_eq!(l.admit(v4(3), at).unwrap_err(), Refusal::Rate);
    }

    /// Many threads admitting and releasing over a few addresses: every admission is
    /// counted exactly once, the cap is never exceeded, and the table ends empty.
    #[test]
    fn many_threads_never_exceed_the_cap_nor_lose_a_count() {
        let per_ip = 2u32;
        let l = limiter(per_ip, 0, 0, 16);
        let addresses = 4u32;
        let peak: Vec<_> = (0..addresses)
            .map(|_| std::sync::atomic::AtomicU32::new(0))
            .collect();
        let live: Vec<_> = (0..addresses)
            .map(|_| std::sync::atomic::AtomicU32::new(0))
            .collect();
        let admitted = std::sync::atomic::AtomicU64::new(0);
        let refused = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..16u32 {
                let (l, peak, live, admitted, refused) = (&l, &peak, &live, &admitted, &refused);
                s.spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..20_000u32 {
                        // Runs of the same address, so even one thread reaches the cap.
                        let a = (t + i / 7) % addresses;
                        match l.admit(v4(a), Instant::now()) {
                            Ok(slot) => {
                                let now = live[a as usize].fetch_add(1, Ordering::SeqCst) + 1;
                                peak[a as usize].fetch_max(now, Ordering::SeqCst);
                                admitted.fetch_add(1, Ordering::Relaxed);
                                held.push((a, slot));
                            }
                            Err(r) => {
                                assert_eq!(r, Refusal::PerIp);
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        // Hold up to three, releasing in a varying order.
                        if !held.is_empty() && (held.len() > 2 || i % 5 == 0) {
                            let (a, slot) = held.swap_remove(i as usize % held.len());
                            // Decrement before the slot frees its place, so `live` never
                            // undercounts what the limiter holds.
                            live[a as usize].fetch_sub(1, Ordering::SeqCst);
                            drop(slot);
                        }
                    }
                    for (a, slot) in held {
                        live[a as usize].fetch_sub(1, Ordering::SeqCst);
                        drop(slot);
                    }
                });
            }
        });
        for p in &peak {
            assert!(p.load(Ordering::SeqCst) <= per_ip, "peak {p:?}");
        }
        let (admitted, refused) = (admitted.into_inner(), refused.into_inner());
        assert_eq!(admitted + refused, 16 * 20_000);
        assert!(refused > 0, "the cap was reached ({admitted} admitted)");
        assert_eq!(l.tracked(), 0, "every release was counted");
        for a in 0..addresses {
            assert_eq!(l.open_from(v4(a)), 0);
        }
    }

    #[test]
    fn reconfigure_applies_to_the_next_admission_and_keeps_the_counts() {
        let limiter = limiter(1, 0, 1, 100);
        let now = Instant::now();
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let first = limiter.admit(ip, now).unwrap();
        assert_eq!(limiter.admit(ip, now).unwrap_err(), Refusal::PerIp);
        let mut config = LimitsConfig {
            connections_per_ip: 2,
            ..LimitsConfig::default()
        };
        limiter.reconfigure(&config);
        // The open connection still counts: one more, not two.
        let second = limiter.admit(ip, now).unwrap();
        assert_eq!(limiter.admit(ip, now).unwrap_err(), Refusal::PerIp);
        assert_eq!(limiter.open_from(ip), 2);
        // Both limits off: admitted without counting; the counted ones still leave.
        config.connections_per_ip = 0;
        limiter.reconfigure(&config);
        let uncounted = limiter.admit(ip, now).unwrap();
        drop((first, second, uncounted));
        assert_eq!(limiter.open_from(ip), 0);
        assert_eq!(limiter.tracked(), 0);
    }
}
