//! Entry state: identity-mapped page tables, a flat GDT, long-mode special registers (Linux's
//! 64-bit boot protocol, the probe) or 32-bit protected mode without paging (PVH), CPUID and
//! general registers.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs, CpuId};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::layout::{GDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Page-table entry bits: present, writable, (in a page directory) 2 MiB page.
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_HUGE: u64 = 0x80;

/// Selector of the 64-bit code segment in the boot GDT.
pub const CODE_SELECTOR: u16 = 0x8;
/// Selector of the data segment in the boot GDT.
pub const DATA_SELECTOR: u16 = 0x10;
/// Selector of the task state segment in the boot GDT.
pub const TSS_SELECTOR: u16 = 0x18;
/// Selector of the 32-bit code segment in the boot GDT (PVH entry).
pub const CODE32_SELECTOR: u16 = 0x20;
/// Limit of the TSS at PVH entry ("32-bit TSS with base 0 and limit 0x67").
const PVH_TSS_LIMIT: u32 = 0x67;

/// Builds a GDT descriptor from the access/flags word (`0xa09b` style), base and limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The boot GDT: null, 64-bit code, data, TSS, 32-bit code.
pub fn boot_gdt() -> [u64; 5] {
    [
        0,
        gdt_entry(0xa09b, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
        gdt_entry(0xc09b, 0, 0xfffff),
    ]
}

fn segment(selector: u16, type_: u8, long: bool, system: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long && !system),
        s: u8::from(!system),
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the boot GDT and the identity map of the first 4 GiB (2 MiB pages) into guest memory.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), GuestMemoryError> {
    for (i, entry) in boot_gdt().iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + 8 * i as u64))?;
    }
    mem.write_obj(PDPT_ADDR | PTE_PRESENT_RW, GuestAddress(PML4_ADDR))?;
    for gib in 0..4u64 {
        let pd = PD_ADDR + gib * 0x1000;
        mem.write_obj(pd | PTE_PRESENT_RW, GuestAddress(PDPT_ADDR + gib * 8))?;
        for i in 0..512u64 {
            let page = (gib << 30) | (i << 21);
            mem.write_obj(page | PTE_PRESENT_RW | PDE_HUGE, GuestAddress(pd + i * 8))?;
        }
    }
    Ok(())
}

/// Turns `sregs` into 64-bit long mode with paging through the boot tables and flat segments.
pub fn set_long_mode(sregs: &mut kvm_sregs) {
    let code = segment(CODE_SELECTOR, 0xb, true, false);
    let data = segment(DATA_SELECTOR, 0x3, false, false);
    let mut tss = segment(TSS_SELECTOR, 0xb, false, true);
    tss.g = 0;
    tss.limit = 0xfffff;
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = tss;
    set_gdt_and_idt(sregs);
    sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 |= CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
}

fn set_gdt_and_idt(sregs: &mut kvm_sregs) {
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&boot_gdt()) - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
}

/// Turns `sregs` into the PVH entry state: 32-bit protected mode, paging off (CR0 = PE|ET,
/// CR4 = 0, EFER = 0), flat 4 GiB 32-bit code and data segments, a 32-bit TSS with limit 0x67.
pub fn set_protected_mode(sregs: &mut kvm_sregs) {
    let code = segment(CODE32_SELECTOR, 0xb, false, false);
    let data = segment(DATA_SELECTOR, 0x3, false, false);
    let mut tss = segment(TSS_SELECTOR, 0xb, false, true);
    tss.g = 0;
    tss.limit = PVH_TSS_LIMIT;
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = tss;
    set_gdt_and_idt(sregs);
    sregs.cr0 = CR0_PE | CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
}

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
#[error("vCPU {vcpu}: {step}: {source}")]
pub struct CpuError {
    /// The vCPU index.
    pub vcpu: u8,
    /// The ioctl that failed.
    pub step: &'static str,
    /// KVM's error.
    #[source]
    pub source: kvm_ioctls::Error,
}

/// Gives `cpuid` this vCPU's APIC id (leaf 1 EBX[31:24], leaf 0xb EDX) and the hypervisor bit
/// (leaf 1 ECX[31]), and installs it.
pub fn set_cpuid(vcpu: &VcpuFd, index: u8, cpuid: &CpuId) -> Result<(), CpuError> {
    let mut cpuid = cpuid.clone();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                entry.ebx = (entry.ebx & 0x00ff_ffff) | (u32::from(index) << 24);
                // "Running on a hypervisor": Linux then finds KVM's leaves (kvm-clock, PV EOI).
                entry.ecx |= 1 << 31;
            }
            0xb | 0x1f => entry.edx = u32::from(index),
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid).map_err(|source| CpuError { vcpu: index, step: "KVM_SET_CPUID2", source })
}

