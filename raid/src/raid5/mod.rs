//! RAID 5, left-symmetric. Reads go straight to the data members (zero-copy) and are rebuilt
//! from parity when a member is missing or a read fails (the bad range is then rewritten).
//! Writes are cut per stripe; each stripe copies the guest data into stripe buffers, takes its
//! stripe lock, plans its reads ([`plan`]), logs partial parity when needed ([`ppl`]), and
//! writes data and parity in parallel.

mod full_stripes;
pub mod parity;
pub mod plan;
pub mod ppl;
pub mod ppl_unit;

use std::sync::Arc;

use blockdev::join::{join_all, try_join_all, INLINE};
use blockdev::{Error, ErrorKind, IoBufs, IoCtx, IoTag, Result, SharedBuf};

use crate::core::{write_members_tolerant, Core, MemberIo};
use parity::{xor_into, xor_pair};
use plan::{complement, ModRange, Plan};
use ppl::{LogEntry, Payload};
use smallvec::SmallVec;

/// New data for one data chunk of a stripe.
pub(super) struct Seg {
    idx: usize,
    a: u64,
    buf: SharedBuf,
}

/// Read `bufs` at array offset `off`.
pub(crate) async fn read(core: Arc<Core>, io: IoCtx, off: u64, bufs: IoBufs, tag: IoTag) -> Result<()> {
    let stripe_bytes = core.geo.stripe_bytes();
    let futs = core.geo.split(off, bufs.len() as u64).into_iter().map(|e| {
        let b = bufs.slice(e.req_off as usize, e.len as usize);
        let s = (off + e.req_off) / stripe_bytes;
        let fut: blockdev::IoFuture =
            Box::pin(read_extent(core.clone(), io.clone(), s, e.member, e.member_off, b, tag));
        fut
    });
    try_join_all(futs).await
}

async fn read_extent(core: Arc<Core>, io: IoCtx, s: u64, m: usize, off: u64, bufs: IoBufs, tag: IoTag) -> Result<()> {
    let len = bufs.len() as u64;
    if core.member(m).readable(off, len) {
        match core.read_member(&io, m, off, bufs.clone(), tag).await {
            Ok(()) => return Ok(()),
            Err(e) => return reconstruct_into(&core, &io, s, m, off, &bufs, Some(e)).await,
        }
    }
    reconstruct_into(&core, &io, s, m, off, &bufs, None).await
}

/// Rebuild member `m`'s bytes `[off, off+len)` of stripe `s` from the other members into `bufs`;
/// when `read_err` is set (a read error, not a missing member), write them back and count it.
pub(crate) async fn reconstruct_into(
    core: &Core,
    io: &IoCtx,
    s: u64,
    m: usize,
    off: u64,
    bufs: &IoBufs,
    read_err: Option<Error>,
) -> Result<()> {
    let _g = core.locks.lock(s).await;
    let data = reconstruct(core, io, m, off, bufs.len()).await?;
    bufs.copy_from_slice(0, &data);
    if let Some(err) = read_err {
        let mut b = SharedBuf::from_slice(&data);
        let ok = core.write_member(io, m, off, b.io(), false, IoTag::data("raid5.repair")).await.is_ok();
        core.note_member_error(io, m, err, ok).await?;
    }
    Ok(())
}

/// XOR of every member but `m` over member range `[off, off+len)` (caller holds the stripe).
pub(crate) async fn reconstruct(core: &Core, io: &IoCtx, m: usize, off: u64, len: usize) -> Result<Vec<u8>> {
    let others: Vec<usize> = (0..core.members.len()).filter(|&o| o != m).collect();
    if let Some(&bad) = others.iter().find(|&&o| !core.member(o).readable(off, len as u64)) {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "{}: cannot rebuild member {m} at {off}: member {bad} ({}) is {} too",
                core.name,
                core.member(bad).name(),
                core.member(bad).state().as_str()
            ),
        ));
    }
    let mut bufs: Vec<SharedBuf> = others.iter().map(|_| io.pool().shared(len)).collect();
    let futs = others
        .iter()
        .zip(bufs.iter_mut())
        .map(|(&o, b)| core.read_member(io, o, off, b.io(), IoTag::data("raid5.reconstruct")));
    try_join_all(futs).await?;
    let mut out = vec![0u8; len];
    for b in &bufs {
        xor_into(&mut out, b.bytes());
    }
    Ok(out)
}

