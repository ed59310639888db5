//! Changing the virtual size of an image (as `qemu-img resize`).
//!
//! Growing moves the L1 table to a bigger run of clusters when the new size needs more entries,
//! crash-safely: the new clusters are counted and the copy written and synced first, then one
//! header write switches to it (the old table stays valid until then), then the old table's
//! clusters are released. Shrinking is refused while any cluster past the new end holds data
//! (its host cluster or compressed stream); zero-flag entries and empty L2 tables there go.
//! Growing over a backing file longer than the old size zeroes the new part (as QEMU), so the
//! backing file's bytes past the old end do not appear.

use blockdev::size::format_iec;
use blockdev::{BlockDev, Error, ErrorKind, IoCtx, Result};

use crate::alloc::alloc_clusters;
use crate::flush::{flush_metadata, guarded_write, write_header};
use crate::header::{Header, MAX_DISK_SIZE, MAX_L1_BYTES};
use crate::imagefile::{self, site};
use crate::l1l2::{Geometry, L2Entry, OFFSET_MASK};
use crate::overlap::Kind;
use crate::shared::Shared;
use crate::Qcow2;

fn invalid(name: &str, msg: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::InvalidInput, format!("{name}: {msg}"))
}

/// Check a resize of the image named `name`, whose header is `h`, to `new_size` bytes without
/// touching it: the size itself, the L1 table it needs, `--shrink` for a smaller size, and
/// qemu-img's refusal of version 2 images with snapshots. ([`resize`] also refuses a shrink
/// while data lies past the new end, which needs the tables read.)
pub fn check_size(name: &str, h: &Header, new_size: u64, allow_shrink: bool) -> Result<()> {
    if !new_size.is_multiple_of(512) || new_size == 0 || new_size > MAX_DISK_SIZE {
        return Err(invalid(name, format!("new size {new_size} must be a non-zero multiple of 512 up to 2^56")));
    }
    if h.nb_snapshots > 0 && h.version < 3 {
        return Err(invalid(name, "a version 2 (compat 0.10) image with snapshots cannot be resized (as qemu-img)"));
    }
    let g = Geometry::of(h);
    let need_l1 = new_size.div_ceil(g.cluster_size()).div_ceil(g.l2_entries());
    if need_l1 * 8 > MAX_L1_BYTES {
        return Err(invalid(name, format!("new size {new_size} needs an L1 table over 32 MiB")));
    }
    if new_size < h.size && !allow_shrink {
        return Err(invalid(
            name,
            format!(
                "new size {} is smaller than the current {}: shrinking needs --shrink",
                format_iec(new_size),
                format_iec(h.size)
            ),
        ));
    }
    Ok(())
}

/// Resize the open (writable) image to `new_size` bytes. A smaller size needs `allow_shrink`.
pub async fn resize(io: &IoCtx, dev: &Qcow2, new_size: u64, allow_shrink: bool) -> Result<()> {
    let sh = dev.shared();
    if sh.read_only {
        return Err(Error::new(ErrorKind::ReadOnly, format!("{}: resize needs a writable open", sh.name)));
    }
    let alloc_guard = sh.alloc.lock().await;
    flush_metadata(sh, io).await?;
    let h = sh.lock().header.clone();
    check_size(&sh.name, &h, new_size, allow_shrink)?;
    let g = sh.geo;
    let need_l1 = new_size.div_ceil(g.cluster_size()).div_ceil(g.l2_entries());
    if new_size >= h.size {
        if need_l1 > u64::from(h.l1_size) {
            grow_l1(sh, io, need_l1 as usize).await?;
        }
    } else {
        check_nothing_past(sh, io, new_size, h.size).await?;
    }
    sh.lock().header.size = new_size;
    write_header(sh, io).await?;
    imagefile::sync(io, &sh.file).await?;
    sh.size.store(new_size, std::sync::atomic::Ordering::Release);
    if new_size < h.size {
        drop_tail(sh, io, new_size, h.size).await?;
    }
    drop(alloc_guard);
    // As QEMU: when the backing file is longer than the old size, the new part reads zeros, not
    // the backing file's data that was beyond the old end.
    if let Some(b) = &sh.backing {
        let end = new_size.min(b.info().size);
        if end > h.size {
            let z = dev.write_zeroes(io, h.size, end - h.size, false, blockdev::IoTag::DATA).await;
            z.and(dev.flush(io, blockdev::IoTag::DATA).await)?;
        }
    }
    Ok(())
}

