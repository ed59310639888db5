//! `vmm-mini probe` end to end against real vhost-user-blk backends: qemu-storage-daemon and
//! strata's own daemon serving the same file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SECTOR: u64 = 512;

fn vmm_mini() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vmm-mini"))
}

/// strata's daemon, built next to vmm-mini by `cargo build/test --workspace`.
fn strata_daemon() -> Option<PathBuf> {
    let path = vmm_mini().parent()?.join("vhost-user-blk");
    path.exists().then_some(path)
}

fn have_kvm() -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    eprintln!("SKIPPED: /dev/kvm is missing");
    false
}

fn have_qsd() -> bool {
    let found = Command::new("qemu-storage-daemon").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED: qemu-storage-daemon is not installed");
    }
    found
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmm-mini-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A backend process, killed on drop.
struct Backend(Child);

impl Backend {
    fn start(cmd: &mut Command, socket: &Path) -> Backend {
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start the backend");
        let backend = Backend(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "backend never created {}", socket.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        backend
    }

    fn qsd(image: &Path, socket: &Path) -> Backend {
        Backend::qsd_export(image, socket, true)
    }

    fn qsd_export(image: &Path, socket: &Path, writable: bool) -> Backend {
        let read_only = if writable { "" } else { ",read-only=on" };
        let blockdev = format!("driver=file,node-name=f,filename={}{read_only}", image.display());
        let writable = if writable { "on" } else { "off" };
        let export = format!(
            "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable={writable}",
            socket.display()
        );
        Backend::start(Command::new("qemu-storage-daemon").args(["--blockdev", &blockdev, "--export", &export]), socket)
    }

    fn strata(daemon: &Path, image: &Path, socket: &Path) -> Backend {
        Backend::strata_export(daemon, image, socket, "")
    }

    fn strata_export(daemon: &Path, image: &Path, socket: &Path, extra: &str) -> Backend {
        let disk =
            format!("socket={},format=raw,path={},serial=strata-probe{extra}", socket.display(), image.display());
        Backend::start(Command::new(daemon).args(["--disk", &disk]), socket)
    }

    fn stop(mut self) {
        // SIGTERM lets both daemons flush and exit.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn probe(socket: &Path, seed: u64) -> Output {
    probe_disk(&format!("socket={}", socket.display()), seed)
}

fn probe_disk(disk: &str, seed: u64) -> Output {
    let started = Instant::now();
    let out = Command::new(vmm_mini()).args(["probe", "--disk", disk, "--seed", &seed.to_string()]).output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "the probe must finish in under 10 s");
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sectors 0-1 hold qwords seed+0..127, the last sector qwords seed+64..127.
fn assert_pattern_on_disk(image: &Path, seed: u64) {
    let data = std::fs::read(image).unwrap();
    let qword = |off: usize| u64::from_le_bytes(data[off..off + 8].try_into().unwrap());
    for i in 0..128 {
        assert_eq!(qword(i * 8), seed + i as u64, "sectors 0-1, qword {i}");
    }
    let last = data.len() - SECTOR as usize;
    for i in 0..64 {
        assert_eq!(qword(last + i * 8), seed + 64 + i as u64, "last sector, qword {i}");
    }
}

fn image(dir: &TempDir, sectors: u64) -> PathBuf {
    let path = dir.0.join("disk.img");
    std::fs::File::create(&path).unwrap().set_len(sectors * SECTOR).unwrap();
    path
}

#[test]
fn probe_passes_against_qsd_and_strata_serving_the_same_file() {
    if !have_kvm() || !have_qsd() {
        return;
    }
    let Some(daemon) = strata_daemon() else {
        eprintln!("SKIPPED: strata's daemon is not built (cargo build -p vhost-user-blk --bin vhost-user-blk)");
        return;
    };
    let dir = TempDir::new("both");
    let img = image(&dir, 2048);

    let socket = dir.0.join("qsd.sock");
    let qsd = Backend::qsd(&img, &socket);
    let out = probe(&socket, 0x1111_0000);
    qsd.stop();
    assert!(out.status.success(), "qsd: {}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).contains("capacity 0x0000000000000800 ok"), "{}", stdout(&out));
    assert!(stdout(&out).contains("id vhost_user_blk ok"), "{}", stdout(&out));
    assert_pattern_on_disk(&img, 0x1111_0000);

    let socket = dir.0.join("strata.sock");
    let strata = Backend::strata(&daemon, &img, &socket);
    let out = probe(&socket, 0x2222_0000);
    strata.stop();
    assert!(out.status.success(), "strata: {}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).contains("capacity 0x0000000000000800 ok"), "{}", stdout(&out));
    assert!(stdout(&out).contains("id strata-probe ok"), "{}", stdout(&out));
    assert!(stdout(&out).ends_with("PASS\n"), "{}", stdout(&out));
    assert_pattern_on_disk(&img, 0x2222_0000);
}

/// Fills `image` with a recognisable byte per sector, so a write that got through shows.
fn fill_sectors(image: &Path) -> Vec<u8> {
    let len = std::fs::metadata(image).unwrap().len() as usize;
    let data: Vec<u8> = (0..len).map(|i| (i / SECTOR as usize) as u8 ^ 0x5a).collect();
    std::fs::write(image, &data).unwrap();
    data
}

#[test]
fn read_only_disks_refuse_the_probes_writes_on_qsd_and_strata() {
    if !have_kvm() || !have_qsd() {
        return;
    }
    let Some(daemon) = strata_daemon() else {
        eprintln!("SKIPPED: strata's daemon is not built (cargo build -p vhost-user-blk --bin vhost-user-blk)");
        return;
    };
    let dir = TempDir::new("ro");
    let img = image(&dir, 2048);
    let before = fill_sectors(&img);

    let socket = dir.0.join("qsd.sock");
    let qsd = Backend::qsd_export(&img, &socket, false);
    let out = probe_disk(&format!("socket={},read-only=on", socket.display()), 7);
    qsd.stop();
    assert!(out.status.success(), "qsd: {}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).contains("write (read-only: refused with ioerr) ok"), "{}", stdout(&out));
    assert!(std::fs::read(&img).unwrap() == before, "qsd: the read-only disk changed");

    // Without read-only=on the guest still sees the backend's VIRTIO_BLK_F_RO.
    let socket = dir.0.join("strata.sock");
    let strata = Backend::strata_export(&daemon, &img, &socket, ",read-only=on");
    let out = probe(&socket, 8);
    strata.stop();
    assert!(out.status.success(), "strata: {}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).contains("write (read-only: refused with ioerr) ok"), "{}", stdout(&out));
    assert!(stdout(&out).ends_with("PASS\n"), "{}", stdout(&out));
    assert!(std::fs::read(&img).unwrap() == before, "strata: the read-only disk changed");
}

#[test]
fn read_only_on_a_writable_backend_is_refused() {
    if !have_kvm() || !have_qsd() {
        return;
    }
    let dir = TempDir::new("ro-refused");
    let img = image(&dir, 64);
    let before = fill_sectors(&img);
    let socket = dir.0.join("qsd.sock");
    let _qsd = Backend::qsd(&img, &socket);

    let out = probe_disk(&format!("socket={},read-only=on", socket.display()), 9);

    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("qsd.sock") && stderr.contains("read-only=on") && stderr.contains("writable"), "{stderr}");
    assert!(std::fs::read(&img).unwrap() == before, "nothing may be written");
}

#[test]
fn probe_names_the_failed_check() {
    if !have_kvm() || !have_qsd() {
        return;
    }
    let dir = TempDir::new("tiny");
    let img = image(&dir, 2);
    let socket = dir.0.join("qsd.sock");
    let _qsd = Backend::qsd(&img, &socket);

    let out = probe(&socket, 1);

    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("capacity 0x0000000000000002 FAIL"), "{}", stdout(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("check 'capacity' failed"), "{stderr}");
}

#[test]
fn probe_without_a_backend_names_the_socket() {
    if !have_kvm() {
        return;
    }
    let dir = TempDir::new("nobackend");
    let socket = dir.0.join("missing.sock");

    let out = probe(&socket, 1);

    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.sock") && stderr.contains("connect"), "{stderr}");
}

#[test]
fn probe_against_a_backend_that_hangs_up_fails_cleanly() {
    if !have_kvm() {
        return;
    }
    let dir = TempDir::new("hangup");
    let socket = dir.0.join("hangup.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        drop(conn);
    });

    let out = probe(&socket, 1);

    server.join().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let step_named = stderr.contains("SET_OWNER") || stderr.contains("GET_FEATURES");
    assert!(stderr.contains("hangup.sock") && step_named, "{stderr}");
}

/// Runs `vmm-mini ARGS`, killing it after `bound`; returns its output and how long it ran, or
/// panics naming the hang.
fn run_bounded(args: &[&str], bound: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = Command::new(vmm_mini()).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > bound {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "vmm-mini {args:?} still running after {bound:?}; killed. stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    (child.wait_with_output().unwrap(), elapsed)
}

/// `--timeout 2` plus set-up (KVM, memory) on a loaded machine.
const TIMEOUT_2_BOUND: Duration = Duration::from_secs(5);

fn assert_not_vhost_user(out: &Output, socket_name: &str) {
    assert_eq!(out.status.code(), Some(2), "stdout: {}", stdout(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(socket_name) && stderr.contains("not a vhost-user backend"), "{stderr}");
}

#[test]
fn probe_against_a_listener_that_never_answers_gives_up_at_the_timeout() {
    if !have_kvm() {
        return;
    }
    let dir = TempDir::new("silent");
    let socket = dir.0.join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    // Accept and hold the connection without a word until the probe is over.
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut &conn, &mut sink);
    });

    let disk = format!("socket={}", socket.display());
    let (out, took) = run_bounded(&["probe", "--disk", &disk, "--timeout", "2"], Duration::from_secs(15));

    assert!(took < TIMEOUT_2_BOUND, "took {took:?} with --timeout 2");
    assert_not_vhost_user(&out, "silent.sock");
    server.join().unwrap();
}

#[test]
fn probe_against_a_peer_speaking_another_protocol_says_so() {
    if !have_kvm() {
        return;
    }
    let dir = TempDir::new("http");
    let socket = dir.0.join("http.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let _ = std::io::Write::write_all(&mut conn, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut conn, &mut sink);
    });

    let disk = format!("socket={}", socket.display());
    let (out, took) = run_bounded(&["probe", "--disk", &disk, "--timeout", "2"], Duration::from_secs(15));

    assert!(took < TIMEOUT_2_BOUND, "took {took:?} with --timeout 2");
    assert_not_vhost_user(&out, "http.sock");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a vhost-user message"), "{stderr}");
    server.join().unwrap();
}

#[test]
fn probe_against_the_daemons_control_socket_says_it_is_not_a_vhost_user_backend() {
    if !have_kvm() {
        return;
    }
    let Some(daemon) = strata_daemon() else {
        eprintln!("SKIPPED: strata's daemon is not built (cargo build -p vhost-user-blk --bin vhost-user-blk)");
        return;
    };
    let dir = TempDir::new("api");
    let api = dir.0.join("api.sock");
    let backend = Backend::start(Command::new(daemon).arg("--api-socket").arg(&api), &api);

    let disk = format!("socket={}", api.display());
    let (out, took) = run_bounded(&["probe", "--disk", &disk, "--timeout", "2"], Duration::from_secs(15));

    backend.stop();
    assert!(took < TIMEOUT_2_BOUND, "took {took:?} with --timeout 2");
    assert_not_vhost_user(&out, "api.sock");
}

#[test]
fn read_only_probe_passes_and_leaves_the_disk_byte_identical() {
    if !have_kvm() {
        return;
    }
    let Some(daemon) = strata_daemon() else {
        eprintln!("SKIPPED: strata's daemon is not built (cargo build -p vhost-user-blk --bin vhost-user-blk)");
        return;
    };
    let dir = TempDir::new("probe-ro");
    let img = image(&dir, 2048);
    let before = fill_sectors(&img);
    let socket = dir.0.join("strata.sock");
    // Served writable: only the probe's --read-only keeps the data.
    let strata = Backend::strata(&daemon, &img, &socket);

    let disk = format!("socket={}", socket.display());
    let (out, _) = run_bounded(&["probe", "--disk", &disk, "--read-only"], Duration::from_secs(30));

    strata.stop();
    assert!(out.status.success(), "{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    assert!(text.contains("write (--read-only: nothing written, sectors read) ok"), "{text}");
    assert!(text.contains("compare ok") && text.ends_with("PASS\n"), "{text}");
    assert!(std::fs::read(&img).unwrap() == before, "the disk changed under probe --read-only");
}

#[test]
fn probe_help_says_that_it_writes_and_where() {
    let out = Command::new(vmm_mini()).args(["probe", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = stdout(&out);
    for needle in ["WRITES", "sectors 0-1", "last 512-byte sector", "--read-only", "--timeout"] {
        assert!(help.contains(needle), "probe --help lacks {needle:?}:\n{help}");
    }
}
