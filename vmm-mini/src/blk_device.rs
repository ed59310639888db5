//! A virtio-mmio block device whose queues run in a vhost-user backend: the transport's
//! register file plus the frontend connection, the kick eventfds (KVM ioeventfds on
//! `QueueNotify`) and the call eventfds (KVM irqfds, or polled by the probe guest).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::disk_spec::DiskSpec;
use crate::vhost_frontend::{BlkFrontend, FrontendError, InflightRegion, VIRTIO_BLK_F_RO};
use crate::virtio_mmio::{MmioTransport, TransportEvent, DEVICE_ID_BLOCK};

/// Largest queue size offered to the driver.
pub const QUEUE_MAX_SIZE: u16 = 256;

/// Errors building a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlkDeviceError {
    /// Talking to the backend failed.
    #[error(transparent)]
    Frontend(#[from] FrontendError),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(io::Error),
    /// `read-only=on` was asked for, but the backend serves the disk writable: vhost-user has
    /// no way to tell it, and the guest's requests go straight to it, so it must refuse writes
    /// itself.
    #[error(
        "vhost-user backend {0}: read-only=on, but the backend serves the disk writable (it does not offer \
         VIRTIO_BLK_F_RO), so a guest's writes would reach the disk; export it read-only \
         (strata: --disk ...,read-only=on; qemu-storage-daemon: --export ...,writable=off)"
    )]
    BackendWritable(PathBuf),
}

/// The features the guest is offered: the backend's, which must include VIRTIO_BLK_F_RO when
/// the disk is to be read-only (the backend, not vmm-mini, sees the guest's requests).
pub fn offered_features(spec: &DiskSpec, backend: u64) -> Result<u64, BlkDeviceError> {
    if spec.read_only && backend & VIRTIO_BLK_F_RO == 0 {
        return Err(BlkDeviceError::BackendWritable(spec.socket.clone()));
    }
    Ok(backend)
}

/// One vhost-user-blk disk on a virtio-mmio window.
pub struct BlkDevice {
    transport: MmioTransport,
    frontend: BlkFrontend,
    mem: GuestMemoryMmap,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    running: bool,
    /// The backend's in-flight region (INFLIGHT_SHMFD), kept across reconnects.
    inflight: Option<InflightRegion>,
}

impl BlkDevice {
    /// Connects to the disk's backend and builds the device the guest will see; connecting and
    /// negotiating with the backend end within `timeout`.
    pub fn new(spec: &DiskSpec, mem: GuestMemoryMmap, timeout: Duration) -> Result<Self, BlkDeviceError> {
        let frontend = BlkFrontend::connect(&spec.socket, spec.num_queues, timeout, spec.reconnect.is_some())?;
        let features = offered_features(spec, frontend.guest_features())?;
        let n = usize::from(frontend.num_queues());
        let eventfds = || (0..n).map(|_| EventFd::new(libc::EFD_NONBLOCK)).collect::<io::Result<Vec<_>>>();
        let kicks = eventfds().map_err(BlkDeviceError::EventFd)?;
        let calls = eventfds().map_err(BlkDeviceError::EventFd)?;
        let transport = MmioTransport::new(DEVICE_ID_BLOCK, features, n, QUEUE_MAX_SIZE, frontend.config().to_vec());
        Ok(BlkDevice { transport, frontend, mem, kicks, calls, running: false, inflight: None })
    }

    /// The eventfds the guest's `QueueNotify` writes must signal, one per queue (register them
    /// as KVM ioeventfds with the queue index as datamatch).
    pub fn kick_fds(&self) -> &[EventFd] {
        &self.kicks
    }

    /// The eventfds the backend signals when it used buffers, one per queue (register them as
    /// KVM irqfds of the device's interrupt line).
    pub fn call_fds(&self) -> &[EventFd] {
        &self.calls
    }

    /// The backend connection.
    pub fn frontend(&self) -> &BlkFrontend {
        &self.frontend
    }

    /// Stops the backend's vrings if the guest started them.
    pub fn stop(&mut self) -> Result<(), FrontendError> {
        self.running = false;
        self.frontend.stop()
    }

    /// The backend changed the config space (a resize): read it again, show it to the driver
    /// and raise the config interrupt on the device's line (through the first call eventfd,
    /// the line's irqfd). Returns the capacity now, in 512-byte sectors.
    pub fn config_changed(&mut self) -> Result<u64, FrontendError> {
        let config = self.frontend.reread_config()?.to_vec();
        let sectors = config.get(..8).and_then(|c| c.try_into().ok()).map_or(0, u64::from_le_bytes);
        if self.transport.set_config(config) {
            if let Some(call) = self.calls.first() {
                // A full counter already means "interrupt pending": nothing is lost.
                let _ = call.write(1);
            }
        }
        Ok(sectors)
    }

