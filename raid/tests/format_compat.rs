//! On-disk compatibility: arrays written before the formats became typed structs still open.
//!
//! The fixtures here are built byte by byte at the offsets the earlier hand-written encoder used
//! (`put32`/`put64` below, little-endian, offsets written out on purpose): the superblock, the
//! partial parity log's header block and units, and the write-intent bitmap's words. Each must
//! decode to the same values, encode back to the same bytes, and a whole array laid out this way
//! must assemble, recover and read back what was put there.

mod common;

use std::sync::Arc;

use blockdev::{BlockDev, IoCtx};
use common::{read_at, write_at};
use raid::raid5::ppl_unit::{self, Entry, Header, UnitSize, LOG_VERSION};
use raid::superblock::{RoleState, Superblock, FLAG_PPL, IN_SYNC, SB_SIZE, VERSION};
use raid::{AssembleOptions, Level};

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Chunk, log slots and sizes of the fixture arrays.
const CHUNK: u64 = 16384;
const SLOTS: u64 = 4;
const PPL_OFFSET: u64 = 8192;
const PPL_LEN: u64 = 4096 + SLOTS * (4096 + CHUNK);
const DATA_OFFSET: u64 = 1 << 20;
const DATA_SIZE: u64 = 2 << 20;
const MEMBER: u64 = 4 << 20;
const UUID: [u8; 16] = [0x5a, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0xa5];

/// The superblock of role `role` as the earlier encoder laid it out.
#[allow(clippy::too_many_arguments)]
fn old_superblock(role: u32, events: u64, dirty: bool, states: &[u8], checkpoint: u64, mismatches: u64) -> Vec<u8> {
    let mut b = vec![0u8; SB_SIZE];
    b[0..8].copy_from_slice(b"STRRAID1");
    put32(&mut b, 8, 2);
    put32(&mut b, 12, 5);
    b[16..32].copy_from_slice(&UUID);
    put32(&mut b, 32, CHUNK as u32);
    put32(&mut b, 36, states.len() as u32);
    put32(&mut b, 40, role);
    put32(&mut b, 44, u32::from(dirty));
    put64(&mut b, 48, events);
    put64(&mut b, 56, DATA_OFFSET);
    put64(&mut b, 64, DATA_SIZE);
    put64(&mut b, 72, 4096);
    put64(&mut b, 80, 4096);
    put64(&mut b, 88, CHUNK);
    put64(&mut b, 96, PPL_OFFSET);
    put64(&mut b, 104, PPL_LEN);
    put64(&mut b, 112, checkpoint);
    put32(&mut b, 120, 1);
    b[128..128 + states.len()].copy_from_slice(states);
    put64(&mut b, 160, mismatches);
    let crc = crc32fast::hash(&b[..4092]);
    put32(&mut b, 4092, crc);
    b
}

fn expected_superblock(role: u32, events: u64, dirty: bool, states: Vec<RoleState>, checkpoint: u64) -> Superblock {
    Superblock {
        level: Level::Raid5,
        uuid: UUID,
        chunk: CHUNK as u32,
        members: states.len() as u32,
        role,
        events,
        dirty,
        data_offset: DATA_OFFSET,
        data_size: DATA_SIZE,
        bitmap_offset: 4096,
        bitmap_len: 4096,
        bitmap_region: CHUNK,
        ppl_offset: PPL_OFFSET,
        ppl_len: PPL_LEN,
        rebuild_checkpoint: checkpoint,
        flags: FLAG_PPL,
        mismatches: 0x0102_0304_0506_0708,
        role_states: states,
    }
}

#[test]
fn superblock_bytes_of_the_earlier_encoder_decode_and_encode_identically() {
    assert_eq!(VERSION, 2);
    let states = [0u8, 1, 2, 0];
    let old = old_superblock(3, 0x1122_3344_5566_7788, true, &states, 65536, 0x0102_0304_0506_0708);
    let want = expected_superblock(
        3,
        0x1122_3344_5566_7788,
        true,
        vec![RoleState::Active, RoleState::Faulty, RoleState::Rebuilding, RoleState::Active],
        65536,
    );
    let got = Superblock::decode("old.img", &old, Some(MEMBER)).unwrap();
    assert_eq!(got, want);
    assert!(want.encode() == old, "the encoder moved a byte of the superblock");
}

/// A unit header block as the earlier encoder laid it out: (stripe, lo, hi, zero, mods, payload).
type OldEntry<'a> = (u64, u32, u32, bool, &'a [(u32, u32, u32)], &'a [u8]);

