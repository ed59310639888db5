//! Thin pool commands on the control socket, for a pool some export of this daemon serves
//! (`format=thin`): the pool is changed through the daemon's open pool, so volumes are created,
//! snapshotted, resized and removed while others are in use.
//!
//! Requests carry `"cmd":"thin"`, an `op` and the pool as the daemon's specs name it (a path —
//! the data device's with a separate metadata device — or `node:NAME`):
//! - `{"cmd":"thin","op":"pool-info","pool":P}` → the pool summary (as `blkctl thin pool-info --json`)
//! - `{"cmd":"thin","op":"list","pool":P}` → the volumes (as `blkctl thin list --json`)
//! - `{"cmd":"thin","op":"create","pool":P,"name":N,"size":BYTES}`
//! - `{"cmd":"thin","op":"snapshot","pool":P,"origin":O,"name":N}`: the origin may be served; its
//!   writes pause while those in flight finish, so the snapshot holds every write that completed
//!   before the request and none that started after it.
//! - `{"cmd":"thin","op":"remove","pool":P,"name":N}`: refused while the volume is served.
//! - `{"cmd":"thin","op":"resize","pool":P,"name":N,"size":BYTES}`: a served volume may grow (its
//!   export keeps the capacity it announced until the export is added again), not shrink.
//! - `{"cmd":"thin","op":"check","pool":P[,"repair":true]}` → the checker's report on the
//!   committed metadata (read from the device while commits wait); `repair` fixes leaks.
//! - `{"cmd":"thin","op":"pool-grow","pool":P}` → the pool summary after growing, plus
//!   `old-size` and `old-data-blocks`: the pool takes in the space added at the end of its (data)
//!   device since it was opened (the file extended with `truncate -s`/`fallocate -l`, the block
//!   device enlarged), in one committed transaction, while its volumes are in use; writes waiting
//!   for space (`no-space-wait`) then go on. Refused with the reason when the device did not grow
//!   by a block, shrank, or the metadata has no room for the larger space map.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use blockdev::{ErrorKind, IoCtx};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thin::check::{check_open, CheckReport};
use thin::{Pool, PoolInfo, VolumeInfo};

use crate::server::Daemon;
use crate::stack::thin::served_pool;

/// One thin pool request (the `op` field selects it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum ThinRequest {
    /// Size, usage, transaction id, volumes.
    PoolInfo {
        /// The pool.
        pool: String,
    },
    /// The volumes with the space each maps.
    List {
        /// The pool.
        pool: String,
    },
    /// Create a volume of `size` bytes.
    Create {
        /// The pool.
        pool: String,
        /// Volume name.
        name: String,
        /// Virtual size in bytes.
        size: u64,
    },
    /// Writable snapshot `name` of `origin`.
    Snapshot {
        /// The pool.
        pool: String,
        /// Volume to snapshot.
        origin: String,
        /// The snapshot's name.
        name: String,
    },
    /// Remove a volume that is not served.
    Remove {
        /// The pool.
        pool: String,
        /// Volume name.
        name: String,
    },
    /// Change a volume's virtual size.
    Resize {
        /// The pool.
        pool: String,
        /// Volume name.
        name: String,
        /// New virtual size in bytes.
        size: u64,
    },
    /// Take in space added at the end of the pool's (data) device.
    PoolGrow {
        /// The pool.
        pool: String,
    },
    /// Check the committed metadata (and repair leaks with `repair`).
    Check {
        /// The pool.
        pool: String,
        /// Fix leaks.
        #[serde(default)]
        repair: bool,
    },
}

impl ThinRequest {
    fn pool(&self) -> &str {
        match self {
            ThinRequest::PoolInfo { pool }
            | ThinRequest::PoolGrow { pool }
            | ThinRequest::List { pool }
            | ThinRequest::Create { pool, .. }
            | ThinRequest::Snapshot { pool, .. }
            | ThinRequest::Remove { pool, .. }
            | ThinRequest::Resize { pool, .. }
            | ThinRequest::Check { pool, .. } => pool,
        }
    }
}

