//! `ModelDev`: a shadow disk in memory that knows what every sector may read back, wrapped around
//! a real device whose every read it checks.
//!
//! The model keeps, per 512-byte sector, the set of values a read may return now (normally one:
//! the latest completed write; after a discard, "zeros or the old value"), the value that is
//! stable (last flushed, or written with FUA) and every value written since the last flush. A
//! read may return the current value or the value of any write that overlapped it in time (for
//! such racing sectors, any byte-wise mix of them: a page-cache copy is not atomic).
//! After a crash a sector may hold its stable value or any value written since the last flush.
//!
//! Storage is sparse (chunks of 256 sectors in a hash map) and values point into the write
//! that carried them, so big virtual disks with few writes cost little.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};

use smallvec::{smallvec, SmallVec};

use crate::{BlockDev, DevInfo, Error, ErrorKind, IoBufs, IoCtx, IoFuture, IoTag, Result, SharedBuf};

/// The unit the model tracks.
pub const MODEL_SECTOR: u64 = 512;
const CHUNK_SECTORS: u64 = 256;
static ZEROS: [u8; MODEL_SECTOR as usize] = [0; MODEL_SECTOR as usize];

/// The data of one write, shared by every sector value that points into it.
struct WriteData {
    id: u64,
    off: u64,
    bytes: Vec<u8>,
}

/// One acceptable value of a sector.
#[derive(Clone)]
enum Val {
    Zero,
    /// Unknown initial contents: anything goes.
    Any,
    /// Sector `idx` of a write.
    Data(Arc<WriteData>, u32),
}

impl Val {
    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Val::Zero => Some(&ZEROS),
            Val::Any => None,
            Val::Data(w, i) => {
                let at = *i as usize * MODEL_SECTOR as usize;
                Some(&w.bytes[at..at + MODEL_SECTOR as usize])
            }
        }
    }

    fn matches(&self, found: &[u8]) -> bool {
        self.bytes().is_none_or(|b| b == found)
    }

    fn same(&self, other: &Val) -> bool {
        match (self, other) {
            (Val::Zero, Val::Zero) | (Val::Any, Val::Any) => true,
            (Val::Data(a, i), Val::Data(b, j)) => i == j && Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    fn describe(&self) -> String {
        match self {
            Val::Zero => "zeros".into(),
            Val::Any => "anything (unknown initial contents)".into(),
            Val::Data(w, i) => format!(
                "write #{} [{}, +{}) sector {i}: {}",
                w.id,
                w.off,
                w.bytes.len(),
                describe_bytes(self.bytes().unwrap_or(&ZEROS))
            ),
        }
    }
}

/// First bytes in hex plus a CRC of the whole sector.
fn describe_bytes(b: &[u8]) -> String {
    if b.iter().all(|&x| x == 0) {
        return "zeros".into();
    }
    let mut s = String::new();
    for x in b.iter().take(16) {
        let _ = write!(s, "{x:02x}");
    }
    format!("{s}… crc32 {:08x}", crc32fast::hash(b))
}

type ValSet = SmallVec<[Val; 2]>;

/// True when every byte of `got` equals that byte of some candidate.
fn mix_matches(cands: &[Val], got: &[u8]) -> bool {
    if cands.iter().any(|v| v.bytes().is_none()) {
        return true;
    }
    got.iter().enumerate().all(|(i, b)| cands.iter().any(|v| v.bytes().is_some_and(|c| c[i] == *b)))
}

fn push_unique(set: &mut ValSet, v: Val) {
    if !set.iter().any(|x| x.same(&v)) {
        set.push(v);
    }
}

#[derive(Clone)]
struct Sector {
    stable: ValSet,
    /// (completion sequence number, values acceptable right after that completion).
    since_flush: Vec<(u64, ValSet)>,
}

impl Sector {
    fn current(&self) -> &ValSet {
        self.since_flush.last().map_or(&self.stable, |e| &e.1)
    }
}

/// What a modifying op writes.
#[derive(Clone)]
enum OpData {
    Write(Arc<WriteData>),
    Zeros,
    Discard,
}

/// A modifying op's range and data, as peers and watching reads see it.
#[derive(Clone)]
struct ModOp {
    off: u64,
    len: u64,
    data: OpData,
}

impl ModOp {
    fn overlaps(&self, off: u64, len: u64) -> bool {
        self.off < off + len && off < self.off + self.len
    }

    /// The value this op puts in sector `s`, if it covers it.
    fn val_at(&self, s: u64) -> Option<Val> {
        let first = self.off / MODEL_SECTOR;
        if s < first || s >= (self.off + self.len) / MODEL_SECTOR {
            return None;
        }
        Some(match &self.data {
            OpData::Write(w) => Val::Data(w.clone(), (s - first) as u32),
            OpData::Zeros | OpData::Discard => Val::Zero,
        })
    }
}

struct Pending {
    id: u64,
    op: ModOp,
    /// Overlapping modifying ops that were in flight at the same time: their order is unknown.
    peers: Vec<ModOp>,
}

struct ReadWatch {
    id: u64,
    off: u64,
    len: u64,
    /// Modifying ops in flight at some point during the read.
    extra: Vec<ModOp>,
    /// Sector values replaced while the read was in flight.
    stash: Vec<(u64, ValSet)>,
}

/// Counters of what the model has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelStats {
    /// Reads completed and checked.
    pub reads: u64,
    /// Writes completed (successfully or not).
    pub writes: u64,
    /// Discards and write-zeroes completed.
    pub zeroing: u64,
    /// Flushes completed.
    pub flushes: u64,
    /// Sectors compared against the model.
    pub sectors_checked: u64,
}

