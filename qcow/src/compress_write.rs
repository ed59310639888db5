//! Writing compressed clusters (as `qemu-img convert -c`): each guest cluster is compressed on
//! its own and its stream packed right after the previous one, so one host cluster holds
//! several streams (each counts one reference) and a stream may run on into the next host
//! cluster when that one is free. Only unallocated clusters are written this way, as in QEMU;
//! a cluster that does not compress to less than a cluster is written normally.
//!
//! The partly filled host cluster is kept in memory and written whole (aligned) after each
//! stream, before the L2 entry that points at it can reach the disk (the next flush).

use std::sync::Arc;

use blockdev::{Error, ErrorKind, IoBufs, IoCtx, IoTag, Result, SharedBuf};

use crate::alloc::alloc_clusters;
use crate::compress;
use crate::imagefile::site;
use crate::l1l2::L2Entry;
use crate::overlap::{overlap_error, Kind, MetaRanges};
use crate::shared::Shared;
use crate::write::{ensure_l2, lock_cluster};
use crate::Qcow2;

/// Writes whole guest clusters compressed into one image.
pub struct CompressedWriter {
    sh: Arc<Shared>,
    /// The host cluster being filled: its offset, its bytes, and how many are used.
    cur: Option<(u64, Vec<u8>, usize)>,
}

impl CompressedWriter {
    /// A writer for `dev` (opened writable).
    pub fn new(dev: &Qcow2) -> Self {
        CompressedWriter { sh: dev.shared().clone(), cur: None }
    }

    /// Write `data` (one whole cluster, or the rest of the disk for its last partial cluster) at
    /// cluster-aligned `guest`, which must be unallocated.
    pub async fn write_cluster(&mut self, io: &IoCtx, guest: u64, data: &[u8]) -> Result<()> {
        let sh = self.sh.clone();
        let cs = sh.geo.cluster_size();
        let size = sh.size.load(std::sync::atomic::Ordering::Acquire);
        let whole = data.len() as u64 == cs || (guest + data.len() as u64 == size && (data.len() as u64) < cs);
        if !guest.is_multiple_of(cs) || !whole || guest >= size {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{}: a compressed write must cover one whole cluster (guest offset {guest}, {} bytes)",
                    sh.name,
                    data.len()
                ),
            ));
        }
        if sh.read_only {
            return Err(Error::new(ErrorKind::ReadOnly, format!("{}: image is read-only", sh.name)));
        }
        let mut padded;
        let input = if data.len() as u64 == cs {
            data
        } else {
            padded = data.to_vec();
            padded.resize(cs as usize, 0);
            &padded[..]
        };
        let Some(stream) = compress::compress(sh.compression, input, cs as usize - 1)? else {
            // Incompressible: an ordinary write.
            let mut b = SharedBuf::from_slice(data);
            return crate::write::write(sh.clone(), io.clone(), guest, b.io(), false).await;
        };
        let _lock = lock_cluster(&sh, io, guest / cs).await?;
        ensure_l2(&sh, io, guest).await?;
        match sh.lookup(io, |m| m.l2_entry(guest)).await? {
            L2Entry::Unallocated { .. } | L2Entry::Zero { offset: 0, .. } => {}
            L2Entry::Extended { offset: 0, .. } => {}
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "{}: guest cluster at {guest} is allocated; compressed writes go to unallocated clusters only",
                        sh.name
                    ),
                ))
            }
        }
        let offset = self.place(io, &stream).await?;
        let desc = sh.geo.encode_compressed(offset, stream.len() as u64);
        sh.lookup(io, |m| m.set_l2_raw(guest, desc, 0)).await?;
        Ok(())
    }

    /// Put `stream` in the image file; returns its byte offset. Takes the references it needs.
    async fn place(&mut self, io: &IoCtx, stream: &[u8]) -> Result<u64> {
        let sh = self.sh.clone();
        let cs = sh.geo.cluster_size() as usize;
        let len = stream.len();
        let can_share = sh.geo.max_refcount() >= 2;
        let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
        let offset = match self.cur.take() {
            Some((host, mut buf, used)) if can_share && used + len <= cs => {
                buf[used..used + len].copy_from_slice(stream);
                add_ref(&sh, io, host).await?;
                writes.push((host, buf.clone()));
                self.cur = Some((host, buf, used + len));
                host + used as u64
            }
            cur => {
                let next = alloc_clusters(&sh, io, 1).await?;
                match cur {
                    Some((host, mut buf, used)) if can_share && used < cs && next == host + cs as u64 => {
                        // Run on from the end of the current cluster into the next one.
                        let first = cs - used;
                        buf[used..].copy_from_slice(&stream[..first]);
                        add_ref(&sh, io, host).await?;
                        writes.push((host, buf));
                        let mut nbuf = vec![0u8; cs];
                        nbuf[..len - first].copy_from_slice(&stream[first..]);
                        writes.push((next, nbuf.clone()));
                        self.cur = Some((next, nbuf, len - first));
                        host + used as u64
                    }
                    _ => {
                        let mut nbuf = vec![0u8; cs];
                        nbuf[..len].copy_from_slice(stream);
                        writes.push((next, nbuf.clone()));
                        self.cur = Some((next, nbuf, len));
                        next
                    }
                }
            }
        };
        for (host, buf) in writes {
            let conflict = MetaRanges::fixed(&sh.lock()).conflict(host, cs as u64, Kind::None);
            if let Some(what) = conflict {
                crate::flush::mark_corrupt(&sh, io).await;
                return Err(overlap_error(&sh.name, host, cs as u64, what, Kind::None));
            }
            let mut b = SharedBuf::from_slice(&buf);
            let bufs: IoBufs = b.io();
            sh.file.write(io, host, bufs, false, IoTag::data(site::DATA)).await?;
        }
        Ok(offset)
    }
}

