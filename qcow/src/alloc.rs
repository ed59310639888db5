//! Cluster allocation. Runs with the allocation lock held. Refcounts are raised in the write-back
//! refcount cache; the flush order (refcount blocks before the tables that point at them, refcounts
//! before the L2 entries that use them) is kept by `flush.rs`.
//!
//! A refcount block for a range that has none is placed in the first free cluster of that range,
//! so it counts itself (as QEMU's self-describing allocation does). When the refcount table is too
//! small it is moved to a larger run of free clusters and the header switched to it.

use blockdev::{Error, ErrorKind, IoCtx, Result};

use crate::header::MAX_REFTABLE_BYTES;
use crate::imagefile::{self, site};
use crate::meta::{set_bits, LookupErr};
use crate::shared::Shared;

/// How far past the end of the file a free-cluster scan goes before calling the image damaged.
const SCAN_MARGIN: u64 = 1 << 20;

/// First index of a run of `n` clusters with refcount 0, at or after the free hint.
async fn find_free_run(sh: &Shared, io: &IoCtx, n: u64) -> Result<u64> {
    let mut start = sh.lock().free_hint;
    let mut len = 0;
    let mut c = start;
    let limit = 1u64 << (56 - sh.geo.cluster_bits);
    // Refcounts that claim clusters far past the end of the file can only come from a damaged
    // image; stop scanning there rather than walk billions of clusters (a hang).
    let file_clusters = sh.file.info().size >> sh.geo.cluster_bits;
    let scan_end = file_clusters.saturating_add(n).saturating_add(SCAN_MARGIN).max(start.saturating_add(n));
    while len < n {
        if c >= limit {
            return Err(Error::new(ErrorKind::NoSpace, format!("{}: no free clusters below 2^56 bytes", sh.name)));
        }
        if c >= scan_end {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{}: refcounts claim every cluster up to {c}, far past the end of the image file                      ({file_clusters} clusters); run check --repair all",
                    sh.name
                ),
            ));
        }
        let rc = sh.lookup(io, |m| m.refcount(c)).await?;
        if rc == 0 {
            if len == 0 {
                start = c;
            }
            len += 1;
        } else {
            len = 0;
        }
        c += 1;
    }
    Ok(start)
}

/// Allocate `n` contiguous clusters (refcount 1 each, in the cache) and return the host offset.
pub async fn alloc_clusters(sh: &Shared, io: &IoCtx, n: u64) -> Result<u64> {
    Ok(alloc_clusters_zeroed(sh, io, n).await?.0)
}

/// [`alloc_clusters`], also telling whether the clusters are known to read as zeros (they lie
/// past everything the file ever held; see [`crate::meta::Meta::zero_from`]).
pub async fn alloc_clusters_zeroed(sh: &Shared, io: &IoCtx, n: u64) -> Result<(u64, bool)> {
    let per_block = sh.geo.refblock_entries();
    'retry: loop {
        let start = find_free_run(sh, io, n).await?;
        for c in start..start + n {
            let covered = sh.lock().has_refblock(c)?;
            if covered {
                continue;
            }
            let rt_idx = c / per_block;
            if rt_idx as usize >= sh.lock().reftable.len() {
                grow_reftable(sh, io, rt_idx).await?;
                continue 'retry;
            }
            // The first free cluster of an uncovered range becomes that range's refcount block.
            make_refblock(sh, c)?;
            continue 'retry;
        }
        for c in start..start + n {
            sh.lookup(io, |m| m.set_refcount(c, 1)).await?;
        }
        // A growable file never reaches past `zero_from` (everything written since the open lies
        // in clusters allocated since); a fixed-size device does only if it grew underneath us,
        // and its new part may hold anything.
        let file_end = sh.file.info().size;
        let mut m = sh.lock();
        m.free_hint = start + n;
        let zeroed = m.claim(start, n) && start << sh.geo.cluster_bits >= file_end;
        return Ok((start << sh.geo.cluster_bits, zeroed));
    }
}

