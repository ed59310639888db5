//! The io engine: one io_uring per thread, a tiny executor for the futures that use it, and the
//! operations devices issue (vectored reads and writes, FUA, fdatasync, fallocate).
//!
//! `IoCtx` is the per-thread handle (an `Rc` inside). Futures own a clone, so they are `'static`
//! and one thread keeps many requests in flight. Submissions are batched: operations push SQEs
//! and the loop enters the kernel once per turn. Completions raise an eventfd (`completion_fd`)
//! that an epoll loop can wait on; other threads wake this one through a second eventfd that the
//! ring itself polls, so a thread sleeping in the ring wakes for either. An engine made for an
//! epoll loop (`EngineConfig::epoll_driven`) has the ring raise the wake eventfd itself and
//! keeps no poll on it: one descriptor, one read per wake-up.

mod config;
mod files;
mod ops;
mod probe;
mod restrict;
mod slab;
mod tasks;
mod wake;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::pin;
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

pub(crate) use config::online_cpus;
pub use config::EngineConfig;
pub use files::FileHandle;
pub use ops::Op;
pub use tasks::JoinHandle;
pub use wake::RemoteWaker;

use crate::{BufPool, Error, Result};
use files::{FileTable, RingMailbox};
use slab::{Completion, OpSlab};
use tasks::{JoinState, Tasks, MAIN_TASK};
use wake::ReadyQueue;

/// user_data of the multishot poll on the wake eventfd.
const WAKE_UD: u64 = u64::MAX;

thread_local! {
    /// The engines living on this thread, so a file dropped here can unregister at once.
    static THREAD_ENGINES: RefCell<Vec<Weak<Inner>>> = const { RefCell::new(Vec::new()) };
}

/// The per-thread io handle: this thread's ring, in-flight table, tasks and buffer pool.
#[derive(Clone)]
pub struct IoCtx {
    inner: Rc<Inner>,
}

pub(crate) struct Inner {
    // Drop order matters: `Drop for Inner` drains the ring first; the slab (holding the iovecs
    // and buffers the kernel may use) is declared after the ring so it outlives it.
    ring: RefCell<IoUring>,
    ops: RefCell<OpSlab>,
    tasks: Tasks,
    queue: Arc<ReadyQueue>,
    files: RefCell<FileTable>,
    mailbox: Arc<RingMailbox>,
    /// The eventfd the ring raises on completions: its own, or (`epoll_driven`) the wake
    /// eventfd, which other threads raise too.
    completion_fd: Option<OwnedFd>,
    pool: BufPool,
    wake_armed: Cell<bool>,
    /// The completion eventfd is registered with the ring on first use of `completion_fd`
    /// (only epoll users need it; signalling it on every completion costs the kernel time).
    eventfd_registered: Cell<bool>,
    cqe_scratch: RefCell<Vec<(u64, i32, u32)>>,
    fixed_files: bool,
    config: EngineConfig,
}

impl IoCtx {
    /// Create this thread's engine with default settings.
    pub fn new() -> Result<IoCtx> {
        IoCtx::with_config(EngineConfig::default())
    }

