//! The leaky buckets behind the limits, with QEMU's arithmetic (`util/throttle.c`): each bucket
//! fills with what requests cost and leaks at its average rate; a request may start while the
//! bucket is not over its size (a tenth of a second's worth, or `max * max-length` with a burst),
//! and is then counted in full. A burst longer than a second also keeps a second level leaking
//! at `max`, so the burst itself keeps to `max` per second. Time is passed in as nanoseconds
//! from an epoch, so the tests drive it with a fake clock.

use super::limits::{BucketLimit, Limits};

/// The direction of a request, which picks the buckets it is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// A read: `bps-total`, `bps-read`, `iops-total`, `iops-read`.
    Read,
    /// A write: `bps-total`, `bps-write`, `iops-total`, `iops-write`.
    Write,
}

impl Dir {
    /// Indexes into [`Limits::buckets`] of the (bps, iops) buckets this direction is counted in.
    fn buckets(self) -> [usize; 4] {
        match self {
            Dir::Read => [0, 1, 3, 4],
            Dir::Write => [0, 2, 3, 5],
        }
    }
}

const NS_PER_SEC: f64 = 1e9;

/// One bucket's configuration and levels.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    avg: f64,
    max: f64,
    burst_length: f64,
    level: f64,
    burst_level: f64,
}

impl Bucket {
    fn new(l: &BucketLimit) -> Bucket {
        Bucket {
            avg: l.avg as f64,
            max: l.max as f64,
            burst_length: l.max_length.max(1) as f64,
            level: 0.0,
            burst_level: 0.0,
        }
    }

    /// Let `delta_ns` of time drain the bucket.
    fn leak(&mut self, delta_ns: u64) {
        let d = delta_ns as f64 / NS_PER_SEC;
        self.level = (self.level - self.avg * d).max(0.0);
        if self.burst_length > 1.0 {
            self.burst_level = (self.burst_level - self.max * d).max(0.0);
        }
    }

    /// Nanoseconds until a request may start (0: now).
    fn wait_ns(&self) -> u64 {
        if self.avg == 0.0 {
            return 0;
        }
        let (size, burst_size) =
            if self.max == 0.0 { (self.avg / 10.0, 0.0) } else { (self.max * self.burst_length, self.max / 10.0) };
        let extra = self.level - size;
        if extra > 0.0 {
            return (extra * NS_PER_SEC / self.avg).ceil() as u64;
        }
        if self.burst_length > 1.0 {
            let extra = self.burst_level - burst_size;
            if extra > 0.0 {
                return (extra * NS_PER_SEC / self.max).ceil() as u64;
            }
        }
        0
    }

    fn account(&mut self, units: f64) {
        if self.avg == 0.0 {
            return;
        }
        self.level += units;
        if self.burst_length > 1.0 {
            self.burst_level += units;
        }
    }
}

/// The buckets of one export or group and the time they were last drained.
#[derive(Debug, Clone)]
pub struct Throttle {
    buckets: [Bucket; 6],
    iops_size: u64,
    last_ns: u64,
}

impl Throttle {
    /// Empty buckets for `limits`, as of time `now_ns`.
    pub fn new(limits: &Limits, now_ns: u64) -> Throttle {
        Throttle { buckets: limits.buckets.each_ref().map(Bucket::new), iops_size: limits.iops_size, last_ns: now_ns }
    }

    /// Drain the buckets up to `now_ns` (a clock that went back drains nothing).
    fn leak_to(&mut self, now_ns: u64) {
        let delta = now_ns.saturating_sub(self.last_ns);
        if delta > 0 {
            self.buckets.iter_mut().for_each(|b| b.leak(delta));
            self.last_ns = now_ns;
        }
    }

    /// Nanoseconds from `now_ns` until a request going `dir` may start (0: it may start now).
    pub fn wait_ns(&mut self, now_ns: u64, dir: Dir) -> u64 {
        self.leak_to(now_ns);
        dir.buckets().iter().map(|&i| self.buckets[i].wait_ns()).max().unwrap_or(0)
    }

