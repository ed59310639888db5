//! `docs/bench.md` from the saved runs in `docs/bench/*.json`: files are read in name order and
//! grouped by their `section` (sections in order of first appearance), one table per file. A
//! file is a `blkctl bench` report, or a timings run (`"kind": "timings"`, [`super::timings`]).
//! The output depends only on the files, so a check can compare it with what is committed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use blockdev::size::format_size;
use blockdev::{Error, ErrorKind, Result};

use super::report::{BenchReport, CaseResult};
use super::timings::{self, TimingsReport};

/// One saved run: block I/O cases, or timings.
#[derive(Debug, Clone, PartialEq)]
pub enum SavedRun {
    /// A `blkctl bench --json` report.
    Bench(BenchReport),
    /// A timings run.
    Timings(TimingsReport),
}

impl SavedRun {
    fn section(&self) -> &str {
        match self {
            SavedRun::Bench(r) => &r.section,
            SavedRun::Timings(r) => &r.section,
        }
    }
}

fn parse_run(text: &str) -> std::result::Result<SavedRun, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    if value.get("kind").and_then(|k| k.as_str()) == Some(timings::KIND) {
        serde_json::from_value(value).map(SavedRun::Timings)
    } else {
        serde_json::from_value(value).map(SavedRun::Bench)
    }
}

/// The command that regenerates the document (printed at its top).
pub const REGENERATE: &str = "cargo run --release -p blkctl -- bench-report";

/// Every `*.json` in `dir`, parsed, in file-name order.
pub fn load_reports(dir: &Path) -> Result<Vec<(String, SavedRun)>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::from_io(e, format!("{}: read directory", dir.display())))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).map_err(|e| Error::from_io(e, format!("{}: read", p.display())))?;
            let report = parse_run(&text).map_err(|e| {
                Error::new(ErrorKind::InvalidInput, format!("{}: not a bench report: {e}", p.display()))
            })?;
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            Ok((name, report))
        })
        .collect()
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
    v.map_or_else(|| "–".to_string(), num)
}

fn kilo(list: &[f64]) -> String {
    list.iter().map(|v| format!("{:.0}k", v / 1000.0)).collect::<Vec<_>>().join(" ")
}

fn row(c: &CaseResult, fio: bool, rounds: bool) -> String {
    let l = &c.lat_us;
    let mut s = format!(
        "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
        c.workload,
        format_size(u64::from(c.bs)),
        c.qd,
        c.iops,
        num(c.mbps),
        num(l.p50),
        num(l.p99),
        num(l.p99_9),
        num(l.max),
        opt(c.cpu_us_per_op)
    );
    if fio {
        match (&c.fio, c.ratio) {
            (Some(f), Some(r)) => {
                let _ = write!(
                    s,
                    " {:.0} | {} | {} | {} | **{:.0}%** |",
                    f.iops,
                    num(f.lat_us.p50),
                    num(f.lat_us.p99),
                    opt(f.cpu_us_per_op),
                    r * 100.0
                );
            }
            _ => s += " – | – | – | – | – |",
        }
    }
    if rounds {
        let _ = write!(s, " {}", kilo(&c.iops_rounds));
        if fio {
            let _ = write!(s, " / {}", kilo(&c.fio_iops_rounds));
        }
        s += " |";
    }
    s
}

fn table(out: &mut String, r: &BenchReport) {
    let fio = r.cases.iter().any(|c| c.fio.is_some());
    let rounds = r.cases.iter().any(|c| !c.iops_rounds.is_empty());
    out.push_str("| workload | bs | qd | IOPS | MB/s | p50 µs | p99 µs | p99.9 µs | max µs | CPU µs/op |");
    if fio {
        out.push_str(" fio IOPS | fio p50 µs | fio p99 µs | fio CPU µs/op | strata/fio |");
    }
    if rounds {
        out.push_str(if fio { " IOPS per round (strata / fio) |" } else { " IOPS per round |" });
    }
    out.push('\n');
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    if fio {
        out.push_str("---:|---:|---:|---:|---:|");
    }
    if rounds {
        out.push_str("---|");
    }
    out.push('\n');
    for c in &r.cases {
        out.push_str(&row(c, fio, rounds));
        out.push('\n');
    }
}

