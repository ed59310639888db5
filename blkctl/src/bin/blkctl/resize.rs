//! `blkctl resize --api-socket API NAME [+|-]SIZE [--shrink] [--json]`: change the size of a
//! disk a running daemon serves, while its guest uses it (`vhost_user_blk::api::resize`).

use std::path::PathBuf;

use blockdev::size::{format_iec, SizeChange};
use serde_json::json;
use vhost_user_blk::api::thin::call;

/// The live-resize command.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Grow (or with --shrink, shrink) a served disk while its guest runs: the device beneath
    /// changes size and the guest is told.
    Resize(ResizeArgs),
}

/// Options of `blkctl resize`.
#[derive(clap::Args)]
#[command(override_usage = "blkctl resize --api-socket <PATH> [OPTIONS] <NAME> <[+|-]SIZE>")]
#[command(after_help = "Raw files are extended, a block device is read again (grow it first), \
qcow2 images are resized as `blkctl qcow2 resize` does, thin volumes in their pool, mem disks in \
RAM; a RAID array refuses. The guest is told through the vhost-user backend channel when its \
frontend set one up (\"notified\"); otherwise it sees the new size on its next look at the \
config space. Prints one line saying what was done, or with --json the daemon's answer.\n\
Exit status: 0 resized, 1 error (usage errors included; the disk is left as it was).")]
pub struct ResizeArgs {
    /// The daemon's control socket (its --api-socket).
    #[arg(long, value_name = "PATH", required = true)]
    api_socket: PathBuf,
    /// The export's name (as `list` on the control socket shows it).
    name: String,
    /// New size (K, M, G, T suffixes, fractions such as 1.5G), or +SIZE / -SIZE relative to the
    /// size the guest sees now.
    #[arg(allow_hyphen_values = true)]
    size: String,
    /// Allow a smaller size (cuts off the end of the guest's disk; refused where data would be
    /// lost: a qcow2 image with data past the new end, a served thin volume).
    #[arg(long)]
    shrink: bool,
    /// Print the daemon's answer as JSON (for scripts).
    #[arg(long)]
    json: bool,
}

impl crate::Group for Cmd {
    fn run(self) -> Result<(), Box<dyn std::error::Error>> {
        let Cmd::Resize(a) = self;
        // Checked here first, so a typo never reaches the daemon.
        SizeChange::parse(&a.size)?;
        let req = json!({"cmd": "resize", "name": a.name, "size": a.size, "shrink": a.shrink});
        let v = call(&a.api_socket, &req)?;
        if a.json {
            crate::qcow2::emit_json(&v);
        } else {
            let (old, size) = (v["old-size"].as_u64().unwrap_or(0), v["size"].as_u64().unwrap_or(0));
            let told = if v["notified"].as_bool() == Some(true) {
                "the guest was told"
            } else {
                "the guest sees it at its next look at the config space"
            };
            crate::qcow2::emit(&format!(
                "Disk {} resized from {} to {} ({told}).\n",
                a.name,
                format_iec(old),
                format_iec(size)
            ));
        }
        Ok(())
    }
}
