//! The bench harness behind `blkctl bench`: drive a disk from one thread at a chosen queue depth
//! and report IOPS, MB/s and latency percentiles, optionally next to fio on the same file.
//!
//! Pieces:
//! - [`BenchTarget`]: what is measured. [`DevTarget`] drives any `Arc<dyn BlockDev>` on one
//!   [`blockdev::IoCtx`]; a vhost-user client (libblkio) becomes a second implementation.
//! - [`Case`]: one workload at one block size and queue depth, for a time or an op count.
//! - [`Histogram`]: log-linear latency histogram (3% resolution, no allocation while recording).
//! - [`run::run_bench`]: prefill, every case, fio beside it; [`report`]: the JSON schema and the
//!   table; [`markdown`]: `docs/bench.md` from saved JSON files; [`fio`]: the fio ceiling.

mod dev_target;
pub mod fio;
mod hist;
pub mod markdown;
pub mod report;
pub mod run;
pub mod sysinfo;
pub mod timings;
mod vhost_user;

use std::fmt;
use std::time::Duration;

pub use dev_target::DevTarget;
pub use hist::Histogram;
pub use vhost_user::VhostUserTarget;

/// What one case does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Random reads (4 KiB by default).
    RandRead,
    /// Random writes (4 KiB by default).
    RandWrite,
    /// Sequential reads (1 MiB by default).
    SeqRead,
    /// Sequential writes (1 MiB by default).
    SeqWrite,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 4] = [Workload::RandRead, Workload::RandWrite, Workload::SeqRead, Workload::SeqWrite];

    /// The name on command lines and in reports (also fio's `--rw=` value).
    pub fn name(self) -> &'static str {
        match self {
            Workload::RandRead => "randread",
            Workload::RandWrite => "randwrite",
            Workload::SeqRead => "seqread",
            Workload::SeqWrite => "seqwrite",
        }
    }

    /// fio's `--rw=` value.
    pub fn fio_rw(self) -> &'static str {
        match self {
            Workload::RandRead => "randread",
            Workload::RandWrite => "randwrite",
            Workload::SeqRead => "read",
            Workload::SeqWrite => "write",
        }
    }

    /// True for writes.
    pub fn is_write(self) -> bool {
        matches!(self, Workload::RandWrite | Workload::SeqWrite)
    }

    /// True for random offsets.
    pub fn is_random(self) -> bool {
        matches!(self, Workload::RandRead | Workload::RandWrite)
    }

    /// The block size used unless told otherwise: 4 KiB random, 1 MiB sequential.
    pub fn default_bs(self) -> u32 {
        if self.is_random() {
            4096
        } else {
            1 << 20
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Workload::ALL.into_iter().find(|w| w.name() == s).ok_or_else(|| {
            let names: Vec<_> = Workload::ALL.iter().map(|w| w.name()).collect();
            format!("unknown workload '{s}' (one of: {})", names.join(", "))
        })
    }
}

/// When a case stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Issue new requests until this much time has passed, then drain.
    Time(Duration),
    /// Issue exactly this many requests.
    Ops(u64),
}

/// One measurement: a workload at a block size and queue depth over `[0, range)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    /// What to do.
    pub workload: Workload,
    /// Bytes per request.
    pub bs: u32,
    /// Requests kept in flight.
    pub qd: u32,
    /// Bytes of the disk touched, from offset 0 (a multiple of `bs`).
    pub range: u64,
    /// When to stop.
    pub limit: Limit,
    /// Seed of the offset generator (runs are reproducible).
    pub seed: u64,
}

/// What a case measured.
#[derive(Debug)]
pub struct CaseStats {
    /// Requests completed.
    pub ops: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Wall time from the first submission to the last completion.
    pub elapsed: Duration,
    /// Latency of each request, in nanoseconds, from submission to completion seen.
    pub latency: Histogram,
}

impl CaseStats {
    /// Requests per second.
    pub fn iops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Megabytes (10^6 bytes) per second.
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Something the harness can measure: a device driven in-process, or (later) a vhost-user
/// export driven through a client library. Each target runs its own submission loop, with the
/// shared pieces ([`Histogram`], [`OffsetGen`]) so results mean the same thing.
pub trait BenchTarget {
    /// A short name for reports (`raw:/dev/shm/x.img`, `vhost-user:/run/strata.sock`).
    fn describe(&self) -> String;
    /// Size of the disk in bytes.
    fn size(&self) -> u64;
    /// Writes are refused.
    fn read_only(&self) -> bool;
    /// Run one case to its limit. Fails on the first I/O error, naming the request.
    fn run(&mut self, case: &Case) -> blockdev::Result<CaseStats>;
}

/// Offsets for one request slot: random block-aligned offsets in `[0, range)` (xorshift, seeded
/// per slot), or a sequential cursor shared by the slots of a case.
#[derive(Debug, Clone)]
pub struct OffsetGen {
    state: u64,
    blocks: u64,
    bs: u64,
}

impl OffsetGen {
    /// A random generator for slot `slot` of `case`.
    pub fn random(case: &Case, slot: u32) -> Self {
        let bs = u64::from(case.bs.max(1));
        // splitmix64 of seed and slot, so slots do not follow each other; never 0 (xorshift's fixpoint).
        let mut z = case.seed.wrapping_add(u64::from(slot).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        OffsetGen { state: z | 1, blocks: (case.range / bs).max(1), bs }
    }

    /// The next random offset.
    #[inline]
    pub fn next_random(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        // Multiply-shift maps x onto [0, blocks) without a division.
        let block = ((u128::from(x) * u128::from(self.blocks)) >> 64) as u64;
        block * self.bs
    }

    /// The offset after `cur` in a sequential pass over the range, wrapping at its end.
    #[inline]
    pub fn next_sequential(&self, cur: u64) -> u64 {
        let next = cur + self.bs;
        if next + self.bs > self.blocks * self.bs {
            0
        } else {
            next
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(range: u64) -> Case {
        Case { workload: Workload::RandRead, bs: 4096, qd: 1, range, limit: Limit::Ops(1), seed: 7 }
    }

    #[test]
    fn random_offsets_are_aligned_and_in_range() {
        let mut g = OffsetGen::random(&case(1 << 20), 3);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let off = g.next_random();
            assert!(off.is_multiple_of(4096) && off + 4096 <= 1 << 20, "{off}");
            seen.insert(off);
        }
        assert_eq!(seen.len(), 256, "every block of a 1 MiB range is hit");
    }

    #[test]
    fn slots_get_different_sequences() {
        let (mut a, mut b) = (OffsetGen::random(&case(1 << 30), 0), OffsetGen::random(&case(1 << 30), 1));
        let same = (0..100).filter(|_| a.next_random() == b.next_random()).count();
        assert!(same < 5);
    }

    #[test]
    fn sequential_wraps_at_range_end() {
        let g = OffsetGen::random(&Case { bs: 1 << 20, ..case(3 << 20) }, 0);
        assert_eq!(g.next_sequential(0), 1 << 20);
        assert_eq!(g.next_sequential(1 << 20), 2 << 20);
        assert_eq!(g.next_sequential(2 << 20), 0);
    }

    #[test]
    fn workload_names_parse() {
        for w in Workload::ALL {
            assert_eq!(w.name().parse::<Workload>().unwrap(), w);
        }
        assert!("randrw".parse::<Workload>().unwrap_err().contains("randread, randwrite"));
    }
}
