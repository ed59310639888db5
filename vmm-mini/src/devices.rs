//! Dispatch of the guest's port and MMIO accesses to the devices behind them.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::blk_device::BlkDevice;
use crate::layout::{
    POWER_OFF_PORT, PROBE_EXIT_PORT, PROBE_PROGRESS_PORT, RESET_PORT, RESET_VALUE, SERIAL_PORT, VIRTIO_MMIO_BASE,
    VIRTIO_MMIO_SIZE,
};
use crate::serial::SerialDevice;

/// ACPI S5 (soft off) written to the sleep control register: `SLP_EN | (5 << SLP_TYP shift)`.
pub const SLEEP_S5: u8 = (5 << 2) | (1 << 5);

/// Why the guest stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest powered off.
    PowerOff,
    /// The guest asked for a reset (vmm-mini ends instead of rebooting).
    Reset,
    /// The probe guest finished: 0 passed, else the number of the failed check.
    ProbeResult(u8),
    /// A vhost-user backend went away.
    BackendLost(String),
    /// The guest or KVM failed (triple fault, entry failure, ...).
    Fault(String),
}

impl GuestExit {
    /// vmm-mini's exit status for this end: power-off 0, reset 3, a fault 1, a lost backend 4
    /// (the probe maps its own results).
    pub fn exit_code(&self) -> u8 {
        match self {
            GuestExit::PowerOff => 0,
            GuestExit::ProbeResult(0) => 0,
            GuestExit::ProbeResult(_) | GuestExit::Fault(_) => 1,
            GuestExit::Reset => 3,
            GuestExit::BackendLost(_) => 4,
        }
    }
}

impl std::fmt::Display for GuestExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuestExit::PowerOff => write!(f, "guest powered off"),
            GuestExit::Reset => write!(f, "guest reset (vmm-mini does not reboot)"),
            GuestExit::ProbeResult(n) => write!(f, "probe result {n}"),
            GuestExit::BackendLost(why) | GuestExit::Fault(why) => write!(f, "{why}"),
        }
    }
}

/// Where the probe guest records the check it is running.
pub type ProbeProgress = Arc<AtomicU8>;

/// Every device of a VM, behind one lock taken per exit.
pub struct Devices {
    /// The console.
    pub serial: SerialDevice,
    /// virtio-mmio disks, device `i` at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE`.
    pub disks: Vec<BlkDevice>,
    /// Set for the probe guest: enables its exit and progress ports.
    pub probe: Option<ProbeProgress>,
}

impl Devices {
    /// A guest `in` from `port`. Unclaimed ports read as all ones, like an empty ISA bus.
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        if (SERIAL_PORT..SERIAL_PORT + 8).contains(&port) && data.len() == 1 {
            data[0] = self.serial.read((port - SERIAL_PORT) as u8);
        }
    }

    /// A guest `out` to `port`; returns the exit when the write stops the guest.
    pub fn pio_write(&mut self, port: u16, data: &[u8]) -> Option<GuestExit> {
        let byte = *data.first()?;
        match port {
            p if (SERIAL_PORT..SERIAL_PORT + 8).contains(&p) => {
                // Output that cannot be written (a closed stdout) is dropped, not fatal.
                let _ = self.serial.write((p - SERIAL_PORT) as u8, byte);
            }
            POWER_OFF_PORT if byte == SLEEP_S5 => return Some(GuestExit::PowerOff),
            RESET_PORT if byte == RESET_VALUE => return Some(GuestExit::Reset),
            PROBE_EXIT_PORT if self.probe.is_some() => return Some(GuestExit::ProbeResult(byte)),
            PROBE_PROGRESS_PORT => {
                if let Some(progress) = &self.probe {
                    progress.store(byte, Ordering::Relaxed);
                }
            }
            _ => {}
        }
        None
    }

    /// Stops every running disk's vrings (GET_VRING_BASE) so backends see an orderly end.
    pub fn stop_disks(&mut self) {
        for disk in &mut self.disks {
            if let Err(e) = disk.stop() {
                eprintln!("vmm-mini: stopping disk: {e}");
            }
        }
    }

    fn disk_at(&mut self, addr: u64) -> Option<(&mut BlkDevice, u64)> {
        let offset = addr.checked_sub(VIRTIO_MMIO_BASE)?;
        let index = usize::try_from(offset / VIRTIO_MMIO_SIZE).ok()?;
        self.disks.get_mut(index).map(|d| (d, offset % VIRTIO_MMIO_SIZE))
    }

    /// A guest MMIO read. Unclaimed addresses read as zeros.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        match self.disk_at(addr) {
            Some((disk, offset)) => disk.read(offset, data),
            None => data.fill(0),
        }
    }

    /// A guest MMIO write. A backend failure is reported on stderr; the device then asks the
    /// driver for a reset (DEVICE_NEEDS_RESET).
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        if let Some((disk, offset)) = self.disk_at(addr) {
            if let Err(e) = disk.write(offset, data) {
                eprintln!("vmm-mini: virtio-mmio disk at {addr:#x}: {e}");
            }
        }
    }
}
