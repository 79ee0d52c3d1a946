//! The memory budget (`[limits] max_memory`): one count of the bytes client input holds
//! in the broker — session queues (online, offline and parked sessions alike), retained
//! messages and pre-CONNECT read buffers — against one limit, and whether the broker is
//! under pressure (at or over it).
//!
//! The places that hold such bytes already count them for their own limits (a mailbox's
//! queued bytes, the retained tree, the pre-CONNECT budget); each also adds or takes away
//! the same amount here with one relaxed atomic add, so the hot path takes no lock.
//!
//! From [`HIGH_WATER_PERCENT`] of the limit the broker refuses what would grow further
//! (see ARCHITECTURE.md, "Memory budget"): QoS 1/2 publishes (v5 0x97), QoS 0 deliveries
//! to sessions that have a backlog, and new connections (0x89; v3: 3). Pressure ends once
//! use falls below [`LOW_WATER_PERCENT`] of the limit, so refusals do not flap on every
//! message.
//!
//! What the count cannot attribute (each connection's task and session, subscriptions,
//! allocator slack) is measured instead: [`MemoryBudget::observe_resident`], called ten
//! times a second by the binary (`Server::measure_resident_memory`), adds the process's
//! resident growth beyond the count, up to [`UNCOUNTED_MAX_PERCENT`] of the count (see
//! [`Ledger::uncounted`]).
//!
//! Other protocols ask [`MemoryBudget::pressure`] (a relaxed load) or wait for changes
//! with [`MemoryBudget::watch`] (the AMQP listener's `connection.blocked`).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use tokio::sync::watch;

use crate::config::LimitsConfig;

/// Pressure starts once use reaches this share of the limit: what still arrives while
/// the policy takes hold (queues not yet behind, growth between two resident samples)
/// then stays within the limit.
pub const HIGH_WATER_PERCENT: u64 = 95;

/// Pressure ends once use falls below this share of the limit.
pub const LOW_WATER_PERCENT: u64 = 85;

/// The share of the machine's memory (or of the cgroup limit, if lower) that
/// `max_memory` defaults to.
pub const DEFAULT_SHARE_PERCENT: u64 = 50;

/// The resident growth beyond the count that is added to it, at most, as a share of the
/// count (see [`Ledger::uncounted`]). With 10,000 subscribers that never read, what is
/// not counted (tasks, sessions, allocator slack) measured 0.6–0.8 of the count.
pub const UNCOUNTED_MAX_PERCENT: u64 = 100;

/// The largest per-thread sum kept out of the shared count (see [`Ledger`]).
const MAX_BATCH: u64 = 64 * 1024;

/// See the module documentation.
#[derive(Debug)]
pub struct MemoryBudget {
    /// The count. Leaked on purpose, one per budget (one per broker): a message's
    /// [`Charge`](crate::model::Charge) then points at it without a reference count, which
    /// would cost two more atomic operations per message.
    ledger: &'static Ledger,
    /// QoS 0 deliveries not queued under pressure (part of `Stats::publish_dropped`).
    pub dropped_qos0: AtomicU64,
    /// QoS 1/2 PUBLISH packets refused under pressure (v5 0x97; v3: not acknowledged, and
    /// the connection closed).
    pub refused_publishes: AtomicU64,
    /// CONNECTs refused under pressure (0x89; v3: 3).
    pub refused_connections: AtomicU64,
}

