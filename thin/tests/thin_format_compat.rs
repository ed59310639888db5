//! On-disk compatibility: pools written before the metadata became typed structs still open.
//!
//! The fixtures are built byte by byte at the offsets the earlier hand-written encoder used
//! (`put16`/`put32`/`put64` below, little-endian, offsets written out on purpose): both
//! superblock copies, a directory chained over two pages, the space map and two volume
//! mappings. The pool must open with the same volumes, sizes, mappings and data, pass the
//! checker, and take new writes; and what today's code writes must sit at the same offsets.

mod thin_common;

use std::sync::Arc;

use blockdev::{BlockDev, IoCtx};
use thin::format::{self, Superblock, KIND_ARRAY, KIND_DIR, PAGE_HEADER, PAGE_SIZE};
use thin::{check, Pool, PoolConfig};
use thin_common::*;

fn put16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

const UUID: [u8; 16] = [0xc0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0x0c];
const META_PAGES: u64 = 16;
const DATA_OFFSET: u64 = META_PAGES * PAGE_SIZE as u64;
const DATA_BLOCKS: u64 = 8;

/// A superblock copy as the earlier encoder laid it out.
fn old_superblock(txid: u64, root: u64) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"STRTHIN1");
    put32(&mut b, 1);
    put32(&mut b, BS as u32);
    b.extend_from_slice(&UUID);
    for v in [txid, DATA_BLOCKS, DATA_OFFSET, META_PAGES, root, 4, 3] {
        put64(&mut b, v);
    }
    assert_eq!(b.len(), 88);
    let crc = crc32fast::hash(&b);
    put32(&mut b, crc);
    b.resize(PAGE_SIZE, 0);
    b
}

/// A metadata page as the earlier encoder laid it out.
fn old_page(kind: u32, loc: u64, txid: u64, used: u32, next: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"TPG1");
    put32(&mut b, 0);
    put64(&mut b, loc);
    put64(&mut b, txid);
    put32(&mut b, kind);
    put32(&mut b, used);
    put64(&mut b, next);
    assert_eq!(b.len(), 40);
    b.extend_from_slice(payload);
    b.resize(PAGE_SIZE, 0);
    let crc = crc32fast::hash(&b[8..]);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

