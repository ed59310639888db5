//! `blkctl fio`: a real guest runs fio's verify job on a strata disk, then on qemu-storage-daemon
//! serving a copy, and the command reports both as JSON. Also its errors for bad input.

use std::path::PathBuf;
use std::process::Command;

use strata_tests::bins::bin_path;
use strata_tests::guest::require_qemu;
use strata_tests::scratch::ScratchDir;

fn verify_job() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fio-jobs/verify.fio")
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().expect("run qemu-img");
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn fio_verify_on_a_qcow2_overlay_compared_with_qemu_storage_daemon() {
    if !require_qemu("fio_verify_on_a_qcow2_overlay_compared_with_qemu_storage_daemon") {
        return;
    }
    // Arrange: a raw backing file with data in its first MiB, a qcow2 overlay over it.
    let dir = ScratchDir::new("blkctl-fio").expect("scratch dir");
    let base = dir.join("base.raw");
    std::fs::write(&base, vec![0x5a; 1 << 20]).expect("write base");
    std::fs::File::options().write(true).open(&base).and_then(|f| f.set_len(32 << 20)).expect("size base");
    let top = dir.join("top.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", "-F", "raw", "-b", base.to_str().unwrap(), top.to_str().unwrap()]);

    // Act
    let out = Command::new(bin_path("blkctl").expect("blkctl"))
        .arg("fio")
        .arg(format!("format=qcow2,path={}", top.display()))
        .arg(verify_job())
        .args(["--size", "8m", "--compare", "qsd", "--json", "--timeout", "5m"])
        .output()
        .expect("run blkctl fio");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "blkctl fio failed: {stderr}");

    // Assert: both servers ran the whole job (8 MiB of 4 KiB writes, each read back) cleanly.
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let runs = doc["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{doc}");
    assert_eq!(runs[0]["server"], "strata");
    assert_eq!(runs[1]["server"], "qemu-storage-daemon");
    assert!(runs[1]["version"].as_str().unwrap().starts_with("qemu-storage-daemon version"), "{}", runs[1]);
    for r in runs {
        assert_eq!(r["exit_code"], 0, "{r}");
        assert_eq!(r["summary"]["errors"], 0);
        assert_eq!(r["summary"]["write"]["ios"], 2048, "{}", r["summary"]);
        assert!(r["summary"]["read"]["ios"].as_u64().unwrap() >= 2048, "verify reads missing: {}", r["summary"]);
        assert_eq!(r["fio"]["jobs"][0]["job options"]["verify"], "crc32c");
    }
    assert!(stderr.contains("strata/qemu-storage-daemon IOPS: read"), "no ratio line: {stderr}");
    // strata wrote into the overlay only; the backing file is untouched and the image is clean.
    let data = std::fs::read(&base).expect("read base");
    assert!(data[..1 << 20].iter().all(|&b| b == 0x5a) && data[1 << 20..].iter().all(|&b| b == 0));
    qemu_img(&["check", "-q", "-f", "qcow2", top.to_str().unwrap()]);
}

#[test]
fn fio_refuses_a_missing_job_file_and_a_socket_in_the_spec() {
    let blkctl = bin_path("blkctl").expect("blkctl");
    let out = Command::new(&blkctl).args(["fio", "format=mem,size=16M", "/nonexistent/job.fio"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("job file /nonexistent/job.fio"), "{stderr}");

    let out = Command::new(&blkctl)
        .arg("fio")
        .arg("format=mem,size=16M,socket=/tmp/x.sock")
        .arg(verify_job())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("leave out socket="), "{stderr}");
}

#[test]
fn fio_under_vmm_mini_refuses_compare_and_names_a_missing_binary() {
    let blkctl = bin_path("blkctl").expect("blkctl");
    let job = verify_job();
    let run = |extra: &[&str]| {
        let out = Command::new(&blkctl).args(["fio", "format=mem,size=16M"]).arg(&job).args(extra).output().unwrap();
        assert!(!out.status.success(), "{extra:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = run(&["--vmm", "vmm-mini", "--compare", "qsd"]);
    assert!(stderr.contains("--compare qsd runs with --vmm qemu only"), "{stderr}");
    let stderr = run(&["--vmm", "vmm-mini", "--vmm-mini", "/nonexistent/vmm-mini"]);
    assert!(stderr.contains("vmm-mini binary /nonexistent/vmm-mini"), "{stderr}");
}

#[test]
fn fio_under_vmm_mini_direct_reports_a_failed_vmm_mini() {
    if !require_qemu("fio_under_vmm_mini_direct_reports_a_failed_vmm_mini") {
        return;
    }
    // Arrange: a "vmm-mini" that fails at once, as a real one does on a set-up error.
    let dir = ScratchDir::new("blkctl-fio-direct").expect("scratch dir");
    let fake = dir.join("vmm-mini");
    std::fs::write(&fake, "#!/bin/sh\necho 'vmm-mini: set-up failed' >&2\nexit 2\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let disk = dir.join("d.raw");
    std::fs::File::create(&disk).and_then(|f| f.set_len(16 << 20)).unwrap();

    // Act: the direct path (daemon for the disk, daemon for the results, the fio initramfs).
    let out = Command::new(bin_path("blkctl").expect("blkctl"))
        .arg("fio")
        .arg(format!("format=raw,path={}", disk.display()))
        .arg(verify_job())
        .args(["--vmm", "vmm-mini", "--vmm-mode", "direct", "--vmm-mini"])
        .arg(&fake)
        .output()
        .expect("run blkctl fio");

    // Assert: the exit status and vmm-mini's stderr are named (the results server stopped
    // cleanly first: a server that did not would be reported instead).
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("vmm-mini exited with exit status: 2"), "{stderr}");
    assert!(stderr.contains("vmm-mini: set-up failed"), "{stderr}");
}
