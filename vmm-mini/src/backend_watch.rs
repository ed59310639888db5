//! Notices a vhost-user backend going away (its socket hangs up) and ends the guest.

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::devices::GuestExit;

/// A thread polling the backends' sockets for a hang-up.
pub struct BackendWatch {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl BackendWatch {
    /// Watches `sockets` (fd and path); the first that hangs up sends a
    /// [`GuestExit::BackendLost`] naming it. The fds must stay open until [`BackendWatch::stop`].
    pub fn start(sockets: Vec<(RawFd, PathBuf)>, exits: Sender<GuestExit>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new().name("backend-watch".into()).spawn(move || {
            let mut fds: Vec<libc::pollfd> =
                sockets.iter().map(|(fd, _)| libc::pollfd { fd: *fd, events: libc::POLLRDHUP, revents: 0 }).collect();
            while !flag.load(Ordering::Acquire) && !fds.is_empty() {
                // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the call.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
                if n <= 0 {
                    continue;
                }
                let gone = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
                if let Some(i) = fds.iter().position(|p| p.revents & gone != 0) {
                    let path = sockets[i].1.display();
                    let _ = exits.send(GuestExit::BackendLost(format!("vhost-user backend {path} went away")));
                    return;
                }
            }
        })?;
        Ok(BackendWatch { stop, handle })
    }

    /// Stops watching and waits for the thread.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.handle.join();
    }
}
