//! Ownership of a file: an OFD lock over the whole file, exclusive for writers and shared for
//! readers, as QEMU takes. A lock still held for a moment by a process that just exited (or a
//! ring that has not yet dropped its registration) is retried for up to a second. Our own lock is
//! released explicitly when the disk is dropped ([`unlock_file`]): closing the fd alone would
//! leave it held until every io_uring registration of the file is gone, which the kernel
//! finishes asynchronously, so a process that opened the file right after (qemu-img, say) could
//! still find it locked.
//!
//! A refusal names who holds the lock ([`holder`]): this process (it keeps a record of the files
//! it has locked), or another process by pid and name where the kernel tells.

use std::os::fd::RawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use super::holder;
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
    holder::forget(fd);
    if let Err(e) = set_lock(fd, libc::F_UNLCK) {
        tracing::debug!("unlock fd {fd}: {e}");
    }
}

/// Take the lock on `fd` (opened from `path`), retrying a conflict for up to [`LOCK_RETRY`]. A
/// refusal names the holder: "this process already has it open (as PATH)", "process PID (NAME)
/// has it open", or, when nothing better is known, "another process has it open"; the last two
/// add where to go instead when the strata daemon serves the file.
pub fn lock_file(fd: RawFd, path: &Path, exclusive: bool) -> Result<()> {
    let start = Instant::now();
    loop {
        match try_lock(fd, exclusive) {
            Ok(()) => {
                holder::record(fd, path);
                return Ok(());
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
                if start.elapsed() >= LOCK_RETRY {
                    return Err(refused(fd, path, exclusive));
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

/// The error for a lock on `path` that stayed refused: who holds it, and for another process
/// where to go when the strata daemon serves the file.
fn refused(fd: RawFd, path: &Path, exclusive: bool) -> Error {
    let what = if exclusive { "write" } else { "read" };
    let who = holder::find(fd, if exclusive { libc::F_WRLCK } else { libc::F_RDLCK });
    let hint = if who.is_this_process() { "" } else { " (if the strata daemon serves it, use its control socket)" };
    Error::new(
        ErrorKind::Locked,
        format!("{}: cannot take the {what} lock: {}{hint}", path.display(), who.describe(path, !exclusive)),
    )
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use crate::{OpenOptions, RawFile};

    use super::*;

    fn file(dir: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
        p
    }

    #[test]
    fn a_second_open_by_this_process_says_so_and_names_the_first_path() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(&dir, "a.img");
        let link = dir.path().join("link.img");
        std::fs::hard_link(&a, &link).unwrap();
        let _first = RawFile::open(&a, OpenOptions::default()).unwrap();
        let e = RawFile::open(&link, OpenOptions::default()).err().expect("second open refused");
        assert_eq!(e.kind(), ErrorKind::Locked);
        let msg = e.to_string();
        assert!(msg.contains(holder::THIS_PROCESS), "{msg}");
        assert!(msg.contains(&format!("(as {})", a.display())), "{msg}");
        assert!(!msg.contains("another process") && !msg.contains("control socket"), "{msg}");
        // The read lock a read-only open wants is refused too, and says whose write lock it is.
        let e = RawFile::open(&a, OpenOptions { read_only: true, ..Default::default() }).err().unwrap();
        assert!(e.to_string().contains(&format!("{} for writing", holder::THIS_PROCESS)), "{e}");
    }

    #[test]
    fn a_lock_off_the_record_is_found_in_proc_as_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(&dir, "a.img");
        // Locked directly, as a library other than this module would: not on the record, so
        // only /proc/self/fdinfo can tell who holds it.
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&a).unwrap();
        try_lock(f.as_raw_fd(), true).unwrap();
        let e = RawFile::open(&a, OpenOptions::default()).err().expect("refused");
        assert!(e.to_string().contains(holder::THIS_PROCESS), "{e}");
    }
}
