//! The sparse registered-file table of one ring, and the handles devices use to name files.
//!
//! A registered file saves the kernel a file-table lookup and reference count per operation.
//! Each ring registers a device's fd on first use. The registration holds a reference to the
//! open file (and so its OFD lock); when the device is dropped, every ring that registered it
//! unregisters it — at once on the dropping thread, at that ring's next turn on others.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::wake::ReadyQueue;

static NEXT_FILE_ID: AtomicU64 = AtomicU64::new(1);

/// Shared between a ring and the files it registered: slots to unregister, posted by other threads.
pub(crate) struct RingMailbox {
    pub(crate) unregister: Mutex<Vec<u32>>,
    pub(crate) queue: Arc<ReadyQueue>,
    pub(crate) owner: u64,
}

/// A file descriptor as devices hand it to the engine: the fd plus a process-unique id.
pub struct FileHandle {
    id: u64,
    fd: RawFd,
    rings: Mutex<Vec<(Weak<RingMailbox>, u32)>>,
}

impl FileHandle {
    /// Wrap `fd`, which must stay open for the life of the handle.
    pub fn new(fd: RawFd) -> Self {
        FileHandle { id: NEXT_FILE_ID.fetch_add(1, Ordering::Relaxed), fd, rings: Mutex::new(Vec::new()) }
    }

    /// The raw descriptor.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn note_registered(&self, mailbox: &Arc<RingMailbox>, slot: u32) {
        self.rings.lock().unwrap_or_else(|p| p.into_inner()).push((Arc::downgrade(mailbox), slot));
    }
}

impl Drop for FileHandle {
    fn drop(&mut self) {
        let rings = std::mem::take(&mut *self.rings.lock().unwrap_or_else(|p| p.into_inner()));
        for (mailbox, slot) in rings {
            if let Some(mb) = mailbox.upgrade() {
                mb.unregister.lock().unwrap_or_else(|p| p.into_inner()).push(slot);
                if mb.owner == super::wake::thread_token() {
                    super::unregister_now_on_this_thread(&mb);
                } else {
                    mb.queue.signal();
                }
            }
        }
    }
}

/// Which registered slot holds which file, for one ring.
pub(crate) struct FileTable {
    /// (file id, slot) pairs; a ring sees few files, so a linear scan beats hashing.
    by_id: Vec<(u64, u32)>,
    slot_owner: Vec<Option<u64>>,
    free: Vec<u32>,
}

impl FileTable {
    pub(crate) fn new(slots: u32) -> Self {
        FileTable { by_id: Vec::new(), slot_owner: vec![None; slots as usize], free: (0..slots).rev().collect() }
    }

    pub(crate) fn lookup(&self, id: u64) -> Option<u32> {
        self.by_id.iter().find(|(i, _)| *i == id).map(|&(_, slot)| slot)
    }

    pub(crate) fn take_free(&mut self, id: u64) -> Option<u32> {
        let slot = self.free.pop()?;
        self.by_id.push((id, slot));
        self.slot_owner[slot as usize] = Some(id);
        Some(slot)
    }

    pub(crate) fn release(&mut self, slot: u32) {
        if let Some(Some(id)) = self.slot_owner.get(slot as usize).copied() {
            self.by_id.retain(|(i, _)| *i != id);
            self.slot_owner[slot as usize] = None;
            self.free.push(slot);
        }
    }
}
