//! `RawFile`: a regular file or a block device as a disk, through the thread's io_uring.
//!
//! - `direct` opens with O_DIRECT; buffers that are not aligned enough go through the thread's
//!   aligned buffer pool, and offsets or lengths that are not multiples of the logical block size
//!   are refused.
//! - Writable opens take an exclusive OFD lock, read-only opens a shared one (see [`lock`]).
//! - `growable` (for image files under a format layer) lets writes extend the file and reads past
//!   its end return zeros; otherwise the size is fixed at open.

mod geometry;
pub mod holder;
pub mod lock;
mod resize;

use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::engine::{online_cpus as cpus, Op};
use crate::{BlockDev, DevInfo, Error, ErrorKind, FileHandle, IoBufs, IoCtx, IoFuture, IoTag, Result};

/// How to open a [`RawFile`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Refuse writes; take a shared lock.
    pub read_only: bool,
    /// O_DIRECT: bypass the page cache.
    pub direct: bool,
    /// Writes may extend the file; reads past the end return zeros (image files).
    pub growable: bool,
    /// Skip the OFD lock (only for callers that hold their own, such as a read-only probe).
    pub no_lock: bool,
}

struct Inner {
    // Field order is drop order: unregister from rings before closing the fd (and its lock).
    handle: Arc<FileHandle>,
    _file: File,
    path: PathBuf,
    info: DevInfo,
    size: AtomicU64,
    opts: OpenOptions,
    is_block_device: bool,
    /// Reads are always copied by io_uring's workers (tmpfs): a lone large read is split.
    reads_on_workers: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Nothing uses the file any more: let other processes in now, not when the kernel has
        // finished dropping the rings' registrations of it (lock.rs).
        if !self.opts.no_lock {
            lock::unlock_file(self._file.as_raw_fd());
        }
    }
}

/// A file or block device opened as a disk.
#[derive(Clone)]
pub struct RawFile {
    inner: Arc<Inner>,
}

/// Most iovecs one readv/writev takes.
const MAX_SEGMENTS: usize = libc::UIO_MAXIOV as usize;

