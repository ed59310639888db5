//! Crash and fault tests: CrashDev or FaultDev under the image file. After a crash `qemu-img
//! check` finds no corruption (leaks allowed) and every stable write reads back; an injected
//! error at a metadata write site fails the request cleanly and leaves the image consistent.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use blockdev::testdev::{CrashDev, CrashMode, FaultDev, FaultError, FaultRule};
use blockdev::{BlockDev, IoCtx, IoTag, OpenOptions, RawFile, SharedBuf};
use common::*;
use qcow::{CreateOptions, Options, Qcow2};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SIZE: u64 = 8 << 20;
const SECTOR: usize = 512;

struct Run {
    /// The disk as of the last completed flush.
    stable: Vec<u8>,
    /// The disk as the guest wrote it.
    model: Vec<u8>,
    /// Sectors written since the last completed flush (may read old or new after a crash).
    unstable: HashSet<usize>,
    /// Why the workload stopped early (the crash), if it did.
    stopped: Option<String>,
}

/// Run the seeded workload on `dev` until `ops` are done or an operation fails (the crash).
fn workload(io: &IoCtx, dev: &Qcow2, seed: u64, ops: usize) -> Run {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut run =
        Run { stable: vec![0; SIZE as usize], model: vec![0; SIZE as usize], unstable: HashSet::new(), stopped: None };
    for i in 0..ops {
        let len = rng.gen_range(1..=32) * SECTOR as u64;
        let off = rng.gen_range(0..(SIZE - len) / SECTOR as u64) * SECTOR as u64;
        let (o, l) = (off as usize, len as usize);
        let before: Vec<usize> = (o / SECTOR..(o + l) / SECTOR).collect();
        let res = match rng.gen_range(0..20) {
            0 => io.block_on(dev.flush(io, IoTag::DATA)).map(|_| {
                run.stable.copy_from_slice(&run.model);
                run.unstable.clear();
            }),
            1 | 2 => {
                run.unstable.extend(&before);
                let r = io.block_on(dev.write_zeroes(io, off, len, true, IoTag::DATA));
                run.model[o..o + l].fill(0);
                r
            }
            _ => {
                run.unstable.extend(&before);
                let byte = (i % 250) as u8 + 1;
                let mut b = SharedBuf::from_slice(&vec![byte; l]);
                let r = io.block_on(dev.write(io, off, b.io(), false, IoTag::DATA));
                run.model[o..o + l].fill(byte);
                r
            }
        };
        if let Err(e) = res {
            run.stopped = Some(format!("op {i}: {e}"));
            break;
        }
    }
    run
}

fn new_image(io: &IoCtx, dir: &std::path::Path, cluster_size: u64) -> std::path::PathBuf {
    new_image_with(io, dir, CreateOptions { size: SIZE, cluster_size, ..Default::default() })
}

fn new_image_with(io: &IoCtx, dir: &std::path::Path, opts: CreateOptions) -> std::path::PathBuf {
    let img = dir.join("crash.qcow2");
    qcow::create_path(io, &img, &opts).unwrap();
    // CrashDev has a fixed size: give the image file room to grow into (sparse).
    std::fs::OpenOptions::new().write(true).open(&img).unwrap().set_len(4 * SIZE).unwrap();
    img
}

fn open_on(io: &IoCtx, file: Arc<dyn BlockDev>) -> Qcow2 {
    io.block_on(qcow::open_dev(io, file, None, &Options::default())).unwrap()
}

/// True when the image file's header has the dirty bit (incompatible feature bit 0).
fn dirty_on_disk(img: &std::path::Path) -> bool {
    let b = std::fs::read(img).unwrap();
    u64::from_be_bytes(b[72..80].try_into().unwrap()) & 1 != 0
}

/// Crash the workload at one point and check the image.
fn crash_once(cluster_size: u64, seed: u64, ops: usize, arm: impl FnOnce(&CrashDev), what: &str) {
    crash_image(CreateOptions { size: SIZE, cluster_size, ..Default::default() }, seed, ops, arm, what);
}

