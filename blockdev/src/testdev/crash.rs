//! `CrashDev`: a device with a volatile write cache that a test can lose on purpose.
//!
//! Writes (and discards, write-zeroes) completed since the last flush live only in an in-memory
//! log, in completion order; reads merge the inner device with the log (newest wins). A flush
//! applies the log to the inner device in order, flushes it and clears the log. A FUA write goes
//! to the inner device at once (and into the log, marked stable, so ordering stays exact).
//!
//! [`CrashDev::crash`] keeps some of the volatile writes according to a [`CrashMode`], writes the
//! survivors (and every stable entry) to the inner device in order, flushes it, lets go of it, and
//! marks the device crashed: every later operation fails with `ErrorKind::Io`. Sitting on a
//! `RawFile`, the file then holds exactly what survived, for a reopen or an outside checker.

use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Poll, Waker};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::{ready, BlockDev, DevInfo, Error, ErrorKind, IoBufs, IoCtx, IoFuture, IoTag, Result, SharedBuf};

/// Which volatile writes survive a crash. Stable entries (FUA writes) always survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every volatile write is lost.
    KeepNone,
    /// Every volatile write survives (as if the cache drained just in time).
    KeepAll,
    /// The first `n` volatile writes survive, in completion order.
    Prefix(usize),
    /// A prefix of random length (0 to all) survives.
    RandomPrefix {
        /// Seed of the choice.
        seed: u64,
    },
    /// Each volatile write survives with probability 1/2.
    RandomSubset {
        /// Seed of the choice.
        seed: u64,
    },
    /// Every volatile write survives except one, picked at random, which survives only in part:
    /// a random, non-empty, proper subset of its `granularity`-aligned blocks (512 or 4096). A
    /// write of one block is lost entirely.
    TearOne {
        /// Seed of the choice.
        seed: u64,
        /// Tear granularity in bytes (a power of two, at least 512).
        granularity: u64,
    },
}

/// What a crash did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CrashReport {
    /// Volatile log entries at the time of the crash.
    pub volatile: usize,
    /// Volatile entries that survived whole.
    pub kept: usize,
    /// The torn write, if one was torn.
    pub torn: Option<TornWrite>,
}

/// The write a `TearOne` crash tore.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TornWrite {
    /// Its byte range `(offset, length)`.
    pub range: (u64, u64),
    /// The byte ranges `(offset, length)` of it that survived (possibly none).
    pub kept: Vec<(u64, u64)>,
}

#[derive(Clone)]
enum LogData {
    Bytes(Arc<Vec<u8>>),
    Zeros,
}

#[derive(Clone)]
struct LogEntry {
    off: u64,
    len: u64,
    data: LogData,
    stable: bool,
    tag: IoTag,
}

/// A part of a log entry to write to the inner device: `[skip, skip+len)` of the entry.
struct Piece {
    entry: LogEntry,
    skip: u64,
    len: u64,
}

#[derive(Debug, Clone, Copy)]
enum AutoPoint {
    Write(u64),
    Flush(u64),
}

#[derive(Default)]
struct CrashState {
    log: Vec<LogEntry>,
    crashed: bool,
    writes: u64,
    flushes: u64,
    auto: Option<(AutoPoint, CrashMode)>,
    last_report: Option<CrashReport>,
}

/// Serialises flushes, FUA writes and the crash itself (they all write the inner device).
#[derive(Default)]
struct Gate {
    st: Mutex<(bool, Vec<Waker>)>,
}

struct Shared {
    /// The inner device; released (dropped) once the crash has been applied, so a test can
    /// reopen (and re-lock) the file beneath.
    inner: Mutex<Option<Arc<dyn BlockDev>>>,
    name: String,
    last_info: Mutex<DevInfo>,
    /// Devices that lose power with this one (see [`CrashDev::group`]).
    peers: Mutex<Vec<Weak<Shared>>>,
    state: Mutex<CrashState>,
    gate: Gate,
}

struct GateGuard(Arc<Shared>);

