//! The in-memory metadata of an open image: header, L1 table, refcount table and the L2 and
//! refcount slice caches. Everything here is synchronous and runs under the short metadata
//! lock; a lookup whose slice is not cached answers [`Miss`] and the async caller loads it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use blockdev::{Error, ErrorKind, Result};
use zerocopy::byteorder::{BigEndian as BE, U16, U32, U64};

use crate::cache::SliceCache;
use crate::format::{l2_get, l2_set, table_get, table_set};
use crate::header::Header;
use crate::l1l2::{Geometry, L2Entry, COPIED, OFFSET_MASK};

/// A slice that must be loaded from the file before the lookup can finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// An L2 slice at this file offset.
    L2(u64),
    /// A refcount block slice at this file offset.
    Refcount(u64),
}

/// A lookup result: the value, a slice to load first, or an error.
pub type Lookup<T> = std::result::Result<T, LookupErr>;

/// Why a lookup did not finish.
#[derive(Debug)]
pub enum LookupErr {
    /// Load this slice and retry.
    Miss(Miss),
    /// A real error (corruption).
    Err(Error),
}

impl From<Error> for LookupErr {
    fn from(e: Error) -> Self {
        LookupErr::Err(e)
    }
}

/// The metadata of one image.
pub struct Meta {
    /// The header as it is on disk (plus changes waiting to be written).
    pub header: Header,
    /// Sizes.
    pub geo: Geometry,
    /// Active L1 table (host-endian).
    pub l1: Vec<u64>,
    /// L1 indices changed in memory and not yet written.
    pub l1_dirty: BTreeSet<usize>,
    /// Refcount table (host-endian).
    pub reftable: Vec<u64>,
    /// Refcount table indices changed and not yet written.
    pub reftable_dirty: BTreeSet<usize>,
    /// L2 slices.
    pub l2: SliceCache,
    /// Refcount block slices.
    pub rc: SliceCache,
    /// Host clusters whose refcount drops by one once the L2/L1 changes that unmapped them are
    /// durable (a reference is never dropped before the pointer to it is gone on disk).
    pub pending_free: Vec<u64>,
    /// Lowest cluster index that may be free.
    pub free_hint: u64,
    /// Size of the image file when opened (for validating offsets).
    pub file_size: u64,
    /// Host offset (cluster-aligned) from which every cluster reads as zeros: past the end of the
    /// file when it was opened, and never allocated since. A fresh data cluster there needs no
    /// zeros written around the guest data (a growable file reads zeros in holes and past its
    /// end); a cluster below it may hold old bytes (a freed cluster whose punch failed, a
    /// fixed-size device) and is written in full. A device that grew underneath
    /// (`BlockDev::refresh_size`) is covered by the allocator also asking for the device's
    /// current end.
    pub zero_from: u64,
    /// Something was found corrupt: refuse further metadata writes.
    pub corrupt: bool,
    /// Guest clusters (by index) with an allocation in flight; the lock is held until it is linked.
    pub inflight: HashMap<u64, Arc<futures::lock::Mutex<()>>>,
}

impl Meta {
    /// Slice size of the L2 cache in bytes.
    pub fn l2_slice_size(&self) -> u64 {
        self.l2.slice_size() as u64
    }

    fn corrupt_err(&self, msg: String) -> Error {
        Error::new(ErrorKind::Corrupt, msg)
    }

    /// The L2 table offset for a guest offset (0: no table).
    pub fn l2_table(&self, guest: u64) -> Result<u64> {
        let idx = self.geo.l1_index(guest) as usize;
        let Some(&e) = self.l1.get(idx) else {
            return Err(
                self.corrupt_err(format!("guest offset {guest} lies past the L1 table ({} entries)", self.l1.len()))
            );
        };
        let off = e & OFFSET_MASK;
        if off != 0 && !off.is_multiple_of(self.geo.cluster_size()) {
            return Err(self.corrupt_err(format!("L1 entry {idx}: L2 table offset {off:#x} is not cluster-aligned")));
        }
        Ok(off)
    }

