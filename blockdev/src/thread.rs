//! Every thread strata starts, by kind, through one spawn function.
//!
//! The daemon confines each kind of thread (seccomp, see the vhost-user-blk crate's `sandbox`
//! module): it sets a process-wide start hook once, and every thread started with [`spawn`]
//! runs that hook with its [`ThreadKind`] before its own work. Without a hook (blkctl, tests)
//! the hook is a no-op. Threads another crate starts (vhost-user-backend's queue workers) call
//! [`enter`] themselves at the top of their setup.

use std::io;
use std::sync::OnceLock;
use std::thread::JoinHandle;

/// What a thread does, which decides what it may do (its system-call allow-list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The process's main thread after start-up: waits for a stop signal, then shuts down.
    Main,
    /// A queue worker: the data path (virtqueue rings, io_uring submission and completion).
    QueueWorker,
    /// A vhost-user protocol thread: accepts a frontend, reads its messages, maps guest memory.
    Protocol,
    /// The control plane (the control socket's tokio runtime): opens images for `add`, resizes.
    ControlPlane,
    /// The process-wide timer thread.
    Timer,
    /// Background layer work: RAID rebuild and scrub, thin periodic commit.
    Background,
    /// A Ceph (librbd) client thread; librbd's own threads descend from it.
    Rbd,
}

impl ThreadKind {
    /// Every kind, for tables and tests.
    pub const ALL: [ThreadKind; 7] = [
        ThreadKind::Main,
        ThreadKind::QueueWorker,
        ThreadKind::Protocol,
        ThreadKind::ControlPlane,
        ThreadKind::Timer,
        ThreadKind::Background,
        ThreadKind::Rbd,
    ];

    /// The kind's name in logs and documentation.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::QueueWorker => "queue-worker",
            ThreadKind::Protocol => "protocol",
            ThreadKind::ControlPlane => "control-plane",
            ThreadKind::Timer => "timer",
            ThreadKind::Background => "background",
            ThreadKind::Rbd => "rbd",
        }
    }
}

/// The start hook: run on a new thread of the given kind before its work. It should not fail
/// silently; if it cannot confine the thread it logs and ends the process itself.
pub type StartHook = fn(ThreadKind);

static HOOK: OnceLock<StartHook> = OnceLock::new();

/// Set the process-wide start hook. Only the first call has an effect (returns false after).
pub fn set_start_hook(hook: StartHook) -> bool {
    HOOK.set(hook).is_ok()
}

/// Run the start hook for the calling thread, which is of `kind` (a no-op without a hook).
/// For threads started by code outside strata and for the main thread.
pub fn enter(kind: ThreadKind) {
    if let Some(hook) = HOOK.get() {
        hook(kind);
    }
}

/// Start a thread named `name` of `kind`: it runs the start hook, then `f`.
pub fn spawn<F, T>(kind: ThreadKind, name: impl Into<String>, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new().name(name.into()).spawn(move || {
        enter(kind);
        f()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_runs_the_work_and_names_the_thread() {
        let t = spawn(ThreadKind::Background, "strata-test", || std::thread::current().name().map(String::from));
        assert_eq!(t.unwrap().join().unwrap().as_deref(), Some("strata-test"));
    }

    #[test]
    fn kind_names_are_distinct() {
        let mut names: Vec<_> = ThreadKind::ALL.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ThreadKind::ALL.len());
    }
}