/// Crash the workload on an image made with `opts`. With lazy refcounts, the crashed image is
/// dirty: a writable open by strata must rebuild its refcounts, after which `qemu-img check` is
/// clean (leaks included). Returns whether the crash left the dirty bit set.
fn crash_image(opts: CreateOptions, seed: u64, ops: usize, arm: impl FnOnce(&CrashDev), what: &str) -> bool {
    let dir = tmp();
    let io = IoCtx::new().unwrap();
    let lazy = opts.lazy_refcounts;
    let img = new_image_with(&io, dir.path(), opts);
    let run = {
        let raw: Arc<dyn BlockDev> =
            Arc::new(RawFile::open(&img, OpenOptions { growable: true, ..Default::default() }).unwrap());
        let crash = CrashDev::new(raw);
        arm(&crash);
        let dev = open_on(&io, Arc::new(crash.clone()));
        let run = workload(&io, &dev, seed, ops);
        if let Some(why) = &run.stopped {
            assert!(crash.is_crashed(), "{what}: workload failed without a crash: {why}");
        }
        if !crash.is_crashed() {
            io.block_on(crash.crash(&io, CrashMode::RandomSubset { seed })).unwrap();
        }
        run
    };
    let was_dirty = dirty_on_disk(&img);
    assert!(!was_dirty || lazy, "{what}: dirty bit set on an image without lazy refcounts");
    if was_dirty {
        // The rebuild on a writable open, then a clean close.
        let dev = open(&io, &img, false);
        io.block_on(dev.close(&io)).unwrap();
        drop(dev);
        assert!(!dirty_on_disk(&img), "{what}: dirty bit still set after the rebuild and a clean close");
        let (code, out) = qemu_check(&img);
        assert_eq!(code, 0, "{what}: qemu-img check after the rebuild: {out}");
    }
    let (code, out) = qemu_check(&img);
    assert!(code == 0 || code == 3, "{what}: qemu-img check found corruption (exit {code}): {out}");
    if code == 3 {
        // Our repair removes the leaks the crash left.
        let dev = open(&io, &img, false);
        let rep = io.block_on(qcow::check::check(&io, &dev, qcow::check::Repair::Leaks)).unwrap();
        assert_eq!(rep.exit_code(), 0, "{what}: {:?}", rep.messages);
        io.block_on(dev.close(&io)).unwrap();
        drop(dev);
        let (code, out) = qemu_check(&img);
        assert_eq!(code, 0, "{what}: after our leak repair: {out}");
    }
    let dev = open(&io, &img, true);
    let got = read_all(&io, &dev, 1 << 20);
    for s in 0..(SIZE as usize / SECTOR) {
        if run.unstable.contains(&s) {
            continue;
        }
        let r = s * SECTOR..(s + 1) * SECTOR;
        assert_eq!(&got[r.clone()], &run.stable[r], "{what}: stable sector {s} did not read back");
    }
    was_dirty
}

fn lazy_opts(cluster_size: u64) -> CreateOptions {
    CreateOptions { size: SIZE, cluster_size, lazy_refcounts: true, ..Default::default() }
}

#[test]
fn lazy_refcounts_crash_at_every_flush_reopens_rebuilt_and_clean() {
    if !have_qemu("lazy_crash_at_every_flush") {
        return;
    }
    let mut dirty = 0;
    for n in 1..=12 {
        let mode = match n % 3 {
            0 => CrashMode::KeepNone,
            1 => CrashMode::RandomPrefix { seed: n },
            _ => CrashMode::TearOne { seed: n, granularity: 512 },
        };
        // 512-byte clusters: a refcount block covers 128 KiB, so the workload adds blocks too.
        let cs = if n % 2 == 0 { 512 } else { 4096 };
        let what = format!("lazy flush {n} {mode:?} cs={cs}");
        dirty += u32::from(crash_image(lazy_opts(cs), 42 + n, 600, |c| c.crash_at_flush(n, mode), &what));
    }
    assert!(dirty >= 10, "only {dirty} of 12 crashes left a dirty image: lazy refcounts not in use");
}

