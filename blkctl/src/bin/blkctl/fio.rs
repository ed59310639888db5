//! `blkctl fio`: parse the options and call the runner in `blkctl::fio`.

use std::path::PathBuf;
use std::time::Duration;

use blkctl::fio::runner::{run, FioOptions, FioRun};
use blkctl::fio::vmm::{Vmm, VmmMode};

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
    /// `blkctl bench` for storage performance, this for what a real guest sees.
    ///
    /// With --vmm vmm-mini the guest boots under strata's own VMM instead (same kernel, same
    /// initramfs, the disk as virtio-mmio). Where /dev/kvm is hardware virtualization (CPU flag
    /// vmx or svm, no kvm_pvm module) vmm-mini runs on this host. Elsewhere (a software KVM such
    /// as PVM, or no /dev/kvm) it runs nested: a QEMU TCG guest (-cpu max, kvm-amd loaded) carries
    /// the daemon, vmm-mini, the fio initramfs and copies of the spec's files (path, members,
    /// pool, metadata, a qcow2 backing chain), serves the disk there and boots the fio guest
    /// under vmm-mini; the written files are copied back afterwards. A nested run takes 1 to 20
    /// minutes on a small machine (the default --timeout is 30m with vmm-mini). --vmm-mode forces
    /// one way.
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
    /// Give up on a guest after this long (e.g. 10m) [default: 10m, 30m with --vmm vmm-mini].
    #[arg(long, value_parser = args::duration)]
    timeout: Option<Duration>,
    /// The vhost-user-blk daemon binary (default: the one next to blkctl).
    #[arg(long)]
    daemon: Option<PathBuf>,
    /// Print the result as JSON on stdout (with fio's whole output); the summary goes to stderr.
    #[arg(long)]
    json: bool,
    /// Echo the guest console and the daemon's log level info.
    #[arg(long, short)]
    verbose: bool,
    /// The machine that boots the guest.
    #[arg(long, value_enum, default_value = "qemu")]
    vmm: VmmArg,
    /// With --vmm vmm-mini: run it on this host (direct; needs hardware KVM), nested in a QEMU
    /// TCG guest, or pick by this host's /dev/kvm (auto).
    #[arg(long, value_enum, default_value = "auto")]
    vmm_mode: ModeArg,
    /// The vmm-mini binary (default: the one next to blkctl).
    #[arg(long)]
    vmm_mini: Option<PathBuf>,
}

/// What `--vmm` can name.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VmmArg {
    /// QEMU with TCG.
    Qemu,
    /// strata's vmm-mini (directly or nested, see --vmm-mode).
    VmmMini,
}

/// What `--vmm-mode` can name.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    /// Direct where /dev/kvm is hardware virtualization, else nested.
    Auto,
    /// vmm-mini on this host.
    Direct,
    /// vmm-mini inside a QEMU TCG guest with nested KVM.
    Nested,
}

impl crate::Group for Cmd {
    fn run(self) -> Result<(), Box<dyn std::error::Error>> {
        let Cmd::Fio(a) = self;
        let daemon = match a.daemon {
            Some(d) => d,
            None => std::env::current_exe()?.with_file_name("vhost-user-blk"),
        };
        let vmm = match a.vmm {
            VmmArg::Qemu => Vmm::Qemu,
            VmmArg::VmmMini => Vmm::VmmMini {
                binary: match a.vmm_mini {
                    Some(b) => b,
                    None => std::env::current_exe()?.with_file_name("vmm-mini"),
                },
                mode: match a.vmm_mode {
                    ModeArg::Auto => VmmMode::Auto,
                    ModeArg::Direct => VmmMode::Direct,
                    ModeArg::Nested => VmmMode::Nested,
                },
            },
        };
        let opts = FioOptions {
            spec: a.spec.clone(),
            job: a.job.clone(),
            size: a.size,
            compare_qsd: a.compare.is_some(),
            cpus: a.cpus,
            num_queues: a.num_queues,
            timeout: a.timeout.unwrap_or(Duration::from_secs(if a.vmm == VmmArg::Qemu { 600 } else { 1800 })),
            daemon,
            verbose: a.verbose,
            vmm,
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
