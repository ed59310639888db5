//! The read engine: plan under the metadata lock, then issue every piece's I/O in parallel
//! without holding it.

use std::sync::Arc;

use blockdev::join::try_join_all;
use blockdev::{IoBufs, IoCtx, IoFuture, IoTag, Result};

use crate::compress;
use crate::imagefile::{self, site};
use crate::plan::{plan_read, Piece, Source};
use crate::shared::Shared;

/// Read `bufs.len()` guest bytes at `off` (range already checked).
pub async fn read(sh: Arc<Shared>, io: IoCtx, off: u64, bufs: IoBufs) -> Result<()> {
    let len = bufs.len() as u64;
    let mut plan = Vec::new();
    sh.lookup(&io, |m| plan_read(m, off, len, &mut plan)).await?;
    exec(&sh, &io, off, &plan, &bufs).await
}

/// Carry out a read plan for the request at guest offset `off` into `bufs`.
pub async fn exec(sh: &Arc<Shared>, io: &IoCtx, off: u64, plan: &[Piece], bufs: &IoBufs) -> Result<()> {
    let io = io.clone();
    let mut futs: Vec<IoFuture> = Vec::with_capacity(plan.len());
    for p in plan.iter().copied() {
        let part = bufs.slice(p.pos as usize, p.len as usize);
        match p.src {
            Source::Host(host) => futs.push(sh.file.read(&io, host, part, IoTag::data(site::DATA))),
            Source::Zero => part.zero(0, part.len()),
            Source::Backing => futs.push(read_backing(sh, &io, off + p.pos, part)),
            Source::Compressed { offset, size, within } => {
                let (sh, io) = (sh.clone(), io.clone());
                futs.push(Box::pin(async move { read_compressed(&sh, &io, offset, size, within, part).await }));
            }
        }
    }
    try_join_all(futs).await
}

/// Read guest bytes from the backing device into `part`: zeros where there is none, or past its end.
pub fn read_backing(sh: &Shared, io: &IoCtx, guest: u64, part: IoBufs) -> IoFuture {
    let Some(backing) = &sh.backing else {
        part.zero(0, part.len());
        return blockdev::ready(Ok(()));
    };
    let bsize = backing.info().size;
    let len = part.len() as u64;
    if guest >= bsize {
        part.zero(0, part.len());
        return blockdev::ready(Ok(()));
    }
    let inside = (bsize - guest).min(len) as usize;
    if inside < part.len() {
        part.zero(inside, part.len() - inside);
    }
    backing.read(io, guest, part.slice(0, inside), IoTag::DATA)
}

/// Decompress the cluster at `offset` and copy `part.len()` bytes from `within` into `part`.
pub async fn read_compressed(sh: &Shared, io: &IoCtx, offset: u64, size: u64, within: u64, part: IoBufs) -> Result<()> {
    let cluster = decompress_cluster(sh, io, offset, size).await?;
    part.copy_from_slice(0, &cluster[within as usize..within as usize + part.len()]);
    Ok(())
}

/// The whole decompressed cluster whose stream starts at `offset`.
pub async fn decompress_cluster(sh: &Shared, io: &IoCtx, offset: u64, size: u64) -> Result<Vec<u8>> {
    let cs = sh.geo.cluster_size() as usize;
    // The descriptor's size is bounded by its bit width (at most a few clusters): no unbounded allocation.
    let size = size.min(2 * cs as u64 + 512) as usize;
    let input = imagefile::read_vec(io, &sh.file, offset, size).await?;
    let mut out = vec![0u8; cs];
    compress::decompress(sh.compression, &input, &mut out, offset).map_err(|e| e.context(&sh.name))?;
    Ok(out)
}
