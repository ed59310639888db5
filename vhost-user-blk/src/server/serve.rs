//! Serving one export: the socket is bound once, and frontends are served one at a time, each
//! with a fresh `VhostUserDaemon` (see `backend.rs` for why), the next accepted after the
//! previous one went away and its in-flight requests drained.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use blockdev::{IoCtx, IoTag};
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::backend::BlkBackend;
use super::export::Export;

/// How long a disconnect or shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A running export: its backend and the thread accepting frontends.
pub struct ServedExport {
    /// The export.
    pub export: Arc<Export>,
    backend: Arc<BlkBackend>,
    active: Arc<Mutex<Option<ShutdownHandle>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Errors starting an export.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be bound.
    #[error("{path}: cannot listen: {source}")]
    Bind {
        /// Socket path.
        path: String,
        /// Cause.
        source: vhost::vhost_user::Error,
    },
    /// The accept thread could not be started.
    #[error("{0}: cannot start the export thread: {1}")]
    Thread(String, std::io::Error),
}

impl ServedExport {
    /// Bind the export's socket (replacing a stale socket file) and start accepting frontends.
    pub fn start(export: Arc<Export>) -> Result<ServedExport, ServeError> {
        let path = export.settings.socket.clone();
        let listener = Listener::new(&path, true)
            .map_err(|source| ServeError::Bind { path: path.display().to_string(), source })?;
        let backend = BlkBackend::new(export.clone());
        let active = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (backend, active, stop) = (backend.clone(), active.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("export {}", export.name))
                .spawn(move || accept_loop(listener, backend, active, stop))
                .map_err(|e| ServeError::Thread(export.name.clone(), e))?
        };
        tracing::info!(export = %export.name, socket = %path.display(), "listening");
        warn_if_sqpoll_oversubscribes(&export);
        Ok(ServedExport { export, backend, active, stop, thread: Some(thread) })
    }

    /// Stop serving: refuse new requests, disconnect the frontend, drain in-flight requests,
    /// flush the device, remove the socket file. Returns whether the flush succeeded.
    pub fn stop(mut self) -> bool {
        self.stop.store(true, Ordering::Release);
        self.backend.set_stopping();
        if let Some(h) = self.active.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            h.shutdown();
        }
        self.backend.drain_all(DRAIN_TIMEOUT);
        // Wake the accept loop if it is waiting for a frontend.
        let _ = UnixStream::connect(&self.export.settings.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.export.settings.socket);
        flush_device(&self.export)
    }
}

fn flush_device(export: &Export) -> bool {
    let res = IoCtx::new().and_then(|io| io.block_on(export.dev.flush(&io, IoTag::data("vhost-user-blk.shutdown"))));
    match res {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(export = %export.name, "final flush failed: {e}");
            false
        }
    }
}

fn accept_loop(
    mut listener: Listener,
    backend: Arc<BlkBackend>,
    active: Arc<Mutex<Option<ShutdownHandle>>>,
    stop: Arc<AtomicBool>,
) {
    let name = backend.export.name.clone();
    while !stop.load(Ordering::Acquire) {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        backend.begin_connection(mem.clone());
        let mut daemon = match VhostUserDaemon::new(name.clone(), backend.clone(), mem) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(export = %name, "cannot create the vhost-user handler: {e}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        backend.set_epoll_fds(daemon.get_epoll_handlers().iter().map(|h| h.as_raw_fd()).collect());
        if let Err(e) = daemon.start(&mut listener) {
            tracing::error!(export = %name, "accepting a frontend failed: {e}");
            drop(daemon);
            backend.end_connection();
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        *active.lock().unwrap_or_else(|p| p.into_inner()) = daemon.shutdown_handle();
        if stop.load(Ordering::Acquire) {
            daemon.request_shutdown();
        } else {
            backend.export.stats.connected();
            tracing::info!(export = %name, "frontend connected");
        }
        match daemon.wait() {
            Ok(()) => tracing::info!(export = %name, "frontend disconnected"),
            Err(e) => tracing::warn!(export = %name, "frontend connection ended: {e}"),
        }
        *active.lock().unwrap_or_else(|p| p.into_inner()) = None;
        backend.drain_all(DRAIN_TIMEOUT);
        drop(daemon);
        backend.end_connection();
    }
}

/// `sqpoll` gives every worker thread a kernel thread that spins while I/O keeps coming: with
/// more such pairs than CPUs they take the CPUs from each other (and from the guest), and deep
/// queues ran at a tenth of the default's speed in docs/server.md's measurements. Say so at
/// start rather than leave the user to find out.
fn warn_if_sqpoll_oversubscribes(export: &Export) {
    let settings = &export.settings;
    if settings.sqpoll_ms == 0 {
        return;
    }
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let busy = settings.threads() * 2;
    if busy > cpus {
        tracing::warn!(
            export = %export.name,
            "sqpoll: {} queue thread(s), each with a polling kernel thread, on {cpus} CPU(s): they will compete for CPUs and deep queues can run far slower than with sqpoll=off (see docs/server.md, \"Kernel submission threads\")",
            settings.threads()
        );
    }
}
