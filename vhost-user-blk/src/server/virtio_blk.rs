//! virtio-blk definitions (virtio 1.2, section 5.2): request types, status codes, feature bits,
//! and the device configuration space the frontend reads with GET_CONFIG.

use blockdev::DevInfo;

/// Bytes in a virtio-blk sector: request offsets are always in these units.
pub const SECTOR_SIZE: u64 = 512;
/// `sector` in the header is in 512-byte units whatever `blk_size` says.
pub const SECTOR_SHIFT: u32 = 9;

/// Length of `struct virtio_blk_outhdr` (type, reserved, sector).
pub const HEADER_LEN: usize = 16;
/// Length of one `struct virtio_blk_discard_write_zeroes` segment.
pub const DISCARD_SEGMENT_LEN: usize = 16;
/// Length of the GET_ID answer: "the device ID string ... up to 20 bytes".
pub const ID_LEN: usize = 20;

/// Request types (`type` in the request header).
pub mod req {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush the volatile write cache.
    pub const FLUSH: u32 = 4;
    /// Read the device ID string.
    pub const GET_ID: u32 = 8;
    /// Discard ranges.
    pub const DISCARD: u32 = 11;
    /// Write zeroes to ranges.
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status byte values.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// Device or driver error.
    pub const IOERR: u8 = 1;
    /// Request not supported.
    pub const UNSUPP: u8 = 2;
}

/// `flags` of a discard / write-zeroes segment: the device may deallocate (write-zeroes only).
pub const SEGMENT_FLAG_UNMAP: u32 = 1;

/// Feature bits offered by the device (bit numbers from the spec).
pub mod feature {
    /// Maximum number of segments in a request is in `seg_max`.
    pub const SEG_MAX: u64 = 1 << 2;
    /// Device is read-only.
    pub const RO: u64 = 1 << 5;
    /// Block size of disk is in `blk_size`.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// Cache flush command support.
    pub const FLUSH: u64 = 1 << 9;
    /// Device exports topology information.
    pub const TOPOLOGY: u64 = 1 << 10;
    /// Device can toggle its cache between writeback and writethrough.
    pub const CONFIG_WCE: u64 = 1 << 11;
    /// Device supports multiqueue.
    pub const MQ: u64 = 1 << 12;
    /// Device supports discard.
    pub const DISCARD: u64 = 1 << 13;
    /// Device supports write zeroes.
    pub const WRITE_ZEROES: u64 = 1 << 14;
    /// Indirect descriptors.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// `used_event` / `avail_event` notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// Virtio 1.0 or later.
    pub const VERSION_1: u64 = 1 << 32;
}

/// Size of the configuration space we describe (up to and including `unused1`).
pub const CONFIG_LEN: usize = 60;
/// Offset of `writeback` in the configuration space.
pub const CONFIG_WRITEBACK_OFFSET: usize = 32;

/// Everything the configuration space and the request checks need to know about one export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Capacity in bytes (a multiple of `block_size`).
    pub size: u64,
    /// Logical block size announced to the guest (`blk_size`), 512 or 4096.
    pub block_size: u32,
    /// Physical block size of the device beneath.
    pub physical_block_size: u32,
    /// Optimal I/O size in bytes (0 if none).
    pub optimal_io_size: u32,
    /// Maximum data segments per request (`seg_max`).
    pub seg_max: u32,
    /// Number of request queues.
    pub num_queues: u16,
    /// Writes are refused.
    pub read_only: bool,
    /// Discard is offered.
    pub discard: bool,
    /// Write-zeroes is offered.
    pub write_zeroes: bool,
}

/// Most sectors one discard or write-zeroes segment may cover (1 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 21;
/// Most segments in one discard or write-zeroes request.
pub const MAX_DISCARD_SEGMENTS: u32 = 32;

