//! vmm-mini: a minimal KVM VMM whose disks are vhost-user-blk backends.
//!
//! `vmm-mini --kernel ...` boots Linux (bzImage, or ELF vmlinux through its PVH entry) with ACPI-described virtio-mmio
//! disks; `vmm-mini probe` boots a tiny built-in bare-metal guest that checks a backend end to end.
//! Guest memory is a shared memfd; disks are virtio-mmio (version 2) devices whose queues the
//! backend serves directly (KVM ioeventfd for kicks, irqfd for interrupts). This crate uses no
//! storage crate of the workspace: disks come only over vhost-user sockets.

pub mod acpi;
pub mod backend_watch;
pub mod blk_device;
pub mod boot_params;
pub mod config_change;
pub mod console;
pub mod cpu;
pub mod devices;
pub mod disk_spec;
pub mod kernel;
pub mod layout;
pub mod linux;
pub mod memory;
pub mod probe;
pub mod pvh;
pub mod reconnect;
pub mod serial;
pub mod socket_deadline;
pub mod vcpu;
pub mod vhost_frontend;
pub mod virtio_mmio;
pub mod vm;

/// Everything that can stop vmm-mini before or while running a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /dev/kvm is missing or unusable.
    #[error("KVM is not available: {0}")]
    NoKvm(String),
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// Guest memory could not be written.
    #[error("writing guest memory: {0}")]
    GuestMemory(vm_memory::GuestMemoryError),
    /// A disk could not be set up.
    #[error(transparent)]
    Disk(#[from] blk_device::BlkDeviceError),
    /// A KVM VM ioctl failed.
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    /// A vCPU could not be set up.
    #[error(transparent)]
    Cpu(#[from] cpu::CpuError),
    /// The kernel, command line or initrd could not be loaded.
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    /// The ACPI tables do not fit.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiTooBig),
    /// The zero page could not be written.
    #[error("writing boot parameters: {0}")]
    Boot(String),
    /// A bad option value.
    #[error("{0}")]
    InvalidArgument(String),
    /// A system call failed.
    #[error("{0}")]
    Io(std::io::Error),
}
