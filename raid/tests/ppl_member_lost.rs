//! A RAID 5 member that loses its volatile writes (it dies) after writes to it completed but
//! before a flush made them stable. Their log entries list it among the modified members, and
//! it cannot be read back at recovery:
//!
//! - the rest of such an entry must still be replayed: the bytes the dead member held but the
//!   write did not touch reconstruct from the parity the entry recomputes;
//! - the write path must flush the surviving members soon after it notices the failure, or a
//!   crash before the next flush tears the stripe over the dead member's written range (its
//!   data and the parity both changed there, and no entry can say which landed).

mod common;

use std::sync::Arc;

use blockdev::testdev::{CrashDev, CrashMode};
use blockdev::{BlockDev, IoCtx, IoTag, MemDisk};
use common::{read_at, small_opts, write_at};
use raid::{assemble, create, AssembleOptions, Level};

const CHUNK: usize = 16 << 10;

/// Four members (stripe 0: data on m0, m1, m2, parity on m3) holding a stable pattern over
/// stripe 0.
/// The members' disks, their crash wrappers, the array and the pattern it holds.
type Rig = (Vec<Arc<dyn BlockDev>>, Vec<CrashDev>, Arc<raid::Array>, Vec<u8>);

fn rig(io: &IoCtx) -> Rig {
    let disks: Vec<Arc<dyn BlockDev>> =
        (0..4).map(|_| Arc::new(MemDisk::new(8 << 20).unwrap()) as Arc<dyn BlockDev>).collect();
    let crash: Vec<CrashDev> = disks.iter().map(|d| CrashDev::new(d.clone())).collect();
    let members = crash.iter().enumerate().map(|(i, c)| (format!("m{i}"), Arc::new(c.clone()) as Arc<dyn BlockDev>));
    let arr = Arc::new(io.block_on(create(io, members.collect(), small_opts(Level::Raid5))).unwrap());
    let old: Vec<u8> = (0..3 * CHUNK).map(|i| (i * 7 + i / 4096) as u8).collect();
    write_at(io, arr.as_ref(), 0, &old);
    io.block_on(arr.flush(io, IoTag::DATA)).unwrap();
    (disks, crash, arr, old)
}

/// Every sector of stripe 0 from byte `from` on reads old, or new (0xA5) inside `written`.
fn check(got: &[u8], old: &[u8], written: std::ops::Range<usize>, from: usize) {
    for s in (from..3 * CHUNK).step_by(512) {
        let (g, o) = (&got[s..s + 512], &old[s..s + 512]);
        let new_ok = written.contains(&s) && g.iter().all(|&x| x == 0xA5);
        assert!(g == o || new_ok, "sector at byte {s}: neither old nor new");
    }
}

#[test]
fn an_entry_listing_a_dead_member_is_replayed_outside_its_range() {
    let io = IoCtx::new().unwrap();
    let (disks, crash, arr, old) = rig(&io);
    // m0's last 4 KiB and all of m1's chunk: one entry, m0 and m1 modified.
    let written = CHUNK - 4096..2 * CHUNK;
    write_at(&io, arr.as_ref(), written.start as u64, &vec![0xA5u8; written.len()]);
    // Power loss before any flush: m1's data write survives, m3's parity write does not; m0
    // is gone for good.
    io.block_on(crash[0].crash(&io, CrashMode::KeepNone)).unwrap();
    io.block_on(crash[1].crash(&io, CrashMode::KeepAll)).unwrap();
    io.block_on(crash[2].crash(&io, CrashMode::KeepAll)).unwrap();
    io.block_on(crash[3].crash(&io, CrashMode::KeepNone)).unwrap();
    drop(arr);

    let mut after: Vec<_> = disks.iter().enumerate().map(|(i, d)| (format!("m{i}"), Some(d.clone()))).collect();
    after[0].1 = None;
    let arr = io.block_on(assemble(&io, after, AssembleOptions::default())).unwrap();
    let got = read_at(&io, &arr, 0, 3 * CHUNK);
    // m0's first 12 KiB were not written since the flush: they must read back. (Its last 4 KiB
    // changed along with m1 under one parity write that was lost: nothing can tell which of
    // them landed, so they are not checked.)
    assert!(got[..CHUNK - 4096] == old[..CHUNK - 4096], "m0's untouched bytes reconstruct to garbage");
    check(&got, &old, written, CHUNK);
}

#[test]
fn the_write_path_flushes_after_a_member_dies() {
    let io = IoCtx::new().unwrap();
    let (disks, crash, arr, old) = rig(&io);
    // m0's and m1's chunks of stripe 0 (not the whole stripe: logged, m0 and m1 modified).
    let written = 0..2 * CHUNK;
    write_at(&io, arr.as_ref(), 0, &vec![0xA5u8; written.len()]);
    // m0 dies with the write still volatile; the next write that touches it (stripe 1's m0
    // chunk) notices and fails it.
    io.block_on(crash[0].crash(&io, CrashMode::KeepNone)).unwrap();
    write_at(&io, arr.as_ref(), 4 * CHUNK as u64, &[0x5Au8; 4096]);
    assert!(arr.status().degraded, "m0 failed");
    // Power loss: m1 keeps its volatile writes, m3 (stripe 0's parity) loses them.
    io.block_on(crash[1].crash(&io, CrashMode::KeepAll)).unwrap();
    io.block_on(crash[2].crash(&io, CrashMode::KeepAll)).unwrap();
    io.block_on(crash[3].crash(&io, CrashMode::KeepNone)).unwrap();
    drop(arr);

    let after = disks.iter().enumerate().map(|(i, d)| (format!("m{i}"), Some(d.clone()))).collect();
    let arr = io.block_on(assemble(&io, after, AssembleOptions::default())).unwrap();
    assert!(arr.status().degraded, "m0 stays out (marked faulty before the crash)");
    check(&read_at(&io, &arr, 0, 3 * CHUNK), &old, written, 0);
}
