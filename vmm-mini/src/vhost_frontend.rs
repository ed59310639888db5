//! The vhost-user-blk frontend: one connection to a backend (vhost crate `Frontend`), feature
//! and protocol negotiation, config space, and starting/stopping the vrings.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserInflight};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::config_change::{open_channel, BackendChannel};
use crate::socket_deadline::{connect_within, SocketDeadline};
use crate::virtio_mmio::QueueConfig;

/// Size of `struct virtio_blk_config` as QEMU asks for it (virtio 1.2, 5.2.4, up to the
/// write-zeroes fields).
pub const BLK_CONFIG_SIZE: u32 = 60;
/// virtio feature bits the guest may see, besides the device-type bits 0-23: VERSION_1,
/// INDIRECT_DESC, EVENT_IDX. Packed rings, IOMMU and the like stay hidden.
const TRANSPORT_FEATURES: u64 = (1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1)
    | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX);
const DEVICE_TYPE_FEATURES: u64 = (1 << 24) - 1;
/// VIRTIO_BLK_F_RO, as a feature mask.
pub const VIRTIO_BLK_F_RO: u64 = 1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_RO;

/// Offset of `num_queues` (u16) in `struct virtio_blk_config`.
const CONFIG_NUM_QUEUES: usize = 34;

/// The guest must see the queue count vmm-mini agreed on, not the backend's (with
/// VIRTIO_BLK_F_MQ the driver sets up `num_queues` queues).
fn set_config_num_queues(config: &mut [u8], num_queues: u16) {
    if let Some(field) = config.get_mut(CONFIG_NUM_QUEUES..CONFIG_NUM_QUEUES + 2) {
        field.copy_from_slice(&num_queues.to_le_bytes());
    }
}

/// A vhost-user request that failed, naming the socket and the step.
#[derive(Debug, thiserror::Error)]
#[error("vhost-user backend {socket}: {step}: {why}")]
pub struct FrontendError {
    /// The backend's socket.
    pub socket: PathBuf,
    /// What vmm-mini was doing.
    pub step: &'static str,
    /// What went wrong.
    #[source]
    pub why: Failure,
}

/// What went wrong in one vhost-user step.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The vhost crate's error.
    #[error(transparent)]
    Vhost(#[from] vhost::Error),
    /// The socket could not be connected to.
    #[error("{0}")]
    Connect(std::io::Error),
    /// The peer did not answer by the deadline.
    #[error(
        "no answer within {:.1} s: not a vhost-user backend, or a backend busy with another frontend \
         (a vhost-user-blk backend serves one at a time)",
        .0.as_secs_f64()
    )]
    TimedOut(Duration),
    /// The peer answered with something that is not a vhost-user message.
    #[error("the answer is not a vhost-user message: the socket is not a vhost-user backend")]
    NotVhostUser,
}

/// A connected vhost-user-blk backend, negotiated and ready to start vrings.
pub struct BlkFrontend {
    socket: PathBuf,
    frontend: Frontend,
    /// A second descriptor of the socket, to shut it down from another thread.
    hang_up: UnixStream,
    backend_features: u64,
    num_queues: u16,
    config: Vec<u8>,
    started: Vec<usize>,
    /// The backend channel (BACKEND_REQ), until [`BlkFrontend::take_backend_channel`].
    channel: Option<BackendChannel>,
    /// INFLIGHT_SHMFD was agreed.
    inflight: bool,
}

/// The in-flight region a backend handed out (GET_INFLIGHT_FD) and its description: kept by the
/// device across reconnects and handed to every new connection (SET_INFLIGHT_FD).
pub type InflightRegion = (VhostUserInflight, File);

/// What [`BlkFrontend::negotiate`] settles: the backend's features, the queues, the config
/// space and the backend channel (when BACKEND_REQ was agreed).
type Negotiated = (u64, u16, Vec<u8>, Option<BackendChannel>, bool);

impl BlkFrontend {
    /// Connects to `socket`, takes ownership (SET_OWNER), negotiates protocol features
    /// (CONFIG is required; MQ and REPLY_ACK when offered), reads the config space, and settles
    /// on `min(wanted_queues, the backend's)` queues. Connecting and the whole negotiation end
    /// within `timeout`: a peer that does not answer (not a vhost-user backend, or one serving
    /// another frontend) is an error naming the step it did not answer. With `inflight` (a disk
    /// that reconnects), INFLIGHT_SHMFD is agreed too when the backend offers it.
    pub fn connect(
        socket: &Path,
        wanted_queues: u16,
        timeout: Duration,
        inflight: bool,
    ) -> Result<Self, FrontendError> {
        let deadline = Instant::now() + timeout;
        let fail = |step, why| FrontendError { socket: socket.to_path_buf(), step, why };
        let stream = connect_within(socket, deadline).map_err(|e| fail("connect", Failure::Connect(e)))?;
        let watchdog = SocketDeadline::arm(&stream, deadline)
            .map_err(|e| fail("connect (arming the timeout)", Failure::Connect(e)))?;
        let hang_up = stream.try_clone().map_err(|e| fail("connect", Failure::Connect(e)))?;
        let mut frontend = Frontend::from_stream(stream, wanted_queues.into());
        let negotiated = Self::negotiate(&mut frontend, wanted_queues, inflight);
        // A deadline that passed turns whatever the blocked step saw (an end-of-file from the
        // shut-down socket, most likely) into a timeout, and so does one that fired just after
        // the last step: the socket is shut down then.
        let fired = watchdog.disarm();
        let (backend_features, num_queues, config, channel, inflight) = match negotiated {
            Ok(_) if fired => return Err(fail("vhost-user negotiation", Failure::TimedOut(timeout))),
            Ok(done) => done,
            Err((step, _)) if fired => return Err(fail(step, Failure::TimedOut(timeout))),
            Err((step @ "GET_FEATURES", e)) if not_vhost_user(&e) => return Err(fail(step, Failure::NotVhostUser)),
            Err((step, e)) => return Err(fail(step, Failure::Vhost(e))),
        };
        Ok(BlkFrontend {
            socket: socket.to_path_buf(),
            frontend,
            hang_up,
            backend_features,
            num_queues,
            config,
            started: vec![],
            channel,
            inflight,
        })
    }

