//! The queue worker threads of one connection: each waits in its own epoll set for the kicks
//! of its queues (and the io engine's eventfds, which the worker adds itself), and runs the
//! worker's turn for each event (`server::worker::handle_event`).
//!
//! Two eventfds of our own per thread: `exit` ends the thread; `enabled` says that a queue's
//! kick was just registered, so the worker looks at that ring once (requests may have been made
//! available before the frontend enabled it, with their kick already consumed or never sent).

use blockdev::thread::ThreadKind;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vhost_user_backend::{VringRwLock, VringT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::server::backend::BlkBackend;
use crate::server::worker;

/// epoll data of the exit eventfd.
const EXIT: u64 = u64::MAX;
/// epoll data of the "a ring was enabled" eventfd.
const ENABLED: u64 = u64::MAX - 1;

/// One worker thread's wake-up sources, shared with the frontend thread that registers kicks.
pub struct WorkerEvents {
    epoll: Epoll,
    exit: EventFd,
    enabled: EventFd,
    /// Local ring indices whose kick was registered since the thread last looked.
    pending: AtomicU64,
}

impl WorkerEvents {
    fn new() -> io::Result<WorkerEvents> {
        let epoll = Epoll::new()?;
        let exit = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let enabled = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        epoll.ctl(ControlOperation::Add, exit.as_raw_fd(), EpollEvent::new(EventSet::IN, EXIT))?;
        epoll.ctl(ControlOperation::Add, enabled.as_raw_fd(), EpollEvent::new(EventSet::IN, ENABLED))?;
        Ok(WorkerEvents { epoll, exit, enabled, pending: AtomicU64::new(0) })
    }

    /// The epoll fd (the worker adds its engine's eventfds to it).
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Watch `kick` for the ring with local index `local`, and have the thread look at the
    /// ring once now.
    pub fn watch_kick(&self, kick: RawFd, local: usize) -> io::Result<()> {
        match self.epoll.ctl(ControlOperation::Add, kick, EpollEvent::new(EventSet::IN, local as u64)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(e),
        }
        self.pending.fetch_or(1 << local, Ordering::AcqRel);
        self.enabled.write(1)
    }

    /// Stop watching `kick`.
    pub fn unwatch_kick(&self, kick: RawFd, local: usize) {
        self.pending.fetch_and(!(1 << local), Ordering::AcqRel);
        let _ = self.epoll.ctl(ControlOperation::Delete, kick, EpollEvent::new(EventSet::IN, local as u64));
    }
}

/// The worker threads of one connection.
pub struct Workers {
    events: Vec<Arc<WorkerEvents>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Start one thread per entry of `masks` (the queues it serves, consecutive), each over
    /// its share of `vrings`.
    pub fn start(backend: &Arc<BlkBackend>, vrings: &[VringRwLock], masks: &[u64]) -> io::Result<Workers> {
        let mut w = Workers { events: Vec::new(), threads: Vec::new() };
        for _ in masks {
            w.events.push(Arc::new(WorkerEvents::new()?));
        }
        backend.set_epoll_fds(w.events.iter().map(|e| e.epoll_fd()).collect());
        for (thread, &mask) in masks.iter().enumerate() {
            let mine: Vec<VringRwLock> =
                vrings.iter().enumerate().filter(|(i, _)| mask >> i & 1 == 1).map(|(_, v)| v.clone()).collect();
            let (backend, events) = (backend.clone(), w.events[thread].clone());
            // The queue worker's seccomp filter goes on before it reads anything (docs/sandbox.md).
            let name = format!("vq-worker-{thread}");
            let spawned =
                blockdev::thread::spawn(ThreadKind::QueueWorker, name, move || run(&backend, &events, &mine, thread));
            match spawned {
                Ok(t) => w.threads.push(t),
                Err(e) => {
                    w.stop();
                    return Err(e);
                }
            }
        }
        Ok(w)
    }

    /// The wake-up sources of thread `t`.
    pub fn events(&self, t: usize) -> Option<&Arc<WorkerEvents>> {
        self.events.get(t)
    }

    /// Tell every thread to exit and wait for them.
    pub fn stop(&mut self) {
        for e in &self.events {
            let _ = e.exit.write(1);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(backend: &BlkBackend, events: &WorkerEvents, vrings: &[VringRwLock], thread: usize) {
    let mut ready = vec![EpollEvent::default(); 32];
    loop {
        let n = match events.epoll.wait(-1, &mut ready) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(export = %backend.export.name, thread, "queue worker cannot wait for events: {e}");
                return;
            }
        };
        for ev in &ready[..n] {
            match ev.data() {
                EXIT => return,
                ENABLED => {
                    let _ = events.enabled.read();
                    let mut pending = events.pending.swap(0, Ordering::AcqRel);
                    while pending != 0 {
                        let local = pending.trailing_zeros() as usize;
                        pending &= pending - 1;
                        if local < vrings.len() {
                            worker::handle_event(backend, local as u16, vrings, thread);
                        }
                    }
                }
                data => {
                    let local = data as usize;
                    if let Some(vring) = vrings.get(local) {
                        // Consume the kick; a disabled ring is not served.
                        match vring.read_kick() {
                            Ok(true) => {}
                            Ok(false) => continue,
                            Err(e) => {
                                tracing::debug!(export = %backend.export.name, thread, "cannot read a kick: {e}");
                                continue;
                            }
                        }
                    }
                    worker::handle_event(backend, data as u16, vrings, thread);
                }
            }
        }
    }
}
