//! `format=thin,pool=POOL,volume=NAME[,metadata=META][,direct=on][,commit-interval-ms=N]
//! [,no-space-wait=DURATION][,low-water=PERCENT]`: one volume of a thin pool ([`thin`]). `POOL` (and `META`, for a pool with a separate
//! metadata device) is a file, a block device or `node:NAME`. Several specs naming the same pool
//! in one process share one open pool (the pool file is locked once), so one daemon serves many
//! volumes of a pool, each on its own socket. The pool commits on FLUSH/FUA and, while dirty,
//! every `commit-interval-ms` (default 1000; 0 turns the timer off). A write that needs a block
//! when the pool is full fails with IOERR at once, or after waiting up to `no-space-wait` (e.g.
//! `30s`) for space to come back (blocks freed, the pool grown). Under `low-water` percent of
//! the data space available (default 10; a pool-wide setting, the last spec naming it wins) the
//! pool logs one warning and `strata_thin_low_water` reads 1 on `/metrics`. The daemon's control socket
//! reaches an open pool through [`served_pool`].
//!
//! One writer per volume: a volume (or snapshot) is open through at most one spec at a time in
//! this process. A second spec naming it is refused with the holder named — the export (and
//! its socket) or node that opened it inside [`opened_by`] — until the first lets it go.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use blockdev::size::SizeChange;
use blockdev::{BlockDev, DevInfo, Error, ErrorKind, IoBufs, IoCtx, IoFuture, IoTag, OpenOptions, Result};
use thin::{Pool, ResizeOptions, ThinVolume};

use super::{Backing, Format, OpenCtx, NODE_PREFIX};
use crate::spec::Spec;

/// The registry entry.
pub const FORMAT: Format = Format {
    name: "thin",
    build,
    help: "format=thin,pool=POOL,volume=NAME[,metadata=META][,direct=on][,commit-interval-ms=N]\
           [,no-space-wait=DURATION][,low-water=PERCENT] — a thin volume",
};

const KEYS: &[&str] = &["pool", "volume", "metadata", "direct", "commit-interval-ms", "no-space-wait", "low-water"];

/// Pools open in this process, by what names them (a canonical path or `node:NAME`).
fn open_pools() -> &'static Mutex<HashMap<String, Weak<Pool>>> {
    static POOLS: OnceLock<Mutex<HashMap<String, Weak<Pool>>>> = OnceLock::new();
    POOLS.get_or_init(Default::default)
}

fn key_of(b: &Backing) -> String {
    match b {
        Backing::File(p) => path_key(p),
        Backing::Node { name, .. } => format!("{NODE_PREFIX}{name}"),
    }
}

fn path_key(p: &std::path::Path) -> String {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}

/// The pool this process has open for `pool` (a path, its data device's with a separate
/// metadata device, or `node:NAME`), if some served volume uses it.
pub fn served_pool(pool: &str) -> Option<Arc<Pool>> {
    let key = if pool.starts_with(NODE_PREFIX) { pool.to_string() } else { path_key(std::path::Path::new(pool)) };
    open_pools().lock().unwrap_or_else(|p| p.into_inner()).get(&key).and_then(Weak::upgrade)
}

/// Who holds each open volume: (pool key, volume name) -> holder, as [`opened_by`] named it.
fn writers() -> &'static Mutex<HashMap<(String, String), String>> {
    static WRITERS: OnceLock<Mutex<HashMap<(String, String), String>>> = OnceLock::new();
    WRITERS.get_or_init(Default::default)
}

