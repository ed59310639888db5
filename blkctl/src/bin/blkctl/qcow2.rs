//! `blkctl qcow2 create|info|check|resize|...`: parse the options and call the qcow crate.
//! Each subcommand has its file under `qcow2/`; this one holds the command table and what they
//! share (output, and the hint a lock refusal gets).

mod check;
mod convert;
mod create;
mod info;
mod map;
mod resize;
mod snapshot;

/// The qcow2 subcommands.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Create, inspect, resize, snapshot, map and convert qcow2 images.
    #[command(subcommand)]
    Qcow2(Qcow2Cmd),
}

/// `blkctl qcow2 ...`.
#[derive(clap::Subcommand)]
pub enum Qcow2Cmd {
    /// Create an image: blkctl qcow2 create disk.qcow2 10G [--cluster-size 64K] ...
    Create(create::CreateArgs),
    /// Show what the header says (the fields qemu-img info gives).
    Info(info::InfoArgs),
    /// Check the metadata; exit 0 clean, 2 corruptions, 3 leaks only (as qemu-img check).
    Check(check::CheckArgs),
    /// Change the virtual size: blkctl qcow2 resize disk.qcow2 20G (or +10G; smaller needs --shrink).
    Resize(resize::ResizeArgs),
    /// Internal snapshots: -l list, -c NAME create, -a NAME apply, -d NAME delete.
    Snapshot(snapshot::SnapshotArgs),
    /// Show where each range of the disk lives (as qemu-img map; --json for its JSON).
    Map(map::MapArgs),
    /// Copy a disk between raw and qcow2 files: blkctl qcow2 convert [-f raw] [-O raw] [-c] SRC DST.
    Convert(convert::ConvertArgs),
}

impl Qcow2Cmd {
    /// True for the commands that only look at an image (they may take -U).
    fn looks_only(&self) -> bool {
        match self {
            Qcow2Cmd::Info(_) | Qcow2Cmd::Map(_) => true,
            Qcow2Cmd::Check(a) => !a.repairs(),
            Qcow2Cmd::Snapshot(a) => a.lists(),
            Qcow2Cmd::Create(_) | Qcow2Cmd::Resize(_) | Qcow2Cmd::Convert(_) => false,
        }
    }
}

impl crate::Group for Cmd {
    fn run(self) -> Result<(), Box<dyn std::error::Error>> {
        let Cmd::Qcow2(cmd) = self;
        let looks = cmd.looks_only();
        let res = match cmd {
            Qcow2Cmd::Create(a) => create::run(a),
            Qcow2Cmd::Info(a) => info::run(a),
            Qcow2Cmd::Check(a) => check::run(a),
            Qcow2Cmd::Resize(a) => resize::run(a),
            Qcow2Cmd::Snapshot(a) => snapshot::run(a),
            Qcow2Cmd::Map(a) => map::run(a),
            Qcow2Cmd::Convert(a) => convert::run(a),
        };
        res.map_err(|e| lock_hint(e, looks))
    }
}

/// What a refusal to take an image's lock should suggest instead of blockdev's own hint (the
/// daemon's control socket, which has no qcow2 commands): `-U` for a command that only looks.
fn lock_hint(e: Box<dyn std::error::Error>, looks: bool) -> Box<dyn std::error::Error> {
    let Some(be) = e.downcast_ref::<blockdev::Error>() else { return e };
    if be.kind() != blockdev::ErrorKind::Locked {
        return e;
    }
    let mut msg = be.to_string();
    if let Some(at) = msg.rfind(" (") {
        if msg.ends_with(')') && msg[at..].contains("control socket") {
            msg.truncate(at);
        }
    }
    if looks {
        msg.push_str(" (use -U/--force-share to look at it read-only)");
    } else {
        msg.push_str(" (an image in use is never changed: stop what uses it first)");
    }
    msg.into()
}

/// Where the backing files of a chain may come from, for the commands that read through one
/// (`map`, `convert`, `resize`): the image's own directory, and what these flags allow.
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct BackingArgs {
    /// Also allow backing files under DIR (repeatable). Without it a backing file is opened only
    /// from the image's own directory (symlinks and .. resolved first), as the daemon does.
    #[arg(long = "backing-dir", value_name = "DIR")]
    backing_dir: Vec<std::path::PathBuf>,
    /// Also allow exactly the backing file PATH (repeatable).
    #[arg(long = "backing-file", value_name = "PATH")]
    backing_file: Vec<std::path::PathBuf>,
}

impl BackingArgs {
    /// The policy these flags give (errors name the flags).
    pub(crate) fn policy(&self) -> qcow::BackingPolicy {
        let p = self.backing_dir.iter().fold(qcow::BackingPolicy::for_flags(), |p, d| p.allow_dir(d));
        self.backing_file.iter().fold(p, |p, f| p.allow_file(f))
    }
}

/// Print to stdout; a closed pipe (`| head`) is not an error worth a panic.
pub(crate) fn emit(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

/// Print a JSON value, pretty, with a final newline.
pub(crate) fn emit_json(v: &serde_json::Value) {
    emit(&format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default()));
}

/// The one size of a command given positionally or as `--size` (clap makes sure of exactly one).
pub(crate) fn one_size(positional: Option<String>, option: Option<String>) -> Result<String, String> {
    positional.or(option).ok_or_else(|| "give the size, positionally or as --size".to_string())
}
