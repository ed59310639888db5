//! `blkctl qcow2 convert [-f raw|qcow2] [-O raw|qcow2] [-c] [-p] [--backing-dir DIR]... SRC DST`.

use std::path::PathBuf;

use blockdev::size::format_iec;
use blkctl::progress::{self, Meter, Unit};
use blockdev::IoCtx;
use qcow::convert::{ConvertOptions, Format};

/// Options of `blkctl qcow2 convert`.
#[derive(clap::Args)]
#[command(after_help = "The source's whole disk is copied (a qcow2 source's backing chain is \
flattened into it); ranges that read as zeros are not written, so DST stays sparse. Formats are \
never probed: -f and -O default to qcow2. Every option is checked and SRC opened before DST is \
touched. An existing DST is replaced (as qemu-img does), but first opened without truncation and \
locked: one another process has open, such as an image the daemon serves, is refused, and DST \
being SRC too. The copy is written beside DST under a temporary name and renamed over it when \
complete. Prints one line saying what was done, or with --json an object.\n\
Exit status: 0 converted, 1 error (usage errors included; an existing DST is left as it was).")]
pub struct ConvertArgs {
    /// Source image.
    src: PathBuf,
    /// Destination image (created, or replaced when complete).
    dst: PathBuf,
    /// Format of the source: raw or qcow2.
    #[arg(short = 'f', long = "format", default_value = "qcow2")]
    src_format: String,
    /// Format of the destination: raw or qcow2.
    #[arg(short = 'O', long = "output-format", default_value = "qcow2")]
    dst_format: String,
    /// Write compressed clusters (deflate; -O qcow2 only).
    #[arg(short = 'c', long)]
    compress: bool,
    /// Show progress on stderr even when it is not a terminal (as qemu-img's `(NN.NN/100%)`);
    /// on a terminal a progress bar is shown anyway.
    #[arg(short = 'p', long)]
    progress: bool,
    /// Cluster size of a qcow2 destination (512 to 2M).
    #[arg(long, default_value = "64K")]
    cluster_size: String,
    /// Print a JSON object saying what was done (for scripts).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    backing: super::BackingArgs,
}

/// Run `convert`.
pub fn run(a: ConvertArgs) -> Result<(), Box<dyn std::error::Error>> {
    let opts = ConvertOptions {
        src_format: a.src_format.parse::<Format>().map_err(|e| format!("-f: {e}"))?,
        dst_format: a.dst_format.parse::<Format>().map_err(|e| format!("-O: {e}"))?,
        compress: a.compress,
        cluster_size: blockdev::size::parse_size(&a.cluster_size).map_err(|e| format!("--cluster-size: {e}"))?,
        backing_policy: a.backing.policy(),
    };
    // A bar on a terminal; qemu-img's text on a pipe only with -p; otherwise silent.
    let mut meter = Meter::new("convert", Unit::Bytes, 0, progress::show_on_stderr(a.progress));
    let mut report = |done: u64, total: u64| {
        meter.set_total(total);
        meter.set(done);
    };
    let io = IoCtx::new()?;
    let res = qcow::convert::convert(&io, &a.src, &a.dst, &opts, &mut report);
    meter.finish();
    let st = res?;
    let (src, dst) = (a.src.display().to_string(), a.dst.display().to_string());
    let qcow2 = opts.dst_format == Format::Qcow2;
    if a.json {
        super::emit_json(&serde_json::json!({
            "source": src,
            "source-format": a.src_format,
            "filename": dst,
            "format": a.dst_format,
            "virtual-size": st.size,
            "cluster-size": if qcow2 { Some(opts.cluster_size) } else { None },
            "compressed": opts.compress,
            "bytes-written": st.written,
            "replaced": st.replaced,
        }));
    } else {
        let mut what = a.dst_format.clone();
        if qcow2 {
            what.push_str(&format!(", {} clusters", format_iec(opts.cluster_size)));
        }
        if opts.compress {
            what.push_str(", compressed");
        }
        super::emit(&format!(
            "Converted {src} ({}) to {dst} ({what}): {} disk, {} written{}.\n",
            a.src_format,
            format_iec(st.size),
            format_iec(st.written),
            if st.replaced { ", replacing the old file" } else { "" }
        ));
    }
    Ok(())
}
