//! RAID 0, 1 and 5 over any [`blockdev::BlockDev`] (aggregation): N member devices become one.
//!
//! - [`create`] writes a superblock on every member ([`superblock`]) and [`assemble`] finds the
//!   members of an array again by UUID, refusing stale or conflicting ones by name, and starting
//!   degraded when a member is missing.
//! - RAID 0 stripes by chunk; RAID 1 mirrors N ways; RAID 5 is md's left-symmetric layout with
//!   per-stripe locks, read-modify-write or reconstruct-write, and degraded reads and writes.
//! - The RAID 5 write hole is closed by a partial parity log ([`raid5::ppl`]); a write-intent
//!   bitmap bounds the resync after a crash.
//! - [`Array::rebuild`] rebuilds a replacement while I/O goes on; [`Array::scrub`] checks and
//!   repairs; read errors are repaired from redundancy and a member that keeps failing is
//!   kicked out.

mod array;
mod assemble;
mod bitmap;
mod core;
mod flush_group;
mod format;
pub mod layout;
mod member;
mod metrics;
mod raid0;
mod raid1;
pub mod raid5;
mod rebuild;
mod scrub;
pub mod stripe_lock;
pub mod superblock;

pub use array::{Array, MemberStatus, Status};
pub use assemble::{assemble, create, examine, read_superblock, AssembleOptions, CreateOptions, MemberList};
pub use member::MemberState;
pub use rebuild::RebuildOptions;
pub use scrub::ScrubReport;
pub use superblock::{Level, Superblock};
