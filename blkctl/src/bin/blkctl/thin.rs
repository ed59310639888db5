//! `blkctl thin pool-create|pool-grow|pool-info|create|snapshot|list|remove|resize|check`: parse the
//! options and call `thin` on the pool file(s), or, with `--api-socket`, send the
//! command to the daemon serving the pool (`vhost_user_blk::api::thin`).

use std::path::PathBuf;
use std::sync::Arc;

use blockdev::size::{format_size, parse_size};
use thin::check::{self, CheckReport};
use thin::{Pool, PoolConfig};
use blockdev::{BlockDev, ErrorKind, IoCtx, OpenOptions, RawFile};
use serde_json::{json, Value};
use vhost_user_blk::api::thin::{
    call, check_report_from_json, check_report_json, grown_json, pool_info_json, volumes_json,
};

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
    /// Send the command to the strata daemon serving the pool, through its control socket at
    /// PATH (the pool is changed while its volumes are in use; --metadata is not needed).
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
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
    /// Take in space added at the end of the pool's (data) device: first enlarge the file
    /// (truncate -s, fallocate -l) or the block device, then run this. With --api-socket the
    /// daemon serving the pool grows it while its volumes are in use, and writes waiting for
    /// space (no-space-wait) go on. Refused when the device has not grown by a block.
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
                no_daemon(&pool, "pool-create")?;
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
            ThinCmd::PoolInfo { pool, json } => {
                let v = match remote(&pool, json!({"op": "pool-info"}))? {
                    Some(v) => v,
                    None => pool_info_json(&open(&io, &pool, true)?.info()),
                };
                print_pool_info(&v, json)
            }
            ThinCmd::PoolGrow { pool } => {
                let v = match remote(&pool, json!({"op": "pool-grow"}))? {
                    Some(v) => v,
                    None => {
                        let p = open(&io, &pool, false)?;
                        let before = p.info();
                        io.block_on(p.grow(&io)).map_err(|e| format!("{}: {e}", pool.pool.display()))?;
                        grown_json(&before, &p.info())
                    }
                };
                emit(&format!(
                    "thin pool grown from {} to {} ({} data blocks of {}, {} free)\n",
                    format_size(u(&v, "old-size")),
                    format_size(u(&v, "size")),
                    u(&v, "data-blocks"),
                    format_size(u(&v, "block-size")),
                    format_size(u(&v, "free"))
                ));
                Ok(())
            }
            ThinCmd::Create { pool, name, size } => {
                let size = parse_size(&size)?;
                if remote(&pool, json!({"op": "create", "name": name, "size": size}))?.is_none() {
                    let p = open(&io, &pool, false)?;
                    io.block_on(p.create_volume(&io, &name, size))?;
                }
                Ok(())
            }
            ThinCmd::Snapshot { pool, origin, name } => {
                if remote(&pool, json!({"op": "snapshot", "origin": origin, "name": name}))?.is_none() {
                    let p = open(&io, &pool, false)?;
                    io.block_on(p.snapshot(&io, &origin, &name))?;
                }
                Ok(())
            }
            ThinCmd::List { pool, json } => {
                let v = match remote(&pool, json!({"op": "list"}))? {
                    Some(v) => v,
                    None => {
                        let p = open(&io, &pool, true)?;
                        volumes_json(&p.list(), p.info().block_size)
                    }
                };
                print_list(&v, json)
            }
            ThinCmd::Remove { pool, name } => {
                if remote(&pool, json!({"op": "remove", "name": name}))?.is_none() {
                    let p = open(&io, &pool, false)?;
                    io.block_on(p.remove_volume(&io, &name))?;
                }
                Ok(())
            }
            ThinCmd::Resize { pool, name, size } => {
                let size = parse_size(&size)?;
                if remote(&pool, json!({"op": "resize", "name": name, "size": size}))?.is_none() {
                    let p = open(&io, &pool, false)?;
                    io.block_on(p.resize_volume(&io, &name, size))?;
                }
                Ok(())
            }
            ThinCmd::Check { pool, repair, json } => {
                let rep = match remote(&pool, json!({"op": "check", "repair": repair}))? {
                    Some(v) => check_report_from_json(&v)?,
                    None => {
                        let (meta, data) = devices(&pool, !repair)?;
                        io.block_on(check::check(&io, meta, data, repair))?
                    }
                };
                print_check(&pool, &rep, json)
            }
        }
    }
}

