//! The vhost-user-blk server: virtio-blk request handling over vhost-user, one worker thread per
//! queue with its own io_uring, guest buffers handed to the kernel without copying.
//!
//! - [`virtio_blk`]: the spec's constants, features and configuration space;
//! - [`chain`]: descriptor chains from untrusted guest memory, mapped into `IoBufs`;
//! - [`request`]: parsing, validation and execution of one request;
//! - [`backend`] and `worker`: the export's backend state and the per-queue data path;
//!   `poll_window`: how long a worker busy-polls after work (adaptive, as QEMU's);
//! - [`serve`]: the socket of one export and its frontend connections;
//! - [`protocol`]: our vhost-user backend protocol layer (messages, connections, workers);
//! - [`service`]: the pidfile and systemd's readiness notification;
//! - [`qos`]: per-export I/O limits and throttle groups;
//! - [`disk_spec`]: the `--disk` spec; [`export`] and [`stats`]: export settings and counters.

pub mod backend;
pub mod chain;
pub mod daemon;
pub mod demo;
pub mod disk_spec;
pub mod export;
mod poll_window;
pub mod protocol;
pub mod qos;
pub mod request;
pub mod serve;
pub mod service;
pub mod stats;
pub mod virtio_blk;
mod worker;

pub use daemon::Daemon;
pub use disk_spec::DiskSpec;
pub use export::{Export, ExportSettings};
pub use serve::ServedExport;
pub use stats::StatsSnapshot;