/// Write `bufs` at array offset `off`.
pub(crate) async fn write(core: Arc<Core>, io: IoCtx, off: u64, bufs: IoBufs, fua: bool) -> Result<()> {
    core.ensure_dirty(&io).await?;
    let geo = core.geo;
    let sb = geo.stripe_bytes();
    let len = bufs.len() as u64;
    let mut futs: Vec<blockdev::IoFuture> = Vec::new();
    // Two or more consecutive full stripes go together (one write per member); others alone.
    let (full_lo, full_hi) = (off.div_ceil(sb), (off + len) / sb);
    let run = full_hi >= full_lo + 2;
    if len > 0 && (off + len - 1) / sb == off / sb {
        // One stripe (every small write): no task list to build.
        let s = off / sb;
        let segs = copy_segs(&core, &io, s, off, 0, len, &bufs);
        return write_stripe(core, io, s, segs, fua).await;
    }
    let mut pos = 0;
    while pos < len {
        let s = (off + pos) / sb;
        if run && s == full_lo {
            let r = full_stripes::Run::copy_in(&core, &io, s, full_hi - s, &bufs, pos as usize);
            futs.push(Box::pin(full_stripes::write(core.clone(), io.clone(), r, fua)));
            pos = full_hi * sb - off;
            continue;
        }
        let end = len.min((s + 1) * sb - off);
        let segs = copy_segs(&core, &io, s, off, pos, end, &bufs);
        futs.push(Box::pin(write_stripe(core.clone(), io.clone(), s, segs, fua)));
        pos = end;
    }
    try_join_all(futs).await
}

/// Copy request bytes `[pos, end)` (inside stripe `s`; the request starts at array offset
/// `off`) into one stripe buffer per data chunk they touch.
fn copy_segs(core: &Core, io: &IoCtx, s: u64, off: u64, pos: u64, end: u64, bufs: &IoBufs) -> Vec<Seg> {
    let geo = core.geo;
    let mut segs = Vec::with_capacity(2);
    for e in geo.split(off + pos, end - pos) {
        let idx = geo.data_index(s, e.member).unwrap_or(0);
        let mut buf = io.pool().shared(e.len as usize);
        bufs.copy_to_slice((pos + e.req_off) as usize, buf.bytes_mut());
        segs.push(Seg { idx, a: e.member_off - s * geo.chunk, buf });
    }
    segs
}

/// Write zeroes by writing zero buffers (parity stays consistent).
pub(crate) async fn write_zeroes(core: Arc<Core>, io: IoCtx, off: u64, len: u64) -> Result<()> {
    const STEP: u64 = 1 << 20;
    let mut pos = 0;
    while pos < len {
        let n = STEP.min(len - pos);
        let mut z = io.pool().shared(n as usize);
        z.bytes_mut().fill(0);
        write(core.clone(), io.clone(), off + pos, z.io(), false).await?;
        pos += n;
    }
    Ok(())
}

pub(super) async fn write_stripe(core: Arc<Core>, io: IoCtx, s: u64, segs: Vec<Seg>, fua: bool) -> Result<()> {
    let failures = core.flush_group.failures();
    let _g = core.locks.lock(s).await;
    let base = s * core.geo.chunk;
    let lo = segs.iter().map(|g| g.a).min().unwrap_or(0);
    let hi = segs.iter().map(|g| g.a + g.buf.len() as u64).max().unwrap_or(0);
    let marked = match &core.bitmap {
        Some(bm) => Some(bm.start_write(&core, &io, base + lo, hi - lo).await?),
        None => None,
    };
    // A full-stripe write's log entry (if it needs one) covers every present data byte of the
    // stripe, so it does not depend on earlier writes being stable: no flush first.
    let full =
        segs.len() == core.geo.data_members() && segs.iter().all(|g| g.a == 0 && g.buf.len() as u64 == core.geo.chunk);
    if let Some(ppl) = &core.ppl {
        if ppl.needs_flush_before(s, full) {
            if let Err(e) = core.flush_group.flush(&core, &io).await {
                if let (Some(bm), Some(mk)) = (&core.bitmap, marked) {
                    bm.end_write(mk, core.epoch_now());
                }
                return Err(e);
            }
        }
        ppl.begin(s);
    }
    let res = write_stripe_locked(&core, &io, s, segs, lo, hi, fua).await;
    let epoch = core.epoch_now();
    if let Some(ppl) = &core.ppl {
        ppl.end(s, epoch);
    }
    if let (Some(bm), Some(mk)) = (&core.bitmap, marked) {
        bm.end_write(mk, epoch);
    }
    res?;
    match core.ppl {
        Some(_) => core.flush_group.flush_after_failure(&core, &io, failures).await,
        None => Ok(()),
    }
}

