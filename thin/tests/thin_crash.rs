//! Crash safety of the thin pool: CrashDev under the pool device(s), seeded workloads across
//! volumes, crashes at every commit (flush) boundary and at random writes, in every crash mode.
//! After each, the pool opens, the checker finds no corruption, and every stable write reads
//! back. Plus the orderings dm-thin got wrong.

mod thin_common;

use std::sync::Arc;

use blockdev::testdev::workload::{self, Weights, WorkloadConfig};
use blockdev::testdev::{CrashDev, CrashMode, ModelDev};
use blockdev::{BlockDev, ErrorKind, IoCtx, IoFuture};
use thin::{check, Pool, PoolConfig};
use thin_common::*;

const VOLS: [u64; 3] = [2 << 20, 3 << 20, 1 << 20];

fn cfg(seed: u64, ops: u64, size: u64) -> WorkloadConfig {
    WorkloadConfig {
        seed,
        ops,
        queue_depth: 4,
        max_len: 160 << 10,
        fua_percent: 15,
        weights: Weights { read: 25, write: 50, flush: 7, discard: 9, write_zeroes: 9 },
        region: Some((0, size)),
        ..Default::default()
    }
}

struct Run {
    disk: Arc<dyn BlockDev>,
    crash: CrashDev,
    models: Vec<ModelDev>,
}

/// A pool on a fresh disk under a CrashDev, with committed volumes and a snapshot.
fn setup(io: &IoCtx) -> (Run, Pool) {
    let disk = mem(8 << 20);
    let crash = CrashDev::new(disk.clone());
    let pool = create(io, Arc::new(crash.clone()));
    for (i, size) in VOLS.iter().enumerate() {
        io.block_on(pool.create_volume(io, &format!("v{i}"), *size)).unwrap();
    }
    let models = (0..VOLS.len()).map(|i| ModelDev::new(Arc::new(pool.volume(&format!("v{i}")).unwrap()))).collect();
    (Run { disk, crash, models }, pool)
}

/// Run the workloads (they stop at the first error, e.g. once the disk has crashed).
fn run_workloads(io: &IoCtx, run: &Run, seed: u64, ops: u64) -> blockdev::Result<()> {
    let futs: Vec<IoFuture> = run
        .models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let dev: Arc<dyn BlockDev> = Arc::new(m.clone());
            let c = cfg(seed * 100 + i as u64, ops, VOLS[i]);
            let io2 = io.clone();
            Box::pin(async move { workload::run(&io2, dev, &c).await.map(|_| ()) }) as IoFuture
        })
        .collect();
    io.block_on(blockdev::join::try_join_all(futs))
}

/// Reopen the crashed disk, check it and compare every volume with its model.
fn verify(io: &IoCtx, run: &Run, what: &str) {
    let report = io.block_on(check::check(io, run.disk.clone(), None, false)).unwrap();
    assert!(report.errors.is_empty(), "{what}: checker found corruption: {:?}", report.errors);
    let pool = io.block_on(Pool::open(io, run.disk.clone(), None)).unwrap_or_else(|e| panic!("{what}: open: {e}"));
    for (i, m) in run.models.iter().enumerate() {
        let v = pool.volume(&format!("v{i}")).unwrap();
        io.block_on(m.verify_after_crash(&v, io)).unwrap_or_else(|e| panic!("{what}: volume v{i}: {e}"));
    }
}

fn modes(seed: u64) -> [CrashMode; 4] {
    [
        CrashMode::KeepNone,
        CrashMode::RandomSubset { seed },
        CrashMode::RandomPrefix { seed },
        CrashMode::TearOne { seed, granularity: 512 },
    ]
}

#[test]
fn crash_at_every_commit_boundary_keeps_stable_writes() {
    let io = IoCtx::new().unwrap();
    for seed in 1..=2u64 {
        let (run, _pool) = setup(&io);
        let base = run.crash.flushes();
        run_workloads(&io, &run, seed, 150).unwrap();
        let total = run.crash.flushes() - base;
        assert!(total > 5, "seed {seed}: only {total} flushes");
        for n in 1..=total {
            let mode = modes(seed + n)[(n % 4) as usize];
            let (run, _pool) = setup(&io);
            run.crash.crash_at_flush(n, mode);
            let res = run_workloads(&io, &run, seed, 150);
            assert!(res.is_err() && run.crash.is_crashed(), "seed {seed} flush {n}: no crash");
            verify(&io, &run, &format!("seed {seed} flush {n}/{total} {mode:?}"));
        }
    }
}

