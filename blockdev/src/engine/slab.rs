//! The in-flight table: one slot per operation submitted to the ring.
//!
//! The table is allocated once at its full size and never moves, so the iovec arrays stored in
//! it stay at fixed addresses from the moment an SQE points at them until the completion.

use std::task::Waker;

use crate::IoBufs;

pub(crate) enum OpState {
    Free,
    /// Submitted; the waker of whoever awaits it.
    Waiting(Option<Waker>),
    /// Completed with this io_uring result.
    Done(i32),
    /// Its future was dropped before completion: free the slot when the CQE arrives.
    Orphaned,
}

pub(crate) struct OpSlot {
    pub(crate) state: OpState,
    /// Buffers the kernel may be using; dropped only after the completion.
    pub(crate) bufs: IoBufs,
}

pub(crate) struct OpSlab {
    slots: Box<[OpSlot]>,
    free: Vec<u32>,
    /// Wakers of futures waiting for a free slot.
    pub(crate) waiting_for_slot: Vec<Waker>,
}

impl OpSlab {
    pub(crate) fn new(capacity: u32) -> Self {
        let slots = (0..capacity).map(|_| OpSlot { state: OpState::Free, bufs: IoBufs::new() }).collect();
        OpSlab { slots, free: (0..capacity).rev().collect(), waiting_for_slot: Vec::new() }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Slots the kernel still owes a completion for.
    pub(crate) fn outstanding(&self) -> usize {
        self.slots.iter().filter(|s| matches!(s.state, OpState::Waiting(_) | OpState::Orphaned)).count()
    }

    /// Take a free slot for `bufs`, or hand them back when the table is full.
    pub(crate) fn alloc(&mut self, bufs: IoBufs) -> std::result::Result<u32, IoBufs> {
        let Some(idx) = self.free.pop() else { return Err(bufs) };
        let slot = &mut self.slots[idx as usize];
        slot.state = OpState::Waiting(None);
        slot.bufs = bufs;
        Ok(idx)
    }

    pub(crate) fn get_mut(&mut self, idx: u32) -> &mut OpSlot {
        &mut self.slots[idx as usize]
    }

    /// Release a slot; returns its buffers (dropped by the caller outside any borrow).
    pub(crate) fn release(&mut self, idx: u32) -> (IoBufs, Option<Waker>) {
        let slot = &mut self.slots[idx as usize];
        slot.state = OpState::Free;
        let bufs = std::mem::take(&mut slot.bufs);
        self.free.push(idx);
        (bufs, self.waiting_for_slot.pop())
    }

    /// Record a completion. Returns the waker to wake, and whether the slot was orphaned (and is
    /// now free, its buffers handed back).
    pub(crate) fn complete(&mut self, idx: u32, res: i32) -> Completion {
        let Some(slot) = self.slots.get_mut(idx as usize) else { return Completion::Unknown };
        match std::mem::replace(&mut slot.state, OpState::Done(res)) {
            OpState::Waiting(w) => Completion::Wake(w),
            OpState::Orphaned => {
                let (bufs, w) = self.release(idx);
                Completion::Freed(bufs, w)
            }
            other => {
                slot.state = other;
                Completion::Unknown
            }
        }
    }
}

pub(crate) enum Completion {
    Wake(Option<Waker>),
    Freed(IoBufs, Option<Waker>),
    Unknown,
}
