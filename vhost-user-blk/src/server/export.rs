//! An export: one device served on one vhost-user socket, with its settings and statistics.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use blockdev::BlockDev;
use serde::Serialize;

use super::qos::{Gate, Limits};
use super::stats::ExportStats;
use super::virtio_blk::{Geometry, ID_LEN};

/// Largest `num-queues` accepted.
pub const MAX_QUEUES: u16 = 64;
/// Largest `queue-size` accepted.
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// Default `poll-us` over a device on this host: cloud-hypervisor's vhost-user-block polls its
/// queues for 50 us too. Over a device that goes over the network (an RBD image anywhere in the
/// stack) the default is 0: its completions come from librbd's threads a network round trip
/// later, and a polling worker takes the CPU they need (docs/scale-out.md, "Polling").
pub const DEFAULT_POLL_US: u32 = 50;
/// Largest `poll-us` accepted (a worker never spins longer than this without new work).
pub const MAX_POLL_US: u32 = 10_000;
/// Largest `sqpoll` idle time accepted, in milliseconds.
pub const MAX_SQPOLL_MS: u32 = 1_000;

/// How a device is exported (the export keys of a `--disk` spec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportSettings {
    /// The vhost-user socket path.
    pub socket: PathBuf,
    /// Request queues offered (1..=64).
    pub num_queues: u16,
    /// Descriptors per queue (a power of two, 1..=1024).
    pub queue_size: u16,
    /// Refuse writes (and open the device read-only).
    pub read_only: bool,
    /// Device ID returned by GET_ID (at most 20 bytes).
    pub serial: String,
    /// Block size announced to the guest: 512 or 4096.
    pub logical_block_size: u32,
    /// Start in writeback mode (the guest may switch with CONFIG_WCE).
    pub write_cache: bool,
    /// Queues served by one worker thread (and its io_uring): 1..=num_queues.
    pub queues_per_thread: u16,
    /// How long a worker keeps polling its queues and ring for new work after the last
    /// request or completion, before it sleeps until a kick (microseconds, 0 = never poll).
    /// `None` until [`Export::new`] picks the default for the device ([`DEFAULT_POLL_US`]).
    pub poll_us: Option<u32>,
    /// Give each worker's io_uring a kernel submission thread that polls for this many
    /// milliseconds after the last submission (`sqpoll=on` is 1 ms; 0 = off, the default).
    pub sqpoll_ms: u32,
    /// I/O limits at start (`iops-total=...`; see `qos`). Those in force are the group's, which
    /// `set-limits` changes; listed by the `limits` control request rather than here.
    #[serde(skip)]
    pub limits: Limits,
    /// `throttle-group=NAME`: share one budget with the other exports naming it.
    pub throttle_group: Option<String>,
}

impl ExportSettings {
    /// Defaults for an export at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        ExportSettings {
            socket: socket.into(),
            num_queues: 1,
            queue_size: 256,
            read_only: false,
            serial: String::new(),
            logical_block_size: 512,
            write_cache: true,
            queues_per_thread: 1,
            poll_us: None,
            sqpoll_ms: 0,
            limits: Limits::default(),
            throttle_group: None,
        }
    }

    /// The polling window workers use (`poll-us`, or the default for `dev`).
    pub fn poll_us_for(&self, dev: &dyn BlockDev) -> u32 {
        self.poll_us.unwrap_or(if dev.over_network() { 0 } else { DEFAULT_POLL_US })
    }

    /// Worker threads: `num_queues` split into groups of `queues_per_thread`.
    pub fn threads(&self) -> usize {
        usize::from(self.num_queues).div_ceil(usize::from(self.queues_per_thread.max(1)))
    }

    /// Check the ranges the issue names; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.num_queues == 0 || self.num_queues > MAX_QUEUES {
            return Err(format!("num-queues={} must be 1..={MAX_QUEUES}", self.num_queues));
        }
        if self.queues_per_thread == 0 || self.queues_per_thread > self.num_queues {
            return Err(format!(
                "queues-per-thread={} must be 1..=num-queues ({})",
                self.queues_per_thread, self.num_queues
            ));
        }
        if self.queue_size == 0 || self.queue_size > MAX_QUEUE_SIZE || !self.queue_size.is_power_of_two() {
            return Err(format!("queue-size={} must be a power of two up to {MAX_QUEUE_SIZE}", self.queue_size));
        }
        if let Some(us) = self.poll_us.filter(|&us| us > MAX_POLL_US) {
            return Err(format!("poll-us={us} must be 0..={MAX_POLL_US}"));
        }
        if self.sqpoll_ms > MAX_SQPOLL_MS {
            return Err(format!("sqpoll={} must be on, off or 0..={MAX_SQPOLL_MS} (milliseconds)", self.sqpoll_ms));
        }
        if self.logical_block_size != 512 && self.logical_block_size != 4096 {
            return Err(format!("logical-block-size={} must be 512 or 4096", self.logical_block_size));
        }
        if self.throttle_group.as_deref() == Some("") {
            return Err("throttle-group= is empty".into());
        }
        self.limits.validate()?;
        if self.serial.len() > ID_LEN {
            return Err(format!("serial={:?} is longer than {ID_LEN} bytes", self.serial));
        }
        Ok(())
    }
}

