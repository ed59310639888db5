//! Crash and fault tests: after `CrashDev::crash()` in every mode, flushed (and FUA) writes are
//! always there and unflushed ones are old or new, never anything else; torn writes tear at the
//! chosen granularity; a crashed file reopened from disk holds exactly the survivors. Plus the
//! behaviours `FaultDev` promises (Nth op, tag prefixes, bad sectors, bit flips, ENOSPC).

use std::sync::Arc;

use blockdev::testdev::workload::{self, Weights, WorkloadConfig};
use blockdev::testdev::{CrashDev, CrashMode, FaultDev, FaultError, FaultRule, ModelDev, OpKind, TornWrite};
use blockdev::{BlockDev, ErrorKind, IoClass, IoCtx, IoTag, MemDisk, OpenOptions, RawFile, SharedBuf};

const SIZE: u64 = 1 << 20;

fn modes(seed: u64) -> Vec<CrashMode> {
    vec![
        CrashMode::KeepNone,
        CrashMode::KeepAll,
        CrashMode::Prefix(3),
        CrashMode::RandomPrefix { seed },
        CrashMode::RandomSubset { seed },
        CrashMode::TearOne { seed, granularity: 512 },
        CrashMode::TearOne { seed, granularity: 4096 },
    ]
}

fn workload_cfg(seed: u64, ops: u64) -> WorkloadConfig {
    WorkloadConfig {
        seed,
        ops,
        queue_depth: 4,
        max_len: 32 << 10,
        fua_percent: 15,
        weights: Weights { read: 30, write: 50, flush: 5, discard: 7, write_zeroes: 8 },
        ..Default::default()
    }
}

fn write(io: &IoCtx, dev: &dyn BlockDev, off: u64, data: &[u8], fua: bool) {
    let mut b = SharedBuf::from_slice(data);
    io.block_on(dev.write(io, off, b.io(), fua, IoTag::DATA)).unwrap();
}

fn read(io: &IoCtx, dev: &dyn BlockDev, off: u64, len: usize) -> Vec<u8> {
    let mut b = SharedBuf::new(len);
    io.block_on(dev.read(io, off, b.io(), IoTag::DATA)).unwrap();
    b.bytes().to_vec()
}

fn temp_file(dir: &tempfile::TempDir, size: u64) -> std::path::PathBuf {
    let path = dir.path().join("crash.img");
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    path
}

/// Run a random workload through model → crash → `inner`, crash in `mode`, verify `inner`.
fn workload_then_crash(io: &IoCtx, inner: Arc<dyn BlockDev>, seed: u64, mode: CrashMode) -> ModelDev {
    let crash = CrashDev::new(inner.clone());
    let model = ModelDev::new(Arc::new(crash.clone()));
    io.block_on(workload::run(io, Arc::new(model.clone()), &workload_cfg(seed, 400)))
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    // Whatever the last op was, leave unflushed writes (one overlapping another) to lose.
    for (i, off) in [0u64, 8192, 4096].into_iter().enumerate() {
        write(io, &model, off, &vec![0xc0 + i as u8; 8192], false);
    }
    let report = io.block_on(crash.crash(io, mode)).unwrap();
    assert!(report.volatile > 0, "seed {seed}: the workload left nothing volatile");
    assert!(crash.is_crashed());
    io.block_on(model.verify_after_crash(&*inner, io)).unwrap_or_else(|e| panic!("seed {seed} {mode:?}: {e}"));
    model
}

#[test]
fn every_crash_mode_on_memdisk_keeps_flushed_and_old_or_new() {
    let io = IoCtx::new().unwrap();
    for seed in 1..=4 {
        for mode in modes(seed) {
            let mem: Arc<dyn BlockDev> = Arc::new(MemDisk::new(SIZE).unwrap());
            workload_then_crash(&io, mem, seed, mode);
        }
    }
}

#[test]
fn every_crash_mode_on_raw_file_reopened_keeps_flushed_and_old_or_new() {
    let io = IoCtx::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (i, mode) in modes(9).into_iter().enumerate() {
        let path = temp_file(&dir, SIZE);
        let raw: Arc<dyn BlockDev> = Arc::new(RawFile::open(&path, OpenOptions::default()).unwrap());
        let model = workload_then_crash(&io, raw.clone(), 100 + i as u64, mode);
        drop(raw);
        // The crashed device let go of the file: it reopens writable (the lock is free).
        let reopened = RawFile::open(&path, OpenOptions::default()).unwrap();
        io.block_on(model.verify_after_crash(&reopened, &io)).unwrap_or_else(|e| panic!("{mode:?} reopened: {e}"));
    }
}

