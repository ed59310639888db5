//! Discard and write-zeroes. Whole clusters change their L2 entry (unallocated, or the zero flag
//! on version 3 images); the host cluster's reference is released after the next durable flush
//! (and its bytes punched out of the file then). Partial clusters are written with zeros
//! (write-zeroes) or left alone (discard is advisory).

use std::sync::Arc;

use blockdev::{IoCtx, Result, SharedBuf};

use crate::l1l2::{L2Entry, COPIED, ZERO};
use crate::shared::Shared;
use crate::write::{compressed_clusters, ensure_l2, lock_cluster};

/// What to leave in a whole cluster.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Discard: unallocated without a backing file, zero flag over one (never expose backing data).
    Discard,
    /// Read as zeros; `unmap` lets the host cluster go.
    Zero { unmap: bool },
}

/// Discard `[off, off+len)` (range already checked).
pub async fn discard(sh: Arc<Shared>, io: IoCtx, off: u64, len: u64) -> Result<()> {
    if sh.backing.is_some() && sh.lock().header.version < 3 {
        // No zero flag on v2: unmapping would expose the backing file; keep the data.
        return Ok(());
    }
    each_whole_cluster(&sh, &io, off, len, Mode::Discard).await.map(|_| ())
}

/// Make `[off, off+len)` read zeros (range already checked).
pub async fn write_zeroes(sh: Arc<Shared>, io: IoCtx, off: u64, len: u64, unmap: bool) -> Result<()> {
    let cs = sh.geo.cluster_size();
    let v3 = sh.lock().header.version >= 3;
    let end = off + len;
    let (first_whole, last_whole) = (off.next_multiple_of(cs), end / cs * cs);
    if !v3 || first_whole >= last_whole {
        return zero_by_writing(&sh, &io, off, len).await;
    }
    if off < first_whole {
        zero_by_writing(&sh, &io, off, first_whole - off).await?;
    }
    each_whole_cluster(&sh, &io, first_whole, last_whole - first_whole, Mode::Zero { unmap }).await?;
    if last_whole < end {
        zero_by_writing(&sh, &io, last_whole, end - last_whole).await?;
    }
    Ok(())
}

async fn zero_by_writing(sh: &Arc<Shared>, io: &IoCtx, off: u64, len: u64) -> Result<()> {
    let chunk = len.min(1 << 20);
    let mut buf = SharedBuf::new(chunk as usize);
    let mut done = 0;
    while done < len {
        let n = (len - done).min(chunk);
        crate::write::write(sh.clone(), io.clone(), off + done, buf.io_range(0, n as usize), false).await?;
        done += n;
    }
    Ok(())
}

async fn each_whole_cluster(sh: &Arc<Shared>, io: &IoCtx, off: u64, len: u64, mode: Mode) -> Result<()> {
    let cs = sh.geo.cluster_size();
    let mut c = off.next_multiple_of(cs);
    while c + cs <= off + len {
        let _lock = lock_cluster(sh, io, c / cs).await?;
        zero_cluster(sh, io, c, mode).await?;
        c += cs;
    }
    Ok(())
}

/// True when the cluster reads zeros already.
fn reads_zero(entry: L2Entry, has_backing: bool) -> bool {
    match entry {
        L2Entry::Unallocated { .. } => !has_backing,
        L2Entry::Zero { .. } => true,
        L2Entry::Extended { offset: 0, alloc: 0, zero, .. } => zero == u32::MAX || !has_backing,
        _ => false,
    }
}

async fn zero_cluster(sh: &Arc<Shared>, io: &IoCtx, guest: u64, mode: Mode) -> Result<()> {
    let g = sh.geo;
    let cs = g.cluster_size();
    let has_backing = sh.backing.is_some();
    let entry = sh.lookup(io, |m| m.l2_entry(guest)).await?;
    let keep = match (mode, entry) {
        (Mode::Zero { unmap: false }, L2Entry::Normal { offset, copied: true, .. })
        | (Mode::Zero { unmap: false }, L2Entry::Zero { offset, copied: true })
        | (Mode::Zero { unmap: false }, L2Entry::Extended { offset, copied: true, .. }) => offset,
        _ => 0,
    };
    let frees: Vec<u64> = match entry {
        L2Entry::Compressed { offset, size } => compressed_clusters(cs, offset, size),
        e => e.host_cluster().filter(|&h| h != keep).into_iter().collect(),
    };
    if frees.is_empty() && reads_zero(entry, has_backing) {
        return Ok(());
    }
    let (raw, bitmap) = match (g.extended, keep != 0, has_backing) {
        (false, true, _) => (keep | COPIED | ZERO, 0),
        (true, true, _) => (keep | COPIED, u64::from(u32::MAX) << 32),
        (false, false, true) => (ZERO, 0),
        (true, false, true) => (0, u64::from(u32::MAX) << 32),
        (_, false, false) => (0, 0),
    };
    ensure_l2(sh, io, guest).await?;
    sh.lookup(io, |m| {
        m.set_l2_raw(guest, raw, bitmap)?;
        m.pending_free.extend_from_slice(&frees);
        Ok(())
    })
    .await
}
