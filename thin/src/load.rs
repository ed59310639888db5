//! Loading a pool's committed metadata: pick the newest valid superblock copy, walk the
//! directory chain, read every array page, and audit reference counts against the mappings.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::dir;
use super::format::{self, Superblock, KIND_ARRAY, KIND_DIR, PAGE_PAYLOAD, PAGE_SIZE};
use super::metaio::read_pages;
use super::paged::PagedArray;
use super::state::{PoolState, VolumeState};
use blockdev::{BlockDev, Error, ErrorKind, IoCtx, IoTag, Result};

/// What an audit of the space map against the mappings found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    /// Problems that make the pool unsafe to use (references to free or out-of-range blocks).
    pub errors: Vec<String>,
    /// (block, stored refcount, references found) where the stored count is too high.
    pub leaks: Vec<(u64, u64, u64)>,
}

/// Read both superblock copies and return the newest valid one.
pub async fn read_superblock(io: &IoCtx, meta: &Arc<dyn BlockDev>) -> Result<Superblock> {
    let pages = read_pages(io, meta, &[0, 1], IoTag::meta("thin.superblock")).await?;
    let a = Superblock::decode(&pages[0]);
    let b = Superblock::decode(&pages[1]);
    match (a, b) {
        (Ok(a), Ok(b)) => Ok(if b.txid > a.txid { b } else { a }),
        (Ok(a), Err(_)) => Ok(a),
        (Err(_), Ok(b)) => Ok(b),
        (Err(e), Err(_)) => Err(e.context("thin pool: no valid superblock copy")),
    }
}

/// Check that the geometry in `sb` fits the devices.
pub fn check_geometry(sb: &Superblock, meta: &dyn BlockDev, data: &dyn BlockDev, shared: bool) -> Result<()> {
    let meta_bytes = sb.meta_pages * PAGE_SIZE as u64;
    let bad = |m: String| Err(Error::new(ErrorKind::Corrupt, format!("thin superblock: {m}")));
    if meta_bytes > meta.info().size {
        return bad(format!("metadata area ({meta_bytes} bytes) is larger than the metadata device"));
    }
    if shared && sb.data_offset < meta_bytes {
        return bad(format!("data offset {} overlaps the metadata area", sb.data_offset));
    }
    let end = sb.data_blocks.checked_mul(u64::from(sb.block_size)).and_then(|n| n.checked_add(sb.data_offset));
    if end.is_none_or(|e| e > data.info().size) {
        return bad(format!("{} data blocks reach past the end of the data device", sb.data_blocks));
    }
    Ok(())
}

async fn read_array(
    io: &IoCtx,
    meta: &Arc<dyn BlockDev>,
    st: &mut PoolState,
    len: u64,
    pages: &[(u64, u64)],
    what: &str,
) -> Result<PagedArray> {
    let mut arr = PagedArray::new(len);
    for (_, loc) in pages {
        st.claim_page(*loc, what)?;
    }
    let locs: Vec<u64> = pages.iter().map(|p| p.1).collect();
    let raw = read_pages(io, meta, &locs, IoTag::meta("thin.load")).await?;
    for ((k, loc), bytes) in pages.iter().zip(raw) {
        let view = format::decode_page(&bytes, *loc, KIND_ARRAY, st.sb.txid).map_err(|e| e.context(what))?;
        arr.insert_loaded(*k, *loc, format::page_entries(view.payload));
    }
    Ok(arr)
}

/// Load the committed state of the pool whose newest superblock is `sb`.
pub async fn load(io: &IoCtx, meta: &Arc<dyn BlockDev>, sb: Superblock) -> Result<PoolState> {
    let mut st = PoolState::new(sb);
    let mut bytes = Vec::new();
    let mut dir_pages = Vec::new();
    let mut seen = HashSet::new();
    let mut at = sb.root;
    while at != 0 {
        if !seen.insert(at) {
            return Err(Error::new(ErrorKind::Corrupt, format!("thin directory: page chain loops at page {at}")));
        }
        st.claim_page(at, "thin directory")?;
        let raw = read_pages(io, meta, &[at], IoTag::meta("thin.load")).await?;
        let view = format::decode_page(&raw[0], at, KIND_DIR, sb.txid)?;
        let used = view.used as usize;
        if used > PAGE_PAYLOAD {
            return Err(Error::new(ErrorKind::Corrupt, format!("thin directory page {at}: {used} bytes used")));
        }
        bytes.extend_from_slice(&view.payload[..used]);
        dir_pages.push(at);
        at = view.next;
    }
    st.set_dir_pages(dir_pages);
    let bs = u64::from(sb.block_size);
    let d = dir::decode(&bytes, sb.data_blocks, bs)?;
    st.sm = read_array(io, meta, &mut st, sb.data_blocks, &d.sm_pages, "thin space map").await?;
    for v in d.volumes {
        if v.id >= sb.next_volume_id {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("thin volume '{}': id {} not below next id", v.name, v.id),
            ));
        }
        let what = format!("thin volume '{}' mapping", v.name);
        let map = read_array(io, meta, &mut st, v.size.div_ceil(bs), &v.pages, &what).await?;
        let vs = VolumeState::new(v.id, v.name, v.size, map);
        st.volumes.insert(vs.id, vs);
    }
    Ok(st)
}

/// Compare every stored reference count with the references the mappings hold.
pub fn audit(st: &PoolState) -> Audit {
    let mut refs: HashMap<u64, u64> = HashMap::new();
    let mut out = Audit::default();
    for v in st.volumes.values() {
        for (vb, e) in v.map.nonzero() {
            let b = e - 1;
            if b >= st.sb.data_blocks {
                out.errors.push(format!("volume '{}' block {vb} maps to data block {b}, past the pool's end", v.name));
                continue;
            }
            *refs.entry(b).or_default() += 1;
        }
    }
    for (b, rc) in st.sm.nonzero() {
        let found = refs.get(&b).copied().unwrap_or(0);
        if rc > found {
            out.leaks.push((b, rc, found));
        }
    }
    let mut under: Vec<(u64, u64)> = refs.iter().filter(|(b, n)| st.sm.get(**b) < **n).map(|(b, n)| (*b, *n)).collect();
    under.sort_unstable();
    for (b, n) in under {
        out.errors.push(format!("data block {b} has refcount {} but {n} mapping(s) use it", st.sm.get(b)));
    }
    for (b, _, _) in &out.leaks {
        if *b >= st.sb.zero_from {
            out.errors.push(format!("data block {b} is counted but lies in the never-written region"));
        }
    }
    for (b, _) in refs.iter().filter(|(b, _)| **b >= st.sb.zero_from && **b < st.sb.data_blocks) {
        out.errors.push(format!("data block {b} is mapped but lies in the never-written region"));
    }
    out
}
