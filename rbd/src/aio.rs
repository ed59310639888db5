//! Asynchronous requests and how their completions reach the worker that issued them.
//!
//! One image handle serves every worker thread of an export (a second handle would fight the
//! first for the exclusive lock). librbd signals one eventfd per image when completions are
//! waiting. Each worker that issues a request on the image watches that eventfd on its own ring
//! ([`IoCtx::watch_readable`], registered on its first request): whichever worker's loop sees it
//! first drains librbd's queue (`rbd_poll_io_events`) and completes every request in it, its own
//! and others'. A request's state lives in a [`Slot`] shared with its future; completing it
//! stores the result and wakes the future's waker, which for another worker's task queues the
//! task there and signals that worker's wake eventfd. No thread per request, no blocking call on
//! a worker: `rbd_poll_io_events` only pops librbd's lock-free completion queue.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};

use blockdev::engine::WatchFn;
use blockdev::{Error, ErrorKind, IoBufs, IoCtx, Result};

use crate::ffi::RbdCompletionT;
use crate::image::Image;

/// How many completions one `rbd_poll_io_events` call takes.
const POLL_BATCH: usize = 32;

/// One request's completion, shared between its future and whoever drains the image's events.
#[derive(Default)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    result: Option<isize>,
    waker: Option<Waker>,
}

impl Slot {
    fn complete(&self, res: isize) {
        let waker = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.result = Some(res);
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// What a request is, for its submission and its error message.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Flush => "flush",
            Kind::Discard => "discard",
            Kind::WriteZeroes => "write-zeroes",
        }
    }
}

/// Drain every completion waiting on `image`: reset the eventfd first (a completion queued after
/// the reset signals it again, so none is missed), then pop until librbd's queue is empty.
pub(crate) fn drain(image: &Image) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd; EAGAIN is fine.
    unsafe { libc::read(image.event_fd(), (&mut v as *mut u64).cast(), 8) };
    let api = image.api();
    let mut comps: [RbdCompletionT; POLL_BATCH] = [std::ptr::null_mut(); POLL_BATCH];
    loop {
        // SAFETY: a live image handle and an array of POLL_BATCH completion pointers to fill.
        let n = unsafe { (api.rbd_poll_io_events)(image.handle(), comps.as_mut_ptr(), POLL_BATCH as i32) };
        if n <= 0 {
            return;
        }
        for &c in &comps[..n as usize] {
            // SAFETY: `c` is a completed completion librbd handed back once; its argument is the
            // `Arc<Slot>` leaked by `submit`, reclaimed exactly here; the completion is released once.
            let (res, slot) = unsafe {
                let res = (api.rbd_aio_get_return_value)(c);
                let arg = (api.rbd_aio_get_arg)(c);
                (api.rbd_aio_release)(c);
                (res, Arc::from_raw(arg as *const Slot))
            };
            slot.complete(res);
        }
        if (n as usize) < POLL_BATCH {
            return;
        }
    }
}

/// The state every request and every worker's watch shares: the image and its watch key.
pub(crate) struct Shared {
    pub(crate) image: Image,
    /// Unique per opened image, the key of its watches on the workers' rings.
    pub(crate) key: u64,
}

/// Make sure this worker's ring watches the image's eventfd (a lookup after the first time).
fn ensure_watch(shared: &Arc<Shared>, io: &IoCtx) {
    let weak: Weak<Shared> = Arc::downgrade(shared);
    io.watch_readable(shared.key, shared.image.event_fd(), move || -> WatchFn {
        Rc::new(move || match weak.upgrade() {
            Some(s) => {
                drain(&s.image);
                true
            }
            // The image is closed: end this worker's watch.
            None => false,
        })
    });
}

