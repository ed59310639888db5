//! Thin pool behaviour: provisioning, zeros, isolation, overcommit, discard, growth, out of
//! space, and model-checked random workloads across several volumes that survive a reopen.

mod thin_common;

use std::sync::Arc;

use blockdev::size::SizeChange;
use blockdev::testdev::workload::{self, Weights, WorkloadConfig};
use blockdev::testdev::ModelDev;
use blockdev::{BlockDev, ErrorKind, IoCtx, IoFuture, IoTag};
use thin::{check, Pool, PoolConfig, ResizeOptions};
use thin_common::*;

#[test]
fn unmapped_blocks_read_zeros_and_use_no_space() {
    let io = IoCtx::new().unwrap();
    let pool = create(&io, mem(64 << 20));
    io.block_on(pool.create_volume(&io, "a", 1 << 30)).unwrap();
    let vol = pool.volume("a").unwrap();
    assert_eq!(vol.info().size, 1 << 30);
    assert_eq!(read(&io, &vol, (1 << 30) - 8192, 8192), vec![0; 8192]);
    assert_eq!(pool.info().used_blocks, 0);
}

#[test]
fn partial_first_write_zero_fills_the_rest_of_the_block() {
    let io = IoCtx::new().unwrap();
    let pool = create(&io, mem(64 << 20));
    io.block_on(pool.create_volume(&io, "a", 8 << 20)).unwrap();
    let vol = pool.volume("a").unwrap();
    write(&io, &vol, BS + 4096, &[0xab; 4096], false).unwrap();
    let blk = read(&io, &vol, BS, BS as usize);
    assert!(blk[..4096].iter().all(|&b| b == 0));
    assert!(blk[4096..8192].iter().all(|&b| b == 0xab));
    assert!(blk[8192..].iter().all(|&b| b == 0));
    assert_eq!(pool.info().used_blocks, 1);
}

#[test]
fn flushed_writes_survive_reopen() {
    let io = IoCtx::new().unwrap();
    let dev = mem(64 << 20);
    let pool = create(&io, dev.clone());
    io.block_on(pool.create_volume(&io, "a", 16 << 20)).unwrap();
    let vol = pool.volume("a").unwrap();
    write(&io, &vol, 3 * BS - 512, &[7; 1024], false).unwrap();
    flush(&io, &vol);
    drop(vol);
    drop(pool);
    let pool = io.block_on(Pool::open(&io, dev, None)).unwrap();
    let vol = pool.volume("a").unwrap();
    assert_eq!(read(&io, &vol, 3 * BS - 512, 1024), vec![7; 1024]);
    assert!(pool.audit().errors.is_empty());
}

#[test]
fn new_volume_reads_zeros_where_a_removed_one_had_data() {
    let io = IoCtx::new().unwrap();
    let dev = mem(16 << 20);
    let pool = create(&io, dev);
    let blocks = pool.info().data_blocks;
    io.block_on(pool.create_volume(&io, "old", blocks * BS)).unwrap();
    let vol = pool.volume("old").unwrap();
    for b in 0..blocks {
        write(&io, &vol, b * BS, &vec![0x5a; BS as usize], false).unwrap();
    }
    flush(&io, &vol);
    drop(vol);
    io.block_on(pool.remove_volume(&io, "old")).unwrap();
    io.block_on(pool.create_volume(&io, "new", blocks * BS)).unwrap();
    let vol = pool.volume("new").unwrap();
    // Partial writes into recycled blocks: the rest of each block must read zeros.
    for b in 0..blocks {
        write(&io, &vol, b * BS + 512, &[1; 512], false).unwrap();
    }
    for b in 0..blocks {
        let got = read(&io, &vol, b * BS, BS as usize);
        assert!(got[..512].iter().all(|&x| x == 0), "block {b} leaks old data");
        assert!(got[1024..].iter().all(|&x| x == 0), "block {b} leaks old data");
    }
}

