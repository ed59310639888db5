//! Notices a vhost-user backend going away (its socket hangs up) and ends the guest.

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use crate::devices::GuestExit;

/// A thread polling the backends' sockets for a hang-up.
pub struct BackendWatch {
    stop: Arc<AtomicBool>,
    wake: EventFd,
    handle: JoinHandle<()>,
}

impl BackendWatch {
    /// Watches `sockets` (fd and path); the first that hangs up sends a
    /// [`GuestExit::BackendLost`] naming it. The fds must stay open until [`BackendWatch::stop`].
    pub fn start(sockets: Vec<(RawFd, PathBuf)>, exits: Sender<GuestExit>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let wake = EventFd::new(libc::EFD_NONBLOCK)?;
        let wake_fd = wake.as_raw_fd();
        let handle = std::thread::Builder::new().name("backend-watch".into()).spawn(move || {
            // The last entry is the wake eventfd: readable once `stop` was called.
            let mut fds: Vec<libc::pollfd> = sockets
                .iter()
                .map(|(fd, _)| libc::pollfd { fd: *fd, events: libc::POLLRDHUP, revents: 0 })
                .chain([libc::pollfd { fd: wake_fd, events: libc::POLLIN, revents: 0 }])
                .collect();
            while !flag.load(Ordering::Acquire) {
                // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the call.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
                if n <= 0 {
                    continue;
                }
                let gone = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
                if let Some(i) = fds[..sockets.len()].iter().position(|p| p.revents & gone != 0) {
                    let path = sockets[i].1.display();
                    let _ = exits.send(GuestExit::BackendLost(format!("vhost-user backend {path} went away")));
                    return;
                }
            }
        })?;
        Ok(BackendWatch { stop, wake, handle })
    }

    /// Stops watching and waits for the thread.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        // A full counter still wakes the poll, so a failed write loses nothing.
        let _ = self.wake.write(1);
        let _ = self.handle.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn hung_up_backend_ends_the_guest_naming_its_socket() {
        let (ours, backend) = UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::channel();
        let watch = BackendWatch::start(vec![(ours.as_raw_fd(), "/run/disk0.sock".into())], tx).unwrap();

        drop(backend);

        let exit = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(exit, GuestExit::BackendLost("vhost-user backend /run/disk0.sock went away".into()));
        watch.stop();
    }

    #[test]
    fn live_backend_is_left_alone_and_the_watch_stops() {
        let (ours, _backend) = UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::channel();
        let watch = BackendWatch::start(vec![(ours.as_raw_fd(), "/run/disk0.sock".into())], tx).unwrap();

        let got = rx.recv_timeout(Duration::from_millis(300));

        assert!(got.is_err(), "no exit while the backend is connected: {got:?}");
        watch.stop();
    }
}
