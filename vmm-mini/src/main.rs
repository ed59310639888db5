//! `vmm-mini`: command-line front end; parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use vmm_mini::console::Console;
use vmm_mini::devices::GuestExit;
use vmm_mini::disk_spec::DiskSpec;
use vmm_mini::linux::{parse_memory_size, run_linux, LinuxOptions, DEFAULT_CMDLINE};
use vmm_mini::probe::{run_probe, ProbeOptions, ProbeOutcome, DEFAULT_SEED};

/// A minimal KVM VMM whose disks are vhost-user-blk backends.
///
/// Exit status: 0 guest power-off, 1 guest fault (triple fault, KVM error), 2 set-up error,
/// 3 guest reset, 4 a vhost-user backend went away, 77 /dev/kvm missing.
#[derive(Parser)]
#[command(name = "vmm-mini", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    boot: BootArgs,
}

/// Booting Linux.
#[derive(Args)]
struct BootArgs {
    /// bzImage or ELF vmlinux.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// initrd / initramfs.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Guest RAM (K, M or G suffix), at most 3G.
    #[arg(long, default_value = "512M", value_parser = parse_memory_size)]
    memory: u64,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// socket=PATH[,num-queues=N][,read-only=on][,reconnect=MS]; repeat for more disks.
    /// read-only=on needs a backend that exports the disk read-only (it offers VIRTIO_BLK_F_RO
    /// and fails writes). reconnect=MS: when the backend goes away the guest keeps running (its
    /// I/O waits) and vmm-mini connects again every MS milliseconds.
    #[arg(long)]
    disk: Vec<DiskSpec>,
    /// stdio or file=PATH.
    #[arg(long, default_value = "stdio")]
    console: Console,
    /// Describe disks as virtio_mmio.device= command-line options instead of ACPI.
    #[arg(long)]
    virtio_mmio_cmdline: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Boot the built-in probe guest against one disk and check it end to end.
    ///
    /// THE PROBE WRITES TO THE DISK: a test pattern over sectors 0-1 (the first 1 KiB) and the
    /// last 512-byte sector, overwriting what is there (a partition table, a file system's
    /// superblock, a qcow2 guest's boot sector). Use --read-only on a disk whose data matters:
    /// the guest then reads those sectors instead of writing them, and checks that a second
    /// read returns the same data (capacity, ID, FLUSH and the read past the end are checked
    /// as usual; FLUSH changes no data).
    ///
    /// Checks, in order: device, features, queue, capacity (at least 3 sectors), id, write,
    /// flush, read, compare, past-end. Exit status: 0 all passed, 1 a check failed or timed
    /// out (named), 2 set-up error (connecting, the vhost-user negotiation, or a socket that is
    /// not a vhost-user backend), 77 /dev/kvm missing.
    #[command(verbatim_doc_comment)]
    Probe {
        /// socket=PATH[,num-queues=N][,read-only=on][,reconnect=MS]. A read-only disk
        /// (read-only=on, or a backend offering VIRTIO_BLK_F_RO) must refuse the probe's writes
        /// with IOERR and keep its data. With reconnect=MS the probe survives a backend restart.
        #[arg(long)]
        disk: DiskSpec,
        /// Seconds the whole probe may take: connecting, the vhost-user negotiation and the
        /// guest's checks.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout: u64,
        /// Probe without writing: sectors 0-1 and the last sector are read (twice, compared)
        /// instead of written; the disk's data is left as it was.
        #[arg(long)]
        read_only: bool,
        /// Seed of the data pattern written (qword i = seed + i).
        #[arg(long, default_value_t = DEFAULT_SEED, value_parser = parse_u64)]
        seed: u64,
        /// Print the result as one JSON object on stdout (outcome, failed check, set-up and
        /// total ms, CLOCK_MONOTONIC ns of the first KVM_RUN and of the guest's first exit,
        /// CPU ms to the first KVM_RUN); the guest's serial output goes to stderr.
        #[arg(long)]
        json: bool,
        /// Run the write, flush, read, compare and past-end checks this many more times, each
        /// round with a new pattern (keeps the guest doing I/O, e.g. across a backend restart
        /// with reconnect=MS).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
        repeat: u32,
    },
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("'{s}': {e}"))
}

fn kvm_present(what: &str) -> bool {
    let present = std::path::Path::new("/dev/kvm").exists();
    if !present {
        eprintln!("SKIPPED: vmm-mini {what}: /dev/kvm is missing");
    }
    present
}

/// `vmm-mini probe`'s options, as parsed.
struct ProbeArgs {
    disk: DiskSpec,
    timeout: u64,
    read_only: bool,
    seed: u64,
    json: bool,
    repeat: u32,
}

fn probe(args: ProbeArgs) -> ExitCode {
    if !kvm_present("probe") {
        return ExitCode::from(77);
    }
    let ProbeArgs { disk, timeout, read_only, seed, json, repeat } = args;
    let opts =
        ProbeOptions { disk, timeout: Duration::from_secs(timeout), seed, serial_to_stderr: json, read_only, repeat };
    match run_probe(&opts) {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            }
            eprintln!(
                "vmm-mini probe: {} (set-up {:.1} ms, total {:.1} ms)",
                report.outcome,
                report.setup.as_secs_f64() * 1e3,
                report.elapsed.as_secs_f64() * 1e3
            );
            match report.outcome {
                ProbeOutcome::Passed => ExitCode::SUCCESS,
                _ => ExitCode::from(1),
            }
        }
        Err(e) => {
            eprintln!("vmm-mini probe: {e}");
            ExitCode::from(2)
        }
    }
}

fn boot(args: BootArgs) -> ExitCode {
    let Some(kernel) = args.kernel else {
        eprintln!("vmm-mini: --kernel PATH is required (or use `vmm-mini probe --disk socket=PATH`)");
        return ExitCode::from(2);
    };
    if !kvm_present("boot") {
        return ExitCode::from(77);
    }
    let opts = LinuxOptions {
        kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        memory: args.memory,
        cpus: args.cpus,
        disks: args.disk,
        console: args.console,
        virtio_mmio_cmdline: args.virtio_mmio_cmdline,
    };
    match run_linux(&opts) {
        Ok(exit) => {
            if exit != GuestExit::PowerOff {
                eprintln!("vmm-mini: {exit}");
            }
            ExitCode::from(exit.exit_code())
        }
        Err(e) => {
            eprintln!("vmm-mini: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Probe { disk, timeout, read_only, seed, json, repeat }) => {
            probe(ProbeArgs { disk, timeout, read_only, seed, json, repeat })
        }
        None => boot(cli.boot),
    }
}