#[test]
fn volumes_do_not_see_each_other() {
    let io = IoCtx::new().unwrap();
    let pool = create(&io, mem(64 << 20));
    io.block_on(pool.create_volume(&io, "a", 4 << 20)).unwrap();
    io.block_on(pool.create_volume(&io, "b", 4 << 20)).unwrap();
    let (a, b) = (pool.volume("a").unwrap(), pool.volume("b").unwrap());
    write(&io, &a, 0, &[1; 8192], false).unwrap();
    write(&io, &b, 0, &[2; 4096], false).unwrap();
    assert_eq!(read(&io, &a, 0, 8192), vec![1; 8192]);
    assert_eq!(&read(&io, &b, 0, 8192)[..], &[vec![2; 4096], vec![0; 4096]].concat()[..]);
}

#[test]
fn overcommitted_pool_fails_writes_with_nospace_and_stays_sound() {
    let io = IoCtx::new().unwrap();
    let dev = mem(8 << 20);
    let pool = create(&io, dev.clone());
    let blocks = pool.info().data_blocks;
    io.block_on(pool.create_volume(&io, "big", 1 << 40)).unwrap();
    let vol = pool.volume("big").unwrap();
    assert!(!pool.info().below_low_water);
    for b in 0..blocks {
        write(&io, &vol, b * BS, &[b as u8 + 1; 4096], false).unwrap();
    }
    flush(&io, &vol);
    let err = write(&io, &vol, blocks * BS, &[9; 4096], false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoSpace);
    assert!(pool.info().below_low_water);
    // The pool is not damaged: overwrites still work and everything reads back after reopen.
    write(&io, &vol, 0, &[0xee; 512], true).unwrap();
    drop(vol);
    drop(pool);
    let report = io.block_on(check::check(&io, dev.clone(), None, false)).unwrap();
    assert_eq!(report.exit_code(), 0, "{report:?}");
    let pool = io.block_on(Pool::open(&io, dev, None)).unwrap();
    let vol = pool.volume("big").unwrap();
    assert_eq!(read(&io, &vol, 0, 512), vec![0xee; 512]);
    assert_eq!(read(&io, &vol, (blocks - 1) * BS, 4096), vec![blocks as u8; 4096]);
}

#[test]
fn discard_frees_blocks_for_reuse_after_commit() {
    let io = IoCtx::new().unwrap();
    let pool = create(&io, mem(8 << 20));
    let blocks = pool.info().data_blocks;
    io.block_on(pool.create_volume(&io, "a", blocks * BS)).unwrap();
    io.block_on(pool.create_volume(&io, "b", blocks * BS)).unwrap();
    let (a, b) = (pool.volume("a").unwrap(), pool.volume("b").unwrap());
    for i in 0..blocks {
        write(&io, &a, i * BS, &[3; 512], false).unwrap();
    }
    assert_eq!(pool.info().used_blocks, blocks);
    io.block_on(a.discard(&io, 0, blocks * BS, IoTag::DATA)).unwrap();
    assert_eq!(read(&io, &a, 0, 512), vec![0; 512]);
    // The freed blocks become available once the discard is committed (the write waits for it).
    write(&io, &b, 0, &[4; 512], false).unwrap();
    assert_eq!(read(&io, &b, 0, 512), vec![4; 512]);
    assert_eq!(pool.list().iter().find(|v| v.name == "a").unwrap().mapped_blocks, 0);
}

#[test]
fn write_zeroes_zeroes_partial_blocks_and_unmaps_whole_ones() {
    let io = IoCtx::new().unwrap();
    let pool = create(&io, mem(16 << 20));
    io.block_on(pool.create_volume(&io, "a", 1 << 20)).unwrap();
    let a = pool.volume("a").unwrap();
    write(&io, &a, 0, &vec![9; 3 * BS as usize], false).unwrap();
    io.block_on(a.write_zeroes(&io, 4096, 2 * BS, false, IoTag::DATA)).unwrap();
    let got = read(&io, &a, 0, 3 * BS as usize);
    assert!(got[..4096].iter().all(|&x| x == 9));
    assert!(got[4096..2 * BS as usize + 4096].iter().all(|&x| x == 0));
    assert!(got[2 * BS as usize + 4096..].iter().all(|&x| x == 9));
    assert_eq!(pool.list()[0].mapped_blocks, 2);
}

