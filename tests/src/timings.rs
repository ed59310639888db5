//! Save a benchmark's samples as a timings run for `docs/bench.md` (the `"kind": "timings"`
//! files `blkctl bench-report` renders: one row per measurement and backend, every sample kept,
//! rows compared with a reference backend). Shared as source with the daemon crate's tests.

use serde_json::{json, Value};

/// One row: what was measured, on which backend, every sample in run order.
pub struct TimingRow {
    /// What was measured (e.g. `crash (SIGKILL)`).
    pub what: String,
    /// What it ran against (the reference backend's rows are what the others are compared with).
    pub backend: String,
    /// Every sample, in the report's unit.
    pub samples: Vec<f64>,
}

/// A timings run: where it goes in `docs/bench.md` and how it was made.
pub struct Timings<'a> {
    /// The heading it goes under.
    pub section: &'a str,
    /// Its sub-heading.
    pub title: String,
    /// The command that makes it again.
    pub command: String,
    /// The unit of every sample.
    pub unit: &'a str,
    /// The backend the others are compared with.
    pub reference: Option<&'a str>,
    /// Free text shown under the table.
    pub notes: String,
}

impl Timings<'_> {
    /// Write the run with `rows` to `path` (JSON), with the date and this machine's description.
    pub fn save(&self, path: &str, rows: Vec<TimingRow>) {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default().trim().to_string();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string());
        let date = std::process::Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]).output();
        let rows: Vec<Value> =
            rows.into_iter().map(|r| json!({"what": r.what, "backend": r.backend, "samples": r.samples})).collect();
        let mut report = json!({
            "kind": "timings",
            "section": self.section,
            "title": self.title,
            "command": self.command,
            "date": date.map(|d| String::from_utf8_lossy(&d.stdout).trim().to_string()).unwrap_or_default(),
            "machine": {
                "host": read("/proc/sys/kernel/hostname"),
                "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                "kernel": read("/proc/sys/kernel/osrelease"),
                "cpu": cpu.unwrap_or_default(),
            },
            "unit": self.unit,
            "rows": rows,
            "notes": self.notes,
        });
        if let Some(reference) = self.reference {
            report["reference"] = json!(reference);
        }
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap() + "\n")
            .unwrap_or_else(|e| panic!("write {path}: {e}"));
        eprintln!("saved {path}");
    }
}
