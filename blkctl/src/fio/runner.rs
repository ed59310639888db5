//! `blkctl fio`: serve a disk with the vhost-user-blk daemon, run a fio job on it in a QEMU TCG
//! guest (or under vmm-mini: [`super::vmm`]), and (with `--compare qsd`, QEMU only) run the same
//! job on qemu-storage-daemon serving a copy of the same data.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blockdev::{IoCtx, IoTag, SharedBuf};
use serde::Serialize;
use strata_guest::fio::{set_job_option, FioDisk, FioDiskResult, FioGuest};
use strata_guest::scratch::ScratchDir;
use strata_guest::{qemu_escape, StorageDaemon};

use super::summary::Summary;
use super::vmm::{run_vmm_mini, Vmm};
use vhost_user_blk::spec::Spec;
use vhost_user_blk::stack::{open_spec, OpenCtx};

/// A runner failure, saying what and where.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FioError(pub String);

pub(super) type Result<T> = std::result::Result<T, FioError>;

pub(super) fn err(msg: impl Into<String>) -> FioError {
    FioError(msg.into())
}

/// What to run.
#[derive(Debug, Clone)]
pub struct FioOptions {
    /// The disk spec (as for `vhost-user-blk --disk`, without `socket=`).
    pub spec: String,
    /// The fio job file (run on `/dev/vda`).
    pub job: PathBuf,
    /// Replace every `size=` of the job (e.g. `16m`).
    pub size: Option<String>,
    /// Also run on qemu-storage-daemon serving a copy of the disk's data.
    pub compare_qsd: bool,
    /// Guest vCPUs.
    pub cpus: u32,
    /// Queues of the disk.
    pub num_queues: u16,
    /// Per guest.
    pub timeout: Duration,
    /// The `vhost-user-blk` daemon binary.
    pub daemon: PathBuf,
    /// Echo the guest console and the daemons' logs.
    pub verbose: bool,
    /// The machine that boots the guest.
    pub vmm: Vmm,
}

/// One server's run.
#[derive(Debug, Clone, Serialize)]
pub struct FioRun {
    /// `strata` or `qemu-storage-daemon`.
    pub server: String,
    /// The server's version line.
    pub version: String,
    /// fio's exit code in the guest.
    pub exit_code: i32,
    /// Guest wall time (boot, fio, power-off), seconds.
    pub guest_seconds: f64,
    /// The parsed summary.
    pub summary: Summary,
    /// fio's whole JSON output.
    pub fio: serde_json::Value,
    /// fio's stderr in the guest.
    pub fio_stderr: String,
    /// The machine that ran the guest: `qemu`, `vmm-mini`, or vmm-mini nested in QEMU TCG.
    pub vmm: String,
}

impl FioRun {
    /// One line: server, job, numbers, exit code, guest time (and the VMM unless QEMU).
    pub fn line(&self, job: &str) -> String {
        let vmm = if self.vmm == "qemu" { String::new() } else { format!(" ({})", self.vmm) };
        format!(
            "{}: {job}: {}; exit {}; guest {:.1} s{vmm}",
            self.server,
            self.summary.line(),
            self.exit_code,
            self.guest_seconds
        )
    }

    /// A run of `server` from one disk's result in the guest (run by QEMU until told otherwise).
    pub(super) fn from_result(server: &str, version: String, d: &FioDiskResult, guest_seconds: f64) -> Result<FioRun> {
        let summary = Summary::from_json(&d.json).map_err(|e| {
            err(format!("fio on {server} (exit {}): {e}; fio stderr:\n{}", d.exit_code, d.stderr.trim()))
        })?;
        let start = d.json.find('{').unwrap_or(0);
        let fio = serde_json::from_str(&d.json[start..]).unwrap_or(serde_json::Value::Null);
        Ok(FioRun {
            server: server.to_string(),
            version,
            exit_code: d.exit_code,
            guest_seconds,
            summary,
            fio,
            fio_stderr: d.stderr.clone(),
            vmm: "qemu".into(),
        })
    }
}

