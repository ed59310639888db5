//! One line out of fio's JSON: IOPS, MB/s and completion-latency percentiles per direction.

use serde::Serialize;
use serde_json::Value;

/// Totals of one direction (read or write) over every job of a run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DirStats {
    /// Completed requests.
    pub ios: u64,
    /// Requests per second (summed over jobs).
    pub iops: f64,
    /// Bytes per second (summed over jobs).
    pub bytes_per_sec: f64,
    /// Median completion latency in µs (the first job's; with `group_reporting` the group's).
    pub clat_p50_us: Option<f64>,
    /// 99th percentile completion latency in µs (as `clat_p50_us`).
    pub clat_p99_us: Option<f64>,
}

/// What one fio run did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    /// `fio version` from the JSON, e.g. `fio-3.33`.
    pub fio_version: String,
    /// Number of job entries.
    pub jobs: usize,
    /// Sum of the jobs' `error` fields (0 when every job succeeded).
    pub errors: i64,
    /// Reads (verify reads count here).
    pub read: DirStats,
    /// Writes.
    pub write: DirStats,
}

impl Summary {
    /// Parses fio's `--output-format=json` or `json+` output.
    pub fn from_json(text: &str) -> Result<Summary, String> {
        // fio may print notes before the JSON object; start at the first '{'.
        let start = text.find('{').ok_or("no JSON object in fio's output")?;
        let v: Value = serde_json::from_str(&text[start..]).map_err(|e| format!("fio's JSON does not parse: {e}"))?;
        let jobs = v.get("jobs").and_then(Value::as_array).ok_or("fio's JSON has no \"jobs\" array")?;
        let mut s = Summary {
            fio_version: v.get("fio version").and_then(Value::as_str).unwrap_or("").to_string(),
            jobs: jobs.len(),
            ..Summary::default()
        };
        for (i, job) in jobs.iter().enumerate() {
            s.errors += job.get("error").and_then(Value::as_i64).unwrap_or(0);
            for (name, dir) in [("read", &mut s.read), ("write", &mut s.write)] {
                let Some(d) = job.get(name) else { continue };
                dir.ios += d.get("total_ios").and_then(Value::as_u64).unwrap_or(0);
                dir.iops += d.get("iops").and_then(Value::as_f64).unwrap_or(0.0);
                dir.bytes_per_sec += d.get("bw_bytes").and_then(Value::as_f64).unwrap_or(0.0);
                if i == 0 {
                    let pct = |p: &str| {
                        d.pointer(&format!("/clat_ns/percentile/{p}")).and_then(Value::as_f64).map(|ns| ns / 1000.0)
                    };
                    dir.clat_p50_us = pct("50.000000");
                    dir.clat_p99_us = pct("99.000000");
                }
            }
        }
        Ok(s)
    }

    /// `read 1234 IOPS 5.1 MB/s p50 700 µs p99 2100 µs, write ...` (directions with no I/O left
    /// out), then `fio errors N`.
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        for (name, d) in [("read", &self.read), ("write", &self.write)] {
            if d.ios == 0 {
                continue;
            }
            let mut p = format!("{name} {:.0} IOPS {:.1} MB/s", d.iops, d.bytes_per_sec / 1e6);
            if let (Some(p50), Some(p99)) = (d.clat_p50_us, d.clat_p99_us) {
                p += &format!(" p50 {p50:.0} µs p99 {p99:.0} µs");
            }
            parts.push(p);
        }
        if parts.is_empty() {
            parts.push("no I/O".into());
        }
        format!("{}; fio errors {}", parts.join(", "), self.errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"note: both iodepth >= 1 and synchronous I/O engine are selected
{"fio version":"fio-3.33","jobs":[{"jobname":"verify","error":0,
 "read":{"total_ios":2048,"iops":1000.5,"bw_bytes":4098048,"clat_ns":{"percentile":{"50.000000":700000,"99.000000":2100000}}},
 "write":{"total_ios":2048,"iops":500.0,"bw_bytes":2048000,"clat_ns":{"percentile":{"50.000000":1500,"99.000000":9000}}}}]}"#;

    #[test]
    fn parses_fio_json_after_a_note() {
        let s = Summary::from_json(SAMPLE).unwrap();
        assert_eq!(s.fio_version, "fio-3.33");
        assert_eq!((s.jobs, s.errors, s.read.ios, s.write.ios), (1, 0, 2048, 2048));
        assert_eq!(s.read.clat_p99_us, Some(2100.0));
        assert_eq!(
            s.line(),
            "read 1000 IOPS 4.1 MB/s p50 700 µs p99 2100 µs, write 500 IOPS 2.0 MB/s p50 2 µs p99 9 µs; fio errors 0"
        );
    }

    #[test]
    fn directions_without_io_are_left_out_and_errors_summed() {
        let text = r#"{"jobs":[{"error":5,"read":{"total_ios":0},"write":{"total_ios":3,"iops":3,"bw_bytes":12288}},
                                 {"error":1,"write":{"total_ios":1,"iops":1,"bw_bytes":4096}}]}"#;
        let s = Summary::from_json(text).unwrap();
        assert_eq!((s.errors, s.write.ios), (6, 4));
        assert_eq!(s.line(), "write 4 IOPS 0.0 MB/s; fio errors 6");
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(Summary::from_json("").unwrap_err().contains("no JSON"));
        assert!(Summary::from_json("{nope").unwrap_err().contains("does not parse"));
        assert!(Summary::from_json("{}").unwrap_err().contains("jobs"));
    }
}