/// Carry out one thin request (on a blocking thread: it waits for the pool's I/O).
pub fn handle(daemon: &Daemon, req: ThinRequest) -> Result<Value, String> {
    let name = req.pool().to_string();
    let pool: Arc<Pool> = served_pool(&name).ok_or_else(|| {
        format!(
            "thin pool {name}: no export of this daemon serves a volume of it (name it as the daemon's \
             disk spec does; a pool nobody serves is changed with blkctl thin without --api-socket)"
        )
    })?;
    let io = IoCtx::new().map_err(|e| e.to_string())?;
    let err = |e: blockdev::Error| format!("thin pool {name}: {e}");
    match req {
        ThinRequest::PoolInfo { .. } => Ok(pool_info_json(&pool.info())),
        ThinRequest::List { .. } => Ok(volumes_json(&pool.list(), pool.info().block_size)),
        ThinRequest::Create { name: vol, size, .. } => {
            io.block_on(pool.create_volume(&io, &vol, size)).map_err(err).map(|()| Value::Null)
        }
        ThinRequest::Snapshot { origin, name: snap, .. } => {
            io.block_on(pool.snapshot(&io, &origin, &snap)).map_err(err).map(|()| Value::Null)
        }
        ThinRequest::Remove { name: vol, .. } => match io.block_on(pool.remove_volume(&io, &vol)) {
            Ok(()) => Ok(Value::Null),
            Err(e) if e.kind() == ErrorKind::Locked => {
                let exports: Vec<String> =
                    daemon.list().into_iter().filter(|x| x.device == format!("thin:{vol}")).map(|x| x.name).collect();
                let hint = if exports.is_empty() {
                    String::new()
                } else {
                    format!(" (served by export {}: remove the export first)", exports.join(", "))
                };
                Err(format!("thin pool {name}: {e}{hint}"))
            }
            Err(e) => Err(err(e)),
        },
        ThinRequest::Resize { name: vol, size, .. } => {
            io.block_on(pool.resize_volume(&io, &vol, size)).map_err(err).map(|()| Value::Null)
        }
        ThinRequest::PoolGrow { .. } => {
            let before = pool.info();
            io.block_on(pool.grow(&io)).map_err(err)?;
            Ok(grown_json(&before, &pool.info()))
        }
        ThinRequest::Check { repair, .. } => {
            io.block_on(check_open(&io, &pool, repair)).map_err(err).map(|r| check_report_json(&r))
        }
    }
}

/// The pool summary as `blkctl thin pool-info --json` prints it.
pub fn pool_info_json(i: &PoolInfo) -> Value {
    let free = i.data_blocks.saturating_sub(i.used_blocks);
    json!({
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
    })
}

/// The summary after a growth ([`pool_info_json`] of `after`) with the size before it as
/// `old-size` and `old-data-blocks`.
pub fn grown_json(before: &PoolInfo, after: &PoolInfo) -> Value {
    let mut v = pool_info_json(after);
    v["old-size"] = json!(before.data_blocks * before.block_size);
    v["old-data-blocks"] = json!(before.data_blocks);
    v
}

/// The volumes as `blkctl thin list --json` prints them (`bs`: the pool's block size).
pub fn volumes_json(vols: &[VolumeInfo], bs: u64) -> Value {
    Value::Array(
        vols.iter()
            .map(|v| {
                json!({
                    "name": v.name, "id": v.id, "size": v.size,
                    "mapped-blocks": v.mapped_blocks, "mapped": v.mapped_blocks * bs,
                })
            })
            .collect(),
    )
}

/// A checker report as JSON (`errors`, `leaked-blocks` as [block, stored, found], `repaired`).
pub fn check_report_json(r: &CheckReport) -> Value {
    json!({
        "errors": r.errors,
        "leaked-blocks": r.leaks.iter().map(|(b, s, f)| [*b, *s, *f]).collect::<Vec<_>>(),
        "repaired": r.repaired,
    })
}

