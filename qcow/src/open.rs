//! Opening an image: read and validate the header and tables, follow the backing chain.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use blockdev::{BlockDev, Error, ErrorKind, IoCtx, RawFile, Result};

use zerocopy::FromBytes;

use crate::backing_policy::{BackingPolicy, Resolved};
use crate::cache::SliceCache;
use crate::format::{decode_table, HeaderV2};
use crate::header::{autoclear, Header};
use crate::imagefile::{self, site};
use crate::l1l2::Geometry;
use crate::meta::Meta;
use crate::shared::Shared;
use crate::Qcow2;

/// Most images in a backing chain (QEMU's limit is similar in spirit).
pub const MAX_CHAIN_DEPTH: usize = 16;

/// How to open an image.
#[derive(Debug, Clone)]
pub struct Options {
    /// Refuse writes (backing files are always opened so).
    pub read_only: bool,
    /// Most bytes of L2 cache (default 32 MiB, QEMU's default maximum). As in QEMU the cache is
    /// never made bigger than what covers the whole disk (2 MiB for 16 GiB at 64 KiB clusters),
    /// and slices are only allocated as they are used.
    pub l2_cache_bytes: usize,
    /// Bytes of refcount cache.
    pub refcount_cache_bytes: usize,
    /// Do not follow the backing file named in the header: reads of unallocated clusters give
    /// zeros (for `check`, `info` and `map`, which look at one image only).
    pub ignore_backing: bool,
    /// Open the image file with O_DIRECT.
    pub direct: bool,
    /// Take no lock on any file of the chain (`qemu-img -U`), so an image another process has
    /// open for writing, a served one, can be looked at; what is read may be changing under the
    /// reader. Only with `read_only`.
    pub force_share: bool,
    /// Where backing files may come from (default: the image's own directory only); checked for
    /// every image of the chain, before a backing file is opened.
    pub backing_policy: BackingPolicy,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            read_only: false,
            l2_cache_bytes: 32 << 20,
            refcount_cache_bytes: 256 << 10,
            ignore_backing: false,
            direct: false,
            force_share: false,
            backing_policy: BackingPolicy::default(),
        }
    }
}

/// The L2 cache size: at most `max` bytes, and no more than the L2 entries of a disk of `size`
/// take (QEMU's rule; a random workload over the whole disk then never evicts a slice).
fn l2_cache_bytes(geo: &Geometry, size: u64, max: usize) -> usize {
    let cs = geo.cluster_size();
    let cover = size.div_ceil(cs).saturating_mul(geo.l2_entry_size).next_multiple_of(cs);
    usize::try_from(cover).map_or(max, |c| c.min(max))
}

fn err(kind: ErrorKind, name: &str, msg: impl std::fmt::Display) -> Error {
    Error::new(kind, format!("{name}: {msg}"))
}

/// Read and validate the header of `file`.
pub async fn read_header(io: &IoCtx, file: &Arc<dyn BlockDev>, name: &str) -> Result<Header> {
    let file_size = file.info().size;
    let first = imagefile::read_vec(io, file, 0, 512).await?;
    if file_size < size_of::<HeaderV2>() as u64 {
        return Err(err(ErrorKind::Corrupt, name, "file too short for a qcow2 header"));
    }
    // An out-of-range value reads one sector; Header::parse then names the field.
    let bits = HeaderV2::read_from_prefix(&first[..]).map_or(0, |(h, _)| h.cluster_bits.get());
    let want = if (9..=21).contains(&bits) { (1u64 << bits).min(file_size) as usize } else { 512 };
    let buf = if want > 512 { imagefile::read_vec(io, file, 0, want).await? } else { first };
    Header::parse(&buf, file_size).map_err(|e| e.context(name))
}

async fn read_table(io: &IoCtx, file: &Arc<dyn BlockDev>, off: u64, entries: usize) -> Result<Vec<u64>> {
    if entries == 0 {
        return Ok(Vec::new());
    }
    let raw = imagefile::read_vec(io, file, off, entries * 8).await?;
    Ok(decode_table(&raw))
}

