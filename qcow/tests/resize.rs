//! `qcow::resize` against qemu-img: the size and data qemu sees after growing (equal to
//! `qemu-img resize` by `qemu-img compare`), shrink refusals, `qemu-img check` clean after each.

mod common;

use std::path::Path;
use std::process::Command;

use blockdev::IoCtx;
use common::*;

fn clean(img: &Path, what: &str) {
    let (code, out) = qemu_check(img);
    assert_eq!(code, 0, "{what}: qemu-img check: {out}");
}

fn virtual_size(img: &Path) -> u64 {
    let out = run(Command::new("qemu-img").args(["info", "-f", "qcow2"]).arg(img));
    let line = out.lines().find(|l| l.starts_with("virtual size:")).unwrap();
    let bytes = line.split('(').nth(1).unwrap().split(' ').next().unwrap();
    bytes.parse().unwrap()
}

fn resize(io: &IoCtx, img: &Path, size: u64, shrink: bool) -> blockdev::Result<()> {
    let dev = open(io, img, false);
    let r = io.block_on(qcow::resize::resize(io, &dev, size, shrink));
    io.block_on(dev.close(io)).unwrap();
    r
}

#[test]
fn grow_agrees_with_qemu_img_resize() {
    if !have_qemu("grow_agrees_with_qemu_img_resize") {
        return;
    }
    let dir = tmp();
    let io = IoCtx::new().unwrap();
    for (cs, from, to) in
        [(65536u64, 1u64 << 20, 3u64 << 30), (512, 64 << 10, 8 << 20), (4096, 2 << 20, (2 << 20) + 512)]
    {
        let ours = p(dir.path(), &format!("g{cs}.qcow2"));
        let theirs = p(dir.path(), &format!("g{cs}-q.qcow2"));
        qemu_create(&ours, from, &format!("cluster_size={cs}"));
        qemu_io(&ours, &["write -P 0x5a 4096 8192".into(), format!("write -P 0x33 {} 512", from - 512)]);
        std::fs::copy(&ours, &theirs).unwrap();
        resize(&io, &ours, to, false).unwrap();
        run(Command::new("qemu-img").args(["resize", "-q", "-f", "qcow2"]).arg(&theirs).arg(to.to_string()));
        assert_eq!(virtual_size(&ours), to);
        clean(&ours, "after grow");
        run(Command::new("qemu-img").args(["compare", "-q", "-f", "qcow2", "-F", "qcow2"]).arg(&ours).arg(&theirs));
        // The new space is writable by qemu and by strata.
        qemu_io(&ours, &[format!("write -P 0x77 {} 512", to - 512)]);
        let dev = open(&io, &ours, false);
        write(&io, &dev, to - 1024, &[0x66; 512]);
        io.block_on(dev.close(&io)).unwrap();
        drop(dev);
        clean(&ours, "after writes past the old end");
        expect(&ours, to - 512, 512, 0x77);
        expect(&ours, to - 1024, 512, 0x66);
        expect(&ours, 4096, 8192, 0x5a);
    }
}

/// qemu-io reads `len` bytes of `byte` at `off` (without converting a multi-GiB disk).
fn expect(img: &Path, off: u64, len: u64, byte: u8) {
    let out = run(Command::new("qemu-io").args(["-f", "qcow2", "-c", &format!("read -P {byte} {off} {len}")]).arg(img));
    assert!(!out.contains("verification failed"), "{}: at {off}: {out}", img.display());
}

#[test]
fn shrink_only_with_the_flag_and_nothing_past_the_end() {
    if !have_qemu("shrink_only_with_the_flag_and_nothing_past_the_end") {
        return;
    }
    let dir = tmp();
    let io = IoCtx::new().unwrap();
    let img = p(dir.path(), "s.qcow2");
    qemu_create(&img, 64 << 20, "cluster_size=65536");
    qemu_io(&img, &["write -P 1 0 1M".into(), "write -P 2 40M 64k".into(), "write -z 50M 1M".into()]);
    let e = resize(&io, &img, 8 << 20, false).unwrap_err();
    assert!(e.to_string().contains("--shrink"), "{e}");
    let e = resize(&io, &img, 8 << 20, true).unwrap_err();
    assert!(e.to_string().contains(&(40u64 << 20).to_string()), "{e}");
    assert_eq!(virtual_size(&img), 64 << 20);
    clean(&img, "after refused shrink");
    qemu_io(&img, &["discard 40M 64k".into()]);
    resize(&io, &img, 8 << 20, true).unwrap();
    assert_eq!(virtual_size(&img), 8 << 20);
    clean(&img, "after shrink");
    let raw = qemu_raw(&img, dir.path());
    assert_eq!(raw.len(), 8 << 20);
    assert!(raw[..1 << 20].iter().all(|&b| b == 1) && raw[1 << 20..].iter().all(|&b| b == 0));
    // Growing again shows zeros where the old tail was (nothing stale comes back).
    resize(&io, &img, 64 << 20, false).unwrap();
    clean(&img, "after regrow");
    let raw = qemu_raw(&img, dir.path());
    assert!(raw[1 << 20..].iter().all(|&b| b == 0));
}

#[test]
fn growing_over_a_longer_backing_file_shows_zeros_as_qemu() {
    if !have_qemu("growing_over_a_longer_backing_file_shows_zeros_as_qemu") {
        return;
    }
    let dir = tmp();
    let io = IoCtx::new().unwrap();
    let base = p(dir.path(), "base.qcow2");
    qemu_create(&base, 8 << 20, "");
    qemu_io(&base, &["write -P 0x44 0 8M".into()]);
    let ours = p(dir.path(), "top.qcow2");
    qemu_create(&ours, 3 << 20, "backing_file=base.qcow2,backing_fmt=qcow2");
    qemu_io(&ours, &["write -P 0x55 1M 64k".into()]);
    let theirs = p(dir.path(), "top-q.qcow2");
    std::fs::copy(&ours, &theirs).unwrap();
    resize(&io, &ours, 6 << 20, false).unwrap();
    run(Command::new("qemu-img").args(["resize", "-q", "-f", "qcow2"]).arg(&theirs).arg((6u64 << 20).to_string()));
    clean(&ours, "after growing over the backing file");
    run(Command::new("qemu-img").args(["compare", "-q", "-f", "qcow2", "-F", "qcow2"]).arg(&ours).arg(&theirs));
    expect(&ours, 3 << 20, 3 << 20, 0);
    expect(&ours, 0, 1 << 20, 0x44);
}
