//! The `/metrics` page: the daemon's counters read at scrape time (the data path only adds to
//! per-queue counters) and encoded by `prometheus-client` in the Prometheus text format 0.0.4.

use std::collections::HashSet;

use blockdev::{LayerSample, SampleKind};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::series::SeriesTotals;
use crate::server::stats::{OpTotals, BUCKETS, OP_NAMES};
use crate::server::Daemon;

/// The `Content-Type` of the page.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Latency buckets shown: requests under 2^FIRST µs (8 µs) share the first bucket, and
/// buckets stop at 2^LAST µs (about 16.8 s); slower requests count in `+Inf` only.
const FIRST_BUCKET: usize = 3;
const LAST_BUCKET: usize = 24;

/// A live export's gauges.
#[derive(Debug)]
struct Live {
    name: String,
    in_flight: u64,
    size: u64,
}

/// Everything one scrape shows, gathered first so encoding holds no lock.
#[derive(Debug)]
struct Page {
    series: Vec<SeriesTotals>,
    live: Vec<Live>,
    layers: Vec<LayerSample>,
}

/// Gather and encode the page for `daemon`.
pub fn render(daemon: &Daemon) -> String {
    let exports = daemon.exports();
    let live = exports
        .iter()
        .map(|e| Live { name: e.name.clone(), in_flight: e.stats.in_flight(), size: e.capacity() })
        .collect();
    let mut layers = Vec::new();
    for e in &exports {
        e.dev.layer_metrics(&mut layers);
    }
    drop(exports);
    let page = Page { series: daemon.series().read(), live, layers: dedup(layers) };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(page));
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in a label or name.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::error!("metrics: encoding failed: {e}");
    }
    out
}

/// Drop repeated samples (one pool or array under several exports), keep first-seen order
/// within a metric, and put each metric's samples together (as the text format needs).
fn dedup(samples: Vec<LayerSample>) -> Vec<LayerSample> {
    let mut seen = HashSet::new();
    let mut out: Vec<LayerSample> = samples.into_iter().filter(|s| seen.insert((s.name, s.labels.clone()))).collect();
    out.sort_by_key(|s| s.name);
    out
}

fn labels(export: &str, op: Option<&'static str>) -> Vec<(&'static str, String)> {
    let mut l = vec![("export", export.to_string())];
    if let Some(op) = op {
        l.push(("op", op.to_string()));
    }
    l
}

impl Page {
    /// A counter family with one value per export and class.
    fn per_op_counter(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: impl Fn(&OpTotals, usize) -> u64,
    ) -> Result<(), std::fmt::Error> {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for s in &self.series {
            for (op, op_name) in OP_NAMES.iter().enumerate() {
                let l = labels(&s.name, Some(op_name));
                m.encode_family(&l)?.encode_counter::<NoLabelSet, _, u64>(&value(&s.totals, op), None)?;
            }
        }
        Ok(())
    }

    fn histogram(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = enc.encode_descriptor(
            "strata_request_duration_seconds",
            "Time from a request's arrival on its queue to its completion.",
            None,
            MetricType::Histogram,
        )?;
        for s in &self.series {
            for (op, op_name) in OP_NAMES.iter().enumerate() {
                let hist = &s.totals.latency_us[op];
                let mut buckets = Vec::with_capacity(LAST_BUCKET - FIRST_BUCKET + 1);
                buckets.push((le(FIRST_BUCKET), hist[..=FIRST_BUCKET].iter().sum::<u64>()));
                for (i, &n) in hist.iter().enumerate().take(LAST_BUCKET + 1).skip(FIRST_BUCKET + 1) {
                    buckets.push((le(i), n));
                }
                let count = hist.iter().sum::<u64>();
                let sum = s.totals.latency_sum_ns[op] as f64 / 1e9;
                let l = labels(&s.name, Some(op_name));
                m.encode_family(&l)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        Ok(())
    }

    fn layer_families(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in self.layers.chunk_by(|a, b| a.name == b.name) {
            let first = &family[0];
            let (name, kind) = match first.kind {
                SampleKind::Counter => (first.name.strip_suffix("_total").unwrap_or(first.name), MetricType::Counter),
                SampleKind::Gauge => (first.name, MetricType::Gauge),
            };
            let mut m = enc.encode_descriptor(name, first.help, None, kind)?;
            for s in family {
                let mut f = m.encode_family(&s.labels)?;
                match s.kind {
                    SampleKind::Counter => f.encode_counter::<NoLabelSet, _, u64>(&s.value, None)?,
                    SampleKind::Gauge => f.encode_gauge(&s.value)?,
                }
            }
        }
        Ok(())
    }
}

/// Upper bound of latency bucket `i`, in seconds.
fn le(i: usize) -> f64 {
    debug_assert!(i < BUCKETS);
    (1u64 << i) as f64 / 1e6
}

impl Collector for Page {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.per_op_counter(&mut enc, "strata_requests", "Requests completed, by export and class.", |t, op| {
            t.count[op]
        })?;
        self.per_op_counter(&mut enc, "strata_bytes", "Data bytes moved by completed requests.", |t, op| t.bytes[op])?;
        self.per_op_counter(
            &mut enc,
            "strata_request_errors",
            "Requests completed with a status other than OK.",
            |t, op| t.errors[op],
        )?;
        self.histogram(&mut enc)?;
        let mut m = enc.encode_descriptor(
            "strata_throttled_seconds",
            "Seconds requests spent waiting for the export's I/O limits, summed over requests.",
            None,
            MetricType::Counter,
        )?;
        for s in &self.series {
            m.encode_family(&labels(&s.name, None))?
                .encode_counter::<NoLabelSet, _, u64>(&s.throttled_seconds, None)?;
        }
        let mut m = enc.encode_descriptor(
            "strata_inflight_requests",
            "Requests of a served export being processed now.",
            None,
            MetricType::Gauge,
        )?;
        for l in &self.live {
            m.encode_family(&labels(&l.name, None))?.encode_gauge(&l.in_flight)?;
        }
        let mut m = enc.encode_descriptor(
            "strata_disk_size_bytes",
            "Size of a served export's disk.",
            None,
            MetricType::Gauge,
        )?;
        for l in &self.live {
            m.encode_family(&labels(&l.name, None))?.encode_gauge(&l.size)?;
        }
        self.layer_families(&mut enc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_samples_are_deduplicated_grouped_and_typed() {
        let pool = |v: f64| LayerSample::gauge("strata_thin_data_bytes", "Data.", vec![("pool", "p1".into())], v);
        let rep = |v: f64| {
            LayerSample::counter("strata_raid_read_errors_repaired_total", "Repaired.", vec![("array", "a".into())], v)
        };
        let other = LayerSample::gauge("strata_thin_data_bytes", "Data.", vec![("pool", "p2".into())], 7.0);
        let page =
            Page { series: Vec::new(), live: Vec::new(), layers: dedup(vec![pool(1.0), rep(3.0), pool(1.0), other]) };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(page));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        assert_eq!(text.matches("# TYPE strata_thin_data_bytes gauge").count(), 1, "{text}");
        assert_eq!(text.matches("strata_thin_data_bytes{pool=\"p1\"}").count(), 1, "one pool under two exports: once");
        assert!(text.contains("strata_thin_data_bytes{pool=\"p2\"} 7"), "{text}");
        assert!(text.contains("# TYPE strata_raid_read_errors_repaired_total counter"), "{text}");
        assert!(text.contains("strata_raid_read_errors_repaired_total{array=\"a\"} 3"), "{text}");
    }
}
