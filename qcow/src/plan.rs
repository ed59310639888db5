//! Turning a guest read into a plan: where each piece of the range comes from (a host extent,
//! zeros, the backing file, a compressed cluster). Built under the metadata lock, no I/O.

use crate::l1l2::{Geometry, L2Entry};
use crate::meta::{Lookup, Meta};

/// Where a piece of guest data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Host bytes in the image file at this offset.
    Host(u64),
    /// Zeros.
    Zero,
    /// The backing file at the same guest offset (zeros without one).
    Backing,
    /// A compressed cluster: the stream's offset and size, and the piece's offset in the cluster.
    Compressed {
        /// Host offset of the compressed stream.
        offset: u64,
        /// Bytes the stream may occupy.
        size: u64,
        /// Offset of this piece inside the decompressed cluster.
        within: u64,
    },
}

/// One piece of a read plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Offset inside the request.
    pub pos: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where the bytes come from.
    pub src: Source,
}

/// Where the bytes of `guest..guest+len` (inside one cluster) come from, appended to `out`.
fn plan_cluster(meta: &mut Meta, guest: u64, len: u64, pos: u64, out: &mut Vec<Piece>) -> Lookup<()> {
    let entry = meta.l2_entry(guest)?;
    plan_entry(&meta.geo, entry, meta.geo.in_cluster(guest), len, pos, out);
    Ok(())
}

/// Where `len` bytes from offset `within` of a cluster described by `entry` come from.
pub fn plan_entry(g: &Geometry, entry: L2Entry, within: u64, len: u64, pos: u64, out: &mut Vec<Piece>) {
    match entry {
        L2Entry::Unallocated { .. } => push(out, pos, len, Source::Backing),
        L2Entry::Zero { .. } => push(out, pos, len, Source::Zero),
        L2Entry::Normal { offset, .. } => push(out, pos, len, Source::Host(offset + within)),
        L2Entry::Compressed { offset, size } => push(out, pos, len, Source::Compressed { offset, size, within }),
        L2Entry::Extended { offset, alloc, zero, .. } => {
            let sc = g.subcluster_size();
            let mut done = 0;
            while done < len {
                let at = within + done;
                let idx = (at / sc) as u32;
                let n = (sc - at % sc).min(len - done);
                let src = if zero & (1 << idx) != 0 {
                    Source::Zero
                } else if alloc & (1 << idx) != 0 && offset != 0 {
                    Source::Host(offset + at)
                } else {
                    Source::Backing
                };
                push(out, pos + done, n, src);
                done += n;
            }
        }
    }
}

/// Append a piece, merging it with the previous one when they continue each other.
fn push(out: &mut Vec<Piece>, pos: u64, len: u64, src: Source) {
    if let Some(last) = out.last_mut() {
        let merged = match (last.src, src) {
            (Source::Host(a), Source::Host(b)) => a + last.len == b,
            (Source::Zero, Source::Zero) | (Source::Backing, Source::Backing) => true,
            _ => false,
        };
        if merged && last.pos + last.len == pos {
            last.len += len;
            return;
        }
    }
    out.push(Piece { pos, len, src });
}

/// Plan a read of `len` bytes at guest offset `off`. `out` is cleared first; a miss leaves it partial.
pub fn plan_read(meta: &mut Meta, off: u64, len: u64, out: &mut Vec<Piece>) -> Lookup<()> {
    out.clear();
    let cs = meta.geo.cluster_size();
    let mut done = 0;
    while done < len {
        let guest = off + done;
        let n = (cs - guest % cs).min(len - done);
        plan_cluster(meta, guest, n, done, out)?;
        done += n;
    }
    Ok(())
}
