//! The in-flight region's layout (vhost-user specification, "Inflight I/O tracking", split
//! virtqueues) and the daemon's access to it: a memfd shared with the frontend, which keeps it
//! across daemon restarts, so a new daemon knows which requests the old one had taken from the
//! ring and not yet completed.
//!
//! Per queue, at `queue * queue_region_size(queue_size)`: a [`QueueRegionHeader`], then one
//! [`DescState`] per descriptor. The frontend may write anything there at any time: every field
//! is read and written with atomic accesses on the shared mapping (never a reference to shared
//! memory), and nothing read from it is trusted without a bound.

use std::fs::File;
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};

use zerocopy::little_endian::{U16, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The region version this daemon writes and understands.
pub const VERSION: u16 = 1;
/// Each queue's part of the region starts on this boundary (as libvhost-user and DPDK lay it out).
const ALIGN: usize = 64;
/// Largest queue size the region can describe (the split ring's limit).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// The header of one queue's part of the region.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct QueueRegionHeader {
    /// Feature flags of the region (none defined: 0).
    pub features: U64,
    /// The region's version ([`VERSION`]; 0 in a fresh region).
    pub version: U16,
    /// Number of [`DescState`] entries (the queue size).
    pub desc_num: U16,
    /// Head of the list of the last batch put in the used ring.
    pub last_batch_head: U16,
    /// The used index as of the last completed batch.
    pub used_idx: U16,
}

/// The state of one descriptor (meaningful for chain heads).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DescState {
    /// 1 while the request headed here is in flight.
    pub inflight: u8,
    /// Unused.
    pub padding: [u8; 5],
    /// Next entry of the last batch's list.
    pub next: U16,
    /// When the request was taken from the ring (orders resubmission).
    pub counter: U64,
}

/// Bytes of one queue's part of the region for a ring of `queue_size` descriptors.
pub fn queue_region_size(queue_size: u16) -> usize {
    (size_of::<QueueRegionHeader>() + size_of::<DescState>() * usize::from(queue_size)).div_ceil(ALIGN) * ALIGN
}

/// A mapped region (MAP_SHARED, read-write), unmapped when dropped.
#[derive(Debug)]
pub struct Region {
    base: *mut u8,
    len: usize,
    /// Queues described.
    pub num_queues: u16,
    /// Descriptors per queue.
    pub queue_size: u16,
}

