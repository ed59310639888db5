//! A vhost-user-blk server as a bench target: libblkio's `virtio-blk-vhost-user` driver drives
//! any server (strata's daemon, qemu-storage-daemon, SPDK) through its socket, from one thread
//! and one queue, with the same offsets, histogram and limits as [`super::DevTarget`].

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::time::Instant;

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use blockdev::{Error, ErrorKind, Result};

use super::dev_target::check_case;
use super::{BenchTarget, Case, CaseStats, Histogram, Limit, OffsetGen};

/// A connected libblkio client of one vhost-user-blk socket.
pub struct VhostUserTarget {
    socket: PathBuf,
    blkio: Blkio,
    queue: Blkioq,
    size: u64,
    read_only: bool,
    block: u32,
}

fn blkio_err(socket: &Path, what: &str, e: blkio::Error) -> Error {
    Error::new(ErrorKind::Io, format!("vhost-user {}: {what}: {e}", socket.display()))
}

impl VhostUserTarget {
    /// Connect to the server at `socket` with one queue. `read_only` declares the device
    /// read-only (libblkio refuses to attach a read-only device otherwise).
    pub fn connect(socket: &Path, read_only: bool) -> Result<VhostUserTarget> {
        let path = socket.to_str().ok_or_else(|| {
            Error::new(ErrorKind::InvalidInput, format!("socket path {} is not UTF-8", socket.display()))
        })?;
        let mut b = Blkio::new("virtio-blk-vhost-user").map_err(|e| blkio_err(socket, "libblkio driver", e))?;
        b.set_str("path", path).map_err(|e| blkio_err(socket, "set path", e))?;
        b.set_bool("read-only", read_only).map_err(|e| blkio_err(socket, "set read-only", e))?;
        b.connect().map_err(|e| blkio_err(socket, "connect", e))?;
        b.set_i32("num-queues", 1).map_err(|e| blkio_err(socket, "set num-queues", e))?;
        let mut started = b.start().map_err(|e| blkio_err(socket, "start", e))?;
        let queue = started
            .queues
            .pop()
            .ok_or_else(|| Error::new(ErrorKind::Io, format!("vhost-user {}: no queue", socket.display())))?;
        let size = b.get_u64("capacity").map_err(|e| blkio_err(socket, "capacity", e))?;
        let block = b.get_i32("request-alignment").unwrap_or(512).max(1) as u32;
        Ok(VhostUserTarget { socket: socket.to_path_buf(), blkio: b, queue, size, read_only, block })
    }
}

/// What one slot has in flight.
#[derive(Clone, Copy)]
struct Slot {
    gen_state: u64,
    started: Option<Instant>,
}

impl BenchTarget for VhostUserTarget {
    fn describe(&self) -> String {
        format!("vhost-user:{}", self.socket.display())
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn run(&mut self, case: &Case) -> Result<CaseStats> {
        check_case(case, self.size, self.read_only, self.block, &self.describe())?;
        let bs = case.bs as usize;
        let qd = case.qd as usize;
        let region: MemoryRegion =
            self.blkio.alloc_mem_region(bs * qd).map_err(|e| blkio_err(&self.socket, "allocate buffers", e))?;
        if let Err(e) = self.blkio.map_mem_region(&region) {
            self.blkio.free_mem_region(&region);
            return Err(blkio_err(&self.socket, "map buffers", e));
        }
        let result = self.run_with(case, &region);
        self.blkio.unmap_mem_region(&region);
        self.blkio.free_mem_region(&region);
        result
    }
}

impl VhostUserTarget {
    fn run_with(&mut self, case: &Case, region: &MemoryRegion) -> Result<CaseStats> {
        let bs = case.bs as usize;
        let qd = case.qd as usize;
        let write = case.workload.is_write();
        let random = case.workload.is_random();
        if write {
            // SAFETY: the region is a live mapping of `bs * qd` bytes that libblkio allocated for
            // us; no request is in flight yet, so nothing else touches it.
            let bytes = unsafe { std::slice::from_raw_parts_mut(region.addr as *mut u8, bs * qd) };
            let mut x = case.seed | 1;
            for chunk in bytes.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
        }
        let max_ops = match case.limit {
            Limit::Ops(n) => n,
            Limit::Time(_) => u64::MAX,
        };
        let mut gens: Vec<OffsetGen> = (0..case.qd).map(|s| OffsetGen::random(case, s)).collect();
        let mut slots = vec![Slot { gen_state: 0, started: None }; qd];
        let latency = Histogram::new();
        let mut cursor = 0u64;
        let mut issued = 0u64;
        let mut in_flight = 0usize;
        let start = Instant::now();
        let deadline = match case.limit {
            Limit::Time(d) => Some(start + d),
            Limit::Ops(_) => None,
        };
        let mut submit = |slot: usize, queue: &mut Blkioq, slots: &mut [Slot], now: Instant| {
            let off = if random {
                gens[slot].next_random()
            } else {
                let cur = cursor;
                cursor = gens[slot].next_sequential(cur);
                cur
            };
            let buf = (region.addr + slot * bs) as *mut u8;
            if write {
                queue.write(off, buf, bs, slot, ReqFlags::empty());
            } else {
                queue.read(off, buf, bs, slot, ReqFlags::empty());
            }
            slots[slot].started = Some(now);
            slots[slot].gen_state = off;
        };
        let now = Instant::now();
        for slot in 0..qd {
            if issued >= max_ops {
                break;
            }
            submit(slot, &mut self.queue, &mut slots, now);
            issued += 1;
            in_flight += 1;
        }
        let mut comps: Vec<MaybeUninit<Completion>> = (0..qd).map(|_| MaybeUninit::uninit()).collect();
        let mut failure = None;
        while in_flight > 0 {
            let n = self.queue.do_io(&mut comps, 1, None, None).map_err(|e| blkio_err(&self.socket, "do_io", e))?;
            let now = Instant::now();
            let stop = deadline.is_some_and(|d| now >= d) || failure.is_some();
            for c in &comps[..n] {
                // SAFETY: do_io initialised the first `n` completions.
                let c = unsafe { c.assume_init_ref() };
                in_flight -= 1;
                let slot = c.user_data;
                if slot >= qd {
                    failure
                        .get_or_insert_with(|| Error::new(ErrorKind::Io, "vhost-user: completion for an unknown slot"));
                    continue;
                }
                if c.ret != 0 {
                    failure.get_or_insert_with(|| {
                        Error::new(
                            ErrorKind::Io,
                            format!(
                                "bench {} of {bs} bytes at offset {} on vhost-user {}: error {}",
                                case.workload,
                                slots[slot].gen_state,
                                self.socket.display(),
                                c.ret
                            ),
                        )
                    });
                    continue;
                }
                if let Some(t) = slots[slot].started.take() {
                    latency.record(now.duration_since(t).as_nanos() as u64);
                }
                if !stop && failure.is_none() && issued < max_ops {
                    submit(slot, &mut self.queue, &mut slots, now);
                    issued += 1;
                    in_flight += 1;
                }
            }
        }
        let elapsed = start.elapsed();
        if let Some(e) = failure {
            return Err(e);
        }
        let ops = latency.count();
        Ok(CaseStats { ops, bytes: ops * u64::from(case.bs), elapsed, latency })
    }
}