    /// Count a request of `bytes` going `dir` that starts now: its bytes in the bps buckets, and
    /// in the iops buckets one operation, or `bytes / iops-size` when that is more.
    pub fn account(&mut self, dir: Dir, bytes: u64) {
        let units =
            if self.iops_size != 0 && bytes > self.iops_size { bytes as f64 / self.iops_size as f64 } else { 1.0 };
        let [bps_total, bps_dir, iops_total, iops_dir] = dir.buckets();
        self.buckets[bps_total].account(bytes as f64);
        self.buckets[bps_dir].account(bytes as f64);
        self.buckets[iops_total].account(units);
        self.buckets[iops_dir].account(units);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000 * MS;

    fn limits(pairs: &[(&str, u64)]) -> Limits {
        let mut l = Limits::default();
        for &(k, v) in pairs {
            l.set(k, v).unwrap();
        }
        l.validate().unwrap();
        l
    }

    /// Requests started by a client that always has one waiting, from `start` to `end`, each
    /// started at the earliest time the throttle allows: (count, time of the last start).
    fn saturate(t: &mut Throttle, dir: Dir, bytes: u64, start: u64, end: u64) -> (u64, u64) {
        let (mut now, mut n) = (start, 0);
        loop {
            now += t.wait_ns(now, dir);
            if now >= end {
                return (n, now);
            }
            t.account(dir, bytes);
            n += 1;
        }
    }

    #[test]
    fn an_iops_limit_keeps_the_average_after_a_tenth_of_a_second_of_slack() {
        for rate in [100, 5000, 50_000] {
            let mut t = Throttle::new(&limits(&[("iops-total", rate)]), 0);
            // At time 0 the bucket takes a tenth of a second's worth (and one more) at once.
            let (first, _) = saturate(&mut t, Dir::Read, 4096, 0, 1);
            assert_eq!(first, rate / 10 + 1, "rate {rate}");
            let (n, _) = saturate(&mut t, Dir::Read, 4096, 1, 10 * SEC);
            let expect = 10 * rate;
            assert!(n.abs_diff(expect) <= 1, "rate {rate}: {n} in 10 s");
        }
    }

    #[test]
    fn bandwidth_counts_bytes_and_directions_pick_their_buckets() {
        let mut t = Throttle::new(&limits(&[("bps-write", 1 << 20)]), 0);
        saturate(&mut t, Dir::Write, 65536, 0, SEC);
        let (n, _) = saturate(&mut t, Dir::Write, 65536, SEC, 3 * SEC);
        assert!(n.abs_diff(32) <= 1, "{n} writes of 64 KiB in 2 s at 1 MiB/s");
        assert_eq!(t.wait_ns(3 * SEC, Dir::Read), 0, "reads are not limited by bps-write");
    }

    #[test]
    fn iops_size_counts_a_large_request_as_several() {
        let mut t = Throttle::new(&limits(&[("iops-total", 100), ("iops-size", 4096)]), 0);
        saturate(&mut t, Dir::Read, 16384, 0, SEC);
        let (n, _) = saturate(&mut t, Dir::Read, 16384, SEC, 5 * SEC);
        assert!(n.abs_diff(100) <= 1, "{n} requests of 4 units each in 4 s at 100/s");
    }

    #[test]
    fn a_burst_after_idle_is_served_at_once_then_the_average() {
        let mut t = Throttle::new(&limits(&[("iops-total", 100), ("iops-total-max", 1000)]), 0);
        // Idle for a while: the burst of `max` (one second's worth of it) is there at once.
        let (burst, _) = saturate(&mut t, Dir::Write, 512, 5 * SEC, 5 * SEC + 1);
        assert_eq!(burst, 1001);
        let (n, _) = saturate(&mut t, Dir::Write, 512, 5 * SEC + 1, 7 * SEC);
        assert!(n.abs_diff(200) <= 1, "{n} in 2 s after the burst");
        // A longer idle refills it.
        let (again, _) = saturate(&mut t, Dir::Write, 512, 30 * SEC, 30 * SEC + 1);
        assert!(again >= 1000, "{again}");
    }

    #[test]
    fn a_long_burst_keeps_to_max_per_second() {
        // A burst of up to 1000/s for 3 s, then 100/s.
        let mut t =
            Throttle::new(&limits(&[("iops-total", 100), ("iops-total-max", 1000), ("iops-total-max-length", 3)]), 0);
        let (first_second, _) = saturate(&mut t, Dir::Read, 512, 0, SEC);
        assert!(first_second.abs_diff(1100) <= 10, "{first_second} in the first second of a 1000/s burst");
        let (rest, _) = saturate(&mut t, Dir::Read, 512, SEC, 20 * SEC);
        // The whole burst bucket (3000) plus 20 s at the average, minus what the first second took.
        let total = first_second + rest;
        assert!(total.abs_diff(3000 + 20 * 100) <= 120, "{total} in 20 s");
    }

    #[test]
    fn no_limits_never_wait() {
        let mut t = Throttle::new(&Limits::default(), 0);
        for i in 0..1000 {
            assert_eq!(t.wait_ns(i, Dir::Read), 0);
            t.account(Dir::Read, 1 << 20);
        }
    }
}
