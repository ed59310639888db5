//! The vhost-user backend of one export: features, configuration space, what its queue
//! workers share with the frontend thread, and the backend channel of the frontend connected.
//!
//! - GET_VRING_BASE (`stop_vring`) is answered on the frontend thread; it waits for the queue's
//!   worker, which never takes the frontend handler's lock, to finish the in-flight requests,
//!   so GET_VRING_BASE answers only after every popped request is in the used ring.
//! - The io_uring completion eventfd of each worker is created on that worker's thread (an
//!   `IoCtx` is `!Send`) and added to the worker's epoll set with the epoll fd recorded here.
//! - The protocol itself (messages, connections, worker threads) is in `server/protocol/`.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::export::Export;
use super::protocol::backend_channel::BackendChannel;
use super::protocol::inflight::QueueTracker;
use super::virtio_blk::{CONFIG_LEN, CONFIG_WRITEBACK_OFFSET};
use zerocopy::IntoBytes;

/// The guest memory of a connection, as the queue workers read it.
pub type GuestMemAtomic = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// Largest configuration-space read a frontend may ask for (VHOST_USER_CONFIG_SIZE).
const CONFIG_SPACE_MAX: usize = 256;

/// State of one queue shared between its worker and the frontend thread.
#[derive(Default)]
pub struct QueueShared {
    /// Requests popped and not yet in the used ring.
    pub in_flight: AtomicUsize,
    /// The guest broke the ring protocol (avail index jump): stop until the ring is reset.
    pub broken: AtomicBool,
    /// An in-flight tracker waits in `tracker` for the worker (set when a tracked ring starts).
    pub tracker_ready: AtomicBool,
    /// The tracker handed over from the frontend thread to the queue's worker.
    pub tracker: Mutex<Option<QueueTracker>>,
}

/// Hand queue `index`'s in-flight tracker to its worker (taken before its next pop).
pub fn hand_over_tracker(backend: &BlkBackend, index: usize, tracker: QueueTracker) {
    if let Some(q) = backend.queues.get(index) {
        *q.tracker.lock().unwrap_or_else(|p| p.into_inner()) = Some(tracker);
        q.tracker_ready.store(true, Ordering::Release);
    }
}

/// What changes with every frontend connection.
pub struct Connection {
    /// The guest memory the handler updates on SET_MEM_TABLE.
    pub mem: GuestMemAtomic,
    /// Epoll fd of each worker thread (index = thread).
    pub epoll_fds: Vec<RawFd>,
}

/// The vhost-user backend of one export.
pub struct BlkBackend {
    /// The export served.
    pub export: Arc<Export>,
    /// Per-queue shared state.
    pub queues: Vec<QueueShared>,
    conn: Mutex<Option<Connection>>,
    writeback: AtomicBool,
    stopping: AtomicBool,
    drained: (Mutex<()>, Condvar),
    /// Threads inside [`BlkBackend::wait_drained`]: a retiring worker signals the condvar only
    /// then (a condvar notify is a futex syscall even with nobody waiting, once per request at QD1).
    drain_waiters: AtomicUsize,
    /// The connected frontend's backend channel, if it set one up.
    channel: Mutex<Option<BackendChannel>>,
}

/// epoll data of the worker's io_uring completion eventfd (above every queue index).
pub fn completion_event(num_queues: usize) -> u16 {
    num_queues as u16 + 1
}

/// Queue bitmasks of the worker threads: thread `t` serves queues `t*per..t*per+per`.
pub fn queue_masks(num_queues: usize, per_thread: usize) -> Vec<u64> {
    let per = per_thread.clamp(1, 64);
    (0..num_queues.div_ceil(per))
        .map(|t| {
            let first = t * per;
            let n = per.min(num_queues - first);
            (((1u128 << n) - 1) as u64) << first
        })
        .collect()
}

/// The global index of the first queue served by worker thread `thread`.
pub fn first_queue_of_thread(thread: usize, per_thread: usize) -> usize {
    thread * per_thread.max(1)
}

impl BlkBackend {
    /// A backend for `export`.
    pub fn new(export: Arc<Export>) -> Arc<BlkBackend> {
        let n = export.settings.num_queues as usize;
        let writeback = export.settings.write_cache;
        Arc::new(BlkBackend {
            export,
            queues: (0..n).map(|_| QueueShared::default()).collect(),
            conn: Mutex::new(None),
            writeback: AtomicBool::new(writeback),
            stopping: AtomicBool::new(false),
            drained: (Mutex::new(()), Condvar::new()),
            drain_waiters: AtomicUsize::new(0),
            channel: Mutex::new(None),
        })
    }

    /// Reset per-connection state before a new connection (and its workers) is set up.
    pub fn begin_connection(&self, mem: GuestMemAtomic) {
        self.writeback.store(self.export.settings.write_cache, Ordering::Release);
        for q in &self.queues {
            q.broken.store(false, Ordering::Release);
            q.tracker_ready.store(false, Ordering::Release);
            *q.tracker.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(Connection { mem, epoll_fds: Vec::new() });
    }

    /// Record the worker threads' epoll fds (index = thread).
    pub fn set_epoll_fds(&self, fds: Vec<RawFd>) {
        if let Some(c) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            c.epoll_fds = fds;
        }
    }

