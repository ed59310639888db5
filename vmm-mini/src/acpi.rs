//! ACPI tables for Linux guests: RSDP, XSDT, a hardware-reduced FADT (power-off and reset
//! through I/O ports), a MADT listing the vCPUs' local APICs and the IOAPIC, and a DSDT
//! describing the serial port (`PNP0501`) and the virtio-mmio disks (`LNRO0005`, as
//! Firecracker does, since Debian's kernels have no virtio-mmio command-line devices).

use acpi_tables::aml;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use crate::layout::{
    ACPI_START, APIC_ADDR, HIGH_MEMORY_START, IOAPIC_ADDR, POWER_OFF_PORT, RESET_PORT, RESET_VALUE, SERIAL_IRQ,
    SERIAL_PORT, VIRTIO_MMIO_SIZE,
};

const OEM_ID: [u8; 6] = *b"STRATA";
const OEM_TABLE: [u8; 8] = *b"VMMMINI ";

/// A virtio-mmio device as the DSDT describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    /// Base of its register window.
    pub base: u64,
    /// Its interrupt line (GSI).
    pub irq: u32,
}

/// The tables, each with the guest address it goes to.
#[derive(Debug)]
pub struct AcpiTables {
    /// (guest address, bytes) of every table, RSDP first.
    pub tables: Vec<(u64, Vec<u8>)>,
}

/// The tables do not fit between [`ACPI_START`] and 1 MiB.
#[derive(Debug, thiserror::Error)]
#[error("ACPI tables need {0} bytes, more than the {HIGH_MEMORY_START:#x} - {ACPI_START:#x} area holds")]
pub struct AcpiTooBig(pub u64);

/// A Generic Address Structure for a byte-wide I/O port.
fn io_port_gas(port: u16) -> [u8; 12] {
    let mut gas = [0u8; 12];
    gas[0] = 1; // SystemIO
    gas[1] = 8; // register bit width
    gas[3] = 1; // byte access
    gas[4..].copy_from_slice(&u64::from(port).to_le_bytes());
    gas
}

/// The DSDT: COM1, the virtio-mmio devices and the `_S5_` sleep type Linux writes to power off.
pub fn dsdt(devices: &[MmioDeviceInfo]) -> Sdt {
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    let com1_io = aml::IO::new(SERIAL_PORT, SERIAL_PORT, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, SERIAL_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::EISAName::new("PNP0501");
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &com1_hid),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &com1_crs),
        ],
    )
    .to_aml_bytes(&mut table);
    for (i, dev) in devices.iter().enumerate() {
        let memory = aml::Memory32Fixed::new(true, dev.base as u32, VIRTIO_MMIO_SIZE as u32);
        let irq = aml::Interrupt::new(true, true, false, false, dev.irq);
        let crs = aml::ResourceTemplate::new(vec![&memory, &irq]);
        let uid = i as u32;
        let path = format!("_SB_.V{i:03X}");
        aml::Device::new(
            path.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(&mut table);
    }
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&5u8])).to_aml_bytes(&mut table);
    table
}

/// The FADT (revision 6): hardware-reduced ACPI, sleep control at [`POWER_OFF_PORT`], reset
/// register at [`RESET_PORT`], no legacy devices, VGA, MSI or CMOS clock.
pub fn fadt(dsdt_addr: u64) -> Sdt {
    let mut table = Sdt::new(*b"FACP", 276, 6, OEM_ID, OEM_TABLE, 1);
    // IAPC_BOOT_ARCH: VGA not present (2), MSI not supported (3), ASPM controls (4), no CMOS RTC (5).
    table.write_u16(109, (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5));
    // Flags: RESET_REG_SUP (10), HW_REDUCED_ACPI (20).
    table.write_u32(112, (1 << 10) | (1 << 20));
    table.write_bytes(116, &io_port_gas(RESET_PORT));
    table.write_u8(128, RESET_VALUE);
    table.write_u8(131, 0); // FADT minor version: ACPI 6.0
    table.write_u64(140, dsdt_addr); // X_DSDT
    table.write_bytes(244, &io_port_gas(POWER_OFF_PORT)); // SLEEP_CONTROL_REG
    table.write_bytes(256, &io_port_gas(POWER_OFF_PORT)); // SLEEP_STATUS_REG
    table.write_u64(268, u64::from_le_bytes(*b"STRATAVM")); // hypervisor vendor identity
    table
}

/// The MADT: one enabled local APIC per vCPU (APIC id = index) and the IOAPIC at GSI 0.
pub fn madt(num_cpus: u8) -> Sdt {
    let mut table = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE, 1);
    table.write_u32(36, APIC_ADDR);
    table.write_u32(40, 1); // PCAT_COMPAT: there are 8259 PICs too
    for cpu in 0..num_cpus {
        // Processor Local APIC: type 0, length 8, UID, APIC id, flags (enabled).
        table.append_slice(&[0, 8, cpu, cpu, 1, 0, 0, 0]);
    }
    // I/O APIC: type 1, length 12, id, reserved, address, GSI base.
    let mut ioapic = vec![1, 12, 0, 0];
    ioapic.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes());
    table.append_slice(&ioapic);
    table
}