// SAFETY: the mapping is plain shared memory, owned by this value until drop; every access goes
// through atomic operations, so sharing it between threads is sound.
unsafe impl Send for Region {}
// SAFETY: as above: all accesses are atomic.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly the mapping made in `Region::map`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// A fresh, zeroed and sealed memfd of `size` bytes for GET_INFLIGHT_FD.
pub fn create_memfd(size: usize) -> io::Result<File> {
    // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"strata-inflight".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.set_len(size as u64)?;
    let seals = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on our own memfd; only adds seals.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

impl Region {
    /// Map `size` bytes of `file` at `offset` for `num_queues` queues of `queue_size`; refused
    /// when that is too small for them or lies beyond the file.
    pub fn map(file: &File, offset: u64, size: u64, num_queues: u16, queue_size: u16) -> Result<Region, String> {
        if num_queues == 0 || queue_size == 0 || queue_size > MAX_QUEUE_SIZE {
            return Err(format!("{num_queues} queues of {queue_size} descriptors: out of range"));
        }
        let need = usize::from(num_queues) * queue_region_size(queue_size);
        if size < need as u64 {
            return Err(format!(
                "{size} bytes is too small for {num_queues} queues of {queue_size} descriptors ({need} bytes)"
            ));
        }
        // SAFETY: sysconf takes no pointers.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        if !offset.is_multiple_of(page) {
            return Err(format!("offset {offset} is not page-aligned"));
        }
        let file_len = file.metadata().map_err(|e| format!("cannot stat the region's fd: {e}"))?.len();
        if offset.checked_add(need as u64).is_none_or(|end| end > file_len) {
            return Err(format!("the fd holds {file_len} bytes, fewer than offset {offset} + {need}"));
        }
        // SAFETY: a new shared mapping of `need` bytes of `file` from a page-aligned offset
        // within it; the result is checked, and owned by the returned `Region`.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                need,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(format!("cannot map the region: {}", io::Error::last_os_error()));
        }
        Ok(Region { base: base.cast(), len: need, num_queues, queue_size })
    }

    /// Byte offset of `field_offset` within queue `q`'s header, checked against the mapping.
    fn at(&self, offset: usize, width: usize) -> *mut u8 {
        assert!(offset + width <= self.len && offset.is_multiple_of(width), "in-flight region access out of bounds");
        // SAFETY: checked just above: the access lies inside the mapping.
        unsafe { self.base.add(offset) }
    }

    fn u16_at(&self, offset: usize) -> &AtomicU16 {
        // SAFETY: `at` checked bounds and 2-byte alignment (the mapping is page-aligned); the
        // memory lives as long as `self` and is only ever accessed atomically by us.
        unsafe { AtomicU16::from_ptr(self.at(offset, 2).cast()) }
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: as `u16_at`, with 8-byte alignment checked.
        unsafe { AtomicU64::from_ptr(self.at(offset, 8).cast()) }
    }

    fn u8_at(&self, offset: usize) -> &AtomicU8 {
        // SAFETY: as `u16_at`.
        unsafe { AtomicU8::from_ptr(self.at(offset, 1)) }
    }

    fn queue_base(&self, q: u16) -> usize {
        usize::from(q) * queue_region_size(self.queue_size)
    }

    fn desc_base(&self, q: u16, i: u16) -> usize {
        self.queue_base(q) + size_of::<QueueRegionHeader>() + usize::from(i) * size_of::<DescState>()
    }

    /// Queue `q`'s version field.
    pub fn version(&self, q: u16) -> &AtomicU16 {
        self.u16_at(self.queue_base(q) + offset_of!(QueueRegionHeader, version))
    }

    /// Queue `q`'s desc_num field.
    pub fn desc_num(&self, q: u16) -> &AtomicU16 {
        self.u16_at(self.queue_base(q) + offset_of!(QueueRegionHeader, desc_num))
    }

    /// Queue `q`'s last_batch_head field.
    pub fn last_batch_head(&self, q: u16) -> &AtomicU16 {
        self.u16_at(self.queue_base(q) + offset_of!(QueueRegionHeader, last_batch_head))
    }

    /// Queue `q`'s used_idx field.
    pub fn used_idx(&self, q: u16) -> &AtomicU16 {
        self.u16_at(self.queue_base(q) + offset_of!(QueueRegionHeader, used_idx))
    }

    /// The inflight flag of descriptor `i` of queue `q` (`i` below `queue_size`).
    pub fn inflight(&self, q: u16, i: u16) -> &AtomicU8 {
        self.u8_at(self.desc_base(q, i) + offset_of!(DescState, inflight))
    }

    /// The next field of descriptor `i` of queue `q`.
    pub fn next(&self, q: u16, i: u16) -> &AtomicU16 {
        self.u16_at(self.desc_base(q, i) + offset_of!(DescState, next))
    }

    /// The counter of descriptor `i` of queue `q`.
    pub fn counter(&self, q: u16, i: u16) -> &AtomicU64 {
        self.u64_at(self.desc_base(q, i) + offset_of!(DescState, counter))
    }
}

/// What a queue's region says about requests of the previous daemon, once the last batch is
/// fixed up (see [`recover`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Recovered {
    /// Heads still in flight, oldest first (by counter).
    pub resubmit: Vec<u16>,
    /// The counter the next request taken from the ring gets.
    pub next_counter: u64,
    /// The avail index the previous daemon had reached: the used index plus the requests in
    /// flight.
    pub next_avail: u16,
}

