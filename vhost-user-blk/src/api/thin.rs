//! Thin pool commands on the control socket, for a pool some export of this daemon serves
//! (`format=thin`): the pool is changed through the daemon's open pool, so volumes are created,
//! snapshotted, resized and removed while others are in use.
//!
//! Requests carry `"cmd":"thin"`, an `op` and the pool as the daemon's specs name it (a path —
//! the data device's with a separate metadata device — or `node:NAME`). Every op that changes
//! the pool answers with what it did (`blkctl thin ... --json` prints the same object), `pool`
//! included:
//! - `{"cmd":"thin","op":"pool-info","pool":P}` → the pool summary (as `blkctl thin pool-info --json`),
//!   with `provisioned` (the volumes' sizes summed) and `overcommit-ratio` (that over the size)
//! - `{"cmd":"thin","op":"list","pool":P}` → the volumes (as `blkctl thin list --json`)
//! - `{"cmd":"thin","op":"create","pool":P,"name":N,"size":BYTES}` → `volume`, `size`, and the
//!   pool's `provisioned`, `pool-size` and `overcommit-ratio` (overcommit is allowed)
//! - `{"cmd":"thin","op":"snapshot","pool":P,"origin":O,"name":N}` → `snapshot`, `origin`, `size`
//!   and the overcommit fields: the origin may be served; its writes pause while those in flight
//!   finish, so the snapshot holds every write that completed before the request and none that
//!   started after it.
//! - `{"cmd":"thin","op":"remove","pool":P,"name":N}` → `removed`, `freed` (bytes of data blocks
//!   nobody else referenced): refused while the volume is served, naming the export.
//! - `{"cmd":"thin","op":"resize","pool":P,"name":N,"size":SIZE[,"shrink":true][,"discard-data":true]}`
//!   → `volume`, `old-size`, `size`, `discarded`. `SIZE` is bytes, or a string: `"2G"`, or
//!   `"+1G"` / `"-512M"` relative to the size now. A smaller size needs `shrink`, is refused
//!   while the volume is served, and is refused while mapped data lies past the new end (the
//!   error says how much) unless `discard-data` drops it. A served volume may grow: its export
//!   announces the new capacity and tells the frontend at once (`exports`: each export grown,
//!   with `notified`), as `{"cmd":"resize"}` on the export does.
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

use blockdev::size::SizeChange;
use blockdev::{ErrorKind, IoCtx};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thin::check::{check_open, CheckReport};
use thin::{Pool, PoolInfo, ResizeOptions, VolumeInfo};

use crate::server::Daemon;
use crate::stack::thin::{holder_of, served_pool};

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
        /// New virtual size: bytes, or `"2G"`, `"+1G"`, `"-512M"`.
        size: SizeArg,
        /// A smaller size is allowed.
        #[serde(default)]
        shrink: bool,
        /// Mapped data past a smaller size may be dropped.
        #[serde(default, rename = "discard-data")]
        discard_data: bool,
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

/// A size in a request: bytes, or text as `blkctl` takes it (`2G`, `+1G`, `-512M`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SizeArg {
    /// Bytes.
    Bytes(u64),
    /// `SIZE`, `+SIZE` or `-SIZE` with K, M, G, T suffixes.
    Text(String),
}

impl SizeArg {
    /// The change it asks for.
    pub fn change(&self) -> blockdev::Result<SizeChange> {
        match self {
            SizeArg::Bytes(n) => Ok(SizeChange::To(*n)),
            SizeArg::Text(t) => SizeChange::parse(t),
        }
    }
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
    let volume = match &req {
        ThinRequest::Remove { name, .. } | ThinRequest::Resize { name, .. } => Some(name.clone()),
        _ => None,
    };
    let resized = matches!(req, ThinRequest::Resize { .. });
    let mut answer = run(&pool, &io, &name, req).map_err(|e| {
        // A volume in use: say which export holds it.
        let held = volume.filter(|_| e.kind() == ErrorKind::Locked).and_then(|v| holder_of(&name, &v));
        match held {
            Some(holder) => format!("thin pool {name}: {e} (held by {holder}: remove that export first)"),
            None => format!("thin pool {name}: {e}"),
        }
    })?;
    if resized {
        // A served volume's export now announces the new size (and tells its frontend).
        let grown = crate::api::resize::sync_capacities(daemon);
        answer["exports"] =
            grown.iter().map(|(n, size, notified)| json!({"name": n, "size": size, "notified": notified})).collect();
    }
    Ok(answer)
}

