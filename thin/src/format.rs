//! The on-disk format of a thin pool: the superblock (two ping-pong copies) and the 4 KiB
//! checksummed metadata pages everything else lives in, with the records of the directory they
//! carry. Little-endian fields in `#[repr(C)]` structs (zerocopy's byte-order types have
//! alignment 1, so there is no padding and a struct is exactly its bytes): every offset of the
//! format is here once. Pure encode/decode, no I/O: every field read from disk is validated
//! here (the directory's counts and names in `dir.rs`) and a bad one is an
//! `ErrorKind::Corrupt` naming it.
//!
//! Metadata device layout, in 4 KiB pages: page 0 and page 1 hold the superblock (a commit with
//! transaction id `t` writes copy `t % 2`; open takes the valid copy with the highest id), pages
//! from 2 on hold array and directory pages, allocated copy-on-write.

use std::mem::{offset_of, size_of};

use blockdev::{Error, ErrorKind, Result};
use zerocopy::byteorder::{LittleEndian, U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// A little-endian 16-bit field.
pub type Le16 = U16<LittleEndian>;
/// A little-endian 32-bit field.
pub type Le32 = U32<LittleEndian>;
/// A little-endian 64-bit field (also one entry of an array page).
pub type Le64 = U64<LittleEndian>;

/// Size of a metadata page and of a superblock copy.
pub const PAGE_SIZE: usize = 4096;
/// Superblock magic, `STRTHIN1` little-endian.
pub const SB_MAGIC: u64 = Le64::from_bytes(*b"STRTHIN1").get();
/// Metadata page magic.
pub const PAGE_MAGIC: u32 = Le32::from_bytes(*b"TPG1").get();
/// The only format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Smallest data block size (64 KiB).
pub const MIN_BLOCK_SIZE: u32 = 64 << 10;
/// Largest data block size (1 MiB).
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
/// Bytes of header at the start of every metadata page.
pub const PAGE_HEADER: usize = size_of::<PageHeader>();
/// Payload bytes in a metadata page.
pub const PAGE_PAYLOAD: usize = PAGE_SIZE - PAGE_HEADER;
/// 64-bit entries in an array page.
pub const ENTRIES_PER_PAGE: usize = PAGE_PAYLOAD / size_of::<Le64>();
/// Pages reserved for the two superblock copies.
pub const SB_PAGES: u64 = 2;

/// Page kind: a page of a paged array (a volume's mapping or the space map).
pub const KIND_ARRAY: u32 = 1;
/// Page kind: a page of the directory (volume table and page lists), chained by `next`.
pub const KIND_DIR: u32 = 2;

/// Transaction ids and volume ids stay below this (room to count up without overflow).
const MAX_COUNTER: u64 = 1 << 62;

/// A superblock copy as it lies at the start of its page (the rest of the page is zero and not
/// checksummed).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SuperblockRecord {
    /// [`SB_MAGIC`].
    pub magic: Le64,
    /// [`VERSION`].
    pub version: Le32,
    /// Data block size in bytes.
    pub block_size: Le32,
    /// Pool identity.
    pub uuid: [u8; 16],
    /// Transaction id.
    pub txid: Le64,
    /// Data blocks in the pool.
    pub data_blocks: Le64,
    /// Byte offset of data block 0 on the data device.
    pub data_offset: Le64,
    /// Pages of the metadata area.
    pub meta_pages: Le64,
    /// First directory page.
    pub root: Le64,
    /// First data block never written since the pool was made.
    pub zero_from: Le64,
    /// Id the next created volume gets.
    pub next_volume_id: Le64,
    /// crc32 of every byte before it.
    pub crc: Le32,
}

/// The header at the start of every metadata page.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct PageHeader {
    /// [`PAGE_MAGIC`].
    pub magic: Le32,
    /// crc32 of every byte of the page after this field.
    pub crc: Le32,
    /// The page number the page was written to (catches misdirected writes).
    pub loc: Le64,
    /// Transaction that wrote the page.
    pub txid: Le64,
    /// [`KIND_ARRAY`] or [`KIND_DIR`].
    pub kind: Le32,
    /// Kind-specific count (directory: payload bytes used).
    pub used: Le32,
    /// Next page of a chain (directory), 0 for none.
    pub next: Le64,
}

/// A metadata page: header and payload.
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct PageRecord {
    /// The header.
    pub header: PageHeader,
    /// The payload (an array page: [`ENTRIES_PER_PAGE`] [`Le64`]s; a directory page: a piece of
    /// the directory's byte stream).
    pub payload: [u8; PAGE_PAYLOAD],
}

