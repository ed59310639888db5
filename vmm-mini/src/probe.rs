//! `vmm-mini probe`: boots the built-in bare-metal guest (guest/probe.S) against one
//! vhost-user-blk disk and reports which checks passed.
//!
//! The guest writes a pattern to sectors 0-1 and to the last sector of the disk (overwriting
//! them), unless [`ProbeOptions::read_only`] asks it to only read. The timeout bounds the
//! whole run: connecting, the vhost-user negotiation and the guest.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use crate::backend_watch::BackendWatch;
use crate::blk_device::BlkDevice;
use crate::config_change;
use crate::cpu::{enter_long_mode, set_cpuid, write_boot_tables};
use crate::devices::{Devices, GuestExit};
use crate::disk_spec::DiskSpec;
use crate::layout::{PROBE_ENTRY, PROBE_STACK_TOP};
use crate::memory::create_guest_memory;
use crate::reconnect::Keeper;
use crate::serial::new_serial;
use crate::vcpu::{lock, VcpuThreads};
use crate::vm::Vm;
use crate::Error;

/// The probe guest, assembled by build.rs.
pub static PROBE_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe.bin"));

/// Names of the probe's checks; check `n` (as the guest numbers them) is `CHECKS[n - 1]`.
/// Keep in sync with the CHECK_* numbers in guest/probe.S.
pub const CHECKS: [&str; 10] =
    ["device", "features", "queue", "capacity", "id", "write", "flush", "read", "compare", "past-end"];

/// Guest RAM of the probe VM: enough for its tables, code, rings and buffers.
const PROBE_MEMORY: u64 = 4 << 20;

/// Default seed of the data pattern ("STRATA" and a counter).
pub const DEFAULT_SEED: u64 = 0x5354_5241_5441_0000;

/// Bit of the guest's entry flags (`rsi`): probe without writing. Keep in sync with
/// FLAG_READ_ONLY in guest/probe.S.
const FLAG_READ_ONLY: u64 = 1;
/// The entry flags' bits from here up: how many times the guest runs the write, flush, read,
/// compare and past-end checks again after the first pass (REPEAT_SHIFT in guest/probe.S).
const REPEAT_SHIFT: u32 = 8;

/// What to probe and how long to wait.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// The disk.
    pub disk: DiskSpec,
    /// Give up after this long, counted from the start: connecting and the vhost-user
    /// negotiation included (a set-up error naming the step), or the guest's checks (naming the
    /// running check).
    pub timeout: Duration,
    /// Qword `i` of the pattern written to sectors 0-1 is `seed + i`; the last sector gets
    /// qwords 64-127.
    pub seed: u64,
    /// Send the guest's serial output to stderr instead of stdout (`--json` keeps stdout for
    /// the report).
    pub serial_to_stderr: bool,
    /// Probe without writing: the write check reads the sectors it would write instead, and
    /// the compare check expects a second read to return the same data. FLUSH is still sent
    /// (it changes no data).
    pub read_only: bool,
    /// Run the write-to-past-end checks this many more times (with a new pattern each round and
    /// the capacity read again), so the guest keeps doing I/O for a while (a daemon restart
    /// under `reconnect=MS`, a live resize).
    pub repeat: u32,
}

/// How the probe ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Every check passed.
    Passed,
    /// The named check failed.
    Failed(&'static str),
    /// The guest was still running the named check when the timeout hit.
    TimedOut(&'static str),
    /// The backend's socket hung up during the probe.
    BackendLost(String),
    /// The guest stopped without a result.
    GuestFault(String),
}

impl std::fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeOutcome::Passed => write!(f, "all checks passed"),
            ProbeOutcome::Failed(check) => write!(f, "check '{check}' failed"),
            ProbeOutcome::TimedOut(check) => write!(f, "timed out in check '{check}'"),
            ProbeOutcome::BackendLost(why) => write!(f, "{why}"),
            ProbeOutcome::GuestFault(why) => write!(f, "guest stopped without a result: {why}"),
        }
    }
}

