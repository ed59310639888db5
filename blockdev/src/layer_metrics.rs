//! Metrics a layer of a device stack reports about itself (a RAID array's state, a thin pool's
//! space, a qcow2 image's allocation), read when someone asks — a Prometheus scrape — and never
//! on the data path. A layer pushes its samples in [`crate::BlockDev::layer_metrics`] and asks
//! the devices it stands on for theirs; the consumer drops duplicates (one pool under two
//! volumes reports twice).

/// Whether a sample only ever grows (a counter) or moves both ways (a gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleKind {
    /// A value that goes up and down.
    Gauge,
    /// A running total since the layer was opened; only grows.
    Counter,
}

/// One value of one metric of one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSample {
    /// Metric name following Prometheus' conventions, unit last (`strata_raid_degraded_members`,
    /// `strata_thin_data_used_bytes`); a counter's name ends in `_total`.
    pub name: &'static str,
    /// One line saying what it measures.
    pub help: &'static str,
    /// Gauge or counter.
    pub kind: SampleKind,
    /// Labels naming the layer (`array`, `pool`, `image`, ...) and anything else that tells two
    /// samples of one metric apart.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: f64,
}

impl LayerSample {
    /// A gauge sample.
    pub fn gauge(name: &'static str, help: &'static str, labels: Vec<(&'static str, String)>, value: f64) -> Self {
        LayerSample { name, help, kind: SampleKind::Gauge, labels, value }
    }

    /// A counter sample (`name` ends in `_total`).
    pub fn counter(name: &'static str, help: &'static str, labels: Vec<(&'static str, String)>, value: f64) -> Self {
        LayerSample { name, help, kind: SampleKind::Counter, labels, value }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_set_the_kind() {
        let g = LayerSample::gauge("a_bytes", "h", vec![("pool", "p".into())], 1.0);
        let c = LayerSample::counter("b_total", "h", vec![], 2.0);
        assert_eq!((g.kind, c.kind), (SampleKind::Gauge, SampleKind::Counter));
        assert_eq!(g.labels[0], ("pool", "p".to_string()));
    }
}
