//! The directory: the byte stream (split over chained `KIND_DIR` pages) that names every
//! metadata page in use — the space map's pages and, per volume, its id, name, size and mapping
//! pages. Its records are the `Dir*` structs of [`format`](super::format), in this order:
//! [`DirCount64`] (data blocks), the space map's page list, [`DirVolumeCount`], then per volume
//! [`DirVolumeHead`], the name's bytes, [`DirVolumeSize`] and its mapping's page list (a page
//! list is a [`DirCount64`] and that many [`DirPageRef`]s). Decoding treats the bytes as
//! untrusted: every count is bounded before anything is allocated.

use std::mem::size_of;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::format::{DirCount64, DirPageRef, DirVolumeCount, DirVolumeHead, DirVolumeSize, Le16, Le32, Le64};
use super::paged::PagedArray;
use super::state::PoolState;
use blockdev::{Error, ErrorKind, Result};

/// Longest volume name in bytes.
pub const MAX_NAME: usize = 128;
/// Most volumes in one pool.
pub const MAX_VOLUMES: u32 = 1 << 16;

/// A volume as listed in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirVolume {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Virtual size in bytes.
    pub size: u64,
    /// (page index, page number) of its mapping pages.
    pub pages: Vec<(u64, u64)>,
}

/// The decoded directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dir {
    /// Data blocks the space map covers.
    pub data_blocks: u64,
    /// (page index, page number) of the space map.
    pub sm_pages: Vec<(u64, u64)>,
    /// Volumes.
    pub volumes: Vec<DirVolume>,
}

fn put<T: IntoBytes + Immutable>(out: &mut Vec<u8>, record: T) {
    out.extend_from_slice(record.as_bytes());
}

fn put_pages(out: &mut Vec<u8>, arr: &PagedArray) {
    let pages: Vec<DirPageRef> =
        arr.pages().map(|(k, p)| DirPageRef { index: Le64::new(k), loc: Le64::new(p.loc) }).collect();
    put(out, DirCount64 { count: Le64::new(pages.len() as u64) });
    out.extend_from_slice(pages.as_bytes());
}

/// Encode the directory of `st` (page locations as they are now).
pub fn encode(st: &PoolState) -> Vec<u8> {
    let mut out = Vec::new();
    put(&mut out, DirCount64 { count: Le64::new(st.sb.data_blocks) });
    put_pages(&mut out, &st.sm);
    put(&mut out, DirVolumeCount { count: Le32::new(st.volumes.len() as u32) });
    for v in st.volumes.values() {
        put(&mut out, DirVolumeHead { id: Le64::new(v.id), name_len: Le16::new(v.name.len() as u16) });
        out.extend_from_slice(v.name.as_bytes());
        put(&mut out, DirVolumeSize { size: Le64::new(v.size) });
        put_pages(&mut out, &v.map);
    }
    out
}

struct Reader<'a> {
    b: &'a [u8],
}

fn truncated(what: &str) -> Error {
    Error::new(ErrorKind::Corrupt, format!("thin directory: truncated at {what}"))
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let (s, rest) = self.b.split_at_checked(n).ok_or_else(|| truncated(what))?;
        self.b = rest;
        Ok(s)
    }

    fn record<T: FromBytes + KnownLayout + Immutable>(&mut self, what: &str) -> Result<T> {
        let (r, rest) = T::read_from_prefix(self.b).map_err(|_| truncated(what))?;
        self.b = rest;
        Ok(r)
    }

    fn pages(&mut self, max_index: u64, what: &str) -> Result<Vec<(u64, u64)>> {
        let n = self.record::<DirCount64>(what)?.count.get();
        if n > max_index || n > (self.b.len() / size_of::<DirPageRef>()) as u64 {
            return Err(Error::new(ErrorKind::Corrupt, format!("thin directory: {what}: {n} pages is too many")));
        }
        let mut v = Vec::with_capacity(n as usize);
        let mut last = None;
        for _ in 0..n {
            let r = self.record::<DirPageRef>(what)?;
            let (k, loc) = (r.index.get(), r.loc.get());
            if k >= max_index || last.is_some_and(|l| k <= l) {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("thin directory: {what}: page index {k} out of order or range"),
                ));
            }
            last = Some(k);
            v.push((k, loc));
        }
        Ok(v)
    }
}

/// Decode directory bytes for a pool of `data_blocks` blocks of `block_size` bytes.
pub fn decode(b: &[u8], data_blocks: u64, block_size: u64) -> Result<Dir> {
    let mut r = Reader { b };
    let blocks = r.record::<DirCount64>("data block count")?.count.get();
    if blocks != data_blocks {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!("thin directory: space map covers {blocks} blocks, superblock says {data_blocks}"),
        ));
    }
    let sm_pages = r.pages(PagedArray::page_count(data_blocks), "space map")?;
    let n = r.record::<DirVolumeCount>("volume count")?.count.get();
    if n > MAX_VOLUMES {
        return Err(Error::new(ErrorKind::Corrupt, format!("thin directory: {n} volumes is too many")));
    }
    let mut volumes: Vec<DirVolume> = Vec::new();
    for _ in 0..n {
        let head = r.record::<DirVolumeHead>("volume id and name length")?;
        let (id, len) = (head.id.get(), usize::from(head.name_len.get()));
        if len == 0 || len > MAX_NAME {
            return Err(Error::new(ErrorKind::Corrupt, format!("thin directory: volume {id}: name length {len}")));
        }
        let name = std::str::from_utf8(r.take(len, "volume name")?)
            .map_err(|_| Error::new(ErrorKind::Corrupt, format!("thin directory: volume {id}: name is not UTF-8")))?
            .to_string();
        let size = r.record::<DirVolumeSize>("volume size")?.size.get();
        if size == 0 || size > super::MAX_VOLUME_SIZE {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("thin directory: volume '{name}': size {size} out of range"),
            ));
        }
        let pages = r.pages(PagedArray::page_count(size.div_ceil(block_size)), "volume mapping")?;
        if volumes.iter().any(|v| v.id == id || v.name == name) {
            return Err(Error::new(ErrorKind::Corrupt, format!("thin directory: volume '{name}' ({id}) listed twice")));
        }
        volumes.push(DirVolume { id, name, size, pages });
    }
    Ok(Dir { data_blocks, sm_pages, volumes })
}
