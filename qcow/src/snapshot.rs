//! Internal snapshots (as `qemu-img snapshot -l|-c|-a|-d`).
//!
//! A snapshot is a copy of the active L1 table plus an entry in the snapshot table. Creating one
//! raises the refcount of every L2 table and data cluster the active L1 reaches and clears their
//! COPIED flags, so the next write to any of them copies first. Applying one raises the
//! snapshot's references, switches the active L1 to its copy, then drops the old active
//! references. Deleting one removes it from the table first, then drops its references (clusters
//! reaching refcount 0 are freed and punched out of the file).
//!
//! Crash safety: references are raised and durable before anything on disk points at them, and
//! dropped only after the pointer is gone durably — a crash at any point leaves at most leaks.
//! The snapshot table is replaced by writing a new copy, then switching the header to it in one
//! sector write.

use std::time::{SystemTime, UNIX_EPOCH};

use blockdev::{Error, ErrorKind, IoCtx, Result};
use zerocopy::{FromBytes, IntoBytes};

use crate::alloc::alloc_clusters;
use crate::flush::{flush_metadata, guarded_write, write_header};
use crate::format::{decode_table, encode_table, l2_entries, l2_set, table_get, Be64, SnapshotExtra, SnapshotHeader};
use crate::header::{MAX_L1_BYTES, MAX_SNAPSHOTS};
use crate::imagefile::{self, site};
use crate::l1l2::{L2Entry, COPIED, OFFSET_MASK};
use crate::meta::{LookupErr, Miss};
use crate::overlap::Kind;
use crate::shared::Shared;
use crate::write::compressed_clusters;
use crate::Qcow2;

/// Largest extra data QEMU accepts in a snapshot entry.
const MAX_EXTRA: u32 = 1024;
/// Largest snapshot table QEMU accepts (64 MiB).
const MAX_TABLE_BYTES: u64 = 64 << 20;

/// One entry of the snapshot table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Offset of the snapshot's L1 table.
    pub l1_offset: u64,
    /// Entries in that table.
    pub l1_size: u32,
    /// Unique ID (QEMU uses decimal numbers).
    pub id: String,
    /// Name (tag).
    pub name: String,
    /// Creation time, seconds since the epoch.
    pub date_sec: u32,
    /// Creation time, nanoseconds part.
    pub date_nsec: u32,
    /// Guest clock at creation, nanoseconds.
    pub vm_clock_nsec: u64,
    /// VM state size (32-bit field; see [`Snapshot::vm_state_size`]).
    pub vm_state_size32: u32,
    /// Extra data (v3: vm_state_size_large, disk_size, icount), kept byte for byte.
    pub extra: Vec<u8>,
}

/// Field `index` of the extra data (see [`SnapshotExtra`]), if the entry has it.
fn extra_field(extra: &[u8], index: usize) -> Option<u64> {
    table_get::<Be64>(extra, index).map(|v| v.get())
}

impl Snapshot {
    /// VM state size in bytes (the 64-bit extra field when present).
    pub fn vm_state_size(&self) -> u64 {
        extra_field(&self.extra, 0).unwrap_or(u64::from(self.vm_state_size32))
    }

    /// Virtual disk size when the snapshot was taken, if recorded.
    pub fn disk_size(&self) -> Option<u64> {
        extra_field(&self.extra, 1)
    }

    /// Instruction count (record/replay), if recorded.
    pub fn icount(&self) -> Option<u64> {
        extra_field(&self.extra, 2).filter(|&v| v != u64::MAX)
    }
}

fn corrupt(sh: &Shared, msg: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Corrupt, format!("{}: snapshot table: {msg}", sh.name))
}

