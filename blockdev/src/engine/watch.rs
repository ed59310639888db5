//! Readiness watches: a device that learns of its completions through a descriptor of its own
//! (librbd's event notification eventfd, say) registers it with the engine of every thread that
//! issues requests on it. A multishot `POLL_ADD` on the ring fires the device's callback from the
//! engine's loop when the descriptor becomes readable: no thread of our own, no blocking call,
//! and a thread sleeping in the ring (or in epoll on `completion_fd`) wakes for it like for any
//! other completion.
//!
//! A watch is keyed by a number the device picks (unique per device), so registering on every
//! request is an idempotent lookup. Watches are never reused: the slot index in the user_data of
//! a stale completion (a removed watch's last CQE) can never name a newer watch.

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::rc::Rc;

use io_uring::{cqueue, opcode, types};

use super::IoCtx;

/// user_data bit of a watch's poll (the engine's slab uses the low 32 bits only; `WAKE_UD` is
/// checked before this bit).
pub(crate) const WATCH_BIT: u64 = 1 << 62;
/// user_data bit of a watch's `POLL_REMOVE` (its completion is ignored).
const REMOVE_BIT: u64 = 1 << 61;

/// What a watch calls when its descriptor is readable; returning false ends the watch.
pub type WatchFn = Rc<dyn Fn() -> bool>;

struct Watch {
    key: u64,
    fd: RawFd,
    on_ready: WatchFn,
    armed: bool,
}

/// The watches of one engine.
#[derive(Default)]
pub(crate) struct Watches {
    slots: RefCell<Vec<Option<Watch>>>,
}

impl IoCtx {
    /// Watch `fd` for readability on this thread's ring under `key`, calling `on_ready` from the
    /// engine's loop (inside [`IoCtx::run_pending`] or `block_on`) each time it becomes readable
    /// until it returns false. The callback must not block; it typically drains the source and
    /// wakes the tasks whose requests completed. Once per key: when `key` is already watched
    /// this does nothing and returns false. The caller keeps `fd` open while watched (or until
    /// the callback has returned false).
    pub fn watch_readable(&self, key: u64, fd: RawFd, on_ready: impl FnOnce() -> WatchFn) -> bool {
        let watches = &self.inner.watches;
        let idx = {
            let mut slots = watches.slots.borrow_mut();
            if slots.iter().flatten().any(|w| w.key == key) {
                return false;
            }
            slots.push(Some(Watch { key, fd, on_ready: on_ready(), armed: false }));
            slots.len() - 1
        };
        self.arm_watch(idx);
        true
    }

    /// True when `key` is watched on this thread's ring.
    pub fn is_watching(&self, key: u64) -> bool {
        self.inner.watches.slots.borrow().iter().flatten().any(|w| w.key == key)
    }

    /// Stop watching `key` (nothing if it is not watched).
    pub fn unwatch(&self, key: u64) {
        let idx = self.inner.watches.slots.borrow().iter().position(|w| w.as_ref().is_some_and(|w| w.key == key));
        if let Some(idx) = idx {
            self.remove_watch(idx);
        }
    }

    fn arm_watch(&self, idx: usize) {
        let fd = {
            let mut slots = self.inner.watches.slots.borrow_mut();
            let Some(Some(w)) = slots.get_mut(idx) else { return };
            w.armed = true;
            w.fd
        };
        let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(WATCH_BIT | idx as u64);
        // SAFETY: a poll SQE references no memory, only the descriptor, which the watch's owner
        // keeps open while it is watched (and the kernel holds its own reference meanwhile).
        unsafe { self.push_sqe(&sqe) };
    }

    fn remove_watch(&self, idx: usize) {
        let armed = {
            let mut slots = self.inner.watches.slots.borrow_mut();
            slots.get_mut(idx).and_then(Option::take).is_some_and(|w| w.armed)
        };
        if armed {
            let sqe = opcode::PollRemove::new(WATCH_BIT | idx as u64).build().user_data(WATCH_BIT | REMOVE_BIT);
            // SAFETY: a poll-remove SQE references no memory.
            unsafe { self.push_sqe(&sqe) };
        }
    }

    /// Handle the completion of a watch's poll (called by `reap` for user_data with
    /// [`WATCH_BIT`]): call its callback, end the watch if it says so, re-arm a poll the kernel
    /// ended.
    pub(crate) fn watch_fired(&self, ud: u64, res: i32, flags: u32) {
        if ud & REMOVE_BIT != 0 {
            return;
        }
        let idx = (ud & u64::from(u32::MAX)) as usize;
        let more = cqueue::more(flags);
        let on_ready = {
            let mut slots = self.inner.watches.slots.borrow_mut();
            let Some(Some(w)) = slots.get_mut(idx) else { return };
            if !more {
                w.armed = false;
            }
            w.on_ready.clone()
        };
        // A poll ended with an error (the descriptor was closed, say) still runs the callback
        // once, so the owner can drain what is left; it is re-armed only while the owner wants.
        let keep = on_ready();
        if !keep {
            self.remove_watch(idx);
        } else if !more {
            if res < 0 && res != -libc::ECANCELED {
                tracing::warn!("io engine: watch {idx} poll failed: {}", std::io::Error::from_raw_os_error(-res));
            }
            self.arm_watch(idx);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::*;

    fn eventfd() -> OwnedFd {
        // SAFETY: eventfd has no memory arguments; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor we own.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn signal(fd: &OwnedFd) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd.
        assert_eq!(unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) }, 8);
    }

    fn drain(fd: RawFd) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from a non-blocking eventfd.
        unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    }

    #[test]
    fn a_watch_fires_on_each_signal_and_ends_when_told() {
        let io = IoCtx::new().unwrap();
        let efd = eventfd();
        let raw = efd.as_raw_fd();
        let hits = Rc::new(Cell::new(0));
        let h = hits.clone();
        let cb = move || -> WatchFn {
            Rc::new(move || {
                drain(raw);
                h.set(h.get() + 1);
                h.get() < 3
            })
        };
        assert!(io.watch_readable(7, raw, cb.clone()));
        assert!(!io.watch_readable(7, raw, cb), "a second registration of a key is a no-op");
        assert!(io.is_watching(7));
        for want in 1..=3 {
            signal(&efd);
            // Turns until the callback ran (the poll's completion may need an enter).
            for _ in 0..1000 {
                io.run_pending();
                if hits.get() == want {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            assert_eq!(hits.get(), want);
        }
        assert!(!io.is_watching(7), "the callback returned false: the watch ended");
        signal(&efd);
        for _ in 0..20 {
            io.run_pending();
        }
        assert_eq!(hits.get(), 3);
    }

    #[test]
    fn a_signal_from_another_thread_wakes_block_on() {
        let io = IoCtx::new().unwrap();
        let efd = eventfd();
        let raw = efd.as_raw_fd();
        let done = Rc::new(Cell::new(false));
        let waker_slot: Rc<RefCell<Option<std::task::Waker>>> = Rc::new(RefCell::new(None));
        let (d, ws) = (done.clone(), waker_slot.clone());
        io.watch_readable(1, raw, move || {
            Rc::new(move || {
                drain(raw);
                d.set(true);
                if let Some(w) = ws.borrow_mut().take() {
                    w.wake();
                }
                true
            })
        });
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            signal(&efd);
            efd
        });
        io.block_on(std::future::poll_fn(|cx| {
            if done.get() {
                std::task::Poll::Ready(())
            } else {
                *waker_slot.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }));
        let efd = writer.join().unwrap();
        io.unwatch(1);
        assert!(!io.is_watching(1));
        drop(efd);
    }
}