impl Drop for GateGuard {
    fn drop(&mut self) {
        let waiters = {
            let mut g = self.0.gate.st.lock().unwrap_or_else(|p| p.into_inner());
            g.0 = false;
            std::mem::take(&mut g.1)
        };
        for w in waiters {
            w.wake();
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, CrashState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn crashed_error(&self) -> Error {
        Error::new(ErrorKind::Io, format!("crashdev({}): the device has crashed", self.name))
    }

    /// The inner device, while it has not been released by a crash.
    fn dev(&self) -> Result<Arc<dyn BlockDev>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone().ok_or_else(|| self.crashed_error())
    }

    fn info(&self) -> DevInfo {
        let mut last = self.last_info.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(dev) = self.dev() {
            *last = dev.info();
        }
        *last
    }

    async fn lock_gate(self: &Arc<Self>) -> GateGuard {
        poll_fn(|cx| {
            let mut g = self.gate.st.lock().unwrap_or_else(|p| p.into_inner());
            if g.0 {
                g.1.push(cx.waker().clone());
                Poll::Pending
            } else {
                g.0 = true;
                Poll::Ready(())
            }
        })
        .await;
        GateGuard(self.clone())
    }

    /// Count one modifying op; true if it is the auto-crash point (the device is then crashed).
    fn count_write(st: &mut CrashState) -> Option<CrashMode> {
        st.writes += 1;
        match st.auto {
            Some((AutoPoint::Write(n), mode)) if st.writes >= n => {
                st.auto = None;
                Some(mode)
            }
            _ => None,
        }
    }

    /// Record a volatile (or stable) entry, or refuse if crashed / at the crash point.
    /// Returns `Err(Some(plan))` when this op triggered the automatic crash.
    fn admit_write(&self, entry: Option<LogEntry>) -> std::result::Result<(), Option<(Vec<Piece>, CrashMode)>> {
        let mut st = self.state();
        if st.crashed {
            return Err(None);
        }
        if let Some(mode) = Self::count_write(&mut st) {
            return Err(Some((Self::mark_crashed(&mut st, mode), mode)));
        }
        if let Some(e) = entry {
            st.log.push(e);
        }
        Ok(())
    }

    /// Mark the device crashed and choose the survivors; the caller applies them under the gate.
    fn mark_crashed(st: &mut CrashState, mode: CrashMode) -> Vec<Piece> {
        st.crashed = true;
        let log = std::mem::take(&mut st.log);
        let (pieces, report) = choose_survivors(log, mode);
        st.last_report = Some(report);
        pieces
    }

    /// Write `pieces` in order, flush the inner device, then let go of it. Call with the gate
    /// held, after `mark_crashed`.
    async fn apply(&self, io: &IoCtx, pieces: Vec<Piece>) -> Result<()> {
        let inner = self.dev()?;
        let mut result = Ok(());
        for p in pieces {
            result = write_piece(&inner, io, &p).await;
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = inner.flush(io, IoTag::meta("crashdev.crash")).await;
        }
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        result.map_err(|e| e.context(format_args!("crashdev({}): applying the crash", self.name)))
    }

    /// The auto-crash path of an op: apply the plan under the gate, then fail the op.
    fn crash_op(self: &Arc<Self>, io: &IoCtx, (pieces, mode): (Vec<Piece>, CrashMode)) -> IoFuture {
        let peers = self.mark_peers(mode);
        let (sh, io) = (self.clone(), io.clone());
        Box::pin(async move {
            {
                let _gate = sh.lock_gate().await;
                sh.apply(&io, pieces).await?;
            }
            apply_peers(&io, peers).await?;
            Err(sh.crashed_error().context("crashed at the armed crash point"))
        })
    }

    /// Crash every grouped device not crashed yet (the same power failure); each gets `mode`
    /// with its own seed. Their plans are applied by the caller, one gate at a time.
    fn mark_peers(&self, mode: CrashMode) -> Vec<(Arc<Shared>, Vec<Piece>)> {
        let peers: Vec<Arc<Shared>> =
            self.peers.lock().unwrap_or_else(|p| p.into_inner()).iter().filter_map(Weak::upgrade).collect();
        let mut plans = Vec::new();
        for (i, peer) in peers.into_iter().enumerate() {
            let pieces = {
                let mut st = peer.state();
                if st.crashed {
                    continue;
                }
                Shared::mark_crashed(&mut st, vary_seed(mode, i as u64 + 1))
            };
            plans.push((peer, pieces));
        }
        plans
    }
}

/// Apply grouped devices' crash plans, each under its own gate (never two gates at once).
async fn apply_peers(io: &IoCtx, plans: Vec<(Arc<Shared>, Vec<Piece>)>) -> Result<()> {
    for (peer, pieces) in plans {
        let _gate = peer.lock_gate().await;
        peer.apply(io, pieces).await?;
    }
    Ok(())
}

/// The same mode with a different seed for the `i`th grouped device.
fn vary_seed(mode: CrashMode, i: u64) -> CrashMode {
    let mix = |seed: u64| seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    match mode {
        CrashMode::RandomPrefix { seed } => CrashMode::RandomPrefix { seed: mix(seed) },
        CrashMode::RandomSubset { seed } => CrashMode::RandomSubset { seed: mix(seed) },
        CrashMode::TearOne { seed, granularity } => CrashMode::TearOne { seed: mix(seed), granularity },
        other => other,
    }
}

async fn write_piece(inner: &Arc<dyn BlockDev>, io: &IoCtx, p: &Piece) -> Result<()> {
    let off = p.entry.off + p.skip;
    match &p.entry.data {
        LogData::Bytes(data) => {
            let mut buf = SharedBuf::from_slice(&data[p.skip as usize..(p.skip + p.len) as usize]);
            inner.write(io, off, buf.io(), false, p.entry.tag).await
        }
        LogData::Zeros => match inner.write_zeroes(io, off, p.len, false, p.entry.tag).await {
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                let mut buf = SharedBuf::new(p.len as usize);
                inner.write(io, off, buf.io(), false, p.entry.tag).await
            }
            r => r,
        },
    }
}

