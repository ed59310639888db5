//! The queue worker: runs on a vhost-user-backend worker thread (one per queue), owns that
//! thread's io engine, pops requests, runs them as tasks so many are in flight, and puts
//! completions in the used ring in batches, notifying the guest only when EVENT_IDX says so.
//!
//! Data path: kick → pop chains → map descriptors (zero copy) → validate → spawn a task on the
//! thread's `IoCtx` → completion eventfd (in the same epoll set) → `run_once` → used ring.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{EngineConfig, IoCtx, Keepalive};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{Error as QueueError, QueueOwnedT, QueueT};
use vm_memory::GuestAddressSpace;

use super::backend::{completion_event, first_queue_of_thread, BlkBackend, GuestMemAtomic};
use super::chain::{map_chain, GuestMem};
use super::export::Export;
use super::poll_window::PollWindow;
use super::request::{execute, ExportView, OpClass, Request};
use super::stats::LocalStats;
use super::virtio_blk::status;

thread_local! {
    /// This thread's worker, created on its first event (an `IoCtx` must be made on its thread).
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

/// Longest a worker stays in its polling loop while work keeps coming, before it goes back to
/// vhost-user-backend's epoll loop (which also carries the exit and vring-enable events).
const MAX_POLL_STRETCH: Duration = Duration::from_millis(2);

/// Most requests a worker pops before it runs the engine and publishes what finished. Reads that
/// hit the page cache complete inside the submission, so without a cap a deep queue is served
/// in one lump: the frontend learns of the first completion only after the last one, sleeps
/// meanwhile, and the worker then waits for it to wake and refill. Publishing every few
/// requests lets the frontend refill on its own CPU while the worker goes on (ext4 4 KiB QD32
/// reads, quiet machine, median of 5 alternating rounds: 8 gave 1.17x the uncapped IOPS).
const PIPELINE_BATCH: usize = 8;

/// Whether popping requests ends by turning guest notifications (kicks) back on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rearm {
    /// Turn them on and look once more (the worker is about to sleep until a kick).
    Yes,
    /// Leave them off: the worker is polling the avail ring itself.
    No,
}

/// Per-thread state: the io engine and the queues this thread serves.
struct Worker {
    io: IoCtx,
    mem: GuestMemAtomic,
    queues: Vec<Rc<QueueRt>>,
    /// How long to poll after work, adapted to how soon work follows work.
    poll: RefCell<PollWindow>,
}

/// One queue's state on its worker thread.
struct QueueRt {
    /// Global queue index.
    index: usize,
    /// The export the queue belongs to (held here so a request's task clones no `Arc`).
    export: Arc<Export>,
    /// Statistics of finished requests, added to the export's at each flush of the used ring.
    stats: RefCell<LocalStats>,
    /// Completed requests (head, used length) not yet in the used ring.
    done: RefCell<Vec<(u16, u32)>>,
    /// Popping stopped with requests maybe left on the ring: the queue had `queue_size` requests
    /// in flight, or the worker took a queue's worth in one go; `turn` resumes it.
    throttled: Cell<bool>,
}

