//! Start-up checks: io_uring must exist and support every opcode the engine issues.

use io_uring::{IoUring, Probe};

use crate::{Error, ErrorKind, Result};

/// The opcodes the engine issues (one list, shared with the ring's restrictions).
const REQUIRED: &[(u8, &str, &str)] = super::restrict::SQE_OPS;

/// Check that `ring`'s kernel supports every opcode we use; the error names the missing one.
pub fn check_opcodes(ring: &IoUring) -> Result<()> {
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| Error::from_io(e, "io_uring: cannot probe supported opcodes (needs Linux 5.6 or newer)"))?;
    for &(code, what, since) in REQUIRED {
        if !probe.is_supported(code) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("io_uring: this kernel does not support {what}; strata needs Linux {since} or newer"),
            ));
        }
    }
    Ok(())
}

/// Explain a failure to create a ring (io_uring disabled by sysctl, seccomp, old kernel).
pub fn explain_setup_error(err: std::io::Error) -> Error {
    let hint = match err.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel has no io_uring (needs Linux 5.6 or newer)",
        Some(libc::EPERM) => "io_uring is disabled (check sysctl kernel.io_uring_disabled, or a seccomp policy)",
        Some(libc::ENOMEM) => "not enough locked memory for the ring (raise RLIMIT_MEMLOCK or use fewer entries)",
        _ => "io_uring setup failed",
    };
    Error::from_io(err, format!("io_uring: {hint}"))
}
