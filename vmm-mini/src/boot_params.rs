//! Linux's zero page (`struct boot_params`): setup header, command line, initrd and the e820
//! memory map (Documentation/arch/x86/boot.rst, "64-bit boot protocol").

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};

use crate::layout::{ACPI_START, HIGH_MEMORY_START, LOW_RAM_END};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;
const CAN_USE_HEAP: u8 = 0x80;

/// Where the boot pieces are in guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootLayout {
    /// Bytes of guest RAM (one region from 0).
    pub mem_size: u64,
    /// Guest address of the NUL-terminated command line.
    pub cmdline_addr: u64,
    /// Its length without the NUL.
    pub cmdline_len: u32,
    /// Guest address and size of the initrd, if any.
    pub initrd: Option<(u64, u32)>,
    /// Guest address of the ACPI RSDP.
    pub rsdp_addr: u64,
}

/// The e820 map: low RAM, the reserved BIOS area holding the ACPI tables, RAM above 1 MiB.
pub fn e820_map(mem_size: u64) -> Vec<boot_e820_entry> {
    let entry = |addr: u64, end: u64, kind| boot_e820_entry { addr, size: end - addr, r#type: kind };
    vec![
        entry(0, LOW_RAM_END, E820_RAM),
        entry(LOW_RAM_END.min(ACPI_START), HIGH_MEMORY_START, E820_RESERVED),
        entry(HIGH_MEMORY_START, mem_size, E820_RAM),
    ]
}

/// Builds the zero page from the kernel's setup header (bzImage) or a default one (ELF).
pub fn build_boot_params(header: Option<setup_header>, layout: &BootLayout) -> boot_params {
    let mut params = boot_params::default();
    match header {
        Some(hdr) => params.hdr = hdr,
        None => {
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
        }
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.loadflags |= CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = layout.cmdline_addr as u32;
    params.ext_cmd_line_ptr = (layout.cmdline_addr >> 32) as u32;
    params.hdr.cmdline_size = layout.cmdline_len;
    if let Some((addr, size)) = layout.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.hdr.ramdisk_size = size;
    }
    params.acpi_rsdp_addr = layout.rsdp_addr;
    let map = e820_map(layout.mem_size);
    params.e820_entries = map.len() as u8;
    params.e820_table[..map.len()].copy_from_slice(&map);
    params
}

/// Where the initrd of `size` bytes goes: page aligned, as high as RAM and the kernel's
/// `initrd_addr_max` allow, above `kernel_end`. `None` when it does not fit.
pub fn initrd_address(mem_size: u64, initrd_addr_max: u32, kernel_end: u64, size: u64) -> Option<u64> {
    let max = if initrd_addr_max == 0 { 0x37ff_ffff } else { u64::from(initrd_addr_max) };
    let top = mem_size.min(max + 1);
    let addr = top.checked_sub(size)? & !0xfff;
    (addr >= kernel_end && size > 0 && size <= u64::from(u32::MAX)).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> BootLayout {
        BootLayout {
            mem_size: 512 << 20,
            cmdline_addr: 0x2_0000,
            cmdline_len: 20,
            initrd: Some((0x1f00_0000, 0x10_0000)),
            rsdp_addr: 0xe_0000,
        }
    }

    #[test]
    fn e820_map_covers_ram_and_reserves_the_bios_area() {
        let map = e820_map(512 << 20);
        let (a, b, c) = (map[0], map[1], map[2]);
        assert_eq!((a.addr, a.size, a.r#type), (0, 0x9_fc00, E820_RAM));
        assert_eq!((b.addr, b.addr + b.size, b.r#type), (0x9_fc00, 0x10_0000, E820_RESERVED));
        assert_eq!((c.addr, c.addr + c.size, c.r#type), (0x10_0000, 512 << 20, E820_RAM));
    }

    #[test]
    fn boot_params_point_at_cmdline_initrd_and_rsdp() {
        let p = build_boot_params(None, &layout());
        let hdr = p.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!(({ hdr.cmd_line_ptr }, { hdr.cmdline_size }), (0x2_0000, 20));
        assert_eq!(({ hdr.ramdisk_image }, { hdr.ramdisk_size }), (0x1f00_0000, 0x10_0000));
        assert_eq!({ p.acpi_rsdp_addr }, 0xe_0000);
        assert_eq!(p.e820_entries, 3);
    }

    #[test]
    fn kernel_setup_header_is_kept() {
        let hdr = setup_header { version: 0x020f, kernel_alignment: 0x20_0000, ..Default::default() };
        let p = build_boot_params(Some(hdr), &layout());
        assert_eq!(({ p.hdr.version }, { p.hdr.kernel_alignment }), (0x020f, 0x20_0000));
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
    }

    #[test]
    fn initrd_goes_page_aligned_to_the_top_below_the_kernel_limit() {
        assert_eq!(initrd_address(512 << 20, 0x7fff_ffff, 0x200_0000, 0x1800), Some((512 << 20) - 0x2000));
        assert_eq!(initrd_address(2 << 30, 0x37ff_ffff, 0x200_0000, 0x1000), Some(0x3800_0000 - 0x1000));
        assert_eq!(initrd_address(64 << 20, 0x37ff_ffff, 0x200_0000, 63 << 20), None, "overlaps the kernel");
        assert_eq!(initrd_address(64 << 20, 0x37ff_ffff, 0, 65 << 20), None, "bigger than RAM");
    }
}
