//! The qcow2 on-disk structures (QEMU's `docs/interop/qcow2.txt`) as they lie in the file:
//! big-endian fields in `#[repr(C)]` structs (zerocopy's byte-order types have alignment 1, so
//! there is no padding and a struct is exactly its bytes). Every offset in the format is here
//! once; the code that interprets the fields (checks, caps, defaults) is in `header.rs`,
//! `snapshot.rs` and `meta.rs`.

use zerocopy::byteorder::{BigEndian as BE, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A big-endian 64-bit table entry (L1, L2, refcount table).
pub type Be64 = U64<BE>;

/// The fixed part of every header (version 2 ends here, 72 bytes).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct HeaderV2 {
    /// `QFI\xfb`.
    pub magic: U32<BE>,
    /// 2 or 3.
    pub version: U32<BE>,
    /// Offset of the backing file name (0: none).
    pub backing_file_offset: U64<BE>,
    /// Length of the backing file name.
    pub backing_file_size: U32<BE>,
    /// log2 of the cluster size.
    pub cluster_bits: U32<BE>,
    /// Virtual disk size in bytes.
    pub size: U64<BE>,
    /// Encryption method.
    pub crypt_method: U32<BE>,
    /// Entries in the active L1 table.
    pub l1_size: U32<BE>,
    /// Offset of the active L1 table.
    pub l1_table_offset: U64<BE>,
    /// Offset of the refcount table.
    pub refcount_table_offset: U64<BE>,
    /// Clusters the refcount table occupies.
    pub refcount_table_clusters: U32<BE>,
    /// Number of internal snapshots.
    pub nb_snapshots: U32<BE>,
    /// Offset of the snapshot table.
    pub snapshots_offset: U64<BE>,
}

/// The fields version 3 adds after [`HeaderV2`] (bytes 72 to 104).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct HeaderV3 {
    /// Incompatible feature bits.
    pub incompatible_features: U64<BE>,
    /// Compatible feature bits.
    pub compatible_features: U64<BE>,
    /// Autoclear feature bits.
    pub autoclear_features: U64<BE>,
    /// log2 of the refcount width in bits.
    pub refcount_order: U32<BE>,
    /// Length of the header before the extensions.
    pub header_length: U32<BE>,
}

/// Offset of the compression type byte (version 3 headers of at least 105 bytes).
pub const COMPRESSION_TYPE_OFFSET: usize = size_of::<HeaderV2>() + size_of::<HeaderV3>();

/// The start of a header extension: its type and the length of its data (padded to 8 after).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ExtensionHeader {
    /// Extension type.
    pub kind: U32<BE>,
    /// Length of the data that follows, without padding.
    pub len: U32<BE>,
}

/// One entry of the feature name table extension.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct FeatureNameEntry {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub kind: u8,
    /// Bit number.
    pub bit: u8,
    /// Name, NUL-padded.
    pub name: [u8; 46],
}

/// The fixed part of a snapshot table entry (40 bytes), followed by extra data, the ID and the
/// name, the whole entry padded to 8.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SnapshotHeader {
    /// Offset of the snapshot's L1 table.
    pub l1_table_offset: U64<BE>,
    /// Entries in the snapshot's L1 table.
    pub l1_size: U32<BE>,
    /// Length of the ID string.
    pub id_str_size: U16<BE>,
    /// Length of the name.
    pub name_size: U16<BE>,
    /// Creation time, seconds.
    pub date_sec: U32<BE>,
    /// Creation time, nanoseconds.
    pub date_nsec: U32<BE>,
    /// Guest clock at creation, nanoseconds.
    pub vm_clock_nsec: U64<BE>,
    /// Size of the saved VM state (32-bit field).
    pub vm_state_size: U32<BE>,
    /// Length of the extra data that follows.
    pub extra_data_size: U32<BE>,
}

/// The extra data QEMU writes for a snapshot (24 bytes; older images may have less).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SnapshotExtra {
    /// Size of the saved VM state (64-bit).
    pub vm_state_size_large: U64<BE>,
    /// Virtual disk size at the snapshot.
    pub disk_size: U64<BE>,
    /// Instruction count at creation (`u64::MAX`: none).
    pub icount: U64<BE>,
}

/// An extended L2 entry: the entry and its subcluster bitmap.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ExtendedL2Entry {
    /// The entry (host offset and flags).
    pub entry: U64<BE>,
    /// The subcluster allocation and zero bitmap.
    pub bitmap: U64<BE>,
}