/// Bring queue `q`'s region up to date with the ring and list what is still in flight
/// (specification, "When reconnecting"): if its used_idx lags the ring's used index, the last
/// batch reached the used ring but its flags were not all cleared: clear the flags of its
/// `ring_used - used_idx` entries, walking the list from last_batch_head; then collect every
/// head marked in flight. `ring_size` is the ring's size (at most the region's), `ring_avail`
/// and `ring_used` the ring's indices. A fresh region (version 0) is initialised. Garbage is
/// reported as an error (the caller logs it and serves the queue untracked from the frontend's
/// index), never followed out of bounds.
pub fn recover(r: &Region, q: u16, ring_size: u16, ring_avail: u16, ring_used: u16) -> Result<Recovered, String> {
    let size = r.queue_size;
    if ring_size > size {
        return Err(format!("the ring has {ring_size} descriptors, the region tracks {size}"));
    }
    match r.version(q).load(Ordering::Acquire) {
        0 => {
            for i in 0..size {
                r.inflight(q, i).store(0, Ordering::Relaxed);
            }
            r.desc_num(q).store(size, Ordering::Relaxed);
            r.used_idx(q).store(ring_used, Ordering::Relaxed);
            r.last_batch_head(q).store(0, Ordering::Relaxed);
            r.version(q).store(VERSION, Ordering::Release);
            return Ok(Recovered { resubmit: Vec::new(), next_counter: 0, next_avail: ring_used });
        }
        VERSION => {}
        v => return Err(format!("version {v}, expected {VERSION}")),
    }
    let desc_num = r.desc_num(q).load(Ordering::Acquire);
    if desc_num != size {
        return Err(format!("desc_num {desc_num}, expected {size}"));
    }
    let used_idx = r.used_idx(q).load(Ordering::Acquire);
    let batch = ring_used.wrapping_sub(used_idx);
    if batch != 0 {
        if batch > ring_size {
            return Err(format!("used_idx {used_idx} is {batch} behind the ring's used index {ring_used}"));
        }
        let mut seen = vec![false; usize::from(size)];
        let mut i = r.last_batch_head(q).load(Ordering::Acquire);
        for _ in 0..batch {
            if i >= ring_size || std::mem::replace(&mut seen[usize::from(i)], true) {
                return Err(format!("the last batch's list leaves the ring or loops at entry {i}"));
            }
            r.inflight(q, i).store(0, Ordering::Release);
            i = r.next(q, i).load(Ordering::Acquire);
        }
        r.used_idx(q).store(ring_used, Ordering::Release);
    }
    let mut inflight = Vec::new();
    for i in 0..size {
        match r.inflight(q, i).load(Ordering::Acquire) {
            0 => {}
            1 if i < ring_size => inflight.push((r.counter(q, i).load(Ordering::Acquire), i)),
            f => return Err(format!("descriptor {i}: in-flight flag {f} (ring of {ring_size})")),
        }
    }
    let made_available = ring_avail.wrapping_sub(ring_used);
    if inflight.len() > usize::from(made_available.min(ring_size)) {
        return Err(format!(
            "{} descriptors marked in flight, but only {made_available} requests were made available and not used",
            inflight.len()
        ));
    }
    inflight.sort_unstable();
    let next_counter = inflight.last().map_or(0, |&(c, _)| c.saturating_add(1));
    let next_avail = ring_used.wrapping_add(inflight.len() as u16);
    Ok(Recovered { resubmit: inflight.into_iter().map(|(_, i)| i).collect(), next_counter, next_avail })
}

