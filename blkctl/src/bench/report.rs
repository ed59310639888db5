//! What `blkctl bench --json` prints and `docs/bench/*.json` holds, and the text table.
//!
//! The schema only grows: new fields are optional (`#[serde(default)]`) so older saved files
//! still render. `section` groups files in `docs/bench.md`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::fio::FioResult;
use super::{CaseStats, Workload};
use blockdev::size::format_size;

/// Version of the JSON layout.
pub const SCHEMA: u32 = 1;

/// Latency summary in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    #[serde(default)]
    pub mean: f64,
}

impl Latency {
    /// Summarise a nanosecond histogram.
    pub fn from_histogram(h: &super::Histogram) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            p50: us(h.quantile(0.5)),
            p90: us(h.quantile(0.9)),
            p99: us(h.quantile(0.99)),
            p99_9: us(h.quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// One row: strata's numbers for a case, and fio's beside them when it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    /// The workload.
    pub workload: Workload,
    /// Bytes per request.
    pub bs: u32,
    /// Queue depth.
    pub qd: u32,
    /// Requests completed.
    pub ops: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// Requests per second.
    pub iops: f64,
    /// Megabytes (10^6 bytes) per second.
    pub mbps: f64,
    /// Latency in microseconds.
    pub lat_us: Latency,
    /// CPU time (user + system of this process, io_uring workers included) per request, in
    /// microseconds: unlike IOPS, it barely moves when other processes share the CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_op: Option<f64>,
    /// fio on the same file, when `--fio` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fio: Option<FioResult>,
    /// strata IOPS / fio IOPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// strata's IOPS in every round, when the case ran several rounds (the row is the median one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub iops_rounds: Vec<f64>,
    /// fio's IOPS in every round (rounds alternate: strata, fio, strata, fio, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fio_iops_rounds: Vec<f64>,
}

impl CaseResult {
    /// Build a row from measured stats.
    pub fn new(
        workload: Workload,
        bs: u32,
        qd: u32,
        stats: &CaseStats,
        cpu: Option<Duration>,
        fio: Option<FioResult>,
    ) -> Self {
        let iops = stats.iops();
        let ratio = fio.as_ref().filter(|f| f.iops > 0.0).map(|f| iops / f.iops);
        CaseResult {
            workload,
            bs,
            qd,
            ops: stats.ops,
            seconds: stats.elapsed.as_secs_f64(),
            iops,
            mbps: stats.mbps(),
            lat_us: Latency::from_histogram(&stats.latency),
            cpu_us_per_op: cpu.filter(|_| stats.ops > 0).map(|c| c.as_secs_f64() * 1e6 / stats.ops as f64),
            fio,
            ratio,
            iops_rounds: Vec::new(),
            fio_iops_rounds: Vec::new(),
        }
    }

    /// The same row with `fio` beside it (and the ratio recomputed).
    pub fn with_fio(mut self, fio: Option<FioResult>) -> Self {
        self.ratio = fio.as_ref().filter(|f| f.iops > 0.0).map(|f| self.iops / f.iops);
        self.fio = fio;
        self
    }
}

/// The machine a report was taken on.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Machine {
    /// Host name.
    pub host: String,
    /// CPUs available to the process.
    pub nproc: usize,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// CPU model, when known.
    #[serde(default)]
    pub cpu: String,
}

/// One `blkctl bench` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// [`SCHEMA`] at the time of writing.
    pub schema: u32,
    /// Heading this run goes under in `docs/bench.md`.
    pub section: String,
    /// The command that produced it.
    pub command: String,
    /// When it ran (UTC, ISO 8601).
    pub date: String,
    /// strata's version (and git commit when known).
    pub strata_version: String,
    /// Where it ran.
    pub machine: Machine,
    /// The disk spec (or socket) measured.
    pub spec: String,
    /// The target as it describes itself.
    pub target: String,
    /// Bytes of the disk the cases touched.
    pub range_bytes: u64,
    /// The rows.
    pub cases: Vec<CaseResult>,
    /// Free text for the docs (e.g. what the fio comparison means here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), num)
}

/// The text table's header (with fio columns when `fio`).
pub fn table_header(fio: bool) -> String {
    let mut s = format!(
        "{:<9} {:>4} {:>4} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "workload", "bs", "qd", "IOPS", "MB/s", "p50us", "p90us", "p99us", "p99.9us", "maxus", "cpu/op"
    );
    if fio {
        s += &format!(" | {:>10} {:>8} {:>8} {:>7} {:>6}", "fio IOPS", "fio p50", "fio p99", "cpu/op", "ratio");
    }
    s
}

/// One row of the text table.
pub fn table_row(c: &CaseResult, fio: bool) -> String {
    let l = &c.lat_us;
    let mut s = format!(
        "{:<9} {:>4} {:>4} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7}",
        c.workload.name(),
        format_size(u64::from(c.bs)),
        c.qd,
        c.iops,
        num(c.mbps),
        num(l.p50),
        num(l.p90),
        num(l.p99),
        num(l.p99_9),
        num(l.max),
        opt(c.cpu_us_per_op)
    );
    if fio {
        match (&c.fio, c.ratio) {
            (Some(f), Some(r)) => {
                s += &format!(
                    " | {:>10.0} {:>8} {:>8} {:>7} {:>5.0}%",
                    f.iops,
                    num(f.lat_us.p50),
                    num(f.lat_us.p99),
                    opt(f.cpu_us_per_op),
                    r * 100.0
                )
            }
            _ => s += &format!(" | {:>10} {:>8} {:>8} {:>7} {:>6}", "-", "-", "-", "-", "-"),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> CaseResult {
        CaseResult {
            workload: Workload::RandRead,
            bs: 4096,
            qd: 32,
            ops: 1000,
            seconds: 1.0,
            iops: 1000.0,
            mbps: 4.096,
            lat_us: Latency { p50: 1.0, p90: 2.0, p99: 3.0, p99_9: 4.0, max: 5.0, mean: 1.5 },
            cpu_us_per_op: Some(1.5),
            fio: Some(FioResult {
                iops: 2000.0,
                mbps: 8.2,
                ops: 2000,
                lat_us: Latency::default(),
                cpu_us_per_op: None,
            }),
            ratio: Some(0.5),
            iops_rounds: Vec::new(),
            fio_iops_rounds: Vec::new(),
        }
    }

    #[test]
    fn row_shows_ratio_as_percent() {
        let line = table_row(&row(), true);
        assert!(line.starts_with("randread    4K   32"), "{line}");
        assert!(line.trim_end().ends_with("50%"), "{line}");
        assert_eq!(table_header(true).len(), line.len());
        assert_eq!(table_header(false).len(), table_row(&row(), false).len());
    }

    #[test]
    fn json_round_trips_and_optional_fields_may_be_absent() {
        let text = serde_json::to_string(&row()).unwrap();
        assert!(text.contains("\"workload\":\"randread\""), "{text}");
        assert_eq!(serde_json::from_str::<CaseResult>(&text).unwrap(), row());
        let bare = CaseResult { fio: None, ratio: None, ..row() };
        let text = serde_json::to_string(&bare).unwrap();
        assert!(!text.contains("fio"));
        assert_eq!(serde_json::from_str::<CaseResult>(&text).unwrap(), bare);
    }
}
