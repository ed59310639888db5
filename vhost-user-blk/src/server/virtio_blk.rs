//! virtio-blk definitions (virtio 1.2, section 5.2): request types, status codes, feature bits,
//! and the device configuration space the frontend reads with GET_CONFIG.

use std::mem::size_of;

use blockdev::DevInfo;
// Every virtio structure since 1.0 is little-endian.
use zerocopy::byteorder::{LittleEndian as LE, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes in a virtio-blk sector: request offsets are always in these units.
pub const SECTOR_SIZE: u64 = 512;
/// `sector` in the header is in 512-byte units whatever `blk_size` says.
pub const SECTOR_SHIFT: u32 = 9;

/// Length of the GET_ID answer: "the device ID string ... up to 20 bytes".
pub const ID_LEN: usize = 20;

/// `struct virtio_blk_outhdr`: the request header, the first 16 bytes a driver makes readable.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RequestHeader {
    /// Request type, one of [`req`].
    pub kind: U32<LE>,
    /// Reserved (was the I/O priority).
    pub reserved: U32<LE>,
    /// First sector of the request, in 512-byte units.
    pub sector: U64<LE>,
}

/// Length of [`RequestHeader`].
pub const HEADER_LEN: usize = size_of::<RequestHeader>();

/// `struct virtio_blk_discard_write_zeroes`: one range of a discard or write-zeroes request.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct DiscardSegment {
    /// First sector of the range.
    pub sector: U64<LE>,
    /// Sectors in the range.
    pub num_sectors: U32<LE>,
    /// [`SEGMENT_FLAG_UNMAP`] or 0.
    pub flags: U32<LE>,
}

/// Length of one [`DiscardSegment`].
pub const DISCARD_SEGMENT_LEN: usize = size_of::<DiscardSegment>();

/// Request types (`type` in the request header), from `virtio-bindings`.
pub mod req {
    use virtio_bindings::virtio_blk as vb;
    /// Read.
    pub const IN: u32 = vb::VIRTIO_BLK_T_IN;
    /// Write.
    pub const OUT: u32 = vb::VIRTIO_BLK_T_OUT;
    /// Flush the volatile write cache.
    pub const FLUSH: u32 = vb::VIRTIO_BLK_T_FLUSH;
    /// Read the device ID string.
    pub const GET_ID: u32 = vb::VIRTIO_BLK_T_GET_ID;
    /// Discard ranges.
    pub const DISCARD: u32 = vb::VIRTIO_BLK_T_DISCARD;
    /// Write zeroes to ranges.
    pub const WRITE_ZEROES: u32 = vb::VIRTIO_BLK_T_WRITE_ZEROES;
}

/// Status byte values, from `virtio-bindings` (which gives them as `u32`).
pub mod status {
    use virtio_bindings::virtio_blk as vb;
    /// Success.
    pub const OK: u8 = vb::VIRTIO_BLK_S_OK as u8;
    /// Device or driver error.
    pub const IOERR: u8 = vb::VIRTIO_BLK_S_IOERR as u8;
    /// Request not supported.
    pub const UNSUPP: u8 = vb::VIRTIO_BLK_S_UNSUPP as u8;
}

/// `flags` of a discard / write-zeroes segment: the device may deallocate (write-zeroes only).
pub const SEGMENT_FLAG_UNMAP: u32 = virtio_bindings::virtio_blk::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

/// Feature bits offered by the device, as masks of `virtio-bindings`' bit numbers.
pub mod feature {
    use virtio_bindings::{virtio_blk as vb, virtio_config as vc, virtio_ring as vr};
    /// Maximum number of segments in a request is in `seg_max`.
    pub const SEG_MAX: u64 = 1 << vb::VIRTIO_BLK_F_SEG_MAX;
    /// Device is read-only.
    pub const RO: u64 = 1 << vb::VIRTIO_BLK_F_RO;
    /// Block size of disk is in `blk_size`.
    pub const BLK_SIZE: u64 = 1 << vb::VIRTIO_BLK_F_BLK_SIZE;
    /// Cache flush command support.
    pub const FLUSH: u64 = 1 << vb::VIRTIO_BLK_F_FLUSH;
    /// Device exports topology information.
    pub const TOPOLOGY: u64 = 1 << vb::VIRTIO_BLK_F_TOPOLOGY;
    /// Device can toggle its cache between writeback and writethrough.
    pub const CONFIG_WCE: u64 = 1 << vb::VIRTIO_BLK_F_CONFIG_WCE;
    /// Device supports multiqueue.
    pub const MQ: u64 = 1 << vb::VIRTIO_BLK_F_MQ;
    /// Device supports discard.
    pub const DISCARD: u64 = 1 << vb::VIRTIO_BLK_F_DISCARD;
    /// Device supports write zeroes.
    pub const WRITE_ZEROES: u64 = 1 << vb::VIRTIO_BLK_F_WRITE_ZEROES;
    /// Indirect descriptors.
    pub const RING_INDIRECT_DESC: u64 = 1 << vr::VIRTIO_RING_F_INDIRECT_DESC;
    /// `used_event` / `avail_event` notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << vr::VIRTIO_RING_F_EVENT_IDX;
    /// Virtio 1.0 or later.
    pub const VERSION_1: u64 = 1 << vc::VIRTIO_F_VERSION_1;
}

