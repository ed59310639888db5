//! A sleep for rate limiting (the engine has no timers): a helper thread wakes the task.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Resolves once `d` has passed.
pub fn sleep(d: Duration) -> Sleep {
    Sleep { deadline: Instant::now() + d, armed: None }
}

/// The future [`sleep`] returns.
pub struct Sleep {
    deadline: Instant,
    armed: Option<Arc<AtomicBool>>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        if now >= self.deadline {
            return Poll::Ready(());
        }
        if self.armed.as_ref().is_none_or(|f| f.load(Ordering::Acquire)) {
            let fired = Arc::new(AtomicBool::new(false));
            let (f2, waker, left) = (fired.clone(), cx.waker().clone(), self.deadline - now);
            std::thread::spawn(move || {
                std::thread::sleep(left);
                f2.store(true, Ordering::Release);
                waker.wake();
            });
            self.armed = Some(fired);
        }
        Poll::Pending
    }
}