    /// File offset of the L2 slice holding `guest`'s entry, and the byte offset inside the slice.
    pub fn l2_slot(&self, l2_table: u64, guest: u64) -> (u64, usize) {
        let byte = self.geo.l2_index(guest) * self.geo.l2_entry_size;
        let ss = self.l2_slice_size();
        (l2_table + byte / ss * ss, (byte % ss) as usize)
    }

    /// The raw L2 entry (and bitmap) for `guest`, (0, 0) when there is no L2 table.
    pub fn l2_raw(&mut self, guest: u64) -> Lookup<(u64, u64)> {
        let table = self.l2_table(guest)?;
        if table == 0 {
            return Ok((0, 0));
        }
        let (slice, at) = self.l2_slot(table, guest);
        let ext = self.geo.extended;
        let Some(s) = self.l2.get(slice) else { return Err(LookupErr::Miss(Miss::L2(slice))) };
        Ok(l2_get(s, at / self.geo.l2_entry_size as usize, ext).unwrap_or_default())
    }

    /// The decoded L2 entry for `guest`, with its host offset checked against the file.
    pub fn l2_entry(&mut self, guest: u64) -> Lookup<L2Entry> {
        let (e, bm) = self.l2_raw(guest)?;
        let entry = self.geo.decode_l2(e, bm);
        let cs = self.geo.cluster_size();
        if let Some(offset) = entry.host_cluster().filter(|o| !o.is_multiple_of(cs)) {
            let msg = format!("L2 entry for guest offset {guest}: host offset {offset:#x} is not cluster-aligned");
            return Err(self.corrupt_err(msg).into());
        }
        Ok(entry)
    }

    /// Set the raw L2 entry (and bitmap) for `guest`; the L2 table must exist and be cached.
    pub fn set_l2_raw(&mut self, guest: u64, entry: u64, bitmap: u64) -> Lookup<()> {
        let table = self.l2_table(guest)?;
        if table == 0 {
            return Err(self.corrupt_err(format!("no L2 table for guest offset {guest}")).into());
        }
        let (slice, at) = self.l2_slot(table, guest);
        let ext = self.geo.extended;
        let index = at / self.geo.l2_entry_size as usize;
        let Some(s) = self.l2.get_mut(slice) else { return Err(LookupErr::Miss(Miss::L2(slice))) };
        l2_set(s, index, ext, entry, bitmap);
        Ok(())
    }

    /// File offset of the refcount slice holding `cluster`'s refcount and the bit offset in it;
    /// `None` when no refcount block covers the cluster (refcount 0).
    fn rc_slot(&self, cluster: u64) -> Result<Option<(u64, u64)>> {
        let per_block = self.geo.refblock_entries();
        let rt_idx = cluster / per_block;
        let Some(&block) = self.reftable.get(rt_idx as usize) else { return Ok(None) };
        let block = block & !0x1ff;
        if block == 0 {
            return Ok(None);
        }
        if !block.is_multiple_of(self.geo.cluster_size()) {
            return Err(self.corrupt_err(format!(
                "refcount table entry {rt_idx}: block offset {block:#x} is not cluster-aligned"
            )));
        }
        let bit = (cluster % per_block) << self.geo.refcount_order;
        let ss_bits = self.rc.slice_size() as u64 * 8;
        Ok(Some((block + bit / ss_bits * ss_bits / 8, bit % ss_bits)))
    }

    /// The refcount of host cluster index `cluster`.
    pub fn refcount(&mut self, cluster: u64) -> Lookup<u64> {
        let Some((slice, bit)) = self.rc_slot(cluster)? else { return Ok(0) };
        let order = self.geo.refcount_order;
        let Some(s) = self.rc.get(slice) else { return Err(LookupErr::Miss(Miss::Refcount(slice))) };
        Ok(get_bits(s, bit, order))
    }

