//! `blkctl`'s library: the benchmark harness behind `blkctl bench` (in-process devices and
//! vhost-user-blk servers through libblkio) and the fio runner behind `blkctl fio` (a fio job in
//! a QEMU or vmm-mini guest on a disk that strata serves). The command line is in
//! `src/bin/blkctl/`; the daemon and the stack builder it drives are in `vhost_user_blk`.

pub mod bench;
pub mod fio;
pub mod progress;
