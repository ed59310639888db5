//! `blkctl qcow2 resize FILE [+|-]SIZE [--shrink]`.

use std::path::PathBuf;

use blockdev::IoCtx;

/// Options of `blkctl qcow2 resize`.
#[derive(clap::Args)]
#[command(after_help = "Exit status: 0 resized, 1 error (the image is left as it was).")]
pub struct ResizeArgs {
    /// The image file.
    file: PathBuf,
    /// New virtual size (K, M, G, T suffixes), or +SIZE / -SIZE relative to the current one.
    #[arg(allow_hyphen_values = true)]
    size: String,
    /// Allow a smaller size; refused anyway while anything is allocated past the new end.
    #[arg(long)]
    shrink: bool,
}

/// Run `resize`.
pub fn run(a: ResizeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let io = IoCtx::new()?;
    // The backing chain is opened: growing over a longer backing file zeroes the new part.
    let opts = qcow::Options::default();
    let dev = io.block_on(qcow::open_path(&io, &a.file, &opts))?;
    let cur = dev.header().size;
    let name = a.file.display();
    let new = if let Some(d) = a.size.strip_prefix('+') {
        cur.checked_add(blockdev::size::parse_size(d)?).ok_or_else(|| format!("{name}: size {} overflows", a.size))?
    } else if let Some(d) = a.size.strip_prefix('-') {
        cur.checked_sub(blockdev::size::parse_size(d)?)
            .ok_or_else(|| format!("{name}: {} is more than the current size {cur}", a.size))?
    } else {
        blockdev::size::parse_size(&a.size)?
    };
    let res = io.block_on(qcow::resize::resize(&io, &dev, new, a.shrink));
    io.block_on(dev.close(&io))?;
    res?;
    println!("Image resized.");
    Ok(())
}