#[test]
fn ops_after_a_crash_fail_with_io() {
    let io = IoCtx::new().unwrap();
    let crash = CrashDev::new(Arc::new(MemDisk::new(SIZE).unwrap()));
    io.block_on(crash.crash(&io, CrashMode::KeepAll)).unwrap();
    let mut b = SharedBuf::new(512);
    assert_eq!(io.block_on(crash.read(&io, 0, b.io(), IoTag::DATA)).unwrap_err().kind(), ErrorKind::Io);
    assert_eq!(io.block_on(crash.write(&io, 0, b.io(), false, IoTag::DATA)).unwrap_err().kind(), ErrorKind::Io);
    assert_eq!(io.block_on(crash.flush(&io, IoTag::DATA)).unwrap_err().kind(), ErrorKind::Io);
    assert!(io.block_on(crash.crash(&io, CrashMode::KeepAll)).is_err());
}

#[test]
fn keep_none_loses_unflushed_writes_but_not_flushed_or_fua_ones() {
    let io = IoCtx::new().unwrap();
    let mem = Arc::new(MemDisk::new(SIZE).unwrap());
    let crash = CrashDev::new(mem.clone());
    write(&io, &crash, 0, &[1; 4096], false);
    io.block_on(crash.flush(&io, IoTag::DATA)).unwrap();
    write(&io, &crash, 0, &[2; 512], false);
    write(&io, &crash, 8192, &[3; 4096], true);
    write(&io, &crash, 16384, &[4; 4096], false);
    // Before the crash the volatile writes read back through the device, not below it.
    assert_eq!(read(&io, &crash, 0, 512), vec![2; 512]);
    assert_eq!(read(&io, &*mem, 0, 512), vec![1; 512]);
    assert_eq!(crash.volatile_writes(), 2);
    let report = io.block_on(crash.crash(&io, CrashMode::KeepNone)).unwrap();
    assert_eq!((report.volatile, report.kept), (2, 0));
    assert_eq!(read(&io, &*mem, 0, 4096), vec![1; 4096], "flushed data survives");
    assert_eq!(read(&io, &*mem, 8192, 4096), vec![3; 4096], "FUA data survives");
    assert_eq!(read(&io, &*mem, 16384, 4096), vec![0; 4096], "unflushed data is lost");
}

#[test]
fn fua_write_is_not_undone_by_an_older_volatile_write() {
    let io = IoCtx::new().unwrap();
    let mem = Arc::new(MemDisk::new(SIZE).unwrap());
    let crash = CrashDev::new(mem.clone());
    write(&io, &crash, 0, &[5; 4096], false);
    write(&io, &crash, 0, &[6; 4096], true);
    assert_eq!(read(&io, &crash, 0, 4096), vec![6; 4096]);
    io.block_on(crash.crash(&io, CrashMode::KeepAll)).unwrap();
    assert_eq!(read(&io, &*mem, 0, 4096), vec![6; 4096]);
}

fn torn_write_tears_at(granularity: u64) {
    let io = IoCtx::new().unwrap();
    for seed in 0..8 {
        let mem = Arc::new(MemDisk::new(SIZE).unwrap());
        let crash = CrashDev::new(mem.clone());
        write(&io, &crash, 0, &[0xaa; 32768], false);
        io.block_on(crash.flush(&io, IoTag::DATA)).unwrap();
        write(&io, &crash, 0, &[0xbb; 32768], false);
        let report = io.block_on(crash.crash(&io, CrashMode::TearOne { seed, granularity })).unwrap();
        let TornWrite { range, kept } = report.torn.expect("one write is torn");
        assert_eq!(range, (0, 32768));
        let after = read(&io, &*mem, 0, 32768);
        let blocks: Vec<u8> = after
            .chunks(granularity as usize)
            .map(|b| {
                assert!(b.iter().all(|&x| x == b[0]), "seed {seed}: a {granularity}-byte block is mixed");
                b[0]
            })
            .collect();
        assert!(blocks.contains(&0xaa) && blocks.contains(&0xbb), "seed {seed}: not torn: {blocks:x?}");
        let new_bytes = blocks.iter().filter(|&&b| b == 0xbb).count() as u64 * granularity;
        assert_eq!(new_bytes, kept.iter().map(|k| k.1).sum::<u64>(), "seed {seed}: report matches the disk");
    }
}

