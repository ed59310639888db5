//! `format=thin,pool=POOL,volume=NAME[,metadata=META][,direct=on][,commit-interval-ms=N]
//! [,no-space-wait=DURATION]`: one volume of a thin pool ([`thin`]). `POOL` (and `META`, for a pool with a separate
//! metadata device) is a file, a block device or `node:NAME`. Several specs naming the same pool
//! in one process share one open pool (the pool file is locked once), so one daemon serves many
//! volumes of a pool, each on its own socket. The pool commits on FLUSH/FUA and, while dirty,
//! every `commit-interval-ms` (default 1000; 0 turns the timer off). A write that needs a block
//! when the pool is full fails with IOERR at once, or after waiting up to `no-space-wait` (e.g.
//! `30s`) for space to come back (blocks freed, the pool grown). The daemon's control socket
//! reaches an open pool through [`served_pool`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use blockdev::{BlockDev, DevInfo, Error, ErrorKind, IoBufs, IoCtx, IoFuture, IoTag, OpenOptions, Result};
use thin::{Pool, ThinVolume};

use super::{Backing, Format, OpenCtx, NODE_PREFIX};
use crate::spec::Spec;

/// The registry entry.
pub const FORMAT: Format = Format {
    name: "thin",
    build,
    help: "format=thin,pool=POOL,volume=NAME[,metadata=META][,direct=on][,commit-interval-ms=N]\
           [,no-space-wait=DURATION] — a thin volume",
};

const KEYS: &[&str] = &["pool", "volume", "metadata", "direct", "commit-interval-ms", "no-space-wait"];

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
            pools.insert(key, Arc::downgrade(&pool));
            pool
        }
    };
    let mut vol = pool.volume(&volume).map_err(|e| e.context(format!("disk spec '{}'", spec.source())))?;
    vol.set_no_space_wait(space_wait);
    Ok(Arc::new(ServedVolume { vol, _pool: pool }))
}

/// A volume that keeps its shared pool open.
struct ServedVolume {
    vol: ThinVolume,
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
                io.block_on(pool.resize_volume(&io, "a", 1 << 30)).unwrap();
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
    fn unknown_volume_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = pool_file(dir.path());
        let e = open_spec(&format!("format=thin,pool={},volume=zz", path.display()), &OpenCtx::new()).err().unwrap();
        assert!(e.to_string().contains("'zz'"), "{e}");
    }
}