/// A device and how it is served.
pub struct Export {
    /// Name used in logs and on the control socket (the socket path unless given).
    pub name: String,
    /// The export keys.
    pub settings: ExportSettings,
    /// The device stack.
    pub dev: Arc<dyn BlockDev>,
    /// What the guest sees, as announced at the start; the capacity it sees now is
    /// [`Export::capacity`] ([`Export::geometry_now`] has both).
    pub geometry: Geometry,
    /// The capacity in bytes now (a live resize changes it; `geometry.size` is the first one).
    capacity: AtomicU64,
    /// Held by a live resize from start to end: one at a time per export.
    resizing: Mutex<()>,
    /// GET_ID answer, NUL-padded.
    pub serial: [u8; ID_LEN],
    /// Counters since start (shared with the metrics' series, which outlive the export).
    pub stats: Arc<ExportStats>,
    /// How the device was described (the disk spec without export keys).
    pub source: String,
    /// Where its requests wait for their I/O limits (its own group unless `throttle-group`).
    pub qos: Gate,
}

impl Export {
    /// Build an export of `dev`; fails when the device cannot be announced with these settings.
    pub fn new(
        name: String,
        mut settings: ExportSettings,
        dev: Arc<dyn BlockDev>,
        source: String,
    ) -> Result<Export, String> {
        settings.validate()?;
        settings.poll_us = Some(settings.poll_us_for(&*dev));
        let info = dev.info();
        if info.logical_block_size > settings.logical_block_size {
            return Err(format!(
                "{name}: logical-block-size={} is smaller than the device's block size {}",
                settings.logical_block_size, info.logical_block_size
            ));
        }
        if info.size < u64::from(settings.logical_block_size) {
            return Err(format!("{name}: the device is smaller than one block"));
        }
        let geometry = Geometry::new(
            &info,
            settings.logical_block_size,
            settings.num_queues,
            settings.queue_size,
            settings.read_only,
        );
        let mut serial = [0u8; ID_LEN];
        serial[..settings.serial.len()].copy_from_slice(settings.serial.as_bytes());
        let qos = Gate::private(settings.limits);
        let capacity = AtomicU64::new(geometry.size);
        let resizing = Mutex::new(());
        Ok(Export { name, settings, dev, geometry, capacity, resizing, serial, stats: Arc::default(), source, qos })
    }

    /// The capacity in bytes the guest sees now (and requests are checked against).
    pub fn capacity(&self) -> u64 {
        // Acquire: a request checked against a grown capacity finds the device grown too (the
        // device's size was stored before this). A plain load on x86.
        self.capacity.load(Ordering::Acquire)
    }

    /// The geometry with the capacity now: what the config space and the request checks use.
    /// Workers take one copy per batch of requests.
    pub fn geometry_now(&self) -> Geometry {
        Geometry { size: self.capacity(), ..self.geometry }
    }

    /// Announce `bytes` (rounded down to the logical block size) from now on; returns what is
    /// announced. Only a live resize calls this, holding [`Export::lock_resize`].
    pub fn set_capacity(&self, bytes: u64) -> u64 {
        let size = bytes - bytes % u64::from(self.geometry.block_size);
        // SeqCst: a shrink then waits for the requests in flight; this store and the workers'
        // in-flight counts are ordered, so a request counted after it was checked against it.
        self.capacity.store(size, Ordering::SeqCst);
        size
    }

    /// Serialize live resizes of this export.
    pub fn lock_resize(&self) -> MutexGuard<'_, ()> {
        self.resizing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockdev::{DevInfo, IoBufs, IoCtx, IoFuture, IoTag, MemDisk};

    /// A RAM disk that says it goes over the network, as an RBD image does.
    struct Networked(MemDisk);

    impl BlockDev for Networked {
        fn info(&self) -> DevInfo {
            self.0.info()
        }
        fn read(&self, io: &IoCtx, off: u64, bufs: IoBufs, tag: IoTag) -> IoFuture {
            self.0.read(io, off, bufs, tag)
        }
        fn write(&self, io: &IoCtx, off: u64, bufs: IoBufs, fua: bool, tag: IoTag) -> IoFuture {
            self.0.write(io, off, bufs, fua, tag)
        }
        fn flush(&self, io: &IoCtx, tag: IoTag) -> IoFuture {
            self.0.flush(io, tag)
        }
        fn discard(&self, io: &IoCtx, off: u64, len: u64, tag: IoTag) -> IoFuture {
            self.0.discard(io, off, len, tag)
        }
        fn write_zeroes(&self, io: &IoCtx, off: u64, len: u64, unmap: bool, tag: IoTag) -> IoFuture {
            self.0.write_zeroes(io, off, len, unmap, tag)
        }
        fn over_network(&self) -> bool {
            true
        }
    }

    fn export(settings: ExportSettings, dev: Arc<dyn BlockDev>) -> Export {
        Export::new("e".into(), settings, dev, String::new()).unwrap()
    }

    #[test]
    fn workers_poll_by_default_on_this_host_and_not_over_the_network_unless_told() {
        let local: Arc<dyn BlockDev> = Arc::new(MemDisk::new(1 << 20).unwrap());
        let remote: Arc<dyn BlockDev> = Arc::new(Networked(MemDisk::new(1 << 20).unwrap()));
        let default = ExportSettings::new("s");
        assert_eq!(export(default.clone(), local.clone()).settings.poll_us, Some(DEFAULT_POLL_US));
        assert_eq!(export(default.clone(), remote.clone()).settings.poll_us, Some(0));
        let told = ExportSettings { poll_us: Some(20), ..default };
        assert_eq!(export(told.clone(), local).settings.poll_us, Some(20));
        assert_eq!(export(told, remote).settings.poll_us, Some(20), "a poll-us given is kept");
    }
}
