//! Buffers for I/O: `IoBufs` (iovecs that point straight into guest or test memory, zero-copy)
//! and `DmaBuf` (an owned, aligned buffer for bounces, metadata and tests).
//!
//! The rule every device relies on: the memory an `IoBufs` points to stays valid for as long as
//! the `IoBufs` (or a slice or clone of it) is alive. Safe constructors guarantee it by holding
//! the owner (a `SharedBuf`, a guest memory snapshot) in the keepalive list; the raw constructor
//! makes the caller promise it.

use std::alloc::{self, Layout};
use std::any::Any;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::{Arc, Mutex, Weak};

use smallvec::SmallVec;
use vm_memory::VolatileSlice;

/// Something that keeps the memory behind an `IoBufs` alive (a buffer, a guest memory map).
pub type Keepalive = Rc<dyn Any>;

/// A vectored buffer: a list of iovecs plus what keeps their memory alive.
#[derive(Clone, Default)]
pub struct IoBufs {
    iovs: SmallVec<[libc::iovec; 4]>,
    keep: SmallVec<[Keepalive; 1]>,
    len: usize,
}

impl std::fmt::Debug for IoBufs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBufs").field("segments", &self.iovs.len()).field("len", &self.len).finish()
    }
}

impl IoBufs {
    /// An empty list.
    pub fn new() -> Self {
        IoBufs::default()
    }

    /// Build from raw iovecs.
    ///
    /// # Safety
    ///
    /// Every iovec must describe memory that is valid for reads and writes for as long as the
    /// returned `IoBufs` or anything derived from it is alive; `keep` may hold what guarantees that.
    /// The memory may be written concurrently by a guest (that is the guest's race, not UB for us:
    /// we only hand the addresses to the kernel or copy bytes).
    pub unsafe fn from_raw(iovs: &[libc::iovec], keep: Option<Keepalive>) -> Self {
        let len = iovs.iter().map(|v| v.iov_len).sum();
        IoBufs { iovs: iovs.iter().copied().collect(), keep: keep.into_iter().collect(), len }
    }

    /// Append one raw segment.
    ///
    /// # Safety
    ///
    /// As for [`IoBufs::from_raw`]: `ptr..ptr+len` stays valid while this `IoBufs` lives.
    pub unsafe fn push_raw(&mut self, ptr: *mut u8, len: usize) {
        if len == 0 {
            return;
        }
        self.iovs.push(libc::iovec { iov_base: ptr.cast(), iov_len: len });
        self.len += len;
    }

