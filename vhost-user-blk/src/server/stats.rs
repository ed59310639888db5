//! Per-export statistics, updated lock-free from the queue workers and read by the control socket.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

use super::request::OpClass;

/// Latency buckets: bucket `i` holds requests that took less than `2^i` microseconds.
pub const BUCKETS: usize = 32;

/// Request classes counted apart, in [`OpClass`] order (the `op` label on `/metrics`).
pub const OP_NAMES: [&str; OPS] = ["read", "write", "flush", "discard", "other"];
/// Number of request classes.
pub const OPS: usize = 5;

/// Index of `class` in the per-class arrays.
fn op_index(class: OpClass) -> usize {
    match class {
        OpClass::Read => 0,
        OpClass::Write => 1,
        OpClass::Flush => 2,
        OpClass::Discard => 3,
        OpClass::Other => 4,
    }
}

/// Counters for one export (all connections since start), one set per request class.
#[derive(Default)]
pub struct ExportStats {
    count: [AtomicU64; OPS],
    bytes: [AtomicU64; OPS],
    errors: [AtomicU64; OPS],
    latency_sum_ns: [AtomicU64; OPS],
    latency_us: [[AtomicU64; BUCKETS]; OPS],
    in_flight: AtomicU64,
    connections: AtomicU64,
    /// Time requests waited for their I/O limit to allow them, summed (nanoseconds).
    pub throttled_ns: AtomicU64,
}

/// Counts a queue worker keeps for itself between two [`ExportStats::absorb`] calls: plain
/// integers, so a request costs no atomic operation (a batch costs a handful).
#[derive(Default, Debug)]
pub struct LocalStats {
    finished: u64,
    totals: OpTotals,
}

/// Per-class totals: what a worker counted in a batch, or an export's counters as read.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct OpTotals {
    /// Requests completed, by class.
    pub count: [u64; OPS],
    /// Data bytes moved, by class.
    pub bytes: [u64; OPS],
    /// Requests completed with a status other than OK, by class.
    pub errors: [u64; OPS],
    /// Time from a request's arrival to its completion, summed (nanoseconds), by class.
    pub latency_sum_ns: [u64; OPS],
    /// Latency histogram by class: bucket `i` counts requests faster than `2^i` microseconds.
    pub latency_us: [[u64; BUCKETS]; OPS],
}

impl OpTotals {
    /// Add `other` to these totals (wrapping, as the counters themselves do).
    pub fn add(&mut self, other: &OpTotals) {
        for op in 0..OPS {
            self.count[op] = self.count[op].wrapping_add(other.count[op]);
            self.bytes[op] = self.bytes[op].wrapping_add(other.bytes[op]);
            self.errors[op] = self.errors[op].wrapping_add(other.errors[op]);
            self.latency_sum_ns[op] = self.latency_sum_ns[op].wrapping_add(other.latency_sum_ns[op]);
            for (a, b) in self.latency_us[op].iter_mut().zip(&other.latency_us[op]) {
                *a = a.wrapping_add(*b);
            }
        }
    }
}

impl LocalStats {
    /// A request finished: `ok` says whether its status was OK.
    pub fn record(&mut self, class: OpClass, bytes: u64, ok: bool, took: Duration) {
        let op = op_index(class);
        let t = &mut self.totals;
        self.finished += 1;
        t.count[op] += 1;
        t.bytes[op] += bytes;
        t.errors[op] += u64::from(!ok);
        let ns = took.as_nanos().min(u128::from(u64::MAX)) as u64;
        t.latency_sum_ns[op] = t.latency_sum_ns[op].wrapping_add(ns);
        let us = ns / 1000;
        let bucket = (64 - us.leading_zeros() as usize).min(BUCKETS - 1);
        t.latency_us[op][bucket] += 1;
    }
}

/// A point-in-time copy of [`ExportStats`], as the control socket reports it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct StatsSnapshot {
    /// Read requests completed.
    pub reads: u64,
    /// Write requests completed.
    pub writes: u64,
    /// Flush requests completed.
    pub flushes: u64,
    /// Discard and write-zeroes requests completed.
    pub discards: u64,
    /// Other requests (GET_ID, refused ones).
    pub others: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Requests completed with a status other than OK.
    pub errors: u64,
    /// Requests being processed now.
    pub in_flight: u64,
    /// Frontend connections accepted.
    pub connections: u64,
    /// Median latency in microseconds (upper bound of its power-of-two bucket).
    pub latency_p50_us: u64,
    /// 99th percentile latency in microseconds (bucket upper bound).
    pub latency_p99_us: u64,
    /// 99.9th percentile latency in microseconds (bucket upper bound).
    pub latency_p999_us: u64,
    /// Seconds requests spent waiting for their I/O limit, summed over requests.
    #[serde(default)]
    pub throttled_seconds: f64,
    /// Time from arrival to completion summed over every completed request, in seconds (with
    /// `throttled_seconds`, the share of request time spent waiting for limits).
    #[serde(default)]
    pub latency_sum_seconds: f64,
    /// The latency histogram of every class together: bucket `i` counts requests faster than
    /// `2^i` microseconds (so a reader can take percentiles of the requests between two samples).
    #[serde(default)]
    pub latency_histogram_us: Vec<u64>,
}

impl ExportStats {
    /// A request entered processing.
    pub fn started(&self) {
        self.started_many(1);
    }

