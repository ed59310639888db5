//! `blkctl`: strata's command-line tool. This file only sets up logging, parses the command line
//! and hands each subcommand to its group's file; the work is in the `vhost_user_blk` library.
//!
//! A subcommand group is a file here with a `Cmd` enum (`#[derive(clap::Subcommand)]`) that
//! implements [`Group`]; adding one is one line in the `groups!` list below.

use std::process::ExitCode;

use clap::{ArgMatches, Command, CommandFactory, FromArgMatches, Parser, Subcommand};

mod args;

/// What every subcommand group provides.
trait Group: Subcommand + FromArgMatches {
    /// Run the parsed subcommand.
    fn run(self) -> Result<(), Box<dyn std::error::Error>>;
}

/// One group of subcommands, type-erased for the table.
struct GroupEntry {
    augment: fn(Command) -> Command,
    has: fn(&str) -> bool,
    run: fn(&ArgMatches) -> Result<(), Box<dyn std::error::Error>>,
}

fn run_group<G: Group>(matches: &ArgMatches) -> Result<(), Box<dyn std::error::Error>> {
    G::from_arg_matches(matches)?.run()
}

macro_rules! groups {
    ($($group:ident),* $(,)?) => {
        $(mod $group;)*
        const GROUPS: &[GroupEntry] = &[$(GroupEntry {
            augment: <$group::Cmd as Subcommand>::augment_subcommands,
            has: <$group::Cmd as Subcommand>::has_subcommand,
            run: run_group::<$group::Cmd>,
        }),*];
    };
}

// One line per subcommand group.
groups! {
    bench,
    fio,
    qcow2,
    thin,
    raid,
    top,
    limits,
    resize,
}

/// strata's control tool: benchmark disks, and manage images, arrays and pools.
///
/// Disks are named by a spec such as `format=raw,path=disk.img,direct=on`; sizes accept K, M, G,
/// T and P suffixes (powers of 1024) and fractions such as 1.5G. Commands that create or format
/// refuse a target that already holds data unless given --force. Exit status: 0 done, 1 error
/// (usage errors included); the checks also use 2 and 3 (see their --help). Set RUST_LOG (e.g.
/// RUST_LOG=info) for logs on stderr.
#[derive(Parser)]
#[command(name = "blkctl", version, subcommand_required = true, arg_required_else_help = true)]
struct Cli {}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(vhost_user_blk::log_colour())
        .init();
    let mut cmd = Cli::command();
    // Augmenting copies a group's doc comment into the top-level about: keep ours.
    let (about, long_about) = (cmd.get_about().cloned(), cmd.get_long_about().cloned());
    for g in GROUPS {
        cmd = (g.augment)(cmd);
    }
    if let Some(a) = about {
        cmd = cmd.about(a);
    }
    if let Some(a) = long_about {
        cmd = cmd.long_about(a);
    }
    // Usage errors exit 1, as every other failure: 2 and 3 are the checks' codes for corruption
    // and leaks, and a typo must never look like a corrupt image.
    let matches = match cmd.try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
        }
    };
    let Some((name, _)) = matches.subcommand() else { return ExitCode::FAILURE };
    let Some(group) = GROUPS.iter().find(|g| (g.has)(name)) else { return ExitCode::FAILURE };
    match (group.run)(&matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blkctl {name}: error: {e}");
            ExitCode::FAILURE
        }
    }
}