impl Geometry {
    /// The geometry of an export of `info`, announced with `block_size`.
    pub fn new(info: &DevInfo, block_size: u32, num_queues: u16, queue_size: u16, read_only: bool) -> Self {
        Geometry {
            size: info.size - info.size % u64::from(block_size),
            block_size,
            physical_block_size: info.physical_block_size.max(block_size),
            optimal_io_size: info.optimal_io_size,
            seg_max: seg_max_for(queue_size),
            num_queues,
            read_only: read_only || info.read_only,
            discard: info.discard && !(read_only || info.read_only),
            write_zeroes: info.write_zeroes && !(read_only || info.read_only),
        }
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.size >> SECTOR_SHIFT
    }

    /// The virtio feature bits this export offers.
    pub fn features(&self) -> u64 {
        let mut f = feature::VERSION_1
            | feature::RING_EVENT_IDX
            | feature::RING_INDIRECT_DESC
            | feature::SEG_MAX
            | feature::BLK_SIZE
            | feature::TOPOLOGY
            | feature::FLUSH
            | feature::CONFIG_WCE
            | feature::MQ;
        if self.read_only {
            f |= feature::RO;
        }
        if self.discard {
            f |= feature::DISCARD;
        }
        if self.write_zeroes {
            f |= feature::WRITE_ZEROES;
        }
        f
    }

    /// `struct virtio_blk_config`, little-endian, with the current `writeback` value.
    pub fn config_space(&self, writeback: bool) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let lbs = self.block_size;
        let put32 = |c: &mut [u8; CONFIG_LEN], off: usize, v: u32| c[off..off + 4].copy_from_slice(&v.to_le_bytes());
        c[0..8].copy_from_slice(&self.capacity_sectors().to_le_bytes());
        // size_max (8): not offered.
        put32(&mut c, 12, self.seg_max);
        // geometry (16..20): not offered.
        put32(&mut c, 20, lbs);
        // topology: physical_block_exp, alignment_offset, min_io_size (in blocks), opt_io_size (in blocks).
        c[24] = (self.physical_block_size / lbs).max(1).trailing_zeros() as u8;
        c[25] = 0;
        c[26..28].copy_from_slice(&1u16.to_le_bytes());
        put32(&mut c, 28, self.optimal_io_size / lbs);
        c[CONFIG_WRITEBACK_OFFSET] = u8::from(writeback);
        c[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        let align_sectors = lbs >> SECTOR_SHIFT;
        if self.discard {
            put32(&mut c, 36, MAX_DISCARD_SECTORS);
            put32(&mut c, 40, MAX_DISCARD_SEGMENTS);
            put32(&mut c, 44, align_sectors);
        }
        if self.write_zeroes {
            put32(&mut c, 48, MAX_DISCARD_SECTORS);
            put32(&mut c, 52, MAX_DISCARD_SEGMENTS);
            c[56] = u8::from(self.discard);
        }
        c
    }
}

/// `seg_max` for a queue of `queue_size` descriptors: two descriptors go to the header and the
/// status; at most 254 data segments, well below the kernel's 1,024-iovec limit even after a
/// layer splits every segment in two or three.
pub fn seg_max_for(queue_size: u16) -> u32 {
    u32::from(queue_size).saturating_sub(2).clamp(1, 254)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> Geometry {
        Geometry::new(&DevInfo::simple(1 << 30), 512, 2, 256, false)
    }

    #[test]
    fn config_space_carries_capacity_and_queues() {
        let c = geometry().config_space(true);
        assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), (1 << 30) / 512);
        assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), 254);
        assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
        assert_eq!(c[CONFIG_WRITEBACK_OFFSET], 1);
        assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 2);
        assert_eq!(u32::from_le_bytes(c[40..44].try_into().unwrap()), MAX_DISCARD_SEGMENTS);
    }

    #[test]
    fn read_only_export_offers_ro_and_no_discard() {
        let g = Geometry::new(&DevInfo::simple(1 << 20), 4096, 1, 128, true);
        let f = g.features();
        assert_ne!(f & feature::RO, 0);
        assert_eq!(f & (feature::DISCARD | feature::WRITE_ZEROES), 0);
        assert_eq!(g.seg_max, 126);
    }
}