/// Turn free cluster `c` (in a range with no refcount block) into the block for its range.
/// A damaged image can still make the self-reference fail (an error, never a panic).
fn make_refblock(sh: &Shared, c: u64) -> Result<()> {
    let cs = sh.geo.cluster_size();
    let per_block = sh.geo.refblock_entries();
    let mut m = sh.lock();
    let off = c * cs;
    let ss = m.rc.slice_size() as u64;
    for s in 0..cs / ss {
        m.rc.insert(off + s * ss, vec![0; ss as usize], true);
    }
    let idx = (c / per_block) as usize;
    m.claim(c, 1);
    m.reftable[idx] = off;
    m.reftable_dirty.insert(idx);
    // The block counts itself.
    match m.set_refcount(c, 1) {
        Ok(()) => Ok(()),
        Err(LookupErr::Err(e)) => Err(e),
        Err(LookupErr::Miss(_)) => Err(Error::new(
            ErrorKind::Corrupt,
            format!("{}: new refcount block at cluster {c} does not cover its own refcount", sh.name),
        )),
    }
}

/// Move the refcount table to a bigger run of free clusters covering index `need`.
async fn grow_reftable(sh: &Shared, io: &IoCtx, need: u64) -> Result<()> {
    let cs = sh.geo.cluster_size();
    let per_block = sh.geo.refblock_entries();
    let order = sh.geo.refcount_order;
    let old_len = sh.lock().reftable.len() as u64;
    let entries = (need + 1).max(old_len * 2).next_multiple_of(cs / 8);
    if entries * 8 > MAX_REFTABLE_BYTES {
        return Err(Error::new(ErrorKind::NoSpace, format!("{}: the refcount table would exceed 8 MiB", sh.name)));
    }
    let table_clusters = entries * 8 / cs;
    // Find a run for the table plus the blocks that the run's own uncovered ranges need.
    let mut extra = 0;
    let (start, new_blocks) = loop {
        let start = find_free_run(sh, io, table_clusters + extra).await?;
        let end = start + table_clusters + extra;
        let m = sh.lock();
        let mut ranges: Vec<u64> = (start / per_block..=(end - 1) / per_block)
            .filter(|r| m.reftable.get(*r as usize).is_none_or(|&b| b == 0))
            .collect();
        ranges.dedup();
        if ranges.len() as u64 <= extra {
            break (start, ranges);
        }
        extra = ranges.len() as u64;
    };
    let end = start + table_clusters + extra;
    sh.lock().claim(start, end - start);
    let mut table: Vec<u64> = sh.lock().reftable.clone();
    table.resize(entries as usize, 0);
    // Blocks sit right after the table, one per uncovered range.
    let mut blocks: Vec<(u64, Vec<u8>)> = Vec::new();
    for (i, r) in new_blocks.iter().enumerate() {
        let at = start + table_clusters + i as u64;
        table[*r as usize] = at * cs;
        blocks.push((*r, vec![0u8; cs as usize]));
    }
    for c in start..end {
        let r = c / per_block;
        if let Some((_, data)) = blocks.iter_mut().find(|(br, _)| *br == r) {
            set_bits(data, (c % per_block) << order, order, 1);
        } else {
            sh.lookup(io, |m| m.set_refcount(c, 1)).await?;
        }
    }
    // Durable order: blocks and refcounts, then the new table, then the header that points at it.
    for (r, data) in &blocks {
        imagefile::write_meta(io, &sh.file, table[*r as usize], data, site::REFCOUNT_UPDATE).await?;
    }
    crate::flush::write_refcount_slices(sh, io).await?;
    let raw = crate::format::encode_table(table.iter().copied());
    crate::flush::guarded_write(sh, io, start * cs, &raw, site::REFTABLE_UPDATE, crate::overlap::Kind::None).await?;
    imagefile::sync(io, &sh.file).await?;
    let (old_off, old_clusters) = {
        let mut m = sh.lock();
        let old = (m.header.refcount_table_offset, m.header.refcount_table_clusters);
        m.header.refcount_table_offset = start * cs;
        m.header.refcount_table_clusters = table_clusters as u32;
        m.reftable = table;
        m.reftable_dirty.clear();
        old
    };
    crate::flush::write_header(sh, io).await?;
    imagefile::sync(io, &sh.file).await?;
    let mut m = sh.lock();
    for i in 0..u64::from(old_clusters) {
        m.pending_free.push(old_off + i * cs);
    }
    m.free_hint = m.free_hint.min(start);
    Ok(())
}
