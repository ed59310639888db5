//! `Pool`: create and open a thin pool, commit its metadata, and manage its volumes.
//!
//! A commit takes a ticket and waits until a commit that started after the ticket finishes;
//! whichever waiting task finds no commit running leads the next one, so requests that arrive
//! together share one commit. A commit writes the changed pages to new places, flushes the data
//! device (so every block a new mapping points to is stable), flushes the metadata, then writes
//! the superblock copy for the new transaction and flushes again. Blocks freed by a transaction
//! are reused only after it is committed (the previous transaction still maps them).

use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use super::dir::{MAX_NAME, MAX_VOLUMES};
use super::format::{valid_block_size, Superblock, PAGE_PAYLOAD, PAGE_SIZE, SB_PAGES};
use super::load::{self, Audit};
use super::metaio::write_pages;
use super::paged::PagedArray;
use super::state::{CommitPlan, PoolState, VolumeState};
use super::volume::ThinVolume;
use super::MAX_VOLUME_SIZE;
use blockdev::join::try_join_all;
use blockdev::size::format_iec;
use blockdev::{BlockDev, Error, ErrorKind, IoCtx, IoFuture, IoTag, Result, SharedBuf};

/// How to lay out a new pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Data block size in bytes (a power of two, 64 KiB to 1 MiB).
    pub block_size: u32,
    /// Bytes of metadata area on a single-device pool (default: 1/256 of the device, at least
    /// 1 MiB). Ignored with a separate metadata device (which is used whole).
    pub metadata_size: Option<u64>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig { block_size: 64 << 10, metadata_size: None }
    }
}

/// A summary of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    /// Pool UUID (hex).
    pub uuid: String,
    /// Data block size.
    pub block_size: u64,
    /// Data blocks in the pool.
    pub data_blocks: u64,
    /// Data blocks referenced by some volume (or leaked).
    pub used_blocks: u64,
    /// Last committed transaction.
    pub transaction_id: u64,
    /// Metadata pages in all.
    pub metadata_pages: u64,
    /// Metadata pages free.
    pub metadata_free_pages: u64,
    /// Number of volumes.
    pub volumes: usize,
    /// Less than a tenth of the data blocks is available.
    pub below_low_water: bool,
    /// Sum of the volumes' virtual sizes (more than the pool's size when overcommitted).
    pub provisioned: u64,
}

impl PoolInfo {
    /// The pool's data size in bytes.
    pub fn size(&self) -> u64 {
        self.data_blocks * self.block_size
    }

    /// Provisioned virtual size over the pool's data size (above 1.0: overcommitted).
    pub fn overcommit_ratio(&self) -> f64 {
        match self.size() {
            0 => 0.0,
            size => self.provisioned as f64 / size as f64,
        }
    }

    /// One phrase for people: `overcommitted 2.5x: 20 GiB provisioned on 8 GiB`, or
    /// `4 GiB provisioned on 8 GiB (not overcommitted)`.
    pub fn overcommit_text(&self) -> String {
        overcommit_text(self.provisioned, self.size())
    }
}

/// [`PoolInfo::overcommit_text`] from the two sizes (as a JSON answer carries them).
pub fn overcommit_text(provisioned: u64, size: u64) -> String {
    let (prov, pool) = (format_iec(provisioned), format_iec(size));
    if provisioned > size {
        format!("overcommitted {:.1}x: {prov} provisioned on {pool}", provisioned as f64 / size as f64)
    } else {
        format!("{prov} provisioned on {pool} (not overcommitted)")
    }
}

/// A volume as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Virtual size in bytes.
    pub size: u64,
    /// Virtual blocks mapped (shared ones included).
    pub mapped_blocks: u64,
}

/// Shared state of an open pool.
pub struct PoolInner {
    pub(crate) meta: Arc<dyn BlockDev>,
    pub(crate) data: Arc<dyn BlockDev>,
    pub(crate) shared_dev: bool,
    pub(crate) block_size: u64,
    pub(crate) data_offset: u64,
    state: Mutex<PoolState>,
}

