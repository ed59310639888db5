//! Geometry of an image (cluster, L2 and refcount sizes) and the meaning of L1 and L2 entries.

use crate::header::Header;

/// L1/L2 flag: the cluster's refcount is exactly 1 (it may be written in place).
pub const COPIED: u64 = 1 << 63;
/// L2 flag: the cluster is compressed.
pub const COMPRESSED: u64 = 1 << 62;
/// L2 flag (standard entries, v3): the cluster reads as zeros.
pub const ZERO: u64 = 1;
/// Host offset bits of an L1 entry and an uncompressed L2 entry (bits 9..=55).
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Subclusters per cluster with extended L2.
pub const SUBCLUSTERS: u32 = 32;

/// Sizes derived from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Bytes per L2 entry (8 or 16).
    pub l2_entry_size: u64,
    /// log2 of the refcount width.
    pub refcount_order: u32,
    /// Extended L2 entries.
    pub extended: bool,
}

impl Geometry {
    /// The geometry of `h`.
    pub fn of(h: &Header) -> Geometry {
        Geometry {
            cluster_bits: h.cluster_bits,
            l2_entry_size: h.l2_entry_size(),
            refcount_order: h.refcount_order,
            extended: h.extended_l2(),
        }
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Offset inside a cluster.
    pub fn in_cluster(&self, off: u64) -> u64 {
        off & (self.cluster_size() - 1)
    }

    /// Entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_size
    }

    /// Index into the L1 table for a guest offset.
    pub fn l1_index(&self, guest: u64) -> u64 {
        (guest >> self.cluster_bits) / self.l2_entries()
    }

    /// Index into the L2 table for a guest offset.
    pub fn l2_index(&self, guest: u64) -> u64 {
        (guest >> self.cluster_bits) % self.l2_entries()
    }

    /// Subcluster size in bytes (the cluster size without extended L2).
    pub fn subcluster_size(&self) -> u64 {
        if self.extended {
            self.cluster_size() / u64::from(SUBCLUSTERS)
        } else {
            self.cluster_size()
        }
    }

    /// Refcount entries per refcount block.
    pub fn refblock_entries(&self) -> u64 {
        (self.cluster_size() * 8) >> self.refcount_order
    }

    /// Largest refcount value.
    pub fn max_refcount(&self) -> u64 {
        if self.refcount_order == 6 {
            u64::MAX
        } else {
            (1u64 << (1u32 << self.refcount_order)) - 1
        }
    }

    /// Bytes of guest data one L1 entry covers.
    pub fn l1_coverage(&self) -> u64 {
        self.l2_entries() << self.cluster_bits
    }

    /// Bit position where the sector count of a compressed descriptor starts (spec: x = 62 - (cluster_bits - 8)).
    fn compressed_shift(&self) -> u32 {
        62 - (self.cluster_bits - 8)
    }

    /// Decode a standard L2 entry plus its bitmap (0 without extended L2) into what a cluster holds.
    pub fn decode_l2(&self, entry: u64, bitmap: u64) -> L2Entry {
        if entry & COMPRESSED != 0 {
            let x = self.compressed_shift();
            let desc = entry & !(COMPRESSED | COPIED);
            let offset = desc & ((1u64 << x) - 1);
            let sectors = (desc >> x) + 1;
            let size = sectors * 512 - (offset & 511);
            return L2Entry::Compressed { offset, size };
        }
        let offset = entry & OFFSET_MASK;
        let copied = entry & COPIED != 0;
        if self.extended {
            let alloc = bitmap as u32;
            let zero = (bitmap >> 32) as u32;
            return L2Entry::Extended { offset, copied, alloc, zero, reserved: entry & 0x1ff != 0 };
        }
        if entry & ZERO != 0 {
            return L2Entry::Zero { offset, copied };
        }
        if offset == 0 {
            return L2Entry::Unallocated { reserved: entry & !COPIED & 0x1fe != 0 || copied };
        }
        L2Entry::Normal { offset, copied, reserved: entry & 0x1fe != 0 || entry & 0xff00_0000_0000_0000 & !COPIED != 0 }
    }

    /// Encode a compressed descriptor of `size` bytes at `offset`.
    pub fn encode_compressed(&self, offset: u64, size: u64) -> u64 {
        let x = self.compressed_shift();
        let sectors = (offset + size).div_ceil(512) - offset / 512;
        COMPRESSED | ((sectors - 1) << x) | offset
    }
}

/// What one L2 entry says about its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Entry {
    /// No data here: zeros, or the backing file's data.
    Unallocated {
        /// Reserved bits were set (a corruption `check` reports).
        reserved: bool,
    },
    /// Reads as zeros; `offset` may still hold a preallocated cluster.
    Zero {
        /// Preallocated host cluster (0 if none).
        offset: u64,
        /// COPIED flag.
        copied: bool,
    },
    /// Data in the host cluster at `offset`.
    Normal {
        /// Host offset.
        offset: u64,
        /// COPIED flag (refcount is 1).
        copied: bool,
        /// Reserved bits were set.
        reserved: bool,
    },
    /// Compressed data of at most `size` bytes at `offset`.
    Compressed {
        /// Host byte offset of the compressed stream.
        offset: u64,
        /// Bytes the stream may occupy.
        size: u64,
    },
    /// Extended L2: per-subcluster allocation (`alloc`) and zero (`zero`) bitmaps.
    Extended {
        /// Host cluster (0: none).
        offset: u64,
        /// COPIED flag.
        copied: bool,
        /// Allocated subclusters.
        alloc: u32,
        /// Zero subclusters.
        zero: u32,
        /// Reserved bits were set.
        reserved: bool,
    },
}

impl L2Entry {
    /// The host cluster this entry occupies (for refcounting), if any.
    pub fn host_cluster(&self) -> Option<u64> {
        match *self {
            L2Entry::Normal { offset, .. } | L2Entry::Zero { offset, .. } | L2Entry::Extended { offset, .. } => {
                (offset != 0).then_some(offset)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(bits: u32) -> Geometry {
        Geometry { cluster_bits: bits, l2_entry_size: 8, refcount_order: 4, extended: false }
    }

    #[test]
    fn compressed_descriptor_round_trips() {
        let g = geo(16);
        let e = g.encode_compressed(0x12_3456, 3000);
        match g.decode_l2(e, 0) {
            L2Entry::Compressed { offset, size } => {
                assert_eq!(offset, 0x12_3456);
                assert!((3000..3000 + 512).contains(&size));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn zero_flag_wins_over_offset() {
        let g = geo(16);
        assert_eq!(g.decode_l2(0x10000 | ZERO | COPIED, 0), L2Entry::Zero { offset: 0x10000, copied: true });
        assert_eq!(g.decode_l2(0, 0), L2Entry::Unallocated { reserved: false });
    }

    #[test]
    fn refcount_geometry() {
        let g = Geometry { refcount_order: 0, ..geo(9) };
        assert_eq!(g.refblock_entries(), 4096);
        assert_eq!(g.max_refcount(), 1);
        let g = Geometry { refcount_order: 6, ..geo(16) };
        assert_eq!(g.max_refcount(), u64::MAX);
        assert_eq!(g.refblock_entries(), 8192);
    }
}
