//! A pool changed while its volumes are in use: snapshots of a volume under concurrent writes
//! (the origin is suspended: each write request is wholly in the snapshot or wholly out), a
//! bounded wait for space (growth during the wait, and the timeout), and freed blocks discarded
//! to known-zero so their next first write needs no zero-fill.

mod thin_common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{BlockDev, DevInfo, ErrorKind, IoBufs, IoCtx, IoFuture, IoTag, OpenOptions, RawFile, SharedBuf};
use thin::{Pool, PoolConfig};
use thin_common::*;

/// Each write request covers one region: 64 KiB starting half-way into a data block, so it
/// spans two blocks (two provisioning steps).
const REGION: u64 = 2 * BS;
const REGIONS: u64 = 48;
const WRITERS: u64 = 16;

fn region_data(seq: u64) -> Vec<u8> {
    seq.to_le_bytes().iter().copied().cycle().take(BS as usize).collect()
}

#[test]
fn snapshot_under_concurrent_writes_holds_each_write_wholly_or_not_at_all() {
    // A file below, so writes are really in flight at once on the ring.
    let dir = tempfile::tempdir().unwrap();
    let io = IoCtx::new().unwrap();
    let (_file, pool) = file_pool(dir.path(), 64 << 20);
    io.block_on(pool.create_volume(&io, "a", REGIONS * REGION)).unwrap();
    let vol = Arc::new(pool.volume("a").unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    // Without the suspension a snapshot could wait forever: stop the writers after a while so
    // that the test fails instead of hanging.
    let watchdog = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !stop.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(10));
            }
            stop.store(true, Ordering::SeqCst);
        })
    };
    let seq = Arc::new(AtomicU64::new(1));
    // Per region: the highest sequence number whose write completed, and the highest started.
    let done: Arc<Vec<AtomicU64>> = Arc::new((0..REGIONS).map(|_| AtomicU64::new(0)).collect());
    let started: Arc<Vec<AtomicU64>> = Arc::new((0..REGIONS).map(|_| AtomicU64::new(0)).collect());
    let writer = {
        let (vol, stop, seq, done, started) = (vol.clone(), stop.clone(), seq.clone(), done.clone(), started.clone());
        std::thread::spawn(move || {
            let io = IoCtx::new().unwrap();
            let tasks: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let (io2, vol, stop, seq, done, started) =
                        (io.clone(), vol.clone(), stop.clone(), seq.clone(), done.clone(), started.clone());
                    io.spawn(async move {
                        let mut n = 0u64;
                        while !stop.load(Ordering::SeqCst) {
                            // Writer w owns regions w, w + WRITERS, ...: in-flight writes never overlap.
                            let r = w + (n % (REGIONS / WRITERS)) * WRITERS;
                            n += 1;
                            let s = seq.fetch_add(1, Ordering::SeqCst);
                            started[r as usize].store(s, Ordering::SeqCst);
                            let mut b = SharedBuf::from_slice(&region_data(s));
                            vol.write(&io2, r * REGION + BS / 2, b.io(), false, IoTag::DATA).await.unwrap();
                            done[r as usize].store(s, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            for t in tasks {
                io.block_on(t);
            }
        })
    };
    // Let the writers get going, then snapshot three times while they run.
    while seq.load(Ordering::SeqCst) < 200 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut checks = Vec::new();
    for i in 0..3 {
        let before: Vec<u64> = done.iter().map(|d| d.load(Ordering::SeqCst)).collect();
        let t0 = Instant::now();
        io.block_on(pool.snapshot(&io, "a", &format!("s{i}"))).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(10), "snapshot starved by writes: {:?}", t0.elapsed());
        let after: Vec<u64> = started.iter().map(|d| d.load(Ordering::SeqCst)).collect();
        checks.push((format!("s{i}"), before, after));
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    watchdog.join().unwrap();
    for (name, before, after) in checks {
        let snap = pool.volume(&name).unwrap();
        for r in 0..REGIONS as usize {
            let got = read(&io, &snap, r as u64 * REGION + BS / 2, BS as usize);
            let s = u64::from_le_bytes(got[..8].try_into().unwrap());
            let expect = if s == 0 { vec![0; BS as usize] } else { region_data(s) };
            assert!(got == expect, "{name} region {r}: a torn write (starts with sequence {s})");
            assert!(
                before[r] <= s && s <= after[r],
                "{name} region {r}: holds write {s}, but {} had completed before and {} started after",
                before[r],
                after[r]
            );
        }
    }
    let a = pool.audit();
    assert!(a.errors.is_empty() && a.leaks.is_empty(), "{a:?}");
}

#[test]
fn concurrent_snapshots_of_one_origin_both_complete() {
    let io = IoCtx::new().unwrap();
    let pool = create(&io, mem(32 << 20));
    io.block_on(pool.create_volume(&io, "a", 4 << 20)).unwrap();
    let vol = pool.volume("a").unwrap();
    write(&io, &vol, 0, &[5; 8192], false).unwrap();
    let (p1, p2) = (pool.clone(), pool.clone());
    let (io1, io2) = (io.clone(), io.clone());
    let h1 = io.spawn(async move { p1.snapshot(&io1, "a", "x").await });
    let h2 = io.spawn(async move { p2.snapshot(&io2, "a", "y").await });
    io.block_on(h1).unwrap();
    io.block_on(h2).unwrap();
    for name in ["x", "y"] {
        assert_eq!(read(&io, &pool.volume(name).unwrap(), 0, 8192), vec![5; 8192]);
    }
    // Writes to the origin go on after both.
    write(&io, &vol, 0, &[6; 512], false).unwrap();
}

/// A pool on a file that the test can grow while the pool is open.
fn file_pool(dir: &std::path::Path, size: u64) -> (Arc<RawFile>, Pool) {
    let io = IoCtx::new().unwrap();
    let f = Arc::new(RawFile::create(dir.join("pool.img"), size, OpenOptions::default()).unwrap());
    let pool = io.block_on(Pool::create(&io, f.clone(), None, PoolConfig::default())).unwrap();
    (f, pool)
}

fn fill(io: &IoCtx, pool: &Pool, vol: &dyn BlockDev) -> u64 {
    let blocks = pool.info().data_blocks;
    for b in 0..blocks {
        write(io, vol, b * BS, &[1; 512], false).unwrap();
    }
    blocks
}

#[test]
fn write_waiting_for_space_succeeds_when_the_pool_grows() {
    let dir = tempfile::tempdir().unwrap();
    let io = IoCtx::new().unwrap();
    let (file, pool) = file_pool(dir.path(), 8 << 20);
    io.block_on(pool.create_volume(&io, "a", 1 << 30)).unwrap();
    let mut a = pool.volume("a").unwrap();
    a.set_no_space_wait(Duration::from_secs(20));
    let blocks = fill(&io, &pool, &a);
    let grower = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            file.set_len(16 << 20).unwrap();
            let io = IoCtx::new().unwrap();
            io.block_on(pool.grow(&io)).unwrap()
        })
    };
    let t0 = Instant::now();
    write(&io, &a, blocks * BS, &[2; 4096], false).unwrap();
    let waited = t0.elapsed();
    assert_eq!(grower.join().unwrap(), blocks + 128);
    assert!(waited >= Duration::from_millis(250), "the write did not wait for space ({waited:?})");
    assert!(waited < Duration::from_secs(15), "the write was not woken by the growth ({waited:?})");
    assert_eq!(read(&io, &a, blocks * BS, 8192), [vec![2; 4096], vec![0; 4096]].concat());
    flush(&io, &a);
    let audit = pool.audit();
    assert!(audit.errors.is_empty() && audit.leaks.is_empty(), "{audit:?}");
}