/// Where a page's checksum starts covering: every byte after the checksum field.
const PAGE_CRC_FROM: usize = offset_of!(PageHeader, loc);

/// Directory record: the count of a page list, followed by that many [`DirPageRef`]s.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DirCount64 {
    /// The count.
    pub count: Le64,
}

/// Directory record: one page of a paged array.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DirPageRef {
    /// Index of the page in its array.
    pub index: Le64,
    /// Metadata page number it is stored at.
    pub loc: Le64,
}

/// Directory record: the number of volumes (after the space map's page list).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DirVolumeCount {
    /// The count.
    pub count: Le32,
}

/// Directory record: the start of a volume; its name's bytes follow, then a [`DirVolumeSize`]
/// and its mapping's page list.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DirVolumeHead {
    /// Volume id.
    pub id: Le64,
    /// Bytes of the name.
    pub name_len: Le16,
}

/// Directory record: a volume's virtual size, after its name.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DirVolumeSize {
    /// Bytes.
    pub size: Le64,
}

/// The pool superblock: geometry plus the root of the last committed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// Pool identity.
    pub uuid: [u8; 16],
    /// Data block size in bytes (a power of two, 64 KiB to 1 MiB).
    pub block_size: u32,
    /// Id of the transaction this superblock commits.
    pub txid: u64,
    /// Number of data blocks in the pool.
    pub data_blocks: u64,
    /// Byte offset of data block 0 on the data device.
    pub data_offset: u64,
    /// Number of 4 KiB pages of the metadata area (superblock pages included).
    pub meta_pages: u64,
    /// First directory page.
    pub root: u64,
    /// Every data block at or past this index has never been written since the pool was made.
    pub zero_from: u64,
    /// Id the next created volume gets.
    pub next_volume_id: u64,
}

fn corrupt(what: impl Into<String>) -> Error {
    Error::new(ErrorKind::Corrupt, what)
}

impl SuperblockRecord {
    fn computed_crc(&self) -> u32 {
        crc32fast::hash(self.as_bytes().get(..offset_of!(SuperblockRecord, crc)).unwrap_or_default())
    }
}

/// True for a valid data block size.
pub fn valid_block_size(bs: u64) -> bool {
    bs.is_power_of_two() && (u64::from(MIN_BLOCK_SIZE)..=u64::from(MAX_BLOCK_SIZE)).contains(&bs)
}

impl Superblock {
    /// Encode into one page (checksummed).
    pub fn encode(&self) -> Vec<u8> {
        let mut rec = SuperblockRecord {
            magic: Le64::new(SB_MAGIC),
            version: Le32::new(VERSION),
            block_size: Le32::new(self.block_size),
            uuid: self.uuid,
            txid: Le64::new(self.txid),
            data_blocks: Le64::new(self.data_blocks),
            data_offset: Le64::new(self.data_offset),
            meta_pages: Le64::new(self.meta_pages),
            root: Le64::new(self.root),
            zero_from: Le64::new(self.zero_from),
            next_volume_id: Le64::new(self.next_volume_id),
            crc: Le32::new(0),
        };
        rec.crc = Le32::new(rec.computed_crc());
        let mut b = rec.as_bytes().to_vec();
        b.resize(PAGE_SIZE, 0);
        b
    }

