//! Crash tests for the image operations: CrashDev under the image file while snapshots are
//! created, applied and deleted and the image grows (its L1 table moving). After a crash at each
//! flush, `qemu-img check` finds no corruption (leaks allowed, and our repair removes them; a cut
//! inside a snapshot operation leaves the dirty bit, and the next writable open rebuilds), the
//! disk reads as it was before or after the operation that was cut, and every snapshot left in
//! the table reads, in qemu, as the data it was taken of.

mod common;

use std::process::Command;
use std::sync::Arc;

use blockdev::testdev::{CrashDev, CrashMode};
use blockdev::{BlockDev, IoCtx, IoTag, OpenOptions, RawFile};
use common::*;
use qcow::{CreateOptions, Options};

const SIZE: u64 = 1 << 20;

fn data(seed: u8) -> Vec<u8> {
    (0..SIZE as usize).map(|i| seed.wrapping_mul(17).wrapping_add((i / 512) as u8) ^ (i as u8)).collect()
}

/// The operations under test; stops at the first error (the crash). Returns how far it got.
fn sequence(io: &IoCtx, dev: &qcow::Qcow2, d1: &[u8]) -> Result<(), String> {
    fn e(what: &'static str) -> impl Fn(blockdev::Error) -> String {
        move |err| format!("{what}: {err}")
    }
    io.block_on(qcow::snapshot::create(io, dev, "s1")).map_err(e("create s1"))?;
    let mut b = blockdev::SharedBuf::from_slice(d1);
    io.block_on(dev.write(io, 0, b.io(), false, IoTag::DATA)).map_err(e("write"))?;
    io.block_on(dev.flush(io, IoTag::DATA)).map_err(e("flush"))?;
    io.block_on(qcow::snapshot::apply(io, dev, "s1")).map_err(e("apply s1"))?;
    io.block_on(qcow::snapshot::create(io, dev, "s2")).map_err(e("create s2"))?;
    io.block_on(qcow::snapshot::delete(io, dev, "s1")).map_err(e("delete s1"))?;
    io.block_on(qcow::resize::resize(io, dev, 4 * SIZE, false)).map_err(e("resize"))?;
    io.block_on(dev.close(io)).map_err(e("close"))
}

/// Run the sequence on a fresh image holding `d0`, crashing as `arm` says; check the result.
/// Returns the number of flushes the sequence issued (for the caller's loop).
fn crash_run(arm: impl FnOnce(&CrashDev), what: &str) -> u64 {
    let dir = tmp();
    let io = IoCtx::new().unwrap();
    let img = p(dir.path(), "t.qcow2");
    let opts = CreateOptions { size: SIZE, cluster_size: 4096, ..Default::default() };
    qcow::create_path(&io, &img, &opts).unwrap();
    let (d0, d1) = (data(1), data(2));
    {
        let dev = open(&io, &img, false);
        write(&io, &dev, 0, &d0);
        io.block_on(dev.close(&io)).unwrap();
    }
    // CrashDev has a fixed size: room for the image to grow into (sparse).
    std::fs::OpenOptions::new().write(true).open(&img).unwrap().set_len(64 * SIZE).unwrap();
    let flushes = {
        let raw: Arc<dyn BlockDev> =
            Arc::new(RawFile::open(&img, OpenOptions { growable: true, ..Default::default() }).unwrap());
        let crash = CrashDev::new(raw);
        let dev = io.block_on(qcow::open_dev(&io, Arc::new(crash.clone()), None, &Options::default())).unwrap();
        let start = crash.flushes();
        arm(&crash);
        let res = sequence(&io, &dev, &d1);
        if let Err(why) = &res {
            assert!(crash.is_crashed(), "{what}: failed without a crash: {why}");
        }
        let n = crash.flushes() - start;
        if !crash.is_crashed() {
            io.block_on(crash.crash(&io, CrashMode::RandomSubset { seed: 3 })).unwrap();
        }
        drop(dev);
        n
    };
    let header = std::fs::read(&img).unwrap();
    if u64::from_be_bytes(header[72..80].try_into().unwrap()) & 1 != 0 {
        // Cut inside a snapshot operation: the dirty bit makes the next writable open (ours, or
        // QEMU's) rebuild the refcounts and COPIED flags.
        let dev = open(&io, &img, false);
        io.block_on(dev.close(&io)).unwrap();
        drop(dev);
        let (code, out) = qemu_check(&img);
        assert_eq!(code, 0, "{what}: qemu-img check after the rebuild on open: {out}");
    }
    let (code, out) = qemu_check(&img);
    assert!(code == 0 || code == 3, "{what}: qemu-img check found corruption (exit {code}): {out}");
    if code == 3 {
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
    let size = got.len() as u64;
    assert!(size == SIZE || size == 4 * SIZE, "{what}: disk size {size}");
    assert!(got[SIZE as usize..].iter().all(|&b| b == 0), "{what}: the grown part is not zeros");
    let head = &got[..SIZE as usize];
    assert!(head == &d0[..] || head == &d1[..], "{what}: the disk is neither before nor after the cut operation");
    let snaps = io.block_on(qcow::snapshot::list(&io, &dev)).unwrap();
    drop(dev);
    for s in snaps {
        let copy = p(dir.path(), "copy.qcow2");
        std::fs::copy(&img, &copy).unwrap();
        run(Command::new("qemu-img").args(["snapshot", "-a", &s.name, "-f", "qcow2"]).arg(&copy));
        assert_same(&format!("{what}: snapshot {} in qemu", s.name), &qemu_raw(&copy, dir.path()), &d0);
    }
    flushes
}

#[test]
fn crash_at_every_flush_of_snapshot_and_resize_operations() {
    if !have_qemu("crash_at_every_flush_of_snapshot_and_resize_operations") {
        return;
    }
    let total = crash_run(|_| {}, "no crash");
    assert!(total >= 10, "the sequence issued only {total} flushes");
    for n in 1..=total {
        let mode = match n % 4 {
            0 => CrashMode::KeepNone,
            1 => CrashMode::RandomPrefix { seed: n },
            2 => CrashMode::TearOne { seed: n, granularity: 512 },
            _ => CrashMode::RandomSubset { seed: n },
        };
        crash_run(|c| c.crash_at_flush(n, mode), &format!("flush {n}/{total} {mode:?}"));
    }
}

#[test]
fn crash_at_writes_of_snapshot_and_resize_operations() {
    if !have_qemu("crash_at_writes_of_snapshot_and_resize_operations") {
        return;
    }
    for (k, at) in [3u64, 40, 150, 700, 1500, 2600, 3300].into_iter().enumerate() {
        let mode = match k % 3 {
            0 => CrashMode::RandomPrefix { seed: at },
            1 => CrashMode::RandomSubset { seed: at },
            _ => CrashMode::TearOne { seed: at, granularity: 512 },
        };
        crash_run(|c| c.crash_at_write(at, mode), &format!("write {at} {mode:?}"));
    }
}