/// Parse `n` entries from `buf` (the table bytes); returns them and the table's length in bytes.
pub fn parse_table(buf: &[u8], n: u32) -> std::result::Result<(Vec<Snapshot>, u64), String> {
    let mut out = Vec::with_capacity(n.min(1024) as usize);
    let mut pos = 0usize;
    for i in 0..n {
        let past_end = || format!("entry {i} lies past the end of the table");
        let (f, _) = buf.get(pos..).and_then(|b| SnapshotHeader::read_from_prefix(b).ok()).ok_or_else(past_end)?;
        let l1_size = f.l1_size.get();
        let id_len = usize::from(f.id_str_size.get());
        let name_len = usize::from(f.name_size.get());
        let extra_len = f.extra_data_size.get();
        if extra_len > MAX_EXTRA {
            return Err(format!("entry {i}: {extra_len} bytes of extra data (at most {MAX_EXTRA})"));
        }
        if u64::from(l1_size) * 8 > MAX_L1_BYTES {
            return Err(format!("entry {i}: L1 table of {l1_size} entries exceeds 32 MiB"));
        }
        let var = pos + size_of::<SnapshotHeader>();
        let end = var + extra_len as usize + id_len + name_len;
        let rest = buf.get(var..end).ok_or_else(past_end)?;
        let (extra, rest) = rest.split_at(extra_len as usize);
        let (id, name) = rest.split_at(id_len);
        out.push(Snapshot {
            l1_offset: f.l1_table_offset.get(),
            l1_size,
            id: String::from_utf8_lossy(id).into_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
            date_sec: f.date_sec.get(),
            date_nsec: f.date_nsec.get(),
            vm_clock_nsec: f.vm_clock_nsec.get(),
            vm_state_size32: f.vm_state_size.get(),
            extra: extra.to_vec(),
        });
        pos = end.next_multiple_of(8);
    }
    Ok((out, pos as u64))
}

/// Serialise a snapshot table (each entry 8-byte aligned, as QEMU writes it).
pub fn serialize_table(snaps: &[Snapshot]) -> Vec<u8> {
    let mut b = Vec::new();
    for s in snaps {
        let fixed = SnapshotHeader {
            l1_table_offset: s.l1_offset.into(),
            l1_size: s.l1_size.into(),
            id_str_size: (s.id.len() as u16).into(),
            name_size: (s.name.len() as u16).into(),
            date_sec: s.date_sec.into(),
            date_nsec: s.date_nsec.into(),
            vm_clock_nsec: s.vm_clock_nsec.into(),
            vm_state_size: s.vm_state_size32.into(),
            extra_data_size: (s.extra.len() as u32).into(),
        };
        b.extend_from_slice(fixed.as_bytes());
        b.extend_from_slice(&s.extra);
        b.extend_from_slice(s.id.as_bytes());
        b.extend_from_slice(s.name.as_bytes());
        b.resize(b.len().next_multiple_of(8), 0);
    }
    b
}

/// Read the snapshot table of an open image: the entries and the table's length in bytes.
pub async fn read_table(sh: &Shared, io: &IoCtx) -> Result<(Vec<Snapshot>, u64)> {
    let (off, n) = {
        let m = sh.lock();
        (m.header.snapshots_offset, m.header.nb_snapshots)
    };
    if n == 0 {
        return Ok((Vec::new(), 0));
    }
    if n > MAX_SNAPSHOTS {
        return Err(corrupt(sh, format!("{n} snapshots (at most {MAX_SNAPSHOTS})")));
    }
    let file_size = sh.file.info().size;
    // Read in growing steps: each entry is at most 40 + 1024 + 2 * 65535 bytes.
    let mut len = (u64::from(n) * 64).max(4096);
    loop {
        let avail = file_size.saturating_sub(off).min(MAX_TABLE_BYTES);
        let want = len.min(avail);
        let buf = imagefile::read_vec(io, &sh.file, off, want as usize).await?;
        match parse_table(&buf, n) {
            Ok(r) => return Ok(r),
            Err(e) if want >= avail || want >= MAX_TABLE_BYTES => return Err(corrupt(sh, e)),
            Err(_) => len = (len * 4).min(MAX_TABLE_BYTES),
        }
    }
}

/// The snapshots of an image.
pub async fn list(io: &IoCtx, dev: &Qcow2) -> Result<Vec<Snapshot>> {
    Ok(read_table(dev.shared(), io).await?.0)
}

/// Find a snapshot by ID first, then by name (as QEMU does).
pub fn find(snaps: &[Snapshot], which: &str) -> Option<usize> {
    snaps.iter().position(|s| s.id == which).or_else(|| snaps.iter().position(|s| s.name == which))
}

