//! Shared helpers for the server tests: start an export in-process, and a small libblkio client.

#![allow(dead_code)]

pub mod ring;

// The workspace-wide binary lookup of strata-tests, shared as source: this crate cannot depend on
// strata-tests (which depends on it), and cargo gives a test only its own package's binaries.
#[path = "../../../tests/src/bins.rs"]
pub mod bins;

// Saving a benchmark's samples for docs/bench.md, shared the same way.
#[path = "../../../tests/src/timings.rs"]
pub mod timings;

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use blockdev::{BlockDev, MemDisk};
use vhost_user_blk::server::{Export, ExportSettings, ServedExport};

/// Every log line the server wrote in this test process (plain text), for tests that check
/// what it logged.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// A log writer that copies each line to the test output and to [`LOGS`].
struct TeeWriter;

impl std::io::Write for TeeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        tracing_subscriber::fmt::TestWriter::new().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Send the server's logs to the test output (RUST_LOG, default warn), and keep them for
/// [`logged`].
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_ansi(false)
        .with_writer(|| TeeWriter)
        .try_init();
}

/// The log lines so far that contain every one of `needles`.
pub fn logged(needles: &[&str]) -> Vec<String> {
    let logs = LOGS.lock().unwrap_or_else(|p| p.into_inner());
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

/// Serve `dev` at `dir/name.sock` with `settings` tweaked by `f`.
pub fn serve(dir: &Path, name: &str, dev: Arc<dyn BlockDev>, f: impl FnOnce(&mut ExportSettings)) -> ServedExport {
    init_logs();
    let mut s = ExportSettings::new(dir.join(format!("{name}.sock")));
    s.serial = "strata-test".into();
    f(&mut s);
    let export = Export::new(name.to_string(), s, dev, "test".into()).expect("export");
    ServedExport::start(Arc::new(export)).expect("serve")
}

/// A RAM disk of `size` bytes.
pub fn mem_disk(size: u64) -> Arc<dyn BlockDev> {
    Arc::new(MemDisk::new(size).unwrap())
}

/// A libblkio virtio-blk-vhost-user client with one shared buffer region.
pub struct Client {
    pub queues: Vec<Blkioq>,
    pub region: MemoryRegion,
    pub blkio: Blkio,
}

/// Result of one request: (user_data, ret).
pub type Done = (usize, i32);

impl Client {
    /// Connect to `socket` with `queues` queues and a `buf_len`-byte buffer region.
    pub fn connect(socket: &Path, queues: i32, buf_len: usize) -> Client {
        Self::try_connect(socket, queues, buf_len).expect("libblkio connect")
    }

    /// As `connect`, reporting failure.
    pub fn try_connect(socket: &Path, queues: i32, buf_len: usize) -> blkio::Result<Client> {
        Self::connect_with(socket, queues, buf_len, false)
    }

    /// Connect, declaring the device read-only when `read_only` (libblkio insists on it for RO devices).
    pub fn connect_with(socket: &Path, queues: i32, buf_len: usize, read_only: bool) -> blkio::Result<Client> {
        let mut b = Blkio::new("virtio-blk-vhost-user")?;
        b.set_str("path", socket.to_str().unwrap())?;
        b.set_bool("read-only", read_only)?;
        b.connect()?;
        b.set_i32("num-queues", queues)?;
        let out = b.start()?;
        let region = b.alloc_mem_region(buf_len)?;
        b.map_mem_region(&region)?;
        Ok(Client { queues: out.queues, region, blkio: b })
    }

    /// The buffer region as a byte slice.
    pub fn buf(&mut self) -> &mut [u8] {
        // SAFETY: the region is a live shared mapping of `len` bytes owned by `blkio`; the tests
        // only touch it while no request using the same bytes is in flight.
        unsafe { std::slice::from_raw_parts_mut(self.region.addr as *mut u8, self.region.len) }
    }

    /// Pointer to byte `off` of the region.
    pub fn ptr(&self, off: usize) -> *mut u8 {
        (self.region.addr + off) as *mut u8
    }

    /// Hand the requests queued on queue `q` to the device and kick it, waiting for nothing
    /// (libblkio only submits what `read`/`write` queued at the next `do_io`).
    pub fn submit(&mut self, q: usize) {
        let mut none: Vec<MaybeUninit<Completion>> = Vec::new();
        self.queues[q].do_io(&mut none, 0, None, None).expect("do_io");
    }

    /// Wait for at least `min` completions on queue `q`.
    pub fn reap(&mut self, q: usize, min: usize) -> Vec<Done> {
        let mut c: Vec<MaybeUninit<Completion>> = (0..64).map(|_| MaybeUninit::uninit()).collect();
        let mut out = Vec::new();
        while out.len() < min {
            let n = self.queues[q].do_io(&mut c, 1, None, None).expect("do_io");
            for x in &c[..n] {
                // SAFETY: do_io initialised the first n completions.
                let x = unsafe { x.assume_init_ref() };
                out.push((x.user_data, x.ret));
            }
        }
        out
    }

    /// Submit one request built by `f` on queue `q` and wait for it; returns its `ret`.
    pub fn one(&mut self, q: usize, f: impl FnOnce(&mut Blkioq, *mut u8)) -> i32 {
        let p = self.ptr(0);
        f(&mut self.queues[q], p);
        self.reap(q, 1)[0].1
    }

    /// Write `data` (copied into the region at 0) at `off`; returns `ret`.
    pub fn write(&mut self, q: usize, off: u64, data: &[u8]) -> i32 {
        self.buf()[..data.len()].copy_from_slice(data);
        let len = data.len();
        self.one(q, |qq, p| qq.write(off, p, len, 0, ReqFlags::empty()))
    }

    /// Read `len` bytes at `off`.
    pub fn read(&mut self, q: usize, off: u64, len: usize) -> (i32, Vec<u8>) {
        let ret = self.one(q, |qq, p| qq.read(off, p, len, 0, ReqFlags::empty()));
        (ret, self.buf()[..len].to_vec())
    }

    /// Flush.
    pub fn flush(&mut self, q: usize) -> i32 {
        self.one(q, |qq, _| qq.flush(0, ReqFlags::empty()))
    }
}

/// A scratch directory for sockets and images.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Path of the daemon binary.
pub fn daemon_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vhost-user-blk"))
}

