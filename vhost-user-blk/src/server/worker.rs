//! The queue worker: runs on a worker thread of the connection (`protocol/workers.rs`; one per
//! queue, or per `queues-per-thread` queues), owns that thread's io engine, and serves its
//! queues in turns.
//!
//! A turn ([`Worker::turn`]) is a request's whole path: pop a batch of chains from each ring it
//! looks at, start each request as a task on the thread's `IoCtx` (descriptors mapped without
//! copying, then validated), drive the engine (page-cache hits complete inside the submission),
//! publish what finished to the used rings (notifying the guest when EVENT_IDX says so), and go
//! round again while a ring has more, within one budget ([`TURN_BUDGET`]). The epoll event
//! handler (a kick, or the engine's completion or wake eventfd) runs one turn per event; the
//! polling loop that follows work runs one per pass.

mod queue;
#[cfg(debug_assertions)]
mod test_hold;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{EngineConfig, IoCtx, Keepalive};
use vhost_user_backend::VringRwLock;
use vm_memory::GuestAddressSpace;

use super::backend::{completion_event, first_queue_of_thread, BlkBackend, GuestMemAtomic};
use super::chain::{map_chain, GuestMem};
use super::poll_window::PollWindow;
use super::request::{execute, ExportView, OpClass, Request};
use super::virtio_blk::status;
use queue::{queue_live, Batch, QueueRt, Rearm};

thread_local! {
    /// This thread's worker, created on its first event (an `IoCtx` must be made on its thread).
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

/// Most requests a turn pops, over all the thread's rings, before it stops going round: a
/// frontend that refills as fast as the worker completes would otherwise keep the thread in one
/// turn for ever, and kicks of its other rings, exit and vring-enable events wait until a turn
/// ends. A turn that stops with requests left comes back by a wake-up of its own (or the polling
/// loop's next pass). The largest queue's worth, so a turn ends about as often as a polling
/// stretch ([`MAX_POLL_STRETCH`]) on a fast device.
const TURN_BUDGET: usize = 1024;

/// Longest a worker stays in its polling loop while work keeps coming, before it goes back to
/// the thread's epoll loop (which also carries the exit and vring-enable events).
const MAX_POLL_STRETCH: Duration = Duration::from_millis(2);

/// Why a turn runs: which rings it pops first, and how it leaves the guest's kicks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wake {
    /// The guest kicked the thread's ring with this local index. Kicks end up on.
    Kick(usize),
    /// The engine's completion or wake eventfd fired: its signal is consumed. Kicks end up on.
    Engine,
    /// A pass of the polling loop: every live ring is popped, kicks stay off.
    Poll,
    /// The end of a polling stretch: every live ring is popped with kicks back on.
    Settle,
}

/// Per-thread state: the io engine and the queues this thread serves.
struct Worker {
    io: IoCtx,
    mem: GuestMemAtomic,
    queues: Vec<Rc<QueueRt>>,
    /// How long to poll after work, adapted to how soon work follows work.
    poll: RefCell<PollWindow>,
}

/// Entry point from `VhostUserBackend::handle_event`.
pub fn handle_event(backend: &BlkBackend, device_event: u16, vrings: &[VringRwLock], thread: usize) {
    WORKER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            match Worker::new(backend, vrings.len(), thread) {
                Ok(w) => *slot = Some(w),
                Err(e) => {
                    tracing::error!(export = %backend.export.name, queue = thread, "cannot start the queue worker: {e}");
                    return;
                }
            }
        }
        let Some(w) = slot.as_ref() else { return };
        w.poll.borrow_mut().woke(Instant::now());
        let local = usize::from(device_event);
        // Our only other events are the engine's eventfds (`completion_event`).
        let wake = if local < vrings.len() { Wake::Kick(local) } else { Wake::Engine };
        let busy = w.turn(backend, vrings, wake);
        // Poll only after real work: a wake-up that found nothing (a kick left over from an
        // earlier polling stretch, say) goes straight back to sleep.
        if busy || w.io.in_flight() > 0 {
            w.poll(backend, vrings);
        }
        w.poll.borrow_mut().sleeping(Instant::now());
    });
}

