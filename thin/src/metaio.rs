//! Reading and writing metadata pages and superblock copies on the metadata device.

use std::sync::Arc;

use super::format::PAGE_SIZE;
use blockdev::join::try_join_all;
use blockdev::{BlockDev, IoCtx, IoFuture, IoTag, Result, SharedBuf};

/// Pages read or written concurrently at most.
const BATCH: usize = 32;

/// Read pages `locs` (page numbers) and return their bytes in the same order.
pub async fn read_pages(io: &IoCtx, dev: &Arc<dyn BlockDev>, locs: &[u64], tag: IoTag) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(locs.len());
    for chunk in locs.chunks(BATCH) {
        let mut bufs: Vec<SharedBuf> = chunk.iter().map(|_| io.pool().shared(PAGE_SIZE)).collect();
        let futs: Vec<IoFuture> = chunk
            .iter()
            .zip(bufs.iter_mut())
            .map(|(loc, b)| dev.read(io, loc * PAGE_SIZE as u64, b.io(), tag))
            .collect();
        try_join_all(futs).await?;
        out.extend(bufs.iter().map(|b| b.bytes().to_vec()));
    }
    Ok(out)
}

/// Write `(page number, bytes)` pairs.
pub async fn write_pages(io: &IoCtx, dev: &Arc<dyn BlockDev>, pages: &[(u64, Vec<u8>)], tag: IoTag) -> Result<()> {
    for chunk in pages.chunks(BATCH) {
        let futs: Vec<IoFuture> = chunk
            .iter()
            .map(|(loc, bytes)| {
                let mut b = SharedBuf::from_slice(bytes);
                dev.write(io, loc * PAGE_SIZE as u64, b.io(), false, tag)
            })
            .collect();
        try_join_all(futs).await?;
    }
    Ok(())
}