/// Open the image in `file` with `backing` as its backing device (the caller resolved it).
/// An image that names a backing file refuses to open without one unless `ignore_backing`.
pub async fn open_dev(
    io: &IoCtx,
    file: Arc<dyn BlockDev>,
    backing: Option<Arc<dyn BlockDev>>,
    opts: &Options,
) -> Result<Qcow2> {
    let name = file.describe();
    let mut header = read_header(io, &file, &name).await?;
    if header.backing_file.is_some() && backing.is_none() && !opts.ignore_backing {
        return Err(err(ErrorKind::InvalidInput, &name, "the image has a backing file but none was opened"));
    }
    let read_only = opts.read_only || file.info().read_only;
    if !read_only && header.is_corrupt() {
        return Err(err(
            ErrorKind::Corrupt,
            &name,
            "the image is marked corrupt: open it read-only, or repair it with check --repair all",
        ));
    }
    if !read_only && header.is_dirty() && !header.lazy_refcounts() {
        // QEMU only sets the dirty bit with lazy refcounts; a dirty image without them is repaired the same way.
        tracing::warn!("{name}: dirty bit set without lazy refcounts");
    }
    let geo = Geometry::of(&header);
    let file_size = file.info().size;
    let l1 = read_table(io, &file, header.l1_table_offset, header.l1_size as usize).await?;
    let rt_entries = (u64::from(header.refcount_table_clusters) * geo.cluster_size() / 8) as usize;
    let reftable = read_table(io, &file, header.refcount_table_offset, rt_entries).await?;
    let cs = geo.cluster_size() as usize;
    let l2_slice = cs.min(4096);
    let rc_slice = cs.min(4096);
    let meta = Meta {
        geo,
        l1,
        l1_dirty: BTreeSet::new(),
        reftable,
        reftable_dirty: BTreeSet::new(),
        l2: SliceCache::new(l2_slice, l2_cache_bytes(&geo, header.size, opts.l2_cache_bytes) / l2_slice),
        rc: SliceCache::new(rc_slice, opts.refcount_cache_bytes / rc_slice),
        pending_free: Vec::new(),
        free_hint: 0,
        file_size,
        zero_from: file_size.next_multiple_of(geo.cluster_size()),
        corrupt: false,
        inflight: Default::default(),
        header: header.clone(),
    };
    let unknown_autoclear = header.autoclear_features & !autoclear::KNOWN;
    let sh = Arc::new(Shared {
        file: file.clone(),
        backing,
        geo,
        compression: header.compression,
        read_only,
        lazy: !read_only && header.version >= 3 && header.lazy_refcounts(),
        size: AtomicU64::new(header.size),
        meta: Mutex::new(meta),
        alloc: futures::lock::Mutex::new(()),
        writeback_gen: AtomicU64::new(0),
        name: name.clone(),
    });
    if !read_only && header.version == 3 && unknown_autoclear != 0 {
        // Spec: a writer that does not know an autoclear bit must clear it (the feature's data may go stale).
        header.autoclear_features &= autoclear::KNOWN;
        sh.lock().header.autoclear_features = header.autoclear_features;
        let bytes = header.serialize()?;
        imagefile::write_meta(io, &file, 0, &pad512(bytes), site::HEADER).await?;
        imagefile::sync(io, &file).await?;
    }
    let dev = Qcow2::from_shared(sh);
    if !read_only && header.is_dirty() {
        crate::check::repair_on_open(io, &dev).await?;
    }
    Ok(dev)
}

/// Pad a header buffer to a whole number of 512-byte sectors.
pub fn pad512(mut b: Vec<u8>) -> Vec<u8> {
    b.resize(b.len().next_multiple_of(512), 0);
    b
}