impl RawFile {
    /// Open `path` with `opts`.
    pub fn open(path: impl AsRef<Path>, opts: OpenOptions) -> Result<RawFile> {
        let path = path.as_ref();
        let what = path.display().to_string();
        let mut flags = libc::O_CLOEXEC;
        if opts.direct {
            flags |= libc::O_DIRECT;
        }
        let open =
            |flags: i32| std::fs::OpenOptions::new().read(true).write(!opts.read_only).custom_flags(flags).open(path);
        // No access-time updates: a read served from the page cache would otherwise also look at
        // (and now and then dirty) the inode, a visible part of a small read's CPU time
        // (docs/design.md, "Devices"). Only the file's owner (or CAP_FOWNER) may ask for it, so
        // anyone else opens the file as usual.
        let file = match open(flags | libc::O_NOATIME) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(flags),
            other => other,
        };
        let file = file.map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) if opts.direct => Error::new(
                ErrorKind::Unsupported,
                format!("{what}: this filesystem does not support O_DIRECT (drop direct=on)"),
            ),
            _ => Error::from_io(e, format!("{what}: open")),
        })?;
        if !opts.no_lock {
            lock::lock_file(file.as_raw_fd(), path, !opts.read_only)?;
        }
        // A refusal from here on releases the lock (and this process's record of it) now.
        let refuse = |e: Error| {
            if !opts.no_lock {
                lock::unlock_file(file.as_raw_fd());
            }
            e
        };
        let geo = geometry::probe(file.as_raw_fd(), &what, opts.direct).map_err(refuse)?;
        let lbs = geo.logical_block_size;
        let size = if opts.growable { geo.size } else { geo.size - geo.size % u64::from(lbs) };
        if size == 0 && !opts.growable {
            return Err(refuse(Error::new(
                ErrorKind::InvalidInput,
                format!("{what}: is empty (a disk needs at least {lbs} bytes)"),
            )));
        }
        let info = DevInfo {
            size,
            logical_block_size: if opts.growable && !opts.direct { 1 } else { lbs },
            physical_block_size: geo.physical_block_size,
            mem_align: geo.dio_mem_align,
            read_only: opts.read_only,
            discard: true,
            write_zeroes: true,
            optimal_io_size: 0,
            volatile_cache: true,
        };
        let handle = Arc::new(FileHandle::new(file.as_raw_fd()));
        Ok(RawFile {
            inner: Arc::new(Inner {
                handle,
                _file: file,
                path: path.to_path_buf(),
                info,
                size: AtomicU64::new(size),
                opts,
                is_block_device: geo.is_block_device,
                reads_on_workers: geo.on_tmpfs,
            }),
        })
    }

    /// Create (or truncate) a sparse file of `size` bytes, then open it writable.
    pub fn create(path: impl AsRef<Path>, size: u64, opts: OpenOptions) -> Result<RawFile> {
        let path = path.as_ref();
        let f = File::create(path).map_err(|e| Error::from_io(e, format!("{}: create", path.display())))?;
        f.set_len(size).map_err(|e| Error::from_io(e, format!("{}: set size", path.display())))?;
        drop(f);
        RawFile::open(path, opts)
    }

    /// The open file (for reads outside the ring, such as a look at what it holds before a
    /// tool formats it: [`crate::signature::refuse_overwrite`]).
    pub fn file(&self) -> &File {
        &self.inner._file
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Current size in bytes (grows with writes when `growable`).
    pub fn size(&self) -> u64 {
        self.inner.size.load(Ordering::Acquire)
    }

    /// Set the file's length (growable files; shrinking drops data past the new end).
    pub fn set_len(&self, len: u64) -> Result<()> {
        if self.inner.opts.read_only {
            return Err(Error::new(ErrorKind::ReadOnly, format!("{}: read-only", self.inner.path.display())));
        }
        self.inner
            ._file
            .set_len(len)
            .map_err(|e| Error::from_io(e, format!("{}: set length", self.inner.path.display())))?;
        self.inner.size.store(len, Ordering::Release);
        Ok(())
    }

    /// True for a block device, false for a regular file.
    pub fn is_block_device(&self) -> bool {
        self.inner.is_block_device
    }

    fn check(&self, off: u64, len: u64, write: bool) -> Result<()> {
        let inner = &self.inner;
        if write && inner.opts.read_only {
            return Err(Error::new(ErrorKind::ReadOnly, format!("{}: opened read-only", inner.path.display())));
        }
        if inner.opts.growable {
            let lbs = u64::from(inner.info.logical_block_size.max(1));
            if !off.is_multiple_of(lbs) || !len.is_multiple_of(lbs) {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("{}: request [{off}, +{len}) not {lbs}-byte aligned", inner.path.display()),
                ));
            }
            return off.checked_add(len).map(|_| ()).ok_or_else(|| Error::out_of_range(off, len, u64::MAX));
        }
        let info = DevInfo { size: self.size(), ..inner.info };
        info.check_range(off, len).map_err(|e| e.context(inner.path.display()))
    }

    fn needs_bounce(&self, bufs: &IoBufs) -> bool {
        self.inner.opts.direct && !bufs.is_aligned(self.inner.info.mem_align as usize)
    }
}

/// Split `bufs` into the part one readv/writev can take (at most `MAX_SEGMENTS` iovecs) and the rest.
fn split_segments(bufs: IoBufs) -> (IoBufs, Option<IoBufs>) {
    if bufs.segments() <= MAX_SEGMENTS {
        return (bufs, None);
    }
    let n: usize = bufs.iovecs()[..MAX_SEGMENTS].iter().map(|v| v.iov_len).sum();
    (bufs.slice(0, n), Some(bufs.slice(n, bufs.len() - n)))
}

/// Read all of `bufs` at `off`, re-issuing the rest after a short read. The common case (one
/// full read) moves the iovec list into the op and back without copying it.
async fn read_all(io: IoCtx, inner: Arc<Inner>, mut off: u64, bufs: IoBufs) -> Result<()> {
    let (mut part, mut rest) = split_segments(bufs);
    loop {
        let want = part.len();
        let mut op = io.readv(&inner.handle, off, part);
        let res = (&mut op).await?;
        if res < 0 {
            return Err(Error::from_errno(-res, format_args!("{}: read at {off}", inner.path.display())));
        }
        let got = res as usize;
        let bufs = op.into_bufs();
        if got == 0 && want > 0 {
            if inner.opts.growable {
                bufs.zero(0, want);
                if let Some(r) = rest {
                    r.zero(0, r.len());
                }
                return Ok(());
            }
            return Err(Error::new(
                ErrorKind::Io,
                format!("{}: unexpected end of file at {off} (truncated while open?)", inner.path.display()),
            ));
        }
        off += got as u64;
        if got < want {
            part = bufs.slice(got, want - got);
            continue;
        }
        match rest.take() {
            None => return Ok(()),
            Some(r) => (part, rest) = split_segments(r),
        }
    }
}