#[test]
fn torn_write_tears_at_512_bytes() {
    torn_write_tears_at(512);
}

#[test]
fn torn_write_tears_at_4096_bytes() {
    torn_write_tears_at(4096);
}

#[test]
fn crashed_file_reopened_holds_exactly_the_survivors() {
    let io = IoCtx::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(&dir, 64 << 10);
    let raw: Arc<dyn BlockDev> = Arc::new(RawFile::open(&path, OpenOptions::default()).unwrap());
    let crash = CrashDev::new(raw.clone());
    write(&io, &crash, 0, &[1; 4096], false);
    io.block_on(crash.flush(&io, IoTag::DATA)).unwrap();
    write(&io, &crash, 4096, &[2; 4096], false);
    write(&io, &crash, 8192, &[3; 4096], false);
    io.block_on(crash.write_zeroes(&io, 0, 1024, false, IoTag::DATA)).unwrap();
    io.block_on(crash.crash(&io, CrashMode::Prefix(1))).unwrap();
    drop((crash, raw));
    let file = std::fs::read(&path).unwrap();
    let mut want = vec![0u8; 64 << 10];
    want[..4096].fill(1);
    want[4096..8192].fill(2);
    assert!(file == want, "the file holds the flushed write and the first volatile one, nothing else");
    // The lock was released with the device: a writable reopen works.
    let reopened = RawFile::open(&path, OpenOptions::default()).unwrap();
    assert_eq!(read(&io, &reopened, 4096, 4096), vec![2; 4096]);
}

#[test]
fn crash_at_every_flush_keeps_what_was_flushed() {
    let io = IoCtx::new().unwrap();
    let cfg = WorkloadConfig { queue_depth: 1, ..workload_cfg(77, 300) };
    // A clean run counts the flush points.
    let probe = CrashDev::new(Arc::new(MemDisk::new(SIZE).unwrap()));
    io.block_on(workload::run(&io, Arc::new(ModelDev::new(Arc::new(probe.clone()))), &cfg)).unwrap();
    let flushes = probe.flushes();
    assert!(flushes >= 5, "only {flushes} flushes");
    for k in 1..=flushes {
        let mem: Arc<dyn BlockDev> = Arc::new(MemDisk::new(SIZE).unwrap());
        let crash = CrashDev::new(mem.clone());
        crash.crash_at_flush(k, CrashMode::RandomSubset { seed: k });
        let model = ModelDev::new(Arc::new(crash.clone()));
        let err = io.block_on(workload::run(&io, Arc::new(model.clone()), &cfg)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "flush {k}: {err}");
        assert!(crash.is_crashed());
        // Recover, then keep going on the survivor and check it reads back right.
        let next = io.block_on(model.recover(&io, mem.clone())).unwrap_or_else(|e| panic!("flush {k}: {e}"));
        let more = WorkloadConfig { seed: 1000 + k, ops: 50, ..cfg.clone() };
        io.block_on(workload::run(&io, Arc::new(next.clone()), &more)).unwrap();
        io.block_on(next.verify_all(&*mem, &io)).unwrap();
    }
}

#[test]
fn crash_at_each_flush_of_a_raw_file_then_reopen_and_go_on() {
    let io = IoCtx::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = WorkloadConfig { queue_depth: 8, ..workload_cfg(88, 200) };
    for k in 1..=4 {
        let path = temp_file(&dir, SIZE);
        let crash = CrashDev::new(Arc::new(RawFile::open(&path, OpenOptions::default()).unwrap()));
        crash.crash_at_flush(k, CrashMode::TearOne { seed: k, granularity: 4096 });
        let model = ModelDev::new(Arc::new(crash.clone()));
        let err = io.block_on(workload::run(&io, Arc::new(model.clone()), &cfg)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "flush {k}: {err}");
        assert!(crash.inner().is_none(), "the crashed device let go of the file");
        let reopened: Arc<dyn BlockDev> = Arc::new(RawFile::open(&path, OpenOptions::default()).unwrap());
        let next = io.block_on(model.recover(&io, reopened.clone())).unwrap_or_else(|e| panic!("flush {k}: {e}"));
        let more = WorkloadConfig { seed: 2000 + k, ops: 100, ..cfg.clone() };
        io.block_on(workload::run(&io, Arc::new(next.clone()), &more)).unwrap();
        io.block_on(next.verify_all(&*reopened, &io)).unwrap();
    }
}

