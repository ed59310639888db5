//! Guest memory: one shared memfd mapped with vm-memory, so a vhost-user backend can map it too.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::layout::MEM_32BIT_GAP_START;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is zero, not page aligned, or reaches into the MMIO hole.
    #[error("guest memory size {0:#x} must be a non-zero multiple of 4 KiB of at most {MEM_32BIT_GAP_START:#x}")]
    BadSize(u64),
    /// memfd_create or ftruncate failed.
    #[error("cannot create the guest memory memfd: {0}")]
    Memfd(io::Error),
    /// vm-memory could not map the memfd.
    #[error("cannot map guest memory: {0}")]
    Map(vm_memory::mmap::FromRangesError),
}

/// Creates `size` bytes of guest RAM at guest address 0, backed by a memfd mapped `MAP_SHARED`.
///
/// All RAM is one region below the 32-bit MMIO hole, so guests get at most 3 GiB.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if size == 0 || size & 0xfff != 0 || size > MEM_32BIT_GAP_START {
        return Err(MemoryError::BadSize(size));
    }
    // SAFETY: the name is a valid NUL-terminated string; the result is checked below.
    let fd = unsafe { libc::memfd_create(c"vmm-mini-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(MemoryError::Memfd)?;
    // `size` is at most 3 GiB, so it fits in usize on the 64-bit hosts KVM runs on.
    let ranges = [(GuestAddress(0), size as usize, Some(FileOffset::new(file, 0)))];
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn guest_memory_is_one_file_backed_region() {
        let mem = create_guest_memory(1 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        let region = mem.iter().next().unwrap();
        assert!(region.file_offset().is_some());
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000)).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0xdead_beef);
    }

    #[test]
    fn memory_size_is_validated() {
        assert!(matches!(create_guest_memory(0), Err(MemoryError::BadSize(0))));
        assert!(matches!(create_guest_memory(4097), Err(MemoryError::BadSize(_))));
        assert!(matches!(create_guest_memory(4 << 30), Err(MemoryError::BadSize(_))));
    }
}