/// The bytes counted, against the limit.
///
/// Each thread adds its changes up in a thread-local sum and moves the sum into the
/// shared count only once it reaches `batch` bytes either way (or when the thread ends),
/// so the hot path makes no atomic operation for most messages. The shared count is thus
/// off by less than `batch` per thread: at most 64 KiB, and a thousandth of the limit
/// when that is smaller.
#[derive(Debug)]
pub struct Ledger {
    /// Bytes allowed; `u64::MAX` is no limit.
    limit: u64,
    /// [`HIGH_WATER_PERCENT`] and [`LOW_WATER_PERCENT`] of `limit`.
    high: u64,
    low: u64,
    /// See the type's documentation.
    batch: u64,
    /// Bytes counted, flushed sums only. Signed: one thread may flush a release of bytes
    /// whose charge another thread still holds in its sum.
    used: AtomicI64,
    /// The process's resident memory grown since the first sample
    /// ([`MemoryBudget::observe_resident`]) beyond what is counted, up to
    /// [`UNCOUNTED_MAX_PERCENT`] of the count: it is compared to the limit together with
    /// the count. The cap exists because an allocator keeps freed memory: once clients let
    /// go of what they held, the broker must leave pressure even if resident memory stays
    /// high: it ends once the count falls below half the low-water mark. Refreshed ten
    /// times a second, so between samples it lags the count.
    uncounted: AtomicU64,
    /// The first resident sample, in bytes (`u64::MAX`: none yet): the broker's own
    /// memory before clients, which the budget leaves out.
    resident_base: AtomicU64,
    /// Highest `used` plus `uncounted` has been.
    maximum: AtomicU64,
    /// A copy of the watch's value, read on the hot path.
    pressure: AtomicBool,
    changes: watch::Sender<bool>,
}

/// This thread's change not yet in its ledger's count (see [`Ledger`]).
struct Pending {
    ledger: Cell<Option<&'static Ledger>>,
    bytes: Cell<i64>,
}

impl Drop for Pending {
    /// A thread that ends leaves nothing uncounted.
    fn drop(&mut self) {
        if let Some(ledger) = self.ledger.get() {
            ledger.apply(self.bytes.get());
        }
    }
}

thread_local! {
    static PENDING: Pending = const {
        Pending {
            ledger: Cell::new(None),
            bytes: Cell::new(0),
        }
    };
}

impl Ledger {
    /// Counts `delta` more (or fewer) bytes, through this thread's sum.
    #[inline]
    pub fn add(&'static self, delta: i64) {
        let summed = PENDING.try_with(|p| match p.ledger.get() {
            Some(ledger) if std::ptr::eq(ledger, self) => {
                let now = p.bytes.get() + delta;
                let keep = now.unsigned_abs() < self.batch;
                if keep {
                    p.bytes.set(now);
                }
                keep
            }
            _ => false,
        });
        if summed != Ok(true) {
            self.add_slow(delta);
        }
    }

    /// [`Ledger::add`] when the thread's sum is full, or belongs to another ledger.
    #[cold]
    #[inline(never)]
    fn add_slow(&'static self, delta: i64) {
        let summed = PENDING.try_with(|p| match p.ledger.get() {
            Some(ledger) if std::ptr::eq(ledger, self) => {
                let now = p.bytes.get() + delta;
                p.bytes.set(0);
                self.apply(now);
            }
            other => {
                // Another budget's sum (tests run several brokers): it goes to its own.
                if let Some(ledger) = other {
                    ledger.apply(p.bytes.get());
                }
                p.ledger.set(Some(self));
                p.bytes.set(0);
                self.apply(delta);
            }
        });
        if summed.is_err() {
            // The thread is ending and its sum is gone already.
            self.apply(delta);
        }
    }

    /// Moves `delta` into the shared count and updates the pressure.
    fn apply(&self, delta: i64) {
        if delta == 0 {
            return;
        }
        let now = self.used.fetch_add(delta, Ordering::Relaxed) + delta;
        let now = u64::try_from(now).unwrap_or(0) + self.uncounted.load(Ordering::Relaxed);
        self.judge(now, delta > 0);
    }

    /// Updates the maximum and the pressure for `now` bytes (count and uncounted), which
    /// grew (`rising`) or fell: pressure starts only on growth and ends only on a fall, so
    /// a thread flushing a small change late cannot undo another's decision.
    fn judge(&self, now: u64, rising: bool) {
        if rising {
            if now > self.maximum.load(Ordering::Relaxed) {
                self.maximum.fetch_max(now, Ordering::Relaxed);
            }
            if now >= self.high && !self.pressure.load(Ordering::Relaxed) {
                self.set_pressure(true, now);
            }
        } else if now < self.low && self.pressure.load(Ordering::Relaxed) {
            self.set_pressure(false, now);
        }
    }

    /// Bytes counted: the shared count plus this thread's sum.
    fn counted(&self) -> u64 {
        let own = PENDING
            .try_with(|p| match p.ledger.get() {
                Some(ledger) if std::ptr::eq(ledger, self) => p.bytes.get(),
                _ => 0,
            })
            .unwrap_or(0);
        u64::try_from(self.used.load(Ordering::Relaxed) + own).unwrap_or(0)
    }

