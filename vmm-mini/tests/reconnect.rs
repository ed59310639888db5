//! `--disk socket=PATH,reconnect=MS` across backend restarts: `vmm-mini probe --repeat N` keeps
//! its guest writing, flushing, reading and comparing while strata's daemon (and
//! qemu-storage-daemon) is SIGKILLed and started again twice, the second time on a disk grown
//! meanwhile; the probe passes every round (no failed request, no mismatch), the last pattern is
//! at the grown disk's ends, and vmm-mini says it reconnected. Without `reconnect` the same kill
//! ends the probe with the backend named. And a live resize by qemu-storage-daemon
//! (`block_resize`, which sends CONFIG_CHANGE_MSG) reaches the probe guest.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: u32 = 600;
/// The probe's default seed (src/probe.rs DEFAULT_SEED); each round adds 128.
const SEED: u64 = 0x5354_5241_5441_0000;

fn vmm_mini() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vmm-mini"))
}

/// strata's daemon, built next to vmm-mini by `cargo build/test --workspace`.
fn strata_daemon() -> Option<PathBuf> {
    let path = vmm_mini().parent()?.join("vhost-user-blk");
    if path.exists() {
        return Some(path);
    }
    eprintln!("SKIPPED: strata's daemon is not built (cargo build -p vhost-user-blk --bin vhost-user-blk)");
    None
}

fn have_kvm() -> bool {
    let ok = Path::new("/dev/kvm").exists();
    if !ok {
        eprintln!("SKIPPED: /dev/kvm is missing");
    }
    ok
}

fn have_qsd() -> bool {
    let found = Command::new("qemu-storage-daemon").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED: qemu-storage-daemon is not installed (the in-flight region case)");
    }
    found
}

/// A daemon serving `image` at `socket`, killed (SIGKILL) on drop.
struct Daemon(Child);

impl Daemon {
    fn start(bin: &Path, image: &Path, socket: &Path) -> Daemon {
        let spec = format!("socket={},format=raw,path={}", socket.display(), image.display());
        Daemon::spawn(Command::new(bin).args(["--disk", &spec]), socket)
    }

    /// qemu-storage-daemon, whose libvhost-user offers INFLIGHT_SHMFD.
    fn qsd(image: &Path, socket: &Path) -> Daemon {
        let blockdev = format!("driver=file,node-name=f,filename={}", image.display());
        let export =
            format!("type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on", socket.display());
        Daemon::spawn(Command::new("qemu-storage-daemon").args(["--blockdev", &blockdev, "--export", &export]), socket)
    }

