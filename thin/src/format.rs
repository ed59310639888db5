//! The on-disk format of a thin pool: the superblock (two ping-pong copies) and the 4 KiB
//! checksummed metadata pages everything else lives in. Pure encode/decode, no I/O: every field
//! read from disk is validated here and a bad one is an `ErrorKind::Corrupt` naming it.
//!
//! Metadata device layout, in 4 KiB pages: page 0 and page 1 hold the superblock (a commit with
//! transaction id `t` writes copy `t % 2`; open takes the valid copy with the highest id), pages
//! from 2 on hold array and directory pages, allocated copy-on-write.

use blockdev::{Error, ErrorKind, Result};

/// Size of a metadata page and of a superblock copy.
pub const PAGE_SIZE: usize = 4096;
/// Superblock magic, `STRTHIN1` little-endian.
pub const SB_MAGIC: u64 = u64::from_le_bytes(*b"STRTHIN1");
/// Metadata page magic.
pub const PAGE_MAGIC: u32 = u32::from_le_bytes(*b"TPG1");
/// The only format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Smallest data block size (64 KiB).
pub const MIN_BLOCK_SIZE: u32 = 64 << 10;
/// Largest data block size (1 MiB).
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
/// Bytes of header at the start of every metadata page.
pub const PAGE_HEADER: usize = 40;
/// Payload bytes in a metadata page.
pub const PAGE_PAYLOAD: usize = PAGE_SIZE - PAGE_HEADER;
/// 64-bit entries in an array page.
pub const ENTRIES_PER_PAGE: usize = PAGE_PAYLOAD / 8;
/// Pages reserved for the two superblock copies.
pub const SB_PAGES: u64 = 2;

/// Page kind: a page of a paged array (a volume's mapping or the space map).
pub const KIND_ARRAY: u32 = 1;
/// Page kind: a page of the directory (volume table and page lists), chained by `next`.
pub const KIND_DIR: u32 = 2;

const SB_CRC_AT: usize = 88;
/// Transaction ids and volume ids stay below this (room to count up without overflow).
const MAX_COUNTER: u64 = 1 << 62;

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

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// True for a valid data block size.
pub fn valid_block_size(bs: u64) -> bool {
    bs.is_power_of_two() && (u64::from(MIN_BLOCK_SIZE)..=u64::from(MAX_BLOCK_SIZE)).contains(&bs)
}

impl Superblock {
    /// Encode into one page (checksummed).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; PAGE_SIZE];
        b[0..8].copy_from_slice(&SB_MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.block_size.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid);
        for (i, v) in [
            self.txid,
            self.data_blocks,
            self.data_offset,
            self.meta_pages,
            self.root,
            self.zero_from,
            self.next_volume_id,
        ]
        .into_iter()
        .enumerate()
        {
            b[32 + i * 8..40 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&b[..SB_CRC_AT]);
        b[SB_CRC_AT..SB_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and validate one superblock copy (`b` is at least one page).
    pub fn decode(b: &[u8]) -> Result<Superblock> {
        if b.len() < PAGE_SIZE {
            return Err(corrupt(format!("superblock: {} bytes, need {PAGE_SIZE}", b.len())));
        }
        if le64(b, 0) != SB_MAGIC {
            return Err(corrupt("superblock: bad magic (not a strata thin pool)"));
        }
        let crc = le32(b, SB_CRC_AT);
        if crc != crc32fast::hash(&b[..SB_CRC_AT]) {
            return Err(corrupt("superblock: checksum mismatch"));
        }
        let version = le32(b, 8);
        if version != VERSION {
            return Err(corrupt(format!("superblock: version {version} is not supported (only {VERSION})")));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        let sb = Superblock {
            uuid,
            block_size: le32(b, 12),
            txid: le64(b, 32),
            data_blocks: le64(b, 40),
            data_offset: le64(b, 48),
            meta_pages: le64(b, 56),
            root: le64(b, 64),
            zero_from: le64(b, 72),
            next_volume_id: le64(b, 80),
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

/// Encode a metadata page stored at page number `loc`.
pub fn encode_page(kind: u32, loc: u64, txid: u64, used: u32, next: u64, payload: &[u8]) -> Vec<u8> {
    debug_assert!(payload.len() <= PAGE_PAYLOAD);
    let mut b = vec![0u8; PAGE_SIZE];
    b[0..4].copy_from_slice(&PAGE_MAGIC.to_le_bytes());
    b[8..16].copy_from_slice(&loc.to_le_bytes());
    b[16..24].copy_from_slice(&txid.to_le_bytes());
    b[24..28].copy_from_slice(&kind.to_le_bytes());
    b[28..32].copy_from_slice(&used.to_le_bytes());
    b[32..40].copy_from_slice(&next.to_le_bytes());
    b[PAGE_HEADER..PAGE_HEADER + payload.len()].copy_from_slice(payload);
    let crc = crc32fast::hash(&b[8..]);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decode a page read from `loc`, checking magic, checksum, location, kind and transaction.
pub fn decode_page(b: &[u8], loc: u64, kind: u32, max_txid: u64) -> Result<PageView<'_>> {
    if b.len() < PAGE_SIZE {
        return Err(corrupt(format!("metadata page {loc}: short read")));
    }
    if le32(b, 0) != PAGE_MAGIC {
        return Err(corrupt(format!("metadata page {loc}: bad magic")));
    }
    if le32(b, 4) != crc32fast::hash(&b[8..PAGE_SIZE]) {
        return Err(corrupt(format!("metadata page {loc}: checksum mismatch")));
    }
    if le64(b, 8) != loc {
        return Err(corrupt(format!("metadata page {loc}: header says page {} (misdirected write)", le64(b, 8))));
    }
    let found = le32(b, 24);
    if found != kind {
        return Err(corrupt(format!("metadata page {loc}: kind {found}, expected {kind}")));
    }
    let txid = le64(b, 16);
    if txid > max_txid {
        return Err(corrupt(format!(
            "metadata page {loc}: written by transaction {txid}, after the superblock's {max_txid}"
        )));
    }
    Ok(PageView { txid, used: le32(b, 28), next: le64(b, 32), payload: &b[PAGE_HEADER..PAGE_SIZE] })
}

/// Entries of an array page payload.
pub fn page_entries(payload: &[u8]) -> Box<[u64; ENTRIES_PER_PAGE]> {
    let mut e = Box::new([0u64; ENTRIES_PER_PAGE]);
    for (i, v) in e.iter_mut().enumerate() {
        *v = le64(payload, i * 8);
    }
    e
}

/// Payload bytes of an array page.
pub fn entries_payload(e: &[u64; ENTRIES_PER_PAGE]) -> Vec<u8> {
    let mut p = Vec::with_capacity(PAGE_PAYLOAD);
    for v in e.iter() {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p
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
    fn misdirected_page_is_corrupt() {
        let p = encode_page(KIND_ARRAY, 7, 1, 0, 0, &[1, 2, 3]);
        assert!(decode_page(&p, 7, KIND_ARRAY, 1).is_ok());
        assert_eq!(decode_page(&p, 8, KIND_ARRAY, 1).unwrap_err().kind(), ErrorKind::Corrupt);
        assert_eq!(decode_page(&p, 7, KIND_DIR, 1).unwrap_err().kind(), ErrorKind::Corrupt);
        assert_eq!(decode_page(&p, 7, KIND_ARRAY, 0).unwrap_err().kind(), ErrorKind::Corrupt);
    }
}
