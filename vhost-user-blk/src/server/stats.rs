//! Per-export statistics, updated lock-free from the queue workers and read by the control socket.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

use super::request::OpClass;

/// Latency buckets: bucket `i` holds requests that took less than `2^i` microseconds.
const BUCKETS: usize = 32;

/// Counters for one export (all connections since start).
#[derive(Default)]
pub struct ExportStats {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    discards: AtomicU64,
    others: AtomicU64,
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    connections: AtomicU64,
    latency_us: [AtomicU64; BUCKETS],
    /// Nanoseconds requests spent waiting for their I/O limits (summed over requests).
    pub throttled_ns: AtomicU64,
}

/// Counts a queue worker keeps for itself between two [`ExportStats::absorb`] calls: plain
/// integers, so a request costs no atomic operation (a batch costs a handful).
#[derive(Default, Debug)]
pub struct LocalStats {
    finished: u64,
    reads: u64,
    writes: u64,
    flushes: u64,
    discards: u64,
    others: u64,
    read_bytes: u64,
    write_bytes: u64,
    errors: u64,
    latency_us: [u64; BUCKETS],
}

impl LocalStats {
    /// A request finished: `ok` says whether its status was OK.
    pub fn record(&mut self, class: OpClass, bytes: u64, ok: bool, took: Duration) {
        self.finished += 1;
        match class {
            OpClass::Read => {
                self.reads += 1;
                self.read_bytes += bytes;
            }
            OpClass::Write => {
                self.writes += 1;
                self.write_bytes += bytes;
            }
            OpClass::Flush => self.flushes += 1,
            OpClass::Discard => self.discards += 1,
            OpClass::Other => self.others += 1,
        }
        if !ok {
            self.errors += 1;
        }
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = (64 - us.leading_zeros() as usize).min(BUCKETS - 1);
        self.latency_us[bucket] += 1;
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
    /// Seconds requests spent waiting for their I/O limits (summed over requests).
    pub throttled_seconds: f64,
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
        add(&self.reads, local.reads);
        add(&self.writes, local.writes);
        add(&self.flushes, local.flushes);
        add(&self.discards, local.discards);
        add(&self.others, local.others);
        add(&self.read_bytes, local.read_bytes);
        add(&self.write_bytes, local.write_bytes);
        add(&self.errors, local.errors);
        for (a, &v) in self.latency_us.iter().zip(&local.latency_us) {
            add(a, v);
        }
        *local = LocalStats::default();
    }

    /// A frontend connected.
    pub fn connected(&self) {
        self.connections.fetch_add(1, Relaxed);
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// Copy the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let hist: Vec<u64> = self.latency_us.iter().map(|b| b.load(Relaxed)).collect();
        StatsSnapshot {
            reads: self.reads.load(Relaxed),
            writes: self.writes.load(Relaxed),
            flushes: self.flushes.load(Relaxed),
            discards: self.discards.load(Relaxed),
            others: self.others.load(Relaxed),
            read_bytes: self.read_bytes.load(Relaxed),
            write_bytes: self.write_bytes.load(Relaxed),
            errors: self.errors.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            connections: self.connections.load(Relaxed),
            latency_p50_us: percentile(&hist, 0.5),
            latency_p99_us: percentile(&hist, 0.99),
            latency_p999_us: percentile(&hist, 0.999),
            throttled_seconds: self.throttled_ns.load(Relaxed) as f64 / 1e9,
        }
    }
}

/// Upper bound (in µs) of the bucket holding the `q` quantile; 0 with no samples.
fn percentile(hist: &[u64], q: f64) -> u64 {
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
