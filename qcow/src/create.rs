//! Creating an image: header, refcount table and blocks, and an empty L1 table laid out as QEMU
//! does (header, refcount table, refcount blocks, L1), then optional preallocation.

use std::path::Path;
use std::sync::Arc;

use blockdev::{BlockDev, Error, ErrorKind, IoCtx, OpenOptions, RawFile, Result};

use crate::header::{incompat, Compression, Header, MAX_L1_BYTES, V2_HEADER_LEN, V3_HEADER_LEN};
use crate::imagefile::{self, site};
use crate::meta::set_bits;
use crate::newfile::{NewFile, Overwrite};

/// How much to allocate up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Nothing: clusters are allocated on first write.
    #[default]
    Off,
    /// L2 tables and data clusters allocated, data left sparse.
    Metadata,
    /// As `Metadata`, with the data clusters' space reserved in the file system.
    Falloc,
    /// As `Metadata`, with zeros written to every data cluster.
    Full,
}

impl std::str::FromStr for Preallocation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(Preallocation::Off),
            "metadata" => Ok(Preallocation::Metadata),
            "falloc" => Ok(Preallocation::Falloc),
            "full" => Ok(Preallocation::Full),
            _ => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("preallocation '{s}': use off, metadata, falloc or full"),
            )),
        }
    }
}

/// The options of `blkctl qcow2 create`.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Virtual size in bytes (a multiple of 512).
    pub size: u64,
    /// Cluster size (a power of two, 512 B to 2 MiB; default 64 KiB).
    pub cluster_size: u64,
    /// Backing file name as written into the header (relative to the image's directory).
    pub backing_file: Option<String>,
    /// Backing file format (required with a backing file: formats are never probed).
    pub backing_format: Option<String>,
    /// Preallocation mode.
    pub preallocation: Preallocation,
    /// Version 3 ("1.1", default) or 2 ("0.10").
    pub version: u32,
    /// Lazy refcounts (v3 only).
    pub lazy_refcounts: bool,
    /// Refcount width: 1, 2, 4, 8, 16 (default), 32 or 64 bits (v3 only for other than 16).
    pub refcount_bits: u32,
    /// Extended L2 entries with subclusters (v3 only, clusters of 16 KiB or more).
    pub extended_l2: bool,
    /// Compression type of compressed clusters (zstd needs v3).
    pub compression: Compression,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            size: 0,
            cluster_size: 64 << 10,
            backing_file: None,
            backing_format: None,
            preallocation: Preallocation::Off,
            version: 3,
            lazy_refcounts: false,
            refcount_bits: 16,
            extended_l2: false,
            compression: Compression::Zlib,
        }
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, msg.into())
}

impl CreateOptions {
    /// Check the options against each other and QEMU's limits; build the header (tables unset).
    pub fn header(&self) -> Result<Header> {
        let cs = self.cluster_size;
        if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
            return Err(invalid(format!("cluster size {cs}: must be a power of two from 512 to 2M")));
        }
        if !self.size.is_multiple_of(512) {
            return Err(invalid(format!("size {}: must be a multiple of 512", self.size)));
        }
        if !self.refcount_bits.is_power_of_two() || self.refcount_bits > 64 {
            return Err(invalid(format!("refcount bits {}: must be a power of two up to 64", self.refcount_bits)));
        }
        if self.version != 2 && self.version != 3 {
            return Err(invalid(format!("compat version {}: use 0.10 (2) or 1.1 (3)", self.version)));
        }
        if self.version == 2
            && (self.lazy_refcounts
                || self.extended_l2
                || self.refcount_bits != 16
                || self.compression != Compression::Zlib)
        {
            return Err(invalid(
                "compat 0.10 supports none of lazy refcounts, extended L2, refcount bits other than 16, zstd",
            ));
        }
        if self.extended_l2 && cs < 16 << 10 {
            return Err(invalid("extended L2 needs a cluster size of at least 16K"));
        }
        if self.backing_file.is_some() && self.backing_format.is_none() {
            return Err(invalid("a backing file needs its format (--backing-format): formats are never probed"));
        }
        let cluster_bits = cs.trailing_zeros();
        let entry = if self.extended_l2 { 16 } else { 8 };
        let l1_entries = self.size.div_ceil(cs).div_ceil(cs / entry);
        if l1_entries * 8 > MAX_L1_BYTES {
            return Err(invalid(format!("size {} needs an L1 table over 32 MiB at {cs}-byte clusters", self.size)));
        }
        let mut incompatible = 0;
        if self.extended_l2 {
            incompatible |= incompat::EXTL2;
        }
        if self.compression == Compression::Zstd {
            incompatible |= incompat::COMPRESSION;
        }
        let v3 = self.version == 3;
        Ok(Header {
            version: self.version,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits,
            size: self.size,
            crypt_method: 0,
            l1_size: l1_entries as u32,
            l1_table_offset: 0,
            refcount_table_offset: 0,
            refcount_table_clusters: 0,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: incompatible,
            compatible_features: if self.lazy_refcounts { crate::header::compat::LAZY_REFCOUNTS } else { 0 },
            autoclear_features: 0,
            refcount_order: self.refcount_bits.trailing_zeros(),
            header_length: if v3 { V3_HEADER_LEN } else { V2_HEADER_LEN },
            compression: self.compression,
            backing_file: self.backing_file.clone(),
            backing_format: self.backing_format.clone(),
            feature_names: if v3 { Header::default_feature_names() } else { Vec::new() },
            other_extensions: Vec::new(),
        })
    }
}