/// True when the frontend enabled this ring and set it up (only such rings are polled; a kick
/// on any other is ignored by vhost-user-backend too).
fn queue_live(vring: &VringRwLock) -> bool {
    let state = vring.get_ref();
    state.is_enabled() && state.get_queue().ready()
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
        let local = device_event as usize;
        let mut work = 0;
        if local < vrings.len() {
            work += w.process_queue(backend, local, &vrings[local], Rearm::Yes);
        }
        // Only the completion eventfd's own event needs its counter read; a kick's turn leaves it.
        work += w.turn(backend, vrings, device_event == completion_event(backend.queues.len()));
        // Poll only after real work: a wake-up that found nothing (a kick left over from an
        // earlier polling stretch, say) goes straight back to sleep.
        if work > 0 || w.io.in_flight() > 0 {
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
            ..EngineConfig::default()
        };
        let io = IoCtx::with_config(config).map_err(|e| e.to_string())?;
        // Completions, and tasks woken from other threads (a stripe lock released by a rebuild,
        // a shared pool's commit): with DEFER_TASKRUN the ring posts the latter only when this
        // thread enters it, so the wake eventfd is watched directly.
        for fd in [io.completion_fd(), io.wake_fd()] {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: u64::from(completion_event(backend.queues.len())),
            };
            // SAFETY: epoll_ctl on the worker's live epoll fd (its handler outlives this thread's
            // work) with a valid event struct; both eventfds live as long as `io`.
            let rc = unsafe { libc::epoll_ctl(epoll_fd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
            if rc < 0 {
                return Err(format!("cannot add the engine's eventfds to epoll: {}", std::io::Error::last_os_error()));
            }
        }
        // vhost-user-backend gives thread `t` the queues of `queue_masks()[t]`, in order.
        let first = first_queue_of_thread(thread, usize::from(backend.export.settings.queues_per_thread));
        let queues = (0..nvrings)
            .map(|i| {
                Rc::new(QueueRt {
                    index: first + i,
                    export: backend.export.clone(),
                    stats: RefCell::new(LocalStats::default()),
                    done: RefCell::new(Vec::new()),
                    throttled: Cell::new(false),
                })
            })
            .collect();
        tracing::debug!(export = %backend.export.name, queue = thread, "queue worker started");
        let poll = RefCell::new(PollWindow::new(Duration::from_micros(u64::from(backend.export.settings.poll_us))));
        Ok(Worker { io, mem, queues, poll })
    }

    /// Run completions and put them in the used rings; resume throttled queues. `woken` says
    /// the completion eventfd fired (its signal is consumed on the first pass). Returns how many
    /// completions and resumed requests it handled.
    fn turn(&self, backend: &BlkBackend, vrings: &[VringRwLock], woken: bool) -> usize {
        let mut work = 0;
        for pass in 0..64 {
            work += if woken && pass == 0 { self.io.run_once() } else { self.io.run_pending() };
            let mut resumed = false;
            for (i, q) in self.queues.iter().enumerate() {
                self.flush_used(backend, q, &vrings[i]);
                if q.throttled.get() && self.room(backend, q) > 0 {
                    q.throttled.set(false);
                    let n = self.process_queue(backend, i, &vrings[i], Rearm::Yes);
                    work += n;
                    resumed |= n > 0;
                }
            }
            if !resumed {
                return work;
            }
        }
        // Still resuming after all those passes: come back through the event loop (a wake-up
        // of our own) rather than sleep with requests left on a ring whose kicks are off.
        if self.queues.iter().any(|q| q.throttled.get() && self.room(backend, q) > 0) {
            self.io.remote_waker().wake();
        }
        work
    }

    fn room(&self, backend: &BlkBackend, q: &QueueRt) -> usize {
        let cap = backend.export.settings.queue_size as usize;
        cap.saturating_sub(backend.queues[q.index].in_flight.load(Ordering::Acquire))
    }

    /// Busy-poll this thread's queues and ring after a turn, for up to the polling window (at
    /// most `poll-us`, adapted by [`PollWindow`]) after the last request or completion, and for
    /// [`MAX_POLL_STRETCH`] (or two windows) at most in all, so that a request that arrives soon
    /// is taken without a kick and a completion without a wake-up. Guest kicks stay off while
    /// polling (the avail event index is not advanced, or NO_NOTIFY stays set); they
    /// are turned back on, and the rings looked at once more, before the thread sleeps.
    ///
    /// On a QD1 stream this takes the daemon's wake-up (epoll, kick read, scheduler) out of every
    /// request, at the price of a core spinning while requests keep coming; `poll-us=0` turns it
    /// off. cloud-hypervisor's vhost-user-block and SPDK poll the same way.
    fn poll(&self, backend: &BlkBackend, vrings: &[VringRwLock]) {
        let window = self.poll.borrow().current();
        if window.is_zero() {
            return;
        }
        let start = Instant::now();
        let stretch = MAX_POLL_STRETCH.max(window * 2);
        let mut last_work = start;
        let mut polled = false;
        while !backend.stopping() {
            let mut busy = false;
            if self.io.work_waiting() {
                self.turn(backend, vrings, false);
                busy = true;
            }
            for (i, vring) in vrings.iter().enumerate() {
                if queue_live(vring) {
                    polled = true;
                    busy |= self.process_queue(backend, i, vring, Rearm::No) > 0;
                }
            }
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
        if polled {
            // Kicks back on before sleeping; anything that slipped in meanwhile is taken now. The
            // guest's kick for the first request polled above is still in its eventfd and wakes
            // the thread once for nothing: it is not read here, because vhost-user-backend may
            // already hold it as a ready event and would then block reading an empty eventfd.
            for (i, vring) in vrings.iter().enumerate() {
                if queue_live(vring) {
                    self.process_queue(backend, i, vring, Rearm::Yes);
                }
            }
            self.turn(backend, vrings, false);
        }
    }

    /// Pop every available chain (up to the in-flight cap) and start it, [`PIPELINE_BATCH`] at
    /// a time: between batches the engine runs (page-cache hits complete inside the submission)
    /// and finished requests go to the used ring, so the frontend refills the queue while this
    /// thread works on the rest. Returns how many it started. With [`Rearm::Yes`] guest
    /// notifications end up on (checked race-free against new requests); with [`Rearm::No`]
    /// they are left as they are.
    fn process_queue(&self, backend: &BlkBackend, local: usize, vring: &VringRwLock, rearm: Rearm) -> usize {
        let mut total = 0;
        let fair_share = usize::from(backend.export.settings.queue_size);
        loop {
            let (started, more) = self.process_batch(backend, local, vring, rearm);
            total += started;
            if !more {
                return total;
            }
            if total >= fair_share {
                // A frontend that refills as fast as this thread completes would keep it here
                // for ever: after a queue's worth, come back later so the thread's other queues
                // get their turn (the poll loop comes back by itself; otherwise `turn` resumes
                // the queue as a throttled one).
                if rearm == Rearm::Yes {
                    self.queues[local].throttled.set(true);
                }
                return total;
            }
            self.io.run_pending();
            self.flush_used(backend, &self.queues[local], vring);
        }
    }

    /// Pop up to [`PIPELINE_BATCH`] chains and start them. Returns how many, and whether more
    /// may be waiting (the batch filled up before the ring ran dry or the in-flight cap hit).
    fn process_batch(&self, backend: &BlkBackend, local: usize, vring: &VringRwLock, rearm: Rearm) -> (usize, bool) {
        let q = &self.queues[local];
        let shared = &backend.queues[q.index];
        if backend.stopping() || shared.broken.load(Ordering::Acquire) {
            return (0, false);
        }
        let export = &backend.export;
        let mut more = false;
        let ring_mem = self.mem.memory();
        let mut heads: Vec<u16> = Vec::new();
        let (table, size) = {
            let mut state = vring.get_mut();
            let queue = state.get_queue_mut();
            let (table, size) = (queue.desc_table(), queue.size());
            loop {
                let room = self.room(backend, q).saturating_sub(heads.len());
                if room == 0 {
                    q.throttled.set(true);
                    break;
                }
                if heads.len() >= PIPELINE_BATCH {
                    more = true;
                    break;
                }
                let room = room.min(PIPELINE_BATCH - heads.len());
                if let Err(e) = queue.disable_notification(&*ring_mem) {
                    tracing::debug!(export = %export.name, queue = q.index, "cannot disable notifications: {e}");
                }
                match queue.iter(&*ring_mem) {
                    Ok(iter) => heads.extend(iter.take(room).map(|c| c.head_index())),
                    Err(QueueError::InvalidAvailRingIndex) => {
                        tracing::error!(
                            export = %export.name,
                            queue = q.index,
                            "the guest moved the avail index by more than the queue size: queue stopped until it is reset"
                        );
                        shared.broken.store(true, Ordering::Release);
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(export = %export.name, queue = q.index, "queue not usable: {e}");
                        break;
                    }
                }
                if self.room(backend, q) <= heads.len() {
                    continue;
                }
                if rearm == Rearm::No {
                    break;
                }
                match queue.enable_notification(&*ring_mem) {
                    Ok(true) => continue,
                    _ => break,
                }
            }
            // Counted while the ring's lock is held: GET_VRING_BASE marks the ring stopped under
            // that lock and then waits for the count to drain, so it never misses these.
            shared.in_flight.fetch_add(heads.len(), Ordering::AcqRel);
            (table, size)
        };
        drop(ring_mem);
        if heads.is_empty() {
            return (0, false);
        }
        // Map buffers with a snapshot taken after the avail index was read: a frontend adds a
        // memory region (and waits for our ack) before it publishes requests that use it, so this
        // snapshot holds every region those requests name.
        let snap: Arc<GuestMem> = self.mem.memory().into_inner();
        let keep: Keepalive = Rc::new(snap.clone());
        let max_descs = export.geometry.seg_max + 2;
        let view = ExportView { geometry: &export.geometry, writeback: backend.writeback(), serial: &export.serial };
        // One clock read for the batch: its requests start within a microsecond or two.
        let started = Instant::now();
        export.stats.started_many(heads.len());
        for &head in &heads {
            match map_chain(&snap, &keep, table, size, head, max_descs) {
                Ok(chain) => self.start(q, Request::parse(chain, view), started),
                Err(e) => {
                    tracing::warn!(export = %export.name, queue = q.index, head, "malformed descriptor chain: {e}");
                    q.stats.borrow_mut().record(OpClass::Other, 0, false, Duration::ZERO);
                    q.done.borrow_mut().push((head, 0));
                }
            }
        }
        (heads.len(), more)
    }

    /// Spawn `req` (popped at `started`) as a task on this thread's engine.
    fn start(&self, q: &Rc<QueueRt>, req: Request, started: Instant) {
        let io = self.io.clone();
        let q = q.clone();
        self.io.spawn(async move {
            let export = &q.export;
            let st = execute(&*export.dev, io, &req.op, export.serial, &export.name).await;
            let len = req.complete(st);
            q.stats.borrow_mut().record(req.op.class(), req.op.data_bytes(), st == status::OK, started.elapsed());
            q.done.borrow_mut().push((req.head, len));
        });
    }

    /// Put finished requests in the used ring and notify the guest if it asked for it.
    fn flush_used(&self, backend: &BlkBackend, q: &QueueRt, vring: &VringRwLock) {
        let done = std::mem::take(&mut *q.done.borrow_mut());
        if done.is_empty() {
            return;
        }
        // Counted before the guest can see the answers (a frontend that reads the statistics
        // after its request completed finds it there).
        q.export.stats.absorb(&mut q.stats.borrow_mut());
        let mem = self.mem.memory();
        {
            let mut state = vring.get_mut();
            let queue = state.get_queue_mut();
            for &(head, len) in &done {
                if let Err(e) = queue.add_used(&*mem, head, len) {
                    tracing::warn!(export = %backend.export.name, queue = q.index, head, "cannot add to the used ring: {e}");
                }
            }
            let notify = queue.needs_notification(&*mem).unwrap_or(true);
            if notify {
                if let Err(e) = state.signal_used_queue() {
                    tracing::debug!(export = %backend.export.name, queue = q.index, "cannot notify the guest: {e}");
                }
            }
        }
        backend.retire(q.index, done.len());
        // Give the allocation back for the next batch.
        let mut done = done;
        done.clear();
        let mut slot = q.done.borrow_mut();
        if slot.is_empty() {
            *slot = done;
        }
    }
}
