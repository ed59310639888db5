//! An open image and everything behind it (cluster handle, pool context, exclusive lock),
//! opened and closed on a Ceph client thread ([`spawn_ceph_thread`]), never
//! on a queue worker: connecting, opening and closing block on the network and make librados
//! start its own threads.

use std::ffi::{c_char, CString};
use std::sync::mpsc;
use std::time::Duration;

use blockdev::{Error, ErrorKind, Result};

use crate::config::RbdConfig;
use crate::ffi::{self, Api, RadosIoctxT, RadosT, RbdImageT};
use crate::launcher::spawn_ceph_thread;

/// Pointers owned by [`Image`]; `Send` so the open thread can hand them over.
struct Handles {
    cluster: RadosT,
    ioctx: RadosIoctxT,
    image: RbdImageT,
    locked: bool,
}

// SAFETY: librados and librbd handles may be used from any thread (librbd's image context has its
// own locks); strata never uses one from two threads without librbd's own synchronisation.
unsafe impl Send for Handles {}
// SAFETY: as above: the only calls made through a shared reference are librbd's thread-safe
// asynchronous submissions and `rbd_get_size`.
unsafe impl Sync for Handles {}

/// An open image.
pub struct Image {
    api: &'static Api,
    h: Handles,
    /// `pool/image` and the cluster, for messages.
    name: String,
    size: u64,
    stripe_unit: u64,
}

impl Image {
    /// Connect to the cluster `cfg` names and open its image, within `cfg.timeout` for each
    /// step (and a backstop on the whole). Errors name the image and the cluster.
    pub fn open(cfg: &RbdConfig) -> Result<Image> {
        cfg.validate()?;
        let cfg2 = cfg.clone();
        let (tx, rx) = mpsc::channel();
        // librbd is loaded there too, the first time: on a Ceph client thread, which may read
        // the libraries' files when the thread asking (a control-socket `add` in a sandboxed
        // daemon) may not.
        spawn_ceph_thread("open an image", move || {
            let _ = tx.send(ffi::api().and_then(|api| open_blocking(api, &cfg2)));
        })?;
        // Connecting is bounded by Ceph's own timeouts (set from `timeout=`); an open makes a
        // few round trips, each bounded. The backstop only guards against a client that ignores
        // them: the thread is then left to finish (and close what it opened) by itself.
        let backstop = cfg.timeout * 4 + Duration::from_secs(5);
        match rx.recv_timeout(backstop) {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::Io,
                format!(
                    "rbd image {}: the cluster ({}) did not answer within {} s",
                    cfg.spec(),
                    cluster_name(cfg),
                    backstop.as_secs()
                ),
            )),
        }
    }

    /// The raw image handle, for asynchronous requests.
    pub(crate) fn handle(&self) -> RbdImageT {
        self.h.image
    }

    /// The loaded API.
    pub(crate) fn api(&self) -> &'static Api {
        self.api
    }

    /// `pool/image` and its cluster, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The size read at open.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The image's stripe unit (its object size unless fancy striping is on).
    pub fn stripe_unit(&self) -> u64 {
        self.stripe_unit
    }

    /// Ask librbd for the image's current size (it re-reads the header when another client
    /// resized it). Blocks on the network when the header changed: control path only.
    pub fn current_size(&self) -> Result<u64> {
        let mut size = 0u64;
        // SAFETY: a live image handle and a live u64 to write.
        let r = unsafe { (self.api.rbd_get_size)(self.h.image, &mut size) };
        if r < 0 {
            return Err(Error::from_errno(-r, format!("rbd image {}: cannot read its size", self.name)));
        }
        Ok(size)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let api = self.api;
        let h = Handles { ..self.h };
        let name = self.name.clone();
        let close = move || close_blocking(api, h, &name);
        // Close on a Ceph client thread like the open, and wait: the exclusive lock must be free
        // when the device is gone (a daemon that stops lets another take the image).
        match spawn_ceph_thread("close an image", close) {
            Ok(t) => {
                let _ = t.join();
            }
            Err(e) => tracing::error!("{e}: the image stays open until the process exits"),
        }
    }
}

fn cluster_name(cfg: &RbdConfig) -> String {
    match &cfg.conf {
        Some(p) => format!("conf {}", p.display()),
        None => match std::env::var_os("CEPH_CONF") {
            Some(p) => format!("conf {} from CEPH_CONF", p.to_string_lossy()),
            None => "conf /etc/ceph/ceph.conf".to_string(),
        },
    }
}

fn cstring(key: &str, v: &str) -> Result<CString> {
    CString::new(v).map_err(|_| Error::new(ErrorKind::InvalidInput, format!("rbd: {key} contains a NUL byte")))
}

