//! Per-stripe async locks in a sharded table: writes to one stripe serialize their parity (or
//! mirror) update; different stripes never wait for each other, and no lock is global.
//!
//! A waiter parks its `Waker` in the entry; the guard's drop wakes the next one, which may live
//! on another thread (the engine's wakers work across threads). The shard mutex is a
//! `std::sync::Mutex` held only for a few instructions, never across an `.await`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use blockdev::int_hash::IntMap;

const SHARDS: usize = 64;

#[derive(Default)]
struct Entry {
    held: bool,
    waiters: VecDeque<Waker>,
}

/// The table of stripe locks.
pub struct StripeLocks {
    shards: Vec<Mutex<IntMap<u64, Entry>>>,
}

impl Default for StripeLocks {
    fn default() -> Self {
        StripeLocks { shards: (0..SHARDS).map(|_| Mutex::new(IntMap::default())).collect() }
    }
}

impl StripeLocks {
    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, IntMap<u64, Entry>> {
        let i = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait for the lock on stripe `key`.
    pub fn lock(self: &Arc<Self>, key: u64) -> LockFuture {
        LockFuture { table: self.clone(), key }
    }
}

/// Resolves to the guard once the stripe is ours.
pub struct LockFuture {
    table: Arc<StripeLocks>,
    key: u64,
}

impl Future for LockFuture {
    type Output = StripeGuard;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<StripeGuard> {
        let mut shard = self.table.shard(self.key);
        let e = shard.entry(self.key).or_default();
        if !e.held {
            e.held = true;
            drop(shard);
            return Poll::Ready(StripeGuard { table: self.table.clone(), key: self.key });
        }
        if !e.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            e.waiters.push_back(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Holds one stripe; dropping it lets the waiters compete again.
pub struct StripeGuard {
    table: Arc<StripeLocks>,
    key: u64,
}

impl Drop for StripeGuard {
    fn drop(&mut self) {
        let next = {
            let mut shard = self.table.shard(self.key);
            match shard.get_mut(&self.key) {
                Some(e) => {
                    e.held = false;
                    let next = std::mem::take(&mut e.waiters);
                    if next.is_empty() {
                        shard.remove(&self.key);
                    }
                    next
                }
                None => VecDeque::new(),
            }
        };
        // Wake every waiter: one wins, the rest park again. (A waiter whose future was dropped
        // cannot then strand the others.)
        for w in next {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockdev::IoCtx;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn second_locker_waits_until_first_releases() {
        let io = IoCtx::new().unwrap();
        let locks = Arc::new(StripeLocks::default());
        let order = Rc::new(Cell::new(0));
        let g = io.block_on(locks.lock(5));
        let (l2, o2) = (locks.clone(), order.clone());
        let h = io.spawn(async move {
            let _g = l2.lock(5).await;
            o2.set(o2.get() * 10 + 2);
        });
        let _other = io.block_on(locks.lock(6));
        order.set(1);
        drop(g);
        io.block_on(h);
        assert_eq!(order.get(), 12);
    }

    #[test]
    fn lock_wakes_a_waiter_on_another_thread() {
        let locks = Arc::new(StripeLocks::default());
        let io = IoCtx::new().unwrap();
        let g = io.block_on(locks.lock(1));
        let l2 = locks.clone();
        let t = std::thread::spawn(move || {
            let io = IoCtx::new().unwrap();
            io.block_on(async move {
                let _g = l2.lock(1).await;
            });
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(g);
        t.join().unwrap();
    }
}
