//! Changing the size of an open [`RawFile`] while it is in use: a regular file is extended (or,
//! with `shrink`, truncated); a block device's size is its own, so it is read again and must be
//! what was asked for.

use std::sync::atomic::Ordering;

use super::RawFile;
use crate::size::format_iec;
use crate::{check_resize, BlockDev, Error, ErrorKind, Result};

impl RawFile {
    /// Resize to `new_size` bytes (see [`BlockDev::resize`]); returns the size now.
    pub(super) fn resize_to(&self, new_size: u64, shrink: bool) -> Result<u64> {
        let inner = &self.inner;
        let what = format!("raw file {}", inner.path.display());
        if inner.opts.read_only {
            return Err(Error::new(ErrorKind::ReadOnly, format!("{what}: opened read-only, cannot be resized")));
        }
        if inner.is_block_device {
            // The kernel owns a block device's size (lvextend, a grown LUN): look again.
            let now = self.refresh_size()?;
            if new_size != now {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "block device {}: is {} ({now} bytes), not the {} ({new_size} bytes) asked for: \
                         grow the device itself first (lvextend, the storage array), then resize to its size",
                        inner.path.display(),
                        format_iec(now),
                        format_iec(new_size)
                    ),
                ));
            }
            return Ok(now);
        }
        let old = self.size();
        check_resize(&what, old, new_size, u64::from(inner.info.logical_block_size), shrink)?;
        if new_size == old {
            return Ok(old);
        }
        inner._file.set_len(new_size).map_err(|e| Error::from_io(e, format!("{what}: set length to {new_size}")))?;
        // The new length is durable before anyone is told about it.
        inner._file.sync_all().map_err(|e| Error::from_io(e, format!("{what}: sync after resize")))?;
        inner.size.store(new_size, Ordering::Release);
        Ok(new_size)
    }
}

#[cfg(test)]
mod tests {
    use crate::{BlockDev, IoCtx, OpenOptions, RawFile};

    #[test]
    fn grows_refuses_a_shrink_without_the_flag_and_shrinks_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        let f = RawFile::create(&path, 1 << 20, OpenOptions::default()).unwrap();
        let io = IoCtx::new().unwrap();
        assert_eq!(f.resize(&io, 4 << 20, false).unwrap(), 4 << 20);
        assert_eq!((f.info().size, std::fs::metadata(&path).unwrap().len()), (4 << 20, 4 << 20));
        let e = f.resize(&io, 2 << 20, false).unwrap_err().to_string();
        assert!(e.contains("needs shrink") && e.contains("d.img"), "{e}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 << 20, "a refused shrink changed the file");
        let e = f.resize(&io, 1000, true).unwrap_err().to_string();
        assert!(e.contains("multiple of 512"), "{e}");
        assert_eq!(f.resize(&io, 2 << 20, true).unwrap(), 2 << 20);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 << 20);
    }
}
