//! `qcow::map` prints what `qemu-img map --output=json` prints, byte for byte, on images with
//! data, zero clusters, compressed clusters, extended L2 subclusters, qcow2 and raw backing files
//! and unallocated ranges.

mod common;

use std::path::Path;
use std::process::Command;

use blockdev::IoCtx;
use common::*;

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

#[test]
fn map_agrees_with_qemu_img_map() {
    if !have_qemu("map_agrees_with_qemu_img_map") {
        return;
    }
    let dir = tmp();
    let io = IoCtx::new().unwrap();
    // One image with every kind of cluster, no backing.
    let plain = p(dir.path(), "plain.qcow2");
    qemu_create(&plain, 16 << 20, "cluster_size=65536");
    qemu_io(
        &plain,
        &[
            "write -P 1 0 192k".into(),
            "write -z 1M 128k".into(),
            "write -c -P 3 2M 64k".into(),
            "write -c -P 4 2112k 64k".into(),
            "write -P 5 15M 1M".into(),
            "write -P 6 256k 64k".into(),
            "write -z -u 15M 64k".into(),
        ],
    );
    same_map(&io, &plain, "plain image");
    // Extended L2: subclusters allocated and zeroed inside one cluster.
    let ext = p(dir.path(), "ext.qcow2");
    qemu_create(&ext, 4 << 20, "cluster_size=65536,extended_l2=on");
    qemu_io(
        &ext,
        &["write -P 1 0 4k".into(), "write -P 2 8k 2k".into(), "write -z 32k 4k".into(), "write -P 3 1M 64k".into()],
    );
    same_map(&io, &ext, "extended L2");
    // A chain: raw base (with a hole), qcow2 middle (shorter than the top), qcow2 top.
    let base = p(dir.path(), "base.raw");
    {
        let f = std::fs::File::create(&base).unwrap();
        f.set_len(6 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&vec![0x42; 1 << 20], 0).unwrap();
        f.write_all_at(&vec![0x43; 1 << 20], 4 << 20).unwrap();
    }
    let mid = p(dir.path(), "mid.qcow2");
    qemu_create(&mid, 8 << 20, "backing_file=base.raw,backing_fmt=raw");
    qemu_io(&mid, &["write -P 7 512k 1M".into(), "write -z 5M 64k".into()]);
    let top = p(dir.path(), "top.qcow2");
    qemu_create(&top, 12 << 20, "backing_file=mid.qcow2,backing_fmt=qcow2");
    qemu_io(&top, &["write -P 8 0 64k".into(), "write -P 9 10M 64k".into(), "write -z 700k 64k".into()]);
    same_map(&io, &top, "three-deep chain");
    same_map(&io, &mid, "qcow2 over raw");
}
