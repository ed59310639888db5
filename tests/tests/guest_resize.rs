//! End-to-end live resize: a Linux guest under QEMU (TCG) runs on a disk strata serves (raw,
//! qcow2, a thin volume); the disk is grown through the daemon's control socket while the guest
//! runs. The guest must see the new size by itself (no rescan, no reboot: the daemon sends
//! VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, QEMU raises the config interrupt, virtio_blk re-reads
//! the capacity), then write and read back its new last MiB. A shrink without `shrink` is
//! refused; `qemu-img check` is clean after the qcow2 case.
//!
//! Needs `qemu-system-x86_64` (skipped with a `SKIPPED:` line if missing, unless
//! `STRATA_REQUIRE_QEMU` is set) and apt access for the guest artifacts.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use strata_tests::bins::bin_path;
use strata_tests::daemon::Daemon;
use strata_tests::guest::{require_qemu, GuestArtifacts, Initramfs, QemuGuest};
use strata_tests::scratch::ScratchDir;
use vhost_user_blk::api::thin::call;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 * MIB;
const GROWN: u64 = 96 * MIB;

/// The guest: report the size, say it is ready, wait (up to 60 s) for the size to change by
/// itself, then write and read back the new last MiB with direct I/O.
const SCRIPT: &str = r#"
set -e
wait_dev /dev/vda
old=$(cat /sys/block/vda/size)
echo "old-size: $old sectors"
echo resize-me-now
i=0
while [ "$(cat /sys/block/vda/size)" = "$old" ]; do
  i=$((i+1))
  [ $i -gt 600 ] && { echo "size never changed"; exit 1; }
  sleep 0.1
done
new=$(cat /sys/block/vda/size)
echo "new-size: $new sectors"
yes strata-grown-tail | head -c 1048576 > /tmp/pattern
dd if=/tmp/pattern of=/dev/vda bs=4096 seek=$((new / 8 - 256)) oflag=direct conv=fsync 2>/dev/null
dd if=/dev/vda of=/tmp/back bs=4096 skip=$((new / 8 - 256)) count=256 iflag=direct 2>/dev/null
cmp /tmp/pattern /tmp/back
echo tail-readback-ok
"#;

fn blkctl(args: &[&str]) {
    let bin = bin_path("blkctl").expect("build or find blkctl");
    let o = Command::new(bin).args(args).output().expect("run blkctl");
    assert!(o.status.success(), "blkctl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// Serve `device` (disk spec keys), boot a guest on it, grow it by 32 MiB once the guest is up.
fn grow_under_guest(test: &str, dir: &Path, device: &str) {
    let art = GuestArtifacts::ensure().expect("guest artifacts (apt-get download of kernel and busybox)");
    let sock = dir.join("vub.sock");
    let api = dir.join("api.sock");
    let spec = format!("socket={},name=disk,{device}", sock.display());
    let daemon = Daemon::start(
        &["--disk".into(), spec, "--api-socket".into(), api.display().to_string()],
        &[sock.clone(), api.clone()],
    );
    let initrd = dir.join("initrd.cpio");
    Initramfs::builder().artifacts(&art).script(SCRIPT).build(&initrd).expect("build initramfs");
    let mut guest = QemuGuest::new(&art.kernel, &initrd).vhost_user_blk(&sock, 1).spawn().expect("start qemu");
    guest.wait_for(Duration::from_secs(120), "the guest's ready line", |c| c.contains("resize-me-now")).unwrap();

    let e = call(&api, &json!({"cmd": "resize", "name": "disk", "size": SIZE / 2})).unwrap_err();
    assert!(e.contains("shrink"), "{test}: a shrink without shrink: {e}");
    let v = call(&api, &json!({"cmd": "resize", "name": "disk", "size": "+32M"})).expect("resize");
    assert_eq!(v["size"].as_u64(), Some(GROWN), "{test}: {v}");
    assert_eq!(v["notified"], json!(true), "{test}: the frontend was not told: {v}");

    let out = guest.wait(Duration::from_secs(180)).expect("guest run");
    out.assert_success();
    let s = out.script_output();
    assert!(s.contains(&format!("old-size: {} sectors", SIZE / 512)), "{test}: console:\n{}", out.console);
    assert!(s.contains(&format!("new-size: {} sectors", GROWN / 512)), "{test}: console:\n{}", out.console);
    assert!(s.contains("tail-readback-ok"), "{test}: console:\n{}", out.console);
    daemon.stop();
}

#[test]
fn guest_sees_a_raw_disk_grow() {
    if !require_qemu("guest_sees_a_raw_disk_grow") {
        return;
    }
    let dir = ScratchDir::new("guest-resize-raw").expect("scratch dir");
    let disk = dir.join("disk.raw");
    std::fs::File::create(&disk).and_then(|f| f.set_len(SIZE)).expect("create the disk file");
    grow_under_guest("raw", dir.path(), &format!("format=raw,path={}", disk.display()));
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), GROWN);
}

#[test]
fn guest_sees_a_qcow2_image_grow() {
    if !require_qemu("guest_sees_a_qcow2_image_grow") {
        return;
    }
    let dir = ScratchDir::new("guest-resize-qcow2").expect("scratch dir");
    let img = dir.join("disk.qcow2");
    blkctl(&["qcow2", "create", img.to_str().unwrap(), "64M"]);
    grow_under_guest("qcow2", dir.path(), &format!("format=qcow2,path={}", img.display()));
    let o = Command::new("qemu-img").args(["check", img.to_str().unwrap()]).output().expect("run qemu-img");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && text.contains("No errors"), "qemu-img check: {text}");
}

#[test]
fn guest_sees_a_thin_volume_grow() {
    if !require_qemu("guest_sees_a_thin_volume_grow") {
        return;
    }
    let dir = ScratchDir::new("guest-resize-thin").expect("scratch dir");
    let pool = dir.join("pool.img");
    std::fs::File::create(&pool).and_then(|f| f.set_len(256 * MIB)).expect("create the pool file");
    blkctl(&["thin", "pool-create", pool.to_str().unwrap()]);
    blkctl(&["thin", "create", pool.to_str().unwrap(), "v", "64M"]);
    grow_under_guest("thin", dir.path(), &format!("format=thin,pool={},volume=v", pool.display()));
}