impl PoolInner {
    /// Lock the metadata (never held across an `.await`).
    pub(crate) fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An open thin pool (cheap to clone; clones share it).
#[derive(Clone)]
pub struct Pool {
    pub(super) inner: Arc<PoolInner>,
}

fn uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        if f.read_exact(&mut u).is_ok() {
            return u;
        }
    }
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    zerocopy::byteorder::U128::<zerocopy::LittleEndian>::new(t).to_bytes()
}

/// Most data blocks a pool has.
const MAX_DATA_BLOCKS: u64 = 1 << 36;

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, msg)
}

/// Check a volume name: 1 to 128 bytes of letters, digits, `.`, `_`, `-`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('-')
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("thin volume name '{name}': use 1 to {MAX_NAME} letters, digits, '.', '_' or '-'")))
    }
}

/// Check the size of volume `name`: a non-zero multiple of 512 up to [`MAX_VOLUME_SIZE`].
pub(super) fn check_size(name: &str, size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(512) || size > MAX_VOLUME_SIZE {
        return Err(invalid(format!(
            "thin volume '{name}': size {} ({size} bytes) must be a non-zero multiple of 512 up to 256 TiB",
            format_iec(size)
        )));
    }
    Ok(())
}

impl Pool {
    /// Make a new, empty pool on `meta` (holding both metadata and data when `data` is `None`).
    pub async fn create(
        io: &IoCtx,
        meta: Arc<dyn BlockDev>,
        data: Option<Arc<dyn BlockDev>>,
        cfg: PoolConfig,
    ) -> Result<Pool> {
        let bs = u64::from(cfg.block_size);
        if !valid_block_size(bs) {
            return Err(invalid(format!("thin pool block size {bs}: must be a power of two from 64K to 1M")));
        }
        let shared_dev = data.is_none();
        let data = data.unwrap_or_else(|| meta.clone());
        let meta_size = meta.info().size;
        let (meta_pages, data_offset) = if shared_dev {
            let want = cfg.metadata_size.unwrap_or((meta_size / 256).max(1 << 20));
            // Rounded up to whole data blocks; a size past the device is refused below.
            let bytes = want.div_ceil(bs).saturating_mul(bs);
            (bytes / PAGE_SIZE as u64, bytes)
        } else {
            (meta_size / PAGE_SIZE as u64, 0)
        };
        if !(16..=(1 << 32)).contains(&meta_pages) {
            return Err(invalid(format!(
                "thin pool: a metadata area of {} ({meta_pages} pages of 4 KiB) is out of range: it needs 16 to 2^32 \
                 pages (64 KiB to 16 TiB)",
                format_iec(meta_pages.saturating_mul(PAGE_SIZE as u64))
            )));
        }
        let data_size = data.info().size;
        let data_blocks = data_size.saturating_sub(data_offset) / bs;
        if data_blocks == 0 {
            let meta_part = if shared_dev {
                format!(" after a metadata area of {}", format_iec(data_offset))
            } else {
                String::new()
            };
            return Err(invalid(format!(
                "thin pool: a device of {} ({data_size} bytes) leaves no room for a data block of {}{meta_part}",
                format_iec(data_size),
                format_iec(bs)
            )));
        }
        if data_blocks > MAX_DATA_BLOCKS {
            return Err(invalid(format!("thin pool: {data_blocks} data blocks is too many")));
        }
        // Make the data area read zeros so first writes need no zero-fill; without write-zeroes
        // support nothing is known to be zero.
        let zeroed = data.info().write_zeroes
            && data
                .write_zeroes(io, data_offset, data_blocks * bs, true, IoTag::meta("thin.create_zero"))
                .await
                .is_ok();
        let sb = Superblock {
            uuid: uuid(),
            block_size: cfg.block_size,
            txid: 0,
            data_blocks,
            data_offset,
            meta_pages,
            root: SB_PAGES,
            zero_from: if zeroed { 0 } else { data_blocks },
            next_volume_id: 1,
        };
        // Invalidate both superblock slots of whatever was there; the first commit writes slot 1.
        write_pages(io, &meta, &[(0, vec![0; PAGE_SIZE]), (1, vec![0; PAGE_SIZE])], IoTag::meta("thin.superblock"))
            .await?;
        let mut st = PoolState::new(sb);
        st.rebuild_free_list();
        st.meta_dirty = true;
        let pool = Pool::from_state(meta, data, shared_dev, st);
        pool.commit(io).await?;
        Ok(pool)
    }