/// Submit one request and return its future. `bufs` is kept alive until librbd is done with it.
pub(crate) fn submit(
    shared: &Arc<Shared>,
    io: &IoCtx,
    kind: Kind,
    off: u64,
    len: u64,
    bufs: Option<IoBufs>,
) -> Pin<Box<dyn Future<Output = Result<()>>>> {
    ensure_watch(shared, io);
    let api = shared.image.api();
    let img = shared.image.handle();
    let slot = Arc::new(Slot::default());
    let arg = Arc::into_raw(slot.clone()) as *mut std::ffi::c_void;
    let mut comp: RbdCompletionT = std::ptr::null_mut();
    // SAFETY: `arg` is handed back by rbd_aio_get_arg in `drain`; no callback (completion goes
    // through the image's event notification only).
    let r = unsafe { (api.rbd_aio_create_completion)(arg, None, &mut comp) };
    let r = if r < 0 {
        r
    } else {
        let iovs = bufs.as_ref().map(|b| b.iovecs()).unwrap_or(&[]);
        // SAFETY: a live image handle; the iovecs point to memory `bufs` keeps valid until the
        // completion is drained (the future holds `bufs` until then, and leaks them if dropped
        // before); `comp` is a fresh completion.
        unsafe {
            match kind {
                Kind::Read => (api.rbd_aio_readv)(img, iovs.as_ptr(), iovs.len() as i32, off, comp),
                Kind::Write => (api.rbd_aio_writev)(img, iovs.as_ptr(), iovs.len() as i32, off, comp),
                Kind::Flush => (api.rbd_aio_flush)(img, comp),
                Kind::Discard => (api.rbd_aio_discard)(img, off, len, comp),
                Kind::WriteZeroes => (api.rbd_aio_write_zeroes)(img, off, len as usize, comp, 0, 0),
            }
        }
    };
    if r < 0 {
        // Not submitted: the completion never reaches the event queue; reclaim both here.
        if !comp.is_null() {
            // SAFETY: a completion we created and librbd did not take.
            unsafe { (api.rbd_aio_release)(comp) };
        }
        // SAFETY: the reference leaked above, which nobody else will reclaim.
        drop(unsafe { Arc::from_raw(arg as *const Slot) });
        return Box::pin(std::future::ready(Err(request_error(shared, kind, off, len, -r))));
    }
    Box::pin(Request { slot, bufs, shared: shared.clone(), kind, off, len, done: false })
}

fn request_error(shared: &Shared, kind: Kind, off: u64, len: u64, errno: i32) -> Error {
    let what = match kind {
        Kind::Flush => format!("rbd image {}: flush", shared.image.name()),
        _ => format!("rbd image {}: {} [{off}, +{len})", shared.image.name(), kind.name()),
    };
    match errno {
        libc::ETIMEDOUT => Error::new(ErrorKind::Io, format!("{what}: the cluster did not answer in time (timeout=)")),
        e => Error::from_errno(e, what),
    }
}

/// The future of one submitted request.
struct Request {
    slot: Arc<Slot>,
    bufs: Option<IoBufs>,
    shared: Arc<Shared>,
    kind: Kind,
    off: u64,
    len: u64,
    done: bool,
}

impl Future for Request {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let res = {
            let mut st = self.slot.state.lock().unwrap_or_else(|p| p.into_inner());
            match st.result {
                Some(r) => r,
                None => {
                    if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        st.waker = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
        };
        self.done = true;
        self.bufs = None;
        if res < 0 {
            return Poll::Ready(Err(request_error(&self.shared, self.kind, self.off, self.len, -res as i32)));
        }
        if matches!(self.kind, Kind::Read) && (res as u64) < self.len {
            return Poll::Ready(Err(Error::new(
                ErrorKind::Io,
                format!(
                    "rbd image {}: short read [{}, +{}): {res} bytes",
                    self.shared.image.name(),
                    self.off,
                    self.len
                ),
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if !self.done && self.slot.state.lock().unwrap_or_else(|p| p.into_inner()).result.is_none() {
            // librbd may still write into (or read from) these buffers: keep them forever rather
            // than free memory it uses. Only a request abandoned mid-flight gets here.
            std::mem::forget(self.bufs.take());
        }
    }
}