    fn set_pressure(&self, on: bool, used: u64) {
        // Only the thread that flips the flag tells the watchers.
        if self.pressure.swap(on, Ordering::Relaxed) != on {
            self.changes.send_replace(on);
            if on {
                tracing::warn!(
                    limit = self.limit,
                    used,
                    "memory budget (limits.max_memory) reached: refusing QoS 1/2 publishes and new connections, dropping QoS 0 to sessions with a backlog"
                );
            } else {
                tracing::info!(limit = self.limit, used, "memory use back under the budget");
            }
        }
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes; 0 is no limit.
    pub fn new(limit: u64) -> Self {
        let limit = if limit == 0 { u64::MAX } else { limit };
        let ledger = Box::leak(Box::new(Ledger {
            limit,
            high: limit / 100 * HIGH_WATER_PERCENT,
            low: limit / 100 * LOW_WATER_PERCENT,
            batch: (limit / 1024).clamp(1, MAX_BATCH),
            used: AtomicI64::new(0),
            uncounted: AtomicU64::new(0),
            resident_base: AtomicU64::new(u64::MAX),
            maximum: AtomicU64::new(0),
            pressure: AtomicBool::new(false),
            changes: watch::Sender::new(false),
        }));
        Self {
            ledger,
            dropped_qos0: AtomicU64::new(0),
            refused_publishes: AtomicU64::new(0),
            refused_connections: AtomicU64::new(0),
        }
    }

    /// No limit: counts, never under pressure.
    pub fn unlimited() -> Self {
        Self::new(0)
    }

    /// The count itself, which a message's charge points at.
    pub fn ledger(&self) -> &'static Ledger {
        self.ledger
    }

    /// The limit in bytes (`u64::MAX`: none).
    pub fn limit(&self) -> u64 {
        self.ledger.limit
    }

    /// The limit as configured: 0 for none.
    pub fn budget(&self) -> u64 {
        if self.ledger.limit == u64::MAX {
            0
        } else {
            self.ledger.limit
        }
    }

    /// Bytes held as the budget sees them, compared to its limit: those counted (other
    /// threads' unflushed sums aside, see [`Ledger`]) and the resident growth they do not
    /// account for ([`MemoryBudget::uncounted`]).
    pub fn used(&self) -> u64 {
        self.ledger.counted() + self.uncounted()
    }

    /// The part of [`MemoryBudget::used`] measured rather than counted: resident growth
    /// since the first sample beyond the count, at most [`UNCOUNTED_MAX_PERCENT`] of it.
    pub fn uncounted(&self) -> u64 {
        self.ledger.uncounted.load(Ordering::Relaxed)
    }

    /// Takes a sample of the process's resident memory (`resident_bytes`): the first is
    /// the base, later ones set [`MemoryBudget::uncounted`] to their growth over the base
    /// beyond the count, capped at [`UNCOUNTED_MAX_PERCENT`] of the count, and update the
    /// pressure. Called by one task (`Server::measure_resident_memory`'s). Returns the
    /// growth over the base beyond the count, uncapped: what the allocator may hold free.
    pub fn observe_resident(&self, resident: u64) -> u64 {
        let ledger = self.ledger;
        let base = match ledger.resident_base.load(Ordering::Relaxed) {
            u64::MAX => {
                ledger.resident_base.store(resident, Ordering::Relaxed);
                resident
            }
            base => base,
        };
        let counted = ledger.counted();
        let beyond = resident.saturating_sub(base).saturating_sub(counted);
        let uncounted = beyond.min(counted / 100 * UNCOUNTED_MAX_PERCENT);
        let before = ledger.uncounted.swap(uncounted, Ordering::Relaxed);
        if uncounted != before {
            ledger.judge(counted + uncounted, uncounted > before);
        }
        beyond
    }