/// Which values are acceptable when checking.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Now: the current value (or an in-flight one).
    Current,
    /// After a crash: stable, or anything written since the last flush.
    AfterCrash,
}

struct ModelState {
    chunks: HashMap<u64, Vec<Sector>>,
    dirty: HashSet<u64>,
    initial: Val,
    seq: u64,
    next_id: u64,
    pending: Vec<Pending>,
    reads: Vec<ReadWatch>,
    stats: ModelStats,
}

impl ModelState {
    fn new(initial: Val) -> Self {
        ModelState {
            chunks: HashMap::new(),
            dirty: HashSet::new(),
            initial,
            seq: 0,
            next_id: 0,
            pending: Vec::new(),
            reads: Vec::new(),
            stats: ModelStats::default(),
        }
    }

    fn default_sector(&self) -> Sector {
        Sector { stable: smallvec![self.initial.clone()], since_flush: Vec::new() }
    }

    fn sector(&self, s: u64) -> Option<&Sector> {
        self.chunks.get(&(s / CHUNK_SECTORS)).map(|c| &c[(s % CHUNK_SECTORS) as usize])
    }

    fn chunk_mut(&mut self, chunk: u64) -> &mut Vec<Sector> {
        if !self.chunks.contains_key(&chunk) {
            let fresh = vec![self.default_sector(); CHUNK_SECTORS as usize];
            self.chunks.insert(chunk, fresh);
        }
        self.chunks.get_mut(&chunk).expect("chunk just inserted")
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Register a modifying op at its start.
    fn start_modify(&mut self, op: ModOp) -> u64 {
        let id = self.next_id();
        let mut peers = Vec::new();
        for p in self.pending.iter_mut().filter(|p| p.op.overlaps(op.off, op.len)) {
            p.peers.push(op.clone());
            peers.push(p.op.clone());
        }
        for w in self.reads.iter_mut().filter(|w| op.overlaps(w.off, w.len)) {
            w.extra.push(op.clone());
        }
        self.pending.push(Pending { id, op, peers });
        id
    }

    /// Apply a modifying op's completion (`ok` false: it may or may not have written).
    fn complete_modify(&mut self, id: u64, ok: bool, fua: bool) {
        let Some(pos) = self.pending.iter().position(|p| p.id == id) else { return };
        let p = self.pending.swap_remove(pos);
        match p.op.data {
            OpData::Write(_) => self.stats.writes += 1,
            _ => self.stats.zeroing += 1,
        }
        self.seq += 1;
        let seq = self.seq;
        let first = p.op.off / MODEL_SECTOR;
        let end = (p.op.off + p.op.len) / MODEL_SECTOR;
        // Reads in flight may still return what we are about to replace.
        let mut stashes = Vec::new();
        for (wi, w) in self.reads.iter().enumerate() {
            let lo = first.max(w.off / MODEL_SECTOR);
            let hi = end.min((w.off + w.len) / MODEL_SECTOR);
            for s in lo..hi {
                let cur = self.sector(s).map_or_else(|| smallvec![self.initial.clone()], |x| x.current().clone());
                stashes.push((wi, s, cur));
            }
        }
        for (wi, s, cur) in stashes {
            self.reads[wi].stash.push((s, cur));
        }
        let keep_old = !ok || matches!(p.op.data, OpData::Discard);
        let mut s = first;
        while s < end {
            let chunk = s / CHUNK_SECTORS;
            let stop = end.min((chunk + 1) * CHUNK_SECTORS);
            let mut dirty = false;
            let sectors = self.chunk_mut(chunk);
            for s in s..stop {
                let mut set: ValSet = smallvec![p.op.val_at(s).expect("sector inside the op")];
                for peer in &p.peers {
                    if let Some(v) = peer.val_at(s) {
                        push_unique(&mut set, v);
                    }
                }
                let raced = set.len() > 1;
                let sec = &mut sectors[(s % CHUNK_SECTORS) as usize];
                if keep_old {
                    for v in sec.current().clone() {
                        push_unique(&mut set, v);
                    }
                }
                if ok && fua && !raced {
                    sec.stable = set;
                    sec.since_flush.clear();
                    continue;
                }
                if ok && fua {
                    for v in set.iter() {
                        push_unique(&mut sec.stable, v.clone());
                    }
                }
                sec.since_flush.push((seq, set));
                dirty = true;
            }
            if dirty {
                self.dirty.insert(chunk);
            }
            s = stop;
        }
    }

    /// A flush that started when the completion counter was `epoch` has completed: every
    /// op completed before then is stable now.
    fn complete_flush(&mut self, epoch: u64) {
        self.stats.flushes += 1;
        let dirty: Vec<u64> = self.dirty.iter().copied().collect();
        for chunk in dirty {
            let Some(sectors) = self.chunks.get_mut(&chunk) else { continue };
            let mut still_dirty = false;
            for sec in sectors.iter_mut() {
                if let Some(i) = sec.since_flush.iter().rposition(|e| e.0 <= epoch) {
                    sec.stable = sec.since_flush[i].1.clone();
                    sec.since_flush.drain(..=i);
                }
                still_dirty |= !sec.since_flush.is_empty();
            }
            if !still_dirty {
                self.dirty.remove(&chunk);
            }
        }
    }

    /// Acceptable values of sector `s`.
    fn candidates(&self, s: u64, check: Check, extra: &[ModOp], stash: &[(u64, ValSet)]) -> ValSet {
        let default;
        let sec = match self.sector(s) {
            Some(sec) => sec,
            None => {
                default = self.default_sector();
                &default
            }
        };
        let mut set = sec.current().clone();
        if check == Check::AfterCrash {
            for v in sec.stable.iter().chain(sec.since_flush.iter().flat_map(|e| e.1.iter())) {
                push_unique(&mut set, v.clone());
            }
        }
        for v in extra.iter().chain(self.pending.iter().map(|p| &p.op)).filter_map(|op| op.val_at(s)) {
            push_unique(&mut set, v);
        }
        for (_, vals) in stash.iter().filter(|(x, _)| *x == s) {
            for v in vals {
                push_unique(&mut set, v.clone());
            }
        }
        set
    }

    /// Check the sectors of `found` (read at byte `off`); on success, optionally collect the
    /// value each sector matched.
    fn check(
        &mut self,
        off: u64,
        found: &[u8],
        check: Check,
        extra: &[ModOp],
        stash: &[(u64, ValSet)],
        mut matched: Option<&mut Vec<(u64, Val)>>,
    ) -> Result<()> {
        let first = off / MODEL_SECTOR;
        let mut bad = Vec::new();
        let mut bad_count = 0u64;
        for (i, got) in found.chunks(MODEL_SECTOR as usize).enumerate() {
            let s = first + i as u64;
            self.stats.sectors_checked += 1;
            // Fast path: the current value, without building a candidate set.
            let fast = self.sector(s).map_or(&self.initial, |sec| &sec.current()[0]);
            let fast_ok = self.sector(s).is_none_or(|sec| sec.current().len() == 1) && fast.matches(got);
            if fast_ok {
                if let Some(m) = matched.as_deref_mut() {
                    m.push((s, fast.clone()));
                }
                continue;
            }
            let cands = self.candidates(s, check, extra, stash);
            // A read racing a write may see a mix of both within a sector (a page-cache copy is
            // not atomic): for such sectors, accept any byte-wise mix of the candidates.
            let raced = check == Check::Current && cands.len() > 1;
            let found_val = cands
                .iter()
                .find(|v| v.matches(got))
                .or_else(|| (raced && mix_matches(&cands, got)).then_some(&cands[0]));
            match found_val {
                Some(v) => {
                    if let Some(m) = matched.as_deref_mut() {
                        m.push((s, v.clone()));
                    }
                }
                None => {
                    bad_count += 1;
                    if bad.len() < 3 {
                        let expected: Vec<String> = cands.iter().take(4).map(Val::describe).collect();
                        bad.push(format!(
                            "sector {s} (byte {}): found {}, expected {}{}",
                            s * MODEL_SECTOR,
                            describe_bytes(got),
                            if expected.len() > 1 { "one of: " } else { "" },
                            expected.join(" | ")
                        ));
                    }
                }
            }
        }
        if bad_count == 0 {
            return Ok(());
        }
        let what = if check == Check::AfterCrash { "after crash" } else { "read" };
        Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "model mismatch {what} of [{off}, +{}): {bad_count} bad sector(s); {}",
                found.len(),
                bad.join("; ")
            ),
        ))
    }
}