#[test]
fn grown_volume_accepts_writes_past_the_old_end() {
    let io = IoCtx::new().unwrap();
    let pool = create(&io, mem(16 << 20));
    io.block_on(pool.create_volume(&io, "a", 1 << 20)).unwrap();
    let a = pool.volume("a").unwrap();
    assert_eq!(write(&io, &a, 1 << 20, &[1; 512], false).unwrap_err().kind(), ErrorKind::OutOfRange);
    io.block_on(pool.resize_volume(&io, "a", SizeChange::To(2 << 20), ResizeOptions::default())).unwrap();
    write(&io, &a, 1 << 20, &[1; 512], false).unwrap();
    assert_eq!(a.info().size, 2 << 20);
    assert_eq!(read(&io, &a, 1 << 20, 512), vec![1; 512]);
    // Shrinking an open volume is refused.
    let shrink = ResizeOptions { shrink: true, discard_data: true };
    let e = io.block_on(pool.resize_volume(&io, "a", SizeChange::To(1 << 20), shrink)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked);
}

#[test]
fn open_volume_cannot_be_removed_and_names_are_unique() {
    let io = IoCtx::new().unwrap();
    let pool = create(&io, mem(16 << 20));
    io.block_on(pool.create_volume(&io, "a", 1 << 20)).unwrap();
    assert_eq!(io.block_on(pool.create_volume(&io, "a", 1 << 20)).unwrap_err().kind(), ErrorKind::InvalidInput);
    assert_eq!(io.block_on(pool.create_volume(&io, "bad/name", 1 << 20)).unwrap_err().kind(), ErrorKind::InvalidInput);
    let a = pool.volume("a").unwrap();
    assert_eq!(io.block_on(pool.remove_volume(&io, "a")).unwrap_err().kind(), ErrorKind::Locked);
    drop(a);
    io.block_on(pool.remove_volume(&io, "a")).unwrap();
    assert_eq!(pool.volume("a").err().unwrap().kind(), ErrorKind::NotFound);
}

#[test]
fn pool_on_separate_metadata_and_data_devices_reopens() {
    let io = IoCtx::new().unwrap();
    let (meta, data) = (mem(1 << 20), mem(16 << 20));
    let pool = io.block_on(Pool::create(&io, meta.clone(), Some(data.clone()), PoolConfig::default())).unwrap();
    assert_eq!(pool.info().data_blocks, 256);
    io.block_on(pool.create_volume(&io, "a", 1 << 20)).unwrap();
    let a = pool.volume("a").unwrap();
    write(&io, &a, 0, &[5; 4096], true).unwrap();
    drop(a);
    drop(pool);
    let pool = io.block_on(Pool::open(&io, meta, Some(data))).unwrap();
    assert_eq!(read(&io, &pool.volume("a").unwrap(), 0, 4096), vec![5; 4096]);
}

fn workload_cfg(seed: u64, ops: u64, size: u64) -> WorkloadConfig {
    WorkloadConfig {
        seed,
        ops,
        queue_depth: 8,
        max_len: 256 << 10,
        fua_percent: 10,
        weights: Weights { read: 35, write: 45, flush: 4, discard: 8, write_zeroes: 8 },
        region: Some((0, size)),
        ..Default::default()
    }
}

fn to_unit(fut: impl std::future::Future<Output = blockdev::Result<workload::WorkloadStats>> + 'static) -> IoFuture {
    Box::pin(async move { fut.await.map(|_| ()) })
}

