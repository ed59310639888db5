//! A run of consecutive full stripes of one request, written together: the stripes are locked
//! in ascending order (single-stripe writers lock one, so no cycle can form), parity is
//! computed per stripe from the new data alone, and each member gets *one* write covering the
//! whole run (its chunks of consecutive rows are contiguous), not one per stripe: a 1 MiB write
//! over 64 KiB chunks on three members costs 3 member writes instead of 24.
//!
//! Only the plain case goes this way: every member active and no stripe of the run with a log
//! entry that could still be replayed (then no log entry is needed at all). Anything else, and
//! each stripe goes through [`super::write_stripe`].

use std::sync::Arc;

use blockdev::{IoBufs, IoCtx, IoTag, Result, SharedBuf};

use super::parity::xor_into;
use super::{partial_parity_entry, present_mods, write_stripe, Seg};
use crate::core::{all, write_members_tolerant, Core};
use crate::member::MemberState;

/// Write full stripes `first..first + stripes.len()`; `stripes[i]` holds stripe `first + i`'s
/// data segments, one per data chunk.
pub(super) async fn write(core: Arc<Core>, io: IoCtx, first: u64, stripes: Vec<Vec<Seg>>, fua: bool) -> Result<()> {
    let n = stripes.len() as u64;
    let mut guards = Vec::with_capacity(stripes.len());
    for s in first..first + n {
        guards.push(core.locks.lock(s).await);
    }
    let plain = (0..core.members.len()).all(|m| core.member(m).state() == MemberState::Active)
        && core.ppl.as_ref().is_none_or(|ppl| (first..first + n).all(|s| !ppl.has_replayable(s)));
    if !plain {
        drop(guards);
        let futs = stripes
            .into_iter()
            .zip(first..)
            .map(|(segs, s)| -> blockdev::IoFuture { Box::pin(write_stripe(core.clone(), io.clone(), s, segs, fua)) })
            .collect();
        return all(futs).await;
    }
    let chunk = core.geo.chunk;
    let marked = match &core.bitmap {
        Some(bm) => Some(bm.start_write(&core, &io, first * chunk, n * chunk).await?),
        None => None,
    };
    if let Some(ppl) = &core.ppl {
        if ppl.needs_flush_before(first, true) {
            if let Err(e) = core.flush_group.flush(&core, &io).await {
                if let (Some(bm), Some(mk)) = (&core.bitmap, marked) {
                    bm.end_write(mk, core.epoch_now());
                }
                return Err(e);
            }
        }
        for s in first..first + n {
            ppl.begin(s);
        }
    }
    let res = write_locked(&core, &io, first, stripes, fua).await;
    let epoch = core.epoch_now();
    if let Some(ppl) = &core.ppl {
        for s in first..first + n {
            ppl.end(s, epoch);
        }
    }
    if let (Some(bm), Some(mk)) = (&core.bitmap, marked) {
        bm.end_write(mk, epoch);
    }
    drop(guards);
    res
}

/// Parity of a full stripe: the XOR of its data segments, into a pooled buffer.
fn full_parity(io: &IoCtx, chunk: usize, segs: &[Seg]) -> SharedBuf {
    let mut p = io.pool().shared(chunk);
    let out = p.bytes_mut();
    let mut it = segs.iter();
    match it.next() {
        Some(g) => out.copy_from_slice(g.buf.bytes()),
        None => out.fill(0),
    }
    for g in it {
        xor_into(out, g.buf.bytes());
    }
    p
}

async fn write_locked(core: &Core, io: &IoCtx, first: u64, mut stripes: Vec<Vec<Seg>>, fua: bool) -> Result<()> {
    let geo = core.geo;
    let chunk = geo.chunk;
    let mut parities: Vec<SharedBuf> = stripes.iter().map(|segs| full_parity(io, chunk as usize, segs)).collect();
    // One write per member: its chunk of each row, in row order (contiguous on the member).
    let mut per_member: Vec<IoBufs> = (0..geo.members).map(|_| IoBufs::new()).collect();
    for ((segs, pb), s) in stripes.iter_mut().zip(parities.iter_mut()).zip(first..) {
        per_member[geo.parity_member(s)].append(pb.io());
        for g in segs.iter_mut() {
            per_member[geo.data_member(s, g.idx)].append(g.buf.io());
        }
    }
    let targets: Vec<usize> = (0..geo.members).collect();
    let futs = per_member
        .into_iter()
        .enumerate()
        .map(|(m, b)| {
            let tag = IoTag::data("raid5.full_stripes");
            core.write_member(io, m, first * chunk, b, fua, tag)
        })
        .collect();
    let failed = write_members_tolerant(core, io, &targets, futs).await?;
    // A member failed mid-write: as in a single stripe's write, log what each degraded stripe
    // now means, so a crash before the next flush cannot lose the failed member's data.
    if let (false, Some(ppl)) = (failed.is_empty(), &core.ppl) {
        for ((segs, np), s) in stripes.iter().zip(&parities).zip(first..) {
            let p = geo.parity_member(s);
            if failed.contains(&p) || !core.member(p).writable() {
                continue;
            }
            let mods = present_mods(core, s, segs);
            let entry = partial_parity_entry(s, 0, chunk, np.bytes(), segs, &mods, |i| geo.data_member(s, i));
            ppl.log(core, io, p, entry).await?;
        }
    }
    Ok(())
}
