//! `blkctl top`: a live view of a running daemon's exports, one row per export per interval,
//! from the control socket's `list` and `stats` (as `iostat -x 1` shows disks).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};
use vhost_user_blk::api::raid::call;
use vhost_user_blk::server::stats::percentile;
use vhost_user_blk::server::StatsSnapshot;

use crate::args;

/// The top subcommand.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Show a running daemon's exports live: per export and interval, read and write IOPS and
    /// MB/s, p50 and p99 latency of the requests completed in the interval, requests in flight,
    /// and the share of request time spent waiting for I/O limits. One table per interval, as
    /// `iostat -x 1`; stop with Ctrl-C.
    ///
    /// The first table comes one interval after the start (rates need two samples). Latency
    /// percentiles are upper bounds of power-of-two microsecond buckets. Example:
    /// blkctl top --api-socket /run/strata/api.sock
    Top(TopArgs),
}

/// Options of `blkctl top`.
#[derive(clap::Args)]
pub struct TopArgs {
    /// The daemon's control socket (vhost-user-blk --api-socket).
    #[arg(long, value_name = "PATH")]
    api_socket: PathBuf,
    /// Time between samples (e.g. 1s, 500ms, 2).
    #[arg(long, default_value = "1s", value_parser = args::duration)]
    interval: Duration,
    /// Print one report (over one interval) and exit.
    #[arg(long)]
    once: bool,
    /// Stop after this many reports.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// One JSON object per report and line on stdout, for scripts.
    #[arg(long)]
    json: bool,
}

impl crate::Group for Cmd {
    fn run(self) -> Result<(), Box<dyn std::error::Error>> {
        let Cmd::Top(a) = self;
        let count = if a.once { Some(1) } else { a.count };
        let mut prev = (Instant::now(), sample(&a.api_socket)?);
        let mut done = 0u64;
        let stdout = std::io::stdout();
        while count.is_none_or(|c| done < c) {
            std::thread::sleep(a.interval);
            let now = (Instant::now(), sample(&a.api_socket)?);
            let rows = rows(&prev.1, &now.1, now.0.duration_since(prev.0));
            let mut out = stdout.lock();
            let text = if a.json { json_line(&rows, now.0.duration_since(prev.0)) } else { table(&rows) };
            // A closed pipe (`| head`) ends the view quietly.
            if out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_err() {
                return Ok(());
            }
            prev = now;
            done += 1;
        }
        Ok(())
    }
}

/// Every export's statistics now, by name.
fn sample(sock: &Path) -> Result<BTreeMap<String, StatsSnapshot>, String> {
    let list = call(sock, &json!({"cmd": "list"}))?;
    let names: Vec<String> = list
        .as_array()
        .ok_or("the daemon's list answer is not an array")?
        .iter()
        .filter_map(|e| e["name"].as_str().map(str::to_string))
        .collect();
    let mut out = BTreeMap::new();
    for name in names {
        match call(sock, &json!({"cmd": "stats", "name": name})) {
            Ok(v) => {
                let s: StatsSnapshot = serde_json::from_value(v)
                    .map_err(|e| format!("{}: stats of {name}: unexpected answer: {e}", sock.display()))?;
                out.insert(name, s);
            }
            // Removed between the list and the stats: not shown this time.
            Err(e) if e.contains("no such export") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// One export's activity over one interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Row {
    name: String,
    read_iops: f64,
    write_iops: f64,
    read_mb_s: f64,
    write_mb_s: f64,
    /// Median latency of the requests completed in the interval (µs, bucket upper bound).
    latency_p50_us: u64,
    /// 99th percentile latency of the interval (µs, bucket upper bound).
    latency_p99_us: u64,
    in_flight: u64,
    /// Time requests waited for I/O limits over their whole time, in [0, 1].
    throttled_share: f64,
}

/// The rows for the exports in `now`; one that was not in `prev`, or whose counters went
/// back (removed and added again), counts from zero.
fn rows(prev: &BTreeMap<String, StatsSnapshot>, now: &BTreeMap<String, StatsSnapshot>, dt: Duration) -> Vec<Row> {
    let secs = dt.as_secs_f64().max(1e-9);
    now.iter()
        .map(|(name, n)| {
            let p = prev.get(name).filter(|p| p.reads <= n.reads && p.writes <= n.writes);
            let d = |f: fn(&StatsSnapshot) -> u64| f(n).saturating_sub(p.map_or(0, f));
            let df = |f: fn(&StatsSnapshot) -> f64| (f(n) - p.map_or(0.0, f)).max(0.0);
            let hist: Vec<u64> = n
                .latency_histogram_us
                .iter()
                .enumerate()
                .map(|(i, &v)| v.saturating_sub(p.and_then(|p| p.latency_histogram_us.get(i).copied()).unwrap_or(0)))
                .collect();
            let busy = df(|s| s.latency_sum_seconds);
            Row {
                name: name.clone(),
                read_iops: d(|s| s.reads) as f64 / secs,
                write_iops: d(|s| s.writes) as f64 / secs,
                read_mb_s: d(|s| s.read_bytes) as f64 / secs / 1e6,
                write_mb_s: d(|s| s.write_bytes) as f64 / secs / 1e6,
                latency_p50_us: percentile(&hist, 0.5),
                latency_p99_us: percentile(&hist, 0.99),
                in_flight: n.in_flight,
                throttled_share: if busy > 0.0 { (df(|s| s.throttled_seconds) / busy).min(1.0) } else { 0.0 },
            }
        })
        .collect()
}

fn table(rows: &[Row]) -> String {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max("export".len());
    let mut s = format!(
        "{:<width$} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10}\n",
        "export", "r/s", "w/s", "rMB/s", "wMB/s", "p50_us", "p99_us", "inflight", "throttled%"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<width$} {:>10.1} {:>10.1} {:>9.2} {:>9.2} {:>9} {:>9} {:>8} {:>10.1}\n",
            r.name,
            r.read_iops,
            r.write_iops,
            r.read_mb_s,
            r.write_mb_s,
            r.latency_p50_us,
            r.latency_p99_us,
            r.in_flight,
            r.throttled_share * 100.0
        ));
    }
    s.push('\n');
    s
}