/// Runs the job on strata (and on qemu-storage-daemon with `compare_qsd`), reporting each
/// stage through `progress`.
pub fn run(opts: &FioOptions, progress: &mut dyn FnMut(&str)) -> Result<Vec<FioRun>> {
    let job_text = fs::read_to_string(&opts.job).map_err(|e| err(format!("job file {}: {e}", opts.job.display())))?;
    let job_text = match &opts.size {
        Some(size) => set_job_option(&job_text, "size", size),
        None => job_text,
    };
    let spec = Spec::parse(&opts.spec).map_err(|e| err(format!("disk spec '{}': {e}", opts.spec)))?;
    if spec.get("socket").is_some() {
        return Err(err(format!("disk spec '{}': leave out socket= (the runner picks one)", opts.spec)));
    }
    if let Vmm::VmmMini { binary, mode } = &opts.vmm {
        if opts.compare_qsd {
            return Err(err("--compare qsd runs with --vmm qemu only (qemu-storage-daemon is not in a nested guest)"));
        }
        return Ok(vec![run_vmm_mini(opts, binary, *mode, &job_text, &spec, progress)?]);
    }
    let dir = ScratchDir::new("blkctl-fio").map_err(|e| err(format!("scratch dir in the temp dir: {e}")))?;

    // The copy is taken first, so both servers start from the same data.
    let qsd_blockdevs = if opts.compare_qsd {
        progress("copying the disk's data for qemu-storage-daemon");
        Some(qsd_copy(&spec, &opts.spec, dir.path())?)
    } else {
        None
    };

    let mut runs = Vec::new();
    let socket = dir.join("strata.sock");
    progress(&format!("serving {} with {}", opts.spec, opts.daemon.display()));
    let daemon = StrataDaemon::start(opts, &socket, &dir.join("daemon.log"))?;
    let version = command_version(&opts.daemon);
    runs.push(run_guest(opts, &job_text, &socket, "strata", version, progress)?);
    daemon.stop()?;

    if let Some(blockdevs) = qsd_blockdevs {
        let socket = dir.join("qsd.sock");
        progress("serving the copy with qemu-storage-daemon");
        let qsd = StorageDaemon::export(&blockdevs, "disk", &socket, opts.num_queues)
            .map_err(|e| err(format!("qemu-storage-daemon: {e}")))?;
        let version = command_version(Path::new("qemu-storage-daemon"));
        runs.push(run_guest(opts, &job_text, &socket, "qemu-storage-daemon", version, progress)?);
        drop(qsd);
    }
    Ok(runs)
}

fn run_guest(
    opts: &FioOptions,
    job: &str,
    socket: &Path,
    server: &str,
    version: String,
    progress: &mut dyn FnMut(&str),
) -> Result<FioRun> {
    progress(&format!("booting a QEMU TCG guest with fio on {server}'s disk (a TCG boot takes several seconds)"));
    let t = Instant::now();
    let disk = FioDisk { socket: socket.to_path_buf(), num_queues: opts.num_queues, job: job.to_string() };
    let out = FioGuest::new()
        .disk(disk)
        .cpus(opts.cpus)
        .timeout(opts.timeout)
        .quiet(!opts.verbose)
        .run()
        .map_err(|e| err(format!("guest on {server}: {e}")))?;
    let guest_seconds = t.elapsed().as_secs_f64();
    let d = &out.disks[0];
    let run = FioRun::from_result(server, version, d, guest_seconds)?;
    progress(&format!("{server}: fio exited {} after {guest_seconds:.1} s", d.exit_code));
    Ok(run)
}

/// The first line of `BIN --version`, or `BIN (version unknown)`.
pub(super) fn command_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_string))
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| format!("{} (version unknown)", bin.display()))
}

/// strata's daemon serving one disk; killed on drop unless stopped.
pub(super) struct StrataDaemon {
    child: Option<Child>,
    log: PathBuf,
}

impl StrataDaemon {
    /// Serves `opts.spec` on `socket`, logging to `log`; waits up to 60 s for the socket.
    pub(super) fn start(opts: &FioOptions, socket: &Path, log: &Path) -> Result<StrataDaemon> {
        let disk =
            format!("socket={},{},num-queues={},serial=strata-fio", socket.display(), opts.spec, opts.num_queues);
        let log_file = fs::File::create(log).map_err(|e| err(format!("daemon log {}: {e}", log.display())))?;
        let mut cmd = Command::new(&opts.daemon);
        cmd.arg("--disk").arg(&disk).stdin(Stdio::null());
        if opts.verbose {
            cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        }
        let child = cmd.stdout(Stdio::null()).stderr(log_file).spawn().map_err(|e| {
            err(format!(
                "start {}: {e} (build it with cargo build -p vhost-user-blk, or pass --daemon)",
                opts.daemon.display()
            ))
        })?;
        let mut d = StrataDaemon { child: Some(child), log: log.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !socket.exists() {
            if let Some(c) = d.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(err(format!("the daemon exited with {status} before listening: {}", d.log_text())));
                }
            }
            if Instant::now() >= deadline {
                return Err(err(format!("the daemon did not listen on {} within 60 s", socket.display())));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    fn log_text(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, and an error unless it exits 0 within 30 s (requests finished, disk flushed).
    pub(super) fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(err(format!("the daemon exited with {status} after SIGTERM: {}", self.log_text())))
                }
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(err("the daemon did not exit within 30 s of SIGTERM"));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(err(format!("wait for the daemon: {e}"))),
            }
        }
    }
}

