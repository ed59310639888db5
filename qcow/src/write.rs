//! The write path. Writes into clusters that are allocated and not shared go straight to the
//! file (planned under the short metadata lock). Anything else is handled cluster by cluster:
//!
//! 1. under the allocation lock: make sure the L2 table exists, allocate the host cluster (its
//!    refcount raised in the cache) and mark the guest cluster in flight;
//! 2. without any lock: write the guest data with the copy-on-write head and tail around it;
//! 3. under the allocation lock: point the L2 entry at the new cluster, queue the old cluster's
//!    reference for release after the next durable flush, and wake writers waiting on the cluster.

use std::sync::Arc;

use blockdev::join::try_join_all;
use blockdev::{Error, ErrorKind, IoBufs, IoCtx, IoFuture, IoTag, Result, SharedBuf};

use crate::alloc::{alloc_clusters, alloc_clusters_zeroed};
use crate::flush::flush_metadata;
use crate::imagefile::{self, site};
use crate::in_place;
use crate::l1l2::{L2Entry, COPIED, OFFSET_MASK};
use crate::meta::{Lookup, Meta};
use crate::overlap::{fixed_conflict, overlap_error, Kind, MetaRanges};
use crate::plan::{plan_entry, Source};
use crate::read::exec;
use crate::shared::Shared;

type InFlight = futures::lock::OwnedMutexGuard<()>;

/// Host extents `(pos in request, len, host offset)` when the whole write can go in place.
fn plan_in_place(m: &mut Meta, off: u64, len: u64, out: &mut Vec<(u64, u64, u64)>) -> Lookup<bool> {
    out.clear();
    let cs = m.geo.cluster_size();
    let mut done = 0;
    while done < len {
        let guest = off + done;
        let n = (cs - guest % cs).min(len - done);
        let Some(host) = in_place::writable_host(m, guest, n)? else { return Ok(false) };
        match out.last_mut() {
            Some(last) if last.2 + last.1 == host => last.1 += n,
            _ => out.push((done, n, host)),
        }
        done += n;
    }
    Ok(true)
}

/// Bitmap of the subclusters that `[within, within+len)` touches.
pub fn subcluster_mask(sc: u64, within: u64, len: u64) -> u32 {
    let first = within / sc;
    let last = (within + len - 1) / sc;
    let bits = last - first + 1;
    let ones = if bits >= 32 { u32::MAX } else { (1u32 << bits) - 1 };
    ones << first
}

/// Write guest data (range already checked).
pub async fn write(sh: Arc<Shared>, io: IoCtx, off: u64, bufs: IoBufs, fua: bool) -> Result<()> {
    let len = bufs.len() as u64;
    let mut extents = Vec::new();
    if sh.lookup(&io, |m| plan_in_place(m, off, len, &mut extents)).await? {
        let futs: Vec<IoFuture> = extents
            .iter()
            .map(|&(pos, n, host)| {
                sh.file.write(&io, host, bufs.slice(pos as usize, n as usize), false, IoTag::data(site::DATA))
            })
            .collect();
        try_join_all(futs).await?;
    } else {
        let cs = sh.geo.cluster_size();
        let mut done = 0;
        while done < len {
            let guest = off + done;
            let n = (cs - guest % cs).min(len - done);
            write_cluster(&sh, &io, guest, bufs.slice(done as usize, n as usize)).await?;
            done += n;
        }
    }
    if fua {
        flush(&sh, &io).await?;
    }
    Ok(())
}

/// Flush for the guest: write the caches back in order and sync the file.
pub async fn flush(sh: &Arc<Shared>, io: &IoCtx) -> Result<()> {
    if sh.read_only {
        return Ok(());
    }
    let _g = sh.alloc.lock().await;
    if !flush_metadata(sh, io).await? {
        imagefile::sync(io, &sh.file).await?;
    }
    Ok(())
}

