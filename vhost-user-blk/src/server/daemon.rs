//! The set of exports a daemon serves: added at start or through the control socket, removed at
//! run time, all stopped (drained and flushed) at shutdown.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use blockdev::BlockDev;

use serde::Serialize;

use super::disk_spec::{open_device, DiskSpec};
use super::export::{Export, ExportSettings};
use super::qos::Registry;
use super::serve::ServedExport;
use super::stats::StatsSnapshot;
use crate::stack::{raid_registry, thin};

/// What the control socket lists for one export.
#[derive(Debug, Clone, Serialize)]
pub struct ExportInfo {
    /// Export name.
    pub name: String,
    /// The device keys it was opened with.
    pub disk: String,
    /// Export settings.
    pub settings: ExportSettings,
    /// Capacity in bytes.
    pub size: u64,
    /// Device description (`raw:/path`, `mem:1G`).
    pub device: String,
}

/// The exports of one daemon.
#[derive(Default)]
pub struct Daemon {
    exports: Mutex<Vec<ServedExport>>,
    /// Named nodes (config file `[[node]]`), for `node:NAME` keys and `node=NAME` exports.
    nodes: Mutex<HashMap<String, Arc<dyn BlockDev>>>,
    /// The RAID arrays its exports and nodes assembled, closed clean at shutdown.
    arrays: Mutex<Vec<Weak<raid::Array>>>,
    /// Every export's counters by name, kept across removal for `/metrics`.
    series: crate::metrics::Series,
    /// Named throttle groups (`throttle-group=NAME`).
    groups: Registry,
    /// Name and socket of every `add` still opening its device (which may take up to an RBD
    /// image's `timeout=`): a second `add` of either is refused meanwhile, not raced.
    opening: Mutex<Vec<(String, PathBuf)>>,
}

/// An `add` in progress: its name and socket stay taken until this is dropped.
struct Opening<'a> {
    daemon: &'a Daemon,
    name: String,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.daemon.opening.lock().unwrap_or_else(|p| p.into_inner()).retain(|(n, _)| *n != self.name);
    }
}

impl Daemon {
    /// An empty daemon.
    pub fn new() -> Arc<Daemon> {
        Arc::new(Daemon::default())
    }