fn check_name(number: u8) -> &'static str {
    usize::from(number).checked_sub(1).and_then(|i| CHECKS.get(i)).copied().unwrap_or("unknown")
}

/// The result of a probe run.
#[derive(Clone, Debug)]
pub struct ProbeReport {
    /// How it ended.
    pub outcome: ProbeOutcome,
    /// From process start of the VM set-up to the guest's last exit.
    pub elapsed: Duration,
    /// Time to connect, negotiate and build the VM, before the vCPU first runs.
    pub setup: Duration,
    /// `CLOCK_MONOTONIC` ns just before the vCPU's first KVM_RUN (0 if it never ran).
    pub first_kvm_run_ns: u64,
    /// The process's CPU time at that moment, in ns.
    pub cpu_ns_to_first_kvm_run: u64,
    /// `CLOCK_MONOTONIC` ns when that first KVM_RUN returned: the guest's first instructions
    /// ran, up to its first port write.
    pub first_exit_ns: u64,
}

impl ProbeReport {
    /// The report as one JSON object (what `vmm-mini probe --json` prints).
    pub fn to_json(&self) -> String {
        let (outcome, check) = match &self.outcome {
            ProbeOutcome::Passed => ("passed", None),
            ProbeOutcome::Failed(c) => ("failed", Some(*c)),
            ProbeOutcome::TimedOut(c) => ("timed-out", Some(*c)),
            ProbeOutcome::BackendLost(_) => ("backend-lost", None),
            ProbeOutcome::GuestFault(_) => ("guest-fault", None),
        };
        let check = check.map_or_else(|| "null".to_string(), |c| format!("\"{c}\""));
        let message = self.outcome.to_string().replace('\\', "\\\\").replace('"', "\\\"");
        format!(
            "{{\"outcome\":\"{outcome}\",\"check\":{check},\"message\":\"{message}\",\"setup_ms\":{:.3},\"total_ms\":{:.3},\
             \"first_kvm_run_monotonic_ns\":{},\"cpu_ms_to_first_kvm_run\":{:.3},\"first_exit_monotonic_ns\":{}}}",
            self.setup.as_secs_f64() * 1e3,
            self.elapsed.as_secs_f64() * 1e3,
            self.first_kvm_run_ns,
            self.cpu_ns_to_first_kvm_run as f64 / 1e6,
            self.first_exit_ns
        )
    }
}

