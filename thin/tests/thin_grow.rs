//! Growing an open thin pool onto a data device that grew underneath it (the file extended by
//! another process): the space is taken in, the refusals name what and where (a device that did
//! not grow, one that shrank, metadata without room for the larger space map), and a crash at
//! any write or flush of the grow leaves the old pool or the grown one, never a broken one.

mod thin_common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use blockdev::testdev::{CrashDev, CrashMode};
use blockdev::{BlockDev, ErrorKind, IoCtx, OpenOptions, RawFile};
use thin::{check, Pool, PoolConfig};
use thin_common::*;

const MIB: u64 = 1 << 20;
/// An 8 MiB pool file: a 1 MiB metadata area, then 112 data blocks.
const SMALL: u64 = 8 * MIB;
const SMALL_BLOCKS: u64 = 112;
/// Grown to 16 MiB: 240 data blocks.
const BIG: u64 = 16 * MIB;
const BIG_BLOCKS: u64 = 240;

/// Set the length of the file at `path` through a handle of its own, as `truncate -s` does.
fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

fn pool_file(dir: &Path, cfg: PoolConfig) -> (PathBuf, Pool) {
    let io = IoCtx::new().unwrap();
    let path = dir.join("pool.img");
    let f = RawFile::create(&path, SMALL, OpenOptions::default()).unwrap();
    let pool = io.block_on(Pool::create(&io, Arc::new(f), None, cfg)).unwrap();
    io.block_on(pool.create_volume(&io, "a", 64 * MIB)).unwrap();
    (path, pool)
}

/// A pattern naming its block.
fn pattern(b: u64) -> Vec<u8> {
    vec![(b % 251) as u8 + 1; 512]
}

/// Map every data block of the pool (one 512-byte write each) and flush.
fn fill(io: &IoCtx, pool: &Pool, vol: &dyn BlockDev) -> u64 {
    let blocks = pool.info().data_blocks;
    for b in 0..blocks {
        write(io, vol, b * BS, &pattern(b), false).unwrap();
    }
    flush(io, vol);
    blocks
}

#[test]
fn open_pool_takes_in_a_file_extended_by_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let io = IoCtx::new().unwrap();
    let (path, pool) = pool_file(dir.path(), PoolConfig::default());
    let a = pool.volume("a").unwrap();
    assert_eq!(fill(&io, &pool, &a), SMALL_BLOCKS);
    let full = write(&io, &a, SMALL_BLOCKS * BS, &[9; 512], false).unwrap_err();
    assert_eq!(full.kind(), ErrorKind::NoSpace, "{full}");
    truncate(&path, BIG);
    assert_eq!(io.block_on(pool.grow(&io)).unwrap(), BIG_BLOCKS);
    assert_eq!(pool.info().data_blocks, BIG_BLOCKS);
    write(&io, &a, SMALL_BLOCKS * BS, &[9; 512], false).unwrap();
    flush(&io, &a);
    assert_eq!(read(&io, &a, SMALL_BLOCKS * BS, 1024), [vec![9; 512], vec![0; 512]].concat());
    drop((a, pool));
    let f = RawFile::open(&path, OpenOptions::default()).unwrap();
    let pool = io.block_on(Pool::open(&io, Arc::new(f), None)).unwrap();
    assert_eq!(pool.info().data_blocks, BIG_BLOCKS);
    let a = pool.volume("a").unwrap();
    assert_eq!(read(&io, &a, SMALL_BLOCKS * BS, 512), vec![9; 512]);
    assert_eq!(read(&io, &a, 5 * BS, 512), pattern(5));
}

#[test]
fn grow_of_a_device_that_did_not_grow_by_a_block_is_refused_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let io = IoCtx::new().unwrap();
    let (path, pool) = pool_file(dir.path(), PoolConfig::default());
    let tx = pool.info().transaction_id;
    let e = io.block_on(pool.grow(&io)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("pool.img") && e.to_string().contains("has not grown"), "{e}");
    // Less than one more block is not growth either.
    truncate(&path, SMALL + BS - 4096);
    let e = io.block_on(pool.grow(&io)).unwrap_err();
    assert!(e.to_string().contains("has not grown") && e.to_string().contains(&format!("{}", SMALL + BS)), "{e}");
    assert_eq!((pool.info().data_blocks, pool.info().transaction_id), (SMALL_BLOCKS, tx), "nothing changed");
    truncate(&path, SMALL + BS);
    assert_eq!(io.block_on(pool.grow(&io)).unwrap(), SMALL_BLOCKS + 1);
}

#[test]
fn grow_of_a_device_that_shrank_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let io = IoCtx::new().unwrap();
    let (path, pool) = pool_file(dir.path(), PoolConfig::default());
    let a = pool.volume("a").unwrap();
    write(&io, &a, 0, &[4; 512], true).unwrap();
    truncate(&path, SMALL - 4 * BS);
    let e = io.block_on(pool.grow(&io)).unwrap_err();
    assert!(e.to_string().contains("pool.img") && e.to_string().contains("cannot shrink"), "{e}");
    assert_eq!(pool.info().data_blocks, SMALL_BLOCKS);
    // Put the file back: the pool still works.
    truncate(&path, SMALL);
    write(&io, &a, BS, &[5; 512], true).unwrap();
    assert_eq!(read(&io, &a, 0, 512), vec![4; 512]);
}