#[test]
fn write_waiting_for_space_fails_with_no_space_at_the_timeout_and_the_pool_is_intact() {
    let dir = tempfile::tempdir().unwrap();
    let io = IoCtx::new().unwrap();
    let (file, pool) = file_pool(dir.path(), 8 << 20);
    io.block_on(pool.create_volume(&io, "a", 1 << 30)).unwrap();
    let mut a = pool.volume("a").unwrap();
    a.set_no_space_wait(Duration::from_millis(300));
    let blocks = fill(&io, &pool, &a);
    flush(&io, &a);
    let t0 = Instant::now();
    let err = write(&io, &a, blocks * BS, &[2; 4096], true).unwrap_err();
    let waited = t0.elapsed();
    assert_eq!(err.kind(), ErrorKind::NoSpace, "{err}");
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(10), "waited {waited:?}");
    // Overwrites of mapped blocks still work, and nothing is damaged.
    write(&io, &a, 0, &[3; 512], true).unwrap();
    assert_eq!(read(&io, &a, blocks * BS, 512), vec![0; 512]);
    assert_eq!(pool.info().used_blocks, blocks);
    drop((a, pool));
    let pool = io.block_on(Pool::open(&io, file, None)).unwrap();
    let audit = pool.audit();
    assert!(audit.errors.is_empty() && audit.leaks.is_empty(), "{audit:?}");
    let a = pool.volume("a").unwrap();
    assert!(read(&io, &a, 0, 1024) == [vec![3; 512], vec![0; 512]].concat(), "lost the overwrite");
    assert!(read(&io, &a, BS, 512) == vec![1; 512], "lost a block written before the pool filled");
}