/// Move the active L1 table to a new run of clusters with `entries` entries.
pub(crate) async fn grow_l1(sh: &Shared, io: &IoCtx, entries: usize) -> Result<()> {
    let cs = sh.geo.cluster_size();
    let clusters = (entries as u64 * 8).div_ceil(cs);
    let off = alloc_clusters(sh, io, clusters).await?;
    let mut table = sh.lock().l1.clone();
    table.resize(entries, 0);
    let mut raw = crate::format::encode_table(table.iter().copied());
    raw.resize((clusters * cs) as usize, 0);
    // The new clusters' refcounts first, then the table, then the header that points at it.
    flush_metadata(sh, io).await?;
    guarded_write(sh, io, off, &raw, site::L1_UPDATE, Kind::None).await?;
    imagefile::sync(io, &sh.file).await?;
    let (old_off, old_entries) = {
        let mut m = sh.lock();
        let old = (m.header.l1_table_offset, m.header.l1_size);
        m.header.l1_table_offset = off;
        m.header.l1_size = entries as u32;
        m.l1 = table;
        m.l1_dirty.clear();
        old
    };
    write_header(sh, io).await?;
    imagefile::sync(io, &sh.file).await?;
    if old_entries > 0 {
        let mut m = sh.lock();
        for i in 0..(u64::from(old_entries) * 8).div_ceil(cs) {
            m.pending_free.push(old_off + i * cs);
        }
    }
    flush_metadata(sh, io).await?;
    Ok(())
}

/// Refuse a shrink to `new` while a cluster in `[new rounded up to a cluster, old)` (or any entry
/// of an L2 table that would be dropped) holds data.
async fn check_nothing_past(sh: &Shared, io: &IoCtx, new: u64, old: u64) -> Result<()> {
    let g = sh.geo;
    let cs = g.cluster_size();
    let l1_len = sh.lock().l1.len();
    let cover = g.l1_coverage();
    // Every entry of the tables that go, and the tail of the last table that stays.
    let start = new.next_multiple_of(cs);
    let end = (l1_len as u64 * cover).max(old);
    let mut guest = start;
    while guest < end {
        let idx = g.l1_index(guest) as usize;
        if sh.lock().l1.get(idx).is_none_or(|e| e & OFFSET_MASK == 0) {
            guest = (idx as u64 + 1) * cover;
            continue;
        }
        let entry = sh.lookup(io, |m| m.l2_entry(guest)).await?;
        let data = match entry {
            L2Entry::Compressed { .. } => true,
            L2Entry::Extended { offset, alloc, .. } => offset != 0 && alloc != 0,
            e => e.host_cluster().is_some(),
        };
        if data {
            let where_ = if guest < old { "" } else { " (an entry past the end of the disk)" };
            return Err(invalid(
                &sh.name,
                format!("cannot shrink to {new}: guest offset {guest}{where_} holds data; nothing may be allocated past the new end"),
            ));
        }
        guest += cs;
    }
    Ok(())
}

