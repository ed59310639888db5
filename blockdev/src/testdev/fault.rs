//! `FaultDev`: a pass-through device that injects errors, bad sectors and bit flips on command.
//!
//! Rules are changed at run time through `&self` (the device is shared through an `Arc`), so a
//! test can arm a fault in the middle of a workload. A failed write, discard or write-zeroes
//! never reaches the inner device: nothing is written.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{ready, BlockDev, DevInfo, Error, IoBufs, IoClass, IoCtx, IoFuture, IoTag};

/// Sector size used for bad sectors and bit flips.
pub const FAULT_SECTOR: u64 = 512;

/// The kind of an operation, for rules that target one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `read`.
    Read,
    /// `write` (with or without FUA).
    Write,
    /// `flush`.
    Flush,
    /// `discard`.
    Discard,
    /// `write_zeroes`.
    WriteZeroes,
}

impl OpKind {
    /// All kinds, in a fixed order (index with `as usize`).
    pub const ALL: [OpKind; 5] = [OpKind::Read, OpKind::Write, OpKind::Flush, OpKind::Discard, OpKind::WriteZeroes];

    /// True for the kinds that change the device's contents.
    pub fn modifies(self) -> bool {
        !matches!(self, OpKind::Read | OpKind::Flush)
    }
}

/// Which error an injected fault returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FaultError {
    /// EIO: `ErrorKind::Io`.
    #[default]
    Io,
    /// ENOSPC: `ErrorKind::NoSpace`.
    NoSpace,
}

impl FaultError {
    fn errno(self) -> i32 {
        match self {
            FaultError::Io => libc::EIO,
            FaultError::NoSpace => libc::ENOSPC,
        }
    }
}

/// How a rule matches the site name of a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteMatch {
    /// The site equals this string.
    Exact(String),
    /// The site starts with this string (`"qcow2.l2"` matches `"qcow2.l2_update"`).
    Prefix(String),
}

impl SiteMatch {
    fn matches(&self, site: &str) -> bool {
        match self {
            SiteMatch::Exact(s) => site == s,
            SiteMatch::Prefix(p) => site.starts_with(p.as_str()),
        }
    }
}

/// One fault rule: which operations it matches, which matches it fails, and with what.
///
/// Built with a small builder: `FaultRule::new().kind(OpKind::Write).site_prefix("qcow2.l2")
/// .after(2).times(1).error(FaultError::NoSpace)` fails the third matching write, once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FaultRule {
    kind: Option<OpKind>,
    class: Option<IoClass>,
    site: Option<SiteMatch>,
    skip: u64,
    times: Option<u64>,
    error: FaultError,
}

impl FaultRule {
    /// A rule matching every operation, failing every match with EIO, forever.
    pub fn new() -> Self {
        FaultRule::default()
    }

