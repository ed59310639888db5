//! End-to-end: a QEMU guest keeps its disk while the daemon under it is SIGKILLed and started
//! again, several times, in the middle of I/O. QEMU's chardev reconnects (`reconnect-ms=100`),
//! gives the new daemon its in-flight region back, and the new daemon resubmits what the old
//! one had in flight: the guest's writers and readers see no failed request, no mismatch, and
//! the kernel logs no I/O error.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_tests::bins::bin_path;
use strata_tests::guest::{qemu_escape, require_qemu, GuestArtifacts, Initramfs, QemuGuest};
use strata_tests::scratch::ScratchDir;

const MIB: u64 = 1 << 20;
const KILLS: usize = 3;

/// Start the daemon, its log in `log`.
fn start_daemon(disk: &Path, socket: &Path, log: &Path) -> Child {
    let spec = format!("socket={},format=raw,path={},num-queues=2", socket.display(), disk.display());
    let bin = bin_path("vhost-user-blk").expect("build or find the vhost-user-blk binary");
    let child = Command::new(bin)
        .arg("--disk")
        .arg(&spec)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log).expect("daemon log file"))
        .spawn()
        .expect("start vhost-user-blk");
    let deadline = Instant::now() + Duration::from_secs(20);
    // A killed daemon leaves its socket file: wait until the new one accepts.
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(Instant::now() < deadline, "daemon did not listen on {} within 20 s", socket.display());
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// Four workers, each on its own 4 MiB, write 1 MiB of their own random data with O_DIRECT
/// and read it back, round after round for 20 s; then the kernel log is searched for I/O
/// errors.
const SCRIPT: &str = r#"
wait_dev /dev/vda
worker() {
  i=$1; n=0; bad=0
  dd if=/dev/urandom of=/tmp/p$i bs=64k count=16 2>/dev/null
  end=$(( $(date +%s) + 20 ))
  while [ $(date +%s) -lt $end ]; do
    off=$(( i * 64 + (n % 4) * 16 ))
    dd if=/tmp/p$i of=/dev/vda bs=64k seek=$off count=16 oflag=direct conv=notrunc 2>/dev/null || bad=$((bad+1))
    dd if=/dev/vda of=/tmp/b$i bs=64k skip=$off count=16 iflag=direct 2>/dev/null || bad=$((bad+1))
    cmp -s /tmp/p$i /tmp/b$i || bad=$((bad+1))
    n=$((n+1))
  done
  echo "worker $i: $n rounds, $bad bad"
}
for i in 0 1 2 3; do worker $i & done
echo io-started
wait
echo "kernel-io-errors: $(dmesg | grep -ci -e 'I/O error' -e 'blk_update_request' -e 'critical medium')"
echo reconnect-done
"#;

#[test]
fn a_guest_sees_no_error_while_the_daemon_is_killed_and_restarted_under_io() {
    if !require_qemu("a_guest_sees_no_error_while_the_daemon_is_killed_and_restarted_under_io") {
        return;
    }
    let art = GuestArtifacts::ensure().expect("guest artifacts (apt-get download of kernel and busybox)");
    let dir = ScratchDir::new("e2e-reconnect").expect("scratch dir");
    let disk = dir.join("disk.raw");
    std::fs::File::create(&disk).and_then(|f| f.set_len(64 * MIB)).expect("create 64 MiB disk");
    let socket = dir.join("vub.sock");
    let log = |n: usize| dir.join(format!("daemon{n}.log"));
    let mut daemon = start_daemon(&disk, &socket, &log(0));

    let initrd = dir.join("reconnect.cpio");
    Initramfs::builder().artifacts(&art).script(SCRIPT).build(&initrd).expect("build initramfs");
    let mut guest = QemuGuest::new(&art.kernel, &initrd)
        .smp(2)
        .args([
            "-chardev".to_string(),
            format!("socket,id=vubr,path={},reconnect-ms=100", qemu_escape(&socket)),
            "-device".to_string(),
            "vhost-user-blk-pci,chardev=vubr,num-queues=2".to_string(),
        ])
        .spawn()
        .expect("start qemu");
    guest
        .wait_for(Duration::from_secs(90), "the guest's I/O", |c| c.contains("io-started"))
        .expect("guest started I/O");

    for round in 0..KILLS {
        std::thread::sleep(Duration::from_millis(2500 + 500 * round as u64));
        daemon.kill().expect("SIGKILL the daemon");
        daemon.wait().expect("reap the daemon");
        daemon = start_daemon(&disk, &socket, &log(round + 1));
        eprintln!("reconnect test: daemon killed and restarted ({} of {KILLS})", round + 1);
    }
    let out = guest.wait(Duration::from_secs(120)).expect("the guest finishes");
    let script = out.script_output().to_string();
    assert!(script.contains("reconnect-done"), "the guest did not finish its script:\n{}", out.console);
    for i in 0..4 {
        let line = script.lines().find(|l| l.starts_with(&format!("worker {i}:"))).expect("a worker's line");
        assert!(line.ends_with(", 0 bad"), "worker {i} saw failures: {line}\n{script}");
        assert!(!line.contains(": 0 rounds"), "worker {i} never finished a round: {line}");
    }
    assert!(script.contains("kernel-io-errors: 0"), "the guest kernel logged I/O errors:\n{}", out.console);
    let _ = daemon.kill();
    let _ = daemon.wait();
    // Every daemon was given QEMU's in-flight region (the mechanism under test was in use).
    for n in 0..=KILLS {
        let text = std::fs::read_to_string(log(n)).unwrap_or_default();
        assert!(text.contains("in-flight region set up"), "daemon {n} got no in-flight region:\n{text}");
    }
}