fn writable(sh: &Shared, what: &str) -> Result<()> {
    if sh.read_only {
        return Err(Error::new(ErrorKind::ReadOnly, format!("{}: {what} needs a writable open", sh.name)));
    }
    Ok(())
}

fn not_found(sh: &Shared, which: &str) -> Error {
    Error::new(ErrorKind::NotFound, format!("{}: no snapshot with ID or name '{which}'", sh.name))
}

/// The bytes of an L2 table, through the cache (so changes not yet written back are seen).
async fn read_l2_table(sh: &Shared, io: &IoCtx, table: u64) -> Result<Vec<u8>> {
    let cs = sh.geo.cluster_size();
    let ss = sh.lock().l2_slice_size();
    let mut out = Vec::with_capacity(cs as usize);
    for s in 0..cs / ss {
        let at = table + s * ss;
        let slice = sh.lookup(io, |m| m.l2.get(at).map(|d| d.to_vec()).ok_or(LookupErr::Miss(Miss::L2(at)))).await?;
        out.extend_from_slice(&slice);
    }
    Ok(out)
}

/// Host clusters (cluster-aligned offsets) one L2 entry references.
fn entry_clusters(sh: &Shared, raw: u64, bitmap: u64, table: u64, idx: usize) -> Result<Vec<u64>> {
    let g = sh.geo;
    let cs = g.cluster_size();
    match g.decode_l2(raw, bitmap) {
        L2Entry::Compressed { offset, size } => Ok(compressed_clusters(cs, offset, size)),
        e => match e.host_cluster() {
            Some(h) if !h.is_multiple_of(cs) => Err(Error::new(
                ErrorKind::Corrupt,
                format!("{}: L2 table {table:#x} entry {idx}: host offset {h:#x} is not cluster-aligned", sh.name),
            )),
            h => Ok(h.into_iter().collect()),
        },
    }
}

/// The L2 entries of a table: (raw entry, bitmap).
fn entries(sh: &Shared, table: &[u8]) -> Vec<(u64, u64)> {
    l2_entries(table, sh.geo.extended)
}

fn check_table_offset(sh: &Shared, t: u64, i: usize) -> Result<()> {
    let cs = sh.geo.cluster_size();
    if !t.is_multiple_of(cs) || t + cs > sh.file.info().size.next_multiple_of(cs) {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!("{}: L1 entry {i}: L2 table offset {t:#x} is unaligned or past the end of the file", sh.name),
        ));
    }
    Ok(())
}

/// Write the caches back when they are full (or many releases wait), keeping memory bounded.
async fn maybe_flush(sh: &Shared, io: &IoCtx) -> Result<()> {
    let full = {
        let m = sh.lock();
        m.l2.needs_writeback() || m.rc.needs_writeback() || m.pending_free.len() > 1 << 16
    };
    if full {
        flush_metadata(sh, io).await?;
    }
    Ok(())
}

/// Raise by one the refcount of every L2 table and data cluster `l1` reaches.
async fn add_refs(sh: &Shared, io: &IoCtx, l1: &[u64]) -> Result<()> {
    let cs = sh.geo.cluster_size();
    for (i, &e) in l1.iter().enumerate() {
        let t = e & OFFSET_MASK;
        if t == 0 {
            continue;
        }
        check_table_offset(sh, t, i)?;
        let table = read_l2_table(sh, io, t).await?;
        let mut clusters = vec![t];
        for (j, (raw, bm)) in entries(sh, &table).into_iter().enumerate() {
            clusters.extend(entry_clusters(sh, raw, bm, t, j)?);
        }
        for off in clusters {
            let c = off / cs;
            sh.lookup(io, |m| {
                let rc = m.refcount(c)?;
                m.set_refcount(c, rc + 1)
            })
            .await?;
        }
        maybe_flush(sh, io).await?;
    }
    Ok(())
}