    /// Decode and validate one superblock copy (`b` is at least one page).
    pub fn decode(b: &[u8]) -> Result<Superblock> {
        let rec = match SuperblockRecord::ref_from_prefix(b) {
            Ok((rec, _)) if b.len() >= PAGE_SIZE => rec,
            _ => return Err(corrupt(format!("superblock: {} bytes, need {PAGE_SIZE}", b.len()))),
        };
        if rec.magic.get() != SB_MAGIC {
            return Err(corrupt("superblock: bad magic (not a strata thin pool)"));
        }
        if rec.crc.get() != rec.computed_crc() {
            return Err(corrupt("superblock: checksum mismatch"));
        }
        let version = rec.version.get();
        if version != VERSION {
            return Err(corrupt(format!("superblock: version {version} is not supported (only {VERSION})")));
        }
        let sb = Superblock {
            uuid: rec.uuid,
            block_size: rec.block_size.get(),
            txid: rec.txid.get(),
            data_blocks: rec.data_blocks.get(),
            data_offset: rec.data_offset.get(),
            meta_pages: rec.meta_pages.get(),
            root: rec.root.get(),
            zero_from: rec.zero_from.get(),
            next_volume_id: rec.next_volume_id.get(),
        };
        if sb.txid >= MAX_COUNTER || sb.next_volume_id >= MAX_COUNTER {
            return Err(corrupt(format!(
                "superblock: transaction id {} or next volume id {} out of range",
                sb.txid, sb.next_volume_id
            )));
        }
        if !valid_block_size(u64::from(sb.block_size)) {
            return Err(corrupt(format!("superblock: block size {} is not a power of two in 64K..1M", sb.block_size)));
        }
        if sb.meta_pages <= SB_PAGES || sb.meta_pages > (1 << 32) {
            return Err(corrupt(format!("superblock: metadata page count {} out of range", sb.meta_pages)));
        }
        if sb.root < SB_PAGES || sb.root >= sb.meta_pages {
            return Err(corrupt(format!("superblock: root page {} outside the metadata area", sb.root)));
        }
        if sb.data_blocks == 0 || sb.data_blocks > (1 << 36) {
            return Err(corrupt(format!("superblock: data block count {} out of range", sb.data_blocks)));
        }
        if sb.zero_from > sb.data_blocks {
            return Err(corrupt(format!(
                "superblock: zero_from {} past the {} data blocks",
                sb.zero_from, sb.data_blocks
            )));
        }
        if !sb.data_offset.is_multiple_of(u64::from(sb.block_size)) {
            return Err(corrupt(format!("superblock: data offset {} is not block aligned", sb.data_offset)));
        }
        Ok(sb)
    }
}

/// A decoded metadata page header plus its payload.
#[derive(Debug, Clone, Copy)]
pub struct PageView<'a> {
    /// Transaction that wrote the page.
    pub txid: u64,
    /// Kind-specific count (array: unused; directory: payload bytes used).
    pub used: u32,
    /// Next page of a chain (directory), 0 for none.
    pub next: u64,
    /// The payload bytes.
    pub payload: &'a [u8],
}

/// Encode a metadata page stored at page number `loc` (a payload longer than a page's is cut
/// to [`PAGE_PAYLOAD`] bytes; callers split longer ones).
pub fn encode_page(kind: u32, loc: u64, txid: u64, used: u32, next: u64, payload: &[u8]) -> Vec<u8> {
    debug_assert!(payload.len() <= PAGE_PAYLOAD);
    let mut page = PageRecord::new_zeroed();
    page.header = PageHeader {
        magic: Le32::new(PAGE_MAGIC),
        crc: Le32::new(0),
        loc: Le64::new(loc),
        txid: Le64::new(txid),
        kind: Le32::new(kind),
        used: Le32::new(used),
        next: Le64::new(next),
    };
    let n = payload.len().min(PAGE_PAYLOAD);
    page.payload[..n].copy_from_slice(&payload[..n]);
    page.header.crc = Le32::new(page.computed_crc());
    page.as_bytes().to_vec()
}

impl PageRecord {
    fn computed_crc(&self) -> u32 {
        crc32fast::hash(self.as_bytes().get(PAGE_CRC_FROM..).unwrap_or_default())
    }
}

/// Decode a page read from `loc`, checking magic, checksum, location, kind and transaction.
pub fn decode_page(b: &[u8], loc: u64, kind: u32, max_txid: u64) -> Result<PageView<'_>> {
    let Ok((page, _)) = PageRecord::ref_from_prefix(b) else {
        return Err(corrupt(format!("metadata page {loc}: short read")));
    };
    let h = &page.header;
    if h.magic.get() != PAGE_MAGIC {
        return Err(corrupt(format!("metadata page {loc}: bad magic")));
    }
    if h.crc.get() != page.computed_crc() {
        return Err(corrupt(format!("metadata page {loc}: checksum mismatch")));
    }
    if h.loc.get() != loc {
        return Err(corrupt(format!("metadata page {loc}: header says page {} (misdirected write)", h.loc.get())));
    }
    let found = h.kind.get();
    if found != kind {
        return Err(corrupt(format!("metadata page {loc}: kind {found}, expected {kind}")));
    }
    let txid = h.txid.get();
    if txid > max_txid {
        return Err(corrupt(format!(
            "metadata page {loc}: written by transaction {txid}, after the superblock's {max_txid}"
        )));
    }
    Ok(PageView { txid, used: h.used.get(), next: h.next.get(), payload: &page.payload })
}

