//! Writing a new image file where a path may already hold one, without losing the old one on a
//! slip. The existing file is opened without truncation and its exclusive lock taken (a file a
//! daemon serves is refused here, before anything is written); the new image is written under a
//! temporary name in the same directory and renamed over the old file only once it is complete,
//! with the old file's lock held until then. Any failure before the rename leaves the old file
//! byte for byte as it was, and the temporary file is removed.
//!
//! Only regular files are replaced this way: a path naming a directory, a device or a socket is
//! refused. A symbolic link is followed (its target is replaced, the link stays). The new file
//! takes the old one's permission bits (and its owner, where the process may set it); other hard
//! links to the old file keep the old contents.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use blockdev::{Error, ErrorKind, Result};

/// What a create or convert may find at its target path and still write there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    /// Nothing, an empty file, or a file whose first MiB is all zeros; anything else (a qcow2
    /// header, a file system, data) is refused, naming what it is (`qcow2 create` without
    /// `--force`).
    IfBlank,
    /// Any regular file (`qcow2 create --force`, `qcow2 convert`, as qemu-img).
    Always,
}

/// Longest part of the target's name kept in the temporary name (NAME_MAX is 255).
const NAME_KEEP: usize = 200;

/// A new image file being written beside `target`, renamed over it by [`NewFile::commit`].
#[derive(Debug)]
pub struct NewFile {
    /// The path as the caller gave it (for messages).
    shown: PathBuf,
    /// Where the new file ends up (a symbolic link resolved).
    target: PathBuf,
    /// The temporary file being written.
    tmp: PathBuf,
    /// The existing file, opened and exclusively locked, while it has not been replaced.
    old: Option<File>,
    /// Renamed into place: nothing to clean up.
    committed: bool,
}

fn io_err(e: std::io::Error, path: &Path, what: &str) -> Error {
    Error::from_io(e, format!("{}: {what}", path.display()))
}

