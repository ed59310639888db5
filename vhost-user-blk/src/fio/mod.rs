//! `blkctl fio`: fio job files run in a real guest against a strata disk served by the daemon,
//! optionally compared with qemu-storage-daemon serving a copy of the same data.

pub mod runner;
pub mod summary;