fn old_unit(seq: u64, entries: &[OldEntry]) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    b[0..8].copy_from_slice(b"STRPPLU2");
    b[8..24].copy_from_slice(&UUID);
    put64(&mut b, 24, seq);
    put32(&mut b, 32, entries.len() as u32);
    let mut at = 64;
    let mut payloads = Vec::new();
    for &(stripe, lo, hi, zero, mods, payload) in entries {
        put64(&mut b, at, stripe);
        put32(&mut b, at + 8, lo);
        put32(&mut b, at + 12, hi);
        put32(&mut b, at + 16, u32::from(zero));
        put32(&mut b, at + 20, crc32fast::hash(payload));
        put32(&mut b, at + 24, mods.len() as u32);
        at += 28;
        for &(m, a, e) in mods {
            put32(&mut b, at, m);
            put32(&mut b, at + 4, a);
            put32(&mut b, at + 8, e);
            at += 12;
        }
        payloads.extend_from_slice(payload);
    }
    put32(&mut b, 36, payloads.len() as u32);
    let crc = crc32fast::hash(&b[..4092]);
    put32(&mut b, 4092, crc);
    b.extend_from_slice(&payloads);
    b
}

fn old_log_header(valid_from: u64, version: u32) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    b[0..8].copy_from_slice(b"STRPPLH1");
    b[8..24].copy_from_slice(&UUID);
    put64(&mut b, 24, valid_from);
    put32(&mut b, 32, version);
    let crc = crc32fast::hash(&b[..4092]);
    put32(&mut b, 4092, crc);
    b
}

#[test]
fn log_bytes_of_the_earlier_encoder_decode_and_encode_identically() {
    let old = old_log_header(0x0a0b_0c0d_0e0f_1011, LOG_VERSION);
    assert_eq!(ppl_unit::decode_header(&old, &UUID), Header::Valid(0x0a0b_0c0d_0e0f_1011));
    assert!(ppl_unit::encode_header(&UUID, 0x0a0b_0c0d_0e0f_1011) == old, "the log header moved a byte");
    assert_eq!(ppl_unit::decode_header(&old_log_header(9, 1), &UUID), Header::OtherVersion(1));

    let pay: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    let mods_a = [(0u32, 512u32, 1024u32), (2, 1024, 1536)];
    let mods_b = [(1u32, 0u32, 16384u32)];
    let old = old_unit(
        0x0102_0304_0506_0708,
        &[(0x1_0000_0009, 512, 1536, false, &mods_a, &pay), (44, 0, 16384, true, &mods_b, &[])],
    );
    let entries = vec![
        Entry {
            seq: 0x0102_0304_0506_0708,
            stripe: 0x1_0000_0009,
            lo: 512,
            hi: 1536,
            mods: vec![(0, 512, 1024), (2, 1024, 1536)],
            pp: Some(pay.clone()),
        },
        Entry { seq: 0x0102_0304_0506_0708, stripe: 44, lo: 0, hi: 16384, mods: vec![(1, 0, 16384)], pp: None },
    ];
    assert_eq!(ppl_unit::decode_unit(&old, &UUID, CHUNK, 3), Some((0x0102_0304_0506_0708, entries.clone())));
    let mut size = UnitSize::new();
    assert!(entries.iter().all(|e| size.try_add(e, CHUNK)));
    let mut enc = vec![0xee; size.bytes()];
    ppl_unit::encode_unit(&UUID, 0x0102_0304_0506_0708, &entries, &mut enc).unwrap();
    assert!(enc == old, "the log unit moved a byte");
}

fn members() -> Vec<(String, Arc<dyn BlockDev>)> {
    (0..3).map(|i| (format!("m{i}"), Arc::new(blockdev::MemDisk::new(MEMBER).unwrap()) as Arc<dyn BlockDev>)).collect()
}