#[test]
fn without_a_wait_a_full_pool_fails_at_once() {
    let io = IoCtx::new().unwrap();
    let pool = create(&io, mem(4 << 20));
    io.block_on(pool.create_volume(&io, "a", 1 << 30)).unwrap();
    let a = pool.volume("a").unwrap();
    let blocks = fill(&io, &pool, &a);
    let t0 = Instant::now();
    assert_eq!(write(&io, &a, blocks * BS, &[2; 512], false).unwrap_err().kind(), ErrorKind::NoSpace);
    assert!(t0.elapsed() < Duration::from_secs(2));
}

/// A device that counts the bytes written to it, optionally without write-zeroes support.
struct Counting {
    inner: Arc<dyn BlockDev>,
    written: AtomicU64,
    write_zeroes: bool,
}

impl BlockDev for Counting {
    fn info(&self) -> DevInfo {
        DevInfo { write_zeroes: self.write_zeroes, ..self.inner.info() }
    }
    fn read(&self, io: &IoCtx, off: u64, bufs: IoBufs, tag: IoTag) -> IoFuture {
        self.inner.read(io, off, bufs, tag)
    }
    fn write(&self, io: &IoCtx, off: u64, bufs: IoBufs, fua: bool, tag: IoTag) -> IoFuture {
        self.written.fetch_add(bufs.len() as u64, Ordering::SeqCst);
        self.inner.write(io, off, bufs, fua, tag)
    }
    fn flush(&self, io: &IoCtx, tag: IoTag) -> IoFuture {
        self.inner.flush(io, tag)
    }
    fn discard(&self, io: &IoCtx, off: u64, len: u64, tag: IoTag) -> IoFuture {
        self.inner.discard(io, off, len, tag)
    }
    fn write_zeroes(&self, io: &IoCtx, off: u64, len: u64, unmap: bool, tag: IoTag) -> IoFuture {
        self.inner.write_zeroes(io, off, len, unmap, tag)
    }
}

/// Bytes the data device receives for a 4 KiB first write that lands on a block freed by a
/// whole-block discard (the only free block left).
fn first_write_bytes_on_a_discarded_block(write_zeroes: bool) -> u64 {
    let io = IoCtx::new().unwrap();
    let data = Arc::new(Counting { inner: mem(8 << 20), written: AtomicU64::new(0), write_zeroes });
    let meta = mem(1 << 20);
    let pool = io.block_on(Pool::create(&io, meta, Some(data.clone()), PoolConfig::default())).unwrap();
    io.block_on(pool.create_volume(&io, "a", 1 << 30)).unwrap();
    let a = pool.volume("a").unwrap();
    let blocks = pool.info().data_blocks;
    for b in 0..blocks {
        write(&io, &a, b * BS, &vec![0xee; BS as usize], false).unwrap();
    }
    io.block_on(a.discard(&io, 3 * BS, BS, IoTag::DATA)).unwrap();
    flush(&io, &a);
    let before = data.written.load(Ordering::SeqCst);
    write(&io, &a, blocks * BS + 8192, &[7; 4096], false).unwrap();
    let bytes = data.written.load(Ordering::SeqCst) - before;
    // Whatever the path, the new block reads the write and zeros around it.
    let got = read(&io, &a, blocks * BS, BS as usize);
    assert!(got[..8192].iter().all(|&b| b == 0) && got[12288..].iter().all(|&b| b == 0), "stale data");
    assert!(got[8192..12288].iter().all(|&b| b == 7));
    assert_eq!(read(&io, &a, 3 * BS, 512), vec![0; 512]);
    bytes
}

#[test]
fn block_freed_by_whole_block_discard_is_reused_without_zero_fill() {
    assert_eq!(first_write_bytes_on_a_discarded_block(true), 4096);
}

#[test]
fn block_freed_on_a_device_whose_discard_may_keep_data_is_zero_filled_on_reuse() {
    assert_eq!(first_write_bytes_on_a_discarded_block(false), BS);
}
