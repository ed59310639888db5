//! strata's front end: disk specs, the stack builder that turns a spec into a device stack, the
//! bench harness behind `blkctl bench`, and the vhost-user-blk server that exposes strata disks as
//! virtio-blk devices over vhost-user sockets, with its control socket and configuration file.

pub mod api;
pub mod bench;
pub mod config;
pub mod fio;
pub mod server;
pub mod spec;
pub mod stack;