    /// Open an existing pool (a separate data device when `data` is given).
    pub async fn open(io: &IoCtx, meta: Arc<dyn BlockDev>, data: Option<Arc<dyn BlockDev>>) -> Result<Pool> {
        let (st, audit) = Self::load(io, &meta, data.as_ref()).await?;
        if let Some(e) = audit.errors.first() {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("thin pool: {e} ({} problem(s); run blkctl thin check)", audit.errors.len()),
            ));
        }
        let shared_dev = data.is_none();
        let data = data.unwrap_or_else(|| meta.clone());
        Ok(Pool::from_state(meta, data, shared_dev, st))
    }

    /// Load and audit the committed metadata without opening the pool for use.
    pub async fn load(
        io: &IoCtx,
        meta: &Arc<dyn BlockDev>,
        data: Option<&Arc<dyn BlockDev>>,
    ) -> Result<(PoolState, Audit)> {
        let sb = load::read_superblock(io, meta).await?;
        load::check_geometry(&sb, &**meta, &**data.unwrap_or(meta), data.is_none())?;
        let mut st = load::load(io, meta, sb).await?;
        let audit = load::audit(&st);
        st.leaked = audit.leaks.len() as u64;
        st.rebuild_free_list();
        Ok((st, audit))
    }

    fn from_state(meta: Arc<dyn BlockDev>, data: Arc<dyn BlockDev>, shared_dev: bool, st: PoolState) -> Pool {
        let block_size = u64::from(st.sb.block_size);
        let data_offset = st.sb.data_offset;
        Pool { inner: Arc::new(PoolInner { meta, data, shared_dev, block_size, data_offset, state: Mutex::new(st) }) }
    }

    /// Commit everything done so far (what a FLUSH does).
    pub async fn commit(&self, io: &IoCtx) -> Result<()> {
        commit(&self.inner, io).await
    }

    /// Commit from a background thread of its own every `every` while the pool has uncommitted
    /// changes. The thread ends once the pool is dropped (within one interval).
    pub fn start_periodic_commit(&self, every: std::time::Duration) -> Result<()> {
        let weak = Arc::downgrade(&self.inner);
        blockdev::thread::spawn(blockdev::thread::ThreadKind::Background, "thin-commit", move || {
            let io = match IoCtx::new() {
                Ok(io) => io,
                Err(e) => return tracing::error!("thin pool: periodic commit thread has no io ring: {e}"),
            };
            loop {
                std::thread::sleep(every);
                let Some(inner) = weak.upgrade() else { return };
                let dirty = {
                    let st = inner.lock();
                    st.meta_dirty && st.failed.is_none()
                };
                if dirty {
                    if let Err(e) = io.block_on(commit(&inner, &io)) {
                        tracing::warn!("thin pool: periodic commit failed: {e}");
                    }
                }
            }
        })
        .map_err(|e| Error::from_io(e, "thin pool: start the periodic commit thread"))?;
        Ok(())
    }

    /// True when changes wait for a commit.
    pub fn is_dirty(&self) -> bool {
        self.inner.lock().meta_dirty
    }

    /// Commit and stop (the pool stays usable).
    pub async fn close(&self, io: &IoCtx) -> Result<()> {
        self.commit(io).await
    }

    /// A summary.
    pub fn info(&self) -> PoolInfo {
        let st = self.inner.lock();
        PoolInfo {
            uuid: st.sb.uuid.iter().map(|b| format!("{b:02x}")).collect(),
            block_size: self.inner.block_size,
            data_blocks: st.sb.data_blocks,
            used_blocks: st.sm.nonzero().count() as u64,
            transaction_id: st.sb.txid,
            metadata_pages: st.sb.meta_pages,
            metadata_free_pages: st.meta_free_pages(),
            volumes: st.volumes.len(),
            below_low_water: st.below_low_water(),
            provisioned: st.volumes.values().map(|v| v.size).sum(),
        }
    }

    /// Every volume, by id.
    pub fn list(&self) -> Vec<VolumeInfo> {
        let st = self.inner.lock();
        st.volumes
            .values()
            .map(|v| VolumeInfo { id: v.id, name: v.name.clone(), size: v.size, mapped_blocks: v.mapped() })
            .collect()
    }

    /// Create a volume of `size` bytes (may exceed the pool: overcommit) and commit.
    pub async fn create_volume(&self, io: &IoCtx, name: &str, size: u64) -> Result<()> {
        check_name(name)?;
        check_size(name, size)?;
        {
            let mut st = self.inner.lock();
            self.check_new_name(&st, name)?;
            let id = st.next_volume_id;
            st.next_volume_id += 1;
            let map = PagedArray::new(size.div_ceil(self.inner.block_size));
            st.volumes.insert(id, VolumeState::new(id, name.into(), size, map));
            st.meta_dirty = true;
        }
        self.commit(io).await
    }

    fn check_new_name(&self, st: &PoolState, name: &str) -> Result<()> {
        if st.volumes.values().any(|v| v.name == name) {
            return Err(invalid(format!("thin volume '{name}' already exists")));
        }
        if st.volumes.len() as u32 >= MAX_VOLUMES {
            return Err(invalid(format!("thin pool: at most {MAX_VOLUMES} volumes")));
        }
        Ok(())
    }

    /// Writable snapshot `name` of volume (or snapshot) `origin`, sharing its blocks; commits.
    ///
    /// The origin may be in use: as dm-thin suspends the origin, new write requests to it wait
    /// while those in progress finish, then the mapping is copied in one step and the origin
    /// resumes. So every write request is wholly in the snapshot (it completed before) or wholly
    /// out of it (it started after), however many blocks it spans.
    pub async fn snapshot(&self, io: &IoCtx, origin: &str, name: &str) -> Result<()> {
        check_name(name)?;
        let mut suspended: Option<Suspend> = None;
        poll_fn(|cx| {
            let mut st = self.inner.lock();
            let id = match st.volume_id(origin) {
                Ok(id) => id,
                Err(e) => return Poll::Ready(Err(e)),
            };
            if let Err(e) = self.check_new_name(&st, name) {
                return Poll::Ready(Err(e));
            }
            if suspended.is_none() {
                let v = st.volumes.get_mut(&id).expect("looked up above");
                if v.suspended {
                    // Another snapshot of this origin is being taken.
                    st.park(cx.waker());
                    return Poll::Pending;
                }
                v.suspended = true;
                suspended = Some(Suspend { inner: self.inner.clone(), id });
            }
            let o = &st.volumes[&id];
            if o.writers > 0 || !o.busy.is_empty() {
                st.park(cx.waker());
                return Poll::Pending;
            }
            let (size, map) = (o.size, o.map.clone_dirty());
            for (_, e) in map.nonzero() {
                st.inc_ref(e - 1);
            }
            let new_id = st.next_volume_id;
            st.next_volume_id += 1;
            let vs = VolumeState::new(new_id, name.into(), size, map);
            st.volumes.insert(new_id, vs);
            st.meta_dirty = true;
            Poll::Ready(Ok(()))
        })
        .await?;
        drop(suspended);
        self.commit(io).await
    }

    /// Remove a volume that is not open, freeing blocks nobody else references; commits.
    pub async fn remove_volume(&self, io: &IoCtx, name: &str) -> Result<()> {
        {
            let mut st = self.inner.lock();
            let id = st.volume_id(name)?;
            if st.volumes[&id].open > 0 {
                return Err(Error::new(
                    ErrorKind::Locked,
                    format!("thin volume '{name}' is in use (open or served): stop using it before removing it"),
                ));
            }
            st.drop_volume(id);
        }
        self.commit(io).await
    }

    /// Take in data blocks added at the end of a data device that has grown (a file extended,
    /// a block device or array enlarged) and commit; the pool may be in use. Returns the new
    /// number of data blocks.
    ///
    /// The data device's size is looked at again first ([`BlockDev::refresh_size`]), so a file
    /// another process extended (`truncate -s`, `fallocate -l`) counts. The added blocks are
    /// write-zeroed, then the larger block count goes into a committed transaction like any
    /// other change: a crash before its superblock leaves the old pool (the space past its end
    /// is ignored), after it the grown one. Writes waiting for space (`no-space-wait`) are woken
    /// by that commit.
    ///
    /// Refused, changing nothing: a data device smaller than the pool (pools do not shrink),
    /// one that has not grown by at least one block, and a metadata area too small for the
    /// space map of the grown pool (`NoSpace`). Should the commit itself then fail, the pool
    /// stays as after any failed commit (the growth is written by the next commit that works).
    pub async fn grow(&self, io: &IoCtx) -> Result<u64> {
        let (bs, off) = (self.inner.block_size, self.inner.data_offset);
        let data = &self.inner.data;
        let dev = data.describe();
        let size = data.refresh_size().map_err(|e| e.context(format!("thin pool: data device {dev}")))?;
        let old = self.inner.lock().sb.data_blocks;
        let have = old * bs + off;
        if size < have {
            return Err(invalid(format!(
                "thin pool: data device {dev} is {size} bytes, smaller than the {have} bytes the pool's {old} \
                 data blocks reach: a pool cannot shrink"
            )));
        }
        let new = (size.saturating_sub(off) / bs).min(MAX_DATA_BLOCKS);
        if new == old {
            let why = if old == MAX_DATA_BLOCKS {
                format!("the pool already has the most data blocks a pool can ({MAX_DATA_BLOCKS})")
            } else {
                format!("it needs at least {} bytes for one more data block of {bs}", have + bs)
            };
            return Err(invalid(format!("thin pool: data device {dev} has not grown ({size} bytes): {why}")));
        }
        self.check_metadata_room(old, new)?;
        let zeroed = data.info().write_zeroes
            && data
                .write_zeroes(io, off + old * bs, (new - old) * bs, true, IoTag::meta("thin.grow_zero"))
                .await
                .is_ok();
        {
            let mut st = self.inner.lock();
            if st.sb.data_blocks != old {
                return Err(invalid(format!(
                    "thin pool on {dev}: grown by another request meanwhile (now {} data blocks)",
                    st.sb.data_blocks
                )));
            }
            st.grow_data(new, zeroed);
        }
        self.commit(io).await?;
        tracing::info!("thin pool on {dev}: grown from {old} to {new} data blocks of {bs} bytes");
        Ok(new)
    }

    /// Refuse a growth from `old` to `new` data blocks whose space map could not be written:
    /// each added page of it may need a free metadata page and one for its copy-on-write copy,
    /// plus its directory entry.
    fn check_metadata_room(&self, old: u64, new: u64) -> Result<()> {
        let extra = PagedArray::page_count(new) - PagedArray::page_count(old);
        let need = 2 * extra + (extra * 16).div_ceil(PAGE_PAYLOAD as u64);
        let st = self.inner.lock();
        let free = st.meta_free_pages();
        if need <= free {
            return Ok(());
        }
        let place = if self.inner.shared_dev {
            format!(
                "the metadata area of {} ({} pages, fixed at pool-create)",
                self.inner.meta.describe(),
                st.sb.meta_pages
            )
        } else {
            format!("metadata device {} ({} pages)", self.inner.meta.describe(), st.sb.meta_pages)
        };
        Err(Error::new(
            ErrorKind::NoSpace,
            format!(
                "thin pool: metadata full: growing from {old} to {new} data blocks needs up to {need} more \
                 metadata pages for the space map, and {place} has {free} free"
            ),
        ))
    }

    /// Open volume `name` as a block device.
    pub fn volume(&self, name: &str) -> Result<ThinVolume> {
        let mut st = self.inner.lock();
        let id = st.volume_id(name)?;
        if let Some(v) = st.volumes.get_mut(&id) {
            v.open += 1;
        }
        Ok(ThinVolume::new(self.inner.clone(), id, name))
    }

    /// Set every leaked block's refcount to the references found, and commit (checker repair).
    pub async fn repair_leaks(&self, io: &IoCtx) -> Result<u64> {
        let n = {
            let mut st = self.inner.lock();
            let audit = load::audit(&st);
            for (b, _, found) in &audit.leaks {
                st.sm.set(*b, *found);
                if *found == 0 {
                    st.freed_now.push(*b);
                }
            }
            st.leaked = 0;
            st.meta_dirty = true;
            audit.leaks.len() as u64
        };
        self.commit(io).await?;
        Ok(n)
    }

    /// Overwrite a stored reference count (tests make leaks with it).
    #[cfg(test)]
    pub(crate) fn set_refcount_for_test(&self, block: u64, rc: u64) {
        let mut st = self.inner.lock();
        st.sm.set(block, rc);
        st.meta_dirty = true;
    }

    /// Load and audit the committed metadata of this open pool from its device, as the checker
    /// does for a closed one. Commits wait meanwhile (no page of the transaction being read is
    /// reused under the reader); I/O to the volumes goes on.
    pub async fn audit_committed(&self, io: &IoCtx) -> Result<Audit> {
        poll_fn(|cx| {
            let mut st = self.inner.lock();
            if st.committing {
                st.park(cx.waker());
                return Poll::Pending;
            }
            st.committing = true;
            Poll::Ready(())
        })
        .await;
        let _hold = HoldCommits { inner: self.inner.clone() };
        let inner = &self.inner;
        let sb = load::read_superblock(io, &inner.meta).await?;
        load::check_geometry(&sb, &*inner.meta, &*inner.data, inner.shared_dev)?;
        let st = load::load(io, &inner.meta, sb).await?;
        Ok(load::audit(&st))
    }

    /// Audit the in-memory state (tests; the checker audits what is on disk).
    pub fn audit(&self) -> Audit {
        load::audit(&self.inner.lock())
    }
}

