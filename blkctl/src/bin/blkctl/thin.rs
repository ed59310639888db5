//! `blkctl thin pool-create|pool-grow|pool-info|create|snapshot|list|remove|resize|check`: parse the
//! options and call `thin` on the pool file(s), or, with `--api-socket`, send the
//! command to the daemon serving the pool (`vhost_user_blk::api::thin`). Either way a change is
//! carried out by `api::thin::run` and answered with one JSON object saying what it did, which
//! `--json` prints and [`print`] turns into one line.

mod pool_create;
mod print;

use std::path::PathBuf;
use std::sync::Arc;

use blkctl::progress::{self, Spinner};
use thin::check;
use thin::Pool;
use blockdev::{BlockDev, ErrorKind, IoCtx, OpenOptions, RawFile};
use serde_json::{json, Value};
use vhost_user_blk::api::thin::{call, check_report_from_json, run, SizeArg, ThinRequest};

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

/// A size, given positionally or as `--size` (the same either way).
#[derive(clap::Args)]
pub struct SizeArgs {
    /// Size with K, M, G, T suffixes (powers of 1024; 1.5G as qemu-img takes it); resize also
    /// takes +SIZE / -SIZE, relative to the size now.
    #[arg(value_name = "SIZE", allow_hyphen_values = true, required_unless_present = "size_opt")]
    size: Option<String>,
    /// The size, as an option.
    #[arg(long = "size", value_name = "SIZE", allow_hyphen_values = true, conflicts_with = "size")]
    size_opt: Option<String>,
}

impl SizeArgs {
    fn text(&self) -> &str {
        self.size.as_deref().or(self.size_opt.as_deref()).unwrap_or_default()
    }
}

