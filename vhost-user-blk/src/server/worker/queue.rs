//! One queue on its worker thread, the two places a turn touches the guest's ring: popping a
//! batch of chains from the avail ring, and putting finished requests in the used ring.

use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{Error as QueueError, QueueOwnedT, QueueT};
use vm_memory::GuestAddressSpace;

use crate::server::backend::{BlkBackend, GuestMemAtomic};
use crate::server::export::Export;
use crate::server::protocol::inflight::QueueTracker;
use crate::server::stats::LocalStats;

/// Most requests popped from one ring before the worker drives its engine and publishes what
/// finished. Reads that hit the page cache complete inside the submission, so without a cap a
/// deep queue is served in one lump: the frontend learns of the first completion only after
/// the last one, sleeps meanwhile, and the worker then waits for it to wake and refill.
/// Publishing every few requests lets the frontend refill on its own CPU while the worker goes
/// on (docs/server.md, "Data path", has the measurement behind 8).
pub(super) const PIPELINE_BATCH: usize = 8;

/// Whether popping ends by turning guest notifications (kicks) back on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Rearm {
    /// Turn them on and look once more (the worker goes to sleep until a kick after the turn).
    Yes,
    /// Leave them off: the worker is polling the avail ring itself.
    No,
}

/// The heads popped from one ring in one go, and where their descriptors are.
pub(super) struct Batch {
    heads: [u16; PIPELINE_BATCH],
    len: usize,
    /// Guest address of the ring's descriptor table.
    pub table: u64,
    /// The ring's size (a head at or above it is refused when mapped).
    pub size: u16,
}

impl Batch {
    /// The heads, in ring order.
    pub fn heads(&self) -> &[u16] {
        &self.heads[..self.len]
    }
}

/// One queue's state on its worker thread.
pub(super) struct QueueRt {
    /// Global queue index.
    pub index: usize,
    /// The export the queue belongs to (held here so a request's task clones no `Arc`).
    pub export: Arc<Export>,
    /// Statistics of finished requests, added to the export's at each flush of the used ring.
    pub stats: RefCell<LocalStats>,
    /// Completed requests (head, used length) not yet in the used ring.
    pub done: RefCell<Vec<(u16, u32)>>,
    /// Popping stopped with kicks off and requests maybe left on the ring (a full batch, or
    /// `queue-size` requests in flight): the next turn pops this ring without a kick.
    pub resume: Cell<bool>,
    /// The queue's part of the in-flight region, when the frontend set one up.
    pub tracker: RefCell<Option<QueueTracker>>,
}

/// True when the frontend enabled this ring and set it up (only such rings are polled; a kick
/// on any other is ignored by the epoll loop too).
pub(super) fn queue_live(vring: &VringRwLock) -> bool {
    let state = vring.get_ref();
    state.is_enabled() && state.get_queue().ready()
}

impl QueueRt {
    /// A queue's state, nothing popped yet.
    pub fn new(index: usize, export: Arc<Export>) -> QueueRt {
        QueueRt {
            index,
            export,
            stats: RefCell::new(LocalStats::default()),
            done: RefCell::new(Vec::new()),
            resume: Cell::new(false),
            tracker: RefCell::new(None),
        }
    }

    /// How many more requests this queue may have in flight (at most `queue-size` at a time).
    pub fn room(&self, backend: &BlkBackend) -> usize {
        let cap = usize::from(backend.export.settings.queue_size);
        cap.saturating_sub(backend.queues[self.index].in_flight.load(Ordering::Acquire))
    }

