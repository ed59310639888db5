//! Ownership of a file: an OFD lock over the whole file, exclusive for writers and shared for
//! readers, as QEMU takes. A lock still held for a moment by a process that just exited (or a
//! ring that has not yet dropped its registration) is retried for up to a second. Our own lock is
//! released explicitly when the disk is dropped ([`unlock_file`]): closing the fd alone would
//! leave it held until every io_uring registration of the file is gone, which the kernel
//! finishes asynchronously, so a process that opened the file right after (qemu-img, say) could
//! still find it locked.

use std::os::fd::RawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{Error, ErrorKind, Result};

/// How long a conflicting lock is retried before refusing.
pub const LOCK_RETRY: Duration = Duration::from_secs(1);

fn set_lock(fd: RawFd, kind: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock is plain data; zeroed is a valid value that we then fill in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    // SAFETY: F_OFD_SETLK reads the flock struct we pass, which lives across the call.
    let rc = unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &fl) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn try_lock(fd: RawFd, exclusive: bool) -> std::io::Result<()> {
    set_lock(fd, if exclusive { libc::F_WRLCK } else { libc::F_RDLCK })
}

/// Release the lock [`lock_file`] took on `fd` (the open file description's whole-file OFD
/// lock), whoever else still holds a reference to the description.
pub fn unlock_file(fd: RawFd) {
    if let Err(e) = set_lock(fd, libc::F_UNLCK) {
        tracing::debug!("unlock fd {fd}: {e}");
    }
}

/// Take the lock on `fd` (opened from `path`), retrying a conflict for up to [`LOCK_RETRY`].
pub fn lock_file(fd: RawFd, path: &Path, exclusive: bool) -> Result<()> {
    let start = Instant::now();
    loop {
        match try_lock(fd, exclusive) {
            Ok(()) => return Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
                if start.elapsed() >= LOCK_RETRY {
                    let what = if exclusive { "write" } else { "read" };
                    return Err(Error::new(
                        ErrorKind::Locked,
                        format!(
                            "{}: cannot take the {what} lock: another process has it open{} (if the \
                             strata daemon serves it, use its control socket)",
                            path.display(),
                            if exclusive { "" } else { " for writing" }
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Filesystems without OFD lock support: go on unlocked, but say so.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOLCK | libc::EOPNOTSUPP)) => {
                tracing::warn!("{}: file locking not supported here ({e}); opening without a lock", path.display());
                return Ok(());
            }
            Err(e) => return Err(Error::from_io(e, format!("{}: lock", path.display()))),
        }
    }
}