fn array_payload(entries: &[(usize, u64)]) -> Vec<u8> {
    let mut p = vec![0u8; PAGE_SIZE - 40];
    for &(i, v) in entries {
        p[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    p
}

/// The directory as the earlier encoder laid it out: the space map in page 3, volume `vol-a`
/// (id 0, 4 blocks) in page 4 and `snap-b` (id 2, 6 blocks) in page 5.
fn old_directory() -> Vec<u8> {
    let mut d = Vec::new();
    put64(&mut d, DATA_BLOCKS);
    put64(&mut d, 1);
    put64(&mut d, 0);
    put64(&mut d, 3);
    put32(&mut d, 2);
    for (id, name, size, page) in [(0u64, "vol-a", 4 * BS, 4u64), (2, "snap-b", 6 * BS, 5)] {
        put64(&mut d, id);
        put16(&mut d, name.len() as u16);
        d.extend_from_slice(name.as_bytes());
        put64(&mut d, size);
        put64(&mut d, 1);
        put64(&mut d, 0);
        put64(&mut d, page);
    }
    d
}

fn pattern(block: u64) -> Vec<u8> {
    (0..BS).map(|i| (i as u8).wrapping_mul(31) ^ (block as u8 + 1).wrapping_mul(0x3b)).collect()
}

/// A pool on one 1 MiB device laid out by hand: transaction 3 (copy 1, directory at page 2
/// continued in page 6) is newest; copy 0 holds transaction 2 pointing at a page that is not a
/// directory.
fn old_pool(io: &IoCtx) -> Arc<dyn BlockDev> {
    let dev = mem(1 << 20);
    let dir = old_directory();
    let split = 30;
    let pages = [
        (0u64, old_superblock(2, 9)),
        (1, old_superblock(3, 2)),
        (2, old_page(KIND_DIR, 2, 3, split as u32, 6, &dir[..split])),
        (6, old_page(KIND_DIR, 6, 3, (dir.len() - split) as u32, 0, &dir[split..])),
        (3, old_page(KIND_ARRAY, 3, 2, 0, 0, &array_payload(&[(0, 1), (1, 2), (2, 1), (3, 1)]))),
        (4, old_page(KIND_ARRAY, 4, 3, 0, 0, &array_payload(&[(0, 1), (1, 2), (3, 3)]))),
        (5, old_page(KIND_ARRAY, 5, 1, 0, 0, &array_payload(&[(0, 2), (5, 4)]))),
    ];
    for (loc, page) in pages {
        write(io, &*dev, loc * PAGE_SIZE as u64, &page, false).unwrap();
    }
    for b in 0..4 {
        write(io, &*dev, DATA_OFFSET + b * BS, &pattern(b), false).unwrap();
    }
    dev
}

#[test]
fn superblock_and_page_bytes_of_the_earlier_encoder_decode_and_encode_identically() {
    let old = old_superblock(3, 2);
    let sb = Superblock {
        uuid: UUID,
        block_size: BS as u32,
        txid: 3,
        data_blocks: DATA_BLOCKS,
        data_offset: DATA_OFFSET,
        meta_pages: META_PAGES,
        root: 2,
        zero_from: 4,
        next_volume_id: 3,
    };
    assert_eq!(Superblock::decode(&old).unwrap(), sb);
    assert!(sb.encode() == old, "the superblock moved a byte");

    let payload = array_payload(&[(0, 0x0102_0304_0506_0708), (506, u64::MAX - 1)]);
    let old = old_page(KIND_ARRAY, 7, 5, 9, 0x1_0000_0002, &payload);
    let view = format::decode_page(&old, 7, KIND_ARRAY, 5).unwrap();
    assert_eq!((view.txid, view.used, view.next), (5, 9, 0x1_0000_0002));
    assert_eq!(view.payload.len(), PAGE_SIZE - PAGE_HEADER);
    let entries = format::page_entries(view.payload);
    assert_eq!((entries[0], entries[1], entries[506]), (0x0102_0304_0506_0708, 0, u64::MAX - 1));
    assert!(format::entries_payload(&entries) == payload, "array entries moved");
    assert!(format::encode_page(KIND_ARRAY, 7, 5, 9, 0x1_0000_0002, &payload) == old, "the page header moved a byte");
}

#[test]
fn a_pool_laid_out_by_the_earlier_encoder_opens_with_its_volumes_and_data() {
    let io = IoCtx::new().unwrap();
    let dev = old_pool(&io);
    let report = io.block_on(check::check(&io, dev.clone(), None, false)).unwrap();
    assert!(report.errors.is_empty() && report.leaks.is_empty(), "{report:?}");
    let pool = io.block_on(Pool::open(&io, dev.clone(), None)).unwrap();
    let info = pool.info();
    assert_eq!(info.uuid, "c00102030405060708090a0b0c0d0e0c");
    assert_eq!((info.block_size, info.data_blocks, info.transaction_id), (BS, DATA_BLOCKS, 3));
    assert_eq!((info.metadata_pages, info.used_blocks), (META_PAGES, 4));
    let vols: Vec<_> = pool.list().into_iter().map(|v| (v.id, v.name, v.size, v.mapped_blocks)).collect();
    assert_eq!(vols, vec![(0, "vol-a".to_string(), 4 * BS, 3), (2, "snap-b".to_string(), 6 * BS, 2)]);
    let zeros = vec![0u8; BS as usize];
    let a = pool.volume("vol-a").unwrap();
    for (vb, want) in [(0, pattern(0)), (1, pattern(1)), (2, zeros.clone()), (3, pattern(2))] {
        assert!(read(&io, &a, vb * BS, BS as usize) == want, "vol-a block {vb}");
    }
    let b = pool.volume("snap-b").unwrap();
    for (vb, want) in [(0, pattern(1)), (1, zeros.clone()), (4, zeros.clone()), (5, pattern(3))] {
        assert!(read(&io, &b, vb * BS, BS as usize) == want, "snap-b block {vb}");
    }
    // The shared block is copied on write; the next volume gets id 3.
    write(&io, &a, BS + 512, &[0xee; 512], true).unwrap();
    io.block_on(pool.create_volume(&io, "c", BS)).unwrap();
    drop((a, b, pool));
    let pool = io.block_on(Pool::open(&io, dev, None)).unwrap();
    assert_eq!(pool.list().iter().map(|v| v.id).collect::<Vec<_>>(), vec![0, 2, 3]);
    let mut want = pattern(1);
    want[512..1024].fill(0xee);
    assert!(read(&io, &pool.volume("vol-a").unwrap(), BS, BS as usize) == want);
    assert!(read(&io, &pool.volume("snap-b").unwrap(), 0, BS as usize) == pattern(1));
}

#[test]
fn a_pool_written_today_puts_every_field_where_the_earlier_decoder_read_it() {
    let io = IoCtx::new().unwrap();
    let dev = mem(4 << 20);
    let cfg = PoolConfig { block_size: BS as u32, metadata_size: Some(BS) };
    let pool = io.block_on(Pool::create(&io, dev.clone(), None, cfg)).unwrap();
    io.block_on(pool.create_volume(&io, "abc", 3 * BS)).unwrap();
    write(&io, &pool.volume("abc").unwrap(), 2 * BS, &[7; 4096], true).unwrap();
    let info = pool.info();
    drop(pool);
    let sbs = read(&io, &*dev, 0, 2 * PAGE_SIZE);
    let sb = &sbs[(info.transaction_id % 2) as usize * PAGE_SIZE..][..PAGE_SIZE];
    assert_eq!(&sb[0..8], b"STRTHIN1");
    assert_eq!((get32(sb, 8), u64::from(get32(sb, 12))), (1, BS));
    assert_eq!(get32(sb, 88), crc32fast::hash(&sb[..88]));
    let (txid, blocks, data_offset) = (get64(sb, 32), get64(sb, 40), get64(sb, 48));
    assert_eq!((txid, blocks, data_offset, get64(sb, 56)), (info.transaction_id, info.data_blocks, BS, 16));
    assert_eq!(get64(sb, 80), 2, "next volume id");
    let root = get64(sb, 64);
    let page = read(&io, &*dev, root * PAGE_SIZE as u64, PAGE_SIZE);
    assert_eq!(&page[0..4], b"TPG1");
    assert_eq!(get32(&page, 4), crc32fast::hash(&page[8..]));
    assert_eq!((get64(&page, 8), get64(&page, 16), get32(&page, 24), get64(&page, 32)), (root, txid, KIND_DIR, 0));
    let used = get32(&page, 28) as usize;
    let d = &page[40..40 + used];
    assert_eq!(get64(d, 0), blocks);
    let sm_pages = get64(d, 8) as usize;
    let at = 16 + 16 * sm_pages;
    assert_eq!(get32(d, at), 1, "volume count");
    assert_eq!((get64(d, at + 4), &d[at + 12..at + 14], &d[at + 14..at + 17]), (1, &[3u8, 0][..], &b"abc"[..]));
    assert_eq!(get64(d, at + 17), 3 * BS);
    assert_eq!((get64(d, at + 25), get64(d, at + 33)), (1, 0), "one mapping page, index 0");
    let map_loc = get64(d, at + 41);
    assert_eq!(used, at + 49);
    let map = read(&io, &*dev, map_loc * PAGE_SIZE as u64, PAGE_SIZE);
    assert_eq!((get64(&map, 8), get32(&map, 24)), (map_loc, KIND_ARRAY));
    let block = get64(&map, 40 + 2 * 8);
    assert!(block >= 1 && block <= blocks, "volume block 2 maps to data block {}", block.wrapping_sub(1));
    assert_eq!(read(&io, &*dev, data_offset + (block - 1) * BS, 4096), vec![7; 4096]);
}
