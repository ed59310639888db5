//! Counter series that survive exports being removed and added again.
//!
//! Every export registers its statistics here when it is added ([`Series::track`]). The
//! counters of a removed export stay (its last values, with `op` and `export` labels as
//! before), and an export added again under the same name continues from them: a scrape series
//! never goes backwards, so Prometheus' `rate()` sees no reset. One entry per export name ever
//! added; the control socket (trusted) is the only way to add names.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::server::stats::{ExportStats, OpTotals};

/// The counters of every export name, live or removed.
#[derive(Default)]
pub struct Series {
    by_name: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    /// The statistics of the export now (or last) serving under this name.
    current: Arc<ExportStats>,
    /// What earlier exports of this name counted.
    base: OpTotals,
    base_throttled_ns: u64,
}

/// One export name's counters as a scrape reports them.
#[derive(Debug, Clone)]
pub struct SeriesTotals {
    /// Export name.
    pub name: String,
    /// Per-class totals since the name was first added.
    pub totals: OpTotals,
    /// Seconds requests waited for their I/O limit, since the name was first added.
    pub throttled_seconds: f64,
}

impl Series {
    /// The export `name` starts with `stats`: fold what an earlier export of this name counted
    /// into the name's base, so its series continue.
    pub fn track(&self, name: &str, stats: &Arc<ExportStats>) {
        let mut map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(name) {
            Some(e) if Arc::ptr_eq(&e.current, stats) => {}
            Some(e) => {
                e.base.add(&e.current.totals());
                e.base_throttled_ns =
                    e.base_throttled_ns.wrapping_add(e.current.throttled_ns.load(std::sync::atomic::Ordering::Relaxed));
                e.current = stats.clone();
            }
            None => {
                map.insert(
                    name.to_string(),
                    Entry { current: stats.clone(), base: OpTotals::default(), base_throttled_ns: 0 },
                );
            }
        }
    }

    /// Every name's counters, sorted by name.
    pub fn read(&self) -> Vec<SeriesTotals> {
        let map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<SeriesTotals> = map
            .iter()
            .map(|(name, e)| {
                let mut totals = e.base.clone();
                totals.add(&e.current.totals());
                let ns =
                    e.base_throttled_ns.wrapping_add(e.current.throttled_ns.load(std::sync::atomic::Ordering::Relaxed));
                SeriesTotals { name: name.clone(), totals, throttled_seconds: ns as f64 / 1e9 }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::request::OpClass;
    use std::time::Duration;

    fn reads(s: &ExportStats, n: usize) {
        for _ in 0..n {
            s.started();
            s.finished(OpClass::Read, 4096, true, Duration::from_micros(5));
        }
    }

    #[test]
    fn a_name_added_again_continues_from_its_last_count_and_others_are_untouched() {
        let series = Series::default();
        let (a1, b) = (Arc::new(ExportStats::default()), Arc::new(ExportStats::default()));
        series.track("a", &a1);
        series.track("b", &b);
        reads(&a1, 3);
        reads(&b, 2);
        series.track("a", &a1); // the same export again: nothing folded twice
        let a2 = Arc::new(ExportStats::default());
        drop(a1.clone());
        series.track("a", &a2);
        reads(&a2, 4);
        let got = series.read();
        assert_eq!(got.iter().map(|s| (s.name.as_str(), s.totals.count[0])).collect::<Vec<_>>(), [("a", 7), ("b", 2)]);
        assert_eq!(got[0].totals.bytes[0], 7 * 4096);
    }
}
