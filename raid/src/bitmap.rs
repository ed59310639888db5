//! The write-intent bitmap: one bit per region of member data, on every member. A bit is set
//! (and on disk, FUA) before any write to its region is issued, so after a crash only regions
//! whose bit is set need a resync. Updates are coalesced: writers whose bits are already on disk
//! go straight on, and one bitmap write carries every bit set while it was waiting. Bits are
//! cleared after a flush, for regions with no write in flight and none completed since the flush
//! started. On disk the bitmap is its words, little-endian, with no header (`format.rs`).

use std::sync::Mutex;

use blockdev::{IoCtx, IoTag, Result, SharedBuf};

use crate::core::Core;
use crate::format;

struct State {
    mem: Vec<u64>,
    persisted: Vec<u64>,
    inflight: Vec<u32>,
    last_epoch: Vec<u64>,
}

/// The in-memory bitmap and its on-disk location.
pub(crate) struct Bitmap {
    region: u64,
    offset: u64,
    len: u64,
    nbits: usize,
    state: Mutex<State>,
    write_lock: futures::lock::Mutex<()>,
}

/// The regions a write marked; hand back to [`Bitmap::end_write`].
pub(crate) struct Marked {
    first: usize,
    last: usize,
}

impl Bitmap {
    /// A bitmap of `len` bytes at member offset `offset`, `region` bytes per bit, covering
    /// `data_size` bytes; `on_disk` is its current content (bits set there stay set).
    pub fn new(offset: u64, len: u64, region: u64, data_size: u64, on_disk: Option<&[u8]>) -> Bitmap {
        let nbits = data_size.div_ceil(region) as usize;
        let words = nbits.div_ceil(64);
        let mut mem = format::bitmap_words(on_disk.unwrap_or_default(), words);
        // Bits past the last region are not ours.
        if !nbits.is_multiple_of(64) {
            if let Some(last) = mem.last_mut() {
                *last &= (1u64 << (nbits % 64)) - 1;
            }
        }
        Bitmap {
            region,
            offset,
            len,
            nbits,
            state: Mutex::new(State {
                persisted: mem.clone(),
                // Bits found on disk stay set until a resync clears them all.
                last_epoch: (0..nbits).map(|i| if mem[i / 64] & (1 << (i % 64)) != 0 { u64::MAX } else { 0 }).collect(),
                mem,
                inflight: vec![0; nbits],
            }),
            write_lock: futures::lock::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Regions whose bit is set (to resync after a crash).
    pub fn dirty_regions(&self) -> Vec<(u64, u64)> {
        let st = self.state();
        (0..self.nbits)
            .filter(|&i| st.mem[i / 64] & (1 << (i % 64)) != 0)
            .map(|i| (i as u64 * self.region, self.region))
            .collect()
    }

    /// Mark member range `[off, off+len)` as being written; returns once the bits are on disk.
    pub async fn start_write(&self, core: &Core, io: &IoCtx, off: u64, len: u64) -> Result<Marked> {
        let first = (off / self.region) as usize;
        let last = ((off + len.max(1) - 1) / self.region) as usize;
        let last = last.min(self.nbits.saturating_sub(1));
        let mut need_write = false;
        {
            let mut st = self.state();
            for i in first..=last {
                st.inflight[i] += 1;
                st.mem[i / 64] |= 1 << (i % 64);
                if st.persisted[i / 64] & (1 << (i % 64)) == 0 {
                    need_write = true;
                }
            }
        }
        let marked = Marked { first, last };
        if need_write {
            let _g = self.write_lock.lock().await;
            let still = {
                let st = self.state();
                (first..=last).any(|i| st.persisted[i / 64] & (1 << (i % 64)) == 0)
            };
            if still {
                if let Err(e) = self.write_out(core, io, true).await {
                    self.end_write(marked, core.epoch_now());
                    return Err(e);
                }
            }
        }
        Ok(marked)
    }

    /// The write that marked `m` completed in epoch `epoch`.
    pub fn end_write(&self, m: Marked, epoch: u64) {
        let mut st = self.state();
        for i in m.first..=m.last {
            st.inflight[i] = st.inflight[i].saturating_sub(1);
            st.last_epoch[i] = st.last_epoch[i].max(epoch);
        }
    }

    /// After a flush that started in epoch `e`: clear bits of idle regions and write them out.
    pub async fn after_flush(&self, core: &Core, io: &IoCtx, e: u64) -> Result<()> {
        let changed = {
            let mut st = self.state();
            let mut changed = false;
            for i in 0..self.nbits {
                let bit = 1u64 << (i % 64);
                if st.mem[i / 64] & bit != 0 && st.inflight[i] == 0 && st.last_epoch[i] <= e {
                    st.mem[i / 64] &= !bit;
                    changed = true;
                }
            }
            changed
        };
        if changed {
            let _g = self.write_lock.lock().await;
            // FUA: the snapshot may carry bits another writer is waiting to see on disk.
            self.write_out(core, io, true).await?;
        }
        Ok(())
    }

    /// Clear every bit of regions with no write in flight (after a resync or a clean stop).
    pub async fn clear_all(&self, core: &Core, io: &IoCtx) -> Result<()> {
        {
            let mut st = self.state();
            let st = &mut *st;
            for (i, e) in st.last_epoch.iter_mut().enumerate() {
                if st.inflight[i] == 0 {
                    st.mem[i / 64] &= !(1 << (i % 64));
                    *e = 0;
                }
            }
        }
        let _g = self.write_lock.lock().await;
        self.write_out(core, io, true).await
    }

    /// Write the in-memory bitmap to every writable member (caller holds `write_lock`).
    async fn write_out(&self, core: &Core, io: &IoCtx, fua: bool) -> Result<()> {
        let snapshot = self.state().mem.clone();
        let bytes = format::bitmap_bytes(&snapshot, self.len as usize);
        let targets = core.writable_members();
        let futs: Vec<blockdev::IoFuture> = targets
            .iter()
            .map(|&m| {
                let mut b = SharedBuf::from_slice(&bytes);
                core.write_member_raw(io, m, self.offset, b.io(), fua, IoTag::meta("raid.bitmap"))
            })
            .collect();
        crate::core::write_members_tolerant(core, io, &targets, futs).await?;
        self.state().persisted = snapshot;
        Ok(())
    }
}
