//! A write-back cache of metadata slices (parts of L2 tables or refcount blocks), keyed by their
//! offset in the image file. Entries track their own dirtiness; memory is bounded by the number of
//! slices, and only clean slices are evicted (the owner writes dirty ones back first).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Slice keys are file offsets: one multiply spreads them well enough (SipHash costs more than
/// the rest of a cached lookup).
#[derive(Default)]
struct OffsetHasher(u64);

impl Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (n >> 9).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

struct Slot {
    data: Vec<u8>,
    dirty: bool,
    used: u64,
}

/// A bounded cache of equally sized slices.
pub struct SliceCache {
    slice_size: usize,
    capacity: usize,
    slots: HashMap<u64, Slot, BuildHasherDefault<OffsetHasher>>,
    tick: u64,
    /// Number of dirty slots (kept so that asking costs nothing on every allocation).
    dirty: usize,
}

impl SliceCache {
    /// A cache of at most `capacity` slices of `slice_size` bytes.
    pub fn new(slice_size: usize, capacity: usize) -> Self {
        SliceCache { slice_size, capacity: capacity.max(4), slots: HashMap::default(), tick: 0, dirty: 0 }
    }

    /// Bytes per slice.
    pub fn slice_size(&self) -> usize {
        self.slice_size
    }

    /// The slice at file offset `off`, if cached (marks it recently used).
    pub fn get(&mut self, off: u64) -> Option<&[u8]> {
        self.tick += 1;
        let tick = self.tick;
        self.slots.get_mut(&off).map(|s| {
            s.used = tick;
            &s.data[..]
        })
    }

    /// True when the slice at `off` is cached.
    pub fn contains(&self, off: u64) -> bool {
        self.slots.contains_key(&off)
    }

    /// The slice at `off` for modification; it becomes dirty.
    pub fn get_mut(&mut self, off: u64) -> Option<&mut [u8]> {
        self.tick += 1;
        let tick = self.tick;
        let s = self.slots.get_mut(&off)?;
        s.used = tick;
        if !s.dirty {
            s.dirty = true;
            self.dirty += 1;
        }
        Some(&mut s.data[..])
    }

    /// Insert a slice read from disk (clean) or built in memory (`dirty`). Evicts the least
    /// recently used clean slice when full. When every slice is dirty the cache goes over its
    /// capacity by this one slice; [`SliceCache::needs_writeback`] then tells the owner to write
    /// back, after which the next insert evicts again.
    pub fn insert(&mut self, off: u64, data: Vec<u8>, dirty: bool) {
        debug_assert_eq!(data.len(), self.slice_size);
        if let Some(s) = self.slots.get_mut(&off) {
            if dirty || !s.dirty {
                s.data = data;
                if dirty && !s.dirty {
                    s.dirty = true;
                    self.dirty += 1;
                }
            }
            return;
        }
        while self.slots.len() >= self.capacity && self.evict_one() {}
        self.tick += 1;
        self.dirty += usize::from(dirty);
        self.slots.insert(off, Slot { data, dirty, used: self.tick });
    }

    fn evict_one(&mut self) -> bool {
        let victim = self.slots.iter().filter(|(_, s)| !s.dirty).min_by_key(|(_, s)| s.used).map(|(k, _)| *k);
        match victim {
            Some(k) => {
                self.slots.remove(&k);
                true
            }
            None => false,
        }
    }

    /// True when dirty slices fill the cache: write back before adding more.
    pub fn needs_writeback(&self) -> bool {
        self.dirty_count() >= self.capacity
    }

    /// Number of dirty slices.
    pub fn dirty_count(&self) -> usize {
        self.dirty
    }

    /// Copies of every dirty slice, sorted by offset (to write back).
    pub fn dirty_slices(&self) -> Vec<(u64, Vec<u8>)> {
        let mut v: Vec<_> = self.slots.iter().filter(|(_, s)| s.dirty).map(|(k, s)| (*k, s.data.clone())).collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// Mark the slice at `off` clean if its content still equals `written`.
    pub fn mark_clean(&mut self, off: u64, written: &[u8]) {
        if let Some(s) = self.slots.get_mut(&off) {
            if s.dirty && s.data == written {
                s.dirty = false;
                self.dirty -= 1;
            }
        }
    }

    /// Drop the slices of the cluster at `[off, off+len)` (freed metadata), dirty or not.
    pub fn forget_range(&mut self, off: u64, len: u64) {
        self.slots.retain(|k, _| *k < off || *k >= off + len);
        self.dirty = self.slots.values().filter(|s| s.dirty).count();
    }

    /// Drop everything (after a failed write-back, to re-read from disk).
    pub fn clear(&mut self) {
        self.slots.clear();
        self.dirty = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_cache_of_dirty_slices_asks_for_writeback() {
        let mut c = SliceCache::new(8, 4);
        for i in 0..4 {
            c.insert(i * 8, vec![0; 8], true);
        }
        assert!(c.needs_writeback());
        c.insert(100, vec![0; 8], false);
        assert!(c.contains(100));
        let d = c.dirty_slices();
        c.mark_clean(d[0].0, &d[0].1);
        c.insert(200, vec![1; 8], false);
        assert!(!c.contains(0) || !c.contains(100));
        assert!(!c.needs_writeback());
    }

    #[test]
    fn dirty_count_follows_every_change_of_state() {
        let mut c = SliceCache::new(8, 8);
        c.insert(0, vec![0; 8], false);
        c.insert(8, vec![0; 8], true);
        assert_eq!(c.dirty_count(), 1);
        c.get_mut(0).unwrap()[0] = 1;
        c.get_mut(0).unwrap()[1] = 1;
        c.insert(8, vec![2; 8], true);
        assert_eq!(c.dirty_count(), 2);
        c.mark_clean(8, &[0; 8]);
        assert_eq!(c.dirty_count(), 2, "a slice changed since it was copied stays dirty");
        c.mark_clean(8, &[2; 8]);
        c.mark_clean(8, &[2; 8]);
        assert_eq!(c.dirty_count(), 1);
        c.forget_range(0, 8);
        assert_eq!(c.dirty_count(), 0);
        c.insert(16, vec![0; 8], true);
        c.clear();
        assert_eq!(c.dirty_count(), 0);
    }

    #[test]
    fn least_recently_used_clean_slice_is_evicted() {
        let mut c = SliceCache::new(8, 4);
        for i in 0..4 {
            c.insert(i * 8, vec![0; 8], false);
        }
        c.get(0);
        c.insert(100, vec![0; 8], false);
        assert!(c.contains(0));
        assert!(!c.contains(8));
    }
}
