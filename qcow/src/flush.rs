//! Writing the metadata caches back, in the order that keeps the image consistent at every
//! instant on disk (run with the allocation lock held):
//!
//! 1. refcount block slices, then sync — new references are counted before anything uses them;
//! 2. refcount table entries, then sync — the table points only at durable blocks, and the
//!    clusters a new block covers are used only once the table points at it;
//! 3. L2 slices, then sync — L2 entries use only counted clusters;
//! 4. L1 entries, then sync — the L1 points only at durable L2 tables;
//! 5. references dropped by unmapping (discard, COW of shared clusters) are released only now,
//!    when no durable L2 entry points at them any more.
//!
//! With lazy refcounts (as QEMU) the dirty bit is made durable first; refcount values then need
//! no ordering against the L2 tables (a crash leaves the bit set and the next writable open
//! rebuilds them), so steps 1 and 3 share one sync. New refcount blocks and refcount table
//! entries still go first with a sync of their own: the rebuild needs a refcount structure that
//! covers every cluster a durable L2 entry uses.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use blockdev::join::try_join_all;
use blockdev::{IoCtx, IoTag, Result, SharedBuf};

use crate::header::incompat;
use crate::imagefile::{self, site};
use crate::open::pad512;
use crate::overlap::{overlap_error, Kind, MetaRanges};
use crate::shared::Shared;

/// Write `data` at `off` after checking it overlaps no metadata but its own kind; on overlap,
/// mark the image corrupt and refuse.
pub async fn guarded_write(
    sh: &Shared,
    io: &IoCtx,
    off: u64,
    data: &[u8],
    tag: &'static str,
    kind: Kind,
) -> Result<()> {
    let conflict = {
        let m = sh.lock();
        if m.corrupt {
            return Err(blockdev::Error::new(
                blockdev::ErrorKind::Corrupt,
                format!("{}: image is marked corrupt; metadata writes refused", sh.name),
            ));
        }
        MetaRanges::of(&m).conflict(off, data.len() as u64, kind)
    };
    if let Some(what) = conflict {
        mark_corrupt(sh, io).await;
        return Err(overlap_error(&sh.name, off, data.len() as u64, what, kind));
    }
    imagefile::write_meta(io, &sh.file, off, data, tag).await?;
    sh.writeback_gen.fetch_add(1, Ordering::AcqRel);
    Ok(())
}

/// Set the corrupt bit (best effort: the write that found the problem is already failing).
pub async fn mark_corrupt(sh: &Shared, io: &IoCtx) {
    {
        let mut m = sh.lock();
        m.corrupt = true;
        if m.header.version == 3 {
            m.header.incompatible_features |= incompat::CORRUPT;
        }
    }
    tracing::error!("{}: metadata overlap detected; marking the image corrupt", sh.name);
    let _ = write_header(sh, io).await;
    let _ = imagefile::sync(io, &sh.file).await;
}

/// Write the header (the whole header cluster's used part).
pub async fn write_header(sh: &Shared, io: &IoCtx) -> Result<()> {
    let bytes = sh.lock().header.serialize()?;
    imagefile::write_meta(io, &sh.file, 0, &pad512(bytes), site::HEADER).await
}

/// Write every dirty refcount slice; true if any was written.
pub async fn write_refcount_slices(sh: &Shared, io: &IoCtx) -> Result<bool> {
    let dirty = sh.lock().rc.dirty_slices();
    write_slices(sh, io, &dirty, site::REFCOUNT_UPDATE, Kind::Refblock).await?;
    let mut m = sh.lock();
    for (off, data) in &dirty {
        m.rc.mark_clean(*off, data);
    }
    Ok(!dirty.is_empty())
}

async fn write_l2_slices(sh: &Shared, io: &IoCtx) -> Result<bool> {
    let dirty = sh.lock().l2.dirty_slices();
    write_slices(sh, io, &dirty, site::L2_UPDATE, Kind::L2).await?;
    let mut m = sh.lock();
    for (off, data) in &dirty {
        m.l2.mark_clean(*off, data);
    }
    Ok(!dirty.is_empty())
}

