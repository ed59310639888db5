//! Reading and writing metadata in the image file (the part that touches the file, kept apart
//! from the part that interprets it). The image file is any `BlockDev`: a growable `RawFile`
//! normally, a volume or a test device in tests.

use std::sync::Arc;

use blockdev::{BlockDev, IoCtx, IoTag, Result, SharedBuf};

/// Metadata write sites, as `IoTag` sites (FaultDev targets them by name).
pub mod site {
    /// An L2 table slice.
    pub const L2_UPDATE: &str = "qcow2.l2_update";
    /// A refcount block slice.
    pub const REFCOUNT_UPDATE: &str = "qcow2.refcount_update";
    /// The refcount table.
    pub const REFTABLE_UPDATE: &str = "qcow2.reftable_update";
    /// The L1 table.
    pub const L1_UPDATE: &str = "qcow2.l1_update";
    /// The header.
    pub const HEADER: &str = "qcow2.header";
    /// Metadata reads (tables, slices).
    pub const META_READ: &str = "qcow2.meta_read";
    /// A flush of the image file.
    pub const FLUSH: &str = "qcow2.flush";
    /// Copy-on-write data.
    pub const COW: &str = "qcow2.cow";
    /// Guest data.
    pub const DATA: &str = "qcow2.data";

    /// What a site writes, in words for error messages.
    pub fn describe(site: &str) -> &'static str {
        match site {
            L2_UPDATE => "L2 table",
            REFCOUNT_UPDATE => "refcount block",
            REFTABLE_UPDATE => "refcount table",
            L1_UPDATE => "L1 table",
            HEADER => "header",
            COW => "copy-on-write data",
            DATA => "guest data",
            _ => "metadata",
        }
    }
}

/// Read `len` bytes at `off`. Bytes past the end of a fixed-size file read as zeros.
pub async fn read_vec(io: &IoCtx, file: &Arc<dyn BlockDev>, off: u64, len: usize) -> Result<Vec<u8>> {
    let info = file.info();
    let lbs = u64::from(info.logical_block_size.max(1));
    let start = off - off % lbs;
    let end = (off + len as u64).next_multiple_of(lbs);
    let mut out = vec![0u8; len];
    // A fixed-size device refuses reads past its end; a growable file reads zeros there.
    let avail_end = if lbs == 1 { end } else { end.min(info.size.next_multiple_of(lbs)) };
    if avail_end <= start {
        return Ok(out);
    }
    let mut buf = SharedBuf::new((avail_end - start) as usize);
    file.read(io, start, buf.io(), IoTag::meta(site::META_READ))
        .await
        .map_err(|e| e.context(format!("qcow2: reading metadata at offset {off}")))?;
    let have = buf.bytes();
    let skip = (off - start) as usize;
    let n = len.min(have.len().saturating_sub(skip));
    out[..n].copy_from_slice(&have[skip..skip + n]);
    Ok(out)
}

/// Write `data` at `off` with the metadata tag `site`.
pub async fn write_meta(io: &IoCtx, file: &Arc<dyn BlockDev>, off: u64, data: &[u8], site: &'static str) -> Result<()> {
    let mut buf = SharedBuf::from_slice(data);
    file.write(io, off, buf.io(), false, IoTag::meta(site))
        .await
        .map_err(|e| e.context(format!("qcow2: writing {} at offset {off}", site::describe(site))))
}

/// Make everything written to the image file stable.
pub async fn sync(io: &IoCtx, file: &Arc<dyn BlockDev>) -> Result<()> {
    file.flush(io, IoTag::meta(site::FLUSH)).await
}
