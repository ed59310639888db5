//! Helpers for the qcow2 tests: qemu-img/qemu-io runs and whole-image reads through strata.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use blockdev::{BlockDev, IoCtx, IoTag, SharedBuf};
use qcow::{open_path, Options, Qcow2};

/// True when qemu-img and qemu-io run; otherwise prints SKIPPED and the test returns.
pub fn have_qemu(test: &str) -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success())
        && Command::new("qemu-io").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: {test}: qemu-img/qemu-io not installed (apt-get install qemu-utils)");
    }
    ok
}

/// Run a command, panic with its output if it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img create -f qcow2 -o OPTS PATH SIZE`.
pub fn qemu_create(path: &Path, size: u64, opts: &str) {
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", "qcow2"]);
    if !opts.is_empty() {
        c.args(["-o", opts]);
    }
    run(c.arg(path).arg(size.to_string()));
}

/// Run qemu-io commands on an image (`-f qcow2`).
pub fn qemu_io(path: &Path, cmds: &[String]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "qcow2"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    run(c.arg(path));
}

/// What qemu reads: `qemu-img convert -O raw`.
pub fn qemu_raw(path: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("{}.raw", path.file_name().unwrap().to_string_lossy()));
    run(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(path).arg(&out));
    std::fs::read(&out).unwrap()
}

/// `qemu-img check` exit code and output.
pub fn qemu_check(path: &Path) -> (i32, String) {
    let out = Command::new("qemu-img").args(["check", "-f", "qcow2"]).arg(path).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

/// Open with strata.
pub fn open(io: &IoCtx, path: &Path, read_only: bool) -> Qcow2 {
    let opts = Options { read_only, ..Default::default() };
    io.block_on(open_path(io, path, &opts)).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Read the whole disk through strata, in `chunk`-byte requests.
pub fn read_all(io: &IoCtx, dev: &dyn BlockDev, chunk: usize) -> Vec<u8> {
    let size = dev.info().size as usize;
    let mut out = vec![0u8; size];
    let mut off = 0;
    while off < size {
        let n = chunk.min(size - off);
        let mut b = SharedBuf::new(n);
        io.block_on(dev.read(io, off as u64, b.io(), IoTag::DATA)).unwrap_or_else(|e| panic!("read at {off}: {e}"));
        out[off..off + n].copy_from_slice(b.bytes());
        off += n;
    }
    out
}

/// Write `data` at `off` through strata.
pub fn write(io: &IoCtx, dev: &dyn BlockDev, off: u64, data: &[u8]) {
    let mut b = SharedBuf::from_slice(data);
    io.block_on(dev.write(io, off, b.io(), false, IoTag::DATA)).unwrap_or_else(|e| panic!("write at {off}: {e}"));
}

/// Compare two disks and report the first difference.
pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: sizes differ");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i} ({:#x}): strata {:#04x}, qemu {:#04x}", i, got[i], want[i]);
    }
}

/// A temporary directory.
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Shorthand for a path in a directory.
pub fn p(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Keep an Arc<dyn BlockDev> handy.
pub fn arc(dev: Qcow2) -> Arc<dyn BlockDev> {
    Arc::new(dev)
}
