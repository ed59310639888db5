//! `qcow::snapshot` against qemu-img: `qemu-img snapshot -l` lists what strata made exactly as we
//! list it (and we list what qemu made byte for byte), `qemu-img check` is clean after every
//! create/apply/delete, and applying a snapshot gives the data qemu reads.

mod common;

use std::path::Path;
use std::process::Command;

use blockdev::IoCtx;
use common::*;
use qcow::CreateOptions;

fn clean(img: &Path, what: &str) {
    let (code, out) = qemu_check(img);
    assert_eq!(code, 0, "{what}: qemu-img check: {out}");
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i / 512) as u8).wrapping_mul(31) ^ (i as u8)).collect()
}

fn qemu_list(img: &Path) -> String {
    run(Command::new("qemu-img").args(["snapshot", "-l", "-f", "qcow2"]).arg(img))
}

fn ours_list(io: &IoCtx, img: &Path) -> String {
    let dev = open(io, img, true);
    qcow::snapshot::to_qemu_list(&io.block_on(qcow::snapshot::list(io, &dev)).unwrap())
}

#[test]
fn snapshots_made_by_strata_satisfy_qemu() {
    if !have_qemu("snapshots_made_by_strata_satisfy_qemu") {
        return;
    }
    for (cs, version, rbits) in [(65536u64, 3u32, 16u32), (4096, 2, 16), (65536, 3, 64), (512, 3, 4)] {
        let dir = tmp();
        let io = IoCtx::new().unwrap();
        let img = p(dir.path(), "s.qcow2");
        let size = 4u64 << 20;
        let opts = CreateOptions { size, cluster_size: cs, version, refcount_bits: rbits, ..Default::default() };
        qcow::create_path(&io, &img, &opts).unwrap();
        let a = pattern(size as usize, 1);
        let mut b = a.clone();
        let dev = open(&io, &img, false);
        write(&io, &dev, 0, &a[..3 << 20]);
        let mut model_a = vec![0u8; size as usize];
        model_a[..3 << 20].copy_from_slice(&a[..3 << 20]);
        io.block_on(qcow::snapshot::create(&io, &dev, "first")).unwrap();
        // Overwrite part of it (COW of shared clusters and L2 tables), extend, then snapshot again.
        let patch = pattern(1 << 20, 9);
        write(&io, &dev, 1 << 20, &patch);
        write(&io, &dev, (3 << 20) + 512, &patch[..4096]);
        let mut model_b = model_a.clone();
        model_b[1 << 20..2 << 20].copy_from_slice(&patch);
        model_b[(3 << 20) + 512..(3 << 20) + 4608].copy_from_slice(&patch[..4096]);
        io.block_on(qcow::snapshot::create(&io, &dev, "second")).unwrap();
        b[..].copy_from_slice(&model_b);
        write(&io, &dev, 0, &[0xee; 65536]);
        io.block_on(dev.close(&io)).unwrap();
        drop(dev);
        let what = format!("cluster {cs} v{version} refcount {rbits}");
        clean(&img, &format!("{what}: after two snapshots"));
        let q = qemu_list(&img);
        assert!(q.contains(" first ") && q.contains(" second "), "{what}: {q}");
        assert_eq!(ours_list(&io, &img), q, "{what}: our listing differs from qemu-img's");
        // qemu reads each snapshot as we wrote it.
        let copy = p(dir.path(), "copy.qcow2");
        std::fs::copy(&img, &copy).unwrap();
        run(Command::new("qemu-img").args(["snapshot", "-a", "first", "-f", "qcow2"]).arg(&copy));
        assert_same(&format!("{what}: qemu applying 'first'"), &qemu_raw(&copy, dir.path()), &model_a);
        // Apply with strata.
        let dev = open(&io, &img, false);
        io.block_on(qcow::snapshot::apply(&io, &dev, "second")).unwrap();
        io.block_on(dev.close(&io)).unwrap();
        drop(dev);
        clean(&img, &format!("{what}: after apply"));
        assert_same(&format!("{what}: after applying 'second'"), &qemu_raw(&img, dir.path()), &b);
        // Delete both (by name and by ID); everything they alone held is freed.
        let dev = open(&io, &img, false);
        io.block_on(qcow::snapshot::delete(&io, &dev, "first")).unwrap();
        io.block_on(dev.close(&io)).unwrap();
        drop(dev);
        clean(&img, &format!("{what}: after deleting 'first'"));
        let dev = open(&io, &img, false);
        io.block_on(qcow::snapshot::delete(&io, &dev, "2")).unwrap();
        write(&io, &dev, 0, &[0xab; 8192]);
        b[..8192].fill(0xab);
        io.block_on(dev.close(&io)).unwrap();
        drop(dev);
        clean(&img, &format!("{what}: after deleting '2' and writing"));
        assert_eq!(qemu_list(&img), "", "{what}");
        assert_same(&format!("{what}: after deletes"), &qemu_raw(&img, dir.path()), &b);
    }
}

