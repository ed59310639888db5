//! `--disk socket=PATH,reconnect=MS`: when the backend goes away (a crash, a restart, an
//! upgrade), the guest keeps running and its requests wait; vmm-mini connects again every MS
//! milliseconds and hands the new backend the rings as they are
//! ([`crate::blk_device::BlkDevice::reconnect`]). The guest sees only a pause.
//!
//! One thread per such disk: it waits for the backend's socket to hang up (poll, with a short
//! timeout so that it notices [`Keeper::stop`]), then retries until a connection succeeds, then
//! waits on the new socket. The new backend's channel (BACKEND_REQ) gets its own thread.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config_change;
use crate::devices::Devices;
use crate::disk_spec::DiskSpec;
use crate::vhost_frontend::BlkFrontend;

/// How long one connection attempt (connect and negotiation) may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a waiting thread looks at its stop flag.
const STOP_POLL_MS: i32 = 100;

/// The reconnecting threads of a VM's disks.
pub struct Keeper {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Keeper {
    /// Keep every disk of `specs` (index = disk index) that has `reconnect` connected.
    pub fn start(specs: &[DiskSpec], devices: &Arc<Mutex<Devices>>) -> io::Result<Keeper> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            let Some(every) = spec.reconnect else { continue };
            let (spec, devices, stop) = (spec.clone(), devices.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("reconnect-{index}"))
                    .spawn(move || keep(index, &spec, every, &devices, &stop))?,
            );
        }
        Ok(Keeper { stop, threads })
    }

    /// Stop the threads (a disk being reconnected is left as it is).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn lock(devices: &Mutex<Devices>) -> std::sync::MutexGuard<'_, Devices> {
    devices.lock().unwrap_or_else(|p| p.into_inner())
}

/// Wait until `fd` hangs up (true) or `stop` is set (false).
fn wait_hang_up(fd: RawFd, stop: &AtomicBool) -> bool {
    let gone = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
    while !stop.load(Ordering::Acquire) {
        let mut p = libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, STOP_POLL_MS) };
        if n > 0 && p.revents & gone != 0 {
            return true;
        }
    }
    false
}

fn keep(index: usize, spec: &DiskSpec, every: Duration, devices: &Arc<Mutex<Devices>>, stop: &AtomicBool) {
    let path = spec.socket.display();
    loop {
        // Only this thread replaces the disk's frontend, so the fd stays this connection's.
        let Some(fd) = lock(devices).disks.get(index).map(|d| d.frontend().socket_fd()) else { return };
        if !wait_hang_up(fd, stop) {
            return;
        }
        let lost = Instant::now();
        eprintln!("vmm-mini: disk {index}: backend {path} went away; the guest waits, reconnecting every {every:?}");
        let mut fresh = loop {
            std::thread::sleep(every);
            if stop.load(Ordering::Acquire) {
                return;
            }
            if let Ok(f) = BlkFrontend::connect(&spec.socket, spec.num_queues, ATTEMPT_TIMEOUT, true) {
                break f;
            }
        };
        let channel = fresh.take_backend_channel();
        let taken = match lock(devices).disks.get_mut(index) {
            Some(disk) => disk.reconnect(fresh),
            None => return,
        };
        match taken {
            Ok(inflight) => eprintln!(
                "vmm-mini: disk {index}: reconnected to {path} after {:.0} ms ({})",
                lost.elapsed().as_secs_f64() * 1e3,
                if inflight { "in-flight region handed over" } else { "rings restarted from the used index" }
            ),
            Err(e) => eprintln!("vmm-mini: disk {index}: reconnected, but {e}"),
        }
        if let Some(channel) = channel {
            if let Err(e) = config_change::spawn(index, channel, devices.clone()) {
                eprintln!("vmm-mini: disk {index}: cannot serve the backend channel: {e}");
            }
        }
    }
}