/// Render the document from `(file name, report)` pairs.
pub fn render(reports: &[(String, SavedRun)]) -> String {
    let mut out = String::new();
    out.push_str("# strata benchmarks\n\n");
    let _ = writeln!(
        out,
        "<!-- Generated from docs/bench/*.json: do not edit by hand. -->\n\
         Regenerate this page from the saved runs in `docs/bench/` with:\n\n```\n{REGENERATE}\n```\n\n\
         Add a run by saving `blkctl bench ... --json --section \"SECTION\"` output as a new\n\
         `docs/bench/NAME.json` (files are read in name order and grouped by section), then regenerate.\n\
         `blkctl` in the commands below is `cargo run --release -p blkctl --`.\n\n\
         IOPS and MB/s (10^6 bytes per second) count completed requests over the case's wall time.\n\
         Latency runs from submission to the completion being seen by the submitting task, in\n\
         microseconds, from a log-linear histogram (3% resolution). With `--fio`, fio runs the same\n\
         case (`--ioengine=io_uring`, one job, same file, same range, same queue depth) right after\n\
         strata, and `strata/fio` is the ratio of IOPS; fio's latency is its total (`lat_ns`) latency.\n\
         CPU µs/op is the process's user + system CPU time (io_uring workers included) per request:\n\
         on a shared machine IOPS swing with other load, CPU per request much less. With `--rounds N`\n\
         each case runs N times alternating with fio, and the row shows each side's median round.\n"
    );
    let mut sections: Vec<&str> = Vec::new();
    for (_, r) in reports {
        if !sections.contains(&r.section()) {
            sections.push(r.section());
        }
    }
    for section in sections {
        let _ = writeln!(out, "## {section}\n");
        for (name, run) in reports.iter().filter(|(_, r)| r.section() == section) {
            let r = match run {
                SavedRun::Bench(r) => r,
                SavedRun::Timings(t) => {
                    render_timings(&mut out, name, t);
                    continue;
                }
            };
            let m = &r.machine;
            let _ = writeln!(out, "### `{}` — {}\n", r.spec, name);
            let _ = writeln!(out, "```\n{}\n```\n", r.command);
            let cpu = if m.cpu.is_empty() { String::new() } else { format!(", {}", m.cpu) };
            let _ = writeln!(
                out,
                "Machine `{}`: nproc {}{cpu}, kernel {}. Run {} with strata {}; target `{}`, {} touched.\n",
                m.host,
                m.nproc,
                m.kernel,
                r.date,
                r.strata_version,
                r.target,
                format_size(r.range_bytes)
            );
            if let Some(n) = &r.notes {
                let _ = writeln!(out, "{n}\n");
            }
            table(&mut out, r);
            out.push('\n');
        }
    }
    out
}

fn render_timings(out: &mut String, name: &str, t: &TimingsReport) {
    let m = &t.machine;
    let _ = writeln!(out, "### {} — {}\n", t.title, name);
    let _ = writeln!(out, "```\n{}\n```\n", t.command);
    let cpu = if m.cpu.is_empty() { String::new() } else { format!(", {}", m.cpu) };
    let _ = writeln!(out, "Machine `{}`: nproc {}{cpu}, kernel {}. Run {}.\n", m.host, m.nproc, m.kernel, t.date);
    if let Some(n) = &t.notes {
        let _ = writeln!(out, "{n}\n");
    }
    timings::table(out, t);
    out.push('\n');
}

