//! qcow2 images over files (emulation): an image file (any [`blockdev::BlockDev`], normally a
//! growable [`blockdev::RawFile`]) becomes a disk.
//!
//! The metadata part (header, L1/L2 and refcount tables, write-back slice caches) turns each
//! request into a plan under a short lock ([`plan`]); the engine ([`read`], [`write`]) issues the
//! data I/O without holding it. Allocation is serialised by an async-aware lock; metadata reaches
//! the disk on the guest's FLUSH in the order that keeps the image consistent ([`flush`]).

mod alloc;
pub mod cache;
pub mod check;
pub mod compress;
pub mod compress_write;
pub mod convert;
pub mod create;
mod dev;
pub mod flush;
pub mod format;
pub mod header;
pub mod imagefile;
pub mod l1l2;
pub mod map;
pub mod meta;
pub mod newfile;
pub mod open;
pub mod overlap;
pub mod plan;
pub mod read;
pub mod resize;
mod shared;
pub mod snapshot;
pub mod write;
mod zero;

pub use create::{create, create_path, create_path_with, CreateOptions, Preallocation};
pub use dev::Qcow2;
pub use header::{Compression, Header};
pub use newfile::Overwrite;
pub use open::{open_dev, open_path, Options};
pub use shared::Shared;
