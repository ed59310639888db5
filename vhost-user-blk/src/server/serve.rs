//! Serving one export: the socket is bound once, and frontends are served one at a time, each
//! with a fresh `VhostUserDaemon` (see `backend.rs` for why), the next accepted after the
//! previous one went away and its in-flight requests drained.
//!
//! The accept loop waits in poll(2) on the listening socket and an eventfd, so that stopping
//! wakes it whatever happened to the socket's path (removed, or taken over by another process);
//! the path is removed at stop only while it still names the socket this export bound.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use blockdev::{IoCtx, IoTag};
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

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
    /// Signalled to wake the accept loop out of its poll.
    wake: Arc<EventFd>,
    socket: SocketFile,
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
        source: std::io::Error,
    },
    /// Another process listens on the socket path: it is left alone.
    #[error("{0}: another process is listening on this socket (a daemon already serves it); stop it or choose another socket path")]
    InUse(String),
    /// The socket path names something that is not a socket (a disk image given as `socket=`,
    /// say): it is never removed to make room.
    #[error("{0}: exists and is not a socket; refusing to replace it (socket= names the vhost-user socket to create)")]
    NotASocket(String),
    /// The accept thread could not be started.
    #[error("{0}: cannot start the export thread: {1}")]
    Thread(String, std::io::Error),
}

impl ServedExport {
    /// Bind the export's socket (replacing a stale socket file, refusing a live one or a file
    /// that is not a socket) and start accepting frontends.
    pub fn start(export: Arc<Export>) -> Result<ServedExport, ServeError> {
        let path = export.settings.socket.clone();
        let (listener, socket) = bind(&path)?;
        let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| ServeError::Thread(export.name.clone(), e));
        let wake = match wake {
            Ok(w) => Arc::new(w),
            Err(e) => {
                socket.remove_if_ours();
                return Err(e);
            }
        };
        let backend = BlkBackend::new(export.clone());
        let active = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let spawned = {
            let (backend, active, stop, wake) = (backend.clone(), active.clone(), stop.clone(), wake.clone());
            std::thread::Builder::new()
                .name(format!("export {}", export.name))
                .spawn(move || accept_loop(listener, &wake, backend, active, stop))
        };
        let thread = match spawned {
            Ok(t) => t,
            Err(e) => {
                socket.remove_if_ours();
                return Err(ServeError::Thread(export.name.clone(), e));
            }
        };
        tracing::info!(export = %export.name, socket = %path.display(), "listening");
        warn_if_sqpoll_oversubscribes(&export);
        Ok(ServedExport { export, backend, active, stop, wake, socket, thread: Some(thread) })
    }

    /// The export's vhost-user backend.
    pub fn backend(&self) -> &Arc<BlkBackend> {
        &self.backend
    }

    /// Stop serving: refuse new requests, disconnect the frontend, drain in-flight requests,
    /// flush the device, remove the socket file if it is still this export's. Returns whether
    /// the flush succeeded.
    pub fn stop(mut self) -> bool {
        self.stop.store(true, Ordering::Release);
        self.backend.set_stopping();
        if let Some(h) = self.active.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            h.shutdown();
        }
        self.backend.drain_all(DRAIN_TIMEOUT);
        // Wake the accept loop if it waits for a frontend. The eventfd stays readable, so a
        // loop that is about to poll sees it too; a full counter is readable as well.
        let _ = self.wake.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if !self.socket.remove_if_ours() {
            tracing::warn!(
                export = %self.export.name,
                socket = %self.socket.path.display(),
                "the socket path no longer names this export's socket (removed, or another process took it over): left as it is"
            );
        }
        flush_device(&self.export)
    }
}

