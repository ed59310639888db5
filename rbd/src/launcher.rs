//! Where Ceph client threads come from. librados starts its messenger and timer threads from the
//! thread that connects, and a thread inherits its creator's seccomp filter and Landlock domain.
//! So that every Ceph thread runs under the Ceph client's filter alone (`ThreadKind::Rbd`,
//! docs/sandbox.md) whoever opens the image — the main thread at start-up, or the control plane
//! for a control-socket `add`, whose own filters are narrower — the daemon starts one launcher
//! thread of that kind before it locks itself down, and [`spawn_ceph_thread`] asks the launcher
//! to start each client thread. Without a launcher (blkctl, tests) client threads are started
//! directly.

use std::sync::mpsc::{channel, sync_channel, Sender};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

use blockdev::thread::ThreadKind;
use blockdev::{Error, Result};

/// Work for the launcher: start one thread.
type Job = Box<dyn FnOnce() + Send>;

static LAUNCHER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();

/// Start the launcher thread (once; later calls do nothing). The daemon calls this after its
/// sandbox is prepared and before it locks the main thread down.
pub fn start_launcher() -> std::io::Result<()> {
    if LAUNCHER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = channel::<Job>();
    blockdev::thread::spawn(ThreadKind::Rbd, "rbd-launcher", move || {
        while let Ok(job) = rx.recv() {
            job();
        }
    })?;
    let _ = LAUNCHER.set(Mutex::new(tx));
    Ok(())
}

/// Start a thread that talks to the Ceph cluster (connect, open, close, resize). Every thread the
/// Ceph client creates is started from one of these (librados starts its messenger and timer
/// threads inside `rados_connect`), so the Ceph client's seccomp filter, applied to the
/// launcher, covers them all. The one place such threads are made.
pub fn spawn_ceph_thread<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>> {
    let cannot = |e: std::io::Error| Error::from_io(e, format!("rbd: cannot start a Ceph client thread to {what}"));
    let Some(launcher) = LAUNCHER.get() else {
        return blockdev::thread::spawn(ThreadKind::Rbd, "rbd-client", f).map_err(cannot);
    };
    let (done_tx, done_rx) = sync_channel(1);
    let job: Job = Box::new(move || {
        // A child of the launcher: it has the Ceph client's filter already.
        let _ = done_tx.send(std::thread::Builder::new().name("rbd-client".into()).spawn(f));
    });
    let gone = || cannot(std::io::Error::other("the Ceph client launcher thread is gone"));
    launcher.lock().unwrap_or_else(|p| p.into_inner()).send(job).map_err(|_| gone())?;
    done_rx.recv().map_err(|_| gone())?.map_err(cannot)
}
