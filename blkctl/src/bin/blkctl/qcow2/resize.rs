//! `blkctl qcow2 resize FILE [+|-]SIZE|--size [+|-]SIZE [--shrink] [--json] [--backing-dir DIR]...`.

use std::path::PathBuf;

use blockdev::size::{format_iec, SizeChange};
use blockdev::IoCtx;

/// Options of `blkctl qcow2 resize`.
#[derive(clap::Args)]
#[command(override_usage = "blkctl qcow2 resize [OPTIONS] <FILE> <[+|-]SIZE>\n       blkctl qcow2 resize [OPTIONS] <FILE> --size <[+|-]SIZE>")]
#[command(group(clap::ArgGroup::new("size_given").required(true).args(["size", "size_opt"])))]
#[command(after_help = "The size and flags are checked against the image (opened read-only) \
before it is opened for writing. Prints one line saying what was done, or with --json an object.\n\
Exit status: 0 resized, 1 error (usage errors included; the image is left as it was).")]
pub struct ResizeArgs {
    /// The image file.
    file: PathBuf,
    /// New virtual size (K, M, G, T suffixes, fractions such as 1.5G), or +SIZE / -SIZE relative
    /// to the current one; or give --size.
    #[arg(allow_hyphen_values = true)]
    size: Option<String>,
    /// New virtual size, as the positional SIZE (+SIZE / -SIZE too).
    #[arg(long = "size", value_name = "SIZE", allow_hyphen_values = true)]
    size_opt: Option<String>,
    /// Allow a smaller size; refused anyway while anything is allocated past the new end.
    #[arg(long)]
    shrink: bool,
    /// Print a JSON object saying what was done (for scripts).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    backing: super::BackingArgs,
}

/// Run `resize`.
pub fn run(a: ResizeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let change = SizeChange::parse(&super::one_size(a.size, a.size_opt)?)?;
    let io = IoCtx::new()?;
    let name = a.file.display().to_string();
    // Look first (read-only): a writable open may already write (a dirty image is repaired).
    let look = qcow::Options { read_only: true, ignore_backing: true, ..Default::default() };
    let dev = io.block_on(qcow::open_path(&io, &a.file, &look))?;
    let h = dev.header();
    drop(dev);
    let old = h.size;
    let new = change.apply(old).map_err(|e| e.context(&name))?;
    qcow::resize::check_size(&name, &h, new, a.shrink)?;
    // The backing chain is opened: growing over a longer backing file zeroes the new part.
    let opts = qcow::Options { backing_policy: a.backing.policy(), ..Default::default() };
    let dev = io.block_on(qcow::open_path(&io, &a.file, &opts))?;
    let res = io.block_on(qcow::resize::resize(&io, &dev, new, a.shrink));
    let closed = io.block_on(dev.close(&io));
    res?;
    closed?;
    if a.json {
        super::emit_json(&serde_json::json!({
            "filename": name,
            "format": "qcow2",
            "old-virtual-size": old,
            "virtual-size": new,
        }));
    } else {
        super::emit(&format!("Image resized: {name} from {} to {}.\n", format_iec(old), format_iec(new)));
    }
    Ok(())
}