#[test]
fn crash_at_a_chosen_write_fails_that_write_and_keeps_the_rules() {
    let io = IoCtx::new().unwrap();
    for n in [1, 7, 40] {
        let mem: Arc<dyn BlockDev> = Arc::new(MemDisk::new(SIZE).unwrap());
        let crash = CrashDev::new(mem.clone());
        crash.crash_at_write(n, CrashMode::RandomPrefix { seed: n });
        let model = ModelDev::new(Arc::new(crash.clone()));
        let err = io.block_on(workload::run(&io, Arc::new(model.clone()), &workload_cfg(n, 500))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert_eq!(crash.writes(), n);
        io.block_on(model.verify_after_crash(&*mem, &io)).unwrap();
    }
}

#[test]
fn crash_devices_crash_independently() {
    let io = IoCtx::new().unwrap();
    let (a_mem, b_mem) = (Arc::new(MemDisk::new(SIZE).unwrap()), Arc::new(MemDisk::new(SIZE).unwrap()));
    let (a, b) = (CrashDev::new(a_mem.clone()), CrashDev::new(b_mem.clone()));
    for dev in [&a, &b] {
        write(&io, dev, 0, &[9; 4096], false);
    }
    io.block_on(a.crash(&io, CrashMode::KeepNone)).unwrap();
    assert!(!b.is_crashed());
    assert_eq!(read(&io, &*a_mem, 0, 4096), vec![0; 4096]);
    io.block_on(b.flush(&io, IoTag::DATA)).unwrap();
    assert_eq!(read(&io, &*b_mem, 0, 4096), vec![9; 4096]);
}

#[test]
fn grouped_devices_lose_power_together() {
    let io = IoCtx::new().unwrap();
    let mems: Vec<Arc<MemDisk>> = (0..3).map(|_| Arc::new(MemDisk::new(SIZE).unwrap())).collect();
    let devs: Vec<CrashDev> = mems.iter().map(|m| CrashDev::new(m.clone())).collect();
    CrashDev::group(&devs);
    let models: Vec<ModelDev> = devs.iter().map(|d| ModelDev::new(Arc::new(d.clone()))).collect();
    for (i, m) in models.iter().enumerate() {
        write(&io, m, 0, &[1 + i as u8; 4096], false);
        io.block_on(m.flush(&io, IoTag::DATA)).unwrap();
        write(&io, m, 4096, &[10 + i as u8; 4096], false);
    }
    // The next write to member 1 is the moment the power fails.
    devs[1].crash_at_write(1, CrashMode::KeepNone);
    let mut b = SharedBuf::new(512);
    let err = io.block_on(models[1].write(&io, 8192, b.io(), false, IoTag::DATA)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    for (i, (dev, mem)) in devs.iter().zip(&mems).enumerate() {
        assert!(dev.is_crashed(), "member {i} crashed with the others");
        assert_eq!(read(&io, &**mem, 0, 4096), vec![1 + i as u8; 4096], "member {i} kept its flushed write");
        assert_eq!(read(&io, &**mem, 4096, 4096), vec![0; 4096], "member {i} lost its volatile write");
        io.block_on(models[i].verify_after_crash(&**mem, &io)).unwrap();
    }
}

#[test]
fn verify_after_crash_catches_a_lost_flushed_write() {
    let io = IoCtx::new().unwrap();
    let mem = Arc::new(MemDisk::new(SIZE).unwrap());
    let crash = CrashDev::new(mem.clone());
    let model = ModelDev::new(Arc::new(crash.clone()));
    write(&io, &model, 8192, &[7; 1024], false);
    io.block_on(model.flush(&io, IoTag::DATA)).unwrap();
    io.block_on(crash.crash(&io, CrashMode::KeepAll)).unwrap();
    // A buggy layer "loses" the flushed sector 17.
    write(&io, &*mem, 8704, &[0; 512], false);
    let err = io.block_on(model.verify_after_crash(&*mem, &io)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("sector 17 (byte 8704)"), "{err}");
}

// ---- FaultDev ----

fn fault_dev() -> (IoCtx, Arc<MemDisk>, FaultDev) {
    let mem = Arc::new(MemDisk::new(SIZE).unwrap());
    (IoCtx::new().unwrap(), mem.clone(), FaultDev::new(mem))
}

#[test]
fn fault_fails_exactly_the_nth_operation() {
    let (io, _mem, dev) = fault_dev();
    dev.fail_nth(3);
    let mut b = SharedBuf::new(512);
    let results: Vec<bool> = (0..5)
        .map(|i| match i % 2 {
            0 => io.block_on(dev.read(&io, 0, b.io(), IoTag::DATA)).is_ok(),
            _ => io.block_on(dev.flush(&io, IoTag::DATA)).is_ok(),
        })
        .collect();
    assert_eq!(results, [true, true, false, true, true]);
    assert_eq!(dev.injected(), 1);
    assert_eq!(dev.total_ops(), 5);
}

#[test]
fn fault_matches_site_by_prefix_and_class() {
    let (io, _mem, dev) = fault_dev();
    dev.add_rule(FaultRule::new().class(IoClass::Metadata).site_prefix("qcow2.l2"));
    let mut b = SharedBuf::new(512);
    let mut op = |tag| io.block_on(dev.write(&io, 0, b.io(), false, tag));
    assert!(op(IoTag::meta("qcow2.l2_update")).is_err());
    assert!(op(IoTag::meta("qcow2.l2")).is_err());
    assert!(op(IoTag::meta("qcow2.l1_update")).is_ok());
    assert!(op(IoTag::data("qcow2.l2_update")).is_ok(), "class must match too");
    dev.clear_rules();
    dev.add_rule(FaultRule::new().site("qcow2.l2").times(1));
    assert!(op(IoTag::meta("qcow2.l2_update")).is_ok(), "exact match does not match a longer site");
    assert!(op(IoTag::meta("qcow2.l2")).is_err());
    assert!(op(IoTag::meta("qcow2.l2")).is_ok(), "times(1) is spent");
}

#[test]
fn fault_nospace_maps_to_no_space_and_writes_nothing() {
    let (io, mem, dev) = fault_dev();
    let id = dev.add_rule(FaultRule::new().kind(OpKind::Write).error(FaultError::NoSpace));
    let mut b = SharedBuf::from_slice(&[1; 4096]);
    let err = io.block_on(dev.write(&io, 0, b.io(), false, IoTag::DATA)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoSpace);
    assert_eq!(err.errno(), Some(libc_enospc()));
    assert_eq!(read(&io, &*mem, 0, 4096), vec![0; 4096]);
    dev.remove_rule(id);
    io.block_on(dev.write(&io, 0, b.io(), false, IoTag::DATA)).unwrap();
}

fn libc_enospc() -> i32 {
    28
}

#[test]
fn fault_bad_sectors_fail_reads_and_writes_until_repaired_by_a_write() {
    let (io, _mem, dev) = fault_dev();
    dev.add_bad_sectors(&[10]);
    let mut b = SharedBuf::new(4096);
    let err = io.block_on(dev.read(&io, 4096, b.io(), IoTag::DATA)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.to_string().contains("bad sector 10"), "{err}");
    assert!(io.block_on(dev.read(&io, 0, b.io(), IoTag::DATA)).is_ok(), "sectors 0..8 are fine");
    assert!(io.block_on(dev.write(&io, 4096, b.io(), false, IoTag::DATA)).is_err());
    dev.set_repair_on_write(true);
    io.block_on(dev.write(&io, 4096, b.io(), false, IoTag::DATA)).unwrap();
    assert!(dev.bad_sectors().is_empty());
    io.block_on(dev.read(&io, 4096, b.io(), IoTag::DATA)).unwrap();
}

#[test]
fn fault_bit_flips_corrupt_reads_until_rewritten() {
    let (io, _mem, dev) = fault_dev();
    write(&io, &dev, 0, &[0x0f; 1024], false);
    dev.add_bit_flip(1, 8 * 10 + 4);
    let got = read(&io, &dev, 0, 1024);
    assert_eq!(got[512 + 10], 0x1f);
    assert_eq!(got.iter().filter(|&&x| x != 0x0f).count(), 1);
    assert_eq!(dev.injected(), 1);
    write(&io, &dev, 512, &[0x0f; 512], false);
    assert_eq!(read(&io, &dev, 0, 1024), vec![0x0f; 1024]);
}