async fn write_all(io: IoCtx, inner: Arc<Inner>, off: u64, bufs: IoBufs, fua: bool) -> Result<()> {
    let len = bufs.len();
    let (mut part, mut rest) = split_segments(bufs);
    let mut pos = off;
    loop {
        let want = part.len();
        let mut op = io.writev(&inner.handle, pos, part, fua);
        let res = (&mut op).await?;
        if res < 0 {
            return Err(Error::from_errno(-res, format_args!("{}: write at {pos}", inner.path.display())));
        }
        let put = res as usize;
        if put == 0 && want > 0 {
            return Err(Error::new(
                ErrorKind::Io,
                format!("{}: write made no progress at {pos}", inner.path.display()),
            ));
        }
        let bufs = op.into_bufs();
        pos += put as u64;
        if put < want {
            part = bufs.slice(put, want - put);
            continue;
        }
        match rest.take() {
            None => break,
            Some(r) => (part, rest) = split_segments(r),
        }
    }
    if inner.opts.growable {
        inner.size.fetch_max(off + len as u64, Ordering::AcqRel);
    }
    Ok(())
}

async fn fallocate(io: IoCtx, inner: Arc<Inner>, off: u64, len: u64, mode: i32, what: &'static str) -> Result<bool> {
    let res = io.fallocate(&inner.handle, off, len, mode).await?;
    if res == -libc::EOPNOTSUPP || res == -libc::ENOTSUP {
        return Ok(false);
    }
    if res < 0 {
        return Err(Error::from_errno(-res, format_args!("{}: {what} [{off}, +{len})", inner.path.display())));
    }
    Ok(true)
}

/// Write zeros the slow way (when the filesystem has no zero-range), 1 MiB at a time.
async fn write_zero_buffers(io: IoCtx, inner: Arc<Inner>, off: u64, len: u64) -> Result<()> {
    let chunk = len.min(1 << 20) as usize;
    let mut buf = io.pool().shared(chunk);
    buf.bytes_mut().fill(0);
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(chunk as u64) as usize;
        write_all(io.clone(), inner.clone(), off + done, buf.io_range(0, n), false).await?;
        done += n as u64;
    }
    Ok(())
}

/// The common case as a hand-written future: one op that moves every byte. A short transfer
/// (rare: signals, EOF on a growable file) continues in the general loop.
struct FastRw {
    op: Option<Op>,
    inner: Arc<Inner>,
    io: IoCtx,
    off: u64,
    want: usize,
    write: bool,
    fua: bool,
    rest: Option<IoFuture>,
}

impl Future for FastRw {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = &mut *self;
        if let Some(rest) = this.rest.as_mut() {
            return rest.as_mut().poll(cx);
        }
        let Some(op) = this.op.as_mut() else { return Poll::Ready(Ok(())) };
        let res = match Pin::new(&mut *op).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r?,
        };
        let off = this.off;
        if res < 0 {
            let what = if this.write { "write" } else { "read" };
            return Poll::Ready(Err(Error::from_errno(
                -res,
                format_args!("{}: {what} at {off}", this.inner.path.display()),
            )));
        }
        let done = res as usize;
        if done == this.want {
            if this.write && this.inner.opts.growable {
                this.inner.size.fetch_max(off + done as u64, Ordering::AcqRel);
            }
            return Poll::Ready(Ok(()));
        }
        // Short: hand the rest to the general loop.
        let bufs = this.op.take().map(Op::into_bufs).unwrap_or_default();
        let rest_bufs = bufs.slice(done, this.want - done);
        let (io, inner, at) = (this.io.clone(), this.inner.clone(), off + done as u64);
        let mut rest: IoFuture = if this.write {
            Box::pin(write_all(io, inner, at, rest_bufs, this.fua))
        } else if done == 0 && this.inner.opts.growable {
            rest_bufs.zero(0, rest_bufs.len());
            Box::pin(std::future::ready(Ok(())))
        } else {
            Box::pin(read_all(io, inner, at, rest_bufs))
        };
        let r = rest.as_mut().poll(cx);
        this.rest = Some(rest);
        r
    }
}

