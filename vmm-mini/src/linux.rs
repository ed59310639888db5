//! Booting Linux: memory, disks, serial, kernel, command line, initrd, ACPI, zero page and
//! vCPUs, then waiting for the guest to power off.

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use vm_memory::{Bytes, GuestAddress};

use crate::acpi::{build_acpi_tables, MmioDeviceInfo};
use crate::backend_watch::BackendWatch;
use crate::blk_device::BlkDevice;
use crate::boot_params::{build_boot_params, BootLayout};
use crate::config_change;
use crate::console::Console;
use crate::cpu::{enter_long_mode, enter_protected_mode, set_cpuid, set_lint_and_fpu, write_boot_tables};
use crate::devices::{Devices, GuestExit};
use crate::disk_spec::DiskSpec;
use crate::kernel::{load_command_line, load_initrd, load_kernel};
use crate::layout::{
    BOOT_STACK_TOP, CMDLINE_ADDR, MAX_VIRTIO_DEVICES, RESET_VECTOR, SERIAL_IRQ, VIRTIO_IRQ_BASE, VIRTIO_MMIO_BASE,
    VIRTIO_MMIO_SIZE, ZERO_PAGE_ADDR,
};
use crate::memory::create_guest_memory;
use crate::pvh::{pvh_start_info, write_pvh_start_info};
use crate::reconnect::Keeper;
use crate::serial::new_serial;
use crate::vcpu::{lock, VcpuThreads};
use crate::vm::Vm;
use crate::Error;

/// Most vCPUs (APIC ids stay below the broadcast id 0xff).
pub const MAX_CPUS: u8 = 254;
/// Command line used when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=-1";
/// How long connecting to a disk's backend and negotiating with it may take before the boot is
/// given up (a socket that is not a vhost-user backend never answers).
pub const BACKEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What to boot.
#[derive(Clone, Debug)]
pub struct LinuxOptions {
    /// bzImage or ELF vmlinux.
    pub kernel: PathBuf,
    /// Optional initrd/initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// vCPUs.
    pub cpus: u8,
    /// vhost-user-blk disks, in order (`/dev/vda`, `/dev/vdb`, ...).
    pub disks: Vec<DiskSpec>,
    /// Where the serial console goes.
    pub console: Console,
    /// Describe the disks as `virtio_mmio.device=` command-line options instead of in the DSDT
    /// (for kernels built with `VIRTIO_MMIO_CMDLINE_DEVICES`).
    pub virtio_mmio_cmdline: bool,
}

/// What sits at the reset vector instead of a BIOS: real-mode code that writes
/// [`crate::layout::RESET_VALUE`] to the ACPI reset register and halts.
///
/// Linux picks the EFI reboot method on hardware-reduced ACPI machines, finds no EFI and falls
/// back to jumping to the BIOS at `f000:fff0`; this turns that jump into a reset vmm-mini sees.
pub const RESET_STUB: [u8; 8] = [
    0xb0, 0x01, // mov al, RESET_VALUE
    0xba, 0x01, 0x06, // mov dx, RESET_PORT (0x601)
    0xee, // out dx, al
    0xf4, // hlt
    0xf4, // hlt
];

/// Parses a memory size: bytes, or a number with K, M or G (binary units).
pub fn parse_memory_size(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 10),
        Some((i, 'M' | 'm')) => (&s[..i], 20),
        Some((i, 'G' | 'g')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("memory size '{s}': expected a number with K, M or G"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("memory size '{s}' is too large"))
}

/// The `virtio_mmio.device=` option for each device.
fn virtio_mmio_cmdline(devices: &[MmioDeviceInfo]) -> String {
    devices.iter().map(|d| format!(" virtio_mmio.device=4K@{:#x}:{}", d.base, d.irq)).collect()
}

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

