//! `blkctl raid` against an array a `vhost-user-blk` daemon serves: a command that needs the
//! members' locks names the daemon by pid (the kernel shows its OFD locks in /proc/PID/fdinfo)
//! and points at `--api-socket`, with every file left as it was; through the control socket,
//! `scrub` exits 2 with mismatches left and 0 once repaired, and `replace` refuses an OLD that
//! is not a member (the daemon refuses it too) and prints the list it made.

mod server_common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn blkctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(server_common::blkctl_bin()).current_dir(dir).args(args).output().expect("run blkctl")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A daemon serving `members` with a control socket; killed if a test fails before `stop`.
struct Daemon(Child);

impl Daemon {
    fn start(dir: &Path, members: &str) -> Daemon {
        let (disk, api) = (dir.join("r.sock"), dir.join("api.sock"));
        let mut child = Command::new(server_common::daemon_bin())
            .current_dir(dir)
            .arg("--disk")
            .arg(format!("socket={},format=raid,members={members}", disk.display()))
            .arg("--api-socket")
            .arg(&api)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(disk.exists() && api.exists()) {
            assert!(child.try_wait().unwrap().is_none(), "the daemon exited early");
            assert!(Instant::now() < deadline, "the daemon's sockets never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon(child)
    }

    fn stop(mut self) {
        // SAFETY: kill() with a pid we spawned and a valid signal number.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let st = self.0.wait().unwrap();
        assert!(st.success(), "daemon exit status {st}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn api(sock: &Path, req: serde_json::Value) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn a_served_array_names_the_daemon_and_works_through_its_socket() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    for n in ["a.img", "b.img", "c.img", "d.img"] {
        std::fs::File::create(dir.join(n)).unwrap().set_len(8 * MIB).unwrap();
    }
    let ok = |args: &[&str]| {
        let o = blkctl(dir, args);
        assert!(o.status.success(), "blkctl {args:?}: {}", text(&o));
        o
    };
    ok(&["raid", "create", "--level", "1", "a.img", "b.img"]);
    let daemon = Daemon::start(dir, "a.img:b.img");
    let pid = daemon.0.id();
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    let before: Vec<Vec<u8>> = ["a.img", "b.img", "c.img"].iter().map(|n| read(n)).collect();

    // Offline commands need the locks: the holder is named by pid, and the way in is shown.
    let holder = format!("process {pid} (vhost-user-blk) has it open");
    let st = blkctl(dir, &["raid", "status", "a.img:b.img"]);
    assert_eq!(st.status.code(), Some(1), "{}", text(&st));
    assert!(text(&st).contains(&holder) && text(&st).contains("--api-socket"), "{}", text(&st));
    let cr = blkctl(dir, &["raid", "create", "--level", "1", "--force", "a.img", "c.img"]);
    assert_eq!(cr.status.code(), Some(1), "{}", text(&cr));
    assert!(text(&cr).contains(&format!("a.img: cannot take the write lock: {holder}")), "{}", text(&cr));
    let after: Vec<Vec<u8>> = ["a.img", "b.img", "c.img"].iter().map(|n| read(n)).collect();
    assert!(before == after, "a refused command changed a file");

    // Scrub through the daemon: a copy that disagrees is exit 2 until repaired.
    let sock = dir.join("api.sock");
    let s = sock.to_str().unwrap();
    assert_eq!(blkctl(dir, &["raid", "scrub", "a.img:b.img", "--api-socket", s]).status.code(), Some(0));
    std::fs::OpenOptions::new().write(true).open(dir.join("b.img")).unwrap().write_all_at(b"rot", 2 * MIB).unwrap();
    let found = blkctl(dir, &["raid", "scrub", "a.img:b.img", "--api-socket", s, "--json"]);
    assert_eq!(found.status.code(), Some(2), "{}", text(&found));
    let v: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    assert_eq!(v["mismatches"], 1, "{v}");
    let fixed = blkctl(dir, &["raid", "scrub", "a.img:b.img", "--api-socket", s, "--repair"]);
    assert_eq!(fixed.status.code(), Some(0), "{}", text(&fixed));

    // Replace: a stranger is refused by blkctl, and by the daemon when asked directly.
    let r = blkctl(dir, &["raid", "replace", "a.img:b.img", "c.img", "d.img", "--api-socket", s]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(text(&r).contains("c.img is not a member of the array a.img:b.img"), "{}", text(&r));
    let abs = |n: &str| std::fs::canonicalize(dir.join(n)).unwrap().display().to_string();
    ok(&["raid", "fail", "a.img:b.img", "b.img", "--api-socket", s]);
    let v = api(
        &sock,
        serde_json::json!({"cmd": "raid-replace", "members": format!("{}:{}", abs("a.img"), abs("b.img")),
                           "old": abs("c.img"), "new": abs("d.img")}),
    );
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["error"].as_str().unwrap().contains("is not a member of the array"), "{v}");
    let o = ok(&["raid", "replace", "a.img:b.img", "./b.img", "d.img", "--api-socket", s, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["role"].as_u64(), v["array"].as_str()), (Some(1), Some("a.img:d.img")), "{v}");
    assert_eq!(v["rebuilt"], true, "{v}");
    daemon.stop();
    let o = ok(&["raid", "scrub", "a.img:d.img"]);
    assert!(text(&o).contains("0 mismatches"), "{}", text(&o));
}