fn json_line(rows: &[Row], dt: Duration) -> String {
    let time = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let v: Value = json!({"time": time, "interval_s": dt.as_secs_f64(), "exports": rows});
    let mut s = v.to_string();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(reads: u64, writes: u64, hist_at: usize, n: u64, busy: f64, throttled: f64) -> StatsSnapshot {
        let mut hist = vec![0u64; 32];
        hist[hist_at] = n;
        StatsSnapshot {
            reads,
            writes,
            flushes: 0,
            discards: 0,
            others: 0,
            read_bytes: reads * 4096,
            write_bytes: writes * 4096,
            errors: 0,
            in_flight: 3,
            connections: 1,
            latency_p50_us: 0,
            latency_p99_us: 0,
            latency_p999_us: 0,
            throttled_seconds: throttled,
            latency_sum_seconds: busy,
            latency_histogram_us: hist,
        }
    }

    #[test]
    fn rates_and_percentiles_cover_the_interval_only() {
        let prev = BTreeMap::from([("a".to_string(), snap(1000, 0, 2, 1000, 1.0, 0.0))]);
        let now = BTreeMap::from([
            ("a".to_string(), snap(3000, 500, 2, 1000, 3.0, 0.5)),
            ("new".to_string(), snap(10, 0, 5, 10, 0.0, 0.0)),
        ]);
        let mut now_a = now["a"].clone();
        now_a.latency_histogram_us[6] = 2500; // the interval's requests were slow
        let now = BTreeMap::from([("a".to_string(), now_a), ("new".to_string(), now["new"].clone())]);
        let r = rows(&prev, &now, Duration::from_secs(2));
        assert_eq!((r[0].read_iops, r[0].write_iops), (1000.0, 250.0));
        assert!((r[0].read_mb_s - 2000.0 * 4096.0 / 2.0 / 1e6).abs() < 1e-9);
        assert_eq!((r[0].latency_p50_us, r[0].latency_p99_us), (64, 64), "old fast requests are not counted");
        assert!((r[0].throttled_share - 0.25).abs() < 1e-9);
        assert_eq!((r[1].name.as_str(), r[1].read_iops), ("new", 5.0));
        let t = table(&r);
        assert!(t.starts_with("export") && t.contains("1000.0") && t.contains("25.0"), "{t}");
        let j: Value = serde_json::from_str(json_line(&r, Duration::from_secs(2)).trim()).unwrap();
        assert_eq!(j["exports"][0]["read_iops"], 1000.0);
    }

    #[test]
    fn an_export_added_again_counts_from_zero() {
        let prev = BTreeMap::from([("a".to_string(), snap(5000, 0, 2, 5000, 1.0, 0.0))]);
        let now = BTreeMap::from([("a".to_string(), snap(100, 0, 2, 100, 0.1, 0.0))]);
        let r = rows(&prev, &now, Duration::from_secs(1));
        assert_eq!(r[0].read_iops, 100.0);
    }
}
