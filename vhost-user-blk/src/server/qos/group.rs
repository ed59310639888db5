//! A throttle group: one set of buckets shared by its members (an export on its own is a group
//! of one), the requests waiting for their turn, and the one timer wake-up that admits them.
//!
//! A request that may start at once is counted and goes on. Otherwise it waits in its member's
//! queue, in order, and the group arms a single wake-up on the engine's timer
//! ([`blockdev::timer`]) for when the head may start; the wake-up admits as many waiting
//! requests as the budget allows, one per member in turn (as QEMU's throttle groups do), and
//! wakes their tasks, whose queue workers start them. No thread or timer per request, and
//! nothing polls.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use blockdev::timer::{wake_at, Registration};

use super::bucket::{Dir, Throttle};
use super::limits::Limits;

/// One set of limits and its buckets, shared by its members.
pub struct ThrottleGroup {
    /// Limits are set: requests of the members go through [`Gate::admit`]. Read on every
    /// request, written only when the limits change.
    on: AtomicBool,
    /// `throttle-group=NAME`, or `None` for an export's own.
    name: Option<String>,
    state: Mutex<State>,
    /// Wakes [`ThrottleGroup::on_timer`] (holds only a weak reference to the group).
    timer_waker: Waker,
}

struct State {
    limits: Limits,
    throttle: Throttle,
    epoch: Instant,
    members: Vec<Member>,
    /// Where the next round-robin pass starts in `members`.
    turn: usize,
    next_member: u64,
    /// The armed wake-up, if any (there is one whenever a request waits).
    timer: Option<Registration>,
}

struct Member {
    id: u64,
    waiting: VecDeque<Waiter>,
    /// Stopping: its requests no longer wait ([`Gate::release`]).
    released: bool,
}

struct Waiter {
    dir: Dir,
    bytes: u64,
    slot: Arc<Slot>,
}

/// A waiting request's mailbox: set admitted, then woken.
struct Slot {
    admitted: AtomicBool,
    waker: Mutex<Waker>,
}

/// The timer's waker: runs the group's dispatch on the timer thread.
struct TimerWake(Weak<ThrottleGroup>);

