//! The guest-physical and I/O-port map shared by the VMM and its guests.

/// First virtio-mmio device window; device `i` sits at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE`.
/// The probe guest (guest/probe.S) hard-codes this address.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio register window (registers and config space).
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First legacy interrupt line given to virtio-mmio devices (device `i` gets `VIRTIO_IRQ_BASE + i`).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Most virtio-mmio devices a guest gets (their interrupt lines stay below the IOAPIC's 24).
pub const MAX_VIRTIO_DEVICES: usize = 16;

/// The guest's RAM ends below this address (the 32-bit MMIO hole starts here).
pub const MEM_32BIT_GAP_START: u64 = 0xc000_0000;

/// I/O port of the 16550 serial port (COM1), 8 registers.
pub const SERIAL_PORT: u16 = 0x3f8;
/// Interrupt line of the serial port.
pub const SERIAL_IRQ: u32 = 4;
/// ACPI sleep control register (hardware-reduced ACPI, FADT `SLEEP_CONTROL_REG`): writing
/// `SLP_EN | SLP_TYP(5)` powers the guest off.
pub const POWER_OFF_PORT: u16 = 0x600;
/// ACPI reset register (FADT `RESET_REG`): writing [`RESET_VALUE`] resets the guest.
pub const RESET_PORT: u16 = 0x601;
/// Value written to [`RESET_PORT`] to reset.
pub const RESET_VALUE: u8 = 0x1;
/// Probe guest only: the byte written here ends the probe (0 passed, else the failed check).
pub const PROBE_EXIT_PORT: u16 = 0xf4;
/// Probe guest only: the number of the check the guest is running now.
pub const PROBE_PROGRESS_PORT: u16 = 0xf5;

/// Global descriptor table written for 64-bit entry.
pub const GDT_ADDR: u64 = 0x500;
/// Boot-time page tables: PML4, one PDPT, then four page directories (identity map of 4 GiB).
pub const PML4_ADDR: u64 = 0x9000;
/// The page-directory-pointer table under [`PML4_ADDR`].
pub const PDPT_ADDR: u64 = 0xa000;
/// The first of the four page directories (2 MiB pages).
pub const PD_ADDR: u64 = 0xb000;
/// Where the probe guest's code is loaded and entered.
pub const PROBE_ENTRY: u64 = 0x1_0000;
/// Top of the probe guest's stack.
pub const PROBE_STACK_TOP: u64 = 0x3_0000;

/// PVH boot: the `hvm_start_info` (its address goes to the kernel in `ebx`).
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH boot: the module list (module 0 is the initrd).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH boot: the memory map (`hvm_memmap_table_entry`s, the same ranges as the e820 map).
pub const PVH_MEMMAP_ADDR: u64 = 0x6080;
/// Linux's zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack of the boot vCPU (below the page tables).
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Room for the command line (the kernel's own limit, `cmdline_size`, may be smaller).
pub const CMDLINE_MAX: usize = 0x1_0000;
/// Start of the BIOS area where Linux looks for the RSDP; the ACPI tables follow it.
pub const ACPI_START: u64 = 0xe_0000;
/// End of the ACPI area (start of high memory).
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// End of conventional memory given as RAM in the e820 map (the EBDA would start here).
pub const LOW_RAM_END: u64 = 0x9_fc00;
/// The local APIC's address.
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// The IOAPIC's address.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The x86 reset vector (real mode `f000:fff0`). Linux's last-resort reboot jumps here.
pub const RESET_VECTOR: u64 = 0xf_fff0;