async fn add_ref(sh: &Shared, io: &IoCtx, host: u64) -> Result<()> {
    let c = host >> sh.geo.cluster_bits;
    sh.lookup(io, |m| {
        let rc = m.refcount(c)?;
        m.set_refcount(c, rc + 1)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{check, Repair};
    use crate::{create_path, open_path, CreateOptions, Options};
    use blockdev::BlockDev;

    #[test]
    fn streams_pack_into_shared_clusters_and_read_back() {
        let io = IoCtx::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.qcow2");
        let cs = 4096u64;
        create_path(&io, &path, &CreateOptions { size: 1 << 20, cluster_size: cs, ..Default::default() }).unwrap();
        let dev = io.block_on(open_path(&io, &path, &Options::default())).unwrap();
        let mut w = CompressedWriter::new(&dev);
        let mut clusters = Vec::new();
        for i in 0..40u64 {
            // Some compress well, some barely, one not at all.
            let data: Vec<u8> = match i % 3 {
                0 => vec![i as u8; cs as usize],
                1 => (0..cs).map(|k| ((k * (i + 1)) % 251) as u8).collect(),
                _ => (0..cs).map(|k| (k.wrapping_mul(2654435761) >> 13) as u8 ^ (k % 7) as u8).collect(),
            };
            io.block_on(w.write_cluster(&io, i * cs, &data)).unwrap();
            clusters.push(data);
        }
        let e = io.block_on(w.write_cluster(&io, 0, &clusters[0])).unwrap_err();
        assert!(e.to_string().contains("unallocated"), "{e}");
        io.block_on(dev.close(&io)).unwrap();
        for (i, want) in clusters.iter().enumerate() {
            let mut b = SharedBuf::new(cs as usize);
            io.block_on(dev.read(&io, i as u64 * cs, b.io(), IoTag::DATA)).unwrap();
            assert_eq!(b.bytes(), &want[..], "cluster {i}");
        }
        let rep = io.block_on(check(&io, &dev, Repair::None)).unwrap();
        assert_eq!(rep.exit_code(), 0, "{:?}", rep.messages);
        // Packing: fewer host clusters than guest clusters.
        assert!(rep.image_end_offset < 40 * cs, "image end {}", rep.image_end_offset);
    }
}
