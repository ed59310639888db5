//! Deadlines on a vhost-user socket: connecting that gives up at a deadline, and a watchdog that
//! shuts a socket down at a deadline so that a read or write blocked on it returns.
//!
//! The vhost crate's socket code retries reads that time out (EAGAIN) forever, so socket
//! timeouts alone cannot bound a conversation with a peer that never answers; shutting the
//! socket down makes the blocked read see end-of-file instead.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Times a refused connection is retried (a backend that is starting), 100 ms apart.
const REFUSED_RETRIES: u32 = 5;

/// Connects to the Unix socket at `path`, giving up at `deadline` (a listener whose queue is
/// full blocks a plain connect). A refused connection is retried a few times, as the vhost
/// crate's `Frontend::connect` does, while the deadline allows.
pub fn connect_within(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    let mut retries = REFUSED_RETRIES;
    loop {
        match connect_once(path, deadline) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && retries > 0 => {
                let pause = Duration::from_millis(100);
                if Instant::now() + pause >= deadline {
                    return Err(e);
                }
                std::thread::sleep(pause);
                retries -= 1;
            }
            other => return other,
        }
    }
}

fn left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
    }
    Ok(left)
}

fn connect_once(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    // SAFETY: sockaddr_un is plain data, for which all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "socket path too long (at most 107 bytes)"));
    }
    for (to, from) in addr.sun_path.iter_mut().zip(bytes) {
        *to = *from as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;

    // SAFETY: socket() takes no pointers; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket() and nothing else owns it.
    let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // On Unix sockets a blocking connect waits for room in the listener's queue at most the
    // send timeout, then fails with EAGAIN.
    stream.set_write_timeout(Some(left(deadline)?))?;
    loop {
        // SAFETY: `addr` is an initialised sockaddr_un and `len` does not exceed its size (the
        // path is shorter than sun_path); `stream` owns the descriptor for the call.
        let rc = unsafe {
            libc::connect(
                stream.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
                len as libc::socklen_t,
            )
        };
        if rc == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out: the listener's queue stays full"))
            }
            _ => return Err(e),
        }
    }
    stream.set_write_timeout(None)?;
    Ok(stream)
}

/// A watchdog on a socket: if it is not disarmed by the deadline, it shuts the socket down
/// (both ways), so whatever is blocked reading or writing it returns.
pub struct SocketDeadline {
    done: Option<mpsc::Sender<()>>,
    fired: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SocketDeadline {
    /// Arms the watchdog on `socket` (a second descriptor of the same socket is kept until it
    /// is disarmed).
    pub fn arm(socket: &UnixStream, deadline: Instant) -> io::Result<SocketDeadline> {
        let socket = socket.try_clone()?;
        let (done, wait) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let flag = fired.clone();
        let thread = std::thread::Builder::new().name("socket-deadline".into()).spawn(move || {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(RecvTimeoutError::Timeout) = wait.recv_timeout(left) {
                flag.store(true, Ordering::Release);
                let _ = socket.shutdown(Shutdown::Both);
            }
        })?;
        Ok(SocketDeadline { done: Some(done), fired, thread: Some(thread) })
    }

    /// Whether the deadline passed and the socket was shut down.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Stops the watchdog; returns whether it had fired.
    pub fn disarm(mut self) -> bool {
        self.stop();
        self.fired()
    }

    fn stop(&mut self) {
        // Dropping the sender ends the watchdog's wait before the deadline.
        self.done.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SocketDeadline {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Read;
    use std::os::unix::net::UnixListener;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("vmm-mini-deadline-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("s.sock")
    }

    #[test]
    fn a_read_nobody_answers_returns_at_the_deadline() {
        let (mut ours, _peer) = UnixStream::pair().unwrap();
        let started = Instant::now();
        let watchdog = SocketDeadline::arm(&ours, started + Duration::from_millis(200)).unwrap();

        let mut buf = [0u8; 8];
        let n = ours.read(&mut buf).unwrap();

        assert_eq!(n, 0, "the shut-down socket reads as end-of-file");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(watchdog.disarm(), "the watchdog reports that it fired");
    }

    #[test]
    fn a_disarmed_watchdog_leaves_the_socket_alone() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let watchdog = SocketDeadline::arm(&ours, Instant::now() + Duration::from_millis(100)).unwrap();
        assert!(!watchdog.disarm());
        std::thread::sleep(Duration::from_millis(200));
        use std::io::Write;
        (&ours).write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        peer.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
    }

    #[test]
    fn connect_reaches_a_listener_and_names_a_missing_one() {
        let path = scratch("connect");
        let _listener = UnixListener::bind(&path).unwrap();
        connect_within(&path, Instant::now() + Duration::from_secs(5)).unwrap();
        let missing = path.with_file_name("missing.sock");
        let e = connect_within(&missing, Instant::now() + Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn connect_to_a_full_listener_gives_up_at_the_deadline() {
        let path = scratch("full");
        // A listener that never accepts, with the shortest queue: it fills, then connects block.
        let listener = UnixListener::bind(&path).unwrap();
        // SAFETY: listen() on a descriptor `listener` owns; a second listen() only changes the
        // queue length.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let mut held = Vec::new();
        let started = Instant::now();
        let outcome = loop {
            match connect_within(&path, Instant::now() + Duration::from_millis(200)) {
                Ok(s) => held.push(s),
                Err(e) => break e,
            }
            assert!(held.len() < 1000, "the listener's queue never filled");
        };
        assert_eq!(outcome.kind(), io::ErrorKind::TimedOut, "{outcome}");
        assert!(started.elapsed() < Duration::from_secs(30));
        drop(listener);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