    /// Create this thread's engine: the ring, with its opcodes probed and workers capped.
    pub fn with_config(config: EngineConfig) -> Result<IoCtx> {
        let sq = config.sq_entries.clamp(8, 4096).next_power_of_two();
        let (ring, disabled) = build_ring(sq, config.sq_poll_idle_ms)?;
        probe::check_opcodes(&ring)?;
        if config.max_bounded_workers > 0 || config.max_unbounded_workers > 0 {
            let mut caps = [config.max_bounded_workers, config.max_unbounded_workers];
            ring.submitter()
                .register_iowq_max_workers(&mut caps)
                .map_err(|e| Error::from_io(e, "io_uring: cannot cap kernel worker threads"))?;
        }
        let fixed_files =
            config.registered_files > 0 && ring.submitter().register_files_sparse(config.registered_files).is_ok();
        // Set up while disabled: now restrict it to what the engine uses and start it.
        if disabled {
            restrict::restrict_and_enable(&ring)?;
        }
        let completion_fd = if config.epoll_driven {
            None
        } else {
            // SAFETY: eventfd has no memory arguments; the result is checked.
            let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if efd < 0 {
                return Err(Error::from_io(std::io::Error::last_os_error(), "io engine: eventfd"));
            }
            // SAFETY: efd is a fresh descriptor we own.
            Some(unsafe { OwnedFd::from_raw_fd(efd) })
        };
        let queue = ReadyQueue::new()?;
        if config.epoll_driven {
            ring.submitter()
                .register_eventfd(queue.wake_fd())
                .map_err(|e| Error::from_io(e, "io_uring: cannot register the wake eventfd for completions"))?;
        }
        let mailbox = Arc::new(RingMailbox {
            unregister: Mutex::new(Vec::new()),
            queue: queue.clone(),
            owner: wake::thread_token(),
        });
        let inner = Rc::new(Inner {
            ring: RefCell::new(ring),
            ops: RefCell::new(OpSlab::new(config.max_in_flight.max(1))),
            tasks: Tasks::new(),
            queue,
            files: RefCell::new(FileTable::new(if fixed_files { config.registered_files } else { 0 })),
            mailbox,
            completion_fd,
            pool: BufPool::new(config.pool_buffers_per_class),
            wake_armed: Cell::new(false),
            eventfd_registered: Cell::new(config.epoll_driven),
            cqe_scratch: RefCell::new(Vec::with_capacity(sq as usize * 2)),
            fixed_files,
            config,
        });
        THREAD_ENGINES.with(|e| {
            let mut e = e.borrow_mut();
            e.retain(|w| w.strong_count() > 0);
            e.push(Rc::downgrade(&inner));
        });
        let ctx = IoCtx { inner };
        if !config.epoll_driven {
            ctx.arm_wake_poll()?;
        }
        Ok(ctx)
    }

    /// The settings this engine was built with.
    pub fn config(&self) -> EngineConfig {
        self.inner.config
    }

    /// An eventfd that becomes readable when completions are waiting: register it in an epoll
    /// loop, together with [`IoCtx::wake_fd`] (wake-ups from other threads), and call
    /// [`IoCtx::run_once`] when either fires.
    ///
    /// The first call registers the eventfd with the ring; it fails only if the kernel refuses
    /// (then an error is logged and the fd never fires: use `block_on` instead).
    ///
    /// With [`EngineConfig::epoll_driven`] this is the wake eventfd: watch it alone.
    pub fn completion_fd(&self) -> RawFd {
        let fd = self.inner.ring_eventfd();
        if !self.inner.eventfd_registered.replace(true) {
            if let Err(e) = self.inner.ring.borrow().submitter().register_eventfd(fd) {
                tracing::error!("io_uring: cannot register the completion eventfd: {e}");
            }
            // Completions that arrived before registration would not have signalled it.
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our own eventfd.
            unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
        }
        fd
    }

    /// The eventfd other threads write to wake this one (also reachable via [`RemoteWaker`]).
    pub fn wake_fd(&self) -> RawFd {
        self.inner.queue.wake_fd()
    }

    /// A `Send` handle that wakes this thread.
    pub fn remote_waker(&self) -> RemoteWaker {
        RemoteWaker { queue: self.inner.queue.clone() }
    }

    /// This thread's pool of aligned buffers.
    pub fn pool(&self) -> &BufPool {
        &self.inner.pool
    }