    /// The backend came back (`new`, connected to the same socket): take it in place of the
    /// lost one. If the driver runs the device, its rings are handed over as they are: the same
    /// memory table, kick and call eventfds, the in-flight region of the first connection, and
    /// each queue's base from its used index in guest memory (what the old backend completed;
    /// the rest is done again, or replayed from the in-flight region). Every queue is then
    /// kicked once, since a kick the old backend swallowed is gone. A backend that now offers
    /// fewer queues or lacks features the driver uses cannot take over: the device asks the
    /// driver for a reset (DEVICE_NEEDS_RESET). A config space that changed meanwhile (the disk
    /// was resized while the backend was away) is shown to the driver with a config interrupt.
    /// Returns whether the in-flight region was handed
    /// over (the backend replays from it) rather than the rings restarted from the used index.
    pub fn reconnect(&mut self, new: BlkFrontend) -> Result<bool, FrontendError> {
        let features = self.transport.driver_features();
        let queues_match = new.num_queues() == self.frontend.num_queues();
        let lacking = features & !new.guest_features();
        self.frontend = new;
        // A backend that comes back with another capacity (resized while away): the driver
        // hears of it as of a live resize.
        if self.frontend.config() != self.transport.config()
            && self.transport.set_config(self.frontend.config().to_vec())
        {
            if let Some(call) = self.calls.first() {
                let _ = call.write(1);
            }
        }
        if !self.running {
            return Ok(false);
        }
        if !queues_match || lacking != 0 {
            self.transport.set_needs_reset();
            self.running = false;
            return Err(FrontendError {
                socket: self.frontend.socket().to_path_buf(),
                step: "reconnect (the backend changed its queues or features: the guest must reset the disk)",
                why: crate::vhost_frontend::Failure::Vhost(vhost::Error::InvalidQueue),
            });
        }
        let queues = self.transport.queues().to_vec();
        let bases: Vec<u16> = queues.iter().map(|q| used_index(&self.mem, q)).collect();
        self.frontend.start(&self.mem, features, &queues, &self.kicks, &self.calls, &bases, &mut self.inflight)?;
        for kick in &self.kicks {
            // A full counter already means "kicked".
            let _ = kick.write(1);
        }
        Ok(self.frontend.tracks_inflight() && self.inflight.is_some())
    }

    /// The backend connection, to take its backend channel.
    pub fn frontend_mut(&mut self) -> &mut BlkFrontend {
        &mut self.frontend
    }

    /// A guest read in the device's window.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        self.transport.read(offset, data);
    }

    /// A guest write in the device's window. A backend that refuses to start or stop leaves
    /// the device in DEVICE_NEEDS_RESET and the error is returned for logging; the guest
    /// carries on.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), FrontendError> {
        match self.transport.write(offset, data) {
            Some(TransportEvent::DriverOk) => {
                let queues = self.transport.queues().to_vec();
                let features = self.transport.driver_features();
                let started = self.frontend.start(
                    &self.mem,
                    features,
                    &queues,
                    &self.kicks,
                    &self.calls,
                    &[],
                    &mut self.inflight,
                );
                self.running = true;
                if let Err(e) = started {
                    self.transport.set_needs_reset();
                    return Err(e);
                }
            }
            Some(TransportEvent::Reset) if self.running => {
                self.running = false;
                self.frontend.stop()?;
            }
            Some(TransportEvent::Notify(queue)) => {
                if let Some(kick) = self.kicks.get(queue as usize) {
                    // A full eventfd counter already means "kicked": nothing is lost.
                    let _ = kick.write(1);
                }
            }
            Some(TransportEvent::Reset) | None => {}
        }
        Ok(())
    }
}

/// The used index of queue `q` as the backend last published it in guest memory (0 when the
/// ring is outside it, which a started queue's is not).
fn used_index(mem: &GuestMemoryMmap, q: &crate::virtio_mmio::QueueConfig) -> u16 {
    use vm_memory::{Bytes, GuestAddress};
    mem.read_obj::<u16>(GuestAddress(q.used + 2)).map_or(0, u16::from_le)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(read_only: bool) -> DiskSpec {
        DiskSpec { socket: "/run/d.sock".into(), num_queues: 1, read_only, reconnect: None }
    }

    #[test]
    fn read_only_disk_needs_a_read_only_backend() {
        let flush = 1 << 9;
        assert_eq!(offered_features(&spec(true), flush | VIRTIO_BLK_F_RO).unwrap(), flush | VIRTIO_BLK_F_RO);
        let e = offered_features(&spec(true), flush).unwrap_err();
        assert!(e.to_string().contains("/run/d.sock") && e.to_string().contains("writable=off"), "{e}");
    }

    #[test]
    fn writable_disk_passes_the_backend_features_through() {
        assert_eq!(offered_features(&spec(false), 1 << 9).unwrap(), 1 << 9);
        assert_eq!(
            offered_features(&spec(false), VIRTIO_BLK_F_RO).unwrap(),
            VIRTIO_BLK_F_RO,
            "a read-only backend stays read-only"
        );
    }
}
