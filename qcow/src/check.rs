//! Consistency check and repair (as `qemu-img check`): rebuild every cluster's reference count
//! from the header, the tables and the snapshots, compare it with the refcounts on disk, and
//! report corruptions (a cluster used more than its refcount says, an offset past the end of the
//! file, a wrong COPIED flag) and leaks (a refcount above its uses). Repair sets the refcounts to
//! what the references say (`Leaks`: only lowering; `All`: both ways, and the COPIED flags).

use std::sync::Arc;

use blockdev::{Error, ErrorKind, IoCtx, Result};
use zerocopy::FromBytes;

use crate::format::{decode_table, l2_entries, table_get, table_set, Be64, SnapshotHeader};
use crate::imagefile;
use crate::l1l2::{Geometry, L2Entry, COPIED, OFFSET_MASK};
use crate::shared::Shared;
use crate::write::compressed_clusters;
use crate::Qcow2;

/// What to repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Report only.
    None,
    /// Lower refcounts that are too high.
    Leaks,
    /// Fix every refcount and COPIED flag.
    All,
}

/// What a check found (after repair, what is left).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Corruptions found.
    pub corruptions: u64,
    /// Leaked clusters found.
    pub leaks: u64,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaks repaired.
    pub leaks_fixed: u64,
    /// Clusters referenced by the active L2 tables.
    pub allocated_clusters: u64,
    /// One line per problem (capped at 1000).
    pub messages: Vec<String>,
    /// First byte past the last cluster in use.
    pub image_end_offset: u64,
}

impl Report {
    /// qemu-img's exit code: 0 clean, 2 corruptions left, 3 only leaks left.
    pub fn exit_code(&self) -> i32 {
        if self.corruptions > self.corruptions_fixed {
            2
        } else if self.leaks > self.leaks_fixed {
            3
        } else {
            0
        }
    }

    fn note(&mut self, msg: String) {
        if self.messages.len() < 1000 {
            self.messages.push(msg);
        }
    }
}

struct Counter {
    refs: Vec<u32>,
    file_clusters: u64,
}

impl Counter {
    fn add(&mut self, rep: &mut Report, off: u64, what: &str, g: &Geometry) {
        let c = off >> g.cluster_bits;
        if c >= self.file_clusters {
            rep.corruptions += 1;
            rep.note(format!("ERROR {what} at offset {off:#x}: cluster is outside the image file"));
            return;
        }
        let r = &mut self.refs[c as usize];
        *r = r.saturating_add(1);
    }
}

async fn read_u64s(sh: &Shared, io: &IoCtx, off: u64, n: usize) -> Result<Vec<u64>> {
    let raw = imagefile::read_vec(io, &sh.file, off, n * 8).await?;
    Ok(decode_table(&raw))
}

