//! The one rule for "may this request use the host cluster as it is?", asked by the fast paths
//! of `Qcow2::read` and `Qcow2::write`, by a write's plan and by the allocating write path.
//!
//! A read may go straight to the host cluster when every byte it covers is allocated data there.
//! A write may also go there, with no metadata change, when the cluster is not shared (COPIED:
//! its refcount is 1, so no snapshot sees it). Everything else is a copy-on-write or an
//! allocation (`write::write_cluster`).

use crate::l1l2::{Geometry, L2Entry};
use crate::meta::{Lookup, Meta};
use crate::overlap::fixed_conflict;
use crate::write::subcluster_mask;

/// The host offset of bytes `[within, within+len)` of the cluster `entry` describes, when they
/// are allocated data there (not zeros, not the backing file's, not compressed) and, for a
/// `write`, the cluster is not shared. The range lies inside the cluster and is not empty.
pub(crate) fn host_bytes(g: &Geometry, entry: L2Entry, within: u64, len: u64, write: bool) -> Option<u64> {
    match entry {
        L2Entry::Normal { offset, copied, .. } if copied || !write => Some(offset + within),
        L2Entry::Extended { offset, copied, alloc, zero, .. } if offset != 0 && (copied || !write) => {
            let mask = subcluster_mask(g.subcluster_size(), within, len);
            (alloc & mask == mask && zero & mask == 0).then_some(offset + within)
        }
        _ => None,
    }
}

/// The host offset a write of `len` bytes at `guest` (inside one cluster) can go to with no
/// metadata change: [`host_bytes`] for a write, the guest cluster not being allocated by
/// another write right now, and the host range clear of the image's fixed metadata (the
/// allocating path refuses that one and marks the image corrupt). `None`: take that path.
pub(crate) fn writable_host(m: &mut Meta, guest: u64, len: u64) -> Lookup<Option<u64>> {
    let g = m.geo;
    let entry = m.l2_entry(guest)?;
    let Some(host) = host_bytes(&g, entry, g.in_cluster(guest), len, true) else { return Ok(None) };
    if m.inflight.contains_key(&(guest >> g.cluster_bits)) || fixed_conflict(m, host, len).is_some() {
        return Ok(None);
    }
    Ok(Some(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(extended: bool) -> Geometry {
        Geometry { cluster_bits: 16, l2_entry_size: if extended { 16 } else { 8 }, refcount_order: 4, extended }
    }

    #[test]
    fn reads_need_allocated_data_and_writes_also_an_unshared_cluster() {
        let g = geo(false);
        let shared = L2Entry::Normal { offset: 0x50000, copied: false, reserved: false };
        let own = L2Entry::Normal { offset: 0x50000, copied: true, reserved: false };
        assert_eq!(host_bytes(&g, own, 512, 4096, true), Some(0x50200));
        assert_eq!(host_bytes(&g, shared, 512, 4096, false), Some(0x50200));
        assert_eq!(host_bytes(&g, shared, 512, 4096, true), None, "a shared cluster is copied first");
        for other in [
            L2Entry::Unallocated { reserved: false },
            L2Entry::Zero { offset: 0x50000, copied: true },
            L2Entry::Compressed { offset: 0x50000, size: 512 },
        ] {
            assert_eq!(host_bytes(&g, other, 0, 512, false), None, "{other:?}");
            assert_eq!(host_bytes(&g, other, 0, 512, true), None, "{other:?}");
        }
    }

    #[test]
    fn extended_entries_need_every_touched_subcluster_allocated_and_not_zero() {
        // 64 KiB clusters: 32 subclusters of 2 KiB.
        let g = geo(true);
        let e = |alloc, zero| L2Entry::Extended { offset: 0x50000, copied: true, alloc, zero, reserved: false };
        // Subclusters 1 and 2 allocated.
        assert_eq!(host_bytes(&g, e(0b110, 0), 2048, 4096, true), Some(0x50800));
        assert_eq!(host_bytes(&g, e(0b110, 0), 2048, 4097, true), None, "touches subcluster 3");
        assert_eq!(host_bytes(&g, e(0b110, 0), 2047, 2, true), None, "touches subcluster 0");
        assert_eq!(host_bytes(&g, e(0b110, 0b100), 2048, 4096, false), None, "subcluster 2 reads zeros");
        let none = L2Entry::Extended { offset: 0, copied: true, alloc: 0b110, zero: 0, reserved: false };
        assert_eq!(host_bytes(&g, none, 2048, 512, false), None, "no host cluster");
    }
}