/// A volume's writes are held back (for a snapshot) until this is dropped.
struct Suspend {
    inner: Arc<PoolInner>,
    id: u64,
}

impl Drop for Suspend {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        if let Some(v) = st.volumes.get_mut(&self.id) {
            v.suspended = false;
        }
        st.wake_all();
    }
}

/// No commit starts until this is dropped (`audit_committed`).
struct HoldCommits {
    inner: Arc<PoolInner>,
}

impl Drop for HoldCommits {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        st.committing = false;
        st.wake_all();
    }
}

/// Commit (see the module docs); returns once a commit that started after the call finished.
pub(crate) async fn commit(inner: &Arc<PoolInner>, io: &IoCtx) -> Result<()> {
    let ticket = {
        let mut st = inner.lock();
        st.gen_requested += 1;
        st.gen_requested
    };
    loop {
        let lead = poll_fn(|cx| {
            let mut st = inner.lock();
            if let Some(f) = &st.failed {
                return Poll::Ready(Err(Error::new(ErrorKind::Io, format!("thin pool failed: {f}"))));
            }
            if st.gen_done >= ticket {
                return Poll::Ready(Ok(None));
            }
            if st.committing {
                st.park(cx.waker());
                return Poll::Pending;
            }
            let gen = st.gen_requested;
            let plan = if st.meta_dirty {
                match st.prepare_commit() {
                    Ok(p) => Some(p),
                    Err(e) => return Poll::Ready(Err(e)),
                }
            } else {
                None
            };
            st.committing = true;
            let freed = st.freed_by_commit();
            Poll::Ready(Ok(Some((gen, plan, freed))))
        })
        .await?;
        let Some((gen, plan, freed)) = lead else { return Ok(()) };
        let res = run_commit(inner, io, plan.as_ref(), &freed).await;
        let mut st = inner.lock();
        st.committing = false;
        match res {
            Ok(zeroed) => {
                if let Some(p) = plan {
                    st.finish_commit(p);
                }
                st.mark_zeroed(&zeroed);
                st.gen_done = st.gen_done.max(gen);
                st.wake_all();
            }
            Err(e) => {
                tracing::error!("thin pool: commit failed, refusing writes until reopened: {e}");
                st.failed = Some(e.to_string());
                st.wake_all();
                return Err(e);
            }
        }
    }
}

