//! strata's daemon: disk specs, the stack builder that turns a spec into a device stack, and the
//! vhost-user-blk server that exposes strata disks as virtio-blk devices over vhost-user sockets,
//! with its control socket and configuration file. `blkctl` (its own crate) drives it.

pub mod api;
pub mod config;
pub mod metrics;
pub mod sandbox;
pub mod server;
pub mod spec;
pub mod stack;

/// Whether log lines on stderr may carry ANSI colour: only on a terminal, and never when
/// `NO_COLOR` is set (no-color.org), so logs written to files and journals stay plain text.
pub fn log_colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
