//! How long a queue worker busy-polls after work before it sleeps: QEMU's adaptive polling
//! rule. The window follows the gaps between a worker's sleeps and its next event: a gap longer
//! than the window but within `poll-us` means polling a little longer would have caught it
//! (grow); a gap beyond `poll-us` means polling could not have (shrink). So a guest issuing
//! back-to-back requests gets the whole window, and one that is idle or slow costs no spinning.

use std::time::{Duration, Instant};

/// Below this a polling stretch is not worth starting.
const MIN_WINDOW: Duration = Duration::from_micros(1);

/// A worker's current polling window, within `0..=max`.
#[derive(Debug)]
pub struct PollWindow {
    max: Duration,
    current: Duration,
    asleep_since: Option<Instant>,
}

impl PollWindow {
    /// A window that starts at `max` (the export's `poll-us`); zero never polls.
    pub fn new(max: Duration) -> PollWindow {
        PollWindow { max, current: max, asleep_since: None }
    }

    /// The window to poll for now (zero: do not poll).
    pub fn current(&self) -> Duration {
        self.current
    }

    /// The worker is about to sleep until its next event.
    pub fn sleeping(&mut self, now: Instant) {
        self.asleep_since = Some(now);
    }

    /// The worker woke for an event at `now`: adapt the window to how long it slept.
    pub fn woke(&mut self, now: Instant) {
        let Some(since) = self.asleep_since.take() else { return };
        let slept = now.saturating_duration_since(since);
        let next = if slept > self.max {
            self.current / 2
        } else if slept > self.current {
            (self.current * 2).max(self.max / 32).min(self.max)
        } else {
            self.current
        };
        self.current = if next < MIN_WINDOW { Duration::ZERO } else { next };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// Sleep for `gap` then wake, starting from `t`; returns the new time.
    fn gap(w: &mut PollWindow, t: Instant, gap: Duration) -> Instant {
        w.sleeping(t);
        w.woke(t + gap);
        t + gap
    }

    #[test]
    fn long_gaps_shrink_the_window_to_nothing_and_short_ones_grow_it_back() {
        let mut w = PollWindow::new(us(64));
        let mut t = Instant::now();
        assert_eq!(w.current(), us(64));
        for expect in [32, 16, 8, 4, 2, 1, 0, 0] {
            t = gap(&mut w, t, us(500));
            assert_eq!(w.current(), us(expect));
        }
        t = gap(&mut w, t, us(10));
        assert_eq!(w.current(), us(2), "restarts at max/32");
        for expect in [4, 8, 16, 32, 64, 64] {
            t = gap(&mut w, t, us(60));
            assert_eq!(w.current(), us(expect));
        }
        gap(&mut w, t, us(40));
        assert_eq!(w.current(), us(64), "a gap inside the window leaves it");
    }

    #[test]
    fn zero_never_polls_and_a_wake_without_a_sleep_changes_nothing() {
        let mut w = PollWindow::new(Duration::ZERO);
        let t = gap(&mut w, Instant::now(), us(1));
        assert_eq!(w.current(), Duration::ZERO);
        let mut w = PollWindow::new(us(50));
        w.woke(t);
        assert_eq!(w.current(), us(50));
    }
}
