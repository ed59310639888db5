//! Concurrency: queue-depth workloads on several volumes and snapshots of one pool at once, on
//! one thread and from several threads (cross-thread commit and busy-block waits), each volume
//! checked by its own `ModelDev`; the pool audits clean afterwards.

mod thin_common;

use std::sync::Arc;

use blockdev::testdev::workload::{self, Weights, WorkloadConfig};
use blockdev::testdev::ModelDev;
use blockdev::{BlockDev, IoCtx};
use thin_common::*;

fn workload_cfg(seed: u64) -> WorkloadConfig {
    WorkloadConfig {
        seed,
        ops: 600,
        queue_depth: 8,
        max_len: 160 << 10,
        fua_percent: 5,
        weights: Weights { read: 40, write: 40, flush: 4, discard: 8, write_zeroes: 8 },
        ..Default::default()
    }
}

#[test]
fn workloads_on_volumes_and_a_snapshot_on_one_thread_match_their_models() {
    let io = IoCtx::new().unwrap();
    let pool = create(&io, mem(64 << 20));
    let mut models = Vec::new();
    for i in 0..3 {
        let name = format!("w{i}");
        io.block_on(pool.create_volume(&io, &name, 8 << 20)).unwrap();
        models.push(ModelDev::new(Arc::new(pool.volume(&name).unwrap())));
    }
    io.block_on(pool.snapshot(&io, "w0", "w0s")).unwrap();
    models.push(ModelDev::new(Arc::new(pool.volume("w0s").unwrap())));
    let handles: Vec<_> = models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (io2, dev): (IoCtx, Arc<dyn BlockDev>) = (io.clone(), Arc::new(m.clone()));
            io.spawn(async move { workload::run(&io2, dev, &workload_cfg(i as u64 + 1)).await })
        })
        .collect();
    for h in handles {
        io.block_on(h).unwrap();
    }
    for m in &models {
        io.block_on(m.verify_all(&**m.inner(), &io)).unwrap();
    }
    let a = pool.audit();
    assert!(a.errors.is_empty() && a.leaks.is_empty(), "{a:?}");
}

#[test]
fn snapshots_of_one_origin_written_from_several_threads_match_their_models() {
    for round in 0..3u64 {
        let io = IoCtx::new().unwrap();
        let pool = create(&io, mem(64 << 20));
        io.block_on(pool.create_volume(&io, "base", 8 << 20)).unwrap();
        {
            let b = pool.volume("base").unwrap();
            write(&io, &b, 0, &vec![0u8; 8 << 20], false).unwrap();
            flush(&io, &b);
        }
        for i in 0..3 {
            io.block_on(pool.snapshot(&io, "base", &format!("t{i}"))).unwrap();
        }
        let threads: Vec<_> = (0..3u64)
            .map(|i| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    let io = IoCtx::new().unwrap();
                    let model = ModelDev::new(Arc::new(pool.volume(&format!("t{i}")).unwrap()));
                    io.block_on(workload::run(&io, Arc::new(model.clone()), &workload_cfg(round * 10 + i))).unwrap();
                    io.block_on(model.verify_all(&**model.inner(), &io)).unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let a = pool.audit();
        assert!(a.errors.is_empty() && a.leaks.is_empty(), "{a:?}");
    }
}
