//! [`DevTarget`]: the bench target for any `Arc<dyn BlockDev>`, driven from one thread's
//! [`IoCtx`]. One task per queue slot keeps one request in flight with its own pooled, aligned
//! buffer; the tasks share one histogram and a few counters (`Cell`s: one thread, no locks).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use blockdev::{BlockDev, Error, ErrorKind, IoCtx, IoTag, Result};

use super::{BenchTarget, Case, CaseStats, Histogram, Limit, OffsetGen};

/// Tag of every bench request.
const TAG: IoTag = IoTag::data("bench");

/// Drives a device in-process.
pub struct DevTarget {
    dev: Arc<dyn BlockDev>,
    io: IoCtx,
}

impl DevTarget {
    /// Measure `dev` from this thread, on a new engine.
    pub fn new(dev: Arc<dyn BlockDev>) -> Result<Self> {
        Ok(DevTarget { dev, io: IoCtx::new()? })
    }

    /// Measure `dev` on an existing engine of this thread.
    pub fn with_ctx(dev: Arc<dyn BlockDev>, io: IoCtx) -> Self {
        DevTarget { dev, io }
    }

    /// The device.
    pub fn dev(&self) -> &Arc<dyn BlockDev> {
        &self.dev
    }
}

/// Refuse a case the device cannot run, naming what is wrong.
pub(crate) fn check_case(case: &Case, size: u64, read_only: bool, block: u32, what: &str) -> Result<()> {
    let bad = |msg: String| Err(Error::new(ErrorKind::InvalidInput, format!("bench {what}: {msg}")));
    if case.bs == 0 || case.qd == 0 {
        return bad(format!("block size ({}) and queue depth ({}) must be positive", case.bs, case.qd));
    }
    if case.range < u64::from(case.bs) || case.range > size {
        return bad(format!("range {} must hold one {}-byte block and fit the {size}-byte disk", case.range, case.bs));
    }
    if block > 0 && !case.bs.is_multiple_of(block) {
        return bad(format!("block size {} is not a multiple of the disk's {block}-byte logical block", case.bs));
    }
    if case.workload.is_write() && read_only {
        return Err(Error::new(ErrorKind::ReadOnly, format!("bench {what}: {} on a read-only disk", case.workload)));
    }
    Ok(())
}

struct Shared {
    latency: Histogram,
    issued: Cell<u64>,
    cursor: Cell<u64>,
    stop: Cell<bool>,
    failure: RefCell<Option<Error>>,
}

impl Shared {
    fn fail(&self, e: Error) {
        self.stop.set(true);
        self.failure.borrow_mut().get_or_insert(e);
    }
}

