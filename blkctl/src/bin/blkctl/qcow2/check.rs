//! `blkctl qcow2 check FILE [-r leaks|all | -U] [--json]`.

use std::path::PathBuf;

use blockdev::IoCtx;
use qcow::check::Repair;

/// Options of `blkctl qcow2 check`.
#[derive(clap::Args)]
#[command(after_help = "Exit status (as qemu-img check): 0 no errors, 1 the check could not run \
(usage errors included), 2 corruptions found (left after repair), 3 only leaked clusters found \
(left after repair).")]
pub struct CheckArgs {
    /// The image file.
    file: PathBuf,
    /// Repair: leaks (lower refcounts that are too high) or all.
    #[arg(long, short = 'r', value_parser = ["leaks", "all"])]
    repair: Option<String>,
    /// Print JSON (for scripts).
    #[arg(long)]
    json: bool,
    /// Read the image without taking its lock, as qemu-img check -U: check an image another
    /// process (the daemon serving it) has open for writing. Only reports, never repairs; an
    /// image being written may show passing inconsistencies.
    #[arg(short = 'U', long, conflicts_with = "repair")]
    force_share: bool,
}

impl CheckArgs {
    /// True when the check may write (a repair).
    pub(super) fn repairs(&self) -> bool {
        self.repair.is_some()
    }
}

/// Run `check`; exits with qemu-img's code when it found something.
pub fn run(a: CheckArgs) -> Result<(), Box<dyn std::error::Error>> {
    let repair = match a.repair.as_deref() {
        None => Repair::None,
        Some("leaks") => Repair::Leaks,
        Some("all") => Repair::All,
        Some(other) => return Err(format!("--repair {other}: use leaks or all").into()),
    };
    let io = IoCtx::new()?;
    let opts = qcow::Options {
        read_only: repair == Repair::None,
        ignore_backing: true,
        force_share: a.force_share,
        ..Default::default()
    };
    let dev = io.block_on(qcow::open_path(&io, &a.file, &opts))?;
    let rep = io.block_on(qcow::check::check(&io, &dev, repair))?;
    io.block_on(dev.close(&io))?;
    let code = rep.exit_code();
    if a.json {
        super::emit_json(&serde_json::json!({
            "filename": a.file.display().to_string(),
            "format": "qcow2",
            "check-errors": 0,
            "corruptions": rep.corruptions - rep.corruptions_fixed,
            "leaks": rep.leaks - rep.leaks_fixed,
            "corruptions-fixed": rep.corruptions_fixed,
            "leaks-fixed": rep.leaks_fixed,
            "allocated-clusters": rep.allocated_clusters,
            "image-end-offset": rep.image_end_offset,
        }));
    } else {
        let mut out = String::new();
        for m in &rep.messages {
            out.push_str(&format!("{m}\n"));
        }
        if code == 0 {
            out.push_str("No errors were found on the image.\n");
        } else {
            out.push_str(&format!(
                "{} errors and {} leaked clusters were found on the image.\n",
                rep.corruptions - rep.corruptions_fixed,
                rep.leaks - rep.leaks_fixed
            ));
        }
        if rep.leaks_fixed + rep.corruptions_fixed > 0 {
            out.push_str(&format!("Repaired {} leaks and {} corruptions.\n", rep.leaks_fixed, rep.corruptions_fixed));
        }
        out.push_str(&format!("Image end offset: {}\n", rep.image_end_offset));
        super::emit(&out);
    }
    drop(dev);
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}
