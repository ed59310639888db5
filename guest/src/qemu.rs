//! Boot a guest under QEMU (TCG) with shared memfd memory and vhost-user-blk disks, and
//! capture its serial console; run qemu-storage-daemon as a reference vhost-user-blk server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Error, Result, END_MARKER, START_MARKER};
use crate::child::pump;

/// The QEMU system emulator: `$STRATA_QEMU` if set, else `qemu-system-x86_64` from `PATH`.
pub fn qemu_binary() -> PathBuf {
    std::env::var_os("STRATA_QEMU").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"))
}

/// Looks `name` up in `PATH` (or checks it directly if it contains a `/`).
fn which(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Whether a QEMU test can run. Returns `false` after printing `SKIPPED: <test> because ...`
/// on stderr when QEMU is missing, unless `STRATA_REQUIRE_QEMU` is set (as `scripts/test.sh`
/// does), in which case a missing QEMU panics so CI cannot pass without running the test.
pub fn require_qemu(test: &str) -> bool {
    let qemu = qemu_binary();
    if which(&qemu).is_some() {
        return true;
    }
    let why = format!("{} is not installed (scripts/setup.sh installs it)", qemu.display());
    if std::env::var_os("STRATA_REQUIRE_QEMU").is_some() {
        panic!("{test}: STRATA_REQUIRE_QEMU is set but {why}");
    }
    eprintln!("SKIPPED: {test} because {why}");
    false
}

/// A disk attached to the guest.
#[derive(Debug, Clone)]
enum Disk {
    /// A vhost-user-blk server listening on a unix socket.
    VhostUserBlk { socket: PathBuf, num_queues: u16 },
    /// A raw file on QEMU's own virtio-blk (for comparisons).
    Raw(PathBuf),
    /// A raw file on QEMU's virtio-blk with a serial and a fixed PCI slot, page-cache backed.
    Plain { path: PathBuf, serial: String, slot: u8 },
}

/// A QEMU TCG guest booted from a kernel and an initramfs, with its console captured.
#[derive(Debug, Clone)]
pub struct QemuGuest {
    kernel: PathBuf,
    initrd: PathBuf,
    memory_mib: u32,
    smp: u32,
    cpu: String,
    append: String,
    disks: Vec<Disk>,
    extra: Vec<String>,
    timeout: Duration,
    quiet: bool,
}

impl QemuGuest {
    /// 512 MiB of shared memfd memory, one vCPU, `-cpu max`, a 120 s timeout.
    pub fn new(kernel: impl AsRef<Path>, initrd: impl AsRef<Path>) -> Self {
        Self {
            kernel: kernel.as_ref().to_path_buf(),
            initrd: initrd.as_ref().to_path_buf(),
            memory_mib: 512,
            smp: 1,
            cpu: "max".into(),
            append: "console=ttyS0 panic=-1 quiet".into(),
            disks: Vec::new(),
            extra: Vec::new(),
            timeout: Duration::from_secs(120),
            quiet: false,
        }
    }

    /// Guest memory in MiB (all of it a shared memfd, as vhost-user needs).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Number of vCPUs.
    pub fn smp(mut self, cpus: u32) -> Self {
        self.smp = cpus;
        self
    }

    /// The `-cpu` model (`max` emulates AMD SVM, so nested KVM works in the guest).
    pub fn cpu(mut self, model: &str) -> Self {
        self.cpu = model.into();
        self
    }

    /// Appends to the kernel command line.
    pub fn append(mut self, args: &str) -> Self {
        self.append.push(' ');
        self.append.push_str(args);
        self
    }

    /// Attaches a `vhost-user-blk-pci` device served on `socket` (the server must listen first).
    pub fn vhost_user_blk(mut self, socket: impl AsRef<Path>, num_queues: u16) -> Self {
        self.disks.push(Disk::VhostUserBlk { socket: socket.as_ref().to_path_buf(), num_queues });
        self
    }

    /// Attaches a raw file through QEMU's built-in virtio-blk.
    pub fn raw_disk(mut self, path: impl AsRef<Path>) -> Self {
        self.disks.push(Disk::Raw(path.as_ref().to_path_buf()));
        self
    }

    /// Attaches a raw file through QEMU's virtio-blk (host page cache, no O_DIRECT, so tmpfs
    /// works) at PCI slot `slot` with GET_ID answer `serial`. Linux names virtio disks in slot
    /// order, so a high slot (e.g. 0x1f) makes this disk come after every vhost-user-blk disk.
    pub fn plain_disk(mut self, path: impl AsRef<Path>, serial: &str, slot: u8) -> Self {
        self.disks.push(Disk::Plain { path: path.as_ref().to_path_buf(), serial: serial.into(), slot });
        self
    }

    /// Do not echo the console and QEMU's stderr to our stderr (they are still captured).
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// Adds raw QEMU arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.extra.extend(args.into_iter().map(Into::into));
        self
    }

    /// Kill the guest and fail if it has not powered off after this long.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The QEMU command line this guest runs.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(qemu_binary());
        let m = self.memory_mib;
        cmd.args(["-accel", "tcg", "-cpu", &self.cpu, "-smp", &self.smp.to_string(), "-m", &format!("{m}M")])
            .args(["-object", &format!("memory-backend-memfd,id=mem,size={m}M,share=on")])
            .args(["-numa", "node,memdev=mem"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .args(["-append", &self.append, "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"]);
        for (i, disk) in self.disks.iter().enumerate() {
            match disk {
                Disk::VhostUserBlk { socket, num_queues } => {
                    cmd.args(["-chardev", &format!("socket,id=vub{i},path={}", qemu_escape(socket))])
                        .args(["-device", &format!("vhost-user-blk-pci,chardev=vub{i},num-queues={num_queues}")]);
                }
                Disk::Raw(path) => {
                    cmd.args([
                        "-drive",
                        &format!("file={},format=raw,if=virtio,cache=none,aio=io_uring", qemu_escape(path)),
                    ]);
                }
                Disk::Plain { path, serial, slot } => {
                    cmd.args(["-drive", &format!("file={},format=raw,if=none,id=drv{i}", qemu_escape(path))]).args([
                        "-device",
                        &format!("virtio-blk-pci,drive=drv{i},serial={},addr={slot:#x}", serial.replace(',', ",,")),
                    ]);
                }
            }
        }
        cmd.args(&self.extra);
        cmd
    }

    /// Boots the guest, waits for it to power off (or the timeout), and returns its console.
    ///
    /// Console lines are echoed to stderr as `guest| ...` (shown by the test harness when a
    /// test fails, or with `--nocapture`).
    ///
    /// QEMU 10's TCG sometimes aborts on its own assertion in `iotlb_to_section` while the
    /// firmware runs (a race in QEMU's memory map, seen under load with `-smp 2`). When that
    /// happens before the guest script started, nothing reached the disks, so the guest is
    /// booted once more and a loud note says why.
    pub fn run(&self) -> Result<GuestOutput> {
        let out = crate::child::run_captured(self.command(), "guest", self.timeout, self.quiet)?;
        if out.stderr.contains(QEMU_TCG_IOTLB_ABORT) && !out.console.contains(START_MARKER) {
            eprintln!(
                "guest: NOTE: QEMU aborted in TCG ({QEMU_TCG_IOTLB_ABORT}) before the guest script \
                 started, a QEMU bug unrelated to the disk under test: booting once more"
            );
            return crate::child::run_captured(self.command(), "guest", self.timeout, self.quiet);
        }
        Ok(out)
    }
}

/// What QEMU prints when its TCG memory-map race trips (see [`QemuGuest::run`]).
const QEMU_TCG_IOTLB_ABORT: &str = "iotlb_to_section: Assertion";

/// A guest started with [`QemuGuest::spawn`]: watch its console while it runs, then kill it
/// (SIGKILL, as a crash) or wait for it. Killed on drop.
#[derive(Debug)]
pub struct RunningGuest {
    child: Option<Child>,
    console: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    start: Instant,
}

impl RunningGuest {
    /// The console so far (`\r` removed).
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.console.lock().unwrap_or_else(|e| e.into_inner())).replace('\r', "")
    }

    /// Waits until `pred` holds for the console so far; an error with the console if the guest
    /// exits first or `timeout` passes.
    pub fn wait_for(&mut self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console();
            if pred(&text) {
                return Ok(text);
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(Error::Guest { what: format!("QEMU exited ({status}) before {what}"), console: text });
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Guest { what: format!("no {what} within {} s", timeout.as_secs()), console: text });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL to QEMU (the guest dies mid-whatever) and returns its console.
    pub fn kill(mut self) -> String {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.readers.drain(..).for_each(|r| drop(r.join()));
        self.console()
    }

    /// Waits for QEMU to exit (or kills it after `timeout`, returning [`Error::Timeout`]).
    pub fn wait(mut self, timeout: Duration) -> Result<GuestOutput> {
        let mut child = self.child.take().ok_or_else(|| Error::NotFound("a running QEMU".into()))?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.readers.drain(..).for_each(|r| drop(r.join()));
                    return Err(Error::Timeout { secs: timeout.as_secs(), output: self.console() });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(Error::Command { cmd: "wait for qemu".into(), detail: e.to_string() }),
            }
        };
        self.readers.drain(..).for_each(|r| drop(r.join()));
        let stderr = String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|e| e.into_inner())).replace('\r', "");
        Ok(GuestOutput { console: self.console(), stderr, status, elapsed: self.start.elapsed() })
    }
}

