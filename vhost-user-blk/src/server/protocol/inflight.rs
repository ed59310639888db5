//! In-flight tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD), the frontend thread's side:
//! GET_INFLIGHT_FD hands out a fresh region, SET_INFLIGHT_FD maps the one the frontend keeps,
//! and when a ring starts its part of the region is recovered (`inflight_region::recover`) and
//! handed to the queue's worker as a [`QueueTracker`], with the requests to resubmit.
//!
//! The worker's side (`QueueTracker`) records, as the specification orders the stores: on
//! taking a head from the ring, its counter and then its in-flight flag; on completing a batch,
//! the batch's list and last_batch_head, then the used ring entries, then the flags cleared,
//! then used_idx. virtio-queue moves the used ring's index with each entry rather than once per
//! batch, so the list runs in used-ring order from last_batch_head: after a crash in the
//! middle of a batch, the first `ring used - used_idx` entries of the list are exactly those
//! the guest can see.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::{Error as VhostUserError, Result as VhostUserResult};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;

use super::inflight_region::{create_memfd, queue_region_size, recover, reset_queue, Region, MAX_QUEUE_SIZE};
use super::memory::GuestRegions;
use crate::server::backend::{hand_over_tracker, BlkBackend};

/// One queue's part of the region, owned by the queue's worker while the ring runs.
pub struct QueueTracker {
    region: Arc<Region>,
    queue: u16,
    counter: u64,
    /// Heads of the previous daemon still in flight, oldest first: taken before the ring.
    resubmit: VecDeque<u16>,
}

impl QueueTracker {
    /// Requests to resubmit before new ones are taken from the ring.
    pub fn resubmit_pending(&self) -> bool {
        !self.resubmit.is_empty()
    }

    /// The next head to resubmit (already marked in flight).
    pub fn next_resubmit(&mut self) -> Option<u16> {
        self.resubmit.pop_front()
    }

    /// `heads` were taken from the ring: counter, then the in-flight flag.
    pub fn taken(&mut self, heads: &[u16]) {
        let r = &*self.region;
        for &h in heads {
            if h >= r.queue_size {
                continue;
            }
            r.counter(self.queue, h).store(self.counter, Ordering::Relaxed);
            self.counter = self.counter.saturating_add(1);
            r.inflight(self.queue, h).store(1, Ordering::Release);
        }
    }

    /// Before the batch `done` goes to the used ring: link its list in used-ring order.
    pub fn batch_begin(&self, done: &[(u16, u32)]) {
        let r = &*self.region;
        let q = self.queue;
        for pair in done.windows(2) {
            if pair[0].0 < r.queue_size {
                r.next(q, pair[0].0).store(pair[1].0, Ordering::Relaxed);
            }
        }
        if let Some(&(first, _)) = done.first() {
            r.last_batch_head(q).store(first, Ordering::Release);
        }
    }

    /// After the batch is in the used ring (its index now `used_idx`): clear the flags, then
    /// record the used index.
    pub fn batch_end(&self, done: &[(u16, u32)], used_idx: u16) {
        let r = &*self.region;
        std::sync::atomic::fence(Ordering::Release);
        for &(h, _) in done {
            if h < r.queue_size {
                r.inflight(self.queue, h).store(0, Ordering::Relaxed);
            }
        }
        r.used_idx(self.queue).store(used_idx, Ordering::Release);
    }
}

/// The connection's in-flight region, if the frontend set one up.
pub struct InflightState {
    region: Option<Arc<Region>>,
}

fn refuse(backend: &BlkBackend, what: String) -> VhostUserError {
    tracing::warn!(export = %backend.export.name, "in-flight region refused: {what}");
    VhostUserError::ReqHandlerError(std::io::Error::new(std::io::ErrorKind::InvalidInput, what))
}

fn check_geometry(msg: &VhostUserInflight, backend: &BlkBackend) -> Result<(), String> {
    let (nq, qs) = (msg.num_queues, msg.queue_size);
    if nq == 0 || usize::from(nq) > backend.queues.len() {
        return Err(format!("{nq} queues (the export has {})", backend.queues.len()));
    }
    if qs == 0 || qs > MAX_QUEUE_SIZE {
        return Err(format!("queue size {qs} (1..={MAX_QUEUE_SIZE})"));
    }
    Ok(())
}

impl InflightState {
    /// No region yet.
    pub fn new() -> InflightState {
        InflightState { region: None }
    }

    /// GET_INFLIGHT_FD: a zeroed, sealed memfd for the queues the frontend names.
    pub fn get_fd(
        &mut self,
        msg: &VhostUserInflight,
        backend: &BlkBackend,
    ) -> VhostUserResult<(VhostUserInflight, File)> {
        check_geometry(msg, backend).map_err(|e| refuse(backend, e))?;
        let size = usize::from(msg.num_queues) * queue_region_size(msg.queue_size);
        let file = create_memfd(size).map_err(|e| refuse(backend, format!("cannot create the memfd: {e}")))?;
        Ok((VhostUserInflight::new(size as u64, 0, msg.num_queues, msg.queue_size), file))
    }