/// A shadow disk wrapped around a real device: forwards every op, checks every read.
#[derive(Clone)]
pub struct ModelDev {
    inner: Arc<dyn BlockDev>,
    state: Arc<Mutex<ModelState>>,
}

impl ModelDev {
    /// Wrap `inner`, whose contents must read as zeros now (a fresh disk or file).
    pub fn new(inner: Arc<dyn BlockDev>) -> ModelDev {
        ModelDev { inner, state: Arc::new(Mutex::new(ModelState::new(Val::Zero))) }
    }

    /// Wrap `inner` whose current contents are unknown: unwritten sectors are not checked.
    pub fn with_unknown_contents(inner: Arc<dyn BlockDev>) -> ModelDev {
        ModelDev { inner, state: Arc::new(Mutex::new(ModelState::new(Val::Any))) }
    }

    /// The wrapped device.
    pub fn inner(&self) -> &Arc<dyn BlockDev> {
        &self.inner
    }

    /// Counters of what the model has seen.
    pub fn stats(&self) -> ModelStats {
        self.state().stats
    }

    fn state(&self) -> MutexGuard<'_, ModelState> {
        lock(&self.state)
    }

    /// The bytes `[off, off+len)` must read back now, when every sector has exactly one
    /// acceptable value (no op in flight over it, no discard left it ambiguous).
    pub fn expected(&self, off: u64, len: u64) -> Result<Vec<u8>> {
        check_aligned(off, len)?;
        let st = self.state();
        let mut out = Vec::with_capacity(len as usize);
        for s in off / MODEL_SECTOR..(off + len) / MODEL_SECTOR {
            let cands = st.candidates(s, Check::Current, &[], &[]);
            match (cands.len(), cands[0].bytes()) {
                (1, Some(b)) => out.extend_from_slice(b),
                _ => {
                    let all: Vec<String> = cands.iter().map(Val::describe).collect();
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!("model: sector {s} has no single expected value: {}", all.join(" | ")),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Read the whole of `dev` (the wrapped device, or a reopened one) and check every sector
    /// against the model's current values.
    pub async fn verify_all(&self, dev: &dyn BlockDev, io: &IoCtx) -> Result<()> {
        let size = dev.info().size;
        self.verify_range(dev, io, 0, size - size % MODEL_SECTOR, false).await.map(|_| ())
    }

    /// After a crash: read the whole of `dev` (typically the crashed device's inner device,
    /// or the file reopened) and check that every sector holds its stable value (last flushed
    /// or FUA) or a value written after the last flush — old or new, never anything else.
    pub async fn verify_after_crash(&self, dev: &dyn BlockDev, io: &IoCtx) -> Result<()> {
        let size = dev.info().size;
        self.verify_range(dev, io, 0, size - size % MODEL_SECTOR, true).await.map(|_| ())
    }

    /// Check `[off, off+len)` of `dev` against the current values (`after_crash` false) or the
    /// crash rules (true). Returns the number of sectors checked.
    pub async fn verify_range(
        &self,
        dev: &dyn BlockDev,
        io: &IoCtx,
        off: u64,
        len: u64,
        after_crash: bool,
    ) -> Result<u64> {
        self.scan(dev, io, off, len, after_crash, None).await
    }

    /// After a crash: verify `new_inner` as [`ModelDev::verify_after_crash`] does, then return a
    /// fresh model over it that knows what each sector now holds, so the test can go on.
    pub async fn recover(&self, io: &IoCtx, new_inner: Arc<dyn BlockDev>) -> Result<ModelDev> {
        let size = new_inner.info().size;
        let mut matched = Vec::new();
        self.scan(&*new_inner, io, 0, size - size % MODEL_SECTOR, true, Some(&mut matched)).await?;
        let initial = self.state().initial.clone();
        let mut st = ModelState::new(initial.clone());
        for (s, v) in matched {
            if !v.same(&initial) {
                let chunk = st.chunk_mut(s / CHUNK_SECTORS);
                chunk[(s % CHUNK_SECTORS) as usize].stable = smallvec![v];
            }
        }
        Ok(ModelDev { inner: new_inner, state: Arc::new(Mutex::new(st)) })
    }

    async fn scan(
        &self,
        dev: &dyn BlockDev,
        io: &IoCtx,
        off: u64,
        len: u64,
        after_crash: bool,
        mut matched: Option<&mut Vec<(u64, Val)>>,
    ) -> Result<u64> {
        check_aligned(off, len)?;
        const STEP: u64 = 1 << 20;
        let check = if after_crash { Check::AfterCrash } else { Check::Current };
        let mut buf = SharedBuf::new(STEP.min(len.max(1)) as usize);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(STEP);
            dev.read(io, off + done, buf.io_range(0, n as usize), IoTag::meta("model.verify"))
                .await
                .map_err(|e| e.context(format_args!("model verify of {}", dev.describe())))?;
            self.state()
                .check(off + done, &buf.bytes()[..n as usize], check, &[], &[], matched.as_deref_mut())
                .map_err(|e| e.context(dev.describe()))?;
            done += n;
        }
        Ok(len / MODEL_SECTOR)
    }

    fn modify(&self, op: ModOp, fua: bool, fut: impl FnOnce() -> IoFuture) -> IoFuture {
        let id = self.state().start_modify(op);
        let fut = fut();
        let state = self.state.clone();
        Box::pin(async move {
            let r = fut.await;
            lock(&state).complete_modify(id, r.is_ok(), fua);
            r
        })
    }
}

fn lock(m: &Mutex<ModelState>) -> MutexGuard<'_, ModelState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn check_aligned(off: u64, len: u64) -> Result<()> {
    if !off.is_multiple_of(MODEL_SECTOR) || !len.is_multiple_of(MODEL_SECTOR) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("model: request [{off}, +{len}) is not aligned to {MODEL_SECTOR}-byte sectors"),
        ));
    }
    Ok(())
}