    /// Match only operations of `kind`.
    pub fn kind(mut self, kind: OpKind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// Match only operations whose tag has `class`.
    pub fn class(mut self, class: IoClass) -> Self {
        self.class = Some(class);
        self
    }

    /// Match only operations whose tag's site is exactly `site`.
    pub fn site(mut self, site: &str) -> Self {
        self.site = Some(SiteMatch::Exact(site.to_string()));
        self
    }

    /// Match only operations whose tag's site starts with `prefix`.
    pub fn site_prefix(mut self, prefix: &str) -> Self {
        self.site = Some(SiteMatch::Prefix(prefix.to_string()));
        self
    }

    /// Let the first `n` matches through before failing any.
    pub fn after(mut self, n: u64) -> Self {
        self.skip = n;
        self
    }

    /// Fail only `k` matches (then the rule is spent); the default is every match.
    pub fn times(mut self, k: u64) -> Self {
        self.times = Some(k);
        self
    }

    /// Fail with `error` (EIO by default).
    pub fn error(mut self, error: FaultError) -> Self {
        self.error = error;
        self
    }

    fn matches(&self, kind: OpKind, tag: IoTag) -> bool {
        self.kind.is_none_or(|k| k == kind)
            && self.class.is_none_or(|c| c == tag.class)
            && self.site.as_ref().is_none_or(|s| s.matches(tag.site))
    }
}

/// Identifies an installed rule, for [`FaultDev::remove_rule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId(u64);

struct ActiveRule {
    id: RuleId,
    rule: FaultRule,
    seen: u64,
    fired: u64,
}

impl ActiveRule {
    /// Count a matching operation; true if this one must fail.
    fn hit(&mut self) -> bool {
        self.seen += 1;
        if self.seen <= self.rule.skip || self.rule.times.is_some_and(|t| self.fired >= t) {
            return false;
        }
        self.fired += 1;
        true
    }
}

#[derive(Default)]
struct FaultState {
    rules: Vec<ActiveRule>,
    next_rule: u64,
    bad: BTreeSet<u64>,
    repair_on_write: bool,
    flips: BTreeSet<(u64, u32)>,
}

/// A pass-through device that injects faults (see the module docs).
pub struct FaultDev {
    inner: Arc<dyn BlockDev>,
    state: Mutex<FaultState>,
    ops: [AtomicU64; 5],
    injected: AtomicU64,
    over_network: AtomicBool,
}

impl FaultDev {
    /// Wrap `inner`; no faults until rules are added.
    pub fn new(inner: Arc<dyn BlockDev>) -> FaultDev {
        FaultDev {
            inner,
            state: Mutex::new(FaultState::default()),
            ops: Default::default(),
            injected: AtomicU64::new(0),
            over_network: Default::default(),
        }
    }

    /// Say the device goes over the network (as an RBD image does), for tests of what layers
    /// and exports do over one ([`BlockDev::over_network`]).
    pub fn set_over_network(&self, yes: bool) {
        self.over_network.store(yes, Ordering::Relaxed);
    }

    /// The wrapped device.
    pub fn inner(&self) -> &Arc<dyn BlockDev> {
        &self.inner
    }

    fn state(&self) -> MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Install a rule; it counts matches from now on.
    pub fn add_rule(&self, rule: FaultRule) -> RuleId {
        let mut st = self.state();
        st.next_rule += 1;
        let id = RuleId(st.next_rule);
        st.rules.push(ActiveRule { id, rule, seen: 0, fired: 0 });
        id
    }

    /// Remove one rule (no-op if it is gone already).
    pub fn remove_rule(&self, id: RuleId) {
        self.state().rules.retain(|r| r.id != id);
    }

    /// Remove every rule (bad sectors and bit flips stay).
    pub fn clear_rules(&self) {
        self.state().rules.clear();
    }

    /// Fail the `n`th operation from now (1 = the next one), counting every kind, with EIO.
    pub fn fail_nth(&self, n: u64) -> RuleId {
        self.add_rule(FaultRule::new().after(n.saturating_sub(1)).times(1))
    }

    /// Fail the `n`th operation of `kind` from now (1 = the next one) with `error`.
    pub fn fail_nth_of(&self, kind: OpKind, n: u64, error: FaultError) -> RuleId {
        self.add_rule(FaultRule::new().kind(kind).after(n.saturating_sub(1)).times(1).error(error))
    }

    /// Fail every operation from now on (a dead disk) with EIO.
    pub fn fail_all(&self) -> RuleId {
        self.add_rule(FaultRule::new())
    }

    /// Mark sectors (512-byte units) bad: reads and writes touching them fail with EIO.
    pub fn add_bad_sectors(&self, sectors: &[u64]) {
        self.state().bad.extend(sectors.iter().copied());
    }

    /// Make sectors good again.
    pub fn clear_bad_sectors(&self) {
        self.state().bad.clear();
    }

    /// The sectors still bad.
    pub fn bad_sectors(&self) -> Vec<u64> {
        self.state().bad.iter().copied().collect()
    }

