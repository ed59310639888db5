//! vCPU threads: the KVM_RUN loop that hands port and MMIO exits to [`Devices`], and the
//! means to stop every vCPU once one of them ends the guest.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// `CLOCK_MONOTONIC` now, in nanoseconds (the clock every process shares, so a harness that
/// read it before starting vmm-mini can subtract).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// This process's CPU time (all threads, user + system) now, in nanoseconds.
pub fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// When vCPU 0 first entered the guest and first came back (0 = not yet): the start-up
/// measurements of `vmm-mini probe --json`.
#[derive(Debug, Default)]
pub struct FirstRun {
    /// `CLOCK_MONOTONIC` ns just before the first KVM_RUN.
    pub entered_ns: AtomicU64,
    /// The process's CPU time (ns) at that moment.
    pub entered_cpu_ns: AtomicU64,
    /// `CLOCK_MONOTONIC` ns when the first KVM_RUN returned (the guest's first exit, e.g. its
    /// first port write).
    pub first_exit_ns: AtomicU64,
}

/// Runs `vcpu` until the guest stops or `stop` is set (checked whenever KVM_RUN is interrupted).
/// vCPU 0 records its first entry and exit in `first`.
pub fn run_vcpu(
    vcpu: &mut VcpuFd,
    index: u8,
    devices: &Mutex<Devices>,
    stop: &AtomicBool,
    first: &FirstRun,
) -> Option<GuestExit> {
    let mut first_pending = index == 0;
    loop {
        if stop.load(Ordering::Acquire) {
            return None;
        }
        if first_pending {
            first.entered_cpu_ns.store(process_cpu_ns(), Ordering::Relaxed);
            first.entered_ns.store(monotonic_ns(), Ordering::Relaxed);
        }
        let result = vcpu.run();
        if first_pending {
            first.first_exit_ns.store(monotonic_ns(), Ordering::Relaxed);
            first_pending = false;
        }
        let exit = match result {
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
    first: Arc<FirstRun>,
}

impl VcpuThreads {
    /// Starts one thread per vCPU. Each sends its guest exit (if any) to `exits`.
    pub fn spawn(vcpus: Vec<VcpuFd>, devices: Arc<Mutex<Devices>>, exits: Sender<GuestExit>) -> std::io::Result<Self> {
        // An interrupted KVM_RUN returns EINTR only if the signal has a handler; errors here mean
        // it is already registered.
        let _ = register_signal_handler(kick_signal(), ignore_signal);
        let stop = Arc::new(AtomicBool::new(false));
        let first = Arc::new(FirstRun::default());
        let mut handles = Vec::new();
        for (index, mut vcpu) in vcpus.into_iter().enumerate() {
            let (devices, exits, stop, first) = (devices.clone(), exits.clone(), stop.clone(), first.clone());
            let index = index as u8;
            let handle = std::thread::Builder::new().name(format!("vcpu{index}")).spawn(move || {
                if let Some(exit) = run_vcpu(&mut vcpu, index, &devices, &stop, &first) {
                    let _ = exits.send(exit);
                }
            })?;
            handles.push(handle);
        }
        Ok(VcpuThreads { handles, stop, first })
    }

    /// vCPU 0's first entry into the guest and first exit.
    pub fn first_run(&self) -> &FirstRun {
        &self.first
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