/// Everything open, in order, on a Ceph client thread. On failure whatever was opened is closed.
fn open_blocking(api: &'static Api, cfg: &RbdConfig) -> Result<Image> {
    let mut h = Handles {
        cluster: std::ptr::null_mut(),
        ioctx: std::ptr::null_mut(),
        image: std::ptr::null_mut(),
        locked: false,
    };
    let mut cluster_desc = cluster_name(cfg);
    let r = open_steps(api, cfg, &mut h, &mut cluster_desc);
    match r {
        Ok((size, stripe_unit)) => {
            Ok(Image { api, h, name: format!("{} (cluster: {cluster_desc})", cfg.spec()), size, stripe_unit })
        }
        Err(e) => {
            close_blocking(api, h, &cfg.spec());
            Err(e)
        }
    }
}

fn open_steps(api: &'static Api, cfg: &RbdConfig, h: &mut Handles, cluster_desc: &mut String) -> Result<(u64, u64)> {
    let spec = cfg.spec();
    let id = cfg.id.as_deref().map(|id| cstring("id", id)).transpose()?;
    // SAFETY: `h.cluster` receives the handle; `id` is a NUL-terminated string or null.
    let r = unsafe { (api.rados_create)(&mut h.cluster, id.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())) };
    if r < 0 {
        return Err(Error::from_errno(-r, format!("rbd image {spec}: cannot create a Ceph client")));
    }
    let conf = cfg.conf.as_ref().map(|p| cstring("conf", &p.to_string_lossy())).transpose()?;
    // SAFETY: a live cluster handle; a path string or null (null: $CEPH_CONF, then the defaults).
    let r = unsafe { (api.rados_conf_read_file)(h.cluster, conf.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())) };
    if r < 0 {
        return Err(Error::from_errno(
            -r,
            format!(
                "rbd image {spec}: cannot read the Ceph configuration ({cluster_desc}; give conf=FILE or set CEPH_CONF)"
            ),
        ));
    }
    let secs = cfg.timeout.as_secs().max(1).to_string();
    let mut settings: Vec<(&str, String)> = vec![
        ("client_mount_timeout", secs.clone()),
        ("rados_mon_op_timeout", secs.clone()),
        // Also bounds every data request: an OSD away longer than this fails requests (EIO)
        // rather than stalling a guest forever.
        ("rados_osd_op_timeout", secs.clone()),
        // Many clients (daemons, tests, fio) on one host would clash on one socket path.
        ("admin_socket", String::new()),
    ];
    if let Some(k) = &cfg.keyring {
        settings.push(("keyring", k.to_string_lossy().into_owned()));
    }
    for (k, v) in settings {
        let (ck, cv) = (cstring(k, k)?, cstring(k, &v)?);
        // SAFETY: a live, not yet connected cluster handle and two C strings.
        let r = unsafe { (api.rados_conf_set)(h.cluster, ck.as_ptr(), cv.as_ptr()) };
        if r < 0 {
            return Err(Error::from_errno(-r, format!("rbd image {spec}: cannot set Ceph option {k}={v}")));
        }
    }
    if let Some(mon) = conf_get(api, h.cluster, "mon_host") {
        if !mon.is_empty() {
            *cluster_desc = format!("{cluster_desc}, mon host {mon}");
        }
    }
    // SAFETY: a live, configured cluster handle; bounded by client_mount_timeout.
    let r = unsafe { (api.rados_connect)(h.cluster) };
    if r < 0 {
        // Who it tried to be, and with which key file, as Ceph resolved them.
        let name = || format!("client.{}", cfg.id.as_deref().unwrap_or("admin"));
        let keyring = || conf_get(api, h.cluster, "keyring").unwrap_or_default();
        let hint = match -r {
            libc::ETIMEDOUT => " (is the cluster up? timeout= sets how long to wait)".to_string(),
            libc::EACCES | libc::EPERM => {
                format!(" (the cluster refused {} with keyring {}: a wrong key, or a wrong id=?)", name(), keyring())
            }
            libc::ENOENT => format!(" (no key for {} in keyring {}: give keyring=FILE or id=)", name(), keyring()),
            _ => String::new(),
        };
        return Err(Error::from_errno(
            -r,
            format!("rbd image {spec}: cannot connect to the cluster ({cluster_desc}){hint}"),
        ));
    }
    let pool = cstring("pool", &cfg.pool)?;
    // SAFETY: a connected cluster handle, a pool name, and where to store the context.
    let r = unsafe { (api.rados_ioctx_create)(h.cluster, pool.as_ptr(), &mut h.ioctx) };
    if r < 0 {
        let what = if r == -libc::ENOENT {
            format!("pool '{}' does not exist", cfg.pool)
        } else {
            format!("cannot open pool '{}'", cfg.pool)
        };
        return Err(Error::from_errno(-r, format!("rbd image {spec}: {what} (cluster: {cluster_desc})")));
    }
    if !cfg.namespace.is_empty() {
        let ns = cstring("namespace", &cfg.namespace)?;
        // SAFETY: a live ioctx and a C string (copied by librados).
        unsafe { (api.rados_ioctx_set_namespace)(h.ioctx, ns.as_ptr()) };
    }
    let image = cstring("image", &cfg.image)?;
    let snap = cfg.snapshot.as_deref().map(|s| cstring("snapshot", s)).transpose()?;
    let snap_ptr: *const c_char = snap.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    let open = if cfg.is_read_only() { api.rbd_open_read_only } else { api.rbd_open };
    // SAFETY: a live ioctx, C strings (or null for no snapshot), and where to store the handle.
    let r = unsafe { open(h.ioctx, image.as_ptr(), &mut h.image, snap_ptr) };
    if r < 0 {
        h.image = std::ptr::null_mut();
        let what = match (-r, &cfg.snapshot) {
            (libc::ENOENT, Some(s)) => format!("no such image, or no snapshot '{s}' of it, in pool '{}'", cfg.pool),
            (libc::ENOENT, None) => format!("no such image in pool '{}'", cfg.pool),
            _ => "cannot open the image".to_string(),
        };
        return Err(Error::from_errno(-r, format!("rbd image {spec}: {what} (cluster: {cluster_desc})")));
    }
    if !cfg.is_read_only() {
        // SAFETY: a live image handle.
        let r = unsafe { (api.rbd_lock_acquire)(h.image, ffi::RBD_LOCK_MODE_EXCLUSIVE) };
        if r < 0 {
            let msg = match -r {
                libc::EROFS | libc::EBUSY | libc::EAGAIN => format!(
                    "rbd image {spec} is held for writing by another client (another strata daemon?); it is refused \
                     until that one lets go (or serve it read-only with read-only=on)"
                ),
                libc::EINVAL | libc::EOPNOTSUPP => format!(
                    "rbd image {spec} lacks the exclusive-lock feature, without which two hosts could write it at \
                     once: rbd feature enable {} exclusive-lock",
                    cfg.spec()
                ),
                _ => format!("rbd image {spec}: cannot take its exclusive lock"),
            };
            return Err(match -r {
                libc::EROFS | libc::EBUSY | libc::EAGAIN => Error::new(ErrorKind::Locked, msg),
                errno => Error::from_errno(errno, msg),
            });
        }
        h.locked = true;
    }
    let mut size = 0u64;
    // SAFETY: a live image handle and a live u64.
    let r = unsafe { (api.rbd_get_size)(h.image, &mut size) };
    if r < 0 {
        return Err(Error::from_errno(-r, format!("rbd image {spec}: cannot read its size")));
    }
    let mut stripe_unit = 0u64;
    // SAFETY: a live image handle and a live u64.
    if unsafe { (api.rbd_get_stripe_unit)(h.image, &mut stripe_unit) } < 0 {
        stripe_unit = 0;
    }
    Ok((size, stripe_unit))
}