/// `struct virtio_blk_config` up to and including `unused1` (virtio 1.2, 5.2.4), little-endian.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ConfigSpace {
    /// Capacity in 512-byte sectors.
    pub capacity: U64<LE>,
    /// Largest segment (not offered).
    pub size_max: U32<LE>,
    /// Most data segments in a request.
    pub seg_max: U32<LE>,
    /// Cylinders, heads, sectors (not offered).
    pub geometry: [u8; 4],
    /// Logical block size.
    pub blk_size: U32<LE>,
    /// log2 of logical blocks per physical block.
    pub physical_block_exp: u8,
    /// Offset of the first aligned logical block.
    pub alignment_offset: u8,
    /// Smallest efficient I/O, in logical blocks.
    pub min_io_size: U16<LE>,
    /// Optimal I/O size, in logical blocks.
    pub opt_io_size: U32<LE>,
    /// 1: write-back cache, 0: write-through.
    pub writeback: u8,
    /// Padding.
    pub unused0: u8,
    /// Number of request queues.
    pub num_queues: U16<LE>,
    /// Most sectors in one discard segment.
    pub max_discard_sectors: U32<LE>,
    /// Most segments in one discard request.
    pub max_discard_seg: U32<LE>,
    /// Discard alignment, in sectors.
    pub discard_sector_alignment: U32<LE>,
    /// Most sectors in one write-zeroes segment.
    pub max_write_zeroes_sectors: U32<LE>,
    /// Most segments in one write-zeroes request.
    pub max_write_zeroes_seg: U32<LE>,
    /// 1: write-zeroes may deallocate.
    pub write_zeroes_may_unmap: u8,
    /// Padding.
    pub unused1: [u8; 3],
}

/// Size of the configuration space we describe (up to and including `unused1`).
pub const CONFIG_LEN: usize = size_of::<ConfigSpace>();
/// Offset of `writeback` in the configuration space.
pub const CONFIG_WRITEBACK_OFFSET: usize = std::mem::offset_of!(ConfigSpace, writeback);

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

    /// `struct virtio_blk_config` with the current `writeback` value.
    pub fn config_space(&self, writeback: bool) -> ConfigSpace {
        let lbs = self.block_size;
        let mut c = ConfigSpace {
            capacity: self.capacity_sectors().into(),
            seg_max: self.seg_max.into(),
            blk_size: lbs.into(),
            physical_block_exp: (self.physical_block_size / lbs).max(1).trailing_zeros() as u8,
            min_io_size: 1.into(),
            opt_io_size: (self.optimal_io_size / lbs).into(),
            writeback: u8::from(writeback),
            num_queues: self.num_queues.into(),
            ..Default::default()
        };
        if self.discard {
            c.max_discard_sectors = MAX_DISCARD_SECTORS.into();
            c.max_discard_seg = MAX_DISCARD_SEGMENTS.into();
            c.discard_sector_alignment = (lbs >> SECTOR_SHIFT).into();
        }
        if self.write_zeroes {
            c.max_write_zeroes_sectors = MAX_DISCARD_SECTORS.into();
            c.max_write_zeroes_seg = MAX_DISCARD_SEGMENTS.into();
            c.write_zeroes_may_unmap = u8::from(self.discard);
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
        assert_eq!(c.as_bytes().len(), 60);
        assert_eq!(c.capacity.get(), (1 << 30) / 512);
        assert_eq!(c.seg_max.get(), 254);
        assert_eq!(c.blk_size.get(), 512);
        assert_eq!((CONFIG_WRITEBACK_OFFSET, c.as_bytes()[CONFIG_WRITEBACK_OFFSET]), (32, 1));
        assert_eq!(c.num_queues.get(), 2);
        assert_eq!(c.max_discard_seg.get(), MAX_DISCARD_SEGMENTS);
        // The wire order is little-endian: capacity's lowest byte comes first.
        assert_eq!(c.as_bytes()[0..4], [0x00, 0x00, 0x20, 0x00]);
    }

    #[test]
    fn wire_structs_have_the_spec_sizes() {
        assert_eq!(HEADER_LEN, 16);
        assert_eq!(DISCARD_SEGMENT_LEN, 16);
        let h = RequestHeader::read_from_bytes(&[1, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0][..]).unwrap();
        assert_eq!((h.kind.get(), h.sector.get()), (req::OUT, 8));
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
