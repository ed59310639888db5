//! [`FioGuest`] under vmm-mini on this host (KVM on hardware virtualization).
//!
//! vmm-mini boots Debian's bzImage with the same fio initramfs as the QEMU runner. Its disks
//! are virtio-mmio devices found through the DSDT, in `--disk` order: the disks under test
//! (`/dev/vda`, ...) and then the results disk, a sparse file served by strata's own daemon
//! (vmm-mini has no disks of its own: every disk is a vhost-user-blk socket).

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{create_results_disk, FioGuest, FioOutput, RESULTS_SERIAL};
use crate::scratch::ScratchDir;
use crate::vmm_mini::VmmMini;
use crate::{io_err, Error, GuestArtifacts, Result};

/// The inner kernel's command line (`panic=-1`: a panic resets, which ends vmm-mini with 3).
pub const VMM_MINI_CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

impl FioGuest {
    /// vmm-mini's arguments to boot this guest: `kernel` and `initrd` as the machine that runs
    /// vmm-mini sees them, each disk under test on its socket and the results disk on
    /// `results_socket`, last.
    pub(crate) fn vmm_mini_args(&self, kernel: &Path, initrd: &Path, results_socket: &Path) -> Vec<String> {
        let mut args = vec![
            "--kernel".to_string(),
            kernel.display().to_string(),
            "--initrd".into(),
            initrd.display().to_string(),
            "--memory".into(),
            format!("{}M", self.memory_mib),
            "--cpus".into(),
            self.cpus.to_string(),
            "--cmdline".into(),
            VMM_MINI_CMDLINE.into(),
        ];
        for d in &self.disks {
            args.push("--disk".into());
            args.push(format!("socket={},num-queues={}", d.socket.display(), d.num_queues));
        }
        args.push("--disk".into());
        args.push(format!("socket={}", results_socket.display()));
        args
    }

    /// Boots the guest under vmm-mini right here (the disks' servers must be listening) and
    /// returns each disk's result, as [`FioGuest::run`] does with QEMU. Needs KVM on hardware
    /// virtualization to finish in reasonable time ([`crate::vmm_mini::detect_kvm`]). An error
    /// unless vmm-mini exits 0 (the guest powered off).
    pub fn run_vmm_mini(&self, vmm: &VmmMini) -> Result<FioOutput> {
        self.check_disks()?;
        let art = GuestArtifacts::ensure()?;
        let dir = ScratchDir::new("fio-vmm-mini").map_err(io_err("create scratch dir", std::env::temp_dir()))?;
        let initrd = self.prepare_initrd(&art, &dir)?;
        let results = create_results_disk(&dir)?;
        let socket = dir.join("results.sock");
        let daemon = ResultsServer::start(&vmm.daemon, &results, &socket)?;

        let mut cmd = Command::new(&vmm.binary);
        cmd.args(self.vmm_mini_args(&art.kernel, &initrd, &socket));
        let out = crate::child::run_captured(cmd, "vmm-mini", self.timeout, self.quiet)?;
        daemon.stop()?;
        if !out.status.success() {
            return Err(Error::Guest {
                what: format!(
                    "vmm-mini exited with {} (1: guest or KVM fault, 2: set-up error, 3: reset or panic, \
                     4: a backend went away, 77: no /dev/kvm); its stderr: {}",
                    out.status,
                    out.stderr.trim()
                ),
                console: out.console,
            });
        }
        let data = fs::read(&results).map_err(io_err("read results disk", &results))?;
        self.collect(&data, out)
    }
}

/// strata's daemon serving the results file; killed on drop unless stopped.
struct ResultsServer {
    child: Option<Child>,
    shown: String,
}

impl ResultsServer {
    /// Serves `file` on `socket` with serial [`RESULTS_SERIAL`]; waits up to 30 s for the socket.
    fn start(daemon: &Path, file: &Path, socket: &Path) -> Result<Self> {
        let mut cmd = Command::new(daemon);
        cmd.arg("--disk")
            .arg(format!("socket={},format=raw,path={},serial={RESULTS_SERIAL}", socket.display(), file.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let shown = format!("{cmd:?}");
        let child = cmd.spawn().map_err(|e| Error::Command { cmd: shown.clone(), detail: e.to_string() })?;
        let mut server = ResultsServer { child: Some(child), shown };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if let Some(Ok(Some(status))) = server.child.as_mut().map(|c| c.try_wait()) {
                return Err(server.failed(format!("exited with {status} before listening")));
            }
            if Instant::now() >= deadline {
                return Err(server.failed("did not listen within 30 s".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    fn failed(&self, detail: String) -> Error {
        Error::Command { cmd: self.shown.clone(), detail }
    }

    /// SIGTERM, then waits (up to 30 s) for a clean exit, so the results are on the file.
    fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(s)) if s.success() => return Ok(()),
                Ok(Some(s)) => return Err(self.failed(format!("exited with {s} after SIGTERM"))),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(self.failed("did not exit within 30 s of SIGTERM".into()));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(self.failed(e.to_string())),
            }
        }
    }
}

impl Drop for ResultsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
