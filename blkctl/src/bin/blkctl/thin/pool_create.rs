//! `blkctl thin pool-create`: every argument is checked, the device(s) opened and locked, and
//! what they hold looked at before the first byte changes. A device that holds anything (a thin
//! pool, named with its volumes; a qcow2 image, a file system, any data in its first MiB) is
//! refused unless `--force`, and a refusal leaves it byte-identical.

use std::path::Path;

use blockdev::size::parse_size;
use thin::{existing_pool, Pool, PoolConfig};
use blockdev::IoCtx;
use serde_json::{json, Value};
use vhost_user_blk::api::thin::pool_info_json;

use super::{devices_for, PoolArg};

/// The options of `pool-create` besides the devices.
pub struct Args {
    /// `--block-size`.
    pub block_size: String,
    /// `--metadata-size`.
    pub metadata_size: Option<String>,
    /// `--force`.
    pub force: bool,
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Check, lock, look, then create; answers the new pool's summary with `pool` (and
/// `metadata`, for a separate metadata device).
pub fn run(io: &IoCtx, p: &PoolArg, a: Args) -> Res<Value> {
    let block_size = parse_size(&a.block_size).map_err(|e| format!("--block-size: {e}"))?;
    let block_size = u32::try_from(block_size)
        .ok()
        .filter(|b| (64 << 10..=1 << 20).contains(b) && b.is_power_of_two())
        .ok_or_else(|| format!("--block-size {}: must be a power of two from 64K to 1M", a.block_size))?;
    let metadata_size =
        a.metadata_size.as_deref().map(parse_size).transpose().map_err(|e| format!("--metadata-size: {e}"))?;
    if let Some(m) = &p.metadata {
        if metadata_size.is_some() {
            return Err("--metadata-size sizes the metadata area of a single-device pool; \
                        a separate --metadata device is used whole"
                .into());
        }
        if same_file(&p.pool, m) {
            return Err(format!(
                "--metadata {} is the pool device itself: give a separate device, or leave --metadata out",
                m.display()
            )
            .into());
        }
    }
    let (meta, data) = devices_for(p, false, "nothing was written; stop serving it before making a new pool on it")?;
    if !a.force {
        // The pool's superblock is on the metadata device when there is one.
        let meta_path = p.metadata.as_deref().unwrap_or(&p.pool);
        if let Some(what) = io.block_on(existing_pool(io, &meta, data.as_ref())) {
            return Err(format!(
                "{}: holds {what}; refusing to overwrite it (--force overwrites, losing every volume)",
                meta_path.display()
            )
            .into());
        }
        for path in std::iter::once(p.pool.as_path()).chain(p.metadata.as_deref()) {
            let f = std::fs::File::open(path).map_err(|e| format!("{}: open: {e}", path.display()))?;
            blockdev::signature::refuse_overwrite(&f, path, false)?;
        }
    }
    let cfg = PoolConfig { block_size, metadata_size };
    let pool = io.block_on(Pool::create(io, meta, data, cfg)).map_err(|e| format!("{}: {e}", p.pool.display()))?;
    let mut v = pool_info_json(&pool.info());
    v["pool"] = json!(p.pool.display().to_string());
    v["metadata"] = json!(p.metadata.as_ref().map(|m| m.display().to_string()));
    Ok(v)
}

/// True when `a` and `b` are the same file (device and inode) or the same block device (two
/// nodes of one device number), so opening both would lock against ourselves.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => {
            let block = x.file_type().is_block_device() && y.file_type().is_block_device();
            (x.dev() == y.dev() && x.ino() == y.ino()) || (block && x.rdev() == y.rdev())
        }
        _ => false,
    }
}