fn whole(entry: LogEntry) -> Piece {
    let len = entry.len;
    Piece { entry, skip: 0, len }
}

/// Pick which log entries survive `mode`, in completion order.
fn choose_survivors(log: Vec<LogEntry>, mode: CrashMode) -> (Vec<Piece>, CrashReport) {
    let volatile: Vec<usize> = (0..log.len()).filter(|&i| !log[i].stable).collect();
    let mut report = CrashReport { volatile: volatile.len(), ..Default::default() };
    let mut keep = vec![false; log.len()];
    let mut torn_idx = None;
    match mode {
        CrashMode::KeepNone => {}
        CrashMode::KeepAll => volatile.iter().for_each(|&i| keep[i] = true),
        CrashMode::Prefix(n) => volatile.iter().take(n).for_each(|&i| keep[i] = true),
        CrashMode::RandomPrefix { seed } => {
            let n = SmallRng::seed_from_u64(seed).gen_range(0..=volatile.len());
            volatile.iter().take(n).for_each(|&i| keep[i] = true);
        }
        CrashMode::RandomSubset { seed } => {
            let mut rng = SmallRng::seed_from_u64(seed);
            volatile.iter().for_each(|&i| keep[i] = rng.gen_bool(0.5));
        }
        CrashMode::TearOne { seed, granularity } => {
            let g = granularity.max(512);
            volatile.iter().for_each(|&i| keep[i] = true);
            let mut rng = SmallRng::seed_from_u64(seed);
            let multi: Vec<usize> = volatile.iter().copied().filter(|&i| granules(&log[i], g).len() > 1).collect();
            let pool = if multi.is_empty() { &volatile } else { &multi };
            if !pool.is_empty() {
                let victim = pool[rng.gen_range(0..pool.len())];
                keep[victim] = false;
                torn_idx = Some((victim, g, rng));
            }
        }
    }
    let mut torn_pieces = Vec::new();
    let victim_idx = torn_idx.as_ref().map(|t| t.0);
    if let Some((victim, g, mut rng)) = torn_idx {
        let blocks = granules(&log[victim], g);
        let mut chosen: Vec<bool> = blocks.iter().map(|_| rng.gen_bool(0.5)).collect();
        if blocks.len() > 1 {
            // A proper, non-empty subset: force one block in and one out if the dice did not.
            let a = rng.gen_range(0..blocks.len());
            let b = (a + 1 + rng.gen_range(0..blocks.len() - 1)) % blocks.len();
            chosen[a] = true;
            chosen[b] = false;
        } else {
            chosen[0] = false;
        }
        torn_pieces = blocks.into_iter().zip(chosen).filter(|(_, c)| *c).map(|(b, _)| b).collect();
        let e = &log[victim];
        report.torn =
            Some(TornWrite { range: (e.off, e.len), kept: torn_pieces.iter().map(|&(s, l)| (e.off + s, l)).collect() });
    }
    report.kept = volatile.iter().filter(|&&i| keep[i]).count();
    let mut pieces = Vec::new();
    for (i, entry) in log.into_iter().enumerate() {
        if entry.stable || keep[i] {
            pieces.push(whole(entry));
        } else if victim_idx == Some(i) {
            for &(skip, len) in &torn_pieces {
                pieces.push(Piece { entry: entry.clone(), skip, len });
            }
        }
    }
    (pieces, report)
}

