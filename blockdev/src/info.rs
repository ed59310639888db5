//! What a device tells its consumers about itself.

/// Geometry and capabilities of a block device, as a consumer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevInfo {
    /// Size in bytes (a multiple of `logical_block_size`).
    pub size: u64,
    /// Smallest addressable unit in bytes (512 or 4096): offsets and lengths must be multiples.
    pub logical_block_size: u32,
    /// Block size the device writes atomically and most efficiently.
    pub physical_block_size: u32,
    /// Alignment, in bytes, that buffer addresses and lengths need (1 if any will do).
    pub mem_align: u32,
    /// Writes, discards and write-zeroes are refused.
    pub read_only: bool,
    /// `discard` does something useful (otherwise it is a no-op that succeeds).
    pub discard: bool,
    /// `write_zeroes` is supported natively (otherwise callers should write zero buffers).
    pub write_zeroes: bool,
    /// Preferred I/O size in bytes (chunk, stripe or cluster size), 0 if none.
    pub optimal_io_size: u32,
    /// Completed writes may sit in a volatile cache until `flush`.
    pub volatile_cache: bool,
}

impl DevInfo {
    /// A plain writable device of `size` bytes with 512-byte blocks and no special needs.
    pub fn simple(size: u64) -> Self {
        DevInfo {
            size,
            logical_block_size: 512,
            physical_block_size: 512,
            mem_align: 1,
            read_only: false,
            discard: true,
            write_zeroes: true,
            optimal_io_size: 0,
            volatile_cache: true,
        }
    }

    /// Check that `[off, off+len)` lies inside the device and is block-aligned.
    pub fn check_range(&self, off: u64, len: u64) -> crate::Result<()> {
        let end = off.checked_add(len);
        if end.is_none_or(|end| end > self.size) {
            return Err(crate::Error::out_of_range(off, len, self.size));
        }
        let lbs = u64::from(self.logical_block_size.max(1));
        if !off.is_multiple_of(lbs) || !len.is_multiple_of(lbs) {
            return Err(crate::Error::new(
                crate::ErrorKind::InvalidInput,
                format!("request [{off}, +{len}) is not aligned to the {lbs}-byte logical block size"),
            ));
        }
        Ok(())
    }

    /// `check_range` plus a refusal when the device is read-only.
    pub fn check_write(&self, off: u64, len: u64) -> crate::Result<()> {
        if self.read_only {
            return Err(crate::Error::new(crate::ErrorKind::ReadOnly, "device is read-only"));
        }
        self.check_range(off, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn range_past_end_is_out_of_range() {
        let info = DevInfo::simple(4096);
        assert_eq!(info.check_range(4096, 512).unwrap_err().kind(), ErrorKind::OutOfRange);
        assert_eq!(info.check_range(u64::MAX - 511, 512).unwrap_err().kind(), ErrorKind::OutOfRange);
        assert!(info.check_range(3584, 512).is_ok());
    }

    #[test]
    fn misaligned_range_is_invalid() {
        let info = DevInfo::simple(4096);
        assert_eq!(info.check_range(1, 512).unwrap_err().kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn read_only_refuses_writes() {
        let info = DevInfo { read_only: true, ..DevInfo::simple(4096) };
        assert_eq!(info.check_write(0, 512).unwrap_err().kind(), ErrorKind::ReadOnly);
    }
}