impl Wake for TimerWake {
    fn wake(self: Arc<Self>) {
        if let Some(g) = self.0.upgrade() {
            g.on_timer();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent across a panic in a waker (none is expected): take it anyway.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    fn now_ns(&self) -> u64 {
        self.ns_at(Instant::now())
    }

    /// `t` on the buckets' clock (0 before the group was made).
    fn ns_at(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn anyone_waiting(&self) -> bool {
        self.members.iter().any(|m| !m.waiting.is_empty())
    }

    /// Admit waiting requests while the budget allows, one member after another, and arm the
    /// wake-up for the next one. Returns the wakers of the admitted requests (to be woken
    /// outside the lock).
    fn dispatch(&mut self, timer_waker: &Waker) -> Vec<Waker> {
        let mut woken = Vec::new();
        let now = self.now_ns();
        let n = self.members.len();
        loop {
            let Some(k) = (0..n).map(|k| (self.turn + k) % n).find(|&k| !self.members[k].waiting.is_empty()) else {
                self.timer = None;
                return woken;
            };
            let head = &self.members[k].waiting[0];
            let wait = self.throttle.wait_ns(now, head.dir);
            if wait > 0 {
                // A wait past what an Instant holds (a huge request under a tiny limit) is
                // capped at a day: the wake-up then re-times it.
                let at = self
                    .epoch
                    .checked_add(Duration::from_nanos(now.saturating_add(wait)))
                    .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
                if self.timer.as_ref().is_some_and(|r| r.deadline() <= at) {
                    return woken;
                }
                self.timer = wake_at(at, timer_waker);
                if self.timer.is_some() {
                    return woken;
                }
                // No timer thread (it could not be started): better unthrottled than stuck.
            }
            let w = self.members[k].waiting.pop_front().expect("the head was just looked at");
            self.throttle.account(w.dir, w.bytes);
            w.slot.admitted.store(true, Ordering::Release);
            woken.push(lock(&w.slot.waker).clone());
            self.turn = (k + 1) % n;
        }
    }
}

impl ThrottleGroup {
    /// A group with `limits` (possibly none), named for a `throttle-group`.
    pub fn new(name: Option<String>, limits: Limits) -> Arc<ThrottleGroup> {
        Arc::new_cyclic(|weak| {
            let epoch = Instant::now();
            ThrottleGroup {
                on: AtomicBool::new(!limits.is_empty()),
                name,
                state: Mutex::new(State {
                    limits,
                    throttle: Throttle::new(&limits, 0),
                    epoch,
                    members: Vec::new(),
                    turn: 0,
                    next_member: 0,
                    timer: None,
                }),
                timer_waker: Waker::from(Arc::new(TimerWake(weak.clone()))),
            }
        })
    }

    /// The group's name (`None` for an export's own limits).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        lock(&self.state).limits
    }

    /// How many exports share this group.
    pub fn members(&self) -> usize {
        lock(&self.state).members.len()
    }

    /// Replace the limits; the buckets start empty (as QEMU's do on a change). Waiting
    /// requests are admitted at once if the new limits allow, else at their new time.
    pub fn set_limits(&self, limits: Limits) {
        let woken = {
            let mut st = lock(&self.state);
            let now = st.now_ns();
            st.limits = limits;
            st.throttle = Throttle::new(&limits, now);
            st.timer = None;
            self.on.store(!limits.is_empty(), Ordering::Release);
            st.dispatch(&self.timer_waker)
        };
        woken.into_iter().for_each(Waker::wake);
    }

    fn on_timer(&self) {
        let woken = {
            let mut st = lock(&self.state);
            st.timer = None;
            st.dispatch(&self.timer_waker)
        };
        woken.into_iter().for_each(Waker::wake);
    }

    /// Join the group: the returned gate is the new member's way in.
    pub fn join(self: &Arc<Self>) -> Gate {
        let mut st = lock(&self.state);
        let id = st.next_member;
        st.next_member += 1;
        st.members.push(Member { id, waiting: VecDeque::new(), released: false });
        Gate { group: self.clone(), member: id }
    }
}

/// One export's way into its group. Dropping it leaves the group.
pub struct Gate {
    group: Arc<ThrottleGroup>,
    member: u64,
}

impl Gate {
    /// A group of its own with `limits` (possibly none).
    pub fn private(limits: Limits) -> Gate {
        ThrottleGroup::new(None, limits).join()
    }

    /// True when limits are set: only then must a request go through [`Gate::admit`]. One
    /// relaxed load, so an export without limits pays a predictable branch per request.
    #[inline]
    pub fn on(&self) -> bool {
        self.group.on.load(Ordering::Relaxed)
    }

    /// The group this gate leads into.
    pub fn group(&self) -> &Arc<ThrottleGroup> {
        &self.group
    }

    /// The export is stopping: its waiting requests start now, uncounted, and later ones do not
    /// wait (as QEMU lifts throttling to drain), so a stop never waits for the budget.
    pub fn release(&self) {
        let woken: Vec<Waker> = {
            let mut st = lock(&self.group.state);
            let Some(m) = st.members.iter_mut().find(|m| m.id == self.member) else { return };
            m.released = true;
            m.waiting
                .drain(..)
                .map(|w| {
                    w.slot.admitted.store(true, Ordering::Release);
                    lock(&w.slot.waker).clone()
                })
                .collect()
        };
        woken.into_iter().for_each(Waker::wake);
    }

    /// Its rings are being drained (a frontend stops a ring, disconnects, or the export stops):
    /// let its waiting requests start now, so a drain never waits for the budget. They are
    /// counted, so the requests after them wait the longer and the average holds.
    pub fn flush_waiting(&self) {
        let woken: Vec<Waker> = {
            let mut st = lock(&self.group.state);
            let State { members, throttle, .. } = &mut *st;
            let Some(m) = members.iter_mut().find(|m| m.id == self.member) else { return };
            m.waiting
                .drain(..)
                .map(|w| {
                    throttle.account(w.dir, w.bytes);
                    w.slot.admitted.store(true, Ordering::Release);
                    lock(&w.slot.waker).clone()
                })
                .collect()
        };
        woken.into_iter().for_each(Waker::wake);
    }

    /// Wait until a request of `bytes` going `dir`, taken from its ring at `taken`, may start,
    /// and count it; resolves to the time it waited. `taken` stands for now when the budget is
    /// checked first (it is at most a turn old, and an earlier time only refills the buckets
    /// less), which spares the data path a clock read per request.
    pub fn admit(&self, dir: Dir, bytes: u64, taken: Instant) -> Admit<'_> {
        Admit { gate: self, dir, bytes, taken, wait: None }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let woken = {
            let mut st = lock(&self.group.state);
            st.members.retain(|m| m.id != self.member);
            st.turn = 0;
            st.dispatch(&self.group.timer_waker)
        };
        woken.into_iter().for_each(Waker::wake);
    }
}

/// The future [`Gate::admit`] returns.
pub struct Admit<'a> {
    gate: &'a Gate,
    dir: Dir,
    bytes: u64,
    /// When the request was taken from its ring.
    taken: Instant,
    /// Set once the request waits: its mailbox and when it began to wait.
    wait: Option<(Arc<Slot>, Instant)>,
}

