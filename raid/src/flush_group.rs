//! Coalesced flushes for the write path (group commit). A RAID 5 write that must first make
//! every earlier completed write stable (its stripe was written since the last flush, or the
//! partial parity log has no free slot) asks for a flush that *starts after* its request. One
//! flush serves every request made before it started, so 32 writes in flight that each need one
//! cost one member flush, not 32 queued behind each other.

use std::sync::atomic::{AtomicU64, Ordering};

use blockdev::{IoCtx, Result};

use crate::core::Core;

/// Tickets and the newest ticket a completed flush covers.
#[derive(Default)]
pub(crate) struct FlushGroup {
    /// Requests so far (the newest ticket handed out).
    requested: AtomicU64,
    /// Held while a flush runs; holds the newest ticket a completed flush covers.
    covered: futures::lock::Mutex<u64>,
    /// Members failed so far.
    failures: AtomicU64,
    /// Failures a flush that started after them has covered.
    flushed_failures: AtomicU64,
}

impl FlushGroup {
    /// Return once a flush that started after this call has completed (members flushed, log
    /// entries and write-intent state of completed writes retired).
    pub async fn flush(&self, core: &Core, io: &IoCtx) -> Result<()> {
        let ticket = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let mut covered = self.covered.lock().await;
        if *covered >= ticket {
            return Ok(());
        }
        // Every ticket up to `upto` was requested before this flush starts.
        let upto = self.requested.load(Ordering::Acquire);
        core.flush_members(io, false).await?;
        *covered = upto;
        Ok(())
    }

    /// A member failed: the next write to complete flushes the others
    /// ([`FlushGroup::flush_after_failure`]).
    pub fn note_failure(&self) {
        self.failures.fetch_add(1, Ordering::AcqRel);
    }

    /// Members failed so far (a write notes it when it starts).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Acquire)
    }

    /// Called by a write that completed and had seen `since` failures when it started: flush
    /// the members if one failed while it ran, or since the last such flush. A write's log entry
    /// lists the members it modified; one that lists a member that fails before the write is
    /// stable cannot be replayed over that member's range (it cannot be read back), so until
    /// the write is stable a crash of another member could tear the stripe there, and the
    /// failed member's written range would reconstruct to neither old nor new data. The flush
    /// makes every completed write stable and retires its entry.
    pub async fn flush_after_failure(&self, core: &Core, io: &IoCtx, since: u64) -> Result<()> {
        let f = self.failures();
        if f == since && f <= self.flushed_failures.load(Ordering::Acquire) {
            return Ok(());
        }
        self.flush(core, io).await?;
        self.flushed_failures.fetch_max(f, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use blockdev::{BlockDev, IoCtx, OpenOptions, RawFile};

    use crate::{create, CreateOptions, Level};

    #[test]
    fn concurrent_requests_share_one_flush() {
        // Files, not RAM disks: their flushes complete asynchronously, so requests overlap.
        let io = IoCtx::new().unwrap();
        let dir = std::env::temp_dir().join(format!("raid-flush-group-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let members: Vec<(String, Arc<dyn BlockDev>)> = (0..3)
            .map(|i| {
                let p = dir.join(format!("m{i}"));
                std::fs::File::create(&p).unwrap().set_len(8 << 20).unwrap();
                (format!("m{i}"), Arc::new(RawFile::open(&p, OpenOptions::default()).unwrap()) as Arc<dyn BlockDev>)
            })
            .collect();
        let arr = io.block_on(create(&io, members, CreateOptions::new(Level::Raid5))).unwrap();
        let core = arr.core.clone();
        let before = core.epoch_now();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (c, io2) = (core.clone(), io.clone());
                io.spawn(async move { c.flush_group.flush(&c, &io2).await })
            })
            .collect();
        for t in tasks {
            io.block_on(t).unwrap();
        }
        let flushes = core.epoch_now() - before;
        let _ = std::fs::remove_dir_all(&dir);
        assert!((1..8).contains(&flushes), "8 concurrent requests ran {flushes} flushes");
    }
}