impl Worker {
    fn new(backend: &BlkBackend, nvrings: usize, thread: usize) -> Result<Worker, String> {
        let (mem, epoll_fd) = backend.worker_setup(thread).ok_or("no connection state for this thread")?;
        let qsize = u32::from(backend.export.settings.queue_size);
        let config = EngineConfig {
            sq_entries: qsize.max(64),
            max_in_flight: qsize * 4,
            sq_poll_idle_ms: backend.export.settings.sqpoll_ms,
            epoll_driven: true,
            ..EngineConfig::default()
        };
        let io = IoCtx::with_config(config).map_err(|e| e.to_string())?;
        // One eventfd carries the ring's completions and the tasks woken from other threads
        // (librbd's completions, a stripe lock released by a rebuild, a shared pool's commit).
        let mut ev =
            libc::epoll_event { events: libc::EPOLLIN as u32, u64: u64::from(completion_event(backend.queues.len())) };
        // SAFETY: epoll_ctl on the worker's live epoll fd (its handler outlives this thread's
        // work) with a valid event struct; the eventfd lives as long as `io`.
        let rc = unsafe { libc::epoll_ctl(epoll_fd, libc::EPOLL_CTL_ADD, io.completion_fd(), &mut ev) };
        if rc < 0 {
            return Err(format!("cannot add the engine's eventfd to epoll: {}", std::io::Error::last_os_error()));
        }
        // `protocol/workers.rs` gives thread `t` the queues of `queue_masks()[t]`, in order.
        let first = first_queue_of_thread(thread, usize::from(backend.export.settings.queues_per_thread));
        let queues = (0..nvrings).map(|i| Rc::new(QueueRt::new(first + i, backend.export.clone()))).collect();
        tracing::debug!(export = %backend.export.name, queue = thread, "queue worker started");
        let poll = RefCell::new(PollWindow::new(Duration::from_micros(u64::from(
            backend.export.settings.poll_us_for(&*backend.export.dev),
        ))));
        Ok(Worker { io, mem, queues, poll })
    }

    /// One turn: pop, start, drive, publish, and round again while a ring has more. Each round
    /// pops at most [`PIPELINE_BATCH`](queue::PIPELINE_BATCH) requests from each ring it looks
    /// at (the one kicked, every live one when polling, and those whose popping stopped with
    /// more waiting), starts them, runs the engine, and puts what finished in the used rings,
    /// so the frontend refills while the worker goes on. A turn stops going round once it has
    /// popped [`TURN_BUDGET`] requests; a ring left with requests and its kicks off is then
    /// resumed by a wake-up of the worker's own. Returns whether it did any work (popped
    /// requests, took completions, or found the engine with work waiting).
    fn turn(&self, backend: &BlkBackend, vrings: &[VringRwLock], wake: Wake) -> bool {
        let rearm = if wake == Wake::Poll { Rearm::No } else { Rearm::Yes };
        let mut spent = 0;
        let mut busy = false;
        let mut first = true;
        loop {
            // Pop and start.
            let mut popped = 0;
            for (i, (q, vring)) in self.queues.iter().zip(vrings).enumerate() {
                let look = q.resume.get()
                    || (first
                        && match wake {
                            Wake::Kick(k) => k == i,
                            Wake::Engine => false,
                            Wake::Poll | Wake::Settle => queue_live(vring),
                        });
                if !look {
                    continue;
                }
                if let Some(batch) = q.pop(backend, vring, &self.mem, rearm) {
                    popped += batch.heads().len();
                    self.start_batch(backend, q, &batch);
                }
            }
            // Drive. A turn runs the engine at least once, as it may be the engine's own event
            // and other threads hand work over to it; a polling pass only when something is
            // waiting, which is read from shared memory.
            let forced = first && wake != Wake::Poll;
            let waiting = popped == 0 && !forced && self.io.work_waiting();
            if popped > 0 || forced || waiting {
                let completed = if first && wake == Wake::Engine { self.io.run_once() } else { self.io.run_pending() };
                busy |= completed > 0 || waiting;
            }
            busy |= popped > 0;
            // Publish.
            for (q, vring) in self.queues.iter().zip(vrings) {
                q.flush_used(backend, vring, &self.mem);
            }
            first = false;
            // Again? Only for a ring that stopped with more waiting and now has room; a ring
            // whose room ran out is popped again by the turn that takes its completions.
            spent += popped.max(1);
            if !self.queues.iter().any(|q| q.resume.get() && q.room(backend) > 0) {
                return busy;
            }
            if spent >= TURN_BUDGET {
                // Kicks are off on that ring: come back through the event loop rather than
                // sleep with requests left on it (a polling pass is followed by the next).
                if rearm == Rearm::Yes {
                    self.io.remote_waker().wake();
                }
                return busy;
            }
        }
    }

