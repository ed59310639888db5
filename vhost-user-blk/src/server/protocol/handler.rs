//! The daemon's handler of frontend requests: the vhost crate's `VhostUserBackendReqHandlerMut`
//! over one connection's state (features, guest memory, vrings, worker threads). The vhost
//! crate's `BackendReqHandler` parses and validates each message and calls this; the
//! dispatch loop (`dispatch.rs`) takes SET_BACKEND_REQ_FD itself.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight, VhostUserLog,
    VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserSharedMsg,
    VhostUserSingleMemoryRegion, VhostUserVirtioFeatures, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Error as VhostUserError, GpuBackend, Result as VhostUserResult, VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;

use super::inflight::InflightState;
use super::limits::MAX_MEM_REGIONS;
use super::memory::GuestRegions;
use super::workers::Workers;
use crate::server::backend::{queue_masks, BlkBackend, GuestMemAtomic};

/// One frontend connection's device state.
pub struct FrontendHandler {
    backend: Arc<BlkBackend>,
    vrings: Vec<VringRwLock>,
    masks: Vec<u64>,
    workers: Workers,
    regions: GuestRegions,
    owned: bool,
    acked_features: u64,
    acked_protocol: u64,
    inflight: InflightState,
}

fn unsupported(what: &'static str) -> VhostUserError {
    VhostUserError::InvalidOperation(what)
}

fn param(what: String) -> VhostUserError {
    tracing::warn!("frontend request refused: {what}");
    VhostUserError::ReqHandlerError(io::Error::new(io::ErrorKind::InvalidInput, what))
}