/// Take the allocation lock for work on guest cluster `gc`: waits for any in-flight allocation
/// of that cluster first, and writes the caches back when they are full of dirty slices.
pub async fn lock_cluster<'a>(sh: &'a Shared, io: &IoCtx, gc: u64) -> Result<futures::lock::MutexGuard<'a, ()>> {
    loop {
        let g = sh.alloc.lock().await;
        let busy = sh.lock().inflight.get(&gc).cloned();
        if let Some(ev) = busy {
            drop(g);
            drop(ev.lock_owned().await);
            continue;
        }
        // Lazy refcounts: the first metadata change sets the dirty bit (as QEMU does).
        if let Err(e) = crate::flush::mark_dirty(sh, io).await {
            drop(g);
            return Err(e);
        }
        let full = {
            let m = sh.lock();
            m.l2.needs_writeback() || m.rc.needs_writeback()
        };
        if full {
            flush_metadata(sh, io).await?;
        }
        return Ok(g);
    }
}

/// Mark guest cluster `gc` in flight (the returned guard wakes waiters when dropped).
fn mark_in_flight(sh: &Shared, gc: u64) -> InFlight {
    let ev = Arc::new(futures::lock::Mutex::new(()));
    let guard = ev.clone().try_lock_owned().expect("a new lock is free");
    sh.lock().inflight.insert(gc, ev);
    guard
}

/// Make sure an L2 table for `guest` exists and is not shared with a snapshot.
pub async fn ensure_l2(sh: &Shared, io: &IoCtx, guest: u64) -> Result<()> {
    let g = sh.geo;
    let idx = g.l1_index(guest) as usize;
    let l1e = {
        let m = sh.lock();
        *m.l1.get(idx).ok_or_else(|| {
            Error::new(ErrorKind::OutOfRange, format!("{}: guest offset {guest} past the L1 table", sh.name))
        })?
    };
    let old = l1e & OFFSET_MASK;
    if old != 0 && l1e & COPIED != 0 {
        return Ok(());
    }
    let cs = g.cluster_size();
    let content =
        if old != 0 { imagefile::read_vec(io, &sh.file, old, cs as usize).await? } else { vec![0u8; cs as usize] };
    let table = alloc_clusters(sh, io, 1).await?;
    let mut m = sh.lock();
    let ss = m.l2.slice_size();
    for (i, chunk) in content.chunks(ss).enumerate() {
        m.l2.insert(table + (i * ss) as u64, chunk.to_vec(), true);
    }
    m.set_l1(idx, table);
    if old != 0 {
        // The snapshot keeps the old table; drop our reference once the new one is durable.
        m.pending_free.push(old);
    }
    Ok(())
}

/// What phase 1 decided for one cluster.
enum Action {
    /// Write in place at this host offset (no metadata change).
    InPlace(u64),
    /// Write into a host cluster with the old contents around the data, then set the entry.
    Allocate(Allocation),
}

/// An allocating write of one guest cluster: where the data goes, what surrounds it, and what
/// the new L2 entry says.
struct Allocation {
    /// Host cluster written: a new one, or the entry's own (preallocated zero cluster, or an
    /// extended entry's cluster gaining subclusters).
    host: u64,
    /// `host` was allocated for this write (given back if the write fails).
    fresh: bool,
    /// The host cluster is known to read as zeros.
    zeroed: bool,
    /// Range of the cluster that must hold the old contents (or the data) once written.
    cow_start: u64,
    cow_end: u64,
    /// Host clusters the old entry referenced, released after the next durable flush.
    frees: Vec<u64>,
    /// Subclusters the new entry marks allocated besides those written (extended L2).
    alloc_bits: u32,
}

/// Host clusters a compressed stream occupies.
pub fn compressed_clusters(cs: u64, offset: u64, size: u64) -> Vec<u64> {
    let first = offset / cs;
    let last = (offset + size - 1) / cs;
    (first..=last).map(|c| c * cs).collect()
}

