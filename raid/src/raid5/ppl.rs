//! The partial parity log (in the spirit of md's PPL) that closes the RAID 5 write hole.
//!
//! Before a stripe write that could leave parity inconsistent with what a missing member needs,
//! an entry goes (FUA) to the log area of that stripe's parity member: the stripe, the modified
//! ranges of the present members, and the partial parity `PP = newP ^ (new data of those
//! ranges)` — the XOR of everything else in the stripe, including a missing member's data. After
//! a crash, `P = PP ^ (modified ranges as found on disk)` is consistent with the disk whatever
//! subset of the writes landed, so a missing member reconstructs to data it really held.
//!
//! Entries are packed (group commit, [`ppl_unit`](super::ppl_unit) has the layout): entries for
//! one parity member that arrive while a log write to it is in flight wait and go together in
//! the next one, a unit in one slot. A writer's data and parity writes start only once the unit
//! holding its entry has completed (FUA).
//!
//! Healthy full-stripe writes carry no entry (unless an older entry of the stripe could still be
//! replayed: then a header-only "recompute" entry supersedes it). An entry assumes the bytes it
//! does not cover are stable, so a stripe written since the last flush is flushed before the
//! next logged write to it. Units live in fixed slots (`seq % slots`); a log header per member
//! records `valid_from`, below which entries are stable and never replayed. It advances after a
//! flush; a slot is reused only once its previous unit is below it.

use std::collections::{BTreeMap, HashMap};

use blockdev::int_hash::IntMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use blockdev::{DmaBuf, Error, ErrorKind, IoCtx, IoTag, Result, SharedBuf};
use futures::channel::oneshot;
use smallvec::SmallVec;

use crate::core::Core;
use crate::member::MemberState;
use crate::raid5::parity::xor_into;
pub use crate::raid5::ppl_unit::Entry;
use crate::raid5::ppl_unit::{decode_header, decode_unit, encode_header, encode_unit_header, Header, UnitSize, BLOCK};

/// A partial parity on its way to the log.
pub enum Payload {
    /// The pooled buffer it was computed in: the unit's write takes it from there.
    Buf(DmaBuf),
    /// Bytes computed elsewhere (degraded or rare paths).
    Bytes(Vec<u8>),
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        match self {
            Payload::Buf(b) => b.as_slice(),
            Payload::Bytes(v) => v,
        }
    }
}

/// An entry to log.
pub type LogEntry = Entry<Payload>;

/// Tracked stripes after which a write forces a flush (bounds memory without guest flushes).
const MAX_TRACKED: usize = 1 << 16;

/// Flushes a log write waits through for a free slot before it fails.
const MAX_SLOT_WAITS: u32 = 1000;

/// Bytes of log area for `slots` units of chunk size `chunk`.
pub fn area_len(chunk: u64, slots: u64) -> u64 {
    BLOCK + slots * (BLOCK + chunk)
}

/// What a writer waiting for its entry's unit hears.
enum Msg {
    /// The unit holding the entry completed (or failed).
    Done(Result<()>),
    /// Write the next unit (the writer's own entry is first in line), then wait on this.
    Lead(oneshot::Receiver<Msg>),
}

/// Entries waiting for one parity member's next log write.
#[derive(Default)]
struct Queue {
    pending: Vec<(LogEntry, oneshot::Sender<Msg>)>,
    /// A unit is being written to this member (by the writer that was handed the lead).
    writing: bool,
}

/// What the log knows about one stripe's writes since the last flush that retired it.
#[derive(Default)]
struct Track {
    inflight: u32,
    /// Epoch in which the last write to the stripe completed.
    epoch: u64,
    /// Units holding entries of the stripe's current writes.
    seqs: SmallVec<[u64; 2]>,
    /// Units holding entries of writes that completed before the current one began (in epoch
    /// `settled_epoch` at the latest): a flush makes them stable whatever the current write is
    /// doing. Without this, a writer waiting for a log slot would keep its stripe's older units
    /// live, and with every slot taken nothing could free one.
    settled: SmallVec<[u64; 2]>,
    settled_epoch: u64,
}