/// The entry's `g`-aligned blocks as (offset in entry, length).
fn granules(e: &LogEntry, g: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = e.off;
    let end = e.off + e.len;
    while pos < end {
        let next = ((pos / g) + 1) * g;
        let n = next.min(end) - pos;
        out.push((pos - e.off, n));
        pos += n;
    }
    out
}

/// A device whose completed-but-unflushed writes can be lost on purpose (see the module docs).
#[derive(Clone)]
pub struct CrashDev {
    shared: Arc<Shared>,
}

impl CrashDev {
    /// Wrap `inner`; the log starts empty.
    pub fn new(inner: Arc<dyn BlockDev>) -> CrashDev {
        let (name, info) = (inner.describe(), inner.info());
        CrashDev {
            shared: Arc::new(Shared {
                inner: Mutex::new(Some(inner)),
                name,
                last_info: Mutex::new(info),
                peers: Mutex::new(Vec::new()),
                state: Mutex::new(CrashState::default()),
                gate: Gate::default(),
            }),
        }
    }

    /// The wrapped device; `None` once a crash has been applied (the crash device lets go of it
    /// then, so the file beneath can be reopened writable once the test drops its own handles).
    pub fn inner(&self) -> Option<Arc<dyn BlockDev>> {
        self.shared.dev().ok()
    }

    /// Lose the volatile writes `mode` does not keep, write the survivors to the inner device,
    /// flush it, and mark this device crashed. Waits for a flush in progress to finish first.
    /// Grouped devices crash too (see [`CrashDev::group`]).
    pub async fn crash(&self, io: &IoCtx, mode: CrashMode) -> Result<CrashReport> {
        let sh = &self.shared;
        let gate = sh.lock_gate().await;
        let pieces = {
            let mut st = sh.state();
            if st.crashed {
                return Err(sh.crashed_error());
            }
            Shared::mark_crashed(&mut st, mode)
        };
        let peers = sh.mark_peers(mode);
        sh.apply(io, pieces).await?;
        drop(gate);
        apply_peers(io, peers).await?;
        Ok(self.last_crash().unwrap_or_default())
    }

    /// Put `devs` on one power supply: when any of them crashes (by [`CrashDev::crash`] or at an
    /// armed crash point), all of them crash at that moment, each keeping its own volatile
    /// writes by the same mode with its own seed. For RAID members that lose power together.
    pub fn group(devs: &[CrashDev]) {
        for d in devs {
            let others = devs.iter().filter(|o| !Arc::ptr_eq(&o.shared, &d.shared));
            *d.shared.peers.lock().unwrap_or_else(|p| p.into_inner()) =
                others.map(|o| Arc::downgrade(&o.shared)).collect();
        }
    }

    /// Crash automatically when the `n`th modifying operation from now (write, discard or
    /// write-zeroes; 1 = the next one) arrives; that operation fails and writes nothing.
    pub fn crash_at_write(&self, n: u64, mode: CrashMode) {
        let mut st = self.shared.state();
        let at = st.writes + n.max(1);
        st.auto = Some((AutoPoint::Write(at), mode));
    }

