//! A whole `blkctl bench` run: build the disk from its spec, prefill the range, run every case
//! (and fio beside it), and collect the report.

use std::path::PathBuf;
use std::time::Duration;

use blockdev::{Error, ErrorKind, Result};

use super::fio::FioRunner;
use super::report::{BenchReport, CaseResult, SCHEMA};
use super::{sysinfo, BenchTarget, Case, DevTarget, Limit, Workload};
use vhost_user_blk::spec::Spec;
use vhost_user_blk::stack::{open_disk, OpenCtx, NODE_PREFIX};

/// The cases touch whole MiBs of the disk (so 1 MiB sequential requests tile the range).
pub const RANGE_ALIGN: u64 = 1 << 20;

/// Queue depths run when none are given.
pub const DEFAULT_QDS: [u32; 2] = [1, 32];

/// Every queue depth of the full sweep.
pub const ALL_QDS: [u32; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

/// Time per case when none is given.
pub const DEFAULT_TIME: Duration = Duration::from_secs(2);

/// What to measure and how.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The disk spec.
    pub spec: String,
    /// Workloads, in order.
    pub workloads: Vec<Workload>,
    /// Queue depths, each run for every workload.
    pub qds: Vec<u32>,
    /// When each case stops.
    pub limit: Limit,
    /// Touch at most this many bytes from the start of the disk.
    pub size_limit: Option<u64>,
    /// Run fio on the same file as the ceiling (format=raw only).
    pub fio: bool,
    /// Heading for `docs/bench.md`.
    pub section: String,
    /// The command line, recorded in the report.
    pub command: String,
    /// Seed of the offset generators.
    pub seed: u64,
    /// Times each case runs (alternating with fio); the row is the median round.
    pub rounds: u32,
    /// Skip the prefill, so writes land on blocks never written before (the allocating-write
    /// cost of qcow2 and thin volumes); reads of unwritten blocks measure the layer's hole path.
    pub no_prefill: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            spec: String::new(),
            workloads: Workload::ALL.to_vec(),
            qds: DEFAULT_QDS.to_vec(),
            limit: Limit::Time(DEFAULT_TIME),
            size_limit: None,
            fio: false,
            section: "blkctl bench".to_string(),
            command: String::new(),
            seed: 0x5EED,
            rounds: 1,
            no_prefill: false,
        }
    }
}

/// The cases of a run, workload-major, over `[0, range)`.
pub fn plan(opts: &BenchOptions, range: u64) -> Vec<Case> {
    let mut cases = Vec::new();
    for &workload in &opts.workloads {
        for &qd in &opts.qds {
            cases.push(Case { workload, bs: workload.default_bs(), qd, range, limit: opts.limit, seed: opts.seed });
        }
    }
    cases
}

/// The bytes a run touches: the disk (or `size_limit`, if smaller), in whole MiBs.
pub fn bench_range(size: u64, size_limit: Option<u64>) -> Result<u64> {
    let range = size.min(size_limit.unwrap_or(u64::MAX));
    let range = range - range % RANGE_ALIGN;
    if range == 0 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("bench needs at least 1M of disk (the disk has {size} bytes, the size limit is {size_limit:?})"),
        ));
    }
    Ok(range)
}

/// The file and O_DIRECT setting fio should use for `spec` (format=raw on a file only).
pub fn fio_file(spec: &Spec) -> Result<(PathBuf, bool)> {
    let refuse =
        |why: &str| Err(Error::new(ErrorKind::InvalidInput, format!("--fio needs format=raw on a file: {why}")));
    if spec.get("format") != Some("raw") {
        return refuse(&format!("spec '{}' is format={}", spec.source(), spec.get("format").unwrap_or("(none)")));
    }
    let Some(path) = spec.get("path") else { return refuse("the spec has no path") };
    if path.starts_with(NODE_PREFIX) {
        return refuse(&format!("{path} is a node, not a file"));
    }
    let direct = matches!(spec.get("direct"), Some("on" | "true"));
    Ok((PathBuf::from(path), direct))
}

/// Write the whole range once (1 MiB sequential), so reads hit real data and writes land on
/// allocated blocks.
pub fn prefill(target: &mut dyn BenchTarget, range: u64, seed: u64) -> Result<()> {
    let bs = RANGE_ALIGN.min(range) as u32;
    let ops = range / u64::from(bs);
    let case = Case { workload: Workload::SeqWrite, bs, qd: 4, range, limit: Limit::Ops(ops), seed };
    target.run(&case).map(|_| ()).map_err(|e| e.context("bench prefill"))
}

/// User plus system CPU time of this process so far (every thread, io_uring workers included).
pub fn process_cpu_time() -> Option<Duration> {
    // SAFETY: rusage is plain data; zeroed is valid, and getrusage fills it in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a live, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return None;
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    Some(tv(ru.ru_utime) + tv(ru.ru_stime))
}

