//! The RAID on-disk structures as they lie on each member: little-endian fields in `#[repr(C)]`
//! structs (zerocopy's byte-order types have alignment 1, so there is no padding and a struct is
//! exactly its bytes). Every offset of the format is here once: the superblock, the partial
//! parity log's header block and units, and the write-intent bitmap's words. The code that
//! interprets the fields (checks, states, defaults) is in `superblock.rs`, `raid5/ppl_unit.rs`
//! and `bitmap.rs`.
//!
//! Each 4 KiB block ends with a crc32 of every byte before it ([`Checksummed`]).

use std::mem::{offset_of, size_of};

use zerocopy::byteorder::{LittleEndian, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::superblock::MAX_MEMBERS;

/// A little-endian 32-bit field.
pub type Le32 = U32<LittleEndian>;
/// A little-endian 64-bit field (also one word of the bitmap).
pub type Le64 = U64<LittleEndian>;

/// Bytes of the superblock block and of every header block of the log.
pub const BLOCK: usize = 4096;

/// A block whose last field is the crc32 of every byte before it.
pub trait Checksummed: IntoBytes + Immutable + Sized {
    /// Where the checksum field starts.
    const CRC_AT: usize;
    /// The checksum field.
    fn crc_field(&mut self) -> &mut Le32;

    /// crc32 of every byte before the checksum field.
    fn computed_crc(&self) -> u32 {
        crc32fast::hash(self.as_bytes().get(..Self::CRC_AT).unwrap_or_default())
    }

    /// Set the checksum field from the bytes before it.
    fn seal(&mut self) {
        let crc = self.computed_crc();
        *self.crc_field() = Le32::new(crc);
    }
}

/// The fields of the superblock (the rest of its block is zero up to the checksum).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SuperblockFields {
    /// `STRRAID1`.
    pub magic: [u8; 8],
    /// Format version.
    pub version: Le32,
    /// RAID level (0, 1, 5).
    pub level: Le32,
    /// Array identity.
    pub uuid: [u8; 16],
    /// Chunk size in bytes.
    pub chunk: Le32,
    /// Number of members (roles).
    pub members: Le32,
    /// This member's role.
    pub role: Le32,
    /// 0 clean, 1 dirty.
    pub state: Le32,
    /// Update counter.
    pub events: Le64,
    /// Byte offset of the data area.
    pub data_offset: Le64,
    /// Bytes of data area on each member.
    pub data_size: Le64,
    /// Byte offset of the write-intent bitmap.
    pub bitmap_offset: Le64,
    /// Bytes of the bitmap area (0: none).
    pub bitmap_len: Le64,
    /// Member data bytes per bitmap bit.
    pub bitmap_region: Le64,
    /// Byte offset of the partial parity log area.
    pub ppl_offset: Le64,
    /// Bytes of the log area (0: none).
    pub ppl_len: Le64,
    /// Rebuild progress on this member (`u64::MAX`: in sync).
    pub rebuild_checkpoint: Le64,
    /// Feature flags.
    pub flags: Le32,
    /// Zero.
    pub reserved: [u8; 4],
    /// The array's view of every role, one byte each (0 active, 1 faulty, 2 rebuilding).
    pub role_states: [u8; MAX_MEMBERS],
    /// Mismatches the last scrub found.
    pub mismatches: Le64,
}

/// The superblock block in the first 4 KiB of every member.
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SuperblockBlock {
    /// The fields.
    pub fields: SuperblockFields,
    /// Zero.
    pub reserved: [u8; BLOCK - size_of::<SuperblockFields>() - size_of::<Le32>()],
    /// crc32 of every byte before it.
    pub crc: Le32,
}

/// The start of a log unit's header block; entry descriptors follow it.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct UnitFields {
    /// `STRPPLU2`.
    pub magic: [u8; 8],
    /// The array's UUID.
    pub uuid: [u8; 16],
    /// Sequence number shared by every entry of the unit.
    pub seq: Le64,
    /// Number of entries.
    pub count: Le32,
    /// Bytes of payload after the header block.
    pub payload_len: Le32,
    /// Zero.
    pub reserved: [u8; 24],
}

/// A log unit's header block: fields, packed entry descriptors, checksum.
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct UnitBlock {
    /// The fields.
    pub fields: UnitFields,
    /// Entry descriptors back to back, each an [`EntryDesc`] then its [`ModDesc`]s; zero after.
    pub descs: [u8; BLOCK - size_of::<UnitFields>() - size_of::<Le32>()],
    /// crc32 of every byte before it.
    pub crc: Le32,
}

/// The fixed part of one entry descriptor in a unit.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct EntryDesc {
    /// Stripe number.
    pub stripe: Le64,
    /// Start of the range inside the chunk.
    pub lo: Le32,
    /// End of that range.
    pub hi: Le32,
    /// Flags (1: no payload, the partial parity is zero).
    pub flags: Le32,
    /// crc32 of the payload.
    pub payload_crc: Le32,
    /// Number of [`ModDesc`]s that follow.
    pub mods: Le32,
}

