//! The daemon and `blkctl qcow2` open a backing file only from the image's own directory, a
//! `backing-dir` (`--backing-dir`) or a `backing-file` (`--backing-file`): an image whose header
//! names `/etc/passwd`, `../../etc/shadow` or a symlink out of its directory is refused with an
//! error naming the image, the path and the key; one allowed is served to a libblkio client.

mod server_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use blockdev::IoCtx;
use server_common::{blkctl_bin, daemon_bin, tempdir, Client, DaemonProcess};

const SIZE: u64 = 1 << 20;

/// A qcow2 image at `path` whose header names `backing` (format `fmt`).
fn overlay(path: &Path, backing: &str, fmt: &str) {
    let o = qcow::CreateOptions {
        size: SIZE,
        backing_file: Some(backing.to_string()),
        backing_format: Some(fmt.to_string()),
        ..Default::default()
    };
    qcow::create_path(&IoCtx::new().unwrap(), path, &o).unwrap();
}

/// A raw file of `SIZE` bytes starting with `tag`.
fn raw(path: &Path, tag: &[u8]) {
    let mut v = vec![0u8; SIZE as usize];
    v[..tag.len()].copy_from_slice(tag);
    std::fs::write(path, v).unwrap();
}

/// Start the daemon on `args`, which must fail: its stderr (waited for up to 20 s).
fn daemon_refuses(args: &[String]) -> String {
    let mut child = Command::new(daemon_bin()).args(args).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon served {args:?} instead of refusing it");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn disk(sock: &Path, img: &Path, extra: &str) -> Vec<String> {
    vec!["--disk".into(), format!("socket={},format=qcow2,path={}{extra}", sock.display(), img.display())]
}

fn blkctl(args: &[&str]) -> Output {
    Command::new(blkctl_bin()).args(args).output().unwrap()
}

fn assert_names(msg: &str, img: &Path, asked: &str, key: &str) {
    assert!(msg.contains(&img.display().to_string()), "image not named: {msg}");
    assert!(msg.contains(asked), "path not named: {msg}");
    assert!(msg.contains(key), "{key} not named: {msg}");
}

/// Serve `args` and read the first `tag.len()` bytes through libblkio.
fn served_reads(args: &[String], sock: &Path, tag: &[u8]) {
    let d = DaemonProcess::start(args, &[sock]);
    let mut c = Client::connect(sock, 1, 4096);
    let (ret, got) = c.read(0, 0, 4096);
    assert_eq!(ret, 0);
    assert_eq!(&got[..tag.len()], tag, "{args:?}");
    drop(c);
    d.stop();
}

#[test]
fn a_raw_backing_file_etc_passwd_is_refused() {
    let dir = tempdir();
    let img = dir.path().join("evil.qcow2");
    overlay(&img, "/etc/passwd", "raw");
    let err = daemon_refuses(&disk(&dir.path().join("s.sock"), &img, ""));
    assert_names(&err, &img, "/etc/passwd", "backing-dir=/etc");
    assert!(err.contains("backing-file=/etc/passwd"), "{err}");

    let out = blkctl(&["qcow2", "map", img.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_names(&String::from_utf8_lossy(&out.stderr), &img, "/etc/passwd", "--backing-dir /etc");
    let out = blkctl(&["qcow2", "convert", img.to_str().unwrap(), dir.path().join("o.qcow2").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_names(&String::from_utf8_lossy(&out.stderr), &img, "/etc/passwd", "--backing-file /etc/passwd");
    assert!(!dir.path().join("o.qcow2").exists());
}

#[test]
fn a_relative_name_escaping_with_dotdot_is_refused() {
    let dir = tempdir();
    let img = dir.path().join("evil.qcow2");
    let depth = dir.path().canonicalize().unwrap().components().count() - 1;
    let name = format!("{}etc/shadow", "../".repeat(depth));
    overlay(&img, &name, "raw");
    let err = daemon_refuses(&disk(&dir.path().join("s.sock"), &img, ""));
    assert_names(&err, &img, &name, "backing-dir=");
    assert!(err.contains("/etc/shadow"), "the resolved path is named: {err}");
}

#[test]
fn a_symlink_out_of_the_image_directory_is_refused() {
    let dir = tempdir();
    let outside = tempdir();
    let target = outside.path().join("host.raw");
    raw(&target, b"host data");
    std::os::unix::fs::symlink(&target, dir.path().join("base.raw")).unwrap();
    let img = dir.path().join("top.qcow2");
    overlay(&img, "base.raw", "raw");
    let err = daemon_refuses(&disk(&dir.path().join("s.sock"), &img, ""));
    assert_names(&err, &img, "base.raw", "backing-dir=");
    assert!(err.contains("host.raw"), "the real path is named: {err}");
}

#[test]
fn a_backing_file_in_an_allowed_directory_is_served() {
    let images = tempdir();
    let bases = tempdir();
    let base = bases.path().join("base.raw");
    raw(&base, b"golden base");
    let img = images.path().join("vm.qcow2");
    overlay(&img, base.to_str().unwrap(), "raw");
    let sock = images.path().join("s.sock");

    let err = daemon_refuses(&disk(&sock, &img, ""));
    assert_names(&err, &img, base.to_str().unwrap(), "backing-dir=");

    // backing-dir= (repeatable: a directory that does not hold it is harmless), then backing-file=.
    let extra = format!(",backing-dir={},backing-dir={}", images.path().display(), bases.path().display());
    served_reads(&disk(&sock, &img, &extra), &sock, b"golden base");
    served_reads(&disk(&sock, &img, &format!(",backing-file={}", base.display())), &sock, b"golden base");

    // The config file's form: an array.
    let config = images.path().join("strata.toml");
    std::fs::write(
        &config,
        format!(
            "[[export]]\nsocket = {:?}\nformat = \"qcow2\"\npath = {:?}\nbacking-dir = [{:?}]\n",
            sock.display().to_string(),
            img.display().to_string(),
            bases.path().display().to_string()
        ),
    )
    .unwrap();
    served_reads(&["--config".into(), config.display().to_string()], &sock, b"golden base");

    // blkctl: map follows the chain with the flags; info and check look at the image alone.
    let i = img.to_str().unwrap();
    let out = blkctl(&["qcow2", "map", "--json", i, "--backing-dir", bases.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"depth\": 1"), "{}", String::from_utf8_lossy(&out.stdout));
    let out = blkctl(&["qcow2", "map", i, "--backing-file", base.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for cmd in ["info", "check"] {
        let out = blkctl(&["qcow2", cmd, i]);
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let copy = images.path().join("flat.raw");
    let out = blkctl(&[
        "qcow2",
        "convert",
        "-O",
        "raw",
        "--backing-dir",
        bases.path().to_str().unwrap(),
        i,
        copy.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&copy).unwrap().starts_with(b"golden base"));
}

#[test]
fn a_chain_of_three_in_one_directory_is_served() {
    let dir = tempdir();
    let base: PathBuf = dir.path().join("base.raw");
    raw(&base, b"bottom layer");
    overlay(&dir.path().join("mid.qcow2"), "base.raw", "raw");
    overlay(&dir.path().join("top.qcow2"), "mid.qcow2", "qcow2");
    let sock = dir.path().join("s.sock");
    served_reads(&disk(&sock, &dir.path().join("top.qcow2"), ""), &sock, b"bottom layer");
    let out = blkctl(&["qcow2", "map", "--json", dir.path().join("top.qcow2").to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"depth\": 2"));
}