    /// When true, a write (or write-zeroes, discard) covering bad sectors succeeds and makes them
    /// good again, as a disk remaps a sector on write; when false (the default) it fails with EIO.
    pub fn set_repair_on_write(&self, repair: bool) {
        self.state().repair_on_write = repair;
    }

    /// Flip bit `bit` (0..4096) of `sector` in the data every read of that sector returns, until
    /// a write covers the sector (the rotten bit is rewritten) or [`FaultDev::clear_bit_flips`].
    pub fn add_bit_flip(&self, sector: u64, bit: u32) {
        self.state().flips.insert((sector, bit % (FAULT_SECTOR as u32 * 8)));
    }

    /// Remove every pending bit flip.
    pub fn clear_bit_flips(&self) {
        self.state().flips.clear();
    }

    /// Faults injected so far: failed operations plus reads that returned flipped bits.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Operations of `kind` seen so far (failed ones included).
    pub fn op_count(&self, kind: OpKind) -> u64 {
        self.ops[kind as usize].load(Ordering::Relaxed)
    }

    /// Operations of every kind seen so far.
    pub fn total_ops(&self) -> u64 {
        self.ops.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Decide the fate of one operation: `Err` if it must fail; otherwise the bit flips to apply
    /// (reads only). Also does the write-side bookkeeping (repair, clearing flips).
    fn admit(&self, kind: OpKind, tag: IoTag, range: Option<(u64, u64)>) -> crate::Result<Vec<(u64, u32)>> {
        self.ops[kind as usize].fetch_add(1, Ordering::Relaxed);
        let mut st = self.state();
        let mut failure = None;
        for r in st.rules.iter_mut() {
            if r.rule.matches(kind, tag) && r.hit() && failure.is_none() {
                failure = Some(r.rule.error);
            }
        }
        if let Some(err) = failure {
            drop(st);
            return Err(self.injected_error(err.errno(), kind, tag, range));
        }
        let Some((off, len)) = range.filter(|&(_, len)| len > 0) else { return Ok(Vec::new()) };
        let first = off / FAULT_SECTOR;
        let last = (off + len - 1) / FAULT_SECTOR;
        let touches_bad = st.bad.range(first..=last).next().is_some();
        if touches_bad {
            if kind.modifies() && st.repair_on_write {
                let repaired: Vec<u64> = st.bad.range(first..=last).copied().collect();
                for s in repaired {
                    st.bad.remove(&s);
                }
            } else {
                let bad = st.bad.range(first..=last).next().copied().unwrap_or(first);
                drop(st);
                return Err(self.injected_error(libc::EIO, kind, tag, range).context(format_args!("bad sector {bad}")));
            }
        }
        if kind.modifies() {
            let gone: Vec<(u64, u32)> = st.flips.range((first, 0)..=(last, u32::MAX)).copied().collect();
            for f in gone {
                st.flips.remove(&f);
            }
            return Ok(Vec::new());
        }
        Ok(st.flips.range((first, 0)..=(last, u32::MAX)).copied().collect())
    }

    fn injected_error(&self, errno: i32, kind: OpKind, tag: IoTag, range: Option<(u64, u64)>) -> Error {
        self.injected.fetch_add(1, Ordering::Relaxed);
        let at = range.map(|(o, l)| format!(" [{o}, +{l})")).unwrap_or_default();
        Error::from_errno(
            errno,
            format_args!("faultdev({}): injected fault on {kind:?}{at} tag {}", self.inner.describe(), tag.site),
        )
    }
}

impl BlockDev for FaultDev {
    fn info(&self) -> DevInfo {
        self.inner.info()
    }

    fn refresh_size(&self) -> crate::Result<u64> {
        self.inner.refresh_size()
    }

