//! Lazy refcounts as a write mode, and the write-back of metadata: the dirty bit is set by the
//! first write and cleared by a clean close, an image left dirty (by strata or by qemu) has its
//! refcounts rebuilt on a writable open, and metadata reaches the file on the guest's FLUSH with
//! a bounded number of syncs, never one per allocation.

mod common;

use std::sync::Arc;

use blockdev::testdev::CrashDev;
use blockdev::{BlockDev, IoCtx, IoTag, OpenOptions, RawFile, SharedBuf};
use common::*;
use qcow::{CreateOptions, Options};

const SIZE: u64 = 64 << 20;

fn dirty_on_disk(img: &std::path::Path) -> bool {
    let b = std::fs::read(img).unwrap();
    u64::from_be_bytes(b[72..80].try_into().unwrap()) & 1 != 0
}

fn make(io: &IoCtx, img: &std::path::Path, lazy: bool) {
    let opts = CreateOptions { size: SIZE, cluster_size: 65536, lazy_refcounts: lazy, ..Default::default() };
    qcow::create_path(io, img, &opts).unwrap();
}

fn write(io: &IoCtx, dev: &dyn BlockDev, off: u64, byte: u8, len: usize) {
    let mut b = SharedBuf::from_slice(&vec![byte; len]);
    io.block_on(dev.write(io, off, b.io(), false, IoTag::DATA)).unwrap();
}

#[test]
fn dirty_bit_is_set_by_the_first_write_and_cleared_by_a_clean_close() {
    let dir = tmp();
    let img = p(dir.path(), "lazy.qcow2");
    let io = IoCtx::new().unwrap();
    make(&io, &img, true);
    let dev = open(&io, &img, false);
    assert!(!dirty_on_disk(&img), "a fresh open leaves the bit clear");
    write(&io, &dev, 1 << 20, 0x5a, 4096);
    assert!(dirty_on_disk(&img), "the first allocating write sets the bit (durably, before any metadata)");
    io.block_on(dev.flush(&io, IoTag::DATA)).unwrap();
    assert!(dirty_on_disk(&img), "a guest flush keeps it");
    io.block_on(dev.close(&io)).unwrap();
    assert!(!dirty_on_disk(&img), "a clean close clears it");
    drop(dev);
    // Dropping an open, written image without close() clears it too (the safety net).
    let dev = open(&io, &img, false);
    write(&io, &dev, 8 << 20, 0x6b, 4096);
    assert!(dirty_on_disk(&img));
    drop(dev);
    assert!(!dirty_on_disk(&img), "drop writes back and clears the bit");
    if have_qemu("lazy_clean_close_qemu_check") {
        let (code, out) = qemu_check(&img);
        assert_eq!(code, 0, "{out}");
    }
    // An image without lazy refcounts never gets the bit.
    let strict = p(dir.path(), "strict.qcow2");
    make(&io, &strict, false);
    let dev = open(&io, &strict, false);
    write(&io, &dev, 0, 1, 4096);
    io.block_on(dev.flush(&io, IoTag::DATA)).unwrap();
    assert!(!dirty_on_disk(&strict));
}

/// Syncs of the image file for `allocs` allocating writes followed by one guest flush.
fn syncs(lazy: bool, allocs: u64) -> (u64, u64) {
    let dir = tmp();
    let img = p(dir.path(), "s.qcow2");
    let io = IoCtx::new().unwrap();
    make(&io, &img, lazy);
    std::fs::OpenOptions::new().write(true).open(&img).unwrap().set_len(2 * SIZE).unwrap();
    let raw: Arc<dyn BlockDev> =
        Arc::new(RawFile::open(&img, OpenOptions { growable: true, ..Default::default() }).unwrap());
    let crash = CrashDev::new(raw);
    let dev = io.block_on(qcow::open_dev(&io, Arc::new(crash.clone()), None, &Options::default())).unwrap();
    // Warm up: the L2 table exists and (lazy) the dirty bit is set.
    write(&io, &dev, 0, 1, 4096);
    io.block_on(dev.flush(&io, IoTag::DATA)).unwrap();
    let before = crash.flushes();
    for i in 1..=allocs {
        // Every write lands in a new 64 KiB cluster of the first 32 MiB (one L2 table).
        write(&io, &dev, i * 65536, i as u8, 4096);
    }
    let during = crash.flushes() - before;
    io.block_on(dev.flush(&io, IoTag::DATA)).unwrap();
    let total = crash.flushes() - before;
    io.block_on(dev.close(&io)).unwrap();
    (during, total)
}