/// `--json`: print the JSON object saying what was done instead of one line.
#[derive(clap::Args)]
pub struct JsonArg {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `blkctl thin ...`.
#[derive(clap::Subcommand)]
pub enum ThinCmd {
    /// Make a new, empty pool on POOL (its size is the pool's size). Refused when POOL (or the
    /// --metadata device) holds anything — a pool, an image, a file system, any data in its
    /// first MiB — unless --force.
    #[command(after_help = "Exit status: 0 created, 1 error (the devices are left as they were).")]
    PoolCreate {
        #[command(flatten)]
        pool: PoolArg,
        /// Data block size, 64K to 1M.
        #[arg(long, default_value = "64K")]
        block_size: String,
        /// Metadata area size on a single-device pool (default 1/256 of it, at least 1M).
        #[arg(long)]
        metadata_size: Option<String>,
        /// Overwrite whatever the device(s) hold (every volume of a pool on it is lost).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Take in space added at the end of the pool's (data) device: first enlarge the file
    /// (truncate -s, fallocate -l) or the block device, then run this. With --api-socket the
    /// daemon serving the pool grows it while its volumes are in use, and writes waiting for
    /// space (no-space-wait) go on. Refused when the device has not grown by a block.
    PoolGrow {
        #[command(flatten)]
        pool: PoolArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Show size, usage, how much the volumes provision (overcommit), transaction id, volumes.
    PoolInfo {
        #[command(flatten)]
        pool: PoolArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Create a volume: blkctl thin create POOL NAME SIZE (or --size SIZE). Its size may exceed
    /// the pool's (overcommit); the output says by how much the pool is overcommitted.
    Create {
        #[command(flatten)]
        pool: PoolArg,
        /// Volume name.
        name: String,
        #[command(flatten)]
        size: SizeArgs,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Writable snapshot NAME of volume or snapshot ORIGIN.
    Snapshot {
        #[command(flatten)]
        pool: PoolArg,
        /// The volume to snapshot.
        origin: String,
        /// The snapshot's name.
        name: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// List volumes with the space each maps.
    List {
        #[command(flatten)]
        pool: PoolArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Remove a volume or snapshot (blocks nobody else references are freed).
    Remove {
        #[command(flatten)]
        pool: PoolArg,
        /// Volume name.
        name: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Change a volume's size: blkctl thin resize POOL NAME [+|-]SIZE (or --size). Growing is
    /// always allowed; a smaller size needs --shrink, and is refused while mapped data lies past
    /// the new end (the error says how much) unless --discard-data drops it.
    #[command(after_help = "Exit status: 0 resized, 1 error (the volume is left as it was).")]
    Resize {
        #[command(flatten)]
        pool: PoolArg,
        /// Volume name.
        name: String,
        #[command(flatten)]
        size: SizeArgs,
        /// Allow a smaller size (refused anyway while the volume is served, and while mapped
        /// data lies past the new end unless --discard-data).
        #[arg(long)]
        shrink: bool,
        /// With --shrink: drop the data mapped past the new end.
        #[arg(long, requires = "shrink")]
        discard_data: bool,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Check mappings against the space map: exit 0 clean, 3 leaks only, 2 corruption.
    Check {
        #[command(flatten)]
        pool: PoolArg,
        /// Repair leaks (exit 0 once everything found is repaired).
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        json: JsonArg,
    },
}

impl crate::Group for Cmd {
    fn run(self) -> CmdResult {
        let Cmd::Thin(cmd) = self;
        let io = IoCtx::new()?;
        let p = |pool: &PoolArg| pool.pool.display().to_string();
        match cmd {
            ThinCmd::PoolCreate { pool, block_size, metadata_size, force, json } => {
                no_daemon(&pool, "pool-create")?;
                let args = pool_create::Args { block_size, metadata_size, force };
                let v = pool_create::run(&io, &pool, args)?;
                print::answer(&v, json.json, print::pool_created)
            }
            ThinCmd::PoolInfo { pool, json } => {
                let v = query(&io, &pool, ThinRequest::PoolInfo { pool: p(&pool) })?;
                print::answer(&v, json.json, print::pool_info)
            }
            ThinCmd::PoolGrow { pool, json } => {
                let v = change(&io, &pool, ThinRequest::PoolGrow { pool: p(&pool) })?;
                print::answer(&v, json.json, print::pool_grown)
            }
            ThinCmd::Create { pool, name, size, json } => {
                let size = blockdev::size::parse_size(size.text())?;
                let v = change(&io, &pool, ThinRequest::Create { pool: p(&pool), name, size })?;
                print::answer(&v, json.json, print::created)
            }
            ThinCmd::Snapshot { pool, origin, name, json } => {
                let v = change(&io, &pool, ThinRequest::Snapshot { pool: p(&pool), origin, name })?;
                print::answer(&v, json.json, print::snapshot)
            }
            ThinCmd::List { pool, json } => {
                let v = query(&io, &pool, ThinRequest::List { pool: p(&pool) })?;
                print::answer(&v, json.json, print::list)
            }
            ThinCmd::Remove { pool, name, json } => {
                let v = change(&io, &pool, ThinRequest::Remove { pool: p(&pool), name })?;
                print::answer(&v, json.json, print::removed)
            }
            ThinCmd::Resize { pool, name, size, shrink, discard_data, json } => {
                // Checked here, before the pool is opened; sent as text so that a relative size
                // applies to the size the volume has when the change is made.
                blockdev::size::SizeChange::parse(size.text())?;
                let size = SizeArg::Text(size.text().to_string());
                let v = change(&io, &pool, ThinRequest::Resize { pool: p(&pool), name, size, shrink, discard_data })?;
                print::answer(&v, json.json, print::resized)
            }
            ThinCmd::Check { pool, repair, json } => {
                // How long the metadata walk takes is not known beforehand: a spinner, on a
                // terminal only.
                let spinner = Spinner::start("checking the pool's metadata", progress::show_on_stderr(false));
                let rep = match remote(&pool, json!({"op": "check", "repair": repair}))? {
                    Some(v) => check_report_from_json(&v)?,
                    None => {
                        let (meta, data) = devices(&pool, !repair)?;
                        io.block_on(check::check(&io, meta, data, repair))?
                    }
                };
                drop(spinner);
                print::check(&pool.pool, &rep, json.json)
            }
        }
    }
}

/// A request that changes the pool: through the daemon with `--api-socket`, else on the pool
/// opened (and locked) here. Answers what was done.
fn change(io: &IoCtx, p: &PoolArg, req: ThinRequest) -> Result<Value, Box<dyn std::error::Error>> {
    if let Some(v) = remote(p, serde_json::to_value(&req)?)? {
        return Ok(v);
    }
    let pool = open(io, p, false)?;
    let v = run(&pool, io, &p.pool.display().to_string(), req).map_err(|e| format!("{}: {e}", p.pool.display()))?;
    Ok(v)
}

/// A request that only reads: through the daemon with `--api-socket`, else on the pool opened
/// read-only here.
fn query(io: &IoCtx, p: &PoolArg, req: ThinRequest) -> Result<Value, Box<dyn std::error::Error>> {
    if let Some(v) = remote(p, serde_json::to_value(&req)?)? {
        return Ok(v);
    }
    let pool = open(io, p, true)?;
    Ok(run(&pool, io, &p.pool.display().to_string(), req)?)
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
    devices_for(p, read_only, "pass --api-socket PATH (the daemon's control socket) to send the command to the daemon")
}

/// [`devices`], with `what_to_do` in the error when another process holds a device.
fn devices_for(p: &PoolArg, read_only: bool, what_to_do: &str) -> Result<Devices, Box<dyn std::error::Error>> {
    let opts = OpenOptions { read_only, ..OpenOptions::default() };
    let open = |path: &PathBuf| -> Result<Arc<dyn BlockDev>, Box<dyn std::error::Error>> {
        match RawFile::open(path, opts) {
            Ok(f) => Ok(Arc::new(f)),
            // The lock error names the holder (this process, or another by pid and name).
            Err(e) if e.kind() == ErrorKind::Locked => {
                Err(format!("thin pool {} is in use: {e}; to change it while served, {what_to_do}", p.pool.display())
                    .into())
            }
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