    fn read(&self, io: &IoCtx, off: u64, bufs: IoBufs, tag: IoTag) -> IoFuture {
        let flips = match self.admit(OpKind::Read, tag, Some((off, bufs.len() as u64))) {
            Ok(f) => f,
            Err(e) => return ready(Err(e)),
        };
        if flips.is_empty() {
            return self.inner.read(io, off, bufs, tag);
        }
        self.injected.fetch_add(1, Ordering::Relaxed);
        let fut = self.inner.read(io, off, bufs.clone(), tag);
        Box::pin(async move {
            fut.await?;
            for (sector, bit) in flips {
                let Some(pos) = (sector * FAULT_SECTOR + u64::from(bit / 8)).checked_sub(off) else { continue };
                if pos >= bufs.len() as u64 {
                    continue;
                }
                let mut b = [0u8];
                bufs.copy_to_slice(pos as usize, &mut b);
                b[0] ^= 1 << (bit % 8);
                bufs.copy_from_slice(pos as usize, &b);
            }
            Ok(())
        })
    }

    fn write(&self, io: &IoCtx, off: u64, bufs: IoBufs, fua: bool, tag: IoTag) -> IoFuture {
        match self.admit(OpKind::Write, tag, Some((off, bufs.len() as u64))) {
            Ok(_) => self.inner.write(io, off, bufs, fua, tag),
            Err(e) => ready(Err(e)),
        }
    }

    fn flush(&self, io: &IoCtx, tag: IoTag) -> IoFuture {
        match self.admit(OpKind::Flush, tag, None) {
            Ok(_) => self.inner.flush(io, tag),
            Err(e) => ready(Err(e)),
        }
    }

    fn discard(&self, io: &IoCtx, off: u64, len: u64, tag: IoTag) -> IoFuture {
        match self.admit(OpKind::Discard, tag, Some((off, len))) {
            Ok(_) => self.inner.discard(io, off, len, tag),
            Err(e) => ready(Err(e)),
        }
    }

    fn write_zeroes(&self, io: &IoCtx, off: u64, len: u64, unmap: bool, tag: IoTag) -> IoFuture {
        match self.admit(OpKind::WriteZeroes, tag, Some((off, len))) {
            Ok(_) => self.inner.write_zeroes(io, off, len, unmap, tag),
            Err(e) => ready(Err(e)),
        }
    }

    fn over_network(&self) -> bool {
        self.over_network.load(Ordering::Relaxed) || self.inner.over_network()
    }

    fn describe(&self) -> String {
        format!("fault({})", self.inner.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, MemDisk, SharedBuf};

    fn setup() -> (IoCtx, FaultDev) {
        let io = IoCtx::new().unwrap();
        (io, FaultDev::new(Arc::new(MemDisk::new(1 << 20).unwrap())))
    }

    #[test]
    fn rule_after_and_times_fail_exactly_the_chosen_matches() {
        let (io, dev) = setup();
        dev.add_rule(FaultRule::new().kind(OpKind::Flush).after(1).times(2));
        let results: Vec<bool> = (0..5).map(|_| io.block_on(dev.flush(&io, IoTag::DATA)).is_ok()).collect();
        assert_eq!(results, [true, false, false, true, true]);
        assert_eq!(dev.injected(), 2);
        assert_eq!(dev.op_count(OpKind::Flush), 5);
    }

    #[test]
    fn failed_write_writes_nothing() {
        let (io, dev) = setup();
        dev.fail_nth_of(OpKind::Write, 1, FaultError::Io);
        let mut b = SharedBuf::from_slice(&[7u8; 512]);
        assert!(io.block_on(dev.write(&io, 0, b.io(), false, IoTag::DATA)).is_err());
        let mut r = SharedBuf::new(512);
        io.block_on(dev.read(&io, 0, r.io(), IoTag::DATA)).unwrap();
        assert_eq!(r.bytes(), &[0u8; 512]);
    }

    #[test]
    fn nospace_error_has_nospace_kind() {
        let (io, dev) = setup();
        dev.add_rule(FaultRule::new().error(FaultError::NoSpace));
        let err = io.block_on(dev.discard(&io, 0, 512, IoTag::DATA)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoSpace);
    }
}
