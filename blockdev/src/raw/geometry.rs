//! What a file or block device looks like: size, block sizes and O_DIRECT alignment.

use std::os::fd::RawFd;

use crate::{Error, Result};

/// Sizes learned from the kernel.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub size: u64,
    pub logical_block_size: u32,
    pub physical_block_size: u32,
    pub dio_mem_align: u32,
    pub is_block_device: bool,
    /// The file lives on tmpfs, whose reads io_uring never tries inline (kernel 6.18: no
    /// non-blocking read support): every read, page-cache hit or not, is copied by a worker.
    pub on_tmpfs: bool,
}

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKPBSZGET: libc::c_ulong = 0x127b;

/// Probe `fd`. `direct` asks for the O_DIRECT alignment (statx STATX_DIOALIGN where supported).
pub fn probe(fd: RawFd, what: &str, direct: bool) -> Result<Geometry> {
    // SAFETY: fstat writes into the zeroed stat buffer we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; st is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(Error::from_io(std::io::Error::last_os_error(), format!("{what}: stat")));
    }
    let is_block_device = st.st_mode & libc::S_IFMT == libc::S_IFBLK;
    if is_block_device {
        let mut size: u64 = 0;
        let mut lbs: libc::c_int = 512;
        let mut pbs: libc::c_uint = 512;
        // SAFETY: each ioctl writes one integer of the stated type into a live local.
        unsafe {
            if libc::ioctl(fd, BLKGETSIZE64, &mut size) != 0 {
                return Err(Error::from_io(std::io::Error::last_os_error(), format!("{what}: BLKGETSIZE64")));
            }
            libc::ioctl(fd, BLKSSZGET, &mut lbs);
            libc::ioctl(fd, BLKPBSZGET, &mut pbs);
        }
        let lbs = (lbs.max(512)) as u32;
        return Ok(Geometry {
            size,
            logical_block_size: lbs,
            physical_block_size: pbs.max(lbs),
            dio_mem_align: if direct { lbs } else { 1 },
            is_block_device,
            on_tmpfs: false,
        });
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Error::new(crate::ErrorKind::InvalidInput, format!("{what}: not a regular file or block device")));
    }
    let (mut lbs, mut mem_align) = (512u32, 1u32);
    if direct {
        let (off_align, m_align) = dio_align(fd).unwrap_or((512, 512));
        lbs = off_align.max(512);
        mem_align = m_align.max(1);
    }
    Ok(Geometry {
        size: st.st_size as u64,
        logical_block_size: lbs,
        physical_block_size: (st.st_blksize as u32).max(lbs),
        dio_mem_align: mem_align,
        is_block_device,
        on_tmpfs: on_tmpfs(fd),
    })
}

/// Whether `fd` is a file on tmpfs (fstatfs; false if that fails).
fn on_tmpfs(fd: RawFd) -> bool {
    const TMPFS_MAGIC: libc::c_long = 0x0102_1994;
    // SAFETY: statfs is plain data; zeroed is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; st is a valid out-pointer.
    let rc = unsafe { libc::fstatfs(fd, &mut st) };
    rc == 0 && st.f_type as libc::c_long == TMPFS_MAGIC
}

/// O_DIRECT offset and memory alignment via statx(STATX_DIOALIGN) (Linux 6.1+).
fn dio_align(fd: RawFd) -> Option<(u32, u32)> {
    const STATX_DIOALIGN: u32 = 0x2000;
    // SAFETY: statx is plain data; zeroed is valid.
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    let empty = c"";
    // SAFETY: valid fd, a NUL-terminated empty path with AT_EMPTY_PATH, and a live out-buffer.
    let rc = unsafe { libc::statx(fd, empty.as_ptr(), libc::AT_EMPTY_PATH, STATX_DIOALIGN, &mut sx) };
    if rc != 0 || sx.stx_mask & STATX_DIOALIGN == 0 || sx.stx_dio_offset_align == 0 {
        return None;
    }
    Some((sx.stx_dio_offset_align, sx.stx_dio_mem_align))
}
