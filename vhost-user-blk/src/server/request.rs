//! One virtio-blk request: parse and validate it from a mapped descriptor chain (virtio 1.2,
//! 5.2.6), then run it on the export's device and produce the status byte.
//!
//! Every check that the guest can trip ends in a status (IOERR or UNSUPP), never a panic.

use blockdev::{BlockDev, ErrorKind, IoBufs, IoCtx, IoTag};
use zerocopy::IntoBytes;

use super::chain::MappedChain;
use super::virtio_blk::{
    req, status, DiscardSegment, Geometry, RequestHeader, DISCARD_SEGMENT_LEN, HEADER_LEN, ID_LEN, MAX_DISCARD_SECTORS,
    MAX_DISCARD_SEGMENTS, SECTOR_SHIFT, SEGMENT_FLAG_UNMAP,
};

const TAG: IoTag = IoTag::data("vhost-user-blk.request");

/// What a validated request asks the device to do.
#[derive(Debug)]
pub enum Op {
    /// Read into `bufs` from byte offset `off`.
    Read {
        /// Byte offset.
        off: u64,
        /// Guest buffers to fill.
        bufs: IoBufs,
    },
    /// Write `bufs` at byte offset `off`.
    Write {
        /// Byte offset.
        off: u64,
        /// Guest buffers to write.
        bufs: IoBufs,
        /// Write-through: the write must be stable when it completes.
        fua: bool,
    },
    /// Make completed writes stable.
    Flush,
    /// Copy the device ID into `bufs`.
    GetId {
        /// Guest buffer for the ID.
        bufs: IoBufs,
    },
    /// Discard byte ranges `(off, len)`.
    Discard(Vec<(u64, u64)>),
    /// Write zeroes to byte ranges `(off, len, unmap)`.
    WriteZeroes(Vec<(u64, u64, bool)>),
    /// Nothing to run: answer `status` at once.
    Fail(u8),
}

impl Op {
    /// The statistics class of the operation.
    pub fn class(&self) -> OpClass {
        match self {
            Op::Read { .. } => OpClass::Read,
            Op::Write { .. } => OpClass::Write,
            Op::Flush => OpClass::Flush,
            Op::Discard(_) | Op::WriteZeroes(_) => OpClass::Discard,
            Op::GetId { .. } | Op::Fail(_) => OpClass::Other,
        }
    }

    /// Bytes of guest data moved (reads and writes).
    pub fn data_bytes(&self) -> u64 {
        match self {
            Op::Read { bufs, .. } | Op::Write { bufs, .. } => bufs.len() as u64,
            _ => 0,
        }
    }
}

/// Coarse request classes for statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    /// IN.
    Read,
    /// OUT.
    Write,
    /// FLUSH.
    Flush,
    /// DISCARD and WRITE_ZEROES.
    Discard,
    /// GET_ID and refused requests.
    Other,
}

/// A parsed request, ready to run.
#[derive(Debug)]
pub struct Request {
    /// Head descriptor index, for the used ring.
    pub head: u16,
    /// What to do.
    pub op: Op,
    /// The status byte's buffer (the last writable byte), if the chain has one.
    status: Option<IoBufs>,
    /// Bytes the device writes on success (data plus status), reported in the used ring.
    ok_len: u32,
}

/// What a request needs to know about its export.
#[derive(Debug, Clone, Copy)]
pub struct ExportView<'a> {
    /// Geometry and offered features.
    pub geometry: &'a Geometry,
    /// The guest chose writeback caching (otherwise every write is written through).
    pub writeback: bool,
}

impl Request {
    /// Parse and validate `chain`.
    pub fn parse(chain: MappedChain, export: ExportView<'_>) -> Request {
        let head = chain.head;
        let wlen = chain.writable.len();
        if wlen == 0 {
            // No writable byte: nowhere to put a status. Complete it with nothing written.
            return Request { head, op: Op::Fail(status::IOERR), status: None, ok_len: 0 };
        }
        let status_buf = chain.writable.slice(wlen - 1, 1);
        let (op, ok_len) = parse_op(&chain, export);
        let ok_len = u32::try_from(ok_len).unwrap_or(u32::MAX);
        Request { head, op, status: Some(status_buf), ok_len }
    }

    /// Write `st` into the status byte; returns the used-ring length to report.
    pub fn complete(&self, st: u8) -> u32 {
        match &self.status {
            Some(buf) => {
                buf.copy_from_slice(0, &[st]);
                if st == status::OK {
                    self.ok_len
                } else {
                    1
                }
            }
            None => 0,
        }
    }
}

fn fail(st: u8) -> (Op, usize) {
    (Op::Fail(st), 1)
}

