//! Integration and end-to-end test support for strata.
//!
//! - [`guest`]: the `strata-guest` crate (re-exported): a Debian cloud kernel, busybox and an
//!   initramfs built on first use and cached under the workspace `target/guest-artifacts/`, and
//!   a QEMU (TCG) runner that boots them with vhost-user-blk disks and captures the serial console.
//! - [`daemon`]: strata's vhost-user-blk daemon as a child process (start, SIGTERM stop, SIGKILL).
//! - [`bins`]: find (and if needed build) the workspace's binaries from a test.
//! - [`scratch`]: a self-deleting scratch directory (from `strata-guest`).
//! - [`timings`]: save a benchmark's samples as a timings run for `docs/bench.md`.
//!
//! The tests themselves live in `tests/tests/`.

pub mod bins;
pub mod daemon;
pub mod timings;
pub use strata_guest as guest;
pub use strata_guest::scratch;