/// Smallest piece a lone large read is cut into (see [`RawFile::parallel_pieces`]).
const PARALLEL_PIECE: usize = 128 << 10;

/// Most pieces a lone large read is cut into.
const MAX_PARALLEL_PIECES: usize = 4;

impl RawFile {
    /// Into how many pieces to cut a read of `len` bytes. Reads from tmpfs are never tried
    /// inline: each is copied by one of io_uring's worker threads, alone, so a lone large read
    /// keeps one CPU busy while the others idle. When it is all this thread has to do (no other
    /// operation in flight, no other task), pieces of at least [`PARALLEL_PIECE`], one per CPU,
    /// go to as many workers at once. Not for files whose reads the kernel copies inline from
    /// the page cache: there the hop to a worker costs more than the second CPU gives. Both
    /// were measured (docs/design.md, "Devices").
    fn parallel_pieces(&self, io: &IoCtx, len: usize) -> usize {
        if !self.inner.reads_on_workers || len < 2 * PARALLEL_PIECE || io.in_flight() > 0 || io.live_tasks() > 1 {
            return 1;
        }
        // More pieces than io_uring may start workers for would only queue behind each other.
        let workers = match io.config().max_bounded_workers {
            0 => MAX_PARALLEL_PIECES,
            n => n as usize,
        };
        (len / PARALLEL_PIECE).min(cpus()).min(MAX_PARALLEL_PIECES).min(workers).max(1)
    }

    /// Read `bufs` at `off` as `pieces` concurrent reads of about equal, page-aligned size. The
    /// first goes to a worker as any tmpfs read does; the others are marked for workers
    /// (IOSQE_ASYNC), which is what makes io-wq start one more worker for each instead of
    /// queueing them behind the first (marking the first too made the split no faster than one
    /// whole read).
    fn split_read(&self, io: &IoCtx, off: u64, bufs: IoBufs, pieces: usize) -> IoFuture {
        const PAGE: usize = 4096;
        let len = bufs.len();
        let step = (len / pieces).div_ceil(PAGE) * PAGE;
        let mut futs = Vec::with_capacity(pieces);
        let mut at = 0;
        while at < len {
            let n = step.min(len - at);
            let op = io.readv(&self.inner.handle, off + at as u64, bufs.slice(at, n));
            let op = if at == 0 { op } else { op.on_worker() };
            futs.push(self.fast_op(io, op, off + at as u64, n, false, false));
            at += n;
        }
        Box::pin(crate::join::try_join_all(futs))
    }

    fn fast(&self, io: &IoCtx, off: u64, bufs: IoBufs, write: bool, fua: bool) -> IoFuture {
        let want = bufs.len();
        let op =
            if write { io.writev(&self.inner.handle, off, bufs, fua) } else { io.readv(&self.inner.handle, off, bufs) };
        self.fast_op(io, op, off, want, write, fua)
    }

    /// Run `op` (moving `want` bytes at `off`), finishing a short transfer in the general loop.
    fn fast_op(&self, io: &IoCtx, op: Op, off: u64, want: usize, write: bool, fua: bool) -> IoFuture {
        Box::pin(FastRw { op: Some(op), inner: self.inner.clone(), io: io.clone(), off, want, write, fua, rest: None })
    }
}

impl BlockDev for RawFile {
    fn info(&self) -> DevInfo {
        DevInfo { size: self.size(), ..self.inner.info }
    }

    fn read(&self, io: &IoCtx, off: u64, bufs: IoBufs, _tag: IoTag) -> IoFuture {
        if let Err(e) = self.check(off, bufs.len() as u64, false) {
            return crate::ready(Err(e));
        }
        let (io, inner) = (io.clone(), self.inner.clone());
        if self.needs_bounce(&bufs) {
            return Box::pin(async move {
                let mut bounce = io.pool().shared(bufs.len());
                read_all(io, inner, off, bounce.io()).await?;
                bufs.copy_from_slice(0, bounce.bytes());
                Ok(())
            });
        }
        if bufs.segments() <= MAX_SEGMENTS && !bufs.is_empty() {
            let pieces = self.parallel_pieces(&io, bufs.len());
            if pieces > 1 {
                return self.split_read(&io, off, bufs, pieces);
            }
            return self.fast(&io, off, bufs, false, false);
        }
        Box::pin(read_all(io, inner, off, bufs))
    }