/// One stripe fewer in unit `q`; the unit stops being live when none is left.
fn retire(live: &mut BTreeMap<u64, u32>, q: u64) {
    if let Some(n) = live.get_mut(&q) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            live.remove(&q);
        }
    }
}

#[derive(Default)]
struct State {
    next_seq: u64,
    persisted_valid_from: u64,
    /// Units that may still be replayed: sequence number -> stripes not yet retired.
    live: BTreeMap<u64, u32>,
    tracked: IntMap<u64, Track>,
    last_logged: IntMap<u64, u64>,
}

/// The running log.
pub(crate) struct Ppl {
    offset: u64,
    slot_size: u64,
    slots: u64,
    chunk: u64,
    state: Mutex<State>,
    queues: Mutex<IntMap<usize, Queue>>,
    /// Units written and the entries they held (how well entries pack).
    units: AtomicU64,
    entries: AtomicU64,
    header_lock: futures::lock::Mutex<()>,
}

impl Ppl {
    /// A log in `[offset, offset+len)` of every member, for chunk size `chunk`.
    pub fn new(offset: u64, len: u64, chunk: u64) -> Ppl {
        let slot_size = BLOCK + chunk;
        Ppl {
            offset,
            slot_size,
            slots: (len.saturating_sub(BLOCK) / slot_size).max(1),
            chunk,
            state: Mutex::new(State::default()),
            queues: Mutex::new(IntMap::default()),
            units: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            header_lock: futures::lock::Mutex::new(()),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A write to stripe `s` must flush first: the stripe has writes that may not be stable yet
    /// and this write is partial (its entry would assume the rest of the stripe stable), or
    /// too many stripes are tracked. A `full` stripe write's entry covers the whole stripe.
    pub fn needs_flush_before(&self, s: u64, full: bool) -> bool {
        let st = self.st();
        (!full && st.tracked.contains_key(&s)) || st.tracked.len() >= MAX_TRACKED
    }

    /// A write to stripe `s` starts.
    pub fn begin(&self, s: u64) {
        let mut st = self.st();
        let t = st.tracked.entry(s).or_default();
        if t.inflight == 0 && !t.seqs.is_empty() {
            // Every unit logged so far for this stripe belongs to a write that completed.
            let seqs = std::mem::take(&mut t.seqs);
            t.settled.extend(seqs);
            t.settled_epoch = t.epoch;
        }
        t.inflight += 1;
    }

    /// The write to stripe `s` that began completed in `epoch`.
    pub fn end(&self, s: u64, epoch: u64) {
        if let Some(t) = self.st().tracked.get_mut(&s) {
            t.inflight = t.inflight.saturating_sub(1);
            t.epoch = t.epoch.max(epoch);
        }
    }

    /// An entry of stripe `s` may still be replayed at recovery.
    pub fn has_replayable(&self, s: u64) -> bool {
        let st = self.st();
        st.last_logged.get(&s).is_some_and(|&q| q >= st.persisted_valid_from)
    }

    /// Units written since assembly and the entries they held.
    pub fn packing(&self) -> (u64, u64) {
        (self.units.load(Ordering::Relaxed), self.entries.load(Ordering::Relaxed))
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, IntMap<usize, Queue>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Log `entry` (its `seq` is assigned here) to the log of `parity_member`: return once the
    /// unit holding it has been written with FUA. Entries that arrive while a unit is being
    /// written to that member go together in the next one.
    pub async fn log(&self, core: &Core, io: &IoCtx, parity_member: usize, entry: LogEntry) -> Result<()> {
        let (tx, mut rx) = oneshot::channel();
        let lead = {
            let mut qs = self.queues();
            let q = qs.entry(parity_member).or_default();
            q.pending.push((entry, tx));
            !std::mem::replace(&mut q.writing, true)
        };
        if lead {
            self.write_next_unit(core, io, parity_member).await;
        }
        loop {
            match rx.await {
                Ok(Msg::Done(r)) => return r,
                Ok(Msg::Lead(next)) => {
                    rx = next;
                    self.write_next_unit(core, io, parity_member).await;
                }
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!("{}: partial parity log write to member {parity_member} abandoned", core.name),
                    ))
                }
            }
        }
    }