    fn spawn(cmd: &mut Command, socket: &Path) -> Daemon {
        let _ = std::fs::remove_file(socket);
        let child = cmd.stderr(Stdio::null()).spawn().expect("start the daemon");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "the daemon never created {}", socket.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon(child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("vmm-mini-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

/// Start the probe with `disk` and `--repeat ROUNDS`; stdout and stderr are collected.
fn probe(disk: &str) -> Child {
    Command::new(vmm_mini())
        .args(["probe", "--disk", disk, "--repeat", &ROUNDS.to_string(), "--timeout", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vmm-mini probe")
}

fn finish(mut child: Child) -> (i32, String, String) {
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let st = child.wait().unwrap();
    (st.code().unwrap_or(-1), out, err)
}

/// Run the probe with `reconnect=20` while `start`ed backends are SIGKILLed and started again
/// twice; returns vmm-mini's stderr after checking every round passed and the disk holds the
/// last round's pattern.
fn across_restarts(name: &str, start: impl Fn(&Path, &Path) -> Daemon) -> String {
    let dir = scratch(name);
    let (image, socket) = (dir.0.join("d.img"), dir.0.join("d.sock"));
    std::fs::File::create(&image).unwrap().set_len(1 << 20).unwrap();
    let mut daemon = start(&image, &socket);
    let child = probe(&format!("socket={},reconnect=20", socket.display()));
    for restart in 0..2 {
        // Let the guest get going (each round is a few ms), then pull the backend away
        // mid-request and bring it back a little later; the second time the disk has grown
        // meanwhile, which the guest must be shown (the rounds after it use the new end).
        std::thread::sleep(Duration::from_millis(800));
        drop(daemon);
        std::thread::sleep(Duration::from_millis(150));
        if restart == 1 {
            std::fs::OpenOptions::new().write(true).open(&image).unwrap().set_len(2 << 20).unwrap();
        }
        daemon = start(&image, &socket);
    }
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "probe failed across restarts:\n{out}\n{err}");
    assert_eq!(out.matches("compare ok").count(), ROUNDS as usize + 1, "{out}");
    assert!(out.contains("PASS"), "{out}");
    assert_eq!(err.matches("reconnected to").count(), 2, "vmm-mini did not say it reconnected twice:\n{err}");
    // The last round's pattern is on the disk: qword i of sector 0 is seed + 128 * ROUNDS + i.
    let data = std::fs::read(&image).unwrap();
    let first = u64::from_le_bytes(data[..8].try_into().unwrap());
    assert_eq!(first, SEED + 128 * u64::from(ROUNDS), "the disk does not hold the last round's data");
    let last = u64::from_le_bytes(data[(2 << 20) - 512..][..8].try_into().unwrap());
    assert_eq!(last, SEED + 128 * u64::from(ROUNDS) + 64, "the last round did not write the grown disk's last sector");
    drop(daemon);
    err
}

#[test]
fn the_probe_keeps_running_across_daemon_restarts() {
    if !have_kvm() {
        return;
    }
    let Some(bin) = strata_daemon() else { return };
    let err = across_restarts("reconnect", |image, socket| Daemon::start(&bin, image, socket));
    // strata's daemon offers no in-flight region yet (its protocol layer adds it).
    assert!(err.contains("reconnected to"), "{err}");
}

#[test]
fn the_probe_keeps_running_across_qemu_storage_daemon_restarts() {
    if !have_kvm() || !have_qsd() {
        return;
    }
    // qemu-storage-daemon offers BACKEND_REQ (negotiated on every connection) but no in-flight
    // region: the rings restart from the used index.
    let err = across_restarts("reconnect-qsd", Daemon::qsd);
    assert_eq!(err.matches("rings restarted from the used index").count(), 2, "{err}");
}

/// Send QMP commands to `socket` (after the capabilities handshake); returns what came back.
fn qmp(socket: &Path, commands: &[&str]) -> String {
    use std::io::{BufRead, BufReader, Write};
    let s = std::os::unix::net::UnixStream::connect(socket).expect("connect to the QMP monitor");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut out = String::new();
    r.read_line(&mut out).unwrap(); // greeting
    for c in std::iter::once(&r#"{"execute":"qmp_capabilities"}"#).chain(commands) {
        w.write_all(c.as_bytes()).unwrap();
        w.write_all(b"\n").unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        out.push_str(&line);
    }
    out
}

#[test]
fn a_live_resize_reaches_the_guest_through_the_backend_channel() {
    if !have_kvm() || !have_qsd() {
        return;
    }
    let dir = scratch("config-change");
    let (image, socket, monitor) = (dir.0.join("d.img"), dir.0.join("d.sock"), dir.0.join("qmp.sock"));
    std::fs::File::create(&image).unwrap().set_len(1 << 20).unwrap();
    let blockdev = format!("driver=file,node-name=f,filename={}", image.display());
    let export =
        format!("type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on", socket.display());
    let chardev = format!("socket,id=m,path={},server=on,wait=off", monitor.display());
    let daemon = Daemon::spawn(
        Command::new("qemu-storage-daemon").args([
            "--blockdev",
            &blockdev,
            "--export",
            &export,
            "--chardev",
            &chardev,
            "--monitor",
            "chardev=m",
        ]),
        &socket,
    );
    let child = probe(&format!("socket={}", socket.display()));
    std::thread::sleep(Duration::from_millis(800));
    // qemu-storage-daemon sends VHOST_USER_BACKEND_CONFIG_CHANGE_MSG after block_resize.
    let answer = qmp(&monitor, &[r#"{"execute":"block_resize","arguments":{"node-name":"f","size":2097152}}"#]);
    assert!(!answer.contains("error"), "{answer}");
    let (code, out, err) = finish(child);
    assert_eq!(code, 0, "the probe failed after the resize:\n{out}\n{err}");
    assert!(err.contains("config changed, capacity 4096 sectors"), "vmm-mini never took the new config:\n{err}");
    // The rounds after the resize wrote the new last sector (qwords 64-127 of a round's pattern)
    // and found the old end readable and the new one refused (past-end).
    let data = std::fs::read(&image).unwrap();
    assert_eq!(data.len(), 2 << 20);
    let last = u64::from_le_bytes(data[(2 << 20) - 512..][..8].try_into().unwrap());
    assert_eq!(last, SEED + 128 * u64::from(ROUNDS) + 64, "the last round did not write the new last sector");
    drop(daemon);
}

#[test]
fn without_reconnect_a_lost_backend_ends_the_probe() {
    if !have_kvm() {
        return;
    }
    let Some(bin) = strata_daemon() else { return };
    let dir = scratch("no-reconnect");
    let (image, socket) = (dir.0.join("d.img"), dir.0.join("d.sock"));
    std::fs::File::create(&image).unwrap().set_len(1 << 20).unwrap();
    let daemon = Daemon::start(&bin, &image, &socket);
    let child = probe(&format!("socket={}", socket.display()));
    std::thread::sleep(Duration::from_millis(500));
    drop(daemon);
    let (code, out, err) = finish(child);
    assert_ne!(code, 0, "the probe passed without its backend:\n{out}\n{err}");
    assert!(err.contains("went away") && err.contains("d.sock"), "{err}");
}
