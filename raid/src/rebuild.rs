//! Rebuilding a replacement member while I/O goes on: row by row under the stripe lock, the
//! member's content is recomputed from the others (a mirror copy or parity reconstruction) and
//! written; writes below the rebuild position reach the new member as they happen. Progress is
//! checkpointed in the superblocks (after a flush), so a crash resumes the rebuild there.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{BlockDev, Error, ErrorKind, IoCtx, IoTag, Result, SharedBuf};

use crate::array::Array;
use crate::core::Core;
use crate::member::MemberState;
use crate::superblock::{Level, IN_SYNC};

/// How a rebuild runs.
#[derive(Debug, Clone, Copy)]
pub struct RebuildOptions {
    /// Bytes per second at most (None: as fast as it goes).
    pub rate_limit: Option<u64>,
    /// Persist the checkpoint after this many bytes.
    pub checkpoint_every: u64,
    /// Stop (leaving the rebuild to resume later) after this many bytes; for tests and
    /// bounded background steps.
    pub stop_after: Option<u64>,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        RebuildOptions { rate_limit: None, checkpoint_every: 64 << 20, stop_after: None }
    }
}

fn err(core: &Core, msg: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::InvalidInput, format!("{}: {msg}", core.name))
}

impl Array {
    /// Put `dev` (opened as `name`) in the place of the faulty or missing member `role` and mark
    /// it rebuilding; [`Array::rebuild`] then fills it.
    pub async fn replace(&self, io: &IoCtx, role: usize, name: String, dev: Arc<dyn BlockDev>) -> Result<()> {
        let c = &self.core;
        if c.level() == Level::Raid0 {
            return Err(Error::new(ErrorKind::Unsupported, format!("{}: RAID 0 cannot rebuild a member", c.name)));
        }
        if role >= c.members.len() {
            return Err(err(c, format!("no member {role}")));
        }
        if c.member(role).writable() {
            return Err(err(
                c,
                format!(
                    "member {role} ({}) is {}: fail it first",
                    c.member(role).name(),
                    c.member(role).state().as_str()
                ),
            ));
        }
        let need = c.data_offset + c.geo.data_size;
        if dev.info().size < need {
            return Err(err(c, format!("replacement {name} has {} bytes, needs {need}", dev.info().size)));
        }
        if c.members.iter().any(|m| m.state() == MemberState::Rebuilding) {
            return Err(err(c, "another member is rebuilding: one at a time"));
        }
        c.member(role).rebuild_pos.store(0, Ordering::Release);
        c.member(role).replace(name, dev, MemberState::Rebuilding);
        *c.info_cache.write().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(p) = &c.ppl {
            p.format_member(c, io, role).await?;
        }
        c.write_superblocks(io).await
    }

    /// Rebuild every rebuilding member (from its checkpoint) to completion, or until
    /// `opts.stop_after` bytes. Returns the bytes rebuilt.
    pub async fn rebuild(&self, io: &IoCtx, opts: RebuildOptions) -> Result<u64> {
        let c = &self.core;
        if c.rebuilding.swap(true, Ordering::AcqRel) {
            return Err(err(c, "a rebuild is already running"));
        }
        let res = rebuild_all(c, io, opts).await;
        c.rebuilding.store(false, Ordering::Release);
        res
    }
}

async fn rebuild_all(c: &Core, io: &IoCtx, opts: RebuildOptions) -> Result<u64> {
    let chunk = c.geo.chunk;
    let started = Instant::now();
    let mut done = 0u64;
    let mut since_cp = 0u64;
    for role in 0..c.members.len() {
        if c.member(role).state() != MemberState::Rebuilding {
            continue;
        }
        let mut pos = c.member(role).rebuild_pos.load(Ordering::Acquire) / chunk * chunk;
        tracing::info!("{}: rebuilding member {role} ({}) from {pos}", c.name, c.member(role).name());
        while pos < c.geo.data_size {
            if opts.stop_after.is_some_and(|s| done >= s) {
                c.flush_all(io).await?;
                return c.write_superblocks(io).await.map(|_| done);
            }
            rebuild_row(c, io, role, pos).await?;
            if c.member(role).state() != MemberState::Rebuilding {
                return Err(err(c, format!("member {role} failed during the rebuild")));
            }
            pos += chunk;
            c.member(role).rebuild_pos.store(pos, Ordering::Release);
            c.counters.rebuild_bytes.fetch_add(chunk, Ordering::Relaxed);
            done += chunk;
            since_cp += chunk;
            if since_cp >= opts.checkpoint_every {
                since_cp = 0;
                c.flush_all(io).await?;
                c.write_superblocks(io).await?;
            }
            if let Some(rate) = opts.rate_limit.filter(|&r| r > 0) {
                let due = Duration::from_secs_f64(done as f64 / rate as f64);
                let el = started.elapsed();
                if due > el {
                    blockdev::timer::sleep(due - el).await;
                }
            }
        }
        c.flush_all(io).await?;
        c.member(role).set_state(MemberState::Active);
        c.member(role).rebuild_pos.store(IN_SYNC, Ordering::Release);
        c.write_superblocks(io).await?;
        tracing::info!("{}: member {role} rebuilt", c.name);
    }
    Ok(done)
}

/// Recompute member `role`'s chunk row at member offset `off` and write it.
async fn rebuild_row(c: &Core, io: &IoCtx, role: usize, off: u64) -> Result<()> {
    let chunk = c.geo.chunk;
    let row = off / chunk;
    let _g = c.locks.lock(row).await;
    let data = match c.level() {
        Level::Raid1 => {
            let src = (0..c.members.len())
                .find(|&m| m != role && c.member(m).state() == MemberState::Active)
                .ok_or_else(|| err(c, "no in-sync mirror to rebuild from"))?;
            let b = c.read_member_buf(io, src, off, chunk as usize, IoTag::data("raid.rebuild")).await?;
            b.bytes().to_vec()
        }
        _ => crate::raid5::reconstruct(c, io, role, off, chunk as usize).await?,
    };
    let mut b = SharedBuf::from_slice(&data);
    let r = c.write_member(io, role, off, b.io(), false, IoTag::data("raid.rebuild")).await;
    if let Err(e) = r {
        c.member(role).set_state(MemberState::Faulty);
        c.write_superblocks(io).await?;
        return Err(e);
    }
    Ok(())
}
