//! Daemon shutdown never hangs, whatever happened to the socket file: SIGTERM ends a daemon
//! whose socket was removed, or whose path another daemon took over, and the exiting daemon
//! leaves the other daemon's socket in place (and serving).

mod server_common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use server_common::{daemon_bin, tempdir, Client};

/// Longer than an idle daemon needs to stop (no request in flight, nothing to drain), and
/// shorter than its 30 s drain timeout.
const EXIT_BOUND: Duration = Duration::from_secs(15);

/// A daemon process, killed on drop if still running (so a hanging one does not outlive the
/// test), and its log lines.
struct Daemon(Child, mpsc::Receiver<String>);

impl Daemon {
    fn start(disk: &str, socket: &Path) -> Daemon {
        Daemon::start_with(&["--disk", disk], socket, "listening export=")
    }

    /// Starts the daemon with `args` and waits until `socket` exists and the daemon has logged
    /// `ready` (the file appears at bind(2), a moment before listen(2) lets frontends in).
    fn start_with(args: &[&str], socket: &Path, ready: &str) -> Daemon {
        let mut child = Command::new(daemon_bin()).args(args).stderr(Stdio::piped()).spawn().expect("start the daemon");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("daemon: {line}");
                let _ = tx.send(line);
            }
        });
        let mut d = Daemon(child, rx);
        d.wait_log(&[ready]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            if let Ok(Some(st)) = d.0.try_wait() {
                panic!("daemon exited early: {st}");
            }
            assert!(Instant::now() < deadline, "{} never appeared", socket.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// Waits (up to 20 s) for a log line containing one of `needles`.
    fn wait_log(&self, needles: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.1.recv_timeout(left) {
                Ok(line) if needles.iter().any(|n| line.contains(n)) => return,
                Ok(_) => {}
                Err(_) => panic!("the daemon never logged any of {needles:?}"),
            }
        }
    }

    /// SIGTERM, then the exit status if it came within `bound` (None: it hung, and was killed).
    fn terminate_within(&mut self, bound: Duration) -> Option<ExitStatus> {
        // SAFETY: kill() with a pid this test spawned (still a child, not yet reaped).
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Some(st) = self.0.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..8192u32).map(|i| (i % 251) as u8 ^ seed).collect()
}

#[test]
fn daemon_whose_socket_was_removed_exits_on_sigterm_with_its_data_flushed() {
    // Arrange: a daemon serving a raw file, written through it, then its socket removed.
    let dir = tempdir();
    let image = dir.path().join("disk.raw");
    std::fs::File::create(&image).unwrap().set_len(1 << 20).unwrap();
    let socket = dir.path().join("gone.sock");
    let mut daemon =
        Daemon::start(&format!("socket={},format=raw,path={}", socket.display(), image.display()), &socket);
    let data = pattern(0x11);
    {
        let mut c = Client::connect(&socket, 1, 1 << 16);
        assert_eq!(c.write(0, 4096, &data), 0);
    }
    // Give the daemon time to go back to waiting for the next frontend: that wait is what a
    // stop must interrupt (a stop during the disconnect itself never reaches it).
    daemon.wait_log(&["frontend disconnected", "frontend connection ended"]);
    std::thread::sleep(Duration::from_millis(300));
    std::fs::remove_file(&socket).unwrap();

    // Act
    let status = daemon.terminate_within(EXIT_BOUND);

    // Assert: it exited 0 in time, and the write is in the file.
    let status = status.unwrap_or_else(|| panic!("the daemon did not exit within {EXIT_BOUND:?} of SIGTERM"));
    assert!(status.success(), "exit status {status}");
    assert_eq!(&std::fs::read(&image).unwrap()[4096..4096 + data.len()], &data[..]);
    assert!(!socket.exists());
}