/// Write a new, empty image into `file` (which should be empty: it is overwritten from offset 0).
/// The options are checked before the first byte is written.
pub async fn create(io: &IoCtx, file: &Arc<dyn BlockDev>, opts: &CreateOptions) -> Result<()> {
    let mut h = opts.header()?;
    let cs = opts.cluster_size;
    let rb_entries = (cs * 8) >> h.refcount_order;
    let l1_clusters = (u64::from(h.l1_size) * 8).div_ceil(cs).max(1);
    // Find the fixed point: the metadata clusters, the blocks counting them, the table listing those.
    let (mut rt, mut rb) = (1u64, 1u64);
    loop {
        let total = 1 + rt + rb + l1_clusters;
        let need_rb = total.div_ceil(rb_entries);
        let need_rt = (need_rb * 8).div_ceil(cs);
        if need_rb == rb && need_rt == rt {
            break;
        }
        (rt, rb) = (need_rt.max(rt), need_rb.max(rb));
    }
    let total = 1 + rt + rb + l1_clusters;
    h.refcount_table_offset = cs;
    h.refcount_table_clusters = rt as u32;
    h.l1_table_offset = (1 + rt + rb) * cs;
    let mut img = vec![0u8; (total * cs) as usize];
    let hdr = h.serialize()?;
    img[..hdr.len()].copy_from_slice(&hdr);
    let reftable = crate::format::encode_table((0..rb).map(|i| (1 + rt + i) * cs));
    img[cs as usize..cs as usize + reftable.len()].copy_from_slice(&reftable);
    let blocks = ((1 + rt) * cs) as usize;
    for c in 0..total {
        let block = (c / rb_entries) as usize;
        let bit = (c % rb_entries) << h.refcount_order;
        set_bits(&mut img[blocks + block * cs as usize..], bit, h.refcount_order, 1);
    }
    imagefile::write_meta(io, file, 0, &img, site::HEADER).await?;
    imagefile::sync(io, file).await?;
    if opts.preallocation != Preallocation::Off {
        preallocate(io, file, opts).await?;
    }
    Ok(())
}

/// Allocate every cluster of a new image (L2 tables and data clusters).
async fn preallocate(io: &IoCtx, file: &Arc<dyn BlockDev>, opts: &CreateOptions) -> Result<()> {
    let dev =
        crate::open::open_dev(io, file.clone(), None, &crate::Options { ignore_backing: true, ..Default::default() })
            .await?;
    let sh = dev.shared().clone();
    let cs = opts.cluster_size;
    let mut guest = 0;
    while guest < opts.size {
        let _lock = sh.alloc.lock().await;
        crate::write::ensure_l2(&sh, io, guest).await?;
        let host = crate::alloc::alloc_clusters(&sh, io, 1).await?;
        sh.lookup(io, |m| m.set_l2_raw(guest, host | crate::l1l2::COPIED, 0)).await?;
        if sh.lock().l2.needs_writeback() || sh.lock().rc.needs_writeback() {
            crate::flush::flush_metadata(&sh, io).await?;
        }
        drop(_lock);
        match opts.preallocation {
            Preallocation::Full => {
                let mut z = blockdev::SharedBuf::new(cs as usize);
                file.write(io, host, z.io(), false, blockdev::IoTag::data(site::DATA)).await?;
            }
            Preallocation::Falloc => {
                file.write_zeroes(io, host, cs, false, blockdev::IoTag::data(site::DATA)).await?;
            }
            _ => {}
        }
        guest += cs;
    }
    dev.close(io).await?;
    // The file must reach the last data cluster, or the L2 entries would point past its end.
    let end = sh.lock().free_hint * cs;
    if file.info().size < end {
        let mut z = blockdev::SharedBuf::new(512);
        file.write(io, end - 512, z.io(), false, blockdev::IoTag::data(site::DATA)).await?;
        imagefile::sync(io, file).await?;
    }
    Ok(())
}

/// Write a new image at `path`, replacing what is there ([`create_path_with`] with
/// [`Overwrite::Always`]; a file another process holds locked is still refused).
pub fn create_path(io: &IoCtx, path: &Path, opts: &CreateOptions) -> Result<()> {
    create_path_with(io, path, opts, Overwrite::Always).map(|_| ())
}

/// Create the image file at `path`: check the options, open what the path holds without
/// truncating it and take its exclusive lock (refusing it per `overwrite`), write the image
/// under a temporary name beside it, and rename that into place. Any failure leaves an existing
/// file byte for byte as it was. Returns true when an existing file was replaced.
pub fn create_path_with(io: &IoCtx, path: &Path, opts: &CreateOptions, overwrite: Overwrite) -> Result<bool> {
    opts.header()?;
    if let Some(b) = &opts.backing_file {
        let target = std::fs::canonicalize(path);
        let backing = std::fs::canonicalize(crate::open::resolve_backing(path, b));
        if let (Ok(t), Ok(b)) = (target, backing) {
            if t == b {
                return Err(invalid(format!("{}: is its own backing file", path.display())));
            }
        }
    }
    let new = NewFile::begin(path, overwrite)?;
    let replaces = new.replaces();
    let what = if replaces { "left as it was" } else { "not created" };
    let write = || -> Result<()> {
        let raw = RawFile::open(new.tmp_path(), OpenOptions { growable: true, ..Default::default() })?;
        let file: Arc<dyn BlockDev> = Arc::new(raw);
        io.block_on(create(io, &file, opts))
    };
    write().map_err(|e| e.context(format!("{}: {what}", path.display())))?;
    new.commit()?;
    Ok(replaces)
}
