//! [`RbdDev`]: an RBD image as a [`BlockDev`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use blockdev::{ready, BlockDev, DevInfo, Error, ErrorKind, IoBufs, IoCtx, IoFuture, IoTag, Result};

use crate::aio::{self, Kind, Shared};
use crate::config::RbdConfig;
use crate::image::Image;

/// The most iovecs librbd takes in one vectored request (`IOV_MAX`).
const MAX_SEGMENTS: usize = 1024;

/// An RBD image served as a block device. Opened with [`RbdDev::open`] (on the control path:
/// it connects to the cluster); every worker thread then issues requests on the one image handle.
pub struct RbdDev {
    shared: Arc<Shared>,
    /// The size requests are checked against: read at open, only ever raised by `refresh_size`.
    size: AtomicU64,
    info: DevInfo,
    spec: String,
}

impl RbdDev {
    /// Connect to the cluster and open the image `cfg` names; a writable open takes the image's
    /// exclusive lock and fails, naming the image, while another client holds it.
    pub fn open(cfg: &RbdConfig) -> Result<RbdDev> {
        let image = Image::open(cfg)?;
        let size = image.size();
        let stripe = image.stripe_unit();
        let info = DevInfo {
            size: size - size % 512,
            logical_block_size: 512,
            physical_block_size: 4096,
            mem_align: 1,
            read_only: cfg.is_read_only(),
            discard: !cfg.is_read_only(),
            write_zeroes: !cfg.is_read_only(),
            optimal_io_size: u32::try_from(stripe).unwrap_or(0),
            volatile_cache: true,
        };
        tracing::info!(
            "rbd: opened {} ({size} bytes{})",
            image.name(),
            if info.read_only { ", read-only" } else { "" }
        );
        Ok(RbdDev { shared: Arc::new(Shared { image }), size: AtomicU64::new(info.size), info, spec: cfg.spec() })
    }

    fn info_now(&self) -> DevInfo {
        DevInfo { size: self.size.load(Ordering::Acquire), ..self.info }
    }

    fn check(&self, off: u64, len: u64, write: bool) -> Result<()> {
        let info = self.info_now();
        if write && info.read_only {
            return Err(Error::new(
                ErrorKind::ReadOnly,
                format!("rbd image {}: served read-only (a snapshot, or read-only=on): writes are refused", self.spec),
            ));
        }
        info.check_range(off, len)
    }
}

impl BlockDev for RbdDev {
    fn info(&self) -> DevInfo {
        self.info_now()
    }

    fn read(&self, _io: &IoCtx, off: u64, bufs: IoBufs, _tag: IoTag) -> IoFuture {
        let len = bufs.len() as u64;
        if let Err(e) = self.check(off, len, false) {
            return ready(Err(e));
        }
        if len == 0 {
            return ready(Ok(()));
        }
        if bufs.segments() > MAX_SEGMENTS {
            return ready(Err(Error::new(
                ErrorKind::InvalidInput,
                format!("rbd image {}: a request of {} segments exceeds {MAX_SEGMENTS}", self.spec, bufs.segments()),
            )));
        }
        aio::submit(&self.shared, Kind::Read, off, len, Some(bufs))
    }

    fn write(&self, _io: &IoCtx, off: u64, bufs: IoBufs, fua: bool, _tag: IoTag) -> IoFuture {
        let len = bufs.len() as u64;
        if let Err(e) = self.check(off, len, true) {
            return ready(Err(e));
        }
        if len == 0 {
            return ready(Ok(()));
        }
        if bufs.segments() > MAX_SEGMENTS {
            return ready(Err(Error::new(
                ErrorKind::InvalidInput,
                format!("rbd image {}: a request of {} segments exceeds {MAX_SEGMENTS}", self.spec, bufs.segments()),
            )));
        }
        let write = aio::submit(&self.shared, Kind::Write, off, len, Some(bufs));
        if !fua {
            return write;
        }
        // librbd has no per-write FUA: a flush after the write makes it stable.
        let shared = self.shared.clone();
        Box::pin(async move {
            write.await?;
            aio::submit(&shared, Kind::Flush, 0, 0, None).await
        })
    }

    fn flush(&self, _io: &IoCtx, _tag: IoTag) -> IoFuture {
        if self.info.read_only {
            return ready(Ok(()));
        }
        aio::submit(&self.shared, Kind::Flush, 0, 0, None)
    }

    fn discard(&self, _io: &IoCtx, off: u64, len: u64, _tag: IoTag) -> IoFuture {
        if let Err(e) = self.check(off, len, true) {
            return ready(Err(e));
        }
        if len == 0 {
            return ready(Ok(()));
        }
        aio::submit(&self.shared, Kind::Discard, off, len, None)
    }

    fn write_zeroes(&self, _io: &IoCtx, off: u64, len: u64, _unmap: bool, _tag: IoTag) -> IoFuture {
        if let Err(e) = self.check(off, len, true) {
            return ready(Err(e));
        }
        if len == 0 {
            return ready(Ok(()));
        }
        if usize::try_from(len).is_err() {
            return ready(Err(Error::out_of_range(off, len, self.info_now().size)));
        }
        aio::submit(&self.shared, Kind::WriteZeroes, off, len, None)
    }

    /// Ask librbd for the image's size (it follows another client's `rbd resize` through the
    /// header watch) and take it if it grew. Blocks on the network: control path only.
    fn refresh_size(&self) -> Result<u64> {
        let now = self.shared.image.current_size()?;
        let now = now - now % 512;
        let had = self.size.load(Ordering::Acquire);
        if now < had {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "rbd image {}: is now {now} bytes, smaller than the {had} it had: a device in use cannot shrink",
                    self.spec
                ),
            ));
        }
        Ok(self.size.fetch_max(now, Ordering::AcqRel).max(now))
    }

    fn over_network(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("rbd:{}", self.spec)
    }
}
