//! A log-linear latency histogram: exact below 32 ns, then 32 buckets per power of two, so any
//! recorded value is known to within 1/32 (about 3%). Fixed size (1,920 counters), no allocation
//! while recording, and recording is a shift, a count of leading zeros and an increment.
//!
//! Counters are `Cell`s so the tasks of one bench thread share one histogram without borrow
//! checks on the hot path.

use std::cell::Cell;

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets needed to cover every `u64`.
const BUCKETS: usize = ((64 - SUB_BITS + 1) as usize) << SUB_BITS;

/// A histogram of nanosecond values for one thread.
pub struct Histogram {
    counts: Box<[Cell<u64>]>,
    total: Cell<u64>,
    sum: Cell<u128>,
    min: Cell<u64>,
    max: Cell<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count())
            .field("min", &self.min())
            .field("max", &self.max())
            .finish()
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    let mantissa = v >> shift; // in [SUB, 2*SUB)
    (((shift + 1) as u64) << SUB_BITS) as usize + (mantissa - SUB) as usize
}

/// The largest value that falls in bucket `idx`.
fn bucket_high(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < SUB {
        return idx;
    }
    let shift = (idx >> SUB_BITS) - 1;
    let mantissa = (idx & (SUB - 1)) + SUB;
    // (mantissa + 1) << shift may reach 2^64 for the very last bucket.
    (((mantissa as u128 + 1) << shift) - 1).min(u64::MAX as u128) as u64
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| Cell::new(0)).collect(),
            total: Cell::new(0),
            sum: Cell::new(0),
            min: Cell::new(u64::MAX),
            max: Cell::new(0),
        }
    }

    /// Record one value (nanoseconds).
    #[inline]
    pub fn record(&self, v: u64) {
        let c = &self.counts[bucket_of(v)];
        c.set(c.get() + 1);
        self.total.set(self.total.get() + 1);
        self.sum.set(self.sum.get() + u128::from(v));
        if v < self.min.get() {
            self.min.set(v);
        }
        if v > self.max.get() {
            self.max.set(v);
        }
    }

    /// Add every value of `other`.
    pub fn merge(&self, other: &Histogram) {
        for (a, b) in self.counts.iter().zip(other.counts.iter()) {
            a.set(a.get() + b.get());
        }
        self.total.set(self.total.get() + other.total.get());
        self.sum.set(self.sum.get() + other.sum.get());
        self.min.set(self.min.get().min(other.min.get()));
        self.max.set(self.max.get().max(other.max.get()));
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.total.get()
    }

    /// Smallest value, 0 when empty.
    pub fn min(&self) -> u64 {
        if self.count() == 0 {
            0
        } else {
            self.min.get()
        }
    }

    /// Largest value, 0 when empty.
    pub fn max(&self) -> u64 {
        self.max.get()
    }

    /// Mean value, 0 when empty.
    pub fn mean(&self) -> f64 {
        if self.count() == 0 {
            0.0
        } else {
            self.sum.get() as f64 / self.count() as f64
        }
    }

    /// The value at quantile `q` (0..=1): the highest value of the bucket holding the
    /// `ceil(q * count)`-th smallest value, capped at the true maximum. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let n = self.count();
        if n == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0u64;
        for (idx, c) in self.counts.iter().enumerate() {
            seen += c.get();
            if seen >= rank {
                return bucket_high(idx).min(self.max()).max(self.min());
            }
        }
        self.max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_u64() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(31), 31);
        assert_eq!(bucket_of(32), 32);
        assert_eq!(bucket_of(63), 63);
        assert_eq!(bucket_of(64), 64);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        for idx in 0..BUCKETS - 1 {
            assert_eq!(bucket_of(bucket_high(idx)), idx, "high end of {idx}");
            assert_eq!(bucket_of(bucket_high(idx) + 1), idx + 1, "start of {}", idx + 1);
        }
        assert_eq!(bucket_high(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn relative_error_is_below_one_in_thirty_two() {
        let mut v = 1u64;
        while v < 1 << 50 {
            let high = bucket_high(bucket_of(v));
            assert!(high >= v && (high - v) as f64 <= v as f64 / 32.0, "{v} -> {high}");
            v = v * 3 / 2 + 1;
        }
    }

    #[test]
    fn quantiles_of_a_uniform_ramp() {
        let h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.min(), 1000);
        assert_eq!(h.max(), 10_000_000);
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 5_000_000.0).abs() / 5_000_000.0 < 0.04, "{p50}");
        let p99 = h.quantile(0.99) as f64;
        assert!((p99 - 9_900_000.0).abs() / 9_900_000.0 < 0.04, "{p99}");
        assert_eq!(h.quantile(1.0), 10_000_000);
        assert!((h.mean() - 5_000_500.0).abs() < 1.0);
    }

    #[test]
    fn empty_histogram_reports_zeros() {
        let h = Histogram::new();
        assert_eq!((h.quantile(0.5), h.min(), h.max(), h.mean()), (0, 0, 0, 0.0));
    }

    #[test]
    fn merge_adds_counts() {
        let (a, b) = (Histogram::new(), Histogram::new());
        a.record(10);
        b.record(1_000_000);
        b.record(5);
        a.merge(&b);
        assert_eq!((a.count(), a.min(), a.max()), (3, 5, 1_000_000));
    }
}