impl BlockDev for ModelDev {
    fn info(&self) -> DevInfo {
        self.inner.info()
    }

    fn read(&self, io: &IoCtx, off: u64, bufs: IoBufs, tag: IoTag) -> IoFuture {
        let len = bufs.len() as u64;
        if let Err(e) = check_aligned(off, len) {
            return crate::ready(Err(e));
        }
        let id = {
            let mut st = self.state();
            let id = st.next_id();
            let extra = st.pending.iter().filter(|p| p.op.overlaps(off, len)).map(|p| p.op.clone()).collect();
            st.reads.push(ReadWatch { id, off, len, extra, stash: Vec::new() });
            id
        };
        let fut = self.inner.read(io, off, bufs.clone(), tag);
        let (state, name) = (self.state.clone(), self.inner.describe());
        Box::pin(async move {
            let r = fut.await;
            let found = if r.is_ok() { bufs.to_vec() } else { Vec::new() };
            let mut st = lock(&state);
            let pos = st.reads.iter().position(|w| w.id == id).expect("read watch registered");
            let watch = st.reads.swap_remove(pos);
            r?;
            st.stats.reads += 1;
            st.check(off, &found, Check::Current, &watch.extra, &watch.stash, None).map_err(|e| e.context(name))
        })
    }

    fn write(&self, io: &IoCtx, off: u64, bufs: IoBufs, fua: bool, tag: IoTag) -> IoFuture {
        let len = bufs.len() as u64;
        if let Err(e) = check_aligned(off, len) {
            return crate::ready(Err(e));
        }
        let id = self.state().next_id();
        let data = Arc::new(WriteData { id, off, bytes: bufs.to_vec() });
        let op = ModOp { off, len, data: OpData::Write(data) };
        self.modify(op, fua, || self.inner.write(io, off, bufs, fua, tag))
    }