fn conf_get(api: &Api, cluster: RadosT, key: &str) -> Option<String> {
    let ck = CString::new(key).ok()?;
    let mut buf = vec![0u8; 1024];
    // SAFETY: a live cluster handle, a C string, and a buffer of the length given.
    let r = unsafe { (api.rados_conf_get)(cluster, ck.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Release the lock, close the image, the pool context and the cluster handle (what is open).
fn close_blocking(api: &Api, h: Handles, name: &str) {
    if !h.image.is_null() {
        if h.locked {
            // SAFETY: a live image handle whose lock we hold.
            let r = unsafe { (api.rbd_lock_release)(h.image) };
            if r < 0 {
                tracing::warn!("rbd image {name}: releasing the exclusive lock failed: {}", Error::from_errno(-r, ""));
            }
        }
        // SAFETY: a live image handle, closed once; librbd waits for its requests in flight.
        let r = unsafe { (api.rbd_close)(h.image) };
        if r < 0 {
            tracing::warn!("rbd image {name}: close failed: {}", Error::from_errno(-r, ""));
        }
    }
    if !h.ioctx.is_null() {
        // SAFETY: a live ioctx, destroyed once, after the image that used it.
        unsafe { (api.rados_ioctx_destroy)(h.ioctx) };
    }
    if !h.cluster.is_null() {
        // SAFETY: a live cluster handle, shut down once, after everything that used it.
        unsafe { (api.rados_shutdown)(h.cluster) };
    }
}
