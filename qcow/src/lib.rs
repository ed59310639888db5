//! qcow2 images over files (emulation): an image file (any [`blockdev::BlockDev`], normally a
//! growable [`blockdev::RawFile`]) becomes a disk.
//!
//! The metadata part (header, L1/L2 and refcount tables, write-back slice caches) turns each
//! request into a plan under a short lock (`plan`); the engine (`read`, `write`) issues the data
//! I/O without holding it. Allocation is serialised by an async-aware lock; metadata reaches the
//! disk on the guest's FLUSH in the order that keeps the image consistent (`flush`).
//!
//! The public API: [`create()`], [`open_path`] / [`open_dev`] (an image as a [`Qcow2`] block
//! device), and the tools as `qemu-img` has them: [`check`], [`map`], [`resize`],
//! [`snapshot`], [`convert`].

mod alloc;
pub mod backing_policy;
pub(crate) mod cache;
pub mod check;
pub(crate) mod compress;
pub(crate) mod compress_write;
pub mod convert;
pub mod create;
mod dev;
pub(crate) mod flush;
pub(crate) mod format;
pub mod header;
pub(crate) mod imagefile;
mod in_place;
pub(crate) mod l1l2;
pub mod map;
pub(crate) mod meta;
mod metrics;
pub(crate) mod newfile;
pub(crate) mod open;
pub(crate) mod overlap;
pub(crate) mod plan;
pub(crate) mod read;
pub mod resize;
mod shared;
pub mod snapshot;
pub(crate) mod write;
mod zero;

pub use backing_policy::BackingPolicy;
pub use create::{create, create_path, create_path_with, CreateOptions, Preallocation};
pub use dev::Qcow2;
pub use header::{Compression, Header};
pub use newfile::Overwrite;
pub use open::{open_dev, open_path, Options};