/// Pseudo-random chunk contents for (stripe, member).
fn chunk_data(stripe: u64, member: usize) -> Vec<u8> {
    let mut x = stripe.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (member as u64 + 1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    (0..CHUNK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// Left-symmetric over 3 members: (parity member, data members in order) of stripe `s`.
fn roles(s: u64) -> (usize, [usize; 2]) {
    let p = 2 - (s % 3) as usize;
    (p, [(p + 1) % 3, (p + 2) % 3])
}

/// Lay out a clean RAID 5 over 3 members with every chunk filled; parity of the stripes in
/// `bad_parity` is left wrong. Returns the array's expected contents.
fn lay_out(io: &IoCtx, devs: &[(String, Arc<dyn BlockDev>)], bad_parity: &[u64]) -> Vec<u8> {
    let mut array = Vec::new();
    for s in 0..DATA_SIZE / CHUNK {
        let (p, data) = roles(s);
        let d: Vec<Vec<u8>> = data.iter().map(|&m| chunk_data(s, m)).collect();
        let mut parity = xor(&d[0], &d[1]);
        if bad_parity.contains(&s) {
            parity[100] ^= 0x40;
        }
        let at = DATA_OFFSET + s * CHUNK;
        write_at(io, &*devs[data[0]].1, at, &d[0]);
        write_at(io, &*devs[data[1]].1, at, &d[1]);
        write_at(io, &*devs[p].1, at, &parity);
        array.extend_from_slice(&d[0]);
        array.extend_from_slice(&d[1]);
    }
    array
}

fn write_metadata(io: &IoCtx, devs: &[(String, Arc<dyn BlockDev>)], dirty: bool) {
    for (role, (_, dev)) in devs.iter().enumerate() {
        write_at(io, &**dev, 0, &old_superblock(role as u32, 7, dirty, &[0, 0, 0], IN_SYNC, 0));
        write_at(io, &**dev, PPL_OFFSET, &old_log_header(5, LOG_VERSION));
    }
}

#[test]
fn an_array_laid_out_by_the_earlier_encoder_resyncs_the_regions_its_bitmap_marks() {
    let io = IoCtx::new().unwrap();
    let devs = members();
    let expected = lay_out(&io, &devs, &[9, 70, 100]);
    write_metadata(&io, &devs, true);
    // Bits 9 and 70 (one region per chunk row): bit 9 of word 0 and bit 6 of word 1, each word
    // little-endian. Stripe 100 is not marked, so its bad parity must survive the resync.
    let mut bitmap = vec![0u8; 4096];
    bitmap[1] = 1 << 1;
    bitmap[8] = 1 << 6;
    write_at(&io, &*devs[1].1, 4096, &bitmap);
    let list = devs.iter().map(|(n, d)| (n.clone(), Some(d.clone()))).collect();
    let arr = io.block_on(raid::assemble(&io, list, AssembleOptions::default())).unwrap();
    let st = arr.status();
    assert_eq!((st.level, st.chunk, st.members.len()), (5, CHUNK, 3));
    assert_eq!(arr.info().size, 2 * DATA_SIZE);
    assert!(read_at(&io, &arr, 0, expected.len()) == expected, "array contents differ from the layout");
    let rep = io.block_on(arr.scrub(&io, false)).unwrap();
    assert_eq!((rep.rows, rep.mismatches), (DATA_SIZE / CHUNK, 1), "only stripe 100 was left unsynced: {rep:?}");
    io.block_on(arr.close(&io)).unwrap();
}

#[test]
fn an_array_laid_out_by_the_earlier_encoder_replays_its_partial_parity_log() {
    let io = IoCtx::new().unwrap();
    let devs = members();
    let mut expected = lay_out(&io, &devs, &[6]);
    write_metadata(&io, &devs, true);
    // Stripe 3 (parity on m2, data on m0 then m1): a write of new data to m0 at [4096, 12288)
    // landed, its parity update did not. The log on m2 holds the partial parity (m1's data
    // there) and m0's range to read back.
    let (lo, hi) = (4096usize, 12288usize);
    assert_eq!(roles(3), (2, [0, 1]));
    let new0: Vec<u8> = (0..hi - lo).map(|i| (i % 251) as u8 ^ 0x5c).collect();
    write_at(&io, &*devs[0].1, DATA_OFFSET + 3 * CHUNK + lo as u64, &new0);
    let stripe3 = 3 * 2 * CHUNK as usize;
    expected[stripe3 + lo..stripe3 + hi].copy_from_slice(&new0);
    let pp = chunk_data(3, 1)[lo..hi].to_vec();
    // Stripe 6 (parity on m2, data on m0 then m1): its parity is wrong on disk; a zero entry
    // says m1's chunk held zeros, so parity becomes m0's chunk.
    assert_eq!(roles(6), (2, [0, 1]));
    let stripe6 = 6 * 2 * CHUNK as usize;
    expected[stripe6 + CHUNK as usize..stripe6 + 2 * CHUNK as usize].fill(0);
    let unit = old_unit(
        6,
        &[
            (3, lo as u32, hi as u32, false, &[(0, lo as u32, hi as u32)], &pp),
            (6, 0, CHUNK as u32, true, &[(0, 0, CHUNK as u32)], &[]),
        ],
    );
    let slot_at = PPL_OFFSET + 4096 + (6 % SLOTS) * (4096 + CHUNK);
    write_at(&io, &*devs[2].1, slot_at, &unit);
    // m1 is missing: its chunks are rebuilt from parity, which only the log makes right.
    let list =
        vec![("m0".to_string(), Some(devs[0].1.clone())), ("m1".into(), None), ("m2".into(), Some(devs[2].1.clone()))];
    let arr = io.block_on(raid::assemble(&io, list, AssembleOptions::default())).unwrap();
    for s in [3usize, 6] {
        let at = s * 2 * CHUNK as usize;
        let got = read_at(&io, &arr, at as u64, 2 * CHUNK as usize);
        assert!(got == expected[at..at + 2 * CHUNK as usize], "stripe {s} reads back wrong after the replay");
    }
    io.block_on(arr.close(&io)).unwrap();
}