async fn decide(sh: &Shared, io: &IoCtx, guest: u64, len: u64) -> Result<(Action, L2Entry)> {
    let g = sh.geo;
    let cs = g.cluster_size();
    let within = g.in_cluster(guest);
    ensure_l2(sh, io, guest).await?;
    let entry = sh.lookup(io, |m| m.l2_entry(guest)).await?;
    let sc = g.subcluster_size();
    let touched = subcluster_mask(sc, within, len);
    let (sub_start, sub_end) = (within / sc * sc, (within + len).next_multiple_of(sc));
    if let Some(at) = in_place::host_bytes(&g, entry, within, len, true) {
        return Ok((Action::InPlace(at), entry));
    }
    let action = match entry {
        // Our own cluster, but a touched subcluster is unallocated or reads as zeros: write
        // there, filling the touched subclusters whole.
        L2Entry::Extended { offset, copied: true, .. } if offset != 0 => Action::Allocate(Allocation {
            host: offset,
            fresh: false,
            zeroed: false,
            cow_start: sub_start,
            cow_end: sub_end,
            frees: vec![],
            alloc_bits: touched,
        }),
        L2Entry::Zero { offset, copied: true } if offset != 0 => Action::Allocate(Allocation {
            host: offset,
            fresh: false,
            zeroed: false,
            cow_start: 0,
            cow_end: cs,
            frees: vec![],
            alloc_bits: 0,
        }),
        other => {
            let (host, zeroed) = alloc_clusters_zeroed(sh, io, 1).await?;
            let (frees, cow_start, cow_end, bits) = match other {
                L2Entry::Compressed { offset, size } => (compressed_clusters(cs, offset, size), 0, cs, u32::MAX),
                L2Entry::Normal { offset, .. } | L2Entry::Zero { offset, .. } => {
                    (if offset != 0 { vec![offset] } else { vec![] }, 0, cs, u32::MAX)
                }
                L2Entry::Extended { offset, alloc, .. } if offset != 0 => {
                    // Shared cluster: copy every allocated subcluster plus the ones we write.
                    (vec![offset], 0, cs, alloc | touched)
                }
                L2Entry::Extended { .. } => (vec![], sub_start, sub_end, touched),
                L2Entry::Unallocated { .. } => (vec![], 0, cs, u32::MAX),
            };
            Action::Allocate(Allocation { host, fresh: true, zeroed, cow_start, cow_end, frees, alloc_bits: bits })
        }
    };
    Ok((action, entry))
}

/// Write `data` (inside one cluster) at `guest`, allocating as needed.
async fn write_cluster(sh: &Arc<Shared>, io: &IoCtx, guest: u64, data: IoBufs) -> Result<()> {
    let g = sh.geo;
    let cs = g.cluster_size();
    let gc = guest / cs;
    let len = data.len() as u64;
    let within = g.in_cluster(guest);
    // Load the L2 slice first, without the allocation lock: a miss then stalls only this request,
    // not every allocation behind it.
    sh.lookup(io, |m| m.l2_raw(guest).map(|_| ())).await?;
    // Phase 1.
    let lock = lock_cluster(sh, io, gc).await?;
    let (action, old) = decide(sh, io, guest, len).await?;
    let a = match action {
        Action::InPlace(at) => {
            let conflict = fixed_conflict(&sh.lock(), at, len);
            if let Some(what) = conflict {
                crate::flush::mark_corrupt(sh, io).await;
                return Err(overlap_error(&sh.name, at, len, what, Kind::None));
            }
            drop(lock);
            return sh.file.write(io, at, data, false, IoTag::data(site::DATA)).await;
        }
        Action::Allocate(a) => a,
    };
    let guard = mark_in_flight(sh, gc);
    drop(lock);
    // Phase 2.
    let cow =
        Cow { cluster_guest: guest - within, host: a.host, zeroed: a.zeroed, old, start: a.cow_start, end: a.cow_end };
    let res = write_with_cow(sh, io, &cow, within, data).await;
    // Phase 3.
    let _lock = sh.alloc.lock().await;
    let res = match res {
        Ok(()) => link(sh, io, guest, &a).await,
        Err(e) => Err(e),
    };
    if res.is_err() && a.fresh {
        // Never referenced: give the cluster back at once.
        let c = a.host / cs;
        let _ = sh.lookup(io, |m| m.set_refcount(c, 0)).await;
        let mut m = sh.lock();
        m.free_hint = m.free_hint.min(c);
    }
    sh.lock().inflight.remove(&gc);
    drop(guard);
    res
}

