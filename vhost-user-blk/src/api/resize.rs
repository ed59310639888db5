//! Live resize on the control socket: `{"cmd":"resize","name":NAME,"size":SIZE[,"shrink":true]}`
//! → `{"name","old-size","size","notified"}`.
//!
//! `SIZE` is bytes, or text as on command lines: `"20G"`, or `"+1G"` / `"-512M"` relative to the
//! capacity the guest sees now. The device beneath changes size ([`BlockDev::resize`]: a raw file
//! is extended, a block device read again, a qcow2 image resized crash-safely, a thin volume
//! resized in its pool, a mem disk grown; a RAID array refuses), then the export announces the
//! new capacity and the frontend is told (`notified`: whether it was; a frontend that was not
//! sees the new capacity on its next GET_CONFIG).
//!
//! Order, so requests in flight finish against the size they were checked with: growing sets the
//! device's size first and the export's capacity after (a request past the old end that arrives
//! then succeeds); shrinking lowers the export's capacity first, waits until no request is in
//! flight, then shrinks the device (and puts the capacity back if the device refuses).
//!
//! [`sync_capacities`] is the same announcement for a device whose size changed by another way (a
//! served thin volume resized through `{"cmd":"thin","op":"resize"}`).

use std::sync::Arc;
use std::time::Duration;

use blockdev::size::format_iec;
use blockdev::IoCtx;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::thin::SizeArg;
use crate::server::backend::BlkBackend;
use crate::server::{Daemon, Export};

/// How long a shrink waits for the requests in flight against the old size.
const SHRINK_DRAIN: Duration = Duration::from_secs(10);

/// A live resize request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResizeReq {
    /// Export name.
    pub name: String,
    /// New size: bytes, or `"20G"`, `"+1G"`, `"-512M"`.
    pub size: SizeArg,
    /// A smaller size is allowed.
    #[serde(default)]
    pub shrink: bool,
}

fn find(daemon: &Daemon, name: &str) -> Result<(Arc<Export>, Arc<BlkBackend>), String> {
    daemon.served().into_iter().find(|(e, _)| e.name == name).ok_or_else(|| format!("{name}: no such export"))
}

/// Carry out a live resize (on a blocking thread: it waits for the device).
pub fn resize(daemon: &Daemon, req: ResizeReq) -> Result<Value, String> {
    let (export, backend) = find(daemon, &req.name)?;
    let name = &export.name;
    let _one = export.lock_resize();
    if export.settings.read_only || export.geometry.read_only {
        return Err(format!("{name}: served read-only; a read-only export is not resized"));
    }
    let old = export.capacity();
    let change = req.size.change().map_err(|e| format!("{name}: {e}"))?;
    let new = change.apply(old).map_err(|e| format!("{name}: {e}"))?;
    let lbs = u64::from(export.geometry.block_size);
    if new == 0 || !new.is_multiple_of(lbs) {
        return Err(format!("{name}: new size {new} must be a non-zero multiple of the export's {lbs}-byte blocks"));
    }
    if new < old && !req.shrink {
        return Err(format!(
            "{name}: new size {} ({new} bytes) is smaller than the current {} ({old} bytes): shrinking \
             cuts off the end of the guest's disk and needs \"shrink\":true (blkctl resize --shrink)",
            format_iec(new),
            format_iec(old)
        ));
    }
    let io = IoCtx::new().map_err(|e| format!("{name}: {e}"))?;
    let size = if new >= old {
        let got = export.dev.resize(&io, new, req.shrink).map_err(|e| format!("{name}: {e}"))?;
        export.set_capacity(got.min(new))
    } else {
        export.set_capacity(new);
        if !backend.drain_all(SHRINK_DRAIN) {
            export.set_capacity(old);
            return Err(format!(
                "{name}: requests in flight did not finish within {SHRINK_DRAIN:?}; the size is unchanged"
            ));
        }
        match export.dev.resize(&io, new, true) {
            Ok(got) => export.set_capacity(got.min(new)),
            Err(e) => {
                export.set_capacity(old);
                return Err(format!("{name}: {e}"));
            }
        }
    };
    let notified = size != old && backend.notify_config_change();
    tracing::info!(export = %name, old, size, notified, "resized");
    Ok(json!({"name": name, "old-size": old, "size": size, "notified": notified}))
}

/// After a device's size changed beneath its export (a served thin volume resized in its pool),
/// announce the larger capacity and tell the frontend. Returns the exports grown, with whether
/// each frontend was told. Only growth is taken (a served device is never shrunk this way).
pub fn sync_capacities(daemon: &Daemon) -> Vec<(String, u64, bool)> {
    let mut grown = Vec::new();
    for (export, backend) in daemon.served() {
        let _one = export.lock_resize();
        let (now, dev) = (export.capacity(), export.dev.info().size);
        let lbs = u64::from(export.geometry.block_size);
        if dev - dev % lbs > now {
            let size = export.set_capacity(dev);
            let notified = backend.notify_config_change();
            tracing::info!(export = %export.name, old = now, size, notified, "capacity follows the device");
            grown.push((export.name.clone(), size, notified));
        }
    }
    grown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_bytes_or_text_and_shrink() {
        let r: crate::api::Request = serde_json::from_str(r#"{"cmd":"resize","name":"d","size":1048576}"#).unwrap();
        assert_eq!(
            r,
            crate::api::Request::Resize(ResizeReq { name: "d".into(), size: SizeArg::Bytes(1 << 20), shrink: false })
        );
        let r: crate::api::Request =
            serde_json::from_str(r#"{"cmd":"resize","name":"d","size":"-1G","shrink":true}"#).unwrap();
        let crate::api::Request::Resize(r) = r else { panic!("not a resize") };
        assert_eq!((r.size.change().unwrap(), r.shrink), (blockdev::size::SizeChange::Shrink(1 << 30), true));
        assert!(serde_json::from_str::<crate::api::Request>(r#"{"cmd":"resize","name":"d","size":-5}"#).is_err());
    }

    #[test]
    fn unknown_export_is_named() {
        let d = Daemon::new();
        let req = ResizeReq { name: "nope".into(), size: SizeArg::Bytes(1 << 20), shrink: false };
        assert_eq!(resize(&d, req).unwrap_err(), "nope: no such export");
    }
}
