//! Test devices for every crate's tests (feature `test-utils`): all are [`BlockDev`]s wrapping
//! an inner `Arc<dyn BlockDev>`, so they stack anywhere (under a RAID member, a qcow2 image
//! file, a thin pool's metadata device) and several can be used at once.
//!
//! Another crate's tests get them with
//! `[dev-dependencies] blockdev = { workspace = true, features = ["test-utils"] }`.
//!
//! # `FaultDev` — injected errors ([`fault`])
//!
//! `FaultDev::new(inner)`; rules change at run time through `&self`:
//! - `add_rule(FaultRule::new().kind(OpKind::Write).class(IoClass::Metadata).site_prefix("qcow2.l2")
//!   .after(n).times(k).error(FaultError::NoSpace)) -> RuleId`; `remove_rule(id)`, `clear_rules()`.
//!   A rule counts the operations it matches from the moment it is added, lets the first `after`
//!   through, then fails the next `times` (default: all) with EIO (`ErrorKind::Io`) or ENOSPC
//!   (`ErrorKind::NoSpace`). Sites match exactly (`site("qcow2.l2_update")`) or by prefix.
//! - Shorthands: `fail_nth(n)` (the nth op of any kind from now, 1-based), `fail_nth_of(kind, n,
//!   error)`, `fail_all()` (a dead disk).
//! - Bad sectors (512 B units): `add_bad_sectors(&[..])`, `clear_bad_sectors()`, `bad_sectors()`;
//!   ops touching them fail with EIO, unless `set_repair_on_write(true)`: then a write, discard
//!   or write-zeroes covering them succeeds and remaps them (they become good).
//! - Bit rot: `add_bit_flip(sector, bit)` flips that bit in every read of the sector until a write
//!   covers it; `clear_bit_flips()`.
//! - Counters: `injected()` (failed ops + reads with flipped bits), `op_count(kind)`, `total_ops()`.
//! - A failed write, discard or write-zeroes never reaches the inner device.
//!
//! # `CrashDev` — a volatile write cache to lose on purpose ([`crash`])
//!
//! `CrashDev::new(inner)` (cheap to clone; clones share state). Completed writes, discards and
//! write-zeroes stay in an in-memory log until a flush, which writes them to `inner` in completion
//! order and flushes it; reads see inner + log (newest wins). FUA writes go to `inner` at once.
//! - `crash(&io, mode).await -> Result<CrashReport>`: keep the volatile writes `mode` chooses —
//!   `CrashMode::KeepNone`, `KeepAll`, `Prefix(n)`, `RandomPrefix { seed }`, `RandomSubset { seed }`,
//!   `TearOne { seed, granularity: 512 | 4096 }` (all but one kept; that one only partly) — write
//!   them plus every FUA write to `inner` in order, flush it, then fail every later op with
//!   `ErrorKind::Io`. On a `RawFile`, the file then holds exactly the survivors: reopen it.
//! - `crash_at_write(n, mode)` / `crash_at_flush(n, mode)`: crash by itself when the nth
//!   modifying op / flush from now arrives (that op fails, writes nothing). Count the ops of a
//!   clean run with `writes()` / `flushes()` to sweep crash points.
//! - `CrashDev::group(&[a, b, c])`: one power supply — when any member crashes (by hand or at
//!   its armed point) all crash at once, each by the same mode with its own seed (RAID members).
//!   Ungrouped CrashDevs crash independently.
//! - `is_crashed()`, `last_crash()` (with the torn write's kept ranges), `volatile_writes()`,
//!   `inner() -> Option<Arc<dyn BlockDev>>`: after the crash is applied the CrashDev drops its
//!   handle on `inner`, so once the test drops its own, the file reopens writable (OFD lock free).
//!
//! # `ModelDev` — a shadow disk that checks every read ([`model`])
//!
//! `ModelDev::new(inner)` (inner reads zeros now) or `ModelDev::with_unknown_contents(inner)`.
//! It forwards every op and tracks 512-byte sectors sparsely: reads must return the latest
//! completed value or that of a write overlapping them in time; a discard leaves "zeros or old".
//! Mismatches come back as `ErrorKind::Corrupt` errors naming the sector, the bytes found and the
//! values expected (first bytes and a CRC-32).
//! - `verify_all(&dev, &io).await`: read all of `dev` and check it against the current values.
//! - `verify_after_crash(&dev, &io).await`: each sector holds its stable value (flushed or FUA)
//!   or any value written since the last flush. `dev` is the crashed device's inner device (or
//!   the file reopened). `verify_range(&dev, &io, off, len, after_crash)` for part of a big disk.
//! - `recover(&io, new_inner).await -> ModelDev`: verify after a crash and get a model of what
//!   the device now holds, to go on testing.
//! - `expected(off, len) -> Result<Vec<u8>>`, `stats()`.
//! - Requests through a `ModelDev` must be 512-byte aligned (else `InvalidInput`, not forwarded).
//!   A sector read while an overlapping write is in flight may be any byte-wise mix of the
//!   candidates (a page-cache copy is not atomic); everywhere else the match is exact.
//!
//! # Workloads ([`workload`])
//!
//! `workload::run(&io, Arc<dyn BlockDev>, &WorkloadConfig { seed, ops, queue_depth, weights,
//! min_len, max_len, align, fua_percent, allow_overlap, region }).await -> Result<WorkloadStats>`
//! runs seeded random reads, writes (some FUA), flushes, discards and write-zeroes at the given
//! queue depth on `io`; put a `ModelDev` in the stack to check it. Stops at the first error.
//!
//! ```
//! use std::sync::Arc;
//! use blockdev::testdev::{workload, CrashDev, CrashMode, ModelDev};
//! use blockdev::{BlockDev, IoCtx, MemDisk};
//!
//! let io = IoCtx::new().unwrap();
//! let disk: Arc<dyn BlockDev> = Arc::new(MemDisk::new(1 << 20).unwrap());
//! let crash = CrashDev::new(disk.clone());
//! let model = ModelDev::new(Arc::new(crash.clone()));
//! let cfg = workload::WorkloadConfig { ops: 200, queue_depth: 4, max_len: 8192, ..Default::default() };
//! io.block_on(workload::run(&io, Arc::new(model.clone()), &cfg)).unwrap();
//! io.block_on(crash.crash(&io, CrashMode::RandomSubset { seed: 7 })).unwrap();
//! io.block_on(model.verify_after_crash(&*disk, &io)).unwrap();
//! ```

pub mod crash;
pub mod fault;
pub mod model;
pub mod workload;

pub use crash::{CrashDev, CrashMode, CrashReport, TornWrite};
pub use fault::{FaultDev, FaultError, FaultRule, OpKind, RuleId, SiteMatch};
pub use model::{ModelDev, ModelStats};
pub use workload::{WorkloadConfig, WorkloadStats};

#[cfg(doc)]
use crate::BlockDev;