/// Drop (after the next flush) one reference from every L2 table and data cluster `l1` reaches.
async fn drop_refs(sh: &Shared, io: &IoCtx, l1: &[u64]) -> Result<()> {
    for (i, &e) in l1.iter().enumerate() {
        let t = e & OFFSET_MASK;
        if t == 0 {
            continue;
        }
        check_table_offset(sh, t, i)?;
        let table = read_l2_table(sh, io, t).await?;
        let mut clusters = vec![t];
        for (j, (raw, bm)) in entries(sh, &table).into_iter().enumerate() {
            clusters.extend(entry_clusters(sh, raw, bm, t, j)?);
        }
        sh.lock().pending_free.extend(clusters);
        maybe_flush(sh, io).await?;
    }
    Ok(())
}

/// Set the COPIED flags of the active L1 and L2 tables to what the refcounts say (set exactly
/// when the refcount is 1; never on compressed entries).
async fn fix_copied(sh: &Shared, io: &IoCtx) -> Result<()> {
    let g = sh.geo;
    let cs = g.cluster_size();
    let l1 = sh.lock().l1.clone();
    let ss = sh.lock().l2_slice_size();
    for (i, &e) in l1.iter().enumerate() {
        let t = e & OFFSET_MASK;
        if t == 0 {
            continue;
        }
        check_table_offset(sh, t, i)?;
        let rc = sh.lookup(io, |m| m.refcount(t / cs)).await?;
        let want = if rc == 1 { t | COPIED } else { t };
        if e != want {
            let mut m = sh.lock();
            m.l1[i] = want;
            m.l1_dirty.insert(i);
        }
        for s in 0..cs / ss {
            let at = t + s * ss;
            let slice =
                sh.lookup(io, |m| m.l2.get(at).map(|d| d.to_vec()).ok_or(LookupErr::Miss(Miss::L2(at)))).await?;
            let mut changes = Vec::new();
            for (j, (raw, bm)) in entries(sh, &slice).into_iter().enumerate() {
                if let L2Entry::Compressed { .. } = g.decode_l2(raw, bm) {
                    continue;
                }
                let Some(h) = g.decode_l2(raw, bm).host_cluster() else { continue };
                let rc = sh.lookup(io, |m| m.refcount(h / cs)).await?;
                let new = if rc == 1 { raw | COPIED } else { raw & !COPIED };
                if new != raw {
                    changes.push((j, new, bm));
                }
            }
            if !changes.is_empty() {
                sh.lookup(io, |m| {
                    let Some(d) = m.l2.get_mut(at) else { return Err(LookupErr::Miss(Miss::L2(at))) };
                    for &(j, v, bm) in &changes {
                        l2_set(d, j, g.extended, v, bm);
                    }
                    Ok(())
                })
                .await?;
            }
            maybe_flush(sh, io).await?;
        }
    }
    Ok(())
}

/// Write `snaps` as the new snapshot table and switch the header to it; free the old table.
async fn write_table(sh: &Shared, io: &IoCtx, snaps: &[Snapshot], old_len: u64) -> Result<()> {
    let cs = sh.geo.cluster_size();
    let mut data = serialize_table(snaps);
    if data.len() as u64 > MAX_TABLE_BYTES {
        return Err(Error::new(ErrorKind::NoSpace, format!("{}: the snapshot table would exceed 64 MiB", sh.name)));
    }
    let new_off = if data.is_empty() {
        0
    } else {
        let clusters = (data.len() as u64).div_ceil(cs);
        let off = alloc_clusters(sh, io, clusters).await?;
        data.resize((clusters * cs) as usize, 0);
        flush_metadata(sh, io).await?;
        guarded_write(sh, io, off, &data, site::HEADER, Kind::None).await?;
        imagefile::sync(io, &sh.file).await?;
        off
    };
    let (old_off, old_n) = {
        let mut m = sh.lock();
        let old = (m.header.snapshots_offset, m.header.nb_snapshots);
        m.header.snapshots_offset = new_off;
        m.header.nb_snapshots = snaps.len() as u32;
        old
    };
    write_header(sh, io).await?;
    imagefile::sync(io, &sh.file).await?;
    if old_n > 0 && old_off != 0 {
        let mut m = sh.lock();
        for i in 0..old_len.div_ceil(cs) {
            m.pending_free.push(old_off + i * cs);
        }
    }
    flush_metadata(sh, io).await?;
    Ok(())
}