/// Open the image at `path` and its backing chain (format from the header extension; relative
/// names resolved from the image's directory; a backing file without a named format is refused;
/// a backing file outside what `opts.backing_policy` allows is refused before it is opened).
pub fn open_path<'a>(
    io: &'a IoCtx,
    path: &'a Path,
    opts: &'a Options,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Qcow2>> + 'a>> {
    Box::pin(open_chain(io, path, opts, None, 0))
}

/// Open `path` and, unless `ignore_backing`, its chain; `allowed` is the policy resolved for the
/// top of the chain (None at the top: resolved there on the first backing file named).
async fn open_chain(
    io: &IoCtx,
    path: &Path,
    opts: &Options,
    allowed: Option<&Resolved>,
    depth: usize,
) -> Result<Qcow2> {
    let name = path.display().to_string();
    if depth > MAX_CHAIN_DEPTH {
        return Err(err(ErrorKind::InvalidInput, &name, format!("backing chain deeper than {MAX_CHAIN_DEPTH} images")));
    }
    if opts.force_share && !opts.read_only {
        return Err(err(ErrorKind::InvalidInput, &name, "force-share (-U) can only be used with a read-only open"));
    }
    let raw_opts = blockdev::OpenOptions {
        read_only: opts.read_only,
        growable: true,
        direct: opts.direct,
        no_lock: opts.force_share,
    };
    let file: Arc<dyn BlockDev> = Arc::new(RawFile::open(path, raw_opts)?);
    let header = read_header(io, &file, &name).await?;
    let mut backing = None;
    if let (Some(bname), false) = (&header.backing_file, opts.ignore_backing) {
        let top;
        let allowed = match allowed {
            Some(a) => a,
            None => {
                top = opts.backing_policy.resolve(path)?;
                &top
            }
        };
        let bpath = allowed.check(&name, bname, &resolve_backing(path, bname))?;
        let bdev: Arc<dyn BlockDev> = match header.backing_format.as_deref() {
            Some("qcow2") => {
                let bopts = Options { read_only: true, ..opts.clone() };
                Arc::new(Box::pin(open_chain(io, &bpath, &bopts, Some(allowed), depth + 1)).await?)
            }
            Some("raw") => {
                let o = blockdev::OpenOptions { read_only: true, no_lock: opts.force_share, ..Default::default() };
                Arc::new(RawFile::open(&bpath, o)?)
            }
            Some(other) => {
                return Err(err(ErrorKind::Unsupported, &name, format!("backing file {bname}: format '{other}' is not supported (qcow2, raw)")))
            }
            None => {
                return Err(err(
                    ErrorKind::InvalidInput,
                    &name,
                    format!("backing file {bname} has no format in the image header; formats are never probed (set it with qemu-img rebase -u -F FMT)"),
                ))
            }
        };
        backing = Some(bdev);
    }
    open_dev(io, file, backing, opts).await
}

/// A backing file name relative to the directory of the image that names it.
pub fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    image.parent().unwrap_or(Path::new(".")).join(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l2_cache_covers_the_disk_up_to_the_maximum() {
        let geo = |bits: u32, l2_entry_size: u64| Geometry {
            cluster_bits: bits,
            l2_entry_size,
            refcount_order: 4,
            extended: l2_entry_size == 16,
        };
        // 16 GiB at 64 KiB clusters: 262,144 entries of 8 bytes.
        assert_eq!(l2_cache_bytes(&geo(16, 8), 16 << 30, 32 << 20), 2 << 20);
        // Extended L2 entries are twice as big.
        assert_eq!(l2_cache_bytes(&geo(16, 16), 16 << 30, 32 << 20), 4 << 20);
        // A huge disk: the maximum.
        assert_eq!(l2_cache_bytes(&geo(16, 8), 1 << 50, 32 << 20), 32 << 20);
        // A tiny disk: one cluster.
        assert_eq!(l2_cache_bytes(&geo(16, 8), 1 << 20, 32 << 20), 65536);
    }
}
