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

    /// Change the device's size to `new_size` bytes while it is in use and return the size it
    /// reports from now on. A smaller size is refused unless `shrink`; a shrink that would cut
    /// off data the format keeps track of is refused saying how much. Every refusal changes
    /// nothing. Blocks the calling thread on `io` (a control-path call: never from a thread whose
    /// ring serves requests). The caller keeps requests past a smaller end from arriving.
    ///
    /// The default refuses, naming the device: formats that can change size override it.
    fn resize(&self, io: &IoCtx, new_size: u64, shrink: bool) -> Result<u64> {
        let _ = (io, new_size, shrink);
        Err(crate::Error::new(
            crate::ErrorKind::Unsupported,
            format!("{}: this device cannot be resized", self.describe()),
        ))
    }

    /// Whether requests to this device, or to a device it stands on, go over the network and
    /// complete on another thread (librbd). A queue worker polling for such completions only
    /// takes CPU from the threads that produce them, so exports over such a device do not poll
    /// by default. Devices on this host answer false (the default); wrappers answer for what
    /// they wrap.
    fn over_network(&self) -> bool {
        false
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

/// The common checks of a [`BlockDev::resize`] from `old` to `new` bytes of the device `what`:
/// a non-zero multiple of `block` bytes, and a smaller size only with `shrink` (as
/// `qemu-img resize --shrink`). The error says what and by how much.
pub fn check_resize(what: &str, old: u64, new: u64, block: u64, shrink: bool) -> Result<()> {
    use crate::size::format_iec;
    let block = block.max(1);
    if new == 0 || !new.is_multiple_of(block) {
        return Err(crate::Error::new(
            crate::ErrorKind::InvalidInput,
            format!("{what}: new size {new} must be a non-zero multiple of {block} bytes"),
        ));
    }
    if new < old && !shrink {
        return Err(crate::Error::new(
            crate::ErrorKind::InvalidInput,
            format!(
                "{what}: new size {} ({new} bytes) is smaller than the current {} ({old} bytes): \
                 shrinking cuts off its end and needs shrink",
                format_iec(new),
                format_iec(old)
            ),
        ));
    }
    Ok(())
}