/// Path of `blkctl` (another package's binary: found, or built once, by [`bins::bin_path`]).
pub fn blkctl_bin() -> PathBuf {
    bins::bin_path("blkctl").expect("find or build blkctl")
}

/// The daemon binary run as a process: started with its arguments, waited for until the paths
/// it binds exist, stopped with SIGTERM (which must end it cleanly), and killed if a test fails
/// before stopping it.
pub struct DaemonProcess(Option<std::process::Child>);

impl DaemonProcess {
    /// Start `vhost-user-blk ARGS` (stderr discarded) and wait up to 20 s for every path in
    /// `wait_for` to appear; panics if the daemon exits first.
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: &[S], wait_for: &[&Path]) -> DaemonProcess {
        DaemonProcess::start_env(args, &[], wait_for)
    }

    /// As [`DaemonProcess::start`], with `env` added to the daemon's environment.
    pub fn start_env<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)], wait_for: &[&Path]) -> DaemonProcess {
        let child = std::process::Command::new(daemon_bin())
            .args(args)
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the daemon");
        let mut d = DaemonProcess(Some(child));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        for path in wait_for {
            while !path.exists() {
                if let Some(Ok(Some(st))) = d.0.as_mut().map(|c| c.try_wait()) {
                    panic!("daemon exited early: {st}");
                }
                assert!(std::time::Instant::now() < deadline, "{} never appeared", path.display());
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        d
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.0.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// SIGKILL (a crash: nothing drained, nothing flushed) and reap it.
    pub fn kill(mut self) {
        if let Some(mut c) = self.0.take() {
            c.kill().expect("SIGKILL the daemon");
            c.wait().expect("reap the daemon");
        }
    }

    /// SIGTERM, then wait up to 20 s for a successful exit.
    pub fn stop(mut self) {
        let mut child = self.0.take().expect("running");
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().expect("wait for the daemon") {
                assert!(st.success(), "daemon exited with {st}");
                return;
            }
            assert!(std::time::Instant::now() < deadline, "daemon did not exit after SIGTERM");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
