//! `qcow::convert` copies raw and qcow2 both ways (compressed too) so that `qemu-img compare` finds
//! the same disk, `qemu-img check` is clean, zero ranges stay unwritten, and qemu's raw copy of our
//! compressed image equals the source.

mod common;

use std::path::Path;
use std::process::Command;

use blockdev::IoCtx;
use common::*;
use qcow::convert::{convert, ConvertOptions, Format};

fn qemu_map(img: &Path) -> String {
    run(Command::new("qemu-img").args(["map", "--output=json", "-f", "qcow2"]).arg(img))
}

fn ours_map(io: &IoCtx, img: &Path) -> String {
    qcow::map::to_qemu_json(&qcow::map::map_path(io, img).unwrap())
}

fn same_map(io: &IoCtx, img: &Path, what: &str) {
    let (q, o) = (qemu_map(img), ours_map(io, img));
    assert_eq!(o, q, "{what}: map differs\nours:\n{o}\nqemu:\n{q}");
}

fn qemu_compare(a: &Path, fa: &str, b: &Path, fb: &str, what: &str) {
    let out = Command::new("qemu-img").args(["compare", "-f", fa, "-F", fb]).arg(a).arg(b).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: qemu-img compare: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn convert_round_trips_agree_with_qemu() {
    if !have_qemu("convert_round_trips_agree_with_qemu") {
        return;
    }
    let dir = tmp();
    let io = IoCtx::new().unwrap();
    // A qcow2 source with a backing file, zeros, compressed clusters, and mostly nothing.
    let base = p(dir.path(), "base.qcow2");
    qemu_create(&base, 32 << 20, "cluster_size=65536");
    qemu_io(&base, &["write -P 0x10 0 1M".into(), "write -P 0x11 20M 512k".into()]);
    let src = p(dir.path(), "src.qcow2");
    qemu_create(&src, 32 << 20, "backing_file=base.qcow2,backing_fmt=qcow2");
    qemu_io(&src, &["write -P 0x20 512k 1M".into(), "write -z 20M 64k".into(), "write -c -P 0x21 8M 128k".into()]);
    let mut text = Vec::new();
    for i in 0..(2u32 << 20) / 16 {
        text.extend_from_slice(format!("line {:08} of text\n", i % 4096).as_bytes().get(..16).unwrap());
    }
    {
        // Compressible data through strata itself, at 24M.
        let dev = open(&io, &src, false);
        write(&io, &dev, 24 << 20, &text);
        io.block_on(dev.close(&io)).unwrap();
    }
    let mut steps = 0;
    let mut progress = |done: u64, total: u64| {
        assert!(done <= total);
        steps += 1;
    };
    // qcow2 -> raw: the whole disk, backing flattened, zero ranges left as holes.
    let raw = p(dir.path(), "out.raw");
    let st = convert(&io, &src, &raw, &ConvertOptions { dst_format: Format::Raw, ..Default::default() }, &mut progress)
        .unwrap();
    assert_eq!(st.size, 32 << 20);
    qemu_compare(&src, "qcow2", &raw, "raw", "qcow2 -> raw");
    assert!(allocated(&raw) < 8 << 20, "raw output is not sparse: {} bytes allocated", allocated(&raw));
    assert!(steps >= 2);
    // raw -> qcow2.
    let q = p(dir.path(), "out.qcow2");
    convert(&io, &raw, &q, &ConvertOptions { src_format: Format::Raw, ..Default::default() }, &mut |_, _| {}).unwrap();
    qemu_compare(&raw, "raw", &q, "qcow2", "raw -> qcow2");
    assert_eq!(qemu_check(&q).0, 0, "{}", qemu_check(&q).1);
    // Zero ranges were not written: the map has data only where the source has.
    let m = qcow::map::map_path(&io, &q).unwrap();
    let data: u64 = m.iter().filter(|e| e.data).map(|e| e.length).sum();
    assert!(data <= 6 << 20, "{data} bytes of data in the qcow2 output");
    // qcow2 -> compressed qcow2, read back by qemu.
    let c = p(dir.path(), "out-c.qcow2");
    let o = ConvertOptions { compress: true, ..Default::default() };
    convert(&io, &src, &c, &o, &mut |_, _| {}).unwrap();
    assert_eq!(qemu_check(&c).0, 0, "{}", qemu_check(&c).1);
    qemu_compare(&src, "qcow2", &c, "qcow2", "qcow2 -> compressed qcow2");
    let back = p(dir.path(), "back.raw");
    run(Command::new("qemu-img").args(["convert", "-f", "qcow2", "-O", "raw"]).arg(&c).arg(&back));
    assert_same("qemu's raw of our compressed image", &std::fs::read(&back).unwrap(), &std::fs::read(&raw).unwrap());
    let cm = qcow::map::map_path(&io, &c).unwrap();
    assert!(cm.iter().any(|e| e.compressed), "no compressed clusters in the -c output");
    assert!(
        std::fs::metadata(&c).unwrap().len() < std::fs::metadata(&q).unwrap().len(),
        "compressed image is not smaller"
    );
    same_map(&io, &c, "our compressed image");
    // Refusals name the file and the problem.
    let e = convert(&io, &src, &src, &ConvertOptions::default(), &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("source itself"), "{e}");
    let o = ConvertOptions { compress: true, dst_format: Format::Raw, ..Default::default() };
    let e = convert(&io, &src, &p(dir.path(), "x.raw"), &o, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("x.raw") && e.to_string().contains("qcow2"), "{e}");
}

#[test]
fn compressed_zstd_and_small_clusters_convert() {
    if !have_qemu("compressed_zstd_and_small_clusters_convert") {
        return;
    }
    let dir = tmp();
    let io = IoCtx::new().unwrap();
    let src = p(dir.path(), "z.qcow2");
    qemu_create(&src, 3 << 20, "cluster_size=4096,compression_type=zstd");
    qemu_io(&src, &["write -c -P 0x61 0 1M".into(), "write -P 0x62 1M 4k".into()]);
    let dst = p(dir.path(), "z-out.qcow2");
    let o = ConvertOptions { compress: true, cluster_size: 512, ..Default::default() };
    convert(&io, &src, &dst, &o, &mut |_, _| {}).unwrap();
    assert_eq!(qemu_check(&dst).0, 0, "{}", qemu_check(&dst).1);
    qemu_compare(&src, "qcow2", &dst, "qcow2", "zstd source -> 512-byte compressed clusters");
}

#[test]
fn convert_and_create_replace_an_existing_file_only_unlocked_and_when_complete() {
    if !have_qemu("convert_and_create_replace_an_existing_file_only_unlocked_and_when_complete") {
        return;
    }
    let dir = tmp();
    let io = IoCtx::new().unwrap();
    let src = p(dir.path(), "src.qcow2");
    qemu_create(&src, 8 << 20, "");
    qemu_io(&src, &["write -P 0x31 1M 512k".into()]);
    let dst = p(dir.path(), "dst.qcow2");
    qemu_create(&dst, 4 << 20, "cluster_size=4096");
    qemu_io(&dst, &["write -P 0x77 0 64k".into()]);
    let before = std::fs::read(&dst).unwrap();
    // Held open for writing (as the daemon serving it would): refused, byte for byte kept.
    let holder = open(&io, &dst, false);
    let e = convert(&io, &src, &dst, &ConvertOptions::default(), &mut |_, _| {}).unwrap_err();
    assert_eq!(e.kind(), blockdev::ErrorKind::Locked, "{e}");
    let e = qcow::create_path(&io, &dst, &qcow::CreateOptions { size: 1 << 20, ..Default::default() }).unwrap_err();
    assert_eq!(e.kind(), blockdev::ErrorKind::Locked, "{e}");
    io.block_on(holder.close(&io)).unwrap();
    drop(holder);
    assert!(std::fs::read(&dst).unwrap() == before, "a refused convert or create changed the file");
    // Only blank files are created over without being told.
    let e = qcow::create_path_with(
        &io,
        &dst,
        &qcow::CreateOptions { size: 1 << 20, ..Default::default() },
        qcow::Overwrite::IfBlank,
    )
    .unwrap_err();
    assert!(e.to_string().contains("a qcow2 image"), "{e}");
    assert!(std::fs::read(&dst).unwrap() == before);
    // Unlocked: replaced by a complete copy qemu agrees with.
    let st = convert(&io, &src, &dst, &ConvertOptions::default(), &mut |_, _| {}).unwrap();
    assert!(st.replaced);
    qemu_compare(&src, "qcow2", &dst, "qcow2", "convert over an existing image");
    assert_eq!(qemu_check(&dst).0, 0, "{}", qemu_check(&dst).1);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
