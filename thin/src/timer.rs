//! A process-wide timer thread that wakes tasks at a deadline (a write waiting a bounded time
//! for free space). The io engine has no timers; one thread here serves every pool, sleeping
//! until the earliest deadline. It starts on first use.

use std::sync::{Condvar, Mutex, OnceLock};
use std::task::Waker;
use std::time::Instant;

struct Timer {
    due: Mutex<Vec<(Instant, Waker)>>,
    cond: Condvar,
}

fn timer() -> Option<&'static Timer> {
    static TIMER: OnceLock<Option<&'static Timer>> = OnceLock::new();
    *TIMER.get_or_init(|| {
        let t: &'static Timer = Box::leak(Box::new(Timer { due: Mutex::new(Vec::new()), cond: Condvar::new() }));
        match std::thread::Builder::new().name("thin-timer".into()).spawn(move || run(t)) {
            Ok(_) => Some(t),
            Err(e) => {
                tracing::error!("thin pool: cannot start the timer thread ({e}); waits for space end at once");
                None
            }
        }
    })
}

fn run(t: &Timer) {
    let mut due = t.due.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let now = Instant::now();
        let mut i = 0;
        while i < due.len() {
            if due[i].0 <= now {
                due.swap_remove(i).1.wake();
            } else {
                i += 1;
            }
        }
        due = match due.iter().map(|(at, _)| *at).min() {
            Some(next) => t.cond.wait_timeout(due, next - now).unwrap_or_else(|p| p.into_inner()).0,
            None => t.cond.wait(due).unwrap_or_else(|p| p.into_inner()),
        };
    }
}

/// Wake `waker` at `at` (or soon after). Returns false when there is no timer thread (the
/// caller should then not wait).
pub fn wake_at(at: Instant, waker: &Waker) -> bool {
    let Some(t) = timer() else { return false };
    t.due.lock().unwrap_or_else(|p| p.into_inner()).push((at, waker.clone()));
    t.cond.notify_one();
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::task::Wake;
    use std::time::Duration;

    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn wakes_at_the_deadline_not_before() {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let start = Instant::now();
        assert!(wake_at(start + Duration::from_millis(100), &waker));
        while !flag.0.load(Ordering::SeqCst) {
            assert!(start.elapsed() < Duration::from_secs(5), "never woken");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(start.elapsed() >= Duration::from_millis(100));
    }
}
