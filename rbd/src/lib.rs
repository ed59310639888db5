//! Ceph RBD images as strata devices ([`RbdDev`]), through librbd's C API.
//!
//! librbd and librados are loaded at run time ([`ffi`]): the default build and binary need no
//! Ceph packages, and opening an image on a machine without them says what to install. Opening
//! (connect, open, exclusive lock) and closing run on Ceph client threads ([`spawn_ceph_thread`]),
//! never on a queue worker; requests are `rbd_aio_*` calls whose completions reach the worker
//! that issued them through its engine's wake-up path ([`aio`] explains why not librbd's
//! eventfd notification).

mod aio;
mod config;
mod dev;
pub mod ffi;
mod image;
mod launcher;
#[cfg(feature = "test-utils")]
pub mod testing;

pub use config::{RbdConfig, DEFAULT_TIMEOUT};
pub use dev::RbdDev;
pub use launcher::{spawn_ceph_thread, start_launcher};
