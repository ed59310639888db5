//! `blkctl thin pool-create|pool-info|create|snapshot|list|remove|resize|check`: parse the
//! options and call `blockdev::thin` on the pool file(s).

use std::path::PathBuf;
use std::sync::Arc;

use blockdev::size::{format_size, parse_size};
use blockdev::thin::{check, Pool, PoolConfig};
use blockdev::{BlockDev, IoCtx, OpenOptions, RawFile};

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// The thin pool subcommands.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Create and manage thin pools and their volumes and snapshots.
    #[command(subcommand)]
    Thin(ThinCmd),
}

/// The pool's device(s).
#[derive(clap::Args)]
pub struct PoolArg {
    /// The pool: an existing file or block device (its data device when --metadata is given).
    pool: PathBuf,
    /// A separate metadata device.
    #[arg(long)]
    metadata: Option<PathBuf>,
}

/// `blkctl thin ...`.
#[derive(clap::Subcommand)]
pub enum ThinCmd {
    /// Make a new, empty pool on POOL (its size is the pool's size).
    PoolCreate {
        #[command(flatten)]
        pool: PoolArg,
        /// Data block size, 64K to 1M.
        #[arg(long, default_value = "64K")]
        block_size: String,
        /// Metadata area size on a single-device pool (default 1/256 of it, at least 1M).
        #[arg(long)]
        metadata_size: Option<String>,
    },
    /// Take in space added at the end of the pool's (data) device.
    PoolGrow {
        #[command(flatten)]
        pool: PoolArg,
    },
    /// Show size, usage, transaction id and volumes.
    PoolInfo {
        #[command(flatten)]
        pool: PoolArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a volume (its size may exceed the pool's: overcommit).
    Create {
        #[command(flatten)]
        pool: PoolArg,
        /// Volume name.
        name: String,
        /// Virtual size (K, M, G, T suffixes).
        #[arg(long)]
        size: String,
    },
    /// Writable snapshot NAME of volume or snapshot ORIGIN.
    Snapshot {
        #[command(flatten)]
        pool: PoolArg,
        /// The volume to snapshot.
        origin: String,
        /// The snapshot's name.
        name: String,
    },
    /// List volumes with the space each maps.
    List {
        #[command(flatten)]
        pool: PoolArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a volume or snapshot (blocks nobody else references are freed).
    Remove {
        #[command(flatten)]
        pool: PoolArg,
        /// Volume name.
        name: String,
    },
    /// Grow (or shrink, dropping the end) a volume.
    Resize {
        #[command(flatten)]
        pool: PoolArg,
        /// Volume name.
        name: String,
        /// New virtual size.
        size: String,
    },
    /// Check mappings against the space map: exit 0 clean, 3 leaks only, 2 corruption.
    Check {
        #[command(flatten)]
        pool: PoolArg,
        /// Repair leaks (exit 0 once everything found is repaired).
        #[arg(long)]
        repair: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

impl crate::Group for Cmd {
    fn run(self) -> CmdResult {
        let Cmd::Thin(cmd) = self;
        let io = IoCtx::new()?;
        match cmd {
            ThinCmd::PoolCreate { pool, block_size, metadata_size } => {
                let (meta, data) = devices(&pool, false)?;
                let block_size = u32::try_from(parse_size(&block_size)?).map_err(|_| "--block-size too large")?;
                let metadata_size = metadata_size.map(|s| parse_size(&s)).transpose()?;
                let p = io.block_on(Pool::create(&io, meta, data, PoolConfig { block_size, metadata_size }))?;
                let i = p.info();
                emit(&format!(
                    "created thin pool {} with {} data blocks of {}\n",
                    i.uuid,
                    i.data_blocks,
                    format_size(i.block_size)
                ));
                Ok(())
            }
            ThinCmd::PoolInfo { pool, json } => pool_info(&io, &pool, json),
            ThinCmd::PoolGrow { pool } => {
                let p = open(&io, &pool, false)?;
                let blocks = io.block_on(p.grow(&io))?;
                emit(&format!("thin pool has {blocks} data blocks\n"));
                Ok(())
            }
            ThinCmd::Create { pool, name, size } => {
                let p = open(&io, &pool, false)?;
                Ok(io.block_on(p.create_volume(&io, &name, parse_size(&size)?))?)
            }
            ThinCmd::Snapshot { pool, origin, name } => {
                let p = open(&io, &pool, false)?;
                Ok(io.block_on(p.snapshot(&io, &origin, &name))?)
            }
            ThinCmd::List { pool, json } => list(&io, &pool, json),
            ThinCmd::Remove { pool, name } => {
                let p = open(&io, &pool, false)?;
                Ok(io.block_on(p.remove_volume(&io, &name))?)
            }
            ThinCmd::Resize { pool, name, size } => {
                let p = open(&io, &pool, false)?;
                Ok(io.block_on(p.resize_volume(&io, &name, parse_size(&size)?))?)
            }
            ThinCmd::Check { pool, repair, json } => check_cmd(&io, &pool, repair, json),
        }
    }
}

type Devices = (Arc<dyn BlockDev>, Option<Arc<dyn BlockDev>>);

/// Open the pool's device(s); writable opens take the exclusive lock.
fn devices(p: &PoolArg, read_only: bool) -> Result<Devices, Box<dyn std::error::Error>> {
    let opts = OpenOptions { read_only, ..OpenOptions::default() };
    let pool: Arc<dyn BlockDev> = Arc::new(RawFile::open(&p.pool, opts)?);
    Ok(match &p.metadata {
        Some(m) => (Arc::new(RawFile::open(m, opts)?), Some(pool)),
        None => (pool, None),
    })
}

fn open(io: &IoCtx, p: &PoolArg, read_only: bool) -> Result<Pool, Box<dyn std::error::Error>> {
    let (meta, data) = devices(p, read_only)?;
    Ok(io.block_on(Pool::open(io, meta, data)).map_err(|e| e.context(p.pool.display()))?)
}

fn pool_info(io: &IoCtx, p: &PoolArg, json: bool) -> CmdResult {
    let pool = open(io, p, true)?;
    let i = pool.info();
    let free = i.data_blocks - i.used_blocks;
    if json {
        let v = serde_json::json!({
            "uuid": i.uuid,
            "block-size": i.block_size,
            "size": i.data_blocks * i.block_size,
            "used": i.used_blocks * i.block_size,
            "free": free * i.block_size,
            "data-blocks": i.data_blocks,
            "used-blocks": i.used_blocks,
            "transaction-id": i.transaction_id,
            "metadata-pages": i.metadata_pages,
            "metadata-free-pages": i.metadata_free_pages,
            "volumes": i.volumes,
            "below-low-water": i.below_low_water,
        });
        emit(&format!("{}\n", serde_json::to_string_pretty(&v)?));
    } else {
        emit(&format!(
            "uuid: {}\nblock size: {}\nsize: {}\nused: {} ({} of {} blocks)\nfree: {}{}\ntransaction id: {}\n\
             metadata: {} of {} pages free\nvolumes: {}\n",
            i.uuid,
            format_size(i.block_size),
            format_size(i.data_blocks * i.block_size),
            format_size(i.used_blocks * i.block_size),
            i.used_blocks,
            i.data_blocks,
            format_size(free * i.block_size),
            if i.below_low_water { " (below the 10% low-water mark)" } else { "" },
            i.transaction_id,
            i.metadata_free_pages,
            i.metadata_pages,
            i.volumes
        ));
    }
    Ok(())
}

fn list(io: &IoCtx, p: &PoolArg, json: bool) -> CmdResult {
    let pool = open(io, p, true)?;
    let bs = pool.info().block_size;
    let vols = pool.list();
    if json {
        let v: Vec<_> = vols
            .iter()
            .map(|v| {
                serde_json::json!({
                    "name": v.name, "id": v.id, "size": v.size,
                    "mapped-blocks": v.mapped_blocks, "mapped": v.mapped_blocks * bs,
                })
            })
            .collect();
        emit(&format!("{}\n", serde_json::to_string_pretty(&v)?));
    } else {
        let mut out = format!("{:<24} {:>10} {:>10}\n", "NAME", "SIZE", "MAPPED");
        for v in &vols {
            out.push_str(&format!(
                "{:<24} {:>10} {:>10}\n",
                v.name,
                format_size(v.size),
                format_size(v.mapped_blocks * bs)
            ));
        }
        emit(&out);
    }
    Ok(())
}

fn check_cmd(io: &IoCtx, p: &PoolArg, repair: bool, json: bool) -> CmdResult {
    let (meta, data) = devices(p, !repair)?;
    let rep = io.block_on(check::check(io, meta, data, repair))?;
    let code = rep.exit_code();
    if json {
        let v = serde_json::json!({
            "filename": p.pool.display().to_string(),
            "corruptions": rep.errors.len(),
            "errors": rep.errors,
            "leaks": rep.leaks.len() as u64 - rep.repaired,
            "leaks-fixed": rep.repaired,
        });
        emit(&format!("{}\n", serde_json::to_string_pretty(&v)?));
    } else {
        let mut out = String::new();
        for e in &rep.errors {
            out.push_str(&format!("ERROR {e}\n"));
        }
        for (b, stored, found) in &rep.leaks {
            out.push_str(&format!("Leaked data block {b}: refcount {stored}, {found} reference(s)\n"));
        }
        out.push_str(&match code {
            0 if rep.repaired > 0 => format!("Repaired {} leaks; no errors remain.\n", rep.repaired),
            0 => "No errors were found in the pool.\n".to_string(),
            _ => format!("{} errors and {} leaked blocks were found in the pool.\n", rep.errors.len(), rep.leaks.len()),
        });
        emit(&out);
    }
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// Print to stdout; a closed pipe is not an error worth a panic.
fn emit(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
}