    /// SET_INFLIGHT_FD: map the frontend's region (refused when too small, misplaced, or of an
    /// unknown version). Only before any ring runs.
    pub fn set_fd(
        &mut self,
        msg: &VhostUserInflight,
        file: File,
        backend: &BlkBackend,
        rings_running: bool,
    ) -> VhostUserResult<()> {
        if rings_running {
            return Err(refuse(backend, "SET_INFLIGHT_FD while rings run".into()));
        }
        check_geometry(msg, backend).map_err(|e| refuse(backend, e))?;
        let (offset, size) = (msg.mmap_offset, msg.mmap_size);
        let region =
            Region::map(&file, offset, size, msg.num_queues, msg.queue_size).map_err(|e| refuse(backend, e))?;
        for q in 0..region.num_queues {
            let v = region.version(q).load(Ordering::Acquire);
            if v > super::inflight_region::VERSION {
                return Err(refuse(backend, format!("queue {q}: version {v}")));
            }
        }
        tracing::info!(export = %backend.export.name, queues = msg.num_queues, queue_size = msg.queue_size, "in-flight region set up");
        self.region = Some(Arc::new(region));
        Ok(())
    }

    /// Ring `index` is about to start: recover its part of the region, set the ring's next
    /// avail index to where the previous daemon had got, and hand the tracker to the worker.
    /// Without a region (or for a queue it does not cover) the ring runs untracked.
    pub fn before_start(
        &mut self,
        index: usize,
        vring: &VringRwLock,
        regions: &GuestRegions,
        backend: &BlkBackend,
    ) -> VhostUserResult<()> {
        let Some(region) = self.region.clone() else { return Ok(()) };
        let name = &backend.export.name;
        let Ok(q) = u16::try_from(index) else { return Ok(()) };
        if q >= region.num_queues {
            tracing::warn!(export = %name, queue = index, "the in-flight region does not cover this queue: untracked");
            return Ok(());
        }
        let mem = regions.memory().memory();
        let (size, avail, used) = {
            let state = vring.get_ref();
            let queue = state.get_queue();
            let avail = queue.avail_idx(&*mem, Ordering::Acquire).map(|w| w.0);
            let used = queue.used_idx(&*mem, Ordering::Acquire).map(|w| w.0);
            match (avail, used) {
                (Ok(a), Ok(u)) => (queue.size(), a, u),
                _ => {
                    tracing::warn!(export = %name, queue = index, "the ring's indices cannot be read: untracked");
                    return Ok(());
                }
            }
        };
        let found = match recover(&region, q, size, avail, used) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(export = %name, queue = index, "in-flight region ignored for this queue: {e}; serving from the frontend's index");
                reset_queue(&region, q, used);
                hand_over_tracker(
                    backend,
                    index,
                    QueueTracker { region, queue: q, counter: 0, resubmit: VecDeque::new() },
                );
                return Ok(());
            }
        };
        let frontend_base = vring.queue_next_avail();
        if !found.resubmit.is_empty() || frontend_base != found.next_avail {
            tracing::info!(
                export = %name,
                queue = index,
                "in-flight region: {} requests to resubmit; ring resumes at {} (the frontend said {frontend_base})",
                found.resubmit.len(),
                found.next_avail
            );
        }
        vring.set_queue_next_avail(found.next_avail);
        let tracker = QueueTracker { region, queue: q, counter: found.next_counter, resubmit: found.resubmit.into() };
        hand_over_tracker(backend, index, tracker);
        Ok(())
    }
}

impl Default for InflightState {
    fn default() -> Self {
        InflightState::new()
    }
}

#[cfg(test)]
mod tests {
    use super::super::inflight_region::{recover, Region};
    use super::*;

    fn tracked(size: u16) -> (File, Arc<Region>, QueueTracker) {
        let len = queue_region_size(size);
        let f = create_memfd(len).unwrap();
        let r = Arc::new(Region::map(&f, 0, len as u64, 1, size).unwrap());
        recover(&r, 0, size, 0, 0).unwrap();
        let t = QueueTracker { region: r.clone(), queue: 0, counter: 0, resubmit: VecDeque::new() };
        (f, r, t)
    }

    #[test]
    fn a_crash_in_the_middle_of_a_batch_resubmits_what_the_guest_cannot_see() {
        let (_f, r, mut t) = tracked(8);
        t.taken(&[4, 1, 6, 3]);
        // Heads 6, 1 and 3 complete in one batch; the daemon dies after the first two reached
        // the used ring (used index 2) and before any flag was cleared.
        let done = [(6, 0), (1, 0), (3, 0)];
        t.batch_begin(&done);
        let found = recover(&r, 0, 8, 4, 2).unwrap();
        assert_eq!(found.resubmit, vec![4, 3], "head 3 never reached the guest; 4 never completed");
        assert_eq!(found.next_avail, 4);
        assert_eq!(found.next_counter, 4);
    }

    #[test]
    fn a_finished_batch_leaves_nothing_in_flight() {
        let (_f, r, mut t) = tracked(8);
        t.taken(&[0, 1, 2]);
        let done = [(2, 0), (0, 0)];
        t.batch_begin(&done);
        t.batch_end(&done, 2);
        let found = recover(&r, 0, 8, 3, 2).unwrap();
        assert_eq!(found.resubmit, vec![1]);
        assert_eq!(found.next_avail, 3);
    }
}
