//! The PVH boot protocol for ELF kernels that carry a `XEN_ELFNOTE_PHYS32_ENTRY` note: an
//! `hvm_start_info` (version 1) with the command line, the ACPI RSDP, the memory map and the
//! initrd as module 0, handed over in `ebx` to a 32-bit protected-mode entry
//! (Xen's `docs/misc/pvh.pandoc`, `xen/include/public/arch-x86/hvm/start_info.h`).

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::boot_params::{e820_map, BootLayout};
use crate::layout::{PVH_INFO_ADDR, PVH_MEMMAP_ADDR, PVH_MODLIST_ADDR};

/// `hvm_start_info.magic` ("xEn3" with the top bit of the last byte cleared).
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// The start-info version written: 1 has the memory map fields.
pub const START_INFO_VERSION: u32 = 1;

// The start info, the module list and the memory map share one page without overlapping.
const _: () = assert!(PVH_INFO_ADDR + 56 <= PVH_MODLIST_ADDR);
const _: () = assert!(PVH_MODLIST_ADDR + 32 <= PVH_MEMMAP_ADDR);
const _: () = assert!(PVH_MEMMAP_ADDR + 3 * 24 <= PVH_INFO_ADDR + 0x1000);

/// Everything the PVH entry reads, before it is written to guest memory.
#[derive(Clone, Debug)]
pub struct PvhStartInfo {
    /// The start info itself (at [`PVH_INFO_ADDR`]).
    pub info: hvm_start_info,
    /// Module 0, the initrd, if any (at [`PVH_MODLIST_ADDR`]).
    pub modules: Vec<hvm_modlist_entry>,
    /// The memory map (at [`PVH_MEMMAP_ADDR`]), the same ranges as the e820 map.
    pub memmap: Vec<hvm_memmap_table_entry>,
}

/// Builds the start info for `layout` (pure; see [`write_pvh_start_info`]).
pub fn pvh_start_info(layout: &BootLayout) -> PvhStartInfo {
    let memmap: Vec<hvm_memmap_table_entry> = e820_map(layout.mem_size)
        .iter()
        .map(|e| hvm_memmap_table_entry { addr: e.addr, size: e.size, type_: e.r#type, reserved: 0 })
        .collect();
    let modules: Vec<hvm_modlist_entry> = layout
        .initrd
        .map(|(paddr, size)| hvm_modlist_entry { paddr, size: size.into(), cmdline_paddr: 0, reserved: 0 })
        .into_iter()
        .collect();
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: START_INFO_VERSION,
        flags: 0,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { PVH_MODLIST_ADDR },
        cmdline_paddr: layout.cmdline_addr,
        rsdp_paddr: layout.rsdp_addr,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    PvhStartInfo { info, modules, memmap }
}

/// Writes the start info, module list and memory map into guest memory; returns the start
/// info's address (for `ebx`).
pub fn write_pvh_start_info(mem: &GuestMemoryMmap, start: &PvhStartInfo) -> Result<u64, String> {
    let mut params = BootParams::new(&start.info, GuestAddress(PVH_INFO_ADDR));
    params.set_sections(&start.memmap, GuestAddress(PVH_MEMMAP_ADDR));
    if !start.modules.is_empty() {
        params.set_modules(&start.modules, GuestAddress(PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(|e| e.to_string())?;
    Ok(PVH_INFO_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot_params::{E820_RAM, E820_RESERVED};
    use crate::memory::create_guest_memory;
    use vm_memory::Bytes;

    fn layout(initrd: Option<(u64, u32)>) -> BootLayout {
        BootLayout { mem_size: 64 << 20, cmdline_addr: 0x2_0000, cmdline_len: 12, initrd, rsdp_addr: 0xe_0000 }
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn structures_have_the_abi_sizes() {
        assert_eq!(std::mem::size_of::<hvm_start_info>(), 56);
        assert_eq!(std::mem::size_of::<hvm_modlist_entry>(), 32);
        assert_eq!(std::mem::size_of::<hvm_memmap_table_entry>(), 24);
    }

    /// The bytes in guest memory, read at the offsets of Xen's start_info.h, not through the
    /// Rust struct: magic, version, flags, nr_modules, modlist, cmdline, rsdp, memmap, entries.
    #[test]
    fn start_info_bytes_follow_the_xen_layout() {
        let mem = create_guest_memory(1 << 20).unwrap();
        let start = pvh_start_info(&layout(Some((0x300_0000, 0x1234))));
        assert_eq!(write_pvh_start_info(&mem, &start).unwrap(), PVH_INFO_ADDR);

        let mut b = [0u8; 56];
        mem.read_slice(&mut b, GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!(u32_at(&b, 0), 0x336e_c578, "magic");
        assert_eq!(u32_at(&b, 4), 1, "version");
        assert_eq!(u32_at(&b, 8), 0, "flags");
        assert_eq!(u32_at(&b, 12), 1, "nr_modules");
        assert_eq!(u64_at(&b, 16), PVH_MODLIST_ADDR, "modlist_paddr");
        assert_eq!(u64_at(&b, 24), 0x2_0000, "cmdline_paddr");
        assert_eq!(u64_at(&b, 32), 0xe_0000, "rsdp_paddr");
        assert_eq!(u64_at(&b, 40), PVH_MEMMAP_ADDR, "memmap_paddr");
        assert_eq!(u32_at(&b, 48), 3, "memmap_entries");

        let mut m = [0u8; 32];
        mem.read_slice(&mut m, GuestAddress(PVH_MODLIST_ADDR)).unwrap();
        assert_eq!((u64_at(&m, 0), u64_at(&m, 8), u64_at(&m, 16)), (0x300_0000, 0x1234, 0), "initrd module");

        let mut map = [0u8; 72];
        mem.read_slice(&mut map, GuestAddress(PVH_MEMMAP_ADDR)).unwrap();
        let entry = |i: usize| (u64_at(&map, i * 24), u64_at(&map, i * 24 + 8), u32_at(&map, i * 24 + 16));
        assert_eq!(entry(0), (0, 0x9_fc00, E820_RAM));
        assert_eq!(entry(1), (0x9_fc00, 0x10_0000 - 0x9_fc00, E820_RESERVED));
        assert_eq!(entry(2), (0x10_0000, (64 << 20) - 0x10_0000, E820_RAM));
    }

    #[test]
    fn no_initrd_means_no_modules() {
        let start = pvh_start_info(&layout(None));
        assert_eq!((start.info.nr_modules, start.info.modlist_paddr), (0, 0));
        assert!(start.modules.is_empty());
        let mem = create_guest_memory(1 << 20).unwrap();
        write_pvh_start_info(&mem, &start).unwrap();
        let mut m = [0xffu8; 32];
        mem.read_slice(&mut m, GuestAddress(PVH_MODLIST_ADDR)).unwrap();
        assert_eq!(m, [0u8; 32], "nothing written at the module list");
    }
}
