//! `blkctl qcow2 snapshot -l|-c NAME|-a NAME|-d NAME FILE [--json]`.

use std::path::PathBuf;

use blockdev::IoCtx;
use qcow::snapshot::Snapshot;

/// Options of `blkctl qcow2 snapshot`.
#[derive(clap::Args)]
#[command(after_help = "Snapshots are found by ID first, then by name (as qemu-img).\n\
Exit status: 0 done, 1 error (no such snapshot, a name taken, a damaged image).")]
#[command(group(clap::ArgGroup::new("op").required(true).args(["list", "create", "apply", "delete"])))]
pub struct SnapshotArgs {
    /// The image file.
    file: PathBuf,
    /// List the snapshots (as qemu-img snapshot -l).
    #[arg(short = 'l', long)]
    list: bool,
    /// Create a snapshot of the current disk with this name.
    #[arg(short = 'c', long, value_name = "NAME")]
    create: Option<String>,
    /// Revert the disk to this snapshot (ID or name).
    #[arg(short = 'a', long, value_name = "NAME")]
    apply: Option<String>,
    /// Delete this snapshot (ID or name); clusters only it used are freed.
    #[arg(short = 'd', long, value_name = "NAME")]
    delete: Option<String>,
    /// With -l: print JSON (the objects of qemu-img info's "snapshots" list).
    #[arg(long)]
    json: bool,
}

/// Run `snapshot`.
pub fn run(a: SnapshotArgs) -> Result<(), Box<dyn std::error::Error>> {
    let io = IoCtx::new()?;
    let opts = qcow::Options { read_only: a.list, ignore_backing: true, ..Default::default() };
    let dev = io.block_on(qcow::open_path(&io, &a.file, &opts))?;
    let res = if a.list {
        io.block_on(qcow::snapshot::list(&io, &dev)).map(|s| print_list(&s, a.json))
    } else if let Some(n) = &a.create {
        io.block_on(qcow::snapshot::create(&io, &dev, n)).map(|_| ())
    } else if let Some(n) = &a.apply {
        io.block_on(qcow::snapshot::apply(&io, &dev, n))
    } else if let Some(n) = &a.delete {
        io.block_on(qcow::snapshot::delete(&io, &dev, n)).map(|_| ())
    } else {
        Ok(())
    };
    let closed = io.block_on(dev.close(&io));
    res?;
    closed?;
    Ok(())
}

fn print_list(snaps: &[Snapshot], json: bool) {
    if json {
        let v: Vec<_> = snaps
            .iter()
            .map(|s| {
                let mut o = serde_json::json!({
                    "id": s.id,
                    "name": s.name,
                    "vm-state-size": s.vm_state_size(),
                    "date-sec": s.date_sec,
                    "date-nsec": s.date_nsec,
                    "vm-clock-sec": s.vm_clock_nsec / 1_000_000_000,
                    "vm-clock-nsec": s.vm_clock_nsec % 1_000_000_000,
                });
                if let Some(ic) = s.icount() {
                    o["icount"] = ic.into();
                }
                o
            })
            .collect();
        super::emit(&format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()));
        return;
    }
    super::emit(&qcow::snapshot::to_qemu_list(snaps));
}