/// Write one commit; returns the freed data blocks that now read zeros.
async fn run_commit(inner: &PoolInner, io: &IoCtx, plan: Option<&CommitPlan>, freed: &[u64]) -> Result<Vec<u64>> {
    let Some(CommitPlan { pages, sb, .. }) = plan else {
        inner.data.flush(io, IoTag::meta("thin.commit_data_flush")).await?;
        return Ok(Vec::new());
    };
    write_pages(io, &inner.meta, pages, IoTag::meta("thin.meta_page")).await?;
    // Created only now: a flush covers the writes completed before it is issued.
    let mut flushes: Vec<IoFuture> = vec![inner.data.flush(io, IoTag::meta("thin.commit_data_flush"))];
    if !inner.shared_dev {
        flushes.push(inner.meta.flush(io, IoTag::meta("thin.commit_meta_flush")));
    }
    try_join_all(flushes).await?;
    let mut b = SharedBuf::from_slice(&sb.encode());
    let slot = sb.txid % 2;
    inner.meta.write(io, slot * PAGE_SIZE as u64, b.io(), false, IoTag::meta("thin.superblock")).await?;
    inner.meta.flush(io, IoTag::meta("thin.superblock_flush")).await?;
    Ok(discard_freed(inner, io, freed).await)
}