    /// Build the named node `name` from `device` keys (which may name earlier nodes).
    pub fn add_node(&self, name: &str, device: &[(String, String)]) -> Result<(), String> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if nodes.contains_key(name) {
            return Err(format!("node {name}: already defined"));
        }
        let (dev, arrays) = raid_registry::collect_opened(|| {
            thin::opened_by(&format!("node {name}"), || open_device(device, false, &nodes))
        });
        self.arrays.lock().unwrap_or_else(|p| p.into_inner()).extend(arrays);
        let dev = dev.map_err(|e| format!("node {name}: {e}"))?;
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), dev);
        Ok(())
    }

    /// Open the device of `spec` and start serving it. Refuses a name or socket already in use.
    pub fn add(&self, spec: &DiskSpec) -> Result<(), String> {
        let _opening = self.reserve(spec)?;
        // Before the device is opened: a group whose limits disagree changes nothing.
        let gate = self.groups.gate_for(&spec.name, spec.settings.throttle_group.as_deref(), &spec.settings.limits)?;
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let holder = thin::export_holder(&spec.name, &spec.settings.socket);
        let (dev, arrays) = raid_registry::collect_opened(|| {
            thin::opened_by(&holder, || open_device(&spec.device, spec.settings.read_only, &nodes))
        });
        self.arrays.lock().unwrap_or_else(|p| p.into_inner()).extend(arrays);
        let dev = dev.map_err(|e| format!("{}: {e}", spec.name))?;
        let mut export = Export::new(spec.name.clone(), spec.settings.clone(), dev, spec.device_spec())?;
        export.qos = gate;
        self.series.track(&export.name, &export.stats);
        let served = ServedExport::start(Arc::new(export)).map_err(|e| e.to_string())?;
        self.exports.lock().unwrap_or_else(|p| p.into_inner()).push(served);
        Ok(())
    }

    /// Take `spec`'s name and socket for the `add` that opens it, or say who has them.
    fn reserve(&self, spec: &DiskSpec) -> Result<Opening<'_>, String> {
        let exports = self.exports.lock().unwrap_or_else(|p| p.into_inner());
        if exports.iter().any(|e| e.export.name == spec.name || e.export.settings.socket == spec.settings.socket) {
            return Err(format!("{}: an export with this name or socket already exists", spec.name));
        }
        let mut opening = self.opening.lock().unwrap_or_else(|p| p.into_inner());
        if opening.iter().any(|(n, s)| *n == spec.name || *s == spec.settings.socket) {
            return Err(format!("{}: an export with this name or socket is being added", spec.name));
        }
        opening.push((spec.name.clone(), spec.settings.socket.clone()));
        Ok(Opening { daemon: self, name: spec.name.clone() })
    }

    /// Stop serving the export `name` (drain, flush, remove its socket).
    pub fn remove(&self, name: &str) -> Result<(), String> {
        let served = {
            let mut exports = self.exports.lock().unwrap_or_else(|p| p.into_inner());
            let i = exports.iter().position(|e| e.export.name == name).ok_or(format!("{name}: no such export"))?;
            exports.remove(i)
        };
        served.export.qos.release();
        if served.stop() {
            Ok(())
        } else {
            Err(format!("{name}: removed, but the final flush failed"))
        }
    }

    /// The exports and their settings.
    pub fn list(&self) -> Vec<ExportInfo> {
        let exports = self.exports.lock().unwrap_or_else(|p| p.into_inner());
        exports
            .iter()
            .map(|e| ExportInfo {
                name: e.export.name.clone(),
                disk: e.export.source.clone(),
                settings: e.export.settings.clone(),
                size: e.export.capacity(),
                device: e.export.dev.describe(),
            })
            .collect()
    }

    /// The exports served now.
    pub fn exports(&self) -> Vec<Arc<Export>> {
        self.exports.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|e| e.export.clone()).collect()
    }

    /// Every export's counters by name, removed ones included (for `/metrics`).
    pub fn series(&self) -> &crate::metrics::Series {
        &self.series
    }

    /// The export `name`, if served.
    pub fn export(&self, name: &str) -> Option<Arc<Export>> {
        let exports = self.exports.lock().unwrap_or_else(|p| p.into_inner());
        exports.iter().find(|e| e.export.name == name).map(|e| e.export.clone())
    }

    /// The exports served now with their backends (for live operations such as a resize).
    pub fn served(&self) -> Vec<(Arc<Export>, Arc<super::backend::BlkBackend>)> {
        let exports = self.exports.lock().unwrap_or_else(|p| p.into_inner());
        exports.iter().map(|e| (e.export.clone(), e.backend().clone())).collect()
    }

    /// Statistics of the export `name`.
    pub fn stats(&self, name: &str) -> Option<StatsSnapshot> {
        let exports = self.exports.lock().unwrap_or_else(|p| p.into_inner());
        exports.iter().find(|e| e.export.name == name).map(|e| e.export.stats.snapshot())
    }

    /// Stop every export: finish in-flight requests, flush; then mark the RAID arrays it
    /// assembled clean (no resync at the next start). True if every step succeeded.
    pub fn shutdown(&self) -> bool {
        // Hold the arrays (exports and nodes let go of them below) until they are closed.
        let arrays: Vec<Arc<raid::Array>> = std::mem::take(&mut *self.arrays.lock().unwrap_or_else(|p| p.into_inner()))
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let all = std::mem::take(&mut *self.exports.lock().unwrap_or_else(|p| p.into_inner()));
        let mut ok = true;
        for e in all {
            let name = e.export.name.clone();
            e.export.qos.release();
            let flushed = e.stop();
            tracing::info!(export = %name, flushed, "stopped");
            ok &= flushed;
        }
        // Nodes no export uses any more are flushed too (an export flushes only its own stack).
        let nodes = std::mem::take(&mut *self.nodes.lock().unwrap_or_else(|p| p.into_inner()));
        if !nodes.is_empty() {
            match blockdev::IoCtx::new() {
                Ok(io) => {
                    for (name, dev) in nodes {
                        if let Err(e) = io.block_on(dev.flush(&io, blockdev::IoTag::data("vhost-user-blk.shutdown"))) {
                            tracing::error!(node = %name, "flush failed: {e}");
                            ok = false;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!("cannot flush the named nodes: {e}");
                    ok = false;
                }
            }
        }
        ok &= raid_registry::close_all(&arrays);
        ok
    }
}