/// Boots the kernel and runs until the guest powers off, resets, faults or loses a backend.
pub fn run_linux(opts: &LinuxOptions) -> Result<GuestExit, Error> {
    if opts.cpus == 0 || opts.cpus > MAX_CPUS {
        return Err(invalid(format!("--cpus {}: must be 1 to {MAX_CPUS}", opts.cpus)));
    }
    if opts.disks.len() > MAX_VIRTIO_DEVICES {
        return Err(invalid(format!("{} disks: at most {MAX_VIRTIO_DEVICES}", opts.disks.len())));
    }
    let mem = create_guest_memory(opts.memory)?;
    let vm = Vm::new(mem.clone())?;
    vm.create_irqchip()?;

    let mut disks: Vec<BlkDevice> = Vec::new();
    let mut infos = Vec::new();
    for (i, spec) in opts.disks.iter().enumerate() {
        let disk = BlkDevice::new(spec, mem.clone(), BACKEND_TIMEOUT)?;
        let info =
            MmioDeviceInfo { base: VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE, irq: VIRTIO_IRQ_BASE + i as u32 };
        for (queue, kick) in disk.kick_fds().iter().enumerate() {
            vm.register_kick(i, queue as u32, kick)?;
        }
        for call in disk.call_fds() {
            vm.register_irq(call, info.irq)?;
        }
        disks.push(disk);
        infos.push(info);
    }
    let serial = new_serial(opts.console.writer().map_err(Error::Io)?).map_err(Error::Io)?;
    vm.register_irq(&serial.interrupt_evt().0, SERIAL_IRQ)?;

    let kernel = load_kernel(&mem, &opts.kernel)?;
    let mut cmdline = opts.cmdline.clone();
    if opts.virtio_mmio_cmdline {
        cmdline.push_str(&virtio_mmio_cmdline(&infos));
    }
    let cmdline_len = load_command_line(&mem, &cmdline, kernel.header.map_or(0, |h| h.cmdline_size))?;
    let initrd = opts.initrd.as_ref().map(|p| load_initrd(&mem, opts.memory, p, &kernel)).transpose()?;
    let acpi_devices = if opts.virtio_mmio_cmdline { &[][..] } else { &infos[..] };
    let acpi = build_acpi_tables(opts.cpus, acpi_devices)?;
    for (addr, table) in &acpi.tables {
        mem.write_slice(table, GuestAddress(*addr)).map_err(Error::GuestMemory)?;
    }
    let layout = BootLayout {
        mem_size: opts.memory,
        cmdline_addr: CMDLINE_ADDR,
        cmdline_len,
        initrd,
        rsdp_addr: acpi.tables[0].0,
    };
    // PVH when the kernel has the entry (ebx = start info), else the 64-bit boot protocol
    // (rsi = zero page).
    let pvh = match kernel.pvh_entry {
        Some(entry) => Some((entry, write_pvh_start_info(&mem, &pvh_start_info(&layout)).map_err(Error::Boot)?)),
        None => {
            let params = build_boot_params(kernel.header, &layout);
            LinuxBootConfigurator::write_bootparams(&BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR)), &mem)
                .map_err(|e| Error::Boot(e.to_string()))?;
            None
        }
    };
    write_boot_tables(&mem).map_err(Error::GuestMemory)?;
    mem.write_slice(&RESET_STUB, GuestAddress(RESET_VECTOR)).map_err(Error::GuestMemory)?;

    let cpuid = vm.supported_cpuid()?;
    let mut vcpus = Vec::new();
    for index in 0..opts.cpus {
        let vcpu = vm.create_vcpu(index)?;
        set_cpuid(&vcpu, index, &cpuid)?;
        set_lint_and_fpu(&vcpu, index)?;
        match (index, pvh) {
            (0, Some((entry, start_info))) => enter_protected_mode(&vcpu, 0, entry, start_info)?,
            (0, None) => enter_long_mode(&vcpu, 0, kernel.entry, BOOT_STACK_TOP, ZERO_PAGE_ADDR, 0)?,
            _ => {}
        }
        vcpus.push(vcpu);
    }

    // Disks with reconnect=MS are kept by their own threads; the others end the guest.
    let sockets = disks
        .iter()
        .zip(&opts.disks)
        .filter(|(_, spec)| spec.reconnect.is_none())
        .map(|(d, _)| (d.frontend().socket_fd(), d.frontend().socket().to_path_buf()))
        .collect();
    let channels: Vec<_> = disks.iter_mut().map(|d| d.frontend_mut().take_backend_channel()).collect();
    let devices = Arc::new(Mutex::new(Devices { serial, disks, probe: None }));
    // Config changes (a live resize) reach the guest as a config interrupt; the threads end
    // when their backend closes the channel.
    for (index, channel) in channels.into_iter().enumerate().filter_map(|(i, c)| Some((i, c?))) {
        config_change::spawn(index, channel, devices.clone()).map_err(Error::Io)?;
    }
    let (exits, exit_rx) = mpsc::channel();
    let watch = BackendWatch::start(sockets, exits.clone()).map_err(Error::Io)?;
    let keeper = Keeper::start(&opts.disks, &devices).map_err(Error::Io)?;
    opts.console.start_input(devices.clone()).map_err(Error::Io)?;
    let threads = VcpuThreads::spawn(vcpus, devices.clone(), exits).map_err(Error::Io)?;
    let exit = exit_rx.recv().unwrap_or_else(|_| GuestExit::Fault("every vCPU thread ended".into()));
    threads.stop();
    watch.stop();
    keeper.stop();
    if !matches!(exit, GuestExit::BackendLost(_)) {
        lock(&devices).stop_disks();
    }
    Ok(exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse_with_binary_units() {
        assert_eq!(parse_memory_size("512M"), Ok(512 << 20));
        assert_eq!(parse_memory_size("2G"), Ok(2 << 30));
        assert_eq!(parse_memory_size("64k"), Ok(64 << 10));
        assert_eq!(parse_memory_size("4096"), Ok(4096));
        assert!(parse_memory_size("M").is_err());
        assert!(parse_memory_size("12X").is_err());
        assert!(parse_memory_size("99999999999999G").is_err());
    }

    #[test]
    fn reset_stub_writes_the_reset_value_to_the_reset_port() {
        use crate::layout::{RESET_PORT, RESET_VALUE};
        assert_eq!(RESET_STUB[1], RESET_VALUE);
        assert_eq!(u16::from_le_bytes([RESET_STUB[3], RESET_STUB[4]]), RESET_PORT);
        assert!(RESET_VECTOR + RESET_STUB.len() as u64 <= 0x10_0000, "stays below 1 MiB");
    }

    #[test]
    fn cmdline_devices_name_window_and_irq() {
        let d = [MmioDeviceInfo { base: 0xd000_1000, irq: 6 }];
        assert_eq!(virtio_mmio_cmdline(&d), " virtio_mmio.device=4K@0xd0001000:6");
    }
}
