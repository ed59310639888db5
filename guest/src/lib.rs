//! strata-guest: real guests for strata's end-to-end tests and for `blkctl fio`: Debian's cloud
//! kernel and busybox, a generated initramfs (optionally carrying fio), a QEMU (TCG) runner,
//! vmm-mini as a runner (directly, or nested in a QEMU TCG guest: [`vmm_mini`], [`fio::nested`]),
//! a qemu-storage-daemon wrapper (the reference server) and a self-deleting scratch directory.
//!
//! ```no_run
//! use strata_guest::{GuestArtifacts, Initramfs, QemuGuest};
//! # fn main() -> Result<(), strata_guest::Error> {
//! let art = GuestArtifacts::ensure()?;
//! let initrd = std::env::temp_dir().join("initrd.cpio");
//! Initramfs::builder().artifacts(&art).script("echo hello from the guest").build(&initrd)?;
//! let out = QemuGuest::new(&art.kernel, &initrd).run()?;
//! assert!(out.script_output().contains("hello from the guest"));
//! # Ok(()) }
//! ```
//!
//! Artifacts are fetched with `apt-get download` and unpacked with `dpkg -x` on first use,
//! then cached under `<target>/guest-artifacts/` (see [`cache_root`]), keyed by package and
//! version, guarded by a lock file so parallel tests download once.

mod artifacts;
mod child;
mod cpio;
pub mod fio;
mod initramfs;
mod qemu;
pub mod scratch;
pub mod vmm_mini;

pub use artifacts::{cache_root, GuestArtifacts, VIRTIO_MODULES};
pub use cpio::CpioWriter;
pub use initramfs::{Initramfs, InitramfsBuilder, END_MARKER, START_MARKER};
pub use qemu::{qemu_binary, qemu_escape, require_qemu, GuestOutput, QemuGuest, RunningGuest, StorageDaemon};

use std::path::PathBuf;

/// Errors from fetching artifacts, building an initramfs or running a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An external tool (apt-get, dpkg, ldd, xz, qemu-storage-daemon) could not run or failed.
    #[error("`{cmd}` failed: {detail}")]
    Command {
        /// The command line.
        cmd: String,
        /// Exit status and stderr, or the spawn error.
        detail: String,
    },
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Something expected in a package or on the host is not there.
    #[error("not found: {0}")]
    NotFound(String),
    /// The guest ran but did not do what was asked; `console` is its serial console.
    #[error("{what}; console:\n{console}")]
    Guest {
        /// What went wrong.
        what: String,
        /// The console.
        console: String,
    },
    /// The guest did not power off in time; `output` is the console so far.
    #[error("guest timed out after {secs} s; console:\n{output}")]
    Timeout {
        /// The timeout.
        secs: u64,
        /// Console output captured before the guest was killed.
        output: String,
    },
}

/// A `Result` with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Adds file context to an I/O error.
pub(crate) fn io_err(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}

/// Runs a command, returning its stdout, or an error with its status and stderr.
pub(crate) fn run_cmd(cmd: &mut std::process::Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| Error::Command { cmd: shown.clone(), detail: e.to_string() })?;
    if !out.status.success() {
        return Err(Error::Command {
            cmd: shown,
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