    /// Operations submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.inner.ops.borrow().in_flight()
    }

    /// Spawned tasks that have not finished.
    pub fn live_tasks(&self) -> usize {
        self.inner.tasks.live()
    }

    /// Run `fut` on this thread alongside the others; its output arrives through the handle.
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let state = Rc::new(RefCell::new(JoinState { value: None, waiter: None }));
        let st = state.clone();
        self.inner.tasks.spawn(
            &self.inner.queue,
            Box::pin(async move {
                let v = fut.await;
                let waiter = {
                    let mut s = st.borrow_mut();
                    s.value = Some(v);
                    s.waiter.take()
                };
                if let Some(w) = waiter {
                    w.wake();
                }
            }),
        );
        JoinHandle { state }
    }

    /// Drive `fut` (and every spawned task) to completion on this thread, sleeping in the ring
    /// when nothing is ready. Not to be called from inside a task.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = pin!(fut);
        let waker = wake::task_waker(MAIN_TASK, &self.inner.queue);
        let mut cx = Context::from_waker(&waker);
        let mut main_ready = true;
        loop {
            if main_ready {
                main_ready = false;
                if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                    self.submit();
                    return v;
                }
            }
            main_ready |= self.inner.tasks.run_ready(&self.inner.queue);
            self.process_mailbox();
            self.reap();
            if main_ready || self.inner.queue.has_ready() {
                self.submit();
                continue;
            }
            if self.inner.config.epoll_driven {
                self.wait_on_eventfd();
            } else {
                self.submit_and_wait();
            }
            self.reap();
        }
    }

    /// Sleep until the eventfd an epoll-driven engine shares for completions and wake-ups
    /// fires (the ring has no wake poll to end a wait inside it), then post what completed.
    fn wait_on_eventfd(&self) {
        self.submit();
        if self.work_waiting() {
            return;
        }
        let mut pfd = libc::pollfd { fd: self.inner.ring_eventfd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: polls one live descriptor through a pollfd on our stack. EINTR just returns.
        unsafe { libc::poll(&mut pfd, 1, -1) };
        self.inner.queue.clear_signal();
        // Completions signal before they are posted (DEFER_TASKRUN): enter to post them.
        self.submit();
    }

    /// One non-blocking turn for an external event loop woken by [`IoCtx::completion_fd`]:
    /// consume the eventfd's signal, then as [`IoCtx::run_pending`]. Returns the number of
    /// completions handled.
    pub fn run_once(&self) -> usize {
        // A loop that also watches `wake_fd` (it must: with DEFER_TASKRUN the wake poll's
        // completion is posted only once this thread enters the kernel) sees it readable until
        // it is reset. Tasks woken from elsewhere are queued before the signal, so the turn
        // below runs them. An epoll-driven engine has the one eventfd for both.
        self.inner.queue.clear_signal();
        if let Some(fd) = &self.inner.completion_fd {
            let mut v: u64 = 0;
            // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd; EAGAIN is fine.
            unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        }
        self.run_pending()
    }

    /// One non-blocking turn without touching the completion eventfd (for a loop woken by
    /// something else, a guest's kick say): take completions, run ready tasks, submit what they
    /// queued. Returns the number of completions handled.
    ///
    /// The ring's eventfd notifications are off during the turn: with DEFER_TASKRUN the kernel
    /// signals once when a completion's work is queued and again when our own enter posts it,
    /// and the second would only wake the loop for nothing. Work that arrives while they are
    /// off raises the TASKRUN flag, checked after they are back on; if any is waiting it is
    /// taken in this turn.
    pub fn run_pending(&self) -> usize {
        let signalled = self.inner.eventfd_registered.get();
        if signalled {
            self.inner.ring.borrow_mut().completion().disable_eventfd();
        }
        let mut total = 0;
        for _ in 0..64 {
            self.process_mailbox();
            // With DEFER_TASKRUN, completions become CQEs only when we enter the kernel: submit
            // (which enters with GETEVENTS when the TASKRUN flag says work is pending) first.
            self.submit();
            let n = self.reap();
            total += n;
            self.inner.tasks.run_ready(&self.inner.queue);
            // Go round again while tasks queued SQEs: submitting them may complete some inline
            // (page-cache hits), and reaping those now saves a wake-up.
            let sq_drained = if self.inner.config.sq_polled() {
                // The kernel thread takes what tasks just queued, but only once woken if it
                // went to sleep: hand them over now (no syscall while it is awake).
                self.submit();
                true
            } else {
                self.inner.ring.borrow_mut().submission().is_empty()
            };
            let idle = n == 0 && !self.inner.queue.has_ready() && sq_drained;
            if !idle {
                continue;
            }
            if !signalled || !self.enable_eventfd_missed_work() {
                return total;
            }
            // Work arrived while notifications were off: take it now rather than by a wake-up.
            self.inner.ring.borrow_mut().completion().disable_eventfd();
        }
        // Out of rounds with work left: submit it and make sure the loop comes back.
        self.submit();
        if signalled {
            self.inner.ring.borrow_mut().completion().enable_eventfd();
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our own eventfd.
            unsafe { libc::write(self.inner.ring_eventfd(), (&one as *const u64).cast(), 8) };
        }
        total
    }

    /// True when a turn ([`IoCtx::run_pending`]) has something to do: completions on the ring,
    /// deferred completion work flagged by the kernel, tasks woken, SQEs queued, or a remote
    /// wake-up. Reads shared memory only (no syscall), for a loop that busy-polls between sleeps.
    pub fn work_waiting(&self) -> bool {
        if self.inner.queue.has_ready() {
            return true;
        }
        let sq_polled = self.inner.config.sq_polled();
        let mut ring = self.inner.ring.borrow_mut();
        let (_, sq, cq) = ring.split();
        // SQEs not yet taken are ours to submit, unless a kernel thread is awake to take them.
        let sq_pending = !sq.is_empty() && (!sq_polled || sq.need_wakeup());
        !cq.is_empty() || sq_pending || sq.taskrun() || sq.cq_overflow()
    }

    /// Turn the completion eventfd's notifications back on; true if completion work arrived
    /// while they were off (the TASKRUN flag, an overflow, or CQEs waiting), which then
    /// signalled nothing and must be taken by the caller.
    fn enable_eventfd_missed_work(&self) -> bool {
        let mut ring = self.inner.ring.borrow_mut();
        ring.completion().enable_eventfd();
        // Pairs with the kernel's flag update: read the flags after the enable is visible.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let (_, sq, cq) = ring.split();
        sq.taskrun() || sq.cq_overflow() || !cq.is_empty()
    }

    /// Submit queued SQEs to the kernel without waiting.
    ///
    /// Enters the kernel only when there is something to do: SQEs queued, deferred completion
    /// work flagged (TASKRUN), or an overflowed completion queue to flush. At queue depth 1 an
    /// idle enter is a third of the syscalls a request costs.
    pub fn submit(&self) {
        {
            let mut ring = self.inner.ring.borrow_mut();
            let sq = ring.submission();
            if sq.is_empty() && !sq.taskrun() && !sq.cq_overflow() {
                return;
            }
        }
        let ring = self.inner.ring.borrow();
        loop {
            match ring.submit() {
                Ok(_) => return,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) || e.raw_os_error() == Some(libc::EAGAIN) => {
                    // The completion queue is backed up: the caller reaps and submits again.
                    return;
                }
                Err(e) => {
                    tracing::error!("io_uring submit failed: {e}");
                    return;
                }
            }
        }
    }

    fn submit_and_wait(&self) {
        let ring = self.inner.ring.borrow();
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {}
            Err(e) => tracing::error!("io_uring submit_and_wait failed: {e}"),
        }
    }

    /// Take every completion off the ring and wake whoever awaits it.
    fn reap(&self) -> usize {
        let mut scratch = self.inner.cqe_scratch.borrow_mut();
        scratch.clear();
        {
            let mut ring = self.inner.ring.borrow_mut();
            scratch.extend(ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
        }
        let n = scratch.len();
        for &(ud, res, flags) in scratch.iter() {
            if ud == WAKE_UD {
                self.inner.queue.clear_signal();
                if !cqueue::more(flags) {
                    self.inner.wake_armed.set(false);
                }
                continue;
            }
            let done = self.inner.ops.borrow_mut().complete(ud as u32, res);
            match done {
                Completion::Wake(w) => {
                    if let Some(w) = w {
                        w.wake();
                    }
                }
                Completion::Freed(bufs, slot_waiter) => {
                    drop(bufs);
                    if let Some(w) = slot_waiter {
                        w.wake();
                    }
                }
                Completion::Unknown => tracing::warn!("io_uring: completion for unknown slot {ud}"),
            }
        }
        drop(scratch);
        if !self.inner.wake_armed.get() && !self.inner.config.epoll_driven {
            if let Err(e) = self.arm_wake_poll() {
                tracing::error!("io engine: cannot re-arm the wake poll: {e}");
            }
        }
        n
    }

    fn arm_wake_poll(&self) -> Result<()> {
        let sqe = opcode::PollAdd::new(types::Fd(self.inner.queue.wake_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(WAKE_UD);
        // SAFETY: a poll SQE references no memory, only the wake eventfd, which lives as long as
        // the ring (both are owned by Inner).
        unsafe { self.push_sqe(&sqe) };
        self.inner.wake_armed.set(true);
        Ok(())
    }

    /// Push one SQE, submitting first if the submission queue is full.
    ///
    /// # Safety
    ///
    /// Every buffer and iovec array `sqe` points to must stay valid until its completion.
    pub(crate) unsafe fn push_sqe(&self, sqe: &squeue::Entry) {
        debug_assert!(restrict::allowed(sqe), "an SQE the ring's restrictions refuse: add it to restrict::SQE_OPS");
        loop {
            {
                let mut ring = self.inner.ring.borrow_mut();
                // SAFETY: forwarded from the caller's guarantee.
                if unsafe { ring.submission().push(sqe) }.is_ok() {
                    return;
                }
            }
            // Wakes the kernel submission thread too, when the ring has one and it sleeps.
            self.submit();
            if self.inner.config.sq_polled() {
                // That thread empties the queue by itself: sleep until it has made room.
                let _ = self.inner.ring.borrow().submitter().squeue_wait();
            }
            // If the kernel could not take entries (CQ overflow), make room by reaping.
            self.reap();
        }
    }

    /// The registered-file target for `file` on this ring, registering it on first use.
    pub(crate) fn target(&self, file: &Arc<FileHandle>) -> ops::Target {
        if !self.inner.fixed_files {
            return ops::Target::Fd(file.fd());
        }
        let mut files = self.inner.files.borrow_mut();
        if let Some(slot) = files.lookup(file.id()) {
            return ops::Target::Fixed(slot);
        }
        let Some(slot) = files.take_free(file.id()) else { return ops::Target::Fd(file.fd()) };
        let ok = self.inner.ring.borrow().submitter().register_files_update(slot, &[file.fd()]).is_ok();
        if !ok {
            files.release(slot);
            return ops::Target::Fd(file.fd());
        }
        file.note_registered(&self.inner.mailbox, slot);
        ops::Target::Fixed(slot)
    }

    fn process_mailbox(&self) {
        process_mailbox_of(&self.inner);
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }
}

impl Inner {
    pub(crate) fn ops(&self) -> &RefCell<OpSlab> {
        &self.ops
    }

    /// The eventfd the ring raises on completions.
    fn ring_eventfd(&self) -> RawFd {
        self.completion_fd.as_ref().map_or(self.queue.wake_fd(), |fd| fd.as_raw_fd())
    }
}

fn process_mailbox_of(inner: &Inner) {
    let slots = std::mem::take(&mut *inner.mailbox.unregister.lock().unwrap_or_else(|p| p.into_inner()));
    if slots.is_empty() {
        return;
    }
    let (Ok(ring), Ok(mut files)) = (inner.ring.try_borrow(), inner.files.try_borrow_mut()) else {
        // Busy right now: put them back for the next turn.
        inner.mailbox.unregister.lock().unwrap_or_else(|p| p.into_inner()).extend(slots);
        return;
    };
    for slot in slots {
        if let Err(e) = ring.submitter().register_files_update(slot, &[-1]) {
            tracing::warn!("io_uring: cannot unregister file slot {slot}: {e}");
        }
        files.release(slot);
    }
}

/// Called when a file registered on a ring of this thread is dropped: unregister it at once, so
/// its open file description (and OFD lock) goes away with the device.
pub(crate) fn unregister_now_on_this_thread(mailbox: &Arc<RingMailbox>) {
    THREAD_ENGINES.with(|engines| {
        let engines = engines.borrow();
        for inner in engines.iter().filter_map(|w| w.upgrade()) {
            if Arc::ptr_eq(&inner.mailbox, mailbox) {
                process_mailbox_of(&inner);
            }
        }
    });
}

/// Create the ring, disabled (IORING_SETUP_R_DISABLED) so that it can be restricted before it
/// runs anything; `true` beside it when it is. A kernel without disabled rings (before 5.10)
/// gets an unrestricted one, said once in the log.
fn build_ring(entries: u32, sq_poll_idle_ms: u32) -> Result<(IoUring, bool)> {
    match build_ring_with(entries, sq_poll_idle_ms, true) {
        Ok(r) => Ok((r, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let ring = build_ring_with(entries, sq_poll_idle_ms, false).map_err(probe::explain_setup_error)?;
            restrict::warn_unrestricted(&e);
            Ok((ring, false))
        }
        Err(e) => Err(probe::explain_setup_error(e)),
    }
}

fn build_ring_with(entries: u32, sq_poll_idle_ms: u32, disabled: bool) -> std::io::Result<IoUring> {
    let builder = || {
        let mut b = IoUring::builder();
        b.setup_cqsize(entries * 2);
        if disabled {
            b.setup_r_disabled();
        }
        b
    };
    if sq_poll_idle_ms > 0 {
        // DEFER_TASKRUN needs the submitting task to run completion work itself, which a
        // kernel submission thread rules out: such a ring is a plain one plus SQPOLL.
        return builder().setup_sqpoll(sq_poll_idle_ms).build(entries);
    }
    match builder().setup_single_issuer().setup_defer_taskrun().setup_taskrun_flag().build(entries) {
        Ok(r) => Ok(r),
        // Older kernels (before 6.1) lack SINGLE_ISSUER / DEFER_TASKRUN: fall back to a plain ring.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => builder().build(entries),
        Err(e) => Err(e),
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The kernel may still be writing into buffers held by in-flight slots: wait for every
        // completion before the slab (and the memory it keeps alive) goes away.
        let mut spins = 0u32;
        while self.ops.borrow().outstanding() > 0 {
            {
                let ring = self.ring.borrow();
                let _ = ring.submit_and_wait(1);
            }
            let completions: Vec<(u64, i32)> =
                self.ring.borrow_mut().completion().map(|c| (c.user_data(), c.result())).collect();
            for (ud, res) in completions {
                if ud != WAKE_UD {
                    let mut ops = self.ops.borrow_mut();
                    if let Completion::Wake(_) = ops.complete(ud as u32, res) {
                        drop(ops.release(ud as u32));
                    }
                }
            }
            spins += 1;
            if spins > 1_000_000 {
                tracing::error!("io engine: gave up draining in-flight operations");
                break;
            }
        }
        // Release registered files now: the kernel tears a ring down asynchronously after its fd
        // is closed (even after the process exits), and until then the registrations keep the
        // files open — and their OFD locks held, so `qemu-img` right after a clean daemon exit
        // would find the image still locked.
        if self.fixed_files {
            let _ = self.ring.borrow().submitter().unregister_files();
        }
    }
}