    /// Busy-poll this thread's queues and ring after a turn, for up to the polling window (at
    /// most `poll-us`, adapted by [`PollWindow`]) after the last request or completion, and for
    /// [`MAX_POLL_STRETCH`] (or two windows) at most in all, so that a request that arrives soon
    /// is taken without a kick and a completion without a wake-up. Guest kicks stay off while
    /// polling (the avail event index is not advanced, or NO_NOTIFY stays set); the last turn
    /// turns them back on, and looks at the rings once more, before the thread sleeps.
    ///
    /// This takes the daemon's wake-up (epoll, kick read, scheduler) out of every request of a
    /// QD1 stream, at the price of a core spinning while requests keep coming; `poll-us=0` turns
    /// it off. cloud-hypervisor's vhost-user-block and SPDK poll the same way.
    fn poll(&self, backend: &BlkBackend, vrings: &[VringRwLock]) {
        let window = self.poll.borrow().current();
        if window.is_zero() {
            return;
        }
        let start = Instant::now();
        let stretch = MAX_POLL_STRETCH.max(window * 2);
        let mut last_work = start;
        while !backend.stopping() {
            let busy = self.turn(backend, vrings, Wake::Poll);
            let now = Instant::now();
            if busy {
                last_work = now;
            } else if now.duration_since(last_work) >= window {
                break;
            } else {
                // Yield rather than spin: on a machine with more runnable threads than CPUs
                // (the guest's vCPU, the client, io-wq workers) a pure spin would take the CPU
                // from whoever is about to produce the next request, and polling would only
                // delay it. With nothing else runnable this returns at once.
                std::thread::yield_now();
            }
            if now.duration_since(start) >= stretch {
                break;
            }
        }
        // Kicks back on before sleeping; anything that slipped in meanwhile is taken now. The
        // guest's kick for the first request polled above is still in its eventfd and wakes
        // the thread once for nothing: it is not read here, because the epoll loop may
        // already hold it as a ready event and would then block reading an empty eventfd.
        self.turn(backend, vrings, Wake::Settle);
    }

    /// Map, validate and start the requests of `batch`, popped from `q`'s ring.
    fn start_batch(&self, backend: &BlkBackend, q: &Rc<QueueRt>, batch: &Batch) {
        let export = &backend.export;
        // Map buffers with a snapshot taken after the avail index was read: a frontend adds a
        // memory region (and waits for our ack) before it publishes requests that use it, so this
        // snapshot holds every region those requests name.
        let snap: Arc<GuestMem> = self.mem.memory().into_inner();
        let keep: Keepalive = Rc::new(snap.clone());
        let max_descs = export.geometry.seg_max + 2;
        let geometry = export.geometry_now();
        let view = ExportView { geometry: &geometry, writeback: backend.writeback() };
        // One clock read for the batch: its requests start within a microsecond or two.
        let started = Instant::now();
        export.stats.started_many(batch.heads().len());
        for &head in batch.heads() {
            match map_chain(&snap, &keep, batch.table, batch.size, head, max_descs) {
                Ok(chain) => self.start(q, Request::parse(chain, view), started),
                Err(e) => {
                    tracing::warn!(export = %export.name, queue = q.index, head, "malformed descriptor chain: {e}");
                    q.stats.borrow_mut().record(OpClass::Other, 0, false, Duration::ZERO);
                    q.done.borrow_mut().push((head, 0));
                }
            }
        }
    }

    /// Spawn `req` (popped at `started`) as a task on this thread's engine.
    fn start(&self, q: &Rc<QueueRt>, req: Request, started: Instant) {
        #[cfg(debug_assertions)]
        if test_hold::holds(&req.op) {
            return;
        }
        let io = self.io.clone();
        let q = q.clone();
        self.io.spawn(async move {
            let export = &q.export;
            if export.qos.on() {
                // Not boxed: the task is allocated anyway, and a second allocation per request
                // showed in the cost of limits that do not bite (docs/server.md).
                super::qos::wait_turn(export, req.op.class(), req.op.data_bytes(), started).await;
            }
            let st = execute(&*export.dev, io, &req.op, export.serial, &export.name).await;
            let len = req.complete(st);
            q.stats.borrow_mut().record(req.op.class(), req.op.data_bytes(), st == status::OK, started.elapsed());
            q.done.borrow_mut().push((req.head, len));
        });
    }
}