#[test]
fn random_workloads_on_several_volumes_match_their_models_across_reopen() {
    let io = IoCtx::new().unwrap();
    for seed in 1..=3u64 {
        // 240 data blocks for 224 blocks of volumes: discarded blocks get recycled.
        let dev = mem(16 << 20);
        let pool = create(&io, dev.clone());
        let sizes = [4u64 << 20, 8 << 20, 2 << 20];
        let mut models = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            io.block_on(pool.create_volume(&io, &format!("v{i}"), *size)).unwrap();
            models.push(ModelDev::new(Arc::new(pool.volume(&format!("v{i}")).unwrap())));
        }
        let futs: Vec<IoFuture> = models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let dev: Arc<dyn BlockDev> = Arc::new(m.clone());
                let cfg = workload_cfg(seed * 10 + i as u64, 400, sizes[i]);
                let io2 = io.clone();
                to_unit(async move { workload::run(&io2, dev, &cfg).await })
            })
            .collect();
        io.block_on(blockdev::join::try_join_all(futs)).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(pool.audit().errors.is_empty(), "{:?}", pool.audit());
        for m in &models {
            flush(&io, m);
        }
        drop(pool);
        let pool = io.block_on(Pool::open(&io, dev.clone(), None)).unwrap();
        for (i, m) in models.iter().enumerate() {
            let v = pool.volume(&format!("v{i}")).unwrap();
            io.block_on(m.verify_all(&v, &io)).unwrap_or_else(|e| panic!("seed {seed} volume {i}: {e}"));
        }
        let report = io.block_on(check::check(&io, dev, None, false)).unwrap();
        assert_eq!(report.exit_code(), 0, "{report:?}");
    }
}

#[test]
fn periodic_commit_makes_unflushed_writes_durable() {
    let io = IoCtx::new().unwrap();
    let disk = mem(16 << 20);
    let crash = blockdev::testdev::CrashDev::new(disk.clone());
    let pool = create(&io, Arc::new(crash.clone()));
    io.block_on(pool.create_volume(&io, "a", 1 << 20)).unwrap();
    let a = pool.volume("a").unwrap();
    pool.start_periodic_commit(std::time::Duration::from_millis(20)).unwrap();
    let tx = pool.info().transaction_id;
    write(&io, &a, 0, &[6; 4096], false).unwrap();
    assert!(pool.is_dirty());
    let start = std::time::Instant::now();
    while pool.info().transaction_id == tx && start.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(pool.info().transaction_id > tx, "no periodic commit within 10 s");
    io.block_on(crash.crash(&io, blockdev::testdev::CrashMode::KeepNone)).unwrap();
    drop((a, pool));
    let pool = io.block_on(Pool::open(&io, disk, None)).unwrap();
    assert_eq!(read(&io, &pool.volume("a").unwrap(), 0, 4096), vec![6; 4096]);
}

/// A device that does not support write-zeroes (so a new pool knows no block to be zero).
struct NoWriteZeroes(Arc<dyn BlockDev>);

impl BlockDev for NoWriteZeroes {
    fn info(&self) -> blockdev::DevInfo {
        blockdev::DevInfo { write_zeroes: false, ..self.0.info() }
    }
    fn read(&self, io: &IoCtx, off: u64, bufs: blockdev::IoBufs, tag: IoTag) -> IoFuture {
        self.0.read(io, off, bufs, tag)
    }
    fn write(&self, io: &IoCtx, off: u64, bufs: blockdev::IoBufs, fua: bool, tag: IoTag) -> IoFuture {
        self.0.write(io, off, bufs, fua, tag)
    }
    fn flush(&self, io: &IoCtx, tag: IoTag) -> IoFuture {
        self.0.flush(io, tag)
    }
    fn discard(&self, io: &IoCtx, off: u64, len: u64, tag: IoTag) -> IoFuture {
        self.0.discard(io, off, len, tag)
    }
    fn write_zeroes(&self, _io: &IoCtx, _off: u64, _len: u64, _unmap: bool, _tag: IoTag) -> IoFuture {
        blockdev::ready(Err(blockdev::Error::new(ErrorKind::Unsupported, "no write-zeroes")))
    }
}

