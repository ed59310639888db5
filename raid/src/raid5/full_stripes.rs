//! A run of consecutive full stripes of one request, written together: the stripes are locked
//! in ascending order (single-stripe writers lock one, so no cycle can form), parity is
//! computed per stripe from the new data alone, and each member gets *one* write covering the
//! whole run (its chunks of consecutive rows are contiguous), not one per stripe: a 1 MiB write
//! over 64 KiB chunks on three members costs 3 member writes instead of 24. The guest data is
//! copied once into one pooled buffer per member, laid out as that member's write, and the
//! parity rows are computed there, before any lock is taken.
//!
//! Only the plain case goes this way: every member active and no stripe of the run with a log
//! entry that could still be replayed (then no log entry is needed at all). Anything else, and
//! each stripe goes through [`super::write_stripe`].

use std::sync::Arc;

use blockdev::join::try_join_all;
use blockdev::{IoBufs, IoCtx, IoTag, Result, SharedBuf};

use super::parity::{xor_into, xor_pair};
use super::{partial_parity_entry, present_mods, write_stripe, Seg};
use crate::core::{write_members_tolerant, Core};
use crate::member::MemberState;

/// A run of full stripes copied in: per member, its chunks of the run in row order.
pub(super) struct Run {
    first: u64,
    n: u64,
    bufs: Vec<SharedBuf>,
}

impl Run {
    /// Copy full stripes `first..first + n` from `src` (whose byte `src_off` is the start of
    /// stripe `first`) and compute their parity.
    pub fn copy_in(core: &Core, io: &IoCtx, first: u64, n: u64, src: &IoBufs, src_off: usize) -> Run {
        let geo = core.geo;
        let (chunk, d) = (geo.chunk as usize, geo.data_members());
        let mut bufs: Vec<Option<SharedBuf>> =
            (0..geo.members).map(|_| Some(io.pool().shared(n as usize * chunk))).collect();
        for (i, s) in (first..first + n).enumerate() {
            let row = i * chunk..(i + 1) * chunk;
            for k in 0..d {
                if let Some(b) = bufs[geo.data_member(s, k)].as_mut() {
                    src.copy_to_slice(src_off + (i * d + k) * chunk, &mut b.bytes_mut()[row.clone()]);
                }
            }
            let p = geo.parity_member(s);
            if let Some(mut pb) = bufs[p].take() {
                let out = &mut pb.bytes_mut()[row.clone()];
                let data = |k: usize| bufs[geo.data_member(s, k)].as_ref().map(|b| &b.bytes()[row.clone()]);
                match (data(0), data(1)) {
                    (Some(a), Some(b)) => xor_pair(out, a, b),
                    (Some(a), None) => out.copy_from_slice(a),
                    _ => out.fill(0),
                }
                for k in 2..d {
                    if let Some(b) = data(k) {
                        xor_into(out, b);
                    }
                }
                bufs[p] = Some(pb);
            }
        }
        Run { first, n, bufs: bufs.into_iter().flatten().collect() }
    }

    /// Stripe `first + i`'s data as segments (copies) and its parity row.
    fn stripe(&self, core: &Core, io: &IoCtx, i: u64) -> (Vec<Seg>, &[u8]) {
        let geo = core.geo;
        let chunk = geo.chunk as usize;
        let s = self.first + i;
        let row = i as usize * chunk..(i as usize + 1) * chunk;
        let segs = (0..geo.data_members())
            .map(|idx| {
                let mut buf = io.pool().shared(chunk);
                buf.bytes_mut().copy_from_slice(&self.bufs[geo.data_member(s, idx)].bytes()[row.clone()]);
                Seg { idx, a: 0, buf }
            })
            .collect();
        (segs, &self.bufs[geo.parity_member(s)].bytes()[row])
    }
}

/// Write the run: together when the array is plain, else stripe by stripe.
pub(super) async fn write(core: Arc<Core>, io: IoCtx, mut run: Run, fua: bool) -> Result<()> {
    let (first, n) = (run.first, run.n);
    let failures = core.flush_group.failures();
    let mut guards = Vec::with_capacity(n as usize);
    for s in first..first + n {
        guards.push(core.locks.lock(s).await);
    }
    let plain = (0..core.members.len()).all(|m| core.member(m).state() == MemberState::Active)
        && core.ppl.as_ref().is_none_or(|ppl| (first..first + n).all(|s| !ppl.has_replayable(s)));
    if !plain {
        drop(guards);
        let futs = (0..n).map(|i| -> blockdev::IoFuture {
            let (segs, _) = run.stripe(&core, &io, i);
            Box::pin(write_stripe(core.clone(), io.clone(), first + i, segs, fua))
        });
        return try_join_all(futs).await;
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
    let res = write_locked(&core, &io, &mut run, fua).await;
    let epoch = core.epoch_now();
    if let Some(ppl) = &core.ppl {
        for s in first..first + n {
            ppl.end(s, epoch);
        }
    }
    if let (Some(bm), Some(mk)) = (&core.bitmap, marked) {
        bm.end_write(mk, epoch);
    }
    res?;
    // As in a single stripe's write (see `FlushGroup::flush_after_failure`).
    if core.ppl.is_some() {
        core.flush_group.flush_after_failure(&core, &io, failures).await?;
    }
    drop(guards);
    Ok(())
}

async fn write_locked(core: &Core, io: &IoCtx, run: &mut Run, fua: bool) -> Result<()> {
    let geo = core.geo;
    let targets: Vec<usize> = (0..geo.members).collect();
    let at = run.first * geo.chunk;
    let futs: Vec<blockdev::IoFuture> = run
        .bufs
        .iter_mut()
        .enumerate()
        .map(|(m, b)| core.write_member(io, m, at, b.io(), fua, IoTag::data("raid5.full_stripes")))
        .collect();
    let failed = write_members_tolerant(core, io, &targets, futs).await?;
    // A member failed mid-write: as in a single stripe's write, log what each degraded stripe
    // now means, so a crash before the next flush cannot lose the failed member's data.
    if let (false, Some(ppl)) = (failed.is_empty(), &core.ppl) {
        for i in 0..run.n {
            let s = run.first + i;
            let p = geo.parity_member(s);
            if failed.contains(&p) || !core.member(p).writable() {
                continue;
            }
            let (segs, np) = run.stripe(core, io, i);
            let mods = present_mods(core, s, &segs);
            let entry = partial_parity_entry(s, 0, geo.chunk, np, &segs, &mods, |k| geo.data_member(s, k));
            ppl.log(core, io, p, entry).await?;
        }
    }
    Ok(())
}
