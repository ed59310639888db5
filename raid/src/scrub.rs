//! Checking redundancy row by row: scrub (count mismatches, optionally repair) and the resync
//! after a crash (regions the write-intent bitmap marked dirty).

use std::sync::atomic::Ordering;

use blockdev::join::try_join_all;
use blockdev::{Error, ErrorKind, IoCtx, IoTag, Result, SharedBuf};

use crate::array::Array;
use crate::core::Core;
use crate::member::MemberState;
use crate::raid5::parity::xor_into;
use crate::superblock::Level;

/// What a scrub found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Chunk rows checked.
    pub rows: u64,
    /// Rows whose copies or parity disagreed.
    pub mismatches: u64,
    /// Rows rewritten.
    pub repaired: u64,
    /// Rows that could not be checked: too few readable copies (a degraded array).
    pub unchecked: u64,
}

/// What checking one row found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Row {
    /// Copies or parity agree.
    Consistent,
    /// They disagreed (and were rewritten when repairing).
    Mismatch,
    /// Too few readable members to compare.
    Unchecked,
}

/// Check chunk row `row`; with `repair`, make it consistent (parity recomputed from data, mirrors
/// copied from the first readable one).
pub(crate) async fn check_row(core: &Core, io: &IoCtx, row: u64, repair: bool) -> Result<Row> {
    let chunk = core.geo.chunk;
    let off = row * chunk;
    let _g = core.locks.lock(row).await;
    let readable: Vec<usize> = (0..core.members.len()).filter(|&m| core.member(m).readable(off, chunk)).collect();
    let needed = match core.level() {
        Level::Raid0 => return Ok(Row::Unchecked),
        Level::Raid1 => 2,
        Level::Raid5 => core.members.len(),
    };
    let writable_extra = (0..core.members.len()).any(|m| core.member(m).writable() && !readable.contains(&m));
    if readable.len() < needed && !(repair && writable_extra && core.level() == Level::Raid1 && !readable.is_empty()) {
        return Ok(Row::Unchecked);
    }
    let mut bufs: Vec<SharedBuf> = readable.iter().map(|_| io.pool().shared(chunk as usize)).collect();
    let futs = readable
        .iter()
        .zip(bufs.iter_mut())
        .map(|(&m, b)| core.read_member(io, m, off, b.io(), IoTag::data("raid.scrub")));
    try_join_all(futs).await?;
    match core.level() {
        Level::Raid1 => {
            let first = bufs[0].bytes().to_vec();
            let bad: Vec<usize> = readable
                .iter()
                .zip(&bufs)
                .skip(1)
                .filter(|(_, b)| b.bytes() != first.as_slice())
                .map(|(&m, _)| m)
                .collect();
            if repair {
                let targets: Vec<usize> = (0..core.members.len())
                    .filter(|&m| core.member(m).writable() && (bad.contains(&m) || !readable.contains(&m)))
                    .collect();
                let futs = targets.iter().map(|&m| {
                    let mut b = SharedBuf::from_slice(&first);
                    core.write_member(io, m, off, b.io(), false, IoTag::data("raid.repair"))
                });
                try_join_all(futs).await?;
            }
            Ok(if bad.is_empty() { Row::Consistent } else { Row::Mismatch })
        }
        _ => {
            let mut x = vec![0u8; chunk as usize];
            for b in &bufs {
                xor_into(&mut x, b.bytes());
            }
            let bad = !crate::raid5::parity::is_zero(&x);
            if bad && repair {
                let p = core.geo.parity_member(row);
                let mut parity = bufs[p].bytes().to_vec();
                xor_into(&mut parity, &x);
                let mut b = SharedBuf::from_slice(&parity);
                core.write_member(io, p, off, b.io(), false, IoTag::data("raid.repair")).await?;
            }
            Ok(if bad { Row::Mismatch } else { Row::Consistent })
        }
    }
}

/// Make member rows `[off, off+len)` consistent (crash resync).
pub(crate) async fn resync_range(core: &Core, io: &IoCtx, off: u64, len: u64) -> Result<u64> {
    let chunk = core.geo.chunk;
    let first = off / chunk;
    let last = ((off + len).min(core.geo.data_size)).div_ceil(chunk);
    let mut fixed = 0;
    for row in first..last {
        if check_row(core, io, row, true).await? == Row::Mismatch {
            fixed += 1;
        }
    }
    Ok(fixed)
}

impl Array {
    /// Check every row; with `repair`, rewrite the inconsistent ones. Runs while I/O goes on
    /// (each row is checked under its stripe lock).
    pub async fn scrub(&self, io: &IoCtx, repair: bool) -> Result<ScrubReport> {
        let c = &self.core;
        if c.level() == Level::Raid0 {
            return Err(Error::new(ErrorKind::Unsupported, format!("{}: RAID 0 has no redundancy to scrub", c.name)));
        }
        if c.members.iter().any(|m| m.state() == MemberState::Rebuilding) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{}: finish the rebuild before scrubbing", c.name),
            ));
        }
        let rows = c.geo.stripes();
        // Progress for `status` while it runs (rows done + 1; 0 when idle).
        struct Progress<'a>(&'a std::sync::atomic::AtomicU64);
        impl Drop for Progress<'_> {
            fn drop(&mut self) {
                self.0.store(0, Ordering::Release);
            }
        }
        let progress = Progress(&c.counters.scrub_rows);
        let mut rep = ScrubReport::default();
        for row in 0..rows {
            progress.0.store(row + 1, Ordering::Release);
            rep.rows += 1;
            match check_row(c, io, row, repair).await? {
                Row::Consistent => {}
                Row::Mismatch => {
                    rep.mismatches += 1;
                    if repair {
                        rep.repaired += 1;
                    }
                }
                Row::Unchecked => rep.unchecked += 1,
            }
        }
        drop(progress);
        if repair && rep.repaired > 0 {
            c.flush_all(io).await?;
        }
        c.sb.lock().unwrap_or_else(|p| p.into_inner()).mismatches = rep.mismatches;
        c.write_superblocks(io).await?;
        Ok(rep)
    }
}