    fn flush(&self, io: &IoCtx, tag: IoTag) -> IoFuture {
        let epoch = self.state().seq;
        let fut = self.inner.flush(io, tag);
        let state = self.state.clone();
        Box::pin(async move {
            let r = fut.await;
            if r.is_ok() {
                lock(&state).complete_flush(epoch);
            }
            r
        })
    }

    fn discard(&self, io: &IoCtx, off: u64, len: u64, tag: IoTag) -> IoFuture {
        if let Err(e) = check_aligned(off, len) {
            return crate::ready(Err(e));
        }
        self.modify(ModOp { off, len, data: OpData::Discard }, false, || self.inner.discard(io, off, len, tag))
    }

    fn write_zeroes(&self, io: &IoCtx, off: u64, len: u64, unmap: bool, tag: IoTag) -> IoFuture {
        if let Err(e) = check_aligned(off, len) {
            return crate::ready(Err(e));
        }
        self.modify(ModOp { off, len, data: OpData::Zeros }, false, || {
            self.inner.write_zeroes(io, off, len, unmap, tag)
        })
    }

    fn describe(&self) -> String {
        format!("model({})", self.inner.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemDisk;

    fn write(io: &IoCtx, dev: &dyn BlockDev, off: u64, byte: u8, len: usize) {
        let mut b = SharedBuf::from_slice(&vec![byte; len]);
        io.block_on(dev.write(io, off, b.io(), false, IoTag::DATA)).unwrap();
    }

    #[test]
    fn read_of_wrong_data_is_reported_with_sector_and_expected() {
        let io = IoCtx::new().unwrap();
        let mem = Arc::new(MemDisk::new(1 << 20).unwrap());
        let model = ModelDev::new(mem.clone());
        write(&io, &model, 4096, 0xaa, 1024);
        // Corrupt the second sector behind the model's back.
        write(&io, &*mem, 4608, 0xbb, 512);
        let mut r = SharedBuf::new(1024);
        let err = io.block_on(model.read(&io, 4096, r.io(), IoTag::DATA)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        let msg = err.to_string();
        assert!(msg.contains("sector 9 (byte 4608)"), "{msg}");
        assert!(msg.contains("found bbbb"), "{msg}");
        assert!(msg.contains("write #"), "{msg}");
    }

    #[test]
    fn expected_follows_writes_and_write_zeroes() {
        let io = IoCtx::new().unwrap();
        let model = ModelDev::new(Arc::new(MemDisk::new(1 << 20).unwrap()));
        write(&io, &model, 0, 7, 1024);
        io.block_on(model.write_zeroes(&io, 512, 512, false, IoTag::DATA)).unwrap();
        let exp = model.expected(0, 1536).unwrap();
        assert_eq!(&exp[..512], &[7u8; 512][..]);
        assert_eq!(&exp[512..], &[0u8; 1024][..]);
    }

    #[test]
    fn discard_leaves_old_or_zero_ambiguous() {
        let io = IoCtx::new().unwrap();
        let model = ModelDev::new(Arc::new(MemDisk::new(1 << 20).unwrap()));
        write(&io, &model, 0, 7, 512);
        io.block_on(model.discard(&io, 0, 512, IoTag::DATA)).unwrap();
        assert!(model.expected(0, 512).is_err());
        io.block_on(model.verify_all(&*model.inner().clone(), &io)).unwrap();
    }

    #[test]
    fn crash_rules_allow_old_or_new_but_not_lost_flushed_data() {
        let io = IoCtx::new().unwrap();
        let mem = Arc::new(MemDisk::new(1 << 20).unwrap());
        let model = ModelDev::new(mem.clone());
        write(&io, &model, 0, 1, 512);
        io.block_on(model.flush(&io, IoTag::DATA)).unwrap();
        write(&io, &model, 0, 2, 512);
        // "Old" is fine after a crash.
        write(&io, &*mem, 0, 1, 512);
        io.block_on(model.verify_after_crash(&*mem, &io)).unwrap();
        // Zeros (the value before the flushed write) are not.
        write(&io, &*mem, 0, 0, 512);
        let err = io.block_on(model.verify_after_crash(&*mem, &io)).unwrap_err();
        assert!(err.to_string().contains("sector 0"), "{err}");
    }
}