/// Write cache slices of one kind, all in flight at once (their order among themselves does not
/// matter: the syncs between the kinds give the order), each checked against the other metadata
/// first. Waits for every write; the first error is returned and nothing is marked clean.
async fn write_slices(sh: &Shared, io: &IoCtx, slices: &[(u64, Vec<u8>)], tag: &'static str, kind: Kind) -> Result<()> {
    if slices.is_empty() {
        return Ok(());
    }
    let conflict = {
        let m = sh.lock();
        if m.corrupt {
            return Err(blockdev::Error::new(
                blockdev::ErrorKind::Corrupt,
                format!("{}: image is marked corrupt; metadata writes refused", sh.name),
            ));
        }
        let ranges = MetaRanges::of(&m);
        slices.iter().find_map(|(off, data)| {
            ranges.conflict(*off, data.len() as u64, kind).map(|what| (*off, data.len() as u64, what))
        })
    };
    if let Some((off, len, what)) = conflict {
        mark_corrupt(sh, io).await;
        return Err(overlap_error(&sh.name, off, len, what, kind));
    }
    let futs = slices.iter().map(|(off, data)| {
        let mut buf = SharedBuf::from_slice(data);
        sh.file.write(io, *off, buf.io(), false, IoTag::meta(tag))
    });
    let res = try_join_all(futs).await;
    sh.writeback_gen.fetch_add(1, Ordering::AcqRel);
    res.map_err(|e| e.context(format!("qcow2 image {}: writing {} slices", sh.name, site::describe(tag))))
}

/// Write the 512-byte sectors of a table holding dirty entries.
async fn write_table_sectors(
    sh: &Shared,
    io: &IoCtx,
    dirty: BTreeSet<usize>,
    table_off: u64,
    entries: &[u64],
    tag: &'static str,
    kind: Kind,
) -> Result<bool> {
    let sectors: BTreeSet<usize> = dirty.iter().map(|i| i / 64).collect();
    for s in &sectors {
        let mut buf = crate::format::encode_table(entries.iter().skip(s * 64).take(64).copied());
        buf.resize(512, 0);
        guarded_write(sh, io, table_off + *s as u64 * 512, &buf, tag, kind).await?;
    }
    Ok(!sectors.is_empty())
}

async fn write_reftable(sh: &Shared, io: &IoCtx) -> Result<bool> {
    let (dirty, off, entries) = {
        let mut m = sh.lock();
        (std::mem::take(&mut m.reftable_dirty), m.header.refcount_table_offset, m.reftable.clone())
    };
    let res = write_table_sectors(sh, io, dirty.clone(), off, &entries, site::REFTABLE_UPDATE, Kind::Reftable).await;
    if res.is_err() {
        sh.lock().reftable_dirty.extend(dirty);
    }
    res
}

async fn write_l1(sh: &Shared, io: &IoCtx) -> Result<bool> {
    let (dirty, off, entries) = {
        let mut m = sh.lock();
        (std::mem::take(&mut m.l1_dirty), m.header.l1_table_offset, m.l1.clone())
    };
    let res = write_table_sectors(sh, io, dirty.clone(), off, &entries, site::L1_UPDATE, Kind::L1).await;
    if res.is_err() {
        sh.lock().l1_dirty.extend(dirty);
    }
    res
}

/// Lazy refcounts: set the dirty bit and make it durable (once; a no-op while it is set).
/// Runs with the allocation lock held, before the first metadata change reaches the disk.
pub async fn mark_dirty(sh: &Shared, io: &IoCtx) -> Result<()> {
    if !sh.lazy {
        return Ok(());
    }
    {
        let mut m = sh.lock();
        if m.header.is_dirty() {
            return Ok(());
        }
        m.header.incompatible_features |= incompat::DIRTY;
    }
    let res = async {
        write_header(sh, io).await?;
        imagefile::sync(io, &sh.file).await
    }
    .await;
    if res.is_err() {
        // Not known to be durable: the next metadata change tries again.
        sh.lock().header.incompatible_features &= !incompat::DIRTY;
    }
    res
}

