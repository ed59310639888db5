//! End-to-end: strata's own vhost-user-blk daemon serving a raw file to a real QEMU guest
//! (`vhost-user-blk-pci`, two queues, Debian's cloud kernel under TCG). The guest writes a
//! pattern with direct I/O and checks it; a second guest attaches to the same daemon and checks it
//! again; a third does so after the daemon was stopped with SIGTERM and started anew.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_tests::bins::bin_path;
use strata_tests::guest::{require_qemu, GuestArtifacts, Initramfs, QemuGuest};
use strata_tests::scratch::ScratchDir;

const MIB: u64 = 1 << 20;

/// The daemon under test, killed if the test fails before stopping it.
struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    fn start(disk: &Path, socket: &Path) -> Daemon {
        Daemon::start_format(disk, socket, "raw")
    }

    fn start_format(disk: &Path, socket: &Path, format: &str) -> Daemon {
        let _ = std::fs::remove_file(socket);
        let spec = format!(
            "socket={},format={format},path={},num-queues=2,serial=strata-e2e",
            socket.display(),
            disk.display()
        );
        let bin = bin_path("vhost-user-blk").expect("build or find the vhost-user-blk binary");
        let child =
            Command::new(bin).arg("--disk").arg(&spec).stdin(Stdio::null()).spawn().expect("start vhost-user-blk");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "daemon did not create {} within 20 s", socket.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child: Some(child) }
    }

    /// SIGTERM, then expect a clean exit 0 (in-flight requests finished, disks flushed).
    fn stop(mut self) {
        let mut child = self.child.take().expect("running daemon");
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait for daemon") {
                assert!(status.success(), "daemon exited with {status} after SIGTERM");
                return;
            }
            assert!(Instant::now() < deadline, "daemon did not exit within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn boot(art: &GuestArtifacts, dir: &ScratchDir, name: &str, socket: &Path, script: &str) -> String {
    let initrd: PathBuf = dir.join(format!("{name}.cpio"));
    Initramfs::builder().artifacts(art).script(script).build(&initrd).expect("build initramfs");
    // Two vCPUs: Linux uses at most one virtio-blk queue per CPU.
    let out = QemuGuest::new(&art.kernel, &initrd).smp(2).vhost_user_blk(socket, 2).run().expect("run qemu");
    out.assert_success();
    out.script_output().to_string()
}

/// The first guest's script: check the device, write 4 MiB of random data at 8 MiB with O_DIRECT
/// (both queues in use), flush, read it back, print the checksum.
const WRITE_SCRIPT: &str = r#"
set -e
wait_dev /dev/vda
echo "size: $(cat /sys/block/vda/size)"
echo "queues: $(ls /sys/block/vda/mq | wc -l)"
echo "serial: $(cat /sys/block/vda/serial 2>/dev/null || echo none)"
dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 2>/dev/null
dd if=/tmp/pattern of=/dev/vda bs=64k seek=128 oflag=direct conv=fsync 2>/dev/null
dd if=/dev/vda of=/tmp/back bs=64k skip=128 count=64 iflag=direct 2>/dev/null
cmp /tmp/pattern /tmp/back
echo "sum: $(md5sum < /tmp/pattern | cut -d' ' -f1)"
echo write-ok
"#;

/// A later guest's script: read the range back and print its checksum.
const CHECK_SCRIPT: &str = r#"
set -e
wait_dev /dev/vda
dd if=/dev/vda of=/tmp/back bs=64k skip=128 count=64 iflag=direct 2>/dev/null
echo "sum: $(md5sum < /tmp/back | cut -d' ' -f1)"
"#;

fn checksum_of(script_output: &str) -> String {
    script_output.lines().find_map(|l| l.strip_prefix("sum: ")).expect("checksum line").trim().to_string()
}