    fn write(&self, io: &IoCtx, off: u64, bufs: IoBufs, fua: bool, _tag: IoTag) -> IoFuture {
        if let Err(e) = self.check(off, bufs.len() as u64, true) {
            return crate::ready(Err(e));
        }
        let (io, inner) = (io.clone(), self.inner.clone());
        if self.needs_bounce(&bufs) {
            return Box::pin(async move {
                let mut bounce = io.pool().shared(bufs.len());
                bufs.copy_to_slice(0, bounce.bytes_mut());
                write_all(io, inner, off, bounce.io(), fua).await
            });
        }
        if bufs.segments() <= MAX_SEGMENTS && !bufs.is_empty() {
            return self.fast(&io, off, bufs, true, fua);
        }
        Box::pin(write_all(io, inner, off, bufs, fua))
    }

    fn flush(&self, io: &IoCtx, _tag: IoTag) -> IoFuture {
        if self.inner.opts.read_only {
            return crate::ready(Ok(()));
        }
        let (io, inner) = (io.clone(), self.inner.clone());
        Box::pin(async move {
            let res = io.fdatasync(&inner.handle).await?;
            if res < 0 {
                return Err(Error::from_errno(-res, format_args!("{}: fdatasync", inner.path.display())));
            }
            Ok(())
        })
    }

    fn discard(&self, io: &IoCtx, off: u64, len: u64, _tag: IoTag) -> IoFuture {
        if let Err(e) = self.check(off, len, true) {
            return crate::ready(Err(e));
        }
        let (io, inner) = (io.clone(), self.inner.clone());
        Box::pin(async move {
            // Discard is advisory: a filesystem without hole punching just keeps the data.
            fallocate(io, inner, off, len, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, "discard")
                .await
                .map(|_| ())
        })
    }

    fn write_zeroes(&self, io: &IoCtx, off: u64, len: u64, unmap: bool, _tag: IoTag) -> IoFuture {
        if let Err(e) = self.check(off, len, true) {
            return crate::ready(Err(e));
        }
        let (io, inner) = (io.clone(), self.inner.clone());
        Box::pin(async move {
            let keep = libc::FALLOC_FL_KEEP_SIZE;
            let growable = inner.opts.growable;
            // Punching a hole reads back zeros on files and on block devices (which discard or
            // zero out); ZERO_RANGE keeps the blocks allocated.
            let mode = if unmap { libc::FALLOC_FL_PUNCH_HOLE | keep } else { libc::FALLOC_FL_ZERO_RANGE | keep };
            if fallocate(io.clone(), inner.clone(), off, len, mode, "write-zeroes").await? {
                if growable {
                    // KEEP_SIZE: zeroing past the end reads zeros anyway; nothing to extend.
                }
                return Ok(());
            }
            if unmap
                && fallocate(io.clone(), inner.clone(), off, len, libc::FALLOC_FL_ZERO_RANGE | keep, "write-zeroes")
                    .await?
            {
                return Ok(());
            }
            write_zero_buffers(io, inner, off, len).await
        })
    }

    fn refresh_size(&self) -> Result<u64> {
        let inner = &self.inner;
        let what = inner.path.display().to_string();
        let geo = geometry::probe(inner._file.as_raw_fd(), &what, inner.opts.direct)?;
        let lbs = u64::from(inner.info.logical_block_size.max(1));
        let now = if inner.opts.growable { geo.size } else { geo.size - geo.size % lbs };
        let had = self.size();
        if now < had {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{what}: is now {now} bytes, smaller than the {had} it had when opened: a device in use cannot shrink"),
            ));
        }
        // Only ever up: checks of requests racing with this see the old or the new size.
        Ok(inner.size.fetch_max(now, Ordering::AcqRel).max(now))
    }

    fn resize(&self, _io: &IoCtx, new_size: u64, shrink: bool) -> Result<u64> {
        self.resize_to(new_size, shrink)
    }

    fn describe(&self) -> String {
        format!("raw:{}", self.inner.path.display())
    }
}