#[test]
fn snapshots_made_by_qemu_apply_and_delete_in_strata() {
    if !have_qemu("snapshots_made_by_qemu_apply_and_delete_in_strata") {
        return;
    }
    let dir = tmp();
    let io = IoCtx::new().unwrap();
    let img = p(dir.path(), "q.qcow2");
    qemu_create(&img, 8 << 20, "cluster_size=65536");
    qemu_io(&img, &["write -P 0x11 0 2M".into(), "write -c -P 0x12 4M 64k".into(), "write -z 5M 64k".into()]);
    run(Command::new("qemu-img").args(["snapshot", "-c", "base", "-f", "qcow2"]).arg(&img));
    qemu_io(&img, &["write -P 0x21 1M 2M".into(), "write -P 0x22 4M 64k".into()]);
    run(Command::new("qemu-img").args(["snapshot", "-c", "mid", "-f", "qcow2"]).arg(&img));
    qemu_io(&img, &["write -P 0x31 0 8M".into()]);
    // Our listing of qemu's snapshots is qemu's.
    assert_eq!(ours_list(&io, &img), qemu_list(&img));
    // What qemu reads after applying each snapshot, on a copy.
    let want = |name: &str| {
        let copy = p(dir.path(), &format!("want-{name}.qcow2"));
        std::fs::copy(&img, &copy).unwrap();
        run(Command::new("qemu-img").args(["snapshot", "-a", name, "-f", "qcow2"]).arg(&copy));
        qemu_raw(&copy, dir.path())
    };
    let (want_base, want_mid) = (want("base"), want("mid"));
    for (name, want) in [("base", &want_base), ("mid", &want_mid), ("1", &want_base)] {
        let dev = open(&io, &img, false);
        io.block_on(qcow::snapshot::apply(&io, &dev, name)).unwrap();
        let got = read_all(&io, &dev, 1 << 20);
        io.block_on(dev.close(&io)).unwrap();
        drop(dev);
        assert_same(&format!("strata applying {name}"), &got, want);
        clean(&img, &format!("after applying {name}"));
        assert_same(&format!("qemu reading after we applied {name}"), &qemu_raw(&img, dir.path()), want);
    }
    let dev = open(&io, &img, false);
    let e = io.block_on(qcow::snapshot::apply(&io, &dev, "nope")).unwrap_err();
    assert!(e.to_string().contains("'nope'"), "{e}");
    let e = io.block_on(qcow::snapshot::create(&io, &dev, "mid")).unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    io.block_on(qcow::snapshot::delete(&io, &dev, "mid")).unwrap();
    io.block_on(qcow::snapshot::delete(&io, &dev, "base")).unwrap();
    io.block_on(dev.close(&io)).unwrap();
    drop(dev);
    clean(&img, "after deleting qemu's snapshots");
    assert_same("data after deletes", &qemu_raw(&img, dir.path()), &want_base);
}