    /// Moves this thread's sum into the shared count now, rather than when the thread's
    /// locals are destroyed: `std::thread::scope` returns before that happens, so a
    /// caller that counts right after its scoped threads finish needs them to flush.
    pub fn flush_thread(&self) {
        let pending = PENDING
            .try_with(|p| match p.ledger.get() {
                Some(ledger) if std::ptr::eq(ledger, self.ledger) => p.bytes.replace(0),
                _ => 0,
            })
            .unwrap_or(0);
        self.ledger.apply(pending);
    }

    /// Highest count so far.
    pub fn maximum(&self) -> u64 {
        self.ledger.maximum.load(Ordering::Relaxed)
    }

    /// Whether use reached the high-water mark (and has not yet fallen below the low-water
    /// mark).
    /// One relaxed load.
    pub fn pressure(&self) -> bool {
        self.ledger.pressure.load(Ordering::Relaxed)
    }

    /// A receiver that sees each change of [`MemoryBudget::pressure`].
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.ledger.changes.subscribe()
    }

    /// Counts `bytes` more.
    pub fn charge(&self, bytes: u64) {
        self.ledger.add(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Counts `bytes` fewer (what an earlier [`MemoryBudget::charge`] counted).
    pub fn release(&self, bytes: u64) {
        self.ledger.add(-i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Moves the count from `before` to `after` bytes.
    pub fn adjust(&self, before: u64, after: u64) {
        self.ledger.add(
            i64::try_from(after).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX),
        );
    }
}

/// The process's resident memory in bytes (`VmRSS` in /proc/self/status); `None` where
/// that cannot be read (not Linux), and the budget then counts only.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&status, "VmRSS:")
}

/// A `NAME: N kB` line of a /proc file, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let mut fields = line[name.len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

/// The budget `[limits]` asks for: `max_memory`, or [`default_limit`] when it is absent;
/// 0 is no limit.
pub fn limit_for(limits: &LimitsConfig) -> u64 {
    limits.max_memory.map_or_else(default_limit, |size| size.0)
}

/// The default `max_memory`: [`DEFAULT_SHARE_PERCENT`] of the machine's memory (MemTotal
/// in /proc/meminfo) or of the cgroup's memory limit, whichever is lower. 0 (no limit)
/// when neither can be read.
pub fn default_limit() -> u64 {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total(&text));
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| std::fs::read_to_string(path).ok())
    .and_then(|text| cgroup_limit(&text));
    let total = match (machine, cgroup) {
        (Some(m), Some(c)) => m.min(c),
        (Some(m), None) => m,
        (None, Some(c)) => c,
        (None, None) => return 0,
    };
    total / 100 * DEFAULT_SHARE_PERCENT
}

/// `MemTotal` from /proc/meminfo, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    kib_field(meminfo, "MemTotal:")
}

