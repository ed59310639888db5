//! The daemon's sandbox (docs/sandbox.md): a seccomp filter per kind of thread, no new
//! privileges, capabilities dropped, Landlock where the kernel has it, optionally another user
//! and a chroot.
//!
//! Two steps. [`Sandbox::prepare`], first thing in `main` before any thread: no_new_privs, the
//! SIGSYS handler, every kind's filter compiled, the Landlock ruleset built, the user looked up,
//! and the thread start hook set (each thread strata starts confines itself before its work:
//! capabilities, Landlock, filter). Then, once sockets are bound and images opened,
//! [`Sandbox::lock_down`] on the main thread: chroot, drop to the user, then the main thread's
//! own capabilities, Landlock and filter. Exports and the control socket wait at a gate until
//! then, so no frontend or control request is served with the start-up privileges.

mod allow;
#[cfg(test)]
mod bpf_model;
mod fast_path;
mod filters;
mod gate;
pub mod landlock;
mod names;
mod privs;
mod sigsys;
mod trigger;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;

use blockdev::thread::{self, ThreadKind};

pub use filters::Filters;
pub use privs::User;

/// What a forbidden system call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// The process dies of SIGSYS; stderr names the thread and the call (the default).
    #[default]
    On,
    /// The call goes through and the kernel logs it (SECCOMP_RET_LOG: an `audit: type=1326`
    /// line in the kernel log naming the thread and the call number).
    Log,
    /// No filter.
    Off,
}

impl FromStr for SeccompMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" => Ok(SeccompMode::On),
            "log" => Ok(SeccompMode::Log),
            "off" => Ok(SeccompMode::Off),
            _ => Err(format!("'{s}': expected on, log or off")),
        }
    }
}

/// What the command line and configuration ask of the sandbox.
#[derive(Clone, Debug)]
pub struct Options {
    /// Seccomp filters.
    pub seccomp: SeccompMode,
    /// USER[:GROUP] to run as once start-up is done.
    pub user: Option<String>,
    /// Capabilities kept (names as `CAP_NET_ADMIN` or `net_admin`).
    pub keep_caps: Vec<String>,
    /// Directory to chroot into once start-up is done.
    pub chroot: Option<PathBuf>,
    /// Directories beneath which files stay reachable (Landlock): those the exports, nodes and
    /// flags name, and each `--allow-dir`.
    pub allowed_dirs: Vec<PathBuf>,
    /// Whether Landlock limits file access to `allowed_dirs` (where the kernel has it).
    pub landlock: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seccomp: SeccompMode::On,
            user: None,
            keep_caps: Vec::new(),
            chroot: None,
            allowed_dirs: Vec::new(),
            landlock: true,
        }
    }
}

/// The prepared sandbox, for the lock-down after start-up.
pub struct Sandbox {
    user: Option<User>,
    chroot: Option<PathBuf>,
}

/// Set once by [`Sandbox::prepare`]; read by the thread start hook.
struct Process {
    filters: Option<Filters>,
    landlock: Option<::landlock::RulesetCreated>,
    keep: caps::CapsHashSet,
    /// Whether threads keep CAP_SETUID/CAP_SETGID until the main thread drops to --user (glibc
    /// changes the ids of every thread).
    user_pending: bool,
}

static PROCESS: OnceLock<Process> = OnceLock::new();

impl Sandbox {
    /// Step one, before any thread is started: see the module documentation.
    pub fn prepare(opts: &Options) -> Result<Sandbox, String> {
        // A thread started before now would never be confined: refuse rather than run one.
        let others = other_threads();
        if !others.is_empty() {
            return Err(format!(
                "internal error: threads started before the sandbox was prepared would run unconfined: {}",
                others.join(", ")
            ));
        }
        privs::no_new_privs()?;
        let keep = privs::parse_caps(&opts.keep_caps)?;
        let user = opts.user.as_deref().map(User::lookup).transpose()?;
        if user.is_some() && !keep.is_empty() {
            return Err(
                "--keep-cap cannot be combined with --user (capabilities are kept only by a daemon that stays root)"
                    .into(),
            );
        }
        if let Some(dir) = &opts.chroot {
            if !dir.is_dir() {
                return Err(format!("--chroot {}: not a directory", dir.display()));
            }
        }
        let filters = match opts.seccomp {
            SeccompMode::Off => {
                tracing::warn!("seccomp filters are off (--seccomp off)");
                None
            }
            mode => Filters::build(mode)?,
        };
        if filters.is_some() {
            sigsys::install().map_err(|e| format!("cannot install the SIGSYS handler: {e}"))?;
        }
        let landlock = if opts.landlock { landlock::build(&opts.allowed_dirs)? } else { None };
        trigger::arm();
        let process = Process { filters, landlock, keep, user_pending: user.is_some() };
        if PROCESS.set(process).is_err() {
            return Err("the sandbox is prepared twice".into());
        }
        thread::set_start_hook(on_thread_start);
        gate::close();
        // The timer thread starts now, from the unconfined main thread, rather than lazily from
        // whichever confined thread first needs it (a queue worker may not start threads).
        blockdev::timer::start();
        // The engine reads the CPU count (std looks in /proc and cgroup files) once: now, not on
        // a queue worker that may not open files.
        let _ = blockdev::EngineConfig::default();
        Ok(Sandbox { user, chroot: opts.chroot.clone() })
    }