/// Count the references of one L1 table (its clusters, L2 tables and data clusters). With
/// `active`, check the COPIED flags against the on-disk refcounts later (returns their places).
#[allow(clippy::too_many_arguments)]
async fn count_l1(
    sh: &Shared,
    io: &IoCtx,
    cnt: &mut Counter,
    rep: &mut Report,
    l1_off: u64,
    l1_size: u32,
    active: bool,
    copied_checks: &mut Vec<(u64, u64, bool)>,
) -> Result<()> {
    let g = sh.geo;
    let cs = g.cluster_size();
    for i in 0..(u64::from(l1_size) * 8).div_ceil(cs) {
        cnt.add(rep, l1_off + i * cs, "L1 table", &g);
    }
    let l1 = read_u64s(sh, io, l1_off, l1_size as usize).await?;
    for (i, &e) in l1.iter().enumerate() {
        let t = e & OFFSET_MASK;
        if t == 0 {
            continue;
        }
        if !t.is_multiple_of(cs) || t >> g.cluster_bits >= cnt.file_clusters {
            rep.corruptions += 1;
            rep.note(format!("ERROR L1 entry {i}: L2 table offset {t:#x} is unaligned or outside the file"));
            continue;
        }
        cnt.add(rep, t, "L2 table", &g);
        if active {
            copied_checks.push((l1_off + i as u64 * 8, t, e & COPIED != 0));
        }
        let table = imagefile::read_vec(io, &sh.file, t, cs as usize).await?;
        let esz = g.l2_entry_size as usize;
        for (j, (raw, bm)) in l2_entries(&table, g.extended).into_iter().enumerate() {
            let entry = g.decode_l2(raw, bm);
            match entry {
                L2Entry::Compressed { offset, size } => {
                    for c in compressed_clusters(cs, offset, size) {
                        cnt.add(rep, c, "compressed cluster", &g);
                    }
                    if active {
                        rep.allocated_clusters += 1;
                    }
                }
                e => {
                    if let Some(h) = e.host_cluster() {
                        if !h.is_multiple_of(cs) {
                            rep.corruptions += 1;
                            rep.note(format!("ERROR L2 table {t:#x} entry {j}: offset {h:#x} is not cluster-aligned"));
                            continue;
                        }
                        cnt.add(rep, h, "data cluster", &g);
                        if active {
                            rep.allocated_clusters += 1;
                            copied_checks.push((t + (j * esz) as u64, h, raw & COPIED != 0));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Parse the snapshot table: (L1 offset, L1 size) of each snapshot and the table's byte length.
pub async fn snapshot_l1s(sh: &Shared, io: &IoCtx) -> Result<(Vec<(u64, u32)>, u64)> {
    let (off, n) = {
        let m = sh.lock();
        (m.header.snapshots_offset, m.header.nb_snapshots)
    };
    let mut out = Vec::new();
    let mut pos = 0u64;
    for i in 0..n {
        let raw = imagefile::read_vec(io, &sh.file, off + pos, size_of::<SnapshotHeader>()).await?;
        let fixed = SnapshotHeader::read_from_bytes(&raw[..]).unwrap_or_default();
        let l1_off = fixed.l1_table_offset.get();
        let l1_size = fixed.l1_size.get();
        let id_len = u64::from(fixed.id_str_size.get());
        let name_len = u64::from(fixed.name_size.get());
        let extra = u64::from(fixed.extra_data_size.get());
        if extra > 1024 || u64::from(l1_size) * 8 > crate::header::MAX_L1_BYTES {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("{}: snapshot {i}: bad extra data or L1 size", sh.name),
            ));
        }
        out.push((l1_off, l1_size));
        pos = (pos + size_of::<SnapshotHeader>() as u64 + extra + id_len + name_len).next_multiple_of(8);
    }
    Ok((out, pos))
}

/// Check the image; repair as asked (repair needs a writable open).
pub async fn check(io: &IoCtx, dev: &Qcow2, repair: Repair) -> Result<Report> {
    let sh: &Arc<Shared> = dev.shared();
    if repair != Repair::None && sh.read_only {
        return Err(Error::new(ErrorKind::ReadOnly, format!("{}: repair needs a writable open", sh.name)));
    }
    let _lock = sh.alloc.lock().await;
    if repair != Repair::None {
        crate::flush::flush_metadata(sh, io).await?;
    }
    let g = sh.geo;
    let cs = g.cluster_size();
    let h = sh.lock().header.clone();
    let file_clusters = sh.file.info().size.div_ceil(cs);
    let mut cnt = Counter { refs: vec![0; file_clusters as usize], file_clusters };
    let mut rep = Report::default();
    cnt.add(&mut rep, 0, "header", &g);
    let mut copied = Vec::new();
    count_l1(sh, io, &mut cnt, &mut rep, h.l1_table_offset, h.l1_size, true, &mut copied).await?;
    if h.nb_snapshots > 0 {
        let (snaps, len) = snapshot_l1s(sh, io).await?;
        for i in 0..len.div_ceil(cs) {
            cnt.add(&mut rep, h.snapshots_offset + i * cs, "snapshot table", &g);
        }
        for (l1_off, l1_size) in snaps {
            count_l1(sh, io, &mut cnt, &mut rep, l1_off, l1_size, false, &mut Vec::new()).await?;
        }
    }
    for i in 0..u64::from(h.refcount_table_clusters) {
        cnt.add(&mut rep, h.refcount_table_offset + i * cs, "refcount table", &g);
    }
    let reftable = sh.lock().reftable.clone();
    for (i, &b) in reftable.iter().enumerate() {
        let b = b & !0x1ff;
        if b == 0 {
            continue;
        }
        if !b.is_multiple_of(cs) || b >> g.cluster_bits >= file_clusters {
            rep.corruptions += 1;
            rep.note(format!("ERROR refcount block {i} at {b:#x} is unaligned or outside the file"));
            continue;
        }
        cnt.add(&mut rep, b, "refcount block", &g);
    }
    // Compare with the refcounts on disk.
    // As qemu-img: clusters past the end of the file are not compared.
    let mut end = 0;
    for c in 0..file_clusters {
        let want = u64::from(cnt.refs.get(c as usize).copied().unwrap_or(0));
        let have = sh.lookup(io, |m| m.refcount(c)).await?;
        if have != 0 || want != 0 {
            end = c + 1;
        }
        if have == want {
            continue;
        }
        let fix = matches!((have < want, repair), (true, Repair::All) | (false, Repair::Leaks | Repair::All));
        if have < want {
            rep.corruptions += 1;
            rep.note(format!("ERROR cluster {c} refcount={have} reference={want}"));
        } else {
            rep.leaks += 1;
            rep.note(format!("Leaked cluster {c} refcount={have} reference={want}"));
        }
        if fix && sh.lock().has_refblock(c)? {
            sh.lookup(io, |m| m.set_refcount(c, want)).await?;
            if have < want {
                rep.corruptions_fixed += 1;
            } else {
                rep.leaks_fixed += 1;
            }
        }
    }
    // COPIED flags of the active tables (refcount 1 exactly when set).
    for (at, host, flag) in copied {
        let rc = sh.lookup(io, |m| m.refcount(host >> g.cluster_bits)).await?;
        if (rc == 1) != flag {
            rep.corruptions += 1;
            rep.note(format!("ERROR OFLAG_COPIED at {at:#x}: refcount={rc} but COPIED is {flag}"));
            if repair == Repair::All {
                fix_copied_flag(sh, io, &h, at, rc == 1).await?;
                rep.corruptions_fixed += 1;
            }
        }
    }
    rep.image_end_offset = end * cs;
    if repair != Repair::None {
        crate::flush::flush_metadata(sh, io).await?;
        let mut m = sh.lock();
        m.free_hint = 0;
    }
    Ok(rep)
}

/// Set or clear the COPIED flag of the active L1 or L2 entry at file offset `at` (through the
/// caches, written back by the flush that ends the repair).
async fn fix_copied_flag(sh: &Shared, io: &IoCtx, h: &crate::Header, at: u64, set: bool) -> Result<()> {
    let flip = |e: u64| if set { e | COPIED } else { e & !COPIED };
    let l1_end = h.l1_table_offset + u64::from(h.l1_size) * 8;
    if (h.l1_table_offset..l1_end).contains(&at) {
        let idx = ((at - h.l1_table_offset) / 8) as usize;
        let mut m = sh.lock();
        if let Some(e) = m.l1.get(idx).copied() {
            m.l1[idx] = flip(e);
            m.l1_dirty.insert(idx);
        }
        return Ok(());
    }
    let ss = sh.lock().l2_slice_size();
    let (slice, pos) = (at / ss * ss, (at % ss) as usize);
    sh.lookup(io, |m| {
        let Some(d) = m.l2.get_mut(slice) else {
            return Err(crate::meta::LookupErr::Miss(crate::meta::Miss::L2(slice)));
        };
        let index = pos / size_of::<Be64>();
        if let Some(e) = table_get::<Be64>(d, index) {
            table_set(d, index, Be64::new(flip(e.get())));
        }
        Ok(())
    })
    .await
}

/// A writable open of an image with the dirty bit set: rebuild the refcounts, then clear the bit.
pub async fn repair_on_open(io: &IoCtx, dev: &Qcow2) -> Result<()> {
    let rep = check(io, dev, Repair::All).await?;
    if rep.exit_code() == 2 {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!("{}: dirty image has corruptions the refcount rebuild cannot fix", dev.shared().name),
        ));
    }
    let sh = dev.shared();
    sh.lock().header.incompatible_features &= !crate::header::incompat::DIRTY;
    crate::flush::write_header(sh, io).await?;
    imagefile::sync(io, &sh.file).await
}
