//! Allocating writes that do not cover a whole cluster: a fresh cluster past the end of the
//! image file gets only the guest data written (the rest reads zeros as a hole or past the end),
//! while a reused cluster whose old bytes were not punched out is written in full (zeros around
//! the data). Both read back as the model says, in strata and in qemu, and `qemu-img check` is
//! clean.

mod common;

use std::sync::Arc;

use blockdev::testdev::{FaultDev, FaultRule, OpKind};
use blockdev::{BlockDev, IoCtx, IoTag, OpenOptions, RawFile};
use common::*;
use qcow::{CreateOptions, Options};

const CS: u64 = 65536;
const SIZE: u64 = 16 << 20;

fn new_image(io: &IoCtx, dir: &std::path::Path) -> std::path::PathBuf {
    let img = p(dir, "a.qcow2");
    qcow::create_path(io, &img, &CreateOptions { size: SIZE, cluster_size: CS, ..Default::default() }).unwrap();
    img
}

fn file_len(img: &std::path::Path) -> u64 {
    std::fs::metadata(img).unwrap().len()
}

#[test]
fn partial_write_into_fresh_cluster_writes_only_the_data() {
    // Arrange: an empty image; three 4 KiB writes into three fresh clusters (at the start, in the
    // middle and at the end of each).
    let dir = tmp();
    let io = IoCtx::new().unwrap();
    let img = new_image(&io, dir.path());
    let dev = open(&io, &img, false);
    let mut model = vec![0u8; SIZE as usize];
    let writes = [(3 * CS + 32768, 0x11u8), (7 * CS, 0x22), (9 * CS + CS - 4096, 0x33)];
    for (i, &(off, byte)) in writes.iter().enumerate() {
        let before = file_len(&img);
        // Act.
        write(&io, &dev, off, &[byte; 4096]);
        model[off as usize..off as usize + 4096].fill(byte);
        // Assert: the file ends right after the data, not at the end of its cluster.
        let after = file_len(&img);
        let within = off % CS;
        assert_eq!(after % CS, (within + 4096) % CS, "write {i}: file grew from {before} to {after}");
    }
    assert_same("strata before close", &read_all(&io, &dev, 1 << 20), &model);
    io.block_on(dev.close(&io)).unwrap();
    drop(dev);
    let dev = open(&io, &img, true);
    assert_same("strata after reopen", &read_all(&io, &dev, 1 << 20), &model);
    drop(dev);
    if !have_qemu("partial_write_into_fresh_cluster_writes_only_the_data") {
        return;
    }
    let (code, out) = qemu_check(&img);
    assert_eq!(code, 0, "qemu-img check: {out}");
    assert_same("qemu", &qemu_raw(&img, dir.path()), &model);
}

#[test]
fn reused_cluster_that_was_not_punched_reads_zeros_around_a_partial_write() {
    // Arrange: a full cluster of 0xaa, discarded; the file system refuses to punch it, so the
    // freed host cluster keeps its bytes.
    let dir = tmp();
    let io = IoCtx::new().unwrap();
    let img = new_image(&io, dir.path());
    let raw: Arc<dyn BlockDev> =
        Arc::new(RawFile::open(&img, OpenOptions { growable: true, ..Default::default() }).unwrap());
    let fault = Arc::new(FaultDev::new(raw));
    fault.add_rule(FaultRule::new().kind(OpKind::Discard));
    let dev = io.block_on(qcow::open_dev(&io, fault.clone(), None, &Options::default())).unwrap();
    write(&io, &dev, 0, &vec![0xaa; CS as usize]);
    io.block_on(dev.flush(&io, IoTag::DATA)).unwrap();
    io.block_on(dev.discard(&io, 0, CS, IoTag::DATA)).unwrap();
    io.block_on(dev.flush(&io, IoTag::DATA)).unwrap();
    assert!(fault.injected() > 0, "the punch of the freed cluster was not attempted");
    let len_before = file_len(&img);
    // Act: a 4 KiB write into another cluster of the same L2 table reuses the freed host cluster.
    let off = 5 * CS + 8192;
    write(&io, &dev, off, &[0x55; 4096]);
    // Assert: the cluster was reused (the file did not grow) and reads zeros around the data.
    assert_eq!(file_len(&img), len_before, "the freed cluster was not reused; the test proves nothing");
    let mut model = vec![0u8; SIZE as usize];
    model[off as usize..off as usize + 4096].fill(0x55);
    assert_same("strata", &read_all(&io, &dev, 1 << 20), &model);
    io.block_on(dev.close(&io)).unwrap();
    drop(dev);
    drop(fault);
    if !have_qemu("reused_cluster_that_was_not_punched_reads_zeros_around_a_partial_write") {
        return;
    }
    let (code, out) = qemu_check(&img);
    assert_eq!(code, 0, "qemu-img check: {out}");
    assert_same("qemu", &qemu_raw(&img, dir.path()), &model);
}

#[test]
fn fixed_size_device_that_grew_gets_zeros_written_around_a_partial_write() {
    // Arrange: the image on a fixed-size device (not growable); after the open the device grows
    // by 1 MiB of old bytes (0xcc), and strata is told (refresh_size).
    let dir = tmp();
    let io = IoCtx::new().unwrap();
    let img = new_image(&io, dir.path());
    let raw = Arc::new(RawFile::open(&img, OpenOptions::default()).unwrap());
    let dev = io.block_on(qcow::open_dev(&io, raw.clone(), None, &Options::default())).unwrap();
    let old_len = file_len(&img);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&img).unwrap();
        f.write_all(&vec![0xcc; 1 << 20]).unwrap();
    }
    assert_eq!(raw.refresh_size().unwrap(), old_len + (1 << 20));
    // Act: a 4 KiB write allocates a data cluster in the grown part.
    let off = 3 * CS + 8192;
    write(&io, &dev, off, &[0x55; 4096]);
    // Assert: the rest of the cluster reads zeros, not the device's old bytes.
    let mut model = vec![0u8; SIZE as usize];
    model[off as usize..off as usize + 4096].fill(0x55);
    assert_same("strata", &read_all(&io, &dev, 1 << 20), &model);
    io.block_on(dev.close(&io)).unwrap();
    drop(dev);
    drop(raw);
    if !have_qemu("fixed_size_device_that_grew_gets_zeros_written_around_a_partial_write") {
        return;
    }
    let (code, out) = qemu_check(&img);
    assert_eq!(code, 0, "qemu-img check: {out}");
    assert_same("qemu", &qemu_raw(&img, dir.path()), &model);
}
