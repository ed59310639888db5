//! The consumer-side interface of a disk: the one trait every layer implements and consumes.

use std::future::Future;
use std::pin::Pin;

use crate::{DevInfo, IoBufs, IoCtx, IoTag, LayerSample, Result};

/// The future every device operation returns: `'static` (it owns a clone of the `IoCtx` and
/// its buffers), not `Send` (it stays on the thread whose ring runs it).
pub type IoFuture = Pin<Box<dyn Future<Output = Result<()>>>>;

/// A block device as its consumer sees it.
///
/// Devices are shared between threads (`Arc<dyn BlockDev>`); each call names the calling thread's
/// [`IoCtx`], whose ring does the work. Every operation carries an [`IoTag`] saying what it is for.
///
/// Contract, for every implementation:
/// - offsets and lengths are multiples of `info().logical_block_size` and lie inside the device,
///   otherwise the future resolves to `InvalidInput` or `OutOfRange` and nothing is touched;
/// - a successful `read` filled every byte of `bufs`; a successful `write` wrote every byte;
/// - a completed write is stable after a later `flush` completes, or immediately with `fua`;
/// - after `discard` the range reads zeros or its old contents; after `write_zeroes`, zeros.
pub trait BlockDev: Send + Sync {
    /// Geometry and capabilities.
    fn info(&self) -> DevInfo;

    /// Read `bufs.len()` bytes at `off` into `bufs`.
    fn read(&self, io: &IoCtx, off: u64, bufs: IoBufs, tag: IoTag) -> IoFuture;

    /// Write `bufs` at `off`; with `fua`, the data is stable when the future resolves.
    fn write(&self, io: &IoCtx, off: u64, bufs: IoBufs, fua: bool, tag: IoTag) -> IoFuture;

    /// Make every write completed before this call stable.
    fn flush(&self, io: &IoCtx, tag: IoTag) -> IoFuture;

    /// Tell the device `[off, off+len)` is no longer needed.
    fn discard(&self, io: &IoCtx, off: u64, len: u64, tag: IoTag) -> IoFuture;

    /// Make `[off, off+len)` read zeros; `unmap` allows deallocating it.
    fn write_zeroes(&self, io: &IoCtx, off: u64, len: u64, unmap: bool, tag: IoTag) -> IoFuture;

    /// Look again at how big the device is beneath (a file another process extended, a block
    /// device that grew) and return the size `info()` reports from now on. Only growth is taken:
    /// a device whose backing shrank keeps its size and the call fails, naming it. Requests in
    /// flight are unaffected (the size only moves up). Devices whose size cannot change
    /// underneath (the default) return `info().size`; wrappers forward to what they wrap.
    fn refresh_size(&self) -> Result<u64> {
        Ok(self.info().size)
    }

    /// Push this layer's own metrics (RAID state, pool space, ...) onto `out`, then ask the
    /// devices it stands on for theirs. Called when metrics are scraped, never per request; it
    /// must not wait on I/O. Layers without metrics (the default) report nothing; wrappers
    /// forward to what they wrap.
    fn layer_metrics(&self, out: &mut Vec<LayerSample>) {
        let _ = out;
    }

    /// A short human-readable name for logs (`raw:/path`, `mem:1G`, `raid5:uuid`).
    fn describe(&self) -> String {
        String::from("blockdev")
    }
}

/// A future that resolves at once to `res` (for devices that finish synchronously or refuse early).
pub fn ready(res: Result<()>) -> IoFuture {
    Box::pin(std::future::ready(res))
}
