//! `PoolState`: the pool's metadata in memory — the space map, every volume's mapping, the data
//! block allocator and the metadata page allocator — and the two halves of a commit that touch
//! it: `prepare_commit` (assign new pages to what changed, encode them) and `finish_commit`.
//!
//! Held under a `std::sync::Mutex` that is never kept across an `.await`.

use std::collections::{BTreeMap, HashSet};
use std::task::Waker;

use super::dir;
use super::format::{self, Superblock, KIND_ARRAY, KIND_DIR, PAGE_PAYLOAD, SB_PAGES};
use super::paged::PagedArray;
use blockdev::int_hash::IntMap;
use blockdev::{Error, ErrorKind, Result};

/// Fresh (never written) blocks one commit reserves for allocation without zero-filling.
const FRESH_RESERVE: u64 = 1024;

/// One volume (or snapshot) in memory.
pub struct VolumeState {
    /// Stable id.
    pub id: u64,
    /// Unique name.
    pub name: String,
    /// Virtual size in bytes.
    pub size: u64,
    /// Virtual block -> data block + 1 (0: unmapped).
    pub map: PagedArray,
    /// Virtual blocks with a write or discard in progress.
    pub busy: HashSet<u64>,
    /// Open handles (a volume in use cannot be removed).
    pub open: u32,
    /// Write, write-zeroes and discard requests in progress (each counted once, however many
    /// blocks it spans).
    pub writers: u32,
    /// A snapshot is being taken: new write requests wait until it is done.
    pub suspended: bool,
}

impl VolumeState {
    /// A volume with nothing in progress.
    pub fn new(id: u64, name: String, size: u64, map: PagedArray) -> VolumeState {
        VolumeState { id, name, size, map, busy: HashSet::new(), open: 0, writers: 0, suspended: false }
    }

    /// Mapped virtual blocks.
    pub fn mapped(&self) -> u64 {
        self.map.nonzero().count() as u64
    }
}

/// What the allocator gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alloc {
    /// A block reserved for the caller; `zeroed` when it is known to read zeros.
    Block {
        /// Data block index.
        block: u64,
        /// Never written since the pool was made.
        zeroed: bool,
    },
    /// No block is free now, but one will be after a commit.
    NeedCommit,
    /// The pool is full.
    NoSpace,
}

/// Encoded pages and the superblock of one commit, to write in that order.
pub struct CommitPlan {
    /// Transaction id being committed.
    pub txid: u64,
    /// (page number, page bytes).
    pub pages: Vec<(u64, Vec<u8>)>,
    /// The superblock that makes it current.
    pub sb: Superblock,
    /// Directory pages of this commit.
    dir_pages: Vec<u64>,
}

