//! Linux under vmm-mini, for real: `vmm-mini/scripts/nested-linux.sh` boots Debian's kernel in a
//! nested KVM inside a QEMU TCG guest with strata disks — the bzImage (64-bit boot protocol,
//! 2 vCPUs, 2 queues), the vmlinux extracted from it (PVH entry, reset), a boot that loses
//! its daemon, and one that keeps verifying its writes while its daemon is killed and started
//! again twice (`reconnect=100`).
//!
//! It takes minutes, far past the per-test budget (docs/testing.md has how long it took where),
//! so it runs only with `VMM_MINI_NESTED=1` and otherwise prints `SKIPPED:` saying so;
//! `scripts/test.sh` repeats that at its end.
//! Run it with: `VMM_MINI_NESTED=1 cargo test -p strata-tests --test nested -- --nocapture`.
//!
//! The same opt-in covers `blkctl fio --vmm vmm-mini` on this machine (nested: the fio guest
//! under vmm-mini inside a QEMU TCG guest) and the end-to-end matrix's vmm-mini cases
//! (`e2e_matrix.rs`, `matrix_raw_and_qcow2_under_vmm_mini`).

use std::process::Command;
use std::time::Instant;

use strata_tests::bins::{bin_path, workspace_root};
use strata_tests::guest::{require_qemu, GuestArtifacts};
use strata_tests::scratch::ScratchDir;

#[test]
fn linux_boots_under_vmm_mini_in_nested_kvm_with_strata_disks() {
    if std::env::var_os("VMM_MINI_NESTED").is_none() {
        eprintln!(
            "SKIPPED: nested Linux boot under vmm-mini (1 to 20 minutes here): opt-in, set VMM_MINI_NESTED=1 \
             (docs/vmm-mini.md)"
        );
        return;
    }
    if !require_qemu("linux_boots_under_vmm_mini_in_nested_kvm_with_strata_disks") {
        return;
    }
    let art = GuestArtifacts::ensure().expect("guest artifacts (apt-get download of kernel and busybox)");
    let vmm = bin_path("vmm-mini").expect("vmm-mini binary");
    let daemon = bin_path("vhost-user-blk").expect("vhost-user-blk binary");
    let script = workspace_root().join("vmm-mini/scripts/nested-linux.sh");

    let started = Instant::now();
    let out = Command::new("sh")
        .arg(&script)
        .env("VMM_MINI", &vmm)
        .env("VHOST_USER_BLK", &daemon)
        .env("KERNEL", &art.kernel)
        .env("MODULES", &art.modules_dir)
        .env("BUSYBOX", &art.busybox)
        .output()
        .expect("run nested-linux.sh");
    eprintln!("nested-linux.sh: {:.0} s", started.elapsed().as_secs_f64());

    let console = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(77), "nested-linux.sh skipped although everything was provided: {stderr}");
    for line in console.lines().filter(|l| l.starts_with("OUTER:") || l.starts_with("INNER:")) {
        eprintln!("{line}");
    }
    assert!(out.status.success(), "nested boot failed:\n{console}\n{stderr}");
    assert!(console.contains("INNER: PASS"), "{console}");
    assert!(console.contains("OUTER: pvh reboot run: INNER: loader 0xb0"), "{console}");
    assert!(console.contains("OUTER: reconnect run: 2 reconnects"), "{console}");
    assert!(console.contains("OUTER: reconnect run: INNER: RW PASS"), "{console}");
}

/// `blkctl fio --vmm vmm-mini --vmm-mode nested` on a qcow2 overlay over a raw backing file:
/// the verify job passes in the inner guest, the overlay comes back with fio's writes (clean by
/// `qemu-img check`), and the backing file is untouched.
#[test]
fn blkctl_fio_verify_under_vmm_mini_nested_on_a_qcow2_overlay() {
    if std::env::var_os("VMM_MINI_NESTED").is_none() {
        eprintln!(
            "SKIPPED: blkctl fio under vmm-mini, nested (minutes here): opt-in, set VMM_MINI_NESTED=1 (docs/vmm-mini.md)"
        );
        return;
    }
    if !require_qemu("blkctl_fio_verify_under_vmm_mini_nested_on_a_qcow2_overlay") {
        return;
    }
    let dir = ScratchDir::new("nested-blkctl-fio").expect("scratch dir");
    let base = dir.join("base.raw");
    std::fs::write(&base, vec![0x5a; 32 << 20]).expect("write base");
    let top = dir.join("top.qcow2");
    let img = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&top)
        .status()
        .expect("qemu-img create");
    assert!(img.success());
    let job = workspace_root().join("fio-jobs/verify.fio");

    let started = Instant::now();
    let out = Command::new(bin_path("blkctl").expect("blkctl"))
        .arg("fio")
        .arg(format!("format=qcow2,path={}", top.display()))
        .arg(&job)
        .args(["--size", "8m", "--vmm", "vmm-mini", "--vmm-mode", "nested", "--json", "--timeout", "40m"])
        .output()
        .expect("run blkctl fio");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("blkctl fio --vmm vmm-mini (nested): {:.0} s\n{stderr}", started.elapsed().as_secs_f64());
    assert!(out.status.success(), "blkctl fio failed: {stderr}");

    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let run = &doc["runs"][0];
    assert!(run["vmm"].as_str().unwrap().starts_with("vmm-mini nested"), "{run}");
    assert_eq!(run["exit_code"], 0, "{run}");
    assert_eq!(run["summary"]["errors"], 0);
    assert_eq!(run["summary"]["write"]["ios"], 2048, "{}", run["summary"]);
    assert!(run["summary"]["read"]["ios"].as_u64().unwrap() >= 2048, "verify reads missing: {}", run["summary"]);
    assert_eq!(run["fio"]["jobs"][0]["job options"]["verify"], "crc32c");
    assert!(std::fs::read(&base).unwrap().iter().all(|&b| b == 0x5a), "the backing file changed");
    let check = Command::new("qemu-img").args(["check", "-q", "-f", "qcow2"]).arg(&top).status().unwrap();
    assert!(check.success(), "qemu-img check of the overlay written back");
    let map = Command::new("qemu-img").args(["map", "--output=json", "-f", "qcow2"]).arg(&top).output().unwrap();
    let map: serde_json::Value = serde_json::from_slice(&map.stdout).expect("qemu-img map JSON");
    let in_overlay = map.as_array().expect("map entries").iter().any(|e| e["depth"] == 0 && e["data"] == true);
    assert!(in_overlay, "fio's writes are not in the overlay: {map}");
}
