//! Writable snapshots: they share blocks by reference count, a write to a shared block copies
//! it first, either side can be deleted, and random workloads on origins and snapshots match
//! their models. The checker's exit codes on a clean and a corrupted pool.

mod thin_common;

use std::sync::Arc;

use blockdev::testdev::workload::{self, Weights, WorkloadConfig};
use blockdev::testdev::ModelDev;
use blockdev::{BlockDev, IoCtx, IoTag, SharedBuf};
use thin::{check, format::PAGE_SIZE, Pool};
use thin_common::*;

#[test]
fn snapshot_keeps_the_origin_data_of_its_moment_and_both_stay_writable() {
    let io = IoCtx::new().unwrap();
    let pool = create(&io, mem(32 << 20));
    io.block_on(pool.create_volume(&io, "o", 4 << 20)).unwrap();
    let o = pool.volume("o").unwrap();
    write(&io, &o, 0, &vec![1; 2 * BS as usize], false).unwrap();
    io.block_on(pool.snapshot(&io, "o", "s")).unwrap();
    assert_eq!(pool.info().used_blocks, 2, "a snapshot copies no data");
    let s = pool.volume("s").unwrap();
    write(&io, &o, 512, &[2; 512], false).unwrap();
    write(&io, &s, BS, &[3; 512], false).unwrap();
    assert_eq!(read(&io, &o, 0, 1536), [vec![1; 512], vec![2; 512], vec![1; 512]].concat());
    assert_eq!(read(&io, &s, 0, 1024), vec![1; 1024]);
    assert_eq!(read(&io, &s, BS, 1024), [vec![3; 512], vec![1; 512]].concat());
    assert_eq!(read(&io, &o, BS, 1024), vec![1; 1024]);
    assert_eq!(pool.info().used_blocks, 4);
    // A snapshot of the snapshot.
    io.block_on(pool.snapshot(&io, "s", "s2")).unwrap();
    let s2 = pool.volume("s2").unwrap();
    assert_eq!(read(&io, &s2, BS, 512), vec![3; 512]);
    assert!(pool.audit().errors.is_empty() && pool.audit().leaks.is_empty());
}

#[test]
fn deleting_either_side_frees_only_unshared_blocks() {
    let io = IoCtx::new().unwrap();
    let dev = mem(32 << 20);
    let pool = create(&io, dev.clone());
    io.block_on(pool.create_volume(&io, "o", 4 << 20)).unwrap();
    let o = pool.volume("o").unwrap();
    write(&io, &o, 0, &vec![1; 3 * BS as usize], false).unwrap();
    io.block_on(pool.snapshot(&io, "o", "s")).unwrap();
    write(&io, &o, 0, &[9; 512], false).unwrap(); // o's block 0 is now its own copy
    drop(o);
    io.block_on(pool.remove_volume(&io, "o")).unwrap();
    assert_eq!(pool.info().used_blocks, 3);
    let s = pool.volume("s").unwrap();
    assert_eq!(read(&io, &s, 0, 3 * BS as usize), vec![1; 3 * BS as usize]);
    drop(s);
    io.block_on(pool.remove_volume(&io, "s")).unwrap();
    assert_eq!(pool.info().used_blocks, 0);
    let report = io.block_on(check::check(&io, dev, None, false)).unwrap();
    assert_eq!(report.exit_code(), 0);
}

#[test]
fn random_workloads_on_origin_and_snapshots_match_their_models() {
    let io = IoCtx::new().unwrap();
    let dev = mem(32 << 20);
    let pool = create(&io, dev.clone());
    let size = 4u64 << 20;
    io.block_on(pool.create_volume(&io, "v0", size)).unwrap();
    let mut models = vec![ModelDev::new(Arc::new(pool.volume("v0").unwrap()))];
    let cfg = |seed| WorkloadConfig {
        seed,
        ops: 300,
        queue_depth: 4,
        max_len: 128 << 10,
        weights: Weights { read: 35, write: 45, flush: 4, discard: 8, write_zeroes: 8 },
        ..Default::default()
    };
    for round in 1..=3u64 {
        for (i, m) in models.iter().enumerate() {
            let dev: Arc<dyn BlockDev> = Arc::new(m.clone());
            io.block_on(workload::run(&io, dev, &cfg(round * 10 + i as u64)))
                .unwrap_or_else(|e| panic!("round {round} volume {i}: {e}"));
        }
        // Snapshot the newest volume; its model starts from what the origin holds now.
        let origin = format!("v{}", models.len() - 1);
        let name = format!("v{}", models.len());
        flush(&io, models.last().unwrap());
        io.block_on(pool.snapshot(&io, &origin, &name)).unwrap();
        let snap: Arc<dyn BlockDev> = Arc::new(pool.volume(&name).unwrap());
        let m = io.block_on(models.last().unwrap().recover(&io, snap)).unwrap();
        models.push(m);
        assert!(pool.audit().errors.is_empty(), "round {round}: {:?}", pool.audit());
    }
    for m in &models {
        flush(&io, m);
    }
    let reopened = io.block_on(Pool::open(&io, dev.clone(), None)).unwrap();
    for (i, m) in models.iter().enumerate() {
        io.block_on(m.verify_all(&reopened.volume(&format!("v{i}")).unwrap(), &io)).unwrap();
    }
    assert_eq!(io.block_on(check::check(&io, dev, None, false)).unwrap().exit_code(), 0);
}

#[test]
fn checker_reports_a_damaged_metadata_page_as_corruption() {
    let io = IoCtx::new().unwrap();
    let dev = mem(16 << 20);
    let pool = create(&io, dev.clone());
    io.block_on(pool.create_volume(&io, "a", 1 << 20)).unwrap();
    write(&io, &pool.volume("a").unwrap(), 0, &[1; 512], true).unwrap();
    drop(pool);
    // Flip a byte in every metadata page past the superblocks that holds anything.
    for page in 2..256u64 {
        let mut b = SharedBuf::new(PAGE_SIZE);
        io.block_on(dev.read(&io, page * PAGE_SIZE as u64, b.io(), IoTag::DATA)).unwrap();
        if b.bytes().iter().any(|&x| x != 0) {
            b.bytes_mut()[100] ^= 0xff;
            io.block_on(dev.write(&io, page * PAGE_SIZE as u64, b.io(), false, IoTag::DATA)).unwrap();
        }
    }
    let report = io.block_on(check::check(&io, dev.clone(), None, true)).unwrap();
    assert_eq!(report.exit_code(), 2, "{report:?}");
    assert!(io.block_on(Pool::open(&io, dev, None)).is_err());
}
