//! Model-based tests: long seeded random workloads against `RawFile` and `MemDisk` must agree
//! with `ModelDev` on every read, at queue depth 1 and 16 (the foundation issue's acceptance).

use std::sync::Arc;

use blockdev::testdev::workload::{self, Weights, WorkloadConfig};
use blockdev::testdev::{FaultDev, ModelDev};
use blockdev::{BlockDev, ErrorKind, IoCtx, MemDisk, OpenOptions, RawFile};

const DEV_SIZE: u64 = 4 << 20;

/// Small requests keep 100,000 operations to a few seconds in a debug build.
fn config(seed: u64, ops: u64, queue_depth: usize) -> WorkloadConfig {
    WorkloadConfig {
        seed,
        ops,
        queue_depth,
        max_len: 16 << 10,
        fua_percent: 10,
        weights: Weights { read: 45, write: 40, flush: 5, discard: 5, write_zeroes: 5 },
        ..Default::default()
    }
}

fn run_and_verify(io: &IoCtx, model: &ModelDev, cfg: &WorkloadConfig) {
    let stats = io
        .block_on(workload::run(io, Arc::new(model.clone()), cfg))
        .unwrap_or_else(|e| panic!("seed {} qd {}: {e}", cfg.seed, cfg.queue_depth));
    assert_eq!(stats.reads + stats.writes + stats.flushes + stats.discards + stats.write_zeroes, cfg.ops);
    assert!(stats.reads > cfg.ops / 3 && stats.writes > cfg.ops / 3, "{stats:?}");
    io.block_on(model.verify_all(&**model.inner(), io)).unwrap();
}

fn temp_raw(size: u64) -> (tempfile::TempDir, RawFile) {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = RawFile::create(dir.path().join("model.img"), size, OpenOptions::default()).expect("create raw file");
    (dir, dev)
}

#[test]
fn hundred_thousand_random_ops_on_memdisk_agree_with_model() {
    let io = IoCtx::new().unwrap();
    let model = ModelDev::new(Arc::new(MemDisk::new(DEV_SIZE).unwrap()));
    run_and_verify(&io, &model, &config(11, 50_000, 1));
    run_and_verify(&io, &model, &config(12, 50_000, 16));
    assert!(model.stats().sectors_checked > 100_000);
}

#[test]
fn hundred_thousand_random_ops_on_raw_file_agree_with_model() {
    let (_dir, raw) = temp_raw(DEV_SIZE);
    let io = IoCtx::new().unwrap();
    let model = ModelDev::new(Arc::new(raw));
    run_and_verify(&io, &model, &config(21, 50_000, 1));
    run_and_verify(&io, &model, &config(22, 50_000, 16));
}

#[test]
fn overlapping_writes_in_flight_on_raw_file_agree_with_model() {
    let (_dir, raw) = temp_raw(1 << 20);
    let io = IoCtx::new().unwrap();
    let model = ModelDev::new(Arc::new(raw));
    let cfg = WorkloadConfig { allow_overlap: true, ..config(31, 5_000, 16) };
    run_and_verify(&io, &model, &cfg);
}

#[test]
fn large_requests_up_to_128k_agree_with_model() {
    let (_dir, raw) = temp_raw(DEV_SIZE);
    let io = IoCtx::new().unwrap();
    let model = ModelDev::new(Arc::new(raw));
    let cfg = WorkloadConfig { min_len: 4096, max_len: 128 << 10, align: 4096, ..config(41, 2_000, 8) };
    run_and_verify(&io, &model, &cfg);
}

#[test]
fn silent_corruption_below_the_model_is_caught_with_its_sector() {
    let io = IoCtx::new().unwrap();
    let fault = Arc::new(FaultDev::new(Arc::new(MemDisk::new(1 << 20).unwrap())));
    let model = ModelDev::new(fault.clone());
    // Bit 3 of sector 100 rots: every read of it comes back wrong.
    fault.add_bit_flip(100, 3);
    let cfg = WorkloadConfig {
        region: Some((100 * 512, 512)),
        weights: Weights { read: 1, write: 0, flush: 0, discard: 0, write_zeroes: 0 },
        ..config(51, 10, 1)
    };
    let err = io.block_on(workload::run(&io, Arc::new(model.clone()), &cfg)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("sector 100 (byte 51200)"), "{err}");
    assert!(fault.injected() >= 1);
}

#[test]
fn lost_write_is_caught_by_verify_all() {
    let io = IoCtx::new().unwrap();
    let mem = Arc::new(MemDisk::new(1 << 20).unwrap());
    let model = ModelDev::new(mem.clone());
    let cfg = WorkloadConfig {
        weights: Weights { read: 0, write: 1, flush: 0, discard: 0, write_zeroes: 0 },
        ..config(61, 50, 1)
    };
    io.block_on(workload::run(&io, Arc::new(model.clone()), &cfg)).unwrap();
    // Undo some write behind the model's back: the disk "forgot" it.
    io.block_on(mem.write_zeroes(&io, 0, 1 << 20, false, blockdev::IoTag::DATA)).unwrap();
    let err = io.block_on(model.verify_all(&*mem, &io)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("expected write #"), "{err}");
}
