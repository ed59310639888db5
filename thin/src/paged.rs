//! `PagedArray`: a sparse array of `u64` held in memory as pages of `ENTRIES_PER_PAGE` entries,
//! each remembering where its last written copy lives on the metadata device and whether it has
//! changed since (copy-on-write: a changed page is written to a new place at the next commit).

use std::collections::BTreeMap;

use super::format::ENTRIES_PER_PAGE;

/// One page of entries.
#[derive(Clone)]
pub struct Page {
    /// Metadata page number of the committed copy, 0 when none exists yet.
    pub loc: u64,
    /// Changed since `loc` was written.
    pub dirty: bool,
    /// The entries.
    pub entries: Box<[u64; ENTRIES_PER_PAGE]>,
}

/// A sparse array of `len` entries; absent pages read as 0.
#[derive(Clone, Default)]
pub struct PagedArray {
    len: u64,
    pages: BTreeMap<u64, Page>,
}

const EPP: u64 = ENTRIES_PER_PAGE as u64;

impl PagedArray {
    /// An all-zero array of `len` entries.
    pub fn new(len: u64) -> Self {
        PagedArray { len, pages: BTreeMap::new() }
    }

    /// Number of pages an array of `len` entries spans.
    pub fn page_count(len: u64) -> u64 {
        len.div_ceil(EPP)
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a zero-length array.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entry `i` (0 past the end or in an absent page).
    pub fn get(&self, i: u64) -> u64 {
        if i >= self.len {
            return 0;
        }
        self.pages.get(&(i / EPP)).map_or(0, |p| p.entries[(i % EPP) as usize])
    }

    /// Set entry `i` (< len), creating and dirtying its page.
    pub fn set(&mut self, i: u64, v: u64) {
        debug_assert!(i < self.len);
        if v == 0 && !self.pages.contains_key(&(i / EPP)) {
            return;
        }
        let page = self.pages.entry(i / EPP).or_insert_with(|| Page {
            loc: 0,
            dirty: true,
            entries: Box::new([0; ENTRIES_PER_PAGE]),
        });
        page.entries[(i % EPP) as usize] = v;
        page.dirty = true;
    }

    /// Change the length; entries past a shorter length are dropped. Returns the metadata
    /// locations of dropped pages (to release after the next commit).
    pub fn resize(&mut self, len: u64) -> Vec<u64> {
        let mut released = Vec::new();
        if len < self.len {
            let keep_pages = Self::page_count(len);
            let dropped: Vec<u64> = self.pages.range(keep_pages..).map(|(k, _)| *k).collect();
            for k in dropped {
                if let Some(p) = self.pages.remove(&k) {
                    if p.loc != 0 {
                        released.push(p.loc);
                    }
                }
            }
            if let Some(p) = self.pages.get_mut(&(len / EPP)) {
                let from = (len % EPP) as usize;
                if p.entries[from..].iter().any(|&v| v != 0) {
                    p.entries[from..].fill(0);
                    p.dirty = true;
                }
            }
        }
        self.len = len;
        released
    }

    /// Install a page read from disk (index `k`, committed at `loc`).
    pub fn insert_loaded(&mut self, k: u64, loc: u64, entries: Box<[u64; ENTRIES_PER_PAGE]>) {
        self.pages.insert(k, Page { loc, dirty: false, entries });
    }

    /// Pages in index order.
    pub fn pages(&self) -> impl Iterator<Item = (u64, &Page)> {
        self.pages.iter().map(|(k, p)| (*k, p))
    }

    /// Pages in index order, mutably (commit assigns new locations).
    pub fn pages_mut(&mut self) -> impl Iterator<Item = (u64, &mut Page)> {
        self.pages.iter_mut().map(|(k, p)| (*k, p))
    }

    /// Every non-zero entry as (index, value).
    pub fn nonzero(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let len = self.len;
        self.pages.iter().flat_map(move |(k, p)| {
            p.entries
                .iter()
                .enumerate()
                .filter(|(_, v)| **v != 0)
                .map(move |(i, v)| (k * EPP + i as u64, *v))
                .filter(move |(i, _)| *i < len)
        })
    }

    /// A copy whose pages all need writing (a snapshot's mapping).
    pub fn clone_dirty(&self) -> PagedArray {
        let mut c = self.clone();
        for p in c.pages.values_mut() {
            p.loc = 0;
            p.dirty = true;
        }
        c
    }

    /// Locations of every page that has one.
    pub fn locs(&self) -> impl Iterator<Item = u64> + '_ {
        self.pages.values().filter(|p| p.loc != 0).map(|p| p.loc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_entries_read_zero_and_set_dirties() {
        let mut a = PagedArray::new(5000);
        assert_eq!(a.get(4000), 0);
        a.set(4000, 9);
        assert_eq!(a.get(4000), 9);
        assert!(a.pages().all(|(_, p)| p.dirty));
        assert_eq!(a.nonzero().collect::<Vec<_>>(), vec![(4000, 9)]);
    }

    #[test]
    fn shrinking_drops_entries_past_the_end() {
        let mut a = PagedArray::new(5000);
        a.set(10, 1);
        a.set(4999, 2);
        a.resize(11);
        assert_eq!(a.nonzero().collect::<Vec<_>>(), vec![(10, 1)]);
        a.resize(10);
        assert_eq!(a.nonzero().count(), 0);
    }
}