thread_local! {
    /// The holder named by the innermost [`opened_by`] running on this thread.
    static HOLDER: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Run `f`, which opens a device stack on this thread, on behalf of `holder` (an export as
/// [`export_holder`] names it, or `node NAME`): a thin volume it opens is held in that name, and
/// a second spec naming the volume is refused with it.
pub fn opened_by<T>(holder: &str, f: impl FnOnce() -> T) -> T {
    let outer = HOLDER.with(|h| h.borrow_mut().replace(holder.to_string()));
    let r = f();
    HOLDER.with(|h| *h.borrow_mut() = outer);
    r
}

/// How an export is named as a volume's holder: `export NAME (socket PATH)`, or `export at
/// socket PATH` when its name is its socket path.
pub fn export_holder(name: &str, socket: &Path) -> String {
    if Path::new(name) == socket {
        format!("export at socket {}", socket.display())
    } else {
        format!("export {name} (socket {})", socket.display())
    }
}

/// Who holds volume `volume` of `pool` (named as [`served_pool`] takes it) open in this process.
pub fn holder_of(pool: &str, volume: &str) -> Option<String> {
    let key = if pool.starts_with(NODE_PREFIX) { pool.to_string() } else { path_key(Path::new(pool)) };
    writers().lock().unwrap_or_else(|p| p.into_inner()).get(&(key, volume.to_string())).cloned()
}

/// A volume held open by one spec; dropping it lets the next one in.
struct WriterClaim {
    key: (String, String),
}

impl WriterClaim {
    fn take(pool: &str, volume: &str) -> std::result::Result<WriterClaim, String> {
        let key = (pool.to_string(), volume.to_string());
        let mut w = writers().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(holder) = w.get(&key) {
            return Err(holder.clone());
        }
        let me = HOLDER.with(|h| h.borrow().clone()).unwrap_or_else(|| "another device of this process".into());
        w.insert(key.clone(), me);
        Ok(WriterClaim { key })
    }
}

impl Drop for WriterClaim {
    fn drop(&mut self) {
        writers().lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

fn open_dev(b: Backing, direct: bool) -> Result<Arc<dyn BlockDev>> {
    match b {
        Backing::File(path) => {
            let opts = OpenOptions { direct, ..OpenOptions::default() };
            Ok(Arc::new(blockdev::RawFile::open(&path, opts)?))
        }
        Backing::Node { dev, .. } => Ok(dev),
    }
}

fn build(spec: &mut Spec, ctx: &OpenCtx) -> Result<Arc<dyn BlockDev>> {
    let pool_b = ctx.resolve(spec, "pool")?;
    let volume = spec.take_required("volume", "volume=NAME")?;
    let meta_b = if spec.get("metadata").is_some() { Some(ctx.resolve(spec, "metadata")?) } else { None };
    let direct = spec.take_bool("direct")?.unwrap_or(false);
    let interval = spec.take_u32("commit-interval-ms")?.unwrap_or(1000);
    let space_wait = spec.take_duration("no-space-wait")?.unwrap_or_default();
    let low_water = match spec.take_u32("low-water")? {
        Some(p) if p > 100 => {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "disk spec '{}': low-water={p} must be 0..=100 (percent of the pool's data space)",
                    spec.source()
                ),
            ))
        }
        p => p.map(|p| p as u8),
    };
    spec.finish(KEYS)?;
    if ctx.read_only {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("disk spec '{}': thin volumes are served writable only", spec.source()),
        ));
    }
    let key = key_of(&pool_b);
    let mut pools = open_pools().lock().unwrap_or_else(|p| p.into_inner());
    let pool = match pools.get(&key).and_then(Weak::upgrade) {
        Some(pool) => pool,
        None => {
            let io = IoCtx::new()?;
            // With a separate metadata device, `pool` is the data device.
            let (meta, data) = match meta_b {
                Some(m) => (open_dev(m, false)?, Some(open_dev(pool_b, direct)?)),
                None => (open_dev(pool_b, direct)?, None),
            };
            let pool = io
                .block_on(Pool::open(&io, meta, data))
                .map_err(|e| e.context(format!("disk spec '{}'", spec.source())))?;
            if interval > 0 {
                pool.start_periodic_commit(Duration::from_millis(u64::from(interval)))?;
            }
            let pool = Arc::new(pool);
            pools.insert(key.clone(), Arc::downgrade(&pool));
            pool
        }
    };
    drop(pools);
    if let Some(pct) = low_water {
        pool.set_low_water(pct)?;
    }
    let mut vol = pool.volume(&volume).map_err(|e| e.context(format!("disk spec '{}'", spec.source())))?;
    let claim = WriterClaim::take(&key, &volume).map_err(|holder| {
        Error::new(
            ErrorKind::Locked,
            format!(
                "disk spec '{}': thin volume '{volume}' of pool {key} is already served writable by {holder}; \
                 a volume has one writer at a time (remove that export first, or serve a snapshot of it)",
                spec.source()
            ),
        )
    })?;
    vol.set_no_space_wait(space_wait);
    Ok(Arc::new(ServedVolume { vol, _claim: claim, _pool: pool }))
}

