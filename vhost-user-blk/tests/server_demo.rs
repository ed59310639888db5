//! `vhost-user-blk --demo`: creates the 8 GiB qcow2 demo disk once, serves it, prints the
//! QEMU and vmm-mini command lines, and stops cleanly on SIGTERM; a second run reuses the same disk.

mod server_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use server_common::daemon_bin;

/// Run `--demo` in `dir` until its socket appears, then SIGTERM it; returns its stdout.
fn run_demo_once(dir: &std::path::Path) -> String {
    let child = Command::new(daemon_bin())
        .arg("--demo")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start vhost-user-blk --demo");
    let socket = dir.join("strata-demo/disk.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the demo never created {}", socket.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().expect("wait for the demo");
    assert!(out.status.success(), "demo exited with {} after SIGTERM", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn demo_creates_a_qcow2_disk_once_and_prints_the_qemu_and_vmm_mini_commands() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stdout = run_demo_once(dir.path());
    let image = dir.path().join("strata-demo/disk.qcow2");
    let meta = std::fs::metadata(&image).expect("the demo disk exists");
    assert!(meta.len() < 16 << 20, "the demo disk should start nearly empty, is {} bytes", meta.len());
    assert!(stdout.contains("qemu-system-x86_64"), "no QEMU command printed:\n{stdout}");
    assert!(stdout.contains("vhost-user-blk-pci"), "no vhost-user-blk-pci device in:\n{stdout}");
    assert!(stdout.contains("share=on"), "guest memory must be shared:\n{stdout}");
    let sock = dir.path().canonicalize().unwrap().join("strata-demo/disk.sock");
    assert!(stdout.contains(&sock.display().to_string()), "the socket path is not in:\n{stdout}");
    let vmm = format!("--kernel BZIMAGE --initrd INITRD --disk socket={}", sock.display());
    assert!(stdout.contains(&vmm), "no vmm-mini command ({vmm}) in:\n{stdout}");
    let probe = stdout.lines().find(|l| l.contains(&format!(" probe --disk socket={}", sock.display())));
    assert!(probe.is_some(), "no probe in:\n{stdout}");
    // Every vmm-mini line works as printed: its first word is an executable that exists (the
    // vmm-mini beside the daemon) or `cargo` (the `cargo run -p vmm-mini --` form).
    for line in stdout.lines().filter(|l| l.contains("--disk socket=")) {
        let first = line.split_whitespace().next().unwrap_or("");
        let runnable = first == "cargo" || (first.contains("vmm-mini") && std::path::Path::new(first).is_file());
        assert!(runnable, "the vmm-mini line does not start with a path that exists or cargo: {line}");
        if first == "cargo" {
            assert!(line.contains("cargo run --release -p vmm-mini --"), "{line}");
        }
    }

    // The image is a real qcow2 of 8 GiB (judged by qemu-img when it is installed).
    match Command::new("qemu-img").args(["info", "--output=json", "-f", "qcow2"]).arg(&image).output() {
        Ok(out) if out.status.success() => {
            let info = String::from_utf8_lossy(&out.stdout);
            assert!(info.contains("\"virtual-size\": 8589934592"), "not an 8 GiB qcow2:\n{info}");
        }
        _ => eprintln!("SKIPPED: qemu-img check of the demo disk, because qemu-img is not installed"),
    }

    // A second run serves the same disk instead of creating a new one.
    let before = std::fs::read(&image).expect("read demo disk");
    run_demo_once(dir.path());
    let after = std::fs::read(&image).expect("read demo disk");
    assert_eq!(before.len(), after.len(), "the second run recreated the disk");
}
