//! One process-wide timer that wakes tasks at a deadline: a thin write waiting a bounded time for
//! free space, a RAID rebuild keeping to its rate limit.
//!
//! The io engine has no timer op, and these waits are rare and coarse (milliseconds to
//! seconds), so one thread serves every ring: it keeps the wake-ups ordered by deadline and
//! sleeps on a condition variable until the earliest. It starts on first use. A registration
//! is removed when it is dropped, so a wait that ended early leaves nothing behind.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The wake-ups not yet due, keyed by deadline, then by registration order.
struct Due {
    wakers: BTreeMap<(Instant, u64), Waker>,
    next_id: u64,
}

struct Timer {
    due: Mutex<Due>,
    cond: Condvar,
}

impl Timer {
    fn lock(&self) -> MutexGuard<'_, Due> {
        // A poisoned lock is taken anyway: the map holds plain wakers.
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Start the timer thread now rather than at its first use (the daemon does so before its
/// threads are confined: a thread that may not start threads can still use timers).
pub fn start() {
    let _ = timer();
}

/// The timer thread's state, or `None` when the thread could not be started.
fn timer() -> Option<&'static Timer> {
    static TIMER: OnceLock<Option<&'static Timer>> = OnceLock::new();
    *TIMER.get_or_init(|| {
        let t: &'static Timer = Box::leak(Box::new(Timer {
            due: Mutex::new(Due { wakers: BTreeMap::new(), next_id: 0 }),
            cond: Condvar::new(),
        }));
        match crate::thread::spawn(crate::thread::ThreadKind::Timer, "strata-timer", move || run(t)) {
            Ok(_) => Some(t),
            Err(e) => {
                tracing::error!("cannot start the timer thread ({e}); timed waits end at once");
                None
            }
        }
    })
}

/// The timer thread: wake everything due (outside the lock, so a waker may register again),
/// then sleep until the earliest deadline left or a new earlier one.
fn run(t: &Timer) {
    let mut fired = Vec::new();
    let mut due = t.lock();
    loop {
        let now = Instant::now();
        while let Some(entry) = due.wakers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            fired.push(entry.remove());
        }
        if !fired.is_empty() {
            drop(due);
            fired.drain(..).for_each(Waker::wake);
            due = t.lock();
            continue;
        }
        due = match due.wakers.first_key_value().map(|(k, _)| k.0) {
            Some(next) => t.cond.wait_timeout(due, next - now).unwrap_or_else(|p| p.into_inner()).0,
            None => t.cond.wait(due).unwrap_or_else(|p| p.into_inner()),
        };
    }
}

/// A registered wake-up; dropping it cancels the wake-up if it has not happened yet.
#[must_use = "dropping the registration cancels the wake-up"]
#[derive(Debug)]
pub struct Registration {
    key: (Instant, u64),
}

impl Registration {
    /// The deadline this wake-up was registered for.
    pub fn deadline(&self) -> Instant {
        self.key.0
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(t) = timer() {
            t.lock().wakers.remove(&self.key);
        }
    }
}

/// Wake `waker` at `at` (or soon after, never before) unless the returned registration is
/// dropped first. `None` when there is no timer thread: the caller should then not wait.
pub fn wake_at(at: Instant, waker: &Waker) -> Option<Registration> {
    let t = timer()?;
    let mut due = t.lock();
    let id = due.next_id;
    due.next_id += 1;
    let key = (at, id);
    due.wakers.insert(key, waker.clone());
    // The thread sleeps until the earliest deadline; only a new earliest one changes that.
    if due.wakers.first_key_value().is_some_and(|(k, _)| *k == key) {
        t.cond.notify_one();
    }
    Some(Registration { key })
}

/// Resolves once `d` has passed.
pub fn sleep(d: Duration) -> Sleep {
    sleep_until(Instant::now() + d)
}

/// Resolves at `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep { deadline, reg: None }
}