/// Point the L2 entry for `guest` at the cluster `a` wrote.
async fn link(sh: &Shared, io: &IoCtx, guest: u64, a: &Allocation) -> Result<()> {
    let g = sh.geo;
    let sc = g.subcluster_size();
    sh.lookup(io, |m| {
        let (_, bm) = m.l2_raw(guest)?;
        let bitmap = if g.extended {
            let written = subcluster_mask(sc, a.cow_start, a.cow_end - a.cow_start);
            let alloc = bm as u32 | a.alloc_bits | written;
            let zero = (bm >> 32) as u32 & !written & !a.alloc_bits;
            u64::from(alloc) | (u64::from(zero) << 32)
        } else {
            0
        };
        m.set_l2_raw(guest, a.host | COPIED, bitmap)?;
        m.pending_free.extend_from_slice(&a.frees);
        Ok(())
    })
    .await
}

/// Where the data of an allocating write goes and what surrounds it.
struct Cow {
    /// Guest offset of the cluster.
    cluster_guest: u64,
    /// Host cluster written.
    host: u64,
    /// The host cluster reads as zeros already (fresh, past everything the file ever held).
    zeroed: bool,
    /// The cluster's old entry (where the copied bytes come from).
    old: L2Entry,
    /// Range of the cluster that must hold the old contents (or the data) once written.
    start: u64,
    end: u64,
}

/// Write `data` at `within` of the host cluster, with `[cow.start, cow.end)` around it filled
/// from the cluster's old contents. A part that would be zeros in a cluster that already reads
/// as zeros is not written: a 4 KiB write into a fresh 64 KiB cluster writes 4 KiB (QEMU zeroes
/// the rest with write-zeroes; past the end of a growable file there is nothing to zero).
async fn write_with_cow(sh: &Arc<Shared>, io: &IoCtx, cow: &Cow, within: u64, data: IoBufs) -> Result<()> {
    let end = within + data.len() as u64;
    let cs = sh.geo.cluster_size();
    let host = cow.host;
    let conflict = MetaRanges::fixed(&sh.lock()).conflict(host, cs, Kind::None);
    if let Some(what) = conflict {
        crate::flush::mark_corrupt(sh, io).await;
        return Err(overlap_error(&sh.name, host, cs, what, Kind::None));
    }
    let mut out = data.clone();
    let mut head = None;
    let mut tail = None;
    if cow.start < within && !(cow.zeroed && old_reads_zero(sh, cow, cow.start, within - cow.start)) {
        head = Some(read_old(sh, io, cow.cluster_guest, cow.old, cow.start, within - cow.start).await?);
    }
    if end < cow.end && !(cow.zeroed && old_reads_zero(sh, cow, end, cow.end - end)) {
        tail = Some(read_old(sh, io, cow.cluster_guest, cow.old, end, cow.end - end).await?);
    }
    let mut at = within;
    if let Some(mut h) = head {
        let mut v = h.io();
        v.append(out);
        out = v;
        at = cow.start;
    }
    if let Some(mut t) = tail {
        out.append(t.io());
    }
    sh.file.write(io, host + at, out, false, IoTag::data(site::COW)).await
}

/// True when `[start, start+len)` of the cluster reads as zeros under its old entry (zero
/// flags, or unallocated with no backing data there).
fn old_reads_zero(sh: &Shared, cow: &Cow, start: u64, len: u64) -> bool {
    let mut plan = Vec::new();
    plan_entry(&sh.geo, cow.old, start, len, 0, &mut plan);
    let backing_end = sh.backing.as_ref().map_or(0, |b| b.info().size);
    plan.iter().all(|p| match p.src {
        Source::Zero => true,
        Source::Backing => cow.cluster_guest + start + p.pos >= backing_end,
        _ => false,
    })
}

/// The old contents of `[start, start+len)` of the cluster at `cluster_guest`.
async fn read_old(
    sh: &Arc<Shared>,
    io: &IoCtx,
    cluster_guest: u64,
    old: L2Entry,
    start: u64,
    len: u64,
) -> Result<SharedBuf> {
    let mut plan = Vec::new();
    plan_entry(&sh.geo, old, start, len, 0, &mut plan);
    let mut buf = io.pool().shared(len as usize);
    let bufs = buf.io();
    exec(sh, io, cluster_guest + start, &plan, &bufs).await?;
    drop(bufs);
    Ok(buf)
}