    /// Set the refcount of `cluster` (its refcount block must exist).
    pub fn set_refcount(&mut self, cluster: u64, value: u64) -> Lookup<()> {
        if value > self.geo.max_refcount() {
            return Err(self.corrupt_err(format!("refcount of cluster {cluster} would overflow ({value})")).into());
        }
        let Some((slice, bit)) = self.rc_slot(cluster)? else {
            return Err(self.corrupt_err(format!("no refcount block for cluster {cluster}")).into());
        };
        let order = self.geo.refcount_order;
        let Some(s) = self.rc.get_mut(slice) else { return Err(LookupErr::Miss(Miss::Refcount(slice))) };
        set_bits(s, bit, order, value);
        Ok(())
    }

    /// True when a refcount block covers `cluster`.
    pub fn has_refblock(&self, cluster: u64) -> Result<bool> {
        Ok(self.rc_slot(cluster)?.is_some())
    }

    /// Record that clusters `[start, start+n)` (indices) are allocated; true when all of them
    /// lay at or past [`Meta::zero_from`], so they read as zeros until written.
    pub fn claim(&mut self, start: u64, n: u64) -> bool {
        let cb = self.geo.cluster_bits;
        let zero = start << cb >= self.zero_from;
        self.zero_from = self.zero_from.max((start + n) << cb);
        zero
    }

    /// Set L1 entry `idx` to an L2 table at `off` with refcount 1.
    pub fn set_l1(&mut self, idx: usize, off: u64) {
        self.l1[idx] = if off == 0 { 0 } else { off | COPIED };
        self.l1_dirty.insert(idx);
    }
}

/// Read a refcount of width `1 << order` bits at bit offset `bit` of `s` (QEMU's layout:
/// sub-byte refcounts fill each byte from its lowest bit; wider ones are big-endian).
pub fn get_bits(s: &[u8], bit: u64, order: u32) -> u64 {
    let width = 1u32 << order;
    let byte = (bit / 8) as usize;
    match width {
        1 | 2 | 4 => u64::from((s[byte] >> (bit % 8)) & ((1u16 << width) - 1) as u8),
        8 => u64::from(s[byte]),
        16 => table_get::<U16<BE>>(s, byte / 2).map_or(0, |v| v.get().into()),
        32 => table_get::<U32<BE>>(s, byte / 4).map_or(0, |v| v.get().into()),
        _ => table_get::<U64<BE>>(s, byte / 8).map_or(0, |v| v.get()),
    }
}

/// Write a refcount (see [`get_bits`]).
pub fn set_bits(s: &mut [u8], bit: u64, order: u32, value: u64) {
    let width = 1u32 << order;
    let byte = (bit / 8) as usize;
    match width {
        1 | 2 | 4 => {
            let mask = (((1u16 << width) - 1) as u8) << (bit % 8);
            s[byte] = (s[byte] & !mask) | (((value as u8) << (bit % 8)) & mask);
        }
        8 => s[byte] = value as u8,
        16 => _ = table_set(s, byte / 2, U16::<BE>::new(value as u16)),
        32 => _ = table_set(s, byte / 4, U32::<BE>::new(value as u32)),
        _ => _ = table_set(s, byte / 8, U64::<BE>::new(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_byte_refcounts_fill_from_the_low_bit() {
        let mut s = [0u8; 8];
        set_bits(&mut s, 1, 0, 1);
        assert_eq!(s[0], 0b10);
        set_bits(&mut s, 4, 2, 0xf);
        assert_eq!(s[0], 0xf2);
        assert_eq!(get_bits(&s, 4, 2), 0xf);
        set_bits(&mut s, 16, 4, 0x1234);
        assert_eq!(&s[2..4], &[0x12, 0x34]);
        assert_eq!(get_bits(&s, 16, 4), 0x1234);
    }
}