async fn read_l1(sh: &Shared, io: &IoCtx, sn: &Snapshot) -> Result<Vec<u64>> {
    let cs = sh.geo.cluster_size();
    let len = u64::from(sn.l1_size) * 8;
    if sn.l1_size > 0
        && (!sn.l1_offset.is_multiple_of(cs)
            || sn.l1_offset.checked_add(len).is_none_or(|e| e > sh.file.info().size.next_multiple_of(cs)))
    {
        return Err(corrupt(
            sh,
            format!("snapshot '{}': L1 table at {:#x} is unaligned or past the end", sn.name, sn.l1_offset),
        ));
    }
    let raw = imagefile::read_vec(io, &sh.file, sn.l1_offset, len as usize).await?;
    Ok(decode_table(&raw))
}

/// Set the dirty bit (version 3) before an operation's first metadata change, so that a crash in
/// the middle — which can leave COPIED flags that disagree with refcounts for a moment, as QEMU's
/// own snapshot code can — is repaired by the next writable open (QEMU's or ours). Returns
/// whether this call set it (then [`end_op`] clears it).
async fn begin_op(sh: &Shared, io: &IoCtx) -> Result<bool> {
    {
        let mut m = sh.lock();
        if m.header.version < 3 || m.header.is_dirty() {
            return Ok(false);
        }
        m.header.incompatible_features |= crate::header::incompat::DIRTY;
    }
    write_header(sh, io).await?;
    imagefile::sync(io, &sh.file).await?;
    Ok(true)
}

/// After the operation is durable, clear the dirty bit [`begin_op`] set.
async fn end_op(sh: &Shared, io: &IoCtx, set: bool) -> Result<()> {
    if !set {
        return Ok(());
    }
    flush_metadata(sh, io).await?;
    sh.lock().header.incompatible_features &= !crate::header::incompat::DIRTY;
    write_header(sh, io).await?;
    imagefile::sync(io, &sh.file).await
}

/// Create a snapshot of the current disk named `name`; returns its entry.
pub async fn create(io: &IoCtx, dev: &Qcow2, name: &str) -> Result<Snapshot> {
    let sh = dev.shared();
    writable(sh, "creating a snapshot")?;
    if name.is_empty() || name.len() > u16::MAX as usize {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{}: snapshot name must be 1 to 65535 bytes", sh.name),
        ));
    }
    if sh.geo.max_refcount() < 2 {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("{}: 1-bit refcounts cannot count a snapshot's shared clusters", sh.name),
        ));
    }
    let _g = sh.alloc.lock().await;
    flush_metadata(sh, io).await?;
    let (mut snaps, old_len) = read_table(sh, io).await?;
    if snaps.len() as u32 >= MAX_SNAPSHOTS {
        return Err(Error::new(ErrorKind::NoSpace, format!("{}: already {MAX_SNAPSHOTS} snapshots", sh.name)));
    }
    if snaps.iter().any(|s| s.name == name) {
        return Err(Error::new(ErrorKind::InvalidInput, format!("{}: a snapshot named '{name}' exists", sh.name)));
    }
    let id = snaps.iter().filter_map(|s| s.id.parse::<u64>().ok()).max().unwrap_or(0) + 1;
    let (l1, size) = {
        let m = sh.lock();
        (m.l1.clone(), m.header.size)
    };
    let cs = sh.geo.cluster_size();
    let l1_bytes = l1.len() as u64 * 8;
    let mark = begin_op(sh, io).await?;
    let l1_offset = if l1.is_empty() { 0 } else { alloc_clusters(sh, io, l1_bytes.div_ceil(cs)).await? };
    add_refs(sh, io, &l1).await?;
    fix_copied(sh, io).await?;
    let mut raw = encode_table(l1.iter().map(|e| e & !COPIED));
    raw.resize(l1_bytes.next_multiple_of(cs) as usize, 0);
    flush_metadata(sh, io).await?;
    if !l1.is_empty() {
        guarded_write(sh, io, l1_offset, &raw, site::L1_UPDATE, Kind::None).await?;
        imagefile::sync(io, &sh.file).await?;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let extra =
        SnapshotExtra { vm_state_size_large: 0.into(), disk_size: size.into(), icount: 0.into() }.as_bytes().to_vec();
    let sn = Snapshot {
        l1_offset,
        l1_size: l1.len() as u32,
        id: id.to_string(),
        name: name.to_string(),
        date_sec: now.as_secs() as u32,
        date_nsec: now.subsec_nanos(),
        vm_clock_nsec: 0,
        vm_state_size32: 0,
        extra,
    };
    snaps.push(sn.clone());
    write_table(sh, io, &snaps, old_len).await?;
    end_op(sh, io, mark).await?;
    Ok(sn)
}