fn parse_op(chain: &MappedChain, export: ExportView<'_>) -> (Op, usize) {
    let geo = export.geometry;
    let rlen = chain.readable.len();
    if rlen < HEADER_LEN {
        return fail(status::IOERR);
    }
    let mut hdr = RequestHeader::default();
    chain.readable.copy_to_slice(0, hdr.as_mut_bytes());
    let (kind, sector) = (hdr.kind.get(), hdr.sector.get());
    let wdata = chain.writable.len() - 1;
    // Header and status take at least one descriptor each; the rest carry data.
    if chain.descriptors > geo.seg_max + 2 {
        return fail(status::IOERR);
    }
    match kind {
        req::IN => {
            let Some(off) = check_range(geo, sector, wdata as u64) else { return fail(status::IOERR) };
            (Op::Read { off, bufs: chain.writable.slice(0, wdata) }, wdata + 1)
        }
        req::OUT => {
            if geo.read_only {
                return fail(status::IOERR);
            }
            let len = rlen - HEADER_LEN;
            let Some(off) = check_range(geo, sector, len as u64) else { return fail(status::IOERR) };
            (Op::Write { off, bufs: chain.readable.slice(HEADER_LEN, len), fua: !export.writeback }, 1)
        }
        req::FLUSH => {
            if sector != 0 {
                return fail(status::IOERR);
            }
            (Op::Flush, 1)
        }
        req::GET_ID => {
            let n = wdata.min(ID_LEN);
            (Op::GetId { bufs: chain.writable.slice(0, n) }, n + 1)
        }
        req::DISCARD | req::WRITE_ZEROES => parse_ranges(chain, geo, kind == req::WRITE_ZEROES),
        _ => fail(status::UNSUPP),
    }
}

/// Byte offset of `sector` if `[sector*512, +len)` is block-aligned and inside the export.
fn check_range(geo: &Geometry, sector: u64, len: u64) -> Option<u64> {
    let off = sector.checked_mul(1 << SECTOR_SHIFT)?;
    let end = off.checked_add(len)?;
    let bs = u64::from(geo.block_size);
    (end <= geo.size && off.is_multiple_of(bs) && len.is_multiple_of(bs)).then_some(off)
}

fn parse_ranges(chain: &MappedChain, geo: &Geometry, zeroes: bool) -> (Op, usize) {
    let offered = if zeroes { geo.write_zeroes } else { geo.discard };
    if !offered {
        return fail(if geo.read_only { status::IOERR } else { status::UNSUPP });
    }
    let payload = chain.readable.len() - HEADER_LEN;
    if payload == 0 || !payload.is_multiple_of(DISCARD_SEGMENT_LEN) {
        return fail(status::IOERR);
    }
    let count = payload / DISCARD_SEGMENT_LEN;
    if count > MAX_DISCARD_SEGMENTS as usize {
        return fail(status::IOERR);
    }
    let mut segments = vec![DiscardSegment::default(); count];
    chain.readable.copy_to_slice(HEADER_LEN, segments.as_mut_bytes());
    let mut discards = Vec::new();
    let mut zero_ranges = Vec::new();
    for seg in &segments {
        let (sector, sectors, flags) = (seg.sector.get(), seg.num_sectors.get(), seg.flags.get());
        let allowed = if zeroes { SEGMENT_FLAG_UNMAP } else { 0 };
        if flags & !allowed != 0 {
            return fail(status::UNSUPP);
        }
        if sectors > MAX_DISCARD_SECTORS {
            return fail(status::IOERR);
        }
        let len = u64::from(sectors) << SECTOR_SHIFT;
        let Some(off) = check_range(geo, sector, len) else { return fail(status::IOERR) };
        if zeroes {
            zero_ranges.push((off, len, flags & SEGMENT_FLAG_UNMAP != 0));
        } else {
            discards.push((off, len));
        }
    }
    if zeroes {
        (Op::WriteZeroes(zero_ranges), 1)
    } else {
        (Op::Discard(discards), 1)
    }
}