/// The pool's metadata in memory.
pub struct PoolState {
    /// The committed superblock (geometry; the transaction fields are the last commit's).
    pub sb: Superblock,
    /// Reference count per data block.
    pub sm: PagedArray,
    /// Volumes by id.
    pub volumes: BTreeMap<u64, VolumeState>,
    /// Id of the next new volume.
    pub next_volume_id: u64,
    /// Reusable data blocks (refcount 0, free since a committed transaction).
    pub free: Vec<u64>,
    /// Those of `free` (or `deferred`) known to read zeros: discarded on a data device whose
    /// discard reads back zeros, and not written since.
    free_zeroed: HashSet<u64>,
    /// Next never-written block to hand out.
    pub fresh_next: u64,
    /// Blocks freed since the last commit snapshot / by the commit in flight.
    pub freed_now: Vec<u64>,
    freed_in_commit: Vec<u64>,
    /// Blocks allocated since the last commit snapshot / by the commit in flight.
    pub new_blocks: HashSet<u64>,
    /// Blocks newly mapped by the commit in flight.
    pub new_in_commit: HashSet<u64>,
    /// Blocks that stopped being shared since the last commit snapshot / by the commit in
    /// flight: still shared in the last commit, so never written in place until it changes.
    pub unshared_now: HashSet<u64>,
    unshared_in_commit: HashSet<u64>,
    meta_used: Vec<bool>,
    meta_free: u64,
    meta_cursor: u64,
    meta_release_now: Vec<u64>,
    meta_release_in_commit: Vec<u64>,
    dir_pages: Vec<u64>,
    /// Something changed since the last commit snapshot.
    pub meta_dirty: bool,
    /// A commit failed: the pool refuses writes until reopened.
    pub failed: Option<String>,
    /// Commit tickets handed out.
    pub gen_requested: u64,
    /// Highest ticket whose commit finished.
    pub gen_done: u64,
    /// A commit is running.
    pub committing: bool,
    /// Tasks waiting for a commit or a busy block.
    pub waiters: Vec<Waker>,
    /// Blocks whose stored refcount exceeded their references at open.
    pub leaked: u64,
    /// Data blocks with reads in flight, and how many.
    pins: IntMap<u64, u32>,
    /// Freed blocks held back until the reads in flight on them finish.
    deferred: HashSet<u64>,
    /// The low-water warning was logged (reset when space is back above the mark).
    low_water_warned: bool,
    /// The low-water mark: percent of the data blocks (see `Pool::set_low_water`).
    pub low_water_pct: u8,
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Corrupt, msg)
}

impl PoolState {
    /// A state for superblock `sb` with nothing loaded yet.
    pub fn new(sb: Superblock) -> PoolState {
        let mut meta_used = vec![false; sb.meta_pages as usize];
        for u in meta_used.iter_mut().take(SB_PAGES as usize) {
            *u = true;
        }
        PoolState {
            sm: PagedArray::new(sb.data_blocks),
            volumes: BTreeMap::new(),
            next_volume_id: sb.next_volume_id,
            free: Vec::new(),
            free_zeroed: HashSet::new(),
            fresh_next: sb.zero_from,
            freed_now: Vec::new(),
            freed_in_commit: Vec::new(),
            new_blocks: HashSet::new(),
            new_in_commit: HashSet::new(),
            unshared_now: HashSet::new(),
            unshared_in_commit: HashSet::new(),
            meta_free: sb.meta_pages - SB_PAGES,
            meta_used,
            meta_cursor: SB_PAGES,
            meta_release_now: Vec::new(),
            meta_release_in_commit: Vec::new(),
            dir_pages: Vec::new(),
            meta_dirty: false,
            failed: None,
            gen_requested: 0,
            gen_done: 0,
            committing: false,
            waiters: Vec::new(),
            leaked: 0,
            pins: IntMap::default(),
            deferred: HashSet::new(),
            low_water_warned: false,
            low_water_pct: crate::metrics::DEFAULT_LOW_WATER_PCT,
            sb,
        }
    }

    /// Mark a page as in use while loading; a page referenced twice is corruption.
    pub fn claim_page(&mut self, loc: u64, what: &str) -> Result<()> {
        if loc < SB_PAGES || loc >= self.sb.meta_pages {
            return Err(corrupt(format!("{what}: page {loc} outside the metadata area")));
        }
        if self.meta_used[loc as usize] {
            return Err(corrupt(format!("{what}: page {loc} is referenced twice")));
        }
        self.meta_used[loc as usize] = true;
        self.meta_free -= 1;
        Ok(())
    }

    /// Record the loaded directory chain.
    pub fn set_dir_pages(&mut self, pages: Vec<u64>) {
        self.dir_pages = pages;
    }

    /// Build the free list from the space map (after loading; blocks below `fresh_next` with
    /// refcount 0).
    pub fn rebuild_free_list(&mut self) {
        self.free = (0..self.fresh_next).rev().filter(|&b| self.sm.get(b) == 0).collect();
        self.free_zeroed.clear();
    }

    /// Free data blocks that now read zeros (discarded after the commit that freed them).
    pub fn mark_zeroed(&mut self, blocks: &[u64]) {
        self.free_zeroed.extend(blocks.iter().copied());
    }

