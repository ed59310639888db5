//! `blkctl qcow2 map FILE [-U] [--json] [--backing-dir DIR]... [--backing-file PATH]...`.

use std::path::PathBuf;

use blockdev::IoCtx;

/// Options of `blkctl qcow2 map`.
#[derive(clap::Args)]
#[command(after_help = "With --json the output is byte for byte that of `qemu-img map --output=json`: \
one object per run with start, length, depth (0: this image, 1: its backing file, ...), present, \
zero, data, compressed and, when the data has a place in a file, offset.\n\
Exit status: 0 done, 1 error (usage errors included; also: compressed clusters in the human \
output, as qemu-img).")]
pub struct MapArgs {
    /// The image file (its backing chain is followed).
    file: PathBuf,
    /// Print JSON (as qemu-img map --output=json).
    #[arg(long)]
    json: bool,
    /// Read the chain without taking any lock, as qemu-img map -U: look at an image another
    /// process (the daemon serving it) has open for writing; what it says may be changing.
    #[arg(short = 'U', long)]
    force_share: bool,
    #[command(flatten)]
    backing: super::BackingArgs,
}

/// Run `map`.
pub fn run(a: MapArgs) -> Result<(), Box<dyn std::error::Error>> {
    let io = IoCtx::new()?;
    let entries = qcow::map::map_path_policy(&io, &a.file, a.force_share, &a.backing.policy())?;
    if a.json {
        super::emit(&qcow::map::to_qemu_json(&entries));
    } else {
        super::emit(&qcow::map::to_human(&entries)?);
    }
    Ok(())
}
