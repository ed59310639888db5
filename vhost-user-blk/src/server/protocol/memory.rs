//! The guest memory of one connection: SET_MEM_TABLE, ADD_MEM_REG and REM_MEM_REG map the
//! frontend's regions into the connection's `GuestMemoryAtomic` (which the queue workers read
//! each turn), and ring addresses given in the frontend's own address space are translated to
//! guest addresses.

use std::fs::File;
use std::io;
use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserMemoryRegion, VhostUserSingleMemoryRegion};
use vhost::vhost_user::Error as VhostUserError;
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryMmap, GuestRegionMmap};

use super::limits::MAX_MEM_REGIONS;
use crate::server::backend::GuestMemAtomic;

/// Where one region lies in the frontend's address space.
#[derive(Debug, Clone, Copy)]
struct Mapping {
    user_addr: u64,
    size: u64,
    guest_addr: u64,
}

/// The regions the frontend gave, and the guest memory built from them.
pub struct GuestRegions {
    mem: GuestMemAtomic,
    mappings: Vec<Mapping>,
}

fn invalid(what: String) -> VhostUserError {
    tracing::warn!("frontend memory: {what}");
    VhostUserError::ReqHandlerError(io::Error::new(io::ErrorKind::InvalidInput, what))
}

fn map(
    guest_addr: u64,
    size: u64,
    user_addr: u64,
    offset: u64,
    file: File,
) -> Result<(GuestRegionMmap<()>, Mapping), VhostUserError> {
    let region = VhostUserMemoryRegion::new(guest_addr, size, user_addr, offset);
    let mmap = region.mmap_region::<()>(file)?;
    let guest = GuestRegionMmap::new(mmap, GuestAddress(guest_addr))
        .ok_or_else(|| invalid(format!("region at guest address {guest_addr:#x} ({size} bytes) wraps")))?;
    Ok((guest, Mapping { user_addr, size, guest_addr }))
}

impl GuestRegions {
    /// No regions yet; `mem` is the connection's memory the workers read.
    pub fn new(mem: GuestMemAtomic) -> GuestRegions {
        GuestRegions { mem, mappings: Vec::new() }
    }

    /// The connection's guest memory.
    pub fn memory(&self) -> &GuestMemAtomic {
        &self.mem
    }

    /// SET_MEM_TABLE: replace every region.
    pub fn set_table(&mut self, regions: &[VhostUserMemoryRegion], files: Vec<File>) -> Result<(), VhostUserError> {
        if regions.len() > MAX_MEM_REGIONS || regions.len() != files.len() {
            return Err(invalid(format!(
                "{} regions with {} fds (at most {MAX_MEM_REGIONS})",
                regions.len(),
                files.len()
            )));
        }
        let mut guest = Vec::with_capacity(regions.len());
        let mut mappings = Vec::with_capacity(regions.len());
        for (r, file) in regions.iter().zip(files) {
            let (g, m) = map(r.guest_phys_addr, r.memory_size, r.user_addr, r.mmap_offset, file)?;
            guest.push(g);
            mappings.push(m);
        }
        let mem = GuestMemoryMmap::from_regions(guest).map_err(|e| invalid(format!("memory table refused: {e}")))?;
        self.mem.lock().unwrap_or_else(|p| p.into_inner()).replace(mem);
        self.mappings = mappings;
        Ok(())
    }

    /// ADD_MEM_REG: one more region (refused beyond [`MAX_MEM_REGIONS`]).
    pub fn add(&mut self, r: &VhostUserSingleMemoryRegion, file: File) -> Result<(), VhostUserError> {
        if self.mappings.len() >= MAX_MEM_REGIONS {
            return Err(invalid(format!("ADD_MEM_REG beyond the limit of {MAX_MEM_REGIONS} regions")));
        }
        let (g, m) = map(r.guest_phys_addr, r.memory_size, r.user_addr, r.mmap_offset, file)?;
        let mem = self
            .mem
            .memory()
            .insert_region(Arc::new(g))
            .map_err(|e| invalid(format!("region at guest address {:#x} refused: {e}", { r.guest_phys_addr })))?;
        self.mem.lock().unwrap_or_else(|p| p.into_inner()).replace(mem);
        self.mappings.push(m);
        Ok(())
    }

    /// REM_MEM_REG: drop the region at that guest address.
    pub fn remove(&mut self, r: &VhostUserSingleMemoryRegion) -> Result<(), VhostUserError> {
        let (mem, _) = self
            .mem
            .memory()
            .remove_region(GuestAddress(r.guest_phys_addr), r.memory_size)
            .map_err(|e| invalid(format!("no region at guest address {:#x}: {e}", { r.guest_phys_addr })))?;
        self.mem.lock().unwrap_or_else(|p| p.into_inner()).replace(mem);
        self.mappings.retain(|m| m.guest_addr != r.guest_phys_addr);
        Ok(())
    }

    /// Whether any region is mapped.
    pub fn is_empty(&self) -> bool {
        self.mappings.is_empty()
    }

    /// The guest address of `user_addr` in the frontend's address space.
    pub fn to_guest(&self, user_addr: u64) -> Result<u64, VhostUserError> {
        self.mappings
            .iter()
            .find(|m| user_addr >= m.user_addr && user_addr - m.user_addr < m.size)
            .map(|m| user_addr - m.user_addr + m.guest_addr)
            .ok_or_else(|| invalid(format!("ring address {user_addr:#x} lies in no memory region")))
    }
}