    /// `n` requests entered processing.
    pub fn started_many(&self, n: usize) {
        self.in_flight.fetch_add(n as u64, Relaxed);
    }

    /// A request finished: `ok` says whether its status was OK.
    pub fn finished(&self, class: OpClass, bytes: u64, ok: bool, took: Duration) {
        let mut one = LocalStats::default();
        one.record(class, bytes, ok, took);
        self.absorb(&mut one);
    }

    /// Add what a queue worker counted since its last call (finished requests leave the
    /// in-flight count) and reset `local`.
    pub fn absorb(&self, local: &mut LocalStats) {
        if local.finished == 0 {
            return;
        }
        let add = |a: &AtomicU64, v: u64| {
            if v != 0 {
                a.fetch_add(v, Relaxed);
            }
        };
        self.in_flight.fetch_sub(local.finished, Relaxed);
        local.finished = 0;
        let t = &mut local.totals;
        // Only the classes the batch had are touched (and reset): a batch of reads costs a
        // handful of atomic adds and a small reset, not the whole table.
        for op in 0..OPS {
            if t.count[op] == 0 {
                continue;
            }
            add(&self.count[op], t.count[op]);
            add(&self.bytes[op], t.bytes[op]);
            add(&self.errors[op], t.errors[op]);
            add(&self.latency_sum_ns[op], t.latency_sum_ns[op]);
            for (a, v) in self.latency_us[op].iter().zip(t.latency_us[op].iter_mut()) {
                add(a, std::mem::take(v));
            }
            (t.count[op], t.bytes[op], t.errors[op], t.latency_sum_ns[op]) = (0, 0, 0, 0);
        }
    }

    /// A frontend connected.
    pub fn connected(&self) {
        self.connections.fetch_add(1, Relaxed);
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// Seconds requests waited for their I/O limit, summed.
    pub fn throttled_seconds(&self) -> f64 {
        self.throttled_ns.load(Relaxed) as f64 / 1e9
    }

    /// Read the per-class counters.
    pub fn totals(&self) -> OpTotals {
        let mut t = OpTotals::default();
        for op in 0..OPS {
            t.count[op] = self.count[op].load(Relaxed);
            t.bytes[op] = self.bytes[op].load(Relaxed);
            t.errors[op] = self.errors[op].load(Relaxed);
            t.latency_sum_ns[op] = self.latency_sum_ns[op].load(Relaxed);
            for (a, b) in t.latency_us[op].iter_mut().zip(&self.latency_us[op]) {
                *a = b.load(Relaxed);
            }
        }
        t
    }

    /// Copy the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let t = self.totals();
        let mut hist = vec![0u64; BUCKETS];
        for per_op in &t.latency_us {
            for (h, v) in hist.iter_mut().zip(per_op) {
                *h += v;
            }
        }
        StatsSnapshot {
            reads: t.count[0],
            writes: t.count[1],
            flushes: t.count[2],
            discards: t.count[3],
            others: t.count[4],
            read_bytes: t.bytes[0],
            write_bytes: t.bytes[1],
            errors: t.errors.iter().sum(),
            in_flight: self.in_flight.load(Relaxed),
            connections: self.connections.load(Relaxed),
            latency_p50_us: percentile(&hist, 0.5),
            latency_p99_us: percentile(&hist, 0.99),
            latency_p999_us: percentile(&hist, 0.999),
            throttled_seconds: self.throttled_seconds(),
            latency_sum_seconds: t.latency_sum_ns.iter().map(|&ns| ns as f64 / 1e9).sum(),
            latency_histogram_us: hist,
        }
    }
}

/// Upper bound (in µs) of the bucket holding the `q` quantile of a [`BUCKETS`] histogram; 0
/// with no samples.
pub fn percentile(hist: &[u64], q: f64) -> u64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return 1u64 << i;
        }
    }
    1u64 << (hist.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram() {
        let s = ExportStats::default();
        for _ in 0..99 {
            s.started();
            s.finished(OpClass::Read, 4096, true, Duration::from_micros(10));
        }
        s.started();
        s.finished(OpClass::Write, 512, false, Duration::from_micros(5000));
        let snap = s.snapshot();
        assert_eq!((snap.reads, snap.writes, snap.errors, snap.in_flight), (99, 1, 1, 0));
        assert_eq!(snap.read_bytes, 99 * 4096);
        assert_eq!(snap.latency_p50_us, 16);
        assert_eq!(snap.latency_p999_us, 8192);
    }

    #[test]
    fn a_worker_batch_is_counted_when_absorbed_and_not_twice() {
        let s = ExportStats::default();
        s.started_many(3);
        let mut local = LocalStats::default();
        local.record(OpClass::Read, 4096, true, Duration::from_micros(3));
        local.record(OpClass::Read, 4096, true, Duration::from_micros(3));
        assert_eq!((s.snapshot().reads, s.in_flight()), (0, 3), "nothing counted before the batch is absorbed");
        s.absorb(&mut local);
        s.absorb(&mut local);
        local.record(OpClass::Other, 0, false, Duration::ZERO);
        s.absorb(&mut local);
        let snap = s.snapshot();
        assert_eq!((snap.reads, snap.read_bytes, snap.others, snap.errors, snap.in_flight), (2, 8192, 1, 1, 0));
        assert_eq!(snap.latency_p50_us, 4);
    }
}