/// The XSDT listing `entries`.
pub fn xsdt(entries: &[u64]) -> Sdt {
    let mut table = Sdt::new(*b"XSDT", 36, 1, OEM_ID, OEM_TABLE, 1);
    for addr in entries {
        table.append_slice(&addr.to_le_bytes());
    }
    table
}

fn align8(addr: u64) -> u64 {
    (addr + 7) & !7
}

/// Lays out every table from [`ACPI_START`]: RSDP, XSDT, FADT, MADT, DSDT.
pub fn build_acpi_tables(num_cpus: u8, devices: &[MmioDeviceInfo]) -> Result<AcpiTables, AcpiTooBig> {
    let dsdt = dsdt(devices);
    let madt = madt(num_cpus);
    let rsdp_addr = ACPI_START;
    let xsdt_addr = align8(rsdp_addr + Rsdp::len() as u64);
    let xsdt_len = 36 + 2 * 8;
    let fadt_addr = align8(xsdt_addr + xsdt_len);
    let madt_addr = align8(fadt_addr + 276);
    let dsdt_addr = align8(madt_addr + madt.len() as u64);
    let end = dsdt_addr + dsdt.len() as u64;
    if end > HIGH_MEMORY_START {
        return Err(AcpiTooBig(end - ACPI_START));
    }
    let xsdt = xsdt(&[fadt_addr, madt_addr]);
    let mut rsdp_bytes = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp_bytes);
    let tables = vec![
        (rsdp_addr, rsdp_bytes),
        (xsdt_addr, xsdt.as_slice().to_vec()),
        (fadt_addr, fadt(dsdt_addr).as_slice().to_vec()),
        (madt_addr, madt.as_slice().to_vec()),
        (dsdt_addr, dsdt.as_slice().to_vec()),
    ];
    Ok(AcpiTables { tables })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn disks() -> Vec<MmioDeviceInfo> {
        vec![MmioDeviceInfo { base: 0xd000_0000, irq: 5 }, MmioDeviceInfo { base: 0xd000_1000, irq: 6 }]
    }

    #[test]
    fn every_table_checksums_to_zero_and_has_its_length() {
        let t = build_acpi_tables(4, &disks()).unwrap();
        let (_, rsdp) = &t.tables[0];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP v1 checksum");
        assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
        for (addr, table) in &t.tables[1..] {
            assert_eq!(sum(table), 0, "checksum of {}", String::from_utf8_lossy(&table[..4]));
            assert_eq!(u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize, table.len());
            assert_eq!(addr % 8, 0);
        }
    }

    #[test]
    fn tables_point_at_each_other() {
        let t = build_acpi_tables(1, &disks()).unwrap();
        let addr_of = |sig: &[u8]| t.tables.iter().find(|(_, b)| &b[..4] == sig).unwrap().0;
        let rsdp = &t.tables[0].1;
        assert_eq!(u64::from_le_bytes(rsdp[24..32].try_into().unwrap()), addr_of(b"XSDT"));
        let xsdt = &t.tables.iter().find(|(_, b)| &b[..4] == b"XSDT").unwrap().1;
        assert_eq!(u64::from_le_bytes(xsdt[36..44].try_into().unwrap()), addr_of(b"FACP"));
        assert_eq!(u64::from_le_bytes(xsdt[44..52].try_into().unwrap()), addr_of(b"APIC"));
        let fadt = &t.tables.iter().find(|(_, b)| &b[..4] == b"FACP").unwrap().1;
        assert_eq!(u64::from_le_bytes(fadt[140..148].try_into().unwrap()), addr_of(b"DSDT"));
    }

    #[test]
    fn madt_lists_one_local_apic_per_cpu_and_the_ioapic() {
        let m = madt(3);
        let entries = &m.as_slice()[44..];
        assert_eq!(entries.len(), 3 * 8 + 12);
        assert_eq!(&entries[16..20], &[0, 8, 2, 2]);
        assert_eq!(entries[24], 1);
    }

    #[test]
    fn dsdt_disassembles_with_iasl() {
        let dir = std::env::temp_dir().join(format!("vmm-mini-dsdt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let aml = dir.join("dsdt.aml");
        std::fs::write(&aml, dsdt(&disks()).as_slice()).unwrap();
        let out = match Command::new("iasl").arg("-d").arg(&aml).current_dir(&dir).output() {
            Ok(out) => out,
            Err(e) => {
                // scripts/setup.sh installs acpica-tools: in CI a missing iasl is a broken set-up.
                assert!(std::env::var_os("STRATA_REQUIRE_QEMU").is_none(), "iasl (acpica-tools): {e}");
                eprintln!("SKIPPED: iasl (acpica-tools) is not installed");
                return;
            }
        };
        assert!(out.status.success(), "iasl -d: {}", String::from_utf8_lossy(&out.stderr));
        let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(dsl.contains("PNP0501"), "{dsl}");
        assert_eq!(dsl.matches("LNRO0005").count(), 2, "{dsl}");
        assert!(dsl.contains("0xD0001000"), "{dsl}");
        assert!(dsl.contains("_S5_"), "{dsl}");
    }
}
