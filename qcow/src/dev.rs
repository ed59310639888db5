//! `Qcow2`: an open image as a `BlockDev`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use blockdev::{ready, BlockDev, DevInfo, IoBufs, IoCtx, IoFuture, IoTag, Result};

use crate::header::Header;
use crate::imagefile::site;
use crate::in_place;
use crate::shared::Shared;

/// An open qcow2 image.
pub struct Qcow2 {
    sh: Arc<Shared>,
}

impl Qcow2 {
    /// Wrap shared state (used by `open`).
    pub(crate) fn from_shared(sh: Arc<Shared>) -> Self {
        Qcow2 { sh }
    }

    /// The shared state (metadata, file, backing).
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.sh
    }

    /// A copy of the header as it is now.
    pub fn header(&self) -> Header {
        self.sh.lock().header.clone()
    }

    /// The backing device, if any.
    pub fn backing(&self) -> Option<&Arc<dyn BlockDev>> {
        self.sh.backing.as_ref()
    }

    /// Write every cache back and sync (a clean close; the device stays usable). A flush that
    /// released references leaves their refcount updates dirty, so this flushes until clean.
    /// With lazy refcounts the dirty bit is cleared once everything is written back.
    pub async fn close(&self, io: &IoCtx) -> Result<()> {
        for _ in 0..3 {
            crate::write::flush(&self.sh, io).await?;
            if self.dirty_items() == 0 {
                break;
            }
        }
        if self.sh.read_only {
            return Ok(());
        }
        let _g = self.sh.alloc.lock().await;
        if self.dirty_items() == 0 {
            crate::flush::mark_clean(&self.sh, io).await?;
        }
        Ok(())
    }

    /// True when lazy refcounts left the dirty bit set (cleared by `close`).
    fn lazy_dirty(&self) -> bool {
        self.sh.lazy && self.sh.lock().header.is_dirty()
    }

    /// The host offset of `[off, off+len)` when it lies in one cluster whose L2 slice is cached
    /// and may be read, or written in place, there ([`crate::in_place`]).
    fn in_place_host(&self, off: u64, len: u64, write: bool) -> Option<u64> {
        let g = self.sh.geo;
        let within = g.in_cluster(off);
        if len == 0 || within + len > g.cluster_size() {
            return None;
        }
        let mut m = self.sh.lock();
        if write {
            return in_place::writable_host(&mut m, off, len).ok().flatten();
        }
        in_place::host_bytes(&g, m.l2_entry(off).ok()?, within, len, false)
    }

    fn dirty_items(&self) -> usize {
        let m = self.sh.lock();
        m.l2.dirty_count() + m.rc.dirty_count() + m.l1_dirty.len() + m.reftable_dirty.len() + m.pending_free.len()
    }
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        if self.sh.read_only || Arc::strong_count(&self.sh) > 1 {
            return;
        }
        if self.dirty_items() == 0 && !self.lazy_dirty() {
            return;
        }
        // Safety net for an owner that did not call `close`: write the caches back on a ring of our own.
        tracing::warn!("{}: dropped with unwritten metadata; writing it back (call close() instead)", self.sh.name);
        let res = IoCtx::new().and_then(|io| io.block_on(self.close(&io)));
        if let Err(e) = res {
            tracing::error!("{}: writing metadata back on close failed: {e}", self.sh.name);
        }
    }
}

impl BlockDev for Qcow2 {
    fn info(&self) -> DevInfo {
        let cs = self.sh.geo.cluster_size() as u32;
        DevInfo {
            size: self.sh.size.load(Ordering::Acquire),
            logical_block_size: 512,
            physical_block_size: 512,
            mem_align: 1,
            read_only: self.sh.read_only,
            discard: true,
            write_zeroes: true,
            optimal_io_size: cs,
            volatile_cache: true,
        }
    }

    fn resize(&self, io: &IoCtx, new_size: u64, shrink: bool) -> Result<u64> {
        // As `blkctl qcow2 resize` (crash-safe; a shrink over data is refused saying where).
        io.block_on(crate::resize::resize(io, self, new_size, shrink))?;
        Ok(self.sh.size.load(Ordering::Acquire))
    }

    fn read(&self, io: &IoCtx, off: u64, bufs: IoBufs, _tag: IoTag) -> IoFuture {
        if let Err(e) = self.info().check_range(off, bufs.len() as u64) {
            return ready(Err(e));
        }
        // Fast path: the request lies in one allocated cluster whose L2 slice is cached; hand the
        // file's own future back (no plan, no extra task state).
        if let Some(host) = self.in_place_host(off, bufs.len() as u64, false) {
            return self.sh.file.read(io, host, bufs, IoTag::data(site::DATA));
        }
        Box::pin(crate::read::read(self.sh.clone(), io.clone(), off, bufs))
    }

    fn write(&self, io: &IoCtx, off: u64, bufs: IoBufs, fua: bool, _tag: IoTag) -> IoFuture {
        if let Err(e) = self.info().check_write(off, bufs.len() as u64) {
            return ready(Err(e));
        }
        if !fua {
            if let Some(host) = self.in_place_host(off, bufs.len() as u64, true) {
                return self.sh.file.write(io, host, bufs, false, IoTag::data(site::DATA));
            }
        }
        Box::pin(crate::write::write(self.sh.clone(), io.clone(), off, bufs, fua))
    }

    fn flush(&self, io: &IoCtx, _tag: IoTag) -> IoFuture {
        let (sh, io) = (self.sh.clone(), io.clone());
        Box::pin(async move { crate::write::flush(&sh, &io).await })
    }

    fn discard(&self, io: &IoCtx, off: u64, len: u64, _tag: IoTag) -> IoFuture {
        if let Err(e) = self.info().check_write(off, len) {
            return ready(Err(e));
        }
        Box::pin(crate::zero::discard(self.sh.clone(), io.clone(), off, len))
    }

    fn write_zeroes(&self, io: &IoCtx, off: u64, len: u64, unmap: bool, _tag: IoTag) -> IoFuture {
        if let Err(e) = self.info().check_write(off, len) {
            return ready(Err(e));
        }
        Box::pin(crate::zero::write_zeroes(self.sh.clone(), io.clone(), off, len, unmap))
    }

    fn layer_metrics(&self, out: &mut Vec<blockdev::LayerSample>) {
        crate::metrics::push(&self.sh, out);
        self.sh.file.layer_metrics(out);
        if let Some(b) = &self.sh.backing {
            b.layer_metrics(out);
        }
    }

    fn over_network(&self) -> bool {
        self.sh.file.over_network() || self.sh.backing.as_ref().is_some_and(|b| b.over_network())
    }

    fn describe(&self) -> String {
        format!("qcow2:{}", self.sh.name)
    }
}
