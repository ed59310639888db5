//! The per-thread task set: spawned futures, polled when their waker fires.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use super::wake::{task_waker, ReadyQueue};

type Task = Pin<Box<dyn Future<Output = ()>>>;

struct Slot {
    task: Option<Task>,
    waker: Waker,
}

/// Spawned tasks of one thread.
pub(crate) struct Tasks {
    slots: RefCell<Vec<Option<Slot>>>,
    free: RefCell<Vec<usize>>,
    scratch: RefCell<Vec<usize>>,
    live: std::cell::Cell<usize>,
}

/// Task id reserved for the future driven by `block_on`.
pub(crate) const MAIN_TASK: usize = usize::MAX;

impl Tasks {
    pub(crate) fn new() -> Self {
        Tasks {
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            scratch: RefCell::new(Vec::new()),
            live: std::cell::Cell::new(0),
        }
    }

    /// Number of tasks not yet finished.
    pub(crate) fn live(&self) -> usize {
        self.live.get()
    }

    /// Add a task and mark it ready.
    pub(crate) fn spawn(&self, queue: &Arc<ReadyQueue>, fut: Task) {
        let id = match self.free.borrow_mut().pop() {
            Some(id) => id,
            None => {
                let mut slots = self.slots.borrow_mut();
                slots.push(None);
                slots.len() - 1
            }
        };
        let waker = task_waker(id, queue);
        self.slots.borrow_mut()[id] = Some(Slot { task: Some(fut), waker });
        self.live.set(self.live.get() + 1);
        queue.push(id);
    }

    /// Poll every ready task once; returns whether the main task was woken.
    pub(crate) fn run_ready(&self, queue: &ReadyQueue) -> bool {
        let mut main_woken = false;
        let mut ids = std::mem::take(&mut *self.scratch.borrow_mut());
        queue.take(&mut ids);
        for &id in &ids {
            if id == MAIN_TASK {
                main_woken = true;
                continue;
            }
            // Take the task out so it can spawn or wake others while it runs.
            let (mut task, waker) = {
                let mut slots = self.slots.borrow_mut();
                match slots.get_mut(id).and_then(|s| s.as_mut()) {
                    Some(slot) => match slot.task.take() {
                        Some(t) => (t, slot.waker.clone()),
                        None => continue,
                    },
                    None => continue,
                }
            };
            let mut cx = Context::from_waker(&waker);
            match task.as_mut().poll(&mut cx) {
                Poll::Ready(()) => {
                    drop(task);
                    self.slots.borrow_mut()[id] = None;
                    self.free.borrow_mut().push(id);
                    self.live.set(self.live.get() - 1);
                }
                Poll::Pending => {
                    if let Some(Some(slot)) = self.slots.borrow_mut().get_mut(id) {
                        slot.task = Some(task);
                    }
                }
            }
        }
        *self.scratch.borrow_mut() = ids;
        main_woken
    }
}

/// The result slot of a spawned task, shared with its `JoinHandle`.
pub(crate) struct JoinState<T> {
    pub(crate) value: Option<T>,
    pub(crate) waiter: Option<Waker>,
}

/// Awaits the output of a task started with `IoCtx::spawn`.
pub struct JoinHandle<T> {
    pub(crate) state: Rc<RefCell<JoinState<T>>>,
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut st = self.state.borrow_mut();
        match st.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                st.waiter = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