    /// Write the waiting entries of `p` that fit one unit (the caller's own is first), tell
    /// their writers, then hand the lead to the first writer still waiting.
    async fn write_next_unit(&self, core: &Core, io: &IoCtx, p: usize) {
        let batch: SmallVec<[(LogEntry, oneshot::Sender<Msg>); 8]> = {
            let mut qs = self.queues();
            let q = qs.entry(p).or_default();
            let mut size = UnitSize::new();
            let n = q.pending.iter().take_while(|(e, _)| size.try_add(e, self.chunk)).count();
            q.pending.drain(..n).collect()
        };
        let mut entries: SmallVec<[LogEntry; 8]> = SmallVec::new();
        let mut txs: SmallVec<[oneshot::Sender<Msg>; 8]> = SmallVec::new();
        for (e, tx) in batch {
            entries.push(e);
            txs.push(tx);
        }
        let res = self.write_unit(core, io, p, entries).await;
        for tx in txs {
            let _ = tx.send(Msg::Done(res.clone()));
        }
        let mut qs = self.queues();
        let q = qs.entry(p).or_default();
        while !q.pending.is_empty() {
            let (entry, tx) = q.pending.remove(0);
            let (next_tx, next_rx) = oneshot::channel();
            q.pending.insert(0, (entry, next_tx));
            if tx.send(Msg::Lead(next_rx)).is_ok() {
                return;
            }
            // That writer is gone: drop its entry and offer the lead to the next.
            q.pending.remove(0);
        }
        q.writing = false;
    }

