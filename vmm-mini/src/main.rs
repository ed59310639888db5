//! `vmm-mini`: command-line front end; parses arguments and calls the library.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vmm_mini::disk_spec::DiskSpec;
use vmm_mini::probe::{run_probe, ProbeOptions, ProbeOutcome, DEFAULT_SEED};

/// A minimal KVM VMM whose disks are vhost-user-blk backends.
#[derive(Parser)]
#[command(name = "vmm-mini", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot the built-in probe guest against one disk and check it end to end.
    Probe {
        /// socket=PATH[,num-queues=N][,read-only=on]
        #[arg(long)]
        disk: DiskSpec,
        /// Seconds to wait for the guest.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        /// Seed of the data pattern written (qword i = seed + i).
        #[arg(long, default_value_t = DEFAULT_SEED, value_parser = parse_u64)]
        seed: u64,
    },
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("'{s}': {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Probe { disk, timeout, seed } => {
            if !std::path::Path::new("/dev/kvm").exists() {
                eprintln!("SKIPPED: vmm-mini probe: /dev/kvm is missing");
                return ExitCode::from(77);
            }
            let opts = ProbeOptions { disk, timeout: Duration::from_secs(timeout), seed };
            match run_probe(&opts) {
                Ok(report) => {
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
    }
}