async fn write_stripe_locked(
    core: &Core,
    io: &IoCtx,
    s: u64,
    mut segs: Vec<Seg>,
    lo: u64,
    hi: u64,
    fua: bool,
) -> Result<()> {
    let geo = core.geo;
    let d = geo.data_members();
    let base = s * geo.chunk;
    let p = geo.parity_member(s);
    let mut mods: SmallVec<[ModRange; 8]> = smallvec::smallvec![None; d];
    for g in &segs {
        mods[g.idx] = Some((g.a, g.a + g.buf.len() as u64));
    }
    let full = mods.iter().all(|m| *m == Some((0, geo.chunk)));
    let (mut newp, partial) = match core.member(p).writable() {
        true => {
            let (np, pp) = new_parity(core, io, s, &segs, &mods, lo, hi).await?;
            (Some(np), pp)
        }
        false => (None, None),
    };
    if let (Some(ppl), Some(np)) = (&core.ppl, &newp) {
        let healthy = (0..d).all(|i| core.member(geo.data_member(s, i)).writable());
        if !(full && healthy) || ppl.has_replayable(s) {
            let present = present_mods(core, s, &segs);
            let logged: SmallVec<[usize; INLINE]> = present.iter().map(|m| m.0).collect();
            let entry = match partial {
                // Computed on the way to the new parity (every modified member is present).
                Some(ppb) if present.len() == segs.len() => entry_from_partial(s, lo, hi, ppb, present),
                _ => partial_parity_entry(s, lo, hi, np.bytes(), &segs, &present, move |i| geo.data_member(s, i)),
            };
            ppl.log(core, io, p, entry).await?;
            // A member failed while the entry waited for its unit: the writes below skip it,
            // and an entry that lists it would not be replayed (it cannot be read back). Log
            // what the stripe now means first, as after a member fails mid-write.
            let still = segs.iter().map(|g| geo.data_member(s, g.idx)).filter(|&m| core.member(m).writable());
            if still.ne(logged.iter().copied()) && core.member(p).writable() {
                let now = present_mods(core, s, &segs);
                let entry = partial_parity_entry(s, lo, hi, np.bytes(), &segs, &now, move |i| geo.data_member(s, i));
                ppl.log(core, io, p, entry).await?;
            }
        }
    }
    let mut targets: SmallVec<[usize; INLINE]> = SmallVec::new();
    let mut futs: SmallVec<[MemberIo<'_>; INLINE]> = SmallVec::new();
    for g in segs.iter_mut() {
        let m = geo.data_member(s, g.idx);
        if core.member(m).writable() {
            targets.push(m);
            futs.push(core.write_member_io(io, m, base + g.a, g.buf.io(), fua, IoTag::data("raid5.data")));
        }
    }
    if let Some(pb) = newp.as_mut() {
        targets.push(p);
        futs.push(core.write_member_io(io, p, base + lo, pb.io(), fua, IoTag::data("raid5.parity")));
    }
    let failed = write_members_tolerant(core, io, &targets, futs).await?;
    // A member failed mid-write: log what the degraded stripe now means, so a crash before the
    // next flush cannot leave the failed member's data unrecoverable.
    if !failed.is_empty() && !failed.contains(&p) {
        if let (Some(ppl), Some(np)) = (&core.ppl, &newp) {
            if core.member(p).writable() {
                let entry =
                    partial_parity_entry(s, lo, hi, np.bytes(), &segs, &present_mods(core, s, &segs), move |i| {
                        geo.data_member(s, i)
                    });
                ppl.log(core, io, p, entry).await?;
            }
        }
    }
    Ok(())
}

/// The modified ranges of members that are written (present).
pub(super) fn present_mods(core: &Core, s: u64, segs: &[Seg]) -> Vec<(usize, u64, u64)> {
    let geo = core.geo;
    segs.iter()
        .filter(|g| core.member(geo.data_member(s, g.idx)).writable())
        .map(|g| (geo.data_member(s, g.idx), g.a, g.a + g.buf.len() as u64))
        .collect()
}

/// The log entry for a stripe write: `PP = newP ^ (new data of the modified present members)`.
pub(super) fn partial_parity_entry(
    s: u64,
    lo: u64,
    hi: u64,
    newp: &[u8],
    segs: &[Seg],
    present_mods: &[(usize, u64, u64)],
    member_of: impl Fn(usize) -> usize,
) -> LogEntry {
    let mut pp = newp.to_vec();
    for g in segs {
        let m = member_of(g.idx);
        if present_mods.iter().any(|&(pm, _, _)| pm == m) {
            let at = (g.a - lo) as usize;
            xor_into(&mut pp[at..at + g.buf.len()], g.buf.bytes());
        }
    }
    let pp = (!parity::is_zero(&pp)).then_some(Payload::Bytes(pp));
    LogEntry { seq: 0, stripe: s, lo, hi, mods: present_mods.to_vec(), pp }
}

/// The log entry for a stripe write whose partial parity `ppb` (over `[lo, hi)`) was computed
/// with its new parity; every modified member is present (`mods`).
fn entry_from_partial(s: u64, lo: u64, hi: u64, ppb: SharedBuf, mods: Vec<(usize, u64, u64)>) -> LogEntry {
    let pp = match parity::is_zero(ppb.bytes()) {
        true => None,
        false => Some(match ppb.try_into_dma() {
            Ok(b) => Payload::Buf(b),
            Err(b) => Payload::Bytes(b.bytes().to_vec()),
        }),
    };
    LogEntry { seq: 0, stripe: s, lo, hi, mods, pp }
}

/// New parity from the partial parity: `np = pp ^ (new data of every modified range)`.
fn parity_from_partial(np: &mut [u8], pp: &[u8], segs: &[Seg], lo: u64) {
    match segs {
        [g] if g.a == lo && g.buf.len() == np.len() => xor_pair(np, pp, g.buf.bytes()),
        _ => {
            np.copy_from_slice(pp);
            for g in segs {
                let at = (g.a - lo) as usize;
                xor_into(&mut np[at..at + g.buf.len()], g.buf.bytes());
            }
        }
    }
}

/// Compute the stripe's new parity over `[lo, hi)` by the cheapest plan that works, and with
/// read-modify-write or reconstruct-write its partial parity on the way (the XOR of everything
/// in `[lo, hi)` but the new data: what the log needs when every modified member is present).
async fn new_parity(
    core: &Core,
    io: &IoCtx,
    s: u64,
    segs: &[Seg],
    mods: &[ModRange],
    lo: u64,
    hi: u64,
) -> Result<(SharedBuf, Option<SharedBuf>)> {
    let geo = core.geo;
    let d = geo.data_members();
    let base = s * geo.chunk;
    let member_of = |i: usize| if i == d { geo.parity_member(s) } else { geo.data_member(s, i) };
    for _ in 0..core.members.len() {
        let plan = plan::choose(geo.chunk, mods, |i, a, b| core.member(member_of(i)).readable(base + a, b - a));
        match compute(core, io, s, segs, mods, lo, hi, plan).await {
            Err(PreReadError::Member(m, err)) => core.note_member_error(io, m, err, false).await?,
            Err(PreReadError::Other(err)) => return Err(err),
            Ok(np) => return Ok(np),
        }
    }
    Err(Error::new(ErrorKind::Io, format!("{}: stripe {s}: reads keep failing", core.name)))
}

/// Why computing parity failed: a member's read (it gets kicked out and the plan redone).
enum PreReadError {
    Member(usize, Error),
    Other(Error),
}

impl From<Error> for PreReadError {
    fn from(e: Error) -> Self {
        PreReadError::Other(e)
    }
}

#[allow(clippy::too_many_arguments)]
async fn compute(
    core: &Core,
    io: &IoCtx,
    s: u64,
    segs: &[Seg],
    mods: &[ModRange],
    lo: u64,
    hi: u64,
    plan: Plan,
) -> std::result::Result<(SharedBuf, Option<SharedBuf>), PreReadError> {
    let geo = core.geo;
    let d = geo.data_members();
    let base = s * geo.chunk;
    let len = (hi - lo) as usize;
    let member_of = |i: usize| if i == d { geo.parity_member(s) } else { geo.data_member(s, i) };
    let new_of = |i: usize| segs.iter().find(|g| g.idx == i);
    // A pooled buffer (its old contents are overwritten or zeroed below).
    let mut npb = io.pool().shared(len);
    let np = npb.bytes_mut();
    match plan {
        Plan::FullStripe => {
            // Every segment spans the whole chunk: copy the first, XOR the rest in.
            let mut it = segs.iter();
            match it.next() {
                Some(g) => np.copy_from_slice(g.buf.bytes()),
                None => np.fill(0),
            }
            for g in it {
                xor_into(np, g.buf.bytes());
            }
        }
        Plan::ReadModifyWrite => {
            let mut reads: SmallVec<[(usize, u64, u64); INLINE]> = smallvec::smallvec![(d, lo, hi)];
            reads.extend(segs.iter().map(|g| (g.idx, g.a, g.a + g.buf.len() as u64)));
            let mut got = read_pieces(core, io, base, &reads, member_of).await?.into_iter();
            // pp = old parity ^ old data of the modified ranges, computed in the parity's buffer.
            let mut ppb = got.next().ok_or_else(|| PreReadError::Other(Error::new(ErrorKind::Io, "no parity read")))?;
            let pp = ppb.bytes_mut();
            for (g, old) in segs.iter().zip(got) {
                let at = (g.a - lo) as usize;
                xor_into(&mut pp[at..at + g.buf.len()], old.bytes());
            }
            parity_from_partial(np, ppb.bytes(), segs, lo);
            return Ok((npb, Some(ppb)));
        }
        Plan::ReconstructWrite => {
            let reads: SmallVec<[(usize, u64, u64); INLINE]> =
                (0..d).flat_map(|i| complement(lo, hi, mods[i]).into_iter().map(move |(a, b)| (i, a, b))).collect();
            let got = read_pieces(core, io, base, &reads, member_of).await?;
            // pp = XOR of the unmodified pieces: a first piece spanning [lo, hi) is used as it
            // is (with three members, the one piece read), else a zeroed buffer collects them.
            let whole = got.first().is_some_and(|b| reads[0].1 == lo && b.len() == len);
            let mut it = reads.iter().zip(got);
            let mut ppb = match whole {
                true => it.next().map(|(_, b)| b).unwrap_or_else(|| io.pool().shared(len)),
                false => {
                    let mut z = io.pool().shared(len);
                    z.bytes_mut().fill(0);
                    z
                }
            };
            let pp = ppb.bytes_mut();
            for (&(_, a, _), old) in it {
                let at = (a - lo) as usize;
                xor_into(&mut pp[at..at + old.len()], old.bytes());
            }
            parity_from_partial(np, ppb.bytes(), segs, lo);
            return Ok((npb, Some(ppb)));
        }
        Plan::Degraded(u) => {
            np.fill(0);
            let reads: SmallVec<[(usize, u64, u64); INLINE]> =
                (0..=d).filter(|&i| i != u).map(|i| (i, lo, hi)).collect();
            let got = read_pieces(core, io, base, &reads, member_of).await?;
            // Old content of u = XOR of all the others (data and parity).
            let mut old_u = vec![0u8; len];
            for b in &got {
                xor_into(&mut old_u, b.bytes());
            }
            let mut olds: Vec<Vec<u8>> = Vec::with_capacity(d);
            let mut it = reads.iter().zip(&got);
            for i in 0..d {
                if i == u {
                    olds.push(old_u.clone());
                } else if let Some((_, b)) = it.next() {
                    olds.push(b.bytes().to_vec());
                }
            }
            for (i, old) in olds.iter_mut().enumerate() {
                if let Some(g) = new_of(i) {
                    let at = (g.a - lo) as usize;
                    old[at..at + g.buf.len()].copy_from_slice(g.buf.bytes());
                }
                xor_into(np, old);
            }
        }
        Plan::Impossible => {
            return Err(PreReadError::Other(Error::new(
                ErrorKind::Io,
                format!("{}: stripe {s}: too many members unavailable to update parity", core.name),
            )))
        }
    }
    Ok((npb, None))
}

/// Read pieces `(data index or d for parity, a, b)` of stripe at member offset `base`.
async fn read_pieces(
    core: &Core,
    io: &IoCtx,
    base: u64,
    reads: &[(usize, u64, u64)],
    member_of: impl Fn(usize) -> usize,
) -> std::result::Result<SmallVec<[SharedBuf; INLINE]>, PreReadError> {
    let mut bufs: SmallVec<[SharedBuf; INLINE]> =
        reads.iter().map(|&(_, a, b)| io.pool().shared((b - a) as usize)).collect();
    let futs: SmallVec<[MemberIo<'_>; INLINE]> = reads
        .iter()
        .zip(bufs.iter_mut())
        .map(|(&(i, a, _), buf)| {
            core.read_member_io(io, member_of(i), base + a, buf.io(), IoTag::data("raid5.preread"))
        })
        .collect();
    for (&(i, _, _), r) in reads.iter().zip(join_all(futs).await) {
        if let Err(e) = r {
            return Err(PreReadError::Member(member_of(i), e));
        }
    }
    Ok(bufs)
}