    /// Write one unit of `entries` to member `p`'s log (FUA), waiting for a free slot.
    async fn write_unit(&self, core: &Core, io: &IoCtx, p: usize, entries: SmallVec<[LogEntry; 8]>) -> Result<()> {
        let mut tries = 0u32;
        let seq = loop {
            {
                let mut st = self.st();
                let seq = st.next_seq;
                if seq < st.persisted_valid_from + self.slots {
                    st.next_seq += 1;
                    st.live.insert(seq, entries.len() as u32);
                    for e in &entries {
                        st.tracked.entry(e.stripe).or_default().seqs.push(seq);
                        st.last_logged.insert(e.stripe, seq);
                    }
                    break seq;
                }
            }
            // The slot still holds a replayable unit: make completed writes stable.
            core.flush_group.flush(core, io).await?;
            tries += 1;
            if tries > 2 {
                yield_now().await;
            }
            // Flushes retire the units of every completed write, so a slot frees up unless the
            // oldest unit belongs to a write that is itself waiting here (a second entry after
            // a member failed mid-write): fail that write rather than spin for ever.
            if tries >= MAX_SLOT_WAITS {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "{}: partial parity log of member {p} full: no slot freed after {tries} flushes",
                        core.name
                    ),
                ));
            }
        };
        self.units.fetch_add(1, Ordering::Relaxed);
        self.entries.fetch_add(entries.len() as u64, Ordering::Relaxed);
        let at = self.offset + BLOCK + (seq % self.slots) * self.slot_size;
        // The header block, then each payload from its own buffer (one vectored write).
        let mut head = io.pool().shared(BLOCK as usize);
        encode_unit_header(&core.uuid, seq, &entries, head.bytes_mut())?;
        let mut bufs = head.io();
        for e in entries {
            let mut b = match e.pp {
                None => continue,
                Some(Payload::Buf(b)) => SharedBuf::from_dma(b),
                Some(Payload::Bytes(v)) => SharedBuf::from_slice(&v),
            };
            bufs.append(b.io());
        }
        core.write_member_raw(io, p, at, bufs, true, IoTag::meta("raid5.ppl")).await
    }

    /// After a flush that started in epoch `e`: retire stable writes and advance `valid_from`.
    pub async fn after_flush(&self, core: &Core, io: &IoCtx, e: u64) -> Result<()> {
        let new_vf = {
            let mut st = self.st();
            let State { tracked, live, .. } = &mut *st;
            tracked.retain(|_, t| {
                if t.settled_epoch <= e {
                    for q in t.settled.drain(..) {
                        retire(live, q);
                    }
                }
                let stable = t.inflight == 0 && t.epoch <= e;
                if stable {
                    for q in t.seqs.drain(..) {
                        retire(live, q);
                    }
                }
                !(stable && t.settled.is_empty())
            });
            // A burst (a prefill of full stripes, say) can leave the table mostly empty: shrink
            // it, or every later lookup and this scan walk the burst's size.
            if tracked.capacity() > 256 && tracked.capacity() > 8 * tracked.len() {
                tracked.shrink_to(2 * tracked.len());
            }
            let vf = st.live.keys().next().copied().unwrap_or(st.next_seq);
            (vf > st.persisted_valid_from).then_some(vf)
        };
        if let Some(vf) = new_vf {
            self.write_header(core, io, vf).await?;
        }
        Ok(())
    }

    /// Write `valid_from` to every writable member's log header (FUA).
    async fn write_header(&self, core: &Core, io: &IoCtx, vf: u64) -> Result<()> {
        let _g = self.header_lock.lock().await;
        if vf <= self.st().persisted_valid_from {
            return Ok(());
        }
        let bytes = encode_header(&core.uuid, vf);
        let targets = core.writable_members();
        let futs: Vec<blockdev::IoFuture> = targets
            .iter()
            .map(|&m| {
                let mut b = SharedBuf::from_slice(&bytes);
                core.write_member_raw(io, m, self.offset, b.io(), true, IoTag::meta("raid5.ppl_header"))
            })
            .collect();
        crate::core::write_members_tolerant(core, io, &targets, futs).await?;
        let mut st = self.st();
        st.persisted_valid_from = st.persisted_valid_from.max(vf);
        let pvf = st.persisted_valid_from;
        st.last_logged.retain(|_, q| *q >= pvf);
        Ok(())
    }

    /// Format the area on member `m` (a header with `valid_from` 0, empty slots).
    pub async fn format_member(&self, core: &Core, io: &IoCtx, m: usize) -> Result<()> {
        let total = (BLOCK + self.slots * self.slot_size) as usize;
        let mut zeros = io.pool().shared(total);
        zeros.bytes_mut().fill(0);
        zeros.bytes_mut()[..BLOCK as usize].copy_from_slice(&encode_header(&core.uuid, self.st().persisted_valid_from));
        core.write_member_raw(io, m, self.offset, zeros.io(), true, IoTag::meta("raid5.ppl_format")).await
    }

    /// Crash recovery: replay the newest replayable entry of each stripe, then start the log
    /// after the newest sequence seen. Returns how many stripes were replayed.
    pub async fn recover(&self, core: &Core, io: &IoCtx) -> Result<usize> {
        let geo = core.geo;
        let mut newest: HashMap<u64, (usize, Entry)> = HashMap::new();
        let mut max_seq = None::<u64>;
        let total = (BLOCK + self.slots * self.slot_size) as usize;
        for p in 0..core.members.len() {
            if core.member(p).state() != MemberState::Active {
                continue;
            }
            let Some(dev) = core.member(p).dev() else { continue };
            let mut area = io.pool().shared(total);
            dev.read(io, self.offset, area.io(), IoTag::meta("raid5.ppl_recover")).await?;
            let bytes = area.bytes();
            let vf = match decode_header(bytes, &core.uuid) {
                Header::Missing => 0,
                Header::Valid(vf) => vf,
                Header::OtherVersion(v) => {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!(
                            "member {}: partial parity log layout version {v} is not supported (only {})",
                            core.member(p).name(),
                            crate::raid5::ppl_unit::LOG_VERSION
                        ),
                    ))
                }
            };
            for slot in 0..self.slots {
                let at = (BLOCK + slot * self.slot_size) as usize;
                let Some(b) = bytes.get(at..at + self.slot_size as usize) else { break };
                let Some((seq, entries)) = decode_unit(b, &core.uuid, geo.chunk, geo.members) else { continue };
                max_seq = max_seq.max(Some(seq));
                if seq < vf {
                    continue;
                }
                // One stripe appears at most once per unit (its writes serialize on the stripe
                // lock and each waits for its unit); were it twice, the later would win.
                for e in entries {
                    if e.stripe >= geo.stripes() || geo.parity_member(e.stripe) != p {
                        continue;
                    }
                    if newest.get(&e.stripe).is_none_or(|(_, old)| old.seq <= e.seq) {
                        newest.insert(e.stripe, (p, e));
                    }
                }
            }
        }
        let mut replayed = 0;
        for (_, (p, e)) in newest {
            if self.replay(core, io, p, &e).await? {
                replayed += 1;
            }
        }
        let next = max_seq.map_or(0, |q| q + 1);
        {
            let mut st = self.st();
            st.next_seq = next;
        }
        core.flush_all(io).await?;
        self.write_header(core, io, next).await?;
        {
            let mut st = self.st();
            st.persisted_valid_from = next;
        }
        Ok(replayed)
    }

    /// Recompute parity of one logged stripe from the partial parity and the disk.
    ///
    /// A modified member that cannot be read back (it failed since) leaves its own modified
    /// range as it is: the partial parity needs that member's bytes as found on disk there. The
    /// rest of the entry's range is replayed all the same, so the bytes that member held but
    /// this write did not touch reconstruct to what it really held.
    async fn replay(&self, core: &Core, io: &IoCtx, p: usize, e: &Entry) -> Result<bool> {
        let base = e.stripe * core.geo.chunk;
        let (readable, missing): (Vec<_>, Vec<_>) =
            e.mods.iter().copied().partition(|&(m, a, b)| core.member(m).readable(base + a, b - a));
        if !missing.is_empty() {
            tracing::warn!(
                "{}: stripe {}: a logged member is missing; its written range keeps the parity it has (and may read back torn)",
                core.name,
                e.stripe
            );
        }
        let len = (e.hi - e.lo) as usize;
        let mut parity = e.pp.clone().unwrap_or_else(|| vec![0; len]);
        for &(m, a, b) in &readable {
            let got = core.read_member_buf(io, m, base + a, (b - a) as usize, IoTag::meta("raid5.ppl_replay")).await?;
            let at = (a - e.lo) as usize;
            xor_into(&mut parity[at..at + (b - a) as usize], got.bytes());
        }
        let pieces = replayable_pieces(e.lo, e.hi, &missing);
        for &(a, b) in &pieces {
            let mut buf = SharedBuf::from_slice(&parity[(a - e.lo) as usize..(b - e.lo) as usize]);
            core.write_member(io, p, base + a, buf.io(), false, IoTag::meta("raid5.ppl_replay")).await?;
        }
        Ok(!pieces.is_empty())
    }
}

/// The parts of `[lo, hi)` outside every `missing` member's modified range `(m, a, b)`.
fn replayable_pieces(lo: u64, hi: u64, missing: &[(usize, u64, u64)]) -> Vec<(u64, u64)> {
    let mut cut: Vec<(u64, u64)> =
        missing.iter().map(|&(_, a, b)| (a.max(lo), b.min(hi))).filter(|(a, b)| a < b).collect();
    cut.sort_unstable();
    let mut out = Vec::new();
    let mut at = lo;
    for (a, b) in cut {
        if a > at {
            out.push((at, a));
        }
        at = at.max(b);
    }
    if at < hi {
        out.push((at, hi));
    }
    out
}

/// Let other tasks on this thread run once.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}