#[test]
fn crash_at_random_writes_of_a_long_workload_keeps_stable_writes() {
    let io = IoCtx::new().unwrap();
    // 3 volumes x 3,400 ops: about 10,000 operations per run.
    let ops = 3400;
    let (run, _pool) = setup(&io);
    let base = run.crash.writes();
    run_workloads(&io, &run, 77, ops).unwrap();
    let total = run.crash.writes() - base;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for k in 0..6u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = 1 + x % total;
        let mode = modes(k)[(k % 4) as usize];
        let (run, _pool) = setup(&io);
        run.crash.crash_at_write(n, mode);
        assert!(run_workloads(&io, &run, 77, ops).is_err());
        verify(&io, &run, &format!("write {n}/{total} {mode:?}"));
    }
}

#[test]
fn data_is_flushed_before_the_commit_that_maps_it() {
    // Separate metadata and data devices on one power supply: a commit that flushed only the
    // metadata device would map blocks whose data was lost.
    let io = IoCtx::new().unwrap();
    let (meta, data) = (mem(1 << 20), mem(8 << 20));
    let (cm, cd) = (CrashDev::new(meta.clone()), CrashDev::new(data.clone()));
    CrashDev::group(&[cm.clone(), cd.clone()]);
    let pool = io
        .block_on(Pool::create(&io, Arc::new(cm.clone()), Some(Arc::new(cd.clone())), PoolConfig::default()))
        .unwrap();
    io.block_on(pool.create_volume(&io, "a", 1 << 20)).unwrap();
    let a = pool.volume("a").unwrap();
    write(&io, &a, 4096, &[0x42; 8192], false).unwrap();
    flush(&io, &a);
    write(&io, &a, BS, &[0x43; 512], false).unwrap();
    io.block_on(cm.crash(&io, CrashMode::KeepNone)).unwrap();
    drop((a, pool));
    let pool = io.block_on(Pool::open(&io, meta, Some(data))).unwrap();
    let a = pool.volume("a").unwrap();
    assert_eq!(read(&io, &a, 4096, 8192), vec![0x42; 8192]);
    assert_eq!(read(&io, &a, BS, 512), vec![0; 512], "an unflushed provisioning write survived");
}

#[test]
fn fua_write_completes_only_after_its_mapping_is_committed() {
    let io = IoCtx::new().unwrap();
    let disk = mem(8 << 20);
    let crash = CrashDev::new(disk.clone());
    let pool = create(&io, Arc::new(crash.clone()));
    io.block_on(pool.create_volume(&io, "a", 1 << 20)).unwrap();
    let a = pool.volume("a").unwrap();
    write(&io, &a, 0, &[1; 4096], false).unwrap(); // provisions block 0, not committed
    write(&io, &a, 8192, &[2; 4096], true).unwrap(); // FUA into the same uncommitted block
    write(&io, &a, 3 * BS, &[3; 4096], true).unwrap(); // FUA provisioning a new block
    io.block_on(crash.crash(&io, CrashMode::KeepNone)).unwrap();
    drop((a, pool));
    let pool = io.block_on(Pool::open(&io, disk, None)).unwrap();
    let a = pool.volume("a").unwrap();
    assert_eq!(read(&io, &a, 8192, 4096), vec![2; 4096]);
    assert_eq!(read(&io, &a, 3 * BS, 4096), vec![3; 4096]);
}

#[test]
fn running_out_of_metadata_space_fails_the_commit_and_keeps_the_pool() {
    let io = IoCtx::new().unwrap();
    // 16 metadata pages: 2 superblocks, room for little more than a few mapping pages.
    let (meta, data) = (mem(64 << 10), mem(512 << 20));
    let pool = io.block_on(Pool::create(&io, meta.clone(), Some(data.clone()), PoolConfig::default())).unwrap();
    io.block_on(pool.create_volume(&io, "a", 512 << 20)).unwrap();
    let a = pool.volume("a").unwrap();
    write(&io, &a, 0, &[7; 512], true).unwrap();
    // Touch blocks far apart so every write dirties another mapping page.
    let stride = 507 * BS;
    let mut failed = None;
    for i in 1..16u64 {
        if let Err(e) = write(&io, &a, i * stride, &[i as u8; 512], true) {
            failed = Some(e);
            break;
        }
    }
    let err = failed.expect("metadata never filled up");
    assert_eq!(err.kind(), ErrorKind::NoSpace, "{err}");
    drop((a, pool));
    let report = io.block_on(check::check(&io, meta.clone(), Some(data.clone()), false)).unwrap();
    assert_eq!(report.exit_code(), 0, "{report:?}");
    let pool = io.block_on(Pool::open(&io, meta, Some(data))).unwrap();
    assert_eq!(read(&io, &pool.volume("a").unwrap(), 0, 512), vec![7; 512]);
}
