//! `blkctl qcow2 snapshot -l|-c NAME|-a NAME|-d NAME FILE [--json]`.

use std::path::PathBuf;

use blockdev::IoCtx;
use qcow::snapshot::Snapshot;

/// Options of `blkctl qcow2 snapshot`.
#[derive(clap::Args)]
#[command(after_help = "Snapshots are found by ID first, then by name (as qemu-img). -c, -a and -d \
print one line saying what was done, or with --json an object.\n\
Exit status: 0 done, 1 error (usage errors included; no such snapshot, a name taken, a damaged \
image).")]
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
    /// Print JSON: with -l the objects of qemu-img info's "snapshots" list; with -c, -a or -d
    /// an object saying what was done.
    #[arg(long)]
    json: bool,
    /// With -l: read the image without taking its lock, as qemu-img snapshot -l -U (look at an
    /// image another process, the daemon serving it, has open for writing).
    #[arg(short = 'U', long, requires = "list")]
    force_share: bool,
}

impl SnapshotArgs {
    /// True for -l, which only looks.
    pub(super) fn lists(&self) -> bool {
        self.list
    }
}

/// Run `snapshot`.
pub fn run(a: SnapshotArgs) -> Result<(), Box<dyn std::error::Error>> {
    let io = IoCtx::new()?;
    let opts =
        qcow::Options { read_only: a.list, ignore_backing: true, force_share: a.force_share, ..Default::default() };
    let dev = io.block_on(qcow::open_path(&io, &a.file, &opts))?;
    let res = if a.list {
        io.block_on(qcow::snapshot::list(&io, &dev)).map(|s| {
            print_list(&s, a.json);
            None
        })
    } else if let Some(n) = &a.create {
        io.block_on(qcow::snapshot::create(&io, &dev, n)).map(|s| Some(("create", "created in", s)))
    } else if let Some(n) = &a.apply {
        io.block_on(apply(&io, &dev, n)).map(|s| Some(("apply", "applied to", s)))
    } else if let Some(n) = &a.delete {
        io.block_on(qcow::snapshot::delete(&io, &dev, n)).map(|s| Some(("delete", "deleted from", s)))
    } else {
        Ok(None)
    };
    let closed = io.block_on(dev.close(&io));
    let done = res?;
    closed?;
    if let Some((action, verb, s)) = done {
        let file = a.file.display().to_string();
        if a.json {
            super::emit_json(&serde_json::json!({
                "filename": file,
                "action": action,
                "id": s.id,
                "name": s.name,
            }));
        } else {
            super::emit(&format!("Snapshot '{}' (ID {}) {verb} {file}.\n", s.name, s.id));
        }
    }
    Ok(())
}

/// Apply the snapshot `which` (ID or name) and return it.
async fn apply(io: &IoCtx, dev: &qcow::Qcow2, which: &str) -> blockdev::Result<Snapshot> {
    let snaps = qcow::snapshot::list(io, dev).await?;
    let found = qcow::snapshot::find(&snaps, which).map(|i| snaps[i].clone());
    qcow::snapshot::apply(io, dev, which).await?;
    found.ok_or_else(|| blockdev::Error::new(blockdev::ErrorKind::NotFound, format!("snapshot '{which}'")))
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