/// Decode a table of big-endian 64-bit entries (L1, refcount table); a trailing partial entry
/// is ignored.
pub fn decode_table(raw: &[u8]) -> Vec<u64> {
    let whole = raw.len() - raw.len() % size_of::<Be64>();
    // A byte slice of a multiple of 8 is always a valid `[Be64]` (alignment 1).
    <[Be64]>::ref_from_bytes(&raw[..whole]).map(|t| t.iter().map(|e| e.get()).collect()).unwrap_or_default()
}

/// Encode a table of 64-bit entries big-endian.
pub fn encode_table(entries: impl IntoIterator<Item = u64>) -> Vec<u8> {
    let table: Vec<Be64> = entries.into_iter().map(Be64::new).collect();
    table.as_bytes().to_vec()
}

/// The `index`th element of a slice viewed as a table of `T` (`None` past its end).
pub fn table_get<T: FromBytes + KnownLayout + Immutable + Copy>(bytes: &[u8], index: usize) -> Option<T> {
    let size = size_of::<T>();
    let at = index.checked_mul(size)?;
    T::read_from_bytes(bytes.get(at..at.checked_add(size)?)?).ok()
}

/// Store `value` as the `index`th element of a slice viewed as a table of `T`; `false` past its
/// end.
pub fn table_set<T: IntoBytes + Immutable>(bytes: &mut [u8], index: usize, value: T) -> bool {
    let size = size_of::<T>();
    match index.checked_mul(size).and_then(|at| bytes.get_mut(at..at.checked_add(size)?)) {
        Some(dst) => {
            dst.copy_from_slice(value.as_bytes());
            true
        }
        None => false,
    }
}

/// The raw entry and subcluster bitmap at `index` of an L2 table or slice (bitmap 0 without
/// extended L2); `None` past its end.
pub fn l2_get(slice: &[u8], index: usize, extended: bool) -> Option<(u64, u64)> {
    if extended {
        table_get::<ExtendedL2Entry>(slice, index).map(|e| (e.entry.get(), e.bitmap.get()))
    } else {
        table_get::<Be64>(slice, index).map(|e| (e.get(), 0))
    }
}

/// Store an entry (and, with extended L2, its bitmap) at `index`; `false` past the end.
pub fn l2_set(slice: &mut [u8], index: usize, extended: bool, entry: u64, bitmap: u64) -> bool {
    if extended {
        table_set(slice, index, ExtendedL2Entry { entry: entry.into(), bitmap: bitmap.into() })
    } else {
        table_set(slice, index, Be64::new(entry))
    }
}

/// Every (entry, bitmap) of an L2 table or slice.
pub fn l2_entries(slice: &[u8], extended: bool) -> Vec<(u64, u64)> {
    let n = slice.len() / if extended { size_of::<ExtendedL2Entry>() } else { size_of::<Be64>() };
    (0..n).filter_map(|i| l2_get(slice, i, extended)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_are_exactly_the_spec_sizes() {
        assert_eq!(size_of::<HeaderV2>(), 72);
        assert_eq!(size_of::<HeaderV2>() + size_of::<HeaderV3>(), 104);
        assert_eq!(COMPRESSION_TYPE_OFFSET, 104);
        assert_eq!(size_of::<ExtensionHeader>(), 8);
        assert_eq!(size_of::<FeatureNameEntry>(), 48);
        assert_eq!(size_of::<SnapshotHeader>(), 40);
        assert_eq!(size_of::<SnapshotExtra>(), 24);
        assert_eq!(size_of::<ExtendedL2Entry>(), 16);
    }

    #[test]
    fn fields_are_big_endian_at_their_offsets() {
        let h = HeaderV2 { cluster_bits: 16.into(), size: (1u64 << 30).into(), ..Default::default() };
        let b = h.as_bytes();
        assert_eq!(b[20..24], [0, 0, 0, 16]);
        assert_eq!(b[24..32], [0, 0, 0, 0, 0x40, 0, 0, 0]);
    }

    #[test]
    fn tables_round_trip_and_ignore_a_partial_tail() {
        let raw = encode_table([1, 0x0102_0304_0506_0708]);
        assert_eq!(raw[8..16], [1, 2, 3, 4, 5, 6, 7, 8]);
        let mut longer = raw.clone();
        longer.push(0xff);
        assert_eq!(decode_table(&longer), [1, 0x0102_0304_0506_0708]);
    }

    #[test]
    fn entries_are_bounded() {
        let mut b = vec![0u8; 16];
        assert!(table_set(&mut b, 1, Be64::new(7)));
        assert_eq!(table_get::<Be64>(&b, 1).map(|e| e.get()), Some(7));
        assert!(table_get::<Be64>(&b, 2).is_none());
        assert!(!table_set(&mut b, 2, Be64::new(7)));
        assert!(table_get::<Be64>(&b, usize::MAX).is_none());
    }
}