/// A volume that keeps its shared pool open and holds the volume's one writer claim.
struct ServedVolume {
    vol: ThinVolume,
    _claim: WriterClaim,
    _pool: Arc<Pool>,
}

impl BlockDev for ServedVolume {
    fn info(&self) -> DevInfo {
        self.vol.info()
    }
    fn read(&self, io: &IoCtx, off: u64, bufs: IoBufs, tag: IoTag) -> IoFuture {
        self.vol.read(io, off, bufs, tag)
    }
    fn write(&self, io: &IoCtx, off: u64, bufs: IoBufs, fua: bool, tag: IoTag) -> IoFuture {
        self.vol.write(io, off, bufs, fua, tag)
    }
    fn flush(&self, io: &IoCtx, tag: IoTag) -> IoFuture {
        self.vol.flush(io, tag)
    }
    fn discard(&self, io: &IoCtx, off: u64, len: u64, tag: IoTag) -> IoFuture {
        self.vol.discard(io, off, len, tag)
    }
    fn write_zeroes(&self, io: &IoCtx, off: u64, len: u64, unmap: bool, tag: IoTag) -> IoFuture {
        self.vol.write_zeroes(io, off, len, unmap, tag)
    }
    fn layer_metrics(&self, out: &mut Vec<blockdev::LayerSample>) {
        self.vol.layer_metrics(out)
    }

    fn resize(&self, io: &IoCtx, new_size: u64, shrink: bool) -> Result<u64> {
        // The pool refuses a shrink of an open (served) volume, saying so; growing commits.
        let opts = ResizeOptions { shrink, discard_data: false };
        io.block_on(self._pool.resize_volume(io, self.vol.name(), SizeChange::To(new_size), opts))?;
        Ok(self.vol.info().size)
    }
    fn over_network(&self) -> bool {
        self.vol.over_network()
    }

    fn describe(&self) -> String {
        self.vol.describe()
    }
}

#[cfg(test)]
mod tests {
    use crate::stack::{open_spec, OpenCtx};
    use blockdev::{IoCtx, IoTag, OpenOptions, RawFile, SharedBuf};
    use std::sync::Arc;
    use thin::{Pool, PoolConfig};

    fn pool_file(dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("pool.img");
        let io = IoCtx::new().unwrap();
        let f = RawFile::create(&path, 64 << 20, OpenOptions::default()).unwrap();
        let pool = io.block_on(Pool::create(&io, Arc::new(f), None, PoolConfig::default())).unwrap();
        io.block_on(pool.create_volume(&io, "a", 8 << 20)).unwrap();
        io.block_on(pool.create_volume(&io, "b", 8 << 20)).unwrap();
        path
    }