impl Drop for RunningGuest {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl QemuGuest {
    /// Starts QEMU and returns at once; see [`RunningGuest`].
    pub fn spawn(&self) -> Result<RunningGuest> {
        let mut cmd = self.command();
        let shown = format!("{cmd:?}");
        if !self.quiet {
            eprintln!("guest: {shown}");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Command { cmd: shown, detail: e.to_string() })?;
        let console = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = [
            child.stdout.take().map(|s| pump(s, console.clone(), (!self.quiet).then(|| "guest| ".to_string()))),
            child.stderr.take().map(|s| pump(s, stderr.clone(), (!self.quiet).then(|| "qemu stderr| ".to_string()))),
        ];
        Ok(RunningGuest {
            child: Some(child),
            console,
            stderr,
            readers: readers.into_iter().flatten().collect(),
            start: Instant::now(),
        })
    }
}

/// Escapes a path for a QEMU option value (a comma is written twice).
pub fn qemu_escape(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// What a guest printed, and how QEMU ended.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    /// Everything on the serial console (`\r` removed).
    pub console: String,
    /// QEMU's own stderr.
    pub stderr: String,
    /// QEMU's exit status (0 after the guest's `poweroff -f`).
    pub status: ExitStatus,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl GuestOutput {
    /// The console between the start marker and the end marker (empty if the script never
    /// started; up to the end of the console if it never finished).
    pub fn script_output(&self) -> &str {
        let Some(start) = self.console.find(START_MARKER) else { return "" };
        let rest = &self.console[start + START_MARKER.len()..];
        let rest = rest.strip_prefix('\n').unwrap_or(rest);
        match rest.find(END_MARKER) {
            Some(end) => &rest[..end],
            None => rest,
        }
    }

    /// The guest script's exit code from the end marker, if the script finished.
    pub fn script_exit_code(&self) -> Option<i32> {
        let at = self.console.rfind(&format!("{END_MARKER} rc="))?;
        let digits: String =
            self.console[at + END_MARKER.len() + 4..].chars().take_while(|c| c.is_ascii_digit() || *c == '-').collect();
        digits.parse().ok()
    }

    /// Panics with the whole console unless the script finished with exit code 0 and QEMU
    /// exited cleanly.
    pub fn assert_success(&self) {
        assert!(
            self.script_exit_code() == Some(0) && self.status.success(),
            "guest script failed (rc {:?}, qemu {}); console:\n{}\nqemu stderr:\n{}",
            self.script_exit_code(),
            self.status,
            self.console,
            self.stderr
        );
    }
}

/// `qemu-storage-daemon` exporting a raw file over vhost-user-blk: the reference server.
/// Killed on drop.
#[derive(Debug)]
pub struct StorageDaemon {
    child: Child,
    socket: PathBuf,
}

impl StorageDaemon {
    /// Exports `file` (writable) on a new unix socket `socket` with `num_queues` queues and
    /// waits up to 10 s for the socket to appear.
    pub fn export_raw(file: impl AsRef<Path>, socket: impl AsRef<Path>, num_queues: u16) -> Result<Self> {
        let blockdev = format!("driver=file,node-name=f,filename={}", qemu_escape(file.as_ref()));
        Self::export(&[blockdev], "f", socket, num_queues)
    }

    /// Starts qemu-storage-daemon with one `--blockdev` per entry of `blockdevs` (QEMU's
    /// `KEY=VALUE,...` syntax, paths escaped with [`qemu_escape`]) and exports node `node`
    /// (writable) on a new unix socket `socket`; waits up to 10 s for the socket to appear.
    pub fn export(blockdevs: &[String], node: &str, socket: impl AsRef<Path>, num_queues: u16) -> Result<Self> {
        let socket = socket.as_ref().to_path_buf();
        let mut cmd = Command::new("qemu-storage-daemon");
        for b in blockdevs {
            cmd.args(["--blockdev", b]);
        }
        cmd.args([
            "--export",
            &format!(
                "type=vhost-user-blk,id=e,node-name={node},addr.type=unix,addr.path={},writable=on,num-queues={num_queues}",
                qemu_escape(&socket)
            ),
        ]);
        let shown = format!("{cmd:?}");
        eprintln!("qsd: {shown}");
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| Error::Command { cmd: shown.clone(), detail: e.to_string() })?;
        let mut daemon = Self { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !daemon.socket.exists() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                return Err(Error::Command { cmd: shown, detail: format!("exited with {status} before listening") });
            }
            if Instant::now() >= deadline {
                return Err(Error::Command { cmd: shown, detail: "socket did not appear within 10 s".into() });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(daemon)
    }

    /// The unix socket QEMU connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
