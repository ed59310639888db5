//! Which files an image may name as its backing file: the image's own directory, directories
//! and files the caller allows, nothing else (CVE-2024-32498: a header naming `/etc/passwd`).

use std::path::{Path, PathBuf};

use blockdev::{BlockDev, IoCtx, IoTag, SharedBuf};
use qcow::{BackingPolicy, CreateOptions, Options};

const SIZE: u64 = 1 << 20;

/// A qcow2 image at `path` whose header names `backing` (format `fmt`).
fn overlay(io: &IoCtx, path: &Path, backing: &str, fmt: &str) {
    let o = CreateOptions {
        size: SIZE,
        backing_file: Some(backing.to_string()),
        backing_format: Some(fmt.to_string()),
        ..Default::default()
    };
    qcow::create_path(io, path, &o).unwrap();
}

/// A raw file of `SIZE` bytes starting with `tag`.
fn raw(path: &Path, tag: &[u8]) {
    let mut v = vec![0u8; SIZE as usize];
    v[..tag.len()].copy_from_slice(tag);
    std::fs::write(path, v).unwrap();
}

fn open(io: &IoCtx, img: &Path, policy: BackingPolicy) -> blockdev::Result<qcow::Qcow2> {
    io.block_on(qcow::open_path(io, img, &Options { read_only: true, backing_policy: policy, ..Default::default() }))
}

fn first_bytes(io: &IoCtx, dev: &qcow::Qcow2, n: usize) -> Vec<u8> {
    let mut r = SharedBuf::new(4096);
    io.block_on(dev.read(io, 0, r.io(), IoTag::DATA)).unwrap();
    r.bytes()[..n].to_vec()
}

/// The refusal names the image, the path asked for and both keys that would allow it.
fn assert_refused(e: &blockdev::Error, img: &Path, asked: &str) {
    let m = format!("{e:#}");
    assert!(m.contains(&img.display().to_string()), "image not named: {m}");
    assert!(m.contains(asked), "path not named: {m}");
    assert!(m.contains("backing-dir=") && m.contains("backing-file="), "keys not named: {m}");
}

#[test]
fn raw_backing_etc_passwd_is_refused() {
    let io = IoCtx::new().unwrap();
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("evil.qcow2");
    overlay(&io, &img, "/etc/passwd", "raw");
    let e = open(&io, &img, BackingPolicy::default()).err().expect("/etc/passwd must not be opened");
    assert_refused(&e, &img, "/etc/passwd");
    let e = qcow::map::map_path(&io, &img).expect_err("map must refuse it too");
    assert_refused(&e, &img, "/etc/passwd");
}

#[test]
fn relative_name_escaping_with_dotdot_is_refused() {
    let io = IoCtx::new().unwrap();
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("evil.qcow2");
    // As many `..` as it takes to reach `/` from the image's directory, then etc/shadow.
    let depth = d.path().canonicalize().unwrap().components().count() - 1;
    let name = format!("{}etc/shadow", "../".repeat(depth));
    assert!(d.path().join(&name).exists(), "test needs /etc/shadow");
    overlay(&io, &img, &name, "raw");
    let e = open(&io, &img, BackingPolicy::default()).err().expect("../../etc/shadow must not be opened");
    assert_refused(&e, &img, &name);
    assert!(format!("{e:#}").contains("/etc/shadow"), "{e:#}");
}

#[test]
fn symlink_in_the_image_directory_pointing_out_is_refused_unless_allowed() {
    let io = IoCtx::new().unwrap();
    let d = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("secret.raw");
    raw(&target, b"secret");
    std::os::unix::fs::symlink(&target, d.path().join("base.raw")).unwrap();
    let img = d.path().join("top.qcow2");
    overlay(&io, &img, "base.raw", "raw");
    let e =
        open(&io, &img, BackingPolicy::default()).err().expect("a symlink out of the directory must not be followed");
    assert_refused(&e, &img, "base.raw");
    assert!(format!("{e:#}").contains("secret.raw"), "the real path is named: {e:#}");

    let dev = open(&io, &img, BackingPolicy::default().allow_dir(outside.path())).unwrap();
    assert_eq!(first_bytes(&io, &dev, 6), b"secret");
}

#[test]
fn backing_file_in_another_directory_is_served_when_allowed() {
    let io = IoCtx::new().unwrap();
    let images = tempfile::tempdir().unwrap();
    let bases = tempfile::tempdir().unwrap();
    let base = bases.path().join("base.raw");
    raw(&base, b"base data");
    let img = images.path().join("top.qcow2");
    let name = base.display().to_string();
    overlay(&io, &img, &name, "raw");

    let e = open(&io, &img, BackingPolicy::default()).err().expect("refused without permission");
    assert_refused(&e, &img, &name);

    for policy in [BackingPolicy::default().allow_dir(bases.path()), BackingPolicy::default().allow_file(&base)] {
        let dev = open(&io, &img, policy.clone()).unwrap();
        assert_eq!(first_bytes(&io, &dev, 9), b"base data");
        let m = qcow::map::map_path_policy(&io, &img, false, &policy).unwrap();
        assert!(m.iter().any(|e| e.depth == 1), "{m:?}");
    }
    // Exactly that file: its neighbour is still refused.
    let other = bases.path().join("other.raw");
    raw(&other, b"other");
    let img2 = images.path().join("top2.qcow2");
    overlay(&io, &img2, &other.display().to_string(), "raw");
    assert!(open(&io, &img2, BackingPolicy::default().allow_file(&base)).is_err());
}

#[test]
fn a_base_two_levels_down_is_checked_against_what_the_user_allowed() {
    let io = IoCtx::new().unwrap();
    let images = tempfile::tempdir().unwrap();
    let mids = tempfile::tempdir().unwrap();
    let mid = mids.path().join("mid.qcow2");
    overlay(&io, &mid, "/etc/passwd", "raw");
    let img = images.path().join("top.qcow2");
    overlay(&io, &img, &mid.display().to_string(), "qcow2");
    let e =
        open(&io, &img, BackingPolicy::default().allow_file(&mid)).err().expect("the mid image may not widen the rule");
    assert_refused(&e, &mid, "/etc/passwd");
}

#[test]
fn a_chain_of_three_in_one_directory_opens() {
    let io = IoCtx::new().unwrap();
    let d = tempfile::tempdir().unwrap();
    let base: PathBuf = d.path().join("base.raw");
    raw(&base, b"bottom");
    overlay(&io, &d.path().join("mid.qcow2"), "base.raw", "raw");
    overlay(&io, &d.path().join("top.qcow2"), "mid.qcow2", "qcow2");
    let dev = open(&io, &d.path().join("top.qcow2"), BackingPolicy::default()).unwrap();
    assert_eq!(first_bytes(&io, &dev, 6), b"bottom");
    let m = qcow::map::map_path(&io, &d.path().join("top.qcow2")).unwrap();
    assert!(m.iter().any(|e| e.depth == 2), "{m:?}");
}
