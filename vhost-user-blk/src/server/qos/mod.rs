//! Per-export I/O limits (QoS) with QEMU's throttle vocabulary and semantics, and throttle
//! groups whose members share one budget.
//!
//! - [`limits`]: the keys, their parsing and validation;
//! - [`bucket`]: the leaky-bucket arithmetic;
//! - [`group`]: a group's shared buckets, its waiting requests and its one timer wake-up, and
//!   the [`Gate`] an export's requests go through;
//! - [`registry`]: the daemon's named groups (who may join, with which limits).
//!
//! A request is checked before it is started, never failed: it waits, in order, until the
//! budget allows. With no limits the data path pays one relaxed load and a branch ([`Gate::on`]).

pub mod bucket;
pub mod group;
pub mod limits;
pub mod registry;

pub use bucket::Dir;
pub use group::{Gate, ThrottleGroup};
pub use limits::Limits;
pub use registry::Registry;

use super::export::Export;
use super::request::OpClass;

/// Wait for `export`'s limits to let a request of class `class` and `bytes` start, counting
/// the time it waited in the export's statistics. Only reads and writes are limited (as QEMU's
/// throttling): flushes, discards and the rest go at once. Call only when `export.qos.on()`.
pub async fn wait_turn(export: &Export, class: OpClass, bytes: u64, taken: std::time::Instant) {
    let dir = match class {
        OpClass::Read => Dir::Read,
        OpClass::Write => Dir::Write,
        _ => return,
    };
    let waited = export.qos.admit(dir, bytes, taken).await;
    if !waited.is_zero() {
        let ns = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        export.stats.throttled_ns.fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
    }
}