/// Discard the data blocks a commit freed (nothing maps them any more). Where the data device
/// can discard so that it reads zeros (a write-zeroes that unmaps: a punched hole), the blocks
/// become known-zero and their next first write needs no zero-fill; they are returned. Runs of
/// neighbouring blocks go down as one request.
async fn discard_freed(inner: &PoolInner, io: &IoCtx, freed: &[u64]) -> Vec<u64> {
    let info = inner.data.info();
    if !info.discard || freed.is_empty() {
        return Vec::new();
    }
    let zeroing = info.write_zeroes;
    let mut sorted = freed.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut zeroed = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i + 1;
        while j < sorted.len() && sorted[j] == sorted[j - 1] + 1 {
            j += 1;
        }
        let (first, n) = (sorted[i], (j - i) as u64);
        let (off, len) = (inner.data_offset + first * inner.block_size, n * inner.block_size);
        let res = if zeroing {
            inner.data.write_zeroes(io, off, len, true, IoTag::data("thin.discard_free")).await
        } else {
            inner.data.discard(io, off, len, IoTag::data("thin.discard_free")).await
        };
        match res {
            Ok(()) if zeroing => zeroed.extend_from_slice(&sorted[i..j]),
            Ok(()) => {}
            Err(e) => tracing::warn!("thin pool: discard of freed data blocks {first}..+{n} failed: {e}"),
        }
        i = j;
    }
    zeroed
}
