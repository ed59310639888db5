//! Thin provisioning: a pool of data blocks shared by many sparse volumes and writable
//! snapshots (multiplexing, one device → N), in the manner of dm-thin.
//!
//! - [`Pool`]: create/open a pool on one device (metadata area, then data) or on a metadata
//!   device plus a data device; volumes are created (with overcommit), snapshotted, resized,
//!   removed and listed through it, and its metadata is committed on FLUSH or FUA. A shrink
//!   must be asked for and keeps mapped data unless told to drop it ([`ResizeOptions`]).
//! - [`existing_pool`]: what a device holds when it already holds a pool (before `pool-create`
//!   overwrites it).
//! - [`ThinVolume`]: a volume as a [`BlockDev`](blockdev::BlockDev).
//! - [`check`]: the checker (space map against mappings; leaks repairable).
//!
//! The on-disk format is in [`format`] (superblock, checksummed pages) and `docs/thin.md`.

pub mod check;
mod dir;
pub mod format;
mod load;
mod metaio;
pub mod metrics;
mod paged;
mod pool;
mod probe;
mod resize;
mod state;
mod volume;

pub use load::Audit;
pub use pool::{check_name, overcommit_text, Pool, PoolConfig, PoolInfo, VolumeInfo};
pub use probe::existing_pool;
pub use resize::{ResizeOptions, Resized};
pub use volume::ThinVolume;

/// Largest virtual size of a volume (256 TiB).
pub const MAX_VOLUME_SIZE: u64 = 256 << 40;
