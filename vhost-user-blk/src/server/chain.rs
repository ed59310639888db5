//! Walk one split-virtqueue descriptor chain (virtio 1.2, 2.7.5) written by an untrusted guest,
//! and map its buffers into host memory as `IoBufs` without copying.
//!
//! virtio-queue's own `DescriptorChain` iterator stops silently on a loop, a bad index or a nested
//! indirect table, which would make a broken chain look like a short one; this walker reports
//! each of those as an error instead, so the request is refused rather than misread.

use std::sync::Arc;

use blockdev::{IoBufs, Keepalive};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use zerocopy::byteorder::{LittleEndian as LE, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Guest memory as the backend maps it.
pub type GuestMem = GuestMemoryMmap<()>;

const DESC_LEN: u64 = std::mem::size_of::<VirtqDesc>() as u64;
const F_NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
const F_WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
const F_INDIRECT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;

/// Largest indirect table accepted, in descriptors (QEMU's limit too).
pub const MAX_INDIRECT_DESCS: u32 = 1024;

/// Why a chain cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The head index is not below the queue size.
    #[error("descriptor head {0} is outside the queue")]
    HeadOutOfRange(u16),
    /// A `next` index points outside the table.
    #[error("descriptor {index} names next {next}, outside a table of {size}")]
    NextOutOfRange {
        /// Descriptor holding the bad `next`.
        index: u16,
        /// The `next` value.
        next: u16,
        /// Table size.
        size: u32,
    },
    /// The chain is longer than its table: it loops.
    #[error("descriptor chain loops or is longer than its table of {0}")]
    Loop(u32),
    /// An indirect descriptor inside an indirect table, or after the head.
    #[error("indirect descriptor not allowed here (nested, or not the chain head)")]
    MisplacedIndirect,
    /// Indirect table length not a non-zero multiple of 16 or too large.
    #[error("indirect table of {0} bytes is empty, misaligned or too large")]
    BadIndirectTable(u32),
    /// A device-readable descriptor after a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// A descriptor (or the table) lies outside guest memory or wraps.
    #[error("guest range {addr:#x}+{len:#x} is outside guest memory")]
    BadAddress {
        /// Guest physical address.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
}

/// A chain mapped into host memory: device-readable bytes, then device-writable bytes.
#[derive(Debug)]
pub struct MappedChain {
    /// Head index, for the used ring.
    pub head: u16,
    /// Device-readable buffers, in order.
    pub readable: IoBufs,
    /// Device-writable buffers, in order.
    pub writable: IoBufs,
    /// Number of descriptors in the chain (zero-length ones included).
    pub descriptors: u32,
}

/// `struct virtq_desc` (virtio 1.2, 2.7.5): one split-ring descriptor as it lies in guest
/// memory, little-endian.
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct VirtqDesc {
    addr: U64<LE>,
    len: U32<LE>,
    flags: U16<LE>,
    next: U16<LE>,
}

/// A descriptor, decoded.
#[derive(Clone, Copy)]
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_desc(mem: &GuestMem, table: u64, index: u16) -> Result<RawDesc, ChainError> {
    let at =
        table.checked_add(u64::from(index) * DESC_LEN).ok_or(ChainError::BadAddress { addr: table, len: DESC_LEN })?;
    let mut d = VirtqDesc::default();
    mem.read_slice(d.as_mut_bytes(), GuestAddress(at))
        .map_err(|_| ChainError::BadAddress { addr: at, len: DESC_LEN })?;
    Ok(RawDesc { addr: d.addr.get(), len: d.len.get(), flags: d.flags.get(), next: d.next.get() })
}

/// Append the host mapping of guest range `[addr, addr+len)` to `out`, across region boundaries.
fn map_range(mem: &GuestMem, addr: u64, len: u32, out: &mut IoBufs) -> Result<(), ChainError> {
    if len == 0 {
        return Ok(());
    }
    let bad = ChainError::BadAddress { addr, len: u64::from(len) };
    if addr.checked_add(u64::from(len)).is_none() {
        return Err(bad);
    }
    let mut mapped = 0usize;
    for slice in mem.get_slices(GuestAddress(addr), len as usize) {
        let slice = slice.map_err(|_| bad.clone())?;
        let ptr = slice.ptr_guard_mut().as_ptr();
        // SAFETY: `ptr..ptr+slice.len()` lies inside a guest memory region mapping (vm-memory
        // checked the range against the region). The caller puts the `Arc<GuestMem>` snapshot that
        // owns the mapping in `out`'s keepalive, so the mapping outlives every use of the iovec.
        // Concurrent guest writes are the guest's race; we only copy bytes or hand them to the kernel.
        unsafe { out.push_raw(ptr, slice.len()) };
        mapped += slice.len();
    }
    if mapped != len as usize {
        return Err(bad);
    }
    Ok(())
}

/// Walk the chain starting at `head` in the descriptor table at `table` (a queue of `queue_size`),
/// mapping every buffer. `keep` (the guest memory snapshot `mem` comes from) is attached to both
/// buffer lists. At most `max_descs` descriptors and the last one are mapped; past that the chain
/// is still walked (so a loop is still caught) but only counted.
pub fn map_chain(
    mem: &Arc<GuestMem>,
    keep: &Keepalive,
    table: u64,
    queue_size: u16,
    head: u16,
    max_descs: u32,
) -> Result<MappedChain, ChainError> {
    if head >= queue_size {
        return Err(ChainError::HeadOutOfRange(head));
    }
    let mut out = MappedChain { head, readable: IoBufs::new(), writable: IoBufs::new(), descriptors: 0 };
    out.readable.keep(keep.clone());
    out.writable.keep(keep.clone());

    let mut table = table;
    let mut size = u32::from(queue_size);
    let mut index = head;
    let mut indirect = false;
    let mut seen = 0u32;
    let mut in_writable = false;
    loop {
        seen += 1;
        if seen > size {
            return Err(ChainError::Loop(size));
        }
        let d = read_desc(mem, table, index)?;
        if d.flags & F_INDIRECT != 0 {
            // Only the head of a direct chain may point to an indirect table (QEMU and Linux agree).
            if indirect || seen != 1 {
                return Err(ChainError::MisplacedIndirect);
            }
            let n = d.len / DESC_LEN as u32;
            if d.len == 0 || !d.len.is_multiple_of(DESC_LEN as u32) || n > MAX_INDIRECT_DESCS {
                return Err(ChainError::BadIndirectTable(d.len));
            }
            if !mem.check_range(GuestAddress(d.addr), d.len as usize) {
                return Err(ChainError::BadAddress { addr: d.addr, len: u64::from(d.len) });
            }
            indirect = true;
            table = d.addr;
            size = n;
            index = 0;
            seen = 0;
            continue;
        }
        let writable = d.flags & F_WRITE != 0;
        if !writable && in_writable {
            return Err(ChainError::ReadableAfterWritable);
        }
        in_writable |= writable;
        out.descriptors += 1;
        // The last descriptor is always mapped: it holds the status byte, which even a refused
        // request (too many segments) must find in its place, not in a data buffer.
        if out.descriptors <= max_descs || d.flags & F_NEXT == 0 {
            let dst = if writable { &mut out.writable } else { &mut out.readable };
            map_range(mem, d.addr, d.len, dst)?;
        }
        if d.flags & F_NEXT == 0 {
            return Ok(out);
        }
        if u32::from(d.next) >= size {
            return Err(ChainError::NextOutOfRange { index, next: d.next, size });
        }
        index = d.next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    const TABLE: u64 = 0x1000;

    fn mem() -> Arc<GuestMem> {
        Arc::new(GuestMem::from_ranges(&[(GuestAddress(0), 0x10000), (GuestAddress(0x10000), 0x10000)]).unwrap())
    }

    fn put(mem: &GuestMem, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = VirtqDesc { addr: addr.into(), len: len.into(), flags: flags.into(), next: next.into() };
        mem.write_slice(d.as_bytes(), GuestAddress(table + u64::from(i) * DESC_LEN)).unwrap();
    }

    fn walk(mem: &Arc<GuestMem>, head: u16) -> Result<MappedChain, ChainError> {
        let keep: Keepalive = Rc::new(mem.clone());
        map_chain(mem, &keep, TABLE, 8, head, 64)
    }

    #[test]
    fn simple_chain_maps_readable_then_writable() {
        let m = mem();
        put(&m, TABLE, 0, 0x2000, 16, F_NEXT, 1);
        put(&m, TABLE, 1, 0x3000, 512, F_NEXT | F_WRITE, 2);
        put(&m, TABLE, 2, 0x4000, 1, F_WRITE, 0);
        let c = walk(&m, 0).unwrap();
        assert_eq!((c.readable.len(), c.writable.len(), c.descriptors), (16, 513, 3));
    }

    #[test]
    fn loop_is_refused() {
        let m = mem();
        put(&m, TABLE, 0, 0x2000, 16, F_NEXT, 1);
        put(&m, TABLE, 1, 0x3000, 16, F_NEXT, 0);
        assert_eq!(walk(&m, 0).unwrap_err(), ChainError::Loop(8));
    }

    #[test]
    fn head_and_next_outside_queue_are_refused() {
        let m = mem();
        assert_eq!(walk(&m, 8).unwrap_err(), ChainError::HeadOutOfRange(8));
        put(&m, TABLE, 0, 0x2000, 16, F_NEXT, 9);
        assert!(matches!(walk(&m, 0).unwrap_err(), ChainError::NextOutOfRange { next: 9, .. }));
    }

    #[test]
    fn address_outside_memory_or_wrapping_is_refused() {
        let m = mem();
        put(&m, TABLE, 0, 0x1f000, 0x2000, 0, 0);
        assert!(matches!(walk(&m, 0).unwrap_err(), ChainError::BadAddress { .. }));
        put(&m, TABLE, 0, u64::MAX - 8, 16, 0, 0);
        assert!(matches!(walk(&m, 0).unwrap_err(), ChainError::BadAddress { .. }));
    }

    #[test]
    fn buffer_across_regions_maps_as_two_segments() {
        let m = mem();
        put(&m, TABLE, 0, 0xf000, 0x2000, 0, 0);
        let c = walk(&m, 0).unwrap();
        assert_eq!((c.readable.len(), c.readable.segments()), (0x2000, 2));
    }

    #[test]
    fn nested_indirect_is_refused() {
        let m = mem();
        put(&m, TABLE, 0, 0x5000, 32, F_INDIRECT, 0);
        put(&m, 0x5000, 0, 0x6000, 32, F_INDIRECT, 0);
        assert_eq!(walk(&m, 0).unwrap_err(), ChainError::MisplacedIndirect);
    }

    #[test]
    fn indirect_table_is_followed() {
        let m = mem();
        put(&m, TABLE, 0, 0x5000, 48, F_INDIRECT, 0);
        put(&m, 0x5000, 0, 0x2000, 16, F_NEXT, 1);
        put(&m, 0x5000, 1, 0x3000, 4096, F_NEXT | F_WRITE, 2);
        put(&m, 0x5000, 2, 0x4000, 1, F_WRITE, 0);
        let c = walk(&m, 0).unwrap();
        assert_eq!((c.readable.len(), c.writable.len()), (16, 4097));
    }

    #[test]
    fn chain_longer_than_max_descs_still_maps_its_last_descriptor() {
        let m = mem();
        put(&m, TABLE, 0, 0x2000, 16, F_NEXT, 1);
        for i in 1..7 {
            put(&m, TABLE, i, 0x3000 + u64::from(i) * 0x100, 16, F_NEXT | F_WRITE, i + 1);
        }
        put(&m, TABLE, 7, 0x4000, 1, F_WRITE, 0);
        let keep: Keepalive = Rc::new(m.clone());
        let c = map_chain(&m, &keep, TABLE, 8, 0, 3).unwrap();
        // Header, two data buffers, then the status descriptor; the rest only counted.
        assert_eq!((c.descriptors, c.readable.len(), c.writable.len()), (8, 16, 33));
    }

    #[test]
    fn readable_after_writable_is_refused() {
        let m = mem();
        put(&m, TABLE, 0, 0x2000, 16, F_NEXT | F_WRITE, 1);
        put(&m, TABLE, 1, 0x3000, 16, 0, 0);
        assert_eq!(walk(&m, 0).unwrap_err(), ChainError::ReadableAfterWritable);
    }
}