/// Lazy refcounts: after every cache is written back and synced, clear the dirty bit (a clean
/// close). A no-op when the bit is not set or the image does not use lazy refcounts.
pub async fn mark_clean(sh: &Shared, io: &IoCtx) -> Result<()> {
    {
        let mut m = sh.lock();
        if !sh.lazy || !m.header.is_dirty() {
            return Ok(());
        }
        m.header.incompatible_features &= !incompat::DIRTY;
    }
    let res = async {
        write_header(sh, io).await?;
        imagefile::sync(io, &sh.file).await
    }
    .await;
    if res.is_err() {
        sh.lock().header.incompatible_features |= incompat::DIRTY;
    }
    res
}

/// True when the next write-back may skip the sync between refcount blocks and L2 tables: lazy
/// refcounts with the dirty bit set, and no new refcount block or table entry waiting.
fn lazy_order(sh: &Shared) -> bool {
    let m = sh.lock();
    sh.lazy && m.header.is_dirty() && m.reftable_dirty.is_empty()
}

/// Write back every cache in order and make it durable; then release pending frees.
/// Returns true if the file was synced.
pub async fn flush_metadata(sh: &Shared, io: &IoCtx) -> Result<bool> {
    let mut synced = false;
    let anything = {
        let m = sh.lock();
        m.l2.dirty_count() + m.rc.dirty_count() + m.l1_dirty.len() + m.reftable_dirty.len() > 0
    };
    if anything {
        mark_dirty(sh, io).await?;
    }
    // Lazy: one sync below covers the refcount blocks with the L2 tables.
    let mut rc_unsynced = false;
    if lazy_order(sh) {
        rc_unsynced = write_refcount_slices(sh, io).await?;
    } else if write_refcount_slices(sh, io).await? {
        imagefile::sync(io, &sh.file).await?;
        synced = true;
    }
    // A new refcount block is pointed at only once it is durable, and used only once the
    // pointer is (QEMU writes the table entry with a sync of its own, too).
    if write_reftable(sh, io).await? {
        imagefile::sync(io, &sh.file).await?;
        synced = true;
    }
    if write_l2_slices(sh, io).await? || rc_unsynced {
        imagefile::sync(io, &sh.file).await?;
        synced = true;
    }
    if write_l1(sh, io).await? {
        imagefile::sync(io, &sh.file).await?;
        synced = true;
    }
    release_pending_frees(sh, io).await?;
    Ok(synced)
}

/// Drop one reference from each cluster whose unmapping is now durable; punch holes in the
/// clusters that become free.
async fn release_pending_frees(sh: &Shared, io: &IoCtx) -> Result<()> {
    let frees = std::mem::take(&mut sh.lock().pending_free);
    let cs = sh.geo.cluster_size();
    let mut freed = Vec::new();
    for (i, off) in frees.iter().enumerate() {
        let c = off / cs;
        let res = sh
            .lookup(io, |m| {
                let rc = m.refcount(c)?;
                let new = rc.saturating_sub(1);
                m.set_refcount(c, new)?;
                if new == 0 {
                    m.free_hint = m.free_hint.min(c);
                }
                Ok(new)
            })
            .await;
        match res {
            Ok(0) => freed.push(*off),
            Ok(_) => {}
            Err(e) => {
                sh.lock().pending_free.extend_from_slice(&frees[i..]);
                return Err(e);
            }
        }
    }
    for off in freed {
        // Advisory: a file system without hole punching keeps the bytes.
        let _ = sh.file.discard(io, off, cs, blockdev::IoTag::data(site::DATA)).await;
    }
    Ok(())
}
