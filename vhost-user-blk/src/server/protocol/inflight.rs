//! In-flight tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD): not offered yet.

use std::fs::File;

use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::{Error as VhostUserError, Result as VhostUserResult};
use vhost_user_backend::VringRwLock;

use super::memory::GuestRegions;
use crate::server::backend::BlkBackend;

/// The connection's in-flight region, if the frontend set one up.
pub struct InflightState {}

impl InflightState {
    /// No region yet, for `num_queues` queues.
    pub fn new(_num_queues: usize) -> InflightState {
        InflightState {}
    }

    /// Before queue `index` starts: nothing to resubmit without a region.
    pub fn before_start(&mut self, _index: usize, _vring: &VringRwLock, _regions: &GuestRegions, _backend: &BlkBackend) -> VhostUserResult<()> {
        Ok(())
    }

    /// GET_INFLIGHT_FD.
    pub fn get_fd(&mut self, _msg: &VhostUserInflight, _backend: &BlkBackend) -> VhostUserResult<(VhostUserInflight, File)> {
        Err(VhostUserError::InvalidOperation("in-flight tracking is not offered"))
    }

    /// SET_INFLIGHT_FD.
    pub fn set_fd(&mut self, _msg: &VhostUserInflight, _file: File, _backend: &BlkBackend) -> VhostUserResult<()> {
        Err(VhostUserError::InvalidOperation("in-flight tracking is not offered"))
    }
}