    /// Add an owner that keeps segments alive.
    pub fn keep(&mut self, owner: Keepalive) {
        self.keep.push(owner);
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the list holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The iovecs, for handing to the kernel.
    pub fn iovecs(&self) -> &[libc::iovec] {
        &self.iovs
    }

    /// Number of segments.
    pub fn segments(&self) -> usize {
        self.iovs.len()
    }

    /// True when every segment's address and length are multiples of `align`.
    pub fn is_aligned(&self, align: usize) -> bool {
        let mask = align.max(1) - 1;
        self.iovs.iter().all(|v| (v.iov_base as usize) & mask == 0 && v.iov_len & mask == 0)
    }

    /// The sub-range `[off, off+len)` as a new list sharing the same memory.
    ///
    /// Panics if the range is outside the list (a caller bug, never input-driven).
    pub fn slice(&self, off: usize, len: usize) -> IoBufs {
        assert!(off.checked_add(len).is_some_and(|end| end <= self.len), "IoBufs::slice out of range");
        let mut out = IoBufs { iovs: SmallVec::new(), keep: self.keep.clone(), len };
        let mut skip = off;
        let mut want = len;
        for v in &self.iovs {
            if want == 0 {
                break;
            }
            if skip >= v.iov_len {
                skip -= v.iov_len;
                continue;
            }
            let take = (v.iov_len - skip).min(want);
            // Pointer arithmetic inside one segment; `skip < iov_len` keeps it in bounds.
            let base = (v.iov_base as *mut u8).wrapping_add(skip);
            out.iovs.push(libc::iovec { iov_base: base.cast(), iov_len: take });
            want -= take;
            skip = 0;
        }
        out
    }

    /// Append all of `other`'s segments (and owners) after ours.
    pub fn append(&mut self, other: IoBufs) {
        self.len += other.len;
        self.iovs.extend(other.iovs);
        self.keep.extend(other.keep);
    }

    /// Copy bytes out of the buffers, starting at `off`, into `dst`.
    ///
    /// The buffers may be guest memory that the guest changes at the same time: every copy in
    /// and out goes through vm-memory's volatile accessors (docs/sandbox.md, "Guest memory").
    pub fn copy_to_slice(&self, off: usize, dst: &mut [u8]) {
        let mut done = 0;
        self.for_each_segment(off, dst.len(), |ptr, n| {
            // SAFETY: the segment is `n` bytes of valid memory (IoBufs invariant) that may change
            // under us, which a VolatileSlice allows.
            let seg = unsafe { VolatileSlice::new(ptr, n) };
            seg.copy_to(&mut dst[done..done + n]);
            done += n;
        });
    }

    /// Copy `src` into the buffers, starting at `off` (volatile, as [`IoBufs::copy_to_slice`]).
    pub fn copy_from_slice(&self, off: usize, src: &[u8]) {
        let mut done = 0;
        self.for_each_segment(off, src.len(), |ptr, n| {
            // SAFETY: as in copy_to_slice; the segment is writable memory by the IoBufs invariant.
            let seg = unsafe { VolatileSlice::new(ptr, n) };
            seg.copy_from(&src[done..done + n]);
            done += n;
        });
    }

    /// Fill `[off, off+len)` with zeros (volatile, as [`IoBufs::copy_to_slice`]).
    pub fn zero(&self, off: usize, len: usize) {
        static ZEROS: [u8; 4096] = [0; 4096];
        self.for_each_segment(off, len, |ptr, n| {
            // SAFETY: the segment is valid, writable memory by the IoBufs invariant.
            let seg = unsafe { VolatileSlice::new(ptr, n) };
            let mut at = 0;
            while at < n {
                let k = (n - at).min(ZEROS.len());
                // In range: `at + k <= n`, the slice's length.
                if let Ok(part) = seg.subslice(at, k) {
                    part.copy_from(&ZEROS[..k]);
                }
                at += k;
            }
        });
    }

    /// Copy everything into a new `Vec` (tests and slow paths).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len];
        self.copy_to_slice(0, &mut v);
        v
    }

    fn for_each_segment(&self, off: usize, len: usize, mut f: impl FnMut(*mut u8, usize)) {
        assert!(off.checked_add(len).is_some_and(|end| end <= self.len), "IoBufs range out of range");
        let mut skip = off;
        let mut want = len;
        for v in &self.iovs {
            if want == 0 {
                break;
            }
            if skip >= v.iov_len {
                skip -= v.iov_len;
                continue;
            }
            let n = (v.iov_len - skip).min(want);
            f((v.iov_base as *mut u8).wrapping_add(skip), n);
            want -= n;
            skip = 0;
        }
    }
}

/// An owned heap buffer with a chosen alignment (4096 by default), zero-filled on creation.
pub struct DmaBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
    home: Option<Weak<PoolShelves>>,
}

// SAFETY: DmaBuf owns its allocation exclusively, like a Box<[u8]>; moving it between threads is fine.
unsafe impl Send for DmaBuf {}
// SAFETY: shared references only allow reads through `as_slice`, like &[u8].
unsafe impl Sync for DmaBuf {}

impl DmaBuf {
    /// Default alignment: enough for O_DIRECT on any device here.
    pub const ALIGN: usize = 4096;

    /// A zeroed buffer of `len` bytes aligned to 4096.
    pub fn new(len: usize) -> Self {
        Self::with_align(len, Self::ALIGN)
    }