/// Run `op` on `dev` and return the virtio status. Errors are logged under `export`.
pub async fn execute(dev: &dyn BlockDev, io: IoCtx, op: &Op, serial: [u8; ID_LEN], export: &str) -> u8 {
    let res = match op {
        Op::Fail(st) => return *st,
        Op::Read { off, bufs } if !bufs.is_empty() => dev.read(&io, *off, bufs.clone(), TAG).await,
        Op::Write { off, bufs, fua } if !bufs.is_empty() => dev.write(&io, *off, bufs.clone(), *fua, TAG).await,
        Op::Read { .. } | Op::Write { .. } => Ok(()),
        Op::Flush => dev.flush(&io, TAG).await,
        Op::GetId { bufs } => {
            bufs.copy_from_slice(0, &serial[..bufs.len()]);
            Ok(())
        }
        Op::Discard(ranges) => {
            let mut res = Ok(());
            for &(off, len) in ranges {
                res = dev.discard(&io, off, len, TAG).await;
                if res.is_err() {
                    break;
                }
            }
            res
        }
        Op::WriteZeroes(ranges) => {
            let mut res = Ok(());
            for &(off, len, unmap) in ranges {
                res = dev.write_zeroes(&io, off, len, unmap, TAG).await;
                if res.is_err() {
                    break;
                }
            }
            res
        }
    };
    match res {
        Ok(()) => status::OK,
        Err(e) if e.kind() == ErrorKind::Unsupported && matches!(op, Op::Discard(_) | Op::WriteZeroes(_)) => {
            status::UNSUPP
        }
        Err(e) => {
            tracing::warn!(export, "request failed: {e}");
            status::IOERR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockdev::{DevInfo, SharedBuf};

    struct Bufs {
        hdr: SharedBuf,
        data: SharedBuf,
        st: SharedBuf,
    }

    fn chain(bufs: &mut Bufs, kind: u32, sector: u64, data_writable: bool) -> MappedChain {
        let h = RequestHeader { kind: kind.into(), reserved: 0.into(), sector: sector.into() };
        bufs.hdr.bytes_mut().copy_from_slice(h.as_bytes());
        let mut readable = bufs.hdr.io();
        let mut writable = IoBufs::new();
        if data_writable {
            writable.append(bufs.data.io());
        } else {
            readable.append(bufs.data.io());
        }
        writable.append(bufs.st.io());
        MappedChain { head: 3, readable, writable, descriptors: 3 }
    }

    fn bufs(data_len: usize) -> Bufs {
        Bufs { hdr: SharedBuf::new(16), data: SharedBuf::new(data_len), st: SharedBuf::new(1) }
    }

    fn geo(read_only: bool) -> Geometry {
        Geometry::new(&DevInfo::simple(1 << 20), 512, 1, 256, read_only)
    }

    fn parse(c: MappedChain, g: &Geometry) -> Request {
        Request::parse(c, ExportView { geometry: g, writeback: true })
    }

    #[test]
    fn read_in_range_parses_with_data_plus_status_length() {
        let g = geo(false);
        let mut b = bufs(4096);
        let r = parse(chain(&mut b, req::IN, 8, true), &g);
        assert!(matches!(r.op, Op::Read { off: 4096, .. }));
        assert_eq!(r.ok_len, 4097);
    }

    #[test]
    fn read_straddling_end_is_ioerr() {
        let g = geo(false);
        let mut b = bufs(4096);
        let r = parse(chain(&mut b, req::IN, (1 << 11) - 4, true), &g);
        assert!(matches!(r.op, Op::Fail(status::IOERR)));
        let mut b = bufs(512);
        let r = parse(chain(&mut b, req::IN, u64::MAX / 256, true), &g);
        assert!(matches!(r.op, Op::Fail(status::IOERR)));
    }

    #[test]
    fn write_to_read_only_is_ioerr() {
        let g = geo(true);
        let mut b = bufs(512);
        let r = parse(chain(&mut b, req::OUT, 0, false), &g);
        assert!(matches!(r.op, Op::Fail(status::IOERR)));
        assert_eq!(r.complete(status::IOERR), 1);
        drop(r);
        assert_eq!(b.st.bytes(), &[status::IOERR]);
    }

    #[test]
    fn flush_with_nonzero_sector_is_ioerr_and_unknown_type_unsupp() {
        let g = geo(false);
        let mut b = bufs(0);
        assert!(matches!(parse(chain(&mut b, req::FLUSH, 1, true), &g).op, Op::Fail(status::IOERR)));
        assert!(matches!(parse(chain(&mut b, 99, 0, true), &g).op, Op::Fail(status::UNSUPP)));
    }

    fn segment(sector: u64, sectors: u32, flags: u32) -> Vec<u8> {
        DiscardSegment { sector: sector.into(), num_sectors: sectors.into(), flags: flags.into() }.as_bytes().to_vec()
    }

    fn ranges(kind: u32, segs: &[Vec<u8>]) -> Op {
        let g = geo(false);
        let payload: Vec<u8> = segs.concat();
        let mut b = bufs(payload.len());
        b.data.bytes_mut().copy_from_slice(&payload);
        parse(chain(&mut b, kind, 0, false), &g).op
    }

    #[test]
    fn discard_with_unmap_flag_is_unsupp_and_write_zeroes_accepts_it() {
        assert!(matches!(ranges(req::DISCARD, &[segment(0, 8, 1)]), Op::Fail(status::UNSUPP)));
        assert!(
            matches!(ranges(req::WRITE_ZEROES, &[segment(0, 8, 1)]), Op::WriteZeroes(v) if v == vec![(0, 4096, true)])
        );
        assert!(matches!(ranges(req::WRITE_ZEROES, &[segment(0, 8, 2)]), Op::Fail(status::UNSUPP)));
    }

    #[test]
    fn discard_beyond_capacity_or_too_many_segments_is_ioerr() {
        assert!(matches!(ranges(req::DISCARD, &[segment(2040, 16, 0)]), Op::Fail(status::IOERR)));
        let many: Vec<Vec<u8>> = (0..33).map(|i| segment(i * 8, 8, 0)).collect();
        assert!(matches!(ranges(req::DISCARD, &many), Op::Fail(status::IOERR)));
    }

    #[test]
    fn chain_without_writable_byte_reports_nothing() {
        let g = geo(false);
        let mut b = bufs(512);
        let readable = b.hdr.io();
        let r = parse(MappedChain { head: 0, readable, writable: IoBufs::new(), descriptors: 1 }, &g);
        assert_eq!(r.complete(status::IOERR), 0);
    }
}
