//! RAID 0: requests split at chunk boundaries, every piece issued to its member at once, guest
//! buffers passed through without a copy.

use std::sync::Arc;

use blockdev::join::try_join_all;
use blockdev::{IoBufs, IoCtx, IoTag, Result};

use crate::core::Core;

/// Read `bufs` at array offset `off`.
pub(crate) async fn read(core: Arc<Core>, io: IoCtx, off: u64, bufs: IoBufs, tag: IoTag) -> Result<()> {
    let futs =
        core.geo.split(off, bufs.len() as u64).into_iter().map(|e| {
            core.read_member(&io, e.member, e.member_off, bufs.slice(e.req_off as usize, e.len as usize), tag)
        });
    try_join_all(futs).await
}

/// Write `bufs` at array offset `off`.
pub(crate) async fn write(core: Arc<Core>, io: IoCtx, off: u64, bufs: IoBufs, fua: bool, tag: IoTag) -> Result<()> {
    core.ensure_dirty(&io).await?;
    let futs = core.geo.split(off, bufs.len() as u64).into_iter().map(|e| {
        let b = bufs.slice(e.req_off as usize, e.len as usize);
        core.write_member(&io, e.member, e.member_off, b, fua, tag)
    });
    try_join_all(futs).await
}

/// Discard or write zeroes over `[off, off+len)`, piece by piece.
pub(crate) async fn zero(core: Arc<Core>, io: IoCtx, off: u64, len: u64, discard: bool, unmap: bool) -> Result<()> {
    core.ensure_dirty(&io).await?;
    let mut futs = Vec::new();
    for e in core.geo.split(off, len) {
        let Some(dev) = core.member(e.member).dev() else { continue };
        let at = core.data_offset + e.member_off;
        futs.push(if discard {
            dev.discard(&io, at, e.len, IoTag::data("raid0.discard"))
        } else {
            dev.write_zeroes(&io, at, e.len, unmap, IoTag::data("raid0.write_zeroes"))
        });
    }
    try_join_all(futs).await
}