impl Drop for StrataDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Makes qemu-storage-daemon's copy of the disk in `dir` and returns its `--blockdev`s (the
/// exported node is `disk`): a raw file is copied; a qcow2 image is copied and served as qcow2
/// (its backing file, if any, opened read-only where it is); anything else (RAID, thin, mem) is
/// read through strata's stack into a sparse raw file.
fn qsd_copy(spec: &Spec, text: &str, dir: &Path) -> Result<Vec<String>> {
    let format = spec.get("format").unwrap_or("");
    let path = spec.get("path").map(PathBuf::from);
    match (format, path) {
        ("raw", Some(path)) if !path.to_string_lossy().starts_with("node:") => {
            let copy = dir.join("qsd.raw");
            fs::copy(&path, &copy).map_err(|e| err(format!("copy {} for qemu-storage-daemon: {e}", path.display())))?;
            Ok(vec![format!("driver=file,node-name=disk,filename={},aio=io_uring", qemu_escape(&copy))])
        }
        ("qcow2", Some(path)) if !path.to_string_lossy().starts_with("node:") => {
            let copy = dir.join("qsd.qcow2");
            fs::copy(&path, &copy).map_err(|e| err(format!("copy {} for qemu-storage-daemon: {e}", path.display())))?;
            let mut bd = format!(
                "driver=qcow2,node-name=disk,file.driver=file,file.aio=io_uring,file.filename={}",
                qemu_escape(&copy)
            );
            if let Some((backing, fmt)) = qcow2_backing(&path)? {
                bd += &format!(
                    ",backing.driver={fmt},backing.read-only=on,backing.file.driver=file,backing.file.filename={}",
                    qemu_escape(&backing)
                );
            }
            Ok(vec![bd])
        }
        _ => {
            let copy = dir.join("qsd.raw");
            materialize(text, &copy)?;
            Ok(vec![format!("driver=file,node-name=disk,filename={},aio=io_uring", qemu_escape(&copy))])
        }
    }
}

/// The absolute backing file and its format of a qcow2 image, from `qemu-img info`.
pub(super) fn qcow2_backing(image: &Path) -> Result<Option<(PathBuf, String)>> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-f", "qcow2"])
        .arg(image)
        .output()
        .map_err(|e| err(format!("qemu-img info {}: {e}", image.display())))?;
    if !out.status.success() {
        return Err(err(format!("qemu-img info {}: {}", image.display(), String::from_utf8_lossy(&out.stderr))));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| err(format!("qemu-img info {}: bad JSON: {e}", image.display())))?;
    let Some(backing) = v.get("full-backing-filename").and_then(|b| b.as_str()) else { return Ok(None) };
    let fmt = v.get("backing-filename-format").and_then(|f| f.as_str()).unwrap_or("raw");
    Ok(Some((PathBuf::from(backing), fmt.to_string())))
}

/// Reads the whole disk of `spec` through strata's stack into a new sparse raw file `out`.
fn materialize(spec: &str, out: &Path) -> Result<()> {
    let dev = open_spec(spec, &OpenCtx::new()).map_err(|e| err(format!("open {spec}: {e}")))?;
    let size = dev.info().size;
    let file = fs::File::create(out).map_err(|e| err(format!("create {}: {e}", out.display())))?;
    file.set_len(size).map_err(|e| err(format!("size {}: {e}", out.display())))?;
    let io = IoCtx::new().map_err(|e| err(format!("io_uring: {e}")))?;
    const CHUNK: u64 = 1 << 20;
    let mut buf = SharedBuf::new(CHUNK as usize);
    let mut off = 0;
    while off < size {
        let len = CHUNK.min(size - off) as usize;
        io.block_on(dev.read(&io, off, buf.io_range(0, len), IoTag::DATA))
            .map_err(|e| err(format!("read {spec} at {off}: {e}")))?;
        let data = &buf.bytes()[..len];
        if data.iter().any(|&b| b != 0) {
            file.write_all_at(data, off).map_err(|e| err(format!("write {} at {off}: {e}", out.display())))?;
        }
        off += len as u64;
    }
    Ok(())
}
