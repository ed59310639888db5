//! `blkctl qcow2 create FILE SIZE|--size SIZE [--force] [--json] ...`.

use std::path::PathBuf;

use blockdev::size::parse_size;
use blockdev::IoCtx;
use qcow::{CreateOptions, Overwrite, Preallocation};

/// Options of `blkctl qcow2 create`.
#[derive(clap::Args)]
#[command(override_usage = "blkctl qcow2 create [OPTIONS] <FILE> <SIZE>\n       blkctl qcow2 create [OPTIONS] <FILE> --size <SIZE>")]
#[command(group(clap::ArgGroup::new("size_given").required(true).args(["size", "size_opt"])))]
#[command(after_help = "Every option is checked before FILE is touched. An existing FILE is \
opened without truncation and locked first (one another process has open, such as an image the \
daemon serves, is refused), and it is replaced only if it is empty or its first MiB is all zeros, \
unless --force is given; the new image is written beside it under a temporary name and renamed \
over it when complete, so a failure leaves FILE as it was. Prints qemu-img's \"Formatting ...\" \
line, or with --json an object saying what was made.\n\
Exit status: 0 created, 1 error (usage errors included; an existing FILE is left as it was).")]
pub struct CreateArgs {
    /// The image file (created; an existing one is replaced only as said below).
    file: PathBuf,
    /// Virtual size (K, M, G, T suffixes, fractions such as 1.5G); or give --size.
    size: Option<String>,
    /// Virtual size, as the positional SIZE.
    #[arg(long = "size", value_name = "SIZE")]
    size_opt: Option<String>,
    /// Cluster size, 512 to 2M.
    #[arg(long, default_value = "64K")]
    cluster_size: String,
    /// Backing file (stored as given; relative names resolve from the image's directory).
    #[arg(long, requires = "backing_format")]
    backing: Option<String>,
    /// Format of the backing file (qcow2 or raw): required, formats are never probed.
    #[arg(long)]
    backing_format: Option<String>,
    /// off, metadata, falloc or full.
    #[arg(long, default_value = "off")]
    preallocation: String,
    /// 0.10 (version 2) or 1.1 (version 3).
    #[arg(long, default_value = "1.1")]
    compat: String,
    /// Enable lazy refcounts (1.1 only).
    #[arg(long)]
    lazy_refcounts: bool,
    /// Refcount width in bits: 1, 2, 4, 8, 16, 32 or 64.
    #[arg(long, default_value_t = 16)]
    refcount_bits: u32,
    /// Extended L2 entries with 32 subclusters per cluster (1.1 only, clusters of 16K or more).
    #[arg(long)]
    extended_l2: bool,
    /// Replace an existing FILE whatever it holds (an image, a file system, data). A file
    /// another process has open is refused even so.
    #[arg(long)]
    force: bool,
    /// Print a JSON object saying what was made (for scripts).
    #[arg(long)]
    json: bool,
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn preallocation_name(p: Preallocation) -> &'static str {
    match p {
        Preallocation::Off => "off",
        Preallocation::Metadata => "metadata",
        Preallocation::Falloc => "falloc",
        Preallocation::Full => "full",
    }
}

/// qemu-img create's line, the options in its order.
fn formatting_line(file: &std::path::Path, o: &CreateOptions) -> String {
    let mut line = format!(
        "Formatting '{}', fmt=qcow2 cluster_size={} extended_l2={}",
        file.display(),
        o.cluster_size,
        on_off(o.extended_l2)
    );
    if o.preallocation != Preallocation::Off {
        line.push_str(&format!(" preallocation={}", preallocation_name(o.preallocation)));
    }
    line.push_str(&format!(" compression_type=zlib size={}", o.size));
    if o.version == 2 {
        line.push_str(" compat=0.10");
    }
    if let Some(b) = &o.backing_file {
        line.push_str(&format!(" backing_file={b}"));
    }
    if let Some(f) = &o.backing_format {
        line.push_str(&format!(" backing_fmt={f}"));
    }
    line.push_str(&format!(" lazy_refcounts={} refcount_bits={}", on_off(o.lazy_refcounts), o.refcount_bits));
    line
}

/// Run `create`: check every option, then create (see the command's help).
pub fn run(a: CreateArgs) -> Result<(), Box<dyn std::error::Error>> {
    let version = match a.compat.as_str() {
        "0.10" => 2,
        "1.1" => 3,
        other => return Err(format!("--compat {other}: use 0.10 or 1.1").into()),
    };
    let size = super::one_size(a.size, a.size_opt)?;
    let opts = CreateOptions {
        size: parse_size(&size)?,
        cluster_size: parse_size(&a.cluster_size).map_err(|e| format!("--cluster-size: {e}"))?,
        backing_file: a.backing,
        backing_format: a.backing_format,
        preallocation: a.preallocation.parse()?,
        version,
        lazy_refcounts: a.lazy_refcounts,
        refcount_bits: a.refcount_bits,
        extended_l2: a.extended_l2,
        ..Default::default()
    };
    opts.header()?;
    let io = IoCtx::new()?;
    let overwrite = if a.force { Overwrite::Always } else { Overwrite::IfBlank };
    let replaced = qcow::create_path_with(&io, &a.file, &opts, overwrite)?;
    if a.json {
        super::emit_json(&serde_json::json!({
            "filename": a.file.display().to_string(),
            "format": "qcow2",
            "virtual-size": opts.size,
            "cluster-size": opts.cluster_size,
            "compat": if version == 2 { "0.10" } else { "1.1" },
            "compression-type": "zlib",
            "lazy-refcounts": opts.lazy_refcounts,
            "refcount-bits": opts.refcount_bits,
            "extended-l2": opts.extended_l2,
            "preallocation": preallocation_name(opts.preallocation),
            "backing-filename": opts.backing_file,
            "backing-filename-format": opts.backing_format,
            "replaced": replaced,
        }));
    } else {
        super::emit(&format!("{}\n", formatting_line(&a.file, &opts)));
    }
    Ok(())
}