    /// Free blocks known to read zeros (tests and reports).
    pub fn zeroed_free_blocks(&self) -> usize {
        self.free_zeroed.len()
    }

    /// A read of data block `block` starts: it is not reused before `unpin`.
    pub fn pin(&mut self, block: u64) {
        *self.pins.entry(block).or_default() += 1;
    }

    /// A read of data block `block` finished. True when that made a freed block allocatable.
    pub fn unpin(&mut self, block: u64) -> bool {
        if let Some(n) = self.pins.get_mut(&block) {
            *n -= 1;
            if *n == 0 {
                self.pins.remove(&block);
                if !self.deferred.is_empty() && self.deferred.remove(&block) {
                    self.free.push(block);
                    return true;
                }
            }
        }
        false
    }

    /// Register a task to wake at the next `wake_all`, once however often it is polled (a task
    /// woken twice is polled twice; without this each poll would add a waker and the list would
    /// grow with every wake-up).
    pub fn park(&mut self, waker: &Waker) {
        if !self.waiters.iter().any(|w| w.will_wake(waker)) {
            self.waiters.push(waker.clone());
        }
    }

    /// Wake every waiting task.
    pub fn wake_all(&mut self) {
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }

    /// Find a volume by name.
    pub fn volume_id(&self, name: &str) -> Result<u64> {
        self.volumes
            .values()
            .find(|v| v.name == name)
            .map(|v| v.id)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("thin volume '{name}' does not exist")))
    }

    /// Data blocks that can be allocated now or after the next commit.
    pub fn available_blocks(&self) -> u64 {
        (self.free.len() + self.freed_now.len() + self.freed_in_commit.len() + self.deferred.len()) as u64
            + self.sb.data_blocks.saturating_sub(self.fresh_next)
    }

    /// True when less than the low-water share (a tenth unless set) of the pool is available.
    pub fn below_low_water(&self) -> bool {
        u128::from(self.available_blocks()) * 100 < u128::from(self.sb.data_blocks) * u128::from(self.low_water_pct)
    }

    /// Reserve a data block.
    pub fn alloc(&mut self) -> Alloc {
        let low = self.below_low_water();
        if low && !self.low_water_warned {
            tracing::warn!(
                "thin pool {}: below the low-water mark of {}% ({} of {} data blocks available); grow the pool",
                self.sb.uuid.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                self.low_water_pct,
                self.available_blocks(),
                self.sb.data_blocks
            );
        }
        self.low_water_warned = low;
        if self.fresh_next < self.sb.zero_from {
            let block = self.fresh_next;
            self.fresh_next += 1;
            return Alloc::Block { block, zeroed: true };
        }
        if let Some(block) = self.free.pop() {
            let zeroed = self.free_zeroed.remove(&block);
            return Alloc::Block { block, zeroed };
        }
        if self.fresh_next < self.sb.data_blocks || !self.freed_now.is_empty() || !self.freed_in_commit.is_empty() {
            self.meta_dirty = true; // the commit must run even if nothing else changed
            Alloc::NeedCommit
        } else {
            Alloc::NoSpace
        }
    }

    /// Give back a reserved block that was never mapped (its contents are no longer known).
    pub fn unreserve(&mut self, block: u64) {
        self.free_zeroed.remove(&block);
        self.free.push(block);
    }

    /// Drop one reference to `block`; at zero it is free once the next commit lands.
    pub fn dec_ref(&mut self, block: u64) {
        let rc = self.sm.get(block);
        if rc == 0 {
            tracing::error!("thin pool: refcount of data block {block} already 0");
            return;
        }
        self.sm.set(block, rc - 1);
        if rc == 1 {
            self.freed_now.push(block);
        } else {
            self.unshared_now.insert(block);
        }
        self.meta_dirty = true;
    }

    /// Add one reference to `block`.
    pub fn inc_ref(&mut self, block: u64) {
        let rc = self.sm.get(block);
        self.sm.set(block, rc.saturating_add(1));
        self.meta_dirty = true;
    }

    /// Map virtual block `vb` of volume `id` to `entry` (data block + 1, or 0), dropping the old
    /// mapping's reference. The caller has already counted the new reference.
    pub fn set_mapping(&mut self, id: u64, vb: u64, entry: u64) {
        let Some(vol) = self.volumes.get_mut(&id) else { return };
        if vb >= vol.map.len() {
            return;
        }
        let old = vol.map.get(vb);
        vol.map.set(vb, entry);
        if old != 0 {
            self.dec_ref(old - 1);
        }
        self.meta_dirty = true;
    }

    /// Drop a volume: release its references and its metadata pages.
    pub fn drop_volume(&mut self, id: u64) {
        let Some(vol) = self.volumes.remove(&id) else { return };
        for (_, e) in vol.map.nonzero() {
            self.dec_ref(e - 1);
        }
        self.meta_release_now.extend(vol.map.locs());
        self.meta_dirty = true;
    }

    /// Change a volume's virtual size, unmapping what falls off the end.
    pub fn resize_volume(&mut self, id: u64, size: u64) {
        let bs = u64::from(self.sb.block_size);
        let Some(vol) = self.volumes.get_mut(&id) else { return };
        let blocks = size.div_ceil(bs);
        let dropped: Vec<u64> = vol.map.nonzero().filter(|(vb, _)| *vb >= blocks).map(|(_, e)| e - 1).collect();
        let released = vol.map.resize(blocks);
        vol.size = size;
        self.meta_release_now.extend(released);
        for b in dropped {
            self.dec_ref(b);
        }
        self.meta_dirty = true;
    }

    /// Extend the pool to `blocks` data blocks; `zeroed` when the new ones read zeros.
    pub fn grow_data(&mut self, blocks: u64, zeroed: bool) {
        let old = self.sb.data_blocks;
        if blocks <= old {
            return;
        }
        self.sm.resize(blocks);
        self.sb.data_blocks = blocks;
        if !zeroed {
            // Nothing from the old fresh region on is known to be zero any more.
            self.free.extend((self.fresh_next..blocks).rev());
            self.fresh_next = blocks;
        }
        self.meta_dirty = true;
    }

    fn alloc_page(&mut self) -> u64 {
        let n = self.sb.meta_pages;
        loop {
            if self.meta_cursor >= n {
                self.meta_cursor = SB_PAGES;
            }
            let at = self.meta_cursor;
            self.meta_cursor += 1;
            if !self.meta_used[at as usize] {
                self.meta_used[at as usize] = true;
                self.meta_free -= 1;
                return at;
            }
        }
    }

    /// Free metadata pages.
    pub fn meta_free_pages(&self) -> u64 {
        self.meta_free
    }

    fn dirty_pages(&self) -> u64 {
        let count = |a: &PagedArray| a.pages().filter(|(_, p)| p.dirty).count() as u64;
        count(&self.sm) + self.volumes.values().map(|v| count(&v.map)).sum::<u64>()
    }

    /// First half of a commit: give every changed page a new place, encode it and the
    /// directory, and build the superblock. Refuses (changing nothing) when metadata space is
    /// short.
    pub fn prepare_commit(&mut self) -> Result<CommitPlan> {
        let txid = self.sb.txid + 1;
        let dir_len = dir::encode(self).len();
        let dir_need = dir_len.div_ceil(PAGE_PAYLOAD).max(1) as u64;
        let need = self.dirty_pages() + dir_need;
        if need > self.meta_free {
            return Err(Error::new(
                ErrorKind::NoSpace,
                format!("thin pool: metadata full (commit needs {need} pages, {} free)", self.meta_free),
            ));
        }
        let mut pages = Vec::new();
        let mut release = std::mem::take(&mut self.meta_release_now);
        let mut arrays: Vec<&mut PagedArray> = vec![&mut self.sm];
        arrays.extend(self.volumes.values_mut().map(|v| &mut v.map));
        let mut to_write: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut olds = Vec::new();
        let mut assigned = 0u64;
        for arr in arrays {
            for (_, p) in arr.pages_mut().filter(|(_, p)| p.dirty) {
                if p.loc != 0 {
                    olds.push(p.loc);
                }
                p.loc = u64::MAX; // placeholder, assigned below
                p.dirty = false;
                assigned += 1;
                to_write.push((0, format::entries_payload(&p.entries)));
            }
        }
        let locs: Vec<u64> = (0..assigned).map(|_| self.alloc_page()).collect();
        let mut it = locs.iter();
        let mut arrays: Vec<&mut PagedArray> = vec![&mut self.sm];
        arrays.extend(self.volumes.values_mut().map(|v| &mut v.map));
        for arr in arrays {
            for (_, p) in arr.pages_mut().filter(|(_, p)| p.loc == u64::MAX) {
                p.loc = *it.next().expect("one location per dirty page");
            }
        }
        for ((_, payload), loc) in to_write.iter().zip(&locs) {
            pages.push((*loc, format::encode_page(KIND_ARRAY, *loc, txid, 0, 0, payload)));
        }
        release.extend(olds);
        release.extend(self.dir_pages.iter().copied());
        let dir_bytes = dir::encode(self);
        let chunks: Vec<&[u8]> = dir_bytes.chunks(PAGE_PAYLOAD).collect();
        let n_dir = chunks.len().max(1);
        let dir_pages: Vec<u64> = (0..n_dir).map(|_| self.alloc_page()).collect();
        for (i, loc) in dir_pages.iter().enumerate() {
            let chunk = chunks.get(i).copied().unwrap_or(&[]);
            let next = dir_pages.get(i + 1).copied().unwrap_or(0);
            pages.push((*loc, format::encode_page(KIND_DIR, *loc, txid, chunk.len() as u32, next, chunk)));
        }
        self.meta_release_in_commit = release;
        self.freed_in_commit.append(&mut self.freed_now);
        self.new_in_commit.extend(self.new_blocks.drain());
        self.unshared_in_commit.extend(self.unshared_now.drain());
        self.meta_dirty = false;
        let sb = Superblock {
            txid,
            root: dir_pages[0],
            zero_from: (self.fresh_next + FRESH_RESERVE).min(self.sb.data_blocks).max(self.sb.zero_from),
            next_volume_id: self.next_volume_id,
            ..self.sb
        };
        Ok(CommitPlan { txid, pages, sb, dir_pages })
    }

    /// Data blocks freed by the commit in flight (to discard on the data device once it lands).
    pub fn freed_by_commit(&self) -> Vec<u64> {
        self.freed_in_commit.clone()
    }

    /// Second half of a successful commit: the new superblock is on disk.
    pub fn finish_commit(&mut self, plan: CommitPlan) {
        self.sb = plan.sb;
        for loc in std::mem::take(&mut self.meta_release_in_commit) {
            if let Some(u) = self.meta_used.get_mut(loc as usize) {
                if *u {
                    *u = false;
                    self.meta_free += 1;
                }
            }
        }
        self.dir_pages = plan.dir_pages;
        for b in std::mem::take(&mut self.freed_in_commit) {
            if self.pins.contains_key(&b) {
                self.deferred.insert(b);
            } else {
                self.free.push(b);
            }
        }
        self.new_in_commit.clear();
        self.unshared_in_commit.clear();
    }

    /// True when `block` may be written in place: one reference now, and not shared in the
    /// last commit either (otherwise a crash would bring back a sharer that sees the write).
    pub fn writable_in_place(&self, block: u64) -> bool {
        self.sm.get(block) == 1 && !self.unshared_now.contains(&block) && !self.unshared_in_commit.contains(&block)
    }
}