    /// Pop up to [`PIPELINE_BATCH`] chains, counted in flight. Guest notifications (kicks) are
    /// off while it pops. When it stops with more maybe waiting (the batch filled up, or the
    /// queue has `queue-size` requests in flight) they stay off and [`QueueRt::resume`] is set;
    /// when the ring ran dry, [`Rearm::Yes`] turns them back on (checked race-free against new
    /// requests) and [`Rearm::No`] leaves them off. None when nothing was popped.
    pub fn pop(&self, backend: &BlkBackend, vring: &VringRwLock, mem: &GuestMemAtomic, rearm: Rearm) -> Option<Batch> {
        self.resume.set(false);
        let shared = &backend.queues[self.index];
        if backend.stopping() || shared.broken.load(Ordering::Acquire) {
            return None;
        }
        if self.room(backend) == 0 {
            // Completions will make room; their turn pops the ring again.
            self.resume.set(true);
            return None;
        }
        if shared.tracker_ready.load(Ordering::Acquire) {
            self.take_tracker(backend);
        }
        let export = &backend.export;
        let ring_mem = mem.memory();
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        let mut batch = Batch { heads: [0; PIPELINE_BATCH], len: 0, table: queue.desc_table(), size: queue.size() };
        let mut tracker = self.tracker.borrow_mut();
        if let Some(t) = tracker.as_mut().filter(|t| t.resubmit_pending()) {
            // The previous daemon's requests first, oldest first (already marked in flight).
            let room = self.room(backend).min(PIPELINE_BATCH);
            while batch.len < room {
                let Some(head) = t.next_resubmit() else { break };
                batch.heads[batch.len] = head;
                batch.len += 1;
            }
            if batch.len == room || t.resubmit_pending() {
                self.resume.set(true);
                shared.in_flight.fetch_add(batch.len, Ordering::AcqRel);
                return (batch.len > 0).then_some(batch);
            }
        }
        let resubmitted = batch.len;
        loop {
            let room = self.room(backend).saturating_sub(batch.len);
            if room == 0 || batch.len == PIPELINE_BATCH {
                self.resume.set(true);
                break;
            }
            if let Err(e) = queue.disable_notification(&*ring_mem) {
                tracing::debug!(export = %export.name, queue = self.index, "cannot disable notifications: {e}");
            }
            match queue.iter(&*ring_mem) {
                Ok(iter) => {
                    for chain in iter.take(room.min(PIPELINE_BATCH - batch.len)) {
                        batch.heads[batch.len] = chain.head_index();
                        batch.len += 1;
                    }
                }
                Err(QueueError::InvalidAvailRingIndex) => {
                    tracing::error!(
                        export = %export.name,
                        queue = self.index,
                        "the guest moved the avail index by more than the queue size: queue stopped until it is reset"
                    );
                    shared.broken.store(true, Ordering::Release);
                    break;
                }
                Err(e) => {
                    tracing::debug!(export = %export.name, queue = self.index, "queue not usable: {e}");
                    break;
                }
            }
            if self.room(backend) <= batch.len || batch.len == PIPELINE_BATCH {
                continue;
            }
            // The ring ran dry.
            if rearm == Rearm::No {
                break;
            }
            match queue.enable_notification(&*ring_mem) {
                Ok(true) => continue,
                _ => break,
            }
        }
        if let Some(t) = tracker.as_mut() {
            t.taken(&batch.heads[resubmitted..batch.len]);
        }
        // Counted while the ring's lock is held: GET_VRING_BASE marks the ring stopped under
        // that lock and then waits for the count to drain, so it never misses these.
        shared.in_flight.fetch_add(batch.len, Ordering::AcqRel);
        (batch.len > 0).then_some(batch)
    }

    /// Take the tracker the frontend thread handed over when the ring (re)started.
    fn take_tracker(&self, backend: &BlkBackend) {
        let shared = &backend.queues[self.index];
        shared.tracker_ready.store(false, Ordering::Release);
        if let Some(t) = shared.tracker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            *self.tracker.borrow_mut() = Some(t);
        }
    }

    /// Put finished requests in the used ring and notify the guest if it asked for it.
    pub fn flush_used(&self, backend: &BlkBackend, vring: &VringRwLock, mem: &GuestMemAtomic) {
        if self.done.borrow().is_empty() {
            return;
        }
        let done = std::mem::take(&mut *self.done.borrow_mut());
        // Counted before the guest can see the answers (a frontend that reads the statistics
        // after its request completed finds it there).
        self.export.stats.absorb(&mut self.stats.borrow_mut());
        let mem = mem.memory();
        {
            let mut state = vring.get_mut();
            let queue = state.get_queue_mut();
            let tracker = self.tracker.borrow();
            if let Some(t) = tracker.as_ref() {
                t.batch_begin(&done);
            }
            for &(head, len) in &done {
                if let Err(e) = queue.add_used(&*mem, head, len) {
                    tracing::warn!(export = %backend.export.name, queue = self.index, head, "cannot add to the used ring: {e}");
                }
            }
            if let Some(t) = tracker.as_ref() {
                t.batch_end(&done, queue.next_used());
            }
            let notify = queue.needs_notification(&*mem).unwrap_or(true);
            if notify {
                if let Err(e) = state.signal_used_queue() {
                    tracing::debug!(export = %backend.export.name, queue = self.index, "cannot notify the guest: {e}");
                }
            }
        }
        backend.retire(self.index, done.len());
        // Give the allocation back for the next batch.
        let mut done = done;
        done.clear();
        let mut slot = self.done.borrow_mut();
        if slot.is_empty() {
            *slot = done;
        }
    }
}
