//! RAID 1: N-way mirror. Reads go round-robin to members that hold the range; a failed read is
//! served by another mirror and the good data written back over the bad sectors. Writes copy the
//! guest buffer once (so every mirror gets the same bytes even if the guest changes it in flight)
//! and go to every writable member; a member whose write fails is marked faulty and I/O goes on.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use blockdev::{Error, ErrorKind, IoBufs, IoCtx, IoTag, Result};

use crate::core::{write_members_tolerant, Core};
use crate::stripe_lock::StripeGuard;

/// Lock every chunk row `[off, off+len)` touches, in ascending order.
pub(crate) async fn lock_rows(core: &Core, off: u64, len: u64) -> Vec<StripeGuard> {
    let first = off / core.geo.chunk;
    let last = (off + len.max(1) - 1) / core.geo.chunk;
    let mut guards = Vec::new();
    for row in first..=last {
        guards.push(core.locks.lock(row).await);
    }
    guards
}

/// Read `bufs` at `off`.
pub(crate) async fn read(core: Arc<Core>, io: IoCtx, off: u64, bufs: IoBufs, tag: IoTag) -> Result<()> {
    let n = core.members.len();
    let len = bufs.len() as u64;
    let start = core.rr.fetch_add(1, Ordering::Relaxed);
    let order: Vec<usize> = (0..n).map(|i| (start + i) % n).filter(|&m| core.member(m).readable(off, len)).collect();
    let mut failed: Vec<(usize, Error)> = Vec::new();
    for m in order {
        match core.read_member(&io, m, off, bufs.clone(), tag).await {
            Ok(()) => {
                if !failed.is_empty() {
                    repair(&core, &io, off, &bufs, failed).await?;
                }
                return Ok(());
            }
            Err(e) => failed.push((m, e)),
        }
    }
    Err(failed
        .pop()
        .map(|(_, e)| e)
        .unwrap_or_else(|| Error::new(ErrorKind::Io, format!("{}: no member holds [{off}, +{len})", core.name))))
}

/// Write the good data in `bufs` over the members whose reads failed.
async fn repair(core: &Core, io: &IoCtx, off: u64, bufs: &IoBufs, failed: Vec<(usize, Error)>) -> Result<()> {
    let mut copy = io.pool().shared(bufs.len());
    bufs.copy_to_slice(0, copy.bytes_mut());
    let _g = lock_rows(core, off, bufs.len() as u64).await;
    for (m, err) in failed {
        let ok = core.write_member(io, m, off, copy.io(), false, IoTag::data("raid1.repair")).await.is_ok();
        core.note_member_error(io, m, err, ok).await?;
    }
    Ok(())
}

/// Write `bufs` at `off` to every writable member.
pub(crate) async fn write(core: Arc<Core>, io: IoCtx, off: u64, bufs: IoBufs, fua: bool, tag: IoTag) -> Result<()> {
    core.ensure_dirty(&io).await?;
    let len = bufs.len() as u64;
    let mut copy = io.pool().shared(bufs.len());
    bufs.copy_to_slice(0, copy.bytes_mut());
    let _g = lock_rows(&core, off, len).await;
    let marked = match &core.bitmap {
        Some(bm) => Some(bm.start_write(&core, &io, off, len).await?),
        None => None,
    };
    let targets = core.writable_members();
    let futs: Vec<blockdev::IoFuture> =
        targets.iter().map(|&m| core.write_member(&io, m, off, copy.io(), fua, tag)).collect();
    let res = write_members_tolerant(&core, &io, &targets, futs).await;
    if let (Some(bm), Some(mk)) = (&core.bitmap, marked) {
        bm.end_write(mk, core.epoch_now());
    }
    let failed = res?;
    if failed.len() == targets.len() {
        return Err(Error::new(ErrorKind::Io, format!("{}: write [{off}, +{len}) reached no member", core.name)));
    }
    Ok(())
}

/// Write zeroes to every writable member.
pub(crate) async fn write_zeroes(core: Arc<Core>, io: IoCtx, off: u64, len: u64, unmap: bool) -> Result<()> {
    core.ensure_dirty(&io).await?;
    let _g = lock_rows(&core, off, len).await;
    let marked = match &core.bitmap {
        Some(bm) => Some(bm.start_write(&core, &io, off, len).await?),
        None => None,
    };
    let targets = core.writable_members();
    let futs: Vec<blockdev::IoFuture> = targets
        .iter()
        .map(|&m| match core.member(m).dev() {
            Some(d) => d.write_zeroes(&io, core.data_offset + off, len, unmap, IoTag::data("raid1.write_zeroes")),
            None => blockdev::ready(Ok(())),
        })
        .collect();
    let res = write_members_tolerant(&core, &io, &targets, futs).await;
    if let (Some(bm), Some(mk)) = (&core.bitmap, marked) {
        bm.end_write(mk, core.epoch_now());
    }
    res.map(|_| ())
}