/// Carry out `req` on the open `pool` (named `name` in the answers) and answer what it did, as
/// the module docs list; `blkctl thin` without `--api-socket` runs the same on a pool it opened.
pub fn run(pool: &Pool, io: &IoCtx, name: &str, req: ThinRequest) -> blockdev::Result<Value> {
    let mut v = match req {
        ThinRequest::PoolInfo { .. } => return Ok(pool_info_json(&pool.info())),
        ThinRequest::List { .. } => return Ok(volumes_json(&pool.list(), pool.info().block_size)),
        ThinRequest::Check { repair, .. } => {
            return io.block_on(check_open(io, pool, repair)).map(|r| check_report_json(&r))
        }
        ThinRequest::Create { name: vol, size, .. } => {
            io.block_on(pool.create_volume(io, &vol, size))?;
            let mut v = overcommit_json(&pool.info());
            v["volume"] = json!(vol);
            v["size"] = json!(size);
            v
        }
        ThinRequest::Snapshot { origin, name: snap, .. } => {
            io.block_on(pool.snapshot(io, &origin, &snap))?;
            let size = pool.list().iter().find(|v| v.name == snap).map_or(0, |v| v.size);
            let mut v = overcommit_json(&pool.info());
            v["snapshot"] = json!(snap);
            v["origin"] = json!(origin);
            v["size"] = json!(size);
            v
        }
        ThinRequest::Remove { name: vol, .. } => {
            let before = pool.info();
            io.block_on(pool.remove_volume(io, &vol))?;
            let after = pool.info();
            let mut v = overcommit_json(&after);
            v["removed"] = json!(vol);
            v["freed"] = json!(before.used_blocks.saturating_sub(after.used_blocks) * after.block_size);
            v
        }
        ThinRequest::Resize { name: vol, size, shrink, discard_data, .. } => {
            let change = size.change().map_err(|e| e.context(format!("thin volume '{vol}'")))?;
            let r = io.block_on(pool.resize_volume(io, &vol, change, ResizeOptions { shrink, discard_data }))?;
            let mut v = overcommit_json(&pool.info());
            v["volume"] = json!(vol);
            v["old-size"] = json!(r.old_size);
            v["size"] = json!(r.size);
            v["discarded"] = json!(r.discarded);
            v
        }
        ThinRequest::PoolGrow { .. } => {
            let before = pool.info();
            io.block_on(pool.grow(io))?;
            grown_json(&before, &pool.info())
        }
    };
    v["pool"] = json!(name);
    Ok(v)
}

/// How much the pool's volumes provision against its size: `provisioned`, `pool-size`,
/// `overcommit-ratio` (above 1: overcommitted).
pub fn overcommit_json(i: &PoolInfo) -> Value {
    json!({
        "provisioned": i.provisioned,
        "pool-size": i.size(),
        "overcommit-ratio": ratio(i),
    })
}

/// The overcommit ratio rounded to hundredths (for JSON answers).
fn ratio(i: &PoolInfo) -> f64 {
    (i.overcommit_ratio() * 100.0).round() / 100.0
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
        "provisioned": i.provisioned,
        "overcommit-ratio": ratio(i),
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
        // A resize takes bytes (as before) or text with a relative form, and the shrink flags.
        let r: crate::api::Request =
            serde_json::from_str(r#"{"cmd":"thin","op":"resize","pool":"/p","name":"v","size":1048576}"#).unwrap();
        let crate::api::Request::Thin(ThinRequest::Resize { size, shrink, discard_data, .. }) = r else { panic!() };
        assert_eq!((size.change().unwrap(), shrink, discard_data), (SizeChange::To(1 << 20), false, false));
        let r: crate::api::Request = serde_json::from_str(
            r#"{"cmd":"thin","op":"resize","pool":"/p","name":"v","size":"-1G","shrink":true,"discard-data":true}"#,
        )
        .unwrap();
        let crate::api::Request::Thin(ThinRequest::Resize { size, shrink, discard_data, .. }) = r else { panic!() };
        assert_eq!((size.change().unwrap(), shrink, discard_data), (SizeChange::Shrink(1 << 30), true, true));
        assert!(SizeArg::Text("1X".into()).change().is_err());
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