/// Read back [`check_report_json`].
pub fn check_report_from_json(v: &Value) -> Result<CheckReport, String> {
    let bad = || format!("control socket: malformed check report {v}");
    let errors = v["errors"]
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|e| e.as_str().map(str::to_string).ok_or_else(bad))
        .collect::<Result<Vec<_>, _>>()?;
    let leaks = v["leaked-blocks"]
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|l| match l.as_array().map(|a| a.iter().map(Value::as_u64).collect::<Vec<_>>()) {
            Some(a) if a.len() == 3 && a.iter().all(Option::is_some) => {
                Ok((a[0].unwrap_or(0), a[1].unwrap_or(0), a[2].unwrap_or(0)))
            }
            _ => Err(bad()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let repaired = v["repaired"].as_u64().ok_or_else(bad)?;
    Ok(CheckReport { errors, leaks, repaired })
}

/// Longest answer read back from the control socket.
const MAX_ANSWER: u64 = 16 << 20;

/// Send one request to the control socket at `socket` and return its `result` (`null` when the
/// answer has none), or the daemon's error.
pub fn call(socket: &Path, req: &Value) -> Result<Value, String> {
    let what = socket.display();
    let mut s = UnixStream::connect(socket).map_err(|e| format!("control socket {what}: cannot connect: {e}"))?;
    // Snapshots wait for the origin's writes in flight, a check reads all metadata: be patient.
    let _ = s.set_read_timeout(Some(Duration::from_secs(300)));
    let mut line = req.to_string().into_bytes();
    line.push(b'\n');
    s.write_all(&line).map_err(|e| format!("control socket {what}: send: {e}"))?;
    let mut answer = String::new();
    BufReader::new(s.take(MAX_ANSWER))
        .read_line(&mut answer)
        .map_err(|e| format!("control socket {what}: no answer: {e}"))?;
    let v: Value =
        serde_json::from_str(&answer).map_err(|e| format!("control socket {what}: bad answer ({e}): {answer:?}"))?;
    match v["ok"].as_bool() {
        Some(true) => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
        Some(false) => Err(v["error"].as_str().unwrap_or("failed, no message").to_string()),
        None => Err(format!("control socket {what}: bad answer {answer:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_from_flat_json() {
        let r: crate::api::Request =
            serde_json::from_str(r#"{"cmd":"thin","op":"create","pool":"/p","name":"v","size":1048576}"#).unwrap();
        assert_eq!(
            r,
            crate::api::Request::Thin(ThinRequest::Create { pool: "/p".into(), name: "v".into(), size: 1 << 20 })
        );
        let back = serde_json::to_value(&r).unwrap();
        assert_eq!(back["cmd"], "thin");
        assert_eq!(back["op"], "create");
        let c: crate::api::Request = serde_json::from_str(r#"{"cmd":"thin","op":"check","pool":"/p"}"#).unwrap();
        assert_eq!(c, crate::api::Request::Thin(ThinRequest::Check { pool: "/p".into(), repair: false }));
        let g: crate::api::Request = serde_json::from_str(r#"{"cmd":"thin","op":"pool-grow","pool":"/p"}"#).unwrap();
        assert_eq!(g, crate::api::Request::Thin(ThinRequest::PoolGrow { pool: "/p".into() }));
        assert!(serde_json::from_str::<crate::api::Request>(r#"{"cmd":"thin","op":"explode","pool":"/p"}"#).is_err());
    }

    #[test]
    fn unserved_pool_is_refused_with_a_hint() {
        let d = Daemon::new();
        let e = handle(&d, ThinRequest::List { pool: "/nonexistent/pool.img".into() }).unwrap_err();
        assert!(e.contains("/nonexistent/pool.img") && e.contains("without --api-socket"), "{e}");
    }

    #[test]
    fn check_reports_round_trip() {
        let r = CheckReport { errors: vec!["bad".into()], leaks: vec![(1, 2, 1)], repaired: 0 };
        assert_eq!(check_report_from_json(&check_report_json(&r)).unwrap(), r);
        assert!(check_report_from_json(&json!({"errors": 3})).is_err());
    }
}
