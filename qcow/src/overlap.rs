//! The overlap check before every metadata write (QEMU's `qcow2_check_metadata_overlap`): a
//! write that would land on other metadata is refused and the image marked corrupt.

use blockdev::{Error, ErrorKind};

use crate::l1l2::OFFSET_MASK;
use crate::meta::Meta;

/// What a write is, so the check skips the structure being updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Guest data or anything not listed.
    None,
    /// The header.
    Header,
    /// The active L1 table.
    L1,
    /// An L2 table.
    L2,
    /// The refcount table.
    Reftable,
    /// A refcount block.
    Refblock,
    /// The snapshot table.
    Snapshots,
}

/// Every metadata range of an image, sorted, for checking many writes at once.
pub struct MetaRanges {
    ranges: Vec<(u64, u64, Kind)>,
}

impl MetaRanges {
    /// The fixed structures only (header, L1, refcount table, snapshot table): the cheap check
    /// for guest data written into a newly allocated cluster.
    pub fn fixed(m: &Meta) -> MetaRanges {
        let mut r = Self::fixed_ranges(m);
        r.sort_by_key(|x| x.0);
        MetaRanges { ranges: r }
    }

    fn fixed_ranges(m: &Meta) -> Vec<(u64, u64, Kind)> {
        let cs = m.geo.cluster_size();
        let h = &m.header;
        let mut r = vec![(0, cs, Kind::Header)];
        if h.l1_size > 0 {
            r.push((h.l1_table_offset, (u64::from(h.l1_size) * 8).next_multiple_of(cs), Kind::L1));
        }
        r.push((h.refcount_table_offset, u64::from(h.refcount_table_clusters) * cs, Kind::Reftable));
        if h.nb_snapshots > 0 {
            r.push((h.snapshots_offset, cs, Kind::Snapshots));
        }
        r
    }

    /// Collect the ranges from `m` (header, L1, refcount table, refcount blocks, L2 tables, snapshot table).
    pub fn of(m: &Meta) -> MetaRanges {
        let cs = m.geo.cluster_size();
        let mut r = Self::fixed_ranges(m);
        for &b in &m.reftable {
            let b = b & !0x1ff;
            if b != 0 {
                r.push((b, cs, Kind::Refblock));
            }
        }
        for &e in &m.l1 {
            let t = e & OFFSET_MASK;
            if t != 0 {
                r.push((t, cs, Kind::L2));
            }
        }
        r.sort_by_key(|x| x.0);
        MetaRanges { ranges: r }
    }

    /// The kind of metadata `[off, off+len)` overlaps, other than `allowed`.
    pub fn conflict(&self, off: u64, len: u64, allowed: Kind) -> Option<Kind> {
        let end = off + len;
        // Ranges are at most a few MiB long; look back from the first range starting at or after `end`.
        let idx = self.ranges.partition_point(|x| x.0 < end);
        self.ranges[..idx]
            .iter()
            .rev()
            .take_while(|x| x.0 + (8 << 20) > off)
            .find(|x| x.0 + x.1 > off && x.2 != allowed)
            .map(|x| x.2)
    }
}

/// The fixed structure (header, active L1, refcount table, snapshot table) that guest data at
/// `[off, off+len)` would overwrite, if any. Allocation-free: it runs for every in-place write
/// (QEMU checks data writes too: an L2 entry pointing into metadata must not let a guest write there).
pub fn fixed_conflict(m: &Meta, off: u64, len: u64) -> Option<Kind> {
    let cs = m.geo.cluster_size();
    let h = &m.header;
    let end = off.saturating_add(len);
    let hit = |start: u64, n: u64| start < end && off < start.saturating_add(n);
    if hit(0, cs) {
        return Some(Kind::Header);
    }
    if h.l1_size > 0 && hit(h.l1_table_offset, (u64::from(h.l1_size) * 8).next_multiple_of(cs)) {
        return Some(Kind::L1);
    }
    if hit(h.refcount_table_offset, u64::from(h.refcount_table_clusters) * cs) {
        return Some(Kind::Reftable);
    }
    if h.nb_snapshots > 0 && hit(h.snapshots_offset, cs) {
        return Some(Kind::Snapshots);
    }
    None
}

/// Refusal of a write at `off` that overlaps `what`.
pub fn overlap_error(name: &str, off: u64, len: u64, what: Kind, writing: Kind) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!("{name}: {writing:?} write at {off:#x} (+{len}) would overlap {what:?} metadata; image marked corrupt"),
    )
}
