//! `blkctl fio`: fio job files run in a real guest against a strata disk served by the daemon,
//! optionally compared with qemu-storage-daemon serving a copy of the same data; the guest runs
//! under QEMU (TCG) or vmm-mini (directly, or nested in a QEMU TCG guest).

pub mod runner;
pub mod summary;
pub mod vmm;
