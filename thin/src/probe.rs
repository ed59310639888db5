//! What a device holds when it already holds a thin pool, said so that a person about to
//! overwrite it sees what would be lost: `pool-create` refuses such a device without `--force`.
//!
//! A pool's first transaction writes only superblock slot 1 (at 4 KiB), so a generic look at the
//! device's first bytes (`signature::identify`) would call a fresh pool mere data; this reads the
//! superblock copies as the pool does.

use std::sync::Arc;

use super::load;
use super::pool::Pool;
use blockdev::size::format_iec;
use blockdev::{BlockDev, IoCtx};

/// Most volume names listed in the description.
const NAMES_SHOWN: usize = 8;

/// When `meta` (with `data`, for a pool on two devices) holds a strata thin pool, describe it:
/// `a strata thin pool (8 GiB, 2 volumes: vm1, vm2)`; `None` when it holds no valid superblock.
/// Read-only: nothing is written.
pub async fn existing_pool(io: &IoCtx, meta: &Arc<dyn BlockDev>, data: Option<&Arc<dyn BlockDev>>) -> Option<String> {
    let sb = load::read_superblock(io, meta).await.ok()?;
    let size = format_iec(sb.data_blocks.saturating_mul(u64::from(sb.block_size)));
    let (st, _) = match Pool::load(io, meta, data).await {
        Ok(loaded) => loaded,
        Err(e) => return Some(format!("a strata thin pool ({size}; its metadata does not load: {e})")),
    };
    let names: Vec<&str> = st.volumes.values().map(|v| v.name.as_str()).collect();
    Some(match names.len() {
        0 => format!("a strata thin pool ({size}, no volumes)"),
        n => {
            let mut list = names[..n.min(NAMES_SHOWN)].join(", ");
            if n > NAMES_SHOWN {
                list.push_str(&format!(" and {} more", n - NAMES_SHOWN));
            }
            format!("a strata thin pool ({size}, {n} volume{}: {list})", if n == 1 { "" } else { "s" })
        }
    })
}