    /// After the connection's workers stopped: forget the connection, its backend channel and
    /// any in-flight tracker not handed over.
    pub fn end_connection(&self) {
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *self.channel.lock().unwrap_or_else(|p| p.into_inner()) = None;
        // A tracker never taken (its ring never popped) holds the region's mapping.
        for q in &self.queues {
            q.tracker_ready.store(false, Ordering::Release);
            *q.tracker.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// Keep `channel` (SET_BACKEND_REQ_FD) until the connection ends.
    pub fn set_channel(&self, channel: BackendChannel) {
        *self.channel.lock().unwrap_or_else(|p| p.into_inner()) = Some(channel);
    }

    /// Tell the connected frontend that the configuration space changed (a resize):
    /// VHOST_USER_BACKEND_CONFIG_CHANGE_MSG on the backend channel, acknowledged when REPLY_ACK
    /// was negotiated (waiting at most a couple of seconds). Returns whether the frontend was
    /// told: false with no frontend, no backend channel, or a frontend that did not answer (its
    /// channel is then dropped). Either way its next GET_CONFIG reads the new configuration.
    pub fn notify_config_change(&self) -> bool {
        let mut slot = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        let Some(channel) = slot.as_mut() else { return false };
        match channel.config_changed() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(export = %self.export.name, "cannot tell the frontend that the configuration changed: {e}; its backend channel is dropped");
                *slot = None;
                false
            }
        }
    }

    /// The memory and epoll fd a worker thread needs (None before a connection starts).
    /// Thread `t` serves the queues of [`queue_masks`]`[t]`.
    pub fn worker_setup(&self, thread: usize) -> Option<(GuestMemAtomic, RawFd)> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let c = conn.as_ref()?;
        Some((c.mem.clone(), *c.epoll_fds.get(thread)?))
    }

    /// The guest's current cache mode.
    pub fn writeback(&self) -> bool {
        self.writeback.load(Ordering::Acquire)
    }

    /// Stop taking new requests from the rings (shutdown or export removal).
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// True once [`BlkBackend::set_stopping`] was called.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Called by a worker after it put requests of `queue` in the used ring.
    pub fn retire(&self, queue: usize, n: usize) {
        let Some(q) = self.queues.get(queue) else { return };
        // SeqCst pairs with `wait_drained`: either it sees the count reach zero or we see it waiting.
        if q.in_flight.fetch_sub(n, Ordering::SeqCst) == n && self.drain_waiters.load(Ordering::SeqCst) > 0 {
            let _guard = self.drained.0.lock().unwrap_or_else(|p| p.into_inner());
            self.drained.1.notify_all();
        }
    }

    /// Wait until the queues in `which` have nothing in flight; false on timeout.
    pub fn wait_drained(&self, which: impl Fn(usize) -> bool, timeout: Duration) -> bool {
        // Requests waiting for their I/O limits start now: a drain never waits for the budget.
        self.export.qos.flush_waiting();
        self.drain_waiters.fetch_add(1, Ordering::SeqCst);
        let drained = self.wait_drained_counted(which, timeout);
        self.drain_waiters.fetch_sub(1, Ordering::SeqCst);
        drained
    }

    fn wait_drained_counted(&self, which: impl Fn(usize) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.drained.0.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let busy: usize = (0..self.queues.len())
                .filter(|&i| which(i))
                .map(|i| self.queues[i].in_flight.load(Ordering::SeqCst))
                .sum();
            if busy == 0 {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::error!(export = %self.export.name, "{busy} requests still in flight after {timeout:?}");
                return false;
            }
            guard = self.drained.1.wait_timeout(guard, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Wait for every queue to drain.
    pub fn drain_all(&self, timeout: Duration) -> bool {
        self.wait_drained(|_| true, timeout)
    }
}

/// What the export offers and answers, used by the frontend handler (`protocol/handler.rs`).
impl BlkBackend {
    /// The virtio features offered (with VHOST_USER_F_PROTOCOL_FEATURES).
    pub fn features(&self) -> u64 {
        self.export.geometry.features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    /// The vhost-user protocol features offered.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
    }

    /// GET_CONFIG: `size` bytes of the configuration space from `offset` (empty if out of range).
    pub fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut space = [0u8; CONFIG_SPACE_MAX];
        let cfg = self.export.geometry_now().config_space(self.writeback());
        space[..CONFIG_LEN].copy_from_slice(cfg.as_bytes());
        let (off, len) = (offset as usize, size as usize);
        match off.checked_add(len) {
            Some(end) if end <= CONFIG_SPACE_MAX => space[off..end].to_vec(),
            _ => Vec::new(),
        }
    }

    /// SET_CONFIG: only `writeback` is writable (CONFIG_WCE); everything else is refused.
    pub fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        if offset as usize == CONFIG_WRITEBACK_OFFSET && buf.len() == 1 {
            let wb = buf[0] != 0;
            tracing::info!(export = %self.export.name, "guest set the write cache to {}", if wb { "writeback" } else { "writethrough" });
            self.writeback.store(wb, Ordering::Release);
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("config space write at {offset}+{} refused", buf.len()),
        ))
    }

    /// GET_VRING_BASE: wait until queue `queue_index` has nothing in flight.
    pub fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let qi = queue_index as usize;
        if qi >= self.queues.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("no queue {queue_index}")));
        }
        let drained = self.wait_drained(|i| i == qi, Duration::from_secs(30));
        // A stopped ring starts afresh: a guest that broke it gets another chance after a reset.
        self.queues[qi].broken.store(false, Ordering::Release);
        if drained {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("queue {queue_index}: in-flight requests did not finish"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_masks_group_consecutive_queues() {
        assert_eq!(queue_masks(3, 1), vec![0b1, 0b10, 0b100]);
        assert_eq!(queue_masks(5, 2), vec![0b11, 0b1100, 0b10000]);
        assert_eq!(queue_masks(4, 4), vec![0b1111]);
        assert_eq!(queue_masks(64, 64), vec![u64::MAX]);
        assert_eq!(first_queue_of_thread(2, 2), 4);
    }
}
