//! End-to-end: boot Debian's cloud kernel under QEMU TCG with our initramfs, and drive a
//! vhost-user-blk disk served by qemu-storage-daemon (the reference server) from the guest.
//!
//! These tests need `qemu-system-x86_64` (skipped with a `SKIPPED:` line if it is missing,
//! unless `STRATA_REQUIRE_QEMU` is set) and apt access for the guest artifacts.

use std::time::Instant;

use strata_tests::guest::{require_qemu, GuestArtifacts, Initramfs, QemuGuest, StorageDaemon};
use strata_tests::scratch::ScratchDir;

#[test]
fn guest_boots_and_runs_script() {
    if !require_qemu("guest_boots_and_runs_script") {
        return;
    }
    let art = GuestArtifacts::ensure().expect("guest artifacts (apt-get download of kernel and busybox)");
    let dir = ScratchDir::new("guest-boot").expect("scratch dir in the temp dir");
    let initrd = dir.join("initrd.cpio");
    Initramfs::builder()
        .artifacts(&art)
        .script("echo hello-from-strata-guest; uname -r; ls /sys/bus/virtio/drivers")
        .build(&initrd)
        .expect("build initramfs");

    let t = Instant::now();
    let out = QemuGuest::new(&art.kernel, &initrd).run().expect("run qemu");
    eprintln!("guest boot + script + poweroff: {:.1} s", t.elapsed().as_secs_f64());

    out.assert_success();
    let script = out.script_output();
    assert!(script.contains("hello-from-strata-guest"), "marker missing; console:\n{}", out.console);
    assert!(script.contains(&art.kernel_release), "guest runs another kernel; console:\n{}", out.console);
    assert!(script.contains("virtio_blk"), "virtio_blk driver not loaded; console:\n{}", out.console);
}

#[test]
fn guest_writes_through_vhost_user_blk_to_host_file() {
    if !require_qemu("guest_writes_through_vhost_user_blk_to_host_file") {
        return;
    }
    const MIB: u64 = 1 << 20;
    let art = GuestArtifacts::ensure().expect("guest artifacts (apt-get download of kernel and busybox)");
    let dir = ScratchDir::new("guest-vub").expect("scratch dir in the temp dir");

    // Arrange: a 64 MiB raw file with a host-written line in sector 0, exported by qsd.
    let disk = dir.join("disk.raw");
    let file = std::fs::File::create(&disk).expect("create disk file");
    file.set_len(64 * MIB).expect("size disk file");
    std::os::unix::fs::FileExt::write_all_at(&file, b"written-by-the-host\n", 0).expect("write sector 0");
    drop(file);
    let qsd = StorageDaemon::export_raw(&disk, dir.join("vub.sock"), 1).expect("start qemu-storage-daemon");

    // Act: the guest reads sector 0, writes 1 MiB of pattern at 1 MiB with O_DIRECT, reads it back.
    let script = r#"
set -e
wait_dev /dev/vda
echo "size: $(cat /sys/block/vda/size) sectors"
dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | head -n 1
yes strata-pattern-line | head -c 1048576 > /tmp/pattern
dd if=/tmp/pattern of=/dev/vda bs=4096 seek=256 oflag=direct conv=fsync 2>/dev/null
dd if=/dev/vda of=/tmp/back bs=4096 skip=256 count=256 iflag=direct 2>/dev/null
cmp /tmp/pattern /tmp/back
echo readback-ok
"#;
    let initrd = dir.join("initrd.cpio");
    Initramfs::builder().artifacts(&art).script(script).build(&initrd).expect("build initramfs");
    let out = QemuGuest::new(&art.kernel, &initrd).vhost_user_blk(qsd.socket(), 1).run().expect("run qemu");
    drop(qsd);

    // Assert: the guest saw the host's data, and the host sees the guest's.
    out.assert_success();
    let script_out = out.script_output();
    assert!(script_out.contains(&format!("size: {} sectors", 64 * MIB / 512)), "console:\n{}", out.console);
    assert!(script_out.contains("written-by-the-host"), "guest did not read the host's data:\n{}", out.console);
    assert!(script_out.contains("readback-ok"), "console:\n{}", out.console);
    let data = std::fs::read(&disk).expect("read disk file");
    let expected: Vec<u8> = b"strata-pattern-line\n".iter().copied().cycle().take(MIB as usize).collect();
    assert!(data[MIB as usize..2 * MIB as usize] == expected[..], "host file does not hold the guest's pattern");
    assert!(data[2 * MIB as usize..].iter().all(|&b| b == 0), "guest wrote past its range");
}

#[test]
fn guest_runs_fio_on_vhost_user_blk() {
    if !require_qemu("guest_runs_fio_on_vhost_user_blk") {
        return;
    }
    let art = GuestArtifacts::ensure().expect("guest artifacts (apt-get download of kernel and busybox)");
    let dir = ScratchDir::new("guest-fio").expect("scratch dir in the temp dir");
    let disk = dir.join("disk.raw");
    std::fs::File::create(&disk).and_then(|f| f.set_len(32 << 20)).expect("create 32 MiB disk file");
    let qsd = StorageDaemon::export_raw(&disk, dir.join("vub.sock"), 1).expect("start qemu-storage-daemon");

    let script = "wait_dev /dev/vda && fio --name=smoke --filename=/dev/vda --direct=1 --rw=randwrite --bs=4k \
                  --size=4M --ioengine=psync --output-format=terse --terse-version=3 | cut -d';' -f1-3";
    let initrd = dir.join("initrd.cpio");
    Initramfs::builder().artifacts(&art).with_fio(true).script(script).build(&initrd).expect("build initramfs");
    let out = QemuGuest::new(&art.kernel, &initrd).vhost_user_blk(qsd.socket(), 1).run().expect("run qemu");

    out.assert_success();
    assert!(out.script_output().contains("3;fio-"), "no fio terse result; console:\n{}", out.console);
}