/// The element of `items` with the median `key` (the lower one of an even count).
fn median_by<T>(mut items: Vec<T>, key: impl Fn(&T) -> f64) -> Option<T> {
    items.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let mid = items.len().saturating_sub(1) / 2;
    items.into_iter().nth(mid)
}

/// Run `cases` on `target` (fio beside each when given), reporting each row as it is done.
/// With `rounds` > 1 each case runs that many times, alternating with fio, and the row holds the
/// median round of each side (every round's IOPS is kept in the row).
pub fn run_cases(
    target: &mut dyn BenchTarget,
    cases: &[Case],
    rounds: u32,
    fio: Option<&FioRunner>,
    on_case: &mut dyn FnMut(&CaseResult),
) -> Result<Vec<CaseResult>> {
    let mut rows = Vec::with_capacity(cases.len());
    for case in cases {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for round in 0..rounds.max(1) {
            tracing::info!(target = %target.describe(), "bench {} bs={} qd={} round {round}", case.workload, case.bs, case.qd);
            let cpu_before = process_cpu_time();
            let stats = target.run(case)?;
            let cpu = process_cpu_time().zip(cpu_before).map(|(after, before)| after.saturating_sub(before));
            ours.push(CaseResult::new(case.workload, case.bs, case.qd, &stats, cpu, None));
            if let Some(f) = fio {
                tracing::info!("{}", f.command_line(case));
                theirs.push(f.run(case)?);
            }
        }
        let iops_rounds: Vec<f64> = ours.iter().map(|r| r.iops).collect();
        let fio_iops_rounds: Vec<f64> = theirs.iter().map(|r| r.iops).collect();
        let Some(mut row) = median_by(ours, |r| r.iops) else { continue };
        row = row.with_fio(median_by(theirs, |r| r.iops));
        if rounds > 1 {
            row.iops_rounds = iops_rounds;
            row.fio_iops_rounds = fio_iops_rounds;
        }
        on_case(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// The whole run for `opts`: open the spec's disk, prefill, every case, the report.
pub fn run_bench(opts: &BenchOptions, on_case: &mut dyn FnMut(&CaseResult)) -> Result<BenchReport> {
    if opts.workloads.is_empty() || opts.qds.is_empty() {
        return Err(Error::new(ErrorKind::InvalidInput, "bench: no workloads or no queue depths to run"));
    }
    let mut spec = Spec::parse(&opts.spec)?;
    // `socket=PATH[,read-only=on][,num-queues=N]`: a vhost-user-blk server (ours, qemu-storage-daemon, SPDK),
    // driven through libblkio instead of opening a disk in this process.
    if let Some(socket) = spec.take("socket") {
        let read_only = spec.take_bool("read-only")?.unwrap_or(false);
        let num_queues = spec.take_u32("num-queues")?.unwrap_or(1);
        spec.finish(&["socket", "read-only", "num-queues"])?;
        if opts.fio {
            return Err(Error::new(ErrorKind::InvalidInput, "bench: --fio needs a format=raw file, not a socket"));
        }
        let mut target = super::VhostUserTarget::connect(std::path::Path::new(&socket), read_only, num_queues)?;
        return run_on_target(opts, &mut target, None, on_case);
    }
    let fio = if opts.fio {
        let (path, direct) = fio_file(&spec)?;
        Some(FioRunner::new(&path, direct)?)
    } else {
        None
    };
    let dev = open_disk(&mut spec, &OpenCtx::new())?;
    let mut target = DevTarget::new(dev)?;
    run_on_target(opts, &mut target, fio.as_ref(), on_case)
}

/// The run for `opts` on an already-open target (a vhost-user client, say): prefill, every case,
/// the report. `opts.spec` is recorded as given (a socket path is fine).
pub fn run_on_target(
    opts: &BenchOptions,
    target: &mut dyn BenchTarget,
    fio: Option<&FioRunner>,
    on_case: &mut dyn FnMut(&CaseResult),
) -> Result<BenchReport> {
    if opts.workloads.is_empty() || opts.qds.is_empty() {
        return Err(Error::new(ErrorKind::InvalidInput, "bench: no workloads or no queue depths to run"));
    }
    let range = bench_range(target.size(), opts.size_limit)?;
    if target.read_only() {
        if let Some(w) = opts.workloads.iter().find(|w| w.is_write()) {
            return Err(Error::new(ErrorKind::ReadOnly, format!("bench: {w} on read-only disk '{}'", opts.spec)));
        }
    } else if opts.no_prefill {
        tracing::info!("bench: no prefill: writes land on unwritten blocks of {}", target.describe());
    } else {
        tracing::info!("bench: prefilling {} bytes of {}", range, target.describe());
        prefill(target, range, opts.seed)?;
    }
    let cases = plan(opts, range);
    let rows = run_cases(target, &cases, opts.rounds, fio, on_case)?;
    Ok(BenchReport {
        schema: SCHEMA,
        section: opts.section.clone(),
        command: opts.command.clone(),
        date: sysinfo::utc_now(),
        strata_version: sysinfo::strata_version(),
        machine: sysinfo::machine(),
        spec: opts.spec.clone(),
        target: target.describe(),
        range_bytes: range,
        cases: rows,
        notes: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_picks_the_middle_round() {
        assert_eq!(median_by(vec![3.0, 1.0, 2.0], |v| *v), Some(2.0));
        assert_eq!(median_by(vec![4.0, 1.0, 3.0, 2.0], |v| *v), Some(2.0));
        assert_eq!(median_by(Vec::<f64>::new(), |v| *v), None);
    }

    #[test]
    fn rounds_keep_every_rounds_iops() {
        let opts = BenchOptions {
            spec: "format=mem,size=2M".into(),
            workloads: vec![Workload::RandRead],
            qds: vec![2],
            limit: Limit::Ops(100),
            rounds: 3,
            ..Default::default()
        };
        let report = run_bench(&opts, &mut |_| {}).unwrap();
        let row = &report.cases[0];
        assert_eq!(row.iops_rounds.len(), 3);
        assert!(row.iops_rounds.contains(&row.iops));
        assert!(row.fio_iops_rounds.is_empty());
    }

    #[test]
    fn read_only_disk_runs_reads_and_refuses_writes() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(2 << 20).unwrap();
        let spec = format!("format=raw,path={},read-only=on", f.path().display());
        let reads = BenchOptions {
            spec: spec.clone(),
            workloads: vec![Workload::RandRead],
            limit: Limit::Ops(50),
            ..Default::default()
        };
        let report = run_bench(&reads, &mut |_| {}).unwrap();
        assert_eq!(report.cases.len(), 2);
        let writes = BenchOptions { workloads: vec![Workload::SeqWrite], ..reads };
        let e = run_bench(&writes, &mut |_| {}).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ReadOnly);
        assert!(e.to_string().contains("seqwrite"), "{e}");
    }

    #[test]
    fn plan_is_workload_major() {
        let opts = BenchOptions {
            workloads: vec![Workload::RandRead, Workload::SeqWrite],
            qds: vec![1, 8],
            ..Default::default()
        };
        let cases = plan(&opts, 1 << 30);
        let got: Vec<_> = cases.iter().map(|c| (c.workload, c.qd, c.bs)).collect();
        assert_eq!(
            got,
            [
                (Workload::RandRead, 1, 4096),
                (Workload::RandRead, 8, 4096),
                (Workload::SeqWrite, 1, 1 << 20),
                (Workload::SeqWrite, 8, 1 << 20)
            ]
        );
    }

    #[test]
    fn range_is_whole_mebibytes_and_limited() {
        assert_eq!(bench_range(1 << 30, None).unwrap(), 1 << 30);
        assert_eq!(bench_range(1 << 30, Some(3 << 20)).unwrap(), 3 << 20);
        assert_eq!(bench_range((5 << 20) + 4096, None).unwrap(), 5 << 20);
        assert!(bench_range(4096, None).is_err());
    }

    #[test]
    fn fio_needs_a_raw_file() {
        let ok = fio_file(&Spec::parse("format=raw,path=/dev/shm/x,direct=on").unwrap()).unwrap();
        assert_eq!(ok, (PathBuf::from("/dev/shm/x"), true));
        assert!(fio_file(&Spec::parse("format=mem,size=1G").unwrap()).is_err());
        assert!(fio_file(&Spec::parse("format=raw,path=node:a").unwrap()).is_err());
    }

    #[test]
    fn quick_run_on_a_mem_disk_reports_every_case() {
        let opts = BenchOptions {
            spec: "format=mem,size=4M".into(),
            limit: Limit::Ops(300),
            qds: vec![1, 4],
            ..Default::default()
        };
        let mut seen = 0;
        let report = run_bench(&opts, &mut |_| seen += 1).unwrap();
        assert_eq!(seen, 8);
        assert_eq!(report.cases.len(), 8);
        assert_eq!(report.range_bytes, 4 << 20);
        for c in &report.cases {
            assert_eq!(c.ops, 300);
            let l = c.lat_us;
            assert!(l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p99_9 && l.p99_9 <= l.max, "{c:?}");
            assert!(c.fio.is_none());
        }
        assert!(report.target.starts_with("mem:"));
    }
}