/// The socket file an export bound: its path, and the device and inode the path had right
/// after bind. The path is removed at stop only while it still names that inode, so a socket
/// another daemon bound at the same path since is never removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// What `path` names now (not following a symbolic link).
    pub fn record(path: &Path) -> std::io::Result<SocketFile> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(SocketFile { path: path.to_path_buf(), dev: meta.dev(), ino: meta.ino() })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path still names the socket recorded.
    pub fn is_ours(&self) -> bool {
        SocketFile::record(&self.path).is_ok_and(|now| now == *self)
    }

    /// Removes the path if it still names the socket recorded; true if it did, or if the path
    /// is already gone.
    pub fn remove_if_ours(&self) -> bool {
        if self.is_ours() {
            return std::fs::remove_file(&self.path).is_ok();
        }
        std::fs::symlink_metadata(&self.path).is_err()
    }
}

/// Binds `path` for an export. A socket nobody listens on any more (a daemon that died) is
/// replaced; a socket another process listens on, or a file that is not a socket, is refused
/// and left as it is.
fn bind(path: &Path) -> Result<(Listener, SocketFile), ServeError> {
    let (listener, socket) = bind_socket(path)?;
    // From a std listener: vhost's `Listener::new` would remove the path when dropped, whoever
    // it names by then.
    Ok((Listener::from(listener), socket))
}

/// Binds a Unix socket at `path` the way every socket of the daemon is bound (exports and the
/// control socket): a stale socket is replaced, a live one or a file that is not a socket is
/// refused and left alone; the returned [`SocketFile`] says whether the path is still ours.
pub fn bind_socket(path: &Path) -> Result<(UnixListener, SocketFile), ServeError> {
    let shown = || path.display().to_string();
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServeError::NotASocket(shown()));
        }
        match UnixStream::connect(path) {
            Ok(_) => return Err(ServeError::InUse(shown())),
            // Stale: nobody accepts on it.
            Err(_) => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let listener = bind_listening(path).map_err(|source| ServeError::Bind { path: shown(), source })?;
    let socket = SocketFile::record(path).map_err(|source| ServeError::Bind { path: shown(), source })?;
    Ok((listener, socket))
}

/// Binds and listens under a temporary name beside `path`, then renames the socket into place,
/// so the path never names a socket that refuses connections: a frontend (or a script waiting
/// for the file) that connects as soon as it appears is let in. Where the temporary name cannot
/// be bound (a path near the 108-byte limit), binds `path` directly.
fn bind_listening(path: &Path) -> std::io::Result<UnixListener> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".vub{}.{n}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let Ok(listener) = UnixListener::bind(&tmp) else { return UnixListener::bind(path) };
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// What the accept loop's wait ended with.
enum Wait {
    /// A frontend is waiting to be accepted.
    Frontend,
    /// The export is stopping.
    Stop,
}

/// Waits until a frontend connects to `listener` or `wake` is signalled.
fn wait_for_frontend(listener: &Listener, wake: &EventFd) -> std::io::Result<Wait> {
    let mut fds = [
        libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    loop {
        // SAFETY: `fds` is an array of `fds.len()` initialised pollfd structs, alive for the
        // call; both descriptors stay open while it runs (owned by the caller).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(Wait::Stop);
        }
        if fds[0].revents & libc::POLLIN != 0 {
            return Ok(Wait::Frontend);
        }
        if fds[0].revents != 0 {
            return Err(std::io::Error::other(format!("listening socket reported poll events {:#x}", fds[0].revents)));
        }
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
    wake: &EventFd,
    backend: Arc<BlkBackend>,
    active: Arc<Mutex<Option<ShutdownHandle>>>,
    stop: Arc<AtomicBool>,
) {
    let name = backend.export.name.clone();
    while !stop.load(Ordering::Acquire) {
        // The blocking accept in `daemon.start` runs only once a connection is queued: a queued
        // Unix connection stays queued even if its peer closes, so it cannot block there.
        match wait_for_frontend(&listener, wake) {
            Ok(Wait::Frontend) => {}
            Ok(Wait::Stop) => break,
            Err(e) => {
                tracing::error!(export = %name, "waiting for a frontend failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
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
/// queues collapse (docs/server.md, "Kernel submission threads"). Say so at start rather than
/// leave the user to find out.
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
