//! `blkctl fio`: parse the options and call the runner in `vhost_user_blk::fio`.

use std::path::PathBuf;
use std::time::Duration;

use vhost_user_blk::fio::runner::{run, FioOptions, FioRun};

use crate::args;

/// The fio subcommand.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Run a fio job file in a real guest on a strata disk: serve SPEC with the vhost-user-blk
    /// daemon, boot a QEMU TCG guest whose initramfs carries the host's fio, run JOB on /dev/vda,
    /// collect fio's JSON (json+), stop everything and print one summary line.
    ///
    /// The job WRITES to the disk (use a scratch copy). With --compare qsd, the same job then runs
    /// against qemu-storage-daemon serving a copy of the disk's data taken before the strata run
    /// (raw and qcow2 files are copied as they are; other stacks are read through strata into a
    /// raw file). Under TCG the numbers measure the emulator as much as the storage: use
    /// `blkctl bench` for storage performance, this for what a real guest sees. Only QEMU
    /// runs the guest here (vmm-mini is not wired in: it needs nested KVM, see docs/vmm-mini.md).
    ///
    /// Exits non-zero if fio fails in the guest (e.g. a verify mismatch) or a daemon does not
    /// stop cleanly. Example: blkctl fio format=raw,path=/tmp/d.raw fio-jobs/verify.fio --size 16m
    Fio(FioArgs),
}

/// What `--compare` can compare with.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Compare {
    /// qemu-storage-daemon (vhost-user-blk export) serving a copy of the same data.
    Qsd,
}

/// Options of `blkctl fio`.
#[derive(clap::Args)]
pub struct FioArgs {
    /// The disk, as for `vhost-user-blk --disk` without socket=, e.g. format=qcow2,path=vm.qcow2.
    spec: String,
    /// The fio job file (fio-jobs/*.fio); its filename= is set to the guest's /dev/vda.
    job: PathBuf,
    /// Run the same job on another server too.
    #[arg(long, value_enum)]
    compare: Option<Compare>,
    /// Replace the job's size= (e.g. 16m: TCG guests are slow).
    #[arg(long)]
    size: Option<String>,
    /// Guest vCPUs (Linux uses at most one queue per vCPU).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    cpus: u32,
    /// Queues of the disk.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    num_queues: u16,
    /// Give up on a guest after this long (e.g. 10m).
    #[arg(long, value_parser = args::duration, default_value = "10m")]
    timeout: Duration,
    /// The vhost-user-blk daemon binary (default: the one next to blkctl).
    #[arg(long)]
    daemon: Option<PathBuf>,
    /// Print the result as JSON on stdout (with fio's whole output); the summary goes to stderr.
    #[arg(long)]
    json: bool,
    /// Echo the guest console and the daemon's log level info.
    #[arg(long, short)]
    verbose: bool,
}

impl crate::Group for Cmd {
    fn run(self) -> Result<(), Box<dyn std::error::Error>> {
        let Cmd::Fio(a) = self;
        let daemon = match a.daemon {
            Some(d) => d,
            None => std::env::current_exe()?.with_file_name("vhost-user-blk"),
        };
        let opts = FioOptions {
            spec: a.spec.clone(),
            job: a.job.clone(),
            size: a.size,
            compare_qsd: a.compare.is_some(),
            cpus: a.cpus,
            num_queues: a.num_queues,
            timeout: a.timeout,
            daemon,
            verbose: a.verbose,
        };
        let runs = run(&opts, &mut |msg| eprintln!("blkctl fio: {msg}"))?;
        let job = a.job.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let mut lines: Vec<String> = runs.iter().map(|r| r.line(&job)).collect();
        if let [ours, theirs] = &runs[..] {
            lines.push(ratio_line(ours, theirs));
        }
        for l in &lines {
            if a.json {
                eprintln!("{l}");
            } else {
                println!("{l}");
            }
        }
        if a.json {
            let doc = serde_json::json!({ "spec": a.spec, "job": a.job, "runs": runs });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        let failed: Vec<String> = runs
            .iter()
            .filter(|r| r.exit_code != 0 || r.summary.errors != 0)
            .map(|r| format!("fio exited {} on {}: {}", r.exit_code, r.server, first_lines(&r.fio_stderr)))
            .collect();
        if !failed.is_empty() {
            return Err(failed.join("; ").into());
        }
        Ok(())
    }
}

/// `strata/qemu-storage-daemon IOPS: read 0.97x, write 1.10x`.
fn ratio_line(ours: &FioRun, theirs: &FioRun) -> String {
    let mut parts = Vec::new();
    for (name, a, b) in
        [("read", &ours.summary.read, &theirs.summary.read), ("write", &ours.summary.write, &theirs.summary.write)]
    {
        if a.ios > 0 && b.iops > 0.0 {
            parts.push(format!("{name} {:.2}x", a.iops / b.iops));
        }
    }
    format!("{}/{} IOPS: {}", ours.server, theirs.server, if parts.is_empty() { "n/a".into() } else { parts.join(", ") })
}

fn first_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).take(5).collect();
    if lines.is_empty() {
        "no stderr".into()
    } else {
        lines.join(" | ")
    }
}