#[test]
fn grow_beyond_what_the_metadata_can_map_is_refused_with_no_space() {
    let dir = tempfile::tempdir().unwrap();
    let io = IoCtx::new().unwrap();
    // 16 metadata pages (2 superblocks, 14 for everything else).
    let cfg = PoolConfig { metadata_size: Some(64 << 10), ..PoolConfig::default() };
    let (path, pool) = pool_file(dir.path(), cfg);
    // A growth that fits is taken: 255 data blocks still fit one space-map page.
    truncate(&path, BIG);
    assert_eq!(io.block_on(pool.grow(&io)).unwrap(), (BIG - (64 << 10)) / BS);
    let before = pool.info();
    // 4 GiB needs 130 space-map pages.
    truncate(&path, 4 << 30);
    let e = io.block_on(pool.grow(&io)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("metadata full") && msg.contains("pool.img") && msg.contains("pool-create"), "{msg}");
    assert_eq!(pool.info(), before, "a refused grow changes nothing");
    let a = pool.volume("a").unwrap();
    write(&io, &a, 200 * BS, &[6; 512], true).unwrap();
    assert!(pool.audit().errors.is_empty());
}

#[derive(Debug, Clone, Copy)]
enum Point {
    Write(u64),
    Flush(u64),
}

fn modes(seed: u64) -> [CrashMode; 4] {
    [
        CrashMode::KeepNone,
        CrashMode::KeepAll,
        CrashMode::RandomSubset { seed },
        CrashMode::TearOne { seed, granularity: 512 },
    ]
}

/// Grow a full pool on a CrashDev that crashes at `point`; returns whether the grow finished.
/// Then, reopened from the file: old or new size, no corruption, every block as written, and
/// the pool grows (again, if the crash undid it) and takes writes in the new space.
fn crash_during_grow(point: Point, mode: CrashMode) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let io = IoCtx::new().unwrap();
    let path = dir.path().join("pool.img");
    let crash = CrashDev::new(Arc::new(RawFile::create(&path, SMALL, OpenOptions::default()).unwrap()));
    let pool = create(&io, Arc::new(crash.clone()));
    io.block_on(pool.create_volume(&io, "a", 64 * MIB)).unwrap();
    let a = pool.volume("a").unwrap();
    fill(&io, &pool, &a);
    truncate(&path, BIG);
    match point {
        Point::Write(n) => crash.crash_at_write(n, mode),
        Point::Flush(n) => crash.crash_at_flush(n, mode),
    }
    let res = io.block_on(pool.grow(&io));
    let finished = !crash.is_crashed();
    if finished {
        assert_eq!(res.as_ref().ok(), Some(&BIG_BLOCKS), "{point:?}");
        io.block_on(crash.crash(&io, CrashMode::KeepNone)).unwrap();
    } else {
        assert!(res.is_err(), "{point:?} {mode:?}: the grow succeeded on a crashed device");
    }
    drop((a, pool, crash));

    let meta: Arc<dyn BlockDev> = Arc::new(RawFile::open(&path, OpenOptions::default()).unwrap());
    let report = io.block_on(check::check(&io, meta.clone(), None, false)).unwrap();
    assert_eq!(report.exit_code(), 0, "{point:?} {mode:?}: {report:?}");
    let pool = io.block_on(Pool::open(&io, meta, None)).unwrap();
    let blocks = pool.info().data_blocks;
    assert!(blocks == SMALL_BLOCKS || blocks == BIG_BLOCKS, "{point:?} {mode:?}: {blocks} data blocks");
    assert!(!finished || blocks == BIG_BLOCKS, "{point:?} {mode:?}: a finished grow was lost");
    let a = pool.volume("a").unwrap();
    for b in 0..SMALL_BLOCKS {
        assert_eq!(read(&io, &a, b * BS, 512), pattern(b), "{point:?} {mode:?}: block {b}");
    }
    if blocks == SMALL_BLOCKS {
        assert_eq!(io.block_on(pool.grow(&io)).unwrap(), BIG_BLOCKS);
    }
    for b in SMALL_BLOCKS..BIG_BLOCKS {
        write(&io, &a, b * BS, &pattern(b), false).unwrap();
    }
    flush(&io, &a);
    assert_eq!(read(&io, &a, (BIG_BLOCKS - 1) * BS, 512), pattern(BIG_BLOCKS - 1));
    assert!(pool.audit().errors.is_empty() && pool.audit().leaks.is_empty());
    finished
}

#[test]
fn crash_at_every_write_and_flush_of_a_grow_leaves_the_old_or_the_grown_pool() {
    for (kind, make) in [("write", Point::Write as fn(u64) -> Point), ("flush", Point::Flush)] {
        let mut n = 1;
        loop {
            let mut finished = 0;
            for mode in modes(n * 7 + 1) {
                finished += usize::from(crash_during_grow(make(n), mode));
            }
            if finished == 4 {
                break;
            }
            assert_eq!(finished, 0, "{kind} {n}: the grow finished under some modes only");
            n += 1;
            assert!(n < 64, "a grow of a 240-block pool made 64 {kind}s");
        }
        // The grow writes the added space's zeros, metadata pages and the superblock, and
        // flushes the data before the superblock and the superblock after it.
        assert!(n > 2, "only {} {kind}s in a grow", n - 1);
    }
}
