//! A test hook of debug builds only (release builds do not have it): with
//! `STRATA_TEST_HOLD_FROM=BYTES` in the daemon's environment, reads and writes at or beyond
//! that byte offset are taken from the ring and never completed, so a test can kill the daemon
//! with chosen requests in flight while others complete (tests/server_inflight.rs).

use std::sync::OnceLock;

use crate::server::request::Op;

/// Whether `op` is to be held back for ever.
pub(super) fn holds(op: &Op) -> bool {
    static FROM: OnceLock<Option<u64>> = OnceLock::new();
    let from = FROM.get_or_init(|| std::env::var("STRATA_TEST_HOLD_FROM").ok().and_then(|v| v.parse().ok()));
    match (from, op) {
        (Some(from), Op::Read { off, .. } | Op::Write { off, .. }) => off >= from,
        _ => false,
    }
}