/// The future [`sleep`] and [`sleep_until`] return. Without a timer thread it resolves at once.
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct Sleep {
    deadline: Instant,
    /// The wake-up and the waker it was registered with.
    reg: Option<(Registration, Waker)>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            self.reg = None;
            return Poll::Ready(());
        }
        if self.reg.as_ref().is_some_and(|(_, w)| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        // First poll, or polled by another task: register (again) with this waker.
        self.reg = None;
        match wake_at(self.deadline, cx.waker()) {
            Some(reg) => {
                self.reg = Some((reg, cx.waker().clone()));
                Poll::Pending
            }
            None => Poll::Ready(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// A waker that records when it was woken, under a name.
    struct Log {
        name: usize,
        woken: Arc<Mutex<Vec<(usize, Instant)>>>,
    }
    impl Wake for Log {
        fn wake(self: Arc<Self>) {
            self.woken.lock().unwrap().push((self.name, Instant::now()));
        }
    }

    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(10), "{what}: not done after 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Threads of this process named `name` (the test harness runs tests on threads of its own).
    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|c| c.trim_end() == name)
            .count()
    }

    fn threads() -> usize {
        std::fs::read_dir("/proc/self/task").unwrap().count()
    }

    #[test]
    fn wakes_at_the_deadline_not_before() {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let start = Instant::now();
        let _reg = wake_at(start + Duration::from_millis(100), &Waker::from(flag.clone())).expect("timer thread");
        wait_for("wake-up", || flag.0.load(Ordering::SeqCst));
        assert!(start.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn wake_ups_come_in_deadline_order_whatever_the_registration_order() {
        let woken = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now() + Duration::from_millis(50);
        // Registered latest first; two share a deadline (then registration order decides).
        let deadlines = [80u64, 60, 40, 40, 20, 0];
        let regs: Vec<_> = deadlines
            .iter()
            .enumerate()
            .map(|(name, &ms)| {
                let w = Waker::from(Arc::new(Log { name, woken: woken.clone() }));
                wake_at(start + Duration::from_millis(ms), &w).expect("timer thread")
            })
            .collect();
        wait_for("every wake-up", || woken.lock().unwrap().len() == deadlines.len());
        let got = woken.lock().unwrap().clone();
        let order: Vec<usize> = got.iter().map(|&(n, _)| n).collect();
        assert_eq!(order, [5, 4, 2, 3, 1, 0]);
        for (name, at) in got {
            assert!(at >= start + Duration::from_millis(deadlines[name]), "{name} woken early");
        }
        drop(regs);
    }

    #[test]
    fn a_dropped_registration_never_wakes() {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let reg = wake_at(Instant::now() + Duration::from_millis(30), &waker).expect("timer thread");
        // A later one that stays registered shows the timer ran past the dropped deadline.
        let later = Arc::new(Flag(AtomicBool::new(false)));
        let _keep = wake_at(Instant::now() + Duration::from_millis(90), &Waker::from(later.clone()));
        drop(reg);
        wait_for("the later wake-up", || later.0.load(Ordering::SeqCst));
        assert!(!flag.0.load(Ordering::SeqCst), "a cancelled wake-up fired");
    }

    #[test]
    fn many_sleepers_share_one_thread_and_each_waits_its_time() {
        let io = crate::IoCtx::new().unwrap();
        let before = threads();
        let start = Instant::now();
        let n = 500u64;
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let d = Duration::from_millis(100 + i % 50);
                io.spawn(async move {
                    sleep(d).await;
                    start.elapsed() >= d
                })
            })
            .collect();
        // Every task has polled its sleep once by now (they run at spawn or on the first turn).
        io.run_pending();
        let during = threads();
        // Other tests of this binary may start threads meanwhile; a thread per sleep would be 500.
        assert!(during < before + 50, "{before} threads before, {during} with {n} sleeps pending");
        assert_eq!(threads_named("strata-timer"), 1);
        for h in handles {
            assert!(io.block_on(h), "a sleep ended before its time");
        }
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_sleep_in_the_past_is_ready_at_once_and_a_dropped_one_never_wakes() {
        let io = crate::IoCtx::new().unwrap();
        io.block_on(sleep(Duration::ZERO));
        io.block_on(sleep_until(Instant::now() - Duration::from_millis(1)));
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut s = Box::pin(sleep(Duration::from_millis(30)));
        assert!(s.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
        drop(s);
        std::thread::sleep(Duration::from_millis(120));
        assert!(!flag.0.load(Ordering::SeqCst), "a dropped sleep woke its task");
    }
}