/// One modified range of an entry: member, start, end (inside the chunk).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ModDesc {
    /// Member role.
    pub member: Le32,
    /// Start.
    pub lo: Le32,
    /// End.
    pub hi: Le32,
}

/// The fields of the log area's header block.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct LogHeaderFields {
    /// `STRPPLH1`.
    pub magic: [u8; 8],
    /// The array's UUID.
    pub uuid: [u8; 16],
    /// Entries below this sequence number are stable.
    pub valid_from: Le64,
    /// Log layout version (layout 1 had none: it reads as 0).
    pub version: Le32,
}

/// The log area's header block.
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct LogHeaderBlock {
    /// The fields.
    pub fields: LogHeaderFields,
    /// Zero.
    pub reserved: [u8; BLOCK - size_of::<LogHeaderFields>() - size_of::<Le32>()],
    /// crc32 of every byte before it.
    pub crc: Le32,
}

macro_rules! checksummed {
    ($($t:ty),*) => {$(
        impl Checksummed for $t {
            const CRC_AT: usize = offset_of!($t, crc);
            fn crc_field(&mut self) -> &mut Le32 {
                &mut self.crc
            }
        }
    )*};
}
checksummed!(SuperblockBlock, UnitBlock, LogHeaderBlock);

/// The first `words` words of a bitmap read as `bytes` (little-endian 64-bit words); words
/// past its end read as zero.
pub fn bitmap_words(bytes: &[u8], words: usize) -> Vec<u64> {
    let on_disk = <[Le64]>::ref_from_prefix_with_elems(bytes, words.min(bytes.len() / size_of::<Le64>()));
    let mut out: Vec<u64> = on_disk.map(|(w, _)| w.iter().map(|w| w.get()).collect()).unwrap_or_default();
    out.resize(words, 0);
    out
}

/// A bitmap area of `len` bytes holding `words` (words past its end are left out).
pub fn bitmap_bytes(words: &[u64], len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    let n = words.len().min(len / size_of::<Le64>());
    if let Ok((dst, _)) = <[Le64]>::mut_from_prefix_with_elems(&mut bytes, n) {
        for (d, w) in dst.iter_mut().zip(words) {
            *d = Le64::new(*w);
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    #[test]
    fn blocks_and_records_have_their_sizes() {
        assert_eq!(size_of::<SuperblockFields>(), 168);
        assert_eq!(size_of::<SuperblockBlock>(), BLOCK);
        assert_eq!(size_of::<UnitFields>(), 64);
        assert_eq!(size_of::<UnitBlock>(), BLOCK);
        assert_eq!(size_of::<EntryDesc>(), 28);
        assert_eq!(size_of::<ModDesc>(), 12);
        assert_eq!(size_of::<LogHeaderFields>(), 36);
        assert_eq!(size_of::<LogHeaderBlock>(), BLOCK);
        for at in [SuperblockBlock::CRC_AT, UnitBlock::CRC_AT, LogHeaderBlock::CRC_AT] {
            assert_eq!(at, BLOCK - 4);
        }
    }

    #[test]
    fn fields_are_little_endian_at_their_offsets() {
        let mut sb = SuperblockBlock::new_zeroed();
        sb.fields.chunk = Le32::new(0x0102_0304);
        sb.fields.role_states[1] = 2;
        sb.fields.mismatches = Le64::new(0x1122_3344_5566_7788);
        let b = sb.as_bytes();
        assert_eq!(b[32..36], [4, 3, 2, 1]);
        assert_eq!(b[129], 2);
        assert_eq!(b[160..168], [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        assert_eq!(offset_of!(SuperblockFields, rebuild_checkpoint), 112);
        assert_eq!(offset_of!(UnitFields, payload_len), 36);
        assert_eq!(offset_of!(EntryDesc, mods), 24);
        assert_eq!(offset_of!(LogHeaderFields, version), 32);
    }

    #[test]
    fn sealing_checksums_the_bytes_before_the_crc() {
        let mut h = LogHeaderBlock::new_zeroed();
        h.fields.valid_from = Le64::new(9);
        h.seal();
        let b = h.as_bytes();
        assert_eq!(b[BLOCK - 4..], *Le32::new(crc32fast::hash(&b[..BLOCK - 4])).as_bytes());
    }

    #[test]
    fn bitmap_words_are_little_endian_and_bounded() {
        let bytes = bitmap_bytes(&[1 << 9, 1 << 6, 5], 16);
        assert_eq!(bytes[1], 2);
        assert_eq!(bytes[8], 1 << 6);
        assert_eq!(bitmap_words(&bytes, 3), [1 << 9, 1 << 6, 0]);
        assert_eq!(bitmap_words(&bytes[..7], 1), [0]);
    }
}