/// Entries of an array page payload (entries past a short payload read as 0).
pub fn page_entries(payload: &[u8]) -> Box<[u64; ENTRIES_PER_PAGE]> {
    let mut e = Box::new([0u64; ENTRIES_PER_PAGE]);
    let n = ENTRIES_PER_PAGE.min(payload.len() / size_of::<Le64>());
    if let Ok((on_disk, _)) = <[Le64]>::ref_from_prefix_with_elems(payload, n) {
        for (v, d) in e.iter_mut().zip(on_disk) {
            *v = d.get();
        }
    }
    e
}

/// Payload bytes of an array page.
pub fn entries_payload(e: &[u64; ENTRIES_PER_PAGE]) -> Vec<u8> {
    e.map(Le64::new).as_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Superblock {
        Superblock {
            uuid: [7; 16],
            block_size: 64 << 10,
            txid: 5,
            data_blocks: 100,
            data_offset: 1 << 20,
            meta_pages: 256,
            root: 9,
            zero_from: 50,
            next_volume_id: 3,
        }
    }

    #[test]
    fn superblock_round_trips() {
        assert_eq!(Superblock::decode(&sb().encode()).unwrap(), sb());
    }

    #[test]
    fn superblock_with_flipped_bit_is_corrupt() {
        let mut b = sb().encode();
        b[40] ^= 1;
        assert_eq!(Superblock::decode(&b).unwrap_err().kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn superblock_with_a_transaction_id_that_cannot_grow_is_corrupt() {
        let b = Superblock { txid: u64::MAX, ..sb() }.encode();
        assert_eq!(Superblock::decode(&b).unwrap_err().kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn records_have_their_sizes_and_fields_their_offsets() {
        assert_eq!(size_of::<SuperblockRecord>(), 92);
        assert_eq!(offset_of!(SuperblockRecord, crc), 88);
        assert_eq!(offset_of!(SuperblockRecord, next_volume_id), 80);
        assert_eq!(size_of::<PageHeader>(), 40);
        assert_eq!(size_of::<PageRecord>(), PAGE_SIZE);
        assert_eq!(PAGE_CRC_FROM, 8);
        assert_eq!(ENTRIES_PER_PAGE, 507);
        assert_eq!(size_of::<DirPageRef>(), 16);
        assert_eq!(size_of::<DirVolumeHead>(), 10);
        assert_eq!((size_of::<DirCount64>(), size_of::<DirVolumeCount>(), size_of::<DirVolumeSize>()), (8, 4, 8));
        let b = Superblock { block_size: 0x0102_0304, ..sb() }.encode();
        assert_eq!(b[0..8], *b"STRTHIN1");
        assert_eq!(b[12..16], [4, 3, 2, 1]);
        let p = encode_page(KIND_DIR, 0x0a0b, 1, 0, 0, &[]);
        assert_eq!(p[0..4], *b"TPG1");
        assert_eq!(p[8..16], [0x0b, 0x0a, 0, 0, 0, 0, 0, 0]);
        assert_eq!(p[24], 2);
    }

    #[test]
    fn short_buffers_are_corrupt_not_a_panic() {
        assert_eq!(Superblock::decode(&sb().encode()[..100]).unwrap_err().kind(), ErrorKind::Corrupt);
        let p = encode_page(KIND_ARRAY, 7, 1, 0, 0, &[1, 2, 3]);
        assert_eq!(decode_page(&p[..PAGE_SIZE - 1], 7, KIND_ARRAY, 1).unwrap_err().kind(), ErrorKind::Corrupt);
        assert_eq!(page_entries(&[1, 0, 0, 0, 0, 0, 0, 0, 9])[..2], [1, 0]);
    }

    #[test]
    fn misdirected_page_is_corrupt() {
        let p = encode_page(KIND_ARRAY, 7, 1, 0, 0, &[1, 2, 3]);
        assert!(decode_page(&p, 7, KIND_ARRAY, 1).is_ok());
        assert_eq!(decode_page(&p, 8, KIND_ARRAY, 1).unwrap_err().kind(), ErrorKind::Corrupt);
        assert_eq!(decode_page(&p, 7, KIND_DIR, 1).unwrap_err().kind(), ErrorKind::Corrupt);
        assert_eq!(decode_page(&p, 7, KIND_ARRAY, 0).unwrap_err().kind(), ErrorKind::Corrupt);
    }
}