impl FrontendHandler {
    /// The state of a new connection to `backend`, its worker threads started (idle until a
    /// ring is enabled).
    pub fn new(backend: Arc<BlkBackend>, mem: GuestMemAtomic) -> io::Result<FrontendHandler> {
        let qsize = backend.export.settings.queue_size;
        let vrings = (0..backend.queues.len())
            .map(|_| {
                VringRwLock::new(mem.clone(), qsize)
                    .map_err(|e| io::Error::other(format!("cannot create a vring: {e}")))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let masks = queue_masks(backend.queues.len(), usize::from(backend.export.settings.queues_per_thread));
        let workers = Workers::start(&backend, &vrings, &masks)?;
        let inflight = InflightState::new();
        Ok(FrontendHandler {
            backend,
            vrings,
            masks,
            workers,
            regions: GuestRegions::new(mem),
            owned: false,
            acked_features: 0,
            acked_protocol: 0,
            inflight,
        })
    }

    /// The protocol features the frontend acknowledged.
    pub fn acked_protocol(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::from_bits_truncate(self.acked_protocol)
    }

    /// Stop the worker threads (after the connection's requests drained).
    pub fn stop_workers(&mut self) {
        self.workers.stop();
    }

    fn vring(&self, index: u32) -> VhostUserResult<&VringRwLock> {
        self.vrings
            .get(index as usize)
            .ok_or_else(|| param(format!("no queue {index} (the export has {})", self.vrings.len())))
    }

    /// Watch the ring's kick on its worker thread while it is ready and enabled, else not.
    fn update_registration(&self, index: usize) -> VhostUserResult<()> {
        let Some(vring) = self.vrings.get(index) else { return Ok(()) };
        let state = vring.get_ref();
        let Some(kick) = state.get_kick() else { return Ok(()) };
        let Some(thread) = self.masks.iter().position(|m| m >> index & 1 == 1) else { return Ok(()) };
        let local = (self.masks[thread] & ((1u64 << index) - 1)).count_ones() as usize;
        let Some(events) = self.workers.events(thread) else { return Ok(()) };
        if state.get_queue().ready() && state.is_enabled() {
            events.watch_kick(kick.as_raw_fd(), local).map_err(VhostUserError::ReqHandlerError)
        } else {
            events.unwatch_kick(kick.as_raw_fd(), local);
            Ok(())
        }
    }

    /// A ring with both its kick and call fds is ready to be served (when enabled).
    fn maybe_ready(&mut self, index: usize) -> VhostUserResult<()> {
        let needs_init = {
            let state = self.vrings[index].get_ref();
            !state.get_queue().ready() && state.get_kick().is_some()
        };
        if needs_init {
            self.inflight.before_start(index, &self.vrings[index], &self.regions, &self.backend)?;
            self.vrings[index].set_queue_ready(true);
            self.update_registration(index)?;
        }
        Ok(())
    }
}

impl VhostUserBackendReqHandlerMut for FrontendHandler {
    fn set_owner(&mut self) -> VhostUserResult<()> {
        if self.owned {
            return Err(unsupported("SET_OWNER: already owned"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> VhostUserResult<()> {
        self.owned = false;
        self.acked_features = 0;
        self.acked_protocol = 0;
        Ok(())
    }

    fn reset_device(&mut self) -> VhostUserResult<()> {
        for (i, vring) in self.vrings.iter().enumerate() {
            vring.set_enabled(false);
            self.update_registration(i)?;
        }
        self.acked_features = 0;
        Ok(())
    }

    fn get_features(&mut self) -> VhostUserResult<u64> {
        Ok(self.backend.features())
    }

    fn set_features(&mut self, features: u64) -> VhostUserResult<()> {
        if features & !self.backend.features() != 0 {
            return Err(param(format!(
                "SET_FEATURES {features:#x}: not offered {:#x}",
                features & !self.backend.features()
            )));
        }
        self.acked_features = features;
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            // Without protocol features rings start enabled.
            for (i, vring) in self.vrings.iter().enumerate() {
                vring.set_enabled(true);
                self.update_registration(i)?;
            }
        }
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for vring in &self.vrings {
            vring.set_queue_event_idx(event_idx);
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VhostUserResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        self.regions.set_table(ctx, files)?;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VhostUserResult<()> {
        let max = u32::from(self.backend.export.settings.queue_size);
        let vring = self.vring(index)?;
        if num == 0 || num > max {
            return Err(param(format!("queue {index}: size {num} out of range 1..={max} (the export's queue-size)")));
        }
        vring.set_queue_size(num as u16);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VhostUserResult<()> {
        let vring = self.vring(index)?;
        if self.regions.is_empty() {
            return Err(param(format!("SET_VRING_ADDR of queue {index} before any memory region")));
        }
        let (desc, avail, used) =
            (self.regions.to_guest(descriptor)?, self.regions.to_guest(available)?, self.regions.to_guest(used)?);
        vring
            .set_queue_info(desc, avail, used)
            .map_err(|e| param(format!("queue {index}: ring addresses refused: {e}")))?;
        let next_used = vring.queue_used_idx().map_err(|_| VhostUserError::BackendInternalError)?;
        vring.set_queue_next_used(next_used);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VhostUserResult<()> {
        self.vring(index)?.set_queue_next_avail(base as u16);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VhostUserResult<VhostUserVringState> {
        let vring = self.vring(index)?.clone();
        vring.set_queue_ready(false);
        self.update_registration(index as usize)?;
        self.backend.stop_vring(index).map_err(VhostUserError::ReqHandlerError)?;
        let next_avail = vring.queue_next_avail();
        vring.set_kick(None);
        vring.set_call(None);
        Ok(VhostUserVringState::new(index, u32::from(next_avail)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        self.vring(u32::from(index))?.set_kick(fd);
        self.maybe_ready(usize::from(index))
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        self.vring(u32::from(index))?.set_call(fd);
        self.maybe_ready(usize::from(index))
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        self.vring(u32::from(index))?.set_err(fd);
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VhostUserResult<VhostUserProtocolFeatures> {
        Ok(self.backend.protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> VhostUserResult<()> {
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VhostUserResult<u64> {
        Ok(self.vrings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VhostUserResult<()> {
        if self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            return Err(unsupported("SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES"));
        }
        self.vring(index)?.set_enabled(enable);
        self.update_registration(index as usize)
    }

    fn get_config(&mut self, offset: u32, size: u32, _flags: VhostUserConfigFlags) -> VhostUserResult<Vec<u8>> {
        Ok(self.backend.get_config(offset, size))
    }

    fn set_config(&mut self, offset: u32, buf: &[u8], _flags: VhostUserConfigFlags) -> VhostUserResult<()> {
        self.backend.set_config(offset, buf).map_err(VhostUserError::ReqHandlerError)
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VhostUserResult<()> {
        Err(unsupported("GPU_SET_SOCKET: not a GPU"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VhostUserResult<File> {
        Err(unsupported("GET_SHARED_OBJECT: no shared objects"))
    }

    fn get_inflight_fd(&mut self, inflight: &VhostUserInflight) -> VhostUserResult<(VhostUserInflight, File)> {
        self.inflight.get_fd(inflight, &self.backend)
    }

    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> VhostUserResult<()> {
        let running = self.vrings.iter().any(|v| v.get_ref().get_queue().ready());
        self.inflight.set_fd(inflight, file, &self.backend, running)
    }

    fn get_max_mem_slots(&mut self) -> VhostUserResult<u64> {
        Ok(MAX_MEM_REGIONS as u64)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VhostUserResult<Option<VhostUserMemoryRegionBase>> {
        self.regions.add(region, fd)?;
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> VhostUserResult<()> {
        self.regions.remove(region)
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VhostUserResult<Option<File>> {
        Err(unsupported("SET_DEVICE_STATE_FD: no device state to migrate"))
    }

    fn check_device_state(&mut self) -> VhostUserResult<()> {
        Err(unsupported("CHECK_DEVICE_STATE: no device state to migrate"))
    }

    fn get_shmem_config(&mut self) -> VhostUserResult<VhostUserShMemConfig> {
        Err(unsupported("GET_SHMEM_CONFIG: no shared memory regions"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VhostUserResult<()> {
        Err(unsupported("SET_LOG_BASE: no dirty-page logging"))
    }
}