impl Future for Admit<'_> {
    type Output = Duration;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Duration> {
        if let Some((slot, since)) = &self.wait {
            if !slot.admitted.load(Ordering::Acquire) {
                {
                    let mut w = lock(&slot.waker);
                    if !w.will_wake(cx.waker()) {
                        *w = cx.waker().clone();
                    }
                }
                // Admitted meanwhile, with the old waker woken: it is this task's anyway.
                if !slot.admitted.load(Ordering::Acquire) {
                    return Poll::Pending;
                }
            }
            return Poll::Ready(since.elapsed());
        }
        let group = &self.gate.group;
        let mut st = lock(&group.state);
        let member = self.gate.member;
        if st.members.iter().any(|m| m.id == member && m.released) {
            return Poll::Ready(Duration::ZERO);
        }
        let now = st.ns_at(self.taken);
        // In order: nothing overtakes a request already waiting in the group.
        if !st.anyone_waiting() && st.throttle.wait_ns(now, self.dir) == 0 {
            st.throttle.account(self.dir, self.bytes);
            return Poll::Ready(Duration::ZERO);
        }
        let slot = Arc::new(Slot { admitted: AtomicBool::new(false), waker: Mutex::new(cx.waker().clone()) });
        let Some(m) = st.members.iter_mut().find(|m| m.id == member) else {
            // Not a member any more (cannot happen while the gate lives): do not wait.
            return Poll::Ready(Duration::ZERO);
        };
        m.waiting.push_back(Waiter { dir: self.dir, bytes: self.bytes, slot: slot.clone() });
        let woken = st.dispatch(&group.timer_waker);
        drop(st);
        woken.into_iter().for_each(Waker::wake);
        self.wait = Some((slot, Instant::now()));
        Poll::Pending
    }
}