#[test]
fn qemu_guest_writes_a_qcow2_image_that_qemu_img_accepts() {
    if !require_qemu("qemu_guest_writes_a_qcow2_image_that_qemu_img_accepts") {
        return;
    }
    let art = GuestArtifacts::ensure().expect("guest artifacts (apt-get download of kernel and busybox)");
    let dir = ScratchDir::new("e2e-server-qcow2").expect("scratch dir");
    let image = dir.join("disk.qcow2");
    let st = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&image).arg("64M").status();
    assert!(st.expect("run qemu-img create").success(), "qemu-img create failed");
    let socket = dir.join("vub.sock");

    // Arrange + act: the daemon serves the image; a guest writes and checks; a second guest
    // re-reads after a daemon restart.
    let daemon = Daemon::start_format(&image, &socket, "qcow2");
    let first = boot(&art, &dir, "first", &socket, WRITE_SCRIPT);
    assert!(first.contains("write-ok"), "write/readback failed:\n{first}");
    let sum = checksum_of(&first);
    daemon.stop();
    let daemon = Daemon::start_format(&image, &socket, "qcow2");
    let second = boot(&art, &dir, "second", &socket, CHECK_SCRIPT);
    assert!(second.contains(&format!("sum: {sum}")), "qcow2 data lost across a daemon restart:\n{second}");
    daemon.stop();

    // Assert: qemu-img finds the image clean, and its raw contents hold the data at 8 MiB only.
    let check = Command::new("qemu-img").args(["check", "-f", "qcow2"]).arg(&image).output().expect("qemu-img check");
    assert!(
        check.status.success(),
        "qemu-img check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let raw = dir.join("converted.raw");
    let conv = Command::new("qemu-img").args(["convert", "-f", "qcow2", "-O", "raw"]).arg(&image).arg(&raw).status();
    assert!(conv.expect("qemu-img convert").success());
    let data = std::fs::read(&raw).expect("read converted image");
    assert_eq!(data.len() as u64, 64 * MIB);
    assert!(data[..8 * MIB as usize].iter().all(|&b| b == 0), "bytes before the written range changed");
    assert!(data[12 * MIB as usize..].iter().all(|&b| b == 0), "bytes after the written range changed");
    assert!(data[8 * MIB as usize..12 * MIB as usize].iter().any(|&b| b != 0), "the guest's data is missing");
}

#[test]
fn qemu_guests_write_and_reread_through_the_strata_daemon() {
    if !require_qemu("qemu_guests_write_and_reread_through_the_strata_daemon") {
        return;
    }
    let art = GuestArtifacts::ensure().expect("guest artifacts (apt-get download of kernel and busybox)");
    let dir = ScratchDir::new("e2e-server").expect("scratch dir");
    let disk = dir.join("disk.raw");
    std::fs::File::create(&disk).and_then(|f| f.set_len(64 * MIB)).expect("create 64 MiB disk");
    let socket = dir.join("vub.sock");

    // Arrange: the daemon serves the file with two queues.
    let daemon = Daemon::start(&disk, &socket);

    // Act 1: the first guest checks the device, writes, flushes, reads back.
    let first = boot(&art, &dir, "first", &socket, WRITE_SCRIPT);
    assert!(first.contains(&format!("size: {}", 64 * MIB / 512)), "guest saw the wrong capacity:\n{first}");
    assert!(first.contains("queues: 2"), "guest did not get two queues:\n{first}");
    assert!(first.contains("serial: strata-e2e"), "GET_ID serial missing:\n{first}");
    assert!(first.contains("write-ok"), "write/readback failed:\n{first}");
    let sum = checksum_of(&first);

    // Assert 1: the host file holds exactly what the guest wrote, nothing outside its range.
    let data = std::fs::read(&disk).expect("read disk");
    assert!(data[..8 * MIB as usize].iter().all(|&b| b == 0), "bytes before the written range changed");
    assert!(data[12 * MIB as usize..].iter().all(|&b| b == 0), "bytes after the written range changed");

    // Act 2: a second guest attaches to the same running daemon and checks the data.
    let second = boot(&art, &dir, "second", &socket, CHECK_SCRIPT);
    assert!(second.contains(&format!("sum: {sum}")), "second guest read other data:\n{second}");

    // Act 3: stop the daemon (SIGTERM: exit 0), start it again, and check from a third guest.
    daemon.stop();
    let daemon = Daemon::start(&disk, &socket);
    let third = boot(&art, &dir, "third", &socket, CHECK_SCRIPT);
    assert!(third.contains(&format!("sum: {sum}")), "data lost across a daemon restart:\n{third}");
    daemon.stop();
}
