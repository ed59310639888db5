//! The state an open image shares between threads, and the loop that finishes a metadata lookup
//! by loading missing slices without holding the lock across I/O.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use blockdev::{BlockDev, Error, ErrorKind, IoCtx, Result};

use crate::header::Compression;
use crate::imagefile;
use crate::l1l2::Geometry;
use crate::meta::{Lookup, LookupErr, Meta, Miss};

/// What every request of an open image reaches through its `Arc`.
pub struct Shared {
    /// The image file.
    pub file: Arc<dyn BlockDev>,
    /// The backing device (read-only), if the image has one.
    pub backing: Option<Arc<dyn BlockDev>>,
    /// Sizes.
    pub geo: Geometry,
    /// How compressed clusters are compressed.
    pub compression: Compression,
    /// Writes refused.
    pub read_only: bool,
    /// Lazy refcounts in use (a writable v3 image with the compatible bit): the dirty bit is set
    /// before the first metadata write-back, refcount blocks are written without a sync of their
    /// own before the L2 tables, and a clean close clears the bit.
    pub lazy: bool,
    /// The metadata, under a short lock never held across I/O.
    pub meta: Mutex<Meta>,
    /// Serialises allocation and metadata write-back (async-aware: waiters on other threads are woken).
    pub alloc: futures::lock::Mutex<()>,
    /// Bumped whenever a metadata slice is written back, so a load that raced one is retried.
    pub writeback_gen: AtomicU64,
    /// Virtual disk size.
    pub size: AtomicU64,
    /// Name for logs and errors.
    pub name: String,
}

impl Shared {
    /// Take the metadata lock (a poisoned lock is taken anyway: the data is plain tables).
    pub fn lock(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `f` under the metadata lock until it stops missing slices, loading each miss.
    pub async fn lookup<T>(&self, io: &IoCtx, mut f: impl FnMut(&mut Meta) -> Lookup<T>) -> Result<T> {
        // Each round either finishes or loads one more slice; a bounded number of slices per
        // request (and a retry only when a write-back raced the load) keeps this finite.
        for _ in 0..100_000 {
            let miss = {
                let mut m = self.lock();
                match f(&mut m) {
                    Ok(v) => return Ok(v),
                    Err(LookupErr::Err(e)) => return Err(e.context(&self.name)),
                    Err(LookupErr::Miss(miss)) => miss,
                }
            };
            self.load(io, miss).await?;
        }
        Err(Error::new(ErrorKind::Io, format!("{}: metadata lookup did not settle", self.name)))
    }

    /// Load one slice into its cache.
    pub async fn load(&self, io: &IoCtx, miss: Miss) -> Result<()> {
        let (off, len, what) = {
            let m = self.lock();
            match miss {
                Miss::L2(off) => (off, m.l2.slice_size(), "L2 table"),
                Miss::Refcount(off) => (off, m.rc.slice_size(), "refcount block"),
            }
        };
        let file_end = self.file.info().size.next_multiple_of(self.geo.cluster_size());
        if off.checked_add(len as u64).is_none_or(|end| end > file_end) {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("{}: {what} at {off:#x} lies past the end of the image file ({file_end} bytes)", self.name),
            ));
        }
        let gen = self.writeback_gen.load(Ordering::Acquire);
        let data = imagefile::read_vec(io, &self.file, off, len).await?;
        let mut m = self.lock();
        if self.writeback_gen.load(Ordering::Acquire) != gen {
            // A write-back happened while we read: our copy may be stale; the retry re-reads.
            return Ok(());
        }
        let cache = match miss {
            Miss::L2(_) => &mut m.l2,
            Miss::Refcount(_) => &mut m.rc,
        };
        if !cache.contains(off) {
            cache.insert(off, data, false);
        }
        Ok(())
    }
}
