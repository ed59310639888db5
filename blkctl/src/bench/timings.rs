//! A second kind of saved run for `docs/bench.md`: timings that are not block I/O cases (e.g.
//! `vmm-mini`'s start-up and probe round trip). A file is one of these when it has
//! `"kind": "timings"`; each row is a measurement on one backend with every sample kept, and
//! rows on the `reference` backend are what the others are compared with.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::report::Machine;

/// The `kind` value that marks a timings file.
pub const KIND: &str = "timings";

/// A saved timings run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimingsReport {
    /// Always [`KIND`].
    pub kind: String,
    /// Heading this run goes under in `docs/bench.md`.
    pub section: String,
    /// Sub-heading of this run.
    pub title: String,
    /// The command that produced it.
    pub command: String,
    /// When it ran (UTC, ISO 8601).
    pub date: String,
    /// Where it ran.
    pub machine: Machine,
    /// Unit of every sample (e.g. `ms`).
    pub unit: String,
    /// The backend the others are compared with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The rows, in the order shown.
    pub rows: Vec<TimingRow>,
    /// Free text for the docs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

/// One measurement on one backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimingRow {
    /// What was measured.
    pub what: String,
    /// What it ran against.
    pub backend: String,
    /// Every sample, in run order.
    pub samples: Vec<f64>,
}

/// Median of `v` (the mean of the middle two for an even count); `None` when empty.
pub fn median(v: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 })
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

/// The table of `r`: min, median and max per row, and the median's ratio to the same
/// measurement on the reference backend.
pub fn table(out: &mut String, r: &TimingsReport) {
    let u = &r.unit;
    let _ = writeln!(out, "| measurement | backend | runs | min {u} | median {u} | max {u} | vs reference |");
    out.push_str("|---|---|---:|---:|---:|---:|---:|\n");
    for row in &r.rows {
        let (lo, hi) = row.samples.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        let med = median(&row.samples);
        let reference = r.reference.as_deref().filter(|b| *b != row.backend).and_then(|b| {
            r.rows.iter().find(|o| o.backend == b && o.what == row.what).and_then(|o| median(&o.samples))
        });
        let ratio = match (med, reference) {
            (Some(m), Some(base)) if base > 0.0 => format!("{:.2}×", m / base),
            _ => "–".to_string(),
        };
        let (lo, med, hi) = match med {
            Some(m) => (num(lo), num(m), num(hi)),
            None => ("–".into(), "–".into(), "–".into()),
        };
        let _ =
            writeln!(out, "| {} | {} | {} | {lo} | {med} | {hi} | {ratio} |", row.what, row.backend, row.samples.len());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> TimingsReport {
        let row = |what: &str, backend: &str, samples: Vec<f64>| TimingRow {
            what: what.into(),
            backend: backend.into(),
            samples,
        };
        TimingsReport {
            kind: KIND.into(),
            section: "vmm-mini".into(),
            title: "start-up".into(),
            command: "bench-probe".into(),
            date: "2026-01-01T00:00:00Z".into(),
            machine: Machine { host: "h".into(), nproc: 2, kernel: "6.1".into(), cpu: String::new() },
            unit: "ms".into(),
            reference: Some("qsd".into()),
            rows: vec![
                row("round trip", "qsd", vec![4.0, 2.0, 3.0]),
                row("round trip", "strata", vec![6.0, 9.0, 3.0, 12.0]),
                row("start", "strata", vec![]),
            ],
            notes: None,
        }
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn rows_show_spread_and_ratio_to_the_reference() {
        let mut out = String::new();
        table(&mut out, &sample());
        assert!(out.contains("| round trip | qsd | 3 | 2.00 | 3.00 | 4.00 | – |"), "{out}");
        assert!(out.contains("| round trip | strata | 4 | 3.00 | 7.50 | 12.0 | 2.50× |"), "{out}");
        assert!(out.contains("| start | strata | 0 | – | – | – | – |"), "{out}");
    }
}
