//! A seeded random workload: reads, writes (some FUA), flushes, discards and write-zeroes of
//! random sizes at random offsets, kept at a chosen queue depth on one thread's `IoCtx`.
//!
//! Run it through a [`ModelDev`](super::ModelDev) (directly, or with layers between) and every
//! read is checked; the first error (a model mismatch or a device error) ends the run.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::{BlockDev, Error, ErrorKind, IoCtx, IoTag, Result};

/// Relative weights of the operation kinds (0 disables a kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    /// Reads.
    pub read: u32,
    /// Writes (FUA or not).
    pub write: u32,
    /// Flushes.
    pub flush: u32,
    /// Discards.
    pub discard: u32,
    /// Write-zeroes (with or without unmap).
    pub write_zeroes: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights { read: 40, write: 40, flush: 6, discard: 7, write_zeroes: 7 }
    }
}

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadConfig {
    /// Seed of every random choice (ops, sizes, offsets, data).
    pub seed: u64,
    /// Number of operations.
    pub ops: u64,
    /// Operations kept in flight at once (1 = one after the other).
    pub queue_depth: usize,
    /// Mix of operation kinds.
    pub weights: Weights,
    /// Smallest request in bytes (a multiple of `align`).
    pub min_len: u64,
    /// Largest request in bytes; sizes are log-uniform between the two (many small, some big).
    pub max_len: u64,
    /// Offsets and lengths are multiples of this (512 or 4096).
    pub align: u64,
    /// Percentage of writes that carry FUA.
    pub fua_percent: u32,
    /// Let modifying ops overlap other modifying ops in flight (the model then accepts either
    /// order); when false they never do. Reads may always overlap anything.
    pub allow_overlap: bool,
    /// Restrict offsets to `[start, start+len)`; `None` means the whole device.
    pub region: Option<(u64, u64)>,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            seed: 1,
            ops: 1000,
            queue_depth: 1,
            weights: Weights::default(),
            min_len: 512,
            max_len: 128 << 10,
            align: 512,
            fua_percent: 10,
            allow_overlap: false,
            region: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkloadStats {
    /// Reads completed.
    pub reads: u64,
    /// Writes completed (FUA included).
    pub writes: u64,
    /// Of which FUA.
    pub fua_writes: u64,
    /// Flushes completed.
    pub flushes: u64,
    /// Discards completed.
    pub discards: u64,
    /// Write-zeroes completed.
    pub write_zeroes: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written (writes only).
    pub bytes_written: u64,
}

#[derive(Debug, Clone, Copy)]
enum GenOp {
    Read { off: u64, len: u64 },
    Write { off: u64, len: u64, fua: bool, id: u64 },
    Flush,
    Discard { off: u64, len: u64 },
    WriteZeroes { off: u64, len: u64, unmap: bool },
}

impl GenOp {
    fn modified_range(&self) -> Option<(u64, u64)> {
        match *self {
            GenOp::Write { off, len, .. } | GenOp::Discard { off, len } | GenOp::WriteZeroes { off, len, .. } => {
                Some((off, len))
            }
            _ => None,
        }
    }
}

struct Gen {
    rng: SmallRng,
    cfg: WorkloadConfig,
    region: (u64, u64),
    issued: u64,
    next_id: u64,
    in_flight: Vec<(u64, (u64, u64))>,
    stats: WorkloadStats,
    error: Option<Error>,
}

impl Gen {
    fn len(&mut self) -> u64 {
        let a = self.cfg.align;
        let lo = (self.cfg.min_len / a).max(1);
        let hi = (self.cfg.max_len / a).max(lo).min(self.region.1 / a);
        let x: f64 = self.rng.gen();
        let n = (lo as f64 * ((hi as f64 + 1.0) / lo as f64).powf(x)) as u64;
        n.clamp(lo, hi) * a
    }

    fn offset(&mut self, len: u64) -> u64 {
        let slots = (self.region.1 - len) / self.cfg.align;
        self.region.0 + self.rng.gen_range(0..=slots) * self.cfg.align
    }

    fn overlaps_in_flight(&self, off: u64, len: u64) -> bool {
        self.in_flight.iter().any(|&(_, (o, l))| o < off + len && off < o + l)
    }

    /// A range for a modifying op, avoiding in-flight ones unless overlap is allowed.
    fn free_range(&mut self) -> Option<(u64, u64)> {
        for _ in 0..16 {
            let len = self.len();
            let off = self.offset(len);
            if self.cfg.allow_overlap || !self.overlaps_in_flight(off, len) {
                return Some((off, len));
            }
        }
        None
    }

    fn next_op(&mut self) -> GenOp {
        let w = self.cfg.weights;
        let total = w.read + w.write + w.flush + w.discard + w.write_zeroes;
        let mut pick = self.rng.gen_range(0..total.max(1));
        let mut kind = 0;
        for (i, weight) in [w.read, w.write, w.flush, w.discard, w.write_zeroes].into_iter().enumerate() {
            if pick < weight {
                kind = i;
                break;
            }
            pick -= weight;
        }
        match kind {
            2 => GenOp::Flush,
            0 => {
                let len = self.len();
                GenOp::Read { off: self.offset(len), len }
            }
            k => match self.free_range() {
                None => {
                    let len = self.len();
                    GenOp::Read { off: self.offset(len), len }
                }
                Some((off, len)) => match k {
                    1 => {
                        self.next_id += 1;
                        let fua = self.rng.gen_range(0..100) < self.cfg.fua_percent;
                        GenOp::Write { off, len, fua, id: self.next_id }
                    }
                    3 => GenOp::Discard { off, len },
                    _ => GenOp::WriteZeroes { off, len, unmap: self.rng.gen_bool(0.5) },
                },
            },
        }
    }
}

/// Fill `buf` (written at byte `off`) with a pattern unique to write `id` and to each sector:
/// every 512-byte sector starts with `id` and its absolute sector number (little endian).
pub fn fill_pattern(buf: &mut [u8], off: u64, id: u64) {
    for (i, sector) in buf.chunks_mut(512).enumerate() {
        let s = off / 512 + i as u64;
        sector.fill((id as u8) ^ (s as u8) ^ 0x5a);
        let n = sector.len().min(8);
        sector[..n].copy_from_slice(&id.to_le_bytes()[..n]);
        if sector.len() >= 16 {
            sector[8..16].copy_from_slice(&s.to_le_bytes());
        }
    }
}

async fn execute(io: &IoCtx, dev: &Arc<dyn BlockDev>, op: GenOp) -> Result<()> {
    let tag = IoTag::data("workload");
    match op {
        GenOp::Read { off, len } => {
            let mut buf = io.pool().shared(len as usize);
            dev.read(io, off, buf.io(), tag).await
        }
        GenOp::Write { off, len, fua, id } => {
            let mut buf = io.pool().shared(len as usize);
            fill_pattern(buf.bytes_mut(), off, id);
            dev.write(io, off, buf.io(), fua, tag).await
        }
        GenOp::Flush => dev.flush(io, tag).await,
        GenOp::Discard { off, len } => dev.discard(io, off, len, tag).await,
        GenOp::WriteZeroes { off, len, unmap } => dev.write_zeroes(io, off, len, unmap, tag).await,
    }
}

fn count(stats: &mut WorkloadStats, op: GenOp) {
    match op {
        GenOp::Read { len, .. } => {
            stats.reads += 1;
            stats.bytes_read += len;
        }
        GenOp::Write { len, fua, .. } => {
            stats.writes += 1;
            stats.fua_writes += u64::from(fua);
            stats.bytes_written += len;
        }
        GenOp::Flush => stats.flushes += 1,
        GenOp::Discard { .. } => stats.discards += 1,
        GenOp::WriteZeroes { .. } => stats.write_zeroes += 1,
    }
}

async fn worker(io: IoCtx, dev: Arc<dyn BlockDev>, gen: Rc<RefCell<Gen>>) {
    loop {
        let (seq, op) = {
            let mut g = gen.borrow_mut();
            if g.error.is_some() || g.issued >= g.cfg.ops {
                return;
            }
            g.issued += 1;
            let op = g.next_op();
            let seq = g.issued;
            if let Some(r) = op.modified_range() {
                g.in_flight.push((seq, r));
            }
            (seq, op)
        };
        let r = execute(&io, &dev, op).await;
        let mut g = gen.borrow_mut();
        g.in_flight.retain(|&(s, _)| s != seq);
        match r {
            Ok(()) => count(&mut g.stats, op),
            Err(e) => {
                if g.error.is_none() {
                    g.error = Some(e.context(format_args!("workload op #{seq} {op:?}")));
                }
                return;
            }
        }
    }
}

/// Run `cfg` against `dev` on `io` (spawning `queue_depth` tasks) and wait for all of them.
/// Returns the first error: a model mismatch (`ErrorKind::Corrupt`) or a device error.
pub async fn run(io: &IoCtx, dev: Arc<dyn BlockDev>, cfg: &WorkloadConfig) -> Result<WorkloadStats> {
    let info = dev.info();
    let align = cfg.align.max(u64::from(info.logical_block_size)).max(1);
    let region = cfg.region.unwrap_or((0, info.size));
    let region = (region.0, region.1 - region.1 % align);
    if !region.0.is_multiple_of(align) || region.1 < align || region.0 + region.1 > info.size || cfg.max_len < align {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "workload: region {region:?}, align {align}, max_len {} do not fit {}",
                cfg.max_len,
                dev.describe()
            ),
        ));
    }
    let gen = Rc::new(RefCell::new(Gen {
        rng: SmallRng::seed_from_u64(cfg.seed),
        cfg: WorkloadConfig { align, ..cfg.clone() },
        region,
        issued: 0,
        next_id: cfg.seed << 32,
        in_flight: Vec::new(),
        stats: WorkloadStats::default(),
        error: None,
    }));
    let handles: Vec<_> =
        (0..cfg.queue_depth.max(1)).map(|_| io.spawn(worker(io.clone(), dev.clone(), gen.clone()))).collect();
    for h in handles {
        h.await;
    }
    let mut g = gen.borrow_mut();
    match g.error.take() {
        Some(e) => Err(e),
        None => Ok(g.stats),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdev::ModelDev;
    use crate::MemDisk;

    #[test]
    fn small_run_on_memdisk_agrees_with_the_model() {
        let io = IoCtx::new().unwrap();
        let model = ModelDev::new(Arc::new(MemDisk::new(1 << 20).unwrap()));
        let cfg = WorkloadConfig { ops: 500, queue_depth: 4, max_len: 16 << 10, ..Default::default() };
        let stats = io.block_on(run(&io, Arc::new(model.clone()), &cfg)).unwrap();
        assert_eq!(stats.reads + stats.writes + stats.flushes + stats.discards + stats.write_zeroes, 500);
        assert!(model.stats().sectors_checked > 0);
    }

    #[test]
    fn pattern_names_write_and_sector() {
        let mut buf = vec![0u8; 1024];
        fill_pattern(&mut buf, 4096, 3);
        assert_eq!(&buf[0..8], &3u64.to_le_bytes());
        assert_eq!(&buf[512 + 8..512 + 16], &9u64.to_le_bytes());
    }
}