    /// The negotiation of [`BlkFrontend::connect`]: the backend's features, the queues agreed
    /// on, the config space and the backend channel, or the step that failed.
    fn negotiate(
        frontend: &mut Frontend,
        wanted_queues: u16,
        inflight: bool,
    ) -> Result<Negotiated, (&'static str, vhost::Error)> {
        let err = |step| move |e| (step, e);
        frontend.set_owner().map_err(err("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(err("GET_FEATURES"))?;
        if backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            return Err(err("feature negotiation")(vhost::Error::VhostUserProtocol(
                vhost::vhost_user::Error::InactiveFeature(VhostUserVirtioFeatures::PROTOCOL_FEATURES),
            )));
        }
        let offered = frontend.get_protocol_features().map_err(err("GET_PROTOCOL_FEATURES"))?;
        // BACKEND_REQ: the backend may tell us its config space changed (a live resize).
        let mut wanted = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ;
        // In-flight tracking is only worth its cost to the backend when we will reconnect.
        if inflight {
            wanted |= VhostUserProtocolFeatures::INFLIGHT_SHMFD;
        }
        let inflight = inflight && offered.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD);
        if !offered.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(err("protocol negotiation (CONFIG needed for the disk's capacity)")(
                vhost::Error::VhostUserProtocol(vhost::vhost_user::Error::FeatureMismatch),
            ));
        }
        frontend.set_protocol_features(offered & wanted).map_err(err("SET_PROTOCOL_FEATURES"))?;
        let channel = if offered.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
            let reply_ack = offered.contains(VhostUserProtocolFeatures::REPLY_ACK);
            let (channel, theirs) =
                open_channel(reply_ack).map_err(|e| ("backend channel", vhost::Error::IOError(e)))?;
            frontend.set_backend_request_fd(&theirs).map_err(err("SET_BACKEND_REQ_FD"))?;
            // Only the backend holds its end now: its death closes the channel.
            drop(theirs);
            Some(channel)
        } else {
            None
        };
        let num_queues = if offered.contains(VhostUserProtocolFeatures::MQ) {
            let backend_queues = frontend.get_queue_num().map_err(err("GET_QUEUE_NUM"))?;
            wanted_queues.min(u16::try_from(backend_queues).unwrap_or(u16::MAX)).max(1)
        } else {
            1
        };
        let buf = [0u8; BLK_CONFIG_SIZE as usize];
        let (_, mut config) =
            frontend.get_config(0, BLK_CONFIG_SIZE, VhostUserConfigFlags::empty(), &buf).map_err(err("GET_CONFIG"))?;
        set_config_num_queues(&mut config, num_queues);
        Ok((backend_features, num_queues, config, channel, inflight))
    }

    /// The backend channel, once (None when the backend does not offer BACKEND_REQ): serve it
    /// with [`crate::config_change::spawn`].
    pub fn take_backend_channel(&mut self) -> Option<BackendChannel> {
        self.channel.take()
    }

    /// True when INFLIGHT_SHMFD was agreed (the in-flight region goes to the backend).
    pub fn tracks_inflight(&self) -> bool {
        self.inflight
    }

    /// Reads the config space again (after the backend said it changed) and keeps it.
    pub fn reread_config(&mut self) -> Result<&[u8], FrontendError> {
        let buf = [0u8; BLK_CONFIG_SIZE as usize];
        let (_, mut config) = self
            .frontend
            .get_config(0, BLK_CONFIG_SIZE, VhostUserConfigFlags::empty(), &buf)
            .map_err(self.err("GET_CONFIG"))?;
        set_config_num_queues(&mut config, self.num_queues);
        self.config = config;
        Ok(&self.config)
    }

    /// Shuts the backend's socket down, so that a request blocked waiting for the backend
    /// returns (the probe does this when its timeout hits).
    pub fn hang_up(&self) -> std::io::Result<UnixStream> {
        self.hang_up.try_clone()
    }

    /// The virtio features to offer the guest: the backend's device and ring features, minus
    /// vhost-user's own bit and transport features this VMM does not implement.
    pub fn guest_features(&self) -> u64 {
        self.backend_features & (DEVICE_TYPE_FEATURES | TRANSPORT_FEATURES)
    }

    /// Queues agreed with the backend.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// The backend's config space (`struct virtio_blk_config`).
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// The socket's descriptor, to watch for the backend going away.
    pub fn socket_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn err(&self, step: &'static str) -> impl Fn(vhost::Error) -> FrontendError + '_ {
        move |e| FrontendError { socket: self.socket.clone(), step, why: Failure::Vhost(e) }
    }

    /// Starts the ready queues: the in-flight region first when INFLIGHT_SHMFD was agreed
    /// (GET_INFLIGHT_FD the first time, kept in `region`; SET_INFLIGHT_FD), SET_FEATURES with
    /// what the driver accepted, SET_MEM_TABLE with the memfd regions, then per queue
    /// SET_VRING_NUM/ADDR/BASE/CALL/KICK and SET_VRING_ENABLE. Queue `i` starts at `bases[i]`
    /// (0 when missing: a fresh ring). Ring addresses go over as this process's virtual
    /// addresses, as vhost-user requires.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        driver_features: u64,
        queues: &[QueueConfig],
        kicks: &[EventFd],
        calls: &[EventFd],
        bases: &[u16],
        region: &mut Option<InflightRegion>,
    ) -> Result<(), FrontendError> {
        if self.inflight {
            if region.is_none() {
                let queue_size = queues.iter().filter(|q| q.ready).map(|q| q.size).max().unwrap_or(0);
                let ask = VhostUserInflight { num_queues: self.num_queues, queue_size, ..Default::default() };
                *region = Some(self.frontend.get_inflight_fd(&ask).map_err(self.err("GET_INFLIGHT_FD"))?);
            }
            if let Some((info, file)) = region.as_ref() {
                self.frontend.set_inflight_fd(info, file.as_raw_fd()).map_err(self.err("SET_INFLIGHT_FD"))?;
            }
        }
        let features = (driver_features & self.backend_features) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        self.frontend.set_features(features).map_err(self.err("SET_FEATURES"))?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err("describing guest memory"))?;
        self.frontend.set_mem_table(&regions).map_err(self.err("SET_MEM_TABLE"))?;
        for (index, q) in queues.iter().enumerate().filter(|(_, q)| q.ready) {
            let (Some(kick), Some(call)) = (kicks.get(index), calls.get(index)) else { break };
            if !q.is_valid() {
                return Err(self.err("queue setup")(vhost::Error::InvalidQueue));
            }
            let host = |gpa: u64| {
                mem.get_host_address(GuestAddress(gpa)).map(|p| p as u64).map_err(|_| vhost::Error::InvalidGuestMemory)
            };
            let addr = VringConfigData {
                queue_max_size: q.max_size,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: host(q.desc).map_err(self.err("ring address"))?,
                used_ring_addr: host(q.used).map_err(self.err("ring address"))?,
                avail_ring_addr: host(q.avail).map_err(self.err("ring address"))?,
                log_addr: None,
            };
            self.frontend.set_vring_num(index, q.size).map_err(self.err("SET_VRING_NUM"))?;
            self.frontend.set_vring_addr(index, &addr).map_err(self.err("SET_VRING_ADDR"))?;
            let base = bases.get(index).copied().unwrap_or(0);
            self.frontend.set_vring_base(index, base).map_err(self.err("SET_VRING_BASE"))?;
            self.frontend.set_vring_call(index, call).map_err(self.err("SET_VRING_CALL"))?;
            self.frontend.set_vring_kick(index, kick).map_err(self.err("SET_VRING_KICK"))?;
            self.frontend.set_vring_enable(index, true).map_err(self.err("SET_VRING_ENABLE"))?;
            self.started.push(index);
        }
        Ok(())
    }

    /// Stops the started queues (GET_VRING_BASE), so the backend lets go of guest memory.
    pub fn stop(&mut self) -> Result<(), FrontendError> {
        for index in std::mem::take(&mut self.started) {
            self.frontend.set_vring_enable(index, false).map_err(self.err("SET_VRING_ENABLE"))?;
            self.frontend.get_vring_base(index).map_err(self.err("GET_VRING_BASE"))?;
        }
        Ok(())
    }
}

/// Whether the first reply's error means the peer speaks something other than vhost-user: a
/// header that does not parse, or fewer bytes than a reply before the peer closed.
fn not_vhost_user(e: &vhost::Error) -> bool {
    use vhost::vhost_user::Error as E;
    matches!(e, vhost::Error::VhostUserProtocol(E::InvalidMessage | E::PartialMessage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_num_queues_is_the_agreed_count() {
        let mut config = vec![0xffu8; BLK_CONFIG_SIZE as usize];
        set_config_num_queues(&mut config, 2);
        assert_eq!(&config[34..36], &[2, 0]);
        assert_eq!(config[33], 0xff);
        let mut short = vec![0u8; 8];
        set_config_num_queues(&mut short, 2);
        assert_eq!(short, vec![0u8; 8], "a short config is left alone");
    }
}