/// The kind of a file that is not a regular one, for messages.
fn kind_name(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

impl NewFile {
    /// Take `path` for a new image: resolve it, open and lock what it holds (refusing it per
    /// `overwrite`), and create an empty temporary file beside it. Nothing existing is changed.
    pub fn begin(path: &Path, overwrite: Overwrite) -> Result<NewFile> {
        let shown = path.to_path_buf();
        let target = match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => path.to_path_buf(),
            Err(e) => return Err(io_err(e, path, "look at it")),
            Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path).map_err(|e| {
                Error::from_io(e, format!("{}: a symbolic link whose target cannot be resolved", path.display()))
            })?,
            Ok(_) => path.to_path_buf(),
        };
        let old = match std::fs::metadata(&target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(e, path, "look at it")),
            Ok(m) if !m.file_type().is_file() => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "{}: is {}; only regular files are written as images",
                        path.display(),
                        kind_name(m.file_type())
                    ),
                ))
            }
            Ok(_) => Some(Self::lock_existing(&target, path, overwrite)?),
        };
        let tmp = Self::create_tmp(&target, old.as_ref())?;
        Ok(NewFile { shown, target, tmp, old, committed: false })
    }

    /// Open the existing target for writing (never truncating it), take its exclusive lock and
    /// look at what it holds.
    fn lock_existing(target: &Path, shown: &Path, overwrite: Overwrite) -> Result<File> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(target)
            .map_err(|e| io_err(e, shown, "open"))?;
        blockdev::raw::lock::lock_file(f.as_raw_fd(), shown, true)?;
        blockdev::signature::refuse_overwrite(&f, shown, overwrite == Overwrite::Always)?;
        Ok(f)
    }

    /// Create an empty temporary file in the target's directory, with the old file's mode and
    /// owner when there is one.
    fn create_tmp(target: &Path, old: Option<&File>) -> Result<PathBuf> {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target.file_name().map(|n| n.as_bytes()).unwrap_or(b"image");
        let name = &name[..name.len().min(NAME_KEEP)];
        for n in 0..1000u32 {
            let mut tmp_name = b".".to_vec();
            tmp_name.extend_from_slice(name);
            tmp_name.extend_from_slice(format!(".{}-{n}.tmp", std::process::id()).as_bytes());
            let tmp = dir.join(OsString::from_vec(tmp_name));
            let f = match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o666)
                .custom_flags(libc::O_CLOEXEC)
                .open(&tmp)
            {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(e, &tmp, "create the new image file")),
            };
            if let Some(old) = old {
                if let Err(e) = Self::copy_owner(old, &f) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(io_err(e, &tmp, "set its mode"));
                }
            }
            return Ok(tmp);
        }
        Err(Error::new(ErrorKind::Io, format!("{}: no free temporary name beside it", target.display())))
    }

    /// Give `new` the permission bits of `old`, and its owner where allowed.
    fn copy_owner(old: &File, new: &File) -> std::io::Result<()> {
        let m = old.metadata()?;
        // SAFETY: fchown on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::fchown(new.as_raw_fd(), m.uid(), m.gid()) };
        if rc != 0 {
            // Only a privileged process may give a file away; the mode still follows.
            tracing::debug!("fchown: {}", std::io::Error::last_os_error());
        }
        new.set_permissions(std::fs::Permissions::from_mode(m.mode() & 0o7777))
    }

    /// Where to write the new image.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// True when an existing file is being replaced.
    pub fn replaces(&self) -> bool {
        self.old.is_some()
    }

    /// Make the new file durable and rename it into place (over the old file, still locked; or,
    /// when there was none, only if nothing appeared there meanwhile).
    pub fn commit(mut self) -> Result<()> {
        let f = File::open(&self.tmp).map_err(|e| io_err(e, &self.tmp, "open"))?;
        f.sync_all().map_err(|e| io_err(e, &self.tmp, "sync"))?;
        drop(f);
        if self.old.is_some() {
            std::fs::rename(&self.tmp, &self.target)
                .map_err(|e| io_err(e, &self.shown, "rename the new image into place"))?;
        } else {
            self.rename_noreplace()?;
        }
        self.committed = true;
        if let Some(dir) = self.target.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The rename is only durable once the directory is.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Rename the temporary file to a target that did not exist, refusing one that appeared.
    fn rename_noreplace(&self) -> Result<()> {
        let cstr = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| Error::new(ErrorKind::InvalidInput, format!("{}: a NUL byte in the path", p.display())))
        };
        let (from, to) = (cstr(&self.tmp)?, cstr(&self.target)?);
        // SAFETY: renameat2 reads two NUL-terminated paths that live across the call.
        let rc = unsafe {
            libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE)
        };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EEXIST) => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{}: appeared while the new image was written; left as it is", self.shown.display()),
            )),
            // File systems without RENAME_NOREPLACE: a hard link refuses an existing name too.
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
                std::fs::hard_link(&self.tmp, &self.target)
                    .map_err(|e| io_err(e, &self.shown, "link the new image"))?;
                let _ = std::fs::remove_file(&self.tmp);
                Ok(())
            }
            _ => Err(io_err(e, &self.shown, "rename the new image into place")),
        }
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = std::fs::remove_file(&self.tmp) {
                tracing::warn!("{}: cannot remove the unfinished new image: {e}", self.tmp.display());
            }
        }
        // Dropping `old` closes it, which releases its lock (no io_uring ring holds this fd).
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(p: &Path) -> Vec<u8> {
        std::fs::read(p).unwrap()
    }

    #[test]
    fn a_failure_before_commit_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.img");
        std::fs::write(&p, b"keep me").unwrap();
        let nf = NewFile::begin(&p, Overwrite::Always).unwrap();
        assert!(nf.replaces());
        std::fs::write(nf.tmp_path(), b"half").unwrap();
        drop(nf);
        assert_eq!(bytes(&p), b"keep me");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temporary file left behind");
    }

    #[test]
    fn commit_replaces_keeping_the_mode_and_follows_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.img");
        std::fs::write(&real, b"old").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("link.img");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let nf = NewFile::begin(&link, Overwrite::Always).unwrap();
        std::fs::write(nf.tmp_path(), b"new").unwrap();
        nf.commit().unwrap();
        assert_eq!(bytes(&real), b"new");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::metadata(&real).unwrap().mode() & 0o7777, 0o640);
    }

    #[test]
    fn blank_only_refuses_data_and_non_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data.img");
        std::fs::write(&p, b"\0\0x").unwrap();
        let e = NewFile::begin(&p, Overwrite::IfBlank).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        std::fs::write(&p, [0u8; 4096]).unwrap();
        NewFile::begin(&p, Overwrite::IfBlank).unwrap();
        let e = NewFile::begin(dir.path(), Overwrite::Always).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_new_target_that_appears_meanwhile_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new.img");
        let nf = NewFile::begin(&p, Overwrite::IfBlank).unwrap();
        assert!(!nf.replaces());
        std::fs::write(&p, b"someone else's").unwrap();
        let e = nf.commit().unwrap_err();
        assert!(e.to_string().contains("appeared"), "{e}");
        assert_eq!(bytes(&p), b"someone else's");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_locked_file_is_refused_before_anything_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("served.img");
        std::fs::write(&p, b"served").unwrap();
        let holder = std::fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
        blockdev::raw::lock::lock_file(holder.as_raw_fd(), &p, true).unwrap();
        let e = NewFile::begin(&p, Overwrite::Always).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
        assert_eq!(bytes(&p), b"served");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
