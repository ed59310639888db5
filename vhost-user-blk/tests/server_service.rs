//! The daemon under a service manager: `--pidfile` (the daemon's pid, written once the sockets
//! listen, removed at SIGTERM, a symlink refused) and systemd readiness (`READY=1` on the
//! datagram socket named by NOTIFY_SOCKET, only after the export socket exists).

mod server_common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use server_common::{daemon_bin, tempdir, DaemonProcess};

#[test]
fn pidfile_holds_the_daemon_pid_and_goes_at_sigterm() {
    let dir = tempdir();
    let sock = dir.path().join("d.sock");
    let pidfile = dir.path().join("d.pid");
    let spec = format!("socket={},format=mem,size=1M", sock.display());
    let d = DaemonProcess::start(&["--disk", &spec, "--pidfile", pidfile.to_str().unwrap()], &[&pidfile]);
    // The pidfile appears by rename, so once it exists it is complete.
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), format!("{}\n", d.pid()));
    assert!(sock.exists(), "the pidfile was written before the socket listened");
    d.stop();
    assert!(!pidfile.exists(), "the pidfile outlived a clean exit");
}

#[test]
fn a_pidfile_that_is_a_symlink_is_refused() {
    let dir = tempdir();
    let sock = dir.path().join("d.sock");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let pidfile = dir.path().join("d.pid");
    std::os::unix::fs::symlink(&victim, &pidfile).unwrap();
    let out = Command::new(daemon_bin())
        .arg("--disk")
        .arg(format!("socket={},format=mem,size=1M", sock.display()))
        .arg("--pidfile")
        .arg(&pidfile)
        .stdin(Stdio::null())
        .output()
        .expect("run the daemon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a symlinked pidfile was accepted:\n{stderr}");
    assert!(stderr.contains("symbolic link") && stderr.contains("d.pid"), "unclear error:\n{stderr}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n", "the symlink's target changed");
    assert!(!sock.exists(), "the export socket was left behind");
}

#[test]
fn ready_is_sent_to_notify_socket_after_the_export_listens() {
    let dir = tempdir();
    let sock = dir.path().join("d.sock");
    let notify = dir.path().join("notify");
    let rx = UnixDatagram::bind(&notify).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let child = Command::new(daemon_bin())
        .arg("--disk")
        .arg(format!("socket={},format=mem,size=1M", sock.display()))
        .env("NOTIFY_SOCKET", &notify)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the daemon");
    let mut buf = [0u8; 256];
    let got = rx.recv(&mut buf);
    // Checked before anything else so that the daemon is stopped on every path.
    let sock_existed = sock.exists();
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().expect("wait for the daemon");
    let n = got.expect("no datagram on NOTIFY_SOCKET within 20 s");
    assert_eq!(&buf[..n], b"READY=1\n");
    assert!(sock_existed, "READY=1 arrived before the export socket existed");
    assert!(out.status.success(), "daemon exited with {}", out.status);
}

#[test]
fn an_unreachable_notify_socket_is_only_a_warning() {
    let dir = tempdir();
    let sock = dir.path().join("d.sock");
    let spec = format!("socket={},format=mem,size=1M", sock.display());
    let child = Command::new(daemon_bin())
        .args(["--disk", &spec])
        .env("NOTIFY_SOCKET", dir.path().join("nobody-listens"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the daemon");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !sock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let served = sock.exists();
    // Give a fatal notify failure time to end the process before judging.
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().expect("wait for the daemon");
    assert!(served, "the export socket never appeared");
    assert!(out.status.success(), "a failed notification was fatal: exited with {}", out.status);
}