/// Runs the probe guest against `opts.disk`; its serial output goes to stdout.
pub fn run_probe(opts: &ProbeOptions) -> Result<ProbeReport, Error> {
    let start = Instant::now();
    let deadline = start + opts.timeout;
    let mem = create_guest_memory(PROBE_MEMORY)?;
    let disk = BlkDevice::new(&opts.disk, mem.clone(), deadline.saturating_duration_since(Instant::now()))?;
    // Shut down at the timeout, so that a vCPU blocked in a vhost-user request (a backend that
    // stopped answering) can be stopped.
    let hang_up = disk.frontend().hang_up().map_err(Error::Io)?;
    let vm = Vm::new(mem.clone())?;
    for (queue, kick) in disk.kick_fds().iter().enumerate() {
        vm.register_kick(0, queue as u32, kick)?;
    }
    write_boot_tables(&mem).map_err(Error::GuestMemory)?;
    mem.write_slice(PROBE_GUEST, GuestAddress(PROBE_ENTRY)).map_err(Error::GuestMemory)?;
    let vcpu = vm.create_vcpu(0)?;
    set_cpuid(&vcpu, 0, &vm.supported_cpuid()?)?;
    let flags = if opts.read_only { FLAG_READ_ONLY } else { 0 } | (u64::from(opts.repeat) << REPEAT_SHIFT);
    enter_long_mode(&vcpu, 0, PROBE_ENTRY, PROBE_STACK_TOP, flags, opts.seed)?;

    let progress = Arc::new(AtomicU8::new(0));
    let out: Box<dyn std::io::Write + Send> =
        if opts.serial_to_stderr { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) };
    let serial = new_serial(out).map_err(Error::Io)?;
    let socket = if opts.disk.reconnect.is_some() {
        Vec::new()
    } else {
        vec![(disk.frontend().socket_fd(), disk.frontend().socket().to_path_buf())]
    };
    let mut disk = disk;
    let channel = disk.frontend_mut().take_backend_channel();
    let devices = Arc::new(Mutex::new(Devices { serial, disks: vec![disk], probe: Some(progress.clone()) }));
    // A config change (a live resize) is taken in; with --repeat the guest reads the capacity
    // again every round.
    if let Some(channel) = channel {
        config_change::spawn(0, channel, devices.clone()).map_err(Error::Io)?;
    }
    let (exits, exit_rx) = mpsc::channel();
    let watch = BackendWatch::start(socket, exits.clone()).map_err(Error::Io)?;
    let keeper = Keeper::start(std::slice::from_ref(&opts.disk), &devices).map_err(Error::Io)?;
    let setup = start.elapsed();
    let threads = VcpuThreads::spawn(vec![vcpu], devices.clone(), exits).map_err(Error::Io)?;
    let outcome = match exit_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(GuestExit::ProbeResult(0)) => ProbeOutcome::Passed,
        Ok(GuestExit::ProbeResult(n)) => ProbeOutcome::Failed(check_name(n)),
        Ok(GuestExit::BackendLost(why)) => ProbeOutcome::BackendLost(why),
        Ok(other) => ProbeOutcome::GuestFault(other.to_string()),
        Err(_) => ProbeOutcome::TimedOut(check_name(progress.load(Ordering::Relaxed))),
    };
    let elapsed = start.elapsed();
    let first = threads.first_run();
    let first_kvm_run_ns = first.entered_ns.load(Ordering::Relaxed);
    let cpu_ns_to_first_kvm_run = first.entered_cpu_ns.load(Ordering::Relaxed);
    let first_exit_ns = first.first_exit_ns.load(Ordering::Relaxed);
    let timed_out = matches!(outcome, ProbeOutcome::TimedOut(_));
    if timed_out {
        let _ = hang_up.shutdown(std::net::Shutdown::Both);
    }
    threads.stop();
    watch.stop();
    keeper.stop();
    if !timed_out && !matches!(outcome, ProbeOutcome::BackendLost(_)) {
        lock(&devices).stop_disks();
    }
    Ok(ProbeReport { outcome, elapsed, setup, first_kvm_run_ns, cpu_ns_to_first_kvm_run, first_exit_ns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_numbers_map_to_names() {
        assert_eq!(check_name(1), "device");
        assert_eq!(check_name(10), "past-end");
        assert_eq!(check_name(0), "unknown");
        assert_eq!(check_name(200), "unknown");
    }

    #[test]
    fn json_report_names_the_outcome_and_check() {
        let report = ProbeReport {
            outcome: ProbeOutcome::Failed("capacity"),
            elapsed: Duration::from_millis(12),
            setup: Duration::from_micros(1500),
            first_kvm_run_ns: 42,
            cpu_ns_to_first_kvm_run: 2_500_000,
            first_exit_ns: 43,
        };
        assert_eq!(
            report.to_json(),
            "{\"outcome\":\"failed\",\"check\":\"capacity\",\"message\":\"check 'capacity' failed\",\"setup_ms\":1.500,\
             \"total_ms\":12.000,\"first_kvm_run_monotonic_ns\":42,\"cpu_ms_to_first_kvm_run\":2.500,\"first_exit_monotonic_ns\":43}"
        );
        let lost = ProbeReport { outcome: ProbeOutcome::BackendLost("a \"b\"".into()), ..report };
        assert!(lost.to_json().contains("\"check\":null,\"message\":\"a \\\"b\\\"\""), "{}", lost.to_json());
    }

    #[test]
    fn probe_guest_is_assembled_and_small() {
        assert!(!PROBE_GUEST.is_empty());
        assert!(PROBE_GUEST.len() < 0x1_0000, "the guest must fit below its rings");
    }
}