/// Render `dir`'s reports into `out`. With `check`, only compare and fail if `out` differs.
pub fn write_document(dir: &Path, out: &Path, check: bool) -> Result<usize> {
    let reports = load_reports(dir)?;
    if reports.is_empty() {
        return Err(Error::new(ErrorKind::NotFound, format!("{}: no *.json bench reports", dir.display())));
    }
    let text = render(&reports);
    if check {
        let current = std::fs::read_to_string(out).unwrap_or_default();
        if current != text {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{} is out of date with {} (run: {REGENERATE})", out.display(), dir.display()),
            ));
        }
        return Ok(reports.len());
    }
    std::fs::write(out, text).map_err(|e| Error::from_io(e, format!("{}: write", out.display())))?;
    Ok(reports.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::fio::FioResult;
    use crate::bench::report::{Latency, Machine, SCHEMA};
    use crate::bench::Workload;

    fn report(section: &str, with_fio: bool) -> BenchReport {
        let lat = Latency { p50: 10.0, p90: 12.0, p99: 20.0, p99_9: 40.0, max: 100.0, mean: 11.0 };
        BenchReport {
            schema: SCHEMA,
            section: section.into(),
            command: "blkctl bench format=mem,size=1G".into(),
            date: "2025-01-01T00:00:00Z".into(),
            strata_version: "0.1.0".into(),
            machine: Machine { host: "h".into(), nproc: 2, kernel: "6.1".into(), cpu: String::new() },
            spec: "format=mem,size=1G".into(),
            target: "mem:1G".into(),
            range_bytes: 1 << 30,
            cases: vec![CaseResult {
                workload: Workload::RandRead,
                bs: 4096,
                qd: 32,
                ops: 10,
                seconds: 1.0,
                iops: 100_000.0,
                mbps: 409.6,
                lat_us: lat,
                cpu_us_per_op: Some(3.0),
                fio: with_fio.then_some(FioResult {
                    iops: 110_000.0,
                    mbps: 450.0,
                    ops: 110_000,
                    lat_us: lat,
                    cpu_us_per_op: Some(4.0),
                }),
                ratio: with_fio.then_some(100.0 / 110.0),
                iops_rounds: Vec::new(),
                fio_iops_rounds: Vec::new(),
            }],
            notes: None,
        }
    }

    #[test]
    fn sections_group_files_in_order() {
        let reports = vec![
            ("10-a.json".to_string(), SavedRun::Bench(report("RAM disk", false))),
            ("20-b.json".to_string(), SavedRun::Bench(report("raw file vs fio", true))),
            ("30-c.json".to_string(), SavedRun::Bench(report("RAM disk", false))),
        ];
        let md = render(&reports);
        let ram = md.find("## RAM disk").unwrap();
        let raw = md.find("## raw file vs fio").unwrap();
        assert!(ram < md.find("30-c.json").unwrap() && md.find("30-c.json").unwrap() < raw, "{md}");
        assert_eq!(md.matches("## RAM disk").count(), 1);
        assert!(
            md.contains(
                "| randread | 4K | 32 | 100000 | 410 | 10.0 | 20.0 | 40.0 | 100 | 3.00 | 110000 | 10.0 | 20.0 | 4.00 | **91%** |"
            ),
            "{md}"
        );
        assert!(md.contains(REGENERATE));
    }

    #[test]
    fn write_then_check_agrees_and_detects_drift() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("bench");
        std::fs::create_dir(&json).unwrap();
        std::fs::write(json.join("a.json"), serde_json::to_string(&report("S", true)).unwrap()).unwrap();
        let out = dir.path().join("bench.md");
        assert_eq!(write_document(&json, &out, false).unwrap(), 1);
        assert!(write_document(&json, &out, true).is_ok());
        std::fs::write(json.join("b.json"), serde_json::to_string(&report("T", false)).unwrap()).unwrap();
        assert!(write_document(&json, &out, true).unwrap_err().to_string().contains("out of date"));
    }

    #[test]
    fn timings_files_render_in_their_section() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("bench");
        std::fs::create_dir(&json).unwrap();
        std::fs::write(json.join("10-a.json"), serde_json::to_string(&report("S", false)).unwrap()).unwrap();
        let t = crate::bench::timings::tests::sample();
        std::fs::write(json.join("20-t.json"), serde_json::to_string(&t).unwrap()).unwrap();
        let runs = load_reports(&json).unwrap();
        assert!(matches!(runs[1].1, SavedRun::Timings(_)));
        let md = render(&runs);
        assert!(md.find("## S").unwrap() < md.find("## vmm-mini").unwrap(), "{md}");
        assert!(md.contains("### start-up — 20-t.json"), "{md}");
        assert!(md.contains("| round trip | strata | 4 | 3.00 | 7.50 | 12.0 | 2.50× |"), "{md}");
    }

    #[test]
    fn broken_json_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.json"), "{").unwrap();
        let e = load_reports(dir.path()).unwrap_err();
        assert!(e.to_string().contains("x.json"), "{e}");
    }
}