    /// Crash automatically when the `n`th flush from now (1 = the next one) arrives, instead of
    /// flushing; that flush fails.
    pub fn crash_at_flush(&self, n: u64, mode: CrashMode) {
        let mut st = self.shared.state();
        let at = st.flushes + n.max(1);
        st.auto = Some((AutoPoint::Flush(at), mode));
    }

    /// Modifying operations (write, discard, write-zeroes) seen so far.
    pub fn writes(&self) -> u64 {
        self.shared.state().writes
    }

    /// Flushes seen so far.
    pub fn flushes(&self) -> u64 {
        self.shared.state().flushes
    }

    /// Volatile (unflushed, non-FUA) log entries right now.
    pub fn volatile_writes(&self) -> usize {
        self.shared.state().log.iter().filter(|e| !e.stable).count()
    }

    /// True once the device has crashed.
    pub fn is_crashed(&self) -> bool {
        self.shared.state().crashed
    }

    /// What the crash did (manual or automatic), once crashed.
    pub fn last_crash(&self) -> Option<CrashReport> {
        self.shared.state().last_report.clone()
    }

    fn log_entry(&self, off: u64, len: u64, data: LogData, stable: bool, tag: IoTag) -> LogEntry {
        LogEntry { off, len, data, stable, tag }
    }

    fn volatile_zeros(&self, io: &IoCtx, off: u64, len: u64, tag: IoTag) -> IoFuture {
        let sh = &self.shared;
        if let Err(e) = sh.info().check_write(off, len) {
            return ready(Err(e));
        }
        match sh.admit_write(Some(self.log_entry(off, len, LogData::Zeros, false, tag))) {
            Ok(()) => ready(Ok(())),
            Err(None) => ready(Err(sh.crashed_error())),
            Err(Some(plan)) => sh.crash_op(io, plan),
        }
    }
}

impl BlockDev for CrashDev {
    fn info(&self) -> DevInfo {
        DevInfo { volatile_cache: true, ..self.shared.info() }
    }

    fn refresh_size(&self) -> Result<u64> {
        self.shared.dev()?.refresh_size()
    }

    fn read(&self, io: &IoCtx, off: u64, bufs: IoBufs, tag: IoTag) -> IoFuture {
        let sh = self.shared.clone();
        let len = bufs.len() as u64;
        // Snapshot the overlapping log entries now: anything completed before this read started
        // is either here or already on the inner device.
        let patches: Vec<(u64, u64, u64, LogData)> = {
            let st = sh.state();
            if st.crashed {
                return ready(Err(sh.crashed_error()));
            }
            st.log
                .iter()
                .filter(|e| e.off < off + len && off < e.off + e.len)
                .map(|e| {
                    let start = e.off.max(off);
                    let end = (e.off + e.len).min(off + len);
                    (start - off, start - e.off, end - start, e.data.clone())
                })
                .collect()
        };
        let fut = match sh.dev() {
            Ok(dev) => dev.read(io, off, bufs.clone(), tag),
            Err(e) => return ready(Err(e)),
        };
        Box::pin(async move {
            fut.await?;
            for (at, skip, n, data) in patches {
                match data {
                    LogData::Bytes(d) => bufs.copy_from_slice(at as usize, &d[skip as usize..(skip + n) as usize]),
                    LogData::Zeros => bufs.zero(at as usize, n as usize),
                }
            }
            Ok(())
        })
    }

