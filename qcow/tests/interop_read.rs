//! Images made and filled by qemu-img/qemu-io read back through strata exactly as qemu reads them.

mod common;

use blockdev::IoCtx;
use common::*;

/// qemu-io writes at known offsets: patterns across cluster boundaries, a zeroed range and a discard.
fn fill_cmds(size: u64, cs: u64) -> Vec<String> {
    let mut v = vec![
        format!("write -P 0x11 0 {}", 4096.min(size)),
        format!("write -P 0x22 {} {}", cs - 512, 1024),
        format!("write -P 0x33 {} {}", size / 2 + 512, 3 * cs / 2 + 512),
        format!("write -P 0x44 {} 512", size - 512),
        format!("write -z {} {}", size / 2 + cs, cs),
        format!("discard {} {}", 0, cs.max(4096)),
        format!("write -P 0x55 {} 512", 1024),
    ];
    v.retain(|c| !c.is_empty());
    v
}

fn check_matrix(cs: u64, refbits: u32, compat: &str, extra: &str) {
    let dir = tmp();
    let img = p(dir.path(), "a.qcow2");
    let size = (cs * 8).max(4 << 20);
    let mut opts = format!("cluster_size={cs},refcount_bits={refbits},compat={compat}");
    if !extra.is_empty() {
        opts = format!("{opts},{extra}");
    }
    qemu_create(&img, size, &opts);
    qemu_io(&img, &fill_cmds(size, cs));
    let want = qemu_raw(&img, dir.path());
    let io = IoCtx::new().unwrap();
    let dev = open(&io, &img, true);
    assert_same(&format!("{opts}: 64K reads"), &read_all(&io, &dev, 65536), &want);
    assert_same(&format!("{opts}: 1536-byte reads"), &read_all(&io, &dev, 1536), &want);
}

#[test]
fn qemu_images_read_identically_across_cluster_sizes_and_refcount_widths() {
    if !have_qemu("qemu_images_read_identically") {
        return;
    }
    for cs in [512u64, 4096, 65536, 2 << 20] {
        for refbits in [1u32, 16, 64] {
            check_matrix(cs, refbits, "1.1", "");
        }
        check_matrix(cs, 16, "0.10", "");
    }
}

#[test]
fn extended_l2_and_lazy_refcount_images_read_identically() {
    if !have_qemu("extended_l2_images") {
        return;
    }
    for cs in [16384u64, 65536, 2 << 20] {
        check_matrix(cs, 16, "1.1", "extended_l2=on");
    }
    check_matrix(65536, 16, "1.1", "lazy_refcounts=on");
}

#[test]
fn compressed_images_read_identically_zlib_and_zstd() {
    if !have_qemu("compressed_images") {
        return;
    }
    for (ctype, cs) in [("zlib", 65536u64), ("zstd", 65536), ("zlib", 4096), ("zstd", 2 << 20)] {
        let dir = tmp();
        let src = p(dir.path(), "src.qcow2");
        let img = p(dir.path(), "c.qcow2");
        let size = 8u64 << 20;
        qemu_create(&src, size, &format!("cluster_size={cs}"));
        qemu_io(&src, &fill_cmds(size, cs));
        // Text-like data compresses; random data is stored uncompressed.
        qemu_io(&src, &["write -P 0x61 2097152 1048576".to_string()]);
        run(std::process::Command::new("qemu-img")
            .args(["convert", "-c", "-f", "qcow2", "-O", "qcow2", "-o"])
            .arg(format!("compression_type={ctype},cluster_size={cs}"))
            .arg(&src)
            .arg(&img));
        // Overwrite part of a compressed cluster so the image mixes both kinds.
        qemu_io(&img, &["write -P 0x77 2101248 4096".to_string()]);
        let want = qemu_raw(&img, dir.path());
        let io = IoCtx::new().unwrap();
        let dev = open(&io, &img, true);
        assert_same(&format!("{ctype} {cs}"), &read_all(&io, &dev, 32768), &want);
    }
}

#[test]
fn three_deep_backing_chain_reads_identically() {
    if !have_qemu("backing_chain") {
        return;
    }
    let dir = tmp();
    let size = 8u64 << 20;
    let base = p(dir.path(), "base.qcow2");
    let mid = p(dir.path(), "mid.qcow2");
    let top = p(dir.path(), "top.qcow2");
    qemu_create(&base, size, "cluster_size=65536");
    qemu_io(&base, &["write -P 0x01 0 8388608".to_string()]);
    qemu_create(&mid, size, "cluster_size=4096,backing_file=base.qcow2,backing_fmt=qcow2");
    qemu_io(&mid, &["write -P 0x02 4096 8192".to_string(), "write -z 1048576 65536".to_string()]);
    qemu_create(&top, size, "cluster_size=65536,extended_l2=on,backing_file=mid.qcow2,backing_fmt=qcow2");
    qemu_io(&top, &["write -P 0x03 6144 1024".to_string(), "write -P 0x04 2097152 2048".to_string()]);
    let want = qemu_raw(&top, dir.path());
    let io = IoCtx::new().unwrap();
    let dev = open(&io, &top, true);
    assert_same("chain", &read_all(&io, &dev, 65536), &want);
}

#[test]
fn backing_file_without_format_is_refused_not_probed() {
    if !have_qemu("backing_without_format") {
        return;
    }
    let dir = tmp();
    let base = p(dir.path(), "base.qcow2");
    let top = p(dir.path(), "top.qcow2");
    qemu_create(&base, 1 << 20, "");
    qemu_create(&top, 1 << 20, "backing_file=base.qcow2,backing_fmt=qcow2");
    // Drop the backing format extension (qemu-img itself refuses to write such an image now).
    let mut bytes = std::fs::read(&top).unwrap();
    let mut h = qcow::Header::parse(&bytes[..65536], bytes.len() as u64).unwrap();
    h.backing_format = None;
    let hb = h.serialize().unwrap();
    bytes[..65536].fill(0);
    bytes[..hb.len()].copy_from_slice(&hb);
    std::fs::write(&top, &bytes).unwrap();
    let io = IoCtx::new().unwrap();
    let err = io
        .block_on(qcow::open_path(&io, &top, &qcow::Options { read_only: true, ..Default::default() }))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("never probed"), "{err}");
}