    #[test]
    fn two_volumes_of_one_pool_share_it_and_stay_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = pool_file(dir.path());
        let a = open_spec(&format!("format=thin,pool={},volume=a", path.display()), &OpenCtx::new()).unwrap();
        let b = open_spec(&format!("format=thin,pool={},volume=b", path.display()), &OpenCtx::new()).unwrap();
        assert_eq!(a.info().size, 8 << 20);
        let io = IoCtx::new().unwrap();
        let mut w = SharedBuf::from_slice(&[7u8; 4096]);
        io.block_on(a.write(&io, 0, w.io(), true, IoTag::DATA)).unwrap();
        let mut r = SharedBuf::new(4096);
        io.block_on(b.read(&io, 0, r.io(), IoTag::DATA)).unwrap();
        assert_eq!(r.bytes(), &[0u8; 4096][..]);
        io.block_on(a.read(&io, 0, r.io(), IoTag::DATA)).unwrap();
        assert_eq!(r.bytes(), &[7u8; 4096][..]);
    }

    #[test]
    fn no_space_wait_is_parsed_and_bounds_the_wait_of_a_full_pool() {
        let dir = tempfile::tempdir().unwrap();
        let path = pool_file(dir.path());
        let bad = format!("format=thin,pool={},volume=a,no-space-wait=soon", path.display());
        let e = open_spec(&bad, &OpenCtx::new()).err().unwrap().to_string();
        assert!(e.contains("no-space-wait") && e.contains("'soon'"), "{e}");
        let spec = format!("format=thin,pool={},volume=a,no-space-wait=300ms", path.display());
        let a = open_spec(&spec, &OpenCtx::new()).unwrap();
        assert!(crate::stack::thin::served_pool(path.to_str().unwrap()).is_some());
        let io = IoCtx::new().unwrap();
        let mut w = SharedBuf::from_slice(&[1u8; 4096]);
        let mut n = 0u64;
        let err = loop {
            // Volume a is 8M in a 64M pool: grow it past the pool first.
            if n == 0 {
                let pool = crate::stack::thin::served_pool(path.to_str().unwrap()).unwrap();
                let grow = blockdev::size::SizeChange::To(1 << 30);
                io.block_on(pool.resize_volume(&io, "a", grow, Default::default())).unwrap();
            }
            let t0 = std::time::Instant::now();
            match io.block_on(a.write(&io, n * (64 << 10), w.io(), false, IoTag::DATA)) {
                Ok(()) => n += 1,
                Err(e) => break (e, t0.elapsed()),
            }
        };
        assert_eq!(err.0.kind(), blockdev::ErrorKind::NoSpace, "{}", err.0);
        assert!(err.1 >= std::time::Duration::from_millis(300), "did not wait: {:?}", err.1);
    }

    #[test]
    fn a_volume_has_one_writer_named_in_the_refusal_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = pool_file(dir.path());
        let spec = |v: &str| format!("format=thin,pool={},volume={v}", path.display());
        let sock = dir.path().join("a.sock");
        let holder = super::export_holder("a", &sock);
        let first = super::opened_by(&holder, || open_spec(&spec("a"), &OpenCtx::new())).unwrap();
        assert_eq!(super::holder_of(path.to_str().unwrap(), "a").as_deref(), Some(holder.as_str()));
        let e = super::opened_by("export b", || open_spec(&spec("a"), &OpenCtx::new())).err().unwrap();
        assert_eq!(e.kind(), blockdev::ErrorKind::Locked);
        let msg = e.to_string();
        assert!(msg.contains("'a'") && msg.contains("export a (socket ") && msg.contains("a.sock"), "{msg}");
        // Another volume of the pool is served alongside; the refused open left no claim.
        let b = open_spec(&spec("b"), &OpenCtx::new()).unwrap();
        assert!(super::holder_of(path.to_str().unwrap(), "b").unwrap().contains("another device"));
        drop(first);
        assert_eq!(super::holder_of(path.to_str().unwrap(), "a"), None);
        let again = open_spec(&spec("a"), &OpenCtx::new()).unwrap();
        assert_eq!(again.info().size, 8 << 20);
        drop((b, again));
        // An export named by its socket path is named once.
        assert_eq!(super::export_holder("/s/x.sock", std::path::Path::new("/s/x.sock")), "export at socket /s/x.sock");
    }

    #[test]
    fn low_water_sets_the_pools_mark_and_a_bad_percent_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = pool_file(dir.path());
        let bad = format!("format=thin,pool={},volume=a,low-water=101", path.display());
        let e = open_spec(&bad, &OpenCtx::new()).err().unwrap().to_string();
        assert!(e.contains("low-water=101") && e.contains("0..=100"), "{e}");
        let spec = format!("format=thin,pool={},volume=a,low-water=25", path.display());
        let _a = open_spec(&spec, &OpenCtx::new()).unwrap();
        let pool = crate::stack::thin::served_pool(path.to_str().unwrap()).unwrap();
        assert_eq!(pool.low_water(), 25);
    }

    #[test]
    fn unknown_volume_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = pool_file(dir.path());
        let e = open_spec(&format!("format=thin,pool={},volume=zz", path.display()), &OpenCtx::new()).err().unwrap();
        assert!(e.to_string().contains("'zz'"), "{e}");
    }
}
