//! The KVM virtual machine: the VM fd, guest memory slots, irqchip, and the eventfds wired
//! into KVM (ioeventfds for virtio kicks, irqfds for interrupts).

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::layout::VIRTIO_MMIO_BASE;
use crate::virtio_mmio::reg::QUEUE_NOTIFY;

/// A KVM ioctl that failed.
#[derive(Debug, thiserror::Error)]
#[error("KVM {step}: {source}")]
pub struct VmError {
    /// What vmm-mini was doing.
    pub step: String,
    /// KVM's error.
    #[source]
    pub source: kvm_ioctls::Error,
}

fn err(step: impl Into<String>) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    let step = step.into();
    move |source| VmError { step, source }
}

/// Address of the identity-map page and TSS Intel's KVM needs (just below 4 GiB, outside RAM).
const IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
const TSS_ADDR: usize = 0xfffb_d000;

/// A KVM VM with its guest memory registered.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    mem: GuestMemoryMmap,
}

impl Vm {
    /// Opens /dev/kvm, creates a VM and registers every region of `mem` as a memory slot.
    pub fn new(mem: GuestMemoryMmap) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(err("open /dev/kvm"))?;
        let fd = kvm.create_vm().map_err(err("KVM_CREATE_VM"))?;
        for (slot, region) in mem.iter().enumerate() {
            let slot_region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region is a live mapping of `region.len()` bytes owned by `mem`, which
            // the Vm keeps alive for as long as the VM fd (and so the slot) exists.
            unsafe { fd.set_user_memory_region(slot_region) }.map_err(err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(Vm { kvm, fd, mem })
    }

    /// Creates the in-kernel irqchip (PIC, IOAPIC, local APICs) and PIT, as Linux guests need.
    pub fn create_irqchip(&self) -> Result<(), VmError> {
        self.fd.set_identity_map_address(IDENTITY_MAP_ADDR).map_err(err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        self.fd.set_tss_address(TSS_ADDR).map_err(err("KVM_SET_TSS_ADDR"))?;
        self.fd.create_irq_chip().map_err(err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        self.fd.create_pit2(pit).map_err(err("KVM_CREATE_PIT2"))
    }

    /// The guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The CPUID KVM supports, the base of every vCPU's CPUID.
    pub fn supported_cpuid(&self) -> Result<CpuId, VmError> {
        self.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(err("KVM_GET_SUPPORTED_CPUID"))
    }

    /// Creates vCPU `index`.
    pub fn create_vcpu(&self, index: u8) -> Result<VcpuFd, VmError> {
        self.fd.create_vcpu(index.into()).map_err(err(format!("KVM_CREATE_VCPU {index}")))
    }

    /// Routes 4-byte writes of `queue` to the `QueueNotify` register of virtio-mmio device
    /// `device` into `kick`, inside KVM (no exit to vmm-mini).
    pub fn register_kick(&self, device: usize, queue: u32, kick: &EventFd) -> Result<(), VmError> {
        let addr = VIRTIO_MMIO_BASE + device as u64 * crate::layout::VIRTIO_MMIO_SIZE + QUEUE_NOTIFY;
        self.fd
            .register_ioevent(kick, &IoEventAddress::Mmio(addr), queue)
            .map_err(err(format!("KVM_IOEVENTFD at {addr:#x} queue {queue}")))
    }

    /// Makes a signal of `fd` raise interrupt line `gsi` (needs the irqchip).
    pub fn register_irq(&self, fd: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd.register_irqfd(fd, gsi).map_err(err(format!("KVM_IRQFD gsi {gsi}")))
    }
}