    fn write(&self, io: &IoCtx, off: u64, bufs: IoBufs, fua: bool, tag: IoTag) -> IoFuture {
        let sh = &self.shared;
        let len = bufs.len() as u64;
        if let Err(e) = sh.info().check_write(off, len) {
            return ready(Err(e));
        }
        let data = LogData::Bytes(Arc::new(bufs.to_vec()));
        if !fua {
            return match sh.admit_write(Some(self.log_entry(off, len, data, false, tag))) {
                Ok(()) => ready(Ok(())),
                Err(None) => ready(Err(sh.crashed_error())),
                Err(Some(plan)) => sh.crash_op(io, plan),
            };
        }
        match sh.admit_write(None) {
            Ok(()) => {}
            Err(None) => return ready(Err(sh.crashed_error())),
            Err(Some(plan)) => return sh.crash_op(io, plan),
        }
        let entry = self.log_entry(off, len, data, true, tag);
        let (sh, io) = (sh.clone(), io.clone());
        Box::pin(async move {
            let _gate = sh.lock_gate().await;
            if sh.state().crashed {
                return Err(sh.crashed_error());
            }
            sh.dev()?.write(&io, off, bufs, true, tag).await?;
            let mut st = sh.state();
            if st.crashed {
                return Err(sh.crashed_error());
            }
            st.log.push(entry);
            Ok(())
        })
    }

    fn flush(&self, io: &IoCtx, tag: IoTag) -> IoFuture {
        let (sh, io) = (self.shared.clone(), io.clone());
        Box::pin(async move {
            let gate = sh.lock_gate().await;
            let (entries, crash_plan) = {
                let mut st = sh.state();
                if st.crashed {
                    return Err(sh.crashed_error());
                }
                st.flushes += 1;
                match st.auto {
                    Some((AutoPoint::Flush(n), mode)) if st.flushes >= n => {
                        st.auto = None;
                        (Vec::new(), Some((Shared::mark_crashed(&mut st, mode), mode)))
                    }
                    _ => (st.log.clone(), None),
                }
            };
            if let Some((pieces, mode)) = crash_plan {
                let peers = sh.mark_peers(mode);
                sh.apply(&io, pieces).await?;
                drop(gate);
                apply_peers(&io, peers).await?;
                return Err(sh.crashed_error().context("crashed at the armed flush"));
            }
            let inner = sh.dev()?;
            for e in &entries {
                if sh.state().crashed {
                    return Err(sh.crashed_error());
                }
                write_piece(&inner, &io, &whole(e.clone())).await?;
            }
            inner.flush(&io, tag).await?;
            let mut st = sh.state();
            if st.crashed {
                return Err(sh.crashed_error());
            }
            st.log.drain(..entries.len());
            Ok(())
        })
    }

    fn discard(&self, io: &IoCtx, off: u64, len: u64, tag: IoTag) -> IoFuture {
        self.volatile_zeros(io, off, len, tag)
    }

    fn write_zeroes(&self, io: &IoCtx, off: u64, len: u64, _unmap: bool, tag: IoTag) -> IoFuture {
        self.volatile_zeros(io, off, len, tag)
    }

    fn describe(&self) -> String {
        format!("crash({})", self.shared.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(off: u64, len: u64, stable: bool) -> LogEntry {
        LogEntry { off, len, data: LogData::Zeros, stable, tag: IoTag::DATA }
    }

    #[test]
    fn granules_split_at_absolute_boundaries() {
        assert_eq!(granules(&entry(3584, 5120, false), 4096), vec![(0, 512), (512, 4096), (4608, 512)]);
    }

    #[test]
    fn prefix_keeps_stable_entries_and_first_volatile() {
        let log = vec![entry(0, 512, false), entry(512, 512, true), entry(1024, 512, false)];
        let (pieces, report) = choose_survivors(log, CrashMode::Prefix(1));
        let offs: Vec<u64> = pieces.iter().map(|p| p.entry.off).collect();
        assert_eq!(offs, [0, 512]);
        assert_eq!((report.volatile, report.kept), (2, 1));
    }

    #[test]
    fn tear_keeps_a_proper_subset_of_the_victim() {
        for seed in 0..50 {
            let log = vec![entry(0, 8192, false), entry(65536, 4096, false)];
            let (_, report) = choose_survivors(log, CrashMode::TearOne { seed, granularity: 4096 });
            let TornWrite { range: (off, len), kept } = report.torn.expect("a write is torn");
            assert_eq!((off, len), (0, 8192), "the multi-block write is the victim");
            let kept_bytes: u64 = kept.iter().map(|k| k.1).sum();
            assert!(kept_bytes > 0 && kept_bytes < len, "seed {seed}: kept {kept_bytes}");
        }
    }
}