impl Drop for Admit<'_> {
    fn drop(&mut self) {
        // A request dropped while waiting (its task cancelled) gives its place up.
        let Some((slot, _)) = &self.wait else { return };
        if slot.admitted.load(Ordering::Acquire) {
            return;
        }
        let mut st = lock(&self.gate.group.state);
        for m in &mut st.members {
            m.waiting.retain(|w| !Arc::ptr_eq(&w.slot, slot));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(f: &mut Pin<Box<Admit<'_>>>, w: &Waker) -> Poll<Duration> {
        f.as_mut().poll(&mut Context::from_waker(w))
    }

    #[test]
    fn waiting_requests_are_admitted_by_the_timer_in_turn() {
        let mut l = Limits::default();
        l.set("iops-total", 100).unwrap();
        let g = ThrottleGroup::new(Some("g".into()), l);
        let (a, b) = (g.join(), g.join());
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let w = Waker::from(woken.clone());
        // The first tenth of a second's worth (and one) starts at once.
        for _ in 0..11 {
            assert!(poll(&mut Box::pin(a.admit(Dir::Read, 512, Instant::now())), &w).is_ready());
        }
        let mut fa: Vec<_> = (0..3).map(|_| Box::pin(a.admit(Dir::Read, 512, Instant::now()))).collect();
        let mut fb: Vec<_> = (0..3).map(|_| Box::pin(b.admit(Dir::Write, 512, Instant::now()))).collect();
        for f in fa.iter_mut().chain(fb.iter_mut()) {
            assert!(poll(f, &w).is_pending());
        }
        // At 100/s the six wait about 10 ms each; the timer admits them alternately.
        let start = Instant::now();
        while woken.0.load(Ordering::SeqCst) < 6 {
            assert!(start.elapsed() < Duration::from_secs(2), "not admitted");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(start.elapsed() >= Duration::from_millis(40), "admitted too soon: {:?}", start.elapsed());
        for f in fa.iter_mut().chain(fb.iter_mut()) {
            assert!(poll(f, &w).is_ready());
        }
    }

    #[test]
    fn removing_the_limits_admits_the_waiting_at_once_and_turns_the_gate_off() {
        let mut l = Limits::default();
        l.set("iops-total", 1).unwrap();
        let gate = Gate::private(l);
        assert!(gate.on());
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let w = Waker::from(woken.clone());
        assert!(poll(&mut Box::pin(gate.admit(Dir::Read, 1, Instant::now())), &w).is_ready());
        let mut f = Box::pin(gate.admit(Dir::Read, 1, Instant::now()));
        assert!(poll(&mut f, &w).is_pending());
        // A cancelled waiter leaves the queue.
        let mut dropped = Box::pin(gate.admit(Dir::Read, 1, Instant::now()));
        assert!(poll(&mut dropped, &w).is_pending());
        drop(dropped);
        gate.group().set_limits(Limits::default());
        assert!(!gate.on());
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert!(poll(&mut f, &w).is_ready());
    }

    #[test]
    fn a_released_member_stops_waiting_and_the_others_do_not() {
        let mut l = Limits::default();
        l.set("iops-total", 1).unwrap();
        let g = ThrottleGroup::new(Some("g".into()), l);
        let (a, b) = (g.join(), g.join());
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let w = Waker::from(woken.clone());
        assert!(poll(&mut Box::pin(a.admit(Dir::Read, 1, Instant::now())), &w).is_ready());
        let mut fa = Box::pin(a.admit(Dir::Read, 1, Instant::now()));
        let mut fb = Box::pin(b.admit(Dir::Read, 1, Instant::now()));
        assert!(poll(&mut fa, &w).is_pending() && poll(&mut fb, &w).is_pending());
        a.release();
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert!(poll(&mut fa, &w).is_ready());
        assert!(
            poll(&mut Box::pin(a.admit(Dir::Read, 1, Instant::now())), &w).is_ready(),
            "later requests do not wait"
        );
        assert!(poll(&mut fb, &w).is_pending(), "the other member still waits");
    }

    #[test]
    fn flushing_a_drained_member_admits_its_waiting_and_counts_them() {
        let mut l = Limits::default();
        l.set("iops-total", 10).unwrap();
        let gate = Gate::private(l);
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let w = Waker::from(woken.clone());
        // A tenth of a second's worth (one) and one more start at once.
        for _ in 0..2 {
            assert!(poll(&mut Box::pin(gate.admit(Dir::Read, 1, Instant::now())), &w).is_ready());
        }
        let mut waiting: Vec<_> = (0..5).map(|_| Box::pin(gate.admit(Dir::Read, 1, Instant::now()))).collect();
        for f in &mut waiting {
            assert!(poll(f, &w).is_pending());
        }
        gate.flush_waiting();
        assert_eq!(woken.0.load(Ordering::SeqCst), 5);
        for f in &mut waiting {
            assert!(poll(f, &w).is_ready());
        }
        // Counted: the bucket is seven requests full, so the next one waits about 0.6 s.
        let mut next = Box::pin(gate.admit(Dir::Read, 1, Instant::now()));
        assert!(poll(&mut next, &w).is_pending());
        assert!(gate.on(), "the limits stay");
    }
}