#[test]
fn lazy_refcounts_crash_at_random_points_of_a_ten_thousand_op_workload() {
    if !have_qemu("lazy_crash_random_points") {
        return;
    }
    let mut rng = SmallRng::seed_from_u64(11);
    let mut dirty = 0;
    for k in 0..6u64 {
        let at = rng.gen_range(1..4000);
        let mode = match k % 3 {
            0 => CrashMode::RandomPrefix { seed: k },
            1 => CrashMode::RandomSubset { seed: k },
            _ => CrashMode::TearOne { seed: k, granularity: 512 },
        };
        let cs = [65536, 4096, 512][k as usize % 3];
        let what = format!("lazy write {at} {mode:?} cs={cs}");
        dirty += u32::from(crash_image(lazy_opts(cs), 200 + k, 10_000, |c| c.crash_at_write(at, mode), &what));
    }
    dirty += u32::from(crash_image(lazy_opts(4096), 998, 10_000, |_| {}, "lazy end of workload"));
    assert!(dirty >= 6, "only {dirty} of 7 crashes left a dirty image: lazy refcounts not in use");
}

#[test]
fn crash_at_every_flush_leaves_a_consistent_image_with_stable_writes() {
    if !have_qemu("crash_at_every_flush") {
        return;
    }
    for n in 1..=12 {
        let mode = match n % 3 {
            0 => CrashMode::KeepNone,
            1 => CrashMode::RandomPrefix { seed: n },
            _ => CrashMode::TearOne { seed: n, granularity: 512 },
        };
        crash_once(4096, 42, 600, |c| c.crash_at_flush(n, mode), &format!("flush {n} {mode:?}"));
    }
}

#[test]
fn crash_at_random_points_of_a_ten_thousand_op_workload() {
    if !have_qemu("crash_random_points") {
        return;
    }
    let mut rng = SmallRng::seed_from_u64(7);
    for k in 0..6u64 {
        let at = rng.gen_range(1..4000);
        let mode = match k % 3 {
            0 => CrashMode::RandomPrefix { seed: k },
            1 => CrashMode::RandomSubset { seed: k },
            _ => CrashMode::TearOne { seed: k, granularity: 512 },
        };
        // 512-byte clusters add refcount blocks (one covers 128 KiB) under the workload.
        let cs = [65536, 4096, 512][k as usize % 3];
        crash_once(cs, 100 + k, 10_000, |c| c.crash_at_write(at, mode), &format!("write {at} {mode:?} cs={cs}"));
    }
    // And one that runs all 10,000 operations before losing its unflushed writes.
    crash_once(4096, 999, 10_000, |_| {}, "end of workload");
}

#[test]
fn metadata_write_errors_fail_cleanly_and_leave_the_image_consistent() {
    if !have_qemu("metadata_faults") {
        return;
    }
    for site in ["qcow2.l2_update", "qcow2.refcount_update", "qcow2.l1_update", "qcow2.header", "qcow2.reftable_update"]
    {
        for error in [FaultError::Io, FaultError::NoSpace] {
            let dir = tmp();
            let io = IoCtx::new().unwrap();
            let img = new_image(&io, dir.path(), 512);
            let raw: Arc<dyn BlockDev> =
                Arc::new(RawFile::open(&img, OpenOptions { growable: true, ..Default::default() }).unwrap());
            let fault = Arc::new(FaultDev::new(raw));
            let dev = open_on(&io, fault.clone());
            let mut model = vec![0u8; SIZE as usize];
            let mut rng = SmallRng::seed_from_u64(5);
            let mut failures = 0;
            for i in 0..400 {
                if i == 100 {
                    fault.add_rule(FaultRule::new().site(site).times(3).error(error));
                }
                let len = rng.gen_range(1..=16) * 512;
                let off = rng.gen_range(0..(SIZE - len) / 512) * 512;
                let byte = (i % 250) as u8 + 1;
                let mut b = SharedBuf::from_slice(&vec![byte; len as usize]);
                match io.block_on(dev.write(&io, off, b.io(), false, IoTag::DATA)) {
                    Ok(()) => model[off as usize..(off + len) as usize].fill(byte),
                    Err(_) => failures += 1,
                }
                if i % 10 == 9 && io.block_on(dev.flush(&io, IoTag::DATA)).is_err() {
                    failures += 1;
                }
            }
            io.block_on(dev.close(&io)).unwrap_or_else(|e| panic!("{site}: close after faults: {e}"));
            let got = read_all(&io, &dev, 1 << 20);
            assert_same(&format!("{site} {error:?}"), &got, &model);
            drop(dev);
            drop(fault);
            let (code, out) = qemu_check(&img);
            assert!(code == 0 || code == 3, "{site} {error:?}: corruption after {failures} failures: {out}");
        }
    }
}
