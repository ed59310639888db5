//! Operations on files through the ring, as futures: vectored read and write (with FUA as
//! RWF_DSYNC), fdatasync, and fallocate (punch hole, zero range).

use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use io_uring::{opcode, squeue, types};

use super::slab::OpState;
use super::{FileHandle, IoCtx};
use crate::{Error, IoBufs, Result};

/// Where an SQE points: a plain fd or a slot of the registered-file table.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    Fd(RawFd),
    Fixed(u32),
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Readv { off: u64 },
    Writev { off: u64, flags: i32 },
    Fdatasync,
    Fallocate { off: u64, len: u64, mode: i32 },
}

enum State {
    /// Not yet submitted: what to submit.
    Ready { kind: Kind, bufs: IoBufs },
    /// Submitted in this slot.
    InFlight(u32),
    /// Completed; holds the buffers handed back by the slot.
    Finished(IoBufs),
}

/// One operation on the ring. Resolves to the io_uring result (bytes moved, or 0) or an error.
///
/// Dropping it before completion is safe: its slot is marked orphaned and keeps the buffers (and
/// the file) alive until the kernel reports completion.
pub struct Op {
    ctx: IoCtx,
    file: Arc<FileHandle>,
    state: State,
    /// Go straight to an io_uring worker (IOSQE_ASYNC), whatever else is in flight.
    to_worker: bool,
}

impl IoCtx {
    /// Read into `bufs` at `off` (one readv; may be short).
    pub fn readv(&self, file: &Arc<FileHandle>, off: u64, bufs: IoBufs) -> Op {
        self.op(file, Kind::Readv { off }, bufs)
    }

    /// Write `bufs` at `off` (one writev; may be short). `fua` adds RWF_DSYNC.
    pub fn writev(&self, file: &Arc<FileHandle>, off: u64, bufs: IoBufs, fua: bool) -> Op {
        let flags = if fua { libc::RWF_DSYNC } else { 0 };
        self.op(file, Kind::Writev { off, flags }, bufs)
    }

    /// fdatasync the file.
    pub fn fdatasync(&self, file: &Arc<FileHandle>) -> Op {
        self.op(file, Kind::Fdatasync, IoBufs::new())
    }

    /// fallocate `mode` over `[off, off+len)`.
    pub fn fallocate(&self, file: &Arc<FileHandle>, off: u64, len: u64, mode: i32) -> Op {
        self.op(file, Kind::Fallocate { off, len, mode }, IoBufs::new())
    }

    fn op(&self, file: &Arc<FileHandle>, kind: Kind, bufs: IoBufs) -> Op {
        Op { ctx: self.clone(), file: file.clone(), state: State::Ready { kind, bufs }, to_worker: false }
    }
}

impl Op {
    /// Hand this operation straight to one of io_uring's worker threads (IOSQE_ASYNC) instead
    /// of trying it inline first; io-wq then also starts another worker for it rather than
    /// queue it behind a busy one. For pieces of one large read to be copied in parallel.
    pub fn on_worker(mut self) -> Op {
        self.to_worker = true;
        self
    }
}

macro_rules! with_target {
    ($t:expr, |$fd:ident| $body:expr) => {
        match $t {
            Target::Fd(raw) => {
                let $fd = types::Fd(raw);
                $body
            }
            Target::Fixed(slot) => {
                let $fd = types::Fixed(slot);
                $body
            }
        }
    };
}

/// Requests at least this large go straight to io_uring's worker threads (IOSQE_ASYNC) when
/// other operations are in flight on the same ring.
///
/// Large buffered copies are punted there anyway once the non-blocking attempt fails, and io-wq
/// only starts a second worker for work marked concurrent (which IOSQE_ASYNC does): without it every
/// large copy queues behind one worker thread and sequential throughput is one CPU's memcpy.
/// A large request alone on the ring (queue depth 1) keeps the inline attempt: a page-cache hit
/// is then copied by the submitting thread where the file system can, without a hop to a worker
/// and back (this beat punting every large request at QD1 and QD32 alike: docs/design.md, "The
/// engine"). Small requests always try inline.
pub const ASYNC_THRESHOLD: usize = 128 << 10;

/// Build the SQE for `kind` on `bufs`; `others_in_flight` says the ring has other operations in
/// flight, or the caller asked for a worker (see [`ASYNC_THRESHOLD`]).
fn build_sqe(target: Target, kind: Kind, bufs: &IoBufs, others_in_flight: bool) -> squeue::Entry {
    let sqe = build_sqe_inner(target, kind, bufs);
    let large = bufs.len() >= ASYNC_THRESHOLD;
    if matches!(kind, Kind::Readv { .. } | Kind::Writev { .. }) && large && others_in_flight {
        sqe.flags(squeue::Flags::ASYNC)
    } else {
        sqe
    }
}

