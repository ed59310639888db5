//! Wake-ups: the ready queue that task wakers push to, and the eventfd that tells a sleeping
//! thread another thread woke one of its tasks.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

use crate::{Error, Result};

static NEXT_THREAD_TOKEN: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static THREAD_TOKEN: u64 = NEXT_THREAD_TOKEN.fetch_add(1, Ordering::Relaxed);
}

/// A number unique to the calling thread (cheaper than `thread::current().id()`).
pub(crate) fn thread_token() -> u64 {
    THREAD_TOKEN.with(|t| *t)
}

/// Task ids woken since the executor last looked, plus the eventfd for remote wake-ups.
pub(crate) struct ReadyQueue {
    ids: Mutex<Vec<usize>>,
    wake_fd: OwnedFd,
    owner: u64,
}

impl ReadyQueue {
    pub(crate) fn new() -> Result<Arc<Self>> {
        // SAFETY: eventfd has no memory arguments; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::from_io(std::io::Error::last_os_error(), "io engine: eventfd"));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let wake_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Arc::new(ReadyQueue { ids: Mutex::new(Vec::with_capacity(256)), wake_fd, owner: thread_token() }))
    }

    /// Mark `id` ready; from another thread, also signal the eventfd, unless ids were already
    /// waiting. Those were either signalled by a wake-up not yet taken, or queued by the owner
    /// itself while running, which takes them before it sleeps; either way the owner takes this
    /// id with them (it resets the eventfd before it takes the ids, never after). A burst of
    /// completions from another thread (librbd's) so costs that thread one write, not one each.
    pub(crate) fn push(&self, id: usize) {
        let first = {
            let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
            ids.push(id);
            ids.len() == 1
        };
        if first && thread_token() != self.owner {
            self.signal();
        }
    }

    /// Write the eventfd so a thread sleeping in the ring wakes up.
    pub(crate) fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. EAGAIN (counter full)
        // still leaves the eventfd readable, which is all we need.
        unsafe { libc::write(self.wake_fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Reset the eventfd counter after a wake-up was seen.
    pub(crate) fn clear_signal(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; non-blocking, EAGAIN is fine.
        unsafe { libc::read(self.wake_fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    /// Move the ready ids into `out` (which is cleared first).
    pub(crate) fn take(&self, out: &mut Vec<usize>) {
        out.clear();
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *ids, out);
    }

    /// True when something is waiting to run.
    pub(crate) fn has_ready(&self) -> bool {
        !self.ids.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    pub(crate) fn wake_fd(&self) -> RawFd {
        self.wake_fd.as_raw_fd()
    }
}

/// The waker of one task: pushes the task id onto its thread's ready queue.
pub(crate) struct TaskWaker {
    pub(crate) id: usize,
    pub(crate) queue: Arc<ReadyQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.queue.push(self.id);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.queue.push(self.id);
    }
}

/// Build the `Waker` for task `id`.
pub(crate) fn task_waker(id: usize, queue: &Arc<ReadyQueue>) -> Waker {
    Waker::from(Arc::new(TaskWaker { id, queue: queue.clone() }))
}

/// A handle another thread can use to wake this engine's thread (e.g. after changing state that
/// a task there waits for without a `Waker`).
#[derive(Clone)]
pub struct RemoteWaker {
    pub(crate) queue: Arc<ReadyQueue>,
}

impl RemoteWaker {
    /// Wake the engine's thread.
    pub fn wake(&self) {
        self.queue.signal();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eventfd_count(q: &ReadyQueue) -> u64 {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from the non-blocking eventfd; EAGAIN leaves 0.
        unsafe { libc::read(q.wake_fd(), (&mut v as *mut u64).cast(), 8) };
        v
    }

    #[test]
    fn another_thread_signals_once_per_batch_the_owner_has_not_taken() {
        let q = ReadyQueue::new().unwrap();
        let q2 = q.clone();
        std::thread::spawn(move || (0..100).for_each(|i| q2.push(i))).join().unwrap();
        assert_eq!(eventfd_count(&q), 1, "a burst signals once");
        let mut ids = Vec::new();
        q.take(&mut ids);
        assert_eq!(ids, (0..100).collect::<Vec<_>>());
        let q2 = q.clone();
        std::thread::spawn(move || q2.push(7)).join().unwrap();
        assert_eq!(eventfd_count(&q), 1, "after a take, the next push signals again");
    }

    #[test]
    fn the_owner_never_signals_itself() {
        let q = ReadyQueue::new().unwrap();
        q.push(1);
        assert_eq!(eventfd_count(&q), 0);
        assert!(q.has_ready());
    }
}
