//! `qcow::check::check` agrees with `qemu-img check` on clean images, injected leaks and
//! corruption (wrong refcounts, an L2 entry past the end of the file, an L2 entry over the refcount table), and its repairs
//! satisfy qemu.

mod common;

use blockdev::IoCtx;
use common::*;
use qcow::check::{check, Repair};

fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}

/// A 64K-cluster, 16-bit-refcount image with data, and the offset of its first refcount block.
fn image(dir: &std::path::Path) -> (std::path::PathBuf, u64) {
    let img = p(dir, "k.qcow2");
    qemu_create(&img, 16 << 20, "cluster_size=65536");
    qemu_io(&img, &["write -P 0x42 0 262144".to_string(), "write -P 0x43 8388608 65536".to_string()]);
    let bytes = std::fs::read(&img).unwrap();
    let rt = be64(&bytes, 48);
    (img, be64(&bytes, rt as usize))
}

fn set_refcount(img: &std::path::Path, block: u64, cluster: u64, value: u16) {
    let mut bytes = std::fs::read(img).unwrap();
    let at = (block + cluster * 2) as usize;
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
    std::fs::write(img, bytes).unwrap();
}

fn ours(img: &std::path::Path, repair: Repair) -> i32 {
    let io = IoCtx::new().unwrap();
    let dev = io
        .block_on(qcow::open_path(
            &io,
            img,
            &qcow::Options { read_only: repair == Repair::None, ignore_backing: true, ..Default::default() },
        ))
        .unwrap();
    let rep = io.block_on(check(&io, &dev, repair)).unwrap();
    io.block_on(dev.close(&io)).unwrap();
    rep.exit_code()
}

#[test]
fn clean_image_checks_clean_in_both() {
    if !have_qemu("check_clean") {
        return;
    }
    let dir = tmp();
    let (img, _) = image(dir.path());
    assert_eq!(qemu_check(&img).0, 0);
    assert_eq!(ours(&img, Repair::None), 0);
}

#[test]
fn leaked_cluster_is_exit_3_in_both_and_repair_leaks_fixes_it() {
    if !have_qemu("check_leak") {
        return;
    }
    let dir = tmp();
    let (img, block) = image(dir.path());
    // The header and the refcount table carry no COPIED flag: a higher refcount is a plain leak.
    set_refcount(&img, block, 0, 2);
    set_refcount(&img, block, 1, 3);
    assert_eq!(qemu_check(&img).0, 3, "{}", qemu_check(&img).1);
    assert_eq!(ours(&img, Repair::None), 3);
    assert_eq!(ours(&img, Repair::Leaks), 0);
    let (code, out) = qemu_check(&img);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn refcount_too_low_is_exit_2_in_both_and_repair_all_fixes_it() {
    if !have_qemu("check_corrupt") {
        return;
    }
    let dir = tmp();
    let (img, block) = image(dir.path());
    let bytes = std::fs::read(&img).unwrap();
    let l1 = be64(&bytes, 40);
    let l2 = be64(&bytes, l1 as usize) & 0x00ff_ffff_ffff_fe00;
    let data = be64(&bytes, l2 as usize) & 0x00ff_ffff_ffff_fe00;
    set_refcount(&img, block, data / 65536, 0);
    assert_eq!(qemu_check(&img).0, 2);
    assert_eq!(ours(&img, Repair::None), 2);
    assert_eq!(ours(&img, Repair::Leaks), 2, "repairing leaks leaves the corruption");
    assert_eq!(ours(&img, Repair::All), 0);
    let (code, out) = qemu_check(&img);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn l2_entry_past_the_end_of_the_file_is_corruption_in_both() {
    if !have_qemu("check_past_eof") {
        return;
    }
    let dir = tmp();
    let (img, _) = image(dir.path());
    let mut bytes = std::fs::read(&img).unwrap();
    let l1 = be64(&bytes, 40);
    let l2 = (be64(&bytes, l1 as usize) & 0x00ff_ffff_ffff_fe00) as usize;
    let bad: u64 = (1 << 63) | (1 << 40);
    bytes[l2 + 8 * 10..l2 + 8 * 11].copy_from_slice(&bad.to_be_bytes());
    std::fs::write(&img, bytes).unwrap();
    assert_eq!(qemu_check(&img).0, 2);
    assert_eq!(ours(&img, Repair::None), 2);
}

#[test]
fn l2_entry_overlapping_metadata_is_corruption_in_both_and_writes_to_it_are_refused() {
    if !have_qemu("check_overlap") {
        return;
    }
    let dir = tmp();
    let (img, _) = image(dir.path());
    let mut bytes = std::fs::read(&img).unwrap();
    let rt = be64(&bytes, 48);
    let l1 = be64(&bytes, 40);
    let l2 = (be64(&bytes, l1 as usize) & 0x00ff_ffff_ffff_fe00) as usize;
    // Guest cluster 20 (unallocated) now claims the refcount table's cluster as its data.
    let bad: u64 = (1 << 63) | rt;
    bytes[l2 + 8 * 20..l2 + 8 * 21].copy_from_slice(&bad.to_be_bytes());
    std::fs::write(&img, &bytes).unwrap();
    let table_before = bytes[rt as usize..rt as usize + 4096].to_vec();
    let (code, out) = qemu_check(&img);
    assert_eq!(code, 2, "{out}");
    assert_eq!(ours(&img, Repair::None), 2);
    // A write through that entry would overwrite the refcount table: refused, corrupt bit set.
    let io = IoCtx::new().unwrap();
    let dev =
        io.block_on(qcow::open_path(&io, &img, &qcow::Options { ignore_backing: true, ..Default::default() })).unwrap();
    let mut b = blockdev::SharedBuf::from_slice(&[7u8; 4096]);
    let err = io
        .block_on(blockdev::BlockDev::write(&dev, &io, 20 * 65536, b.io(), false, blockdev::IoTag::DATA))
        .expect_err("a write over the refcount table must be refused");
    assert!(err.to_string().contains("overlap Reftable"), "{err}");
    drop(dev);
    let h = std::fs::read(&img).unwrap();
    assert!(be64(&h, 72) & 2 != 0, "the corrupt bit is set");
    assert_eq!(&h[rt as usize..rt as usize + 4096], &table_before[..], "the refcount table is untouched");
}

#[test]
fn wrong_copied_flags_are_exit_2_in_both_and_repair_all_fixes_them() {
    if !have_qemu("check_copied") {
        return;
    }
    let dir = tmp();
    let (img, _) = image(dir.path());
    let mut bytes = std::fs::read(&img).unwrap();
    let l1 = be64(&bytes, 40) as usize;
    let l2 = (be64(&bytes, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    // Clear COPIED on the L1 entry and on one data entry (both have refcount 1).
    for at in [l1, l2 + 8] {
        let e = be64(&bytes, at) & !(1 << 63);
        bytes[at..at + 8].copy_from_slice(&e.to_be_bytes());
    }
    std::fs::write(&img, bytes).unwrap();
    assert_eq!(qemu_check(&img).0, 2, "{}", qemu_check(&img).1);
    assert_eq!(ours(&img, Repair::None), 2);
    assert_eq!(ours(&img, Repair::All), 0);
    let (code, out) = qemu_check(&img);
    assert_eq!(code, 0, "{out}");
}