/// After a shrink: clear the entries past the new end and drop the L2 tables that lie wholly past it.
async fn drop_tail(sh: &Shared, io: &IoCtx, new: u64, old: u64) -> Result<()> {
    let g = sh.geo;
    let cs = g.cluster_size();
    let cover = g.l1_coverage();
    let keep_l1 = new.div_ceil(cs).div_ceil(g.l2_entries()) as usize;
    // The partial table: entries past the new end (zero flags, preallocated-free) cleared.
    let tail_end = (keep_l1 as u64 * cover).min(old.next_multiple_of(cs));
    let mut guest = new.next_multiple_of(cs);
    while guest < tail_end {
        let (raw, bm) = sh.lookup(io, |m| m.l2_raw(guest)).await?;
        if raw != 0 || bm != 0 {
            crate::write::ensure_l2(sh, io, guest).await?;
            let host = sh.lookup(io, |m| m.l2_entry(guest)).await?.host_cluster();
            sh.lookup(io, |m| {
                m.set_l2_raw(guest, 0, 0)?;
                m.pending_free.extend(host);
                Ok(())
            })
            .await?;
        }
        guest += cs;
    }
    {
        let mut m = sh.lock();
        for idx in keep_l1..m.l1.len() {
            let t = m.l1[idx] & OFFSET_MASK;
            if t != 0 {
                m.l1[idx] = 0;
                m.l1_dirty.insert(idx);
                m.l2.forget_range(t, cs);
                m.pending_free.push(t);
            }
        }
    }
    flush_metadata(sh, io).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{create_path, open_path, CreateOptions, Options};
    use blockdev::{IoTag, SharedBuf};
    use std::path::{Path, PathBuf};

    fn image(dir: &Path, io: &IoCtx, size: u64, cluster_size: u64) -> PathBuf {
        let path = dir.join("r.qcow2");
        create_path(io, &path, &CreateOptions { size, cluster_size, ..Default::default() }).unwrap();
        path
    }

    fn open(io: &IoCtx, path: &Path) -> Qcow2 {
        io.block_on(open_path(io, path, &Options::default())).unwrap()
    }

    #[test]
    fn grow_moves_the_l1_table_and_keeps_data() {
        let io = IoCtx::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        // 512-byte clusters: one L1 entry covers 32 KiB, so growing 64 KiB -> 4 MiB moves the table.
        let file = image(dir.path(), &io, 64 << 10, 512);
        let dev = open(&io, &file);
        let mut b = SharedBuf::from_slice(&[7u8; 4096]);
        io.block_on(dev.write(&io, 8192, b.io(), false, IoTag::DATA)).unwrap();
        let old_l1 = dev.header().l1_table_offset;
        io.block_on(resize(&io, &dev, 4 << 20, false)).unwrap();
        assert_eq!(dev.info().size, 4 << 20);
        assert_ne!(dev.header().l1_table_offset, old_l1);
        let mut b = SharedBuf::from_slice(&[9u8; 512]);
        io.block_on(dev.write(&io, (4 << 20) - 512, b.io(), false, IoTag::DATA)).unwrap();
        io.block_on(dev.close(&io)).unwrap();
        drop(dev);
        let dev = open(&io, &file);
        assert_eq!(dev.info().size, 4 << 20);
        let mut r = SharedBuf::new(4096);
        io.block_on(dev.read(&io, 8192, r.io(), IoTag::DATA)).unwrap();
        assert!(r.bytes().iter().all(|&x| x == 7));
        let rep = io.block_on(crate::check::check(&io, &dev, crate::check::Repair::None)).unwrap();
        assert_eq!(rep.exit_code(), 0, "{:?}", rep.messages);
    }

    #[test]
    fn shrink_needs_the_flag_and_an_empty_tail() {
        let io = IoCtx::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = image(dir.path(), &io, 4 << 20, 4096);
        let dev = open(&io, &file);
        let mut b = SharedBuf::from_slice(&[1u8; 4096]);
        io.block_on(dev.write(&io, 3 << 20, b.io(), false, IoTag::DATA)).unwrap();
        let e = io.block_on(resize(&io, &dev, 1 << 20, false)).unwrap_err();
        assert!(e.to_string().contains("--shrink"), "{e}");
        let e = io.block_on(resize(&io, &dev, 1 << 20, true)).unwrap_err();
        assert!(e.to_string().contains("3145728"), "{e}");
        io.block_on(dev.discard(&io, 3 << 20, 4096, IoTag::DATA)).unwrap();
        io.block_on(resize(&io, &dev, 1 << 20, true)).unwrap();
        assert_eq!(dev.info().size, 1 << 20);
        io.block_on(dev.close(&io)).unwrap();
        let rep = io.block_on(crate::check::check(&io, &dev, crate::check::Repair::None)).unwrap();
        assert_eq!(rep.exit_code(), 0, "{:?}", rep.messages);
    }
}