/// A cgroup memory limit (v2 `memory.max` or v1 `memory.limit_in_bytes`); `max` and v1's
/// "unlimited" (a number near `i64::MAX`) are none.
fn cgroup_limit(text: &str) -> Option<u64> {
    let value: u64 = text.trim().parse().ok()?;
    (value < 1 << 60).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_starts_at_high_water_and_ends_below_low_water() {
        let budget = MemoryBudget::new(1000);
        let mut watch = budget.watch();
        budget.charge(949);
        assert!(!budget.pressure());
        budget.charge(1);
        assert!(budget.pressure());
        assert!(watch.has_changed().unwrap());
        assert!(*watch.borrow_and_update());
        // Still above 85 %: pressure stays, so refusals do not flap.
        budget.release(100);
        assert!(budget.pressure());
        budget.adjust(850, 849);
        assert!(!budget.pressure());
        assert!(!*watch.borrow_and_update());
        assert_eq!(budget.used(), 849);
        assert_eq!(budget.maximum(), 950);
    }

    /// Resident growth beyond the count is added to it, up to the count again; it starts
    /// pressure like counted bytes, and memory the allocator keeps after clients let go
    /// cannot hold pressure on.
    #[test]
    fn resident_growth_beyond_the_count_is_added_up_to_the_count() {
        const BASE: u64 = 50_000_000;
        let budget = MemoryBudget::new(100_000);
        // The first sample is the base: the broker's own memory, never charged.
        budget.observe_resident(BASE);
        assert_eq!(budget.used(), 0);
        budget.charge(40_000);
        budget.observe_resident(BASE + 40_000 + 10_000);
        assert_eq!((budget.uncounted(), budget.used()), (10_000, 50_000));
        // Capped at the count.
        budget.observe_resident(BASE + 40_000 + 70_000);
        assert_eq!((budget.uncounted(), budget.used()), (40_000, 80_000));
        assert!(!budget.pressure());
        // Measured growth alone can start pressure...
        budget.charge(10_000);
        budget.observe_resident(BASE + 50_000 + 45_000);
        assert_eq!(budget.used(), 95_000);
        assert!(budget.pressure());
        assert_eq!(budget.maximum(), 95_000);
        // ... and falling within the count ends it on the next sample.
        budget.observe_resident(BASE + 50_000 + 30_000);
        assert!(!budget.pressure());
        // Clients let go, resident memory stays where it was (the allocator keeps it):
        // the count's fall ends pressure at once, and the next sample keeps it off.
        budget.observe_resident(BASE + 50_000 + 45_000);
        assert!(budget.pressure());
        budget.release(20_000);
        assert!(!budget.pressure(), "used {}", budget.used());
        budget.observe_resident(BASE + 50_000 + 45_000);
        assert_eq!((budget.uncounted(), budget.used()), (30_000, 60_000));
        assert!(!budget.pressure());
        // Below the base: nothing measured.
        budget.observe_resident(BASE / 2);
        assert_eq!(budget.uncounted(), 0);
    }

    #[test]
    fn resident_memory_reads() {
        let status = "Name:\tmidge\nVmPeak:\t  9000 kB\nVmRSS:\t    6144 kB\n";
        assert_eq!(kib_field(status, "VmRSS:"), Some(6144 * 1024));
        assert_eq!(kib_field(status, "VmSwap:"), None);
        assert_eq!(kib_field("VmRSS: 12 pages\n", "VmRSS:"), None);
        if cfg!(target_os = "linux") {
            assert!(resident_bytes().is_some_and(|bytes| bytes > 0));
        }
    }

    #[test]
    fn unlimited_never_presses() {
        let budget = MemoryBudget::unlimited();
        budget.charge(u64::MAX / 2);
        assert!(!budget.pressure());
    }

    #[test]
    fn machine_and_cgroup_limits_read() {
        let meminfo = "MemTotal:        8000000 kB\nMemFree:  1 kB\n";
        assert_eq!(mem_total(meminfo), Some(8_000_000 * 1024));
        assert_eq!(cgroup_limit("max\n"), None);
        assert_eq!(cgroup_limit("9223372036854771712\n"), None);
        assert_eq!(cgroup_limit("1073741824\n"), Some(1 << 30));
    }

    /// A scoped thread's sum is in the count once it flushes, before its locals go.
    #[test]
    fn a_flushed_thread_sum_is_counted_by_other_threads() {
        let budget = MemoryBudget::unlimited();
        std::thread::scope(|s| {
            s.spawn(|| {
                // The first charge on a thread goes straight to the count and claims
                // the thread's sum; the next stays in the sum.
                budget.charge(1);
                budget.charge(100);
                assert_eq!(budget.ledger.used.load(Ordering::Relaxed), 1);
                budget.flush_thread();
                assert_eq!(budget.ledger.used.load(Ordering::Relaxed), 101);
                budget.flush_thread();
            });
        });
        assert_eq!(budget.used(), 101);
    }

    /// Many threads charging and releasing, while another samples resident memory, leave
    /// the count exact and the pressure off.
    #[test]
    fn concurrent_charges_balance() {
        let budget = std::sync::Arc::new(MemoryBudget::new(10_000));
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let sampler = {
            let (budget, done) = (budget.clone(), done.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !done.load(Ordering::Relaxed) {
                    budget.observe_resident(1_000_000 + n % 20_000);
                    n += 7;
                }
            })
        };
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let budget = budget.clone();
                std::thread::spawn(move || {
                    for n in 0..10_000u64 {
                        let bytes = (n + i) % 97 + 1;
                        budget.charge(bytes);
                        budget.release(bytes);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        sampler.join().unwrap();
        // Nothing counted: nothing measured is added either.
        budget.observe_resident(1_019_999);
        assert_eq!(budget.used(), 0);
        assert!(!budget.pressure());
    }
}