/// Puts the vCPU in long mode at `rip` with the given stack and argument registers
/// (`rsi` carries Linux's boot_params, `rdi` the probe's pattern seed).
pub fn enter_long_mode(vcpu: &VcpuFd, index: u8, rip: u64, rsp: u64, rsi: u64, rdi: u64) -> Result<(), CpuError> {
    let err = |step| move |source| CpuError { vcpu: index, step, source };
    let mut sregs = vcpu.get_sregs().map_err(err("KVM_GET_SREGS"))?;
    set_long_mode(&mut sregs);
    vcpu.set_sregs(&sregs).map_err(err("KVM_SET_SREGS"))?;
    let regs = kvm_regs { rflags: 0x2, rip, rsp, rbp: rsp, rsi, rdi, ..Default::default() };
    vcpu.set_regs(&regs).map_err(err("KVM_SET_REGS"))?;
    Ok(())
}

/// Puts the vCPU at a PVH entry: 32-bit protected mode at `eip` with `ebx` = the guest address
/// of the `hvm_start_info`, interrupts off.
pub fn enter_protected_mode(vcpu: &VcpuFd, index: u8, eip: u64, start_info: u64) -> Result<(), CpuError> {
    let err = |step| move |source| CpuError { vcpu: index, step, source };
    let mut sregs = vcpu.get_sregs().map_err(err("KVM_GET_SREGS"))?;
    set_protected_mode(&mut sregs);
    vcpu.set_sregs(&sregs).map_err(err("KVM_SET_SREGS"))?;
    let regs = kvm_regs { rflags: 0x2, rip: eip, rbx: start_info, ..Default::default() };
    vcpu.set_regs(&regs).map_err(err("KVM_SET_REGS"))?;
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

fn set_delivery_mode(regs: &mut [std::ffi::c_char], offset: usize, mode: u32) {
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(&regs[offset..offset + 4]) {
        *b = *r as u8;
    }
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (r, b) in regs[offset..offset + 4].iter_mut().zip(value.to_le_bytes()) {
        *r = b as std::ffi::c_char;
    }
}

/// Local APIC virtual-wire set-up: LINT0 delivers the PIC's ExtINT, LINT1 NMIs (what a BIOS
/// leaves for Linux); x87 and SSE control words at their reset values.
pub fn set_lint_and_fpu(vcpu: &VcpuFd, index: u8) -> Result<(), CpuError> {
    let err = |step| move |source| CpuError { vcpu: index, step, source };
    let mut lapic = vcpu.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
    set_delivery_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_delivery_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(err("KVM_SET_LAPIC"))?;
    let fpu = kvm_bindings::kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(err("KVM_SET_FPU"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn gdt_entries_match_the_canonical_flat_descriptors() {
        assert_eq!(boot_gdt()[1], 0x00af_9b00_0000_ffff);
        assert_eq!(boot_gdt()[2], 0x00cf_9300_0000_ffff);
        assert_eq!(boot_gdt()[(CODE32_SELECTOR / 8) as usize], 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn gdt_is_written_whole() {
        let mem = create_guest_memory(1 << 20).unwrap();
        write_boot_tables(&mem).unwrap();
        let code32: u64 = mem.read_obj(GuestAddress(GDT_ADDR + u64::from(CODE32_SELECTOR))).unwrap();
        assert_eq!(code32, boot_gdt()[4]);
        let mut sregs = kvm_sregs::default();
        set_long_mode(&mut sregs);
        assert_eq!(sregs.gdt.limit, 5 * 8 - 1);
    }

    #[test]
    fn pvh_entry_is_flat_32_bit_protected_mode_without_paging() {
        let mut sregs = kvm_sregs::default();
        set_long_mode(&mut sregs); // whatever was there before must not leak through
        set_protected_mode(&mut sregs);
        assert_eq!(sregs.cr0, CR0_PE | CR0_ET);
        assert_eq!((sregs.cr3, sregs.cr4, sregs.efer), (0, 0, 0));
        let cs = sregs.cs;
        assert_eq!((cs.selector, cs.l, cs.db, cs.s, cs.type_), (CODE32_SELECTOR, 0, 1, 1, 0xb));
        assert_eq!((cs.base, cs.limit, cs.g), (0, 0xffff_ffff, 1));
        for seg in [sregs.ds, sregs.es, sregs.ss] {
            assert_eq!((seg.selector, seg.db, seg.type_, seg.base, seg.limit), (DATA_SELECTOR, 1, 0x3, 0, 0xffff_ffff));
        }
        assert_eq!((sregs.tr.base, sregs.tr.limit, sregs.tr.type_), (0, 0x67, 0xb));
    }

    #[test]
    fn page_tables_identity_map_four_gib() {
        let mem = create_guest_memory(1 << 20).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPT_ADDR);
        let pdpt3: u64 = mem.read_obj(GuestAddress(PDPT_ADDR + 3 * 8)).unwrap();
        let last: u64 = mem.read_obj(GuestAddress((pdpt3 & !0xfff) + 511 * 8)).unwrap();
        assert_eq!(last & !0xfff, 0xffe0_0000);
        assert_eq!(last & PDE_HUGE, PDE_HUGE);
    }

    #[test]
    fn long_mode_sregs_enable_paging_pae_and_lma() {
        let mut sregs = kvm_sregs::default();
        set_long_mode(&mut sregs);
        assert_eq!(sregs.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((sregs.cs.l, sregs.cs.selector, sregs.cr3), (1, CODE_SELECTOR, PML4_ADDR));
    }
}