    /// Step two, on the main thread once every socket is bound and every image open: chroot,
    /// user, the main thread's capabilities and filter; then the gate opens.
    pub fn lock_down(self) -> Result<(), String> {
        if let Some(dir) = &self.chroot {
            privs::chroot(dir)?;
        }
        if let Some(user) = &self.user {
            user.switch()?;
            tracing::info!(uid = user.uid, gid = user.gid, "running as {}", user.name);
        }
        confine(ThreadKind::Main);
        gate::open();
        Ok(())
    }

    /// Open the gate without locking down (start-up failed: threads waiting at the gate must
    /// be able to stop).
    pub fn abandon() {
        gate::open();
    }
}

/// Confine every thread strata starts in this process from now on (exports, queue workers,
/// layer threads), as the daemon does: capabilities dropped, each kind's seccomp filter. The
/// calling thread and threads started otherwise stay as they are, and there is no Landlock,
/// user, chroot or gate. For in-process harnesses that serve exports (fuzz targets, tests), so
/// the code under test runs inside its filters. A second call does nothing.
pub fn confine_spawned_threads(mode: SeccompMode) -> Result<(), String> {
    if PROCESS.get().is_some() {
        return Ok(());
    }
    let filters = match mode {
        SeccompMode::Off => None,
        mode => Filters::build(mode)?,
    };
    if filters.is_some() {
        sigsys::install().map_err(|e| format!("cannot install the SIGSYS handler: {e}"))?;
    }
    // Keep whatever the harness itself holds: only its threads' capabilities are dropped.
    let process = Process { filters, landlock: None, keep: caps::CapsHashSet::new(), user_pending: false };
    if PROCESS.set(process).is_ok() {
        thread::set_start_hook(on_thread_start);
        blockdev::timer::start();
        let _ = blockdev::EngineConfig::default();
    }
    Ok(())
}

/// Names of the process's threads other than the calling one, io_uring's kernel threads
/// (`iou-wrk-*`, `iou-sqp-*`, which never run user code) aside.
fn other_threads() -> Vec<String> {
    // SAFETY: gettid has no arguments.
    let me = unsafe { libc::gettid() }.to_string();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    tasks
        .filter_map(|t| t.ok())
        .filter(|t| t.file_name().to_str() != Some(me.as_str()))
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| !c.starts_with("iou-"))
        .collect()
}

/// The start hook: capabilities, filter, and (exports, control plane) the gate.
fn on_thread_start(kind: ThreadKind) {
    confine(kind);
    if matches!(kind, ThreadKind::Protocol | ThreadKind::ControlPlane) {
        gate::wait();
    }
    if kind == ThreadKind::QueueWorker {
        trigger::fire();
    }
}

/// Drop the calling thread's capabilities and install its kind's filter. A thread that cannot
/// be confined ends the process: it must not run with more rights than asked.
fn confine(kind: ThreadKind) {
    let Some(p) = PROCESS.get() else { return };
    let mut keep = p.keep.clone();
    if p.user_pending && kind != ThreadKind::Main {
        keep.insert(caps::Capability::CAP_SETUID);
        keep.insert(caps::Capability::CAP_SETGID);
    }
    if let Err(e) = privs::drop_caps(&keep) {
        fatal(kind, &e);
    }
    // librbd reads its configuration and keyrings (/etc/ceph, or wherever ceph.conf says) from
    // its own threads at any time: Ceph client threads are not limited by Landlock.
    if let (Some(rs), false) = (&p.landlock, kind == ThreadKind::Rbd) {
        if let Err(e) = landlock::restrict(rs) {
            fatal(kind, &e);
        }
    }
    if let Some(f) = &p.filters {
        sigsys::record_thread(kind);
        if let Err(e) = f.apply(kind) {
            fatal(kind, &e);
        }
    }
}

fn fatal(kind: ThreadKind, e: &str) -> ! {
    tracing::error!("cannot confine a {} thread: {e}; stopping", kind.name());
    // exit_group: allowed by every filter (abort would need tgkill).
    // SAFETY: _exit has no preconditions; nothing of this process is left half-written on disk
    // by leaving here (devices flush on FLUSH requests, not at exit).
    unsafe { libc::_exit(1) }
}