#[test]
fn daemon_whose_path_another_daemon_took_over_exits_and_leaves_that_socket_serving() {
    // Arrange: daemon A at the path; the path removed and daemon B started there (as a second
    // daemon whose operator removed the "stale" socket would).
    let dir = tempdir();
    let socket = dir.path().join("shared.sock");
    let mut a = Daemon::start(&format!("socket={},format=mem,size=4M,serial=a", socket.display()), &socket);
    std::fs::remove_file(&socket).unwrap();
    let mut b = Daemon::start(&format!("socket={},format=mem,size=4M,serial=b", socket.display()), &socket);
    let b_inode = std::fs::metadata(&socket).unwrap().ino();

    // Act: stop A.
    let status = a.terminate_within(EXIT_BOUND);

    // Assert: A exited 0 in time; the path is still B's socket, and B serves I/O on it.
    let status = status.unwrap_or_else(|| panic!("daemon A did not exit within {EXIT_BOUND:?} of SIGTERM"));
    assert!(status.success(), "daemon A: exit status {status}");
    let meta = std::fs::metadata(&socket).expect("daemon A removed daemon B's socket");
    assert_eq!(meta.ino(), b_inode, "the socket path changed");
    let data = pattern(0x22);
    let mut c = Client::connect(&socket, 1, 1 << 16);
    assert_eq!(c.write(0, 0, &data), 0);
    let (rc, back) = c.read(0, 0, data.len());
    assert_eq!(rc, 0);
    assert_eq!(back, data);
    drop(c);
    let status = b.terminate_within(EXIT_BOUND).expect("daemon B did not exit after SIGTERM");
    assert!(status.success(), "daemon B: exit status {status}");
    assert!(!socket.exists(), "daemon B removes its own socket");
}

#[test]
fn daemon_whose_path_a_foreign_listener_took_over_exits_and_leaves_it() {
    // Arrange: the path taken over by a plain listener that never accepts (so a stop that
    // wakes its accept loop by connecting to the path would wake the wrong process).
    let dir = tempdir();
    let socket = dir.path().join("taken.sock");
    let mut daemon = Daemon::start(&format!("socket={},format=mem,size=1M", socket.display()), &socket);
    std::fs::remove_file(&socket).unwrap();
    let other = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let other_inode = std::fs::metadata(&socket).unwrap().ino();

    // Act
    let status = daemon.terminate_within(EXIT_BOUND);

    // Assert
    let status = status.unwrap_or_else(|| panic!("the daemon did not exit within {EXIT_BOUND:?} of SIGTERM"));
    assert!(status.success(), "exit status {status}");
    let meta = std::fs::metadata(&socket).expect("the daemon removed the other listener's socket");
    assert_eq!(meta.ino(), other_inode);
    drop(other);
}

#[test]
fn a_control_socket_taken_over_is_left_in_place_and_a_live_one_is_not_taken() {
    // Arrange: a daemon with a control socket, whose path a plain listener then takes over.
    let dir = tempdir();
    let (socket, api) = (dir.path().join("d.sock"), dir.path().join("api.sock"));
    let disk = format!("socket={},format=mem,size=1M", socket.display());
    let mut daemon =
        Daemon::start_with(&["--disk", &disk, "--api-socket", api.to_str().unwrap()], &api, "control socket listening");
    let second_disk = format!("socket={},format=mem,size=1M", dir.path().join("e.sock").display());
    let second = Command::new(daemon_bin())
        .args(["--disk", &second_disk, "--api-socket", api.to_str().unwrap()])
        .output()
        .expect("run a second daemon");
    std::fs::remove_file(&api).unwrap();
    let other = std::os::unix::net::UnixListener::bind(&api).unwrap();
    let other_inode = std::fs::metadata(&api).unwrap().ino();

    // Act
    let status = daemon.terminate_within(EXIT_BOUND);

    // Assert: the second daemon was refused the live control socket, and the exiting daemon
    // left the listener that took the path over.
    let text = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success() && text.contains("api.sock") && text.contains("another process"), "{text}");
    let status = status.unwrap_or_else(|| panic!("the daemon did not exit within {EXIT_BOUND:?} of SIGTERM"));
    assert!(status.success(), "exit status {status}");
    let meta = std::fs::metadata(&api).expect("the daemon removed the other listener's control socket");
    assert_eq!(meta.ino(), other_inode);
    drop(other);
}