/// Make the disk what it was when snapshot `which` (ID or name) was taken.
pub async fn apply(io: &IoCtx, dev: &Qcow2, which: &str) -> Result<()> {
    let sh = dev.shared();
    writable(sh, "applying a snapshot")?;
    let _g = sh.alloc.lock().await;
    flush_metadata(sh, io).await?;
    let (snaps, _) = read_table(sh, io).await?;
    let sn = snaps[find(&snaps, which).ok_or_else(|| not_found(sh, which))?].clone();
    let g = sh.geo;
    let cur = sh.lock().header.clone();
    let size = sn.disk_size().unwrap_or(cur.size);
    if !size.is_multiple_of(512) || size > crate::header::MAX_DISK_SIZE {
        return Err(corrupt(sh, format!("snapshot '{}': disk size {size} is invalid", sn.name)));
    }
    let need = (size.div_ceil(g.cluster_size()).div_ceil(g.l2_entries()) as u32).max(sn.l1_size);
    if u64::from(need) * 8 > MAX_L1_BYTES {
        return Err(corrupt(sh, format!("snapshot '{}': needs an L1 table over 32 MiB", sn.name)));
    }
    let sn_l1: Vec<u64> = read_l1(sh, io, &sn).await?.into_iter().map(|e| e & !COPIED).collect();
    let mark = begin_op(sh, io).await?;
    if need > cur.l1_size {
        crate::resize::grow_l1(sh, io, need as usize).await?;
    }
    // The snapshot's references first (durable before the active L1 points at them).
    add_refs(sh, io, &sn_l1).await?;
    flush_metadata(sh, io).await?;
    sh.lock().header.size = size;
    write_header(sh, io).await?;
    imagefile::sync(io, &sh.file).await?;
    sh.size.store(size, std::sync::atomic::Ordering::Release);
    let old = {
        let mut m = sh.lock();
        let mut new = sn_l1;
        new.resize(m.l1.len(), 0);
        let old = std::mem::replace(&mut m.l1, new);
        m.l1_dirty.extend(0..old.len());
        old
    };
    flush_metadata(sh, io).await?;
    // Only now may the old active tables lose their references.
    drop_refs(sh, io, &old).await?;
    flush_metadata(sh, io).await?;
    fix_copied(sh, io).await?;
    flush_metadata(sh, io).await?;
    end_op(sh, io, mark).await
}

/// Delete snapshot `which` (ID or name); clusters only it used are freed.
pub async fn delete(io: &IoCtx, dev: &Qcow2, which: &str) -> Result<Snapshot> {
    let sh = dev.shared();
    writable(sh, "deleting a snapshot")?;
    let _g = sh.alloc.lock().await;
    flush_metadata(sh, io).await?;
    let (mut snaps, old_len) = read_table(sh, io).await?;
    let sn = snaps.remove(find(&snaps, which).ok_or_else(|| not_found(sh, which))?);
    let l1 = read_l1(sh, io, &sn).await?;
    // Gone from the table (durably) before its references drop.
    let mark = begin_op(sh, io).await?;
    write_table(sh, io, &snaps, old_len).await?;
    drop_refs(sh, io, &l1).await?;
    let cs = sh.geo.cluster_size();
    {
        let mut m = sh.lock();
        for i in 0..(u64::from(sn.l1_size) * 8).div_ceil(cs) {
            m.pending_free.push(sn.l1_offset + i * cs);
        }
    }
    flush_metadata(sh, io).await?;
    fix_copied(sh, io).await?;
    flush_metadata(sh, io).await?;
    end_op(sh, io, mark).await?;
    Ok(sn)
}

