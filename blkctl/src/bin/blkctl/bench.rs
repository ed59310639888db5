//! `blkctl bench` and `blkctl bench-report`: parse the options and call the bench library.

use std::path::PathBuf;
use std::time::Duration;

use blkctl::bench::report::{table_header, table_row};
use blkctl::bench::run::{run_bench, BenchOptions, ALL_QDS};
use blkctl::progress::{self, Meter, Unit};
use blkctl::bench::{markdown, Limit, Workload};

use crate::args;

/// The bench subcommands.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Measure a disk: 4K random and 1M sequential reads and writes at each queue depth, from one
    /// thread, with IOPS, MB/s and latency percentiles.
    ///
    /// Writes over the disk (a prefill of the whole range, then the write cases): use a scratch
    /// file or a RAM disk. Example: blkctl bench format=mem,size=1G
    #[command(after_help = formats_help())]
    Bench(BenchArgs),
    /// Regenerate docs/bench.md from the saved runs in docs/bench/*.json.
    BenchReport(ReportArgs),
}

fn formats_help() -> String {
    format!("Disk specs:\n{}", vhost_user_blk::stack::formats_help())
}

/// Options of `blkctl bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// The disk, e.g. format=mem,size=1G or format=raw,path=/dev/shm/x.img,direct=on; or
    /// socket=PATH[,read-only=on][,num-queues=N] to drive a vhost-user-blk server through libblkio.
    spec: String,
    /// Workloads, comma-separated: randread, randwrite, seqread, seqwrite.
    #[arg(long, value_delimiter = ',', default_value = "randread,randwrite,seqread,seqwrite")]
    workloads: Vec<Workload>,
    /// Queue depths, comma-separated, or "all" for 1,2,4,...,128.
    #[arg(long, value_delimiter = ',', default_value = "1,32", value_parser = parse_qd)]
    qd: Vec<String>,
    /// Time per case (3s, 500ms, 1m).
    #[arg(long, value_parser = args::duration, default_value = "2s", conflicts_with = "ops")]
    time: Duration,
    /// Requests per case instead of a time.
    #[arg(long)]
    ops: Option<u64>,
    /// Touch at most this much of the disk, from its start (e.g. 256M).
    #[arg(long, value_parser = args::size)]
    size_limit: Option<u64>,
    /// Print the report as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// Also run fio (io_uring engine) on the same file for each case, as the ceiling (format=raw).
    #[arg(long)]
    fio: bool,
    /// Section heading for docs/bench.md.
    #[arg(long, default_value = "blkctl bench")]
    section: String,
    /// A note for docs/bench.md.
    #[arg(long)]
    note: Option<String>,
    /// Seed of the random offsets.
    #[arg(long, default_value_t = 0x5EED)]
    seed: u64,
    /// Run each case this many times (alternating with fio) and report the median round: on a
    /// shared machine IOPS swing with other load.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=99))]
    rounds: u32,
    /// Do not prefill the range first: writes then land on blocks never written (the
    /// allocating-write path of qcow2 and thin volumes). Use a fresh disk per run.
    #[arg(long)]
    no_prefill: bool,
}

fn parse_qd(s: &str) -> Result<String, String> {
    if s == "all" {
        return Ok(s.to_string());
    }
    match s.parse::<u32>() {
        Ok(n) if (1..=4096).contains(&n) => Ok(s.to_string()),
        _ => Err(format!("'{s}' is not a queue depth (1 to 4096, or all)")),
    }
}

fn expand_qds(list: &[String]) -> Vec<u32> {
    let mut out = Vec::new();
    for s in list {
        if s == "all" {
            out.extend(ALL_QDS);
        } else if let Ok(n) = s.parse() {
            out.push(n);
        }
    }
    out
}

/// Options of `blkctl bench-report`.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// Directory of saved runs.
    #[arg(long, default_value = "docs/bench")]
    dir: PathBuf,
    /// The document to write.
    #[arg(long, default_value = "docs/bench.md")]
    out: PathBuf,
    /// Only check that the document is up to date (exit non-zero if not).
    #[arg(long)]
    check: bool,
}

fn quote(arg: &str) -> String {
    if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=,./:+@%".contains(&b)) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

impl crate::Group for Cmd {
    fn run(self) -> Result<(), Box<dyn std::error::Error>> {
        match self {
            Cmd::Bench(a) => bench(a),
            Cmd::BenchReport(a) => {
                let n = markdown::write_document(&a.dir, &a.out, a.check)?;
                let verb = if a.check { "is up to date with" } else { "written from" };
                eprintln!("{} {verb} {n} report(s) in {}", a.out.display(), a.dir.display());
                Ok(())
            }
        }
    }
}

fn bench(a: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut argv: Vec<String> = std::env::args().collect();
    argv[0] = "blkctl".to_string();
    let opts = BenchOptions {
        spec: a.spec,
        workloads: a.workloads,
        qds: expand_qds(&a.qd),
        limit: a.ops.map_or(Limit::Time(a.time), Limit::Ops),
        size_limit: a.size_limit,
        fio: a.fio,
        section: a.section,
        command: argv.iter().map(|s| quote(s)).collect::<Vec<_>>().join(" "),
        seed: a.seed,
        rounds: a.rounds,
        no_prefill: a.no_prefill,
    };
    // The table goes to stdout, or to stderr when stdout carries JSON.
    let print = |line: &str| if a.json { eprintln!("{line}") } else { println!("{line}") };
    let mut header = Some(table_header(opts.fio));
    // One step per case (every workload at every queue depth), a bar on a terminal only.
    let cases = (opts.workloads.len() * opts.qds.len()) as u64;
    let mut meter = Meter::new("bench", Unit::Steps, cases, progress::show_on_stderr(false));
    let mut done = 0;
    let report = run_bench(&opts, &mut |row| {
        meter.suspend(|| {
            if let Some(h) = header.take() {
                print(&h);
            }
            print(&table_row(row, opts.fio));
        });
        done += 1;
        meter.set(done);
    });
    meter.finish();
    let mut report = report?;
    report.notes = a.note;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