/// Forget every state of queue `q` (garbage found): nothing in flight, in step with the ring.
pub fn reset_queue(r: &Region, q: u16, ring_used: u16) {
    for i in 0..r.queue_size {
        r.inflight(q, i).store(0, Ordering::Relaxed);
    }
    r.desc_num(q).store(r.queue_size, Ordering::Relaxed);
    r.used_idx(q).store(ring_used, Ordering::Relaxed);
    r.version(q).store(VERSION, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_specification() {
        assert_eq!(size_of::<QueueRegionHeader>(), 16);
        assert_eq!(size_of::<DescState>(), 16);
        assert_eq!(offset_of!(QueueRegionHeader, version), 8);
        assert_eq!(offset_of!(QueueRegionHeader, desc_num), 10);
        assert_eq!(offset_of!(QueueRegionHeader, last_batch_head), 12);
        assert_eq!(offset_of!(QueueRegionHeader, used_idx), 14);
        assert_eq!(offset_of!(DescState, next), 6);
        assert_eq!(offset_of!(DescState, counter), 8);
        assert_eq!(queue_region_size(128), 16 + 128 * 16 + 48);
        assert_eq!(queue_region_size(1), 64);
    }

    fn region(queues: u16, size: u16) -> (File, Region) {
        let len = usize::from(queues) * queue_region_size(size);
        let f = create_memfd(len).unwrap();
        let r = Region::map(&f, 0, len as u64, queues, size).unwrap();
        (f, r)
    }

    #[test]
    fn too_small_or_misplaced_regions_are_refused() {
        let f = create_memfd(4096).unwrap();
        assert!(Region::map(&f, 0, 4096, 2, 64).is_ok());
        assert!(Region::map(&f, 0, 4096, 2, 256).unwrap_err().contains("too small"));
        assert!(Region::map(&f, 0, 1 << 20, 4, 256).unwrap_err().contains("fewer than"));
        assert!(Region::map(&f, 100, 4096, 1, 8).unwrap_err().contains("page-aligned"));
        assert!(Region::map(&f, 0, 4096, 0, 8).is_err());
    }

    #[test]
    fn recovery_fixes_the_last_batch_and_orders_by_counter() {
        let (_f, r) = region(1, 8);
        assert_eq!(recover(&r, 0, 8, 0, 0).unwrap().resubmit, Vec::<u16>::new());
        // Heads 3, 5, 1 taken in that order; 6 and 2 completed in one batch whose flags were
        // not cleared before the daemon died (used index 2 in the ring, 0 in the region).
        for (c, h) in [(10u64, 3u16), (11, 5), (12, 1), (13, 6), (14, 2)] {
            r.counter(0, h).store(c, Ordering::Relaxed);
            r.inflight(0, h).store(1, Ordering::Relaxed);
        }
        r.last_batch_head(0).store(6, Ordering::Relaxed);
        r.next(0, 6).store(2, Ordering::Relaxed);
        let got = recover(&r, 0, 8, 5, 2).unwrap();
        assert_eq!(got, Recovered { resubmit: vec![3, 5, 1], next_counter: 13, next_avail: 5 });
        assert_eq!(r.used_idx(0).load(Ordering::Relaxed), 2);
    }

    #[test]
    fn garbage_is_reported_not_followed() {
        let (_f, r) = region(1, 8);
        recover(&r, 0, 8, 0, 0).unwrap();
        // A loop in the last batch's list.
        r.last_batch_head(0).store(1, Ordering::Relaxed);
        r.next(0, 1).store(1, Ordering::Relaxed);
        assert!(recover(&r, 0, 8, 2, 2).unwrap_err().contains("loops"));
        reset_queue(&r, 0, 2);
        // More in flight than was made available.
        for h in 0..4 {
            r.inflight(0, h).store(1, Ordering::Relaxed);
        }
        assert!(recover(&r, 0, 8, 4, 2).unwrap_err().contains("made available"));
        reset_queue(&r, 0, 2);
        r.inflight(0, 7).store(9, Ordering::Relaxed);
        assert!(recover(&r, 0, 8, 4, 2).unwrap_err().contains("flag 9"));
        reset_queue(&r, 0, 2);
        r.version(0).store(7, Ordering::Relaxed);
        assert!(recover(&r, 0, 8, 4, 2).unwrap_err().contains("version 7"));
        reset_queue(&r, 0, 2);
        r.desc_num(0).store(300, Ordering::Relaxed);
        assert!(recover(&r, 0, 8, 4, 2).unwrap_err().contains("desc_num"));
        // A ring larger than the region tracks.
        assert!(recover(&r, 0, 16, 0, 0).is_err());
        // Counters at the end of their range do not overflow.
        reset_queue(&r, 0, 2);
        r.inflight(0, 4).store(1, Ordering::Relaxed);
        r.counter(0, 4).store(u64::MAX, Ordering::Relaxed);
        assert_eq!(recover(&r, 0, 8, 4, 2).unwrap().next_counter, u64::MAX);
    }
}
