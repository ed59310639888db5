//! The daemon's own vhost-user backend protocol layer (see docs/server.md, "The vhost-user
//! protocol layer"): the vhost crate parses and validates messages; these files hold what the
//! daemon does with them.
//!
//! - [`dispatch`]: one connection, message by message (and SET_BACKEND_REQ_FD);
//! - [`handler`]: the device state of a connection and its answer to each request;
//! - [`memory`]: the frontend's memory regions;
//! - [`workers`]: the queue worker threads and their epoll sets;
//! - [`inflight`] and [`inflight_region`]: in-flight tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD):
//!   the region's layout and recovery, and its updates on every pop and completion;
//! - [`backend_channel`]: messages from the daemon to the frontend (CONFIG_CHANGE_MSG);
//! - [`limits`]: what a frontend may ask for.

pub mod backend_channel;
pub mod dispatch;
pub mod handler;
pub mod inflight;
pub mod inflight_region;
pub mod limits;
pub mod memory;
pub mod wire;
pub mod workers;
