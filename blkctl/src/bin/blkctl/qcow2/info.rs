//! `blkctl qcow2 info FILE [-U] [--json]`.

use std::path::PathBuf;

use blockdev::size::format_iec;
use blockdev::IoCtx;

/// Options of `blkctl qcow2 info`.
#[derive(clap::Args)]
#[command(after_help = "Exit status: 0 done, 1 error (usage errors included).")]
pub struct InfoArgs {
    /// The image file.
    file: PathBuf,
    /// Print JSON (for scripts).
    #[arg(long)]
    json: bool,
    /// Read the image without taking its lock, as qemu-img info -U: look at an image another
    /// process (the daemon serving it) has open for writing; what it says may be changing.
    #[arg(short = 'U', long)]
    force_share: bool,
}

/// Run `info`.
pub fn run(a: InfoArgs) -> Result<(), Box<dyn std::error::Error>> {
    let io = IoCtx::new()?;
    let opts = qcow::Options { read_only: true, ignore_backing: true, force_share: a.force_share, ..Default::default() };
    let dev = io.block_on(qcow::open_path(&io, &a.file, &opts))?;
    let h = dev.header();
    let actual = std::fs::metadata(&a.file).map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512).unwrap_or(0);
    let compat = if h.version == 2 { "0.10" } else { "1.1" };
    let compression = match h.compression {
        qcow::Compression::Zlib => "zlib",
        qcow::Compression::Zstd => "zstd",
    };
    if a.json {
        super::emit_json(&serde_json::json!({
            "filename": a.file.display().to_string(),
            "format": "qcow2",
            "virtual-size": h.size,
            "actual-size": actual,
            "cluster-size": h.cluster_size(),
            "backing-filename": h.backing_file,
            "backing-filename-format": h.backing_format,
            "dirty-flag": h.is_dirty(),
            "format-specific": {
                "type": "qcow2",
                "data": {
                    "compat": compat,
                    "compression-type": compression,
                    "lazy-refcounts": h.lazy_refcounts(),
                    "refcount-bits": h.refcount_bits(),
                    "corrupt": h.is_corrupt(),
                    "extended-l2": h.extended_l2(),
                }
            }
        }));
        return Ok(());
    }
    let mut out = String::new();
    out.push_str(&format!("image: {}\n", a.file.display()));
    out.push_str("file format: qcow2\n");
    out.push_str(&format!("virtual size: {} ({} bytes)\n", format_iec(h.size), h.size));
    out.push_str(&format!("disk size: {}\n", format_iec(actual)));
    out.push_str(&format!("cluster_size: {}\n", h.cluster_size()));
    if let Some(b) = &h.backing_file {
        out.push_str(&format!("backing file: {b}\n"));
        out.push_str(&format!("backing file format: {}\n", h.backing_format.as_deref().unwrap_or("(none)")));
    }
    out.push_str("Format specific information:\n");
    out.push_str(&format!("    compat: {compat}\n"));
    out.push_str(&format!("    compression type: {compression}\n"));
    out.push_str(&format!("    lazy refcounts: {}\n", h.lazy_refcounts()));
    out.push_str(&format!("    refcount bits: {}\n", h.refcount_bits()));
    out.push_str(&format!("    corrupt: {}\n", h.is_corrupt()));
    out.push_str(&format!("    extended l2: {}\n", h.extended_l2()));
    super::emit(&out);
    Ok(())
}