/// Fill `buf` with a pseudo-random pattern (so reads of written data move real bytes).
fn fill_pattern(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// One queue slot: issue, await, record, repeat until the limit.
async fn slot_loop(
    dev: Arc<dyn BlockDev>,
    io: IoCtx,
    case: Case,
    slot: u32,
    shared: Rc<Shared>,
    deadline: Option<Instant>,
) {
    let mut buf = io.pool().shared(case.bs as usize);
    let write = case.workload.is_write();
    let random = case.workload.is_random();
    if write {
        fill_pattern(buf.bytes_mut(), case.seed ^ (u64::from(slot) << 32));
    }
    let mut gen = OffsetGen::random(&case, slot);
    let max_ops = match case.limit {
        Limit::Ops(n) => n,
        Limit::Time(_) => u64::MAX,
    };
    let mut start = Instant::now();
    loop {
        let issued = shared.issued.get();
        if shared.stop.get() || issued >= max_ops {
            break;
        }
        shared.issued.set(issued + 1);
        let off = if random {
            gen.next_random()
        } else {
            let cur = shared.cursor.get();
            shared.cursor.set(gen.next_sequential(cur));
            cur
        };
        let res = if write {
            dev.write(&io, off, buf.io(), false, TAG).await
        } else {
            dev.read(&io, off, buf.io(), TAG).await
        };
        let now = Instant::now();
        if let Err(e) = res {
            shared.fail(e.context(format!("bench {} of {} bytes at offset {off}", case.workload, case.bs)));
            break;
        }
        shared.latency.record(now.duration_since(start).as_nanos() as u64);
        // The next request starts now: one clock read per request.
        start = now;
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
    }
}

impl BenchTarget for DevTarget {
    fn describe(&self) -> String {
        self.dev.describe()
    }

    fn size(&self) -> u64 {
        self.dev.info().size
    }

    fn read_only(&self) -> bool {
        self.dev.info().read_only
    }

    fn run(&mut self, case: &Case) -> Result<CaseStats> {
        let info = self.dev.info();
        check_case(case, info.size, info.read_only, info.logical_block_size, &self.dev.describe())?;
        let shared = Rc::new(Shared {
            latency: Histogram::new(),
            issued: Cell::new(0),
            cursor: Cell::new(0),
            stop: Cell::new(false),
            failure: RefCell::new(None),
        });
        let start = Instant::now();
        let deadline = match case.limit {
            Limit::Time(d) => Some(start + d),
            Limit::Ops(_) => None,
        };
        let slots: Vec<_> = (0..case.qd)
            .map(|slot| {
                self.io.spawn(slot_loop(self.dev.clone(), self.io.clone(), *case, slot, shared.clone(), deadline))
            })
            .collect();
        self.io.block_on(async {
            for s in slots {
                s.await;
            }
        });
        let elapsed = start.elapsed();
        if let Some(e) = shared.failure.borrow_mut().take() {
            return Err(e);
        }
        let ops = shared.latency.count();
        // Every slot task has finished and dropped its handle, so this is normally the only one;
        // copying the counters covers the case where one is still alive.
        let latency = match Rc::try_unwrap(shared) {
            Ok(sh) => sh.latency,
            Err(sh) => {
                let copy = Histogram::new();
                copy.merge(&sh.latency);
                copy
            }
        };
        Ok(CaseStats { ops, bytes: ops * u64::from(case.bs), elapsed, latency })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Workload;
    use blockdev::MemDisk;

    fn target() -> DevTarget {
        DevTarget::new(Arc::new(MemDisk::new(8 << 20).unwrap())).unwrap()
    }

    fn case(workload: Workload, qd: u32, ops: u64) -> Case {
        Case { workload, bs: workload.default_bs(), qd, range: 8 << 20, limit: Limit::Ops(ops), seed: 1 }
    }

    #[test]
    fn op_limit_runs_exactly_that_many_requests() {
        let mut t = target();
        for w in [Workload::RandWrite, Workload::RandRead, Workload::SeqWrite, Workload::SeqRead] {
            let stats = t.run(&case(w, 4, 300)).unwrap();
            assert_eq!(stats.ops, 300, "{w}");
            assert_eq!(stats.bytes, 300 * u64::from(w.default_bs()), "{w}");
            assert_eq!(stats.latency.count(), 300);
        }
    }

    #[test]
    fn percentiles_are_ordered() {
        let mut t = target();
        let stats = t.run(&case(Workload::RandRead, 8, 500)).unwrap();
        let h = &stats.latency;
        let qs: Vec<u64> = [0.5, 0.9, 0.99, 0.999, 1.0].iter().map(|&q| h.quantile(q)).collect();
        assert!(qs.windows(2).all(|w| w[0] <= w[1]), "{qs:?}");
        assert_eq!(qs[4], h.max());
        assert!(h.min() <= qs[0]);
        assert!(stats.iops() > 0.0 && stats.mbps() > 0.0);
    }

    #[test]
    fn time_limit_stops() {
        let mut t = target();
        let c = Case { limit: Limit::Time(std::time::Duration::from_millis(50)), ..case(Workload::RandRead, 2, 0) };
        let stats = t.run(&c).unwrap();
        assert!(stats.ops > 0 && stats.elapsed.as_millis() < 2000, "{stats:?}");
    }

    #[test]
    fn write_on_read_only_disk_is_refused() {
        let dev = Arc::new(MemDisk::new(8 << 20).unwrap());
        let e = check_case(&case(Workload::RandWrite, 1, 1), dev.info().size, true, 512, "mem").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ReadOnly);
    }

    #[test]
    fn bad_cases_are_refused() {
        let mut t = target();
        assert!(t.run(&Case { qd: 0, ..case(Workload::RandRead, 1, 1) }).is_err());
        assert!(t.run(&Case { range: 16 << 20, ..case(Workload::RandRead, 1, 1) }).is_err());
        assert!(t.run(&Case { bs: 100, range: 1000, ..case(Workload::RandRead, 1, 1) }).is_err());
    }
}
