//! The directory: the byte stream (split over chained `KIND_DIR` pages) that names every
//! metadata page in use — the space map's pages and, per volume, its id, name, size and mapping
//! pages. Decoding treats the bytes as untrusted: every count is bounded before anything is
//! allocated.

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

fn put_pages(out: &mut Vec<u8>, arr: &PagedArray) {
    let pages: Vec<(u64, u64)> = arr.pages().map(|(k, p)| (k, p.loc)).collect();
    out.extend_from_slice(&(pages.len() as u64).to_le_bytes());
    for (k, loc) in pages {
        out.extend_from_slice(&k.to_le_bytes());
        out.extend_from_slice(&loc.to_le_bytes());
    }
}

/// Encode the directory of `st` (page locations as they are now).
pub fn encode(st: &PoolState) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&st.sb.data_blocks.to_le_bytes());
    put_pages(&mut out, &st.sm);
    out.extend_from_slice(&(st.volumes.len() as u32).to_le_bytes());
    for v in st.volumes.values() {
        out.extend_from_slice(&v.id.to_le_bytes());
        out.extend_from_slice(&(v.name.len() as u16).to_le_bytes());
        out.extend_from_slice(v.name.as_bytes());
        out.extend_from_slice(&v.size.to_le_bytes());
        put_pages(&mut out, &v.map);
    }
    out
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8]> {
        if self.b.len() - self.at < n {
            return Err(Error::new(ErrorKind::Corrupt, format!("thin directory: truncated at {what}")));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(a))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2, what)?);
        Ok(u16::from_le_bytes(a))
    }
    fn pages(&mut self, max_index: u64, what: &str) -> Result<Vec<(u64, u64)>> {
        let n = self.u64(what)?;
        if n > max_index || n > (self.b.len() - self.at) as u64 / 16 {
            return Err(Error::new(ErrorKind::Corrupt, format!("thin directory: {what}: {n} pages is too many")));
        }
        let mut v = Vec::with_capacity(n as usize);
        let mut last = None;
        for _ in 0..n {
            let k = self.u64(what)?;
            let loc = self.u64(what)?;
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
    let mut r = Reader { b, at: 0 };
    let blocks = r.u64("data block count")?;
    if blocks != data_blocks {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!("thin directory: space map covers {blocks} blocks, superblock says {data_blocks}"),
        ));
    }
    let sm_pages = r.pages(PagedArray::page_count(data_blocks), "space map")?;
    let n = r.u32("volume count")?;
    if n > MAX_VOLUMES {
        return Err(Error::new(ErrorKind::Corrupt, format!("thin directory: {n} volumes is too many")));
    }
    let mut volumes: Vec<DirVolume> = Vec::new();
    for _ in 0..n {
        let id = r.u64("volume id")?;
        let len = r.u16("volume name length")? as usize;
        if len == 0 || len > MAX_NAME {
            return Err(Error::new(ErrorKind::Corrupt, format!("thin directory: volume {id}: name length {len}")));
        }
        let name = std::str::from_utf8(r.take(len, "volume name")?)
            .map_err(|_| Error::new(ErrorKind::Corrupt, format!("thin directory: volume {id}: name is not UTF-8")))?
            .to_string();
        let size = r.u64("volume size")?;
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
