//! vCPU threads: the KVM_RUN loop that hands port and MMIO exits to [`Devices`], and the
//! means to stop every vCPU once one of them ends the guest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::devices::{Devices, GuestExit};

/// Locks the devices; a vCPU thread that panicked while holding the lock left them usable
/// (every device update is a single register write), so a poisoned lock is taken over.
pub fn lock(devices: &Mutex<Devices>) -> MutexGuard<'_, Devices> {
    devices.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `vcpu` until the guest stops or `stop` is set (checked whenever KVM_RUN is interrupted).
pub fn run_vcpu(vcpu: &mut VcpuFd, index: u8, devices: &Mutex<Devices>, stop: &AtomicBool) -> Option<GuestExit> {
    loop {
        if stop.load(Ordering::Acquire) {
            return None;
        }
        let exit = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => lock(devices).pio_write(port, data),
            Ok(VcpuExit::IoIn(port, data)) => {
                lock(devices).pio_read(port, data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                lock(devices).mmio_read(addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                lock(devices).mmio_write(addr, data);
                None
            }
            Ok(VcpuExit::Hlt) => Some(GuestExit::Fault(format!("vCPU {index} halted with interrupts off"))),
            Ok(VcpuExit::Shutdown) => Some(GuestExit::Fault(format!("vCPU {index}: triple fault (shutdown)"))),
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => GuestExit::PowerOff,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => GuestExit::Reset,
                other => GuestExit::Fault(format!("vCPU {index}: system event {other}")),
            }),
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                Some(GuestExit::Fault(format!("vCPU {index}: entry failed, reason {reason:#x} on host cpu {cpu}")))
            }
            Ok(VcpuExit::InternalError) => Some(GuestExit::Fault(internal_error(vcpu, index))),
            Ok(VcpuExit::Intr) => None,
            Ok(other) => Some(GuestExit::Fault(format!("vCPU {index}: unexpected exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(GuestExit::Fault(format!("vCPU {index}: KVM_RUN: {e}"))),
        };
        if exit.is_some() {
            return exit;
        }
    }
}

/// Describes a KVM_EXIT_INTERNAL_ERROR: suberror, its data words and the guest's rip.
fn internal_error(vcpu: &mut VcpuFd, index: u8) -> String {
    let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
    let run = vcpu.get_kvm_run();
    // SAFETY: KVM filled the `internal` member of the exit union for KVM_EXIT_INTERNAL_ERROR.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let n = (internal.ndata as usize).min(internal.data.len());
    format!(
        "vCPU {index}: KVM internal error, suberror {} data {:x?} at rip {rip:#x}",
        internal.suberror,
        &internal.data[..n]
    )
}

/// The signal that interrupts KVM_RUN in a vCPU thread.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn ignore_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Running vCPU threads; the first guest exit any of them sees goes to the channel.
pub struct VcpuThreads {
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl VcpuThreads {
    /// Starts one thread per vCPU. Each sends its guest exit (if any) to `exits`.
    pub fn spawn(vcpus: Vec<VcpuFd>, devices: Arc<Mutex<Devices>>, exits: Sender<GuestExit>) -> std::io::Result<Self> {
        // An interrupted KVM_RUN returns EINTR only if the signal has a handler; errors here mean
        // it is already registered.
        let _ = register_signal_handler(kick_signal(), ignore_signal);
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for (index, mut vcpu) in vcpus.into_iter().enumerate() {
            let (devices, exits, stop) = (devices.clone(), exits.clone(), stop.clone());
            let index = index as u8;
            let handle = std::thread::Builder::new().name(format!("vcpu{index}")).spawn(move || {
                if let Some(exit) = run_vcpu(&mut vcpu, index, &devices, &stop) {
                    let _ = exits.send(exit);
                }
            })?;
            handles.push(handle);
        }
        Ok(VcpuThreads { handles, stop })
    }

    /// Stops every vCPU thread and waits for them: sets the stop flag and signals each thread
    /// until it leaves KVM_RUN (a signal that lands just before KVM_RUN is retried).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for handle in self.handles {
            while !handle.is_finished() {
                let _ = handle.kill(kick_signal());
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = handle.join();
        }
    }
}
