//! A log-linear latency histogram: exact below 256, then 128 buckets per power of two, so
//! any recorded value is reported within 1/128 (0.8 %) of itself. Fixed size, no allocation
//! while recording, mergeable across tasks.

/// Values below this are counted exactly.
const EXACT: u64 = 256;
/// Buckets per power of two above `EXACT` (the top 7 significant bits of a value).
const SUB_BUCKETS: u64 = 128;
/// Powers of two covered above `EXACT`: values up to 2^40 (about 18 minutes in ns); larger
/// ones land in the last bucket (the exact maximum is kept apart).
const SHIFTS: u64 = 32;
const BUCKETS: usize = (EXACT + SHIFTS * SUB_BUCKETS) as usize;

/// Counts of values (nanoseconds, in the bench) in log-linear buckets.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn index(value: u64) -> usize {
    if value < EXACT {
        return value as usize;
    }
    let exponent = 63 - u64::from(value.leading_zeros());
    // `value >> shift` keeps the 8 top bits: 128..=255.
    let shift = exponent - 7;
    let index = EXACT + (shift - 1) * SUB_BUCKETS + ((value >> shift) - SUB_BUCKETS);
    (index as usize).min(BUCKETS - 1)
}

/// The largest value that falls in bucket `index`.
fn highest(index: usize) -> u64 {
    let index = index as u64;
    if index < EXACT {
        return index;
    }
    let shift = (index - EXACT) / SUB_BUCKETS + 1;
    let mantissa = (index - EXACT) % SUB_BUCKETS + SUB_BUCKETS;
    ((mantissa + 1) << shift) - 1
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Counts one value.
    pub fn record(&mut self, value: u64) {
        self.counts[index(value)] += 1;
        self.total += 1;
        self.sum += u128::from(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Adds every value counted by `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// How many values were counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest value counted (exact); 0 when empty.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The mean (exact); 0 when empty.
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0..=1): the smallest bucket bound at or below which at
    /// least `q` of the values lie, never above the exact maximum. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return highest(i).min(self.max).max(self.min);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 0..256 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 127);
        assert_eq!(h.quantile(1.0), 255);
        assert_eq!(h.quantile(0.0), 0);
        assert_eq!(h.count(), 256);
    }

    #[test]
    fn buckets_are_contiguous_and_bounds_hold_their_values() {
        for v in (0..100_000u64).chain([1 << 20, (1 << 30) + 12345, u64::from(u32::MAX)]) {
            let i = index(v);
            assert!(highest(i) >= v, "value {v} above its bucket bound");
            if i > 0 {
                assert!(highest(i - 1) < v, "value {v} fits an earlier bucket");
            }
        }
    }

    #[test]
    fn quantiles_are_within_one_percent() {
        let mut h = Histogram::new();
        // 1..=1_000_000 µs in ns: quantile q is q * 1e9 ns.
        for v in 1..=1_000_000u64 {
            h.record(v * 1000);
        }
        for q in [0.5, 0.9, 0.99, 0.999] {
            let want = q * 1e9;
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.01, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.max(), 1_000_000_000);
        assert_eq!(h.quantile(1.0), 1_000_000_000);
        assert!((h.mean() - 500_000_500.0).abs() < 1.0);
    }

    #[test]
    fn huge_values_saturate_but_max_stays_exact() {
        let mut h = Histogram::new();
        h.record(u64::MAX);
        assert_eq!(h.max(), u64::MAX);
        assert_eq!(h.quantile(0.5), u64::MAX);
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        a.record(10);
        b.record(1_000_000);
        b.record(20);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.quantile(0.5), 20);
        assert_eq!(a.max(), 1_000_000);
        assert_eq!(Histogram::new().quantile(0.99), 0);
    }
}