    /// A zeroed buffer of `len` bytes aligned to `align` (a power of two).
    pub fn with_align(len: usize, align: usize) -> Self {
        let layout = Layout::from_size_align(len.max(1), align.max(1)).expect("DmaBuf layout");
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else { alloc::handle_alloc_error(layout) };
        DmaBuf { ptr, len, layout, home: None }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length buffer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is a live allocation of at least `len` initialised (zeroed) bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Raw pointer to the first byte.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        if let Some(home) = self.home.take().and_then(|w| w.upgrade()) {
            if home.put_back(self.ptr, self.layout) {
                return;
            }
        }
        // SAFETY: allocated in with_align (or by the pool) with exactly this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// Free aligned allocations kept for reuse, by power-of-two size class (4 KiB to 4 MiB).
pub struct PoolShelves {
    shelves: Mutex<Vec<Vec<SendPtr>>>,
    per_class: usize,
}

struct SendPtr(NonNull<u8>);
// SAFETY: a free allocation owned by the pool; nothing else refers to it.
unsafe impl Send for SendPtr {}

const POOL_MIN_SHIFT: u32 = 12;
const POOL_CLASSES: usize = 11;

impl PoolShelves {
    fn class_of(size: usize) -> Option<usize> {
        let class = size.max(1 << POOL_MIN_SHIFT).next_power_of_two().trailing_zeros() - POOL_MIN_SHIFT;
        ((class as usize) < POOL_CLASSES).then_some(class as usize)
    }

    fn put_back(&self, ptr: NonNull<u8>, layout: Layout) -> bool {
        let Some(class) = Self::class_of(layout.size()) else { return false };
        if layout.size() != 1 << (class as u32 + POOL_MIN_SHIFT) || layout.align() != DmaBuf::ALIGN {
            return false;
        }
        let mut shelves = self.shelves.lock().unwrap_or_else(|p| p.into_inner());
        if shelves[class].len() >= self.per_class {
            return false;
        }
        shelves[class].push(SendPtr(ptr));
        true
    }
}

/// A per-thread pool of 4096-aligned buffers (bounces for O_DIRECT, stripe and metadata buffers).
#[derive(Clone)]
pub struct BufPool {
    shelves: Arc<PoolShelves>,
}

impl BufPool {
    /// A pool keeping at most `per_class` free buffers of each size class.
    pub fn new(per_class: usize) -> Self {
        BufPool {
            shelves: Arc::new(PoolShelves {
                shelves: Mutex::new((0..POOL_CLASSES).map(|_| Vec::new()).collect()),
                per_class,
            }),
        }
    }

    /// A buffer of `len` bytes, 4096-aligned. Its contents are unspecified (old data from an
    /// earlier use, or zeros): callers overwrite it before it leaves the process.
    pub fn get(&self, len: usize) -> DmaBuf {
        let Some(class) = PoolShelves::class_of(len) else { return DmaBuf::new(len) };
        let size = 1usize << (class as u32 + POOL_MIN_SHIFT);
        let layout = Layout::from_size_align(size, DmaBuf::ALIGN).expect("pool layout");
        let reused = self.shelves.shelves.lock().unwrap_or_else(|p| p.into_inner())[class].pop();
        let ptr = match reused {
            Some(p) => p.0,
            None => {
                // SAFETY: layout has a non-zero size.
                let raw = unsafe { alloc::alloc_zeroed(layout) };
                match NonNull::new(raw) {
                    Some(p) => p,
                    None => alloc::handle_alloc_error(layout),
                }
            }
        };
        DmaBuf { ptr, len, layout, home: Some(Arc::downgrade(&self.shelves)) }
    }

    /// A pooled buffer wrapped for lending to I/O.
    pub fn shared(&self, len: usize) -> SharedBuf {
        SharedBuf::from_dma(self.get(len))
    }
}

impl Drop for PoolShelves {
    fn drop(&mut self) {
        let shelves = std::mem::take(&mut *self.shelves.lock().unwrap_or_else(|p| p.into_inner()));
        for (class, shelf) in shelves.into_iter().enumerate() {
            let size = 1usize << (class as u32 + POOL_MIN_SHIFT);
            let layout = Layout::from_size_align(size, DmaBuf::ALIGN).expect("pool layout");
            for p in shelf {
                // SAFETY: every pooled pointer was allocated with this class's layout.
                unsafe { alloc::dealloc(p.0.as_ptr(), layout) };
            }
        }
    }
}

/// A `DmaBuf` that can be lent to I/O as `IoBufs` and read back once the I/O is done.
///
/// Lending (`io`, `io_range`) needs `&mut self`, and reading the bytes checks that no `IoBufs`
/// still refers to the buffer, so the kernel never writes memory we are reading.
pub struct SharedBuf {
    buf: Rc<DmaBuf>,
}

impl SharedBuf {
    /// A zeroed, 4096-aligned buffer of `len` bytes.
    pub fn new(len: usize) -> Self {
        SharedBuf { buf: Rc::new(DmaBuf::new(len)) }
    }

    /// Wrap an existing buffer.
    pub fn from_dma(buf: DmaBuf) -> Self {
        SharedBuf { buf: Rc::new(buf) }
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> Self {
        let mut b = DmaBuf::new(data.len());
        b.as_mut_slice().copy_from_slice(data);
        Self::from_dma(b)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True for a zero-length buffer.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Lend the whole buffer to an I/O.
    pub fn io(&mut self) -> IoBufs {
        let len = self.len();
        self.io_range(0, len)
    }

    /// Lend `[off, off+len)` to an I/O.
    pub fn io_range(&mut self, off: usize, len: usize) -> IoBufs {
        assert!(off.checked_add(len).is_some_and(|e| e <= self.len()), "SharedBuf::io_range out of range");
        let base = self.buf.ptr.as_ptr().wrapping_add(off);
        let keep: Keepalive = self.buf.clone();
        let mut bufs = IoBufs::new();
        // SAFETY: the segment lies inside the allocation, which `keep` keeps alive.
        unsafe { bufs.push_raw(base, len) };
        bufs.keep(keep);
        bufs
    }

    /// The buffer itself (to keep or send to another thread), unless some `IoBufs` still
    /// refers to it: then `self` comes back.
    pub fn try_into_dma(self) -> std::result::Result<DmaBuf, SharedBuf> {
        Rc::try_unwrap(self.buf).map_err(|buf| SharedBuf { buf })
    }

    /// True while some `IoBufs` still refers to this buffer.
    pub fn in_flight(&self) -> bool {
        Rc::strong_count(&self.buf) > 1
    }

    /// The bytes. Panics if an I/O still holds the buffer (a caller bug).
    pub fn bytes(&self) -> &[u8] {
        assert!(!self.in_flight(), "SharedBuf read while an I/O still holds it");
        self.buf.as_slice()
    }

    /// The bytes, mutably. Panics if an I/O still holds the buffer (a caller bug).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        Rc::get_mut(&mut self.buf).expect("SharedBuf written while an I/O still holds it").as_mut_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_crosses_segments() {
        let mut a = SharedBuf::from_slice(&[1, 2, 3, 4]);
        let mut b = SharedBuf::from_slice(&[5, 6, 7, 8]);
        let mut bufs = a.io();
        bufs.append(b.io());
        let s = bufs.slice(2, 4);
        assert_eq!(s.segments(), 2);
        assert_eq!(s.to_vec(), vec![3, 4, 5, 6]);
        s.zero(1, 2);
        drop((s, bufs));
        assert_eq!(a.bytes(), &[1, 2, 3, 0]);
        assert_eq!(b.bytes(), &[0, 6, 7, 8]);
    }

    #[test]
    fn try_into_dma_only_once_no_io_holds_the_buffer() {
        let mut a = SharedBuf::from_slice(&[1, 2, 3]);
        let lent = a.io();
        let Err(a) = a.try_into_dma() else { panic!("taken while an IoBufs still holds it") };
        drop(lent);
        let Ok(d) = a.try_into_dma() else { panic!("refused with no IoBufs left") };
        assert_eq!(d.as_slice(), &[1, 2, 3]);
    }

    #[test]
    fn copy_from_slice_fills_segments() {
        let mut a = SharedBuf::new(3);
        let mut b = SharedBuf::new(3);
        let mut bufs = a.io();
        bufs.append(b.io());
        bufs.copy_from_slice(1, &[9, 9, 9, 9]);
        drop(bufs);
        assert_eq!(a.bytes(), &[0, 9, 9]);
        assert_eq!(b.bytes(), &[9, 9, 0]);
    }

    #[test]
    fn alignment_check() {
        let mut a = SharedBuf::new(8192);
        assert!(a.io().is_aligned(4096));
        assert!(!a.io_range(1, 4096).is_aligned(512));
    }

    #[test]
    fn pool_reuses_buffers() {
        let pool = BufPool::new(4);
        let mut b = pool.get(5000);
        let p = b.as_mut_ptr();
        assert_eq!(b.len(), 5000);
        assert_eq!(p as usize % 4096, 0);
        drop(b);
        let mut c = pool.get(8192);
        assert_eq!(c.as_mut_ptr(), p);
    }

    #[test]
    #[should_panic(expected = "still holds")]
    fn reading_lent_buffer_panics() {
        let mut a = SharedBuf::new(8);
        let _lent = a.io();
        let _ = a.bytes();
    }
}