/// The list as `qemu-img snapshot -l` prints it (byte for byte; dates in local time). Empty
/// when there are no snapshots.
pub fn to_qemu_list(snaps: &[Snapshot]) -> String {
    if snaps.is_empty() {
        return String::new();
    }
    let mut out = String::from("Snapshot list:\n");
    out.push_str(&format!(
        "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}\n",
        "ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT"
    ));
    for s in snaps {
        let secs = s.vm_clock_nsec / 1_000_000_000;
        let clock = format!(
            "{:04}:{:02}:{:02}.{:03}",
            secs / 3600,
            (secs / 60) % 60,
            secs % 60,
            (s.vm_clock_nsec / 1_000_000) % 1000
        );
        let icount = s.icount().map(|v| v.to_string()).unwrap_or_default();
        out.push_str(&format!(
            "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}\n",
            s.id,
            s.name,
            size_to_str(s.vm_state_size()),
            local_date(s.date_sec),
            clock,
            icount
        ));
    }
    out
}

/// qemu's size_to_str: three significant digits and a binary unit ("0 B", "1.5 MiB").
pub fn size_to_str(v: u64) -> String {
    const UNITS: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let scaled = v as f64 / (1000.0 / 1024.0);
    let exp = if scaled == 0.0 { 0 } else { scaled.log2().floor() as i32 + 1 };
    let i = ((exp - 1).max(0) / 10) as usize;
    let x = v as f64 / (1u64 << (i * 10)) as f64;
    // %0.3g: three significant digits, trailing zeros dropped.
    let digits = if x >= 100.0 {
        0
    } else if x >= 10.0 {
        1
    } else if x >= 1.0 {
        2
    } else {
        3
    };
    let s = format!("{x:.digits$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    format!("{s} {}B", UNITS[i.min(6)])
}

/// `YYYY-MM-DD HH:MM:SS` in local time (as qemu-img prints it).
pub fn local_date(secs: u32) -> String {
    let t = libc::time_t::from(secs);
    // SAFETY: `tm` is plain old data that localtime_r fills; both pointers are valid for the call.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return secs.to_string();
        }
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, name: &str, extra: usize) -> Snapshot {
        Snapshot {
            l1_offset: 0x30000,
            l1_size: 3,
            id: id.into(),
            name: name.into(),
            date_sec: 5,
            date_nsec: 6,
            vm_clock_nsec: 7,
            vm_state_size32: 0,
            extra: vec![0; extra],
        }
    }

    #[test]
    fn table_round_trips_and_aligns_entries() {
        let snaps = vec![snap("1", "a", 24), snap("2", "longer name", 16), snap("10", "x", 0)];
        let b = serialize_table(&snaps);
        assert!(b.len().is_multiple_of(8));
        let (back, len) = parse_table(&b, 3).unwrap();
        assert_eq!(back, snaps);
        assert_eq!(len, b.len() as u64);
    }

    #[test]
    fn truncated_or_oversized_entries_are_errors() {
        let b = serialize_table(&[snap("1", "a", 24)]);
        assert!(parse_table(&b[..30], 1).is_err());
        assert!(parse_table(&b, 2).is_err());
        let mut bad = b.clone();
        let mut fixed = SnapshotHeader::read_from_prefix(&bad).unwrap().0;
        fixed.extra_data_size = 5000.into();
        bad[..40].copy_from_slice(fixed.as_bytes());
        assert!(parse_table(&bad, 1).unwrap_err().contains("extra data"));
    }

    #[test]
    fn find_prefers_ids_then_names() {
        let snaps = vec![snap("1", "2", 0), snap("2", "a", 0)];
        assert_eq!(find(&snaps, "2"), Some(1));
        assert_eq!(find(&snaps, "a"), Some(1));
        assert_eq!(find(&snaps, "zz"), None);
    }

    #[test]
    fn sizes_print_as_qemu_does() {
        assert_eq!(size_to_str(0), "0 B");
        assert_eq!(size_to_str(1000), "0.977 KiB");
        assert_eq!(size_to_str(1536 << 10), "1.5 MiB");
        assert_eq!(size_to_str(123 << 20), "123 MiB");
    }
}