#[test]
fn allocations_are_written_back_on_flush_not_synced_one_by_one() {
    let (during, total) = syncs(false, 300);
    assert_eq!(during, 0, "300 allocating writes synced the file {during} times before any guest flush");
    // Refcount blocks, then L2 tables (no new L1 entry, no new refcount block).
    assert_eq!(total, 2, "one guest flush after 300 allocations synced {total} times");
    let (during, total) = syncs(true, 300);
    assert_eq!(during, 0, "lazy: 300 allocating writes synced {during} times before any guest flush");
    // Refcount blocks and L2 tables share one sync.
    assert_eq!(total, 1, "lazy: one guest flush after 300 allocations synced {total} times");
}

#[test]
fn image_left_dirty_by_qemu_is_rebuilt_on_a_writable_open() {
    if !have_qemu("lazy_dirty_by_qemu") {
        return;
    }
    let dir = tmp();
    let img = p(dir.path(), "q.qcow2");
    qemu_create(&img, 16 << 20, "lazy_refcounts=on,cluster_size=4096");
    // qemu-io's `abort` ends the process without closing: the dirty bit stays, refcounts stale.
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 0 1M", "-c", "write -P 0x6b 8M 64k", "-c", "abort"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(!out.status.success(), "qemu-io abort should not exit cleanly");
    assert!(dirty_on_disk(&img), "qemu left the image dirty");
    let (code, _) = qemu_check(&img);
    assert_ne!(code, 0, "a dirty lazy image with unwritten refcounts should not check clean");
    let io = IoCtx::new().unwrap();
    // A read-only open leaves it alone (and reads the data).
    let ro = open(&io, &img, true);
    let got = read_all(&io, &ro, 65536);
    assert!(got[..1 << 20].iter().all(|&b| b == 0x5a));
    drop(ro);
    assert!(dirty_on_disk(&img));
    let dev = open(&io, &img, false);
    assert!(!dirty_on_disk(&img), "the writable open rebuilt the refcounts and cleared the bit");
    let rep = io.block_on(qcow::check::check(&io, &dev, qcow::check::Repair::None)).unwrap();
    assert_eq!(rep.exit_code(), 0, "{:?}", rep.messages);
    write(&io, &dev, 12 << 20, 0x7c, 4096);
    io.block_on(dev.close(&io)).unwrap();
    drop(dev);
    let (code, out) = qemu_check(&img);
    assert_eq!(code, 0, "{out}");
    let want = qemu_raw(&img, dir.path());
    assert!(want[..1 << 20].iter().all(|&b| b == 0x5a));
    assert!(want[8 << 20..(8 << 20) + 65536].iter().all(|&b| b == 0x6b));
    assert!(want[12 << 20..(12 << 20) + 4096].iter().all(|&b| b == 0x7c));
}

#[test]
fn failing_to_set_the_dirty_bit_fails_the_write_cleanly() {
    use blockdev::testdev::{FaultDev, FaultError, FaultRule};
    for error in [FaultError::Io, FaultError::NoSpace] {
        let dir = tmp();
        let img = p(dir.path(), "f.qcow2");
        let io = IoCtx::new().unwrap();
        make(&io, &img, true);
        let raw: Arc<dyn BlockDev> =
            Arc::new(RawFile::open(&img, OpenOptions { growable: true, ..Default::default() }).unwrap());
        let fault = Arc::new(FaultDev::new(raw));
        let dev = io.block_on(qcow::open_dev(&io, fault.clone(), None, &Options::default())).unwrap();
        fault.add_rule(FaultRule::new().site("qcow2.header").times(2).error(error));
        for _ in 0..2 {
            let mut b = SharedBuf::from_slice(&[9u8; 4096]);
            let res = io.block_on(dev.write(&io, 65536, b.io(), false, IoTag::DATA));
            assert!(res.is_err(), "{error:?}: the write must fail while the dirty bit cannot be written");
        }
        assert!(!dirty_on_disk(&img));
        write(&io, &dev, 65536, 0x33, 4096);
        assert!(dirty_on_disk(&img), "{error:?}: set once the header can be written");
        io.block_on(dev.close(&io)).unwrap();
        drop(dev);
        drop(fault);
        assert!(!dirty_on_disk(&img));
        let got = read_all(&io, &open(&io, &img, true), 65536);
        assert!(got[65536..65536 + 4096].iter().all(|&b| b == 0x33));
        if have_qemu("lazy_header_fault") {
            let (code, out) = qemu_check(&img);
            assert_eq!(code, 0, "{error:?}: {out}");
        }
    }
}