#[test]
fn pool_on_a_device_without_write_zeroes_zero_fills_every_first_write() {
    let io = IoCtx::new().unwrap();
    let disk = mem(8 << 20);
    // Garbage where the data blocks will be.
    write(&io, &*disk, 1 << 20, &vec![0xff; 7 << 20], false).unwrap();
    let dev: Arc<dyn BlockDev> = Arc::new(NoWriteZeroes(disk));
    let pool = create(&io, dev);
    let blocks = pool.info().data_blocks;
    io.block_on(pool.create_volume(&io, "a", blocks * BS)).unwrap();
    let a = pool.volume("a").unwrap();
    for b in 0..blocks {
        write(&io, &a, b * BS + 512, &[1; 512], false).unwrap();
        let got = read(&io, &a, b * BS, 2048);
        assert_eq!(got, [vec![0; 512], vec![1; 512], vec![0; 1024]].concat(), "block {b}");
    }
}

#[test]
fn full_pool_grows_onto_a_larger_file_and_accepts_writes_again() {
    let io = IoCtx::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.img");
    let f = blockdev::RawFile::create(&path, 8 << 20, blockdev::OpenOptions::default()).unwrap();
    let pool = create(&io, Arc::new(f));
    let blocks = pool.info().data_blocks;
    io.block_on(pool.create_volume(&io, "a", 1 << 30)).unwrap();
    let a = pool.volume("a").unwrap();
    for b in 0..blocks {
        write(&io, &a, b * BS, &[1; 512], false).unwrap();
    }
    assert_eq!(write(&io, &a, blocks * BS, &[2; 512], false).unwrap_err().kind(), ErrorKind::NoSpace);
    flush(&io, &a);
    drop((a, pool));
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(16 << 20).unwrap();
    let f = blockdev::RawFile::open(&path, blockdev::OpenOptions::default()).unwrap();
    let pool = io.block_on(Pool::open(&io, Arc::new(f), None)).unwrap();
    assert_eq!(io.block_on(pool.grow(&io)).unwrap(), blocks + 128);
    let a = pool.volume("a").unwrap();
    write(&io, &a, blocks * BS + 512, &[2; 512], false).unwrap();
    assert_eq!(read(&io, &a, blocks * BS, 1024), [vec![0; 512], vec![2; 512]].concat());
    flush(&io, &a);
    assert!(pool.audit().errors.is_empty());
    drop((a, pool));
    let f = blockdev::RawFile::open(&path, blockdev::OpenOptions::default()).unwrap();
    let pool = io.block_on(Pool::open(&io, Arc::new(f), None)).unwrap();
    assert_eq!(pool.info().data_blocks, blocks + 128);
    assert_eq!(read(&io, &pool.volume("a").unwrap(), blocks * BS, 1024), [vec![0; 512], vec![2; 512]].concat());
}

#[test]
fn many_concurrent_first_writes_past_the_fresh_reservation_all_land() {
    // 128 concurrent 1 MiB first writes need 2048 blocks: past the 1024 fresh blocks a commit
    // reserves, so many of them wait for commits while others finish. (The waker-list growth
    // this once caused showed only under `blkctl bench` at 400M; this test does not reproduce
    // it, it pins that everything lands.)
    // On a file, so that completions arrive later and tasks really wait.
    let io = IoCtx::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = blockdev::RawFile::create(dir.path().join("pool.img"), 160 << 20, blockdev::OpenOptions::default());
    let pool = create(&io, Arc::new(f.unwrap()));
    io.block_on(pool.create_volume(&io, "a", 128 << 20)).unwrap();
    let a: Arc<dyn BlockDev> = Arc::new(pool.volume("a").unwrap());
    let futs: Vec<IoFuture> = (0..128u64)
        .map(|i| {
            let mut b = blockdev::SharedBuf::from_slice(&vec![i as u8 + 1; 1 << 20]);
            a.write(&io, i << 20, b.io(), i % 7 == 0, IoTag::DATA)
        })
        .collect();
    io.block_on(blockdev::join::try_join_all(futs)).unwrap();
    flush(&io, &*a);
    for i in [0u64, 77, 127] {
        assert_eq!(read(&io, &*a, i << 20, 4096), vec![i as u8 + 1; 4096]);
    }
    assert_eq!(pool.info().used_blocks, 2048);
}
