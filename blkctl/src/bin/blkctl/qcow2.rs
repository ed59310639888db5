//! `blkctl qcow2 create|info|check|resize|...`: parse the options and call the qcow crate.
//! The image operations each have their file under `qcow2/`.

use std::path::PathBuf;

mod convert;
mod map;
mod resize;
mod snapshot;

use blockdev::IoCtx;

/// The qcow2 subcommands.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Create, inspect, resize, snapshot, map and convert qcow2 images.
    #[command(subcommand)]
    Qcow2(Qcow2Cmd),
}

/// `blkctl qcow2 ...`.
#[derive(clap::Subcommand)]
pub enum Qcow2Cmd {
    /// Create an image: blkctl qcow2 create disk.qcow2 10G [--cluster-size 64K] ...
    Create(CreateArgs),
    /// Show what the header says (the fields qemu-img info gives).
    Info(InfoArgs),
    /// Check the metadata; exit 0 clean, 2 corruptions, 3 leaks only (as qemu-img check).
    Check(CheckArgs),
    /// Change the virtual size: blkctl qcow2 resize disk.qcow2 20G (or +10G; smaller needs --shrink).
    Resize(resize::ResizeArgs),
    /// Internal snapshots: -l list, -c NAME create, -a NAME apply, -d NAME delete.
    Snapshot(snapshot::SnapshotArgs),
    /// Show where each range of the disk lives (as qemu-img map; --json for its JSON).
    Map(map::MapArgs),
    /// Copy a disk between raw and qcow2 files: blkctl qcow2 convert [-f raw] [-O raw] [-c] SRC DST.
    Convert(convert::ConvertArgs),
}

/// Options of `blkctl qcow2 check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// The image file.
    file: PathBuf,
    /// Repair: leaks (lower refcounts that are too high) or all.
    #[arg(long, short = 'r')]
    repair: Option<String>,
    /// Print JSON (for scripts).
    #[arg(long)]
    json: bool,
}

/// Options of `blkctl qcow2 create`.
#[derive(clap::Args)]
pub struct CreateArgs {
    /// The image file (created or truncated).
    file: PathBuf,
    /// Virtual size (K, M, G, T suffixes).
    size: String,
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
}

/// Options of `blkctl qcow2 info`.
#[derive(clap::Args)]
pub struct InfoArgs {
    /// The image file.
    file: PathBuf,
    /// Print JSON (for scripts).
    #[arg(long)]
    json: bool,
}

impl crate::Group for Cmd {
    fn run(self) -> Result<(), Box<dyn std::error::Error>> {
        let Cmd::Qcow2(cmd) = self;
        match cmd {
            Qcow2Cmd::Create(a) => create(a),
            Qcow2Cmd::Info(a) => info(a),
            Qcow2Cmd::Check(a) => check(a),
            Qcow2Cmd::Resize(a) => resize::run(a),
            Qcow2Cmd::Snapshot(a) => snapshot::run(a),
            Qcow2Cmd::Map(a) => map::run(a),
            Qcow2Cmd::Convert(a) => convert::run(a),
        }
    }
}

fn create(a: CreateArgs) -> Result<(), Box<dyn std::error::Error>> {
    let version = match a.compat.as_str() {
        "0.10" => 2,
        "1.1" => 3,
        other => return Err(format!("--compat {other}: use 0.10 or 1.1").into()),
    };
    let opts = qcow::CreateOptions {
        size: blockdev::size::parse_size(&a.size)?,
        cluster_size: blockdev::size::parse_size(&a.cluster_size)?,
        backing_file: a.backing,
        backing_format: a.backing_format,
        preallocation: a.preallocation.parse()?,
        version,
        lazy_refcounts: a.lazy_refcounts,
        refcount_bits: a.refcount_bits,
        extended_l2: a.extended_l2,
        ..Default::default()
    };
    let io = IoCtx::new()?;
    qcow::create_path(&io, &a.file, &opts)?;
    Ok(())
}

fn info(a: InfoArgs) -> Result<(), Box<dyn std::error::Error>> {
    let io = IoCtx::new()?;
    let opts = qcow::Options { read_only: true, ignore_backing: true, ..Default::default() };
    let dev = io.block_on(qcow::open_path(&io, &a.file, &opts))?;
    let h = dev.header();
    let actual = std::fs::metadata(&a.file).map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512).unwrap_or(0);
    let compat = if h.version == 2 { "0.10" } else { "1.1" };
    let compression = match h.compression {
        qcow::Compression::Zlib => "zlib",
        qcow::Compression::Zstd => "zstd",
    };
    if a.json {
        let v = serde_json::json!({
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
        });
        emit(&format!("{}\n", serde_json::to_string_pretty(&v)?));
        return Ok(());
    }
    let mut out = String::new();
    out.push_str(&format!("image: {}\n", a.file.display()));
    out.push_str("file format: qcow2\n");
    out.push_str(&format!("virtual size: {} ({} bytes)\n", blockdev::size::format_size(h.size), h.size));
    out.push_str(&format!("disk size: {}\n", blockdev::size::format_size(actual)));
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
    emit(&out);
    Ok(())
}

/// Print to stdout; a closed pipe (`| head`) is not an error worth a panic.
pub(crate) fn emit(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn check(a: CheckArgs) -> Result<(), Box<dyn std::error::Error>> {
    use qcow::check::Repair;
    let repair = match a.repair.as_deref() {
        None => Repair::None,
        Some("leaks") => Repair::Leaks,
        Some("all") => Repair::All,
        Some(other) => return Err(format!("--repair {other}: use leaks or all").into()),
    };
    let io = IoCtx::new()?;
    let opts = qcow::Options { read_only: repair == Repair::None, ignore_backing: true, ..Default::default() };
    let dev = io.block_on(qcow::open_path(&io, &a.file, &opts))?;
    let rep = io.block_on(qcow::check::check(&io, &dev, repair))?;
    io.block_on(dev.close(&io))?;
    let code = rep.exit_code();
    if a.json {
        let v = serde_json::json!({
            "filename": a.file.display().to_string(),
            "format": "qcow2",
            "check-errors": 0,
            "corruptions": rep.corruptions - rep.corruptions_fixed,
            "leaks": rep.leaks - rep.leaks_fixed,
            "corruptions-fixed": rep.corruptions_fixed,
            "leaks-fixed": rep.leaks_fixed,
            "allocated-clusters": rep.allocated_clusters,
            "image-end-offset": rep.image_end_offset,
        });
        emit(&format!("{}\n", serde_json::to_string_pretty(&v)?));
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
        emit(&out);
    }
    drop(dev);
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}