fn build_sqe_inner(target: Target, kind: Kind, bufs: &IoBufs) -> squeue::Entry {
    let iov = bufs.iovecs();
    // The kernel caps one readv/writev at IOV_MAX segments; callers split before that.
    let nr = iov.len().min(libc::UIO_MAXIOV as usize) as u32;
    match (kind, iov) {
        // One segment: plain READ/WRITE spares the kernel importing an iovec array.
        (Kind::Readv { off }, [one]) => {
            with_target!(target, |fd| opcode::Read::new(fd, one.iov_base.cast(), one.iov_len as u32)
                .offset(off)
                .build())
        }
        (Kind::Writev { off, flags }, [one]) => {
            with_target!(target, |fd| opcode::Write::new(fd, one.iov_base.cast(), one.iov_len as u32)
                .offset(off)
                .rw_flags(flags)
                .build())
        }
        (Kind::Readv { off }, _) => {
            with_target!(target, |fd| opcode::Readv::new(fd, iov.as_ptr(), nr).offset(off).build())
        }
        (Kind::Writev { off, flags }, _) => {
            with_target!(target, |fd| opcode::Writev::new(fd, iov.as_ptr(), nr).offset(off).rw_flags(flags).build())
        }
        (Kind::Fdatasync, _) => {
            with_target!(target, |fd| opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build())
        }
        (Kind::Fallocate { off, len, mode }, _) => {
            with_target!(target, |fd| opcode::Fallocate::new(fd, len).offset(off).mode(mode).build())
        }
    }
}

impl Future for Op {
    type Output = Result<i32>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<i32>> {
        let this = &mut *self;
        if let State::InFlight(slot) = this.state {
            return this.poll_in_flight(slot, cx);
        }
        match std::mem::replace(&mut this.state, State::Finished(IoBufs::new())) {
            State::Ready { kind, bufs } => {
                if bufs.segments() > libc::UIO_MAXIOV as usize {
                    return Poll::Ready(Err(Error::new(
                        crate::ErrorKind::InvalidInput,
                        format!("{} segments exceed the kernel's limit of {}", bufs.segments(), libc::UIO_MAXIOV),
                    )));
                }
                let target = this.ctx.target(&this.file);
                let slot = {
                    let mut ops = this.ctx.inner().ops().borrow_mut();
                    match ops.alloc(bufs) {
                        Ok(slot) => {
                            if let OpState::Waiting(w) = &mut ops.get_mut(slot).state {
                                *w = Some(cx.waker().clone());
                            }
                            slot
                        }
                        Err(bufs) => {
                            // Table full: wait for a slot to free up, then try again.
                            ops.waiting_for_slot.push(cx.waker().clone());
                            drop(ops);
                            this.state = State::Ready { kind, bufs };
                            return Poll::Pending;
                        }
                    }
                };
                let sqe = {
                    let mut ops = this.ctx.inner().ops().borrow_mut();
                    // This operation's own slot is counted already.
                    let others_in_flight = ops.in_flight() > 1;
                    let sqe = build_sqe(target, kind, &ops.get_mut(slot).bufs, others_in_flight || this.to_worker);
                    sqe.user_data(u64::from(slot))
                };
                // SAFETY: the SQE points at the iovec array inside the slot's IoBufs, stored in
                // the in-flight table, which never moves or reallocates; the slot (and the
                // buffers' keepalive) is released only after the CQE, also when this future is
                // dropped early (the slot is then orphaned). The fd is kept open by `self.file`
                // until completion; for an orphaned op the registration or the kernel's own
                // file reference (taken at submission) keeps it.
                unsafe { this.ctx.push_sqe(&sqe) };
                this.state = State::InFlight(slot);
                Poll::Pending
            }
            State::InFlight(slot) => self.poll_in_flight(slot, cx),
            State::Finished(_) => {
                Poll::Ready(Err(Error::new(crate::ErrorKind::Io, "io engine: op polled after completion")))
            }
        }
    }
}

impl Op {
    fn poll_in_flight(&mut self, slot: u32, cx: &mut Context<'_>) -> Poll<Result<i32>> {
        let mut ops = self.ctx.inner().ops().borrow_mut();
        let entry = ops.get_mut(slot);
        match entry.state {
            OpState::Done(res) => {
                let (bufs, waiter) = ops.release(slot);
                drop(ops);
                self.state = State::Finished(bufs);
                if let Some(w) = waiter {
                    w.wake();
                }
                Poll::Ready(Ok(res))
            }
            OpState::Waiting(ref mut w) => {
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            _ => Poll::Ready(Err(Error::new(crate::ErrorKind::Io, "io engine: slot lost its state"))),
        }
    }

    /// After the op completed (awaited through `&mut op`), take back its buffers, e.g. to
    /// re-issue the rest of a short read without copying the iovec list.
    pub fn into_bufs(mut self) -> IoBufs {
        match std::mem::replace(&mut self.state, State::Finished(IoBufs::new())) {
            State::Finished(bufs) | State::Ready { bufs, .. } => bufs,
            State::InFlight(slot) => {
                self.state = State::InFlight(slot);
                IoBufs::new()
            }
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if let State::InFlight(slot) = self.state {
            let mut ops = self.ctx.inner().ops().borrow_mut();
            let entry = ops.get_mut(slot);
            match entry.state {
                OpState::Done(_) => {
                    let (bufs, waiter) = ops.release(slot);
                    drop(ops);
                    drop(bufs);
                    if let Some(w) = waiter {
                        w.wake();
                    }
                }
                OpState::Waiting(_) => {
                    entry.state = OpState::Orphaned;
                    // Keep the file open until the kernel is done with it.
                    entry.bufs.keep(std::rc::Rc::new(self.file.clone()));
                }
                _ => {}
            }
        }
    }
}