/// With `--api-socket`, send `req` (an object with its `op`) for this pool to the daemon and
/// return its result (`null` when none); without, `None`: the caller opens the pool itself.
fn remote(p: &PoolArg, mut req: Value) -> Result<Option<Value>, Box<dyn std::error::Error>> {
    let Some(sock) = &p.api_socket else { return Ok(None) };
    // The daemon names pools by canonical path (or node:NAME, which does not canonicalize).
    let pool = std::fs::canonicalize(&p.pool).unwrap_or_else(|_| p.pool.clone());
    req["cmd"] = json!("thin");
    req["pool"] = json!(pool.display().to_string());
    Ok(Some(call(sock, &req)?))
}

fn no_daemon(p: &PoolArg, what: &str) -> CmdResult {
    if p.api_socket.is_some() {
        return Err(format!("thin {what} is not available through the daemon: stop serving the pool first").into());
    }
    Ok(())
}

type Devices = (Arc<dyn BlockDev>, Option<Arc<dyn BlockDev>>);

/// Open the pool's device(s); writable opens take the exclusive lock.
/// A pool locked by a daemon says so and points at `--api-socket`.
fn devices(p: &PoolArg, read_only: bool) -> Result<Devices, Box<dyn std::error::Error>> {
    let opts = OpenOptions { read_only, ..OpenOptions::default() };
    let open = |path: &PathBuf| -> Result<Arc<dyn BlockDev>, Box<dyn std::error::Error>> {
        match RawFile::open(path, opts) {
            Ok(f) => Ok(Arc::new(f)),
            Err(e) if e.kind() == ErrorKind::Locked => Err(format!(
                "thin pool {} is in use by another process, e.g. a strata daemon serving it: \
                 pass --api-socket PATH (the daemon's control socket) to send the command to the daemon \
                 ({e})",
                p.pool.display()
            )
            .into()),
            Err(e) => Err(e.into()),
        }
    };
    let pool = open(&p.pool)?;
    Ok(match &p.metadata {
        Some(m) => (open(m)?, Some(pool)),
        None => (pool, None),
    })
}

fn open(io: &IoCtx, p: &PoolArg, read_only: bool) -> Result<Pool, Box<dyn std::error::Error>> {
    let (meta, data) = devices(p, read_only)?;
    io.block_on(Pool::open(io, meta, data)).map_err(|e| {
        let hint = if e.kind() == ErrorKind::Corrupt && !e.to_string().contains("blkctl thin check") {
            " (run blkctl thin check for a full report)"
        } else {
            ""
        };
        format!("{}: {e}{hint}", p.pool.display()).into()
    })
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

fn print_pool_info(v: &Value, json: bool) -> CmdResult {
    if json {
        emit(&format!("{}\n", serde_json::to_string_pretty(v)?));
        return Ok(());
    }
    let low = v["below-low-water"].as_bool().unwrap_or(false);
    emit(&format!(
        "uuid: {}\nblock size: {}\nsize: {}\nused: {} ({} of {} blocks)\nfree: {}{}\ntransaction id: {}\n\
         metadata: {} of {} pages free\nvolumes: {}\n",
        v["uuid"].as_str().unwrap_or("?"),
        format_size(u(v, "block-size")),
        format_size(u(v, "size")),
        format_size(u(v, "used")),
        u(v, "used-blocks"),
        u(v, "data-blocks"),
        format_size(u(v, "free")),
        if low { " (below the 10% low-water mark)" } else { "" },
        u(v, "transaction-id"),
        u(v, "metadata-free-pages"),
        u(v, "metadata-pages"),
        u(v, "volumes")
    ));
    Ok(())
}

fn print_list(v: &Value, json: bool) -> CmdResult {
    if json {
        emit(&format!("{}\n", serde_json::to_string_pretty(v)?));
        return Ok(());
    }
    let mut out = format!("{:<24} {:>10} {:>10}\n", "NAME", "SIZE", "MAPPED");
    for vol in v.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        out.push_str(&format!(
            "{:<24} {:>10} {:>10}\n",
            vol["name"].as_str().unwrap_or("?"),
            format_size(u(vol, "size")),
            format_size(u(vol, "mapped"))
        ));
    }
    emit(&out);
    Ok(())
}

fn print_check(p: &PoolArg, rep: &CheckReport, json: bool) -> CmdResult {
    let code = rep.exit_code();
    if json {
        let mut v = json!({
            "filename": p.pool.display().to_string(),
            "corruptions": rep.errors.len(),
            "leaks": rep.leaks.len() as u64 - rep.repaired,
            "leaks-fixed": rep.repaired,
        });
        if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), check_report_json(rep)) {
            obj.extend(more);
        }
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
