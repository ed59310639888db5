//! Images written by strata (random writes, write-zeroes, discards, COW over a backing file)
//! pass `qemu-img check` and read back in qemu exactly as a shadow model says.

mod common;

use blockdev::{BlockDev, IoCtx, IoTag};
use common::*;
use qcow::{CreateOptions, Qcow2};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Apply `ops` random operations to `dev` and to `model`; flush now and then.
fn random_ops(io: &IoCtx, dev: &Qcow2, model: &mut [u8], seed: u64, ops: usize, max_len: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let size = model.len() as u64;
    for i in 0..ops {
        let len = rng.gen_range(1..=max_len / 512) * 512;
        let off = rng.gen_range(0..=(size - len) / 512) * 512;
        let (o, l) = (off as usize, len as usize);
        match rng.gen_range(0..10) {
            0 => {
                io.block_on(dev.write_zeroes(io, off, len, rng.gen(), IoTag::DATA)).unwrap();
                model[o..o + l].fill(0);
            }
            1 => {
                // Discard may leave old data or zeros: the model cannot tell, so zero it the
                // only way the device promises: follow the discard by write-zeroes.
                io.block_on(dev.discard(io, off, len, IoTag::DATA)).unwrap();
                io.block_on(dev.write_zeroes(io, off, len, true, IoTag::DATA)).unwrap();
                model[o..o + l].fill(0);
            }
            _ => {
                let byte = (i % 251) as u8 + 1;
                let data: Vec<u8> = (0..l).map(|k| byte.wrapping_add((k / 512) as u8)).collect();
                write(io, dev, off, &data);
                model[o..o + l].copy_from_slice(&data);
            }
        }
        if rng.gen_range(0..20) == 0 {
            io.block_on(dev.flush(io, IoTag::DATA)).unwrap();
        }
    }
}

fn verify_with_qemu(img: &std::path::Path, dir: &std::path::Path, model: &[u8], what: &str) {
    let (code, out) = qemu_check(img);
    assert_eq!(code, 0, "{what}: qemu-img check: {out}");
    assert_same(what, &qemu_raw(img, dir), model);
}

fn strata_image(cluster_size: u64, version: u32, refcount_bits: u32, extended_l2: bool, seed: u64) {
    let dir = tmp();
    let img = p(dir.path(), "s.qcow2");
    let size = 8u64 << 20;
    let io = IoCtx::new().unwrap();
    let opts = CreateOptions { size, cluster_size, version, refcount_bits, extended_l2, ..Default::default() };
    qcow::create_path(&io, &img, &opts).unwrap();
    let mut model = vec![0u8; size as usize];
    {
        let dev = open(&io, &img, false);
        random_ops(&io, &dev, &mut model, seed, 300, 3 * cluster_size.max(4096));
        assert_same("strata reads its own writes", &read_all(&io, &dev, 1 << 20), &model);
        io.block_on(dev.close(&io)).unwrap();
    }
    verify_with_qemu(
        &img,
        dir.path(),
        &model,
        &format!("cs={cluster_size} v{version} rb={refcount_bits} ext={extended_l2}"),
    );
}

#[test]
fn strata_written_images_pass_qemu_check_and_match_the_model() {
    if !have_qemu("strata_written_images") {
        return;
    }
    strata_image(65536, 3, 16, false, 1);
    strata_image(4096, 3, 1, false, 2);
    strata_image(512, 3, 64, false, 3);
    strata_image(512, 2, 16, false, 4);
    strata_image(65536, 3, 16, true, 5);
    strata_image(2 << 20, 3, 8, false, 6);
}

#[test]
fn writes_over_a_backing_file_copy_on_write_the_rest_of_the_cluster() {
    if !have_qemu("cow_over_backing") {
        return;
    }
    for (ext, cs) in [(false, 65536u64), (true, 65536), (false, 4096)] {
        let dir = tmp();
        let base = p(dir.path(), "base.qcow2");
        let top = p(dir.path(), "top.qcow2");
        let size = 4u64 << 20;
        qemu_create(&base, size, "cluster_size=65536");
        qemu_io(&base, &["write -P 0x5a 0 4194304".to_string(), "write -P 0x6b 131072 65536".to_string()]);
        let io = IoCtx::new().unwrap();
        let opts = CreateOptions {
            size,
            cluster_size: cs,
            extended_l2: ext,
            backing_file: Some("base.qcow2".into()),
            backing_format: Some("qcow2".into()),
            ..Default::default()
        };
        qcow::create_path(&io, &top, &opts).unwrap();
        let mut model = qemu_raw(&base, dir.path());
        {
            let dev = open(&io, &top, false);
            random_ops(&io, &dev, &mut model, 7, 200, 2 * cs);
            assert_same("strata reads its own writes over backing", &read_all(&io, &dev, 1 << 20), &model);
            io.block_on(dev.close(&io)).unwrap();
        }
        verify_with_qemu(&top, dir.path(), &model, &format!("cow ext={ext} cs={cs}"));
    }
}

#[test]
fn writes_into_qemu_made_images_keep_them_consistent() {
    if !have_qemu("writes_into_qemu_images") {
        return;
    }
    for opts in [
        "cluster_size=65536,refcount_bits=16",
        "cluster_size=512,refcount_bits=1",
        "cluster_size=16384,extended_l2=on,compat=1.1",
        "compat=0.10",
    ] {
        let dir = tmp();
        let img = p(dir.path(), "q.qcow2");
        let size = 6u64 << 20;
        qemu_create(&img, size, opts);
        qemu_io(&img, &["write -P 0x21 0 1048576".to_string(), "write -z 2097152 1048576".to_string()]);
        let mut model = qemu_raw(&img, dir.path());
        let io = IoCtx::new().unwrap();
        {
            let dev = open(&io, &img, false);
            random_ops(&io, &dev, &mut model, 11, 200, 131072);
            io.block_on(dev.close(&io)).unwrap();
        }
        verify_with_qemu(&img, dir.path(), &model, opts);
    }
}

#[test]
fn many_small_clusters_grow_refcount_blocks_and_the_refcount_table() {
    if !have_qemu("reftable_growth") {
        return;
    }
    let dir = tmp();
    let img = p(dir.path(), "g.qcow2");
    // 512-byte clusters with 64-bit refcounts: a block covers 64 clusters, a table cluster 64 blocks (2 MiB).
    let size = 6u64 << 20;
    let io = IoCtx::new().unwrap();
    qcow::create_path(&io, &img, &CreateOptions { size, cluster_size: 512, refcount_bits: 64, ..Default::default() })
        .unwrap();
    let mut model = vec![0u8; size as usize];
    {
        let dev = open(&io, &img, false);
        let data: Vec<u8> = (0..size as usize).map(|i| (i / 512 % 253) as u8 + 1).collect();
        for off in (0..size).step_by(1 << 16) {
            write(&io, &dev, off, &data[off as usize..off as usize + (1 << 16)]);
        }
        model.copy_from_slice(&data);
        io.block_on(dev.close(&io)).unwrap();
        let h = dev.header();
        assert!(h.refcount_table_clusters > 1, "the refcount table grew ({} clusters)", h.refcount_table_clusters);
    }
    verify_with_qemu(&img, dir.path(), &model, "growth");
}
