//! A vhost-user-blk server as a bench target: libblkio's `virtio-blk-vhost-user` driver drives
//! any server (strata's daemon, qemu-storage-daemon, SPDK) through its socket, from one thread
//! with one or more queues (`socket=PATH,num-queues=N`: slot `s` of the queue depth goes to
//! queue `s % N`), with the same offsets, histogram and limits as [`super::DevTarget`].

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
    queues: Vec<Blkioq>,
    size: u64,
    read_only: bool,
    block: u32,
}

fn blkio_err(socket: &Path, what: &str, e: blkio::Error) -> Error {
    Error::new(ErrorKind::Io, format!("vhost-user {}: {what}: {e}", socket.display()))
}

impl VhostUserTarget {
    /// Connect to the server at `socket` with `num_queues` queues (at least 1). `read_only`
    /// declares the device read-only (libblkio refuses to attach a read-only device otherwise).
    pub fn connect(socket: &Path, read_only: bool, num_queues: u32) -> Result<VhostUserTarget> {
        let num_queues = i32::try_from(num_queues.clamp(1, 64)).unwrap_or(1);
        let path = socket.to_str().ok_or_else(|| {
            Error::new(ErrorKind::InvalidInput, format!("socket path {} is not UTF-8", socket.display()))
        })?;
        let mut b = Blkio::new("virtio-blk-vhost-user").map_err(|e| blkio_err(socket, "libblkio driver", e))?;
        b.set_str("path", path).map_err(|e| blkio_err(socket, "set path", e))?;
        b.set_bool("read-only", read_only).map_err(|e| blkio_err(socket, "set read-only", e))?;
        b.connect().map_err(|e| blkio_err(socket, "connect", e))?;
        b.set_i32("num-queues", num_queues).map_err(|e| blkio_err(socket, "set num-queues", e))?;
        let mut queues = b.start().map_err(|e| blkio_err(socket, "start", e))?.queues;
        if queues.is_empty() {
            return Err(Error::new(ErrorKind::Io, format!("vhost-user {}: no queue", socket.display())));
        }
        if queues.len() > 1 {
            for q in &mut queues {
                q.set_completion_fd_enabled(true);
            }
        }
        let size = b.get_u64("capacity").map_err(|e| blkio_err(socket, "capacity", e))?;
        let block = b.get_i32("request-alignment").unwrap_or(512).max(1) as u32;
        Ok(VhostUserTarget { socket: socket.to_path_buf(), blkio: b, queues, size, read_only, block })
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
        match self.queues.len() {
            1 => format!("vhost-user:{}", self.socket.display()),
            n => format!("vhost-user:{} ({n} queues)", self.socket.display()),
        }
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
        let nq = self.queues.len();
        let mut submit = |slot: usize, queues: &mut [Blkioq], slots: &mut [Slot], now: Instant| {
            let queue = &mut queues[slot % queues.len()];
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
            submit(slot, &mut self.queues, &mut slots, now);
            issued += 1;
            in_flight += 1;
        }
        let mut comps: Vec<MaybeUninit<Completion>> = (0..qd).map(|_| MaybeUninit::uninit()).collect();
        let mut failure = None;
        let mut next_queue = 0usize;
        // Start with "found some" so the first pass submits before anything sleeps.
        let mut pass_completions = 1usize;
        while in_flight > 0 {
            let qi = next_queue;
            next_queue = (next_queue + 1) % nq;
            if nq > 1 && qi == 0 {
                // A whole pass over the queues (each do_io also submits what was queued) found
                // nothing: sleep until a queue signals.
                if pass_completions == 0 {
                    wait_for_completions(&self.queues, &self.socket)?;
                }
                pass_completions = 0;
            }
            // One queue: block in libblkio. Several: take what each has without blocking.
            let min = usize::from(nq == 1);
            let n =
                self.queues[qi].do_io(&mut comps, min, None, None).map_err(|e| blkio_err(&self.socket, "do_io", e))?;
            pass_completions += n;
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
                    submit(slot, &mut self.queues, &mut slots, now);
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

/// Sleep until one of `queues` signals its completion eventfd, and clear the signals.
fn wait_for_completions(queues: &[Blkioq], socket: &Path) -> Result<()> {
    let mut fds: Vec<libc::pollfd> = queues
        .iter()
        .filter_map(|q| q.get_completion_fd())
        .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
        .collect();
    loop {
        // SAFETY: poll(2) on a live array of `fds.len()` pollfds owned by this frame.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        if rc > 0 {
            break;
        }
        if rc == 0 {
            // Nothing signalled in a second: look at the queues anyway (a missed edge costs a poll).
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::new(ErrorKind::Io, format!("vhost-user {}: poll: {e}", socket.display())));
        }
    }
    for p in fds.iter().filter(|p| p.revents & libc::POLLIN != 0) {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a live u64 from libblkio's non-blocking completion eventfd.
        unsafe { libc::read(p.fd, (&mut v as *mut u64).cast(), 8) };
    }
    Ok(())
}
