//! Loading the guest kernel (bzImage or ELF vmlinux, via linux-loader), its command line and
//! initrd into guest memory.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot_params::initrd_address;
use crate::layout::{CMDLINE_ADDR, CMDLINE_MAX, HIGH_MEMORY_START};

/// Errors loading the kernel, command line or initrd.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// linux-loader refused the image as both bzImage and ELF.
    #[error("{path}: neither a bzImage ({bzimage}) nor an ELF vmlinux ({elf})")]
    Format {
        /// The kernel.
        path: PathBuf,
        /// The bzImage loader's complaint.
        bzimage: linux_loader::loader::Error,
        /// The ELF loader's complaint.
        elf: linux_loader::loader::Error,
    },
    /// The command line is too long or has characters the kernel cannot take.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// The initrd does not fit above the kernel.
    #[error("{path}: initrd of {size} bytes does not fit in guest memory above the kernel")]
    InitrdTooBig {
        /// The initrd.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Guest memory could not be written.
    #[error("writing {what} to guest memory: {source}")]
    Memory {
        /// What was being written.
        what: &'static str,
        /// Why it failed.
        source: vm_memory::GuestMemoryError,
    },
}

/// A kernel in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// The 64-bit entry point.
    pub entry: u64,
    /// First guest address after the kernel image.
    pub end: u64,
    /// The bzImage's setup header (`None` for ELF).
    pub header: Option<setup_header>,
    /// The 32-bit PVH entry of an ELF kernel with a `XEN_ELFNOTE_PHYS32_ENTRY` note.
    pub pvh_entry: Option<u64>,
}

fn open(path: &Path) -> Result<File, KernelError> {
    File::open(path).map_err(|source| KernelError::File { path: path.into(), source })
}

/// Loads `path` as a bzImage (protected-mode code at 1 MiB, 64-bit entry 0x200 past it), or
/// failing that as an ELF vmlinux: entered at its PVH entry when it has one, else at its ELF
/// entry with the 64-bit boot protocol.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, KernelError> {
    let mut file = open(path)?;
    let high = Some(GuestAddress(HIGH_MEMORY_START));
    let bzimage = match BzImage::load(mem, None, &mut file, high) {
        Ok(r) => {
            let entry = r.kernel_load.0 + 0x200;
            return Ok(LoadedKernel { entry, end: r.kernel_end, header: r.setup_header, pvh_entry: None });
        }
        Err(e) => e,
    };
    let elf = match Elf::load(mem, None, &mut file, high) {
        Ok(r) => {
            let pvh_entry = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => Some(addr.0),
                PvhBootCapability::PvhEntryNotPresent | PvhBootCapability::PvhEntryIgnored => None,
            };
            return Ok(LoadedKernel { entry: r.kernel_load.0, end: r.kernel_end, header: None, pvh_entry });
        }
        Err(e) => e,
    };
    Err(KernelError::Format { path: path.into(), bzimage, elf })
}

/// Writes the command line at [`CMDLINE_ADDR`]; returns its length without the NUL.
pub fn load_command_line(mem: &GuestMemoryMmap, cmdline: &str, kernel_max: u32) -> Result<u32, KernelError> {
    let max = if kernel_max == 0 { CMDLINE_MAX } else { (kernel_max as usize + 1).min(CMDLINE_MAX) };
    let mut line = Cmdline::new(max).map_err(|e| KernelError::Cmdline(e.to_string()))?;
    line.insert_str(cmdline).map_err(|e| KernelError::Cmdline(format!("{e} (at most {} bytes)", max - 1)))?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &line).map_err(|e| KernelError::Cmdline(e.to_string()))?;
    Ok(cmdline.len() as u32)
}

/// Copies the initrd as high as the kernel allows; returns its (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<(u64, u32), KernelError> {
    let mut file = open(path)?;
    let size = file.metadata().map_err(|source| KernelError::File { path: path.into(), source })?.len();
    let max = kernel.header.map_or(0, |h| h.initrd_addr_max);
    let addr = initrd_address(mem_size, max, kernel.end, size)
        .ok_or_else(|| KernelError::InitrdTooBig { path: path.into(), size })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| KernelError::Memory { what: "the initrd", source })?;
    Ok((addr, size as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn command_line_lands_at_its_address_nul_terminated() {
        let mem = create_guest_memory(1 << 20).unwrap();
        let len = load_command_line(&mem, "console=ttyS0 panic=-1", 2047).unwrap();
        assert_eq!(len, 22);
        let mut b = [0xffu8; 24];
        mem.read_slice(&mut b, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&b[..23], b"console=ttyS0 panic=-1\0");
    }

    #[test]
    fn command_line_longer_than_the_kernel_takes_is_refused() {
        let mem = create_guest_memory(1 << 20).unwrap();
        let long = "x".repeat(300);
        let e = load_command_line(&mem, &long, 255).unwrap_err();
        assert!(e.to_string().contains("at most 255 bytes"), "{e}");
        assert!(load_command_line(&mem, &long, 0).is_ok(), "no header limit: up to CMDLINE_MAX");
        assert!(load_command_line(&mem, "a\nb", 0).is_err(), "control characters are refused");
    }

    #[test]
    fn a_file_that_is_no_kernel_is_named_with_both_complaints() {
        let dir = std::env::temp_dir().join(format!("vmm-mini-kernel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("not-a-kernel");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let mem = create_guest_memory(4 << 20).unwrap();
        let e = load_kernel(&mem, &path).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        let msg = e.to_string();
        assert!(msg.contains("not-a-kernel") && msg.contains("bzImage") && msg.contains("ELF"), "{msg}");
    }
}
