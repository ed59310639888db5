//! Asynchronous requests and how their completions reach the worker that issued them.
//!
//! One image handle serves every worker thread of an export (a second handle would fight the
//! first for the exclusive lock). A request's state lives in a [`Slot`] shared with its future;
//! librbd calls [`on_complete`] on its own completion thread, which stores the result and wakes
//! the future's waker. For a task of a queue worker that pushes the task onto that worker's
//! ready queue and writes its wake eventfd — the one every worker's event loop already watches —
//! so the worker takes the completion in its next turn, whichever thread librbd finished on. No
//! thread per request, no blocking librbd call on a worker.
//!
//! (librbd's other delivery, an eventfd per image drained with `rbd_poll_io_events`, was tried
//! first with a multishot poll on each worker's io_uring: with DEFER_TASKRUN the poll's
//! completion is posted only when the worker next enters the ring, and a worker asleep in epoll
//! saw each completion up to 20 ms late. See docs/scale-out.md.)

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use blockdev::{Error, ErrorKind, IoBufs, Result};

use crate::ffi::RbdCompletionT;
use crate::image::Image;

/// One request's completion, shared between its future and librbd's completion callback.
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

/// librbd's completion callback (on librbd's thread): take the result, release the completion,
/// complete the slot (waking its task wherever it lives).
unsafe extern "C" fn on_complete(c: RbdCompletionT, arg: *mut std::ffi::c_void) {
    let Ok(api) = crate::ffi::api() else { return };
    // SAFETY: `c` is the completion librbd finished, released once here; `arg` is the
    // `Arc<Slot>` leaked by `submit` for it, reclaimed exactly once here.
    let (res, slot) = unsafe {
        let res = (api.rbd_aio_get_return_value)(c);
        (api.rbd_aio_release)(c);
        (res, Arc::from_raw(arg as *const Slot))
    };
    slot.complete(res);
}

/// The state every request shares: the image.
pub(crate) struct Shared {
    pub(crate) image: Image,
}

/// Submit one request and return its future. `bufs` is kept alive until librbd is done with it.
pub(crate) fn submit(
    shared: &Arc<Shared>,
    kind: Kind,
    off: u64,
    len: u64,
    bufs: Option<IoBufs>,
) -> Pin<Box<dyn Future<Output = Result<()>>>> {
    let api = shared.image.api();
    let img = shared.image.handle();
    let slot = Arc::new(Slot::default());
    let arg = Arc::into_raw(slot.clone()) as *mut std::ffi::c_void;
    let mut comp: RbdCompletionT = std::ptr::null_mut();
    // SAFETY: `arg` is handed back to `on_complete` once, when librbd finishes the request.
    let r = unsafe { (api.rbd_aio_create_completion)(arg, Some(on_complete), &mut comp) };
    let r = if r < 0 {
        r
    } else {
        let iovs = bufs.as_ref().map(|b| b.iovecs()).unwrap_or(&[]);
        // SAFETY: a live image handle; the iovecs point to memory `bufs` keeps valid until the
        // completion callback ran (the future holds `bufs` until then, and leaks them if dropped
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
        // Not submitted: the callback will never run; reclaim the completion and the slot here.
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
